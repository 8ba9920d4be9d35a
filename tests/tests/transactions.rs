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
