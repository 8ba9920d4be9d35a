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
        let target = Self::BUFFER_BYTES.max(2 * value_size);
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

    /// Two consecutive values, borrowed together (for a two-key batch).
    pub fn next_pair(&mut self, len: usize) -> (&[u8], &[u8]) {
        if self.pos + 2 * len > self.data.len() {
            self.pos = 0;
        }
        let at = self.pos;
        self.pos += 2 * len;
        (&self.data[at..at + len], &self.data[at + len..at + 2 * len])
    }
}

/// A seeded pseudo-random permutation of `0..n` computed on the fly (a 4-round Feistel
/// network over the next even power of two, cycle-walking back into range), so `fillrandom`
/// writes every key exactly once in random order without materialising an `n`-entry shuffle.
#[derive(Clone, Debug)]
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

/// How random workloads pick keys from `0..num`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    /// Rank `r` (1 = hottest) is drawn with probability proportional to `r^-theta`; ranks are
    /// scattered over the key space by a seeded permutation (YCSB's "scrambled zipfian"), so
    /// hot keys are not neighbours and do not all land in one range partition.
    Zipfian {
        theta: f64,
    },
}

impl Distribution {
    /// YCSB's default skew.
    pub const DEFAULT_THETA: f64 = 0.99;

    /// `uniform`, `zipfian` or `zipfian:THETA` (0 < THETA <= 10).
    pub fn parse(s: &str) -> Result<Distribution, String> {
        match s.split_once(':') {
            None if s == "uniform" => Ok(Distribution::Uniform),
            None if s == "zipfian" => Ok(Distribution::Zipfian {
                theta: Self::DEFAULT_THETA,
            }),
            Some(("zipfian", t)) => match t.parse::<f64>() {
                Ok(theta) if theta.is_finite() && theta > 0.0 && theta <= 10.0 => {
                    Ok(Distribution::Zipfian { theta })
                }
                _ => Err(format!("zipfian theta must be in (0, 10], got {t:?}")),
            },
            _ => Err(format!(
                "expected uniform, zipfian or zipfian:THETA, got {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distribution::Uniform => write!(f, "uniform"),
            Distribution::Zipfian { theta } => write!(f, "zipfian:{theta}"),
        }
    }
}

/// Draws key indexes in `0..n` from a [`Distribution`]. Constant memory whatever `n`: the
/// zipfian sampler needs no table and no zeta sum, and the scrambling permutation is
/// computed on the fly.
#[derive(Clone)]
pub enum KeyChooser {
    Uniform { n: u64 },
    Zipfian { zipf: Zipf, scramble: Permutation },
}

impl KeyChooser {
    /// `seed` fixes which keys are hot; every thread of a run shares it, so they agree.
    pub fn new(dist: Distribution, n: u64, seed: u64) -> KeyChooser {
        match dist {
            Distribution::Uniform => KeyChooser::Uniform { n },
            Distribution::Zipfian { theta } => KeyChooser::Zipfian {
                zipf: Zipf::new(n, theta),
                scramble: Permutation::new(n, mix64(seed ^ 0x5A17_F1A2)),
            },
        }
    }

    #[inline]
    pub fn next(&self, rng: &mut fastrand::Rng) -> u64 {
        match self {
            KeyChooser::Uniform { n } => rng.u64(0..*n),
            KeyChooser::Zipfian { zipf, scramble } => scramble.get(zipf.sample(rng) - 1),
        }
    }
}

/// Zipf's law over ranks `1..=n` by rejection-inversion (Hörmann and Derflinger, "Rejection-
/// inversion to generate variates from monotone discrete distributions", 1996), as in Apache
/// Commons RNG: O(1) setup and memory for any `n` and any exponent > 0, about one uniform
/// draw per sample.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s_norm: f64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n >= 1 && s > 0.0);
        let mut z = Zipf {
            n: n as f64,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s_norm: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.s_norm = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.s_norm || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// The integral of `h` from 1 to `x`, up to a constant: `(x^(1-s) - 1) / (1-s)`, computed
    /// without cancellation near `s = 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1+x)/x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1)/x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
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

    #[test]
    fn zipf_matches_the_law() {
        for &(n, s) in &[
            (1000u64, 0.99f64),
            (1000, 1.2),
            (50, 0.5),
            (1, 0.99),
            (2, 3.0),
        ] {
            let z = Zipf::new(n, s);
            let mut rng = fastrand::Rng::with_seed(9);
            let mut counts = vec![0u64; n as usize + 1];
            let draws = 400_000;
            for _ in 0..draws {
                let k = z.sample(&mut rng);
                assert!((1..=n).contains(&k));
                counts[k as usize] += 1;
            }
            let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
            for k in 1..=n.min(5) {
                let want = (k as f64).powf(-s) / norm;
                let got = counts[k as usize] as f64 / draws as f64;
                assert!(
                    (got - want).abs() < 0.01 + want * 0.05,
                    "n={n} s={s} k={k}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn scrambled_zipfian_keys_stay_in_range_and_are_skewed() {
        let c = KeyChooser::new(Distribution::Zipfian { theta: 0.99 }, 10_000, 3);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..100_000 {
            counts[c.next(&mut rng) as usize] += 1;
        }
        let hottest = counts.iter().enumerate().max_by_key(|(_, c)| **c).unwrap();
        // Rank 1 holds about 1/H(10000, 0.99) ~ 10% of draws, and is not key 0.
        assert!(*hottest.1 > 8_000, "{hottest:?}");
        assert_ne!(hottest.0, 0);
    }

    #[test]
    fn distribution_parses() {
        assert_eq!(Distribution::parse("uniform"), Ok(Distribution::Uniform));
        assert_eq!(
            Distribution::parse("zipfian"),
            Ok(Distribution::Zipfian { theta: 0.99 })
        );
        assert_eq!(
            Distribution::parse("zipfian:1.2"),
            Ok(Distribution::Zipfian { theta: 1.2 })
        );
        for bad in ["zipf", "zipfian:0", "zipfian:-1", "zipfian:x", "uniform:1"] {
            assert!(Distribution::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Distribution::Zipfian { theta: 1.2 }.to_string(),
            "zipfian:1.2"
        );
    }
}
