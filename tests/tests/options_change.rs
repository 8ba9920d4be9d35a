//! Options that may change between opens: tables written under one set of options are read
//! back, compacted and verified under another.

use std::collections::BTreeMap;

use sluice::inspect::{verify_dir, NoProgress, VerifyOptions};
use sluice::{Compression, Db, Options};
use sluice_tests::dump;

fn value(i: u32, round: u32) -> Vec<u8> {
    let len = ((i * 37 + round * 11) % 700) as usize;
    (0..len)
        .map(|j| (i as usize + j + round as usize) as u8)
        .collect()
}

fn key(i: u32) -> Vec<u8> {
    match i % 3 {
        0 => format!("k{i:05}").into_bytes(),
        1 => format!("a/long/shared/prefix/of/keys/{i:06}").into_bytes(),
        _ => {
            let mut k = vec![b'm'; 140];
            k.extend_from_slice(format!("{i:05}").as_bytes());
            k
        }
    }
}

/// Keys the tests write.
const KEYS: u32 = 300;

/// The option sets opens alternate between.
fn option_sets() -> Vec<Options> {
    let base = Options::tiny();
    vec![
        Options {
            compression: Compression::None,
            key_delta_blocks: false,
            block_size: 64,
            bloom_bits_per_key: 0,
            block_cache_bytes: 0,
            max_open_files: Some(1),
            memtable_bytes: 1024,
            ..base.clone()
        },
        Options {
            compression: Compression::Zstd(22),
            key_delta_blocks: true,
            block_size: 64 << 10,
            bloom_bits_per_key: 20,
            block_cache_bytes: 100,
            max_open_files: Some(1),
            ..base.clone()
        },
        Options {
            compression: Compression::Zstd(1),
            key_delta_blocks: false,
            block_size: 4096,
            bloom_bits_per_key: 64,
            block_cache_bytes: 64 << 10,
            memtables_share_cache: true,
            max_open_files: Some(2),
            memtable_bytes: 64 << 10,
            ..base.clone()
        },
        Options {
            compression: Compression::None,
            key_delta_blocks: true,
            block_size: 300,
            bloom_bits_per_key: 1,
            block_cache_bytes: 5000,
            memtables_share_cache: false,
            ..base.clone()
        },
    ]
}

fn check(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    for (k, v) in model {
        let got = db.get(k).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&v[..]),
            "{what}: get {:?}",
            String::from_utf8_lossy(k)
        );
    }
    let all = dump(db).unwrap();
    assert_eq!(all.len(), model.len(), "{what}: scan length");
    assert!(&all == model, "{what}: scan differs");
}

#[test]
fn tables_written_under_one_set_of_options_read_compact_and_verify_under_another() {
    let dir = tempfile::tempdir().unwrap();
    let sets = option_sets();
    let mut model = BTreeMap::new();
    for round in 0..5u32 {
        let s = (round as usize) % sets.len();
        let db = Db::open(dir.path(), sets[s].clone()).unwrap();
        check(&db, &model, &format!("round {round} open with set {s}"));
        for i in (round..KEYS).step_by(2 + round as usize % 3) {
            if (i + round) % 11 == 0 {
                db.delete(key(i)).unwrap();
                model.remove(&key(i));
            } else {
                db.put(key(i), value(i, round)).unwrap();
                model.insert(key(i), value(i, round));
            }
        }
        db.flush().unwrap();
        check(&db, &model, &format!("round {round} after flush, set {s}"));
        if round % 2 == 1 {
            db.compact().unwrap();
            check(
                &db,
                &model,
                &format!("round {round} after compact, set {s}"),
            );
        }
        db.close().unwrap();
        let report = verify_dir(
            dir.path(),
            &VerifyOptions {
                deep: round == 4,
                sample_reads: None,
            },
            &NoProgress,
        )
        .unwrap();
        assert!(
            report.problems.is_empty(),
            "round {round}, set {s}: {:?}",
            report.problems
        );
    }
}

/// A WAL written under a large memtable recovers under a tiny one (and other options).
#[test]
fn a_wal_written_under_a_large_memtable_recovers_under_a_tiny_one() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let sets = option_sets();
    let mut model = BTreeMap::new();
    let db = Db::open(
        dir.path(),
        Options {
            memtable_bytes: 8 << 20,
            ..sets[1].clone()
        },
    )
    .unwrap();
    for i in (0..KEYS).step_by(2) {
        db.put(key(i), value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }
    db.flush().unwrap();
    for i in (0..KEYS).step_by(3) {
        db.put(key(i), value(i, 2)).unwrap();
        model.insert(key(i), value(i, 2));
    }
    db.sync_wal().unwrap();
    sluice_tests::copy_dir(dir.path(), copy.path());
    drop(db);
    for (s, o) in sets.iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        sluice_tests::copy_dir(copy.path(), d.path());
        let db = Db::open(
            d.path(),
            Options {
                max_immutable_memtables: 1,
                ..o.clone()
            },
        )
        .unwrap();
        check(&db, &model, &format!("recovered under set {s}"));
        db.compact().unwrap();
        check(&db, &model, &format!("compacted under set {s}"));
        let ro = Db::open_read_only(d.path(), sets[(s + 1) % sets.len()].clone()).unwrap();
        check(&ro, &model, &format!("read-only beside set {s}"));
        drop(ro);
        db.close().unwrap();
        let report = sluice_tests::verify(d.path());
        assert!(report.problems.is_empty(), "set {s}: {:?}", report.problems);
    }
}

#[test]
fn a_huge_max_open_files_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            max_open_files: Some(usize::MAX),
            ..Options::tiny()
        },
    )
    .unwrap();
    db.put("a", "b").unwrap();
    db.flush().unwrap();
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"b"[..]));
}

/// Readers share a cache far smaller than the data (blocks in its pages evicted and
/// swept while cursors and values hold them) while a writer overwrites and compactions run.
#[test]
fn readers_under_cache_pressure_see_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            block_size: 4096,
            block_cache_bytes: 48 << 10,
            memtable_bytes: 32 << 10,
            wal_flush_interval: std::time::Duration::from_millis(1),
            ..Options::tiny()
        },
    )
    .unwrap();
    let n = 1500u32;
    // Values carry their key and a round: any version of a key reads as its own.
    let val = |i: u32, r: u32| {
        let mut v = format!("{i:06}-{r:04}-").into_bytes();
        v.resize(200 + (i as usize % 300), b'x' ^ (i as u8));
        v
    };
    for i in 0..n {
        db.put(key(i), val(i, 0)).unwrap();
    }
    db.flush().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let db = &db;
        let stop = &stop;
        for t in 0..2u32 {
            s.spawn(move || {
                let mut held = Vec::new();
                let mut round = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    round += 1;
                    for i in (t..n).step_by(7) {
                        let v = db.get(key(i)).unwrap().expect("every key is there");
                        assert_eq!(&v[..7], format!("{i:06}-").as_bytes());
                        assert_eq!(
                            v,
                            val(i, std::str::from_utf8(&v[7..11]).unwrap().parse().unwrap())
                        );
                        held.push((i, v));
                    }
                    let mut count = 0;
                    for e in db.range(..) {
                        let (k, v) = e.unwrap();
                        let i: u32 = std::str::from_utf8(&v[..6]).unwrap().parse().unwrap();
                        assert_eq!(&k[..], &key(i)[..]);
                        count += 1;
                    }
                    assert_eq!(count, n as usize, "round {round}");
                    // Values held across rounds (their blocks evicted and swept meanwhile)
                    // read as they did.
                    let keep = held.len().saturating_sub(400);
                    for (i, v) in held.drain(..keep) {
                        let r = std::str::from_utf8(&v[7..11]).unwrap().parse().unwrap();
                        assert_eq!(v, val(i, r), "a held value changed");
                    }
                }
            });
        }
        for r in 1..6u32 {
            for i in (0..n).step_by(r as usize + 1) {
                db.put(key(i), val(i, r)).unwrap();
            }
            db.flush().unwrap();
        }
        db.compact().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let s = db.stats();
    assert!(s.block_cache_bytes <= 48 << 10, "{}", s.block_cache_bytes);
}

/// A migration whose inputs were written under other options than it runs under.
#[test]
fn a_migration_mixes_tables_written_under_other_options() {
    let dir = tempfile::tempdir().unwrap();
    let sets = option_sets();
    let mut model = BTreeMap::new();
    let no_bg = |o: &Options| Options {
        migration_bytes_per_sec: 0,
        move_bytes_per_sec: 0,
        move_on_first_read: true,
        partition: sluice_tests::range4(),
        ..o.clone()
    };
    for (s, o) in sets.iter().enumerate() {
        let db = Db::open(dir.path(), no_bg(o)).unwrap();
        check(&db, &model, &format!("set {s} open"));
        for i in (s as u32..KEYS).step_by(2) {
            db.put(key(i), value(i, s as u32)).unwrap();
            model.insert(key(i), value(i, s as u32));
        }
        db.flush().unwrap();
        if s == 1 {
            let v2 = db.register_partition_fn(sluice_tests::hash(5, 3)).unwrap();
            db.set_target(v2).unwrap();
            // Some keys move lazily, under these options.
            for i in (0..KEYS).step_by(13) {
                db.get(key(i)).unwrap();
            }
            db.migrate_now(Some(20 << 10)).unwrap();
        }
        if s == 2 {
            db.migrate_now(None).unwrap();
            let v3 = db.register_partition_fn(sluice_tests::hash(3, 9)).unwrap();
            db.set_target(v3).unwrap();
            db.migrate_now(Some(10 << 10)).unwrap();
        }
        check(&db, &model, &format!("set {s} after writes"));
        db.close().unwrap();
        let report = sluice_tests::verify(dir.path());
        assert!(report.problems.is_empty(), "set {s}: {:?}", report.problems);
    }
    let db = Db::open(dir.path(), no_bg(&sets[0])).unwrap();
    db.migrate_now(None).unwrap();
    db.compact().unwrap();
    check(&db, &model, "last");
}

/// The bytes of table memory the stats report are the live tables' indexes and filters,
/// as their tables are opened and compacted away, and across a reopen.
#[test]
fn table_memory_follows_the_live_tables() {
    let dir = tempfile::tempdir().unwrap();
    let live = |dir: &std::path::Path| -> u64 {
        let st = sluice::inspect::read_dir_state(dir).unwrap();
        st.files
            .iter()
            .map(|f| {
                let p = dir.join(format!("{:06}.sst", f.number));
                sluice::sst::Table::open(&sluice::fs::StdFs, &p, f.number, None)
                    .unwrap()
                    .heap_bytes()
            })
            .sum()
    };
    let o = Options {
        bloom_bits_per_key: 20,
        ..sluice_tests::no_background_work(Options::tiny())
    };
    let db = Db::open(dir.path(), o.clone()).unwrap();
    for r in 0..4u32 {
        for i in 0..400u32 {
            db.put(key(i * 3 + r), value(i, r)).unwrap();
        }
        db.flush().unwrap();
        assert_eq!(db.stats().table_memory_bytes, live(dir.path()), "round {r}");
    }
    db.compact().unwrap();
    assert_eq!(db.stats().table_memory_bytes, live(dir.path()), "compacted");
    for i in 0..1600u32 {
        db.delete(key(i)).unwrap();
    }
    db.flush().unwrap();
    db.compact().unwrap();
    assert_eq!(db.stats().table_memory_bytes, live(dir.path()), "deleted");
    db.close().unwrap();
    let db = Db::open(dir.path(), o).unwrap();
    assert_eq!(db.stats().table_memory_bytes, live(dir.path()), "reopened");
}
