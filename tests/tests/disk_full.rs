//! A disk running out of space: migration keeps its headroom (background jobs, several
//! at once, outputs larger than inputs, `migrate_now`, lazy moves), foreground writes keep
//! the room the headroom leaves them, stopped writers get an answer while their
//! compaction keeps failing, and a sweep of "the disk fills up after k more operations"
//! loses no acknowledged write.
//!
//! `QuotaFs` models a disk of fixed size over the real file system: appends past the
//! capacity fail with ENOSPC, `available_space` reports what is left, and the lowest free
//! space seen is recorded.
//!
//! The sweep runs 60 operations per fault kind; `SWEEP_K=300` (and `SWEEP_OP=append|short|
//! sync|create|rename` for one kind) runs longer:
//! `SWEEP_K=300 cargo test --release -p sluice-tests --test disk_full disk_full_sweep`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::fs::{FaultFs, Fs, StdFs, WritableFile};
use sluice::{Db, Options, PartitionSpec, WriteBatch, WriteOptions};
use sluice_tests::{hash, range4};

// ---------------------------------------------------------------------------------------
// A disk of fixed capacity: appends past it fail with ENOSPC, `available_space` reports
// what is left, and the lowest free space ever seen is recorded.

#[derive(Default)]
struct Quota {
    sizes: HashMap<PathBuf, u64>,
    used: u64,
    capacity: Option<u64>,
    min_free: Option<u64>,
    enospc: u64,
    /// Per thread: `.sst` files created and not yet fsynced; and the most threads seen
    /// writing tables at once.
    writing: HashMap<String, u64>,
    max_writers: usize,
    /// While set: a background thread's first `.sst` create waits (up to 2 s) until another
    /// background thread creates one too (a slow disk; proves two jobs run at once).
    rendezvous: Option<std::collections::HashSet<String>>,
    /// A job (a thread's `.sst` appends since its last manifest append or ENOSPC) whose
    /// output passes this many bytes gets ENOSPC: a disk with this much room, where a
    /// finished job's inputs are freed.
    job_limit: Option<u64>,
    job_bytes: HashMap<String, u64>,
    sst_sync_delay: Option<Duration>,
    job_enospc: u64,
}

impl Quota {
    fn free(&self) -> u64 {
        self.capacity
            .map_or(u64::MAX / 4, |c| c.saturating_sub(self.used))
    }
    fn note_free(&mut self) {
        if self.capacity.is_some() {
            let f = self.free();
            self.min_free = Some(self.min_free.map_or(f, |m| m.min(f)));
        }
    }
}

#[derive(Clone, Default)]
struct QuotaFs(Arc<Mutex<Quota>>, Arc<std::sync::Condvar>);

impl std::fmt::Debug for QuotaFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaFs")
    }
}

impl QuotaFs {
    fn used(&self) -> u64 {
        self.0.lock().unwrap().used
    }
    /// Waits until no file has been written or removed for 300 ms (the deleter is done).
    fn settle(&self) -> u64 {
        let mut last = self.used();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.used();
            if now == last {
                return now;
            }
            last = now;
        }
    }
    fn set_capacity(&self, c: Option<u64>) {
        let mut q = self.0.lock().unwrap();
        q.capacity = c;
        q.min_free = None;
        q.max_writers = 0;
        q.note_free();
    }
    fn min_free(&self) -> Option<u64> {
        self.0.lock().unwrap().min_free
    }
    fn free(&self) -> u64 {
        self.0.lock().unwrap().free()
    }
    fn arm_rendezvous(&self) {
        self.0.lock().unwrap().rendezvous = Some(Default::default());
    }
    fn max_writers(&self) -> usize {
        self.0.lock().unwrap().max_writers
    }
    fn enospc(&self) -> u64 {
        self.0.lock().unwrap().enospc
    }
}

struct QuotaFile {
    fs: QuotaFs,
    path: PathBuf,
    inner: Box<dyn WritableFile>,
}

impl WritableFile for QuotaFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        {
            let mut q = self.fs.0.lock().unwrap();
            let t = std::thread::current().name().unwrap_or("").to_string();
            let name = self
                .path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if name.contains("MANIFEST") {
                q.job_bytes.remove(&t);
            } else if name.ends_with(".sst") {
                if let Some(limit) = q.job_limit {
                    let b = q.job_bytes.entry(t.clone()).or_default();
                    *b += data.len() as u64;
                    if *b > limit {
                        q.job_bytes.remove(&t);
                        q.job_enospc += 1;
                        return Err(io::Error::from_raw_os_error(28));
                    }
                }
            }
            if let Some(c) = q.capacity {
                if q.used + data.len() as u64 > c {
                    q.enospc += 1;
                    return Err(io::Error::from_raw_os_error(28));
                }
            }
            q.used += data.len() as u64;
            *q.sizes.entry(self.path.clone()).or_default() += data.len() as u64;
            q.note_free();
        }
        self.inner.append(data)
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.path.extension().is_some_and(|e| e == "sst") {
            let t = std::thread::current().name().unwrap_or("").to_string();
            let mut q = self.fs.0.lock().unwrap();
            if let Some(c) = q.writing.get_mut(&t) {
                *c = c.saturating_sub(1);
            }
            let d = q.sst_sync_delay;
            drop(q);
            if let Some(d) = d {
                std::thread::sleep(d);
            }
        }
        self.inner.sync()
    }
    fn sync_handle(&self) -> io::Result<Arc<dyn sluice::fs::FileSync>> {
        self.inner.sync_handle()
    }
}

impl Fs for QuotaFs {
    sluice_tests::std_fs_methods!(
        read_file,
        list,
        sync_dir,
        create_dir_all,
        exists,
        file_size,
        lock,
        hard_link
    );
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        if path.extension().is_some_and(|e| e == "sst") && thread.starts_with("sluice-bg") {
            let mut q = self.0.lock().unwrap();
            if let Some(set) = q.rendezvous.as_mut() {
                if set.insert(thread.clone()) {
                    self.1.notify_all();
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while q.rendezvous.as_ref().is_some_and(|s| s.len() < 2)
                        && Instant::now() < deadline
                    {
                        q = self.1.wait_timeout(q, Duration::from_millis(10)).unwrap().0;
                    }
                }
            }
        }
        let inner = StdFs.create(path)?;
        let mut q = self.0.lock().unwrap();
        if path.extension().is_some_and(|e| e == "sst") {
            let t = std::thread::current().name().unwrap_or("").to_string();
            *q.writing.entry(t).or_default() += 1;
            let n = q.writing.values().filter(|&&c| c > 0).count();
            q.max_writers = q.max_writers.max(n);
        }
        if let Some(old) = q.sizes.insert(path.to_path_buf(), 0) {
            q.used -= old;
        }
        Ok(Box::new(QuotaFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inner,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)?;
        let mut q = self.0.lock().unwrap();
        if let Some(old) = q.sizes.remove(to) {
            q.used -= old;
        }
        if let Some(s) = q.sizes.remove(from) {
            q.sizes.insert(to.to_path_buf(), s);
        }
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdFs.remove(path)?;
        let mut q = self.0.lock().unwrap();
        if let Some(old) = q.sizes.remove(path) {
            q.used -= old;
        }
        Ok(())
    }
    fn available_space(&self, _dir: &Path) -> io::Result<u64> {
        Ok(self.0.lock().unwrap().free())
    }
}

/// Options on the quota file system `q`: four range partitions, background migration off
/// (tests drive it), `headroom` bytes kept free from migration, no idle flush.
fn on_quota(q: &QuotaFs, headroom: u64) -> Options {
    Options {
        fs: Arc::new(q.clone()),
        partition: range4(),
        migration_bytes_per_sec: 0,
        migration_disk_headroom_bytes: headroom,
        idle_memtable_flush_after: None,
        ..Options::default()
    }
}

/// Registers `spec` and makes it the target.
fn retarget(db: &Db, spec: PartitionSpec) -> sluice::VersionId {
    let v = db.register_partition_fn(spec).unwrap();
    db.set_target(v).unwrap();
    v
}

/// Waits (at most 30 s) until nothing is left to migrate.
fn wait_migrated(db: &Db) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.migration_progress().is_complete() {
        assert!(Instant::now() < deadline, "{:?}", db.migration_progress());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes of the largest data file of layout version `v`.
fn largest_file(db: &Db, v: u32) -> u64 {
    let s = db.stats();
    s.partitions
        .iter()
        .filter(|p| p.version == v)
        .map(|p| {
            assert!(p.files <= 1, "{p:?}");
            p.bytes
        })
        .max()
        .unwrap()
}

/// Four range partitions, one ~1 MiB table each.
fn four_tables(db: &Db) {
    for i in 0..4000u32 {
        db.put(
            format!("k{}{i:05}", i % 4),
            vec![b'v' + (i % 7) as u8; 1000],
        )
        .unwrap();
    }
    db.compact().unwrap();
}

// ---------------------------------------------------------------------------------------
// D1: the pacer runs two migration jobs at once, each checked against the same free space.

#[test]
fn concurrent_background_migrations_keep_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 4u64 << 20;
    let opts = Options {
        background_threads: 2,
        ..on_quota(&q, headroom)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    four_tables(&db);
    retarget(&db, hash(4, 1));
    let s = largest_file(&db, 1);
    // Room for exactly one job's output above the headroom (and half of another).
    q.set_capacity(Some(q.settle() + headroom + s + s / 2));
    q.arm_rendezvous();
    let compactions_before = db.stats().compactions;
    db.set_migration_rate(1 << 50);
    wait_migrated(&db);
    let min = q.min_free().unwrap();
    assert!(
        min >= headroom,
        "migration left {min} bytes free, below the {headroom}-byte headroom (file {s} B; \
         threads writing tables at once: {}; non-migration compactions: {}; ENOSPC hits: {})",
        q.max_writers(),
        db.stats().compactions - compactions_before,
        q.enospc()
    );
}

// ---------------------------------------------------------------------------------------
// D2: a single job whose output is larger than its input (range -> many hash partitions).

#[test]
fn a_migration_writing_more_than_it_reads_keeps_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 1u64 << 20;
    let opts = Options {
        partition: PartitionSpec::default(),
        background_threads: 1,
        ..on_quota(&q, headroom)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..20000u32 {
        db.put(format!("k{i:06}"), format!("v{i}")).unwrap();
    }
    db.compact().unwrap();
    // One range partition into 64 hash partitions: each output table repeats an index, a
    // filter and a footer, so the job writes about an eighth more than it reads.
    retarget(&db, hash(64, 1));
    let s = largest_file(&db, 1);
    // Room beyond the headroom for the input and a sixteenth more: the job used to run
    // (it asked for no more than its input) and leave less than the headroom free.
    q.set_capacity(Some(q.settle() + headroom + s + s / 16));
    migrate_until_done_or_held_by_headroom(&db);
    let st = db.stats();
    let min = q.min_free().unwrap();
    assert!(
        min >= headroom,
        "migration left {min} bytes free, below the {headroom}-byte headroom (one job, \
         file {s} B: read {} B, wrote {} B)",
        st.migration_bytes_read,
        st.migration_bytes_written,
    );
    // With room, it goes on.
    q.set_capacity(None);
    wait_migrated(&db);
}

// ---------------------------------------------------------------------------------------
// D2c: from a hash layout one job takes the next file of every source partition at once.
// Where the disk has room for one file's output beyond the headroom but not for all of
// them together, the files go one at a time: the pacer held the whole migration at the
// headroom for good (and `migrate_now` refused it with `StorageFull`).

#[test]
fn files_that_fit_the_headroom_one_at_a_time_migrate_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 4u64 << 20;
    let opts = Options {
        partition: hash(4, 1),
        background_threads: 1,
        ..on_quota(&q, headroom)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    four_tables(&db);
    retarget(&db, hash(4, 2));
    let s = largest_file(&db, 1);
    // Room beyond the headroom for twice the largest file: for one file's output (its
    // input and a quarter more, and a table's fixed cost per target partition), not four.
    q.set_capacity(Some(q.settle() + headroom + 2 * s));
    db.set_migration_rate(1 << 50);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.migration_progress().is_complete() {
        let p = db.migration_progress();
        assert!(
            Instant::now() < deadline,
            "migration held for good with {} files of at most {s} B left and {} B free \
             beyond the headroom: {:?}",
            p.files_left(),
            q.free().saturating_sub(headroom),
            p.blocked
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let min = q.min_free().unwrap();
    assert!(
        min >= headroom,
        "migration left {min} bytes free, below the {headroom}-byte headroom"
    );
}

/// Lets background migration run flat out until it finishes or the headroom holds it.
fn migrate_until_done_or_held_by_headroom(db: &Db) {
    db.set_migration_rate(1 << 50);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = db.migration_progress();
        if p.is_complete()
            || p.blocked
                .as_deref()
                .is_some_and(|b| b.starts_with("disk headroom"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{p:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Retargets `db` (on the quota file system `q`, its tables written with other options
/// than it has now) to a hash layout, leaves room beyond the headroom for twice the largest
/// input file and 64 KiB more, migrates until done or held, and checks that migration
/// never wrote into the headroom.
fn retarget_and_check_the_headroom(db: &Db, q: &QuotaFs, headroom: u64) {
    retarget(db, hash(4, 1));
    let s = largest_file(db, 1);
    q.set_capacity(Some(q.settle() + headroom + 2 * s + (64 << 10)));
    migrate_until_done_or_held_by_headroom(db);
    let st = db.stats();
    let min = q.min_free().unwrap();
    assert!(
        min >= headroom,
        "migration left {min} bytes free, below the {headroom}-byte headroom (largest \
         input file {s} B: read {} B, wrote {} B; ENOSPC hits {})",
        st.migration_bytes_read,
        st.migration_bytes_written,
        q.enospc(),
    );
}

// ---------------------------------------------------------------------------------------
// D2b: a job whose input was written compressed and whose output is not (the database
// reopened with another `compression`, which may change between opens): its output is
// many times its input's file size.

#[test]
fn a_migration_out_of_compressed_tables_keeps_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 4u64 << 20;
    let opts = |compression| Options {
        background_threads: 1,
        compression,
        ..on_quota(&q, headroom)
    };
    let db = Db::open(dir.path(), opts(sluice::Compression::Zstd(3))).unwrap();
    four_tables(&db);
    db.close().unwrap();
    let db = Db::open(dir.path(), opts(sluice::Compression::None)).unwrap();
    retarget_and_check_the_headroom(&db, &q, headroom);
}

// ---------------------------------------------------------------------------------------
// D2c: the same with compression kept but blocks made much smaller between opens: values
// alike across entries compress within a large block, hardly within a small one.

#[test]
fn a_migration_into_smaller_compressed_blocks_keeps_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 4u64 << 20;
    let opts = |block_size| Options {
        background_threads: 1,
        compression: sluice::Compression::Zstd(3),
        block_size,
        ..on_quota(&q, headroom)
    };
    let db = Db::open(dir.path(), opts(64 << 10)).unwrap();
    // One value of pseudo-random bytes, written under every key: zstd finds it again within
    // a 64 KiB block, but a 256-byte block holds a quarter of it.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let value: Vec<u8> = (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for i in 0..4000u32 {
        db.put(format!("k{}{i:05}", i % 4), &value).unwrap();
    }
    db.compact().unwrap();
    db.close().unwrap();
    let db = Db::open(dir.path(), opts(256)).unwrap();
    retarget_and_check_the_headroom(&db, &q, headroom);
}

// ---------------------------------------------------------------------------------------
// D3: migrate_now ignores the headroom.

#[test]
fn migrate_now_keeps_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        fs: Arc::new(fs.clone()),
        partition: range4(),
        migration_bytes_per_sec: 0,
        ..Options::tiny()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:04}"), format!("v{i}")).unwrap();
    }
    db.flush().unwrap();
    retarget(&db, hash(4, 1));
    // The disk is full: 0 bytes free, 256 MiB headroom configured.
    fs.set_available_space(Some(0));
    let r = db.migrate_now(None);
    assert!(
        matches!(&r, Err(sluice::Error::Io { source, .. })
            if source.kind() == io::ErrorKind::StorageFull
                && source.to_string().contains("disk headroom")),
        "migrate_now with 0 bytes free (headroom 256 MiB): {r:?}; progress {:?}",
        db.migration_progress()
    );
    assert!(db.migration_progress().bytes_left() > 0);
    // Writes go on.
    db.put("after", "v").unwrap();
}

// ---------------------------------------------------------------------------------------
// D4: the consequence: a foreground synced write meets ENOSPC while migrate_now eats the
// headroom, and the database stays read-only after the space is back.

#[test]
fn foreground_writes_keep_the_room_migrate_now_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 1u64 << 20;
    let opts = on_quota(&q, headroom);
    let db = Db::open(dir.path(), opts).unwrap();
    four_tables(&db);
    retarget(&db, hash(4, 1));
    let s = largest_file(&db, 1);
    // Free: one file's worth plus 32 KiB, less than a job's output and the headroom. The
    // job used to run, and a 64 KiB synced write issued while it wrote met ENOSPC in the
    // WAL, which stopped every write until a reopen.
    q.set_capacity(Some(q.settle() + s + (32 << 10)));
    let free_before = q.free();
    assert!(free_before < s + headroom);
    let m = db.migrate_now(Some(1));
    assert!(
        matches!(&m, Err(sluice::Error::Io { source, .. })
            if source.kind() == io::ErrorKind::StorageFull),
        "migrate_now with {free_before} bytes free and a {headroom}-byte headroom: {m:?}"
    );
    assert!(q.min_free().unwrap() >= free_before, "migrate_now wrote");
    let mut b = WriteBatch::new();
    b.put("fg", vec![b'x'; 64 << 10]);
    db.write_opt(b, &WriteOptions { sync: true }).unwrap();
    db.put("later", "v").unwrap();
}

// ---------------------------------------------------------------------------------------
// D5: lazy read-time moves write copies while the disk is below the headroom.

#[test]
fn lazy_moves_keep_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = Options {
        fs: Arc::new(fs.clone()),
        partition: range4(),
        migration_bytes_per_sec: 0,
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        idle_memtable_flush_after: None,
        ..Options::tiny()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..2000u32 {
        db.put(format!("k{i:04}"), format!("v{i}")).unwrap();
    }
    db.compact().unwrap();
    let v2 = retarget(&db, hash(4, 1));
    fs.set_available_space(Some(0));
    db.set_migration_rate(1 << 30);
    std::thread::sleep(Duration::from_millis(300));
    let blocked = db.migration_progress().blocked;
    for i in 0..2000u32 {
        db.get(format!("k{i:04}")).unwrap();
    }
    db.flush().unwrap();
    let s = db.stats();
    let v2_bytes: u64 = s
        .partitions
        .iter()
        .filter(|p| p.version == v2.0)
        .map(|p| p.bytes)
        .sum();
    assert_eq!(
        (s.lazy_moves, v2_bytes),
        (0, 0),
        "with 0 bytes free (pacer: {blocked:?}) reads moved {} entries, writing {v2_bytes} \
         bytes of copies into v2",
        s.lazy_moves
    );
}

// ---------------------------------------------------------------------------------------
// D5b: lazy moves a little at a time, each batch checked against a free space that does not
// fall until the copies are flushed.

/// Reads `keys` (each read of a draining value queues a lazy move), pausing every `batch`
/// reads so that the WAL ticker applies what they queued a batch at a time, then flushes.
fn read_then_flush(
    db: &Db,
    keys: impl Iterator<Item = String>,
    batch: usize,
) -> sluice::Result<()> {
    for (i, k) in keys.enumerate() {
        db.get(k).unwrap();
        if i % batch == 0 {
            std::thread::sleep(Duration::from_millis(15));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    db.flush()
}

#[test]
fn lazy_moves_queued_in_the_memtable_keep_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 4u64 << 20;
    let opts = Options {
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        ..on_quota(&q, headroom)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    four_tables(&db);
    retarget(&db, hash(4, 1));
    // Room beyond the headroom for 256 KiB: about 250 of the 4000 1 KB values.
    q.set_capacity(Some(q.settle() + headroom + (256 << 10)));
    let flushed = read_then_flush(&db, (0..4000u32).map(|i| format!("k{}{i:05}", i % 4)), 50);
    let s = db.stats();
    let min = q.min_free().unwrap();
    assert!(
        min >= headroom,
        "lazy moves left {min} bytes free, below the {headroom}-byte headroom ({} moves \
         of {} bytes; flush {flushed:?})",
        s.lazy_moves,
        s.lazy_moved_bytes,
    );
}

// ---------------------------------------------------------------------------------------
// D5c: lazy moves out of a layout of many partitions into one of few: the flush of the
// copies writes a pointer table in each source partition a copy came from, each with a
// table's fixed cost.

#[test]
fn lazy_moves_out_of_many_partitions_keep_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let headroom = 4u64 << 20;
    let opts = Options {
        partition: hash(1024, 1),
        move_bytes_per_sec: 1 << 30,
        move_on_first_read: true,
        ..on_quota(&q, headroom)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..4096u32 {
        db.put(format!("k{i:05}"), "v").unwrap();
    }
    db.compact().unwrap();
    retarget(&db, PartitionSpec::Range { boundaries: vec![] });
    // Room beyond the headroom for 64 KiB: what about 700 moves of these small entries
    // are counted at (a copy and a pointer each, and two tables' fixed cost).
    let base = q.settle();
    q.set_capacity(Some(base + headroom + (64 << 10)));
    let flushed = read_then_flush(&db, (0..4096u32).map(|i| format!("k{i:05}")), 64);
    let s = db.stats();
    let min = q.min_free().unwrap();
    assert!(
        min >= headroom,
        "lazy moves left {min} bytes free, below the {headroom}-byte headroom ({} moves \
         of {} bytes; {} bytes written since; flush {flushed:?})",
        s.lazy_moves,
        s.lazy_moved_bytes,
        q.used() - base,
    );
}

// ---------------------------------------------------------------------------------------
// D6: a sweep of "the disk fills up after k more operations" (sticky ENOSPC / short write /
// failed fsync), through writes, flushes, manifest rolls, a checkpoint, a retarget and
// migration; then an open while the disk is still full; then the space comes back.

use sluice::fs::{Fault, FaultKind, FsOp};

fn sweep_one(op: FsOp, kind: FaultKind, k: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = || Options {
        fs: Arc::new(fs.clone()),
        partition: range4(),
        max_manifest_bytes: 2048,
        flush_retries: 1,
        flush_retry_interval: Duration::from_millis(5),
        migration_bytes_per_sec: 1 << 30,
        migration_disk_headroom_bytes: 0,
        idle_memtable_flush_after: None,
        ..Options::tiny()
    };
    let db = Db::open(dir.path(), opts()).unwrap();
    // (key, value, outcome) with outcome 0 acked, 1 refused, 2 in doubt.
    let mut log: Vec<(String, String, u8)> = Vec::new();
    let mut durable = 0usize;
    let mut put = |db: &Db, i: usize, sync: bool, log: &mut Vec<(String, String, u8)>| {
        let (k, v) = (
            format!("k{}{i:05}", i % 4),
            format!("v{i}-{}", "x".repeat(i % 50)),
        );
        let mut b = WriteBatch::new();
        b.put(&k, &v);
        let r = db.write_opt(b, &WriteOptions { sync });
        let o = match &r {
            Ok(()) => 0,
            Err(sluice::Error::ReadOnly(_)) => 1,
            Err(_) => 2,
        };
        log.push((k, v, o));
        if sync && o == 0 {
            durable = log.len();
        }
    };
    for i in 0..300 {
        put(&db, i, i % 10 == 0, &mut log);
    }
    db.flush().unwrap();
    let v2 = db.register_partition_fn(hash(4, 9)).unwrap();
    fs.inject(Fault {
        op,
        path_contains: None,
        kind,
        skip: k,
        sticky: true,
    });
    let _ = db.set_target(v2);
    for i in 300..500 {
        put(&db, i, i % 5 == 0, &mut log);
        if i % 40 == 0 {
            let _ = db.flush();
        }
        if i == 400 {
            let _ = db.checkpoint(cp.path().join("c"));
        }
        if i == 450 {
            let _ = db.migrate_now(Some(50_000));
        }
    }
    let fired = fs.injected();
    eprintln!("SWEEP {op:?}/{kind:?}/{k} fired {fired}");
    let closed = db.close();
    // Still full: an open may fail, but must not damage anything.
    let full_open = Db::open(dir.path(), opts()).map(|db| {
        let _ = db.put("during-full-open", "x");
        let _ = db.close();
    });
    fs.clear();
    let db = match Db::open(dir.path(), opts()) {
        Ok(db) => db,
        Err(e) => {
            return format!(
                "{op:?}/{kind:?}/skip {k}: reopen after the space came back failed: {e} \
                 (fired {fired}, close {closed:?}, open while full {full_open:?})"
            )
        }
    };
    let mut bad = Vec::new();
    for (i, (k, v, o)) in log.iter().enumerate() {
        let got = db.get(k).unwrap();
        let got = got.as_deref();
        match o {
            0 if i < durable && got != Some(v.as_bytes()) => {
                bad.push(format!("synced-acked {k} = {got:?}"))
            }
            1 if got.is_some() => bad.push(format!("refused {k} present")),
            _ => {}
        }
    }
    drop(db);
    let rep = sluice_tests::verify(dir.path());
    if !rep.is_ok() {
        bad.push(format!("verify: {:?}", rep.errors().collect::<Vec<_>>()));
    }
    if bad.is_empty() {
        String::new()
    } else {
        format!("{op:?}/{kind:?}/skip {k} (fired {fired}, close {closed:?}): {bad:?}")
    }
}

#[test]
fn disk_full_sweep() {
    let only: Option<String> = std::env::var("SWEEP_OP").ok();
    let max_k: u64 = std::env::var("SWEEP_K")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut failures = Vec::new();
    for (name, op, kind) in [
        ("append", FsOp::Append, FaultKind::NoSpace),
        ("short", FsOp::Append, FaultKind::ShortWrite),
        ("sync", FsOp::Sync, FaultKind::NoSpace),
        ("create", FsOp::Create, FaultKind::NoSpace),
        ("rename", FsOp::Rename, FaultKind::NoSpace),
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        for k in 0..max_k {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(|| sweep_one(op, kind, k));
                let _ = tx.send(r);
            });
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(Ok(s)) if s.is_empty() => {}
                Ok(Ok(s)) => failures.push(s),
                Ok(Err(_)) => failures.push(format!("{name}/skip {k}: panicked")),
                Err(_) => failures.push(format!("{name}/skip {k}: no answer in 60 s (hang)")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// D7: writers stopped at L0 while that partition's compaction keeps failing with ENOSPC
// get no answer as long as other jobs (migration) succeed in between: every success resets
// the count of failures "in a row".

#[test]
fn a_stopped_writer_gets_an_answer_while_its_compaction_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let q = QuotaFs::default();
    let opts = Options {
        memtable_bytes: 1 << 20,
        target_file_bytes: 64 << 10,
        level0_compaction_trigger: 2,
        level0_slowdown_trigger: 2,
        level0_stop_trigger: 3,
        background_threads: 2,
        ..on_quota(&q, 0)
    };
    let db = Db::open(dir.path(), opts).unwrap();
    // 32 MB of old data ("a..." keys) to migrate.
    let mut b = WriteBatch::new();
    for i in 0..32_000u32 {
        b.put(format!("a{}{i:06}", i % 4), vec![b'o'; 1000]);
        if b.len() >= 100 {
            db.write(std::mem::take(&mut b)).unwrap();
        }
    }
    db.compact().unwrap();
    let v2 = retarget(&db, PartitionSpec::Range { boundaries: vec![] });
    // 4 MB of new data ("z..." keys) in the target's one partition.
    for i in 0..4000u32 {
        db.put(format!("z{:06}", (i * 7919) % 4000), vec![b'n'; 1000])
            .unwrap();
    }
    db.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while db
        .stats()
        .partitions
        .iter()
        .any(|p| p.version == v2.0 && p.level_files[0] > 0)
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now the disk has room for 1 MB of output per job: the target's L0 compaction (4 MB)
    // fails, slowly (each output file's fsync takes 20 ms); migration jobs (64 KB) fit.
    {
        let mut g = q.0.lock().unwrap();
        g.job_limit = Some(1 << 20);
        g.sst_sync_delay = Some(Duration::from_millis(20));
    }
    db.set_migration_rate(20 << 20);
    let started = Instant::now();
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for r in 0..1000u32 {
                for j in 0..20u32 {
                    let k = format!("z{:06}", (j * 200 + r) % 4000);
                    if let Err(e) = db.put(k, vec![b'w'; 1000]) {
                        return (r, e);
                    }
                }
                if let Err(e) = db.flush() {
                    return (r, e);
                }
            }
            panic!("writes never stopped");
        })
    };
    let mut answered = None;
    while Instant::now() < started + Duration::from_secs(90) {
        if writer.is_finished() {
            answered = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = db.migration_progress().bytes_left();
    let failures = q.0.lock().unwrap().job_enospc;
    if answered.is_some() {
        let (r, e) = writer.join().unwrap();
        eprintln!(
            "writer stopped in round {r}: {e}; stalls {}",
            db.stats().stalls
        );
    }
    let migrated = db.stats().migration_bytes_read;
    eprintln!(
        "writer answered after {answered:?}; compaction ENOSPC {failures}; migrated {migrated} B, left {left} B"
    );
    // Answered while migration still had work: it used to wait until migration ran out of
    // it (every migration job that succeeded reset the count of failures in a row).
    assert!(
        answered.is_some() && left > 0,
        "a writer stopped at L0 answered after {answered:?} (None = still waiting after 90 s) \
         with {left} B left to migrate, while the L0 compaction failed {failures} times with \
         ENOSPC; migration moved {migrated} B"
    );
}
