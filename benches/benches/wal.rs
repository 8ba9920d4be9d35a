//! Writes through the public `Db` API: WAL append + memtable insert, unsynced from one
//! writer, and synced from 1, 4 and 16 threads (group commit: one fsync covers every batch
//! queued behind the leader's).

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use sluice::{Db, Options, WriteBatch, WriteOptions};

use common::{seq_key, value};

fn put_unsynced(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let val = value(0);
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(1));
    // Fresh keys throughout; default options, so memtables fill (16 MiB, ~60K puts) and are
    // flushed and compacted in the background while the benchmark runs: this is the cost
    // of sustained writing, not of an append into an idle log.
    let mut i = 0u64;
    g.bench_function("put_unsynced/1_writer", |b| {
        // The key is made outside the timed part.
        b.iter_batched(
            || {
                i += 1;
                seq_key(i)
            },
            |k| db.put(black_box(k), black_box(val)).expect("put"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let s = db.stats();
    eprintln!(
        "wal/put_unsynced (all runs, warm-up included): {} writes, {} flushes, {} compactions, {} stalls ({} µs stalled)",
        s.writes, s.flushes, s.compactions, s.stalls, s.stall_micros
    );
    db.close().expect("close");
}

/// Wall-clock time for `total` synced single-put batches split over `threads` writers.
fn synced_round(db: &Db, threads: usize, total: u64, next_key: &mut u64) -> Duration {
    let threads = threads.min(total.max(1) as usize);
    let base = *next_key;
    *next_key += total;
    let start_line = Barrier::new(threads + 1);
    let val = value(1);
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads as u64 {
            // Thread t writes batches t, t + threads, t + 2·threads, … of this round.
            let (db, start_line) = (&*db, &start_line);
            let threads = threads as u64;
            handles.push(s.spawn(move || {
                start_line.wait();
                let sync = WriteOptions { sync: true };
                let mut j = t;
                while j < total {
                    let mut b = WriteBatch::new();
                    b.put(seq_key(base + j), val);
                    db.write_opt(b, &sync).expect("synced write");
                    j += threads;
                }
            }));
        }
        start_line.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("writer thread");
        }
        start.elapsed()
    })
}

fn put_synced(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_group_commit");
    // An fsync costs milliseconds here: few, flat samples keep this group to seconds.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    // Throughput = batches (here single puts) acknowledged as durable per second.
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 4, 16] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let mut next_key = 0u64;
        g.bench_with_input(
            BenchmarkId::new("put_synced/threads", threads),
            &threads,
            |b, &threads| b.iter_custom(|iters| synced_round(&db, threads, iters, &mut next_key)),
        );
        let s = db.stats();
        eprintln!(
            "wal_group_commit/{threads} threads (warm-up included): {} synced batches, {} WAL fsyncs, {:.1} batches per fsync",
            s.writes,
            s.wal_syncs,
            s.writes as f64 / s.wal_syncs.max(1) as f64
        );
        db.close().expect("close");
    }
    g.finish();
}

/// Reading a WAL whose last record, one large batch, was torn by a crash: the reader must
/// rule out intact records after the damage. `read` is the torn record as a crash leaves
/// it; `damaged_length` also has its length field damaged, so the reader cannot skip the
/// record and searches every later offset of it, and `v3` is a version 3 log, whose reader
/// always did. A payload of small little-endian integers (an array of ids) makes almost
/// every later offset a plausible record start.
fn torn_tail(c: &mut Criterion) {
    use sluice::log::{LogFormat, LogKind, LOG_FORMAT_VERSION};
    let mut g = c.benchmark_group("wal_torn_tail");
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    for mib in [1usize, 4, 16] {
        let payload: Vec<u8> = (0..(mib << 18) as u32)
            .flat_map(|i| i.to_le_bytes())
            .collect();
        for (case, version, damage_length) in [
            ("read", LOG_FORMAT_VERSION, false),
            ("damaged_length", LOG_FORMAT_VERSION, true),
            ("v3", 3, false),
        ] {
            let format = LogFormat::of(version, 0x5a17);
            let mut log = format.header(LogKind::Wal);
            format.encode_record(b"an intact batch", &mut log);
            let torn_at = log.len();
            format.encode_record(&payload, &mut log);
            log.truncate(log.len() - 10);
            if damage_length {
                log[torn_at + 3] ^= 0x01;
            }
            let log = bytes::Bytes::from(log);
            g.throughput(Throughput::Bytes(log.len() as u64));
            g.bench_with_input(
                BenchmarkId::new(case, format!("{mib}MiB")),
                &log,
                |b, log| {
                    b.iter(|| {
                        let c = sluice::log::read_log(
                            log.clone(),
                            std::path::Path::new("000001.log"),
                            LogKind::Wal,
                        )
                        .expect("a torn tail is not an error");
                        assert!(c.tail.is_some_and(|t| !t.intact_after));
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = put_unsynced, put_synced, torn_tail
}
criterion_main!(benches);
