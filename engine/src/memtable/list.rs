//! The memtable's skiplist: nodes and their bytes packed into an arena of 64-bit words,
//! linked by word addresses, read without locks by any number of threads while one writer
//! at a time inserts.
//!
//! The arena is one region of the memtable's budget, so following a link is one indexed
//! load; what does not fit in it (the last batch past the budget) goes to overflow chunks
//! found through a chunk table. Chunk tables cost dependent loads on every hop: with chunks
//! alone, an insert took ~2.5× as long. The region is an anonymous memory map, not a heap
//! allocation: it is zero without being written (its pages become resident as nodes fill
//! them) and goes back to the system when the memtable is dropped, whatever the allocator.
//! (A zeroed heap allocation of that size, from an allocator that reuses freed memory for it,
//! is cleared byte by byte at creation, inside a memtable rotation, and is then resident
//! whole however little the memtable holds.)
//!
//! A node is, in words: the trailer (`seqno << 8 | kind`), the key and value lengths, the
//! layout version a lazily moved entry came from with the node's height, its `height` next
//! links, then the key and value bytes back to back, packed big-endian eight to a word (so
//! that comparing a key is comparing words). An entry of a 16-byte key and a 100-byte value
//! takes ~155 bytes; as a node of a general-purpose concurrent skiplist holding a handle into
//! a byte arena it took ~195.
//!
//! Words are atomics (the region's one `unsafe` is its view as atomics, see [`Region`]): a
//! writer fills a node with relaxed stores and publishes it with a release store of the link
//! that leads to it; a reader that acquire-loads that link sees the node whole. Nodes are never changed after they are
//! linked, except for links to later nodes, and never freed before the list is.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtOrd};
use std::sync::OnceLock;

use bytes::BufMut;
use parking_lot::Mutex;

use crate::types::Kind;

/// Tallest tower. With a branching factor of 4, enough for 4^12 = 16M entries per memtable.
const MAX_HEIGHT: usize = 12;
/// Words before the links: trailer, lengths, moved-from and height.
const HEADER: usize = 3;
/// Address of the head node: word 0 of the region. (A node at word `w` of the region has
/// address `w`; one in overflow chunk `c` at word `w`, `OVERFLOW | c << 32 | w`.) No link
/// points to the head, so a link of 0 means "none".
const HEAD: u64 = 0;
const OVERFLOW: u64 = 1 << 63;
const NONE: u64 = 0;
/// Chunk-table segments: segment `s` holds `2^s` chunks, so 32 of them address 2^32 chunks.
const SEGMENTS: usize = 32;

type Chunk = Box<[AtomicU64]>;

/// The chunk table: chunks are added while readers look others up, without locks.
struct Chunks {
    segments: [OnceLock<Box<[OnceLock<Chunk>]>>; SEGMENTS],
}

impl Chunks {
    fn locate(i: u32) -> (usize, usize) {
        let n = i as u64 + 1;
        let s = 63 - n.leading_zeros() as usize;
        (s, (n - (1 << s)) as usize)
    }

    fn get(&self, i: u32) -> &[AtomicU64] {
        let (s, off) = Self::locate(i);
        self.segments[s]
            .get()
            .and_then(|seg| seg[off].get())
            .expect("a linked node's chunk is published before the link")
    }

    /// Installs chunk `i` (the writer's next index).
    fn set(&self, i: u32, chunk: Chunk) {
        let (s, off) = Self::locate(i);
        let seg =
            self.segments[s].get_or_init(|| (0..1usize << s).map(|_| OnceLock::new()).collect());
        assert!(seg[off].set(chunk).is_ok(), "chunk {i} installed twice");
    }
}

/// The region: anonymous memory, zero until written, unmapped when dropped, and accessed
/// only as atomic words.
struct Region {
    /// A raw map: its `as_ptr` makes no `&[u8]` of the region (a shared byte slice would
    /// only grant read access, and the writer stores through the atomic view).
    map: memmap2::MmapRaw,
    words: usize,
}

impl Region {
    /// A region of `words` words; should that much address space not be had, one of just
    /// the head (everything then goes to overflow chunks).
    fn new(words: usize) -> Region {
        let map = memmap2::MmapMut::map_anon(words * 8)
            .or_else(|_| memmap2::MmapMut::map_anon((HEADER + MAX_HEIGHT) * 8))
            .expect("out of memory for a memtable's head node");
        let map = memmap2::MmapRaw::from(map);
        let words = map.len() / 8;
        Region { map, words }
    }

    #[inline]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so aligned for `AtomicU64`), at least
        // `words * 8` bytes long, writable, and lives as long as `self`, which the returned
        // slice borrows. The pointer comes from `MmapRaw::as_ptr`, which creates no
        // reference to the bytes (no read-only `&[u8]` whose permission the atomic stores
        // would exceed; Miri checks this in `the_region_passes_miri`). Its bytes start
        // zeroed, a valid `AtomicU64`, and after `new` they are only ever accessed through
        // this atomic view (never as bytes, never through `&mut`), so no non-atomic access
        // can race with an atomic one.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.words) }
    }
}

/// What only the (one) writer touches.
struct Writer {
    /// Next free word of the region.
    region_used: usize,
    /// Overflow chunk being filled (if any), and its next free word.
    chunk: Option<u32>,
    used: usize,
    /// Chunks installed so far.
    count: u32,
    rng: u64,
    /// The last node inserted, at every level it has (so `finger[0]` is that node; the
    /// head before any insert), and its predecessor at the levels above: an insert after it
    /// in order searches from there, not from the head. A sequential load (keys in order,
    /// as in a bulk fill or a log) then compares a couple of keys per level instead of
    /// walking down the whole list. Nodes are never removed, so the finger stays valid
    /// however long it is kept.
    finger: [u64; MAX_HEIGHT],
    /// An entry's key and value bytes, laid out as its words are (see `insert`).
    scratch: Vec<u8>,
}

/// Largest entry laid out in [`Writer::scratch`] before it is stored.
const SCRATCH_MAX: usize = 64 << 10;

pub(crate) struct List {
    /// Starts with the head: a node of full height and no entry, before the first.
    region: Region,
    chunks: Chunks,
    /// Words of an overflow chunk. A node of an eighth of that or more gets a chunk of its
    /// own.
    chunk_words: usize,
    height: AtomicUsize,
    len: AtomicUsize,
    /// Bytes of the region's words used by nodes and of all overflow chunks.
    bytes: AtomicUsize,
    writer: Mutex<Writer>,
}

/// A node in the list, read through its words.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    w: &'a [AtomicU64],
}

/// Word `i` of `bytes` read as big-endian, zero-padded past the end.
#[inline]
fn word_of(bytes: &[u8], i: usize) -> u64 {
    let at = i * 8;
    match bytes.get(at..at + 8) {
        Some(b) => u64::from_be_bytes(b.try_into().unwrap_or_default()),
        None => {
            let mut b = [0u8; 8];
            let tail = bytes.get(at..).unwrap_or_default();
            b[..tail.len()].copy_from_slice(tail);
            u64::from_be_bytes(b)
        }
    }
}

/// Word `i` of `key` followed by `value`, read as big-endian, zero-padded past the end.
#[inline]
fn packed_word(key: &[u8], value: &[u8], i: usize) -> u64 {
    let (at, klen) = (i * 8, key.len());
    if at + 8 <= klen {
        return word_of(key, i);
    }
    let mut b = [0u8; 8];
    if at < klen {
        b[..klen - at].copy_from_slice(&key[at..]);
    }
    let from = at.max(klen);
    let to = (at + 8).min(klen + value.len());
    if from < to {
        b[from - at..to - at].copy_from_slice(&value[from - klen..to - klen]);
    }
    u64::from_be_bytes(b)
}

impl<'a> Node<'a> {
    #[inline]
    fn load(&self, i: usize) -> u64 {
        self.w[i].load(AtOrd::Relaxed)
    }
    pub fn trailer(&self) -> u64 {
        self.load(0)
    }
    pub fn seqno(&self) -> u64 {
        self.trailer() >> 8
    }
    pub fn kind(&self) -> Kind {
        Kind::from_u8(self.trailer() as u8).expect("the memtable only stores valid kinds")
    }
    pub fn key_len(&self) -> usize {
        (self.load(1) >> 32) as usize
    }
    pub fn value_len(&self) -> usize {
        self.load(1) as u32 as usize
    }
    pub fn moved_from(&self) -> u32 {
        (self.load(2) >> 8) as u32
    }
    fn height(&self) -> usize {
        self.load(2) as u8 as usize
    }
    #[inline]
    fn next(&self, level: usize) -> u64 {
        self.w[HEADER + level].load(AtOrd::Acquire)
    }
    fn data(&self) -> usize {
        HEADER + self.height()
    }

    /// Asks the CPU to start loading the node's first two cache lines (its header, links
    /// and the start of its key) while the caller works on something else: a walk of the
    /// list in key order visits nodes in the order they were inserted in, scattered over
    /// the arena, and without it waits for each node's first line.
    #[inline]
    pub fn prefetch(&self) {
        // The second line may lie past the node, inside the arena or not: a prefetch never
        // faults.
        crate::util::prefetch(self.w.as_ptr().cast::<u8>());
    }

    /// The node's user key against `key`.
    #[inline]
    pub fn cmp_key(&self, key: &[u8]) -> Ordering {
        let d = self.data();
        let klen = self.key_len();
        let words = klen.min(key.len()).div_ceil(8);
        for i in 0..words {
            // The node's last key word may hold value bytes past the key: mask them off.
            let mut w = self.load(d + i);
            let end = (i + 1) * 8;
            if end > klen {
                w &= !(u64::MAX >> ((klen - i * 8) * 8));
            }
            match w.cmp(&word_of(key, i)) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        klen.cmp(&key.len())
    }

    /// The node against the internal key (`key`, `seqno`).
    #[inline]
    pub fn cmp_internal(&self, key: &[u8], seqno: u64) -> Ordering {
        self.cmp_key(key).then_with(|| seqno.cmp(&self.seqno()))
    }

    /// Appends `len` bytes from byte `from` of the node's key-and-value bytes to `out`:
    /// up to eight words at a time are staged whole, then handed over in one slice.
    fn copy_bytes(&self, from: usize, len: usize, out: &mut impl BufMut) {
        const STAGE_WORDS: usize = 8;
        let d = self.data();
        let (mut at, end) = (from, from + len);
        let mut stage = [0u8; STAGE_WORDS * 8];
        while at < end {
            let w0 = at / 8;
            let n = (end.div_ceil(8) - w0).min(STAGE_WORDS);
            for (i, chunk) in stage.chunks_exact_mut(8).take(n).enumerate() {
                chunk.copy_from_slice(&self.load(d + w0 + i).to_be_bytes());
            }
            let hi = (end - w0 * 8).min(n * 8);
            out.put_slice(&stage[at - w0 * 8..hi]);
            at = w0 * 8 + hi;
        }
    }

    pub fn copy_key(&self, out: &mut impl BufMut) {
        self.copy_bytes(0, self.key_len(), out);
    }

    pub fn copy_value(&self, out: &mut impl BufMut) {
        self.copy_bytes(self.key_len(), self.value_len(), out);
    }
}

impl List {
    /// A list whose region holds `region_bytes` and whose overflow chunks `chunk_bytes`.
    pub fn new(region_bytes: usize, chunk_bytes: usize) -> List {
        let chunk_words = (chunk_bytes / 8).max(HEADER + MAX_HEIGHT + 16);
        let region_words = (region_bytes / 8).max(HEADER + MAX_HEIGHT);
        let region = Region::new(region_words);
        region.words()[2].store(MAX_HEIGHT as u64, AtOrd::Relaxed);
        List {
            region,
            chunks: Chunks {
                segments: std::array::from_fn(|_| OnceLock::new()),
            },
            chunk_words,
            height: AtomicUsize::new(1),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            writer: Mutex::new(Writer {
                region_used: HEADER + MAX_HEIGHT,
                chunk: None,
                used: 0,
                count: 0,
                rng: 0x9e37_79b9_7f4a_7c15,
                finger: [HEAD; MAX_HEIGHT],
                scratch: Vec::new(),
            }),
        }
    }

    fn add_chunk(&self, w: &mut Writer, words: usize) -> u32 {
        let i = w.count;
        self.chunks
            .set(i, (0..words).map(|_| AtomicU64::new(0)).collect());
        w.count += 1;
        self.bytes.fetch_add(words * 8, AtOrd::Relaxed);
        i
    }

    #[inline]
    fn node(&self, addr: u64) -> Node<'_> {
        if addr & OVERFLOW == 0 {
            return Node {
                w: &self.region.words()[addr as usize..],
            };
        }
        Node {
            w: &self.chunks.get((addr >> 32) as u32 & !(1 << 31))[addr as u32 as usize..],
        }
    }

    /// Bytes of memory the list holds (chunks, nodes and entry bytes included).
    pub fn bytes(&self) -> usize {
        self.bytes.load(AtOrd::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.len.load(AtOrd::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.node(HEAD).next(0) == NONE
    }

    /// The last node for which `before` holds (`before` must hold for a prefix of the list),
    /// or the head, and the level-0 successor it compared (or `NONE`); with, if `splice`,
    /// the last such node at every level.
    fn search(
        &self,
        before: impl Fn(Node) -> bool,
        mut splice: Option<&mut [u64; MAX_HEIGHT]>,
    ) -> (u64, u64) {
        let mut prev = HEAD;
        let mut level = self.height.load(AtOrd::Acquire) - 1;
        loop {
            let next = self.node(prev).next(level);
            if next != NONE && before(self.node(next)) {
                prev = next;
                continue;
            }
            if let Some(s) = splice.as_deref_mut() {
                s[level] = prev;
            }
            if level == 0 {
                return (prev, next);
            }
            level -= 1;
        }
    }

    /// The last node for which `before` holds, if any.
    pub fn last_before(&self, before: impl Fn(Node) -> bool) -> Option<Node<'_>> {
        match self.search(before, None).0 {
            HEAD => None,
            a => Some(self.node(a)),
        }
    }

    /// The first node for which `before` does not hold, if any.
    pub fn first_from(&self, before: impl Fn(Node) -> bool) -> Option<Node<'_>> {
        // The successor the search compared, not the link read again: a node inserted since
        // may sit in between and come before what was asked for.
        match self.search(before, None).1 {
            NONE => None,
            a => Some(self.node(a)),
        }
    }

    fn next_of_addr(&self, addr: u64) -> Option<Node<'_>> {
        match self.node(addr).next(0) {
            NONE => None,
            a => Some(self.node(a)),
        }
    }

    /// The node after `n`, if any.
    pub fn next(&self, n: Node<'_>) -> Option<Node<'_>> {
        match n.next(0) {
            NONE => None,
            a => Some(self.node(a)),
        }
    }

    pub fn first(&self) -> Option<Node<'_>> {
        self.next_of_addr(HEAD)
    }

    /// Inserts an entry, unless one with the same key and seqno is in the list (a lazy move
    /// of an entry already moved). Returns whether it inserted. One writer at a time (the
    /// others wait).
    pub fn insert(
        &self,
        key: &[u8],
        seqno: u64,
        kind: Kind,
        value: &[u8],
        moved_from: u32,
    ) -> bool {
        // Lengths pack into one word, 32 bits each; every entry reaching here has passed
        // the batch limits (64 KiB keys, 64 MiB values), checked on the write path and in
        // WAL replay, so this holds for any input and guards only against a future caller.
        assert!(
            key.len() <= crate::batch::MAX_KEY_LEN && value.len() <= crate::batch::MAX_VALUE_LEN,
            "memtable entry over the batch limits"
        );
        let mut w = self.writer.lock();
        let mut splice = [HEAD; MAX_HEIGHT];
        let before = |n: Node| n.cmp_internal(key, seqno) == Ordering::Less;
        let last = w.finger[0];
        let next = if last != HEAD && before(self.node(last)) {
            self.search_from(&w.finger, before, &mut splice)
        } else {
            self.search(before, Some(&mut splice)).1
        };
        if next != NONE && self.node(next).cmp_internal(key, seqno) == Ordering::Equal {
            return false;
        }
        let height = self.random_height(&mut w);
        let kv = key.len() + value.len();
        let words = HEADER + height + kv.div_ceil(8);
        let addr = self.allocate(&mut w, words);
        let n = self.node(addr);
        let trailer = crate::types::pack_trailer(seqno, kind);
        n.w[0].store(trailer, AtOrd::Relaxed);
        n.w[1].store(
            (key.len() as u64) << 32 | value.len() as u64,
            AtOrd::Relaxed,
        );
        n.w[2].store((moved_from as u64) << 8 | height as u64, AtOrd::Relaxed);
        let d = HEADER + height;
        // Key and value bytes, back to back, eight to a word (zero-padded): laid out in
        // the writer's scratch buffer first, so that each word is one load, not a walk
        // across the key's end (large values are packed in place instead of copied twice).
        let slots = &n.w[d..d + kv.div_ceil(8)];
        if kv <= SCRATCH_MAX {
            let buf = &mut w.scratch;
            buf.clear();
            buf.extend_from_slice(key);
            buf.extend_from_slice(value);
            buf.resize(slots.len() * 8, 0);
            for (slot, b) in slots.iter().zip(buf.chunks_exact(8)) {
                slot.store(
                    u64::from_be_bytes(b.try_into().unwrap_or_default()),
                    AtOrd::Relaxed,
                );
            }
        } else {
            for (i, slot) in slots.iter().enumerate() {
                slot.store(packed_word(key, value, i), AtOrd::Relaxed);
            }
        }
        let top = self.height.load(AtOrd::Relaxed);
        if height > top {
            // Levels above the old top are spliced after the head (`splice` holds HEAD there).
            self.height.store(height, AtOrd::Release);
        }
        for (level, &p) in splice.iter().enumerate().take(height) {
            let p = self.node(p);
            n.w[HEADER + level].store(p.next(level), AtOrd::Relaxed);
            // Release: a reader that follows this link sees the node's words.
            p.w[HEADER + level].store(addr, AtOrd::Release);
        }
        self.len.fetch_add(1, AtOrd::Relaxed);
        splice[..height].fill(addr);
        w.finger = splice;
        true
    }

    /// [`List::search`] for an entry after the last one inserted, starting at every level
    /// from the finger (its predecessors there) instead of the head; fills `splice` and
    /// returns the level-0 successor it compared.
    ///
    /// At a level where the search has not moved past the finger, the finger's node there
    /// is the furthest known start (predecessors lie no earlier at lower levels); once it
    /// has moved at some level, it stands past the last entry and so past every lower
    /// finger node.
    fn search_from(
        &self,
        finger: &[u64; MAX_HEIGHT],
        before: impl Fn(Node) -> bool,
        splice: &mut [u64; MAX_HEIGHT],
    ) -> u64 {
        let mut level = self.height.load(AtOrd::Acquire) - 1;
        let mut prev = finger[level];
        let mut moved = false;
        loop {
            let next = self.node(prev).next(level);
            if next != NONE && before(self.node(next)) {
                prev = next;
                moved = true;
                continue;
            }
            splice[level] = prev;
            if level == 0 {
                return next;
            }
            level -= 1;
            if !moved {
                prev = finger[level];
            }
        }
    }

    /// A height of 1 + k with probability (3/4)(1/4)^k, at most `MAX_HEIGHT`.
    fn random_height(&self, w: &mut Writer) -> usize {
        // xorshift64*
        w.rng ^= w.rng >> 12;
        w.rng ^= w.rng << 25;
        w.rng ^= w.rng >> 27;
        let r = w.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut h = 1;
        let mut bits = r;
        while h < MAX_HEIGHT && bits & 3 == 0 {
            h += 1;
            bits >>= 2;
        }
        h
    }

    /// Word address of `words` free words: in the region while it has room, else in the
    /// current overflow chunk, a new one, or (for a node of an eighth of a chunk or more) one
    /// of its own.
    fn allocate(&self, w: &mut Writer, words: usize) -> u64 {
        if w.region_used + words <= self.region.words {
            let addr = w.region_used as u64;
            w.region_used += words;
            self.bytes.fetch_add(words * 8, AtOrd::Relaxed);
            return addr;
        }
        if words >= self.chunk_words / 8 {
            let c = self.add_chunk(w, words);
            return OVERFLOW | (c as u64) << 32;
        }
        let c = match w.chunk {
            Some(c) if w.used + words <= self.chunk_words => c,
            _ => {
                // What is left of the old chunk stays allocated until the list is freed.
                let c = self.add_chunk(w, self.chunk_words);
                w.chunk = Some(c);
                w.used = 0;
                c
            }
        };
        let addr = OVERFLOW | (c as u64) << 32 | w.used as u64;
        w.used += words;
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest use of the region's atomic view (stores through it, then a read back),
    /// small enough for Miri, which checks the view's provenance: `cargo +nightly miri test
    /// -p sluice --lib the_region_passes_miri` (a view made from a `&[u8]` of the map fails
    /// it under both Stacked and Tree Borrows). Run natively it checks the round trip.
    #[test]
    fn the_region_passes_miri() {
        let list = List::new(1024, 1024);
        assert!(list.insert(b"k", 1, Kind::Value, b"v", 0));
        let n = list.first().unwrap();
        assert_eq!((key_of(n), value_of(n)), (b"k".to_vec(), b"v".to_vec()));
    }

    fn key_of(n: Node) -> Vec<u8> {
        let mut v = Vec::new();
        n.copy_key(&mut v);
        v
    }

    fn value_of(n: Node) -> Vec<u8> {
        let mut v = Vec::new();
        n.copy_value(&mut v);
        v
    }

    /// Keys compare as byte strings through the packed words, whatever their lengths and
    /// the value bytes that share their last word; key and value bytes read back exactly.
    #[test]
    fn packed_keys_compare_as_bytes_and_read_back() {
        let mut keys = crate::types::tricky_keys();
        keys.extend([
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\x01".to_vec(),
            vec![0xff; 25],
        ]);
        let list = List::new(2048, 4096);
        // Every byte of a value differs from its neighbours (a copy off by a word shows),
        // and lengths reach past the copy's 64-byte stages.
        let value = |i: usize| -> Vec<u8> {
            (0..i * 7)
                .map(|j| (j as u8).wrapping_mul(31) ^ i as u8)
                .collect()
        };
        for (i, k) in keys.iter().enumerate() {
            assert!(list.insert(k, i as u64 + 1, Kind::Value, &value(i), 0));
        }
        for (i, k) in keys.iter().enumerate() {
            let n = list.first_from(|n| n.cmp_key(k) == Ordering::Less).unwrap();
            assert_eq!(key_of(n), *k);
            assert_eq!(value_of(n), value(i));
            assert_eq!(n.seqno(), i as u64 + 1);
            for other in &keys {
                assert_eq!(
                    n.cmp_key(other),
                    k.as_slice().cmp(other),
                    "{k:?} vs {other:?}"
                );
            }
        }
    }

    /// Against a sorted model, with a key at several seqnos, large entries in chunks of
    /// their own and an exact duplicate refused.
    #[test]
    fn random_inserts_walk_in_internal_order() {
        let list = List::new(8192, 1024);
        let mut model = std::collections::BTreeSet::new();
        let mut x: u64 = 7;
        for seq in 1..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("k{}", x % 700).into_bytes();
            let vlen = if x.is_multiple_of(101) {
                3000
            } else {
                (x % 40) as usize
            };
            let value = vec![seq as u8; vlen];
            assert!(list.insert(&key, seq, Kind::Value, &value, 0));
            model.insert((key, std::cmp::Reverse(seq), vlen));
        }
        let mut n = list.first();
        for (k, std::cmp::Reverse(seq), vlen) in &model {
            let node = n.expect("list ended early");
            assert_eq!(&key_of(node), k);
            assert_eq!(node.seqno(), *seq);
            assert_eq!(value_of(node), vec![*seq as u8; *vlen]);
            n = list.next(node);
        }
        assert!(n.is_none());
        assert_eq!(list.len(), model.len());
        let (k, std::cmp::Reverse(seq), _) = model.iter().next().unwrap().clone();
        assert!(!list.insert(&k, seq, Kind::Value, b"", 0));
        assert_eq!(list.len(), model.len());
    }

    /// Entries on both sides of the scratch-buffer limit (laid out there, or packed in
    /// place) read back byte for byte, with keys of every length modulo eight.
    #[test]
    fn entries_either_side_of_the_scratch_limit_read_back() {
        let list = List::new(1 << 20, 1 << 20);
        let mut want = Vec::new();
        for (i, vlen) in [0, 1, 7, 8, 9, SCRATCH_MAX - 9, SCRATCH_MAX, SCRATCH_MAX + 5]
            .into_iter()
            .enumerate()
        {
            let key = vec![b'k'; i + 1];
            let value: Vec<u8> = (0..vlen).map(|j| (j * 31 + i) as u8).collect();
            assert!(list.insert(&key, i as u64 + 1, Kind::Value, &value, 0));
            want.push((key, value));
        }
        for (key, value) in &want {
            let n = list
                .first_from(|n| n.cmp_key(key) == Ordering::Less)
                .unwrap();
            assert_eq!((&key_of(n), &value_of(n)), (key, value));
        }
    }

    /// Every level's chain, as (key, seqno) in link order, and the nodes reachable there.
    fn levels(list: &List) -> Vec<Vec<(Vec<u8>, u64, usize)>> {
        (0..MAX_HEIGHT)
            .map(|level| {
                let mut out = Vec::new();
                let mut a = list.node(HEAD).next(level);
                while a != NONE {
                    let n = list.node(a);
                    out.push((key_of(n), n.seqno(), n.height()));
                    a = n.next(level);
                }
                out
            })
            .collect()
    }

    /// Inserts that search from the last one inserted (ascending runs) mixed with those that
    /// search from the head (descending runs, random keys, a key again at a higher seqno):
    /// every level is sorted and holds exactly the nodes tall enough for it, and every entry
    /// is found.
    #[test]
    fn in_order_runs_mixed_with_others_keep_every_level_sorted_and_complete() {
        let list = List::new(64 << 10, 4096);
        let mut model = std::collections::BTreeSet::new();
        let mut x: u64 = 11;
        let mut seq = 0u64;
        let mut put = |key: Vec<u8>, seq: u64| {
            assert!(list.insert(&key, seq, Kind::Value, b"v", 0));
            model.insert((key, std::cmp::Reverse(seq)));
        };
        for round in 0..60u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = x % 10_000;
            let run: Vec<u64> = match round % 3 {
                0 => (base..base + 50).collect(),
                1 => (base..base + 50).rev().collect(),
                _ => (0..50).map(|i| (x >> (i % 40)) % 10_000).collect(),
            };
            for k in run {
                seq += 1;
                put(format!("{k:06}").into_bytes(), seq);
            }
            // The same key again, newer: it sorts before its older entry.
            seq += 1;
            put(format!("{base:06}").into_bytes(), seq);
        }
        let want: Vec<(Vec<u8>, u64)> = model.iter().map(|(k, s)| (k.clone(), s.0)).collect();
        let levels = levels(&list);
        let all: Vec<(Vec<u8>, u64)> = levels[0].iter().map(|(k, s, _)| (k.clone(), *s)).collect();
        assert_eq!(all, want);
        for (level, chain) in levels.iter().enumerate() {
            let tall: Vec<(Vec<u8>, u64)> = levels[0]
                .iter()
                .filter(|(_, _, h)| *h > level)
                .map(|(k, s, _)| (k.clone(), *s))
                .collect();
            let here: Vec<(Vec<u8>, u64)> = chain.iter().map(|(k, s, _)| (k.clone(), *s)).collect();
            assert_eq!(here, tall, "level {level}");
        }
        for (k, s) in &want {
            let n = list
                .first_from(|n| n.cmp_internal(k, *s) == Ordering::Less)
                .unwrap();
            assert_eq!((key_of(n), n.seqno()), (k.clone(), *s));
        }
    }

    /// Readers walk and search while a writer inserts: every walk is sorted and every
    /// search finds what was inserted before it began.
    #[test]
    fn readers_see_a_sorted_list_while_a_writer_inserts() {
        let list = std::sync::Arc::new(List::new(64 << 10, 2048));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let published = std::sync::Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (list, done, published) = (list.clone(), done.clone(), published.clone());
                std::thread::spawn(move || {
                    while !done.load(AtOrd::Relaxed) {
                        let upto = published.load(AtOrd::Acquire);
                        for i in (0..upto).step_by(97) {
                            let k = format!("{:08}", (i * 7919) % 100_000);
                            let n = list
                                .first_from(|n| n.cmp_key(k.as_bytes()) == Ordering::Less)
                                .expect("inserted key missing");
                            assert_eq!(key_of(n), k.as_bytes());
                        }
                        let mut prev: Option<Vec<u8>> = None;
                        let mut n = list.first();
                        while let Some(node) = n {
                            let k = key_of(node);
                            assert!(prev.as_ref().is_none_or(|p| *p < k));
                            prev = Some(k);
                            n = list.next(node);
                        }
                    }
                })
            })
            .collect();
        for i in 0..20_000u64 {
            let k = format!("{:08}", (i * 7919) % 100_000);
            list.insert(k.as_bytes(), i + 1, Kind::Value, b"value", 0);
            published.store(i + 1, AtOrd::Release);
        }
        done.store(true, AtOrd::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(list.len(), 20_000);
    }
    /// Readers search and walk while a writer inserts entries of every size into a tiny
    /// region (so most nodes land in overflow chunks, large ones in chunks of their own):
    /// every node a reader reaches reads back whole — its key, seqno and every value byte
    /// as written — never a node seen before its words are.
    #[test]
    fn readers_see_whole_entries_in_overflow_chunks_while_a_writer_inserts() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let list = Arc::new(List::new(4096, 2048));
        let n = 6000u64;
        let key = |i: u64| format!("{:08}", (i * 7919) % 100_000).into_bytes();
        let value = |i: u64| -> Vec<u8> {
            let len = if i.is_multiple_of(53) {
                700 + i as usize % 300
            } else {
                (i * 13 % 200) as usize
            };
            (0..len)
                .map(|j| (j as u64 ^ i.wrapping_mul(0x9e37)) as u8)
                .collect()
        };
        let done = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (list, done, published) = (list.clone(), done.clone(), published.clone());
                std::thread::spawn(move || {
                    let mut checked = 0u64;
                    while !done.load(AtOrd::Relaxed) {
                        let upto = published.load(AtOrd::Acquire);
                        for i in (r..upto).step_by(37) {
                            let k = key(i);
                            let nd = list
                                .first_from(|nd| nd.cmp_key(&k) == Ordering::Less)
                                .expect("inserted key missing");
                            assert_eq!(key_of(nd), k);
                            assert_eq!(nd.seqno(), i + 1);
                            assert_eq!(value_of(nd), value(i), "key {i}");
                            checked += 1;
                        }
                        // Whatever a walk reaches is whole, published or not yet.
                        let mut nd = list.first();
                        while let Some(node) = nd {
                            let i = node.seqno() - 1;
                            assert_eq!(key_of(node), key(i));
                            assert_eq!(value_of(node), value(i), "walked key {i}");
                            nd = list.next(node);
                        }
                    }
                    checked
                })
            })
            .collect();
        for i in 0..n {
            assert!(list.insert(&key(i), i + 1, Kind::Value, &value(i), 0));
            published.store(i + 1, AtOrd::Release);
        }
        done.store(true, AtOrd::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(list.len(), n as usize);
    }
}
