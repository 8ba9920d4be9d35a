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
//! `SLUICE_SEED_FROM`; CI runs [`CI_SEEDS`]). Long soak (not run by `cargo test`):
//! `SLUICE_SEEDS=300 cargo test --release -p sluice-tests --test serializability -- --ignored --nocapture`

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice::fs::{Fs, StdFs};
use sluice::{Db, Error, Kind, Options, PartitionSpec};
use sluice_tests::{churn_layout, dump, seeds, with_seed};

const CI_SEEDS: u64 = 3;
const KEYS: usize = 16;
/// Keys `0..HOT` are picked most of the time (races); the others are written rarely, so
/// their newest versions sit in tables that retargets leave behind (lazy moves).
const HOT: usize = 6;
const WORKERS: u64 = 4;
/// Transactions each worker runs per seed.
const TXNS: usize = 150;

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

fn options(archive: &Path) -> Options {
    Options {
        partition: PartitionSpec::Range {
            boundaries: vec![b"k04".to_vec(), b"k08".to_vec()],
        },
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        migration_bytes_per_sec: 8 << 20,
        fs: Arc::new(KeepWals {
            archive: archive.to_path_buf(),
        }),
        ..Options::tiny()
    }
}

/// A key: one of `near` half the time (if any), else mostly a hot one.
fn pick(r: &mut StdRng, near: &[usize]) -> usize {
    if !near.is_empty() && r.random_bool(0.5) {
        near[r.random_range(0..near.len())]
    } else if r.random_bool(0.75) {
        r.random_range(0..HOT)
    } else {
        r.random_range(0..KEYS)
    }
}

/// Starts transaction `id` and makes its reads and writes (interleaved at random), of
/// keys picked near `near`.
fn begin(db: &Db, r: &mut StdRng, id: u64, near: &[usize]) -> (sluice::Transaction, Txn) {
    let mut t = db.transaction();
    let mut rec = Txn {
        id,
        snapshot: t.snapshot_seqno(),
        reads: BTreeMap::new(),
        writes: BTreeMap::new(),
        committed: false,
    };
    let mut reads = r.random_range(0..=4usize);
    let mut writes = r.random_range(0..=3usize);
    if reads + writes == 0 {
        reads = 1;
    }
    while reads + writes > 0 {
        if r.random_range(0..reads + writes) < reads {
            reads -= 1;
            let k = pick(r, near);
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
                pick(r, near)
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
    (t, rec)
}

fn commit(t: sluice::Transaction, rec: &mut Txn) {
    match t.commit() {
        Ok(()) => rec.committed = true,
        Err(Error::Conflict { .. }) => {}
        Err(e) => panic!("txn {}: {e}", rec.id),
    }
}

/// Runs worker `w`'s transactions. Between one's reads and its commit, another may run
/// whole on the same thread (a race made certain), and layout work may run: a flush, a
/// flush then a retarget (what was written since its snapshot then sits in a draining
/// layout), a migration step or lazy moves, so that its check meets them.
fn worker(db: &Db, seed: u64, w: u64) -> Vec<Txn> {
    let mut r = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (w + 1));
    let all: Vec<String> = (0..KEYS).map(key).collect();
    let mut out = Vec::with_capacity(TXNS + 1);
    let mut ids = (w + 1) * 1_000_000..;
    while out.len() < TXNS {
        let (t, mut rec) = begin(db, &mut r, ids.next().unwrap(), &[]);
        let nested = r.random_ratio(1, 4);
        if nested {
            // A rival: it mostly touches what the first read.
            let near: Vec<usize> = rec.reads.keys().copied().collect();
            let (t, mut other) = begin(db, &mut r, ids.next().unwrap(), &near);
            commit(t, &mut other);
            out.push(other);
        }
        if r.random_ratio(1, if nested { 2 } else { 8 }) {
            match r.random_range(0..4) {
                0 => db.flush().unwrap(),
                1 => {
                    // What was written since its snapshot goes to a layout that then
                    // drains: a rollback (or forward again). Only to a pinned version:
                    // the churn thread makes each version it registers the target, which
                    // must not retire before that.
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
        commit(t, &mut rec);
        out.push(rec);
    }
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
    let mut versions = vec![Vec::new(); KEYS];
    let mut commit_seqno = HashMap::new();
    for (seqno, rec) in records {
        let mut writer = None;
        let mut ops = BTreeMap::new();
        let mut written = Vec::new();
        for op in &rec.ops {
            let k = std::str::from_utf8(&op.key)
                .ok()
                .and_then(|s| s.strip_prefix('k')?.parse::<usize>().ok())
                .filter(|&k| k < KEYS)
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
    rollbacks: u64,
    lazy_moves: u64,
    migrated: u64,
}

fn run_seed(seed: u64) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options(archive.path())).unwrap();
    // Transaction 0 writes every key first.
    let mut t = db.transaction();
    let initial = Txn {
        id: 0,
        snapshot: t.snapshot_seqno(),
        reads: BTreeMap::new(),
        writes: (0..KEYS).map(|k| (k, Some(value(0, k, 0)))).collect(),
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
        let keys: Vec<String> = (0..KEYS).map(key).collect();
        std::thread::spawn(move || churn_layout(&db, &stop, seed, &keys))
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || worker(&db, seed, w))
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
    let (versions, commit_seqno) = versions_from_wals(&[dir.path(), archive.path()], &txns);
    if let Some(cycle) = check_history(&txns, &versions) {
        let mut msg = String::from("not serializable; a cycle of dependencies:\n");
        for (from, dep, k, to) in &cycle {
            msg += &format!("  txn {from} -{dep:?} on {}-> txn {to}\n", key(*k));
        }
        for (from, ..) in &cycle {
            let t = txns[from];
            msg += &format!(
                "  txn {from}: snapshot {}, commit seqno {:?}, reads {:?}, writes {:?}\n",
                t.snapshot,
                commit_seqno.get(from),
                t.reads
                    .iter()
                    .map(|(k, v)| (key(*k), v.as_ref().and_then(|v| writer_of(v)).map(|w| w.0)))
                    .collect::<Vec<_>>(),
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
    Seen {
        committed: all.iter().filter(|t| t.committed).count(),
        conflicts: all.iter().filter(|t| !t.committed).count(),
        rollbacks,
        lazy_moves: stats.lazy_moves,
        migrated: stats.migration_bytes_read,
    }
}

fn run_seeds(default: u64) {
    let mut total = Seen::default();
    for seed in seeds(default) {
        let seen = std::sync::Mutex::new(Seen::default());
        with_seed("serializability", seed, |seed| {
            *seen.lock().unwrap() = run_seed(seed);
        });
        let seen = seen.into_inner().unwrap();
        total.committed += seen.committed;
        total.conflicts += seen.conflicts;
        total.rollbacks += seen.rollbacks;
        total.lazy_moves += seen.lazy_moves;
        total.migrated += seen.migrated;
    }
    eprintln!(
        "{} transactions committed, {} failed with a conflict; {} rollbacks, {} lazy moves, \
         {} bytes migrated",
        total.committed, total.conflicts, total.rollbacks, total.lazy_moves, total.migrated
    );
    // The checker only means something if transactions raced.
    assert!(total.conflicts > 0, "no transaction conflicted");
}

#[test]
fn concurrent_transactions_are_serializable_through_layout_churn() {
    run_seeds(CI_SEEDS);
}

/// Long soak. Short version in CI: `concurrent_transactions_are_serializable_through_layout_churn`.
#[test]
#[ignore = "soak (short version in CI: concurrent_transactions_are_serializable_through_layout_churn, 3 seeds): SLUICE_SEEDS=300 cargo test --release -p sluice-tests --test serializability -- --ignored --nocapture"]
fn serializability_soak() {
    run_seeds(300);
}
