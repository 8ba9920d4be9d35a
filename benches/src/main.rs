//! `sluice-stress`: a db_bench-style workload driver for Sluice.
//!
//! ```text
//! sluice-stress fillseq,readrandom --num 1000000 --dir /tmp/db [--json] [...]
//! ```
//! Workloads run in the order given, on one database. Each prints one table row (or, with
//! `--json`, one JSON object per line on stdout); the configuration goes to stderr so stdout
//! stays machine-readable.
//!
//! Besides the db_bench workloads there are scenarios (Sluice only), each also one row or
//! JSON line, with its own figures under `scenario` and an optional per-second timeline
//! (`--timeline`) and chart (`--chart`):
//! - `compactionstress`: overwrites over a small key space (`--keyspace`) with a 1 MiB
//!   memtable (unless `--memtable-mb`): stalls, write amplification, compaction debt.
//! - `hotpartition`: zipfian reads/writes on a hash layout: per-partition load shares, and
//!   with `--hot-write-limit-mb` the effect of `Db::set_partition_write_limit` on the hottest.
//! - `migration`, `biasfix`, `rollback`: layout changes under a foreground load, see
//!   `migration.rs`; `migration3`: point-read cost with three layouts live vs one.
//!
//! With the `peers` feature, `--engine fjall|rocksdb|redb` runs the db_bench workloads on a
//! peer engine and `--engines sluice,fjall,...` runs each engine in its own child process
//! and prints a comparison (see `compare.rs`, and `peers.rs` for the settings used).

mod chart;
mod compare;
mod engine;
mod keys;
mod migration;
#[cfg(any(feature = "fjall", feature = "rocksdb", feature = "redb"))]
mod peers;
mod report;
mod scenario;
mod stress;
mod timeline;
mod workloads;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use sluice::{Compression, Db, Options, PartitionSpec, Stats, WriteOptions};

use engine::{EngineCounters, EngineKind, Kv, SluiceKv};
use keys::{Distribution, KeyChooser};
use report::WorkloadReport;
use workloads::{Settings, Workload};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-stress",
    version,
    about = "db_bench-style workloads against a Sluice database",
    after_help = "Examples:\n  \
        sluice-stress fillseq,readrandom --num 1000000 --dir /tmp/sluice-db --json\n  \
        sluice-stress fillrandom,readrandom --num 10000000 --cache-mb 64 --dir /tmp/big\n  \
        sluice-stress compactionstress --num 5000000 --threads 2 --timeline cs --chart cs.svg --dir /tmp/cs\n  \
        sluice-stress fillrandom,hotpartition --partition hash:16 --threads 4 --hot-write-limit-mb 0.5 --dir /tmp/hot\n  \
        sluice-stress migration --num 8000000 --control --compare-fresh --timeline mig --chart mig.svg --dir /tmp/mig\n  \
        sluice-stress biasfix|rollback|migration3 --num 8000000 --dir /tmp/mig\n  \
        sluice-stress fillseq,readrandom --num 1000000 --engines sluice,fjall,rocksdb,redb --dir /tmp/cmp   (--features peers)"
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

    /// Key-delta blocks (`Options::key_delta_blocks`): `--key-delta-blocks [true]` on,
    /// `--key-delta-blocks false` off (engine default if omitted).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    key_delta_blocks: Option<bool>,

    /// Table files kept open (`Options::max_open_files`; engine default, half the soft
    /// `RLIMIT_NOFILE`, if omitted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_open_files: Option<u64>,

    /// Memtable size in MiB (engine default if omitted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    memtable_mb: Option<u64>,

    /// Data block size in bytes (`Options::block_size`; engine default if omitted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(64..=(4 << 20)))]
    block_size: Option<u64>,

    /// Target SSTable size in MiB (`Options::target_file_bytes`; engine default if omitted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    target_file_mb: Option<u64>,

    /// Frozen memtables that may wait for a flush before writers stop
    /// (`Options::max_immutable_memtables`; engine default if omitted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    max_immutable_memtables: Option<u64>,

    /// Bloom filter bits per key of the tables Sluice writes (engine default if omitted;
    /// 0 disables filters).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=64))]
    bloom_bits: Option<u32>,

    /// Operations per read workload (default: --num).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    reads: Option<u64>,

    /// Stop each workload after this many seconds even if its operations are not done.
    #[arg(long, value_parser = parse_seconds)]
    duration_secs: Option<Duration>,

    /// Open the database already in --dir instead of starting from an empty one.
    #[arg(long, conflicts_with = "destroy")]
    use_existing_db: bool,

    /// Delete --dir before starting (the default), which is done only to a directory
    /// sluice-stress created (it leaves a `SLUICE_STRESS` file in it) or an empty one.
    #[arg(long)]
    destroy: bool,

    /// One JSON object per workload per line on stdout.
    #[arg(long)]
    json: bool,

    /// Seed of every key and value sequence.
    #[arg(long, default_value_t = 301)]
    seed: u64,

    /// How random workloads pick existing keys: uniform, zipfian or zipfian:THETA (ranks
    /// scattered over the key space). Default uniform; hotpartition's default is zipfian.
    #[arg(long, value_parser = Distribution::parse)]
    distribution: Option<Distribution>,

    /// Engine to run the workloads on (peers need the `peers` feature).
    #[arg(long, value_enum, default_value = "sluice")]
    engine: EngineKind,

    /// Run the workloads on each engine in turn, each in its own child process and its own
    /// directory under --dir, and print a comparison (Sluice ÷ best peer).
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with_all = ["engine", "use_existing_db"])]
    engines: Option<Vec<EngineKind>>,

    /// With --engines: run every engine this many times, taking turns (all engines once,
    /// then again), and compare the medians of each figure: one engine's figures move
    /// 15–20% between runs on a busy machine, more than the margins compared.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99), requires = "engines")]
    rounds: u32,

    /// With --engines: run ENGINE's child from the executable at PATH instead of this one
    /// (ENGINE=PATH, repeatable), so that an engine's RSS is measured in a binary built for
    /// it: a `peers` build links RocksDB, whose relocations and static constructors every
    /// process of that binary pays (~10 MB here) whichever engine it runs. The other
    /// executable must take the same flags (a `sluice-stress` of the same commit).
    #[arg(long = "engine-exe", value_parser = compare::parse_engine_exe, requires = "engines")]
    engine_exe: Vec<(EngineKind, PathBuf)>,

    /// Scenario timelines: FILE.csv or FILE.json writes that file; anything else is a prefix
    /// for PREFIX.csv and PREFIX.json (control runs add -control, several scenarios -NAME).
    #[arg(long)]
    timeline: Option<PathBuf>,

    /// An SVG chart of a scenario's timeline (migration scenarios and compactionstress).
    #[arg(long)]
    chart: Option<PathBuf>,

    /// compactionstress: keys are drawn from 0..KEYSPACE (default min(--num, 100000)).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keyspace: Option<u64>,

    /// Scenarios: operations per second per reader thread (default: closed loop).
    #[arg(long, value_parser = parse_ops_rate)]
    read_rate: Option<f64>,

    /// Scenarios: operations per second per writer thread (default: closed loop).
    #[arg(long, value_parser = parse_ops_rate)]
    write_rate: Option<f64>,

    /// Migration scenarios: writer threads of the foreground load (readers: --threads).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=1024))]
    writers: u64,

    /// Migration scenarios: seconds of foreground load before the layout changes.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    stable_secs: Duration,

    /// Migration scenarios: seconds of foreground load after the migration completes.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    post_secs: Duration,

    /// Migration scenarios: give up waiting for completion after this many seconds.
    #[arg(long, default_value = "600", value_parser = parse_seconds)]
    migrate_secs: Duration,

    /// Migration scenarios: the layout to migrate to (biasfix: the corrected layout v3).
    #[arg(long, default_value = "hash:16", value_parser = parse_partition)]
    to: PartitionSpec,

    /// biasfix/migration3: the biased layout v2 (default: --to with a hashed prefix that
    /// covers only the first significant digit of the keys, so most keys collide).
    #[arg(long, value_parser = parse_partition)]
    biased: Option<PartitionSpec>,

    /// biasfix: share of the data in the biased layout at which it is replaced.
    #[arg(long, default_value_t = 0.6, value_parser = parse_fraction)]
    detect_at: f64,

    /// rollback: share of the data in the new layout at which the migration is rolled back.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    rollback_at: f64,

    /// rollback: seconds spent rolled back before going forward again.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    rollback_secs: Duration,

    /// Migration budget of the background pacer in MiB/s (engine default if omitted).
    #[arg(long, value_parser = parse_rate)]
    migration_mb_per_sec: Option<f64>,

    /// Foreground p99 (µs) above which the pacer backs off; `auto` = 1.25 x the p99 of the
    /// stable phase (reads and writes together, as the pacer measures).
    #[arg(long)]
    p99_target_us: Option<P99Target>,

    /// Migration scenarios: also run the identical load for the identical time without the
    /// migration (from a checkpoint of the same data, same seed) and derive the migration's
    /// write amplification from the difference.
    #[arg(long)]
    control: bool,

    /// Migration scenarios: after completion, copy the data into a fresh database created
    /// with the final layout and compare point reads and scans on both.
    #[arg(long)]
    compare_fresh: bool,

    /// hotpartition: after measuring, limit writes into the hottest partition to this many
    /// MiB/s (`Db::set_partition_write_limit`) and measure again.
    #[arg(long, value_parser = parse_rate)]
    hot_write_limit_mb: Option<f64>,

    /// hotpartition: share of operations that are reads.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    read_fraction: f64,

    /// Lazy read-time moves budget in MiB/s (0 = off); engine default, except 0 in runs
    /// with migration3 (so its three-layout state holds still while it is measured).
    #[arg(long)]
    move_mb_per_sec: Option<u64>,

    /// Lazy moves on a key's first read from a draining layout, not only on a read of a key
    /// read there recently (the engine's default).
    #[arg(long)]
    move_on_first_read: bool,

    /// Unsynced WAL bytes Sluice keeps in the process before handing them to the OS, in
    /// KiB. 0 hands every commit group to the OS at once. Default: the engine's (64 KiB, or
    /// 10 ms); in `--engines` comparisons 0, as the peers do (fjall persists to the OS
    /// buffer per write, RocksDB writes its WAL per write group), so no engine keeps
    /// acknowledged writes a process crash would lose.
    #[arg(long)]
    wal_buffer_kb: Option<usize>,
    /// WAL bytes handed to the OS after which Sluice fsyncs the live WAL in the background,
    /// in KiB (0: never). Default: the engine's (0).
    #[arg(long)]
    wal_sync_kb: Option<u64>,

    /// Makes every fsync Sluice issues take this many microseconds longer (through the
    /// engine's fault-injecting file system, `sluice::fs::FaultFs`), to model a slower
    /// device than this one: the engine-core issue's group-commit target assumes a 3.4 ms
    /// `fdatasync`. Sluice only (an engine comparison must run every engine on one device).
    #[arg(long, conflicts_with = "engines", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    fsync_delay_us: Option<u64>,
}

/// `--p99-target-us`: a fixed figure or one derived from the stable phase.
#[derive(Clone, Copy, Debug, PartialEq)]
enum P99Target {
    Micros(u64),
    Auto,
}

impl std::str::FromStr for P99Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(P99Target::Auto);
        }
        s.parse::<u64>()
            .map(P99Target::Micros)
            .map_err(|_| format!("expected microseconds or `auto`, got {s:?}"))
    }
}

/// A rate in MiB/s, of at least one byte a second: it is used in whole bytes, and a smaller
/// one became 0 (which pauses background migration, and which a partition write limit
/// refuses only after the unlimited phase has been measured).
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v * (1u64 << 20) as f64 >= 1.0 => Ok(v),
        _ => Err(format!(
            "expected a number of MiB/s of at least one byte a second (1/1048576), got {s:?}"
        )),
    }
}

/// `--read-rate`/`--write-rate`: the pacer's interval (1/rate) must be a usable `Duration`
/// (at most an hour, at least a nanosecond).
fn parse_ops_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0 / 3600.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected operations per second per thread, between 1/3600 and 1e9, got {s:?}"
        )),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a fraction between 0 and 1, got {s:?}")),
    }
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
    report::note_start_rss();
    let cli = Cli::parse();
    // compactionstress draws keys from 0..--keyspace, which may exceed --num.
    let widest = cli.num.max(cli.keyspace.unwrap_or(0));
    let digits = keys::decimal_digits(widest - 1);
    if (cli.key_size as usize) < digits {
        Cli::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--key-size {} cannot hold {} distinct zero-padded decimal keys (needs {digits})",
                    cli.key_size, widest
                ),
            )
            .exit();
    }
    if let Some(engines) = &cli.engines {
        return match compare::run_engines(&cli, engines) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice-stress: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = if cli.engine == EngineKind::Sluice {
        run(&cli)
    } else {
        run_peer(&cli)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-stress: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The Options a run opens Sluice with (also used for the scratch databases of scenarios).
fn sluice_options(cli: &Cli) -> Options {
    let mut opts = Options {
        partition: cli.partition.clone(),
        create_if_missing: !cli.use_existing_db,
        block_cache_bytes: cli.cache_mb.saturating_mul(1 << 20),
        compression: cli.compression,
        ..Options::default()
    };
    if let Some(on) = cli.key_delta_blocks {
        opts.key_delta_blocks = on;
    }
    if let Some(b) = cli.block_size {
        opts.block_size = b as usize;
    }
    if let Some(n) = cli.max_open_files {
        opts.max_open_files = Some(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if let Some(kb) = cli.wal_buffer_kb {
        opts.wal_buffer_bytes = kb.saturating_mul(1 << 10);
    }
    if let Some(kb) = cli.wal_sync_kb {
        opts.wal_bytes_per_sync = kb.saturating_mul(1 << 10);
    }
    if let Some(mb) = cli.memtable_mb {
        // Saturating: an absurd size reaches the engine's own bound check, not a wrapped 0.
        opts.memtable_bytes = usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    } else if cli.workloads.contains(&Workload::CompactionStress) {
        // compactionstress wants constant flushes and compactions.
        opts.memtable_bytes = 1 << 20;
    }
    if let Some(mb) = cli.target_file_mb {
        opts.target_file_bytes = mb.saturating_mul(1 << 20);
    }
    if let Some(n) = cli.max_immutable_memtables {
        opts.max_immutable_memtables = n as usize;
    }
    if let Some(bits) = cli.bloom_bits {
        opts.bloom_bits_per_key = bits;
    }
    if let Some(mb) = cli.move_mb_per_sec {
        opts.move_bytes_per_sec = mb.saturating_mul(1 << 20);
    } else if cli.workloads.contains(&Workload::Migration3) {
        opts.move_bytes_per_sec = 0;
    }
    opts.move_on_first_read = cli.move_on_first_read;
    if let Some(us) = cli.fsync_delay_us {
        let fs = sluice::fs::FaultFs::new();
        fs.set_sync_delay(Some(Duration::from_micros(us)));
        opts.fs = std::sync::Arc::new(fs);
    }
    opts
}

fn settings(cli: &Cli) -> Settings {
    let distribution = cli.distribution.unwrap_or(Distribution::Uniform);
    Settings {
        num: cli.num,
        reads: cli.reads.unwrap_or(cli.num),
        key_size: cli.key_size as usize,
        value_size: cli.value_size as usize,
        threads: cli.threads as usize,
        write_options: WriteOptions { sync: cli.sync },
        duration: cli.duration_secs,
        seed: cli.seed,
        chooser: KeyChooser::new(distribution, cli.num, cli.seed),
    }
}

/// What one workload did, whichever engine ran it.
struct Done {
    m: workloads::Measured,
    scenario: Option<serde_json::Value>,
    human: Vec<String>,
    /// A scenario's check failed (reported, then the run exits non-zero).
    failure: Option<String>,
}

/// Counters sampled around a workload.
struct Sample {
    engine: EngineCounters,
    os_write: Option<u64>,
    os_cancelled: Option<u64>,
    /// The workload's peak resident set so far (see [`report::workload_peak_rss_mb`]).
    workload_peak_rss_mb: Option<f64>,
    /// The process's CPU seconds so far (see [`report::process_cpu_secs`]).
    cpu_secs: Option<f64>,
}

fn sample<K: Kv>(kv: &K) -> Sample {
    Sample {
        engine: kv.counters(),
        os_write: report::os_write_bytes(),
        os_cancelled: report::os_cancelled_bytes(),
        workload_peak_rss_mb: report::workload_peak_rss_mb(),
        cpu_secs: report::process_cpu_secs(),
    }
}

/// Waits, after a workload, until the engine has stopped writing: its own byte counter and
/// the process's storage writes unchanged for a second (at most five minutes). Write
/// amplification counted only up to the workload's end credits an engine for compaction it
/// has not done yet; counted after the settle it charges every engine for all the writing
/// its workload caused. The same test for every engine: none is asked how busy it is.
/// Returns the sample taken once quiet and the seconds the engine kept writing.
fn settle<K: Kv>(kv: &K) -> (Sample, f64) {
    let mut last = None;
    let (_, busy) = report::wait_quiet(
        || {
            let s = sample(kv);
            let key = (s.engine.device_bytes, s.os_write);
            last = Some(s);
            key
        },
        Duration::from_secs(1),
        Duration::from_secs(300),
    );
    (last.expect("sampled at least once"), busy.as_secs_f64())
}

#[allow(clippy::too_many_arguments, reason = "one report from its parts")]
fn build_report(
    cli: &Cli,
    settings: &Settings,
    workload: Workload,
    partition: &str,
    distribution: &str,
    done: &Done,
    before: &Sample,
    after: &Sample,
    settled: &(Sample, f64),
    cumulative_write_amp: Option<f64>,
    dir: &Path,
) -> BenchResult<WorkloadReport> {
    let m = &done.m;
    let diff = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
    let user = diff(after.engine.user_bytes, before.engine.user_bytes);
    let device = diff(after.engine.device_bytes, before.engine.device_bytes);
    let stall = diff(after.engine.stall_micros, before.engine.stall_micros);
    let os_write = diff(after.os_write, before.os_write);
    let (settled, settle_secs) = settled;
    let settled_device = diff(settled.engine.device_bytes, before.engine.device_bytes);
    let settled_os = diff(settled.os_write, before.os_write);
    let cpu = |a: Option<f64>| Some((a? - before.cpu_secs?).max(0.0));
    let settled_cpu = cpu(settled.cpu_secs);
    // Every write amplification divides by the same figure for every engine: the key and
    // value bytes the workload handed over. (Engines count their own "user bytes"
    // differently: RocksDB's include each batch's header and record framing, 13% more at
    // 16-byte keys and 100-byte values.) Scenarios, which keep no such count, use the
    // engine's.
    let user_or_est = match workloads::user_bytes_estimate(workload, m, settings) {
        0 => user.unwrap_or(0),
        handed_over => handed_over,
    };
    let over_user = |w: Option<u64>| match w {
        Some(w) if user_or_est > 0 => Some(w as f64 / user_or_est as f64),
        _ => None,
    };
    Ok(WorkloadReport {
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
        p9999_us: m.latency.quantile_us(0.9999),
        max_us: m.latency.max_us(),
        write_amp: cumulative_write_amp,
        disk_bytes: report::disk_bytes(dir)?,
        start_rss_mb: report::start_rss_mb(),
        peak_rss_mb: report::peak_rss_mb(),
        // As the workload ended, before the settle's background work.
        workload_peak_rss_mb: after.workload_peak_rss_mb,
        stall_ms: stall.map(|s| s as f64 / 1000.0),
        slow_ms: m.latency.time_in_slow_ms(report::SLOW_OP_NANOS),
        wal_syncs: diff(after.engine.wal_syncs, before.engine.wal_syncs),
        key_size: settings.key_size,
        value_size: settings.value_size,
        partition: partition.to_string(),
        sync: cli.sync,
        workload_write_amp: over_user(device),
        user_bytes_written: user_or_est,
        device_bytes_written: device.unwrap_or(0),
        found: m.found,
        background_writes: m.background_writes,
        engine: cli.engine.name().to_string(),
        distribution: distribution.to_string(),
        os_write_bytes: os_write,
        os_write_amp: over_user(os_write),
        settled_write_amp: over_user(settled_device),
        settled_os_write_amp: over_user(settled_os),
        settled_os_cancelled_bytes: diff(settled.os_cancelled, before.os_cancelled),
        settle_secs: *settle_secs,
        cpu_secs: cpu(after.cpu_secs),
        settled_cpu_secs: settled_cpu,
        // Over every operation the run made: readwhilewriting's background writes too
        // (their CPU is in the figure, and each engine's writer gets through a different
        // number of them).
        cpu_us_per_op: {
            let ops = m.ops + m.background_writes.unwrap_or(0);
            settled_cpu
                .filter(|_| ops > 0)
                .map(|c| c * 1e6 / ops as f64)
        },
        scenario: done.scenario.clone(),
    })
}

fn emit(cli: &Cli, r: &WorkloadReport, human: &[String]) -> BenchResult<()> {
    if cli.json {
        println!("{}", r.json_line()?);
    } else {
        println!("{}", r.table_row());
        for line in human {
            println!("    {line}");
        }
    }
    Ok(())
}

/// Scenario names that write a timeline; with more than one in a run, files get their name.
fn timeline_tag(cli: &Cli, w: Workload) -> Option<String> {
    let n = cli
        .workloads
        .iter()
        .filter(|w| w.is_scenario() && !matches!(w, Workload::Migration3 | Workload::HotPartition))
        .count();
    (n > 1).then(|| w.name().to_string())
}

fn run(cli: &Cli) -> BenchResult<()> {
    prepare_dir(&cli.dir, cli.use_existing_db)?;
    let opts = sluice_options(cli);
    let db = Db::open(&cli.dir, opts.clone())
        .map_err(|e| format!("opening {}: {e}", cli.dir.display()))?;
    // An existing database keeps its own layouts, so report what it really targets.
    let layout = db.layout();
    let partition = layout
        .versions
        .iter()
        .find(|v| v.is_target)
        .map_or_else(|| cli.partition.to_string(), |v| v.spec.to_string());

    let settings = settings(cli);
    let names: Vec<_> = cli.workloads.iter().map(|w| w.name()).collect();
    eprintln!(
        "sluice-stress: workloads={} num={} reads={} threads={} key_size={} value_size={} sync={} \
         partition={partition} target={} compression={:?} key_delta_blocks={} block_size={} max_open_files={} cache_mb={} memtable_mb={} \
         bloom_bits={} duration_secs={} dir={} existing_db={} seed={} distribution={} \
         engine=sluice move_mb_per_sec={} move_on_first_read={} wal_buffer_kb={} wal_sync_kb={} \
         fsync_delay_us={}",
        names.join(","),
        settings.num,
        settings.reads,
        settings.threads,
        settings.key_size,
        settings.value_size,
        cli.sync,
        layout.target,
        cli.compression,
        opts.key_delta_blocks,
        opts.block_size,
        opts.max_open_files
            .map_or_else(|| "default".to_string(), |n| n.to_string()),
        cli.cache_mb,
        opts.memtable_bytes as f64 / (1 << 20) as f64,
        opts.bloom_bits_per_key,
        cli.duration_secs
            .map_or_else(|| "none".to_string(), |d| d.as_secs_f64().to_string()),
        cli.dir.display(),
        cli.use_existing_db,
        cli.seed,
        cli.distribution.unwrap_or(Distribution::Uniform),
        opts.move_bytes_per_sec as f64 / (1 << 20) as f64,
        opts.move_on_first_read,
        opts.wal_buffer_bytes >> 10,
        opts.wal_bytes_per_sync >> 10,
        cli.fsync_delay_us.unwrap_or(0),
    );
    if !cli.json {
        println!("{}", WorkloadReport::table_header());
    }

    let kv = SluiceKv {
        db: db.clone(),
        write_options: settings.write_options,
    };
    let mut failures = Vec::new();
    for (index, &workload) in cli.workloads.iter().enumerate() {
        let before_stats = db.stats();
        report::start_workload_peak();
        let before = sample(&kv);
        let ctx = ScenarioCtx {
            cli,
            settings: &settings,
            index,
            opts: &opts,
            tag: timeline_tag(cli, workload),
        };
        let done = if workload.is_scenario() {
            run_scenario(&db, &ctx, workload)
        } else {
            workloads::run(&kv, &settings, workload, index).map(|m| Done {
                m,
                scenario: None,
                human: Vec::new(),
                failure: None,
            })
        }
        .map_err(|e| format!("{}: {e}", workload.name()))?;
        let after_stats = db.stats();
        let after = sample(&kv);
        let settled = settle(&kv);
        let distribution = match workload {
            Workload::HotPartition => cli
                .distribution
                .unwrap_or(Distribution::Zipfian {
                    theta: Distribution::DEFAULT_THETA,
                })
                .to_string(),
            _ => cli
                .distribution
                .unwrap_or(Distribution::Uniform)
                .to_string(),
        };
        // A scenario may change the layout: report the target it ended on.
        let partition_now = db
            .layout()
            .versions
            .iter()
            .find(|v| v.is_target)
            .map_or_else(|| partition.clone(), |v| v.spec.to_string());
        let r = build_report(
            cli,
            &settings,
            workload,
            &partition_now,
            &distribution,
            &done,
            &before,
            &after,
            &settled,
            Some(after_stats.write_amplification),
            &cli.dir,
        )?;
        debug_assert!(workload.is_scenario() || done.m.latency.count() == done.m.ops);
        emit(cli, &r, &done.human)?;
        if let Some(f) = done.failure {
            failures.push(format!("{}: {f}", workload.name()));
        }
        // The LSM shape explains most surprises in the figures (e.g. scans merging many L0
        // files); stderr keeps it out of --json output.
        eprintln!(
            "sluice-stress: after {}: {}",
            workload.name(),
            lsm_shape(&after_stats)
        );
        if after_stats.background_errors > before_stats.background_errors {
            eprintln!(
                "sluice-stress: warning: {} background errors during {}",
                after_stats.background_errors - before_stats.background_errors,
                workload.name()
            );
        }
    }
    db.close()?;
    if !failures.is_empty() {
        return Err(failures.join("; ").into());
    }
    Ok(())
}

/// What a scenario gets to know about the run.
pub(crate) struct ScenarioCtx<'a> {
    pub cli: &'a Cli,
    pub settings: &'a Settings,
    pub index: usize,
    /// The options the run's database was opened with.
    pub opts: &'a Options,
    /// Distinguishes this scenario's timeline files from another's in the same run.
    pub tag: Option<String>,
}

fn run_scenario(db: &Db, ctx: &ScenarioCtx<'_>, w: Workload) -> BenchResult<Done> {
    match w {
        Workload::CompactionStress => stress::compaction_stress(db, ctx),
        Workload::HotPartition => stress::hot_partition(db, ctx),
        Workload::Migration => migration::run(db, ctx, migration::Kind::Migration),
        Workload::BiasFix => migration::run(db, ctx, migration::Kind::BiasFix),
        Workload::Rollback => migration::run(db, ctx, migration::Kind::Rollback),
        Workload::Migration3 => migration::three_versions(db, ctx),
        other => Err(format!("{} is not a scenario", other.name()).into()),
    }
}

/// Refuses settings only Sluice applies (the peers' are fixed in `peers.rs`): a comparison
/// run with one of them would change Sluice alone and still print Sluice ÷ best peer.
pub(crate) fn refuse_sluice_only_settings(cli: &Cli) -> BenchResult<()> {
    let set: Vec<&str> = [
        (
            "--compression",
            cli.compression != sluice::Compression::None,
        ),
        ("--key-delta-blocks", cli.key_delta_blocks.is_some()),
        ("--block-size", cli.block_size.is_some()),
        ("--max-open-files", cli.max_open_files.is_some()),
        ("--target-file-mb", cli.target_file_mb.is_some()),
        (
            "--max-immutable-memtables",
            cli.max_immutable_memtables.is_some(),
        ),
        ("--bloom-bits", cli.bloom_bits.is_some()),
        ("--wal-sync-kb", cli.wal_sync_kb.is_some()),
        (
            "--partition",
            parse_partition("range").is_ok_and(|r| r != cli.partition),
        ),
    ]
    .into_iter()
    .filter_map(|(flag, on)| on.then_some(flag))
    .collect();
    if set.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} set: Sluice alone applies it, so a comparison with peers would not be like for \
         like (run Sluice alone with it)",
        set.join(", ")
    )
    .into())
}

/// Marks a directory `sluice-stress` created for a peer engine (so it may delete it later).
const PEER_MARKER: &str = "SLUICE_STRESS_PEER";

/// `--engine fjall|rocksdb|redb`: the db_bench workloads on a peer engine, same keys, values
/// and order as on Sluice.
fn run_peer(cli: &Cli) -> BenchResult<()> {
    refuse_sluice_only_settings(cli)?;
    if cli.fsync_delay_us.is_some() {
        return Err("--fsync-delay-us works with --engine sluice only".into());
    }
    if cli.use_existing_db {
        return Err("--use-existing-db works with --engine sluice only".into());
    }
    if let Some(w) = cli.workloads.iter().find(|w| !w.runs_on_peers()) {
        return Err(format!(
            "{} runs on Sluice only; peers run fillseq, fillrandom, overwrite, readrandom, \
             readmissing, seekrandom, readwhilewriting, batchtransfer",
            w.name()
        )
        .into());
    }
    prepare_peer_dir(&cli.dir)?;
    let settings = settings(cli);
    let opts = sluice_options(cli);
    let cfg = engine::PeerConfig {
        cache_bytes: cli.cache_mb.saturating_mul(1 << 20),
        memtable_bytes: opts.memtable_bytes as u64,
        sync: cli.sync,
    };
    let peer = engine::open_peer(cli.engine, &cli.dir, &cfg)?;
    let names: Vec<_> = cli.workloads.iter().map(|w| w.name()).collect();
    eprintln!(
        "sluice-stress: workloads={} num={} reads={} threads={} key_size={} value_size={} sync={} \
         cache_mb={} memtable_mb={} dir={} seed={} distribution={} engine={}",
        names.join(","),
        settings.num,
        settings.reads,
        settings.threads,
        settings.key_size,
        settings.value_size,
        cli.sync,
        cli.cache_mb,
        cfg.memtable_bytes >> 20,
        cli.dir.display(),
        cli.seed,
        cli.distribution.unwrap_or(Distribution::Uniform),
        cli.engine.name(),
    );
    if !cli.json {
        println!("{}", WorkloadReport::table_header());
    }
    let distribution = cli
        .distribution
        .unwrap_or(Distribution::Uniform)
        .to_string();
    for (index, &workload) in cli.workloads.iter().enumerate() {
        report::start_workload_peak();
        let before = sample(&peer);
        let m = workloads::run(&peer, &settings, workload, index)
            .map_err(|e| format!("{}: {e}", workload.name()))?;
        let after = sample(&peer);
        let settled = settle(&peer);
        let cumulative = match (after.engine.user_bytes, after.engine.device_bytes) {
            (Some(u), Some(d)) if u > 0 => Some(d as f64 / u as f64),
            _ => None,
        };
        let done = Done {
            m,
            scenario: None,
            human: Vec::new(),
            failure: None,
        };
        let r = build_report(
            cli,
            &settings,
            workload,
            "-",
            &distribution,
            &done,
            &before,
            &after,
            &settled,
            cumulative,
            &cli.dir,
        )?;
        emit(cli, &r, &[])?;
    }
    peer.close()?;
    Ok(())
}

/// A peer's directory: created fresh with a marker; an existing one is deleted only if it
/// carries the marker (or is empty).
fn prepare_peer_dir(dir: &Path) -> BenchResult<()> {
    clear_dir(dir, PEER_MARKER)?;
    mark_dir(dir, PEER_MARKER)
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
        "{}; memtable {:.1} MB + {} immutable; {} flushes ({} of idle memtables), {} compactions ({} trivial moves); \
         written so far: WAL {:.1} MB, flushes {:.1} MB, compactions {:.1} MB; pending compaction {:.1} MB, block cache {:.1} MB, table indexes and filters {:.1} MB; {} table files open, {} opened; {} gets probed {} filters and searched {} tables \
         ({} filter false positives)",
        if levels.is_empty() {
            "no SSTables".to_string()
        } else {
            levels.join(", ")
        },
        mb(s.memtable_bytes),
        s.immutable_memtables,
        s.flushes,
        s.idle_flushes,
        s.compactions,
        s.trivial_moves,
        mb(s.wal_bytes_written),
        mb(s.bytes_flushed),
        mb(s.compaction_bytes_written),
        mb(s.pending_compaction_bytes),
        mb(s.block_cache_bytes),
        mb(s.table_memory_bytes),
        s.open_table_files,
        s.table_file_opens,
        s.gets,
        s.get_filter_checks,
        s.get_table_reads,
        s.get_filter_false_positives,
    )
}

/// The same sum the engine divides by user bytes for `write_amplification`.
pub(crate) fn device_bytes(s: &Stats) -> u64 {
    s.wal_bytes_written + s.bytes_flushed + s.compaction_bytes_written
}

/// Marks a directory `sluice-stress` created for a Sluice database (so it may delete it
/// later).
pub(crate) const STRESS_MARKER: &str = "SLUICE_STRESS";

/// Starts from a new directory unless asked to reuse one. An existing directory is deleted
/// only if `sluice-stress` created it (it carries the marker) or it is empty: a mistyped
/// --dir, or one naming a real database, must not be wiped.
pub(crate) fn prepare_dir(dir: &Path, use_existing: bool) -> BenchResult<()> {
    if use_existing {
        if !dir.join("CURRENT").is_file() {
            return Err(format!(
                "--use-existing-db: {} holds no Sluice database (no CURRENT file)",
                dir.display()
            )
            .into());
        }
        return Ok(());
    }
    clear_dir(dir, STRESS_MARKER)?;
    mark_dir(dir, STRESS_MARKER)
}

/// Removes `dir` if it is empty or carries `marker` (left by [`mark_dir`]); refuses anything
/// else. Leaves `dir` absent.
pub(crate) fn clear_dir(dir: &Path, marker: &str) -> BenchResult<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display()).into()),
        Ok(mut entries) => {
            if !dir.join(marker).is_file() && entries.next().is_some() {
                return Err(format!(
                    "{} is not empty and was not created by sluice-stress; refusing to delete \
                     it (--use-existing-db runs on an existing database)",
                    dir.display()
                )
                .into());
            }
            std::fs::remove_dir_all(dir).map_err(|e| format!("deleting {}: {e}", dir.display()))?;
            Ok(())
        }
    }
}

/// Writes an output file the user named with `flag` (`--chart`, `--timeline`) by replacing
/// the name (`sluice::fs::replace_file`: never writing through a link to another file).
/// Refused inside the benchmark's database directory `db_dir`, which a later run clears.
pub(crate) fn write_output(
    flag: &str,
    path: &Path,
    bytes: &[u8],
    db_dir: &Path,
) -> BenchResult<()> {
    let failed = |e: std::io::Error| format!("{flag} {}: {e}", path.display());
    if sluice::fs::lies_inside(path, db_dir).map_err(failed)? {
        return Err(format!(
            "{flag} {}: refusing to write inside the database directory {}",
            path.display(),
            db_dir.display()
        )
        .into());
    }
    Ok(sluice::fs::replace_file(path, bytes).map_err(failed)?)
}

/// Creates `dir` if needed and leaves `marker` in it, so [`clear_dir`] may delete it later.
pub(crate) fn mark_dir(dir: &Path, marker: &str) -> BenchResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(
        dir.join(marker),
        "created by sluice-stress; it may delete this directory\n",
    )
    .map_err(|e| format!("marking {}: {e}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output file replaces its name: a file the name was a hard link to (a table of a
    /// checkpoint, say) keeps its bytes. One inside the database directory is refused, and
    /// nothing is written there.
    #[test]
    fn outputs_replace_names_and_stay_out_of_the_database_directory() {
        let d = tempfile::tempdir().unwrap();
        let table = d.path().join("000007.sst");
        std::fs::write(&table, "table bytes").unwrap();
        let chart = d.path().join("chart.svg");
        std::fs::hard_link(&table, &chart).unwrap();
        write_output("--chart", &chart, b"<svg/>", &d.path().join("db")).unwrap();
        assert_eq!(std::fs::read(&chart).unwrap(), b"<svg/>");
        assert_eq!(std::fs::read(&table).unwrap(), b"table bytes");
        let db = d.path().join("db");
        std::fs::create_dir(&db).unwrap();
        let inside = db.join("timeline.csv");
        let e = write_output("--timeline", &inside, b"x", &db).unwrap_err();
        assert!(
            e.to_string().contains("inside the database directory"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&db).unwrap().count(), 0);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
    }

    /// `--key-delta-blocks` alone turns key-delta blocks on, `true`/`false` set them, and
    /// without the flag the engine's default stands (also with flags after it).
    #[test]
    fn key_delta_blocks_flag_forms() {
        let opts = |extra: &[&str]| {
            let mut args = vec![
                "sluice-stress",
                "fillrandom",
                "--num",
                "10",
                "--dir",
                "/tmp/x",
            ];
            args.extend_from_slice(extra);
            sluice_options(&Cli::try_parse_from(args).unwrap()).key_delta_blocks
        };
        assert_eq!(opts(&[]), Options::default().key_delta_blocks);
        assert!(opts(&["--key-delta-blocks"]));
        assert!(opts(&["--key-delta-blocks", "--cache-mb", "8"]));
        assert!(opts(&["--key-delta-blocks", "true"]));
        assert!(!opts(&["--key-delta-blocks", "false"]));
        assert!(Cli::try_parse_from([
            "sluice-stress",
            "fillrandom",
            "--dir",
            "/tmp/x",
            "--key-delta-blocks",
            "maybe"
        ])
        .is_err());
    }

    /// A MiB/s rate is used in whole bytes a second: one under a byte (0 once converted)
    /// is a usage error. `--hot-write-limit-mb 1e-7` was accepted, measured the unlimited
    /// phase and then failed on a limit of 0; `--migration-mb-per-sec 1e-7` paused
    /// background migration.
    #[test]
    fn rates_under_a_byte_a_second_are_refused() {
        let parse = |flag: &str, v: &str| {
            Cli::try_parse_from(["sluice-stress", "hotpartition", "--dir", "/tmp/x", flag, v])
        };
        for flag in ["--hot-write-limit-mb", "--migration-mb-per-sec"] {
            for v in ["1e-7", "0", "-1", "NaN", "inf"] {
                assert!(parse(flag, v).is_err(), "{flag} {v}");
            }
            for v in ["0.000001", "1", "2.5"] {
                assert!(parse(flag, v).is_ok(), "{flag} {v}");
            }
        }
        let cli = parse("--hot-write-limit-mb", "0.000001").unwrap();
        let mb = cli.hot_write_limit_mb.unwrap();
        assert!((mb * (1 << 20) as f64) as u64 >= 1);
    }

    /// `--dir` is deleted only if sluice-stress made it (or it is empty): a real database,
    /// or any other files, are refused and left as they were.
    #[test]
    fn prepare_dir_deletes_only_what_sluice_stress_created() {
        let root = tempfile::tempdir().unwrap();
        // A database sluice-stress did not create (here, just its CURRENT) with other files.
        let theirs = root.path().join("theirs");
        std::fs::create_dir_all(theirs.join("photos")).unwrap();
        std::fs::write(theirs.join("CURRENT"), "MANIFEST-000001\n").unwrap();
        std::fs::write(theirs.join("notes.txt"), "keep").unwrap();
        let e = prepare_dir(&theirs, false).unwrap_err().to_string();
        assert!(e.contains("refusing to delete"), "{e}");
        assert!(theirs.join("CURRENT").is_file() && theirs.join("notes.txt").is_file());
        assert!(theirs.join("photos").is_dir());
        // --use-existing-db still runs on it.
        prepare_dir(&theirs, true).unwrap();
        // A new directory is created and marked; the next run may delete it.
        let ours = root.path().join("ours");
        prepare_dir(&ours, false).unwrap();
        assert!(ours.join(STRESS_MARKER).is_file());
        std::fs::write(ours.join("000001.sst"), "data").unwrap();
        prepare_dir(&ours, false).unwrap();
        assert!(!ours.join("000001.sst").exists());
        assert!(ours.join(STRESS_MARKER).is_file());
        // An empty directory is taken over; a peer's marker does not stand in for ours.
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        prepare_dir(&empty, false).unwrap();
        assert!(empty.join(STRESS_MARKER).is_file());
        let peer = root.path().join("peer");
        prepare_peer_dir(&peer).unwrap();
        std::fs::write(peer.join("x"), "y").unwrap();
        assert!(prepare_dir(&peer, false).is_err());
    }
}
