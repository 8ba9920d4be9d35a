//! Options for opening a database and for individual writes.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fs::{Fs, StdFs};
use crate::layout::PartitionSpec;
use crate::sst::Compression;

/// How a database is opened and tuned. `Options::default()` is a sensible start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Partition function of layout version v1 when the database is created. Ignored when
    /// opening an existing database (its layouts live in the manifest).
    pub partition: PartitionSpec,
    /// Create the database if the directory holds none.
    pub create_if_missing: bool,
    /// Bytes of writes a memtable takes before it is frozen and flushed.
    pub memtable_bytes: usize,
    /// Frozen memtables waiting for flush before writers stop. The default, 2, lets a
    /// memtable fill while a slow flush is still writing the one before the last: under a
    /// migration on two cores a flush took 207 ms on average (122 ms without migrating)
    /// against ~410 ms to fill a memtable, and with 1 the writer stopped for 0.1–1.2 s per
    /// 8M-key migration whenever a flush ran long (BENCHMARKS.md §3).
    pub max_immutable_memtables: usize,
    /// Largest size of an SSTable data block before compression, its 5-byte trailer
    /// included (a block cached whole then fits an allocator size class of this size).
    /// A block holds at least one entry, so one larger entry makes a larger block.
    pub block_size: usize,
    pub compression: Compression,
    /// Store data and index blocks with each key delta-encoded against the one before it
    /// (table format version 2, `sst::codec`; on by default, BENCHMARKS.md §2 "Key-delta
    /// blocks made the default"): tables shrink by the key bytes neighbours share, so
    /// flushes and compactions write that much less
    /// (16-byte keys of a dense key space: tables ~16% smaller, 13–17% fewer bytes
    /// written over a 1M-key fill, overwrite and fold; the biased-hash migration's write
    /// amplification 0.96 against 1.09). The price is decoding a block whenever it is
    /// loaded into the cache or read by a compaction: in `sluice-stress`'s 1M-key chain,
    /// with a cache holding half the data, random point reads and 100-key scans were ~11%
    /// slower than with plain blocks (`false`: keys stored whole, a block used as read),
    /// reads under a concurrent writer ~15%, and their p99 7 → 8–12 µs (BENCHMARKS.md §2).
    /// Turn it off for read-heavy work whose data does not fit the cache. Tables written
    /// either way are read by this build; the option can change between opens (every table
    /// says how it was written).
    pub key_delta_blocks: bool,
    /// Bloom filter bits per key; 0 disables filters.
    pub bloom_bits_per_key: u32,
    /// Bytes of blocks cached, decompressed (see `memtables_share_cache` for what else
    /// this budget covers). With 0, every block is read from its file (and decompressed)
    /// at every read.
    pub block_cache_bytes: u64,
    /// Charge memtables, and the indexes and filters open tables keep in memory, against
    /// `block_cache_bytes`: the cache holds at most what they leave (but never less than a
    /// quarter), so the three together stay within one memory budget. Frozen memtables are
    /// charged what they hold; the active one what it holds rounded up, in sixteenths of
    /// `memtable_bytes`, to two sixteenths more. ([`crate::Stats::table_memory_bytes`]
    /// reports the tables' share.)
    pub memtables_share_cache: bool,
    /// Table files kept open at once. Each table keeps its index and filter in memory
    /// whatever this is; a read of a block that is not cached opens the table's file if it
    /// is not among the `max_open_files` kept open (recently and often read ones), and
    /// closes another (a few microseconds per open: [`crate::Stats::table_file_opens`]
    /// counts them). A read-only handle keeps each table's file open instead, for all but
    /// a sixteenth of `max_open_files` tables (at most 64 kept back; a cap below 2 counts
    /// as 2), since a live writer may delete any table and an open file still reads;
    /// tables past that share what was kept back, and a read that finds one of theirs
    /// deleted by a live writer fails, saying to open a new handle. `None`
    /// (the default) keeps up to half
    /// of the process's soft `RLIMIT_NOFILE` open (at least 32), leaving the other half to
    /// WALs, the manifest, and the tables flushes and compactions write. An output opens
    /// its file once it has 256 KiB to write (a flush holds at most one per 256 KiB of its
    /// memtable), and each compaction keeps at most a quarter of `max_open_files` (at least
    /// 4) of its output files open: when one more would pass that share it finishes its
    /// largest open output there ([`crate::Stats::output_cuts_for_files`]). Reads in
    /// flight can hold a few more files open for their duration.
    pub max_open_files: Option<usize>,
    /// L0 files in one partition that trigger a compaction into its base level. Into a
    /// middle level, L0 then also waits until it holds as many bytes as that level (or twice
    /// this many files), so that each compaction writes at most ~2 bytes per byte it takes
    /// out of L0.
    pub level0_compaction_trigger: usize,
    /// L0 files in one partition at which writes are slowed down.
    pub level0_slowdown_trigger: usize,
    /// L0 files in one partition at which writes stop until compaction catches up.
    pub level0_stop_trigger: usize,
    /// Size of the level L0 compacts into, across the whole layout (each partition gets its
    /// share): a partition whose last level outgrows its share gets a middle level of at
    /// least that share above it.
    pub level_base_bytes: u64,
    /// Each level is this many times larger than the one above (2..=1000).
    pub level_multiplier: u64,
    /// Size at which compaction output files are cut. A partition holding less than 16 ×
    /// this gets files of a sixteenth of what it holds, down to a sixteenth of this, so that
    /// its levels move down in small steps.
    pub target_file_bytes: u64,
    /// Estimated compaction debt at which writes are slowed down.
    pub pending_compaction_slowdown_bytes: u64,
    /// Estimated compaction debt at which writes stop.
    pub pending_compaction_stop_bytes: u64,
    /// Write rate while slowed down, in bytes per second.
    pub slowdown_bytes_per_sec: u64,
    /// Threads running compactions (at least 1). Besides them, one thread runs the flushes,
    /// so that a full memtable never waits behind compactions.
    pub background_threads: usize,
    /// A flush that fails while writing its new tables (a full disk, EIO, a short write, a
    /// failed fsync or read-back of a new table) is tried again this many times,
    /// `flush_retry_interval` apart, before the database turns read-only. Nothing is at risk
    /// meanwhile: the memtable stays readable and its WAL stays on disk, and the failed
    /// attempt's files are deleted (a retry writes new ones; a file whose fsync failed is
    /// never fsynced again). Writes go on until `max_immutable_memtables` frozen memtables
    /// wait, then stop until a retry succeeds or the last one fails. A failure that leaves
    /// durability in doubt (the WAL, the directory, the manifest) is never retried: the
    /// database turns read-only at once. 0 turns read-only on the first failure.
    pub flush_retries: u32,
    /// Time between flush retries (1 ms..=1 h); see `flush_retries`.
    pub flush_retry_interval: Duration,
    /// Unsynced WAL bytes buffered in the process before they are handed to the OS.
    pub wal_buffer_bytes: usize,
    /// Unsynced WAL bytes handed to the OS after which a background thread fsyncs the live
    /// WAL (0 = never). A synced write then finds at most this much unsynced WAL to write
    /// out, and an OS crash takes at most this much of the unsynced writes before it. Off by
    /// default: with 1 MiB, the writer's appends met the background fsyncs and a single
    /// writer's p99.9 rose from 7-8 to 24-26 µs in fillseq (BENCHMARKS.md §1). (A WAL
    /// rotated away from is fsynced in the background whatever this says.)
    pub wal_bytes_per_sync: u64,
    /// Longest time unsynced WAL bytes stay in the process buffer (1 ms..=1 h). The same
    /// ticker applies queued lazy moves, recharges the memtable's share of the block cache
    /// and freezes idle memtables.
    pub wal_flush_interval: Duration,
    /// The manifest (a log of edits) is rewritten as one snapshot once it grows past this;
    /// once the snapshot alone is 1 MiB or more, only once it is also twice its snapshot
    /// (so that a snapshot past this is not rewritten at every edit).
    pub max_manifest_bytes: u64,
    /// What recovery does with a damaged WAL record that intact records follow.
    pub wal_recovery: WalRecovery,
    /// Lazy read-time moves: at most this many bytes per second are moved from draining
    /// layouts to the target by point reads (0 turns lazy moves off), give or take a tenth
    /// of a second's worth and one value over any stretch: a value larger than that tenth
    /// moves too, and the moves after it wait until its cost is paid.
    pub move_bytes_per_sec: u64,
    /// Whether a point read moves an entry out of a draining layout the first time it finds
    /// it there (`true`), or only when the same key was read there recently before
    /// (`false`, the default). A key read once is not worth a write: under reads spread
    /// evenly over many keys, few are read twice before migration reaches them, and moving
    /// each on its first read cost more than it saved (on an 8M-key range → `hash:16`
    /// migration under rate-capped reads, 60 MB moved lazily added 0.32 to the migration's
    /// write amplification). Keys read again and again move on their second read.
    pub move_on_first_read: bool,
    /// Migration budget: bytes of draining SSTables per second that the pacer migrates into
    /// the target layout (0 = no background migration jobs; lazy moves still move data). Adjustable at run time with [`crate::Db::set_migration_rate`];
    /// [`crate::Db::hold_migration`] stops every kind of movement.
    pub migration_bytes_per_sec: u64,
    /// Foreground p99 latency (µs) above which the pacer halves its budget (0 = ignore).
    pub migration_p99_target_us: u64,
    /// Free disk space migration always leaves untouched.
    pub migration_disk_headroom_bytes: u64,
    /// A memtable that has taken no write (nor lazy move) for this long, and that reads
    /// have sought besides table runs as often as a table of its size may be sought (one
    /// scan seek per 16 KiB, at least 100; a point read counts a sixteenth), is frozen and
    /// flushed, so a read-mostly stretch after writes stops searching it. Once this long
    /// has passed without a write, point reads also count against the seek allowances of
    /// the L0 and middle-level files they probe, so those are compacted down below their
    /// triggers. `None` keeps memtables until they fill (or until [`crate::Db::flush`]) and
    /// leaves point reads out of seek compaction.
    pub idle_memtable_flush_after: Option<Duration>,
    /// The file system (tests substitute [`crate::fs::FaultFs`]).
    pub fs: Arc<dyn Fs>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            partition: PartitionSpec::default(),
            create_if_missing: true,
            memtable_bytes: 16 << 20,
            max_immutable_memtables: 2,
            block_size: 4096,
            compression: Compression::None,
            key_delta_blocks: true,
            bloom_bits_per_key: 10,
            block_cache_bytes: 64 << 20,
            memtables_share_cache: true,
            max_open_files: None,
            level0_compaction_trigger: 4,
            level0_slowdown_trigger: 20,
            level0_stop_trigger: 36,
            level_base_bytes: 64 << 20,
            level_multiplier: 10,
            target_file_bytes: 32 << 20,
            pending_compaction_slowdown_bytes: 64 << 30,
            pending_compaction_stop_bytes: 256 << 30,
            slowdown_bytes_per_sec: 16 << 20,
            background_threads: 2,
            flush_retries: 6,
            flush_retry_interval: Duration::from_millis(500),
            wal_buffer_bytes: 64 << 10,
            wal_bytes_per_sync: 0,
            wal_flush_interval: Duration::from_millis(10),
            max_manifest_bytes: 64 << 20,
            wal_recovery: WalRecovery::Strict,
            move_bytes_per_sec: 8 << 20,
            move_on_first_read: false,
            migration_bytes_per_sec: 32 << 20,
            migration_p99_target_us: 0,
            migration_disk_headroom_bytes: 256 << 20,
            idle_memtable_flush_after: Some(Duration::from_secs(1)),
            fs: Arc::new(StdFs),
        }
    }
}

/// How recovery treats WAL damage. A crash tears at most the end of the WAL being written,
/// and recovery always drops such a torn end; damage with intact records *after* it is
/// another matter, decided here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WalRecovery {
    /// Refuse to open ([`crate::Error::WalDamaged`] naming the file and offset): skipping
    /// the damage would leave a hole, and dropping what follows could drop writes
    /// acknowledged with `sync`.
    #[default]
    Strict,
    /// Recover to the last intact record before the first damage, and drop everything after
    /// it, in that WAL and in any later one ([`crate::RecoveryReport::wal_dropped_after_damage`]
    /// says how much). The database is then a consistent point in time with no hole. For a
    /// power loss on a file system that wrote unsynced WAL pages back out of order, where
    /// `Strict` refuses: only unsynced writes sat there. If the damage is anything else,
    /// writes acknowledged with `sync` after it are lost, so choose this knowingly.
    PointInTime,
}

impl Options {
    /// Settings that make flushes and compactions happen constantly (for tests).
    pub fn tiny() -> Options {
        Options {
            memtable_bytes: 16 << 10,
            block_size: 256,
            level0_compaction_trigger: 2,
            level0_slowdown_trigger: 6,
            level0_stop_trigger: 12,
            level_base_bytes: 64 << 10,
            level_multiplier: 4,
            target_file_bytes: 16 << 10,
            ..Options::default()
        }
    }

    /// Table files to keep open: [`Options::max_open_files`], or its default.
    pub(crate) fn max_open_files(&self) -> usize {
        self.max_open_files
            .unwrap_or_else(crate::sst::files::default_max_open_files)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, reason: &str| {
            Err(Error::InvalidOption {
                name,
                reason: reason.to_string(),
            })
        };
        self.partition.validate()?;
        if self.memtable_bytes < 1024 {
            return bad("memtable_bytes", "must be at least 1 KiB");
        }
        if self.max_open_files == Some(0) {
            return bad("max_open_files", "must be at least 1");
        }
        if self.max_immutable_memtables == 0 {
            return bad("max_immutable_memtables", "must be at least 1");
        }
        if !(64..=(4 << 20)).contains(&self.block_size) {
            return bad("block_size", "must be between 64 bytes and 4 MiB");
        }
        if let Compression::Zstd(l) = self.compression {
            if !(1..=22).contains(&l) {
                return bad("compression", "zstd level must be 1..=22");
            }
        }
        if self.bloom_bits_per_key > 64 {
            return bad("bloom_bits_per_key", "must be at most 64");
        }
        if self.level0_compaction_trigger == 0 {
            return bad("level0_compaction_trigger", "must be at least 1");
        }
        if self.level0_slowdown_trigger < self.level0_compaction_trigger {
            return bad(
                "level0_slowdown_trigger",
                &format!(
                    "must be >= level0_compaction_trigger ({})",
                    self.level0_compaction_trigger
                ),
            );
        }
        if self.level0_stop_trigger < self.level0_slowdown_trigger {
            return bad(
                "level0_stop_trigger",
                &format!(
                    "must be >= level0_slowdown_trigger ({})",
                    self.level0_slowdown_trigger
                ),
            );
        }
        if !(2..=1000).contains(&self.level_multiplier) {
            return bad("level_multiplier", "must be 2..=1000");
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(3600))
            .contains(&self.wal_flush_interval)
        {
            return bad("wal_flush_interval", "must be between 1 ms and 1 hour");
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(3600))
            .contains(&self.flush_retry_interval)
        {
            return bad("flush_retry_interval", "must be between 1 ms and 1 hour");
        }
        if self.level_base_bytes == 0 {
            return bad("level_base_bytes", "must be positive");
        }
        if self.target_file_bytes < 1024 {
            return bad("target_file_bytes", "must be at least 1 KiB");
        }
        if self.background_threads == 0 || self.background_threads > 64 {
            return bad("background_threads", "must be 1..=64");
        }
        if self.pending_compaction_stop_bytes == 0 {
            // Debt is never below zero: every write would stop for ever.
            return bad("pending_compaction_stop_bytes", "must be positive");
        }
        if self.pending_compaction_stop_bytes < self.pending_compaction_slowdown_bytes {
            return bad(
                "pending_compaction_stop_bytes",
                "must be >= the slowdown threshold",
            );
        }
        if self.slowdown_bytes_per_sec == 0 {
            return bad("slowdown_bytes_per_sec", "must be positive");
        }
        Ok(())
    }
}

/// Per-write options.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// fsync the WAL before acknowledging. A synced write survives any crash; unsynced writes
    /// survive a process crash only once handed to the OS, and a machine crash only once a
    /// later synced write (or flush) covers them. Either way, what survives is a prefix.
    /// A synced write of an empty batch is such a barrier (as [`crate::Db::sync_wal`]).
    pub sync: bool,
}
