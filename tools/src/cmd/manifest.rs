//! `sluice manifest DIR`: the edit log of the live manifest, record by record.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sluice::manifest::{EditRecord, ManifestContents};

use crate::error::{CmdResult, Status};
use crate::output::{self, file_name, size, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice manifest /data/ledger
  sluice manifest /data/ledger --json | jq '.edits[].records[] | select(.type == \"set_target\")'

Each edit is one atomic record of the manifest log, shown with its byte offset; the
first edit of a manifest is a snapshot of the whole state.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RecordJson {
    NextFile { value: u64 },
    LastSeqno { value: u64 },
    LogNumber { value: u64 },
    RegisterLayout { version: u32, spec: String },
    SetTarget { version: u32 },
    RetireLayout { version: u32 },
    /// Every version below `version` not registered has retired.
    RetiredBelow { version: u32 },
    AddFile {
        file: u64,
        size: u64,
        version: u32,
        partition: u32,
        level: u8,
        kind: &'static str,
        smallest: String,
        largest: String,
        min_seqno: u64,
        max_seqno: u64,
        entries: u64,
    },
    DeleteFile { file: u64 },
    Controller { epoch: u64, state_bytes: usize },
    Pin { version: u32, pinned: bool },
    /// Whether data movement between layouts is held (`Db::hold_migration`).
    MigrationHold { held: bool },
}

#[derive(Serialize)]
struct EditJson {
    offset: u64,
    records: Vec<RecordJson>,
}

#[derive(Serialize)]
struct ManifestJson {
    file: String,
    bytes: u64,
    edits: Vec<EditJson>,
    torn_tail: Option<crate::cmd::info::TornJson>,
    /// Why the manifest's edits do not replay into a database state (exit 3), if they do not.
    replay_error: Option<String>,
}

fn spec_text(b: &[u8]) -> String {
    match sluice::PartitionSpec::from_bytes(b) {
        Ok(s) => s.to_string(),
        Err(e) => format!("<undecodable: {e}>"),
    }
}

fn record_json(r: &EditRecord, ctx: &Ctx) -> RecordJson {
    match r {
        EditRecord::NextFile(v) => RecordJson::NextFile { value: *v },
        EditRecord::LastSeqno(v) => RecordJson::LastSeqno { value: *v },
        EditRecord::LogNumber(v) => RecordJson::LogNumber { value: *v },
        EditRecord::RegisterLayout { id, spec } => RecordJson::RegisterLayout {
            version: *id,
            spec: spec_text(spec),
        },
        EditRecord::SetTarget(v) => RecordJson::SetTarget { version: *v },
        EditRecord::RetireLayout(v) => RecordJson::RetireLayout { version: *v },
        EditRecord::RetiredBelow(v) => RecordJson::RetiredBelow { version: *v },
        EditRecord::AddFile(f) => RecordJson::AddFile {
            file: f.number,
            size: f.size,
            version: f.layout_version,
            partition: f.partition,
            level: f.level,
            kind: crate::cmd::sst::kind_str(f.kind),
            smallest: ctx.bytes(&f.smallest),
            largest: ctx.bytes(&f.largest),
            min_seqno: f.min_seqno,
            max_seqno: f.max_seqno,
            entries: f.entries,
        },
        EditRecord::DeleteFile(n) => RecordJson::DeleteFile { file: *n },
        EditRecord::Controller { epoch, state } => RecordJson::Controller {
            epoch: *epoch,
            state_bytes: state.len(),
        },
        EditRecord::Pin { id, pinned } => RecordJson::Pin {
            version: *id,
            pinned: *pinned,
        },
        EditRecord::MigrationHold(held) => RecordJson::MigrationHold { held: *held },
    }
}

fn record_text(r: &RecordJson) -> String {
    match r {
        RecordJson::NextFile { value } => format!("next_file {value}"),
        RecordJson::LastSeqno { value } => format!("last_seqno {value}"),
        RecordJson::LogNumber { value } => format!("log_number {value}"),
        RecordJson::RegisterLayout { version, spec } => format!("register_layout v{version} {spec}"),
        RecordJson::SetTarget { version } => format!("set_target v{version}"),
        RecordJson::RetireLayout { version } => format!("retire_layout v{version}"),
        RecordJson::RetiredBelow { version } => format!("retired_below v{version}"),
        RecordJson::AddFile {
            file,
            size: sz,
            version,
            partition,
            level,
            kind,
            smallest,
            largest,
            min_seqno,
            max_seqno,
            entries,
        } => format!(
            "add_file {file:06}.sst v{version}/{partition} L{level} {kind} {} [{smallest} .. {largest}] seqno {min_seqno}..{max_seqno} entries {entries}",
            size(*sz)
        ),
        RecordJson::DeleteFile { file } => format!("delete_file {file:06}.sst"),
        RecordJson::Controller { epoch, state_bytes } => format!("controller epoch {epoch} ({state_bytes} bytes of state)"),
        RecordJson::Pin { version, pinned } => {
            format!("{} v{version}", if *pinned { "pin" } else { "unpin" })
        }
        RecordJson::MigrationHold { held } => format!("migration_hold {held}"),
    }
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    // Same safety checks as every reader: CURRENT and the manifest stay inside DIR.
    let st = sluice::inspect::read_dir_state(&args.dir);
    // Why the manifest does not replay, when its records decode anyway.
    let mut replay_error = None;
    let m: ManifestContents = match st {
        Ok(s) => sluice::manifest::read_manifest(&sluice::fs::StdFs, &s.manifest_path, s.manifest_number)?,
        // A manifest whose replay fails (e.g. an edit that breaks a rule, or no edits at
        // all) is still worth printing when its records decode; the run then fails (exit
        // 3) with the reason, which the JSON carries as `replay_error`.
        Err(e) if e.is_corruption() => {
            // The same refusals as read_dir_state (symlinks out, FIFOs, oversized files).
            match sluice::inspect::read_manifest_safely(&args.dir) {
                Ok((m, _)) => {
                    replay_error = Some(e.to_string());
                    m
                }
                Err(_) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let status = crate::error::verdict(if replay_error.is_some() { Status::Failed } else { Status::Ok });
    let bytes = std::fs::metadata(&m.path).map(|md| md.len()).unwrap_or(0);
    let edits: Vec<EditJson> = m
        .edits
        .iter()
        .map(|(off, e)| EditJson {
            offset: *off,
            records: e.records.iter().map(|r| record_json(r, ctx)).collect(),
        })
        .collect();
    let torn: Option<crate::cmd::info::TornJson> = m.tail.as_ref().map(Into::into);
    if ctx.json {
        output::json(
            out,
            &ManifestJson {
                file: file_name(&m.path),
                bytes,
                edits,
                torn_tail: torn,
                replay_error,
            },
        )?;
        return Ok(status);
    }
    writeln!(out, "{} ({}, {} edits)", file_name(&m.path), size(bytes), edits.len())?;
    for (i, e) in edits.iter().enumerate() {
        writeln!(out, "edit {} @{} ({} records)", i + 1, e.offset, e.records.len())?;
        for r in &e.records {
            writeln!(out, "  {}", record_text(r))?;
        }
    }
    if let Some(t) = &torn {
        writeln!(out, "torn tail at offset {}: {} bytes dropped ({})", t.offset, t.bytes, t.reason)?;
    }
    if let Some(e) = &replay_error {
        writeln!(out, "error: the manifest does not replay: {e}")?;
    }
    Ok(status)
}
