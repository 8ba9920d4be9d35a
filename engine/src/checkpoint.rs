//! Checkpoints: an openable copy of the database made of hard links to the live SSTables
//! (which are immutable), copies of the WAL up to the moment of the checkpoint, and a fresh
//! manifest describing exactly that state.

use std::path::Path;

use crate::db::Inner;
use crate::error::{Error, Result};
use crate::manifest::ManifestWriter;
use crate::recovery::wal_files;

impl Inner {
    pub fn checkpoint(&self, dest: &Path) -> Result<()> {
        let fs = self.fs.as_ref();
        if fs.exists(dest) && !fs.list(dest).map_err(|e| Error::io(dest, e))?.is_empty() {
            return Err(Error::InvalidOption {
                name: "checkpoint directory",
                reason: format!("{} exists and is not empty", dest.display()),
            });
        }
        fs.create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
        // Freeze a consistent cut: no commit (wal lock) and no install (core lock) while
        // the file set, the WAL list and their lengths are read.
        let (view, wals, edit, manifest_number) = {
            let mut wal = self.wal.lock();
            wal.log.flush()?;
            let active = (wal.number, wal.log.len());
            let core = self.core.lock();
            let view = self.view.load_full();
            let mut wals = Vec::new();
            for (n, p) in wal_files(fs, &self.dir, core.log_number)? {
                let len = if n == active.0 {
                    active.1
                } else {
                    fs.file_size(&p).map_err(|e| Error::io(&p, e))?
                };
                wals.push((p, len));
            }
            let edit = self.snapshot_edit(&core, &view.files);
            (view, wals, edit, core.next_file)
        };
        for f in view.files.all_files() {
            let src = f.table.path();
            let name = src
                .file_name()
                .ok_or_else(|| Error::corruption(src, 0, "no file name"))?;
            let dst = dest.join(name);
            if fs.hard_link(src, &dst).is_err() {
                copy_prefix(self, src, &dst, f.size)?;
            }
        }
        for (src, len) in &wals {
            let name = src
                .file_name()
                .ok_or_else(|| Error::corruption(src, 0, "no file name"))?;
            copy_prefix(self, src, &dest.join(name), *len)?;
        }
        ManifestWriter::create(fs, dest, manifest_number, &edit)?;
        fs.sync_dir(dest).map_err(|e| Error::io(dest, e))?;
        Ok(())
    }
}

/// Copies the first `len` bytes of `src` to a new file `dst`, fsynced.
fn copy_prefix(inner: &Inner, src: &Path, dst: &Path, len: u64) -> Result<()> {
    let fs = inner.fs.as_ref();
    let data = fs.map(src).map_err(|e| Error::io(src, e))?;
    let n = (len as usize).min(data.len());
    let mut f = fs.create(dst).map_err(|e| Error::io(dst, e))?;
    f.append(&data[..n]).map_err(|e| Error::io(dst, e))?;
    f.sync().map_err(|e| Error::io(dst, e))
}
