//! The manifest: a log of version edits. Replaying it rebuilds which layout versions are
//! live, which is the target, and which SSTables make up each partition's levels.
//!
//! Files: `MANIFEST-<n>` (a log, see [`crate::log`]) and `CURRENT`, which names the live
//! manifest. A new manifest starts with a snapshot edit, is fsynced, and becomes live by
//! writing `CURRENT.tmp`, fsyncing it, renaming it over `CURRENT` and fsyncing the directory.
//! Every later edit is one record, fsynced before it takes effect in memory.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::coding::{put_bytes, put_u8, put_varint, Decoder};
use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::log::{read_log, LogKind, LogWriter, TornTail};
use crate::sst::TableKind;

/// A file as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub number: u64,
    pub size: u64,
    pub layout_version: u32,
    pub partition: u32,
    pub level: u8,
    pub kind: TableKind,
    pub smallest: Bytes,
    pub largest: Bytes,
    pub min_seqno: u64,
    pub max_seqno: u64,
    pub entries: u64,
}

/// One field of an edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditRecord {
    NextFile(u64),
    LastSeqno(u64),
    /// WAL files numbered below this hold nothing that is not in SSTables.
    LogNumber(u64),
    RegisterLayout {
        id: u32,
        spec: Vec<u8>,
    },
    SetTarget(u32),
    RetireLayout(u32),
    AddFile(FileRecord),
    DeleteFile(u64),
    /// State of the migration controller (opaque to the engine), fenced by `epoch`.
    Controller {
        epoch: u64,
        state: Vec<u8>,
    },
    /// A pinned layout is not retired when it drains empty (it is a rollback target).
    Pin {
        id: u32,
        pinned: bool,
    },
}

/// An atomic group of changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionEdit {
    pub records: Vec<EditRecord>,
}

const TAG_NEXT_FILE: u8 = 1;
const TAG_LAST_SEQNO: u8 = 2;
const TAG_LOG_NUMBER: u8 = 3;
const TAG_REGISTER: u8 = 4;
const TAG_TARGET: u8 = 5;
const TAG_RETIRE: u8 = 6;
const TAG_ADD_FILE: u8 = 7;
const TAG_DELETE_FILE: u8 = 8;
const TAG_CONTROLLER: u8 = 9;
const TAG_PIN: u8 = 10;

/// Most levels any partition may have.
pub const MAX_LEVELS: usize = 7;
pub(crate) const MAX_SPEC_LEN: usize = 32 << 20;
pub(crate) const MAX_CONTROLLER_LEN: usize = 16 << 20;

impl VersionEdit {
    pub fn push(&mut self, r: EditRecord) -> &mut Self {
        self.records.push(r);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for r in &self.records {
            match r {
                EditRecord::NextFile(n) => {
                    put_u8(&mut b, TAG_NEXT_FILE);
                    put_varint(&mut b, *n);
                }
                EditRecord::LastSeqno(n) => {
                    put_u8(&mut b, TAG_LAST_SEQNO);
                    put_varint(&mut b, *n);
                }
                EditRecord::LogNumber(n) => {
                    put_u8(&mut b, TAG_LOG_NUMBER);
                    put_varint(&mut b, *n);
                }
                EditRecord::RegisterLayout { id, spec } => {
                    put_u8(&mut b, TAG_REGISTER);
                    put_varint(&mut b, *id as u64);
                    put_bytes(&mut b, spec);
                }
                EditRecord::SetTarget(id) => {
                    put_u8(&mut b, TAG_TARGET);
                    put_varint(&mut b, *id as u64);
                }
                EditRecord::RetireLayout(id) => {
                    put_u8(&mut b, TAG_RETIRE);
                    put_varint(&mut b, *id as u64);
                }
                EditRecord::AddFile(f) => {
                    put_u8(&mut b, TAG_ADD_FILE);
                    put_varint(&mut b, f.number);
                    put_varint(&mut b, f.size);
                    put_varint(&mut b, f.layout_version as u64);
                    put_varint(&mut b, f.partition as u64);
                    put_u8(&mut b, f.level);
                    put_u8(&mut b, f.kind as u8);
                    put_bytes(&mut b, &f.smallest);
                    put_bytes(&mut b, &f.largest);
                    put_varint(&mut b, f.min_seqno);
                    put_varint(&mut b, f.max_seqno);
                    put_varint(&mut b, f.entries);
                }
                EditRecord::DeleteFile(n) => {
                    put_u8(&mut b, TAG_DELETE_FILE);
                    put_varint(&mut b, *n);
                }
                EditRecord::Controller { epoch, state } => {
                    put_u8(&mut b, TAG_CONTROLLER);
                    put_varint(&mut b, *epoch);
                    put_bytes(&mut b, state);
                }
                EditRecord::Pin { id, pinned } => {
                    put_u8(&mut b, TAG_PIN);
                    put_varint(&mut b, *id as u64);
                    put_u8(&mut b, *pinned as u8);
                }
            }
        }
        b
    }

    pub fn decode(b: &[u8], path: &Path, offset: u64) -> Result<VersionEdit> {
        let mut d = Decoder::new(b, path, offset);
        let mut e = VersionEdit::default();
        while !d.is_empty() {
            let at = d.offset();
            let r = match d.u8("edit tag")? {
                TAG_NEXT_FILE => EditRecord::NextFile(d.varint("next file")?),
                TAG_LAST_SEQNO => EditRecord::LastSeqno(d.varint("last seqno")?),
                TAG_LOG_NUMBER => EditRecord::LogNumber(d.varint("log number")?),
                TAG_REGISTER => EditRecord::RegisterLayout {
                    id: d.u32_varint("layout id")?,
                    spec: d.bytes(MAX_SPEC_LEN, "layout spec")?.to_vec(),
                },
                TAG_TARGET => EditRecord::SetTarget(d.u32_varint("target")?),
                TAG_RETIRE => EditRecord::RetireLayout(d.u32_varint("retired layout")?),
                TAG_ADD_FILE => {
                    let number = d.varint("file number")?;
                    let size = d.varint("file size")?;
                    let layout_version = d.u32_varint("file layout version")?;
                    let partition = d.u32_varint("file partition")?;
                    let level = d.u8("file level")?;
                    if level as usize >= MAX_LEVELS {
                        return Err(d.error(format!("file level {level} out of range")));
                    }
                    let kind = match d.u8("file kind")? {
                        1 => TableKind::Data,
                        2 => TableKind::Pointers,
                        k => return Err(d.error(format!("unknown file kind {k}"))),
                    };
                    EditRecord::AddFile(FileRecord {
                        number,
                        size,
                        layout_version,
                        partition,
                        level,
                        kind,
                        smallest: Bytes::copy_from_slice(d.bytes(crate::MAX_KEY_LEN, "smallest")?),
                        largest: Bytes::copy_from_slice(d.bytes(crate::MAX_KEY_LEN, "largest")?),
                        min_seqno: d.varint("min seqno")?,
                        max_seqno: d.varint("max seqno")?,
                        entries: d.varint("entries")?,
                    })
                }
                TAG_DELETE_FILE => EditRecord::DeleteFile(d.varint("deleted file")?),
                TAG_CONTROLLER => EditRecord::Controller {
                    epoch: d.varint("controller epoch")?,
                    state: d.bytes(MAX_CONTROLLER_LEN, "controller state")?.to_vec(),
                },
                TAG_PIN => EditRecord::Pin {
                    id: d.u32_varint("pinned layout")?,
                    pinned: match d.u8("pin flag")? {
                        0 => false,
                        1 => true,
                        x => return Err(d.error(format!("bad pin flag {x}"))),
                    },
                },
                t => {
                    return Err(Error::corruption(
                        path,
                        at,
                        format!("unknown manifest edit tag {t}"),
                    ))
                }
            };
            e.records.push(r);
        }
        Ok(e)
    }
}

pub fn manifest_name(n: u64) -> String {
    format!("MANIFEST-{n:06}")
}

pub const CURRENT: &str = "CURRENT";

/// The edits of a manifest, as read.
pub struct ManifestContents {
    pub path: PathBuf,
    pub number: u64,
    /// (offset of the record, edit).
    pub edits: Vec<(u64, VersionEdit)>,
    pub tail: Option<TornTail>,
}

/// Reads `CURRENT` and the manifest it names.
pub fn read_current(fs: &dyn Fs, dir: &Path) -> Result<ManifestContents> {
    let cur = dir.join(CURRENT);
    let raw = fs.map(&cur).map_err(|e| Error::io(&cur, e))?;
    // A manifest name is a few dozen bytes: anything much longer is damage, refused
    // before it is read through.
    if raw.len() > 256 {
        return Err(Error::corruption(
            &cur,
            0,
            format!("CURRENT is {} bytes, not a manifest name", raw.len()),
        ));
    }
    let name = std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|s| s.starts_with("MANIFEST-") && !s.contains('/') && !s.contains('\\'))
        .ok_or_else(|| Error::corruption(&cur, 0, "CURRENT does not name a manifest"))?;
    let number = name["MANIFEST-".len()..]
        .parse::<u64>()
        .map_err(|_| Error::corruption(&cur, 0, format!("bad manifest name {name:?}")))?;
    read_manifest(fs, &dir.join(name), number)
}

/// Reads one manifest file.
pub fn read_manifest(fs: &dyn Fs, path: &Path, number: u64) -> Result<ManifestContents> {
    let data = fs.map(path).map_err(|e| Error::io(path, e))?;
    let log = read_log(data, path, LogKind::Manifest)?;
    let mut edits = Vec::with_capacity(log.records.len());
    for (off, payload) in log.records {
        edits.push((off, VersionEdit::decode(&payload, path, off + 8)?));
    }
    Ok(ManifestContents {
        path: path.to_path_buf(),
        number,
        edits,
        tail: log.tail,
    })
}

/// The live manifest, open for appending edits.
pub struct ManifestWriter {
    log: LogWriter,
    number: u64,
}

impl ManifestWriter {
    /// Creates manifest `number` starting with `snapshot`, and makes it current.
    pub fn create(
        fs: &dyn Fs,
        dir: &Path,
        number: u64,
        snapshot: &VersionEdit,
    ) -> Result<ManifestWriter> {
        let payload = snapshot.encode();
        check_edit_len(&payload)?;
        let path = dir.join(manifest_name(number));
        let file = fs.create(&path).map_err(|e| Error::io(&path, e))?;
        let mut log = LogWriter::new(file, path, LogKind::Manifest);
        log.add(&payload);
        log.sync()?;
        let tmp = dir.join("CURRENT.tmp");
        let mut f = fs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.append(format!("{}\n", manifest_name(number)).as_bytes())
            .map_err(|e| Error::io(&tmp, e))?;
        f.sync().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        let cur = dir.join(CURRENT);
        fs.rename(&tmp, &cur).map_err(|e| Error::io(&cur, e))?;
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        Ok(ManifestWriter { log, number })
    }

    /// A writer that refuses every append (read-only opens).
    pub fn detached(file: Box<dyn crate::fs::WritableFile>) -> ManifestWriter {
        ManifestWriter {
            log: LogWriter::new(file, PathBuf::from("<read-only>"), LogKind::Manifest),
            number: 0,
        }
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn size(&self) -> u64 {
        self.log.len()
    }

    /// Appends one edit and fsyncs it.
    /// Appends and syncs one edit. An edit larger than a record the reader accepts is
    /// refused with [`Error::TooLarge`] before anything is written.
    pub fn append(&mut self, edit: &VersionEdit) -> Result<()> {
        let payload = edit.encode();
        check_edit_len(&payload)?;
        self.log.add(&payload);
        self.log.sync()
    }
}

/// Refuses a manifest record the reader would not read back.
fn check_edit_len(payload: &[u8]) -> Result<()> {
    if payload.len() > crate::log::MAX_RECORD_LEN {
        return Err(Error::TooLarge {
            what: "manifest edit",
            len: payload.len(),
            max: crate::log::MAX_RECORD_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    /// The writer's backstop for edits the reader would refuse: one byte past a record's
    /// limit is refused, the limit itself is not. (The zeroed buffers are not touched.)
    #[test]
    fn an_edit_past_the_record_limit_is_refused() {
        let max = crate::log::MAX_RECORD_LEN;
        assert!(check_edit_len(&vec![0u8; max]).is_ok());
        let e = check_edit_len(&vec![0u8; max + 1]).unwrap_err();
        assert!(
            matches!(e, Error::TooLarge { len, .. } if len == max + 1),
            "{e}"
        );
    }

    fn sample() -> VersionEdit {
        let mut e = VersionEdit::default();
        e.push(EditRecord::NextFile(42))
            .push(EditRecord::LastSeqno(1234))
            .push(EditRecord::LogNumber(7))
            .push(EditRecord::RegisterLayout {
                id: 2,
                spec: crate::PartitionSpec::Hash {
                    partitions: 4,
                    seed: 1,
                    hashed_prefix: None,
                }
                .to_bytes(),
            })
            .push(EditRecord::SetTarget(2))
            .push(EditRecord::AddFile(FileRecord {
                number: 9,
                size: 4096,
                layout_version: 2,
                partition: 3,
                level: 1,
                kind: TableKind::Data,
                smallest: Bytes::from("a"),
                largest: Bytes::from("z"),
                min_seqno: 1,
                max_seqno: 99,
                entries: 50,
            }))
            .push(EditRecord::DeleteFile(8))
            .push(EditRecord::RetireLayout(1))
            .push(EditRecord::Controller {
                epoch: 3,
                state: b"state".to_vec(),
            })
            .push(EditRecord::Pin {
                id: 2,
                pinned: true,
            });
        e
    }

    #[test]
    fn edit_round_trip_and_flips() {
        let e = sample();
        let b = e.encode();
        assert_eq!(VersionEdit::decode(&b, Path::new("m"), 0).unwrap(), e);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x04;
            let _ = VersionEdit::decode(&c, Path::new("m"), 0);
        }
        for n in 1..b.len() {
            // A cut either lands between records (a shorter edit) or is an error.
            if let Ok(d) = VersionEdit::decode(&b[..n], Path::new("m"), 0) {
                assert!(d.records.len() < e.records.len());
            }
        }
    }

    #[test]
    fn manifest_write_read_and_current() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ManifestWriter::create(&StdFs, dir.path(), 5, &sample()).unwrap();
        let mut e2 = VersionEdit::default();
        e2.push(EditRecord::SetTarget(1));
        w.append(&e2).unwrap();
        drop(w);
        let m = read_current(&StdFs, dir.path()).unwrap();
        assert_eq!(m.number, 5);
        assert_eq!(m.edits.len(), 2);
        assert_eq!(m.edits[0].1, sample());
        assert_eq!(m.edits[1].1, e2);
        assert!(m.tail.is_none());
    }

    #[test]
    fn flipped_manifest_byte_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ManifestWriter::create(&StdFs, dir.path(), 1, &sample()).unwrap();
        let mut e2 = VersionEdit::default();
        e2.push(EditRecord::SetTarget(1));
        w.append(&e2).unwrap();
        drop(w);
        let p = dir.path().join(manifest_name(1));
        let mut b = std::fs::read(&p).unwrap();
        b[30] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let e = read_current(&StdFs, dir.path()).err().unwrap();
        assert!(e.is_corruption());
        assert!(e.to_string().contains("MANIFEST-000001"), "{e}");
    }

    #[test]
    fn bad_current_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "garbage\n",
            "MANIFEST-x\n",
            "MANIFEST-../../etc\n",
            "MANIFEST-000001",
        ] {
            std::fs::write(dir.path().join(CURRENT), bad).unwrap();
            assert!(read_current(&StdFs, dir.path()).is_err(), "{bad:?}");
        }
    }
}
