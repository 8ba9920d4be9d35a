//! The open table files: at most `max_open_files` descriptors, however many tables there
//! are.
//!
//! An open [`Table`](crate::sst::Table) keeps its index and filter in memory, but not its
//! file descriptor: each read of its blocks asks [`TableFiles`] for the file, which opens it
//! if it is not among those it keeps, and closes another when that makes one too many
//! (which ones stay is the cache's choice: recently and often read ones). A database of
//! 879 tables opens, reads and compacts under a descriptor limit of 128, where one
//! descriptor per table could not.
//!
//! A file evicted while a read is in it stays open until that read returns, so the count
//! can pass the cap by the reads in flight. A table file is deleted only once its last
//! `Table` has dropped (`Table`'s drop), so a table of this process can always reopen its
//! file. Two cases where another process may delete a file a table still needs:
//!
//! - A read-only handle on a live directory: the writer deletes tables it compacted away
//!   whenever it likes. Such a handle keeps every table's file open for as long as the
//!   table lives ([`TableFiles::pinned`]), as every table did before the cap.
//! - After the database's close ([`TableFiles::close`]), another open of the directory
//!   deletes the tables it finds unnamed. So close closes every file, and a read that
//!   would need one afterwards (an iterator that outlived the close) fails instead of
//!   reopening a path that may be gone; the database's iterators answer
//!   [`crate::Error::Closed`] from then on.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;

use crate::fs::{Fs, RandomRead};

/// Descriptors kept for table files when [`crate::Options::max_open_files`] is `None`: a
/// half of the process's soft `RLIMIT_NOFILE`, leaving the rest to WALs, the manifest, the
/// tables flushes and compactions write, and the embedding program.
pub fn default_max_open_files() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let half = soft.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    half.clamp(MIN_DEFAULT, MAX_DEFAULT)
}

/// Bounds of [`default_max_open_files`]: below 32 even a small database reopens files on
/// most reads; past a million the cache's bookkeeping is the larger cost.
const MIN_DEFAULT: usize = 32;
const MAX_DEFAULT: usize = 1 << 20;

pub(crate) struct TableFiles {
    fs: Arc<dyn Fs>,
    /// Open files by table id (the file number).
    open: Cache<u64, Arc<dyn RandomRead>>,
    /// Each table keeps its own file open instead ([`TableFiles::pinned`]), counted here.
    pinned: Option<AtomicUsize>,
    closed: AtomicBool,
    /// Files opened, ever: a count that climbs with every read means the cap is too small
    /// for the tables read.
    opens: AtomicU64,
}

impl TableFiles {
    /// Keeps at most `capacity` files open (at least one).
    pub fn new(fs: Arc<dyn Fs>, capacity: usize) -> Arc<TableFiles> {
        Self::build(fs, capacity, false)
    }

    /// Lets each table keep its file open for as long as it lives: for a read-only handle,
    /// whose tables a live writer may delete at any time (an open descriptor still reads a
    /// deleted file).
    pub fn pinned(fs: Arc<dyn Fs>) -> Arc<TableFiles> {
        Self::build(fs, 1, true)
    }

    fn build(fs: Arc<dyn Fs>, capacity: usize, pinned: bool) -> Arc<TableFiles> {
        let capacity = capacity.max(1);
        // The cache splits its capacity among its shards, rounding each share up; with a
        // share rounded down instead, the shards together stay within the cap.
        // Shards of at least 64 files, at most 16 of them, a power of two.
        let shards = 1 << (capacity / 64).clamp(1, 16).ilog2();
        let per_shard = capacity / shards;
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(per_shard * shards)
            .weight_capacity((per_shard * shards) as u64)
            .build()
            .expect("every field is set");
        Arc::new(TableFiles {
            fs,
            open: Cache::with_options(
                options,
                quick_cache::UnitWeighter,
                Default::default(),
                Default::default(),
            ),
            pinned: pinned.then(|| AtomicUsize::new(0)),
            closed: AtomicBool::new(false),
            opens: AtomicU64::new(0),
        })
    }

    /// The reader a table of id `id`, whose file is `path`, reads with. Opens the file now,
    /// so a file that cannot be opened fails here, at the table's open.
    pub fn reader(self: &Arc<Self>, path: &Path, id: u64) -> io::Result<Box<dyn RandomRead>> {
        if let Some(count) = &self.pinned {
            let file = self.open_file(path)?;
            count.fetch_add(1, Ordering::Relaxed);
            return Ok(Box::new(PinnedFile {
                files: self.clone(),
                file,
            }));
        }
        let r = CachedFile {
            files: self.clone(),
            id,
            path: path.to_path_buf(),
        };
        r.with(|_| Ok(()))?;
        Ok(Box::new(r))
    }

    /// Files open now (not counting any an evicting read still holds).
    pub fn open_count(&self) -> usize {
        match &self.pinned {
            Some(count) => count.load(Ordering::Relaxed),
            None => self.open.len(),
        }
    }

    /// Files opened since the database opened.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Closes every file kept open (a pinned table's when the table drops), and fails
    /// every read from now on: see the module's documentation.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.open.clear();
    }

    /// Whether [`TableFiles::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The error of a read after close.
    fn closed_error() -> io::Error {
        io::Error::other("the database was closed")
    }

    fn open_file(&self, path: &Path) -> io::Result<Arc<dyn RandomRead>> {
        let f = self.fs.open_random(path)?;
        self.opens.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::from(f))
    }
}

/// A table's reader: its file, fetched from [`TableFiles`] for each read.
struct CachedFile {
    files: Arc<TableFiles>,
    id: u64,
    path: PathBuf,
}

impl CachedFile {
    fn with<R>(&self, read: impl FnOnce(&dyn RandomRead) -> io::Result<R>) -> io::Result<R> {
        let files = &self.files;
        if files.is_closed() {
            return Err(TableFiles::closed_error());
        }
        let f = files
            .open
            .get_or_insert_with(&self.id, || files.open_file(&self.path))?;
        if files.is_closed() {
            // Closed while this read opened the file: keep nothing open past the close.
            files.open.remove(&self.id);
        }
        read(f.as_ref())
    }
}

impl RandomRead for CachedFile {
    fn read_exact_at_into(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
        self.with(|f| f.read_exact_at_into(buf, len, offset))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|f| f.read_exact_at(buf, offset))
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        // The table is gone: its file need not stay open (nor keep a deleted file's blocks
        // allocated on disk).
        self.files.open.remove(&self.id);
    }
}

/// A table's reader that keeps its own file open ([`TableFiles::pinned`]).
struct PinnedFile {
    files: Arc<TableFiles>,
    file: Arc<dyn RandomRead>,
}

impl PinnedFile {
    fn check(&self) -> io::Result<()> {
        match self.files.is_closed() {
            true => Err(TableFiles::closed_error()),
            false => Ok(()),
        }
    }
}

impl RandomRead for PinnedFile {
    fn read_exact_at_into(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
        self.check()?;
        self.file.read_exact_at_into(buf, len, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check()?;
        self.file.read_exact_at(buf, offset)
    }
}

impl Drop for PinnedFile {
    fn drop(&mut self) {
        if let Some(count) = &self.files.pinned {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    fn files(dir: &Path, n: u64) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("{i}.bin"));
                std::fs::write(&p, i.to_le_bytes()).unwrap();
                p
            })
            .collect()
    }

    fn read(r: &dyn RandomRead) -> u64 {
        let mut b = [0u8; 8];
        r.read_exact_at(&mut b, 0).unwrap();
        u64::from_le_bytes(b)
    }

    /// However many files are read, at most `capacity` stay open, and each read still reads
    /// its own file; a file read again after eviction is opened again.
    #[test]
    fn at_most_capacity_files_stay_open() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 300);
        for cap in [1, 7, 64, 100, 1000] {
            let tf = TableFiles::new(Arc::new(StdFs), cap);
            let readers: Vec<_> = paths
                .iter()
                .enumerate()
                .map(|(i, p)| tf.reader(p, i as u64).unwrap())
                .collect();
            for round in 0..3 {
                for (i, r) in readers.iter().enumerate() {
                    assert_eq!(read(r.as_ref()), i as u64, "cap {cap} round {round}");
                    assert!(tf.open_count() <= cap, "cap {cap}: {}", tf.open_count());
                }
            }
            if cap >= paths.len() {
                assert_eq!(tf.opens(), paths.len() as u64, "cap {cap}: all stay open");
            } else {
                assert!(
                    tf.opens() > paths.len() as u64,
                    "cap {cap}: evicted files reopen"
                );
            }
            drop(readers);
            assert_eq!(
                tf.open_count(),
                0,
                "cap {cap}: a dropped table's file closes"
            );
        }
    }

    /// After `close`, nothing stays open, and reads fail rather than reopen a path another
    /// open of the directory may have deleted.
    #[test]
    fn a_closed_cache_keeps_nothing_open_and_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 10);
        let tf = TableFiles::new(Arc::new(StdFs), 100);
        let readers: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| tf.reader(p, i as u64).unwrap())
            .collect();
        assert_eq!(tf.open_count(), 10);
        tf.close();
        assert_eq!(tf.open_count(), 0);
        for r in &readers {
            let mut b = [0u8; 8];
            let e = r.read_exact_at(&mut b, 0).unwrap_err();
            assert!(e.to_string().contains("closed"), "{e}");
        }
        assert_eq!(tf.open_count(), 0);
        assert_eq!(tf.opens(), 10);
    }

    /// Pinned: every table keeps its file open, whatever the count, and still reads it
    /// once another process deleted it.
    #[test]
    fn pinned_tables_keep_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 50);
        let tf = TableFiles::pinned(Arc::new(StdFs));
        let readers: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| tf.reader(p, i as u64).unwrap())
            .collect();
        assert_eq!(tf.open_count(), 50);
        for p in &paths {
            std::fs::remove_file(p).unwrap();
        }
        for (i, r) in readers.iter().enumerate() {
            assert_eq!(read(r.as_ref()), i as u64);
        }
        assert_eq!(tf.opens(), 50);
        drop(readers);
        assert_eq!(tf.open_count(), 0);
    }

    /// A file that cannot be opened fails at the table's open; one removed behind a reader
    /// whose file was evicted fails that read with an error, not a panic.
    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 3);
        let tf = TableFiles::new(Arc::new(StdFs), 1);
        assert!(tf.reader(&dir.path().join("none"), 9).is_err());
        let a = tf.reader(&paths[0], 0).unwrap();
        std::fs::remove_file(&paths[0]).unwrap();
        let mut buf = [0u8; 8];
        a.read_exact_at(&mut buf, 0).unwrap(); // still open
        tf.open.remove(&0);
        let e = a.read_exact_at(&mut buf, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
