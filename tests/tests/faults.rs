//! I/O faults injected through `FaultFs`: ENOSPC, EIO and short writes on append, and a
//! failed fsync — on the WAL, on SSTables (during flush and during compaction) and on the
//! manifest.
//!
//! What the engine promises, and what is asserted:
//! - A fault on the WAL fails the write that hit it; a fault that leaves durability in doubt
//!   (WAL, manifest, a directory fsync) turns the database read-only: later writes get
//!   `Error::ReadOnly`, reads keep working.
//! - A flush or compaction that fails writing its own new tables endangers nothing
//!   acknowledged: the tables are deleted and the job is tried again (a flush
//!   `Options::flush_retries` times, then the database turns read-only; a compaction with
//!   backoff while writes go on).
//! - After the handle is dropped and the directory reopened with the real file system: every
//!   write acknowledged as synced (or covered by an acknowledged `sync_wal`) is present; of
//!   the other writes a prefix is present, never a hole; no batch is partial. (A database
//!   that failed is, for unsynced writes, like a process that crashed: `WriteOptions` only
//!   promises an unsynced write once it is handed to the OS.)
//! - `Db::close` promises to flush and fsync the WAL. So when it returns `Ok`, every
//!   acknowledged write must be there after reopening (see the last test).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::fs::{Fault, FaultFs, FaultKind, Fs, FsOp, StdFs};
use sluice::{Db, Error, Options, PartitionSpec, WalRecovery, WriteBatch, WriteOptions};
use sluice_tests::{dump, engine_thread_panics, newest_wal, verify, watch_engine_panics};

/// The four faults: (name, operation, kind, errno the caller should see).
const FAULTS: [(&str, FsOp, FaultKind, i32); 4] = [
    ("ENOSPC on append", FsOp::Append, FaultKind::NoSpace, 28),
    ("EIO on append", FsOp::Append, FaultKind::Io, 5),
    ("short write", FsOp::Append, FaultKind::ShortWrite, 28),
    ("EIO on fsync", FsOp::Sync, FaultKind::Io, 5),
];

fn fault(op: FsOp, kind: FaultKind, file: &str, sticky: bool) -> Fault {
    Fault::on(op, kind, file, sticky)
}

/// `Options::tiny()` on `fs` with no automatic compaction: L0 files stay for a manual
/// compaction (or a fault injected into one) to merge.
fn tiny_manual_compaction(fs: &FaultFs) -> Options {
    Options {
        level0_compaction_trigger: 100,
        level0_slowdown_trigger: 200,
        level0_stop_trigger: 300,
        ..with_fs(Options::tiny(), fs)
    }
}

/// `base` on `fs`, with flush retries coming quickly, so that a lasting fault turns the
/// database read-only after its retries in milliseconds rather than seconds.
fn with_fs(base: Options, fs: &FaultFs) -> Options {
    watch_engine_panics();
    Options {
        fs: Arc::new(fs.clone()),
        flush_retry_interval: Duration::from_millis(1),
        ..base
    }
}

/// One batch the test tried to write.
struct Rec {
    keys: Vec<(Vec<u8>, Vec<u8>)>,
    acked: bool,
    synced: bool,
    /// Refused before it reached the WAL (a retryable error): never applied, so it must
    /// be absent, and it is no hole in the prefix of those that were.
    refused: bool,
}

/// Every batch tried, in order. Batch `i` writes keys `op<i>/<j>`, so batches never
/// overwrite each other and each one's presence can be judged on its own.
#[derive(Default)]
struct Ledger {
    ops: Vec<Rec>,
    /// Batches `0..durable` are known durable (synced, or covered by `sync_wal`).
    durable: usize,
}

impl Ledger {
    fn write(&mut self, db: &Db, sync: bool, n: usize, value_len: usize) -> sluice::Result<()> {
        let i = self.ops.len();
        let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
            .map(|j| {
                let k = format!("op{i:06}/{j}").into_bytes();
                let mut v = format!("v{i}/{j}/").into_bytes();
                v.resize(value_len.max(v.len()), b'0' + (i % 10) as u8);
                (k, v)
            })
            .collect();
        let mut b = WriteBatch::new();
        for (k, v) in &keys {
            b.put(k, v);
        }
        self.ops.push(Rec {
            keys,
            acked: false,
            synced: sync,
            refused: false,
        });
        let r = if n == 1 && !sync {
            let (k, v) = &self.ops[i].keys[0];
            db.put(k, v)
        } else {
            db.write_opt(b, &WriteOptions { sync })
        };
        if r.is_ok() {
            self.ops[i].acked = true;
            if sync {
                self.durable = i + 1;
            }
        }
        r
    }

    /// Writes `count` acknowledged batches (every fifth synced), then `sync_wal`.
    fn fill(&mut self, db: &Db, count: usize, value_len: usize) {
        for i in 0..count {
            self.write(db, i % 5 == 4, 1 + i % 4, value_len).unwrap();
        }
        db.sync_wal().unwrap();
        self.durable = self.ops.len();
    }

    /// Marks the last batch refused: its error says it was never applied.
    fn refused_last(&mut self) {
        let r = self.ops.last_mut().expect("a batch was tried");
        assert!(!r.acked, "an acknowledged batch cannot have been refused");
        r.refused = true;
    }

    fn acked(&self) -> usize {
        self.ops.iter().filter(|r| r.acked).count()
    }

    /// Checks that every acknowledged batch reads back (in a database that is still open,
    /// failed or not) and that the unacknowledged ones are whole or absent.
    fn check_reads(&self, db: &Db, what: &str) {
        for (i, r) in self.ops.iter().enumerate() {
            let mut present = 0;
            for (k, v) in &r.keys {
                let got = db
                    .get(k)
                    .unwrap_or_else(|e| panic!("{what}: read of batch {i} failed: {e}"));
                match got {
                    Some(g) => {
                        assert_eq!(&g[..], &v[..], "{what}: batch {i} reads a wrong value");
                        present += 1;
                    }
                    None => assert!(!r.acked, "{what}: acknowledged batch {i} is not readable"),
                }
                assert!(
                    !(r.refused && present > 0),
                    "{what}: refused batch {i} was applied"
                );
            }
            assert!(
                present == 0 || present == r.keys.len(),
                "{what}: batch {i} is partially visible ({present} of {} keys)",
                r.keys.len()
            );
        }
        assert!(dump(db).is_ok(), "{what}: scan failed");
    }

    /// Reopens with the real file system and checks: no partial batch, the present batches
    /// are a prefix of those tried, covering at least `must` batches and every durable one.
    /// Returns the reopened database and the length of the surviving prefix.
    fn check_reopen(&self, dir: &Path, must: usize, what: &str) -> (Db, usize) {
        // A background job that panicked instead of failing would be joined and forgotten.
        assert_eq!(
            engine_thread_panics(),
            0,
            "{what}: an engine thread panicked"
        );
        let db = Db::open(dir, Options::default())
            .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
        let all = dump(&db).unwrap_or_else(|e| panic!("{what}: scan after reopen failed: {e}"));
        let mut present = Vec::with_capacity(self.ops.len());
        let mut expected_keys = 0;
        for (i, r) in self.ops.iter().enumerate() {
            let n = r
                .keys
                .iter()
                .filter(|(k, v)| match all.get(k) {
                    Some(g) => {
                        assert_eq!(g, v, "{what}: batch {i} came back with a wrong value");
                        true
                    }
                    None => false,
                })
                .count();
            assert!(
                n == 0 || n == r.keys.len(),
                "{what}: batch {i} (acknowledged: {}, synced: {}) is partially applied after \
                 reopen: {n} of {} keys",
                r.acked,
                r.synced,
                r.keys.len()
            );
            assert!(
                !(r.refused && n > 0),
                "{what}: refused batch {i} was applied"
            );
            // A refused batch is absent (checked above) and no hole.
            present.push(n > 0 || r.refused);
            if n > 0 {
                expected_keys += n;
            }
        }
        assert_eq!(
            all.len(),
            expected_keys,
            "{what}: keys nobody wrote appeared"
        );
        let prefix = present.iter().take_while(|p| **p).count();
        if let Some(j) = present[prefix..].iter().position(|p| *p) {
            panic!(
                "{what}: batch {} is present but batch {prefix} (acknowledged: {}) is not: a hole",
                prefix + j,
                self.ops[prefix].acked
            );
        }
        let must = must.max(self.durable);
        assert!(
            prefix >= must,
            "{what}: only batches 0..{prefix} survived, but 0..{must} were acknowledged as durable"
        );
        (db, prefix)
    }
}

/// The OS error number of an I/O error. Group commit hands each writer a copy of the
/// leader's error, rebuilt from its kind and message, so the number may survive only in
/// the message ("… (os error 28)"); see `enospc_on_the_wal_is_reported_as_no_space`.
fn errno(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. } | Error::NotApplied { source, .. } => {
            source.raw_os_error().or_else(|| {
                let s = source.to_string();
                let at = s.rfind("(os error ")? + "(os error ".len();
                s[at..].strip_suffix(')')?.parse().ok()
            })
        }
        _ => None,
    }
}

fn io_path(e: &Error) -> String {
    match e {
        Error::Io { path, .. } => path.display().to_string(),
        _ => String::new(),
    }
}

/// Once failed, the database refuses every kind of write with `ReadOnly`.
fn assert_read_only(db: &Db, what: &str) {
    let ro = |r: sluice::Result<()>, op: &str| match r {
        Err(Error::ReadOnly(_)) => {}
        other => panic!("{what}: {op} after the failure gave {other:?}, expected ReadOnly"),
    };
    ro(db.put("after", "x"), "put");
    let mut b = WriteBatch::new();
    b.put("after-1", "x").put("after-2", "y");
    ro(
        db.write_opt(b, &WriteOptions { sync: true }),
        "synced batch",
    );
    ro(db.delete("op000000/0"), "delete");
    ro(db.sync_wal(), "sync_wal");
    ro(db.flush(), "flush");
    ro(
        db.register_partition_fn(PartitionSpec::Hash {
            partitions: 2,
            seed: 1,
            hashed_prefix: None,
        })
        .map(|_| ()),
        "register_partition_fn",
    );
}

/// Writes batches (every `sync_every`-th synced, none if 0) until one fails; the failure
/// must come within `limit`. Returns the error.
fn write_until_error(
    db: &Db,
    l: &mut Ledger,
    sync_every: usize,
    value_len: usize,
    what: &str,
) -> Error {
    let limit = Duration::from_secs(20);
    let start = Instant::now();
    let mut i = 0usize;
    loop {
        let sync = sync_every > 0 && i % sync_every == sync_every - 1;
        if let Err(e) = l.write(db, sync, 1 + i % 3, value_len) {
            return e;
        }
        i += 1;
        assert!(
            start.elapsed() < limit,
            "{what}: {i} writes went through in {limit:?} without the fault being noticed"
        );
    }
}

#[test]
fn wal_fault_fails_the_synced_write_then_refuses_writes_and_keeps_reads() {
    for (name, op, kind, want_errno) in FAULTS {
        let what = format!("WAL {name}");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(Options::default(), &fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 40, 100);
        // The WAL buffer is empty now, so the next WAL append or fsync is the synced write's
        // own (the background ticker only writes a non-empty buffer).
        fs.inject(fault(op, kind, ".log", false));
        let e = l.write(&db, true, 4, 100).unwrap_err();
        assert_eq!(fs.injected(), 1, "{what}: the fault did not fire");
        assert_eq!(
            errno(&e),
            Some(want_errno),
            "{what}: the failing write gave {e:?}"
        );
        assert!(
            io_path(&e).ends_with(".log"),
            "{what}: error does not name the WAL: {e}"
        );
        assert_read_only(&db, &what);
        l.check_reads(&db, &what);
        drop(db);
        let (db, _) = l.check_reopen(dir.path(), l.acked(), &what);
        // Reopening recovers: writes work again.
        db.put("again", "1").unwrap();
        assert_eq!(db.get("again").unwrap().as_deref(), Some(&b"1"[..]));
        db.close().unwrap();
    }
}

#[test]
fn wal_fault_under_unsynced_writes_is_noticed_and_keeps_a_prefix() {
    for (name, op, kind, want_errno) in FAULTS {
        let what = format!("WAL {name} (unsynced writes)");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        // Small memtables: WAL rotation fsyncs the WAL, which is where an fsync fault lands
        // when no write asks for sync.
        let db = Db::open(dir.path(), with_fs(Options::tiny(), &fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 20, 200);
        fs.inject(fault(op, kind, ".log", true));
        let e = write_until_error(&db, &mut l, 7, 200, &what);
        // Either this write hit the fault itself, or the background WAL flush did first.
        match &e {
            Error::ReadOnly(reason) => assert!(reason.contains(".log"), "{what}: {reason}"),
            e => {
                assert_eq!(errno(e), Some(want_errno), "{what}: {e:?}");
                assert!(io_path(e).ends_with(".log"), "{what}: {e}");
            }
        }
        assert_read_only(&db, &what);
        l.check_reads(&db, &what);
        drop(db);
        let (db, _) = l.check_reopen(dir.path(), 0, &what);
        db.close().unwrap();
    }
}

/// A lasting fault on the tables a flush writes: the flush is tried again
/// `Options::flush_retries` times, then the database turns read-only, naming the flush and
/// the table.
#[test]
fn a_lasting_sst_fault_during_flush_turns_read_only_after_the_retries_and_loses_nothing_durable() {
    for (name, op, kind, _) in FAULTS {
        let what = format!("SST {name} during flush");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = with_fs(Options::tiny(), &fs);
        let retries = opts.flush_retries;
        let db = Db::open(dir.path(), opts).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 60, 200);
        db.flush().unwrap();
        fs.inject(fault(op, kind, ".sst", true));
        let e = write_until_error(&db, &mut l, 7, 200, &what);
        match &e {
            Error::ReadOnly(reason) => assert!(
                reason.contains(&format!("flush failed {} times", retries + 1))
                    && reason.contains(".sst"),
                "{what}: reason does not say what failed: {reason}"
            ),
            e => panic!("{what}: expected ReadOnly once the flush failed, got {e:?}"),
        }
        assert!(fs.injected() > 0, "{what}: the fault did not fire");
        let stats = db.stats();
        assert_eq!(stats.flush_retries, u64::from(retries), "{what}");
        assert!(
            stats.background_errors > u64::from(retries),
            "{what}: the failures were not counted as background errors"
        );
        assert_read_only(&db, &what);
        l.check_reads(&db, &what);
        drop(db);
        let (db, _) = l.check_reopen(dir.path(), 0, &what);
        db.close().unwrap();
    }
}

/// A fault that passes (it fires once) on the tables a flush writes: the flush is tried
/// again and succeeds, the failed attempt's table is deleted by the flush thread, the
/// database stays writable, and every write (synced or not) is there after a reopen.
#[test]
fn a_passing_sst_fault_during_flush_is_retried_and_loses_nothing() {
    for (name, op, kind, _) in FAULTS {
        let what = format!("SST {name} during flush, once");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(Options::tiny(), &fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 30, 200);
        db.flush().unwrap();
        let removed_before = fs.removals().len();
        fs.inject(fault(op, kind, ".sst", false));
        l.fill(&db, 30, 200);
        db.flush()
            .unwrap_or_else(|e| panic!("{what}: the retried flush failed: {e}"));
        assert_eq!(fs.injected(), 1, "{what}: the fault did not fire once");
        let stats = db.stats();
        assert!(stats.flush_retries >= 1, "{what}: no retry counted");
        assert!(stats.background_errors >= 1, "{what}: no background error");
        let abandoned: Vec<_> = fs.removals()[removed_before..]
            .iter()
            .filter(|(p, by)| p.extension().is_some_and(|x| x == "sst") && by == "sluice-flush")
            .cloned()
            .collect();
        assert!(
            !abandoned.is_empty(),
            "{what}: the failed attempt's table was not deleted by the flush"
        );
        for (p, _) in &abandoned {
            assert!(!p.exists(), "{what}: {} is still there", p.display());
        }
        l.fill(&db, 10, 200);
        l.check_reads(&db, &what);
        db.close().unwrap();
        let (db, n) = l.check_reopen(dir.path(), 0, &what);
        assert_eq!(n, l.ops.len(), "{what}: writes lost although none failed");
        db.close().unwrap();
    }
}

/// A full disk that gets room again while a flush is being retried (the operator freed
/// space): writes went on meanwhile, the flush then succeeds, and the database never turned
/// read-only.
#[test]
fn a_flush_retried_until_the_disk_has_room_again_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        flush_retries: 10_000,
        flush_retry_interval: Duration::from_millis(5),
        ..with_fs(Options::tiny(), &fs)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let mut l = Ledger::default();
    l.fill(&db, 30, 200);
    db.flush().unwrap();
    fs.inject(fault(FsOp::Append, FaultKind::NoSpace, ".sst", true));
    for _ in 0..5 {
        l.write(&db, false, 2, 50).unwrap();
    }
    std::thread::scope(|s| {
        let flushing = s.spawn(|| db.flush());
        let start = Instant::now();
        while db.stats().flush_retries < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the failing flush was not retried"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // Writes that fit in the memtable go on while the flush waits for room.
        for _ in 0..5 {
            l.write(&db, true, 2, 50)
                .unwrap_or_else(|e| panic!("write while the flush is retried: {e}"));
        }
        fs.clear();
        flushing
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("the flush failed once the disk had room: {e}"));
    });
    assert!(fs.injected() >= 3);
    l.fill(&db, 10, 200);
    db.flush().unwrap();
    l.check_reads(&db, "after the disk had room again");
    db.close().unwrap();
    let (db, n) = l.check_reopen(dir.path(), 0, "after the disk had room again");
    assert_eq!(n, l.ops.len());
    db.close().unwrap();
}

/// A failed directory fsync is never retried, in a flush or in a compaction: the kernel may
/// have dropped directory entries it could not write (another job's new tables among them),
/// and a later fsync that succeeds would not bring them back. Writes stop at once, naming
/// the directory sync, and nothing acknowledged as durable is lost.
#[test]
fn a_failed_directory_sync_stops_writes_at_once() {
    for during in ["flush", "compaction"] {
        let what = format!("directory sync failing during a {during}");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), tiny_manual_compaction(&fs)).unwrap();
        let mut l = Ledger::default();
        for _ in 0..3 {
            l.fill(&db, 20, 100);
            db.flush().unwrap();
        }
        l.fill(&db, 20, 100);
        let sync_dir = |skip| Fault {
            op: FsOp::SyncDir,
            path_contains: None,
            kind: FaultKind::Io,
            skip,
            sticky: false,
        };
        let e = if during == "flush" {
            // The first directory sync is the new WAL's (the memtable frozen); the second,
            // the flush's, before the manifest names its table.
            fs.inject(sync_dir(1));
            db.flush().unwrap_err()
        } else {
            db.flush().unwrap();
            fs.inject(sync_dir(0));
            db.compact().unwrap_err()
        };
        assert_eq!(fs.injected(), 1, "{what}: {e}");
        match db.put("after", "x") {
            Err(Error::ReadOnly(reason)) => {
                assert!(reason.contains("directory sync failed"), "{what}: {reason}")
            }
            other => panic!("{what}: a write after it gave {other:?}"),
        }
        assert_eq!(db.stats().flush_retries, 0, "{what}");
        assert_read_only(&db, &what);
        l.check_reads(&db, &what);
        drop(db);
        let (db, _) = l.check_reopen(dir.path(), 0, &what);
        db.close().unwrap();
    }
}

#[test]
fn sst_fault_during_compaction_is_retried_while_writes_go_on() {
    for (name, op, kind, _) in FAULTS {
        let what = format!("SST {name} during compaction");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        // No automatic compaction: every partition keeps several L0 files for the manual
        // compaction to merge.
        let opts = Options {
            partition: PartitionSpec::Range {
                boundaries: vec![b"op000100".to_vec()],
            },
            ..tiny_manual_compaction(&fs)
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let mut l = Ledger::default();
        for _ in 0..4 {
            l.fill(&db, 60, 100);
            db.flush().unwrap();
        }
        fs.inject(fault(op, kind, ".sst", true));
        match db.compact() {
            Err(Error::Background(msg)) => assert!(msg.contains(".sst"), "{what}: {msg}"),
            other => panic!("{what}: compact gave {other:?}, expected a Background error"),
        }
        assert!(fs.injected() > 0, "{what}: the fault did not fire");
        assert!(
            db.stats().background_errors > 0,
            "{what}: no background error counted"
        );
        // Nothing acknowledged is at risk, so writes (that fit in the memtable) go on.
        for _ in 0..5 {
            l.write(&db, true, 2, 50)
                .unwrap_or_else(|e| panic!("{what}: write after a failed compaction: {e}"));
        }
        l.check_reads(&db, &what);
        fs.clear();
        db.compact()
            .unwrap_or_else(|e| panic!("{what}: compaction after the fault cleared: {e}"));
        l.check_reads(&db, &what);
        db.close().unwrap();
        let (db, n) = l.check_reopen(dir.path(), l.acked(), &what);
        assert_eq!(n, l.ops.len());
        db.close().unwrap();
    }
}

#[test]
fn manifest_fault_fails_the_layout_change_and_turns_read_only() {
    for (name, op, kind, want_errno) in FAULTS {
        let what = format!("MANIFEST {name} on register_partition_fn");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(Options::default(), &fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 30, 100);
        fs.inject(fault(op, kind, "MANIFEST", false));
        let e = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 9,
                hashed_prefix: None,
            })
            .unwrap_err();
        assert_eq!(errno(&e), Some(want_errno), "{what}: {e:?}");
        assert!(
            io_path(&e).contains("MANIFEST"),
            "{what}: error does not name the manifest: {e}"
        );
        assert_read_only(&db, &what);
        l.check_reads(&db, &what);
        drop(db);
        let (db, _) = l.check_reopen(dir.path(), l.acked(), &what);
        let layout = db.layout();
        let torn = db.recovery_report().manifest_torn_tail;
        match (op, kind) {
            // Nothing reached the file: the registration never happened.
            (FsOp::Append, FaultKind::NoSpace | FaultKind::Io) => {
                assert_eq!(layout.versions.len(), 1, "{what}: {layout:?}");
                assert_eq!(torn, None, "{what}");
            }
            // Half a record: a torn tail, dropped; the previous state is back.
            (FsOp::Append, FaultKind::ShortWrite) => {
                assert_eq!(layout.versions.len(), 1, "{what}: {layout:?}");
                assert!(
                    torn.is_some(),
                    "{what}: the torn manifest record was not reported"
                );
            }
            // The record was written but not known durable: either outcome is correct.
            _ => assert!(layout.versions.len() <= 2, "{what}: {layout:?}"),
        }
        assert_eq!(layout.target.0, 1, "{what}");
        db.put("again", "1").unwrap();
        db.close().unwrap();
    }
}

#[test]
fn manifest_fault_during_flush_turns_read_only_and_loses_nothing_durable() {
    for (name, op, kind, _) in FAULTS {
        let what = format!("MANIFEST {name} during flush");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(Options::tiny(), &fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 60, 200);
        fs.inject(fault(op, kind, "MANIFEST", true));
        let e = write_until_error(&db, &mut l, 7, 200, &what);
        match &e {
            Error::ReadOnly(reason) => assert!(reason.contains("MANIFEST"), "{what}: {reason}"),
            e => panic!("{what}: expected ReadOnly once the manifest write failed, got {e:?}"),
        }
        assert!(fs.injected() > 0, "{what}: the fault did not fire");
        assert_read_only(&db, &what);
        l.check_reads(&db, &what);
        drop(db);
        let (db, _) = l.check_reopen(dir.path(), 0, &what);
        db.close().unwrap();
    }
}

/// `Error::is_no_space` is how a caller tells a full disk from other I/O errors; the write
/// that ran out of space must say so.
#[test]
fn enospc_on_the_wal_is_reported_as_no_space() {
    for kind in [FaultKind::NoSpace, FaultKind::ShortWrite] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(Options::default(), &fs)).unwrap();
        db.put("a", "1").unwrap();
        db.sync_wal().unwrap();
        fs.inject(fault(FsOp::Append, kind, ".log", false));
        let e = db
            .write_opt(
                WriteBatch::new().put("b", "2").clone(),
                &WriteOptions { sync: true },
            )
            .unwrap_err();
        assert_eq!(errno(&e), Some(28), "{kind:?}: {e:?}");
        assert!(
            e.is_no_space(),
            "{kind:?}: the failed write's error is not is_no_space(): {e:?}"
        );
    }
}

/// `Db::close` documents that it "flushes the WAL buffer, fsyncs it". If it returns `Ok` on
/// a database that failed earlier, every acknowledged write must therefore be there after
/// reopening; otherwise close must report that it could not make them durable.
///
/// Three failures strike while acknowledged unsynced writes sit in the WAL buffer (a slow
/// WAL ticker and a big buffer keep them there): a failed manifest write (the WAL is
/// healthy; deterministic), a failed flush (the WAL is healthy; how many writes are in the
/// buffer depends on timing) and a failed WAL append.
#[test]
fn close_after_a_failure_reports_it_or_keeps_every_acknowledged_write() {
    let base = Options {
        wal_flush_interval: Duration::from_secs(1),
        wal_buffer_bytes: 8 << 20,
        ..Options::tiny()
    };
    let mut failures = Vec::new();
    let mut judge = |what: &str, dir: &Path, l: &Ledger, closed: sluice::Result<()>| {
        let (db, n) = l.check_reopen(dir, 0, what);
        if closed.is_ok() && n < l.acked() {
            failures.push(format!(
                "{what}: close() returned Ok, but only {n} of {} acknowledged batches survived \
                 the reopen (the others were acknowledged unsynced writes in the WAL buffer)",
                l.acked()
            ));
        }
        db.close().unwrap();
    };

    // (1) A manifest write fails (a layout change): the WAL is healthy.
    {
        let what = "close after a failed manifest write";
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(base.clone(), &fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 5, 100);
        for _ in 0..10 {
            l.write(&db, false, 2, 100).unwrap();
        }
        fs.inject(fault(FsOp::Append, FaultKind::NoSpace, "MANIFEST", false));
        let spec = PartitionSpec::Hash {
            partitions: 2,
            seed: 3,
            hashed_prefix: None,
        };
        assert!(
            db.register_partition_fn(spec).is_err(),
            "{what}: the manifest write did not fail"
        );
        assert!(
            matches!(db.put("x", "y"), Err(Error::ReadOnly(_))),
            "{what}"
        );
        let closed = db.close();
        judge(what, dir.path(), &l, closed);
    }

    // (2) A flush fails (SST ENOSPC): the WAL is healthy.
    {
        let what = "close after a failed flush";
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(base.clone(), &fs)).unwrap();
        let mut l = Ledger::default();
        fs.inject(fault(FsOp::Append, FaultKind::NoSpace, ".sst", true));
        let e = write_until_error(&db, &mut l, 0, 200, what);
        assert!(matches!(e, Error::ReadOnly(_)), "{what}: {e:?}");
        let closed = db.close();
        judge(what, dir.path(), &l, closed);
    }

    // (3) A WAL append fails; the acknowledged writes in the buffer went down with it.
    {
        let what = "close after a failed WAL append";
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), with_fs(base.clone(), &fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 5, 100);
        for _ in 0..10 {
            l.write(&db, false, 2, 100).unwrap();
        }
        fs.inject(fault(FsOp::Append, FaultKind::NoSpace, ".log", false));
        assert!(
            l.write(&db, true, 2, 100).is_err(),
            "{what}: the synced write did not fail"
        );
        let closed = db.close();
        judge(what, dir.path(), &l, closed);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A database on `fs` (default options, so with a block cache) holding `k00000`..`k01999`
/// = `value-{i}` in one flushed table.
fn db_with_a_table(dir: &Path, fs: &FaultFs) -> Db {
    let db = Db::open(dir, with_fs(Options::default(), fs)).unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:05}"), format!("value-{i}")).unwrap();
    }
    db.flush().unwrap();
    db
}

/// A read error on a table block (EIO from `pread`) fails the read that hit it with an I/O
/// error naming the table, caches nothing, and leaves the database as it was: the same read
/// then finds the value, and writes still work. Reads never turn a database read-only.
#[test]
fn eio_on_a_block_read_fails_that_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = db_with_a_table(dir.path(), &fs);
    fs.inject(fault(FsOp::Read, FaultKind::Io, ".sst", false));
    let e = db.get("k01234").unwrap_err();
    assert_eq!(errno(&e), Some(5), "{e:?}");
    assert!(
        io_path(&e).ends_with(".sst"),
        "error names {:?}",
        io_path(&e)
    );
    assert_eq!(fs.injected(), 1);
    assert_eq!(
        db.get("k01234").unwrap().as_deref(),
        Some(&b"value-1234"[..])
    );
    // A scan reads through the same path.
    fs.inject(fault(FsOp::Read, FaultKind::Io, ".sst", false));
    let first = db.range(..).next().unwrap();
    assert_eq!(errno(&first.unwrap_err()), Some(5));
    let all: Vec<_> = db.range(..).collect::<sluice::Result<_>>().unwrap();
    assert_eq!(all.len(), 2000);
    db.put("after", "x").unwrap();
    assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"x"[..]));
}

/// Opening a table reads its filter, index and properties with `pread` (a database with a
/// block cache). A flush whose new table cannot be read back fails and is tried again, as
/// any flush that failed writing its tables (the writes stay in the memtable and the WAL);
/// under a lasting read error it turns the handle read-only once the retries run out. A
/// reopen that cannot read a table fails with an I/O error naming it and changes nothing on
/// disk: once the disk reads again, the reopen finds every write.
#[test]
fn eio_reading_a_tables_metadata_at_open_fails_the_open_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = db_with_a_table(dir.path(), &fs);
    // The flush's new table is opened (and read) before it is installed.
    for i in 0..2000u32 {
        db.put(format!("m{i:05}"), format!("later-{i}")).unwrap();
    }
    fs.inject(fault(FsOp::Read, FaultKind::Io, ".sst", false));
    db.flush().unwrap();
    assert_eq!(fs.injected(), 1);
    assert_eq!(db.stats().flush_retries, 1);
    for i in 0..2000u32 {
        db.put(format!("n{i:05}"), format!("last-{i}")).unwrap();
    }
    fs.inject(fault(FsOp::Read, FaultKind::Io, ".sst", true));
    let e = db.flush().unwrap_err();
    assert!(e.to_string().contains(".sst"), "{e}");
    assert_read_only(&db, "after a flush that could not read its table");
    drop(db);
    fs.inject(fault(FsOp::Read, FaultKind::Io, ".sst", true));
    let e = Db::open(dir.path(), with_fs(Options::default(), &fs))
        .err()
        .expect("a reopen that cannot read a table fails");
    assert_eq!(errno(&e), Some(5), "{e:?}");
    assert!(
        io_path(&e).ends_with(".sst"),
        "error names {:?}",
        io_path(&e)
    );
    fs.clear();
    let db = Db::open(dir.path(), with_fs(Options::default(), &fs)).unwrap();
    for i in (0..2000u32).step_by(7) {
        assert_eq!(
            db.get(format!("k{i:05}")).unwrap().as_deref(),
            Some(format!("value-{i}").as_bytes())
        );
        assert_eq!(
            db.get(format!("m{i:05}")).unwrap().as_deref(),
            Some(format!("later-{i}").as_bytes())
        );
        assert_eq!(
            db.get(format!("n{i:05}")).unwrap().as_deref(),
            Some(format!("last-{i}").as_bytes())
        );
    }
    assert_eq!(db.range(..).count(), 6000);
}

/// A compaction meets a read error now that it reads its inputs with `pread`. A manual
/// compaction under a lasting one (a disk returning EIO for every table read) returns the
/// error once each partition it queued has been tried, instead of waiting out the
/// background retry backoff after every failed partition (up to 6.4 s each: a minute and
/// more for 32 partitions; found by the random-faults soak, which hung). Nothing is lost,
/// writes go on, and once the fault clears the compaction succeeds.
#[test]
fn a_manual_compaction_under_a_lasting_read_error_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        partition: PartitionSpec::Hash {
            partitions: 32,
            seed: 0,
            hashed_prefix: None,
        },
        ..tiny_manual_compaction(&fs)
    };
    let db = Arc::new(Db::open(dir.path(), opts).unwrap());
    for round in 0..2 {
        for i in 0..2000u32 {
            db.put(format!("k{i:05}"), format!("value-{round}-{i}"))
                .unwrap();
        }
        db.flush().unwrap();
    }
    fs.inject(fault(FsOp::Read, FaultKind::Io, ".sst", true));
    // A hang guard, far above what the call takes (well under a second here) and far
    // below what it took before (about a minute).
    let (tx, rx) = std::sync::mpsc::channel();
    let d = db.clone();
    std::thread::spawn(move || {
        let _ = tx.send(d.compact());
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("compact() still waiting after 30 s");
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Background(_)), "{e:?}");
    assert!(e.to_string().contains(".sst"), "{e}");
    db.put("after", "x").unwrap();
    fs.clear();
    db.compact().unwrap();
    for i in (0..2000u32).step_by(7) {
        assert_eq!(
            db.get(format!("k{i:05}")).unwrap().unwrap(),
            format!("value-1-{i}").as_bytes()
        );
    }
    assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"x"[..]));
}

/// The manifest is rewritten (rolled) once it grows past `max_manifest_bytes`. A fault after
/// the new manifest is named in CURRENT (the directory sync after the rename), hit during a
/// compaction, used to be taken for a failed compaction: writes went on, their edits went to
/// the old manifest, and on reopen every later acknowledged write was gone (found by
/// review). Now it turns the database read-only, and every acknowledged write survives.
#[test]
fn a_failed_manifest_roll_during_compaction_turns_read_only_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        // Every install rolls the manifest.
        max_manifest_bytes: 0,
        ..tiny_manual_compaction(&fs)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let synced = WriteOptions { sync: true };
    let put = |k: String, v: &str| {
        let mut b = WriteBatch::new();
        b.put(k, v);
        db.write_opt(b, &synced)
    };
    for i in 0..50 {
        put(format!("a{i:03}"), "first").unwrap();
    }
    db.flush().unwrap();
    for i in 0..50 {
        put(format!("b{i:03}"), "second").unwrap();
    }
    db.flush().unwrap();
    // The first directory sync is the compaction's install; the second is the roll's, after
    // CURRENT was renamed to name the new manifest.
    fs.inject(Fault {
        op: FsOp::SyncDir,
        path_contains: None,
        kind: FaultKind::Io,
        skip: 1,
        sticky: false,
    });
    assert!(
        db.compact().is_err(),
        "the roll's fault fails the compaction"
    );
    assert!(fs.injected() > 0, "the fault did not fire");
    let mut acked = Vec::new();
    for i in 0..50 {
        let k = format!("c{i:03}");
        if put(k.clone(), "third").is_ok() {
            acked.push(k);
        }
    }
    let _ = db.flush();
    assert!(
        acked.is_empty(),
        "writes after a failed manifest roll were accepted: {acked:?}"
    );
    assert_read_only(&db, "failed manifest roll");
    drop(db);
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    let all = dump(&db).unwrap();
    for i in 0..50 {
        assert_eq!(
            all.get(format!("a{i:03}").as_bytes()).map(|v| &v[..]),
            Some(&b"first"[..])
        );
        assert_eq!(
            all.get(format!("b{i:03}").as_bytes()).map(|v| &v[..]),
            Some(&b"second"[..])
        );
    }
}

/// A crash leaves the newest WAL with a torn last record (legitimate for unsynced writes);
/// the next open creates its new WAL and then fails on a transient fault before its
/// recovery flush is installed. The torn WAL is no longer the newest, but nothing was
/// written after it: the open after that must still succeed (it used to refuse forever,
/// "damaged record in an older WAL"; found by review) and keep every synced write.
#[test]
fn a_torn_wal_tail_survives_an_open_that_failed_after_creating_its_wal() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let wals = |dir: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        v.sort();
        v
    };
    let db = Db::open(dir.path(), Options::default()).unwrap();
    for i in 0..10 {
        let mut b = WriteBatch::new();
        b.put(format!("k{i}"), "v");
        db.write_opt(b, &WriteOptions { sync: true }).unwrap();
    }
    db.close().unwrap();
    let before = wals(dir.path());
    // A torn record after the synced ones, as a crash mid-append leaves it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(before.last().unwrap())
        .unwrap()
        .write_all(&[0x40, 0, 0, 0, 0xde, 0xad])
        .unwrap();
    let fs = FaultFs::new();
    fs.inject(fault(FsOp::Create, FaultKind::Io, ".sst", false));
    assert!(
        Db::open(dir.path(), with_fs(Options::default(), &fs)).is_err(),
        "the recovery flush's table could not be created"
    );
    assert!(
        wals(dir.path()).len() > before.len(),
        "the failed open left its new WAL: {:?}",
        wals(dir.path())
    );
    // `sluice verify` agrees with recovery: a warning for the torn end, not an error.
    let rep = verify(dir.path());
    assert!(rep.is_ok(), "verify: {:?}", rep.problems);
    assert!(
        rep.problems.iter().any(|p| p.message.contains("torn tail")),
        "verify names the torn tail: {:?}",
        rep.problems
    );
    let db = Db::open(dir.path(), Options::default()).unwrap();
    for i in 0..10 {
        assert_eq!(db.get(format!("k{i}")).unwrap().as_deref(), Some(&b"v"[..]));
    }
}

/// A WAL that cannot be created at rotation (EIO, EMFILE, a quota) fails the rotation and
/// loses none of the writes acknowledged before it: the old WAL's buffered records are
/// handed to the OS before the new WAL is created. (When the new WAL was created first,
/// they were still in the buffer when the creation failed, and the failed WAL was never
/// written again.) Nothing was written to a new WAL, so writes go on in the old one and a
/// later rotation tries again (it used to turn the database read-only until reopened).
#[test]
fn a_wal_that_cannot_be_created_at_rotation_loses_no_acknowledged_write() {
    let what = "WAL creation fails at rotation";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        // Only the rotation may write the buffer out: no ticker, no size trigger.
        wal_flush_interval: Duration::from_secs(3600),
        wal_buffer_bytes: 1 << 20,
        ..with_fs(Options::default(), &fs)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..50 {
        db.put(format!("k{i:02}"), format!("v{i}")).unwrap();
    }
    fs.inject(fault(FsOp::Create, FaultKind::Io, ".log", false));
    let e = db.flush().expect_err("the new WAL could not be created");
    assert_eq!(errno(&e), Some(5), "{what}: {e:?}");
    assert!(fs.injected() > 0, "{what}: the fault did not fire");
    db.put("after", "x").unwrap();
    db.flush().unwrap();
    drop(db);
    fs.clear();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let all = dump(&db).unwrap();
    for i in 0..50 {
        assert_eq!(
            all.get(format!("k{i:02}").as_bytes()).map(|v| v.as_slice()),
            Some(format!("v{i}").as_bytes()),
            "{what}: write {i} lost"
        );
    }
    assert_eq!(
        all.get(&b"after"[..]).map(|v| v.as_slice()),
        Some(&b"x"[..])
    );
    db.close().unwrap();
}

/// Runs `action` once, when verify starts checking tables: after it has read the manifest
/// and listed the WALs, before it reads them.
struct OnTableChecks<F: Fn() -> bool + Sync> {
    action: F,
    ran: std::sync::atomic::AtomicBool,
    /// What `action` returned: whether it did what the test needs.
    done: std::sync::atomic::AtomicBool,
}

impl<F: Fn() -> bool + Sync> sluice::inspect::VerifyProgress for OnTableChecks<F> {
    fn phase(&self, name: &str, _: Option<u64>, _: &str) {
        use std::sync::atomic::Ordering::{AcqRel, Release};
        if name == "sstables" && !self.ran.swap(true, AcqRel) {
            self.done.store((self.action)(), Release);
        }
    }
}

/// `sluice verify` of `dir` with `action` run between its listing of the WALs and its
/// reading them. Returns the report and what `action` returned.
fn verify_racing(
    dir: &Path,
    action: impl Fn() -> bool + Sync,
) -> (sluice::inspect::VerifyReport, bool) {
    let progress = OnTableChecks {
        action,
        ran: Default::default(),
        done: Default::default(),
    };
    let rep =
        sluice::inspect::verify_dir(dir, &sluice::inspect::VerifyOptions::default(), &progress)
            .unwrap();
    (rep, progress.done.into_inner())
}

fn log_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

/// A database on `fs` (tiny memtables) whose first flush is held, so that WAL rotations
/// change no manifest until `fs.release_held()`. It writes until its first rotation, then
/// waits for the flush to reach its hold without writing more (a rotation with no room
/// left for frozen memtables would wait for the held flush for ever); room for many
/// frozen memtables leaves the tests rotations of their own.
fn open_with_flush_held(dir: &Path, fs: &FaultFs, what: &str) -> Db {
    let opts = Options {
        max_immutable_memtables: 64,
        ..with_fs(Options::tiny(), fs)
    };
    let db = Db::open(dir, opts).unwrap();
    fs.hold_syncs(".sst", "sluice-flush");
    let rotated = rotate_wal(&db, dir);
    let end = Instant::now() + Duration::from_secs(30);
    while fs.held() == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !rotated || fs.held() == 0 {
        fs.release_held();
        panic!("{what}: the first flush was never held (rotated: {rotated})");
    }
    db
}

/// Writes to `db` until it rotates its WAL (a new `.log` in `dir`): whether it did. Never
/// panics: unwinding would drop the database while its flush is held.
fn rotate_wal(db: &Db, dir: &Path) -> bool {
    let wals = log_files(dir);
    for i in 0..10_000 {
        if db.put(format!("more{i:05}"), [b'v'; 100]).is_err() {
            return false;
        }
        if log_files(dir) > wals {
            return true;
        }
    }
    false
}

/// `sluice verify` of a live directory whose writer rotates its WAL after verify listed the
/// WALs: the last listed WAL now names a successor the listing lacks. That WAL is in the
/// directory, so it is no break in the chain (it was reported as a missing WAL). The flush
/// is held so that the rotation changes no manifest (which would make verify start again).
#[test]
fn verify_of_a_live_directory_takes_a_wal_created_after_its_listing_for_no_break() {
    let what = "verify racing a rotation";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = open_with_flush_held(dir.path(), &fs, what);
    let (rep, rotated) = verify_racing(dir.path(), || rotate_wal(&db, dir.path()));
    // Let go before asserting: a failed assertion drops the database, which waits for the
    // held flush.
    fs.release_held();
    assert!(rotated, "{what}: no rotation during the table checks");
    assert!(rep.is_ok(), "{what}: {:?}", rep.problems);
    db.close().unwrap();
}

/// `sluice verify` of a live directory whose writer flushes after verify listed the WALs:
/// the flush deletes a listed WAL, which verify then cannot read. The manifest changed
/// meanwhile, so verify starts again instead of reporting it (it was reported as an error).
#[test]
fn verify_of_a_live_directory_starts_again_when_a_flush_deletes_a_listed_wal() {
    let what = "verify racing a flush";
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    for i in 0..100 {
        db.put(format!("k{i:03}"), "v").unwrap();
    }
    let first = sluice::inspect::read_dir_state(dir.path()).unwrap().wals;
    let (rep, deleted) = verify_racing(dir.path(), || {
        // The flush removes the WALs it made obsolete just after its caller is let go.
        let end = Instant::now() + Duration::from_secs(5);
        db.flush().is_ok()
            && std::iter::from_fn(|| {
                (Instant::now() < end).then(|| std::thread::sleep(Duration::from_millis(1)))
            })
            .any(|()| first.iter().any(|w| !w.path.exists()))
    });
    assert!(deleted, "{what}: the flush deleted no listed WAL");
    assert!(rep.is_ok(), "{what}: {:?}", rep.problems);
    db.close().unwrap();
}

/// `sluice verify` of a live directory holding an obsolete WAL (one below the manifest's
/// log number, whose removal failed) that the live process removes after verify listed the
/// WALs: that removal follows a manifest edit already durable, so the manifest does not
/// change under verify, and an obsolete WAL gone is nothing lost (it was reported as a
/// missing file, found by review).
#[test]
fn verify_of_a_live_directory_takes_an_obsolete_wal_removed_after_its_listing_for_no_loss() {
    let what = "verify racing an obsolete WAL's removal";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), with_fs(Options::default(), &fs)).unwrap();
    db.put("k", "v").unwrap();
    fs.inject(fault(FsOp::Remove, FaultKind::Io, ".log", true));
    db.flush().unwrap();
    // The fault stays armed: the engine retries removing obsolete WALs in the background.
    let obsolete: Vec<_> = sluice::inspect::read_dir_state(dir.path())
        .unwrap()
        .wals
        .into_iter()
        .filter(|w| !w.live)
        .collect();
    assert_eq!(
        obsolete.len(),
        1,
        "{what}: the flush's WAL removal did not fail"
    );
    let before = verify_racing(dir.path(), || true).0;
    assert!(before.is_ok(), "{what}: {:?}", before.problems);
    assert!(
        before
            .problems
            .iter()
            .any(|p| p.message.contains("obsolete WAL")),
        "{what}: {:?}",
        before.problems
    );
    let (rep, removed) = verify_racing(dir.path(), || {
        std::fs::remove_file(&obsolete[0].path).is_ok()
    });
    assert!(removed, "{what}: the obsolete WAL was not removed");
    assert!(rep.is_ok(), "{what}: {:?}", rep.problems);
    fs.clear();
    db.close().unwrap();
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// The real file system, with hooks into a reader's recovery (each optional):
/// `on_wal_read` runs when it reads its first WAL after listing the directory (between
/// its listing of the WALs and its reading them); `on_mark(n)` just after its `n`th look
/// at the manifest's size (a read-only open looks twice per attempt: before it, and after
/// a failure); `on_list(n)` just before its `n`th listing of the directory (a read-only
/// open lists the tables the manifest does not name, then the WALs). A read of the file
/// `torn.0` returns it short of its last `torn.1` bytes, once: what a read racing the
/// write that appends them sees.
#[derive(Default)]
struct ReaderHooks {
    on_wal_read: Option<Hook>,
    on_mark: Option<Box<dyn Fn(usize) + Send + Sync>>,
    on_list: Option<Box<dyn Fn(usize) + Send + Sync>>,
    torn: std::sync::Mutex<Option<(std::path::PathBuf, usize)>>,
    listed: std::sync::atomic::AtomicBool,
    marks: std::sync::atomic::AtomicUsize,
    lists: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for ReaderHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaderHooks")
    }
}

impl Fs for ReaderHooks {
    sluice_tests::std_fs_methods!(
        create,
        rename,
        remove,
        sync_dir,
        create_dir_all,
        exists,
        lock,
        hard_link,
        available_space
    );
    fn read_file(&self, path: &Path) -> std::io::Result<bytes::Bytes> {
        use std::sync::atomic::Ordering::AcqRel;
        if path.extension().is_some_and(|x| x == "log") && self.listed.swap(false, AcqRel) {
            if let Some(hook) = &self.on_wal_read {
                hook();
            }
        }
        let data = StdFs.read_file(path)?;
        let mut torn = self.torn.lock().unwrap();
        match torn.as_ref() {
            Some((p, cut)) if p == path => {
                let keep = data.len() - cut;
                *torn = None;
                Ok(data.slice(..keep))
            }
            _ => Ok(data),
        }
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let n = self.lists.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        if let Some(hook) = &self.on_list {
            hook(n);
        }
        let names = StdFs.list(dir);
        self.listed
            .store(true, std::sync::atomic::Ordering::Release);
        names
    }
    fn file_size(&self, path: &Path) -> std::io::Result<u64> {
        let size = StdFs.file_size(path);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("MANIFEST-") {
            let n = self.marks.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
            if let Some(hook) = &self.on_mark {
                hook(n);
            }
        }
        size
    }
}

/// A read-only open of a live directory whose writer (its first flush held, so that its
/// manifest stays as it is) rotates its WAL between each attempt's listing of the WALs and
/// its reading them: each attempt finds the last listed WAL naming a successor the listing
/// lacks. `on_mark(db, fs, n)` runs after the reader's `n`th look at the manifest's size.
/// Returns what the open said; then checks that, once the writer has closed, it opens.
fn read_only_open_racing_rotations(
    what: &str,
    wal_recovery: sluice::WalRecovery,
    on_mark: impl Fn(&Db, &FaultFs, usize) + Send + Sync + 'static,
) -> sluice::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Arc::new(open_with_flush_held(dir.path(), &fs, what));
    let tried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rotated = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader_fs = ReaderHooks {
        on_wal_read: Some({
            let (db, tried, rotated) = (db.clone(), tried.clone(), rotated.clone());
            let dir = dir.path().to_path_buf();
            Box::new(move || {
                tried.fetch_add(1, Relaxed);
                if rotate_wal(&db, &dir) {
                    rotated.fetch_add(1, Relaxed);
                }
            })
        }),
        on_mark: Some({
            let (db, fs) = (db.clone(), fs.clone());
            Box::new(move |n| on_mark(&db, &fs, n))
        }),
        ..ReaderHooks::default()
    };
    let r = Db::open_read_only(
        dir.path(),
        Options {
            fs: Arc::new(reader_fs),
            wal_recovery,
            ..Options::tiny()
        },
    )
    .map(drop);
    // Let go before asserting: a failed assertion drops the database, which waits for the
    // held flush.
    fs.release_held();
    let (tried, rotated) = (tried.load(Relaxed), rotated.load(Relaxed));
    assert!(tried > 1, "{what}: the open was not retried");
    assert_eq!(rotated, tried, "{what}: an attempt saw no rotation");
    db.put("last", "1").unwrap();
    let Ok(db) = Arc::try_unwrap(db) else {
        panic!("{what}: the reader's file system still holds the database");
    };
    db.close().unwrap();
    let reader = Db::open_read_only(dir.path(), Options::tiny()).unwrap();
    assert_eq!(
        reader.get("last").unwrap().as_deref(),
        Some(&b"1"[..]),
        "{what}"
    );
    assert!(reader.get("more00000").unwrap().is_some(), "{what}");
    r
}

/// A read-only open whose every attempt races a WAL rotation (see
/// `read_only_open_racing_rotations`), with the manifest unchanged throughout: the
/// successor each attempt missed is in the directory by then, so the open is busy, not
/// damaged (it was reported as a missing WAL, found by review).
#[test]
fn a_read_only_open_racing_wal_rotations_is_busy_not_corrupt() {
    let what = "read-only open racing rotations";
    let r = read_only_open_racing_rotations(what, sluice::WalRecovery::default(), |_, _, _| {});
    assert!(matches!(r, Err(Error::Busy { .. })), "{what}: {r:?}");
}

/// The same with point-in-time recovery, which stops at a missing link and opens with
/// what came before it: busy too, not an open reporting the successor's writes lost (it
/// opened with `RecoveryReport::wal_missing` set, found by review).
#[test]
fn a_point_in_time_read_only_open_racing_wal_rotations_is_busy_not_short() {
    let what = "point-in-time read-only open racing rotations";
    let r = read_only_open_racing_rotations(what, sluice::WalRecovery::PointInTime, |_, _, _| {});
    assert!(matches!(r, Err(Error::Busy { .. })), "{what}: {r:?}");
}

/// As above, and in the open's last attempt the writer flushes just after the reader's
/// second look at the manifest, deleting the successor that attempt missed. The reader
/// must look for that WAL before it looks at the manifest: the other way round, it saw
/// an unchanged manifest and then no WAL, and called a healthy directory corrupt (found
/// by review, with the look made after a 320 ms sleep).
#[test]
fn a_read_only_open_looks_for_the_missed_wal_before_the_manifest() {
    let what = "read-only open, missed WAL flushed away";
    static FLUSHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // Five attempts, two looks at the manifest each: the last attempt's second look.
    let r = read_only_open_racing_rotations(what, sluice::WalRecovery::default(), |db, fs, n| {
        if n != 10 {
            return;
        }
        let dir = db.path().to_path_buf();
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<u64>().ok()
            })
            .max()
            .unwrap();
        fs.release_held();
        db.flush().unwrap();
        let gone = dir.join(format!("{newest:06}.log"));
        let end = Instant::now() + Duration::from_secs(10);
        while gone.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        FLUSHED.store(!gone.exists(), std::sync::atomic::Ordering::Release);
    });
    assert!(
        FLUSHED.load(std::sync::atomic::Ordering::Acquire),
        "{what}: the missed WAL was not flushed away in the last attempt"
    );
    assert!(matches!(r, Err(Error::Busy { .. })), "{what}: {r:?}");
}

/// A point-in-time read-only open of a live directory whose writer flushes (and deletes
/// the flushed WAL) between the open's reading the manifest and its listing the WALs: the
/// WAL the manifest it read names is gone, which is the race, not a loss. The open must
/// retry (or say busy), not open without the writes that WAL held, all synced before the
/// open began (it opened Ok, with `RecoveryReport::wal_missing` set, missing them).
#[test]
fn a_point_in_time_read_only_open_racing_a_flush_does_not_lose_synced_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            idle_memtable_flush_after: None,
            ..Options::default()
        },
    )
    .unwrap();
    db.put("flushed-before", "0").unwrap();
    db.flush().unwrap();
    db.put("acked", "1").unwrap();
    db.sync_wal().unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    let flushed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_fs = ReaderHooks {
        // Just after the first listing (of the tables), before the second (of the WALs).
        on_list: Some(Box::new({
            let (db, dir, flushed) = (db.clone(), dir.path().to_path_buf(), flushed.clone());
            move |n| {
                if n != 2 {
                    return;
                }
                db.flush().unwrap();
                let end = Instant::now() + Duration::from_secs(30);
                while before.iter().any(|n| dir.join(n).exists()) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(1));
                }
                flushed.store(
                    !before.iter().any(|n| dir.join(n).exists()),
                    std::sync::atomic::Ordering::Release,
                );
            }
        })),
        ..ReaderHooks::default()
    };
    let r = Db::open_read_only(
        dir.path(),
        Options {
            fs: Arc::new(reader_fs),
            wal_recovery: WalRecovery::PointInTime,
            ..Options::default()
        },
    );
    assert!(
        flushed.load(std::sync::atomic::Ordering::Acquire),
        "the flushed WAL was not deleted during the open"
    );
    match r {
        Ok(ro) => {
            assert_eq!(
                ro.get("acked").unwrap().as_deref(),
                Some(&b"1"[..]),
                "a write synced before the open began is missing ({:?})",
                ro.recovery_report().wal_missing
            );
            assert_eq!(
                ro.get("flushed-before").unwrap().as_deref(),
                Some(&b"0"[..])
            );
        }
        Err(e) => assert!(matches!(e, Error::Busy { .. }), "{e}"),
    }
}

/// A read-only open of a live directory that lists the WALs just after the writer created
/// its next WAL, reads the WAL it rotates away from while the record naming the next one
/// is being appended (a torn tail: the record's last byte not there yet), and then reads
/// the next WAL, into which the writer has written and synced meanwhile. That torn tail is
/// a live writer's record being written, not damage: the open must retry (or say busy),
/// not call a healthy directory's WAL damaged (it reported "damaged WAL record ... in an
/// older WAL", found by review). Point in time, opening as of the torn record is fine.
#[test]
fn a_read_only_open_reading_a_successor_record_being_written_is_not_damage() {
    for wal_recovery in [WalRecovery::default(), WalRecovery::PointInTime] {
        let what = format!("read-only open ({wal_recovery:?}) racing a rotation's last record");
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Arc::new(open_with_flush_held(dir.path(), &fs, &what));
        db.put("before-open", "1").unwrap();
        db.sync_wal().unwrap();
        let old = newest_wal(dir.path()).unwrap();
        let rotated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader_fs = {
            let (db, dir, rotated) = (db.clone(), dir.path().to_path_buf(), rotated.clone());
            Arc::new(ReaderHooks {
                // The second listing is of the WALs: the writer rotates (and syncs a write
                // into its new WAL) just before it.
                on_list: Some(Box::new(move |n| {
                    if n == 2 && rotate_wal(&db, &dir) && db.sync_wal().is_ok() {
                        rotated.store(true, std::sync::atomic::Ordering::Release);
                    }
                })),
                torn: std::sync::Mutex::new(Some((old, 1))),
                ..ReaderHooks::default()
            })
        };
        let r = Db::open_read_only(
            dir.path(),
            Options {
                fs: reader_fs,
                wal_recovery,
                ..Options::tiny()
            },
        );
        fs.release_held();
        assert!(
            rotated.load(std::sync::atomic::Ordering::Acquire),
            "{what}: no rotation"
        );
        match r {
            Ok(ro) => assert_eq!(
                ro.get("before-open").unwrap().as_deref(),
                Some(&b"1"[..]),
                "{what}: a write synced before the open began is missing"
            ),
            Err(e) => assert!(matches!(e, Error::Busy { .. }), "{what}: {e}"),
        }
    }
}

/// A transaction whose commit-time read check fails (EIO on a table block) in the same
/// commit group as a plain write fails alone: the plain write is acknowledged and survives,
/// nothing of the transaction is written, and reopening and writing on work. Before, the
/// whole group failed while the plain write's record stayed in the WAL buffer: it came back
/// after the reopen although its writer was told it failed, or the next group reused its
/// seqnos and the database no longer opened (found by review).
#[test]
fn a_failed_transaction_check_fails_only_that_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = || with_fs(Options::default(), &fs);
    let db = Db::open(dir.path(), opts()).unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:05}"), "v0").unwrap();
    }
    db.flush().unwrap();
    // The transaction reads a key that changes afterwards, in a table: checking it at
    // commit reads that table's block.
    let mut t = db.transaction();
    t.get("k01000").unwrap();
    t.put("k01000", "from the transaction");
    db.put("k01000", "newer").unwrap();
    for i in (0..2000u32).step_by(7) {
        db.put(format!("k{i:05}"), "v1").unwrap();
    }
    db.flush().unwrap();
    // A slow fsync holds the WAL while a plain write and then the commit queue behind it,
    // so the two form the next group.
    fs.set_sync_delay(Some(Duration::from_millis(400)));
    let (plain, txn) = std::thread::scope(|s| {
        let db = &db;
        s.spawn(move || {
            let mut b = WriteBatch::new();
            b.put("synced", "1");
            db.write_opt(b, &WriteOptions { sync: true }).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        let plain = s.spawn(move || db.put("plain", "x"));
        std::thread::sleep(Duration::from_millis(100));
        fs.inject(fault(FsOp::Read, FaultKind::Io, ".sst", false));
        let txn = s.spawn(move || t.commit());
        (plain.join().unwrap(), txn.join().unwrap())
    });
    fs.set_sync_delay(None);
    assert_eq!(fs.injected(), 1, "the commit's check read the table");
    let e = txn.unwrap_err();
    assert_eq!(errno(&e), Some(5), "{e:?}");
    plain.unwrap();
    db.put("after", "y").unwrap();
    db.close().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.get("plain").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(db.get("k01000").unwrap().as_deref(), Some(&b"newer"[..]));
    assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"y"[..]));
    db.put("after reopen", "z").unwrap();
    db.close().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.get("after reopen").unwrap().as_deref(), Some(&b"z"[..]));
}

/// A compaction whose manifest edit fails to sync leaves the edit in the file (the page
/// cache holds it): a reopen replays it, so the compaction's outputs must still exist. They
/// used to be deleted at once, and the reopen failed on a missing table named by the
/// manifest (found by review). Now they stay until the open's orphan sweep, and the
/// reopened database holds every write.
#[test]
fn a_failed_manifest_sync_during_compaction_keeps_the_outputs_it_may_name() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), tiny_manual_compaction(&fs)).unwrap();
    for round in 0..3 {
        for i in 0..200u32 {
            db.put(format!("k{i:04}"), format!("v{round}")).unwrap();
        }
        db.flush().unwrap();
    }
    fs.inject(fault(FsOp::Sync, FaultKind::Io, "MANIFEST", false));
    assert!(db.compact().is_err());
    assert_eq!(fs.injected(), 1);
    let _ = db.close();
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    for i in 0..200u32 {
        assert_eq!(
            db.get(format!("k{i:04}")).unwrap().as_deref(),
            Some(&b"v2"[..]),
            "k{i:04}"
        );
    }
    db.close().unwrap();
}

/// A full memtable waits only for the flushes before it, never behind compactions: with
/// both general workers held in compactions (each at its output's fsync), the writer goes
/// on through many memtables, each flushed by the flush thread. Then the power is cut while
/// the compactions are still unfinished, and every write (all covered by a `sync_wal`)
/// survives with its last value.
#[test]
fn flushes_go_on_while_every_compaction_worker_is_held() {
    let what = "compactions held";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        partition: PartitionSpec::Hash {
            partitions: 4,
            seed: 0,
            hashed_prefix: None,
        },
        // L0 grows while its compactions are held: no slowdown or stop on its account.
        level0_slowdown_trigger: 500,
        level0_stop_trigger: 1000,
        background_threads: 2,
        ..with_fs(Options::tiny(), &fs)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    fs.hold_syncs(".sst", "sluice-bg");
    let done = std::sync::atomic::AtomicBool::new(false);
    let deadline = |secs: u64, what_for: &str, ok: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !ok() {
            if Instant::now() > end {
                // Let the writer finish before failing, so that the test ends.
                fs.release_held();
                panic!("{what}: {what_for} within {secs} s (held: {})", fs.held());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let (model, flushes_while_held) = std::thread::scope(|s| {
        // Overwrites spread over 2000 keys, so that every flush overlaps the tables below
        // it and compactions (not trivial moves) follow. They go on until both general
        // workers are held, then 3000 more.
        let writer = s.spawn(|| {
            let mut model = std::collections::BTreeMap::new();
            let mut i = 0u64;
            let mut put = |i: u64| {
                let k = format!("key{:05}", i * 7919 % 2000).into_bytes();
                let mut v = format!("v{i}/").into_bytes();
                v.resize(100, b'.');
                db.put(&k, &v).unwrap();
                model.insert(k, v);
            };
            while fs.held() < 2 && i < 200_000 {
                put(i);
                i += 1;
            }
            for j in i..i + 3000 {
                put(j);
            }
            db.sync_wal().unwrap();
            done.store(true, std::sync::atomic::Ordering::Release);
            model
        });
        deadline(60, "both general workers held in compactions", &|| {
            fs.held() == 2
        });
        let flushes = db.stats().flushes;
        deadline(60, "3000 writes while compactions are held", &|| {
            done.load(std::sync::atomic::Ordering::Acquire)
        });
        assert_eq!(fs.held(), 2, "{what}: the compactions were let go");
        let flushed = db.stats().flushes - flushes;
        (writer.join().unwrap(), flushed)
    });
    // 3000 writes of ~110 bytes through 16 KiB memtables.
    assert!(
        flushes_while_held >= 10,
        "{what}: only {flushes_while_held} flushes while the compactions were held"
    );
    assert_eq!(
        dump(&db).unwrap(),
        model,
        "{what}: reads before the power cut"
    );
    // The power fails with the compactions unfinished: their fsyncs fail once let go.
    fs.fail_all_syncs();
    fs.release_held();
    drop(db);
    fs.lose_unsynced().unwrap();
    fs.clear();
    assert_eq!(
        engine_thread_panics(),
        0,
        "{what}: an engine thread panicked"
    );
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        dump(&db).unwrap(),
        model,
        "{what}: reads after the power cut"
    );
    db.close().unwrap();
}

/// A CURRENT that cannot be looked at (permission denied on the way to it) is an I/O error
/// naming it, not a missing database: a writable open used to take the directory for one
/// without CURRENT and refuse it as "not a database" (or, in an empty-looking directory,
/// start a new one over it). Nothing is touched, and the data is there once the fault goes.
#[test]
fn a_current_that_cannot_be_looked_at_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.put("kept", "yes").unwrap();
    db.close().unwrap();
    let names = |p: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = names(dir.path());
    let fs = FaultFs::new();
    fs.inject(fault(FsOp::Stat, FaultKind::Denied, "CURRENT", true));
    for read_only in [false, true] {
        let opts = with_fs(Options::default(), &fs);
        let r = if read_only {
            Db::open_read_only(dir.path(), opts)
        } else {
            Db::open(dir.path(), opts)
        };
        match r {
            Err(e) => {
                assert_eq!(errno(&e), Some(13), "read-only {read_only}: {e}");
                assert!(
                    io_path(&e).ends_with("CURRENT"),
                    "read-only {read_only}: {e}"
                );
            }
            Ok(_) => panic!("read-only {read_only}: opened without seeing CURRENT"),
        }
    }
    assert!(fs.injected() >= 2);
    assert_eq!(
        names(dir.path()),
        before,
        "the refused opens changed the directory"
    );
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(db.get("kept").unwrap().as_deref(), Some(&b"yes"[..]));
    db.close().unwrap();
}

/// Releases every held fsync when dropped: declared after the database, it runs first
/// should an assertion unwind, so the database's drop does not wait on a held thread.
struct ReleaseHeld<'a>(&'a FaultFs);

impl Drop for ReleaseHeld<'_> {
    fn drop(&mut self) {
        self.0.release_held();
    }
}

/// A database on `fs` with tiny memtables, whose background WAL syncs and flushes are
/// held (so nothing syncs the rotated WAL but the test's own writes), holding `k00000` (synced) and then unsynced keys up to and just past its first WAL
/// rotation, each handed to the OS as it is written. Returns the keys in write order and how
/// many were written before the rotation.
fn rotate_with_wal_sync_held(dir: &Path, fs: &FaultFs) -> (Db, Vec<String>, usize) {
    let db = Db::open(dir, rotating(fs)).unwrap();
    // The rotated WAL's fsync is held whoever makes it: the background syncer, or the
    // flush of its memtable (which syncs it before writing the table).
    fs.hold_syncs(".log", "sluice-wal-sync");
    fs.hold_syncs(".log", "sluice-flush");
    fs.hold_syncs(".sst", "sluice-flush");
    let mut keys = vec!["k00000".to_string()];
    put_synced(&db, "k00000");
    put_until_rotation(&db, dir, &mut keys);
    let before = keys.len();
    put_more(&db, &mut keys, 5);
    (db, keys, before)
}

/// Writes `key` with `sync`.
fn put_synced(db: &Db, key: &str) {
    let mut b = WriteBatch::new();
    b.put(key, [b'v'; 100]);
    db.write_opt(b, &WriteOptions { sync: true }).unwrap();
}

/// Writes `n` more unsynced keys.
fn put_more(db: &Db, keys: &mut Vec<String>, n: usize) {
    for _ in 0..n {
        let k = format!("k{:05}", keys.len());
        db.put(&k, [b'v'; 100]).unwrap();
        keys.push(k);
    }
}

/// Which of `keys` a database holds, checking that they are a prefix.
fn prefix_present(db: &Db, keys: &[String], what: &str) -> usize {
    let present: Vec<bool> = keys.iter().map(|k| db.get(k).unwrap().is_some()).collect();
    let n = present.iter().take_while(|&&p| p).count();
    assert!(
        present[n..].iter().all(|&p| !p),
        "{what}: a hole: key {} is missing but later ones are present",
        keys[n]
    );
    n
}

/// A WAL rotated away from is fsynced in the background while writes go on into the next.
/// A synced write in the next WAL is not acknowledged before the older WAL is durable: it
/// syncs the older WAL itself, or waits for the background sync (held here, so released
/// once the write has waited a while). After a power cut every write before it is there.
#[test]
fn a_synced_write_waits_for_the_wal_before_it_to_be_durable() {
    let what = "synced write after a rotation";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let (db, mut keys, _) = rotate_with_wal_sync_held(dir.path(), &fs);
    let release = ReleaseHeld(&fs);
    keys.push("synced".into());
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut b = WriteBatch::new();
            b.put("synced", "1");
            tx.send(db.write_opt(b, &WriteOptions { sync: true }))
                .unwrap();
        })
    };
    match rx.recv_timeout(Duration::from_millis(300)) {
        Ok(r) => r.unwrap(),
        Err(_) => {
            fs.release_held();
            rx.recv().unwrap().unwrap();
        }
    }
    writer.join().unwrap();
    fs.fail_all_syncs();
    drop(release);
    drop(db);
    // Before its first sync the newer WAL recorded that the one before it was durable (so
    // that damage to the older one's end is not taken for a crash's cut later).
    let newest = newest_wal(dir.path()).unwrap();
    assert!(
        sluice::inspect::read_wal_file(&newest)
            .unwrap()
            .notes_earlier,
        "{what}: {} does not say the WAL before it is durable",
        newest.display()
    );
    fs.lose_unsynced().unwrap();
    fs.clear();
    let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(prefix_present(&db, &keys, what), keys.len(), "{what}");
    db.close().unwrap();
}

/// A power cut after the OS wrote back the newest WAL's pages but not the end of the WAL
/// before it (whose background fsync had not run): recovery keeps what the older WAL still
/// holds and drops the newer WAL (unsynced writes only), so no hole opens, and the default
/// (strict) recovery opens.
#[test]
fn a_power_cut_before_a_rotated_wal_is_synced_keeps_a_prefix() {
    let what = "power cut before the older WAL's background fsync";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let (db, keys, before) = rotate_with_wal_sync_held(dir.path(), &fs);
    fs.fail_all_syncs();
    fs.release_held();
    drop(db);
    let newest = newest_wal(dir.path()).unwrap();
    fs.lose_unsynced_except(|p| p == newest).unwrap();
    fs.clear();
    let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (cut, _, dropped) = db
        .recovery_report()
        .wal_cut_short
        .clone()
        .unwrap_or_else(|| {
            panic!(
                "{what}: no cut reported: {:?}, files {:?}",
                db.recovery_report(),
                std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect::<Vec<_>>()
            )
        });
    assert_ne!(cut, newest, "{what}");
    assert!(dropped > 0, "{what}");
    let n = prefix_present(&db, &keys, what);
    assert!(n >= 1, "{what}: the synced write is lost");
    assert!(
        n < before,
        "{what}: {n} keys survived, the newer WAL's among them"
    );
    db.close().unwrap();
}

/// A failed fsync of a WAL rotated away from, off the writers' path (by the background
/// syncer, or by the flush of its memtable, whichever comes first): writes are refused from
/// then on (the kernel may have dropped pages it could not write), naming the WAL, and
/// nothing acknowledged is lost once reopened (every write is handed to the OS as it is
/// acknowledged: a failed database drops what its WAL buffer holds, as a crashed process
/// would).
#[test]
fn a_failed_background_wal_sync_refuses_writes_and_loses_nothing() {
    let what = "failed background WAL sync";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), rotating(&fs)).unwrap();
    fs.inject(fault(FsOp::Sync, FaultKind::Io, ".log", true));
    let start = Instant::now();
    let mut acked = Vec::new();
    let e = loop {
        let k = format!("k{:05}", acked.len());
        match db.put(&k, [b'v'; 100]) {
            Ok(()) => acked.push(k),
            Err(e) => break e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {} writes went through without the fault being noticed",
            acked.len()
        );
    };
    assert!(
        matches!(&e, Error::ReadOnly(m) if (m.contains("background sync of")
            || m.contains("WAL sync before a flush")) && m.contains(".log")),
        "{what}: {e:?}"
    );
    assert!(fs.injected() > 0, "{what}");
    assert_read_only(&db, what);
    // One failure, counted once: the background sync, the flush's sync of the same WAL
    // and the flush that could then not go on all report it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(db.stats().background_errors, 1, "{what}");
    fs.clear();
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(prefix_present(&db, &acked, what), acked.len(), "{what}");
    db.close().unwrap();
}

/// With `wal_bytes_per_sync`, the live WAL is fsynced in the background as it grows: after
/// a power cut, unsynced writes up to the last such fsync are there (a prefix), where
/// without it none would be.
#[test]
fn wal_bytes_per_sync_makes_unsynced_writes_durable_as_the_wal_grows() {
    let what = "background sync of the live WAL";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        wal_bytes_per_sync: 4 << 10,
        wal_buffer_bytes: 0,
        ..with_fs(Options::default(), &fs)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i:05}")).collect();
    for k in &keys {
        db.put(k, [b'v'; 100]).unwrap();
    }
    wait_for_background_sync(&db, &format!("{what}: no background sync"));
    fs.power_cut(db).unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let n = prefix_present(&db, &keys, what);
    assert!(n > 0, "{what}: no unsynced write survived");
    db.close().unwrap();
}

/// A database created in a directory that did not exist, and a checkpoint written to one,
/// survive a power cut: the new directories' own names are made durable (their parents
/// fsynced). Without that, a power cut right after the first synced writes could take the
/// whole directory, acknowledged writes and all.
#[test]
fn new_database_and_checkpoint_directories_survive_a_power_cut() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("new").join("db");
    let cp = root.path().join("backups").join("cp1");
    let fs = FaultFs::new();
    let db = Db::open(&dir, with_fs(Options::default(), &fs)).unwrap();
    db.write_opt(
        {
            let mut b = WriteBatch::new();
            b.put("k", "synced");
            b
        },
        &WriteOptions { sync: true },
    )
    .unwrap();
    db.checkpoint(&cp).unwrap();
    fs.power_cut(db).unwrap();
    for d in [&dir, &cp] {
        let db = Db::open(d, Options::default()).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        assert_eq!(
            db.get("k").unwrap().as_deref(),
            Some(&b"synced"[..]),
            "{}",
            d.display()
        );
        db.close().unwrap();
    }
}

/// Waits (up to 10 s) until the background syncer has fsynced a WAL.
fn wait_for_background_sync(db: &Db, what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while db.stats().wal_background_syncs == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(db.stats().wal_background_syncs > 0, "{what}");
}

/// Options for the rotation tests: tiny memtables, room for many frozen ones (flushes are
/// held), every write handed to the OS as it is acknowledged.
fn rotating(fs: &FaultFs) -> Options {
    Options {
        max_immutable_memtables: 64,
        wal_buffer_bytes: 0,
        ..with_fs(Options::tiny(), fs)
    }
}

/// Writes unsynced keys to `db` until it rotates its WAL (a full memtable rotates before
/// the write that found it full, so the last key went to the new WAL).
fn put_until_rotation(db: &Db, dir: &Path, keys: &mut Vec<String>) {
    let wals = log_files(dir);
    while log_files(dir) == wals && keys.len() < 100_000 {
        let k = format!("k{:05}", keys.len());
        db.put(&k, [b'v'; 100]).unwrap();
        keys.push(k);
    }
    assert!(log_files(dir) > wals, "no rotation");
}

/// A WAL rotated to is first fsynced once rotated away from (in the background), so a
/// power cut can take all of it, header included, while the WAL after it reached the disk.
/// Recovery takes the headerless WAL for one the crash cut short (its version is the next
/// WAL's), keeps every write before it, and opens.
#[test]
fn a_rotated_wal_that_lost_even_its_header_is_a_cut_not_damage() {
    let what = "a rotated WAL lost whole";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), rotating(&fs)).unwrap();
    let release = ReleaseHeld(&fs);
    fs.hold_syncs(".sst", "sluice-flush");
    let mut keys = Vec::new();
    // The first WAL (synced in the background once rotated away from) ...
    put_until_rotation(&db, dir.path(), &mut keys);
    let in_first = keys.len() - 1;
    wait_for_background_sync(&db, &format!("{what}: first WAL not synced"));
    // ... the second (never synced) ...
    fs.hold_syncs(".log", "sluice-wal-sync");
    put_until_rotation(&db, dir.path(), &mut keys);
    // ... and the third, whose pages reach the disk.
    put_more(&db, &mut keys, 5);
    fs.fail_all_syncs();
    drop(release);
    drop(db);
    let newest = newest_wal(dir.path()).unwrap();
    fs.lose_unsynced_except(|p| p == newest).unwrap();
    fs.clear();
    let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (cut, _, _) = db
        .recovery_report()
        .wal_cut_short
        .clone()
        .unwrap_or_else(|| panic!("{what}: no cut reported"));
    assert!(cut < newest, "{what}: cut at {}", cut.display());
    assert_eq!(prefix_present(&db, &keys, what), in_first, "{what}");
    db.close().unwrap();
}

/// A flush makes its memtable's WAL durable before it writes the table: a power cut
/// after the table is durable and before the manifest names it must not leave a table
/// holding writes the WALs lost (recovery refuses such a table rather than delete it). The
/// WAL's syncs are held in every engine thread, so the flush waits: for the background
/// sync, or in the sync it makes itself when it takes the WAL's sync first (holding only
/// the background syncer's thread, one run in about twenty saw that table legitimately).
#[test]
fn a_flush_makes_its_wal_durable_before_writing_its_table() {
    let what = "flush before the WAL's background sync";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), rotating(&fs)).unwrap();
    let release = ReleaseHeld(&fs);
    fs.hold_syncs(".log", "sluice-");
    fs.hold_syncs("MANIFEST", "sluice-flush");
    let mut keys = vec!["k00000".to_string()];
    put_synced(&db, "k00000");
    let rotated = newest_wal(dir.path()).unwrap();
    put_until_rotation(&db, dir.path(), &mut keys);
    // The rotated WAL's sync is held (in the background syncer, or in the flush if it took
    // that sync first): the flush cannot have made it durable.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs.held_by().iter().any(|(_, p)| *p == rotated) {
        assert!(
            Instant::now() < deadline,
            "{what}: the rotated WAL's sync never began"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Time for the flush to reach its table (and, were it not waiting for the WAL, the
    // manifest edit held above).
    std::thread::sleep(Duration::from_millis(300));
    let tables = sluice_tests::sst_files(dir.path()).len();
    assert_eq!(
        tables, 0,
        "{what}: a table was written before its WAL was durable"
    );
    fs.fail_all_syncs();
    drop(release);
    drop(db);
    fs.lose_unsynced().unwrap();
    fs.clear();
    let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        prefix_present(&db, &keys, what) >= 1,
        "{what}: the synced write is lost"
    );
    db.close().unwrap();
}

/// An open after a process crash replays WAL writes the crashed process never synced, and
/// flushes them to a table. A power loss before the manifest names that table must not leave
/// it holding writes the WALs lost (the next open would refuse it): recovery syncs the WALs
/// it replayed before the flush. Here the flush's manifest edit fails to sync, then the power
/// goes.
#[test]
fn an_open_syncs_the_wals_it_replays_before_flushing_them() {
    let what = "power loss during the open after a crash";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), rotating(&fs)).unwrap();
    let mut keys = vec!["k00000".to_string()];
    put_synced(&db, "k00000");
    put_more(&db, &mut keys, 50);
    // The process dies: nothing more is synced, the OS keeps what it was handed.
    fs.fail_all_syncs();
    drop(db);
    fs.clear();
    // The open's first manifest sync writes its new manifest; the second is the flush's
    // edit naming the table of the replayed writes.
    fs.inject(Fault {
        op: FsOp::Sync,
        path_contains: Some("MANIFEST".into()),
        kind: FaultKind::Io,
        skip: 1,
        sticky: true,
    });
    let e = Db::open(dir.path(), rotating(&fs)).err();
    assert!(e.is_some(), "{what}: the open did not fail");
    assert!(fs.injected() > 0, "{what}");
    fs.lose_unsynced().unwrap();
    fs.clear();
    let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(prefix_present(&db, &keys, what), keys.len(), "{what}");
    db.close().unwrap();
}

/// The `.sst` files in `dir`.
fn table_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".sst"))
        .collect();
    v.sort();
    v
}

/// Writes `n` keys starting at `from` and flushes them into one L0 table.
fn put_and_flush(db: &Db, from: u32, n: u32) {
    for i in from..from + n {
        db.put(format!("k{i:06}"), format!("v{i}")).unwrap();
    }
    db.flush().unwrap();
}

/// A reader that lets go last of tables a compaction replaced (an iterator that outlived
/// the compaction) does not delete their files itself: deleting a file can wait on the
/// file system for milliseconds, and a point read or a scan must not. The deletions go to
/// the `sluice-files` thread, and closing the database finishes them.
#[test]
fn a_reader_that_lets_go_of_obsolete_tables_last_leaves_their_deletion_to_a_thread() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), tiny_manual_compaction(&fs)).unwrap();
    for f in 0..3 {
        put_and_flush(&db, f * 100, 100);
    }
    let before = table_files(dir.path());
    assert!(before.len() >= 3, "three flushes, three tables: {before:?}");
    let mut it = db.range(..);
    assert!(it.next().is_some());
    db.compact().unwrap();
    assert!(
        before.iter().all(|n| dir.path().join(n).exists()),
        "an iterator still reads the replaced tables"
    );
    let reader = std::thread::current().name().unwrap_or("").to_string();
    drop(it);
    db.close().unwrap();
    let replaced: Vec<_> = fs
        .removals()
        .into_iter()
        .filter(|(p, _)| before.iter().any(|n| p.ends_with(n)))
        .collect();
    assert_eq!(
        replaced.len(),
        before.len(),
        "every replaced table deleted by the time close returns: {replaced:?}"
    );
    for (p, thread) in &replaced {
        assert_eq!(
            thread,
            "sluice-files",
            "{} deleted by thread {thread:?} (the reader is {reader:?})",
            p.display()
        );
    }
    assert!(before.iter().all(|n| !dir.path().join(n).exists()));
}

/// A crash while the deletions of tables a compaction replaced are still queued (the
/// deleting thread held in its first removal) leaves those tables behind: they are
/// orphans, the next open removes them, and every write is there.
#[test]
fn replaced_tables_still_queued_for_deletion_at_a_crash_are_removed_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    fs.hold(FsOp::Remove, ".sst", "sluice-files");
    let db = Db::open(dir.path(), tiny_manual_compaction(&fs)).unwrap();
    for f in 0..3 {
        put_and_flush(&db, f * 100, 100);
    }
    let before = table_files(dir.path());
    assert!(before.len() >= 3, "three flushes, three tables: {before:?}");
    db.compact().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while fs.held() == 0 {
        assert!(
            Instant::now() < end,
            "the deleting thread never reached a removal"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        before.iter().all(|n| dir.path().join(n).exists()),
        "the removals are queued, not done"
    );
    assert_eq!(dump(&db).unwrap().len(), 300);
    // The crash: from here nothing more becomes durable or is deleted.
    fs.inject(fault(FsOp::Remove, FaultKind::Io, ".sst", true));
    fs.fail_all_syncs();
    fs.release_held();
    drop(db);
    fs.lose_unsynced().unwrap();
    assert!(
        before.iter().all(|n| dir.path().join(n).exists()),
        "the replaced tables outlive the crash"
    );
    // verify calls them what they are: orphans the next open removes, not damage.
    let rep = verify(dir.path());
    assert!(rep.is_ok(), "verify: {:?}", rep.problems);
    let orphans = rep.problems.iter().filter(|p| p.check == "orphan").count();
    assert_eq!(orphans, before.len(), "verify: {:?}", rep.problems);
    let db = Db::open(dir.path(), Options::tiny()).unwrap();
    assert!(
        before.iter().all(|n| !dir.path().join(n).exists()),
        "the open removes the orphans: {:?} left of {before:?}",
        table_files(dir.path())
    );
    let got = dump(&db).unwrap();
    assert_eq!(got.len(), 300);
    for i in 0..300u32 {
        assert_eq!(
            got.get(format!("k{i:06}").as_bytes()).map(|v| v.as_slice()),
            Some(format!("v{i}").as_bytes())
        );
    }
}

/// One failed WAL fsync is one failure, however many paths meet it: here the background
/// sync of a rotated WAL fails while the flush of its memtable waits on the same sync, and
/// the flush, its own sync of that WAL and the flush job each report it. `Stats` counts it
/// once.
#[test]
fn a_wal_sync_failure_met_by_a_flush_is_counted_once() {
    let what = "WAL sync failure met by a flush";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let db = Db::open(dir.path(), rotating(&fs)).unwrap();
    let release = ReleaseHeld(&fs);
    fs.hold_syncs(".log", "sluice-wal-sync");
    let mut keys = Vec::new();
    put_until_rotation(&db, dir.path(), &mut keys);
    let end = Instant::now() + Duration::from_secs(10);
    while fs.held() == 0 {
        assert!(
            Instant::now() < end,
            "{what}: the background sync was never held"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Give the flush time to reach the same sync.
    std::thread::sleep(Duration::from_millis(100));
    fs.inject(fault(FsOp::Sync, FaultKind::Io, ".log", true));
    drop(release);
    let end = Instant::now() + Duration::from_secs(10);
    while db.put("after", "v").is_ok() {
        assert!(Instant::now() < end, "{what}: writes still accepted");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let every background job that met the failure finish reporting it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(db.stats().background_errors, 1, "{what}");
}

/// A table flushed from writes that a point-in-time recovery then drops (the flush's
/// manifest edit failed, and the WAL is damaged before those writes) is deleted before the
/// open moves the manifest on. Left for the sweep at the end of the open, a crash in
/// between would leave a table holding writes past the new manifest's last seqno, which
/// every later open refuses as a manifest that lost edits. Here its deletion fails: the
/// open fails with nothing changed; the next open deletes it, and later opens succeed.
#[test]
fn a_table_of_writes_a_recovery_drops_goes_before_the_manifest_moves_on() {
    let what = "table of dropped writes";
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = |fs: Option<&FaultFs>, mode| {
        let base = Options {
            idle_memtable_flush_after: None,
            wal_recovery: mode,
            ..Options::default()
        };
        match fs {
            Some(fs) => with_fs(base, fs),
            None => base,
        }
    };
    let db = Db::open(dir.path(), opts(Some(&fs), WalRecovery::Strict)).unwrap();
    for i in 0..6 {
        db.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    fs.inject(fault(FsOp::Append, FaultKind::Io, "MANIFEST", true));
    assert!(
        db.flush().is_err(),
        "{what}: the flush's manifest edit fails"
    );
    drop(db);
    let tables = table_files(dir.path());
    assert_eq!(tables.len(), 1, "{what}: the flushed table, unnamed");
    // Damage the fourth write's record: point-in-time recovery keeps the first three.
    let wal = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "log")
                && sluice::inspect::read_wal_file(p).is_ok_and(|c| c.records.len() == 6)
        })
        .expect("the WAL holding the six writes");
    let at = sluice::inspect::read_wal_file(&wal).unwrap().records[3].offset as usize + 9;
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(&wal, bytes).unwrap();
    let table = dir.path().join(&tables[0]);
    // verify blames the WAL, not the manifest: the unnamed table is an orphan that a
    // point-in-time open drops (and a strict one never gets to).
    let rep = verify(dir.path());
    let on_table = |p: &sluice::inspect::Problem| p.file.as_deref() == Some(table.as_path());
    assert!(
        rep.errors()
            .any(|p| p.file.as_deref() == Some(wal.as_path()))
            && !rep.errors().any(on_table),
        "{what}: verify: {:?}",
        rep.problems
    );
    assert!(
        rep.problems
            .iter()
            .any(|p| on_table(p) && p.check == "orphan"),
        "{what}: verify: {:?}",
        rep.problems
    );

    let stuck = FaultFs::new();
    stuck.inject(fault(FsOp::Remove, FaultKind::Io, ".sst", true));
    match Db::open(dir.path(), opts(Some(&stuck), WalRecovery::PointInTime)) {
        Err(e) => assert!(
            e.to_string().contains(&tables[0]),
            "{what}: the error names the table: {e}"
        ),
        Ok(_) => panic!("{what}: the open went on with the table of dropped writes in place"),
    }
    assert!(table.exists(), "{what}");

    let db = Db::open(dir.path(), opts(None, WalRecovery::PointInTime))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!table.exists(), "{what}: the table is gone");
    let expect: Vec<(Vec<u8>, Vec<u8>)> = (0..3)
        .map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    let got: Vec<_> = dump(&db).unwrap().into_iter().collect();
    assert_eq!(got, expect, "{what}");
    db.close().unwrap();
    let db = Db::open(dir.path(), opts(None, WalRecovery::Strict))
        .unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    let got: Vec<_> = dump(&db).unwrap().into_iter().collect();
    assert_eq!(got, expect, "{what}: reopen");
    db.close().unwrap();
}

/// Too many open files (EMFILE) where the engine opens a file and has written nothing
/// there yet — creating the next WAL, opening the directory to sync it at a rotation or
/// at a flush — refuses the write (or retries the flush) while it lasts and loses nothing;
/// writes go on once it passes. It used to turn the database read-only until reopened.
#[test]
fn too_many_open_files_refuses_writes_only_while_it_lasts() {
    let sync_dir = |skip| Fault {
        op: FsOp::SyncDir,
        path_contains: None,
        kind: FaultKind::TooManyFiles,
        skip,
        sticky: false,
    };
    let cases = [
        (
            "creating the next WAL",
            fault(FsOp::Create, FaultKind::TooManyFiles, ".log", false),
        ),
        ("syncing the new WAL's directory entry", sync_dir(0)),
        ("syncing the flushed table's directory entry", sync_dir(1)),
        (
            "syncing a compaction's tables' directory entry",
            sync_dir(0),
        ),
    ];
    for (what, f) in cases {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), tiny_manual_compaction(&fs)).unwrap();
        let mut l = Ledger::default();
        l.fill(&db, 20, 100);
        if what.contains("compaction") {
            // Writes stop neither now nor later; the compaction fails once, and goes
            // through when asked again.
            db.flush().unwrap();
            fs.inject(f);
            assert!(db.compact().is_err(), "{what}");
            l.fill(&db, 100, 100);
            db.compact().unwrap();
        } else if what.contains("flushed table") {
            fs.inject(f);
            // The first directory sync is the rotation's at the freeze; the second, the
            // flush's: retried.
            db.flush().unwrap();
            assert_eq!(db.stats().flush_retries, 1, "{what}");
        } else {
            fs.inject(f);
            let e = write_until_error(&db, &mut l, 0, 100, what);
            assert!(matches!(e, Error::NotApplied { .. }), "{what}: {e}");
            assert_eq!(errno(&e), Some(24), "{what}: {e}");
            l.refused_last();
        }
        assert_eq!(fs.injected(), 1, "{what}");
        l.fill(&db, 200, 100);
        db.flush().unwrap();
        l.check_reads(&db, what);
        drop(db);
        let (db, _) = l.check_reopen(dir.path(), 0, what);
        assert!(verify(dir.path()).is_ok(), "{what}");
        db.close().unwrap();
    }
}
