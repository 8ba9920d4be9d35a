//! Checksummed nonsense, at random: seeded damage behind valid checksums, as a writer's bug
//! or a crafted file would leave it, in the blocks of a table and in the records of the
//! logs (WAL and manifest).
//!
//! **Tables.** A block (a data block most often, or the filter, index or properties) is
//! rewritten with damage and a valid checksum. A checksum cannot tell such a block from a
//! good one, and a read cannot check everything a block claims without losing what makes it
//! fast (a point read trusts the filter and the block's order). So the rule is:
//!
//! - no read panics or hangs, and every error is a corruption naming the table file and an
//!   offset; an open that refuses the table names it, and verify finds it too;
//! - whenever reads disagree among themselves — a point read and the scan, the scan forward
//!   and backward, a seek and the scan, a compaction's output and what the scan read, or an
//!   error in one read while the others went through — `sluice verify` with its deep check
//!   reports the table. What verify passes, every read agrees on;
//! - entries out of order are not rewritten: a compaction or a migration that meets them
//!   fails, naming the table, instead of writing them on into tables that are in order.
//!
//! The cases run with a cache too small to keep a block (every read decodes afresh) and one
//! that keeps every block (a block a scan walked in is upgraded when a point read searches
//! it), over plain and key-delta blocks, each uncompressed and in zstd frames.
//!
//! **Logs.** A record of the WAL or of the manifest is rewritten (bytes changed, cut short
//! or extended) and sealed with a valid checksum, or whole records are swapped, repeated or
//! dropped. The open either refuses, with a
//! corruption naming the log and nothing changed on disk, or opens; then scans both ways
//! agree, and the next open finds exactly what this one did.
//!
//! **Partition spec text** (a caller's or a command line's) at random: refused with a typed
//! error, or parsed to a valid spec that reads back unchanged.
//!
//! `SLUICE_SEEDS=n` runs n cases per configuration (CI: 150), `SLUICE_SEED=n` one. The
//! soak: `SLUICE_SEEDS=5000 cargo test --release -p sluice-tests --test fuzz -- --ignored`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sluice::fs::StdFs;
use sluice::inspect::{verify_dir, NoProgress, VerifyOptions};
use sluice::log::LogKind;
use sluice::sst::format::{block_trailer, Footer};
use sluice::sst::{Table, TableKind};
use sluice::{Compression, Db, Error, Options, WriteBatch, WriteOptions};
use sluice_tests::{copy_dir, no_background_work, rewrite_log, seeds, sst_files, with_seed};

type Kv = Vec<(Vec<u8>, Vec<u8>)>;

/// How a table's blocks are stored: plain or key-delta (decoded into the plain form when
/// read), each uncompressed or in a zstd frame (damage to a frame mostly meets zstd's own
/// content checksum; what gets past it meets the decoders behind).
#[derive(Clone, Copy, Debug)]
struct Codec {
    zstd: bool,
    key_delta: bool,
}

const CODECS: [Codec; 4] = [
    Codec {
        zstd: false,
        key_delta: false,
    },
    Codec {
        zstd: false,
        key_delta: true,
    },
    Codec {
        zstd: true,
        key_delta: false,
    },
    Codec {
        zstd: true,
        key_delta: true,
    },
];

fn options(codec: Codec, cache: u64) -> Options {
    no_background_work(Options {
        compression: if codec.zstd {
            Compression::Zstd(3)
        } else {
            Compression::None
        },
        key_delta_blocks: codec.key_delta,
        block_size: 1024,
        memtable_bytes: 4 << 20,
        block_cache_bytes: cache,
        ..Options::tiny()
    })
}

/// Keys of every shape the read path treats apart: short, sharing a long prefix (longer
/// than the sixteen bytes a merge compares as integers), and longer than 127 bytes (a
/// two-byte length).
fn key(i: usize) -> Vec<u8> {
    match i % 4 {
        0 => format!("k{i:04}").into_bytes(),
        1 => format!("a/long/shared/prefix/{i:06}").into_bytes(),
        2 => {
            let mut k = vec![b'm'; 130];
            k.extend_from_slice(format!("{i:04}").as_bytes());
            k
        }
        _ => format!("z{i}").into_bytes(),
    }
}

fn value(i: usize, round: usize) -> Vec<u8> {
    let len = (i * 37 + round * 11) % 300;
    (0..len).map(|j| (i + j + round) as u8).collect()
}

const KEYS: usize = 200;

/// The databases the table cases damage.
#[derive(Clone, Copy, Debug)]
enum Fixture {
    /// One layout: two overlapping tables (so reads merge them) holding several versions of
    /// some keys (a snapshot was open while they were flushed) and tombstones.
    Settled,
    /// The same data written under four range partitions, then halfway into `hash:4`: one
    /// partition migrated by a compaction, some keys moved by reads (their forwarding
    /// pointers in pointer tables of the draining layout), the rest still to move. Reads
    /// resolve each key across both layouts.
    Migrating,
}

impl Fixture {
    fn options(self, codec: Codec, cache: u64) -> Options {
        let o = options(codec, cache);
        match self {
            Fixture::Settled => o,
            Fixture::Migrating => Options {
                partition: sluice::PartitionSpec::Range {
                    boundaries: vec![b"b".to_vec(), b"l".to_vec(), b"n".to_vec()],
                },
                ..o
            },
        }
    }
}

/// Builds `fixture`. Returns what a read of it gives.
fn build(dir: &Path, codec: Codec, fixture: Fixture) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let opts = Options {
        // Reads move keys while the fixture is built (never in the cases).
        move_bytes_per_sec: 8 << 20,
        move_on_first_read: true,
        ..fixture.options(codec, 1 << 20)
    };
    let db = Db::open(dir, opts).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..KEYS {
        db.put(key(i), value(i, 0)).unwrap();
        model.insert(key(i), value(i, 0));
    }
    let snap = db.snapshot();
    for i in (0..KEYS).step_by(5) {
        db.put(key(i), value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }
    for i in (0..KEYS).step_by(7) {
        db.delete(key(i)).unwrap();
        model.remove(&key(i));
    }
    db.flush().unwrap();
    for i in (0..KEYS).step_by(3) {
        db.put(key(i), value(i, 2)).unwrap();
        model.insert(key(i), value(i, 2));
    }
    db.flush().unwrap();
    drop(snap);
    if let Fixture::Migrating = fixture {
        let v = db.register_partition_fn(sluice_tests::hash(4, 7)).unwrap();
        db.set_target(v).unwrap();
        for k in model.keys().step_by(3) {
            db.get(k).unwrap();
        }
        db.flush().unwrap();
        db.migrate_now(Some(1)).unwrap();
        let pointer_files: usize = db
            .layout()
            .versions
            .iter()
            .flat_map(|v| &v.partitions)
            .map(|p| p.pointer_files)
            .sum();
        assert!(pointer_files > 0, "no forwarding pointers to damage");
        assert!(db.stats().lazy_moves > 0);
    } else {
        assert_eq!(sst_files(dir).len(), 2);
    }
    db.close().unwrap();
    model
}

/// Damages one block of one table at random — most often a data block, otherwise the
/// filter, the index or the properties — and seals it with a valid checksum. Returns the
/// table's file name, its kind and what was done.
fn damage(dir: &Path, r: &mut StdRng) -> (String, TableKind, String) {
    let mut tables = sst_files(dir);
    tables.sort();
    let sst = tables[r.random_range(0..tables.len())].clone();
    let t = Table::open(&StdFs, &sst, 0, None).unwrap();
    let kind = t.props().kind;
    let mut f = std::fs::read(&sst).unwrap();
    let footer = Footer::decode(&f, &sst).unwrap();
    let (what, h) = match r.random_range(0..10) {
        0 => ("filter".to_string(), footer.filter),
        1 | 2 => ("index".to_string(), footer.index),
        3 | 4 => ("properties".to_string(), footer.props),
        _ => {
            let bi = r.random_range(0..t.block_count());
            (format!("data block {bi}"), t.block_handle(bi).unwrap().0)
        }
    };
    drop(t);
    let (s, e) = (h.offset as usize, (h.offset + h.size) as usize);
    let mut done = vec![format!("{what} at {s}, {} bytes, type {}", e - s, f[e])];
    let body = &mut f[s..e];
    let n = body.len();
    for _ in 0..r.random_range(1..=3) {
        let at = r.random_range(0..n);
        match r.random_range(0..6) {
            0 => {
                let bit = r.random_range(0..8);
                body[at] ^= 1 << bit;
                done.push(format!("flip bit {bit} of byte {at}"));
            }
            1 => {
                let v = [0x00, 0x01, 0x7f, 0x80, 0xff][r.random_range(0..5)];
                body[at] = v;
                done.push(format!("byte {at} = {v:#x}"));
            }
            2 => {
                let v = r.random::<u8>();
                body[at] = v;
                done.push(format!("byte {at} = {v:#x}"));
            }
            3 => {
                // Bytes of the block copied elsewhere in it: shapes the decoder knows,
                // in the wrong place.
                let len = r.random_range(1..=16.min(n));
                let from = r.random_range(0..=n - len);
                let to = r.random_range(0..=n - len);
                body.copy_within(from..from + len, to);
                done.push(format!("copy {len} bytes from {from} to {to}"));
            }
            4 if n >= 8 => {
                // The block's tail: a plain block's entry count and offset array.
                let at = n - r.random_range(1..=8.min(n));
                let v = r.random::<u8>();
                body[at] = v;
                done.push(format!("tail byte {at} = {v:#x}"));
            }
            _ => {
                // The block's head: a key-delta block's count and length, a plain block's
                // first entry.
                let at = r.random_range(0..4.min(n));
                let v = r.random::<u8>();
                body[at] = v;
                done.push(format!("head byte {at} = {v:#x}"));
            }
        }
    }
    let tr = block_trailer(&f[s..e], f[e]);
    f[e..e + tr.len()].copy_from_slice(&tr);
    std::fs::write(&sst, &f).unwrap();
    let name = sst.file_name().unwrap().to_string_lossy().into_owned();
    (name, kind, done.join("; "))
}

/// What every read of one damaged database gave.
struct Reads {
    forward: Result<Kv, Error>,
    backward: Result<Kv, Error>,
    /// Point reads of every key the pristine database held and every key the scans found.
    gets: BTreeMap<Vec<u8>, Result<Option<Vec<u8>>, Error>>,
    /// From some of those keys, the first three entries of a scan starting there.
    seeks: BTreeMap<Vec<u8>, Result<Kv, Error>>,
    /// `compact()` (or a migration of everything into `hash:4`), then a forward scan of
    /// its result.
    compacted: Result<Result<Kv, Error>, Error>,
}

fn scan(db: &Db) -> Result<Kv, Error> {
    db.range(..)
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect()
}

fn scan_back(db: &Db) -> Result<Kv, Error> {
    let mut v: Kv = db
        .range(..)
        .rev()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()?;
    v.reverse();
    Ok(v)
}

fn read_everything(
    dir: &Path,
    opts: Options,
    keys: Vec<Vec<u8>>,
    migrate: bool,
    fixture: Fixture,
) -> Result<Reads, Error> {
    let db = Db::open(dir, opts)?;
    // The scan first: with a roomy cache it leaves plain blocks that the point reads then
    // upgrade; the backward scan and the seeks meet the upgraded ones.
    let forward = scan(&db);
    let mut keys = keys;
    if let Ok(f) = &forward {
        keys.extend(f.iter().map(|(k, _)| k.clone()));
    }
    keys.sort();
    keys.dedup();
    let gets = keys
        .iter()
        .map(|k| (k.clone(), db.get(k).map(|v| v.map(|v| v.to_vec()))))
        .collect();
    let backward = scan_back(&db);
    // Every fourth key: fewer scans than make a seek compaction of the two tables start
    // in the background, whose timing would make the case's outcome vary from run to run.
    let seeks = keys
        .iter()
        .step_by(4)
        .map(|k| {
            let s: Result<Kv, Error> = db
                .range(k.clone()..)
                .take(3)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect();
            (k.clone(), s)
        })
        .collect();
    let rewrite = match (migrate, fixture) {
        (false, _) => db.compact(),
        // Each key to a partition of its own hash: every output table gets a part of the
        // input, and no one output sees the input's whole order.
        (true, Fixture::Settled) => db
            .register_partition_fn(sluice_tests::hash(4, 7))
            .and_then(|v| db.set_target(v))
            .and_then(|()| db.migrate_now(None))
            .map(drop),
        // The rest of the migration under way.
        (true, Fixture::Migrating) => db.migrate_now(None).map(drop),
    };
    let compacted = rewrite.map(|()| scan(&db));
    // A close may report the damage a compaction met; what the reads gave is the point.
    let _ = db.close();
    Ok(Reads {
        forward,
        backward,
        gets,
        seeks,
        compacted,
    })
}

/// Runs `f` on a thread of its own and gives up after `secs`: a decoder that loops forever
/// on some bytes fails the case instead of hanging the suite.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            h.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The thread panicked: report its panic as this case's.
            std::panic::resume_unwind(h.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: reads still running after {secs} s")
        }
    }
}

/// Every disagreement among the reads (empty if they agree), checking each error on the
/// way: a corruption naming `file` and an offset.
fn disagreements(r: &Reads, file: &str, what: &str) -> Vec<String> {
    let check = |e: &Error| {
        let s = e.to_string();
        // A compaction that meets damage stops writes and says why.
        let stopped = matches!(e, Error::ReadOnly(_)) && s.contains("corruption");
        assert!(
            e.is_corruption() || stopped,
            "{what}: not a corruption: {e:?}"
        );
        assert!(
            s.contains(file),
            "{what}: the error does not name {file}: {s}"
        );
        assert!(
            s.contains("offset"),
            "{what}: the error gives no offset: {s}"
        );
    };
    let mut out = Vec::new();
    let errors = [&r.forward, &r.backward]
        .into_iter()
        .filter_map(|x| x.as_ref().err())
        .chain(r.gets.values().filter_map(|x| x.as_ref().err()))
        .chain(r.seeks.values().filter_map(|x| x.as_ref().err()))
        .chain(r.compacted.as_ref().err())
        .chain(r.compacted.as_ref().ok().and_then(|x| x.as_ref().err()));
    let mut failed = 0;
    for e in errors {
        check(e);
        failed += 1;
    }
    if failed > 0 {
        out.push(format!("{failed} reads failed"));
    }
    let Ok(fwd) = &r.forward else {
        return out;
    };
    if let Ok(back) = &r.backward {
        if back != fwd {
            out.push(format!(
                "backward scan differs ({} entries against {})",
                back.len(),
                fwd.len()
            ));
        }
    }
    let scanned: BTreeMap<&[u8], &[u8]> = fwd.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    if scanned.len() != fwd.len() || fwd.windows(2).any(|w| w[0].0 >= w[1].0) {
        out.push("the scan is out of order or repeats a key".into());
    }
    for (k, got) in &r.gets {
        if let Ok(got) = got {
            if got.as_deref() != scanned.get(&k[..]).copied() {
                out.push(format!(
                    "get({}) = {:?} bytes, the scan {:?}",
                    String::from_utf8_lossy(k),
                    got.as_ref().map(|v| v.len()),
                    scanned.get(&k[..]).map(|v| v.len())
                ));
            }
        }
    }
    for (k, got) in &r.seeks {
        if let Ok(got) = got {
            let from = fwd.partition_point(|(x, _)| x < k);
            let want = &fwd[from..(from + 3).min(fwd.len())];
            if got[..] != *want {
                out.push(format!("a seek to {} differs", String::from_utf8_lossy(k)));
            }
        }
    }
    if let Ok(Ok(after)) = &r.compacted {
        if after != fwd {
            out.push("the compaction's output differs from the scan".into());
        }
    }
    out
}

/// A refused open says why: a corruption naming the damaged `file`.
fn assert_refusal_names(e: &Error, file: &str, what: &str) {
    assert!(
        e.is_corruption() && e.to_string().contains(file),
        "{what}: the open failed without naming {file} as damaged: {e:?}"
    );
}

/// How a case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The open refused the damage.
    Refused,
    /// Every read agreed (the damage hit a value, or every read that met it failed alike).
    Agreed,
    /// The reads disagreed, and verify named the table.
    Flagged,
}

fn run_case(
    pristine: &Path,
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    (codec, fixture): (Codec, Fixture),
    seed: u64,
) -> Outcome {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("db");
    copy_dir(pristine, &dir);
    let salt = u64::from(codec.key_delta) * 0xde17a + u64::from(codec.zstd) * 0x25d;
    let mut r = StdRng::seed_from_u64(seed ^ salt);
    let (file, kind, done) = damage(&dir, &mut r);
    // A cache that keeps no block, or every block; a compaction, or a migration.
    let cache = if seed.is_multiple_of(2) { 0 } else { 16 << 20 };
    let migrate = seed % 4 >= 2;
    let what = format!(
        "seed {seed}, {fixture:?}, {codec:?}, cache {cache}, migrate {migrate}: {file}: {done}"
    );
    // Verify before the reads: their compaction rewrites the tables.
    let copy = root.path().join("copy");
    copy_dir(&dir, &copy);
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    let (d, w) = (dir.clone(), what.clone());
    let reads = within(60, &what, move || {
        read_everything(&d, fixture.options(codec, cache), keys, migrate, fixture)
    });
    let verified = within(60, &what, move || {
        let opts = VerifyOptions {
            deep: true,
            sample_reads: None,
        };
        verify_dir(&copy, &opts, &NoProgress)
    });
    let report = verified.unwrap_or_else(|e| panic!("{what}: verify did not run: {e}"));
    let reads = match reads {
        Ok(reads) => reads,
        Err(e) => {
            // Metadata is checked at the open: a refusal names the table, and verify
            // finds what the open found.
            assert_refusal_names(&e, &file, &w);
            assert!(
                !report.is_ok(),
                "{w}: the open refuses ({e}) and verify passes"
            );
            return Outcome::Refused;
        }
    };
    let odd = disagreements(&reads, &file, &what);
    // Entries out of order are refused by what rewrites them, not written on into tables
    // where no check could find them any more. (A rewrite that went through and left the
    // table in place did not read it: a compaction of the target, say, while the damage is
    // in the draining layout. Pointer tables are not written on: a draining layout's go
    // when it retires.)
    if kind == TableKind::Data && report.errors().any(|p| p.check == "order") {
        assert!(
            reads.compacted.is_err() || dir.join(&file).exists(),
            "{what}: verify finds entries out of order, and the rewrite took them"
        );
    }
    if !odd.is_empty() {
        assert!(
            !report.is_ok(),
            "{what}: the reads disagree ({}) and verify passes the database",
            odd.join("; ")
        );
        // Checks of the table name it; the deep check's cross-layout findings name the key
        // and the layouts' partitions instead.
        assert!(
            report.errors().any(|p| {
                p.file.as_ref().is_some_and(|f| f.ends_with(&file))
                    || ["consistency", "forwarding", "partition"].contains(&p.check)
            }),
            "{what}: verify does not name {file}: {:?}",
            report.errors().collect::<Vec<_>>()
        );
        return Outcome::Flagged;
    }
    Outcome::Agreed
}

/// Runs `case` for every seed (see [`seeds`]) and tallies how the cases ended. With cases
/// enough, each outcome in `each` must end at least one in twenty: a harness whose damage
/// never reaches the reads, or whose reads never disagree, fails here instead of passing
/// for nothing.
fn run_cases<O: Ord + Copy + std::fmt::Debug>(
    what: &str,
    default_cases: u64,
    each: &[O],
    case: impl Fn(u64) -> O + Clone + std::panic::UnwindSafe,
) {
    let seeds = seeds(default_cases);
    let mut outcomes = BTreeMap::new();
    for &seed in &seeds {
        let (case, (tx, rx)) = (case.clone(), mpsc::channel());
        with_seed("fuzz", seed, move |seed| tx.send(case(seed)).unwrap());
        *outcomes.entry(rx.recv().unwrap()).or_insert(0) += 1;
    }
    eprintln!("{what}: {outcomes:?}");
    if seeds.len() >= 100 {
        for o in each {
            assert!(
                outcomes.get(o).is_some_and(|&n| n * 20 >= seeds.len()),
                "{what}: under 5% of {} cases {o:?}: {outcomes:?}",
                seeds.len()
            );
        }
    }
}

fn fuzz_tables(default_cases: u64, fixture: Fixture) {
    for codec in CODECS {
        let root = tempfile::tempdir().unwrap();
        let pristine: PathBuf = root.path().join("pristine");
        let model = build(&pristine, codec, fixture);
        run_cases(
            &format!("tables, {fixture:?}, {codec:?}"),
            default_cases,
            // Damage to a zstd frame rarely gets past its checksum to leave reads agreeing.
            if codec.zstd {
                &[Outcome::Flagged]
            } else {
                &[Outcome::Agreed, Outcome::Flagged]
            },
            |seed| run_case(&pristine, &model, (codec, fixture), seed),
        );
    }
}

/// A closed database with a table, two layouts (the second the target) and batches of
/// puts and deletes still in its WAL.
fn build_logged(dir: &Path) {
    let db = Db::open(dir, log_options()).unwrap();
    for i in 0..40 {
        db.put(key(i), value(i, 0)).unwrap();
    }
    db.flush().unwrap();
    let v = db.register_partition_fn(sluice_tests::hash(4, 7)).unwrap();
    db.set_target(v).unwrap();
    for n in 0..8 {
        let mut b = WriteBatch::new();
        for j in 0..=(n % 4) {
            let i = n * 7 + j * 3;
            if (n + j) % 3 == 0 {
                b.delete(key(i));
            } else {
                b.put(key(i), value(i, n));
            }
        }
        db.write_opt(b, &WriteOptions { sync: n % 2 == 0 }).unwrap();
    }
    db.close().unwrap();
}

fn log_options() -> Options {
    no_background_work(Options {
        memtable_bytes: 4 << 20,
        ..Options::tiny()
    })
}

/// Every file of `dir` and its bytes.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// How a log case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum LogOutcome {
    Refused,
    Opened,
}

/// Damages one record of the newest WAL or of the manifest, or the order of their records.
fn damage_log(dir: &Path, r: &mut StdRng) -> (PathBuf, String) {
    let (path, kind) = if r.random_range(0..10) < 6 {
        (sluice_tests::newest_wal(dir).expect("a WAL"), LogKind::Wal)
    } else {
        let cur = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
        (dir.join(cur.trim_end()), LogKind::Manifest)
    };
    let mut done = Vec::new();
    rewrite_log(&path, kind, |recs| {
        let n = recs.len();
        if n >= 2 && r.random_range(0..4) == 0 {
            // Whole records out of place: each intact, the sequence not.
            let (i, j) = (r.random_range(0..n), r.random_range(0..n));
            match r.random_range(0..3) {
                0 => {
                    recs.swap(i, j);
                    done.push(format!("records {i} and {j} swapped"));
                }
                1 => {
                    let dup = recs[i].clone();
                    recs.insert(j, dup);
                    done.push(format!("record {i} repeated at {j}"));
                }
                _ => {
                    recs.remove(i);
                    done.push(format!("record {i} of {n} dropped"));
                }
            }
            return;
        }
        let i = r.random_range(0..recs.len());
        done.push(format!("record {i} of {}", recs.len()));
        let rec = &mut recs[i];
        for _ in 0..r.random_range(1..=3) {
            let n = rec.len();
            match r.random_range(0..6) {
                0 | 1 if n > 0 => {
                    let at = r.random_range(0..n);
                    let bit = r.random_range(0..8);
                    rec[at] ^= 1 << bit;
                    done.push(format!("flip bit {bit} of byte {at}"));
                }
                2 if n > 0 => {
                    let at = r.random_range(0..n);
                    let v = [0x00, 0x01, 0x7f, 0x80, 0xff, r.random::<u8>()][r.random_range(0..6)];
                    rec[at] = v;
                    done.push(format!("byte {at} = {v:#x}"));
                }
                3 if n > 1 => {
                    let len = r.random_range(1..=8.min(n));
                    let (from, to) = (r.random_range(0..=n - len), r.random_range(0..=n - len));
                    rec.copy_within(from..from + len, to);
                    done.push(format!("copy {len} bytes from {from} to {to}"));
                }
                4 => {
                    let at = r.random_range(0..=n);
                    rec.truncate(at);
                    done.push(format!("cut to {at} bytes"));
                }
                _ => {
                    let more = r.random_range(1..=16);
                    rec.extend((0..more).map(|_| r.random::<u8>()));
                    done.push(format!("{more} random bytes added"));
                }
            }
        }
    });
    let what = format!(
        "{}: {}",
        path.file_name().unwrap().to_string_lossy(),
        done.join("; ")
    );
    (path, what)
}

fn run_log_case(pristine: &Path, seed: u64) -> LogOutcome {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("db");
    copy_dir(pristine, &dir);
    let mut r = StdRng::seed_from_u64(seed);
    let (path, done) = damage_log(&dir, &mut r);
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let what = format!("seed {seed}: {done}");
    let before = files_of(&dir);
    let (d, w) = (dir.clone(), what.clone());
    // Opened twice: the second open must find what the first one did.
    let opened = within(
        60,
        &what,
        move || -> Result<Vec<Result<Kv, Error>>, Error> {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let db = Db::open(&d, log_options())?;
                let fwd = scan(&db);
                let back = scan_back(&db);
                if let (Ok(f), Ok(b)) = (&fwd, &back) {
                    assert_eq!(f, b, "{w}: the scans disagree");
                }
                seen.push(fwd);
                db.close()?;
            }
            Ok(seen)
        },
    );
    match opened {
        Err(e) => {
            assert_refusal_names(&e, &file, &what);
            assert!(
                files_of(&dir) == before,
                "{what}: the refused open changed the directory"
            );
            LogOutcome::Refused
        }
        Ok(seen) => {
            for s in &seen {
                if let Err(e) = s {
                    panic!("{what}: a scan after an open that went through failed: {e}");
                }
            }
            assert_eq!(
                seen[0].as_ref().ok(),
                seen[1].as_ref().ok(),
                "{what}: the second open found other data"
            );
            LogOutcome::Opened
        }
    }
}

fn fuzz_logs(default_cases: u64) {
    let root = tempfile::tempdir().unwrap();
    let pristine: PathBuf = root.path().join("pristine");
    build_logged(&pristine);
    run_cases(
        "logs",
        default_cases,
        &[LogOutcome::Refused, LogOutcome::Opened],
        |seed| run_log_case(&pristine, seed),
    );
}

/// A partition spec's text as a caller might type it, at random: pieces of the grammar
/// (`range:b1,b2`, `hash:N:seed:prefix`, `split:P:INTO:seed/BASE`), numbers at and past
/// every limit, escapes good and bad; and the text of valid specs with one character
/// changed.
fn spec_text(r: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "range",
        "hash",
        "split",
        ":",
        ":",
        ",",
        "/",
        "0",
        "1",
        "2",
        "4",
        "16",
        "4096",
        "4097",
        "65536",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "+3",
        " ",
        "\\x00",
        "\\xff",
        "\\",
        "\\x4",
        "a",
        "k1",
        "zz",
        "é",
    ];
    if r.random_bool(0.5) {
        let spec = sluice_tests::random_partition_spec(r, &[]);
        let mut t: Vec<char> = spec.to_string().chars().collect();
        let at = r.random_range(0..=t.len());
        match r.random_range(0..3) {
            0 if at < t.len() => {
                t.remove(at);
            }
            1 if at < t.len() => {
                t[at] = PIECES[r.random_range(0..PIECES.len())]
                    .chars()
                    .next()
                    .unwrap_or(':')
            }
            _ => t.insert(at, [':', ',', '/', '9', '\\'][r.random_range(0..5)]),
        }
        t.into_iter().collect()
    } else {
        (0..r.random_range(1..12))
            .map(|_| PIECES[r.random_range(0..PIECES.len())])
            .collect()
    }
}

/// Partition specs as text (what `sluice migrate plan`, `sluice-stress --partition` and the
/// controller's callers pass): every text either is refused with
/// `Error::InvalidPartitionSpec` or parses to a spec that is valid, builds a partition
/// function, and reads back from its own text and its encoding unchanged.
#[test]
fn partition_spec_text_at_random() {
    let mut outcomes = BTreeMap::new();
    for seed in seeds(20_000) {
        let mut r = StdRng::seed_from_u64(seed);
        let text = spec_text(&mut r);
        let what = format!("seed {seed}: {text:?}");
        let parsed = std::panic::catch_unwind(|| sluice::PartitionSpec::parse(&text))
            .unwrap_or_else(|_| panic!("{what}: the parse panicked"));
        match parsed {
            Err(Error::InvalidPartitionSpec(_)) => *outcomes.entry("refused").or_insert(0) += 1,
            Err(e) => panic!("{what}: refused with {e:?}"),
            Ok(spec) => {
                *outcomes.entry("parsed").or_insert(0) += 1;
                spec.validate()
                    .unwrap_or_else(|e| panic!("{what}: parsed to an invalid spec: {e}"));
                sluice::PartitionFn::new(spec.clone())
                    .unwrap_or_else(|e| panic!("{what}: no function: {e}"));
                let again = sluice::PartitionSpec::parse(&spec.to_string());
                assert_eq!(again.as_ref().ok(), Some(&spec), "{what}: its text {spec}");
                let decoded = sluice::PartitionSpec::from_bytes(&spec.to_bytes());
                assert_eq!(decoded.as_ref().ok(), Some(&spec), "{what}: its encoding");
            }
        }
    }
    eprintln!("partition spec texts: {outcomes:?}");
}

#[test]
fn checksummed_damage_in_tables() {
    fuzz_tables(150, Fixture::Settled);
}

#[test]
fn checksummed_damage_in_tables_while_migrating() {
    fuzz_tables(150, Fixture::Migrating);
}

#[test]
fn checksummed_damage_in_logs() {
    fuzz_logs(150);
}

#[test]
#[ignore = "soak (short version in CI: checksummed_damage_in_tables, checksummed_damage_in_tables_while_migrating, checksummed_damage_in_logs, 150 cases each per configuration): SLUICE_SEEDS=5000 cargo test --release -p sluice-tests --test fuzz -- --ignored --nocapture"]
fn fuzz_soak() {
    fuzz_tables(5000, Fixture::Settled);
    fuzz_tables(5000, Fixture::Migrating);
    fuzz_logs(5000);
}
