//! What the scenario workloads share: a foreground load of reader and writer threads that
//! runs while the scenario drives the engine, a sampler that turns each second into a
//! timeline row, and per-phase latency totals.
//!
//! Latency is recorded per operation into per-thread histograms that the sampler swaps out
//! once a second, so a row holds exactly the operations that completed in its window. With
//! a rate cap (`--read-rate`/`--write-rate`, per thread) a thread issues operations on a
//! fixed schedule and measures each from its *scheduled* start, so time spent queued behind
//! a stalled operation counts (no coordinated omission; see `Pace`); without one, threads
//! run closed-loop, as fast as the engine answers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice::{Db, Stats, VersionId, WriteBatch, WriteOptions};

use crate::keys::{mix64, write_key, KeyChooser, ValueGen};
use crate::report::Latency;
use crate::timeline::Row;
use crate::BenchResult;

/// The foreground load of a scenario.
#[derive(Clone)]
pub struct LoadConfig {
    pub readers: usize,
    pub writers: usize,
    /// Operations per second per reader / writer thread; `None` runs closed-loop.
    pub read_rate: Option<f64>,
    pub write_rate: Option<f64>,
    /// Total writes after which writers stop (split over the writers); `None` = until stopped.
    pub write_ops: Option<u64>,
    /// Keys are drawn from `0..key_space` by `chooser`.
    pub chooser: KeyChooser,
    pub key_size: usize,
    pub value_size: usize,
    pub write_options: WriteOptions,
    /// Seeds every thread's key and value stream: the same seed replays the same sequence
    /// (what a control run relies on).
    pub seed: u64,
}

/// Operations that completed in one window.
pub struct Window {
    pub reads: Latency,
    pub writes: Latency,
    pub failed: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            reads: Latency::new(),
            writes: Latency::new(),
            failed: 0,
        }
    }
}

/// The running load, as the scenario's control thread sees it.
pub struct LoadHandle {
    slots: Vec<Mutex<Window>>,
    stop: AtomicBool,
    writers_left: AtomicUsize,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl LoadHandle {
    /// Everything completed since the last call, merged over threads.
    pub fn take_window(&self) -> Window {
        let mut w = Window::new();
        for s in &self.slots {
            let mine = std::mem::replace(&mut *s.lock().unwrap(), Window::new());
            w.reads.merge(&mine.reads);
            w.writes.merge(&mine.writes);
            w.failed += mine.failed;
        }
        w
    }

    /// True once every writer has used up `write_ops`.
    pub fn writers_done(&self) -> bool {
        self.writers_left.load(Ordering::Acquire) == 0
    }

    pub fn failed_ops(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap().clone()
    }

    fn fail(&self, slot: usize, e: &dyn std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.slots[slot].lock().unwrap().failed += 1;
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// Paces one thread: `None` = closed loop. Under a rate, `wait` returns the instant the
/// next operation's latency counts from: its scheduled time, so time queued behind a slow
/// operation counts (no coordinated omission), but never earlier than the thread's last
/// wake-up, so the timer's own oversleeping (tens of µs, far coarser than the gaps at high
/// rates) does not. In a closed loop an operation is timed from the engine call alone.
struct Pace {
    interval: Option<Duration>,
    next: Instant,
    last_wake: Instant,
}

impl Pace {
    fn new(rate: Option<f64>) -> Pace {
        let now = Instant::now();
        Pace {
            interval: rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: now,
            last_wake: now,
        }
    }

    /// When the next operation is due: `Some(Some(t))` under a rate (its latency counts
    /// from `t`, queueing and the harness's own work included, as a client's would),
    /// `Some(None)` in a closed loop (timed from just before the engine call, after the
    /// harness built the key and the batch), `None` if `stop` was set while waiting (a slow
    /// schedule must not hold up the end of the load by a whole interval).
    fn wait(&mut self, stop: &AtomicBool) -> Option<Option<Instant>> {
        let Some(iv) = self.interval else {
            return Some(None);
        };
        let mut now = Instant::now();
        if self.next > now {
            while self.next > now {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep((self.next - now).min(Duration::from_millis(50)));
                now = Instant::now();
            }
            self.last_wake = now;
        }
        let scheduled = self.next;
        self.next += iv;
        Some(Some(scheduled.max(self.last_wake)))
    }
}

/// Runs `control` on this thread while the load runs on its own threads; stops the load
/// when `control` returns and hands back its result.
pub fn with_load<R>(db: &Db, cfg: &LoadConfig, control: impl FnOnce(&LoadHandle) -> R) -> R {
    let threads = cfg.readers + cfg.writers;
    let h = LoadHandle {
        slots: (0..threads).map(|_| Mutex::new(Window::new())).collect(),
        stop: AtomicBool::new(false),
        writers_left: AtomicUsize::new(cfg.writers),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    };
    let h = &h;
    std::thread::scope(|scope| {
        for w in 0..cfg.writers {
            let budget = cfg.write_ops.map(|total| {
                let t = cfg.writers as u64;
                total / t + u64::from((w as u64) < total % t)
            });
            scope.spawn(move || writer(db, cfg, h, w, budget));
        }
        for r in 0..cfg.readers {
            scope.spawn(move || reader(db, cfg, h, cfg.writers + r));
        }
        let result = control(h);
        h.stop.store(true, Ordering::Release);
        result
    })
}

fn thread_rng(cfg: &LoadConfig, slot: usize) -> fastrand::Rng {
    fastrand::Rng::with_seed(mix64(cfg.seed ^ mix64(0xF0F0_0000 | slot as u64)))
}

fn writer(db: &Db, cfg: &LoadConfig, h: &LoadHandle, slot: usize, budget: Option<u64>) {
    let mut rng = thread_rng(cfg, slot);
    let mut values = ValueGen::new(&mut rng, cfg.value_size);
    let mut key = vec![0u8; cfg.key_size];
    let mut pace = Pace::new(cfg.write_rate);
    let mut done = 0u64;
    while !h.stop.load(Ordering::Relaxed) && budget.is_none_or(|b| done < b) {
        let Some(due) = pace.wait(&h.stop) else {
            break;
        };
        write_key(&mut key, cfg.chooser.next(&mut rng));
        let mut b = WriteBatch::new();
        b.put(&key, values.next(cfg.value_size));
        let began = due.unwrap_or_else(Instant::now);
        match db.write_opt(b, &cfg.write_options) {
            Ok(()) => {
                let nanos = began.elapsed().as_nanos() as u64;
                h.slots[slot].lock().unwrap().writes.record(nanos);
            }
            Err(e) => {
                h.fail(slot, &e);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        done += 1;
    }
    h.writers_left.fetch_sub(1, Ordering::AcqRel);
}

fn reader(db: &Db, cfg: &LoadConfig, h: &LoadHandle, slot: usize) {
    let mut rng = thread_rng(cfg, slot);
    let mut key = vec![0u8; cfg.key_size];
    let mut pace = Pace::new(cfg.read_rate);
    while !h.stop.load(Ordering::Relaxed) {
        let Some(due) = pace.wait(&h.stop) else {
            break;
        };
        write_key(&mut key, cfg.chooser.next(&mut rng));
        let began = due.unwrap_or_else(Instant::now);
        match db.get(&key) {
            Ok(v) => {
                std::hint::black_box(v);
                let nanos = began.elapsed().as_nanos() as u64;
                h.slots[slot].lock().unwrap().reads.record(nanos);
            }
            Err(e) => {
                h.fail(slot, &e);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Latency and throughput of one phase (all of its windows together).
pub struct PhaseTotals {
    pub seconds: f64,
    pub reads: Latency,
    pub writes: Latency,
    pub stall_ms: f64,
    /// Of `stall_ms`: writers stopped waiting for a flush, stopped for L0 or compaction
    /// debt, and slowed down (rate-limited).
    pub memtable_stop_ms: f64,
    pub l0_stop_ms: f64,
    pub slowdown_ms: f64,
    /// Flushes finished, and the time they took.
    pub flushes: u64,
    pub flush_ms: f64,
    pub failed: u64,
}

impl PhaseTotals {
    fn new() -> PhaseTotals {
        PhaseTotals {
            seconds: 0.0,
            reads: Latency::new(),
            writes: Latency::new(),
            stall_ms: 0.0,
            memtable_stop_ms: 0.0,
            l0_stop_ms: 0.0,
            slowdown_ms: 0.0,
            flushes: 0,
            flush_ms: 0.0,
            failed: 0,
        }
    }

    fn add(&mut self, other: &PhaseTotals) {
        self.seconds += other.seconds;
        self.reads.merge(&other.reads);
        self.writes.merge(&other.writes);
        self.stall_ms += other.stall_ms;
        self.memtable_stop_ms += other.memtable_stop_ms;
        self.l0_stop_ms += other.l0_stop_ms;
        self.slowdown_ms += other.slowdown_ms;
        self.flushes += other.flushes;
        self.flush_ms += other.flush_ms;
        self.failed += other.failed;
    }

    pub fn summary(&self) -> PhaseSummary {
        let per_sec = |n: u64| {
            if self.seconds > 0.0 {
                n as f64 / self.seconds
            } else {
                0.0
            }
        };
        PhaseSummary {
            seconds: self.seconds,
            reads: self.reads.count(),
            writes: self.writes.count(),
            reads_per_sec: per_sec(self.reads.count()),
            writes_per_sec: per_sec(self.writes.count()),
            ops_per_sec: per_sec(self.reads.count() + self.writes.count()),
            read_p50_us: self.reads.quantile_us(0.5),
            read_p99_us: self.reads.quantile_us(0.99),
            read_p999_us: self.reads.quantile_us(0.999),
            write_p50_us: self.writes.quantile_us(0.5),
            write_p99_us: self.writes.quantile_us(0.99),
            write_p999_us: self.writes.quantile_us(0.999),
            stall_ms: self.stall_ms,
            memtable_stop_ms: self.memtable_stop_ms,
            l0_stop_ms: self.l0_stop_ms,
            slowdown_ms: self.slowdown_ms,
            flushes: self.flushes,
            flush_ms: self.flush_ms,
            failed_ops: self.failed,
        }
    }
}

/// The JSON shape of a phase's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseSummary {
    pub seconds: f64,
    pub reads: u64,
    pub writes: u64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub ops_per_sec: f64,
    pub read_p50_us: f64,
    pub read_p99_us: f64,
    pub read_p999_us: f64,
    pub write_p50_us: f64,
    pub write_p99_us: f64,
    pub write_p999_us: f64,
    /// Stops plus slowdowns; the three fields after it split it.
    pub stall_ms: f64,
    pub memtable_stop_ms: f64,
    pub l0_stop_ms: f64,
    pub slowdown_ms: f64,
    pub flushes: u64,
    pub flush_ms: f64,
    pub failed_ops: u64,
}

/// Turns each second of a running load into a [`Row`] and accumulates per-phase totals.
pub struct Sampler<'a> {
    db: &'a Db,
    load: &'a LoadHandle,
    start: Instant,
    ticks: u64,
    prev: Stats,
    pub rows: Vec<Row>,
    pub phases: BTreeMap<String, PhaseTotals>,
    /// Everything, whatever the phase.
    pub all: PhaseTotals,
    /// The migration's final layout, once one is under way: rows then carry migration fields.
    pub forward: Option<VersionId>,
}

impl<'a> Sampler<'a> {
    pub fn new(db: &'a Db, load: &'a LoadHandle) -> Sampler<'a> {
        Sampler {
            db,
            load,
            start: Instant::now(),
            ticks: 0,
            prev: db.stats(),
            rows: Vec::new(),
            phases: BTreeMap::new(),
            all: PhaseTotals::new(),
            forward: None,
        }
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Sleeps to the end of the current one-second window, then records it under `phase`.
    pub fn tick(&mut self, phase: &str) -> &Row {
        self.ticks += 1;
        let end = self.start + Duration::from_secs(self.ticks);
        let now = Instant::now();
        if end > now {
            std::thread::sleep(end - now);
        }
        self.record(phase)
    }

    /// Like [`Sampler::tick`], but ends the window early once `done()` holds (checked every
    /// 20 ms); returns whether it did.
    pub fn tick_unless(&mut self, phase: &str, done: &dyn Fn() -> bool) -> bool {
        self.ticks += 1;
        let end = self.start + Duration::from_secs(self.ticks);
        loop {
            if done() {
                self.record(phase);
                return true;
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
        self.record(phase);
        false
    }

    /// Records the window ending now (shorter than a second when the load ended early).
    pub fn record(&mut self, phase: &str) -> &Row {
        let window_start = self.rows.last().map_or(0.0, |r| r.elapsed_s);
        let w = self.load.take_window();
        let elapsed = self.elapsed();
        let secs = (elapsed - window_start).max(1e-6);
        let s = self.db.stats();
        let p = &self.prev;
        let ms = |now: u64, before: u64| now.saturating_sub(before) as f64 / 1000.0;
        let gets = s.gets.saturating_sub(p.gets).max(1) as f64;
        let stall_us =
            (s.stall_micros + s.slowdown_micros).saturating_sub(p.stall_micros + p.slowdown_micros);
        let mut row = Row {
            second: self.rows.len() as u64 + 1,
            elapsed_s: elapsed,
            phase: phase.to_string(),
            reads_per_sec: w.reads.count() as f64 / secs,
            writes_per_sec: w.writes.count() as f64 / secs,
            read_p50_us: w.reads.quantile_us(0.5),
            read_p99_us: w.reads.quantile_us(0.99),
            write_p50_us: w.writes.quantile_us(0.5),
            write_p99_us: w.writes.quantile_us(0.99),
            stall_ms: stall_us as f64 / 1000.0,
            stalls: s.stalls.saturating_sub(p.stalls),
            slowdowns: s.slowdowns.saturating_sub(p.slowdowns),
            pending_compaction_bytes: s.pending_compaction_bytes,
            l0_files_max: l0_files_max(&s),
            filter_checks_per_read: s.get_filter_checks.saturating_sub(p.get_filter_checks) as f64
                / gets,
            tables_per_read: s.get_table_reads.saturating_sub(p.get_table_reads) as f64 / gets,
            immutable_memtables: s.immutable_memtables,
            flush_bytes: s.bytes_flushed.saturating_sub(p.bytes_flushed),
            compaction_bytes: s
                .compaction_bytes_written
                .saturating_sub(p.compaction_bytes_written),
            live_versions: 0,
            failed_ops: w.failed,
            ..Row::default()
        };
        let layout = self.db.layout();
        row.live_versions = layout.versions.len();
        if let Some(fwd) = self.forward {
            let m = self.db.migration_progress();
            row.migration_bytes_left = Some(m.bytes_left());
            row.fraction_migrated = Some(fraction_in(&layout, fwd));
            row.pacer_rate_bytes_per_sec = Some(m.effective_rate_bytes_per_sec);
            row.pacer_pace_bytes_per_sec = Some(m.pace_bytes_per_sec);
            row.pacer_fg_p99_us = Some(m.foreground_p99_us);
            row.pacer_blocked = m.blocked;
            row.migrated_bytes = Some(
                s.migration_bytes_read
                    .saturating_sub(p.migration_bytes_read),
            );
        }
        let totals = PhaseTotals {
            seconds: secs,
            reads: w.reads,
            writes: w.writes,
            stall_ms: row.stall_ms,
            memtable_stop_ms: ms(s.memtable_stall_micros, p.memtable_stall_micros),
            // The engine reads both under one lock, so the part never exceeds the whole.
            l0_stop_ms: ms(
                s.stall_micros.saturating_sub(s.memtable_stall_micros),
                p.stall_micros.saturating_sub(p.memtable_stall_micros),
            ),
            slowdown_ms: ms(s.slowdown_micros, p.slowdown_micros),
            flushes: s.flushes.saturating_sub(p.flushes),
            flush_ms: ms(s.flush_micros, p.flush_micros),
            failed: w.failed,
        };
        self.all.add(&totals);
        self.phases
            .entry(phase.to_string())
            .or_insert_with(PhaseTotals::new)
            .add(&totals);
        self.prev = s;
        self.rows.push(row);
        self.rows.last().expect("just pushed")
    }

    /// The totals of several phases together (e.g. every phase of a migration).
    pub fn merged(&self, phases: &[&str]) -> PhaseTotals {
        let mut t = PhaseTotals::new();
        for p in phases {
            if let Some(x) = self.phases.get(*p) {
                t.add(x);
            }
        }
        t
    }
}

/// Most L0 files in any one partition of any live layout.
pub fn l0_files_max(s: &Stats) -> usize {
    s.partitions
        .iter()
        .filter_map(|p| p.level_files.first().copied())
        .max()
        .unwrap_or(0)
}

/// Share of the live SSTable bytes that sit in layout `v`.
pub fn fraction_in(layout: &sluice::LayoutInfo, v: VersionId) -> f64 {
    let total: u64 = layout.versions.iter().map(|x| x.bytes()).sum();
    let mine: u64 = layout
        .versions
        .iter()
        .filter(|x| x.id == v)
        .map(|x| x.bytes())
        .sum();
    if total == 0 {
        1.0
    } else {
        mine as f64 / total as f64
    }
}

/// Waits until background work has settled: no immutable memtable, no compaction debt and no
/// compaction output for half a second (at most `cap`). Returns the seconds waited.
pub fn settle(db: &Db, cap: Duration) -> f64 {
    let start = Instant::now();
    let mut last = db.stats().compaction_bytes_written;
    let mut quiet_since = Instant::now();
    while start.elapsed() < cap {
        std::thread::sleep(Duration::from_millis(200));
        let s = db.stats();
        if s.compaction_bytes_written != last || s.immutable_memtables > 0 {
            last = s.compaction_bytes_written;
            quiet_since = Instant::now();
        } else if s.pending_compaction_bytes == 0
            && quiet_since.elapsed() >= Duration::from_millis(500)
        {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

/// Writes keys `0..num` in key order (batches of 256), as the starting data of a scenario.
pub fn load_keys(
    db: &Db,
    num: u64,
    key_size: usize,
    value_size: usize,
    seed: u64,
) -> BenchResult<()> {
    let mut rng = fastrand::Rng::with_seed(mix64(seed ^ 0x10AD));
    let mut values = ValueGen::new(&mut rng, value_size);
    let mut key = vec![0u8; key_size];
    let mut i = 0;
    while i < num {
        let end = (i + 256).min(num);
        let mut b = WriteBatch::new();
        for k in i..end {
            write_key(&mut key, k);
            b.put(&key, values.next(value_size));
        }
        db.write(b)?;
        i = end;
    }
    Ok(())
}
