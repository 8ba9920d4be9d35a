//! A serializability checker for optimistic transactions, over recorded concurrent
//! histories.
//!
//! Worker threads run random transactions over a dozen keys in several partitions: each
//! reads a few keys (interleaved with its writes: a read of a key it wrote must return its
//! own write), then puts or deletes a few (some it read, some blind), every value unique
//! (`t<txn>-<key>|<padding>`), so every read names the transaction it read from. Each
//! transaction's snapshot seqno, reads and writes are recorded, and whether it committed
//! or failed with a conflict. Meanwhile another thread churns the layout (new targets,
//! rollbacks, migration, flushes, compactions, lazy moves: see
//! `sluice_tests::churn_layout`), and one transaction in eight has a flush, a migration
//! step or lazy moves run between its reads and its commit, so that its check meets them.
//!
//! A second shape ([`LARGE`]) runs transactions that read 67 to 128 distinct keys of 192,
//! so that each read set is checked in two steps (README "Limits"): outside the WAL lock up
//! to a mark, then under it against the keys written since the mark. Each such transaction
//! often has two partner threads commit rivals as it commits: a quick one (mostly writing
//! keys it read and wrote) and another large one (a second mark), each released at a
//! random point of the time the last unsynced commit took, half of them synced (writers
//! then queue behind an fsync and share a group with the transaction). Rivals thus land
//! before its mark, between its two checks, in its commit group ahead of it, or after it.
//! Bugs planted in that path (no check under the lock, only part of a batch recorded, the
//! mark taken after the check or one seqno late, nothing recorded while two marks are set,
//! no check against the group's earlier batches) failed the 3 seeds CI runs in nearly every
//! run. Recording stopped when one of two marks goes, and the log of written keys
//! outgrowing its room (4M entries), are left to the engine's unit tests
//! (`transaction::tests`, `recent::tests`), which reach them deterministically.
//!
//! The version order of each key comes from the WAL: the file system the database runs on
//! keeps every WAL the engine deletes, and at the end every record is decoded with its
//! seqnos. Then:
//! - the WAL holds each committed transaction's writes exactly once, as one batch, and
//!   nothing of a transaction that failed (nor anything nobody wrote);
//! - every read returns a value a committed transaction wrote to that key, and exactly the
//!   version its snapshot holds (the newest write with a seqno at most the snapshot's);
//! - the dependency graph of the committed transactions (ww: consecutive versions of a
//!   key; wr: a transaction read another's version; rw: it read the version that another
//!   transaction's write replaced) is acyclic: the history is serializable. A cycle is
//!   printed with the transactions on it;
//! - the database ends holding, for each key, its newest version (nothing lost, nothing
//!   resurrected), before and after a reopen.
//!
//! Transactions have no scans, so there are no range reads (phantoms of predicates) to
//! check; reads of absent keys (after a delete) are checked as versions like any other.
//!
//! Knobs: `SLUICE_SEED=n` (one seed), `SLUICE_SEEDS=n` (seeds `1..=n`, or from
//! `SLUICE_SEED_FROM`; CI runs [`CI_SEEDS`]). Long soaks (not run by `cargo test`):
//! `SLUICE_SEEDS=300 cargo test --release -p sluice-tests --test serializability serializability_soak -- --ignored --nocapture`
//! and the same with `large_transactions_soak`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice::fs::{Fs, StdFs};
use sluice::{Db, Error, Kind, Options, PartitionSpec, WriteOptions};
use sluice_tests::{churn_layout, dump, seeds, with_seed};

const CI_SEEDS: u64 = 3;

/// What a run's transactions look like.
struct Shape {
    /// Keys `0..keys`, in three partitions split at `boundaries`.
    keys: usize,
    boundaries: [&'static str; 2],
    /// Keys `0..hot` are picked most of the time (races); the others are written rarely, so
    /// their newest versions sit in tables that retargets leave behind (lazy moves).
    hot: usize,
    /// Worker threads, their transactions, and how many each runs per seed (its nested
    /// rivals included, its partners' not).
    workers: u64,
    plan: Plan,
    txns: usize,
    /// One transaction in this many (without a nested rival) has layout work run between
    /// its reads and its commit.
    layout_work: u32,
    /// Each worker's partner threads, by the rivals they commit while the worker's
    /// transaction commits (between its two checks, when it takes two).
    partners: &'static [Plan],
    /// The background migration's pace (`Options::migration_bytes_per_sec`).
    migration_bytes_per_sec: u64,
}

/// Transactions of a dozen keys, each checked under the WAL lock.
const SMALL: Shape = Shape {
    keys: 16,
    boundaries: ["k04", "k08"],
    hot: 6,
    workers: 4,
    plan: Plan::Small,
    txns: 150,
    layout_work: 8,
    partners: &[],
    migration_bytes_per_sec: 8 << 20,
};

/// Transactions whose read sets are checked in two steps (README "Limits"): one worker, with
/// two partners (the large one sets a second mark).
const LARGE: Shape = Shape {
    keys: 192,
    // Keys sort as strings: k00..k11 and k100..k119; k12..k49 and k120..k191; k50..k99.
    boundaries: ["k120", "k50"],
    hot: 8,
    workers: 1,
    plan: Plan::Large,
    txns: 120,
    // Flushes, retargets, migration steps and lazy moves between large reads and their
    // checks.
    layout_work: 3,
    partners: &[Plan::Quick, Plan::Large],
    // Slow, so that lazy moves meet the large transactions' checks: a lazy move is not
    // made out of a partition a job is migrating (or compacting), and at 8 MiB/s the
    // workers' jobs kept the few draining partitions busy nearly all the time; most moves
    // the reads asked for were dropped, and a seed saw 0 to 300 made. `migrate_now` (the
    // churn thread's, and the transactions' layout work) still drains the layouts.
    migration_bytes_per_sec: 16 << 10,
};

/// A read set of at least this many keys is checked up to a mark outside the WAL lock, and
/// under it only against the writes made since the mark (`TWO_STEP_MIN_KEYS` in the engine).
const TWO_STEP_MIN_KEYS: usize = 64;

/// A partner's cue: commit rival `id`, of keys near `near`, once transaction `of` has begun
/// its commit, at a random point of `spread` after that.
struct Cue {
    of: u64,
    id: u64,
    near: Vec<usize>,
    spread: Duration,
}

/// How many keys a transaction reads and writes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    /// Up to 4 reads and 3 writes, of keys picked (some more than once).
    Small,
    /// `TWO_STEP_MIN_KEYS` to twice that distinct keys read, in random order, and 1 to 3
    /// writes.
    Large,
    /// A rival timed into another transaction's commit, to commit fast: at most one read,
    /// one or two writes.
    Quick,
}

fn key(i: usize) -> String {
    format!("k{i:02}")
}

/// The value transaction `txn` writes to key `k`: names both; the padding makes tables.
fn value(txn: u64, k: usize, pad: usize) -> Bytes {
    Bytes::from(format!("t{txn}-{}|{}", key(k), "p".repeat(pad)))
}

/// The transaction and key a value names, if it is one this test writes.
fn writer_of(v: &[u8]) -> Option<(u64, usize)> {
    let s = std::str::from_utf8(v).ok()?;
    let (txn, rest) = s.strip_prefix('t')?.split_once('-')?;
    let k = rest.split('|').next()?.strip_prefix('k')?;
    Some((txn.parse().ok()?, k.parse().ok()?))
}

/// One transaction as run: what it read (first read of each key it had not written), what
/// it wrote, and how it ended.
#[derive(Debug)]
struct Txn {
    id: u64,
    snapshot: u64,
    reads: BTreeMap<usize, Option<Bytes>>,
    writes: BTreeMap<usize, Option<Bytes>>,
    committed: bool,
}

/// The real file system, except that a WAL the engine removes is first hard-linked into
/// `archive`, so that the whole history of writes, with their seqnos, can be read back.
#[derive(Debug)]
struct KeepWals {
    archive: PathBuf,
}

fn is_wal(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "log")
        && path
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

impl Fs for KeepWals {
    sluice_tests::std_fs_methods!(
        create,
        read_file,
        rename,
        list,
        sync_dir,
        create_dir_all,
        exists,
        file_size,
        lock,
        hard_link,
        available_space
    );
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        if is_wal(path) {
            let kept = self
                .archive
                .join(path.file_name().expect("a WAL has a name"));
            if !kept.exists() {
                StdFs.hard_link(path, &kept)?;
            }
        }
        StdFs.remove(path)
    }
}

fn options(shape: &Shape, archive: &Path) -> Options {
    Options {
        partition: PartitionSpec::Range {
            boundaries: shape.boundaries.map(|b| b.as_bytes().to_vec()).to_vec(),
        },
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        migration_bytes_per_sec: shape.migration_bytes_per_sec,
        fs: Arc::new(KeepWals {
            archive: archive.to_path_buf(),
        }),
        ..Options::tiny()
    }
}

/// A key: one of `near` half the time (if any), else mostly a hot one.
fn pick(r: &mut StdRng, near: &[usize], shape: &Shape) -> usize {
    if !near.is_empty() && r.random_bool(0.5) {
        near[r.random_range(0..near.len())]
    } else if r.random_bool(0.75) {
        r.random_range(0..shape.hot)
    } else {
        r.random_range(0..shape.keys)
    }
}

/// Starts transaction `id` and makes its reads and writes (interleaved at random), as many
/// as `plan` says, of keys picked near `near`.
fn begin(
    db: &Db,
    r: &mut StdRng,
    id: u64,
    near: &[usize],
    plan: Plan,
    shape: &Shape,
) -> (sluice::Transaction, Txn) {
    let mut t = db.transaction();
    let mut rec = Txn {
        id,
        snapshot: t.snapshot_seqno(),
        reads: BTreeMap::new(),
        writes: BTreeMap::new(),
        committed: false,
    };
    let (mut reads, mut writes) = match plan {
        Plan::Small => (r.random_range(0..=4usize), r.random_range(0..=3usize)),
        // Each write can take a key from the read set (a read of it then returns the
        // write), so three more reads keep the read set large.
        Plan::Large => (
            r.random_range(TWO_STEP_MIN_KEYS + 3..=2 * TWO_STEP_MIN_KEYS),
            r.random_range(1..=3usize),
        ),
        Plan::Quick => (r.random_range(0..=1usize), r.random_range(1..=2usize)),
    };
    if reads + writes == 0 {
        reads = 1;
    }
    // A large transaction reads distinct keys, drawn in advance.
    let mut distinct = match plan {
        Plan::Large => rand::seq::index::sample(r, shape.keys, reads).into_vec(),
        _ => Vec::new(),
    };
    while reads + writes > 0 {
        if r.random_range(0..reads + writes) < reads {
            reads -= 1;
            let k = distinct.pop().unwrap_or_else(|| pick(r, near, shape));
            let got = t.get(key(k)).unwrap();
            if let Some(own) = rec.writes.get(&k) {
                assert_eq!(
                    &got,
                    own,
                    "txn {id} does not read its own write of {}",
                    key(k)
                );
            } else if let Some(before) = rec.reads.get(&k) {
                assert_eq!(&got, before, "txn {id} read {} twice, differently", key(k));
            } else {
                rec.reads.insert(k, got);
            }
        } else {
            writes -= 1;
            // Mostly keys it read (read-modify-write), else blind writes.
            let read: Vec<usize> = rec.reads.keys().copied().collect();
            let k = if !read.is_empty() && r.random_bool(0.6) {
                read[r.random_range(0..read.len())]
            } else {
                pick(r, near, shape)
            };
            // Every batch puts a value, which names its transaction.
            let names = rec.writes.iter().any(|(&j, v)| j != k && v.is_some());
            if !names || r.random_bool(0.85) {
                let v = value(id, k, r.random_range(0..200));
                t.put(key(k), &v);
                rec.writes.insert(k, Some(v));
            } else {
                t.delete(key(k));
                rec.writes.insert(k, None);
            }
        }
    }
    if plan == Plan::Large {
        assert!(
            rec.reads.len() >= TWO_STEP_MIN_KEYS,
            "txn {id}: a small read set"
        );
    }
    (t, rec)
}

/// Commits `t`, synced or not (a synced group holds the WAL lock for an fsync, and the
/// writers queued meanwhile form the next group together).
fn commit(t: sluice::Transaction, rec: &mut Txn, sync: bool) {
    match t.commit_opt(&WriteOptions { sync }) {
        Ok(()) => rec.committed = true,
        Err(Error::Conflict { .. }) => {}
        Err(e) => panic!("txn {}: {e}", rec.id),
    }
}

/// Runs worker `w`'s transactions. Between one's reads and its commit, another may run
/// whole on the same thread (a race made certain), and layout work may run: a flush, a
/// flush then a retarget (what was written since its snapshot then sits in a draining
/// layout), a migration step or lazy moves, so that its check meets them. With
/// `shape.partners`, a partner thread is then often cued to commit a quick rival (mostly
/// of keys the transaction read and wrote) while the transaction commits: a large one
/// checks its read set outside the WAL lock first, and a rival that commits after its
/// mark must be found by its check under the lock.
fn worker(db: &Db, seed: u64, w: u64, shape: &Shape) -> Vec<Txn> {
    let mut r = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (w + 1));
    let all: Vec<String> = (0..shape.keys).map(key).collect();
    let mut out = Vec::with_capacity(2 * shape.txns + 1);
    let mut ids = (w + 1) * 1_000_000..;
    // Partners cued for a transaction that have made their rivals' reads and writes; the
    // transaction that has begun its commit.
    let ready = &AtomicUsize::new(0);
    let go = &AtomicU64::new(0);
    std::thread::scope(|s| {
        let partners: Vec<_> = (shape.partners.iter())
            .map(|&plan| {
                let (cue, cues) = std::sync::mpsc::channel::<Cue>();
                let mut pr = StdRng::seed_from_u64(r.random());
                let partner = s.spawn(move || {
                    let mut rivals = Vec::new();
                    for Cue {
                        of,
                        id,
                        near,
                        spread,
                    } in cues
                    {
                        let (t, mut rec) = begin(db, &mut pr, id, &near, plan, shape);
                        let sync = pr.random_bool(0.5);
                        ready.fetch_add(1, Ordering::Release);
                        // (The worker may be on to its next transaction already.)
                        while go.load(Ordering::Acquire) < of {
                            std::hint::spin_loop();
                        }
                        // Spread over the transaction's commit: before its mark, while it
                        // checks its read set up to the mark, after. (A race, paced by the
                        // clock; the outcome is checked whatever the timing.)
                        let at = Instant::now() + spread.mul_f64(pr.random_range(0.0..1.0));
                        while Instant::now() < at {
                            std::hint::spin_loop();
                        }
                        commit(t, &mut rec, sync);
                        rivals.push(rec);
                    }
                    rivals
                });
                (cue, partner)
            })
            .collect();
        // How long the last commit took: how long a partner's rival spreads its start over.
        let mut spread = Duration::ZERO;
        while out.len() < shape.txns {
            let (t, mut rec) = begin(db, &mut r, ids.next().unwrap(), &[], shape.plan, shape);
            let nested = r.random_ratio(1, 4);
            if nested {
                // A rival: it mostly touches what the first read.
                let near: Vec<usize> = rec.reads.keys().copied().collect();
                let (t, mut other) =
                    begin(db, &mut r, ids.next().unwrap(), &near, Plan::Small, shape);
                commit(t, &mut other, false);
                out.push(other);
            }
            if r.random_ratio(1, if nested { 2 } else { shape.layout_work }) {
                match r.random_range(0..4) {
                    0 => db.flush().unwrap(),
                    1 => {
                        // What was written since its snapshot goes to a layout that then
                        // drains: a rollback (or forward again). Only to a pinned version:
                        // the churn thread makes each version it registers the target,
                        // which must not retire before that.
                        db.flush().unwrap();
                        let info = db.layout();
                        let others: Vec<_> = (info.versions.iter())
                            .filter(|v| !v.is_target && v.pinned)
                            .collect();
                        if !others.is_empty() {
                            let _ = db.set_target(others[r.random_range(0..others.len())].id);
                        }
                    }
                    2 => {
                        db.migrate_now(Some(4096)).unwrap();
                    }
                    _ => {
                        for k in &all {
                            db.get(k).unwrap();
                        }
                    }
                }
            }
            let cued: Vec<_> = (partners.iter()).filter(|_| r.random_ratio(3, 4)).collect();
            if !cued.is_empty() {
                // What it read and wrote, else what it read: a rival's write there makes a
                // cycle with it should both commit.
                let rmw: Vec<usize> = (rec.writes.keys())
                    .filter(|k| rec.reads.contains_key(k))
                    .copied()
                    .collect();
                let near = if rmw.is_empty() {
                    rec.reads.keys().copied().collect()
                } else {
                    rmw
                };
                ready.store(0, Ordering::Release);
                for (cue, _) in &cued {
                    let (of, id, near) = (rec.id, ids.next().unwrap(), near.clone());
                    cue.send(Cue {
                        of,
                        id,
                        near,
                        spread,
                    })
                    .unwrap();
                }
                // The rivals made their reads and writes: all commit at once (the partners
                // spin rather than sleep, as a thread woken takes longer than a commit).
                while ready.load(Ordering::Acquire) < cued.len() {
                    std::thread::yield_now();
                }
                go.store(rec.id, Ordering::Release);
            }
            let sync = !partners.is_empty() && r.random_ratio(1, 4);
            let start = Instant::now();
            commit(t, &mut rec, sync);
            if rec.committed && !sync {
                spread = start.elapsed();
            }
            out.push(rec);
        }
        for (cue, partner) in partners {
            drop(cue);
            out.extend(partner.join().unwrap());
        }
    });
    out
}

/// One version of a key: the write at `seqno` by transaction `txn` (`None`: a delete).
#[derive(Clone, Debug)]
struct Version {
    seqno: u64,
    txn: u64,
    value: Option<Bytes>,
}

/// Reads every WAL in `dirs` and returns each key's versions in seqno order, and each
/// writing transaction's commit seqno, checking that the WAL holds exactly the committed
/// transactions' writes, each once and whole.
fn versions_from_wals(
    keys: usize,
    dirs: &[&Path],
    txns: &HashMap<u64, &Txn>,
) -> (Vec<Vec<Version>>, HashMap<u64, u64>) {
    let mut records = BTreeMap::new();
    for dir in dirs {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if !is_wal(&p) {
                continue;
            }
            let wal = sluice::inspect::read_wal_file(&p).unwrap();
            assert!(wal.tail.is_none(), "{}: torn tail", p.display());
            for rec in wal.records {
                if let Some(prev) = records.insert(rec.seqno, rec.clone()) {
                    assert_eq!(prev.ops, rec.ops, "two WAL records at seqno {}", rec.seqno);
                }
            }
        }
    }
    let mut versions = vec![Vec::new(); keys];
    let mut commit_seqno = HashMap::new();
    for (seqno, rec) in records {
        let mut writer = None;
        let mut ops = BTreeMap::new();
        let mut written = Vec::new();
        for op in &rec.ops {
            let k = std::str::from_utf8(&op.key)
                .ok()
                .and_then(|s| s.strip_prefix('k')?.parse::<usize>().ok())
                .filter(|&k| k < keys)
                .unwrap_or_else(|| {
                    panic!("WAL seqno {}: a key nobody wrote: {:?}", op.seqno, op.key)
                });
            let v = match op.kind {
                Kind::Value => {
                    let (txn, of) = writer_of(&op.value).unwrap_or_else(|| {
                        panic!(
                            "WAL seqno {}: a value nobody wrote: {:?}",
                            op.seqno, op.value
                        )
                    });
                    assert_eq!(
                        of,
                        k,
                        "WAL seqno {}: {:?} under {}",
                        op.seqno,
                        op.value,
                        key(k)
                    );
                    assert!(
                        writer.is_none_or(|w| w == txn),
                        "WAL record at seqno {seqno} holds writes of txns {writer:?} and {txn}"
                    );
                    writer = Some(txn);
                    Some(op.value.clone())
                }
                Kind::Delete => None,
                Kind::Forward => panic!("WAL seqno {}: a forwarding pointer", op.seqno),
            };
            written.push((k, op.seqno, v.clone()));
            assert!(
                ops.insert(k, v).is_none(),
                "WAL record at seqno {seqno} writes {} twice",
                key(k)
            );
        }
        let txn =
            writer.unwrap_or_else(|| panic!("WAL record at seqno {seqno} puts nothing: {rec:?}"));
        let t = txns
            .get(&txn)
            .unwrap_or_else(|| panic!("WAL record at seqno {seqno}: txn {txn} never ran"));
        assert!(
            t.committed,
            "txn {txn} failed with a conflict, yet its writes are in the WAL at seqno {seqno}"
        );
        assert_eq!(
            ops, t.writes,
            "txn {txn}: the WAL holds other writes than it made"
        );
        assert!(
            commit_seqno.insert(txn, seqno).is_none(),
            "txn {txn} is in the WAL twice"
        );
        for (k, seqno, value) in written {
            versions[k].push(Version { seqno, txn, value });
        }
    }
    for t in txns.values() {
        if t.committed && !t.writes.is_empty() {
            assert!(
                commit_seqno.contains_key(&t.id),
                "txn {} committed, but its writes are not in the WAL",
                t.id
            );
        }
    }
    (versions, commit_seqno)
}

#[derive(Clone, Copy, Debug)]
enum Dep {
    /// Wrote the version the other transaction's write replaced.
    Ww,
    /// Wrote the version the other transaction read.
    Wr,
    /// Read the version the other transaction's write replaced.
    Rw,
}

/// Checks every read against the versions, builds the dependency graph of the committed
/// transactions and returns a cycle in it, if any, as (txn, dependency, key, next txn).
fn check_history(
    txns: &HashMap<u64, &Txn>,
    versions: &[Vec<Version>],
) -> Option<Vec<(u64, Dep, usize, u64)>> {
    let mut edges = Edges::new();
    for (k, vs) in versions.iter().enumerate() {
        for w in vs.windows(2) {
            edges
                .entry(w[0].txn)
                .or_default()
                .push((w[1].txn, Dep::Ww, k));
        }
    }
    for t in txns.values() {
        for (&k, got) in &t.reads {
            let vs = &versions[k];
            if let Some(v) = got {
                let (writer, of) = writer_of(v)
                    .unwrap_or_else(|| panic!("txn {} read a value nobody wrote: {v:?}", t.id));
                assert_eq!(of, k, "txn {} read {v:?} under {}", t.id, key(k));
                let w = txns
                    .get(&writer)
                    .unwrap_or_else(|| panic!("txn {} read {v:?}: txn {writer} never ran", t.id));
                assert!(
                    w.committed,
                    "txn {} read {v:?}, written by txn {writer}, which failed with a conflict",
                    t.id
                );
                assert_eq!(
                    w.writes.get(&k),
                    Some(got),
                    "txn {} read {v:?}, which txn {writer} did not write",
                    t.id
                );
            }
            // The version its snapshot holds: the newest at a seqno at most the snapshot's
            // (the initial transaction wrote every key before any snapshot was taken).
            let at = vs.partition_point(|v| v.seqno <= t.snapshot);
            assert!(at > 0, "{}: no version at seqno {}", key(k), t.snapshot);
            let seen = &vs[at - 1];
            assert_eq!(
                got,
                &seen.value,
                "txn {} (committed: {}) read {} at snapshot {}: the version there is txn {}'s at \
                 seqno {}",
                t.id,
                t.committed,
                key(k),
                t.snapshot,
                seen.txn,
                seen.seqno
            );
            if !t.committed {
                continue;
            }
            if seen.txn != t.id {
                edges.entry(seen.txn).or_default().push((t.id, Dep::Wr, k));
            }
            if let Some(next) = vs.get(at) {
                if next.txn != t.id {
                    edges.entry(t.id).or_default().push((next.txn, Dep::Rw, k));
                }
            }
        }
    }
    // The shortest cycle through a transaction of the one found: the easiest to read.
    let cycle = find_cycle(&edges)?;
    cycle
        .iter()
        .filter_map(|e| shortest_cycle_through(&edges, e.0))
        .min_by_key(Vec::len)
        .or(Some(cycle))
}

type Edges = BTreeMap<u64, Vec<(u64, Dep, usize)>>;

/// The shortest cycle through `start`, by breadth-first search.
fn shortest_cycle_through(edges: &Edges, start: u64) -> Option<Vec<(u64, Dep, usize, u64)>> {
    let mut came: HashMap<u64, (u64, Dep, usize)> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &(to, dep, k) in edges.get(&node).map(Vec::as_slice).unwrap_or(&[]) {
            if to == start {
                let mut cycle = vec![(node, dep, k, to)];
                let mut at = node;
                while at != start {
                    let (from, dep, k) = came[&at];
                    cycle.push((from, dep, k, at));
                    at = from;
                }
                cycle.reverse();
                return Some(cycle);
            }
            if let std::collections::hash_map::Entry::Vacant(e) = came.entry(to) {
                e.insert((node, dep, k));
                queue.push_back(to);
            }
        }
    }
    None
}

/// A cycle of the graph, by depth-first search (iterative: the graph has thousands of
/// nodes).
fn find_cycle(edges: &Edges) -> Option<Vec<(u64, Dep, usize, u64)>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut mark: HashMap<u64, Mark> = HashMap::new();
    for &start in edges.keys() {
        if mark.contains_key(&start) {
            continue;
        }
        // (node, index of its next edge to follow); `path` holds the edges taken.
        let mut stack: Vec<(u64, usize)> = vec![(start, 0)];
        let mut path: Vec<(u64, Dep, usize, u64)> = Vec::new();
        mark.insert(start, Mark::Open);
        while let Some(top) = stack.last_mut() {
            let node = top.0;
            let out = edges.get(&node).map(Vec::as_slice).unwrap_or(&[]);
            let Some(&(to, dep, k)) = out.get(top.1) else {
                mark.insert(node, Mark::Done);
                stack.pop();
                path.pop();
                continue;
            };
            top.1 += 1;
            match mark.get(&to) {
                Some(Mark::Done) => {}
                Some(Mark::Open) => {
                    let from = path.iter().position(|e| e.0 == to).unwrap_or(path.len());
                    let mut cycle = path[from..].to_vec();
                    cycle.push((node, dep, k, to));
                    return Some(cycle);
                }
                None => {
                    mark.insert(to, Mark::Open);
                    path.push((node, dep, k, to));
                    stack.push((to, 0));
                }
            }
        }
    }
    None
}

/// What one seed ran.
#[derive(Default)]
struct Seen {
    committed: usize,
    conflicts: usize,
    /// Of those, transactions whose read sets were checked in two steps.
    two_step_committed: usize,
    two_step_conflicts: usize,
    rollbacks: u64,
    lazy_moves: u64,
    migrated: u64,
}

fn run_seed(shape: &'static Shape, seed: u64) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options(shape, archive.path())).unwrap();
    // Transaction 0 writes every key first.
    let mut t = db.transaction();
    let initial = Txn {
        id: 0,
        snapshot: t.snapshot_seqno(),
        reads: BTreeMap::new(),
        writes: (0..shape.keys).map(|k| (k, Some(value(0, k, 0)))).collect(),
        committed: true,
    };
    for (k, v) in &initial.writes {
        t.put(key(*k), v.as_ref().unwrap());
    }
    t.commit().unwrap();
    db.flush().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (db, stop) = (db.clone(), stop.clone());
        let keys: Vec<String> = (0..shape.keys).map(key).collect();
        std::thread::spawn(move || churn_layout(&db, &stop, seed, &keys))
    };
    let workers: Vec<_> = (0..shape.workers)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || worker(&db, seed, w, shape))
        })
        .collect();
    let mut all = vec![initial];
    for w in workers {
        all.extend(w.join().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let rollbacks = churn.join().unwrap();
    let stats = db.stats();
    let txns: HashMap<u64, &Txn> = all.iter().map(|t| (t.id, t)).collect();
    let live = dump(&db).unwrap();
    db.close().unwrap();
    let (versions, commit_seqno) =
        versions_from_wals(shape.keys, &[dir.path(), archive.path()], &txns);
    if let Some(cycle) = check_history(&txns, &versions) {
        let mut msg = String::from("not serializable; a cycle of dependencies:\n");
        for (from, dep, k, to) in &cycle {
            msg += &format!("  txn {from} -{dep:?} on {}-> txn {to}\n", key(*k));
        }
        // Of a large read set, the keys on the cycle.
        let on_cycle: Vec<usize> = cycle.iter().map(|e| e.2).collect();
        for (from, ..) in &cycle {
            let t = txns[from];
            let shown = |k: &usize| t.reads.len() <= 16 || on_cycle.contains(k);
            msg += &format!(
                "  txn {from}: snapshot {}, commit seqno {:?}, reads {:?}{}, writes {:?}\n",
                t.snapshot,
                commit_seqno.get(from),
                (t.reads.iter())
                    .filter(|(k, _)| shown(k))
                    .map(|(k, v)| (key(*k), v.as_ref().and_then(|v| writer_of(v)).map(|w| w.0)))
                    .collect::<Vec<_>>(),
                match t.reads.len() {
                    n @ 17.. => format!(" (of {n} keys read)"),
                    _ => String::new(),
                },
                t.writes
                    .iter()
                    .map(|(k, v)| (key(*k), v.is_some()))
                    .collect::<Vec<_>>(),
            );
        }
        panic!("{msg}");
    }
    // Nothing lost: each key holds its newest version, before and after a reopen.
    let expect: BTreeMap<Vec<u8>, Vec<u8>> = versions
        .iter()
        .enumerate()
        .filter_map(|(k, vs)| Some((key(k).into_bytes(), vs.last()?.value.as_ref()?.to_vec())))
        .collect();
    assert_eq!(
        live, expect,
        "the final state is not the newest version of each key"
    );
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(dump(&db).unwrap(), expect, "after a reopen");
    db.close().unwrap();
    let two_step = || (all.iter()).filter(|t| t.reads.len() >= TWO_STEP_MIN_KEYS);
    Seen {
        committed: all.iter().filter(|t| t.committed).count(),
        conflicts: all.iter().filter(|t| !t.committed).count(),
        two_step_committed: two_step().filter(|t| t.committed).count(),
        two_step_conflicts: two_step().filter(|t| !t.committed).count(),
        rollbacks,
        lazy_moves: stats.lazy_moves,
        migrated: stats.migration_bytes_read,
    }
}

fn run_seeds(shape: &'static Shape, default: u64) {
    let mut total = Seen::default();
    for seed in seeds(default) {
        let seen = std::sync::Mutex::new(Seen::default());
        with_seed("serializability", seed, |seed| {
            *seen.lock().unwrap() = run_seed(shape, seed);
        });
        let seen = seen.into_inner().unwrap();
        total.committed += seen.committed;
        total.conflicts += seen.conflicts;
        total.two_step_committed += seen.two_step_committed;
        total.two_step_conflicts += seen.two_step_conflicts;
        total.rollbacks += seen.rollbacks;
        total.lazy_moves += seen.lazy_moves;
        total.migrated += seen.migrated;
    }
    eprintln!(
        "{} transactions committed, {} failed with a conflict (read sets checked in two \
         steps: {} committed, {} failed); {} rollbacks, {} lazy moves, {} bytes migrated",
        total.committed,
        total.conflicts,
        total.two_step_committed,
        total.two_step_conflicts,
        total.rollbacks,
        total.lazy_moves,
        total.migrated
    );
    // The checker only means something if transactions raced.
    assert!(total.conflicts > 0, "no transaction conflicted");
    if shape.plan == Plan::Large {
        assert!(
            total.two_step_committed > 0 && total.two_step_conflicts > 0,
            "large transactions must both commit and conflict"
        );
        assert!(
            total.lazy_moves > 0,
            "no lazy move met the large transactions"
        );
    }
}

#[test]
fn concurrent_transactions_are_serializable_through_layout_churn() {
    run_seeds(&SMALL, CI_SEEDS);
}

/// Long soak. Short version in CI: `concurrent_transactions_are_serializable_through_layout_churn`.
#[test]
#[ignore = "soak (short version in CI: concurrent_transactions_are_serializable_through_layout_churn, 3 seeds): SLUICE_SEEDS=300 cargo test --release -p sluice-tests --test serializability serializability_soak -- --ignored --nocapture"]
fn serializability_soak() {
    run_seeds(&SMALL, 300);
}

#[test]
fn large_transactions_are_serializable_through_layout_churn() {
    run_seeds(&LARGE, CI_SEEDS);
}

/// Long soak. Short version in CI: `large_transactions_are_serializable_through_layout_churn`.
#[test]
#[ignore = "soak (short version in CI: large_transactions_are_serializable_through_layout_churn, 3 seeds): SLUICE_SEEDS=300 cargo test --release -p sluice-tests --test serializability large_transactions_soak -- --ignored --nocapture"]
fn large_transactions_soak() {
    run_seeds(&LARGE, 300);
}
