//! Measurements and their presentation: latency histograms, process and directory figures,
//! and the per-workload report (a table row, or one JSON line).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::BenchResult;

/// Per-operation latencies in nanoseconds. Nanoseconds rather than microseconds because a
/// memtable hit takes well under one; the report converts.
pub struct Latency(Histogram<u64>);

impl Latency {
    /// An hour: anything slower is a hang, recorded at the ceiling rather than dropped.
    const MAX_NANOS: u64 = 3_600_000_000_000;

    pub fn new() -> Latency {
        Latency(
            Histogram::new_with_bounds(1, Self::MAX_NANOS, 3)
                .expect("constant histogram bounds are valid"),
        )
    }

    pub fn record(&mut self, nanos: u64) {
        self.0.saturating_record(nanos.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail; saturate rather than panic anyway.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Milliseconds spent in operations that took at least `threshold_nanos` each, summed
    /// over threads, to the histogram's precision (0.1%).
    pub fn time_in_slow_ms(&self, threshold_nanos: u64) -> f64 {
        let nanos: u128 = self
            .0
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= threshold_nanos)
            .map(|v| {
                u128::from(self.0.median_equivalent(v.value_iterated_to()))
                    * u128::from(v.count_at_value())
            })
            .sum();
        nanos as f64 / 1e6
    }

    /// The slowest operation recorded (0 if none), to the histogram's precision.
    pub fn max_us(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A figure of this process's `/proc/self/status` (`VmHWM`, `VmRSS`), in KiB.
fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's high-water mark of this process's resident set, in KiB.
fn vm_hwm_kb() -> Option<u64> {
    status_kb("VmHWM:")
}

/// This process's resident set when [`note_start_rss`] ran (KiB; 0 until then).
static START_RSS_KB: AtomicU64 = AtomicU64::new(0);

/// Notes the resident set before any engine is opened: what the executable, its libraries
/// and their start-up cost, whatever engine then runs in it. (A binary that links RocksDB
/// starts ~10 MB above one that does not: its relocations and static constructors.)
pub fn note_start_rss() {
    if let Some(kb) = status_kb("VmRSS:") {
        START_RSS_KB.store(kb, Ordering::Relaxed);
    }
}

/// The resident set noted at start in MiB, or `None` if it was not noted.
pub fn start_rss_mb() -> Option<f64> {
    let kb = START_RSS_KB.load(Ordering::Relaxed);
    (kb > 0).then(|| kb as f64 / 1024.0)
}

/// The chain's high-water mark before the current workload's (KiB), and whether the
/// kernel's mark was reset when that workload started.
static CHAIN_PEAK_KB: AtomicU64 = AtomicU64::new(0);
static WORKLOAD_RESET: AtomicBool = AtomicBool::new(false);

/// Starts a workload's own peak: folds the high-water mark so far into the chain's, then
/// resets the kernel's to the current resident set (`/proc/self/clear_refs`, "5").
pub fn start_workload_peak() {
    if let Some(kb) = vm_hwm_kb() {
        CHAIN_PEAK_KB.fetch_max(kb, Ordering::Relaxed);
    }
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    WORKLOAD_RESET.store(reset, Ordering::Relaxed);
}

/// Peak resident set size of this process in MiB over every workload so far (the chain's
/// high-water mark: it never goes down between workloads), or `None` where `/proc` is
/// unavailable.
pub fn peak_rss_mb() -> Option<f64> {
    let kb = vm_hwm_kb()?.max(CHAIN_PEAK_KB.load(Ordering::Relaxed));
    Some(kb as f64 / 1024.0)
}

/// Peak resident set size in MiB since the current workload started (see
/// [`start_workload_peak`]); `None` if the kernel's mark could not be reset, so that a
/// cumulative figure is never passed off as one workload's.
pub fn workload_peak_rss_mb() -> Option<f64> {
    if !WORKLOAD_RESET.load(Ordering::Relaxed) {
        return None;
    }
    Some(vm_hwm_kb()? as f64 / 1024.0)
}

/// Bytes this process caused to be written to storage (`write_bytes - cancelled_write_bytes`
/// from `/proc/self/io`: counted when pages are dirtied, minus dirty pages of files deleted
/// before writeback), or `None` where the kernel does not account I/O per task. The same
/// figure for every engine, including those that keep no byte counters of their own.
///
/// An engine that deletes a file it never fsynced soon after writing it is charged nothing
/// for it: RocksDB's rotated WALs here (one column family, no synced writes: it never
/// syncs them, and deletes each once its memtable is flushed), where Sluice and fjall sync
/// each rotated WAL and are charged for it. [`os_cancelled_bytes`] says how much of a run's
/// writes went so.
pub fn os_write_bytes() -> Option<u64> {
    let (written, cancelled) = proc_io()?;
    Some(written.saturating_sub(cancelled))
}

/// Dirty bytes of files deleted before writeback (`cancelled_write_bytes` of
/// `/proc/self/io`), which [`os_write_bytes`] leaves out.
pub fn os_cancelled_bytes() -> Option<u64> {
    proc_io().map(|(_, cancelled)| cancelled)
}

/// (`write_bytes`, `cancelled_write_bytes`) of `/proc/self/io`.
fn proc_io() -> Option<(u64, u64)> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| -> Option<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .parse()
            .ok()
    };
    Some((
        field("write_bytes:")?,
        field("cancelled_write_bytes:").unwrap_or(0),
    ))
}

/// CPU time (user + system) the whole process has used so far, every thread (the engine's
/// background threads, and the harness's own key generation and timing) included, in
/// seconds; `None` where `/proc/self/stat` is unavailable. The same figure for every engine.
pub fn process_cpu_secs() -> Option<f64> {
    cpu_ticks_of(&std::fs::read_to_string("/proc/self/stat").ok()?).map(|t| t as f64 / USER_HZ)
}

/// Clock ticks per second of the CPU times in `/proc` (the kernel's `USER_HZ`, 100 on
/// Linux whatever the kernel's own tick rate).
const USER_HZ: f64 = 100.0;

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. Field 2, the command
/// name, is in parentheses and may hold spaces and parentheses itself: fields are counted
/// from the last `)`.
fn cpu_ticks_of(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After the name: field 3 (state) is the first, so field 14 is the twelfth.
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    user.checked_add(system)
}

/// Polls `probe` every 100 ms until its value has not changed for `quiet` (or `limit` has
/// passed). Returns the last value and how long it kept changing (the quiet stretch itself
/// not counted).
pub fn wait_quiet<T: PartialEq>(
    mut probe: impl FnMut() -> T,
    quiet: Duration,
    limit: Duration,
) -> (T, Duration) {
    let start = Instant::now();
    let mut last = probe();
    let mut changed = start;
    while changed.elapsed() < quiet && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = probe();
        if now != last {
            changed = Instant::now();
        }
        last = now;
    }
    (last, changed - start)
}

/// Bytes of every file under `dir`. Compactions delete files while we walk, so a file that
/// vanishes between listing and `stat` counts as zero instead of failing the run.
pub fn disk_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            total += disk_bytes(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// What counts as a slow operation in [`WorkloadReport::slow_ms`]: 1 ms.
pub const SLOW_OP_NANOS: u64 = 1_000_000;

/// One workload's results. Field names are a stable interface for scripts reading `--json`;
/// add fields, never rename them.
#[derive(Debug, Serialize)]
pub struct WorkloadReport {
    pub workload: String,
    pub num: u64,
    pub threads: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// One operation in ten thousand is slower (in `--json` only): where stalls that hit
    /// a handful of operations per run show before they reach `max_us`.
    pub p9999_us: f64,
    /// The slowest operation: a stop of the writer (a WAL rotation's fsync, a full
    /// memtable) shows here and nowhere else.
    pub max_us: f64,
    /// The engine's cumulative write amplification since open (`Stats::write_amplification`);
    /// `None` for a peer engine that keeps no byte counters.
    pub write_amp: Option<f64>,
    pub disk_bytes: u64,
    /// The process's RSS before the engine was opened (see [`note_start_rss`]).
    pub start_rss_mb: Option<f64>,
    /// Peak RSS of the process over the chain so far (cumulative).
    pub peak_rss_mb: Option<f64>,
    /// Peak RSS during this workload alone (the kernel's mark reset when it started);
    /// `None` where it could not be reset.
    pub workload_peak_rss_mb: Option<f64>,
    /// Time writers were stopped or slowed down during this workload; `None` for a peer
    /// engine that keeps no such counter.
    pub stall_ms: Option<f64>,
    /// Time spent in operations that took 1 ms or more (summed over threads), as the
    /// benchmark timed them: a stall measured the same way for every engine, whether or
    /// not it counts its own (`stall_ms`). A write normally takes microseconds; one that
    /// waits for a flush or a compaction, or whose thread lost the CPU, takes more.
    pub slow_ms: f64,
    /// WAL fsyncs during this workload; with `--sync`, ops ÷ this is the mean group a
    /// shared fsync made durable. `None` for an engine that keeps no such counter.
    pub wal_syncs: Option<u64>,
    pub key_size: usize,
    pub value_size: usize,
    pub partition: String,
    pub sync: bool,
    /// Device bytes (WAL + flush + compaction) written during this workload alone, up to its
    /// last operation, over `user_bytes_written`; `None` when it wrote nothing. Compaction
    /// debt it leaves is not counted here (see `settled_write_amp`).
    pub workload_write_amp: Option<f64>,
    /// Key and value bytes the workload handed over (the engine's own count for scenarios).
    pub user_bytes_written: u64,
    pub device_bytes_written: u64,
    /// Point reads that found a value, entries returned by scans, or transfers whose two
    /// accounts both existed; `None` for pure write workloads.
    pub found: Option<u64>,
    /// Writes done by the background writer of `readwhilewriting`.
    pub background_writes: Option<u64>,
    /// `sluice`, or the peer engine measured (`--engine`).
    pub engine: String,
    /// How random keys were picked (`--distribution`).
    pub distribution: String,
    /// Storage writes of the whole process during this workload, from the kernel's per-task
    /// I/O accounting (see [`os_write_bytes`]); `None` where unavailable. For a scenario this
    /// includes its scratch databases (`--control`, `--compare-fresh`).
    pub os_write_bytes: Option<u64>,
    /// `os_write_bytes` over the user bytes written (keys + values); `None` if nothing was
    /// written or the kernel gives no figure.
    pub os_write_amp: Option<f64>,
    /// Like `workload_write_amp`, with the bytes written until the engine went quiet after
    /// the workload (its flushes and compactions finished): the debt it left is charged to it.
    pub settled_write_amp: Option<f64>,
    /// Like `os_write_amp`, counted until the engine went quiet.
    pub settled_os_write_amp: Option<f64>,
    /// Bytes written, until the engine went quiet, to files deleted before writeback, which
    /// the OS figures leave out (see [`os_write_bytes`]).
    pub settled_os_cancelled_bytes: Option<u64>,
    /// Seconds the engine kept writing after the workload (not part of `seconds`).
    pub settle_secs: f64,
    /// CPU seconds (user + system, all threads: see [`process_cpu_secs`]) the process used
    /// during the workload; `None` where the kernel gives no figure.
    pub cpu_secs: Option<f64>,
    /// Like `cpu_secs`, counted until the engine went quiet (the flushes and compactions
    /// the workload left are charged to it, as in `settled_write_amp`).
    pub settled_cpu_secs: Option<f64>,
    /// `settled_cpu_secs` per operation, in microseconds: what an operation cost the
    /// machine, whichever threads did the work. The operations are the measured ones and,
    /// in `readwhilewriting`, the background writer's as well.
    pub cpu_us_per_op: Option<f64>,
    /// Scenario workloads' own figures (phases, ratios, shares, ...); `None` for plain ones.
    pub scenario: Option<serde_json::Value>,
}

impl WorkloadReport {
    pub fn json_line(&self) -> BenchResult<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn table_header() -> String {
        format!(
            "{:<17} {:>10} {:>8} {:>11} {:>9} {:>9} {:>9} {:>6} {:>6} {:>9} {:>8} {:>9} {:>9}  {}",
            "workload",
            "ops",
            "secs",
            "ops/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "WA",
            "WA(w)",
            "disk MB",
            "RSS MB",
            "stall ms",
            "CPU us/op",
            "notes"
        )
    }

    pub fn table_row(&self) -> String {
        let mut notes = Vec::new();
        if let Some(found) = self.found {
            notes.push(match self.workload.as_str() {
                "seekrandom" => {
                    format!("{:.1} entries/scan", found as f64 / self.ops.max(1) as f64)
                }
                "txntransfer" => format!("{found} of {} with both accounts", self.ops),
                _ => format!("{found} of {} found", self.ops),
            });
        }
        if let Some(w) = self.background_writes {
            notes.push(format!("{w} background writes"));
        }
        if let Some(syncs) = self.wal_syncs.filter(|&n| self.sync && n > 0) {
            notes.push(format!(
                "{:.1} writes per WAL sync",
                self.ops as f64 / syncs as f64
            ));
        }
        if self.slow_ms >= 1.0 {
            notes.push(format!("{:.0} ms in ops of 1 ms or more", self.slow_ms));
        }
        if self.distribution != "uniform" {
            notes.push(self.distribution.clone());
        }
        if self.engine != "sluice" {
            notes.push(format!("engine {}", self.engine));
        }
        format!(
            "{:<17} {:>10} {:>8.2} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>6} {:>6} {:>9.1} {:>8} {:>9} {:>9}  {}",
            self.workload,
            self.ops,
            self.seconds,
            self.ops_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.write_amp
                .map_or_else(|| "-".to_string(), |w| format!("{w:.2}")),
            self.workload_write_amp
                .map_or_else(|| "-".to_string(), |w| format!("{w:.2}")),
            self.disk_bytes as f64 / (1 << 20) as f64,
            self.peak_rss_mb
                .map_or_else(|| "-".to_string(), |m| format!("{m:.0}")),
            self.stall_ms
                .map_or_else(|| "-".to_string(), |m| format!("{m:.0}")),
            self.cpu_us_per_op
                .map_or_else(|| "-".to_string(), |c| format!("{c:.2}")),
            notes.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU fields of a `/proc/PID/stat` line are found after a command name holding
    /// spaces and parentheses; a truncated or garbled line gives `None`.
    #[test]
    fn cpu_ticks_from_a_stat_line() {
        let line = "4242 (sluice (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(cpu_ticks_of(line), Some(325));
        assert_eq!(cpu_ticks_of("4242 (a) S 1 2 3"), None);
        assert_eq!(
            cpu_ticks_of("no parenthesis 1 2 3 4 5 6 7 8 9 10 11 12 13"),
            None
        );
        assert_eq!(
            cpu_ticks_of("1 (a) S 1 1 1 0 -1 0 0 0 0 0 x 75 0"),
            None,
            "a field that is not a number"
        );
        // This process's own figure parses and does not go backwards.
        let a = process_cpu_secs().expect("/proc/self/stat");
        let b = process_cpu_secs().unwrap();
        assert!(a >= 0.0 && b >= a, "{a} then {b}");
    }

    /// Only operations at or over the threshold count, each for its whole time.
    #[test]
    fn time_in_slow_operations() {
        let mut a = Latency::new();
        (0..1000).for_each(|_| a.record(5_000)); // 5 us
        a.record(999_000);
        assert_eq!(a.time_in_slow_ms(SLOW_OP_NANOS), 0.0);
        (0..3).for_each(|_| a.record(2_000_000)); // 2 ms
        a.record(40_000_000); // 40 ms
        let slow = a.time_in_slow_ms(SLOW_OP_NANOS);
        assert!((45.9..=46.1).contains(&slow), "{slow}");
    }

    #[test]
    fn merged_percentiles() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        (1..=500).for_each(|i| a.record(i * 1000));
        (501..=1000).for_each(|i| b.record(i * 1000));
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        let p50 = a.quantile_us(0.5);
        assert!((499.0..=501.0).contains(&p50), "{p50}");
    }

    #[test]
    fn waits_for_the_probe_to_stop_changing() {
        let mut n = 0u32;
        let (last, busy) = wait_quiet(
            || {
                n += 1;
                n.min(4)
            },
            Duration::from_millis(300),
            Duration::from_secs(10),
        );
        assert_eq!(last, 4, "returned before the value settled");
        assert!(busy >= Duration::from_millis(300), "{busy:?}");
        assert!(n >= 7, "{n} probes: not quiet for 300 ms");
        let (_, busy) = wait_quiet(|| 0, Duration::from_millis(200), Duration::from_secs(10));
        assert_eq!(busy, Duration::ZERO);
        let mut m = 0u64;
        let (last, _) = wait_quiet(
            || {
                m += 1;
                m
            },
            Duration::from_secs(1),
            Duration::from_millis(350),
        );
        assert!(last <= 6, "ran past its limit: {last} probes");
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().unwrap() > 0.0);
            note_start_rss();
            let start = start_rss_mb().unwrap();
            assert!(start > 0.0 && start <= peak_rss_mb().unwrap());
        }
    }

    /// A workload's own peak starts afresh; the chain's keeps every earlier one. (The
    /// per-workload figure used to be the chain's: a read workload after a fill showed the
    /// fill's peak.)
    #[test]
    fn a_workload_peak_starts_afresh_and_the_chain_peak_remembers() {
        if !cfg!(target_os = "linux") {
            return;
        }
        start_workload_peak();
        // 96 MiB touched, then given back to the system.
        let mut big = vec![0u8; 96 << 20];
        for i in (0..big.len()).step_by(4096) {
            big[i] = 1;
        }
        std::hint::black_box(&big);
        drop(big);
        let chain = peak_rss_mb().unwrap();
        start_workload_peak();
        let Some(workload) = workload_peak_rss_mb() else {
            // The kernel refused the reset: no per-workload figure is claimed.
            return;
        };
        assert!(
            workload + 64.0 < chain,
            "workload {workload:.1} MiB against chain {chain:.1} MiB"
        );
        assert!(peak_rss_mb().unwrap() >= chain);
    }
}
