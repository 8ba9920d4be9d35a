//! The database handle and the state shared by its foreground and background threads.
//!
//! Concurrency map:
//! - `view` (lock-free swap): the memtables and file set readers use. Swapped only under
//!   `core`, so every swap sees the previous one.
//! - `wal` (mutex): the WAL and seqno allocation; held by the commit leader, and by memtable
//!   rotation. Lock order is `wal` before `core`.
//! - `core` (mutex): manifest, file numbers, layout registry, background bookkeeping.
//! - `queue` (mutex): writers waiting for group commit.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::batch::WriteBatch;
use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::fs::{DirLock, Fs};
use crate::iter::{build_sources, DbIter, Direction, KeyRange};
use crate::layout::{PartitionFn, PartitionSpec};
use crate::log::LogWriter;
use crate::manifest::{EditRecord, ManifestWriter, VersionEdit};
use crate::memtable::MemTable;
use crate::options::{Options, WriteOptions};
use crate::snapshot::Snapshot;
use crate::sst::TableOptions;
use crate::stats::{Counters, LevelStats, PartitionStats, Stats};
use crate::version::FileSet;
use crate::write::Writer;

/// Identifies a registered partition function (a layout version): v1, v2, …
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionId(pub u32);

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// One partition of a live layout version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub index: u32,
    pub files: usize,
    pub bytes: u64,
    pub entries: u64,
    pub pointer_files: usize,
}

/// One live layout version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub id: VersionId,
    pub spec: PartitionSpec,
    pub fingerprint: u64,
    pub is_target: bool,
    /// Kept live even once drained ([`Db::pin_version`]): a rollback target, or a
    /// migration controller's candidate.
    pub pinned: bool,
    pub partitions: Vec<PartitionInfo>,
}

impl VersionInfo {
    pub fn files(&self) -> usize {
        self.partitions.iter().map(|p| p.files).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.bytes).sum()
    }
}

/// The layout versions of a database, from [`Db::layout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutInfo {
    pub target: VersionId,
    pub versions: Vec<VersionInfo>,
    pub retired: Vec<VersionId>,
}

/// What recovery found when the database was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub wal_files: usize,
    pub wal_batches: u64,
    pub wal_entries: u64,
    /// A torn tail dropped from the last WAL: (file, offset, bytes dropped).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// With [`crate::WalRecovery::PointInTime`]: WAL bytes dropped from the first damaged
    /// record on, intact records after it and later WALs included (0 when nothing intact
    /// followed the damage).
    pub wal_dropped_after_damage: u64,
    /// With [`crate::WalRecovery::PointInTime`]: a WAL that the chain of WALs names but the
    /// directory lacks (recovery stopped before it), and who names it.
    pub wal_missing: Option<String>,
    /// A WAL rotated away from that a crash cut short before its background fsync, with
    /// records in later WALs (which then held only unsynced writes, and are dropped so that
    /// what survives has no hole): (file, offset where its intact records end, WAL bytes
    /// dropped from there on, later WALs included).
    pub wal_cut_short: Option<(PathBuf, u64, u64)>,
    /// With [`crate::WalRecovery::PointInTime`]: an older WAL known durable whole that did
    /// not end in the record naming its successor (cut at a record boundary, so writes at
    /// its end may be lost): (file, offset where it ends). Replay stopped there, and the
    /// later WALs' bytes are in `wal_dropped_after_damage`.
    pub wal_unended: Option<(PathBuf, u64)>,
    pub manifest_torn_tail: Option<(PathBuf, u64)>,
    pub orphans_removed: usize,
}

/// What readers see: the memtables and the file set, swapped as one.
pub(crate) struct View {
    pub mem: Arc<MemTable>,
    /// Frozen memtables, newest first.
    pub imm: Vec<Arc<MemTable>>,
    pub files: Arc<FileSet>,
}

impl View {
    pub fn memtables(&self) -> Vec<Arc<MemTable>> {
        let mut v = Vec::with_capacity(1 + self.imm.len());
        v.push(self.mem.clone());
        v.extend(self.imm.iter().cloned());
        v
    }
}

pub(crate) struct WalState {
    pub log: LogWriter,
    pub number: u64,
    /// Highest seqno allocated.
    pub last_seqno: u64,
    pub last_flush: Instant,
    /// Whether this WAL holds the record that every earlier WAL is durable, or needs none
    /// (it follows no live WAL): see [`WalState::sync`].
    pub earlier_noted: bool,
}

/// A live registered partition function.
#[derive(Clone)]
pub(crate) struct Registered {
    pub func: Arc<PartitionFn>,
    pub was_target: bool,
}

/// The layout versions a database has registered: the live ones, with their functions.
/// Every other id below `next` was registered and has retired, and keeps nothing (not even
/// its function), so registering and retiring layouts for ever grows neither memory nor
/// the manifest.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    pub live: BTreeMap<u32, Registered>,
    /// One past the highest id ever registered: the next one.
    pub next: u32,
}

impl Registry {
    pub fn get(&self, id: u32) -> Option<&Registered> {
        self.live.get(&id)
    }

    /// Whether `id` was registered and has retired.
    pub fn is_retired(&self, id: u32) -> bool {
        id != 0 && id < self.next && !self.live.contains_key(&id)
    }

    /// The retired ids, in order.
    pub fn retired(&self) -> impl Iterator<Item = u32> + '_ {
        (1..self.next).filter(|id| !self.live.contains_key(id))
    }

    /// Live layout `id`, or the error for an id that is not live.
    pub fn live_one(&self, id: u32) -> Result<&Registered> {
        match self.get(id) {
            Some(r) => Ok(r),
            None if self.is_retired(id) => Err(Error::VersionRetired(id)),
            None => Err(Error::UnknownVersion(id)),
        }
    }

    /// Registers `id`, which must be above every id registered before.
    pub fn register(&mut self, id: u32, r: Registered) {
        debug_assert!(id >= self.next.max(1));
        self.live.insert(id, r);
        self.next = id.saturating_add(1);
    }

    /// Raises `next` to at least `n`: every id below it not live has retired.
    pub fn retired_below(&mut self, n: u32) {
        self.next = self.next.max(n);
    }
}

pub(crate) struct Core {
    pub manifest: ManifestWriter,
    pub next_file: u64,
    /// WAL files below this number are fully flushed.
    pub log_number: u64,
    /// Highest seqno known to be in SSTables.
    pub flushed_seqno: u64,
    pub registry: Registry,
    /// Partitions (version, partition) with a compaction in flight.
    pub busy: HashSet<(u32, u32)>,
    /// Input files (by number) of the migration jobs running: values they are carrying
    /// into the target, which a flush must not write there a second time as lazily moved
    /// copies (see `Inner::write_memtable`).
    pub migrating: HashSet<u64>,
    /// Draining partitions (version, partition) that the running flush writes moved copies
    /// out of: no migration job is picked there until its tables are installed. (One picked
    /// meanwhile would know neither the copies nor their pointers, and carry the values into
    /// the target again.)
    pub flush_sources: HashSet<(u32, u32)>,
    /// Draining partitions that migration picks wait for, by picker, closed to lazy moves
    /// meanwhile.
    pub migration_awaits: crate::awaits::Awaits,
    /// The file set in which the last compaction pick found nothing to do, and the
    /// process's count of spent seek allowances then: until either changes (or a job
    /// ends, freeing its partitions), the next pick would find nothing either, and is
    /// skipped (see [`Inner::pick_compaction`]). A `Weak` keeps the set's allocation, so
    /// another set cannot take its address.
    pub nothing_to_compact: Option<(std::sync::Weak<crate::version::FileSet>, u64)>,
    /// Picks that scored the partitions (those the memo above did not skip).
    pub picks_scored: u64,
    pub flushing: bool,
    /// In-flight jobs writing outputs into each layout version (blocks its retirement).
    pub writing_to: HashMap<u32, usize>,
    pub controller: Option<(u64, Vec<u8>)>,
    /// Round-robin compaction cursor per (version, partition, level).
    pub compact_cursor: HashMap<(u32, u32, usize), Bytes>,
    /// Jobs running right now.
    pub running: usize,
    /// Manual compactions waiting to run (layout version, partition, the request that
    /// queued it), and how many are in flight.
    pub manual: VecDeque<(u32, u32, u64)>,
    pub manual_running: usize,
    /// The manual compaction requests (`Db::compact` calls) still waited for, by id: each
    /// caller's own count of jobs left and first error, so that concurrent callers do not
    /// take one another's errors.
    pub manual_requests: HashMap<u64, crate::compaction::ManualRequest>,
    pub next_manual_request: u64,
    /// Automatic compaction failures in a row, per partition (a job's layout version and
    /// partition): they back off its retries (e.g. while the disk is full), and a writer
    /// stopped for compaction is refused once a partition has failed a few in a row. Only
    /// a success of the same partition clears its count: migration jobs that succeed
    /// elsewhere must not hide a compaction that keeps failing.
    pub compaction_failures: HashMap<(u32, u32), u32>,
    /// Failed attempts at the oldest frozen memtable's flush (see `Options::flush_retries`).
    pub flush_failures: u32,
    pub next_job_id: u64,
    /// Background migration jobs running (the pacer's, not `migrate_now`'s).
    pub migrations_running: usize,
    /// `migrate_now` jobs and checkpoints running on callers' threads (see
    /// [`ForegroundJob`]): close waits for them, since they write files (which must not
    /// appear once the directory is let go, nor be linked from it once another open may
    /// have deleted them).
    pub foreground_jobs: usize,
    /// Output ranges of running compactions (see `compaction::place_outputs`).
    pub reserved: Vec<crate::compaction::Reservation>,
    /// Disk space running migration jobs may still write, by job id (see
    /// `Inner::headroom_refusal`).
    pub migration_space: HashMap<u64, u64>,
    /// Migration figures per draining layout version since open.
    pub migration: HashMap<u32, crate::migration::VersionCounters>,
    /// Layouts kept live even when drained empty (rollback targets).
    pub pinned: std::collections::BTreeSet<u32>,
    /// Background migration and lazy moves held ([`Db::hold_migration`]; persisted).
    pub migration_held: bool,
}

impl Core {
    pub fn new_file_number(&mut self) -> u64 {
        let n = self.next_file;
        self.next_file += 1;
        n
    }
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub opts: Options,
    pub fs: Arc<dyn Fs>,
    pub cache: Arc<BlockCache>,
    /// The tables' file descriptors, at most `max_open_files` of them.
    pub table_files: Arc<crate::sst::files::TableFiles>,
    pub table_opts: TableOptions,
    pub view: ArcSwap<View>,
    /// Highest seqno whose batch is completely in the memtable: the latest snapshot.
    pub visible: AtomicU64,
    pub core: Mutex<Core>,
    /// Wakes background workers (paired with `core`).
    pub bg_cv: Condvar,
    /// Wakes writers waiting for a flush or compaction (paired with `core`).
    pub stall_cv: Condvar,
    pub queue: Mutex<VecDeque<Arc<Writer>>>,
    /// Group commit's view of its writers (concurrency, fsync time), to size synced groups.
    pub group: crate::write::GroupCommit,
    pub wal: Mutex<WalState>,
    /// Syncs WALs rotated away from, and the live WAL as it grows (`wal_bytes_per_sync`).
    pub wal_syncer: Arc<crate::log::BackgroundSyncer>,
    /// Deletes obsolete tables on a thread of its own (see `obsolete.rs`).
    pub home: Arc<crate::version::TableHome>,
    /// The fsyncs of WALs rotated away from whose memtables are not flushed yet, by WAL
    /// number: a flush makes its memtable's WAL durable before it writes the table (see
    /// [`Inner::sync_rotated_wal`]).
    pub rotated_wals: Mutex<BTreeMap<u64, Arc<crate::log::LogSync>>>,
    /// Open snapshots: seqno -> count.
    pub snapshots: Mutex<BTreeMap<u64, usize>>,
    pub counters: Counters,
    pub closing: AtomicBool,
    /// Set by shutdown, under the WAL and core locks, as it releases the directory lock:
    /// from then on another process may own the directory, and nothing here may write to
    /// it (no manifest edit, no new WAL), whichever clone of the handle asks.
    pub released: AtomicBool,
    pub failed: AtomicBool,
    /// False once a WAL write or fsync failed: the WAL can no longer be trusted to hold
    /// what was appended. After other failures (manifest, flush) the WAL is still flushed
    /// and synced, so acknowledged writes are not lost on close.
    pub wal_healthy: AtomicBool,
    /// Opened with `open_read_only`: nothing is ever written.
    pub read_only: bool,
    pub failure: Mutex<Option<String>>,
    pub lock: Mutex<Option<Box<dyn DirLock>>>,
    pub threads: Mutex<Vec<JoinHandle<()>>>,
    /// Largest L0 file count of any partition of the target layout, and the compaction debt,
    /// for write stalls.
    pub l0_max: AtomicUsize,
    pub pending_compaction: AtomicU64,
    pub recovery: Mutex<RecoveryReport>,
    pub slowdown_debt: Mutex<(Instant, f64)>,
    pub last_background_error: Mutex<Option<String>>,
    pub move_bucket: Mutex<crate::read::MoveBudget>,
    /// Keys recently read out of draining layouts (which reads move their entry).
    pub rereads: crate::read::RereadFilter,
    /// The active memtable as the WAL ticker last saw it (WAL number, entries) and since when
    /// it has not changed: how long it has been idle.
    pub mem_idle: Mutex<(u64, usize, Instant)>,
    /// Set by the WAL ticker once the active memtable has been unchanged for
    /// `idle_memtable_flush_after`, cleared when it changes: point reads then charge the
    /// runs they probe (see `read::charge_shallow_runs`).
    pub write_idle: AtomicBool,
    /// The step of the active memtable's growth the block cache was last charged for (see
    /// [`Inner::recharge_memtables`]).
    pub charged_step: AtomicU64,
    /// The memtable charge the cache's room is cut for (see [`RoomHold`]).
    pub room_hold: Mutex<RoomHold>,
    pub pacer: Mutex<crate::migration::Pacer>,
    /// Foreground latencies, sampled while a layout is draining (the pacer's signal).
    pub fg_latency: crate::migration::LatencyHistogram,
    /// Point reads' latencies, kept apart: reads are usually fewer than writes, and in one
    /// histogram their tail would hide under the writes' p99.
    pub fg_read_latency: crate::migration::LatencyHistogram,
    pub sampling: AtomicBool,
    /// Held (write) while compaction inputs turn obsolete and the view swaps; held (read)
    /// by a lazy move while it checks its source is in the view and inserts its copy.
    pub install: parking_lot::RwLock<()>,
    /// Lazy moves and bytes moved, per source layout version.
    pub lazy_counts: Mutex<HashMap<u32, (u64, u64)>>,
    /// Lazy moves queued by reads, applied by the WAL ticker (and before a flush or a
    /// foreground migration).
    pub moves: Mutex<crate::read::MoveQueue>,
    /// Held while queued moves are applied, so that `apply_moves` is a barrier: when it
    /// returns, every move queued before the call was applied or skipped, even if another
    /// thread (the WAL ticker) had taken it off the queue.
    pub applying_moves: Mutex<()>,
    /// Traffic per partition of the target layout, and of a shadowed candidate function.
    pub load: arc_swap::ArcSwapOption<crate::load::PartitionLoad>,
    pub shadow: arc_swap::ArcSwapOption<crate::load::PartitionLoad>,
    /// Keys written since the marks of large transactions (see `recent.rs`).
    pub recent: Arc<crate::recent::RecentWrites>,
    pub admission: crate::load::Admission,
    /// Held by a claim of the controller role and by a call made under a controller's
    /// epoch ([`Db::fenced`]): a claim never lands in the middle of such a call.
    pub controller_gate: Mutex<()>,
    /// The thread holding `controller_gate`, so that one entering again is refused
    /// instead of waiting for itself.
    pub controller_gate_owner: Mutex<Option<std::thread::ThreadId>>,
}

/// The controller gate held by this thread (see [`Inner::enter_controller_gate`]).
pub(crate) struct ControllerGate<'a> {
    _gate: parking_lot::MutexGuard<'a, ()>,
    owner: &'a Mutex<Option<std::thread::ThreadId>>,
}

impl Drop for ControllerGate<'_> {
    fn drop(&mut self) {
        *self.owner.lock() = None;
    }
}

/// Whether `Inner::log_edit` failed with `e` before writing anything: the edit is not in
/// the manifest, and what it would have named can go. (Writes had stopped, the handle was
/// closed, or the edit was too large for a record.)
pub(crate) fn edit_unwritten(e: &Error) -> bool {
    matches!(
        e,
        Error::TooLarge { .. } | Error::ReadOnly(_) | Error::Closed
    )
}

/// The whole state as one edit (the first record of a new manifest).
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per part of the persisted state"
)]
pub(crate) fn snapshot_edit(
    next_file: u64,
    flushed_seqno: u64,
    log_number: u64,
    registry: &Registry,
    files: &FileSet,
    controller: Option<&(u64, Vec<u8>)>,
    pinned: &std::collections::BTreeSet<u32>,
    migration_held: bool,
) -> VersionEdit {
    let mut e = VersionEdit::default();
    e.push(EditRecord::NextFile(next_file))
        .push(EditRecord::LastSeqno(flushed_seqno))
        .push(EditRecord::LogNumber(log_number));
    for (id, r) in &registry.live {
        e.push(EditRecord::RegisterLayout {
            id: *id,
            spec: r.func.spec().to_bytes(),
        });
    }
    // Retired layouts are the ids below `next` not registered above; only written when
    // there are some, so a manifest of a database that never retired one stays readable
    // by a build from before the record existed.
    if registry.retired().next().is_some() {
        e.push(EditRecord::RetiredBelow(registry.next));
    }
    // Replaying SetTarget is what marks a layout as having been the target (and so as
    // draining once replaced); the real target goes last.
    for (id, r) in &registry.live {
        if r.was_target && *id != files.target {
            e.push(EditRecord::SetTarget(*id));
        }
    }
    e.push(EditRecord::SetTarget(files.target));
    for f in files.all_files() {
        e.push(EditRecord::AddFile(f.record()));
    }
    if let Some((epoch, state)) = controller {
        e.push(EditRecord::Controller {
            epoch: *epoch,
            state: state.clone(),
        });
    }
    for id in pinned {
        if registry.get(*id).is_some() {
            e.push(EditRecord::Pin {
                id: *id,
                pinned: true,
            });
        }
    }
    // Only written while held, so that a manifest of a database never held stays readable
    // by a build from before the record existed.
    if migration_held {
        e.push(EditRecord::MigrationHold(true));
    }
    e
}

/// A manifest snapshot this large is not rewritten before the manifest has doubled (see
/// [`Inner::maybe_roll_manifest`]).
const LARGE_MANIFEST_SNAPSHOT: u64 = 1 << 20;

pub(crate) fn table_file(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:06}.sst"))
}

pub(crate) fn wal_file(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:06}.log"))
}

/// What the active memtable, holding `active` bytes of its `budget`, is charged against the
/// block cache: its growth in steps of a sixteenth of the budget, two steps ahead of what it
/// holds (the WAL ticker charges it again every few milliseconds, and writes go on in
/// between), and at most the budget unless it holds more. Returns (step, bytes charged).
/// An empty memtable is thus charged an eighth of its budget rather than all of it, and the
/// cache keeps the rest while nothing is written.
pub(crate) fn active_memtable_charge(active: u64, budget: u64) -> (u64, u64) {
    let unit = (budget / 16).max(1);
    let step = active / unit;
    (step, ((step + 2) * unit).min(budget).max(active))
}

/// How long the block cache's room stays cut for a memtable charge after the charge fell.
pub(crate) const ROOM_HOLD: Duration = Duration::from_secs(1);

/// The memtable charge the block cache's room is cut for: the highest charge of this window
/// of [`ROOM_HOLD`] and the last. Under writes the charge rises as the active memtable fills
/// and falls at each flush, several times a second; following it would evict a sixteenth of
/// the budget's blocks and read them back in at every cycle, and hand their pages to the
/// system and fault them back in (`cache::pages`). Held at the cycle's peak, the room is cut
/// once when writes start and given back once they stop.
pub(crate) struct RoomHold {
    window_start: Instant,
    this_window: u64,
    last_window: u64,
}

impl RoomHold {
    pub fn new(now: Instant) -> RoomHold {
        RoomHold {
            window_start: now,
            this_window: 0,
            last_window: 0,
        }
    }

    /// Takes the memtables' charge `mem` at `now`; returns the charge to cut the room for.
    pub fn update(&mut self, mem: u64, now: Instant) -> u64 {
        if self.due(now) {
            self.last_window = self.this_window;
            self.this_window = 0;
            self.window_start = now;
        }
        self.this_window = self.this_window.max(mem);
        self.this_window.max(self.last_window)
    }

    /// Whether a window has ended since the last update (the held charge may fall).
    pub fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.window_start) >= ROOM_HOLD
    }
}

impl Inner {
    /// Stops accepting writes after an error that leaves durability in doubt. The first
    /// reason is the one kept and counted: one failure often reaches several paths (a
    /// WAL's failed fsync, the flush waiting on it, the flush job), which report it again.
    pub fn fail(&self, reason: String) {
        let mut f = self.failure.lock();
        if f.is_none() {
            *f = Some(reason);
            Counters::add(&self.counters.background_errors, 1);
        }
        self.failed.store(true, Ordering::Release);
        // Wake everyone who might be waiting for progress that will not come.
        self.stall_cv.notify_all();
        self.bg_cv.notify_all();
    }

    /// Stops writes after a WAL failure, and stops trusting the WAL.
    pub fn wal_failed(&self, reason: String) {
        self.wal_healthy.store(false, Ordering::Release);
        self.fail(reason);
    }

    /// Makes new directory entries (SSTables, WAL files) durable before anything that
    /// depends on them is. A failure stops writes: the kernel may have dropped entries it
    /// could not write, other jobs' among them, and a later directory fsync that succeeds
    /// does not bring them back, so no new file can be trusted to be named durably.
    /// Makes the directory's entries durable (new tables', before a manifest edit names
    /// them). A failed fsync stops writes: the kernel may have dropped what it could not
    /// write. A sync that could not even open the directory (too many open files) synced
    /// nothing and lost nothing: its error goes to the caller, whose job fails and is
    /// tried again, and writes go on.
    pub fn sync_dir(&self) -> Result<()> {
        self.fs.sync_dir(&self.dir).map_err(|e| {
            let attempted = !crate::fs::sync_not_attempted(&e);
            let e = Error::io(&self.dir, e);
            if attempted {
                self.fail(format!("directory sync failed: {e}"));
            }
            e
        })
    }

    /// Records a background error that did not stop writes.
    pub fn note_background_error(&self, e: &Error) {
        Counters::add(&self.counters.background_errors, 1);
        *self.last_background_error.lock() = Some(e.to_string());
    }

    pub fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        self.check_not_failed()
    }

    /// [`Error::Closed`] once the database is closing.
    pub fn check_open(&self) -> Result<()> {
        match self.closing.load(Ordering::Acquire) {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    /// Counts a job on the caller's thread in [`Core::foreground_jobs`], which close waits
    /// for, until the returned guard drops; [`Error::Closed`] once the database is
    /// closing. Checked under the core lock, where close reads the count: a job either is
    /// counted before close looks, or sees that it is closing.
    pub(crate) fn foreground_job(&self) -> Result<ForegroundJob<'_>> {
        let mut core = self.core.lock();
        self.check_open()?;
        core.foreground_jobs += 1;
        Ok(ForegroundJob(self))
    }

    /// [`Error::ReadOnly`], with the reason, once writes stopped after a failure.
    fn check_not_failed(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            let r = self.failure.lock().clone().unwrap_or_default();
            return Err(Error::ReadOnly(r));
        }
        Ok(())
    }

    pub fn snapshot_list(&self) -> Vec<u64> {
        self.snapshots.lock().keys().copied().collect()
    }

    /// Appends an edit to the manifest; on failure the database turns read-only, since the
    /// manifest may now end in a torn record (see [`edit_unwritten`] for the failures that
    /// wrote nothing).
    pub fn log_edit(&self, core: &mut Core, edit: &VersionEdit) -> Result<()> {
        if self.released.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // Nothing more once writes stopped: the manifest this handle appends to may no longer
        // be the one CURRENT names (a roll that failed after its rename), and an edit there
        // would be lost on reopen while the files it retired are deleted.
        self.check_not_failed()?;
        match core.manifest.append(edit) {
            // Refused before anything was written: too large for one record (a flush into
            // 4096 partitions of 64 KiB keys names 512 MiB of table bounds). Refused, it
            // stopped writes, and the reopen's flush of the same WAL failed the same way:
            // the database no longer opened. It goes into a new manifest instead, after a
            // snapshot of the state before it, in as many records as it takes: current
            // only once all are durable, so the edit is still applied whole or not at all.
            Err(Error::TooLarge { .. }) => self.roll_manifest_with(core, edit),
            Err(e) => {
                self.fail(format!("manifest write failed: {e}"));
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// Makes a new manifest current that holds a snapshot of the state and then `edit`
    /// (one too large for a record: see [`Inner::log_edit`]). Replay applies records in
    /// order, so it replays to the state with `edit` applied.
    fn roll_manifest_with(&self, core: &mut Core, edit: &VersionEdit) -> Result<()> {
        let view = self.view.load();
        let mut snap = self.snapshot_edit(core, &view.files);
        drop(view);
        snap.records.extend(edit.records.iter().cloned());
        self.switch_manifest(core, &snap)
    }

    /// Writes `snapshot` into a new manifest (in as many records as it takes), makes it
    /// current and removes the old one. [`Error::TooLarge`] if one of its records alone is
    /// too large: nothing was written, and the current manifest stays. Any other failure
    /// stops writes: it may come after CURRENT names the new manifest (its directory
    /// sync), and edits appended to the old one would then be lost on reopen, with the
    /// WALs they covered deleted.
    fn switch_manifest(&self, core: &mut Core, snapshot: &VersionEdit) -> Result<()> {
        let number = core.new_file_number();
        let old = core.manifest.number();
        let max_record = core.manifest.max_record();
        let w = match ManifestWriter::create_split(
            self.fs.as_ref(),
            &self.dir,
            number,
            snapshot,
            max_record,
        ) {
            Ok(w) => w,
            Err(e @ Error::TooLarge { .. }) => return Err(e),
            Err(e) => {
                self.fail(format!("manifest write failed: {e}"));
                return Err(e);
            }
        };
        core.manifest = w;
        let _ = self
            .fs
            .remove(&self.dir.join(crate::manifest::manifest_name(old)));
        Ok(())
    }

    /// Rewrites the manifest as one snapshot edit when the log has grown large.
    pub fn maybe_roll_manifest(&self, core: &mut Core) -> Result<()> {
        let size = core.manifest.size();
        if size < self.opts.max_manifest_bytes {
            return Ok(());
        }
        // A snapshot that is itself past the threshold (many tables, large partition
        // specs) would be rewritten, and fsynced under this lock, at every edit: such a
        // manifest rolls once its edits have doubled it, so that the rewrites cost each
        // edit a constant share. (Small snapshots roll at the threshold, as before.)
        let snapshot = core.manifest.snapshot_len();
        if snapshot >= LARGE_MANIFEST_SNAPSHOT && size < snapshot.saturating_mul(2) {
            return Ok(());
        }
        let view = self.view.load();
        let snap = self.snapshot_edit(core, &view.files);
        drop(view);
        match self.switch_manifest(core, &snap) {
            // A snapshot too large for one record (nothing was written): keep appending to
            // the current manifest.
            Err(Error::TooLarge { .. }) => Ok(()),
            r => r,
        }
    }

    /// The whole state as one edit (the first record of a new manifest).
    pub fn snapshot_edit(&self, core: &Core, files: &FileSet) -> VersionEdit {
        snapshot_edit(
            core.next_file,
            core.flushed_seqno,
            core.log_number,
            &core.registry,
            files,
            core.controller.as_ref(),
            &core.pinned,
            core.migration_held,
        )
    }

    /// Swaps in a new view built from the current one. Call with `core` held.
    pub fn swap_view(&self, _core: &Core, f: impl FnOnce(&View) -> View) {
        let cur = self.view.load_full();
        let next = f(&cur);
        self.update_pressure(&next.files);
        self.charge_memtables(&next);
        self.view.store(Arc::new(next));
        self.stall_cv.notify_all();
    }

    /// Recomputes the figures write stalls are decided on.
    /// Gives the block cache what the memtables leave of the memory budget.
    fn charge_memtables(&self, next: &View) {
        if !self.opts.memtables_share_cache {
            return;
        }
        let total = self.opts.block_cache_bytes;
        let active = next.mem.approximate_bytes() as u64;
        let (step, charge) = active_memtable_charge(active, self.opts.memtable_bytes as u64);
        let mem = charge
            + next
                .imm
                .iter()
                .map(|m| m.approximate_bytes() as u64)
                .sum::<u64>();
        self.charged_step.store(step, Ordering::Relaxed);
        let held = self.room_hold.lock().update(mem, Instant::now());
        self.cache
            .set_room(total.saturating_sub(held).max(total / 4));
    }

    /// Charges the active memtable again once it has grown into a new step (a sixteenth of
    /// its budget), or once a [`RoomHold`] window has ended. Called by the WAL ticker, off the write path: shrinking the cache's room
    /// evicts blocks there and then.
    pub(crate) fn recharge_memtables(&self) {
        if !self.opts.memtables_share_cache {
            return;
        }
        let budget = self.opts.memtable_bytes as u64;
        let active = self.view.load().mem.approximate_bytes() as u64;
        if active_memtable_charge(active, budget).0 == self.charged_step.load(Ordering::Relaxed)
            && !self.room_hold.lock().due(Instant::now())
        {
            return;
        }
        // Under the lock views are swapped under, so that a swap's charge (of a newer view)
        // is never overwritten by this one's.
        let _core = self.core.lock();
        self.charge_memtables(&self.view.load());
    }

    fn update_pressure(&self, files: &FileSet) {
        self.sampling
            .store(files.draining().next().is_some(), Ordering::Relaxed);
        // The target's L0 only: flushes write nowhere else, so a draining layout's L0 cannot
        // grow, and only migration empties it — which slowing writes does not hasten and a
        // pause stops (counted, a draining L0 over the stop trigger stopped writes for good).
        let l0 = files
            .target_layout()
            .parts
            .iter()
            .map(|p| p.levels[0].len())
            .max()
            .unwrap_or(0);
        self.l0_max.store(l0, Ordering::Relaxed);
        self.pending_compaction.store(
            crate::compaction::pending_bytes(self, files),
            Ordering::Relaxed,
        );
    }

    pub fn sst_path(&self, n: u64) -> PathBuf {
        table_file(&self.dir, n)
    }

    /// The latest snapshot: every batch at or below it is fully applied.
    pub fn latest(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// The seqno a read over `_view` reads at: the snapshot's, or for a read at the latest
    /// state, the latest seqno read *after* the view was taken. The other order is wrong: a
    /// write landing between the two, then a flush or compaction, can drop the older entry
    /// the read's seqno needs (no snapshot protects an unregistered seqno) from every view
    /// taken afterwards. In this order, the view holds every entry the seqno can see or else
    /// (memtables frozen since) a prefix of them ending at a freeze: a consistent state.
    pub fn seqno_for(&self, _view: &View, snapshot: Option<u64>) -> u64 {
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::BetweenViewAndSeqno);
        snapshot.unwrap_or_else(|| self.latest())
    }

    /// Iterates `range` at `snapshot` (a registered seqno), or at the latest state.
    pub fn iter_at(
        self: &Arc<Self>,
        range: KeyRange,
        snapshot: Option<u64>,
        hold: Option<Box<dyn Send + Sync>>,
    ) -> DbIter {
        let view = self.view.load_full();
        let snapshot = self.seqno_for(&view, snapshot);
        // Made on a closed handle, the iterator's first item is `Error::Closed` (its state
        // could be stale, as a read's would; see `get`). One made before the close answers
        // `Error::Closed` from the close on: once the directory is let go, another open may
        // delete the tables it reads (see `sst/files.rs`).
        let closed = self.closing.load(Ordering::Acquire);
        let factory = Box::new(move |dir: Direction| {
            if closed {
                return Err(Error::Closed);
            }
            build_sources(&view.memtables(), &view.files, &range, snapshot, dir)
        });
        let reads = self.read_tally();
        DbIter::new(factory, snapshot, hold, self.table_files.clone(), reads)
    }
}

/// An open Sluice database. Cheap to clone; all clones share one engine. The engine shuts
/// down when the last clone is dropped or [`Db::close`] is called.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<Inner>,
    _owner: Arc<OwnerToken>,
}

/// Dropped with the last `Db` clone; stops the background threads.
pub(crate) struct OwnerToken(pub Arc<Inner>);

impl Drop for OwnerToken {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Key ranges accepted by [`Db::range`]: `..`, `a..b`, `a..=b`, `a..`, `..b`, `..=b` and
/// `(Bound, Bound)`, over anything byte-like (`&str`, `&[u8]`, `Vec<u8>`, `Bytes`, …).
pub trait KeyBounds {
    fn key_range(&self) -> KeyRange;
}

fn owned_bound<K: AsRef<[u8]>>(b: std::ops::Bound<&K>) -> std::ops::Bound<Bytes> {
    use std::ops::Bound;
    match b {
        Bound::Included(k) => Bound::Included(Bytes::copy_from_slice(k.as_ref())),
        Bound::Excluded(k) => Bound::Excluded(Bytes::copy_from_slice(k.as_ref())),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl KeyBounds for std::ops::RangeFull {
    fn key_range(&self) -> KeyRange {
        KeyRange::all()
    }
}

macro_rules! key_bounds {
    ($($t:ident),*) => {$(
        impl<K: AsRef<[u8]>> KeyBounds for std::ops::$t<K> {
            fn key_range(&self) -> KeyRange {
                KeyRange {
                    start: owned_bound(self.start_bound()),
                    end: owned_bound(self.end_bound()),
                }
            }
        }
    )*};
}
key_bounds!(Range, RangeInclusive, RangeFrom, RangeTo, RangeToInclusive);

impl<K: AsRef<[u8]>> KeyBounds for (std::ops::Bound<K>, std::ops::Bound<K>) {
    fn key_range(&self) -> KeyRange {
        KeyRange {
            start: owned_bound(self.0.as_ref()),
            end: owned_bound(self.1.as_ref()),
        }
    }
}

impl KeyBounds for KeyRange {
    fn key_range(&self) -> KeyRange {
        self.clone()
    }
}

impl Db {
    /// Opens the database at `path`, creating it if `opts.create_if_missing`.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let inner = crate::recovery::open(path.as_ref(), opts, false)?;
        let db = Db {
            _owner: Arc::new(OwnerToken(inner.clone())),
            inner,
        };
        // On failure `db` drops here, and its shutdown stops the threads already started.
        crate::background::start(&db.inner)?;
        Ok(db)
    }

    /// Opens an existing database for reading only: no lock is taken, nothing is written
    /// (unflushed WAL records are replayed into memory), no background work runs. Works on
    /// a directory that a live process has open; writes return [`Error::ReadOnly`].
    pub fn open_read_only(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let inner = crate::recovery::open(path.as_ref(), opts, true)?;
        Ok(Db {
            _owner: Arc::new(OwnerToken(inner.clone())),
            inner,
        })
    }

    /// True if opened with [`Db::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The directory this database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (k, v) = (key.as_ref(), value.as_ref());
        // Sized exactly: the memtable keeps this buffer for as long as the entry lives.
        let mut b = WriteBatch::with_capacity(WriteBatch::put_size(k.len(), v.len()));
        b.put(k, v);
        self.write(b)
    }

    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.write(b)
    }

    /// Applies a batch atomically (not synced).
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.write_opt(batch, &WriteOptions::default())
    }

    /// Applies a batch atomically; with `sync`, returns only once it is durable.
    pub fn write_opt(&self, batch: WriteBatch, opts: &WriteOptions) -> Result<()> {
        self.inner.write(batch, opts.sync).map(|_| ())
    }

    /// The value of `key` at the latest snapshot.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.inner.get(key.as_ref(), None, None)
    }

    /// Starts an optimistic, serializable transaction (see [`crate::Transaction`]).
    pub fn transaction(&self) -> crate::Transaction {
        crate::Transaction::new(self.snapshot())
    }

    /// A consistent point-in-time view across every partition and layout version.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.inner.clone())
    }

    /// Iterates `(key, value)` pairs in key order over `range` at the latest snapshot,
    /// whatever the layout. Double-ended: `.rev()` walks backwards.
    pub fn range(&self, range: impl KeyBounds) -> DbIter {
        self.inner.iter_at(range.key_range(), None, None)
    }

    /// Iterates every key with the given prefix.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> DbIter {
        let p = prefix.as_ref();
        let start = std::ops::Bound::Included(Bytes::copy_from_slice(p));
        let end = match crate::util::prefix_successor(p) {
            Some(s) => std::ops::Bound::Excluded(Bytes::from(s)),
            None => std::ops::Bound::Unbounded,
        };
        self.inner.iter_at(KeyRange { start, end }, None, None)
    }

    /// Freezes the memtable and waits until it, and every memtable frozen before it, is in
    /// SSTables: everything written before the call is then in tables. (Memtables frozen
    /// meanwhile by other writers are not waited for.)
    pub fn flush(&self) -> Result<()> {
        self.inner.flush_all()
    }

    /// Flushes, then compacts every partition of every live layout down to one level.
    pub fn compact(&self) -> Result<()> {
        self.inner.compact_all()
    }

    /// Makes unsynced writes durable (fsyncs the WAL).
    pub fn sync_wal(&self) -> Result<()> {
        self.inner.sync_wal()
    }

    /// Registers a new partition function as a layout version. It receives data only once
    /// made the target.
    pub fn register_partition_fn(&self, spec: PartitionSpec) -> Result<VersionId> {
        self.inner.register_layout(spec).map(VersionId)
    }

    /// Makes `v` the layout that flushes write into. Every other live layout drains. One
    /// atomic manifest edit; no data is copied. Setting it back is a rollback.
    pub fn set_target(&self, v: VersionId) -> Result<()> {
        self.inner.set_target(v.0)
    }

    /// Live layout versions, the target, and per-partition files and bytes.
    pub fn layout(&self) -> LayoutInfo {
        self.inner.layout_info()
    }

    /// Counters and LSM shape.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// What recovery found when this database was opened.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.inner.recovery.lock().clone()
    }

    /// Migration progress per draining layout version, the pacer's budget and pace.
    pub fn migration_progress(&self) -> crate::MigrationProgress {
        self.inner.migration_progress()
    }

    /// Migrates draining SSTables into the target layout now, in this thread, ignoring the
    /// pacer, until none is left or `max_bytes` of input has been migrated. Returns the
    /// input bytes migrated. Draining versions left empty are retired.
    pub fn migrate_now(&self, max_bytes: Option<u64>) -> Result<u64> {
        self.inner.migrate_now(max_bytes)
    }

    /// Sets the background migration budget in bytes per second (0 pauses background
    /// migration jobs; lazy moves keep their own budget, `Options::move_bytes_per_sec`,
    /// so a database can drain by reads alone). Not persisted: the next open starts at
    /// `Options::migration_bytes_per_sec`. A pause of all data movement, lazy moves
    /// included, that also outlives the process is [`Db::hold_migration`].
    pub fn set_migration_rate(&self, bytes_per_sec: u64) {
        self.inner.set_migration_rate(bytes_per_sec)
    }

    /// Holds data movement between layouts (`true`), or releases the hold: while held, the
    /// pacer migrates nothing whatever its rate and queued lazy moves are dropped (reads
    /// still serve every layout). Persisted (one manifest edit), so a paused migration stays
    /// paused across restarts and for every process that opens the directory, until
    /// released. [`Db::migrate_now`] still runs: it is an explicit request.
    pub fn hold_migration(&self, held: bool) -> Result<()> {
        self.inner.hold_migration(held)
    }

    /// Foreground p99 latency (µs) above which the pacer backs off (0 = ignore latency).
    pub fn set_migration_latency_target(&self, p99_us: u64) {
        self.inner.set_migration_latency_target(p99_us)
    }

    /// Writes an openable copy of the database into `dir` (which must not exist, or hold
    /// nothing but a lock file a failed checkpoint left): hard links to the live SSTables, the WAL up to this moment, a fresh manifest.
    /// Writes and background work go on meanwhile. The checkpoint holds `dir`'s lock file
    /// while it writes: another checkpoint into `dir` meanwhile fails with
    /// [`Error::Busy`](crate::Error::Busy), and an open of it with `Error::Locked`. A close
    /// of the database (on any clone) begun before the checkpoint writes its manifest makes
    /// it give up with [`Error::Closed`](crate::Error::Closed) after the link or copy in
    /// flight: the close waits only for that. On failure the directory is left empty but for
    /// that lock file.
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.inner.checkpoint(dir.as_ref())
    }

    /// What one partition of one live layout version holds, key by key (newest entry of
    /// each key in the partition's tables; a value a lazy move carried off, or an entry
    /// another live layout's tables hold a newer one of, reported as moved).
    pub fn partition_entries(
        &self,
        version: VersionId,
        partition: u32,
    ) -> Result<crate::PartitionIter> {
        self.inner.check_open()?;
        self.inner.partition_entries(version.0, partition)
    }

    /// Reads and writes per partition of the target layout since it became the target.
    pub fn partition_load(&self) -> crate::LoadStats {
        match self.inner.load.load().as_ref() {
            Some(l) => l.stats(),
            None => crate::LoadStats::default(),
        }
    }

    /// Starts (or with `None` stops) counting live traffic per partition of a candidate
    /// function that holds no data: hot partitions show up before they exist.
    pub fn set_shadow(&self, spec: Option<PartitionSpec>) -> Result<()> {
        self.inner.check_open()?;
        self.inner.set_shadow(spec)
    }

    /// Traffic per partition of the shadowed candidate, if one is set.
    pub fn shadow_load(&self) -> Option<crate::LoadStats> {
        self.inner.shadow.load().as_ref().map(|l| l.stats())
    }

    /// Rate-limits writes into one partition of the target layout (first come, first
    /// served); `None` lifts the limit. Changing the target lifts all limits.
    pub fn set_partition_write_limit(
        &self,
        partition: u32,
        bytes_per_sec: Option<u64>,
    ) -> Result<()> {
        self.inner.check_writable()?;
        self.inner
            .set_partition_write_limit(partition, bytes_per_sec)
    }

    /// The partition write limits in force ([`Db::set_partition_write_limit`]):
    /// (partition of the target layout, bytes per second), by partition.
    pub fn partition_write_limits(&self) -> Vec<(u32, u64)> {
        self.inner.partition_write_limits()
    }

    /// Keeps a layout version live even after it drains empty (a rollback target), or
    /// releases it (it is then retired once empty and not the target: in the same manifest
    /// edit if it has drained already).
    pub fn pin_version(&self, v: VersionId, pinned: bool) -> Result<()> {
        self.inner.pin_version(v.0, pinned)
    }

    /// Retires layout version `v` now: one that is not the target, is not pinned and holds
    /// no data. Draining versions retire by themselves once empty ([`Db::retire_drained`]);
    /// this is for a candidate registered and never made the target (an abandoned plan),
    /// which otherwise stays live for ever. [`Error::UnknownVersion`],
    /// [`Error::VersionRetired`], or [`Error::LayoutRefused`] naming why `v` must stay.
    pub fn retire_version(&self, v: VersionId) -> Result<()> {
        self.inner.retire_version(v.0)
    }

    /// Retires draining versions that hold no data and are not pinned. Background work
    /// does this too; call it to make it happen now.
    pub fn retire_drained(&self) -> Result<Vec<VersionId>> {
        self.inner.check_writable()?;
        let mut core = self.inner.core.lock();
        Ok(self
            .inner
            .retire_drained(&mut core)?
            .into_iter()
            .map(VersionId)
            .collect())
    }

    /// The migration controller's persisted state: (epoch, opaque bytes).
    pub fn controller_state(&self) -> Option<(u64, Vec<u8>)> {
        self.inner.core.lock().controller.clone()
    }

    /// The current controller epoch alone (no copy of the stored state).
    pub fn controller_epoch(&self) -> Option<u64> {
        self.inner.core.lock().controller.as_ref().map(|c| c.0)
    }

    /// Claims the controller role: persists and returns a new epoch. A controller holding
    /// an older epoch can no longer store state (it is fenced).
    pub fn claim_controller(&self) -> Result<u64> {
        self.inner.claim_controller()
    }

    /// Runs `f` as the controller holding `epoch`: [`Error::StaleEpoch`] (and `f` not run)
    /// if another controller has claimed a newer epoch, and no claim can land while `f`
    /// runs (a claim waits for it). A controller makes its changes to the engine (target,
    /// pins, pacing, retiring) through this, so that one superseded between checking its
    /// epoch and acting cannot act. `f` must not claim the role or enter `fenced` again
    /// (refused with [`Error::LayoutRefused`]: it would wait for itself).
    pub fn fenced<T>(&self, epoch: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.inner.check_open()?;
        let _gate = self.inner.enter_controller_gate("fenced")?;
        let current = self.controller_epoch().unwrap_or(0);
        if epoch != current {
            return Err(Error::StaleEpoch {
                presented: epoch,
                current,
            });
        }
        f()
    }

    /// Persists controller state under `epoch`; [`Error::StaleEpoch`] if another controller
    /// has claimed a newer epoch since.
    pub fn store_controller_state(&self, epoch: u64, state: &[u8]) -> Result<()> {
        self.inner.store_controller_state(epoch, state)
    }

    /// The latest sequence number visible to readers.
    pub fn latest_seqno(&self) -> u64 {
        self.inner.latest()
    }

    /// Flushes the WAL buffer, fsyncs it, stops background work and releases the directory
    /// lock. Later calls on any clone return [`Error::Closed`].
    pub fn close(self) -> Result<()> {
        self.inner.shutdown()
    }
}

impl Inner {
    pub fn hold_migration(&self, held: bool) -> Result<()> {
        self.check_writable()?;
        let mut core = self.core.lock();
        if core.migration_held == held {
            return Ok(());
        }
        let mut e = VersionEdit::default();
        e.push(EditRecord::MigrationHold(held));
        self.log_edit(&mut core, &e)?;
        core.migration_held = held;
        drop(core);
        self.bg_cv.notify_all();
        Ok(())
    }

    pub fn pin_version(&self, id: u32, pinned: bool) -> Result<()> {
        self.check_writable()?;
        let mut core = self.core.lock();
        core.registry.live_one(id)?;
        let mut e = VersionEdit::default();
        e.push(EditRecord::Pin { id, pinned });
        // Unpinned with nothing left to drain, it retires in the same edit: left to the
        // next background job, it stayed live for as long as no job ran.
        let view = self.view.load_full();
        if !pinned
            && view
                .files
                .draining()
                .any(|l| l.id == id && Self::drained(&core, l))
        {
            self.retire_layouts_after(&mut core, &view, vec![id], e)?;
            drop(core);
            self.bg_cv.notify_all();
            return Ok(());
        }
        drop(view);
        self.log_edit(&mut core, &e)?;
        if pinned {
            core.pinned.insert(id);
        } else {
            core.pinned.remove(&id);
        }
        drop(core);
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Takes the controller gate; [`Error::LayoutRefused`] if this thread holds it already
    /// (`what`, called inside `fenced`, would wait for itself for ever).
    pub(crate) fn enter_controller_gate(&self, what: &str) -> Result<ControllerGate<'_>> {
        let me = std::thread::current().id();
        if *self.controller_gate_owner.lock() == Some(me) {
            return Err(Error::LayoutRefused(format!(
                "{what} called inside `fenced` on the same thread: it would wait for itself"
            )));
        }
        let gate = self.controller_gate.lock();
        *self.controller_gate_owner.lock() = Some(me);
        Ok(ControllerGate {
            _gate: gate,
            owner: &self.controller_gate_owner,
        })
    }

    pub fn claim_controller(&self) -> Result<u64> {
        self.check_writable()?;
        let _gate = self.enter_controller_gate("claim_controller")?;
        let mut core = self.core.lock();
        let (epoch, state) = core.controller.clone().unwrap_or((0, Vec::new()));
        let next = epoch.checked_add(1).ok_or_else(|| {
            Error::LayoutRefused(format!("controller epoch {epoch} cannot be raised"))
        })?;
        let mut e = VersionEdit::default();
        e.push(EditRecord::Controller {
            epoch: next,
            state: state.clone(),
        });
        self.log_edit(&mut core, &e)?;
        core.controller = Some((next, state));
        Ok(next)
    }

    pub fn store_controller_state(&self, epoch: u64, state: &[u8]) -> Result<()> {
        self.check_writable()?;
        if state.len() > crate::manifest::MAX_CONTROLLER_LEN {
            return Err(Error::TooLarge {
                what: "controller state",
                len: state.len(),
                max: crate::manifest::MAX_CONTROLLER_LEN,
            });
        }
        let mut core = self.core.lock();
        let current = core.controller.as_ref().map_or(0, |c| c.0);
        if epoch != current {
            return Err(Error::StaleEpoch {
                presented: epoch,
                current,
            });
        }
        let mut e = VersionEdit::default();
        e.push(EditRecord::Controller {
            epoch,
            state: state.to_vec(),
        });
        self.log_edit(&mut core, &e)?;
        core.controller = Some((epoch, state.to_vec()));
        Ok(())
    }

    pub fn register_layout(&self, spec: PartitionSpec) -> Result<u32> {
        self.check_writable()?;
        spec.refuse_inert_split()?;
        let func = Arc::new(PartitionFn::new(spec)?);
        let mut core = self.core.lock();
        let live = core.registry.live.len();
        if live >= crate::MAX_LIVE_LAYOUTS {
            return Err(Error::LayoutRefused(format!(
                "{live} layout versions are live, the most there can be (every read consults \
                 each): retire the ones no longer needed (Db::retire_version), or let the \
                 draining ones finish"
            )));
        }
        let id = core.registry.next.max(1);
        if id > crate::layout::MAX_LAYOUT_ID {
            return Err(Error::LayoutRefused(format!(
                "layout version v{} is the last one there can be",
                crate::layout::MAX_LAYOUT_ID
            )));
        }
        let mut e = VersionEdit::default();
        e.push(EditRecord::RegisterLayout {
            id,
            spec: func.spec().to_bytes(),
        });
        self.log_edit(&mut core, &e)?;
        core.registry.register(
            id,
            Registered {
                func: func.clone(),
                was_target: false,
            },
        );
        self.swap_view(&core, |v| {
            let mut files = (*v.files).clone();
            files
                .layouts
                .insert(id, crate::version::LayoutState::new(id, func));
            View {
                mem: v.mem.clone(),
                imm: v.imm.clone(),
                files: Arc::new(files),
            }
        });
        Ok(id)
    }

    pub fn set_target(&self, id: u32) -> Result<()> {
        self.check_writable()?;
        let mut core = self.core.lock();
        core.registry.live_one(id)?;
        let view = self.view.load_full();
        if view.files.target == id {
            return Ok(());
        }
        let idle = view.files.draining().next().is_none();
        // A forwarding pointer in `id` says "this value's copy lives in another layout".
        // Once `id` is the target, those copies drain back into it, and a pointer left
        // behind would make a later migration of `id` drop the original and the returned
        // copy alike. So the new target's pointers go, in the same edit.
        let stale: Vec<Arc<crate::version::FileMeta>> = view
            .files
            .layouts
            .get(&id)
            .map(|l| l.pointer_files().cloned().collect())
            .unwrap_or_default();
        let mut e = VersionEdit::default();
        for f in &stale {
            e.push(EditRecord::DeleteFile(f.number));
        }
        e.push(EditRecord::SetTarget(id));
        self.log_edit(&mut core, &e)?;
        for f in &stale {
            f.mark_obsolete();
        }
        if let Some(r) = core.registry.live.get_mut(&id) {
            r.was_target = true;
            self.reset_load(id, r.func.clone());
        }
        // The failures counted against the new target came from jobs of another time: its
        // migration jobs while it drained (a rollback), or its compactions before it was
        // replaced. Left, they refused every writer stopped behind its compactions, which
        // had not failed (see `throttle`).
        core.compaction_failures.retain(|(v, _), _| *v != id);
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::RetargetBeforeSwap);
        self.swap_view(&core, |v| {
            let removed: Vec<_> = stale
                .iter()
                .map(|f| (f.layout_version, f.partition, f.number))
                .collect();
            let mut files = v
                .files
                .apply(&[], &removed)
                .unwrap_or_else(|_| (*v.files).clone());
            files.target = id;
            if let Some(l) = files.layouts.get_mut(&id) {
                l.was_target = true;
            }
            View {
                mem: v.mem.clone(),
                imm: v.imm.clone(),
                files: Arc::new(files),
            }
        });
        // A new migration: its pacing starts from a fresh window. Mid-migration, the
        // window's latencies are the running migration's (its layouts go on draining): a
        // retarget or a rollback does not excuse them from the budget and the p99 trigger.
        if idle {
            self.restart_pacing_window();
        }
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Retires draining layouts that hold no data files and no in-flight job writes to.
    pub fn retire_drained(&self, core: &mut Core) -> Result<Vec<u32>> {
        let view = self.view.load_full();
        let files = &view.files;
        let mut retire = Vec::new();
        for l in files.draining() {
            if Self::drained(core, l) && !core.pinned.contains(&l.id) {
                retire.push(l.id);
            }
        }
        self.retire_layouts(core, &view, retire)
    }

    /// Draining layout `l` holds no data file and no in-flight job writes to it.
    fn drained(core: &Core, l: &crate::version::LayoutState) -> bool {
        l.data_file_count() == 0 && core.writing_to.get(&l.id).copied().unwrap_or(0) == 0
    }

    pub fn retire_version(&self, id: u32) -> Result<()> {
        self.check_writable()?;
        let mut core = self.core.lock();
        let view = self.view.load_full();
        core.registry.live_one(id)?;
        let refuse = |why: &str| Err(Error::LayoutRefused(format!("v{id} stays live: {why}")));
        if view.files.target == id {
            return refuse("it is the target");
        }
        if core.pinned.contains(&id) {
            return refuse("it is pinned (a rollback target)");
        }
        if core.writing_to.get(&id).copied().unwrap_or(0) > 0 {
            return refuse("a migration job is writing into it");
        }
        if view
            .files
            .layouts
            .get(&id)
            .is_some_and(|l| l.data_file_count() > 0)
        {
            return refuse("it holds data (it retires by itself once drained)");
        }
        self.retire_layouts(&mut core, &view, vec![id])?;
        Ok(())
    }

    /// Retires `retire` (layouts checked to hold no data) in one manifest edit.
    fn retire_layouts(&self, core: &mut Core, view: &View, retire: Vec<u32>) -> Result<Vec<u32>> {
        if retire.is_empty() {
            return Ok(retire);
        }
        self.retire_layouts_after(core, view, retire, VersionEdit::default())
    }

    /// [`Inner::retire_layouts`] in the edit that begins with `e`'s records (an unpin's).
    fn retire_layouts_after(
        &self,
        core: &mut Core,
        view: &View,
        retire: Vec<u32>,
        mut e: VersionEdit,
    ) -> Result<Vec<u32>> {
        let files = &view.files;
        let mut removed = Vec::new();
        // Pointer files go first: replay checks a layout holds no file when it retires.
        for id in &retire {
            for f in files
                .layouts
                .get(id)
                .into_iter()
                .flat_map(|l| l.pointer_files())
            {
                e.push(EditRecord::DeleteFile(f.number));
                removed.push(f.clone());
            }
            e.push(EditRecord::RetireLayout(*id));
        }
        self.log_edit(core, &e)?;
        for f in &removed {
            f.mark_obsolete();
        }
        for id in &retire {
            core.registry.live.remove(id);
            core.pinned.remove(id);
            core.compaction_failures.retain(|(v, _), _| v != id);
        }
        self.swap_view(core, |v| {
            let mut fs = (*v.files).clone();
            for id in &retire {
                fs.layouts.remove(id);
            }
            View {
                mem: v.mem.clone(),
                imm: v.imm.clone(),
                files: Arc::new(fs),
            }
        });
        Ok(retire)
    }

    pub fn layout_info(&self) -> LayoutInfo {
        // Views are swapped under `core`: holding it makes the file set and the registry
        // one consistent picture.
        let core = self.core.lock();
        let view = self.view.load_full();
        let files = &view.files;
        let versions = files
            .layouts
            .values()
            .map(|l| VersionInfo {
                id: VersionId(l.id),
                spec: l.func.spec().clone(),
                fingerprint: l.func.fingerprint(),
                is_target: l.id == files.target,
                pinned: core.pinned.contains(&l.id),
                partitions: l
                    .parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PartitionInfo {
                        index: i as u32,
                        files: p.data_file_count(),
                        bytes: p.data_bytes(),
                        entries: p.data_entries(),
                        pointer_files: p.pointers.len(),
                    })
                    .collect(),
            })
            .collect();
        let retired = core.registry.retired().map(VersionId).collect();
        LayoutInfo {
            target: VersionId(files.target),
            versions,
            retired,
        }
    }

    pub fn stats(&self) -> Stats {
        let view = self.view.load_full();
        let c = &self.counters;
        let g = Counters::get;
        let mut levels: Vec<LevelStats> = (0..crate::manifest::MAX_LEVELS)
            .map(|level| LevelStats {
                level,
                compaction_bytes_written: g(&c.level_written[level]),
                migration_bytes_written: g(&c.level_migrated[level]),
                ..Default::default()
            })
            .collect();
        let mut partitions = Vec::new();
        for l in view.files.layouts.values() {
            for (i, p) in l.parts.iter().enumerate() {
                for (lv, files) in p.levels.iter().enumerate() {
                    levels[lv].files += files.len();
                    levels[lv].bytes += files.iter().map(|f| f.size).sum::<u64>();
                }
                partitions.push(PartitionStats {
                    version: l.id,
                    partition: i as u32,
                    files: p.data_file_count(),
                    bytes: p.data_bytes(),
                    entries: p.data_entries(),
                    level_files: p.levels.iter().map(|l| l.len()).collect(),
                });
            }
        }
        let user = g(&c.user_bytes);
        let stops = c.stops.read();
        let device = g(&c.wal_bytes) + g(&c.flush_bytes) + g(&c.compaction_written);
        let (lazy_moves, lazy_moved_bytes) = self
            .lazy_counts
            .lock()
            .values()
            .fold((0, 0), |(n, b), (vn, vb)| (n + vn, b + vb));
        Stats {
            levels,
            partitions,
            user_bytes_written: user,
            writes: g(&c.writes),
            wal_bytes_written: g(&c.wal_bytes),
            wal_syncs: g(&c.wal_syncs),
            wal_background_syncs: g(&c.wal_background_syncs),
            flushes: g(&c.flushes),
            flush_micros: g(&c.flush_micros),
            bytes_flushed: g(&c.flush_bytes),
            compactions: g(&c.compactions),
            trivial_moves: g(&c.trivial_moves),
            idle_flushes: g(&c.idle_flushes),
            compaction_bytes_read: g(&c.compaction_read),
            compaction_bytes_written: g(&c.compaction_written),
            migration_bytes_read: g(&c.migration_read),
            migration_bytes_written: g(&c.migration_written),
            lazy_moves,
            lazy_moved_bytes,
            lazy_moves_superseded: g(&c.moves_superseded),
            lazy_move_first_reads: g(&c.move_first_reads),
            write_amplification: if user == 0 {
                0.0
            } else {
                device as f64 / user as f64
            },
            stall_micros: stops.micros,
            stalls: stops.stops,
            memtable_stall_micros: stops.memtable_micros,
            memtable_stalls: stops.memtable_stops,
            slowdown_micros: g(&c.slowdown_micros),
            slowdowns: g(&c.slowdowns),
            admission_wait_micros: g(&c.admission_wait_micros),
            admission_waits: g(&c.admission_waits),
            pending_compaction_bytes: self.pending_compaction.load(Ordering::Relaxed),
            memtable_bytes: view
                .memtables()
                .iter()
                .map(|m| m.approximate_bytes() as u64)
                .sum(),
            immutable_memtables: view.imm.len(),
            block_cache_bytes: self.cache.used(),
            table_memory_bytes: self.cache.pinned(),
            open_table_files: self.table_files.open_count(),
            table_file_opens: self.table_files.opens(),
            output_files_open_max: g(&c.output_files_open_max),
            output_cuts_for_files: g(&c.output_cuts_for_files),
            live_sst_bytes: view.files.total_bytes(),
            last_seqno: self.latest(),
            background_errors: g(&c.background_errors),
            flush_retries: g(&c.flush_retries),
            gets: g(&c.gets),
            get_filter_checks: g(&c.get_filter_checks),
            get_table_reads: g(&c.get_table_reads),
            get_filter_false_positives: g(&c.get_false_positives),
        }
    }

    /// Flushes and fsyncs the WAL.
    pub fn sync_wal(&self) -> Result<()> {
        self.check_writable()?;
        let mut w = self.wal.lock();
        if let Err(e) = w.sync() {
            // Under the WAL lock, as a commit does: no writer slips in before writes stop.
            self.wal_failed(format!("WAL sync failed: {e}"));
            return Err(e);
        }
        Counters::add(&self.counters.wal_syncs, 1);
        Ok(())
    }

    /// Stops background threads, makes the WAL durable and releases the lock. Only the
    /// first call does (and reports the final sync); later ones return [`Error::Closed`].
    pub fn shutdown(&self) -> Result<()> {
        // Only the first close reports the final sync's outcome; a later one saying Ok
        // would tell its caller that writes were made durable when that sync may have
        // failed (or still be running).
        if self.closing.swap(true, Ordering::AcqRel) {
            return Err(Error::Closed);
        }
        self.wal_syncer.close();
        self.home.deleter.stop();
        {
            let _c = self.core.lock();
            self.bg_cv.notify_all();
            self.stall_cv.notify_all();
        }
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in &threads {
            t.thread().unpark();
        }
        for t in threads {
            let _ = t.join();
        }
        {
            // A running job checks `closing` as it goes, and stops.
            let mut core = self.core.lock();
            while core.foreground_jobs > 0 {
                #[cfg(test)]
                crate::test_hooks::reach(crate::test_hooks::Point::CloseWaitsForJobs);
                self.bg_cv.wait_for(&mut core, Duration::from_millis(20));
            }
        }
        let mut wal = self.wal.lock();
        let r = if self.read_only {
            Ok(())
        } else if !self.wal_healthy.load(Ordering::Acquire) {
            // Writes acknowledged before the WAL failed may be lost; say so.
            Err(Error::ReadOnly(
                self.failure.lock().clone().unwrap_or_default(),
            ))
        } else {
            wal.sync()
        };
        // A call on another clone that checked for `closing` before it was set may still be
        // on its way to the WAL or the manifest: fence it before the directory is let go.
        let _core = self.core.lock();
        self.released.store(true, Ordering::Release);
        // Before the directory is let go: from then on another open may delete the tables,
        // so no read of this handle may reopen them (see `sst/files.rs`).
        self.table_files.close();
        self.lock.lock().take();
        drop(wal);
        r
    }
}

/// A job on a caller's thread (`migrate_now`'s, a checkpoint) counted in
/// [`Core::foreground_jobs`] until dropped (however it ends: a panic included).
pub(crate) struct ForegroundJob<'a>(pub(crate) &'a Inner);

impl Drop for ForegroundJob<'_> {
    fn drop(&mut self) {
        self.0.core.lock().foreground_jobs -= 1;
        self.0.bg_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registering past `MAX_LIVE_LAYOUTS` live versions is refused, names the way out, and
    /// changes nothing; retiring one makes room again, and the count holds across a reopen.
    #[test]
    fn live_layout_versions_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        db.put("k", "v").unwrap();
        let hash = |seed| PartitionSpec::Hash {
            partitions: 2,
            seed,
            hashed_prefix: None,
        };
        let mut ids = Vec::new();
        for seed in 1..crate::MAX_LIVE_LAYOUTS as u64 {
            ids.push(db.register_partition_fn(hash(seed)).unwrap());
        }
        assert_eq!(db.layout().versions.len(), crate::MAX_LIVE_LAYOUTS);
        let refused = |db: &Db| match db.register_partition_fn(hash(1000)) {
            Err(Error::LayoutRefused(why)) => assert!(why.contains("retire"), "{why}"),
            other => panic!("registering one too many: {other:?}"),
        };
        refused(&db);
        assert_eq!(db.layout().versions.len(), crate::MAX_LIVE_LAYOUTS);
        db.close().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        refused(&db);
        db.retire_version(ids[0]).unwrap();
        let v = db.register_partition_fn(hash(1000)).unwrap();
        db.set_target(v).unwrap();
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        db.close().unwrap();
    }

    /// A candidate that never became the target retires on request, and replay agrees;
    /// the target, a pinned version and one holding data stay.
    #[test]
    fn an_abandoned_candidate_retires_and_what_must_stay_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // No background migration: what drains, and when, is the test's.
        let quiet = || Options {
            migration_bytes_per_sec: 0,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), quiet()).unwrap();
        db.put("k", "v").unwrap();
        db.flush().unwrap();
        let hash = |seed| PartitionSpec::Hash {
            partitions: 4,
            seed,
            hashed_prefix: None,
        };
        let cand = db.register_partition_fn(hash(1)).unwrap();
        let refused = |r: Result<()>, why: &str| match r {
            Err(Error::LayoutRefused(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{why}: {other:?}"),
        };
        refused(db.retire_version(VersionId(1)), "the target");
        db.pin_version(cand, true).unwrap();
        refused(db.retire_version(cand), "pinned");
        db.pin_version(cand, false).unwrap();
        db.retire_version(cand).unwrap();
        assert!(matches!(
            db.retire_version(cand),
            Err(Error::VersionRetired(_))
        ));
        assert!(matches!(
            db.retire_version(VersionId(99)),
            Err(Error::UnknownVersion(99))
        ));
        assert!(matches!(db.set_target(cand), Err(Error::VersionRetired(_))));
        // One that took data drains instead.
        let v3 = db.register_partition_fn(hash(2)).unwrap();
        // The way back stays live (background migration may drain v1 meanwhile).
        db.pin_version(VersionId(1), true).unwrap();
        db.set_target(v3).unwrap();
        db.put("k2", "v").unwrap();
        db.flush().unwrap();
        db.set_target(VersionId(1)).unwrap();
        refused(db.retire_version(v3), "holds data");
        db.close().unwrap();
        let db = Db::open(dir.path(), quiet()).unwrap();
        let live: Vec<VersionId> = db.layout().versions.iter().map(|v| v.id).collect();
        assert!(!live.contains(&cand), "{live:?}");
        assert!(live.contains(&v3), "{live:?}");
        assert_eq!(db.get("k2").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// A drained layout retires as it is unpinned, in the same manifest edit. It stayed
    /// live (every read consulting it, holding one of the live slots) until a background
    /// job, or a `migrate_now`, next retired drained layouts: with nothing else to do, for
    /// as long as the database stayed open. Unpinned while it holds data, or as the target,
    /// a layout stays live.
    #[test]
    fn an_unpinned_drained_layout_retires_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let quiet = || Options {
            migration_bytes_per_sec: 0,
            ..Options::tiny()
        };
        let db = Db::open(dir.path(), quiet()).unwrap();
        for i in 0..500u32 {
            db.put(format!("k{i:04}"), [b'v'; 40]).unwrap();
        }
        db.compact().unwrap();
        let live =
            |db: &Db| -> Vec<VersionId> { db.layout().versions.iter().map(|v| v.id).collect() };
        let v1 = VersionId(1);
        let v2 = db
            .register_partition_fn(PartitionSpec::hashed(4, 1))
            .unwrap();
        db.pin_version(v2, true).unwrap();
        db.set_target(v2).unwrap();
        db.pin_version(v1, false).unwrap();
        assert!(live(&db).contains(&v1), "it holds data");
        db.pin_version(v1, true).unwrap();
        db.migrate_now(None).unwrap();
        assert!(live(&db).contains(&v1), "pinned, it stays drained");
        db.pin_version(v2, false).unwrap();
        assert!(live(&db).contains(&v2), "the target");
        db.pin_version(v1, false).unwrap();
        let l = db.layout();
        assert_eq!(live(&db), vec![v2], "{l:?}");
        assert_eq!(l.retired, vec![v1]);
        db.close().unwrap();
        let db = Db::open(dir.path(), quiet()).unwrap();
        assert_eq!(live(&db), vec![v2]);
        assert_eq!(db.layout().retired, vec![v1]);
        assert_eq!(db.range(..).count(), 500);
    }

    /// Registering and retiring layouts over and over grows neither the manifest a reopen
    /// starts nor the registry: a retired layout keeps its id (below the next one) and
    /// nothing else, its function included. Retired ids stay retired across reopens and
    /// are never handed out again, the highest one included.
    #[test]
    fn retired_layouts_keep_nothing_but_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let quiet = || Options {
            migration_bytes_per_sec: 0,
            ..Options::tiny()
        };
        // 2,000 boundaries: a spec of ~24 KB.
        let big = |i: u32| PartitionSpec::Range {
            boundaries: (0..2000u32)
                .map(|b| format!("{i:03}-{b:06}").into_bytes())
                .collect(),
        };
        let db = Db::open(dir.path(), quiet()).unwrap();
        db.put("k", "v").unwrap();
        let mut retired = Vec::new();
        for i in 0..50 {
            let v = db.register_partition_fn(big(i)).unwrap();
            db.retire_version(v).unwrap();
            retired.push(v);
        }
        assert_eq!(db.layout().retired, retired);
        assert_eq!(db.inner.core.lock().registry.live.len(), 1);
        db.close().unwrap();
        // The first reopen replays the edits and starts a manifest with a snapshot of the
        // state; the second reads that snapshot.
        drop(Db::open(dir.path(), quiet()).unwrap());
        let db = Db::open(dir.path(), quiet()).unwrap();
        let manifest = crate::manifest::read_current(&crate::fs::StdFs, dir.path()).unwrap();
        let bytes = std::fs::metadata(&manifest.path).unwrap().len();
        assert!(bytes < 4096, "the reopen's manifest is {bytes} bytes");
        assert_eq!(db.layout().retired, retired);
        let last = *retired.last().unwrap();
        for v in [retired[0], last] {
            assert!(matches!(db.set_target(v), Err(Error::VersionRetired(_))));
            assert!(matches!(
                db.pin_version(v, true),
                Err(Error::VersionRetired(_))
            ));
            assert!(matches!(
                db.retire_version(v),
                Err(Error::VersionRetired(_))
            ));
        }
        let beyond = VersionId(last.0 + 1);
        assert!(matches!(
            db.set_target(beyond),
            Err(Error::UnknownVersion(_))
        ));
        assert_eq!(db.register_partition_fn(big(99)).unwrap(), beyond);
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        db.close().unwrap();
        let db = Db::open(dir.path(), quiet()).unwrap();
        assert_eq!(db.layout().retired, retired);
        assert_eq!(db.layout().versions.len(), 2);
    }

    /// `fenced` or `claim_controller` inside `fenced` on the same thread waited for itself
    /// for ever; it is refused, and the gate works as before afterwards.
    #[test]
    fn reentering_the_controller_gate_is_refused_not_a_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::tiny()).unwrap();
        let e = db.claim_controller().unwrap();
        // On a thread of its own, so that a deadlock fails the test instead of hanging it.
        let d1 = db.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let d2 = d1.clone();
            let nested = d1.fenced(e, || d2.fenced(e, || Ok(1)));
            let claim = d1.fenced(e, || d2.claim_controller());
            let _ = tx.send((nested, claim));
        });
        let (r, claim) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("reentering the controller gate deadlocked");
        assert!(
            matches!(r, Err(Error::LayoutRefused(ref m)) if m.contains("fenced")),
            "{r:?}"
        );
        assert!(matches!(claim, Err(Error::LayoutRefused(_))), "{claim:?}");
        assert_eq!(db.controller_epoch(), Some(e), "no claim landed");
        // Another thread waits for the gate as it should, and the gate is free again.
        let d3 = db.clone();
        let t = std::thread::spawn(move || d3.claim_controller());
        assert_eq!(db.fenced(e, || Ok(7)).unwrap_or(7), 7);
        let e2 = t.join().unwrap().unwrap();
        assert!(e2 > e);
        assert_eq!(db.fenced(e2, || Ok(2)).unwrap(), 2);
    }

    /// A closed handle answers nothing: another process may own the directory and have
    /// written since, so a read would be stale and a checkpoint a copy of files that are
    /// no longer its own (it used to succeed with a copy that did not open). A read-only
    /// handle refuses a checkpoint by name (it used to fail on a placeholder path and
    /// mark its WAL failed).
    #[test]
    fn a_closed_handle_neither_reads_nor_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let a = Db::open(dir.path(), Options::tiny()).unwrap();
        a.put("k", "old").unwrap();
        let stale = a.clone();
        let made_before = a.snapshot();
        a.close().unwrap();
        let b = Db::open(dir.path(), Options::tiny()).unwrap();
        b.put("k", "new").unwrap();
        b.put("k2", "new").unwrap();
        b.flush().unwrap();
        assert!(matches!(stale.get("k"), Err(Error::Closed)));
        assert!(matches!(made_before.get("k"), Err(Error::Closed)));
        assert!(matches!(stale.snapshot().get("k2"), Err(Error::Closed)));
        assert!(matches!(stale.range(..).next(), Some(Err(Error::Closed))));
        assert!(matches!(
            stale.range(..).next_back(),
            Some(Err(Error::Closed))
        ));
        let cp = dir.path().join("cp");
        assert!(matches!(stale.checkpoint(&cp), Err(Error::Closed)));
        assert!(!cp.exists());
        b.close().unwrap();

        let ro = Db::open_read_only(dir.path(), Options::tiny()).unwrap();
        assert!(matches!(ro.checkpoint(&cp), Err(Error::ReadOnly(_))));
        assert!(!cp.exists());
        assert_eq!(ro.get("k").unwrap().as_deref(), Some(&b"new"[..]));
    }

    /// Arguments that passed before and then hung writers or acted on the wrong directory
    /// are refused, naming the argument: a compaction-debt stop threshold of 0 (every write
    /// stopped for ever), a partition write limit of 0 (every write to it held for ever;
    /// it became 1 byte a second), and an empty path to open or checkpoint (half of the
    /// work went to the working directory, a `LOCK` file left there).
    #[test]
    fn arguments_that_would_hang_writes_or_miss_the_directory_are_refused() {
        let named = |r: Result<()>, want: &str| match r {
            Err(Error::InvalidOption { name, .. }) => assert_eq!(name, want),
            other => panic!("{want}: {:?}", other.err()),
        };
        let dir = tempfile::tempdir().unwrap();
        let zero_stop = Options {
            pending_compaction_slowdown_bytes: 0,
            pending_compaction_stop_bytes: 0,
            ..Options::default()
        };
        named(
            Db::open(dir.path(), zero_stop).map(drop),
            "pending_compaction_stop_bytes",
        );
        // Each option named on its own (two were named in pairs).
        type Set = fn(&mut Options);
        let each: [(&str, Set); 5] = [
            ("level0_compaction_trigger", |o| {
                o.level0_compaction_trigger = 0
            }),
            ("level0_slowdown_trigger", |o| o.level0_slowdown_trigger = 1),
            ("level0_stop_trigger", |o| {
                o.level0_stop_trigger = o.level0_slowdown_trigger - 1
            }),
            ("level_base_bytes", |o| o.level_base_bytes = 0),
            ("target_file_bytes", |o| o.target_file_bytes = 0),
        ];
        for (want, f) in each {
            let mut o = Options::default();
            f(&mut o);
            named(Db::open(dir.path(), o).map(drop), want);
        }
        let db = Db::open(dir.path(), Options::default()).unwrap();
        named(db.set_partition_write_limit(0, Some(0)), "bytes_per_sec");
        db.set_partition_write_limit(0, Some(1 << 30)).unwrap();
        db.put("k", "v").unwrap();
        let cwd_had_lock = Path::new("LOCK").exists();
        named(Db::open("", Options::default()).map(drop), "path");
        named(db.checkpoint(""), "checkpoint directory");
        assert_eq!(
            Path::new("LOCK").exists(),
            cwd_had_lock,
            "a LOCK in the working directory"
        );
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// Only the first close reports whether the final WAL sync made the writes durable.
    /// A close on another clone after it used to return Ok, also when that sync had failed
    /// and unsynced acknowledged writes were lost.
    #[test]
    fn a_second_close_is_not_told_that_a_failed_close_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::FaultFs::new();
        let opts = Options {
            fs: Arc::new(fs.clone()),
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        db.put("k", "v").unwrap();
        let other = db.clone();
        fs.inject(crate::fs::Fault::on(
            crate::fs::FsOp::Sync,
            crate::fs::FaultKind::Io,
            ".log",
            true,
        ));
        let e = db.close().unwrap_err();
        assert!(!matches!(e, Error::Closed), "{e}");
        let e = other.close().unwrap_err();
        assert!(matches!(e, Error::Closed), "{e}");
    }

    /// A manifest roll that fails after its rename (the directory sync) leaves CURRENT
    /// naming the new manifest while this handle still holds the old one. A compaction
    /// already running used to log its edit there and delete its inputs: lost on reopen,
    /// which then refused the database (tables named by the manifest missing). After the
    /// failure no edit is logged.
    #[test]
    fn no_edit_is_logged_after_a_manifest_roll_failed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::FaultFs::new();
        let opts = Options {
            fs: Arc::new(fs.clone()),
            max_manifest_bytes: 1,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        db.put("k", "v").unwrap();
        db.flush().unwrap();
        let inner = db.inner.clone();
        fs.inject(crate::fs::Fault {
            op: crate::fs::FsOp::SyncDir,
            path_contains: None,
            kind: crate::fs::FaultKind::Io,
            skip: 0,
            sticky: false,
        });
        let mut core = inner.core.lock();
        assert!(inner.maybe_roll_manifest(&mut core).is_err());
        assert_eq!(fs.injected(), 1);
        // The directory sync fails once; a later one would succeed.
        let e = inner
            .log_edit(&mut core, &VersionEdit::default())
            .unwrap_err();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
        drop(core);
        drop(db);
        fs.clear();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// After close, a call on another clone that passed its checks before the close (and
    /// so reaches the manifest or the WAL late) must not write to the directory: its lock is
    /// released and another process may own it. Both writers of new files refuse.
    #[test]
    fn nothing_writes_to_the_directory_once_close_released_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        db.put("k", "v").unwrap();
        let inner = db.inner.clone();
        let names = || {
            let mut n: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name(), e.metadata().unwrap().len())
                })
                .collect();
            n.sort();
            n
        };
        db.close().unwrap();
        let before = names();
        let edit = VersionEdit::default();
        let e = inner.log_edit(&mut inner.core.lock(), &edit).unwrap_err();
        assert!(matches!(e, Error::Closed), "{e}");
        let e = inner.rotate(&mut inner.wal.lock()).unwrap_err();
        assert!(matches!(e, Error::Closed), "{e}");
        assert_eq!(names(), before, "the directory changed after close");
    }

    /// The block cache gets the memory the memtables do not hold: while nothing is written,
    /// all but an eighth of the memtable budget (it was charged the whole budget before);
    /// less as the active memtable fills; the room back once it is flushed.
    #[test]
    fn the_block_cache_gets_the_memory_the_memtables_do_not_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (total, budget) = (8u64 << 20, 1u64 << 20);
        let opts = Options {
            block_cache_bytes: total,
            memtable_bytes: budget as usize,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let inner = &db.inner;
        // Room is split over the cache's shards, each rounded up.
        let near = |room: u64, want: u64| room.abs_diff(want) < 1024;
        let active = || inner.view.load().mem.approximate_bytes() as u64;
        inner.recharge_memtables();
        assert!(
            active() < budget / 16,
            "an empty memtable holds {}",
            active()
        );
        let idle_room = inner.cache.room();
        assert!(near(idle_room, total - budget / 8), "idle room {idle_room}");
        let mut i = 0;
        while active() < budget / 2 {
            db.put(format!("k{i:08}"), [7u8; 100]).unwrap();
            i += 1;
        }
        inner.recharge_memtables();
        let (held, room) = (active(), inner.cache.room());
        assert!(
            room + 1024 <= total - held,
            "room {room} with {held} bytes held"
        );
        assert!(
            room + 1024 >= total - held - budget / 8,
            "room {room}, {held} held"
        );
        // The room stays cut for the charge just seen (`RoomHold`) after the flush, and comes
        // back once a whole window has passed without it.
        db.flush().unwrap();
        inner.recharge_memtables();
        assert!(
            inner.cache.room() <= room + 1024,
            "room right after the flush {}, {room} before it",
            inner.cache.room()
        );
        std::thread::sleep(ROOM_HOLD * 2 + Duration::from_millis(50));
        inner.recharge_memtables();
        // Less what the flushed table keeps in memory (its index and filter).
        let tables = db.stats().table_memory_bytes;
        assert!(tables > 0);
        assert!(
            near(inner.cache.room(), idle_room - tables),
            "room after the flush and the hold {}, {tables} bytes of table memory",
            inner.cache.room()
        );
    }

    /// The held charge rises with the charge at once and falls only after a window of
    /// `ROOM_HOLD` without it: a charge that peaks every cycle holds the room still.
    #[test]
    fn the_room_hold_follows_rises_at_once_and_falls_a_window_later() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let w = ROOM_HOLD.as_millis() as u64;
        let mut h = RoomHold::new(t0);
        assert_eq!(h.update(10, at(0)), 10);
        assert_eq!(h.update(40, at(1)), 40, "a rise is followed at once");
        // A memtable cycle: the charge falls at each flush and peaks again before a window
        // ends; the held charge stays at the peak throughout.
        for cycle in 0..10 {
            let start = 2 + cycle * w / 3;
            assert_eq!(h.update(5, at(start)), 40, "cycle {cycle}");
            assert_eq!(
                h.update(38 + cycle % 3, at(start + w / 6)),
                40,
                "cycle {cycle}"
            );
        }
        // Writes stop: the peaks held fall to the charge now within two windows of the stop,
        // and not before a window has passed since the last peak (a sixth of one before it).
        let stop = 2 + 10 * w / 3;
        let mut fell = None;
        for k in 0..=30 {
            let t = stop + k * w / 10;
            let held = h.update(5, at(t));
            if held == 5 {
                fell = Some(t);
                break;
            }
            assert!(
                held >= 38,
                "{held} held {k} tenths of a window after the stop"
            );
        }
        let fell = fell.expect("the held charge never fell");
        let last_peak = stop - w / 6;
        assert!(
            fell >= last_peak + w && fell <= stop + 2 * w,
            "fell at {fell}, stop {stop}"
        );
        let next = fell;
        assert_eq!(h.update(5, at(next + 5 * w)), 5);
    }
}
