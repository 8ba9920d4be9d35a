//! The public API's semantics as a RocksDB user expects them: several ops on one key in a
//! batch, edge keys (empty, 0x00/0xff runs, the longest), every bound kind, prefixes ending in
//! 0xff, iterators drained from both ends and held across flushes, compactions, migrations
//! and lazy moves, snapshots, transactions, closed handles and bad version ids. The
//! randomized part checks against a map; `SLUICE_SEEDS`/`SLUICE_SEED` as elsewhere.

use std::ops::Bound;

use sluice::{
    Db, Error, Options, PartitionSpec, WriteBatch, WriteOptions, MAX_KEY_LEN, MAX_VALUE_LEN,
};

fn keys(it: sluice::DbIter) -> Vec<Vec<u8>> {
    it.map(|r| r.unwrap().0.to_vec()).collect()
}

#[test]
fn a_batch_with_several_ops_on_one_key_keeps_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    let mut b = WriteBatch::new();
    b.put("k", "1")
        .delete("k")
        .put("k", "2")
        .put("j", "x")
        .delete("j");
    db.write(b).unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get("j").unwrap(), None);
    assert_eq!(keys(db.range(..)), vec![b"k".to_vec()]);
    db.flush().unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get("j").unwrap(), None);
    assert_eq!(keys(db.range(..)), vec![b"k".to_vec()]);
    db.compact().unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(keys(db.range(..)), vec![b"k".to_vec()]);
    let p = dir.path().to_path_buf();
    db.close().unwrap();
    let db = Db::open(&p, Options::tiny()).unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get("j").unwrap(), None);
    let mut b = WriteBatch::new();
    b.put("m", "1").delete("m");
    db.write(b).unwrap();
    db.close().unwrap();
    let db = Db::open(&p, Options::tiny()).unwrap();
    assert_eq!(db.get("m").unwrap(), None);
    assert_eq!(keys(db.range(..)), vec![b"k".to_vec()]);
}

#[test]
fn every_bound_kind_and_0xff_prefixes_from_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    for k in [
        &b""[..],
        b"\x00",
        b"a",
        b"a\x00",
        b"a\xff",
        b"b",
        b"\xff",
        b"\xff\xff",
    ] {
        db.put(k, k).unwrap();
    }
    let big = vec![0xffu8; MAX_KEY_LEN];
    db.put(&big, "").unwrap();
    for pass in 0..3 {
        let ks = |lo: Bound<&[u8]>, hi: Bound<&[u8]>| keys(db.range((lo, hi)));
        use Bound::*;
        assert!(ks(Included(b"b"), Included(b"a")).is_empty(), "{pass}");
        assert!(ks(Excluded(b"a"), Excluded(b"a")).is_empty(), "{pass}");
        assert!(ks(Included(b"a"), Excluded(b"a")).is_empty(), "{pass}");
        assert!(ks(Excluded(b"a"), Included(b"a")).is_empty(), "{pass}");
        assert_eq!(
            ks(Included(b"a"), Included(b"a")),
            vec![b"a".to_vec()],
            "{pass}"
        );
        assert_eq!(
            ks(Included(b""), Included(b"")),
            vec![b"".to_vec()],
            "{pass}"
        );
        assert_eq!(
            ks(Unbounded, Excluded(b"\x00")),
            vec![b"".to_vec()],
            "{pass}"
        );
        assert_eq!(
            ks(Excluded(b""), Excluded(b"a")),
            vec![b"\x00".to_vec()],
            "{pass}"
        );
        assert_eq!(
            keys(db.prefix(b"a")),
            vec![b"a".to_vec(), b"a\x00".to_vec(), b"a\xff".to_vec()],
            "{pass}"
        );
        assert_eq!(keys(db.prefix(b"a\xff")), vec![b"a\xff".to_vec()], "{pass}");
        assert_eq!(keys(db.prefix(b"\xff")).len(), 3, "{pass}");
        assert_eq!(keys(db.prefix(b"")).len(), 9, "{pass}");
        let r: Vec<_> = db
            .prefix(b"\xff")
            .rev()
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        assert_eq!(
            r,
            vec![big.clone(), b"\xff\xff".to_vec(), b"\xff".to_vec()],
            "{pass}"
        );
        // mixing
        let mut it = db.range(..);
        let mut got = Vec::new();
        let mut back = Vec::new();
        let mut i = 0;
        loop {
            let x = if i % 3 == 0 {
                it.next_back().map(|r| (r, true))
            } else {
                it.next().map(|r| (r, false))
            };
            match x {
                None => break,
                Some((r, b)) => {
                    let k = r.unwrap().0.to_vec();
                    if b {
                        back.push(k)
                    } else {
                        got.push(k)
                    }
                }
            }
            i += 1;
        }
        assert!(it.next().is_none() && it.next_back().is_none());
        back.reverse();
        got.extend(back);
        assert_eq!(got, keys(db.range(..)), "{pass}");
        assert_eq!(got.len(), 9);
        if pass == 0 {
            db.flush().unwrap()
        } else {
            db.compact().unwrap()
        }
    }
}

#[test]
fn keys_and_values_past_their_limits_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    let long = vec![1u8; MAX_KEY_LEN + 1];
    assert!(matches!(db.put(&long, "v"), Err(Error::KeyTooLarge { .. })));
    assert!(matches!(db.delete(&long), Err(Error::KeyTooLarge { .. })));
    assert!(
        matches!(db.get(&long), Err(Error::KeyTooLarge { .. }) | Ok(None)),
        "{:?}",
        db.get(&long)
    );
    assert!(matches!(
        db.put("k", vec![0u8; MAX_VALUE_LEN + 1]),
        Err(Error::ValueTooLarge { .. })
    ));
    db.put("k", vec![0u8; MAX_VALUE_LEN]).unwrap();
    db.put(vec![0u8; MAX_KEY_LEN], "").unwrap();
    let mut t = db.transaction();
    t.put(&long, "x");
    assert!(matches!(t.commit(), Err(Error::KeyTooLarge { .. })));
    let mut t = db.transaction();
    t.delete(&long);
    assert!(matches!(t.commit(), Err(Error::KeyTooLarge { .. })));
    assert!(
        matches!(
            db.set_target(sluice::VersionId(99)),
            Err(Error::UnknownVersion(99))
        ),
        "{:?}",
        db.set_target(sluice::VersionId(99))
    );
    assert!(db.retire_version(sluice::VersionId(99)).is_err());
    assert!(db.pin_version(sluice::VersionId(99), true).is_err());
    assert!(matches!(
        db.set_target(sluice::VersionId(0)),
        Err(Error::UnknownVersion(0))
    ));
    assert!(matches!(
        db.retire_version(sluice::VersionId(1)),
        Err(Error::LayoutRefused(_))
    ));
    let s = db.snapshot();
    assert!(matches!(s.get(&long), Err(Error::KeyTooLarge { .. })));
    let mut b = WriteBatch::new();
    b.put("ok", "1").put(&long, "2");
    assert!(db.write(b).is_err());
    assert_eq!(db.get("ok").unwrap(), None);
    db.write_opt(WriteBatch::new(), &WriteOptions { sync: true })
        .unwrap();
    db.write_opt(WriteBatch::new(), &WriteOptions { sync: false })
        .unwrap();
}

#[test]
fn transactions_read_their_own_writes_and_commit_after_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    db.put("a", "1").unwrap();
    let mut t = db.transaction();
    t.delete("a");
    assert_eq!(t.get("a").unwrap(), None);
    t.put("a", "2");
    assert_eq!(t.get("a").unwrap().as_deref(), Some(&b"2"[..]));
    t.put("b", "");
    assert_eq!(t.get("b").unwrap().as_deref(), Some(&b""[..]));
    t.commit().unwrap();
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get("b").unwrap().as_deref(), Some(&b""[..]));
    let mut t = db.transaction();
    t.put("c", "1");
    let t2 = db.transaction();
    drop(t2);
    let p = dir.path().to_path_buf();
    db.close().unwrap();
    let r = t.commit();
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    let db = Db::open(&p, Options::tiny()).unwrap();
    assert_eq!(db.get("c").unwrap(), None);
}

#[test]
fn snapshots_and_iterators_held_across_deletes_compaction_and_migration() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    for i in 0..200u32 {
        db.put(format!("k{i:04}"), format!("v{i}")).unwrap();
    }
    db.flush().unwrap();
    let s = db.snapshot();
    let mut it = db.range(..);
    let mut sit = s.range(..);
    let first = it.next().unwrap().unwrap();
    assert_eq!(&first.0[..], b"k0000");
    let last = sit.next_back().unwrap().unwrap();
    assert_eq!(&last.0[..], b"k0199");
    for i in 0..200u32 {
        if i % 2 == 0 {
            db.delete(format!("k{i:04}")).unwrap()
        } else {
            db.put(format!("k{i:04}"), "new").unwrap()
        }
    }
    db.compact().unwrap();
    let v2 = db
        .register_partition_fn(PartitionSpec::Hash {
            partitions: 4,
            seed: 3,
            hashed_prefix: None,
        })
        .unwrap();
    db.set_target(v2).unwrap();
    db.migrate_now(None).unwrap();
    db.compact().unwrap();
    for i in 0..200u32 {
        assert_eq!(
            s.get(format!("k{i:04}")).unwrap().as_deref(),
            Some(format!("v{i}").as_bytes())
        );
    }
    let rest: Vec<_> = it.by_ref().map(|r| r.unwrap()).collect();
    assert_eq!(rest.len(), 199);
    assert!(rest
        .iter()
        .all(|(k, v)| v.starts_with(b"v") && k != "k0000"));
    let back: Vec<_> = sit.by_ref().rev().map(|r| r.unwrap()).collect();
    assert_eq!(back.len(), 199);
    let fresh: Vec<_> = s.range(..).map(|r| r.unwrap()).collect();
    assert_eq!(fresh.len(), 200);
    for (k, v) in &fresh {
        assert_eq!(s.get(k).unwrap().as_ref(), Some(v));
    }
    let cur: Vec<_> = db.range(..).map(|r| r.unwrap()).collect();
    assert_eq!(cur.len(), 100);
    drop(s);
    db.compact().unwrap();
    assert_eq!(db.range(..).count(), 100);
    let p = dir.path().to_path_buf();
    let it2 = db.range(..);
    db.close().unwrap();
    let db2 = Db::open(&p, Options::tiny()).unwrap();
    let r: Vec<_> = it2.collect();
    assert!(matches!(r.as_slice(), [Err(Error::Closed)]), "{r:?}");
    assert_eq!(db2.range(..).count(), 100);
}

type Model = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Keys at the edges of byte order: empty, 0x00 and 0xff runs, the longest key.
fn edge_key(r: &mut rand::rngs::StdRng) -> Vec<u8> {
    use rand::RngExt;
    match r.random_range(0..12) {
        0 => Vec::new(),
        1 => vec![0],
        2 => vec![0xff],
        3 => vec![0xff, 0xff],
        4 => vec![0xff; MAX_KEY_LEN],
        5 => vec![b'a', 0xff],
        6 => vec![b'a', 0],
        7 => vec![b'a'],
        _ => vec![b'a' + r.random_range(0..3u8), r.random_range(0..4u8) * 0x55],
    }
}

fn model_in(m: &Model, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let inside = |k: &Vec<u8>| {
        (match lo {
            Bound::Unbounded => true,
            Bound::Included(s) => k >= s,
            Bound::Excluded(s) => k > s,
        }) && (match hi {
            Bound::Unbounded => true,
            Bound::Included(e) => k <= e,
            Bound::Excluded(e) => k < e,
        })
    };
    m.iter()
        .filter(|(k, _)| inside(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Drains `it` taking from either end at random; the pairs in key order.
fn drain_mixed(it: &mut sluice::DbIter, r: &mut rand::rngs::StdRng) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rand::RngExt;
    let (mut front, mut back) = (Vec::new(), Vec::new());
    loop {
        let from_back = r.random_bool(0.5);
        let x = if from_back { it.next_back() } else { it.next() };
        match x {
            None => break,
            Some(x) => {
                let (k, v) = x.expect("a healthy scan");
                let kv = (k.to_vec(), v.to_vec());
                if from_back {
                    back.push(kv)
                } else {
                    front.push(kv)
                }
            }
        }
    }
    assert!(
        it.next().is_none() && it.next_back().is_none(),
        "an ended iterator stays ended"
    );
    back.reverse();
    front.extend(back);
    front
}

fn any_bound(r: &mut rand::rngs::StdRng) -> Bound<Vec<u8>> {
    use rand::RngExt;
    match r.random_range(0..3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(edge_key(r)),
        _ => Bound::Excluded(edge_key(r)),
    }
}

/// Random batches (several ops on one key), transactions, snapshots and iterators held
/// across flushes, compactions, retargets, migrations and lazy moves, scans with every
/// bound kind drained from both ends, prefix scans at 0xff prefixes, reopen: all against a
/// map.
fn edge_run(seed: u64) {
    use rand::{RngExt, SeedableRng};
    let r = &mut rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // By seed: no background work (and no lazy moves); all of it; or lazy moves on a key's
    // first read into small memtables, with no other background work.
    let opts = || {
        let base = Options {
            memtable_bytes: 16 << 10,
            ..Options::tiny()
        };
        match seed % 3 {
            0 => sluice_tests::no_background_work(base),
            1 => base,
            _ => Options {
                memtable_bytes: 2 << 10,
                move_on_first_read: true,
                move_bytes_per_sec: base.move_bytes_per_sec,
                ..sluice_tests::no_background_work(base)
            },
        }
    };
    let mut db = Db::open(dir.path(), opts()).unwrap();
    let mut model = Model::new();
    // Held snapshots and iterators, with what they must show.
    let mut snaps: Vec<(sluice::Snapshot, Model)> = Vec::new();
    let mut iters: Vec<(sluice::DbIter, Pairs)> = Vec::new();
    let mut versions = vec![sluice::VersionId(1)];
    for step in 0..250 {
        let what = format!("seed {seed} step {step}");
        match r.random_range(0..100) {
            0..30 => {
                let mut b = WriteBatch::new();
                for _ in 0..r.random_range(1..6) {
                    let k = edge_key(r);
                    if r.random_bool(0.3) {
                        b.delete(&k);
                        model.remove(&k);
                    } else {
                        let v = vec![r.random::<u8>(); r.random_range(0..20)];
                        b.put(&k, &v);
                        model.insert(k, v);
                    }
                }
                db.write_opt(
                    b,
                    &WriteOptions {
                        sync: r.random_bool(0.1),
                    },
                )
                .unwrap();
            }
            30..40 => {
                let mut t = db.transaction();
                let mut own = model.clone();
                for _ in 0..r.random_range(1..6) {
                    let k = edge_key(r);
                    match r.random_range(0..3) {
                        0 => {
                            t.delete(&k);
                            own.remove(&k);
                        }
                        1 => {
                            let v = vec![r.random::<u8>(); r.random_range(0..5)];
                            t.put(&k, &v);
                            own.insert(k, v);
                        }
                        _ => assert_eq!(
                            t.get(&k).unwrap().map(|v| v.to_vec()),
                            own.get(&k).cloned(),
                            "{what}"
                        ),
                    }
                }
                t.commit().unwrap();
                model = own;
            }
            40..48 => {
                // Point reads at the latest state (which queue lazy moves of what they find
                // in a draining layout), then sometimes the moves applied.
                for _ in 0..8 {
                    let k = edge_key(r);
                    assert_eq!(
                        db.get(&k).unwrap().map(|v| v.to_vec()),
                        model.get(&k).cloned(),
                        "{what}"
                    );
                }
                if r.random_bool(0.5) {
                    sluice::internals::apply_moves(&db);
                }
            }
            48..53 => snaps.push((db.snapshot(), model.clone())),
            53..58 => {
                let (lo, hi) = (any_bound(r), any_bound(r));
                let want = model_in(&model, &lo, &hi);
                let it = if let Some((s, m)) = snaps.last().filter(|_| r.random_bool(0.5)) {
                    let w = model_in(m, &lo, &hi);
                    (s.range((lo, hi)), w)
                } else {
                    (db.range((lo, hi)), want)
                };
                iters.push(it);
            }
            58..68 => {
                let (lo, hi) = (any_bound(r), any_bound(r));
                let mut it = db.range((lo.clone(), hi.clone()));
                assert_eq!(
                    drain_mixed(&mut it, r),
                    model_in(&model, &lo, &hi),
                    "{what}: {lo:?}..{hi:?}"
                );
            }
            68..73 => {
                let p = edge_key(r);
                let p = &p[..r.random_range(0..=p.len().min(3))];
                let want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| k.starts_with(p))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let mut it = db.prefix(p);
                assert_eq!(drain_mixed(&mut it, r), want, "{what}: prefix {p:?}");
            }
            73..78 => db.flush().unwrap(),
            78..81 => db.compact().unwrap(),
            81..85 => {
                let spec = if r.random_bool(0.5) {
                    PartitionSpec::Hash {
                        partitions: r.random_range(1..5),
                        seed: r.random(),
                        hashed_prefix: None,
                    }
                } else {
                    PartitionSpec::Range {
                        boundaries: vec![vec![b'a'], vec![b'b', 0xff], vec![0xff, 0xff]],
                    }
                };
                match db.register_partition_fn(spec) {
                    Ok(v) => versions.push(v),
                    Err(e) => assert!(
                        matches!(e, Error::LayoutRefused(_) | Error::InvalidPartitionSpec(_)),
                        "{what}: {e}"
                    ),
                }
            }
            85..89 => {
                let v = versions[r.random_range(0..versions.len())];
                let _ = db.set_target(v);
            }
            89..92 => {
                let _ = db.migrate_now(None).unwrap();
                let _ = db.retire_drained();
                versions.retain(|v| db.layout().versions.iter().any(|i| i.id == *v));
            }
            92..96 => {
                // Drain a held iterator (made before the work since).
                if !iters.is_empty() {
                    let (mut it, want) = iters.swap_remove(r.random_range(0..iters.len()));
                    assert_eq!(drain_mixed(&mut it, r), want, "{what}: held iterator");
                }
            }
            96..98 => {
                // Check a held snapshot: point reads and a scan agree with its map.
                if !snaps.is_empty() {
                    let (s, m) = &snaps[r.random_range(0..snaps.len())];
                    let mut it = s.range(..);
                    let got = drain_mixed(&mut it, r);
                    assert_eq!(
                        got,
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<Vec<_>>(),
                        "{what}: snapshot"
                    );
                    for _ in 0..5 {
                        let k = edge_key(r);
                        assert_eq!(
                            s.get(&k).unwrap().map(|v| v.to_vec()),
                            m.get(&k).cloned(),
                            "{what}: snapshot get"
                        );
                    }
                    if r.random_bool(0.5) {
                        snaps.swap_remove(0);
                    }
                }
            }
            _ => {
                // Reopen: held snapshots and iterators belong to the closed handle.
                snaps.clear();
                iters.clear();
                db.close().unwrap();
                db = Db::open(dir.path(), opts()).unwrap();
            }
        }
    }
    let all: Vec<_> = db
        .range(..)
        .map(|x| x.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(
        all,
        model.into_iter().collect::<Vec<_>>(),
        "seed {seed}: final"
    );
}

#[test]
fn edge_keys_bounds_and_held_reads_match_a_map() {
    for seed in sluice_tests::seeds(4) {
        sluice_tests::with_seed("api_semantics", seed, edge_run);
    }
}

#[test]
fn every_call_on_a_closed_handle_answers_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    db.put("a", "1").unwrap();
    db.flush().unwrap();
    let v2 = db
        .register_partition_fn(PartitionSpec::Hash {
            partitions: 2,
            seed: 1,
            hashed_prefix: None,
        })
        .unwrap();
    let c = db.clone();
    let s = db.snapshot();
    let mut t = db.transaction();
    t.get("a").unwrap();
    t.put("b", "2");
    db.close().unwrap();
    fn closed<T: std::fmt::Debug>(what: &str, r: sluice::Result<T>) {
        assert!(matches!(r, Err(Error::Closed)), "{what} after close: {r:?}");
    }
    closed("put", c.put("x", "y"));
    closed("get", c.get("a"));
    closed("range", c.range(..).next().unwrap());
    closed("snap get", s.get("a"));
    closed("snap range", s.range(..).next().unwrap());
    closed("snap2 get", c.snapshot().get("a"));
    closed("commit", t.commit());
    closed("flush", c.flush());
    closed("compact", c.compact());
    closed("sync", c.sync_wal());
    closed(
        "register",
        c.register_partition_fn(PartitionSpec::Hash {
            partitions: 2,
            seed: 9,
            hashed_prefix: None,
        }),
    );
    closed("set_target", c.set_target(v2));
    closed("migrate_now", c.migrate_now(None));
    closed("pin", c.pin_version(v2, true));
    closed("retire", c.retire_version(v2));
    closed("retire_drained", c.retire_drained());
    closed("hold", c.hold_migration(true));
    closed("claim", c.claim_controller());
    closed("store", c.store_controller_state(1, b"x"));
    closed(
        "pe",
        c.partition_entries(sluice::VersionId(1), 0).map(|_| ()),
    );
    closed("shadow", c.set_shadow(None));
    closed("limit", c.set_partition_write_limit(0, Some(5)));
    closed("checkpoint", c.checkpoint(dir.path().join("cp")));
    closed(
        "sync empty",
        c.write_opt(WriteBatch::new(), &WriteOptions { sync: true }),
    );
    closed("empty", c.write(WriteBatch::new()));
    closed("close", c.clone().close());
    let _ = c.stats();
    let _ = c.layout();
    let _ = c.migration_progress();
}

#[test]
fn unknown_retired_and_out_of_range_version_arguments_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    db.put("a", "1").unwrap();
    for v in [0, 2, 99, u32::MAX] {
        let v = sluice::VersionId(v);
        let unknown = |r: sluice::Result<()>| {
            assert!(
                matches!(r, Err(Error::UnknownVersion(x)) if x == v.0),
                "{v:?}: {r:?}"
            )
        };
        unknown(db.partition_entries(v, 0).map(|_| ()));
        unknown(db.set_target(v));
        unknown(db.pin_version(v, true));
        unknown(db.pin_version(v, false));
        unknown(db.retire_version(v));
    }
    for p in [1, u32::MAX] {
        let r = db.partition_entries(sluice::VersionId(1), p).map(|_| ());
        assert!(matches!(r, Err(Error::InvalidOption { .. })), "{r:?}");
    }
    assert!(matches!(
        db.set_partition_write_limit(1, Some(5)),
        Err(Error::InvalidOption { .. })
    ));
    assert!(matches!(
        db.set_partition_write_limit(0, Some(0)),
        Err(Error::InvalidOption { .. })
    ));
    assert_eq!(db.migrate_now(Some(0)).unwrap(), 0);
    let v2 = db
        .register_partition_fn(PartitionSpec::Hash {
            partitions: 2,
            seed: 1,
            hashed_prefix: None,
        })
        .unwrap();
    db.set_target(v2).unwrap();
    db.migrate_now(None).unwrap();
    db.retire_drained().unwrap();
    let v1 = sluice::VersionId(1);
    assert!(matches!(db.set_target(v1), Err(Error::VersionRetired(1))));
    assert!(matches!(
        db.pin_version(v1, true),
        Err(Error::VersionRetired(1))
    ));
    assert!(matches!(
        db.retire_version(v1),
        Err(Error::VersionRetired(1))
    ));
    // "Unknown" covers ids no longer live (the variant's docs).
    let r = db.partition_entries(v1, 0).map(|_| ());
    assert!(
        matches!(r, Err(Error::UnknownVersion(1) | Error::VersionRetired(1))),
        "{r:?}"
    );
    let v3 = db.register_partition_fn(PartitionSpec::Hash {
        partitions: 2,
        seed: 1,
        hashed_prefix: None,
    });
    v3.unwrap();
    assert!(matches!(
        db.retire_version(v2),
        Err(Error::LayoutRefused(_))
    ));
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
}
