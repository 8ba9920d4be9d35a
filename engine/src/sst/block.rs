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
use std::sync::Arc;

use bytes::Bytes;

use crate::coding::{get_varint, put_varint};
use crate::error::{Error, Result};
use crate::types::{
    cmp_internal, common_prefix_len, key_prefix, pack_trailer, prefix_search, Entry, Kind,
};

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
    let (klen, vlen) = match (area.get(p), area.get(p.wrapping_add(1))) {
        // Most entries: key and value shorter than 128 bytes, one-byte lengths.
        (Some(&k), Some(&v)) if k < 0x80 && v < 0x80 => {
            p += 2;
            (u64::from(k), u64::from(v))
        }
        _ => {
            let rest = area
                .get(p..)
                .filter(|r| !r.is_empty())
                .ok_or("offset outside entry area")?;
            let (klen, n) = get_varint(rest).ok_or("bad key length")?;
            p += n;
            let (vlen, n) = get_varint(&area[p..]).ok_or("bad value length")?;
            p += n;
            (klen, vlen)
        }
    };
    // No writer makes longer ones; a read, a lazy move or a compaction handing one on would
    // meet the limits' assertions further along (the memtable's) instead of this error.
    if klen > crate::MAX_KEY_LEN as u64 {
        return Err("key longer than any key can be");
    }
    if vlen > crate::MAX_VALUE_LEN as u64 {
        return Err("value longer than any value can be");
    }
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
    /// Search prefixes, for a block built by [`Block::from_bytes`] to be searched.
    search: Option<Search>,
    /// Bytes of the memory `data` takes if more than its length: a block in a page of the
    /// block cache's (see [`in_page`](Self::in_page)).
    held: usize,
}

/// A searchable block's search prefixes: one u32 per entry, the top 32 bits of
/// [`key_prefix`] of the entry's key after the bytes all its keys share, and each entry's
/// offset as a u16 (blocks under 64 KiB). A seek then reads two or three adjacent cache lines
/// instead of one offset and one entry per probe (in a block the CPU caches have not seen,
/// each of those is a trip to memory), compares whole keys only on a tie, and finds the entry
/// it lands on without the block's offset array. Shared bytes, prefixes and offsets have one
/// allocation of their own: appended to the block's buffer, they would push a 4 KiB block
/// into the allocator's next size class.
#[derive(Clone)]
struct Search {
    /// The shared bytes, zero-padded to a multiple of 4, the prefixes, then the offsets (all
    /// native-endian).
    bytes: Arc<[u8]>,
    head_len: usize,
    count: usize,
}

impl Search {
    #[inline]
    fn head(&self) -> &[u8] {
        &self.bytes[..self.head_len]
    }

    #[inline]
    fn prefix(&self, i: usize) -> u32 {
        let p = self.head_len.next_multiple_of(4) + i * 4;
        u32::from_ne_bytes(self.bytes[p..p + 4].try_into().expect("4 bytes"))
    }

    #[inline]
    fn offset(&self, i: usize) -> usize {
        // Past the last entry: an offset no entry has, which parsing refuses (as the
        // block's own array would answer with its count field, or nothing).
        let p = self.head_len.next_multiple_of(4) + self.count * 4 + i * 2;
        self.bytes.get(p..p + 2).map_or(u32::MAX as usize, |b| {
            u16::from_ne_bytes([b[0], b[1]]) as usize
        })
    }
}

/// Bits of [`key_prefix`] a search prefix keeps.
const SEARCH_BITS: u32 = 32;

/// Checks a block's frame: the entry count fits, with its offset array, in `data`. Returns
/// (end of the entry area, entry count).
fn frame(data: &[u8], file: &Path, offset: u64) -> Result<(usize, usize)> {
    let n = data.len();
    if n < 4 {
        return Err(Error::corruption(
            file,
            offset,
            "block shorter than its entry count",
        ));
    }
    let count = u32::from_le_bytes([data[n - 4], data[n - 3], data[n - 2], data[n - 1]]) as usize;
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
    Ok((entries_end, count))
}

/// Where the key of the entry at byte `p` of `area` (a block's entry area) is, for the
/// common entry (key and value shorter than 128 bytes: one-byte length varints) whose key
/// lies inside `area`; `None` for anything else, which takes [`parse_entry`].
#[inline]
fn short_entry_key(area: &[u8], p: usize) -> Option<(usize, usize)> {
    match (area.get(p), area.get(p + 1)) {
        (Some(&kl), Some(&vl)) if kl < 0x80 && vl < 0x80 => {
            let ks = p + 10;
            let ke = ks + kl as usize;
            (ke <= area.len()).then_some((ks, ke))
        }
        _ => None,
    }
}

/// The search prefixes of the `count` entries of `block` (entry area `..entries_end`);
/// `None` if an entry does not parse or the block is too large for u16 offsets.
fn search_prefixes(block: &[u8], entries_end: usize, count: usize) -> Option<Search> {
    if entries_end > u16::MAX as usize {
        return None;
    }
    let area = &block[..entries_end];
    let offset = |i: usize| -> Option<usize> {
        let o = block.get(entries_end + i * 4..entries_end + i * 4 + 4)?;
        Some(u32::from_le_bytes(o.try_into().ok()?) as usize)
    };
    let key_at = |o: usize| -> Option<(usize, usize)> {
        short_entry_key(area, o).or_else(|| parse_entry(area, o).ok().map(|(ks, ke, ..)| (ks, ke)))
    };
    // Where the entry at `o` (key `ks..ke`) ends: after its value.
    let end_of = |o: usize, ke: usize| -> Option<usize> {
        match area.get(o + 1) {
            Some(&vl) if area[o] < 0x80 && vl < 0x80 => Some(ke + vl as usize),
            _ => parse_entry(area, o).ok().map(|e| e.4),
        }
    };
    let first = key_at(offset(0)?)?;
    let last = key_at(offset(count.checked_sub(1)?)?)?;
    let head_len = common_prefix_len(&area[first.0..first.1], &area[last.0..last.1]);
    let at = head_len.next_multiple_of(4);
    let mut bytes = vec![0u8; at + 6 * count];
    bytes[..head_len].copy_from_slice(&area[first.0..first.0 + head_len]);
    let (prefixes, offsets) = bytes[at..].split_at_mut(4 * count);
    // The array must name the entries as they lie, back to back (see
    // `Block::check_offsets`, which a block without prefixes takes instead).
    let mut next = 0;
    for (i, (p, o)) in prefixes
        .chunks_exact_mut(4)
        .zip(offsets.chunks_exact_mut(2))
        .enumerate()
    {
        let start = offset(i)?;
        if start != next {
            return None;
        }
        let (ks, ke) = key_at(start)?;
        next = end_of(start, ke)?;
        // Keys between the first and the last share their head when the block is in
        // order; `get` keeps one that is not from panicking.
        let k = key_prefix(area.get(ks + head_len..ke).unwrap_or_default());
        p.copy_from_slice(&((k >> (64 - SEARCH_BITS)) as u32).to_ne_bytes());
        // Below `entries_end` (the entry parsed), so it fits.
        o.copy_from_slice(&(start as u16).to_ne_bytes());
    }
    if next != entries_end {
        return None;
    }
    Some(Search {
        bytes: bytes.into(),
        head_len,
        count,
    })
}

impl Block {
    /// Validates the block's frame (count and offset array bounds). `file`/`offset` locate the
    /// block for error messages.
    pub fn new(data: Bytes, file: &Path, offset: u64) -> Result<Block> {
        let (entries_end, count) = frame(&data, file, offset)?;
        Ok(Block {
            data,
            entries_end,
            count,
            search: None,
            held: 0,
        })
    }

    /// The block whose bytes are `buf[..len]` (whatever follows is dropped); see
    /// [`from_bytes`](Self::from_bytes).
    pub fn from_vec(
        mut buf: Vec<u8>,
        len: usize,
        search: bool,
        file: &Path,
        offset: u64,
    ) -> Result<Block> {
        buf.truncate(len);
        Block::from_bytes(Bytes::from(buf), search, file, offset)
    }

    /// The block whose bytes are `data`. With `search`, it gets search prefixes: for blocks
    /// that stay in the block cache to be searched, where 6 bytes per entry buy faster seeks
    /// for as long as the block is cached. A block with an entry that does not parse gets no
    /// prefixes; reading that entry reports the damage as it does in any block.
    pub fn from_bytes(data: Bytes, search: bool, file: &Path, offset: u64) -> Result<Block> {
        let (entries_end, count) = frame(&data, file, offset)?;
        let search = search
            .then(|| search_prefixes(&data, entries_end, count))
            .flatten();
        Ok(Block {
            data,
            entries_end,
            count,
            search,
            held: 0,
        })
    }

    /// This block with search prefixes (see [`from_bytes`](Self::from_bytes)), for a block
    /// cached without them (a scan walked through it) that a seek or a point read now
    /// searches; `None` if it has them, or an entry does not parse (the block is then
    /// searched as it is, and reading that entry reports the damage).
    pub fn with_search(&self) -> Option<Block> {
        if self.search.is_some() {
            return None;
        }
        Some(Block {
            search: Some(search_prefixes(&self.data, self.entries_end, self.count)?),
            ..self.clone()
        })
    }

    /// Checks that the offset array names the entries as they lie, back to back from the
    /// start of the entry area to its end. Point reads find entries through the array and
    /// cursors walk them in turn: a block whose array disagreed (checksums intact) served
    /// one value to `get` and another to a scan. A block decoded from key-delta form has
    /// the array its decoder wrote, and needs no check.
    pub fn check_offsets(&self, file: &Path, base: u64) -> Result<()> {
        let area = &self.data[..self.entries_end];
        let mut p = 0;
        for i in 0..self.count {
            let at = self.entry_offset(i);
            if at != p {
                return Err(entry_error(
                    file,
                    base,
                    i,
                    &format!(
                        "the offset array puts it at byte {at}, the entries before end at {p}"
                    ),
                ));
            }
            p = parse_entry(area, p)
                .map_err(|why| entry_error(file, base, i, why))?
                .4;
        }
        if p != self.entries_end {
            return Err(Error::corruption(
                file,
                base,
                format!(
                    "block entries end at byte {p}, its offset array begins at {}",
                    self.entries_end
                ),
            ));
        }
        Ok(())
    }

    /// A block with no entries (a cursor's block before it loads one).
    pub fn empty() -> Block {
        Block {
            data: Bytes::new(),
            entries_end: 0,
            count: 0,
            search: None,
            held: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the block has search prefixes.
    pub fn is_searchable(&self) -> bool {
        self.search.is_some()
    }

    /// Bytes the block holds in memory (with its search prefixes, if any).
    pub fn size(&self) -> usize {
        self.data.len().max(self.held) + self.search.as_ref().map_or(0, |s| 16 + s.bytes.len())
    }

    /// The block, known to take a page of `page` bytes (its [`size`](Self::size) counts the
    /// whole page).
    pub fn in_page(mut self, page: usize) -> Block {
        self.held = page;
        self
    }

    pub(crate) fn entry_offset(&self, i: usize) -> usize {
        if let Some(s) = &self.search {
            return s.offset(i);
        }
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
        if i >= self.len() {
            return Err(Error::OutOfRange {
                what: "block entry",
                index: i as u64,
                len: self.len() as u64,
            });
        }
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
        let area = &self.data[..self.entries_end];
        if let Some((ks, ke)) = short_entry_key(area, self.entry_offset(i)) {
            let trailer = u64::from_le_bytes(area[ks - 8..ks].try_into().expect("8 bytes"));
            return Ok(cmp_internal(&area[ks..ke], trailer >> 8, key, seqno));
        }
        let (ks, ke, trailer, _, _) = self.parts(i, file, base)?;
        Ok(cmp_internal(&self.data[ks..ke], trailer >> 8, key, seqno))
    }

    /// Index of the first entry at or after (key, seqno) in internal order; `len()` if none.
    pub fn seek(&self, key: &[u8], seqno: u64, file: &Path, base: u64) -> Result<usize> {
        if let Some(s) = &self.search {
            return prefix_search(
                self.count,
                s.head(),
                key,
                SEARCH_BITS,
                |i| s.prefix(i) as u64,
                |i| Ok(self.cmp_at(i, key, seqno, file, base)? == Ordering::Less),
            );
        }
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

    /// An entry longer than the limits (a foreign or crafted table: the CRC covers the
    /// bytes, not their sense) is bad bytes, not an entry. A lazy move of such a value
    /// used to panic the WAL ticker on the memtable's limit assertion.
    #[test]
    fn entries_over_the_key_and_value_limits_are_bad_bytes() {
        let entry = |klen: usize, vlen: usize| {
            let mut area = Vec::new();
            put_varint(&mut area, klen as u64);
            put_varint(&mut area, vlen as u64);
            area.extend_from_slice(&[0u8; 8]);
            area.resize(area.len() + klen + vlen, b'x');
            area
        };
        let ok = entry(crate::MAX_KEY_LEN, 10);
        assert!(parse_entry(&ok, 0).is_ok());
        let long_key = entry(crate::MAX_KEY_LEN + 1, 10);
        assert_eq!(
            parse_entry(&long_key, 0).unwrap_err(),
            "key longer than any key can be"
        );
        let long_value = entry(1, crate::MAX_VALUE_LEN + 1);
        assert_eq!(
            parse_entry(&long_value, 0).unwrap_err(),
            "value longer than any value can be"
        );
    }

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

    /// Every key of `keys` twice (seqnos 9 and 3), as block bytes; every third entry has a
    /// value of 200 bytes, so that it takes the long-length parse.
    fn block_of(keys: &[Vec<u8>]) -> Vec<u8> {
        let mut b = BlockBuilder::new();
        for (i, k) in keys.iter().enumerate() {
            let v = vec![b'v'; if i % 3 == 0 { 200 } else { 5 }];
            b.add(k, 9, Kind::Value, &v);
            b.add(k, 3, Kind::Delete, b"");
        }
        let mut out = Vec::new();
        b.finish_into(&mut out);
        out
    }

    /// A searchable block (search prefixes beside the entries) seeks exactly as the plain
    /// block does: keys with and without a shared head, keys shorter than eight bytes past
    /// it, keys that tie on their prefixes, and probes before, between and after them.
    #[test]
    fn searchable_blocks_seek_like_plain_ones() {
        let p = Path::new("t");
        let mut tricky = crate::types::tricky_keys();
        tricky.sort();
        tricky.dedup();
        let long_head: Vec<Vec<u8>> = (0..40u32)
            .map(|i| format!("account:0000{:06}", i * 37).into_bytes())
            .chain([b"account:0000999999\x00".to_vec(), vec![b'k'; 300]])
            .collect();
        let tied: Vec<Vec<u8>> = vec![
            b"head:ab".to_vec(),
            b"head:ab\x00".to_vec(),
            b"head:ab\x00\x00".to_vec(),
            b"head:ab\x00\x00\x00\x00\x00\x00\x01".to_vec(),
            b"head:abcdefgh".to_vec(),
            b"head:abcdefgh\x00".to_vec(),
            b"head:abcdefghz".to_vec(),
        ];
        let one = vec![b"only".to_vec()];
        for keys in [&tricky, &long_head, &tied, &one] {
            let out = block_of(keys);
            let plain = Block::new(Bytes::from(out.clone()), p, 0).unwrap();
            let mut buf = out.clone();
            buf.extend_from_slice(b"trailer bytes to drop");
            let s = Block::from_vec(buf, out.len(), true, p, 0).unwrap();
            assert!(s.is_searchable(), "a well-formed block gets prefixes");
            assert_eq!(s.len(), plain.len());
            for i in 0..s.len() {
                let (a, b) = (s.entry(i, p, 0).unwrap(), plain.entry(i, p, 0).unwrap());
                assert_eq!(
                    (a.key, a.seqno, a.kind, a.value),
                    (b.key, b.seqno, b.kind, b.value)
                );
            }
            let mut probes: Vec<Vec<u8>> = tricky.iter().chain(keys.iter()).cloned().collect();
            for k in keys.iter() {
                let mut after = k.clone();
                after.push(0);
                probes.push(after);
                probes.push(k[..k.len().saturating_sub(1)].to_vec());
                if let Some(last) = k.last() {
                    let mut next = k.clone();
                    *next.last_mut().unwrap() = last.wrapping_add(1);
                    probes.push(next);
                }
            }
            probes.extend([b"head".to_vec(), b"head:".to_vec(), b"account:".to_vec()]);
            for probe in &probes {
                for seqno in [u64::MAX, 10, 9, 5, 3, 0] {
                    assert_eq!(
                        s.seek(probe, seqno, p, 0).unwrap(),
                        plain.seek(probe, seqno, p, 0).unwrap(),
                        "seek({probe:?}, {seqno})"
                    );
                }
                assert_eq!(
                    s.seek_after_user_key(probe, p, 0).unwrap(),
                    plain.seek_after_user_key(probe, p, 0).unwrap()
                );
            }
        }
        // Asking a searchable block for an entry past the last is an error, not a panic.
        let out = block_of(&long_head);
        let s = Block::from_vec(out.clone(), out.len(), true, p, 0).unwrap();
        assert!(s.entry(s.len(), p, 0).is_err());
        assert!(s.entry(s.len() + 7, p, 0).is_err());
        // An empty block has nothing to search.
        let mut out = Vec::new();
        BlockBuilder::new().finish_into(&mut out);
        let e = Block::from_vec(out.clone(), out.len(), true, p, 0).unwrap();
        assert_eq!(e.seek(b"k", u64::MAX, p, 0).unwrap(), 0);
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
                let n = c.len();
                let plain = Block::new(Bytes::from(c.clone()), Path::new("t"), 0);
                let searchable = Block::from_vec(c, n, true, Path::new("t"), 0);
                for b in [plain, searchable].into_iter().flatten() {
                    for j in 0..b.len() {
                        let _ = b.entry(j, Path::new("t"), 0);
                    }
                    for probe in [&b"key010"[..], b"", b"key", b"key0109", b"z"] {
                        let _ = b.seek(probe, 50, Path::new("t"), 0);
                    }
                }
            }
        }
        for n in 0..out.len() {
            let plain = Block::new(Bytes::copy_from_slice(&out[..n]), Path::new("t"), 0);
            let searchable = Block::from_vec(out[..n].to_vec(), n, true, Path::new("t"), 0);
            for b in [plain, searchable].into_iter().flatten() {
                for j in 0..b.len() {
                    let _ = b.entry(j, Path::new("t"), 0);
                }
                let _ = b.seek(b"key010", 50, Path::new("t"), 0);
            }
        }
    }
}
