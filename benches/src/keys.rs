//! Key and value generation, in the manner of RocksDB's db_bench.

/// Number of decimal digits needed to print `n`.
pub fn decimal_digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Writes `index` as zero-padded decimal filling all of `buf`, so that byte order equals
/// numeric order and `fillseq` hands the engine keys that are already sorted.
/// The caller guarantees `buf` is wide enough (checked once against `--num` at startup).
pub fn write_key(buf: &mut [u8], index: u64) {
    let mut v = index;
    for b in buf.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
    debug_assert_eq!(v, 0, "key buffer too narrow for {index}");
}

/// A key of the same size as `write_key(index)` that no fill workload ever writes: the last
/// byte becomes `.`, which is not a digit. It sorts among the real keys rather than past
/// them, so a miss has to be answered by bloom filters and index blocks, not by a file's
/// key-range bounds alone.
pub fn write_missing_key(buf: &mut [u8], index: u64) {
    write_key(buf, index);
    if let Some(last) = buf.last_mut() {
        *last = b'.';
    }
}

/// db_bench's `RandomGenerator` with compression ratio 0.5: a pre-generated buffer built from
/// 100-byte pieces, each half random printable bytes repeated twice, so values compress about
/// 2x like real data instead of being either incompressible or trivially compressible.
/// Values are slices at a rolling offset, so generating one costs no randomness.
pub struct ValueGen {
    data: Vec<u8>,
    pos: usize,
}

impl ValueGen {
    const BUFFER_BYTES: usize = 1 << 20;
    const PIECE_BYTES: usize = 100;
    const COMPRESSION_RATIO: f64 = 0.5;

    pub fn new(rng: &mut fastrand::Rng, value_size: usize) -> ValueGen {
        let target = Self::BUFFER_BYTES.max(value_size);
        let raw_len = ((Self::PIECE_BYTES as f64 * Self::COMPRESSION_RATIO) as usize).max(1);
        let mut data = Vec::with_capacity(target + Self::PIECE_BYTES);
        let mut raw = vec![0u8; raw_len];
        while data.len() < target {
            raw.iter_mut().for_each(|b| *b = rng.u8(b' '..=b'~'));
            data.extend((0..Self::PIECE_BYTES).map(|i| raw[i % raw_len]));
        }
        ValueGen { data, pos: 0 }
    }

    pub fn next(&mut self, len: usize) -> &[u8] {
        if self.pos + len > self.data.len() {
            self.pos = 0;
        }
        let v = &self.data[self.pos..self.pos + len];
        self.pos += len;
        v
    }
}

/// A seeded pseudo-random permutation of `0..n` computed on the fly (a 4-round Feistel
/// network over the next even power of two, cycle-walking back into range), so `fillrandom`
/// writes every key exactly once in random order without materialising an `n`-entry shuffle.
pub struct Permutation {
    n: u64,
    half_bits: u32,
    round_keys: [u64; 4],
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Permutation {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let bits = (bits.max(2) + 1) & !1;
        let mut s = seed;
        let round_keys = std::array::from_fn(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(s)
        });
        Permutation {
            n,
            half_bits: bits / 2,
            round_keys,
        }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.round_keys {
            (l, r) = (r, l ^ (mix64(r ^ k) & mask));
        }
        (l << self.half_bits) | r
    }

    /// The `i`-th element (`i < n`). Expected under 4 Feistel evaluations, since the domain
    /// is less than 4n.
    pub fn get(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }
}

/// SplitMix64's finaliser: a cheap bijective mixer, used for round keys and for deriving
/// independent per-thread seeds from one `--seed`.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_and_sorted() {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        write_key(&mut a, 1234);
        assert_eq!(&a, b"0000000000001234");
        write_key(&mut b, 1235);
        assert!(a < b);
        write_missing_key(&mut b, 1234);
        assert_eq!(&b, b"000000000000123.");
    }

    #[test]
    fn digits() {
        assert_eq!(decimal_digits(0), 1);
        assert_eq!(decimal_digits(9), 1);
        assert_eq!(decimal_digits(10), 2);
        assert_eq!(decimal_digits(u64::MAX), 20);
    }

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 5, 16, 17, 1000, 4097] {
            let p = Permutation::new(n, 42);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let x = p.get(i);
                assert!(x < n);
                assert!(!seen[x as usize], "n={n}: {x} twice");
                seen[x as usize] = true;
            }
        }
    }

    #[test]
    fn permutation_is_not_identity() {
        let p = Permutation::new(1000, 7);
        let in_place = (0..1000).filter(|&i| p.get(i) == i).count();
        assert!(in_place < 20, "{in_place} fixed points");
    }

    #[test]
    fn values_are_half_compressible() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut g = ValueGen::new(&mut rng, 100);
        let v = g.next(100).to_vec();
        assert_eq!(v.len(), 100);
        assert_eq!(v[..50], v[50..]);
        assert_ne!(g.next(100), &v[..]);
    }
}
