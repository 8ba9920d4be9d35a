//! `PartitionFn::partition_of` for each kind of partition function, 16 partitions each.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::{PartitionFn, PartitionSpec};

use common::rand_key;

const KEYS: usize = 1024;

fn partition(c: &mut Criterion) {
    let keys: Vec<[u8; 16]> = (0..KEYS as u64).map(rand_key).collect();
    let hash16 = PartitionSpec::Hash {
        partitions: 16,
        seed: 7,
        hashed_prefix: None,
    };
    let specs = [
        // 15 boundaries make 16 partitions (keys are hex, so "1".."f" split them evenly).
        (
            "range16",
            PartitionSpec::Range {
                boundaries: (1..16u8)
                    .map(|d| vec![b"0123456789abcdef"[d as usize]])
                    .collect(),
            },
        ),
        ("hash16", hash16.clone()),
        (
            "hash16_prefix4",
            PartitionSpec::Hash {
                partitions: 16,
                seed: 7,
                hashed_prefix: Some(4),
            },
        ),
        // Base partition 3 of hash16 split into 4: 19 partitions, two hashes per key
        // that lands in the split partition.
        (
            "split_hash16_p3x4",
            PartitionSpec::Split {
                base: Box::new(hash16),
                partition: 3,
                into: 4,
                seed: 11,
            },
        ),
    ];
    let mut g = c.benchmark_group("partition_of");
    g.throughput(Throughput::Elements(KEYS as u64));
    for (name, spec) in specs {
        let f = PartitionFn::new(spec).expect("valid spec");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for k in &keys {
                    acc = acc.wrapping_add(f.partition_of(black_box(k)));
                }
                acc
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = partition
}
criterion_main!(benches);
