//! Peer engines behind the `peers` feature (`fjall`, `rocksdb`, `redb` sub-features), opened
//! with settings equivalent to Sluice's defaults in `sluice-stress`:
//!
//! | setting            | Sluice (default)          | fjall                         | RocksDB                         | redb                          |
//! |--------------------|---------------------------|-------------------------------|---------------------------------|-------------------------------|
//! | durability         | WAL, no fsync per write   | journal, no fsync per write (`PersistMode::Buffer` after each write, the default) | WAL, `sync=false` | no WAL exists: `Durability::None` per commit, one `Immediate` commit at close |
//! | fsync with --sync  | WAL fsync per write       | `persist(SyncAll)` per write  | `WriteOptions::set_sync(true)`  | `Durability::Immediate`       |
//! | block cache        | --cache-mb                | `cache_size(--cache-mb)`      | LRU cache of --cache-mb         | `set_cache_size(--cache-mb)`  |
//! | memtable           | --memtable-mb (16 MiB), 2 frozen may wait for flush | `max_memtable_size` (same) | `write_buffer_size` (same), 3 buffers | n/a (B-tree) |
//! | compression        | none                      | none (crate built without lz4)| none (built without codecs)     | none                          |
//! | bloom filters      | 10 bits/key               | 10 bits/key, every level      | 10 bits/key, full filters       | n/a                           |
//! | L0 triggers        | 4 / 20 / 36               | fjall's leveled defaults      | 4 / 20 / 36                     | n/a                           |
//! | level sizes        | L1 64 MiB, x10, 32 MiB files (dynamic: level targets follow the last level) | fjall's leveled defaults | L1 64 MiB, x10, 32 MiB files; `level_compaction_dynamic_level_bytes` at RocksDB's default (on) | n/a |
//! | rotated WALs       | synced in the background (counted by the OS figures) | synced at rotation (counted) | never synced here (one column family, no synced writes), deleted once flushed: written back seldom, so the OS figures leave them out (`settled_os_cancelled_bytes` says how much) | n/a |
//! | background threads | 2 compaction + 1 flush    | 3 worker threads              | `max_background_jobs(3)` (1 flush + 2 compaction) | n/a           |
//! | block size         | 4 KiB                     | 4 KiB (default)               | 4 KiB (default)                 | 4 KiB pages (default)         |
//!
//! Write amplification: RocksDB's own statistics (`rocksdb.wal.bytes + flush.write.bytes +
//! compact.write.bytes` over `rocksdb.bytes.written`, the formula Sluice uses); fjall and redb
//! keep no such counters, so their engine figure is omitted and only the OS-level figure
//! (`/proc/self/io`, reported for every engine) is given.

#![cfg(any(feature = "fjall", feature = "rocksdb", feature = "redb"))]

use std::path::Path;

use crate::engine::{EngineCounters, Kv, Peer, PeerConfig};
use crate::BenchResult;

#[cfg(feature = "fjall")]
pub use self::fjall_kv::FjallKv;
#[cfg(feature = "redb")]
pub use self::redb_kv::RedbKv;
#[cfg(feature = "rocksdb")]
pub use self::rocks_kv::RocksKv;

#[cfg(feature = "fjall")]
mod fjall_kv {
    use super::*;
    use fjall::config::{BloomConstructionPolicy, FilterPolicy, FilterPolicyEntry};
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    pub struct FjallKv {
        db: Database,
        ks: Keyspace,
        sync: bool,
    }

    impl FjallKv {
        pub fn open(dir: &Path, cfg: &PeerConfig) -> BenchResult<FjallKv> {
            let db = Database::builder(dir)
                .cache_size(cfg.cache_bytes)
                .worker_threads(3)
                .open()?;
            let memtable = cfg.memtable_bytes;
            let ks = db.keyspace("bench", move || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(
                        BloomConstructionPolicy::BitsPerKey(10.0),
                    )))
            })?;
            Ok(FjallKv {
                db,
                ks,
                sync: cfg.sync,
            })
        }

        fn maybe_sync(&self) -> BenchResult<()> {
            if self.sync {
                self.db.persist(PersistMode::SyncAll)?;
            }
            Ok(())
        }
    }

    impl Kv for FjallKv {
        fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
            self.ks.insert(key, value)?;
            self.maybe_sync()
        }
        fn put2(&self, k1: &[u8], v1: &[u8], k2: &[u8], v2: &[u8]) -> BenchResult<()> {
            // As single inserts are: handed to the OS at commit (a batch's default leaves
            // its bytes in fjall's journal buffer).
            let mut b = self.db.batch().durability(Some(PersistMode::Buffer));
            b.insert(&self.ks, k1, v1);
            b.insert(&self.ks, k2, v2);
            b.commit()?;
            self.maybe_sync()
        }
        fn get(&self, key: &[u8]) -> BenchResult<bool> {
            Ok(self.ks.get(key)?.is_some())
        }
        fn scan(&self, start: &[u8], n: usize) -> BenchResult<u64> {
            let mut seen = 0;
            for g in self.ks.range(start..).take(n) {
                g.into_inner()?;
                seen += 1;
            }
            Ok(seen)
        }
        fn counters(&self) -> EngineCounters {
            EngineCounters::default()
        }
    }

    impl Peer for FjallKv {
        fn close(self: Box<Self>) -> BenchResult<()> {
            self.db.persist(PersistMode::SyncAll)?;
            Ok(())
        }
    }
}

#[cfg(feature = "rocksdb")]
mod rocks_kv {
    use super::*;
    use rocksdb::statistics::Ticker;
    use rocksdb::{
        BlockBasedOptions, Cache, DBCompressionType, Options, WriteBatch, WriteOptions, DB,
    };

    pub struct RocksKv {
        db: DB,
        opts: Options,
        write_opts: WriteOptions,
        // Keeps the cache alive as long as the database.
        _cache: Cache,
    }

    impl RocksKv {
        pub fn open(dir: &Path, cfg: &PeerConfig) -> BenchResult<RocksKv> {
            let cache = Cache::new_lru_cache(cfg.cache_bytes as usize);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_block_size(4096);
            table.set_bloom_filter(10.0, false);
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.set_compression_type(DBCompressionType::None);
            opts.set_block_based_table_factory(&table);
            opts.set_write_buffer_size(cfg.memtable_bytes as usize);
            // Sluice: one active + two immutable memtables before writers stop.
            opts.set_max_write_buffer_number(3);
            opts.set_level_zero_file_num_compaction_trigger(4);
            opts.set_level_zero_slowdown_writes_trigger(20);
            opts.set_level_zero_stop_writes_trigger(36);
            opts.set_max_bytes_for_level_base(64 << 20);
            opts.set_max_bytes_for_level_multiplier(10.0);
            opts.set_target_file_size_base(32 << 20);
            opts.set_max_background_jobs(3);
            opts.enable_statistics();
            // Tickers only (the byte counters read here): the default level also times
            // every get and write.
            opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
            let db = DB::open(&opts, dir)?;
            let mut write_opts = WriteOptions::default();
            write_opts.set_sync(cfg.sync);
            Ok(RocksKv {
                db,
                opts,
                write_opts,
                _cache: cache,
            })
        }
    }

    impl Kv for RocksKv {
        fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
            self.db.put_opt(key, value, &self.write_opts)?;
            Ok(())
        }
        fn put2(&self, k1: &[u8], v1: &[u8], k2: &[u8], v2: &[u8]) -> BenchResult<()> {
            let mut b = WriteBatch::default();
            b.put(k1, v1);
            b.put(k2, v2);
            self.db.write_opt(b, &self.write_opts)?;
            Ok(())
        }
        fn get(&self, key: &[u8]) -> BenchResult<bool> {
            Ok(self.db.get_pinned(key)?.is_some())
        }
        fn scan(&self, start: &[u8], n: usize) -> BenchResult<u64> {
            let mut it = self.db.raw_iterator();
            it.seek(start);
            let mut seen = 0;
            while it.valid() && (seen as usize) < n {
                std::hint::black_box((it.key(), it.value()));
                seen += 1;
                it.next();
            }
            it.status()?;
            Ok(seen)
        }
        fn counters(&self) -> EngineCounters {
            let t = |x| self.opts.get_ticker_count(x);
            EngineCounters {
                user_bytes: Some(t(Ticker::BytesWritten)),
                device_bytes: Some(
                    t(Ticker::WalFileBytes)
                        + t(Ticker::FlushWriteBytes)
                        + t(Ticker::CompactWriteBytes),
                ),
                stall_micros: Some(t(Ticker::StallMicros)),
                wal_syncs: Some(t(Ticker::WalFileSynced)),
            }
        }
    }

    impl Peer for RocksKv {
        fn close(self: Box<Self>) -> BenchResult<()> {
            self.db.flush_wal(true)?;
            Ok(())
        }
    }
}

#[cfg(feature = "redb")]
mod redb_kv {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};

    const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

    pub struct RedbKv {
        db: Database,
        durability: Durability,
    }

    impl RedbKv {
        pub fn open(dir: &Path, cfg: &PeerConfig) -> BenchResult<RedbKv> {
            let db = redb::Builder::new()
                .set_cache_size(cfg.cache_bytes as usize)
                .create(dir.join("bench.redb"))?;
            // Reads of a table that was never written fail; create it up front.
            let tx = db.begin_write()?;
            tx.open_table(TABLE)?;
            tx.commit()?;
            Ok(RedbKv {
                db,
                durability: if cfg.sync {
                    Durability::Immediate
                } else {
                    Durability::None
                },
            })
        }

        fn write(&self, pairs: &[(&[u8], &[u8])]) -> BenchResult<()> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(self.durability)?;
            {
                let mut t = tx.open_table(TABLE)?;
                for (k, v) in pairs {
                    t.insert(*k, *v)?;
                }
            }
            tx.commit()?;
            Ok(())
        }
    }

    impl Kv for RedbKv {
        fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
            self.write(&[(key, value)])
        }
        fn put2(&self, k1: &[u8], v1: &[u8], k2: &[u8], v2: &[u8]) -> BenchResult<()> {
            self.write(&[(k1, v1), (k2, v2)])
        }
        fn get(&self, key: &[u8]) -> BenchResult<bool> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(TABLE)?;
            Ok(t.get(key)?.is_some())
        }
        fn scan(&self, start: &[u8], n: usize) -> BenchResult<u64> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(TABLE)?;
            let mut seen = 0;
            for r in t.range(start..)?.take(n) {
                let (k, v) = r?;
                std::hint::black_box((k.value().len(), v.value().len()));
                seen += 1;
            }
            Ok(seen)
        }
        fn counters(&self) -> EngineCounters {
            EngineCounters::default()
        }
    }

    impl Peer for RedbKv {
        fn close(self: Box<Self>) -> BenchResult<()> {
            // Durability::None commits persist only with a later durable one.
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.commit()?;
            Ok(())
        }
    }
}
