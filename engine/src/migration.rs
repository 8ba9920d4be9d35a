//! Moving data to the target layout without a copy pass: the pacer that schedules migration
//! compactions of draining SSTables, and the figures that report their progress.
//!
//! Cold data never compacts by itself, so the pacer picks draining files (deepest level
//! first, so old data lands low in the target) at a byte budget. The budget adapts: it
//! halves whenever foreground p99 latency is over its target or compaction is falling
//! behind, and recovers by a tenth per second otherwise. A migration job runs only if the
//! disk keeps at least the configured headroom free after its output is written.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::awaits::Picker;
use crate::compaction::CompactionJob;
use crate::db::{Core, Inner, VersionId, View};
use crate::error::Result;
use crate::manifest::MAX_LEVELS;
use crate::version::FileMeta;

/// Pointer files a draining partition may collect before they are merged into one.
const MAX_POINTER_FILES: usize = 8;

/// Migration figures of one draining layout version (since the database was opened).
#[derive(Clone, Debug, Default)]
pub(crate) struct VersionCounters {
    pub files_migrated: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub pointers_honoured: u64,
}

/// Progress of one draining layout version.
#[derive(Clone, Debug, PartialEq)]
pub struct DrainingProgress {
    pub version: VersionId,
    /// Data SSTables still in this version.
    pub files_left: usize,
    pub bytes_left: u64,
    pub entries_left: u64,
    /// SSTables migrated by compaction, their bytes, and the bytes their outputs took.
    pub files_migrated: u64,
    pub bytes_migrated: u64,
    pub bytes_written: u64,
    /// Values dropped by migration because a read had already moved them.
    pub pointers_honoured: u64,
    /// Values lazy reads copied out of this version, and their bytes (keys and values). A
    /// copy that its flush leaves out (its value carried by migration meanwhile, or hidden
    /// by a newer entry) is taken back out once that flush is installed.
    pub lazy_moves: u64,
    pub lazy_moved_bytes: u64,
    /// Forwarding pointers live in this version's partitions.
    pub forwarding_pointers: u64,
    /// Seconds until `bytes_left` is migrated at the pace this version's own bytes left it
    /// over the last minute (`None` if none did, or while data movement is held).
    pub eta_secs: Option<f64>,
}

/// Migration state of the database, from [`crate::Db::migration_progress`].
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationProgress {
    pub target: VersionId,
    pub draining: Vec<DrainingProgress>,
    /// Budget set by the caller (0 = paused).
    pub rate_limit_bytes_per_sec: u64,
    /// Budget after adaptation to latency and compaction debt.
    pub effective_rate_bytes_per_sec: u64,
    /// Bytes migrated per second over the last minute.
    pub pace_bytes_per_sec: f64,
    /// Foreground p99 latency (µs) in the last pacing window.
    pub foreground_p99_us: u64,
    /// How many pacing windows (of a second or more) have ended: `foreground_p99_us` is
    /// the last one's. A reader that samples more often than windows end sees the same
    /// window again (and no new one while the pacer does not look: while no worker is
    /// free to ask it for a job) and should not count it twice.
    pub foreground_p99_window: u64,
    /// The p99 (µs) of each of the last windows, oldest first, up to
    /// [`FOREGROUND_P99_HISTORY`](crate::FOREGROUND_P99_HISTORY) of them: the last is
    /// `foreground_p99_us`, window `foreground_p99_window`'s. A reader that samples less
    /// often than windows end judges every window it missed from here, not only the last
    /// (0 for a window without foreground operations, as for `foreground_p99_us`).
    pub foreground_p99_recent_us: Vec<u64>,
    /// Why migration is not running right now, if it is not.
    pub blocked: Option<String>,
    /// Data movement is held ([`crate::Db::hold_migration`]), across restarts too.
    pub held: bool,
}

/// The file of a draining partition its next migration job takes: the first by key of its
/// deepest non-empty level, or of L0 (whose files overlap, kept newest first) the oldest.
/// Older versions of a key thus usually leave a partition before newer ones. Not always:
/// a migrated old version can lie above a newer one, and a lazy move's copy (old seqno) in
/// a newer L0 file; so a partition-scoped read (`Db::partition_entries`) checks the other
/// layouts for a newer entry before reporting one as live. (Reads across layouts pick the
/// highest seqno either way.)
fn next_to_migrate(
    part: &crate::version::PartitionFiles,
) -> Option<&Arc<crate::version::FileMeta>> {
    match (1..MAX_LEVELS).rev().find_map(|l| part.levels[l].first()) {
        Some(f) => Some(f),
        None => part.levels[0].last(),
    }
}

/// A small table's fixed cost on disk: index, filter, properties, footer.
pub(crate) const TABLE_COST: u64 = 4 << 10;

/// What a migration job reading `input` bytes may write into a layout of `partitions`
/// partitions, for the headroom check: its input and a quarter more, plus a small table's
/// fixed cost (index, filter, properties, footer) for each partition it may write to. A
/// small input spread over many partitions grows the most.
fn output_estimate(input: u64, partitions: usize) -> u64 {
    input
        .saturating_add(input / 4)
        .saturating_add(TABLE_COST.saturating_mul(partitions as u64))
}

/// Why no job starts in partitions whose lazily moved copies a flush is writing.
const FLUSHING_MOVES: &str =
    "a flush of lazily moved copies: no job starts in their source partitions until it installs";

/// Why a held database migrates nothing.
const HELD: &str = "held (`Db::hold_migration`, e.g. by a paused migration controller)";

impl MigrationProgress {
    pub fn bytes_left(&self) -> u64 {
        self.draining.iter().map(|d| d.bytes_left).sum()
    }
    pub fn files_left(&self) -> usize {
        self.draining.iter().map(|d| d.files_left).sum()
    }
    /// No data is left in any draining layout (a pinned rollback target may still be
    /// live, empty).
    pub fn is_complete(&self) -> bool {
        self.draining.iter().all(|d| d.files_left == 0)
    }
}

/// Log-linear latency histogram with lock-free recording (8 buckets per power of two).
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

const SUB: u32 = 8;

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: (0..(40 * SUB as usize))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn index(us: u64) -> usize {
        if us < SUB as u64 {
            return us as usize;
        }
        let log = 63 - us.leading_zeros();
        let sub = (us >> (log - 3)) & (SUB as u64 - 1);
        ((log - 2) * SUB + sub as u32) as usize
    }

    fn value(i: usize) -> u64 {
        if i < SUB as usize {
            return i as u64;
        }
        let log = i as u32 / SUB + 2;
        let sub = i as u64 % SUB as u64;
        (SUB as u64 + sub) << (log - 3)
    }

    pub fn record(&self, d: Duration) {
        let i = Self::index(d.as_micros() as u64).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Latencies recorded since the last [`take_quantile`](Self::take_quantile).
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// The given quantile of what was recorded since the last call, then resets.
    pub fn take_quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(Self::value(i));
            }
        }
        None
    }
}

/// Pacing windows whose p99 [`MigrationProgress::foreground_p99_recent_us`] keeps: a
/// minute of one-second windows.
pub const FOREGROUND_P99_HISTORY: usize = 64;

/// How far back the observed pace looks.
const PACE_WINDOW: Duration = Duration::from_secs(60);

/// The pacer's state.
pub(crate) struct Pacer {
    pub rate: u64,
    pub p99_target_us: u64,
    pub factor: f64,
    pub tokens: f64,
    pub last_refill: Instant,
    pub window_start: Instant,
    /// Windows ended so far (see [`MigrationProgress::foreground_p99_window`]).
    pub windows: u64,
    /// The last windows' p99s, oldest first (at most [`FOREGROUND_P99_HISTORY`]).
    pub recent_p99_us: VecDeque<u64>,
    pub blocked: Option<String>,
    /// Samples of the bytes migrated so far, for the observed pace: taken when the pacer
    /// looks for work and when a job is booked.
    pub history: VecDeque<PaceSample>,
    pub migrated_total: u64,
    /// Of `migrated_total`, what left each live layout version.
    pub migrated_by_version: BTreeMap<u32, u64>,
}

/// The bytes migrated so far at one instant: in all, and out of each layout version.
pub(crate) struct PaceSample {
    pub at: Instant,
    pub total: u64,
    pub by_version: BTreeMap<u32, u64>,
}

impl Pacer {
    pub fn new(rate: u64, p99_target_us: u64) -> Pacer {
        let now = Instant::now();
        Pacer {
            rate,
            p99_target_us,
            factor: 1.0,
            tokens: 0.0,
            last_refill: now,
            window_start: now,
            windows: 0,
            recent_p99_us: VecDeque::with_capacity(FOREGROUND_P99_HISTORY),
            blocked: None,
            history: VecDeque::new(),
            migrated_total: 0,
            migrated_by_version: BTreeMap::new(),
        }
    }

    /// Records the p99 of a window that ended.
    fn end_window(&mut self, p99_us: u64) {
        self.windows += 1;
        if self.recent_p99_us.len() == FOREGROUND_P99_HISTORY {
            self.recent_p99_us.pop_front();
        }
        self.recent_p99_us.push_back(p99_us);
    }

    /// The p99 of the last window that ended (0 before any).
    fn last_p99_us(&self) -> u64 {
        self.recent_p99_us.back().copied().unwrap_or(0)
    }

    fn effective_rate(&self) -> f64 {
        self.rate as f64 * self.factor
    }

    /// Bytes migrated per second over the last minute, up to `now`: from what had migrated
    /// when the minute began to the running total. (Samples are taken when the pacer looks
    /// for work, which it does not while nothing drains, while L0 is near its slowdown
    /// point, or while every worker runs a long job: between the samples alone, a pace
    /// measured long ago went on being reported, and a job that installed after a minute
    /// without one was not counted at all.) Less than a second of samples measures nothing
    /// yet.
    fn pace(&self, now: Instant) -> f64 {
        self.pace_since(now, |s| s.total, self.migrated_total)
    }

    /// [`Pacer::pace`] of the bytes leaving layout version `version` alone.
    fn pace_of(&self, version: u32, now: Instant) -> f64 {
        let of = |m: &BTreeMap<u32, u64>| m.get(&version).copied().unwrap_or(0);
        self.pace_since(now, |s| of(&s.by_version), of(&self.migrated_by_version))
    }

    fn pace_since(&self, now: Instant, base: impl Fn(&PaceSample) -> u64, current: u64) -> f64 {
        // What had migrated when the minute began: the last sample taken by then (every job
        // booked takes one, so nothing migrated between it and the minute's start), over the
        // whole minute; without one, from the first sample on.
        let start = self
            .history
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= PACE_WINDOW);
        let (from, secs) = match (start, self.history.front()) {
            (Some(s), _) => (s, PACE_WINDOW.as_secs_f64()),
            (None, Some(first)) => (first, now.saturating_duration_since(first.at).as_secs_f64()),
            (None, None) => return 0.0,
        };
        if secs < 1.0 {
            return 0.0;
        }
        current.saturating_sub(base(from)) as f64 / secs
    }

    /// Samples the totals at `now`, keeping the last sample taken by the start of the
    /// minute before `now` (see [`Pacer::pace_since`]) and those after it.
    fn sample(&mut self, now: Instant) {
        let sample = PaceSample {
            at: now,
            total: self.migrated_total,
            by_version: self.migrated_by_version.clone(),
        };
        self.history.push_back(sample);
        while self
            .history
            .get(1)
            .is_some_and(|s| now.saturating_duration_since(s.at) >= PACE_WINDOW)
        {
            self.history.pop_front();
        }
    }
}

impl Inner {
    /// Adapts the budget once per second from foreground latency and compaction pressure.
    fn adapt(&self, p: &mut Pacer, view: &View) {
        let now = Instant::now();
        let window = now.duration_since(p.window_start);
        if window < Duration::from_secs(1) {
            return;
        }
        p.window_start = now;
        // The worse of the writes' and the reads' p99.
        let p99 = match (
            self.fg_latency.take_quantile(0.99),
            self.fg_read_latency.take_quantile(0.99),
        ) {
            (Some(w), Some(r)) => Some(w.max(r)),
            (w, r) => w.or(r),
        };
        p.end_window(p99.unwrap_or(0));
        let o = &self.opts;
        let slow = p.p99_target_us > 0 && p99.is_some_and(|v| v > p.p99_target_us);
        let debt = self.pending_compaction.load(Ordering::Relaxed)
            >= o.pending_compaction_slowdown_bytes / 2
            || self.l0_max.load(Ordering::Relaxed)
                // Halfway from the compaction trigger to the slowdown trigger (validated
                // to be no lower), without overflowing when slowdown is set out of reach.
                >= o.level0_compaction_trigger
                    + (o.level0_slowdown_trigger - o.level0_compaction_trigger) / 2;
        p.factor = if slow || debt {
            (p.factor * 0.5).max(0.05)
        } else {
            // A tenth per second of the window: the pacer may not have looked for a while
            // (workers busy with long jobs, or nothing to migrate).
            (p.factor + 0.1 * window.as_secs_f64()).min(1.0)
        };
        // Retired versions' figures go (ids are never used again).
        p.migrated_by_version
            .retain(|v, _| view.files.layouts.contains_key(v));
        p.sample(now);
    }

    /// Starts a fresh pacing window, as a change of target starts a new migration while
    /// nothing drained: the foreground latencies recorded so far belong to before it (the
    /// pacer takes them only when it looks for work, which it does not while nothing
    /// drains, so they may go back to the end of the last migration) and are dropped. The
    /// budget recovers for the time the pacer did not look, as the window it would have
    /// ended would have let it (a tenth per second). (A change of target mid-migration
    /// keeps the window: its latencies are that migration's, which goes on draining.)
    pub(crate) fn restart_pacing_window(&self) {
        let mut p = self.pacer.lock();
        let now = Instant::now();
        let waited = now.saturating_duration_since(p.window_start).as_secs_f64();
        p.factor = (p.factor + 0.1 * waited).min(1.0);
        p.window_start = now;
        self.fg_latency.clear();
        self.fg_read_latency.clear();
    }

    /// Picks a migration compaction if the pacer's budget and the disk headroom allow it.
    pub(crate) fn pick_migration(&self, core: &mut Core, view: &View) -> Option<CompactionJob> {
        let now = Instant::now();
        if view.files.draining().next().is_none() {
            // Nothing to migrate: idle time pays off the debt the last job left, but banks
            // nothing beyond it, or the next migration would start with a burst of
            // everything the rate allowed since the database opened.
            let mut p = self.pacer.lock();
            let refill = now.duration_since(p.last_refill).as_secs_f64() * p.effective_rate();
            p.tokens = (p.tokens + refill).min(0.0);
            p.last_refill = now;
            core.migration_awaits.clear(Picker::Background);
            return None;
        }
        let mut p = self.pacer.lock();
        self.adapt(&mut p, view);
        // Held or paused, background migration waits for no partition: those its last pick
        // waited for must not stay closed to lazy moves (those of a waiting `migrate_now`
        // stay).
        if core.migration_held || p.rate == 0 {
            core.migration_awaits.clear(Picker::Background);
        }
        if core.migration_held {
            p.blocked = Some(HELD.into());
            p.last_refill = now;
            return None;
        }
        if p.rate == 0 {
            p.blocked = Some("paused".into());
            p.last_refill = now;
            // Lazy moves go on (and add pointer files) while background migration is off.
            // A merge's output is no larger than its inputs: no headroom check.
            return self.pick_pointer_merge(core, view);
        }
        let refill = now.duration_since(p.last_refill).as_secs_f64() * p.effective_rate();
        p.last_refill = now;
        // At most a second's budget banked. A job needs only a budget not in debt to
        // start, and its bytes may take it into debt, so any file can go at any rate.
        p.tokens = (p.tokens + refill).min(p.effective_rate());
        if p.tokens < 0.0 {
            p.blocked = Some("pacing".into());
            return None;
        }
        let picked = self.pick_within_headroom(core, view, Picker::Background);
        let job = match picked {
            Ok(Some(job)) => job,
            Ok(None) => {
                // Every draining file left is in a running job's hands, or in a partition
                // whose lazily moved copies a flush is writing: only the latter holds
                // migration back (whatever did when the pacer last said, L0 pressure say,
                // no longer does).
                p.blocked = (!core.flush_sources.is_empty()).then(|| FLUSHING_MOVES.into());
                return None;
            }
            Err(why) => {
                p.blocked = Some(why);
                return None;
            }
        };
        p.tokens -= job.input_bytes() as f64;
        p.blocked = None;
        Some(job)
    }

    /// Notes, for [`MigrationProgress::blocked`], that the workers start no migration job
    /// while the target's L0 is at its slowdown trigger: they do not ask the pacer then,
    /// which would say why itself (unless a hold or a pause is the reason anyway).
    pub(crate) fn note_l0_holds_migration(&self, core: &Core, view: &View) {
        let mut p = self.pacer.lock();
        if view.files.draining().next().is_some() {
            // Windows go on ending meanwhile: the pressure cuts the budget as it would
            // have, and the window after it is no longer than others.
            self.adapt(&mut p, view);
        }
        if p.rate > 0
            && !core.migration_held
            && view.files.draining().any(|l| l.data_file_count() > 0)
        {
            p.blocked = Some(format!(
                "L0 at {} files, at its slowdown trigger ({}): compactions first",
                self.l0_max.load(Ordering::Relaxed),
                self.opts.level0_slowdown_trigger
            ));
        }
    }

    /// [`Inner::pick_draining_file`], if the disk keeps its headroom with the job's output
    /// on it (and what migration jobs already running may still write): the job, with
    /// that output reserved until it is released; else the reason. A job of several files
    /// that does not fit is tried again with its first file alone: once that one has
    /// migrated, its input's space is free again for the next, where the files together
    /// would have held migration at the headroom for good.
    pub(crate) fn pick_within_headroom(
        &self,
        core: &mut Core,
        view: &View,
        picker: Picker,
    ) -> std::result::Result<Option<CompactionJob>, String> {
        let mut alone = false;
        loop {
            let Some(job) = self.pick_draining_file(core, view, alone, picker) else {
                return Ok(None);
            };
            let parts = job
                .migrate_to
                .and_then(|t| view.files.layouts.get(&t))
                .map_or(1, |l| l.parts.len());
            let input: u64 = job.inputs.iter().map(|f| self.rewritten_size(f)).sum();
            let need = output_estimate(input, parts);
            if let Some(why) = self.headroom_refusal(core, need) {
                self.release_job(core, &job);
                if job.inputs.len() > 1 && !job.pointer_merge && !alone {
                    alone = true;
                    continue;
                }
                return Err(why);
            }
            core.migration_space.insert(job.id, need);
            return Ok(Some(job));
        }
    }

    /// What `f` takes once rewritten with this handle's table options, for the headroom
    /// check: its file size, unless it was written compressed or key-delta encoded and its
    /// rewrite will not be, or will be compressed in blocks under half the size of its
    /// own (the options may change between opens; values alike across entries compress
    /// within a large block, not within a small one). Such a file's rewrite is bounded by
    /// its key and value bytes and each entry's encoding (lengths, seqno, offset, filter
    /// bits and a share of the index) instead: a table of compressible values read 28 KB
    /// and wrote 1 MB, far into the headroom; one rewritten from 64 KiB into 256-byte
    /// blocks read 23 KB and wrote 1 MB. (A lower zstd level is not seen: tables do not
    /// record theirs. Its cost is within the estimate's quarter for most data.)
    fn rewritten_size(&self, f: &FileMeta) -> u64 {
        let p = f.table.props();
        let out = &self.table_opts;
        let compressed = p.compression != crate::sst::format::COMPRESSION_NONE;
        let loses_compression =
            compressed && matches!(out.compression, crate::sst::Compression::None);
        let smaller_blocks = compressed
            && p.data_blocks > 0
            && (out.block_size as u64).saturating_mul(2) < p.raw_bytes / p.data_blocks;
        let loses_delta = p.format_version >= 2 && !out.key_delta;
        if !(loses_compression || smaller_blocks || loses_delta) {
            return f.size;
        }
        let per_entry = 32 + u64::from(out.bloom_bits_per_key).div_ceil(8);
        f.size.max(
            p.raw_bytes
                .saturating_add(p.entries.saturating_mul(per_entry)),
        )
    }

    /// Why writing `need` more bytes for migration would eat into the disk headroom
    /// (`Options::migration_disk_headroom_bytes`), counting what running migration jobs
    /// may still write; `None` if it would not, or if the free space cannot be known.
    pub(crate) fn headroom_refusal(&self, core: &Core, need: u64) -> Option<String> {
        let free = self.fs.available_space(&self.dir).ok()?;
        // Lazily moved copies waiting in memtables are migration writes to come too: each
        // batch of moves was checked against a free space their flush had not yet lowered,
        // and batch after batch took 3.8 MB of copies into a 4 MB headroom.
        let view = self.view.load();
        // (With the fixed cost of each table their flush writes: a pointer table in every
        // source partition a copy came from, which from a layout of many partitions into
        // one of few is most of what the flush writes.)
        let queued: u64 = std::iter::once(&view.mem)
            .chain(view.imm.iter())
            .map(|m| m.moved_bytes())
            .sum();
        drop(view);
        let running: u64 = core
            .migration_space
            .values()
            .sum::<u64>()
            .saturating_add(queued);
        let headroom = self.opts.migration_disk_headroom_bytes;
        let want = need.saturating_add(running).saturating_add(headroom);
        (free < want).then(|| {
            format!(
                "disk headroom: {free} bytes free; migrating the next file may write {need}, \
                 running migration jobs and queued lazy moves {running} more, and {headroom} \
                 are kept free"
            )
        })
    }

    /// A merge of a draining partition's pointer files, once it has more than
    /// [`MAX_POINTER_FILES`], marking the partition busy. Every flush of lazily moved values
    /// adds a pointer file, and each migration job reads them all: they are merged before
    /// they pile up, whether or not the pacer lets migration jobs run (with background
    /// migration off, lazy moves still add them, flush after flush).
    pub(crate) fn pick_pointer_merge(&self, core: &mut Core, view: &View) -> Option<CompactionJob> {
        for layout in view.files.draining() {
            for (pi, part) in layout.parts.iter().enumerate() {
                let pi = pi as u32;
                if part.pointers.len() <= MAX_POINTER_FILES
                    || part.data_file_count() == 0
                    || core.busy.contains(&(layout.id, pi))
                {
                    continue;
                }
                core.busy.insert((layout.id, pi));
                let mut job = self.new_job(
                    core,
                    view,
                    layout.id,
                    pi,
                    0,
                    part.pointers.clone(),
                    false,
                    None,
                );
                job.pointer_merge = true;
                return Some(job);
            }
        }
        None
    }

    /// The next draining files to migrate, marking their partitions busy: of each partition's
    /// deepest non-empty level its first file, and of those the one with the smallest key,
    /// across every partition of every draining layout, with the next files of its layout's
    /// other partitions that begin within its key range (see below).
    ///
    /// Key order across partitions matters when the draining partitions overlap in key
    /// space (a hash layout): taken partition after partition, each source partition's
    /// data became one more sorted run spanning every target partition, to be merged with
    /// all the others there. Taken in key order, the files migrated together cover about
    /// the same key range, so their outputs overlap one another but not what migrated
    /// before, and the target merges them within that range only. From a range layout the
    /// order is the same as before: its partitions are key-ordered.
    ///
    /// `alone`: the first file only, with none of the other partitions' files. `picker`:
    /// whose record of the partitions it waits for the pick replaces.
    pub(crate) fn pick_draining_file(
        &self,
        core: &mut Core,
        view: &View,
        alone: bool,
        picker: Picker,
    ) -> Option<CompactionJob> {
        if let Some(job) = self.pick_pointer_merge(core, view) {
            return Some(job);
        }
        let target = view.files.target;
        let mut next: Option<(u32, u32, Arc<FileMeta>, u32)> = None;
        // Partitions with a file to migrate that a flush of moved copies holds.
        let mut held = HashSet::new();
        for layout in view.files.draining() {
            for (pi, part) in layout.parts.iter().enumerate() {
                let pi = pi as u32;
                if core.busy.contains(&(layout.id, pi)) {
                    continue;
                }
                let Some(f) = next_to_migrate(part) else {
                    continue;
                };
                if core.flush_sources.contains(&(layout.id, pi)) {
                    held.insert((layout.id, pi));
                    continue;
                }
                // A partition whose last jobs failed (an unreadable file) comes after those
                // that failed fewer times in a row: taken first by key, it held back the
                // whole migration, each retry failing the same way.
                let failed = core
                    .compaction_failures
                    .get(&(layout.id, pi))
                    .copied()
                    .unwrap_or(0);
                if next
                    .as_ref()
                    .is_none_or(|(_, _, g, gf)| (failed, &f.smallest) < (*gf, &g.smallest))
                {
                    next = Some((layout.id, pi, f.clone(), failed));
                }
            }
        }
        // Nothing to take but partitions a flush holds: the moves applied from now on take
        // no copies out of them, so the flushes holding them end with those of the
        // memtables that took copies already, and a pick after that finds them free
        // whenever it comes. (Such copies are work the job would undo anyway: it
        // carries the values itself.) Each pick looks again: one that finds them free, or
        // takes another partition, lets moves out of them go on, unless another picker
        // waits for them too (see `crate::awaits::Awaits`).
        let Some((version, pi, f, failed)) = next else {
            core.migration_awaits.set(picker, held);
            return None;
        };
        core.migration_awaits.clear(picker);
        let failing = failed > 0;
        // Of the other partitions of its layout, those whose next file begins within its
        // key range migrate that file with it (from a hash layout, every partition). Taken
        // one file per job, each output overlapped the outputs of the other source
        // partitions' files over the same keys in its target partition, went above the
        // base level there, and was merged down again; taken together, each target
        // partition gets one run per job, past the last one, straight into its last level.
        let layout = view.files.layouts.get(&version)?;
        let cap = self.opts.target_file_bytes.saturating_mul(16);
        let (mut inputs, mut sources) = (vec![f.clone()], vec![pi]);
        let mut bytes = f.size;
        for (pj, part) in layout.parts.iter().enumerate() {
            let pj = pj as u32;
            // A failing partition is retried alone, and none joins another's job: one
            // unreadable file fails the whole job it is in.
            if failing
                || alone
                || pj == pi
                || core.busy.contains(&(version, pj))
                || core.flush_sources.contains(&(version, pj))
                || core.compaction_failures.contains_key(&(version, pj))
            {
                continue;
            }
            let Some(g) = next_to_migrate(part) else {
                continue;
            };
            if g.smallest <= f.largest && bytes.saturating_add(g.size) <= cap {
                bytes += g.size;
                inputs.push(g.clone());
                sources.push(pj);
            }
        }
        for &p in &sources {
            core.busy.insert((version, p));
        }
        let level = f.level as usize;
        core.migrating.extend(inputs.iter().map(|f| f.number));
        let mut job = self.new_job(core, view, version, pi, level, inputs, false, Some(target));
        job.pointers = sources
            .iter()
            .filter_map(|&p| layout.parts.get(p as usize))
            .flat_map(|p| p.pointers.iter().cloned())
            .collect();
        job.sources = sources;
        Some(job)
    }

    /// Books an installed migration job in the progress figures.
    pub(crate) fn note_migrated(
        &self,
        core: &mut Core,
        job: &CompactionJob,
        read: u64,
        written: u64,
        forwarded: u64,
    ) {
        let c = core.migration.entry(job.version).or_default();
        c.files_migrated += job.inputs.len() as u64;
        c.bytes_read += read;
        c.bytes_written += written;
        c.pointers_honoured += forwarded;
        let mut p = self.pacer.lock();
        p.migrated_total += read;
        *p.migrated_by_version.entry(job.version).or_default() += read;
        // When its bytes moved, for the pace: the pacer may not look again for a while.
        p.sample(Instant::now());
    }

    /// Migrates draining files now, in the caller's thread, ignoring the pacer, until none
    /// is left or `max_bytes` of input has been migrated. Returns the bytes migrated.
    pub fn migrate_now(&self, max_bytes: Option<u64>) -> Result<u64> {
        let picker = self.core.lock().migration_awaits.now_picker();
        let r = self.migrate_now_picking(max_bytes, picker);
        // However it ended (nothing left to take, say, after a rollback; an error), it
        // waits for no partition any more: those its last pick waited for must not stay
        // closed to lazy moves (no other picker clears them).
        self.core.lock().migration_awaits.clear(picker);
        r
    }

    /// [`Inner::migrate_now`]'s work, its picks made as `picker`.
    fn migrate_now_picking(&self, max_bytes: Option<u64>, picker: Picker) -> Result<u64> {
        // Moves reads asked for first: their pointers then spare the values migration.
        self.apply_moves();
        let mut done = 0u64;
        loop {
            self.check_writable()?;
            if max_bytes.is_some_and(|m| done >= m) {
                return Ok(done);
            }
            #[cfg(test)]
            crate::test_hooks::reach(crate::test_hooks::Point::MigrateNowBeforePick);
            let job = {
                let mut core = self.core.lock();
                // Again under the core lock, where close reads the count of jobs: a close
                // that began since the check above may have found none and let the
                // directory go.
                self.check_open()?;
                let view = self.view.load_full();
                if view.files.draining().all(|l| l.data_file_count() == 0) {
                    // Done moving; retire what is empty (pinned rollback targets stay).
                    drop(view);
                    self.retire_drained(&mut core)?;
                    return Ok(done);
                }
                let picked = self.pick_within_headroom(&mut core, &view, picker);
                match picked {
                    Err(why) => {
                        return Err(crate::Error::io(
                            &self.dir,
                            std::io::Error::new(std::io::ErrorKind::StorageFull, why),
                        ))
                    }
                    Ok(Some(j)) => {
                        core.foreground_jobs += 1;
                        j
                    }
                    Ok(None) => {
                        // Every draining partition is busy with a job, or held by a flush
                        // of copies moved out of it: wait.
                        #[cfg(test)]
                        crate::test_hooks::reach(crate::test_hooks::Point::MigrateNowWaits);
                        self.stall_cv.wait_for(&mut core, Duration::from_millis(20));
                        continue;
                    }
                }
            };
            // Uncounted when it ends, however it ends (a panic included: close waits for
            // the count).
            let _counted = crate::db::ForegroundJob(self);
            // A merge of pointer files (picked first once they pile up) migrates nothing.
            let bytes = match job.pointer_merge {
                true => 0,
                false => job.input_bytes(),
            };
            #[cfg(test)]
            crate::test_hooks::reach(crate::test_hooks::Point::MigrateNowPicked);
            // A panic must not unwind past the release below: the job's partitions would
            // stay busy, and every later `migrate_now` wait for them for ever. What the job
            // left half done is unknown: writes stop, as for a background job's panic.
            let r = crate::util::catch_panic(|| self.run_compaction(&job)).unwrap_or_else(|why| {
                self.fail(format!("a migrate_now job panicked: {why}"));
                Err(crate::Error::Background(format!("panicked: {why}")))
            });
            let mut core = self.core.lock();
            self.release_job(&mut core, &job);
            self.stall_cv.notify_all();
            self.bg_cv.notify_all();
            r?;
            self.retire_drained(&mut core)?;
            done += bytes;
        }
    }

    pub fn set_migration_rate(&self, bytes_per_sec: u64) {
        self.pacer.lock().rate = bytes_per_sec;
        self.bg_cv.notify_all();
    }

    pub fn set_migration_latency_target(&self, p99_us: u64) {
        self.pacer.lock().p99_target_us = p99_us;
    }

    pub fn migration_progress(&self) -> MigrationProgress {
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::ProgressBeforeCore);
        // The view under the core lock: a job installs (its files leave the view) and books
        // its figures under that lock, so a view loaded before it counted an installed job
        // both as left and as migrated.
        let core = self.core.lock();
        let view = self.view.load_full();
        let p = self.pacer.lock();
        let now = Instant::now();
        let pace = p.pace(now);
        let draining = view
            .files
            .draining()
            .map(|l| {
                let c = core.migration.get(&l.id).cloned().unwrap_or_default();
                let lazy = self
                    .lazy_counts
                    .lock()
                    .get(&l.id)
                    .copied()
                    .unwrap_or_default();
                let bytes_left = l.data_bytes();
                DrainingProgress {
                    version: VersionId(l.id),
                    files_left: l.data_file_count(),
                    bytes_left,
                    entries_left: l.data_entries(),
                    files_migrated: c.files_migrated,
                    bytes_migrated: c.bytes_read,
                    bytes_written: c.bytes_written,
                    pointers_honoured: c.pointers_honoured,
                    lazy_moves: lazy.0,
                    lazy_moved_bytes: lazy.1,
                    forwarding_pointers: l
                        .pointer_files()
                        .map(|f| f.entries)
                        .fold(0, u64::saturating_add),
                    eta_secs: {
                        // Its own pace: the versions draining at once share the budget
                        // unevenly (files go by key across them), and one is done when
                        // its own bytes have moved.
                        // While held, nothing moves, whatever the pace was.
                        let pace = p.pace_of(l.id, now);
                        (pace > 0.0 && !core.migration_held).then(|| bytes_left as f64 / pace)
                    },
                }
            })
            .collect();
        MigrationProgress {
            target: VersionId(view.files.target),
            draining,
            rate_limit_bytes_per_sec: p.rate,
            effective_rate_bytes_per_sec: p.effective_rate() as u64,
            pace_bytes_per_sec: pace,
            foreground_p99_us: p.last_p99_us(),
            foreground_p99_window: p.windows,
            foreground_p99_recent_us: p.recent_p99_us.iter().copied().collect(),
            // The pacer notes why only when it looks; a hold is known at once, and so is
            // that nothing is left to migrate (its last reason then holds nothing back).
            blocked: if core.migration_held {
                Some(HELD.into())
            } else if view.files.draining().all(|l| l.data_file_count() == 0) {
                None
            } else {
                p.blocked.clone()
            },
            held: core.migration_held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Db, Options, PartitionSpec};
    use bytes::Bytes;

    /// Tiny options with nothing moving data by itself: no background migration, no lazy
    /// moves, no idle flush.
    fn still_tiny() -> Options {
        Options {
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            ..Options::tiny()
        }
    }

    /// Writes 2,000 keys `k00000…` of 50-byte values, settles them in v1 (compacted, or
    /// only flushed) and retargets to a new `hash:4:1` layout, whose id it returns.
    /// The core lock, held as each worker holds it to pick (so the background workers
    /// wait), with migration's rate unlimited, and the view: v1 has one partition.
    fn picking_as_a_worker(db: &Db) -> (parking_lot::MutexGuard<'_, Core>, Arc<View>) {
        let core = db.inner.core.lock();
        db.set_migration_rate(1 << 40);
        let view = db.inner.view.load_full();
        assert_eq!(view.files.layouts[&1].parts.len(), 1, "test setup");
        (core, view)
    }

    /// A [`still_tiny`] database, filled and retargeted ([`fill_and_retarget`], compacted).
    fn still_tiny_draining() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), still_tiny()).unwrap();
        fill_and_retarget(&db, true);
        (dir, db)
    }

    fn fill_and_retarget(db: &Db, compact: bool) -> VersionId {
        settle_and_retarget(
            db,
            (0..2000u32).map(|i| format!("k{i:05}")),
            &[b'v'; 50],
            compact,
            PartitionSpec::hashed(4, 1),
        )
    }

    /// Writes `value` under each of `keys`, settles them in the current layout (compacted,
    /// or only flushed), then registers `spec` and makes it the target, whose id it returns.
    fn settle_and_retarget(
        db: &Db,
        keys: impl Iterator<Item = String>,
        value: &[u8],
        compact: bool,
        spec: PartitionSpec,
    ) -> VersionId {
        for k in keys {
            db.put(k, value).unwrap();
        }
        if compact {
            db.compact().unwrap();
        } else {
            db.flush().unwrap();
        }
        let v2 = db.register_partition_fn(spec).unwrap();
        db.set_target(v2).unwrap();
        v2
    }

    /// The pacer keeps the last windows' p99s, oldest first, the last one the window it
    /// reports, and no more than [`FOREGROUND_P99_HISTORY`] of them.
    #[test]
    fn the_pacer_keeps_the_last_windows_p99s() {
        let mut p = Pacer::new(1 << 20, 0);
        let n = FOREGROUND_P99_HISTORY as u64 + 10;
        for w in 1..=n {
            p.end_window(w * 10);
            let recent: Vec<u64> = p.recent_p99_us.iter().copied().collect();
            let kept = w.min(FOREGROUND_P99_HISTORY as u64);
            let want: Vec<u64> = (w + 1 - kept..=w).map(|x| x * 10).collect();
            assert_eq!(recent, want, "after window {w}");
            assert_eq!((p.windows, p.last_p99_us()), (w, w * 10));
        }
    }

    /// A close on another clone while `migrate_now` runs a job waits for it: the job
    /// writes table files, which must not appear once the directory lock is let go
    /// (another process may own the directory by then, and hand out the same names).
    /// Close used to join only the background threads.
    #[test]
    fn close_waits_for_a_running_migrate_now() {
        use crate::test_hooks::{set, Point};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), still_tiny()).unwrap();
        fill_and_retarget(&db, false);
        // What the close did first, seen from the picked job's hook (before the job runs):
        // "waiting" for the job, or "returned".
        let first = Arc::new(parking_lot::Mutex::new(None));
        let closer = Arc::new(parking_lot::Mutex::new(None));
        let (live, seen, joined) = (db.clone(), first.clone(), closer.clone());
        set(Point::MigrateNowPicked, move || {
            let (tx, rx) = std::sync::mpsc::channel();
            let (waiting, closing) = (tx.clone(), live.clone());
            *joined.lock() = Some(std::thread::spawn(move || {
                set(Point::CloseWaitsForJobs, move || {
                    let _ = waiting.send("waiting");
                });
                let r = closing.close();
                let _ = tx.send("returned");
                r
            }));
            *seen.lock() = Some(rx.recv().unwrap());
        });
        let r = db.migrate_now(None);
        assert_eq!(
            *first.lock(),
            Some("waiting"),
            "close returned while migrate_now still ran a job (it returned {r:?})"
        );
        // The picked job ran; the next pick found the database closing.
        assert!(matches!(r, Ok(_) | Err(crate::Error::Closed)), "{r:?}");
        let closed = closer.lock().take().unwrap().join().unwrap();
        closed.unwrap();
    }

    /// A `migrate_now` that passed its check for a close before the close began, and picks
    /// its job once the close returned, starts no job and says the database is closed. It
    /// used to run the job (counted too late for the close to wait for it) on a directory
    /// already let go, and fail with an I/O error reading its closed input.
    #[test]
    fn migrate_now_starts_no_job_once_a_close_passed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), still_tiny()).unwrap();
        fill_and_retarget(&db, false);
        let closer = db.clone();
        crate::test_hooks::set(crate::test_hooks::Point::MigrateNowBeforePick, move || {
            std::thread::spawn(move || closer.close())
                .join()
                .unwrap()
                .unwrap();
        });
        let r = db.migrate_now(None);
        assert!(matches!(r, Err(crate::Error::Closed)), "{r:?}");
    }

    /// A `migrate_now` job that panics (here a file system whose append panics, as
    /// `FaultKind::Panic` models) unwinds into the caller, who may catch it; the job's
    /// partitions must not stay booked as busy. They did: every later `migrate_now` waited
    /// for ever for a job that would never end, and no background job could pick those
    /// partitions again. Now writes stop, naming the panic (the job's state is unknown, as
    /// for a background job's), and the next `migrate_now` answers at once.
    #[test]
    fn a_panicking_migrate_now_job_does_not_leave_its_partitions_busy() {
        use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = Options {
            fs: Arc::new(fs.clone()),
            migration_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        fill_and_retarget(&db, false);
        fs.inject(Fault::on(FsOp::Append, FaultKind::Panic, ".sst", false));
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.migrate_now(None)));
        assert!(panicked.is_err() || panicked.as_ref().is_ok_and(|r| r.is_err()));
        assert_eq!(fs.injected(), 1, "test setup: the job's append panicked");
        fs.clear();
        let busy = db.inner.core.lock().busy.clone();
        assert!(busy.is_empty(), "partitions left busy: {busy:?}");
        let again = db.clone();
        let t = std::thread::spawn(move || again.migrate_now(None));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !t.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the next migrate_now never returned"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = t.join().unwrap();
        assert!(
            matches!(&r, Err(crate::Error::ReadOnly(why)) if why.contains("panicked")),
            "{r:?}"
        );
        db.close().unwrap();
        let db = Db::open(dir.path(), Options::tiny()).unwrap();
        for i in (0..2000u32).step_by(97) {
            let k = format!("k{i:05}");
            assert_eq!(db.get(&k).unwrap().as_deref(), Some(&[b'v'; 50][..]), "{k}");
        }
    }

    /// A layout that received migrated data holds it where `place_outputs` put it: an old
    /// version that overlapped the newer one already in the last level went above it. Once
    /// that layout drains in turn (v1 -> v2 -> v3, the biased-hash fix), its deepest level
    /// is not its oldest data: migrating deepest first carries the newer version out and
    /// leaves the older one behind, and `partition_entries` of the draining partition
    /// reported that superseded value as the key's live value (`get` was right). It now
    /// reports it moved to where the newer one is. (Found by a review.)
    #[test]
    fn a_migrated_old_version_above_a_newer_one_does_not_outlive_it_in_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let one = || PartitionSpec::Range { boundaries: vec![] };
        db.put("a", "a-old").unwrap();
        db.put("k", "old").unwrap();
        db.compact().unwrap();
        let v2 = db.register_partition_fn(one()).unwrap();
        db.set_target(v2).unwrap();
        db.put("k", "new").unwrap();
        db.compact().unwrap();
        // v2's partition compacts no more while the migrated data lands in it (the test
        // needs it as migration leaves it, not as a later compaction merges it).
        db.inner.core.lock().busy.insert((v2.0, 0));
        db.migrate_now(None).unwrap();
        {
            let view = db.inner.view.load();
            let part = &view.files.layouts[&v2.0].parts[0];
            let levels: Vec<usize> = part.data_files().map(|f| f.level as usize).collect();
            assert_eq!(levels.len(), 2, "test setup: {levels:?}");
            assert!(
                part.levels[MAX_LEVELS - 1].iter().all(|f| f.min_seqno == 3),
                "test setup: the newer version is in the last level"
            );
        }
        let v3 = db.register_partition_fn(one()).unwrap();
        db.set_target(v3).unwrap();
        db.inner.core.lock().busy.remove(&(v2.0, 0));
        // One file's worth of v2.
        migrate_one_file_and_find_k_moved(&db, v2, v3);
    }

    /// The same in L0: a lazy move's copy keeps its original (old) seqno, so a read that
    /// moved a key's old version just before the key was overwritten puts the old version
    /// in a newer L0 file (by max seqno) than the new one. When that layout drains, L0's
    /// "oldest" file (by max seqno) holds the newer version: it leaves first, and the
    /// draining partition reported the moved-in old value as the key's live value; now as
    /// moved.
    #[test]
    fn a_lazily_moved_old_version_in_a_newer_l0_file_does_not_outlive_the_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            move_on_first_read: true,
            move_bytes_per_sec: 1 << 30,
            idle_memtable_flush_after: None,
            wal_flush_interval: Duration::from_secs(3600),
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let one = || PartitionSpec::Range { boundaries: vec![] };
        db.put("a", "a-old").unwrap();
        db.put("k", "old").unwrap();
        db.compact().unwrap();
        let v2 = db.register_partition_fn(one()).unwrap();
        db.set_target(v2).unwrap();
        // The read queues a move of k's old version; the overwrite lands before it is applied.
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"old"[..]));
        db.put("0", "first").unwrap();
        db.put("k", "new").unwrap();
        // Flushed without applying the queued move first (as `Db::flush` does).
        let inner = &db.inner;
        inner.hold_flushes();
        inner.rotate(&mut inner.wal.lock()).unwrap();
        inner.flush_oldest().unwrap();
        inner.release_flushes();
        db.inner.apply_moves();
        db.put("z", "z").unwrap();
        db.flush().unwrap();
        {
            let view = db.inner.view.load();
            let l0 = &view.files.layouts[&v2.0].parts[0].levels[0];
            assert_eq!(l0.len(), 2, "test setup");
            let seqs: Vec<_> = l0.iter().map(|f| (f.min_seqno, f.max_seqno)).collect();
            assert!(
                l0[0].min_seqno < l0[1].min_seqno,
                "test setup: the copy is in the newer file: {seqs:?}"
            );
        }
        let v3 = db.register_partition_fn(one()).unwrap();
        db.set_target(v3).unwrap();
        // One file's worth: v2's first by key.
        migrate_one_file_and_find_k_moved(&db, v2, v3);
    }

    /// Migrates one file of v2 (the one holding `k`'s newer version), then checks that
    /// `k`'s old version (seqno 2) left behind in v2 is reported as moved to v3, where the
    /// newer one went, not as `k`'s live value.
    fn migrate_one_file_and_find_k_moved(db: &Db, v2: VersionId, v3: VersionId) {
        assert!(db.migrate_now(Some(1)).unwrap() > 0);
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"new"[..]));
        let k: Vec<crate::PartitionEntry> = db
            .partition_entries(v2, 0)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| &e.key()[..] == b"k")
            .collect();
        assert_eq!(
            k,
            vec![crate::PartitionEntry::Moved {
                key: Bytes::from_static(b"k"),
                seqno: 2,
                to: v3,
            }],
            "v2 reports a superseded value of k as live"
        );
    }

    /// With background migration off (`migration_bytes_per_sec: 0`, "lazy moves still
    /// move data"), every flush of lazily moved values adds a pointer file to each source
    /// partition, and only the pacer merged them: they piled up without bound (one more
    /// table, open file and filter per flush), while reads drained the layout.
    #[test]
    fn pointer_files_are_merged_while_background_migration_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            move_on_first_read: true,
            move_bytes_per_sec: 1 << 30,
            idle_memtable_flush_after: None,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        settle_and_retarget(
            &db,
            (0..100u32).map(|i| format!("k{i:03}")),
            &[b'v'; 50],
            true,
            PartitionSpec::Range { boundaries: vec![] },
        );
        let pointer_files = || {
            db.inner.view.load().files.layouts[&1].parts[0]
                .pointers
                .len()
        };
        let flushes = 4 * MAX_POINTER_FILES as u32;
        for i in 0..flushes {
            // A read moves a key; the flush writes its copy and a pointer file in v1.
            assert!(db.get(format!("k{i:03}")).unwrap().is_some());
            db.put(format!("new{i}"), "x").unwrap();
            db.flush().unwrap();
        }
        assert!(
            db.layout().versions.len() >= 2,
            "test setup: v1 still drains"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while pointer_files() > MAX_POINTER_FILES {
            assert!(
                Instant::now() < deadline,
                "{} pointer files in v1's partition after {flushes} flushes of moves, never \
                 merged",
                pointer_files()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `migrate_now` returns the input bytes it migrated, and stops once `max_bytes` are:
    /// a merge of a partition's pointer files (which it runs first, once they pile up)
    /// migrates nothing. It counted their bytes, so a small budget (a controller's
    /// canary) could end after the merge alone, reporting bytes migrated with no table
    /// moved.
    #[test]
    fn a_pointer_merge_is_not_counted_as_migrated_by_migrate_now() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            move_on_first_read: true,
            move_bytes_per_sec: 1 << 30,
            idle_memtable_flush_after: None,
            max_immutable_memtables: 2 * MAX_POINTER_FILES,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        settle_and_retarget(
            &db,
            (0..100u32).map(|i| format!("k{i:03}")),
            &[b'v'; 50],
            true,
            PartitionSpec::Range { boundaries: vec![] },
        );
        // One pointer file per flushed memtable of moves, all flushed once the hold keeps
        // the background workers from merging them.
        let inner = &db.inner;
        inner.hold_flushes();
        for i in 0..=MAX_POINTER_FILES as u32 {
            assert!(db.get(format!("k{i:03}")).unwrap().is_some());
            inner.apply_moves();
            inner.rotate(&mut inner.wal.lock()).unwrap();
        }
        db.hold_migration(true).unwrap();
        inner.release_flushes();
        db.flush().unwrap();
        let pointer_files = inner.view.load().files.layouts[&1].parts[0].pointers.len();
        assert!(
            pointer_files > MAX_POINTER_FILES,
            "test setup: {pointer_files}"
        );
        let before = db.migration_progress();
        let moved = db.migrate_now(Some(1)).unwrap();
        let after = db.migration_progress();
        assert!(
            after.bytes_left() < before.bytes_left(),
            "migrate_now(Some(1)) returned {moved} bytes migrated, and {} of {} bytes are \
             still left to migrate",
            after.bytes_left(),
            before.bytes_left()
        );
        assert_eq!(moved, before.bytes_left() - after.bytes_left());
    }

    /// The budget recovers by a tenth per second once latency and compaction debt are back
    /// to normal, however long the pacer went without looking (a worker busy with a long
    /// job, no migration for an hour): it recovered a tenth per look, and a migration that
    /// began an hour after the last one had been cut back started at 15% of its rate.
    #[test]
    fn the_budget_recovers_a_tenth_per_second_between_looks() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        settle_and_retarget(
            &db,
            (0..100u32).map(|i| format!("k{i:03}")),
            &[b'v'; 50],
            true,
            PartitionSpec::hashed(4, 1),
        );
        let inner = &db.inner;
        for (secs, want) in [(3u64, 0.35), (3600, 1.0)] {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            {
                let mut p = inner.pacer.lock();
                p.factor = 0.05;
                p.window_start = Instant::now() - Duration::from_secs(secs);
            }
            // Paused: the pacer looks (and adapts) but picks no migration job.
            let _ = inner
                .pick_migration(&mut core, &view)
                .map(|j| inner.release_job(&mut core, &j));
            let factor = inner.pacer.lock().factor;
            assert!(
                (factor - want).abs() < 0.01,
                "{secs} s after its last look at 5%, the budget is at {:.0}%, not {:.0}%",
                factor * 100.0,
                want * 100.0
            );
        }
    }

    /// While nothing drains, the debt a migration's last job left is paid off (the next
    /// migration does not start blocked on it) but nothing is banked beyond it.
    #[test]
    fn idle_time_pays_off_migration_debt_and_banks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 4 << 10;
        let opts = Options {
            migration_bytes_per_sec: rate,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let inner = &db.inner;
        let idle = |secs: u64, tokens: f64| {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            {
                let mut p = inner.pacer.lock();
                p.tokens = tokens;
                p.last_refill = Instant::now() - Duration::from_secs(secs);
            }
            assert!(inner.pick_migration(&mut core, &view).is_none());
            inner.pacer.lock().tokens
        };
        // Ten seconds at 4 KiB/s pay off 8 KiB of debt, and no more.
        assert_eq!(idle(10, -8192.0), 0.0);
        // One second pays off a quarter of 16 KiB.
        let left = idle(1, -16384.0);
        assert!((-12288.0..-11000.0).contains(&left), "{left}");
    }

    /// The pacer banks at most a second of its rate. It used to bank up to a whole file
    /// (32 MiB by default), and from the moment the database opened: a migration started
    /// after a long quiet spell moved that much at once, whatever its rate.
    #[test]
    fn a_migration_starts_with_at_most_a_second_of_banked_budget() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 4 << 10;
        let opts = Options {
            migration_bytes_per_sec: rate,
            target_file_bytes: 1 << 20,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        for i in 0..100u32 {
            db.put(format!("k{i:03}"), [b'v'; 50]).unwrap();
        }
        db.flush().unwrap();
        // As if the database had been open for an hour with nothing to migrate.
        db.inner.pacer.lock().last_refill = Instant::now() - Duration::from_secs(3600);
        let v2 = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 1,
                hashed_prefix: None,
            })
            .unwrap();
        db.set_target(v2).unwrap();
        // A background worker may pick first; either way the budget was refilled once.
        let inner = &db.inner;
        {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            if let Some(job) = inner.pick_migration(&mut core, &view) {
                inner.release_job(&mut core, &job);
            }
        }
        let tokens = inner.pacer.lock().tokens;
        assert!(tokens <= rate as f64, "{tokens} bytes of budget banked");
    }

    /// A hold stops background migration and lazy moves whatever the rate, and outlives the
    /// process: after a power cut, an open whose options migrate at full speed is still
    /// held. Released, migration goes on, and the next manifest carries no hold record (so
    /// a database never held stays readable by a build from before the record).
    #[test]
    fn a_migration_hold_outlives_a_power_cut_until_released() {
        use crate::fs::FaultFs;
        use crate::manifest::EditRecord;
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = |rate: u64| Options {
            fs: Arc::new(fs.clone()),
            migration_bytes_per_sec: rate,
            move_on_first_read: true,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts(0)).unwrap();
        for i in 0..500u32 {
            db.put(format!("k{i:03}"), [b'v'; 50]).unwrap();
        }
        db.flush().unwrap();
        db.hold_migration(true).unwrap();
        let v2 = db
            .register_partition_fn(PartitionSpec::hashed(4, 1))
            .unwrap();
        db.set_target(v2).unwrap();
        fs.power_cut(db).unwrap();

        let db = Db::open(dir.path(), opts(1 << 30)).unwrap();
        let p = db.migration_progress();
        assert!(p.held, "the hold did not outlive the power cut: {p:?}");
        assert!(p.blocked.as_deref().is_some_and(|b| b.starts_with("held")));
        let inner = &db.inner;
        {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            assert!(
                inner.pick_migration(&mut core, &view).is_none(),
                "the pacer picked a migration while held"
            );
        }
        assert!(db.get("k100").unwrap().is_some());
        inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 0, "moved lazily while held");
        assert!(db.migration_progress().bytes_left() > 0);

        db.hold_migration(false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.migration_progress().bytes_left() > 0 {
            assert!(Instant::now() < deadline, "no migration once released");
            std::thread::sleep(Duration::from_millis(10));
        }
        db.close().unwrap();
        let db = Db::open(dir.path(), opts(0)).unwrap();
        assert!(!db.migration_progress().held);
        let (m, _) = crate::inspect::read_manifest_safely(dir.path()).unwrap();
        assert!(
            !m.edits
                .iter()
                .flat_map(|(_, e)| &e.records)
                .any(|r| matches!(r, EditRecord::MigrationHold(_))),
            "a released hold is still in the manifest written at open"
        );
        for i in 0..500u32 {
            assert!(db.get(format!("k{i:03}")).unwrap().is_some(), "k{i:03}");
        }
    }

    /// A migration job whose install fails (here a directory sync that could not open the
    /// directory, which stops nothing) migrated nothing: its files are still there and the
    /// next job takes them again. The progress figures counted them as migrated at once,
    /// before the install, so the retry counted them twice.
    #[test]
    fn a_job_whose_install_failed_is_not_counted_as_migrated() {
        use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = Options {
            fs: Arc::new(fs.clone()),
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        fill_and_retarget(&db, true);
        let before = db.migration_progress();
        let (files, bytes) = (before.files_left(), before.bytes_left());
        assert!(files > 0, "test setup");
        fs.inject(Fault::on(FsOp::SyncDir, FaultKind::TooManyFiles, "", false));
        assert!(
            db.migrate_now(Some(1)).is_err(),
            "test setup: the install fails"
        );
        assert_eq!(db.migration_progress().files_left(), files, "test setup");
        fs.clear();
        db.migrate_now(Some(1)).unwrap();
        let p = db.migration_progress();
        assert!(p.files_left() > 0, "test setup: v1 still drains");
        let d = &p.draining[0];
        assert_eq!(
            (d.files_migrated, d.bytes_migrated),
            ((files - p.files_left()) as u64, bytes - p.bytes_left()),
            "files and bytes reported migrated out of v1"
        );
        assert_eq!(
            db.inner.pacer.lock().migrated_total,
            db.stats().migration_bytes_read,
            "bytes the pacer's pace counts"
        );
    }

    /// A job installed while the progress is read is counted either as left or as
    /// migrated, never as both. The files left were read from a view loaded before the
    /// core lock, under which a job installs and books its figures: a job installed in
    /// between was counted in both (the files and bytes left and migrated added up to more
    /// than the version ever held).
    #[test]
    fn progress_counts_a_job_installed_meanwhile_once() {
        let (_dir, db) = still_tiny_draining();
        let before = db.migration_progress();
        let (files, bytes) = (before.files_left(), before.bytes_left());
        assert!(files > 1, "test setup");
        let inner = db.inner.clone();
        crate::test_hooks::set(crate::test_hooks::Point::ProgressBeforeCore, move || {
            assert!(inner.migrate_now(Some(1)).unwrap() > 0, "test setup");
        });
        let p = db.migration_progress();
        let d = &p.draining[0];
        assert_eq!(
            (
                d.files_left + d.files_migrated as usize,
                d.bytes_left + d.bytes_migrated
            ),
            (files, bytes),
            "files and bytes left plus migrated: {p:?}"
        );
    }

    /// While the target's L0 is near its slowdown trigger the workers do not ask the pacer
    /// for a job at all; the progress said nothing held migration back (or gave the reason
    /// from before, "paused" here) while nothing migrated.
    #[test]
    fn progress_names_l0_pressure_as_what_holds_migration_back() {
        let opts = still_tiny();
        let (_dir, db) = still_tiny_draining();
        let files = db.migration_progress().files_left();
        // As if flushes had piled up in the target's L0 (nothing changes the file set
        // from here on, which would measure it again).
        db.inner
            .l0_max
            .store(opts.level0_slowdown_trigger, Ordering::Relaxed);
        db.set_migration_rate(1 << 40);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = db.migration_progress();
            assert_eq!(p.files_left(), files, "test setup: nothing migrates");
            if p.blocked.as_deref().is_some_and(|b| b.contains("L0")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nothing migrates, and the progress says why: {:?}",
                p.blocked
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// L0 pressure that is gone no longer holds migration back. A worker that found L0 at
    /// its slowdown trigger noted it as the reason; once L0 was back to normal, a worker
    /// that looked while every draining file left was in a running job's hands changed
    /// nothing, and the progress went on naming L0 pressure (long gone) while migration
    /// ran, until the job ended.
    #[test]
    fn l0_pressure_is_no_reason_once_it_is_gone() {
        let opts = still_tiny();
        let (_dir, db) = still_tiny_draining();
        let inner = &db.inner;
        let (mut core, view) = picking_as_a_worker(&db);
        // One worker picks a job: v1's one partition is busy with it.
        let job = inner.pick_migration(&mut core, &view).expect("a job");
        // Another finds L0 at its slowdown trigger.
        inner
            .l0_max
            .store(opts.level0_slowdown_trigger, Ordering::Relaxed);
        inner.note_l0_holds_migration(&core, &view);
        let noted = inner.pacer.lock().blocked.clone();
        assert!(noted.is_some_and(|b| b.contains("L0")), "test setup");
        // L0 is back to normal; a worker looks for migration work while the job runs.
        inner.l0_max.store(0, Ordering::Relaxed);
        assert!(inner.pick_migration(&mut core, &view).is_none());
        let blocked = inner.pacer.lock().blocked.clone();
        inner.release_job(&mut core, &job);
        drop(core);
        assert!(
            !blocked.as_deref().is_some_and(|b| b.contains("L0")),
            "L0 at 0 files, and the reason given is {blocked:?}"
        );
    }

    /// A flush writing lazily moved copies keeps migration jobs out of the copies' source
    /// partitions until it installs; with nothing else to pick, that is what the progress
    /// names. It said nothing held migration back.
    #[test]
    fn progress_names_a_flush_of_moved_copies_as_what_holds_migration_back() {
        let (_dir, db) = still_tiny_draining();
        let inner = &db.inner;
        let (mut core, view) = picking_as_a_worker(&db);
        // What a flush of copies moved out of v1's one partition marks while it writes.
        core.flush_sources.insert((1, 0));
        assert!(inner.pick_migration(&mut core, &view).is_none());
        let blocked = inner.pacer.lock().blocked.clone();
        core.flush_sources.clear();
        let job = inner
            .pick_migration(&mut core, &view)
            .expect("a job once it installed");
        inner.release_job(&mut core, &job);
        drop(core);
        assert_eq!(blocked.as_deref(), Some(FLUSHING_MOVES));
    }

    /// The pace is what migrated over the last minute, up to the moment it is read. It was
    /// computed from the samples the pacer takes when it looks for work, which it does not
    /// while nothing drains (nor while L0 is near its slowdown point): the last migration's
    /// pace was reported long after it ended, as if data still moved.
    #[test]
    fn the_pace_counts_the_last_minute_up_to_now() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        settle_and_retarget(
            &db,
            (0..500u32).map(|i| format!("k{i:04}")),
            &[b'v'; 40],
            true,
            PartitionSpec::hashed(4, 1),
        );
        let moved = db.migrate_now(None).unwrap();
        assert!(moved > 0 && db.migration_progress().draining.is_empty());
        let inner = &db.inner;
        {
            // As if the pacer had sampled the migration as it ran, ten minutes ago.
            let mut p = inner.pacer.lock();
            let (now, total) = (Instant::now(), p.migrated_total);
            p.history.clear();
            for (ago, total) in [(620, total - moved), (600, total)] {
                p.history.push_back(PaceSample {
                    at: now - Duration::from_secs(ago),
                    total,
                    by_version: BTreeMap::new(),
                });
            }
        }
        // A worker looks for migration work, finds none.
        {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            assert!(inner.pick_migration(&mut core, &view).is_none());
        }
        let p = db.migration_progress();
        assert_eq!(
            p.pace_bytes_per_sec, 0.0,
            "nothing migrated in the last minute: {p:?}"
        );
    }

    /// A job that installs while the pacer has not looked for over a minute (both workers
    /// in long jobs, say) counts in the pace. The pace started from the oldest sample of
    /// the last minute, and the pacer takes its samples only when it looks: with none that
    /// recent, it read 0 as the job's bytes moved.
    #[test]
    fn a_job_installed_while_the_pacer_did_not_look_counts_in_the_pace() {
        let (_dir, db) = still_tiny_draining();
        let inner = &db.inner;
        let before = {
            // The pacer last looked 70 s ago (and 90 s ago before that).
            let mut p = inner.pacer.lock();
            let (now, total) = (Instant::now(), p.migrated_total);
            let by_version = p.migrated_by_version.clone();
            p.history.clear();
            for ago in [90, 70] {
                p.history.push_back(PaceSample {
                    at: now - Duration::from_secs(ago),
                    total,
                    by_version: by_version.clone(),
                });
            }
            total
        };
        db.migrate_now(Some(1)).unwrap();
        let moved = inner.pacer.lock().migrated_total - before;
        let p = db.migration_progress();
        assert!(moved > 0 && p.bytes_left() > 0, "test setup: {p:?}");
        // Its bytes over the last minute.
        let want = moved as f64 / PACE_WINDOW.as_secs_f64();
        assert!(
            (p.pace_bytes_per_sec - want).abs() <= want * 1e-9,
            "{moved} bytes migrated in the last minute, pace {}: {p:?}",
            p.pace_bytes_per_sec
        );
        let d = &p.draining[0];
        let eta = d.eta_secs.expect("an ETA at its own pace");
        let at_pace = d.bytes_left as f64 / want;
        assert!((eta - at_pace).abs() <= at_pace * 1e-9, "ETA {eta}: {p:?}");
    }

    /// A new migration starts with a fresh pacing window. The pacer takes the foreground
    /// latencies only when it looks for work, which it does not while nothing drains: the
    /// first window of the next migration judged the last slow operations of the one
    /// before it (or anything before the migration started), and cut the budget for them.
    #[test]
    fn a_new_migration_starts_with_a_fresh_pacing_window() {
        let (_dir, db) = still_tiny_draining();
        db.migrate_now(None).unwrap();
        assert!(db.migration_progress().draining.is_empty(), "test setup");
        let inner = &db.inner;
        let target_us = 50_000;
        db.set_migration_latency_target(target_us);
        // The last operations of the migration were slow, and it ended 20 s ago with its
        // budget halved.
        for _ in 0..100 {
            inner.fg_latency.record(Duration::from_millis(200));
        }
        {
            let mut p = inner.pacer.lock();
            p.window_start = Instant::now() - Duration::from_secs(20);
            p.factor = 0.5;
        }
        let before = db.migration_progress().foreground_p99_window;
        let v3 = db
            .register_partition_fn(PartitionSpec::hashed(3, 7))
            .unwrap();
        db.set_target(v3).unwrap();
        // A second without foreground operations passes; a worker looks for work.
        inner.pacer.lock().window_start -= Duration::from_secs(1);
        {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            assert!(inner.pick_migration(&mut core, &view).is_none(), "paused");
        }
        let p = db.migration_progress();
        assert!(
            p.foreground_p99_window > before && !p.draining.is_empty(),
            "test setup: {p:?}"
        );
        assert!(
            p.foreground_p99_us < target_us,
            "the new migration's first window: {p:?}"
        );
        assert_eq!(inner.pacer.lock().factor, 1.0, "no slow window: {p:?}");
    }

    /// A retarget mid-migration keeps the pacing window running: its latencies are this
    /// migration's (the layouts draining go on draining), and the window ends as it would
    /// have. A change of target used to drop them and restart the window, so slow
    /// operations under a migration cut no budget and counted in no window of the p99
    /// trigger, if a retarget (or a rollback) came before the pacer next looked.
    #[test]
    fn a_retarget_mid_migration_keeps_the_window_s_latencies() {
        let (_dir, db) = still_tiny_draining();
        let inner = &db.inner;
        let target_us = 50_000;
        db.set_migration_latency_target(target_us);
        let v3 = db
            .register_partition_fn(PartitionSpec::hashed(3, 7))
            .unwrap();
        let slow = db.clone();
        crate::test_hooks::set(crate::test_hooks::Point::RetargetBeforeSwap, move || {
            // Under the core lock (no worker's pacer looks meanwhile): over a second of
            // slow operations under the migration, the pacer yet to look.
            for _ in 0..100 {
                slow.inner.fg_latency.record(Duration::from_millis(200));
            }
            slow.inner.pacer.lock().window_start -= Duration::from_secs(2);
        });
        db.set_target(v3).unwrap();
        {
            // A worker may have looked since; if not, this ends the window.
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            assert!(inner.pick_migration(&mut core, &view).is_none(), "paused");
        }
        let p = db.migration_progress();
        assert_eq!(p.draining.len(), 2, "test setup: {p:?}");
        assert!(
            p.foreground_p99_recent_us.iter().any(|&us| us > target_us),
            "the slow window: {p:?}"
        );
        assert!(inner.pacer.lock().factor < 1.0, "no cut: {p:?}");
    }

    /// Each draining version's ETA is at its own pace. Two versions drain at once (the
    /// ledger's range v1 and biased hash v2 into v3), but not alike: migration takes files
    /// by key across both, a version can fail its jobs, and each is done only when its
    /// own bytes have moved. At the pace of both together, a version none of whose bytes
    /// moved in the last minute was given an ETA as if all of them were its own.
    #[test]
    fn each_draining_version_has_an_eta_at_its_own_pace() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            partition: PartitionSpec::Range {
                boundaries: vec![b"k0250".to_vec()],
            },
            migration_bytes_per_sec: 0,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        settle_and_retarget(
            &db,
            (0..500u32).map(|i| format!("k{i:04}")),
            &[b'v'; 40],
            true,
            PartitionSpec::hashed(4, 1),
        );
        db.migrate_now(Some(1)).unwrap();
        // More than one job's worth in v2 too.
        for i in 0..2000u32 {
            db.put(format!("n{i:04}"), [b'w'; 40]).unwrap();
        }
        db.compact().unwrap();
        let v3 = db
            .register_partition_fn(PartitionSpec::hashed(3, 7))
            .unwrap();
        db.set_target(v3).unwrap();
        assert_eq!(db.migration_progress().draining.len(), 2, "test setup");
        // The pacer sampled the totals five seconds ago; one job has run since.
        {
            let mut p = db.inner.pacer.lock();
            let now = Instant::now();
            p.history.clear();
            let sample = PaceSample {
                at: now - Duration::from_secs(5),
                total: p.migrated_total,
                by_version: p.migrated_by_version.clone(),
            };
            p.history.push_back(sample);
        }
        let before = db.migration_progress();
        db.migrate_now(Some(1)).unwrap();
        let p = db.migration_progress();
        assert_eq!(p.draining.len(), 2, "test setup: {p:?}");
        let moved: Vec<u64> = p
            .draining
            .iter()
            .zip(&before.draining)
            .map(|(d, b)| d.bytes_migrated - b.bytes_migrated)
            .collect();
        assert_eq!(
            moved.iter().filter(|&&m| m > 0).count(),
            1,
            "test setup: one job, of one version: {p:?}"
        );
        for (d, m) in p.draining.iter().zip(moved) {
            match m {
                0 => assert_eq!(d.eta_secs, None, "v{} moved nothing: {p:?}", d.version.0),
                m => {
                    // Its bytes left at its bytes per second (over 5 s or more).
                    let eta = d.eta_secs.expect("an ETA");
                    let at_5s = d.bytes_left as f64 / (m as f64 / 5.0);
                    assert!(
                        eta.is_finite() && eta >= at_5s,
                        "v{}: ETA {eta}, {at_5s} at 5 s: {p:?}",
                        d.version.0
                    );
                }
            }
        }
    }

    /// Once nothing drains, nothing holds migration back: the pacer's last reason (here
    /// "pacing", its budget spent) was reported as why migration was not running long
    /// after it had finished (and `sluice migrate run` printed it under the completed
    /// migration).
    #[test]
    fn no_reason_is_reported_for_not_migrating_once_nothing_drains() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 1,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        settle_and_retarget(
            &db,
            (0..500u32).map(|i| format!("k{i:04}")),
            &[b'v'; 40],
            true,
            PartitionSpec::hashed(4, 1),
        );
        let inner = &db.inner;
        // Looks for migration work as a worker does (a job picked is let go again, its
        // budget spent).
        let look = || {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            if let Some(job) = inner.pick_migration(&mut core, &view) {
                inner.release_job(&mut core, &job);
            }
        };
        look();
        look();
        let p = db.migration_progress();
        assert_eq!(p.blocked.as_deref(), Some("pacing"), "test setup: {p:?}");
        db.migrate_now(None).unwrap();
        look();
        let p = db.migration_progress();
        assert!(p.draining.is_empty(), "test setup: {p:?}");
        assert_eq!(p.blocked, None, "nothing left to migrate: {p:?}");
    }

    /// While data movement is held (a paused migration), nothing moves however fast it
    /// moved in the last minute: no version has an ETA. One was still given, counting down
    /// a finish that could not come until the hold was released.
    #[test]
    fn no_eta_while_migration_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        settle_and_retarget(
            &db,
            (0..2000u32).map(|i| format!("k{i:04}")),
            &[b'v'; 40],
            true,
            PartitionSpec::hashed(4, 1),
        );
        {
            // The pacer sampled the totals five seconds ago.
            let mut p = db.inner.pacer.lock();
            let sample = PaceSample {
                at: Instant::now() - Duration::from_secs(5),
                total: p.migrated_total,
                by_version: p.migrated_by_version.clone(),
            };
            p.history.push_back(sample);
        }
        db.migrate_now(Some(1)).unwrap();
        let p = db.migration_progress();
        assert!(
            p.draining[0].eta_secs.is_some() && p.draining[0].bytes_left > 0,
            "test setup: {p:?}"
        );
        db.hold_migration(true).unwrap();
        let p = db.migration_progress();
        assert_eq!(p.draining[0].eta_secs, None, "held: {p:?}");
        db.hold_migration(false).unwrap();
        assert!(db.migration_progress().draining[0].eta_secs.is_some());
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let h = LatencyHistogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p99 = h.take_quantile(0.99).unwrap();
        assert!((900..=1100).contains(&p99), "{p99}");
        assert_eq!(h.take_quantile(0.99), None, "taking resets");
        for i in 0..2000 {
            let v = LatencyHistogram::value(i.min(319));
            assert!(LatencyHistogram::index(v) <= i.min(319) + 1);
        }
    }

    /// A rollback at the worst instant: while a migration job is about to install its
    /// outputs into v2, the target goes back to v1, and deletes, overwrites and lazy moves
    /// (back into v1) run and flush. Every key, a full scan and an older snapshot stay
    /// right after the install, after draining back, after compactions and a reopen.
    #[test]
    fn a_rollback_while_a_migration_job_installs_loses_and_resurrects_nothing() {
        use crate::test_hooks::{set, Point};
        use crate::VersionId;
        use std::collections::BTreeMap;
        type M = BTreeMap<Vec<u8>, Vec<u8>>;
        // A whole scan, against the model.
        let scans_as = |it: crate::DbIter, m: &M| {
            let all: M = it
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<crate::Result<_>>()
                .unwrap();
            all == *m
        };
        let check = |db: &Db, m: &M, what: &str| {
            assert!(scans_as(db.range(..), m), "{what}: scan differs");
            for (k, v) in m {
                assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]), "{what}: get");
            }
            for i in 0..600u32 {
                let k = format!("k{i:04}").into_bytes();
                if !m.contains_key(&k) {
                    assert_eq!(db.get(&k).unwrap(), None, "{what}: resurrected {i}");
                }
            }
        };
        let check_snap = |s: &crate::Snapshot, m: &M, what: &str| {
            assert!(scans_as(s.range(..), m), "{what}: snapshot scan differs");
        };
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            partition: PartitionSpec::Range {
                boundaries: vec![b"k0200".to_vec(), b"k0400".to_vec()],
            },
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 1 << 30,
            move_on_first_read: true,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        let mut m = M::new();
        let key = |i: u32| format!("k{i:04}").into_bytes();
        for i in 0..600u32 {
            db.put(key(i), format!("a{i}")).unwrap();
            m.insert(key(i), format!("a{i}").into_bytes());
        }
        db.compact().unwrap();
        for i in (0..600u32).step_by(3) {
            db.delete(key(i)).unwrap();
            m.remove(&key(i));
        }
        for i in (1..600u32).step_by(3) {
            db.put(key(i), format!("b{i}")).unwrap();
            m.insert(key(i), format!("b{i}").into_bytes());
        }
        db.flush().unwrap();
        let snap = db.snapshot();
        let snap_m = m.clone();
        let v2 = db
            .register_partition_fn(PartitionSpec::hashed(4, 1))
            .unwrap();
        db.set_target(v2).unwrap();
        for i in (2..600u32).step_by(7) {
            db.get(key(i)).unwrap();
        }
        db.inner.apply_moves();
        db.flush().unwrap();
        check(&db, &m, "after the switch");
        let d2 = db.clone();
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = fired.clone();
        set(Point::CompactionBeforeInstall, move || {
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            d2.set_target(VersionId(1)).unwrap();
            for i in (0..600u32).step_by(5) {
                d2.delete(format!("k{i:04}")).unwrap();
            }
            for i in (4..600u32).step_by(10) {
                d2.put(format!("k{i:04}"), format!("c{i}")).unwrap();
            }
            d2.flush().unwrap();
            for i in (2..600u32).step_by(3) {
                d2.get(format!("k{i:04}")).unwrap();
            }
            d2.inner.apply_moves();
            d2.flush().unwrap();
        });
        db.migrate_now(Some(1)).unwrap();
        assert!(
            fired.load(std::sync::atomic::Ordering::SeqCst),
            "hook did not fire"
        );
        assert_eq!(db.layout().target, VersionId(1));
        for i in (0..600u32).step_by(5) {
            m.remove(&key(i));
        }
        for i in (4..600u32).step_by(10) {
            m.insert(key(i), format!("c{i}").into_bytes());
        }
        check(&db, &m, "after the job installed");
        check_snap(&snap, &snap_m, "after the job installed");
        db.migrate_now(None).unwrap();
        check(&db, &m, "drained back");
        check_snap(&snap, &snap_m, "drained back");
        db.compact().unwrap();
        check(&db, &m, "compacted");
        check_snap(&snap, &snap_m, "compacted");
        drop(snap);
        db.compact().unwrap();
        check(&db, &m, "compacted without the snapshot");
        db.close().unwrap();
        let db = Db::open(dir.path(), opts).unwrap();
        check(&db, &m, "reopened");
    }
}
