//! Randomized fault injection: random writes, transactions, flushes, compactions, layout
//! switches, migration steps and reopens, against a file system that fails one or two
//! random operations (ENOSPC, EIO, EACCES or a short write, on an append, fsync, create,
//! rename, removal, directory fsync, map or read of the WAL, a table, the manifest,
//! `CURRENT` or any file; once or from then on), ending in a clean close, a drop or a power
//! cut (losing every unsynced byte, or only some files' as out-of-order writeback does,
//! with the first few directory changes since the last directory fsync kept, as a
//! file system's journal may have committed them); now and then with the background
//! fsyncs of older WALs held back for a while.
//! `faults.rs` tests each fault on its own, where it is expected; this test puts them
//! where nobody thought to.
//!
//! Every write gets one of three outcomes, and each is checked for what it promises:
//! - `Ok`: acknowledged. Readable while the handle lives; after a reopen it survives unless
//!   unsynced writes were allowed to be lost (a power cut, or a database that failed).
//! - `Err(ReadOnly)`, `Err(NotApplied)` (or `Err(Conflict)` for a transaction): refused, never applied, so it
//!   must never be read nor come back after a reopen.
//! - any other error: in doubt. It may be read and may come back, but whole or not at all.
//!
//! After every reopen the database must hold exactly the state after some prefix of the
//! writes that were not refused (values are unique per write, so the prefix is identified),
//! at least up to the last write known durable: a synced write, a successful `sync_wal` or
//! `close`, and everything an earlier successful open recovered. No hole, no partial batch,
//! no value nobody wrote. After a reopen without a power cut and with no fault fired, every
//! acknowledged write must be there. `sluice verify` must pass on the final directory, and no
//! engine thread may panic.
//!
//! Knobs: `SLUICE_SEED=n` (one seed), `SLUICE_SEEDS=n` (seeds `1..=n`, or from `SLUICE_SEED_FROM`; CI runs
//! [`CI_SEEDS`]), `SLUICE_TRACE=1` (print every step).
//! Long soak (not run by `cargo test`):
//! `SLUICE_SEEDS=2000 cargo test --release -p sluice-tests --test random_faults random_faults_soak -- --ignored --nocapture`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice::fs::{Fault, FaultFs, FaultKind, FsOp};
use sluice::{Db, Error, Options, WriteBatch, WriteOptions};
use sluice_tests::{
    dump, engine_thread_panics, newest_wal, random_partition_spec, seeds, verify,
    watch_engine_panics, with_seed,
};

const CI_SEEDS: u64 = 300;
/// Seeds run at once.
const PARALLEL_SEEDS: usize = 4;
const STEPS: usize = 220;
const KEYS: usize = 48;
/// A seed that takes longer than this is taken for a hang.
const SEED_LIMIT: Duration = Duration::from_secs(120);

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[test]
fn random_faults_lose_nothing_promised() {
    run_seeds(CI_SEEDS);
}

/// Long soak. Run:
/// `SLUICE_SEEDS=2000 cargo test --release -p sluice-tests --test random_faults random_faults_soak -- --ignored --nocapture`.
/// Short version in CI: `random_faults_lose_nothing_promised` (300 seeds).
#[test]
#[ignore = "soak (short version in CI: random_faults_lose_nothing_promised, 300 seeds): SLUICE_SEEDS=2000 cargo test --release -p sluice-tests --test random_faults random_faults_soak -- --ignored"]
fn random_faults_soak() {
    run_seeds(2000);
}

/// Runs the seeds, then checks that they exercised what this test is for: faults that
/// fired, writes refused and in doubt, and reopens that rightly lost unsynced writes.
fn run_seeds(default: u64) {
    let list = seeds(default);
    // Seeds mostly wait on fsyncs, so a few run at once.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(list.len()));
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_SEEDS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = list.get(i) else { break };
                with_seed("random_faults", seed, |seed| {
                    let seen = run_bounded(seed);
                    results.lock().unwrap().push(seen);
                });
            });
        }
    });
    let mut total = Seen::default();
    let mut seeds_with_faults = 0;
    for s in results.into_inner().unwrap() {
        seeds_with_faults += u64::from(s.faults_fired > 0);
        total.acked += s.acked;
        total.refused += s.refused;
        total.in_doubt += s.in_doubt;
        total.lost_unsynced += s.lost_unsynced;
        total.journaled += s.journaled;
        total.flush_retries += s.flush_retries;
        total.faults_fired += s.faults_fired;
    }
    eprintln!(
        "random_faults: {} seeds, {seeds_with_faults} with a fault fired; {total:?}",
        list.len()
    );
    if list.len() >= 200 {
        assert!(
            seeds_with_faults * 2 >= list.len() as u64,
            "faults fired in only {seeds_with_faults} of {} seeds",
            list.len()
        );
        assert!(
            total.refused > 0
                && total.in_doubt > 0
                && total.lost_unsynced > 0
                && total.journaled > 0
                && total.flush_retries > 0,
            "the seeds never refused a write, left one in doubt, lost an unsynced one, \
             kept a directory change no fsync covered, or retried a flush: {total:?}"
        );
    }
}

/// Runs one seed on its own thread, failing (rather than hanging CI) if it takes longer
/// than [`SEED_LIMIT`].
fn run_bounded(seed: u64) -> Seen {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(format!("faults-seed-{seed}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(|| run(seed));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(SEED_LIMIT) {
        Ok(Ok(seen)) => {
            worker.join().unwrap();
            seen
        }
        Ok(Err(e)) => std::panic::resume_unwind(e),
        Err(_) => panic!("seed {seed} did not finish in {SEED_LIMIT:?}: a hang"),
    }
}

fn trace() -> bool {
    std::env::var_os("SLUICE_TRACE").is_some()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    InDoubt,
}

/// One write that was not refused: its entries (`None` = delete) and outcome.
struct Write {
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    outcome: Outcome,
}

/// What the database may hold: `base` (what the last open recovered, all of it durable)
/// followed by the writes made since, of which `writes[..durable]` are known durable.
#[derive(Default)]
struct History {
    base: Model,
    writes: Vec<Write>,
    durable: usize,
    seen: Seen,
}

/// What a run exercised, so that the test can tell it tested something.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    acked: u64,
    refused: u64,
    in_doubt: u64,
    /// Reopens after which some acknowledged write was (rightly) gone.
    lost_unsynced: u64,
    /// Directory changes a power cut found committed by the journal, not by an fsync.
    journaled: u64,
    /// Flushes tried again after failing to write their tables, before the handle ended.
    flush_retries: u64,
    faults_fired: u64,
}

impl History {
    fn record(
        &mut self,
        what: &str,
        entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        r: &sluice::Result<()>,
        sync: bool,
    ) {
        let outcome = match r {
            Ok(()) => Outcome::Acked,
            Err(Error::ReadOnly(_))
            | Err(Error::Conflict { .. })
            | Err(Error::NotApplied { .. }) => {
                self.seen.refused += 1;
                return;
            }
            Err(_) => Outcome::InDoubt,
        };
        match outcome {
            Outcome::Acked => self.seen.acked += 1,
            Outcome::InDoubt => self.seen.in_doubt += 1,
        }
        if trace() {
            eprintln!(
                "  {what} #{} ({} entries, sync {sync}) -> {r:?}",
                self.writes.len(),
                entries.len()
            );
        }
        self.writes.push(Write { entries, outcome });
        if sync && outcome == Outcome::Acked {
            self.durable = self.writes.len();
        }
    }

    /// Every write acknowledged so far is durable.
    fn all_acked_durable(&mut self) {
        self.durable = self
            .writes
            .iter()
            .rposition(|w| w.outcome == Outcome::Acked)
            .map_or(self.durable, |i| (i + 1).max(self.durable));
    }

    /// The values `key` may read as now: the last acknowledged write's, or any in-doubt
    /// write's made after it (`None`: absent).
    fn allowed(&self, key: &[u8]) -> Vec<Option<&[u8]>> {
        let mut allowed = vec![self.base.get(key).map(|v| &v[..])];
        for w in &self.writes {
            for (k, v) in &w.entries {
                if k == key {
                    if w.outcome == Outcome::Acked {
                        allowed.clear();
                    }
                    allowed.push(v.as_deref());
                }
            }
        }
        allowed
    }

    /// Finds the prefix of writes whose state `found` is, checks it covers everything
    /// promised (`must_all`: every acknowledged write), and makes that state the new base.
    fn settle(&mut self, found: &Model, must_all: bool, what: &str) {
        if must_all {
            self.all_acked_durable();
        }
        let mut state = self.base.clone();
        let mut matched = (state == *found).then_some(0);
        for (i, w) in self.writes.iter().enumerate() {
            for (k, v) in &w.entries {
                match v {
                    Some(v) => state.insert(k.clone(), v.clone()),
                    None => state.remove(k),
                };
            }
            if state == *found {
                matched = Some(i + 1);
            }
        }
        let Some(k) = matched else {
            panic!(
                "{what}: the reopened database is no prefix of the writes: {}",
                describe_mismatch(&self.base, &self.writes, found)
            );
        };
        assert!(
            k >= self.durable,
            "{what}: only writes 0..{k} survived, but 0..{} were durable ({} since the last open)",
            self.durable,
            self.writes.len()
        );
        if trace() {
            eprintln!("  {what}: writes 0..{k} of {} survived", self.writes.len());
        }
        if self.writes[k..].iter().any(|w| w.outcome == Outcome::Acked) {
            self.seen.lost_unsynced += 1;
        }
        self.base = found.clone();
        self.writes.clear();
        self.durable = 0;
    }
}

/// Names the first key whose value no write explains, for a failure message.
fn describe_mismatch(base: &Model, writes: &[Write], found: &Model) -> String {
    let mut seen: BTreeMap<&[u8], Vec<Option<&[u8]>>> = BTreeMap::new();
    for (k, v) in base {
        seen.entry(k).or_default().push(Some(v));
    }
    for w in writes {
        for (k, v) in &w.entries {
            seen.entry(k).or_default().push(v.as_deref());
        }
    }
    for (k, v) in found {
        if !seen
            .get(&k[..])
            .is_some_and(|vs| vs.contains(&Some(&v[..])))
        {
            return format!(
                "key {:?} holds {:?}, which no write gave it",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            );
        }
    }
    format!(
        "{} keys found; every value was written by someone, so a write is partial, a hole, \
         or a refused write came back",
        found.len()
    )
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:03}").into_bytes()
}

/// A value no other write has: the write's number, the entry, and random filler.
fn value(r: &mut StdRng, n: u64, j: usize) -> Vec<u8> {
    let mut v = format!("w{n}.{j}.").into_bytes();
    let fill = r.random_range(0..300usize);
    v.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, fill));
    v
}

fn random_fault(r: &mut StdRng) -> Fault {
    const OPS: [FsOp; 10] = [
        FsOp::Append,
        FsOp::Append,
        FsOp::Sync,
        FsOp::Sync,
        FsOp::Create,
        FsOp::Rename,
        FsOp::Remove,
        FsOp::SyncDir,
        FsOp::ReadFile,
        FsOp::Read,
    ];
    const FILES: [Option<&str>; 5] = [
        Some(".log"),
        Some(".sst"),
        Some("MANIFEST"),
        Some("CURRENT"),
        None,
    ];
    let op = OPS[r.random_range(0..OPS.len())];
    let kind = match (op, r.random_range(0..4)) {
        (FsOp::Append, 3) => FaultKind::ShortWrite,
        (_, 0) => FaultKind::NoSpace,
        (_, 1) => FaultKind::Denied,
        _ => FaultKind::Io,
    };
    Fault {
        op,
        path_contains: FILES[r.random_range(0..FILES.len())].map(String::from),
        kind,
        // Mostly soon: a handle lives for a few dozen steps.
        skip: {
            let most = r.random_range(0..60);
            r.random_range(0..=most)
        },
        sticky: r.random_bool(0.3),
    }
}

fn options(r: &mut StdRng, fs: &FaultFs) -> Options {
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let base = if r.random_bool(0.6) {
        Options::tiny()
    } else {
        Options {
            memtable_bytes: 64 << 10,
            ..Options::default()
        }
    };
    Options {
        partition: random_partition_spec(r, &keys),
        wal_bytes_per_sync: if r.random_bool(0.3) { 4096 } else { 0 },
        // A flush that failed writing its tables is retried: none to a few times, soon.
        flush_retries: r.random_range(0..=3),
        flush_retry_interval: Duration::from_millis(r.random_range(1..=20)),
        fs: Arc::new(fs.clone()),
        ..base
    }
}

/// A read error is acceptable only once a fault fired, and only as an I/O error.
/// `fired`: how many faults had fired before this handle opened.
fn read_error_ok(e: &Error, fs: &FaultFs, fired: u64, what: &str) {
    assert!(
        fs.injected() > fired && matches!(e, Error::Io { .. }),
        "{what}: read failed with {e:?} ({} faults fired for this handle)",
        fs.injected() - fired
    );
}

fn check_get(db: &Db, h: &History, fs: &FaultFs, fired: u64, k: &[u8], what: &str) {
    match db.get(k) {
        Ok(got) => {
            let allowed = h.allowed(k);
            assert!(
                allowed.contains(&got.as_deref()),
                "{what}: get({:?}) = {:?}, allowed {:?}",
                String::from_utf8_lossy(k),
                got.as_deref().map(String::from_utf8_lossy),
                allowed
                    .iter()
                    .map(|v| v.map(String::from_utf8_lossy))
                    .collect::<Vec<_>>()
            );
        }
        Err(e) => read_error_ok(&e, fs, fired, what),
    }
}

fn check_scan(db: &Db, h: &History, fs: &FaultFs, fired: u64, what: &str) {
    match dump(db) {
        Ok(all) => {
            for i in 0..KEYS {
                let k = key(i);
                let got = all.get(&k).map(|v| &v[..]);
                assert!(
                    h.allowed(&k).contains(&got),
                    "{what}: scan has {:?} = {:?}, not an allowed value",
                    String::from_utf8_lossy(&k),
                    got.map(String::from_utf8_lossy)
                );
            }
            assert!(
                all.keys().all(|k| k.starts_with(b"key") && k.len() == 6),
                "{what}: scan returned a key nobody wrote"
            );
        }
        Err(e) => read_error_ok(&e, fs, fired, what),
    }
}

/// How a handle ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Close,
    Drop,
    /// `writeback`: the OS had written back the unsynced bytes of some files and not of
    /// others (those a hash of the path salted with this picks), as out-of-order writeback
    /// leaves them, and the file system's journal had committed some of the directory
    /// changes made since the directory's last fsync (a prefix of them, its length picked
    /// by the same salt); `None`: every unsynced byte and directory change is lost.
    PowerCut {
        writeback: Option<u64>,
    },
}

fn random_end(r: &mut StdRng) -> End {
    match r.random_range(0..6) {
        0 | 1 => End::Close,
        2 | 3 => End::Drop,
        4 => End::PowerCut { writeback: None },
        _ => End::PowerCut {
            writeback: Some(r.random()),
        },
    }
}

/// Whether a power cut with out-of-order writeback salted `salt` kept `path`'s unsynced
/// bytes.
fn written_back(path: &Path, salt: u64) -> bool {
    salted(path, salt).is_multiple_of(2)
}

/// How many of the `n` changes to `dir`'s entries since its last fsync a power cut with
/// writeback salted `salt` found committed by the file system's journal (any of 0..=n).
fn journaled(dir: &Path, n: usize, salt: u64) -> usize {
    (salted(dir, salt.rotate_left(17)) % (n as u64 + 1)) as usize
}

fn salted(path: &Path, salt: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (path, salt).hash(&mut h);
    h.finish()
}

/// Ends `db` as `end`, disarms the faults, then reads the directory back (through `fs`,
/// so that a later power cut knows what this open made durable) and settles `h` on what
/// survived. `fired`: how many faults had fired before this handle opened.
fn end_and_settle(
    db: Db,
    end: End,
    dir: &Path,
    fs: &FaultFs,
    fired: u64,
    h: &mut History,
    what: &str,
) {
    let mut must_all = false;
    h.seen.flush_retries += db.stats().flush_retries;
    if matches!(end, End::PowerCut { .. }) {
        // Background WAL syncs held now fail, as the power is gone.
        fs.fail_all_syncs();
    }
    fs.release_held();
    match end {
        End::Close => {
            let r = db.close();
            if trace() {
                eprintln!("  close -> {r:?}");
            }
            must_all = r.is_ok();
        }
        End::Drop => {
            // A drop hands every acknowledged write to the OS if nothing failed: with the
            // faults disarmed, a database that still takes a write (its WAL healthy,
            // whatever else a fault hit) must keep them all.
            fs.clear();
            let healthy = db.write(WriteBatch::new()).is_ok();
            if trace() {
                eprintln!("  drop (WAL healthy: {healthy})");
            }
            must_all = healthy;
            drop(db);
        }
        End::PowerCut { writeback: None } => fs.power_cut(db).expect("power cut"),
        End::PowerCut {
            writeback: Some(salt),
        } => {
            drop(db);
            h.seen.journaled += fs
                .lose_unsynced_journaled(|p| written_back(p, salt), |d, n| journaled(d, n, salt))
                .expect("power cut") as u64;
        }
    }
    if !matches!(end, End::PowerCut { .. }) && fs.injected() == fired {
        must_all = true;
    }
    fs.clear();
    assert_eq!(
        engine_thread_panics(),
        0,
        "{what}: an engine thread panicked"
    );
    // The state the handle left, as a crash would leave it: verify finds no damage.
    let report = verify(dir);
    assert!(
        report.is_ok(),
        "{what}: verify of the state left behind: {:?}",
        report.problems
    );
    reopen_and_settle(dir, fs, must_all, h, what);
}

/// Opens `dir` with no fault armed (through `fs`, so that a later power cut knows what this
/// open made durable), reads it whole, closes it, and settles `h` on what survived.
fn reopen_and_settle(dir: &Path, fs: &FaultFs, must_all: bool, h: &mut History, what: &str) {
    let opts = Options {
        fs: Arc::new(fs.clone()),
        ..Options::default()
    };
    let db =
        Db::open(dir, opts).unwrap_or_else(|e| panic!("{what}: reopen with no fault failed: {e}"));
    let found = dump(&db).unwrap_or_else(|e| panic!("{what}: scan after reopen failed: {e}"));
    db.close()
        .unwrap_or_else(|e| panic!("{what}: close with no fault failed: {e}"));
    h.settle(&found, must_all, what);
}

/// Arms one or two random faults for the next handle; returns how many faults had fired
/// before them.
fn arm(r: &mut StdRng, fs: &FaultFs, what: &str) -> u64 {
    let faults: Vec<Fault> = (0..r.random_range(1..=2))
        .map(|_| random_fault(r))
        .collect();
    if trace() {
        eprintln!("{what}: faults {faults:?}");
    }
    for f in faults {
        fs.inject(f);
    }
    fs.injected()
}

/// Holds the background fsyncs of WALs rotated away from (the syncer's, and the flush's
/// before it writes a table) for a random while, so that synced writes in the next WAL,
/// flushes and power cuts meet older WALs not yet durable. Released by time, not by a
/// step: a writer may be waiting for it (writers wait for flushes).
fn hold_wal_syncs(r: &mut StdRng, fs: &FaultFs) {
    let hold = Duration::from_millis(r.random_range(1..=300));
    if trace() {
        eprintln!("  background WAL syncs held for {hold:?}");
    }
    fs.hold_syncs(".log", "sluice-wal-sync");
    fs.hold_syncs(".log", "sluice-flush");
    let fs = fs.clone();
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        fs.release_held();
    });
}

/// Writes a random put, delete or batch of 2 to 5 of them (write number `n`), and records
/// its outcome. Returns whether it was acknowledged.
fn random_write(r: &mut StdRng, db: &Db, h: &mut History, n: &mut u64, sync: bool) -> bool {
    let m = if r.random_bool(0.5) {
        1
    } else {
        r.random_range(2..=5)
    };
    let mut entries = Vec::with_capacity(m);
    let mut b = WriteBatch::new();
    for j in 0..m {
        let k = key(r.random_range(0..KEYS));
        if r.random_bool(0.15) {
            b.delete(&k);
            entries.push((k, None));
        } else {
            let v = value(r, *n, j);
            b.put(&k, &v);
            entries.push((k, Some(v)));
        }
    }
    *n += 1;
    let res = if m == 1 && !sync {
        match &entries[0] {
            (k, Some(v)) => db.put(k, v),
            (k, None) => db.delete(k),
        }
    } else {
        db.write_opt(b, &WriteOptions { sync })
    };
    h.record("write", entries, &res, sync);
    res.is_ok()
}

fn run(seed: u64) -> Seen {
    watch_engine_panics();
    let mut r = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let fs = FaultFs::new();
    let opts = options(&mut r, &fs);
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let mut h = History::default();
    let mut db = Db::open(&dir, opts.clone()).expect("first open");
    // A few clean writes first, so that the faults meet a database with some history.
    let mut n = 0u64;
    let arm_at = r.random_range(0..40usize);
    let mut reopens = 0;
    let mut fired = 0;
    for step in 0..STEPS {
        // The first handle gets its faults after a few clean steps; every later one as it
        // opens (below).
        if step == arm_at && reopens == 0 {
            fired = arm(&mut r, &fs, &format!("seed {seed} step {step}"));
        }
        let what = format!("seed {seed} step {step}");
        // Now and then: hold the older WALs' fsyncs, write until the WAL rotates, then a
        // synced write (which must make the older WAL durable first), and often a power
        // cut right after.
        let mut power_cut_now = false;
        if r.random_bool(0.03) {
            hold_wal_syncs(&mut r, &fs);
            let before = newest_wal(&dir);
            for _ in 0..2000 {
                if !random_write(&mut r, &db, &mut h, &mut n, false) || newest_wal(&dir) != before {
                    break;
                }
            }
            random_write(&mut r, &db, &mut h, &mut n, true);
            power_cut_now = r.random_bool(0.5);
        }
        let roll = if power_cut_now {
            99
        } else {
            r.random_range(0..100)
        };
        match roll {
            0..=50 => {
                let sync = r.random_bool(0.2);
                random_write(&mut r, &db, &mut h, &mut n, sync);
            }
            51..=57 => {
                // A transfer-like transaction: read one key, write it and another.
                let a = keys[r.random_range(0..KEYS)].clone();
                let c = keys[r.random_range(0..KEYS)].clone();
                let sync = r.random_bool(0.3);
                let mut t = db.transaction();
                match t.get(&a) {
                    Ok(_) => {
                        let va = value(&mut r, n, 0);
                        let vc = value(&mut r, n, 1);
                        n += 1;
                        t.put(&a, &va);
                        t.put(&c, &vc);
                        let mut entries = vec![(a.clone(), Some(va))];
                        if c != a {
                            entries.push((c, Some(vc)));
                        } else {
                            entries[0].1 = Some(vc);
                        }
                        let res = t.commit_opt(&WriteOptions { sync });
                        h.record("transaction", entries, &res, sync);
                    }
                    Err(e) => read_error_ok(&e, &fs, fired, &what),
                }
            }
            58..=69 => check_get(&db, &h, &fs, fired, &keys[r.random_range(0..KEYS)], &what),
            70..=73 => check_scan(&db, &h, &fs, fired, &what),
            74..=77 => {
                let res = db.sync_wal();
                if trace() {
                    eprintln!("  sync_wal -> {res:?}");
                }
                if res.is_ok() {
                    h.all_acked_durable();
                }
            }
            78..=81 => {
                let res = db.flush();
                if trace() {
                    eprintln!("  flush -> {res:?}");
                }
            }
            82..=83 => {
                let res = db.compact();
                if trace() {
                    eprintln!("  compact -> {res:?}");
                }
            }
            84..=88 => {
                let spec = random_partition_spec(&mut r, &keys);
                let res = db
                    .register_partition_fn(spec)
                    .and_then(|v| db.set_target(v));
                if trace() {
                    eprintln!("  retarget -> {res:?}");
                }
            }
            89..=90 => {
                // Roll back to (or go forward to) another live version.
                let layout = db.layout();
                let others: Vec<_> = layout
                    .versions
                    .iter()
                    .map(|v| v.id)
                    .filter(|v| *v != layout.target)
                    .collect();
                if !others.is_empty() {
                    let v = others[r.random_range(0..others.len())];
                    let res = db.set_target(v);
                    if trace() {
                        eprintln!("  set_target({v:?}) -> {res:?}");
                    }
                }
            }
            91..=96 => {
                let res = db.migrate_now(Some(r.random_range(1..=256) << 10));
                if trace() {
                    eprintln!("  migrate_now -> {res:?}");
                }
            }
            _ => {
                // End this handle and reopen through the faulty file system.
                let end = if power_cut_now {
                    End::PowerCut { writeback: None }
                } else {
                    random_end(&mut r)
                };
                if trace() {
                    eprintln!("  reopen after {end:?}");
                }
                end_and_settle(db, end, &dir, &fs, fired, &mut h, &what);
                reopens += 1;
                fired = arm(&mut r, &fs, &what);
                match Db::open(&dir, opts.clone()) {
                    Ok(d) => db = d,
                    Err(e) => {
                        // A fault that fails every open (a sticky one on CURRENT, say)
                        // ends the run; what survived was checked above.
                        if trace() {
                            eprintln!("  reopen through the faults failed: {e}");
                        }
                        assert!(
                            fs.injected() > fired,
                            "{what}: reopen failed with no fault: {e}"
                        );
                        let report = verify(&dir);
                        assert!(
                            report.is_ok(),
                            "{what}: verify after a failed open: {:?}",
                            report.problems
                        );
                        // What the failed open left must open, and lose nothing.
                        fs.clear();
                        fs.release_held();
                        reopen_and_settle(&dir, &fs, false, &mut h, &what);
                        h.seen.faults_fired = fs.injected();
                        return h.seen;
                    }
                }
            }
        }
    }
    let end = random_end(&mut r);
    let what = format!(
        "seed {seed} end ({end:?}, {reopens} reopens, {} faults fired)",
        fs.injected()
    );
    end_and_settle(db, end, &dir, &fs, fired, &mut h, &what);
    let report = verify(&dir);
    assert!(report.is_ok(), "{what}: verify: {:?}", report.problems);
    h.seen.faults_fired = fs.injected();
    h.seen
}
