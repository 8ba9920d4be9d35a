//! The memtable: a concurrent skiplist of internal entries, written by the commit leader and
//! read by everyone without locks.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtOrd};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;

use crate::types::{cmp_internal, Entry, InternalKey, Kind};

/// Per-entry memory charged against the memtable budget on top of key and value bytes:
/// the skiplist node (key and value handles, seqno, tower) and the batch buffer's share.
/// Measured, not guessed: keeps the budget an honest bound on resident memory.
const NODE_OVERHEAD: usize = 160;

/// A borrowed view of an internal key, so lookups need not allocate.
pub(crate) trait KeyView {
    fn user(&self) -> &[u8];
    fn seqno(&self) -> u64;
}

impl KeyView for InternalKey {
    fn user(&self) -> &[u8] {
        &self.user
    }
    fn seqno(&self) -> u64 {
        self.seqno
    }
}

impl KeyView for (&[u8], u64) {
    fn user(&self) -> &[u8] {
        self.0
    }
    fn seqno(&self) -> u64 {
        self.1
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for InternalKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for dyn KeyView + '_ {}
impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_internal(self.user(), self.seqno(), other.user(), other.seqno())
    }
}

/// What the memtable holds for one internal key.
#[derive(Clone, Debug)]
pub(crate) struct MemValue {
    pub kind: Kind,
    pub value: Bytes,
    /// For a lazily moved entry: the layout version it was moved out of (0 = a normal write).
    /// The flush that persists the entry also writes a forwarding pointer there.
    pub moved_from: u32,
}

/// A found entry: (seqno, kind, value).
pub(crate) type Found = (u64, Kind, Bytes);

pub struct MemTable {
    map: SkipMap<InternalKey, MemValue>,
    bytes: AtomicUsize,
    /// Smallest seqno in the table. Normal writes only raise seqnos; lazy moves insert entries
    /// with their original (older) seqno, and compaction must know that such an entry exists
    /// before it drops a tombstone. Shared with [`MemWatch`]es.
    min_seqno: Arc<AtomicU64>,
    max_seqno: AtomicU64,
    /// First WAL file number whose records are (partly) in this memtable.
    wal_number: u64,
    filter: crate::sst::bloom::AtomicBloom,
}

impl MemTable {
    /// A memtable for a budget of `budget_bytes` (which sizes its key filter).
    pub fn new(wal_number: u64, budget_bytes: usize) -> MemTable {
        MemTable {
            map: SkipMap::new(),
            bytes: AtomicUsize::new(0),
            min_seqno: Arc::new(AtomicU64::new(u64::MAX)),
            max_seqno: AtomicU64::new(0),
            wal_number,
            // About one bit per 16 budget bytes: well over ten bits per entry.
            filter: crate::sst::bloom::AtomicBloom::new(
                (budget_bytes / 16).clamp(8 << 10, 16 << 20),
            ),
        }
    }

    pub fn wal_number(&self) -> u64 {
        self.wal_number
    }

    pub fn insert(&self, key: Bytes, seqno: u64, kind: Kind, value: Bytes) {
        self.bytes
            .fetch_add(key.len() + value.len() + NODE_OVERHEAD, AtOrd::Relaxed);
        self.min_seqno.fetch_min(seqno, AtOrd::Relaxed);
        self.max_seqno.fetch_max(seqno, AtOrd::Relaxed);
        self.filter.insert(crate::sst::bloom::key_hash(&key));
        self.map.insert(
            InternalKey { user: key, seqno },
            MemValue {
                kind,
                value,
                moved_from: 0,
            },
        );
    }

    /// Inserts a lazily moved entry (original seqno and value) unless that exact entry is
    /// already present.
    pub fn insert_moved(&self, key: Bytes, seqno: u64, value: Bytes, from_version: u32) {
        let probe: (&[u8], u64) = (&key, seqno);
        if self.map.contains_key(&probe as &dyn KeyView) {
            return;
        }
        self.bytes
            .fetch_add(key.len() + value.len() + NODE_OVERHEAD, AtOrd::Relaxed);
        self.min_seqno.fetch_min(seqno, AtOrd::Relaxed);
        self.max_seqno.fetch_max(seqno, AtOrd::Relaxed);
        self.filter.insert(crate::sst::bloom::key_hash(&key));
        self.map.insert(
            InternalKey { user: key, seqno },
            MemValue {
                kind: Kind::Value,
                value,
                moved_from: from_version,
            },
        );
    }

    /// The newest entry for `key` with seqno <= `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: u64) -> Option<Found> {
        self.get_hashed(key, crate::sst::bloom::key_hash(key), snapshot)
    }

    /// [`MemTable::get`] with the key's filter hash already computed.
    pub fn get_hashed(&self, key: &[u8], h: u64, snapshot: u64) -> Option<Found> {
        if !self.filter.may_contain(h) {
            return None;
        }
        let probe: (&[u8], u64) = (key, snapshot);
        let probe: &dyn KeyView = &probe;
        let e = self.map.lower_bound(Bound::Included(probe))?;
        if e.key().user.as_ref() != key {
            return None;
        }
        let v = e.value();
        Some((e.key().seqno, v.kind, v.value.clone()))
    }

    /// A view of this memtable for a long job (a compaction) that must not keep it alive:
    /// a flushed memtable's memory is no longer charged against the memory budget, and a
    /// compaction can run for seconds while several memtables are flushed.
    pub(crate) fn watch(self: &Arc<Self>) -> MemWatch {
        MemWatch {
            mem: Arc::downgrade(self),
            min_seqno: self.min_seqno.clone(),
        }
    }

    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(AtOrd::Relaxed)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Smallest seqno present, or `u64::MAX` when empty.
    pub fn min_seqno(&self) -> u64 {
        self.min_seqno.load(AtOrd::Relaxed)
    }

    pub fn max_seqno(&self) -> u64 {
        self.max_seqno.load(AtOrd::Relaxed)
    }

    /// Every entry in internal order, with the version each moved entry came from.
    pub(crate) fn for_each(&self, mut f: impl FnMut(Entry, u32)) {
        for e in self.map.iter() {
            let v = e.value();
            f(
                Entry {
                    key: e.key().user.clone(),
                    seqno: e.key().seqno,
                    kind: v.kind,
                    value: v.value.clone(),
                },
                v.moved_from,
            );
        }
    }

    /// Up to `limit` entries in internal order strictly after `after` (or from `start`), and
    /// not beyond `end`. Iterators pull the memtable in chunks so that they need not borrow it.
    pub(crate) fn chunk_forward(
        &self,
        after: Option<(&[u8], u64)>,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        out: &mut Vec<Entry>,
    ) {
        let lo_probe;
        let lo: Bound<&dyn KeyView> = match (after, start) {
            (Some(a), _) => {
                lo_probe = a;
                Bound::Excluded(&lo_probe as &dyn KeyView)
            }
            (None, Bound::Included(k)) => {
                lo_probe = (k, u64::MAX);
                Bound::Included(&lo_probe as &dyn KeyView)
            }
            (None, Bound::Excluded(k)) => {
                lo_probe = (k, 0);
                Bound::Excluded(&lo_probe as &dyn KeyView)
            }
            (None, Bound::Unbounded) => Bound::Unbounded,
        };
        let hi_probe;
        let hi: Bound<&dyn KeyView> = match end {
            Bound::Included(k) => {
                hi_probe = (k, 0);
                Bound::Included(&hi_probe as &dyn KeyView)
            }
            Bound::Excluded(k) => {
                hi_probe = (k, u64::MAX);
                Bound::Excluded(&hi_probe as &dyn KeyView)
            }
            Bound::Unbounded => Bound::Unbounded,
        };
        for e in self.map.range::<dyn KeyView, _>((lo, hi)).take(limit) {
            let v = e.value();
            out.push(Entry {
                key: e.key().user.clone(),
                seqno: e.key().seqno,
                kind: v.kind,
                value: v.value.clone(),
            });
        }
    }

    /// Like [`chunk_forward`](Self::chunk_forward) walking backwards from `before` (or `end`),
    /// not beyond `start`; entries come out in reverse internal order.
    pub(crate) fn chunk_backward(
        &self,
        before: Option<(&[u8], u64)>,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        out: &mut Vec<Entry>,
    ) {
        let hi_probe;
        let hi: Bound<&dyn KeyView> = match (before, end) {
            (Some(b), _) => {
                hi_probe = b;
                Bound::Excluded(&hi_probe as &dyn KeyView)
            }
            (None, Bound::Included(k)) => {
                hi_probe = (k, 0);
                Bound::Included(&hi_probe as &dyn KeyView)
            }
            (None, Bound::Excluded(k)) => {
                hi_probe = (k, u64::MAX);
                Bound::Excluded(&hi_probe as &dyn KeyView)
            }
            (None, Bound::Unbounded) => Bound::Unbounded,
        };
        let lo_probe;
        let lo: Bound<&dyn KeyView> = match start {
            Bound::Included(k) => {
                lo_probe = (k, u64::MAX);
                Bound::Included(&lo_probe as &dyn KeyView)
            }
            Bound::Excluded(k) => {
                lo_probe = (k, 0);
                Bound::Excluded(&lo_probe as &dyn KeyView)
            }
            Bound::Unbounded => Bound::Unbounded,
        };
        for e in self.map.range::<dyn KeyView, _>((lo, hi)).rev().take(limit) {
            let v = e.value();
            out.push(Entry {
                key: e.key().user.clone(),
                seqno: e.key().seqno,
                kind: v.kind,
                value: v.value.clone(),
            });
        }
    }
}

/// A memtable watched by a compaction, without keeping it alive (see [`MemTable::watch`]).
pub(crate) struct MemWatch {
    mem: Weak<MemTable>,
    min_seqno: Arc<AtomicU64>,
}

impl MemWatch {
    /// Whether the memtable may hold an entry for `key` older than `seqno`. Only lazily
    /// moved entries are older than what is already in tables; a memtable that never held
    /// one answers `false` even once it is gone, and a gone memtable that did answers
    /// `true` (its entries now sit in a table the watcher cannot see: assume the worst).
    pub fn may_hold_older(&self, key: &[u8], seqno: u64) -> bool {
        if seqno == 0 || self.min_seqno.load(AtOrd::Relaxed) >= seqno {
            return false;
        }
        match self.mem.upgrade() {
            Some(m) => m.get(key, seqno - 1).is_some(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn get_sees_newest_at_snapshot() {
        let m = MemTable::new(1, 1 << 20);
        m.insert(b("k"), 5, Kind::Value, b("v5"));
        m.insert(b("k"), 9, Kind::Delete, Bytes::new());
        m.insert(b("j"), 7, Kind::Value, b("j7"));
        assert_eq!(m.get(b"k", 100).unwrap().1, Kind::Delete);
        assert_eq!(m.get(b"k", 8).unwrap().2, b("v5"));
        assert!(m.get(b"k", 4).is_none());
        assert!(m.get(b"kk", 100).is_none());
        assert_eq!(m.min_seqno(), 5);
    }

    #[test]
    fn moved_entries_keep_original_seqno_and_lower_min() {
        let m = MemTable::new(1, 1 << 20);
        m.insert(b("a"), 50, Kind::Value, b("new"));
        m.insert_moved(b("b"), 3, b("old"), 1);
        m.insert_moved(b("b"), 3, b("old"), 1);
        assert_eq!(m.len(), 2);
        assert_eq!(m.min_seqno(), 3);
        assert_eq!(m.get(b"b", 100).unwrap().0, 3);
    }

    #[test]
    fn a_watch_does_not_keep_the_memtable_and_stays_safe_after_it_is_gone() {
        let plain = Arc::new(MemTable::new(1, 1 << 20));
        plain.insert(b("k"), 50, Kind::Value, b("v"));
        let moved = Arc::new(MemTable::new(1, 1 << 20));
        moved.insert(b("a"), 60, Kind::Value, b("v"));
        moved.insert_moved(b("k"), 3, b("old"), 1);
        let (wp, wm) = (plain.watch(), moved.watch());
        // Live: exact answers.
        assert!(!wp.may_hold_older(b"k", 40), "nothing below seqno 50");
        assert!(wm.may_hold_older(b"k", 10), "the moved entry at seqno 3");
        assert!(!wm.may_hold_older(b"j", 10), "no entry for j");
        assert_eq!(Arc::strong_count(&plain), 1, "a watch holds no reference");
        drop(plain);
        drop(moved);
        // Gone: a memtable that never held an older entry still answers no; one that did
        // answers yes, whatever the key.
        assert!(!wp.may_hold_older(b"k", 40));
        assert!(wm.may_hold_older(b"j", 10));
        assert!(
            !wm.may_hold_older(b"k", 3),
            "nothing below its minimum seqno 3"
        );
    }

    #[test]
    fn chunks_walk_both_ways() {
        let m = MemTable::new(1, 1 << 20);
        for i in 0..10u64 {
            m.insert(b(&format!("k{i}")), i + 1, Kind::Value, b("v"));
        }
        let mut out = Vec::new();
        m.chunk_forward(
            None,
            Bound::Included(b"k2"),
            Bound::Excluded(b"k6"),
            2,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        let last = out.last().unwrap().clone();
        m.chunk_forward(
            Some((&last.key, last.seqno)),
            Bound::Included(b"k2"),
            Bound::Excluded(b"k6"),
            100,
            &mut out,
        );
        let keys: Vec<_> = out.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, vec![b("k2"), b("k3"), b("k4"), b("k5")]);
        let mut back = Vec::new();
        m.chunk_backward(
            None,
            Bound::Included(b"k2"),
            Bound::Included(b"k6"),
            100,
            &mut back,
        );
        let keys: Vec<_> = back.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, vec![b("k6"), b("k5"), b("k4"), b("k3"), b("k2")]);
    }
}
