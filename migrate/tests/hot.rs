//! Hot partitions named from the engine's own counters: a burst of one commit is not a hot
//! partition, sustained traffic from many writers is.

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
