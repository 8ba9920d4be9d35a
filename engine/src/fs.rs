//! The file-system interface. Every byte the engine reads or writes goes through [`Fs`], so
//! tests can swap in [`FaultFs`] and make an append fail with ENOSPC, an fsync fail with EIO,
//! a write come up short, or throw away everything that was not fsynced (a simulated power
//! cut).

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

/// A file open for appending.
pub trait WritableFile: Send {
    /// Appends all of `data` (or fails; a failure may leave a prefix written).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// A handle that makes the bytes appended to this file durable from another thread,
    /// while appends go on here. Unsupported by default.
    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no sync handle for this file",
        ))
    }
}

/// Syncs one file from a thread other than its writer's (see [`WritableFile::sync_handle`]).
pub trait FileSync: Send + Sync {
    /// Makes every byte appended to the file before the call durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
}

/// A sink that refuses writes: the WAL and manifest of a read-only open.
pub(crate) struct NullFile;

impl WritableFile for NullFile {
    fn append(&mut self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("database opened read-only"))
    }
    fn sync(&mut self) -> io::Result<()> {
        Err(io::Error::other("database opened read-only"))
    }
}

/// Positioned reads from one open file.
pub trait RandomRead: Send + Sync {
    /// Appends exactly `len` bytes read at `offset` to `buf`, or fails (`UnexpectedEof` if
    /// the file ends first). The bytes land in `buf`'s spare capacity without being zeroed
    /// first: reserve `len` beforehand to read with no reallocation.
    fn read_exact_at_into(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()>;

    /// Fills `buf` with the bytes at `offset`, or fails (`UnexpectedEof` if the file ends
    /// first).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// What tells this file from another put at its path later: device, inode and length
    /// (table files never change once written). `None` where there is no such thing (an
    /// in-memory file) or it cannot be had.
    fn identity(&self) -> Option<FileIdentity> {
        None
    }
}

/// A file's device, inode and length: see [`RandomRead::identity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
    pub len: u64,
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inode {} of device {}, {} bytes",
            self.inode, self.device, self.len
        )
    }
}

struct StdRandom(File);

/// Bytes one `pread` read (0 if interrupted: read again), or `UnexpectedEof` naming `end`, the
/// offset the read had to reach, if the file ended before it.
/// Whether `path` is a symbolic link (not followed). False when it cannot be looked at, or
/// on a file system other than the real one (the engine makes no links; a test's in-memory
/// files are none).
pub fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Room for `len` more bytes in `buf`, or an error (not an abort) when the memory cannot be
/// had: a length read from a damaged or foreign file can be anything.
fn reserve(buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    buf.try_reserve_exact(len).map_err(|e| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot allocate {len} bytes to read into: {e}"),
        )
    })
}

fn pread_result(r: rustix::io::Result<usize>, end: u64) -> io::Result<usize> {
    match r {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file ends before offset {end}"),
        )),
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::INTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

impl RandomRead for StdRandom {
    fn read_exact_at_into(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
        let end = buf.len() + len;
        reserve(buf, len)?;
        while buf.len() < end {
            let want = end - buf.len();
            let at = offset + (len - want) as u64;
            // `spare_capacity` extends `buf` by what the read returned, which may run past
            // `end` if the allocation had room to spare (cut off below).
            let r = rustix::io::pread(&self.0, rustix::buffer::spare_capacity(buf), at);
            pread_result(r, at + want as u64)?;
        }
        buf.truncate(end);
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let r = rustix::io::pread(&self.0, &mut buf[done..], at);
            done += pread_result(r, offset + buf.len() as u64)?;
        }
        Ok(())
    }

    fn identity(&self) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = self.0.metadata().ok()?;
        Some(FileIdentity {
            device: m.dev(),
            inode: m.ino(),
            len: m.len(),
        })
    }
}

/// Opens `path` for reading, refusing anything but a regular file: a FIFO in a file's place
/// would block the open (until some writer opens it) and every read, and a device can be
/// endless. `O_NONBLOCK` keeps the open of a FIFO from waiting; it changes nothing for a
/// regular file's reads.
fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file; refusing to read it",
        ));
    }
    Ok(f)
}

/// Positioned reads from bytes already in memory: a table handed over whole
/// ([`crate::sst::Table::from_bytes`]).
pub struct MemRead(pub Bytes);

impl RandomRead for MemRead {
    fn read_exact_at_into(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
        buf.extend_from_slice(self.slice(len, offset)?);
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(self.slice(buf.len(), offset)?);
        Ok(())
    }
}

impl MemRead {
    fn slice(&self, len: usize, offset: u64) -> io::Result<&[u8]> {
        usize::try_from(offset)
            .ok()
            .and_then(|at| self.0.get(at..at.checked_add(len)?))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} bytes end before offset {}",
                        self.0.len(),
                        offset.saturating_add(len as u64)
                    ),
                )
            })
    }
}

/// A held directory lock; dropping it releases the lock.
pub trait DirLock: Send + Sync {}

/// The operations the engine needs from a file system.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Creates (or truncates) a file for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Creates a file for appending, failing with `AlreadyExists` if the name exists: for
    /// a file whose name another writer may have taken, which `create` would truncate.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        if self.exists(path)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the name exists already",
            ));
        }
        self.create(path)
    }
    /// Reads a whole file (WALs, manifests, CURRENT). Tables are read with
    /// [`Fs::open_random`] a block at a time. Never through a memory map: a disk's read
    /// error there is a SIGBUS that kills the process, where a read returns it.
    fn read_file(&self, path: &Path) -> io::Result<Bytes>;
    /// Opens a file for positioned reads (`pread`).
    fn open_random(&self, path: &Path) -> io::Result<Box<dyn RandomRead>> {
        Ok(Box::new(StdRandom(open_regular(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// File names (not paths) in a directory, every one of them (a name that is not UTF-8
    /// lossily converted).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes an existing file's bytes durable (fdatasync), whoever wrote them: recovery
    /// syncs the WALs it replayed, which a crashed process may have left unsynced.
    fn sync_existing(&self, path: &Path) -> io::Result<()> {
        open_regular(path)?.sync_data()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` exists; an error when that cannot be told (a directory on the way
    /// that may not be searched, say), never a `false` that would pass for "absent".
    fn exists(&self, path: &Path) -> io::Result<bool>;
    fn file_size(&self, path: &Path) -> io::Result<u64>;
    /// Takes an exclusive advisory lock on `path` without blocking.
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>>;
    /// Hard-links `from` to `to` (checkpoints).
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Bytes available to this process on the file system holding `dir`.
    fn available_space(&self, dir: &Path) -> io::Result<u64>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

/// A file open for appending, shared with its sync handles: the same open file, so an
/// fsync error the kernel reports once per open file is seen by whichever handle syncs
/// next, not lost to a duplicate descriptor that never syncs again.
struct StdFile(Arc<File>);

impl WritableFile for StdFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        (&*self.0).write_all(data)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>> {
        Ok(Arc::new(StdSync(self.0.clone())))
    }
}

struct StdSync(Arc<File>);

impl FileSync for StdSync {
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

struct StdLock(#[allow(dead_code, reason = "held for its Drop, which unlocks")] File);
impl DirLock for StdLock {}

impl Fs for StdFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdFile(Arc::new(f))))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(StdFile(Arc::new(f))))
    }

    fn read_file(&self, path: &Path) -> io::Result<Bytes> {
        let mut f = open_regular(path)?;
        let mut buf = Vec::new();
        let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
        reserve(&mut buf, len)?;
        io::Read::read_to_end(&mut f, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            // A name that is not UTF-8 is listed lossily: it is never one of the engine's
            // names, and it still makes the directory non-empty.
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).map_err(not_attempted)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Box::new(StdLock(f)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        let s = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }
}

/// Writes `bytes` to `path` by replacing the name: under a temporary name beside it
/// (created new, so never through another file), renamed over `path`. Writing through the
/// name would truncate whatever file it names, which can be another hard link to a live
/// table (a checkpoint's, say). For reports and benchmark outputs: nothing is fsynced.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether `path`'s directory lies inside `dir` (both resolved; false if `dir` does not
/// exist): where an output file could take the name of one of a database's files.
pub fn lies_inside(path: &Path, dir: &Path) -> io::Result<bool> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = match dir.canonicalize() {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(parent.canonicalize()?.starts_with(dir))
}

/// Refuses an empty directory argument: the file system takes `""` for the working
/// directory in some calls (`create_dir_all`, `join`) and for nothing in others (`exists`,
/// `read_dir`), so an open or a checkpoint would act on the working directory half-way.
pub(crate) fn check_dir_arg(dir: &Path, name: &'static str) -> crate::Result<()> {
    if dir.as_os_str().is_empty() {
        return Err(crate::Error::InvalidOption {
            name,
            reason: "an empty path (name a directory; \".\" is the working one)".into(),
        });
    }
    Ok(())
}

/// Creates `dir` and any parents it lacks, then fsyncs the parent of each directory it
/// created, top down: a new directory's own name must be durable, or a power cut can take
/// it, and every file in it, away.
pub(crate) fn create_dir_durably(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    let missing = missing_dirs(dir, |d| fs.exists(d))?;
    fs.create_dir_all(dir)?;
    for d in missing.iter().rev() {
        match d.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => fs.sync_dir(parent)?,
            None => fs.sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

/// `dir` and those of its ancestors that do not exist, deepest first.
fn missing_dirs(dir: &Path, exists: impl Fn(&Path) -> io::Result<bool>) -> io::Result<Vec<&Path>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
        if exists(d)? {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    Ok(missing)
}

/// Which operation a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsOp {
    Create,
    Append,
    Sync,
    Rename,
    Remove,
    SyncDir,
    /// Reading a whole file ([`Fs::read_file`]).
    ReadFile,
    /// A positioned read of a file opened with [`Fs::open_random`].
    Read,
    /// Asking whether a path exists ([`Fs::exists`]).
    Stat,
}

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// No space left on device (ENOSPC).
    NoSpace,
    /// Input/output error (EIO).
    Io,
    /// Permission denied (EACCES).
    Denied,
    /// An append writes only the first half of its bytes, then fails with ENOSPC.
    ShortWrite,
    /// The operation panics, as a file system implementation with a bug might (or an
    /// engine bug below it): for tests that the engine answers instead of hanging.
    Panic,
    /// Too many open files (EMFILE): the operation could not open what it needed and did
    /// nothing (a directory sync then syncs nothing; see [`sync_not_attempted`]).
    TooManyFiles,
}

/// The error of a directory sync that could not open the directory (too many open files,
/// say) and so synced nothing: unlike a failed fsync, it lost nothing the kernel had
/// buffered, and a later sync that succeeds makes the same entries durable.
#[derive(Debug)]
struct SyncNotAttempted(io::Error);

impl std::fmt::Display for SyncNotAttempted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not open the directory to sync it: {}", self.0)
    }
}

impl std::error::Error for SyncNotAttempted {
    /// The open's own error, with its OS code (`raw_os_error`), which the wrapping
    /// `io::Error` cannot carry.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

pub(crate) fn not_attempted(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), SyncNotAttempted(e))
}

/// Whether a directory sync's error says it synced nothing (see [`FaultKind::TooManyFiles`]).
pub fn sync_not_attempted(e: &io::Error) -> bool {
    unopened(e).is_some()
}

/// The error of the open a directory sync could not make, if that is what `e` is.
pub(crate) fn unopened(e: &io::Error) -> Option<&io::Error> {
    Some(&e.get_ref()?.downcast_ref::<SyncNotAttempted>()?.0)
}

/// The OS error code of `e`, or of the open a directory sync could not make (see
/// [`sync_not_attempted`]).
pub fn os_code(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| unopened(e)?.raw_os_error())
}

/// One injected fault: the `skip + 1`-th matching operation (and, if `sticky`, every one after
/// it) fails.
#[derive(Clone, Debug)]
pub struct Fault {
    pub op: FsOp,
    /// Only paths whose file name contains this string match (e.g. ".log", ".sst", "MANIFEST").
    pub path_contains: Option<String>,
    pub kind: FaultKind,
    pub skip: u64,
    pub sticky: bool,
}

impl Fault {
    /// The first `op` on a file whose name contains `file` fails with `kind` (and every
    /// one after it, if `sticky`).
    pub fn on(op: FsOp, kind: FaultKind, file: &str, sticky: bool) -> Fault {
        Fault {
            op,
            path_contains: Some(file.into()),
            kind,
            skip: 0,
            sticky,
        }
    }
}

#[derive(Default)]
struct FaultState {
    faults: Vec<(Fault, u64)>,
    /// Free space reported instead of the real figure.
    available: Option<u64>,
    /// Added to every file fsync, to imitate a slow disk.
    sync_delay: Option<std::time::Duration>,
    /// For each file written through this Fs: bytes appended and bytes known durable.
    files: HashMap<PathBuf, (u64, u64)>,
    injected: u64,
    /// Operations held until [`FaultFs::release_held`]: (operation, path substring,
    /// thread-name prefix).
    holds: Vec<(FsOp, String, String)>,
    /// The names of the threads waiting in a held operation now, with its path (one
    /// element per wait).
    held: Vec<(String, PathBuf)>,
    /// Every file removed, with the name of the thread that removed it.
    removals: Vec<(PathBuf, String)>,
    /// For each directory, the changes to its entries since it was last fsynced, oldest
    /// first: what a power cut undoes.
    pending: HashMap<PathBuf, Vec<EntryChange>>,
    /// Where removed and replaced files are kept (hard links) until their directory is
    /// fsynced, so that a power cut can bring them back.
    stash: Option<PathBuf>,
    stashed: u64,
    /// Operations made through this Fs so far (see [`FaultFs::ops`]).
    ops: u64,
    /// The count of operations past which every fsync fails ([`FaultFs::cut_after`]).
    cut_at: Option<u64>,
}

/// A change to a directory's entries not yet made durable by an fsync of the directory.
#[derive(Debug)]
enum EntryChange {
    /// A new name (a created file, a hard link).
    Added(PathBuf),
    /// A name removed; the file kept at `stash`, `synced` bytes of it durable.
    Removed {
        path: PathBuf,
        stash: PathBuf,
        synced: u64,
    },
    /// `from` renamed over `to`; what `to` named before, kept at `replaced`.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<(PathBuf, u64)>,
    },
}

impl Drop for FaultState {
    fn drop(&mut self) {
        if let Some(s) = &self.stash {
            let _ = std::fs::remove_dir_all(s);
        }
    }
}

impl FaultState {
    fn note(&mut self, path: &Path, change: EntryChange) {
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        self.pending.entry(dir).or_default().push(change);
    }

    /// Keeps the file at `path` (about to be removed or replaced) under a new name beside
    /// the directory, with how much of it was durable.
    fn stash(&mut self, path: &Path) -> io::Result<Option<(PathBuf, u64)>> {
        if !path.exists() {
            return Ok(None);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let stash = match &self.stash {
            Some(s) => s.clone(),
            None => {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                let s = dir.with_file_name(format!(
                    ".{}.faultfs-{}-{:p}",
                    name.unwrap_or_default(),
                    std::process::id(),
                    self as *const _
                ));
                self.stash = Some(s.clone());
                s
            }
        };
        // Made again if a power cut took it (it may sit in a directory that was undone).
        std::fs::create_dir_all(&stash)?;
        self.stashed += 1;
        let kept = stash.join(self.stashed.to_string());
        std::fs::hard_link(path, &kept)?;
        // A file this Fs never wrote was durable whole (it was there before).
        let synced = match self.files.get(path) {
            Some(&(_, synced)) => synced,
            None => std::fs::metadata(path)?.len(),
        };
        Ok(Some((kept, synced)))
    }
}

/// A file system that delegates to [`StdFs`] and injects faults on request. It also tracks
/// how much of each file was fsynced, so [`FaultFs::lose_unsynced`] can simulate a power cut.
#[derive(Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<FaultState>>,
    /// Wakes threads held in an fsync.
    released: Arc<Condvar>,
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultFs")
    }
}

impl FaultFs {
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push((fault, 0));
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        self.state.lock().faults.clear();
    }

    /// Makes `available_space` report `bytes` (None: the real figure).
    pub fn set_available_space(&self, bytes: Option<u64>) {
        self.state.lock().available = bytes;
    }

    /// Makes every file fsync take `delay` longer (None: as long as the disk takes).
    pub fn set_sync_delay(&self, delay: Option<std::time::Duration>) {
        self.state.lock().sync_delay = delay;
    }

    /// Makes every file fsync of a path whose name contains `path_contains`, made by a
    /// thread whose name starts with `thread_prefix`, wait until [`FaultFs::release_held`]:
    /// to hold one kind of background job (a compaction about to finish its output, say)
    /// while the others go on. Holds add up: each call holds one more kind.
    pub fn hold_syncs(&self, path_contains: &str, thread_prefix: &str) {
        self.hold(FsOp::Sync, path_contains, thread_prefix);
    }

    /// As [`hold_syncs`](Self::hold_syncs), for any operation that can be held: file
    /// fsyncs ([`FsOp::Sync`]) and removals ([`FsOp::Remove`]).
    pub fn hold(&self, op: FsOp, path_contains: &str, thread_prefix: &str) {
        assert!(
            matches!(op, FsOp::Sync | FsOp::Remove),
            "only fsyncs and removals can be held"
        );
        self.state
            .lock()
            .holds
            .push((op, path_contains.into(), thread_prefix.into()));
    }

    /// Lets every held fsync go on, and holds no more.
    pub fn release_held(&self) {
        self.state.lock().holds.clear();
        self.released.notify_all();
    }

    /// Every file removed through this Fs so far, with the name of the thread that removed
    /// it (empty for an unnamed thread).
    pub fn removals(&self) -> Vec<(PathBuf, String)> {
        self.state.lock().removals.clone()
    }

    /// How many threads wait in a held operation now.
    pub fn held(&self) -> usize {
        self.state.lock().held.len()
    }

    /// Who waits in a held operation now: each waiting thread's name (empty for an
    /// unnamed one) and the file it waits on. Lets a test show that a job reached the
    /// operation it holds, not merely that it did nothing while held.
    pub fn held_by(&self) -> Vec<(String, PathBuf)> {
        self.state.lock().held.clone()
    }

    /// Waits while operations `op` on `path` by this thread are held.
    fn wait_if_held(&self, op: FsOp, path: &Path) {
        if self.state.lock().holds.is_empty() {
            return;
        }
        let thread = std::thread::current();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let holds = |st: &FaultState| {
            st.holds.iter().any(|(o, p, t)| {
                *o == op
                    && name.contains(p.as_str())
                    && thread.name().unwrap_or("").starts_with(t.as_str())
            })
        };
        let mut st = self.state.lock();
        if !holds(&st) {
            return;
        }
        let me = (thread.name().unwrap_or("").to_string(), path.to_path_buf());
        st.held.push(me.clone());
        while holds(&st) {
            self.released.wait(&mut st);
        }
        if let Some(i) = st.held.iter().position(|h| *h == me) {
            st.held.swap_remove(i);
        }
    }

    /// An fsync of `path` through `sync`, with the faults, holds and delay armed for it.
    /// What was appended before it began is durable once it succeeds (appends made while
    /// it runs may not be, as with a real fsync).
    fn sync_file(&self, path: &Path, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        self.wait_if_held(FsOp::Sync, path);
        if let Some(k) = self.check(FsOp::Sync, path) {
            return Err(fault_error(k));
        }
        let (delay, appended) = {
            let st = self.state.lock();
            let appended = st.files.get(path).map_or(0, |e| e.0);
            (st.sync_delay, appended)
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        sync()?;
        let mut st = self.state.lock();
        let e = st.files.entry(path.to_path_buf()).or_default();
        e.1 = e.1.max(appended);
        Ok(())
    }

    /// How many operations failed because of an injected fault.
    pub fn injected(&self) -> u64 {
        self.state.lock().injected
    }

    /// The moment of a power cut: from now on no fsync (of a file or a directory) succeeds,
    /// so nothing more can become durable. Follow with [`FaultFs::lose_unsynced`] once the
    /// `Db` is gone.
    pub fn fail_all_syncs(&self) {
        for op in [FsOp::Sync, FsOp::SyncDir] {
            self.inject(Fault {
                op,
                path_contains: None,
                kind: FaultKind::Io,
                skip: 0,
                sticky: true,
            });
        }
    }

    /// A power cut after the next `n` operations through this Fs: from then on no fsync
    /// (of a file or a directory) succeeds. The process goes on, as one whose machine lost
    /// power would have stopped: nothing it does after the cut can become durable, so
    /// [`FaultFs::lose_unsynced_journaled`] afterwards leaves the directory as the cut
    /// found it (with what of its pending entry changes the journal had committed).
    pub fn cut_after(&self, n: u64) {
        let mut st = self.state.lock();
        st.cut_at = Some(st.ops + n);
    }

    /// Operations made through this Fs so far: creates, appends, syncs, renames, removals,
    /// reads, and the rest of [`FsOp`].
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// A whole power cut of the `Db` (or anything) `owner` that runs on this Fs: syncs fail,
    /// `owner` is dropped (its last flushes cannot be made durable), what was never fsynced
    /// is lost, and the faults are cleared for the reopen.
    pub fn power_cut<T>(&self, owner: T) -> io::Result<()> {
        self.fail_all_syncs();
        drop(owner);
        self.lose_unsynced()?;
        self.clear();
        Ok(())
    }

    /// Truncates every file written through this Fs to its last fsynced length, as a power
    /// cut would. Call it only after the `Db` using this Fs is gone.
    pub fn lose_unsynced(&self) -> io::Result<()> {
        self.lose_unsynced_except(|_| false)
    }

    /// [`FaultFs::lose_unsynced`], except that the files `keep` picks keep what they were
    /// given: a power cut after the OS wrote some unsynced pages back and not others.
    ///
    /// Directory entries too: every name added, removed or renamed in a directory since
    /// that directory was last fsynced is put back as it was (a file created and fsynced
    /// whose directory never was is gone; a removed one is back, with what of it was
    /// durable; a directory made since its parent was fsynced is gone with all it holds).
    /// `keep` governs file contents only.
    pub fn lose_unsynced_except(&self, keep: impl Fn(&Path) -> bool) -> io::Result<()> {
        self.lose_unsynced_journaled(keep, |_, _| 0).map(|_| ())
    }

    /// [`FaultFs::lose_unsynced_except`], except that of the `n` changes to a directory's
    /// entries made since it was last fsynced, the first `journaled(dir, n)` survive: a
    /// journaling file system commits metadata changes in the order they were made and on
    /// its own schedule, so a power cut can find any prefix of them durable without an
    /// fsync of the directory having asked for it. Returns how many changes were kept so.
    pub fn lose_unsynced_journaled(
        &self,
        keep: impl Fn(&Path) -> bool,
        journaled: impl Fn(&Path, usize) -> usize,
    ) -> io::Result<usize> {
        let mut kept = 0;
        let mut st = self.state.lock();
        for (path, (_, synced)) in st.files.iter() {
            if path.exists() && !keep(path) {
                truncate(path, *synced)?;
            }
        }
        // Deepest directories first: a directory whose own name goes takes what is in it.
        let mut pending: Vec<_> = std::mem::take(&mut st.pending).into_iter().collect();
        pending.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (dir, changes) in pending {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                continue;
            }
            let durable = journaled(&dir, changes.len()).min(changes.len());
            kept += durable;
            for c in changes.into_iter().skip(durable).rev() {
                match c {
                    EntryChange::Added(p) => remove_if_there(&p)?,
                    EntryChange::Removed {
                        path,
                        stash,
                        synced,
                    } => restore(&stash, &path, synced)?,
                    EntryChange::Renamed { from, to, replaced } => {
                        if to.exists() {
                            std::fs::rename(&to, &from)?;
                        }
                        if let Some((stash, synced)) = replaced {
                            restore(&stash, &to, synced)?;
                        }
                    }
                }
            }
        }
        st.files.clear();
        Ok(kept)
    }

    fn check(&self, op: FsOp, path: &Path) -> Option<FaultKind> {
        let mut st = self.state.lock();
        st.ops += 1;
        if matches!(op, FsOp::Sync | FsOp::SyncDir) && st.cut_at.is_some_and(|c| st.ops > c) {
            st.injected += 1;
            return Some(FaultKind::Io);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut hit = None;
        for (f, seen) in st.faults.iter_mut() {
            if f.op != op {
                continue;
            }
            if let Some(p) = &f.path_contains {
                if !name.contains(p.as_str()) {
                    continue;
                }
            }
            *seen += 1;
            if *seen > f.skip && (f.sticky || *seen == f.skip + 1) {
                hit = Some(f.kind);
                break;
            }
        }
        if hit.is_some() {
            st.injected += 1;
        }
        drop(st);
        if hit == Some(FaultKind::Panic) {
            panic!("injected panic: {op:?} on {name}");
        }
        hit
    }
}

fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    if f.metadata()?.len() > len {
        f.set_len(len)?;
    }
    Ok(())
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Puts a stashed file back at `path`, with only its durable bytes.
fn restore(stash: &Path, path: &Path, synced: u64) -> io::Result<()> {
    truncate(stash, synced)?;
    std::fs::rename(stash, path)
}

fn fault_error(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::NoSpace | FaultKind::ShortWrite => io::Error::from_raw_os_error(28),
        FaultKind::Io | FaultKind::Panic => io::Error::from_raw_os_error(5),
        FaultKind::Denied => io::Error::from_raw_os_error(13),
        FaultKind::TooManyFiles => io::Error::from_raw_os_error(24),
    }
}

struct FaultFile {
    fs: FaultFs,
    path: PathBuf,
    inner: Box<dyn WritableFile>,
}

impl WritableFile for FaultFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match self.fs.check(FsOp::Append, &self.path) {
            Some(FaultKind::ShortWrite) => {
                let half = &data[..data.len() / 2];
                self.inner.append(half)?;
                self.fs
                    .state
                    .lock()
                    .files
                    .entry(self.path.clone())
                    .or_default()
                    .0 += half.len() as u64;
                Err(fault_error(FaultKind::ShortWrite))
            }
            Some(k) => Err(fault_error(k)),
            None => {
                self.inner.append(data)?;
                self.fs
                    .state
                    .lock()
                    .files
                    .entry(self.path.clone())
                    .or_default()
                    .0 += data.len() as u64;
                Ok(())
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let inner = &mut self.inner;
        self.fs.sync_file(&self.path, || inner.sync())
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn FileSync>> {
        Ok(Arc::new(FaultSync {
            fs: self.fs.clone(),
            path: self.path.clone(),
            inner: self.inner.sync_handle()?,
        }))
    }
}

struct FaultSync {
    fs: FaultFs,
    path: PathBuf,
    inner: Arc<dyn FileSync>,
}

impl FileSync for FaultSync {
    fn sync(&self) -> io::Result<()> {
        self.fs.sync_file(&self.path, || self.inner.sync())
    }
}

struct FaultRandom {
    fs: FaultFs,
    path: PathBuf,
    inner: Box<dyn RandomRead>,
}

impl RandomRead for FaultRandom {
    fn read_exact_at_into(&self, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
        if let Some(k) = self.fs.check(FsOp::Read, &self.path) {
            return Err(fault_error(k));
        }
        self.inner.read_exact_at_into(buf, len, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(k) = self.fs.check(FsOp::Read, &self.path) {
            return Err(fault_error(k));
        }
        self.inner.read_exact_at(buf, offset)
    }

    fn identity(&self) -> Option<FileIdentity> {
        self.inner.identity()
    }
}

impl Fs for FaultFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        if let Some(k) = self.check(FsOp::Create, path) {
            return Err(fault_error(k));
        }
        let mut st = self.state.lock();
        // Created over an existing file (truncating it): the old one's name stays, its
        // bytes do not come back (not modelled: the engine creates only new names).
        let existed = path.exists();
        let inner = StdFs.create(path)?;
        st.files.insert(path.to_path_buf(), (0, 0));
        if !existed {
            st.note(path, EntryChange::Added(path.to_path_buf()));
        }
        drop(st);
        Ok(Box::new(FaultFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inner,
        }))
    }

    fn read_file(&self, path: &Path) -> io::Result<Bytes> {
        if let Some(k) = self.check(FsOp::ReadFile, path) {
            return Err(fault_error(k));
        }
        StdFs.read_file(path)
    }

    fn open_random(&self, path: &Path) -> io::Result<Box<dyn RandomRead>> {
        Ok(Box::new(FaultRandom {
            fs: self.clone(),
            path: path.to_path_buf(),
            inner: StdFs.open_random(path)?,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if let Some(k) = self.check(FsOp::Rename, to) {
            return Err(fault_error(k));
        }
        let mut st = self.state.lock();
        let replaced = st.stash(to)?;
        if let Err(e) = StdFs.rename(from, to) {
            if let Some((kept, _)) = replaced {
                let _ = std::fs::remove_file(kept);
            }
            return Err(e);
        }
        if let Some(v) = st.files.remove(from) {
            st.files.insert(to.to_path_buf(), v);
        }
        st.note(
            to,
            EntryChange::Renamed {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            },
        );
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.wait_if_held(FsOp::Remove, path);
        if let Some(k) = self.check(FsOp::Remove, path) {
            return Err(fault_error(k));
        }
        let mut st = self.state.lock();
        let kept = st.stash(path)?;
        if let Err(e) = StdFs.remove(path) {
            if let Some((k, _)) = kept {
                let _ = std::fs::remove_file(k);
            }
            return Err(e);
        }
        st.files.remove(path);
        if let Some((stash, synced)) = kept {
            st.note(
                path,
                EntryChange::Removed {
                    path: path.to_path_buf(),
                    stash,
                    synced,
                },
            );
        }
        let thread = std::thread::current().name().unwrap_or("").to_string();
        st.removals.push((path.to_path_buf(), thread));
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdFs.list(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.check(FsOp::SyncDir, dir) {
            Some(FaultKind::TooManyFiles) => {
                return Err(not_attempted(fault_error(FaultKind::TooManyFiles)))
            }
            Some(k) => return Err(fault_error(k)),
            None => {}
        }
        // Changes made from here on may not be in this fsync: only those before it are.
        let before = self.state.lock().pending.get(dir).map_or(0, Vec::len);
        StdFs.sync_dir(dir)?;
        let mut st = self.state.lock();
        if let Some(changes) = st.pending.get_mut(dir) {
            for c in changes.drain(..before.min(changes.len())) {
                // Durable now: the kept copies of removed and replaced files can go.
                match c {
                    EntryChange::Removed { stash, .. }
                    | EntryChange::Renamed {
                        replaced: Some((stash, _)),
                        ..
                    } => {
                        let _ = std::fs::remove_file(stash);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn sync_existing(&self, path: &Path) -> io::Result<()> {
        // Everything in the file now is what becomes durable (appends through this Fs
        // and bytes left by another handle alike).
        let len = std::fs::metadata(path)?.len();
        // A file this Fs never wrote was durable whole (as a stash has it): should this
        // sync fail, a power cut must not take the bytes it already had.
        self.state
            .lock()
            .files
            .entry(path.to_path_buf())
            .or_insert((len, len))
            .0 = len;
        self.sync_file(path, || StdFs.sync_existing(path))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let created = missing_dirs(dir, |d| d.try_exists())?;
        StdFs.create_dir_all(dir)?;
        for d in created.into_iter().rev() {
            st.note(d, EntryChange::Added(d.to_path_buf()));
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        if let Some(k) = self.check(FsOp::Stat, path) {
            return Err(fault_error(k));
        }
        StdFs.exists(path)
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        StdFs.file_size(path)
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        StdFs.lock(path)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.hard_link(from, to)?;
        self.state
            .lock()
            .note(to, EntryChange::Added(to.to_path_buf()));
        Ok(())
    }

    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        match self.state.lock().available {
            Some(b) => Ok(b),
            None => StdFs.available_space(dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed sync of a file the fault-injecting Fs never wrote (a WAL an earlier process
    /// left, synced by a recovering open) used to mark none of its bytes durable, so the
    /// next simulated power cut emptied it: a state no disk reaches, which made a later
    /// open refuse a healthy directory.
    #[test]
    fn a_failed_sync_of_a_file_written_before_keeps_its_bytes_through_a_power_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("000017.log");
        std::fs::write(&p, vec![7u8; 14384]).unwrap();
        let fs = FaultFs::new();
        fs.inject(Fault::on(FsOp::Sync, FaultKind::Io, "000017.log", false));
        assert!(fs.sync_existing(&p).is_err());
        fs.lose_unsynced().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 14384);
    }

    /// A directory sync that could not open the directory says so, keeps the open's OS
    /// code reachable, and stays such an error when an engine error carrying it is copied
    /// for every writer of a commit group.
    #[test]
    fn an_unattempted_sync_keeps_its_code_and_its_mark_when_copied() {
        let e = not_attempted(io::Error::from_raw_os_error(24));
        assert!(sync_not_attempted(&e));
        assert_eq!(e.raw_os_error(), None, "the wrapper cannot carry it");
        assert_eq!(os_code(&e), Some(24));
        let source = std::error::Error::source(e.get_ref().unwrap()).unwrap();
        assert!(source.to_string().contains("os error 24"), "{source}");
        let err = crate::Error::io(Path::new("/d"), e);
        let copy = err.duplicate();
        let crate::Error::Io { source, .. } = &copy else {
            panic!("{copy:?}");
        };
        assert!(sync_not_attempted(source), "{source}");
        assert_eq!(os_code(source), Some(24));
        assert_eq!(copy.to_string(), err.to_string());
        let full = crate::Error::io(
            Path::new("/d"),
            not_attempted(io::Error::from_raw_os_error(28)),
        );
        assert!(full.is_no_space());
        assert!(!sync_not_attempted(&io::Error::from_raw_os_error(24)));
    }

    /// `create_new` never opens a name that exists (it may be a hard link to a live file),
    /// on the real file system and through the fault-injecting one; `create` truncates.
    /// A length no allocation can hold is an error, not an abort: reads size their buffers
    /// from lengths in files (a WAL's size, a table's block handles).
    #[test]
    fn a_read_too_large_for_memory_is_an_error() {
        let e = super::reserve(&mut Vec::new(), usize::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
        let mut v = Vec::new();
        super::reserve(&mut v, 100).unwrap();
        assert!(v.capacity() >= 100);
    }

    #[test]
    fn create_new_refuses_a_name_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"live bytes").unwrap();
        for fs in [&StdFs as &dyn Fs, &FaultFs::new()] {
            let e = fs.create_new(&p).err().expect("opened a name that exists");
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(std::fs::read(&p).unwrap(), b"live bytes");
        }
        let q = dir.path().join("g");
        StdFs.create_new(&q).unwrap().append(b"new").unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), b"new");
        drop(StdFs.create(&p).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"");
    }

    #[test]
    fn faults_fire_on_the_chosen_operation() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        fs.inject(Fault {
            op: FsOp::Append,
            path_contains: Some(".log".into()),
            kind: FaultKind::NoSpace,
            skip: 1,
            sticky: false,
        });
        let mut f = fs.create(&dir.path().join("a.log")).unwrap();
        f.append(b"one").unwrap();
        let e = f.append(b"two").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
        f.append(b"three").unwrap();
        let mut g = fs.create(&dir.path().join("b.sst")).unwrap();
        g.append(b"x").unwrap();
        assert_eq!(fs.injected(), 1);
    }

    #[test]
    fn short_write_leaves_a_prefix_and_power_cut_drops_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let p = dir.path().join("w.log");
        let mut f = fs.create(&p).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        f.append(b"durable").unwrap();
        f.sync().unwrap();
        fs.inject(Fault {
            op: FsOp::Append,
            path_contains: None,
            kind: FaultKind::ShortWrite,
            skip: 0,
            sticky: false,
        });
        assert!(f.append(b"12345678").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"durable1234");
        drop(f);
        fs.lose_unsynced().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"durable");
    }

    /// A power cut undoes every change to a directory's names since that directory was
    /// fsynced, in either direction: a new name goes (its bytes fsynced or not), a removed
    /// one comes back with what of it was durable, a rename over an old file is undone. What
    /// an fsync of the directory covered stays, and the kept copies go with the last handle.
    #[test]
    fn a_power_cut_undoes_directory_changes_since_the_directory_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fs = FaultFs::new();
        let write = |name: &str, data: &[u8], sync: bool| {
            let mut f = fs.create(&d.join(name)).unwrap();
            f.append(data).unwrap();
            if sync {
                f.sync().unwrap();
            }
        };
        let read = |name: &str| std::fs::read(d.join(name)).ok();
        write("old.sst", b"old table", true);
        write("CURRENT", b"MANIFEST-1\n", true);
        write("gone.log", b"synced", true);
        fs.sync_dir(d).unwrap();
        // Durable bytes, then more that are not, then the name removed.
        let mut g = fs.create(&d.join("gone.log")).unwrap();
        g.append(b"synced").unwrap();
        g.sync().unwrap();
        g.append(b" and not").unwrap();
        drop(g);
        fs.remove(&d.join("gone.log")).unwrap();
        write("new.sst", b"fsynced, its name not", true);
        write("CURRENT.tmp", b"MANIFEST-2\n", true);
        fs.rename(&d.join("CURRENT.tmp"), &d.join("CURRENT"))
            .unwrap();
        write("kept.sst", b"named durably", true);
        fs.sync_dir(d).unwrap();
        fs.remove(&d.join("kept.sst")).unwrap();
        fs.remove(&d.join("old.sst")).unwrap();
        // Changes made after the directory's last fsync: the last two removals.
        assert_eq!(read("old.sst"), None);
        fs.power_cut(()).unwrap();
        assert_eq!(read("old.sst").as_deref(), Some(&b"old table"[..]));
        assert_eq!(read("kept.sst").as_deref(), Some(&b"named durably"[..]));
        // The fsync covered these.
        assert_eq!(read("CURRENT").as_deref(), Some(&b"MANIFEST-2\n"[..]));
        assert_eq!(
            read("new.sst").as_deref(),
            Some(&b"fsynced, its name not"[..])
        );
        assert_eq!(read("gone.log"), None);
        // Now without the fsync: all undone.
        write("newer.sst", b"x", true);
        fs.remove(&d.join("new.sst")).unwrap();
        write("CURRENT.tmp", b"MANIFEST-3\n", true);
        fs.rename(&d.join("CURRENT.tmp"), &d.join("CURRENT"))
            .unwrap();
        fs.power_cut(()).unwrap();
        assert_eq!(read("newer.sst"), None);
        assert_eq!(read("CURRENT.tmp"), None);
        assert_eq!(read("CURRENT").as_deref(), Some(&b"MANIFEST-2\n"[..]));
        assert_eq!(
            read("new.sst").as_deref(),
            Some(&b"fsynced, its name not"[..])
        );
        let mut names = fs.list(d).unwrap();
        names.sort();
        assert_eq!(names, ["CURRENT", "kept.sst", "new.sst", "old.sst"]);
        // The kept copies live beside the directory until the Fs goes.
        let stash = fs.state.lock().stash.clone().expect("copies were kept");
        assert!(stash.exists());
        drop(fs);
        assert!(!stash.exists(), "kept copies left behind");
    }

    /// A journaling file system commits directory changes in order on its own schedule: a
    /// power cut may find the first few of those made since the last fsync of the
    /// directory durable, and undoes only the rest.
    #[test]
    fn a_power_cut_may_find_a_prefix_of_the_directory_changes_durable() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fs = FaultFs::new();
        let write = |name: &str, data: &[u8]| {
            let mut f = fs.create(&d.join(name)).unwrap();
            f.append(data).unwrap();
            f.sync().unwrap();
        };
        let read = |name: &str| std::fs::read(d.join(name)).ok();
        write("CURRENT", b"MANIFEST-1\n");
        write("old.log", b"old wal");
        fs.sync_dir(d).unwrap();
        // Five changes after the last fsync of the directory.
        write("MANIFEST-2", b"snapshot");
        write("CURRENT.tmp", b"MANIFEST-2\n");
        fs.rename(&d.join("CURRENT.tmp"), &d.join("CURRENT"))
            .unwrap();
        fs.remove(&d.join("old.log")).unwrap();
        write("new.log", b"new wal");
        let asked = std::sync::Mutex::new(Vec::new());
        let kept = fs
            .lose_unsynced_journaled(
                |_| false,
                |p, n| {
                    asked.lock().unwrap().push((p.to_path_buf(), n));
                    3
                },
            )
            .unwrap();
        assert_eq!(kept, 3);
        assert_eq!(*asked.lock().unwrap(), [(d.to_path_buf(), 5)]);
        // The first three are durable: the new manifest, and CURRENT naming it.
        assert_eq!(read("MANIFEST-2").as_deref(), Some(&b"snapshot"[..]));
        assert_eq!(read("CURRENT").as_deref(), Some(&b"MANIFEST-2\n"[..]));
        assert_eq!(read("CURRENT.tmp"), None);
        // The last two are not: the old WAL is back, the new one gone.
        assert_eq!(read("old.log").as_deref(), Some(&b"old wal"[..]));
        assert_eq!(read("new.log"), None);
    }

    /// A directory made and never named durably goes in a power cut with all it holds,
    /// however well its files and its own entries were synced; made through
    /// `create_dir_durably`, it stays.
    #[test]
    fn a_power_cut_takes_a_new_directory_whose_parent_was_not_synced() {
        let root = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let make = |durably: bool| {
            let d = root.path().join("a").join("b");
            if durably {
                create_dir_durably(&fs, &d).unwrap();
            } else {
                fs.create_dir_all(&d).unwrap();
            }
            let mut f = fs.create(&d.join("f")).unwrap();
            f.append(b"data").unwrap();
            f.sync().unwrap();
            fs.sync_dir(&d).unwrap();
            d
        };
        let d = make(false);
        fs.power_cut(()).unwrap();
        assert!(
            !root.path().join("a").exists(),
            "a directory never named durably stayed"
        );
        let d2 = make(true);
        assert_eq!(d, d2);
        fs.power_cut(()).unwrap();
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"data");
    }

    #[test]
    fn positioned_reads_append_exactly_what_was_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.sst");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let r = StdFs.open_random(&p).unwrap();
        // Appends after what the buffer holds, whatever its spare capacity.
        let mut buf = b"head".to_vec();
        r.read_exact_at_into(&mut buf, 4096, 1000).unwrap();
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &data[1000..5096]);
        let mut big = Vec::with_capacity(1 << 16);
        r.read_exact_at_into(&mut big, 7, 9_993).unwrap();
        assert_eq!(big, &data[9_993..]);
        // A read the file cannot fill fails, and says so.
        let mut short = Vec::new();
        let e = r.read_exact_at_into(&mut short, 100, 9_950).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = r.read_exact_at_into(&mut short, 1, 20_000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // Through FaultFs, an injected read fault strikes once, then reads work again.
        let fs = FaultFs::new();
        fs.inject(Fault {
            op: FsOp::Read,
            path_contains: Some(".sst".into()),
            kind: FaultKind::Io,
            skip: 1,
            sticky: false,
        });
        let f = fs.open_random(&p).unwrap();
        let mut b = Vec::new();
        f.read_exact_at_into(&mut b, 10, 0).unwrap();
        let e = f.read_exact_at_into(&mut b, 10, 10).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5));
        f.read_exact_at_into(&mut b, 10, 10).unwrap();
        assert_eq!(b, &data[..20]);
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("LOCK");
        let a = StdFs.lock(&p).unwrap();
        assert!(a.is_some());
        assert!(StdFs.lock(&p).unwrap().is_none());
        drop(a);
        assert!(StdFs.lock(&p).unwrap().is_some());
    }
}
