//! Shared by the CLI tests and `examples/fixture.rs`: a small database built
//! deterministically through the engine API, and helpers to run the `sluice` binary.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::path::Path;

use sluice::{Db, Options, PartitionSpec, WriteBatch};

/// Options that make the fixture deterministic: no automatic flush or compaction, no
/// background migration; lazy moves on (for forwarding pointers).
pub fn fixture_options() -> Options {
    Options {
        partition: PartitionSpec::Range {
            boundaries: vec![b"acct00000400".to_vec(), b"acct00000800".to_vec()],
        },
        memtable_bytes: 4 << 20,
        block_size: 256,
        level0_compaction_trigger: 100,
        level0_slowdown_trigger: 200,
        level0_stop_trigger: 300,
        migration_bytes_per_sec: 0,
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        background_threads: 1,
        ..Options::default()
    }
}

pub fn account(i: u32) -> String {
    format!("acct{i:08}")
}

/// A ledger-like database caught mid-migration:
/// - v1 `range:acct00000400,acct00000800` (3 partitions), compacted, then updated and
///   partly deleted in L0; draining;
/// - v2 `hash:4:7`, the target, holding new writes, lazily moved values, and the output of
///   one migration compaction; v1 holds the forwarding pointers of the lazy moves;
/// - v3 `hash:16:7:4` registered as a candidate (the biased prefix hash);
/// - a few writes only in the WAL.
pub fn build_fixture(dir: &Path) {
    let db = Db::open(dir, fixture_options()).expect("open fixture");
    for chunk in 0..12u32 {
        let mut b = WriteBatch::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            b.put(account(i), format!("balance={}", (i * 7919) % 1000));
        }
        db.write(b).unwrap();
    }
    db.flush().unwrap();
    db.compact().unwrap();
    let mut b = WriteBatch::new();
    for i in (0..1200u32).step_by(12) {
        b.put(account(i), format!("balance={}", (i * 31) % 1000));
    }
    for i in (5..1200u32).step_by(60) {
        b.delete(account(i));
    }
    db.write(b).unwrap();
    db.flush().unwrap();

    let v2 = db
        .register_partition_fn(PartitionSpec::Hash {
            partitions: 4,
            seed: 7,
            hashed_prefix: None,
        })
        .unwrap();
    db.set_target(v2).unwrap();
    for i in 1200..1260u32 {
        db.put(account(i), format!("balance={i}")).unwrap();
    }
    db.put(account(3), "balance=updated-in-v2").unwrap();
    db.flush().unwrap();
    // Point reads at the latest snapshot move values out of the draining layout.
    for i in [17u32, 18, 450, 451, 900, 901] {
        assert!(db.get(account(i)).unwrap().is_some());
    }
    db.flush().unwrap();
    // One migration compaction, then stop: a partial migration.
    db.migrate_now(Some(1)).unwrap();
    db.register_partition_fn(PartitionSpec::Hash {
        partitions: 16,
        seed: 7,
        hashed_prefix: Some(4),
    })
    .unwrap();
    let mut b = WriteBatch::new();
    b.put("acct99999999", "in the WAL only").delete(account(1));
    db.write(b).unwrap();
    db.put(b"zz\x00binary\xffkey", [0u8, 1, 2, 255]).unwrap();
    db.close().unwrap();
}
