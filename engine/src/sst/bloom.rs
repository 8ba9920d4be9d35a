//! Blocked bloom filter over user keys (xxh3). Each key sets `k` bits inside one 512-bit
//! block, so a probe touches one cache line.
//!
//! Layout: `[blocks × 64 bytes][k: u8]`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

const BLOCK_BITS: u64 = 512;
const BLOCK_BYTES: usize = 64;
/// A seed no partition function uses by default, so filter bits are independent of the
/// hash that chose the partition the file belongs to.
const BLOOM_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, BLOOM_SEED)
}

pub struct BloomBuilder {
    hashes: Hashes,
    bits_per_key: u32,
}

/// The key hashes of a table being built, 8 bytes per key (4.4 MB for a 64 MB table of
/// 116-byte entries), in chunks of anonymous memory that go back to the system when the
/// builder drops. In a growing heap vector, the vector and every smaller copy it outgrew stay
/// resident as freed memory the allocator keeps for seconds: the flush and compaction
/// threads' filters added ~10 MB to the fill phases' peak RSS (BENCHMARKS.md §2).
#[derive(Default)]
struct Hashes {
    chunks: Vec<Chunk>,
    len: usize,
    last: Option<u64>,
}

/// Bytes of one chunk of [`Hashes`].
const HASH_CHUNK: usize = 1 << 20;

enum Chunk {
    Map(memmap2::MmapMut),
    /// Should a map not be had.
    Heap(Box<[u8]>),
}

impl Chunk {
    fn new() -> Chunk {
        memmap2::MmapMut::map_anon(HASH_CHUNK)
            .map(Chunk::Map)
            .unwrap_or_else(|_| Chunk::Heap(vec![0u8; HASH_CHUNK].into_boxed_slice()))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Map(m) => m,
            Chunk::Heap(b) => b,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Chunk::Map(m) => m,
            Chunk::Heap(b) => b,
        }
    }
}

impl Hashes {
    const PER_CHUNK: usize = HASH_CHUNK / 8;

    fn push(&mut self, h: u64) {
        let (c, i) = (self.len / Self::PER_CHUNK, self.len % Self::PER_CHUNK);
        if c == self.chunks.len() {
            self.chunks.push(Chunk::new());
        }
        self.chunks[c].bytes_mut()[i * 8..i * 8 + 8].copy_from_slice(&h.to_le_bytes());
        self.len += 1;
        self.last = Some(h);
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.bytes().chunks_exact(8))
            .take(self.len)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

impl BloomBuilder {
    pub fn new(bits_per_key: u32) -> BloomBuilder {
        BloomBuilder {
            hashes: Hashes::default(),
            bits_per_key,
        }
    }

    pub fn add_key(&mut self, key: &[u8]) {
        if self.bits_per_key == 0 {
            return;
        }
        let h = key_hash(key);
        if self.hashes.last != Some(h) {
            self.hashes.push(h);
        }
    }

    /// The encoded filter, or an empty vector when filters are off.
    pub fn finish(&self) -> Vec<u8> {
        if self.bits_per_key == 0 || self.hashes.len == 0 {
            return Vec::new();
        }
        let bits = (self.hashes.len as u64 * self.bits_per_key as u64).max(BLOCK_BITS);
        let blocks = bits.div_ceil(BLOCK_BITS) as usize;
        // Blocked filters lose a little accuracy to uneven block loads; one probe more than
        // the classic ln(2)·bits/key makes up most of it.
        let k = ((self.bits_per_key as f64 * 0.69) as u32 + 1).clamp(1, 16) as u8;
        let mut out = vec![0u8; blocks * BLOCK_BYTES + 1];
        for h in self.hashes.iter() {
            let (base, mut a, b) = positions(h, blocks);
            for _ in 0..k {
                let bit = (a % BLOCK_BITS as u32) as usize;
                out[base + bit / 8] |= 1 << (bit % 8);
                a = a.wrapping_add(b);
            }
        }
        out[blocks * BLOCK_BYTES] = k;
        out
    }
}

#[inline]
fn positions(h: u64, blocks: usize) -> (usize, u32, u32) {
    let block = ((h.rotate_left(32) as u128 * blocks as u128) >> 64) as usize;
    let a = h as u32;
    let b = ((h >> 32) as u32) | 1;
    (block * BLOCK_BYTES, a, b)
}

/// Answers "may the table contain this key?". An empty or malformed filter says "maybe"
/// (a filter can only save work, never hide data).
#[inline]
pub fn may_contain(filter: &[u8], h: u64) -> bool {
    if filter.len() < BLOCK_BYTES + 1 || !(filter.len() - 1).is_multiple_of(BLOCK_BYTES) {
        return true;
    }
    let blocks = (filter.len() - 1) / BLOCK_BYTES;
    let k = filter[filter.len() - 1];
    let (base, mut a, b) = positions(h, blocks);
    for _ in 0..k {
        let bit = (a % BLOCK_BITS as u32) as usize;
        if filter[base + bit / 8] & (1 << (bit % 8)) == 0 {
            return false;
        }
        a = a.wrapping_add(b);
    }
    true
}

/// A blocked bloom filter that can take keys concurrently (the memtable's). A point read
/// that misses the memtable — most of them — then costs two cache lines, not a skiplist
/// search.
pub struct AtomicBloom {
    words: Box<[std::sync::atomic::AtomicU64]>,
    blocks: usize,
}

const WORDS_PER_BLOCK: usize = BLOCK_BYTES / 8;
const MEMTABLE_PROBES: u32 = 6;

impl AtomicBloom {
    /// A filter of about `bits` bits (at least one block).
    pub fn new(bits: usize) -> AtomicBloom {
        let blocks = bits.div_ceil(BLOCK_BITS as usize).max(1);
        AtomicBloom {
            words: (0..blocks * WORDS_PER_BLOCK)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            blocks,
        }
    }

    #[inline]
    pub fn insert(&self, h: u64) {
        let (base, mut a, b) = positions(h, self.blocks);
        let base = base / 8;
        for _ in 0..MEMTABLE_PROBES {
            let bit = (a % BLOCK_BITS as u32) as usize;
            self.words[base + bit / 64]
                .fetch_or(1 << (bit % 64), std::sync::atomic::Ordering::Relaxed);
            a = a.wrapping_add(b);
        }
    }

    #[inline]
    pub fn may_contain(&self, h: u64) -> bool {
        let (base, mut a, b) = positions(h, self.blocks);
        let base = base / 8;
        for _ in 0..MEMTABLE_PROBES {
            let bit = (a % BLOCK_BITS as u32) as usize;
            if self.words[base + bit / 64].load(std::sync::atomic::Ordering::Relaxed)
                & (1 << (bit % 64))
                == 0
            {
                return false;
            }
            a = a.wrapping_add(b);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_low_false_positive_rate() {
        let mut b = BloomBuilder::new(10);
        for i in 0..10_000u32 {
            b.add_key(format!("present{i}").as_bytes());
        }
        let f = b.finish();
        for i in 0..10_000u32 {
            assert!(may_contain(&f, key_hash(format!("present{i}").as_bytes())));
        }
        let fp = (0..100_000u32)
            .filter(|i| may_contain(&f, key_hash(format!("absent{i}").as_bytes())))
            .count();
        assert!(fp < 2_000, "false positive rate {}%", fp as f64 / 1000.0);
    }

    /// Hashes kept across several chunks (and a key added twice in a row, kept once) give
    /// the filter the same keys as one vector would: every key found, the size set by the
    /// distinct keys, the false-positive rate of the bits per key.
    #[test]
    fn a_filter_over_several_hash_chunks_holds_every_key() {
        let n = Hashes::PER_CHUNK as u32 * 2 + 1000;
        let key = |i: u32| format!("k{i:09}");
        let mut b = BloomBuilder::new(10);
        for i in 0..n {
            b.add_key(key(i).as_bytes());
            if i % 3 == 0 {
                b.add_key(key(i).as_bytes());
            }
        }
        assert_eq!(b.hashes.len, n as usize);
        assert_eq!(b.hashes.chunks.len(), 3);
        let want: Vec<u64> = (0..n).map(|i| key_hash(key(i).as_bytes())).collect();
        assert!(b.hashes.iter().eq(want.iter().copied()));
        let f = b.finish();
        let blocks = (n as u64 * 10).div_ceil(BLOCK_BITS) as usize;
        assert_eq!(f.len(), blocks * BLOCK_BYTES + 1);
        assert!(want.iter().all(|&h| may_contain(&f, h)));
        let fp = (0..100_000u32)
            .filter(|i| may_contain(&f, key_hash(format!("absent{i}").as_bytes())))
            .count();
        assert!(fp < 2_000, "false positive rate {}%", fp as f64 / 1000.0);
        // Filters off: nothing is kept.
        let mut off = BloomBuilder::new(0);
        off.add_key(b"k");
        assert!(off.finish().is_empty() && off.hashes.chunks.is_empty());
    }

    #[test]
    fn atomic_bloom_has_no_false_negatives() {
        let f = AtomicBloom::new(100_000);
        for i in 0..10_000u32 {
            f.insert(key_hash(format!("k{i}").as_bytes()));
        }
        for i in 0..10_000u32 {
            assert!(f.may_contain(key_hash(format!("k{i}").as_bytes())));
        }
        let fp = (0..10_000u32)
            .filter(|i| f.may_contain(key_hash(format!("x{i}").as_bytes())))
            .count();
        assert!(fp < 300, "{fp}");
    }

    #[test]
    fn empty_or_damaged_filter_answers_maybe() {
        assert!(may_contain(&[], 42));
        assert!(may_contain(&[1, 2, 3], 42));
        assert!(BloomBuilder::new(0).finish().is_empty());
    }
}
