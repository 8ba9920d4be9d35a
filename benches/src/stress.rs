//! `compactionstress` and `hotpartition`: scenarios that push the LSM itself rather than
//! the layout machinery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::json;
use sluice::{shares_of, Db, PartitionFn};

use crate::keys::{mix64, write_key, Distribution, KeyChooser, ValueGen};
use crate::report::Latency;
use crate::scenario::{l0_files_max, with_load, LoadConfig, Sampler};
use crate::workloads::{split_ops, start_together, Measured};
use crate::{BenchResult, Done, ScenarioCtx};

/// Default key space of `compactionstress`: small enough that nearly every write overwrites
/// a live key, so compaction mostly discards.
const STRESS_KEYSPACE: u64 = 100_000;

/// `--threads` writers overwrite random keys of `0..--keyspace` as fast as they can
/// (`--write-rate` caps each) until `--num` writes or `--duration-secs`. The run opens with a
/// 1 MiB memtable unless `--memtable-mb` says otherwise, so flushes and L0 compactions never
/// stop. Reports stops and slowdowns (count and time), the workload's write amplification,
/// and per second: writes/s, write latency, compaction debt, L0 files.
pub fn compaction_stress(db: &Db, ctx: &ScenarioCtx<'_>) -> BenchResult<Done> {
    let (cli, s) = (ctx.cli, ctx.settings);
    let keyspace = cli.keyspace.unwrap_or(s.num.min(STRESS_KEYSPACE));
    let dist = cli.distribution.unwrap_or(Distribution::Uniform);
    let cfg = LoadConfig {
        readers: 0,
        writers: s.threads,
        read_rate: None,
        write_rate: cli.write_rate,
        write_ops: Some(s.num),
        chooser: KeyChooser::new(dist, keyspace, s.seed),
        key_size: s.key_size,
        value_size: s.value_size,
        write_options: s.write_options,
        seed: mix64(s.seed ^ ctx.index as u64),
    };
    let before = db.stats();
    let started = Instant::now();
    let deadline = s.duration;
    let (rows, all, failed, first_error) = with_load(db, &cfg, |h| {
        let mut sm = Sampler::new(db, h);
        let done = || h.writers_done() || deadline.is_some_and(|d| started.elapsed() >= d);
        while !sm.tick_unless("stress", &done) {}
        (
            std::mem::take(&mut sm.rows),
            sm.all,
            h.failed_ops(),
            h.first_error(),
        )
    });
    let seconds = started.elapsed().as_secs_f64();
    let after = db.stats();
    // Pay what the run left in the memtable and in compaction debt (as the migration
    // scenarios do), so the write amplification does not depend on where the run stopped.
    db.flush()?;
    let settle_secs = crate::scenario::settle(db, std::time::Duration::from_secs(120));
    let settled = db.stats();
    // The key and value bytes written, as every other workload's write amplification
    // divides by (the engine's own count adds each batch's framing, ~2.5% here).
    let writes = all.writes.count();
    let user = writes * (s.key_size + s.value_size) as u64;
    let device = crate::device_bytes(&settled) - crate::device_bytes(&before);
    let device_as_run = crate::device_bytes(&after) - crate::device_bytes(&before);
    let max_debt = rows
        .iter()
        .map(|r| r.pending_compaction_bytes)
        .max()
        .unwrap_or(0);
    let max_l0 = rows.iter().map(|r| r.l0_files_max).max().unwrap_or(0);
    let files = write_outputs(ctx, "compactionstress", &rows)?;
    let stall_ms = (after.stall_micros - before.stall_micros) as f64 / 1000.0;
    let slowdown_ms = (after.slowdown_micros - before.slowdown_micros) as f64 / 1000.0;
    let wa = (user > 0).then(|| device as f64 / user as f64);
    let details = json!({
        "kind": "compactionstress",
        "keyspace": keyspace,
        "memtable_bytes": ctx.opts.memtable_bytes,
        "writers": s.threads,
        "writes": writes,
        "writes_per_sec": writes as f64 / seconds.max(1e-9),
        "stalls": after.stalls - before.stalls,
        "stall_ms": stall_ms,
        "slowdowns": after.slowdowns - before.slowdowns,
        "slowdown_ms": slowdown_ms,
        "write_amp": wa,
        "write_amp_as_run": (user > 0).then(|| device_as_run as f64 / user as f64),
        "settle_secs": settle_secs,
        "flushes": after.flushes - before.flushes,
        "compactions": after.compactions - before.compactions,
        "compaction_bytes_written": after.compaction_bytes_written - before.compaction_bytes_written,
        "max_pending_compaction_bytes": max_debt,
        "final_pending_compaction_bytes": after.pending_compaction_bytes,
        "max_l0_files": max_l0,
        "final_l0_files": l0_files_max(&after),
        "failed_ops": failed,
        "timeline_rows": rows.len(),
        "timeline_files": files,
    });
    let human = vec![format!(
        "compactionstress: {writes} writes over {keyspace} keys, memtable {:.1} MiB: {} stops \
         ({stall_ms:.0} ms), {} slowdowns ({slowdown_ms:.0} ms); write amp {}; compaction debt \
         max {:.1} MiB; L0 max {max_l0} files; {} flushes, {} compactions{}",
        ctx.opts.memtable_bytes as f64 / (1 << 20) as f64,
        after.stalls - before.stalls,
        after.slowdowns - before.slowdowns,
        wa.map_or_else(|| "-".into(), |w| format!("{w:.2}")),
        max_debt as f64 / (1 << 20) as f64,
        after.flushes - before.flushes,
        after.compactions - before.compactions,
        if files.is_empty() {
            String::new()
        } else {
            format!("; timeline in {}", files.join(", "))
        }
    )];
    Ok(Done {
        m: Measured {
            ops: writes,
            seconds,
            latency: all.writes,
            found: None,
            background_writes: None,
        },
        scenario: Some(details),
        human,
        failure: first_error.map(|e| format!("{failed} operations failed, first: {e}")),
    })
}

/// Writes the timeline (if `--timeline`) and a chart (if `--chart`); returns the files.
pub fn write_outputs(
    ctx: &ScenarioCtx<'_>,
    title: &str,
    rows: &[crate::timeline::Row],
) -> BenchResult<Vec<String>> {
    let mut files = Vec::new();
    if let Some(spec) = &ctx.cli.timeline {
        for p in crate::timeline::write(spec, ctx.tag.as_deref(), rows, &ctx.cli.dir)? {
            files.push(p.display().to_string());
        }
    }
    if let Some(chart) = &ctx.cli.chart {
        let path = tagged(chart, ctx.tag.as_deref());
        let svg = crate::chart::svg(title, rows, None, &[], None);
        crate::write_output("--chart", &path, svg.as_bytes(), &ctx.cli.dir)?;
        files.push(path.display().to_string());
    }
    Ok(files)
}

/// `chart.svg` with tag `t` → `chart-t.svg`.
pub fn tagged(path: &std::path::Path, tag: Option<&str>) -> std::path::PathBuf {
    match tag {
        None => path.to_path_buf(),
        Some(t) => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = match path.extension() {
                Some(e) => format!("{stem}-{t}.{}", e.to_string_lossy()),
                None => format!("{stem}-{t}"),
            };
            path.with_file_name(name)
        }
    }
}

/// Figures of one hotpartition phase.
struct HotPhase {
    seconds: f64,
    reads: Latency,
    hot_writes: Latency,
    other_writes: Latency,
    /// Per partition: operations (reads + writes) and written bytes, from the engine's
    /// `partition_load` counters.
    ops: Vec<u64>,
    write_bytes: Vec<u64>,
}

impl HotPhase {
    fn shares(&self) -> Vec<f64> {
        shares_of(&self.ops)
    }

    fn json(&self, hot: u32) -> serde_json::Value {
        let shares = self.shares();
        let n = shares.len().max(1) as f64;
        let max = shares.iter().copied().fold(0.0, f64::max);
        let mean = shares.iter().sum::<f64>() / n;
        let others = (shares.len().saturating_sub(1)).max(1) as f64;
        let hot_bytes = self.write_bytes.get(hot as usize).copied().unwrap_or(0);
        let other_bytes: u64 = self.write_bytes.iter().sum::<u64>() - hot_bytes;
        let secs = self.seconds.max(1e-9);
        json!({
            "seconds": self.seconds,
            "shares": shares,
            "max_share": max,
            "mean_share": mean,
            "max_over_mean": if mean > 0.0 { max / mean } else { 0.0 },
            "hottest_measured": argmax(&self.ops),
            "ops_per_partition": self.ops,
            "reads_per_sec": self.reads.count() as f64 / secs,
            "read_p99_us": self.reads.quantile_us(0.99),
            "hot_writes_per_sec": self.hot_writes.count() as f64 / secs,
            "hot_write_mib_per_sec": hot_bytes as f64 / secs / (1 << 20) as f64,
            "hot_write_p50_us": self.hot_writes.quantile_us(0.5),
            "hot_write_p99_us": self.hot_writes.quantile_us(0.99),
            "other_writes_per_sec": self.other_writes.count() as f64 / secs,
            "other_writes_per_sec_per_partition": self.other_writes.count() as f64 / secs / others,
            "other_write_mib_per_sec": other_bytes as f64 / secs / (1 << 20) as f64,
            "other_write_p50_us": self.other_writes.quantile_us(0.5),
            "other_write_p99_us": self.other_writes.quantile_us(0.99),
        })
    }
}

/// The first of the largest counts, if any count is above 0: with no traffic at all no
/// partition is the hottest (`max_by_key` named the last one).
fn argmax(v: &[u64]) -> Option<usize> {
    let max = *v.iter().max()?;
    (max > 0)
        .then(|| v.iter().position(|&x| x == max))
        .flatten()
}

/// `--threads` threads each issue a mix of reads (`--read-fraction`) and writes over keys
/// `0..--num` from `--distribution` (default zipfian, θ = 0.99), `--num` operations in all
/// (or `--duration-secs`). The target layout must have several partitions (e.g.
/// `--partition hash:16`). Reports each partition's share of the operations (from
/// `Db::partition_load`), max/mean, and write latency into the hottest partition vs the
/// others. With `--hot-write-limit-mb`, runs the same load again with
/// `Db::set_partition_write_limit` on the hottest partition and reports both. Threads run
/// closed-loop: a thread waiting for the limited partition issues nothing else meanwhile, so
/// with few threads the others slow down too; use more threads to see the isolation.
pub fn hot_partition(db: &Db, ctx: &ScenarioCtx<'_>) -> BenchResult<Done> {
    let (cli, s) = (ctx.cli, ctx.settings);
    let layout = db.layout();
    let target = layout
        .versions
        .iter()
        .find(|v| v.is_target)
        .ok_or("no target layout")?;
    let func = PartitionFn::new(target.spec.clone())?;
    let parts = func.partitions();
    if parts < 2 {
        return Err(format!(
            "hotpartition needs a target layout with several partitions (it has {}: {}); \
             run with e.g. --partition hash:16",
            parts, target.spec
        )
        .into());
    }
    let dist = cli.distribution.unwrap_or(Distribution::Zipfian {
        theta: Distribution::DEFAULT_THETA,
    });
    let chooser = KeyChooser::new(dist, s.num, s.seed);
    // Which partition the distribution makes hottest, predicted by sampling it (the load's
    // own measurement is reported next to it).
    let predicted = {
        let mut rng = fastrand::Rng::with_seed(mix64(s.seed ^ 0xB0B));
        let mut counts = vec![0u64; parts as usize];
        let mut key = vec![0u8; s.key_size];
        for _ in 0..200_000 {
            write_key(&mut key, chooser.next(&mut rng));
            counts[func.partition_of(&key) as usize] += 1;
        }
        argmax(&counts).unwrap_or(0) as u32
    };
    let run_phase = |salt: u64| -> BenchResult<HotPhase> {
        let load_before = db.partition_load();
        let split = split_ops(s.num, s.threads);
        let failed = AtomicBool::new(false);
        let setup = |t: usize| {
            let mut rng = fastrand::Rng::with_seed(mix64(
                s.seed ^ mix64(salt << 32 | t as u64 | 0x4000_0000),
            ));
            let values = ValueGen::new(&mut rng, s.value_size);
            let key = vec![0u8; s.key_size];
            (
                rng,
                values,
                key,
                [Latency::new(), Latency::new(), Latency::new()],
            )
        };
        let (seconds, results) = start_together(s.threads, "hotpartition", setup, |state, t| {
            let (mut rng, mut values, mut key, [mut r, mut hw, mut ow]) = state;
            let deadline = s.duration.map(|d| Instant::now() + d);
            for _ in 0..split[t] {
                if failed.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                write_key(&mut key, chooser.next(&mut rng));
                let read = rng.f64() < cli.read_fraction;
                let began = Instant::now();
                let res = if read {
                    db.get(&key).map(|_| ())
                } else {
                    let mut b = sluice::WriteBatch::new();
                    b.put(&key, values.next(s.value_size));
                    db.write_opt(b, &s.write_options)
                };
                if let Err(e) = res {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e.into());
                }
                let nanos = began.elapsed().as_nanos() as u64;
                if read {
                    r.record(nanos);
                } else if func.partition_of(&key) == predicted {
                    hw.record(nanos);
                } else {
                    ow.record(nanos);
                }
            }
            Ok((r, hw, ow))
        })?;
        let (mut reads, mut hot, mut other) = (Latency::new(), Latency::new(), Latency::new());
        for (a, b, c) in results {
            reads.merge(&a);
            hot.merge(&b);
            other.merge(&c);
        }
        let load_after = db.partition_load();
        let diff = |a: &[u64], b: &[u64]| -> Vec<u64> {
            if a.len() != b.len() {
                // The target changed under us (it should not here): report the totals.
                return a.to_vec();
            }
            a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect()
        };
        let ops = diff(&load_after.ops(), &load_before.ops());
        let write_bytes = diff(&load_after.write_bytes, &load_before.write_bytes);
        Ok(HotPhase {
            seconds,
            reads,
            hot_writes: hot,
            other_writes: other,
            ops,
            write_bytes,
        })
    };

    let free = run_phase(1)?;
    let mut details = json!({
        "kind": "hotpartition",
        "layout": target.spec.to_string(),
        "partitions": parts,
        "distribution": dist.to_string(),
        "read_fraction": cli.read_fraction,
        "hot_partition": predicted,
        "unlimited": free.json(predicted),
    });
    let shares = free.shares();
    let max = shares.iter().copied().fold(0.0, f64::max);
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    let mut human = vec![
        format!(
            "hotpartition on {} ({dist}): max share {:.1}% (partition {}), mean {:.2}%, \
             max/mean {:.2}",
            target.spec,
            max * 100.0,
            argmax(&free.ops).map_or("-".to_string(), |p| p.to_string()),
            mean * 100.0,
            if mean > 0.0 { max / mean } else { 0.0 }
        ),
        format!(
            "  shares %: {}",
            shares
                .iter()
                .map(|x| format!("{:.1}", x * 100.0))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        format!(
            "  unlimited: hot p{predicted} {:.0} writes/s (p99 {:.0} us), others {:.0} writes/s \
             (p99 {:.0} us)",
            free.hot_writes.count() as f64 / free.seconds,
            free.hot_writes.quantile_us(0.99),
            free.other_writes.count() as f64 / free.seconds,
            free.other_writes.quantile_us(0.99),
        ),
    ];
    if let Some(mb) = cli.hot_write_limit_mb {
        let limit = (mb * (1 << 20) as f64) as u64;
        db.set_partition_write_limit(predicted, Some(limit))?;
        let limited = run_phase(2);
        db.set_partition_write_limit(predicted, None)?;
        let limited = limited?;
        details["limited"] = limited.json(predicted);
        details["limit_mib_per_sec"] = json!(mb);
        human.push(format!(
            "  limited to {mb} MiB/s: hot p{predicted} {:.0} writes/s ({:.2} MiB/s, p99 {:.0} \
             us), others {:.0} writes/s (p99 {:.0} us)",
            limited.hot_writes.count() as f64 / limited.seconds,
            limited.write_bytes[predicted as usize] as f64 / limited.seconds / (1 << 20) as f64,
            limited.hot_writes.quantile_us(0.99),
            limited.other_writes.count() as f64 / limited.seconds,
            limited.other_writes.quantile_us(0.99),
        ));
    }
    // The row's own figures are the unlimited phase's.
    let mut latency = Latency::new();
    latency.merge(&free.reads);
    latency.merge(&free.hot_writes);
    latency.merge(&free.other_writes);
    Ok(Done {
        m: Measured {
            ops: latency.count(),
            seconds: free.seconds,
            latency,
            found: None,
            background_writes: None,
        },
        scenario: Some(details),
        human,
        failure: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no operations counted, no partition is named the hottest (the last one was,
    /// as `hottest_measured`); with ties, the first of them is.
    #[test]
    fn no_partition_is_the_hottest_without_traffic() {
        assert_eq!(argmax(&[0, 0, 0, 0]), None);
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[0, 5, 1, 5]), Some(1));
        let idle = HotPhase {
            seconds: 1.0,
            reads: Latency::new(),
            hot_writes: Latency::new(),
            other_writes: Latency::new(),
            ops: vec![0; 4],
            write_bytes: vec![0; 4],
        };
        let j = idle.json(0);
        assert!(j["hottest_measured"].is_null(), "{j}");
        assert_eq!(j["max_over_mean"], 0.0);
    }
}
