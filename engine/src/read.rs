//! Point reads, and the lazy read-time moves they trigger.
//!
//! Read rule (the invariant of DESIGN.md): a read at snapshot `s` returns the entry with the
//! highest seqno <= `s` among the memtables and, for every live layout version `v`, partition
//! `f_v(key)`. Position decides nothing: the read gathers every run that holds the key, probes
//! them by max seqno (highest first), keeps the best seqno found so far and skips every run
//! whose max seqno cannot beat it. Lazy moves and migration outputs may therefore place an
//! older entry above a newer one, in another layout or a shallower level, without changing
//! any answer, and without costing the read a second search.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::db::{Inner, View};
use crate::error::{Error, Result};
use crate::load::ReadTally;
use crate::manifest::MAX_LEVELS;
use crate::sst::bloom;
use crate::stats::Counters;
use crate::types::Kind;
use crate::version::{FileMeta, RunBounds};
use smallvec::SmallVec;

/// Where the winning entry of a read came from.
pub(crate) enum Origin {
    Memtable,
    File(Arc<FileMeta>),
}

pub(crate) struct Resolved {
    pub seqno: u64,
    pub kind: Kind,
    pub value: Bytes,
    pub origin: Origin,
}

/// What a point read cost in tables: data blocks searched, and how many of those held
/// nothing for the key.
#[derive(Default)]
pub(crate) struct ReadCost {
    /// Filters probed: tables whose key range held the key (and whose seqnos could matter).
    pub filter_checks: u64,
    pub table_reads: u64,
    pub false_positives: u64,
    /// Set by the caller while the database takes no writes: the read then counts against
    /// the seek allowance of every sorted run it probed above the deepest one (see
    /// [`charge_shallow_runs`]).
    pub charge_seeks: bool,
}

/// Sorted runs a read probed in one partition, shallowest first (the rest are not counted).
#[derive(Default)]
struct Probed<'a> {
    runs: [Option<&'a Arc<FileMeta>>; 8],
    len: usize,
}

impl<'a> Probed<'a> {
    /// Counts every run; keeps the first eight.
    fn push(&mut self, f: &'a Arc<FileMeta>) {
        if let Some(slot) = self.runs.get_mut(self.len) {
            *slot = Some(f);
        }
        self.len += 1;
    }
}

/// A read that probed several sorted runs of a partition (filters, and a block where a
/// filter let it through) while the database takes no writes charges each run above the
/// deepest a sixteenth of a scan's seek (`FileMeta::charge_seek`): in a read-mostly
/// stretch after writes, L0 files and middle-level files that every read must probe are
/// compacted even below their triggers, so reads end up probing one run per partition.
/// Writes stop the charging, so a mixed load compacts on its usual triggers.
fn charge_shallow_runs(probed: &Probed) {
    // The deepest run is the last one counted; if more were probed than kept, every kept
    // one is above it.
    let kept = probed.len.min(probed.runs.len());
    let shallow = if probed.len > kept {
        kept
    } else {
        kept.saturating_sub(1)
    };
    for f in probed.runs[..shallow].iter().flatten() {
        f.charge_seek(crate::version::PROBE_UNITS);
    }
}

/// A run (one table) that holds a read's key, in one layout's partition for it.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    max_seqno: u64,
    /// In the target layout, whose copy of an entry wins a tie (see `resolve`).
    target: bool,
    /// The layout's place in the read's order (target first), for charging seeks.
    layout: usize,
    /// Place in the gathering order (per layout L0 first, then level by level), which is
    /// the order seeks are charged in.
    gathered: usize,
    file: &'a Arc<FileMeta>,
    filter: &'a [u8],
    probed: bool,
}

/// Whether the entry a read found (`seqno`, in the target layout or the memtables if
/// `target`) replaces the best so far: newer, or as new and the target's copy of an entry
/// the best found elsewhere (a lazily moved value and its source).
fn beats(seqno: u64, target: bool, best: &Option<Resolved>, target_id: u32) -> bool {
    match best {
        None => true,
        Some(b) => {
            seqno > b.seqno
                || (seqno == b.seqno
                    && target
                    && matches!(&b.origin, Origin::File(f) if f.layout_version != target_id))
        }
    }
}

/// The newest entry for `key` at `snapshot` across memtables and every live layout.
pub(crate) fn resolve<'a>(
    view: &'a View,
    key: &[u8],
    snapshot: u64,
    cost: &mut ReadCost,
) -> Result<Option<Resolved>> {
    let mut best: Option<Resolved> = None;
    let h = bloom::key_hash(key);
    let mut mem_probed = false;
    for m in std::iter::once(&view.mem).chain(view.imm.iter()) {
        mem_probed |= !m.is_empty();
        if let Some((seqno, kind, value)) = m.get_hashed(key, h, snapshot) {
            if seqno > best.as_ref().map_or(0, |r| r.seqno) {
                best = Some(Resolved {
                    seqno,
                    kind,
                    value,
                    origin: Origin::Memtable,
                });
            }
        }
    }
    // Every run of every live layout whose key range holds the key: L0 files (each layout's
    // kept newest first by max seqno) and at most one run per deeper level. Bounds, seqnos
    // and filters come from the levels' indexes; a file's own record is reached only to
    // search it, or to charge it a seek.
    let target_id = view.files.target;
    let target = view.files.layouts.get(&target_id);
    let others = view.files.layouts.values().filter(|l| l.id != target_id);
    // A run that cannot beat what the memtables hold is not even gathered (on a tie the
    // memtables' entry stands).
    let floor = best.as_ref().map(|b| b.seqno);
    let mut runs: SmallVec<[Candidate<'a>; 24]> = SmallVec::new();
    for (n, layout) in target.into_iter().chain(others).enumerate() {
        let p = layout.func.partition_of(key) as usize;
        let Some(part) = layout.parts.get(p) else {
            continue;
        };
        let mut add = |level: usize, i: usize, r: &'a RunBounds| {
            if r.min_seqno <= snapshot && floor.is_none_or(|s| r.max_seqno > s) {
                runs.push(Candidate {
                    max_seqno: r.max_seqno,
                    target: layout.id == target_id,
                    layout: n,
                    gathered: runs.len(),
                    file: &part.levels[level][i],
                    filter: &r.filter,
                    probed: false,
                });
            }
        };
        for level in part.occupied_levels() {
            let index = part.index(level);
            if level == 0 {
                for (i, r) in index.runs().iter().enumerate() {
                    if index.contains(r, key) {
                        add(0, i, r);
                    }
                }
            } else if let Some(i) = index.find(key) {
                add(level, i, &index.runs()[i]);
            }
        }
    }
    // Probed newest first (highest max seqno; on a tie the target's), so that once the
    // newest entry is found every run that cannot hold a newer one is skipped unsearched.
    // Position is no guide across layouts, nor always within one: migration moves a
    // partition's deepest runs first, with their seqnos, so a key's old version lands in
    // the target while its newer one still waits in the draining layout's upper level, and
    // migrated runs can gather above newer data in a partition that takes writes. In a
    // layout on its own the runs are usually in this order already.
    runs.sort_by(|a, b| b.max_seqno.cmp(&a.max_seqno).then(b.target.cmp(&a.target)));
    for c in runs.iter_mut() {
        // Sorted, so nothing after a run that cannot beat the best can either.
        if !beats(c.max_seqno, c.target, &best, target_id) {
            break;
        }
        probe(
            c.file, c.filter, c.target, key, h, snapshot, &mut best, target_id, cost,
        )?;
        c.probed = true;
    }
    if cost.charge_seeks {
        // Each partition's probed runs, shallowest first.
        runs.sort_unstable_by_key(|c| c.gathered);
        for group in runs.chunk_by(|a, b| a.layout == b.layout) {
            let mut probed = Probed::default();
            for c in group.iter().filter(|c| c.probed) {
                probed.push(c.file);
            }
            charge_shallow_runs(&probed);
            // The memtables were probed above every run (the WAL ticker reads the count).
            if mem_probed && probed.len > 0 {
                for m in std::iter::once(&view.mem).chain(view.imm.iter()) {
                    m.charge_seek(crate::version::PROBE_UNITS);
                }
                mem_probed = false;
            }
        }
    }
    Ok(best)
}

/// True if `key` has any entry newer than `snapshot` (a write or delete that an optimistic
/// transaction reading at `snapshot` did not see). Only files that hold seqnos above the
/// snapshot are probed.
pub(crate) fn changed_since(view: &View, key: &[u8], snapshot: u64) -> Result<bool> {
    for m in std::iter::once(&view.mem).chain(view.imm.iter()) {
        if m.max_seqno() > snapshot {
            if let Some((seqno, _, _)) = m.get(key, u64::MAX) {
                if seqno > snapshot {
                    return Ok(true);
                }
            }
        }
    }
    Ok(newer_in_tables(view, key, snapshot, u64::MAX, None)?.is_some())
}

/// The live layout (other than `except`) whose tables hold an entry for `key` newer than
/// `than` and at or below `at`, if any. Only files whose seqnos reach past `than` are
/// probed; the memtables are not.
pub(crate) fn newer_in_tables(
    view: &View,
    key: &[u8],
    than: u64,
    at: u64,
    except: Option<u32>,
) -> Result<Option<u32>> {
    let h = bloom::key_hash(key);
    for layout in view.files.layouts.values() {
        if except != Some(layout.id) && newer_in_layout(layout, key, h, than, at)? {
            return Ok(Some(layout.id));
        }
    }
    Ok(None)
}

/// Whether `layout`'s tables hold an entry for `key` (filter hash `h`) newer than `than`
/// and at or below `at`.
fn newer_in_layout(
    layout: &crate::version::LayoutState,
    key: &[u8],
    h: u64,
    than: u64,
    at: u64,
) -> Result<bool> {
    let Some(part) = layout.parts.get(layout.func.partition_of(key) as usize) else {
        return Ok(false);
    };
    let newer = |f: &Arc<FileMeta>| -> Result<bool> {
        if f.max_seqno <= than || f.min_seqno > at || !f.contains(key) {
            return Ok(false);
        }
        Ok(f.table.get(key, h, at)?.is_some_and(|e| e.seqno > than))
    };
    for f in &part.levels[0] {
        if newer(f)? {
            return Ok(true);
        }
    }
    for level in 1..MAX_LEVELS {
        if let Some(f) = part.file_for_key(level, key) {
            if newer(f)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Searches `f` for `key` if its filter (`filter`, from the level's index) admits it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn probe(
    f: &Arc<FileMeta>,
    filter: &[u8],
    in_target: bool,
    key: &[u8],
    h: u64,
    snapshot: u64,
    best: &mut Option<Resolved>,
    target_id: u32,
    cost: &mut ReadCost,
) -> Result<()> {
    // The caller checked the file's key range; the filter is checked here (not again in
    // `Table::get`) so that a search it admits can be counted.
    cost.filter_checks += 1;
    if !bloom::may_contain(filter, h) {
        return Ok(());
    }
    cost.table_reads += 1;
    let Some(e) = f.table.search(key, snapshot)? else {
        cost.false_positives += 1;
        return Ok(());
    };
    if beats(e.seqno, in_target, best, target_id) {
        *best = Some(Resolved {
            seqno: e.seqno,
            kind: e.kind,
            value: e.value,
            origin: Origin::File(f.clone()),
        });
    }
    Ok(())
}

/// While a layout drains, the pacer times one point read in this many (per thread).
/// Timing each one cost two clock reads and an atomic add on a shared histogram bucket:
/// ~40 ns, a third of a read that finds nothing in cached filters, and only while
/// migrating (`live_layouts` in `benches/benches/migration.rs`). One in eight still gives
/// a 200K reads/s load 25K samples per one-second pacing window.
const READ_TIMING_EVERY: u32 = 8;

/// Whether this thread's read is one the pacer times (see [`READ_TIMING_EVERY`]).
#[inline]
fn time_this_read() -> bool {
    thread_local!(static READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    // A thread's first read is timed: threads that read a little each still give the
    // pacer reads.
    READS.with(|n| {
        let this = n.get();
        n.set(this.wrapping_add(1));
        this.is_multiple_of(READ_TIMING_EVERY)
    })
}

/// Lazy moves waiting to be applied (beyond this, reads stop queueing them).
const MAX_PENDING_MOVES: usize = 8192;

/// Keys recently read out of draining layouts: a read moves its entry only if the filter
/// saw its key before (unless [`crate::Options::move_on_first_read`]). A bit set probed at
/// two places per key, cleared after [`RereadFilter::WINDOW`] keys new to it, so that
/// "recently" means within about that many first reads. Approximate both ways, and both are
/// harmless: a false positive moves a key read once, a clear forgets a key read once.
pub(crate) struct RereadFilter {
    bits: Box<[AtomicU64]>,
    added: AtomicU64,
}

impl RereadFilter {
    /// 2^20 bits (128 KiB): after `WINDOW` keys, under 1.5% false positives.
    const BITS_LOG2: u32 = 20;
    const WINDOW: u64 = 1 << 16;

    pub fn new() -> RereadFilter {
        RereadFilter {
            bits: (0..1usize << (Self::BITS_LOG2 - 6))
                .map(|_| AtomicU64::new(0))
                .collect(),
            added: AtomicU64::new(0),
        }
    }

    /// Whether `key` was seen since the last clear; records it if not.
    pub fn seen_before(&self, key: &[u8]) -> bool {
        let h = xxhash_rust::xxh3::xxh3_64(key);
        let mask = (1u64 << Self::BITS_LOG2) - 1;
        let probes = [h & mask, (h >> 32) & mask];
        let bit = |p: u64| (&self.bits[(p >> 6) as usize], 1u64 << (p & 63));
        if probes.iter().all(|&p| {
            let (word, b) = bit(p);
            word.load(Ordering::Relaxed) & b != 0
        }) {
            return true;
        }
        for p in probes {
            let (word, b) = bit(p);
            word.fetch_or(b, Ordering::Relaxed);
        }
        if self.added.fetch_add(1, Ordering::Relaxed) + 1 >= Self::WINDOW {
            self.added.store(0, Ordering::Relaxed);
            for w in self.bits.iter() {
                w.store(0, Ordering::Relaxed);
            }
        }
        false
    }
}

/// The lazy moves' budget: a bucket of bytes, refilled at `move_bytes_per_sec` and holding
/// at most a tenth of a second's worth (the burst). A move needs only a bucket not in debt,
/// and takes its whole cost, into debt if need be: the moves after it wait until the debt
/// is paid, so over any stretch the bytes moved are the rate's plus at most the burst and
/// one move, whatever the moves' sizes. (A move used to need its whole cost in the bucket,
/// and each smaller move's look cut the bucket back to the burst plus its own cost: a value
/// larger than the burst never moved while smaller moves kept coming, even far below the
/// rate, nor, under moves asking for more than the rate, any value larger than theirs.)
///
/// A move dropped when the queue is applied (see [`Inner::apply_moves`]) wrote nothing, and
/// its charge is given back ([`MoveBudget::give_back`]), less what the bucket has been
/// refilled with since it was taken: that refill paid that much of it off already, and the
/// moves let through since were let through on it. (Given back whole, a charge paid off by
/// a bucket that had filled up again meanwhile let through a second burst on top of the
/// first.) So the bucket never holds more than it would had the dropped moves never been
/// charged, and the bound holds for the moves that were made.
pub(crate) struct MoveBudget {
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// Bytes of budget; below zero, the debt the last move left.
    tokens: f64,
    /// Bytes the bucket has been refilled with since it was made, counted before the cap
    /// (each at the rate of its time): what has paid off a charge since it was taken.
    refilled: f64,
}

/// What a queued move took from the budget, to give back if it is dropped.
#[derive(Clone, Copy)]
pub(crate) struct Charge {
    cost: f64,
    /// The bucket's `refilled` when the charge was taken.
    refilled: f64,
}

impl MoveBudget {
    /// An empty bucket.
    pub(crate) fn new(now: Instant) -> MoveBudget {
        MoveBudget {
            at: now,
            tokens: 0.0,
            refilled: 0.0,
        }
    }

    /// Brings the bucket up to `now` at `rate` bytes per second.
    fn refill(&mut self, now: Instant, rate: f64) {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.at = self.at.max(now);
        self.refilled += refill;
        self.tokens = (self.tokens + refill).min(rate / 10.0);
    }

    /// Whether a move of `cost` bytes may be queued at `now`: if so, takes its cost and
    /// returns the charge.
    fn take(&mut self, now: Instant, rate: f64, cost: f64) -> Option<Charge> {
        self.refill(now, rate);
        if self.tokens < 0.0 {
            return None;
        }
        self.tokens -= cost;
        Some(Charge {
            cost,
            refilled: self.refilled,
        })
    }

    /// Gives back at `now` the charge of a move that was dropped, less the refill since it
    /// was taken (see [`MoveBudget`]), never above the burst.
    fn give_back(&mut self, now: Instant, rate: f64, charge: Charge) {
        self.refill(now, rate);
        let owed = charge.cost - (self.refilled - charge.refilled);
        if owed > 0.0 {
            self.tokens = (self.tokens + owed).min(rate / 10.0);
        }
    }
}

/// A value a read found in a draining layout, to be copied into the target.
pub(crate) struct PendingMove {
    key: Bytes,
    seqno: u64,
    value: Bytes,
    source: Arc<FileMeta>,
    /// What the move took from the budget.
    charge: Charge,
}

/// Lazy moves queued by reads, each entry (key and seqno) once.
#[derive(Default)]
pub(crate) struct MoveQueue {
    moves: Vec<PendingMove>,
    /// The queued moves' keys, with the seqno of the entry queued last for each.
    queued: HashMap<Bytes, u64>,
}

impl MoveQueue {
    /// Whether the entry of `key` at `seqno` is queued.
    fn holds(&self, key: &[u8], seqno: u64) -> bool {
        self.queued.get(key) == Some(&seqno)
    }

    fn push(&mut self, m: PendingMove) {
        self.queued.insert(m.key.clone(), m.seqno);
        self.moves.push(m);
    }
}

impl std::ops::Deref for MoveQueue {
    type Target = [PendingMove];
    fn deref(&self) -> &[PendingMove] {
        &self.moves
    }
}

impl Extend<PendingMove> for MoveQueue {
    fn extend<I: IntoIterator<Item = PendingMove>>(&mut self, moves: I) {
        for m in moves {
            self.push(m);
        }
    }
}

impl IntoIterator for MoveQueue {
    type Item = PendingMove;
    type IntoIter = std::vec::IntoIter<PendingMove>;
    fn into_iter(self) -> Self::IntoIter {
        self.moves.into_iter()
    }
}

/// Whether the entry `m` would copy (that key at that seqno) is in the memtables or the
/// target's tables already: a copy made before. (Another draining layout's copy does not
/// count: it has yet to move itself. A target table that cannot be read says yes: the move
/// is optional, and the read that queued it reported nothing.)
fn moved_already(view: &View, m: &PendingMove) -> bool {
    let in_mem = std::iter::once(&view.mem)
        .chain(view.imm.iter())
        .any(|t| t.get(&m.key, m.seqno).is_some_and(|(s, _, _)| s == m.seqno));
    in_mem
        || newer_in_layout(
            view.files.target_layout(),
            &m.key,
            bloom::key_hash(&m.key),
            m.seqno.saturating_sub(1),
            m.seqno,
        )
        .unwrap_or(true)
}

impl Inner {
    /// Point read at `snapshot`, or at the latest seqno (which may trigger a lazy move).
    /// Counted as an event of its own, or (a transaction's read) into `tally`.
    pub fn get(
        &self,
        key: &[u8],
        snapshot: Option<u64>,
        tally: Option<&mut ReadTally>,
    ) -> Result<Option<Bytes>> {
        // A key no write could store is the caller's mistake, refused as `put` refuses it.
        if key.len() > crate::MAX_KEY_LEN {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: crate::MAX_KEY_LEN,
            });
        }
        // A closed handle's state is as of its close: another process may own the
        // directory and have written since, so its answers could be stale.
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.sampling.load(Ordering::Relaxed) && time_this_read() {
            let start = Instant::now();
            let r = self.get_inner(key, snapshot, tally);
            self.fg_read_latency.record(start.elapsed());
            return r;
        }
        self.get_inner(key, snapshot, tally)
    }

    fn get_inner(
        &self,
        key: &[u8],
        snapshot: Option<u64>,
        tally: Option<&mut ReadTally>,
    ) -> Result<Option<Bytes>> {
        Counters::add(&self.counters.gets, 1);
        match tally {
            Some(t) => t.tally(key),
            None => {
                if let Some(l) = self.load.load().as_ref() {
                    l.record_read(key);
                }
                if let Some(l) = self.shadow.load().as_ref() {
                    l.record_read(key);
                }
            }
        }
        let view = self.view.load();
        let seq = self.seqno_for(&view, snapshot);
        let mut cost = ReadCost {
            charge_seeks: self.write_idle.load(Ordering::Relaxed),
            ..ReadCost::default()
        };
        let r = resolve(&view, key, seq, &mut cost);
        if cost.filter_checks > 0 {
            Counters::add(&self.counters.get_filter_checks, cost.filter_checks);
        }
        if cost.table_reads > 0 {
            Counters::add(&self.counters.get_table_reads, cost.table_reads);
            if cost.false_positives > 0 {
                Counters::add(&self.counters.get_false_positives, cost.false_positives);
            }
        }
        let Some(r) = r? else {
            return Ok(None);
        };
        if r.kind != Kind::Value {
            return Ok(None);
        }
        // A handle that writes nothing (read-only, or writes stopped after a failure) moves
        // nothing: no flush would ever write the copies.
        if snapshot.is_none()
            && self.opts.move_bytes_per_sec > 0
            && !self.failed.load(Ordering::Acquire)
        {
            if let Origin::File(f) = &r.origin {
                if f.layout_version != view.files.target {
                    drop(view);
                    if self.opts.move_on_first_read || self.rereads.seen_before(key) {
                        self.lazy_move(key, &r, f);
                    } else {
                        Counters::add(&self.counters.move_first_reads, 1);
                    }
                }
            }
        }
        Ok(Some(r.value))
    }

    /// Queues a lazy move of an entry found in a draining layout. The read returns at once;
    /// the copy is made off the read path (see [`Inner::apply_moves`]).
    fn lazy_move(&self, key: &[u8], r: &Resolved, source: &Arc<FileMeta>) {
        let mut q = self.moves.lock();
        // A hot key is read many times between two applications of the queue: its entry
        // is queued (and charged to the budget) once, so the budget goes to other keys.
        if q.holds(key, r.seqno) {
            return;
        }
        // A full queue first: a move it then refused would have taken budget (perhaps into
        // debt) for nothing.
        let cost = (key.len() + r.value.len()) as f64;
        let charge = match q.len() < MAX_PENDING_MOVES {
            true => self.take_move_budget(cost),
            false => None,
        };
        let Some(charge) = charge else {
            Counters::add(&self.counters.move_skipped, 1);
            return;
        };
        // Copies, not slices: a value read from a cached block is a slice of the whole
        // block, and the move (then the memtable, until its flush) would keep the block
        // alive — ~4 KiB pinned, uncharged, per ~100-byte entry moved.
        q.push(PendingMove {
            key: Bytes::copy_from_slice(key),
            seqno: r.seqno,
            value: Bytes::copy_from_slice(&r.value),
            source: source.clone(),
            charge,
        });
    }

    /// Applies queued lazy moves: copies each entry (original seqno and value) into the
    /// memtable; the flush that persists it writes it into the target layout and leaves a
    /// forwarding pointer in the draining partition.
    ///
    /// Safety against races: the copy keeps its original seqno, so a newer write or delete
    /// (higher seqno) — made before or after the read that found it — still wins every
    /// read. The copy is inserted only while its source file is still in the current view
    /// (that very file record: a trivial move replaces it with another at a new level, and
    /// a compaction of that one does not see this one), checked under the lock that
    /// compaction takes to retire its inputs: a compaction drops a tombstone only when no
    /// older entry for its key exists outside its inputs among the view's files, and the
    /// source file (or, afterwards, this memtable) is such an entry, so the copy can never
    /// resurface a key whose tombstone was dropped. ("Not obsolete" is not enough: a file
    /// trivially moved while a rollback made its layout the target again is neither obsolete
    /// nor in the view, and its key's tombstone can compact away meanwhile.) Nor is a move
    /// applied while a job compacts its source partition (see below).
    pub(crate) fn apply_moves(&self) {
        // Readers only ever take `moves` briefly; this lock orders appliers among themselves.
        let _applying = self.applying_moves.lock();
        let mut pending: Vec<PendingMove> = std::mem::take(&mut *self.moves.lock())
            .into_iter()
            .collect();
        if pending.is_empty() {
            return;
        }
        // A move whose entry was copied already (another read of the key queued it too, or
        // moved it and had it flushed before this read's move was queued) is not made
        // again: its bytes and its pointer would be written twice. Only appliers (one at a
        // time) make copies, so one view shows each earlier copy, in a memtable or,
        // flushed, in a target table.
        //
        // A move dropped for what holds of it alone (copied already, its source gone, under
        // compaction or waited for by migration, or in the target again) gives its budget
        // back: it wrote nothing, and its charge would hold back other keys' moves. One
        // refused for what refuses every move now (a migration hold, the disk headroom, a
        // memtable full) does not: given back, it would only let reads queue more moves
        // (copying their values) to be refused the same way.
        let mut dropped = Vec::new();
        {
            let view = self.view.load();
            pending.retain(|m| {
                let again = moved_already(&view, m);
                if again {
                    dropped.push(m.charge);
                }
                !again
            });
            if !dropped.is_empty() {
                Counters::add(&self.counters.move_skipped, dropped.len() as u64);
            }
        }
        // Moves and bytes per source version, booked once per batch.
        let mut booked: HashMap<u32, (u64, u64)> = HashMap::new();
        let mem = {
            // The core lock (job picks take it) keeps this batch and a job pick apart. A
            // job running on the source's partition watches only the memtables of its pick,
            // so it could drop a tombstone (with the source value) that this copy, in a
            // newer memtable, would then outlive: such moves are skipped (the job carries or
            // drops the value itself). A job picked after this batch watches the memtable
            // the copies went into, or the flushed file they are in by then.
            let core = self.core.lock();
            // Copies are migration too: not into the disk's headroom (their flush writes
            // them again, into the target).
            // Each table the copies' flush writes into brings its fixed cost: the copies'
            // in each target partition, and the pointers' in each source partition. (The
            // sources were counted as many as the target's partitions: a flush of copies out
            // of 1024 partitions into one wrote 141 KB for the 64 KiB checked.) Those the
            // memtable's earlier copies go to are counted already.
            let mut need = 0u64;
            {
                let view = self.view.load();
                let target = view.files.target_layout();
                let mut tables = HashSet::new();
                for m in &pending {
                    need = need.saturating_add(crate::memtable::MemTable::move_cost(
                        m.key.len(),
                        m.value.len(),
                    ));
                    for t in [
                        (target.id, target.func.partition_of(&m.key)),
                        (m.source.layout_version, m.source.partition),
                    ] {
                        if !view.mem.has_moved_table(t.0, t.1) && tables.insert(t) {
                            need = need.saturating_add(crate::migration::TABLE_COST);
                        }
                    }
                }
            }
            if self.headroom_refusal(&core, need).is_some() {
                Counters::add(&self.counters.move_skipped, pending.len() as u64);
                drop(core);
                self.give_back_move_budget(&dropped);
                return;
            }
            let _install = self.install.read();
            let view = self.view.load();
            for m in pending {
                if core.migration_held
                    || view.mem.approximate_bytes() >= self.opts.memtable_bytes.saturating_mul(2)
                {
                    Counters::add(&self.counters.move_skipped, 1);
                    continue;
                }
                let source = (m.source.layout_version, m.source.partition);
                // (A partition a migration pick waits for takes no copies: see
                // `crate::awaits::Awaits`.)
                if !view.files.holds(&m.source)
                    || core.busy.contains(&source)
                    || core.migration_awaits.contains(&source)
                    || view.files.target == m.source.layout_version
                {
                    Counters::add(&self.counters.move_skipped, 1);
                    dropped.push(m.charge);
                    continue;
                }
                let cost = (m.key.len() + m.value.len()) as u64;
                let from = m.source.layout_version;
                // Noted before the copy goes in: a flush that sees the copy sees its source.
                view.mem.note_moved_source(from, m.source.partition);
                if !view.mem.insert_moved(&m.key, m.seqno, &m.value, from) {
                    // The same entry twice in this batch: copied once.
                    Counters::add(&self.counters.move_skipped, 1);
                    dropped.push(m.charge);
                    continue;
                }
                let target = view.files.target_layout();
                for (v, p) in [
                    (target.id, target.func.partition_of(&m.key)),
                    (from, m.source.partition),
                ] {
                    view.mem
                        .charge_moved_table(v, p, crate::migration::TABLE_COST);
                }
                let e = booked.entry(from).or_default();
                e.0 += 1;
                e.1 += cost;
            }
            // Booked under the core lock too: a flush of these copies takes those it leaves
            // out back out of the figures as it installs, under that lock, which must
            // find them counted already.
            if !booked.is_empty() {
                let mut counts = self.lazy_counts.lock();
                for (from, (n, b)) in booked {
                    let e = counts.entry(from).or_default();
                    e.0 += n;
                    e.1 += b;
                }
            }
            view.mem.clone()
        };
        self.give_back_move_budget(&dropped);
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::MovesBeforeBooking);
        // Even when the batch took nothing: a memtable that moves filled while another
        // waited for its flush takes no more moves, and would stay unfrozen (moves then
        // skipped for good) until a write or a manual flush.
        if mem.approximate_bytes() >= self.opts.memtable_bytes {
            self.rotate_for_moves();
        }
    }

    /// Freezes a memtable that lazy moves filled, if no writer is doing it already and no
    /// other frozen memtable waits for its flush: moves (optional work) hold at most the
    /// active memtable and one frozen, each up to twice `memtable_bytes`, and leave the
    /// other frozen slots to writers (who would otherwise wait for a flush).
    fn rotate_for_moves(&self) {
        if let Some(mut wal) = self.wal.try_lock() {
            let view = self.view.load();
            if view.mem.approximate_bytes() >= self.opts.memtable_bytes
                && view.imm.is_empty()
                && !self.failed.load(Ordering::Acquire)
            {
                drop(view);
                // A failed rotation either marked the WAL failed itself (writes then see
                // the error) or changed nothing (`NotApplied`: tried again later); the moves
                // are optional work and need not report it again.
                let _ = self.rotate(&mut wal);
            }
        }
    }

    fn take_move_budget(&self, cost: f64) -> Option<Charge> {
        let rate = self.opts.move_bytes_per_sec as f64;
        self.move_bucket.lock().take(Instant::now(), rate, cost)
    }

    /// Gives the budget back the charges of moves dropped at apply (see [`MoveBudget`]).
    fn give_back_move_budget(&self, dropped: &[Charge]) {
        if dropped.is_empty() {
            return;
        }
        let rate = self.opts.move_bytes_per_sec as f64;
        let mut bucket = self.move_bucket.lock();
        let now = Instant::now();
        for &c in dropped {
            bucket.give_back(now, rate, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use super::RereadFilter;
    use crate::fs::FaultFs;
    use crate::test_hooks::{set, Point};
    use crate::{Db, Options, PartitionSpec};

    /// Takes the queued moves out of the queue, as a reader preempted between finding an
    /// entry and queueing its move holds it; `extend` the queue with them to queue them.
    fn hold_queued_moves(db: &Db) -> super::MoveQueue {
        std::mem::take(&mut *db.inner.moves.lock())
    }

    /// Entries the manifest counts in the target layout's tables.
    fn target_entries(db: &Db) -> u64 {
        let target = db.layout().target.0;
        db.stats()
            .partitions
            .iter()
            .filter(|p| p.version == target)
            .map(|p| p.entries)
            .sum()
    }

    /// 200 keys compacted in v1 (one range partition), draining into a hash v2; lazy moves
    /// on (the first read of a key moves it), no background migration, and no WAL tick to
    /// apply queued moves (tests do).
    fn draining_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), draining_opts(&FaultFs::new(), true)).unwrap();
        fill_then_retarget(&db);
        (dir, db)
    }

    /// [`draining_db`], lazy moves at `rate` bytes per second.
    fn draining_db_moving(rate: u64) -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            move_bytes_per_sec: rate,
            ..draining_opts(&FaultFs::new(), true)
        };
        let db = Db::open(dir.path(), opts).unwrap();
        fill_then_retarget(&db);
        (dir, db)
    }

    fn draining_opts(fs: &FaultFs, move_on_first_read: bool) -> Options {
        Options {
            fs: Arc::new(fs.clone()),
            move_bytes_per_sec: 1 << 30,
            move_on_first_read,
            migration_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            wal_flush_interval: Duration::from_secs(3600),
            ..Options::default()
        }
    }

    fn fill_then_retarget(db: &Db) {
        for i in 0..200u32 {
            db.put(format!("k{i:04}"), vec![b'v'; 100]).unwrap();
        }
        db.compact().unwrap();
        let v2 = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 1,
                hashed_prefix: None,
            })
            .unwrap();
        db.set_target(v2).unwrap();
    }

    /// While a layout drains, the pacer times one point read in [`READ_TIMING_EVERY`] per
    /// thread, and none once no layout drains.
    #[test]
    fn the_pacer_times_one_read_in_eight_while_a_layout_drains() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            move_bytes_per_sec: 0,
            ..draining_opts(&FaultFs::new(), false)
        };
        let db = Db::open(dir.path(), opts).unwrap();
        fill_then_retarget(&db);
        let timed_reads = |db: &Db| {
            // No pacing window ends (and empties the histogram) meanwhile.
            let _pacer = db.inner.pacer.lock();
            let before = db.inner.fg_read_latency.count();
            std::thread::scope(|s| {
                s.spawn(|| {
                    for i in 0..800u32 {
                        assert!(db.get(format!("k{:04}", i % 200)).unwrap().is_some());
                    }
                });
            });
            db.inner.fg_read_latency.count() - before
        };
        assert_eq!(timed_reads(&db), 800 / u64::from(super::READ_TIMING_EVERY));
        db.migrate_now(None).unwrap();
        assert_eq!(db.layout().versions.len(), 1);
        assert_eq!(timed_reads(&db), 0);
    }

    /// The re-read filter: a key is "seen" on its second offer, forgotten once the window of
    /// new keys has passed, and keys offered once are rarely taken for seen ones.
    #[test]
    fn the_reread_filter_admits_second_reads_within_its_window() {
        use std::sync::atomic::Ordering::Relaxed;
        let f = RereadFilter::new();
        assert!(!f.seen_before(b"a"));
        assert!(f.seen_before(b"a"));
        // New keys until the filter clears (its window of new keys is full).
        let (mut offered, mut false_positives) = (0u64, 0u64);
        loop {
            if f.seen_before(format!("k{offered}").as_bytes()) {
                false_positives += 1;
            }
            offered += 1;
            if offered == RereadFilter::WINDOW / 2 {
                assert!(f.seen_before(b"a"), "forgotten within the window");
            }
            if f.added.load(Relaxed) == 0 {
                break;
            }
            assert!(offered < 2 * RereadFilter::WINDOW, "never cleared");
        }
        assert!(
            offered >= RereadFilter::WINDOW - 1,
            "cleared after {offered}"
        );
        assert!(
            (false_positives as f64) < 0.01 * offered as f64,
            "{false_positives} of {offered} keys new to the filter passed for seen"
        );
        assert!(!f.seen_before(b"a"), "remembered past the window");
    }

    /// By default a read moves an entry out of a draining layout only if its key was read
    /// there lately before: keys read once stay for migration to carry, keys read twice move.
    /// Then a power cut: every key survives, the moved ones in the target layout.
    #[test]
    fn a_key_read_once_stays_and_one_read_again_moves() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let db = Db::open(dir.path(), draining_opts(&fs, false)).unwrap();
        fill_then_retarget(&db);
        let read = |range: std::ops::Range<u32>| {
            for i in range {
                assert!(db.get(format!("k{i:04}")).unwrap().is_some());
            }
            db.inner.apply_moves();
        };
        read(0..100);
        let s = db.stats();
        assert_eq!((s.lazy_moves, s.lazy_move_first_reads), (0, 100));
        read(0..50);
        let s = db.stats();
        assert_eq!((s.lazy_moves, s.lazy_move_first_reads), (50, 100));
        db.flush().unwrap();
        fs.power_cut(db).unwrap();
        let db = Db::open(dir.path(), draining_opts(&fs, false)).unwrap();
        for i in 0..200u32 {
            assert_eq!(
                db.get(format!("k{i:04}")).unwrap().as_deref(),
                Some(&[b'v'; 100][..]),
                "k{i:04}"
            );
        }
        assert_eq!(target_entries(&db), 50, "entries in the target layout");
    }

    /// A read at the latest state while a write to its key lands and is flushed: the flush
    /// drops the older entry (no snapshot protects it). The read used to take its seqno
    /// before its view, and then found only the newer entry, above its seqno: `None` for a
    /// key that held a value throughout. Point reads and range scans alike.
    #[test]
    fn a_write_and_flush_during_a_latest_read_lose_it_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            idle_memtable_flush_after: None,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        db.put("k", "v0").unwrap();
        let meanwhile = |n: u32| {
            let db = db.clone();
            move || {
                db.put("k", format!("v{n}")).unwrap();
                db.flush().unwrap();
            }
        };
        // The write lands in the memtable the read's view holds, so the read sees it.
        set(Point::BetweenViewAndSeqno, meanwhile(1));
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v1"[..]), "get");
        // v1 is in a table now; v2 in the memtable, dropped by the next flush (v3 shadows
        // it): a scan at v2's seqno over a later view would find v1.
        db.put("k", "v2").unwrap();
        set(Point::BetweenViewAndSeqno, meanwhile(3));
        let all: Vec<_> = db.range(..).map(|r| r.unwrap()).collect();
        assert_eq!(all, vec![("k".into(), "v3".into())], "scan");
    }

    /// A move out of a partition that a job is compacting is skipped: the job watches only
    /// the memtables of its pick, and could drop a tombstone the copy would outlive (found
    /// by review: after a rollback, a full compaction of the layout, then a forward
    /// retarget, the copy showed a deleted value until its flush).
    #[test]
    fn a_move_out_of_a_partition_under_compaction_is_skipped() {
        let (_dir, db) = draining_db();
        let inner = &db.inner;
        assert!(db.get("k0100").unwrap().is_some());
        inner.core.lock().busy.insert((1, 0)); // v1's only partition, as a job marks it
        inner.apply_moves();
        assert_eq!(
            db.stats().lazy_moves,
            0,
            "moved while its partition was busy"
        );
        assert!(inner.view.load().mem.is_empty());
        inner.core.lock().busy.remove(&(1, 0));
        assert!(db.get("k0100").unwrap().is_some());
        inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 1);
    }

    /// A move whose source file left the view before it was applied is skipped: a reader
    /// preempted between finding the entry and queueing its move, while the key is deleted,
    /// its file migrated and the tombstone compacted away, would otherwise bring the
    /// deleted value back.
    #[test]
    fn a_move_whose_source_left_the_view_is_skipped() {
        let (_dir, db) = draining_db();
        let inner = &db.inner;
        assert!(db.get("k0100").unwrap().is_some());
        // The move waits in the reader (out of the queue) while the rest happens.
        let queued = hold_queued_moves(&db);
        assert_eq!(queued.len(), 1);
        db.delete("k0100").unwrap();
        db.migrate_now(None).unwrap();
        db.compact().unwrap();
        assert!(!inner.view.load().files.holds(&queued[0].source));
        inner.moves.lock().extend(queued);
        inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 0, "moved out of a file gone");
        assert_eq!(db.get("k0100").unwrap(), None, "the deleted key came back");
    }

    /// A lazily moved copy in the memtable is an older entry of its key outside any job's
    /// tables: a compaction that picked that memtable keeps the key's tombstone over it.
    /// Here the copy is made after the delete was flushed, then its source migrates into
    /// the target next to the tombstone, and a full compaction of that partition runs
    /// before the copy's flush: dropping the tombstone there (with the migrated value under
    /// it) left the copy to bring the deleted value back until the flush.
    #[test]
    fn a_tombstone_over_a_moved_copy_in_the_memtable_outlives_a_compaction() {
        let (_dir, db) = draining_db();
        let inner = &db.inner;
        assert!(db.get("k0100").unwrap().is_some());
        // The move waits in the reader (out of the queue) while the key is deleted and the
        // delete flushed, then is applied: the copy, older than the tombstone, is in the
        // memtable and the source file still in the view.
        let queued = hold_queued_moves(&db);
        assert_eq!(queued.len(), 1);
        db.delete("k0100").unwrap();
        db.flush().unwrap();
        inner.moves.lock().extend(queued);
        inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 1);
        assert_eq!(db.get("k0100").unwrap(), None);
        // The source migrates into the target, where the tombstone is.
        db.migrate_now(None).unwrap();
        assert!(db.migration_progress().is_complete());
        assert!(
            !inner.view.load().mem.is_empty(),
            "the copy is not flushed yet"
        );
        assert_eq!(db.get("k0100").unwrap(), None);
        let job = {
            let mut core = inner.core.lock();
            let view = inner.view.load_full();
            let target = view.files.target;
            let p = view.files.target_layout().func.partition_of(b"k0100");
            inner
                .full_partition_job(&mut core, &view, target, p)
                .expect("the partition holds the tombstone")
        };
        let r = inner.run_compaction(&job);
        inner.release_job(&mut inner.core.lock(), &job);
        r.unwrap();
        assert_eq!(db.get("k0100").unwrap(), None, "the deleted key came back");
        db.flush().unwrap();
        assert_eq!(db.get("k0100").unwrap(), None, "the deleted key came back");
    }

    /// A value read out of a cached block is a slice of the whole block; a queued move
    /// (and then the memtable) must hold a copy of the entry, not the block.
    #[test]
    fn a_queued_move_copies_its_value_out_of_the_cached_block() {
        let (_dir, db) = draining_db();
        assert_eq!(db.get("k0100").unwrap().unwrap().len(), 100);
        let q = db.inner.moves.lock();
        assert_eq!(q.len(), 1, "the read queued one move");
        let m = &q[0];
        assert_eq!(m.value.len(), 100);
        // The block the value was read from, as the cache holds it.
        let t = &m.source.table;
        let block = t.block(t.find_block(b"k0100", u64::MAX)).unwrap();
        let range = block.data().as_ptr_range();
        assert!(
            !range.contains(&m.value.as_ptr()),
            "the queued move's value points into the cached block"
        );
    }

    /// Two moves of the same entry in one batch (a reader queued its move while the
    /// queue was taken: one applier took it, the other was then queued again): the
    /// memtable takes the copy once, and the figures count one move, its bytes once.
    #[test]
    fn a_key_read_twice_before_its_move_is_applied_counts_one_move() {
        let (_dir, db) = draining_db();
        assert!(db.get("k0100").unwrap().is_some());
        let first = hold_queued_moves(&db);
        assert!(db.get("k0100").unwrap().is_some());
        db.inner.moves.lock().extend(first);
        assert_eq!(db.inner.moves.lock().len(), 2, "two moves queued");
        db.inner.apply_moves();
        let s = db.stats();
        assert_eq!(
            (s.lazy_moves, s.lazy_moved_bytes),
            (1, 105),
            "moves and bytes booked"
        );
        let p = db.migration_progress();
        assert_eq!(
            (p.draining[0].lazy_moves, p.draining[0].lazy_moved_bytes),
            (1, 105)
        );
        assert_eq!(
            db.inner.view.load().mem.moved_bytes(),
            crate::memtable::MemTable::move_cost(5, 100) + 2 * crate::migration::TABLE_COST,
            "disk the queued copy will take"
        );
    }

    /// A move queued by a read that found the entry in the draining layout before another
    /// read's move of it was applied and flushed: the copy and its pointer are on disk
    /// already, and copying it again would write the bytes and the pointer twice.
    #[test]
    fn a_move_of_an_entry_moved_and_flushed_meanwhile_is_skipped() {
        let (_dir, db) = draining_db();
        let inner = &db.inner;
        assert!(db.get("k0100").unwrap().is_some());
        // This reader's move waits (out of the queue) while another read's is applied.
        let late = hold_queued_moves(&db);
        assert!(db.get("k0100").unwrap().is_some());
        inner.apply_moves();
        db.flush().unwrap();
        inner.moves.lock().extend(late);
        inner.apply_moves();
        db.flush().unwrap();
        let s = db.stats();
        assert_eq!((s.lazy_moves, s.lazy_moved_bytes), (1, 105), "moves booked");
        let p = db.migration_progress();
        assert_eq!(p.draining[0].forwarding_pointers, 1, "pointers live");
        assert_eq!(target_entries(&db), 1, "copies in the target");
    }

    /// A hot key read again and again while its move waits in the queue is queued and
    /// charged to the move budget once: the budget moves other keys too.
    #[test]
    fn a_key_read_again_while_its_move_is_queued_is_charged_once() {
        // A move costs 105 bytes (key and value); a tenth of a second's budget (the burst)
        // is one move.
        let (_dir, db) = draining_db_moving(1050);
        // The bucket full, its clock stopped: the first move empties it, the second takes
        // it into debt, and no third goes.
        budget_stopped_at(&db, 105.0);
        for _ in 0..10 {
            assert!(db.get("k0100").unwrap().is_some());
        }
        assert!(db.get("k0101").unwrap().is_some());
        assert_eq!(db.inner.moves.lock().len(), 2, "moves queued");
        db.inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 2);
    }

    /// Sets the move budget to `tokens` bytes, its clock stopped for the test's span: the
    /// bucket was brought up to date an hour from now, and refills nothing before then.
    fn budget_stopped_at(db: &Db, tokens: f64) {
        let mut b = db.inner.move_bucket.lock();
        b.at = std::time::Instant::now() + Duration::from_secs(3600);
        b.tokens = tokens;
    }

    /// Moves dropped when the queue is applied wrote nothing: their charge goes back to the
    /// budget, which lets other keys' moves through on it. It used to stay charged, and
    /// the moves after them waited for the bucket to pay off a debt of bytes never moved.
    /// Dropped here: two moves out of a partition under compaction, and a key's second
    /// move queued while the first was applied (the budget's clock stopped: one burst, a
    /// tenth of a second's budget, is one move).
    #[test]
    fn moves_dropped_at_apply_give_their_charge_back() {
        let (_dir, db) = draining_db_moving(1050);
        let inner = &db.inner;
        let queued = |keys: &[&str]| {
            for k in keys {
                assert!(db.get(k).unwrap().is_some());
            }
            inner.moves.lock().len()
        };
        // The first move empties the bucket, the second takes it into debt.
        budget_stopped_at(&db, 105.0);
        assert_eq!(queued(&["k0100", "k0101"]), 2, "moves queued");
        inner.core.lock().busy.insert((1, 0)); // v1's only partition, as a job marks it
        inner.apply_moves();
        inner.core.lock().busy.remove(&(1, 0));
        assert_eq!(db.stats().lazy_moves, 0);
        assert_eq!(
            queued(&["k0102", "k0103"]),
            2,
            "moves queued after two were dropped"
        );
        inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 2);
        // A key read again while its move waited out of the queue (in the reader): queued
        // and charged twice, copied once.
        budget_stopped_at(&db, 105.0);
        assert_eq!(queued(&["k0104"]), 1);
        let first = hold_queued_moves(&db);
        assert_eq!(queued(&["k0104"]), 1);
        inner.moves.lock().extend(first);
        inner.apply_moves();
        assert_eq!(db.stats().lazy_moves, 3);
        assert_eq!(
            queued(&["k0105"]),
            1,
            "moves queued after a key's second move was dropped"
        );
    }

    /// The charge a dropped move gives back is what the bucket still owes for it: less the
    /// refill since it was taken, and never past the burst, at whatever rate holds now
    /// (simulated clock; a burst of 100 bytes at 1000 bytes per second).
    #[test]
    fn a_dropped_move_gives_back_its_charge_less_the_refill_since() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let full = || super::MoveBudget {
            tokens: 100.0,
            ..super::MoveBudget::new(t0)
        };
        // Dropped at once: the bucket is as it was.
        let mut b = full();
        let c = b.take(t0, 1000.0, 100.0).unwrap();
        assert!(b.take(t0, 1000.0, 1.0).is_some(), "a move into debt");
        b.give_back(t0, 1000.0, c);
        assert_eq!(b.tokens, -1.0 + 100.0);
        // 60 ms later: the refill paid 60 bytes of it.
        let mut b = full();
        let c = b.take(t0, 1000.0, 100.0).unwrap();
        b.give_back(at(60), 1000.0, c);
        assert_eq!(b.tokens.round(), 100.0);
        let mut b = full();
        let c = b.take(t0, 1000.0, 100.0).unwrap();
        assert!(b.take(at(60), 1000.0, 60.0).is_some());
        b.give_back(at(60), 1000.0, c);
        assert_eq!(b.tokens.round(), 40.0);
        // Full again since: nothing owed, and no second burst.
        let mut b = full();
        let c = b.take(t0, 1000.0, 100.0).unwrap();
        b.give_back(at(150), 1000.0, c);
        assert_eq!(b.tokens, 100.0);
        assert!(b.take(at(150), 1000.0, 101.0).is_some());
        assert!(b.take(at(150), 1000.0, 1.0).is_none(), "a move on a debt");
        // The rate halved meanwhile: 25 bytes refilled at the new rate, and the burst is 50.
        let mut b = full();
        let c = b.take(t0, 1000.0, 100.0).unwrap();
        b.give_back(at(50), 500.0, c);
        assert_eq!(b.tokens.round(), 50.0);
    }

    /// Moves asked for, and some of those granted then dropped (their charge given back),
    /// at random on a simulated clock: over every stretch, the bytes of the moves made
    /// keep to the rate plus one burst and one move. Given back whole, a charge the bucket
    /// had refilled meanwhile let moves past that.
    #[test]
    fn moves_made_keep_to_the_rate_when_dropped_moves_give_their_charge_back() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let rate = 10_000.0;
        let burst = rate / 10.0;
        for _ in 0..2000 {
            let start = std::time::Instant::now();
            let mut budget = super::MoveBudget::new(start);
            let (mut now, mut largest) = (0u64, 0.0f64);
            // (time in µs, cost, dropped) of each move granted; charges of those queued.
            let mut granted: Vec<(u64, f64, bool)> = Vec::new();
            let mut queued: Vec<(usize, super::Charge)> = Vec::new();
            for _ in 0..(next() % 40) {
                now += [0, 0, 1_000, 20_000, 100_000, 300_000][(next() % 6) as usize]
                    * (next() % 1000)
                    / 1000;
                let t = start + Duration::from_micros(now);
                if next() % 100 < 55 {
                    let cost = [10.0, 50.0, 200.0, 500.0, 1000.0][(next() % 5) as usize];
                    if let Some(c) = budget.take(t, rate, cost) {
                        largest = largest.max(cost);
                        queued.push((granted.len(), c));
                        granted.push((now, cost, false));
                    }
                } else if !queued.is_empty() {
                    let (i, c) = queued.swap_remove((next() % queued.len() as u64) as usize);
                    if next() % 100 < 60 {
                        budget.give_back(t, rate, c);
                        granted[i].2 = true;
                    }
                }
            }
            let made: Vec<(u64, f64)> = granted
                .iter()
                .filter(|m| !m.2)
                .map(|m| (m.0, m.1))
                .collect();
            for (i, &(from, _)) in made.iter().enumerate() {
                let mut bytes = 0.0;
                for &(to, cost) in &made[i..] {
                    bytes += cost;
                    let allowed = rate * (to - from) as f64 / 1e6 + burst + largest;
                    assert!(
                        bytes <= allowed + 1e-6,
                        "{bytes} bytes moved in {} µs",
                        to - from
                    );
                }
            }
        }
    }

    /// Asks a move budget of `rate` bytes per second for moves over `secs` seconds of a
    /// simulated clock, in 1 ms steps: each step `small_per_ms` moves of 1 KiB, and every
    /// 10 ms first one of `large` bytes. Returns the bytes granted, and the large moves.
    fn ask_for_moves(rate: f64, secs: u32, small_per_ms: u32, large: f64) -> (f64, u32) {
        let start = std::time::Instant::now();
        let mut budget = super::MoveBudget::new(start);
        let (mut granted, mut large_granted) = (0.0, 0);
        for ms in 0..secs * 1000 {
            let now = start + Duration::from_millis(u64::from(ms));
            if ms % 10 == 0 && budget.take(now, rate, large).is_some() {
                granted += large;
                large_granted += 1;
            }
            for _ in 0..small_per_ms {
                if budget.take(now, rate, 1024.0).is_some() {
                    granted += 1024.0;
                }
            }
        }
        (granted, large_granted)
    }

    /// A move larger than the burst (a tenth of a second's budget) read again and again
    /// while small moves keep coming, far below the rate: it used to need the whole of its
    /// cost banked, and every small move cut the bank back to the burst, so it never moved.
    /// Moved now, and the moves keep to the rate (bytes on a simulated clock).
    #[test]
    fn a_move_larger_than_the_burst_is_not_starved_by_small_ones() {
        let rate = f64::from(8u32 << 20);
        let large = f64::from(2u32 << 20);
        // 1 MiB/s of small moves against 8 MiB/s, the large one asked for 100 times a second.
        let (granted, large_granted) = ask_for_moves(rate, 10, 1, large);
        assert!(large_granted > 0, "the large move never went");
        assert!(
            granted <= rate * 10.0 + rate / 10.0 + large,
            "{granted} bytes granted in 10 s at {rate} bytes/s"
        );
    }

    /// Small moves asked for at more than the rate: the large move still goes now and
    /// then, and the bytes granted are the rate's, give or take a burst and a move.
    #[test]
    fn moves_asked_for_beyond_the_rate_keep_to_it_and_starve_no_size() {
        let rate = f64::from(8u32 << 20);
        let large = f64::from(2u32 << 20);
        // 20 MiB/s of small moves.
        let (granted, large_granted) = ask_for_moves(rate, 10, 20, large);
        assert!(large_granted > 0, "the large move never went");
        let refilled = rate * 9.999;
        assert!(
            granted <= refilled + rate / 10.0 + large,
            "{granted} bytes granted, {refilled} refilled"
        );
        assert!(
            granted >= refilled - rate / 10.0,
            "{granted} bytes granted, {refilled} refilled"
        );
    }

    /// Through reads: with the budget's bucket full, a small key's move and then a value
    /// many times the bucket both queue, and the large one lands in the target layout.
    #[test]
    fn a_read_moves_a_value_larger_than_the_burst() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        // A tenth of a second's budget: 1000 bytes; the large value is 100 times that.
        let rate = 10_000u64;
        let opts = Options {
            move_bytes_per_sec: rate,
            ..draining_opts(&fs, true)
        };
        let db = Db::open(dir.path(), opts).unwrap();
        db.put("large", vec![b'l'; 100_000]).unwrap();
        fill_then_retarget(&db);
        let now = std::time::Instant::now();
        *db.inner.move_bucket.lock() = super::MoveBudget {
            at: now,
            tokens: rate as f64 / 10.0,
            ..super::MoveBudget::new(now)
        };
        assert!(db.get("k0100").unwrap().is_some());
        assert_eq!(db.get("large").unwrap().map(|v| v.len()), Some(100_000));
        assert_eq!(db.inner.moves.lock().len(), 2, "moves queued");
        db.inner.apply_moves();
        db.flush().unwrap();
        let s = db.stats();
        assert_eq!((s.lazy_moves, s.lazy_moved_bytes), (2, 105 + 100_005));
        assert_eq!(target_entries(&db), 2, "entries in the target layout");
    }

    /// Moves freeze a memtable they filled only while no other frozen one waits for its
    /// flush, so their memtables stay within the active one and one frozen, each up to
    /// twice `memtable_bytes` (and a writer finds a frozen slot free). Behind a slow flush
    /// they used to take every frozen slot (`max_immutable_memtables`), past that bound,
    /// and a write then waited for a flush. Once the frozen one is flushed, the next batch
    /// of moves freezes the full memtable, though it takes none of them.
    #[test]
    fn moves_freeze_no_memtable_while_another_waits_for_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let budget = 4u64 << 10;
        let opts = Options {
            memtable_bytes: budget as usize,
            ..draining_opts(&fs, true)
        };
        let db = Db::open(dir.path(), opts).unwrap();
        fill_then_retarget(&db);
        let inner = &db.inner;
        let read_and_apply = |keys: std::ops::Range<u32>| {
            for i in keys {
                assert!(db.get(format!("k{i:04}")).unwrap().is_some());
            }
            inner.apply_moves();
        };
        // The flush thread holds off: a frozen memtable stays frozen.
        inner.hold_flushes();
        // About 50 moves fill a memtable to twice its budget: enough for three.
        read_and_apply(0..50);
        read_and_apply(50..100);
        read_and_apply(100..150);
        let s = db.stats();
        assert_eq!(s.immutable_memtables, 1, "memtables frozen by moves");
        assert!(
            s.memtable_bytes <= 4 * budget + 2 * 1024,
            "memtables hold {}",
            s.memtable_bytes
        );
        let moved = s.lazy_moves;
        inner.flush_oldest().unwrap();
        assert_eq!(db.stats().immutable_memtables, 0);
        read_and_apply(150..160);
        let s = db.stats();
        assert_eq!(s.lazy_moves, moved, "moves into a full memtable");
        assert_eq!(s.immutable_memtables, 1, "the full memtable was not frozen");
        // A write freezes the memtable the next moves filled, without waiting for a flush.
        read_and_apply(160..200);
        db.put("w", "x").unwrap();
        assert_eq!(db.stats().immutable_memtables, 2);
        inner.release_flushes();
        db.flush().unwrap();
        for i in 0..200u32 {
            assert!(db.get(format!("k{i:04}")).unwrap().is_some(), "k{i:04}");
        }
    }

    /// A read-only handle writes nothing, so its reads queue no moves: nothing would ever
    /// apply them (no WAL ticker runs), and each, with its copy of the value, stayed
    /// queued as long as the handle lived, up to the queue's limit.
    #[test]
    fn a_read_only_handle_queues_no_moves() {
        let (dir, db) = draining_db();
        let ro = Db::open_read_only(dir.path(), draining_opts(&FaultFs::new(), true)).unwrap();
        for i in 0..200u32 {
            assert!(ro.get(format!("k{i:04}")).unwrap().is_some());
        }
        assert_eq!(ro.inner.moves.lock().len(), 0, "moves queued");
        drop(db);
    }
}
