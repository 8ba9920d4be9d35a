//! Hot partitions: which partitions take far more than their share of traffic.
//!
//! A partition is named hot when three things hold, judged by [`Thresholds`] as a key
//! sample's bias is (with operations, reads plus keys written, for keys):
//! - its share of operations is at least `max_over_mean` times the mean share (the effect
//!   is large);
//! - at least `min_expected` commits were counted per partition on average (the sample
//!   is not too thin to say anything: a handful of writes names nothing). A commit here
//!   is an event of keys read or written together in one partition: the keys one write
//!   (a `WriteBatch`, a transaction, a single put) wrote there, and on the read side a
//!   point read (one key), the keys one transaction read there, or one scan yielded
//!   there (`LoadStats::read_events`, with `read_keys_sq` and `read_keys_max`);
//! - a fair split of the same commits would give some partition that many operations
//!   with a chance below `alpha` (the effect is not noise).
//!
//! The last is where a commit differs from an operation. The keys of one commit are not
//! independent operations: one transaction writing 200 keys of a partition is one event,
//! and taking its keys for 200 independent draws named a partition hot on a single burst.
//! So the commits are the draws. With `n` operations over `P` partitions, a fair split
//! puts each commit in any partition with chance `1/P`: a partition's count `X` is a sum
//! of independent terms each in `[0, M]` (`M` the most keys of one commit), with mean
//! `μ = n / P` and variance at most `σ² = Σ a² / P` (`a` each commit's keys). Bennett's
//! inequality bounds `Pr[X ≥ μ + t] ≤ exp(−(σ²/M²) h(tM/σ²))` with
//! `h(u) = (1 + u) ln(1 + u) − u`, and that, taken over the `P` partitions, must be below
//! `alpha`. When every commit is one operation (`M = 1`, `σ² = μ`) this is the Chernoff
//! bound `exp(−μ (x ln x − x + 1))` for a count of `xμ`; a burst of large commits widens
//! the bound by as much as the commits are large, so it takes many commits, not a few
//! large ones, to name a partition. (A commit's keys in different partitions count as
//! separate commits, one per partition, as a fair split could have spread them too; they
//! land in distinct partitions, a negative dependence that keeps the bound.)
//!
//! With the defaults (`alpha` 0.001, `min_expected` 5), a factor of 2 and commits of one
//! operation each, a partition with twice the mean share is named once some 22
//! operations per partition were counted on 4 partitions (90 in all), 25 on 16 (400 in
//! all); one that takes every operation on 4 partitions or more, once the `min_expected`
//! floor is reached (20 operations on 4).
//!
//! Figures a caller built by hand are taken conservatively: reads or writes with no event
//! count are one event, and the sums of squares and the largest events are raised to
//! what the counts imply at least. Figures of unequal lengths, or of another number of partitions
//! than `spec` has (a mix of two layouts' samples), are refused.

pub use crate::analysis::Thresholds;
use sluice::{Error, LoadStats, Result};

/// Partitions whose share of operations is at least `factor` times the mean share, and
/// significantly so on a large enough sample of commits (see the [module](self) and
/// [`hot_partitions_with`]; `alpha` and `min_expected` are [`Thresholds::default`]'s),
/// hottest first. `factor` must be a number of at least 1: below the mean share, a
/// partition with no traffic at all would be "hot".
pub fn hot_partitions(load: &LoadStats, factor: f64) -> Result<Vec<u32>> {
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(Error::InvalidOption {
            name: "factor",
            reason: format!(
                "a hot partition's factor over the mean share must be ≥ 1, not {factor}"
            ),
        });
    }
    hot_partitions_with(
        load,
        &Thresholds {
            max_over_mean: factor,
            ..Thresholds::default()
        },
    )
}

/// Partitions whose share of operations is at least `t.max_over_mean` times the mean
/// share, with at least `t.min_expected` commits per partition on average and a chance
/// below `t.alpha` that a fair split of the commits gives some partition that many
/// operations (see the [module](self)), hottest first.
pub fn hot_partitions_with(load: &LoadStats, t: &Thresholds) -> Result<Vec<u32>> {
    t.validate()?;
    let parts = checked_partitions(load)?;
    // In floating point: sums of counts near the top of u64 neither wrap nor saturate.
    let ops: Vec<f64> = (load.reads.iter().zip(&load.writes))
        .map(|(&r, &w)| r as f64 + w as f64)
        .collect();
    let n: f64 = ops.iter().sum();
    if parts == 0 || n == 0.0 {
        return Ok(Vec::new());
    }
    let p = parts as f64;
    let (mut commits, mut sum_sq, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..parts {
        let reads = Events::of(
            load.reads[i],
            load.read_events[i],
            load.read_keys_sq[i],
            load.read_keys_max[i],
        );
        let writes = Events::of(
            load.writes[i],
            load.write_commits[i],
            load.commit_keys_sq[i],
            load.commit_keys_max[i],
        );
        commits += reads.count + writes.count;
        sum_sq += reads.keys_sq + writes.keys_sq;
        max = max.max(reads.keys_max).max(writes.keys_max);
    }
    let mean = n / p;
    if commits / p < t.min_expected {
        return Ok(Vec::new());
    }
    // The Bennett exponent a count must reach: `(σ²/M²) h(tM/σ²) > ln(P / alpha)`.
    let needed = (p / t.alpha).ln();
    let var = sum_sq / p;
    let significant = |c: f64| {
        let excess = c - mean;
        let u = excess * max / var;
        excess > 0.0 && var / (max * max) * ((1.0 + u) * u.ln_1p() - u) > needed
    };
    let mut hot: Vec<(u32, f64)> = ops
        .iter()
        .enumerate()
        .filter(|(_, &c)| c >= t.max_over_mean * mean && significant(c))
        .map(|(i, &c)| (i as u32, c))
        .collect();
    hot.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(hot.into_iter().map(|(i, _)| i).collect())
}

/// One partition's events of one kind (reads, or commits' writes), taken conservatively
/// (see the [module](self)).
struct Events {
    count: f64,
    keys_sq: f64,
    keys_max: f64,
}

impl Events {
    /// `keys` in `events` events, with the sum of the squares and the maximum of their
    /// keys as counted. Keys counted with no event are taken as one event of them all.
    fn of(keys: u64, events: u64, keys_sq: u64, keys_max: u64) -> Events {
        let keys = keys as f64;
        if keys == 0.0 {
            return Events {
                count: events as f64,
                keys_sq: 0.0,
                keys_max: 0.0,
            };
        }
        let count = (events as f64).max(1.0);
        // Keys per event: at least 1 each, and by Cauchy–Schwarz the sum of their
        // squares is at least `keys² / events` and the largest `keys / events`.
        let even = keys / count;
        Events {
            count,
            keys_sq: (keys_sq as f64).max(keys * even.max(1.0)),
            keys_max: (keys_max as f64).max(even.ceil()),
        }
    }
}

/// The number of partitions `load` counts: its per-partition figures must be of one
/// length, that of its function (none at all when nothing was counted).
fn checked_partitions(load: &LoadStats) -> Result<usize> {
    let lengths = [
        ("reads", load.reads.len()),
        ("read_events", load.read_events.len()),
        ("read_keys_sq", load.read_keys_sq.len()),
        ("read_keys_max", load.read_keys_max.len()),
        ("writes", load.writes.len()),
        ("write_bytes", load.write_bytes.len()),
        ("write_commits", load.write_commits.len()),
        ("commit_keys_sq", load.commit_keys_sq.len()),
        ("commit_keys_max", load.commit_keys_max.len()),
    ];
    let parts = lengths[0].1;
    if let Some((name, len)) = lengths.iter().find(|(_, len)| *len != parts) {
        return Err(Error::InvalidOption {
            name: "load",
            reason: format!("{parts} partitions' reads but {len} partitions' {name}"),
        });
    }
    let spec_parts = load.spec.partitions() as usize;
    if parts != 0 && parts != spec_parts {
        return Err(Error::InvalidOption {
            name: "load",
            reason: format!(
                "figures for {parts} partitions, but its function ({}) has {spec_parts}",
                load.spec
            ),
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::PartitionSpec;

    /// Hash partitions' figures: `reads` and `writes`, each an event of its own.
    fn load(reads: Vec<u64>, writes: Vec<u64>) -> LoadStats {
        LoadStats {
            version: None,
            spec: PartitionSpec::hashed(writes.len() as u32, 0),
            read_events: reads.clone(),
            read_keys_sq: reads.clone(),
            read_keys_max: reads.iter().map(|&r| r.min(1)).collect(),
            reads,
            write_bytes: vec![0; writes.len()],
            write_commits: writes.clone(),
            commit_keys_sq: writes.clone(),
            commit_keys_max: writes.iter().map(|&w| w.min(1)).collect(),
            writes,
            elapsed: Default::default(),
        }
    }

    #[test]
    fn finds_the_hot_one() {
        let load = load(vec![10, 10, 500, 10], vec![10, 10, 100, 10]);
        assert_eq!(hot_partitions(&load, 2.0).unwrap(), vec![2]);
        assert!(hot_partitions(&load, 4.0).unwrap().is_empty());
        // Below the mean share every partition is "hot", the one with no traffic too.
        for factor in [0.0, 0.5, -1.0, f64::NAN, f64::INFINITY] {
            assert!(hot_partitions(&load, factor).is_err(), "{factor}");
        }
    }

    fn writes(writes: Vec<u64>) -> LoadStats {
        load(vec![0; writes.len()], writes)
    }

    /// A partition that took most of a handful of writes is not named hot: the sample is
    /// too small to tell a skew from chance. It was (any share at least `factor` times the
    /// mean was enough, whatever the count). The same skew over enough writes is named.
    #[test]
    fn too_few_operations_name_nothing_hot() {
        for few in [
            vec![0, 0, 3, 0],
            vec![1, 1, 10, 1],
            vec![0, 1, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(
                hot_partitions(&writes(few.clone()), 2.0)
                    .unwrap()
                    .is_empty(),
                "{few:?}"
            );
        }
        // The shares of [1, 1, 10, 1], on twice (then 100 times) the writes.
        assert_eq!(
            hot_partitions(&writes(vec![2, 2, 20, 2]), 2.0).unwrap(),
            vec![2]
        );
        assert_eq!(
            hot_partitions(&writes(vec![100, 100, 1000, 100]), 2.0).unwrap(),
            vec![2]
        );
        // Fair traffic, however much of it, names nothing; nor does one partition alone.
        assert!(hot_partitions(&writes(vec![1_000_000; 16]), 1.0)
            .unwrap()
            .is_empty());
        assert!(hot_partitions(&writes(vec![1_000_000]), 1.0)
            .unwrap()
            .is_empty());
    }

    /// The rule's thresholds are the caller's: a looser significance level or floor names
    /// a partition on fewer operations, and thresholds that judge nothing are refused.
    #[test]
    fn the_thresholds_are_configurable_and_checked() {
        let load = writes(vec![1, 1, 10, 1]);
        let loose = Thresholds {
            max_over_mean: 2.0,
            alpha: 0.2,
            min_expected: 1.0,
        };
        assert_eq!(hot_partitions_with(&load, &loose).unwrap(), vec![2]);
        for bad in [
            Thresholds {
                alpha: 0.0,
                ..loose
            },
            Thresholds {
                max_over_mean: f64::NAN,
                ..loose
            },
            Thresholds {
                min_expected: -1.0,
                ..loose
            },
        ] {
            assert!(hot_partitions_with(&load, &bad).is_err(), "{bad:?}");
        }
    }

    /// Commits of many keys: a partition whose commits are consistently larger takes more
    /// than its share over many of them, and is named; the same operations as a few
    /// commits are a burst, and name nothing.
    #[test]
    fn large_commits_name_a_partition_only_when_there_are_many() {
        // 50 commits per partition, of 10 keys each, and of 30 in partition 2.
        let many = LoadStats {
            write_commits: vec![50; 4],
            commit_keys_sq: vec![50 * 100, 50 * 100, 50 * 900, 50 * 100],
            commit_keys_max: vec![10, 10, 30, 10],
            ..writes(vec![500, 500, 1500, 500])
        };
        assert_eq!(hot_partitions(&many, 2.0).unwrap(), vec![2]);
        // The same keys as 5 commits into each partition: too few commits to say.
        let few = LoadStats {
            write_commits: vec![5; 4],
            commit_keys_sq: vec![5 * 10_000, 5 * 10_000, 5 * 90_000, 5 * 10_000],
            commit_keys_max: vec![100, 100, 300, 100],
            ..writes(vec![500, 500, 1500, 500])
        };
        assert!(hot_partitions(&few, 2.0).unwrap().is_empty());
        // Or as 50 commits each with one of partition 2's holding all but 49 of its keys.
        let burst = LoadStats {
            write_commits: vec![50; 4],
            commit_keys_sq: vec![50 * 100, 50 * 100, 49 + 1451 * 1451, 50 * 100],
            commit_keys_max: vec![10, 10, 1451, 10],
            ..writes(vec![500, 500, 1500, 500])
        };
        assert!(hot_partitions(&burst, 2.0).unwrap().is_empty());
        // Figures that say nothing of how the writes came grouped are one commit each
        // partition: as few as can be, and nothing is named.
        let ungrouped = LoadStats {
            write_commits: vec![0; 4],
            commit_keys_sq: vec![0; 4],
            commit_keys_max: vec![0; 4],
            ..writes(vec![500, 500, 1500, 500])
        };
        assert!(hot_partitions(&ungrouped, 2.0).unwrap().is_empty());
    }

    /// Reads are events with sizes, as commits are: over 100 single reads per partition,
    /// `events` reads of 200 keys each in partition 2.
    fn large_reads(events: u64) -> LoadStats {
        let keys = 100 + events * 200;
        LoadStats {
            read_events: vec![100, 100, 100 + events, 100],
            read_keys_sq: vec![100, 100, 100 + events * 200 * 200, 100],
            read_keys_max: vec![1, 1, 200, 1],
            ..load(vec![100, 100, keys, 100], vec![0; 4])
        }
    }

    /// A few reads of many keys (a few transactions', or scans') are a burst and name
    /// nothing; many of them do. Taken for independent reads, as all reads were, the few
    /// named their partition; reads counted with no events are one event each partition.
    #[test]
    fn large_reads_name_a_partition_only_when_there_are_many() {
        assert!(hot_partitions(&large_reads(3), 2.0).unwrap().is_empty());
        let single = load(vec![100, 100, 700, 100], vec![0; 4]);
        assert_eq!(hot_partitions(&single, 2.0).unwrap(), vec![2]);
        assert_eq!(hot_partitions(&large_reads(30), 2.0).unwrap(), vec![2]);
        let ungrouped = LoadStats {
            read_events: vec![0; 4],
            read_keys_sq: vec![0; 4],
            read_keys_max: vec![0; 4],
            ..large_reads(30)
        };
        assert!(hot_partitions(&ungrouped, 2.0).unwrap().is_empty());
    }

    /// Odd figures give an answer or a typed error, never a panic: no partitions, no
    /// traffic, counts at the top of u64, and a sample mixing two layouts (figures of
    /// unequal lengths, or another number of partitions than its function's).
    #[test]
    fn odd_figures_are_answered_or_refused() {
        let nothing = LoadStats::default();
        assert!(hot_partitions(&nothing, 2.0).unwrap().is_empty());
        assert!(hot_partitions(&writes(vec![0; 4]), 2.0).unwrap().is_empty());
        let top = load(vec![u64::MAX, 1, u64::MAX, 1], vec![u64::MAX, 1, 1, 1]);
        assert_eq!(hot_partitions(&top, 2.0).unwrap(), vec![0]);
        let top = load(vec![u64::MAX; 4], vec![u64::MAX; 4]);
        assert!(hot_partitions(&top, 1.0).unwrap().is_empty());

        let fine = writes(vec![10, 10, 100, 10]);
        assert_eq!(hot_partitions(&fine, 2.0).unwrap(), vec![2]);
        let short = LoadStats {
            write_commits: vec![10, 10, 100],
            ..fine.clone()
        };
        let other = LoadStats {
            spec: PartitionSpec::hashed(8, 0),
            ..fine.clone()
        };
        for bad in [short, other] {
            match hot_partitions(&bad, 2.0) {
                Err(Error::InvalidOption { name: "load", .. }) => {}
                r => panic!("{r:?} for {bad:?}"),
            }
        }
        for bad in [
            Thresholds {
                alpha: f64::NAN,
                ..Thresholds::default()
            },
            Thresholds {
                min_expected: f64::NAN,
                ..Thresholds::default()
            },
            Thresholds {
                min_expected: f64::INFINITY,
                ..Thresholds::default()
            },
        ] {
            assert!(hot_partitions_with(&fine, &bad).is_err(), "{bad:?}");
        }
    }
}
