//! Crashes at chosen points rather than random ones: the process dies (a panic standing in
//! for it) at each file operation of an open that recovers WALs, and the power goes out
//! after each file operation of a workload that flushes, switches layouts, checkpoints
//! and compacts. After each, the directory is left as a power cut leaves it (unsynced
//! bytes lost; of the directory changes not yet fsynced, none, a few or all kept, as a
//! journaling file system may), and the next open, in the default strict mode, must
//! succeed with every synced write and a prefix of the rest; a checkpoint that returned
//! `Ok` must open too.
//!
//! CI cuts the power after every `SLUICE_CUT_STEP`-th operation (61 by default); the soak
//! cuts after every one: `SLUICE_CUT_STEP=1 cargo test --release -p sluice-tests --test
//! crash_points -- --ignored` (about ten minutes here).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sluice::fs::{Fault, FaultFs, FaultKind, FsOp};
use sluice::{Db, Options, WriteBatch, WriteOptions};
use sluice_tests::{copy_dir, dump};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Small memtables and tables, and a manifest that rolls often, so that a short run
/// rotates WALs, flushes and rolls the manifest.
fn opts(fs: &FaultFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        idle_memtable_flush_after: None,
        max_manifest_bytes: 4096,
        ..Options::tiny()
    }
}

/// How the power cut that made the starting directory left its WALs.
#[derive(Clone, Copy, Debug)]
enum Base {
    /// Every write synced.
    Synced,
    /// Besides the synced writes, unsynced ones in WALs whose background syncs never ran:
    /// the older WALs cut short, the newest written back whole.
    CutWals,
}

/// A directory holding flushed tables, rotated WALs and unflushed writes, as a power cut
/// leaves it. Returns the synced writes, every one of which any later open must hold.
fn base(dir: &Path, how: Base) -> Model {
    let fs = FaultFs::new();
    let db = Db::open(dir, opts(&fs)).unwrap();
    let mut model = Model::new();
    for i in 0..1500u32 {
        let k = format!("k{:05}", (i * 7919) % 2000);
        let v = format!("v{i}-{}", "x".repeat(40));
        db.put(&k, &v).unwrap();
        model.insert(k.into_bytes(), v.into_bytes());
        if i % 97 == 0 {
            db.sync_wal().unwrap();
        }
    }
    db.sync_wal().unwrap();
    if let Base::CutWals = how {
        // The rotated WALs' background syncs held from here on.
        fs.hold_syncs(".log", "sluice-wal-sync");
        for i in 0..250u32 {
            db.put(format!("u{i:05}"), format!("unsynced-{}", "y".repeat(40)))
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    fs.fail_all_syncs();
    fs.release_held();
    let newest = sluice_tests::newest_wal(dir);
    drop(db);
    fs.lose_unsynced_except(|p| matches!(how, Base::CutWals) && Some(p) == newest.as_deref())
        .unwrap();
    model
}

/// Opens `dir` with the defaults and checks it holds every write of `model`.
fn holds(dir: &Path, model: &Model, what: &str) {
    holds_a_prefix(dir, model, 0, 0, what);
}

/// Directory changes not yet fsynced that the power cut keeps: none, two, or all.
const JOURNALED: [usize; 3] = [0, 2, usize::MAX];

/// A crash at the k-th operation of each kind of an open recovering `how`'s directory
/// (and of what the process does next: a checkpoint and writes), for every k, then a
/// power cut.
fn crash_at_every_point_of_an_open(how: Base) {
    let root = tempfile::tempdir().unwrap();
    let b = root.path().join("base");
    let model = base(&b, how);
    let mut crashes = 0;
    let run = |d: &Path, fs: &FaultFs| {
        if let Ok(db) = Db::open(d, opts(fs)) {
            let _ = db.checkpoint(d.join("cp"));
            for i in 0..50u32 {
                let _ = db.put(format!("z{i:03}"), "after");
            }
            let _ = db.sync_wal();
        }
    };
    for op in [
        FsOp::Create,
        FsOp::Append,
        FsOp::Sync,
        FsOp::SyncDir,
        FsOp::Rename,
        FsOp::Remove,
    ] {
        // The first 200 of each kind (more appends than that are the writes after the
        // open, each like the one before).
        for k in 0..200 {
            let mut reached = false;
            for journaled in JOURNALED {
                let d = root.path().join(format!("c-{op:?}-{k}-{journaled}"));
                copy_dir(&b, &d);
                let fs = FaultFs::new();
                fs.inject(Fault {
                    op,
                    path_contains: None,
                    kind: FaultKind::Panic,
                    skip: k,
                    sticky: false,
                });
                // The panic unwinds the open (or, in a background thread, stops writes).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&d, &fs)));
                reached = fs.injected() > 0;
                fs.clear();
                fs.fail_all_syncs();
                fs.lose_unsynced_journaled(|_| false, |_, n| journaled.min(n))
                    .unwrap();
                let what = format!("{how:?}, crash at {op:?} #{k}, {journaled} journaled");
                holds(&d, &model, &what);
                if d.join("cp").join("CURRENT").exists() {
                    holds(&d.join("cp"), &model, &format!("{what} (checkpoint)"));
                }
                std::fs::remove_dir_all(&d).unwrap();
                crashes += 1;
            }
            // Past the last operation of this kind.
            if !reached {
                break;
            }
        }
    }
    assert!(crashes > 100, "{how:?}: {crashes} crash points");
}

#[test]
fn a_crash_at_any_point_of_a_recovering_open_loses_no_synced_write() {
    for how in [Base::Synced, Base::CutWals] {
        crash_at_every_point_of_an_open(how);
    }
}

/// What a workload run was promised before the power went: writes `w{i}` made in order,
/// how many of them were known durable (a synced write, `sync_wal` or `close` returned
/// `Ok`), and a checkpoint that returned `Ok`, with the writes acknowledged before it.
struct Run {
    written: u32,
    durable: u32,
    checkpoint: Option<u32>,
}

/// Writes (some synced) through a recovering open, a flush, a switch to a hash layout,
/// a checkpoint and a compaction; stops at the first refused write.
fn workload(dir: &Path, fs: &FaultFs) -> Run {
    let mut run = Run {
        written: 0,
        durable: 0,
        checkpoint: None,
    };
    let Ok(db) = Db::open(dir, opts(fs)) else {
        return run;
    };
    for i in 0..900u32 {
        let sync = i % 37 == 0;
        let mut b = WriteBatch::new();
        b.put(format!("w{i:05}"), format!("{i}-{}", "p".repeat(60)));
        if db.write_opt(b, &WriteOptions { sync }).is_err() {
            break;
        }
        run.written = i + 1;
        if sync {
            run.durable = run.written;
        }
        match i {
            200 => {
                let _ = db.flush();
            }
            300 => {
                if let Ok(v) = db.register_partition_fn(sluice_tests::hash(4, 7)) {
                    let _ = db.set_target(v);
                }
            }
            450 => run.checkpoint = db.checkpoint(dir.join("cp")).is_ok().then_some(run.written),
            600 => {
                let _ = db.compact();
            }
            _ => {}
        }
        if i % 113 == 0 && db.sync_wal().is_ok() {
            run.durable = run.written;
        }
    }
    if db.close().is_ok() {
        run.durable = run.written;
    }
    run
}

/// Opens `dir` and checks it holds `base`, and of the `written` workload writes a prefix
/// of at least `durable`.
fn holds_a_prefix(dir: &Path, base: &Model, durable: u32, written: u32, what: &str) {
    let db = Db::open(dir, Options::default()).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    let got = dump(&db).unwrap_or_else(|e| panic!("{what}: read: {e}"));
    for (k, v) in base {
        assert_eq!(
            got.get(k),
            Some(v),
            "{what}: base key {}",
            String::from_utf8_lossy(k)
        );
    }
    let present: Vec<bool> = (0..written)
        .map(|i| got.contains_key(format!("w{i:05}").as_bytes()))
        .collect();
    let n = present.iter().take_while(|p| **p).count();
    assert!(
        present[n..].iter().all(|p| !p),
        "{what}: a hole: w{n:05} missing, a later write present"
    );
    assert!(
        n as u32 >= durable,
        "{what}: {n} writes survived, {durable} were durable"
    );
    db.close().unwrap();
}

/// A power cut after every `step`-th operation of [`workload`] on `how`'s directory; the
/// newest WAL keeps its unsynced bytes if `keep_newest_wal` (written back before the cut).
fn power_cut_after_every_operation(how: Base, keep_newest_wal: bool, step: u64) {
    let root = tempfile::tempdir().unwrap();
    let b = root.path().join("base");
    let model = base(&b, how);
    // The operations of a whole run.
    let d = root.path().join("whole");
    copy_dir(&b, &d);
    let fs = FaultFs::new();
    let r = workload(&d, &fs);
    let total = fs.ops();
    assert_eq!(r.durable, 900, "the run without a cut");
    let mut cuts = 0;
    for n in (0..total + step).step_by(step as usize) {
        for journaled in JOURNALED {
            let d = root.path().join(format!("cut-{n}-{journaled}"));
            copy_dir(&b, &d);
            let fs = FaultFs::new();
            fs.cut_after(n);
            let r = workload(&d, &fs);
            let newest = sluice_tests::newest_wal(&d).filter(|_| keep_newest_wal);
            fs.lose_unsynced_journaled(|p| Some(p) == newest.as_deref(), |_, c| journaled.min(c))
                .unwrap();
            let what = format!("{how:?}, cut after {n} of {total} ops, {journaled} journaled");
            holds_a_prefix(&d, &model, r.durable, r.written, &what);
            if let Some(before) = r.checkpoint {
                let cp = format!("{what} (checkpoint)");
                holds_a_prefix(&d.join("cp"), &model, before, before, &cp);
            }
            std::fs::remove_dir_all(&d).unwrap();
            cuts += 1;
        }
    }
    assert!(cuts >= 3 * (total / step), "{cuts} cuts of {total} ops");
}

fn cut_step(default: u64) -> u64 {
    std::env::var("SLUICE_CUT_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(default)
}

#[test]
fn a_power_cut_after_any_operation_keeps_the_synced_writes_and_a_prefix() {
    let step = cut_step(61);
    for (how, keep) in [
        (Base::Synced, false),
        (Base::CutWals, false),
        (Base::Synced, true),
    ] {
        power_cut_after_every_operation(how, keep, step);
    }
}

#[test]
#[ignore = "soak (about ten minutes): SLUICE_CUT_STEP=1 cargo test --release -p sluice-tests \
            --test crash_points -- --ignored; CI cuts after every 61st operation \
            (a_power_cut_after_any_operation_keeps_the_synced_writes_and_a_prefix)"]
fn power_cut_points_soak() {
    let step = cut_step(1);
    std::thread::scope(|s| {
        for (how, keep) in [
            (Base::Synced, false),
            (Base::CutWals, false),
            (Base::Synced, true),
        ] {
            s.spawn(move || power_cut_after_every_operation(how, keep, step));
        }
    });
}

/// A power cut during the flush that writes lazily moved copies and their forwarding
/// pointers (the copies are in no WAL), or after the whole run, which then migrates the
/// rest honouring the pointers: whatever survives, every value is still there, in its
/// source or as a copy in the target.
#[test]
fn a_power_cut_around_lazy_moves_and_their_pointers_loses_no_value() {
    let moves_opts = |fs: &FaultFs| Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        migration_bytes_per_sec: 0,
        ..opts(fs)
    };
    let root = tempfile::tempdir().unwrap();
    let b = root.path().join("base");
    let mut model = Model::new();
    {
        let db = Db::open(&b, moves_opts(&FaultFs::new())).unwrap();
        for i in 0..400u32 {
            let (k, v) = (format!("m{i:04}"), format!("{i}-{}", "q".repeat(40)));
            db.put(&k, &v).unwrap();
            model.insert(k.into_bytes(), v.into_bytes());
        }
        db.compact().unwrap();
        db.close().unwrap();
    }
    // Returns the values moved and flushed, and the operations of that flush, if it got
    // that far.
    let run = |d: &Path, fs: &FaultFs| {
        let Ok(db) = Db::open(d, moves_opts(fs)) else {
            return (0, 0..0);
        };
        if let Ok(v) = db.register_partition_fn(sluice_tests::hash(4, 7)) {
            let _ = db.set_target(v);
        }
        for i in (0..400u32).step_by(3) {
            let _ = db.get(format!("m{i:04}"));
        }
        // Applies the moves, then writes the copies and their pointers.
        let before = fs.ops();
        let _ = db.flush();
        let flushing = before..fs.ops();
        let moved = db.stats().lazy_moves;
        let _ = db.migrate_now(None);
        let _ = db.close();
        (moved, flushing)
    };
    let d = root.path().join("whole");
    copy_dir(&b, &d);
    let fs = FaultFs::new();
    let (moved, flushing) = run(&d, &fs);
    let total = fs.ops();
    assert_eq!(moved, 134, "the run without a cut moves every third value");
    let db = Db::open(&d, Options::default()).unwrap();
    assert_eq!(db.layout().versions.len(), 1, "v1 drained and retired");
    drop(db);
    // After every fifth operation of the flush of the copies and pointers (every one with
    // `SLUICE_CUT_STEP=1`), and once the whole run is done.
    let step = cut_step(5) as usize;
    for n in flushing.step_by(step).chain([total]) {
        for journaled in JOURNALED {
            let d = root.path().join(format!("cut-{n}-{journaled}"));
            copy_dir(&b, &d);
            let fs = FaultFs::new();
            fs.cut_after(n);
            run(&d, &fs);
            fs.lose_unsynced_journaled(|_| false, |_, c| journaled.min(c))
                .unwrap();
            holds(
                &d,
                &model,
                &format!("cut after {n} of {total} ops, {journaled} journaled"),
            );
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
