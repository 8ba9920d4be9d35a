//! The key-value operations the db_bench-style workloads need, so the same workload code runs
//! against Sluice and, with the `peers` feature, against fjall, RocksDB and redb.
//!
//! Settings are chosen to be equivalent across engines (see `peers.rs` for each peer's):
//! the WAL or journal on, no fsync per write unless `--sync`, a block cache of `--cache-mb`,
//! the same memtable size, no compression, 10-bit bloom filters, two background threads.

use std::path::Path;

use sluice::{Db, WriteBatch, WriteOptions};

use crate::BenchResult;

/// Which engine a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    Sluice,
    Fjall,
    Rocksdb,
    Redb,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Sluice => "sluice",
            EngineKind::Fjall => "fjall",
            EngineKind::Rocksdb => "rocksdb",
            EngineKind::Redb => "redb",
        }
    }
}

/// Write-path byte counters an engine keeps itself, where it keeps them.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineCounters {
    /// Bytes of keys and values callers wrote.
    pub user_bytes: Option<u64>,
    /// WAL/journal + flush + compaction bytes written.
    pub device_bytes: Option<u64>,
    /// Time writers were stopped or slowed.
    pub stall_micros: Option<u64>,
    /// WAL fsyncs (group commit shares one among the synced writers queued together).
    pub wal_syncs: Option<u64>,
}

/// One engine's point operations. Implementations must be usable from many threads.
pub trait Kv: Sync {
    fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()>;
    /// Two puts applied atomically (one batch or transaction).
    fn put2(&self, k1: &[u8], v1: &[u8], k2: &[u8], v2: &[u8]) -> BenchResult<()>;
    /// Whether `key` has a value.
    fn get(&self, key: &[u8]) -> BenchResult<bool>;
    /// Reads up to `n` entries from `start` on; returns how many it read.
    fn scan(&self, start: &[u8], n: usize) -> BenchResult<u64>;
    fn counters(&self) -> EngineCounters;
    /// The Sluice database behind this, for Sluice-only workloads (transactions).
    fn sluice(&self) -> Option<&Db> {
        None
    }
}

/// Sluice through its public API, exactly as the driver always used it.
pub struct SluiceKv {
    pub db: Db,
    pub write_options: WriteOptions,
}

impl Kv for SluiceKv {
    fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        self.db.write_opt(b, &self.write_options)?;
        Ok(())
    }

    fn put2(&self, k1: &[u8], v1: &[u8], k2: &[u8], v2: &[u8]) -> BenchResult<()> {
        let mut b = WriteBatch::new();
        b.put(k1, v1);
        b.put(k2, v2);
        self.db.write_opt(b, &self.write_options)?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> BenchResult<bool> {
        Ok(self.db.get(key)?.is_some())
    }

    fn scan(&self, start: &[u8], n: usize) -> BenchResult<u64> {
        // Lent pairs, as the peers' scans read theirs (RocksDB's raw iterator, redb's guards).
        let mut it = self.db.range(start..);
        let mut seen = 0;
        while seen < n {
            let Some(kv) = it.next_ref() else { break };
            std::hint::black_box(kv?);
            seen += 1;
        }
        Ok(seen as u64)
    }

    fn counters(&self) -> EngineCounters {
        let s = self.db.stats();
        EngineCounters {
            user_bytes: Some(s.user_bytes_written),
            device_bytes: Some(crate::device_bytes(&s)),
            stall_micros: Some(s.stall_micros + s.slowdown_micros),
            wal_syncs: Some(s.wal_syncs),
        }
    }

    fn sluice(&self) -> Option<&Db> {
        Some(&self.db)
    }
}

/// What a peer engine is opened with; the Sluice equivalents are in `main.rs`.
#[derive(Clone, Debug)]
#[allow(
    dead_code,
    reason = "read by the peer engines, which may be compiled out"
)]
pub struct PeerConfig {
    pub cache_bytes: u64,
    pub memtable_bytes: u64,
    pub sync: bool,
}

/// An open peer engine. `close` makes everything written durable (as Sluice's `close` does)
/// so the disk size afterwards is comparable.
pub trait Peer: Kv {
    fn close(self: Box<Self>) -> BenchResult<()>;
}

/// Opens a peer engine in `dir` (created empty by the caller).
#[allow(unused_variables, reason = "every peer may be compiled out")]
pub fn open_peer(kind: EngineKind, dir: &Path, cfg: &PeerConfig) -> BenchResult<Box<dyn Peer>> {
    match kind {
        EngineKind::Sluice => Err("open_peer: sluice is not a peer".into()),
        #[cfg(feature = "fjall")]
        EngineKind::Fjall => Ok(Box::new(crate::peers::FjallKv::open(dir, cfg)?)),
        #[cfg(feature = "rocksdb")]
        EngineKind::Rocksdb => Ok(Box::new(crate::peers::RocksKv::open(dir, cfg)?)),
        #[cfg(feature = "redb")]
        EngineKind::Redb => Ok(Box::new(crate::peers::RedbKv::open(dir, cfg)?)),
        #[allow(
            unreachable_patterns,
            reason = "reachable only without some peer features"
        )]
        other => Err(format!(
            "--engine {}: this sluice-stress was built without it; rebuild with \
             `cargo build --release -p sluice-bench --features {}` (or `--features peers`)",
            other.name(),
            other.name()
        )
        .into()),
    }
}

impl<P: Peer + ?Sized> Kv for Box<P> {
    fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
        (**self).put(key, value)
    }
    fn put2(&self, k1: &[u8], v1: &[u8], k2: &[u8], v2: &[u8]) -> BenchResult<()> {
        (**self).put2(k1, v1, k2, v2)
    }
    fn get(&self, key: &[u8]) -> BenchResult<bool> {
        (**self).get(key)
    }
    fn scan(&self, start: &[u8], n: usize) -> BenchResult<u64> {
        (**self).scan(start, n)
    }
    fn counters(&self) -> EngineCounters {
        (**self).counters()
    }
}
