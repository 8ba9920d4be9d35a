//! The memtable: a skiplist of internal entries ([`list`]), written by the commit leader
//! (and the lazy-move applier, one at a time) and read by everyone without locks.
//!
//! Each entry's node, key and value are packed into arena chunks (1/64 of the memtable
//! budget, at most 256 KiB; an entry of an eighth of a chunk or more gets a chunk of its
//! own), and the budget is charged by the chunk: a memtable of a given budget holds as many
//! entries as fit in it, so flushes are larger and fewer, and compaction rewrites less.
//! Chunks are freed with the memtable. Entries leave the memtable as copies, so nothing a
//! caller holds keeps a chunk alive.

mod list;

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering as AtOrd};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};

use crate::types::{Entry, Kind};
use list::{List, Node};

/// Bytes of one arena chunk, at most (a 16 MiB memtable uses 64 of them)...
const MAX_CHUNK: usize = 256 << 10;
/// ...and at least (a tiny memtable must still hold more than one chunk).
const MIN_CHUNK: usize = 1 << 10;
/// Entries copied out of the memtable share buffers of this size (or of the entry's).
const COPY_BLOCK: usize = 32 << 10;

/// A found entry: (seqno, kind, value).
pub(crate) type Found = (u64, Kind, Bytes);

/// Copies entries out of the memtable into shared buffers: one allocation per
/// [`COPY_BLOCK`], not per entry.
#[derive(Default)]
struct CopyOut {
    buf: BytesMut,
}

impl CopyOut {
    fn entry(&mut self, n: Node<'_>) -> Entry {
        let (klen, need) = (n.key_len(), n.key_len() + n.value_len());
        if self.buf.capacity() < need {
            self.buf = BytesMut::with_capacity(need.max(COPY_BLOCK));
        }
        n.copy_key(&mut self.buf);
        n.copy_value(&mut self.buf);
        let kv = self.buf.split().freeze();
        Entry {
            key: kv.slice(..klen),
            seqno: n.seqno(),
            kind: n.kind(),
            value: kv.slice(klen..),
        }
    }
}

pub struct MemTable {
    list: List,
    /// Smallest seqno in the table. Normal writes only raise seqnos; lazy moves insert entries
    /// with their original (older) seqno, and compaction must know that such an entry exists
    /// before it drops a tombstone. Shared with [`MemWatch`]es.
    min_seqno: Arc<AtomicU64>,
    max_seqno: AtomicU64,
    /// First WAL file number whose records are (partly) in this memtable.
    wal_number: u64,
    filter: crate::sst::bloom::AtomicBloom,
    /// Reads that had to search this memtable besides table runs (see
    /// [`MemTable::charge_seek`]).
    seeks: AtomicU64,
    /// What the lazily moved copies inserted ([`MemTable::insert_moved`]) will take on disk
    /// once flushed ([`MemTable::move_cost`] each): migration writes still to come, which
    /// the disk headroom must count before they are written (see `Inner::headroom_refusal`).
    moved_bytes: AtomicU64,
    /// The tables (layout version, partition) the flush of the moved copies writes: the
    /// copies' in the target and the pointers' in their sources. Each is charged its fixed
    /// cost in `moved_bytes` once ([`MemTable::charge_moved_table`]).
    moved_tables: parking_lot::Mutex<std::collections::HashSet<(u32, u32)>>,
    /// The draining partitions (layout version, partition) the moved copies came from.
    moved_sources: parking_lot::Mutex<std::collections::HashSet<(u32, u32)>>,
}

impl MemTable {
    /// A memtable for a budget of `budget_bytes` (which sizes its chunks and key filter).
    pub fn new(wal_number: u64, budget_bytes: usize) -> MemTable {
        MemTable {
            // The budget and a sixteenth: a memtable is rotated once it reaches its budget,
            // but the batch that reaches it goes in whole.
            list: List::new(
                budget_bytes.saturating_add(budget_bytes / 16),
                (budget_bytes / 64).clamp(MIN_CHUNK, MAX_CHUNK),
            ),
            min_seqno: Arc::new(AtomicU64::new(u64::MAX)),
            max_seqno: AtomicU64::new(0),
            wal_number,
            // About one bit per 16 budget bytes: well over ten bits per entry.
            filter: crate::sst::bloom::AtomicBloom::new(
                (budget_bytes / 16).clamp(8 << 10, 16 << 20),
            ),
            seeks: AtomicU64::new(0),
            moved_bytes: AtomicU64::new(0),
            moved_tables: Default::default(),
            moved_sources: Default::default(),
        }
    }

    /// Records a read that had to search this memtable besides table runs: a range scan
    /// that sought it (each such seek searches the skiplist from its top, cache misses all
    /// the way down), or a point read, while no writes arrive, that probed its filter and
    /// went on to tables. Once a memtable that takes no more writes has cost reads as many
    /// seeks as a table of its size may (`version::SEEK_COST_BYTES`), the WAL ticker
    /// freezes it, so it is flushed and reads stop paying for it.
    /// `units` as in [`crate::version::FileMeta::charge_seek`].
    pub fn charge_seek(&self, units: i64) {
        self.seeks.fetch_add(units.max(0) as u64, AtOrd::Relaxed);
    }

    pub fn seeks(&self) -> u64 {
        self.seeks.load(AtOrd::Relaxed)
    }

    pub fn wal_number(&self) -> u64 {
        self.wal_number
    }

    /// Adds an entry; false if that (key, seqno) was there already.
    fn add(&self, key: &[u8], seqno: u64, kind: Kind, value: &[u8], moved_from: u32) -> bool {
        // The filter and seqno range first: a reader that finds the entry in the list must
        // not be told by the filter that it is absent.
        self.min_seqno.fetch_min(seqno, AtOrd::Relaxed);
        self.max_seqno.fetch_max(seqno, AtOrd::Relaxed);
        self.filter.insert(crate::sst::bloom::key_hash(key));
        self.list.insert(key, seqno, kind, value, moved_from)
    }

    /// Inserts a write. Key and value are copied into the memtable.
    pub fn insert(&self, key: &[u8], seqno: u64, kind: Kind, value: &[u8]) {
        self.add(key, seqno, kind, value, 0);
    }

    /// Inserts a lazily moved entry (original seqno and value) unless that exact entry is
    /// already present (as any entry: one (key, seqno) is one write); whether it inserted.
    /// Its flush's cost is counted before it goes in (a headroom check meanwhile sees it),
    /// and taken back if it did not.
    pub fn insert_moved(&self, key: &[u8], seqno: u64, value: &[u8], from_version: u32) -> bool {
        let cost = Self::move_cost(key.len(), value.len());
        self.moved_bytes.fetch_add(cost, AtOrd::Relaxed);
        let inserted = self.add(key, seqno, Kind::Value, value, from_version);
        if !inserted {
            self.moved_bytes.fetch_sub(cost, AtOrd::Relaxed);
        }
        inserted
    }

    /// What a flush writes for one lazily moved entry: the copy in the target (key, value,
    /// and their encoding: lengths, seqno, offset, filter bits, a share of the index) and
    /// the forwarding pointer in its source (the key again, the target's id, the same
    /// encoding).
    pub fn move_cost(key: usize, value: usize) -> u64 {
        (2 * key as u64)
            .saturating_add(value as u64)
            .saturating_add(64)
    }

    /// Whether the flush of the moved copies writes a table in `partition` of layout
    /// `version` already (its fixed cost is counted).
    pub fn has_moved_table(&self, version: u32, partition: u32) -> bool {
        self.moved_tables.lock().contains(&(version, partition))
    }

    /// Counts `cost` (a table's fixed cost) into [`MemTable::moved_bytes`] the first time a
    /// moved copy's flush writes into `partition` of layout `version`.
    pub fn charge_moved_table(&self, version: u32, partition: u32, cost: u64) {
        if self.moved_tables.lock().insert((version, partition)) {
            self.moved_bytes.fetch_add(cost, AtOrd::Relaxed);
        }
    }

    /// Records that a moved copy came from `partition` of layout `version`.
    pub fn note_moved_source(&self, version: u32, partition: u32) {
        self.moved_sources.lock().insert((version, partition));
    }

    /// The draining partitions (layout version, partition) the moved copies came from.
    pub fn moved_sources(&self) -> Vec<(u32, u32)> {
        self.moved_sources.lock().iter().copied().collect()
    }

    /// What the lazily moved copies inserted so far take once flushed (with the fixed cost
    /// of the tables they go into).
    pub fn moved_bytes(&self) -> u64 {
        self.moved_bytes.load(AtOrd::Relaxed)
    }

    /// The newest entry for `key` with seqno <= `snapshot`. The value is a copy: it leaves
    /// the memtable.
    pub fn get(&self, key: &[u8], snapshot: u64) -> Option<Found> {
        self.get_hashed(key, crate::sst::bloom::key_hash(key), snapshot)
    }

    /// [`MemTable::get`] with the key's filter hash already computed.
    pub fn get_hashed(&self, key: &[u8], h: u64, snapshot: u64) -> Option<Found> {
        self.find(key, h, snapshot, |n| {
            let mut v = Vec::with_capacity(n.value_len());
            n.copy_value(&mut v);
            (n.seqno(), n.kind(), Bytes::from(v))
        })
    }

    /// Whether an entry for `key` with seqno <= `snapshot` is present.
    fn holds(&self, key: &[u8], snapshot: u64) -> bool {
        self.find(key, crate::sst::bloom::key_hash(key), snapshot, |_| ())
            .is_some()
    }

    fn find<T>(&self, key: &[u8], h: u64, snapshot: u64, f: impl FnOnce(Node) -> T) -> Option<T> {
        // An empty memtable (after a flush, in a read-mostly stretch) is not probed: its
        // filter is sized for the whole budget (128 KiB for the default 16 MiB), and a probe is
        // a load from a random line of that, which no read needs.
        if self.is_empty() || !self.filter.may_contain(h) {
            return None;
        }
        let n = self
            .list
            .first_from(|n| n.cmp_internal(key, snapshot) == Ordering::Less)?;
        (n.cmp_key(key) == Ordering::Equal).then(|| f(n))
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

    /// Memory the memtable holds: its arena chunks, entries and nodes included.
    pub fn approximate_bytes(&self) -> usize {
        self.list.bytes()
    }

    /// Entries inserted so far.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
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
        let mut out = CopyOut::default();
        let mut n = self.list.first();
        while let Some(node) = n {
            // The next node's address is in this one: its load overlaps this entry's work.
            n = self.list.next(node);
            if let Some(next) = &n {
                next.prefetch();
            }
            f(out.entry(node), node.moved_from());
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
        let l = &self.list;
        let mut n = match (after, start) {
            (Some((k, s)), _) => l.first_from(|n| n.cmp_internal(k, s) != Ordering::Greater),
            (None, Bound::Included(k)) => l.first_from(|n| n.cmp_key(k) == Ordering::Less),
            (None, Bound::Excluded(k)) => l.first_from(|n| n.cmp_key(k) != Ordering::Greater),
            (None, Bound::Unbounded) => l.first(),
        };
        let past_end = |n: Node| match end {
            Bound::Included(k) => n.cmp_key(k) == Ordering::Greater,
            Bound::Excluded(k) => n.cmp_key(k) != Ordering::Less,
            Bound::Unbounded => false,
        };
        let mut copy = CopyOut::default();
        for _ in 0..limit {
            let Some(node) = n.filter(|&node| !past_end(node)) else {
                break;
            };
            n = l.next(node);
            if let Some(next) = &n {
                next.prefetch();
            }
            out.push(copy.entry(node));
        }
    }

    /// Like [`chunk_forward`](Self::chunk_forward) walking backwards from `before` (or `end`),
    /// not beyond `start`; entries come out in reverse internal order. (Each step back is a
    /// search from the top: the list has no back links.)
    pub(crate) fn chunk_backward(
        &self,
        before: Option<(&[u8], u64)>,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        out: &mut Vec<Entry>,
    ) {
        let l = &self.list;
        let mut n = match (before, end) {
            (Some((k, s)), _) => l.last_before(|n| n.cmp_internal(k, s) == Ordering::Less),
            (None, Bound::Included(k)) => l.last_before(|n| n.cmp_key(k) != Ordering::Greater),
            (None, Bound::Excluded(k)) => l.last_before(|n| n.cmp_key(k) == Ordering::Less),
            (None, Bound::Unbounded) => l.last_before(|_| true),
        };
        let past_start = |n: Node| match start {
            Bound::Included(k) => n.cmp_key(k) == Ordering::Less,
            Bound::Excluded(k) => n.cmp_key(k) != Ordering::Greater,
            Bound::Unbounded => false,
        };
        let mut copy = CopyOut::default();
        for _ in 0..limit {
            let Some(node) = n.filter(|&node| !past_start(node)) else {
                break;
            };
            let e = copy.entry(node);
            n = l.last_before(|n| n.cmp_internal(&e.key, e.seqno) == Ordering::Less);
            out.push(e);
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
            Some(m) => m.holds(key, seqno - 1),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::cmp_internal;
    use std::ops::RangeBounds;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn get_sees_newest_at_snapshot() {
        let m = MemTable::new(1, 1 << 20);
        m.insert(b"k", 5, Kind::Value, b"v5");
        m.insert(b"k", 9, Kind::Delete, b"");
        m.insert(b"j", 7, Kind::Value, b"j7");
        assert_eq!(m.get(b"k", 100).unwrap().1, Kind::Delete);
        assert_eq!(m.get(b"k", 8).unwrap().2, b("v5"));
        assert!(m.get(b"k", 4).is_none());
        assert!(m.get(b"kk", 100).is_none());
        assert_eq!(m.min_seqno(), 5);
    }

    #[test]
    fn moved_entries_keep_original_seqno_and_lower_min() {
        let m = MemTable::new(1, 1 << 20);
        m.insert(b"a", 50, Kind::Value, b"new");
        m.insert_moved(b"b", 3, b"old", 1);
        m.insert_moved(b"b", 3, b"old", 1);
        assert_eq!(m.len(), 2);
        // The copy refused as already there is not counted as a write to come.
        assert_eq!(m.moved_bytes(), MemTable::move_cost(1, 3));
        assert_eq!(m.min_seqno(), 3);
        assert_eq!(m.get(b"b", 100).unwrap().0, 3);
    }

    #[test]
    fn a_watch_does_not_keep_the_memtable_and_stays_safe_after_it_is_gone() {
        let plain = Arc::new(MemTable::new(1, 1 << 20));
        plain.insert(b"k", 50, Kind::Value, b"v");
        let moved = Arc::new(MemTable::new(1, 1 << 20));
        moved.insert(b"a", 60, Kind::Value, b"v");
        moved.insert_moved(b"k", 3, b"old", 1);
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
            m.insert(format!("k{i}").as_bytes(), i + 1, Kind::Value, b"v");
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

    /// Point reads right where a writer is inserting: a key present before the read began is
    /// always found, and a read at a snapshot never sees an entry newer than it. (A search
    /// that re-read its last link returned a node inserted meanwhile, ahead of the key.)
    #[test]
    fn reads_at_the_insertion_point_find_present_keys_at_their_snapshot() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let m = Arc::new(MemTable::new(1, 64 << 20));
        let n = 60_000usize;
        let key = |i: usize| format!("key{i:08}").into_bytes();
        for i in (0..2 * n).step_by(2) {
            m.insert(&key(i), 1, Kind::Value, b"old");
        }
        let pos = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (m, pos, done) = (m.clone(), pos.clone(), done.clone());
            std::thread::spawn(move || {
                let mut gets = 0u64;
                while !done.load(AtOrd::Relaxed) {
                    let p = pos.load(AtOrd::Relaxed) & !1;
                    for i in (p..(p + 8).min(2 * n)).step_by(2) {
                        gets += 1;
                        let at_1 = m.get(&key(i), 1);
                        assert!(
                            matches!(&at_1, Some((1, Kind::Value, v)) if v.as_ref() == b"old"),
                            "key {i} at snapshot 1: {at_1:?}"
                        );
                        assert!(m.get(&key(i), u64::MAX).is_some(), "key {i} missed");
                    }
                }
                gets
            })
        };
        // Odd keys appear between the even ones, and even keys get newer versions.
        for i in 1..2 * n {
            pos.store(i, AtOrd::Relaxed);
            m.insert(&key(i), 2, Kind::Value, b"new");
        }
        done.store(true, AtOrd::Relaxed);
        let gets = reader.join().unwrap();
        assert!(gets > 1000, "the reader ran only {gets} gets");
    }

    /// Every kind of bound, both directions, walked in chunks of every size, against a
    /// sorted model: keys around word boundaries, each at several seqnos.
    #[test]
    fn chunks_honour_every_bound_against_a_model() {
        let keys = crate::types::tricky_keys();
        let m = MemTable::new(1, 1 << 20);
        let mut model = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for s in 0..1 + i as u64 % 3 {
                let seqno = 10 * i as u64 + s + 1;
                m.insert(k, seqno, Kind::Value, &seqno.to_be_bytes());
                model.push((k.clone(), seqno));
            }
        }
        model.sort_by(|a, b| cmp_internal(&a.0, a.1, &b.0, b.1));
        let walk = |start: Bound<&[u8]>, end: Bound<&[u8]>, back: bool, limit: usize| {
            let mut got: Vec<(Vec<u8>, u64)> = Vec::new();
            loop {
                let mut out = Vec::new();
                let last = got.last().map(|(k, s)| (k.as_slice(), *s));
                if back {
                    m.chunk_backward(last, start, end, limit, &mut out);
                } else {
                    m.chunk_forward(last, start, end, limit, &mut out);
                }
                for e in &out {
                    assert_eq!(e.value.as_ref(), e.seqno.to_be_bytes());
                }
                let n = out.len();
                got.extend(out.into_iter().map(|e| (e.key.to_vec(), e.seqno)));
                if n < limit {
                    return got;
                }
            }
        };
        for lo in [0, 3, 9, 20] {
            for hi in [lo, lo + 2, keys.len() - 1] {
                let (a, b) = (keys[lo].as_slice(), keys[hi].as_slice());
                for (start, end) in [
                    (Bound::Included(a), Bound::Included(b)),
                    (Bound::Excluded(a), Bound::Excluded(b)),
                    (Bound::Included(a), Bound::Unbounded),
                    (Bound::Unbounded, Bound::Excluded(b)),
                ] {
                    let want: Vec<_> = model
                        .iter()
                        .filter(|(k, _)| RangeBounds::<[u8]>::contains(&(start, end), k.as_slice()))
                        .cloned()
                        .collect();
                    for limit in [1, 2, 7, 1000] {
                        assert_eq!(walk(start, end, false, limit), want, "{start:?}..{end:?}");
                        let mut rev = walk(start, end, true, limit);
                        rev.reverse();
                        assert_eq!(rev, want, "back {start:?}..{end:?}");
                    }
                }
            }
        }
    }

    /// Entries fill several arena chunks (and a few take allocations of their own), and
    /// every one reads back exactly; the budget charged covers what the arena holds.
    #[test]
    fn entries_across_arena_chunks_and_large_ones_read_back() {
        let m = MemTable::new(1, 64 << 20);
        let value = |i: usize| -> Vec<u8> {
            let len = if i.is_multiple_of(97) {
                MAX_CHUNK / 8 + i
            } else {
                i % 300
            };
            (0..len).map(|j| (i * 31 + j) as u8).collect()
        };
        let n = 5000;
        let mut stored = 0;
        for i in 0..n {
            let k = format!("key{i:06}");
            let v = value(i);
            stored += k.len() + v.len();
            m.insert(k.as_bytes(), i as u64 + 1, Kind::Value, &v);
        }
        assert!(stored > 3 * MAX_CHUNK, "the test must span several chunks");
        for i in 0..n {
            let (seqno, kind, v) = m.get(format!("key{i:06}").as_bytes(), u64::MAX).unwrap();
            assert_eq!((seqno, kind), (i as u64 + 1, Kind::Value));
            assert_eq!(v.as_ref(), value(i).as_slice(), "key{i:06}");
        }
        let mut seen = 0;
        m.for_each(|e, moved| {
            assert_eq!(e.value.as_ref(), value(seen).as_slice());
            assert_eq!(moved, 0);
            seen += 1;
        });
        assert_eq!(seen, n);
        // Each node: 3 header words and at least one link.
        let charged = m.approximate_bytes();
        assert!(charged >= stored + n * 32, "{charged} < {stored} + nodes");
    }

    /// The budget charged per entry, of a 16-byte key and a 100-byte value: its bytes, three
    /// header words, 4/3 links on average, padding to a word and the chunks' unused tails.
    /// (A general-purpose skiplist node with a handle into a byte arena took ~195.)
    #[test]
    fn an_entry_of_116_bytes_costs_about_155() {
        let m = MemTable::new(1, 64 << 20);
        let n = 100_000;
        for i in 0..n {
            let k = format!("key{:013}", (i * 7919) % n);
            m.insert(k.as_bytes(), i as u64 + 1, Kind::Value, &[7u8; 100]);
        }
        let per = m.approximate_bytes() as f64 / n as f64;
        assert!((145.0..165.0).contains(&per), "{per} bytes per entry");
    }

    /// A value read out of the memtable is a copy: holding it keeps no arena chunk alive.
    #[test]
    fn a_value_read_out_does_not_pin_the_arena() {
        let m = MemTable::new(1, 1 << 20);
        m.insert(b"k", 1, Kind::Value, b"v");
        let (_, _, v) = m.get(b"k", 10).unwrap();
        let mut out = Vec::new();
        m.chunk_forward(None, Bound::Unbounded, Bound::Unbounded, 10, &mut out);
        let arena_slice = out.pop().unwrap().value;
        // Dropping the memtable must leave both intact, and the returned value unshared.
        drop(m);
        assert_eq!(v.as_ref(), b"v");
        assert_eq!(arena_slice.as_ref(), b"v");
        assert!(v.is_unique(), "get() handed out a slice of the arena");
    }

    /// The write path through the arena, end to end: values of every size around the chunk
    /// size (the memtable here uses 4 KiB chunks; values of 512 bytes or more get their own
    /// allocation), through memtable rotations and flushes, then a power cut. Everything
    /// written before the last synced write comes back, byte for byte, from tables or from
    /// the WAL replayed into a new memtable.
    #[test]
    fn entries_of_every_size_survive_flushes_and_a_power_cut() {
        use crate::fs::FaultFs;
        use crate::{Db, Options, WriteOptions};
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let opts = || Options {
            fs: Arc::new(fs.clone()),
            memtable_bytes: 256 << 10,
            ..Options::default()
        };
        let value = |i: usize| -> Vec<u8> { (0..(i * 37) % 5000).map(|j| (i + j) as u8).collect() };
        let db = Db::open(dir.path(), opts()).unwrap();
        let n = 3000;
        for i in 0..n {
            db.put(format!("k{i:05}"), value(i)).unwrap();
            if i == n / 2 {
                db.flush().unwrap();
            }
        }
        let mut last = crate::WriteBatch::new();
        last.put("last", "synced");
        db.write_opt(last, &WriteOptions { sync: true }).unwrap();
        assert!(db.stats().flushes > 2, "the test must rotate memtables");
        fs.power_cut(db).unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        for i in 0..n {
            let got = db.get(format!("k{i:05}")).unwrap();
            assert_eq!(got.as_deref(), Some(value(i).as_slice()), "k{i:05}");
        }
        assert_eq!(db.get("last").unwrap().as_deref(), Some(&b"synced"[..]));
    }
}
