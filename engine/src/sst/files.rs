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
//!   whenever it likes. Such a handle keeps each table's file open for as long as the
//!   table lives ([`TableFiles::pinned`]), up to most of the cap; the tables past that
//!   share the rest of it, and a read that finds such a table's file deleted fails with
//!   an error saying so (a new handle reads the writer's current tables). On a directory
//!   no process writes, nothing is deleted and every read succeeds.
//! - After the database's close ([`TableFiles::close`]), another open of the directory
//!   deletes the tables it finds unnamed. So close closes every file, and a read that
//!   would need one afterwards (an iterator that outlived the close) fails instead of
//!   reopening a path that may be gone; the database's iterators answer
//!   [`crate::Error::Closed`] from then on.
//!
//! A read-only handle's table whose file is opened again requires the file the table
//! first opened: the same device, inode and length, or, where the device or inode changed,
//! the same length and the same last [`TAIL_LEN`] bytes (a table's footer and the checksum
//! of its properties block, which names its key and seqno ranges). A file put in its place
//! since (a directory restored or copied over while a tool reads it) would answer with
//! another table's blocks, so its reads fail instead; a byte-identical copy, or the same
//! file on a file system whose inode numbers are not stable across opens (CIFS with
//! `noserverino`, some FUSE ones), reads on. A writer's tables are not checked: the writer
//! holds the directory's lock and owns its files.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;

use crate::fs::{FileIdentity, Fs, RandomRead};

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
    /// Tables that keep their own file open instead ([`TableFiles::pinned`]): how many do,
    /// and how many may.
    pinned: Option<Pins>,
    closed: AtomicBool,
    /// Files opened, ever: a count that climbs with every read means the cap is too small
    /// for the tables read.
    opens: AtomicU64,
    /// The descriptor budget it was built with ([`crate::Options::max_open_files`]).
    budget: usize,
}

impl TableFiles {
    /// Keeps at most `capacity` files open (at least one).
    pub fn new(fs: Arc<dyn Fs>, capacity: usize) -> Arc<TableFiles> {
        Self::build(fs, capacity, None, capacity)
    }

    /// Lets each table keep its file open for as long as it lives, up to most of
    /// `capacity` tables: for a read-only handle, whose tables a live writer may delete at
    /// any time (an open descriptor still reads a deleted file). Tables opened past that
    /// share the rest of `capacity` as [`TableFiles::new`]'s do, and a read that finds one's
    /// file gone fails naming it (see [`vanished`]).
    pub fn pinned(fs: Arc<dyn Fs>, capacity: usize) -> Arc<TableFiles> {
        let capacity = capacity.max(2);
        // A sixteenth for the tables past the pinned ones (at least one, at most 64
        // descriptors): enough to read them, small beside the pinned ones.
        let shared = (capacity / 16).clamp(1, 64);
        Self::build(fs, shared, Some(capacity - shared), capacity)
    }

    fn build(
        fs: Arc<dyn Fs>,
        capacity: usize,
        pin_limit: Option<usize>,
        budget: usize,
    ) -> Arc<TableFiles> {
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
            pinned: pin_limit.map(|limit| Pins {
                count: AtomicUsize::new(0),
                limit,
            }),
            closed: AtomicBool::new(false),
            opens: AtomicU64::new(0),
            budget,
        })
    }

    /// The descriptor budget it was built with: `max_open_files`, fixed at the database's
    /// open (its default follows the process's open-file limit then).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The reader a table of id `id`, whose file is `path`, reads with. Opens the file now,
    /// so a file that cannot be opened fails here, at the table's open.
    pub fn reader(self: &Arc<Self>, path: &Path, id: u64) -> io::Result<Box<dyn RandomRead>> {
        if let Some(pins) = &self.pinned {
            if pins.take() {
                let file = self.open_file(path).inspect_err(|_| pins.give_back())?;
                return Ok(Box::new(PinnedFile {
                    files: self.clone(),
                    file,
                }));
            }
        }
        let mut r = CachedFile {
            files: self.clone(),
            id,
            path: path.to_path_buf(),
            first: None,
        };
        // Opened now, so that a file that cannot be opened fails the table's open. Only a
        // read-only handle checks the file it opens again (see the module's docs).
        let checked = self.pinned.is_some();
        r.first = r.with(|f| match f.identity().filter(|_| checked) {
            Some(id) => Ok(Some((id, tail(f, id.len)?))),
            None => Ok(None),
        })?;
        Ok(Box::new(r))
    }

    /// Files open now (not counting any an evicting read still holds).
    pub fn open_count(&self) -> usize {
        let pinned = self
            .pinned
            .as_ref()
            .map_or(0, |p| p.count.load(Ordering::Relaxed));
        pinned + self.open.len()
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

/// How many tables keep their own file open, of how many may ([`TableFiles::pinned`]).
struct Pins {
    count: AtomicUsize,
    limit: usize,
}

impl Pins {
    /// Claims a pin if one is left.
    fn take(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The error of a read-only handle's table whose file a live writer deleted after the
/// handle opened (the table was among those past the pinned ones).
fn vanished(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{}: this read-only handle's table file was deleted (a process writing the \
             directory compacted it away after the handle opened, and the handle keeps more \
             tables than it may hold open); open a new read-only handle: {e}",
            path.display()
        ),
    )
}

/// The error of a read-only handle's table whose file, opened again, is not the one the
/// table was read from: something replaced the file at its path (a directory restored or
/// copied over while the handle reads). File numbers are never reused, so the engine
/// itself never does this.
fn replaced(path: &Path, was: FileIdentity, now: FileIdentity, how: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: this table file was replaced since the read-only handle opened it (it was \
             {was}; it is {now}{how}), so it is not the table the handle read; open a new \
             read-only handle",
            path.display()
        ),
    )
}

/// Bytes at the end of a file that a read-only handle compares when a table's file, opened
/// again, has another device or inode number: a table's properties block trailer (its
/// checksum) and footer (the metadata blocks' places).
const TAIL_LEN: usize = crate::sst::format::BLOCK_TRAILER_LEN + crate::sst::format::FOOTER_LEN;

/// The last [`TAIL_LEN`] bytes of `f`, of `len` bytes (all of them if fewer).
fn tail(f: &dyn RandomRead, len: u64) -> io::Result<Vec<u8>> {
    let n = len.min(TAIL_LEN as u64);
    let mut buf = vec![0u8; n as usize];
    f.read_exact_at(&mut buf, len - n)?;
    Ok(buf)
}

/// A table's reader: its file, fetched from [`TableFiles`] for each read.
struct CachedFile {
    files: Arc<TableFiles>,
    id: u64,
    path: PathBuf,
    /// The file's identity and last bytes when the table opened, kept by a read-only
    /// handle only: a file opened again must be the same file (see the module's docs).
    first: Option<(FileIdentity, Vec<u8>)>,
}

impl CachedFile {
    fn with<R>(&self, read: impl FnOnce(&dyn RandomRead) -> io::Result<R>) -> io::Result<R> {
        let files = &self.files;
        if files.is_closed() {
            return Err(TableFiles::closed_error());
        }
        let f = files
            .open
            .get_or_insert_with(&self.id, || self.open_again())
            .map_err(
                |e| match files.pinned.is_some() && e.kind() == io::ErrorKind::NotFound {
                    true => vanished(&self.path, e),
                    false => e,
                },
            )?;
        if files.is_closed() {
            // Closed while this read opened the file: keep nothing open past the close.
            files.open.remove(&self.id);
        }
        read(f.as_ref())
    }

    /// Opens the table's file, which must be the file the table opened first.
    fn open_again(&self) -> io::Result<Arc<dyn RandomRead>> {
        let f = self.files.open_file(&self.path)?;
        match (&self.first, f.identity()) {
            (Some((was, _)), Some(now)) if was.len != now.len => {
                Err(replaced(&self.path, *was, now, ""))
            }
            // Renumbered, or a copy: the same table if its last bytes are the same.
            (Some((was, bytes)), Some(now)) if *was != now => match tail(f.as_ref(), now.len) {
                Ok(b) if b == *bytes => Ok(f),
                Ok(_) => Err(replaced(
                    &self.path,
                    *was,
                    now,
                    ", and its last bytes differ",
                )),
                Err(e) => Err(e),
            },
            _ => Ok(f),
        }
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
        if let Some(pins) = &self.files.pinned {
            pins.give_back();
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

    /// A reader of each of `paths`, table ids in order.
    fn readers(tf: &Arc<TableFiles>, paths: &[PathBuf]) -> Vec<Box<dyn RandomRead>> {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| tf.reader(p, i as u64).unwrap())
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
            let readers = readers(&tf, &paths);
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
        let readers = readers(&tf, &paths);
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

    /// Pinned: every table keeps its file open, up to the limit, and still reads it once
    /// another process deleted it.
    #[test]
    fn pinned_tables_keep_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 50);
        let tf = TableFiles::pinned(Arc::new(StdFs), 54);
        let readers = readers(&tf, &paths);
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

    /// Past the pinned ones, tables share the rest of the cap: the count stays within it,
    /// each table still reads its own file, and one whose file was deleted fails with an
    /// error that says why (the pinned ones read on).
    #[test]
    fn tables_past_the_pin_limit_share_the_rest_of_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 40);
        let tf = TableFiles::pinned(Arc::new(StdFs), 16);
        let readers = readers(&tf, &paths);
        assert!(tf.open_count() <= 16, "{}", tf.open_count());
        for round in 0..2 {
            for (i, r) in readers.iter().enumerate() {
                assert_eq!(read(r.as_ref()), i as u64, "round {round}");
                assert!(tf.open_count() <= 16, "{}", tf.open_count());
            }
        }
        for p in &paths {
            std::fs::remove_file(p).unwrap();
        }
        // 15 pinned; of the 25 others, the one whose file is still open reads.
        let mut failed = 0;
        for (i, r) in readers.iter().enumerate() {
            let mut b = [0u8; 8];
            match r.read_exact_at(&mut b, 0) {
                Ok(()) => assert_eq!(u64::from_le_bytes(b), i as u64),
                Err(e) => {
                    assert!(i >= 15, "pinned table {i} failed: {e}");
                    assert_eq!(e.kind(), io::ErrorKind::NotFound);
                    assert!(e.to_string().contains("open a new read-only handle"), "{e}");
                    assert!(e.to_string().contains(&format!("{i}.bin")), "{e}");
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 24);
        drop(readers);
        assert_eq!(tf.open_count(), 0);
        // The pins came back: a new table is pinned again.
        let p = dir.path().join("again.bin");
        std::fs::write(&p, 7u64.to_le_bytes()).unwrap();
        let r = tf.reader(&p, 100).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(read(r.as_ref()), 7);
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

    /// A file put in place of a read-only handle's unpinned table's file after it was
    /// evicted fails the table's reads, naming the file, instead of answering with the
    /// other file's bytes; the same file opened again, or a byte-identical copy of it (a
    /// new inode, as a file system that renumbers inodes gives), reads as before. A
    /// writer's table is not checked.
    #[test]
    fn a_file_replaced_behind_an_evicted_reader_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), 3);
        // One table pinned, two sharing one descriptor.
        let tf = TableFiles::pinned(Arc::new(StdFs), 2);
        let readers = readers(&tf, &paths);
        // Files evicted and opened again are the same files: they read as before.
        for _ in 0..2 {
            for (i, r) in readers.iter().enumerate() {
                tf.open.remove(&(i as u64));
                assert_eq!(read(r.as_ref()), i as u64);
            }
        }
        assert_eq!(tf.opens(), 3 + 4);
        // File 1, evicted, replaced by a copy of itself: a new inode (as a file system
        // that renumbers inodes would give), the same bytes. It reads on.
        tf.open.remove(&1);
        let copy = dir.path().join("copy");
        std::fs::copy(&paths[1], &copy).unwrap();
        std::fs::rename(&copy, &paths[1]).unwrap();
        assert_eq!(read(readers[1].as_ref()), 1);
        // File 2, evicted, replaced by a copy of file 1 (a new inode, the same length,
        // other bytes).
        tf.open.remove(&2);
        std::fs::copy(&paths[1], &copy).unwrap();
        std::fs::rename(&copy, &paths[2]).unwrap();
        let mut b = [0u8; 8];
        let e = readers[2].read_exact_at(&mut b, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("was replaced"), "{e}");
        assert!(e.to_string().contains("last bytes differ"), "{e}");
        assert!(e.to_string().contains("2.bin"), "{e}");
        // It stays refused, and the other tables still read.
        assert!(readers[2].read_exact_at(&mut b, 0).is_err());
        // File 1, evicted, replaced by a longer file that starts with its bytes.
        tf.open.remove(&1);
        std::fs::write(&copy, [1u64.to_le_bytes(), [0; 8]].concat()).unwrap();
        std::fs::rename(&copy, &paths[1]).unwrap();
        let e = readers[1].read_exact_at(&mut b, 0).unwrap_err();
        assert!(e.to_string().contains("was replaced"), "{e}");
        assert!(e.to_string().contains("16 bytes"), "{e}");
        assert_eq!(read(readers[0].as_ref()), 0);
        // A writer's table reads what is at its path.
        let tf = TableFiles::new(Arc::new(StdFs), 1);
        let r = tf.reader(&paths[0], 0).unwrap();
        tf.open.remove(&0);
        std::fs::copy(&paths[1], &copy).unwrap();
        std::fs::rename(&copy, &paths[0]).unwrap();
        assert_eq!(read(r.as_ref()), 1);
    }
}
