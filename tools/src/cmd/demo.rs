//! `sluice demo`: the ledger scenario end to end (see `sluice_migrate::ledger`): accounts
//! under a range layout, concurrent transfers throughout, a forced migration to a biased
//! hash, the bias detected and corrected mid-flight, one rollback, forward again, finish,
//! and an audit of the ledger.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sluice::fs::{Fs, StdFs};
use serde::Serialize;
use sluice_migrate::ledger::{run as run_ledger, LedgerConfig, LedgerEvent, LedgerSummary};

use crate::error::{CliError, CmdResult, Status};
use crate::output::{self, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice demo                                  # about a minute, in ./sluice-demo-data
  sluice demo --dir /tmp/ledger --json         # summary as JSON
  sluice demo --accounts 2000000 --migration-mb-per-sec 32 --threads 4
  sluice demo --quiet

The directory is created, or reset if it holds an earlier demo (or is empty); any other
non-empty directory is refused. Exits 3 if the audit finds a lost or duplicated write or
the sum of balances changed.")]
pub struct Args {
    /// Directory for the demo database
    #[arg(long, default_value = "sluice-demo-data")]
    pub dir: PathBuf,
    /// Accounts in the ledger (16 to 100,000,000)
    #[arg(long, default_value_t = 200_000)]
    pub accounts: u32,
    /// Bytes of account metadata stored with each balance (the data volume to migrate)
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Threads running transfers throughout
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Transfers per second across all threads (0: as fast as they go)
    #[arg(long, default_value_t = 5_000)]
    pub tps: u64,
    /// Balance lookups per second at the latest snapshot (they trigger lazy moves)
    #[arg(long, default_value_t = 2_000)]
    pub lookups: u64,
    /// Seconds of transfers before the migration starts (the stable baseline)
    #[arg(long, default_value_t = 8.0)]
    pub stable_secs: f64,
    /// Migration budget of the engine's pacer, MiB per second
    #[arg(long, default_value_t = 4)]
    pub migration_mb_per_sec: u64,
    /// Fraction migrated when the bias is detected and corrected
    #[arg(long, default_value_t = 0.6)]
    pub detect_at: f64,
    /// Seconds spent before and after the rollback
    #[arg(long, default_value_t = 3.0)]
    pub rollback_secs: f64,
    /// Partitions of the hash layouts
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    dir: String,
    accounts: u32,
    seconds: f64,
    transfers_committed: u64,
    conflicts_retried: u64,
    sum_before: i64,
    sum_after: i64,
    sums_checked: usize,
    lost_writes: u64,
    duplicated_writes: u64,
    stable_p50_us: u64,
    stable_p99_us: u64,
    migrating_p50_us: u64,
    migrating_p99_us: u64,
    bytes_migrated: u64,
    bytes_written_by_migration: u64,
    migration_write_ratio: f64,
    lazy_moves: u64,
    biased_max_partition_share: f64,
    corrected_max_partition_share: f64,
    final_versions: &'a [u32],
    events: &'a [String],
    ok: bool,
}

/// Written into every demo directory: only such a directory is ever reset.
const DEMO_MARKER: &str = "SLUICE-DEMO";

/// Creates `dir`, or empties it if it holds an earlier demo database (or nothing).
fn prepare(dir: &Path) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::from(sluice::Error::io(dir, e));
    if dir.exists() {
        let names: Vec<String> = std::fs::read_dir(dir).map_err(io)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !names.is_empty() && !names.iter().any(|n| n == DEMO_MARKER) {
            return Err(CliError::usage(format!(
                "{} is not empty and was not made by `sluice demo`; pick another --dir",
                dir.display()
            )));
        }
        // A demo still running there (or any process with the database open) holds its
        // lock: deleting its files under it would crash it. Held while the files go.
        let _lock = if names.iter().any(|n| n == "LOCK") {
            let lock = dir.join("LOCK");
            let held = StdFs.lock(&lock).map_err(|e| sluice::Error::io(&lock, e))?;
            Some(held.ok_or_else(|| sluice::Error::Locked {
                path: dir.to_path_buf(),
            })?)
        } else {
            None
        };
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join(DEMO_MARKER), b"").map_err(io)?;
    Ok(())
}

/// Most accounts a demo ledger holds: its audit keeps a balance per account in memory
/// (8 bytes each), and at the default payload this is already ~20 GB of data.
const MAX_ACCOUNTS: u32 = 100_000_000;

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let secs = |s: f64| (0.0..=86_400.0).contains(&s);
    if !(16..=MAX_ACCOUNTS).contains(&args.accounts)
        || !(1..=1024).contains(&args.threads)
        || !(0.05..=0.95).contains(&args.detect_at)
        || !secs(args.stable_secs)
        || !secs(args.rollback_secs)
        || !(2..=sluice::MAX_PARTITIONS).contains(&args.partitions)
    {
        return Err(CliError::usage(format!(
            "need 16 <= --accounts <= {MAX_ACCOUNTS}, 1 <= --threads <= 1024, 0.05 <= --detect-at <= 0.95, 2 <= --partitions <= {}, and --stable-secs, --rollback-secs in 0..=86400",
            sluice::MAX_PARTITIONS
        )));
    }
    let migration_bytes_per_sec = args
        .migration_mb_per_sec
        .max(1)
        .checked_mul(1 << 20)
        .ok_or_else(|| CliError::usage("--migration-mb-per-sec is too large"))?;
    let cfg = LedgerConfig {
        accounts: args.accounts,
        payload_bytes: args.payload_bytes,
        transfer_threads: args.threads,
        transfers_per_sec: args.tps,
        lookups_per_sec: args.lookups,
        stable_secs: args.stable_secs,
        migration_bytes_per_sec,
        detect_at: args.detect_at,
        rollback_secs: args.rollback_secs,
        partitions: args.partitions,
        ..LedgerConfig::new(&args.dir)
    };
    // Refused before the directory is touched.
    cfg.validate()?;
    prepare(&args.dir)?;
    let bar = ctx.progress.then(|| {
        let b = ProgressBar::new(1000);
        if let Ok(s) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {percent:>3}% migrated  {msg}",
        ) {
            b.set_style(s.progress_chars("=> "));
        }
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    });
    let started = std::time::Instant::now();
    let mut on = |e: LedgerEvent| match (&bar, e) {
        (Some(b), LedgerEvent::Phase(p)) => {
            // The bar keeps the last fraction migrated: each migration's progress events
            // set it (it fell back to 0% during the audit).
            b.println(format!("[{:5.1}s] {p}", started.elapsed().as_secs_f64()));
        }
        (Some(b), LedgerEvent::Note(n)) => b.println(format!("         {n}")),
        (Some(b), LedgerEvent::Progress { fraction, transfers }) => {
            b.set_position((fraction * 1000.0) as u64);
            b.set_message(format!("{transfers} transfers"));
        }
        (None, LedgerEvent::Phase(p)) => {
            ctx.note(format!("[{:5.1}s] {p}", started.elapsed().as_secs_f64()))
        }
        (None, LedgerEvent::Note(n)) => ctx.note(format!("         {n}")),
        (None, LedgerEvent::Progress { .. }) => {}
    };
    let s = run_ledger(&cfg, &mut on)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let ok = s.lost_writes == 0 && s.duplicated_writes == 0 && s.sum_before == s.sum_after;
    let status = crate::error::verdict(if ok { Status::Ok } else { Status::Failed });
    if ctx.json {
        output::json(out, &summary_json(&args.dir, &s, ok))?;
    } else {
        print_summary(out, &s, ok)?;
    }
    Ok(status)
}

fn ratio(s: &LedgerSummary) -> f64 {
    if s.bytes_migrated == 0 {
        0.0
    } else {
        s.bytes_written_by_migration as f64 / s.bytes_migrated as f64
    }
}

fn summary_json<'a>(dir: &Path, s: &'a LedgerSummary, ok: bool) -> SummaryJson<'a> {
    SummaryJson {
        dir: dir.display().to_string(),
        accounts: s.accounts,
        seconds: s.seconds,
        transfers_committed: s.transfers_committed,
        conflicts_retried: s.conflicts_retried,
        sum_before: s.sum_before,
        sum_after: s.sum_after,
        sums_checked: s.sums_at_steps.len(),
        lost_writes: s.lost_writes,
        duplicated_writes: s.duplicated_writes,
        stable_p50_us: s.stable.p50_us,
        stable_p99_us: s.stable.p99_us,
        migrating_p50_us: s.migrating.p50_us,
        migrating_p99_us: s.migrating.p99_us,
        bytes_migrated: s.bytes_migrated,
        bytes_written_by_migration: s.bytes_written_by_migration,
        migration_write_ratio: ratio(s),
        lazy_moves: s.lazy_moves,
        biased_max_partition_share: s.biased_max_share,
        corrected_max_partition_share: s.corrected_max_share,
        final_versions: &s.final_versions,
        events: &s.events,
        ok,
    }
}

fn print_summary(out: &mut dyn Write, s: &LedgerSummary, ok: bool) -> std::io::Result<()> {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    writeln!(out, "Ledger demo: {} accounts, {:.1} s", s.accounts, s.seconds)?;
    writeln!(
        out,
        "  transfers committed       {:>12}   (conflicts retried: {})",
        s.transfers_committed, s.conflicts_retried
    )?;
    writeln!(
        out,
        "  sum of balances           {:>12} before, {} after, checked at {} steps",
        s.sum_before,
        s.sum_after,
        s.sums_at_steps.len()
    )?;
    writeln!(
        out,
        "  lost / duplicated writes  {:>12} / {}",
        s.lost_writes, s.duplicated_writes
    )?;
    writeln!(
        out,
        "  transfer p50 / p99        {:>9} µs / {} µs stable;  {} µs / {} µs migrating",
        s.stable.p50_us, s.stable.p99_us, s.migrating.p50_us, s.migrating.p99_us
    )?;
    writeln!(
        out,
        "  migration                 {:>9.1} MiB of SSTables migrated, {:.1} MiB written ({:.2}x); {} lazy moves",
        mb(s.bytes_migrated),
        mb(s.bytes_written_by_migration),
        ratio(s),
        s.lazy_moves
    )?;
    writeln!(
        out,
        "  largest partition share   {:>11.1}% under the biased hash, {:.1}% under the corrected one",
        100.0 * s.biased_max_share,
        100.0 * s.corrected_max_share
    )?;
    writeln!(out, "  live layout versions      {:?}", s.final_versions)?;
    writeln!(out, "  controller events:")?;
    for e in &s.events {
        writeln!(out, "    {e}")?;
    }
    writeln!(
        out,
        "{}",
        if ok {
            "OK: no write lost or duplicated, the sum never changed."
        } else {
            "FAILED: the audit found lost or duplicated writes, or the sum changed."
        }
    )
}
