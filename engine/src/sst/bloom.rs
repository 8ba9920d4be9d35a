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

/// Key hashes kept per chunk of a [`BloomBuilder`]: 32 KiB. A table's hashes (up to ~4 MiB
/// for a 64 MiB table) grow a chunk at a time, not by doubling one vector: no copy of what
/// is kept, no vector of twice the size needed, and the freed chunks of one table are
/// allocations of one size that the next table's take again, not a ladder of sizes the
/// allocator keeps resident for reuse. (Chunks of anonymous memory, mapped and unmapped per
/// table, cost fills ~2% and were taken out again: BENCHMARKS.md §2.)
const HASH_CHUNK: usize = 4096;

pub struct BloomBuilder {
    chunks: Vec<Vec<u64>>,
    bits_per_key: u32,
}

impl BloomBuilder {
    pub fn new(bits_per_key: u32) -> BloomBuilder {
        BloomBuilder {
            chunks: Vec::new(),
            bits_per_key,
        }
    }

    pub fn add_key(&mut self, key: &[u8]) {
        // Filters off: nothing to keep.
        if self.bits_per_key == 0 {
            return;
        }
        let h = key_hash(key);
        // Versions of one key come one after another: their hash is kept once.
        if self.chunks.last().and_then(|c| c.last()) == Some(&h) {
            return;
        }
        match self.chunks.last_mut() {
            Some(c) if c.len() < HASH_CHUNK => c.push(h),
            _ => {
                let mut c = Vec::with_capacity(HASH_CHUNK);
                c.push(h);
                self.chunks.push(c);
            }
        }
    }

    /// Hashes kept (consecutive equal ones once).
    fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// The encoded filter, or an empty vector when filters are off.
    pub fn finish(&self) -> Vec<u8> {
        let len = self.len();
        if self.bits_per_key == 0 || len == 0 {
            return Vec::new();
        }
        let bits = (len as u64 * self.bits_per_key as u64).max(BLOCK_BITS);
        let blocks = bits.div_ceil(BLOCK_BITS) as usize;
        // Blocked filters lose a little accuracy to uneven block loads; one probe more than
        // the classic ln(2)·bits/key makes up most of it.
        let k = ((self.bits_per_key as f64 * 0.69) as u32 + 1).clamp(1, 16) as u8;
        let mut out = vec![0u8; blocks * BLOCK_BYTES + 1];
        for &h in self.chunks.iter().flatten() {
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

    /// Versions of one key come one after another and are hashed once, also when the
    /// first of them filled a chunk; every hash of every chunk reaches the filter.
    #[test]
    fn repeated_keys_across_a_chunk_boundary_are_kept_once() {
        let key = |i: usize| format!("key{i:08}").into_bytes();
        let mut b = BloomBuilder::new(10);
        for i in 0..HASH_CHUNK {
            b.add_key(&key(i));
        }
        assert_eq!((b.len(), b.chunks.len()), (HASH_CHUNK, 1));
        b.add_key(&key(HASH_CHUNK - 1));
        assert_eq!(
            (b.len(), b.chunks.len()),
            (HASH_CHUNK, 1),
            "a repeat at the boundary"
        );
        b.add_key(&key(HASH_CHUNK));
        b.add_key(&key(HASH_CHUNK));
        assert_eq!((b.len(), b.chunks.len()), (HASH_CHUNK + 1, 2));
        let f = b.finish();
        for i in 0..=HASH_CHUNK {
            assert!(may_contain(&f, key_hash(&key(i))), "key {i}");
        }
    }

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

    /// A key added twice in a row is kept once; with filters off nothing is kept.
    #[test]
    fn repeated_keys_are_kept_once_and_nothing_with_filters_off() {
        let mut b = BloomBuilder::new(10);
        for i in 0..1000u32 {
            b.add_key(format!("k{i}").as_bytes());
            b.add_key(format!("k{i}").as_bytes());
        }
        assert_eq!(b.len(), 1000);
        let mut off = BloomBuilder::new(0);
        off.add_key(b"k");
        assert!(off.len() == 0 && off.finish().is_empty());
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
