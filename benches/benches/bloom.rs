//! Bloom filter build and probe (`sluice::sst::bloom`), 10 bits per key (the default).

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::sst::bloom::{key_hash, may_contain, BloomBuilder};

use common::rand_key;

/// Keys per filter (about a 2.5 MB table's worth of 16+100-byte entries).
const KEYS: u64 = 20_000;
/// Probes per timed iteration, so the loop overhead is negligible.
const PROBES: usize = 1024;
const BITS_PER_KEY: u32 = 10;

fn bloom(c: &mut Criterion) {
    let mut keys: Vec<[u8; 16]> = (0..KEYS).map(rand_key).collect();
    keys.sort(); // tables add keys in order
    let mut bb = BloomBuilder::new(BITS_PER_KEY);
    for k in &keys {
        bb.add_key(k);
    }
    let filter = bb.finish();
    let hits: Vec<u64> = keys.iter().take(PROBES).map(|k| key_hash(k)).collect();
    let miss_keys: Vec<[u8; 16]> = (KEYS..KEYS + PROBES as u64).map(rand_key).collect();
    let misses: Vec<u64> = miss_keys.iter().map(|k| key_hash(k)).collect();
    assert!(hits.iter().all(|&h| may_contain(&filter, h)));
    let fp = (KEYS..KEYS + 100_000)
        .filter(|&i| may_contain(&filter, key_hash(&rand_key(i))))
        .count();
    eprintln!(
        "bloom: {KEYS} keys, {} filter bytes, false-positive rate {:.2}% over 100K absent keys",
        filter.len(),
        fp as f64 / 1000.0
    );

    let mut g = c.benchmark_group("bloom");
    g.throughput(Throughput::Elements(KEYS));
    g.bench_function("build", |b| {
        b.iter(|| {
            let mut bb = BloomBuilder::new(BITS_PER_KEY);
            for k in &keys {
                bb.add_key(k);
            }
            black_box(bb.finish())
        })
    });
    g.throughput(Throughput::Elements(PROBES as u64));
    g.bench_function("key_hash", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for k in &miss_keys {
                acc ^= key_hash(black_box(k));
            }
            acc
        })
    });
    for (name, hashes) in [("probe/hit", &hits), ("probe/miss", &misses)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0u32;
                for &h in hashes {
                    n += may_contain(black_box(&filter), h) as u32;
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
    targets = bloom
}
criterion_main!(benches);
