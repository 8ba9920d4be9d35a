//! Output files of a flush or compaction: one table writer per (layout version, partition),
//! cut at the target file size on user-key boundaries (and, for a compaction into a middle
//! level, where the files of the level below begin), deleted again if the job fails.

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
    /// Keys before which an output is cut early (see [`Outputs::cut_before`]), ascending,
    /// and the index of the first one not yet passed.
    cuts: Vec<bytes::Bytes>,
    next_cut: usize,
    cut_min_bytes: u64,
    /// Heap bytes of the open writers registered with the block cache
    /// ([`crate::cache::BlockCache::pin`]), brought up to date every [`CHARGE_EVERY`] entries.
    pinned: u64,
}

/// Entries between updates of what the open writers are charged.
const CHARGE_EVERY: u64 = 1024;

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
            cuts: Vec::new(),
            next_cut: 0,
            cut_min_bytes: 0,
            pinned: 0,
        }
    }

    /// Charges the block cache for what the open writers hold now: a table being built
    /// keeps its index and its filter's key hashes in memory (4–5 MB for a 64 MB table), as
    /// an open table keeps its index and filter.
    fn recharge(&mut self) {
        let now: u64 = self.writers.values().map(|w| w.heap_bytes()).sum();
        let cache = &self.inner.cache;
        if now > self.pinned {
            cache.pin(now - self.pinned);
        } else if now < self.pinned {
            cache.unpin(self.pinned - now);
        }
        self.pinned = now;
    }

    /// Also cuts an output (once it holds `min_bytes`) before the first key at or past each
    /// of `keys` — the first keys of the files in the level below the output level. Each
    /// output then overlaps as few of those files as the size floor allows, so moving it
    /// down later rewrites only them. For jobs writing one partition (the cuts are its).
    pub fn cut_before(mut self, keys: Vec<bytes::Bytes>, min_bytes: u64) -> Self {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        self.cuts = keys;
        self.cut_min_bytes = min_bytes;
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
        if self.checked.is_multiple_of(CHARGE_EVERY) {
            // Inputs are read through memory maps: release their pages as the budget is
            // reached, here rather than at the WAL ticker's next round, so a compaction
            // keeps no more of them resident than the budget.
            self.inner.cache.sweep_if_due();
            self.recharge();
        }
        let wkey = (layout.id, partition);
        let mut crossed = false;
        while self
            .cuts
            .get(self.next_cut)
            .is_some_and(|c| c.as_ref() <= key)
        {
            self.next_cut += 1;
            crossed = true;
        }
        if let Some(w) = self.writers.get(&wkey) {
            let size = w.estimated_size();
            let full = self.split_bytes.is_some_and(|limit| size >= limit);
            let at_cut = crossed && size >= self.cut_min_bytes;
            // Versions of one user key stay in one file (a cut key is past the last one).
            if (full || at_cut) && w.last_key() != Some(key) {
                let w = self.writers.remove(&wkey).expect("writer exists");
                self.finish_one(w)?;
                self.recharge();
            }
        }
        if !self.writers.contains_key(&wkey) {
            let number = self.inner.core.lock().new_file_number();
            self.created.push(number);
            let w = TableWriter::create(
                self.inner.fs.as_ref(),
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
        self.writers
            .get_mut(&wkey)
            .expect("writer exists")
            .add_parts(key, seqno, kind, value)
    }

    fn finish_one(&mut self, w: TableWriter) -> Result<()> {
        let path = w.path().to_path_buf();
        let number = crate::util::file_number(&path).unwrap_or(0);
        let (_, size) = w.finish()?;
        self.bytes_written += size;
        let table = Table::open(
            self.inner.fs.as_ref(),
            &path,
            number,
            Some(self.inner.cache.clone()),
        )?;
        self.done.push(Arc::new(FileMeta::new(
            Arc::new(table),
            self.level,
            self.inner.fs.clone(),
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
        // The charge goes with the job, finished or not (the tables it opened carry their own).
        self.writers.clear();
        self.recharge();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Kind;
    use crate::{Db, Options};

    /// Tables being written are charged to the block cache for what they hold (their index
    /// and filter hashes grow with every entry), and the charge goes when the job ends: to
    /// the tables it opened if it finished, entirely if it was abandoned.
    #[test]
    fn open_writers_are_charged_to_the_cache_until_their_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let inner = &db.inner;
        let view = inner.view.load();
        let layout = view.files.target_layout();
        assert_eq!(inner.cache.pinned(), 0, "an empty database opens no table");
        for finish in [true, false] {
            let mut out = Outputs::new(inner, TableKind::Data, 0, None);
            let n = 20_000u32;
            for i in 0..n {
                let key = format!("key{i:08}");
                out.add_parts(layout, 0, key.as_bytes(), 1, Kind::Value, &[7u8; 50])
                    .unwrap();
            }
            let charged = inner.cache.pinned();
            // At least the filter's hashes of all but the last batch of entries.
            assert!(
                charged >= (n - CHARGE_EVERY as u32) as u64 * 8,
                "{charged} bytes charged for {n} entries"
            );
            if finish {
                let files = out.finish().unwrap();
                let tables: u64 = files.iter().map(|f| f.table.heap_bytes()).sum();
                assert!(tables > 0);
                assert_eq!(inner.cache.pinned(), tables, "the tables' charge only");
                drop(files);
            } else {
                drop(out);
            }
            assert_eq!(inner.cache.pinned(), 0, "finish: {finish}");
        }
        // A writer cut at the size limit hands its charge to the table it became at once.
        let mut out = Outputs::new(inner, TableKind::Data, 0, Some(256 << 10));
        let held = |out: &Outputs| -> u64 {
            let tables: u64 = out.done.iter().map(|f| f.table.heap_bytes()).sum();
            tables + out.writers.values().map(|w| w.heap_bytes()).sum::<u64>()
        };
        let mut cuts = 0;
        for i in 0..20_000u32 {
            let key = format!("key{i:08}");
            out.add_parts(layout, 0, key.as_bytes(), 1, Kind::Value, &[7u8; 50])
                .unwrap();
            if out.done.len() > cuts {
                cuts = out.done.len();
                assert!(
                    inner.cache.pinned() <= held(&out),
                    "after cut {cuts}: {} charged, {} held",
                    inner.cache.pinned(),
                    held(&out)
                );
            }
        }
        assert!(cuts >= 3, "{cuts} cuts");
        drop(out);
        assert_eq!(inner.cache.pinned(), 0);
    }
}
