//! Byte encoding helpers shared by every on-disk structure.
//!
//! `Decoder` never panics on short or malformed input: each accessor returns a
//! [`Error::Corruption`] naming the file and the absolute offset of the bad field.

use std::path::Path;

use crate::error::{Error, Result};

pub fn put_u8(buf: &mut Vec<u8>, v: u8) {
    buf.push(v);
}

pub fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads the varint at `*p` in `b`, advancing `*p` past it.
#[inline]
pub fn varint_at(b: &[u8], p: &mut usize) -> Option<u64> {
    let (v, n) = get_varint(b.get(*p..)?)?;
    *p += n;
    Some(v)
}

/// Writes `v` as a varint at the start of `buf` (which has room for it); returns its length.
#[inline]
pub fn put_varint_at(buf: &mut [u8], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    n + 1
}

/// Bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Length-prefixed byte string.
pub fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Decodes a varint from the front of `src`: (value, bytes used), or `None` if truncated or
/// longer than ten bytes.
#[inline]
pub fn get_varint(src: &[u8]) -> Option<(u64, usize)> {
    // Most lengths in a block fit one byte.
    if let Some(&b) = src.first() {
        if b < 0x80 {
            return Some((u64::from(b), 1));
        }
    }
    let mut v: u64 = 0;
    for (i, &b) in src.iter().enumerate().take(10) {
        // The tenth byte holds bit 63 alone: more would not fit in 64 bits.
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A cursor over bytes from `file`, whose first byte sits at `base` in that file.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a Path,
    base: u64,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], file: &'a Path, base: u64) -> Self {
        Decoder {
            buf,
            pos: 0,
            file,
            base,
        }
    }

    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::corruption(self.file, self.offset(), reason)
    }

    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.error(format!(
                "{what}: need {n} bytes, only {} left",
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    /// A flag byte: 0 or 1, anything else an error naming `what`.
    pub fn flag(&mut self, what: &str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(self.error(format!("bad {what} {x}"))),
        }
    }

    pub fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn varint(&mut self, what: &str) -> Result<u64> {
        match get_varint(&self.buf[self.pos..]) {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(self.error(format!("{what}: malformed varint"))),
        }
    }

    /// A varint that must fit a `usize` no larger than `max`.
    pub fn len(&mut self, max: usize, what: &str) -> Result<usize> {
        let at = self.offset();
        let v = self.varint(what)?;
        if v > max as u64 {
            return Err(Error::corruption(
                self.file,
                at,
                format!("{what}: length {v} exceeds limit {max}"),
            ));
        }
        Ok(v as usize)
    }

    pub fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8]> {
        let n = self.len(max, what)?;
        self.take(n, what)
    }

    pub fn u32_varint(&mut self, what: &str) -> Result<u32> {
        let at = self.offset();
        let v = self.varint(what)?;
        u32::try_from(v)
            .map_err(|_| Error::corruption(self.file, at, format!("{what}: {v} does not fit u32")))
    }
}

/// CRC32 of a record, masked so that a CRC stored inside checksummed data does not
/// checksum to a fixed point (the LevelDB trick).
#[inline]
pub fn masked_crc(data: &[u8]) -> u32 {
    mask_crc(crc32fast::hash(data))
}

/// CRC-32 arithmetic for joining and splitting checksums of adjacent byte strings:
/// `crc32(a ++ b) == crc32_shift(crc32(a), b.len()) ^ crc32(b)`, so the CRC of any slice of a
/// buffer follows from the CRCs of two of its prefixes in O(log length) steps, without
/// reading the slice. (A CRC is a polynomial remainder; shifting by `n` bytes multiplies by
/// x^(8n) modulo the CRC polynomial, and the initial and final inversions cancel out.)
pub fn crc32_shift(crc: u32, bytes: u64) -> u32 {
    // x^(8·bytes) mod P, as the product of one table entry per non-zero byte of `bytes`.
    let mut shift = 1u32 << 31; // the polynomial 1, in reflected bit order
    for (j, table) in SHIFT_BY_BYTE.iter().enumerate() {
        let b = (bytes >> (8 * j)) as u8;
        if b != 0 {
            shift = gf2_mul(table[b as usize], shift);
        }
    }
    gf2_mul(shift, crc)
}

/// The reflected CRC-32 (IEEE) polynomial.
const CRC32_POLY: u32 = 0xedb8_8320;

/// Product of two polynomials modulo the CRC-32 polynomial (bit 31 is x^0).
const fn gf2_mul(a: u32, mut b: u32) -> u32 {
    let mut product = 0u32;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32_POLY
        } else {
            b >> 1
        };
        bit >>= 1;
    }
    product
}

/// `SHIFT_BY_BYTE[j][b]` is x^(8·b·256^j) modulo the CRC-32 polynomial: the shift by `b`
/// bytes in byte `j` of a length.
static SHIFT_BY_BYTE: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    // x^8: x^1 (bit 30) squared three times.
    let mut unit = 1u32 << 30;
    unit = gf2_mul(unit, unit);
    unit = gf2_mul(unit, unit);
    unit = gf2_mul(unit, unit);
    let mut j = 0;
    while j < 8 {
        // unit = x^(8·256^j); entry b = unit^b.
        t[j][0] = 1 << 31;
        let mut b = 1;
        while b < 256 {
            t[j][b] = gf2_mul(t[j][b - 1], unit);
            b += 1;
        }
        // x^(8·256^(j+1)) = unit^256 = (unit^255) · unit.
        unit = gf2_mul(t[j][255], unit);
        j += 1;
    }
    t
};

/// The mask of [`masked_crc`], for CRCs computed over several pieces.
#[inline]
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_shift_joins_and_splits_checksums() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for &(a, b) in &[
            (0, 0),
            (0, 1),
            (1, 0),
            (5, 7),
            (64, 64),
            (100, 2900),
            (1234, 1766),
            (2999, 1),
        ] {
            let (x, y) = data[..a + b].split_at(a);
            let whole = crc32fast::hash(&data[..a + b]);
            let (cx, cy) = (crc32fast::hash(x), crc32fast::hash(y));
            assert_eq!(crc32_shift(cx, b as u64) ^ cy, whole, "join {a}+{b}");
            assert_eq!(whole ^ crc32_shift(cx, b as u64), cy, "split {a}+{b}");
        }
        // A long shift against hashing that many zero bytes.
        let zeros = vec![0u8; 1 << 20];
        let mut h = crc32fast::Hasher::new_with_initial(0x1234_5678);
        h.update(&zeros);
        assert_eq!(
            crc32_shift(0x1234_5678, 1 << 20) ^ crc32fast::hash(&zeros),
            h.finalize()
        );
    }

    #[test]
    fn varint_round_trip() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16383,
            16384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Some((v, b.len())));
            assert_eq!(varint_len(v), b.len(), "varint_len({v})");
        }
    }

    #[test]
    fn truncated_and_overlong_varints_are_errors() {
        assert_eq!(get_varint(&[0x80, 0x80]), None);
        assert_eq!(get_varint(&[0xff; 11]), None);
        // Ten bytes whose last holds more than bit 63: not a 64-bit value (it used to
        // decode, truncated, as 0).
        let mut wide = [0x80u8; 10];
        wide[9] = 0x02;
        assert_eq!(get_varint(&wide), None);
        wide[9] = 0x01;
        assert_eq!(get_varint(&wide), Some((1 << 63, 10)));
        let p = Path::new("f");
        let mut d = Decoder::new(&[0x80], p, 100);
        let e = d.varint("x").unwrap_err();
        assert!(matches!(e, Error::Corruption { offset: 100, .. }), "{e}");
    }

    #[test]
    fn decoder_reports_absolute_offsets() {
        let p = Path::new("f");
        let mut d = Decoder::new(&[1, 2, 3], p, 1000);
        assert_eq!(d.u8("a").unwrap(), 1);
        let e = d.u32("b").unwrap_err();
        assert!(matches!(e, Error::Corruption { offset: 1001, .. }), "{e}");
        let mut d = Decoder::new(&[5, 1, 2], p, 0);
        assert!(d.bytes(10, "c").is_err());
        let mut d = Decoder::new(&[50, 1, 2], p, 0);
        assert!(d.bytes(10, "c").is_err(), "length over limit is refused");
    }
}
