//! Writes one SSTable from entries given in internal order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::coding::put_varint;
use crate::error::{Error, Result};
use crate::fs::{Fs, WritableFile};
use crate::sst::block::BlockBuilder;
use crate::sst::bloom::BloomBuilder;
use crate::sst::codec;
use crate::sst::format::{
    block_trailer, BlockHandle, Compression, Footer, TableKind, TableProps, BLOCK_TRAILER_LEN,
    COMPRESSION_DELTA, COMPRESSION_DELTA_ZSTD, COMPRESSION_NONE, COMPRESSION_ZSTD,
    TABLE_FORMAT_VERSION,
};
use crate::types::{Entry, Kind};

/// How to build tables.
#[derive(Clone, Debug)]
pub struct TableOptions {
    pub block_size: usize,
    pub compression: Compression,
    /// Key-delta blocks (format version 2); format version 1 without.
    pub key_delta: bool,
    pub bloom_bits_per_key: u32,
}

/// Who the table belongs to.
#[derive(Clone, Copy, Debug)]
pub struct TableOwner {
    pub kind: TableKind,
    pub layout_version: u32,
    pub fingerprint: u64,
    pub partition: u32,
}

/// Bytes a writer gathers before it appends them to its file.
const WRITE_BUFFER: usize = 256 << 10;

/// Writes one table. The file is created when the first [`WRITE_BUFFER`] bytes are written
/// out, or at [`TableWriter::finish`]: a flush or compaction holds one writer per output
/// partition, and a layout of thousands of partitions must not need a descriptor per
/// partition for the whole job. Only writers past 256 KiB hold one, so a job holds at most
/// one per 256 KiB it has written and not yet finished.
pub struct TableWriter {
    /// The file once created.
    file: Option<Box<dyn WritableFile>>,
    fs: Arc<dyn Fs>,
    path: PathBuf,
    opts: TableOptions,
    owner: TableOwner,
    block: BlockBuilder,
    index: BlockBuilder,
    bloom: BloomBuilder,
    out: Vec<u8>,
    offset: u64,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
    /// The stored form of `scratch` when it is encoded.
    encoded: Vec<u8>,
    zstd_scratch: Vec<u8>,
    last: Option<(Vec<u8>, u64)>,
    props: TableProps,
}

/// What a block written by [`TableWriter::write_block`] holds, which decides its codec.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockRole {
    /// Entries, zstd-compressed when enabled and worthwhile.
    Data,
    /// Entries, never zstd (read once per open, on the open path).
    Index,
    /// The filter and properties: stored raw.
    Meta,
}

impl TableWriter {
    /// A writer of the table at `path` (created, or truncated, once the first bytes are
    /// written out).
    pub fn new(
        fs: Arc<dyn Fs>,
        path: &Path,
        opts: TableOptions,
        owner: TableOwner,
    ) -> Result<TableWriter> {
        let compressor = match opts.compression {
            Compression::Zstd(level) => {
                let mut c = zstd::bulk::Compressor::new(level).map_err(|e| Error::io(path, e))?;
                // A checksum of the decompressed bytes in every frame (4 bytes): the block
                // CRC covers what is stored, this covers what decompression makes of it, so
                // a frame that passes the CRC but decodes wrong is an error, not a value.
                c.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))
                    .map_err(|e| Error::io(path, e))?;
                Some(c)
            }
            Compression::None => None,
        };
        Ok(TableWriter {
            file: None,
            fs,
            path: path.to_path_buf(),
            bloom: BloomBuilder::new(opts.bloom_bits_per_key),
            props: TableProps {
                format_version: if opts.key_delta {
                    TABLE_FORMAT_VERSION
                } else {
                    1
                },
                kind: owner.kind,
                layout_version: owner.layout_version,
                fingerprint: owner.fingerprint,
                partition: owner.partition,
                smallest: Vec::new(),
                largest: Vec::new(),
                min_seqno: u64::MAX,
                max_seqno: 0,
                entries: 0,
                tombstones: 0,
                pointers: 0,
                raw_bytes: 0,
                data_blocks: 0,
                compression: match opts.compression {
                    Compression::None => COMPRESSION_NONE,
                    Compression::Zstd(_) => COMPRESSION_ZSTD,
                },
                created_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            },
            opts,
            owner,
            block: BlockBuilder::new(),
            index: BlockBuilder::new(),
            out: Vec::new(),
            offset: 0,
            compressor,
            scratch: Vec::new(),
            encoded: Vec::new(),
            zstd_scratch: Vec::new(),
            last: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn owner(&self) -> TableOwner {
        self.owner
    }

    /// Whether the writer has created its file (holds a descriptor).
    pub fn holds_file(&self) -> bool {
        self.file.is_some()
    }

    /// User key of the last entry added.
    pub fn last_key(&self) -> Option<&[u8]> {
        self.last.as_ref().map(|(k, _)| k.as_slice())
    }

    pub fn entries(&self) -> u64 {
        self.props.entries
    }

    /// Bytes written so far, including the block being built.
    pub fn estimated_size(&self) -> u64 {
        self.offset + self.out.len() as u64 + self.block.estimated_len() as u64
    }

    /// Adds an entry; entries must come in strictly increasing internal order.
    pub fn add(&mut self, e: &Entry) -> Result<()> {
        self.add_parts(&e.key, e.seqno, e.kind, &e.value)
    }

    /// Adds an entry given as parts; entries must come in strictly increasing internal order.
    pub fn add_parts(&mut self, key: &[u8], seqno: u64, kind: Kind, value: &[u8]) -> Result<()> {
        if let Some((k, s)) = &self.last {
            if crate::types::cmp_internal(k, *s, key, seqno) != std::cmp::Ordering::Less {
                return Err(Error::corruption(
                    &self.path,
                    self.estimated_size(),
                    "internal error: table entries out of order",
                ));
            }
        }
        // Cut the block before an entry that would take it past `block_size` (trailer
        // included), so a cached block fits the allocation size class it was sized for
        // (a 4 KiB block that spills to 4.1 KiB costs a 5 KiB allocation in jemalloc).
        if !self.block.is_empty()
            && self.block.estimated_len() + BlockBuilder::entry_len(key, value) + BLOCK_TRAILER_LEN
                > self.opts.block_size
        {
            self.finish_data_block()?;
        }
        if self.props.entries == 0 {
            self.props.smallest = key.to_vec();
        }
        match &mut self.last {
            Some((k, s)) => {
                k.clear();
                k.extend_from_slice(key);
                *s = seqno;
            }
            None => self.last = Some((key.to_vec(), seqno)),
        }
        self.props.entries += 1;
        match kind {
            Kind::Delete => self.props.tombstones += 1,
            Kind::Forward => self.props.pointers += 1,
            Kind::Value => {}
        }
        self.props.raw_bytes += (key.len() + value.len()) as u64;
        self.props.min_seqno = self.props.min_seqno.min(seqno);
        self.props.max_seqno = self.props.max_seqno.max(seqno);
        self.bloom.add_key(key);
        self.block.add(key, seqno, kind, value);
        Ok(())
    }

    fn finish_data_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let (last_key, last_seq) = self.last.clone().expect("a non-empty block has a last key");
        self.scratch.clear();
        self.block.finish_into(&mut self.scratch);
        let handle = self.write_block(BlockRole::Data)?;
        let mut hv = Vec::with_capacity(16);
        put_varint(&mut hv, handle.offset);
        put_varint(&mut hv, handle.size);
        self.index.add(&last_key, last_seq, Kind::Value, &hv);
        self.props.data_blocks += 1;
        Ok(())
    }

    /// Writes `self.scratch` (a memory-format block for data and index blocks) as a block:
    /// entries key-delta encoded from format version 2, data blocks then zstd-compressed if
    /// enabled and worthwhile.
    fn write_block(&mut self, role: BlockRole) -> Result<BlockHandle> {
        let handle_offset = self.offset + self.out.len() as u64;
        let mut ty = COMPRESSION_NONE;
        let mut body: &[u8] = &self.scratch;
        // An index block is never cut (it grows with the table), so one that would decode
        // past the largest block the decoder accepts is stored as it is, which any reader
        // takes.
        let too_big = role == BlockRole::Index && self.scratch.len() > codec::MAX_BLOCK_LEN;
        if role != BlockRole::Meta && self.opts.key_delta && !too_big {
            self.encoded.clear();
            codec::delta_encode(&self.scratch, &mut self.encoded);
            (ty, body) = (COMPRESSION_DELTA, &self.encoded);
        }
        if let (BlockRole::Data, Some(c)) = (role, self.compressor.as_mut()) {
            self.zstd_scratch.clear();
            codec::zstd_encode(c, body, &mut self.zstd_scratch, &self.path)?;
            // Keep the block uncompressed unless compression saves at least an eighth.
            if self.zstd_scratch.len() < body.len() - body.len() / 8 {
                ty = if ty == COMPRESSION_DELTA {
                    COMPRESSION_DELTA_ZSTD
                } else {
                    COMPRESSION_ZSTD
                };
                body = &self.zstd_scratch;
            }
        }
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(&block_trailer(body, ty));
        let size = body.len() as u64;
        if self.out.len() >= WRITE_BUFFER {
            self.flush_out()?;
        }
        Ok(BlockHandle {
            offset: handle_offset,
            size,
        })
    }

    /// The file, created now if it was not.
    fn file(&mut self) -> Result<&mut dyn WritableFile> {
        if self.file.is_none() {
            let f = self.fs.create(&self.path);
            self.file = Some(f.map_err(|e| Error::io(&self.path, e))?);
        }
        Ok(self.file.as_deref_mut().expect("just created"))
    }

    fn flush_out(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            let (out, path) = (std::mem::take(&mut self.out), self.path.clone());
            let r = self
                .file()
                .and_then(|f| f.append(&out).map_err(|e| Error::io(&path, e)));
            self.out = out;
            r?;
            self.offset += self.out.len() as u64;
            self.out.clear();
        }
        Ok(())
    }

    /// Writes filter, index, properties and footer, and fsyncs. Returns the properties and
    /// the file size.
    pub fn finish(mut self) -> Result<(TableProps, u64)> {
        self.finish_data_block()?;
        if let Some((k, _)) = &self.last {
            self.props.largest = k.clone();
        }
        if self.props.entries == 0 {
            self.props.min_seqno = 0;
        }
        self.scratch = self.bloom.finish();
        let filter = self.write_block(BlockRole::Meta)?;
        self.scratch.clear();
        self.index.finish_into(&mut self.scratch);
        let index = self.write_block(BlockRole::Index)?;
        self.scratch.clear();
        self.props.encode(&mut self.scratch);
        let props = self.write_block(BlockRole::Meta)?;
        let footer = Footer {
            filter,
            index,
            props,
            format_version: self.props.format_version,
        };
        self.out.extend_from_slice(&footer.encode());
        self.flush_out()?;
        let path = self.path.clone();
        self.file()?.sync().map_err(|e| Error::io(&path, e))?;
        Ok((self.props, self.offset))
    }
}
