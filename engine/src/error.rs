//! The one error type of the engine.
//!
//! Integrity problems carry the file and byte offset where they were found, so that an
//! operator can go and look; nothing on the read path turns bad bytes into a panic.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Sluice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error, with the path it happened on.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A stored checksum does not match the bytes it covers.
    #[error("checksum mismatch in {file} at offset {offset}: stored {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        file: PathBuf,
        offset: u64,
        expected: u32,
        actual: u32,
    },

    /// Bytes on disk that do not decode as the structure they should be.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A damaged write-ahead-log record with intact records after it (in the same WAL or a
    /// later one). A crash damages only the end of the newest WAL, which recovery drops; this
    /// is what a power loss leaves on a file system that writes pages back out of order, or
    /// a failing disk. The default (strict) recovery refuses it, since replaying past it
    /// would leave a hole; reopening with `Options::wal_recovery =`
    /// [`crate::WalRecovery::PointInTime`] opens the database as of the record before it.
    /// [`Error::is_corruption`] is true for it.
    #[error("damaged WAL record in {file} at offset {offset}: {reason} (after a power loss on a file system that writes pages back out of order, Options::wal_recovery = PointInTime opens the database as of the record before it)")]
    WalDamaged {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A file written by a newer (or unknown) format version.
    #[error("{file} has format version {found}, this build reads up to {supported}")]
    UnsupportedFormat {
        file: PathBuf,
        found: u32,
        supported: u32,
    },

    /// Another process (or another `Db` in this process) holds the directory.
    #[error("database directory {path} is locked by another process")]
    Locked { path: PathBuf },

    /// The directory is in use by a live process in a way that prevents this operation.
    #[error("database directory {path} is busy: {reason}")]
    Busy { path: PathBuf, reason: String },

    /// A key longer than [`crate::MAX_KEY_LEN`].
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },

    /// A value longer than [`crate::MAX_VALUE_LEN`].
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },

    /// A write batch larger than the WAL can hold in one record.
    #[error("write batch of {len} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { len: usize, max: usize },

    /// Something the engine would store in its manifest (a controller state, a manifest
    /// edit) larger than it reads back; refused before anything is written.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },

    /// A partition specification that cannot be used.
    #[error("invalid partition spec: {0}")]
    InvalidPartitionSpec(String),

    /// An option value that cannot be used.
    #[error("invalid option {name}: {reason}")]
    InvalidOption { name: &'static str, reason: String },

    /// An index a caller passed past the end of what it indexes (a table's blocks, a
    /// block's entries).
    #[error("{what} {index} does not exist (there are {len})")]
    OutOfRange {
        what: &'static str,
        index: u64,
        len: u64,
    },

    /// A layout version id that is not registered (or no longer live).
    #[error("unknown layout version v{0}")]
    UnknownVersion(u32),

    /// A layout version that was retired and can no longer be targeted.
    #[error("layout version v{0} is retired")]
    VersionRetired(u32),

    /// An operation that the layout state does not allow right now.
    #[error("layout operation refused: {0}")]
    LayoutRefused(String),

    /// The engine stopped accepting writes after an error it cannot recover from in place
    /// (a failed fsync, a failed WAL write, a failed background job). Reopen to recover.
    #[error("database is read-only after an earlier error: {0}")]
    ReadOnly(String),

    /// A flush or compaction that the caller waited for failed; or a write refused (not
    /// applied) because compaction debt or L0 stopped writes while compactions keep
    /// failing; or a commit that panicked, whose write's outcome is unknown (the message
    /// says which).
    #[error("background job failed: {0}")]
    Background(String),

    /// The database was closed.
    #[error("database is closed")]
    Closed,

    /// An optimistic transaction lost a race: a key it read or wrote changed after its
    /// snapshot. Retry the transaction.
    #[error("transaction conflict on key {key:?}")]
    Conflict { key: Vec<u8> },

    /// A migration-controller state record from a stale controller (fenced by epoch).
    #[error("stale controller epoch {presented}; current epoch is {current}")]
    StaleEpoch { presented: u64, current: u64 },

    /// A directory that is not a Sluice database, when one was required.
    #[error("{path} is not a Sluice database: {reason}")]
    NotADatabase { path: PathBuf, reason: String },

    /// A write (or a `flush`, which freezes the memtable) refused before any of it was
    /// written: the WAL could not move to a new file (too many open files, say) and writes
    /// go on in the old one. Not applied; retrying it is safe, and succeeds once the cause
    /// passes.
    #[error("not applied, nothing of it was written (retry it): I/O error on {path}: {source}")]
    NotApplied {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error saying the file is not there.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The path names something other than a regular file (a directory, a FIFO), which
    /// the engine refuses to read (see `fs::open_regular`).
    pub(crate) fn is_not_a_file(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput)
    }

    /// Wraps an `io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// [`Error::io`] for a read of `len` bytes at `offset` of `path`: the message names
    /// where (the kind stays the source's).
    pub fn io_at(
        path: impl Into<PathBuf>,
        offset: u64,
        len: usize,
        source: std::io::Error,
    ) -> Self {
        let at = format!("reading {len} bytes at offset {offset}: {source}");
        Error::io(path, std::io::Error::new(source.kind(), at))
    }

    /// Builds a [`Error::Corruption`].
    pub fn corruption(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for errors that mean stored bytes are damaged (as opposed to usage or I/O errors).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::ChecksumMismatch { .. }
                | Error::Corruption { .. }
                | Error::WalDamaged { .. }
                | Error::UnsupportedFormat { .. }
        )
    }

    /// True when the error is an out-of-space condition.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } | Error::NotApplied { source, .. } => {
                crate::fs::os_code(source) == Some(28)
                    || source.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }

    /// A cheap clone for fanning one failure out to every writer in a commit group.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: dup_io(source),
            },
            Error::ChecksumMismatch {
                file,
                offset,
                expected,
                actual,
            } => Error::ChecksumMismatch {
                file: file.clone(),
                offset: *offset,
                expected: *expected,
                actual: *actual,
            },
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::corruption(file.clone(), *offset, reason.clone()),
            Error::WalDamaged {
                file,
                offset,
                reason,
            } => Error::WalDamaged {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::UnsupportedFormat {
                file,
                found,
                supported,
            } => Error::UnsupportedFormat {
                file: file.clone(),
                found: *found,
                supported: *supported,
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::Busy { path, reason } => Error::Busy {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::KeyTooLarge { len, max } => Error::KeyTooLarge {
                len: *len,
                max: *max,
            },
            Error::ValueTooLarge { len, max } => Error::ValueTooLarge {
                len: *len,
                max: *max,
            },
            Error::TooLarge { what, len, max } => Error::TooLarge {
                what,
                len: *len,
                max: *max,
            },
            Error::BatchTooLarge { len, max } => Error::BatchTooLarge {
                len: *len,
                max: *max,
            },
            Error::InvalidPartitionSpec(s) => Error::InvalidPartitionSpec(s.clone()),
            Error::InvalidOption { name, reason } => Error::InvalidOption {
                name,
                reason: reason.clone(),
            },
            Error::OutOfRange { what, index, len } => Error::OutOfRange {
                what,
                index: *index,
                len: *len,
            },
            Error::UnknownVersion(v) => Error::UnknownVersion(*v),
            Error::VersionRetired(v) => Error::VersionRetired(*v),
            Error::LayoutRefused(s) => Error::LayoutRefused(s.clone()),
            Error::ReadOnly(s) => Error::ReadOnly(s.clone()),
            Error::Background(s) => Error::Background(s.clone()),
            Error::Closed => Error::Closed,
            Error::Conflict { key } => Error::Conflict { key: key.clone() },
            Error::StaleEpoch { presented, current } => Error::StaleEpoch {
                presented: *presented,
                current: *current,
            },
            Error::NotADatabase { path, reason } => Error::NotADatabase {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::NotApplied { path, source } => Error::NotApplied {
                path: path.clone(),
                source: dup_io(source),
            },
        }
    }
}

/// A copy of an I/O error: its OS code if it has one, else its kind and message; a
/// directory sync that synced nothing stays one ([`crate::fs::sync_not_attempted`]).
fn dup_io(source: &std::io::Error) -> std::io::Error {
    if let Some(open) = crate::fs::unopened(source) {
        return crate::fs::not_attempted(dup_io(open));
    }
    match source.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(source.kind(), source.to_string()),
    }
}
