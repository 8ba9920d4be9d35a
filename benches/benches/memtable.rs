//! Memtable insert and point get (`sluice::internals::MemTable`), 16-byte keys, 100-byte
//! values.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::internals::MemTable;
use sluice::Kind;

use common::{rand_key, seq_key, shuffled, value};

/// Entries already in the memtable when timed inserts start, and the most timed inserts
/// into one memtable. Timed inserts thus always land in a table of 20K..40K entries (a
/// default 16 MiB memtable holds about 60K of these entries), whatever iteration count
/// criterion asks for, so per-insert cost does not drift with the sample size.
const PREFILL: usize = 20_000;
const CHUNK: usize = 20_000;
/// Entries in the table that gets read from.
const GET_N: usize = 50_000;

fn insert_timed(keys: &[Bytes], val: &Bytes, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(CHUNK);
        let m = MemTable::new(1, 64 << 20);
        for (i, k) in keys[..PREFILL].iter().enumerate() {
            m.insert(k, i as u64 + 1, Kind::Value, val);
        }
        let timed = &keys[PREFILL..PREFILL + n];
        let start = Instant::now();
        for (i, k) in timed.iter().enumerate() {
            m.insert(k, (PREFILL + i) as u64 + 1, Kind::Value, val);
        }
        total += start.elapsed();
        left -= n;
        drop(m); // untimed: the skiplist's teardown is not part of an insert
    }
    total
}

fn memtable(c: &mut Criterion) {
    let n = (PREFILL + CHUNK) as u64;
    // Sequential: every insert goes to the end of the skiplist. Random: anywhere.
    let seq: Vec<Bytes> = (0..n)
        .map(|i| Bytes::copy_from_slice(&seq_key(i)))
        .collect();
    let rnd: Vec<Bytes> = (0..n)
        .map(|i| Bytes::copy_from_slice(&rand_key(i)))
        .collect();
    let val = Bytes::copy_from_slice(&value(0));

    let mut g = c.benchmark_group("memtable");
    g.throughput(Throughput::Elements(1));
    g.bench_function("insert/seq", |b| {
        b.iter_custom(|iters| insert_timed(&seq, &val, iters))
    });
    g.bench_function("insert/random", |b| {
        b.iter_custom(|iters| insert_timed(&rnd, &val, iters))
    });

    // Point gets in a 50K-entry memtable filled in random order.
    let m = MemTable::new(1, 64 << 20);
    let keys: Vec<Bytes> = (0..GET_N as u64)
        .map(|i| Bytes::copy_from_slice(&rand_key(i)))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        m.insert(k, i as u64 + 1, Kind::Value, &value(i as u64));
    }
    let mut sorted = keys.clone();
    sorted.sort();
    let order = shuffled(GET_N, 1);
    let random_order: Vec<Bytes> = order.iter().map(|&i| keys[i].clone()).collect();
    let misses: Vec<Bytes> = (GET_N as u64..2 * GET_N as u64)
        .map(|i| Bytes::copy_from_slice(&rand_key(i)))
        .collect();
    assert!(m.get(&sorted[0], u64::MAX).is_some() && m.get(&misses[0], u64::MAX).is_none());

    // "seq" reads the keys in key order (neighbouring lookups share cache lines), "random"
    // in a random order; "miss" looks up keys the table does not hold.
    for (name, probe) in [
        ("get/seq", &sorted),
        ("get/random", &random_order),
        ("get/miss", &misses),
    ] {
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let k = &probe[i];
                i = if i + 1 == probe.len() { 0 } else { i + 1 };
                black_box(m.get(black_box(k), u64::MAX))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = memtable
}
criterion_main!(benches);
