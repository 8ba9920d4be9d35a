//! The database's range iterator as a caller in another crate uses it: seek to a random
//! key and read the next 100 pairs (`sluice-stress seekrandom`'s operation), lent with
//! `next_ref` and owned with `Iterator::next`, on a range layout and on `hash:16` (where
//! every scan merges sixteen partitions). Every block is in the block cache and the data
//! (~26 MB) in the CPU's last-level cache or memory, so this times the iterator's own work
//! per step, not reads from files: the path the stop-50 change took 25% off (the step's
//! result returned through memory on every entry, BENCHMARKS.md §2 "Scans at stop 50"),
//! which only a caller across the crate boundary sees. The cache is filled by a walk, as a
//! scan fills it, so the first seek into each block also gives it its search prefixes.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::{Db, Options, PartitionSpec, WriteBatch};
use tempfile::TempDir;

use common::{mix, seq_key, value};

const N: u64 = 200_000;
const SCAN: usize = 100;

/// A database of `N` keys `seq_key(0..N)` under `partition`, compacted to one level per
/// partition, with a cache large enough for every block, which one full scan fills.
fn build_db(partition: PartitionSpec) -> (TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        partition,
        block_cache_bytes: 256 << 20,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts).expect("open");
    for start in (0..N).step_by(1000) {
        let mut b = WriteBatch::new();
        for i in start..(start + 1000).min(N) {
            b.put(seq_key(mix(i) % N), value(i));
        }
        db.write(b).expect("write");
    }
    db.compact().expect("compact");
    let mut it = db.range(..);
    let mut n = 0;
    while let Some(kv) = it.next_ref() {
        kv.expect("scan");
        n += 1;
    }
    assert!(n > N / 2, "{n} keys");
    (dir, db)
}

fn iterator(c: &mut Criterion) {
    let mut g = c.benchmark_group("db_iterator");
    g.throughput(Throughput::Elements(SCAN as u64));
    for (name, partition) in [
        ("range", PartitionSpec::Range { boundaries: vec![] }),
        ("hash16", PartitionSpec::hashed(16, 0)),
    ] {
        let (_dir, db) = build_db(partition);
        let mut i = 0u64;
        let mut start = move || {
            i += 1;
            seq_key(mix(i ^ 0xa5a5) % N)
        };
        g.bench_function(format!("seek_next_ref_{SCAN}/{name}"), |b| {
            b.iter(|| {
                let mut it = db.range(start()..);
                let mut n = 0;
                while n < SCAN {
                    let Some(kv) = it.next_ref() else { break };
                    black_box(kv.expect("entry"));
                    n += 1;
                }
                n
            })
        });
        g.bench_function(format!("seek_next_{SCAN}/{name}"), |b| {
            b.iter(|| {
                let mut n = 0;
                for kv in db.range(start()..).take(SCAN) {
                    black_box(kv.expect("entry"));
                    n += 1;
                }
                n
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = iterator
}
criterion_main!(benches);
