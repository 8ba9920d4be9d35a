//! Cursors: the engine's internal iteration. A cursor sits on one entry and exposes its
//! key, seqno, kind and value as borrowed slices, so merging and compaction touch no
//! reference counts and allocate nothing per entry; owned `Bytes` are made only for what
//! leaves the engine.
//!
//! Each cursor walks one direction over a key range. Sources are memtables (walked in
//! chunks), single tables (L0 files) and levels (a concatenation of non-overlapping
//! tables). [`MergeCursor`] merges any number of them in internal order.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::iter::{Direction, KeyRange};
use crate::memtable::MemTable;
use crate::sst::block::Block;
use crate::sst::Table;
use crate::types::{cmp_internal, Entry, Kind};
use crate::version::FileMeta;

/// The entry a table cursor sits on, as offsets into its block.
#[derive(Clone, Copy, Default)]
struct At {
    ks: usize,
    ke: usize,
    vs: usize,
    ve: usize,
    seqno: u64,
    kind: u8,
}

/// Walks one table in one direction over a key range.
pub(crate) struct TableCursor {
    table: Arc<Table>,
    range: KeyRange,
    dir: Direction,
    fill_cache: bool,
    /// Current block, its index, and the entry index within it.
    block: Option<Block>,
    bi: usize,
    ei: usize,
    at: At,
    valid: bool,
}

impl TableCursor {
    /// A cursor positioned on the first entry of `range` in direction `dir`.
    pub fn new(
        table: Arc<Table>,
        range: KeyRange,
        dir: Direction,
        fill_cache: bool,
    ) -> Result<TableCursor> {
        let mut c = TableCursor {
            table,
            range,
            dir,
            fill_cache,
            block: None,
            bi: 0,
            ei: 0,
            at: At::default(),
            valid: false,
        };
        c.seek_start()?;
        Ok(c)
    }

    fn load(&mut self, bi: usize) -> Result<()> {
        self.block = Some(self.table.read_block(bi, self.fill_cache)?);
        self.bi = bi;
        Ok(())
    }

    fn decode(&mut self) -> Result<()> {
        let b = self.block.as_ref().expect("a loaded block");
        let base = self.table.block_offset(self.bi);
        let (ks, ke, trailer, vs, ve) = b.parts(self.ei, self.table.path(), base)?;
        let kind = trailer as u8;
        if Kind::from_u8(kind).is_none() {
            return Err(Error::corruption(
                self.table.path(),
                base,
                format!("block entry {}: bad kind {kind}", self.ei),
            ));
        }
        self.at = At {
            ks,
            ke,
            vs,
            ve,
            seqno: trailer >> 8,
            kind,
        };
        Ok(())
    }

    /// Positions on the first entry in range (in the cursor's direction).
    fn seek_start(&mut self) -> Result<()> {
        let t = self.table.clone();
        let n = t.block_count();
        self.valid = false;
        if n == 0 {
            return Ok(());
        }
        match self.dir {
            Direction::Forward => {
                let (key, seq, skip_key) = match &self.range.start {
                    Bound::Unbounded => {
                        self.load(0)?;
                        self.ei = 0;
                        return self.settle();
                    }
                    Bound::Included(k) => (k.clone(), u64::MAX, false),
                    Bound::Excluded(k) => (k.clone(), 0, true),
                };
                let bi = t.find_block(&key, seq);
                if bi >= n {
                    return Ok(());
                }
                self.load(bi)?;
                let b = self.block.as_ref().expect("loaded");
                let base = t.block_offset(bi);
                self.ei = if skip_key {
                    b.seek_after_user_key(&key, t.path(), base)?
                } else {
                    b.seek(&key, seq, t.path(), base)?
                };
                self.settle()
            }
            Direction::Backward => {
                // Find the first entry past the end bound, then step back one.
                let (key, skip_key) = match &self.range.end {
                    Bound::Unbounded => {
                        self.load(n - 1)?;
                        self.ei = self.block.as_ref().map_or(0, |b| b.len());
                        return self.step_back();
                    }
                    Bound::Included(k) => (k.clone(), true),
                    Bound::Excluded(k) => (k.clone(), false),
                };
                let bi = t.find_block(&key, if skip_key { 0 } else { u64::MAX });
                if bi >= n {
                    self.load(n - 1)?;
                    self.ei = self.block.as_ref().map_or(0, |b| b.len());
                    return self.step_back();
                }
                self.load(bi)?;
                let b = self.block.as_ref().expect("loaded");
                let base = t.block_offset(bi);
                self.ei = if skip_key {
                    b.seek_after_user_key(&key, t.path(), base)?
                } else {
                    b.seek(&key, u64::MAX, t.path(), base)?
                };
                self.step_back()
            }
        }
    }

    /// Forward: moves past exhausted blocks, decodes, checks the end bound.
    fn settle(&mut self) -> Result<()> {
        loop {
            let len = self.block.as_ref().map_or(0, |b| b.len());
            if self.ei < len {
                break;
            }
            if self.bi + 1 >= self.table.block_count() {
                self.valid = false;
                return Ok(());
            }
            self.load(self.bi + 1)?;
            self.ei = 0;
        }
        self.decode()?;
        self.valid = self.in_end_bound();
        Ok(())
    }

    /// Backward: moves to the entry before `ei`, crossing blocks, and checks the start bound.
    fn step_back(&mut self) -> Result<()> {
        loop {
            if self.ei > 0 {
                self.ei -= 1;
                break;
            }
            if self.bi == 0 {
                self.valid = false;
                return Ok(());
            }
            self.load(self.bi - 1)?;
            self.ei = self.block.as_ref().map_or(0, |b| b.len());
        }
        self.decode()?;
        self.valid = self.in_start_bound();
        Ok(())
    }

    fn in_end_bound(&self) -> bool {
        let k = self.key();
        match &self.range.end {
            Bound::Unbounded => true,
            Bound::Included(e) => k <= e.as_ref(),
            Bound::Excluded(e) => k < e.as_ref(),
        }
    }

    fn in_start_bound(&self) -> bool {
        let k = self.key();
        match &self.range.start {
            Bound::Unbounded => true,
            Bound::Included(s) => k >= s.as_ref(),
            Bound::Excluded(s) => k > s.as_ref(),
        }
    }

    #[inline]
    fn data(&self) -> &[u8] {
        self.block.as_ref().map_or(&[], |b| b.data().as_ref())
    }

    #[inline]
    pub fn key(&self) -> &[u8] {
        &self.data()[self.at.ks..self.at.ke]
    }

    pub fn advance(&mut self) -> Result<()> {
        match self.dir {
            Direction::Forward => {
                self.ei += 1;
                self.settle()
            }
            Direction::Backward => self.step_back(),
        }
    }
}

/// Walks a memtable in chunks (so it holds only an `Arc`), in one direction.
pub(crate) struct MemCursor {
    inner: crate::iter::MemIter,
    cur: Option<Entry>,
}

impl MemCursor {
    pub fn new(mem: Arc<MemTable>, range: KeyRange, dir: Direction) -> MemCursor {
        let mut inner = crate::iter::MemIter::new(mem, range, dir);
        let cur = inner.next_entry();
        MemCursor { inner, cur }
    }
}

/// Concatenates the non-overlapping tables of one level, opening each when reached.
pub(crate) struct LevelCursor {
    files: Vec<Arc<FileMeta>>,
    next: usize,
    range: KeyRange,
    dir: Direction,
    fill_cache: bool,
    cur: Option<TableCursor>,
}

impl LevelCursor {
    /// `files` sorted by key and non-overlapping.
    pub fn new(
        files: Vec<Arc<FileMeta>>,
        range: KeyRange,
        dir: Direction,
        fill_cache: bool,
    ) -> Result<LevelCursor> {
        let mut files: Vec<_> = files
            .into_iter()
            .filter(|f| range.overlaps(&f.smallest, &f.largest))
            .collect();
        if dir == Direction::Backward {
            files.reverse();
        }
        let mut c = LevelCursor {
            files,
            next: 0,
            range,
            dir,
            fill_cache,
            cur: None,
        };
        c.open_next()?;
        Ok(c)
    }

    fn open_next(&mut self) -> Result<()> {
        self.cur = None;
        while let Some(f) = self.files.get(self.next) {
            self.next += 1;
            let c = TableCursor::new(
                f.table.clone(),
                self.range.clone(),
                self.dir,
                self.fill_cache,
            )?;
            if c.valid {
                self.cur = Some(c);
                return Ok(());
            }
        }
        Ok(())
    }
}

/// One merge input.
pub(crate) enum Source {
    Mem(MemCursor),
    Table(TableCursor),
    Level(LevelCursor),
}

impl Source {
    /// A table (or a whole level) over `range`, positioned.
    pub fn table(
        f: &Arc<FileMeta>,
        range: &KeyRange,
        dir: Direction,
        fill_cache: bool,
    ) -> Result<Source> {
        Ok(Source::Table(TableCursor::new(
            f.table.clone(),
            range.clone(),
            dir,
            fill_cache,
        )?))
    }

    pub fn level(
        files: Vec<Arc<FileMeta>>,
        range: &KeyRange,
        dir: Direction,
        fill_cache: bool,
    ) -> Result<Source> {
        Ok(Source::Level(LevelCursor::new(
            files,
            range.clone(),
            dir,
            fill_cache,
        )?))
    }

    pub fn mem(m: Arc<MemTable>, range: &KeyRange, dir: Direction) -> Source {
        Source::Mem(MemCursor::new(m, range.clone(), dir))
    }

    fn table_cursor(&self) -> Option<&TableCursor> {
        match self {
            Source::Table(t) => Some(t),
            Source::Level(l) => l.cur.as_ref(),
            Source::Mem(_) => None,
        }
    }

    #[inline]
    pub fn valid(&self) -> bool {
        match self {
            Source::Mem(m) => m.cur.is_some(),
            Source::Table(t) => t.valid,
            Source::Level(l) => l.cur.is_some(),
        }
    }

    #[inline]
    pub fn key(&self) -> &[u8] {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(&[], |e| e.key.as_ref()),
            _ => self.table_cursor().map_or(&[], |t| t.key()),
        }
    }

    #[inline]
    pub fn seqno(&self) -> u64 {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(0, |e| e.seqno),
            _ => self.table_cursor().map_or(0, |t| t.at.seqno),
        }
    }

    #[inline]
    pub fn kind(&self) -> Kind {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(Kind::Delete, |e| e.kind),
            _ => self
                .table_cursor()
                .and_then(|t| Kind::from_u8(t.at.kind))
                .unwrap_or(Kind::Delete),
        }
    }

    #[inline]
    pub fn value(&self) -> &[u8] {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(&[], |e| e.value.as_ref()),
            _ => self
                .table_cursor()
                .map_or(&[], |t| &t.data()[t.at.vs..t.at.ve]),
        }
    }

    /// The key as owned bytes (a zero-copy slice of the block; a copy out of a memtable).
    pub fn key_bytes(&self) -> Bytes {
        match self {
            // Copied: a slice would keep the memtable's whole arena chunk alive.
            Source::Mem(m) => m
                .cur
                .as_ref()
                .map(|e| Bytes::copy_from_slice(&e.key))
                .unwrap_or_default(),
            _ => self
                .table_cursor()
                .and_then(|t| t.block.as_ref().map(|b| b.data().slice(t.at.ks..t.at.ke)))
                .unwrap_or_default(),
        }
    }

    /// The value as owned bytes (a zero-copy slice of the block; a copy out of a memtable).
    pub fn value_bytes(&self) -> Bytes {
        match self {
            Source::Mem(m) => m
                .cur
                .as_ref()
                .map(|e| Bytes::copy_from_slice(&e.value))
                .unwrap_or_default(),
            _ => self
                .table_cursor()
                .and_then(|t| t.block.as_ref().map(|b| b.data().slice(t.at.vs..t.at.ve)))
                .unwrap_or_default(),
        }
    }

    pub fn advance(&mut self) -> Result<()> {
        match self {
            Source::Mem(m) => {
                m.cur = m.inner.next_entry();
                Ok(())
            }
            Source::Table(t) => t.advance(),
            Source::Level(l) => {
                if let Some(c) = l.cur.as_mut() {
                    c.advance()?;
                    if !c.valid {
                        l.open_next()?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// K-way merge of sources in one direction, in internal order (for `Backward`, the exact
/// reverse). An entry present in several sources with the same (key, seqno) — a value both
/// migrated and lazily moved — comes out once.
pub(crate) struct MergeCursor {
    sources: Vec<Source>,
    /// Indexes of valid sources, as a binary heap with the next entry on top.
    heap: Vec<usize>,
    dir: Direction,
    last_key: Vec<u8>,
    last_seq: u64,
    has_last: bool,
}

impl MergeCursor {
    pub fn new(sources: Vec<Source>, dir: Direction) -> MergeCursor {
        let mut m = MergeCursor {
            heap: (0..sources.len()).filter(|&i| sources[i].valid()).collect(),
            sources,
            dir,
            last_key: Vec::new(),
            last_seq: 0,
            has_last: false,
        };
        for i in (0..m.heap.len() / 2).rev() {
            m.sift_down(i);
        }
        if let Some(&top) = m.heap.first() {
            m.remember(top);
        }
        m
    }

    /// True if source `a`'s entry comes before source `b`'s.
    #[inline]
    fn before(&self, a: usize, b: usize) -> bool {
        let (sa, sb) = (&self.sources[a], &self.sources[b]);
        let o = cmp_internal(sa.key(), sa.seqno(), sb.key(), sb.seqno()).then(a.cmp(&b));
        match self.dir {
            Direction::Forward => o == Ordering::Less,
            Direction::Backward => o == Ordering::Greater,
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                return;
            }
            let r = l + 1;
            let c = if r < n && self.before(self.heap[r], self.heap[l]) {
                r
            } else {
                l
            };
            if self.before(self.heap[c], self.heap[i]) {
                self.heap.swap(c, i);
                i = c;
            } else {
                return;
            }
        }
    }

    fn remember(&mut self, src: usize) {
        self.last_key.clear();
        self.last_key.extend_from_slice(self.sources[src].key());
        self.last_seq = self.sources[src].seqno();
        self.has_last = true;
    }

    #[inline]
    pub fn valid(&self) -> bool {
        !self.heap.is_empty()
    }

    #[inline]
    pub fn top(&self) -> &Source {
        &self.sources[self.heap[0]]
    }

    /// Moves to the next entry, skipping duplicates of the one just left.
    pub fn advance(&mut self) -> Result<()> {
        loop {
            let Some(&top) = self.heap.first() else {
                return Ok(());
            };
            self.sources[top].advance()?;
            if self.sources[top].valid() {
                self.sift_down(0);
            } else {
                let last = self.heap.len() - 1;
                self.heap.swap(0, last);
                self.heap.pop();
                self.sift_down(0);
            }
            let Some(&next) = self.heap.first() else {
                return Ok(());
            };
            let s = &self.sources[next];
            if self.has_last && s.seqno() == self.last_seq && s.key() == self.last_key.as_slice() {
                continue;
            }
            self.remember(next);
            return Ok(());
        }
    }

    /// The current entry as an owned [`Entry`].
    pub fn entry(&self) -> Entry {
        let s = self.top();
        Entry {
            key: s.key_bytes(),
            seqno: s.seqno(),
            kind: s.kind(),
            value: s.value_bytes(),
        }
    }
}
