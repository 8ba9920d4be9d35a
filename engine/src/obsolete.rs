//! Deleting obsolete table files off the foreground.
//!
//! A table a compaction replaced is deleted when the last view holding it lets go, and that
//! last holder is often a reader: a point read or an iterator whose view outlived the
//! compaction. Unlinking a table can wait on the file system for milliseconds (ext4 mounted
//! with `discard` trims the freed extents before `unlink` returns: 1.6–6.8 ms per table
//! seen inside point reads under `readwhilewriting`), so while the database is open the
//! deletion is handed to a thread of its own, `sluice-files`. Before that thread starts and
//! once the database is shutting down, a file is deleted by whoever lets go of it, as
//! before. A file still queued when the process dies is an orphan, which the next open
//! removes; the shutdown that stops the thread waits for it to delete everything queued.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::fs::Fs;

/// Deletes one file, best effort: a file left behind is an orphan that the next open
/// removes.
type Remove = Box<dyn Fn(&Path) + Send + Sync>;

pub(crate) struct FileDeleter {
    remove: Remove,
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for FileDeleter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileDeleter")
    }
}

#[derive(Default)]
struct State {
    queue: Vec<PathBuf>,
    /// Whether a thread takes deletions: between [`FileDeleter::start`] and
    /// [`FileDeleter::stop`].
    running: bool,
}

impl FileDeleter {
    pub fn new(fs: Arc<dyn Fs>) -> Arc<FileDeleter> {
        Self::with_remove(Box::new(move |p| {
            let _ = fs.remove(p);
        }))
    }

    fn with_remove(remove: Remove) -> Arc<FileDeleter> {
        Arc::new(FileDeleter {
            remove,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    /// Deletes `path`: queued for the deleting thread while it runs, here otherwise.
    pub fn delete(&self, path: PathBuf) {
        {
            let mut st = self.state.lock();
            if st.running {
                st.queue.push(path);
                self.wake.notify_one();
                return;
            }
        }
        (self.remove)(&path);
    }

    /// From now on deletions are queued for [`run`](Self::run).
    pub fn start(&self) {
        self.state.lock().running = true;
    }

    /// From now on deletions happen where they are asked for; `run` deletes what is queued
    /// and returns.
    pub fn stop(&self) {
        self.state.lock().running = false;
        self.wake.notify_all();
    }

    /// The deleting thread's loop: returns once stopped with nothing left queued. Should a
    /// removal panic (`Fs` is the caller's to implement), deletions go back to being done
    /// where they are asked for, rather than queue for a thread that is gone.
    pub fn run(&self) {
        struct Stopped<'a>(&'a FileDeleter);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                self.0.state.lock().running = false;
            }
        }
        let _stopped = Stopped(self);
        loop {
            let batch = {
                let mut st = self.state.lock();
                while st.queue.is_empty() {
                    if !st.running {
                        return;
                    }
                    self.wake.wait_for(&mut st, Duration::from_millis(100));
                }
                std::mem::take(&mut st.queue)
            };
            for p in batch {
                (self.remove)(&p);
            }
        }
    }

    /// Files queued and not yet deleted.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.state.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    fn files(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        let ps: Vec<_> = (0..n).map(|i| d.path().join(format!("{i}.sst"))).collect();
        for p in &ps {
            std::fs::write(p, b"x").unwrap();
        }
        (d, ps)
    }

    #[test]
    fn deletes_inline_until_started_and_after_stopped() {
        let (_d, ps) = files(2);
        let del = FileDeleter::new(Arc::new(StdFs));
        del.delete(ps[0].clone());
        assert!(!ps[0].exists(), "not started: deleted where asked");
        del.start();
        del.stop();
        del.delete(ps[1].clone());
        assert!(!ps[1].exists(), "stopped: deleted where asked");
    }

    #[test]
    fn a_running_deleter_queues_and_its_thread_deletes_everything_before_it_returns() {
        let (_d, ps) = files(50);
        let del = FileDeleter::new(Arc::new(StdFs));
        del.start();
        for p in &ps {
            del.delete(p.clone());
        }
        assert!(
            ps.iter().all(|p| p.exists()),
            "queued, not deleted, while no thread runs"
        );
        assert_eq!(del.pending(), 50);
        let t = {
            let del = del.clone();
            std::thread::spawn(move || del.run())
        };
        del.stop();
        t.join().unwrap();
        assert!(ps.iter().all(|p| !p.exists()), "stop drains the queue");
        assert_eq!(del.pending(), 0);
    }

    #[test]
    fn a_panicking_removal_sends_later_deletions_back_to_their_callers() {
        let (_d, ps) = files(2);
        let del = FileDeleter::with_remove(Box::new(|p| {
            if p.ends_with("0.sst") {
                panic!("removal panics");
            }
            let _ = std::fs::remove_file(p);
        }));
        del.start();
        let t = {
            let del = del.clone();
            std::thread::spawn(move || del.run())
        };
        del.delete(ps[0].clone());
        assert!(t.join().is_err(), "the removal panicked on the thread");
        del.delete(ps[1].clone());
        assert!(
            !ps[1].exists(),
            "deleted where asked, not queued for a thread that is gone"
        );
    }
}
