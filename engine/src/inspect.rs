//! Read-only inspection of a database directory for the `sluice` tool: the same readers
//! the engine uses, no second parser.
//!
//! - [`read_dir_state`]: what the manifest says (layouts, live files, WALs) without opening
//!   a single SSTable, after refusing directories that would make a reader follow paths out
//!   of the directory or trust absurd sizes.
//! - [`verify_dir`]: every checksum and every structural rule, collecting *all* problems
//!   (each with file and offset) instead of stopping at the first.
//! - [`check_table_file`]: the per-SSTable part of that, also usable on a lone file.
//! - [`read_wal_file`]: WAL records decoded for display.
//! - [`check_consistency`]: the cross-layout check on an open [`Db`]: every key resolves to
//!   one newest entry across layouts, and point reads agree with a merged scan.
//! - [`sample_index_keys`] / [`sample_index_keys_in_dir`]: a sample of the existing keys
//!   taken from SSTable indexes (no data block is read), for partition-function analysis.
//!
//! Nothing here writes to the directory.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{WalBatch, WalEntry, WriteBatch};
use crate::coding::get_varint;
use crate::db::{table_file, Db};
use crate::error::{Error, Result};
use crate::fs::{Fs, StdFs};
use crate::layout::{PartitionFn, PartitionSpec};
use crate::log::{read_log, LogKind, TornTail};
use crate::manifest::{
    read_current, EditRecord, FileRecord, ManifestContents, CURRENT, MAX_LEVELS,
};
use crate::recovery::{replay_manifest, ManifestState};
use crate::scan::PartitionEntry;
use crate::sst::files::TableFiles;
use crate::sst::format::BLOCK_TRAILER_LEN;
use crate::sst::{Table, TableKind, TableProps};
use crate::types::{cmp_internal, Kind};
use crate::version::FileMeta;

/// A manifest larger than this is refused: the engine rolls its manifest at 64 MiB and a
/// snapshot record is at most 512 MiB.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;
/// More live SSTables than this in one manifest is taken as damage, not as a database.
pub const MAX_LIVE_FILES: usize = 10_000_000;
/// An SSTable larger than this (per the manifest or on disk) is taken as damage.
pub const MAX_TABLE_BYTES: u64 = 1 << 40;
/// The most entries one stored byte of an SSTable can hold: an entry decodes to at least 4
/// bytes (in a key-delta block, four one-byte varints and nothing else), and zstd stores up
/// to 128 KiB of one repeated byte in a 4-byte block. A record claiming more than `size ×`
/// this lies. (A bound of one entry per 13 stored bytes, the least a plain uncompressed
/// entry takes, refused real databases: key-delta and compressed tables hold more.)
const MAX_ENTRIES_PER_BYTE: u64 = (128 << 10) / 4 / 4;
/// Keys reported by name per SSTable for one kind of problem; the rest are counted.
const DETAILED_PER_FILE: usize = 5;

/// The role of a registered layout version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionRole {
    /// Receives flushes.
    Target,
    /// Was the target; its data drains into the target.
    Draining,
    /// Registered but never the target: holds no data.
    Candidate,
}

impl VersionRole {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionRole::Target => "target",
            VersionRole::Draining => "draining",
            VersionRole::Candidate => "candidate",
        }
    }
}

/// One live layout version as the manifest records it.
#[derive(Clone, Debug)]
pub struct VersionState {
    pub id: u32,
    pub func: Arc<PartitionFn>,
    pub role: VersionRole,
}

impl VersionState {
    pub fn spec(&self) -> &PartitionSpec {
        self.func.spec()
    }
}

/// A WAL file found in the directory.
#[derive(Clone, Debug)]
pub struct WalFileInfo {
    pub number: u64,
    pub path: PathBuf,
    pub size: u64,
    /// At or above the manifest's log number: its records are not all in SSTables yet.
    pub live: bool,
}

/// What the manifest of a directory says, read without opening any SSTable.
#[derive(Clone, Debug)]
pub struct DirState {
    pub dir: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest_number: u64,
    pub manifest_bytes: u64,
    pub manifest_edits: usize,
    pub manifest_torn_tail: Option<TornTail>,
    pub target: u32,
    /// The live versions, by id.
    pub versions: Vec<VersionState>,
    /// The retired versions' ids (they keep nothing else), in order.
    pub retired: Vec<u32>,
    /// Live files (data and forwarding-pointer tables), by number.
    pub files: Vec<FileRecord>,
    /// Manifest offset of the edit that added each live file.
    pub added_at: BTreeMap<u64, u64>,
    pub next_file: u64,
    pub last_seqno: u64,
    pub log_number: u64,
    pub controller: Option<(u64, Vec<u8>)>,
    pub wals: Vec<WalFileInfo>,
}

impl DirState {
    /// The first link of the WAL chain broken: the WAL the manifest names as the first
    /// live one is not the directory's lowest live WAL (the rest of the chain is
    /// [`verify_dir`]'s to follow).
    pub fn first_wal_missing(&self) -> Option<Problem> {
        let found = self.wals.iter().filter(|w| w.live).map(|w| w.number).min();
        let why = "named by the manifest's log number";
        crate::recovery::chain_break(self.log_number, found, why)
            .map(|reason| Problem::error("missing-file", Some(&self.manifest_path), None, reason))
    }

    pub fn version(&self, id: u32) -> Option<&VersionState> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// Every version ever registered, live or retired: the ids a forwarding pointer may
    /// name.
    pub fn known_versions(&self) -> BTreeSet<u32> {
        self.versions
            .iter()
            .map(|v| v.id)
            .chain(self.retired.iter().copied())
            .collect()
    }

    pub fn table_path(&self, number: u64) -> PathBuf {
        table_file(&self.dir, number)
    }

    /// Live files of one version, data and pointer tables.
    pub fn files_of(&self, version: u32) -> impl Iterator<Item = &FileRecord> {
        self.files
            .iter()
            .filter(move |f| f.layout_version == version)
    }

    /// Data files and bytes still in draining versions, and in every live version.
    pub fn migration_totals(&self) -> (u64, u64) {
        let draining: BTreeSet<u32> = self
            .versions
            .iter()
            .filter(|v| v.role == VersionRole::Draining)
            .map(|v| v.id)
            .collect();
        let mut left = 0;
        let mut total = 0;
        for f in self.files.iter().filter(|f| f.kind == TableKind::Data) {
            // Saturating: sizes are the manifest's word (each bounded, not their sum).
            total = u64::saturating_add(total, f.size);
            if draining.contains(&f.layout_version) {
                left = u64::saturating_add(left, f.size);
            }
        }
        (left, total)
    }
}

/// The number in an SSTable or WAL file name (`000042.sst` → 42), or 0.
pub fn table_number(path: &Path) -> u64 {
    crate::util::file_number(path).unwrap_or(0)
}

/// Largest `CURRENT` read: it names one manifest.
const MAX_CURRENT_BYTES: u64 = 4096;

fn refuse(path: &Path, why: impl Into<String>) -> Error {
    Error::corruption(path, 0, why)
}

/// Refuses anything but a regular file inside `dir` (a symlink whose target resolves
/// inside `dir` is accepted; one pointing elsewhere, a FIFO or a directory is not).
pub fn check_inside(dir: &Path, path: &Path) -> Result<u64> {
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if md.file_type().is_symlink() {
        let target = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let root = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        if target.parent() != Some(root.as_path()) {
            return Err(refuse(
                path,
                format!(
                    "is a symlink to {}, outside the database directory; refusing to follow it",
                    target.display()
                ),
            ));
        }
    }
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !md.is_file() {
        return Err(refuse(path, "is not a regular file; refusing to read it"));
    }
    Ok(md.len())
}

/// A directory without `CURRENT` that holds a manifest or a table other than what a first
/// open cut short leaves (see `recovery::left_by_a_first_open`): a database that lost its
/// `CURRENT`, damage to report (naming `CURRENT`), not a path that is no database.
fn lost_current(dir: &Path) -> Option<Error> {
    let names = StdFs.list(dir).ok()?;
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| crate::recovery::looks_like_ours(n))
        .collect();
    let telling = ours
        .iter()
        .find(|n| n.starts_with("MANIFEST-") || n.ends_with(".sst"))?;
    if crate::recovery::left_by_a_first_open(&StdFs, dir, &ours).unwrap_or(false) {
        return None;
    }
    Some(refuse(
        &dir.join(CURRENT),
        format!("CURRENT is missing but {telling} exists: a database that lost its CURRENT file"),
    ))
}

/// Reads `CURRENT` and the manifest it names, refusing symlinks out of the directory and
/// oversized manifests before mapping anything.
pub fn read_manifest_safely(dir: &Path) -> Result<(ManifestContents, u64)> {
    let cur = dir.join(CURRENT);
    match std::fs::symlink_metadata(&cur) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(e) = lost_current(dir) {
                return Err(e);
            }
            return Err(Error::NotADatabase {
                path: dir.to_path_buf(),
                reason: if dir.is_dir() {
                    "no CURRENT file"
                } else {
                    "no such directory"
                }
                .into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::NotADatabase {
                path: dir.to_path_buf(),
                reason: "not a directory".into(),
            })
        }
        // Not "no CURRENT": it may well be there, behind a directory this user may not
        // search.
        Err(e) => return Err(Error::io(&cur, e)),
        Ok(_) => {}
    }
    let cur_len = check_inside(dir, &cur)?;
    if cur_len > MAX_CURRENT_BYTES {
        return Err(refuse(
            &cur,
            format!("CURRENT is {cur_len} bytes; it should name one manifest"),
        ));
    }
    let name = std::fs::read(&cur).map_err(|e| Error::io(&cur, e))?;
    let name = name.strip_suffix(b"\n").unwrap_or(&name);
    // Only a well-formed name is looked up here; anything else (a stray byte, a carriage
    // return) goes to the engine's reader, which reports it as damage in CURRENT.
    let well_formed = std::str::from_utf8(name)
        .ok()
        .filter(|n| crate::manifest::manifest_number(n).is_some());
    if let Some(name) = well_formed {
        let mpath = dir.join(name);
        // A name that leads nowhere is damage to CURRENT: the engine's reader says so.
        let len = match check_inside(dir, &mpath) {
            Err(e) if e.is_not_found() => return Err(read_current(&StdFs, dir).err().unwrap_or(e)),
            r => r?,
        };
        if len > MAX_MANIFEST_BYTES {
            return Err(refuse(
                &mpath,
                format!("manifest is {len} bytes, more than any the engine writes ({MAX_MANIFEST_BYTES})"),
            ));
        }
        let m = read_current(&StdFs, dir)?;
        return Ok((m, len));
    }
    // Let the engine's reader produce its own error for a bad CURRENT.
    let m = read_current(&StdFs, dir)?;
    let len = std::fs::metadata(&m.path).map(|m| m.len()).unwrap_or(0);
    Ok((m, len))
}

fn added_offsets(m: &ManifestContents) -> BTreeMap<u64, u64> {
    let mut at = BTreeMap::new();
    for (off, e) in &m.edits {
        for r in &e.records {
            if let EditRecord::AddFile(f) = r {
                at.insert(f.number, *off);
            }
        }
    }
    at
}

fn versions_of(st: &ManifestState) -> Vec<VersionState> {
    st.registry
        .live
        .iter()
        .map(|(id, r)| VersionState {
            id: *id,
            func: r.func.clone(),
            role: if *id == st.target {
                VersionRole::Target
            } else if r.was_target {
                VersionRole::Draining
            } else {
                VersionRole::Candidate
            },
        })
        .collect()
}

/// Refuses manifests whose records cannot describe a real database.
fn check_sanity(m: &ManifestContents, st: &ManifestState, at: &BTreeMap<u64, u64>) -> Result<()> {
    if st.files.len() > MAX_LIVE_FILES {
        return Err(refuse(
            &m.path,
            format!(
                "manifest names {} live files (limit {MAX_LIVE_FILES})",
                st.files.len()
            ),
        ));
    }
    for f in st.files.values() {
        let off = at.get(&f.number).copied().unwrap_or(0);
        if f.size > MAX_TABLE_BYTES {
            return Err(Error::corruption(
                &m.path,
                off,
                format!(
                    "file {} claims {} bytes (limit {MAX_TABLE_BYTES})",
                    f.number, f.size
                ),
            ));
        }
        if f.entries > f.size.saturating_mul(MAX_ENTRIES_PER_BYTE) {
            return Err(Error::corruption(
                &m.path,
                off,
                format!(
                    "file {} claims {} entries in {} bytes",
                    f.number, f.entries, f.size
                ),
            ));
        }
    }
    Ok(())
}

/// Every WAL file in `dir`, all marked live (for when the manifest cannot be read).
pub fn list_wal_files(dir: &Path) -> Result<Vec<WalFileInfo>> {
    list_wals(dir, None)
}

fn list_wals(dir: &Path, log_number: Option<u64>) -> Result<Vec<WalFileInfo>> {
    let mut v = Vec::new();
    for (number, path) in crate::recovery::wal_files(&StdFs, dir, 0)? {
        let size = std::fs::symlink_metadata(&path)
            .map(|m| m.len())
            .unwrap_or(0);
        v.push(WalFileInfo {
            number,
            size,
            live: log_number.is_none_or(|l| number >= l),
            path,
        });
    }
    Ok(v)
}

/// Reads what the manifest of `dir` says, without opening any SSTable. Refuses (with a
/// corruption error naming the file) a `CURRENT` or manifest that is a symlink out of the
/// directory, an oversized manifest, and records claiming absurd sizes or counts.
pub fn read_dir_state(dir: &Path) -> Result<DirState> {
    let (m, manifest_bytes) = read_manifest_safely(dir)?;
    let st = replay_manifest(&m)?;
    let at = added_offsets(&m);
    check_sanity(&m, &st, &at)?;
    Ok(DirState {
        dir: dir.to_path_buf(),
        manifest_path: m.path.clone(),
        manifest_number: m.number,
        manifest_bytes,
        manifest_edits: m.edits.len(),
        manifest_torn_tail: m.tail.clone(),
        target: st.target,
        versions: versions_of(&st),
        retired: st.registry.retired().collect(),
        files: st.files.values().cloned().collect(),
        added_at: at,
        next_file: st.next_file,
        last_seqno: st.last_seqno,
        log_number: st.log_number,
        controller: st.controller.clone(),
        wals: list_wals(dir, Some(st.log_number))?,
    })
}

/// Checks that every file a reader of `dir` would open stays inside it and is a regular
/// file: `CURRENT`, the manifest, every live SSTable and every WAL. Call before
/// [`Db::open_read_only`] on a directory you do not trust.
///
/// A live SSTable that does not exist is corruption when the manifest naming it stays the
/// same across a second look; when the manifest changed meanwhile, a live process is
/// compacting and the check starts again (up to a few times, then [`Error::Busy`]).
pub fn check_dir_safety(dir: &Path) -> Result<DirState> {
    for attempt in 0..5 {
        let before = current_fingerprint(dir);
        let st = read_dir_state(dir)?;
        let mut missing = None;
        for f in &st.files {
            let p = st.table_path(f.number);
            match check_inside(dir, &p) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    missing.get_or_insert((p, f.number));
                }
                Err(e) => return Err(e),
            }
        }
        for w in &st.wals {
            match check_inside(dir, &w.path) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let Some((path, number)) = missing else {
            return Ok(st);
        };
        std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
        if current_fingerprint(dir) == before && !path.exists() {
            let at = st.added_at.get(&number).copied().unwrap_or(0);
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "missing: named by {} (edit at offset {at})",
                    st.manifest_path.display()
                ),
            ));
        }
    }
    Err(Error::Busy {
        path: dir.to_path_buf(),
        reason: "files keep changing under a live process".into(),
    })
}

// ---------------------------------------------------------------------------------------
// Problems

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Damage or a broken rule: verification fails.
    Error,
    /// Worth knowing, harmless to reads (an orphan file a crash left, a torn WAL tail).
    Warning,
}

/// One finding of a check, located as precisely as the check can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Stable identifier of the check that failed (e.g. `checksum`, `partition`).
    pub check: &'static str,
    pub file: Option<PathBuf>,
    pub offset: Option<u64>,
    pub message: String,
}

impl Problem {
    pub fn error(
        check: &'static str,
        file: Option<&Path>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            severity: Severity::Error,
            check,
            file: file.map(Path::to_path_buf),
            offset,
            message: message.into(),
        }
    }

    pub fn warning(
        check: &'static str,
        file: Option<&Path>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(check, file, offset, message)
        }
    }

    /// A problem from an engine error, keeping its file and offset.
    pub fn from_error(check: &'static str, e: &Error) -> Problem {
        let (file, offset) = error_location(e);
        Problem::error(check, file.as_deref(), offset, e.to_string())
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Engine error messages already name file and offset; others get them prefixed.
        let loc = match (&self.file, self.offset) {
            (Some(p), _) if self.message.contains(&p.display().to_string()) => String::new(),
            (Some(p), Some(o)) => format!("{} at offset {o}: ", p.display()),
            (Some(p), None) => format!("{}: ", p.display()),
            (None, _) => String::new(),
        };
        write!(f, "{loc}{}", self.message)
    }
}

/// The layout version a forwarding pointer's value names (a varint), if it decodes.
pub fn forward_target(value: &[u8]) -> Option<u64> {
    get_varint(value).map(|(v, _)| v)
}

/// The file and offset an error names, if any.
pub fn error_location(e: &Error) -> (Option<PathBuf>, Option<u64>) {
    match e {
        Error::ChecksumMismatch { file, offset, .. }
        | Error::Corruption { file, offset, .. }
        | Error::WalDamaged { file, offset, .. } => (Some(file.clone()), Some(*offset)),
        Error::UnsupportedFormat { file, .. } => (Some(file.clone()), None),
        Error::Io { path, .. } => (Some(path.clone()), None),
        Error::Locked { path } | Error::Busy { path, .. } | Error::NotADatabase { path, .. } => {
            (Some(path.clone()), None)
        }
        _ => (None, None),
    }
}

fn problem_check_of(e: &Error, default: &'static str) -> &'static str {
    match e {
        Error::ChecksumMismatch { .. } => "checksum",
        Error::UnsupportedFormat { .. } => "format",
        Error::Io { .. } => "io",
        _ => default,
    }
}

// ---------------------------------------------------------------------------------------
// One SSTable

/// What a table is expected to be, when known (from the manifest).
#[derive(Clone, Copy, Debug, Default)]
pub struct TableExpect<'a> {
    /// The function of the layout version the table claims; keys are checked against it.
    pub func: Option<&'a PartitionFn>,
    /// The manifest's record of the file; properties and size are compared with it.
    pub record: Option<&'a FileRecord>,
    /// Registered layout versions, retired ones included; forwarding pointers must name one
    /// of them other than the table's own. (A pointer names where its value went first; the
    /// copy may since have moved on, and that version retired, when a later retarget drained
    /// it before the pointer's own version.)
    pub versions: Option<&'a BTreeSet<u32>>,
}

/// The outcome of checking one SSTable.
#[derive(Clone, Debug, Default)]
pub struct TableCheck {
    pub path: PathBuf,
    pub size: u64,
    pub props: Option<TableProps>,
    pub blocks: u64,
    pub entries: u64,
    pub tombstones: u64,
    pub pointers: u64,
    /// Entries whose key maps to another partition under the table's own function.
    pub misplaced: u64,
    pub problems: Vec<Problem>,
}

impl TableCheck {
    pub fn is_ok(&self) -> bool {
        self.problems.iter().all(|p| p.severity != Severity::Error)
    }
}

/// Checks one SSTable file: footer, metadata blocks, every data block's checksum, every
/// entry's decoding, order, range and partition, and the properties' counts. Collects every
/// problem rather than stopping at the first. `progress` is told the bytes of each block
/// as it is checked.
pub fn check_table_file(
    path: &Path,
    expect: &TableExpect<'_>,
    progress: &mut dyn FnMut(u64),
) -> TableCheck {
    let size = match StdFs.file_size(path) {
        Ok(n) => n,
        Err(e) => {
            let e = Error::io(path, e);
            let check = if e.is_not_found() {
                "missing-file"
            } else {
                "io"
            };
            return TableCheck {
                path: path.to_path_buf(),
                problems: vec![Problem::from_error(check, &e)],
                ..Default::default()
            };
        }
    };
    let number = crate::util::file_number(path).unwrap_or(0);
    let table = Table::open(&StdFs, path, number, None);
    check_table(size, table, path, expect, progress)
}

/// [`check_table_file`] on a table of `size` bytes, opened (or not) as `table`.
fn check_table(
    size: u64,
    table: Result<Table>,
    path: &Path,
    expect: &TableExpect<'_>,
    progress: &mut dyn FnMut(u64),
) -> TableCheck {
    let mut out = TableCheck {
        path: path.to_path_buf(),
        size,
        ..Default::default()
    };
    if let Some(rec) = expect.record {
        if rec.size != out.size {
            out.problems.push(Problem::error(
                "size",
                Some(path),
                None,
                format!("file is {} bytes, the manifest says {}", out.size, rec.size),
            ));
        }
    }
    let table = match table {
        Ok(t) => t,
        Err(e) => {
            out.problems
                .push(Problem::from_error(problem_check_of(&e, "sstable"), &e));
            progress(out.size);
            return out;
        }
    };
    let props = table.props().clone();
    check_props_against(&props, path, expect, &mut out.problems);
    // The reader validated the index when it opened the table; each block's offset
    // locates errors.
    let handles: Vec<_> = (0..table.block_count())
        .filter_map(|i| table.block_handle(i))
        .map(|(h, (key, seqno))| ((key, seqno), (h.offset, h.size)))
        .collect();
    let meta_bytes = out.size.saturating_sub(
        handles
            .iter()
            .map(|(_, h)| h.1 + BLOCK_TRAILER_LEN as u64)
            .sum::<u64>(),
    );
    let mut ahead = crate::sst::reader::Readahead::default();
    let mut prev: Option<(Vec<u8>, u64)> = None;
    let mut misplaced_named = 0usize;
    let mut pointer_named = 0usize;
    let mut range_named = 0usize;
    let mut filter_named = 0usize;
    for (i, (last, (offset, size))) in handles.iter().enumerate() {
        out.blocks += 1;
        progress(size + BLOCK_TRAILER_LEN as u64);
        let block = match table.read_block_ahead(i, &mut ahead) {
            Ok(b) => b,
            Err(e) => {
                out.problems
                    .push(Problem::from_error(problem_check_of(&e, "block"), &e));
                prev = None;
                continue;
            }
        };
        let mut last_in_block = false;
        let data = block.data().clone();
        for j in 0..block.len() {
            // Borrowed slices of the block: no reference counting per entry.
            let e = match block
                .parts(j, path, *offset)
                .and_then(|(ks, ke, trailer, vs, ve)| {
                    let kind = Kind::from_u8(trailer as u8).ok_or_else(|| {
                        Error::corruption(path, *offset, format!("block entry {j}: bad kind"))
                    })?;
                    Ok(EntryRef {
                        key: &data[ks..ke],
                        seqno: trailer >> 8,
                        kind,
                        value: &data[vs..ve],
                    })
                }) {
                Ok(e) => e,
                Err(e) => {
                    out.problems.push(Problem::from_error("block", &e));
                    break;
                }
            };
            out.entries += 1;
            match e.kind {
                Kind::Delete => out.tombstones += 1,
                Kind::Forward => out.pointers += 1,
                Kind::Value => {}
            }
            if let Some((pk, ps)) = &prev {
                if cmp_internal(pk, *ps, e.key, e.seqno) != std::cmp::Ordering::Less {
                    out.problems.push(Problem::error(
                        "order",
                        Some(path),
                        Some(*offset),
                        format!("entry {j} of the block at offset {offset} is out of order"),
                    ));
                }
            }
            let out_of_range = e.key < props.smallest.as_slice()
                || e.key > props.largest.as_slice()
                || e.seqno < props.min_seqno
                || e.seqno > props.max_seqno;
            if out_of_range {
                if range_named < DETAILED_PER_FILE {
                    out.problems.push(Problem::error(
                        "range",
                        Some(path),
                        Some(*offset),
                        format!(
                            "key {:?} seqno {} lies outside the properties' key or seqno range",
                            crate::escape::escape(e.key),
                            e.seqno
                        ),
                    ));
                }
                range_named += 1;
            }
            // A filter that denies a key the table holds hides it from point reads
            // (scans do not consult filters): its checksum cannot tell.
            if !table.may_contain_hash(crate::sst::bloom::key_hash(e.key)) {
                if filter_named < DETAILED_PER_FILE {
                    out.problems.push(Problem::error(
                        "filter",
                        Some(path),
                        Some(*offset),
                        format!(
                            "the table's filter denies key {:?}, which it holds: point reads \
                             would not find it",
                            crate::escape::escape(e.key)
                        ),
                    ));
                }
                filter_named += 1;
            }
            if !table.kind_fits(e.kind) {
                out.problems.push(Problem::error(
                    "kind",
                    Some(path),
                    Some(*offset),
                    format!("{:?} entry in a {:?} table", e.kind, props.kind),
                ));
            }
            if let Some(func) = expect.func {
                let p = func.partition_of(e.key);
                if p != props.partition {
                    if misplaced_named < DETAILED_PER_FILE {
                        out.problems.push(Problem::error(
                            "partition",
                            Some(path),
                            Some(*offset),
                            format!(
                                "key {:?} belongs to partition {p} of v{}, but the table is in partition {}",
                                crate::escape::escape(e.key),
                                props.layout_version,
                                props.partition
                            ),
                        ));
                    }
                    misplaced_named += 1;
                    out.misplaced += 1;
                }
            }
            if e.kind == Kind::Forward {
                let to = forward_target(e.value);
                let ok = match (to, expect.versions) {
                    (None, _) => false,
                    (Some(v), Some(known)) => u32::try_from(v)
                        .is_ok_and(|v| known.contains(&v) && v != props.layout_version),
                    (Some(v), None) => u32::try_from(v).is_ok_and(|v| v != props.layout_version),
                };
                if !ok {
                    if pointer_named < DETAILED_PER_FILE {
                        out.problems.push(Problem::error(
                            "forwarding",
                            Some(path),
                            Some(*offset),
                            format!(
                                "forwarding pointer for key {:?} names {}, not another registered layout version",
                                crate::escape::escape(e.key),
                                to.map_or("nothing decodable".to_string(), |v| format!("v{v}"))
                            ),
                        ));
                    }
                    pointer_named += 1;
                }
            }
            last_in_block = true;
            match &mut prev {
                Some((k, s)) => {
                    k.clear();
                    k.extend_from_slice(e.key);
                    *s = e.seqno;
                }
                None => prev = Some((e.key.to_vec(), e.seqno)),
            }
        }
        if let (true, Some((k, s))) = (last_in_block, &prev) {
            if (k.as_slice(), *s) != (last.0, last.1) {
                out.problems.push(Problem::error(
                    "index",
                    Some(path),
                    Some(*offset),
                    "the index's last key for this block disagrees with the block",
                ));
            }
        }
    }
    for (n, what, check) in [
        (misplaced_named, "keys in the wrong partition", "partition"),
        (
            pointer_named,
            "forwarding pointers naming no live version",
            "forwarding",
        ),
        (
            range_named,
            "entries outside the properties' ranges",
            "range",
        ),
        (filter_named, "keys the filter denies", "filter"),
    ] {
        if n > DETAILED_PER_FILE {
            out.problems.push(Problem::error(
                check,
                Some(path),
                None,
                format!("{n} {what} in all ({DETAILED_PER_FILE} shown)"),
            ));
        }
    }
    let all_blocks_read = !out
        .problems
        .iter()
        .any(|p| matches!(p.check, "checksum" | "block"));
    if all_blocks_read
        && (out.entries != props.entries
            || out.tombstones != props.tombstones
            || out.pointers != props.pointers)
    {
        out.problems.push(Problem::error(
            "props",
            Some(path),
            None,
            format!(
                "blocks hold {} entries ({} tombstones, {} pointers); properties say {} ({}, {})",
                out.entries,
                out.tombstones,
                out.pointers,
                props.entries,
                props.tombstones,
                props.pointers
            ),
        ));
    }
    progress(meta_bytes);
    out.props = Some(props);
    out
}

fn check_props_against(
    props: &TableProps,
    path: &Path,
    expect: &TableExpect<'_>,
    problems: &mut Vec<Problem>,
) {
    if let Some(rec) = expect.record {
        if props.layout_version != rec.layout_version || props.partition != rec.partition {
            problems.push(Problem::error(
                "manifest",
                Some(path),
                None,
                format!(
                    "belongs to v{}/{} but the manifest places it in v{}/{}",
                    props.layout_version, props.partition, rec.layout_version, rec.partition
                ),
            ));
        }
        if props.kind != rec.kind
            || props.smallest != rec.smallest.as_ref()
            || props.largest != rec.largest.as_ref()
            || props.min_seqno != rec.min_seqno
            || props.max_seqno != rec.max_seqno
            || props.entries != rec.entries
        {
            problems.push(Problem::error(
                "manifest",
                Some(path),
                None,
                "properties (kind, key range, seqno range or entry count) disagree with the manifest record",
            ));
        }
    }
    if let Some(func) = expect.func {
        if props.fingerprint != func.fingerprint() {
            problems.push(Problem::error(
                "fingerprint",
                Some(path),
                None,
                format!(
                    "written under function {:#018x}; layout v{} is {} ({:#018x})",
                    props.fingerprint,
                    props.layout_version,
                    func.spec(),
                    func.fingerprint()
                ),
            ));
        }
        if props.partition >= func.partitions() {
            problems.push(Problem::error(
                "partition",
                Some(path),
                None,
                format!(
                    "partition {} does not exist in v{} ({} partitions)",
                    props.partition,
                    props.layout_version,
                    func.partitions()
                ),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// WAL

/// One operation of a WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOp {
    pub seqno: u64,
    pub kind: Kind,
    pub key: Bytes,
    pub value: Bytes,
}

/// One WAL record: a write batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// Offset of the record header in the file.
    pub offset: u64,
    /// Seqno of the first operation; operation `i` has `seqno + i`.
    pub seqno: u64,
    pub ops: Vec<WalOp>,
}

/// The records of one WAL file.
#[derive(Clone, Debug)]
pub struct WalContents {
    pub path: PathBuf,
    pub records: Vec<WalRecord>,
    /// The WAL that continues the log, named by the record that ends a WAL the engine
    /// rotated away from (`None` for the newest WAL, and for WALs of format version 1).
    pub successor: Option<u64>,
    /// A torn tail (what a crash leaves at the end of the newest WAL).
    pub tail: Option<TornTail>,
    /// The log format version of its header.
    pub version: u32,
    /// The file's length in bytes.
    pub len: u64,
    /// It holds the record saying every earlier WAL was durable before it was first synced.
    pub notes_earlier: bool,
}

/// Decodes one WAL batch record, whose header is at `offset` and payload at `payload_at`.
fn batch_record(b: WalBatch, path: &Path, offset: u64, payload_at: u64) -> Result<WalRecord> {
    let mut ops = Vec::with_capacity((b.count as usize).min(1 << 16));
    let n = WriteBatch::for_each_op(&b.ops, path, payload_at + 12, |kind, key, value| {
        ops.push(WalOp {
            seqno: 0,
            kind,
            key: b.ops.slice_ref(key),
            value: b.ops.slice_ref(value),
        })
    })?;
    if n != b.count {
        return Err(Error::corruption(
            path,
            offset,
            format!("batch header says {} ops, record holds {n}", b.count),
        ));
    }
    for (i, op) in ops.iter_mut().enumerate() {
        op.seqno = b.seqno + i as u64;
    }
    Ok(WalRecord {
        offset,
        seqno: b.seqno,
        ops,
    })
}

/// Reads and decodes every record of a WAL file.
pub fn read_wal_file(path: &Path) -> Result<WalContents> {
    let data = StdFs.read_file(path).map_err(|e| Error::io(path, e))?;
    let len = data.len() as u64;
    let log = read_log(data, path, LogKind::Wal)?;
    let mut records = Vec::with_capacity(log.records.len());
    let mut successor = None;
    let mut notes_earlier = false;
    for (off, payload) in &log.records {
        if successor.is_some() {
            return Err(Error::corruption(
                path,
                *off,
                "a record follows the successor record that ended this WAL",
            ));
        }
        match WalEntry::decode(payload, path, *off, log.payload_offset(*off))? {
            WalEntry::Successor(n) => successor = Some(n),
            WalEntry::EarlierDurable => notes_earlier = true,
            WalEntry::Batch(b) => {
                records.push(batch_record(b, path, *off, log.payload_offset(*off))?)
            }
        }
    }
    Ok(WalContents {
        path: path.to_path_buf(),
        records,
        successor,
        tail: log.tail,
        version: log.version,
        len,
        notes_earlier,
    })
}

// ---------------------------------------------------------------------------------------
// Whole directory

/// What [`verify_dir`] checks beyond checksums and structure.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Also run [`check_consistency`] on a read-only open of the directory.
    pub deep: bool,
    /// Point reads compared with the merged scan in the deep check (`None`: every key).
    pub sample_reads: Option<u64>,
}

/// What [`verify_dir`] is doing, for progress displays.
pub trait VerifyProgress: Sync {
    /// A new phase starts; `total` is its size in `unit`s if known.
    fn phase(&self, _name: &str, _total: Option<u64>, _unit: &str) {}
    fn advance(&self, _n: u64) {}
}

/// A [`VerifyProgress`] that shows nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;
impl VerifyProgress for NoProgress {}

/// The outcome of [`verify_dir`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub problems: Vec<Problem>,
    pub tables: u64,
    pub table_bytes: u64,
    pub blocks: u64,
    pub entries: u64,
    pub wal_files: u64,
    pub wal_records: u64,
    pub manifest_edits: u64,
    pub deep: Option<ConsistencyReport>,
}

impl VerifyReport {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }
}

/// Verifies a directory without modifying it: the manifest and `CURRENT`, every live
/// SSTable (every checksum, every entry, keys in their own partition under their own
/// function, properties against the manifest), files the manifest names against files on
/// disk, level invariants, forwarding pointers, and every WAL. Every problem found is
/// reported with its file and offset; the walk goes on after each one.
///
/// Returns `Err` only when there is nothing to verify (`dir` is not a database) or the
/// directory keeps changing under a live process ([`Error::Busy`]).
pub fn verify_dir(
    dir: &Path,
    opts: &VerifyOptions,
    progress: &dyn VerifyProgress,
) -> Result<VerifyReport> {
    // A live process may swap the manifest or delete compacted files while we read: when
    // files named by the manifest vanish and the manifest changed meanwhile, start again.
    for attempt in 0..4 {
        let before = current_fingerprint(dir);
        let report = verify_once(dir, opts, progress)?;
        let vanished = report.problems.iter().any(|p| p.check == "missing-file");
        if !vanished || current_fingerprint(dir) == before {
            return Ok(report);
        }
        std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
    }
    Err(Error::Busy {
        path: dir.to_path_buf(),
        reason: "files keep changing under a live process; verify again later".into(),
    })
}

/// What `CURRENT` says and the length of the manifest it names: it changes with every
/// manifest edit a live process makes, so a reader that found files gone can tell a live
/// process's work (it changed) from damage (it did not).
pub fn current_fingerprint(dir: &Path) -> Option<(Vec<u8>, u64)> {
    // The checks of a real read first: a CURRENT that is a FIFO, a link to a device or
    // out of the directory, or gigabytes long is never read (it hung, or filled memory).
    let path = dir.join(CURRENT);
    if check_inside(dir, &path).ok()? > MAX_CURRENT_BYTES {
        return None;
    }
    let cur = std::fs::read(&path).ok()?;
    let name = String::from_utf8_lossy(&cur).trim_end().to_string();
    let len = std::fs::metadata(dir.join(&name)).map(|m| m.len()).ok()?;
    Some((cur, len))
}

fn verify_once(
    dir: &Path,
    opts: &VerifyOptions,
    progress: &dyn VerifyProgress,
) -> Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    progress.phase("manifest", None, "");
    let state = match read_dir_state(dir) {
        Ok(s) => Some(s),
        Err(e @ Error::NotADatabase { .. }) => return Err(e),
        Err(e) => {
            rep.problems
                .push(Problem::from_error(problem_check_of(&e, "manifest"), &e));
            None
        }
    };
    if let Some(st) = &state {
        rep.manifest_edits = st.manifest_edits as u64;
        if let Some(t) = &st.manifest_torn_tail {
            rep.problems.push(Problem::warning(
                "manifest",
                Some(&st.manifest_path),
                Some(t.offset),
                format!(
                    "torn tail of {} bytes (an interrupted edit): {}",
                    t.dropped_bytes, t.reason
                ),
            ));
        }
        check_levels(st, &mut rep.problems);
    }
    let listing = StdFs.list(dir).map_err(|e| Error::io(dir, e))?;
    let on_disk: BTreeMap<u64, PathBuf> = listing
        .iter()
        .filter(|n| n.ends_with(".sst"))
        .filter_map(|n| {
            let p = dir.join(n);
            crate::util::file_number(&p).map(|num| (num, p))
        })
        .collect();

    // Which tables to check, and against what.
    let known: BTreeSet<u32> = state
        .as_ref()
        .map(DirState::known_versions)
        .unwrap_or_default();
    let mut jobs: Vec<(PathBuf, Option<&FileRecord>)> = Vec::new();
    // Tables the manifest does not name, judged once the WALs are read (see below).
    let mut unnamed: Vec<(u64, PathBuf)> = Vec::new();
    if let Some(st) = &state {
        let named: BTreeSet<u64> = st.files.iter().map(|f| f.number).collect();
        for f in &st.files {
            jobs.push((st.table_path(f.number), Some(f)));
        }
        unnamed.extend(
            on_disk
                .iter()
                .filter(|(num, _)| !named.contains(num))
                .map(|(num, p)| (*num, p.clone())),
        );
    } else {
        // Without a manifest, still check every table on its own.
        for p in on_disk.values() {
            jobs.push((p.clone(), None));
        }
    }
    let total: u64 = jobs
        .iter()
        .map(|(p, r)| {
            r.map(|r| r.size)
                .unwrap_or_else(|| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        })
        .fold(0, u64::saturating_add);
    progress.phase("sstables", Some(total), "bytes");
    // Tables are independent: check them on every core, then report in file order.
    let check_one =
        |path: &PathBuf, rec: Option<&FileRecord>| -> (Vec<Problem>, Option<TableCheck>) {
            if let Err(e) = check_inside(dir, path) {
                let missing = e.is_not_found();
                let p = if missing {
                    let at = rec.and_then(|r| state.as_ref()?.added_at.get(&r.number).copied());
                    let manifest = state
                        .as_ref()
                        .map(|s| s.manifest_path.display().to_string())
                        .unwrap_or_default();
                    Problem::error(
                        "missing-file",
                        Some(path),
                        Some(0),
                        format!(
                            "missing: named by {manifest}{}",
                            at.map(|a| format!(" (edit at offset {a})"))
                                .unwrap_or_default()
                        ),
                    )
                } else {
                    Problem::from_error("symlink", &e)
                };
                progress.advance(rec.map_or(0, |r| r.size));
                return (vec![p], None);
            }
            let func = rec
                .and_then(|r| state.as_ref()?.version(r.layout_version))
                .map(|v| v.func.clone());
            let expect = TableExpect {
                func: func.as_deref(),
                record: rec,
                versions: state.as_ref().map(|_| &known),
            };
            let mut done = 0u64;
            let check = check_table_file(path, &expect, &mut |n| {
                done += n;
                progress.advance(n);
            });
            // Keep the bar honest when the file is not the size the manifest said.
            if let Some(r) = rec {
                progress.advance(r.size.saturating_sub(done));
            }
            (Vec::new(), Some(check))
        };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Outcome = (usize, (Vec<Problem>, Option<TableCheck>));
    let mut results: Vec<Outcome> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads.min(jobs.len()).max(1))
            .map(|_| {
                sc.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((path, rec)) = jobs.get(i) else {
                            break;
                        };
                        out.push((i, check_one(path, *rec)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|r| r.0);
    for (_, (problems, check)) in results {
        rep.problems.extend(problems);
        if let Some(check) = check {
            rep.tables += 1;
            rep.table_bytes += check.size;
            rep.blocks += check.blocks;
            rep.entries += check.entries;
            rep.problems.extend(check.problems);
        }
    }

    progress.phase("wal", None, "");
    let wals_end = verify_wals(dir, state.as_ref(), &mut rep)?;
    // As recovery's `check_unnamed_tables` has it: an unnamed table holding a write past
    // the last one the manifest and the WALs know is a manifest that lost the edits
    // recording a flush, which the open refuses (unless the WALs were cut short, which
    // drops such writes); any other is an orphan the next writable open removes.
    if let Some(st) = &state {
        let last_seqno = st.last_seqno.max(wals_end.last.unwrap_or(0));
        for (num, p) in &unnamed {
            // As recovery has it, a symlink is not read (see the warning below).
            let past = (!crate::fs::is_symlink(p))
                .then(|| Table::open(&StdFs, p, *num, None).ok())
                .flatten()
                .map(|t| (t.props().entries, t.props().max_seqno))
                .filter(|&(entries, max)| entries > 0 && max > last_seqno);
            rep.problems.push(match past {
                Some((_, max)) if !wals_end.dropped_suffix => Problem::error(
                    "orphan",
                    Some(p),
                    Some(0),
                    format!(
                        "no manifest edit names this table, yet it holds writes up to seqno \
                         {max} and the manifest and WALs end at {last_seqno}: the manifest \
                         lost the edits recording a flush; the next open refuses the directory"
                    ),
                ),
                _ if crate::fs::is_symlink(p) => Problem::warning(
                    "orphan",
                    Some(p),
                    None,
                    "a symlink named like a table, not read; the next writable open removes \
                     the link (not what it points to)",
                ),
                // Opens remove only files: a directory named like a table stays.
                _ if !std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) => {
                    Problem::warning(
                        "orphan",
                        Some(p),
                        None,
                        "named like a table but not a file; opens leave it where it is",
                    )
                }
                _ => Problem::warning(
                    "orphan",
                    Some(p),
                    None,
                    "not named by the manifest (left by an interrupted job; the next writable open removes it)",
                ),
            });
        }
    }

    if opts.deep && rep.is_ok() {
        match Db::open_read_only(dir, tool_options()) {
            Ok(db) => {
                let est: u64 = state.as_ref().map_or(0, |s| {
                    s.files
                        .iter()
                        .fold(0, |n: u64, f| n.saturating_add(f.entries))
                });
                progress.phase("consistency", Some(est), "keys");
                let c = check_consistency(
                    &db,
                    &ConsistencyOptions {
                        sample_reads: opts.sample_reads,
                    },
                    &mut |n| progress.advance(n),
                )?;
                rep.problems.extend(c.problems.iter().cloned());
                rep.deep = Some(c);
            }
            Err(e @ Error::Busy { .. }) => return Err(e),
            Err(e) => rep
                .problems
                .push(Problem::from_error(problem_check_of(&e, "open"), &e)),
        }
    }
    Ok(rep)
}

/// Options for opening a directory from an inspection tool: no lazy moves (a read must
/// not change what the next read sees), a small cache.
pub fn tool_options() -> crate::Options {
    crate::Options {
        create_if_missing: false,
        move_bytes_per_sec: 0,
        migration_bytes_per_sec: 0,
        block_cache_bytes: 8 << 20,
        ..crate::Options::default()
    }
}

fn check_levels(st: &DirState, problems: &mut Vec<Problem>) {
    let mut by_part: BTreeMap<(u32, u32, u8), Vec<&FileRecord>> = BTreeMap::new();
    for f in st
        .files
        .iter()
        .filter(|f| f.kind == TableKind::Data && f.level > 0)
    {
        by_part
            .entry((f.layout_version, f.partition, f.level))
            .or_default()
            .push(f);
    }
    for ((v, p, l), mut files) in by_part {
        files.sort_by(|a, b| a.smallest.cmp(&b.smallest));
        for w in files.windows(2) {
            if w[0].largest >= w[1].smallest {
                problems.push(Problem::error(
                    "levels",
                    Some(&st.manifest_path),
                    st.added_at.get(&w[1].number).copied(),
                    format!(
                        "v{v}/{p} L{l}: files {} and {} overlap",
                        w[0].number, w[1].number
                    ),
                ));
            }
        }
    }
    for f in &st.files {
        if f.level as usize >= MAX_LEVELS {
            problems.push(Problem::error(
                "levels",
                Some(&st.manifest_path),
                st.added_at.get(&f.number).copied(),
                format!("file {} at level {}", f.number, f.level),
            ));
        }
    }
}

/// Where the WALs end, as recovery would replay them.
struct WalsEnd {
    /// The last seqno of the records replayed.
    last: Option<u64>,
    /// Whether recovery drops what follows some point of the WALs (a WAL cut short by a
    /// crash), or refuses them for damage that a point-in-time open would stop at.
    dropped_suffix: bool,
}

fn verify_wals(dir: &Path, state: Option<&DirState>, rep: &mut VerifyReport) -> Result<WalsEnd> {
    let wals = match state {
        Some(s) => s.wals.clone(),
        None => list_wals(dir, None)?,
    };
    let mut last: Option<(u64, PathBuf)> = None;
    let read: Vec<_> = wals
        .iter()
        .map(|w| check_inside(dir, &w.path).map(|_| read_wal_file(&w.path)))
        .collect();
    // The last live WAL holding a record (of any kind, as recovery counts them): recovery
    // takes a torn end in it, or in any WAL after it (those are empty: an open that failed
    // after creating its WAL), as the crash's own, so verify calls it a warning too and an
    // error only where records follow.
    let last_written = wals.iter().zip(&read).rposition(|(w, r)| {
        w.live
            && matches!(r, Ok(Ok(c))
                if !c.records.is_empty() || c.successor.is_some() || c.notes_earlier)
    });
    // Live WALs saying every earlier WAL was durable, and each WAL's format version (one
    // whose header is gone takes the next one's), as recovery's `replay_wals` has them.
    let notes: Vec<bool> = wals
        .iter()
        .zip(&read)
        .map(|(w, r)| w.live && matches!(r, Ok(Ok(c)) if c.notes_earlier))
        .collect();
    let holds_batch: Vec<bool> = wals
        .iter()
        .zip(&read)
        .map(|(w, r)| w.live && matches!(r, Ok(Ok(c)) if !c.records.is_empty()))
        .collect();
    let batches_after: Vec<bool> = (0..holds_batch.len())
        .map(|i| holds_batch[i + 1..].iter().any(|&b| b))
        .collect();
    let own: Vec<u32> = read
        .iter()
        .map(|r| match r {
            Ok(Ok(c)) => c.version,
            _ => 0,
        })
        .collect();
    let versions: Vec<u32> = (0..own.len())
        .map(|i| own[i..].iter().copied().find(|&v| v > 0).unwrap_or(0))
        .collect();
    // A WAL the crash may have cut short, until a later record shows whether the cut took
    // any write: (file, offset where its intact records end).
    let mut cut: Option<(PathBuf, u64)> = None;
    let mut dropped_suffix = false;
    // The chain of live WALs, as recovery follows it: the manifest names the first, each
    // WAL rotated away from names the next. The next expected link: its number, why, the
    // file that names it and that file's WAL number (None: the manifest).
    type Link = (u64, String, PathBuf, Option<u64>);
    let mut link: Option<Link> = state.map(|s| {
        (
            s.log_number,
            "named by the manifest's log number".to_string(),
            s.manifest_path.clone(),
            None,
        )
    });
    // A break is a `missing-file` problem, which `verify_dir` checks again when the
    // manifest changed meanwhile (a flush deleting the WAL its old log number named). A
    // WAL the listing lacks where a live rotation could explain it (recovery's
    // `may_be_unlisted`) and that is in the directory now is no break.
    let check_link = |link: &mut Option<Link>, found: Option<u64>, rep: &mut VerifyReport| {
        let Some((expected, why, file, named_by)) = link.take() else {
            return;
        };
        let Some(reason) = crate::recovery::chain_break(expected, found, &why) else {
            return;
        };
        if crate::recovery::may_be_unlisted(expected, named_by, found)
            && crate::db::wal_file(dir, expected).exists()
        {
            return;
        }
        rep.problems
            .push(Problem::error("missing-file", Some(&file), None, reason));
    };
    for (i, (w, r)) in wals.iter().zip(read).enumerate() {
        if w.live {
            check_link(&mut link, Some(w.number), rep);
        }
        // A listed WAL that is gone. An obsolete one (below the log number) is deleted by
        // a live process right after the manifest edit that made it obsolete, which may
        // have been durable before our listing: nothing to report. A live one is deleted
        // only by a flush whose edit changes the manifest (`verify_dir` starts again), or
        // it is missing.
        let gone = |e: &Error, otherwise: &'static str| {
            if e.is_not_found() {
                "missing-file"
            } else {
                otherwise
            }
        };
        let r = match r {
            Ok(r) => r,
            Err(e) if !w.live && e.is_not_found() => continue,
            Err(e) => {
                rep.problems
                    .push(Problem::from_error(gone(&e, "symlink"), &e));
                continue;
            }
        };
        if !w.live && r.as_ref().is_err_and(Error::is_not_found) {
            continue;
        }
        rep.wal_files += 1;
        if !w.live {
            rep.problems.push(Problem::warning(
                "wal",
                Some(&w.path),
                None,
                "obsolete WAL (below the manifest's log number); the next writable open removes it",
            ));
        }
        let c = match r {
            Ok(c) => c,
            Err(e) => {
                rep.problems.push(Problem::from_error(
                    gone(&e, problem_check_of(&e, "wal")),
                    &e,
                ));
                last = None;
                // Recovery refuses here, or (point in time) drops all that follows: no
                // unnamed table can be judged against where the WALs end.
                dropped_suffix |= w.live;
                continue;
            }
        };
        rep.wal_records += c.records.len() as u64;
        if w.live {
            link = c.successor.map(|n| {
                (
                    n,
                    format!("named as the successor of {}", w.path.display()),
                    w.path.clone(),
                    Some(w.number),
                )
            });
        }
        let records_follow = last_written.is_some_and(|l| l > i);
        if w.live && c.len == 0 && !records_follow {
            // Recovery opens without complaint (nothing to replay), as it must after a
            // crash right after the file was made; but an emptied WAL looks the same.
            rep.problems.push(Problem::warning(
                "wal",
                Some(&w.path),
                Some(0),
                "empty: no header record. An open or a rotation that stopped right after \
                 creating it leaves it so (nothing lost); if writes were made to it, they \
                 are gone, and recovery opens without them",
            ));
        }
        // As recovery has it: an older WAL of format 3 that no later WAL says was durable
        // may have been cut short by a crash before its background sync; recovery then
        // drops what follows it (unsynced writes only).
        let may_be_cut = w.live
            && records_follow
            && versions[i] >= crate::log::DEFERRED_SYNC_VERSION
            && !notes[i + 1..].iter().any(|&n| n);
        if let Some(t) = &c.tail {
            if !records_follow || !w.live || may_be_cut {
                rep.problems.push(Problem::warning(
                    "wal",
                    Some(&w.path),
                    Some(t.offset),
                    format!(
                        "torn tail of {} bytes (a crash artefact; recovery drops it)",
                        t.dropped_bytes
                    ),
                ));
            } else {
                rep.problems.push(Problem::error(
                    "wal",
                    Some(&w.path),
                    Some(t.offset),
                    format!("damaged record in an older WAL: {}", t.reason),
                ));
                // As above: refused, or all that follows dropped.
                dropped_suffix = true;
            }
        }
        if !w.live {
            continue;
        }
        let mut stop = false;
        for r in &c.records {
            if r.ops.is_empty() {
                rep.problems.push(Problem::error(
                    "wal",
                    Some(&w.path),
                    Some(r.offset),
                    "empty batch record",
                ));
            }
            if let Some((file, at)) = cut.take() {
                // Does the first write after the cut continue the seqnos (from the last
                // one replayed, or else from the manifest's last flushed one)?
                let continues = match (&last, state) {
                    (Some((prev, _)), _) => r.seqno == prev + 1,
                    (None, Some(s)) => r.seqno <= s.last_seqno.saturating_add(1),
                    (None, None) => true,
                };
                if !continues {
                    rep.problems.push(Problem::warning(
                        "wal",
                        Some(&file),
                        Some(at),
                        "cut short by a crash before its background fsync: recovery keeps \
                         what comes before and drops the later WALs, which held only \
                         unsynced writes",
                    ));
                    stop = true;
                    break;
                }
            }
            if let Some((prev, _)) = &last {
                if r.seqno != prev + 1 {
                    rep.problems.push(Problem::error(
                        "wal",
                        Some(&w.path),
                        Some(r.offset),
                        format!("seqno {} follows {prev}: records are missing", r.seqno),
                    ));
                }
            }
            last = Some((r.seqno + (r.ops.len() as u64).max(1) - 1, w.path.clone()));
        }
        if stop {
            link = None;
            dropped_suffix = true;
            break;
        }
        if may_be_cut && c.successor.is_none() && cut.is_none() {
            cut = Some((w.path.clone(), c.tail.as_ref().map_or(c.len, |t| t.offset)));
        }
        // As recovery has it: an older WAL known durable whole that does not end in the
        // record naming the next was cut short, at a record boundary (a damaged end is
        // reported above; a later batch shows the cut as missing seqnos). Unless it grew
        // or went while we read it: a live rotation, or a flush that deleted it once the
        // manifest no longer needed it; neither is damage.
        if records_follow
            && !may_be_cut
            && !batches_after[i]
            && c.successor.is_none()
            && c.tail.is_none()
            && versions[i] >= crate::log::SUCCESSOR_VERSION
            && std::fs::metadata(&w.path).is_ok_and(|m| m.len() <= c.len)
        {
            rep.problems.push(Problem::error(
                "wal",
                Some(&w.path),
                Some(c.len),
                "ends without the record naming the WAL after it, though later WALs hold \
                 records and this one is known durable whole: it was cut short, and \
                 writes at its end may be missing",
            ));
            // Unlike damage above, recovery judges unnamed tables against where the WALs
            // end here (see `Replayed::unended`): not `dropped_suffix`.
        }
    }
    check_link(&mut link, None, rep);
    Ok(WalsEnd {
        last: last.map(|(seqno, _)| seqno),
        dropped_suffix,
    })
}

// ---------------------------------------------------------------------------------------
// Cross-layout consistency

/// How much of the consistency check to run.
#[derive(Clone, Debug, Default)]
pub struct ConsistencyOptions {
    /// Point reads compared with the merged scan: about this many keys, evenly spread
    /// (`None`: every key).
    pub sample_reads: Option<u64>,
}

/// The outcome of [`check_consistency`].
#[derive(Clone, Debug, Default)]
pub struct ConsistencyReport {
    /// Distinct keys found in SSTables across every live layout.
    pub keys: u64,
    /// Keys whose newest entry is a value (visible to reads), a tombstone, or in the
    /// memtables only.
    pub visible: u64,
    pub deleted: u64,
    pub memtable_only: u64,
    /// Keys present in more than one live layout.
    pub in_several_layouts: u64,
    /// Newest entries that a forwarding pointer says were moved (and whose copy was found).
    pub moved: u64,
    pub reads_checked: u64,
    pub problems: Vec<Problem>,
}

struct Cand {
    version: u32,
    partition: u32,
    entry: PartitionEntry,
}

impl Cand {
    fn seqno(&self) -> u64 {
        match &self.entry {
            PartitionEntry::Value { seqno, .. }
            | PartitionEntry::Tombstone { seqno, .. }
            | PartitionEntry::Moved { seqno, .. } => *seqno,
        }
    }
}

struct HeapItem(Bytes, usize);
impl PartialEq for HeapItem {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0 && self.1 == o.1
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Min-heap on (key, source).
        o.0.cmp(&self.0).then(o.1.cmp(&self.1))
    }
}

/// The cross-layout consistency check, on an open database (read-only or live):
///
/// - every key in a partition maps to that partition under its version's function;
/// - every key resolves to exactly one newest entry across all live layouts (a value and
///   the forwarding pointer left by its lazy move are one entry; two different entries with
///   the same seqno are not);
/// - a forwarding pointer's target version holds the moved copy (or something newer);
/// - the merged scan returns exactly the keys whose newest entry (memtables included) is a
///   value, with that value, and point reads of a sample (or of every key) agree with it.
///
/// `progress` is told how many SSTable keys were visited, in steps.
pub fn check_consistency(
    db: &Db,
    opts: &ConsistencyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ConsistencyReport> {
    let mut rep = ConsistencyReport::default();
    // One registered snapshot, then one view: everything below is judged at the same
    // instant while writes, flushes and compactions go on (a registered snapshot keeps
    // compaction from dropping what it sees).
    let snap = db.snapshot();
    let snapshot = snap.seqno();
    let view = db.inner.view.load_full();
    let funcs: BTreeMap<u32, Arc<PartitionFn>> = view
        .files
        .layouts
        .iter()
        .map(|(id, l)| (*id, l.func.clone()))
        .collect();
    let mut sources = Vec::new();
    let mut estimated = 0u64;
    for (id, l) in &view.files.layouts {
        for (i, p) in l.parts.iter().enumerate() {
            if p.data_file_count() > 0 {
                estimated = p
                    .data_files()
                    .fold(estimated, |n, f| n.saturating_add(f.entries));
                sources.push((
                    *id,
                    i as u32,
                    db.inner
                        .partition_entries_in(view.clone(), *id, i as u32, snapshot)?,
                ));
            }
        }
    }
    let stride = match opts.sample_reads {
        None | Some(0) => 1,
        Some(n) => (estimated / n.max(1)).max(1),
    };
    let mut heads: Vec<Option<PartitionEntry>> = Vec::with_capacity(sources.len());
    let mut heap = BinaryHeap::new();
    for (i, (_, _, it)) in sources.iter_mut().enumerate() {
        let h = it.next().transpose()?;
        if let Some(e) = &h {
            heap.push(HeapItem(e.key().clone(), i));
        }
        heads.push(h);
    }
    let mut scan = snap.range(..).peekable();
    let mems = view.memtables();
    let mem_newest = |key: &[u8]| -> Option<(u64, Kind, Bytes)> {
        mems.iter()
            .filter_map(|m| m.get(key, snapshot))
            .max_by_key(|f| f.0)
    };
    let mut since_progress = 0u64;
    let mut problems_named = 0usize;
    let mut report = |rep: &mut ConsistencyReport, p: Problem| {
        problems_named += 1;
        if problems_named <= 100 {
            rep.problems.push(p);
        } else if problems_named == 101 {
            rep.problems.push(Problem::error(
                "consistency",
                None,
                None,
                "more than 100 consistency problems; the rest are not listed",
            ));
        }
    };
    while let Some(HeapItem(key, _)) = heap.peek().map(|h| HeapItem(h.0.clone(), h.1)) {
        // Gather every partition's newest entry for this key.
        let mut cands: Vec<Cand> = Vec::new();
        while heap.peek().is_some_and(|h| h.0 == key) {
            let Some(HeapItem(_, i)) = heap.pop() else {
                break;
            };
            if let Some(entry) = heads[i].take() {
                cands.push(Cand {
                    version: sources[i].0,
                    partition: sources[i].1,
                    entry,
                });
            }
            let next = sources[i].2.next().transpose()?;
            if let Some(e) = &next {
                heap.push(HeapItem(e.key().clone(), i));
            }
            heads[i] = next;
        }
        rep.keys += 1;
        since_progress += 1;
        if since_progress >= 4096 {
            progress(since_progress);
            since_progress = 0;
        }
        let ek = crate::escape::escape(&key);
        for c in &cands {
            if let Some(f) = funcs.get(&c.version) {
                let p = f.partition_of(&key);
                if p != c.partition {
                    report(
                        &mut rep,
                        Problem::error(
                            "partition",
                            None,
                            None,
                            format!(
                                "key {ek:?} is stored in v{}/{} but maps to partition {p}",
                                c.version, c.partition
                            ),
                        ),
                    );
                }
            }
        }
        let versions: BTreeSet<u32> = cands.iter().map(|c| c.version).collect();
        if versions.len() > 1 {
            rep.in_several_layouts += 1;
        }
        let newest_seq = cands.iter().map(Cand::seqno).max().unwrap_or(0);
        let newest: Vec<&Cand> = cands.iter().filter(|c| c.seqno() == newest_seq).collect();
        // Resolve the newest SSTable entry: the value (if any), checking duplicates agree.
        let mut value: Option<Option<Bytes>> = None;
        // (the pointer's own version, the version it names)
        let mut moved: Vec<(u32, u32)> = Vec::new();
        let mut ambiguous = false;
        for c in &newest {
            let this = match &c.entry {
                PartitionEntry::Value { value, .. } => Some(Some(value.clone())),
                PartitionEntry::Tombstone { .. } => Some(None),
                PartitionEntry::Moved { to, .. } => {
                    moved.push((c.version, to.0));
                    None
                }
            };
            if let Some(t) = this {
                match &value {
                    None => value = Some(t),
                    Some(v) if *v != t => ambiguous = true,
                    Some(_) => {}
                }
            }
        }
        if ambiguous {
            report(
                &mut rep,
                Problem::error(
                    "consistency",
                    None,
                    None,
                    format!(
                        "key {ek:?} resolves to different newest entries at seqno {newest_seq} in {}",
                        newest.iter().map(|c| format!("v{}/{}", c.version, c.partition)).collect::<Vec<_>>().join(", ")
                    ),
                ),
            );
        }
        // A pointer names where its value was first moved; the copy (same seqno) may since
        // have moved on to a later version, and the one named may have drained and retired.
        // What must hold is that some other live version has the copy.
        for (from, to) in &moved {
            if !newest
                .iter()
                .any(|c| c.version != *from && !matches!(c.entry, PartitionEntry::Moved { .. }))
            {
                report(
                    &mut rep,
                    Problem::error(
                        "forwarding",
                        None,
                        None,
                        format!("key {ek:?} seqno {newest_seq} was moved out of v{from} (to v{to}), but no other live version holds a copy of it"),
                    ),
                );
            }
        }
        if !moved.is_empty() && value.is_some() {
            rep.moved += 1;
        }
        // What a reader must see: the memtables may hold something newer.
        let sst_seq = newest_seq;
        let expected: Option<Bytes> = match mem_newest(&key) {
            Some((s, kind, v)) if s >= sst_seq => (kind == Kind::Value).then_some(v),
            _ => value.clone().flatten(),
        };
        if expected.is_some() {
            rep.visible += 1;
        } else {
            rep.deleted += 1;
        }
        // Keys the scan returns before this one must come from the memtables alone.
        while let Some(r) = scan.peek() {
            let (k, _) = match r {
                Ok(kv) => kv,
                Err(_) => return Err(scan.next().and_then(|r| r.err()).unwrap_or(Error::Closed)),
            };
            if *k >= key {
                break;
            }
            let Some(Ok((k, v))) = scan.next() else { break };
            check_memtable_only(&k, &v, &mem_newest, &mut rep, &mut report);
        }
        let scanned = match scan.peek() {
            Some(Ok((k, _))) if *k == key => scan.next().and_then(|r| r.ok()).map(|(_, v)| v),
            _ => None,
        };
        // Where the newest table entry lies, for the messages below.
        let whence = || {
            let at: Vec<String> = newest
                .iter()
                .map(|c| format!("v{}/{}", c.version, c.partition))
                .collect();
            format!("seqno {newest_seq} in {}", at.join(", "))
        };
        if scanned != expected {
            report(
                &mut rep,
                Problem::error(
                    "consistency",
                    None,
                    None,
                    format!(
                        "key {ek:?}: merged scan returns {}, the layouts' newest entry ({}) is {}",
                        describe(&scanned),
                        whence(),
                        describe(&expected)
                    ),
                ),
            );
        }
        if rep.keys % stride == 0 {
            rep.reads_checked += 1;
            let got = snap.get(&key)?;
            if got != expected {
                report(
                    &mut rep,
                    Problem::error(
                        "consistency",
                        None,
                        None,
                        format!(
                            "key {ek:?}: point read returns {}, merged scan and layouts ({}) say {}",
                            describe(&got),
                            whence(),
                            describe(&expected)
                        ),
                    ),
                );
            }
        }
    }
    for r in scan {
        let (k, v) = r?;
        check_memtable_only(&k, &v, &mem_newest, &mut rep, &mut report);
    }
    progress(since_progress);
    Ok(rep)
}

/// The newest memtable entry of a key: (seqno, kind, value).
type MemLookup<'a> = dyn Fn(&[u8]) -> Option<(u64, Kind, Bytes)> + 'a;

fn check_memtable_only(
    k: &Bytes,
    v: &Bytes,
    mem_newest: &MemLookup<'_>,
    rep: &mut ConsistencyReport,
    report: &mut dyn FnMut(&mut ConsistencyReport, Problem),
) {
    rep.memtable_only += 1;
    match mem_newest(k) {
        Some((_, Kind::Value, mv)) if mv == *v => {}
        _ => report(
            rep,
            Problem::error(
                "consistency",
                None,
                None,
                format!(
                    "key {:?}: merged scan returns a value found in no layout and no memtable",
                    crate::escape::escape(k)
                ),
            ),
        ),
    }
}

fn describe(v: &Option<Bytes>) -> String {
    match v {
        None => "nothing".into(),
        Some(b) if b.len() <= 32 => format!("{:?}", crate::escape::escape(b)),
        Some(b) => format!("a {}-byte value", b.len()),
    }
}

// ---------------------------------------------------------------------------------------
// Key sampling

/// Deterministic reservoir of up to `max` keys.
struct Reservoir {
    max: usize,
    seen: u64,
    keys: Vec<Bytes>,
    weights: Vec<f64>,
    rng: u64,
}

impl Reservoir {
    fn new(max: usize) -> Reservoir {
        Reservoir {
            max,
            seen: 0,
            keys: Vec::new(),
            weights: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: deterministic, so the same directory always yields the same sample.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn offer(&mut self, k: &[u8], weight: f64) {
        self.seen += 1;
        if self.keys.len() < self.max {
            self.keys.push(Bytes::copy_from_slice(k));
            self.weights.push(weight);
        } else {
            let j = self.next_rand() % self.seen;
            if (j as usize) < self.max {
                self.keys[j as usize] = Bytes::copy_from_slice(k);
                self.weights[j as usize] = weight;
            }
        }
    }
}

/// A sample of existing keys taken from SSTable indexes: the last key of every data block
/// (about one key per block's worth of bytes, so the sample is byte-weighted), deduplicated,
/// reservoir-sampled down to at most `max` keys. Reads no data block.
#[derive(Clone, Debug, Default)]
pub struct KeySample {
    pub keys: Vec<Bytes>,
    /// Entries each sampled key stands for (its table's entries per block). An index key
    /// is one per block, and blocks of small or fragmented tables hold fewer entries: left
    /// unweighted, partitions split into many small files would look bigger than they are.
    pub weights: Vec<f64>,
    /// Index keys seen before sampling down.
    pub index_keys_seen: u64,
    pub tables: u64,
}

fn sample_tables<'a>(tables: impl Iterator<Item = &'a Table>, max: usize) -> KeySample {
    let mut r = Reservoir::new(max);
    let mut seen = std::collections::HashSet::new();
    let mut n = 0u64;
    for t in tables {
        n += 1;
        let weight = t.props().entries as f64 / t.block_count().max(1) as f64;
        for k in t.index_keys() {
            // The same key in several levels or layouts counts once.
            if seen.insert(xxhash_rust::xxh3::xxh3_64(k)) {
                r.offer(k, weight);
            }
        }
    }
    KeySample {
        index_keys_seen: r.seen,
        keys: r.keys,
        weights: r.weights,
        tables: n,
    }
}

/// [`KeySample`] of an open database's live data tables (every live layout).
pub fn sample_index_keys(db: &Db, max: usize) -> KeySample {
    let view = db.inner.view.load_full();
    let tables: Vec<Arc<FileMeta>> = view
        .files
        .layouts
        .values()
        .flat_map(|l| l.data_files().cloned())
        .collect();
    sample_tables(tables.iter().map(|f| f.table.as_ref()), max)
}

/// [`KeySample`] of a directory's live data tables, opening each table (footer, index,
/// properties; no data block) after the directory's safety checks. A table a live
/// process's compaction deleted between the manifest's read and its own open starts the
/// sample again, as [`verify_dir`] does (up to a few times, then [`Error::Busy`]); an open
/// table's index stays in memory whatever happens to its file.
pub fn sample_index_keys_in_dir(dir: &Path, max: usize) -> Result<KeySample> {
    'attempt: for attempt in 0..4 {
        let before = current_fingerprint(dir);
        let st = check_dir_safety(dir)?;
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::SampleAfterDirState);
        let mut tables = Vec::new();
        // The sample reads the indexes, which an open table holds in memory: its file
        // need not stay open, and thousands of tables must not need as many descriptors.
        let files = TableFiles::new(Arc::new(StdFs), 16);
        for f in st.files.iter().filter(|f| f.kind == TableKind::Data) {
            let path = st.table_path(f.number);
            match Table::open_in(&files, &StdFs, &path, f.number, None) {
                Ok(t) => tables.push(t),
                Err(e) if e.is_not_found() && current_fingerprint(dir) != before => {
                    std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
                    continue 'attempt;
                }
                Err(e) => return Err(e),
            }
        }
        return Ok(sample_tables(tables.iter(), max));
    }
    Err(Error::Busy {
        path: dir.to_path_buf(),
        reason: "tables keep changing under a live process; sample again later".into(),
    })
}

/// An entry as borrowed slices of its block (verification reads every entry).
struct EntryRef<'a> {
    key: &'a [u8],
    seqno: u64,
    kind: Kind,
    value: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, WriteBatch};

    fn opts() -> Options {
        Options {
            partition: PartitionSpec::Range {
                boundaries: vec![b"k1".to_vec(), b"k2".to_vec()],
            },
            migration_bytes_per_sec: 0,
            level0_compaction_trigger: 100,
            level0_slowdown_trigger: 200,
            level0_stop_trigger: 300,
            move_bytes_per_sec: 1 << 30,
            move_on_first_read: true,
            ..Options::tiny()
        }
    }

    /// `verify_dir` with the deep check, every key read.
    fn verify_deep(dir: &Path) -> VerifyReport {
        verify_dir(
            dir,
            &VerifyOptions {
                deep: true,
                sample_reads: None,
            },
            &NoProgress,
        )
        .unwrap()
    }

    fn build(dir: &Path) {
        let db = Db::open(dir, opts()).unwrap();
        for i in 0..300u32 {
            db.put(format!("k{i:04}"), format!("value{i}")).unwrap();
        }
        db.flush().unwrap();
        let v2 = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 7,
                hashed_prefix: None,
            })
            .unwrap();
        db.set_target(v2).unwrap();
        let mut b = WriteBatch::new();
        b.delete("k0001").put("k0002", "new");
        db.write(b).unwrap();
        assert!(db.get("k0005").unwrap().is_some()); // a lazy move
        db.flush().unwrap();
        db.put("mem-only", "x").unwrap();
        db.close().unwrap();
    }

    /// Key-delta blocks compressed with zstd hold many entries per stored byte (here more
    /// than one per 13 bytes, the least a plain uncompressed entry takes, which the check
    /// used to demand); the manifest's sanity check accepts them, and still refuses a
    /// record claiming more entries than any stored byte can hold.
    #[test]
    fn the_manifest_sanity_check_takes_dense_tables_and_refuses_impossible_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            Options {
                compression: crate::Compression::Zstd(3),
                key_delta_blocks: true,
                ..Options::default()
            },
        )
        .unwrap();
        for i in 0..20_000u32 {
            db.put(format!("key{i:08}"), "").unwrap();
        }
        db.flush().unwrap();
        db.close().unwrap();
        let st = read_dir_state(dir.path()).unwrap();
        let f = &st.files[0];
        assert!(
            f.entries > f.size / 13,
            "{} entries in {} bytes",
            f.entries,
            f.size
        );
        let rep = verify_deep(dir.path());
        assert!(rep.is_ok(), "{:#?}", rep.problems);

        let (m, _) = read_manifest_safely(dir.path()).unwrap();
        let mut state = replay_manifest(&m).unwrap();
        let at = added_offsets(&m);
        let number = *state.files.keys().next().unwrap();
        let size = state.files[&number].size;
        state.files.get_mut(&number).unwrap().entries = size * MAX_ENTRIES_PER_BYTE;
        check_sanity(&m, &state, &at).unwrap();
        state.files.get_mut(&number).unwrap().entries += 1;
        let e = check_sanity(&m, &state, &at).unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
    }

    #[test]
    fn state_verify_and_consistency_on_a_healthy_directory() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let st = read_dir_state(dir.path()).unwrap();
        assert_eq!(st.target, 2);
        assert_eq!(st.version(1).unwrap().role, VersionRole::Draining);
        assert!(st.files.iter().any(|f| f.kind == TableKind::Pointers));
        let rep = verify_deep(dir.path());
        assert!(rep.is_ok(), "{:#?}", rep.problems);
        let deep = rep.deep.unwrap();
        assert_eq!(deep.moved, 1, "{deep:?}");
        assert!(deep.reads_checked >= 300);
        assert_eq!(deep.memtable_only, 1);
    }

    #[test]
    fn every_damaged_block_is_reported_not_just_the_first() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let st = read_dir_state(dir.path()).unwrap();
        let big = st.files.iter().max_by_key(|f| f.size).unwrap();
        let p = st.table_path(big.number);
        let mut b = std::fs::read(&p).unwrap();
        let t = Table::open(&StdFs, &p, 1, None).unwrap();
        let handles: Vec<_> = (0..t.block_count())
            .map(|i| ((), (t.block_handle(i).unwrap().0.offset, ())))
            .collect();
        assert!(handles.len() >= 3);
        for (_, (off, _)) in handles.iter().take(3) {
            b[*off as usize + 2] ^= 0x55;
        }
        std::fs::write(&p, &b).unwrap();
        let rep = verify_dir(dir.path(), &VerifyOptions::default(), &NoProgress).unwrap();
        let bad: Vec<_> = rep.errors().filter(|p| p.check == "checksum").collect();
        assert_eq!(bad.len(), 3, "{:#?}", rep.problems);
        for (p, (_, (off, _))) in bad.iter().zip(&handles) {
            assert_eq!(p.offset, Some(*off));
            assert_eq!(p.file.as_deref(), Some(p_ref(&st, big.number).as_path()));
        }
    }

    fn p_ref(st: &DirState, n: u64) -> PathBuf {
        st.table_path(n)
    }

    #[test]
    fn wal_records_decode_for_display() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut b = WriteBatch::new();
        b.put("a", "1").delete("b");
        db.write(b).unwrap();
        db.close().unwrap();
        let st = read_dir_state(dir.path()).unwrap();
        let w = st.wals.iter().find(|w| w.live).unwrap();
        let c = read_wal_file(&w.path).unwrap();
        assert_eq!(c.records.len(), 1);
        let r = &c.records[0];
        assert_eq!(r.ops.len(), 2);
        assert_eq!(r.ops[0].kind, Kind::Value);
        assert_eq!(r.ops[1].kind, Kind::Delete);
        assert_eq!(r.ops[1].seqno, r.seqno + 1);
    }

    #[test]
    fn symlinked_table_outside_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        build(dir.path());
        let st = read_dir_state(dir.path()).unwrap();
        let f = &st.files[0];
        let p = st.table_path(f.number);
        let moved = elsewhere.path().join("t.sst");
        std::fs::copy(&p, &moved).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&moved, &p).unwrap();
        let e = check_dir_safety(dir.path()).unwrap_err();
        assert!(
            e.is_corruption() && e.to_string().contains("symlink"),
            "{e}"
        );
        let rep = verify_dir(dir.path(), &VerifyOptions::default(), &NoProgress).unwrap();
        assert!(
            rep.errors().any(|p| p.check == "symlink"),
            "{:#?}",
            rep.problems
        );
    }

    #[test]
    fn index_key_sample_is_deduplicated_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let s = sample_index_keys_in_dir(dir.path(), 5).unwrap();
        assert_eq!(s.keys.len(), 5);
        let all = sample_index_keys_in_dir(dir.path(), 1 << 20).unwrap();
        let set: BTreeSet<_> = all.keys.iter().collect();
        assert_eq!(set.len(), all.keys.len());
        assert!(all.index_keys_seen >= 5);
    }

    /// A directory named like a table is no orphan an open removes (verify said it was).
    #[test]
    fn a_directory_named_like_a_table_is_reported_as_one() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let odd = dir.path().join("000999.sst");
        std::fs::create_dir(&odd).unwrap();
        let check = || {
            let rep = verify_dir(dir.path(), &VerifyOptions::default(), &NoProgress).unwrap();
            assert!(rep.is_ok(), "{:#?}", rep.problems);
            let p: Vec<_> = rep
                .problems
                .iter()
                .filter(|p| p.check == "orphan")
                .collect();
            assert_eq!(p.len(), 1, "{:#?}", rep.problems);
            assert_eq!(p[0].file.as_deref(), Some(odd.as_path()));
            assert!(p[0].message.contains("not a file"), "{}", p[0].message);
        };
        check();
        Db::open(dir.path(), opts()).unwrap().close().unwrap();
        assert!(odd.is_dir(), "opens leave it");
        check();
    }

    /// A live process compacting between the sample's read of the manifest and its opens
    /// of the tables named there: the sample starts again on the new state (it failed
    /// with an I/O error naming a deleted table, which reads as damage). A table missing
    /// while the manifest stays the same is still damage.
    #[test]
    fn an_index_key_sample_starts_again_when_a_compaction_deletes_its_tables() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let path = dir.path().to_path_buf();
        let before: BTreeSet<u64> = read_dir_state(&path)
            .unwrap()
            .files
            .iter()
            .map(|f| f.number)
            .collect();
        crate::test_hooks::set(crate::test_hooks::Point::SampleAfterDirState, move || {
            let db = Db::open(&path, opts()).unwrap();
            db.migrate_now(None).unwrap();
            db.compact().unwrap();
            // Close waits for the deleting thread: the old tables are gone.
            db.close().unwrap();
        });
        let s = sample_index_keys_in_dir(dir.path(), 1 << 20).unwrap();
        let st = read_dir_state(dir.path()).unwrap();
        assert!(
            st.files.iter().all(|f| !before.contains(&f.number)),
            "the compaction replaced every table"
        );
        assert!(before.iter().any(|&n| !st.table_path(n).exists()));
        let tables = st
            .files
            .iter()
            .filter(|f| f.kind == TableKind::Data)
            .count();
        assert_eq!(s.tables, tables as u64, "sampled the new state");

        let gone = st.files.iter().find(|f| f.kind == TableKind::Data).unwrap();
        std::fs::remove_file(st.table_path(gone.number)).unwrap();
        let e = sample_index_keys_in_dir(dir.path(), 5).unwrap_err();
        assert!(e.is_corruption(), "{e}");
    }
}
