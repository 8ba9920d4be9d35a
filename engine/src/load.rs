//! Per-partition traffic: load counters for the target layout and for a shadowed candidate
//! function (hot partitions show up before they exist), and write admission control for a
//! partition that is hot right now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::batch::WriteBatch;
use crate::db::{Inner, VersionId};
use crate::error::{Error, Result};
use crate::layout::{PartitionFn, PartitionSpec};
use crate::stats::Counters;

/// Reads and writes per partition under one partition function.
pub(crate) struct PartitionLoad {
    pub version: Option<u32>,
    pub func: Arc<PartitionFn>,
    /// Point reads outside a transaction: each an event of one key, counted with one add
    /// (a plain `get` pays no more for it).
    single_reads: Box<[AtomicU64]>,
    /// Keys read in events of their own (a transaction's, a scan's), their events (one per
    /// partition an event read from), the square and the maximum of their keys: the
    /// write figures' counterparts (see [`Self::record_reads`]).
    grouped_reads: Box<[AtomicU64]>,
    read_groups: Box<[AtomicU64]>,
    group_keys_sq: Box<[AtomicU64]>,
    group_keys_max: Box<[AtomicU64]>,
    writes: Box<[AtomicU64]>,
    write_bytes: Box<[AtomicU64]>,
    write_commits: Box<[AtomicU64]>,
    commit_keys_sq: Box<[AtomicU64]>,
    commit_keys_max: Box<[AtomicU64]>,
    since: Instant,
}

/// One event's keys per partition of one function, gathered key by key and recorded at
/// once: a committed batch's writes ([`PartitionLoad::record_batch`]), or a transaction's
/// or a scan's reads ([`ReadTally`]). A commit's tally is made under the WAL lock for
/// every commit group, so it costs a put or a small batch no allocation, and a large one
/// over many partitions no sort: up to [`FEW_PARTITIONS`] partitions are kept inline, one
/// entry each; an event over more counts per partition in an array.
#[derive(Default)]
pub(crate) struct BatchTally {
    /// (partition, keys, bytes), one entry per partition, while there are few.
    few: smallvec::SmallVec<[(u32, u64, u64); FEW_PARTITIONS]>,
    /// (keys, bytes) by partition, once the event touched more than `few` holds.
    many: Vec<(u64, u64)>,
}

/// Partitions a [`BatchTally`] keeps inline.
const FEW_PARTITIONS: usize = 16;

impl BatchTally {
    /// (partition, keys, bytes) of every partition the event touched.
    fn entries(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let many = self
            .many
            .iter()
            .enumerate()
            .filter(|(_, e)| e.0 > 0)
            .map(|(p, &(keys, bytes))| (p, keys, bytes));
        let few = self
            .few
            .iter()
            .map(|&(p, keys, bytes)| (p as usize, keys, bytes));
        few.chain(many)
    }

    fn clear(&mut self) {
        self.few.clear();
        self.many = Vec::new();
    }
}

/// The reads of one transaction or one scan, tallied per partition of the functions
/// counting when it began (the target's and a shadowed candidate's) and recorded into
/// them as one event per partition ([`PartitionLoad::record_reads`]): explicitly when it
/// ends, or when it is dropped. Its keys are not independent readers: a transaction
/// reading 200 keys of a partition, or a scan yielding them, is one reader there.
///
/// The functions are held, not looked up at the end: a retarget in between replaces the
/// target's counters with another function's (of another number of partitions), and the
/// reads, made under the old one, are recorded into the old one's (no longer shown).
/// Nothing is allocated until a key is read.
///
/// A scan does not look every key up: it samples one in [`SCAN_SAMPLE`] (see
/// [`ReadTally::skip_scanned`]).
#[derive(Default)]
pub(crate) struct ReadTally {
    loads: [Option<Arc<PartitionLoad>>; 2],
    tallies: Option<Box<[BatchTally; 2]>>,
    /// Keys a scan yielded.
    scanned: u64,
    /// Of those, the keys counted: the rest, since its last sampled key, count where that
    /// one fell (`sampled`).
    settled: u64,
    /// The partition, under each function, of the scan's last sampled key.
    sampled: Option<[u32; 2]>,
}

/// A scan looks up the partition of one key in this many (the first, then every
/// sixteenth) and counts the keys after it, up to the next one it looks up, in the same
/// partition. Looking every key up cost a seek and 100 steps over cached blocks 12–32%
/// (criterion `db_iterator`, BENCHMARKS.md §6). The total is exact, and so are the
/// figures of a scan within one partition (a prefix scan of a range layout, or of a
/// prefix-hashed one); a scan that crosses into another partition counts at most
/// `SCAN_SAMPLE - 1` of its keys in the partition before. Under a hash function a scan's keys fall all over, and its
/// samples spread it alike: the test for hot partitions looks for concentration, which
/// sampling keeps.
pub(crate) const SCAN_SAMPLE: u32 = 16;
// `ReadTally::skip_scanned` samples where the count is 1 past a multiple: at 1 it never
// would.
const _: () = assert!(SCAN_SAMPLE > 1);

impl ReadTally {
    /// Adds a key a transaction read.
    pub fn tally(&mut self, key: &[u8]) {
        let Some(tallies) = tallies_of(&self.loads, &mut self.tallies) else {
            return;
        };
        for (l, t) in self.loads.iter().zip(tallies.iter_mut()) {
            if let Some(l) = l {
                l.tally_key(t, key, 0);
            }
        }
    }

    /// Counts a key a scan yielded without looking at it, unless it is one to sample
    /// (false: the caller passes it to [`Self::sample_scanned`]). Inlined into the
    /// iterator's step, which is inlined into the caller's loop: it must stay this small.
    #[inline]
    pub fn skip_scanned(&mut self) -> bool {
        self.scanned += 1;
        self.scanned % SCAN_SAMPLE as u64 != 1
    }

    /// Counts a scan's sampled key, and the keys carried since the last sample, where the
    /// last sample fell (see [`SCAN_SAMPLE`]). While the samples fall in one partition
    /// (under each function) nothing is tallied: the scan's keys are recorded there at its
    /// end, with no tally made.
    #[inline(never)]
    pub fn sample_scanned(&mut self, key: &[u8]) {
        let mut at = [0u32; 2];
        for (a, l) in at.iter_mut().zip(&self.loads) {
            if let Some(l) = l {
                *a = l.func.partition_of(key);
            }
        }
        match self.sampled {
            Some(before) if before != at => self.settle(before, self.scanned - 1),
            _ => {}
        }
        self.sampled = Some(at);
    }

    /// Tallies the keys after the `settled`th scanned, up to the `upto`th, in the
    /// partitions `at` (a sample's).
    fn settle(&mut self, at: [u32; 2], upto: u64) {
        let carried = upto - self.settled;
        self.settled = upto;
        if carried == 0 {
            return;
        }
        let Some(tallies) = tallies_of(&self.loads, &mut self.tallies) else {
            return;
        };
        for ((l, t), &p) in self.loads.iter().zip(tallies.iter_mut()).zip(&at) {
            if let Some(l) = l {
                l.tally_in(t, p, carried, 0);
            }
        }
    }

    /// Records the keys read so far as one event per partition, and starts afresh. Cold:
    /// once per scan, at its end, kept out of the iterator's step.
    #[cold]
    pub fn record(&mut self) {
        if let Some(at) = self.sampled.take() {
            let keys = self.scanned - self.settled;
            if self.tallies.is_none() {
                // A scan within one partition: one event there, no tally made.
                for (l, &p) in self.loads.iter().zip(&at) {
                    if let (Some(l), true) = (l, keys > 0) {
                        l.record_read_event(p as usize, keys);
                    }
                }
            } else {
                self.settle(at, self.scanned);
            }
        }
        (self.scanned, self.settled) = (0, 0);
        let Some(tallies) = self.tallies.as_mut() else {
            return;
        };
        for (l, t) in self.loads.iter().zip(tallies.iter_mut()) {
            if let Some(l) = l {
                l.record_reads(t);
            }
        }
    }
}

/// `loads`' tallies, made at the first key; `None` if nothing counts.
fn tallies_of<'a>(
    loads: &[Option<Arc<PartitionLoad>>; 2],
    tallies: &'a mut Option<Box<[BatchTally; 2]>>,
) -> Option<&'a mut [BatchTally; 2]> {
    if loads.iter().all(Option::is_none) {
        return None;
    }
    Some(tallies.get_or_insert_with(Default::default))
}

impl Drop for ReadTally {
    /// A transaction dropped without a commit, or a scan dropped before its end: its
    /// reads were made all the same.
    fn drop(&mut self) {
        self.record();
    }
}

impl PartitionLoad {
    pub fn new(version: Option<u32>, func: Arc<PartitionFn>) -> PartitionLoad {
        let n = func.partitions() as usize;
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        PartitionLoad {
            version,
            func,
            single_reads: zeros(),
            grouped_reads: zeros(),
            read_groups: zeros(),
            group_keys_sq: zeros(),
            group_keys_max: zeros(),
            writes: zeros(),
            write_bytes: zeros(),
            write_commits: zeros(),
            commit_keys_sq: zeros(),
            commit_keys_max: zeros(),
            since: Instant::now(),
        }
    }

    /// Adds a key of an event (a batch being committed, a transaction's or a scan's read)
    /// to `tally`, with the bytes it wrote (see [`Self::record_batch`], [`ReadTally`]).
    #[inline]
    pub fn tally_key(&self, tally: &mut BatchTally, key: &[u8], bytes: usize) {
        self.tally_in(tally, self.func.partition_of(key), 1, bytes as u64);
    }

    /// Adds `keys` keys and `bytes` bytes of an event in partition `p` to `tally`.
    #[inline]
    fn tally_in(&self, tally: &mut BatchTally, p: u32, keys: u64, bytes: u64) {
        if let Some(e) = tally.many.get_mut(p as usize) {
            e.0 += keys;
            e.1 += bytes;
        } else if let Some(e) = tally.few.iter_mut().find(|e| e.0 == p) {
            e.1 += keys;
            e.2 += bytes;
        } else if tally.few.len() < FEW_PARTITIONS {
            tally.few.push((p, keys, bytes));
        } else {
            tally.many = vec![(0, 0); self.writes.len()];
            for (q, k, b) in tally.few.drain(..).chain([(p, keys, bytes)]) {
                tally.many[q as usize] = (k, b);
            }
        }
    }

    /// Records one committed batch's writes, tallied key by key, and empties the tally: its
    /// keys and bytes per partition, and the batch as one commit into each partition it
    /// wrote to, with the square and the maximum of the keys it wrote there (a commit's
    /// keys are not independent operations: the hot-partition test needs to know how
    /// they came grouped).
    pub fn record_batch(&self, tally: &mut BatchTally) {
        for (p, keys, bytes) in tally.entries() {
            // The commit first, its keys last (released to `stats`, which reads the keys
            // first): a sample taken meanwhile may show the commit without its keys (the
            // writes look burstier than they were), never its keys without it (a large
            // batch's keys taken for a run of commits of one key, as hot as that many
            // independent writers).
            add_event(
                [
                    &self.write_commits,
                    &self.commit_keys_sq,
                    &self.commit_keys_max,
                ],
                p,
                keys,
            );
            self.write_bytes[p].fetch_add(bytes, Ordering::Relaxed);
            self.writes[p].fetch_add(keys, Ordering::Release);
        }
        tally.clear();
    }

    /// Records one transaction's or scan's reads, tallied key by key, and empties the
    /// tally: one event into each partition it read from, of the keys it read there (see
    /// [`ReadTally`]). Ordered as [`Self::record_batch`] is, for the same reason: a sample
    /// may show the event without its keys, never its keys without it.
    pub fn record_reads(&self, tally: &mut BatchTally) {
        for (p, keys, _) in tally.entries() {
            self.record_read_event(p, keys);
        }
        tally.clear();
    }

    /// Records one read event of `keys` keys in partition `p`: the event first, its keys
    /// last (see [`Self::record_batch`]).
    fn record_read_event(&self, p: usize, keys: u64) {
        add_event(
            [&self.read_groups, &self.group_keys_sq, &self.group_keys_max],
            p,
            keys,
        );
        self.grouped_reads[p].fetch_add(keys, Ordering::Release);
    }

    /// Records a point read outside a transaction: an event of one key.
    #[inline]
    pub fn record_read(&self, key: &[u8]) {
        let p = self.func.partition_of(key) as usize;
        self.single_reads[p].fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> LoadStats {
        let get = |v: &[AtomicU64]| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        // Keys before the events' figures, acquired: see `record_batch`.
        let acquire =
            |v: &[AtomicU64]| -> Vec<u64> { v.iter().map(|a| a.load(Ordering::Acquire)).collect() };
        let writes = acquire(&self.writes);
        let grouped: Vec<u64> = acquire(&self.grouped_reads);
        let singles: Vec<u64> = get(&self.single_reads);
        // A point read is an event of one key: it adds one to each read figure.
        let plus_singles = |v: &[AtomicU64]| -> Vec<u64> {
            v.iter()
                .zip(&singles)
                .map(|(a, &s)| a.load(Ordering::Relaxed).saturating_add(s))
                .collect()
        };
        LoadStats {
            version: self.version.map(VersionId),
            spec: self.func.spec().clone(),
            reads: grouped
                .iter()
                .zip(&singles)
                .map(|(&g, &s)| g.saturating_add(s))
                .collect(),
            read_events: plus_singles(&self.read_groups),
            read_keys_sq: plus_singles(&self.group_keys_sq),
            read_keys_max: (self.group_keys_max.iter().zip(&singles))
                .map(|(a, &s)| a.load(Ordering::Relaxed).max(s.min(1)))
                .collect(),
            writes,
            write_bytes: get(&self.write_bytes),
            write_commits: get(&self.write_commits),
            commit_keys_sq: get(&self.commit_keys_sq),
            commit_keys_max: get(&self.commit_keys_max),
            elapsed: self.since.elapsed(),
        }
    }
}

/// Adds an event of `keys` keys into partition `p` of its figures: `[events, the sum of
/// the squares of their keys, the most keys of one]`. Called before the keys are added
/// (see [`PartitionLoad::record_batch`]).
fn add_event(figures: [&[AtomicU64]; 3], p: usize, keys: u64) {
    let [events, keys_sq, keys_max] = figures;
    events[p].fetch_add(1, Ordering::Relaxed);
    let sq = keys.saturating_mul(keys);
    // Saturating: a wrapped sum of squares would understate how bursty the events were.
    let _ = keys_sq[p].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
        Some(s.saturating_add(sq))
    });
    keys_max[p].fetch_max(keys, Ordering::Relaxed);
    #[cfg(test)]
    crate::test_hooks::reach(crate::test_hooks::Point::LoadRecordMidway);
}

/// Traffic per partition since counting started (by default, none: no partitions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadStats {
    /// The layout counted, or `None` for a shadowed candidate function.
    pub version: Option<VersionId>,
    pub spec: PartitionSpec,
    /// Keys read: point reads, the keys transactions read (each time they read one), and
    /// the keys scans yielded; each one operation.
    pub reads: Vec<u64>,
    /// Read events that read from the partition: a point read outside a transaction is
    /// one of one key; a transaction (whether it commits, conflicts or is dropped) is one
    /// of the keys it read there, as is a scan, of the keys it yielded there (recorded
    /// when it ends or is dropped; a scan looks up one key in 16 and counts the keys
    /// after it in the same partition, so one that crosses into another partition counts
    /// up to 15 of its keys in the partition before). The counterpart of `write_commits`.
    pub read_events: Vec<u64>,
    /// The sum over those events of the square of the keys each read from the partition
    /// (saturating): equal to `reads` when every event read one key there.
    pub read_keys_sq: Vec<u64>,
    /// The most keys one event read from the partition (as `commit_keys_max`).
    pub read_keys_max: Vec<u64>,
    /// Keys written (puts and deletes), each one operation.
    pub writes: Vec<u64>,
    /// Bytes written (keys plus values).
    pub write_bytes: Vec<u64>,
    /// Commits (a `WriteBatch`, a transaction, a single put or delete) that wrote to the
    /// partition: a commit of many keys is one event, not many independent ones.
    pub write_commits: Vec<u64>,
    /// The sum over those commits of the square of the keys each wrote to the partition
    /// (saturating): equal to `writes` when every commit wrote one key there.
    pub commit_keys_sq: Vec<u64>,
    /// The most keys one commit wrote to the partition (of the difference of two samples,
    /// the later sample's is an upper bound).
    pub commit_keys_max: Vec<u64>,
    pub elapsed: Duration,
}

impl LoadStats {
    /// Reads plus writes per partition.
    pub fn ops(&self) -> Vec<u64> {
        self.reads
            .iter()
            .zip(&self.writes)
            .map(|(r, w)| r.saturating_add(*w))
            .collect()
    }

    /// Each partition's share of all operations.
    pub fn shares(&self) -> Vec<f64> {
        crate::util::shares_of(&self.ops())
    }
}

struct Limit {
    /// Which limit this is: a limit lifted and set again (or cleared by a retarget) is a new
    /// one, with its own tickets, and a writer holding a ticket of the old one no longer
    /// waits for it.
    id: u64,
    bytes_per_sec: u64,
    tokens: f64,
    last: Instant,
    next_ticket: u64,
    serving: u64,
}

impl Limit {
    /// Adds the bytes the time since the last refill earned at the rate in force (at most a
    /// second's worth).
    fn refill(&mut self, now: Instant) {
        let rate = self.bytes_per_sec as f64;
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
    }

    /// Changes the rate. The time since the last refill is earned at the old rate, which
    /// was in force for it; a debt left is scaled to the new rate, so it takes as long to
    /// repay as it would have. (The time used to be credited at the new rate: lowered after
    /// a pause, a limit charged the next writer the whole of the last batch at the new rate,
    /// and a 1-byte write after a 4 MiB one waited over an hour at 1 KiB/s.)
    fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        if self.tokens < 0.0 {
            self.tokens *= rate as f64 / self.bytes_per_sec.max(1) as f64;
        }
        self.bytes_per_sec = rate;
        self.tokens = self.tokens.min(rate as f64);
    }
}

/// Rate limits on writes into single partitions of the target layout, served first come
/// first served (a ticket queue per partition), so one hot partition is slowed without
/// starving any of its writers or touching writes elsewhere.
/// The function the limits apply to (the target's when they were set), and the limits.
type Limits = (Option<Arc<PartitionFn>>, HashMap<u32, Limit>);

pub(crate) struct Admission {
    active: AtomicBool,
    state: Mutex<Limits>,
    cv: Condvar,
    /// The next [`Limit::id`].
    next_id: std::sync::atomic::AtomicU64,
}

impl Admission {
    pub fn new() -> Admission {
        Admission {
            active: AtomicBool::new(false),
            state: Mutex::new((None, HashMap::new())),
            cv: Condvar::new(),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// What admission did to a batch: how long it waited for partition write limits, and what
/// each limit charged it (partition, limit id, bytes, the limit's rate then), to be given
/// back if the batch is not written.
#[derive(Default)]
pub(crate) struct Admitted {
    pub waited: Duration,
    charged: Vec<(u32, u64, u64, u64)>,
}

impl Inner {
    /// Waits for the batch's turn in every rate-limited partition it writes to; the time
    /// it waited, and what it was charged.
    pub(crate) fn admit(&self, batch: &WriteBatch) -> Result<Admitted> {
        let mut admitted = Admitted::default();
        if !self.admission.active.load(Ordering::Relaxed) {
            return Ok(admitted);
        }
        let mut st = self.admission.state.lock();
        let start = Instant::now();
        let mut waited = false;
        let r = loop {
            let Some(func) = st.0.clone() else {
                break Ok(());
            };
            let mut touched: Vec<(u32, u64)> = Vec::new();
            WriteBatch::for_each_op(
                batch.ops_bytes(),
                std::path::Path::new("<batch>"),
                0,
                |_, k, v| {
                    let p = func.partition_of(k);
                    if st.1.contains_key(&p) {
                        match touched.iter_mut().find(|t| t.0 == p) {
                            Some(t) => t.1 += (k.len() + v.len()) as u64,
                            None => touched.push((p, (k.len() + v.len()) as u64)),
                        }
                    }
                },
            )?;
            touched.sort_unstable();
            admitted.charged.clear();
            match self.admit_touched(&mut st, &func, touched, &mut waited, &mut admitted) {
                Ok(true) => break Ok(()),
                // The limits name another function's partitions now (the target changed
                // while this batch waited): its partitions are found again under that one.
                Ok(false) => continue,
                Err(e) => break Err(e),
            }
        };
        let took = start.elapsed();
        if waited {
            Counters::add(&self.counters.admission_waits, 1);
            Counters::add(
                &self.counters.admission_wait_micros,
                took.as_micros() as u64,
            );
        }
        if waited {
            admitted.waited = took;
        }
        r.map(|()| admitted)
    }

    /// Gives back what a batch that was not written (a transaction that conflicted) was
    /// charged, to limits still in force, up to a second's worth of tokens: a conflict
    /// retried under contention would otherwise pay for its bytes once per attempt. The
    /// charge comes back as the time it cost at the rate then, at the rate now: a change of
    /// rate scales a debt so that it takes as long to repay (see [`Limit::set_rate`]), and
    /// the bytes alone, after a raise, left most of the charge's debt in place.
    pub(crate) fn refund(&self, admitted: &Admitted) {
        if admitted.charged.is_empty() {
            return;
        }
        let mut st = self.admission.state.lock();
        for &(p, id, bytes, rate) in &admitted.charged {
            if let Some(l) = st.1.get_mut(&p).filter(|l| l.id == id) {
                let now = l.bytes_per_sec as f64;
                let back = bytes as f64 * now / rate.max(1) as f64;
                l.tokens = (l.tokens + back).min(now);
            }
        }
        self.admission.cv.notify_all();
    }

    /// Takes a ticket for each limited partition the batch writes to (`touched`, found
    /// under `func`) and waits for its turn and its tokens; sets `waited` if it had to wait
    /// at all. False if the limits came to apply to another function meanwhile (a target
    /// switch lifts them all, and new ones name the new target's partitions), before the
    /// batch was through: its partitions are to be found again.
    fn admit_touched(
        &self,
        st: &mut parking_lot::MutexGuard<'_, Limits>,
        func: &Arc<PartitionFn>,
        touched: Vec<(u32, u64)>,
        waited: &mut bool,
        admitted: &mut Admitted,
    ) -> Result<bool> {
        let same_function = |st: &Limits| st.0.as_ref().is_some_and(|f| Arc::ptr_eq(f, func));
        for (p, bytes) in touched {
            if !same_function(st) {
                return Ok(false);
            }
            let (limit, ticket) = match st.1.get_mut(&p) {
                Some(l) => {
                    l.next_ticket += 1;
                    (l.id, l.next_ticket - 1)
                }
                None => continue,
            };
            loop {
                if self.closing.load(Ordering::Acquire) {
                    return Err(Error::Closed);
                }
                if !same_function(st) {
                    return Ok(false);
                }
                let Some(l) = st.1.get_mut(&p).filter(|l| l.id == limit) else {
                    // The limit was lifted while this writer waited (perhaps set again:
                    // its tickets start over, and this one would never come up).
                    break;
                };
                if l.serving == ticket {
                    l.refill(Instant::now());
                    if l.tokens >= 0.0 {
                        l.tokens -= bytes as f64;
                        l.serving += 1;
                        admitted.charged.push((p, l.id, bytes, l.bytes_per_sec));
                        self.admission.cv.notify_all();
                        break;
                    }
                    let wait = -l.tokens / l.bytes_per_sec.max(1) as f64;
                    *waited = true;
                    self.admission
                        .cv
                        .wait_for(st, Duration::from_secs_f64(wait.min(0.1)));
                } else {
                    *waited = true;
                    self.admission.cv.wait_for(st, Duration::from_millis(50));
                }
            }
        }
        Ok(true)
    }

    /// Limits writes into `partition` of the target layout to `bytes_per_sec` (None lifts
    /// the limit). Changing the target clears all limits.
    pub fn set_partition_write_limit(
        &self,
        partition: u32,
        bytes_per_sec: Option<u64>,
    ) -> Result<()> {
        // Under the core lock, which a retarget holds from clearing the limits to
        // installing its view: read before it, the target could be the one being replaced,
        // and the limit would apply the old function's partitions to the new layout.
        let _core = self.core.lock();
        let view = self.view.load();
        let target = view.files.target_layout();
        if partition >= target.func.partitions() {
            return Err(Error::InvalidOption {
                name: "partition",
                reason: format!(
                    "target v{} has {} partitions",
                    target.id,
                    target.func.partitions()
                ),
            });
        }
        if bytes_per_sec == Some(0) {
            // It would hold every write to the partition for ever (it used to become 1
            // byte a second silently: a 1 MiB batch waited twelve days).
            return Err(Error::InvalidOption {
                name: "bytes_per_sec",
                reason: "a write limit must be positive (None lifts it)".into(),
            });
        }
        let mut st = self.admission.state.lock();
        if st.0.as_ref().map(|f| f.fingerprint()) != Some(target.func.fingerprint()) {
            st.0 = Some(target.func.clone());
            st.1.clear();
        }
        match bytes_per_sec {
            Some(r) => {
                let l = st.1.entry(partition).or_insert(Limit {
                    id: self.admission.next_id.fetch_add(1, Ordering::Relaxed),
                    bytes_per_sec: r,
                    tokens: 0.0,
                    last: Instant::now(),
                    next_ticket: 0,
                    serving: 0,
                });
                l.set_rate(r, Instant::now());
            }
            None => {
                st.1.remove(&partition);
            }
        }
        self.admission
            .active
            .store(!st.1.is_empty(), Ordering::Relaxed);
        self.admission.cv.notify_all();
        Ok(())
    }

    /// The partition write limits in force: (partition, bytes per second), by partition.
    pub fn partition_write_limits(&self) -> Vec<(u32, u64)> {
        let st = self.admission.state.lock();
        let mut v: Vec<(u32, u64)> = st.1.iter().map(|(p, l)| (*p, l.bytes_per_sec)).collect();
        v.sort_unstable();
        v
    }

    /// Clears admission limits and restarts load counting for a new target.
    pub(crate) fn reset_load(&self, target: u32, func: Arc<PartitionFn>) {
        self.load
            .store(Some(Arc::new(PartitionLoad::new(Some(target), func))));
        let mut st = self.admission.state.lock();
        st.0 = None;
        st.1.clear();
        self.admission.active.store(false, Ordering::Relaxed);
        self.admission.cv.notify_all();
    }

    /// A tally of one transaction's or scan's reads, for the functions counting now.
    pub(crate) fn read_tally(&self) -> ReadTally {
        let mut t = ReadTally::default();
        t.loads = [self.load.load_full(), self.shadow.load_full()];
        t
    }

    /// Starts counting traffic under a candidate function (None stops).
    pub fn set_shadow(&self, spec: Option<PartitionSpec>) -> Result<()> {
        match spec {
            Some(s) => {
                // A candidate that could never be registered is not worth watching.
                s.refuse_inert_split()?;
                let f = Arc::new(PartitionFn::new(s)?);
                self.shadow
                    .store(Some(Arc::new(PartitionLoad::new(None, f))));
            }
            None => self.shadow.store(None),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::Limit;
    use crate::{Db, Options};

    /// A caller may build `LoadStats` itself (its fields are public): a count at the top
    /// of u64 saturates the sum instead of overflowing it.
    #[test]
    fn operation_counts_saturate() {
        let s = super::LoadStats {
            version: None,
            spec: crate::PartitionSpec::Range { boundaries: vec![] },
            reads: vec![u64::MAX, 2],
            read_events: vec![u64::MAX, 2],
            read_keys_sq: vec![u64::MAX, 2],
            read_keys_max: vec![1, 1],
            writes: vec![1, 3],
            write_bytes: vec![0, 0],
            write_commits: vec![1, 3],
            commit_keys_sq: vec![1, 3],
            commit_keys_max: vec![1, 1],
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(s.ops(), vec![u64::MAX, 5]);
    }

    /// A batch over more partitions than a tally keeps inline is counted per partition all
    /// the same, one commit each, and the tally starts afresh for the next batch.
    #[test]
    fn a_batch_over_many_partitions_is_one_commit_in_each() {
        // Partition i holds the keys that start with the i-th letter.
        let boundaries = (b'b'..=b'z').map(|c| vec![c]).collect();
        let func = crate::layout::PartitionFn::new(crate::PartitionSpec::Range { boundaries });
        let load = super::PartitionLoad::new(None, std::sync::Arc::new(func.unwrap()));
        let parts = 20u64;
        assert!(parts as usize > super::FEW_PARTITIONS);
        let mut tally = super::BatchTally::default();
        // Partition i gets i + 1 keys of 2 bytes, interleaved across partitions.
        for round in 0..parts {
            for i in round..parts {
                load.tally_key(&mut tally, &[b'a' + i as u8, b'0' + round as u8], 2);
            }
        }
        load.record_batch(&mut tally);
        // Then a batch of one key into partition 0: the tally kept nothing of the first.
        load.tally_key(&mut tally, b"a", 1);
        load.record_batch(&mut tally);
        let s = load.stats();
        let keys = |i: u64| if i < parts { i + 1 } else { 0 };
        let expect = |f: &dyn Fn(u64) -> u64| (0..26).map(f).collect::<Vec<u64>>();
        let first = |i: u64| u64::from(i == 0);
        assert_eq!(s.writes, expect(&|i| keys(i) + first(i)));
        assert_eq!(s.write_bytes, expect(&|i| 2 * keys(i) + first(i)));
        assert_eq!(
            s.write_commits,
            expect(&|i| u64::from(i < parts) + first(i))
        );
        assert_eq!(s.commit_keys_sq, expect(&|i| keys(i) * keys(i) + first(i)));
        assert_eq!(s.commit_keys_max, expect(&|i| keys(i)));
    }

    /// A database of two range partitions, split at "m".
    fn split_at_m() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            partition: crate::PartitionSpec::Range {
                boundaries: vec![b"m".to_vec()],
            },
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        (dir, db)
    }

    /// [`split_at_m`], shadowing a function that sends every key to one partition of two.
    fn split_at_m_shadowed_as_one() -> (tempfile::TempDir, Db) {
        let (dir, db) = split_at_m();
        db.set_shadow(Some(crate::PartitionSpec::Range {
            boundaries: vec![b"zz".to_vec()],
        }))
        .unwrap();
        (dir, db)
    }

    /// A batch is counted as one commit into each partition it writes to, with its keys
    /// there (their square, their maximum), for the target and a shadowed function alike;
    /// a transaction that conflicted wrote nothing and is not counted.
    #[test]
    fn a_batch_is_one_commit_per_partition_it_writes_to() {
        let (_dir, db) = split_at_m_shadowed_as_one();
        let mut batch = crate::WriteBatch::new();
        // Out of order: the keys of one partition are gathered wherever they are.
        for k in ["a", "n", "b", "o", "c"] {
            batch.put(k, "v");
        }
        db.write(batch).unwrap();
        db.put("p", "v").unwrap();
        db.delete("d").unwrap();
        let mut txn = db.transaction();
        assert_eq!(txn.get("q").unwrap(), None);
        txn.put("e", "v");
        txn.put("f", "v");
        db.put("q", "v").unwrap();
        assert!(matches!(txn.commit(), Err(crate::Error::Conflict { .. })));

        let load = db.partition_load();
        assert_eq!(load.writes, vec![4, 4]);
        assert_eq!(load.write_commits, vec![2, 3]);
        assert_eq!(load.commit_keys_sq, vec![9 + 1, 4 + 1 + 1]);
        assert_eq!(load.commit_keys_max, vec![3, 2]);
        assert_eq!(load.write_bytes, vec![7, 8]);
        let shadow = db.shadow_load().unwrap();
        assert_eq!(shadow.writes, vec![8, 0]);
        assert_eq!(shadow.write_commits, vec![4, 0]);
        assert_eq!(shadow.commit_keys_sq, vec![25 + 1 + 1 + 1, 0]);
        assert_eq!(shadow.commit_keys_max, vec![5, 0]);
    }

    /// Figures read while a commit is being recorded never show its keys without the commit
    /// itself (its count, the square and the maximum of its keys): such a sample took a
    /// large batch's keys for a run of commits of one key, as hot as that many
    /// independent writers. Written the other way round, a sample may show the commit
    /// before its keys, which only makes the writes look burstier than they were.
    #[test]
    fn a_sample_taken_while_a_commit_is_recorded_shows_no_keys_without_their_commit() {
        let (_dir, db) = split_at_m();
        sampled_midway(
            &db,
            "a batch's keys",
            |i| db.put(format!("a{i}"), "v").unwrap(),
            || {
                let mut batch = crate::WriteBatch::new();
                for i in 0..200 {
                    batch.put(format!("b{i:03}"), "v");
                }
                db.write(batch).unwrap();
            },
            |s| {
                [
                    s.writes[0],
                    s.write_commits[0],
                    s.commit_keys_sq[0],
                    s.commit_keys_max[0],
                ]
            },
        );
    }

    /// Ten single-key events into partition 0 of `db` (`single`), then `event`, one of
    /// 200 keys there, with a sample taken midway through its recording: partition 0's
    /// figures as `of` reads them (keys, events, the sum of the squares and the most of
    /// their keys) show the event in that sample without `what` (its keys), and all of
    /// it after.
    fn sampled_midway(
        db: &Db,
        what: &str,
        single: impl Fn(u32),
        event: impl FnOnce(),
        of: impl Fn(&super::LoadStats) -> [u64; 4],
    ) {
        for i in 0..10 {
            single(i);
        }
        let load = db.inner.load.load_full().expect("counting the target");
        let (tx, rx) = std::sync::mpsc::channel();
        crate::test_hooks::set(crate::test_hooks::Point::LoadRecordMidway, move || {
            tx.send(load.stats()).unwrap()
        });
        event();
        // The event was this thread's alone: it reached the hook, or never will.
        let midway = of(&rx.try_recv().expect("the tally was recorded"));
        // The hook sits after the event's figures and before its keys: the event shows
        // without its keys (had the keys come first, they would show here with it).
        assert_eq!(
            midway,
            [10, 11, 10 + 200 * 200, 200],
            "{what} counted before their event"
        );
        assert_eq!(of(&db.partition_load()), [210, 11, 10 + 200 * 200, 200]);
    }

    /// The read figures of `s`: (reads, read events, the sum of their keys' squares, the
    /// most keys of one), per partition.
    type ReadFigures = (Vec<u64>, Vec<u64>, Vec<u64>, Vec<u64>);
    fn read_figures(s: &super::LoadStats) -> ReadFigures {
        (
            s.reads.clone(),
            s.read_events.clone(),
            s.read_keys_sq.clone(),
            s.read_keys_max.clone(),
        )
    }

    /// A point read is an event of one key; a transaction's reads are one event in each
    /// partition it read from, of the keys it read there, whether it commits, conflicts or
    /// is dropped (its commit's check of its reads is no read again); for the target and a
    /// shadowed function alike. Each key a transaction read used to be an event of its own.
    #[test]
    fn a_transaction_s_reads_are_one_event_per_partition_it_read_from() {
        let (_dir, db) = split_at_m_shadowed_as_one();
        db.get("a").unwrap();
        let mut txn = db.transaction();
        for k in ["a", "b", "n", "b"] {
            assert_eq!(txn.get(k).unwrap(), None);
        }
        // Its own write, read back: no read of the database.
        txn.put("w", "v");
        assert_eq!(txn.get("w").unwrap().as_deref(), Some(&b"v"[..]));
        txn.commit().unwrap();
        let mut txn = db.transaction();
        for k in ["o", "p"] {
            assert_eq!(txn.get(k).unwrap(), None);
        }
        txn.put("x", "v");
        db.put("o", "v").unwrap();
        assert!(matches!(txn.commit(), Err(crate::Error::Conflict { .. })));
        let mut txn = db.transaction();
        assert_eq!(txn.get("c").unwrap(), None);
        drop(txn);

        assert_eq!(
            read_figures(&db.partition_load()),
            (vec![5, 3], vec![3, 2], vec![1 + 9 + 1, 1 + 4], vec![3, 2])
        );
        assert_eq!(
            read_figures(&db.shadow_load().unwrap()),
            (vec![8, 0], vec![4, 0], vec![1 + 16 + 4 + 1, 0], vec![4, 0])
        );
    }

    /// A scan is one read event in each partition it yielded keys from, of the keys it
    /// yielded there (a key deleted is not yielded; a double-ended scan yields each key
    /// once), recorded once it has ended or is dropped. It looks up one key in
    /// [`SCAN_SAMPLE`], and counts the keys up to the next sample where that one fell:
    /// exact within one partition, and its total always. Scans were not counted at all.
    #[test]
    fn a_scan_is_one_event_per_partition_of_the_keys_it_yielded() {
        let (_dir, db) = split_at_m();
        // 39 keys left of "m" (one of 40 deleted), 40 right of it.
        for i in 0..40 {
            db.put(format!("a{i:02}"), "v").unwrap();
            db.put(format!("n{i:02}"), "v").unwrap();
        }
        db.delete("a05").unwrap();
        let figures = || read_figures(&db.partition_load());

        // Within one partition, exact: 40 keys, one event.
        let mut right = db.prefix("n");
        assert_eq!(right.by_ref().count(), 40);
        // Ended, not yet dropped.
        assert_eq!(
            figures(),
            (vec![0, 40], vec![0, 1], vec![0, 1600], vec![0, 40])
        );
        drop(right);
        // Across the boundary: the keys after the last sample on the left of it (the
        // 33rd key, at 16 a sample) count there, up to the next sample.
        let s = super::SCAN_SAMPLE as u64;
        let left = (39 - 1) / s * s + s;
        let mut all = db.range(..);
        assert_eq!(all.by_ref().count(), 79);
        drop(all);
        let whole = [left, 79 - left];
        assert_eq!(
            figures(),
            (
                vec![whole[0], 40 + whole[1]],
                vec![1, 2],
                vec![whole[0] * whole[0], 1600 + whole[1] * whole[1]],
                vec![whole[0], 40],
            )
        );
        // Two keys and dropped; nothing yielded: one more event of two keys on the left.
        let mut first = db.range(..);
        assert!(first.next().is_some() && first.next().is_some());
        let snapshot = db.snapshot();
        let mut nothing = snapshot.range(&b"x"[..]..);
        assert!(nothing.next().is_none());
        assert_eq!(
            figures().0,
            vec![whole[0], 40 + whole[1]],
            "counted before the end"
        );
        drop(first);
        drop(nothing);
        let (reads, events, _, _) = figures();
        assert_eq!((reads[0], events), (whole[0] + 2, vec![2, 2]));
        // From both ends at once, to where they meet: every key counted once.
        let mut both = db.range(..);
        let mut yielded = 0;
        loop {
            let front = both.next().map(Result::unwrap);
            let back = both.next_back().map(Result::unwrap);
            yielded += u64::from(front.is_some()) + u64::from(back.is_some());
            if back.is_none() {
                break;
            }
        }
        assert_eq!(yielded, 79);
        drop(both);
        let (reads, events, _, _) = figures();
        assert_eq!(reads.iter().sum::<u64>(), 79 + 40 + 2 + 79);
        assert!(
            events.iter().sum::<u64>() <= 4 + 2,
            "one event at most in each partition"
        );
    }

    /// A scan that outlives its target (a retarget to a function of more partitions in
    /// between) records its reads into the counters it began with, which the new target's
    /// replaced: nothing of it shows, and nothing is indexed out of the new function's
    /// partitions.
    #[test]
    fn a_scan_across_a_retarget_is_recorded_under_its_own_function() {
        let (_dir, db) = split_at_m();
        for k in ["a", "n", "o"] {
            db.put(k, "v").unwrap();
        }
        let mut scan = db.range(..);
        assert!(scan.next().is_some());
        let v2 = db
            .register_partition_fn(crate::PartitionSpec::Range {
                boundaries: vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()],
            })
            .unwrap();
        db.set_target(v2).unwrap();
        assert_eq!(scan.count(), 2);
        let s = db.partition_load();
        assert_eq!(s.reads, vec![0; 4]);
        assert_eq!(s.read_events, vec![0; 4]);
    }

    /// Figures read while a transaction's reads are being recorded never show its keys
    /// without its event (see the test for a commit's writes below).
    #[test]
    fn a_sample_taken_while_reads_are_recorded_shows_no_keys_without_their_event() {
        let (_dir, db) = split_at_m();
        sampled_midway(
            &db,
            "a transaction's keys read",
            |i| drop(db.get(format!("a{i}")).unwrap()),
            || {
                let mut txn = db.transaction();
                for i in 0..200 {
                    txn.get(format!("b{i:03}")).unwrap();
                }
            },
            |s| {
                [
                    s.reads[0],
                    s.read_events[0],
                    s.read_keys_sq[0],
                    s.read_keys_max[0],
                ]
            },
        );
    }

    /// A limit lowered after a pause: the pause is earned at the old rate, which was in
    /// force for it, and what debt is left keeps the time it had to go. It was earned at
    /// the new rate: lowered from 64 MiB/s to 1 KiB/s 300 ms after a 4 MiB write (repaid in
    /// 62 ms), the limit charged the next 1-byte write ~4,000 s.
    #[test]
    fn a_lowered_limit_charges_the_time_before_at_the_old_rate() {
        let t0 = Instant::now();
        let limit = |tokens: f64| Limit {
            id: 0,
            bytes_per_sec: 64 << 20,
            tokens,
            last: t0,
            next_ticket: 0,
            serving: 0,
        };
        let mut repaid = limit(-(4 << 20) as f64);
        repaid.set_rate(1024, t0 + Duration::from_millis(300));
        assert_eq!(repaid.tokens, 1024.0, "repaid, and full at the new rate");
        // Half repaid (2 MiB of debt left at 64 MiB/s: 31.25 ms): 31.25 ms at 1 KiB/s.
        let mut halfway = limit(-(4 << 20) as f64);
        halfway.set_rate(1024, t0 + Duration::from_micros(31_250));
        assert!((halfway.tokens + 32.0).abs() < 0.5, "{}", halfway.tokens);
        // Raised: the same.
        let mut raised = limit(-(4 << 20) as f64);
        raised.set_rate(128 << 20, t0 + Duration::from_micros(31_250));
        assert!(
            (raised.tokens + (4 << 20) as f64).abs() < 1024.0,
            "{}",
            raised.tokens
        );

        // Through the API: the write after the lowered limit is admitted at once.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        db.set_partition_write_limit(0, Some(64 << 20)).unwrap();
        db.put("big", vec![0u8; 4 << 20]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        db.set_partition_write_limit(0, Some(1024)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = db.clone();
        std::thread::spawn(move || {
            let _ = tx.send(d.put("small", "x"));
        });
        // A hang detector, not a timing assertion: the write was charged an hour.
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the write after the lowered limit waits for a debt repaid long ago")
            .unwrap();
    }

    /// Writers queued behind a partition limit that is lifted and set again before they
    /// wake hold tickets of the old limit; the new one numbers its tickets from 0, so they
    /// used to wait for a turn that never came (or, with new traffic, two writers held the
    /// same number and one was stranded). They now see the limit was replaced and go on.
    #[test]
    fn writers_queued_behind_a_replaced_limit_are_not_stranded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        db.inner.set_partition_write_limit(0, Some(1000)).unwrap();
        // Admitted at once, leaving the partition 2 s in debt.
        db.put("first", vec![0u8; 2000]).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..2 {
            let (db, tx) = (db.clone(), tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send(db.put(format!("queued{i}"), "x"));
            });
        }
        let start = Instant::now();
        while db.inner.admission.state.lock().1[&0].next_ticket < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "writers never queued"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Lifted and set again (generously) while the queued writers sleep: what
        // `set_partition_write_limit(0, None)` then `(0, Some(..))` leave when the setter
        // takes the lock back before either writer does.
        {
            let inner = &db.inner;
            let mut st = inner.admission.state.lock();
            st.1.remove(&0);
            st.1.insert(
                0,
                Limit {
                    id: inner.admission.next_id.fetch_add(1, Ordering::Relaxed),
                    bytes_per_sec: 1 << 30,
                    tokens: 0.0,
                    last: Instant::now(),
                    next_ticket: 0,
                    serving: 0,
                },
            );
            inner.admission.cv.notify_all();
        }
        for _ in 0..2 {
            // A deadlock detector, not a timing assertion.
            rx.recv_timeout(Duration::from_secs(30))
                .expect("a queued writer is stranded")
                .unwrap();
        }
    }

    /// A batch queued behind a limit when the target switches finds its partitions again
    /// under the new target's function. It used to go on through the partitions found under
    /// the old one, and queued behind a new limit on a partition its writes do not go to
    /// (here, one 100 s in debt).
    #[test]
    fn a_batch_queued_across_a_target_switch_is_admitted_under_the_new_function() {
        use crate::layout::{PartitionFn, PartitionSpec};
        use std::sync::Arc;
        let range = |b: &str| PartitionSpec::Range {
            boundaries: vec![b.as_bytes().to_vec()],
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let v = db.register_partition_fn(range("m")).unwrap();
        db.set_target(v).unwrap();
        db.set_partition_write_limit(0, Some(1000)).unwrap();
        db.set_partition_write_limit(1, Some(1 << 30)).unwrap();
        // Admitted at once, leaving partition 0 ("a" to "m") 100 s in debt.
        db.put("a", vec![0u8; 100_000]).unwrap();
        // Writes to partitions 0 and 1 of `range("m")`, and to partition 0 of `range("z")`.
        let mut batch = crate::WriteBatch::new();
        batch.put("b", "x");
        batch.put("n", "x");
        let (tx, rx) = std::sync::mpsc::channel();
        let d = db.clone();
        std::thread::spawn(move || {
            let _ = tx.send(d.write(batch));
        });
        let start = Instant::now();
        while db.inner.admission.state.lock().1[&0].next_ticket < 2 {
            assert!(start.elapsed() < Duration::from_secs(30), "never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
        // What a switch to `range("z")` and then a limit on its partition 1 ("z" on) leave
        // when the setter takes the lock before the queued writer wakes: that partition
        // 100 s in debt.
        {
            let inner = &db.inner;
            let mut st = inner.admission.state.lock();
            st.0 = Some(Arc::new(PartitionFn::new(range("z")).unwrap()));
            st.1.clear();
            st.1.insert(
                1,
                Limit {
                    id: inner.admission.next_id.fetch_add(1, Ordering::Relaxed),
                    bytes_per_sec: 1000,
                    tokens: -100_000.0,
                    last: Instant::now(),
                    next_ticket: 0,
                    serving: 0,
                },
            );
            inner.admission.cv.notify_all();
        }
        // A hang detector, not a timing assertion.
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the batch queued behind a partition it does not write to")
            .unwrap();
    }

    /// A limit set while a retarget is between clearing the limits and installing the new
    /// target must apply to the new target's function. It used to read the target first,
    /// and could set the limit against the layout being replaced.
    #[test]
    fn a_limit_set_during_a_retarget_applies_to_the_new_target() {
        use crate::test_hooks::{set, Point};
        use crate::{PartitionSpec, VersionId};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let v2 = db
            .register_partition_fn(PartitionSpec::Hash {
                partitions: 4,
                seed: 9,
                hashed_prefix: None,
            })
            .unwrap();
        let setter = db.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        set(Point::RetargetBeforeSwap, move || {
            std::thread::spawn(move || {
                let _ = tx.send(setter.inner.set_partition_write_limit(0, Some(1 << 20)));
            });
            // Room for the setter to run now if nothing holds it back (it used to).
            std::thread::sleep(Duration::from_millis(200));
        });
        db.set_target(v2).unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the limit was never set")
            .unwrap();
        let target = db
            .layout()
            .versions
            .into_iter()
            .find(|v| v.id == v2)
            .unwrap();
        let st = db.inner.admission.state.lock();
        assert_eq!(
            st.0.as_ref().map(|f| f.fingerprint()),
            Some(target.fingerprint),
            "the limit applies to another layout's function"
        );
        assert_eq!(db.layout().target, VersionId(v2.0));
    }

    /// Writers waiting behind a partition's write limit are not committing: they must not
    /// count among the writers a synced group's leader waits for (it lingered up to half
    /// an fsync for writers that the limit held back for seconds).
    #[test]
    fn writers_held_by_a_limit_are_not_counted_as_committing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        db.inner.set_partition_write_limit(0, Some(1000)).unwrap();
        // Admitted at once, leaving the partition 2 s in debt.
        db.put("first", vec![0u8; 2000]).unwrap();
        let writers: Vec<_> = (0..3)
            .map(|i| {
                let db = db.clone();
                std::thread::spawn(move || db.put(format!("held{i}"), "x"))
            })
            .collect();
        let start = Instant::now();
        while db.inner.admission.state.lock().1[&0].next_ticket < 4 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "writers never queued"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            db.inner.group.committing(),
            (0, 1),
            "(writers committing, their recent peak) with three held by the limit"
        );
        db.inner.set_partition_write_limit(0, None).unwrap();
        for w in writers {
            w.join().unwrap().unwrap();
        }
    }

    /// A database of two range partitions (keys below and from "m"), writes into the
    /// second limited to a byte a second: any charge shows as a debt for a test's life.
    fn limited_to_a_byte_a_second(dir: &std::path::Path) -> Db {
        let opts = Options {
            partition: crate::PartitionSpec::Range {
                boundaries: vec![b"m".to_vec()],
            },
            ..Options::default()
        };
        let db = Db::open(dir, opts).unwrap();
        db.inner.set_partition_write_limit(1, Some(1)).unwrap();
        db
    }

    /// A transaction that conflicts wrote nothing: what its partition's limit charged it is
    /// given back (a conflict retried under contention paid once per attempt, and a hot
    /// partition was held below its limit).
    #[test]
    fn a_conflicting_transaction_gets_its_write_limit_charge_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = limited_to_a_byte_a_second(dir.path());
        let tokens = || db.inner.admission.state.lock().1[&1].tokens;
        let mut txn = db.transaction();
        assert_eq!(txn.get("a").unwrap(), None);
        txn.put("z", vec![0u8; 4000]);
        db.put("a", "changed").unwrap();
        match txn.commit() {
            Err(crate::Error::Conflict { key }) => assert_eq!(key, b"a"),
            other => panic!("expected a conflict on a, got {other:?}"),
        }
        assert!(
            tokens() > -1.0,
            "the conflict left a debt of {} B",
            -tokens()
        );
        // A transaction that commits pays.
        let mut txn = db.transaction();
        txn.put("z", vec![0u8; 4000]);
        txn.commit().unwrap();
        assert!(tokens() < -3000.0, "{}", tokens());
    }

    /// A conflicting transaction's charge comes back as the time it cost the limit, at
    /// the rate in force when it is given back: a rate raised meanwhile scaled the debt
    /// the charge left (so that it takes as long to repay), and the refund gave back only
    /// the bytes, leaving the partition's writers the rest of that debt to wait out for a
    /// write that never happened (here over an hour).
    #[test]
    fn a_conflict_refunds_its_charge_at_the_rate_in_force() {
        use crate::test_hooks::{set, Point};
        let dir = tempfile::tempdir().unwrap();
        let db = limited_to_a_byte_a_second(dir.path());
        let key = |i: u32| format!("a{i:03}");
        // A read set large enough to be checked up to a mark, after the batch's admission.
        let mut txn = db.transaction();
        for i in 0..crate::recent::TWO_STEP_MIN_KEYS as u32 {
            assert_eq!(txn.get(key(i)).unwrap(), None);
        }
        txn.put("z", vec![0u8; 4000]);
        let other = db.clone();
        set(Point::TransactionAfterMark, move || {
            // Charged 4000 B at 1 B/s: a debt of 4000 s, at 1000 B/s from now on.
            other
                .inner
                .set_partition_write_limit(1, Some(1000))
                .unwrap();
            other.put(key(7), "changed").unwrap();
        });
        match txn.commit() {
            Err(crate::Error::Conflict { key: k }) => assert_eq!(k, key(7).as_bytes()),
            other => panic!("expected a conflict on {}, got {other:?}", key(7)),
        }
        let tokens = db.inner.admission.state.lock().1[&1].tokens;
        assert!(
            tokens > -1000.0,
            "the conflict left a debt of {} B at 1000 B/s",
            -tokens
        );
    }
}
