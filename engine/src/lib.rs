//! Sluice: an embedded LSM key-value engine whose data is split into partitions by a
//! *versioned partition function*, so the function can change online.
//!
//! ```
//! use sluice::{Db, Options, PartitionSpec, WriteBatch};
//!
//! # fn main() -> sluice::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path(), Options::default())?;
//! db.put("alice", "100")?;
//! let mut b = WriteBatch::new();
//! b.put("alice", "90").put("bob", "10");
//! db.write(b)?; // atomic, whatever partitions the keys fall in
//! assert_eq!(db.get("alice")?.as_deref(), Some(&b"90"[..]));
//!
//! // Change the partition function: new data flows into the hash layout; old data stays
//! // readable where it is.
//! let v2 = db.register_partition_fn(PartitionSpec::Hash { partitions: 4, seed: 7, hashed_prefix: None })?;
//! db.set_target(v2)?;
//! db.put("carol", "5")?;
//! let keys: Vec<_> = db.range(..).map(|r| r.map(|(k, _)| k)).collect::<sluice::Result<_>>()?;
//! assert_eq!(keys, ["alice", "bob", "carol"]);
//! db.close()
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]
#![allow(
    missing_debug_implementations,
    reason = "internal handles hold non-Debug files, maps and locks"
)]

mod awaits;
mod background;
mod batch;
mod cache;
mod checkpoint;
mod coding;
mod compaction;
mod cursor;
mod db;
pub mod error;
pub mod escape;
mod flush;
pub mod fs;
pub mod inspect;
mod iter;
mod layout;
mod load;
pub mod log;
pub mod manifest;
mod memtable;
mod migration;
mod obsolete;
mod options;
mod output;
mod read;
mod recent;
mod recovery;
mod scan;
mod snapshot;
pub mod sst;
mod stats;
#[cfg(test)]
mod test_hooks;
mod transaction;
mod types;
mod util;
mod version;
mod write;

pub use batch::{WriteBatch, MAX_BATCH_LEN, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use db::{Db, KeyBounds, LayoutInfo, PartitionInfo, RecoveryReport, VersionId, VersionInfo};
pub use error::{Error, Result};
pub use iter::{DbIter, KeyRange};
pub use layout::{PartitionFn, PartitionSpec, MAX_LAYOUT_ID, MAX_LIVE_LAYOUTS, MAX_PARTITIONS};
pub use load::LoadStats;
pub use migration::{DrainingProgress, MigrationProgress, FOREGROUND_P99_HISTORY};
pub use options::{Options, WalRecovery, WriteOptions};
pub use scan::{PartitionEntry, PartitionIter};
pub use snapshot::Snapshot;
pub use sst::Compression;
pub use stats::{LevelStats, PartitionStats, Stats};
pub use transaction::Transaction;
pub use types::{Entry, Kind};
pub use util::shares_of;

/// Internals exposed for the criterion micro-benchmarks in `benches/`. Not a stable API.
#[doc(hidden)]
pub mod internals {
    use std::sync::Arc;

    /// Applies the lazy moves that reads have queued (the WAL ticker does this every
    /// `wal_flush_interval`): the copies into the target layout's memtable, off the read
    /// path. For benchmarks that time the read and the copy apart.
    pub fn apply_moves(db: &crate::Db) {
        db.inner.apply_moves();
    }

    pub use crate::memtable::MemTable;
    pub use crate::types::{cmp_internal, cmp_keys};

    /// Merges whole tables forward in internal order with the engine's merge cursor;
    /// returns how many entries came out.
    pub fn merge_tables(tables: &[Arc<crate::sst::Table>]) -> crate::Result<u64> {
        let range = crate::iter::KeyRange::all();
        let mut sources = Vec::with_capacity(tables.len());
        for t in tables {
            sources.push(crate::cursor::Source::Table(
                crate::cursor::TableCursor::new(
                    t.clone(),
                    range.clone(),
                    crate::iter::Direction::Forward,
                    false,
                )?,
            ));
        }
        let mut m = crate::cursor::MergeCursor::new(sources, crate::iter::Direction::Forward);
        let mut n = 0;
        while m.valid() {
            n += 1;
            m.advance()?;
        }
        Ok(n)
    }
}
