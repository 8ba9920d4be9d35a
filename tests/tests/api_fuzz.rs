//! The public API called at random, with the arguments a caller can get wrong mixed in:
//! keys and values past their limits, empty keys, inverted and empty ranges, unknown,
//! retired and pinned version ids, partition numbers past the target's, specs valid and
//! not, migration rates and budgets from zero to `u64::MAX`, checkpoints into directories
//! that exist — among the puts, deletes, batches, transactions, snapshots, flushes,
//! compactions, retargets and migrations of a database whose background work runs.
//!
//! The rule: no call panics (nor does a background thread); a call refused for its
//! arguments answers with a typed error of its own (never I/O, corruption or a stopped
//! database) and changes nothing; and every read — point reads, scans with every kind of
//! bound, both directions, snapshots taken along the way, the database reopened at the
//! end — gives what a plain map given the calls that succeeded gives.
//!
//! The same calls also come from three threads at once, each with keys of its own, so that
//! each thread's reads are judged against its own calls while the others write, retarget,
//! migrate and checkpoint.
//!
//! `SLUICE_SEEDS=n` runs n seeds (CI: 12 and 6), `SLUICE_SEED=n` one.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice::{
    Db, Error, Options, PartitionSpec, Snapshot, VersionId, WriteBatch, MAX_KEY_LEN, MAX_VALUE_LEN,
};
use sluice_tests::{engine_thread_panics, seeds, watch_engine_panics, with_seed};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const OPS: usize = 300;

/// Errors a call may answer for arguments that are wrong (or a race it lost), as opposed
/// to a failure of the database.
fn refused_for_its_arguments(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidPartitionSpec(_)
            | Error::InvalidOption { .. }
            | Error::KeyTooLarge { .. }
            | Error::ValueTooLarge { .. }
            | Error::BatchTooLarge { .. }
            | Error::TooLarge { .. }
            | Error::OutOfRange { .. }
            | Error::UnknownVersion(_)
            | Error::VersionRetired(_)
            | Error::LayoutRefused(_)
            | Error::Conflict { .. }
            | Error::Busy { .. }
    )
}

/// A key under `prefix` (each thread of a run has its own, so that its reads can be judged
/// against its own calls): mostly one of a few dozen (so calls meet each other's keys),
/// sometimes the prefix alone (the empty key, without one), at the length limit, or past it.
fn key(r: &mut StdRng, prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    match r.random_range(0..100) {
        0 => {}
        1 => k.resize(MAX_KEY_LEN, b'L'),
        2 => k.resize(MAX_KEY_LEN + 1, b'L'),
        _ => k.extend_from_slice(format!("k{:02}", r.random_range(0..40)).as_bytes()),
    }
    k
}

/// A value: mostly short, sometimes empty or a few KiB; rarely past the limit.
fn value(r: &mut StdRng) -> Vec<u8> {
    match r.random_range(0..400) {
        0 => vec![7; MAX_VALUE_LEN + 1],
        1..=20 => vec![r.random::<u8>(); r.random_range(1000..5000)],
        21..=30 => Vec::new(),
        _ => (0..r.random_range(1..40))
            .map(|_| r.random::<u8>())
            .collect(),
    }
}

/// A scan bound within `prefix`'s keys: open ends stop at the prefix's range.
fn bound(r: &mut StdRng, prefix: &[u8], upper: bool) -> Bound<Vec<u8>> {
    match r.random_range(0..3) {
        0 => prefix_bound(prefix, upper),
        1 => Bound::Included(key(r, prefix)),
        _ => Bound::Excluded(key(r, prefix)),
    }
}

/// The lower or upper end of the keys under `prefix` (unbounded without one). Prefixes end
/// in `/`, so the upper end is the same bytes ending in `0`.
fn prefix_bound(prefix: &[u8], upper: bool) -> Bound<Vec<u8>> {
    match (prefix.split_last(), upper) {
        (None, _) => Bound::Unbounded,
        (Some(_), false) => Bound::Included(prefix.to_vec()),
        (Some((last, head)), true) => {
            let mut end = head.to_vec();
            end.push(last + 1);
            Bound::Excluded(end)
        }
    }
}

/// What the model holds within `(lo, hi)`; nothing for an inverted or empty range
/// (`BTreeMap::range` would panic on those).
fn model_range(m: &Model, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.iter()
        .filter(|(k, _)| {
            let above = match lo {
                Bound::Unbounded => true,
                Bound::Included(s) => *k >= s,
                Bound::Excluded(s) => *k > s,
            };
            let below = match hi {
                Bound::Unbounded => true,
                Bound::Included(e) => *k <= e,
                Bound::Excluded(e) => *k < e,
            };
            above && below
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn collect(it: sluice::DbIter, rev: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let kv = |r: sluice::Result<(bytes::Bytes, bytes::Bytes)>| {
        let (k, v) = r.expect("a scan of a healthy database");
        (k.to_vec(), v.to_vec())
    };
    if rev {
        let mut v: Vec<_> = it.rev().map(kv).collect();
        v.reverse();
        v
    } else {
        it.map(kv).collect()
    }
}

/// A spec: mostly valid, sometimes not (a range boundary out of order or repeated, zero
/// partitions, a split of a partition the base does not have).
fn spec(r: &mut StdRng) -> PartitionSpec {
    match r.random_range(0..8) {
        0 => PartitionSpec::Range {
            boundaries: vec![b"k30".to_vec(), b"k10".to_vec()],
        },
        1 => PartitionSpec::Hash {
            partitions: 0,
            seed: 1,
            hashed_prefix: None,
        },
        2 => PartitionSpec::Split {
            partition: 9,
            into: 2,
            seed: 5,
            base: Box::new(sluice_tests::hash(4, 3)),
        },
        _ => sluice_tests::random_partition_spec(r, &[b"k10".to_vec(), b"k20".to_vec()]),
    }
}

fn version(r: &mut StdRng) -> VersionId {
    VersionId(match r.random_range(0..10) {
        0 => u32::MAX,
        _ => r.random_range(0..12),
    })
}

struct Run<'a> {
    db: Db,
    dir: &'a Path,
    model: Model,
    snapshots: Vec<(Snapshot, Model)>,
    r: StdRng,
    /// The keys this run's calls use (empty: any).
    prefix: Vec<u8>,
    /// The call being made, for messages.
    call: String,
}

thread_local! {
    /// Calls that succeeded and calls refused, by kind: (kind, "ok" or the error's name).
    static TALLY: std::cell::RefCell<BTreeMap<(String, String), u64>> = Default::default();
}

/// A call's result: success, or a refusal for its arguments; anything else fails.
fn ok<T>(call: &str, res: sluice::Result<T>) -> Option<T> {
    let kind = call.split(": ").nth(1).unwrap_or(call).to_string();
    let (outcome, v) = match res {
        Ok(v) => ("ok".to_string(), Some(v)),
        Err(e) if refused_for_its_arguments(&e) => {
            let name = format!("{e:?}");
            let name = name.split([' ', '(', '{']).next().unwrap_or("").to_string();
            (name, None)
        }
        Err(e) => panic!("{call}: failed with {e:?}"),
    };
    TALLY.with(|t| *t.borrow_mut().entry((kind, outcome)).or_insert(0) += 1);
    v
}

/// What each kind of call is called in messages and the tally.
const CALLS: [&str; 22] = [
    "put",
    "put",
    "put",
    "put",
    "put",
    "delete",
    "delete",
    "batch",
    "transaction",
    "snapshot",
    "register",
    "set_target",
    "migrate_now",
    "rate/hold",
    "pin",
    "retire",
    "flush/compact",
    "write limit",
    "partition_entries",
    "shadow",
    "checkpoint",
    "reads",
];

impl Run<'_> {
    fn check_reads(&mut self) {
        let (lo, hi) = (
            bound(&mut self.r, &self.prefix, false),
            bound(&mut self.r, &self.prefix, true),
        );
        let rev = self.r.random_bool(0.5);
        let want = model_range(&self.model, &lo, &hi);
        let got = collect(self.db.range((lo.clone(), hi.clone())), rev);
        assert_eq!(
            got, want,
            "{}: scan {lo:?}..{hi:?} (backward {rev})",
            self.call
        );
        let k = key(&mut self.r, &self.prefix);
        let got = self.db.get(&k);
        let got = ok(&self.call, got).map(|v| v.map(|v| v.to_vec()));
        if let Some(got) = got {
            assert_eq!(got.as_ref(), self.model.get(&k), "{}: get", self.call);
        }
        if let Some((s, m)) = self.snapshots.first() {
            let got = collect(s.range((lo.clone(), hi.clone())), !rev);
            assert_eq!(
                got,
                model_range(m, &lo, &hi),
                "{}: snapshot scan",
                self.call
            );
        }
    }

    fn step(&mut self, n: usize) {
        let op = self.r.random_range(0..CALLS.len());
        self.call = format!("op {n}: {}", CALLS[op]);
        let r = &mut self.r;
        match op {
            0..=4 => {
                let (k, v) = (key(r, &self.prefix), value(r));
                let res = self.db.put(&k, &v);
                if ok(&self.call, res).is_some() {
                    self.model.insert(k, v);
                }
            }
            5 | 6 => {
                let k = key(r, &self.prefix);
                let res = self.db.delete(&k);
                if ok(&self.call, res).is_some() {
                    self.model.remove(&k);
                }
            }
            7 => {
                let mut b = WriteBatch::new();
                let mut after = self.model.clone();
                for _ in 0..r.random_range(0..6) {
                    let k = key(r, &self.prefix);
                    if r.random_bool(0.7) {
                        let v = value(r);
                        b.put(&k, &v);
                        after.insert(k, v);
                    } else {
                        b.delete(&k);
                        after.remove(&k);
                    }
                }
                let res = self.db.write(b);
                // All or nothing.
                if ok(&self.call, res).is_some() {
                    self.model = after;
                }
            }
            8 => {
                let mut t = self.db.transaction();
                let mut after = self.model.clone();
                for _ in 0..r.random_range(0..5) {
                    let k = key(r, &self.prefix);
                    match r.random_range(0..3) {
                        0 => {
                            let got = t.get(&k);
                            if let Some(got) = ok(&self.call, got) {
                                assert_eq!(
                                    got.as_deref(),
                                    after.get(&k).map(|v| &v[..]),
                                    "{}: a transaction's read",
                                    self.call
                                );
                            }
                        }
                        1 => {
                            let v = value(r);
                            t.put(&k, &v);
                            after.insert(k, v);
                        }
                        _ => {
                            t.delete(&k);
                            after.remove(&k);
                        }
                    }
                }
                let res = t.commit();
                if ok(&self.call, res).is_some() {
                    self.model = after;
                }
            }
            9 => {
                if self.snapshots.len() >= 2 || r.random_bool(0.3) {
                    self.snapshots.pop();
                } else {
                    self.snapshots
                        .push((self.db.snapshot(), self.model.clone()));
                }
            }
            10 => {
                let s = spec(r);
                let res = self.db.register_partition_fn(s);
                ok(&self.call, res);
            }
            11 => {
                let v = version(r);
                let res = self.db.set_target(v);
                ok(&self.call, res);
            }
            12 => {
                let budget = match r.random_range(0..3) {
                    0 => None,
                    1 => Some(0),
                    _ => Some(r.random_range(1..1 << 20)),
                };
                let res = self.db.migrate_now(budget);
                ok(&self.call, res);
            }
            13 => {
                let rate = [0, 1, 1 << 20, u64::MAX][r.random_range(0..4)];
                self.db.set_migration_rate(rate);
                let res = self.db.hold_migration(r.random_bool(0.3));
                ok(&self.call, res);
            }
            14 => {
                let (v, pin) = (version(r), r.random_bool(0.5));
                let res = self.db.pin_version(v, pin);
                ok(&self.call, res);
            }
            15 => {
                let res = if r.random_bool(0.5) {
                    self.db.retire_version(version(r))
                } else {
                    self.db.retire_drained().map(drop)
                };
                ok(&self.call, res);
            }
            16 => {
                let res = if r.random_bool(0.5) {
                    self.db.flush()
                } else {
                    self.db.compact()
                };
                ok(&self.call, res);
            }
            17 => {
                // A partition past the target's, no limit, or a generous one (a tiny one
                // would only make the run slow).
                let p = r.random_range(0..40);
                let rate = [None, Some(0), Some(64 << 20)][r.random_range(0..3)];
                let res = self.db.set_partition_write_limit(p, rate);
                ok(&self.call, res);
            }
            18 => {
                let (v, p) = (version(r), r.random_range(0..40));
                let res = self.db.partition_entries(v, p).map(|it| it.count());
                ok(&self.call, res);
            }
            19 => {
                let s = r.random_bool(0.7).then(|| spec(r));
                let res = self.db.set_shadow(s);
                ok(&self.call, res);
                self.db
                    .set_migration_latency_target(r.random_range(0..3) * 1000);
            }
            20 => {
                // Into a new directory, the database's own, or one already holding a file.
                let target = match r.random_range(0..3) {
                    0 => self.dir.join(format!("cp{n}")),
                    1 => self.dir.to_path_buf(),
                    _ => {
                        let d = self.dir.join(format!("full{n}"));
                        std::fs::create_dir_all(&d).unwrap();
                        std::fs::write(d.join("x"), b"x").unwrap();
                        d
                    }
                };
                let res = self.db.checkpoint(&target);
                if ok(&self.call, res).is_some() {
                    let cp = Db::open_read_only(&target, Options::default()).unwrap_or_else(|e| {
                        panic!("{}: the checkpoint does not open: {e}", self.call)
                    });
                    let own = (
                        prefix_bound(&self.prefix, false),
                        prefix_bound(&self.prefix, true),
                    );
                    let got = collect(cp.range(own), false);
                    let want: Vec<_> = self.model.clone().into_iter().collect();
                    assert_eq!(got, want, "{}: the checkpoint's data", self.call);
                }
            }
            _ => self.check_reads(),
        }
    }
}

fn options() -> Options {
    Options {
        // Background migration and lazy moves on, briskly.
        migration_bytes_per_sec: 4 << 20,
        move_on_first_read: true,
        ..Options::tiny()
    }
}

fn run(seed: u64) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("db");
    let db = Db::open(&dir, options()).unwrap();
    let mut run = Run {
        db,
        dir: root.path(),
        model: Model::new(),
        snapshots: Vec::new(),
        r: StdRng::seed_from_u64(seed),
        prefix: Vec::new(),
        call: String::new(),
    };
    for n in 0..OPS {
        run.step(n);
        if n % 25 == 24 {
            run.check_reads();
        }
    }
    let Run {
        db,
        model,
        snapshots,
        ..
    } = run;
    drop(snapshots);
    check_whole(db, &dir, model, seed);
}

/// The database holds exactly `model`, scanned forward, and again backward after a reopen.
fn check_whole(db: Db, dir: &Path, model: Model, seed: u64) {
    let want: Vec<_> = model.into_iter().collect();
    let got = collect(db.range(..), false);
    assert_eq!(got, want, "seed {seed}: before close");
    db.close().unwrap();
    let db = Db::open(dir, options()).unwrap();
    let got = collect(db.range(..), true);
    assert_eq!(got, want, "seed {seed}: after reopen");
    db.close().unwrap();
}

/// Three threads at once on one database, each with keys of its own and a clone of the
/// handle: retargets, migrations, compactions, checkpoints and each other's writes run
/// under every thread's reads, which must still give what its own calls made.
fn run_threads(seed: u64) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("db");
    let db = Db::open(&dir, options()).unwrap();
    let models: Vec<Model> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let (db, scratch) = (db.clone(), root.path().join(format!("t{t}")));
                s.spawn(move || {
                    std::fs::create_dir_all(&scratch).unwrap();
                    let mut run = Run {
                        db,
                        dir: &scratch,
                        model: Model::new(),
                        snapshots: Vec::new(),
                        r: StdRng::seed_from_u64(seed * 8 + t),
                        prefix: format!("t{t}/").into_bytes(),
                        call: String::new(),
                    };
                    for n in 0..OPS / 2 {
                        run.step(n);
                    }
                    run.check_reads();
                    run.model
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    check_whole(db, &dir, models.into_iter().flatten().collect(), seed);
}

#[test]
fn api_calls_from_three_threads_at_random() {
    watch_engine_panics();
    for seed in seeds(6) {
        with_seed("api_fuzz", seed, run_threads);
    }
    assert_eq!(engine_thread_panics(), 0, "an engine thread panicked");
}

#[test]
fn api_calls_at_random_with_bad_arguments() {
    watch_engine_panics();
    let seeds = seeds(12);
    for &seed in &seeds {
        with_seed("api_fuzz", seed, run);
    }
    assert_eq!(engine_thread_panics(), 0, "an engine thread panicked");
    let tally = TALLY.with(|t| t.borrow().clone());
    eprintln!("calls: {tally:?}");
    if seeds.len() >= 12 {
        // The calls reach the engine: each kind that can succeed did, and each kind of
        // bad argument was refused somewhere.
        let saw = |kind: &str, outcome: &str| tally.contains_key(&(kind.into(), outcome.into()));
        for kind in CALLS.iter().filter(|k| !["snapshot", "reads"].contains(k)) {
            assert!(saw(kind, "ok"), "no {kind} call succeeded: {tally:?}");
        }
        for (kind, refusal) in [
            ("put", "KeyTooLarge"),
            ("put", "ValueTooLarge"),
            ("register", "InvalidPartitionSpec"),
            ("set_target", "UnknownVersion"),
            ("write limit", "InvalidOption"),
            ("partition_entries", "UnknownVersion"),
        ] {
            assert!(
                saw(kind, refusal),
                "no {kind} call refused with {refusal}: {tally:?}"
            );
        }
    }
}
