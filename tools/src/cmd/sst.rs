//! `sluice sst dump|props|check FILE`: one SSTable, read with the engine's own reader.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sluice::inspect::{check_table_file, DirState, TableExpect};
use sluice::sst::{Table, TableKind, TableProps};

use crate::error::{CliError, CmdResult, Status};
use crate::output::{self, count, size, Ctx};
use crate::progress::Progress;

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice sst props /data/ledger/000042.sst
  sluice sst dump /data/ledger/000042.sst --limit 20
  sluice sst dump /data/ledger/000042.sst --hex --json
  sluice sst check /data/ledger/000042.sst

`check` reads every block; when the file sits in a database directory, the layout
version's partition function is taken from that directory's manifest and every key is
checked against the file's own partition.")]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Print every entry: key, seqno, kind, value
    Dump {
        /// SSTable file
        file: PathBuf,
        /// Stop after this many entries
        #[arg(long)]
        limit: Option<u64>,
        /// Print at most this many bytes of each value
        #[arg(long, value_name = "BYTES")]
        max_value: Option<usize>,
    },
    /// Print the properties (owner version, partition, ranges, counts) and block handles
    Props {
        /// SSTable file
        file: PathBuf,
    },
    /// Check every block checksum, every entry and the properties; exit 3 on any problem
    Check {
        /// SSTable file
        file: PathBuf,
    },
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    match args.action {
        Action::Dump { file, limit, max_value } => dump(&file, limit, max_value, ctx, out),
        Action::Props { file } => props(&file, ctx, out),
        Action::Check { file } => check(&file, ctx, out),
    }
}

fn open(file: &Path) -> Result<Arc<Table>, CliError> {
    let md = std::fs::metadata(file).map_err(|e| CliError::from(sluice::Error::io(file, e)))?;
    if !md.is_file() {
        return Err(CliError::usage(format!("{} is not a regular file", file.display())));
    }
    let number = sluice::inspect::table_number(file);
    Ok(Arc::new(Table::open(&sluice::fs::StdFs, file, number, None)?))
}

#[derive(Serialize)]
struct EntryJson {
    key: String,
    seqno: u64,
    kind: &'static str,
    value: Option<String>,
    value_len: usize,
    /// For forwarding pointers: the layout version the value was moved to.
    moved_to: Option<u64>,
}

fn dump(file: &Path, limit: Option<u64>, max_value: Option<usize>, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let t = open(file)?;
    let p = t.props().clone();
    if ctx.json {
        write!(
            out,
            "{{\n  \"file\": {},\n  \"kind\": {},\n  \"layout_version\": {},\n  \"partition\": {},\n  \"entries\": [",
            serde_json::to_string(&output::path_str(file))?,
            serde_json::to_string(kind_str(p.kind))?,
            p.layout_version,
            p.partition
        )?;
    } else {
        writeln!(
            out,
            "{}: v{}/{} {}, {} entries",
            file.display(),
            p.layout_version,
            p.partition,
            kind_str(p.kind),
            count(p.entries)
        )?;
    }
    let mut n = 0u64;
    for e in t.iter() {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let e = match e {
            Ok(e) => e,
            Err(e) if ctx.json => return Err(output::end_stream(out, n, e.into())),
            Err(e) => return Err(e.into()),
        };
        let moved_to = (e.kind == sluice::Kind::Forward).then(|| sluice::inspect::forward_target(&e.value)).flatten();
        if ctx.json {
            let j = EntryJson {
                key: ctx.bytes(&e.key),
                seqno: e.seqno,
                kind: output::kind_name(e.kind),
                value: (e.kind == sluice::Kind::Value).then(|| ctx.value(&e.value, max_value)),
                value_len: e.value.len(),
                moved_to,
            };
            write!(out, "{}\n    {}", if n == 0 { "" } else { "," }, serde_json::to_string(&j)?)?;
        } else {
            match e.kind {
                sluice::Kind::Value => writeln!(
                    out,
                    "{} @{} put {}",
                    ctx.bytes(&e.key),
                    e.seqno,
                    ctx.value(&e.value, max_value)
                )?,
                sluice::Kind::Delete => writeln!(out, "{} @{} delete", ctx.bytes(&e.key), e.seqno)?,
                _ => writeln!(
                    out,
                    "{} @{} forward -> {}",
                    ctx.bytes(&e.key),
                    e.seqno,
                    moved_to.map_or("?".into(), |v| format!("v{v}"))
                )?,
            }
        }
        n += 1;
    }
    if ctx.json {
        writeln!(out, "\n  ],\n  \"count\": {n}\n}}")?;
    }
    Ok(Status::Ok)
}

pub fn kind_str(k: TableKind) -> &'static str {
    match k {
        TableKind::Data => "data",
        TableKind::Pointers => "pointers",
    }
}

#[derive(Serialize)]
struct HandleJson {
    offset: u64,
    size: u64,
}

#[derive(Serialize)]
struct PropsJson {
    file: String,
    size: u64,
    format_version: u32,
    kind: &'static str,
    layout_version: u32,
    fingerprint: String,
    partition: u32,
    smallest: String,
    largest: String,
    min_seqno: u64,
    max_seqno: u64,
    entries: u64,
    tombstones: u64,
    pointers: u64,
    raw_bytes: u64,
    data_blocks: u64,
    compression: &'static str,
    created_unix: u64,
    filter_block: HandleJson,
    index_block: HandleJson,
    props_block: HandleJson,
}

fn compression_name(c: u8) -> &'static str {
    match c {
        0 => "none",
        1 => "zstd",
        _ => "unknown",
    }
}

/// The footer of a table file of `len` bytes (the last [`FOOTER_LEN`] of them).
fn read_footer(file: &Path, len: u64) -> Result<sluice::sst::format::Footer, CliError> {
    use sluice::fs::Fs;
    use sluice::sst::format::{Footer, FOOTER_LEN};
    let io = |e| CliError::from(sluice::Error::io(file, e));
    let at = len.saturating_sub(FOOTER_LEN as u64);
    let mut tail = vec![0; (len - at) as usize];
    sluice::fs::StdFs
        .open_random(file)
        .and_then(|r| r.read_exact_at(&mut tail, at))
        .map_err(io)?;
    Ok(Footer::decode_at(&tail, at, file)?)
}

fn props(file: &Path, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let t = open(file)?;
    let footer = read_footer(file, t.file_size())?;
    let p: &TableProps = t.props();
    let h = |b: sluice::sst::format::BlockHandle| HandleJson {
        offset: b.offset,
        size: b.size,
    };
    let j = PropsJson {
        file: output::path_str(file),
        size: t.file_size(),
        format_version: p.format_version,
        kind: kind_str(p.kind),
        layout_version: p.layout_version,
        fingerprint: format!("{:#018x}", p.fingerprint),
        partition: p.partition,
        smallest: ctx.bytes(&p.smallest),
        largest: ctx.bytes(&p.largest),
        min_seqno: p.min_seqno,
        max_seqno: p.max_seqno,
        entries: p.entries,
        tombstones: p.tombstones,
        pointers: p.pointers,
        raw_bytes: p.raw_bytes,
        data_blocks: p.data_blocks,
        compression: compression_name(p.compression),
        created_unix: p.created_unix,
        filter_block: h(footer.filter),
        index_block: h(footer.index),
        props_block: h(footer.props),
    };
    if ctx.json {
        output::json(out, &j)?;
        return Ok(Status::Ok);
    }
    writeln!(out, "file             {}", j.file)?;
    writeln!(out, "size             {} ({} bytes)", size(j.size), j.size)?;
    writeln!(out, "format version   {}", j.format_version)?;
    writeln!(out, "kind             {}", j.kind)?;
    writeln!(out, "owner            v{} partition {}", j.layout_version, j.partition)?;
    writeln!(out, "fingerprint      {}", j.fingerprint)?;
    writeln!(out, "key range        {} .. {}", j.smallest, j.largest)?;
    writeln!(out, "seqno range      {} .. {}", j.min_seqno, j.max_seqno)?;
    writeln!(
        out,
        "entries         {} ({} tombstones, {} forwarding pointers)",
        count(j.entries),
        count(j.tombstones),
        count(j.pointers)
    )?;
    writeln!(out, "raw bytes        {} ({} bytes)", size(j.raw_bytes), j.raw_bytes)?;
    writeln!(out, "data blocks      {}", count(j.data_blocks))?;
    writeln!(out, "compression      {}", j.compression)?;
    writeln!(out, "created          {} (unix seconds)", j.created_unix)?;
    for (name, b) in [("filter", &j.filter_block), ("index", &j.index_block), ("properties", &j.props_block)] {
        writeln!(out, "{:<17}offset {} size {}", format!("{name} block"), b.offset, b.size)?;
    }
    Ok(Status::Ok)
}

#[derive(Serialize)]
struct CheckJson {
    file: String,
    ok: bool,
    size: u64,
    blocks: u64,
    entries: u64,
    misplaced: u64,
    /// The partition function keys were checked against (from the directory's manifest).
    function: Option<String>,
    problems: Vec<output::ProblemJson>,
}

/// The manifest of the directory holding `file`: `Ok(None)` if that directory is no
/// database, an error if it is one whose manifest does not read.
fn sibling_state(file: &Path) -> sluice::Result<Option<DirState>> {
    let Some(dir) = file.parent() else {
        return Ok(None);
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    match sluice::inspect::read_dir_state(dir) {
        Ok(st) => Ok(Some(st)),
        Err(sluice::Error::NotADatabase { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn check(file: &Path, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let md = std::fs::metadata(file).map_err(|e| CliError::from(sluice::Error::io(file, e)))?;
    if !md.is_file() {
        return Err(CliError::usage(format!("{} is not a regular file", file.display())));
    }
    // A manifest beside the file that does not read leaves placement unchecked: said as a
    // warning, not passed over as if there were no database there.
    let (st, manifest_problem) = match sibling_state(file) {
        Ok(st) => (st, None),
        Err(e) => {
            let why = format!("the manifest beside it does not read, so partition placement was not checked: {e}");
            let (f, off) = sluice::inspect::error_location(&e);
            (None, Some(sluice::inspect::Problem::warning("manifest", f.as_deref(), off, why)))
        }
    };
    let number = sluice::inspect::table_number(file);
    let rec = st.as_ref().and_then(|s| s.files.iter().find(|f| f.number == number));
    let func = rec
        .and_then(|r| st.as_ref()?.version(r.layout_version))
        .map(|v| v.func.clone());
    let known = st.as_ref().map(sluice::inspect::DirState::known_versions);
    let expect = TableExpect {
        func: func.as_deref(),
        record: rec,
        versions: known.as_ref(),
    };
    let progress = Progress::new(ctx);
    progress.start("checking", Some(md.len()), "bytes");
    let mut c = check_table_file(file, &expect, &mut |n| progress.inc(n));
    progress.finish();
    c.problems.extend(manifest_problem);
    let ok = c.is_ok();
    let status = crate::error::verdict(if ok { Status::Ok } else { Status::Failed });
    if ctx.json {
        output::json(
            out,
            &CheckJson {
                file: output::path_str(file),
                ok,
                size: c.size,
                blocks: c.blocks,
                entries: c.entries,
                misplaced: c.misplaced,
                function: func.as_ref().map(|f| f.spec().to_string()),
                problems: c.problems.iter().map(Into::into).collect(),
            },
        )?;
    } else {
        for p in &c.problems {
            writeln!(out, "{}", output::problem_line(p))?;
        }
        let against = match (&func, rec) {
            (Some(f), Some(r)) => format!("; keys checked against v{} {}", r.layout_version, f.spec()),
            _ => "; not named by a manifest beside it, so partition placement was not checked".into(),
        };
        writeln!(
            out,
            "{}: {} — {} blocks, {} entries, {}{against}",
            file.display(),
            if ok { "OK" } else { "FAILED" },
            count(c.blocks),
            count(c.entries),
            size(c.size)
        )?;
    }
    Ok(status)
}
