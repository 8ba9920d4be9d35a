//! Flushing a frozen memtable into L0 files of the target layout (write-time correction:
//! new data always lands in the layout being migrated to).
//!
//! Entries that a lazy read moved out of a draining layout are written to the target like
//! any other, and the same flush writes a forwarding pointer for each of them into the
//! draining partition they came from. Value and pointer become durable in one manifest edit,
//! so a pointer never names a copy that a crash could lose.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::coding::put_varint;
use crate::compaction::Stripes;
use crate::db::{wal_file, Inner, View};
use crate::error::Result;
use crate::manifest::{EditRecord, VersionEdit};
use crate::memtable::MemTable;
use crate::output::Outputs;
use crate::sst::TableKind;
use crate::stats::Counters;
use crate::types::{Entry, Kind};
use crate::version::{FileMeta, FileSet, LayoutState};

impl Inner {
    /// Flushes the oldest frozen memtable. Called by a background worker that set
    /// `core.flushing`.
    pub(crate) fn flush_oldest(&self) -> Result<()> {
        self.flush_oldest_then(|| {})
    }

    /// [`Self::flush_oldest`], running `meanwhile` once the flush has taken its view (tests
    /// use it to make other work land between the view and the install).
    fn flush_oldest_then(&self, meanwhile: impl FnOnce()) -> Result<()> {
        let began = std::time::Instant::now();
        // Flushes run one at a time, so the oldest frozen memtable is still the one taken
        // below.
        if let Some(oldest) = self.view.load().imm.last() {
            self.sync_rotated_wal(oldest.wal_number())?;
        }
        // Reading the target and registering as a writer into it happen under one lock, so
        // the target cannot be retired while this flush writes into it.
        // The moved copies' sources take no migration job until this flush is installed,
        // and those that running jobs are carrying are left to them: each value reaches the
        // target once (see `write_memtable`).
        let (mem, files, carried) = {
            let mut core = self.core.lock();
            let view = self.view.load_full();
            let Some(mem) = view.imm.last().cloned() else {
                return Ok(());
            };
            *core.writing_to.entry(view.files.target).or_insert(0) += 1;
            core.flush_sources.extend(mem.moved_sources());
            (mem, view.files.clone(), core.migrating.clone())
        };
        meanwhile();
        let stripes = Stripes::new(self.snapshot_list());
        let target = files.target;
        let result = self.write_memtable(&mem, &files, &carried, &stripes);
        let mut core = self.core.lock();
        if let Some(c) = core.writing_to.get_mut(&target) {
            *c -= 1;
        }
        // The core lock is held from here until the tables are installed (or the flush has
        // failed): no job can be picked in between.
        core.flush_sources.clear();
        // A failure so far is in writing the new tables alone, which are deleted again: the
        // flush worker tries again (`Options::flush_retries`). From here on a failure may
        // leave the directory or the manifest in doubt, so it stops writes at once.
        let (outputs, bytes, left_out) = result?;
        let fatal = |e: crate::Error| {
            self.fail(format!("flush failed: {e}"));
            e
        };
        // The WAL that can be dropped now: everything below the oldest memtable still unflushed.
        let view = self.view.load_full();
        let remaining: Vec<&Arc<MemTable>> =
            view.imm.iter().filter(|m| !Arc::ptr_eq(m, &mem)).collect();
        let log_number = remaining
            .last()
            .map(|m| m.wal_number())
            .unwrap_or_else(|| view.mem.wal_number());
        // Pointer files for a layout retired while the flush ran are simply dropped (data
        // files go to the target, which cannot retire while this flush is registered).
        // Pointers into the layout that is the target now are dropped too: the copies they
        // name will drain back into it (see `set_target`).
        let (outputs, orphaned): (Vec<_>, Vec<_>) = outputs.into_iter().partition(|f| {
            f.kind == crate::sst::TableKind::Data
                || (view.files.layouts.contains_key(&f.layout_version)
                    && f.layout_version != view.files.target)
        });
        for f in &orphaned {
            f.mark_obsolete();
        }
        let new_files = view.files.apply(&outputs, &[]).map_err(|e| {
            fatal(crate::Error::corruption(
                &self.dir,
                0,
                format!("flush install: {e}"),
            ))
        })?;
        let mut edit = VersionEdit::default();
        for f in &outputs {
            edit.push(EditRecord::AddFile(f.record()));
        }
        let flushed_seqno = core.flushed_seqno.max(mem.max_seqno());
        edit.push(EditRecord::LogNumber(log_number))
            .push(EditRecord::LastSeqno(flushed_seqno))
            .push(EditRecord::NextFile(core.next_file));
        // The new SSTables' directory entries must be durable before the manifest names
        // them. No edit names the tables yet, so they go whatever the failure: one that did
        // not stop writes (see `sync_dir`) is retried like a flush whose tables failed.
        if let Err(e) = self.sync_dir() {
            for f in &outputs {
                f.mark_obsolete();
            }
            return Err(e);
        }
        self.log_edit(&mut core, &edit).map_err(fatal)?;
        let old_log = core.log_number;
        core.log_number = log_number;
        core.flushed_seqno = flushed_seqno;
        // Counted before the view shows the flush done: `flush()` returns once it does, and
        // its caller's `stats()` must include it.
        Counters::add(&self.counters.flushes, 1);
        self.unbook_moves(&left_out);
        Counters::add(&self.counters.flush_bytes, bytes);
        Counters::add(
            &self.counters.flush_micros,
            began.elapsed().as_micros() as u64,
        );
        self.swap_view(&core, |v| View {
            mem: v.mem.clone(),
            imm: v
                .imm
                .iter()
                .filter(|m| !Arc::ptr_eq(m, &mem))
                .cloned()
                .collect(),
            files: Arc::new(new_files),
        });
        self.maybe_roll_manifest(&mut core).map_err(fatal)?;
        drop(core);
        // The WALs below the new log number are obsolete. Tables share the numbering, so
        // a short range is walked; a long one (numbers jump past a stray file name at open)
        // is found by listing the directory instead.
        if log_number - old_log <= 256 {
            for n in old_log..log_number {
                let p = wal_file(&self.dir, n);
                // Removed if it may exist: a failed removal is only a file left over.
                if self.fs.exists(&p).unwrap_or(true) {
                    let _ = self.fs.remove(&p);
                }
            }
        } else if let Ok(wals) = crate::recovery::wal_files(self.fs.as_ref(), &self.dir, old_log) {
            for (_, p) in wals.iter().filter(|(n, _)| *n < log_number) {
                let _ = self.fs.remove(p);
            }
        }
        Ok(())
    }

    /// Takes the flush worker's turn (`core.flushing`), for a test that flushes frozen
    /// memtables itself or keeps them frozen, once the worker has booked the flush it ran
    /// last: that flush shows in the view (a `flush` call returns) before the worker clears
    /// the flag, and a flag set meanwhile was cleared under the test, whose frozen memtable
    /// the worker then flushed too (beside the test's own flush of it: twice).
    #[cfg(test)]
    pub(crate) fn hold_flushes(&self) {
        let mut core = self.core.lock();
        while core.flushing {
            self.stall_cv
                .wait_for(&mut core, std::time::Duration::from_millis(100));
        }
        core.flushing = true;
    }

    /// Gives the flush worker its turn back (see [`Inner::hold_flushes`]).
    #[cfg(test)]
    pub(crate) fn release_flushes(&self) {
        self.core.lock().flushing = false;
        self.bg_cv.notify_all();
    }

    /// Writes a memtable's entries into L0 of the target layout (plus pointer files).
    /// `carried`: the input files of the migration jobs running when `files` was taken.
    pub(crate) fn write_memtable(
        &self,
        mem: &MemTable,
        files: &FileSet,
        carried: &HashSet<u64>,
        stripes: &Stripes,
    ) -> Result<(Vec<Arc<FileMeta>>, u64, CopiesLeftOut)> {
        let target = files.target_layout();
        let mut data = Outputs::new(self, TableKind::Data, 0, None);
        let mut pointers = Outputs::new(self, TableKind::Pointers, 0, None);
        let mut target_id = Vec::new();
        put_varint(&mut target_id, target.id as u64);
        let target_id = Bytes::from(target_id);
        let mut cur_key: Option<Bytes> = None;
        let mut last_stripe = None;
        let mut err = None;
        let mut left_out = CopiesLeftOut::default();
        mem.for_each(|e: Entry, moved_from: u32| {
            if err.is_some() {
                return;
            }
            if cur_key.as_ref() != Some(&e.key) {
                cur_key = Some(e.key.clone());
                last_stripe = None;
            }
            let st = stripes.stripe(e.seqno);
            if last_stripe == Some(st) {
                // (A moved copy a newer entry hides: its value stays in its source.)
                if moved_from != 0 {
                    left_out.add(moved_from, &e);
                }
                return;
            }
            last_stripe = Some(st);
            // A moved copy whose source no longer holds it: a migration compaction carried
            // the value into the target meanwhile (its install is in `files`, which no
            // longer show the value in the source), or dropped it under a newer entry that
            // stays. Or one that a running migration job is carrying: it will be in the
            // target once that job is installed (and if the job fails, the value stays in
            // its source, which a later job carries). Writing the copy would move the same
            // bytes a second time.
            if moved_from != 0
                && moved_from != target.id
                && !files
                    .layouts
                    .get(&moved_from)
                    .is_some_and(|src| left_in_source(src, carried, &e.key, e.seqno))
            {
                left_out.superseded += 1;
                left_out.add(moved_from, &e);
                return;
            }
            let p = target.func.partition_of(&e.key);
            if let Err(x) = data.add(target, p, &e) {
                err = Some(x);
                return;
            }
            if moved_from != 0 && moved_from != target.id {
                if let Some(src) = files.layouts.get(&moved_from) {
                    let ptr = Entry {
                        key: e.key.clone(),
                        seqno: e.seqno,
                        kind: Kind::Forward,
                        value: target_id.clone(),
                    };
                    if let Err(x) = pointers.add(src, src.func.partition_of(&e.key), &ptr) {
                        err = Some(x);
                    }
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        let mut out = data.finish()?;
        let bytes: u64 = out.iter().map(|f| f.size).sum();
        match pointers.finish() {
            Ok(p) => out.extend(p),
            Err(e) => {
                for f in &out {
                    f.mark_obsolete();
                }
                return Err(e);
            }
        }
        Ok((out, bytes, left_out))
    }

    /// Takes the copies a flush left out (now installed) back out of the lazy-move figures:
    /// they moved nothing, and migration counts their values as it carries them.
    fn unbook_moves(&self, left_out: &CopiesLeftOut) {
        Counters::add(&self.counters.moves_superseded, left_out.superseded);
        if left_out.by_source.is_empty() {
            return;
        }
        let mut counts = self.lazy_counts.lock();
        for (from, (n, b)) in &left_out.by_source {
            if let Some(c) = counts.get_mut(from) {
                c.0 = c.0.saturating_sub(*n);
                c.1 = c.1.saturating_sub(*b);
            }
        }
    }
}

/// Lazily moved copies a flush did not write, booked once its tables are installed (a
/// flush tried again would count them again).
#[derive(Default)]
pub(crate) struct CopiesLeftOut {
    /// Those whose value migration carried, or is carrying, into the target.
    superseded: u64,
    /// All of them, by the layout version they were moved out of: moves and bytes, as
    /// `apply_moves` booked them.
    by_source: std::collections::HashMap<u32, (u64, u64)>,
}

impl CopiesLeftOut {
    fn add(&mut self, from: u32, e: &Entry) {
        let c = self.by_source.entry(from).or_default();
        c.0 += 1;
        c.1 += (e.key.len() + e.value.len()) as u64;
    }
}

/// Whether the draining layout `src` holds `key` at `seqno` in a data file that no running
/// migration job is carrying (`carried`: their inputs). A table that cannot be read counts as
/// not carrying it: the copy is then written, at worst a second time.
fn left_in_source(src: &LayoutState, carried: &HashSet<u64>, key: &[u8], seqno: u64) -> bool {
    let h = crate::sst::bloom::key_hash(key);
    let mut holders = src.files_that_may_hold(key, seqno).peekable();
    holders.peek().is_some()
        && !holders.any(|f| {
            carried.contains(&f.number)
                && f.table
                    .get(key, h, seqno)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.seqno == seqno)
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use crate::awaits::Picker;
    use crate::cursor::MergeCursor;
    use crate::fs::{FaultFs, FsOp};
    use crate::iter::{file_sources, Direction};
    use crate::test_hooks::{set, Point};
    use crate::{Db, Options, PartitionSpec, VersionId};

    /// A test that takes the flush worker's turn right after a `flush` call returned: the
    /// worker, still removing the flushed memtable's WAL, had yet to clear the flag, and
    /// cleared it under the test (whose memtable it then flushed as the test did: two
    /// identical L0 files, seen under load). The turn is taken once the worker booked its
    /// flush, and stays taken.
    #[test]
    fn a_test_takes_the_flush_turn_once_the_worker_booked_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let fault = FaultFs::new();
        let opts = Options {
            fs: Arc::new(fault.clone()),
            idle_memtable_flush_after: None,
            wal_flush_interval: std::time::Duration::from_secs(3600),
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let inner = &db.inner;
        db.put("a", "1").unwrap();
        // The worker's flush shows in the view, then waits to remove the memtable's WAL.
        fault.hold(FsOp::Remove, ".log", "sluice-flush");
        db.flush().unwrap();
        while fault.held_by().iter().all(|(t, _)| t != "sluice-flush") {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::scope(|s| {
            let holder = s.spawn(|| inner.hold_flushes());
            fault.release_held();
            holder.join().unwrap();
        });
        {
            let mut core = inner.core.lock();
            while core.running > 0 {
                inner
                    .stall_cv
                    .wait_for(&mut core, std::time::Duration::from_millis(100));
            }
            assert!(core.flushing, "the worker cleared the test's turn");
        }
        // The test flushes its frozen memtable alone.
        db.put("b", "2").unwrap();
        inner.rotate(&mut inner.wal.lock()).unwrap();
        inner.flush_oldest().unwrap();
        inner.release_flushes();
        db.flush().unwrap();
        assert_eq!(db.stats().flushes, 2);
        let l0 = db.layout().versions[0].files();
        assert_eq!(l0, 2, "files");
    }

    fn opts() -> Options {
        Options {
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 1 << 30,
            move_on_first_read: true,
            memtable_bytes: 4 << 20,
            idle_memtable_flush_after: None,
            wal_flush_interval: Duration::from_secs(3600),
            ..Options::default()
        }
    }

    /// 500 keys in one table of v1 (one partition), draining into a hash v2, with v1 pinned
    /// (kept live once empty). Every fifth key is read, and its moved copy waits in a frozen
    /// memtable that the test flushes itself (the background flusher is kept off it).
    fn copies_frozen(db: &Db) {
        copies_in_memtable(db);
        let inner = &db.inner;
        inner.hold_flushes();
        inner.rotate(&mut inner.wal.lock()).unwrap();
    }

    /// 500 keys `k0000…` (values `a<i>`) compacted into v1's one partition, then a hash
    /// layout of four partitions registered and made the target.
    fn settled_then_retargeted(db: &Db) {
        for i in 0..500u32 {
            db.put(format!("k{i:04}"), format!("a{i}")).unwrap();
        }
        db.compact().unwrap();
        let v2 = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 3,
                hashed_prefix: None,
            })
            .unwrap();
        db.set_target(v2).unwrap();
    }

    /// [`copies_frozen`], the memtable not frozen yet.
    fn copies_in_memtable(db: &Db) {
        settled_then_retargeted(db);
        for i in (0..500u32).step_by(5) {
            db.get(format!("k{i:04}")).unwrap();
        }
        db.pin_version(VersionId(1), true).unwrap();
        let inner = &db.inner;
        inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 100);
    }

    /// (key, seqno) pairs stored more than once in the target layout's data tables (each
    /// table walked on its own: a merge of them would show a pair once).
    fn stored_twice_in_target(db: &Db) -> usize {
        let view = db.inner.view.load();
        let (mut seen, mut twice) = (HashSet::new(), 0);
        for f in view
            .files
            .target_layout()
            .parts
            .iter()
            .flat_map(|p| p.data_files())
        {
            let mut c = MergeCursor::new(
                file_sources(std::slice::from_ref(f)).unwrap(),
                Direction::Forward,
            );
            while c.valid() {
                let t = c.top();
                if !seen.insert((t.key().to_vec(), t.seqno())) {
                    twice += 1;
                }
                c.advance().unwrap();
            }
        }
        twice
    }

    /// Every key reads its value; v1, drained, retires and the directory reopens whole.
    fn all_there_then_retire_and_reopen(dir: &std::path::Path, db: Db) {
        db.inner.release_flushes();
        for i in 0..500u32 {
            let v = db.get(format!("k{i:04}")).unwrap();
            assert_eq!(v.as_deref(), Some(format!("a{i}").as_bytes()), "k{i:04}");
        }
        let v1 = db
            .layout()
            .versions
            .into_iter()
            .find(|v| v.id == VersionId(1));
        assert_eq!(v1.unwrap().files(), 0);
        db.pin_version(VersionId(1), false).unwrap();
        db.retire_drained().unwrap();
        assert_eq!(db.layout().versions.len(), 1);
        drop(db);
        let db = Db::open(dir, opts()).unwrap();
        let all: Vec<_> = db.range(..).collect::<crate::Result<_>>().unwrap();
        assert_eq!(all.len(), 500);
        assert_eq!(db.layout().retired, vec![VersionId(1)]);
    }

    /// Runs `migrate_now` on another thread, stopped at the last of `path`'s points (reached
    /// after each one before it, in turn) until `go` is sent.
    fn migrate_now_stopped_at<'s>(
        s: &'s std::thread::Scope<'s, '_>,
        db: &'s Db,
        path: &'static [Point],
    ) -> (std::thread::ScopedJoinHandle<'s, u64>, mpsc::Sender<()>) {
        /// Sets the hooks that run `f` at the last of `path`'s points.
        fn stop_at(path: &'static [Point], f: Box<dyn FnOnce()>) {
            match path {
                [] => f(),
                [last] => set(*last, f),
                [first, rest @ ..] => set(*first, move || stop_at(rest, f)),
            }
        }
        let (at_tx, at_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let job = s.spawn(move || {
            stop_at(
                path,
                Box::new(move || {
                    at_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }),
            );
            db.inner.migrate_now(None).unwrap()
        });
        at_rx.recv().unwrap();
        (job, go_tx)
    }

    /// Runs `migrate_now` on another thread, stopped once it has picked its job until `go`
    /// is sent.
    fn picked_job<'s>(
        s: &'s std::thread::Scope<'s, '_>,
        db: &'s Db,
    ) -> (std::thread::ScopedJoinHandle<'s, u64>, mpsc::Sender<()>) {
        migrate_now_stopped_at(s, db, &[Point::MigrateNowPicked])
    }

    /// A migration job picked before a flush of lazily moved copies took its view, and
    /// installed while the flush wrote: the flush saw the values still in their source and
    /// wrote the copies into the target, where the job put the same entries too (a key at
    /// one seqno stored twice). The flush now leaves the values a running job carries to it.
    #[test]
    fn a_copy_that_a_job_running_under_the_flush_carries_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        copies_frozen(&db);
        std::thread::scope(|s| {
            let (job, go) = picked_job(s, &db);
            db.inner
                .flush_oldest_then(|| {
                    go.send(()).unwrap();
                    job.join().unwrap();
                })
                .unwrap();
        });
        assert_eq!(stored_twice_in_target(&db), 0);
        assert_eq!(db.stats().lazy_moves, 0, "every copy left to the job");
        all_there_then_retire_and_reopen(dir.path(), db);
    }

    /// The same job installed only after the flush: it knew nothing of the pointers the
    /// flush wrote and carried the moved values into the target a second time.
    #[test]
    fn a_copy_that_a_job_installed_after_the_flush_carries_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        copies_frozen(&db);
        std::thread::scope(|s| {
            let (job, go) = picked_job(s, &db);
            db.inner.flush_oldest().unwrap();
            go.send(()).unwrap();
            job.join().unwrap();
        });
        assert_eq!(stored_twice_in_target(&db), 0);
        all_there_then_retire_and_reopen(dir.path(), db);
    }

    /// A migration job asked for once the flush has taken its view: picked, it would not
    /// see the pointers the flush writes, and carry the moved values into the target a
    /// second time (installed before the flush, or after it). The copies' source partition
    /// takes no job until the flush is installed; the job then honours the pointers, and
    /// the pointer files vanish with the partition's last data file.
    #[test]
    fn a_job_asked_for_during_a_flush_of_moved_copies_waits_and_honours_their_pointers() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        copies_frozen(&db);
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let mut job = None;
            db.inner
                .flush_oldest_then(|| {
                    let (picked, waits) = (tx.clone(), tx);
                    let j = s.spawn(|| {
                        set(Point::MigrateNowPicked, move || {
                            picked.send("picked").unwrap()
                        });
                        set(Point::MigrateNowWaits, move || waits.send("waits").unwrap());
                        db.inner.migrate_now(None).unwrap()
                    });
                    if rx.recv().unwrap() == "picked" {
                        j.join().unwrap();
                    } else {
                        job = Some(j);
                    }
                })
                .unwrap();
            if let Some(j) = job {
                j.join().unwrap();
            }
        });
        assert_eq!(stored_twice_in_target(&db), 0);
        let p = db.migration_progress();
        assert_eq!(p.draining[0].pointers_honoured, 100);
        assert_eq!(p.draining[0].lazy_moves, 100, "every copy written");
        let v1 = db
            .layout()
            .versions
            .into_iter()
            .find(|v| v.id == VersionId(1));
        let pointer_files: usize = v1.unwrap().partitions.iter().map(|p| p.pointer_files).sum();
        assert_eq!(pointer_files, 0);
        all_there_then_retire_and_reopen(dir.path(), db);
    }

    /// Runs `migrate_now` on another thread, stopped once it has found nothing it may take
    /// and waited, before its next pick (the core lock free), until `go` is sent.
    fn waiting_migrate_now<'s>(
        s: &'s std::thread::Scope<'s, '_>,
        db: &'s Db,
    ) -> (std::thread::ScopedJoinHandle<'s, u64>, mpsc::Sender<()>) {
        let path = &[Point::MigrateNowWaits, Point::MigrateNowBeforePick];
        migrate_now_stopped_at(s, db, path)
    }

    /// Whether a read of `key` moves a copy of it out of its draining partition.
    fn read_moves(db: &Db, key: &str) -> bool {
        let before = db.stats().lazy_moves;
        db.get(key).unwrap();
        db.inner.apply_moves();
        db.stats().lazy_moves > before
    }

    /// [`opts`] with v1 in two range partitions: keys below `k0250`, and the others.
    fn two_partition_opts() -> Options {
        Options {
            partition: PartitionSpec::Range {
                boundaries: vec![b"k0250".to_vec()],
            },
            ..opts()
        }
    }

    /// Flushes back to back, each of a memtable holding copies moved out of the same
    /// draining partition, with a migration pick (as `migrate_now` or a worker makes it)
    /// landing while each is written: every pick found the partition held by the flush,
    /// and a job for it was picked only if a pick happened to land in the short gap
    /// between one flush's install and the next one's view. A pick so refused now stops
    /// copies being moved out of the partition it waits for: the next memtable takes none,
    /// and the next flush holds it no more.
    #[test]
    fn a_migration_pick_held_by_back_to_back_flushes_of_moved_copies_gets_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        copies_frozen(&db);
        let inner = &db.inner;
        let (mut job, mut refused) = (None, 0);
        // Keys not moved yet, read a few per flush.
        let mut unread = (0..500u32).filter(|i| i % 5 != 0);
        for _ in 0..6 {
            inner
                .flush_oldest_then(|| {
                    let mut core = inner.core.lock();
                    let view = inner.view.load_full();
                    match inner
                        .pick_within_headroom(&mut core, &view, Picker::Background)
                        .unwrap()
                    {
                        Some(j) => job = Some(j),
                        None => refused += 1,
                    }
                    drop(core);
                    // Meanwhile writes and reads go on: a write, and moves out of the same
                    // partition, in the memtable flushed next.
                    db.put("k0001", "a1").unwrap();
                    for i in unread.by_ref().take(10) {
                        db.get(format!("k{i:04}")).unwrap();
                    }
                    inner.apply_moves();
                    inner.rotate(&mut inner.wal.lock()).unwrap();
                })
                .unwrap();
            if job.is_some() {
                break;
            }
        }
        assert_eq!(refused, 1, "picks refused before one was made");
        let job = job.expect("no migration job was picked");
        let r = inner.run_compaction(&job);
        inner.release_job(&mut inner.core.lock(), &job);
        r.unwrap();
        inner.flush_oldest().unwrap();
        inner.migrate_now(None).unwrap();
        assert_eq!(stored_twice_in_target(&db), 0);
        all_there_then_retire_and_reopen(dir.path(), db);
    }

    /// A partition that a refused pick waits for takes no lazy moves only until a pick finds
    /// it free, or (a worker's pick) background migration is paused: not for good.
    #[test]
    fn a_partition_a_migration_pick_waits_for_takes_moves_again_once_it_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        settled_then_retargeted(&db);
        let inner = &db.inner;
        let pick = || {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            let job = inner
                .pick_within_headroom(&mut core, &view, Picker::Background)
                .unwrap();
            if let Some(j) = &job {
                inner.release_job(&mut core, j);
            }
            job.is_some()
        };
        // A flush of copies out of v1's only partition, as it marks it.
        inner.core.lock().flush_sources.insert((1, 0));
        assert!(!pick());
        assert!(
            !read_moves(&db, "k0001"),
            "moved out of a partition migration waits for"
        );
        inner.core.lock().flush_sources.clear();
        assert!(pick());
        assert!(read_moves(&db, "k0002"));
        // A worker's pick (background migration on, as far as it knows) waits for it, then
        // background migration is paused: the worker's next look opens it again. (The core
        // lock held: the workers wait.)
        {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            inner.pacer.lock().rate = 1 << 40;
            core.flush_sources.insert((1, 0));
            assert!(inner.pick_migration(&mut core, &view).is_none());
            assert!(core.migration_awaits.contains(&(1, 0)), "test setup");
            core.flush_sources.clear();
            inner.pacer.lock().rate = 0;
            assert!(inner.pick_migration(&mut core, &view).is_none());
        }
        assert!(
            read_moves(&db, "k0003"),
            "a paused migration's last pick kept moves out"
        );
    }

    /// A `migrate_now` that ends while it waits for a partition a flush of moved copies
    /// holds (here: a rollback left nothing it could migrate) no longer waits for it, and
    /// leaves it open to lazy moves. Its record stayed, and with background migration paused
    /// (whose picks clear only their own records) the partition took no lazy move again,
    /// once it drained anew, for as long as the handle was open.
    #[test]
    fn a_migrate_now_that_ends_while_waiting_leaves_its_partition_open_to_moves() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        settled_then_retargeted(&db);
        // v2 kept live once empty, as a pinned rollback target is.
        db.pin_version(VersionId(2), true).unwrap();
        let inner = &db.inner;
        // A flush of copies out of v1's only partition, as it marks it.
        inner.core.lock().flush_sources.insert((1, 0));
        std::thread::scope(|s| {
            let (j, go) = waiting_migrate_now(s, &db);
            // Waiting: the flush ends, and the migration is rolled back (v2 empty).
            inner.core.lock().flush_sources.clear();
            db.set_target(VersionId(1)).unwrap();
            go.send(()).unwrap();
            assert_eq!(j.join().unwrap(), 0, "nothing left to migrate");
        });
        // Forward again: v1 drains into v2, background migration still paused.
        db.set_target(VersionId(2)).unwrap();
        let before = db.stats().lazy_moves;
        assert!(db.get("k0001").unwrap().is_some());
        inner.apply_moves();
        assert_eq!(
            db.stats().lazy_moves,
            before + 1,
            "a partition a finished migrate_now waited for took no lazy move"
        );
    }

    /// A worker's migration pick made while a `migrate_now` waits for partitions held by
    /// flushes of moved copies: one record served both pickers, so the worker's pick
    /// cleared the partitions the `migrate_now` waited for (here: as it took another), and
    /// moves out of them went on, the flushes that held them with them. Each picker now
    /// keeps its own record, and moves skip the partitions any of them waits for.
    #[test]
    fn a_background_pick_leaves_the_partitions_a_waiting_migrate_now_awaits_closed_to_moves() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), two_partition_opts()).unwrap();
        settled_then_retargeted(&db);
        let inner = &db.inner;
        // Flushes of copies out of both of v1's partitions, as they mark them.
        inner.core.lock().flush_sources.extend([(1, 0), (1, 1)]);
        std::thread::scope(|s| {
            let (migrate_now, go) = waiting_migrate_now(s, &db);
            // The flush out of v1's second partition ends, and a worker picks it first.
            {
                let mut core = inner.core.lock();
                core.flush_sources.remove(&(1, 1));
                let view = inner.view.load_full();
                inner.pacer.lock().rate = 1 << 40;
                let job = inner.pick_migration(&mut core, &view);
                let job = job.expect("the worker took no job");
                assert_eq!(job.sources, vec![1], "test setup");
                inner.release_job(&mut core, &job);
                inner.pacer.lock().rate = 0;
            }
            assert!(
                !read_moves(&db, "k0001"),
                "moved out of a partition a waiting migrate_now awaits"
            );
            inner.core.lock().flush_sources.clear();
            go.send(()).unwrap();
            assert!(migrate_now.join().unwrap() > 0);
        });
    }

    /// The other way round: a `migrate_now` that takes a partition, and returns, while a
    /// worker's pick waits for another, left that one open to moves.
    #[test]
    fn a_migrate_now_leaves_the_partitions_a_background_pick_awaits_closed_to_moves() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), two_partition_opts()).unwrap();
        settled_then_retargeted(&db);
        let inner = &db.inner;
        {
            let mut core = inner.core.lock();
            core.flush_sources.extend([(1, 0), (1, 1)]);
            let view = inner.view.load_full();
            inner.pacer.lock().rate = 1 << 40;
            assert!(inner.pick_migration(&mut core, &view).is_none());
            // Background migration stays on, its budget in debt for good: the workers'
            // picks keep the record as it is (a paused one would clear it).
            inner.pacer.lock().tokens = f64::MIN;
            // The flush out of v1's second partition ends.
            core.flush_sources.remove(&(1, 1));
        }
        assert!(inner.migrate_now(Some(1)).unwrap() > 0);
        assert!(
            !read_moves(&db, "k0001"),
            "moved out of a partition a worker's pick awaits"
        );
    }

    /// Copies that their flush leaves out moved nothing: the migration progress counted
    /// them among the lazy moves all the same, and their values again among the bytes that
    /// migration carried. They are taken back out once the flush is installed.
    #[test]
    fn copies_a_flush_leaves_out_are_not_counted_as_moves() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        copies_in_memtable(&db);
        // One copy hidden by a newer write in the same memtable...
        db.put("k0000", "b0").unwrap();
        let inner = &db.inner;
        inner.hold_flushes();
        inner.rotate(&mut inner.wal.lock()).unwrap();
        // ...and the values of the 99 others carried into the target before the flush.
        inner.migrate_now(None).unwrap();
        inner.flush_oldest().unwrap();
        inner.release_flushes();
        let s = db.stats();
        assert_eq!(
            (s.lazy_moves, s.lazy_moved_bytes, s.lazy_moves_superseded),
            (0, 0, 99)
        );
        let p = db.migration_progress();
        let v1 = &p.draining[0];
        assert_eq!((v1.lazy_moves, v1.lazy_moved_bytes), (0, 0));
        assert_eq!(v1.files_migrated, 1);
        assert_eq!(db.get("k0000").unwrap().as_deref(), Some(&b"b0"[..]));
        assert_eq!(db.get("k0005").unwrap().as_deref(), Some(&b"a5"[..]));
    }

    /// A flush of copies can be installed between the moment `apply_moves` put them in the
    /// memtable and the moment it booked them: the flush took the copies it left out back
    /// out of figures that did not count them yet, and the booking then counted them for
    /// good.
    #[test]
    fn copies_left_out_by_a_flush_before_their_batch_is_booked_are_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        settled_then_retargeted(&db);
        db.get("k0005").unwrap();
        let inner = &db.inner;
        inner.hold_flushes();
        // The copy is in the memtable, not booked yet: a newer write hides it, and the
        // memtable is frozen and flushed (the copy left out).
        let hooked = inner.clone();
        set(Point::MovesBeforeBooking, move || {
            let mut b = crate::WriteBatch::default();
            b.put(b"k0005", b"b5");
            hooked.write(b, false).unwrap();
            hooked.rotate(&mut hooked.wal.lock()).unwrap();
            hooked.flush_oldest().unwrap();
        });
        inner.apply_moves();
        inner.release_flushes();
        let s = db.stats();
        assert_eq!((s.lazy_moves, s.lazy_moved_bytes), (0, 0));
        assert_eq!(db.get("k0005").unwrap().as_deref(), Some(&b"b5"[..]));
    }
}
