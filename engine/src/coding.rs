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

/// The mask of [`masked_crc`], for CRCs computed over several pieces.
#[inline]
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

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
