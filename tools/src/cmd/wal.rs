//! `sluice wal DIR`: every record of every WAL file in the directory.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sluice::inspect::Problem;

use crate::error::{CliError, CmdResult, Status};
use crate::output::{self, count, file_name, size, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice wal /data/ledger
  sluice wal /data/ledger --max-value 16
  sluice wal /data/ledger --json | jq '.files[].records | length'

A torn tail at the end of the newest WAL is what a crash leaves behind and is reported as a
note; damage in the middle of a WAL (a valid record after a bad one) is corruption: exit 3
with the file and offset.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// Print at most this many bytes of each value
    #[arg(long, value_name = "BYTES")]
    pub max_value: Option<usize>,
}

#[derive(Serialize)]
struct OpJson {
    seqno: u64,
    kind: &'static str,
    key: String,
    value: Option<String>,
    value_len: usize,
}

#[derive(Serialize)]
struct RecordJson {
    offset: u64,
    seqno: u64,
    ops: Vec<OpJson>,
}

#[derive(Serialize)]
struct FileJson {
    file: String,
    bytes: u64,
    /// At or above the manifest's log number: holds writes not yet in SSTables.
    live: bool,
    records: Vec<RecordJson>,
    /// The WAL that continues the log, when this one was rotated away from.
    successor: Option<String>,
    /// It records that every earlier WAL was durable (before its first synced write).
    earlier_durable: bool,
    torn_tail: Option<crate::cmd::info::TornJson>,
}

#[derive(Serialize)]
struct WalJson {
    dir: String,
    files: Vec<FileJson>,
    /// What makes the directory fail to open: an unreadable manifest, a missing first WAL.
    problems: Vec<output::ProblemJson>,
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let dir = &args.dir;
    // The manifest says which WALs are still live; without a readable one, show them all.
    // Either way the run fails (exit 3) if the directory would not open: an unreadable
    // manifest, or no WAL where the manifest's chain starts.
    //
    // A live process flushing meanwhile deletes the WALs its manifest edit made obsolete
    // and moves the log number past them: a WAL found missing, at the chain's start or
    // when read, while the manifest changed is that process's work, and the look starts
    // again (as `verify` does; up to a few times, then busy, exit 4).
    let mut attempt = 0;
    let (problems, wals, read) = loop {
        let before = sluice::inspect::current_fingerprint(dir);
        let mut problems: Vec<Problem> = Vec::new();
        let wals = match sluice::inspect::read_dir_state(dir) {
            Ok(st) => {
                problems.extend(st.first_wal_missing());
                st.wals
            }
            Err(e @ sluice::Error::NotADatabase { .. }) => return Err(e.into()),
            Err(e) => {
                problems.push(Problem::from_error("manifest", &e));
                sluice::inspect::list_wal_files(dir)?
            }
        };
        let mut read = Vec::with_capacity(wals.len());
        for w in &wals {
            match sluice::inspect::check_inside(dir, &w.path) {
                Ok(_) => read.push(sluice::inspect::read_wal_file(&w.path)),
                Err(e) if gone(&e) => read.push(Err(e)),
                Err(e) => return Err(e.into()),
            }
        }
        let vanished = problems.iter().any(|p| p.check == "missing-file")
            || read.iter().any(|r| r.as_ref().is_err_and(gone));
        if !vanished || sluice::inspect::current_fingerprint(dir) == before {
            break (problems, wals, read);
        }
        attempt += 1;
        if attempt == 5 {
            return Err(sluice::Error::Busy {
                path: dir.to_path_buf(),
                reason: "WALs keep changing under a live process".into(),
            }
            .into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
    };
    if problems.iter().any(|p| p.check == "manifest") {
        ctx.note("showing every WAL file: the manifest that says which are live does not read");
    }
    let status = crate::error::verdict(if problems.is_empty() { Status::Ok } else { Status::Failed });
    let mut files = Vec::new();
    let mut first_error: Option<CliError> = None;
    // The live WALs are replayed as one sequence: each record's seqno must follow the
    // last write of the record before it, across files too (a duplicated or missing WAL
    // breaks it, and recovery refuses it).
    let mut last_seqno: Option<u64> = None;
    for (w, r) in wals.iter().zip(read) {
        match r {
            // An obsolete WAL (below the log number) is deleted by a live process right
            // after the manifest edit that made it obsolete: nothing to show.
            Err(e) if !w.live && gone(&e) => {}
            Ok(c) => files.push({
                if w.live {
                    for r in &c.records {
                        if let Some(prev) = last_seqno.filter(|&p| r.seqno != p.saturating_add(1)) {
                            let e = sluice::Error::corruption(
                                &w.path,
                                r.offset,
                                format!("seqno {} follows {prev}: records are missing or repeated", r.seqno),
                            );
                            ctx.note(format!("error: {e}"));
                            first_error.get_or_insert(e.into());
                        }
                        last_seqno = Some(r.seqno.saturating_add(r.ops.len().max(1) as u64 - 1));
                    }
                }
                FileJson {
                file: file_name(&w.path),
                bytes: w.size,
                live: w.live,
                records: c
                    .records
                    .iter()
                    .map(|r| RecordJson {
                        offset: r.offset,
                        seqno: r.seqno,
                        ops: r
                            .ops
                            .iter()
                            .map(|o| OpJson {
                                seqno: o.seqno,
                                kind: output::kind_name(o.kind),
                                key: ctx.bytes(&o.key),
                                value: (o.kind == sluice::Kind::Value).then(|| ctx.value(&o.value, args.max_value)),
                                value_len: o.value.len(),
                            })
                            .collect(),
                    })
                    .collect(),
                successor: c.successor.map(|n| format!("{n:06}.log")),
                earlier_durable: c.notes_earlier,
                torn_tail: c.tail.as_ref().map(Into::into),
            }
            }),
            Err(e) => {
                // Keep going so every WAL is shown; fail at the end.
                ctx.note(format!("error: {e}"));
                if first_error.is_none() {
                    first_error = Some(e.into());
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if ctx.json {
        output::json(
            out,
            &WalJson {
                dir: output::path_str(dir),
                files,
                problems: problems.iter().map(Into::into).collect(),
            },
        )?;
        return Ok(status);
    }
    for p in &problems {
        writeln!(out, "{}", output::problem_line(p))?;
    }
    if files.is_empty() {
        writeln!(out, "no WAL files")?;
    }
    for f in &files {
        let ops: usize = f.records.iter().map(|r| r.ops.len()).sum();
        writeln!(
            out,
            "{} ({}, {}): {} records, {} ops",
            f.file,
            size(f.bytes),
            if f.live { "live" } else { "obsolete" },
            count(f.records.len() as u64),
            count(ops as u64)
        )?;
        for r in &f.records {
            writeln!(out, "  @{} seqno {} ({} ops)", r.offset, r.seqno, r.ops.len())?;
            for o in &r.ops {
                match &o.value {
                    Some(v) => writeln!(out, "    {} put {} = {}", o.seqno, o.key, v)?,
                    None => writeln!(out, "    {} {} {}", o.seqno, o.kind, o.key)?,
                }
            }
        }
        if f.earlier_durable {
            writeln!(out, "  records that every earlier WAL was durable")?;
        }
        if let Some(n) = &f.successor {
            writeln!(out, "  continues in {n}")?;
        }
        if let Some(t) = &f.torn_tail {
            writeln!(
                out,
                "  torn tail at offset {}: {} bytes dropped by recovery ({})",
                t.offset, t.bytes, t.reason
            )?;
        }
    }
    Ok(status)
}

/// The file is not there (deleted, by a live process or otherwise).
fn gone(e: &sluice::Error) -> bool {
    matches!(e, sluice::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}
