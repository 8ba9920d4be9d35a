//! Iteration: sources (memtables, tables, levels), a k-way merge in one direction, and the
//! user-facing range iterator.
//!
//! Ordering rule: the merge yields entries in internal order (key, then seqno) whatever
//! source they come from, and the user iterator picks, per key, the entry with the highest
//! seqno at or below its snapshot. Which source or level an entry came from never decides
//! which version wins, so data placed out of position order (lazy moves, migration outputs)
//! reads correctly.
//!
//! Double-ended iteration uses two independent merges — one per direction, each over its
//! own source iterators — that stop where they meet, so interleaving `next` and
//! `next_back` never sees a key twice or loses one.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::Result;
use crate::memtable::MemTable;
use crate::sst::TableIter;
use crate::types::{Entry, Kind};
use crate::version::FileMeta;

/// A boxed source of entries in one direction.
pub type Source = Box<dyn Iterator<Item = Result<Entry>> + Send>;

/// Direction of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Range bounds over user keys, owned.
#[derive(Clone, Debug)]
pub struct KeyRange {
    pub start: Bound<Bytes>,
    pub end: Bound<Bytes>,
}

impl KeyRange {
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let lo = match &self.start {
            Bound::Included(s) => key >= s.as_ref(),
            Bound::Excluded(s) => key > s.as_ref(),
            Bound::Unbounded => true,
        };
        let hi = match &self.end {
            Bound::Included(e) => key <= e.as_ref(),
            Bound::Excluded(e) => key < e.as_ref(),
            Bound::Unbounded => true,
        };
        lo && hi
    }

    /// True if a file spanning `[smallest, largest]` may hold keys in the range.
    pub fn overlaps(&self, smallest: &[u8], largest: &[u8]) -> bool {
        let below = match &self.end {
            Bound::Included(e) => smallest > e.as_ref(),
            Bound::Excluded(e) => smallest >= e.as_ref(),
            Bound::Unbounded => false,
        };
        let above = match &self.start {
            Bound::Included(s) => largest < s.as_ref(),
            Bound::Excluded(s) => largest <= s.as_ref(),
            Bound::Unbounded => false,
        };
        !below && !above
    }

    /// (inclusive low, inclusive high) key hints for partition pruning.
    pub fn hint(&self) -> (Option<&[u8]>, Option<&[u8]>) {
        let lo = match &self.start {
            Bound::Included(s) | Bound::Excluded(s) => Some(s.as_ref()),
            Bound::Unbounded => None,
        };
        let hi = match &self.end {
            Bound::Included(e) | Bound::Excluded(e) => Some(e.as_ref()),
            Bound::Unbounded => None,
        };
        (lo, hi)
    }

    fn borrowed(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        fn b(x: &Bound<Bytes>) -> Bound<&[u8]> {
            match x {
                Bound::Included(k) => Bound::Included(k.as_ref()),
                Bound::Excluded(k) => Bound::Excluded(k.as_ref()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        (b(&self.start), b(&self.end))
    }
}

/// Walks a memtable in chunks, so the iterator owns only an `Arc` of it.
pub struct MemIter {
    mem: Arc<MemTable>,
    range: KeyRange,
    dir: Direction,
    buf: Vec<Entry>,
    pos: usize,
    last: Option<(Bytes, u64)>,
    done: bool,
}

const MEM_CHUNK: usize = 128;

impl MemIter {
    pub fn new(mem: Arc<MemTable>, range: KeyRange, dir: Direction) -> MemIter {
        MemIter {
            mem,
            range,
            dir,
            buf: Vec::new(),
            pos: 0,
            last: None,
            done: false,
        }
    }

    fn refill(&mut self) {
        self.buf.clear();
        self.pos = 0;
        let (start, end) = self.range.borrowed();
        let after = self.last.as_ref().map(|(k, s)| (k.as_ref(), *s));
        match self.dir {
            Direction::Forward => {
                self.mem
                    .chunk_forward(after, start, end, MEM_CHUNK, &mut self.buf)
            }
            Direction::Backward => {
                self.mem
                    .chunk_backward(after, start, end, MEM_CHUNK, &mut self.buf)
            }
        }
        if self.buf.len() < MEM_CHUNK {
            self.done = true;
        }
    }
}

impl Iterator for MemIter {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        if self.pos >= self.buf.len() {
            if self.done {
                return None;
            }
            self.refill();
            if self.buf.is_empty() {
                return None;
            }
        }
        let e = self.buf[self.pos].clone();
        self.pos += 1;
        self.last = Some((e.key.clone(), e.seqno));
        Some(Ok(e))
    }
}

/// Concatenates the non-overlapping files of one level (L1+) that overlap a range, opening
/// each table only when the walk reaches it.
pub struct LevelIter {
    files: Vec<Arc<FileMeta>>,
    range: KeyRange,
    dir: Direction,
    next_file: usize,
    cur: Option<TableIter>,
}

impl LevelIter {
    /// `files` must be sorted by key and non-overlapping.
    pub fn new(files: Vec<Arc<FileMeta>>, range: KeyRange, dir: Direction) -> LevelIter {
        let mut files: Vec<_> = files
            .into_iter()
            .filter(|f| range.overlaps(&f.smallest, &f.largest))
            .collect();
        if dir == Direction::Backward {
            files.reverse();
        }
        LevelIter {
            files,
            range,
            dir,
            next_file: 0,
            cur: None,
        }
    }
}

impl Iterator for LevelIter {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(it) = &mut self.cur {
                let r = match self.dir {
                    Direction::Forward => it.next(),
                    Direction::Backward => it.next_back(),
                };
                if r.is_some() {
                    return r;
                }
                self.cur = None;
            }
            let f = self.files.get(self.next_file)?;
            self.next_file += 1;
            self.cur = Some(TableIter::new(
                f.table.clone(),
                self.range.start.clone(),
                self.range.end.clone(),
            ));
        }
    }
}

/// A table iterator in one direction.
pub fn table_source(f: &Arc<FileMeta>, range: &KeyRange, dir: Direction) -> Source {
    let it = TableIter::new(f.table.clone(), range.start.clone(), range.end.clone());
    match dir {
        Direction::Forward => Box::new(it),
        Direction::Backward => Box::new(it.rev()),
    }
}

struct Head {
    entry: Entry,
    src: usize,
    dir: Direction,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    /// BinaryHeap is a max-heap: the head that should come out first compares greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        let o = self
            .entry
            .cmp_internal(&other.entry)
            .then(other.src.cmp(&self.src));
        match self.dir {
            Direction::Forward => o.reverse(),
            Direction::Backward => o,
        }
    }
}

/// K-way merge of sources in one direction. Identical (key, seqno) entries from different
/// sources (a value both migrated and lazily moved) come out once.
pub struct MergeIter {
    sources: Vec<Source>,
    heap: BinaryHeap<Head>,
    dir: Direction,
    started: bool,
    last: Option<(Bytes, u64)>,
    failed: bool,
}

impl MergeIter {
    pub fn new(sources: Vec<Source>, dir: Direction) -> MergeIter {
        MergeIter {
            heap: BinaryHeap::with_capacity(sources.len()),
            sources,
            dir,
            started: false,
            last: None,
            failed: false,
        }
    }

    fn pull(&mut self, src: usize) -> Result<()> {
        if let Some(r) = self.sources[src].next() {
            let entry = r?;
            self.heap.push(Head {
                entry,
                src,
                dir: self.dir,
            });
        }
        Ok(())
    }

    fn next_inner(&mut self) -> Result<Option<Entry>> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                self.pull(i)?;
            }
        }
        loop {
            let Some(top) = self.heap.pop() else {
                return Ok(None);
            };
            let src = top.src;
            let e = top.entry;
            self.pull(src)?;
            if let Some((k, s)) = &self.last {
                if *s == e.seqno && *k == e.key {
                    continue;
                }
            }
            self.last = Some((e.key.clone(), e.seqno));
            return Ok(Some(e));
        }
    }
}

impl Iterator for MergeIter {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        if self.failed {
            return None;
        }
        match self.next_inner() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Builds the sources of one direction on demand.
pub type SourceFactory = Box<dyn Fn(Direction) -> Vec<Source> + Send + Sync>;

/// One direction of the user iterator: resolves each key to its visible value.
struct Side {
    merge: MergeIter,
    pending: Option<Entry>,
}

impl Side {
    /// The next visible (key, value) and, separately, every key it stepped over, via
    /// `stepped`: the last user key this side has consumed entries of.
    fn next_key(
        &mut self,
        snapshot: u64,
        dir: Direction,
    ) -> Result<Option<(Entry, Option<Entry>)>> {
        // Returns (first entry of the key group, visible entry if any).
        let first = match self.pending.take() {
            Some(e) => e,
            None => match self.merge.next() {
                Some(r) => r?,
                None => return Ok(None),
            },
        };
        let mut visible: Option<Entry> = None;
        let consider = |e: &Entry, visible: &mut Option<Entry>| {
            if e.seqno <= snapshot && e.kind != Kind::Forward {
                match dir {
                    // Newest first: the first visible entry wins.
                    Direction::Forward => {
                        if visible.is_none() {
                            *visible = Some(e.clone());
                        }
                    }
                    // Oldest first: the last visible entry wins.
                    Direction::Backward => *visible = Some(e.clone()),
                }
            }
        };
        consider(&first, &mut visible);
        loop {
            match self.merge.next() {
                Some(r) => {
                    let e = r?;
                    if e.key == first.key {
                        consider(&e, &mut visible);
                    } else {
                        self.pending = Some(e);
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(Some((first, visible)))
    }
}

/// The range iterator returned by [`crate::Db::range`] and [`crate::Snapshot::range`].
/// Yields `(key, value)` in key order; double-ended.
pub struct DbIter {
    factory: SourceFactory,
    snapshot: u64,
    front: Option<Side>,
    back: Option<Side>,
    /// Last user key the front side consumed, and the back side.
    front_key: Option<Bytes>,
    back_key: Option<Bytes>,
    done: bool,
    _hold: Option<Box<dyn Send + Sync>>,
}

impl DbIter {
    pub(crate) fn new(
        factory: SourceFactory,
        snapshot: u64,
        hold: Option<Box<dyn Send + Sync>>,
    ) -> DbIter {
        DbIter {
            factory,
            snapshot,
            front: None,
            back: None,
            front_key: None,
            back_key: None,
            done: false,
            _hold: hold,
        }
    }

    fn step(&mut self, dir: Direction) -> Result<Option<(Bytes, Bytes)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let side = match dir {
                Direction::Forward => &mut self.front,
                Direction::Backward => &mut self.back,
            };
            if side.is_none() {
                *side = Some(Side {
                    merge: MergeIter::new((self.factory)(dir), dir),
                    pending: None,
                });
            }
            let side = side.as_mut().expect("side was just created");
            let Some((first, visible)) = side.next_key(self.snapshot, dir)? else {
                self.done = true;
                return Ok(None);
            };
            // Stop where the other direction has already been.
            let crossed = match dir {
                Direction::Forward => self.back_key.as_ref().is_some_and(|b| first.key >= *b),
                Direction::Backward => self.front_key.as_ref().is_some_and(|f| first.key <= *f),
            };
            if crossed {
                self.done = true;
                return Ok(None);
            }
            match dir {
                Direction::Forward => self.front_key = Some(first.key.clone()),
                Direction::Backward => self.back_key = Some(first.key.clone()),
            }
            if let Some(v) = visible {
                if v.kind == Kind::Value {
                    return Ok(Some((v.key, v.value)));
                }
            }
        }
    }
}

impl Iterator for DbIter {
    type Item = Result<(Bytes, Bytes)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.step(Direction::Forward) {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl DoubleEndedIterator for DbIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self.step(Direction::Backward) {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Builds the sources for a range over memtables and a file set: every memtable, and for
/// every live layout version, every partition that may hold keys in the range (L0 files one
/// by one, deeper levels as concatenations).
pub fn build_sources(
    mems: &[Arc<MemTable>],
    files: &crate::version::FileSet,
    range: &KeyRange,
    snapshot: u64,
    dir: Direction,
) -> Vec<Source> {
    let mut out: Vec<Source> = Vec::new();
    for m in mems {
        if m.min_seqno() <= snapshot && !m.is_empty() {
            out.push(Box::new(MemIter::new(m.clone(), range.clone(), dir)));
        }
    }
    let (lo, hi) = range.hint();
    for layout in files.layouts.values() {
        for p in layout.func.partitions_for_range(lo, hi) {
            let Some(part) = layout.parts.get(p as usize) else {
                continue;
            };
            for f in &part.levels[0] {
                if f.min_seqno <= snapshot && range.overlaps(&f.smallest, &f.largest) {
                    out.push(table_source(f, range, dir));
                }
            }
            for level in part.levels.iter().skip(1) {
                let files: Vec<_> = level
                    .iter()
                    .filter(|f| f.min_seqno <= snapshot && range.overlaps(&f.smallest, &f.largest))
                    .cloned()
                    .collect();
                match files.len() {
                    0 => {}
                    1 => out.push(table_source(&files[0], range, dir)),
                    _ => out.push(Box::new(LevelIter::new(files, range.clone(), dir))),
                }
            }
        }
    }
    out
}
