//! Layout changes through the public `Db` API.
//!
//! `lazy_move`: a point get at the latest snapshot of a key that still lives in a draining
//! layout queues a copy of it into the target (a lazy move); the copy is made off the read
//! path (by the WAL ticker, here by `internals::apply_moves` between timed batches, untimed).
//! `get/draining_queues_move` times the get that queues the move, the read-path cost of a
//! lazy move; compared, in one group, with the same get on a single-layout database, on a
//! two-layout database with lazy moves off, and on keys already moved.
//!
//! `live_layouts`: point gets with three layouts live against one (see [`live_layouts`]).
//!
//! `forwarding_pointers`: a partition-scoped scan (`Db::partition_entries`) of a draining
//! partition whose every value is covered by a forwarding pointer (reported as `Moved`),
//! against one with no pointers. (`Db::migrate_now` honouring pointers is not benchmarked:
//! it consumes its input, so each timed run would need a fresh database.)

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::{Db, Options, PartitionEntry, PartitionSpec, VersionId, WriteBatch};
use tempfile::TempDir;

use common::{rand_key, shuffled, value};

/// Keys per lazy-move database. A lazy move is a one-off per key, so the moving variant
/// reads each key once and builds a fresh database (untimed) when it runs out.
const MOVE_KEYS: u64 = 100_000;
/// Gets between two applications of the queued moves: under the queue's bound of 8192.
const MOVE_BATCH: u64 = 4096;
/// Keys per forwarding-pointer database.
const POINTER_KEYS: u64 = 20_000;

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// v1 only (range, 4 partitions): the baseline.
    SingleLayout,
    /// v1 (range) draining, v2 (hash, 4 partitions) the empty target; lazy moves off.
    TwoLayoutsNoMoves,
    /// As above with lazy moves on (budget effectively unlimited).
    TwoLayoutsMoves,
}

/// A database whose `n` keys `rand_key(0..n)` are all in SSTables of layout v1 (range
/// partitioned at `boundaries`); background migration is paused, so data leaves v1 only
/// through lazy moves.
fn build_db(n: u64, boundaries: &[&str], shape: Shape) -> (TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        partition: PartitionSpec::Range {
            boundaries: boundaries.iter().map(|b| b.as_bytes().to_vec()).collect(),
        },
        move_bytes_per_sec: if shape == Shape::TwoLayoutsMoves {
            u64::MAX / 4
        } else {
            0
        },
        move_on_first_read: true,
        migration_bytes_per_sec: 0,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts).expect("open");
    let mut i = 0;
    while i < n {
        let mut b = WriteBatch::new();
        for j in i..(i + 1000).min(n) {
            b.put(rand_key(j), value(j));
        }
        db.write(b).expect("write");
        i += 1000;
    }
    db.compact().expect("compact");
    if shape != Shape::SingleLayout {
        let v2 = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 7,
                hashed_prefix: None,
            })
            .expect("register v2");
        db.set_target(v2).expect("set target");
    }
    (dir, db)
}

/// Closes a used-up moving database, adding up the moves it made and noting the largest
/// memtable it ended with.
fn retire(d: Option<(TempDir, Db, usize)>, moves: &mut u64, max_memtable: &mut u64) {
    if let Some((_dir, db, _)) = d {
        let s = db.stats();
        *moves += s.lazy_moves;
        *max_memtable = (*max_memtable).max(s.memtable_bytes);
        db.close().expect("close");
    }
}

fn lazy_move(c: &mut Criterion) {
    let keys: Vec<[u8; 16]> = (0..MOVE_KEYS).map(rand_key).collect();
    let order = shuffled(MOVE_KEYS as usize, 3);
    let boundaries = ["4", "8", "c"];

    let mut g = c.benchmark_group("lazy_move");
    // Every moving run costs a database rebuild per 100K gets: keep the group short.
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));

    // Reads that leave the database as it was: cycle through the keys in random order.
    for (name, shape) in [
        ("get/single_layout", Shape::SingleLayout),
        ("get/draining_moves_off", Shape::TwoLayoutsNoMoves),
    ] {
        let (_dir, db) = build_db(MOVE_KEYS, &boundaries, shape);
        let mut cur = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let k = &keys[order[cur]];
                cur = if cur + 1 == order.len() { 0 } else { cur + 1 };
                black_box(db.get(black_box(k)).expect("get").expect("present"))
            })
        });
        assert_eq!(db.stats().lazy_moves, 0);
        db.close().expect("close");
    }

    // Each get queues a move of its key; every key is read once per database. Batches stay
    // under the queue's bound (8192 moves, past which reads skip moving), and the queue is
    // applied between them, untimed. The first database is built here: criterion's warm-up counts the wall-clock time of an `iter_custom` call,
    // untimed setup included, so a rebuild during warm-up would wreck its estimate.
    let (dir, db) = build_db(MOVE_KEYS, &boundaries, Shape::TwoLayoutsMoves);
    let mut live = Some((dir, db, 0usize));
    let (mut gets, mut moves, mut rebuilds, mut max_mem) = (0u64, 0u64, 1u32, 0u64);
    g.bench_function("get/draining_queues_move", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if live.as_ref().is_none_or(|l| l.2 == order.len()) {
                    retire(live.take(), &mut moves, &mut max_mem);
                    let (dir, db) = build_db(MOVE_KEYS, &boundaries, Shape::TwoLayoutsMoves);
                    rebuilds += 1;
                    live = Some((dir, db, 0));
                }
                let (_, db, cur) = live.as_mut().expect("live database");
                let n = left.min((order.len() - *cur) as u64).min(MOVE_BATCH) as usize;
                let batch = &order[*cur..*cur + n];
                let start = Instant::now();
                for &i in batch {
                    black_box(db.get(black_box(&keys[i])).expect("get").expect("present"));
                }
                total += start.elapsed();
                sluice::internals::apply_moves(db);
                *cur += n;
                left -= n as u64;
                gets += n as u64;
            }
            total
        })
    });
    retire(live.take(), &mut moves, &mut max_mem);
    eprintln!(
        "lazy_move/get/draining_queues_move: {gets} gets, {moves} lazy moves, {rebuilds} \
         databases, largest memtable {max_mem} bytes (moves never freeze a memtable)"
    );
    assert_eq!(gets, moves, "every timed get should have moved its key");

    // Keys moved beforehand (now in the memtable, tagged as moved): the read after a move.
    let (_dir, db) = build_db(MOVE_KEYS, &boundaries, Shape::TwoLayoutsMoves);
    for chunk in keys.chunks(MOVE_BATCH as usize) {
        for k in chunk {
            db.get(k).expect("get").expect("present");
        }
        sluice::internals::apply_moves(&db);
    }
    let moved = db.stats().lazy_moves;
    assert_eq!(moved, MOVE_KEYS);
    let mut cur = 0usize;
    g.bench_function("get/already_moved", |b| {
        b.iter(|| {
            let k = &keys[order[cur]];
            cur = if cur + 1 == order.len() { 0 } else { cur + 1 };
            black_box(db.get(black_box(k)).expect("get").expect("present"))
        })
    });
    assert_eq!(
        db.stats().lazy_moves,
        moved,
        "a moved key must not move again"
    );
    db.close().expect("close");
    g.finish();
}

fn forwarding_pointers(c: &mut Criterion) {
    // v1 has two range partitions, "0".."8" and "8"..; every key of partition 0 is moved by
    // a read and the flush writes its forwarding pointers into v1 partition 0.
    let (_dir, db) = build_db(POINTER_KEYS, &["8"], Shape::TwoLayoutsMoves);
    let keys: Vec<[u8; 16]> = (0..POINTER_KEYS).map(rand_key).collect();
    let in_p0 = keys.iter().filter(|k| k[0] < b'8').count() as u64;
    for (i, k) in keys.iter().filter(|k| k[0] < b'8').enumerate() {
        db.get(k).expect("get").expect("present");
        if (i + 1) % MOVE_BATCH as usize == 0 {
            sluice::internals::apply_moves(&db);
        }
    }
    db.flush().expect("flush");
    let scan = |p: u32| -> (u64, u64) {
        let (mut values, mut moved) = (0, 0);
        for e in db.partition_entries(VersionId(1), p).expect("partition") {
            match e.expect("entry") {
                PartitionEntry::Value { .. } => values += 1,
                PartitionEntry::Moved { .. } => moved += 1,
                PartitionEntry::Tombstone { .. } => {}
            }
        }
        (values, moved)
    };
    assert_eq!(
        scan(0),
        (0, in_p0),
        "partition 0 should be all forwarding pointers"
    );
    assert_eq!(
        scan(1),
        (POINTER_KEYS - in_p0, 0),
        "partition 1 should have no pointers"
    );
    eprintln!(
        "forwarding_pointers: v1/0 has {in_p0} moved keys, v1/1 has {} plain keys",
        POINTER_KEYS - in_p0
    );

    let mut g = c.benchmark_group("forwarding_pointers");
    for (name, p, n) in [
        ("partition_scan/all_moved", 0, in_p0),
        ("partition_scan/no_pointers", 1, POINTER_KEYS - in_p0),
    ] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut count = 0u64;
                for e in db.partition_entries(VersionId(1), p).expect("partition") {
                    black_box(e.expect("entry"));
                    count += 1;
                }
                assert_eq!(count, n);
            })
        });
    }
    g.finish();
    db.close().expect("close");
}

/// Keys of the live-layouts database.
const LAYOUT_KEYS: u64 = 200_000;

/// `live_layouts`: point gets (of present and of absent keys) with three layouts live —
/// v1 range (4 partitions) keeping ~60% of the data, v2 hash:4 the rest, v3 hash:8 the
/// target, holding a tenth of the keys overwritten — then on the same data once it is all
/// in v3 (`one_layout`: migrated, not compacted further, as the three layouts were not),
/// and once that is compacted (`one_layout_compacted`). Like the `migration3` scenario of
/// `sluice-stress`, small enough to stay in cache, so it times the read path's work per
/// layout rather than memory latency. Background migration and lazy moves are off.
fn live_layouts(c: &mut Criterion) {
    let (_dir, db) = build_db(LAYOUT_KEYS, &["4", "8", "c"], Shape::SingleLayout);
    let v2 = db
        .register_partition_fn(PartitionSpec::hashed(4, 7))
        .expect("register v2");
    db.set_target(v2).expect("target v2");
    let total = db.migration_progress().bytes_left();
    db.migrate_now(Some(total * 2 / 5)).expect("migrate 40%");
    let v3 = db
        .register_partition_fn(PartitionSpec::hashed(8, 9))
        .expect("register v3");
    db.set_target(v3).expect("target v3");
    for i in (0..LAYOUT_KEYS).step_by(10) {
        db.put(rand_key(i), value(i + 1)).expect("overwrite");
    }
    db.flush().expect("flush");
    let present: Vec<[u8; 16]> = shuffled(LAYOUT_KEYS as usize, 5)
        .into_iter()
        .map(|i| rand_key(i as u64))
        .collect();
    let absent: Vec<[u8; 16]> = (LAYOUT_KEYS..2 * LAYOUT_KEYS).map(rand_key).collect();
    let mut g = c.benchmark_group("live_layouts");
    g.throughput(Throughput::Elements(1));
    let run = |g: &mut criterion::BenchmarkGroup<_>, db: &Db, layouts: &str| {
        for (kind, keys, found) in [("hit", &present, true), ("miss", &absent, false)] {
            let mut cur = 0usize;
            g.bench_function(format!("get_{kind}/{layouts}"), |b| {
                b.iter(|| {
                    let k = &keys[cur];
                    cur = if cur + 1 == keys.len() { 0 } else { cur + 1 };
                    let v = db.get(black_box(k)).expect("get");
                    assert_eq!(v.is_some(), found);
                    black_box(v)
                })
            });
        }
    };
    assert_eq!(db.layout().versions.len(), 3, "three layouts live");
    run(&mut g, &db, "three_layouts");
    // The same data in v3 alone, not compacted further (as the three layouts were not):
    // the like-for-like single-version read. Then compacted, for reference.
    db.migrate_now(None).expect("migrate the rest");
    db.retire_drained().expect("retire the drained layouts");
    assert_eq!(db.layout().versions.len(), 1, "one layout live");
    run(&mut g, &db, "one_layout");
    db.compact().expect("compact");
    run(&mut g, &db, "one_layout_compacted");
    assert_eq!(db.stats().lazy_moves, 0);
    g.finish();
    db.close().expect("close");
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = lazy_move, forwarding_pointers, live_layouts
}
criterion_main!(benches);
