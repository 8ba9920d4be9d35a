//! Data block encode/decode (`sluice::sst::block`, `sluice::sst::codec`), plain, zstd level 3
//! and key-delta (`Options::key_delta_blocks`), plus block reads
//! out of whole tables written with `Compression::None` and `Compression::Zstd(3)`.

mod common;

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::sst::block::{Block, BlockBuilder};
use sluice::sst::reader::Fill;
use sluice::sst::Compression;
use sluice::Kind;

use common::{compression_name, mix, seq_key, sorted_random_entries, value, write_table};

/// The engine's default block size: the writer cuts a block once it reaches this.
const BLOCK_SIZE: usize = 4096;
const TABLE_ENTRIES: u64 = 20_000;

fn block(c: &mut Criterion) {
    // Entries of one block, cut the way `TableWriter` cuts them.
    let mut entries = Vec::new();
    let mut probe = BlockBuilder::new();
    let mut i = 0u64;
    while probe.estimated_len() < BLOCK_SIZE {
        let (k, v) = (seq_key(i), value(i));
        probe.add(&k, 1000 + i, Kind::Value, &v);
        entries.push((k, 1000 + i, v));
        i += 1;
    }
    let mut raw = Vec::new();
    probe.finish_into(&mut raw);
    let raw_len = raw.len();
    let mut zc = zstd::bulk::Compressor::new(3).expect("zstd compressor");
    let compressed = zc.compress(&raw).expect("compress");
    eprintln!(
        "block: {} entries, {raw_len} bytes raw, {} bytes zstd(3) ({:.0}%; the writer keeps a \
         compressed block only below 87.5%)",
        entries.len(),
        compressed.len(),
        100.0 * compressed.len() as f64 / raw_len as f64
    );
    let mut delta = Vec::new();
    sluice::sst::codec::delta_encode(&raw, &mut delta);
    eprintln!(
        "block: {} bytes key-delta ({:.0}%)",
        delta.len(),
        100.0 * delta.len() as f64 / raw_len as f64
    );
    let raw = Bytes::from(raw);
    let path = Path::new("bench.sst");

    let mut g = c.benchmark_group("block");
    g.throughput(Throughput::Bytes(raw_len as u64));
    let mut bb = BlockBuilder::new();
    let mut out = Vec::with_capacity(2 * BLOCK_SIZE);
    g.bench_function("encode/plain", |b| {
        b.iter(|| {
            for (k, s, v) in &entries {
                bb.add(k, *s, Kind::Value, v);
            }
            out.clear();
            bb.finish_into(&mut out);
            black_box(out.len())
        })
    });
    // As the table writer does: build, then compress the finished block with a reused
    // level-3 compressor.
    g.bench_function("encode/zstd3", |b| {
        b.iter(|| {
            for (k, s, v) in &entries {
                bb.add(k, *s, Kind::Value, v);
            }
            out.clear();
            bb.finish_into(&mut out);
            black_box(zc.compress(&out).expect("compress").len())
        })
    });
    // As the table writer does with key-delta blocks: build, then re-encode.
    let mut enc = Vec::with_capacity(2 * BLOCK_SIZE);
    g.bench_function("encode/delta", |b| {
        b.iter(|| {
            for (k, s, v) in &entries {
                bb.add(k, *s, Kind::Value, v);
            }
            out.clear();
            bb.finish_into(&mut out);
            enc.clear();
            sluice::sst::codec::delta_encode(&out, &mut enc);
            black_box(enc.len())
        })
    });
    // Decode = frame check plus decoding every entry (what a scan of the block does).
    g.bench_function("decode/plain", |b| {
        b.iter(|| {
            let blk = Block::new(raw.clone(), path, 0).expect("block");
            for j in 0..blk.len() {
                black_box(blk.entry(j, path, 0).expect("entry"));
            }
        })
    });
    // As stored: `[raw length][frame]`, decoded by the engine's own path.
    let mut stored = Vec::new();
    sluice::sst::codec::zstd_encode(&mut zc, &raw, &mut stored, path).expect("encode");
    let stored = Bytes::from(stored);
    g.bench_function("decode/zstd3", |b| {
        b.iter(|| {
            let blk = sluice::sst::codec::decode_block(
                sluice::sst::format::COMPRESSION_ZSTD,
                stored.clone(),
                path,
                0,
            )
            .expect("block");
            for j in 0..blk.len() {
                black_box(blk.entry(j, path, 0).expect("entry"));
            }
        })
    });
    // What loading a key-delta block costs on top of a plain one: rebuilding the in-memory
    // format (whole keys, fixed trailers, the offset array).
    g.bench_function("decode/delta", |b| {
        b.iter(|| {
            let d = sluice::sst::codec::delta_decode(&delta, path, 0).expect("decode");
            let blk = Block::new(Bytes::from(d), path, 0).expect("block");
            for j in 0..blk.len() {
                black_box(blk.entry(j, path, 0).expect("entry"));
            }
        })
    });
    // Binary search for one key inside a decoded block, then decode the entry found: in the
    // block as read, and with search prefixes (as point reads cache it).
    let blk = Block::new(raw.clone(), path, 0).expect("block");
    let searchable = Block::from_vec(raw.to_vec(), raw_len, true, path, 0).expect("block");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    for (name, blk) in [("seek", &blk), ("seek/searchable", &searchable)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let (k, s, _) = &entries[(mix(n) % entries.len() as u64) as usize];
                let j = blk.seek(black_box(k), *s, path, 0).expect("seek");
                black_box(blk.entry(j, path, 0).expect("entry"))
            })
        });
    }
    // The same search in a block the CPU caches have not seen: one of 32768 copies (128 MiB),
    // as a point read meets a block in a block cache larger than the CPU's caches.
    let copies = 32768u64;
    let plain_set: Vec<Block> = (0..copies)
        .map(|_| Block::new(Bytes::copy_from_slice(&raw), path, 0).expect("block"))
        .collect();
    let search_set: Vec<Block> = (0..copies)
        .map(|_| Block::from_vec(raw.to_vec(), raw_len, true, path, 0).expect("block"))
        .collect();
    for (name, set) in [
        ("seek_cold/plain", &plain_set),
        ("seek_cold/searchable", &search_set),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let blk = &set[(mix(n) % copies) as usize];
                let (k, s, _) = &entries[(mix(n ^ 0x9e37) % entries.len() as u64) as usize];
                let j = blk.seek(black_box(k), *s, path, 0).expect("seek");
                black_box(blk.entry(j, path, 0).expect("entry"))
            })
        });
    }
    drop((plain_set, search_set));
    // What a block cache miss pays to make a block searchable: the block from a buffer of
    // its own (as read from the file), with and without search prefixes.
    for (name, search) in [("from_vec/plain", false), ("from_vec/searchable", true)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let v = raw.to_vec();
                black_box(Block::from_vec(v, raw_len, search, path, 0).expect("block"))
            })
        });
    }
    g.finish();

    // Whole tables: `Table::read_block(i, Fill::No)` walks every data block in turn. Without a
    // block cache (not public), an uncompressed block is a zero-copy slice of the map whose
    // CRC is checked once per open, while a zstd block is CRC-checked and decompressed on
    // every read.
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = sorted_random_entries(TABLE_ENTRIES);
    let mut g = c.benchmark_group("table_block_read");
    for (id, comp) in [(1, Compression::None), (2, Compression::Zstd(3))] {
        let name = compression_name(comp);
        let t = write_table(dir.path(), &format!("{name}.sst"), id, &entries, comp);
        let blocks = t.block_count();
        let decoded: usize = (0..blocks)
            .map(|i| t.read_block(i, Fill::No).unwrap().size())
            .sum();
        eprintln!(
            "table_block_read/{name}: {blocks} blocks, file {} bytes, {} decoded bytes",
            t.file_size(),
            decoded
        );
        // Blocks per second: for an uncompressed block the read is a slice, so bytes per
        // second would be a meaningless (three-digit GiB/s) figure.
        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let blk = t.read_block(i, Fill::No).expect("read block");
                i = if i + 1 == blocks { 0 } else { i + 1 };
                black_box(blk)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = block
}
criterion_main!(benches);
