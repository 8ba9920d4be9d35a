//! Layout changes under load: `migration`, `biasfix`, `rollback`, and the static
//! `migration3`.
//!
//! Every migration scenario runs the same way:
//! 1. **Prepare**: if the database is empty, write keys `0..--num` in key order; flush and
//!    compact fully, so the data starts as one settled layout (v1 = `--partition`).
//! 2. **Stable** (`--stable-secs`): the foreground load runs alone: `--writers` threads
//!    overwrite random existing keys, `--threads` threads point-read random keys (both from
//!    `--distribution`), closed-loop unless `--write-rate`/`--read-rate` cap each thread.
//! 3. **Migrating**: `register_partition_fn` + `set_target`; the background pacer migrates
//!    at `--migration-mb-per-sec` (backing off above `--p99-target-us`) while the same load
//!    runs, until `migration_progress().is_complete()` or `--migrate-secs`.
//!    - `migration`: v1 → `--to` (default `hash:16`).
//!    - `biasfix`: v1 → v2 biased (`--biased`, default `--to` hashing only a key prefix that
//!      most keys share) → once `--detect-at` (60%) of the data is in v2, v3 = `--to`
//!      becomes the target: v1 and v2 both drain into it (three layouts live).
//!    - `rollback`: v1 → `--to`; at `--rollback-at` (50%) `set_target(v1)` (v1 is pinned
//!      so it stays live); after `--rollback-secs`, `set_target(v2)` again; then completion.
//! 4. **Post** (`--post-secs`): the load goes on with the migration done.
//! 5. The memtable is flushed and background work allowed to settle before the final
//!    byte counters are read.
//!
//! Figures: per phase, reads/s, writes/s and latency percentiles; the ratios p99 while
//! migrating ÷ p99 stable (target ≤ 1.25, reads and writes separately) and foreground
//! ops/s migrating ÷ stable (target ≥ 0.8), where "migrating" covers every second from the
//! first `set_target` to completion (rolled-back seconds included).
//!
//! **Migration write amplification** needs a control run (`--control`): the database is
//! checkpointed right after step 1, and after the migration run the checkpoint is opened
//! and the identical load (same seed, so the same key sequence; same thread counts and
//! caps) runs for the identical time: `--stable-secs`, then exactly as many seconds as the
//! migration took, then `--post-secs`, then the same flush and settle. The two runs end in
//! different LSM shapes (migration places old data at the bottom level of the new layout,
//! where later overwrites leave garbage that no compaction is due to remove), so each
//! database is then compacted fully and those bytes are counted too: both end fully
//! compacted with the same keys. With `D` = device bytes written (WAL + flush +
//! compaction, the engine's counters), `U` = user bytes written, each over the whole run
//! including the final full compaction, and `B` = bytes migrated (draining SSTable bytes
//! read by migration compactions, which include the values lazy reads moved first):
//!
//! ```text
//! migration write amp (raw)        = (D_migration − D_control) / B
//! migration write amp (normalized) = (D_migration − D_control × U_migration / U_control) / B
//! ```
//! The normalized figure charges the control run's own amplification only for the user
//! bytes the migration run really wrote (closed-loop writers write less, or more, while
//! migration competes for the machine); it is the one compared with the target (≤ 1.2).
//! With rate caps both runs write the same and the two agree. The same figures without the
//! final compactions are reported as `as_run`. The engine's own view, migration compaction
//! bytes written ÷ read, is reported as `migration.engine_write_amp`.
//!
//! `--compare-fresh` copies the migrated data (a full scan) into a new database created
//! with the final layout, lets both settle, and runs `readrandom` and `seekrandom` on each
//! with the same keys (`--reads`, default min(--num, 1M); seeks a tenth of that).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use sluice::{shares_of, Db, Options, PartitionSpec, Stats, VersionId};

use crate::chart::Event;
use crate::engine::SluiceKv;
use crate::keys::{decimal_digits, mix64, write_key, Distribution, KeyChooser, ValueGen};
use crate::report::{os_write_bytes, Latency};
use crate::scenario::{
    load_keys, settle, with_load, LoadConfig, PhaseSummary, PhaseTotals, Sampler,
};
use crate::timeline::Row;
use crate::workloads::{self, Measured, Settings, Workload};
use crate::{BenchResult, Done, P99Target, ScenarioCtx};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Migration,
    BiasFix,
    Rollback,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Migration => "migration",
            Kind::BiasFix => "biasfix",
            Kind::Rollback => "rollback",
        }
    }
}

/// Phases that count as "migrating" in the ratios.
const MIGRATING: &[&str] = &["migrating", "three-live", "rolledback"];

/// Upper bound of the ratios' targets.
const P99_RATIO_TARGET: f64 = 1.25;
const THROUGHPUT_RATIO_TARGET: f64 = 0.8;
const WRITE_AMP_TARGET: f64 = 1.2;

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The biased layout: `--biased`, or `--to`'s partition count hashing only the key prefix up
/// to the first significant digit of `--num` (every key below 10^k shares it), so the keys
/// land on at most ten distinct partitions.
pub fn biased_spec(ctx: &ScenarioCtx<'_>) -> PartitionSpec {
    if let Some(b) = &ctx.cli.biased {
        return b.clone();
    }
    let s = ctx.settings;
    let digits = decimal_digits(s.num.saturating_sub(1));
    let prefix = (s.key_size - digits + 1) as u32;
    let (partitions, seed) = match &ctx.cli.to {
        PartitionSpec::Hash {
            partitions, seed, ..
        } => (*partitions, *seed),
        other => (other.partitions().max(2), 0),
    };
    PartitionSpec::Hash {
        partitions,
        seed,
        hashed_prefix: Some(prefix),
    }
}

/// A partition spec short enough for a title or an event label.
pub fn short_spec(spec: &PartitionSpec) -> String {
    match spec {
        PartitionSpec::Range { boundaries } if !boundaries.is_empty() => {
            format!("range({} partitions)", boundaries.len() + 1)
        }
        other => other.to_string(),
    }
}

/// `<dir>-<what>`, beside the run's database.
fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    dir.with_file_name(format!("{name}-{what}"))
}

fn count_keys(db: &Db) -> BenchResult<u64> {
    let mut n = 0;
    for r in db.range(..) {
        r?;
        n += 1;
    }
    Ok(n)
}

/// What step 1 found and did.
struct Prepared {
    loaded: bool,
    keys: u64,
    load_secs: f64,
    compact_secs: f64,
    data_bytes: u64,
    from: String,
}

fn prepare(db: &Db, ctx: &ScenarioCtx<'_>) -> BenchResult<Prepared> {
    let s = ctx.settings;
    let layout = db.layout();
    if layout.versions.len() != 1 {
        return Err(format!(
            "migration scenarios start from one live layout; this database has {} ({})",
            layout.versions.len(),
            layout
                .versions
                .iter()
                .map(|v| format!("{}={}", v.id, v.spec))
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into());
    }
    let from = short_spec(&layout.versions[0].spec);
    let t = Instant::now();
    let loaded = db.stats().last_seqno == 0;
    if loaded {
        eprintln!("sluice-stress: loading {} keys under {from}", s.num);
        load_keys(db, s.num, s.key_size, s.value_size, s.seed)?;
    }
    let load_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    eprintln!("sluice-stress: compacting");
    db.compact()?;
    let compact_secs = t.elapsed().as_secs_f64();
    let keys = count_keys(db)?;
    Ok(Prepared {
        loaded,
        keys,
        load_secs,
        compact_secs,
        data_bytes: db.stats().live_sst_bytes,
        from,
    })
}

fn load_config(ctx: &ScenarioCtx<'_>) -> LoadConfig {
    let (cli, s) = (ctx.cli, ctx.settings);
    LoadConfig {
        readers: s.threads,
        writers: cli.writers as usize,
        read_rate: cli.read_rate,
        write_rate: cli.write_rate,
        write_ops: None,
        chooser: s.chooser.clone(),
        key_size: s.key_size,
        value_size: s.value_size,
        write_options: s.write_options,
        seed: mix64(s.seed ^ ctx.index as u64 ^ 0x3160),
    }
}

enum Plan {
    Migrate(Kind),
    /// The control run: the "migrating" stretch is this many one-second windows, no change.
    Control {
        windows: u64,
    },
}

/// One run of the load through its phases.
struct Run {
    rows: Vec<Row>,
    events: Vec<Event>,
    phases: BTreeMap<String, PhaseTotals>,
    all: PhaseTotals,
    stable: PhaseTotals,
    migrating: PhaseTotals,
    post: PhaseTotals,
    window: Option<(f64, f64)>,
    migrating_windows: u64,
    completed: bool,
    failed_ops: u64,
    first_error: Option<String>,
    before: Stats,
    after: Stats,
    os_write: Option<u64>,
    settle_secs: f64,
    p99_target_us: u64,
    extra: Map<String, Value>,
    seconds: f64,
}

fn share_stats(shares: &[f64]) -> Value {
    let max = shares.iter().copied().fold(0.0, f64::max);
    let mean = if shares.is_empty() {
        0.0
    } else {
        shares.iter().sum::<f64>() / shares.len() as f64
    };
    json!({
        "shares": shares,
        "max_share": max,
        "max_over_mean": if mean > 0.0 { max / mean } else { 0.0 },
        "empty_partitions": shares.iter().filter(|s| **s == 0.0).count(),
    })
}

/// Entries per partition of layout `v`, as shares.
fn data_shares(db: &Db, v: VersionId) -> Option<Value> {
    let layout = db.layout();
    let info = layout.versions.iter().find(|x| x.id == v)?;
    let entries: Vec<u64> = info.partitions.iter().map(|p| p.entries).collect();
    Some(share_stats(&shares_of(&entries)))
}

/// Reads + writes per partition of the current target since it became the target.
fn traffic_shares(db: &Db) -> Value {
    share_stats(&db.partition_load().shares())
}

fn drive(db: &Db, ctx: &ScenarioCtx<'_>, cfg: &LoadConfig, plan: Plan) -> BenchResult<Run> {
    let cli = ctx.cli;
    let before = db.stats();
    let os_before = os_write_bytes();
    let started = Instant::now();
    let inner = with_load(db, cfg, |h| -> BenchResult<_> {
        let mut sm = Sampler::new(db, h);
        let mut events = Vec::new();
        let mut extra = Map::new();
        for _ in 0..secs(cli.stable_secs) {
            sm.tick("stable");
        }
        if let Some(mb) = cli.migration_mb_per_sec {
            db.set_migration_rate((mb * (1 << 20) as f64) as u64);
        }
        let p99_target_us = match cli.p99_target_us {
            None => ctx.opts.migration_p99_target_us,
            Some(P99Target::Micros(v)) => v,
            Some(P99Target::Auto) => {
                let stable = sm.merged(&["stable"]);
                let mut both = Latency::new();
                both.merge(&stable.reads);
                both.merge(&stable.writes);
                (both.quantile_us(0.99) * P99_RATIO_TARGET).ceil() as u64
            }
        };
        db.set_migration_latency_target(p99_target_us);
        let (window, completed) = match plan {
            Plan::Control { windows } => {
                let t0 = sm.elapsed();
                for _ in 0..windows {
                    sm.tick("control");
                }
                (Some((t0, sm.elapsed())), false)
            }
            Plan::Migrate(kind) => {
                let (t0, done) = migrate(db, ctx, &mut sm, kind, &mut events, &mut extra)?;
                (Some((t0, sm.elapsed())), done)
            }
        };
        for _ in 0..secs(cli.post_secs) {
            sm.tick("post");
        }
        let migrating_windows = sm
            .rows
            .iter()
            .filter(|r| MIGRATING.contains(&r.phase.as_str()) || r.phase == "control")
            .count() as u64;
        let stable = sm.merged(&["stable"]);
        let migrating = sm.merged(&[MIGRATING, &["control"]].concat());
        let post = sm.merged(&["post"]);
        Ok((
            std::mem::take(&mut sm.rows),
            events,
            extra,
            std::mem::take(&mut sm.phases),
            sm.all,
            (stable, migrating, post),
            window,
            migrating_windows,
            completed,
            p99_target_us,
            (h.failed_ops(), h.first_error()),
        ))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let (
        rows,
        events,
        extra,
        phases,
        all,
        (stable, migrating, post),
        window,
        migrating_windows,
        completed,
        p99_target_us,
        (failed_ops, first_error),
    ) = inner;
    // Count what the run left in memory and in compaction debt, in both runs alike.
    db.flush()?;
    let settle_secs = settle(db, Duration::from_secs(120));
    let after = db.stats();
    let os_after = os_write_bytes();
    Ok(Run {
        rows,
        events,
        phases,
        all,
        stable,
        migrating,
        post,
        window,
        migrating_windows,
        completed,
        failed_ops,
        first_error,
        before,
        after,
        os_write: match (os_before, os_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        settle_secs,
        p99_target_us,
        extra,
        seconds,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Forward,
    RolledBack,
    ForwardAgain,
}

/// Step 3. Returns when the migration started (seconds since the load started) and whether
/// it completed.
fn migrate(
    db: &Db,
    ctx: &ScenarioCtx<'_>,
    sm: &mut Sampler<'_>,
    kind: Kind,
    events: &mut Vec<Event>,
    extra: &mut Map<String, Value>,
) -> BenchResult<(f64, bool)> {
    let cli = ctx.cli;
    let v1 = db.layout().target;
    let first = if kind == Kind::BiasFix {
        biased_spec(ctx)
    } else {
        cli.to.clone()
    };
    if kind == Kind::Rollback {
        // The controller pins the layout it may roll back to; so does this scenario.
        db.pin_version(v1, true)?;
    }
    let v2 = db.register_partition_fn(first.clone())?;
    let t0 = sm.elapsed();
    db.set_target(v2)?;
    sm.forward = Some(v2);
    events.push(Event {
        at_s: t0,
        what: format!("set_target {v2} {}", short_spec(&first)),
    });
    let mut state = State::Forward;
    let mut v3 = None;
    let mut completed = false;
    loop {
        let live = db.layout().versions.len();
        let phase = match state {
            State::RolledBack => "rolledback",
            _ if live >= 3 => "three-live",
            _ => "migrating",
        };
        let frac = sm.tick(phase).fraction_migrated.unwrap_or(0.0);
        let now = sm.elapsed();
        match (kind, state) {
            (Kind::BiasFix, State::Forward) if v3.is_none() && frac >= cli.detect_at => {
                if let Some(d) = data_shares(db, v2) {
                    extra.insert("v2_data_shares".into(), d);
                }
                extra.insert("v2_traffic_shares".into(), traffic_shares(db));
                extra.insert("retarget_at_fraction".into(), json!(frac));
                let id = db.register_partition_fn(cli.to.clone())?;
                let at = sm.elapsed();
                db.set_target(id)?;
                extra.insert("retarget_at_s".into(), json!(at));
                sm.forward = Some(id);
                v3 = Some(id);
                events.push(Event {
                    at_s: at,
                    what: format!(
                        "retarget {id} {} at {:.0}%",
                        short_spec(&cli.to),
                        frac * 100.0
                    ),
                });
            }
            (Kind::Rollback, State::Forward) if frac >= cli.rollback_at => {
                let at = sm.elapsed();
                db.set_target(v1)?;
                state = State::RolledBack;
                extra.insert("rollback_at_fraction".into(), json!(frac));
                extra.insert("rollback_at_s".into(), json!(at));
                events.push(Event {
                    at_s: at,
                    what: format!("rollback to {v1} at {:.0}%", frac * 100.0),
                });
            }
            (Kind::Rollback, State::RolledBack)
                if now - extra["rollback_at_s"].as_f64().unwrap_or(now)
                    >= cli.rollback_secs.as_secs_f64() =>
            {
                // While rolled back v2 drains into v1; if it drained empty it was retired,
                // and going forward means registering the same function again.
                // What migration carried out of v2 (back into v1) while rolled back: v2
                // drained only then. (Its share of the data is no measure of that: v1's
                // own bytes shrink and grow with its compactions meanwhile.)
                let drained_back = db
                    .migration_progress()
                    .draining
                    .iter()
                    .find(|d| d.version == v2)
                    .map(|d| d.bytes_migrated);
                extra.insert("v2_drained_back_bytes".into(), json!(drained_back));
                extra.insert(
                    "v2_retired_while_rolled_back".into(),
                    json!(!db.layout().versions.iter().any(|v| v.id == v2)),
                );
                let forward = if db.layout().versions.iter().any(|v| v.id == v2) {
                    v2
                } else {
                    db.register_partition_fn(first.clone())?
                };
                let at = sm.elapsed();
                db.set_target(forward)?;
                sm.forward = Some(forward);
                state = State::ForwardAgain;
                extra.insert("forward_at_s".into(), json!(at));
                extra.insert("forward_at_fraction".into(), json!(frac));
                events.push(Event {
                    at_s: at,
                    what: format!("forward to {forward} again"),
                });
            }
            _ => {}
        }
        let may_finish = match kind {
            Kind::Migration => true,
            Kind::BiasFix => v3.is_some(),
            Kind::Rollback => state == State::ForwardAgain,
        };
        if may_finish && db.migration_progress().is_complete() {
            completed = true;
            eprintln!(
                "sluice-stress: migration complete at {:.1} s: {}",
                sm.elapsed(),
                crate::lsm_shape(&db.stats())
            );
            events.push(Event {
                at_s: sm.elapsed(),
                what: "migration complete".into(),
            });
            break;
        }
        if now - t0 >= cli.migrate_secs.as_secs_f64() {
            events.push(Event {
                at_s: sm.elapsed(),
                what: "time cap: incomplete".into(),
            });
            break;
        }
    }
    if kind == Kind::Rollback {
        // Released: retired once empty, like any drained layout.
        db.pin_version(v1, false)?;
    }
    if let Some(v3) = v3 {
        if let Some(d) = data_shares(db, v3) {
            extra.insert("v3_data_shares".into(), d);
        }
        extra.insert("v3_traffic_shares".into(), traffic_shares(db));
    }
    Ok((t0, completed))
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn summary(p: &PhaseTotals) -> PhaseSummary {
    p.summary()
}

/// Ratios of the migrating phase against a baseline phase.
fn ratios(migrating: &PhaseSummary, base: &PhaseSummary) -> Value {
    let r = ratio(migrating.read_p99_us, base.read_p99_us);
    let w = ratio(migrating.write_p99_us, base.write_p99_us);
    let t = ratio(migrating.ops_per_sec, base.ops_per_sec);
    json!({
        "read_p99": r,
        "write_p99": w,
        "throughput": t,
        "read_p99_ok": r.map(|x| x <= P99_RATIO_TARGET),
        "write_p99_ok": w.map(|x| x <= P99_RATIO_TARGET),
        "throughput_ok": t.map(|x| x >= THROUGHPUT_RATIO_TARGET),
    })
}

/// Latency around an instant: each second from 3 before to 3 after, and the largest p99 in
/// the 3 seconds from the instant on over the median p99 of the 5 seconds before it.
fn around(rows: &[Row], at: f64) -> Value {
    let near: Vec<Value> = rows
        .iter()
        .filter(|r| r.elapsed_s > at - 3.0 && r.elapsed_s <= at + 4.0)
        .map(|r| {
            json!({"second": r.second, "elapsed_s": r.elapsed_s, "phase": r.phase,
                   "read_p99_us": r.read_p99_us, "write_p99_us": r.write_p99_us,
                   "reads_per_sec": r.reads_per_sec, "writes_per_sec": r.writes_per_sec})
        })
        .collect();
    let median = |mut v: Vec<f64>| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let before: Vec<&Row> = rows
        .iter()
        .filter(|r| r.elapsed_s <= at && r.elapsed_s > at - 5.0)
        .collect();
    let after: Vec<&Row> = rows
        .iter()
        .filter(|r| r.elapsed_s > at && r.elapsed_s <= at + 3.0)
        .collect();
    let spike = |f: fn(&Row) -> f64| {
        let base = median(before.iter().map(|r| f(r)).collect());
        let peak = after.iter().map(|r| f(r)).fold(0.0, f64::max);
        ratio(peak, base)
    };
    let (r, w) = (spike(|r| r.read_p99_us), spike(|r| r.write_p99_us));
    // Per-second p99 is noisy: the same peak set against the 90th percentile of the
    // per-second p99s over the whole migration says whether the instant stands out.
    let p90 = |f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| MIGRATING.contains(&r.phase.as_str()))
            .map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        let base = v
            .get((v.len() * 9 / 10).min(v.len().saturating_sub(1)))
            .copied()?;
        let peak = after.iter().map(|r| f(r)).fold(0.0, f64::max);
        ratio(peak, base)
    };
    json!({
        "seconds": near,
        "read_p99_vs_migrating_p90": p90(|r| r.read_p99_us),
        "write_p99_vs_migrating_p90": p90(|r| r.write_p99_us),
        "read_p99_spike": r,
        "write_p99_spike": w,
        "spiked": r.is_some_and(|x| x > P99_RATIO_TARGET) || w.is_some_and(|x| x > P99_RATIO_TARGET),
    })
}

fn device_json(run: &Run) -> Value {
    let (b, a) = (&run.before, &run.after);
    let by_level = |f: fn(&sluice::LevelStats) -> u64| -> Vec<u64> {
        a.levels
            .iter()
            .map(|l| {
                let before = b.levels.iter().find(|x| x.level == l.level).map_or(0, f);
                f(l).saturating_sub(before)
            })
            .collect()
    };
    json!({
        "user_bytes": a.user_bytes_written - b.user_bytes_written,
        "device_bytes": crate::device_bytes(a) - crate::device_bytes(b),
        "wal_bytes": a.wal_bytes_written - b.wal_bytes_written,
        "flush_bytes": a.bytes_flushed - b.bytes_flushed,
        "compaction_bytes": a.compaction_bytes_written - b.compaction_bytes_written,
        // Where the compaction bytes went, level by level (L0 first), and of them what
        // migration compactions wrote: old data landing high is written again below.
        "compaction_bytes_by_level": by_level(|l| l.compaction_bytes_written),
        "migration_bytes_by_level": by_level(|l| l.migration_bytes_written),
        "os_write_bytes": run.os_write,
        "stall_ms": ((a.stall_micros + a.slowdown_micros) - (b.stall_micros + b.slowdown_micros)) as f64 / 1000.0,
        "settle_secs": run.settle_secs,
        // Space amplification left behind: what the two runs' write totals leave unpaid.
        "live_sst_bytes_end": a.live_sst_bytes,
        "pending_compaction_bytes_end": a.pending_compaction_bytes,
    })
}

fn phases_json(run: &Run) -> Value {
    let mut m = Map::new();
    for (k, v) in &run.phases {
        m.insert(k.clone(), json!(v.summary()));
    }
    m.insert("migrating_all".into(), json!(run.migrating.summary()));
    Value::Object(m)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// `migration`, `biasfix`, `rollback`.
pub fn run(db: &Db, ctx: &ScenarioCtx<'_>, kind: Kind) -> BenchResult<Done> {
    let cli = ctx.cli;
    let prep = prepare(db, ctx)?;
    let control_dir = sibling(&cli.dir, "control");
    if cli.control {
        // A checkpoint makes its own directory: clear it, then mark what was made.
        crate::clear_dir(&control_dir, crate::STRESS_MARKER)?;
        db.checkpoint(&control_dir)?;
        crate::mark_dir(&control_dir, crate::STRESS_MARKER)?;
    }
    let cfg = load_config(ctx);
    eprintln!(
        "sluice-stress: {}: {} keys, {:.1} MiB under {}; load: {} writer(s){}, {} reader(s){}",
        kind.name(),
        prep.keys,
        mib(prep.data_bytes),
        prep.from,
        cfg.writers,
        cfg.write_rate
            .map_or_else(String::new, |r| format!(" at {r}/s")),
        cfg.readers,
        cfg.read_rate
            .map_or_else(String::new, |r| format!(" at {r}/s")),
    );
    let main = drive(db, ctx, &cfg, Plan::Migrate(kind))?;
    let keys_after = count_keys(db)?;
    // The fresh comparison first: it must see the migrated database as the migration left it.
    let before_fresh = db.stats().compaction_bytes_written;
    let fresh = if cli.compare_fresh {
        Some(compare_fresh(db, ctx)?)
    } else {
        None
    };
    // What the comparison's reads set off (seek compactions): the full compaction below
    // rewrites every data file whatever they did, and the control run has none of them,
    // so their bytes are no cost of the migration.
    let fresh_compactions = db
        .stats()
        .compaction_bytes_written
        .saturating_sub(before_fresh);
    let mut control = None;
    if cli.control {
        // Both runs end in different LSM shapes (debt deferred in one is paid in the other),
        // so each is also compacted fully: the bytes up to that common end state compare
        // fairly. Counted from the end of the measured run (a flush of what the run left
        // in memory may happen in between), less the fresh comparison's compactions.
        let mut main_compacted = compact_measured(db, &main.after)?;
        if fresh_compactions > 0 {
            eprintln!(
                "sluice-stress: left out of the migration run's bytes: {fresh_compactions} \
                 written by compactions the fresh comparison's reads set off"
            );
        }
        main_compacted.0 = main_compacted.0.saturating_sub(fresh_compactions);
        eprintln!(
            "sluice-stress: control run: same load, {} + {} + {} s, no migration",
            secs(cli.stable_secs),
            main.migrating_windows,
            secs(cli.post_secs)
        );
        let cdb = Db::open(
            &control_dir,
            Options {
                create_if_missing: false,
                ..ctx.opts.clone()
            },
        )?;
        let r = drive(
            &cdb,
            ctx,
            &cfg,
            Plan::Control {
                windows: main.migrating_windows,
            },
        )
        .and_then(|r| {
            let full = compact_measured(&cdb, &r.after)?;
            Ok((r, full))
        });
        cdb.close()?;
        std::fs::remove_dir_all(&control_dir)?;
        let (r, c_compacted) = r?;
        control = Some((r, main_compacted, c_compacted));
    }

    // Outputs.
    let mut files = Vec::new();
    if let Some(spec) = &cli.timeline {
        for p in crate::timeline::write(spec, ctx.tag.as_deref(), &main.rows, &ctx.cli.dir)? {
            files.push(p.display().to_string());
        }
        if let Some((c, _, _)) = &control {
            let tag = match &ctx.tag {
                Some(t) => format!("{t}-control"),
                None => "control".into(),
            };
            for p in crate::timeline::write(spec, Some(&tag), &c.rows, &ctx.cli.dir)? {
                files.push(p.display().to_string());
            }
        }
    }
    if let Some(chart) = &cli.chart {
        let path = crate::stress::tagged(chart, ctx.tag.as_deref());
        let title = format!(
            "sluice-stress {}: {} → {}, {} keys{}",
            kind.name(),
            prep.from,
            db.layout()
                .versions
                .iter()
                .find(|v| v.is_target)
                .map_or_else(String::new, |v| short_spec(&v.spec)),
            prep.keys,
            if control.is_some() {
                " (grey: control run)"
            } else {
                ""
            }
        );
        let svg = crate::chart::svg(
            &title,
            &main.rows,
            control.as_ref().map(|c| c.0.rows.as_slice()),
            &main.events,
            main.window,
        );
        crate::write_output("--chart", &path, svg.as_bytes(), &ctx.cli.dir)?;
        files.push(path.display().to_string());
    }

    // Figures.
    let stable = summary(&main.stable);
    let migrating = summary(&main.migrating);
    let post = summary(&main.post);
    let (b, a) = (&main.before, &main.after);
    let migrated_read = a.migration_bytes_read - b.migration_bytes_read;
    let migrated_written = a.migration_bytes_written - b.migration_bytes_written;
    // (Saturating: a flush takes back out the moves it left out, so the figures can fall.)
    let lazy_bytes = a.lazy_moved_bytes.saturating_sub(b.lazy_moved_bytes);
    // Every byte of a draining table is read by exactly one migration compaction, lazily
    // moved or not (the compaction drops a moved value), so the compactions' input is the
    // bytes migrated; adding the lazily moved bytes would count those twice.
    let bytes_migrated = migrated_read;
    let migration_secs = main.window.map_or(0.0, |(s, e)| e - s);
    let mut details = json!({
        "kind": kind.name(),
        "from": prep.from,
        "to": cli.to.to_string(),
        "biased": (kind == Kind::BiasFix).then(|| biased_spec(ctx).to_string()),
        "keys": prep.keys,
        "keys_after": keys_after,
        "loaded": prep.loaded,
        "load_secs": prep.load_secs,
        "compact_secs": prep.compact_secs,
        "data_bytes": prep.data_bytes,
        "load": {
            "readers": cfg.readers,
            "writers": cfg.writers,
            "read_rate_per_thread": cfg.read_rate,
            "write_rate_per_thread": cfg.write_rate,
            "distribution": ctx.cli.distribution.unwrap_or(Distribution::Uniform).to_string(),
        },
        "pacer": {
            "rate_bytes_per_sec": db.migration_progress().rate_limit_bytes_per_sec,
            "p99_target_us": main.p99_target_us,
        },
        "completed": main.completed,
        "migration_secs": migration_secs,
        "phases": phases_json(&main),
        "ratios_vs_stable": ratios(&migrating, &stable),
        "migration": {
            "bytes_migrated": bytes_migrated,
            "compaction_bytes_read": migrated_read,
            "compaction_bytes_written": migrated_written,
            "lazy_moves": a.lazy_moves.saturating_sub(b.lazy_moves),
            "lazy_moved_bytes": lazy_bytes,
            "engine_write_amp": ratio(migrated_written as f64, migrated_read as f64),
        },
        "device": device_json(&main),
        "events": main.events,
        "failed_ops": main.failed_ops,
        "first_error": main.first_error,
        "timeline_rows": main.rows.len(),
        "timeline_files": files,
    });
    for (k, v) in &main.extra {
        details[k] = v.clone();
    }
    let mut human = vec![format!(
        "{} {} → {}: {} in {:.1} s{}; {:.1} MiB migrated (read by migration compactions; \
         {:.1} MiB of it moved first by {} lazy moves), migration compactions wrote {:.1} MiB",
        kind.name(),
        prep.from,
        cli.to,
        if main.completed {
            "completed"
        } else {
            "NOT completed"
        },
        migration_secs,
        if main.failed_ops > 0 {
            format!(", {} operations FAILED", main.failed_ops)
        } else {
            ", no operation failed".into()
        },
        mib(bytes_migrated),
        mib(lazy_bytes),
        a.lazy_moves.saturating_sub(b.lazy_moves),
        mib(migrated_written),
    )];
    let line = |name: &str, p: &PhaseSummary| {
        format!(
            "  {name:<10} {:>6.1} s  reads {:>9.0}/s p50 {:>7.1} p99 {:>8.1} us | writes {:>8.0}/s \
             p50 {:>7.1} p99 {:>8.1} us | stall {:.0} ms",
            p.seconds,
            p.reads_per_sec,
            p.read_p50_us,
            p.read_p99_us,
            p.writes_per_sec,
            p.write_p50_us,
            p.write_p99_us,
            p.stall_ms
        )
    };
    human.push(line("stable", &stable));
    human.push(line("migrating", &migrating));
    if let Some(t) = main.phases.get("three-live") {
        human.push(line("(3 live)", &t.summary()));
    }
    if let Some(t) = main.phases.get("rolledback") {
        human.push(line("(rolled)", &t.summary()));
    }
    human.push(line("post", &post));
    let fmt = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
    human.push(format!(
        "  migrating ÷ stable: read p99 {} write p99 {} (target ≤ {P99_RATIO_TARGET}), \
         throughput {} (target ≥ {THROUGHPUT_RATIO_TARGET})",
        fmt(ratio(migrating.read_p99_us, stable.read_p99_us)),
        fmt(ratio(migrating.write_p99_us, stable.write_p99_us)),
        fmt(ratio(migrating.ops_per_sec, stable.ops_per_sec)),
    ));
    if let Some((c, main_full, c_full)) = &control {
        let cm = summary(&c.migrating);
        let dev = |r: &Run| (crate::device_bytes(&r.after) - crate::device_bytes(&r.before)) as f64;
        let user = |r: &Run| (r.after.user_bytes_written - r.before.user_bytes_written) as f64;
        let (u_m, u_c) = (user(&main), user(c));
        let b = bytes_migrated as f64;
        let figures = |d_m: f64, d_c: f64| {
            let raw = ratio(d_m - d_c, b);
            let normalized = if u_c > 0.0 {
                ratio(d_m - d_c * u_m / u_c, b)
            } else {
                None
            };
            (raw, normalized)
        };
        let (d_m, d_c) = (dev(&main), dev(c));
        let (raw, normalized) = figures(d_m, d_c);
        // Up to the common end state: plus what a full compaction of each then wrote.
        let (d_mf, d_cf) = (d_m + main_full.0 as f64, d_c + c_full.0 as f64);
        let (raw_f, _) = figures(d_mf, d_cf);
        // A full compaction rewrites the whole database however much the run wrote: only
        // the as-run bytes of the control scale with its user bytes.
        let normalized_f = normalized.map(|n| n + (main_full.0 as f64 - c_full.0 as f64) / b);
        details["control"] = json!({
            "phases": phases_json(c),
            "device": device_json(c),
            "failed_ops": c.failed_ops,
            "ratios_vs_control": ratios(&migrating, &cm),
            "migration_write_amp": {
                "as_run": {"raw": raw, "normalized": normalized, "d_migration": d_m, "d_control": d_c},
                "to_full_compaction": {
                    "raw": raw_f, "normalized": normalized_f, "d_migration": d_mf, "d_control": d_cf,
                    "compaction_bytes_migration": main_full.0, "compaction_bytes_control": c_full.0,
                    "compact_secs_migration": main_full.1, "compact_secs_control": c_full.1,
                    "live_sst_bytes_migration": main_full.2, "live_sst_bytes_control": c_full.2,
                },
                "raw": raw_f,
                "normalized": normalized_f,
                "ok": normalized_f.map(|x| x <= WRITE_AMP_TARGET),
                "formula": "raw = (D_mig - D_ctl) / B; normalized = (D_mig - D_ctl * U_mig / U_ctl) / B; \
                            D = WAL+flush+compaction bytes written over the whole run incl. the final \
                            flush and settle (as_run), plus a full compaction of each database \
                            (to_full_compaction, the headline: both end fully compacted; the full \
                            compactions' bytes are not scaled by U); U = user \
                            bytes; B = migration compaction input bytes (lazily moved values included, \
                            counted once)",
                "u_migration": u_m, "u_control": u_c, "b": bytes_migrated,
            },
        });
        human.push(line("control", &cm));
        human.push(format!(
            "  migrating ÷ control (same seconds, no migration): read p99 {} write p99 {} \
             throughput {}",
            fmt(ratio(migrating.read_p99_us, cm.read_p99_us)),
            fmt(ratio(migrating.write_p99_us, cm.write_p99_us)),
            fmt(ratio(migrating.ops_per_sec, cm.ops_per_sec)),
        ));
        human.push(format!(
            "  migration write amp (both runs then fully compacted): normalized {} (target ≤ \
             {WRITE_AMP_TARGET}), raw {}; as run (unequal end states): normalized {}, raw {}",
            fmt(normalized_f),
            fmt(raw_f),
            fmt(normalized),
            fmt(raw),
        ));
        human.push(format!(
            "    [device MiB: {:.0} + {:.0} compaction vs control {:.0} + {:.0}; user MiB {:.0} vs \
             {:.0}; migrated {:.0} MiB; live SSTs before the full compaction {:.0} vs {:.0} MiB]",
            d_m / (1 << 20) as f64,
            mib(main_full.0),
            d_c / (1 << 20) as f64,
            mib(c_full.0),
            u_m / (1 << 20) as f64,
            u_c / (1 << 20) as f64,
            mib(bytes_migrated),
            mib(main.after.live_sst_bytes),
            mib(c.after.live_sst_bytes),
        ));
    } else {
        human.push(
            "  migration write amp: needs --control (a run without the migration to subtract)"
                .into(),
        );
    }
    if let Some(f) = &fresh {
        human.extend(f.1.iter().cloned());
        details["compare_fresh"] = f.0.clone();
    }
    if kind == Kind::BiasFix {
        for (key, label) in [
            ("v2_data_shares", "v2 (biased) data"),
            ("v2_traffic_shares", "v2 (biased) traffic"),
            ("v3_data_shares", "v3 (corrected) data"),
            ("v3_traffic_shares", "v3 (corrected) traffic"),
        ] {
            if let Some(v) = details.get(key) {
                human.push(format!(
                    "  {label}: max share {:.1}%, max/mean {:.2}, {} empty partitions",
                    v["max_share"].as_f64().unwrap_or(0.0) * 100.0,
                    v["max_over_mean"].as_f64().unwrap_or(0.0),
                    v["empty_partitions"]
                ));
            }
        }
        if let (Some(t), Some(p)) = (main.phases.get("three-live"), main.phases.get("post")) {
            let (t, p) = (t.summary(), p.summary());
            details["read_cost_three_live_vs_post"] = json!({
                "p50": ratio(t.read_p50_us, p.read_p50_us),
                "p99": ratio(t.read_p99_us, p.read_p99_us),
                "reads_per_sec": ratio(t.reads_per_sec, p.reads_per_sec),
            });
            human.push(format!(
                "  point reads with 3 layouts live ÷ after completion (under load): p50 {} p99 {}",
                fmt(ratio(t.read_p50_us, p.read_p50_us)),
                fmt(ratio(t.read_p99_us, p.read_p99_us))
            ));
        } else {
            human.push("  three layouts were never live at a second boundary".into());
        }
    }
    if kind == Kind::Rollback {
        for (key, label) in [
            ("rollback_at_s", "rollback"),
            ("forward_at_s", "forward again"),
        ] {
            if let Some(at) = main.extra.get(key).and_then(|v| v.as_f64()) {
                let a = around(&main.rows, at);
                human.push(format!(
                    "  around the {label} at {at:.1} s: p99 peak in the next 3 s ÷ median of the 5 s \
                     before: reads {} writes {}{}; ÷ p90 of all migrating seconds: reads {} writes {}",
                    fmt(a["read_p99_spike"].as_f64()),
                    fmt(a["write_p99_spike"].as_f64()),
                    if a["spiked"] == true { " (above 1.25)" } else { "" },
                    fmt(a["read_p99_vs_migrating_p90"].as_f64()),
                    fmt(a["write_p99_vs_migrating_p90"].as_f64()),
                ));
                details[format!("around_{}", key.trim_end_matches("_at_s"))] = a;
            }
        }
    }
    if !files.is_empty() {
        human.push(format!("  files: {}", files.join(", ")));
    }
    let mut failure = Vec::new();
    if main.failed_ops > 0 {
        failure.push(format!(
            "{} operations failed (first: {})",
            main.failed_ops,
            main.first_error.clone().unwrap_or_default()
        ));
    }
    if keys_after != prep.keys {
        failure.push(format!(
            "{} keys before the migration, {keys_after} after",
            prep.keys
        ));
    }
    if !main.completed {
        failure.push(format!(
            "migration did not complete within --migrate-secs {}",
            cli.migrate_secs.as_secs_f64()
        ));
    }
    let mut latency = Latency::new();
    latency.merge(&main.all.reads);
    latency.merge(&main.all.writes);
    Ok(Done {
        m: Measured {
            ops: latency.count(),
            seconds: main.seconds,
            latency,
            found: None,
            background_writes: None,
        },
        scenario: Some(details),
        human,
        failure: (!failure.is_empty()).then(|| failure.join("; ")),
    })
}

/// Compacts fully; returns (device bytes it wrote, seconds, live SST bytes after).
/// Compacts `db` fully; returns the device bytes written since `since` (the end of the
/// measured run: whatever ran in between is counted too), the compaction's seconds and the
/// live bytes left.
fn compact_measured(db: &Db, since: &Stats) -> BenchResult<(u64, f64, u64)> {
    let before = crate::device_bytes(since);
    let t = Instant::now();
    eprintln!(
        "sluice-stress: full compaction (for the write amplification figure) of {}",
        crate::lsm_shape(since)
    );
    db.compact()?;
    let s = db.stats();
    Ok((
        crate::device_bytes(&s) - before,
        t.elapsed().as_secs_f64(),
        s.live_sst_bytes,
    ))
}

/// Point reads and scans on the migrated database vs a fresh one with the final layout and
/// the same data.
fn compare_fresh(db: &Db, ctx: &ScenarioCtx<'_>) -> BenchResult<(Value, Vec<String>)> {
    let (cli, s) = (ctx.cli, ctx.settings);
    let spec = db
        .layout()
        .versions
        .iter()
        .find(|v| v.is_target)
        .map(|v| v.spec.clone())
        .ok_or("no target layout")?;
    let dir = sibling(&cli.dir, "fresh");
    crate::prepare_dir(&dir, false)?;
    eprintln!(
        "sluice-stress: --compare-fresh: copying into a new {spec} database at {}",
        dir.display()
    );
    let fresh = Db::open(
        &dir,
        Options {
            partition: spec.clone(),
            create_if_missing: true,
            ..ctx.opts.clone()
        },
    )?;
    let t = Instant::now();
    let mut batch = sluice::WriteBatch::new();
    let mut n = 0u64;
    for r in db.range(..) {
        let (k, v) = r?;
        batch.put(&k, &v);
        n += 1;
        if n.is_multiple_of(1000) {
            fresh.write(std::mem::take(&mut batch))?;
        }
    }
    fresh.write(batch)?;
    fresh.flush()?;
    db.flush()?;
    settle(&fresh, Duration::from_secs(120));
    settle(db, Duration::from_secs(120));
    let copy_secs = t.elapsed().as_secs_f64();
    let reads = cli.reads.unwrap_or(s.num.min(1_000_000));
    let rs = Settings {
        reads,
        chooser: s.chooser.clone(),
        ..*s
    };
    let ss = Settings {
        reads: (reads / 10).max(1),
        chooser: s.chooser.clone(),
        ..*s
    };
    let mut out = Map::new();
    let mut human = vec![format!(
        "  --compare-fresh: {n} keys copied into a fresh {spec} database in {copy_secs:.1} s"
    )];
    let mut figures = Vec::new();
    for (name, d) in [("migrated", db), ("fresh", &fresh)] {
        let kv = SluiceKv {
            db: d.clone(),
            write_options: s.write_options,
        };
        let r = workloads::run(&kv, &rs, Workload::ReadRandom, ctx.index)?;
        let k = workloads::run(&kv, &ss, Workload::SeekRandom, ctx.index)?;
        let st = d.stats();
        let fig = |m: &Measured| {
            json!({"ops": m.ops, "ops_per_sec": m.ops as f64 / m.seconds.max(1e-9),
                   "p50_us": m.latency.quantile_us(0.5), "p99_us": m.latency.quantile_us(0.99),
                   "p999_us": m.latency.quantile_us(0.999), "found": m.found})
        };
        out.insert(
            name.into(),
            json!({"readrandom": fig(&r), "seekrandom": fig(&k),
                   "shape": crate::lsm_shape(&st), "live_sst_bytes": st.live_sst_bytes}),
        );
        human.push(format!(
            "    {name:<8} readrandom {:>9.0}/s p50 {:.1} p99 {:.1} us; seekrandom {:>8.0}/s p50 \
             {:.1} p99 {:.1} us; {}",
            r.ops as f64 / r.seconds.max(1e-9),
            r.latency.quantile_us(0.5),
            r.latency.quantile_us(0.99),
            k.ops as f64 / k.seconds.max(1e-9),
            k.latency.quantile_us(0.5),
            k.latency.quantile_us(0.99),
            crate::lsm_shape(&st)
        ));
        figures.push((r, k));
    }
    let (m, f) = (&figures[0], &figures[1]);
    let rate = |x: &Measured| x.ops as f64 / x.seconds.max(1e-9);
    out.insert(
        "migrated_over_fresh".into(),
        json!({
            "readrandom_ops_per_sec": ratio(rate(&m.0), rate(&f.0)),
            "readrandom_p99": ratio(m.0.latency.quantile_us(0.99), f.0.latency.quantile_us(0.99)),
            "seekrandom_ops_per_sec": ratio(rate(&m.1), rate(&f.1)),
            "seekrandom_p99": ratio(m.1.latency.quantile_us(0.99), f.1.latency.quantile_us(0.99)),
        }),
    );
    human.push(format!(
        "    migrated ÷ fresh: readrandom ops/s {:.2}, p99 {:.2}; seekrandom ops/s {:.2}, p99 {:.2}",
        rate(&m.0) / rate(&f.0),
        m.0.latency.quantile_us(0.99) / f.0.latency.quantile_us(0.99).max(1e-9),
        rate(&m.1) / rate(&f.1),
        m.1.latency.quantile_us(0.99) / f.1.latency.quantile_us(0.99).max(1e-9),
    ));
    out.insert("keys_copied".into(), json!(n));
    out.insert("copy_secs".into(), json!(copy_secs));
    fresh.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok((Value::Object(out), human))
}

/// `migration3`: point reads (hits and misses) with three layouts live — v1 (`--partition`,
/// 40% of the data left), v2 (biased hash, 60%) and v3 (`--to`, the target, holding a tenth
/// of the keys freshly overwritten) — and again once everything is in v3, on the same data,
/// with the pacer paused and (unless `--move-mb-per-sec`) lazy moves off so the state holds
/// still while it is measured. The data must span several SSTables (migration moves whole
/// files): use a multi-partition `--partition` or enough keys.
pub fn three_versions(db: &Db, ctx: &ScenarioCtx<'_>) -> BenchResult<Done> {
    let (cli, s) = (ctx.cli, ctx.settings);
    let prep = prepare(db, ctx)?;
    db.set_migration_rate(0);
    let v2 = db.register_partition_fn(biased_spec(ctx))?;
    db.set_target(v2)?;
    let total = db.migration_progress().bytes_left();
    db.migrate_now(Some((total as f64 * cli.detect_at) as u64))?;
    let v3 = db.register_partition_fn(cli.to.clone())?;
    db.set_target(v3)?;
    // v3's own share: a tenth of the keys overwritten, flushed into v3.
    let mut rng = fastrand::Rng::with_seed(mix64(s.seed ^ 0x3333));
    let mut values = ValueGen::new(&mut rng, s.value_size);
    let chooser = KeyChooser::new(Distribution::Uniform, s.num, s.seed ^ 3);
    let mut key = vec![0u8; s.key_size];
    for _ in 0..(s.num / 10).max(1) {
        write_key(&mut key, chooser.next(&mut rng));
        db.put(&key, values.next(s.value_size))?;
    }
    db.flush()?;
    settle(db, Duration::from_secs(60));
    let layout_json = |db: &Db| -> Value {
        db.layout()
            .versions
            .iter()
            .map(|v| {
                json!({"version": v.id.to_string(), "spec": v.spec.to_string(),
                       "target": v.is_target, "files": v.files(), "bytes": v.bytes()})
            })
            .collect()
    };
    let three_layout = layout_json(db);
    let live_during = db.layout().versions.len();
    let reads = cli.reads.unwrap_or(s.num.min(1_000_000));
    let rs = Settings {
        reads,
        chooser: s.chooser.clone(),
        ..*s
    };
    let kv = SluiceKv {
        db: db.clone(),
        write_options: s.write_options,
    };
    let measure = |label: &str| -> BenchResult<(Measured, Measured, u64)> {
        let moves = db.stats().lazy_moves;
        let hit = workloads::run(&kv, &rs, Workload::ReadRandom, ctx.index)?;
        let miss = workloads::run(&kv, &rs, Workload::ReadMissing, ctx.index)?;
        let moved = db.stats().lazy_moves.saturating_sub(moves);
        eprintln!(
            "sluice-stress: migration3: {label}: readrandom {:.0}/s, readmissing {:.0}/s",
            hit.ops as f64 / hit.seconds.max(1e-9),
            miss.ops as f64 / miss.seconds.max(1e-9)
        );
        Ok((hit, miss, moved))
    };
    let three = measure("three layouts live")?;
    let t = Instant::now();
    db.migrate_now(None)?;
    let finish_secs = t.elapsed().as_secs_f64();
    settle(db, Duration::from_secs(60));
    let single_layout = layout_json(db);
    let live_after = db.layout().versions.len();
    let one = measure("one layout")?;
    db.set_migration_rate(
        cli.migration_mb_per_sec
            .map_or(ctx.opts.migration_bytes_per_sec, |mb| {
                (mb * (1 << 20) as f64) as u64
            }),
    );
    let fig = |m: &Measured| {
        json!({"ops": m.ops, "ops_per_sec": m.ops as f64 / m.seconds.max(1e-9),
               "p50_us": m.latency.quantile_us(0.5), "p99_us": m.latency.quantile_us(0.99),
               "p999_us": m.latency.quantile_us(0.999), "found": m.found})
    };
    let cmp = |a: &Measured, b: &Measured| {
        json!({
            "ops_per_sec": ratio(a.ops as f64 / a.seconds.max(1e-9), b.ops as f64 / b.seconds.max(1e-9)),
            "p50": ratio(a.latency.quantile_us(0.5), b.latency.quantile_us(0.5)),
            "p99": ratio(a.latency.quantile_us(0.99), b.latency.quantile_us(0.99)),
        })
    };
    let details = json!({
        "kind": "migration3",
        "from": prep.from,
        "biased": biased_spec(ctx).to_string(),
        "to": cli.to.to_string(),
        "keys": prep.keys,
        "live_versions_during": live_during,
        "live_versions_after": live_after,
        "three_live": {"layout": three_layout, "readrandom": fig(&three.0),
                       "readmissing": fig(&three.1), "lazy_moves": three.2},
        "single": {"layout": single_layout, "readrandom": fig(&one.0),
                   "readmissing": fig(&one.1), "lazy_moves": one.2},
        "three_over_single": {"readrandom": cmp(&three.0, &one.0), "readmissing": cmp(&three.1, &one.1)},
        "finish_secs": finish_secs,
    });
    let row = |name: &str, m: &Measured| {
        format!(
            "{name} {:.0}/s p50 {:.2} p99 {:.2} us",
            m.ops as f64 / m.seconds.max(1e-9),
            m.latency.quantile_us(0.5),
            m.latency.quantile_us(0.99)
        )
    };
    let human = vec![
        format!(
            "migration3: {live_during} layouts live: {}; {}",
            row("readrandom", &three.0),
            row("readmissing", &three.1)
        ),
        format!(
            "  {live_after} layout after migrate_now ({finish_secs:.1} s): {}; {}",
            row("readrandom", &one.0),
            row("readmissing", &one.1)
        ),
        format!(
            "  three ÷ one: readrandom p50 {:.2} p99 {:.2}; readmissing p50 {:.2} p99 {:.2}; lazy \
             moves during the measurements: {} / {}",
            three.0.latency.quantile_us(0.5) / one.0.latency.quantile_us(0.5).max(1e-9),
            three.0.latency.quantile_us(0.99) / one.0.latency.quantile_us(0.99).max(1e-9),
            three.1.latency.quantile_us(0.5) / one.1.latency.quantile_us(0.5).max(1e-9),
            three.1.latency.quantile_us(0.99) / one.1.latency.quantile_us(0.99).max(1e-9),
            three.2,
            one.2
        ),
    ];
    let failure = (live_during < 3).then(|| {
        format!(
            "only {live_during} layouts were live (the data fit in too few SSTables to leave \
             part of it in v1; use more keys or a multi-partition --partition)"
        )
    });
    Ok(Done {
        m: three.0,
        scenario: Some(details),
        human,
        failure,
    })
}
