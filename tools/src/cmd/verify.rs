//! `sluice verify DIR [--deep]`: every check the engine can make on a directory, reporting
//! every problem with its file and offset. Exit 3 if any is an error.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sluice::inspect::{verify_dir, VerifyOptions};

use crate::error::{CmdResult, Status};
use crate::output::{self, count, size, Ctx};
use crate::progress::Progress;

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice verify /data/ledger
  sluice verify /data/ledger --deep                 # + cross-layout consistency
  sluice verify /data/ledger --deep --sample 0      # + a point read of every key
  sluice verify /data/ledger --json | jq '.problems[] | select(.severity == \"error\")'

Checks: CURRENT and the manifest; every SSTable (footer, metadata blocks, every data block
checksum, every entry decodes, internal order, key/seqno ranges and counts against the
properties, every key maps to the table's own partition under its own version's
function, forwarding pointers name live versions); the manifest against the files
(missing, wrong size, wrong owner or fingerprint, overlapping levels; orphans as
warnings); every WAL (checksums, batch decoding, seqno continuity).
--deep also opens the directory read-only and checks that every key resolves to one newest
entry across all live layouts, that forwarded values exist in their new layout, and that
the merged scan and point reads agree.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// Also run the cross-layout consistency check (reads every key)
    #[arg(long)]
    pub deep: bool,
    /// With --deep: about this many point reads compared with the merged scan (0 = every key)
    #[arg(long, default_value_t = 10_000, value_name = "N", requires = "deep")]
    pub sample: u64,
}

#[derive(Serialize)]
struct DeepJson {
    keys: u64,
    visible: u64,
    deleted: u64,
    memtable_only: u64,
    in_several_layouts: u64,
    moved: u64,
    reads_checked: u64,
}

#[derive(Serialize)]
struct VerifyJson {
    dir: String,
    ok: bool,
    errors: usize,
    warnings: usize,
    tables: u64,
    table_bytes: u64,
    blocks: u64,
    entries: u64,
    wal_files: u64,
    wal_records: u64,
    manifest_edits: u64,
    deep: Option<DeepJson>,
    problems: Vec<output::ProblemJson>,
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let progress = Progress::new(ctx);
    let opts = VerifyOptions {
        deep: args.deep,
        sample_reads: if args.sample == 0 { None } else { Some(args.sample) },
    };
    let rep = verify_dir(&args.dir, &opts, &progress)?;
    progress.finish();
    let errors = rep.errors().count();
    let warnings = rep.problems.len() - errors;
    let status = crate::error::verdict(if errors == 0 { Status::Ok } else { Status::Failed });
    if ctx.json {
        output::json(
            out,
            &VerifyJson {
                dir: output::path_str(&args.dir),
                ok: errors == 0,
                errors,
                warnings,
                tables: rep.tables,
                table_bytes: rep.table_bytes,
                blocks: rep.blocks,
                entries: rep.entries,
                wal_files: rep.wal_files,
                wal_records: rep.wal_records,
                manifest_edits: rep.manifest_edits,
                deep: rep.deep.as_ref().map(|d| DeepJson {
                    keys: d.keys,
                    visible: d.visible,
                    deleted: d.deleted,
                    memtable_only: d.memtable_only,
                    in_several_layouts: d.in_several_layouts,
                    moved: d.moved,
                    reads_checked: d.reads_checked,
                }),
                problems: rep.problems.iter().map(Into::into).collect(),
            },
        )?;
    } else {
        for p in &rep.problems {
            writeln!(out, "{}", output::problem_line(p))?;
        }
        writeln!(
            out,
            "checked {} SSTables ({}, {} blocks, {} entries), {} WAL files ({} records), {} manifest edits",
            count(rep.tables),
            size(rep.table_bytes),
            count(rep.blocks),
            count(rep.entries),
            rep.wal_files,
            count(rep.wal_records),
            rep.manifest_edits
        )?;
        if let Some(d) = &rep.deep {
            writeln!(
                out,
                "deep: {} keys across layouts ({} visible, {} deleted, {} in several layouts, {} moved), {} memtable-only, {} point reads compared",
                count(d.keys),
                count(d.visible),
                count(d.deleted),
                count(d.in_several_layouts),
                count(d.moved),
                count(d.memtable_only),
                count(d.reads_checked)
            )?;
        } else if args.deep && errors > 0 {
            writeln!(out, "deep: skipped (fix the errors above first)")?;
        }
        writeln!(
            out,
            "{}: {} error{}, {} warning{}",
            if errors == 0 { "OK" } else { "FAILED" },
            errors,
            if errors == 1 { "" } else { "s" },
            warnings,
            if warnings == 1 { "" } else { "s" }
        )?;
    }
    Ok(status)
}
