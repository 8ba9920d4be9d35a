//! The memtable: a concurrent skiplist of internal entries, written by the commit leader (and
//! the lazy-move applier) and read by everyone without locks.
//!
//! Entries live in arenas (one for writes, one for lazy moves, so their two threads never
//! wait for each other): each entry's key and value are copied, back to back, into chunks
//! (1/64 of the memtable budget, at most 256 KiB), and the skiplist node holds a handle into
//! its chunk plus the seqno, kind and origin (48 bytes). An entry thus costs its bytes plus
//! a node of ~75 bytes, instead of a node, a buffer per write batch and that buffer's
//! reference count (~150 bytes over the entry's own): a memtable of a given budget holds
//! more entries, so flushes are larger and fewer, and compaction rewrites less. A chunk is
//! freed when the memtable is; values leave the engine as copies (see [`MemTable::get`] and
//! `cursor::Source`), so a caller holding one does not keep a chunk alive.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtOrd};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use crossbeam_skiplist::SkipMap;
use parking_lot::Mutex;

use crate::types::{cmp_internal, pack_trailer, Entry, Kind};

/// Bytes of one arena chunk, at most (a 16 MiB memtable uses 64 of them)...
const MAX_CHUNK: usize = 256 << 10;
/// ...and at least (a tiny memtable must still hold more than one chunk).
const MIN_CHUNK: usize = 1 << 10;

/// Per-entry memory charged against the memtable budget on top of the entry's bytes (which
/// are charged as arena chunks): the skiplist node (the [`MemKey`], a reference count and a
/// tower of 2 pointers on average), rounded up to the allocator's size classes.
/// Keeps the budget an honest bound on resident memory.
const NODE_OVERHEAD: usize = 80;

/// A borrowed view of an internal key, so lookups need not allocate.
pub(crate) trait KeyView {
    fn user(&self) -> &[u8];
    fn seqno(&self) -> u64;
}

/// One entry: its bytes (user key, then value) in the arena, and what describes them.
pub(crate) struct MemKey {
    kv: Bytes,
    klen: u32,
    /// For a lazily moved entry: the layout version it was moved out of (0 = a normal write).
    /// The flush that persists the entry also writes a forwarding pointer there.
    moved_from: u32,
    /// `seqno << 8 | kind`, as in SSTables.
    trailer: u64,
}

impl MemKey {
    fn key(&self) -> &[u8] {
        &self.kv[..self.klen as usize]
    }
    fn value(&self) -> &[u8] {
        &self.kv[self.klen as usize..]
    }
    fn kind(&self) -> Kind {
        Kind::from_u8(self.trailer as u8).expect("the memtable only stores valid kinds")
    }
    /// The entry as owned, zero-copy slices of its arena chunk (for the engine's own use).
    fn entry(&self) -> Entry {
        Entry {
            key: self.kv.slice(..self.klen as usize),
            seqno: self.trailer >> 8,
            kind: self.kind(),
            value: self.kv.slice(self.klen as usize..),
        }
    }
}

impl KeyView for MemKey {
    fn user(&self) -> &[u8] {
        self.key()
    }
    fn seqno(&self) -> u64 {
        self.trailer >> 8
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

impl<'a> Borrow<dyn KeyView + 'a> for MemKey {
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

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for MemKey {}
impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_internal(self.key(), self.seqno(), other.key(), other.seqno())
    }
}

/// A found entry: (seqno, kind, value).
pub(crate) type Found = (u64, Kind, Bytes);

pub struct MemTable {
    map: SkipMap<MemKey, ()>,
    /// The chunks entries are being copied into (their unused capacity): one for writes (the
    /// commit leader), one for lazy moves (their applier), so the two never wait for each
    /// other.
    arenas: [Mutex<BytesMut>; 2],
    /// Size of a new chunk; an entry of an eighth of that or more gets an allocation of its
    /// own rather than arena space.
    chunk: usize,
    bytes: AtomicUsize,
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
}

impl MemTable {
    /// A memtable for a budget of `budget_bytes` (which sizes its key filter).
    pub fn new(wal_number: u64, budget_bytes: usize) -> MemTable {
        MemTable {
            map: SkipMap::new(),
            arenas: [Mutex::new(BytesMut::new()), Mutex::new(BytesMut::new())],
            chunk: (budget_bytes / 64).clamp(MIN_CHUNK, MAX_CHUNK),
            bytes: AtomicUsize::new(0),
            min_seqno: Arc::new(AtomicU64::new(u64::MAX)),
            max_seqno: AtomicU64::new(0),
            wal_number,
            // About one bit per 16 budget bytes: well over ten bits per entry.
            filter: crate::sst::bloom::AtomicBloom::new(
                (budget_bytes / 16).clamp(8 << 10, 16 << 20),
            ),
            seeks: AtomicU64::new(0),
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

    /// Copies `key` then `value` into the arena (or, if large, an allocation of their own),
    /// charging new memory to the budget.
    fn stash(&self, arena: &Mutex<BytesMut>, key: &[u8], value: &[u8]) -> Bytes {
        let need = key.len() + value.len();
        if need >= self.chunk / 8 {
            let mut v = Vec::with_capacity(need);
            v.extend_from_slice(key);
            v.extend_from_slice(value);
            self.bytes.fetch_add(need, AtOrd::Relaxed);
            return Bytes::from(v);
        }
        let mut a = arena.lock();
        if a.capacity() < need {
            // What is left of the old chunk stays charged: it is freed with the memtable.
            *a = BytesMut::with_capacity(self.chunk);
            self.bytes.fetch_add(self.chunk, AtOrd::Relaxed);
        }
        a.extend_from_slice(key);
        a.extend_from_slice(value);
        a.split().freeze()
    }

    fn add(&self, key: &[u8], seqno: u64, kind: Kind, value: &[u8], moved_from: u32) {
        let kv = self.stash(&self.arenas[usize::from(moved_from != 0)], key, value);
        self.bytes.fetch_add(NODE_OVERHEAD, AtOrd::Relaxed);
        self.min_seqno.fetch_min(seqno, AtOrd::Relaxed);
        self.max_seqno.fetch_max(seqno, AtOrd::Relaxed);
        self.filter.insert(crate::sst::bloom::key_hash(key));
        self.map.insert(
            MemKey {
                kv,
                klen: key.len() as u32,
                moved_from,
                trailer: pack_trailer(seqno, kind),
            },
            (),
        );
    }

    /// Inserts a write. Key and value are copied into the memtable.
    pub fn insert(&self, key: &[u8], seqno: u64, kind: Kind, value: &[u8]) {
        self.add(key, seqno, kind, value, 0);
    }

    /// Inserts a lazily moved entry (original seqno and value) unless that exact entry is
    /// already present.
    pub fn insert_moved(&self, key: &[u8], seqno: u64, value: &[u8], from_version: u32) {
        let probe: (&[u8], u64) = (key, seqno);
        if self.map.contains_key(&probe as &dyn KeyView) {
            return;
        }
        self.add(key, seqno, Kind::Value, value, from_version);
    }

    /// The newest entry for `key` with seqno <= `snapshot`. The value is a copy: it leaves
    /// the memtable.
    pub fn get(&self, key: &[u8], snapshot: u64) -> Option<Found> {
        self.get_hashed(key, crate::sst::bloom::key_hash(key), snapshot)
    }

    /// [`MemTable::get`] with the key's filter hash already computed.
    pub fn get_hashed(&self, key: &[u8], h: u64, snapshot: u64) -> Option<Found> {
        self.find(key, h, snapshot, |k| {
            (k.seqno(), k.kind(), Bytes::copy_from_slice(k.value()))
        })
    }

    /// Whether an entry for `key` with seqno <= `snapshot` is present.
    fn holds(&self, key: &[u8], snapshot: u64) -> bool {
        self.find(key, crate::sst::bloom::key_hash(key), snapshot, |_| ())
            .is_some()
    }

    fn find<T>(
        &self,
        key: &[u8],
        h: u64,
        snapshot: u64,
        f: impl FnOnce(&MemKey) -> T,
    ) -> Option<T> {
        if !self.filter.may_contain(h) {
            return None;
        }
        let probe: (&[u8], u64) = (key, snapshot);
        let probe: &dyn KeyView = &probe;
        let e = self.map.lower_bound(Bound::Included(probe))?;
        if e.key().key() != key {
            return None;
        }
        Some(f(e.key()))
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
            f(e.key().entry(), e.key().moved_from);
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
            out.push(e.key().entry());
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
            out.push(e.key().entry());
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
        assert!(stored > 3 * m.chunk, "the test must span several chunks");
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
        let charged = m.approximate_bytes();
        assert!(
            charged >= stored + n * NODE_OVERHEAD,
            "{charged} < {stored} + nodes"
        );
        assert!(
            charged <= stored + n * NODE_OVERHEAD + 2 * m.chunk,
            "{charged}"
        );
    }

    /// The node overhead charged assumes this size (plus an 8-byte count and a tower of
    /// 8-byte pointers, two on average).
    #[test]
    fn a_node_key_is_48_bytes() {
        assert_eq!(std::mem::size_of::<MemKey>(), 48);
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
        // The chunk is shared by the node and the iterator's slice: dropping the memtable
        // must leave the returned value intact and unshared.
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
