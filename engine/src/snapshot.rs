//! Snapshots: a seqno that reads are pinned to. While a snapshot is open, compaction keeps
//! every entry it can see (and migration compactions are compactions like any other).

use std::sync::Arc;

use bytes::Bytes;

use crate::db::{Inner, KeyBounds};
use crate::error::Result;
use crate::iter::DbIter;

/// A consistent point-in-time view across every partition and layout version.
pub struct Snapshot {
    inner: Arc<Inner>,
    seqno: u64,
}

/// Keeps a snapshot registered for as long as an iterator made from it lives.
struct Registration {
    inner: Arc<Inner>,
    seqno: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        release(&self.inner, self.seqno);
    }
}

fn register(inner: &Inner, seqno: u64) {
    *inner.snapshots.lock().entry(seqno).or_insert(0) += 1;
}

fn release(inner: &Inner, seqno: u64) {
    let mut s = inner.snapshots.lock();
    if let Some(c) = s.get_mut(&seqno) {
        *c -= 1;
        if *c == 0 {
            s.remove(&seqno);
        }
    }
}

impl Snapshot {
    pub(crate) fn new(inner: Arc<Inner>) -> Snapshot {
        // Register under the snapshot lock before reading the seqno, so a compaction that
        // lists snapshots cannot miss one that is being taken.
        let mut s = inner.snapshots.lock();
        let seqno = inner.latest();
        *s.entry(seqno).or_insert(0) += 1;
        drop(s);
        Snapshot { inner, seqno }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The seqno this snapshot reads at.
    pub fn seqno(&self) -> u64 {
        self.seqno
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.inner.get(key.as_ref(), Some(self.seqno), None)
    }

    /// Iterates `range` as of this snapshot.
    pub fn range(&self, range: impl KeyBounds) -> DbIter {
        register(&self.inner, self.seqno);
        let hold = Registration {
            inner: self.inner.clone(),
            seqno: self.seqno,
        };
        self.inner
            .iter_at(range.key_range(), Some(self.seqno), Some(Box::new(hold)))
    }
}

impl Clone for Snapshot {
    fn clone(&self) -> Snapshot {
        register(&self.inner, self.seqno);
        Snapshot {
            inner: self.inner.clone(),
            seqno: self.seqno,
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        release(&self.inner, self.seqno);
    }
}
