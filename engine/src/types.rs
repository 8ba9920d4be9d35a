//! Internal entries: a user key with the sequence number and kind of the write that made it.
//!
//! Internal order is (user key ascending, seqno descending): for a given key, the newest
//! entry comes first, so "the first entry at or after (key, snapshot)" is the entry a read at
//! that snapshot should see.

use std::cmp::Ordering;

use bytes::Bytes;

/// Sequence numbers must fit in 56 bits: the low byte of the packed trailer holds the kind.
pub const MAX_SEQNO: u64 = (1 << 56) - 1;

/// What an entry says about its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// The key was deleted.
    Delete = 0,
    /// The key holds a value.
    Value = 1,
    /// Forwarding pointer: the value with this seqno was moved to another layout version
    /// (whose id is the entry's value). Pointers are not values; reads never return them.
    Forward = 2,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Delete),
            1 => Some(Kind::Value),
            2 => Some(Kind::Forward),
            _ => None,
        }
    }
}

/// Packs seqno and kind into the 8-byte trailer stored after every key.
#[inline]
pub fn pack_trailer(seqno: u64, kind: Kind) -> u64 {
    (seqno << 8) | kind as u64
}

/// Compares internal keys given as (user key, seqno).
#[inline]
pub fn cmp_internal(a: &[u8], a_seq: u64, b: &[u8], b_seq: u64) -> Ordering {
    cmp_keys(a, b).then(b_seq.cmp(&a_seq))
}

/// A key's first eight bytes as a big-endian number, zero-padded. Order-preserving in one
/// direction: `key_prefix(a) < key_prefix(b)` implies `a < b` (and `>` implies `>`); equal
/// prefixes say nothing, and the keys must be compared.
#[inline]
pub fn key_prefix(key: &[u8]) -> u64 {
    // Not a zero-padded copy into an array: a copy of variable length is a `memcpy` call,
    // and reading its bytes back as one word stalls on store forwarding.
    if let Some(b) = key.first_chunk::<8>() {
        return u64::from_be_bytes(*b);
    }
    key.iter()
        .enumerate()
        .fold(0, |v, (i, &b)| v | (b as u64) << (56 - 8 * i))
}

/// Binary search of `n` sorted internal keys that all start with `head`, for the first at or
/// after `key`. `prefix(i)` is the top `bits` bits of [`key_prefix`] of key `i` after
/// `head` (which keep its one-way order); `tie_less(i)` says
/// whether entry `i` sorts before the probe, and is asked only when the prefixes tie. The
/// prefixes sit side by side, so the search touches a few cache lines instead of one per
/// probed key.
#[inline]
pub fn prefix_search<E>(
    n: usize,
    head: &[u8],
    key: &[u8],
    bits: u32,
    prefix: impl Fn(usize) -> u64,
    mut tie_less: impl FnMut(usize) -> std::result::Result<bool, E>,
) -> std::result::Result<usize, E> {
    // A key that does not start with `head` sorts before or after all `n`.
    let c = head.len();
    let probe_head = &key[..c.min(key.len())];
    match cmp_keys(probe_head, &head[..probe_head.len()]) {
        Ordering::Less => return Ok(0),
        Ordering::Greater => return Ok(n),
        // A proper prefix of `head`.
        Ordering::Equal if key.len() < c => return Ok(0),
        Ordering::Equal => {}
    }
    let probe = key_prefix(&key[c..]) >> (64 - bits);
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let less = match prefix(mid).cmp(&probe) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => tie_less(mid)?,
        };
        if less {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Length of the longest common prefix of `a` and `b`.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Key equality without a library `memcmp` call (see [`cmp_keys`]): iterators ask it once
/// per entry.
#[inline]
pub fn eq_keys(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut a8 = a.chunks_exact(8);
    let mut b8 = b.chunks_exact(8);
    for (x, y) in (&mut a8).zip(&mut b8) {
        if x != y {
            return false;
        }
    }
    a8.remainder()
        .iter()
        .zip(b8.remainder())
        .all(|(x, y)| x == y)
}

/// Byte-wise key order, eight bytes at a time. Keys are short (often 8 to 32 bytes), where
/// a library `memcmp` call costs more than the comparison; merges and seeks do little else.
#[inline]
pub fn cmp_keys(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    let (mut x, mut y) = (a, b);
    let mut done = 0;
    while done + 8 <= n {
        let (ha, ta) = x.split_at(8);
        let (hb, tb) = y.split_at(8);
        let u = u64::from_be_bytes(ha.try_into().expect("8 bytes"));
        let v = u64::from_be_bytes(hb.try_into().expect("8 bytes"));
        if u != v {
            return u.cmp(&v);
        }
        x = ta;
        y = tb;
        done += 8;
    }
    for i in 0..n - done {
        if x[i] != y[i] {
            return x[i].cmp(&y[i]);
        }
    }
    a.len().cmp(&b.len())
}

/// One versioned entry as it flows through iterators, flushes and compactions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    pub seqno: u64,
    pub kind: Kind,
    pub value: Bytes,
}

impl Entry {
    #[inline]
    pub fn cmp_internal(&self, other: &Entry) -> Ordering {
        cmp_internal(&self.key, self.seqno, &other.key, other.seqno)
    }

    /// Bytes this entry occupies in a data block (approximately).
    pub fn encoded_len(&self) -> usize {
        self.key.len() + self.value.len() + 12
    }
}

/// Keys around the 8- and 16-byte boundaries the fast comparisons work in: empty, short,
/// zero padded, equal in their first eight or sixteen bytes, all 0xff.
#[cfg(test)]
pub(crate) fn tricky_keys() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![1],
        b"ab".to_vec(),
        b"ab\x00".to_vec(),
        b"ab\x00\x00\x00\x00\x00\x00\x01".to_vec(),
        b"abcdefgh".to_vec(),
        b"abcdefgh\x00".to_vec(),
        b"abcdefgi".to_vec(),
        b"abcdefghijklmno".to_vec(),
        b"abcdefghijklmnop".to_vec(),
        b"abcdefghijklmnoq".to_vec(),
        b"abcdefghijklmnopq".to_vec(),
        b"abcdefghijklmnop\x00".to_vec(),
        b"abcdefghijklmnop\x00\x01".to_vec(),
        b"abcdefghijklmnopr".to_vec(),
        vec![0; 16],
        vec![0; 17],
        vec![0xff; 7],
        vec![0xff; 8],
        vec![0xff; 9],
        vec![0xff; 16],
        vec![0xff; 17],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_key_order_matches_slice_order() {
        let keys = tricky_keys();
        for a in &keys {
            for b in &keys {
                assert_eq!(cmp_keys(a, b), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(eq_keys(a, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn key_prefix_never_contradicts_key_order() {
        let keys = tricky_keys();
        for a in &keys {
            for b in &keys {
                match key_prefix(a).cmp(&key_prefix(b)) {
                    Ordering::Equal => {}
                    o => assert_eq!(o, a.cmp(b), "{a:?} vs {b:?}"),
                }
            }
        }
        // Equal prefixes for different keys: the caller must compare the keys.
        assert_eq!(key_prefix(b"ab"), key_prefix(b"ab\x00"));
        // The first eight bytes, zero-padded, whatever the length.
        for k in keys
            .iter()
            .chain([b"\x01\x02\x03".to_vec(), b"abcdefg".to_vec()].iter())
        {
            let mut padded = [0u8; 8];
            let n = k.len().min(8);
            padded[..n].copy_from_slice(&k[..n]);
            assert_eq!(key_prefix(k), u64::from_be_bytes(padded), "{k:?}");
        }
    }

    #[test]
    fn trailer_round_trip() {
        for kind in [Kind::Delete, Kind::Value, Kind::Forward] {
            let t = pack_trailer(MAX_SEQNO, kind);
            assert_eq!(t >> 8, MAX_SEQNO);
            assert_eq!(Kind::from_u8(t as u8), Some(kind));
        }
        assert_eq!(Kind::from_u8(7), None);
    }
}
