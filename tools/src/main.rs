//! `sluice`: inspect, verify and analyse Sluice database directories.
//!
//! One file per subcommand under `cmd/` (as in Pebble's `tool/`), each reusing the engine's
//! own readers through `sluice::inspect`. Conventions shared by every subcommand (`--json`,
//! `--hex`, `--quiet`, exit codes) live in `output.rs` and `error.rs` and are documented in
//! the "CLI tour" of the README.
//!
//! Adding a subcommand: one line in the `commands!` list below and one file
//! `cmd/<name>.rs` with `pub struct Args` (clap `Args`) and
//! `pub fn run(Args, &Ctx, &mut dyn Write) -> CmdResult`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

mod chart;
mod error;
mod html;
mod output;
mod progress;
mod summary;

use error::{CliError, CmdResult};
use output::Ctx;

/// Declares the subcommand modules, the `Command` enum and its dispatch in one list.
macro_rules! commands {
    ($( $(#[$meta:meta])* $variant:ident => $module:ident ),* $(,)?) => {
        mod cmd {
            $( pub mod $module; )*
        }

        #[derive(clap::Subcommand)]
        enum Command {
            $( $(#[$meta])* $variant(cmd::$module::Args), )*
        }

        impl Command {
            fn run(self, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
                match self {
                    $( Command::$variant(a) => cmd::$module::run(a, ctx, out), )*
                }
            }
        }
    };
}

commands! {
    /// Summary of a database: layout versions, files, levels, migration progress
    Info => info,
    /// Look inside one SSTable file: dump entries, show properties, check it
    Sst => sst,
    /// Print the manifest's edit log
    Manifest => manifest,
    /// Print the records of the write-ahead logs
    Wal => wal,
    /// Verify checksums, partition placement, manifest and files (and, with --deep, cross-layout consistency)
    Verify => verify,
    /// Partition balance per layout version: shares, max/mean, chi-square, a chart
    Partitions => partitions,
    /// Read one key (read-only open)
    Get => get,
    /// Read a range of keys in order (read-only open)
    Scan => scan,
    /// Predict how the existing keys would spread under a candidate partition function
    Analyze => analyze,
    /// Drive a migration: plan, start, status, pause, resume, rollback, finish, run
    Migrate => migrate,
    /// Replay the write-ahead logs and close cleanly (--point-in-time: up to the first damage)
    Recover => recover,
    /// Run the ledger scenario end to end: transfers through a migration, a bias fix and a rollback
    Demo => demo,
}

const EXAMPLES: &str = "\
Examples:
  sluice info /data/ledger
  sluice verify --deep /data/ledger
  sluice partitions /data/ledger --svg balance.svg
  sluice analyze /data/ledger --spec hash:16:7
  sluice scan /data/ledger --from acct0001 --limit 10
  sluice get /data/ledger acct00001234 --json
  sluice migrate plan /data/ledger --spec hash:16:7
  sluice migrate status /data/ledger --watch
  sluice recover /data/ledger --point-in-time
  sluice demo

Exit codes: 0 ok, 1 not found (get) or other error, 2 usage, 3 corruption or failed
check, 4 directory locked or busy.";

/// Inspect, verify, analyse and migrate Sluice database directories; run the ledger demo.
/// The inspection subcommands are read-only.
#[derive(Parser)]
#[command(name = "sluice", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// Print one JSON document on stdout instead of text (stable field names; see the README)
    #[arg(long, global = true)]
    json: bool,
    /// Print keys and values as hex instead of escaped text (and read KEY arguments as hex)
    #[arg(long, global = true)]
    hex: bool,
    /// No progress bars and no notes on stderr
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// Standard output, whose write errors say that they are about it (a full disk under
/// `> file` is not a problem of the database being read).
struct Output<W: Write>(W);

impl<W: Write> Write for Output<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b).map_err(output_error)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(output_error)
    }
}

fn output_error(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("writing output: {e}"))
}

/// Raises the soft limit on open files towards the hard one (to at most 16384), as Go
/// programs do at start: the commands open every table of a database, and the engine keeps
/// half the soft limit's worth of them open. A system that refuses a value (macOS caps it
/// below an unlimited hard limit) is asked for less; a limit that cannot be raised stays.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    let soft = l.current.unwrap_or(u64::MAX);
    let mut target = l.maximum.unwrap_or(u64::MAX).min(16384);
    while soft < target {
        let wanted = Rlimit {
            current: Some(target),
            maximum: l.maximum,
        };
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            break;
        }
        target /= 2;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_file_limit();
    let ctx = Ctx::new(cli.json, cli.hex, cli.quiet);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(Output(stdout.lock()));
    let result = cli.command.run(&ctx, &mut out);
    let flushed = out.flush();
    let status = match (result, flushed) {
        (Ok(s), Ok(())) => s,
        (Ok(_), Err(e)) | (Err(CliError { io: Some(e), .. }), _)
            if e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            // The reader went away (`| head`): not an error of ours, but a verdict the
            // command reached before writing (a failed check, a key not found) stands.
            return ExitCode::from(error::recorded_verdict());
        }
        (Ok(_), Err(e)) => {
            output::to_stderr(&format!("error: {e}"));
            return ExitCode::from(1);
        }
        (Err(e), _) => {
            e.report(&ctx);
            return ExitCode::from(e.exit_code());
        }
    };
    ExitCode::from(status.exit_code())
}
