//! Partition functions: how a key is assigned to a partition under one layout version.
//!
//! A function is deterministic, serializable and fingerprinted. The fingerprint is stored in
//! every SSTable written under the function, so a file can be checked against the function
//! that claims it, even without the manifest.

use std::fmt;
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::coding::{put_bytes, put_u64, put_u8, put_varint, Decoder};
use crate::error::{Error, Result};

/// The most partitions one layout version may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// Most layout versions live at once (registered and not retired). Every read consults
/// each live version, so a runaway caller (a controller registering in a loop) is refused
/// with `Error::LayoutRefused` long before reads suffer or specs fill memory.
pub const MAX_LIVE_LAYOUTS: usize = 64;
/// The highest layout version id. Ids are handed out in order and never again, and every
/// id below the next one that is not live has retired: `Db::layout()` and the inspector
/// list them. A bound keeps a manifest record claiming billions of retired ids (a few
/// bytes) from making those lists exhaust memory, and is more than a database registers
/// in its life (a layout a minute for 30 years).
pub const MAX_LAYOUT_ID: u32 = 1 << 24;
/// Nesting limit for `Split` specs, so a hostile manifest cannot recurse without bound.
const MAX_SPLIT_DEPTH: usize = 8;

/// A partition function, as the user describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PartitionSpec {
    /// Partition `i` holds keys in `[boundaries[i-1], boundaries[i])`; boundaries are strictly
    /// increasing and non-empty. `n` boundaries make `n + 1` partitions.
    Range { boundaries: Vec<Vec<u8>> },
    /// `xxh3(key[..hashed_prefix], seed) mod partitions`. `hashed_prefix: Some(n)` hashes only
    /// the first `n` bytes of a key (which is how a biased hash is usually born).
    Hash {
        partitions: u32,
        seed: u64,
        hashed_prefix: Option<u32>,
    },
    /// `base`, except that base partition `partition` is split into `into` virtual
    /// sub-partitions by `xxh3(key, seed)`. Sub-partitions take the indexes
    /// `partition .. partition + into`; later base partitions shift up by `into - 1`.
    Split {
        base: Box<PartitionSpec>,
        partition: u32,
        into: u32,
        seed: u64,
    },
}

impl Default for PartitionSpec {
    /// One range partition holding every key.
    fn default() -> Self {
        PartitionSpec::Range { boundaries: vec![] }
    }
}

impl PartitionSpec {
    /// A hash layout of `partitions` partitions over whole keys, seeded by `seed`.
    pub fn hashed(partitions: u32, seed: u64) -> PartitionSpec {
        PartitionSpec::Hash {
            partitions,
            seed,
            hashed_prefix: None,
        }
    }

    /// `base` with its partition `partition` split into `into` sub-partitions, hashed
    /// with the smallest seed no hash in `base` uses (the same seed would not split
    /// anything; see [`PartitionSpec::refuse_inert_split`]).
    pub fn split(base: PartitionSpec, partition: u32, into: u32) -> PartitionSpec {
        let used = base.seeds();
        let seed = (0..).find(|s| !used.contains(s)).unwrap_or(0);
        PartitionSpec::Split {
            base: Box::new(base),
            partition,
            into,
            seed,
        }
    }

    /// Number of partitions this function maps keys onto.
    pub fn partitions(&self) -> u32 {
        match self {
            // Saturating: a spec not validated yet may claim any count (validation refuses
            // more than MAX_PARTITIONS).
            PartitionSpec::Range { boundaries } => u32::try_from(boundaries.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
            PartitionSpec::Hash { partitions, .. } => *partitions,
            PartitionSpec::Split { base, into, .. } => {
                base.partitions().saturating_add(*into).saturating_sub(1)
            }
        }
    }

    /// Checks that the spec can be used; every constructor path goes through here.
    pub fn validate(&self) -> Result<()> {
        self.validate_depth(0)?;
        // The manifest reads a spec back only up to this size.
        let len = self.to_bytes().len();
        if len > crate::manifest::MAX_SPEC_LEN {
            return Err(Error::InvalidPartitionSpec(format!(
                "the spec encodes to {len} bytes, over the limit of {} bytes",
                crate::manifest::MAX_SPEC_LEN
            )));
        }
        Ok(())
    }

    fn validate_depth(&self, depth: usize) -> Result<()> {
        let bad = |s: String| Err(Error::InvalidPartitionSpec(s));
        match self {
            PartitionSpec::Range { boundaries } => {
                if boundaries.len() as u64 + 1 > MAX_PARTITIONS as u64 {
                    return bad(format!(
                        "{} range boundaries make more than {MAX_PARTITIONS} partitions",
                        boundaries.len()
                    ));
                }
                for (i, b) in boundaries.iter().enumerate() {
                    if b.is_empty() {
                        return bad(format!("range boundary {i} is empty"));
                    }
                    if b.len() > crate::MAX_KEY_LEN {
                        return bad(format!("range boundary {i} is longer than a key may be"));
                    }
                    if i > 0 && boundaries[i - 1] >= *b {
                        return bad(format!(
                            "range boundaries must be strictly increasing (boundary {i} is not)"
                        ));
                    }
                }
                Ok(())
            }
            PartitionSpec::Hash {
                partitions,
                hashed_prefix,
                ..
            } => {
                if *partitions == 0 || *partitions > MAX_PARTITIONS {
                    return bad(format!(
                        "hash partitions must be 1..={MAX_PARTITIONS}, got {partitions}"
                    ));
                }
                if *hashed_prefix == Some(0) {
                    return bad("hashed_prefix of 0 bytes maps every key to one partition".into());
                }
                Ok(())
            }
            PartitionSpec::Split {
                base,
                partition,
                into,
                ..
            } => {
                if depth >= MAX_SPLIT_DEPTH {
                    return bad(format!("split nested deeper than {MAX_SPLIT_DEPTH}"));
                }
                base.validate_depth(depth + 1)?;
                let n = base.partitions();
                if *partition >= n {
                    return bad(format!(
                        "split partition {partition} does not exist (base has {n})"
                    ));
                }
                if *into < 2 {
                    return bad(format!("split into {into}: must be at least 2"));
                }
                if (n as u64) + (*into as u64) - 1 > MAX_PARTITIONS as u64 {
                    return bad(format!("split makes more than {MAX_PARTITIONS} partitions"));
                }
                Ok(())
            }
        }
    }

    /// Canonical encoding (also the input of the fingerprint).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            PartitionSpec::Range { boundaries } => {
                put_u8(buf, 1);
                put_varint(buf, boundaries.len() as u64);
                for b in boundaries {
                    put_bytes(buf, b);
                }
            }
            PartitionSpec::Hash {
                partitions,
                seed,
                hashed_prefix,
            } => {
                put_u8(buf, 2);
                put_varint(buf, *partitions as u64);
                put_u64(buf, *seed);
                match hashed_prefix {
                    None => put_u8(buf, 0),
                    Some(n) => {
                        put_u8(buf, 1);
                        put_varint(buf, *n as u64);
                    }
                }
            }
            PartitionSpec::Split {
                base,
                partition,
                into,
                seed,
            } => {
                put_u8(buf, 3);
                base.encode(buf);
                put_varint(buf, *partition as u64);
                put_varint(buf, *into as u64);
                put_u64(buf, *seed);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.encode(&mut b);
        b
    }

    /// Decodes and validates a spec.
    pub fn decode(d: &mut Decoder<'_>) -> Result<PartitionSpec> {
        let spec = Self::decode_depth(d, 0)?;
        spec.validate()
            .map_err(|e| d.error(format!("stored partition spec is invalid: {e}")))?;
        Ok(spec)
    }

    fn decode_depth(d: &mut Decoder<'_>, depth: usize) -> Result<PartitionSpec> {
        if depth > MAX_SPLIT_DEPTH {
            return Err(d.error("partition spec nested too deeply"));
        }
        match d.u8("partition spec kind")? {
            1 => {
                let n = d.len(MAX_PARTITIONS as usize, "range boundary count")?;
                let mut boundaries = Vec::with_capacity(n);
                for _ in 0..n {
                    boundaries.push(d.bytes(crate::MAX_KEY_LEN, "range boundary")?.to_vec());
                }
                Ok(PartitionSpec::Range { boundaries })
            }
            2 => {
                let partitions = d.u32_varint("hash partitions")?;
                let seed = d.u64("hash seed")?;
                let hashed_prefix = match d.u8("hashed prefix flag")? {
                    0 => None,
                    1 => Some(d.u32_varint("hashed prefix")?),
                    x => return Err(d.error(format!("bad hashed prefix flag {x}"))),
                };
                Ok(PartitionSpec::Hash {
                    partitions,
                    seed,
                    hashed_prefix,
                })
            }
            3 => {
                let base = Box::new(Self::decode_depth(d, depth + 1)?);
                let partition = d.u32_varint("split partition")?;
                let into = d.u32_varint("split into")?;
                let seed = d.u64("split seed")?;
                Ok(PartitionSpec::Split {
                    base,
                    partition,
                    into,
                    seed,
                })
            }
            k => Err(d.error(format!("unknown partition spec kind {k}"))),
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<PartitionSpec> {
        let p = Path::new("<partition spec>");
        let mut d = Decoder::new(b, p, 0);
        let s = Self::decode(&mut d)?;
        if !d.is_empty() {
            return Err(d.error("trailing bytes after partition spec"));
        }
        Ok(s)
    }

    /// Stable 64-bit fingerprint of the function.
    pub fn fingerprint(&self) -> u64 {
        xxh3_64_with_seed(&self.to_bytes(), 0x51u64)
    }

    /// Parses the textual form used by the CLI and benches:
    /// `range` | `range:b1,b2,…` (boundaries as escaped text) | `hash:N[:seed[:prefix]]` |
    /// `split:PARTITION:INTO[:seed]/BASE`.
    pub fn parse(s: &str) -> Result<PartitionSpec> {
        Self::parse_depth(s, 0)
    }

    /// [`PartitionSpec::parse`] of a spec nested under `depth` splits: refused past the
    /// depth `validate` allows before recursing further, so that no text, however deeply
    /// nested, can exhaust the stack.
    fn parse_depth(s: &str, depth: usize) -> Result<PartitionSpec> {
        let bad = |m: String| Error::InvalidPartitionSpec(m);
        let s = s.trim();
        let spec = if s == "range" || s == "single" {
            PartitionSpec::default()
        } else if let Some(rest) = s.strip_prefix("range:") {
            // An empty boundary (`range:`, `range:a,,b`) is kept, for `validate` to refuse:
            // dropping it quietly made `range:` one partition.
            let boundaries = rest
                .split(',')
                .map(|b| {
                    crate::escape::unescape(b).map_err(|e| bad(format!("boundary {b:?}: {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            PartitionSpec::Range { boundaries }
        } else if let Some(rest) = s.strip_prefix("hash:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.is_empty() || parts.len() > 3 {
                return Err(bad(format!("expected hash:N[:seed[:prefix]], got {s:?}")));
            }
            let num = |p: &str, what: &str| -> Result<u64> {
                decimal(p).ok_or_else(|| bad(format!("{what} {p:?} is not a number")))
            };
            let partitions = u32::try_from(num(parts[0], "partition count")?)
                .map_err(|_| bad("partition count too large".into()))?;
            let seed = parts
                .get(1)
                .map(|p| num(p, "seed"))
                .transpose()?
                .unwrap_or(0);
            let hashed_prefix = parts
                .get(2)
                .map(|p| {
                    num(p, "prefix")
                        .and_then(|n| u32::try_from(n).map_err(|_| bad("prefix too large".into())))
                })
                .transpose()?;
            PartitionSpec::Hash {
                partitions,
                seed,
                hashed_prefix,
            }
        } else if let Some(rest) = s.strip_prefix("split:") {
            let (head, base) = rest
                .split_once('/')
                .ok_or_else(|| bad(format!("expected split:P:INTO[:seed]/BASE, got {s:?}")))?;
            let parts: Vec<&str> = head.split(':').collect();
            if parts.len() < 2 || parts.len() > 3 {
                return Err(bad(format!("expected split:P:INTO[:seed]/BASE, got {s:?}")));
            }
            let num = |p: &str| -> Result<u64> {
                decimal(p).ok_or_else(|| bad(format!("{p:?} is not a number")))
            };
            let to32 = |v: u64| u32::try_from(v).map_err(|_| bad(format!("{v} too large")));
            if depth >= MAX_SPLIT_DEPTH {
                return Err(bad(format!("split nested deeper than {MAX_SPLIT_DEPTH}")));
            }
            let base = PartitionSpec::parse_depth(base, depth + 1)?;
            let (partition, into) = (to32(num(parts[0])?)?, to32(num(parts[1])?)?);
            match parts.get(2) {
                Some(p) => PartitionSpec::Split {
                    base: Box::new(base),
                    partition,
                    into,
                    seed: num(p)?,
                },
                None => PartitionSpec::split(base, partition, into),
            }
        } else {
            return Err(bad(format!(
                "unrecognised spec {s:?}; expected range[:b1,b2,..], hash:N[:seed[:prefix]] or split:P:INTO[:seed]/BASE"
            )));
        };
        spec.validate()?;
        spec.refuse_inert_split()?;
        Ok(spec)
    }

    /// The seeds of every hash in the spec: its own and its bases'.
    fn seeds(&self) -> Vec<u64> {
        match self {
            PartitionSpec::Range { .. } => Vec::new(),
            PartitionSpec::Hash { seed, .. } => vec![*seed],
            PartitionSpec::Split { base, seed, .. } => {
                let mut v = base.seeds();
                v.push(*seed);
                v
            }
        }
    }

    /// Refuses a split hashing with a seed a hash under it already uses. The keys of one
    /// partition of a hash share the top of their hash under its seed, so the same hash
    /// sends every one of them to the same sub-partition: such a split moves the hot
    /// partition whole and relieves nothing. Checked where a spec is made (parsing,
    /// registering a layout), not where one is read back: a layout registered before
    /// this check still opens. The spec's nesting is checked first ([`Self::validate`]):
    /// the check walks down every split.
    pub fn refuse_inert_split(&self) -> Result<()> {
        self.validate_depth(0)?;
        self.refuse_inert_split_below()
    }

    fn refuse_inert_split_below(&self) -> Result<()> {
        if let PartitionSpec::Split { base, seed, .. } = self {
            base.refuse_inert_split_below()?;
            if base.seeds().contains(seed) {
                return Err(Error::InvalidPartitionSpec(format!(
                    "split seed {seed} is already a seed of its base ({base}): every key of \
                     the split partition would go to the same sub-partition; pick another \
                     seed (or leave it out)"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for PartitionSpec {
    /// The textual form accepted by [`PartitionSpec::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionSpec::Range { boundaries } if boundaries.is_empty() => write!(f, "range"),
            PartitionSpec::Range { boundaries } => {
                write!(f, "range:")?;
                for (i, b) in boundaries.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    // Commas separate boundaries, and `parse` trims the whole text: both
                    // are escaped so that every boundary reads back as it is.
                    let text = crate::escape::escape(b)
                        .replace(',', "\\x2c")
                        .replace(' ', "\\x20");
                    write!(f, "{text}")?;
                }
                Ok(())
            }
            PartitionSpec::Hash {
                partitions,
                seed,
                hashed_prefix: None,
            } => write!(f, "hash:{partitions}:{seed}"),
            PartitionSpec::Hash {
                partitions,
                seed,
                hashed_prefix: Some(p),
            } => write!(f, "hash:{partitions}:{seed}:{p}"),
            PartitionSpec::Split {
                base,
                partition,
                into,
                seed,
            } => write!(f, "split:{partition}:{into}:{seed}/{base}"),
        }
    }
}

/// A number written in decimal digits only (no sign, no spaces).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Maps a 64-bit hash onto `0..n` without a division (Lemire's multiply-shift).
#[inline]
fn reduce(hash: u64, n: u32) -> u32 {
    ((hash as u128 * n as u128) >> 64) as u32
}

/// A validated partition function ready to map keys.
#[derive(Clone, Debug)]
pub struct PartitionFn {
    spec: PartitionSpec,
    partitions: u32,
    fingerprint: u64,
}

impl PartitionFn {
    pub fn new(spec: PartitionSpec) -> Result<PartitionFn> {
        spec.validate()?;
        Ok(PartitionFn {
            partitions: spec.partitions(),
            fingerprint: spec.fingerprint(),
            spec,
        })
    }

    pub fn spec(&self) -> &PartitionSpec {
        &self.spec
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The partition that holds `key`.
    #[inline]
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        Self::map(&self.spec, key)
    }

    fn map(spec: &PartitionSpec, key: &[u8]) -> u32 {
        match spec {
            PartitionSpec::Range { boundaries } => boundaries
                .partition_point(|b| crate::types::cmp_keys(b, key) != std::cmp::Ordering::Greater)
                as u32,
            PartitionSpec::Hash {
                partitions,
                seed,
                hashed_prefix,
            } => {
                let hashed = match hashed_prefix {
                    Some(n) => &key[..key.len().min(*n as usize)],
                    None => key,
                };
                reduce(xxh3_64_with_seed(hashed, *seed), *partitions)
            }
            PartitionSpec::Split {
                base,
                partition,
                into,
                seed,
            } => {
                let p = Self::map(base, key);
                if p < *partition {
                    p
                } else if p == *partition {
                    p + reduce(xxh3_64_with_seed(key, *seed), *into)
                } else {
                    p + into - 1
                }
            }
        }
    }

    /// Partitions that may hold keys in `[start, end]` (inclusive bounds; `None` = unbounded).
    /// Range functions narrow the set, and so does a split of one (the split partition's
    /// sub-partitions stand in for it); hash partitions span the whole key space.
    pub fn partitions_for_range(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> Vec<u32> {
        Self::for_range(&self.spec, start, end)
    }

    fn for_range(spec: &PartitionSpec, start: Option<&[u8]>, end: Option<&[u8]>) -> Vec<u32> {
        match spec {
            PartitionSpec::Range { .. } => {
                let lo = start.map(|s| Self::map(spec, s)).unwrap_or(0);
                let hi = end
                    .map(|e| Self::map(spec, e))
                    .unwrap_or(spec.partitions() - 1);
                (lo..=hi.max(lo)).collect()
            }
            PartitionSpec::Hash { .. } => (0..spec.partitions()).collect(),
            PartitionSpec::Split {
                base,
                partition,
                into,
                ..
            } => Self::for_range(base, start, end)
                .into_iter()
                .flat_map(|p| match p.cmp(partition) {
                    std::cmp::Ordering::Less => p..p + 1,
                    std::cmp::Ordering::Equal => p..p + into,
                    std::cmp::Ordering::Greater => p + into - 1..p + into,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec straight from a caller, not validated yet, answers how many partitions it
    /// claims without overflowing; validation then refuses it.
    #[test]
    fn an_unvalidated_spec_counts_its_partitions_without_overflow() {
        let split = |into| PartitionSpec::Split {
            base: Box::new(PartitionSpec::Hash {
                partitions: 4,
                seed: 1,
                hashed_prefix: None,
            }),
            partition: 0,
            into,
            seed: 2,
        };
        assert_eq!(split(u32::MAX).partitions(), u32::MAX - 1);
        assert!(split(u32::MAX).validate().is_err());
        assert_eq!(split(0).partitions(), 3);
        assert!(split(0).validate().is_err());
    }

    /// Nested splits parse up to the depth `validate` allows and are refused past it, at
    /// any depth of text: a spec nested 20,000 deep overflowed the stack (an abort, from a
    /// command-line argument) before parse checked the depth.
    #[test]
    fn deeply_nested_split_text_is_refused_without_exhausting_the_stack() {
        let nested = |n: usize| "split:0:2/".repeat(n) + "hash:2";
        let ok = PartitionSpec::parse(&nested(MAX_SPLIT_DEPTH)).unwrap();
        assert_eq!(PartitionSpec::parse(&ok.to_string()).unwrap(), ok);
        for n in [MAX_SPLIT_DEPTH + 1, 20_000] {
            match PartitionSpec::parse(&nested(n)) {
                Err(Error::InvalidPartitionSpec(m)) => assert!(m.contains("nested"), "{m}"),
                other => panic!("{n} deep: {other:?}"),
            }
        }
    }

    fn specs() -> Vec<PartitionSpec> {
        vec![
            PartitionSpec::default(),
            PartitionSpec::Range {
                boundaries: vec![b"g".to_vec(), b"p".to_vec()],
            },
            // Boundaries the text form must escape to read back: spaces at either end
            // (the parser trims the text), a comma, a backslash, bytes outside ASCII.
            PartitionSpec::Range {
                boundaries: vec![
                    b" ".to_vec(),
                    b" a".to_vec(),
                    b"a,b".to_vec(),
                    b"k01000".to_vec(),
                    b"z\\\xff".to_vec(),
                    b"z\\\xff ".to_vec(),
                ],
            },
            PartitionSpec::Range {
                boundaries: vec![b" ".to_vec()],
            },
            PartitionSpec::Hash {
                partitions: 16,
                seed: 7,
                hashed_prefix: None,
            },
            PartitionSpec::Hash {
                partitions: 8,
                seed: 1,
                hashed_prefix: Some(4),
            },
            PartitionSpec::Split {
                base: Box::new(PartitionSpec::Hash {
                    partitions: 4,
                    seed: 0,
                    hashed_prefix: None,
                }),
                partition: 2,
                into: 3,
                seed: 9,
            },
        ]
    }

    #[test]
    fn encode_decode_round_trip_and_text_round_trip() {
        for s in specs() {
            let b = s.to_bytes();
            assert_eq!(PartitionSpec::from_bytes(&b).unwrap(), s);
            assert_eq!(PartitionSpec::parse(&s.to_string()).unwrap(), s, "{s}");
        }
    }

    #[test]
    fn flipped_bytes_never_panic() {
        for s in specs() {
            let b = s.to_bytes();
            for i in 0..b.len() {
                for bit in 0..8 {
                    let mut c = b.clone();
                    c[i] ^= 1 << bit;
                    // Either decodes to some valid spec or reports an error; never panics.
                    if let Ok(d) = PartitionSpec::from_bytes(&c) {
                        d.validate().unwrap();
                    }
                }
            }
            for n in 0..b.len() {
                assert!(PartitionSpec::from_bytes(&b[..n]).is_err());
            }
        }
    }

    #[test]
    fn fingerprints_differ_between_functions() {
        let fps: Vec<u64> = specs().iter().map(|s| s.fingerprint()).collect();
        for i in 0..fps.len() {
            for j in i + 1..fps.len() {
                assert_ne!(fps[i], fps[j]);
            }
        }
    }

    #[test]
    fn range_mapping() {
        let f = PartitionFn::new(PartitionSpec::Range {
            boundaries: vec![b"g".to_vec(), b"p".to_vec()],
        })
        .unwrap();
        assert_eq!(f.partition_of(b""), 0);
        assert_eq!(f.partition_of(b"a"), 0);
        assert_eq!(f.partition_of(b"g"), 1);
        assert_eq!(f.partition_of(b"ozzz"), 1);
        assert_eq!(f.partition_of(b"p"), 2);
        assert_eq!(f.partition_of(b"zz"), 2);
        assert_eq!(f.partitions_for_range(Some(b"h"), Some(b"i")), vec![1]);
        assert_eq!(f.partitions_for_range(None, Some(b"h")), vec![0, 1]);
    }

    #[test]
    fn hash_is_balanced_and_prefix_hash_is_biased() {
        let good = PartitionFn::new(PartitionSpec::Hash {
            partitions: 8,
            seed: 3,
            hashed_prefix: None,
        })
        .unwrap();
        let biased = PartitionFn::new(PartitionSpec::Hash {
            partitions: 8,
            seed: 3,
            hashed_prefix: Some(4),
        })
        .unwrap();
        let mut g = [0u32; 8];
        let mut b = [0u32; 8];
        for i in 0..8000u32 {
            let k = format!("acct{i:08}");
            g[good.partition_of(k.as_bytes()) as usize] += 1;
            b[biased.partition_of(k.as_bytes()) as usize] += 1;
        }
        assert!(g.iter().all(|&c| (800..1200).contains(&c)), "{g:?}");
        assert_eq!(b.iter().filter(|&&c| c > 0).count(), 1, "{b:?}");
    }

    /// A split spreads its partition's keys over every sub-partition, nested splits too,
    /// with the seed left out. A split hashing with its base hash's seed (the default used
    /// to be 0, the hash's default too) sent them all to one sub-partition: it is refused
    /// where specs are made, and still read back from a manifest that holds one.
    #[test]
    fn a_split_spreads_its_partition_and_an_inert_one_is_refused() {
        let spread = |text: &str, split: u32, into: u32| {
            let spec = PartitionSpec::parse(text).unwrap();
            let PartitionSpec::Split { base, .. } = &spec else {
                panic!("{spec}")
            };
            let (base, f) = (
                PartitionFn::new((**base).clone()).unwrap(),
                PartitionFn::new(spec.clone()).unwrap(),
            );
            let mut subs = vec![0u32; into as usize];
            for i in 0..40_000u32 {
                let k = format!("acct:{i:08}");
                if base.partition_of(k.as_bytes()) == split {
                    subs[(f.partition_of(k.as_bytes()) - split) as usize] += 1;
                }
            }
            let total: u32 = subs.iter().sum();
            assert!(total > 1000, "{spec}: {subs:?}");
            assert!(
                subs.iter().all(|&n| n > total / (2 * into)),
                "{spec}: {subs:?}"
            );
            spec
        };
        let s = spread("split:1:4/hash:8", 1, 4);
        assert_eq!(s.to_string(), "split:1:4:1/hash:8:0");
        spread("split:2:4/split:1:4/hash:8", 2, 4);
        spread("split:1:4/hash:8:1", 1, 4);
        for inert in ["split:1:4:0/hash:8", "split:2:4:1/split:1:4:1/hash:8:0"] {
            let e = PartitionSpec::parse(inert).unwrap_err().to_string();
            assert!(e.contains("already a seed of its base"), "{inert}: {e}");
        }
        let inert = PartitionSpec::Split {
            base: Box::new(PartitionSpec::hashed(8, 0)),
            partition: 1,
            into: 4,
            seed: 0,
        };
        assert!(inert.refuse_inert_split().is_err());
        assert_eq!(PartitionSpec::from_bytes(&inert.to_bytes()).unwrap(), inert);
        // Nesting is checked before the walk down the splits (a spec built in code can nest
        // without end).
        let mut deep = PartitionSpec::hashed(8, 0);
        for seed in 1..=(MAX_SPLIT_DEPTH as u64 + 2) {
            deep = PartitionSpec::Split {
                base: Box::new(deep),
                partition: 0,
                into: 2,
                seed,
            };
        }
        let e = deep.refuse_inert_split().unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        // Nor can one be shadowed, or registered.
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::open(dir.path(), crate::Options::default()).unwrap();
        let e = db.set_shadow(Some(inert.clone())).unwrap_err().to_string();
        assert!(e.contains("already a seed of its base"), "{e}");
        assert!(db.shadow_load().is_none());
        assert!(db.register_partition_fn(inert).is_err());
    }

    /// A new database's layout is a spec made like any other: an inert split is refused
    /// there too. It used to be taken as the first layout, whose split partition's keys
    /// all went to one sub-partition, when registering it or shadowing it was refused.
    #[test]
    fn an_inert_split_is_refused_as_a_new_databases_layout() {
        let inert = PartitionSpec::Split {
            base: Box::new(PartitionSpec::hashed(8, 0)),
            partition: 1,
            into: 4,
            seed: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let opts = |partition| crate::Options {
            partition,
            ..crate::Options::default()
        };
        match crate::Db::open(dir.path(), opts(inert)) {
            Err(Error::InvalidPartitionSpec(m)) => {
                assert!(m.contains("already a seed of its base"), "{m}")
            }
            Err(e) => panic!("{e}"),
            Ok(db) => panic!("opened with {:?}", db.layout().versions[0].spec),
        }
        // The same split with a seed of its own makes a database.
        let db = crate::Db::open(
            dir.path(),
            opts(PartitionSpec::split(PartitionSpec::hashed(8, 0), 1, 4)),
        )
        .unwrap();
        assert_eq!(db.layout().versions[0].partitions.len(), 11);
    }

    /// A range scan over a split of a range layout looks only in the base partitions the
    /// range meets, the split one as its sub-partitions; over a split of a hash layout, in
    /// every partition.
    #[test]
    fn a_split_of_a_range_layout_narrows_a_range_to_the_partitions_it_meets() {
        let range = PartitionSpec::Range {
            boundaries: vec![b"b".to_vec(), b"d".to_vec()],
        };
        let f = PartitionFn::new(PartitionSpec::split(range, 1, 4)).unwrap();
        assert_eq!(f.partitions(), 6);
        let look = |lo: Option<&[u8]>, hi: Option<&[u8]>| f.partitions_for_range(lo, hi);
        assert_eq!(look(Some(b"a"), Some(b"a0")), vec![0]);
        assert_eq!(look(Some(b"b"), Some(b"c")), vec![1, 2, 3, 4]);
        assert_eq!(look(Some(b"a"), Some(b"b")), vec![0, 1, 2, 3, 4]);
        assert_eq!(look(Some(b"e"), None), vec![5]);
        assert_eq!(look(None, Some(b"a")), vec![0]);
        assert_eq!(look(None, None), (0..6).collect::<Vec<_>>());
        let nested = PartitionFn::new(PartitionSpec::split(f.spec().clone(), 5, 2)).unwrap();
        assert_eq!(nested.partitions_for_range(Some(b"e"), None), vec![5, 6]);
        assert_eq!(nested.partitions_for_range(Some(b"a"), Some(b"a")), vec![0]);
        let hashed =
            PartitionFn::new(PartitionSpec::split(PartitionSpec::hashed(3, 0), 1, 2)).unwrap();
        assert_eq!(
            hashed.partitions_for_range(Some(b"a"), Some(b"a")),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn split_maps_into_sub_partitions() {
        let base = PartitionSpec::Range {
            boundaries: vec![b"m".to_vec()],
        };
        let f = PartitionFn::new(PartitionSpec::Split {
            base: Box::new(base),
            partition: 0,
            into: 4,
            seed: 1,
        })
        .unwrap();
        assert_eq!(f.partitions(), 5);
        let mut seen = [0; 5];
        for i in 0..1000 {
            let k = format!("a{i}");
            seen[f.partition_of(k.as_bytes()) as usize] += 1;
        }
        assert!(seen[..4].iter().all(|&c| c > 100), "{seen:?}");
        assert_eq!(seen[4], 0);
        assert_eq!(f.partition_of(b"z"), 4);
    }

    /// A seeded random walk over specs (ranges with awkward boundaries, hashes with and
    /// without a prefix, splits of either and splits of splits): every valid one reads back
    /// from its bytes and its text with the same fingerprint, maps every key into its
    /// partitions, keeps a split's other keys where its base put them (shifted past the
    /// sub-partitions), and names, for a range of keys, every partition a key in it maps to.
    #[test]
    fn random_specs_round_trip_and_route_every_key_where_scans_look() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: &[u8] = b" a,b/:\\\xff\x00z";
        let mut key = |next: &mut dyn FnMut() -> u64| -> Vec<u8> {
            let len = (next() % 5) as usize;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        };
        fn spec(
            next: &mut dyn FnMut() -> u64,
            key: &mut dyn FnMut(&mut dyn FnMut() -> u64) -> Vec<u8>,
            depth: usize,
        ) -> PartitionSpec {
            match next() % if depth >= 3 { 2 } else { 4 } {
                0 => {
                    let mut b: Vec<Vec<u8>> = (0..next() % 6).map(|_| key(next)).collect();
                    b.retain(|k| !k.is_empty());
                    b.sort();
                    b.dedup();
                    PartitionSpec::Range { boundaries: b }
                }
                1 => PartitionSpec::Hash {
                    partitions: 1 + (next() % 9) as u32,
                    seed: next() % 4,
                    hashed_prefix: next().is_multiple_of(3).then(|| 1 + (next() % 3) as u32),
                },
                _ => {
                    let base = spec(next, key, depth + 1);
                    let n = base.partitions();
                    let (partition, into) = ((next() % n as u64) as u32, 2 + (next() % 4) as u32);
                    if next().is_multiple_of(2) {
                        PartitionSpec::split(base, partition, into)
                    } else {
                        PartitionSpec::Split {
                            base: Box::new(base),
                            partition,
                            into,
                            seed: next() % 6,
                        }
                    }
                }
            }
        }
        let mut checked = 0;
        for round in 0..3000 {
            let s = spec(&mut next, &mut key, 0);
            if s.validate().is_err() || s.refuse_inert_split().is_err() {
                continue;
            }
            checked += 1;
            let back = PartitionSpec::from_bytes(&s.to_bytes()).unwrap();
            assert_eq!(back, s, "round {round}");
            let text = s.to_string();
            let parsed = PartitionSpec::parse(&text)
                .unwrap_or_else(|e| panic!("round {round}: {text:?} does not parse: {e}"));
            assert_eq!(parsed, s, "round {round}: {text}");
            assert_eq!(parsed.fingerprint(), s.fingerprint(), "round {round}");
            let f = PartitionFn::new(s.clone()).unwrap();
            let keys: Vec<Vec<u8>> = (0..40).map(|_| key(&mut next)).collect();
            for k in &keys {
                let p = f.partition_of(k);
                assert!(p < f.partitions(), "round {round}: {text}: {k:?} → {p}");
                if let PartitionSpec::Split {
                    base,
                    partition,
                    into,
                    ..
                } = &s
                {
                    let b = PartitionFn::new((**base).clone()).unwrap().partition_of(k);
                    let want = match b.cmp(partition) {
                        std::cmp::Ordering::Less => b..b + 1,
                        std::cmp::Ordering::Equal => b..b + into,
                        std::cmp::Ordering::Greater => b + into - 1..b + into,
                    };
                    assert!(want.contains(&p), "round {round}: {text}: {k:?} → {p}");
                }
            }
            for _ in 0..20 {
                let (a, b) = (key(&mut next), key(&mut next));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let lo_b = (next() % 4 != 0).then_some(&lo[..]);
                let hi_b = (next() % 4 != 0).then_some(&hi[..]);
                let looked = f.partitions_for_range(lo_b, hi_b);
                for k in &keys {
                    let inside =
                        lo_b.is_none_or(|l| k[..] >= *l) && hi_b.is_none_or(|h| k[..] <= *h);
                    if inside {
                        let p = f.partition_of(k);
                        assert!(
                            looked.contains(&p),
                            "round {round}: {text}: {k:?} in [{lo_b:?}, {hi_b:?}] is in \
                             partition {p}, not among {looked:?}"
                        );
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn invalid_specs_are_refused() {
        let bad = [
            PartitionSpec::Hash {
                partitions: 0,
                seed: 0,
                hashed_prefix: None,
            },
            PartitionSpec::Range {
                boundaries: vec![b"b".to_vec(), b"a".to_vec()],
            },
            PartitionSpec::Range {
                boundaries: vec![vec![]],
            },
            PartitionSpec::Split {
                base: Box::new(PartitionSpec::default()),
                partition: 1,
                into: 2,
                seed: 0,
            },
            PartitionSpec::Split {
                base: Box::new(PartitionSpec::default()),
                partition: 0,
                into: 1,
                seed: 0,
            },
        ];
        for s in bad {
            assert!(
                matches!(s.validate(), Err(Error::InvalidPartitionSpec(_))),
                "{s:?}"
            );
        }
        for s in [
            "hash:0",
            "hash:x",
            "hash:+4",
            "hash:4:-1",
            "bogus",
            "split:0:2",
            "split:+0:2/range",
            "hash:4:1:0",
            "range:",
            "range:,",
            "range:a,,b",
            "range:a,",
        ] {
            assert!(PartitionSpec::parse(s).is_err(), "{s}");
        }
    }
}
