//! SSTable point get and full scan (`sluice::sst::{Table, TableIter}`), uncompressed and
//! zstd(3). Tables are opened without a block cache: `BlockCache` is private to the engine
//! (`mod cache`), so `Table::open(.., None)` is the only option here. A zstd table therefore
//! decompresses a block on every get, which the engine's `Db` (with its cache) does not.

mod common;

use std::hint::black_box;
use std::ops::Bound;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::internals::merge_tables;
use sluice::sst::bloom::key_hash;
use sluice::sst::{Compression, TableIter};

use common::{compression_name, rand_key, shuffled, sorted_random_entries, write_table};

const N: u64 = 20_000;

fn sstable(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = sorted_random_entries(N);
    // Hits in random order; misses are absent keys spread over the same key range, so the
    // bloom filter (not the table's key bounds) rejects them.
    let hits: Vec<([u8; 16], u64)> = shuffled(N as usize, 2)
        .into_iter()
        .map(|i| {
            let k = rand_key(i as u64);
            (k, key_hash(&k))
        })
        .collect();
    let misses: Vec<([u8; 16], u64)> = (N..2 * N)
        .map(|i| {
            let k = rand_key(i);
            (k, key_hash(&k))
        })
        .collect();

    let mut g = c.benchmark_group("sstable");
    for (id, comp) in [(1, Compression::None), (2, Compression::Zstd(3))] {
        let name = compression_name(comp);
        let t = write_table(dir.path(), &format!("{name}.sst"), id, &entries, comp);
        assert!(t.get(&hits[0].0, hits[0].1, u64::MAX).unwrap().is_some());
        eprintln!(
            "sstable/{name}: {N} entries, {} blocks, {} bytes",
            t.block_count(),
            t.file_size()
        );

        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        g.bench_function(format!("get_hit/{name}"), |b| {
            b.iter(|| {
                let (k, h) = &hits[i];
                i = if i + 1 == hits.len() { 0 } else { i + 1 };
                black_box(t.get(black_box(k), *h, u64::MAX).expect("get"))
            })
        });
        if comp == Compression::None {
            // Misses never touch a data block (bar bloom false positives), so compression
            // does not matter: one variant is enough.
            let mut i = 0usize;
            g.bench_function(format!("get_miss/{name}"), |b| {
                b.iter(|| {
                    let (k, h) = &misses[i];
                    i = if i + 1 == misses.len() { 0 } else { i + 1 };
                    black_box(t.get(black_box(k), *h, u64::MAX).expect("get"))
                })
            });
        }
        // Two ways to scan: the public `TableIter` (used by tools and tests), and the
        // engine's own zero-copy cursor that iterators and compactions use, reached through
        // `merge_tables` over the one table.
        g.throughput(Throughput::Elements(N));
        let one = [t.clone()];
        g.bench_function(format!("scan_cursor/{name}"), |b| {
            b.iter(|| assert_eq!(merge_tables(black_box(&one)).expect("scan"), N))
        });
        g.bench_function(format!("scan_table_iter/{name}"), |b| {
            b.iter(|| {
                let it = TableIter::new(t.clone(), Bound::Unbounded, Bound::Unbounded);
                let mut n = 0u64;
                for e in it {
                    black_box(e.expect("entry"));
                    n += 1;
                }
                assert_eq!(n, N);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = sstable
}
criterion_main!(benches);
