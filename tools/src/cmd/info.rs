//! `sluice info DIR`: the shape of a database from its manifest alone (no SSTable is
//! opened, no data block read): versions, target, files/bytes/entries per version,
//! partition and level, WAL files, migration state and progress.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{CmdResult, Status};
use crate::output::{self, count, file_name, size, Ctx};
use crate::summary::{Summary, VersionSummary};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice info /data/ledger
  sluice info /data/ledger --html ledger.html     # one self-contained page with charts
  sluice info /data/ledger --json | jq .migration

Reads only CURRENT, the manifest and file sizes: fast on any database size.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// Also write a self-contained HTML page (partition balance, LSM shape, migration)
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// List every partition (by default at most 32 per version, the largest)
    #[arg(long)]
    pub all_partitions: bool,
}

#[derive(Serialize)]
struct ManifestJson {
    file: String,
    bytes: u64,
    edits: usize,
    torn_tail: Option<TornJson>,
}

#[derive(Serialize)]
pub struct TornJson {
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

impl From<&sluice::log::TornTail> for TornJson {
    fn from(t: &sluice::log::TornTail) -> TornJson {
        TornJson {
            offset: t.offset,
            bytes: t.dropped_bytes,
            reason: t.reason.clone(),
        }
    }
}

#[derive(Serialize)]
struct WalJson {
    file: String,
    bytes: u64,
    live: bool,
}

#[derive(Serialize)]
struct ControllerJson {
    epoch: u64,
    state_bytes: usize,
}

#[derive(Serialize)]
struct InfoJson<'a> {
    dir: String,
    manifest: ManifestJson,
    last_seqno: u64,
    next_file: u64,
    log_number: u64,
    wal: Vec<WalJson>,
    controller: Option<ControllerJson>,
    #[serde(flatten)]
    summary: &'a Summary,
}

const SHOWN_PARTITIONS: usize = 32;

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let st = sluice::inspect::check_dir_safety(&args.dir)?;
    let sum = Summary::of(&st);
    if let Some(path) = &args.html {
        let page = crate::html::info_page(&st, &sum);
        crate::output::write_report(path, page.as_bytes(), &args.dir)?;
        ctx.note(format!("wrote {}", path.display()));
    }
    if ctx.json {
        let doc = InfoJson {
            dir: output::path_str(&args.dir),
            manifest: ManifestJson {
                file: file_name(&st.manifest_path),
                bytes: st.manifest_bytes,
                edits: st.manifest_edits,
                torn_tail: st.manifest_torn_tail.as_ref().map(Into::into),
            },
            last_seqno: st.last_seqno,
            next_file: st.next_file,
            log_number: st.log_number,
            wal: st
                .wals
                .iter()
                .map(|w| WalJson {
                    file: file_name(&w.path),
                    bytes: w.size,
                    live: w.live,
                })
                .collect(),
            controller: st.controller.as_ref().map(|(epoch, s)| ControllerJson {
                epoch: *epoch,
                state_bytes: s.len(),
            }),
            summary: &sum,
        };
        output::json(out, &doc)?;
        return Ok(Status::Ok);
    }

    writeln!(out, "Database    {}", args.dir.display())?;
    write!(
        out,
        "Manifest    {} ({} edits, {})",
        file_name(&st.manifest_path),
        st.manifest_edits,
        size(st.manifest_bytes)
    )?;
    if let Some(t) = &st.manifest_torn_tail {
        write!(out, "; torn tail of {} bytes at offset {}", t.dropped_bytes, t.offset)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Sequence    last flushed {}, next file {}, log number {}",
        st.last_seqno, st.next_file, st.log_number
    )?;
    if st.wals.is_empty() {
        writeln!(out, "WAL         none")?;
    }
    for (i, w) in st.wals.iter().enumerate() {
        writeln!(
            out,
            "{}{} {} ({})",
            if i == 0 { "WAL         " } else { "            " },
            file_name(&w.path),
            size(w.size),
            if w.live { "live" } else { "obsolete" }
        )?;
    }
    let data_files: usize = sum.versions.iter().map(|v| v.files).sum();
    let ptr_files: usize = sum.versions.iter().map(|v| v.pointer_files).sum();
    writeln!(
        out,
        "Files       {} SSTables, {} ({} data, {} forwarding-pointer)",
        sum.files,
        size(sum.bytes),
        data_files,
        ptr_files
    )?;
    if let Some(t) = sum.versions.iter().find(|v| v.id == sum.target) {
        writeln!(out, "Target      v{} {}", t.id, t.spec)?;
    }
    let m = &sum.migration;
    match m.state {
        "migrating" => {
            let left: Vec<String> = m
                .draining
                .iter()
                .map(|d| format!("v{} {} files ({})", d.version, d.files_left, size(d.bytes_left)))
                .collect();
            let ptrs = m
                .draining
                .iter()
                .map(|d| d.forwarding_pointers)
                .fold(0, u64::saturating_add);
            writeln!(
                out,
                "Migration   migrating to v{}: {} of live data bytes in the target; left: {}; {} forwarding pointer{}",
                m.target,
                output::pct(m.progress),
                left.join(", "),
                count(ptrs),
                if ptrs == 1 { "" } else { "s" }
            )?;
        }
        "planned" => writeln!(
            out,
            "Migration   planned: candidate {} registered, not yet the target",
            m.candidates.iter().map(|c| format!("v{c}")).collect::<Vec<_>>().join(", ")
        )?,
        _ => writeln!(out, "Migration   stable (one live layout version)")?,
    }
    if !sum.retired.is_empty() {
        writeln!(
            out,
            "Retired     {}",
            sum.retired.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(", ")
        )?;
    }
    match &st.controller {
        Some((epoch, s)) => writeln!(out, "Controller  epoch {epoch}, {} bytes of state", s.len())?,
        None => writeln!(out, "Controller  none")?,
    }
    let levels = sum.active_levels();
    for v in &sum.versions {
        writeln!(out)?;
        version_table(out, v, &levels, args.all_partitions)?;
    }
    writeln!(out)?;
    writeln!(out, "Levels (all live versions)")?;
    for l in sum.levels.iter().filter(|l| levels.contains(&l.level)) {
        writeln!(out, "  L{}  {:>8} files  {:>10}", l.level, count(l.files as u64), size(l.bytes))?;
    }
    Ok(Status::Ok)
}

fn version_table(out: &mut dyn Write, v: &VersionSummary, levels: &[usize], all: bool) -> std::io::Result<()> {
    writeln!(
        out,
        "v{}  {}  {}  fingerprint {}",
        v.id, v.spec, v.role, v.fingerprint
    )?;
    let mut header = format!(
        "  {:>9}  {:>6}  {:>10}  {:>10}  {:>6}",
        "partition", "files", "bytes", "entries", "ptrs"
    );
    for l in levels {
        header.push_str(&format!("  {:>4}", format!("L{l}")));
    }
    writeln!(out, "{header}")?;
    let mut parts: Vec<_> = v.partitions.iter().filter(|p| p.files + p.pointer_files > 0).collect();
    let nonempty = parts.len();
    let hidden = if !all && parts.len() > SHOWN_PARTITIONS {
        parts.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.partition.cmp(&b.partition)));
        parts.truncate(SHOWN_PARTITIONS);
        parts.sort_by_key(|p| p.partition);
        nonempty - SHOWN_PARTITIONS
    } else {
        0
    };
    for p in parts {
        let mut line = format!(
            "  {:>9}  {:>6}  {:>10}  {:>10}  {:>6}",
            p.partition,
            count(p.files as u64),
            size(p.bytes),
            count(p.entries),
            count(p.pointers)
        );
        for l in levels.iter().map(|&l| &p.levels[l]) {
            let c = if l.files == 0 { ".".to_string() } else { l.files.to_string() };
            line.push_str(&format!("  {c:>4}"));
        }
        writeln!(out, "{line}")?;
    }
    if hidden > 0 {
        writeln!(out, "  … {hidden} more non-empty partitions (--all-partitions lists them)")?;
    }
    let empty = v.partitions.len() - nonempty;
    let mut line = format!(
        "  {:>9}  {:>6}  {:>10}  {:>10}  {:>6}",
        "total",
        count(v.files as u64),
        size(v.bytes),
        count(v.entries),
        count(v.pointers)
    );
    for l in levels.iter().map(|&l| &v.levels[l]) {
        line.push_str(&format!("  {:>4}", l.files));
    }
    writeln!(out, "{line}")?;
    if empty > 0 {
        writeln!(out, "  ({} of {} partitions hold no files)", empty, v.partitions.len())?;
    }
    Ok(())
}
