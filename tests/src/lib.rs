//! Shared helpers for the system tests.

use std::collections::BTreeMap;

use bytes::Bytes;
use sluice::{Db, Result};

/// A hash layout of `n` partitions over whole keys.
pub fn hash(n: u32, seed: u64) -> sluice::PartitionSpec {
    sluice::PartitionSpec::hashed(n, seed)
}

/// Four range partitions, split at `k1`, `k2` and `k3`.
pub fn range4() -> sluice::PartitionSpec {
    sluice::PartitionSpec::Range {
        boundaries: vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()],
    }
}

/// `base` with no work in the background: no compaction before a thousand L0 files, no
/// write slowed or stopped by them, no migration or lazy move unless asked for, no idle
/// memtable flush (and so no point read counted towards seek compaction). Tests that
/// damage files use it so that only their own reads meet the damage. (Scans still count
/// towards seek compaction: about a hundred over two L0 files start one.)
pub fn no_background_work(base: sluice::Options) -> sluice::Options {
    sluice::Options {
        idle_memtable_flush_after: None,
        level0_compaction_trigger: 1000,
        level0_slowdown_trigger: 1000,
        level0_stop_trigger: 1000,
        migration_bytes_per_sec: 0,
        move_bytes_per_sec: 0,
        ..base
    }
}

/// Rewrites a log's records (header kept) through `f`, each with a valid CRC: damage that
/// the checksums cannot see, so only the decoders' range checks stand between it and a
/// wrong answer.
pub fn rewrite_log(
    path: &std::path::Path,
    kind: sluice::log::LogKind,
    f: impl FnOnce(&mut Vec<Vec<u8>>),
) {
    let data = std::fs::read(path).unwrap();
    let log = sluice::log::read_log(data.clone().into(), path, kind).unwrap();
    // The header is everything before the first record, kept as it is.
    let header_end = log.records.first().expect("a log with records").0 as usize;
    let mut out = data[..header_end].to_vec();
    let format = log.format();
    let mut recs: Vec<Vec<u8>> = log.records.into_iter().map(|(_, p)| p.to_vec()).collect();
    f(&mut recs);
    for r in &recs {
        format.encode_record(r, &mut out);
    }
    std::fs::write(path, out).unwrap();
}

/// Copies the files of directory `from` (not its subdirectories) into `to`, made if need
/// be.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The highest-numbered WAL in `dir`, if any.
pub fn newest_wal(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
}

/// Descriptors this process holds open on `.sst` files in `dir`: `/proc/self/fd` entries
/// that point there.
pub fn table_fds(dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(&dir) && p.extension().is_some_and(|x| x == "sst"))
        .count()
}

/// The table files (`*.sst`) in `dir`.
pub fn sst_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .collect()
}

/// `sluice verify` of `dir` with default options (no deep check), as the CLI runs it.
pub fn verify(dir: &std::path::Path) -> sluice::inspect::VerifyReport {
    sluice::inspect::verify_dir(
        dir,
        &sluice::inspect::VerifyOptions::default(),
        &sluice::inspect::NoProgress,
    )
    .expect("verify runs")
}

/// Reads the whole database forward into a map.
pub fn dump(db: &Db) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    db.range(..)
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect()
}

/// Reads the whole database backwards, returned in forward order.
pub fn dump_rev(db: &Db) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut v: Vec<_> = db
        .range(..)
        .rev()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_>>()?;
    v.reverse();
    Ok(v)
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Reads the seeds a randomized test should run: `SLUICE_SEED=n` reproduces one failure,
/// `SLUICE_SEEDS=n` runs that many (default `default`), starting at `SLUICE_SEED_FROM`
/// (default 1), so that a soak can explore seeds no run has tried.
pub fn seeds(default: u64) -> Vec<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|s| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {s:?}"))
        })
    };
    if let Some(seed) = var("SLUICE_SEED") {
        return vec![seed];
    }
    let n = var("SLUICE_SEEDS").unwrap_or(default);
    let from = var("SLUICE_SEED_FROM").unwrap_or(1);
    (from..from.saturating_add(n)).collect()
}

/// Runs `f` for one seed, printing the seed and the command that reproduces it on failure.
pub fn with_seed(test: &str, seed: u64, f: impl FnOnce(u64) + std::panic::UnwindSafe) {
    if let Err(e) = std::panic::catch_unwind(move || f(seed)) {
        eprintln!(
            "\n*** {test} failed with seed {seed}; reproduce with:\n    SLUICE_SEED={seed} cargo test -p sluice-tests --test {test} -- --nocapture\n"
        );
        std::panic::resume_unwind(e);
    }
}

/// A random valid partition function for randomized tests: `Range` (boundaries drawn from
/// `keys` or random bytes), `Hash` (sometimes with a biased `hashed_prefix`), or `Split` of
/// either (occasionally nested).
pub fn random_partition_spec(r: &mut impl rand::RngExt, keys: &[Vec<u8>]) -> sluice::PartitionSpec {
    random_spec_depth(r, keys, 0)
}

fn random_spec_depth(
    r: &mut impl rand::RngExt,
    keys: &[Vec<u8>],
    depth: usize,
) -> sluice::PartitionSpec {
    use sluice::PartitionSpec;
    let kind = if depth >= 2 {
        r.random_range(0..2)
    } else {
        r.random_range(0..3)
    };
    match kind {
        0 => {
            let n = r.random_range(0..8usize);
            let mut set = std::collections::BTreeSet::new();
            for _ in 0..n {
                let b: Vec<u8> = if !keys.is_empty() && r.random_bool(0.7) {
                    keys[r.random_range(0..keys.len())].clone()
                } else {
                    let len = r.random_range(1..4usize);
                    (0..len).map(|_| r.random::<u8>()).collect()
                };
                if !b.is_empty() {
                    set.insert(b);
                }
            }
            PartitionSpec::Range {
                boundaries: set.into_iter().collect(),
            }
        }
        1 => PartitionSpec::Hash {
            partitions: r.random_range(1..=16),
            seed: r.random::<u64>(),
            // A short hashed prefix is the "biased hash" of the design doc.
            hashed_prefix: if r.random_bool(0.4) {
                Some(r.random_range(1..=4))
            } else {
                None
            },
        },
        _ => {
            let base = random_spec_depth(r, keys, depth + 1);
            let n = base.partitions();
            PartitionSpec::Split {
                partition: r.random_range(0..n),
                into: r.random_range(2..=5),
                seed: r.random::<u64>(),
                base: Box::new(base),
            }
        }
    }
}

/// The crash-test workload, shared by `tests/tests/crash.rs` and the `crash_child` binary.
///
/// Operation `c` (c = 1, 2, …) is a pure function of `(seed, c)`: which keys it writes or
/// deletes, their values, whether it is a single put or a multi-key batch, and whether it is
/// synced. Every value names its key and the counter of the operation that wrote it, and
/// every operation puts at least one key. So a checker that finds `M` = the largest counter
/// in the database can rebuild exactly what the database must hold if operations `1..=M`
/// survived and nothing else did — a hole (a lost operation below `M`) or a partially applied
/// batch shows up as a key whose value differs from that model.
pub mod crash_workload {
    use std::collections::BTreeMap;

    use rand::{RngExt, SeedableRng};
    use sluice::{Db, Error, Options, PartitionSpec, WriteBatch, WriteOptions};

    /// Keys are `k0000` … `k0299`: few enough that operations overwrite each other often.
    pub const KEYS: u32 = 300;

    /// Layout v1: five range partitions.
    pub fn range_spec() -> PartitionSpec {
        PartitionSpec::Range {
            boundaries: ["k0060", "k0120", "k0180", "k0240"]
                .iter()
                .map(|b| b.as_bytes().to_vec())
                .collect(),
        }
    }

    /// The layout migrated to: six hash partitions.
    pub fn hash_spec() -> PartitionSpec {
        PartitionSpec::Hash {
            partitions: 6,
            seed: 0x51_1ce,
            hashed_prefix: None,
        }
    }

    /// Small memtables and files, so flushes, compactions and migrations run constantly.
    pub fn options() -> Options {
        Options {
            partition: range_spec(),
            // Every read of a value still in a draining layout moves it, the first too.
            move_bytes_per_sec: 1 << 30,
            move_on_first_read: true,
            ..Options::tiny()
        }
    }

    /// Which partition function an operation is written under.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Target {
        Range,
        Hash,
    }

    impl Target {
        pub fn spec(self) -> PartitionSpec {
            match self {
                Target::Range => range_spec(),
                Target::Hash => hash_spec(),
            }
        }
        pub fn name(self) -> &'static str {
            match self {
                Target::Range => "range",
                Target::Hash => "hash",
            }
        }
        pub fn from_name(s: &str) -> Option<Target> {
            match s {
                "range" => Some(Target::Range),
                "hash" => Some(Target::Hash),
                _ => None,
            }
        }
        pub fn of_spec(spec: &PartitionSpec) -> Option<Target> {
            if *spec == range_spec() {
                Some(Target::Range)
            } else if *spec == hash_spec() {
                Some(Target::Hash)
            } else {
                None
            }
        }
    }

    /// The target layout while operation `c` is written: range until 200, then hash, with a
    /// rollback to range for ops 1200..1500, 2700..3000, … (every 1500 ops).
    pub fn target_for(c: u64) -> Target {
        if c < 200 || (c - 200) % 1500 >= 1000 {
            Target::Range
        } else {
            Target::Hash
        }
    }

    /// One write: a single put (`puts.len() == 1`, no deletes) or a multi-key batch.
    #[derive(Clone, Debug)]
    pub struct Op {
        pub counter: u64,
        pub sync: bool,
        pub puts: Vec<(Vec<u8>, Vec<u8>)>,
        pub deletes: Vec<Vec<u8>>,
    }

    impl Op {
        pub fn is_single(&self) -> bool {
            self.puts.len() == 1 && self.deletes.is_empty()
        }

        pub fn batch(&self) -> WriteBatch {
            let mut b = WriteBatch::new();
            for (k, v) in &self.puts {
                b.put(k, v);
            }
            for k in &self.deletes {
                b.delete(k);
            }
            b
        }

        /// Writes the operation through the public API (single puts through `put` when
        /// unsynced, to cover that path too; every fifth multi-key one as a transaction
        /// that first reads 64 keys, which commits in two steps: see the engine's
        /// `recent.rs`. A single writer never conflicts with itself).
        pub fn write(&self, db: &Db) -> sluice::Result<()> {
            if self.is_single() && !self.sync {
                let (k, v) = &self.puts[0];
                return db.put(k, v);
            }
            if !self.is_single() && self.counter.is_multiple_of(5) {
                let mut t = db.transaction();
                for i in 0..64u64 {
                    t.get(key(
                        (self.counter.wrapping_mul(31).wrapping_add(i * 7) % u64::from(KEYS))
                            as u32,
                    ))?;
                }
                for (k, v) in &self.puts {
                    t.put(k, v);
                }
                for k in &self.deletes {
                    t.delete(k);
                }
                return t.commit_opt(&WriteOptions { sync: self.sync });
            }
            db.write_opt(self.batch(), &WriteOptions { sync: self.sync })
        }

        /// Applies the operation to an in-memory model.
        pub fn apply(&self, model: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
            for (k, v) in &self.puts {
                model.insert(k.clone(), v.clone());
            }
            for k in &self.deletes {
                model.remove(k);
            }
        }
    }

    pub fn key(i: u32) -> Vec<u8> {
        format!("k{i:04}").into_bytes()
    }

    /// `<key>|c=<counter>|<filler>`: names the writer, so any stray or stale value is caught.
    pub fn value(key: &[u8], counter: u64, filler: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(key.len() + 16 + filler);
        v.extend_from_slice(key);
        v.extend_from_slice(format!("|c={counter:010}|").as_bytes());
        v.extend((0..filler).map(|i| b'a' + ((counter as usize + i) % 26) as u8));
        v
    }

    /// The counter of the operation that wrote `value`.
    pub fn counter_of(value: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(value).ok()?;
        let at = s.find("|c=")? + 3;
        s.get(at..at + 10)?.parse().ok()
    }

    /// Operation `c` of the workload with this seed.
    pub fn op(seed: u64, c: u64) -> Op {
        let mut r = rand::rngs::StdRng::seed_from_u64(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ c.wrapping_mul(0xbf58_476d_1ce4_e5b9),
        );
        let sync = r.random_bool(0.15);
        let n = if r.random_bool(0.5) {
            1
        } else {
            r.random_range(2..=8usize)
        };
        let mut picked: Vec<u32> = Vec::with_capacity(n);
        while picked.len() < n {
            let k = r.random_range(0..KEYS);
            if !picked.contains(&k) {
                picked.push(k);
            }
        }
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for (i, k) in picked.into_iter().enumerate() {
            let k = key(k);
            if i == 0 || r.random_bool(0.8) {
                let filler = r.random_range(16..240usize);
                let v = value(&k, c, filler);
                puts.push((k, v));
            } else {
                deletes.push(k);
            }
        }
        Op {
            counter: c,
            sync,
            puts,
            deletes,
        }
    }

    /// Makes `t` the target layout, registering its function first if no live version has
    /// it. Returns whether the target changed.
    ///
    /// A draining version whose last file migrates away is retired by background work; if
    /// that happens between `layout()` and `set_target`, the call fails with
    /// `VersionRetired` and is retried (counted in `retries`).
    pub fn ensure_target(db: &Db, t: Target, retries: &mut u32) -> sluice::Result<bool> {
        let spec = t.spec();
        loop {
            let info = db.layout();
            let id = match info.versions.iter().find(|v| v.spec == spec) {
                Some(v) if v.is_target => return Ok(false),
                Some(v) => v.id,
                None => db.register_partition_fn(spec.clone())?,
            };
            match db.set_target(id) {
                Ok(()) => return Ok(true),
                Err(Error::VersionRetired(_)) if *retries < 1000 => *retries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// One line of the acknowledgement log the child writes after each call returns.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Ack {
        /// The child opened the database and starts at this counter.
        Ready(u64),
        /// `set_target` to this layout returned, before operation `c` was written.
        Target(Target, u64),
        /// Operation `c` was acknowledged; `sync` says whether it was a synced write.
        Write { c: u64, sync: bool },
        /// `sync_wal` returned after operation `c`: everything up to `c` is durable.
        SyncWal(u64),
    }

    impl Ack {
        pub fn line(&self) -> String {
            match self {
                Ack::Ready(c) => format!("R {c}\n"),
                Ack::Target(t, c) => format!("T {} {c}\n", t.name()),
                Ack::Write { c, sync } => format!("W {c} {}\n", if *sync { "s" } else { "u" }),
                Ack::SyncWal(c) => format!("S {c}\n"),
            }
        }

        /// Parses an acknowledgement log; a last line without its newline (the child was
        /// killed while writing it) is ignored.
        pub fn parse_log(text: &str) -> Vec<Ack> {
            let complete = match text.rfind('\n') {
                Some(i) => &text[..=i],
                None => "",
            };
            complete
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    let num = |i: usize| -> u64 {
                        f.get(i)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or_else(|| panic!("bad ack line {l:?}"))
                    };
                    match f[0] {
                        "R" => Ack::Ready(num(1)),
                        "T" => Ack::Target(
                            Target::from_name(f[1]).unwrap_or_else(|| panic!("bad ack line {l:?}")),
                            num(2),
                        ),
                        "W" => Ack::Write {
                            c: num(1),
                            sync: f.get(2) == Some(&"s"),
                        },
                        "S" => Ack::SyncWal(num(1)),
                        _ => panic!("bad ack line {l:?}"),
                    }
                })
                .collect()
        }
    }
}

static ENGINE_THREAD_PANICS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Counts panics on the engine's own threads (named `sluice-…`), which the engine's
/// shutdown joins and discards, so a test can assert that none happened. Idempotent; keeps
/// the default hook's message.
pub fn watch_engine_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("sluice"))
            {
                ENGINE_THREAD_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

/// Panics seen on engine threads since [`watch_engine_panics`] was first called.
pub fn engine_thread_panics() -> usize {
    ENGINE_THREAD_PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Churns the layout of `db` until `stop` is set, for transaction tests: each round reads
/// every key of `keys` at the latest state (lazy moves), then one of: a new hash layout
/// as the target (the previous target pinned for a rollback), a rollback (or forward
/// again) to the previous target, a bounded or full `migrate_now`, a flush or a full
/// compaction; then a pause of up to 20 ms, to pace it (it synchronises nothing). The
/// steps are drawn from `seed`; other threads may retarget too. Returns how many rollbacks
/// it made.
pub fn churn_layout(
    db: &Db,
    stop: &std::sync::atomic::AtomicBool,
    seed: u64,
    keys: &[String],
) -> u64 {
    use std::sync::atomic::Ordering;
    let mut r = 99u64 + seed;
    let mut next = move || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    };
    let mut rollbacks = 0;
    let mut prev = db.layout().target;
    while !stop.load(Ordering::Relaxed) {
        for k in keys {
            db.get(k).unwrap();
        }
        match next() % 7 {
            0 | 1 => {
                if db.layout().versions.len() < 8 {
                    let v = db
                        .register_partition_fn(sluice::PartitionSpec::hashed(
                            (next() % 4 + 1) as u32,
                            next(),
                        ))
                        .unwrap();
                    let cur = db.layout().target;
                    // Kept live for a rollback; the one before may go. (Should another
                    // thread have retargeted meanwhile, `cur` may be retired already.)
                    let _ = db.pin_version(prev, false);
                    match db.pin_version(cur, true) {
                        Ok(()) | Err(sluice::Error::VersionRetired(_)) => {}
                        Err(e) => panic!("pinning {cur:?}: {e}"),
                    }
                    prev = cur;
                    db.set_target(v).unwrap();
                }
            }
            2 => {
                // Rollback (or forward again) to the previous target, if still live.
                let cur = db.layout().target;
                if db.set_target(prev).is_ok() {
                    rollbacks += 1;
                    let _ = db.pin_version(prev, false);
                    let _ = db.pin_version(cur, true);
                    prev = cur;
                }
            }
            3 => {
                db.migrate_now(Some(2048 + next() % 8192)).unwrap();
            }
            4 => db.flush().unwrap(),
            5 => db.compact().unwrap(),
            _ => {
                db.migrate_now(None).unwrap();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(next() % 20));
    }
    rollbacks
}

/// The methods of `sluice::fs::Fs` that a test's file system leaves to the real one
/// (`sluice::fs::StdFs`), written into its `impl Fs` beside the ones it overrides:
/// `sluice_tests::std_fs_methods!(rename, list, exists);`.
#[macro_export]
macro_rules! std_fs_methods {
    ($($m:ident),* $(,)?) => {
        $($crate::std_fs_methods!(@ $m);)*
    };
    (@ create) => {
        fn create(&self, path: &std::path::Path) -> std::io::Result<Box<dyn sluice::fs::WritableFile>> {
            <sluice::fs::StdFs as sluice::fs::Fs>::create(&sluice::fs::StdFs, path)
        }
    };
    (@ read_file) => {
        fn read_file(&self, path: &std::path::Path) -> std::io::Result<bytes::Bytes> {
            <sluice::fs::StdFs as sluice::fs::Fs>::read_file(&sluice::fs::StdFs, path)
        }
    };
    (@ rename) => {
        fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            <sluice::fs::StdFs as sluice::fs::Fs>::rename(&sluice::fs::StdFs, from, to)
        }
    };
    (@ remove) => {
        fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
            <sluice::fs::StdFs as sluice::fs::Fs>::remove(&sluice::fs::StdFs, path)
        }
    };
    (@ list) => {
        fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
            <sluice::fs::StdFs as sluice::fs::Fs>::list(&sluice::fs::StdFs, dir)
        }
    };
    (@ sync_dir) => {
        fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
            <sluice::fs::StdFs as sluice::fs::Fs>::sync_dir(&sluice::fs::StdFs, dir)
        }
    };
    (@ create_dir_all) => {
        fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
            <sluice::fs::StdFs as sluice::fs::Fs>::create_dir_all(&sluice::fs::StdFs, dir)
        }
    };
    (@ exists) => {
        fn exists(&self, path: &std::path::Path) -> std::io::Result<bool> {
            <sluice::fs::StdFs as sluice::fs::Fs>::exists(&sluice::fs::StdFs, path)
        }
    };
    (@ file_size) => {
        fn file_size(&self, path: &std::path::Path) -> std::io::Result<u64> {
            <sluice::fs::StdFs as sluice::fs::Fs>::file_size(&sluice::fs::StdFs, path)
        }
    };
    (@ lock) => {
        fn lock(&self, path: &std::path::Path) -> std::io::Result<Option<Box<dyn sluice::fs::DirLock>>> {
            <sluice::fs::StdFs as sluice::fs::Fs>::lock(&sluice::fs::StdFs, path)
        }
    };
    (@ hard_link) => {
        fn hard_link(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            <sluice::fs::StdFs as sluice::fs::Fs>::hard_link(&sluice::fs::StdFs, from, to)
        }
    };
    (@ available_space) => {
        fn available_space(&self, dir: &std::path::Path) -> std::io::Result<u64> {
            <sluice::fs::StdFs as sluice::fs::Fs>::available_space(&sluice::fs::StdFs, dir)
        }
    };
}
