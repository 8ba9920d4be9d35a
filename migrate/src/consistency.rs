//! The consistency checker: checks, across every live layout version, that
//! - every entry sits in the partition its own function assigns it;
//! - every key resolves to one newest entry (no two layouts hold different contents under
//!   the same seqno), and a forwarding pointer names a live version that holds the value;
//! - the point-read path and the merged scan agree on every key checked.
//!
//! `Full` walks everything; `Sample` walks a bounded prefix of a few partitions per version,
//! cheap enough to run at every state change of a migration.

use std::collections::HashMap;

use sluice::{Db, PartitionEntry, PartitionFn, Result};

/// How much to check.
#[derive(Clone, Copy, Debug)]
pub enum CheckMode {
    /// Up to `entries_per_partition` entries of up to `partitions` partitions per version.
    Sample {
        partitions: usize,
        entries_per_partition: usize,
    },
    /// Every entry of every partition, plus a full merged scan.
    Full,
}

impl Default for CheckMode {
    fn default() -> Self {
        CheckMode::Sample {
            partitions: 8,
            entries_per_partition: 256,
        }
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsistencyReport {
    pub versions_checked: usize,
    pub partitions_checked: usize,
    pub entries_checked: u64,
    pub keys_compared: u64,
    pub problems: Vec<String>,
}

impl ConsistencyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Keeps the report bounded however broken the data is.
const MAX_PROBLEMS: usize = 100;

fn problem(r: &mut ConsistencyReport, p: String) {
    if r.problems.len() < MAX_PROBLEMS {
        r.problems.push(p);
    }
}

/// Runs the checker against a live (or read-only) database.
pub fn check(db: &Db, mode: CheckMode) -> Result<ConsistencyReport> {
    let mut report = ConsistencyReport::default();
    let layout = db.layout();
    let live: Vec<u32> = layout.versions.iter().map(|v| v.id.0).collect();
    let snap = db.snapshot();
    // key -> (seqno, kind tag, value) of the newest entry seen in any layout so far.
    let mut newest: HashMap<Vec<u8>, (u64, u8, Vec<u8>, u32)> = HashMap::new();
    let mut sample_keys: Vec<Vec<u8>> = Vec::new();
    for v in &layout.versions {
        report.versions_checked += 1;
        let func = PartitionFn::new(v.spec.clone())?;
        let parts: Vec<u32> = match mode {
            CheckMode::Full => (0..func.partitions()).collect(),
            CheckMode::Sample { partitions, .. } => {
                // Spread the sample over the partitions that hold data.
                let with_data: Vec<u32> = v
                    .partitions
                    .iter()
                    .filter(|p| p.files > 0)
                    .map(|p| p.index)
                    .collect();
                let step = (with_data.len() / partitions.max(1)).max(1);
                with_data
                    .into_iter()
                    .step_by(step)
                    .take(partitions)
                    .collect()
            }
        };
        let limit = match mode {
            CheckMode::Full => usize::MAX,
            CheckMode::Sample {
                entries_per_partition,
                ..
            } => entries_per_partition,
        };
        for p in parts {
            report.partitions_checked += 1;
            for e in db.partition_entries(v.id, p)?.take(limit) {
                let e = e?;
                report.entries_checked += 1;
                let key = e.key().to_vec();
                let home = func.partition_of(&key);
                if home != p {
                    problem(
                        &mut report,
                        format!(
                            "{}/{p}: key {} belongs in partition {home}",
                            v.id,
                            sluice::escape::escape(&key)
                        ),
                    );
                }
                let (seqno, tag, value) = match &e {
                    PartitionEntry::Value { seqno, value, .. } => (*seqno, 1u8, value.to_vec()),
                    PartitionEntry::Tombstone { seqno, .. } => (*seqno, 0u8, Vec::new()),
                    PartitionEntry::Moved { seqno, to, .. } => {
                        if !live.contains(&to.0) {
                            problem(
                                &mut report,
                                format!(
                                    "{}/{p}: forwarding pointer for {} names {to}, which is not live",
                                    v.id,
                                    sluice::escape::escape(&key)
                                ),
                            );
                        }
                        (*seqno, 2u8, Vec::new())
                    }
                };
                if sample_keys.len() < 100_000 {
                    sample_keys.push(key.clone());
                }
                match newest.get(&key) {
                    Some((s, t, val, from)) if *s == seqno => {
                        // The same write seen twice (moved, or migrated and moved): it must
                        // be the same write. A pointer's value lives elsewhere.
                        if *t != 2 && tag != 2 && (*t != tag || *val != value) {
                            problem(
                                &mut report,
                                format!(
                                    "key {} has two different entries at seqno {seqno} (v{from} and {})",
                                    sluice::escape::escape(&key),
                                    v.id
                                ),
                            );
                        }
                    }
                    Some((s, ..)) if *s > seqno => {}
                    _ => {
                        newest.insert(key, (seqno, tag, value, v.id.0));
                    }
                }
            }
        }
    }
    // Point reads against the merged scan, at one snapshot.
    match mode {
        CheckMode::Full => {
            for r in snap.range(..) {
                let (k, v) = r?;
                report.keys_compared += 1;
                match snap.get(&k)? {
                    Some(g) if g == v => {}
                    other => problem(
                        &mut report,
                        format!(
                            "scan says {} = {}, point read says {:?}",
                            sluice::escape::escape(&k),
                            sluice::escape::escape(&v),
                            other.map(|g| sluice::escape::escape(&g))
                        ),
                    ),
                }
            }
        }
        CheckMode::Sample { .. } => {
            for k in &sample_keys {
                report.keys_compared += 1;
                let point = snap.get(k)?;
                let scan = snap
                    .range(k.as_slice()..=k.as_slice())
                    .next()
                    .transpose()?
                    .map(|(_, v)| v);
                if point != scan {
                    problem(
                        &mut report,
                        format!(
                            "key {}: point read {:?} but scan {:?}",
                            sluice::escape::escape(k),
                            point.map(|v| sluice::escape::escape(&v)),
                            scan.map(|v| sluice::escape::escape(&v))
                        ),
                    );
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::{Options, PartitionSpec};

    #[test]
    fn a_healthy_multi_version_database_checks_clean() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 1 << 30,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        for i in 0..2000u32 {
            db.put(format!("k{i:05}"), format!("v{i}")).unwrap();
        }
        db.flush().unwrap();
        let v2 = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 1,
                hashed_prefix: None,
            })
            .unwrap();
        db.set_target(v2).unwrap();
        for i in (0..2000u32).step_by(7) {
            db.get(format!("k{i:05}")).unwrap(); // lazy moves
        }
        db.migrate_now(Some(20_000)).unwrap();
        db.flush().unwrap();
        let full = check(&db, CheckMode::Full).unwrap();
        assert!(full.ok(), "{:?}", full.problems);
        assert_eq!(full.keys_compared, 2000);
        assert!(full.entries_checked >= 2000);
        let sample = check(&db, CheckMode::default()).unwrap();
        assert!(sample.ok(), "{:?}", sample.problems);
        assert!(sample.keys_compared > 0);
    }
}
