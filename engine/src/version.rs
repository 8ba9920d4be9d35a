//! The file set: every live layout version, its partitions, and each partition's levels.
//!
//! A `FileSet` is immutable; a flush or compaction builds a new one from an edit and swaps it
//! in. Readers hold an `Arc` to the set they started with, which keeps its tables, and
//! their files on disk, alive.
//!
//! Level rules: in L0 files may overlap and are kept newest-first by max seqno; in L1 and
//! deeper, files of one partition never overlap and are kept sorted by smallest key.
//! Reads never rely on position for recency: they compare seqnos (see `read.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::layout::PartitionFn;
use crate::manifest::{FileRecord, MAX_LEVELS};
use crate::obsolete::FileDeleter;
use crate::sst::{Table, TableKind};
use crate::types::cmp_keys;

/// One SSTable in the file set.
#[derive(Debug)]
pub struct FileMeta {
    pub number: u64,
    pub size: u64,
    pub layout_version: u32,
    pub partition: u32,
    pub level: u8,
    pub kind: TableKind,
    pub smallest: Bytes,
    pub largest: Bytes,
    pub min_seqno: u64,
    pub max_seqno: u64,
    pub entries: u64,
    pub table: Arc<Table>,
    /// What every table of the database shares: the deleter of its file once obsolete
    /// and its table has dropped ([`FileMeta::mark_obsolete`]), and the seek count.
    home: Arc<TableHome>,
    /// Scans this L0 file may still cost before it is worth compacting (see
    /// [`FileMeta::charge_seek`]).
    seeks_left: AtomicI64,
}

/// What every table record ([`FileMeta`]) of one database shares.
#[derive(Debug)]
pub(crate) struct TableHome {
    /// Where a table's file goes once it is obsolete and its table has dropped.
    pub deleter: Arc<FileDeleter>,
    /// Seek allowances spent in this database, counted when one runs out: a compaction
    /// pick that found nothing is made again once this moves (see
    /// [`crate::db::Inner::pick_compaction`]).
    seeks_spent: std::sync::atomic::AtomicU64,
}

impl TableHome {
    pub fn new(fs: Arc<dyn crate::fs::Fs>) -> Arc<TableHome> {
        Arc::new(TableHome {
            deleter: FileDeleter::new(fs),
            seeks_spent: Default::default(),
        })
    }

    /// See [`TableHome::seeks_spent`](#structfield.seeks_spent).
    pub fn seek_allowances_spent(&self) -> u64 {
        self.seeks_spent.load(Ordering::Acquire)
    }
}

/// Bytes of compaction one wasted seek is worth: an L0 file may be sought, by scans that
/// also had to seek another sorted run of its partition, once per this many of its bytes
/// before it is compacted even though L0 is below its trigger (LevelDB's "seek
/// compaction", which counts 16 KiB per seek the same way).
pub const SEEK_COST_BYTES: u64 = 16 << 10;
/// Seeks allowed to any file (or idle memtable), however small.
pub const MIN_SEEKS: i64 = 100;
/// What a range scan's seek of a run counts against a seek allowance (which holds this many
/// units per allowed seek). A point read that probes a run it did not need — a filter check,
/// rarely a block search — counts [`PROBE_UNITS`]: about what each costs the reader.
pub const SCAN_SEEK_UNITS: i64 = 16;
/// See [`SCAN_SEEK_UNITS`].
pub const PROBE_UNITS: i64 = 1;

/// The seek allowance, in units, of a run (file or memtable) of `bytes`.
pub fn seek_allowance(bytes: u64) -> i64 {
    ((bytes / SEEK_COST_BYTES) as i64).max(MIN_SEEKS) * SCAN_SEEK_UNITS
}

impl FileMeta {
    /// Builds the in-memory record of a table that was just written or opened.
    pub fn new(table: Arc<Table>, level: u8, home: Arc<TableHome>) -> FileMeta {
        let p = table.props();
        let size = table.file_size();
        FileMeta {
            number: table.id(),
            size,
            layout_version: p.layout_version,
            partition: p.partition,
            level,
            kind: p.kind,
            smallest: Bytes::copy_from_slice(&p.smallest),
            largest: Bytes::copy_from_slice(&p.largest),
            min_seqno: p.min_seqno,
            max_seqno: p.max_seqno,
            entries: p.entries,
            table,
            home,
            seeks_left: AtomicI64::new(seek_allowance(size)),
        }
    }

    /// Records a read that had to seek or probe this file besides a deeper sorted run of
    /// its partition (`units`: [`SCAN_SEEK_UNITS`] for a scan, [`PROBE_UNITS`] for a point
    /// read): the overlap of runs costs every such read, and compacting them costs about
    /// `SEEK_COST_BYTES` per seek saved.
    pub fn charge_seek(&self, units: i64) {
        let before = self.seeks_left.fetch_sub(units, Ordering::Relaxed);
        if before > 0 && before <= units {
            // Released after the charge: a pick that sees the count sees the charge.
            self.home.seeks_spent.fetch_add(1, Ordering::Release);
        }
    }

    /// Whether scans have sought this file often enough to pay for its compaction.
    pub fn seeks_exhausted(&self) -> bool {
        self.seeks_left.load(Ordering::Relaxed) <= 0
    }

    /// The same table at another level (a trivial move).
    pub fn at_level(&self, level: u8) -> FileMeta {
        FileMeta::new(self.table.clone(), level, self.home.clone())
    }

    /// Once a manifest edit has removed the file: it is deleted when the last holder of its
    /// table lets go — every record of it (a trivial move makes another record of the same
    /// table), every view, every reader — so a view of any age can still open it, or link
    /// it (a checkpoint). The deletion goes to the [`FileDeleter`]: the last holder may be a
    /// reader.
    pub fn mark_obsolete(&self) {
        self.table.delete_when_dropped(&self.home.deleter);
    }

    pub fn record(&self) -> FileRecord {
        FileRecord {
            number: self.number,
            size: self.size,
            layout_version: self.layout_version,
            partition: self.partition,
            level: self.level,
            kind: self.kind,
            smallest: self.smallest.clone(),
            largest: self.largest.clone(),
            min_seqno: self.min_seqno,
            max_seqno: self.max_seqno,
            entries: self.entries,
        }
    }

    #[inline]
    pub fn contains(&self, key: &[u8]) -> bool {
        cmp_keys(&self.smallest, key).is_le() && cmp_keys(key, &self.largest).is_le()
    }

    pub fn overlaps(&self, smallest: &[u8], largest: &[u8]) -> bool {
        !(self.largest.as_ref() < smallest || self.smallest.as_ref() > largest)
    }
}

/// What a point read needs of one level's files, kept apart from the files themselves: their
/// key bounds in one buffer, and their seqno ranges and filters in one array, in the level's
/// order. A read searches these (a few cache lines per level, which stay cached) and reaches
/// a file's own record only to search its blocks. Searching the records themselves (each an
/// allocation of its own, its keys in two more, its filter behind its table) cost a cache
/// miss or two per step of a level's binary search, and one more per filter probed: the
/// larger part of a point read that finds nothing, and more of it the more layouts are live.
#[derive(Clone, Debug, Default)]
pub struct LevelIndex {
    keys: Vec<u8>,
    runs: Vec<RunBounds>,
}

/// One file of a [`LevelIndex`].
#[derive(Clone, Debug)]
pub struct RunBounds {
    /// `keys[start..mid]` is the file's smallest key, `keys[mid..end]` its largest.
    start: usize,
    mid: usize,
    end: usize,
    pub min_seqno: u64,
    pub max_seqno: u64,
    /// The table's bloom filter (shared with the table, not copied).
    pub filter: Bytes,
}

impl LevelIndex {
    fn build(files: &[Arc<FileMeta>]) -> LevelIndex {
        let mut keys = Vec::with_capacity(
            files
                .iter()
                .map(|f| f.smallest.len() + f.largest.len())
                .sum(),
        );
        let runs = files
            .iter()
            .map(|f| {
                let start = keys.len();
                keys.extend_from_slice(&f.smallest);
                let mid = keys.len();
                keys.extend_from_slice(&f.largest);
                RunBounds {
                    start,
                    mid,
                    end: keys.len(),
                    min_seqno: f.min_seqno,
                    max_seqno: f.max_seqno,
                    filter: f.table.filter().clone(),
                }
            })
            .collect();
        LevelIndex { keys, runs }
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn runs(&self) -> &[RunBounds] {
        &self.runs
    }

    fn smallest(&self, r: &RunBounds) -> &[u8] {
        &self.keys[r.start..r.mid]
    }

    fn largest(&self, r: &RunBounds) -> &[u8] {
        &self.keys[r.mid..r.end]
    }

    /// Whether the key range of `r` (one of this level's runs) holds `key`.
    #[inline]
    pub fn contains(&self, r: &RunBounds, key: &[u8]) -> bool {
        cmp_keys(self.smallest(r), key).is_le() && cmp_keys(key, self.largest(r)).is_le()
    }

    /// In a level of disjoint files (L1 and deeper), the position of the one whose range
    /// holds `key`.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let i = self
            .runs
            .partition_point(|r| cmp_keys(self.largest(r), key).is_lt());
        let r = self.runs.get(i)?;
        cmp_keys(self.smallest(r), key).is_le().then_some(i)
    }
}

/// The files of one partition.
#[derive(Clone, Debug, Default)]
pub struct PartitionFiles {
    /// Changed only through `insert` and `remove`, then `reindex`.
    pub levels: [Vec<Arc<FileMeta>>; MAX_LEVELS],
    /// Forwarding-pointer tables (draining partitions only); not part of any level.
    pub pointers: Vec<Arc<FileMeta>>,
    /// Each level's [`LevelIndex`].
    index: [LevelIndex; MAX_LEVELS],
    /// Levels changed since their index was built (a bit per level).
    stale: u8,
    /// Levels whose index holds a file (a bit per level), so that a read skips the
    /// empty ones without loading their indexes.
    occupied: u8,
}

const _: () = assert!(
    MAX_LEVELS <= u8::BITS as usize,
    "a bit per level in `stale`"
);

impl PartitionFiles {
    pub fn data_files(&self) -> impl Iterator<Item = &Arc<FileMeta>> {
        self.levels.iter().flatten()
    }

    pub fn data_file_count(&self) -> usize {
        self.levels.iter().map(|l| l.len()).sum()
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_files().map(|f| f.size).sum()
    }

    /// Entries in the data files, by their properties (each table's own count, so the sum
    /// saturates rather than trusting it).
    pub fn data_entries(&self) -> u64 {
        self.data_files()
            .map(|f| f.entries)
            .fold(0, u64::saturating_add)
    }

    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|f| f.size).sum()
    }

    /// The file in level `level >= 1` whose range holds `key`.
    pub fn file_for_key(&self, level: usize, key: &[u8]) -> Option<&Arc<FileMeta>> {
        self.levels[level].get(self.index(level).find(key)?)
    }

    /// What a point read searches of `level` (see [`LevelIndex`]): its runs are the level's
    /// files, in the same order.
    #[inline]
    pub fn index(&self, level: usize) -> &LevelIndex {
        debug_assert_eq!(self.index[level].len(), self.levels[level].len());
        &self.index[level]
    }

    /// The levels whose index holds a file, shallowest first (see [`LevelIndex`]).
    #[inline]
    pub fn occupied_levels(&self) -> impl Iterator<Item = usize> {
        let mut bits = self.occupied;
        std::iter::from_fn(move || {
            let level = bits.trailing_zeros() as usize;
            bits &= bits.wrapping_sub(1);
            (level < MAX_LEVELS).then_some(level)
        })
    }

    /// Files in `level` overlapping `[smallest, largest]`.
    pub fn overlapping(&self, level: usize, smallest: &[u8], largest: &[u8]) -> Vec<Arc<FileMeta>> {
        self.levels[level]
            .iter()
            .filter(|f| f.overlaps(smallest, largest))
            .cloned()
            .collect()
    }

    fn insert(&mut self, f: Arc<FileMeta>) {
        if f.kind == TableKind::Pointers {
            self.pointers.push(f);
            return;
        }
        let level = f.level as usize;
        self.stale |= 1 << level;
        let files = &mut self.levels[level];
        if level == 0 {
            let i = files.partition_point(|g| g.max_seqno > f.max_seqno);
            files.insert(i, f);
        } else {
            let i = files.partition_point(|g| g.smallest < f.smallest);
            files.insert(i, f);
        }
    }

    fn remove(&mut self, number: u64) -> bool {
        for (level, l) in self.levels.iter_mut().enumerate() {
            if let Some(i) = l.iter().position(|f| f.number == number) {
                l.remove(i);
                self.stale |= 1 << level;
                return true;
            }
        }
        if let Some(i) = self.pointers.iter().position(|f| f.number == number) {
            self.pointers.remove(i);
            return true;
        }
        false
    }

    /// A partition holding `files`, each at its own level, indexed (for tests that build
    /// partitions by hand rather than through [`FileSet::apply`]).
    #[cfg(test)]
    pub(crate) fn of(files: impl IntoIterator<Item = Arc<FileMeta>>) -> PartitionFiles {
        let mut p = PartitionFiles::default();
        for f in files {
            p.insert(f);
        }
        p.reindex();
        p
    }

    /// Rebuilds the index of every level changed since the last call (once per edit, not
    /// per file: a level's index is built in one pass over its files).
    pub(crate) fn reindex(&mut self) {
        for level in 0..MAX_LEVELS {
            if self.stale & (1 << level) != 0 {
                self.index[level] = LevelIndex::build(&self.levels[level]);
            }
        }
        self.stale = 0;
        self.occupied = (0..MAX_LEVELS)
            .filter(|&l| self.index[l].len() > 0)
            .fold(0, |bits, l| bits | 1 << l);
    }

    /// True if the level invariant (no overlap in L1+) holds.
    pub fn check_levels(&self) -> Result<(), String> {
        for (l, files) in self.levels.iter().enumerate().skip(1) {
            for w in files.windows(2) {
                if w[0].largest >= w[1].smallest {
                    return Err(format!(
                        "L{l} files {} and {} overlap",
                        w[0].number, w[1].number
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One live layout version.
#[derive(Clone, Debug)]
pub struct LayoutState {
    pub id: u32,
    pub func: Arc<PartitionFn>,
    pub parts: Vec<Arc<PartitionFiles>>,
    /// Has been the target. A registered layout that never was is a candidate: it holds no
    /// data and does not drain (so it is not retired for being empty).
    pub was_target: bool,
}

impl LayoutState {
    pub fn new(id: u32, func: Arc<PartitionFn>) -> LayoutState {
        let n = func.partitions() as usize;
        LayoutState {
            id,
            func,
            parts: (0..n)
                .map(|_| Arc::new(PartitionFiles::default()))
                .collect(),
            was_target: false,
        }
    }

    pub fn data_files(&self) -> impl Iterator<Item = &Arc<FileMeta>> {
        self.parts.iter().flat_map(|p| p.data_files())
    }

    pub fn data_file_count(&self) -> usize {
        self.parts.iter().map(|p| p.data_file_count()).sum()
    }

    pub fn data_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.data_bytes()).sum()
    }

    pub fn data_entries(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| p.data_entries())
            .fold(0, u64::saturating_add)
    }

    pub fn pointer_files(&self) -> impl Iterator<Item = &Arc<FileMeta>> {
        self.parts.iter().flat_map(|p| p.pointers.iter())
    }

    /// The data files of this layout that may still hold `key` at `seqno` (by the files'
    /// key and seqno ranges: one not named certainly does not).
    pub fn files_that_may_hold<'a>(
        &'a self,
        key: &'a [u8],
        seqno: u64,
    ) -> impl Iterator<Item = &'a Arc<FileMeta>> + 'a {
        let p = self.func.partition_of(key) as usize;
        self.parts.get(p).into_iter().flat_map(move |part| {
            part.data_files()
                .filter(move |f| f.contains(key) && (f.min_seqno..=f.max_seqno).contains(&seqno))
        })
    }
}

/// All live layout versions and their files.
#[derive(Clone, Debug, Default)]
pub struct FileSet {
    pub layouts: BTreeMap<u32, LayoutState>,
    pub target: u32,
}

impl FileSet {
    pub fn target_layout(&self) -> &LayoutState {
        &self.layouts[&self.target]
    }

    /// Whether `f` itself (this very file record, not another at its number: a trivial
    /// move replaces the record) is a data or pointer file of its partition here.
    pub fn holds(&self, f: &Arc<FileMeta>) -> bool {
        self.layouts
            .get(&f.layout_version)
            .and_then(|l| l.parts.get(f.partition as usize))
            .is_some_and(|p| {
                p.data_files()
                    .chain(p.pointers.iter())
                    .any(|g| Arc::ptr_eq(f, g))
            })
    }

    /// Layout versions that were the target and no longer are: their data drains into the
    /// target.
    pub fn draining(&self) -> impl Iterator<Item = &LayoutState> {
        let t = self.target;
        self.layouts
            .values()
            .filter(move |l| l.id != t && l.was_target)
    }

    pub fn all_files(&self) -> impl Iterator<Item = &Arc<FileMeta>> {
        self.layouts.values().flat_map(|l| {
            l.parts
                .iter()
                .flat_map(|p| p.data_files().chain(p.pointers.iter()))
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.all_files().map(|f| f.size).sum()
    }

    /// Applies file additions and removals, copying only the partitions they touch.
    /// Unknown layouts or partitions are reported, not skipped.
    pub fn apply(
        &self,
        added: &[Arc<FileMeta>],
        removed: &[(u32, u32, u64)],
    ) -> Result<FileSet, String> {
        let mut next = self.clone();
        for &(v, p, number) in removed {
            let part = next
                .layouts
                .get_mut(&v)
                .and_then(|l| l.parts.get_mut(p as usize))
                .ok_or_else(|| format!("removed file {number}: no partition v{v}/{p}"))?;
            if !Arc::make_mut(part).remove(number) {
                return Err(format!("removed file {number} is not in v{v}/{p}"));
            }
        }
        for f in added {
            let part = next
                .layouts
                .get_mut(&f.layout_version)
                .and_then(|l| l.parts.get_mut(f.partition as usize))
                .ok_or_else(|| {
                    format!(
                        "added file {}: no partition v{}/{}",
                        f.number, f.layout_version, f.partition
                    )
                })?;
            Arc::make_mut(part).insert(f.clone());
        }
        for layout in next.layouts.values_mut() {
            for part in layout.parts.iter_mut() {
                if part.stale != 0 {
                    Arc::make_mut(part).reindex();
                }
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;
    use crate::sst::{TableOptions, TableOwner, TableWriter};
    use crate::types::{Entry, Kind};
    use crate::{Compression, PartitionSpec};

    /// A table of keys `k{i:05}` for `i` in `keys` (step 2), seqnos from `seq`.
    fn table(
        dir: &std::path::Path,
        number: u64,
        level: u8,
        keys: std::ops::Range<u32>,
        seq: u64,
    ) -> Arc<FileMeta> {
        let path = dir.join(format!("{number:06}.sst"));
        let opts = TableOptions {
            block_size: 4096,
            compression: Compression::None,
            key_delta: true,
            bloom_bits_per_key: 10,
        };
        let owner = TableOwner {
            kind: TableKind::Data,
            layout_version: 1,
            fingerprint: 0,
            partition: 0,
        };
        let mut w = TableWriter::new(std::sync::Arc::new(StdFs), &path, opts, owner).unwrap();
        for (n, i) in keys.step_by(2).enumerate() {
            w.add(&Entry {
                key: Bytes::from(format!("k{i:05}")),
                seqno: seq + n as u64,
                kind: Kind::Value,
                value: Bytes::from_static(b"v"),
            })
            .unwrap();
        }
        w.finish().unwrap();
        let t = Table::open(&StdFs, &path, number, None).unwrap();
        Arc::new(FileMeta::new(
            Arc::new(t),
            level,
            TableHome::new(Arc::new(StdFs)),
        ))
    }

    /// Checks every level's index against its files: same order, bounds, seqnos and filter,
    /// and the same answer as a search of the records for every key in and around them.
    fn check(part: &PartitionFiles) {
        for level in 0..MAX_LEVELS {
            let (files, index) = (&part.levels[level], part.index(level));
            assert_eq!(index.len(), files.len(), "L{level}");
            for (f, r) in files.iter().zip(index.runs()) {
                assert_eq!(index.smallest(r), f.smallest.as_ref());
                assert_eq!(index.largest(r), f.largest.as_ref());
                assert_eq!((r.min_seqno, r.max_seqno), (f.min_seqno, f.max_seqno));
                assert_eq!(r.filter, *f.table.filter());
            }
            for i in 0..2100u32 {
                let key = format!("k{i:05}");
                let key = key.as_bytes();
                for (f, r) in files.iter().zip(index.runs()) {
                    assert_eq!(index.contains(r, key), f.contains(key), "L{level} {i}");
                }
                if level > 0 {
                    let by_records = files.iter().position(|f| f.contains(key));
                    assert_eq!(index.find(key), by_records, "L{level} key {i}");
                    let found = part.file_for_key(level, key).map(|f| f.number);
                    assert_eq!(
                        found,
                        by_records.map(|p| files[p].number),
                        "L{level} key {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn level_indexes_follow_every_edit() {
        let dir = tempfile::tempdir().unwrap();
        let func = Arc::new(PartitionFn::new(PartitionSpec::default()).unwrap());
        let mut set = FileSet {
            layouts: BTreeMap::from([(1, LayoutState::new(1, func))]),
            target: 1,
        };
        let part = |s: &FileSet| s.layouts[&1].parts[0].clone();
        // L0: overlapping files, kept newest first; L3 and L6: disjoint files with gaps.
        let mut n = 0;
        let mut t = |level: u8, keys: std::ops::Range<u32>, seq: u64| {
            n += 1;
            table(dir.path(), n, level, keys, seq)
        };
        let added = vec![
            t(0, 0..900, 5_000),
            t(0, 500..2000, 7_000),
            t(3, 100..300, 3_000),
            t(3, 700..701, 3_500),
            t(3, 1200..1600, 3_600),
            t(6, 0..400, 1),
            t(6, 401..1000, 1_000),
            t(6, 1500..2000, 2_000),
        ];
        set = set.apply(&added, &[]).unwrap();
        check(&part(&set));
        assert_eq!(
            part(&set).levels[0][0].max_seqno,
            added[1].max_seqno,
            "newest first"
        );
        // A compaction's edit: files out of two levels, others in.
        let more = vec![t(6, 1000..1400, 4_000), t(0, 10..20, 9_000)];
        set = set
            .apply(&more, &[(1, 0, added[3].number), (1, 0, added[0].number)])
            .unwrap();
        check(&part(&set));
        assert_eq!(part(&set).index(3).len(), 2);
        // A snapshot of the set taken before keeps its own indexes.
        let before = part(&set);
        set = set.apply(&[], &[(1, 0, added[6].number)]).unwrap();
        check(&part(&set));
        check(&before);
        assert_eq!(before.index(6).len(), 4);
        assert_eq!(part(&set).index(6).len(), 3);
    }
}
