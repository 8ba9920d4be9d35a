//! Output files of a flush or compaction: one table writer per (layout version, partition),
//! cut at the target file size on user-key boundaries (and, for a compaction into a middle
//! level, where the files of the level below begin), deleted again if the job fails.
//!
//! A writer creates its file only once it has 256 KiB to write out, so a flush holds at
//! most one descriptor per 256 KiB of its memtable. A compaction can take far more (a
//! migration job up to 16 × `target_file_bytes`), and into a layout of many partitions
//! (`hash:1024`, say) it can have more writers past 256 KiB than the process may open
//! files. So a compaction keeps at most [`Outputs::max_files_open`] of them open
//! ([`Outputs::limit_open_files`]): when one more creates its file, the largest other one
//! that holds a file and whose last key is below the entry just added is finished there
//! (its partition's next entries start a new file, as at the target size). Every output
//! cut so holds at least 256 KiB. Flushes are not limited so: their outputs are L0 files,
//! which writers' slowdowns and stops count, and cutting them would make more.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::db::Inner;
use crate::error::{Error, Result};
use crate::sst::{Table, TableKind, TableOwner, TableWriter};
use crate::types::Entry;
use crate::version::{FileMeta, LayoutState};

pub(crate) struct Outputs<'a> {
    inner: &'a Inner,
    kind: TableKind,
    level: u8,
    split_bytes: Option<u64>,
    writers: BTreeMap<(u32, u32), TableWriter>,
    done: Vec<Arc<FileMeta>>,
    created: Vec<u64>,
    pub bytes_written: u64,
    checked: u64,
    /// Per partition, keys before which its output is cut early (see
    /// [`Outputs::cut_before`]).
    cuts: BTreeMap<u32, Cuts>,
    /// Writers that hold their file open now, and the most of them the job may keep.
    files_open: usize,
    max_files_open: usize,
}

/// Keys before which one partition's output is cut early, ascending, the index of the first
/// one not yet passed, and the size an output must have reached to be cut there.
struct Cuts {
    keys: Vec<bytes::Bytes>,
    next: usize,
    min_bytes: u64,
}

impl<'a> Outputs<'a> {
    pub fn new(
        inner: &'a Inner,
        kind: TableKind,
        level: u8,
        split_bytes: Option<u64>,
    ) -> Outputs<'a> {
        Outputs {
            inner,
            kind,
            level,
            split_bytes,
            writers: BTreeMap::new(),
            done: Vec::new(),
            created: Vec::new(),
            bytes_written: 0,
            checked: 0,
            cuts: BTreeMap::new(),
            files_open: 0,
            max_files_open: usize::MAX,
        }
    }

    /// Keeps at most [`Outputs::max_files_open`] output files open (see the module's
    /// documentation): for compactions.
    pub fn limit_open_files(mut self) -> Self {
        self.max_files_open = Self::max_files_open(self.inner.table_files.budget());
        self
    }

    /// Output files one compaction keeps open at most: a quarter of the tables' descriptor
    /// budget (`max_open_files`), at least 4, so that the tables read, a flush and a
    /// compaction or two stay within what the process may open.
    pub fn max_files_open(max_open_files: usize) -> usize {
        (max_open_files / 4).max(4)
    }

    /// Also cuts `partition`'s output (once it holds `min_bytes`) before the first key at or
    /// past each of `keys`: the first keys of the files in the level below the output level,
    /// so each output overlaps as few of those files as the size floor allows and moving it
    /// down later rewrites only them; or, for a migration, the first key past what the
    /// partition's last level already holds (see `run_compaction`).
    pub fn cut_before(mut self, partition: u32, keys: Vec<bytes::Bytes>, min_bytes: u64) -> Self {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        self.cuts.insert(
            partition,
            Cuts {
                keys,
                next: 0,
                min_bytes,
            },
        );
        self
    }

    /// Adds `e` to the output for `partition` of `layout`. Entries for one partition must
    /// arrive in internal order.
    pub fn add(&mut self, layout: &LayoutState, partition: u32, e: &Entry) -> Result<()> {
        self.add_parts(layout, partition, &e.key, e.seqno, e.kind, &e.value)
    }

    /// Like [`Outputs::add`], with the entry given as parts.
    pub fn add_parts(
        &mut self,
        layout: &LayoutState,
        partition: u32,
        key: &[u8],
        seqno: u64,
        kind: crate::types::Kind,
        value: &[u8],
    ) -> Result<()> {
        self.checked += 1;
        if self.checked.is_multiple_of(4096) && self.inner.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let wkey = (layout.id, partition);
        let (mut crossed, mut cut_min_bytes) = (false, 0);
        if let Some(c) = self.cuts.get_mut(&partition) {
            while c.keys.get(c.next).is_some_and(|k| k.as_ref() <= key) {
                c.next += 1;
                crossed = true;
            }
            cut_min_bytes = c.min_bytes;
        }
        if let Some(w) = self.writers.get(&wkey) {
            let size = w.estimated_size();
            let full = self.split_bytes.is_some_and(|limit| size >= limit);
            let at_cut = crossed && size >= cut_min_bytes;
            // Versions of one user key stay in one file (a cut key is past the last one).
            if (full || at_cut) && w.last_key() != Some(key) {
                let w = self.writers.remove(&wkey).expect("writer exists");
                self.finish_one(w)?;
            }
        }
        if !self.writers.contains_key(&wkey) {
            let number = self.inner.core.lock().new_file_number();
            self.created.push(number);
            let w = TableWriter::new(
                self.inner.fs.clone(),
                &self.inner.sst_path(number),
                self.inner.table_opts.clone(),
                TableOwner {
                    kind: self.kind,
                    layout_version: layout.id,
                    fingerprint: layout.func.fingerprint(),
                    partition,
                },
            )?;
            self.writers.insert(wkey, w);
        }
        let w = self.writers.get_mut(&wkey).expect("writer exists");
        let had_file = w.holds_file();
        let added = w.add_parts(key, seqno, kind, value);
        // Counted even if the write after the file's creation failed: it is open.
        let opened = !had_file && w.holds_file();
        if opened {
            self.files_open += 1;
            let c = &self.inner.counters;
            c.output_files_open_max
                .fetch_max(self.files_open as u64, Ordering::Relaxed);
        }
        added?;
        if opened && self.files_open > self.max_files_open {
            self.finish_largest_open_but(wkey, key)?;
        }
        Ok(())
    }

    /// Finishes the largest writer other than `this` that holds its file. Entries come in
    /// key order across the job (they are merged), so a writer whose last key is below
    /// `key` gets no more versions of it, and cutting its output there keeps a user key's
    /// versions in one file.
    fn finish_largest_open_but(&mut self, this: (u32, u32), key: &[u8]) -> Result<()> {
        let victim = self
            .writers
            .iter()
            .filter(|(k, w)| **k != this && w.holds_file() && w.last_key() < Some(key))
            .max_by_key(|(_, w)| w.estimated_size())
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            crate::stats::Counters::add(&self.inner.counters.output_cuts_for_files, 1);
            let w = self.writers.remove(&k).expect("writer exists");
            self.finish_one(w)?;
        }
        Ok(())
    }

    fn finish_one(&mut self, w: TableWriter) -> Result<()> {
        if w.holds_file() {
            self.files_open -= 1;
        }
        let path = w.path().to_path_buf();
        let number = crate::util::file_number(&path).unwrap_or(0);
        let (_, size) = w.finish()?;
        self.bytes_written += size;
        let table = Table::open_in(
            &self.inner.table_files,
            self.inner.fs.as_ref(),
            &path,
            number,
            Some(self.inner.cache.clone()),
        )?;
        self.done.push(Arc::new(FileMeta::new(
            Arc::new(table),
            self.level,
            self.inner.home.clone(),
        )));
        Ok(())
    }

    /// Finishes every open file and returns all outputs.
    pub fn finish(mut self) -> Result<Vec<Arc<FileMeta>>> {
        let writers = std::mem::take(&mut self.writers);
        for (_, w) in writers {
            if let Err(e) = self.finish_one(w) {
                self.abandon();
                return Err(e);
            }
        }
        self.created.clear();
        Ok(std::mem::take(&mut self.done))
    }

    /// Deletes every file this job created.
    pub fn abandon(&mut self) {
        self.writers.clear();
        self.done.clear();
        for n in self.created.drain(..) {
            let _ = self.inner.fs.remove(&self.inner.sst_path(n));
        }
    }
}

impl Drop for Outputs<'_> {
    fn drop(&mut self) {
        // An Outputs dropped without finish() belongs to a failed job.
        if !self.created.is_empty() {
            self.abandon();
        }
    }
}
