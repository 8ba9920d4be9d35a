//! SSTable file layout.
//!
//! ```text
//! [data block 0][trailer] … [data block n][trailer]
//! [filter block][trailer]  [index block][trailer]  [properties block][trailer]
//! [footer: 64 bytes]
//! ```
//! Every block is followed by a 5-byte trailer: compression type and the masked CRC32 of the
//! stored block bytes plus the type byte. The footer holds the three metadata handles, the
//! format version, the magic number and its own CRC. The properties block makes the file
//! self-describing: which layout version, function fingerprint and partition it belongs to,
//! its key and seqno ranges, and its counts.

use std::path::Path;

use crate::coding::{mask_crc, put_bytes, put_u32, put_u64, put_u8, put_varint, Decoder};
use crate::error::{Error, Result};

pub const TABLE_MAGIC: u64 = 0x534c_5543_4553_5354; // "SLUCESST"
/// Current SSTable format version: 2 stores data and index blocks key-delta encoded
/// (`sst::codec`); version 1 files (blocks stored raw or zstd only) stay readable.
pub const TABLE_FORMAT_VERSION: u32 = 2;
pub const FOOTER_LEN: usize = 64;
pub const BLOCK_TRAILER_LEN: usize = 5;

/// Per-block compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    /// zstd at the given level (1..=22).
    Zstd(i32),
}

/// Block codecs: the type byte of a block trailer (see `sst::codec`).
pub const COMPRESSION_NONE: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;
pub const COMPRESSION_DELTA: u8 = 2;
pub const COMPRESSION_DELTA_ZSTD: u8 = 3;

/// Where a block lives in the file (excluding its trailer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockHandle {
    pub offset: u64,
    pub size: u64,
}

/// What an SSTable holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TableKind {
    /// Values and tombstones.
    Data = 1,
    /// Forwarding pointers of a draining partition. Never consulted by reads.
    Pointers = 2,
}

/// The self-description stored in every SSTable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableProps {
    pub format_version: u32,
    pub kind: TableKind,
    pub layout_version: u32,
    pub fingerprint: u64,
    pub partition: u32,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
    pub min_seqno: u64,
    pub max_seqno: u64,
    pub entries: u64,
    pub tombstones: u64,
    pub pointers: u64,
    /// Sum of key and value bytes before encoding and compression.
    pub raw_bytes: u64,
    pub data_blocks: u64,
    pub compression: u8,
    /// Unix seconds when the file was written.
    pub created_unix: u64,
}

impl TableProps {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.format_version);
        put_u8(out, self.kind as u8);
        put_varint(out, self.layout_version as u64);
        put_u64(out, self.fingerprint);
        put_varint(out, self.partition as u64);
        put_bytes(out, &self.smallest);
        put_bytes(out, &self.largest);
        put_varint(out, self.min_seqno);
        put_varint(out, self.max_seqno);
        put_varint(out, self.entries);
        put_varint(out, self.tombstones);
        put_varint(out, self.pointers);
        put_varint(out, self.raw_bytes);
        put_varint(out, self.data_blocks);
        put_u8(out, self.compression);
        put_varint(out, self.created_unix);
    }

    pub fn decode(b: &[u8], path: &Path, base: u64) -> Result<TableProps> {
        let mut d = Decoder::new(b, path, base);
        let format_version = d.u32("props format version")?;
        if format_version > TABLE_FORMAT_VERSION || format_version == 0 {
            return Err(Error::UnsupportedFormat {
                file: path.to_path_buf(),
                found: format_version,
                supported: TABLE_FORMAT_VERSION,
            });
        }
        let at = d.offset();
        let kind = match d.u8("table kind")? {
            1 => TableKind::Data,
            2 => TableKind::Pointers,
            k => {
                return Err(Error::corruption(
                    path,
                    at,
                    format!("unknown table kind {k}"),
                ))
            }
        };
        let p = TableProps {
            format_version,
            kind,
            layout_version: d.u32_varint("layout version")?,
            fingerprint: d.u64("fingerprint")?,
            partition: d.u32_varint("partition")?,
            smallest: d.bytes(crate::MAX_KEY_LEN, "smallest key")?.to_vec(),
            largest: d.bytes(crate::MAX_KEY_LEN, "largest key")?.to_vec(),
            min_seqno: d.varint("min seqno")?,
            max_seqno: d.varint("max seqno")?,
            entries: d.varint("entries")?,
            tombstones: d.varint("tombstones")?,
            pointers: d.varint("pointers")?,
            raw_bytes: d.varint("raw bytes")?,
            data_blocks: d.varint("data blocks")?,
            compression: d.u8("compression")?,
            created_unix: d.varint("created")?,
        };
        if p.smallest > p.largest || p.min_seqno > p.max_seqno {
            return Err(Error::corruption(
                path,
                base,
                "properties: key or seqno range is inverted",
            ));
        }
        Ok(p)
    }
}

/// The fixed-size tail of every SSTable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub filter: BlockHandle,
    pub index: BlockHandle,
    pub props: BlockHandle,
    pub format_version: u32,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = Vec::with_capacity(FOOTER_LEN);
        for h in [self.filter, self.index, self.props] {
            put_u64(&mut b, h.offset);
            put_u64(&mut b, h.size);
        }
        put_u32(&mut b, self.format_version);
        put_u64(&mut b, TABLE_MAGIC);
        let crc = crate::coding::masked_crc(&b);
        put_u32(&mut b, crc);
        let mut out = [0u8; FOOTER_LEN];
        out.copy_from_slice(&b);
        out
    }

    /// Decodes the footer at the end of `file` (the whole file's bytes).
    pub fn decode(file: &[u8], path: &Path) -> Result<Footer> {
        Self::decode_at(file, 0, path)
    }

    /// Decodes the footer at the end of `tail`, the file's bytes from offset `base` to its
    /// end; errors name offsets in the file.
    pub fn decode_at(tail: &[u8], base: u64, path: &Path) -> Result<Footer> {
        if tail.len() < FOOTER_LEN {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "file is {} bytes, shorter than an SSTable footer ({FOOTER_LEN}): truncated?",
                    base + tail.len() as u64
                ),
            ));
        }
        let at = base + (tail.len() - FOOTER_LEN) as u64;
        let b = &tail[tail.len() - FOOTER_LEN..];
        let mut d = Decoder::new(b, path, at);
        let mut handles = [BlockHandle::default(); 3];
        for h in handles.iter_mut() {
            h.offset = d.u64("handle offset")?;
            h.size = d.u64("handle size")?;
        }
        let format_version = d.u32("format version")?;
        let magic = d.u64("magic")?;
        if magic != TABLE_MAGIC {
            return Err(Error::corruption(
                path,
                at + 52,
                format!("bad SSTable magic {magic:#x}: not an SSTable, or truncated"),
            ));
        }
        let stored = d.u32("footer crc")?;
        let actual = crate::coding::masked_crc(&b[..60]);
        if stored != actual {
            return Err(Error::ChecksumMismatch {
                file: path.to_path_buf(),
                offset: at,
                expected: stored,
                actual,
            });
        }
        if format_version > TABLE_FORMAT_VERSION || format_version == 0 {
            return Err(Error::UnsupportedFormat {
                file: path.to_path_buf(),
                found: format_version,
                supported: TABLE_FORMAT_VERSION,
            });
        }
        let limit = at;
        for (h, what) in handles.iter().zip(["filter", "index", "properties"]) {
            let end = h
                .offset
                .checked_add(h.size)
                .and_then(|e| e.checked_add(BLOCK_TRAILER_LEN as u64));
            if end.is_none_or(|e| e > limit) {
                return Err(Error::corruption(
                    path,
                    at,
                    format!("{what} block handle {h:?} points outside the file"),
                ));
            }
        }
        // Written back to back before the footer (filter, index, properties): the only
        // layout a reader accepts, so that what a table's open reads (from the first of them
        // to the end) is no more than they hold, in a file extended or sparse past them too.
        let mut next = handles[0].offset;
        for (h, what) in handles.iter().zip(["filter", "index", "properties"]) {
            if h.offset != next {
                return Err(Error::corruption(
                    path,
                    at,
                    format!(
                        "{what} block handle {h:?} does not follow the block before it \
                         (at {next}): metadata blocks lie back to back before the footer"
                    ),
                ));
            }
            next = h.offset + h.size + BLOCK_TRAILER_LEN as u64;
        }
        if next != at {
            return Err(Error::corruption(
                path,
                at,
                format!(
                    "the metadata blocks end at {next}, not at the footer: the file was \
                     extended or damaged"
                ),
            ));
        }
        Ok(Footer {
            filter: handles[0],
            index: handles[1],
            props: handles[2],
            format_version,
        })
    }
}

/// Reads the stored bytes of the block at `h`, checking its CRC. Returns (compression type,
/// stored bytes).
pub fn checked_block<'a>(file: &'a [u8], h: BlockHandle, path: &Path) -> Result<(u8, &'a [u8])> {
    let start = h.offset as usize;
    let end = start
        .checked_add(h.size as usize)
        .filter(|e| {
            e.checked_add(BLOCK_TRAILER_LEN)
                .is_some_and(|t| t <= file.len())
        })
        .ok_or_else(|| Error::corruption(path, h.offset, "block extends past end of file"))?;
    let body = &file[start..end];
    let ty = file[end];
    let stored = u32::from_le_bytes([file[end + 1], file[end + 2], file[end + 3], file[end + 4]]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body);
    hasher.update(&[ty]);
    let actual = mask_crc(hasher.finalize());
    if stored != actual {
        return Err(Error::ChecksumMismatch {
            file: path.to_path_buf(),
            offset: h.offset,
            expected: stored,
            actual,
        });
    }
    Ok((ty, body))
}

/// Appends a block trailer for `body` stored with compression `ty`.
pub fn block_trailer(body: &[u8], ty: u8) -> [u8; BLOCK_TRAILER_LEN] {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body);
    hasher.update(&[ty]);
    let crc = mask_crc(hasher.finalize());
    let c = crc.to_le_bytes();
    [ty, c[0], c[1], c[2], c[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose size reaches the end of the address space is past the end of the
    /// file, not an overflow.
    #[test]
    fn a_handle_past_every_end_is_corruption() {
        let file = [0u8; 64];
        for (offset, size) in [(0, u64::MAX - 2), (u64::MAX - 2, 1), (60, 0)] {
            let e =
                checked_block(&file, BlockHandle { offset, size }, Path::new("t.sst")).unwrap_err();
            assert!(e.to_string().contains("past end of file"), "{e}");
        }
    }

    fn props() -> TableProps {
        TableProps {
            format_version: TABLE_FORMAT_VERSION,
            kind: TableKind::Data,
            layout_version: 3,
            fingerprint: 0xdead_beef,
            partition: 7,
            smallest: b"aaa".to_vec(),
            largest: b"zzz".to_vec(),
            min_seqno: 10,
            max_seqno: 99,
            entries: 1000,
            tombstones: 5,
            pointers: 0,
            raw_bytes: 123_456,
            data_blocks: 30,
            compression: COMPRESSION_ZSTD,
            created_unix: 1_700_000_000,
        }
    }

    #[test]
    fn props_round_trip_and_flips() {
        let p = props();
        let mut b = Vec::new();
        p.encode(&mut b);
        assert_eq!(TableProps::decode(&b, Path::new("t"), 0).unwrap(), p);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            let _ = TableProps::decode(&c, Path::new("t"), 0);
        }
        for n in 0..b.len() {
            assert!(TableProps::decode(&b[..n], Path::new("t"), 0).is_err());
        }
    }

    /// A footer after metadata blocks of 20, 40 and 50 bytes from offset 10, and the bytes
    /// before it (`gap` bytes of them after the last block).
    fn footer_file(gap: usize) -> (Footer, Vec<u8>) {
        let t = BLOCK_TRAILER_LEN as u64;
        let handle = |offset, size| BlockHandle { offset, size };
        let filter = handle(10, 20);
        let index = handle(30 + t, 40);
        let props = handle(70 + 2 * t, 50);
        let f = Footer {
            filter,
            index,
            props,
            format_version: TABLE_FORMAT_VERSION,
        };
        let mut file = vec![0u8; (120 + 3 * t) as usize + gap];
        file.extend_from_slice(&f.encode());
        (f, file)
    }

    /// What a table's open reads is bounded by its metadata blocks: a footer whose blocks
    /// do not end where it starts (a file extended past them, sparse or not, with the
    /// footer copied to its end) is refused. Such a file used to be read from its first
    /// metadata block to its end: 2 TiB for a sparse copy, and an aborted allocation.
    #[test]
    fn metadata_blocks_must_reach_the_footer() {
        let (f, file) = footer_file(0);
        assert_eq!(Footer::decode(&file, Path::new("t")).unwrap(), f);
        let (_, file) = footer_file(1);
        let e = Footer::decode(&file, Path::new("t")).unwrap_err();
        assert!(e.to_string().contains("not at the footer"), "{e}");
        // A gap between two blocks.
        let mut g = f;
        g.index.offset += 1;
        g.props.offset += 1;
        let mut file = file[..file.len() - FOOTER_LEN].to_vec();
        file.extend_from_slice(&g.encode());
        let e = Footer::decode(&file, Path::new("t")).unwrap_err();
        assert!(e.to_string().contains("does not follow"), "{e}");
    }

    #[test]
    fn footer_round_trip_and_every_flip_detected() {
        let (f, file) = footer_file(0);
        let body = file.len() - FOOTER_LEN;
        assert_eq!(Footer::decode(&file, Path::new("t")).unwrap(), f);
        for i in body..file.len() {
            let mut c = file.clone();
            c[i] ^= 0x01;
            let e = Footer::decode(&c, Path::new("t")).unwrap_err();
            assert!(e.is_corruption(), "{e}");
        }
        assert!(Footer::decode(&file[..30], Path::new("t")).is_err());
    }

    #[test]
    fn newer_table_format_is_refused() {
        let f = Footer {
            filter: BlockHandle::default(),
            index: BlockHandle::default(),
            props: BlockHandle::default(),
            format_version: TABLE_FORMAT_VERSION + 1,
        };
        let mut file = vec![0u8; 10];
        file.extend_from_slice(&f.encode());
        assert!(matches!(
            Footer::decode(&file, Path::new("t")),
            Err(Error::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn block_checksum_catches_flips() {
        let body = b"some block bytes".to_vec();
        let mut file = body.clone();
        file.extend_from_slice(&block_trailer(&body, COMPRESSION_NONE));
        let h = BlockHandle {
            offset: 0,
            size: body.len() as u64,
        };
        assert_eq!(
            checked_block(&file, h, Path::new("t")).unwrap().1,
            &body[..]
        );
        for i in 0..file.len() {
            let mut c = file.clone();
            c[i] ^= 0x80;
            assert!(checked_block(&c, h, Path::new("t")).is_err(), "flip {i}");
        }
        let bad = BlockHandle {
            offset: 5,
            size: u64::MAX - 2,
        };
        assert!(checked_block(&file, bad, Path::new("t")).is_err());
    }
}
