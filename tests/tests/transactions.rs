//! Optimistic transactions: conflicts, serializability under concurrency, and through
//! migration, retarget, rollback and lazy moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice::{Db, Error, Options, PartitionSpec};

fn balance(v: Option<bytes::Bytes>) -> i64 {
    v.map(|b| std::str::from_utf8(&b).unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn stale_read_conflicts_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.put("a", "1").unwrap();
    let mut t = db.transaction();
    assert_eq!(balance(t.get("a").unwrap()), 1);
    t.put("b", "x");
    db.put("a", "2").unwrap(); // someone else changes what t read
    let e = t.commit().unwrap_err();
    assert!(matches!(&e, Error::Conflict { key } if key == b"a"), "{e}");
    assert_eq!(db.get("b").unwrap(), None);
    // A delete is a change too.
    let mut t = db.transaction();
    t.get("a").unwrap();
    t.put("c", "y");
    db.delete("a").unwrap();
    assert!(matches!(t.commit(), Err(Error::Conflict { .. })));
    // Writes to keys it did not read do not conflict; own writes are read back.
    let mut t = db.transaction();
    t.put("d", "1");
    assert_eq!(t.get("d").unwrap().as_deref(), Some(&b"1"[..]));
    db.put("e", "unrelated").unwrap();
    t.commit().unwrap();
    assert_eq!(db.get("d").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn conflict_is_detected_after_the_write_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    db.put("a", "1").unwrap();
    let mut t = db.transaction();
    t.get("a").unwrap();
    db.put("a", "2").unwrap();
    db.flush().unwrap();
    db.compact().unwrap();
    t.put("a", "3");
    assert!(matches!(t.commit(), Err(Error::Conflict { .. })));
    assert_eq!(balance(db.get("a").unwrap()), 2);
}

/// A synced commit is a barrier whatever the transaction wrote: one that only read an
/// acknowledged, unsynced value and committed with `sync` confirmed that value durable, so
/// it survives a power cut, as it does after an empty synced batch. (Found by an audit: a read-only
/// transaction's `sync` was dropped, and the value was gone after the cut.)
#[test]
fn a_synced_read_only_transaction_is_a_barrier() {
    use sluice::fs::FaultFs;
    use sluice::{WriteBatch, WriteOptions};
    let synced = WriteOptions { sync: true };
    for read_only_txn in [false, true] {
        let what = if read_only_txn {
            "a synced read-only transaction"
        } else {
            "a synced empty batch"
        };
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = || Options {
            fs: Arc::new(fs.clone()),
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        db.put("x", "1").unwrap();
        if read_only_txn {
            let mut t = db.transaction();
            assert_eq!(balance(t.get("x").unwrap()), 1);
            t.commit_opt(&synced).unwrap();
        } else {
            db.write_opt(WriteBatch::new(), &synced).unwrap();
        }
        fs.power_cut(db).unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        assert_eq!(balance(db.get("x").unwrap()), 1, "{what}");
        db.close().unwrap();
    }
}

/// Concurrent transfers between accounts spread over partitions, while the layout changes
/// under them (range -> biased hash -> corrected hash, a rollback, lazy moves and background
/// migration). The sum of balances must never change, at any snapshot.
#[test]
fn transfers_keep_the_sum_through_migration_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        partition: PartitionSpec::Range {
            boundaries: vec![b"acct-1".to_vec(), b"acct-2".to_vec(), b"acct-3".to_vec()],
        },
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        migration_bytes_per_sec: 8 << 20,
        ..Options::tiny()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    const ACCOUNTS: u32 = 64;
    const START: i64 = 1000;
    let acct = |i: u32| format!("acct-{}{:03}", i % 4, i);
    for i in 0..ACCOUNTS {
        db.put(acct(i), START.to_string()).unwrap();
    }
    db.flush().unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let (db, committed, conflicts, stop) = (
            db.clone(),
            committed.clone(),
            conflicts.clone(),
            stop.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let mut x = w * 7919 + 1;
            while !stop.load(Ordering::Relaxed) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let from = (x >> 33) as u32 % ACCOUNTS;
                let to = (x >> 13) as u32 % ACCOUNTS;
                if from == to {
                    continue;
                }
                let amount = (x % 50) as i64;
                let mut t = db.transaction();
                let a = balance(t.get(acct(from)).unwrap());
                let b = balance(t.get(acct(to)).unwrap());
                t.put(acct(from), (a - amount).to_string());
                t.put(acct(to), (b + amount).to_string());
                match t.commit() {
                    Ok(()) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Conflict { .. }) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let sum = |db: &Db| -> i64 {
        let snap = db.snapshot();
        (0..ACCOUNTS)
            .map(|i| balance(snap.get(acct(i)).unwrap()))
            .sum()
    };
    let scan_sum = |db: &Db| -> i64 {
        db.range("acct-".."acct.")
            .map(|r| balance(Some(r.unwrap().1)))
            .sum()
    };
    let expect = ACCOUNTS as i64 * START;
    let step = |db: &Db| {
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(sum(db), expect);
        assert_eq!(scan_sum(db), expect);
        // Lazy moves: point reads at the latest snapshot.
        for i in 0..ACCOUNTS {
            db.get(acct(i)).unwrap();
        }
    };
    step(&db);
    let v2 = db
        .register_partition_fn(PartitionSpec::Hash {
            partitions: 4,
            seed: 3,
            hashed_prefix: Some(5),
        })
        .unwrap();
    db.set_target(v2).unwrap();
    step(&db);
    db.migrate_now(Some(4096)).unwrap();
    step(&db);
    let v3 = db
        .register_partition_fn(PartitionSpec::Hash {
            partitions: 4,
            seed: 99,
            hashed_prefix: None,
        })
        .unwrap();
    // v2 is the rollback target: keep it live even if the pacer drains it empty.
    db.pin_version(v2, true).unwrap();
    db.set_target(v3).unwrap();
    step(&db);
    // Rollback; v3 stays pinned so going forward again can reuse it even if it drains.
    db.pin_version(v3, true).unwrap();
    db.set_target(v2).unwrap();
    step(&db);
    db.set_target(v3).unwrap();
    db.pin_version(v2, false).unwrap();
    db.pin_version(v3, false).unwrap();
    step(&db);
    db.migrate_now(None).unwrap();
    step(&db);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(sum(&db), expect);
    assert!(committed.load(Ordering::Relaxed) > 50, "{committed:?}");
    let layout = db.layout();
    assert_eq!(layout.target, v3);
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(sum(&db), expect);
}

/// Transactions that read hundreds of keys (checked in two steps: up to a mark outside the
/// WAL lock, then only the writes made after it) stay serializable against each other and
/// against small ones, through flushes: every committed increment of a shared counter is
/// counted once, and so is every committed increment of an account.
#[test]
fn large_read_sets_lose_no_update_under_concurrency() {
    const ACCOUNTS: u32 = 400;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    let acct = |i: u32| format!("acct{i:04}");
    for i in 0..ACCOUNTS {
        db.put(acct(i), "0").unwrap();
    }
    db.put("counter", "0").unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let big_committed = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (db, committed, big_committed, conflicts) = (
                db.clone(),
                committed.clone(),
                big_committed.clone(),
                conflicts.clone(),
            );
            std::thread::spawn(move || {
                let big = t < 2;
                let mut x = t * 7919 + 1;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..600 {
                    loop {
                        let mut tx = db.transaction();
                        let c = balance(tx.get("counter").unwrap());
                        tx.put("counter", (c + 1).to_string());
                        if big {
                            let start = (next() % u64::from(ACCOUNTS)) as u32;
                            for i in 0..200 {
                                tx.get(acct((start + i) % ACCOUNTS)).unwrap();
                            }
                            let a = acct((start + (next() % 200) as u32) % ACCOUNTS);
                            let v = balance(tx.get(&a).unwrap());
                            tx.put(&a, (v + 1).to_string());
                        }
                        match tx.commit() {
                            Ok(()) => {
                                committed.fetch_add(1, Ordering::Relaxed);
                                if big {
                                    big_committed.fetch_add(1, Ordering::Relaxed);
                                }
                                break;
                            }
                            Err(Error::Conflict { .. }) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = committed.load(Ordering::Relaxed);
    assert_eq!(n, 2400);
    assert_eq!(balance(db.get("counter").unwrap()), n as i64);
    let sum: i64 = (0..ACCOUNTS)
        .map(|i| balance(db.get(acct(i)).unwrap()))
        .sum();
    assert_eq!(sum, big_committed.load(Ordering::Relaxed) as i64);
    assert!(conflicts.load(Ordering::Relaxed) > 0, "no race was run");
    eprintln!(
        "{n} commits, {} conflicts",
        conflicts.load(Ordering::Relaxed)
    );
    db.close().unwrap();
}

/// A randomized serializability check through layout churn: worker threads run
/// write-skew withdrawals (read x and y, write one of them, only if x + y stays >= 0),
/// deposits (read-modify-write of one key) and toggles of a key that may not exist (read,
/// then insert if absent, delete if present), while another thread retargets, rolls back,
/// migrates, flushes, compacts and reads at the latest state (lazy moves). Every snapshot
/// must show x + y >= 0; at the end every pair holds its start plus every committed delta,
/// and every toggled key is present exactly when its committed inserts outnumber its
/// committed deletes. One transaction in eight is slow (a flush, a pause) so that its check
/// meets tables, not only memtables. Longer or heavier runs: `TXN_CHURN_SECS`,
/// `TXN_CHURN_SEED`, `TXN_CHURN_PAIRS`, `TXN_CHURN_PAD` (value padding, bytes). (Checked
/// against mutants: skipping the read-set check, the table probe of `changed_since`, or the
/// after-mark lookup of a large read set each fail it within seconds.)
#[test]
fn write_skew_and_phantoms_are_refused_through_layout_churn() {
    use std::sync::atomic::{AtomicBool, AtomicI64};
    let pairs: usize = std::env::var("TXN_CHURN_PAIRS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    let padding: usize = std::env::var("TXN_CHURN_PAD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let pad = move |n: i64| format!("{n}|{}", "p".repeat(padding));
    fn bal(v: Option<bytes::Bytes>) -> i64 {
        v.map(|b| {
            let s = std::str::from_utf8(&b).unwrap();
            s.split('|').next().unwrap().parse().unwrap()
        })
        .unwrap_or(0)
    }
    const START: i64 = 40;
    let secs: u64 = std::env::var("TXN_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("TXN_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        partition: PartitionSpec::Range {
            boundaries: vec![b"p04".to_vec(), b"p08".to_vec(), b"z".to_vec()],
        },
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        migration_bytes_per_sec: 8 << 20,
        ..Options::tiny()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let x = |i: usize| format!("p{i:02}-x");
    let y = |i: usize| format!("p{i:02}-y");
    let z = |i: usize| format!("z{i:02}");
    for i in 0..pairs {
        db.put(x(i), pad(START / 2)).unwrap();
        db.put(y(i), pad(START / 2)).unwrap();
    }
    db.flush().unwrap();
    let deltas: Arc<Vec<AtomicI64>> = Arc::new((0..pairs).map(|_| AtomicI64::new(0)).collect());
    let toggles: Arc<Vec<AtomicI64>> = Arc::new((0..pairs).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..4u64 {
        let (db, deltas, toggles, stop, committed) = (
            db.clone(),
            deltas.clone(),
            toggles.clone(),
            stop.clone(),
            committed.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut r = w * 7919 + 17 + seed;
            let mut next = move || {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                r
            };
            while !stop.load(Ordering::Relaxed) {
                // Hot pairs half the time; cold ones stay in tables long enough to move.
                let i = if next() % 2 == 0 {
                    (next() % 4) as usize
                } else {
                    (next() % pairs as u64) as usize
                };
                let op = next() % 5;
                let mut t = db.transaction();
                if op == 4 {
                    // A large read set (checked in two steps): every pair, then a withdrawal.
                    for j in 0..pairs {
                        t.get(x(j)).unwrap();
                        t.get(y(j)).unwrap();
                    }
                }
                let (delta, toggle) = match op {
                    0 | 1 | 4 => {
                        let a = bal(t.get(x(i)).unwrap());
                        let b = bal(t.get(y(i)).unwrap());
                        let amt = (next() % 30) as i64 + 1;
                        if a + b < amt {
                            continue;
                        }
                        if next() % 2 == 0 {
                            t.put(x(i), pad(a - amt));
                        } else {
                            t.put(y(i), pad(b - amt));
                        }
                        (-amt, 0)
                    }
                    2 => {
                        let k = if next() % 2 == 0 { x(i) } else { y(i) };
                        let amt = (next() % 20) as i64 + 1;
                        let a = bal(t.get(&k).unwrap());
                        t.put(&k, pad(a + amt));
                        (amt, 0)
                    }
                    _ => match t.get(z(i)).unwrap() {
                        None => {
                            t.put(z(i), format!("{w}"));
                            (0, 1)
                        }
                        Some(_) => {
                            t.delete(z(i));
                            (0, -1)
                        }
                    },
                };
                if next() % 8 == 0 {
                    // A slow transaction: flushes, migration and retargets land between
                    // its reads and its commit, so its check meets the tables.
                    if next() % 2 == 0 {
                        db.flush().unwrap();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(next() % 4));
                }
                match t.commit() {
                    Ok(()) => {
                        deltas[i].fetch_add(delta, Ordering::Relaxed);
                        toggles[i].fetch_add(toggle, Ordering::Relaxed);
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    // Layout churn.
    let churn = {
        let (db, stop) = (db.clone(), stop.clone());
        let keys: Vec<String> = (0..pairs).flat_map(|i| [x(i), y(i), z(i)]).collect();
        std::thread::spawn(move || sluice_tests::churn_layout(&db, &stop, seed, &keys))
    };
    // Checker: every snapshot keeps x + y >= 0 for each pair.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        let s = db.snapshot();
        for i in 0..pairs {
            let a = bal(s.get(x(i)).unwrap());
            let b = bal(s.get(y(i)).unwrap());
            assert!(
                a + b >= 0,
                "write skew: pair {i} at seqno {}: {a} + {b}",
                s.seqno()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let rollbacks = churn.join().unwrap();
    let check = |db: &Db| {
        for i in 0..pairs {
            let a = bal(db.get(x(i)).unwrap());
            let b = bal(db.get(y(i)).unwrap());
            assert_eq!(
                a + b,
                START + deltas[i].load(Ordering::Relaxed),
                "pair {i}: lost or duplicated update"
            );
            let n = toggles[i].load(Ordering::Relaxed);
            assert!(n == 0 || n == 1, "key z{i}: {n} inserts more than deletes");
            assert_eq!(db.get(z(i)).unwrap().is_some(), n == 1, "key z{i}");
        }
    };
    check(&db);
    let st = db.stats();
    eprintln!(
        "{} commits; {} rollbacks; {} layouts; {} flushes, {} lazy moves, {} migrated bytes",
        committed.load(Ordering::Relaxed),
        rollbacks,
        db.layout().target.0,
        st.flushes,
        st.lazy_moves,
        st.migration_bytes_read,
    );
    assert!(committed.load(Ordering::Relaxed) > 100);
    db.close().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    check(&db);
}

/// Moving data is not writing it: transactions (small and large read sets) that read keys
/// before the layout changed under them, with lazy moves, migration, a rollback and
/// compaction in between, and unrelated writes that make every new table's seqnos reach
/// past their snapshots, still commit.
#[test]
fn moves_between_read_and_commit_do_not_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        migration_bytes_per_sec: 0,
        ..Options::tiny()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let key = |i: u32| format!("k{i:04}");
    for i in 0..300 {
        db.put(key(i), format!("{i:0100}")).unwrap();
    }
    db.flush().unwrap();
    db.compact().unwrap();
    let mut small = db.transaction();
    let mut large = db.transaction();
    for i in 0..3 {
        small.get(key(i * 97)).unwrap().unwrap();
    }
    for i in 0..300 {
        large.get(key(i)).unwrap().unwrap();
    }
    small.put("out-small", "1");
    large.put("out-large", "1");
    let v1 = db.layout().target;
    let unrelated = |n: u32| {
        for i in 0..50 {
            db.put(format!("u{n}-{i}"), "x").unwrap();
        }
    };
    let v2 = db
        .register_partition_fn(PartitionSpec::hashed(4, 7))
        .unwrap();
    db.pin_version(v1, true).unwrap();
    db.set_target(v2).unwrap();
    unrelated(0);
    for i in 0..300 {
        db.get(key(i)).unwrap();
    }
    db.flush().unwrap();
    unrelated(1);
    db.migrate_now(Some(4096)).unwrap();
    db.pin_version(v2, true).unwrap();
    db.set_target(v1).unwrap(); // rollback
    unrelated(2);
    for i in 0..300 {
        db.get(key(i)).unwrap();
    }
    db.flush().unwrap();
    db.migrate_now(Some(4096)).unwrap();
    db.set_target(v2).unwrap();
    for i in 0..300 {
        db.get(key(i)).unwrap();
    }
    unrelated(3);
    db.flush().unwrap();
    db.compact().unwrap();
    db.pin_version(v1, false).unwrap();
    db.migrate_now(None).unwrap();
    let s = db.stats();
    assert!(s.lazy_moves > 0 && s.migration_bytes_read > 0, "{s:?}");
    small
        .commit()
        .expect("a small read set: nothing it read was written");
    large
        .commit()
        .expect("a large read set: nothing it read was written");
}
