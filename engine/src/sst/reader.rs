//! Reads SSTables, with `pread` only: opening one reads its footer, then its filter, index
//! and properties, and checks their CRCs.
//!
//! Data blocks are checked on every read from the file: those bound for the block cache
//! are read into the cache's pages, those of a forward walk that leaves the cache alone
//! (compactions, verification) a run at a time into a buffer of the walk's
//! ([`Table::read_block_ahead`]), any other onto the heap. Nothing is read through a memory
//! map: a disk's read error there is a SIGBUS that kills the process, where `pread`
//! returns it, and it becomes an error naming the file.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::cache::BlockCache;
use crate::coding::Decoder;
use crate::error::{Error, Result};
use crate::fs::{Fs, MemRead, RandomRead};
use crate::obsolete::FileDeleter;
use crate::sst::block::Block;
use crate::sst::bloom;
use crate::sst::codec;
use crate::sst::files::TableFiles;
use crate::sst::format::{
    checked_block, BlockHandle, Footer, TableProps, BLOCK_TRAILER_LEN, FOOTER_LEN,
};
use crate::types::{
    cmp_internal, common_prefix_len, eq_keys, key_prefix, prefix_search, Entry, Kind,
};

/// The index, flattened: every block's last key in one buffer, so the binary search a
/// lookup starts with touches a few cache lines instead of a pointer per probe. The search
/// itself runs over `prefixes` (eight bytes of each key as a number, taken after the bytes
/// all index keys share): one cache line per probe, and the last few probes share one; full
/// keys are compared only on a tie.
#[derive(Default)]
struct Index {
    /// Length of the prefix every index key shares (that of the first and the last key: the
    /// keys are sorted). Keys such as zero-padded numbers or "account:…" share their first
    /// bytes; the search prefixes start after them, where keys differ.
    common: usize,
    prefixes: Vec<u64>,
    keys: Vec<u8>,
    /// Where each key ends in `keys` (a table's index keys are far below 4 GiB).
    ends: Vec<u32>,
    seqnos: Vec<u64>,
    /// Where each data block starts, and one past the last: the blocks lie back to back
    /// (checked at open), so block `i` is `starts[i]..starts[i + 1]` less its trailer.
    starts: Vec<u64>,
}

impl Index {
    fn len(&self) -> usize {
        self.ends.len()
    }

    #[inline]
    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.keys[start..self.ends[i] as usize]
    }

    #[inline]
    fn handle(&self, i: usize) -> BlockHandle {
        BlockHandle {
            offset: self.starts[i],
            size: self.starts[i + 1] - self.starts[i] - BLOCK_TRAILER_LEN as u64,
        }
    }

    /// Sets the shared prefix and the search prefixes after it, once every key is in.
    fn finish(&mut self) {
        let n = self.len();
        self.common = match n {
            0 => 0,
            _ => common_prefix_len(self.key(0), self.key(n - 1)),
        };
        // Every key between the first and the last starts with their shared prefix (the
        // keys were checked to be in order); `get` keeps a bad index from panicking anyway.
        self.prefixes = (0..n)
            .map(|i| key_prefix(self.key(i).get(self.common..).unwrap_or_default()))
            .collect();
        self.shrink();
    }

    /// Gives back the slack of growing the vectors one push at a time: an open table keeps
    /// its index in memory for as long as it lives.
    fn shrink(&mut self) {
        self.prefixes.shrink_to_fit();
        self.keys.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.seqnos.shrink_to_fit();
        self.starts.shrink_to_fit();
    }

    /// Heap bytes the index holds.
    fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.prefixes.capacity() * size_of::<u64>()
            + self.keys.capacity()
            + self.ends.capacity() * size_of::<u32>()
            + self.seqnos.capacity() * size_of::<u64>()
            + self.starts.capacity() * size_of::<u64>()
    }

    /// Adds the next block, which starts where the last one ended (the caller checked;
    /// the first at 0) and ends at `end`, its trailer included. False if the keys outgrow
    /// 4 GiB (an index block is far smaller: only bad bytes get there).
    fn push(&mut self, key: &[u8], seqno: u64, end: u64) -> bool {
        let Ok(key_end) = u32::try_from(self.keys.len() + key.len()) else {
            return false;
        };
        if self.starts.is_empty() {
            self.starts.push(0);
        }
        self.keys.extend_from_slice(key);
        self.ends.push(key_end);
        self.seqnos.push(seqno);
        self.starts.push(end);
        true
    }
}

pub struct Table {
    id: u64,
    path: PathBuf,
    /// The file's length.
    len: u64,
    index: Index,
    filter: Bytes,
    props: TableProps,
    cache: Option<Arc<BlockCache>>,
    reader: Box<dyn RandomRead>,
    /// Heap bytes registered with the cache ([`BlockCache::pin`]) until the table drops.
    pinned: u64,
    /// Set once a manifest edit has removed the file ([`Table::delete_when_dropped`]): the
    /// file is deleted when the table drops, and not before, so every holder of the table
    /// can still open it ([`TableFiles`] closes files it has not read lately) or link it
    /// (a checkpoint).
    delete_with: OnceLock<Arc<FileDeleter>>,
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Some(c) = &self.cache {
            c.unpin(self.pinned);
        }
        if let Some(d) = self.delete_with.take() {
            d.delete(std::mem::take(&mut self.path));
        }
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({})", self.path.display())
    }
}

impl Table {
    /// Opens and checks a table file. `id` keys its blocks in the cache.
    pub fn open(
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table> {
        let reader = fs.open_random(path).map_err(|e| Error::io(path, e))?;
        let len = fs.file_size(path).map_err(|e| Error::io(path, e))?;
        Self::with_reader(reader, len, path, id, cache)
    }

    /// Opens and checks a table file whose descriptor `files` keeps, or closes and reopens
    /// as its cap requires (a database's tables).
    pub(crate) fn open_in(
        files: &Arc<TableFiles>,
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table> {
        let reader = files.reader(path, id).map_err(|e| Error::io(path, e))?;
        let len = fs.file_size(path).map_err(|e| Error::io(path, e))?;
        Self::with_reader(reader, len, path, id, cache)
    }

    /// Deletes the file once the table drops (the last view or reader holding it lets go),
    /// with `deleter`.
    pub(crate) fn delete_when_dropped(&self, deleter: &Arc<FileDeleter>) {
        let _ = self.delete_with.set(deleter.clone());
    }

    /// A table over `data`, the whole file's bytes.
    pub fn from_bytes(
        data: Bytes,
        path: &Path,
        id: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table> {
        let len = data.len() as u64;
        Self::with_reader(Box::new(MemRead(data)), len, path, id, cache)
    }

    /// A table over `len` bytes read with `reader`: reads and checks its metadata.
    fn with_reader(
        reader: Box<dyn RandomRead>,
        len: u64,
        path: &Path,
        id: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table> {
        let (start, meta) = read_meta(reader.as_ref(), len, path)?;
        let mut t = Self::parse(len, start, meta, reader, path, id, cache)?;
        if let Some(c) = &t.cache {
            t.pinned = t.heap_bytes();
            c.pin(t.pinned);
        }
        Ok(t)
    }

    /// A table of `len` bytes, with its footer, properties, filter and index read from
    /// `meta`, the file's bytes from offset `start` to its end.
    fn parse(
        len: u64,
        start: u64,
        meta: Bytes,
        reader: Box<dyn RandomRead>,
        path: &Path,
        id: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table> {
        let footer = Footer::decode_at(&meta, start, path)?;
        if footer
            .filter
            .offset
            .min(footer.index.offset)
            .min(footer.props.offset)
            < start
        {
            // Only if the file changed between the two reads of `read_meta`.
            return Err(Error::corruption(
                path,
                start,
                "footer points before the metadata read",
            ));
        }
        let (_, pb) = checked_at(&meta, start, footer.props, path)?;
        let props = TableProps::decode(pb, path, footer.props.offset)?;
        let (_, fb) = checked_at(&meta, start, footer.filter, path)?;
        // Filters and index keys are copied out of the metadata read: they are read on every
        // lookup, and the bytes around them are not needed.
        let filter = Bytes::copy_from_slice(fb);
        let (ty, ib) = checked_at(&meta, start, footer.index, path)?;
        let iblock = codec::decode_block(ty, meta.slice_ref(ib), path, footer.index.offset)?;
        let data_end = footer.filter.offset;
        let mut index = Index::default();
        let mut next_offset = 0u64;
        for i in 0..iblock.len() {
            let e = iblock.entry(i, path, footer.index.offset)?;
            let mut d = Decoder::new(&e.value, path, footer.index.offset);
            let handle = BlockHandle {
                offset: d.varint("data block offset")?,
                size: d.varint("data block size")?,
            };
            let end = handle
                .offset
                .checked_add(handle.size)
                .and_then(|x| x.checked_add(BLOCK_TRAILER_LEN as u64));
            if handle.offset != next_offset || end.is_none_or(|x| x > data_end) {
                return Err(Error::corruption(
                    path,
                    footer.index.offset,
                    format!("index entry {i} has a bad block handle {handle:?}"),
                ));
            }
            next_offset = end.unwrap_or(0);
            if i > 0
                && cmp_internal(index.key(i - 1), index.seqnos[i - 1], &e.key, e.seqno)
                    != std::cmp::Ordering::Less
            {
                return Err(Error::corruption(
                    path,
                    footer.index.offset,
                    format!("index entry {i} is out of order"),
                ));
            }
            if !index.push(&e.key, e.seqno, next_offset) {
                return Err(Error::corruption(
                    path,
                    footer.index.offset,
                    format!("index entry {i}: index keys past 4 GiB"),
                ));
            }
        }
        if index.len() as u64 != props.data_blocks {
            return Err(Error::corruption(
                path,
                footer.index.offset,
                format!(
                    "index lists {} blocks, properties say {}",
                    index.len(),
                    props.data_blocks
                ),
            ));
        }
        // The writer lays the data blocks back to back up to the filter, indexes each by
        // its last key, and records the first and last keys in the properties, which point
        // reads trust to skip the table: an index and properties that disagree with the
        // blocks (checksums intact) left blocks unreachable, or keys skipped by `get`.
        // Each finding names the offset of the part found at odds: the index, or the
        // properties.
        let (at_index, at_props) = (footer.index.offset, footer.props.offset);
        let layout = if next_offset != data_end {
            Some((
                at_index,
                format!(
                    "the indexed blocks end at byte {next_offset}, the filter begins at {data_end}"
                ),
            ))
        } else if props.format_version != footer.format_version {
            Some((
                at_props,
                format!(
                    "properties say format {}, the footer {}",
                    props.format_version, footer.format_version
                ),
            ))
        } else if index.len() == 0 {
            (props.entries != 0)
                .then(|| (at_props, format!("no blocks for {} entries", props.entries)))
        } else if props.largest.as_slice() != index.key(index.len() - 1) {
            Some((
                at_props,
                "the properties' last key is not the last block's".into(),
            ))
        } else if props.smallest.as_slice() > index.key(0) {
            Some((
                at_props,
                "the properties' first key is past the first block's last".into(),
            ))
        } else {
            None
        };
        if let Some((offset, why)) = layout {
            return Err(Error::corruption(path, offset, why));
        }
        index.finish();
        Ok(Table {
            id,
            path: path.to_path_buf(),
            len,
            index,
            filter,
            props,
            cache,
            reader,
            pinned: 0,
            delete_with: OnceLock::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Heap bytes the open table keeps for as long as it lives: its index, filter and the
    /// properties' smallest and largest keys (up to 64 KiB each).
    pub fn heap_bytes(&self) -> u64 {
        (self.index.heap_bytes()
            + self.filter.len()
            + self.props.smallest.capacity()
            + self.props.largest.capacity()) as u64
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn props(&self) -> &TableProps {
        &self.props
    }

    /// `e` (entry `i` of block `bi`), if its kind is one this table's kind holds: a data
    /// table holds no forwarding pointers, a pointer table nothing else. Read one way by
    /// point reads (a pointer ends the search) and another by scans (which step past it),
    /// a pointer in a data table gave `get` and a scan different answers.
    #[inline]
    pub(crate) fn checked_kind(&self, e: Entry, bi: usize, i: usize) -> Result<Entry> {
        self.kind_fits(e.kind)
            .then_some(e)
            .ok_or_else(|| self.wrong_kind(bi, i))
    }

    #[inline]
    pub(crate) fn kind_fits(&self, kind: Kind) -> bool {
        (self.props.kind == crate::sst::format::TableKind::Pointers) == (kind == Kind::Forward)
    }

    #[cold]
    pub(crate) fn wrong_kind(&self, bi: usize, i: usize) -> Error {
        crate::sst::block::entry_error(
            &self.path,
            self.block_offset(bi),
            i,
            match self.props.kind {
                crate::sst::format::TableKind::Data => "a forwarding pointer in a data table",
                crate::sst::format::TableKind::Pointers => {
                    "a value or tombstone in a pointer table"
                }
            },
        )
    }

    pub fn file_size(&self) -> u64 {
        self.len
    }

    pub fn block_count(&self) -> usize {
        self.index.len()
    }

    /// An error for a block index past the table's last block (a caller's, never the
    /// engine's own: its indexes come from the table's index).
    fn check_block_index(&self, i: usize) -> Result<()> {
        if i < self.block_count() {
            Ok(())
        } else {
            Err(Error::OutOfRange {
                what: "data block",
                index: i as u64,
                len: self.block_count() as u64,
            })
        }
    }

    /// The last user key of every data block: a sample of the table's keys (one per block)
    /// read from the index alone, without touching data blocks.
    pub fn index_keys(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.index.len()).map(|i| self.index.key(i))
    }

    /// Checks the CRC of every data block (full verification).
    pub fn verify_blocks(&self) -> Result<()> {
        let mut ra = Readahead::default();
        for i in 0..self.index.len() {
            self.read_block_ahead(i, &mut ra)?;
        }
        Ok(())
    }

    /// Where data block `i` lies in the file, and the last key (and seqno) the index gives
    /// it (for verification, which reports problems by offset).
    pub fn block_handle(&self, i: usize) -> Option<(BlockHandle, (&[u8], u64))> {
        (i < self.block_count()).then(|| {
            (
                self.index.handle(i),
                (self.index.key(i), self.index.seqnos[i]),
            )
        })
    }

    /// Loads data block `i` through the block cache, to search it.
    pub fn block(&self, i: usize) -> Result<Block> {
        self.read_block(i, Fill::Search)
    }

    /// Loads data block `i`, from the cache if it holds it. A block read from the file is
    /// checked; filling the cache (point reads, scans), it is read into a page of the
    /// cache's and cached, otherwise (a backward walk that leaves the cache alone) onto
    /// the heap.
    pub fn read_block(&self, i: usize, fill: Fill) -> Result<Block> {
        self.check_block_index(i)?;
        if let Some(c) = &self.cache {
            if let Some(b) = c.get(self.id, i as u32) {
                // A block a scan walked into the cache, now searched: it gets its search
                // prefixes once (a binary search without them waits on memory at every
                // probe, and a level's blocks are searched again and again).
                if let Some(s) = (fill == Fill::Search).then(|| b.with_search()).flatten() {
                    c.upgrade(self.id, i as u32, b, s.clone());
                    return Ok(s);
                }
                return Ok(b);
            }
        }
        let h = self.index.handle(i);
        let buf_len = h.size as usize + BLOCK_TRAILER_LEN;
        let io = |e| Error::io_at(&self.path, h.offset, buf_len, e);
        let cache = self
            .cache
            .as_ref()
            .filter(|c| fill != Fill::No && c.capacity() > 0);
        let Some(c) = cache else {
            let mut buf = Vec::new();
            self.reader
                .read_exact_at_into(&mut buf, buf_len, h.offset)
                .map_err(io)?;
            let (ty, _) = checked_at(&buf, h.offset, h, &self.path)?;
            let body = Bytes::from(buf).slice(..h.size as usize);
            return codec::decode_block(ty, body, &self.path, h.offset);
        };
        // Into a page of the cache's if it fits one (see `cache::pages`).
        let buf = match c.lease(buf_len) {
            Some(mut lease) => {
                self.reader
                    .read_exact_at(lease.bytes_mut(), h.offset)
                    .map_err(io)?;
                codec::Owned::Page(lease)
            }
            None => {
                let mut buf = Vec::with_capacity(buf_len);
                self.reader
                    .read_exact_at_into(&mut buf, buf_len, h.offset)
                    .map_err(io)?;
                codec::Owned::Heap(buf)
            }
        };
        let (ty, _) = checked_at(buf.bytes(), h.offset, h, &self.path)?;
        let search = fill == Fill::Search;
        let b = codec::decode_owned(ty, buf, h.size as usize, search, c, &self.path, h.offset)?;
        c.insert(self.id, i as u32, b.clone());
        Ok(b)
    }

    /// Loads data block `i` for a walk through the table's blocks in order that leaves the
    /// cache alone (a compaction's, a verification's): blocks are read with `pread` in runs
    /// of `ra`'s run length ([`READAHEAD`] unless [`Readahead::with_run`] set another; a
    /// longer block whole) into `ra`'s buffer and served from it, CRC checked.
    pub fn read_block_ahead(&self, i: usize, ra: &mut Readahead) -> Result<Block> {
        self.check_block_index(i)?;
        let r = &self.reader;
        let h = self.index.handle(i);
        let end = h.offset + h.size + BLOCK_TRAILER_LEN as u64;
        let held =
            ra.table == self.id && ra.start <= h.offset && end <= ra.start + ra.buf.len() as u64;
        if !held {
            // Up to the end of the data blocks (the blocks lie back to back, checked at open).
            let data_end = self.index.starts.last().copied().unwrap_or(end);
            let run = match ra.run {
                0 => READAHEAD,
                n => n,
            };
            let len = run.max(end - h.offset).min(data_end.max(end) - h.offset) as usize;
            // The last run's buffer, if no block read from it is still held (the caller
            // lets go of its block first): no allocation per run. Unless a block much
            // longer than a run grew it: that memory goes back rather than being held for
            // the rest of the walk.
            let fits = |cap: usize| cap >= len && cap <= 2 * len.max(run as usize);
            let mut buf = match std::mem::take(&mut ra.buf).try_into_mut() {
                Ok(b) if fits(b.capacity()) => Vec::from(b),
                _ => Vec::with_capacity(len),
            };
            buf.clear();
            r.read_exact_at_into(&mut buf, len, h.offset)
                .map_err(|e| Error::io_at(&self.path, h.offset, len, e))?;
            *ra = Readahead {
                table: self.id,
                start: h.offset,
                #[cfg(test)]
                capacity: buf.capacity(),
                buf: Bytes::from(buf),
                run: ra.run,
            };
        }
        let (ty, body) = checked_at(&ra.buf, ra.start, h, &self.path)?;
        codec::decode_block(ty, ra.buf.slice_ref(body), &self.path, h.offset)
    }

    /// Data block `i` if the block cache holds it.
    #[cfg(test)]
    pub(crate) fn cached_block(&self, i: usize) -> Option<Block> {
        self.cache.as_ref()?.get(self.id, i as u32)
    }

    /// The codec byte in the trailer of data block `i`, and where the block is.
    #[cfg(test)]
    pub(crate) fn stored_block(&self, i: usize) -> (u8, BlockHandle) {
        let h = self.index.handle(i);
        let mut ty = [0u8];
        self.reader
            .read_exact_at(&mut ty, h.offset + h.size)
            .unwrap();
        (ty[0], h)
    }

    pub(crate) fn block_offset(&self, i: usize) -> u64 {
        self.index.starts[i]
    }

    /// Index of the first data block that may hold entries at or after (key, seqno).
    pub(crate) fn find_block(&self, key: &[u8], seqno: u64) -> usize {
        let ix = &self.index;
        let head = &ix.keys[..ix.common.min(ix.keys.len())];
        let found = prefix_search(
            ix.len(),
            head,
            key,
            64,
            |i| ix.prefixes[i],
            |i| {
                Ok::<_, std::convert::Infallible>(
                    cmp_internal(ix.key(i), ix.seqnos[i], key, seqno) == std::cmp::Ordering::Less,
                )
            },
        );
        match found {
            Ok(i) => i,
            Err(never) => match never {},
        }
    }

    /// The bloom filter's bytes (see [`bloom::may_contain`]).
    pub fn filter(&self) -> &Bytes {
        &self.filter
    }

    /// Whether the bloom filter admits `key` (given its filter hash).
    #[inline]
    pub fn may_contain_hash(&self, h: u64) -> bool {
        bloom::may_contain(&self.filter, h)
    }

    /// The newest entry for `key` with seqno <= `snapshot`, if this table holds one.
    pub fn get(&self, key: &[u8], bloom_hash: u64, snapshot: u64) -> Result<Option<Entry>> {
        if key < self.props.smallest.as_slice() || key > self.props.largest.as_slice() {
            return Ok(None);
        }
        if !self.may_contain_hash(bloom_hash) {
            return Ok(None);
        }
        self.search(key, snapshot)
    }

    /// [`Table::get`] without the key-range and filter checks, for a caller that made them.
    pub(crate) fn search(&self, key: &[u8], snapshot: u64) -> Result<Option<Entry>> {
        let mut bi = self.find_block(key, snapshot);
        while bi < self.index.len() {
            let b = self.block(bi)?;
            let base = self.block_offset(bi);
            let i = b.seek(key, snapshot, &self.path, base)?;
            if i < b.len() {
                let e = b.entry(i, &self.path, base)?;
                if !eq_keys(&e.key, key) {
                    return Ok(None);
                }
                return self.checked_kind(e, bi, i).map(Some);
            }
            // Only reachable if the index disagrees with the block; look one block further.
            bi += 1;
        }
        Ok(None)
    }

    /// Every entry, in internal order.
    pub fn iter(self: &Arc<Self>) -> TableIter {
        TableIter::new(self.clone(), Bound::Unbounded, Bound::Unbounded)
    }
}

/// What a block read asks of the block cache.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fill {
    /// Leave the cache as it is (backward walks of compactions and checks; their forward
    /// walks go through [`Table::read_block_ahead`]).
    No,
    /// Cache a missing block as it is (the blocks a scan walks through).
    Cache,
    /// Cache a missing block with search prefixes (the blocks point reads and seeks search;
    /// see `Block::from_bytes`), and give a block cached without them its prefixes.
    Search,
}

/// Bytes a [`Table::read_block_ahead`] reads at a time, unless its [`Readahead`] says
/// fewer.
pub const READAHEAD: u64 = 64 << 10;

/// A run of a table's blocks read ahead by [`Table::read_block_ahead`].
#[derive(Default)]
pub struct Readahead {
    /// The table (its id) and the file offset the bytes start at.
    table: u64,
    start: u64,
    buf: Bytes,
    /// Bytes to read at a time (0: [`READAHEAD`]); a block longer than this is read whole.
    run: u64,
    /// The allocation behind `buf` (tests only: `Bytes` does not say).
    #[cfg(test)]
    capacity: usize,
}

impl Readahead {
    /// Reads `run` bytes at a time (at least one block).
    pub fn with_run(run: u64) -> Readahead {
        Readahead {
            run: run.max(1),
            ..Readahead::default()
        }
    }

    /// Bytes read ahead and held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Bytes allocated for what is held.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Position of an entry: (block, entry within block).
type Pos = (usize, usize);

/// A double-ended iterator over a table's entries whose user keys fall in a range.
pub struct TableIter {
    table: Arc<Table>,
    start: Bound<Bytes>,
    end: Bound<Bytes>,
    front: Option<Pos>,
    back: Option<Pos>,
    front_block: Option<(usize, Block)>,
    back_block: Option<(usize, Block)>,
    done: bool,
}

impl TableIter {
    pub fn new(table: Arc<Table>, start: Bound<Bytes>, end: Bound<Bytes>) -> TableIter {
        TableIter {
            table,
            start,
            end,
            front: None,
            back: None,
            front_block: None,
            back_block: None,
            done: false,
        }
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    fn load(&self, slot: &mut Option<(usize, Block)>, bi: usize) -> Result<Block> {
        if let Some((i, b)) = slot {
            if *i == bi {
                return Ok(b.clone());
            }
        }
        let b = self.table.block(bi)?;
        *slot = Some((bi, b.clone()));
        Ok(b)
    }

    /// First position at or after the start bound.
    fn init_front(&mut self) -> Result<Pos> {
        let t = self.table.clone();
        let (key, seq, skip_key) = match &self.start {
            Bound::Unbounded => return Ok((0, 0)),
            Bound::Included(k) => (k.clone(), u64::MAX, false),
            Bound::Excluded(k) => (k.clone(), 0, true),
        };
        let mut bi = t.find_block(&key, seq);
        while bi < t.index.len() {
            let mut slot = self.front_block.take();
            let b = self.load(&mut slot, bi)?;
            self.front_block = slot;
            let base = t.block_offset(bi);
            let i = if skip_key {
                b.seek_after_user_key(&key, &t.path, base)?
            } else {
                b.seek(&key, seq, &t.path, base)?
            };
            if i < b.len() {
                return Ok((bi, i));
            }
            bi += 1;
        }
        Ok((t.index.len(), 0))
    }

    /// Position just past the last entry at or before the end bound.
    fn init_back(&mut self) -> Result<Pos> {
        let t = self.table.clone();
        let (key, skip_key) = match &self.end {
            Bound::Unbounded => return Ok((t.index.len(), 0)),
            Bound::Included(k) => (k.clone(), true),
            Bound::Excluded(k) => (k.clone(), false),
        };
        let mut bi = t.find_block(&key, if skip_key { 0 } else { u64::MAX });
        while bi < t.index.len() {
            let mut slot = self.back_block.take();
            let b = self.load(&mut slot, bi)?;
            self.back_block = slot;
            let base = t.block_offset(bi);
            let i = if skip_key {
                b.seek_after_user_key(&key, &t.path, base)?
            } else {
                b.seek(&key, u64::MAX, &t.path, base)?
            };
            if i < b.len() {
                return Ok((bi, i));
            }
            bi += 1;
        }
        Ok((t.index.len(), 0))
    }

    fn next_inner(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        if self.front.is_none() {
            self.front = Some(self.init_front()?);
        }
        if self.back.is_none() {
            self.back = Some(self.init_back()?);
        }
        loop {
            let (bi, ei) = self.front.unwrap_or_default();
            let back = self.back.unwrap_or_default();
            if (bi, ei) >= back || bi >= self.table.index.len() {
                self.done = true;
                return Ok(None);
            }
            let mut slot = self.front_block.take();
            let b = self.load(&mut slot, bi)?;
            self.front_block = slot;
            if ei >= b.len() {
                self.front = Some((bi + 1, 0));
                continue;
            }
            let e = b.entry(ei, &self.table.path, self.table.block_offset(bi))?;
            let e = self.table.checked_kind(e, bi, ei)?;
            self.front = Some((bi, ei + 1));
            return Ok(Some(e));
        }
    }

    fn next_back_inner(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        if self.back.is_none() {
            self.back = Some(self.init_back()?);
        }
        if self.front.is_none() {
            self.front = Some(self.init_front()?);
        }
        loop {
            let (bi, ei) = self.back.unwrap_or_default();
            let front = self.front.unwrap_or_default();
            if (bi, ei) <= front {
                self.done = true;
                return Ok(None);
            }
            if ei == 0 {
                // Step to the end of the previous block.
                let mut slot = self.back_block.take();
                let pb = self.load(&mut slot, bi - 1)?;
                self.back_block = slot;
                self.back = Some((bi - 1, pb.len()));
                continue;
            }
            let mut slot = self.back_block.take();
            let b = self.load(&mut slot, bi)?;
            self.back_block = slot;
            let idx = ei.min(b.len());
            if idx == 0 {
                self.back = Some((bi, 0));
                continue;
            }
            let e = b.entry(idx - 1, &self.table.path, self.table.block_offset(bi))?;
            let e = self.table.checked_kind(e, bi, idx - 1)?;
            self.back = Some((bi, idx - 1));
            return Ok(Some(e));
        }
    }
}

impl Iterator for TableIter {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        match self.next_inner() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl DoubleEndedIterator for TableIter {
    fn next_back(&mut self) -> Option<Result<Entry>> {
        match self.next_back_inner() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Entry {
    /// True for entries that stand for a value a reader can see.
    pub fn is_value(&self) -> bool {
        self.kind == Kind::Value
    }
}

/// Checks block `h` in `buf`, a copy of the file's bytes from offset `start` (at most the
/// block's) on, read with `pread`: its type and body, or an error naming the block's offset
/// in the file.
fn checked_at<'a>(
    buf: &'a [u8],
    start: u64,
    h: BlockHandle,
    path: &Path,
) -> Result<(u8, &'a [u8])> {
    let local = BlockHandle {
        offset: h.offset - start,
        size: h.size,
    };
    checked_block(buf, local, path).map_err(|e| rebase(e, start))
}

/// Reads the metadata end of a table file of `len` bytes: the footer, then everything
/// from the first of the blocks it points to (filter, index, properties) to the end (no
/// more than the file holds: the footer, checked by its CRC, points into the file).
/// Returns where that read starts and its bytes.
pub(super) fn read_meta(r: &dyn RandomRead, len: u64, path: &Path) -> Result<(u64, Bytes)> {
    let at = len.saturating_sub(FOOTER_LEN as u64);
    let mut foot = Vec::new();
    let n = (len - at) as usize;
    r.read_exact_at_into(&mut foot, n, at)
        .map_err(|e| Error::io_at(path, at, n, e))?;
    let footer = Footer::decode_at(&foot, at, path)?;
    // Each handle ends before the footer (checked by the decode).
    let start = footer
        .filter
        .offset
        .min(footer.index.offset)
        .min(footer.props.offset);
    let mut meta = Vec::new();
    let n = (len - start) as usize;
    r.read_exact_at_into(&mut meta, n, start)
        .map_err(|e| Error::io_at(path, start, n, e))?;
    Ok((start, Bytes::from(meta)))
}

/// Moves the offset of an error found in a block read into a buffer to its place in the file.
fn rebase(e: Error, base: u64) -> Error {
    match e {
        Error::ChecksumMismatch {
            file,
            offset,
            expected,
            actual,
        } => Error::ChecksumMismatch {
            file,
            offset: offset + base,
            expected,
            actual,
        },
        Error::Corruption {
            file,
            offset,
            reason,
        } => Error::Corruption {
            file,
            offset: offset + base,
            reason,
        },
        other => other,
    }
}
