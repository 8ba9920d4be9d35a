//! Shared setup for the criterion micro-benchmarks: deterministic keys and values, table
//! and database builders, and the suite-wide criterion settings.
//!
//! Everything here runs outside the timed closures.
#![allow(
    dead_code,
    reason = "each bench target is its own crate and uses a different subset of these helpers"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use sluice::fs::StdFs;
use sluice::sst::{Compression, Table, TableKind, TableOptions, TableOwner, TableWriter};
use sluice::{Entry, Kind};

/// Keys are 16 bytes and values 100 bytes throughout (db_bench's defaults).
pub const KEY_LEN: usize = 16;
pub const VALUE_LEN: usize = 100;

/// Short runs: the suite is for spotting regressions on a small, shared machine, not for
/// publication. Groups with slow iterations (fsync, database rebuilds) shorten these further.
///
/// HTML plots are off: rendering them with the plotters backend takes longer than measuring
/// (about 3.5 s per benchmark here). `-- --plotting-backend plotters` turns them back on.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20)
        .without_plots()
}

/// SplitMix64: a bijection on u64, so distinct inputs give distinct outputs.
#[inline]
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `k` followed by `i` as 15 zero-padded decimal digits: byte order is numeric order.
pub fn seq_key(i: u64) -> [u8; KEY_LEN] {
    let mut k = [b'0'; KEY_LEN];
    k[0] = b'k';
    let mut v = i;
    for b in k[1..].iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
    k
}

/// A key spread uniformly over the key space: `mix(i)` as 16 lowercase hex digits. Distinct
/// for distinct `i`; in no particular order.
pub fn rand_key(i: u64) -> [u8; KEY_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = mix(i);
    let mut k = [0u8; KEY_LEN];
    for (j, b) in k.iter_mut().enumerate() {
        *b = HEX[((h >> (60 - 4 * j)) & 0xf) as usize];
    }
    k
}

/// A 100-byte value that zstd shrinks to about half (db_bench's default compression ratio
/// of 0.5): 50 pseudo-random bytes, then 50 copies of one byte.
pub fn value(i: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    let mut s = mix(i ^ 0x5eed);
    for chunk in v[..VALUE_LEN / 2].chunks_mut(8) {
        s = mix(s);
        chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
    }
    v[VALUE_LEN / 2..].fill(b'v');
    v
}

/// A pseudo-random permutation of `0..n` (Fisher–Yates driven by SplitMix64).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        s = mix(s);
        let j = (s % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// A value entry for a table.
pub fn entry(key: &[u8], seqno: u64, val: &[u8]) -> Entry {
    Entry {
        key: Bytes::copy_from_slice(key),
        seqno,
        kind: Kind::Value,
        value: Bytes::copy_from_slice(val),
    }
}

/// The table options the engine uses by default: 4 KiB blocks, 10 bloom bits per key.
pub fn table_options(compression: Compression) -> TableOptions {
    TableOptions {
        block_size: 4096,
        compression,
        key_delta: false,
        bloom_bits_per_key: 10,
    }
}

/// Writes `entries` (already in internal order) as table `dir/name` and opens it without a
/// block cache: the engine's `BlockCache` is private (`mod cache`), so benches cannot pass
/// one to `Table::open`. Compressed blocks are therefore decompressed on every read here.
pub fn write_table(
    dir: &Path,
    name: &str,
    id: u64,
    entries: &[Entry],
    compression: Compression,
) -> Arc<Table> {
    let path = dir.join(name);
    let owner = TableOwner {
        kind: TableKind::Data,
        layout_version: 1,
        fingerprint: 0,
        partition: 0,
    };
    let mut w = TableWriter::new(
        std::sync::Arc::new(StdFs),
        &path,
        table_options(compression),
        owner,
    )
    .expect("create table");
    for e in entries {
        w.add(e).expect("add entry");
    }
    w.finish().expect("finish table");
    Arc::new(Table::open(&StdFs, &path, id, None).expect("open table"))
}

/// `n` entries with keys `rand_key(0..n)` sorted, seqnos 1..=n in insertion order.
pub fn sorted_random_entries(n: u64) -> Vec<Entry> {
    let mut es: Vec<Entry> = (0..n)
        .map(|i| entry(&rand_key(i), i + 1, &value(i)))
        .collect();
    es.sort_by(|a, b| a.cmp_internal(b));
    es
}

/// Label for a compression setting in benchmark ids.
pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Zstd(3) => "zstd3",
        Compression::Zstd(_) => "zstd",
    }
}
