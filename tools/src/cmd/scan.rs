//! `sluice scan DIR`: keys and values in order through a read-only open, across every live
//! layout version (the merged view readers see).

use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sluice::Db;

use crate::error::{CliError, CmdResult, Status};
use crate::output::{self, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice scan /data/ledger --limit 10
  sluice scan /data/ledger --from acct0001 --to acct0002
  sluice scan /data/ledger --reverse --limit 5
  sluice scan /data/ledger --json --hex

One `KEY<TAB>VALUE` line per key (escaped text never contains a tab). --from is inclusive,
--to exclusive; both are escaped text, or hex with --hex.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// First key (inclusive)
    #[arg(long, value_name = "KEY")]
    pub from: Option<String>,
    /// Stop before this key (exclusive)
    #[arg(long, value_name = "KEY")]
    pub to: Option<String>,
    /// At most this many keys
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Walk from the last key backwards
    #[arg(long)]
    pub reverse: bool,
    /// Print at most this many bytes of each value
    #[arg(long, value_name = "BYTES")]
    pub max_value: Option<usize>,
    /// Print keys only
    #[arg(long)]
    pub keys_only: bool,
}

/// Opens `dir` read-only for the tool, after the inspection safety checks (nothing outside
/// the directory is followed). Takes no lock: a live process may hold the directory.
pub fn open_read_only(dir: &Path) -> Result<Db, CliError> {
    sluice::inspect::check_dir_safety(dir)?;
    Ok(Db::open_read_only(dir, sluice::inspect::tool_options())?)
}

#[derive(Serialize)]
struct EntryJson {
    key: String,
    value: Option<String>,
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let from = args.from.as_deref().map(|k| ctx.parse_key("--from", k)).transpose()?;
    let to = args.to.as_deref().map(|k| ctx.parse_key("--to", k)).transpose()?;
    if let (Some(f), Some(t)) = (&from, &to) {
        if f > t {
            return Err(CliError::usage("--from is after --to"));
        }
    }
    let db = open_read_only(&args.dir)?;
    let range = (
        from.map_or(Bound::Unbounded, Bound::Included),
        to.map_or(Bound::Unbounded, Bound::Excluded),
    );
    let iter = db.range(range);
    let iter: Box<dyn Iterator<Item = sluice::Result<_>>> = if args.reverse {
        Box::new(iter.rev())
    } else {
        Box::new(iter)
    };
    if ctx.json {
        write!(out, "{{\n  \"entries\": [")?;
    }
    let mut n = 0u64;
    for r in iter {
        if args.limit.is_some_and(|l| n >= l) {
            break;
        }
        let (k, v) = match r {
            Ok(kv) => kv,
            Err(e) if ctx.json => return Err(output::end_stream(out, n, e.into())),
            Err(e) => return Err(e.into()),
        };
        if ctx.json {
            let e = EntryJson {
                key: ctx.bytes(&k),
                value: (!args.keys_only).then(|| ctx.value(&v, args.max_value)),
            };
            write!(out, "{}\n    {}", if n == 0 { "" } else { "," }, serde_json::to_string(&e)?)?;
        } else if args.keys_only {
            writeln!(out, "{}", ctx.bytes(&k))?;
        } else {
            writeln!(out, "{}\t{}", ctx.bytes(&k), ctx.value(&v, args.max_value))?;
        }
        n += 1;
    }
    if ctx.json {
        writeln!(out, "\n  ],\n  \"count\": {n}\n}}")?;
    } else {
        ctx.note(format!("({n} keys)"));
    }
    let _ = output::path_str(&args.dir);
    Ok(Status::Ok)
}
