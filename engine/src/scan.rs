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
    /// Moved by a lazy read to layout version `to` (a forwarding pointer covers it). `to` is
    /// where the copy went first: after a later retarget it may have moved on, and `to` may
    /// since have drained and retired.
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
    _view: Arc<View>,
    data: MergeIter,
    pointers: Peekable<MergeIter>,
    pending: Option<crate::types::Entry>,
    failed: bool,
    snapshot: u64,
    /// The partition's pointer tables, for naming one in an error.
    pointer_files: Vec<std::path::PathBuf>,
}

impl Inner {
    pub fn partition_entries(&self, version: u32, partition: u32) -> Result<PartitionIter> {
        self.partition_entries_in(self.view.load_full(), version, partition, u64::MAX)
    }

    /// A partition of `view`, as of `snapshot` (entries with a higher seqno are ignored).
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
            _view: view.clone(),
            pending: None,
            failed: false,
            snapshot,
            pointer_files: part
                .pointers
                .iter()
                .map(|f| f.table.path().to_path_buf())
                .collect(),
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
        Ok(Some(match (moved_to, first.kind) {
            (Some(to), Kind::Value) => PartitionEntry::Moved {
                key: first.key,
                seqno: first.seqno,
                to: VersionId(to),
            },
            (_, Kind::Delete) => PartitionEntry::Tombstone {
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
