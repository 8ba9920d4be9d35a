//! The merge cursor (`sluice::internals::merge_tables`) over 1, 4 and 16 tables whose key
//! ranges overlap completely: the same 32K entries, dealt round-robin in key order, so every
//! step of the merge switches table.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::internals::merge_tables;
use sluice::sst::{Compression, Table};

use common::{sorted_random_entries, write_table};

const TOTAL: u64 = 32_768;

fn merge(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = sorted_random_entries(TOTAL);
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Elements(TOTAL));
    let mut id = 0u64;
    for n in [1usize, 4, 16] {
        let tables: Vec<Arc<Table>> = (0..n)
            .map(|t| {
                let part: Vec<_> = entries.iter().skip(t).step_by(n).cloned().collect();
                id += 1;
                write_table(
                    dir.path(),
                    &format!("{n}-{t}.sst"),
                    id,
                    &part,
                    Compression::None,
                )
            })
            .collect();
        assert_eq!(merge_tables(&tables).expect("merge"), TOTAL);
        g.bench_with_input(BenchmarkId::new("tables", n), &tables, |b, tables| {
            b.iter(|| black_box(merge_tables(tables).expect("merge")))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = merge
}
criterion_main!(benches);
