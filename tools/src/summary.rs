//! The shape of a database as the manifest describes it — versions, partitions, levels,
//! migration — computed without opening an SSTable. Shared by `info`, `partitions` and the
//! HTML page; serialized as is for `--json`.

use serde::Serialize;
use sluice::inspect::{DirState, VersionRole};
use sluice::sst::TableKind;

pub const LEVELS: usize = sluice::manifest::MAX_LEVELS;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LevelCell {
    pub level: usize,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartSummary {
    pub partition: u32,
    pub files: usize,
    pub bytes: u64,
    /// Entries recorded by the manifest (keys, plus older versions and tombstones not yet
    /// compacted away).
    pub entries: u64,
    pub pointer_files: usize,
    /// Forwarding pointers left here by lazy moves.
    pub pointers: u64,
    pub levels: Vec<LevelCell>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VersionSummary {
    pub id: u32,
    pub spec: String,
    pub fingerprint: String,
    pub role: &'static str,
    pub files: usize,
    pub bytes: u64,
    pub entries: u64,
    pub pointer_files: usize,
    pub pointers: u64,
    pub levels: Vec<LevelCell>,
    pub partitions: Vec<PartSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DrainSummary {
    pub version: u32,
    pub files_left: usize,
    pub bytes_left: u64,
    pub entries_left: u64,
    pub forwarding_pointers: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MigrationSummary {
    /// `stable` (one live version), `planned` (a registered candidate, nothing draining) or
    /// `migrating` (data still in draining versions).
    pub state: &'static str,
    pub target: u32,
    pub draining: Vec<DrainSummary>,
    pub candidates: Vec<u32>,
    /// Data bytes still in draining versions, and in all live versions.
    pub bytes_left: u64,
    pub total_bytes: u64,
    /// Fraction of the live data bytes already in the target (1.0 when nothing drains).
    pub progress: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub target: u32,
    pub versions: Vec<VersionSummary>,
    pub retired: Vec<u32>,
    pub levels: Vec<LevelCell>,
    pub files: usize,
    pub bytes: u64,
    pub migration: MigrationSummary,
}

fn empty_levels() -> Vec<LevelCell> {
    (0..LEVELS)
        .map(|level| LevelCell {
            level,
            ..Default::default()
        })
        .collect()
}

impl Summary {
    /// Levels worth a column: L0 and every level holding a file somewhere.
    pub fn active_levels(&self) -> Vec<usize> {
        self.levels
            .iter()
            .filter(|l| l.level == 0 || l.files > 0)
            .map(|l| l.level)
            .collect()
    }

    pub fn of(st: &DirState) -> Summary {
        let mut versions = Vec::new();
        let mut all_levels = empty_levels();
        for v in &st.versions {
            let n = v.func.partitions() as usize;
            let mut parts: Vec<PartSummary> = (0..n)
                .map(|i| PartSummary {
                    partition: i as u32,
                    files: 0,
                    bytes: 0,
                    entries: 0,
                    pointer_files: 0,
                    pointers: 0,
                    levels: empty_levels(),
                })
                .collect();
            for f in st.files_of(v.id) {
                let Some(p) = parts.get_mut(f.partition as usize) else {
                    continue;
                };
                match f.kind {
                    TableKind::Pointers => {
                        p.pointer_files += 1;
                        p.pointers = p.pointers.saturating_add(f.entries);
                    }
                    _ => {
                        p.files += 1;
                        p.bytes = p.bytes.saturating_add(f.size);
                        p.entries = p.entries.saturating_add(f.entries);
                        let l = (f.level as usize).min(LEVELS - 1);
                        p.levels[l].files += 1;
                        p.levels[l].bytes = p.levels[l].bytes.saturating_add(f.size);
                        all_levels[l].files += 1;
                        all_levels[l].bytes = all_levels[l].bytes.saturating_add(f.size);
                    }
                }
            }
            let mut levels = empty_levels();
            for p in &parts {
                for (l, c) in p.levels.iter().enumerate() {
                    levels[l].files += c.files;
                    levels[l].bytes = levels[l].bytes.saturating_add(c.bytes);
                }
            }
            versions.push(VersionSummary {
                id: v.id,
                spec: v.spec().to_string(),
                fingerprint: format!("{:#018x}", v.func.fingerprint()),
                role: v.role.as_str(),
                files: parts.iter().map(|p| p.files).sum(),
                bytes: parts.iter().map(|p| p.bytes).fold(0, u64::saturating_add),
                entries: parts.iter().map(|p| p.entries).fold(0, u64::saturating_add),
                pointer_files: parts.iter().map(|p| p.pointer_files).sum(),
                pointers: parts
                    .iter()
                    .map(|p| p.pointers)
                    .fold(0, u64::saturating_add),
                levels,
                partitions: parts,
            });
        }
        let draining: Vec<DrainSummary> = versions
            .iter()
            .filter(|v| v.role == VersionRole::Draining.as_str())
            .map(|v| DrainSummary {
                version: v.id,
                files_left: v.files,
                bytes_left: v.bytes,
                entries_left: v.entries,
                forwarding_pointers: v.pointers,
            })
            .collect();
        let candidates: Vec<u32> = versions
            .iter()
            .filter(|v| v.role == VersionRole::Candidate.as_str())
            .map(|v| v.id)
            .collect();
        let (bytes_left, total_bytes) = st.migration_totals();
        let state = if !draining.is_empty() {
            "migrating"
        } else if !candidates.is_empty() {
            "planned"
        } else {
            "stable"
        };
        Summary {
            target: st.target,
            retired: st.retired.clone(),
            files: versions.iter().map(|v| v.files + v.pointer_files).sum(),
            bytes: st.files.iter().map(|f| f.size).fold(0, u64::saturating_add),
            levels: all_levels,
            migration: MigrationSummary {
                state,
                target: st.target,
                draining,
                candidates,
                bytes_left,
                total_bytes,
                progress: if total_bytes == 0 || bytes_left == 0 {
                    1.0
                } else {
                    1.0 - bytes_left as f64 / total_bytes as f64
                },
            },
            versions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry counts and sizes are the manifest's word, each bounded but not their sum: a
    /// summary of files claiming more than a u64 can count between them saturates (the
    /// `info` and `partitions` pages with it) instead of overflowing.
    #[test]
    fn claimed_entry_counts_past_u64_saturate() {
        let dir = tempfile::tempdir().unwrap();
        let opts = sluice::Options {
            migration_bytes_per_sec: 0,
            ..sluice::Options::default()
        };
        let db = sluice::Db::open(dir.path(), opts).unwrap();
        for round in 0..2 {
            db.put(format!("k{round}"), "v").unwrap();
            db.flush().unwrap();
        }
        // A second live version with a file of its own: the page adds up both.
        let v2 = db
            .register_partition_fn(sluice::PartitionSpec::Hash {
                partitions: 2,
                seed: 1,
                hashed_prefix: None,
            })
            .unwrap();
        db.set_target(v2).unwrap();
        db.put("k2", "v").unwrap();
        db.flush().unwrap();
        db.close().unwrap();
        let mut st = sluice::inspect::read_dir_state(dir.path()).unwrap();
        assert_eq!(st.files.len(), 3);
        for f in &mut st.files {
            f.entries = u64::MAX / 2 + 1;
            f.size = u64::MAX / 2 + 1;
        }
        let sum = Summary::of(&st);
        assert_eq!(sum.versions[0].entries, u64::MAX);
        assert_eq!(
            (sum.bytes, st.migration_totals()),
            (u64::MAX, (u64::MAX, u64::MAX))
        );
        assert_eq!(sum.versions[0].partitions[0].entries, u64::MAX);
        let page = crate::html::info_page(&st, &sum);
        assert!(page.contains("Entries"), "{page}");
    }
}
