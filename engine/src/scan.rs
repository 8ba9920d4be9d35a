//! Partition-scoped reads: what one partition of one layout version holds, key by key. A
//! value that a read has moved to another layout is reported as moved (with the version it
//! went to), not as the stale copy still sitting in the file.

use std::iter::Peekable;
use std::sync::Arc;

use bytes::Bytes;

use crate::coding::get_varint;
use crate::db::{Inner, VersionId, View};
use crate::error::{Error, Result};
use crate::iter::{file_sources, Direction, MergeIter};
use crate::types::{cmp_internal, Kind};

/// The newest entry of one key within one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionEntry {
    Value {
        key: Bytes,
        seqno: u64,
        value: Bytes,
    },
    Tombstone {
        key: Bytes,
        seqno: u64,
    },
    /// The key's live entry is in another layout: moved by a lazy read to layout version
    /// `to` (a forwarding pointer covers it), or superseded by a newer entry that `to`'s
    /// tables hold (written or migrated there; the memtables are not looked at). For a lazy
    /// move, `to` is where the copy went first: after a later retarget it may have moved
    /// on, and `to` may since have drained and retired.
    Moved {
        key: Bytes,
        seqno: u64,
        to: VersionId,
    },
}

impl PartitionEntry {
    pub fn key(&self) -> &Bytes {
        match self {
            PartitionEntry::Value { key, .. }
            | PartitionEntry::Tombstone { key, .. }
            | PartitionEntry::Moved { key, .. } => key,
        }
    }
}

/// Iterator over a partition's keys, from [`crate::Db::partition_entries`].
pub struct PartitionIter {
    /// The view read (it keeps the tables alive, and the other layouts are checked in it).
    view: Arc<View>,
    data: MergeIter,
    pointers: Peekable<MergeIter>,
    pending: Option<crate::types::Entry>,
    failed: bool,
    snapshot: u64,
    /// The partition's pointer tables, for naming one in an error.
    pointer_files: Vec<std::path::PathBuf>,
    /// The partition's layout, if its entries are to be checked against the other live
    /// layouts' tables (a newer entry there is reported as moved).
    superseded_in_others: Option<u32>,
}

impl Inner {
    /// What the partition holds, key by key. A key whose newest entry here is superseded
    /// by a newer one in another live layout's tables is reported as moved there, not as
    /// its live value: a migration moves a partition's files one at a time, and the order
    /// a layout's files lie in does not always follow the age of their entries (a migrated
    /// old version placed above a newer one; a lazy move's copy, which keeps its old seqno,
    /// flushed after the key's overwrite), so a key's newer version can leave a draining
    /// partition before an older one does.
    pub fn partition_entries(&self, version: u32, partition: u32) -> Result<PartitionIter> {
        let mut it =
            self.partition_entries_in(self.view.load_full(), version, partition, u64::MAX)?;
        if it.view.files.layouts.len() > 1 {
            it.superseded_in_others = Some(version);
        }
        Ok(it)
    }

    /// A partition of `view`, as of `snapshot` (entries with a higher seqno are ignored),
    /// each key's newest entry in the partition as it stands (superseded ones included:
    /// the consistency check judges across layouts itself).
    pub(crate) fn partition_entries_in(
        &self,
        view: Arc<View>,
        version: u32,
        partition: u32,
        snapshot: u64,
    ) -> Result<PartitionIter> {
        let layout = view
            .files
            .layouts
            .get(&version)
            .ok_or(Error::UnknownVersion(version))?;
        let part = layout
            .parts
            .get(partition as usize)
            .ok_or_else(|| Error::InvalidOption {
                name: "partition",
                reason: format!("v{version} has {} partitions", layout.parts.len()),
            })?;
        let data: Vec<_> = part.data_files().cloned().collect();
        Ok(PartitionIter {
            data: MergeIter::new(file_sources(&data), Direction::Forward),
            pointers: MergeIter::new(file_sources(&part.pointers), Direction::Forward).peekable(),
            view: view.clone(),
            pending: None,
            failed: false,
            snapshot,
            pointer_files: part
                .pointers
                .iter()
                .map(|f| f.table.path().to_path_buf())
                .collect(),
            superseded_in_others: None,
        })
    }
}

impl PartitionIter {
    /// The next entry at or below the snapshot.
    fn next_visible(&mut self) -> Result<Option<crate::types::Entry>> {
        loop {
            match self.data.next() {
                Some(r) => {
                    let e = r?;
                    if e.seqno <= self.snapshot {
                        return Ok(Some(e));
                    }
                }
                None => return Ok(None),
            }
        }
    }

    fn next_inner(&mut self) -> Result<Option<PartitionEntry>> {
        let first = match self.pending.take() {
            Some(e) => e,
            None => match self.next_visible()? {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        // Skip the older versions of this key.
        while let Some(e) = self.next_visible()? {
            if e.key != first.key {
                self.pending = Some(e);
                break;
            }
        }
        // Is the newest version covered by a forwarding pointer?
        let mut moved_to = None;
        while let Some(p) = self.pointers.peek() {
            let p = match p {
                Ok(p) => p,
                Err(_) => {
                    return Err(self
                        .pointers
                        .next()
                        .and_then(|r| r.err())
                        .unwrap_or(Error::Closed))
                }
            };
            match cmp_internal(&p.key, p.seqno, &first.key, first.seqno) {
                std::cmp::Ordering::Less => {
                    self.pointers.next();
                }
                std::cmp::Ordering::Equal => {
                    // A pointer names the version its value moved to; one that does not
                    // decode as a version id is damage, reported rather than read as a value.
                    let to = get_varint(&p.value)
                        .and_then(|(v, _)| u32::try_from(v).ok())
                        .ok_or_else(|| {
                            Error::corruption(
                                self.pointer_files.first().cloned().unwrap_or_default(),
                                0,
                                format!(
                                    "forwarding pointer for key {} (in one of the partition's \
                                     {} pointer tables) names no version",
                                    crate::escape::escape(&p.key),
                                    self.pointer_files.len()
                                ),
                            )
                        })?;
                    moved_to = Some(to);
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        if moved_to.is_none() {
            if let Some(me) = self.superseded_in_others {
                moved_to = crate::read::newer_in_tables(
                    &self.view,
                    &first.key,
                    first.seqno,
                    self.snapshot,
                    Some(me),
                )?;
            }
        }
        Ok(Some(match (moved_to, first.kind) {
            // (A pointer covers only a value; a tombstone here is moved if superseded.)
            (Some(to), _) => PartitionEntry::Moved {
                key: first.key,
                seqno: first.seqno,
                to: VersionId(to),
            },
            (None, Kind::Delete) => PartitionEntry::Tombstone {
                key: first.key,
                seqno: first.seqno,
            },
            _ => PartitionEntry::Value {
                key: first.key,
                seqno: first.seqno,
                value: first.value,
            },
        }))
    }
}

impl Iterator for PartitionIter {
    type Item = Result<PartitionEntry>;
    fn next(&mut self) -> Option<Self::Item> {
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
