//! `sluice get DIR KEY`: one point read through a read-only open (no lock, nothing
//! written; works while a live process holds the directory).

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{CmdResult, Status};
use crate::output::{self, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice get /data/ledger acct00001234
  sluice get /data/ledger 'key\\x00with\\xffbytes'
  sluice get /data/ledger 6b6579 --hex
  sluice get /data/ledger acct00001234 --json

KEY is escaped text (\\\\ for a backslash, \\xNN for any byte), or hex with --hex.
Prints the value; exits 1 if the key has no value.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// Key to read
    pub key: String,
}

#[derive(Serialize)]
struct GetJson {
    key: String,
    found: bool,
    value: Option<String>,
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let key = ctx.parse_key("KEY", &args.key)?;
    let db = crate::cmd::scan::open_read_only(&args.dir)?;
    let v = db.get(&key)?;
    let status = crate::error::verdict(if v.is_some() { Status::Ok } else { Status::NotFound });
    if ctx.json {
        output::json(
            out,
            &GetJson {
                key: ctx.bytes(&key),
                found: v.is_some(),
                value: v.as_ref().map(|v| ctx.bytes(v)),
            },
        )?;
    } else {
        match &v {
            Some(v) => writeln!(out, "{}", ctx.bytes(v))?,
            None if key.is_empty() => ctx.note("the empty key: not found"),
            None => ctx.note(format!("{}: not found", ctx.bytes(&key))),
        }
    }
    Ok(status)
}
