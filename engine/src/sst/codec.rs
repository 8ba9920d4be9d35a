//! How a block is stored: the bytes between a block handle's offset and its trailer, and
//! the decoding of them into the in-memory [`Block`] format.
//!
//! The trailer's type byte names the codec:
//!
//! | type | stored as |
//! |---|---|
//! | 0 `COMPRESSION_NONE` | the in-memory format itself (read zero-copy from the map) |
//! | 1 `COMPRESSION_ZSTD` | `[memory-format length varint][zstd frame]` (frames carry zstd's content checksum; older ones may not) |
//! | 2 `COMPRESSION_DELTA` | the key-delta format below |
//! | 3 `COMPRESSION_DELTA_ZSTD` | `[delta-format length varint][zstd frame of the delta format]` |
//!
//! Key-delta format (format version 2; data and index blocks):
//!
//! ```text
//! [entry count varint][memory-format length varint]
//! entry* : [shared varint][unshared varint][value_len varint][trailer varint][key suffix][value]
//! ```
//! `shared` is the number of leading bytes the key has in common with the previous entry's
//! key. No offset array is stored: decoding rebuilds the memory format (whole keys, fixed
//! trailers, the offset array), so every reader — binary search, zero-copy keys and values —
//! works on decoded blocks exactly as on blocks stored raw. The decoding costs a copy of the
//! block when it is loaded (into the cache, or for a compaction); in return the zero-padded or
//! otherwise clustered keys of a block are stored once, and tables (and every byte flushed and
//! compacted) shrink by the shared key bytes, the fixed trailers and the offset array.

use std::path::Path;

use bytes::Bytes;

use crate::cache::pages::Lease;
use crate::cache::BlockCache;
use crate::coding::{put_varint, put_varint_at, varint_at, varint_len, Decoder};
use crate::error::{Error, Result};
use crate::sst::block::{parse_entry, Block};
use crate::sst::format::{
    COMPRESSION_DELTA, COMPRESSION_DELTA_ZSTD, COMPRESSION_NONE, COMPRESSION_ZSTD,
};

/// The largest memory-format block: one entry of the largest key and value (a block holds at
/// least one entry; blocks of several are cut at `block_size`, at most 4 MiB), its header
/// and offset, and the count.
pub const MAX_BLOCK_LEN: usize = crate::MAX_KEY_LEN + crate::MAX_VALUE_LEN + 64;

/// Encodes the memory-format block `mem` (as [`BlockBuilder`](crate::sst::block::BlockBuilder)
/// finishes it) in the key-delta format, appending to `out`.
pub fn delta_encode(mem: &[u8], out: &mut Vec<u8>) {
    let n = mem.len();
    let count = u32::from_le_bytes(mem[n - 4..].try_into().expect("4 bytes")) as usize;
    let entries_end = n - 4 - count * 4;
    put_varint(out, count as u64);
    put_varint(out, n as u64);
    let area = &mem[..entries_end];
    let mut p = 0;
    let mut prev: &[u8] = &[];
    while p < entries_end {
        let (ks, ke, trailer, vs, ve) = parse_entry(area, p).expect("a block this writer built");
        let (key, value) = (&area[ks..ke], &area[vs..ve]);
        let shared = prev.iter().zip(key).take_while(|(x, y)| x == y).count();
        put_varint(out, shared as u64);
        put_varint(out, (key.len() - shared) as u64);
        put_varint(out, value.len() as u64);
        put_varint(out, trailer);
        out.extend_from_slice(&key[shared..]);
        out.extend_from_slice(value);
        prev = key;
        p = ve;
    }
}

/// Decodes a key-delta block `body` (stored at `base` in `file`) into the memory format.
/// Every length is checked against what is left and against the stated totals, so bytes
/// that pass the CRC but were not written by this encoder give an error, never a panic or a
/// block that differs from its own header.
pub fn delta_decode(body: &[u8], file: &Path, base: u64) -> Result<Vec<u8>> {
    let header = DeltaHeader::parse(body, file, base)?;
    let mut out = vec![0u8; header.mem_len];
    delta_decode_into(body, &header, &mut out, file, base)?;
    Ok(out)
}

/// The header of a key-delta block: its entry count, decoded length, and where its entries
/// start.
#[derive(Clone, Copy)]
struct DeltaHeader {
    count: usize,
    mem_len: usize,
    entries_at: usize,
}

impl DeltaHeader {
    fn parse(body: &[u8], file: &Path, base: u64) -> Result<DeltaHeader> {
        let mut d = Decoder::new(body, file, base);
        // Each entry takes at least four bytes here (its four varints).
        let count = d.len(body.len() / 4, "delta block entry count")?;
        let mem_len = d.len(MAX_BLOCK_LEN, "delta block decoded length")?;
        // Decoded, an entry grows by at most the key prefix it shares (a key) and 15 bytes:
        // its trailer's eight, its offset's four and its two length varints' (at most
        // three and four), against the four varints of at least a byte each it takes here.
        // So a few stray bytes cannot claim megabytes.
        // A shared prefix is part of a key stored before it in this block, so no entry
        // shares more than the body holds (bounded by the key length alone, four KiB
        // claimed 64 MiB).
        let most = count
            .saturating_mul(crate::MAX_KEY_LEN.min(body.len()) + 15)
            .saturating_add(body.len() + 4);
        if mem_len < count * 4 + 4 || mem_len > most {
            return Err(Error::corruption(
                file,
                base,
                format!("delta block of {count} entries claims {mem_len} decoded bytes"),
            ));
        }
        Ok(DeltaHeader {
            count,
            mem_len,
            entries_at: body.len() - d.remaining(),
        })
    }
}

/// Decodes the key-delta block `body`, whose header is `header`, into `out` (exactly its
/// decoded length; whatever it held before is overwritten, every byte, or an error is
/// returned).
fn delta_decode_into(
    body: &[u8],
    header: &DeltaHeader,
    out: &mut [u8],
    file: &Path,
    base: u64,
) -> Result<()> {
    let DeltaHeader {
        count,
        mem_len,
        entries_at,
    } = *header;
    assert_eq!(out.len(), mem_len, "a buffer of the block's decoded length");
    let bad = |at: usize, why: String| Error::corruption(file, base + at as u64, why);
    let offsets_len = count * 4 + 4;
    // The output is written in place: entries from the front, their offsets after them.
    let entries_len = mem_len - offsets_len;
    let (area, offsets) = out.split_at_mut(entries_len);
    let mut p = entries_at;
    let mut w = 0usize;
    // Where the previous key starts in `area`, and its length.
    let (mut prev_at, mut prev_len) = (0usize, 0usize);
    for i in 0..count {
        let at = p;
        // Most entries' three lengths are one byte each.
        let lengths = match body.get(p..p + 3) {
            Some(&[a, b, c]) if (a | b | c) & 0x80 == 0 => {
                p += 3;
                Some((u64::from(a), u64::from(b), u64::from(c)))
            }
            _ => (|| {
                let shared = varint_at(body, &mut p)?;
                Some((shared, varint_at(body, &mut p)?, varint_at(body, &mut p)?))
            })(),
        };
        let (Some((shared, unshared, vlen)), Some(trailer)) = (lengths, varint_at(body, &mut p))
        else {
            return Err(bad(
                at,
                format!("delta block entry {i}: bad length or trailer"),
            ));
        };
        let (shared, unshared, vlen) = (shared as usize, unshared as usize, vlen as usize);
        let klen = shared
            .checked_add(unshared)
            .filter(|&k| k <= crate::MAX_KEY_LEN);
        let (Some(klen), true) = (klen, shared <= prev_len) else {
            return Err(bad(
                at,
                format!("delta block entry {i}: key of {shared} shared and {unshared} new bytes"),
            ));
        };
        let stored = unshared
            .checked_add(vlen)
            .filter(|&s| s <= body.len() - p)
            .ok_or_else(|| bad(at, format!("delta block entry {i}: runs past the block")))?;
        let entry_len = varint_len(klen as u64) + varint_len(vlen as u64) + 8 + klen + vlen;
        if entry_len > entries_len - w {
            return Err(bad(
                at,
                format!("delta block entry {i}: decodes past the stated length {mem_len}"),
            ));
        }
        // Every write below stays within the `entry_len` bytes just checked.
        offsets[i * 4..i * 4 + 4].copy_from_slice(&(w as u32).to_le_bytes());
        if klen < 0x80 && vlen < 0x80 {
            area[w] = klen as u8;
            area[w + 1] = vlen as u8;
            w += 2;
        } else {
            w += put_varint_at(&mut area[w..], klen as u64);
            w += put_varint_at(&mut area[w..], vlen as u64);
        }
        area[w..w + 8].copy_from_slice(&trailer.to_le_bytes());
        w += 8;
        // The previous key ends before `w`.
        let (before, after) = area.split_at_mut(w);
        after[..shared].copy_from_slice(&before[prev_at..prev_at + shared]);
        (prev_at, prev_len) = (w, klen);
        w += shared;
        area[w..w + stored].copy_from_slice(&body[p..p + stored]);
        w += stored;
        p += stored;
    }
    if p != body.len() || w != entries_len {
        return Err(bad(
            p,
            format!(
                "delta block: {count} entries end at byte {p} of {} and decode to {w} of {entries_len} bytes",
                body.len(),
            ),
        ));
    }
    offsets[count * 4..].copy_from_slice(&(count as u32).to_le_bytes());
    Ok(())
}

/// Compresses `raw` with zstd as `[raw length varint][frame]`, appending to `out`.
pub fn zstd_encode(
    c: &mut zstd::bulk::Compressor<'static>,
    raw: &[u8],
    out: &mut Vec<u8>,
    file: &Path,
) -> Result<()> {
    put_varint(out, raw.len() as u64);
    let z = c.compress(raw).map_err(|e| Error::io(file, e))?;
    out.extend_from_slice(&z);
    Ok(())
}

/// Reads the header of a `[raw length varint][zstd frame]` body: the length and the frame.
/// A frame that records a different length of content is refused here, before anything
/// is allocated for the length the header claims.
/// The most a zstd frame can expand: a block of one repeated byte (RLE) takes four bytes
/// and decodes to at most 128 KiB.
const ZSTD_MAX_RATIO: u64 = (128 << 10) / 4;

fn zstd_header<'a>(body: &'a [u8], file: &Path, base: u64) -> Result<(usize, &'a [u8])> {
    let mut d = Decoder::new(body, file, base);
    let raw_len = d.len(MAX_BLOCK_LEN, "uncompressed block length")?;
    let frame = &body[body.len() - d.remaining()..];
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n != raw_len as u64 => Err(Error::corruption(
            file,
            base,
            format!("zstd block: the frame holds {n} bytes, the block header says {raw_len}"),
        )),
        Err(_) => Err(Error::corruption(
            file,
            base,
            "zstd block: bad frame header",
        )),
        // Decoded into a buffer of the header's length: no longer than the frame could
        // decode to, whatever size the frame declares (so a few stray bytes cannot make a
        // read allocate megabytes; a 13-byte frame declaring 64 MiB used to).
        _ if raw_len as u64 > (frame.len() as u64).saturating_mul(ZSTD_MAX_RATIO) => {
            Err(Error::corruption(
                file,
                base,
                format!(
                    "zstd block: a frame of {} bytes cannot hold the {raw_len} the block \
                     header says",
                    frame.len()
                ),
            ))
        }
        Ok(_) => Ok((raw_len, frame)),
    }
}

/// Decompresses `frame` into `out` (a slice, or a vector's spare capacity), with this
/// thread's decompression context (made once per thread, not once per block: making one
/// costs ~16 µs, decoding a 4 KiB block with it ~2.7 µs). A context holds 96 KiB. A pool
/// shared by all threads was tried instead: with two reader threads it cost readrandom
/// 5–8%, the lock and the context's memory moving between cores.
fn zstd_decompress<C: zstd::zstd_safe::WriteBuf + ?Sized>(
    frame: &[u8],
    out: &mut C,
    file: &Path,
    base: u64,
) -> Result<usize> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let fail = |e: std::io::Error| Error::corruption(file, base, format!("zstd block: {e}"));
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new().map_err(fail)?);
        }
        let d = c.as_mut().expect("just made");
        d.decompress_to_buffer(frame, out).map_err(fail)
    })
}

/// Decompresses `frame` into a new buffer of exactly `len` bytes.
fn zstd_decode_vec(frame: &[u8], len: usize, file: &Path, base: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    // Into the buffer's spare capacity: nothing to clear first.
    let n = zstd_decompress(frame, &mut out, file, base)?;
    check_zstd_len(n, len, file, base)?;
    Ok(out)
}

fn check_zstd_len(n: usize, len: usize, file: &Path, base: u64) -> Result<()> {
    if n != len {
        return Err(Error::corruption(
            file,
            base,
            format!("zstd block decoded to {n} bytes, expected {len}"),
        ));
    }
    Ok(())
}

/// Decompresses `frame` into `out`, which must come out exactly filled.
fn zstd_decode_into(frame: &[u8], out: &mut [u8], file: &Path, base: u64) -> Result<()> {
    let n = zstd_decompress(frame, out, file, base)?;
    check_zstd_len(n, out.len(), file, base)
}

/// A coded block body, its header read: how long it decodes to, and the decoding of it
/// into memory of that length (a page of the block cache's, or a new buffer).
enum Decoding<'a> {
    Zstd {
        frame: &'a [u8],
        len: usize,
    },
    Delta {
        body: &'a [u8],
        header: DeltaHeader,
    },
    /// A zstd-compressed key-delta body, decompressed.
    DeltaZstd {
        delta: Vec<u8>,
        header: DeltaHeader,
    },
}

impl<'a> Decoding<'a> {
    /// The decoding of a body stored with codec `ty`; `None` when the body is stored as it
    /// is (uncompressed).
    fn of(ty: u8, body: &'a [u8], file: &Path, base: u64) -> Result<Option<Decoding<'a>>> {
        Ok(Some(match ty {
            COMPRESSION_NONE => return Ok(None),
            COMPRESSION_ZSTD => {
                let (len, frame) = zstd_header(body, file, base)?;
                Decoding::Zstd { frame, len }
            }
            COMPRESSION_DELTA => Decoding::Delta {
                body,
                header: DeltaHeader::parse(body, file, base)?,
            },
            COMPRESSION_DELTA_ZSTD => {
                let (len, frame) = zstd_header(body, file, base)?;
                let delta = zstd_decode_vec(frame, len, file, base)?;
                let header =
                    DeltaHeader::parse(&delta, file, 0).map_err(|e| in_decompressed(e, base))?;
                Decoding::DeltaZstd { delta, header }
            }
            other => {
                return Err(Error::corruption(
                    file,
                    base + body.len() as u64,
                    format!("unknown block codec {other}"),
                ))
            }
        }))
    }

    /// Bytes the body decodes to.
    fn len(&self) -> usize {
        match self {
            Decoding::Zstd { len, .. } => *len,
            Decoding::Delta { header, .. } | Decoding::DeltaZstd { header, .. } => header.mem_len,
        }
    }

    /// Decodes into `out`, exactly [`len`](Self::len) bytes, overwriting every one of them.
    fn write_to(&self, out: &mut [u8], file: &Path, base: u64) -> Result<()> {
        match self {
            Decoding::Zstd { frame, .. } => zstd_decode_into(frame, out, file, base),
            Decoding::Delta { body, header } => delta_decode_into(body, header, out, file, base),
            Decoding::DeltaZstd { delta, header } => {
                delta_decode_into(delta, header, out, file, 0).map_err(|e| in_decompressed(e, base))
            }
        }
    }

    fn into_vec(self, file: &Path, base: u64) -> Result<Vec<u8>> {
        if let Decoding::Zstd { frame, len } = self {
            return zstd_decode_vec(frame, len, file, base);
        }
        let mut out = vec![0u8; self.len()];
        self.write_to(&mut out, file, base)?;
        Ok(out)
    }
}

/// An error at a position inside the decompressed bytes of the block at `base`: positions
/// there are not file offsets, so it names the block, and the position within what it
/// decompressed to.
fn in_decompressed(e: Error, base: u64) -> Error {
    match e {
        Error::Corruption {
            file,
            offset,
            reason,
        } => Error::Corruption {
            file,
            offset: base,
            reason: format!("{reason} (at byte {offset} of the decompressed block)"),
        },
        other => other,
    }
}

/// Decodes the CRC-checked body of a block stored with codec `ty` at `base` in `file`. An
/// uncompressed body becomes the block zero-copy; the others are decoded into a new buffer.
pub fn decode_block(ty: u8, body: Bytes, file: &Path, base: u64) -> Result<Block> {
    let block = match Decoding::of(ty, &body, file, base)? {
        None => Block::new(body, file, base)?,
        Some(d) => Block::new(Bytes::from(d.into_vec(file, base)?), file, base)?,
    };
    check_stored_offsets(ty, block, file, base)
}

/// `block`, if its offset array is the one stored ([`Block::check_offsets`]); key-delta
/// codecs rebuild the array as they decode.
fn check_stored_offsets(ty: u8, block: Block, file: &Path, base: u64) -> Result<Block> {
    // A block given search prefixes had its array checked as they were built.
    if matches!(ty, COMPRESSION_NONE | COMPRESSION_ZSTD) && !block.is_searchable() {
        block.check_offsets(file, base)?;
    }
    Ok(block)
}

/// A block's stored bytes (body and trailer) read into memory of their own, for the block
/// cache: a page of the cache's ([`pages`](crate::cache::pages)), or the heap.
pub enum Owned {
    Page(Lease),
    Heap(Vec<u8>),
}

impl Owned {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Owned::Page(l) => l.bytes(),
            Owned::Heap(v) => v,
        }
    }
}

/// [`decode_block`] for a body read into memory of its own, `buf`'s first `len` bytes (a
/// block bound for `cache`): an uncompressed block stays where it was read; a coded one is
/// decoded straight into a page of the cache if it fits one. With `search`, the block gets
/// search prefixes ([`Block::from_bytes`]).
pub fn decode_owned(
    ty: u8,
    buf: Owned,
    len: usize,
    search: bool,
    cache: &BlockCache,
    file: &Path,
    base: u64,
) -> Result<Block> {
    let decoded = match Decoding::of(ty, &buf.bytes()[..len], file, base)? {
        None => None,
        Some(d) => Some(match cache.lease(d.len()) {
            Some(mut lease) => {
                d.write_to(lease.bytes_mut(), file, base)?;
                (lease.freeze(d.len()), cache.page_len())
            }
            None => (Bytes::from(d.into_vec(file, base)?), 0),
        }),
    };
    let (data, page) = match (decoded, buf) {
        (Some(d), _) => d,
        (None, Owned::Page(lease)) => (lease.freeze(len), cache.page_len()),
        (None, Owned::Heap(mut v)) => {
            v.truncate(len);
            (Bytes::from(v), 0)
        }
    };
    let block = Block::from_bytes(data, search, file, base)?.in_page(page);
    check_stored_offsets(ty, block, file, base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sst::block::BlockBuilder;
    use crate::types::Kind;

    fn mem_block(keys: &[(&[u8], u64, &[u8])]) -> Vec<u8> {
        let mut b = BlockBuilder::new();
        for (k, s, v) in keys {
            let kind = if v.is_empty() {
                Kind::Delete
            } else {
                Kind::Value
            };
            b.add(k, *s, kind, v);
        }
        let mut out = Vec::new();
        b.finish_into(&mut out);
        out
    }

    fn sample() -> Vec<u8> {
        let keys: Vec<Vec<u8>> = (0..40u32)
            .map(|i| format!("{:016}", 1_000_000 + i * 37).into_bytes())
            .collect();
        let mut v: Vec<(&[u8], u64, &[u8])> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let val: &[u8] = if i % 9 == 0 { b"" } else { b"some value bytes" };
            v.push((k, (1u64 << 40) + i as u64, val));
        }
        // A key that shares nothing with its neighbour, one that is a prefix of the next,
        // the empty key first.
        let mut w: Vec<(&[u8], u64, &[u8])> =
            vec![(b"", 5, b"x"), (b"a", 3, b"y"), (b"ab", 2, b"z")];
        w.extend(v);
        w.push((b"zz", u64::MAX >> 8, b"last"));
        mem_block(&w)
    }

    #[test]
    fn round_trip_is_exact_and_smaller() {
        for mem in [sample(), mem_block(&[]), mem_block(&[(b"only", 1, b"v")])] {
            let mut enc = Vec::new();
            delta_encode(&mem, &mut enc);
            let dec = delta_decode(&enc, Path::new("t"), 0).unwrap();
            assert_eq!(dec, mem);
        }
        let mem = sample();
        let mut enc = Vec::new();
        delta_encode(&mem, &mut enc);
        // 43 entries: 16-byte keys sharing ~13 bytes, fixed trailers and offsets gone.
        assert!(
            enc.len() * 10 < mem.len() * 7,
            "{} vs {}",
            enc.len(),
            mem.len()
        );
    }

    #[test]
    fn every_flip_and_truncation_is_an_error_or_a_valid_block() {
        // The CRC catches these on disk; the decoder must still hold its own against bytes
        // that pass it (a bug elsewhere, or a collision): an error or a well-formed block.
        let mem = sample();
        let mut enc = Vec::new();
        delta_encode(&mem, &mut enc);
        for i in 0..enc.len() {
            for bit in [0x01u8, 0x10, 0x80] {
                let mut c = enc.clone();
                c[i] ^= bit;
                if let Ok(d) = delta_decode(&c, Path::new("t"), 0) {
                    let b = Block::new(Bytes::from(d), Path::new("t"), 0).unwrap();
                    for j in 0..b.len() {
                        let _ = b.entry(j, Path::new("t"), 0);
                    }
                }
            }
        }
        for n in 0..enc.len() {
            assert!(
                delta_decode(&enc[..n], Path::new("t"), 0).is_err(),
                "prefix {n}"
            );
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(delta_decode(&longer, Path::new("t"), 0).is_err());
    }

    #[test]
    fn bad_headers_name_the_offset_and_allocate_nothing_large() {
        let mut b = Vec::new();
        put_varint(&mut b, 1);
        put_varint(&mut b, u64::MAX);
        let e = delta_decode(&b, Path::new("f.sst"), 4096).unwrap_err();
        assert!(e.is_corruption() && e.to_string().contains("f.sst"), "{e}");
        // A shared length longer than the previous key.
        let mut b = Vec::new();
        put_varint(&mut b, 1);
        put_varint(&mut b, 20);
        b.extend_from_slice(&[3, 1, 0, 1, b'k']);
        let e = delta_decode(&b, Path::new("f.sst"), 4096).unwrap_err();
        assert!(e.to_string().contains("shared"), "{e}");
        assert!(decode_block(9, Bytes::from_static(b"abc"), Path::new("f"), 0).is_err());
        // A key-delta header claiming 64 MiB for no entries in five bytes is refused before
        // a buffer of that length exists (the error names what it claimed).
        let mut b = Vec::new();
        put_varint(&mut b, 0);
        put_varint(&mut b, 64 << 20);
        let e = delta_decode(&b, Path::new("f.sst"), 4096).unwrap_err();
        assert!(
            e.to_string().contains("claims 67108864 decoded bytes"),
            "{e}"
        );
        // One entry may claim a whole shared key more than it stores, not more.
        let mut b = Vec::new();
        put_varint(&mut b, 1);
        put_varint(&mut b, (crate::MAX_KEY_LEN + 64) as u64);
        b.extend_from_slice(&[0, 1, 0, 1, b'k']);
        let e = delta_decode(&b, Path::new("f.sst"), 4096).unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
        // A zstd block whose header claims the largest length is refused before a buffer
        // of that length exists: from the frame's own recorded size (3000 bytes here), or,
        // for a frame that records none, from the most its bytes could decode to.
        for (with_size, data, why) in [
            (
                true,
                &[7u8; 3000][..],
                format!("the frame holds 3000 bytes, the block header says {MAX_BLOCK_LEN}"),
            ),
            (false, &b"tiny"[..], "cannot hold".to_string()),
        ] {
            for ty in [COMPRESSION_ZSTD, COMPRESSION_DELTA_ZSTD] {
                let mut c = zstd::bulk::Compressor::new(3).unwrap();
                c.include_contentsize(with_size).unwrap();
                let frame = c.compress(data).unwrap();
                let recorded = zstd::zstd_safe::get_frame_content_size(&frame);
                assert_eq!(matches!(recorded, Ok(Some(_))), with_size);
                let mut body = Vec::new();
                put_varint(&mut body, MAX_BLOCK_LEN as u64);
                body.extend_from_slice(&frame);
                let e = decode_block(ty, Bytes::from(body), Path::new("f.sst"), 4096)
                    .err()
                    .expect("refused");
                assert!(e.is_corruption(), "{e}");
                assert!(e.to_string().contains(&why), "{e}");
            }
        }
        // A frame that declares the largest length itself (13 bytes: magic, a header with
        // a four-byte content size, one empty raw block) is held to the same bound: it
        // used to be trusted, and 64 MiB allocated for it.
        for ty in [COMPRESSION_ZSTD, COMPRESSION_DELTA_ZSTD] {
            let mut body = Vec::new();
            put_varint(&mut body, MAX_BLOCK_LEN as u64);
            body.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0xa0]);
            body.extend_from_slice(&(MAX_BLOCK_LEN as u32).to_le_bytes());
            body.extend_from_slice(&[0x01, 0x00, 0x00]);
            let frame = &body[body.len() - 12..];
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(frame).ok(),
                Some(Some(MAX_BLOCK_LEN as u64))
            );
            let e = decode_block(ty, Bytes::from(body), Path::new("f.sst"), 4096)
                .err()
                .expect("refused");
            assert!(e.to_string().contains("cannot hold"), "{e}");
        }
        // A key-delta header may claim for each entry no more shared bytes than the body
        // holds: 1,000 entries in 4 KiB used to pass claiming 64 MiB.
        let mut b = Vec::new();
        put_varint(&mut b, 1000);
        put_varint(&mut b, 60 << 20);
        b.resize(4006, 0);
        let e = delta_decode(&b, Path::new("f.sst"), 4096).unwrap_err();
        assert!(
            e.to_string().contains("claims 62914560 decoded bytes"),
            "{e}"
        );
    }

    #[test]
    fn damage_inside_a_zstd_wrapped_delta_block_names_the_block() {
        // The second entry claims more shared bytes than the first key has, after a value
        // long enough that its position in the decompressed bytes lies past the block.
        let mut body = Vec::new();
        put_varint(&mut body, 2);
        put_varint(&mut body, 10_000);
        for (shared, key) in [(0u64, &b"key1"[..]), (9, &b"2"[..])] {
            put_varint(&mut body, shared);
            put_varint(&mut body, key.len() as u64);
            put_varint(&mut body, 5000);
            put_varint(&mut body, 1 << 8);
            body.extend_from_slice(key);
            body.extend(std::iter::repeat_n(b'v', 5000));
        }
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        let mut stored = Vec::new();
        zstd_encode(&mut c, &body, &mut stored, Path::new("f.sst")).unwrap();
        assert!(stored.len() < 200);
        let e = decode_block(
            COMPRESSION_DELTA_ZSTD,
            Bytes::from(stored),
            Path::new("f.sst"),
            4096,
        )
        .err()
        .expect("refused");
        match &e {
            Error::Corruption { offset, reason, .. } => {
                assert_eq!(*offset, 4096, "{e}");
                assert!(reason.contains("of the decompressed block"), "{e}");
            }
            other => panic!("{other}"),
        }
    }
}
