//! Online repartitioning: migration compactions, lazy moves, forwarding pointers, several
//! live versions, retirement and rollback.

use sluice::{Db, Options, PartitionSpec, VersionId};
use sluice_tests::{dump, hash, range4};

fn quiet_opts() -> Options {
    // Background migration off: tests drive it with migrate_now, reads with lazy moves.
    Options {
        partition: range4(),
        migration_bytes_per_sec: 0,
        ..Options::tiny()
    }
}

fn fill(db: &Db, n: u32, tag: &str) {
    for i in 0..n {
        db.put(format!("k{i:04}"), format!("{tag}{i}")).unwrap();
    }
}

#[test]
fn migration_moves_everything_and_retires_the_old_layout() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    fill(&db, 4000, "a");
    db.flush().unwrap();
    let before = dump(&db).unwrap();
    let v2 = db.register_partition_fn(hash(8, 1)).unwrap();
    db.set_target(v2).unwrap();
    let p = db.migration_progress();
    assert_eq!(p.draining.len(), 1);
    assert!(p.draining[0].bytes_left > 0);
    let moved = db.migrate_now(None).unwrap();
    assert!(moved > 0);
    assert_eq!(dump(&db).unwrap(), before);
    let layout = db.layout();
    assert_eq!(layout.versions.len(), 1, "{layout:?}");
    assert_eq!(layout.retired, vec![VersionId(1)]);
    assert!(db.migration_progress().is_complete());
    // Every SSTable now belongs to v2 and its keys hash to its own partition.
    let v2info = &layout.versions[0];
    assert_eq!(v2info.partitions.iter().filter(|p| p.files > 0).count(), 8);
    assert!(matches!(
        db.set_target(VersionId(1)),
        Err(sluice::Error::VersionRetired(1))
    ));
    drop(db);
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    assert_eq!(dump(&db).unwrap(), before);
    assert_eq!(db.layout().retired, vec![VersionId(1)]);
}

/// Migration takes a draining partition's deepest run first, so a key's old version can
/// reach the target while its newer version still waits above it in the draining layout. A
/// point read probes runs newest first (by max seqno), whatever their layout or level: it
/// finds the newer version and skips the migrated run unsearched. Probed in layout order
/// (the target's first), each read searched both.
#[test]
fn a_read_skips_a_migrated_old_version_whose_newer_one_is_still_draining() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        // One flush holds all the newer versions, and its lone L0 file stays in L0.
        memtable_bytes: 1 << 20,
        level0_compaction_trigger: 4,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let value = |tag: &str, i: u32| format!("{tag}{i}{}", "x".repeat(100));
    let fill = |tag: &str| {
        for i in 0..1000u32 {
            db.put(format!("k{i:04}"), value(tag, i)).unwrap();
        }
    };
    // ~100 KB of old versions: several files at the bottom of v1.
    fill("old");
    db.compact().unwrap();
    fill("new");
    db.flush().unwrap();
    let v2 = db.register_partition_fn(hash(4, 1)).unwrap();
    db.set_target(v2).unwrap();
    // One job: the first file of the deepest run, old versions only.
    assert!(db.migrate_now(Some(1)).unwrap() > 0);
    let files = |v: VersionId| -> Vec<usize> {
        let st = db.stats();
        (0..7)
            .map(|l| {
                st.partitions
                    .iter()
                    .filter(|p| p.version == v.0)
                    .map(|p| p.level_files[l])
                    .sum()
            })
            .collect()
    };
    let (f1, f2) = (files(VersionId(1)), files(v2));
    assert_eq!(f1[0], 1, "the newer versions still in v1's L0: {f1:?}");
    assert!(
        f1[1..].iter().sum::<usize>() > 0,
        "old versions left in v1: {f1:?}"
    );
    assert!(
        f2.iter().sum::<usize>() > 0,
        "old versions migrated into v2: {f2:?}"
    );

    let before = db.stats();
    for i in 0..1000u32 {
        assert_eq!(
            db.get(format!("k{i:04}")).unwrap().as_deref(),
            Some(value("new", i).as_bytes())
        );
    }
    let after = db.stats();
    let found = (after.get_table_reads - before.get_table_reads)
        - (after.get_filter_false_positives - before.get_filter_false_positives);
    assert_eq!(
        found, 1000,
        "each read searches one table that holds its key: the newer version's"
    );
}

#[test]
fn migration_write_amplification_is_about_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    fill(&db, 20000, "value-with-some-length-");
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(4, 9)).unwrap();
    db.set_target(v2).unwrap();
    let s0 = db.stats();
    db.migrate_now(None).unwrap();
    let s1 = db.stats();
    let read = s1.migration_bytes_read - s0.migration_bytes_read;
    let written = s1.migration_bytes_written - s0.migration_bytes_written;
    let wa = written as f64 / read as f64;
    assert!(read > 0);
    assert!(
        (0.8..1.2).contains(&wa),
        "migration wrote {written} for {read} read"
    );
}

#[test]
fn lazy_moves_leave_pointers_that_migration_honours() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        // Room for every moved copy: moves are skipped, not queued, when memtables are full.
        memtable_bytes: 4 << 20,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    fill(&db, 2000, "a");
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(4, 3)).unwrap();
    db.set_target(v2).unwrap();
    for i in (0..2000u32).step_by(4) {
        assert!(db.get(format!("k{i:04}")).unwrap().is_some());
    }
    // Moves are applied off the read path; a flush applies what is queued, then persists it.
    db.flush().unwrap();
    let s = db.stats();
    assert_eq!(s.lazy_moves, 500, "{s:?}");
    let p = db.migration_progress();
    assert_eq!(p.draining[0].forwarding_pointers, 500, "{p:?}");
    assert_eq!(p.draining[0].lazy_moves, 500);
    // Reads after the move are served from v2 and do not move again.
    for i in (0..2000u32).step_by(4) {
        assert!(db.get(format!("k{i:04}")).unwrap().is_some());
    }
    db.flush().unwrap();
    assert_eq!(db.stats().lazy_moves, 500);
    let s0 = db.stats();
    db.migrate_now(None).unwrap();
    let s1 = db.stats();
    let p = db.migration_progress();
    assert!(p.is_complete());
    // A quarter of the values had already moved: migration drops them instead of copying.
    let read = s1.migration_bytes_read - s0.migration_bytes_read;
    let written = s1.migration_bytes_written - s0.migration_bytes_written;
    assert!(
        (written as f64) < 0.85 * read as f64,
        "wrote {written} of {read}"
    );
    let all = dump(&db).unwrap();
    assert_eq!(all.len(), 2000);
    for i in 0..2000u32 {
        assert_eq!(
            all[format!("k{i:04}").as_bytes()],
            format!("a{i}").as_bytes()
        );
    }
}

/// Reads move values into the memtable; before that memtable flushes, a migration
/// compaction carries the same values out of their draining files. The flush must not
/// write the copies again: each byte moves once.
#[test]
fn a_moved_copy_that_migration_carried_first_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        memtable_bytes: 4 << 20,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    fill(&db, 2000, "a");
    db.compact().unwrap();
    let want = dump(&db).unwrap();
    let v2 = db.register_partition_fn(hash(4, 3)).unwrap();
    db.set_target(v2).unwrap();
    for i in (0..2000u32).step_by(4) {
        assert!(db.get(format!("k{i:04}")).unwrap().is_some());
    }
    // Applies the queued moves into the memtable, then migrates every draining file
    // (the copies are not flushed yet, so no pointer spares their values).
    db.migrate_now(None).unwrap();
    assert_eq!(db.stats().lazy_moves, 500);
    assert!(db.migration_progress().is_complete());
    db.flush().unwrap();
    let s = db.stats();
    assert_eq!(s.lazy_moves_superseded, 500, "{s:?}");
    let entries = |db: &Db| -> u64 {
        db.stats()
            .partitions
            .iter()
            .filter(|p| p.version == v2.0)
            .map(|p| p.entries)
            .sum()
    };
    assert_eq!(entries(&db), 2000, "every value once in v2");
    assert_eq!(dump(&db).unwrap(), want);
    db.close().unwrap();
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(dump(&db).unwrap(), want);
    assert_eq!(entries(&db), 2000);
}

#[test]
fn three_live_versions_then_rollback_and_forward() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    fill(&db, 3000, "v1-");
    db.compact().unwrap();
    let biased = PartitionSpec::Hash {
        partitions: 4,
        seed: 1,
        hashed_prefix: Some(2),
    };
    let v2 = db.register_partition_fn(biased).unwrap();
    db.set_target(v2).unwrap();
    db.migrate_now(Some(1)).unwrap(); // one file of v1 moves into v2
    for i in (0..3000u32).step_by(3) {
        db.put(format!("k{i:04}"), format!("v2-{i}")).unwrap();
    }
    db.flush().unwrap();
    let v3 = db.register_partition_fn(hash(4, 77)).unwrap();
    db.set_target(v3).unwrap();
    assert_eq!(db.layout().versions.len(), 3);
    let expect = |i: u32| {
        if i.is_multiple_of(3) {
            format!("v2-{i}")
        } else {
            format!("v1-{i}")
        }
    };
    let check = |db: &Db| {
        let all = dump(db).unwrap();
        assert_eq!(all.len(), 3000);
        for i in 0..3000u32 {
            assert_eq!(
                all[format!("k{i:04}").as_bytes()],
                expect(i).as_bytes(),
                "k{i}"
            );
            assert_eq!(
                db.get(format!("k{i:04}")).unwrap().unwrap(),
                expect(i).as_bytes()
            );
        }
    };
    check(&db);
    db.migrate_now(Some(20_000)).unwrap();
    check(&db);
    // Roll back to v2 mid-migration, write, then go forward to v3 again.
    db.set_target(v2).unwrap();
    db.put("k0001", "during-rollback").unwrap();
    db.flush().unwrap();
    db.set_target(v3).unwrap();
    db.migrate_now(None).unwrap();
    let all = dump(&db).unwrap();
    assert_eq!(all[&b"k0001"[..]], b"during-rollback");
    assert_eq!(all.len(), 3000);
    let layout = db.layout();
    assert_eq!(layout.versions.len(), 1);
    assert_eq!(layout.target, v3);
}

#[test]
fn background_pacer_migrates_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        migration_bytes_per_sec: 64 << 20,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    fill(&db, 3000, "x");
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(4, 5)).unwrap();
    db.set_target(v2).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !db.migration_progress().is_complete() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            db.migration_progress()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(dump(&db).unwrap().len(), 3000);
}

#[test]
fn paused_pacer_does_nothing_and_headroom_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fault = sluice::fs::FaultFs::new();
    let opts = Options {
        migration_bytes_per_sec: 64 << 20,
        migration_disk_headroom_bytes: 1 << 30,
        fs: std::sync::Arc::new(fault.clone()),
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    fill(&db, 2000, "x");
    db.compact().unwrap();
    fault.set_available_space(Some(512 << 20));
    let v2 = db.register_partition_fn(hash(4, 5)).unwrap();
    db.set_target(v2).unwrap();
    // Waits (for a worker to consider migrating) until the pacer says why it does not.
    let blocked_by = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let p = db.migration_progress();
            if p.blocked.as_deref().unwrap_or("").contains(what) {
                return p;
            }
            assert!(std::time::Instant::now() < deadline, "{p:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let p = blocked_by("headroom");
    assert_eq!(p.draining[0].files_migrated, 0, "{p:?}");
    db.set_migration_rate(0);
    fault.set_available_space(None);
    blocked_by("paused");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let p = db.migration_progress();
    assert_eq!(p.draining[0].files_migrated, 0, "{p:?}");
    db.set_migration_rate(64 << 20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !db.migration_progress().is_complete() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn partition_scoped_reads_report_moved_values() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    fill(&db, 400, "a");
    // A snapshot older than the delete keeps the tombstone through compaction.
    let snap = db.snapshot();
    db.delete("k0007").unwrap();
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(2, 3)).unwrap();
    db.set_target(v2).unwrap();
    db.get("k0001").unwrap();
    db.get("k0002").unwrap();
    db.flush().unwrap();
    // Every key "k0…" sorts below the first boundary "k1": range partition 0 of v1.
    let entries: Vec<_> = db
        .partition_entries(VersionId(1), 0)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(entries.len(), 400);
    drop(snap);
    use sluice::PartitionEntry as P;
    assert!(
        matches!(&entries[1], P::Moved { to, .. } if *to == v2),
        "{:?}",
        entries[1]
    );
    assert!(matches!(&entries[2], P::Moved { .. }));
    assert!(matches!(&entries[3], P::Value { value, .. } if value == "a3"));
    assert!(matches!(&entries[7], P::Tombstone { .. }));
    assert!(db.partition_entries(VersionId(1), 9).is_err());
    assert!(db.partition_entries(VersionId(7), 0).is_err());
    db.close().unwrap();

    // A pointer whose value names no version (a lone varint continuation byte, the same
    // size as the version id it replaces, so the table keeps its size and properties) is
    // reported as corruption naming the pointer table; it used to read as a plain value.
    use sluice::fs::StdFs;
    use sluice::sst::{Table, TableKind, TableOptions, TableOwner, TableWriter};
    let tables = sluice_tests::sst_files(dir.path());
    let pointers = tables
        .iter()
        .find(|p| {
            let t = Table::open(&StdFs, p, 0, None).unwrap();
            t.props().kind == TableKind::Pointers
        })
        .expect("the flush wrote a pointer table");
    let t = std::sync::Arc::new(Table::open(&StdFs, pointers, 0, None).unwrap());
    let props = t.props().clone();
    let o = Options::tiny();
    let tmp = dir.path().join("rewrite.tmp");
    let mut w = TableWriter::new(
        std::sync::Arc::new(StdFs),
        &tmp,
        TableOptions {
            block_size: o.block_size,
            compression: o.compression,
            key_delta: o.key_delta_blocks,
            bloom_bits_per_key: o.bloom_bits_per_key,
        },
        TableOwner {
            kind: props.kind,
            layout_version: props.layout_version,
            fingerprint: props.fingerprint,
            partition: props.partition,
        },
    )
    .unwrap();
    for e in t.iter() {
        let e = e.unwrap();
        assert_eq!(e.value.len(), 1, "a version id under 128");
        w.add_parts(&e.key, e.seqno, e.kind, &[0x80]).unwrap();
    }
    w.finish().unwrap();
    drop(t);
    assert_eq!(
        std::fs::metadata(&tmp).unwrap().len(),
        std::fs::metadata(pointers).unwrap().len()
    );
    std::fs::rename(&tmp, pointers).unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    let e = db
        .partition_entries(VersionId(1), 0)
        .unwrap()
        .find_map(|r| r.err())
        .expect("the damaged pointer is an error");
    assert!(e.is_corruption(), "{e}");
    let name = pointers.file_name().unwrap().to_str().unwrap();
    assert!(e.to_string().contains(name), "{e}");
    assert!(e.to_string().contains("names no version"), "{e}");
}

#[test]
fn checkpoint_is_an_openable_point_in_time_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    fill(&db, 1000, "a");
    db.flush().unwrap();
    let v2 = db.register_partition_fn(hash(4, 1)).unwrap();
    db.set_target(v2).unwrap();
    db.put("k0001", "unflushed").unwrap();
    let cp = dir.path().join("checkpoint");
    db.checkpoint(&cp).unwrap();
    db.put("k0002", "after").unwrap();
    db.migrate_now(None).unwrap();
    let copy = Db::open(&cp, quiet_opts()).unwrap();
    assert_eq!(
        copy.get("k0001").unwrap().as_deref(),
        Some(&b"unflushed"[..])
    );
    assert_eq!(copy.get("k0002").unwrap().as_deref(), Some(&b"a2"[..]));
    assert_eq!(dump(&copy).unwrap().len(), 1000);
    assert_eq!(
        copy.layout().versions.len(),
        2,
        "the checkpoint is mid-migration"
    );
    assert!(db.checkpoint(&cp).is_err(), "refuses a non-empty directory");
    // A file whose name is not UTF-8 makes a directory non-empty too.
    {
        use std::os::unix::ffi::OsStrExt;
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let odd = other.join(std::ffi::OsStr::from_bytes(b"ledger-\xff.bak"));
        std::fs::write(&odd, "not the database's").unwrap();
        match db.checkpoint(&other) {
            Err(sluice::Error::InvalidOption { reason, .. }) => {
                assert!(reason.contains("not empty"), "{reason}")
            }
            r => panic!("a checkpoint into a directory holding {odd:?}: {r:?}"),
        }
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    }
    // The original is unaffected by the copy opening (and flushing) its own files.
    assert_eq!(db.get("k0002").unwrap().as_deref(), Some(&b"after"[..]));
}

#[test]
fn load_and_shadow_counters_see_a_hot_partition() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    let biased = PartitionSpec::Hash {
        partitions: 4,
        seed: 0,
        hashed_prefix: Some(2),
    };
    db.set_shadow(Some(biased)).unwrap();
    for i in 0..1000u32 {
        db.put(format!("k{i:04}"), "v").unwrap();
    }
    let load = db.partition_load();
    assert_eq!(load.writes.iter().sum::<u64>(), 1000);
    assert_eq!(
        load.writes[0], 1000,
        "all keys start with k0: range partition 0"
    );
    let shadow = db.shadow_load().unwrap();
    // Every key shares the prefix "k0": the biased hash sends them all to one partition.
    assert_eq!(
        shadow.writes.iter().filter(|&&w| w > 0).count(),
        1,
        "{shadow:?}"
    );
    db.set_shadow(None).unwrap();
    assert!(db.shadow_load().is_none());
}

/// A write limit on one partition holds back writes into it and no other. Which writes
/// waited comes from the engine's counters, not from timing the unlimited ones (a loaded
/// machine can make anything slow); the one time bound is a lower one: 30 KB through a
/// 20 KB/s limit that starts with no tokens cannot take under a second.
#[test]
fn write_limit_slows_one_partition_only() {
    let dir = tempfile::tempdir().unwrap();
    // A memtable that never fills: no flush or stall slows these writes but the limit.
    let opts = Options {
        memtable_bytes: 4 << 20,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    assert!(db.set_partition_write_limit(9, Some(1)).is_err());
    let waits = |db: &Db| {
        let s = db.stats();
        (s.admission_waits, s.admission_wait_micros)
    };
    db.set_partition_write_limit(0, Some(20_000)).unwrap();
    for i in 0..100u32 {
        db.put(format!("k3{i:03}"), vec![0u8; 1000]).unwrap(); // partition 3: unlimited
    }
    assert_eq!(waits(&db), (0, 0), "a write into another partition waited");
    // Reset the limit's bucket: tokens banked while the loop above ran would shorten this.
    db.set_partition_write_limit(0, None).unwrap();
    db.set_partition_write_limit(0, Some(20_000)).unwrap();
    let t = std::time::Instant::now();
    for i in 0..30u32 {
        db.put(format!("k0{i:03}"), vec![0u8; 1000]).unwrap(); // partition 0: 20 KB/s
    }
    let limited = t.elapsed();
    assert!(
        limited >= std::time::Duration::from_millis(900),
        "{limited:?}"
    );
    // Each write after the first waits for the tokens of the one before it (unless the
    // machine stalled the writer for as long by itself: a margin for that).
    let (n, micros) = waits(&db);
    assert!(n >= 10, "{n} of 30 limited writes waited");
    assert!(micros > 0);
    db.set_partition_write_limit(0, None).unwrap();
    for i in 0..30u32 {
        db.put(format!("k0{i:03}"), vec![0u8; 1000]).unwrap();
    }
    assert_eq!(
        waits(&db),
        (n, micros),
        "a write waited after the limit was lifted"
    );
    for (k, v) in [("k0005", 1000), ("k3005", 1000)] {
        assert_eq!(db.get(k).unwrap().map(|v| v.len()), Some(v));
    }
}

#[test]
fn controller_epochs_fence_a_stale_controller() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    assert_eq!(db.controller_state(), None);
    let a = db.claim_controller().unwrap();
    db.store_controller_state(a, b"from a").unwrap();
    let b = db.claim_controller().unwrap();
    assert!(b > a);
    let e = db.store_controller_state(a, b"stale").unwrap_err();
    assert!(matches!(e, sluice::Error::StaleEpoch { .. }), "{e}");
    db.store_controller_state(b, b"from b").unwrap();
    drop(db);
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    assert_eq!(db.controller_state(), Some((b, b"from b".to_vec())));
}

/// A change made under a controller's epoch (`Db::fenced`) is refused, unrun, once another
/// controller has claimed the role; and a claim that arrives while such a change runs waits
/// for it, so a controller cannot be superseded between checking its epoch and acting.
#[test]
fn fenced_changes_are_refused_when_stale_and_a_claim_waits_for_one_in_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    let v2 = db
        .register_partition_fn(PartitionSpec::Hash {
            partitions: 4,
            seed: 0,
            hashed_prefix: None,
        })
        .unwrap();
    let a = db.claim_controller().unwrap();
    assert_eq!(db.fenced(a, || Ok(7)).unwrap(), 7);
    let b = db.claim_controller().unwrap();
    let e = db
        .fenced(a, || -> sluice::Result<()> {
            panic!("a stale controller's change ran")
        })
        .unwrap_err();
    assert!(
        matches!(e, sluice::Error::StaleEpoch { presented, current } if presented == a && current == b),
        "{e}"
    );
    // B's change is in progress when a third controller claims the role.
    let (trying, claimed) = (AtomicBool::new(false), AtomicBool::new(false));
    let (in_change_tx, in_change_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let change = s.spawn(|| {
            db.fenced(b, || {
                in_change_tx.send(()).unwrap();
                while !trying.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                // The claim is under way: it must not land before this change is made.
                let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
                while std::time::Instant::now() < until {
                    assert!(
                        !claimed.load(Ordering::Acquire),
                        "a claim landed in the middle of a fenced change"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                db.set_target(v2)
            })
        });
        in_change_rx.recv().unwrap();
        let claim = s.spawn(|| {
            trying.store(true, Ordering::Release);
            let c = db.claim_controller().unwrap();
            claimed.store(true, Ordering::Release);
            c
        });
        change.join().unwrap().unwrap();
        let c = claim.join().unwrap();
        assert!(c > b);
        assert_eq!(
            db.layout().target,
            v2,
            "the change made before the claim stands"
        );
        let e = db.fenced(b, || db.set_target(VersionId(1))).unwrap_err();
        assert!(matches!(e, sluice::Error::StaleEpoch { .. }), "{e}");
        assert_eq!(db.layout().target, v2);
    });
}

/// What the engine stores in its manifest is refused, with nothing written, when it is
/// larger than the manifest reader accepts: a controller state, a range spec with huge
/// boundaries. The database stays writable and reopens with what it held before (before
/// these checks, both calls returned Ok and the next open failed).
#[test]
fn manifest_records_too_large_to_read_back_are_refused_before_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    let epoch = db.claim_controller().unwrap();
    db.store_controller_state(epoch, b"small").unwrap();
    let huge = vec![7u8; (16 << 20) + 1];
    let e = db.store_controller_state(epoch, &huge).unwrap_err();
    assert!(
        matches!(e, sluice::Error::TooLarge { len, .. } if len == huge.len()),
        "{e}"
    );
    // 600 boundaries of 60,000 bytes: a valid number of partitions and valid keys, but a
    // 36 MB spec.
    let boundaries: Vec<Vec<u8>> = (0..600u32)
        .map(|i| {
            let mut b = i.to_be_bytes().to_vec();
            b.resize(60_000, b'x');
            b
        })
        .collect();
    let e = db
        .register_partition_fn(PartitionSpec::Range { boundaries })
        .unwrap_err();
    assert!(
        matches!(e, sluice::Error::InvalidPartitionSpec(ref m) if m.contains("encodes to")),
        "{e}"
    );
    db.put("after", "1").unwrap();
    db.close().unwrap();
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    assert_eq!(db.controller_state(), Some((epoch, b"small".to_vec())));
    assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.layout().versions.len(), 1);
}

/// A read-only workload during a migration fills the memtable with moved values; it must
/// be flushed without any write to trigger it, and memory must stay bounded.
#[test]
fn lazy_moves_alone_trigger_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        memtable_bytes: 64 << 10,
        // Moves are applied once per WAL tick; a slow tick makes each batch of moves
        // several times the memtable budget, so the 2x cap, not rotation, must bound it.
        wal_flush_interval: std::time::Duration::from_millis(100),
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    fill(&db, 6000, "value-value-value-value-");
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(4, 3)).unwrap();
    db.set_target(v2).unwrap();
    let flushes = db.stats().flushes;
    // Moves are applied off the read path (by the WAL ticker), so memory is sampled by a
    // thread of its own as well as after every read.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (peak, moved_flushes) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(db.stats().memtable_bytes);
                std::thread::yield_now();
            }
            peak
        });
        let mut peak = 0;
        for i in 0..6000u32 {
            db.get(format!("k{i:04}")).unwrap();
            peak = peak.max(db.stats().memtable_bytes);
        }
        // The WAL ticker applies the queued moves and freezes the memtable they fill, and
        // its flush follows in the background: wait for that (still no write and no manual
        // flush), however slowly this machine runs the loop above against the ticks.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db.stats().flushes == flushes && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let moved_flushes = db.stats().flushes - flushes;
        // Let the last queued moves land while the sampler watches.
        db.flush().unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (peak.max(sampler.join().unwrap()), moved_flushes)
    });
    db.flush().unwrap();
    let s = db.stats();
    assert!(moved_flushes >= 1, "reads alone never froze the memtable");
    // Active + one frozen memtable, each allowed up to twice the budget by moves, plus the
    // one entry that crossed the line (moves stop once a memtable holds 2x the budget).
    let entry = 1024;
    assert!(
        peak <= 4 * (64 << 10) + 2 * entry,
        "memtables peaked at {peak}"
    );
    // More moves than one memtable budget holds (~340 entries of ~190 charged bytes);
    // how many more depends on how many WAL ticks the reads span, since each tick's batch
    // stops at the 2x cap.
    assert!(s.lazy_moves > 400, "{}", s.lazy_moves);
    assert_eq!(dump(&db).unwrap().len(), 6000);
}

/// Every flush of moved values adds a pointer file to the draining partition, and every
/// migration job reads them all; past a handful they are merged into one.
#[test]
fn pointer_files_are_merged_before_they_pile_up() {
    let opts = || Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        memtable_bytes: 4 << 20,
        ..quiet_opts()
    };
    // Bytes the whole migration writes when `reads` rounds of ten keys were moved lazily
    // first (each round flushed: a pointer file per round).
    let run = |reads: u32| -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        fill(&db, 2000, "a");
        db.compact().unwrap();
        let v2 = db.register_partition_fn(hash(4, 3)).unwrap();
        db.set_target(v2).unwrap();
        for round in 0..reads {
            // A read whose partition a pointer merge holds at that moment moves nothing
            // (the merge now runs beside the reads): such keys are read again, until all
            // ten of the round are moved.
            let moved = 10 * (round as u64 + 1);
            for attempt in 0.. {
                assert!(attempt < 1000, "round {round}: keys never moved");
                for i in 0..10u32 {
                    db.get(format!("k{:04}", round * 10 + i)).unwrap();
                }
                db.flush().unwrap();
                if db.stats().lazy_moves >= moved {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(db.stats().lazy_moves, moved, "round {round}");
        }
        let ptr_files = |db: &Db| -> usize {
            db.layout()
                .versions
                .iter()
                .filter(|v| v.id == VersionId(1))
                .flat_map(|v| v.partitions.iter())
                .map(|p| p.pointer_files)
                .sum()
        };
        let s0 = db.stats();
        if reads > 0 {
            // Merged as they pass 8 in a partition, by a background job even though
            // background migration is off here (lazy moves are not: they used to pile up
            // until the first migration job), and no forwarding pointer is lost.
            wait_for("the pointer files to be merged", || ptr_files(&db) <= 8);
            assert!(ptr_files(&db) < reads as usize);
            let fwd = db.migration_progress().draining[0].forwarding_pointers;
            assert_eq!(fwd, 10 * reads as u64);
        }
        db.migrate_now(None).unwrap();
        assert!(db.migration_progress().is_complete());
        let s1 = db.stats();
        assert_eq!(dump(&db).unwrap().len(), 2000);
        s1.migration_bytes_written - s0.migration_bytes_written
    };
    // A tenth of the keys were moved already: their values are dropped, not migrated again,
    // so the migration writes about a tenth less than one that moved every key itself.
    let (moved_first, all) = (run(20), run(0));
    assert!(
        (moved_first as f64) < 0.95 * all as f64,
        "wrote {moved_first} with a tenth moved first, {all} without"
    );
}

/// Waits up to 20 s for `f`, naming `what` if it never holds.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn l0_files(db: &Db, v: VersionId) -> usize {
    db.stats()
        .partitions
        .iter()
        .filter(|p| p.version == v.0)
        .map(|p| p.level_files[0])
        .sum()
}

/// Writes filler under `prefix` until `n` more flushes have happened, all of them rotations
/// of a full memtable (`Db::flush` would apply queued lazy moves).
fn fill_until_flushes(db: &Db, prefix: &str, n: u64) {
    let start = db.stats().flushes;
    let mut i = 0u32;
    while db.stats().flushes < start + n {
        db.put(format!("{prefix}{i:06}"), vec![b'f'; 100]).unwrap();
        i += 1;
        if i.is_multiple_of(64) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(i < 100_000, "no flush after {i} writes");
    }
}

/// A read queues a lazy move out of a draining file; a rollback makes that file's layout
/// the target again, where a trivial move gives the file a new record at a lower level; the
/// key is deleted and its tombstone compacts away with the value; then the layout drains
/// again and the queued move is applied. The move must not bring the deleted value back
/// (its source record is neither obsolete nor in the view: it was found by review, with the
/// value back after reopen too).
#[test]
fn a_queued_lazy_move_does_not_resurrect_a_key_deleted_across_rollback_and_trivial_move() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_bytes: 4 << 10,
        level0_compaction_trigger: 4,
        migration_bytes_per_sec: 0,
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        // Queued moves are applied only where the test calls `flush`.
        wal_flush_interval: std::time::Duration::from_secs(3600),
        idle_memtable_flush_after: None,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    // Three disjoint one-key files in v1's L0, below its compaction trigger.
    for k in ["k", "m", "n"] {
        db.put(k, "A").unwrap();
        db.flush().unwrap();
    }
    assert_eq!(l0_files(&db, VersionId(1)), 3);
    let v1 = db.layout().target;
    let v2 = db.register_partition_fn(hash(4, 1)).unwrap();
    db.pin_version(v2, true).unwrap();
    db.set_target(v2).unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"A"[..])); // queues the move
    db.set_target(v1).unwrap(); // rollback
    let trivial = db.stats().trivial_moves;
    fill_until_flushes(&db, "z", 1); // a fourth disjoint file: trivially moved down
    wait_for("a trivial move", || db.stats().trivial_moves > trivial);
    db.delete("k").unwrap();
    let compactions = db.stats().compactions;
    fill_until_flushes(&db, "y", 4); // the tombstone compacts with the value
    wait_for("a compaction", || {
        db.stats().compactions > compactions && l0_files(&db, v1) < 4
    });
    assert_eq!(db.get("k").unwrap(), None);
    db.set_target(v2).unwrap(); // forward again
    db.flush().unwrap(); // applies the queued move
    assert_eq!(db.get("k").unwrap(), None, "a deleted key came back");
    assert!(db.range("k"..="k").next().is_none());
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        db.get("k").unwrap(),
        None,
        "a deleted key came back after reopen"
    );
}

/// A rollback while a pointer-file merge of the layout it returns to is running: the
/// retarget removes that layout's pointer files, and the merge, finding its inputs gone,
/// drops its output instead of reporting corruption (which an operator, or an automatic
/// rollback trigger, would take for damage).
#[test]
fn a_rollback_during_a_pointer_merge_is_not_reported_as_corruption() {
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let fs = sluice::fs::FaultFs::new();
    let opts = Options {
        partition: PartitionSpec::default(),
        migration_bytes_per_sec: 0,
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        idle_memtable_flush_after: None,
        fs: Arc::new(fs.clone()),
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..20 {
        db.put(format!("k{i:02}"), "v").unwrap();
    }
    db.flush().unwrap();
    let v1 = db.layout().target;
    let v2 = db.register_partition_fn(hash(2, 1)).unwrap();
    db.pin_version(v2, true).unwrap();
    db.set_target(v2).unwrap();
    // Nine flushes of lazily moved values: nine pointer files in v1's one partition.
    for i in 0..9 {
        db.get(format!("k{i:02}")).unwrap().unwrap();
        db.flush().unwrap();
    }
    let pointer_files = |db: &Db| -> usize {
        db.layout()
            .versions
            .iter()
            .filter(|v| v.id == v1)
            .flat_map(|v| v.partitions.iter())
            .map(|p| p.pointer_files)
            .sum()
    };
    assert_eq!(pointer_files(&db), 9);
    // Every sync takes 300 ms: the merge is still writing when the rollback lands.
    fs.set_sync_delay(Some(Duration::from_millis(300)));
    let rollback = {
        let db = db.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            db.set_target(v1)
        })
    };
    let merged = db.migrate_now(Some(1));
    let rolled_back = rollback.join().unwrap();
    fs.set_sync_delay(None);
    merged.unwrap();
    rolled_back.unwrap();
    assert_eq!(db.layout().target, v1);
    assert_eq!(pointer_files(&db), 0, "the target keeps no pointer files");
    assert_eq!(db.stats().background_errors, 0);
    let all = dump(&db).unwrap();
    assert_eq!(all.len(), 20);
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(dump(&db).unwrap(), all);
}

/// v1 → v2 with lazy moves (copies in v2, pointers in v1 naming v2), then a retarget to v3
/// while v1 and v2 both drain, by two background workers: while one works through v1 (one
/// partition, so busy), the other drains v2, whose copies move on to v3 and which may
/// retire while v1 still holds pointers naming it. The data is right throughout, and
/// neither the consistency check (polled during the drain) nor `verify` may call it damage:
/// they did, which the controller's consistency trigger turns into a rollback of a healthy
/// migration (found by review).
#[test]
fn pointers_naming_a_version_their_copy_has_left_are_not_damage() {
    use sluice::inspect::{check_consistency, ConsistencyOptions};
    let dir = tempfile::tempdir().unwrap();
    let (db, n) = compacted_range_then_hash(dir.path(), 2);
    for i in (0..n).step_by(2) {
        db.get(format!("k{i:05}")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    db.flush().unwrap();
    let v3 = db.register_partition_fn(hash(8, 2)).unwrap();
    db.set_target(v3).unwrap();
    db.set_migration_rate(256 << 10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut checks = 0;
    while !db.migration_progress().is_complete() {
        assert!(
            std::time::Instant::now() < deadline,
            "migration does not finish"
        );
        let c = check_consistency(&db, &ConsistencyOptions::default(), &mut |_| {}).unwrap();
        assert!(
            c.problems.is_empty(),
            "check {checks}: {:?}",
            &c.problems[..c.problems.len().min(3)]
        );
        checks += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    closes_holding_every_key_and_verifies(db, dir.path(), n);
    assert!(checks > 0);
}

/// A database in `dir` of `n` keys `k00000…` = `a{i}` compacted under one range partition
/// (v1), then targeting v2 = `hash(4, 1)`; lazy moves on first read, no background
/// migration until asked. Returns it and `n`.
fn compacted_range_then_hash(dir: &std::path::Path, background_threads: usize) -> (Db, u32) {
    let opts = Options {
        partition: PartitionSpec::default(),
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        migration_bytes_per_sec: 0,
        background_threads,
        ..Options::tiny()
    };
    let db = Db::open(dir, opts).unwrap();
    let n = 4000u32;
    for i in 0..n {
        db.put(format!("k{i:05}"), format!("a{i}")).unwrap();
    }
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(4, 1)).unwrap();
    assert_eq!(v2, VersionId(2));
    db.set_target(v2).unwrap();
    (db, n)
}

/// Every key of [`compacted_range_then_hash`] still reads its value; the database closes,
/// and `verify --deep` finds no error.
fn closes_holding_every_key_and_verifies(db: Db, dir: &std::path::Path, n: u32) {
    use sluice::inspect::{verify_dir, NoProgress, VerifyOptions};
    for i in 0..n {
        assert_eq!(
            db.get(format!("k{i:05}")).unwrap().as_deref(),
            Some(format!("a{i}").as_bytes()),
            "k{i:05}"
        );
    }
    db.close().unwrap();
    let rep = verify_dir(
        dir,
        &VerifyOptions {
            deep: true,
            sample_reads: None,
        },
        &NoProgress,
    )
    .unwrap();
    assert!(rep.errors().next().is_none(), "{:?}", rep.problems);
}

/// The state the test above may reach, reached on purpose: v1 → v2 with lazy moves of the
/// last keys (copies in v2, pointers in v1 naming v2) and new keys below all of v1's
/// written into v2, then a retarget to v3, migrated one job at a time. Migration takes the
/// draining file that starts lowest, so v2's files go first and v2 retires while v1 still
/// holds both the moved keys' old values and the pointers naming v2. The consistency
/// check after every job finds no problem, the data is right, and `verify --deep` passes.
#[test]
fn a_layout_retired_while_pointers_still_name_it_checks_clean() {
    use sluice::inspect::{check_consistency, ConsistencyOptions};
    let dir = tempfile::tempdir().unwrap();
    let (db, n) = compacted_range_then_hash(dir.path(), Options::tiny().background_threads);
    let v2 = VersionId(2);
    for i in n - 200..n {
        db.get(format!("k{i:05}")).unwrap();
    }
    for i in 0..100 {
        db.put(format!("a{i:05}"), "new").unwrap();
    }
    db.flush().unwrap();
    assert_eq!(
        db.stats().lazy_moves,
        200,
        "test setup: the reads moved their values"
    );
    let v3 = db.register_partition_fn(hash(8, 2)).unwrap();
    db.set_target(v3).unwrap();
    let pointers_in_v1 = |db: &Db| -> Option<usize> {
        let l = db.layout();
        let v1 = l.versions.iter().find(|v| v.id == VersionId(1))?;
        Some(v1.partitions.iter().map(|p| p.pointer_files).sum())
    };
    let mut reached = false;
    let mut jobs = 0;
    while !db.migration_progress().is_complete() {
        assert!(jobs < 1000, "migration does not finish");
        db.migrate_now(Some(1)).unwrap();
        jobs += 1;
        let retired = db.layout().retired.contains(&v2);
        reached |= retired && pointers_in_v1(&db).is_some_and(|p| p > 0);
        let c = check_consistency(&db, &ConsistencyOptions::default(), &mut |_| {}).unwrap();
        assert!(
            c.problems.is_empty(),
            "after job {jobs} (v2 retired: {retired}): {:?}",
            &c.problems[..c.problems.len().min(3)]
        );
    }
    assert!(
        reached,
        "v2 never retired while v1 held pointers ({jobs} jobs): the state under test was not reached"
    );
    assert_eq!(db.get("a00099").unwrap().as_deref(), Some(&b"new"[..]));
    closes_holding_every_key_and_verifies(db, dir.path(), n);
}

/// A draining layout's L0 can only shrink by migration: counted against the stall
/// triggers, an L0 left at the stop trigger by the old target stopped every write for as
/// long as migration was paused. Only the target's L0 counts now.
#[test]
fn a_deep_draining_l0_does_not_stop_writes_while_migration_is_paused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let opts = Options {
            level0_compaction_trigger: 100,
            level0_slowdown_trigger: 200,
            level0_stop_trigger: 300,
            ..quiet_opts()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        for round in 0..12 {
            fill(&db, 50, &format!("r{round}-"));
            db.flush().unwrap();
        }
        let v2 = db.register_partition_fn(hash(4, 1)).unwrap();
        db.set_target(v2).unwrap();
        db.close().unwrap();
    }
    // Tiny triggers (2 / 6 / 12) and migration paused (quiet_opts).
    let db = Db::open(dir.path(), quiet_opts()).unwrap();
    let l0 = db
        .layout()
        .versions
        .iter()
        .find(|v| v.id == VersionId(1))
        .map(|v| v.partitions.iter().map(|p| p.files).max().unwrap_or(0))
        .unwrap();
    // Compaction never ran in v1 (its trigger was 100): every file is in L0.
    assert!(l0 >= 12, "a v1 partition holds {l0} files");
    let writer = db.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(writer.put("k0001", "new"));
    });
    // A deadlock detector, not a timing assertion: the put returns at once.
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the write blocked behind the draining layout's L0")
        .unwrap();
    assert_eq!(db.get("k0001").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(db.stats().stalls, 0);
}

/// Writers waiting for a partition write limit (the caller's own limit on a hot
/// partition) are not foreground slowness for the pacer: backing migration off would not
/// shorten their wait. Counted, three writers held by a 20 KB/s limit made the pacer see a
/// p99 of ~150 ms and cut its budget to the floor.
#[test]
fn a_partition_write_limit_does_not_slow_the_pacer() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let rate = 32u64 << 20;
    let db = Db::open(
        dir.path(),
        Options {
            migration_bytes_per_sec: rate,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:06}"), [7u8; 100]).unwrap();
    }
    db.flush().unwrap();
    let spec = hash(4, 1);
    let v2 = db.register_partition_fn(spec.clone()).unwrap();
    // Held, v1 keeps draining (so the pacer samples latency and adapts) without moving.
    db.hold_migration(true).unwrap();
    db.set_target(v2).unwrap();
    // 50 ms: a window holds only ~20 writes here, so its p99 is its slowest write, and a
    // target of a few ms would be missed by a scheduling delay on a loaded machine. The
    // limit's waits (~150 ms a write) are well over it.
    db.set_migration_latency_target(50_000);
    let hot = sluice::PartitionFn::new(spec).unwrap().partition_of(b"hot");
    db.set_partition_write_limit(hot, Some(20_000)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    db.put("hot", [1u8; 1000]).unwrap();
                }
            })
        })
        .collect();
    // Three pacing windows with the writers waiting.
    let start = Instant::now();
    while db.migration_progress().foreground_p99_window < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no pacing windows"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = db.migration_progress();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(db.stats().admission_waits > 0, "the limit held no writer");
    assert!(
        p.effective_rate_bytes_per_sec >= rate / 2,
        "budget cut to {} of {rate} (p99 seen {} µs)",
        p.effective_rate_bytes_per_sec,
        p.foreground_p99_us
    );
}

/// One draining file that cannot be read holds back only its own partition: the others
/// migrate, from a range layout (whose failing partition came first by key and was picked
/// again after every failure, so with one background thread nothing else ever moved) and
/// from a hash layout (whose partitions migrate together, so the one file failed them all).
#[test]
fn an_unreadable_draining_file_holds_back_only_its_partition() {
    use sluice::fs::{Fault, FaultFs, FaultKind, FsOp};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let sst_files = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sst"))
            .collect();
        v.sort();
        v
    };
    let layouts = [
        PartitionSpec::Range {
            boundaries: vec![b"m".to_vec()],
        },
        hash(4, 3),
    ];
    for from in layouts {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(
            dir.path(),
            Options {
                fs: Arc::new(fs.clone()),
                partition: from.clone(),
                migration_bytes_per_sec: 0,
                block_cache_bytes: 0,
                background_threads: 1,
                ..Options::default()
            },
        )
        .unwrap();
        for i in 0..500u32 {
            db.put(format!("a{i:05}"), [1u8; 100]).unwrap();
            db.put(format!("n{i:05}"), [2u8; 100]).unwrap();
        }
        db.flush().unwrap();
        let files = sst_files(dir.path());
        assert_eq!(files.len() as u32, from.partitions(), "{from}: {files:?}");
        // The file holding the smallest key ("a00000") cannot be read from now on.
        let bad = files
            .iter()
            .find(|f| {
                let bytes = std::fs::read(dir.path().join(f)).unwrap();
                bytes.windows(6).any(|w| w == b"a00000")
            })
            .unwrap()
            .clone();
        let v2 = db.register_partition_fn(hash(8, 1)).unwrap();
        db.set_target(v2).unwrap();
        fs.inject(Fault::on(FsOp::Read, FaultKind::Io, &bad, true));
        db.set_migration_rate(64 << 20);
        let left = |db: &Db| -> Vec<usize> {
            db.layout()
                .versions
                .iter()
                .find(|v| v.id == VersionId(1))
                .map(|v| v.partitions.iter().map(|p| p.files).collect())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while left(&db).iter().sum::<usize>() > 1 {
            assert!(
                Instant::now() < deadline,
                "{from}: still draining {:?} ({:?})",
                left(&db),
                db.migration_progress().blocked
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(fs.injected() > 0);
        // The one left is the unreadable one; readable again, it migrates too.
        db.set_migration_rate(0);
        fs.clear();
        db.migrate_now(None).unwrap();
        assert!(db.migration_progress().is_complete(), "{from}");
        for i in (0..500u32).step_by(50) {
            assert_eq!(
                db.get(format!("a{i:05}")).unwrap().as_deref(),
                Some(&[1u8; 100][..])
            );
            assert_eq!(
                db.get(format!("n{i:05}")).unwrap().as_deref(),
                Some(&[2u8; 100][..])
            );
        }
    }
}

/// What [`many_outputs_db`] gives: the database, its options, its contents, and a snapshot
/// taken before every key was overwritten with what it reads.
type ManyOutputs = (
    Db,
    Options,
    std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    sluice::Snapshot,
    std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
);

/// A database under one partition about to migrate into `hash:16`, whose compactions may
/// keep 4 output files open: 6,000 keys written twice (~29 MiB, ~1.8 MiB per target
/// partition, past the 256 KiB a writer holds before it opens its file), with a snapshot
/// held between the two rounds so that compaction keeps both versions of every key.
fn many_outputs_db(dir: &std::path::Path, fs: Option<sluice::fs::FaultFs>) -> ManyOutputs {
    let mut opts = Options {
        partition: hash(1, 0),
        migration_bytes_per_sec: 0,
        // Outputs are cut only for descriptors, not for size; the source's files (at
        // least a sixteenth of this) are large enough that a migration job gives each
        // target partition ~1 MiB.
        target_file_bytes: 256 << 20,
        memtable_bytes: 4 << 20,
        // A compaction may keep 4 output files open.
        max_open_files: Some(16),
        ..Options::default()
    };
    if let Some(fs) = fs {
        opts.fs = std::sync::Arc::new(fs);
    }
    let db = Db::open(dir, opts.clone()).unwrap();
    // Every 500th value is large (700 KiB): blocks far larger than the rest go through the
    // cuts too, and take their writers past 256 KiB at once.
    let value = |i: u32, round: u32| {
        let len = if i % 500 == 499 { 700 << 10 } else { 1000 };
        format!("{round}:{i:08}-{}", "x".repeat(len))
    };
    let round = |r: u32| {
        for i in 0..6_000u32 {
            db.put(format!("k{i:06}"), value(i, r)).unwrap();
        }
    };
    round(0);
    let snap = db.snapshot();
    let old = dump(&db).unwrap();
    round(1);
    db.compact().unwrap();
    let before = dump(&db).unwrap();
    assert_ne!(before, old);
    let v2 = db.register_partition_fn(hash(16, 3)).unwrap();
    db.set_target(v2).unwrap();
    (db, opts, before, snap, old)
}

/// Every key `snap` reads, read through it by a scan, each checked by a point read too (a
/// point read searches one file per level: versions of a key split over two files of a
/// level would show here).
fn dump_at(snap: &sluice::Snapshot) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let all: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = snap
        .range(..)
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect();
    for (k, v) in &all {
        assert_eq!(snap.get(k).unwrap().as_deref(), Some(&v[..]), "{k:?}");
    }
    all
}

/// A migration job into many more partitions than it may keep output files open (a quarter
/// of `max_open_files`) cuts its largest open output when one more opens: at most one past
/// its share is open at once, every cut output holds at least 256 KiB, and nothing is lost
/// or split wrongly (verify checks each level's files are disjoint).
#[test]
fn a_migration_into_many_partitions_keeps_few_output_files_open() {
    let dir = tempfile::tempdir().unwrap();
    let (db, opts, before, snap, old) = many_outputs_db(dir.path(), None);
    db.migrate_now(None).unwrap();
    assert!(db.migration_progress().is_complete());
    // Both versions of every key moved, each where its reader finds it.
    assert_eq!(dump_at(&snap), old);
    drop(snap);
    let s = db.stats();
    assert!(
        s.output_files_open_max <= 5,
        "{} output files open at once",
        s.output_files_open_max
    );
    assert!(s.output_cuts_for_files > 0, "no output was cut");
    assert_eq!(dump(&db).unwrap(), before);
    db.close().unwrap();
    let report = sluice_tests::verify(dir.path());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(dump(&db).unwrap(), before);
}

/// The fsync of an output cut for descriptors fails mid-job: the job fails and deletes what
/// it wrote, the draining data stays readable, and a crash (no close) then a reopen on the
/// real file system loses nothing; the migration then completes, with no table left behind.
#[test]
fn a_failed_cut_output_loses_nothing_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let fs = sluice::fs::FaultFs::new();
    let (db, _, before, snap, old) = many_outputs_db(dir.path(), Some(fs.clone()));
    // The third table fsync of the migration: past the first cut (a job with 16 outputs
    // and room for 4 cuts its first one before it finishes any other).
    fs.inject(sluice::fs::Fault {
        skip: 2,
        ..sluice::fs::Fault::on(
            sluice::fs::FsOp::Sync,
            sluice::fs::FaultKind::Io,
            ".sst",
            false,
        )
    });
    let failed = db.migrate_now(None);
    assert!(fs.injected() > 0, "the fault did not fire");
    assert!(db.stats().output_cuts_for_files > 0, "no output was cut");
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(dump(&db).unwrap(), before);
    assert_eq!(dump_at(&snap), old);
    drop(snap);
    drop(db); // a crash: no close
    let opts = Options {
        partition: hash(1, 0),
        migration_bytes_per_sec: 0,
        target_file_bytes: 256 << 20,
        max_open_files: Some(16),
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(dump(&db).unwrap(), before);
    db.migrate_now(None).unwrap();
    assert!(db.migration_progress().is_complete());
    assert_eq!(dump(&db).unwrap(), before);
    let tables: usize = db.stats().levels.iter().map(|l| l.files).sum();
    db.close().unwrap();
    let on_disk = sluice_tests::sst_files(dir.path()).len();
    assert_eq!(on_disk, tables, "tables on disk that no level names");
    let report = sluice_tests::verify(dir.path());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A flush is not held to a compaction's share of open output files: cutting its outputs
/// would make more L0 files, which writers' slowdowns and stops count. A memtable flushed
/// into 16 partitions, ~750 KiB each, makes one L0 file per partition, however low
/// `max_open_files` is.
#[test]
fn a_flush_into_many_partitions_makes_one_file_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            partition: hash(16, 1),
            memtable_bytes: 32 << 20,
            max_open_files: Some(16),
            level0_compaction_trigger: 100,
            level0_slowdown_trigger: 200,
            level0_stop_trigger: 300,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..12_000u32 {
        db.put(format!("k{i:06}"), format!("{i:08}-{}", "x".repeat(1000)))
            .unwrap();
    }
    db.flush().unwrap();
    let s = db.stats();
    assert_eq!(s.output_cuts_for_files, 0);
    assert!(s.output_files_open_max > 5, "{}", s.output_files_open_max);
    assert_eq!(s.levels[0].files, 16, "{:?}", s.levels[0]);
    assert_eq!(dump(&db).unwrap().len(), 12_000);
}

/// A draining partition whose key has an older version in one L0 file and a newer one in a
/// newer file: migration takes the older file first, so a partition-scoped read never
/// reports the older version as the key's live value. It took L0's newest file first,
/// after which `partition_entries` of the draining partition reported the superseded
/// value (`get` and scans were right: they pick the highest seqno across layouts).
/// With a lazy move of the newer version as well, the partition reports it moved.
#[test]
fn a_partial_migration_leaves_no_superseded_value_live_in_its_partition() {
    use sluice::PartitionEntry;
    for lazy_move in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            migration_bytes_per_sec: 0,
            move_on_first_read: true,
            move_bytes_per_sec: if lazy_move { 1 << 30 } else { 0 },
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        db.put("k", "old").unwrap();
        db.put("other", "x").unwrap();
        db.flush().unwrap();
        db.put("k", "new").unwrap();
        db.flush().unwrap();
        let v1 = db.layout().target;
        db.set_target(db.register_partition_fn(hash(2, 9)).unwrap())
            .unwrap();
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"new"[..]));
        if lazy_move {
            sluice::internals::apply_moves(&db);
            db.flush().unwrap();
        }
        // One file's worth.
        assert!(db.migrate_now(Some(1)).unwrap() > 0);
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"new"[..]));
        let k: Vec<PartitionEntry> = db
            .partition_entries(v1, 0)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| &e.key()[..] == b"k")
            .collect();
        for e in &k {
            if let PartitionEntry::Value { value, .. } = e {
                assert_eq!(&value[..], b"new", "lazy move {lazy_move}: {k:?}");
            }
        }
        if lazy_move {
            assert!(
                matches!(k.as_slice(), [PartitionEntry::Moved { .. }]),
                "{k:?}"
            );
        }
    }
}

/// Random lifecycles of layout versions against a model: several live at once, retargets,
/// rollbacks to any live version, pins, lazy moves, partial migrations, compactions and
/// reopens. After every step: every key reads as the model says (a full scan now and
/// then), a retired version never comes back, a migration run to its end leaves only
/// pinned versions draining, and the figures hold together: what a version migrated only
/// grows while the database is open, every ETA is a finite number of seconds or none, and
/// a reopen changes no draining version's files, bytes or forwarding pointers left.
/// Seeds are fixed; a failure names its seed and step.
#[test]
fn random_version_lifecycles_keep_every_write_and_their_figures() {
    use std::collections::{BTreeMap, HashMap};
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }
    type Left = BTreeMap<VersionId, (usize, u64, u64)>;
    let left = |db: &Db| -> Left {
        db.migration_progress()
            .draining
            .iter()
            .filter(|d| d.files_left > 0)
            .map(|d| {
                (
                    d.version,
                    (d.files_left, d.bytes_left, d.forwarding_pointers),
                )
            })
            .collect()
    };
    for seed in 0..3u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            move_bytes_per_sec: 1 << 30,
            move_on_first_read: true,
            ..quiet_opts()
        };
        let mut db = Db::open(dir.path(), opts.clone()).unwrap();
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let mut retired: Vec<VersionId> = Vec::new();
        let mut migrated: HashMap<VersionId, u64> = HashMap::new();
        for step in 0..200u32 {
            let at = format!("seed {seed} step {step}");
            match r.below(100) {
                0..=39 => {
                    let k = format!("k{}{:03}", r.below(4), r.below(100));
                    let v = format!("v{step}{}", "x".repeat(r.below(60) as usize));
                    db.put(&k, &v).unwrap();
                    model.insert(k, v);
                }
                40..=47 => {
                    let k = format!("k{}{:03}", r.below(4), r.below(100));
                    db.delete(&k).unwrap();
                    model.remove(&k);
                }
                48..=59 => {
                    for _ in 0..10 {
                        let k = format!("k{}{:03}", r.below(4), r.below(100));
                        let got = db.get(&k).unwrap();
                        assert_eq!(
                            got.as_deref(),
                            model.get(&k).map(|v| v.as_bytes()),
                            "{at}: {k}"
                        );
                    }
                }
                60..=67 => db.flush().unwrap(),
                68..=75 => {
                    db.migrate_now(Some(r.below(3) + 1)).unwrap();
                }
                76..=81 => {
                    if db.layout().versions.len() < 6 {
                        let spec = hash(r.below(4) as u32 + 1, r.below(100));
                        let v = db.register_partition_fn(spec).unwrap();
                        if r.below(3) > 0 {
                            db.set_target(v).unwrap();
                        }
                    }
                }
                82..=87 => {
                    // A rollback (or roll forward) to any other live version.
                    let others: Vec<VersionId> = db
                        .layout()
                        .versions
                        .iter()
                        .filter(|v| !v.is_target)
                        .map(|v| v.id)
                        .collect();
                    if !others.is_empty() {
                        let v = others[r.below(others.len() as u64) as usize];
                        db.set_target(v).unwrap();
                    }
                }
                88..=91 => {
                    let l = db.layout();
                    let v = l.versions[r.below(l.versions.len() as u64) as usize].id;
                    db.pin_version(v, r.below(2) == 0).unwrap();
                }
                92..=94 => db.compact().unwrap(),
                95..=96 => {
                    db.flush().unwrap();
                    let before = left(&db);
                    db.close().unwrap();
                    db = Db::open(dir.path(), opts.clone()).unwrap();
                    let after = left(&db);
                    for (v, figures) in &before {
                        if let Some(now) = after.get(v) {
                            assert_eq!(now, figures, "{at}: v{} across a reopen", v.0);
                        }
                    }
                    migrated.clear();
                }
                _ => {
                    db.migrate_now(None).unwrap();
                    let l = db.layout();
                    for d in &db.migration_progress().draining {
                        let pinned = l.versions.iter().any(|v| v.id == d.version && v.pinned);
                        assert!(
                            pinned && d.files_left == 0,
                            "{at}: {d:?} after migrating all"
                        );
                    }
                }
            }
            let l = db.layout();
            for v in &l.retired {
                if !retired.contains(v) {
                    retired.push(*v);
                }
            }
            for v in &retired {
                assert!(
                    l.versions.iter().all(|x| x.id != *v),
                    "{at}: retired {v:?} is live"
                );
            }
            for d in &db.migration_progress().draining {
                assert!(
                    d.eta_secs.is_none_or(|e| e.is_finite() && e >= 0.0),
                    "{at}: {d:?}"
                );
                let was = migrated.insert(d.version, d.bytes_migrated).unwrap_or(0);
                assert!(d.bytes_migrated >= was, "{at}: {d:?} had migrated {was}");
            }
            if step % 50 == 49 {
                let all: BTreeMap<String, String> = db
                    .range(..)
                    .map(|e| {
                        let (k, v) = e.unwrap();
                        (
                            String::from_utf8(k.to_vec()).unwrap(),
                            String::from_utf8(v.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                assert!(all == model, "{at}: a full scan differs from the model");
            }
        }
        db.close().unwrap();
        let db = Db::open(dir.path(), opts).unwrap();
        for (k, v) in &model {
            assert_eq!(
                db.get(k).unwrap().as_deref(),
                Some(v.as_bytes()),
                "seed {seed}: {k}"
            );
        }
    }
}

/// A key's live entry in the target is reported as its value, not as moved: an older
/// version of the key left in a draining layout does not supersede a newer one. Every
/// entry reported moved has a newer (or, for a lazily moved copy, equal) entry in another
/// live layout, and every key's newest entry across the layouts is reported as it is.
#[test]
fn partition_entries_report_moved_only_what_another_layout_supersedes() {
    use sluice::PartitionEntry;
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    fill(&db, 400, "old");
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(2, 3)).unwrap();
    db.set_target(v2).unwrap();
    // Overwritten in the target (the old version stays in v1), moved by a read, deleted
    // in the target, or left alone.
    for i in (0..400u32).step_by(3) {
        db.put(format!("k{i:04}"), format!("new{i}")).unwrap();
    }
    for i in (1..400u32).step_by(3) {
        db.get(format!("k{i:04}")).unwrap();
    }
    sluice::internals::apply_moves(&db);
    for i in (2..400u32).step_by(9) {
        db.delete(format!("k{i:04}")).unwrap();
    }
    db.flush().unwrap();
    // Every entry each live layout reports, by key: (version, seqno, entry).
    let mut by_key: BTreeMap<Vec<u8>, Vec<(VersionId, u64, PartitionEntry)>> = BTreeMap::new();
    for v in db.layout().versions {
        for p in 0..v.spec.partitions() {
            for e in db.partition_entries(v.id, p).unwrap() {
                let e = e.unwrap();
                let seqno = match &e {
                    PartitionEntry::Value { seqno, .. }
                    | PartitionEntry::Tombstone { seqno, .. }
                    | PartitionEntry::Moved { seqno, .. } => *seqno,
                };
                by_key
                    .entry(e.key().to_vec())
                    .or_default()
                    .push((v.id, seqno, e));
            }
        }
    }
    let live = dump(&db).unwrap();
    assert_eq!(by_key.len(), 400);
    for (k, es) in &by_key {
        for (v, seqno, e) in es {
            if let PartitionEntry::Moved { .. } = e {
                assert!(
                    es.iter().any(|(w, s, _)| w != v && s >= seqno),
                    "{v} reports {e:?}, and no other layout holds the key at seqno {seqno} \
                     or later: {es:?}"
                );
            }
        }
        // The newest entry (the one reads resolve to) is reported as what it is.
        let newest = es.iter().map(|(_, s, _)| *s).max().unwrap();
        let want = live.get(k);
        assert!(
            es.iter()
                .filter(|(_, s, _)| *s == newest)
                .any(|(_, _, e)| match e {
                    PartitionEntry::Value { value, .. } => want == Some(&value.to_vec()),
                    PartitionEntry::Tombstone { .. } => want.is_none(),
                    PartitionEntry::Moved { .. } => false,
                }),
            "key {:?}: the newest entry is reported moved by every layout holding it: {es:?}",
            String::from_utf8_lossy(k)
        );
    }
}

/// A flush of a memtable that holds only lazily moved copies (old seqnos) does not take
/// the database's flushed seqno back: with the manifest rolled after that flush (its
/// snapshot records the flushed seqno), the reopen still knows every table's writes as
/// flushed, keeps its seqnos past theirs, and a new write wins over them.
#[test]
fn a_flush_of_moved_copies_alone_keeps_the_flushed_seqno() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        // Every edit rolls the manifest into a snapshot of the state.
        max_manifest_bytes: 0,
        ..quiet_opts()
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    fill(&db, 200, "a");
    db.compact().unwrap();
    let v2 = db.register_partition_fn(hash(4, 3)).unwrap();
    db.set_target(v2).unwrap();
    let latest = db.latest_seqno();
    for i in (0..200u32).step_by(2) {
        assert!(db.get(format!("k{i:04}")).unwrap().is_some());
    }
    // Applies the moves and flushes the copies: nothing else is in the memtable.
    db.flush().unwrap();
    assert_eq!(db.stats().lazy_moves, 100);
    assert_eq!(db.latest_seqno(), latest);
    let before = dump(&db).unwrap();
    db.close().unwrap();
    let db = Db::open(dir.path(), opts).unwrap();
    assert!(
        db.latest_seqno() >= latest,
        "latest seqno went back from {latest} to {}",
        db.latest_seqno()
    );
    assert_eq!(dump(&db).unwrap(), before);
    db.put("k0000", "new").unwrap();
    assert_eq!(db.get("k0000").unwrap().as_deref(), Some(&b"new"[..]));
}
