//! The consistency checker as the controller uses it: the engine's cross-layout check
//! (`sluice::inspect::check_consistency`, also behind `sluice verify --deep`), run at every
//! state change of a migration, its problems turned into rollback reasons.
//!
//! It checks that every entry sits in the partition its own function assigns it, that every
//! key resolves to one newest entry across the live layouts (memtables included), that a
//! forwarding pointer names a live layout holding the copy, and that point reads agree
//! with the merged scan.

use sluice::inspect::{check_consistency, ConsistencyOptions};
use sluice::{Db, Result};

/// How many point reads to compare with the merged scan.
#[derive(Clone, Copy, Debug)]
pub enum CheckMode {
    /// About this many keys, evenly spread (every SSTable entry is still walked once).
    Sample { reads: u64 },
    /// Every key.
    Full,
}

impl Default for CheckMode {
    fn default() -> Self {
        CheckMode::Sample { reads: 2_000 }
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsistencyReport {
    pub keys: u64,
    pub reads_checked: u64,
    pub problems: Vec<String>,
}

impl ConsistencyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the checker against a live (or read-only) database.
pub fn check(db: &Db, mode: CheckMode) -> Result<ConsistencyReport> {
    let opts = ConsistencyOptions {
        sample_reads: match mode {
            CheckMode::Sample { reads } => Some(reads),
            CheckMode::Full => None,
        },
    };
    let r = check_consistency(db, &opts, &mut |_| {})?;
    Ok(ConsistencyReport {
        keys: r.keys,
        reads_checked: r.reads_checked,
        problems: r
            .problems
            .iter()
            .map(|p| match (&p.file, p.offset) {
                (Some(f), Some(o)) => {
                    format!("{}: {} at offset {o}: {}", p.check, f.display(), p.message)
                }
                (Some(f), None) => format!("{}: {}: {}", p.check, f.display(), p.message),
                _ => format!("{}: {}", p.check, p.message),
            })
            .collect(),
    })
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
            move_on_first_read: true,
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
        assert_eq!(full.reads_checked, 2000);
        let sample = check(&db, CheckMode::default()).unwrap();
        assert!(sample.ok(), "{:?}", sample.problems);
        assert!(sample.reads_checked > 0);
    }
}
