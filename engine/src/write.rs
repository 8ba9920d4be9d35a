//! The write path: group commit, WAL, memtable rotation, and write stalls.
//!
//! Writers queue up; the writer at the front becomes the leader, takes every batch queued
//! behind it (up to a size cap), assigns one contiguous seqno range per batch, appends them
//! to the WAL, fsyncs once if any writer asked for sync, inserts them into the memtable and
//! only then publishes the new latest seqno — so a reader never sees part of a batch.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::batch::WriteBatch;
use crate::db::{wal_file, Inner, View, WalState};
use crate::error::{Error, Result};
use crate::load::BatchTally;
use crate::log::{LogKind, LogWriter};
use crate::memtable::MemTable;
use crate::stats::Counters;

/// Largest group a leader commits at once.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// What an optimistic transaction read: at commit, none of these keys may have a version
/// newer than the snapshot the transaction read at.
pub(crate) struct ReadSet {
    pub snapshot: u64,
    /// Sorted, each once.
    pub keys: Vec<Bytes>,
    /// Set for a large read set checked up to a mark before the commit (see `recent.rs`).
    pub checked: Option<CheckedToMark>,
}

/// A read set checked, outside the WAL lock, against every write up to `mark`; `hashes`
/// are its keys' hashes, to look up the writes made after the mark.
pub(crate) struct CheckedToMark {
    mark: crate::recent::Mark,
    hashes: HashSet<u64>,
}

/// What group commit learns about its writers, to size synced groups and to wait well.
///
/// On a machine with few cores, synced writers left to themselves fall into a cycle of
/// three small groups: the writers one leader acknowledges are still being woken when the
/// next leader takes the queue, and waking a sleeping thread (an inter-processor interrupt,
/// on a virtual machine a hypervisor exit) costs about as much as the fsync itself. So:
/// - a synced leader that has recently seen more writers at once than are queued waits
///   for three quarters of them to join (at most half an fsync, as PostgreSQL's
///   `commit_delay` waits when other transactions are active);
/// - a queued synced writer yields its core instead of sleeping while its wait is likely
///   to be short (about one fsync; see [`GroupCommit::yield_window`]), as RocksDB's write
///   thread does, and sleeps after that.
///
/// A lone writer never waits; yielding gives the core to any other runnable thread.
#[derive(Default)]
pub(crate) struct GroupCommit {
    /// Writers inside `commit` right now.
    inside: AtomicUsize,
    /// Recent peak of `inside`: decays by one per group, so it follows a shrinking load.
    peak: AtomicUsize,
    /// Writers in the queue (kept beside it so that a lingering leader can poll it
    /// without taking the queue lock).
    queued: AtomicUsize,
    /// Exponentially weighted mean of one WAL fsync, in microseconds.
    sync_us: AtomicU64,
}

/// Consecutive compaction failures after which a writer stopped by compaction debt or L0
/// gets an error instead of waiting on (the failures are retried with backoff: 0.2, 0.4,
/// 0.8 s).
pub(crate) const STALLED_COMPACTION_FAILURES: u32 = 3;

/// Longest a leader lingers for writers to join a synced group.
const MAX_LINGER: Duration = Duration::from_millis(1);
/// Longest a queued writer yields before it sleeps.
const MAX_YIELD: Duration = Duration::from_micros(250);

impl GroupCommit {
    fn enter(&self) -> InsideGuard<'_> {
        let n = self.inside.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        InsideGuard(self)
    }

    /// Writers inside `commit` now, and their recent peak.
    #[cfg(test)]
    pub(crate) fn committing(&self) -> (usize, usize) {
        (
            self.inside.load(Ordering::Relaxed),
            self.peak.load(Ordering::Relaxed),
        )
    }

    /// The number of writers a synced leader waits for: three quarters of the recent peak
    /// of writers at once (which decays by one per group).
    fn wanted(&self) -> usize {
        let now = self.inside.load(Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed);
        self.peak
            .store(now.max(peak.saturating_sub(1)), Ordering::Relaxed);
        peak - peak / 4
    }

    fn record_sync(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.sync_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.sync_us.store(new, Ordering::Relaxed);
    }

    fn fsync_time(&self) -> Duration {
        Duration::from_micros(self.sync_us.load(Ordering::Relaxed))
    }

    /// Yields (without the queue lock) until `wanted` writers are queued or `until`.
    fn linger(&self, wanted: usize, until: Instant) {
        while self.queued.load(Ordering::Acquire) < wanted && Instant::now() < until {
            std::thread::yield_now();
        }
    }

    /// How long a queued writer yields before sleeping: one and a half fsyncs for a synced
    /// writer (its group's fsync, and the handover), bounded by [`MAX_YIELD`]. An unsynced
    /// writer sleeps at once: its group commits in microseconds, and yielding threads would
    /// take cores from the leader and from compaction (measured: 4 unsynced writers on
    /// 2 cores lost 15% of their throughput to a 50 µs yield).
    fn yield_window(&self, sync: bool) -> Duration {
        if sync {
            (self.fsync_time() * 3 / 2).min(MAX_YIELD)
        } else {
            Duration::ZERO
        }
    }
}

struct InsideGuard<'a>(&'a GroupCommit);

impl Drop for InsideGuard<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a queued writer has to commit.
pub(crate) struct Writer {
    batch: Mutex<Option<WriteBatch>>,
    size: usize,
    ops: u64,
    sync: bool,
    validate: Option<ReadSet>,
    turn: Mutex<Turn>,
    /// Set once `turn` is no longer `Waiting`, for a writer that yields instead of sleeping.
    ready: AtomicBool,
    /// Woken (paired with `turn`) when this writer's group is done or it has become the
    /// leader. Each writer waits on its own lock and condvar, so waking a group does not
    /// make its writers queue up for the shared queue lock on their way out.
    cv: parking_lot::Condvar,
}

/// Where a queued writer stands.
enum Turn {
    Waiting,
    /// At the front of the queue: commit a group.
    Lead,
    /// Committed (or not) by a leader's group.
    Done(Result<u64>),
}

impl Writer {
    fn hand(&self, turn: Turn) {
        *self.turn.lock() = turn;
        self.ready.store(true, Ordering::Release);
        self.cv.notify_one();
    }

    /// Waits for a turn: yields the core for up to `window`, then sleeps.
    fn await_turn(&self, window: Duration) -> Turn {
        let start = Instant::now();
        while !self.ready.load(Ordering::Acquire) && start.elapsed() < window {
            std::thread::yield_now();
        }
        let mut t = self.turn.lock();
        loop {
            match std::mem::replace(&mut *t, Turn::Waiting) {
                Turn::Waiting => self.cv.wait(&mut t),
                turn => return turn,
            }
        }
    }
}

impl Inner {
    /// Commits one batch; returns the seqno of its last operation.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<u64> {
        self.commit(batch, sync, None)
    }

    /// Commits a batch, first checking (if given) that nothing the caller read changed.
    pub(crate) fn commit(
        &self,
        batch: WriteBatch,
        sync: bool,
        validate: Option<ReadSet>,
    ) -> Result<u64> {
        let mut admitted = crate::load::Admitted::default();
        let start = self.sampling.load(Ordering::Relaxed).then(Instant::now);
        let r = self.commit_inner(batch, sync, validate, &mut admitted);
        if let Some(start) = start {
            // Less the wait for a partition write limit: the caller's own limit on a hot
            // partition, which slowing migration down would not shorten (counted, it cut
            // the pacer's budget to its floor, and the controller's p99 trigger rolled
            // back the migration).
            self.fg_latency
                .record(start.elapsed().saturating_sub(admitted.waited));
        }
        if matches!(r, Err(Error::Conflict { .. })) {
            self.refund(&admitted);
        }
        r
    }

    /// `admitted`: set to what partition write limits made the batch wait and charged it.
    fn commit_inner(
        &self,
        batch: WriteBatch,
        sync: bool,
        validate: Option<ReadSet>,
        admitted: &mut crate::load::Admitted,
    ) -> Result<u64> {
        batch.validate()?;
        self.check_writable()?;
        if batch.is_empty() && validate.is_none() {
            // Nothing to write, but a synced write promises that every write acknowledged
            // before it is durable: an empty one is a barrier, as in RocksDB.
            if sync {
                self.sync_wal()?;
            }
            return Ok(self.latest());
        }
        self.throttle(batch.size_bytes())?;
        *admitted = self.admit(&batch)?;
        // Counted as committing only once through the stalls and the partition limits: a
        // synced leader waits for most of the writers counted, and would linger for ones
        // held back there.
        let _inside = self.group.enter();
        let validate = match validate {
            Some(rs) if rs.keys.len() >= crate::recent::TWO_STEP_MIN_KEYS => {
                let rs = self.check_to_mark(rs)?;
                #[cfg(test)]
                crate::test_hooks::reach(crate::test_hooks::Point::TransactionAfterMark);
                Some(rs)
            }
            v => v,
        };
        let w = Arc::new(Writer {
            size: batch.size_bytes(),
            ops: batch.len() as u64,
            batch: Mutex::new(Some(batch)),
            sync,
            validate,
            turn: Mutex::new(Turn::Waiting),
            ready: Default::default(),
            cv: parking_lot::Condvar::new(),
        });
        let leads_now = {
            let mut q = self.queue.lock();
            q.push_back(w.clone());
            self.group.queued.store(q.len(), Ordering::Release);
            // An empty queue has no leader to hand over to this writer: it leads.
            q.len() == 1
        };
        if !leads_now {
            if let Turn::Done(r) = w.await_turn(self.group.yield_window(sync)) {
                return r;
            }
        }
        // Leader: this writer is at the front of the queue.
        let wanted = self.group.wanted();
        if sync && wanted > 1 && self.group.queued.load(Ordering::Acquire) < wanted {
            // Writers of a synced group still on their way back: let most of them join.
            let until = Instant::now() + (self.group.fsync_time() / 2).min(MAX_LINGER);
            self.group.linger(wanted, until);
        }
        // Commit every writer queued so far, up to the cap.
        let q = self.queue.lock();
        let mut group = Vec::new();
        let mut bytes = 0;
        for x in q.iter() {
            if !group.is_empty() && bytes + x.size > MAX_GROUP_BYTES {
                break;
            }
            bytes += x.size;
            group.push(x.clone());
        }
        drop(q);
        #[cfg(test)]
        crate::test_hooks::reach(crate::test_hooks::Point::GroupFormed);
        let res = crate::util::catch_panic(|| self.commit_group(&group)).unwrap_or_else(|why| {
            // The group may be in the WAL, whole or torn, and in the memtable, or not:
            // trust the WAL no more, and tell every writer its outcome is unknown (the
            // queue below still moves on, or every later writer would wait for ever).
            self.wal_failed(format!("a commit panicked: {why}"));
            Err(Error::Background(format!(
                "a commit panicked ({why}): this write may or may not have been applied"
            )))
        });
        let next = {
            let mut q = self.queue.lock();
            for x in &group {
                let popped = q.pop_front();
                debug_assert!(popped.is_some_and(|p| Arc::ptr_eq(&p, x)));
            }
            self.group.queued.store(q.len(), Ordering::Release);
            q.front().cloned()
        };
        // The next leader first, so the next group's fsync starts while this group's
        // writers are still being woken.
        if let Some(next) = next {
            next.hand(Turn::Lead);
        }
        let mut results = match res {
            Ok(v) => v,
            Err(e) => group.iter().map(|_| Err(e.duplicate())).collect(),
        }
        .into_iter();
        let mut mine = Err(Error::Closed);
        for x in &group {
            // Every writer of the group must be answered, or it would wait for ever.
            let r = results.next().unwrap_or_else(|| {
                Err(Error::ReadOnly("internal: a writer got no outcome".into()))
            });
            if Arc::ptr_eq(x, &w) {
                mine = r;
            } else {
                x.hand(Turn::Done(r));
            }
        }
        mine
    }

    /// Writes a group to the WAL and memtable. Returns each writer's outcome: its last
    /// seqno, or a conflict for a transaction whose reads went stale. An error for the whole
    /// group means nothing of it was acknowledged.
    fn commit_group(&self, group: &[Arc<Writer>]) -> Result<Vec<Result<u64>>> {
        let mut wal = self.wal.lock();
        self.check_writable()?;
        let incoming: usize = group.iter().map(|w| w.size).sum();
        self.make_room(&mut wal, incoming)?;
        let view = self.view.load();
        let mut batches = Vec::with_capacity(group.len());
        let mut seq = wal.last_seqno + 1;
        let mut outcomes = Vec::with_capacity(group.len());
        let mut user_bytes = 0u64;
        let mut ops = 0u64;
        let mut sync = false;
        let wal_before = wal.log.len();
        let total: u64 = group.iter().map(|w| w.ops).sum();
        if seq + total > crate::types::MAX_SEQNO {
            return Err(Error::ReadOnly("sequence numbers exhausted".into()));
        }
        // Keys written by earlier batches of this group: newer than any snapshot a later
        // transaction in the group read at, and not in the memtable yet.
        let mut group_keys: Option<HashSet<Bytes>> = None;
        // From here until the WAL write, a failure belongs to one writer: earlier batches of
        // the group are already in the WAL buffer, and leaving the loop with an error would
        // fail them while their records stay buffered, to be written with the next group
        // (a write reported failed that comes back on reopen) or to clash with its seqnos.
        for w in group {
            let Some(b) = w.batch.lock().take() else {
                outcomes.push(Err(Error::ReadOnly("internal: batch taken twice".into())));
                continue;
            };
            if let Some(rs) = &w.validate {
                let keys = group_keys.get_or_insert_with(|| {
                    let mut set = HashSet::new();
                    for (_, prev) in &batches {
                        collect_keys(prev, &mut set);
                    }
                    set
                });
                let found = match &rs.checked {
                    Some(c) => self.conflict_after_mark(&view, rs, c, keys),
                    None => self.first_conflict(&view, rs, keys),
                };
                match found {
                    Ok(None) => {}
                    Ok(Some(k)) => {
                        outcomes.push(Err(Error::Conflict { key: k.to_vec() }));
                        continue;
                    }
                    // The transaction's own reads failed (an I/O error on a table): it is
                    // not written, and the rest of the group goes on.
                    Err(e) => {
                        outcomes.push(Err(e));
                        continue;
                    }
                }
            }
            // Validated, or no transaction: a synced write with nothing to write is still a
            // barrier (a transaction that only read commits what it read as durable).
            sync |= w.sync;
            if b.is_empty() {
                outcomes.push(Ok(seq - 1));
                continue;
            }
            if let Some(keys) = group_keys.as_mut() {
                collect_keys(&b, keys);
            }
            wal.log.add_with(|buf| b.encode_wal(seq, buf));
            outcomes.push(Ok(seq + b.len() as u64 - 1));
            user_bytes += b.size_bytes() as u64;
            ops += b.len() as u64;
            let first = seq;
            seq += b.len() as u64;
            batches.push((first, b));
        }
        let io = if sync {
            let start = Instant::now();
            let r = wal.sync();
            self.group.record_sync(start.elapsed());
            r
        } else if wal.log.buffered() >= self.opts.wal_buffer_bytes {
            wal.log.flush()
        } else {
            Ok(())
        };
        if let Err(e) = io {
            // The WAL may now hold a torn record, and the kernel may have dropped dirty pages
            // after a failed fsync: nothing more can be promised durable. Refuse all writes.
            self.wal_failed(format!("WAL write failed: {e}"));
            return Ok(in_doubt_outcomes(outcomes, in_doubt(e, wal.log.path())));
        }
        if sync {
            Counters::add(&self.counters.wal_syncs, 1);
        }
        Counters::add(&self.counters.wal_bytes, wal.log.len() - wal_before);
        Counters::add(&self.counters.user_bytes, user_bytes);
        Counters::add(&self.counters.writes, ops);
        let load = self.load.load();
        let shadow = self.shadow.load();
        // A large transaction checking its read set up to a mark needs the keys written
        // after it (see `recent.rs`).
        let mut written = self.recent.active().then(Vec::new);
        // Each batch's writes per partition, recorded as one commit (not one independent
        // operation per key) once the batch is applied.
        let mut tallies = (BatchTally::default(), BatchTally::default());
        for (first, b) in batches {
            let mut s = first;
            let applied =
                WriteBatch::for_each_op(b.ops_bytes(), wal.log.path(), 0, |kind, key, value| {
                    if let Some(l) = load.as_ref() {
                        l.tally_key(&mut tallies.0, key, key.len() + value.len());
                    }
                    if let Some(l) = shadow.as_ref() {
                        l.tally_key(&mut tallies.1, key, key.len() + value.len());
                    }
                    if let Some(w) = written.as_mut() {
                        w.push((s, crate::sst::bloom::key_hash(key)));
                    }
                    view.mem.insert(key, s, kind, value);
                    s += 1;
                });
            // Batches built through the API always decode. Should one not, the group's
            // records are in the WAL (buffered at least) and some of its entries in the
            // memtable, unpublished: failing the group and taking the next would hand out
            // its seqnos again (publishing these entries under another write's seqno, and
            // replaying both on reopen). So writes stop, as after a failed WAL write.
            if let Err(e) = applied {
                let why = format!("a batch failed to apply after its WAL write ({e})");
                self.wal_failed(why.clone());
                let e = Error::Background(format!(
                    "{why}: this write may or may not have been applied"
                ));
                return Ok(in_doubt_outcomes(outcomes, e));
            }
            if let Some(l) = load.as_ref() {
                l.record_batch(&mut tallies.0);
            }
            if let Some(l) = shadow.as_ref() {
                l.record_batch(&mut tallies.1);
            }
        }
        if let Some(w) = written {
            self.recent.record(w);
        }
        wal.last_seqno = seq - 1;
        self.visible.store(seq - 1, Ordering::Release);
        Ok(outcomes)
    }

    /// Checks a large read set against every write up to now, outside the WAL lock, and
    /// sets a mark first so the commit group need check only the writes made after it
    /// (see `recent.rs`). A conflict found here fails the commit at once.
    fn check_to_mark(&self, mut rs: ReadSet) -> Result<ReadSet> {
        debug_assert!(rs.keys.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
        let mark = {
            let wal = self.wal.lock();
            self.recent.mark(wal.last_seqno)
        };
        // Loaded after the mark: it holds every write up to it.
        let view = self.view.load();
        let mut hashes = HashSet::with_capacity(rs.keys.len());
        for k in &rs.keys {
            if crate::read::changed_since(&view, k, rs.snapshot)? {
                return Err(Error::Conflict { key: k.to_vec() });
            }
            hashes.insert(crate::sst::bloom::key_hash(k));
        }
        rs.checked = Some(CheckedToMark { mark, hashes });
        Ok(rs)
    }

    /// A key of `rs` (checked up to a mark: `c`) that a write after the mark changed:
    /// one of `earlier_keys`, written by the batches before it in this commit group, or
    /// one recorded since the mark. Recorded hashes only point at candidates; each is
    /// checked exactly.
    fn conflict_after_mark<'a>(
        &self,
        view: &View,
        rs: &'a ReadSet,
        c: &CheckedToMark,
        earlier_keys: &HashSet<Bytes>,
    ) -> Result<Option<&'a Bytes>> {
        let hits: HashSet<u64> = match self.recent.since(c.mark.seqno, &c.hashes) {
            crate::recent::Since::Matches(h) => h.into_iter().collect(),
            // The log gave up: check every key, as for a small read set.
            crate::recent::Since::Lost => return self.first_conflict(view, rs, earlier_keys),
        };
        for k in earlier_keys {
            if let Ok(i) = rs.keys.binary_search(k) {
                return Ok(Some(&rs.keys[i]));
            }
        }
        if hits.is_empty() {
            return Ok(None);
        }
        for k in &rs.keys {
            if hits.contains(&crate::sst::bloom::key_hash(k))
                && crate::read::changed_since(view, k, rs.snapshot)?
            {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The first key of a read set that changed after the transaction's snapshot.
    fn first_conflict<'a>(
        &self,
        view: &View,
        rs: &'a ReadSet,
        group_keys: &HashSet<Bytes>,
    ) -> Result<Option<&'a Bytes>> {
        for k in &rs.keys {
            if group_keys.contains(k) || crate::read::changed_since(view, k, rs.snapshot)? {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// Makes sure the memtable has room for `incoming` more bytes, rotating it (and waiting
    /// for a flush when too many frozen memtables are queued). A group larger than
    /// `memtable_bytes` goes into an empty memtable of its own, which it alone takes past
    /// the budget.
    fn make_room(&self, wal: &mut WalState, incoming: usize) -> Result<()> {
        loop {
            let view = self.view.load();
            let used = view.mem.approximate_bytes();
            if view.mem.is_empty() || used.saturating_add(incoming) <= self.opts.memtable_bytes {
                return Ok(());
            }
            if view.imm.len() >= self.opts.max_immutable_memtables {
                let _stop = self.counters.stops.begin(true);
                let mut core = self.core.lock();
                while self.view.load().imm.len() >= self.opts.max_immutable_memtables {
                    self.check_writable()?;
                    self.bg_cv.notify_all();
                    self.stall_cv
                        .wait_for(&mut core, Duration::from_millis(100));
                }
                continue;
            }
            self.rotate(wal)?;
        }
    }

    /// Freezes the memtable and starts a new WAL. The old WAL is written out before the new
    /// one is created, and fsynced in the background while writes go to the new one: the new
    /// WAL's first sync syncs it first, and recovery drops what follows an old WAL a crash
    /// cut short before that (no holes after a crash). Its last record names the new WAL,
    /// written only once the new WAL's directory entry is durable: recovery then knows the
    /// log goes on, and refuses to open when the newest WAL has gone missing rather than
    /// losing what it held.
    pub(crate) fn rotate(&self, wal: &mut WalState) -> Result<()> {
        if self.released.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // The old WAL's buffered records go to the OS before the new WAL exists: whoever
        // sees the new WAL in a listing (a read-only open of a live directory) reads the
        // old one whole, and a failure to create the new one loses none of them.
        if let Err(e) = wal.log.flush() {
            self.wal_failed(format!("WAL write at rotation failed: {e}"));
            return Err(e);
        }
        // The file I/O below runs outside the core lock: the wal lock held here already
        // keeps commits and checkpoints out, and the number is ours alone.
        let number = self.core.lock().new_file_number();
        let path = wal_file(&self.dir, number);
        // A rotation that fails before the new WAL holds anything (too many open files,
        // say) is given up: the old WAL goes on, whole, and a later write tries again. The
        // new file, if one was made, goes first: an empty WAL between written ones would
        // look like a hole to recovery. Only when it cannot be removed, or when a
        // directory fsync failed (the kernel may have dropped entries), writes stop.
        let give_up = |at: &std::path::Path, e: std::io::Error, why: &str| {
            match self.fs.exists(&path) {
                Ok(false) => {}
                Ok(true) if self.fs.remove(&path).is_ok() => {}
                _ => {
                    let e = Error::io(at, e);
                    self.wal_failed(format!("{why}: {e}"));
                    return e;
                }
            }
            Error::NotApplied {
                path: at.to_path_buf(),
                source: e,
            }
        };
        let file = match self.fs.create(&path) {
            Ok(f) => f,
            Err(e) => return Err(give_up(&path, e, "cannot create WAL")),
        };
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            if crate::fs::sync_not_attempted(&e) {
                drop(file);
                return Err(give_up(
                    &self.dir,
                    e,
                    "cannot sync the new WAL's directory entry",
                ));
            }
            let e = Error::io(&self.dir, e);
            self.wal_failed(format!(
                "cannot make the new WAL's directory entry durable: {e}"
            ));
            return Err(e);
        }
        wal.log
            .add_with(|buf| crate::batch::encode_wal_successor(number, buf));
        // The old WAL must be durable before the new one is: a crash must not keep writes of
        // the new WAL and lose earlier ones of the old (a hole). Fsyncing it here made every
        // writer wait for a memtable's worth of WAL (13-64 ms for 16 MiB, BENCHMARKS.md
        // §1); instead the new WAL's first sync (a synced write, a close) syncs the old one
        // first, the background syncer syncs it right away, a flush of its memtable syncs
        // it before writing the table, and recovery drops what follows an old WAL that a
        // crash cut short before that sync (see `replay_wals`).
        let mut log = LogWriter::new(file, path, LogKind::Wal);
        let r = match wal.log.shared_sync() {
            Some(old) if log.follow(old.clone()) => wal.log.flush().map(|()| {
                self.rotated_wals.lock().insert(wal.number, old.clone());
                self.wal_syncer.request(old);
            }),
            // A file system without sync handles: the old WAL is synced here, as before
            // format version 3 (its successor record is already buffered, so no record may
            // follow it: a plain sync, which syncs the WALs before it too).
            _ => wal.log.sync(),
        };
        if let Err(e) = r {
            self.wal_failed(format!("WAL write at rotation failed: {e}"));
            return Err(e);
        }
        let core = self.core.lock();
        wal.log = log;
        // Either way the new WAL records that the earlier ones are durable before its first
        // sync: recovery relies on that record, not on how this build synced them.
        wal.earlier_noted = false;
        self.sync_wal_in_background(&mut wal.log);
        wal.number = number;
        let mem = Arc::new(MemTable::new(number, self.opts.memtable_bytes));
        self.swap_view(&core, |v| {
            let mut imm = Vec::with_capacity(v.imm.len() + 1);
            imm.push(v.mem.clone());
            imm.extend(v.imm.iter().cloned());
            View {
                mem,
                imm,
                files: v.files.clone(),
            }
        });
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Slows writers down before stopping them: a rate limit when L0 or compaction debt
    /// passes its slowdown threshold, a stop (until compaction catches up) at the hard one.
    fn throttle(&self, bytes: usize) -> Result<()> {
        let o = &self.opts;
        let stop = |s: &Self| {
            s.l0_max.load(Ordering::Relaxed) >= o.level0_stop_trigger
                || s.pending_compaction.load(Ordering::Relaxed) >= o.pending_compaction_stop_bytes
        };
        if stop(self) {
            let _stop = self.counters.stops.begin(false);
            let mut core = self.core.lock();
            while stop(self) {
                self.check_writable()?;
                // The target's failures alone: its L0 and compaction debt are what stop
                // writes. A draining partition's count (migration jobs that failed, then
                // held by a paused migration) says nothing of the compactions this writer
                // waits for, and counted, it refused every writer a stop met.
                let target = self.view.load().files.target;
                let failures = core
                    .compaction_failures
                    .iter()
                    .filter(|((v, _), _)| *v == target)
                    .map(|(_, &n)| n)
                    .max()
                    .unwrap_or(0);
                if failures >= STALLED_COMPACTION_FAILURES {
                    // Waiting for compactions that keep failing (a full disk, a failing
                    // device) would hold the writer with no answer: it gets the reason,
                    // and may retry once they succeed again.
                    let why = self
                        .last_background_error
                        .lock()
                        .clone()
                        .unwrap_or_default();
                    return Err(Error::Background(format!(
                        "writes are stopped until compaction catches up, and compaction failed \
                         {failures} times in a row, the last time: {why}; this write was not \
                         applied"
                    )));
                }
                self.bg_cv.notify_all();
                self.stall_cv
                    .wait_for(&mut core, Duration::from_millis(100));
            }
            return Ok(());
        }
        let slow = self.l0_max.load(Ordering::Relaxed) >= o.level0_slowdown_trigger
            || self.pending_compaction.load(Ordering::Relaxed)
                >= o.pending_compaction_slowdown_bytes;
        if !slow {
            return Ok(());
        }
        // Token bucket: each write adds bytes / rate seconds of debt; sleep off debt beyond
        // a millisecond.
        let sleep = {
            let mut d = self.slowdown_debt.lock();
            let now = Instant::now();
            let elapsed = now.duration_since(d.0).as_secs_f64();
            d.0 = now;
            d.1 = (d.1 - elapsed).max(0.0) + bytes as f64 / o.slowdown_bytes_per_sec as f64;
            if d.1 > 0.001 {
                let s = d.1;
                d.1 = 0.0;
                Some(Duration::from_secs_f64(s.min(0.1)))
            } else {
                None
            }
        };
        if let Some(s) = sleep {
            std::thread::sleep(s);
            Counters::add(&self.counters.slowdowns, 1);
            Counters::add(&self.counters.slowdown_micros, s.as_micros() as u64);
        }
        Ok(())
    }

    /// Freezes a non-empty memtable and waits until no frozen memtable is left.
    pub fn flush_all(&self) -> Result<()> {
        self.check_writable()?;
        self.apply_moves();
        // The newest memtable this call must see flushed: frozen by it, or already frozen.
        // Memtables frozen later (a writer going on meanwhile) are not waited for: under a
        // steady write load "none frozen" may never come.
        let last = {
            let mut wal = self.wal.lock();
            if !self.view.load().mem.is_empty() {
                self.rotate(&mut wal)?;
            }
            self.view.load().imm.iter().map(|m| m.wal_number()).max()
        };
        let Some(last) = last else {
            return Ok(());
        };
        let mut core = self.core.lock();
        loop {
            if self.view.load().imm.iter().all(|m| m.wal_number() > last) {
                return Ok(());
            }
            self.check_writable()?;
            self.bg_cv.notify_all();
            self.stall_cv.wait_for(&mut core, Duration::from_millis(50));
        }
    }

    /// Freezes the active memtable (so that it is flushed) once it has been idle for
    /// `idle_memtable_flush_after` and scans have sought it as often as a table of its size
    /// may be (see [`MemTable::charge_seek`]).
    fn freeze_idle_memtable(&self) {
        let Some(idle_for) = self.opts.idle_memtable_flush_after else {
            return;
        };
        if self.read_only || self.failed.load(Ordering::Acquire) {
            return;
        }
        let view = self.view.load();
        let (wal_number, entries) = (view.mem.wal_number(), view.mem.len());
        let bytes = view.mem.approximate_bytes();
        {
            let mut seen = self.mem_idle.lock();
            if (seen.0, seen.1) != (wal_number, entries) {
                *seen = (wal_number, entries, Instant::now());
                self.write_idle.store(false, Ordering::Relaxed);
                return;
            }
            if seen.2.elapsed() < idle_for {
                return;
            }
        }
        // No write for `idle_for`: point reads start charging the runs they probe.
        self.write_idle.store(true, Ordering::Relaxed);
        let allowance = crate::version::seek_allowance(bytes as u64) as u64;
        if view.mem.is_empty() || !view.imm.is_empty() || view.mem.seeks() < allowance {
            return;
        }
        drop(view);
        let Some(mut wal) = self.wal.try_lock() else {
            return;
        };
        // Still unchanged now that writers are held off (they insert under the WAL lock).
        let view = self.view.load();
        if view.mem.wal_number() == wal_number && view.mem.len() == entries && view.imm.is_empty() {
            drop(view);
            // A failed rotation either marked the WAL failed itself (writers then see the
            // error) or changed nothing (`NotApplied`: the next idle check tries again).
            if self.rotate(&mut wal).is_ok() {
                Counters::add(&self.counters.idle_flushes, 1);
            }
        }
    }

    /// Makes the WAL `number` (rotated away from) durable, and the WALs before it: a flush
    /// does before it writes that WAL's memtable to a table, so that a table no manifest
    /// edit names yet never holds writes a power loss took from the WALs (recovery refuses
    /// such a table). Usually the background syncer has done it already.
    pub(crate) fn sync_rotated_wal(&self, number: u64) -> Result<()> {
        let Some(sync) = self.rotated_wals.lock().get(&number).cloned() else {
            return Ok(());
        };
        if let Err(e) = sync.sync() {
            self.wal_failed(format!("WAL sync before a flush failed: {e}"));
            return Err(e);
        }
        self.rotated_wals.lock().retain(|&n, _| n > number);
        Ok(())
    }

    /// Has the background syncer sync `log` as it grows, if `wal_bytes_per_sync` asks for it.
    pub(crate) fn sync_wal_in_background(&self, log: &mut LogWriter) {
        if self.opts.wal_bytes_per_sync > 0 && !self.read_only {
            log.sync_in_background(self.wal_syncer.clone(), self.opts.wal_bytes_per_sync);
        }
    }

    /// Hands buffered WAL bytes to the OS (called every `wal_flush_interval`).
    pub(crate) fn tick_wal(&self) {
        // Off the read path: hand back the pages of block slots the cache has no room for,
        // and make the copies lazy moves asked for.
        self.cache.sweep();
        self.recharge_memtables();
        self.apply_moves();
        if !self.wal_healthy.load(Ordering::Acquire) {
            return;
        }
        self.freeze_idle_memtable();
        if let Some(mut w) = self.wal.try_lock() {
            if w.log.buffered() > 0 {
                if let Err(e) = w.log.flush() {
                    // Under the WAL lock, as a commit does.
                    self.wal_failed(format!("WAL write failed: {e}"));
                    return;
                }
                w.last_flush = Instant::now();
            }
        }
    }
}

/// The error for writes whose records were handed to the WAL (its buffer, or the OS) before
/// making them durable failed: their outcome is unknown, and they must not read as refused.
/// `ReadOnly` tells a caller its write was refused and never applied; a sync that met an
/// earlier failure (the background syncer's, say) reports `ReadOnly`, which here becomes the
/// I/O error on the WAL that it is.
fn in_doubt(e: Error, wal: &std::path::Path) -> Error {
    match e {
        Error::ReadOnly(why) => Error::io(wal, std::io::Error::other(why)),
        e => e,
    }
}

/// The outcomes of a group that failed once its batches were in the WAL buffer (`e`): every
/// writer whose batch, or synced barrier, was in it gets `e`, its write in doubt; a
/// transaction refused before (a conflict, or its own reads failing) keeps that answer, as
/// nothing of it was written. A caller told "conflict" retries; one told "in doubt" has to
/// find out whether the write was applied.
fn in_doubt_outcomes(outcomes: Vec<Result<u64>>, e: Error) -> Vec<Result<u64>> {
    outcomes
        .into_iter()
        .map(|o| match o {
            Ok(_) => Err(e.duplicate()),
            refused => refused,
        })
        .collect()
}

fn collect_keys(b: &WriteBatch, set: &mut HashSet<Bytes>) {
    let _ = WriteBatch::for_each_op(
        b.ops_bytes(),
        std::path::Path::new("<batch>"),
        0,
        |_, k, _| {
            set.insert(Bytes::copy_from_slice(k));
        },
    );
}

impl WalState {
    /// Flushes and fsyncs the WAL, the WALs it follows first. Before its first sync a WAL
    /// that follows another records that every earlier WAL is durable (once they are):
    /// recovery then knows that damage at the end of an earlier WAL is not a crash cutting
    /// it short before its background sync, and that dropping what follows it could drop
    /// synced writes.
    pub(crate) fn sync(&mut self) -> Result<()> {
        if !self.earlier_noted {
            // What is buffered goes to the OS whatever the earlier WALs' fate, as a plain
            // sync's flush would.
            self.log.flush()?;
            self.log.sync_predecessors()?;
            self.log.add_with(crate::batch::encode_wal_earlier_durable);
            self.earlier_noted = true;
        }
        self.log.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch that fails to apply after its WAL write (an encoding bug: none built through
    /// the API does) stops writes: the next write does not get its seqnos, so the entries it
    /// left in the memtable stay unpublished rather than surfacing under another write's
    /// seqno. The close reports the failure; the reopen has the synced write before it and
    /// nothing of the failed batch or after it.
    #[test]
    fn a_batch_that_fails_after_its_wal_write_stops_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        let mut a = WriteBatch::new();
        a.put("a", "1");
        db.write_opt(a, &crate::WriteOptions { sync: true })
            .unwrap();
        let mut b = WriteBatch::new();
        b.put("b", "2");
        b.push_undecodable_op();
        let e = db.write(b).unwrap_err();
        assert!(e.to_string().contains("bad batch op kind"), "{e}");
        assert_eq!(db.get("b").unwrap(), None, "the batch is not published");
        let e = db.put("c", "3").unwrap_err();
        assert!(e.to_string().contains("failed to apply"), "{e}");
        assert_eq!(db.get("b").unwrap(), None);
        assert_eq!(db.get("c").unwrap(), None);
        assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        assert!(db.close().is_err(), "the close reports the failure");
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.get("b").unwrap(), None);
        assert_eq!(db.get("c").unwrap(), None);
    }

    /// A transaction refused for a conflict in a group that then fails (a synced write of
    /// the group whose WAL fsync fails, or a batch of the group that fails after its WAL
    /// write) is told "conflict": it was not written, and its caller may retry. Told that
    /// its write is in doubt, a ledger would have to go and find out. The other writer of
    /// the group is told of the failure.
    #[test]
    fn a_conflict_in_a_group_that_fails_stays_a_conflict() {
        for failing_sync in [true, false] {
            let (_dir, fs, db) = on_a_fault_fs();
            db.put("k", "0").unwrap();
            let mut t = db.transaction();
            t.get("k").unwrap();
            t.put("out", "1");
            db.put("k", "1").unwrap();
            let queued = |n: usize| {
                let deadline = Instant::now() + Duration::from_secs(30);
                while db.inner.group.queued.load(Ordering::Acquire) < n {
                    assert!(Instant::now() < deadline, "{n} writers never queued");
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            // A first group (one put) waits for the WAL lock; behind it queue the failing
            // write and then the transaction, which the next group takes together.
            let wal = db.inner.wal.lock();
            let (formed, first_formed) = std::sync::mpsc::channel();
            let d = db.clone();
            let first = std::thread::spawn(move || {
                crate::test_hooks::set(crate::test_hooks::Point::GroupFormed, move || {
                    formed.send(()).unwrap()
                });
                d.put("x", "1")
            });
            first_formed.recv().unwrap();
            let d = db.clone();
            let failing = std::thread::spawn(move || {
                let mut b = WriteBatch::new();
                b.put("b", "2");
                if !failing_sync {
                    b.push_undecodable_op();
                }
                d.write_opt(b, &crate::WriteOptions { sync: failing_sync })
            });
            queued(2);
            let txn = std::thread::spawn(move || t.commit());
            queued(3);
            if failing_sync {
                fs.inject(crate::fs::Fault {
                    op: crate::fs::FsOp::Sync,
                    path_contains: Some(".log".into()),
                    kind: crate::fs::FaultKind::Io,
                    skip: 0,
                    sticky: true,
                });
            }
            drop(wal);
            first.join().unwrap().unwrap();
            let e = failing.join().unwrap().unwrap_err();
            let why = if failing_sync {
                "os error 5"
            } else {
                "bad batch op kind"
            };
            assert!(e.to_string().contains(why), "{e}");
            match txn.join().unwrap() {
                Err(Error::Conflict { key }) => assert_eq!(key, b"k"),
                other => panic!("sync {failing_sync}: expected a conflict on k: {other:?}"),
            }
        }
    }

    /// A large transaction (its read set checked up to a mark before it queues) committed
    /// in the same group as, and after, a write to a key it read: that write is in neither
    /// the memtable nor the log of recent writes when the group validates the transaction,
    /// only in the group's earlier batches, which must be checked. Committed, the
    /// transaction would overwrite a value it never saw (a lost update).
    #[test]
    fn a_large_transaction_after_a_write_to_its_read_set_in_its_group_conflicts() {
        const { assert!(crate::recent::TWO_STEP_MIN_KEYS <= 100) };
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        let key = |i: u32| format!("k{i:05}");
        for i in 0..100 {
            db.put(key(i), "0").unwrap();
        }
        let mut t = db.transaction();
        for i in 0..100 {
            t.get(key(i)).unwrap();
        }
        t.put("out", "1");
        let queued = |db: &crate::Db, n: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while db.inner.group.queued.load(Ordering::Acquire) < n {
                assert!(Instant::now() < deadline, "{n} writers never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // A first group (one put) holds on once formed until a write to a key read and then
        // the transaction queue behind it: the next group takes the two, in that order.
        let (formed, first_formed) = std::sync::mpsc::channel();
        let d = db.clone();
        let first = std::thread::spawn(move || {
            let held = d.clone();
            crate::test_hooks::set(crate::test_hooks::Point::GroupFormed, move || {
                formed.send(()).unwrap();
                queued(&held, 3);
            });
            d.put("x", "1")
        });
        first_formed.recv().unwrap();
        let d = db.clone();
        let write = std::thread::spawn(move || d.put(key(42), "1"));
        queued(&db, 2);
        let txn = std::thread::spawn(move || t.commit());
        first.join().unwrap().unwrap();
        write.join().unwrap().unwrap();
        match txn.join().unwrap() {
            Err(Error::Conflict { key: k }) => assert_eq!(k, key(42).as_bytes()),
            other => panic!("expected a conflict on {}: {other:?}", key(42)),
        }
        assert_eq!(db.get("out").unwrap(), None);
        assert_eq!(db.get(key(42)).unwrap().as_deref(), Some(&b"1"[..]));
    }

    /// Waits for `f` on another thread, failing the test if it never returns (a hang).
    fn answers<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let t = std::thread::spawn(f);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "{what}: no answer (a hang)");
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().unwrap()
    }

    /// A panic in a background job (here the flush writing its table) used to leave the
    /// flush booked as running for ever: writers then waited for room no flush would make,
    /// and `flush()` waited too, with no error. Now writes stop with the panic as the
    /// reason, every waiter gets it, close returns, and a reopen replays what was written.
    #[test]
    fn a_panic_in_a_background_job_stops_writes_instead_of_hanging_them() {
        let (dir, fs, db) = on_a_fault_fs();
        db.put("k", "v").unwrap();
        panic_on_append(&fs, ".sst", true);
        let d = db.clone();
        let e = answers("flush", move || d.flush()).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        let d = db.clone();
        refused_for_the_panic(answers("put after", move || d.put("k2", "v")));
        closes_and_reopens_with(db, &fs, dir.path(), "k");
    }

    /// After each background job its worker retires drained layouts, under the core lock.
    /// A panic there (here in the manifest write of the retirement, after the flush's own
    /// edit) stops writes with the reason, instead of taking the worker down with writers
    /// left waiting for it.
    #[test]
    fn a_panic_retiring_drained_layouts_stops_writes_instead_of_hanging_them() {
        let (dir, fs, db) = on_a_fault_fs();
        // v1 drains empty, and nothing retires it until a background job finishes.
        let v2 = db
            .register_partition_fn(crate::PartitionSpec::Hash {
                partitions: 4,
                seed: 7,
                hashed_prefix: None,
            })
            .unwrap();
        db.set_target(v2).unwrap();
        assert_eq!(db.layout().versions.len(), 2);
        db.put("k", "v").unwrap();
        fs.inject(crate::fs::Fault {
            op: crate::fs::FsOp::Append,
            path_contains: Some("MANIFEST".into()),
            kind: crate::fs::FaultKind::Panic,
            skip: 1,
            sticky: false,
        });
        let d = db.clone();
        answers("flush", move || d.flush()).unwrap();
        // The flush is answered once installed; its worker retires v1 just after.
        let d = db.clone();
        let e = answers("puts after", move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match d.put("k2", "v") {
                    Err(e) => return e,
                    Ok(()) if Instant::now() > deadline => panic!("writes never stopped"),
                    Ok(()) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        assert_eq!(fs.injected(), 1, "the retirement's edit panicked");
        assert!(
            matches!(&e, Error::ReadOnly(m) if m.contains("retiring drained layouts panicked")),
            "{e}"
        );
        closes_and_reopens_with(db, &fs, dir.path(), "k");
    }

    /// A panic in the commit leader (here in its WAL write) used to leave it at the front
    /// of the queue: its followers and every later writer waited for ever. Now the group
    /// is told its outcome is unknown, the queue moves on, later writers are refused with
    /// the reason, and close returns.
    #[test]
    fn a_panic_in_the_commit_leader_answers_every_writer() {
        let (dir, fs, db) = on_a_fault_fs();
        let synced = crate::WriteOptions { sync: true };
        db.write_opt(batch("before"), &synced).unwrap();
        panic_on_append(&fs, ".log", false);
        let d = db.clone();
        let e = answers("the panicking commit", move || {
            d.write_opt(batch("during"), &crate::WriteOptions { sync: true })
        })
        .unwrap_err();
        assert!(e.to_string().contains("may or may not"), "{e}");
        assert_eq!(fs.injected(), 1);
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let d = db.clone();
                std::thread::spawn(move || d.put(format!("after{i}"), "v"))
            })
            .collect();
        for w in writers {
            refused_for_the_panic(answers("a later writer", move || w.join().unwrap()));
        }
        closes_and_reopens_with(db, &fs, dir.path(), "before");
    }

    fn refused_for_the_panic(r: Result<()>) {
        let e = r.unwrap_err();
        assert!(
            matches!(&e, Error::ReadOnly(m) if m.contains("panicked")),
            "{e}"
        );
    }

    /// Closes `db` (which must answer), clears the faults, reopens: `key` is there.
    fn closes_and_reopens_with(
        db: crate::Db,
        fs: &crate::fs::FaultFs,
        dir: &std::path::Path,
        key: &str,
    ) {
        answers("close", move || db.close()).ok();
        fs.clear();
        let db = crate::Db::open(dir, crate::Options::default()).unwrap();
        assert_eq!(db.get(key).unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// A database on a fault-injecting file system (no idle flushes: the tests flush).
    fn on_a_fault_fs() -> (tempfile::TempDir, crate::fs::FaultFs, crate::Db) {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::FaultFs::new();
        let opts = crate::Options {
            fs: Arc::new(fs.clone()),
            idle_memtable_flush_after: None,
            ..crate::Options::default()
        };
        let db = crate::Db::open(dir.path(), opts).unwrap();
        (dir, fs, db)
    }

    /// The next append to a file whose name holds `path` panics (and every one after, if
    /// `sticky`).
    fn panic_on_append(fs: &crate::fs::FaultFs, path: &str, sticky: bool) {
        use crate::fs::{Fault, FaultKind, FsOp};
        fs.inject(Fault::on(FsOp::Append, FaultKind::Panic, path, sticky));
    }

    fn batch(key: &str) -> crate::WriteBatch {
        let mut b = crate::WriteBatch::new();
        b.put(key, "v");
        b
    }

    /// A writer stopped at the L0 stop trigger while every compaction fails (here each
    /// read of one input table: a failing device) gets an error naming the failure, and
    /// the write is not applied. It used to wait for ever. Once compactions succeed again,
    /// writes go through.
    #[test]
    fn a_writer_stopped_while_compactions_keep_failing_gets_the_reason() {
        use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = crate::Options {
            fs: Arc::new(fs.clone()),
            level0_compaction_trigger: 2,
            level0_slowdown_trigger: 2,
            level0_stop_trigger: 3,
            idle_memtable_flush_after: None,
            ..crate::Options::tiny()
        };
        let db = crate::Db::open(dir.path(), opts).unwrap();
        // One table every L0 compaction must read (it spans every key written after it),
        // and that no flush touches (they make new names): its reads fail from now on.
        db.put("a", "v").unwrap();
        db.put("z", "v").unwrap();
        db.flush().unwrap();
        let first = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.ends_with(".sst"))
            .unwrap();
        fs.inject(Fault::on(FsOp::Read, FaultKind::Io, &first, true));
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..100u32 {
                    if let Err(e) = db.put(format!("k{i:03}"), "v").and_then(|()| db.flush()) {
                        return Some((i, e));
                    }
                }
                None
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !writer.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the stopped writer never got an answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (i, e) = writer
            .join()
            .unwrap()
            .expect("writes stopped at three L0 files");
        assert!(
            matches!(&e, Error::Background(m) if m.contains("not applied")),
            "{e}"
        );
        assert!(fs.injected() >= STALLED_COMPACTION_FAILURES as u64);
        fs.clear();
        assert_eq!(
            db.get(format!("k{i:03}")).unwrap(),
            None,
            "the refused write"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = db.put("after", "v") {
            assert!(Instant::now() < deadline, "writes never resumed: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(db.get("after").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// Failures of a migration that was then paused say nothing of the compactions a
    /// stopped writer waits for. A draining partition whose migration jobs failed three
    /// times (an unreadable file, since readable again) keeps its count while migration is
    /// held; a writer stopped at the target's L0 stop trigger, whose compaction is merely
    /// slow and never failed, must wait for it, not get "compaction failed 3 times in a
    /// row" and have its write refused. (Every writer meeting a stop was refused for as
    /// long as the migration stayed paused.)
    #[test]
    fn a_paused_migration_s_old_failures_do_not_refuse_a_stopped_writer() {
        a_stopped_writer_after_failed_migration_jobs(false);
    }

    /// The same through a rollback: the layout whose migration jobs failed is the target
    /// again. Its count came from migration jobs, not from its compactions as the target;
    /// it was keyed by layout and partition alone, and counted once the layout was the
    /// target again.
    #[test]
    fn failed_migration_jobs_do_not_refuse_a_stopped_writer_after_a_rollback() {
        a_stopped_writer_after_failed_migration_jobs(true);
    }

    /// v1's migration jobs fail three times (its one table unreadable), then the migration
    /// is held (`rollback` false) or rolled back (true) and the table is readable again; a
    /// writer then stops behind the target's slow (never failing) compactions, and must be
    /// served once they finish.
    fn a_stopped_writer_after_failed_migration_jobs(rollback: bool) {
        use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = crate::Options {
            fs: Arc::new(fs.clone()),
            level0_compaction_trigger: 2,
            level0_slowdown_trigger: 2,
            level0_stop_trigger: 3,
            idle_memtable_flush_after: None,
            migration_bytes_per_sec: 1 << 30,
            migration_disk_headroom_bytes: 0,
            ..crate::Options::tiny()
        };
        let db = crate::Db::open(dir.path(), opts).unwrap();
        db.put("a", "v").unwrap();
        db.put("z", "v").unwrap();
        db.flush().unwrap();
        let old = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.ends_with(".sst"))
            .unwrap();
        // Every migration job of v1 fails reading its one table.
        fs.inject(Fault::on(FsOp::Read, FaultKind::Io, &old, true));
        let v1 = db.layout().target;
        let v2 = db
            .register_partition_fn(crate::PartitionSpec::hashed(2, 7))
            .unwrap();
        db.set_target(v2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while db
            .inner
            .core
            .lock()
            .compaction_failures
            .get(&(v1.0, 0))
            .is_none_or(|&n| n < STALLED_COMPACTION_FAILURES)
        {
            assert!(
                Instant::now() < deadline,
                "migration never failed three times: {:?} {:?}",
                db.inner.core.lock().compaction_failures,
                db.migration_progress()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if rollback {
            db.set_target(v1).unwrap();
        } else {
            db.hold_migration(true).unwrap();
        }
        fs.clear();
        // The target's compactions now finish slowly (their fsyncs are held a while),
        // and never fail.
        fs.hold_syncs(".sst", "sluice-bg");
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..8u32 {
                    db.put(format!("k{i:03}"), "v").and_then(|()| db.flush())?;
                }
                Ok::<(), Error>(())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.stats().stalls == 0 && !writer.is_finished() {
            assert!(Instant::now() < deadline, "the writer never stopped");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        fs.release_held();
        let r = writer.join().unwrap();
        assert!(
            r.is_ok(),
            "a writer stopped behind a slow compaction that never failed: {r:?}"
        );
    }

    /// A writer's stop is booked while it lasts: statistics read during a long stop show
    /// it counted and growing. It used to be booked only when it ended, so a per-second
    /// timeline showed a stop of many seconds as none, then all of it in one second.
    #[test]
    fn a_stop_in_progress_shows_in_the_statistics() {
        use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = crate::Options {
            fs: Arc::new(fs.clone()),
            memtable_bytes: 64 << 10,
            max_immutable_memtables: 1,
            flush_retries: 100_000,
            flush_retry_interval: Duration::from_millis(5),
            idle_memtable_flush_after: None,
            ..crate::Options::default()
        };
        let db = crate::Db::open(dir.path(), opts).unwrap();
        // Flushes fail (and are retried) until the fault is cleared: the writer stops.
        fs.inject(Fault::on(FsOp::Create, FaultKind::NoSpace, ".sst", true));
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (db, done) = (db.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..4000u32 {
                    db.put(format!("k{i:05}"), [7u8; 100]).unwrap();
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.stats().stalls == 0 {
            assert!(Instant::now() < deadline, "the writer never stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        let a = db.stats();
        std::thread::sleep(Duration::from_millis(50));
        let b = db.stats();
        assert!(!done.load(Ordering::SeqCst), "the writer was not stopped");
        assert_eq!((a.stalls, a.memtable_stalls), (1, 1));
        assert!(
            b.stall_micros > a.stall_micros,
            "{} -> {}",
            a.stall_micros,
            b.stall_micros
        );
        assert_eq!(b.memtable_stall_micros, b.stall_micros);
        fs.clear();
        writer.join().unwrap();
        let c = db.stats();
        assert!(c.stall_micros >= b.stall_micros && c.stalls >= 1);
        assert_eq!(db.get("k03999").unwrap().as_deref(), Some(&[7u8; 100][..]));
    }

    /// Failures counted against a layout that retires go with it: a count left behind
    /// would refuse writers stopped for compaction though no compaction is failing.
    #[test]
    fn compaction_failures_of_a_retired_layout_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options {
            migration_bytes_per_sec: 0,
            idle_memtable_flush_after: None,
            ..crate::Options::default()
        };
        let db = crate::Db::open(dir.path(), opts).unwrap();
        db.put("a", "v").unwrap();
        db.flush().unwrap();
        let v2 = db
            .register_partition_fn(crate::PartitionSpec::hashed(4, 1))
            .unwrap();
        db.set_target(v2).unwrap();
        db.inner
            .core
            .lock()
            .compaction_failures
            .insert((1, 0), STALLED_COMPACTION_FAILURES);
        db.migrate_now(None).unwrap();
        assert!(db.layout().retired.contains(&crate::VersionId(1)));
        assert!(db.inner.core.lock().compaction_failures.is_empty());
    }

    /// A manual compaction's failure is its caller's to see, at once: failing ones (here
    /// each read of their input fails) do not count towards refusing stalled writers,
    /// which only automatic compactions failing in a row do.
    #[test]
    fn manual_compaction_failures_do_not_count_against_writers() {
        use crate::fs::{Fault, FaultFs, FaultKind, FsOp};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = crate::Options {
            fs: Arc::new(fs.clone()),
            idle_memtable_flush_after: None,
            ..crate::Options::default()
        };
        let db = crate::Db::open(dir.path(), opts).unwrap();
        db.put("a", "v").unwrap();
        db.flush().unwrap();
        fs.inject(Fault::on(FsOp::Read, FaultKind::Io, ".sst", true));
        for _ in 0..2 * STALLED_COMPACTION_FAILURES {
            assert!(db.compact().is_err());
        }
        assert!(fs.injected() >= 2 * STALLED_COMPACTION_FAILURES as u64);
        assert!(db.inner.core.lock().compaction_failures.is_empty());
        fs.clear();
        db.compact().unwrap();
        assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// A synced batch whose sync met an earlier background failure came back as
    /// `ReadOnly`, though its record had reached the WAL and was there after the reopen
    /// (randomized fault injection, stop 29): a caller reading `ReadOnly` as "refused, not
    /// applied" would retry it. Such an error is the I/O error on the WAL it is; other
    /// errors keep their kind (a full disk stays `is_no_space`).
    #[test]
    fn a_write_whose_sync_failed_is_in_doubt_not_refused() {
        let wal = std::path::Path::new("/d/000007.log");
        let e = in_doubt(
            Error::ReadOnly("000007.log is not synced again after an earlier failure".into()),
            wal,
        );
        assert!(matches!(&e, Error::Io { path, .. } if path == wal), "{e:?}");
        assert!(e.to_string().contains("not synced again"), "{e}");
        let full = in_doubt(Error::io(wal, std::io::Error::from_raw_os_error(28)), wal);
        assert!(full.is_no_space(), "{full:?}");
    }
}
