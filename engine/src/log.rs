//! The record log format shared by the WAL and the manifest.
//!
//! A log file is a sequence of records. The first is a header (magic, format version and
//! the kind of log), framed `[len: u32][crc: u32][payload: len bytes]` in every version so
//! that any reader finds the version. From version 4 a second record, framed the same way,
//! holds the log's salt: four bytes from the OS's random source, new for every log. The
//! records after those are framed by the version: up to version 3 as the header is; from
//! version 4 `[len: u32][len check: u32][crc: u32][payload]`. `crc` is the masked CRC32 of
//! the length bytes followed by the payload; the length check is the masked CRC32 of the
//! salt followed by the length bytes.
//!
//! A crash can leave the last record torn. The reader separates that case — nothing valid
//! after the bad bytes, so they are a torn tail and a prefix survives — from damage in the
//! middle of the file (a valid record after the bad one), which is reported as corruption
//! with the file and offset, because skipping it would leave a hole. Bytes inside a record
//! (a value, a key) are never taken for a record: when the bad record's length passes its
//! check, the search for a valid record after it starts where it ends; when it does not,
//! the search takes only records whose length passes the check, which someone who does not
//! know the log's salt forges with a chance of 2⁻³² per record-shaped candidate planted.
//! So a torn record holding a record-shaped value is a torn tail.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::coding::{crc32_shift, mask_crc, masked_crc};
use crate::error::{Error, Result};
use crate::fs::{FileSync, WritableFile};

const MAGIC: &[u8; 4] = b"SLOG";
/// Current log format version. Version 2 WALs may end in a successor record naming the
/// next WAL, which a version 1 reader would take for damage; version 1 logs read as before.
/// Version 3 WALs are fsynced in the background once rotated away from, while writes go
/// on into the next one (a version 2 WAL was fsynced before the next took a write), and
/// may hold a record saying every earlier WAL is durable; a version 2 reader would take a
/// version 3 WAL cut short by a power loss, with records after it, for damage. Version 4
/// frames records with a salted check of their length (see the module documentation).
pub const LOG_FORMAT_VERSION: u32 = 4;
/// The first WAL format whose WALs rotated away from end in a successor record.
pub const SUCCESSOR_VERSION: u32 = 2;
/// The first WAL format whose older WALs may be cut short by a crash (see above).
pub const DEFERRED_SYNC_VERSION: u32 = 3;
/// The first log format whose records carry a check of their length.
pub const CHECKED_LENGTH_VERSION: u32 = 4;
/// Largest record payload accepted (a write batch, or a manifest snapshot).
pub const MAX_RECORD_LEN: usize = 512 << 20;

/// What a log file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LogKind {
    Wal = 1,
    Manifest = 2,
}

/// How one log frames its records: its format version and (from version 4) its salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogFormat {
    pub version: u32,
    pub salt: u32,
}

impl LogFormat {
    /// The current format, with a new salt from the OS's random source (from the clock and
    /// the process id in the unlikely case that fails: the salt needs to be unguessable by
    /// a writer of values, not secret from the machine).
    pub fn new_log() -> LogFormat {
        let salt = getrandom::u32().unwrap_or_else(|_| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let seed = [
                now.to_le_bytes().as_slice(),
                &std::process::id().to_le_bytes(),
            ]
            .concat();
            xxhash_rust::xxh3::xxh3_64(&seed) as u32
        });
        LogFormat {
            version: LOG_FORMAT_VERSION,
            salt,
        }
    }

    /// Format `version` with `salt` (ignored before version 4): for tests and tools that
    /// write logs as a given version does.
    pub fn of(version: u32, salt: u32) -> LogFormat {
        LogFormat { version, salt }
    }

    fn framing(self) -> Framing {
        if self.version >= CHECKED_LENGTH_VERSION {
            Framing::Checked(Some(self.salt))
        } else {
            Framing::Plain
        }
    }

    /// What starts a log of `kind` in this format: the header record, and from version 4
    /// the salt record.
    pub fn header(self, kind: LogKind) -> Vec<u8> {
        let mut p = Vec::with_capacity(9);
        p.extend_from_slice(MAGIC);
        p.extend_from_slice(&self.version.to_le_bytes());
        p.push(kind as u8);
        let mut out = Vec::with_capacity(29);
        encode_framed(&mut out, Framing::Plain, |b| b.extend_from_slice(&p));
        if self.version >= CHECKED_LENGTH_VERSION {
            let salt = self.salt.to_le_bytes();
            encode_framed(&mut out, Framing::Plain, |b| b.extend_from_slice(&salt));
        }
        out
    }

    /// Encodes one record into `out`.
    pub fn encode_record(self, payload: &[u8], out: &mut Vec<u8>) {
        self.encode_record_with(out, |b| b.extend_from_slice(payload));
    }

    /// Encodes one record into `out` whose payload `write` appends in place (no copy): the
    /// header is reserved first and filled in once the payload's length and CRC are known.
    pub fn encode_record_with(self, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        encode_framed(out, self.framing(), write);
    }

    /// Bytes before a record's payload.
    fn record_header_len(self) -> usize {
        self.framing().header_len()
    }
}

/// How a record is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `[len][crc][payload]`: a log's header (and salt) record, and every record up to
    /// version 3.
    Plain,
    /// `[len][len check][crc][payload]`: records after the header from version 4 on, with
    /// the log's salt (`None` when it is unknown, its record damaged: the length check is
    /// then not verified).
    Checked(Option<u32>),
}

impl Framing {
    fn header_len(self) -> usize {
        match self {
            Framing::Plain => 8,
            Framing::Checked(_) => 12,
        }
    }

    /// Whether the length check in header `h` (of this framing) fails.
    fn length_check_fails(self, h: &[u8]) -> bool {
        match self {
            Framing::Checked(Some(salt)) => {
                u32::from_le_bytes([h[4], h[5], h[6], h[7]])
                    != length_check(salt, [h[0], h[1], h[2], h[3]])
            }
            _ => false,
        }
    }
}

/// The length check of a `Checked` record of payload length `len` in a log salted `salt`.
fn length_check(salt: u32, len: [u8; 4]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&len);
    mask_crc(h.finalize())
}

fn encode_framed(out: &mut Vec<u8>, framing: Framing, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    let hl = framing.header_len();
    out.extend_from_slice(&[0u8; 12][..hl]);
    write(out);
    let len = ((out.len() - start - hl) as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&out[start + hl..]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + hl - 4..start + hl].copy_from_slice(&mask_crc(h.finalize()).to_le_bytes());
    if let Framing::Checked(Some(salt)) = framing {
        out[start + 4..start + 8].copy_from_slice(&length_check(salt, len).to_le_bytes());
    }
}

/// Appends records to a log file, buffering in memory until [`LogWriter::flush`].
///
/// Once a write or an fsync has failed, every later flush and sync fails too: the file may
/// end in a torn record, and a record appended after it would turn that torn end (dropped
/// on recovery) into damage with an intact record after it (refused on recovery), and
/// after a failed fsync the kernel may have dropped pages a later fsync would not report.
pub struct LogWriter {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    format: LogFormat,
    buf: Vec<u8>,
    written: u64,
    /// Why the log stopped taking writes, once it has.
    failed: Option<String>,
    /// The file's fsync, shared with the background syncer (`None` for a file that cannot
    /// be synced from another thread: it is synced here alone).
    shared: Option<Arc<LogSync>>,
    /// Set by [`LogWriter::sync_in_background`].
    growth: Option<Growth>,
}

/// A log synced in the background as it grows.
struct Growth {
    syncer: Arc<BackgroundSyncer>,
    every: u64,
    /// Bytes handed to the OS when the syncer was last asked to sync.
    requested: u64,
}

/// The fsync side of a log, shared between its writer and the background syncer.
///
/// Syncs are serialized, and once one fails every later one fails too: the kernel reports
/// a failed write-back once, and may have dropped the pages it could not write, so a later
/// fsync that succeeds would not make them durable.
///
/// A log may follow another (a WAL the one it was rotated from): its first sync makes
/// the earlier log durable first, so that no log is ever durable ahead of one before it.
pub(crate) struct LogSync {
    file: Arc<dyn FileSync>,
    path: PathBuf,
    state: Mutex<SyncState>,
}

/// Why a log is unusable after a write or fsync of it that never returned (a panic the
/// engine caught further up).
const PANICKED: &str = "a write or fsync of it panicked";

#[derive(Default)]
struct SyncState {
    failed: Option<String>,
    /// The log this one follows, until it is known durable.
    prev: Option<Arc<LogSync>>,
}

impl LogSync {
    /// Makes what was handed to the OS before the call durable, the logs this one follows
    /// first.
    pub fn sync(&self) -> Result<()> {
        let mut st = self.lock_usable()?;
        self.sync_prev(&mut st)?;
        // Failed until the fsync returns: should it panic, no later sync may pass over it.
        st.failed = Some(PANICKED.into());
        let r = self.file.sync();
        st.failed = None;
        r.map_err(|e| {
            let e = Error::io(&self.path, e);
            st.failed = Some(e.to_string());
            e
        })
    }

    /// Makes the logs this one follows durable (not this one).
    pub fn sync_predecessors(&self) -> Result<()> {
        let mut st = self.lock_usable()?;
        self.sync_prev(&mut st)
    }

    fn lock_usable(&self) -> Result<parking_lot::MutexGuard<'_, SyncState>> {
        let st = self.state.lock();
        match &st.failed {
            None => Ok(st),
            Some(why) => Err(Error::ReadOnly(format!(
                "{} is not synced again after an earlier failure: {why}",
                self.path.display()
            ))),
        }
    }

    fn sync_prev(&self, st: &mut SyncState) -> Result<()> {
        // Newer to older: a sync never waits on a newer log's lock, so chains cannot
        // deadlock.
        if let Some(prev) = &st.prev {
            if let Err(e) = prev.sync() {
                st.failed = Some(e.to_string());
                return Err(e);
            }
        }
        st.prev = None;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Syncs logs on a thread of their own: a WAL just rotated away from (the writers go on
/// into the next one meanwhile; see `Inner::rotate`), and the live WAL as it grows, so that
/// a synced write finds little left to write. One request is pending at a time; a newer one
/// replaces it, which loses nothing: syncing a WAL syncs the ones it follows first.
#[derive(Default)]
pub(crate) struct BackgroundSyncer {
    pending: Mutex<Option<Arc<LogSync>>>,
    wake: Condvar,
    closed: AtomicBool,
}

impl BackgroundSyncer {
    pub fn request(&self, sync: Arc<LogSync>) {
        *self.pending.lock() = Some(sync);
        self.wake.notify_one();
    }

    /// The next log to sync, waiting for one; `None` once closed.
    pub fn next(&self) -> Option<Arc<LogSync>> {
        let mut p = self.pending.lock();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(s) = p.take() {
                return Some(s);
            }
            self.wake.wait_for(&mut p, Duration::from_millis(100));
        }
    }

    /// Ends [`BackgroundSyncer::next`]'s waits; a pending request is dropped.
    pub fn close(&self) {
        let _p = self.pending.lock();
        self.closed.store(true, Ordering::Release);
        self.wake.notify_all();
    }
}

impl LogWriter {
    /// Starts a new log with its header record (buffered, like any record).
    pub fn new(file: Box<dyn WritableFile>, path: PathBuf, kind: LogKind) -> LogWriter {
        let shared = file.sync_handle().ok().map(|file| {
            Arc::new(LogSync {
                file,
                path: path.clone(),
                state: Mutex::new(SyncState::default()),
            })
        });
        let format = LogFormat::new_log();
        let mut w = LogWriter {
            file,
            path,
            format,
            buf: Vec::with_capacity(64 << 10),
            written: 0,
            failed: None,
            shared,
            growth: None,
        };
        w.buf.extend_from_slice(&format.header(kind));
        w
    }

    /// Has `syncer` sync this log each time another `every` bytes have been handed to the
    /// OS (`every` > 0). A file that cannot be synced from another thread is left to its
    /// writer's syncs.
    pub(crate) fn sync_in_background(&mut self, syncer: Arc<BackgroundSyncer>, every: u64) {
        if self.shared.is_some() {
            self.growth = Some(Growth {
                syncer,
                every: every.max(1),
                requested: self.written,
            });
        }
    }

    /// This log's fsync, for another thread to call (`None` if the file has none).
    pub(crate) fn shared_sync(&self) -> Option<Arc<LogSync>> {
        self.shared.clone()
    }

    /// Makes this log's first sync make `prev` durable first. Returns false (and changes
    /// nothing) if this log's file cannot be synced from another thread.
    pub(crate) fn follow(&mut self, prev: Arc<LogSync>) -> bool {
        match &self.shared {
            Some(s) => {
                s.state.lock().prev = Some(prev);
                true
            }
            None => false,
        }
    }

    /// Makes the logs this one follows durable (see [`LogWriter::follow`]).
    pub(crate) fn sync_predecessors(&mut self) -> Result<()> {
        self.check_usable()?;
        match &self.shared {
            Some(s) => s
                .sync_predecessors()
                .inspect_err(|e| self.failed = Some(e.to_string())),
            None => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Buffers one record.
    pub fn add(&mut self, payload: &[u8]) {
        self.format.encode_record(payload, &mut self.buf);
    }

    /// Buffers one record whose payload `write` appends to the buffer in place (no copy).
    pub fn add_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.format.encode_record_with(&mut self.buf, write);
    }

    /// Bytes buffered and not yet handed to the OS.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes handed to the OS plus bytes buffered.
    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands buffered bytes to the OS.
    pub fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        // Failed until the append returns: should it panic, a prefix of the buffer may be in
        // the file, and nothing may follow it.
        self.failed = Some(PANICKED.into());
        let r = self.file.append(&self.buf);
        self.failed = None;
        // On failure a prefix of the buffer may be in the file; the log is unusable from
        // here on, so drop the buffer either way.
        self.written += self.buf.len() as u64;
        self.buf.clear();
        r.map_err(|e| self.failure(e))?;
        if let (Some(g), Some(s)) = (self.growth.as_mut(), &self.shared) {
            if self.written - g.requested >= g.every {
                g.requested = self.written;
                g.syncer.request(s.clone());
            }
        }
        Ok(())
    }

    /// Flushes and fsyncs (the logs this one follows first).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        // Failed until the fsync returns: should it panic, nothing may be appended after
        // bytes the kernel may have dropped.
        self.failed = Some(PANICKED.into());
        let r = match self.shared.clone() {
            Some(s) => s.sync(),
            None => self.file.sync().map_err(|e| Error::io(&self.path, e)),
        };
        self.failed = r.as_ref().err().map(|e| e.to_string());
        r
    }

    fn check_usable(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(Error::ReadOnly(format!(
                "{} takes no more writes after an earlier failure: {why}",
                self.path.display()
            ))),
        }
    }

    fn failure(&mut self, e: std::io::Error) -> Error {
        let e = Error::io(&self.path, e);
        self.failed = Some(e.to_string());
        e
    }
}

/// A torn tail found (and dropped) while reading a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub dropped_bytes: u64,
    pub reason: String,
    /// A valid record follows the damage (only with [`read_log_to_damage`]).
    pub intact_after: bool,
}

/// The records of one log file.
#[derive(Debug)]
pub struct LogContents {
    /// The format version in the header (0 if the header itself was damaged).
    pub version: u32,
    /// The salt of the log's length checks (version 4 on; 0 before, or if its record was
    /// damaged).
    pub salt: u32,
    /// (offset of the record header, payload), the header and salt records left out.
    pub records: Vec<(u64, Bytes)>,
    pub tail: Option<TornTail>,
}

impl LogContents {
    /// The file offset of the payload of the record whose header is at `record_offset`.
    pub fn payload_offset(&self, record_offset: u64) -> u64 {
        record_offset + self.format().record_header_len() as u64
    }

    /// How the log frames its records (to write more records into a copy of it, in tests
    /// and tools; the salt is 0 if the salt record was damaged).
    pub fn format(&self) -> LogFormat {
        LogFormat::of(self.version, self.salt)
    }
}

enum RecordAt {
    Ok(Bytes, usize),
    /// Damage, and where the damaged record ends if its length is known (with `Checked`
    /// framing, when the length passes its check; the end may lie past the data's).
    Bad(Error, Option<usize>),
}

fn record_at(data: &Bytes, pos: usize, path: &Path, framing: Framing) -> RecordAt {
    let hl = framing.header_len();
    let rest = data.len() - pos;
    if rest < hl {
        return RecordAt::Bad(
            Error::corruption(
                path,
                pos as u64,
                format!("truncated record header ({rest} bytes)"),
            ),
            None,
        );
    }
    let h = &data[pos..pos + hl];
    let len_bytes = [h[0], h[1], h[2], h[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let stored = u32::from_le_bytes([h[hl - 4], h[hl - 3], h[hl - 2], h[hl - 1]]);
    if framing.length_check_fails(h) {
        return RecordAt::Bad(
            Error::corruption(
                path,
                pos as u64,
                format!("record header damaged (length {len} fails its check)"),
            ),
            None,
        );
    }
    if len > MAX_RECORD_LEN {
        return RecordAt::Bad(
            Error::corruption(
                path,
                pos as u64,
                format!("record length {len} exceeds limit"),
            ),
            None,
        );
    }
    // A length that passed its check says where the record ends, whatever else is damaged.
    let end = matches!(framing, Framing::Checked(Some(_))).then_some(pos + hl + len);
    if rest - hl < len {
        return RecordAt::Bad(
            Error::corruption(
                path,
                pos as u64,
                format!(
                    "truncated record: header says {len} bytes, {} remain",
                    rest - hl
                ),
            ),
            end,
        );
    }
    let payload = &data[pos + hl..pos + hl + len];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(payload);
    let actual = mask_crc(hasher.finalize());
    if actual != stored {
        return RecordAt::Bad(
            Error::ChecksumMismatch {
                file: path.to_path_buf(),
                offset: pos as u64,
                expected: stored,
                actual,
            },
            end,
        );
    }
    RecordAt::Ok(data.slice(pos + hl..pos + hl + len), hl + len)
}

/// True if a valid non-empty record framed `framing` starts at or after `from`.
///
/// Every such offset whose length field fits in what remains is a candidate (with
/// `Checked` framing, only one whose length passes its check). Hashing each candidate's
/// payload made this quadratic in the damaged tail: a payload of small integers (an array
/// of ids, say) makes most offsets candidates, and reopening after a crash that tore a
/// 4 MiB record took 6-9 s (~25 minutes for 64 MiB). A long candidate's CRC now comes from
/// two prefix CRCs of the tail instead ([`crc32_shift`]), which is linear in the tail.
fn valid_record_after(data: &[u8], from: usize, framing: Framing) -> bool {
    let hl = framing.header_len();
    let mut prefixes: Option<PrefixCrcs<'_>> = None;
    for p in from..data.len().saturating_sub(hl - 1) {
        let h = &data[p..p + hl];
        // An all-zero header is how unwritten (preallocated or lost) space looks.
        if h.iter().all(|&b| b == 0) {
            continue;
        }
        let len_bytes = [h[0], h[1], h[2], h[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let start = p + hl;
        if len == 0 || len > MAX_RECORD_LEN || len > data.len() - start {
            continue;
        }
        if framing.length_check_fails(h) {
            continue;
        }
        let stored = u32::from_le_bytes([h[hl - 4], h[hl - 3], h[hl - 2], h[hl - 1]]);
        let crc = if len <= DIRECT_CRC_MAX {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&len_bytes);
            hasher.update(&data[start..start + len]);
            hasher.finalize()
        } else {
            // crc(len ++ payload) = shift(crc(len)) ^ crc(payload), and crc(payload) =
            // crc(prefix to its end) ^ shift(crc(prefix to its start)); shifting is linear,
            // so one shift serves both.
            let pre = prefixes.get_or_insert_with(|| PrefixCrcs::new(&data[from..]));
            let before = pre.crc_to(start - from) ^ crc32fast::hash(&len_bytes);
            pre.crc_to(start + len - from) ^ crc32_shift(before, len as u64)
        };
        if mask_crc(crc) == stored {
            return true;
        }
    }
    false
}

/// Candidate records up to this long are checked by hashing them.
const DIRECT_CRC_MAX: usize = 1024;

/// CRCs of the prefixes of a byte string, one stored per [`PrefixCrcs::STEP`] bytes.
struct PrefixCrcs<'a> {
    bytes: &'a [u8],
    /// `at[k]` is the CRC of `bytes[..k * STEP]`.
    at: Vec<u32>,
}

impl<'a> PrefixCrcs<'a> {
    const STEP: usize = 64;

    fn new(bytes: &'a [u8]) -> PrefixCrcs<'a> {
        let mut at = Vec::with_capacity(bytes.len() / Self::STEP + 2);
        at.push(0);
        let mut h = crc32fast::Hasher::new();
        for chunk in bytes.chunks(Self::STEP) {
            h.update(chunk);
            at.push(h.clone().finalize());
        }
        PrefixCrcs { bytes, at }
    }

    /// The CRC of `bytes[..end]`.
    fn crc_to(&self, end: usize) -> u32 {
        let k = end / Self::STEP;
        let mut h = crc32fast::Hasher::new_with_initial(self.at[k]);
        h.update(&self.bytes[k * Self::STEP..end]);
        h.finalize()
    }
}

/// Reads every record of a log, checking its header is `kind`. A damaged record that
/// nothing valid follows is a torn tail (dropped, reported in `tail`); damage with a valid
/// record after it is an error.
pub fn read_log(data: Bytes, path: &Path, kind: LogKind) -> Result<LogContents> {
    read_log_with(data, path, kind, false)
}

/// [`read_log`], except that the first damaged record ends the log whatever follows it
/// (`tail.intact_after` then says whether a valid record did).
pub fn read_log_to_damage(data: Bytes, path: &Path, kind: LogKind) -> Result<LogContents> {
    read_log_with(data, path, kind, true)
}

fn read_log_with(
    data: Bytes,
    path: &Path,
    kind: LogKind,
    stop_at_damage: bool,
) -> Result<LogContents> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut tail = None;
    let (mut version, mut salt) = (0, 0);
    // The header (and salt) records are framed plainly in every version; what follows, by
    // the version.
    let mut stage = Stage::Header;
    let mut framing = Framing::Plain;
    while pos < data.len() {
        match record_at(&data, pos, path, framing) {
            RecordAt::Ok(payload, used) => {
                match stage {
                    Stage::Header => {
                        version = check_header(&payload, path, kind)?;
                        let format = LogFormat::of(version, 0);
                        if version >= CHECKED_LENGTH_VERSION {
                            stage = Stage::Salt;
                        } else {
                            stage = Stage::Records;
                            framing = format.framing();
                        }
                    }
                    Stage::Salt => {
                        let Ok(b) = <[u8; 4]>::try_from(&payload[..]) else {
                            return Err(Error::corruption(
                                path,
                                pos as u64,
                                format!("log salt record of {} bytes", payload.len()),
                            ));
                        };
                        salt = u32::from_le_bytes(b);
                        stage = Stage::Records;
                        framing = LogFormat::of(version, salt).framing();
                    }
                    Stage::Records => records.push((pos as u64, payload)),
                }
                pos += used;
            }
            RecordAt::Bad(e, end) => {
                // A damaged record whose length is known is skipped whole: its payload
                // may hold record-shaped bytes (a value, a key) that are no record. A
                // damaged header or salt record leaves the framing or the salt unknown:
                // every framing it may be counts, unchecked lengths included. Stopping at
                // damage, a damaged header drops the whole file (nothing in it is
                // replayed, so what it is does not matter).
                let unknown: &[Framing] = match stage {
                    Stage::Header => &[Framing::Plain, Framing::Checked(None)],
                    Stage::Salt => &[Framing::Checked(None)],
                    Stage::Records => &[],
                };
                let intact_after = match end {
                    Some(end) => valid_record_after(&data, end, framing),
                    None if stage == Stage::Records => valid_record_after(&data, pos + 1, framing),
                    None => unknown
                        .iter()
                        .any(|&f| valid_record_after(&data, pos + 1, f)),
                };
                if intact_after && !stop_at_damage {
                    return Err(e);
                }
                tail = Some(TornTail {
                    offset: pos as u64,
                    dropped_bytes: (data.len() - pos) as u64,
                    reason: e.to_string(),
                    intact_after,
                });
                break;
            }
        }
    }
    Ok(LogContents {
        version,
        salt,
        records,
        tail,
    })
}

/// Where a reader is in a log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Salt,
    Records,
}

/// Checks a log's header record; returns its format version.
fn check_header(p: &[u8], path: &Path, kind: LogKind) -> Result<u32> {
    if p.len() != 9 || &p[..4] != MAGIC {
        return Err(Error::corruption(
            path,
            0,
            "not a Sluice log file (bad magic)",
        ));
    }
    let version = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    if version > LOG_FORMAT_VERSION || version == 0 {
        return Err(Error::UnsupportedFormat {
            file: path.to_path_buf(),
            found: version,
            supported: LOG_FORMAT_VERSION,
        });
    }
    if p[8] != kind as u8 {
        return Err(Error::corruption(
            path,
            0,
            format!("log kind {} where {:?} was expected", p[8], kind),
        ));
    }
    Ok(version)
}

/// The masked CRC used by records, exposed for tests of the format.
pub fn record_crc(len: u32, payload: &[u8]) -> u32 {
    let mut b = len.to_le_bytes().to_vec();
    b.extend_from_slice(payload);
    masked_crc(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_bytes(payloads: &[&[u8]]) -> Vec<u8> {
        log_bytes_as(LOG_FORMAT_VERSION, payloads)
    }

    /// The salt of the logs these tests write.
    const SALT: u32 = 0x5a17_5a17;

    fn log_bytes_as(version: u32, payloads: &[&[u8]]) -> Vec<u8> {
        let format = LogFormat::of(version, SALT);
        let mut out = format.header(LogKind::Wal);
        for p in payloads {
            format.encode_record(p, &mut out);
        }
        out
    }

    fn read(b: Vec<u8>) -> Result<LogContents> {
        read_log(Bytes::from(b), Path::new("000001.log"), LogKind::Wal)
    }

    /// The definition `valid_record_after` implements faster: some later offset holds a
    /// record that `record_at` accepts and that is not empty.
    fn valid_record_after_by_definition(data: &Bytes, from: usize, framing: Framing) -> bool {
        let hl = framing.header_len();
        (from..data.len().saturating_sub(hl - 1)).any(|p| {
            data[p..p + hl].iter().any(|&b| b != 0)
                && matches!(record_at(data, p, Path::new("x"), framing), RecordAt::Ok(ref b, _) if !b.is_empty())
        })
    }

    /// Damage followed by records long enough to take the prefix-CRC path, by records
    /// nested inside other payloads, or by nothing valid: the fast scan answers as the
    /// definition does, at every damaged offset, in either framing.
    #[test]
    fn the_scan_for_intact_records_agrees_with_its_definition() {
        for version in [CHECKED_LENGTH_VERSION - 1, LOG_FORMAT_VERSION] {
            scan_agrees_with_its_definition(version);
        }
    }

    fn scan_agrees_with_its_definition(version: u32) {
        let format = LogFormat::of(version, SALT);
        let framing = format.framing();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..12 {
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            for i in 0..4 {
                let len = [3usize, 900, 1500, 5000][(i + round) % 4];
                let mut p: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                if round % 3 == 0 && i == 1 {
                    // A valid record inside a payload: found even where the outer one is cut.
                    let mut inner = Vec::new();
                    format.encode_record(&vec![7u8; 1200], &mut inner);
                    let at = p.len().min(100);
                    p.splice(at..at, inner);
                }
                if round % 3 == 1 && i == 2 && version >= CHECKED_LENGTH_VERSION {
                    // One whose CRC is right and whose length check is not (another log's
                    // salt): no record.
                    let mut inner = Vec::new();
                    LogFormat::of(version, !SALT).encode_record(&vec![9u8; 1100], &mut inner);
                    let at = p.len().min(200);
                    p.splice(at..at, inner);
                }
                payloads.push(p);
            }
            let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
            let mut bytes = log_bytes_as(version, &refs);
            let at = (rnd() as usize) % bytes.len();
            bytes[at] ^= 0x40;
            if round % 2 == 1 {
                bytes.truncate(bytes.len() - (rnd() as usize % 3000));
            }
            let data = Bytes::from(bytes);
            for from in (0..data.len()).step_by(97) {
                assert_eq!(
                    valid_record_after(&data, from, framing),
                    valid_record_after_by_definition(&data, from, framing),
                    "version {version}, round {round}, from {from}"
                );
            }
        }
    }

    /// A torn record whose payload is an array of small integers (almost every offset then
    /// reads as the start of a plausible record) is a torn tail, found in time linear in it
    /// (version 3 logs, whose reader searches the torn payload, still read).
    #[test]
    fn a_torn_record_of_small_integers_is_a_torn_tail() {
        let payload: Vec<u8> = (0..64u32 << 10).flat_map(|i| i.to_le_bytes()).collect();
        for version in [CHECKED_LENGTH_VERSION - 1, LOG_FORMAT_VERSION] {
            let mut bytes = log_bytes_as(version, &[b"before", &payload]);
            bytes.truncate(bytes.len() - 10);
            let c = read(bytes).unwrap();
            assert_eq!(c.records.len(), 1, "version {version}");
            let t = c.tail.unwrap();
            assert!(!t.intact_after, "version {version}");
        }
    }

    /// A value holding a well-formed record (a ledger memo can hold any bytes), torn by a
    /// crash: a torn tail, not damage with an intact record after it, which would refuse
    /// the log. Before version 4 the reader searched the torn payload and found the record
    /// (found by review). Cut, or flipped anywhere in the torn record — its length field
    /// included, so that the search runs through the payload — with the embedded record
    /// framed as version 3 or as version 4 with any salt but the log's. Framed with the
    /// log's own salt (which a writer of values cannot know) it is found, as it should be.
    #[test]
    fn a_torn_record_holding_a_record_is_a_torn_tail() {
        let before: &[u8] = b"an intact batch";
        let forged = [
            LogFormat::of(CHECKED_LENGTH_VERSION - 1, 0),
            LogFormat::of(LOG_FORMAT_VERSION, !SALT),
            LogFormat::of(LOG_FORMAT_VERSION, SALT),
        ];
        for inner in forged {
            let guessed = inner == LogFormat::of(LOG_FORMAT_VERSION, SALT);
            let mut value = b"memo: ".to_vec();
            inner.encode_record(b"a record-shaped memo", &mut value);
            value.extend_from_slice(b" end of memo");
            let full = log_bytes(&[before, &value]);
            let last = full.len() - value.len() - 12;
            // A cut after the embedded record's end leaves it whole in the file.
            for cut in last + 1..full.len() {
                let c = read(full[..cut].to_vec()).unwrap();
                assert_eq!(c.records.len(), 1, "{inner:?}: cut at {cut}");
                let t = c.tail.unwrap();
                assert_eq!(t.offset, last as u64, "{inner:?}: cut at {cut}");
                assert!(!t.intact_after, "{inner:?}: cut at {cut}");
            }
            for flip in last..full.len() {
                let mut b = full.clone();
                b[flip] ^= 0x10;
                let searched = flip < last + 8;
                match read(b) {
                    Ok(c) => {
                        assert!(!(guessed && searched), "{inner:?}: flip at {flip} read");
                        assert_eq!(c.records.len(), 1, "{inner:?}: flip at {flip}");
                        assert!(!c.tail.unwrap().intact_after, "{inner:?}: flip at {flip}");
                    }
                    Err(e) => assert!(guessed && searched, "{inner:?}: flip at {flip}: {e}"),
                }
            }
        }
        // A version 3 log cannot tell: the embedded record (framed as version 3 frames
        // records) reads as an intact record after the damage.
        let mut value = b"memo: ".to_vec();
        forged[0].encode_record(b"a record-shaped memo", &mut value);
        value.extend_from_slice(b" end of memo");
        let old = log_bytes_as(3, &[before, &value]);
        let e = read(old[..old.len() - 3].to_vec()).unwrap_err();
        assert!(e.is_corruption(), "{e}");
    }

    /// After a failed append (a short write: the file ends in a torn record) the writer
    /// refuses every later flush and sync, so no intact record ever follows the torn one,
    /// which recovery would refuse as damage in the middle of the log (found by review: a
    /// flush's manifest edit appended after a failed layout registration left a database
    /// that no longer opened). The same holds after a failed fsync.
    #[test]
    fn a_log_writer_takes_no_writes_after_a_failure() {
        use crate::fs::{Fault, FaultFs, FaultKind, Fs, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        for (op, kind) in [
            (FsOp::Append, FaultKind::ShortWrite),
            (FsOp::Sync, FaultKind::Io),
            // A write or fsync that panics (the engine catches it further up) leaves the
            // log as unusable as one that failed.
            (FsOp::Append, FaultKind::Panic),
            (FsOp::Sync, FaultKind::Panic),
        ] {
            let path = dir.path().join(format!("{op:?}-{kind:?}.log"));
            let mut w = LogWriter::new(fs.create(&path).unwrap(), path.clone(), LogKind::Wal);
            w.add(b"first");
            w.sync().unwrap();
            fs.inject(Fault {
                op,
                path_contains: Some(".log".into()),
                kind,
                skip: 0,
                sticky: false,
            });
            w.add(b"second, torn or not synced");
            let failed = crate::util::catch_panic(|| w.sync()).map_or(true, |r| r.is_err());
            assert!(failed, "{op:?} {kind:?}");
            let len = std::fs::metadata(&path).unwrap().len();
            // The fault was one-time; the writer still refuses.
            w.add(b"third");
            let e = w.sync().unwrap_err();
            assert!(matches!(e, Error::ReadOnly(_)), "{op:?}: {e}");
            assert!(w.flush().is_err());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "{op:?}");
            // What recovery reads: the first record, then at most a torn tail.
            let c = read(std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(c.records.len(), 1 + usize::from(op == FsOp::Sync), "{op:?}");
            assert!(c.tail.is_none_or(|t| !t.intact_after), "{op:?}");
            fs.clear();
        }
    }

    /// A log that follows another syncs it first, and fails if that fails. A failed sync is
    /// sticky, through whichever handle syncs next: the kernel reports a failed write-back
    /// once, so a later fsync that succeeds proves nothing about the pages it dropped.
    #[test]
    fn a_log_syncs_the_one_it_follows_first_and_a_failed_sync_sticks() {
        use crate::fs::{Fault, FaultFs, FaultKind, Fs, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let open = |name: &str| {
            let p = dir.path().join(name);
            LogWriter::new(fs.create(&p).unwrap(), p, LogKind::Wal)
        };
        let len = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
        // Success: syncing b syncs a, whose records then survive a power cut.
        let (mut a, mut b) = (open("1.log"), open("2.log"));
        fs.sync_dir(dir.path()).unwrap(); // the names are durable: only the bytes are at stake
        a.add(b"in a");
        a.flush().unwrap();
        assert!(b.follow(a.shared_sync().unwrap()));
        b.add(b"in b");
        b.sync().unwrap();
        let (la, lb) = (len("1.log"), len("2.log"));
        fs.lose_unsynced().unwrap();
        assert_eq!((len("1.log"), len("2.log")), (la, lb));
        // Failure: a's sync fails once; b's sync fails with it, and so does every later
        // sync of either, through the shared handle as through the writer.
        let (mut a, mut b) = (open("3.log"), open("4.log"));
        a.add(b"in a");
        a.flush().unwrap();
        let shared = a.shared_sync().unwrap();
        assert!(b.follow(shared.clone()));
        fs.inject(Fault::on(FsOp::Sync, FaultKind::Io, "3.log", false));
        b.add(b"in b");
        let e = b.sync().unwrap_err();
        assert!(e.to_string().contains("3.log"), "{e}");
        assert_eq!(fs.injected(), 1);
        fs.clear();
        assert!(matches!(shared.sync(), Err(Error::ReadOnly(_))));
        assert!(a.sync().is_err());
        assert!(b.sync().is_err());
        assert_eq!(fs.injected(), 1, "a failed log was fsynced again");
    }

    #[test]
    fn round_trip() {
        let c = read(log_bytes(&[b"a", b"", b"hello world"])).unwrap();
        let p: Vec<&[u8]> = c.records.iter().map(|r| r.1.as_ref()).collect();
        assert_eq!(p, vec![&b"a"[..], b"", b"hello world"]);
        assert!(c.tail.is_none());
        assert_eq!((c.version, c.salt), (LOG_FORMAT_VERSION, SALT));
        // Header 17 bytes, salt record 12, then the first record's 12-byte header.
        assert_eq!(c.payload_offset(c.records[0].0), 17 + 12 + 12);
        let mut out = Vec::new();
        c.format().encode_record(b"a", &mut out);
        assert_eq!(out.len(), 12 + 1);
        assert_eq!(&out[..4], &1u32.to_le_bytes());
        let check = masked_crc(&[SALT.to_le_bytes(), 1u32.to_le_bytes()].concat());
        assert_eq!(&out[4..8], &check.to_le_bytes());
        assert_eq!(&out[8..12], &record_crc(1, b"a").to_le_bytes());
        // Version 3 logs still read.
        let c = read(log_bytes_as(3, &[b"a", b"", b"hello world"])).unwrap();
        assert_eq!(c.version, 3);
        assert_eq!(c.records.iter().map(|r| &r.1[..]).collect::<Vec<_>>(), p);
        assert_eq!(c.payload_offset(c.records[0].0), 17 + 8);
        // Every new log draws its own salt (three alike by chance: 2⁻⁶⁴).
        let salts = [(); 3].map(|()| LogFormat::new_log().salt);
        assert!(salts.iter().any(|&s| s != salts[0]), "{salts:?}");
    }

    #[test]
    fn every_truncation_is_a_torn_tail_keeping_a_prefix() {
        let full = log_bytes(&[b"first", b"second", b"third"]);
        let all = read(full.clone()).unwrap();
        // Where records end: the header (17 bytes) and the salt record (12) are framed
        // plainly, the others with a length check (12 bytes before the payload).
        let mut ends = vec![17, 17 + 12];
        ends.extend(all.records.iter().map(|r| r.0 as usize + 12 + r.1.len()));
        assert_eq!(*ends.last().unwrap(), full.len());
        for n in 17..full.len() {
            let c = read(full[..n].to_vec()).unwrap();
            assert!(c.records.len() <= 3);
            assert_eq!(c.records[..], all.records[..c.records.len()]);
            assert_eq!(c.tail.is_some(), !ends.contains(&n), "cut at {n}");
            assert!(c.tail.is_none_or(|t| !t.intact_after), "cut at {n}");
        }
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corruption_with_offset() {
        let full = log_bytes(&[b"first-record", b"second-record", b"third-record"]);
        let second_at = 17 + 12 + 12 + 12;
        for i in second_at..second_at + 12 + 13 {
            let mut b = full.clone();
            b[i] ^= 0x40;
            match read(b) {
                Err(e) => {
                    assert!(e.is_corruption(), "{e}");
                    let s = e.to_string();
                    assert!(s.contains("000001.log"), "{s}");
                    assert!(s.contains(&format!("offset {second_at}")), "byte {i}: {s}");
                }
                Ok(c) => panic!("flip at {i} read as {:?}", c.records),
            }
        }
    }

    #[test]
    fn flipped_byte_in_the_last_record_is_a_torn_tail() {
        let full = log_bytes(&[b"first-record", b"last"]);
        let mut b = full.clone();
        let n = b.len();
        b[n - 1] ^= 1;
        let c = read(b).unwrap();
        assert_eq!(c.records.len(), 1);
        assert!(c.tail.is_some());
    }

    #[test]
    fn newer_format_and_wrong_kind_are_refused() {
        assert!(matches!(
            read(LogFormat::of(9, SALT).header(LogKind::Wal)),
            Err(Error::UnsupportedFormat { found: 9, .. })
        ));
        let out = LogFormat::of(LOG_FORMAT_VERSION, SALT).header(LogKind::Manifest);
        assert!(read(out).unwrap_err().is_corruption());
        // A salt record of the wrong size is damage that passed its checksum.
        let mut out = LogFormat::of(3, 0).header(LogKind::Wal);
        out[12..16].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
        let crc = record_crc(9, &out[8..17]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        encode_framed(&mut out, Framing::Plain, |b| b.extend_from_slice(b"salt!"));
        let e = read(out).unwrap_err();
        assert!(e.to_string().contains("salt record of 5 bytes"), "{e}");
    }
}
