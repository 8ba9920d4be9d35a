//! `sluice recover DIR [--point-in-time]`: opens the database for writing, which replays
//! its write-ahead logs into a table and starts a fresh log, closes it cleanly, and reports
//! what recovery found. The lock is taken: no other process may hold the directory.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sluice::{Db, Options, WalRecovery};

use crate::error::{CliError, CmdResult, Status};
use crate::output::{self, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice recover /data/ledger
  sluice recover /data/ledger --point-in-time
  sluice recover /data/ledger --point-in-time --json

Without --point-in-time, recovery is the engine's default: a torn last record (a crash) is
dropped; damage with intact records after it is refused (exit 3), because skipping it
would leave a hole. After a power loss on a file system that writes unsynced pages back
out of order, that damage is what the crash left: --point-in-time then keeps every batch
before the first damaged record and drops it and everything after it. Use it knowingly: if
the damage is anything but a power loss, synced writes after it are dropped too. Either
way the recovered state is written to a table and the old logs are removed, so later opens
(with any setting) see the same state.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// Recover as of the record before the first damaged WAL record, dropping it and
    /// everything after it
    #[arg(long)]
    pub point_in_time: bool,
}

#[derive(Serialize)]
struct TornJson {
    file: String,
    offset: u64,
    bytes_dropped: u64,
}

#[derive(Serialize)]
struct RecoverJson {
    dir: String,
    mode: &'static str,
    wal_files: usize,
    wal_batches: u64,
    wal_entries: u64,
    torn_tail: Option<TornJson>,
    wal_dropped_after_damage: u64,
    /// Point in time: the WAL missing from the chain that recovery stopped before.
    wal_missing: Option<String>,
    /// A WAL rotated away from that a crash cut short before its background fsync; the
    /// later WALs (unsynced writes only) were dropped.
    wal_cut_short: Option<TornJson>,
    /// Point in time: an older WAL known durable whole that did not end in the record
    /// naming its successor (cut at a record boundary); recovery stopped at its end.
    wal_unended: Option<TornJson>,
    manifest_torn_tail: Option<TornJson>,
    orphans_removed: usize,
    last_seqno: u64,
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    sluice::inspect::check_dir_safety(&args.dir)?;
    let (mode, wal_recovery) = if args.point_in_time {
        ("point-in-time", WalRecovery::PointInTime)
    } else {
        ("strict", WalRecovery::Strict)
    };
    let opts = Options {
        create_if_missing: false,
        wal_recovery,
        // Open, recover, close: nothing else runs.
        migration_bytes_per_sec: 0,
        move_bytes_per_sec: 0,
        ..Options::default()
    };
    let db = Db::open(&args.dir, opts).map_err(|e| {
        // Only the refusals point-in-time recovery resolves: damage with intact records
        // after it, and a WAL missing from the chain of WALs (it recovers what comes
        // before either). A malformed batch fails the same way in either mode.
        let resolvable = !args.point_in_time
            && match &e {
                sluice::Error::WalDamaged { .. } => true,
                sluice::Error::Corruption { reason, .. } => reason.starts_with("missing: WAL"),
                _ => false,
            };
        let mut err = CliError::from(e);
        if resolvable {
            err.message.push_str(&format!(
                "; `sluice recover {} --point-in-time` recovers as of the last record before it",
                args.dir.display()
            ));
        }
        err
    })?;
    let rep = db.recovery_report().clone();
    let last_seqno = db.latest_seqno();
    db.close()?;
    let file = |p: &std::path::Path| {
        p.file_name()
            .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
    };
    let doc = RecoverJson {
        dir: args.dir.display().to_string(),
        mode,
        wal_files: rep.wal_files,
        wal_batches: rep.wal_batches,
        wal_entries: rep.wal_entries,
        torn_tail: rep.torn_tail.as_ref().map(|(p, offset, dropped)| TornJson {
            file: file(p),
            offset: *offset,
            bytes_dropped: *dropped,
        }),
        wal_dropped_after_damage: rep.wal_dropped_after_damage,
        wal_missing: rep.wal_missing.clone(),
        wal_cut_short: rep.wal_cut_short.as_ref().map(|(p, offset, dropped)| TornJson {
            file: file(p),
            offset: *offset,
            bytes_dropped: *dropped,
        }),
        wal_unended: rep.wal_unended.as_ref().map(|(p, offset)| TornJson {
            file: file(p),
            offset: *offset,
            bytes_dropped: rep.wal_dropped_after_damage,
        }),
        manifest_torn_tail: rep.manifest_torn_tail.as_ref().map(|(p, offset)| TornJson {
            file: file(p),
            offset: *offset,
            bytes_dropped: 0,
        }),
        orphans_removed: rep.orphans_removed,
        last_seqno,
    };
    if ctx.json {
        output::json(out, &doc)?;
        return Ok(Status::Ok);
    }
    writeln!(
        out,
        "recovered {} ({} recovery): {} WAL file(s), {} batch(es), {} entries replayed; last seqno {}",
        doc.dir, mode, doc.wal_files, doc.wal_batches, doc.wal_entries, last_seqno
    )?;
    if let Some(t) = &doc.torn_tail {
        if doc.wal_dropped_after_damage > 0 {
            writeln!(
                out,
                "damaged record in {} at offset {}: dropped it and everything after it ({} bytes, later WALs included)",
                t.file, t.offset, doc.wal_dropped_after_damage
            )?;
        } else {
            writeln!(
                out,
                "torn end of {} at offset {} dropped ({} bytes: a write the crash interrupted)",
                t.file, t.offset, t.bytes_dropped
            )?;
        }
    }
    if let Some(m) = &doc.wal_missing {
        writeln!(
            out,
            "a WAL is missing, recovered up to it and dropped what followed ({} bytes): {m}",
            doc.wal_dropped_after_damage
        )?;
    }
    if let Some(t) = &doc.wal_cut_short {
        writeln!(
            out,
            "{} was cut short by a crash before its background fsync, at offset {}: dropped the later WALs, which held only unsynced writes ({} bytes)",
            t.file, t.offset, t.bytes_dropped
        )?;
    }
    if let Some(t) = &doc.wal_unended {
        writeln!(
            out,
            "{} does not end in the record naming the WAL after it (cut at offset {}; writes at its end may be lost): recovered up to it and dropped the later WALs ({} bytes)",
            t.file, t.offset, t.bytes_dropped
        )?;
    }
    if let Some(t) = &doc.manifest_torn_tail {
        writeln!(out, "torn end of {} at offset {} dropped", t.file, t.offset)?;
    }
    if doc.orphans_removed > 0 {
        writeln!(
            out,
            "{} file(s) no version referenced removed",
            doc.orphans_removed
        )?;
    }
    Ok(Status::Ok)
}
