//! Blocks: sorted runs of internal entries with an offset array for binary search.
//!
//! ```text
//! entry*  : [key_len varint][value_len varint][trailer u64 = seqno << 8 | kind][key][value]
//! offsets : u32 per entry
//! count   : u32
//! ```
//! Keys are stored whole (no prefix compression) so that a key handed to a reader is a
//! zero-copy slice of the block. Data and index blocks share the format; an index entry's
//! value is the encoded handle of a data block.

use std::cmp::Ordering;
use std::path::Path;

use bytes::Bytes;

use crate::coding::{get_varint, put_varint};
use crate::error::{Error, Result};
use crate::types::{cmp_internal, pack_trailer, Entry, Kind};

#[derive(Default)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    offsets: Vec<u32>,
}

impl BlockBuilder {
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    pub fn add(&mut self, key: &[u8], seqno: u64, kind: Kind, value: &[u8]) {
        self.offsets.push(self.buf.len() as u32);
        put_varint(&mut self.buf, key.len() as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf
            .extend_from_slice(&pack_trailer(seqno, kind).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
    }

    /// Bytes `add(key, _, _, value)` adds to [`estimated_len`](Self::estimated_len).
    pub fn entry_len(key: &[u8], value: &[u8]) -> usize {
        crate::coding::varint_len(key.len() as u64)
            + crate::coding::varint_len(value.len() as u64)
            + 8
            + key.len()
            + value.len()
            + 4
    }

    /// Size of the finished block if it were finished now.
    pub fn estimated_len(&self) -> usize {
        self.buf.len() + self.offsets.len() * 4 + 4
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Finishes the block into `out` and resets the builder.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf);
        for o in &self.offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        self.buf.clear();
        self.offsets.clear();
    }
}

/// Parses the memory-format entry that starts at byte `p` of `area` (a block's entry area)
/// into (key start, key end, trailer, value start, value end), with the reason as a plain
/// string when the bytes are bad.
#[inline]
pub(crate) fn parse_entry(
    area: &[u8],
    mut p: usize,
) -> std::result::Result<(usize, usize, u64, usize, usize), &'static str> {
    let rest = area
        .get(p..)
        .filter(|r| !r.is_empty())
        .ok_or("offset outside entry area")?;
    let (klen, n) = get_varint(rest).ok_or("bad key length")?;
    p += n;
    let (vlen, n) = get_varint(&area[p..]).ok_or("bad value length")?;
    p += n;
    let t = area.get(p..p + 8).ok_or("truncated trailer")?;
    let trailer = u64::from_le_bytes(t.try_into().expect("8 bytes"));
    p += 8;
    let kend = p
        .checked_add(klen as usize)
        .filter(|&e| e <= area.len())
        .ok_or("key runs past block")?;
    let vend = kend
        .checked_add(vlen as usize)
        .filter(|&e| e <= area.len())
        .ok_or("value runs past block")?;
    Ok((p, kend, trailer, kend, vend))
}

/// The error for a bad entry `i` of the block at `base` in `file`.
#[cold]
pub(crate) fn entry_error(file: &Path, base: u64, i: usize, why: &str) -> Error {
    Error::corruption(file, base, format!("block entry {i}: {why}"))
}

/// A decoded (decompressed, checksum-verified) block.
#[derive(Clone)]
pub struct Block {
    data: Bytes,
    /// Byte length of the entry area; the offset array follows it.
    entries_end: usize,
    count: usize,
}

impl Block {
    /// Validates the block's frame (count and offset array bounds). `file`/`offset` locate the
    /// block for error messages.
    pub fn new(data: Bytes, file: &Path, offset: u64) -> Result<Block> {
        let n = data.len();
        if n < 4 {
            return Err(Error::corruption(
                file,
                offset,
                "block shorter than its entry count",
            ));
        }
        let count =
            u32::from_le_bytes([data[n - 4], data[n - 3], data[n - 2], data[n - 1]]) as usize;
        let entries_end = count
            .checked_mul(4)
            .and_then(|o| (n - 4).checked_sub(o))
            .ok_or_else(|| {
                Error::corruption(
                    file,
                    offset,
                    format!("block entry count {count} does not fit"),
                )
            })?;
        Ok(Block {
            data,
            entries_end,
            count,
        })
    }

    /// A block with no entries (a cursor's block before it loads one).
    pub fn empty() -> Block {
        Block {
            data: Bytes::new(),
            entries_end: 0,
            count: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn size(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn entry_offset(&self, i: usize) -> usize {
        let p = self.entries_end + i * 4;
        u32::from_le_bytes([
            self.data[p],
            self.data[p + 1],
            self.data[p + 2],
            self.data[p + 3],
        ]) as usize
    }

    /// The decoded block bytes (entries, then the offset array).
    #[inline]
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Decodes entry `i` into (key start, key end, trailer, value start, value end) within
    /// `data()`.
    #[inline]
    pub(crate) fn parts(
        &self,
        i: usize,
        file: &Path,
        base: u64,
    ) -> Result<(usize, usize, u64, usize, usize)> {
        self.parts_from(self.entry_offset(i))
            .map_err(|why| entry_error(file, base, i, why))
    }

    /// [`parts`](Self::parts) of the entry that starts at byte `p`, with the reason as a
    /// plain string when the bytes are bad (the caller names the file). Entries are stored
    /// back to back, so a forward walk knows where the next one starts without the offset
    /// array.
    #[inline]
    pub(crate) fn parts_from(
        &self,
        p: usize,
    ) -> std::result::Result<(usize, usize, u64, usize, usize), &'static str> {
        parse_entry(&self.data[..self.entries_end], p)
    }

    /// Entry `i` as an owned, zero-copy [`Entry`].
    pub fn entry(&self, i: usize, file: &Path, base: u64) -> Result<Entry> {
        let (ks, ke, trailer, vs, ve) = self.parts(i, file, base)?;
        let kind = Kind::from_u8(trailer as u8).ok_or_else(|| {
            Error::corruption(
                file,
                base,
                format!("block entry {i}: bad kind {}", trailer as u8),
            )
        })?;
        Ok(Entry {
            key: self.data.slice(ks..ke),
            seqno: trailer >> 8,
            kind,
            value: self.data.slice(vs..ve),
        })
    }

    fn cmp_at(&self, i: usize, key: &[u8], seqno: u64, file: &Path, base: u64) -> Result<Ordering> {
        // Fast path for the common entry (key and value shorter than 128 bytes: one-byte
        // length varints); anything else, or anything out of bounds, takes the checked path.
        let p = self.entry_offset(i);
        let area = &self.data[..self.entries_end];
        if let (Some(&kl), Some(&vl)) = (area.get(p), area.get(p + 1)) {
            if kl < 0x80 && vl < 0x80 {
                let ks = p + 10;
                if let (Some(t), Some(k)) = (area.get(p + 2..ks), area.get(ks..ks + kl as usize)) {
                    let trailer = u64::from_le_bytes(t.try_into().expect("8 bytes"));
                    return Ok(cmp_internal(k, trailer >> 8, key, seqno));
                }
            }
        }
        let (ks, ke, trailer, _, _) = self.parts(i, file, base)?;
        Ok(cmp_internal(&self.data[ks..ke], trailer >> 8, key, seqno))
    }

    /// Index of the first entry at or after (key, seqno) in internal order; `len()` if none.
    pub fn seek(&self, key: &[u8], seqno: u64, file: &Path, base: u64) -> Result<usize> {
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.cmp_at(mid, key, seqno, file, base)? == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Index of the first entry whose user key is > `key` (all versions of `key` skipped).
    pub fn seek_after_user_key(&self, key: &[u8], file: &Path, base: u64) -> Result<usize> {
        self.seek(key, 0, file, base).and_then(|i| {
            // seek(key, 0) lands on key's oldest version (seqno 0 sorts last) or after it.
            let mut i = i;
            while i < self.count {
                let (ks, ke, _, _, _) = self.parts(i, file, base)?;
                if &self.data[ks..ke] != key {
                    break;
                }
                i += 1;
            }
            Ok(i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(&str, u64, Kind, &str)]) -> Block {
        let mut b = BlockBuilder::new();
        for (k, s, kind, v) in entries {
            b.add(k.as_bytes(), *s, *kind, v.as_bytes());
        }
        let mut out = Vec::new();
        b.finish_into(&mut out);
        Block::new(Bytes::from(out), Path::new("t"), 0).unwrap()
    }

    #[test]
    fn round_trip_and_seek() {
        let b = build(&[
            ("a", 5, Kind::Value, "a5"),
            ("b", 9, Kind::Delete, ""),
            ("b", 3, Kind::Value, "b3"),
            ("d", 1, Kind::Value, "d1"),
        ]);
        let p = Path::new("t");
        assert_eq!(b.len(), 4);
        let e = b.entry(2, p, 0).unwrap();
        assert_eq!(
            (&e.key[..], e.seqno, e.kind, &e.value[..]),
            (&b"b"[..], 3, Kind::Value, &b"b3"[..])
        );
        assert_eq!(b.seek(b"b", u64::MAX, p, 0).unwrap(), 1);
        assert_eq!(b.seek(b"b", 5, p, 0).unwrap(), 2);
        assert_eq!(b.seek(b"c", u64::MAX, p, 0).unwrap(), 3);
        assert_eq!(b.seek(b"e", u64::MAX, p, 0).unwrap(), 4);
        assert_eq!(b.seek_after_user_key(b"b", p, 0).unwrap(), 3);
    }

    #[test]
    fn flipped_bytes_give_errors_or_entries_never_panics() {
        let mut bb = BlockBuilder::new();
        for i in 0..20u64 {
            bb.add(
                format!("key{i:03}").as_bytes(),
                100 - i,
                Kind::Value,
                b"value",
            );
        }
        let mut out = Vec::new();
        bb.finish_into(&mut out);
        for i in 0..out.len() {
            for bit in [0, 3, 7] {
                let mut c = out.clone();
                c[i] ^= 1 << bit;
                if let Ok(b) = Block::new(Bytes::from(c), Path::new("t"), 0) {
                    for j in 0..b.len() {
                        let _ = b.entry(j, Path::new("t"), 0);
                    }
                    let _ = b.seek(b"key010", 50, Path::new("t"), 0);
                }
            }
        }
        for n in 0..out.len() {
            if let Ok(b) = Block::new(Bytes::copy_from_slice(&out[..n]), Path::new("t"), 0) {
                for j in 0..b.len() {
                    let _ = b.entry(j, Path::new("t"), 0);
                }
            }
        }
    }
}
