//! The keys written since a mark, for transactions whose read sets are too large to check
//! under the WAL lock.
//!
//! A transaction's read set must be checked atomically with its write: no key it read may
//! have a version newer than its snapshot at its commit point. Checked under the WAL lock
//! key by key, a read set of 200,000 keys held every other writer for about 0.1 s. A large
//! read set is instead checked in two steps:
//!
//! 1. Outside the lock: the transaction sets a *mark* (the last seqno written, taken under
//!    the WAL lock, so no commit group is between) and checks every key it read against the
//!    current view. That covers every write up to the mark.
//! 2. Under the lock, at its commit point: only the writes after the mark can still
//!    conflict. While a mark is set, each commit group records the hash of every key it
//!    writes with its seqno here, and the transaction looks up those hashes in its read
//!    set: work in proportion to the writes made meanwhile, not to the read set.
//!
//! A hash that matches is checked exactly (a key of the read set with that hash changed
//! after the snapshot, or it is a collision). Should the log outgrow [`MAX_ENTRIES`] while
//! a mark is set (a transaction stalled for a long time under a heavy write load), it is
//! emptied and starts again: a transaction whose mark is older than what was dropped
//! checks its whole read set under the lock, as small ones always do; later marks find
//! everything after them in the log as before.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Read sets of at least this many keys are checked in two steps; smaller ones are
/// checked under the WAL lock (a lookup or two costs less than setting a mark).
pub const TWO_STEP_MIN_KEYS: usize = 64;

/// Entries (16 bytes each) the log holds before it gives up: 64 MiB (1,024 in tests, so
/// that they reach it).
pub const MAX_ENTRIES: usize = if cfg!(test) { 1 << 10 } else { 1 << 22 };

#[derive(Default)]
pub(crate) struct RecentWrites {
    /// Whether any mark is set: read by commit groups under the WAL lock, set under it
    /// too (by [`RecentWrites::mark`]), so no group misses a mark set before it.
    active: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Marks set, with how many transactions set each.
    marks: BTreeMap<u64, usize>,
    /// (seqno, key hash) of every key written after the oldest mark (and after
    /// `dropped_through`), in seqno order.
    log: VecDeque<(u64, u64)>,
    /// The log was emptied for want of room, through this seqno: a mark below it must be
    /// checked the long way.
    dropped_through: u64,
}

/// A mark; dropping it lets the log go once no other mark needs it.
pub(crate) struct Mark {
    recent: Arc<RecentWrites>,
    pub seqno: u64,
}

impl Drop for Mark {
    fn drop(&mut self) {
        let mut st = self.recent.state.lock();
        if let Some(n) = st.marks.get_mut(&self.seqno) {
            *n -= 1;
            if *n == 0 {
                st.marks.remove(&self.seqno);
            }
        }
        match st.marks.keys().next().copied() {
            None => {
                st.log = VecDeque::new();
                st.dropped_through = 0;
                self.recent.active.store(false, Ordering::Release);
            }
            Some(oldest) => {
                while st.log.front().is_some_and(|&(s, _)| s <= oldest) {
                    st.log.pop_front();
                }
                // Give back what a long-held mark made the log grow to.
                if st.log.capacity() > 4096 && st.log.len() < st.log.capacity() / 4 {
                    st.log.shrink_to_fit();
                }
            }
        }
    }
}

/// What a commit group found for a transaction's mark.
pub(crate) enum Since {
    /// Hashes of keys written after the mark that are in the read set (usually none).
    Matches(Vec<u64>),
    /// The log gave up: check the whole read set.
    Lost,
}

impl RecentWrites {
    /// Sets a mark at `last_seqno`, the last seqno written. The caller holds the WAL lock.
    pub fn mark(self: &Arc<Self>, last_seqno: u64) -> Mark {
        let mut st = self.state.lock();
        *st.marks.entry(last_seqno).or_default() += 1;
        self.active.store(true, Ordering::Release);
        Mark {
            recent: self.clone(),
            seqno: last_seqno,
        }
    }

    /// Whether commit groups must record their keys. The caller holds the WAL lock.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Records the keys a commit group wrote, as (seqno, key hash) in seqno order. The
    /// caller holds the WAL lock.
    pub fn record(&self, written: impl IntoIterator<Item = (u64, u64)>) {
        let mut st = self.state.lock();
        if st.marks.is_empty() {
            return;
        }
        for e in written {
            if st.log.len() >= MAX_ENTRIES {
                let last = st.log.back().map_or(0, |&(s, _)| s);
                st.dropped_through = st.dropped_through.max(last);
                st.log = VecDeque::new();
            }
            st.log.push_back(e);
        }
    }

    /// The hashes in `read` of keys written after `mark`. The caller holds the WAL lock.
    pub fn since(&self, mark: u64, read: &HashSet<u64>) -> Since {
        let st = self.state.lock();
        if mark < st.dropped_through {
            return Since::Lost;
        }
        let from = st.log.partition_point(|&(s, _)| s <= mark);
        Since::Matches(
            st.log
                .range(from..)
                .filter(|(_, h)| read.contains(h))
                .map(|&(_, h)| h)
                .collect(),
        )
    }

    /// Entries held (for tests and statistics).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state.lock().log.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(s: Since) -> Vec<u64> {
        match s {
            Since::Matches(v) => v,
            Since::Lost => panic!("lost"),
        }
    }

    /// Writes are kept only while a mark needs them, each mark sees those after it, and
    /// the log lets go of what no mark needs.
    #[test]
    fn marks_see_the_writes_after_them() {
        let r = Arc::new(RecentWrites::default());
        r.record([(1, 10)]);
        assert_eq!(r.len(), 0, "nothing kept without a mark");
        let a = r.mark(1);
        assert!(r.active());
        r.record([(2, 20), (3, 30)]);
        let b = r.mark(3);
        r.record([(4, 40)]);
        let read: HashSet<u64> = [10, 20, 30, 40].into();
        assert_eq!(matches(r.since(a.seqno, &read)), [20, 30, 40]);
        assert_eq!(matches(r.since(b.seqno, &read)), [40]);
        assert_eq!(matches(r.since(b.seqno, &[20].into())), Vec::<u64>::new());
        drop(a);
        assert_eq!(r.len(), 1, "only what b needs is kept");
        assert_eq!(matches(r.since(b.seqno, &read)), [40]);
        drop(b);
        assert!(!r.active());
        assert_eq!(r.len(), 0);
    }

    /// A log that outgrows its room says so to the marks older than what it dropped, and
    /// goes on recording for those after it, while marks overlap without end.
    #[test]
    fn an_overflowing_log_is_lost_only_to_older_marks() {
        let r = Arc::new(RecentWrites::default());
        let m = r.mark(0);
        let n = MAX_ENTRIES as u64 + 1;
        r.record((1..=n).map(|s| (s, s)));
        assert!(matches!(r.since(m.seqno, &HashSet::new()), Since::Lost));
        let mut prev = m;
        for s in n..n + 5 {
            let next = r.mark(s);
            drop(prev);
            r.record([(s + 1, 7)]);
            assert_eq!(matches(r.since(next.seqno, &[7].into())), [7]);
            prev = next;
        }
        drop(prev);
        assert_eq!(r.len(), 0);
        assert!(!r.active());
    }
}
