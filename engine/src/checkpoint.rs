//! Checkpoints: an openable copy of the database made of hard links to the live SSTables
//! (which are immutable), copies of the WAL up to the moment of the checkpoint, and a fresh
//! manifest describing exactly that state.

use std::path::Path;

use crate::db::Inner;
use crate::error::{Error, Result};
use crate::fs::RandomRead;
use crate::manifest::ManifestWriter;
use crate::recovery::wal_files;

/// The lock file a checkpoint holds in its directory while it writes there (the name a
/// database's own lock has, so an open of the directory meanwhile is refused too).
const CLAIM: &str = "LOCK";

impl Inner {
    pub fn checkpoint(&self, dest: &Path) -> Result<()> {
        // A closed handle's files may be another process's by now (a copy of them was
        // unopenable), and a read-only one has no WAL of its own to cut. Counted until its
        // files are written: close waits for it, so the directory is not let go (and its
        // tables deleted by the next open) while the links and copies are made. A close begun
        // meanwhile makes it give up between steps (see `write_checkpoint`), so the close
        // waits for the step in flight, not for the whole copy.
        let counted = self.foreground_job()?;
        if self.read_only {
            return Err(Error::ReadOnly(
                "a checkpoint needs a writable open (it cuts the WAL under the writers' lock)"
                    .into(),
            ));
        }
        crate::fs::check_dir_arg(dest, "checkpoint directory")?;
        if let Some(name) = entry_under(&self.dir, dest).map_err(|e| Error::io(dest, e))? {
            let name = name.to_string_lossy();
            if crate::recovery::looks_like_ours(&name) || name == "CURRENT.tmp" || name == CLAIM {
                return Err(Error::InvalidOption {
                    name: "checkpoint directory",
                    reason: format!(
                        "{} would put a directory named {name} in the database directory, a \
                         name the database takes for one of its own files (it would no \
                         longer open)",
                        dest.display()
                    ),
                });
            }
        }
        let fs = self.fs.as_ref();
        let not_empty = |dest: &Path| Error::InvalidOption {
            name: "checkpoint directory",
            reason: format!("{} exists and is not empty", dest.display()),
        };
        let others = |names: &[String]| names.iter().any(|n| n != CLAIM);
        // Refused before anything is written into it (a lock file alone is another
        // checkpoint's claim, below, or one left by a crash).
        if fs.exists(dest).map_err(|e| Error::io(dest, e))?
            && others(&fs.list(dest).map_err(|e| Error::io(dest, e))?)
        {
            return Err(not_empty(dest));
        }
        crate::fs::create_dir_durably(fs, dest).map_err(|e| Error::io(dest, e))?;
        // Claim the directory for the whole checkpoint: two checkpoints writing into one
        // directory at once (of this database or any other, in any process) would find
        // each other's files under the names they link to. Falling back to a copy over
        // such a name used to truncate the file it names, which can be another hard link
        // to a live table.
        let lock_path = dest.join(CLAIM);
        let claim = fs
            .lock(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?
            .ok_or_else(|| Error::Busy {
                path: dest.to_path_buf(),
                reason: "another checkpoint, or an open database, holds it".into(),
            })?;
        // Under the claim, whatever else is in the directory is this checkpoint's.
        let r = match fs.list(dest) {
            Err(e) => Err(Error::io(dest, e)),
            Ok(names) if others(&names) => Err(not_empty(dest)),
            Ok(_) => {
                let r = self.write_checkpoint(dest);
                // The cleanup below touches only `dest`: a close need not wait for it.
                drop(counted);
                if r.is_err() {
                    // Leaving it would make a retry refuse the non-empty directory (and it
                    // is not an openable copy). CURRENT goes first, and durably, before
                    // the files it names: a crash in between must not leave a CURRENT
                    // over missing files, which looks like a complete checkpoint. If that
                    // cannot be made durable, the rest stays (a copy that still opens).
                    let current = dest.join(crate::manifest::CURRENT);
                    let gone = match fs.remove(&current) {
                        Ok(()) => fs.sync_dir(dest).is_ok(),
                        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                    };
                    if gone {
                        if let Ok(names) = fs.list(dest) {
                            for n in names.iter().filter(|n| *n != CLAIM) {
                                let _ = fs.remove(&dest.join(n));
                            }
                        }
                        let _ = fs.sync_dir(dest);
                    }
                }
                r
            }
        };
        // The lock file stays: removed while held, a process that opened it just before
        // would lock the removed file once this lets go, while another made and locked a
        // new one, and both would think they held the directory.
        drop(claim);
        r
    }

    fn write_checkpoint(&self, dest: &Path) -> Result<()> {
        let fs = self.fs.as_ref();
        // Freeze a consistent cut: no commit (wal lock) and no install (core lock) while
        // the file set, the WAL list and their lengths are read.
        let (view, wals, edit, manifest_number) = {
            let mut wal = self.wal.lock();
            if let Err(e) = wal.log.flush() {
                // The WAL may now end in a torn record, and what follows it would be
                // damage with intact records after it: refuse writes, as a commit would
                // (before the WAL lock goes, so no writer slips in between).
                self.wal_failed(format!("WAL write failed during a checkpoint: {e}"));
                return Err(e);
            }
            let active = (wal.number, wal.log.len());
            let core = self.core.lock();
            let view = self.view.load_full();
            // Opened now, copied after the locks are released: a flush finishing meanwhile
            // deletes the WALs it covered, and an open file stays readable once deleted.
            // (Tables need no such care: the view holds them, and a table is deleted only
            // once no view does.)
            let mut wals = Vec::new();
            for (n, p) in wal_files(fs, &self.dir, core.log_number)? {
                let len = if n == active.0 {
                    active.1
                } else {
                    fs.file_size(&p).map_err(|e| Error::io(&p, e))?
                };
                let file = fs.open_random(&p).map_err(|e| Error::io(&p, e))?;
                wals.push((p, file, len));
            }
            let edit = self.snapshot_edit(&core, &view.files);
            (view, wals, edit, core.next_file)
        };
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::CheckpointAfterCut);
        for f in view.files.all_files() {
            let src = f.table.path();
            let name = src
                .file_name()
                .ok_or_else(|| Error::corruption(src, 0, "no file name"))?;
            let dst = dest.join(name);
            // A close waits for this checkpoint: give up once one began rather than make
            // it wait for every file (the caller removes what was made).
            self.check_open()?;
            match fs.hard_link(src, &dst) {
                Ok(()) => {
                    #[cfg(test)]
                    crate::test_hooks::reach(crate::test_hooks::Point::CheckpointStepDone);
                }
                // Never a copy over a name that exists: it may link to a live table.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::io(&dst, e));
                }
                // Another file system, or no hard links there: copy.
                Err(_) => {
                    let file = fs.open_random(src).map_err(|e| Error::io(src, e))?;
                    copy_prefix(self, (src, file.as_ref()), &dst, f.size)?;
                }
            }
        }
        for (src, file, len) in &wals {
            let name = src
                .file_name()
                .ok_or_else(|| Error::corruption(src, 0, "no file name"))?;
            self.check_open()?;
            copy_prefix(self, (src, file.as_ref()), &dest.join(name), *len)?;
        }
        // The links and copies are named durably before the manifest and CURRENT that name
        // them: after a crash, a CURRENT is there only over every file it needs.
        fs.sync_dir(dest).map_err(|e| Error::io(dest, e))?;
        // The last point a close makes the checkpoint give up. From here on CURRENT is
        // written and made durable (inside `create`): a copy whose CURRENT may be durable
        // is complete and must be left whole, and what remains (a manifest of one
        // snapshot record, CURRENT, their fsyncs) is short and bounded, not one step per
        // file like the copying above.
        self.check_open()?;
        ManifestWriter::create(fs, dest, manifest_number, &edit)?;
        fs.sync_dir(dest).map_err(|e| Error::io(dest, e))?;
        Ok(())
    }
}

/// The name of the entry directly inside `dir` that `dest` is or lies under, if it lies
/// inside `dir` at all: resolved through the part of `dest` that exists (symlinks
/// included), and lexically through the rest, which the checkpoint creates.
fn entry_under(dir: &Path, dest: &Path) -> std::io::Result<Option<std::ffi::OsString>> {
    use std::path::Component;
    let dir = dir.canonicalize()?;
    let abs = std::path::absolute(dest)?;
    // The longest prefix that exists, resolved; then the rest, component by component.
    let comps: Vec<Component> = abs.components().collect();
    let mut split = comps.len();
    let mut resolved = loop {
        let prefix: std::path::PathBuf = comps[..split].iter().collect();
        match prefix.canonicalize() {
            Ok(p) => break p,
            Err(_) if split > 1 => split -= 1,
            Err(e) => return Err(e),
        }
    };
    for c in &comps[split..] {
        match c {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(n) => resolved.push(n),
            _ => {}
        }
    }
    Ok(resolved
        .strip_prefix(&dir)
        .ok()
        .and_then(|rest| rest.components().next())
        .map(|c| c.as_os_str().to_os_string()))
}

/// Copies the first `len` bytes of `src` (its path, and the file open for reading) to a
/// new file `dst` (an error if the name exists), fsynced. [`Error::Closed`] between chunks
/// once the database is closing (the close waits for the copy, which may be long).
fn copy_prefix(inner: &Inner, src: (&Path, &dyn RandomRead), dst: &Path, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let fs = inner.fs.as_ref();
    let mut f = fs.create_new(dst).map_err(|e| Error::io(dst, e))?;
    let mut buf = Vec::with_capacity(CHUNK.min(len) as usize);
    let mut at = 0;
    while at < len {
        if at > 0 {
            inner.check_open()?;
        }
        let n = CHUNK.min(len - at);
        buf.clear();
        src.1
            .read_exact_at_into(&mut buf, n as usize, at)
            .map_err(|e| Error::io(src.0, e))?;
        f.append(&buf).map_err(|e| Error::io(dst, e))?;
        at += n;
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::CheckpointStepDone);
    }
    f.sync().map_err(|e| Error::io(dst, e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::CLAIM;
    use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
    use crate::test_hooks::{set, Point};
    use crate::{Db, Options};

    /// A flush that finishes after the checkpoint fixed its cut deletes the WAL the cut
    /// names; the checkpoint still copies it (it failed with "not found" before) and opens
    /// with every write of the cut and none after.
    #[test]
    fn a_flush_deleting_the_cut_s_wal_does_not_break_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options {
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        for i in 0..100u32 {
            db.put(format!("k{i:03}"), format!("v{i}")).unwrap();
        }
        let live = db.clone();
        set(Point::CheckpointAfterCut, move || {
            live.put("late", "x").unwrap();
            live.flush().unwrap();
        });
        let cp = dir.path().join("checkpoint");
        db.checkpoint(&cp).unwrap();
        let copied: Vec<String> = std::fs::read_dir(&cp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert!(!copied.is_empty());
        // The flush deletes obsolete WALs after it releases the lock `flush()` waits on:
        // give it the moment it may need on a loaded machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for n in &copied {
            while dir.path().join(n).exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n} was not deleted meanwhile"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let copy = Db::open(&cp, opts()).unwrap();
        for i in 0..100u32 {
            assert_eq!(
                copy.get(format!("k{i:03}")).unwrap().unwrap(),
                format!("v{i}")
            );
        }
        assert_eq!(copy.get("late").unwrap(), None, "a write after the cut");
    }

    /// A table of the cut that is trivially moved (a new record of the same file) and then
    /// compacted away after the cut: its file must outlive the cut's view, which still
    /// names it. It used to be deleted as soon as the moved record was dropped, and the
    /// checkpoint failed to link it ("not found").
    #[test]
    fn a_table_moved_then_compacted_after_the_cut_is_still_linked() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options {
            idle_memtable_flush_after: None,
            level0_compaction_trigger: 4,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        let fill = |db: &Db, run: u32| {
            for i in 0..50u32 {
                db.put(format!("r{run}-k{i:03}"), format!("v{i}")).unwrap();
            }
            db.flush().unwrap();
        };
        fill(&db, 0);
        let live = db.clone();
        set(Point::CheckpointAfterCut, move || {
            // Three more disjoint L0 files reach the trigger: a trivial move takes them
            // (with the cut's file) to the base level; then a compaction rewrites them all.
            for run in 1..4 {
                fill(&live, run);
            }
            let start = std::time::Instant::now();
            while live.stats().trivial_moves == 0 {
                assert!(start.elapsed().as_secs() < 30, "no trivial move");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            live.compact().unwrap();
        });
        let cp = dir.path().join("checkpoint");
        db.checkpoint(&cp).unwrap();
        let copy = Db::open(&cp, opts()).unwrap();
        let keys: Vec<_> = copy.range(..).map(|r| r.unwrap().0).collect();
        assert_eq!(keys.len(), 50);
        assert!(keys.iter().all(|k| k.starts_with(b"r0-")));
    }

    /// A checkpoint whose flush of the WAL buffer fails part-way (a short write) stops
    /// writes, as a commit's failed WAL write does. It used to leave the database writable:
    /// the next writes went into the WAL after the torn record, and the next open refused
    /// the WAL (damage with intact records after it). Now the database reopens with what
    /// was acknowledged before the failure up to the torn record, and nothing after.
    #[test]
    fn a_checkpoint_whose_wal_flush_fails_stops_writes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = Options {
            fs: Arc::new(fs.clone()),
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        db.put("a", "1").unwrap();
        db.sync_wal().unwrap();
        db.put("b", "2").unwrap(); // in the in-process WAL buffer
        fs.inject(Fault::on(
            FsOp::Append,
            FaultKind::ShortWrite,
            ".log",
            false,
        ));
        assert!(db.checkpoint(dir.path().join("checkpoint")).is_err());
        assert_eq!(fs.injected(), 1);
        let e = db.put("c", "3").unwrap_err();
        assert!(matches!(e, crate::Error::ReadOnly(_)), "{e}");
        let _ = db.close();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        assert_eq!(db.get("a").unwrap().unwrap(), "1");
        assert_eq!(db.get("c").unwrap(), None);
    }

    /// A close on another clone while a checkpoint runs waits for it to stop. It used to
    /// let the directory go at once: the next open of it compacted away the tables the
    /// checkpoint's cut names, and the checkpoint failed to link them ("not found"). A
    /// checkpoint asked for while close waits is refused, and makes no directory; the
    /// running one gives up before its first link.
    #[test]
    fn close_waits_for_a_running_checkpoint() {
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options {
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts()).unwrap();
        // Two overlapping tables (a compaction rewrites them) and a write in the WAL.
        for round in 0..2u32 {
            for i in 0..200u32 {
                db.put(format!("k{i:03}"), format!("v{round}-{i}")).unwrap();
            }
            db.flush().unwrap();
        }
        db.put("in-wal", "w").unwrap();
        let cp = dir.path().join("checkpoint");
        let late = dir.path().join("late");
        // What the close did first: "waiting" for the checkpoint, or "returned".
        let first = Arc::new(parking_lot::Mutex::new(None));
        let closer = Arc::new(parking_lot::Mutex::new(None));
        let (live, path, late_cp, seen, joined) = (
            db.clone(),
            dir.path().to_path_buf(),
            late.clone(),
            first.clone(),
            closer.clone(),
        );
        set(Point::CheckpointAfterCut, move || {
            let (tx, rx) = mpsc::channel();
            let (waiting, closing) = (tx.clone(), live.clone());
            *joined.lock() = Some(std::thread::spawn(move || {
                set(Point::CloseWaitsForJobs, move || {
                    let _ = waiting.send("waiting");
                });
                let r = closing.close();
                let _ = tx.send("returned");
                r
            }));
            let what = rx.recv().unwrap();
            *seen.lock() = Some(what);
            if what == "returned" {
                // The directory is free: another open takes it and compacts.
                let next = Db::open(&path, opts()).unwrap();
                next.compact().unwrap();
                next.close().unwrap();
            } else {
                let e = live.checkpoint(&late_cp).unwrap_err();
                assert!(matches!(e, crate::Error::Closed), "{e}");
            }
        });
        let r = db.checkpoint(&cp);
        assert_eq!(
            *first.lock(),
            Some("waiting"),
            "close returned while a checkpoint still ran (the checkpoint: {r:?})"
        );
        assert!(matches!(r, Err(crate::Error::Closed)), "{r:?}");
        let closed = closer.lock().take().unwrap().join().unwrap();
        closed.unwrap();
        assert!(!late.exists(), "a refused checkpoint made its directory");
        assert_eq!(names_but_the_claim(&cp), Vec::<String>::new());
        let db = Db::open(dir.path(), opts()).unwrap();
        for i in 0..200u32 {
            assert_eq!(
                db.get(format!("k{i:03}")).unwrap().unwrap(),
                format!("v1-{i}")
            );
        }
        assert_eq!(db.get("in-wal").unwrap().unwrap(), "w");
    }

    /// The names in `dir` other than a checkpoint's lock file.
    fn names_but_the_claim(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != CLAIM)
            .collect()
    }

    /// A close begun on another clone after any step of a checkpoint's linking and copying
    /// (the last included) makes it give up before the next one, with `Error::Closed`, and
    /// remove what it made: the close waits only for the step in flight. The checkpoint
    /// used to link and copy every remaining file, and write its manifest, while the close
    /// waited. The live database reopens whole, and a checkpoint of it into the same
    /// directory then works.
    #[test]
    fn a_close_stops_a_checkpoint_between_steps() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::mpsc;
        let opts = || Options {
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        // Three tables (one short of a compaction), and a WAL of three chunks of the copy
        // (a chunk is 1 MiB).
        let fill = |db: &Db| {
            for t in 0..3u32 {
                for i in 0..100u32 {
                    db.put(format!("t{t}-{i:03}"), format!("v{i}")).unwrap();
                }
                db.flush().unwrap();
            }
            for i in 0..40u32 {
                db.put(format!("w{i:02}"), vec![i as u8; 64 << 10]).unwrap();
            }
        };
        let holds_all = |db: &Db| {
            for t in 0..3u32 {
                for i in 0..100u32 {
                    let v = db.get(format!("t{t}-{i:03}")).unwrap();
                    assert_eq!(v.unwrap(), format!("v{i}"));
                }
            }
            for i in 0..40u32 {
                assert_eq!(db.get(format!("w{i:02}")).unwrap().unwrap().len(), 64 << 10);
            }
        };
        const STEPS: usize = 3 + 3;
        // Each run on a thread of its own: hooks are the thread's, and a checkpoint that
        // stops early leaves some unrun.
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), opts()).unwrap();
            fill(&db);
            let steps = Arc::new(AtomicUsize::new(0));
            for _ in 0..STEPS + 1 {
                let steps = steps.clone();
                set(Point::CheckpointStepDone, move || {
                    steps.fetch_add(1, Ordering::Relaxed);
                });
            }
            db.checkpoint(dir.path().join("checkpoint")).unwrap();
            assert_eq!(
                steps.load(Ordering::Relaxed),
                STEPS,
                "the steps of a checkpoint"
            );
        })
        .join()
        .unwrap();
        for at in 1..=STEPS {
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                let db = Db::open(dir.path(), opts()).unwrap();
                fill(&db);
                let cp = dir.path().join("checkpoint");
                // Steps done once the close began.
                let after = Arc::new(AtomicUsize::new(0));
                let closer = Arc::new(parking_lot::Mutex::new(None));
                for step in 1..=STEPS {
                    let (after, live, joined) = (after.clone(), db.clone(), closer.clone());
                    set(Point::CheckpointStepDone, move || {
                        if step > at {
                            after.fetch_add(1, Ordering::Relaxed);
                        } else if step == at {
                            // Back once the close is under way (it has set `closing` and
                            // waits for this checkpoint).
                            let (tx, rx) = mpsc::channel();
                            *joined.lock() = Some(std::thread::spawn(move || {
                                set(Point::CloseWaitsForJobs, move || {
                                    let _ = tx.send(());
                                });
                                live.close()
                            }));
                            rx.recv_timeout(std::time::Duration::from_secs(60))
                                .expect("the close never waited for the checkpoint");
                        }
                    });
                }
                let r = db.checkpoint(&cp);
                let done_after = after.load(Ordering::Relaxed);
                assert!(
                    matches!(r, Err(crate::Error::Closed)),
                    "close begun after step {at}: {r:?}, {done_after} steps after"
                );
                assert!(
                    done_after <= 1,
                    "close begun after step {at}: {done_after} steps after it"
                );
                closer.lock().take().unwrap().join().unwrap().unwrap();
                assert_eq!(names_but_the_claim(&cp), Vec::<String>::new(), "step {at}");
                let db = Db::open(dir.path(), opts()).unwrap();
                holds_all(&db);
                db.checkpoint(&cp).unwrap();
                drop(db);
                holds_all(&Db::open(&cp, opts()).unwrap());
            })
            .join()
            .unwrap();
        }
    }

    /// A database whose 200 keys are in a table.
    fn two_hundred_keys_in_a_table() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        for i in 0..200u32 {
            db.put(format!("k{i:03}"), format!("v{i}")).unwrap();
        }
        db.flush().unwrap();
        (dir, db)
    }

    fn reads_two_hundred_keys(db: &Db) {
        for i in 0..200u32 {
            assert_eq!(
                db.get(format!("k{i:03}")).unwrap().unwrap(),
                format!("v{i}")
            );
        }
    }

    /// Every table file of `dir` with its length.
    fn tables(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
        let mut t: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .map(|p| {
                let len = std::fs::metadata(&p).unwrap().len();
                (p, len)
            })
            .collect();
        t.sort();
        t
    }

    /// Two checkpoints into one directory at once: the second is refused while the first
    /// holds the directory. Both used to pass the empty-directory check; the second linked
    /// every table, and the first, finding the names taken, fell back to copying over them,
    /// which truncated the live tables the names linked to (the process died of SIGBUS on
    /// the next read of a table's map, and the tables were empty on disk).
    #[test]
    fn a_second_checkpoint_into_a_directory_being_written_is_refused() {
        let (dir, db) = two_hundred_keys_in_a_table();
        let live_tables = tables(dir.path());
        assert!(!live_tables.is_empty());
        let cp = dir.path().join("checkpoint");
        let (live, target) = (db.clone(), cp.clone());
        set(Point::CheckpointAfterCut, move || {
            let e = live.checkpoint(&target).unwrap_err();
            assert!(matches!(e, crate::Error::Busy { .. }), "{e}");
        });
        db.checkpoint(&cp).unwrap();
        assert_eq!(tables(dir.path()), live_tables, "live tables changed");
        reads_two_hundred_keys(&db);
        let copy = Db::open(&cp, Options::default()).unwrap();
        assert_eq!(copy.range(..).count(), 200);
    }

    /// A name the checkpoint is about to link to, taken meanwhile by something else (here
    /// another hard link to the live table): the checkpoint fails, naming it, and neither
    /// copies over it nor truncates the file it names.
    #[test]
    fn a_taken_name_in_the_checkpoint_directory_is_never_written_over() {
        let (dir, db) = two_hundred_keys_in_a_table();
        let live_tables = tables(dir.path());
        let cp = dir.path().join("checkpoint");
        let (first, target) = (live_tables[0].0.clone(), cp.clone());
        set(Point::CheckpointAfterCut, move || {
            std::fs::hard_link(&first, target.join(first.file_name().unwrap())).unwrap();
        });
        let e = db.checkpoint(&cp).unwrap_err();
        assert!(
            matches!(&e, crate::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(tables(dir.path()), live_tables, "live tables changed");
        reads_two_hundred_keys(&db);
        // The failed attempt cleared the directory (the stray link included): a retry works.
        db.checkpoint(&cp).unwrap();
        let copy = Db::open(&cp, Options::default()).unwrap();
        assert_eq!(copy.range(..).count(), 200);
    }

    /// A checkpoint that fails leaves its directory empty but for its lock file, so a retry
    /// can use it.
    #[test]
    fn a_failed_checkpoint_leaves_an_empty_directory_to_retry_in() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = Options {
            fs: Arc::new(fs.clone()),
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts.clone()).unwrap();
        db.put("a", "1").unwrap();
        db.flush().unwrap();
        db.put("b", "2").unwrap();
        let cp = dir.path().join("checkpoint");
        fs.inject(Fault::on(FsOp::SyncDir, FaultKind::Io, "checkpoint", false));
        assert!(db.checkpoint(&cp).is_err());
        assert_eq!(fs.injected(), 1);
        let left = names_but_the_claim(&cp);
        assert!(left.is_empty(), "left behind: {left:?}");
        db.checkpoint(&cp).unwrap();
        let copy = Db::open(&cp, Options::default()).unwrap();
        assert_eq!(copy.get("a").unwrap().unwrap(), "1");
        assert_eq!(copy.get("b").unwrap().unwrap(), "2");
    }

    /// A destination inside the database directory under a name the database takes for
    /// one of its own files is refused, and nothing is made there. A checkpoint into
    /// `DIR/999999.log` made a directory the next open took for a WAL, and refused the
    /// database for it.
    #[test]
    fn a_destination_named_like_a_database_file_is_refused() {
        let (dir, db) = two_hundred_keys_in_a_table();
        let before: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for name in [
            "999999.log",
            "000123.sst",
            "MANIFEST-000077",
            "CURRENT",
            "CURRENT.tmp",
            "LOCK",
            "000123.sst/inner",
            "other/../999999.log",
        ] {
            let e = db.checkpoint(dir.path().join(name)).unwrap_err();
            assert!(
                matches!(
                    &e,
                    crate::Error::InvalidOption {
                        name: "checkpoint directory",
                        ..
                    }
                ),
                "{name}: {e}"
            );
        }
        let after: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        // Nothing new; a name may be gone (the flush deletes the WAL it covered after
        // `flush()` returns), so the counts of names need not match.
        let made: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
        assert!(made.is_empty(), "made {made:?}");
        // Other names inside it are fine, as is a path that only passes through it.
        db.checkpoint(dir.path().join("backups").join("999999.log"))
            .unwrap();
        db.close().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        reads_two_hundred_keys(&db);
    }

    /// A checkpoint that fails after its CURRENT was written removes CURRENT durably
    /// before the files it names: whatever part of the cleanup a power cut keeps, a CURRENT
    /// left in the directory opens. The cleanup used to go in name order, tables and WALs
    /// before CURRENT, with no directory fsync, so a cut could keep CURRENT over missing
    /// tables: a copy that does not open, which the controller took for a complete one.
    #[test]
    fn a_failed_checkpoint_never_leaves_a_current_over_missing_files() {
        let mut checked = 0;
        for skip in 0..4u64 {
            for keep in 0..40usize {
                let root = tempfile::tempdir().unwrap();
                let (dir, cp) = (root.path().join("db"), root.path().join("cp"));
                let fs = FaultFs::new();
                let opts = || Options {
                    fs: Arc::new(fs.clone()),
                    idle_memtable_flush_after: None,
                    ..Options::default()
                };
                let db = Db::open(&dir, opts()).unwrap();
                for i in 0..3 {
                    for j in 0..50 {
                        db.put(format!("k{i}{j:03}"), "v").unwrap();
                    }
                    db.flush().unwrap();
                }
                db.put("in-wal", "v").unwrap();
                db.sync_wal().unwrap();
                let mut f = Fault::on(FsOp::SyncDir, FaultKind::Io, "cp", true);
                f.skip = skip;
                fs.inject(f);
                if db.checkpoint(&cp).is_ok() {
                    continue;
                }
                fs.fail_all_syncs();
                drop(db);
                fs.lose_unsynced_journaled(
                    |_| false,
                    |d, n| if d == cp.as_path() { keep.min(n) } else { n },
                )
                .unwrap();
                fs.clear();
                if cp.join("CURRENT").exists() {
                    checked += 1;
                    let copy = Db::open_read_only(&cp, Options::default())
                        .unwrap_or_else(|e| panic!("skip {skip}, keep {keep}: {e}"));
                    assert_eq!(copy.get("in-wal").unwrap().as_deref(), Some(&b"v"[..]));
                }
            }
        }
        assert!(checked > 0, "no case left a CURRENT behind");
    }
}
