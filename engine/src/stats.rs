//! Engine counters and the public statistics snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::MAX_LEVELS;

/// Monotonic counters updated on the hot paths (relaxed atomics).
#[derive(Default)]
pub(crate) struct Counters {
    pub user_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub wal_background_syncs: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_bytes: AtomicU64,
    pub flush_micros: AtomicU64,
    pub compactions: AtomicU64,
    pub trivial_moves: AtomicU64,
    pub idle_flushes: AtomicU64,
    pub compaction_read: AtomicU64,
    pub compaction_written: AtomicU64,
    pub migration_read: AtomicU64,
    pub migration_written: AtomicU64,
    pub move_skipped: AtomicU64,
    pub move_first_reads: AtomicU64,
    /// Moved copies a flush dropped because migration had carried their source meanwhile.
    pub moves_superseded: AtomicU64,
    /// Writers stopped (memtables full, L0 or compaction debt at its stop point).
    pub stops: StopClock,
    pub slowdown_micros: AtomicU64,
    pub slowdowns: AtomicU64,
    pub admission_wait_micros: AtomicU64,
    pub admission_waits: AtomicU64,
    pub gets: AtomicU64,
    pub get_filter_checks: AtomicU64,
    pub get_table_reads: AtomicU64,
    pub get_false_positives: AtomicU64,
    pub background_errors: AtomicU64,
    pub flush_retries: AtomicU64,
    /// The most output files one flush's or compaction's outputs held open at once.
    pub output_files_open_max: AtomicU64,
    /// Compaction outputs finished early to keep within their open output files.
    pub output_cuts_for_files: AtomicU64,
    /// Bytes compactions wrote into each level (outputs by the level they were installed
    /// at), and of those, what migration compactions wrote.
    pub level_written: [AtomicU64; MAX_LEVELS],
    pub level_migrated: [AtomicU64; MAX_LEVELS],
}

impl Counters {
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Time writers spend stopped, booked as it passes: a stop in progress counts up to the
/// moment the statistics are read, so a per-second sample of a long stop shows it in the
/// seconds it covers, not all at once in the second it ends.
#[derive(Default)]
pub(crate) struct StopClock(parking_lot::Mutex<StopTimes>);

#[derive(Default)]
struct StopTimes {
    /// Ended stops: all of them, and those that waited for a flush.
    ended_micros: u64,
    memtable_ended_micros: u64,
    /// Stops begun (counted when they begin).
    stops: u64,
    memtable_stops: u64,
    /// The stops in progress, each by its start.
    running: Vec<(u64, std::time::Instant, bool)>,
    next: u64,
}

/// A writer's stop in progress; it ends (and is booked) when dropped, on every path out
/// of the wait, errors included.
pub(crate) struct Stop<'a> {
    clock: &'a StopClock,
    id: u64,
}

/// What [`StopClock::read`] gives: micros stopped (in progress included) and stops begun,
/// in all and of those waiting for a flush.
pub(crate) struct StopFigures {
    pub micros: u64,
    pub stops: u64,
    pub memtable_micros: u64,
    pub memtable_stops: u64,
}

impl StopClock {
    /// Begins a stop; `memtable`: it waits for a flush (the memtables are full).
    pub fn begin(&self, memtable: bool) -> Stop<'_> {
        let mut t = self.0.lock();
        let id = t.next;
        t.next += 1;
        t.stops += 1;
        t.memtable_stops += u64::from(memtable);
        t.running.push((id, std::time::Instant::now(), memtable));
        Stop { clock: self, id }
    }

    pub fn read(&self) -> StopFigures {
        let t = self.0.lock();
        let now = std::time::Instant::now();
        let (mut micros, mut memtable_micros) = (t.ended_micros, t.memtable_ended_micros);
        for &(_, start, memtable) in &t.running {
            let us = now.saturating_duration_since(start).as_micros() as u64;
            micros = micros.saturating_add(us);
            if memtable {
                memtable_micros = memtable_micros.saturating_add(us);
            }
        }
        StopFigures {
            micros,
            stops: t.stops,
            memtable_micros,
            memtable_stops: t.memtable_stops,
        }
    }
}

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let mut t = self.clock.0.lock();
        if let Some(i) = t.running.iter().position(|r| r.0 == self.id) {
            let (_, start, memtable) = t.running.swap_remove(i);
            let us = start.elapsed().as_micros() as u64;
            t.ended_micros = t.ended_micros.saturating_add(us);
            if memtable {
                t.memtable_ended_micros = t.memtable_ended_micros.saturating_add(us);
            }
        }
    }
}

/// Files and bytes at one level, summed over every partition of every live layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelStats {
    pub level: usize,
    pub files: usize,
    pub bytes: u64,
    /// Bytes compactions have written into this level since the database was opened, each
    /// output counted at the level it was installed at (trivial moves write nothing).
    pub compaction_bytes_written: u64,
    /// Of those, bytes migration compactions wrote: where migrated data landed.
    pub migration_bytes_written: u64,
}

/// Files and bytes of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub version: u32,
    pub partition: u32,
    pub files: usize,
    pub bytes: u64,
    pub entries: u64,
    /// Files per level.
    pub level_files: Vec<usize>,
}

/// A point-in-time picture of the engine, from [`crate::Db::stats`].
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub levels: Vec<LevelStats>,
    pub partitions: Vec<PartitionStats>,
    /// Bytes of keys and values written by callers.
    pub user_bytes_written: u64,
    pub writes: u64,
    pub wal_bytes_written: u64,
    pub wal_syncs: u64,
    /// WAL fsyncs made in the background: of WALs rotated away from, and of the live WAL
    /// as it grew (`wal_bytes_per_sync`).
    pub wal_background_syncs: u64,
    pub flushes: u64,
    pub bytes_flushed: u64,
    /// Time flushes took, from taking their memtable to installing their tables.
    pub flush_micros: u64,
    pub compactions: u64,
    pub trivial_moves: u64,
    /// Of the flushes, those of idle memtables that scans kept seeking
    /// ([`crate::Options::idle_memtable_flush_after`]).
    pub idle_flushes: u64,
    pub compaction_bytes_read: u64,
    pub compaction_bytes_written: u64,
    /// Of the compaction figures, what migration compactions read and wrote.
    pub migration_bytes_read: u64,
    pub migration_bytes_written: u64,
    /// Lazy moves made, as in [`crate::DrainingProgress::lazy_moves`] (every version's).
    pub lazy_moves: u64,
    pub lazy_moved_bytes: u64,
    /// Lazily moved copies a flush dropped because a migration compaction had already
    /// carried their value into the target, or was carrying it (each byte moves once).
    pub lazy_moves_superseded: u64,
    /// Point reads that found a value in a draining layout and left it there: the first
    /// read of its key there lately ([`crate::Options::move_on_first_read`]).
    pub lazy_move_first_reads: u64,
    /// Bytes written to storage (WAL + flushes + compactions) per byte of user data.
    pub write_amplification: f64,
    /// Time writers spent stopped (memtables full, L0 at its stop trigger, compaction debt
    /// at its hard limit), including the stops in progress up to this reading; and the
    /// stops, counted when they begin.
    pub stall_micros: u64,
    pub stalls: u64,
    /// Of the stops, those waiting for a flush: the active memtable full while
    /// [`crate::Options::max_immutable_memtables`] frozen ones wait to be flushed. The rest
    /// waited for L0 or compaction debt to fall below its stop point.
    pub memtable_stall_micros: u64,
    pub memtable_stalls: u64,
    /// Time writers spent slowed down (rate-limited) before a stop.
    pub slowdown_micros: u64,
    pub slowdowns: u64,
    /// Time writes spent waiting for a partition write limit
    /// ([`crate::Db::set_partition_write_limit`]), and how many waited.
    pub admission_wait_micros: u64,
    pub admission_waits: u64,
    /// Estimated bytes compaction still has to rewrite to bring every level under target.
    pub pending_compaction_bytes: u64,
    pub memtable_bytes: u64,
    pub immutable_memtables: usize,
    pub block_cache_bytes: u64,
    /// Heap bytes open tables keep for as long as they are open: indexes, filters.
    pub table_memory_bytes: u64,
    /// Table files open now (at most [`crate::Options::max_open_files`], plus any a read in
    /// flight holds past its eviction).
    pub open_table_files: usize,
    /// Table files opened since the database opened: it grows with reads when more tables
    /// are read than `max_open_files` keeps open.
    pub table_file_opens: u64,
    /// The most table files one flush's or compaction's outputs held open at once since
    /// the database opened (a flush's data and pointer outputs counted apart). A
    /// compaction's stay at a quarter of [`crate::Options::max_open_files`] (at least 4),
    /// plus one while the next is cut; a flush's at one per 256 KiB of its memtable.
    pub output_files_open_max: u64,
    /// Compaction outputs finished before their target size because the job held as many
    /// output files open as it may (each holds at least 256 KiB).
    pub output_cuts_for_files: u64,
    pub live_sst_bytes: u64,
    pub last_seqno: u64,
    /// Background errors: each one that writes went on through (a compaction retried, say),
    /// and the one that stopped writes, if any, once.
    pub background_errors: u64,
    /// Flushes tried again after failing to write their tables (each also counts as a
    /// background error; see [`crate::Options::flush_retries`]).
    pub flush_retries: u64,
    /// Point reads (`get`, snapshot and transaction reads).
    pub gets: u64,
    /// Filters point reads probed: one per table whose key range held the key, in every
    /// live layout (L0 files, and at most one file per deeper level). What a read costs
    /// before any block is touched; `get_filter_checks - get_table_reads` are the searches
    /// filters saved.
    pub get_filter_checks: u64,
    /// Tables whose filter admitted a point read's key, so that a data block was searched.
    pub get_table_reads: u64,
    /// Of those, tables that held no visible entry for the key: filter false positives
    /// (or only versions newer than the read's snapshot). Each costs a block read; a read
    /// that probes several layouts during a migration pays for each layout's filters.
    pub get_filter_false_positives: u64,
}
