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

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::cursor::{MergeCursor, Source};
use crate::error::{Error, Result};
use crate::load::ReadTally;
use crate::memtable::MemTable;
use crate::sst::files::TableFiles;
use crate::types::{Entry, Kind};

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
        !self.ends_before(smallest) && !self.starts_after(largest)
    }

    /// True if the range ends before `key` (a file starting there lies above it).
    pub fn ends_before(&self, key: &[u8]) -> bool {
        match &self.end {
            Bound::Included(e) => key > e.as_ref(),
            Bound::Excluded(e) => key >= e.as_ref(),
            Bound::Unbounded => false,
        }
    }

    /// True if the range starts after `key` (a file ending there lies below it).
    pub fn starts_after(&self, key: &[u8]) -> bool {
        match &self.start {
            Bound::Included(s) => key < s.as_ref(),
            Bound::Excluded(s) => key <= s.as_ref(),
            Bound::Unbounded => false,
        }
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
    chunk: usize,
}

/// First and largest chunk: short scans (a hundred keys over several sources, of which the
/// memtable often holds a few) walk little of the skiplist; long ones grow to large chunks.
const MEM_CHUNK_FIRST: usize = 8;
const MEM_CHUNK_MAX: usize = 512;

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
            chunk: MEM_CHUNK_FIRST,
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
                    .chunk_forward(after, start, end, self.chunk, &mut self.buf)
            }
            Direction::Backward => {
                self.mem
                    .chunk_backward(after, start, end, self.chunk, &mut self.buf)
            }
        }
        if self.buf.len() < self.chunk {
            self.done = true;
        }
        self.chunk = (self.chunk * 2).min(MEM_CHUNK_MAX);
    }
}

impl MemIter {
    pub fn next_entry(&mut self) -> Option<Entry> {
        if self.pos >= self.buf.len() {
            if self.done {
                return None;
            }
            self.refill();
            if self.buf.is_empty() {
                return None;
            }
        }
        // Moved out, not cloned: the slot is never read again (no reference count touched).
        let e = std::mem::replace(
            &mut self.buf[self.pos],
            Entry {
                key: Bytes::new(),
                seqno: 0,
                kind: Kind::Delete,
                value: Bytes::new(),
            },
        );
        self.pos += 1;
        if self.pos == self.buf.len() {
            // Only the chunk boundary needs to be remembered for the next refill.
            self.last = Some((e.key.clone(), e.seqno));
        }
        Some(e)
    }
}

/// Builds merge sources on demand, for one direction.
pub type SourceFactory = Box<dyn Fn(Direction) -> Result<Vec<Source>> + Send + Sync>;

/// Entries of a merge in one direction, as owned [`Entry`] values (for inspection,
/// partition scans and pointer streams; hot paths use the cursor directly).
pub struct MergeIter {
    cursor: Result<MergeCursor>,
    started: bool,
    failed: bool,
}

impl MergeIter {
    pub(crate) fn new(sources: Result<Vec<Source>>, dir: Direction) -> MergeIter {
        MergeIter {
            cursor: sources.map(|s| MergeCursor::new(s, dir)),
            started: false,
            failed: false,
        }
    }
}

impl Iterator for MergeIter {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        if self.failed {
            return None;
        }
        let c = match &mut self.cursor {
            Ok(c) => c,
            Err(_) => {
                self.failed = true;
                let e = std::mem::replace(&mut self.cursor, Err(crate::Error::Closed));
                return e.err().map(Err);
            }
        };
        if self.started {
            if let Err(e) = c.advance() {
                self.failed = true;
                return Some(Err(e));
            }
        }
        self.started = true;
        c.valid().then(|| c.entry()).map(Ok)
    }
}

/// One direction of the user iterator: a merge, and the user key it last consumed.
struct Side {
    merge: MergeCursor,
    last_key: Vec<u8>,
    has_last: bool,
    /// Forward only: the merge still sits on the entry last returned (so it could be lent
    /// without a copy); the older versions of `last_key` are to be skipped first.
    skip: bool,
}

/// Where the entry a step resolved to can be read.
enum Resolved {
    /// At the top of the forward merge (`Side::merge.top()`).
    Top,
    /// Held as owned bytes (a backward step walks past the entry it returns).
    Held(Bytes, Bytes),
}

/// The range iterator returned by [`crate::Db::range`] and [`crate::Snapshot::range`].
/// Yields `(key, value)` in key order; double-ended.
///
/// As an [`Iterator`] it hands out owned [`Bytes`] (zero-copy slices of table blocks, or
/// copies of memtable entries). [`next_ref`](DbIter::next_ref) and
/// [`next_back_ref`](DbIter::next_back_ref) lend the same pairs instead, valid until the
/// next call: a forward scan that only looks at each pair touches no reference count and
/// allocates nothing per entry. Both styles can be mixed on one iterator.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = sluice::Db::open(dir.path(), sluice::Options::default()).unwrap();
/// db.put("acct:1", "10")?;
/// db.put("acct:2", "32")?;
/// let mut it = db.range("acct:".."acct;");
/// let mut total = 0u64;
/// while let Some(pair) = it.next_ref() {
///     let (_key, value) = pair?;
///     total += std::str::from_utf8(value).unwrap().parse::<u64>().unwrap();
/// }
/// assert_eq!(total, 42);
/// # Ok::<(), sluice::Error>(())
/// ```
pub struct DbIter {
    factory: SourceFactory,
    snapshot: u64,
    front: Option<Side>,
    back: Option<Side>,
    /// The pair a backward step last lent out.
    held: (Bytes, Bytes),
    done: bool,
    _hold: Option<Box<dyn Send + Sync>>,
    /// The database's table files: once they are closed (the database was), the iterator
    /// answers [`Error::Closed`], as every read of a closed database does.
    files: Arc<TableFiles>,
    /// The keys yielded, per partition (sampled: see [`crate::load::SCAN_SAMPLE`]): the scan
    /// is one read event in each, recorded when it ends or is dropped. Not in chunks as it
    /// goes: one scan's keys are one reader's, and a long scan cut into many events would
    /// name its partition hot on its own.
    reads: ReadTally,
}

impl DbIter {
    pub(crate) fn new(
        factory: SourceFactory,
        snapshot: u64,
        hold: Option<Box<dyn Send + Sync>>,
        files: Arc<TableFiles>,
        reads: ReadTally,
    ) -> DbIter {
        DbIter {
            factory,
            snapshot,
            front: None,
            back: None,
            held: (Bytes::new(), Bytes::new()),
            done: false,
            _hold: hold,
            files,
            reads,
        }
    }

    /// Resolves the next user key in direction `dir` to its visible value, skipping keys
    /// whose visible entry is a tombstone, and stopping where the other side has been.
    fn step(&mut self, dir: Direction) -> Result<Option<Resolved>> {
        if self.done {
            return Ok(None);
        }
        let slot = match dir {
            Direction::Forward => &mut self.front,
            Direction::Backward => &mut self.back,
        };
        if slot.is_none() {
            *slot = Some(Side {
                merge: MergeCursor::new((self.factory)(dir)?, dir),
                last_key: Vec::new(),
                has_last: false,
                skip: false,
            });
        }
        let (side, other) = match dir {
            Direction::Forward => (self.front.as_mut(), self.back.as_ref()),
            Direction::Backward => (self.back.as_mut(), self.front.as_ref()),
        };
        let side = side.expect("side was just created");
        let snapshot = self.snapshot;
        loop {
            if std::mem::take(&mut side.skip) {
                // The merge still sits on the entry last resolved: step off it, then past
                // the key's older versions.
                side.merge.advance()?;
                while side.merge.valid()
                    && crate::types::eq_keys(side.merge.top().key(), &side.last_key)
                {
                    side.merge.advance()?;
                }
            }
            if !side.merge.valid() {
                self.done = true;
                return Ok(None);
            }
            // A new user key: stop if the other direction already consumed it.
            if let Some(o) = other.filter(|o| o.has_last) {
                let k = side.merge.top().key();
                let crossed = match dir {
                    Direction::Forward => k >= o.last_key.as_slice(),
                    Direction::Backward => k <= o.last_key.as_slice(),
                };
                if crossed {
                    self.done = true;
                    return Ok(None);
                }
            }
            side.last_key.clear();
            side.last_key.extend_from_slice(side.merge.top().key());
            side.has_last = true;
            // Walk the entries of this key to the visible one. Forward sees the newest first:
            // the first visible entry wins, and the merge stays on it. Backward sees the
            // oldest first: the last visible entry wins, so it is walked past and held.
            let mut visible: Option<(Kind, Option<(Bytes, Bytes)>)> = None;
            loop {
                let t = side.merge.top();
                let kind = t.kind();
                if t.seqno() <= snapshot && kind != Kind::Forward {
                    if dir == Direction::Forward {
                        side.skip = true;
                        if kind == Kind::Value {
                            return Ok(Some(Resolved::Top));
                        }
                        break;
                    }
                    let kv = (kind == Kind::Value).then(|| (t.key_bytes(), t.value_bytes()));
                    visible = Some((kind, kv));
                }
                side.merge.advance()?;
                if !side.merge.valid()
                    || !crate::types::eq_keys(side.merge.top().key(), &side.last_key)
                {
                    break;
                }
            }
            if let Some((Kind::Value, Some((k, v)))) = visible {
                return Ok(Some(Resolved::Held(k, v)));
            }
        }
    }

    /// Steps in `dir`; an error ends the iteration (it is the last item).
    ///
    /// Inlined, with [`next_ref`](Self::next_ref) and the other entry points into the
    /// caller's loop (another crate's, too): returned through memory on every step, the
    /// step's result (a `Bytes` pair or an error) and the pair made of it cost a 100-entry
    /// scan of cached blocks ~25% (BENCHMARKS.md §2, "Scans at stop 50").
    #[inline]
    fn step_or_stop(&mut self, dir: Direction) -> Option<Result<Resolved>> {
        if self.files.is_closed() && !self.done {
            self.done = true;
            return Some(Err(Error::Closed));
        }
        match self.step(dir) {
            Ok(Some(r)) => {
                if !self.reads.skip_scanned() {
                    self.sample(&r);
                }
                Some(Ok(r))
            }
            Ok(None) => {
                self.reads.record();
                None
            }
            Err(e) => {
                self.done = true;
                self.reads.record();
                Some(Err(e))
            }
        }
    }

    /// Counts the key a step resolved to in the load, one sampled (see `reads`): out of
    /// the step, which is inlined into the caller's loop.
    #[inline(never)]
    fn sample(&mut self, r: &Resolved) {
        let key = match r {
            Resolved::Top => match self.front.as_ref() {
                Some(side) => side.merge.top().key(),
                None => return,
            },
            Resolved::Held(k, _) => k,
        };
        self.reads.sample_scanned(key);
    }

    #[inline]
    fn owned(&self, r: Resolved) -> (Bytes, Bytes) {
        match r {
            Resolved::Top => {
                let t = self.front.as_ref().expect("a forward step").merge.top();
                (t.key_bytes(), t.value_bytes())
            }
            Resolved::Held(k, v) => (k, v),
        }
    }

    #[inline]
    fn lent(&mut self, r: Resolved) -> (&[u8], &[u8]) {
        match r {
            Resolved::Top => {
                let t = self.front.as_ref().expect("a forward step").merge.top();
                (t.key(), t.value())
            }
            Resolved::Held(k, v) => {
                self.held = (k, v);
                (&self.held.0, &self.held.1)
            }
        }
    }

    /// The next pair in key order, lent until the next call (see the type's docs).
    #[inline]
    pub fn next_ref(&mut self) -> Option<Result<(&[u8], &[u8])>> {
        match self.step_or_stop(Direction::Forward)? {
            Ok(r) => Some(Ok(self.lent(r))),
            Err(e) => Some(Err(e)),
        }
    }

    /// The next pair from the end, lent until the next call. A backward step walks past the
    /// entry it returns, so the pair is held (as slices of its block, not copied).
    #[inline]
    pub fn next_back_ref(&mut self) -> Option<Result<(&[u8], &[u8])>> {
        match self.step_or_stop(Direction::Backward)? {
            Ok(r) => Some(Ok(self.lent(r))),
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for DbIter {
    type Item = Result<(Bytes, Bytes)>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let r = self.step_or_stop(Direction::Forward)?;
        Some(r.map(|r| self.owned(r)))
    }
}

impl DoubleEndedIterator for DbIter {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let r = self.step_or_stop(Direction::Backward)?;
        Some(r.map(|r| self.owned(r)))
    }
}

/// Builds the sources for a range over memtables and a file set: every memtable, and for
/// every live layout version, every partition that may hold keys in the range (L0 files one
/// by one, deeper levels as concatenations).
pub(crate) fn build_sources(
    mems: &[Arc<MemTable>],
    files: &crate::version::FileSet,
    range: &KeyRange,
    snapshot: u64,
    dir: Direction,
) -> Result<Vec<Source>> {
    let mut out: Vec<Source> = Vec::new();
    let mut sought_mems: Vec<&Arc<MemTable>> = Vec::new();
    for m in mems {
        if m.min_seqno() <= snapshot && !m.is_empty() {
            let s = Source::mem(m.clone(), range, dir);
            sought_mems.push(m);
            if s.valid() {
                out.push(s);
            }
        }
    }
    let mem_sources = out.len();
    let (lo, hi) = range.hint();
    for layout in files.layouts.values() {
        for p in layout.func.partitions_for_range(lo, hi) {
            let Some(part) = layout.parts.get(p as usize) else {
                continue;
            };
            let first = out.len();
            // The file each sorted run of the partition is sought in, shallowest first.
            let mut sought: Vec<&Arc<crate::version::FileMeta>> = Vec::new();
            for f in &part.levels[0] {
                if f.min_seqno <= snapshot && range.overlaps(&f.smallest, &f.largest) {
                    let s = Source::table(f, range, dir, true)?;
                    sought.push(f);
                    if s.valid() {
                        out.push(s);
                    }
                }
            }
            let mut deepest = None;
            for level in 1..part.levels.len() {
                let Some((s, at)) = Source::level(part, level, range, snapshot, dir, true)? else {
                    continue;
                };
                if s.valid() {
                    out.push(s);
                }
                if let Some(prev) = deepest.replace(at) {
                    sought.push(prev);
                }
            }
            // A scan that had to seek more than one sorted run of the partition counts against
            // the seek allowance of every file it sought above the deepest run (compaction
            // reads the counts, and pushes a file that has used its allowance down).
            if out.len() - first >= 2 {
                for f in sought {
                    f.charge_seek(crate::version::SCAN_SEEK_UNITS);
                }
            }
        }
    }
    // Likewise a memtable sought besides table runs (the WAL ticker reads the count).
    if out.len() > mem_sources {
        for m in sought_mems {
            m.charge_seek(crate::version::SCAN_SEEK_UNITS);
        }
    }
    Ok(out)
}

/// Read-ahead buffers of one walk over many files together ([`file_sources`]).
const SOURCES_READAHEAD: u64 = 2 << 20;
/// The least each file's buffer reads at a time (two 4 KiB blocks).
const MIN_FILE_READAHEAD: u64 = 8 << 10;
const _: () = assert!(MIN_FILE_READAHEAD <= crate::sst::reader::READAHEAD);

/// Bytes each of `files` walked together reads ahead at a time (see [`file_sources`]).
fn file_readahead(files: usize) -> u64 {
    (SOURCES_READAHEAD / files.max(1) as u64)
        .clamp(MIN_FILE_READAHEAD, crate::sst::reader::READAHEAD)
}

/// Sources for every file in `files`, forward over everything (compactions, scans of one
/// partition). Reads bypass the block cache so a compaction does not evict hot blocks.
/// Each file reads ahead into a buffer of its own, all of them at once: their sizes share
/// [`SOURCES_READAHEAD`] (64 KiB each up to 32 files). At 64 KiB each whatever their
/// number, the wide jobs of a migration (an input from every source partition) took the
/// demo's peak RSS from ~125 MB to 185–192 MB; with the shared budget it peaks at
/// 150–156 MB (BENCHMARKS.md §1, "Read-ahead of wide jobs"). Narrower jobs read as before.
pub(crate) fn file_sources(
    files: &[std::sync::Arc<crate::version::FileMeta>],
) -> Result<Vec<Source>> {
    let all = KeyRange::all();
    let run = file_readahead(files.len());
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let c = crate::cursor::TableCursor::ahead(f.table.clone(), all.clone(), run)?;
        let s = Source::Table(c);
        if s.valid() {
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files walked together share one read-ahead budget: 64 KiB each up to 32 files, less
    /// each beyond, never under two blocks' worth.
    #[test]
    fn files_walked_together_share_their_read_ahead() {
        use crate::sst::reader::READAHEAD;
        assert_eq!(file_readahead(0), READAHEAD);
        assert_eq!(file_readahead(1), READAHEAD);
        assert_eq!(file_readahead(32), READAHEAD);
        assert_eq!(file_readahead(64), 32 << 10);
        assert_eq!(file_readahead(200), SOURCES_READAHEAD / 200);
        assert_eq!(file_readahead(400), MIN_FILE_READAHEAD);
        assert_eq!(file_readahead(100_000), MIN_FILE_READAHEAD);
        for n in [1, 10, 33, 100, 255, 256, 1000] {
            let total = file_readahead(n) * n as u64;
            assert!(
                total <= SOURCES_READAHEAD || file_readahead(n) == MIN_FILE_READAHEAD,
                "{n} files hold {total} bytes"
            );
        }
    }
}
