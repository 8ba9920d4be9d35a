//! Hot partitions named from the engine's own counters: a burst of one commit, or of a few
//! transactions' or scans' reads, is not a hot partition; sustained traffic from many
//! writers or readers is.

use sluice::{Db, Options, PartitionSpec, WriteBatch};
use sluice_migrate::hot::hot_partitions;

/// Four range partitions: keys from "a", "b", "c" and "d" on.
fn four_ranges(dir: &std::path::Path) -> Db {
    let opts = Options {
        partition: PartitionSpec::Range {
            boundaries: vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()],
        },
        migration_bytes_per_sec: 0,
        ..Options::tiny()
    };
    Db::open(dir, opts).unwrap()
}

/// `n` reads into each partition, each its own operation.
fn even_reads(db: &Db, n: u32) {
    for i in 0..n {
        for p in ["a", "b", "c", "d"] {
            db.get(format!("{p}{i:05}")).unwrap();
        }
    }
}

/// One commit (a batch, or a transaction) writing `keys` keys of one partition is one
/// event, however many keys it holds: over otherwise even traffic it names no partition
/// hot. The engine counts each key of a batch as an operation, and the significance test
/// took the keys for independent operations: 100 reads per partition and one 200-key
/// batch into partition 2 (twice the mean share) named it hot, as did three 100-key
/// transactions.
#[test]
fn a_burst_of_a_few_large_commits_is_not_a_hot_partition() {
    let dir = tempfile::tempdir().unwrap();
    let db = four_ranges(dir.path());
    even_reads(&db, 100);
    let mut batch = WriteBatch::new();
    for i in 0..200 {
        batch.put(format!("c{i:05}"), "v");
    }
    db.write(batch).unwrap();
    let load = db.partition_load();
    assert_eq!(load.ops(), vec![100, 100, 300, 100]);
    assert_eq!(
        hot_partitions(&load, 2.0).unwrap(),
        Vec::<u32>::new(),
        "one 200-key batch named its partition hot"
    );

    let dir = tempfile::tempdir().unwrap();
    let db = four_ranges(dir.path());
    even_reads(&db, 100);
    for t in 0..3 {
        let mut txn = db.transaction();
        for i in 0..100 {
            txn.put(format!("c{t}{i:05}"), "v");
        }
        txn.commit().unwrap();
    }
    let load = db.partition_load();
    assert_eq!(load.ops(), vec![100, 100, 400, 100]);
    assert_eq!(
        hot_partitions(&load, 2.0).unwrap(),
        Vec::<u32>::new(),
        "three 100-key transactions named their partition hot"
    );
}

/// The same shares from many independent writers are a hot partition: single puts, and
/// two-key transfers (a debit and a credit) too.
#[test]
fn many_writers_taking_twice_the_mean_share_are_a_hot_partition() {
    let dir = tempfile::tempdir().unwrap();
    let db = four_ranges(dir.path());
    for i in 0..100 {
        for p in ["a", "b", "c", "c", "c", "d"] {
            db.put(format!("{p}{i:05}"), "v").unwrap();
        }
    }
    assert_eq!(db.partition_load().ops(), vec![100, 100, 300, 100]);
    assert_eq!(hot_partitions(&db.partition_load(), 2.0).unwrap(), vec![2]);

    let dir = tempfile::tempdir().unwrap();
    let db = four_ranges(dir.path());
    for i in 0..50 {
        for p in ["a", "b", "c", "c", "c", "d"] {
            let mut txn = db.transaction();
            txn.put(format!("{p}{i:05}x"), "debit");
            txn.put(format!("{p}{i:05}y"), "credit");
            txn.commit().unwrap();
        }
    }
    assert_eq!(db.partition_load().ops(), vec![100, 100, 300, 100]);
    assert_eq!(hot_partitions(&db.partition_load(), 2.0).unwrap(), vec![2]);
}

/// The partitions named hot at a factor of 2, once the operations counted per partition
/// are checked to be `ops`.
fn hot_with_ops(db: &Db, ops: [u64; 4]) -> Vec<u32> {
    let load = db.partition_load();
    assert_eq!(load.ops(), ops);
    hot_partitions(&load, 2.0).unwrap()
}

/// Over 100 point reads per partition, `n` transactions each reading `keys` keys of
/// partition 2 (keys from "c"), committed: the partitions named hot (see [`hot_with_ops`]).
fn transactions_reading_partition_2(n: u32, keys: u32, ops: [u64; 4]) -> Vec<u32> {
    let dir = tempfile::tempdir().unwrap();
    let db = four_ranges(dir.path());
    even_reads(&db, 100);
    for t in 0..n {
        let mut txn = db.transaction();
        for i in 0..keys {
            assert_eq!(txn.get(format!("c{t:03}{i:05}")).unwrap(), None);
        }
        txn.commit().unwrap();
    }
    hot_with_ops(&db, ops)
}

/// A transaction's reads in one partition are one event, as its writes are: a few
/// transactions each reading 200 keys of a partition name it hot no more than a few
/// 200-key batches do. Each key a transaction read was counted as an independent reader,
/// and three of them over otherwise even reads named their partition hot. Many such
/// transactions, consistently on one partition, still do.
#[test]
fn a_few_transactions_reading_many_keys_are_not_a_hot_partition() {
    assert_eq!(
        transactions_reading_partition_2(3, 200, [100, 100, 700, 100]),
        Vec::<u32>::new(),
        "three transactions reading 200 keys each named their partition hot"
    );
    assert_eq!(
        transactions_reading_partition_2(30, 200, [100, 100, 6100, 100]),
        vec![2]
    );
}

/// Over 100 point reads per partition, one batch writing `keys` keys of partition 2 (keys
/// from "c"), and `n` scans of them all: the partitions named hot (see [`hot_with_ops`]).
fn scans_of_partition_2(n: u32, keys: u32, ops: [u64; 4]) -> Vec<u32> {
    let dir = tempfile::tempdir().unwrap();
    let db = four_ranges(dir.path());
    even_reads(&db, 100);
    let mut batch = WriteBatch::new();
    for i in 0..keys {
        batch.put(format!("c{i:05}"), "v");
    }
    db.write(batch).unwrap();
    for _ in 0..n {
        assert_eq!(db.prefix("c").count(), keys as usize);
    }
    hot_with_ops(&db, ops)
}

/// Scans are reads: a partition that many scans read, and little else did, is a hot
/// partition (it was invisible: scans were not counted at all). One scan of as many keys
/// is one reader, and names nothing.
#[test]
fn a_partition_scanned_often_is_a_hot_partition() {
    assert_eq!(
        scans_of_partition_2(100, 20, [100, 100, 2120, 100]),
        vec![2],
        "100 scans of partition 2 went unseen"
    );
    assert_eq!(
        scans_of_partition_2(1, 300, [100, 100, 700, 100]),
        Vec::<u32>::new(),
        "one 300-key scan named its partition hot"
    );
}
