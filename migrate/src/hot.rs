//! Hot partitions: which partitions take far more than their share of traffic.
//!
//! A partition is named hot when three things hold, judged by [`Thresholds`] as a key
//! sample's bias is (with operations, reads plus writes, for keys):
//! - its share of operations is at least `max_over_mean` times the mean share (the effect
//!   is large);
//! - at least `min_expected` operations were counted per partition on average (the sample
//!   is not too thin to say anything: a handful of writes names nothing);
//! - a fair split of the same operations would give some partition that many with a
//!   chance below `alpha` (the effect is not noise). With `n` operations over `P`
//!   partitions a fair partition's count `X` is binomial with mean `μ = n / P`, and the
//!   Chernoff bound `Pr[X ≥ xμ] ≤ exp(−μ (x ln x − x + 1))`, taken over the `P`
//!   partitions, must be below `alpha`.
//!
//! With the defaults (`alpha` 0.001, `min_expected` 5) and a factor of 2, a partition
//! with twice the mean share is named once some 22 operations per partition were counted
//! on 4 partitions (90 in all), 25 on 16 (400 in all); one that takes every operation on
//! 4 partitions or more, once the `min_expected` floor is reached (20 operations on 4).

pub use crate::analysis::Thresholds;
use sluice::{Error, LoadStats, Result};

/// Partitions whose share of operations is at least `factor` times the mean share, and
/// significantly so on a large enough sample (see the [module](self) and
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
/// share, with at least `t.min_expected` operations per partition on average and a
/// chance below `t.alpha` that a fair split gives some partition that many (see the
/// [module](self)), hottest first.
pub fn hot_partitions_with(load: &LoadStats, t: &Thresholds) -> Result<Vec<u32>> {
    t.validate()?;
    let ops = load.ops();
    let total = ops.iter().fold(0u64, |a, &c| a.saturating_add(c));
    if ops.is_empty() || total == 0 {
        return Ok(Vec::new());
    }
    let parts = ops.len() as f64;
    let mean = total as f64 / parts;
    if mean < t.min_expected {
        return Ok(Vec::new());
    }
    // The Chernoff exponent a count must reach: `μ h(x) > ln(P / alpha)`.
    let needed = (parts / t.alpha).ln();
    let significant = |c: f64| {
        let x = c / mean;
        x > 1.0 && mean * (x * x.ln() - x + 1.0) > needed
    };
    let mut hot: Vec<(u32, u64)> = ops
        .iter()
        .enumerate()
        .filter(|(_, &c)| c as f64 >= t.max_over_mean * mean && significant(c as f64))
        .map(|(i, &c)| (i as u32, c))
        .collect();
    hot.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(hot.into_iter().map(|(i, _)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::PartitionSpec;

    #[test]
    fn finds_the_hot_one() {
        let load = LoadStats {
            version: None,
            spec: PartitionSpec::default(),
            reads: vec![10, 10, 500, 10],
            writes: vec![10, 10, 100, 10],
            write_bytes: vec![0; 4],
            elapsed: Default::default(),
        };
        assert_eq!(hot_partitions(&load, 2.0).unwrap(), vec![2]);
        assert!(hot_partitions(&load, 4.0).unwrap().is_empty());
        // Below the mean share every partition is "hot", the one with no traffic too.
        for factor in [0.0, 0.5, -1.0, f64::NAN, f64::INFINITY] {
            assert!(hot_partitions(&load, factor).is_err(), "{factor}");
        }
    }

    fn writes(writes: Vec<u64>) -> LoadStats {
        LoadStats {
            version: None,
            spec: PartitionSpec::default(),
            reads: vec![0; writes.len()],
            write_bytes: vec![0; writes.len()],
            writes,
            elapsed: Default::default(),
        }
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
}
