//! Opening a database: lock, replay the manifest, open and cross-check every SSTable, replay
//! the WAL, flush what it held, and start a fresh manifest and WAL.
//!
//! After a crash: every synced write is in the WAL (or already in an SSTable); of unsynced
//! writes the WAL holds a prefix, because a torn record can only be the last one — damage
//! followed by intact records is corruption, reported with file and offset, never skipped.
//! Batches are single WAL records, so a batch is replayed whole or not at all.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::batch::{is_wal_batch, is_wal_earlier_durable, WalEntry, WriteBatch};
use crate::cache::BlockCache;
use crate::db::{
    table_file, wal_file, Core, Inner, RecoveryReport, Registered, Registry, View, WalState,
};
use crate::error::{Error, Result};
use crate::fs::{DirLock, Fs};
use crate::layout::{PartitionFn, MAX_LAYOUT_ID};
use crate::log::{
    read_log_to_damage, LogKind, LogWriter, DEFERRED_SYNC_VERSION, SUCCESSOR_VERSION,
};
use crate::manifest::{
    read_current, EditRecord, FileRecord, ManifestContents, ManifestWriter, CURRENT,
};
use crate::memtable::MemTable;

use crate::options::{Options, WalRecovery};
use crate::sst::files::TableFiles;
use crate::sst::{Table, TableOptions};
use crate::stats::Counters;
use crate::types::MAX_SEQNO;
use crate::util::MAX_FILE_NUMBER;
use crate::version::{FileMeta, FileSet, LayoutState, TableHome};

/// The state a manifest describes.
pub(crate) struct ManifestState {
    pub registry: Registry,
    pub target: u32,
    pub files: BTreeMap<u64, FileRecord>,
    pub next_file: u64,
    pub last_seqno: u64,
    pub log_number: u64,
    pub controller: Option<(u64, Vec<u8>)>,
    pub pinned: std::collections::BTreeSet<u32>,
    pub migration_held: bool,
}

/// Replays a manifest's edits, checking each against the state so far.
pub(crate) fn replay_manifest(m: &ManifestContents) -> Result<ManifestState> {
    let mut st = ManifestState {
        registry: Registry::default(),
        target: 0,
        files: BTreeMap::new(),
        next_file: 1,
        last_seqno: 0,
        log_number: 0,
        controller: None,
        pinned: Default::default(),
        migration_held: false,
    };
    // Live files per layout version, and where each live file was added.
    let mut files_of: HashMap<u32, usize> = HashMap::new();
    let mut added_at: HashMap<u64, u64> = HashMap::new();
    for (offset, edit) in &m.edits {
        let bad = |why: String| Error::corruption(&m.path, *offset, why);
        for r in &edit.records {
            match r {
                EditRecord::NextFile(n) | EditRecord::LogNumber(n) if *n > MAX_FILE_NUMBER => {
                    return Err(bad(format!("file number {n} out of range")));
                }
                EditRecord::LastSeqno(n) if *n > MAX_SEQNO => {
                    return Err(bad(format!("last seqno {n} out of range")));
                }
                EditRecord::NextFile(n) => st.next_file = st.next_file.max(*n),
                EditRecord::LastSeqno(n) => st.last_seqno = st.last_seqno.max(*n),
                EditRecord::LogNumber(n) => st.log_number = st.log_number.max(*n),
                // Every id below the next one that is not live has retired, and is listed
                // as such: an id past the id space is damage, not billions of retired
                // layouts.
                EditRecord::RegisterLayout { id, .. } if *id > MAX_LAYOUT_ID => {
                    return Err(bad(format!(
                        "layout v{id} is past the last id there can be (v{MAX_LAYOUT_ID})"
                    )));
                }
                EditRecord::RetiredBelow(n) if *n > MAX_LAYOUT_ID + 1 => {
                    return Err(bad(format!(
                        "layouts retired below v{n}, past the last id there can be \
                         (v{MAX_LAYOUT_ID})"
                    )));
                }
                EditRecord::RegisterLayout { id, spec } => {
                    // Ids are handed out in order and never again, retired or not.
                    if *id == 0 || *id < st.registry.next {
                        return Err(bad(format!(
                            "layout v{id} registered twice, or after v{}",
                            st.registry.next.saturating_sub(1)
                        )));
                    }
                    let spec = crate::PartitionSpec::from_bytes(spec)
                        .map_err(|e| bad(format!("layout v{id}: {e}")))?;
                    let f =
                        PartitionFn::new(spec).map_err(|e| bad(format!("layout v{id}: {e}")))?;
                    let func = Arc::new(f);
                    let was_target = false;
                    st.registry.register(*id, Registered { func, was_target });
                }
                EditRecord::SetTarget(id) => {
                    if st.registry.is_retired(*id) {
                        return Err(bad(format!("target set to retired v{id}")));
                    }
                    let Some(r) = st.registry.live.get_mut(id) else {
                        return Err(bad(format!("target set to unknown v{id}")));
                    };
                    r.was_target = true;
                    st.target = *id;
                }
                EditRecord::RetireLayout(id) => {
                    if *id == st.target {
                        return Err(bad(format!("retired the target v{id}")));
                    }
                    // Pointer files of a retired layout are deleted in the same edit; data
                    // files must all be gone. (Counted per layout as files come and go: a
                    // search of every file per retirement made a manifest of many of both
                    // quadratic to open.)
                    if files_of.get(id).is_some_and(|&n| n > 0) {
                        let f = st.files.values().find(|f| f.layout_version == *id);
                        return Err(bad(format!(
                            "retired v{id} still has file {}",
                            f.map_or(0, |f| f.number)
                        )));
                    }
                    // Retiring again is harmless.
                    if st.registry.live.remove(id).is_none() && !st.registry.is_retired(*id) {
                        return Err(bad(format!("retired unknown v{id}")));
                    }
                    st.pinned.remove(id);
                }
                EditRecord::RetiredBelow(n) => st.registry.retired_below(*n),
                EditRecord::AddFile(f) if f.number > MAX_FILE_NUMBER => {
                    return Err(bad(format!("file number {} out of range", f.number)));
                }
                EditRecord::AddFile(f) => {
                    match st.registry.get(f.layout_version) {
                        Some(Registered { func, .. }) => {
                            if f.partition >= func.partitions() {
                                return Err(bad(format!(
                                    "file {} in partition {} of v{} which has {}",
                                    f.number,
                                    f.partition,
                                    f.layout_version,
                                    func.partitions()
                                )));
                            }
                        }
                        _ => {
                            return Err(bad(format!(
                                "file {} in unknown or retired layout v{}",
                                f.number, f.layout_version
                            )))
                        }
                    }
                    if f.smallest > f.largest || f.min_seqno > f.max_seqno {
                        return Err(bad(format!("file {} has inverted ranges", f.number)));
                    }
                    if st.files.insert(f.number, f.clone()).is_some() {
                        return Err(bad(format!("file {} added twice", f.number)));
                    }
                    added_at.insert(f.number, *offset);
                    *files_of.entry(f.layout_version).or_default() += 1;
                }
                EditRecord::DeleteFile(n) => match st.files.remove(n) {
                    Some(f) => {
                        if let Some(c) = files_of.get_mut(&f.layout_version) {
                            *c = c.saturating_sub(1);
                        }
                    }
                    None => return Err(bad(format!("deleted file {n} that is not live"))),
                },
                EditRecord::Controller { epoch, state } => {
                    st.controller = Some((*epoch, state.clone()));
                }
                EditRecord::Pin { id, pinned } => {
                    if st.registry.get(*id).is_none() {
                        // A pin record is only ever written for a live layout.
                        return Err(bad(format!("pinned v{id}, which is not live")));
                    }
                    if *pinned {
                        st.pinned.insert(*id);
                    } else {
                        st.pinned.remove(id);
                    }
                }
                EditRecord::MigrationHold(held) => st.migration_held = *held,
            }
        }
    }
    if st.target == 0 {
        return Err(Error::corruption(
            &m.path,
            0,
            "manifest sets no target layout",
        ));
    }
    // The engine never lets more than this many be live (`Db::register_partition_fn`), and
    // opening builds every live layout's partitions: a manifest claiming more is corrupt,
    // not a reason to allocate for them. (Checked once replayed: a snapshot written before
    // `RetiredBelow` registers every layout, retired ones too, before it retires them.)
    let live = st.registry.live.len();
    if live > crate::MAX_LIVE_LAYOUTS {
        return Err(Error::corruption(
            &m.path,
            0,
            format!(
                "{live} layout versions live, more than the {} the engine allows",
                crate::MAX_LIVE_LAYOUTS
            ),
        ));
    }
    // Every edit that adds a table written from new writes (a flush) records a last seqno
    // at least as high as the table's; a table past it would be invisible to every read
    // (reads see seqnos up to the last), and new writes would reuse its seqnos.
    if let Some(f) = st.files.values().find(|f| f.max_seqno > st.last_seqno) {
        return Err(Error::corruption(
            &m.path,
            added_at.get(&f.number).copied().unwrap_or(0),
            format!(
                "file {} holds seqnos up to {}, past the manifest's last seqno {}",
                f.number, f.max_seqno, st.last_seqno
            ),
        ));
    }
    Ok(st)
}

/// Opens every table the manifest names and checks it describes itself the same way.
pub(crate) fn open_tables(
    fs: &Arc<dyn Fs>,
    dir: &Path,
    st: &ManifestState,
    cache: &Arc<BlockCache>,
    table_files: &Arc<TableFiles>,
    home: &Arc<TableHome>,
    manifest: &Path,
) -> Result<FileSet> {
    let mut set = FileSet {
        layouts: BTreeMap::new(),
        target: st.target,
    };
    for (id, r) in &st.registry.live {
        let mut l = LayoutState::new(*id, r.func.clone());
        l.was_target = r.was_target;
        set.layouts.insert(*id, l);
    }
    let mut metas = Vec::with_capacity(st.files.len());
    for rec in st.files.values() {
        let path = table_file(dir, rec.number);
        let opened = Table::open_in(
            table_files,
            fs.as_ref(),
            &path,
            rec.number,
            Some(cache.clone()),
        );
        let table = match opened {
            Ok(t) => t,
            Err(e) if e.is_not_found() => {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!("missing: named by {}", manifest.display()),
                ))
            }
            Err(e) => return Err(e),
        };
        check_table(
            &table,
            rec,
            &st.registry.live[&rec.layout_version].func,
            &path,
            manifest,
        )?;
        metas.push(Arc::new(FileMeta::new(
            Arc::new(table),
            rec.level,
            home.clone(),
        )));
    }
    let set = set
        .apply(&metas, &[])
        .map_err(|e| Error::corruption(manifest, 0, e))?;
    for l in set.layouts.values() {
        for (pi, p) in l.parts.iter().enumerate() {
            p.check_levels()
                .map_err(|e| Error::corruption(manifest, 0, format!("v{}/{pi}: {e}", l.id)))?;
        }
    }
    Ok(set)
}

/// Checks an opened table against the manifest's record of it. A mismatch names both
/// files: either may be the damaged one.
fn check_table(
    t: &Table,
    rec: &FileRecord,
    func: &PartitionFn,
    path: &Path,
    manifest: &Path,
) -> Result<()> {
    let p = t.props();
    let mut problems = Vec::new();
    if t.file_size() != rec.size {
        problems.push(format!(
            "size {} but manifest says {}",
            t.file_size(),
            rec.size
        ));
    }
    if p.layout_version != rec.layout_version || p.partition != rec.partition {
        problems.push(format!(
            "belongs to v{}/{} but manifest places it in v{}/{}",
            p.layout_version, p.partition, rec.layout_version, rec.partition
        ));
    }
    if p.fingerprint != func.fingerprint() {
        problems.push(format!(
            "written under function {:#x}, layout v{} is {:#x}",
            p.fingerprint,
            rec.layout_version,
            func.fingerprint()
        ));
    }
    if p.kind != rec.kind
        || p.smallest != rec.smallest.as_ref()
        || p.largest != rec.largest.as_ref()
        || p.min_seqno != rec.min_seqno
        || p.max_seqno != rec.max_seqno
        || p.entries != rec.entries
    {
        problems.push("properties disagree with the manifest record".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::corruption(
            path,
            0,
            format!(
                "{} (the record of it in {})",
                problems.join("; "),
                manifest.display()
            ),
        ))
    }
}

/// Files in `dir` named `<number><suffix>`, in number order.
fn numbered_files(fs: &dyn Fs, dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut v: Vec<(u64, PathBuf)> = fs
        .list(dir)
        .map_err(|e| Error::io(dir, e))?
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .filter_map(|n| {
            let p = dir.join(&n);
            crate::util::file_number(&p).map(|num| (num, p))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// WAL files in `dir` numbered at or above `from`, in order.
pub(crate) fn wal_files(fs: &dyn Fs, dir: &Path, from: u64) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = numbered_files(fs, dir, ".log")?;
    v.retain(|(n, _)| *n >= from);
    Ok(v)
}

/// Where the WALs to replay start, as the manifest has it.
pub(crate) struct WalStart<'a> {
    /// The manifest, which names the first WAL.
    pub manifest: &'a Path,
    /// The manifest's log number: the WAL that holds the first write not in a table. It
    /// exists from before the manifest names it until the manifest names a later one.
    pub log_number: u64,
    /// The manifest's last flushed seqno: the first record replayed must follow it.
    pub flushed: u64,
}

/// What WAL replay found.
pub(crate) struct Replayed {
    /// The last seqno replayed.
    pub last: Option<u64>,
    /// Point in time: writes past the last one replayed were dropped (after damage, or
    /// after a missing WAL other than the first), and with them any table flushed from
    /// them that no manifest edit names yet.
    pub dropped_suffix: bool,
    /// An older WAL, known durable whole, that does not end in the record naming its
    /// successor, with no batch after it to show what the cut took: damage, refused unless
    /// point in time (replay stopped there). The caller first looks for a table that
    /// holds writes past the replayed ones, which says more precisely what happened (a
    /// manifest that lost the edits recording flushes), and which point in time must not
    /// sweep as a dropped flush's.
    pub unended: Option<Error>,
}

/// The WAL that must come next in the chain and why, when the directory's next WAL (or
/// none) is not it: `None` when the chain holds.
pub(crate) fn chain_break(expected: u64, found: Option<u64>, why: &str) -> Option<String> {
    (found != Some(expected)).then(|| {
        let place = match found {
            Some(n) => format!("does not come next in the directory ({n:06}.log does)"),
            None => "is not in the directory".to_string(),
        };
        format!("missing: WAL {expected:06}.log ({why}) {place}; the writes it held would be lost")
    })
}

/// Whether a live rotation could explain a break of the chain: WAL `expected`, named by
/// WAL `named_by` (None: by the manifest), is not where a listing has it, and `found` (the
/// listing's next WAL, if any) is above it. A listing is read in pieces, so a WAL created
/// while it was read may be missing from it while a later one is not. In a directory
/// nothing writes to, a WAL that exists is listed: the next WAL would be it, or a stray
/// below it; and a successor numbered below the WAL naming it was never a rotation's.
pub(crate) fn may_be_unlisted(expected: u64, named_by: Option<u64>, found: Option<u64>) -> bool {
    found.is_none_or(|f| f > expected) && named_by.is_none_or(|n| expected > n)
}

/// Replays WAL files into a memtable. Returns the memtable and the last seqno replayed.
/// `unlisted` is set to the missing WAL of a chain break that a live rotation could explain
/// ([`may_be_unlisted`]): a read-only open then looks whether it exists by now.
///
/// The WALs form a chain: the manifest names the first, and each WAL rotated away from
/// ends in a record naming the next. A missing link means acknowledged writes are gone
/// with it, the newest WAL's included; recovery refuses (or, point in time, stops there).
/// The first record replayed must follow `start.flushed` with nothing in between. A gap
/// means writes are in neither the tables nor the WALs: the WAL that held them is gone, or
/// the manifest lost the edits that recorded their flush (truncated, not torn: a crash
/// tears only the last edit, and the WALs that edit covered are deleted only after it is
/// durable). Opening anyway would hide those writes and then delete their tables as
/// unreferenced.
pub(crate) fn replay_wals(
    fs: &dyn Fs,
    wals: &[(u64, PathBuf)],
    mem: &MemTable,
    mode: WalRecovery,
    report: &mut RecoveryReport,
    start: WalStart<'_>,
    unlisted: &mut Option<u64>,
) -> Result<Replayed> {
    let flushed = start.flushed;
    let mut last: Option<u64> = None;
    let mut dropped_suffix = false;
    let mut unended = None;
    let point_in_time = mode == WalRecovery::PointInTime;
    let logs = wals
        .iter()
        .map(|(_, path)| {
            let data = fs.read_file(path).map_err(|e| Error::io(path, e))?;
            let size = data.len() as u64;
            // Damage is found and described the same way in both modes; what to do about
            // it is decided below.
            read_log_to_damage(data, path, LogKind::Wal).map(|l| (l, size))
        })
        .collect::<Result<Vec<_>>>()?;
    // The last WAL holding any record: WALs after it are empty (an open that failed after
    // creating its new WAL leaves one behind), so its torn end is the crash's, as if it
    // were the newest.
    let last_written = logs.iter().rposition(|(l, _)| !l.records.is_empty());
    // The WALs that say every earlier WAL was durable before they were first synced.
    let notes_earlier: Vec<bool> = logs
        .iter()
        .map(|(l, _)| l.records.iter().any(|(_, p)| is_wal_earlier_durable(p)))
        .collect();
    // Whether a WAL after each one holds a write batch.
    let batches_after: Vec<bool> = (0..logs.len())
        .map(|i| {
            logs[i + 1..]
                .iter()
                .any(|(l, _)| l.records.iter().any(|(_, p)| is_wal_batch(p)))
        })
        .collect();
    // Each WAL's format version. One whose header did not survive (a WAL rotated to is
    // fsynced first in the background, once rotated away from) takes the next one's: the
    // WALs of a chain were all written by one process (an open flushes the WALs it replays
    // before it writes a new one).
    let versions: Vec<u32> = (0..logs.len())
        .map(|i| {
            logs[i..]
                .iter()
                .map(|(l, _)| l.version)
                .find(|&v| v > 0)
                .unwrap_or(0)
        })
        .collect();
    // A WAL that may have been cut short by the crash (see `may_be_cut` below), while the
    // WALs after it are replayed only as far as they continue its seqnos: (file, offset
    // where its intact records end, WAL bytes from there on, later WALs included).
    let mut cut: Option<(PathBuf, u64, u64)> = None;
    // The next link of the chain: the WAL that must come next, who names it, and where.
    let mut link = Some((
        start.log_number,
        "named by the manifest's log number".to_string(),
        start.manifest.to_path_buf(),
        0,
    ));
    for i in 0..=wals.len() {
        if let Some((expected, why, file, offset)) = link.take() {
            let found = wals.get(i).map(|w| w.0);
            if let Some(reason) = chain_break(expected, found, &why) {
                let named_by = i.checked_sub(1).map(|p| wals[p].0);
                if may_be_unlisted(expected, named_by, found) {
                    *unlisted = Some(expected);
                }
                if !point_in_time {
                    return Err(Error::corruption(&file, offset, reason));
                }
                // Point in time: what follows the missing link is dropped like what
                // follows damage. Not when the manifest's own log number names a WAL that
                // is gone: that is also what a manifest cut short before a flush edit
                // shows (the flush deleted the WAL), and the tables that flush wrote must
                // then be refused, not swept as orphans.
                report.wal_missing = Some(reason);
                report.wal_dropped_after_damage +=
                    logs[i..].iter().map(|(_, size)| size).sum::<u64>();
                dropped_suffix = i > 0;
                break;
            }
        }
        let (Some((_, path)), Some((log, _))) = (wals.get(i), logs.get(i)) else {
            break;
        };
        report.wal_files += 1;
        let mut stop = false;
        let records_follow = i + 1 != wals.len() && last_written.is_some_and(|w| w > i);
        let later_size = || logs[i + 1..].iter().map(|(_, size)| size).sum::<u64>();
        // Since format version 3 a WAL rotated away from is fsynced in the background while
        // writes go on into the next, so a crash can cut it short with records after it in
        // later WALs. Those later WALs then held only unsynced writes (a WAL's first sync
        // syncs the ones before it), unless one of them says the earlier WALs were durable
        // (written before its first sync): then the cut is damage, not the crash.
        let may_be_cut = records_follow
            && versions[i] >= DEFERRED_SYNC_VERSION
            && !notes_earlier[i + 1..].iter().any(|&n| n);
        if let Some(t) = &log.tail {
            if t.intact_after || (records_follow && !may_be_cut) {
                if !t.intact_after && fs.file_size(path).is_ok_and(|now| now > logs[i].1) {
                    // It grew while we read it: a live process was appending the record
                    // that ends it (the one naming the next WAL, its last) while we read,
                    // and wrote the next WAL meanwhile (only a read-only open can see
                    // this), not damage.
                    return Err(Error::Busy {
                        path: path.clone(),
                        reason: "a WAL grew while it was read (a live rotation)".into(),
                    });
                }
                if !point_in_time {
                    // An older WAL known durable whole (fsynced before the next one took a
                    // write, or said to be by a later one) is not cut short by a crash;
                    // damage with intact records after it in the same WAL is no crash
                    // artefact either. Skipping either would leave a hole.
                    let what = if records_follow && !may_be_cut {
                        "in an older WAL"
                    } else {
                        "with intact records after it"
                    };
                    return Err(Error::WalDamaged {
                        file: path.clone(),
                        offset: t.offset,
                        reason: format!("{}, {what}", t.reason),
                    });
                }
                // Point in time: replay up to the damage, nothing after it.
                stop = true;
                dropped_suffix = true;
                report.wal_dropped_after_damage = t.dropped_bytes + later_size();
            }
            report.torn_tail = Some((path.clone(), t.offset, t.dropped_bytes));
        }
        for (off, payload) in &log.records {
            if link.is_some() {
                return Err(Error::corruption(
                    path,
                    *off,
                    "a record follows the successor record that ended this WAL",
                ));
            }
            let b = match WalEntry::decode(payload, path, *off, log.payload_offset(*off))? {
                WalEntry::Successor(next) => {
                    link = Some((
                        next,
                        format!("named as the successor of {}", path.display()),
                        path.clone(),
                        *off,
                    ));
                    continue;
                }
                WalEntry::EarlierDurable => continue,
                WalEntry::Batch(b) => b,
            };
            if let Some(c) = cut.take() {
                // The first write after a WAL the crash may have cut short: if it continues
                // the seqnos, the cut took only the record that ended that WAL and nothing
                // is missing; if not, the writes from here on followed a hole, and (no WAL
                // saying the earlier ones were durable) none of them was synced: stop.
                let continues = match last {
                    Some(prev) => b.seqno == prev + 1,
                    None => b.seqno <= flushed.saturating_add(1),
                };
                if !continues {
                    report.wal_cut_short = Some(c);
                    dropped_suffix = true;
                    stop = true;
                    break;
                }
            }
            if last.is_none() && b.seqno > flushed.saturating_add(1) {
                return Err(Error::corruption(
                    path,
                    *off,
                    format!(
                        "first record has seqno {} but the manifest has writes flushed only \
                         up to {flushed}: the writes between are in no table or WAL (a WAL \
                         is missing, or the manifest was cut short)",
                        b.seqno
                    ),
                ));
            }
            if let Some(prev) = last {
                if b.seqno != prev + 1 {
                    return Err(Error::corruption(
                        path,
                        *off,
                        format!("seqno {} follows {prev}: records are missing", b.seqno),
                    ));
                }
            }
            if b.count == 0 {
                return Err(Error::corruption(path, *off, "empty batch record"));
            }
            // Decode the whole batch before applying any of it.
            // The count is the record's word until the ops are decoded: reserve no more
            // than a bounded guess on it (a count can claim ~40 bytes of room per byte).
            let mut ops = Vec::with_capacity((b.count as usize).min(1 << 16));
            let n = WriteBatch::for_each_op(
                &b.ops,
                path,
                log.payload_offset(*off) + 12,
                |k, key, value| ops.push((k, key, value)),
            )?;
            if n != b.count {
                return Err(Error::corruption(
                    path,
                    *off,
                    format!("batch header says {} ops, record holds {n}", b.count),
                ));
            }
            for (i, (kind, key, value)) in ops.into_iter().enumerate() {
                mem.insert(key, b.seqno + i as u64, kind, value);
            }
            report.wal_batches += 1;
            report.wal_entries += n as u64;
            last = Some(b.seqno + n as u64 - 1);
        }
        if stop {
            break;
        }
        if link.is_none()
            && records_follow
            && !may_be_cut
            && !batches_after[i]
            && versions[i] >= SUCCESSOR_VERSION
        {
            // A WAL rotated away from ends in the record naming the next one. This one is
            // known durable whole (see `may_be_cut`), so no crash ends it early, not even at
            // a record boundary: it was cut. With a batch in a later WAL, the seqnos below
            // tell whether writes went with the cut (and name what is missing); with none,
            // nothing else would: the later WALs were replayed as if nothing were missing
            // (found by a corruption campaign).
            let end = logs[i].1;
            if fs.file_size(path).is_ok_and(|now| now > end) {
                // It grew while we read it: a live process rotating away from it (only a
                // read-only open can see this), not damage.
                return Err(Error::Busy {
                    path: path.clone(),
                    reason: "a WAL grew while it was read (a live rotation)".into(),
                });
            }
            unended = Some(Error::WalDamaged {
                file: path.clone(),
                offset: end,
                reason: "ends without the record naming the WAL after it, though later WALs \
                         hold records and this one is known durable whole: it was cut short, \
                         and writes at its end may be missing"
                    .into(),
            });
            if point_in_time {
                report.wal_dropped_after_damage = later_size();
                report.wal_unended = Some((path.clone(), end));
            }
            break;
        }
        if link.is_none() && may_be_cut && cut.is_none() {
            // No record names the next WAL: the crash may have cut this one short, in a
            // record (its torn tail) or at a record boundary.
            cut = Some(match &log.tail {
                Some(t) => (path.clone(), t.offset, t.dropped_bytes + later_size()),
                None => (path.clone(), logs[i].1, later_size()),
            });
        }
    }
    Ok(Replayed {
        last,
        dropped_suffix,
        unended,
    })
}

/// Tables in `dir` that the manifest does not name.
fn unnamed_tables(fs: &dyn Fs, dir: &Path, st: &ManifestState) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = numbered_files(fs, dir, ".sst")?;
    v.retain(|(num, _)| !st.files.values().any(|r| r.number == *num));
    Ok(v)
}

/// Refuses a table the manifest does not name that holds a write past the last one the
/// manifest and the WALs know. A crash leaves unnamed tables (a flush or compaction it
/// interrupted), but never such a one: a flush makes a frozen memtable's WAL durable
/// before it writes the table (`Inner::sync_rotated_wal`), and that WAL is deleted only
/// once the edit naming the table is durable,
/// and a compaction writes only what named tables hold. What does leave one is a manifest
/// that lost the edits recording flushes (cut short, or an older copy put back) after
/// their WALs were deleted: the open would hide those writes and then delete the table as
/// an orphan. A table too damaged to read is a crash's unfinished output, left to the
/// orphan sweep; one that could not be read for a passing reason (too many open files, an
/// I/O error) fails the open instead, since whether it holds such writes cannot be told and
/// the sweep would delete it.
///
/// The tables are listed before the WALs are read, so that a read-only open of a live
/// directory cannot see a table flushed from writes that arrived after it read the WAL.
///
/// A symlink is not read: the engine never makes one, so it is no flush's output, and
/// what it points to (perhaps another database's table) is not this database's to judge.
fn check_unnamed_tables(fs: &dyn Fs, unnamed: &[(u64, PathBuf)], last_seqno: u64) -> Result<()> {
    for (num, path) in unnamed {
        if crate::fs::is_symlink(path) {
            continue;
        }
        let t = match Table::open(fs, path, *num, None) {
            Ok(t) => t,
            // Cut short by a crash (or gone since the listing, in a live directory); or
            // no file at all (a directory named like a table), which opens leave alone.
            Err(e) if e.is_corruption() || e.is_not_found() || e.is_not_a_file() => continue,
            Err(e) => return Err(e),
        };
        let p = t.props();
        if p.entries > 0 && p.max_seqno > last_seqno {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "no manifest edit names this table, yet it holds writes up to seqno {} \
                     and the manifest and WALs end at {last_seqno}: the manifest lost the \
                     edits recording a flush (cut short, or an older copy); opening would \
                     hide those writes and delete the table",
                    p.max_seqno
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn looks_like_ours(name: &str) -> bool {
    name == CURRENT
        || name.starts_with("MANIFEST-")
        || ((name.ends_with(".sst") || name.ends_with(".log"))
            && crate::util::file_number(Path::new(name)).is_some())
}

/// Opens (or creates) the database in `dir`. A read-only open takes no lock, writes
/// nothing (the WAL is replayed into memory only) and runs no background work, so it can
/// look at a directory a live process is using.
pub(crate) fn open(dir: &Path, opts: Options, read_only: bool) -> Result<Arc<Inner>> {
    opts.validate()?;
    crate::fs::check_dir_arg(dir, "path")?;
    if !read_only {
        return open_writable(dir, opts);
    }
    // A live process may delete a file between our reading its manifest and opening the
    // file (a compaction finishing): retry a few times before calling the directory busy.
    // Damage found while the manifest moved on under us (a flush installed between
    // reading the manifest and reading its WALs) is the race, not damage: retried too. So
    // is a WAL chain naming a WAL the listing lacks that exists by the time we look: a
    // rotation, which changes no manifest, created it while or after we listed (see
    // `may_be_unlisted`). (A WAL cannot vanish unseen between the read and that look: a
    // flush deletes one only after its manifest edit is durable, so the manifest mark,
    // read after the look, moves.) A file missing in an attempt with neither excuse is
    // missing, and is reported as the damage it is rather than as a busy directory; so is
    // any other missing file with the manifest unchanged (a live process deletes a file
    // the manifest names only after an edit that no longer names it).
    const ATTEMPTS: u32 = 5;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let before = manifest_mark(opts.fs.as_ref(), dir);
        let mut unlisted = None;
        let opened = open_read_only(dir, opts.clone(), &mut unlisted);
        let unlisted_exists =
            || unlisted.is_some_and(|n| opts.fs.file_size(&wal_file(dir, n)).is_ok());
        // Point in time, recovery stops at a missing link and opens with what came before
        // it: when a rotation explains the link, that is the race too, not a loss.
        // So is a missing link while the manifest moved on: a flush installed after the
        // manifest was read deleted the WAL it names (or a later one) before the WALs were
        // listed, and its writes are in a table that manifest does not name.
        let moved_past_a_missing_wal = |i: &Inner| {
            i.recovery.lock().wal_missing.is_some()
                && manifest_mark(opts.fs.as_ref(), dir) != before
        };
        let opened = match opened {
            Ok(i) if unlisted_exists() || moved_past_a_missing_wal(&i) => {
                let reason = i.recovery.lock().wal_missing.clone().unwrap_or_default();
                Err(Error::corruption(dir, 0, reason))
            }
            other => other,
        };
        match opened {
            Ok(i) => return Ok(i),
            Err(e) => {
                let rotated = unlisted_exists();
                let stable = manifest_mark(opts.fs.as_ref(), dir) == before;
                if !is_vanished(&e) && !matches!(e, Error::Busy { .. }) && stable {
                    return Err(e);
                }
                last = Some((e, stable && !rotated));
                if attempt + 1 < ATTEMPTS {
                    std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
                }
            }
        }
    }
    let last = match last {
        Some((e, true)) if e.is_corruption() || e.is_not_found() => return Err(e),
        last => last.map(|(e, _)| e),
    };
    Err(Error::Busy {
        path: dir.to_path_buf(),
        reason: format!(
            "files keep changing under a live process: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        ),
    })
}

/// What identifies the manifest state a reader sees: the name CURRENT holds and that
/// manifest's length (edits are only appended, a new manifest gets a new name).
fn manifest_mark(fs: &dyn Fs, dir: &Path) -> Option<(Bytes, u64)> {
    let current = fs
        .read_file(&dir.join(CURRENT))
        .ok()
        .filter(|c| c.len() <= 256)?;
    let name = std::str::from_utf8(&current).ok()?.trim_end().to_owned();
    if !name.starts_with("MANIFEST-") || name.contains(['/', '\\']) {
        return None;
    }
    let len = fs.file_size(&dir.join(name)).ok()?;
    Some((current, len))
}

fn is_vanished(e: &Error) -> bool {
    match e {
        Error::Corruption { reason, .. } => reason.starts_with("missing:"),
        e => e.is_not_found(),
    }
}

/// State read from a directory: manifest, open tables, and the WAL replayed into memory.
struct Loaded {
    state: ManifestState,
    files: FileSet,
    recovered: Arc<MemTable>,
    /// The WALs replayed into `recovered`.
    wals: Vec<PathBuf>,
    last_seqno: u64,
    report: RecoveryReport,
    /// Tables no manifest edit names, when the replay dropped a suffix of the WALs (a cut
    /// or a point-in-time stop): they may hold dropped writes, which `check_unnamed_tables`
    /// lets pass only because they are about to go (see `open_writable`).
    unnamed_past_a_drop: Vec<(u64, PathBuf)>,
}

fn load(
    fs: &Arc<dyn Fs>,
    dir: &Path,
    cache: &Arc<BlockCache>,
    table_files: &Arc<TableFiles>,
    home: &Arc<TableHome>,
    opts: &Options,
    unlisted: &mut Option<u64>,
) -> Result<Loaded> {
    let (memtable_bytes, wal_recovery) = (opts.memtable_bytes, opts.wal_recovery);
    let mut report = RecoveryReport::default();
    let m = read_current(fs.as_ref(), dir)?;
    report.manifest_torn_tail = m.tail.as_ref().map(|t| (m.path.clone(), t.offset));
    let state = replay_manifest(&m)?;
    let files = open_tables(fs, dir, &state, cache, table_files, home, &m.path)?;
    // Listed before the WALs are read: see `check_unnamed_tables`.
    let unnamed = unnamed_tables(fs.as_ref(), dir, &state)?;
    let wals = wal_files(fs.as_ref(), dir, state.log_number)?;
    let recovered = Arc::new(MemTable::new(state.log_number, memtable_bytes));
    let wal_last = replay_wals(
        fs.as_ref(),
        &wals,
        &recovered,
        wal_recovery,
        &mut report,
        WalStart {
            manifest: &m.path,
            log_number: state.log_number,
            flushed: state.last_seqno,
        },
        unlisted,
    )?;
    let last_seqno = state.last_seqno.max(wal_last.last.unwrap_or(0));
    // A point-in-time recovery that stopped at WAL damage drops what follows it, a table
    // flushed from those writes included; otherwise no write may be past `last_seqno`.
    let unnamed_past_a_drop = if wal_last.dropped_suffix {
        unnamed
    } else {
        check_unnamed_tables(fs.as_ref(), &unnamed, last_seqno).map_err(|e| {
            // With a WAL cut at its end as well, the table may hold the very writes cut
            // away (a flush of that WAL's memtable the crash interrupted): say both.
            match (e, &wal_last.unended) {
                (
                    Error::Corruption {
                        file,
                        offset,
                        reason,
                    },
                    Some(Error::WalDamaged {
                        file: w,
                        offset: at,
                        ..
                    }),
                ) => Error::Corruption {
                    file,
                    offset,
                    reason: format!(
                        "{reason}; or it holds writes cut from the end of {} (which \
                             ends at offset {at} without the record naming its successor)",
                        w.display()
                    ),
                },
                (e, _) => e,
            }
        })?;
        Vec::new()
    };
    if let Some(e) = wal_last.unended {
        if wal_recovery != WalRecovery::PointInTime {
            return Err(e);
        }
    }
    Ok(Loaded {
        state,
        files,
        recovered,
        wals: wals.into_iter().map(|(_, p)| p).collect(),
        last_seqno,
        report,
        unnamed_past_a_drop,
    })
}

fn fresh(fs: &Arc<dyn Fs>, dir: &Path, opts: &Options) -> Result<Loaded> {
    // The first layout is made here, as a registered one is: an inert split is refused
    // (checked here, not with the other options, so that a database made with one before
    // this check still opens with them).
    opts.partition.refuse_inert_split()?;
    let names = fs.list(dir).map_err(|e| Error::io(dir, e))?;
    let ours: Vec<&String> = names.iter().filter(|n| looks_like_ours(n)).collect();
    if let Some(n) = ours.first() {
        if !left_by_a_first_open(fs.as_ref(), dir, &ours)? {
            return Err(Error::NotADatabase {
                path: dir.to_path_buf(),
                reason: format!(
                    "CURRENT is missing but {n} exists; refusing to start a new database over it"
                ),
            });
        }
        // A first open a crash cut short, before CURRENT named its manifest: no handle was
        // returned, so no write was acknowledged, and its WAL holds none. Start over.
        for n in ours {
            let p = dir.join(n);
            fs.remove(&p).map_err(|e| Error::io(&p, e))?;
        }
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let func = Arc::new(PartitionFn::new(opts.partition.clone())?);
    let mut registry = Registry::default();
    let was_target = true;
    registry.register(
        1,
        Registered {
            func: func.clone(),
            was_target,
        },
    );
    let mut files = FileSet::default();
    let mut l = LayoutState::new(1, func);
    l.was_target = true;
    files.layouts.insert(1, l);
    files.target = 1;
    Ok(Loaded {
        state: ManifestState {
            registry,
            target: 1,
            files: BTreeMap::new(),
            next_file: 1,
            last_seqno: 0,
            log_number: 0,
            controller: None,
            pinned: Default::default(),
            migration_held: false,
        },
        files,
        recovered: Arc::new(MemTable::new(0, opts.memtable_bytes)),
        wals: Vec::new(),
        last_seqno: 0,
        report: RecoveryReport::default(),
        unnamed_past_a_drop: Vec::new(),
    })
}

/// Whether the engine's files `ours` in `dir`, which has no CURRENT, are what a first
/// open leaves when a crash stops it before CURRENT exists: its manifest (number 1; the
/// file numbers of a new database start there) and its WAL (number 2) without a record.
/// Anything else, a table or a record or another number, may be a database that lost its
/// CURRENT, and is left alone.
pub(crate) fn left_by_a_first_open(fs: &dyn Fs, dir: &Path, ours: &[&String]) -> Result<bool> {
    for n in ours {
        let p = dir.join(n);
        let first_open_s = if **n == crate::manifest::manifest_name(1) {
            true
        } else if p == wal_file(dir, 2) {
            // No longer than the header this build writes (whatever those bytes are: a
            // header write cut short, or zeroes a file system extended the file with),
            // or its header whole and nothing after it. No record fits in the first; a
            // damaged record after a header might have been a write.
            let len = fs.file_size(&p).map_err(|e| Error::io(&p, e))?;
            let header = crate::log::LogFormat::of(crate::log::LOG_FORMAT_VERSION, 0)
                .header(LogKind::Wal)
                .len() as u64;
            len <= header || {
                let data = fs.read_file(&p).map_err(|e| Error::io(&p, e))?;
                crate::log::read_log(data, &p, LogKind::Wal)
                    .is_ok_and(|l| l.records.is_empty() && l.tail.is_none())
            }
        } else {
            false
        };
        if !first_open_s {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Assembles the engine state shared by both open modes.
#[allow(
    clippy::too_many_arguments,
    reason = "one assembly point for every field"
)]
fn assemble(
    dir: &Path,
    opts: Options,
    cache: Arc<BlockCache>,
    table_files: Arc<TableFiles>,
    home: Arc<TableHome>,
    view: View,
    core: Core,
    wal: WalState,
    last_seqno: u64,
    lock: Option<Box<dyn DirLock>>,
) -> Inner {
    let read_only = lock.is_none();
    let files = view.files.clone();
    Inner {
        dir: dir.to_path_buf(),
        fs: opts.fs.clone(),
        cache,
        table_files,
        table_opts: TableOptions {
            block_size: opts.block_size,
            compression: opts.compression,
            key_delta: opts.key_delta_blocks,
            bloom_bits_per_key: opts.bloom_bits_per_key,
        },
        view: ArcSwap::from_pointee(view),
        visible: AtomicU64::new(last_seqno),
        core: Mutex::new(core),
        bg_cv: Condvar::new(),
        stall_cv: Condvar::new(),
        queue: Mutex::new(Default::default()),
        group: Default::default(),
        wal: Mutex::new(wal),
        wal_syncer: Default::default(),
        home,
        rotated_wals: Default::default(),
        snapshots: Mutex::new(BTreeMap::new()),
        counters: Counters::default(),
        closing: AtomicBool::new(false),
        released: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        wal_healthy: AtomicBool::new(true),
        read_only,
        failure: Mutex::new(None),
        lock: Mutex::new(lock),
        threads: Mutex::new(Vec::new()),
        controller_gate: Mutex::new(()),
        controller_gate_owner: Mutex::new(None),
        l0_max: AtomicUsize::new(0),
        pending_compaction: AtomicU64::new(0),
        recovery: Mutex::new(RecoveryReport::default()),
        slowdown_debt: Mutex::new((Instant::now(), 0.0)),
        last_background_error: Mutex::new(None),
        move_bucket: Mutex::new(crate::read::MoveBudget::new(Instant::now())),
        rereads: crate::read::RereadFilter::new(),
        mem_idle: Mutex::new((0, 0, Instant::now())),
        write_idle: AtomicBool::new(false),
        charged_step: AtomicU64::new(u64::MAX),
        room_hold: Mutex::new(crate::db::RoomHold::new(Instant::now())),
        pacer: Mutex::new(crate::migration::Pacer::new(
            opts.migration_bytes_per_sec,
            opts.migration_p99_target_us,
        )),
        fg_latency: crate::migration::LatencyHistogram::new(),
        fg_read_latency: crate::migration::LatencyHistogram::new(),
        sampling: AtomicBool::new(false),
        install: parking_lot::RwLock::new(()),
        lazy_counts: Mutex::new(Default::default()),
        moves: Mutex::new(Default::default()),
        applying_moves: Mutex::new(()),
        load: arc_swap::ArcSwapOption::from_pointee(crate::load::PartitionLoad::new(
            Some(files.target),
            files.target_layout().func.clone(),
        )),
        shadow: arc_swap::ArcSwapOption::empty(),
        recent: Default::default(),
        admission: crate::load::Admission::new(),
        opts,
    }
}

fn new_core(
    manifest: ManifestWriter,
    next_file: u64,
    log_number: u64,
    state: &ManifestState,
) -> Core {
    Core {
        manifest,
        next_file,
        log_number,
        flushed_seqno: state.last_seqno,
        registry: state.registry.clone(),
        busy: Default::default(),
        migrating: Default::default(),
        flush_sources: Default::default(),
        migration_awaits: Default::default(),
        nothing_to_compact: None,
        picks_scored: 0,
        flushing: false,
        writing_to: Default::default(),
        controller: state.controller.clone(),
        compact_cursor: Default::default(),
        running: 0,
        manual: Default::default(),
        manual_running: 0,
        manual_requests: HashMap::new(),
        next_manual_request: 0,
        compaction_failures: HashMap::new(),
        flush_failures: 0,
        next_job_id: 0,
        migrations_running: 0,
        foreground_jobs: 0,
        reserved: Vec::new(),
        migration_space: HashMap::new(),
        migration: Default::default(),
        pinned: state.pinned.clone(),
        migration_held: state.migration_held,
    }
}

/// The database's block cache, charged for the tables' indexes and filters when the
/// memtables share its budget (the same budget then covers all three).
fn new_cache(opts: &Options) -> Arc<BlockCache> {
    let cache = Arc::new(BlockCache::new(opts.block_cache_bytes, opts.block_size));
    if opts.memtables_share_cache {
        cache.charge_tables();
    }
    cache
}

/// `unlisted`: set to a WAL the chain names and the listing lacks where a live rotation could
/// explain it ([`may_be_unlisted`]; see `open`).
fn open_read_only(dir: &Path, opts: Options, unlisted: &mut Option<u64>) -> Result<Arc<Inner>> {
    let fs = opts.fs.clone();
    let current = dir.join(CURRENT);
    if !fs.exists(&current).map_err(|e| Error::io(&current, e))? {
        return Err(Error::NotADatabase {
            path: dir.to_path_buf(),
            reason: "no CURRENT file".into(),
        });
    }
    let cache = new_cache(&opts);
    let table_files = TableFiles::pinned(fs.clone(), opts.max_open_files());
    let home = TableHome::new(fs.clone());
    let loaded = load(&fs, dir, &cache, &table_files, &home, &opts, unlisted)?;
    let view = View {
        mem: Arc::new(MemTable::new(0, opts.memtable_bytes)),
        imm: if loaded.recovered.is_empty() {
            Vec::new()
        } else {
            vec![loaded.recovered.clone()]
        },
        files: Arc::new(loaded.files),
    };
    let sink = || Box::new(crate::fs::NullFile) as Box<dyn crate::fs::WritableFile>;
    let core = new_core(
        ManifestWriter::detached(sink()),
        loaded.state.next_file,
        loaded.state.log_number,
        &loaded.state,
    );
    let wal = WalState {
        log: LogWriter::new(sink(), dir.join("<read-only>"), LogKind::Wal),
        number: 0,
        last_seqno: loaded.last_seqno,
        last_flush: Instant::now(),
        earlier_noted: true,
    };
    let inner = assemble(
        dir,
        opts,
        cache,
        table_files,
        home,
        view,
        core,
        wal,
        loaded.last_seqno,
        None,
    );
    *inner.recovery.lock() = loaded.report;
    *inner.failure.lock() = Some("opened read-only".into());
    inner
        .failed
        .store(true, std::sync::atomic::Ordering::Release);
    Ok(Arc::new(inner))
}

fn open_writable(dir: &Path, opts: Options) -> Result<Arc<Inner>> {
    let fs = opts.fs.clone();
    let dir = dir.to_path_buf();
    if !fs.exists(&dir).map_err(|e| Error::io(&dir, e))? {
        if !opts.create_if_missing {
            return Err(Error::NotADatabase {
                path: dir,
                reason: "directory does not exist".into(),
            });
        }
        crate::fs::create_dir_durably(fs.as_ref(), &dir).map_err(|e| Error::io(&dir, e))?;
    }
    let lock_path = dir.join("LOCK");
    let lock: Box<dyn DirLock> = fs
        .lock(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?
        .ok_or_else(|| Error::Locked { path: dir.clone() })?;
    let cache = new_cache(&opts);
    let table_files = TableFiles::new(fs.clone(), opts.max_open_files());
    let home = TableHome::new(fs.clone());
    let current = dir.join(CURRENT);
    let loaded = if fs.exists(&current).map_err(|e| Error::io(&current, e))? {
        load(&fs, &dir, &cache, &table_files, &home, &opts, &mut None)?
    } else if opts.create_if_missing {
        fresh(&fs, &dir, &opts)?
    } else {
        return Err(Error::NotADatabase {
            path: dir,
            reason: "no CURRENT file".into(),
        });
    };
    let Loaded {
        state,
        files,
        recovered,
        wals: replayed,
        last_seqno,
        mut report,
        unnamed_past_a_drop,
    } = loaded;
    // Tables that may hold writes the replay dropped go before anything moves the
    // manifest on: once it has, with new writes reusing those seqnos, such a table left
    // behind by a crash would look like a manifest that lost edits, and the next open
    // would refuse the directory. A table that cannot be deleted fails the open here, with
    // nothing changed yet.
    for (_, p) in &unnamed_past_a_drop {
        match fs.remove(p) {
            Ok(()) => report.orphans_removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p, e)),
        }
    }
    if !unnamed_past_a_drop.is_empty() {
        fs.sync_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    }

    // File numbers must move past anything already in the directory.
    let names = fs.list(&dir).map_err(|e| Error::io(&dir, e))?;
    let max_seen = names
        .iter()
        .filter_map(|n| {
            crate::util::file_number(Path::new(n)).or_else(|| crate::manifest::manifest_number(n))
        })
        .max()
        .unwrap_or(0);
    let mut next_file = state.next_file.max(max_seen + 1);
    // Numbers past MAX_FILE_NUMBER are refused as damage when read back, so a writable
    // open keeps far more room below it than any run could use (2^40 files); a database
    // numbered beyond that can only be damaged, and opens read-only.
    if next_file > MAX_FILE_NUMBER - (1 << 40) {
        let culprit = if max_seen >= state.next_file {
            format!("a file in the directory is numbered {max_seen}")
        } else {
            format!("the manifest's next file number is {}", state.next_file)
        };
        return Err(Error::corruption(
            &dir,
            0,
            format!("file numbers run out ({culprit}); the database opens read-only"),
        ));
    }
    let manifest_number = next_file;
    let wal_number = next_file + 1;
    next_file += 2;

    // The WAL's contents become the first flush below; until that flush is in the
    // manifest, the manifest keeps naming the old WALs as needed.
    let has_recovered = !recovered.is_empty();
    let log_number = if has_recovered {
        state.log_number
    } else {
        wal_number
    };
    let wal_path = wal_file(&dir, wal_number);
    let wal_handle = fs.create(&wal_path).map_err(|e| Error::io(&wal_path, e))?;
    let mut wal_log = LogWriter::new(wal_handle, wal_path, LogKind::Wal);
    wal_log.sync()?;

    let files = Arc::new(files);
    let registry = state.registry.clone();
    let snapshot = crate::db::snapshot_edit(
        next_file,
        state.last_seqno,
        log_number,
        &registry,
        &files,
        state.controller.as_ref(),
        &state.pinned,
        state.migration_held,
    );
    let manifest = ManifestWriter::create(fs.as_ref(), &dir, manifest_number, &snapshot)?;
    let view = View {
        mem: Arc::new(MemTable::new(wal_number, opts.memtable_bytes)),
        imm: if has_recovered {
            vec![recovered]
        } else {
            Vec::new()
        },
        files,
    };
    let core = new_core(manifest, next_file, log_number, &state);
    let wal = WalState {
        log: wal_log,
        number: wal_number,
        last_seqno,
        last_flush: Instant::now(),
        // What the replayed WALs held is flushed to a table before this open returns, so
        // this WAL follows no live one.
        earlier_noted: true,
    };
    let inner = Arc::new(assemble(
        &dir,
        opts,
        cache,
        table_files,
        home,
        view,
        core,
        wal,
        last_seqno,
        Some(lock),
    ));
    if has_recovered {
        // The WALs replayed may end in writes a crashed process handed to the OS and never
        // synced. The flush below makes them durable in a table before the manifest names
        // it: were a power loss to take them from the WALs in between, that table would
        // hold writes the WALs no longer do, which the next open refuses. So they are
        // synced first.
        for p in &replayed {
            fs.sync_existing(p).map_err(|e| Error::io(p, e))?;
        }
        inner.flush_oldest()?;
    }
    // Remove what no manifest names any more: old WALs and manifests, orphaned SSTables
    // from jobs a crash interrupted.
    let live: std::collections::HashSet<u64> = inner
        .view
        .load()
        .files
        .all_files()
        .map(|f| f.number)
        .collect();
    // The flush above may have rolled the manifest to a new number: keep the one in use.
    let current_manifest = crate::manifest::manifest_name(inner.core.lock().manifest.number());
    for n in fs.list(&dir).map_err(|e| Error::io(&dir, e))? {
        let p = dir.join(&n);
        // Only names the engine gives its files (a hand-made `MANIFEST-000005.bak` stays).
        let remove = if crate::manifest::manifest_number(&n).is_some() {
            n != current_manifest
        } else if n == "CURRENT.tmp" {
            true
        } else if let Some(num) = crate::util::file_number(&p) {
            (n.ends_with(".sst") && !live.contains(&num))
                || (n.ends_with(".log") && num != wal_number)
        } else {
            false
        };
        if remove && fs.remove(&p).is_ok() {
            report.orphans_removed += 1;
        }
    }
    *inner.recovery.lock() = report;
    {
        let core = inner.core.lock();
        inner.swap_view(&core, |v| View {
            mem: v.mem.clone(),
            imm: v.imm.clone(),
            files: v.files.clone(),
        });
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{EditRecord, FileRecord, ManifestContents, VersionEdit};
    use crate::sst::TableKind;
    use crate::PartitionSpec;

    /// A layout replaced as the target keeps draining through manifest rewrites and
    /// reopens: a new manifest's snapshot marks every layout that was ever the target, not
    /// only the current one. Were it to forget, the old layout would be live but not
    /// draining after the next reopen: its data never migrated and its figures gone from
    /// the progress (only the longer model runs caught that).
    #[test]
    fn a_replaced_target_keeps_draining_through_manifest_rolls_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options {
            migration_bytes_per_sec: 0,
            move_bytes_per_sec: 0,
            // Every edit rolls the manifest into a new one that starts with a snapshot.
            max_manifest_bytes: 1,
            ..crate::Options::tiny()
        };
        let draining = |db: &crate::Db| -> Vec<u32> {
            db.migration_progress()
                .draining
                .iter()
                .map(|d| d.version.0)
                .collect()
        };
        let mut db = crate::Db::open(dir.path(), opts.clone()).unwrap();
        for i in 0..200u32 {
            db.put(format!("k{i:03}"), "v").unwrap();
        }
        db.flush().unwrap();
        let v2 = db
            .register_partition_fn(PartitionSpec::hashed(4, 1))
            .unwrap();
        db.set_target(v2).unwrap();
        db.put("after", "x").unwrap();
        db.flush().unwrap();
        assert_eq!(draining(&db), vec![1], "test setup");
        for round in 0..2 {
            db.close().unwrap();
            db = crate::Db::open(dir.path(), opts.clone()).unwrap();
            assert_eq!(draining(&db), vec![1], "after reopen {round}");
        }
        assert!(db.migrate_now(None).unwrap() > 0, "v1's data migrates");
        assert!(db.migration_progress().is_complete());
        for i in 0..200u32 {
            assert_eq!(
                db.get(format!("k{i:03}")).unwrap().as_deref(),
                Some(&b"v"[..])
            );
        }
    }

    /// A first open that fails (as a crash would stop it) before CURRENT names its
    /// manifest leaves the manifest and an empty WAL: the next open starts the database
    /// over. It used to refuse the directory for good ("CURRENT is missing but
    /// MANIFEST-000001 exists"). A WAL holding a record is still refused, untouched.
    #[test]
    fn a_first_open_cut_short_before_current_does_not_block_the_next() {
        use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        fs.inject(Fault::on(FsOp::Rename, FaultKind::Io, "CURRENT", true));
        let opts = crate::Options {
            fs: Arc::new(fs.clone()),
            ..crate::Options::default()
        };
        assert!(crate::Db::open(dir.path(), opts.clone()).is_err());
        assert_eq!(fs.injected(), 1);
        let names = |d: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        assert!(names(dir.path()).contains(&"MANIFEST-000001".to_string()));
        fs.clear();
        let db = crate::Db::open(dir.path(), opts.clone()).unwrap();
        db.put("k", "v").unwrap();
        db.close().unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        db.close().unwrap();

        // A first open whose WAL header write came up short (a full disk), or left zeroes
        // where the header goes: no record fits, so the next open starts over (found by an
        // audit: both were refused for good).
        let dir = tempfile::tempdir().unwrap();
        let injected = fs.injected();
        fs.inject(Fault::on(
            FsOp::Append,
            FaultKind::ShortWrite,
            ".log",
            false,
        ));
        assert!(crate::Db::open(dir.path(), opts.clone()).is_err());
        assert_eq!(fs.injected(), injected + 1);
        fs.clear();
        crate::Db::open(dir.path(), opts.clone())
            .unwrap()
            .close()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let header = crate::log::LogFormat::new_log().header(LogKind::Wal).len();
        std::fs::write(dir.path().join("000002.log"), vec![0u8; header]).unwrap();
        crate::Db::open(dir.path(), opts).unwrap().close().unwrap();

        // The same names, but the WAL holds a write: maybe a database that lost CURRENT.
        let (src, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let db = crate::Db::open(src.path(), crate::Options::default()).unwrap();
        db.put("k", "v").unwrap();
        db.sync_wal().unwrap();
        for n in ["MANIFEST-000001", "000002.log"] {
            std::fs::copy(src.path().join(n), other.path().join(n)).unwrap();
        }
        db.close().unwrap();
        let before = names(other.path());
        let e = crate::Db::open(other.path(), crate::Options::default())
            .err()
            .unwrap();
        assert!(matches!(e, Error::NotADatabase { .. }), "{e}");
        let mut after = names(other.path());
        after.retain(|n| n != "LOCK");
        assert_eq!(after, before, "the refused directory changed");
        // Its one record torn (a first open writes none): refused too.
        let wal = other.path().join("000002.log");
        let len = std::fs::metadata(&wal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let e = crate::Db::open(other.path(), crate::Options::default())
            .err()
            .unwrap();
        assert!(matches!(e, Error::NotADatabase { .. }), "{e}");
        assert!(wal.exists());
    }

    /// A FIFO where the open expects CURRENT or a table is refused with an error naming
    /// it, never waited on: opening a FIFO for reading blocks until some writer opens it.
    #[test]
    fn a_fifo_in_a_file_s_place_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        db.put("k", "v").unwrap();
        db.flush().unwrap();
        db.close().unwrap();
        let table = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "sst"))
            .unwrap();
        for victim in [dir.path().join(CURRENT), table] {
            let kept = std::fs::read(&victim).unwrap();
            std::fs::remove_file(&victim).unwrap();
            // Made in-process: a spawned `mkfifo` would fork, and until it execs the child
            // holds a copy of every descriptor, another test's LOCK included, which makes
            // that test's reopen fail as locked.
            rustix::fs::mkfifoat(rustix::fs::CWD, &victim, rustix::fs::Mode::from(0o644)).unwrap();
            let d = dir.path().to_path_buf();
            let open = std::thread::spawn(move || crate::Db::open(&d, crate::Options::default()));
            let deadline = Instant::now() + std::time::Duration::from_secs(20);
            while !open.is_finished() {
                assert!(Instant::now() < deadline, "the open waits on {victim:?}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let e = open.join().unwrap().err().expect("refused");
            assert!(
                e.to_string().contains("not a regular file")
                    && e.to_string().contains(&*victim.to_string_lossy()),
                "{e}"
            );
            std::fs::remove_file(&victim).unwrap();
            std::fs::write(&victim, kept).unwrap();
        }
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// The sweep of an open removes the engine's own files no manifest names (an old
    /// manifest, an orphaned table, a WAL replayed) and nothing else: a hand-made backup
    /// of a manifest used to go because its name began with `MANIFEST-`.
    #[test]
    fn the_open_sweep_removes_only_the_engine_s_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        db.put("k", "v").unwrap();
        db.close().unwrap();
        let manifest = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| crate::manifest::manifest_number(n).is_some())
            .unwrap();
        let keep = [format!("{manifest}.bak"), "notes.txt".to_string()];
        for n in &keep {
            std::fs::copy(dir.path().join(&manifest), dir.path().join(n)).unwrap();
        }
        let orphan = dir.path().join("MANIFEST-000999");
        std::fs::write(&orphan, b"left by a roll a crash cut short").unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        assert!(db.recovery_report().orphans_removed >= 1);
        assert!(!orphan.exists(), "an old manifest stayed");
        for n in &keep {
            assert!(dir.path().join(n).exists(), "{n} was removed");
        }
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(crate::manifest::manifest_number("MANIFEST-000007"), Some(7));
        for bad in [
            "MANIFEST-",
            "MANIFEST-7.bak",
            "MANIFEST-x",
            "MANIFEST--1",
            "XMANIFEST-7",
        ] {
            assert_eq!(crate::manifest::manifest_number(bad), None, "{bad}");
        }
    }

    fn contents(edits: Vec<Vec<EditRecord>>) -> ManifestContents {
        ManifestContents {
            path: PathBuf::from("MANIFEST-000001"),
            number: 1,
            edits: edits
                .into_iter()
                .enumerate()
                .map(|(i, records)| (i as u64 * 100, VersionEdit { records }))
                .collect(),
            tail: None,
        }
    }

    fn register(id: u32) -> EditRecord {
        EditRecord::RegisterLayout {
            id,
            spec: PartitionSpec::Hash {
                partitions: 4096,
                seed: id as u64,
                hashed_prefix: None,
            }
            .to_bytes(),
        }
    }

    fn file(number: u64, layout_version: u32) -> EditRecord {
        EditRecord::AddFile(FileRecord {
            number,
            size: 100,
            layout_version,
            partition: 0,
            level: 0,
            kind: TableKind::Data,
            smallest: Bytes::from_static(b"a"),
            largest: Bytes::from_static(b"z"),
            min_seqno: 1,
            max_seqno: 2,
            entries: 2,
        })
    }

    /// A manifest that claims more live layouts than the engine ever allows is corrupt
    /// (opening would build every one's partitions: 4,096 each here); as many as it allows
    /// open, and so does a snapshot's way of listing retired ones (all registered first,
    /// then retired), however many there were.
    #[test]
    fn more_live_layouts_than_allowed_is_corruption() {
        let n = crate::MAX_LIVE_LAYOUTS as u32;
        let live = |count: u32| {
            let mut records: Vec<EditRecord> = (1..=count).map(register).collect();
            records.push(EditRecord::SetTarget(1));
            contents(vec![records])
        };
        assert_eq!(
            replay_manifest(&live(n)).unwrap().registry.live.len(),
            n as usize
        );
        let e = replay_manifest(&live(n + 1)).err().expect("refused");
        assert!(e.is_corruption(), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("{} layout versions live", n + 1)),
            "{e}"
        );
        let mut snapshot: Vec<EditRecord> = (1..=3 * n).map(register).collect();
        snapshot.extend((2..=2 * n + 1).map(EditRecord::RetireLayout));
        snapshot.push(EditRecord::SetTarget(1));
        let st = replay_manifest(&contents(vec![snapshot])).unwrap();
        assert_eq!(st.registry.live.len(), n as usize);
    }

    /// A snapshot's `RetiredBelow(n)`: every id below `n` not registered has retired. Such an
    /// id is never registered again, nor targeted, nor given files; retiring it again is
    /// harmless, and ids from `n` on are unknown until registered.
    #[test]
    fn ids_below_the_retired_bound_stay_retired() {
        let snapshot = || {
            vec![
                register(3),
                EditRecord::RetiredBelow(6),
                EditRecord::SetTarget(3),
            ]
        };
        let st = replay_manifest(&contents(vec![snapshot()])).unwrap();
        assert_eq!(st.registry.retired().collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        assert_eq!(st.registry.next, 6);
        let with = |records: Vec<EditRecord>| replay_manifest(&contents(vec![snapshot(), records]));
        let refused = |records: Vec<EditRecord>, why: &str| {
            let e = with(records).err().expect(why);
            assert!(e.is_corruption() && e.to_string().contains(why), "{e}");
        };
        refused(vec![register(5)], "v5 registered twice");
        refused(vec![EditRecord::SetTarget(4)], "target set to retired v4");
        refused(vec![EditRecord::SetTarget(6)], "target set to unknown v6");
        refused(vec![file(7, 2)], "");
        refused(vec![EditRecord::RetireLayout(6)], "retired unknown v6");
        refused(
            vec![EditRecord::Pin {
                id: 1,
                pinned: true,
            }],
            "pinned v1, which is not live",
        );
        assert!(with(vec![EditRecord::RetireLayout(2)]).is_ok());
        let st = with(vec![register(6), EditRecord::SetTarget(6)]).unwrap();
        assert_eq!(st.registry.next, 7);
        assert_eq!(
            st.registry.live.keys().copied().collect::<Vec<_>>(),
            vec![3, 6]
        );
    }

    /// A layout id past the id space (`RegisterLayout` of a huge id, or a `RetiredBelow`
    /// bound near `u32::MAX`: five bytes in a record whose checksum holds) is damage, and
    /// refused. It opened: every id below the bound counts as retired, and `Db::layout()`,
    /// `sluice info`, `verify` and `sst dump` list each one (4.29e9 ids: a 16 GiB vector,
    /// then a set of them), exhausting memory on a few bytes from disk.
    #[test]
    fn a_layout_id_past_the_id_space_is_refused() {
        use crate::manifest::{read_current, ManifestWriter};
        let refused = |records: Vec<EditRecord>, why: &str| {
            let e = replay_manifest(&contents(vec![records]))
                .err()
                .unwrap_or_else(|| panic!("accepted: {why}"));
            assert!(e.is_corruption(), "{why}: {e}");
        };
        refused(
            vec![
                register(1),
                EditRecord::RetiredBelow(u32::MAX),
                EditRecord::SetTarget(1),
            ],
            "RetiredBelow(u32::MAX)",
        );
        refused(
            vec![register(u32::MAX - 1), EditRecord::SetTarget(u32::MAX - 1)],
            "v4294967294",
        );
        // The top of the id space still replays.
        let top = crate::layout::MAX_LAYOUT_ID;
        let st = replay_manifest(&contents(vec![vec![
            register(top),
            EditRecord::RetiredBelow(top + 1),
            EditRecord::SetTarget(top),
        ]]))
        .unwrap();
        assert_eq!(st.registry.next, top + 1);

        // Through an open: a manifest that says so is refused, naming it.
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        db.put("k", "v").unwrap();
        db.close().unwrap();
        let m = read_current(&crate::fs::StdFs, dir.path()).unwrap();
        let mut all = VersionEdit::default();
        for (_, e) in &m.edits {
            all.records.extend(e.records.iter().cloned());
        }
        all.push(EditRecord::RetiredBelow(u32::MAX));
        ManifestWriter::create(&crate::fs::StdFs, dir.path(), m.number + 100, &all).unwrap();
        let e = crate::Db::open(dir.path(), crate::Options::default())
            .err()
            .expect("a manifest retiring 4.29e9 layout ids opened");
        assert!(e.is_corruption(), "{e}");
        assert!(e.to_string().contains("MANIFEST-"), "{e}");
    }

    /// A layout retires only once none of its files is live, whichever edits added and
    /// deleted them, and the refusal names a file it still has.
    #[test]
    fn a_layout_retires_only_without_live_files() {
        let base = || {
            vec![
                register(1),
                register(2),
                EditRecord::SetTarget(1),
                EditRecord::LastSeqno(2),
            ]
        };
        let retire_with = |files: Vec<EditRecord>| {
            let mut edits = vec![base(), files];
            edits.push(vec![EditRecord::RetireLayout(2)]);
            replay_manifest(&contents(edits))
        };
        let e = retire_with(vec![file(7, 2), file(8, 1)])
            .err()
            .expect("refused");
        assert!(e.to_string().contains("retired v2 still has file 7"), "{e}");
        // Deleted, then retired: fine; a file of another layout does not hold it back.
        let st = retire_with(vec![file(7, 2), file(8, 1), EditRecord::DeleteFile(7)]).unwrap();
        assert!(st.registry.is_retired(2));
        // Two added, one deleted: still one left.
        let e = retire_with(vec![file(7, 2), file(9, 2), EditRecord::DeleteFile(7)])
            .err()
            .expect("refused");
        assert!(e.to_string().contains("still has file 9"), "{e}");
        // Retiring again is harmless; adding to a retired layout is not.
        let mut edits = vec![base(), vec![EditRecord::RetireLayout(2)]];
        edits.push(vec![EditRecord::RetireLayout(2)]);
        assert!(replay_manifest(&contents(edits.clone())).is_ok());
        edits.push(vec![file(10, 2)]);
        assert!(replay_manifest(&contents(edits)).is_err());
    }
}
