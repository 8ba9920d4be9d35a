//! Optimistic transactions: reads at a snapshot, writes buffered, and at commit a check —
//! made by the commit leader, atomically with the write — that no key the transaction read
//! has changed since its snapshot (for a large read set, most of the check is done before,
//! outside the WAL lock: `recent.rs`). Committed transactions are therefore serializable (they
//! behave as if run one at a time at their commit points); a transaction that lost a race
//! fails with [`Error::Conflict`] and can simply be retried.
//!
//! Layout changes do not disturb this: seqnos never change when data moves (migration
//! compactions and lazy moves keep them), so a move is never mistaken for a write.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::batch::WriteBatch;
use crate::error::Result;
use crate::load::ReadTally;
use crate::options::WriteOptions;
use crate::snapshot::Snapshot;
use crate::write::ReadSet;

/// An optimistic, serializable transaction from [`crate::Db::transaction`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = sluice::Db::open(dir.path(), Default::default()).unwrap();
/// # db.put("alice", "100").unwrap();
/// loop {
///     let mut t = db.transaction();
///     let a: u64 = std::str::from_utf8(&t.get("alice")?.unwrap()).unwrap().parse().unwrap();
///     t.put("alice", (a - 10).to_string());
///     t.put("bob", "10");
///     match t.commit() {
///         Err(sluice::Error::Conflict { .. }) => continue, // someone changed "alice": retry
///         r => break r?,
///     }
/// }
/// # Ok::<(), sluice::Error>(())
/// ```
pub struct Transaction {
    snapshot: Snapshot,
    reads: BTreeSet<Bytes>,
    writes: BTreeMap<Bytes, Option<Bytes>>,
    /// The load counters' view of its reads: one event per partition it read from,
    /// recorded when it commits (whatever the outcome) or is dropped.
    read_tally: ReadTally,
}

impl Transaction {
    pub(crate) fn new(snapshot: Snapshot) -> Transaction {
        Transaction {
            read_tally: snapshot.inner().read_tally(),
            snapshot,
            reads: BTreeSet::new(),
            writes: BTreeMap::new(),
        }
    }

    /// The seqno the transaction reads at.
    pub fn snapshot_seqno(&self) -> u64 {
        self.snapshot.seqno()
    }

    /// Reads `key`: the transaction's own write if it made one, else the value at its
    /// snapshot. The key joins the read set checked at commit.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let k = key.as_ref();
        if k.len() > crate::MAX_KEY_LEN {
            return Err(crate::Error::KeyTooLarge {
                len: k.len(),
                max: crate::MAX_KEY_LEN,
            });
        }
        if let Some(w) = self.writes.get(k) {
            return Ok(w.clone());
        }
        self.reads.insert(Bytes::copy_from_slice(k));
        let seqno = Some(self.snapshot.seqno());
        (self.snapshot.inner()).get(k, seqno, Some(&mut self.read_tally))
    }

    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.writes.insert(
            Bytes::copy_from_slice(key.as_ref()),
            Some(Bytes::copy_from_slice(value.as_ref())),
        );
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.writes
            .insert(Bytes::copy_from_slice(key.as_ref()), None);
    }

    /// Number of buffered writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Validates and applies the transaction atomically (not synced).
    pub fn commit(self) -> Result<()> {
        self.commit_opt(&WriteOptions::default())
    }

    /// Validates and applies the transaction atomically. Returns [`Error::Conflict`](crate::Error::Conflict) if a
    /// key it read was written (or deleted) by someone else after its snapshot; nothing is
    /// written then.
    pub fn commit_opt(mut self, opts: &WriteOptions) -> Result<()> {
        // Before the outcome is known: a transaction that conflicts made its reads all
        // the same (and one retried under contention reads again, each time).
        self.read_tally.record();
        let mut b = WriteBatch::new();
        for (k, v) in &self.writes {
            match v {
                Some(v) => b.put(k, v),
                None => b.delete(k),
            };
        }
        let rs = ReadSet {
            snapshot: self.snapshot.seqno(),
            keys: self.reads.into_iter().collect(),
            checked: None,
        };
        let inner = self.snapshot.inner().clone();
        inner.commit(b, opts.sync, Some(rs)).map(|_| ())
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("snapshot", &self.snapshot.seqno())
            .field("reads", &self.reads.len())
            .field("writes", &self.writes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_hooks::{set, Point};
    use crate::{Db, Error, Options};

    fn key(i: u32) -> String {
        format!("k{i:05}")
    }

    /// A database in `dir` holding keys `0..keys`, and a transaction that read keys 0..100
    /// (a read set checked in two steps) and writes "out".
    fn large_transaction(dir: &std::path::Path, keys: u32) -> (Db, crate::Transaction) {
        let db = Db::open(dir, Options::default()).unwrap();
        for i in 0..keys {
            db.put(key(i), "0").unwrap();
        }
        let mut t = db.transaction();
        for i in 0..100 {
            t.get(key(i)).unwrap();
        }
        t.put("out", "1");
        (db, t)
    }

    /// A large transaction (its read set checked up to a mark before the commit) against
    /// writes made after the mark, before its commit group: `writes` keys from `first`
    /// (more than the log holds when `writes` is large). It must conflict exactly when
    /// one of them is a key it read (it read keys 0..100).
    fn commit_after(writes: u32, first: u32) -> crate::Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (db, t) = large_transaction(dir.path(), 100);
        let other = db.clone();
        set(Point::TransactionAfterMark, move || {
            for i in first..first + writes {
                other.put(key(i), "1").unwrap();
            }
        });
        let r = t.commit();
        assert_eq!(db.get("out").unwrap().is_some(), r.is_ok());
        r
    }

    /// A large transaction (it read keys 0..100) whose mark overlaps another's (a large
    /// transaction that commits from inside its window): a write to key 42, made while both
    /// marks are set (`while_both`) or once the other's is gone, must still conflict.
    fn beside_another_mark(while_both: bool) -> crate::Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (db, t) = large_transaction(dir.path(), 200);
        let other = db.clone();
        set(Point::TransactionAfterMark, move || {
            let mut t2 = other.transaction();
            for i in 100..200 {
                t2.get(key(i)).unwrap();
            }
            t2.put("out2", "1");
            let writer = other.clone();
            let write = move || writer.put(key(42), "1").unwrap();
            if while_both {
                set(Point::TransactionAfterMark, write);
                t2.commit().unwrap();
            } else {
                t2.commit().unwrap();
                write();
            }
        });
        let r = t.commit();
        assert_eq!(db.get("out").unwrap().is_some(), r.is_ok());
        r
    }

    #[test]
    fn a_write_beside_another_mark_conflicts() {
        for while_both in [true, false] {
            match beside_another_mark(while_both) {
                Err(Error::Conflict { key: got }) => assert_eq!(got, key(42).as_bytes()),
                other => panic!(
                    "written while both marks are set: {while_both}; expected a conflict on \
                     {}: {other:?}",
                    key(42)
                ),
            }
        }
    }

    /// A batch written after the mark whose only key the transaction read is not its first
    /// (and, once, its last): every key of a batch is recorded.
    #[test]
    fn a_batch_after_the_mark_conflicts_on_any_of_its_keys() {
        for keys in [
            vec!["a".to_string(), key(42)],
            vec!["a".into(), key(42), "z".into()],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (db, t) = large_transaction(dir.path(), 100);
            let other = db.clone();
            let batch = keys.clone();
            set(Point::TransactionAfterMark, move || {
                let mut b = crate::WriteBatch::new();
                for k in batch {
                    b.put(k, "1");
                }
                other.write(b).unwrap();
            });
            match t.commit() {
                Err(Error::Conflict { key: got }) => assert_eq!(got, key(42).as_bytes()),
                other => panic!(
                    "batch {keys:?}: expected a conflict on {}: {other:?}",
                    key(42)
                ),
            }
            assert_eq!(db.get("out").unwrap(), None);
        }
    }

    #[test]
    fn a_write_after_the_mark_conflicts_only_on_a_key_read() {
        const { assert!(crate::recent::TWO_STEP_MIN_KEYS <= 100) };
        let conflict = |r: crate::Result<()>, k: u32| match r {
            Err(Error::Conflict { key: got }) => assert_eq!(got, key(k).as_bytes()),
            other => panic!("expected a conflict on {}: {other:?}", key(k)),
        };
        // One write: to a key read, or not.
        conflict(commit_after(1, 42), 42);
        commit_after(1, 100).unwrap();
        // Past the log's room: every key is checked under the lock.
        let many = crate::recent::MAX_ENTRIES as u32 + 10;
        conflict(commit_after(many, 99), 99);
        commit_after(many, 100).unwrap();
    }
}
