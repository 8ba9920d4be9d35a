//! `sluice-stress`: a db_bench-style workload driver for Sluice.
//!
//! ```text
//! sluice-stress fillseq,readrandom --num 1000000 --dir /tmp/db [--json] [...]
//! ```
//! Workloads run in the order given, on one database. Each prints one table row (or, with
//! `--json`, one JSON object per line on stdout); the configuration goes to stderr so stdout
//! stays machine-readable.

mod keys;
mod report;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use sluice::{Compression, Db, Options, PartitionSpec, Stats, WriteOptions};

use report::WorkloadReport;
use workloads::{Settings, Workload};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-stress",
    version,
    about = "db_bench-style workloads against a Sluice database",
    after_help = "Example: sluice-stress fillseq,readrandom --num 1000000 --dir /tmp/sluice-db --json"
)]
struct Cli {
    /// Comma-separated workloads, run in this order on the same database.
    #[arg(value_enum, value_delimiter = ',', required = true)]
    workloads: Vec<Workload>,

    /// Size of the key space, and operations per write workload.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    num: u64,

    /// Database directory.
    #[arg(long)]
    dir: PathBuf,

    /// Key size in bytes (keys are zero-padded decimal, so it must fit --num's digits).
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=sluice::MAX_KEY_LEN as u64))]
    key_size: u64,

    /// Value size in bytes.
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=sluice::MAX_VALUE_LEN as u64))]
    value_size: u64,

    /// Threads sharing each workload's operations (readers, for readwhilewriting).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,

    /// fsync the WAL on every write.
    #[arg(long)]
    sync: bool,

    /// Partition function of a new database: range, range:b1,b2,…, hash:N[:seed[:prefix]],
    /// split:P:INTO[:seed]/BASE.
    #[arg(long, default_value = "range", value_parser = parse_partition)]
    partition: PartitionSpec,

    /// Block cache size in MiB.
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,

    /// Block compression: none, zstd or zstd:LEVEL (1-22).
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    compression: Compression,

    /// Memtable size in MiB (engine default if omitted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    memtable_mb: Option<u64>,

    /// Operations per read workload (default: --num).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    reads: Option<u64>,

    /// Stop each workload after this many seconds even if its operations are not done.
    #[arg(long, value_parser = parse_seconds)]
    duration_secs: Option<Duration>,

    /// Open the database already in --dir instead of starting from an empty one.
    #[arg(long, conflicts_with = "destroy")]
    use_existing_db: bool,

    /// Delete --dir before starting (the default).
    #[arg(long)]
    destroy: bool,

    /// One JSON object per workload per line on stdout.
    #[arg(long)]
    json: bool,

    /// Seed of every key and value sequence.
    #[arg(long, default_value_t = 301)]
    seed: u64,
}

fn parse_partition(s: &str) -> Result<PartitionSpec, String> {
    PartitionSpec::parse(s).map_err(|e| e.to_string())
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s.split_once(':') {
        None if s == "none" => Ok(Compression::None),
        // db_bench's and zstd's own default level.
        None if s == "zstd" => Ok(Compression::Zstd(3)),
        Some(("zstd", level)) => match level.parse::<i32>() {
            Ok(l) if (1..=22).contains(&l) => Ok(Compression::Zstd(l)),
            _ => Err(format!("zstd level must be 1-22, got {level:?}")),
        },
        _ => Err(format!("expected none, zstd or zstd:LEVEL, got {s:?}")),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let digits = keys::decimal_digits(cli.num - 1);
    if (cli.key_size as usize) < digits {
        Cli::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--key-size {} cannot hold {} distinct zero-padded decimal keys (needs {digits})",
                    cli.key_size, cli.num
                ),
            )
            .exit();
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-stress: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> BenchResult<()> {
    prepare_dir(&cli.dir, cli.use_existing_db)?;
    let mut opts = Options {
        partition: cli.partition.clone(),
        create_if_missing: !cli.use_existing_db,
        block_cache_bytes: cli.cache_mb.saturating_mul(1 << 20),
        compression: cli.compression,
        ..Options::default()
    };
    if let Some(mb) = cli.memtable_mb {
        opts.memtable_bytes = (mb << 20) as usize;
    }
    let db = Db::open(&cli.dir, opts.clone())
        .map_err(|e| format!("opening {}: {e}", cli.dir.display()))?;
    // An existing database keeps its own layouts, so report what it really targets.
    let layout = db.layout();
    let partition = layout
        .versions
        .iter()
        .find(|v| v.is_target)
        .map_or_else(|| cli.partition.to_string(), |v| v.spec.to_string());

    let settings = Settings {
        num: cli.num,
        reads: cli.reads.unwrap_or(cli.num),
        key_size: cli.key_size as usize,
        value_size: cli.value_size as usize,
        threads: cli.threads as usize,
        write_options: WriteOptions { sync: cli.sync },
        duration: cli.duration_secs,
        seed: cli.seed,
    };
    let names: Vec<_> = cli.workloads.iter().map(|w| w.name()).collect();
    eprintln!(
        "sluice-stress: workloads={} num={} reads={} threads={} key_size={} value_size={} sync={} \
         partition={partition} target={} compression={:?} cache_mb={} memtable_mb={} \
         duration_secs={} dir={} existing_db={} seed={}",
        names.join(","),
        settings.num,
        settings.reads,
        settings.threads,
        settings.key_size,
        settings.value_size,
        cli.sync,
        layout.target,
        cli.compression,
        cli.cache_mb,
        opts.memtable_bytes >> 20,
        cli.duration_secs
            .map_or_else(|| "none".to_string(), |d| d.as_secs_f64().to_string()),
        cli.dir.display(),
        cli.use_existing_db,
        cli.seed,
    );
    if !cli.json {
        println!("{}", WorkloadReport::table_header());
    }

    for (index, &workload) in cli.workloads.iter().enumerate() {
        let before = db.stats();
        let m = workloads::run(&db, &settings, workload, index)
            .map_err(|e| format!("{}: {e}", workload.name()))?;
        let after = db.stats();
        let (user, device) = (
            after.user_bytes_written - before.user_bytes_written,
            device_bytes(&after) - device_bytes(&before),
        );
        let stall_micros = (after.stall_micros + after.slowdown_micros)
            - (before.stall_micros + before.slowdown_micros);
        let r = WorkloadReport {
            workload: workload.name().to_string(),
            num: settings.num,
            threads: settings.threads,
            ops: m.ops,
            seconds: m.seconds,
            ops_per_sec: if m.seconds > 0.0 {
                m.ops as f64 / m.seconds
            } else {
                0.0
            },
            p50_us: m.latency.quantile_us(0.50),
            p99_us: m.latency.quantile_us(0.99),
            p999_us: m.latency.quantile_us(0.999),
            write_amp: after.write_amplification,
            disk_bytes: report::disk_bytes(&cli.dir)?,
            peak_rss_mb: report::peak_rss_mb(),
            stall_ms: stall_micros as f64 / 1000.0,
            key_size: settings.key_size,
            value_size: settings.value_size,
            partition: partition.clone(),
            sync: cli.sync,
            workload_write_amp: (user > 0).then(|| device as f64 / user as f64),
            user_bytes_written: user,
            device_bytes_written: device,
            found: m.found,
            background_writes: m.background_writes,
        };
        debug_assert_eq!(m.latency.count(), m.ops);
        if cli.json {
            println!("{}", r.json_line()?);
        } else {
            println!("{}", r.table_row());
        }
        // The LSM shape explains most surprises in the figures (e.g. scans merging many L0
        // files); stderr keeps it out of --json output.
        eprintln!(
            "sluice-stress: after {}: {}",
            workload.name(),
            lsm_shape(&after)
        );
        if after.background_errors > before.background_errors {
            eprintln!(
                "sluice-stress: warning: {} background errors during {}",
                after.background_errors - before.background_errors,
                workload.name()
            );
        }
    }
    db.close()?;
    Ok(())
}

fn lsm_shape(s: &Stats) -> String {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let levels: Vec<String> = s
        .levels
        .iter()
        .filter(|l| l.files > 0)
        .map(|l| format!("L{} {} files {:.1} MB", l.level, l.files, mb(l.bytes)))
        .collect();
    format!(
        "{}; memtable {:.1} MB + {} immutable; {} flushes, {} compactions ({} trivial moves), \
         pending compaction {:.1} MB, block cache {:.1} MB",
        if levels.is_empty() {
            "no SSTables".to_string()
        } else {
            levels.join(", ")
        },
        mb(s.memtable_bytes),
        s.immutable_memtables,
        s.flushes,
        s.compactions,
        s.trivial_moves,
        mb(s.pending_compaction_bytes),
        mb(s.block_cache_bytes),
    )
}

/// The same sum the engine divides by user bytes for `write_amplification`.
fn device_bytes(s: &Stats) -> u64 {
    s.wal_bytes_written + s.bytes_flushed + s.compaction_bytes_written
}

/// Starts from an empty directory unless asked to reuse one. Deletes only what looks like a
/// Sluice database (or an empty directory): a mistyped --dir must not wipe unrelated files.
fn prepare_dir(dir: &Path, use_existing: bool) -> BenchResult<()> {
    let is_db = dir.join("CURRENT").is_file();
    if use_existing {
        if !is_db {
            return Err(format!(
                "--use-existing-db: {} holds no Sluice database (no CURRENT file)",
                dir.display()
            )
            .into());
        }
        return Ok(());
    }
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display()).into()),
        Ok(mut entries) => {
            if !is_db && entries.next().is_some() {
                return Err(format!(
                    "{} is not empty and holds no Sluice database; refusing to delete it",
                    dir.display()
                )
                .into());
            }
        }
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("deleting {}: {e}", dir.display()))?;
    Ok(())
}
