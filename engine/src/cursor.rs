//! Cursors: the engine's internal iteration. A cursor sits on one entry and exposes its
//! key, seqno, kind and value as borrowed slices, so merging and compaction touch no
//! reference counts and allocate nothing per entry; owned `Bytes` are made only for what
//! leaves the engine.
//!
//! Each cursor walks one direction over a key range. Sources are memtables (walked in
//! chunks) and sorted runs of tables: a single table (an L0 file) or a level (a
//! concatenation of non-overlapping tables), walked by one [`TableCursor`] that moves on to
//! the next table when one ends. [`MergeCursor`] merges any number of sources in internal
//! order.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::iter::{Direction, KeyRange};
use crate::memtable::MemTable;
use crate::sst::block::{entry_error, Block};
use crate::sst::reader::{Fill, Readahead};
use crate::sst::Table;
use crate::types::{cmp_keys, key_prefix, Entry, Kind};
use crate::version::{FileMeta, PartitionFiles};

/// The entry a table cursor sits on, as offsets into its block.
#[derive(Clone, Copy)]
struct At {
    ks: usize,
    ke: usize,
    vs: usize,
    ve: usize,
    seqno: u64,
    kind: Kind,
}

const NOWHERE: At = At {
    ks: 0,
    ke: 0,
    vs: 0,
    ve: 0,
    seqno: 0,
    kind: Kind::Delete,
};

/// Walks a sorted run of tables (one table, or a level's non-overlapping tables in walk
/// order) in one direction over a key range.
pub(crate) struct TableCursor {
    table: Arc<Table>,
    /// The run's tables after `table`, in walk order.
    rest: Option<LevelWalk>,
    range: KeyRange,
    dir: Direction,
    fill_cache: bool,
    /// Blocks read ahead, for a forward walk that leaves the cache alone (its buffer serves
    /// each table of the run in turn: it records which table its bytes are of).
    ahead: Readahead,
    /// Current block (empty before the first load), its index, and the entry index within it.
    block: Block,
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
    ) -> Result<Box<TableCursor>> {
        TableCursor::run(table, None, range, dir, fill_cache)
    }

    /// A forward cursor over `range` that leaves the block cache alone and reads `run`
    /// bytes of blocks at a time (see [`Readahead`]), positioned on its first entry.
    pub fn ahead(table: Arc<Table>, range: KeyRange, run: u64) -> Result<Box<TableCursor>> {
        let mut c = TableCursor::unpositioned(table, None, range, Direction::Forward, false);
        c.ahead = Readahead::with_run(run);
        c.seek_start()?;
        Ok(c)
    }

    /// A cursor over `first` and then the tables `rest` reaches (non-overlapping, in walk
    /// order) as one sorted run, positioned on the first entry of `range` in direction `dir`.
    fn run(
        first: Arc<Table>,
        rest: Option<LevelWalk>,
        range: KeyRange,
        dir: Direction,
        fill_cache: bool,
    ) -> Result<Box<TableCursor>> {
        let mut c = TableCursor::unpositioned(first, rest, range, dir, fill_cache);
        c.seek_start()?;
        c.next_table_if_done()?;
        Ok(c)
    }

    /// Once the current table is exhausted, moves on to the next table of the run that has
    /// an entry in range.
    fn next_table_if_done(&mut self) -> Result<()> {
        while !self.valid {
            let Some(f) = self.rest.as_mut().and_then(|w| w.next_file(&self.range)) else {
                return Ok(());
            };
            self.table = f.table.clone();
            // The position goes with the block: an entry of the last table must not be
            // looked up in the next one's (a seek that finds nothing loads no block).
            self.block = Block::empty();
            self.at = NOWHERE;
            self.seek_start()?;
        }
        Ok(())
    }

    /// Boxed from the start: a cursor is a few hundred bytes, and a scan over many
    /// partitions makes one per sorted run and moves each on into its merge (with every
    /// block cached, those moves took 6% of a hash:16 scan of 100 entries).
    fn unpositioned(
        first: Arc<Table>,
        rest: Option<LevelWalk>,
        range: KeyRange,
        dir: Direction,
        fill_cache: bool,
    ) -> Box<TableCursor> {
        Box::new(TableCursor {
            table: first,
            rest,
            range,
            dir,
            fill_cache,
            ahead: Readahead::default(),
            block: Block::empty(),
            bi: 0,
            ei: 0,
            at: NOWHERE,
            valid: false,
        })
    }

    /// Loads block `bi`: to `search` it (a seek), or to walk through it.
    fn load(&mut self, bi: usize, search: bool) -> Result<()> {
        self.block = match (self.fill_cache, search, self.dir) {
            (false, _, Direction::Forward) => {
                // Let go of the current block first, so its run's buffer can be reused.
                self.block = Block::empty();
                self.table.read_block_ahead(bi, &mut self.ahead)?
            }
            (false, _, Direction::Backward) => self.table.read_block(bi, Fill::No)?,
            (true, false, _) => self.table.read_block(bi, Fill::Cache)?,
            (true, true, _) => self.table.read_block(bi, Fill::Search)?,
        };
        self.bi = bi;
        Ok(())
    }

    fn decode(&mut self) -> Result<()> {
        // A block's first entry starts at its first byte (the offset array, at the block's
        // end, is another cache line: a miss for a block the CPU has not seen).
        let start = match self.ei {
            0 => 0,
            ei => self.block.entry_offset(ei),
        };
        self.decode_from(start)
    }

    /// Decodes entry `ei`, which starts at byte `start` of the block.
    #[inline]
    fn decode_from(&mut self, start: usize) -> Result<()> {
        let (ks, ke, trailer, vs, ve) = self
            .block
            .parts_from(start)
            .map_err(|why| self.entry_error(why))?;
        let Some(kind) = Kind::from_u8(trailer as u8) else {
            return Err(self.entry_error(&format!("bad kind {}", trailer as u8)));
        };
        if !self.table.kind_fits(kind) {
            return Err(self.table.wrong_kind(self.bi, self.ei));
        }
        self.at = At {
            ks,
            ke,
            vs,
            ve,
            seqno: trailer >> 8,
            kind,
        };
        // The next entry starts where this one's value ends. A merge of many sources comes
        // back to this one only after stepping others, each in a block of its own (a
        // hash:16 scan of 100 steps sixteen blocks in turn): by then the next entry's lines
        // are here instead of a wait on memory. Past the block's last entry this asks for
        // the offset array, which is harmless.
        crate::util::prefetch(self.block.data().as_ptr().wrapping_add(ve));
        Ok(())
    }

    #[cold]
    fn entry_error(&self, why: &str) -> Error {
        entry_error(
            self.table.path(),
            self.table.block_offset(self.bi),
            self.ei,
            why,
        )
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
                        self.load(0, false)?;
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
                self.load(bi, true)?;
                let base = t.block_offset(bi);
                self.ei = if skip_key {
                    self.block.seek_after_user_key(&key, t.path(), base)?
                } else {
                    self.block.seek(&key, seq, t.path(), base)?
                };
                self.settle()
            }
            Direction::Backward => {
                // Find the first entry past the end bound, then step back one.
                let (key, skip_key) = match &self.range.end {
                    Bound::Unbounded => {
                        self.load(n - 1, false)?;
                        self.ei = self.block.len();
                        return self.step_back();
                    }
                    Bound::Included(k) => (k.clone(), true),
                    Bound::Excluded(k) => (k.clone(), false),
                };
                let bi = t.find_block(&key, if skip_key { 0 } else { u64::MAX });
                if bi >= n {
                    self.load(n - 1, false)?;
                    self.ei = self.block.len();
                    return self.step_back();
                }
                self.load(bi, true)?;
                let base = t.block_offset(bi);
                self.ei = if skip_key {
                    self.block.seek_after_user_key(&key, t.path(), base)?
                } else {
                    self.block.seek(&key, u64::MAX, t.path(), base)?
                };
                self.step_back()
            }
        }
    }

    /// Forward: moves past exhausted blocks, decodes, checks the end bound.
    fn settle(&mut self) -> Result<()> {
        while self.ei >= self.block.len() {
            if self.bi + 1 >= self.table.block_count() {
                self.valid = false;
                return Ok(());
            }
            self.load(self.bi + 1, false)?;
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
            self.load(self.bi - 1, false)?;
            self.ei = self.block.len();
        }
        self.decode()?;
        self.valid = self.in_start_bound();
        Ok(())
    }

    #[inline]
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
    pub fn key(&self) -> &[u8] {
        &self.block.data()[self.at.ks..self.at.ke]
    }

    #[inline]
    fn value(&self) -> &[u8] {
        &self.block.data()[self.at.vs..self.at.ve]
    }

    #[inline]
    pub fn advance(&mut self) -> Result<()> {
        match self.dir {
            Direction::Forward => {
                self.ei += 1;
                if self.ei < self.block.len() {
                    // Within the block: the next entry starts where this one's value ends.
                    self.decode_from(self.at.ve)?;
                    self.valid = self.in_end_bound();
                } else {
                    self.settle()?;
                }
            }
            Direction::Backward => self.step_back()?,
        }
        if !self.valid && self.rest.as_ref().is_some_and(|w| !w.done()) {
            self.next_table_if_done()?;
        }
        Ok(())
    }
}

/// The files of one level of a partition that a walk over a key range visits, handed out
/// in walk order as the walk reaches them: files with keys of the range (they are sorted
/// and do not overlap, so these are consecutive), less those written after the snapshot.
pub(crate) struct LevelWalk {
    part: Arc<PartitionFiles>,
    level: usize,
    snapshot: u64,
    dir: Direction,
    /// Forward: the index of the next file. Backward: one past it.
    next: usize,
}

impl LevelWalk {
    fn new(
        part: Arc<PartitionFiles>,
        level: usize,
        range: &KeyRange,
        snapshot: u64,
        dir: Direction,
    ) -> LevelWalk {
        let files = &part.levels[level];
        let next = match dir {
            // The first file not wholly below the range.
            Direction::Forward => files.partition_point(|f| range.starts_after(&f.largest)),
            // One past the last file not wholly above it.
            Direction::Backward => files.partition_point(|f| !range.ends_before(&f.smallest)),
        };
        LevelWalk {
            part,
            level,
            snapshot,
            dir,
            next,
        }
    }

    /// The next file of the walk, if any.
    fn next_file(&mut self, range: &KeyRange) -> Option<Arc<FileMeta>> {
        self.next_index(range)
            .map(|i| self.part.levels[self.level][i].clone())
    }

    /// The index in the level of the next file of the walk, if any.
    fn next_index(&mut self, range: &KeyRange) -> Option<usize> {
        let files = &self.part.levels[self.level];
        loop {
            let i = match self.dir {
                Direction::Forward => {
                    let i = self.next;
                    self.next += 1;
                    i
                }
                Direction::Backward => {
                    self.next = self.next.checked_sub(1)?;
                    self.next
                }
            };
            let f = files.get(i)?;
            // Sorted and disjoint: the first file past the range ends the walk.
            if !range.overlaps(&f.smallest, &f.largest) {
                self.next = match self.dir {
                    Direction::Forward => files.len(),
                    Direction::Backward => 0,
                };
                return None;
            }
            if f.min_seqno <= self.snapshot {
                return Some(i);
            }
        }
    }

    /// Whether the walk has handed out its last file (it may also turn out to have when
    /// the next file is past the range).
    fn done(&self) -> bool {
        match self.dir {
            Direction::Forward => self.next >= self.part.levels[self.level].len(),
            Direction::Backward => self.next == 0,
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

/// One merge input.
pub(crate) enum Source {
    Mem(Box<MemCursor>),
    Table(Box<TableCursor>),
}

impl Source {
    /// A table over `range`, positioned.
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

    /// Level `level` of partition `part` over `range` at `snapshot`, positioned; with the
    /// file the walk starts in (the one its seek lands in). `None` if no file of the level
    /// holds keys of the range visible at the snapshot. The first file is found by a binary
    /// search and the others are reached as the walk gets to them, so a seek costs the same
    /// in a level of five files or of fifty thousand.
    pub fn level<'a>(
        part: &'a Arc<PartitionFiles>,
        level: usize,
        range: &KeyRange,
        snapshot: u64,
        dir: Direction,
        fill_cache: bool,
    ) -> Result<Option<(Source, &'a Arc<FileMeta>)>> {
        if part.levels[level].is_empty() {
            return Ok(None);
        }
        let mut walk = LevelWalk::new(part.clone(), level, range, snapshot, dir);
        let Some(first) = walk.next_index(range).map(|i| &part.levels[level][i]) else {
            return Ok(None);
        };
        let c = TableCursor::run(
            first.table.clone(),
            Some(walk),
            range.clone(),
            dir,
            fill_cache,
        )?;
        Ok(Some((Source::Table(c), first)))
    }

    pub fn mem(m: Arc<MemTable>, range: &KeyRange, dir: Direction) -> Source {
        Source::Mem(Box::new(MemCursor::new(m, range.clone(), dir)))
    }

    #[inline]
    pub fn valid(&self) -> bool {
        match self {
            Source::Mem(m) => m.cur.is_some(),
            Source::Table(t) => t.valid,
        }
    }

    #[inline]
    pub fn key(&self) -> &[u8] {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(&[], |e| e.key.as_ref()),
            Source::Table(t) => t.key(),
        }
    }

    #[inline]
    pub fn seqno(&self) -> u64 {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(0, |e| e.seqno),
            Source::Table(t) => t.at.seqno,
        }
    }

    #[inline]
    pub fn kind(&self) -> Kind {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(Kind::Delete, |e| e.kind),
            Source::Table(t) => t.at.kind,
        }
    }

    #[inline]
    pub fn value(&self) -> &[u8] {
        match self {
            Source::Mem(m) => m.cur.as_ref().map_or(&[], |e| e.value.as_ref()),
            Source::Table(t) => t.value(),
        }
    }

    /// The key as owned bytes (a zero-copy slice of the block; a copy out of a memtable).
    pub fn key_bytes(&self) -> Bytes {
        match self {
            // Copied: a slice would keep the whole 32 KiB buffer the memtable copied its
            // entries out into alive.
            Source::Mem(m) => m
                .cur
                .as_ref()
                .map(|e| Bytes::copy_from_slice(&e.key))
                .unwrap_or_default(),
            Source::Table(t) => t.block.data().slice(t.at.ks..t.at.ke),
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
            Source::Table(t) => t.block.data().slice(t.at.vs..t.at.ve),
        }
    }

    /// What this source is, for messages: its table's file, or "a memtable".
    fn name(&self) -> String {
        match self {
            Source::Table(t) => t.table.path().display().to_string(),
            Source::Mem(_) => "a memtable".into(),
        }
    }

    /// The error for this source's entry, which is not after the entry before it in a
    /// merge: that one came from `before`.
    #[cold]
    fn out_of_order(&self, before: &Source) -> Error {
        let why = format!(
            "out of order (not after the entry before it in the merge, from {})",
            before.name()
        );
        match self {
            Source::Table(t) => t.entry_error(&why),
            // Compactions merge tables only; a memtable is kept in order by its list.
            Source::Mem(_) => Error::corruption("memtable", 0, format!("an entry {why}")),
        }
    }

    #[inline]
    pub fn advance(&mut self) -> Result<()> {
        match self {
            Source::Mem(m) => {
                m.cur = m.inner.next_entry();
                Ok(())
            }
            Source::Table(t) => t.advance(),
        }
    }
}

/// Checks that a forward merge's entries come in strictly increasing internal order, for
/// what writes them out (a compaction). A table whose block holds its entries out of order
/// (checksummed nonsense: a writer's bug, a crafted file) would otherwise be written on
/// into fresh tables, where nothing could tell it any more, or stopped by the output's own
/// check naming the output file. The error names the table and block of the entry that
/// broke the order and the table of the entry before it: one of the two is damaged. (It
/// can be the one before: when two tables hold a copy of the same entry, the merge skips
/// the second copy by stepping its source, and a damaged entry that sorts first takes the
/// copy's place and is stepped over unseen, so the disorder shows at the other table's
/// copy.)
#[derive(Default)]
pub(crate) struct OrderCheck {
    key: Vec<u8>,
    seqno: u64,
    started: bool,
    /// The merge source of the last entry passed.
    source: usize,
}

impl OrderCheck {
    /// The user key of the last entry passed.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Passes the merge's top entry, which must come after the last one passed. Returns
    /// true if its user key is a new one.
    #[inline]
    pub fn pass(&mut self, merge: &MergeCursor) -> Result<bool> {
        let t = merge.top();
        let (key, seqno) = (t.key(), t.seqno());
        let new_key = match self.started.then(|| cmp_keys(key, &self.key)) {
            None | Some(Ordering::Greater) => true,
            Some(Ordering::Equal) if seqno < self.seqno => false,
            Some(_) => return Err(t.out_of_order(&merge.sources[self.source])),
        };
        if new_key {
            self.key.clear();
            self.key.extend_from_slice(key);
            self.started = true;
        }
        self.seqno = seqno;
        self.source = merge.heap[0];
        Ok(new_key)
    }
}

/// K-way merge of sources in one direction, in internal order (for `Backward`, the exact
/// reverse). An entry present in several sources with the same (key, seqno) — a value both
/// migrated and lazily moved — comes out once.
pub(crate) struct MergeCursor {
    sources: Vec<Source>,
    /// The head of each source's current entry (by source index).
    heads: Vec<Head>,
    /// Indexes of valid sources, as a binary heap with the next entry on top.
    heap: Vec<usize>,
    dir: Direction,
}

/// A source's current entry as integers: its key's first sixteen bytes (big-endian,
/// zero-padded), the key's length, and the seqno. The heap compares these, so most
/// comparisons never reach into the sources; only keys longer than sixteen bytes that tie
/// on the first sixteen are compared in full.
#[derive(Clone, Copy, Default)]
struct Head {
    hi: u64,
    lo: u64,
    len: usize,
    seqno: u64,
}

impl Head {
    #[inline]
    fn of(s: &Source) -> Head {
        let k = s.key();
        Head {
            hi: key_prefix(k),
            lo: key_prefix(k.get(8..).unwrap_or_default()),
            len: k.len(),
            seqno: s.seqno(),
        }
    }
}

impl MergeCursor {
    pub fn new(sources: Vec<Source>, dir: Direction) -> MergeCursor {
        let mut m = MergeCursor {
            heads: sources.iter().map(Head::of).collect(),
            heap: (0..sources.len()).filter(|&i| sources[i].valid()).collect(),
            sources,
            dir,
        };
        for i in (0..m.heap.len() / 2).rev() {
            m.sift_down(i);
        }
        m
    }

    /// Key order of sources `a` and `b`'s entries.
    #[inline]
    fn cmp_keys_of(&self, a: usize, b: usize) -> Ordering {
        let (x, y) = (&self.heads[a], &self.heads[b]);
        match (x.hi, x.lo).cmp(&(y.hi, y.lo)) {
            // Equal first sixteen bytes: if either key ends within them, it is a prefix of
            // the other (the other's bytes up to sixteen are the zero padding), so the
            // shorter comes first; otherwise the rest decides.
            Ordering::Equal if x.len > 16 && y.len > 16 => {
                cmp_keys(&self.sources[a].key()[16..], &self.sources[b].key()[16..])
            }
            Ordering::Equal => x.len.cmp(&y.len),
            o => o,
        }
    }

    /// True if source `a`'s entry comes before source `b`'s.
    #[inline]
    fn before(&self, a: usize, b: usize) -> bool {
        let o = self
            .cmp_keys_of(a, b)
            .then(self.heads[b].seqno.cmp(&self.heads[a].seqno))
            .then(a.cmp(&b));
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

    /// True if another source sits on a copy of the top entry (same key and seqno). A copy
    /// is at the head of its source (heads are at or after the top, and the copy is in
    /// internal order with the rest of its source), and the path from the root to it holds
    /// only copies, so it is enough to look at the root's children.
    #[inline]
    fn top_has_copy(&self) -> bool {
        let Some(&top) = self.heap.first() else {
            return false;
        };
        self.heap[1..self.heap.len().min(3)].iter().any(|&c| {
            self.heads[c].seqno == self.heads[top].seqno
                && self.cmp_keys_of(c, top) == Ordering::Equal
        })
    }

    #[inline]
    pub fn valid(&self) -> bool {
        !self.heap.is_empty()
    }

    #[inline]
    pub fn top(&self) -> &Source {
        &self.sources[self.heap[0]]
    }

    /// Moves to the next entry, skipping copies of the one just left.
    #[inline]
    pub fn advance(&mut self) -> Result<()> {
        // A lone source (a scan of one sorted run, the common case of a range layout):
        // nothing to compare, no copies to skip.
        if let [top] = self.heap[..] {
            self.sources[top].advance()?;
            if !self.sources[top].valid() {
                self.heap.clear();
            }
            return Ok(());
        }
        self.advance_merged()
    }

    fn advance_merged(&mut self) -> Result<()> {
        loop {
            let Some(&top) = self.heap.first() else {
                return Ok(());
            };
            let copied = self.top_has_copy();
            self.sources[top].advance()?;
            if self.sources[top].valid() {
                // A lone source is never compared again (sources only drop out).
                if self.heap.len() > 1 {
                    self.heads[top] = Head::of(&self.sources[top]);
                }
            } else {
                let last = self.heap.len() - 1;
                self.heap.swap(0, last);
                self.heap.pop();
            }
            self.sift_down(0);
            // The copies are now the smallest entries: the new top is one of them.
            if !copied {
                return Ok(());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Key bounds a file record claims for its table, instead of the table's own.
    type Claimed<'a> = Option<(&'a str, &'a str)>;

    /// A partition whose level 1 is `tables` in this order, each with the key bounds its
    /// record claims (its own, unless given).
    fn level_of(tables: Vec<(Arc<Table>, Claimed)>) -> Arc<PartitionFiles> {
        let home = crate::version::TableHome::new(Arc::new(crate::fs::StdFs));
        let mut part = PartitionFiles::default();
        for (t, bounds) in tables {
            let mut f = FileMeta::new(t, 1, home.clone());
            if let Some((lo, hi)) = bounds {
                f.smallest = Bytes::copy_from_slice(lo.as_bytes());
                f.largest = Bytes::copy_from_slice(hi.as_bytes());
            }
            part.levels[1].push(Arc::new(f));
        }
        Arc::new(part)
    }

    /// A run whose records lie about their tables' keys (which the manifest and the tables'
    /// own checks cannot all rule out) may leave a cursor with no entry after it moved past
    /// a table whose entry it decoded: merging it is then an empty source, not an entry of
    /// the earlier table read against an empty block.
    #[test]
    fn a_run_cursor_that_finds_nothing_in_its_next_table_holds_no_stale_entry() {
        use crate::fs::StdFs;
        use crate::sst::Compression;
        let dir = tempfile::tempdir().unwrap();
        let table = |name: &str, prefix: &str, id: u64| {
            let entries: Vec<Entry> = (0..10u64)
                .map(|i| Entry {
                    key: Bytes::from(format!("{prefix}{i:03}")),
                    seqno: 1 + i,
                    kind: Kind::Value,
                    value: Bytes::from_static(b"v"),
                })
                .collect();
            let path = dir.path().join(name);
            crate::sst::tests::write_sized(&path, &entries, Compression::None, false, 4096);
            Arc::new(crate::sst::Table::open(&StdFs, &path, id, None).unwrap())
        };
        // "m..." first, then "a...": the range's start lies between them.
        let (m, a) = (table("000001.sst", "m", 1), table("000002.sst", "a", 2));
        let range = KeyRange {
            start: Bound::Included(Bytes::from_static(b"l")),
            end: Bound::Excluded(Bytes::from_static(b"l5")),
        };
        // Records claiming the range's start for both tables, "m..." first.
        let part = level_of(vec![(m, Some(("k", "l1"))), (a, Some(("l2", "l3")))]);
        let (c, _) = Source::level(&part, 1, &range, u64::MAX, Direction::Forward, true)
            .unwrap()
            .unwrap();
        assert!(!c.valid());
        assert_eq!(c.key(), b"");
        let merged = MergeCursor::new(vec![c], Direction::Forward);
        assert!(!merged.valid());
    }

    /// A level walk finds its first file by a binary search and reaches the others as it
    /// goes: over ranges bounded inside files, at their edges, in the gaps between them
    /// and not at all, in both directions, it yields exactly the keys in range of the files
    /// the snapshot can see (a file written after it is skipped whole), in order, and starts
    /// in the file its seek lands in.
    #[test]
    fn a_level_walk_visits_the_files_of_its_range_in_order() {
        use crate::fs::StdFs;
        use crate::sst::Compression;
        let dir = tempfile::tempdir().unwrap();
        // Ten tables of ten keys each: table j holds k{10j}0..k{10j+9}0 (even tens, so that
        // k..5 keys fall between keys and k{10j+9}5 between tables), seqnos from 100j + 1.
        let key = |n: u64| format!("k{n:03}0");
        let mut tables = Vec::new();
        for j in 0..10u64 {
            let entries: Vec<Entry> = (0..10u64)
                .map(|i| Entry {
                    key: Bytes::from(key(10 * j + i)),
                    seqno: 100 * j + i + 1,
                    kind: Kind::Value,
                    value: Bytes::from_static(b"v"),
                })
                .collect();
            let path = dir.path().join(format!("{:06}.sst", j + 1));
            crate::sst::tests::write_sized(&path, &entries, Compression::None, false, 4096);
            let t = Arc::new(crate::sst::Table::open(&StdFs, &path, j + 1, None).unwrap());
            tables.push((t, None));
        }
        let part = level_of(tables);
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let bounds = |k: &str| {
            [
                Bound::Included(b(k)),
                Bound::Excluded(b(k)),
                Bound::Unbounded,
            ]
        };
        let edges = [
            "k0000", "k0095", "k0100", "k0190", "k0255", "k0990", "k1000", "a", "z",
        ];
        for snapshot in [u64::MAX, 250, 0] {
            for lo in edges {
                for hi in edges {
                    for (start, end) in bounds(lo)
                        .into_iter()
                        .flat_map(|s| bounds(hi).into_iter().map(move |e| (s.clone(), e)))
                    {
                        let range = KeyRange { start, end };
                        let want: Vec<String> = (0..100u64)
                            .filter(|n| (n / 10) * 100 < snapshot) // a table's first seqno is 100j + 1
                            .map(key)
                            .filter(|k| range.contains(k.as_bytes()))
                            .collect();
                        for dir in [Direction::Forward, Direction::Backward] {
                            let mut got = Vec::new();
                            let mut first = None;
                            if let Some((mut c, f)) =
                                Source::level(&part, 1, &range, snapshot, dir, true).unwrap()
                            {
                                first = Some(f.number);
                                while c.valid() {
                                    got.push(String::from_utf8(c.key().to_vec()).unwrap());
                                    c.advance().unwrap();
                                }
                            }
                            let mut want = want.clone();
                            if dir == Direction::Backward {
                                want.reverse();
                            }
                            let what = format!("{range:?} {dir:?} at {snapshot}");
                            assert_eq!(got, want, "{what}");
                            // The walk starts in the file of its first key (or, when none of
                            // the range's keys is visible, nowhere or in a file that has none).
                            if let Some(k) = want.first() {
                                let n: u64 = k[1..4].parse().unwrap();
                                assert_eq!(first, Some(n / 10 + 1), "{what}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// A compaction's inputs share their read-ahead: 64 inputs of ~60 KB each read 32 KiB
    /// at a time (64 KiB each, the default, would hold each table whole), and their merge
    /// still yields every entry.
    #[test]
    fn many_inputs_read_ahead_less_each() {
        use crate::sst::Compression;
        let dir = tempfile::tempdir().unwrap();
        let home = crate::version::TableHome::new(Arc::new(crate::fs::StdFs));
        let mut files = Vec::new();
        for j in 0..64u64 {
            let entries: Vec<Entry> = (0..600u32)
                .map(|i| Entry {
                    key: Bytes::from(format!("t{j:02}-{i:06}")),
                    seqno: 1 + i as u64,
                    kind: Kind::Value,
                    value: Bytes::from("v".repeat(90)),
                })
                .collect();
            let p = dir.path().join(format!("{:06}.sst", 100 + j));
            crate::sst::tests::write_sized(&p, &entries, Compression::None, false, 4096);
            let t = crate::sst::Table::open(&crate::fs::StdFs, &p, 100 + j, None).unwrap();
            assert!(t.file_size() > 48 << 10, "{} bytes", t.file_size());
            files.push(Arc::new(FileMeta::new(Arc::new(t), 1, home.clone())));
        }
        let sources = crate::iter::file_sources(&files).unwrap();
        assert_eq!(sources.len(), 64);
        for s in &sources {
            let Source::Table(c) = s else {
                panic!("a table source")
            };
            assert!(c.ahead.held() <= 32 << 10, "{} bytes held", c.ahead.held());
        }
        let mut merge = MergeCursor::new(sources, Direction::Forward);
        let mut n = 0;
        while merge.valid() {
            n += 1;
            merge.advance().unwrap();
        }
        assert_eq!(n, 64 * 600);
    }

    /// A block much longer than the read-ahead run (a large value) is read whole, and its
    /// buffer is not kept for the rest of the walk: the runs after it read into a buffer of
    /// their own size.
    #[test]
    fn a_large_block_does_not_grow_the_read_ahead_for_good() {
        use crate::sst::Compression;
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..801u32)
            .map(|i| Entry {
                key: Bytes::from(format!("k{i:06}")),
                seqno: 1 + i as u64,
                kind: Kind::Value,
                value: Bytes::from(if i == 400 {
                    "L".repeat(1 << 20)
                } else {
                    "v".repeat(100)
                }),
            })
            .collect();
        let p = dir.path().join("000007.sst");
        crate::sst::tests::write_sized(&p, &entries, Compression::None, false, 4096);
        let t = crate::sst::Table::open(&crate::fs::StdFs, &p, 7, None).unwrap();
        let mut c = TableCursor::ahead(Arc::new(t), KeyRange::all(), 8 << 10).unwrap();
        let (mut n, mut most) = (0, 0);
        while c.valid {
            assert_eq!(c.key(), &entries[n].key[..]);
            most = most.max(c.ahead.capacity());
            if n > 500 {
                assert!(
                    c.ahead.capacity() <= 16 << 10,
                    "{} bytes kept at {n}",
                    c.ahead.capacity()
                );
            }
            n += 1;
            c.advance().unwrap();
        }
        assert_eq!(n, entries.len());
        assert!(most >= 1 << 20, "the large block was read whole: {most}");
    }

    /// A walk that leaves the block cache alone (a compaction's) reads a table a run of
    /// blocks at a time and sees every entry of a table many runs long. A byte flipped in a
    /// block several runs in is a checksum error naming the table and that block's offset.
    #[test]
    fn an_uncached_walk_reads_ahead() {
        use crate::cache::BlockCache;
        use crate::fs::StdFs;
        use crate::sst::reader::READAHEAD;
        use crate::sst::Compression;

        let dir = tempfile::tempdir().unwrap();
        let make = |prefix: &str, n: u32| -> Vec<Entry> {
            (0..n)
                .map(|i| Entry {
                    key: Bytes::from(format!("{prefix}{i:08}")),
                    seqno: 1 + i as u64,
                    kind: Kind::Value,
                    value: Bytes::from(format!("{prefix}-value{i}-{}", "v".repeat(80))),
                })
                .collect()
        };
        let write = |path: &std::path::Path, entries: &[Entry]| {
            crate::sst::tests::write_sized(path, entries, Compression::None, false, 4096);
        };
        let path = dir.path().join("000011.sst");
        let entries = make("key", 20_000);
        write(&path, &entries);
        let cache = Arc::new(BlockCache::new(1 << 20, 4096));
        let open = |p: &std::path::Path, id: u64| {
            crate::sst::Table::open(&StdFs, p, id, Some(cache.clone())).map(Arc::new)
        };
        let t = open(&path, 11).unwrap();
        assert!(t.file_size() > 8 * READAHEAD, "{} bytes", t.file_size());
        // Walks `c` to its end, checking each entry against `want` in order.
        fn drain(mut c: Box<TableCursor>, want: &[Entry]) -> Result<usize> {
            let mut n = 0;
            while c.valid {
                let e = &want[n];
                assert_eq!(
                    (c.key(), c.at.seqno, c.value()),
                    (&e.key[..], e.seqno, &e.value[..])
                );
                n += 1;
                c.advance()?;
            }
            Ok(n)
        }
        let walk = |t: &Arc<crate::sst::Table>| -> Result<usize> {
            let c = TableCursor::new(t.clone(), KeyRange::all(), Direction::Forward, false)?;
            drain(c, &entries)
        };
        assert_eq!(walk(&t).unwrap(), entries.len());
        // A cursor given a smaller run holds no more than that (at least a block) and
        // sees the same entries.
        let mut c = TableCursor::ahead(t.clone(), KeyRange::all(), 8 << 10).unwrap();
        let mut n = 0;
        while c.valid {
            assert!(c.ahead.held() <= 8 << 10, "{} bytes held", c.ahead.held());
            assert_eq!(c.key(), &entries[n].key[..]);
            n += 1;
            c.advance().unwrap();
        }
        assert_eq!(n, entries.len());
        let c = TableCursor::ahead(t.clone(), KeyRange::all(), 1).unwrap();
        assert!(c.ahead.held() >= 1 && c.ahead.held() <= 4096 + 64);
        assert_eq!(drain(c, &entries).unwrap(), entries.len());

        // Damage a block four runs in: the walk stops there, naming it.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = 4 * READAHEAD + 100;
        bytes[at as usize] ^= 0x40;
        let bad = dir.path().join("000012.sst");
        std::fs::write(&bad, &bytes).unwrap();
        let t = open(&bad, 12).unwrap();
        let block = (0..t.block_count())
            .rfind(|&i| t.block_offset(i) <= at)
            .unwrap();
        match walk(&t) {
            Err(Error::ChecksumMismatch { file, offset, .. }) => {
                assert_eq!(file, bad);
                assert_eq!(offset, t.block_offset(block));
            }
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }

        // A level: tables each smaller than a run, walked by one cursor that reads each
        // from offset 0 into the same buffer. Every table's own entries, in order.
        let mut tables = Vec::new();
        let mut all: Vec<Entry> = Vec::new();
        for (j, prefix) in ["a", "b", "c"].iter().enumerate() {
            let es = make(prefix, 200);
            let p = dir.path().join(format!("00002{j}.sst"));
            write(&p, &es);
            let t = open(&p, 20 + j as u64).unwrap();
            assert!(t.file_size() < READAHEAD, "{} bytes", t.file_size());
            tables.push(t);
            all.extend(es);
        }
        let part = level_of(tables.into_iter().map(|t| (t, None)).collect());
        let c = match Source::level(
            &part,
            1,
            &KeyRange::all(),
            u64::MAX,
            Direction::Forward,
            false,
        ) {
            Ok(Some((Source::Table(c), _))) => c,
            _ => panic!("no cursor over the level"),
        };
        assert_eq!(drain(c, &all).unwrap(), all.len());
    }

    /// Sources holding overlapping sets of entries, some in two or three of them (a value both
    /// migrated and lazily moved), with keys around the boundaries of the heap's integer
    /// comparison: the merge yields each (key, seqno) once, in internal order, in both
    /// directions.
    #[test]
    fn merge_yields_each_copy_once_in_both_directions() {
        let keys = crate::types::tricky_keys();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..500 {
            let sources = 1 + next(5) as usize;
            let mems: Vec<Arc<MemTable>> = (0..sources)
                .map(|_| Arc::new(MemTable::new(1, 1 << 20)))
                .collect();
            let mut want = std::collections::BTreeSet::new();
            for _ in 0..next(60) {
                let key = keys[next(keys.len() as u64) as usize].clone();
                let seqno = 1 + next(5);
                // The same entry lands in one to three sources.
                for _ in 0..1 + next(3) {
                    let m = &mems[next(sources as u64) as usize];
                    m.insert(&key, seqno, Kind::Value, format!("v{seqno}").as_bytes());
                }
                want.insert((key, std::cmp::Reverse(seqno)));
            }
            let want: Vec<(Vec<u8>, u64)> = want.into_iter().map(|(k, s)| (k, s.0)).collect();
            for dir in [Direction::Forward, Direction::Backward] {
                let srcs = mems
                    .iter()
                    .map(|m| Source::mem(m.clone(), &KeyRange::all(), dir))
                    .filter(|s| s.valid())
                    .collect();
                let mut c = MergeCursor::new(srcs, dir);
                let mut got = Vec::new();
                while c.valid() {
                    got.push((c.top().key().to_vec(), c.top().seqno()));
                    // A merge that does not end (a source run dry left on the heap) fails
                    // here rather than hanging the suite.
                    assert!(got.len() <= want.len(), "round {round}, {dir:?}: no end");
                    c.advance().unwrap();
                }
                if dir == Direction::Backward {
                    got.reverse();
                }
                assert_eq!(got, want, "round {round}, {dir:?}");
            }
        }
    }
}
