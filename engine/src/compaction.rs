//! Leveled compaction, per partition.
//!
//! Each partition of a layout has its own L0..L6. A partition's levels are scored like
//! RocksDB's: L0 by file count over the trigger, Ln by bytes over target, where L1's target
//! is the layout-wide base divided among the partitions. The worst partition-level above 1.0
//! is compacted next; partitions compact in parallel, one job per partition at a time.
//!
//! What a compaction may drop (the same rules serve flush, compaction and migration):
//! - an entry shadowed by a newer entry of the same key in the same snapshot stripe (no open
//!   snapshot lies between them);
//! - a tombstone that every open snapshot can see, when no older entry for its key exists
//!   anywhere outside the job's inputs — in other files of this partition, in any other live
//!   layout version, or in a memtable (lazy moves put old seqnos there). Checking outside the
//!   inputs, instead of trusting "this is the bottom level", keeps the rule correct when
//!   migration and lazy moves place older data above newer data.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::cursor::{MergeCursor, OrderCheck};
use crate::db::{Core, Inner, View};
use crate::error::{Error, Result};
use crate::iter::{file_sources, Direction};
use crate::manifest::{EditRecord, VersionEdit, MAX_LEVELS};
use crate::memtable::{MemTable, MemWatch};
use crate::output::Outputs;
use crate::sst::TableKind;
use crate::stats::Counters;
use crate::types::Kind;
use crate::version::{FileMeta, FileSet, LayoutState, PartitionFiles};

/// Open snapshots, for deciding which older versions someone can still see.
pub(crate) struct Stripes {
    snaps: Vec<u64>,
}

impl Stripes {
    pub fn new(mut snaps: Vec<u64>) -> Stripes {
        snaps.sort_unstable();
        snaps.dedup();
        Stripes { snaps }
    }

    /// Index of the oldest snapshot that can see `seqno` (`len` = only the latest view).
    /// Two versions of a key in the same stripe are seen by exactly the same snapshots, so
    /// only the newer one matters.
    #[inline]
    pub fn stripe(&self, seqno: u64) -> usize {
        self.snaps.partition_point(|&s| s < seqno)
    }
}

/// Level sizing of one partition, derived from the bottom up (dynamic level bytes): the last
/// level holds most of the data, each level above it a `multiplier`-th of the one below,
/// and L0 compacts into the *base* level. A partition of up to the per-partition base size
/// keeps L0 compacting straight into its last level; a larger one always gets one middle
/// level (at least the base size), and more only while each would still hold the base size.
///
/// Without that first middle level (the rule added one only once the last level held
/// `multiplier` × the base size), every L0 compaction of a partition between 1 and 10 base
/// sizes rewrote the whole partition: 4 flushed files of 41 MB merged into a 126 MB last
/// level, 3.1 bytes written per byte flushed. A middle level moves down one file at a time
/// into the part of the level below it overlaps. RocksDB's rule also floors every further
/// middle level at the base size, which gives a 63 MB partition with a 4 MB base two middle
/// levels (4 and 6.3 MB). On the 8M-key biased-hash migration into 16 partitions, that
/// rule took 94 s and an even ladder (4 and 15.9 MB) 94 s, against 74 s for the earlier rule
/// (run back to back with the ladder) and 83 s for this one: more compaction competing
/// with the migration for two cores. (Single runs of that scenario vary by ±10 s.)
///
/// A partition of the target layout is sized for the data it will hold once the migration
/// into it completes (`incoming`, see [`incoming_per_partition`]), not for what it holds so
/// far. Sized by its current last level, a partition filling up through migration would keep
/// the last level as its base until that level reached `multiplier` × the base size, and
/// every L0 compaction in that stretch would rewrite the partition's whole last level (with
/// 16 partitions of 63 MB: a 2 MB L0 compaction rewriting up to 40 MB). Measured on an 8M-key
/// migration, that stretch (23–64% migrated) is where compaction debt rose to 2.6 GB and L0
/// to 20 files per partition, and the foreground read p99 with it.
pub(crate) struct Shape {
    pub base: usize,
    /// Target bytes of levels `base..MAX_LEVELS-1`; `u64::MAX` for the last level.
    pub targets: [u64; MAX_LEVELS],
    /// Migration is still filling the partition (`incoming` > 0).
    pub filling: bool,
}

pub(crate) fn shape(
    inner: &Inner,
    layout: &LayoutState,
    part: &PartitionFiles,
    incoming: u64,
) -> Shape {
    let last = MAX_LEVELS - 1;
    let parts = layout.parts.len().max(1) as u64;
    let base_bytes = (inner.opts.level_base_bytes / parts).max(1);
    let mult = inner.opts.level_multiplier.max(2);
    let mut targets = [u64::MAX; MAX_LEVELS];
    let mut base = last;
    let mut t = part.level_bytes(last).saturating_add(incoming);
    if t <= base_bytes {
        return Shape {
            base,
            targets,
            filling: incoming > 0,
        };
    }
    // Past the base size there is always one middle level (at least the base size); more
    // only while each would still hold the base size at a `mult` ratio.
    for level in (1..last).rev() {
        t /= mult;
        if base < last && t < base_bytes {
            break;
        }
        targets[level] = t.max(base_bytes);
        base = level;
    }
    Shape {
        base,
        targets,
        filling: incoming > 0,
    }
}

/// Which of a level's `n` files moves down next: one whose seek allowance is spent, else the
/// one that rewrites the fewest bytes below per byte it moves (`below(i)`; RocksDB's "min
/// overlapping ratio"). Ties go round-robin from `start` (the file after the last pick),
/// so every key range gets its turn.
fn pick_to_move(
    n: usize,
    start: usize,
    exhausted: impl Fn(usize) -> bool,
    below: impl Fn(usize) -> f64,
) -> usize {
    let mut best: Option<(f64, usize)> = None;
    for i in (start..n).chain(0..start.min(n)) {
        let cost = if exhausted(i) { -1.0 } else { below(i) };
        if best.is_none_or(|(b, _)| cost < b) {
            best = Some((cost, i));
        }
    }
    best.map_or(0, |(_, i)| i)
}

/// Bytes each partition of `layout` can expect from migration: the data still in draining
/// layouts spread evenly over its partitions, or 0 if `layout` is not the target. (Even
/// spreading is an estimate; it only sizes levels.)
pub(crate) fn incoming_per_partition(files: &FileSet, layout: &LayoutState) -> u64 {
    if layout.id != files.target {
        return 0;
    }
    let draining: u64 = files
        .draining()
        .flat_map(|l| l.parts.iter())
        .flat_map(|p| p.data_files())
        .map(|f| f.size)
        .sum();
    draining / layout.parts.len().max(1) as u64
}

/// Files a partition's data is cut into, at most: see [`output_file_bytes`].
const FILES_PER_PARTITION: u64 = 16;

/// Smallest size [`output_file_bytes`] cuts at (unless `target_file_bytes` is smaller): a
/// table's index, filter and footer are a fixed cost that a smaller file pays for too few
/// entries.
const MIN_FILE_BYTES: u64 = 64 << 10;

/// Size at which compactions cut their outputs into `layout`'s partitions: a partition's
/// share of the layout's data (what it holds and, for the target, what is still draining
/// into it) over [`FILES_PER_PARTITION`], between a sixteenth of
/// [`crate::Options::target_file_bytes`] (not under [`MIN_FILE_BYTES`]) and all of it.
///
/// Cut at `target_file_bytes` alone, a small partition's last level was one or two files,
/// the level above it was cut along them, and every move into the last level rewrote half
/// the partition for a sixteenth of it. Over the same 54 s of rate-capped random writes
/// into 8M keys, a `hash:16` database (63 MB partitions, 32 MiB files) wrote 2.1 GB of
/// compaction into its last level against 0.58 GB for the same data under one range
/// partition (1 GB in 32 files), and 0.68 GB with 4 MiB files; at 1M keys under `hash:16`
/// the overwrite write amplification fell from 4.5 to 3.7 with 2 MiB files.
pub(crate) fn output_file_bytes(inner: &Inner, files: &FileSet, layout: &LayoutState) -> u64 {
    let max = inner.opts.target_file_bytes;
    let parts = layout.parts.len().max(1) as u64;
    let held: u64 = layout.parts.iter().map(|p| p.data_bytes()).sum();
    let per_part = held / parts + incoming_per_partition(files, layout);
    let min = (max / 16).max(MIN_FILE_BYTES).min(max);
    (per_part / FILES_PER_PARTITION).clamp(min, max)
}

/// Compaction score of a partition's L0: its files over the trigger, held back while L0
/// holds fewer bytes than a middle base level (see below).
///
/// Each compaction of L0 into a middle base level rewrites every file of that level it
/// overlaps; under writes spread over the key space, the whole level. Compacting at the
/// file trigger alone, a base level of the base size took 4 flushed files into ~60 MB at
/// every L0 compaction: 2.2 bytes written per byte flushed in a 1M-key overwrite run, where
/// RocksDB — whose slower compactions let more files gather — wrote 1.6. So once the file
/// trigger is reached, L0 waits until it holds as many bytes as the base level: an L0
/// compaction then writes at most about two bytes per byte it takes out of L0. It waits at
/// most until twice the file trigger, so reads never probe more than that many L0 files
/// for long. A partition whose base is its last level (small partitions) compacts at the
/// file trigger as before: its L0 compactions are few and small.
///
/// A partition that migration is still filling waits the same way. (It used not to: the
/// base level then grew with migrated data, and an L0 waiting for its bytes held the pacer
/// back. Since migrated data from a range layout lands in the last level, held for it, the
/// base level holds foreground writes there as anywhere.) And there the levels between L0
/// and the base level count as L0 does (see [`gathers_above_base`]): migration outputs
/// that overlap what the partition holds are placed there, one sorted run per level, and
/// they go down together with L0 by the same rule, runs for files.
pub(crate) fn l0_score(inner: &Inner, part: &PartitionFiles, sh: &Shape) -> f64 {
    let l0 = &part.levels[0];
    let (runs, above) = l0_runs(part, sh);
    let by_files = runs as f64 / inner.opts.level0_compaction_trigger.max(1) as f64;
    let mut score = by_files;
    let base_bytes = part.level_bytes(sh.base);
    if sh.base < MAX_LEVELS - 1 && base_bytes > 0 {
        let by_bytes = above as f64 / base_bytes as f64;
        score = by_files.min(by_bytes.max(by_files / 2.0));
    }
    // Overlapping L0 files that reads have sought often enough are compacted below the
    // trigger too: a read-mostly stretch after writes should not keep paying for them.
    if l0.len() >= 2 && l0.iter().any(|f| f.seeks_exhausted()) {
        score = score.max(1.0);
    }
    // Writers are slowed from the slowdown trigger on and stopped at the stop trigger:
    // from there L0 compacts whatever its bytes. (With those triggers below twice the
    // compaction trigger, the rule above would leave stopped writers waiting for ever.)
    if runs >= inner.opts.level0_slowdown_trigger {
        score = score.max(1.0);
    }
    score
}

/// Sorted runs L0 counts (its files, and where levels above the base gather with it, each
/// of those levels) and the bytes they hold.
fn l0_runs(part: &PartitionFiles, sh: &Shape) -> (usize, u64) {
    let l0 = &part.levels[0];
    if gathers_above_base(sh) {
        let upper = (1..sh.base).filter(|&l| !part.levels[l].is_empty());
        (
            l0.len() + upper.clone().count(),
            part.level_bytes(0) + upper.map(|l| part.level_bytes(l)).sum::<u64>(),
        )
    } else {
        (l0.len(), part.level_bytes(0))
    }
}

/// Whether a partition's L0 is past halfway from its compaction trigger to the write
/// slowdown (12 runs with the defaults' 4 and 20): its compaction then goes before any
/// other level's, whatever their scores (see [`Inner::pick_compaction`]). Runs are counted
/// as L0's score counts them: its files, and while migration fills the partition, the
/// levels that gather with it (the slowdown itself counts L0's files alone).
///
/// By score alone, a level far over its target outranks an L0 that is only waiting: when
/// a migration into a layout completes, the level above the last one, held for migrated
/// data until then (see [`holds_for_migration`]), scores up to `multiplier` in every
/// partition at once, and L0's score is halved while the base level holds more bytes than
/// L0. In the 8M-key biased-hash migration the writer was then slowed for 0.4–0.7 s in
/// the seconds after completion, with L0 at 20 files in a partition, while the
/// compaction threads moved the held levels down one file at a time.
pub(crate) fn l0_urgent(inner: &Inner, part: &PartitionFiles, sh: &Shape) -> bool {
    let o = &inner.opts;
    let (trigger, slowdown) = (o.level0_compaction_trigger, o.level0_slowdown_trigger);
    let half_way = trigger.saturating_add(slowdown.saturating_sub(trigger) / 2);
    l0_runs(part, sh).0 >= half_way.max(1)
}

/// Whether the levels above the base level go down with L0, all at once, instead of one
/// file at a time: in a partition that migration is filling and that has middle levels.
///
/// Migration outputs land at the deepest level where they overlap nothing. From a hash
/// layout, every output spans the key space of its target partition, so each lands alone
/// in a level above the base level; moved down one file at a time as usual, each rewrote
/// the whole base level, which grows with every output merged into it: migrating an
/// 8M-key `hash:16` database into `hash:16` with another seed wrote 16 GB of compaction
/// into the base levels for 1.1 GB migrated. Gathered until they hold as many bytes as
/// the base level (or as many runs as twice the L0 trigger), each merge writes at most
/// about twice what it takes down, as L0's do: 4.7 GB in the same run.
pub(crate) fn gathers_above_base(sh: &Shape) -> bool {
    sh.filling && sh.base < MAX_LEVELS - 1
}

/// How many levels, from L0 down, a job picked at L0 or above the base level takes into
/// the base level: all of them where they gather (see [`gathers_above_base`]) or where,
/// with levels above the base holding data, together they hold no more than the base
/// level; else L0 alone (and a level above the base goes down one file at a time).
///
/// Migration outputs placed above the base level each span the partition's key space
/// (they overlapped everything below). Moved down one level at a time, each rewrote the
/// whole base level: the 8M-key range → `hash:16` migration's last jobs (the source's L0
/// files, over every key) left three runs of 0.8 MB above a 12 MB base level in each target
/// partition, and draining them once the migration ended wrote 0.6 GB, most of the gap
/// between its compaction and the control run's. Together, the base level is rewritten
/// once.
pub(crate) fn levels_down_together(part: &PartitionFiles, sh: &Shape) -> usize {
    if gathers_above_base(sh) {
        return sh.base;
    }
    let upper = (1..sh.base).any(|l| !part.levels[l].is_empty());
    let above: u64 = (0..sh.base).map(|l| part.level_bytes(l)).sum();
    if upper && above <= part.level_bytes(sh.base) {
        sh.base
    } else {
        1
    }
}

/// Compaction score of each level of a partition: (level, score).
fn scores(inner: &Inner, part: &PartitionFiles, sh: &Shape) -> Vec<(usize, f64)> {
    let mut v = Vec::with_capacity(MAX_LEVELS - 1);
    v.push((0, l0_score(inner, part, sh)));
    for level in 1..MAX_LEVELS - 1 {
        let bytes = part.level_bytes(level);
        let score = if holds_for_migration(inner, sh, part, level)
            || (level < sh.base && gathers_above_base(sh))
        {
            // Held, or gathered with L0 (its score counts this level).
            0.0
        } else if level < sh.base {
            // Above the base level (the partition shrank, or data was placed there):
            // drain it down.
            if bytes > 0 {
                2.0
            } else {
                0.0
            }
        } else if part.levels[level].iter().any(|f| f.seeks_exhausted()) {
            // A middle-level file that scans keep seeking besides the level below moves
            // down even under target (as in LevelDB): read-mostly stretches end up with one
            // sorted run per partition.
            (bytes as f64 / sh.targets[level] as f64).max(1.0)
        } else {
            bytes as f64 / sh.targets[level] as f64
        };
        v.push((level, score));
    }
    v
}

/// Whether `level` keeps its files while migration fills the partition: the level above
/// the last one does not move into it, so the last level holds only migrated data, where
/// migration outputs land (`place_outputs`) without overlapping foreground writes. Old
/// data placed under a file of new writes spanning the key space had to go to L0 and be
/// rewritten on its way down again, four to five times over an 8M-key migration.
///
/// The hold lasts while the level stays within `multiplier` × its target: a migration
/// paused for long under heavy writes must not grow it without bound.
fn holds_for_migration(inner: &Inner, sh: &Shape, part: &PartitionFiles, level: usize) -> bool {
    sh.filling
        && level == MAX_LEVELS - 2
        && sh.base <= level
        && part.level_bytes(level)
            <= sh.targets[level].saturating_mul(inner.opts.level_multiplier.max(2))
}

/// Estimated bytes compaction must still rewrite to bring every level under target.
pub(crate) fn pending_bytes(inner: &Inner, files: &FileSet) -> u64 {
    let mut debt = 0u64;
    let layout = files.layouts.get(&files.target);
    for l in layout.into_iter() {
        let incoming = incoming_per_partition(files, l);
        for p in &l.parts {
            let sh = shape(inner, l, p, incoming);
            if l0_score(inner, p, &sh) >= 1.0 {
                debt = debt.saturating_add(
                    (0..levels_down_together(p, &sh))
                        .chain([sh.base])
                        .map(|l| p.level_bytes(l))
                        .sum(),
                );
            }
            for level in 1..MAX_LEVELS - 1 {
                let b = p.level_bytes(level);
                if holds_for_migration(inner, &sh, p, level)
                    || (level < sh.base && gathers_above_base(&sh))
                {
                    continue;
                }
                if level < sh.base {
                    debt = debt.saturating_add(b.saturating_mul(2));
                } else if b > sh.targets[level] {
                    // The excess, plus the overlapping part of the next level it merges with
                    // (taken at the full multiplier, even for a middle level whose next level
                    // is closer in size: an estimate with the real ratio let the pacer keep
                    // its full budget while writes were compacting, and the 8M-key migration's
                    // read p99 rose from 1.35–1.36× the control run to 1.67–1.98×).
                    debt = debt.saturating_add(
                        (b - sh.targets[level])
                            .saturating_mul(inner.opts.level_multiplier.saturating_add(1)),
                    );
                }
            }
        }
    }
    debt
}

/// One compaction, as picked.
pub(crate) struct CompactionJob {
    pub id: u64,
    pub version: u32,
    pub partition: u32,
    /// Partitions of `version` the job holds busy: `partition`, and for a migration job the
    /// partitions of its other inputs (see `pick_draining_file`).
    pub sources: Vec<u32>,
    pub output_level: usize,
    pub inputs: Vec<Arc<FileMeta>>,
    /// Move the inputs to `output_level` without rewriting them.
    pub trivial: bool,
    /// A migration compaction: inputs come from a draining layout and outputs go to this
    /// layout (the target when the job was picked), each output placed at install time.
    pub migrate_to: Option<u32>,
    /// Forwarding pointers of the draining partitions (migration only): values they cover
    /// were already moved and are dropped instead of migrated again.
    pub pointers: Vec<Arc<FileMeta>>,
    /// The inputs are a draining partition's pointer files, merged into one.
    pub pointer_merge: bool,
    pub files: Arc<FileSet>,
    /// The memtables when the job was picked, watched without keeping them alive.
    pub mems: Vec<MemWatch>,
    pub stripes: Stripes,
}

impl CompactionJob {
    pub fn input_bytes(&self) -> u64 {
        self.inputs.iter().map(|f| f.size).sum()
    }
}

fn overlap_range(files: &[Arc<FileMeta>]) -> (Bytes, Bytes) {
    let lo = files
        .iter()
        .map(|f| &f.smallest)
        .min()
        .cloned()
        .unwrap_or_default();
    let hi = files
        .iter()
        .map(|f| &f.largest)
        .max()
        .cloned()
        .unwrap_or_default();
    (lo, hi)
}

impl Inner {
    /// Picks the most urgent compaction in the target layout, marking its partition busy.
    ///
    /// A pick that finds nothing is remembered: what it scores depends only on the file
    /// set, the options, the partitions busy and the files whose seek allowance is spent,
    /// so until the set changes, an allowance runs out or a job ends, the next pick is
    /// skipped. An idle database of 4096 partitions spent ~4% of a core scoring every
    /// partition each 100 ms (BENCHMARKS.md §1, "Idle CPU").
    pub(crate) fn pick_compaction(&self, core: &mut Core, view: &View) -> Option<CompactionJob> {
        let spent = self.home.seek_allowances_spent();
        if let Some((set, n)) = &core.nothing_to_compact {
            if *n == spent && std::ptr::eq(set.as_ptr(), Arc::as_ptr(&view.files)) {
                return None;
            }
        }
        core.picks_scored += 1;
        let job = self.pick_compaction_now(core, view);
        core.nothing_to_compact = match job {
            None => Some((Arc::downgrade(&view.files), spent)),
            Some(_) => None,
        };
        job
    }

    fn pick_compaction_now(&self, core: &mut Core, view: &View) -> Option<CompactionJob> {
        let files = &view.files;
        let layout = files.layouts.get(&files.target)?;
        let (pi, level) =
            self.most_urgent(files, layout, |pi| core.busy.contains(&(layout.id, pi)))?;
        let job = self.build_job(core, view, layout.id, pi, level)?;
        core.busy.insert((layout.id, pi));
        Some(job)
    }

    /// The (partition, level) of `layout` to compact next among partitions not `busy`: an
    /// L0 past halfway to the write slowdown first (see [`l0_urgent`]), then the highest
    /// score of at least 1.
    fn most_urgent(
        &self,
        files: &FileSet,
        layout: &LayoutState,
        busy: impl Fn(u32) -> bool,
    ) -> Option<(u32, usize)> {
        let mut best: Option<((bool, f64), u32, usize)> = None;
        let incoming = incoming_per_partition(files, layout);
        for (pi, part) in layout.parts.iter().enumerate() {
            if busy(pi as u32) {
                continue;
            }
            let sh = shape(self, layout, part, incoming);
            let urgent = l0_urgent(self, part, &sh);
            for (level, score) in scores(self, part, &sh) {
                let key = (urgent && level == 0, score);
                if score >= 1.0 && best.is_none_or(|b| key > b.0) {
                    best = Some((key, pi as u32, level));
                }
            }
        }
        best.map(|(_, pi, level)| (pi, level))
    }

    fn build_job(
        &self,
        core: &mut Core,
        view: &View,
        version: u32,
        pi: u32,
        level: usize,
    ) -> Option<CompactionJob> {
        let layout = view.files.layouts.get(&version)?;
        let part = layout.parts.get(pi as usize)?;
        // L0, and anything left above the base level, goes straight to the base level.
        let sh = shape(
            self,
            layout,
            part,
            incoming_per_partition(&view.files, layout),
        );
        let base = sh.base;
        let out = if level < base { base } else { level + 1 };
        let together = levels_down_together(part, &sh);
        let (inputs, trivial) = if level == 0 || (level < base && together == base) {
            let l0: Vec<_> = (0..together)
                .flat_map(|l| part.levels[l].iter().cloned())
                .collect();
            if l0.is_empty() {
                return None;
            }
            let (lo, hi) = overlap_range(&l0);
            let next = part.overlapping(out, &lo, &hi);
            // Non-overlapping L0 files that touch nothing in the base level (sequential loads) move down
            // without a rewrite.
            let mut sorted = l0.clone();
            sorted.sort_by(|a, b| a.smallest.cmp(&b.smallest));
            let disjoint = sorted.windows(2).all(|w| w[0].largest < w[1].smallest);
            if next.is_empty() && disjoint {
                (sorted, true)
            } else {
                let mut v = l0;
                v.extend(next);
                (v, false)
            }
        } else {
            let files = &part.levels[level];
            if files.is_empty() {
                return None;
            }
            let cursor = core.compact_cursor.get(&(version, pi, level));
            let start = cursor
                .and_then(|c| files.iter().position(|f| f.smallest > *c))
                .unwrap_or(0);
            let below = |i: usize| -> f64 {
                let f = &files[i];
                let bytes: u64 = part.levels[out]
                    .iter()
                    .filter(|g| g.overlaps(&f.smallest, &f.largest))
                    .map(|g| g.size)
                    .sum();
                bytes as f64 / f.size.max(1) as f64
            };
            let f = files[pick_to_move(files.len(), start, |i| files[i].seeks_exhausted(), below)]
                .clone();
            core.compact_cursor
                .insert((version, pi, level), f.largest.clone());
            let next = part.overlapping(out, &f.smallest, &f.largest);
            if next.is_empty() {
                (vec![f], true)
            } else {
                let mut v = vec![f];
                v.extend(next);
                (v, false)
            }
        };
        Some(self.new_job(core, view, version, pi, out, inputs, trivial, None))
    }

    /// Builds a job and reserves its output key range at its output level, so a migration
    /// output installed meanwhile cannot land where this job's output will go.
    #[allow(
        clippy::too_many_arguments,
        reason = "one constructor for every job kind"
    )]
    pub(crate) fn new_job(
        &self,
        core: &mut Core,
        view: &View,
        version: u32,
        partition: u32,
        output_level: usize,
        inputs: Vec<Arc<FileMeta>>,
        trivial: bool,
        migrate_to: Option<u32>,
    ) -> CompactionJob {
        core.next_job_id += 1;
        let id = core.next_job_id;
        if let Some(t) = migrate_to {
            // The layout receiving the outputs must not retire while they are written.
            *core.writing_to.entry(t).or_insert(0) += 1;
        }
        if migrate_to.is_none() {
            let (lo, hi) = overlap_range(&inputs);
            core.reserved.push(Reservation {
                job: id,
                version,
                partition,
                level: output_level,
                smallest: lo,
                largest: hi,
            });
        }
        let pointers = if migrate_to.is_some() {
            view.files.layouts[&version].parts[partition as usize]
                .pointers
                .clone()
        } else {
            Vec::new()
        };
        CompactionJob {
            id,
            version,
            partition,
            sources: vec![partition],
            output_level,
            inputs,
            trivial,
            migrate_to,
            pointers,
            pointer_merge: false,
            files: view.files.clone(),
            mems: view.memtables().iter().map(MemTable::watch).collect(),
            stripes: Stripes::new(self.snapshot_list()),
        }
    }

    /// A job compacting every data file of one partition into its deepest non-empty level.
    pub(crate) fn full_partition_job(
        &self,
        core: &mut Core,
        view: &View,
        version: u32,
        pi: u32,
    ) -> Option<CompactionJob> {
        let layout = view.files.layouts.get(&version)?;
        let part = layout.parts.get(pi as usize)?;
        let inputs: Vec<_> = part.data_files().cloned().collect();
        if inputs.is_empty() {
            return None;
        }
        let deepest = (1..MAX_LEVELS)
            .rev()
            .find(|&l| !part.levels[l].is_empty())
            .unwrap_or(1)
            .max(
                shape(
                    self,
                    layout,
                    part,
                    incoming_per_partition(&view.files, layout),
                )
                .base,
            );
        Some(self.new_job(core, view, version, pi, deepest, inputs, false, None))
    }

    /// Merges a draining partition's pointer files into one (duplicates collapse).
    fn merge_pointers(&self, job: &CompactionJob) -> Result<()> {
        let layout = job
            .files
            .layouts
            .get(&job.version)
            .ok_or(Error::UnknownVersion(job.version))?;
        let mut merge = MergeCursor::new(file_sources(&job.inputs)?, Direction::Forward);
        let mut out = Outputs::new(self, TableKind::Pointers, 0, None);
        let mut order = OrderCheck::default();
        while merge.valid() {
            order.pass(&merge)?;
            let t = merge.top();
            out.add_parts(
                layout,
                job.partition,
                t.key(),
                t.seqno(),
                t.kind(),
                t.value(),
            )?;
            merge.advance()?;
        }
        let read = job.input_bytes();
        let written = out.bytes_written;
        let outputs = out.finish()?;
        self.install_compaction(job, outputs, read, written, 0)
    }

    /// Releases what a job held: its partition, its reserved output range, and its
    /// registration as a writer into the target layout.
    pub(crate) fn release_job(&self, core: &mut Core, job: &CompactionJob) {
        // Its partitions may compact again (after a failure, in the same file set).
        core.nothing_to_compact = None;
        for p in &job.sources {
            core.busy.remove(&(job.version, *p));
        }
        core.reserved.retain(|r| r.job != job.id);
        core.migration_space.remove(&job.id);
        if job.migrate_to.is_some() {
            for f in &job.inputs {
                core.migrating.remove(&f.number);
            }
        }
        if let Some(t) = job.migrate_to {
            if let Some(c) = core.writing_to.get_mut(&t) {
                *c -= 1;
            }
        }
    }

    /// Runs a picked job and installs its result. The caller releases the job.
    pub(crate) fn run_compaction(&self, job: &CompactionJob) -> Result<()> {
        if job.trivial {
            return self.install_compaction(job, Vec::new(), 0, 0, 0);
        }
        if job.pointer_merge {
            return self.merge_pointers(job);
        }
        let out_version = job.migrate_to.unwrap_or(job.version);
        let layout = job
            .files
            .layouts
            .get(&out_version)
            .ok_or(Error::UnknownVersion(out_version))?;
        let read = job.input_bytes();
        let mut merge = MergeCursor::new(file_sources(&job.inputs)?, Direction::Forward);
        let mut pointers = if job.pointers.is_empty() {
            None
        } else {
            Some(MergeCursor::new(
                file_sources(&job.pointers)?,
                Direction::Forward,
            ))
        };
        let input_set: HashSet<u64> = job.inputs.iter().map(|f| f.number).collect();
        let file_bytes = output_file_bytes(self, &job.files, layout);
        let mut out = Outputs::new(
            self,
            TableKind::Data,
            job.output_level as u8,
            Some(file_bytes),
        )
        .limit_open_files();
        if job.migrate_to.is_none() && job.output_level + 1 < MAX_LEVELS {
            // Outputs into a middle level follow the file boundaries of the level below.
            let below = layout
                .parts
                .get(job.partition as usize)
                .map(|p| p.levels[job.output_level + 1].iter().skip(1))
                .into_iter()
                .flatten()
                .map(|f| f.smallest.clone())
                .collect();
            out = out.cut_before(job.partition, below, file_bytes / 8);
        }
        if job.migrate_to.is_some() && job.files.draining().count() == 1 {
            // An output that runs on past the last key a target partition's last level
            // holds is cut there: the part over keys already there overlaps it and is placed
            // above, the rest lands in the last level, next to it. (Without the cut the whole
            // output would overlap, and go above, whenever the job's first keys do: 8M keys
            // hash:16 → hash:16, write amplification 2.44 against 0.99.) Only while one
            // layout drains: migration then runs in key order, and what lies past the last
            // level's last key lies past all that migrated. With two (the biased-hash fix:
            // v1 range and v2 hash into v3), the part past it ran ahead of the other
            // layout's migration there and pushed its outputs above (1.70 against 1.08).
            for (p, part) in layout.parts.iter().enumerate() {
                if let Some(f) = part.levels[MAX_LEVELS - 1].last() {
                    let mut past = Vec::with_capacity(f.largest.len() + 1);
                    past.extend_from_slice(&f.largest);
                    past.push(0);
                    out = out.cut_before(p as u32, vec![Bytes::from(past)], 0);
                }
            }
        }
        let mut order = OrderCheck::default();
        let mut last_stripe = None;
        let mut forwarded = 0u64;
        while merge.valid() {
            if order.pass(&merge)? {
                last_stripe = None;
            }
            let cur_key = order.key();
            let t = merge.top();
            let (seqno, kind) = (t.seqno(), t.kind());
            let st = job.stripes.stripe(seqno);
            let keep = if last_stripe == Some(st) {
                false
            } else {
                last_stripe = Some(st);
                if pointers
                    .as_mut()
                    .map(|ps| forwarded_by(ps, cur_key, seqno))
                    .transpose()?
                    .unwrap_or(false)
                    && copy_elsewhere(&job.files, job.version, cur_key, seqno)?
                {
                    // Already moved by a read, with this seqno and value: each byte moves once.
                    forwarded += 1;
                    false
                } else {
                    !(kind == Kind::Delete
                        && st == 0
                        && !older_entry_outside(job, &input_set, cur_key, seqno))
                }
            };
            if keep {
                let t = merge.top();
                let p = match job.migrate_to {
                    Some(_) => layout.func.partition_of(t.key()),
                    None => job.partition,
                };
                out.add_parts(layout, p, t.key(), seqno, kind, t.value())?;
            }
            merge.advance()?;
        }
        let written = out.bytes_written;
        let outputs = out.finish()?;
        let written = written.max(outputs.iter().map(|f| f.size).sum());
        self.install_compaction(job, outputs, read, written, forwarded)
    }

    /// Installs a job's outputs in place of its inputs; `forwarded`: the values a migration
    /// job dropped as already moved.
    fn install_compaction(
        &self,
        job: &CompactionJob,
        outputs: Vec<Arc<FileMeta>>,
        read: u64,
        written: u64,
        forwarded: u64,
    ) -> Result<()> {
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::CompactionBeforeInstall);
        let mut core = self.core.lock();
        let view = self.view.load_full();
        if job.pointer_merge && !job.inputs.iter().all(|f| view.files.holds(f)) {
            // A retarget to this layout (or its retirement) removed its pointer files while
            // they were being merged: the merged copy covers nothing now and is dropped.
            for f in &outputs {
                f.mark_obsolete();
            }
            return Ok(());
        }
        let removed: Vec<(u32, u32, u64)> = job
            .inputs
            .iter()
            .map(|f| (f.layout_version, f.partition, f.number))
            .collect();
        let mut removed = removed;
        let added: Vec<Arc<FileMeta>> = if job.trivial {
            job.inputs
                .iter()
                .map(|f| Arc::new(f.at_level(job.output_level as u8)))
                .collect()
        } else if job.migrate_to.is_some() {
            // Pointers vanish with the draining partition: once its last data file has
            // migrated, they point at nothing that could be migrated again.
            for part in job.sources.iter().filter_map(|&p| {
                view.files
                    .layouts
                    .get(&job.version)
                    .and_then(|l| l.parts.get(p as usize))
            }) {
                let left = part
                    .data_files()
                    .filter(|f| !job.inputs.iter().any(|i| i.number == f.number))
                    .count();
                if left == 0 {
                    for p in &part.pointers {
                        removed.push((p.layout_version, p.partition, p.number));
                    }
                }
            }
            place_outputs(&core, &view.files, outputs)
        } else {
            outputs
        };
        let new_files = match view.files.apply(&added, &removed) {
            Ok(f) => f,
            Err(e) => {
                for f in added.iter().filter(|_| !job.trivial) {
                    f.mark_obsolete();
                }
                return Err(Error::corruption(
                    &self.dir,
                    0,
                    format!("compaction install: {e}"),
                ));
            }
        };
        let mut edit = VersionEdit::default();
        for n in &removed {
            edit.push(EditRecord::DeleteFile(n.2));
        }
        for f in &added {
            edit.push(EditRecord::AddFile(f.record()));
        }
        edit.push(EditRecord::NextFile(core.next_file));
        // The outputs' directory entries must be durable before the manifest names them.
        // If the manifest edit itself failed, the record may be in the file anyway (a
        // failed fsync leaves it in the page cache, a short write part of it) and a reopen
        // may replay it: the outputs then stay on disk, and the open's orphan sweep removes
        // them if the edit did not survive. Only an edit refused before it was written, or
        // a failed directory sync (which stops writes unless it synced nothing: see
        // `sync_dir`; the job is then retried), lets them go now.
        let logged = self.sync_dir().map_err(|e| (e, true)).and_then(|_| {
            self.log_edit(&mut core, &edit).map_err(|e| {
                let unwritten = crate::db::edit_unwritten(&e);
                (e, unwritten)
            })
        });
        if let Err((e, unwritten)) = logged {
            if !job.trivial && unwritten {
                for f in &added {
                    f.mark_obsolete();
                }
            }
            return Err(e);
        }
        // Lazy moves check their source file is in the view under the read side of this
        // lock; marking the inputs obsolete and swapping the view happen as one step.
        let install = self.install.write();
        if !job.trivial {
            for f in &job.inputs {
                f.mark_obsolete();
            }
            for (v, p, n) in &removed {
                if let Some(f) = view
                    .files
                    .layouts
                    .get(v)
                    .and_then(|l| l.parts.get(*p as usize))
                    .and_then(|part| part.pointers.iter().find(|f| f.number == *n))
                {
                    f.mark_obsolete();
                }
            }
        }
        self.swap_view(&core, |v| View {
            mem: v.mem.clone(),
            imm: v.imm.clone(),
            files: Arc::new(new_files),
        });
        drop(install);
        if job.migrate_to.is_some() {
            // Counted once installed: a job that fails before leaves its inputs to the
            // next one, which would count them again.
            self.note_migrated(&mut core, job, read, written, forwarded);
        }
        self.maybe_roll_manifest(&mut core)?;
        drop(core);
        if !job.trivial {
            let c = &self.counters;
            for f in &added {
                let level = (f.level as usize).min(MAX_LEVELS - 1);
                Counters::add(&c.level_written[level], f.size);
                if job.migrate_to.is_some() {
                    Counters::add(&c.level_migrated[level], f.size);
                }
            }
        }
        if job.trivial {
            Counters::add(&self.counters.trivial_moves, 1);
        } else if job.migrate_to.is_some() {
            Counters::add(&self.counters.migration_read, read);
            Counters::add(&self.counters.migration_written, written);
            Counters::add(&self.counters.compaction_read, read);
            Counters::add(&self.counters.compaction_written, written);
        } else {
            Counters::add(&self.counters.compactions, 1);
            Counters::add(&self.counters.compaction_read, read);
            Counters::add(&self.counters.compaction_written, written);
        }
        Ok(())
    }

    /// Flushes, then compacts every partition of every live layout into one level.
    pub fn compact_all(&self) -> Result<()> {
        self.flush_all()?;
        let mut core = self.core.lock();
        let view = self.view.load_full();
        core.next_manual_request += 1;
        let id = core.next_manual_request;
        let mut queued = 0;
        for l in view.files.layouts.values() {
            for (pi, p) in l.parts.iter().enumerate() {
                if p.data_file_count() > 0 {
                    core.manual.push_back((l.id, pi as u32, id));
                    queued += 1;
                }
            }
        }
        drop(view);
        if queued == 0 {
            return Ok(());
        }
        core.manual_requests.insert(
            id,
            ManualRequest {
                pending: queued,
                error: None,
            },
        );
        self.bg_cv.notify_all();
        let r = loop {
            if let Err(e) = self.check_writable() {
                break Err(e);
            }
            let req = &core.manual_requests[&id];
            if req.pending == 0 {
                break match &req.error {
                    Some(e) => Err(Error::Background(format!("manual compaction: {e}"))),
                    None => Ok(()),
                };
            }
            self.stall_cv
                .wait_for(&mut core, std::time::Duration::from_millis(50));
        };
        core.manual_requests.remove(&id);
        r
    }
}

/// One `Db::compact` call's jobs: how many are queued or running, and the first error.
#[derive(Debug, Default)]
pub(crate) struct ManualRequest {
    pub pending: usize,
    pub error: Option<String>,
}

impl ManualRequest {
    /// Books one of the request `id`'s jobs as done (`error`: how it failed), if its
    /// caller still waits.
    pub fn done(core: &mut Core, id: u64, error: Option<String>) {
        if let Some(r) = core.manual_requests.get_mut(&id) {
            r.pending = r.pending.saturating_sub(1);
            if let Some(e) = error {
                r.error.get_or_insert(e);
            }
        }
    }
}

/// True if an entry for `e.key` older than `e.seqno` may exist outside the job's inputs.
fn older_entry_outside(job: &CompactionJob, inputs: &HashSet<u64>, key: &[u8], seqno: u64) -> bool {
    if seqno <= 1 {
        return false;
    }
    if job.mems.iter().any(|m| m.may_hold_older(key, seqno)) {
        return true;
    }
    let h = crate::sst::bloom::key_hash(key);
    let older = |f: &Arc<FileMeta>| {
        !inputs.contains(&f.number)
            && f.min_seqno < seqno
            && f.contains(key)
            && f.table.may_contain_hash(h)
    };
    for layout in job.files.layouts.values() {
        let Some(part) = layout.parts.get(layout.func.partition_of(key) as usize) else {
            continue;
        };
        if part.levels[0].iter().any(older) {
            return true;
        }
        for level in 1..MAX_LEVELS {
            if part.file_for_key(level, key).is_some_and(older) {
                return true;
            }
        }
    }
    false
}

/// A key range that a running job will fill at one level of one partition.
pub(crate) struct Reservation {
    pub job: u64,
    pub version: u32,
    pub partition: u32,
    pub level: usize,
    pub smallest: Bytes,
    pub largest: Bytes,
}

/// Advances the pointer stream to (key, seqno) and says whether a pointer covers exactly it.
fn forwarded_by(ps: &mut MergeCursor, key: &[u8], seqno: u64) -> Result<bool> {
    while ps.valid() {
        let p = ps.top();
        match crate::types::cmp_internal(p.key(), p.seqno(), key, seqno) {
            std::cmp::Ordering::Less => ps.advance()?,
            std::cmp::Ordering::Equal => return Ok(true),
            std::cmp::Ordering::Greater => return Ok(false),
        }
    }
    Ok(false)
}

/// Whether a live layout other than `from` holds `key` at `seqno` or newer in its tables:
/// the copy a forwarding pointer in `from` promises (it may have moved on to a later
/// layout since), or what superseded it. A lazy move's copy and its pointer reach tables in
/// the same flush, so a pointer that no table backs is no record of a move (a writer's bug,
/// a crafted file): the migration then carries the value itself instead of dropping it,
/// which at worst moves it a second time. Searched only for values a pointer names.
fn copy_elsewhere(files: &FileSet, from: u32, key: &[u8], seqno: u64) -> Result<bool> {
    let h = crate::sst::bloom::key_hash(key);
    for (id, layout) in &files.layouts {
        let Some(part) = (*id != from)
            .then(|| layout.parts.get(layout.func.partition_of(key) as usize))
            .flatten()
        else {
            continue;
        };
        for f in part.data_files() {
            if f.max_seqno >= seqno && f.contains(key) {
                if let Some(e) = f.table.get(key, h, u64::MAX)? {
                    if e.seqno >= seqno {
                        return Ok(true);
                    }
                }
            }
        }
    }
    Ok(false)
}

/// Chooses the level of each migration output in its target partition: the deepest level
/// where it overlaps no file and no range a running job is about to fill, else L0. Old data
/// lands low, where it would have been had it been written under the new layout, so it is
/// written once and not again on its way down.
fn place_outputs(core: &Core, files: &FileSet, outputs: Vec<Arc<FileMeta>>) -> Vec<Arc<FileMeta>> {
    let mut placed: Vec<Arc<FileMeta>> = Vec::with_capacity(outputs.len());
    for f in outputs {
        let part = files
            .layouts
            .get(&f.layout_version)
            .and_then(|l| l.parts.get(f.partition as usize));
        let level = part
            .and_then(|part| {
                (1..MAX_LEVELS).rev().find(|&l| {
                    part.overlapping(l, &f.smallest, &f.largest).is_empty()
                        && !core.reserved.iter().any(|r| {
                            r.version == f.layout_version
                                && r.partition == f.partition
                                && r.level == l
                                && !(r.largest < f.smallest || r.smallest > f.largest)
                        })
                        && !placed.iter().any(|g| {
                            g.layout_version == f.layout_version
                                && g.partition == f.partition
                                && g.level as usize == l
                                && g.overlaps(&f.smallest, &f.largest)
                        })
                })
            })
            .unwrap_or(0);
        placed.push(Arc::new(f.at_level(level as u8)));
    }
    placed
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fs::FaultFs;
    use crate::{Db, Options, PartitionSpec};

    fn value(round: u32, i: u32) -> String {
        format!("r{round}-{i}-{}", "x".repeat(90))
    }

    /// A job whose manifest edit is refused before anything is written (writes stopped
    /// while it ran) removes its outputs at once. They stayed on disk until a reopen, so a
    /// disk that ran full kept the space this job took even once writes could go on.
    #[test]
    fn outputs_of_an_edit_refused_unwritten_are_removed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        load_compacted(&db, 2000, |i| format!("k{i:05}"));
        let tables = || {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sst"))
                .collect();
            v.sort();
            v
        };
        let v2 = db
            .register_partition_fn(PartitionSpec::hashed(4, 1))
            .unwrap();
        db.set_target(v2).unwrap();
        let inner = db.inner.clone();
        crate::test_hooks::set(
            crate::test_hooks::Point::CompactionBeforeInstall,
            move || {
                inner.fail("writes stopped while the job ran".into());
            },
        );
        let e = db.migrate_now(None).unwrap_err();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
        // Only the tables the database holds remain (old ones go in the background).
        let mut live: Vec<String> = db
            .inner
            .view
            .load()
            .files
            .all_files()
            .map(|f| format!("{:06}.sst", f.number))
            .collect();
        live.sort();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tables() != live {
            assert!(
                Instant::now() < deadline,
                "outputs left on disk: {:?}, the database holds {live:?}",
                tables()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An idle database scores its partitions once, not on every worker wake-up (each
    /// 100 ms); a change to its files scores them again.
    #[test]
    fn an_idle_database_stops_scoring_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            partition: PartitionSpec::hashed(64, 1),
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        load_compacted(&db, 2000, |i| format!("k{i:05}"));
        let scored = || db.inner.core.lock().picks_scored;
        // Settle: background jobs end and their wake-ups pass.
        let mut last = scored();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            std::thread::sleep(Duration::from_millis(400));
            let now = scored();
            if now == last {
                break;
            }
            assert!(Instant::now() < deadline, "picks kept scoring: {now}");
            last = now;
        }
        // A second of idleness: ten wake-ups per worker, none of which scores, although
        // another database of the process spends seek allowances meanwhile (the count is
        // each database's own).
        let other_dir = tempfile::tempdir().unwrap();
        let other = Db::open(
            other_dir.path(),
            Options {
                idle_memtable_flush_after: None,
                ..Options::default()
            },
        )
        .unwrap();
        for round in 0..2 {
            for i in 0..200u32 {
                other.put(format!("k{i:05}"), value(round, i)).unwrap();
            }
            other.flush().unwrap();
        }
        let before = scored();
        let spent = other.inner.home.seek_allowances_spent();
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            // Each scan seeks both L0 files, charging the newer one.
            assert_eq!(other.range("k00010".."k00020").count(), 10);
        }
        assert!(
            other.inner.home.seek_allowances_spent() > spent,
            "the other database spent a seek allowance"
        );
        assert_eq!(
            db.inner.home.seek_allowances_spent(),
            0,
            "the idle database spent none"
        );
        assert_eq!(
            scored(),
            before,
            "an idle database scored its partitions again"
        );
        let last = scored();
        db.put("k00001", "new").unwrap();
        db.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while scored() == last {
            assert!(Instant::now() < deadline, "a flush did not score again");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes round-0 values for keys `0..keys` (named by `key`), compacted into one level.
    fn load_compacted(db: &Db, keys: u32, key: impl Fn(u32) -> String) {
        for i in 0..keys {
            db.put(key(i), value(0, i)).unwrap();
        }
        db.compact().unwrap();
    }

    /// One flushed L0 file per round (from 1), each writing `entry(round, i)` = (key, value)
    /// for every `step`-th `i` of `0..keys`.
    fn flush_rounds(
        db: &Db,
        rounds: u32,
        keys: u32,
        step: usize,
        mut entry: impl FnMut(u32, u32) -> (String, String),
    ) {
        for round in 1..=rounds {
            for i in (0..keys).step_by(step) {
                let (k, v) = entry(round, i);
                db.put(k, v).unwrap();
            }
            db.flush().unwrap();
        }
    }

    /// A power cut, then a reopen: keys `k{i:05}` for `i` in `0..keys`, and no others, hold
    /// `want(i)`.
    fn check_after_power_cut(
        fs: &FaultFs,
        db: Db,
        dir: &std::path::Path,
        opts: Options,
        keys: u32,
        want: impl Fn(u32) -> String,
    ) {
        fs.power_cut(db).unwrap();
        let db = Db::open(dir, opts).unwrap();
        let all: Vec<_> = db.range(..).map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), keys as usize);
        for (i, (k, v)) in all.iter().enumerate() {
            let i = i as u32;
            assert_eq!(k.as_ref(), format!("k{i:05}").as_bytes());
            assert_eq!(v.as_ref(), want(i).as_bytes(), "k{i:05}");
        }
    }

    /// Waits until no partition of the target layout has L0 files waiting for compaction.
    fn settle(db: &Db) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = db.inner.view.load();
            let target = view.files.target_layout();
            let incoming = incoming_per_partition(&view.files, target);
            let busy = target
                .parts
                .iter()
                .any(|p| l0_score(&db.inner, p, &shape(&db.inner, target, p, incoming)) >= 1.0);
            if !busy {
                return;
            }
            assert!(Instant::now() < deadline, "target L0 never compacted");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Small levels on `fs`, and no background migration or lazy moves: what drains, and
    /// when, is the test's.
    fn shaped_options(fs: &FaultFs) -> Options {
        Options {
            fs: Arc::new(fs.clone()),
            level_base_bytes: 64 << 10,
            level_multiplier: 4,
            target_file_bytes: 16 << 10,
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 0,
            ..Options::default()
        }
    }

    /// Round-0 values for keys `k00000000..` (`keys` of them) compacted under the first
    /// layout, then a 4-partition hash layout targeted. Returns (old target, new target).
    fn loaded_then_hash4(db: &Db, keys: u32) -> (crate::VersionId, crate::VersionId) {
        load_compacted(db, keys, |i| format!("k{i:08}"));
        let v1 = db.layout().target;
        (v1, target_hash4(db))
    }

    /// A 4-partition hash layout.
    fn hash4(seed: u64) -> PartitionSpec {
        PartitionSpec::Hash {
            partitions: 4,
            seed,
            hashed_prefix: None,
        }
    }

    /// Registers a 4-partition hash layout and targets it.
    fn target_hash4(db: &Db) -> crate::VersionId {
        let v = db.register_partition_fn(hash4(0)).unwrap();
        db.set_target(v).unwrap();
        v
    }

    /// With the slowdown and stop triggers below twice the compaction trigger (allowed:
    /// 4/4/4), an L0 small beside its partition's base level scored below 1 until it had
    /// twice the trigger's files or the base level's bytes, while writers stopped at four
    /// files: every write waited for a compaction that never came. From the slowdown
    /// trigger on, L0 now compacts whatever its bytes.
    #[test]
    fn writes_stopped_at_l0_s_stop_trigger_get_their_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options {
            level0_compaction_trigger: 4,
            level0_slowdown_trigger: 4,
            level0_stop_trigger: 4,
            idle_memtable_flush_after: None,
            ..crate::Options::tiny()
        };
        let db = crate::Db::open(dir.path(), opts).unwrap();
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                let value = vec![7u8; 200];
                for i in 0..20_000u32 {
                    db.put(format!("base{i:06}"), &value).unwrap();
                }
                db.compact().unwrap();
                for i in 0..12u32 {
                    db.put(format!("small{i:03}"), "v").unwrap();
                    db.flush().unwrap();
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !writer.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "writes stopped at the L0 stop trigger and never resumed ({} L0 runs)",
                db.inner.l0_max.load(std::sync::atomic::Ordering::Relaxed)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        writer.join().unwrap();
        assert_eq!(db.get("small011").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// A target partition that a (paused) migration has yet to fill is shaped for the data
    /// still draining into it: L0 compacts into a level above the last, not into the last
    /// level (which would mean rewriting all of it on every L0 compaction once migration
    /// fills it). L0 there waits for the bytes of the middle level it goes into, as
    /// anywhere, up to twice the file trigger (below the point where the pacer yields to
    /// L0). Then a power cut, and the migration finishes: nothing is lost.
    #[test]
    fn target_partitions_are_shaped_for_the_data_draining_into_them() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = || shaped_options(&fs);
        let db = Db::open(dir.path(), opts()).unwrap();
        const KEYS: u32 = 20_000;
        let (v1, _) = loaded_then_hash4(&db, KEYS);

        {
            let view = db.inner.view.load();
            let files = &view.files;
            let target = files.target_layout();
            let incoming = incoming_per_partition(files, target);
            assert!(incoming > (KEYS as u64 * 100) / 8, "incoming {incoming}");
            assert_eq!(incoming_per_partition(files, &files.layouts[&v1.0]), 0);
            for part in &target.parts {
                assert_eq!(shape(&db.inner, target, part, 0).base, MAX_LEVELS - 1);
                assert!(shape(&db.inner, target, part, incoming).base < MAX_LEVELS - 1);
            }
        }

        // New writes land in the target layout: four flushes give every target partition
        // the L0 files that trigger a compaction, which must not go to the last level.
        let rounds = db.inner.opts.level0_compaction_trigger as u32;
        flush_rounds(&db, rounds, KEYS, 5, |r, i| {
            (format!("k{i:08}"), value(r, i))
        });
        settle(&db);
        {
            let view = db.inner.view.load();
            for (pi, part) in view.files.target_layout().parts.iter().enumerate() {
                assert!(
                    part.levels[MAX_LEVELS - 1].is_empty(),
                    "partition {pi}: L0 compacted into the last level"
                );
                assert!(
                    (1..MAX_LEVELS - 1).any(|l| !part.levels[l].is_empty()),
                    "partition {pi}: L0 was not compacted"
                );
            }
        }

        // L0 at the file trigger, with fewer bytes than the middle base level it goes into,
        // waits (its merge would rewrite several times its bytes there), as it would in a
        // partition not being filled; at twice the trigger it goes down whatever its bytes.
        quiet(&db);
        let small = |r: u32, i: u32| (format!("k{i:08}"), value(100 + r, i));
        flush_rounds(&db, rounds, KEYS, 500, small);
        quiet(&db);
        {
            let view = db.inner.view.load();
            let files = &view.files;
            let target = files.target_layout();
            let incoming = incoming_per_partition(files, target);
            for (pi, part) in target.parts.iter().enumerate() {
                let sh = shape(&db.inner, target, part, incoming);
                assert!(sh.filling);
                assert!(
                    sh.base < MAX_LEVELS - 1
                        && part.level_bytes(0) < part.level_bytes(sh.base)
                        && (1..sh.base).all(|l| part.levels[l].is_empty()),
                    "test setup, partition {pi}: base L{} holds {} bytes, L0 {}",
                    sh.base,
                    part.level_bytes(sh.base),
                    part.level_bytes(0)
                );
                assert_eq!(
                    part.levels[0].len(),
                    rounds as usize,
                    "partition {pi}: L0 at the trigger did not wait for the base level's bytes"
                );
            }
        }
        flush_rounds(&db, rounds, KEYS, 500, |r, i| small(rounds + r, i));
        quiet(&db);
        {
            let view = db.inner.view.load();
            for (pi, part) in view.files.target_layout().parts.iter().enumerate() {
                assert!(
                    part.levels[0].is_empty(),
                    "partition {pi}: L0 at twice the trigger did not go down"
                );
            }
        }

        // Power cut: no fsync succeeds any more, and what was not fsynced is lost. All of
        // the above was flushed (fsynced), so all of it must come back.
        fs.power_cut(db).unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        db.set_migration_rate(1 << 30);
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.migration_progress().bytes_left() > 0 {
            assert!(Instant::now() < deadline, "migration did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 0..KEYS {
            let want = if i % 500 == 0 {
                value(100 + 2 * rounds, i)
            } else if i % 5 == 0 {
                value(rounds, i)
            } else {
                value(0, i)
            };
            assert_eq!(
                db.get(format!("k{i:08}")).unwrap().as_deref(),
                Some(want.as_bytes()),
                "k{i:08}"
            );
        }
        assert_eq!(db.range(..).count(), KEYS as usize);
    }

    /// A table of `keys[i]` = `value(round, i)` at `level`, written under `dir` as file
    /// `number` of the database's first layout and partition.
    fn table_at(
        db: &Db,
        dir: &std::path::Path,
        number: u64,
        level: u8,
        round: u32,
        keys: std::ops::Range<u32>,
    ) -> Arc<FileMeta> {
        use crate::sst::writer::{TableOwner, TableWriter};
        let path = dir.join(format!("{number:06}.sst"));
        let mut w = TableWriter::new(
            db.inner.fs.clone(),
            &path,
            db.inner.table_opts.clone(),
            TableOwner {
                kind: TableKind::Data,
                layout_version: 1,
                fingerprint: 0,
                partition: 0,
            },
        )
        .unwrap();
        for i in keys {
            let e = crate::types::Entry {
                key: Bytes::from(format!("k{i:08}")),
                seqno: u64::from(round) * 1_000_000 + u64::from(i) + 1,
                kind: Kind::Value,
                value: Bytes::from(value(round, i)),
            };
            w.add(&e).unwrap();
        }
        w.finish().unwrap();
        let t = crate::sst::reader::Table::open(db.inner.fs.as_ref(), &path, number, None).unwrap();
        Arc::new(FileMeta::new(Arc::new(t), level, db.inner.home.clone()))
    }

    /// An L0 past halfway to the write slowdown (12 runs with triggers 4 and 20) is
    /// compacted before a level whose score is higher; below that, score decides. (A
    /// migration's completion ends the hold on the level above the last in every
    /// partition at once: by score alone, those levels went first while L0 reached the
    /// slowdown.)
    #[test]
    fn an_l0_halfway_to_the_slowdown_goes_before_a_higher_scoring_level() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), shaped_options(&fs)).unwrap();
        assert_eq!(
            (
                db.inner.opts.level0_compaction_trigger,
                db.inner.opts.level0_slowdown_trigger
            ),
            (4, 20)
        );
        let tables = tempfile::tempdir().unwrap();
        let view = db.inner.view.load();
        let func = view.files.target_layout().func.clone();
        let mut next = 100;
        let mut file = |level: u8, round: u32, keys: std::ops::Range<u32>| {
            next += 1;
            table_at(&db, tables.path(), next, level, round, keys)
        };
        // The last level, and the level above it at twice its target.
        let deep = [file(6, 0, 0..6000), file(5, 1, 0..3000)];
        let mut with_l0 = |n: u32| {
            PartitionFiles::of(
                deep.iter()
                    .cloned()
                    .chain((0..n).map(|r| file(0, 10 + r, r * 10..r * 10 + 5))),
            )
        };
        let layout_of = |p: PartitionFiles| {
            let mut l = LayoutState::new(1, func.clone());
            l.parts[0] = Arc::new(p);
            l
        };
        for (l0_files, urgent) in [(11, false), (12, true)] {
            let layout = layout_of(with_l0(l0_files));
            assert_eq!(layout.parts[0].levels[0].len(), l0_files as usize);
            let p = &layout.parts[0];
            let sh = shape(&db.inner, &layout, p, 0);
            assert_eq!(sh.base, 5, "test setup: {:?}", sh.targets);
            let sc = scores(&db.inner, p, &sh);
            let (l0, l5) = (sc[0].1, sc[5].1);
            assert!(
                l0 >= 1.0 && l5 > l0,
                "test setup, {l0_files} L0 files: L0 scores {l0}, L5 {l5}"
            );
            assert_eq!(l0_urgent(&db.inner, p, &sh), urgent);
            let picked = db.inner.most_urgent(&view.files, &layout, |_| false);
            let want = if urgent { 0 } else { 5 };
            assert_eq!(
                picked,
                Some((0, want)),
                "{l0_files} L0 files (L0 {l0}, L5 {l5})"
            );
            // A busy partition is never picked, urgent or not.
            assert_eq!(db.inner.most_urgent(&view.files, &layout, |_| true), None);
        }
    }

    /// While migration fills a target partition, the level above the last does not move
    /// into it, even over its target: the last level holds only migrated data, so migration
    /// outputs land there (not in L0, to be rewritten on their way down). Past `multiplier`
    /// × its target the level moves down anyway, and once the migration is done it moves
    /// down as usual. Every key reads its newest value throughout.
    #[test]
    fn the_last_level_of_a_filling_partition_is_kept_for_migrated_data() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), shaped_options(&FaultFs::new())).unwrap();
        const KEYS: u32 = 20_000;
        loaded_then_hash4(&db, KEYS);
        let last = MAX_LEVELS - 1;
        // (level above the last: bytes, its target, whether it is held), per partition.
        let above_last = |db: &Db| -> Vec<(u64, u64, bool)> {
            let view = db.inner.view.load();
            let files = &view.files;
            let target = files.target_layout();
            let incoming = incoming_per_partition(files, target);
            target
                .parts
                .iter()
                .map(|p| {
                    let sh = shape(&db.inner, target, p, incoming);
                    (
                        p.level_bytes(last - 1),
                        sh.targets[last - 1],
                        holds_for_migration(&db.inner, &sh, p, last - 1),
                    )
                })
                .collect()
        };
        let level_files = |db: &Db, level: usize| -> Vec<usize> {
            let view = db.inner.view.load();
            let files = &view.files;
            files
                .target_layout()
                .parts
                .iter()
                .map(|p| p.levels[level].len())
                .collect()
        };
        let mut newest: Vec<String> = (0..KEYS).map(|i| value(0, i)).collect();
        // Rounds `first+1 ..= first+trigger` of every `step`-th key, one flush each: enough
        // L0 files for a compaction.
        let trigger = db.inner.opts.level0_compaction_trigger as u32;
        let mut write_rounds = |db: &Db, first: u32, step: usize| {
            flush_rounds(db, trigger, KEYS, step, |r, i| {
                newest[i as usize] = value(first + r, i);
                (format!("k{i:08}"), value(first + r, i))
            });
            quiet(db);
        };

        // Foreground writes past the level's target: held, the last level stays empty.
        write_rounds(&db, 0, 2);
        let a = above_last(&db);
        assert!(
            a.iter()
                .any(|&(bytes, target, held)| held && bytes > target),
            "test setup: no partition has its level above the last over target: {a:?}"
        );
        assert!(a.iter().all(|&(_, _, held)| held), "{a:?}");
        assert_eq!(
            level_files(&db, last),
            vec![0; 4],
            "foreground data reached the last level"
        );

        // Part of the migration: its outputs land in the last level, none in L0.
        let l0 = level_files(&db, 0);
        assert!(db.migrate_now(Some(200 << 10)).unwrap() > 0);
        assert_eq!(level_files(&db, 0), l0, "migration outputs went to L0");
        assert!(
            level_files(&db, last).iter().all(|&n| n > 0),
            "{:?}",
            level_files(&db, last)
        );

        // Past `multiplier` × its target, the level moves down although still filling.
        for first in 1..=4 {
            write_rounds(&db, first * trigger, 1);
        }
        for (pi, &(bytes, target, held)) in above_last(&db).iter().enumerate() {
            assert!(
                bytes <= target * 4,
                "partition {pi}: {bytes} bytes held over 4 × {target} (held: {held})"
            );
        }

        // Migration done: the level moves down as usual.
        db.migrate_now(None).unwrap();
        assert_eq!(db.migration_progress().bytes_left(), 0);
        quiet(&db);
        for (pi, &(bytes, target, held)) in above_last(&db).iter().enumerate() {
            assert!(!held, "partition {pi} still held after the migration");
            assert!(
                bytes <= target,
                "partition {pi}: {bytes} bytes over target {target}"
            );
        }
        for i in (0..KEYS).step_by(7) {
            assert_eq!(
                db.get(format!("k{i:08}")).unwrap().as_deref(),
                Some(newest[i as usize].as_bytes()),
                "k{i:08}"
            );
        }
        assert_eq!(db.range(..).count(), KEYS as usize);
    }

    /// What a hash:4 → hash:4 migration of 6,000 compacted keys did, migrating one job at a
    /// time (with every source partition but one held busy, as running jobs hold them, if
    /// `one_partition_at_a_time`), then a power cut: nothing is lost.
    struct HashToHash {
        /// Jobs run, and draining files they migrated.
        jobs: u64,
        files: u64,
        migrated: u64,
        /// What compactions other than the migration's wrote below the migration outputs.
        rewritten: u64,
        /// Of what migration wrote, the share placed in the last level.
        in_last_level: f64,
        /// Whether a filling partition ever held runs in two levels above its base.
        gathered: bool,
    }

    fn migrate_hash_to_hash(one_partition_at_a_time: bool) -> HashToHash {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = || Options {
            partition: hash4(0),
            target_file_bytes: 16 << 10,
            ..shaped_options(&fs)
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        const KEYS: u32 = 6_000;
        load_compacted(&db, KEYS, |i| format!("k{i:08}"));
        let v1 = db.layout().target.0;
        let v2 = db.register_partition_fn(hash4(1)).unwrap();
        db.set_target(v2).unwrap();
        let before = db.stats();
        let files = db.inner.view.load().files.layouts[&v1].data_file_count() as u64;
        let (mut jobs, mut gathered) = (0, false);
        let sources: Vec<Option<u32>> = if one_partition_at_a_time {
            (0..4).map(Some).collect()
        } else {
            vec![None]
        };
        for only in sources {
            let held: Vec<u32> = (0..4).filter(|&p| only.is_some_and(|o| o != p)).collect();
            db.inner
                .core
                .lock()
                .busy
                .extend(held.iter().map(|&p| (v1, p)));
            // (`migrate_now` waits while every partition left is busy.)
            let left = |db: &Db| {
                let view = db.inner.view.load();
                view.files.layouts.get(&v1).is_some_and(|l| {
                    l.parts.iter().enumerate().any(|(p, part)| {
                        only.is_none_or(|o| o == p as u32) && part.data_file_count() > 0
                    })
                })
            };
            while left(&db) {
                assert!(db.migrate_now(Some(1)).unwrap() > 0);
                jobs += 1;
                quiet(&db);
                let view = db.inner.view.load();
                let files = &view.files;
                let target = files.target_layout();
                let incoming = incoming_per_partition(files, target);
                for part in &target.parts {
                    let sh = shape(&db.inner, target, part, incoming);
                    let upper = (1..sh.base).filter(|&l| !part.levels[l].is_empty());
                    if sh.filling && upper.count() > 1 {
                        gathered = true;
                    }
                }
            }
            let mut core = db.inner.core.lock();
            for p in &held {
                core.busy.remove(&(v1, *p));
            }
        }
        quiet(&db);
        assert!(db.migration_progress().is_complete());
        let after = db.stats();
        let rewritten: u64 = after
            .levels
            .iter()
            .zip(&before.levels)
            .map(|(a, b)| {
                (a.compaction_bytes_written - a.migration_bytes_written)
                    - (b.compaction_bytes_written - b.migration_bytes_written)
            })
            .sum();
        // The per-level counters add up to the totals.
        let sum = |f: fn(&crate::LevelStats) -> u64| after.levels.iter().map(f).sum::<u64>();
        assert_eq!(
            sum(|l| l.compaction_bytes_written),
            after.compaction_bytes_written
        );
        assert_eq!(
            sum(|l| l.migration_bytes_written),
            after.migration_bytes_written
        );
        let r = HashToHash {
            jobs,
            files,
            migrated: after.migration_bytes_read - before.migration_bytes_read,
            rewritten,
            in_last_level: after.levels[MAX_LEVELS - 1].migration_bytes_written as f64
                / after.migration_bytes_written.max(1) as f64,
            gathered,
        };
        fs.power_cut(db).unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        for i in (0..KEYS).step_by(3) {
            assert_eq!(
                db.get(format!("k{i:08}")).unwrap().as_deref(),
                Some(value(0, i).as_bytes()),
                "k{i:08}"
            );
        }
        assert_eq!(db.range(..).count(), KEYS as usize);
        r
    }

    /// From a hash layout into another hash layout, migrated one source partition after
    /// another (as happens while jobs hold the others), every migration output overlaps
    /// what its target partition already holds. Such outputs gather above the base level
    /// and go down together, so what compaction writes below them stays within a small
    /// multiple of the bytes migrated (2.0 here; 2.8 with each level going down alone). Then
    /// a power cut: nothing is lost.
    #[test]
    fn overlapping_migration_outputs_gather_above_the_base_level() {
        let r = migrate_hash_to_hash(true);
        assert!(
            r.gathered,
            "no partition ever held runs in two levels above its base"
        );
        assert!(
            r.rewritten * 2 < 5 * r.migrated,
            "{} bytes rewritten for {} migrated",
            r.rewritten,
            r.migrated
        );
    }

    /// Two layouts draining at once, as in the biased-hash fix: v1 (range) part-way into v2
    /// (hash), v2 holding writes from all over the key space, then both into v3. A
    /// migration output is then not cut at the last key its target partition's last level
    /// holds: the part of a v2 output past that key would land in the last level ahead of
    /// v1's migration there, and v1's outputs over those keys would go above it and be
    /// rewritten on their way down (here compaction rewrites 0.36 of the bytes migrated;
    /// cut as with one layout draining, 0.78–0.80). Then a power cut: nothing is lost.
    /// Plain blocks: the figures above were measured with them, and this small shape sits
    /// near the level-size thresholds, so with key-delta tables (16% smaller) it rewrites
    /// 0.55–0.77 for 10K–16K keys; the scenario it stands for, the 8M-key biased-hash fix,
    /// measured migration WA 0.96 with key-delta tables against 1.09 with plain ones
    /// (BENCHMARKS.md §2, stop 36).
    #[test]
    fn with_two_layouts_draining_outputs_run_on_past_the_last_levels_last_key() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = || Options {
            key_delta_blocks: false,
            ..shaped_options(&fs)
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        const KEYS: u32 = 12_000;
        load_compacted(&db, KEYS, |i| format!("k{i:08}"));
        let v1 = db.layout().target.0;
        let v2 = db.register_partition_fn(hash4(1)).unwrap();
        db.set_target(v2).unwrap();
        let v1_files = |db: &Db| {
            db.inner
                .view
                .load()
                .files
                .layouts
                .get(&v1)
                .map_or(0, |l| l.data_file_count())
        };
        let start = v1_files(&db);
        while v1_files(&db) * 5 > start * 2 {
            assert!(db.migrate_now(Some(1)).unwrap() > 0);
        }
        quiet(&db);
        for i in (0..KEYS).step_by(5) {
            db.put(format!("k{i:08}"), value(1, i)).unwrap();
        }
        db.flush().unwrap();
        quiet(&db);
        let v3 = db.register_partition_fn(hash4(2)).unwrap();
        db.set_target(v3).unwrap();
        let draining: Vec<u32> = db
            .inner
            .view
            .load()
            .files
            .draining()
            .filter(|l| l.data_file_count() > 0)
            .map(|l| l.id)
            .collect();
        assert_eq!(draining, [v1, v2.0], "both layouts drain into v3");
        let before = db.stats();
        db.migrate_now(None).unwrap();
        quiet(&db);
        assert!(db.migration_progress().is_complete());
        let after = db.stats();
        let rewritten = (after.compaction_bytes_written - after.migration_bytes_written)
            - (before.compaction_bytes_written - before.migration_bytes_written);
        let migrated = after.migration_bytes_read - before.migration_bytes_read;
        assert!(
            rewritten * 2 < migrated,
            "{rewritten} bytes rewritten for {migrated} migrated"
        );
        fs.power_cut(db).unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        for i in 0..KEYS {
            let round = if i % 5 == 0 { 1 } else { 0 };
            assert_eq!(
                db.get(format!("k{i:08}")).unwrap().as_deref(),
                Some(value(round, i).as_bytes()),
                "k{i:08}"
            );
        }
        assert_eq!(db.range(..).count(), KEYS as usize);
    }

    /// From a hash layout, a migration job takes the next file of every source partition
    /// over one key range: each target partition receives one run per job, past what it
    /// holds, in its last level, and compaction rewrites little of it (here nothing, and 86%
    /// of it lands in the last level; without the cut at what the last level holds, 0.9 of
    /// the bytes migrated and 43%). Then a power cut: nothing is lost.
    #[test]
    fn a_hash_layout_migrates_a_key_range_of_every_partition_at_once() {
        let r = migrate_hash_to_hash(false);
        assert!(
            r.files >= 3 * r.jobs,
            "{} files in {} jobs",
            r.files,
            r.jobs
        );
        assert!(
            r.in_last_level > 0.8,
            "{:.2} of the migrated bytes in the last level",
            r.in_last_level
        );
        assert!(
            r.rewritten < r.migrated / 2,
            "{} bytes rewritten for {} migrated",
            r.rewritten,
            r.migrated
        );
    }

    /// Migration outputs that overlapped everything in their target partition are left above
    /// its base level when the migration ends (here the source's L0 files, which migrate
    /// last). They go down into the base level together, rewriting it once, not once per
    /// level. Then a power cut: nothing is lost.
    #[test]
    fn runs_left_above_the_base_go_down_together() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = || shaped_options(&fs);
        let db = Db::open(dir.path(), opts()).unwrap();
        // ~165 KB per target partition: its base is the level above the last.
        const KEYS: u32 = 6_000;
        load_compacted(&db, KEYS, |i| format!("k{i:05}"));
        // Three source L0 files over the key space (under the L0 trigger, they stay).
        flush_rounds(&db, 3, KEYS, 20, |r, i| (format!("k{i:05}"), value(r, i)));
        target_hash4(&db);
        // Writes into the target, compacted into its base level (held there while filling).
        flush_rounds(&db, 4, KEYS, 2, |r, i| {
            (format!("k{i:05}"), value(r + 3, i))
        });
        quiet(&db);
        let before = db.stats();
        // Per partition, at the last step: (base level, bytes at and above it, levels
        // above it holding data).
        let mut last_step = Vec::new();
        while db.migrate_now(Some(1)).unwrap() > 0 {
            let view = db.inner.view.load();
            let target = view.files.target_layout();
            let incoming = incoming_per_partition(&view.files, target);
            last_step = target
                .parts
                .iter()
                .map(|p| {
                    let sh = shape(&db.inner, target, p, incoming);
                    let bytes: u64 = (0..=sh.base).map(|l| p.level_bytes(l)).sum();
                    let upper = (1..sh.base).filter(|&l| !p.levels[l].is_empty()).count();
                    (sh.base, bytes, upper)
                })
                .collect();
        }
        quiet(&db);
        assert!(
            last_step
                .iter()
                .all(|&(base, _, upper)| base == MAX_LEVELS - 2 && upper >= 2),
            "test setup: runs above a middle base level in every partition: {last_step:?}"
        );
        let after = db.stats();
        let base = MAX_LEVELS - 2;
        let written = |s: &crate::Stats| {
            s.levels[base].compaction_bytes_written - s.levels[base].migration_bytes_written
        };
        let drained = written(&after) - written(&before);
        let held: u64 = last_step.iter().map(|s| s.1).sum();
        assert!(
            drained as f64 <= 1.2 * held as f64,
            "{drained} bytes written into the base levels to take down {held} bytes"
        );
        let view = db.inner.view.load();
        for p in &view.files.target_layout().parts {
            assert!((1..base).all(|l| p.levels[l].is_empty()));
        }
        drop(view);
        check_after_power_cut(&fs, db, dir.path(), opts(), KEYS, |i| {
            value(if i % 2 == 0 { 7 } else { 0 }, i)
        });
    }

    /// Draining files migrate in key order across source partitions: each step takes, of
    /// every partition's next file (the first of its deepest level), the one with the
    /// smallest key, not the next partition's in turn.
    #[test]
    fn draining_files_migrate_in_key_order_across_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            Options {
                partition: hash4(0),
                ..shaped_options(&FaultFs::new())
            },
        )
        .unwrap();
        load_compacted(&db, 6_000, |i| format!("k{i:08}"));
        let v1 = db.layout().target.0;
        let v2 = db.register_partition_fn(hash4(1)).unwrap();
        db.set_target(v2).unwrap();
        // (each partition's next file number and smallest key, in partition order)
        let next_files = |db: &Db| -> Vec<(u64, Bytes)> {
            let view = db.inner.view.load();
            view.files
                .layouts
                .get(&v1)
                .map(|l| {
                    l.parts
                        .iter()
                        .filter_map(|p| {
                            (0..MAX_LEVELS)
                                .rev()
                                .find_map(|lv| p.levels[lv].first())
                                .map(|f| (f.number, f.smallest.clone()))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (mut steps, mut not_in_turn) = (0, 0);
        loop {
            let before = next_files(&db);
            if before.is_empty() {
                break;
            }
            let want = before.iter().min_by(|a, b| a.1.cmp(&b.1)).unwrap().0;
            if want != before[0].0 {
                not_in_turn += 1;
            }
            assert!(db.migrate_now(Some(1)).unwrap() > 0);
            let after = next_files(&db);
            assert!(
                !after.iter().any(|f| f.0 == want),
                "step {steps}: file {want} (smallest key of {before:?}) was not migrated"
            );
            steps += 1;
        }
        assert!(
            not_in_turn > 0,
            "test setup: partition order and key order never differed ({steps} steps)"
        );
    }

    /// A partition holding less than 16 × `target_file_bytes` is cut into files of a
    /// sixteenth of what it holds (not under a sixteenth of `target_file_bytes`), so its
    /// levels move down in small steps; a large one is cut at `target_file_bytes`. All of
    /// it survives a power cut.
    #[test]
    fn small_partitions_are_cut_into_proportionally_small_files() {
        let target_file = 512u64 << 10;
        // Loads `keys` under `partition`, compacted; checks the layout's cut size against
        // `want(bytes held)` and that its files are cut at it.
        let check = |partition: PartitionSpec, keys: u32, want: &dyn Fn(u64) -> u64| {
            let dir = tempfile::tempdir().unwrap();
            let fs = FaultFs::new();
            let opts = || Options {
                partition: partition.clone(),
                target_file_bytes: target_file,
                ..shaped_options(&fs)
            };
            let db = Db::open(dir.path(), opts()).unwrap();
            load_compacted(&db, keys, |i| format!("k{i:08}"));
            let view = db.inner.view.load();
            let layout = view.files.target_layout();
            let held: u64 = layout.parts.iter().map(|p| p.data_bytes()).sum();
            let cut = output_file_bytes(&db.inner, &view.files, layout);
            assert_eq!(cut, want(held), "{held} bytes held");
            for (pi, part) in layout.parts.iter().enumerate() {
                let files: Vec<u64> = part.data_files().map(|f| f.size).collect();
                let bytes: u64 = files.iter().sum();
                // Every file but a partition's last is cut at about `cut`.
                assert!(
                    files.len() as u64 >= bytes / (cut * 3 / 2),
                    "partition {pi}: {} files for {bytes} bytes, cut at {cut}",
                    files.len()
                );
                assert!(
                    files.iter().all(|&b| b < cut * 3 / 2),
                    "partition {pi}: files {files:?}, cut at {cut}"
                );
            }
            drop(view);
            // A power cut: every table was fsynced before the manifest named it.
            fs.power_cut(db).unwrap();
            let db = Db::open(dir.path(), opts()).unwrap();
            for i in (0..keys).step_by(97) {
                assert_eq!(
                    db.get(format!("k{i:08}")).unwrap().as_deref(),
                    Some(value(0, i).as_bytes())
                );
            }
            assert_eq!(db.range(..).count(), keys as usize);
            cut
        };
        let hash = |partitions| PartitionSpec::Hash {
            partitions,
            seed: 0,
            hashed_prefix: None,
        };
        // ~2.6 MB in 16 partitions of ~160 KB: cut at the floor.
        check(hash(16), 20_000, &|_| MIN_FILE_BYTES);
        // ~16 MB in 4 partitions of ~4 MB: cut at a sixteenth of a partition.
        let cut = check(hash(4), 120_000, &|held| held / 4 / 16);
        assert!(cut > MIN_FILE_BYTES && cut < target_file, "{cut}");
        // The same in one range partition: cut at `target_file_bytes`.
        check(PartitionSpec::default(), 120_000, &|_| target_file);
    }

    /// The least overlap per byte moves first, ties round-robin from the last pick, and a
    /// file whose seek allowance is spent goes before all.
    #[test]
    fn the_file_that_rewrites_least_below_moves_first() {
        let below = [3.0, 1.0, 1.0, 5.0];
        let pick = |start, spent: Option<usize>| {
            pick_to_move(4, start, |i| Some(i) == spent, |i| below[i])
        };
        assert_eq!(pick(0, None), 1);
        assert_eq!(
            pick(2, None),
            2,
            "a tie goes to the first file from the cursor on"
        );
        assert_eq!(pick(3, None), 1);
        assert_eq!(pick(0, Some(3)), 3, "a spent seek allowance goes first");
        assert_eq!(pick_to_move(1, 0, |_| false, |_| 9.0), 0);
    }

    /// Level targets: no middle level up to the base size, then one of at least the base
    /// size, and further ones only while each still holds the base size at the multiplier.
    #[test]
    fn a_partition_past_the_base_size_gets_one_middle_level_of_at_least_that_size() {
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let view = db.inner.view.load();
        let layout = view.files.target_layout();
        let last = MAX_LEVELS - 1;
        let ladder = |total: u64| -> Vec<u64> {
            let sh = shape(&db.inner, layout, &layout.parts[0], total);
            (sh.base..last).map(|l| sh.targets[l]).collect()
        };
        assert_eq!(
            ladder(32 * MIB),
            [],
            "under the base size: L0 into the last level"
        );
        assert_eq!(ladder(64 * MIB), []);
        assert_eq!(ladder(126 * MIB), [64 * MIB], "floored at the base size");
        assert_eq!(ladder(700 * MIB), [70 * MIB]);
        assert_eq!(ladder(7000 * MIB), [70 * MIB, 700 * MIB]);
        drop(view);
        db.close().unwrap();

        // Partitions share the base size: 16 hash partitions of 63 MiB each (4 MiB base)
        // get one middle level of 6.3 MiB.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            Options {
                partition: PartitionSpec::Hash {
                    partitions: 16,
                    seed: 0,
                    hashed_prefix: None,
                },
                ..Options::default()
            },
        )
        .unwrap();
        let view = db.inner.view.load();
        let layout = view.files.target_layout();
        let sh = shape(&db.inner, layout, &layout.parts[3], 63 * MIB);
        assert_eq!(sh.base, last - 1);
        assert_eq!(sh.targets[last - 1], 63 * MIB / 10);
    }

    /// Waits until background work is done: no job running, no memtable waiting for a
    /// flush, and the files unchanged, for 300 ms on end. (The files alone do not tell:
    /// a compaction that is running changes them only when it installs, which on a
    /// loaded machine can be long after it was picked.)
    fn quiet(db: &Db) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = |db: &Db| -> Option<Vec<u64>> {
            let core = db.inner.core.lock();
            let view = db.inner.view.load();
            if core.running > 0 || !core.manual.is_empty() || !view.imm.is_empty() {
                return None;
            }
            Some(
                view.files
                    .target_layout()
                    .parts
                    .iter()
                    .flat_map(|p| p.levels.iter().flatten())
                    .map(|f| f.number)
                    .collect(),
            )
        };
        let mut last = state(db);
        let mut since = Instant::now();
        while last.is_none() || since.elapsed() < Duration::from_millis(300) {
            assert!(Instant::now() < deadline, "compaction never went quiet");
            std::thread::sleep(Duration::from_millis(10));
            let now = state(db);
            if now.is_none() || now != last {
                last = now;
                since = Instant::now();
            }
        }
    }

    /// The files of one level of the only partition: (number, smallest, largest).
    fn level_files(db: &Db, level: usize) -> Vec<(u64, Bytes, Bytes)> {
        let view = db.inner.view.load();
        view.files.target_layout().parts[0].levels[level]
            .iter()
            .map(|f| (f.number, f.smallest.clone(), f.largest.clone()))
            .collect()
    }

    /// A database of 20,000 keys fully compacted into the last level, in ~35 files, with a
    /// base size of 256 KiB: its 2.2 MB last level calls for a middle level above it.
    fn big_last_level(fs: &FaultFs) -> (tempfile::TempDir, impl Fn() -> Options, Db, u32) {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs.clone();
        let opts = move || Options {
            fs: Arc::new(fs.clone()),
            level_base_bytes: 256 << 10,
            level_multiplier: 10,
            target_file_bytes: 64 << 10,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        const KEYS: u32 = 20_000;
        load_compacted(&db, KEYS, |i| format!("k{i:05}"));
        (dir, opts, db, KEYS)
    }

    /// A partition larger than the base size compacts L0 into a middle level instead of
    /// rewriting its whole last level, and the middle level's files are cut where the last
    /// level's files begin, so that moving one down rewrites only the files under it. Then a
    /// power cut: nothing is lost.
    #[test]
    fn l0_compacts_into_a_middle_level_cut_along_the_last_levels_files() {
        let fs = FaultFs::new();
        let (dir, opts, db, keys) = big_last_level(&fs);
        let last = level_files(&db, MAX_LEVELS - 1);
        assert!(last.len() >= 20, "{} last-level files", last.len());
        {
            let view = db.inner.view.load();
            let files = &view.files;
            let sh = shape(
                &db.inner,
                files.target_layout(),
                &files.target_layout().parts[0],
                0,
            );
            assert_eq!(sh.base, MAX_LEVELS - 2, "a middle level above the last");
            assert_eq!(
                sh.targets[MAX_LEVELS - 2],
                256 << 10,
                "never below the base size"
            );
        }
        // Values of another size than the last level's, so that the middle level's files
        // do not fill up in step with the last level's by chance.
        let long = |round: u32, i: u32| format!("{}{}", value(round, i), "y".repeat(200));
        let rounds = db.inner.opts.level0_compaction_trigger as u32;
        flush_rounds(&db, rounds, keys, 40, |r, i| {
            (format!("k{i:05}"), long(r, i))
        });
        quiet(&db);
        assert!(level_files(&db, 0).is_empty(), "L0 was not compacted");
        let middle = level_files(&db, MAX_LEVELS - 2);
        assert!(middle.len() >= 2, "{} middle-level files", middle.len());
        assert_eq!(
            level_files(&db, MAX_LEVELS - 1),
            last,
            "the L0 compaction rewrote the last level"
        );
        for (n, lo, hi) in &last {
            let over = middle
                .iter()
                .filter(|(_, s, l)| !(l < lo || s > hi))
                .count();
            assert!(
                over <= 1,
                "last-level file {n} lies under {over} middle-level files"
            );
        }

        let want = |i: u32| {
            if i.is_multiple_of(40) {
                long(rounds, i)
            } else {
                value(0, i)
            }
        };
        check_after_power_cut(&fs, db, dir.path(), opts(), keys, want);
    }

    /// L0 waits, past the file trigger, until it holds as many bytes as the middle level it
    /// compacts into, or twice the trigger in files: small flushes do not each rewrite the
    /// whole middle level. Then a power cut: nothing is lost.
    #[test]
    fn l0_waits_for_the_bytes_of_its_middle_base_level_or_twice_the_trigger() {
        let fs = FaultFs::new();
        let (dir, opts, db, keys) = big_last_level(&fs);
        let trigger = db.inner.opts.level0_compaction_trigger as u32;
        let long = |round: u32, i: u32| format!("{}{}", value(round, i), "y".repeat(200));
        // An empty middle level holds nothing to wait for: the first L0 compaction goes at
        // the file trigger, and fills it.
        flush_rounds(&db, trigger, keys, 40, |r, i| {
            (format!("k{i:05}"), long(r, i))
        });
        quiet(&db);
        assert_eq!(l0_files(&db), 0, "L0 into an empty middle level waited");
        let middle = level_files(&db, MAX_LEVELS - 2);
        assert!(!middle.is_empty());

        // Small flushes (a few KB each against a middle level of ~165 KB): L0 holds up to
        // twice the trigger, then compacts.
        for round in 1..2 * trigger {
            flush_rounds(&db, 1, keys, 400, |_, i| {
                (format!("k{i:05}"), value(100 + round, i))
            });
            quiet(&db);
            assert_eq!(
                l0_files(&db),
                round as usize,
                "L0 compacted at {round} small files"
            );
        }
        assert_eq!(level_files(&db, MAX_LEVELS - 2), middle);
        flush_rounds(&db, 1, keys, 400, |_, i| {
            (format!("k{i:05}"), value(200, i))
        });
        quiet(&db);
        assert_eq!(l0_files(&db), 0, "L0 at twice the trigger never compacted");

        // At the file trigger, L0 holding more bytes than the middle level compacts.
        flush_rounds(&db, trigger - 1, keys, 400, |r, i| {
            (format!("k{i:05}"), value(300 + r, i))
        });
        quiet(&db);
        assert_eq!(l0_files(&db), trigger as usize - 1);
        flush_rounds(&db, 1, keys, 2, |_, i| (format!("k{i:05}"), value(400, i)));
        quiet(&db);
        assert_eq!(
            l0_files(&db),
            0,
            "a trigger's worth of L0 bytes never compacted"
        );

        let want = |i: u32| {
            if i.is_multiple_of(2) {
                value(400, i)
            } else {
                value(0, i)
            }
        };
        check_after_power_cut(&fs, db, dir.path(), opts(), keys, want);
    }

    /// Scans that keep seeking middle-level files besides the last level push those files
    /// down once they have used their allowance, leaving one sorted run; a few scans do not.
    /// Then a power cut: nothing is lost.
    #[test]
    fn scans_that_keep_seeking_a_middle_level_push_it_down() {
        let fs = FaultFs::new();
        let (dir, opts, db, keys) = big_last_level(&fs);
        let rounds = db.inner.opts.level0_compaction_trigger as u32;
        flush_rounds(&db, rounds, keys, 20, |_, i| {
            (format!("k{i:05}"), value(1, i))
        });
        quiet(&db);
        let middle = level_files(&db, MAX_LEVELS - 2);
        assert!(!middle.is_empty());
        let scan = |db: &Db, i: u32| {
            let n = db.range(format!("k{i:05}")..).take(10).count();
            assert_eq!(n, 10.min((keys - i) as usize));
        };
        for _ in 0..50 {
            scan(&db, 0);
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            level_files(&db, MAX_LEVELS - 2),
            middle,
            "pushed down before the scans paid"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut i = 0;
        while !level_files(&db, MAX_LEVELS - 2).is_empty() {
            assert!(
                Instant::now() < deadline,
                "sought middle level never pushed down"
            );
            scan(&db, i);
            i = (i + 7) % keys;
        }

        let want = |i: u32| {
            if i.is_multiple_of(20) {
                value(1, i)
            } else {
                value(0, i)
            }
        };
        check_after_power_cut(&fs, db, dir.path(), opts(), keys, want);
    }

    fn l0_files(db: &Db) -> usize {
        db.inner.view.load().files.target_layout().parts[0].levels[0].len()
    }

    /// Options on `fs` whose memtables count as idle after `idle` without writes.
    fn idle_options(fs: &FaultFs, idle: Duration) -> Options {
        Options {
            fs: Arc::new(fs.clone()),
            idle_memtable_flush_after: Some(idle),
            ..Options::default()
        }
    }

    fn l0_numbers(db: &Db) -> Vec<u64> {
        let view = db.inner.view.load();
        let l0 = &view.files.target_layout().parts[0].levels[0];
        l0.iter().map(|f| f.number).collect()
    }

    /// L0 below its trigger is compacted once scans that had to seek its files besides the
    /// base level have done so often enough to pay for it — and not before. Then a power
    /// cut: nothing is lost.
    #[test]
    fn scans_that_keep_seeking_overlapping_l0_files_get_them_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = || Options {
            fs: Arc::new(fs.clone()),
            level0_compaction_trigger: 8,
            level0_slowdown_trigger: 16,
            level0_stop_trigger: 24,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        const KEYS: u32 = 2000;
        for i in 0..KEYS {
            db.put(format!("k{i:05}"), value(0, i)).unwrap();
        }
        db.compact().unwrap();
        for round in 1..=2 {
            for i in (0..KEYS).step_by(3 + round as usize) {
                db.put(format!("k{i:05}"), value(round, i)).unwrap();
            }
            db.flush().unwrap();
        }
        assert_eq!(
            l0_files(&db),
            2,
            "two overlapping L0 files, below the trigger"
        );
        let allowance = 100; // small files get the minimum
        let scan = |db: &Db| assert_eq!(db.range(..).take(10).count(), 10);
        for _ in 0..allowance / 2 {
            scan(&db);
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(l0_files(&db), 2, "compacted before the scans paid for it");
        for _ in 0..allowance {
            scan(&db);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while l0_files(&db) > 0 {
            assert!(
                Instant::now() < deadline,
                "sought-out L0 files never compacted"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let want = |i: u32| {
            let round = (1..=2).rev().find(|r| i.is_multiple_of(3 + r)).unwrap_or(0);
            value(round, i)
        };
        check_after_power_cut(&fs, db, dir.path(), opts(), KEYS, want);
    }

    /// Point reads that probe runs they do not need (the memtable's and L0 files' filters,
    /// for keys that live in the last level) count against those runs' seek allowances only
    /// while no writes arrive: with writes going on, many times the allowance of such reads
    /// compacts nothing; once writes stop, as many again get L0 compacted below its trigger
    /// and the memtable flushed, with no write or scan to prompt it. A power cut afterwards
    /// loses nothing.
    #[test]
    fn point_reads_get_overlapping_runs_compacted_only_while_writes_stop() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        // Long enough that a loaded machine stalling this thread between writes does not
        // look idle.
        let idle = Duration::from_secs(1);
        let opts = || Options {
            level0_compaction_trigger: 8,
            level0_slowdown_trigger: 16,
            level0_stop_trigger: 24,
            ..idle_options(&fs, idle)
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        const KEYS: u32 = 2000;
        load_compacted(&db, KEYS, |i| format!("k{i:05}"));
        flush_rounds(&db, 2, KEYS, 5, |r, i| (format!("k{i:05}"), value(r, i)));
        assert_eq!(
            l0_files(&db),
            2,
            "two overlapping L0 files, below the trigger"
        );
        let first_two = l0_numbers(&db);
        // Keys only the last level holds: every read probes both L0 filters for nothing.
        let deep: Vec<u32> = (0..KEYS).filter(|i| !i.is_multiple_of(5)).collect();
        let allowance = (crate::version::seek_allowance(0) / crate::version::PROBE_UNITS) as usize;
        let n = std::cell::Cell::new(0usize);
        let read = |db: &Db| {
            let i = deep[n.get() % deep.len()];
            n.set(n.get() + 1);
            assert_eq!(
                db.get(format!("k{i:05}")).unwrap().unwrap(),
                value(0, i).as_bytes()
            );
        };
        // Writes keep arriving (into the memtable, so it is probed too) while reads pass
        // three allowances.
        let until = Instant::now() + idle * 3;
        let mut w = 0u32;
        while Instant::now() < until || n.get() < 3 * allowance {
            let i = (w % (KEYS / 5)) * 5;
            db.put(format!("k{i:05}"), value(3, i)).unwrap();
            w += 1;
            for _ in 0..20 {
                read(&db);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            l0_numbers(&db),
            first_two,
            "L0 compacted by reads while writes kept arriving"
        );
        assert_eq!(db.stats().idle_flushes, 0);
        // No more writes: once the ticker sees the memtable idle, the same reads pay.
        std::thread::sleep(idle * 2);
        for _ in 0..2 * allowance {
            read(&db);
        }
        // The two L0 files are compacted away and the memtable is flushed (into an L0 file
        // of its own, which stays: one L0 file is not compacted early).
        let deadline = Instant::now() + Duration::from_secs(30);
        while l0_numbers(&db).iter().any(|f| first_two.contains(f)) || db.stats().idle_flushes == 0
        {
            assert!(
                Instant::now() < deadline,
                "read-only stretch never compacted L0 ({:?}) or flushed the memtable ({})",
                l0_numbers(&db),
                db.stats().idle_flushes
            );
            for _ in 0..100 {
                read(&db);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(l0_files(&db) <= 1);
        let rewritten = |i: u32| i.is_multiple_of(5) && i / 5 < w.min(KEYS / 5);
        let want = |i: u32| {
            if rewritten(i) {
                value(3, i)
            } else if i.is_multiple_of(5) {
                value(2, i)
            } else {
                value(0, i)
            }
        };
        check_after_power_cut(&fs, db, dir.path(), opts(), KEYS, want);
    }

    /// An idle memtable that scans keep seeking besides table runs is frozen and flushed:
    /// not while it is idle but scans have not paid its allowance, not while writes keep
    /// arriving, and then without any further scan once it has been idle long enough. A
    /// power cut afterwards loses nothing.
    #[test]
    fn scans_get_an_idle_memtable_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        // Long enough that a loaded machine stalling this thread between writes does not
        // look idle.
        let idle = Duration::from_secs(1);
        let opts = || idle_options(&fs, idle);
        let db = Db::open(dir.path(), opts()).unwrap();
        const KEYS: u32 = 2000;
        load_compacted(&db, KEYS, |i| format!("k{i:05}"));
        let rewritten = |i: u32| i.is_multiple_of(7);
        for i in (0..KEYS).filter(|&i| rewritten(i)) {
            db.put(format!("k{i:05}"), value(1, i)).unwrap();
        }
        let idle_flushes = |db: &Db| db.stats().idle_flushes;
        let flushes = db.stats().flushes;
        let scan = |db: &Db| assert_eq!(db.range(..).take(10).count(), 10);
        let allowance = 100; // a small memtable gets the minimum
        for _ in 0..allowance / 2 {
            scan(&db);
        }
        std::thread::sleep(idle * 2);
        assert_eq!(idle_flushes(&db), 0, "flushed before scans paid for it");
        // Writes keep arriving while scans pass the allowance.
        let until = Instant::now() + idle * 3;
        let mut n = 0u32;
        while Instant::now() < until || n < allowance {
            let i = (n % (KEYS / 7)) * 7;
            db.put(format!("k{i:05}"), value(1, i)).unwrap();
            scan(&db);
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(idle_flushes(&db), 0, "flushed while writes kept arriving");
        assert_eq!(db.stats().flushes, flushes);
        // Idle now: flushed without another scan.
        let deadline = Instant::now() + Duration::from_secs(30);
        while idle_flushes(&db) == 0 || db.stats().memtable_bytes > 0 {
            assert!(Instant::now() < deadline, "idle memtable never flushed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(idle_flushes(&db), 1);
        let want = |i: u32| value(if rewritten(i) { 1 } else { 0 }, i);
        check_after_power_cut(&fs, db, dir.path(), opts(), KEYS, want);
    }
}

#[cfg(test)]
mod manual_tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
    use crate::{Db, Options};

    /// Two callers of `Db::compact` at once, whose compactions both fail: each must see
    /// the failure. They shared one error slot, taken by whichever woke first, and the
    /// other was answered Ok for a compaction that had failed.
    #[test]
    fn concurrent_manual_compactions_that_fail_both_report_it() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = Options {
            fs: Arc::new(fs.clone()),
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        db.put("a", "v").unwrap();
        db.flush().unwrap();
        // The first caller's job is held at its output's fsync.
        fs.hold_syncs(".sst", "sluice-bg");
        let caller = |db: &Db| {
            let db = db.clone();
            std::thread::spawn(move || db.compact())
        };
        let a = caller(&db);
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs.held() == 0 {
            assert!(
                Instant::now() < deadline,
                "the first job never reached its sync"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The second caller queues the same partition, busy with the first's job.
        let b = caller(&db);
        while db.inner.core.lock().manual.is_empty() {
            assert!(Instant::now() < deadline, "the second caller never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Every table fsync fails from now on: both jobs fail.
        fs.inject(Fault::on(FsOp::Sync, FaultKind::Io, ".sst", true));
        fs.release_held();
        let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
        assert!(fs.injected() >= 2, "both jobs ran into the fault");
        assert!(
            ra.is_err() && rb.is_err(),
            "a caller whose compaction failed was answered Ok: {ra:?} / {rb:?}"
        );
    }
}
