//! `--engines sluice,fjall,...`: the same workloads on each engine, each in a child process
//! of its own (this binary, re-executed with `--engine E --json --dir DIR/E`) so peak RSS
//! and I/O counters belong to one engine alone; then a comparison table with Sluice ÷ the
//! best peer for every figure. `--engine-exe ENGINE=PATH` runs that engine's child from
//! another build instead (one built for that engine alone): a process of a binary that
//! links RocksDB starts ~10 MB larger whatever engine it runs, and the "RSS MB at start"
//! row shows what each process started with. `--rounds N` runs every engine N times,
//! taking turns, and compares the medians of each figure.
//!
//! redb is left out of the best-peer choice for write amplification: its commits (with
//! `Durability::None`, the no-fsync setting; redb has no WAL) reach the disk only with a
//! durable commit at close, so a workload's own write figures show almost nothing.
//!
//! Ratios: for ops/s higher is better, so Sluice ÷ best peer above 1 means Sluice is ahead;
//! for latencies, write amplification, disk size and RSS lower is better, so below 1 means
//! Sluice is ahead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::engine::EngineKind;
use crate::workloads::Workload;
use crate::{BenchResult, Cli};

/// Marks the parent directory of an `--engines` run.
const ENGINES_MARKER: &str = "SLUICE_STRESS_ENGINES";

/// This run's arguments without those the parent sets for each child.
fn child_args(dir: &Path, engine: EngineKind) -> Vec<OsString> {
    child_args_from(std::env::args_os().skip(1), dir, engine)
}

fn child_args_from(
    mut args: impl Iterator<Item = OsString>,
    dir: &Path,
    engine: EngineKind,
) -> Vec<OsString> {
    let mut out = Vec::new();
    while let Some(a) = args.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "--engines" | "--dir" | "--engine" | "--engine-exe" | "--rounds" => {
                args.next();
            }
            "--json" => {}
            _ if s.starts_with("--engines=")
                || s.starts_with("--dir=")
                || s.starts_with("--engine=")
                || s.starts_with("--engine-exe=")
                || s.starts_with("--rounds=") => {}
            _ => out.push(a),
        }
    }
    // Equal durability: Sluice hands every commit group to the OS, as the peers do with
    // every write (see `--wal-buffer-kb`), unless the run says otherwise.
    if engine == EngineKind::Sluice
        && !out
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--wal-buffer-kb"))
    {
        out.push("--wal-buffer-kb".into());
        out.push("0".into());
    }
    out.push("--engine".into());
    out.push(engine.name().into());
    out.push("--dir".into());
    out.push(dir.join(engine.name()).into_os_string());
    out.push("--json".into());
    out
}

fn prepare_parent(dir: &Path) -> BenchResult<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", dir.display()).into()),
        Ok(mut entries) => {
            if !dir.join(ENGINES_MARKER).is_file() && entries.next().is_some() {
                return Err(format!(
                    "{} is not empty and was not created by `sluice-stress --engines`; refusing \
                     to use it",
                    dir.display()
                )
                .into());
            }
            std::fs::remove_dir_all(dir).map_err(|e| format!("deleting {}: {e}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(ENGINES_MARKER),
        "one database per engine, created by sluice-stress --engines\n",
    )?;
    Ok(())
}

/// `ENGINE=PATH` of `--engine-exe`: an engine and an executable file that exists.
pub fn parse_engine_exe(s: &str) -> Result<(EngineKind, PathBuf), String> {
    let (engine, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ENGINE=PATH, got {s:?}"))?;
    let engine = <EngineKind as clap::ValueEnum>::from_str(engine, true)
        .map_err(|_| format!("unknown engine {engine:?} in {s:?}"))?;
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!("{}: no such executable", path.display()));
    }
    Ok((engine, path))
}

/// One figure of the comparison: how to read it from a report and which way is better.
struct Figure {
    label: &'static str,
    key: &'static str,
    higher_is_better: bool,
    scale: f64,
}

const FIGURES: &[Figure] = &[
    Figure {
        label: "ops/s",
        key: "ops_per_sec",
        higher_is_better: true,
        scale: 1.0,
    },
    Figure {
        label: "p50 us",
        key: "p50_us",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "p99 us",
        key: "p99_us",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "p99.9 us",
        key: "p999_us",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "max us",
        key: "max_us",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "WA at end (engine)",
        key: "workload_write_amp",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "WA at end (OS I/O)",
        key: "os_write_amp",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "WA settled (engine)",
        key: "settled_write_amp",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "WA settled (OS I/O)",
        key: "settled_os_write_amp",
        higher_is_better: false,
        scale: 1.0,
    },
    // What the OS figures leave out: written to files deleted before writeback (RocksDB's
    // unsynced rotated WALs; see `report::os_write_bytes`).
    Figure {
        label: "MB never written back",
        key: "settled_os_cancelled_bytes",
        higher_is_better: false,
        scale: 1e-6,
    },
    Figure {
        label: "settle s",
        key: "settle_secs",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "stall ms",
        key: "stall_ms",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "ms in ops >= 1 ms",
        key: "slow_ms",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "disk MB",
        key: "disk_bytes",
        higher_is_better: false,
        scale: 1.0 / (1 << 20) as f64,
    },
    Figure {
        label: "CPU s (workload)",
        key: "cpu_secs",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "CPU s settled",
        key: "settled_cpu_secs",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "CPU us/op settled",
        key: "cpu_us_per_op",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "RSS MB at start",
        key: "start_rss_mb",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "peak RSS MB (chain)",
        key: "peak_rss_mb",
        higher_is_better: false,
        scale: 1.0,
    },
    Figure {
        label: "peak RSS MB (workload)",
        key: "workload_peak_rss_mb",
        higher_is_better: false,
        scale: 1.0,
    },
];

pub fn run_engines(cli: &Cli, engines: &[EngineKind]) -> BenchResult<()> {
    if engines.is_empty() {
        return Err("--engines needs at least one engine".into());
    }
    if engines.iter().any(|&e| e != EngineKind::Sluice) {
        crate::refuse_sluice_only_settings(cli)?;
    }
    prepare_parent(&cli.dir)?;
    // Per engine, each round's report lines.
    let mut runs: Vec<(EngineKind, Vec<Vec<Value>>)> =
        engines.iter().map(|&e| (e, Vec::new())).collect();
    for round in 0..cli.rounds {
        for (e, lines) in runs.iter_mut() {
            if cli.rounds > 1 {
                eprintln!(
                    "sluice-stress: --engines: round {} of {}",
                    round + 1,
                    cli.rounds
                );
            }
            lines.push(run_child(cli, *e)?);
        }
    }
    let results: Vec<(EngineKind, Vec<Value>)> = runs
        .iter()
        .map(|(e, rounds)| (*e, median_lines(rounds)))
        .collect();
    for (i, workload) in cli.workloads.iter().enumerate() {
        let rows: Vec<(EngineKind, &Value)> = results
            .iter()
            .filter_map(|(e, lines)| lines.get(i).map(|l| (*e, l)))
            .collect();
        let mut cmp = comparison(*workload, &rows);
        let by_round = ops_ratio_by_round(*workload, &runs, i);
        if cli.rounds > 1 {
            cmp["comparison"]["ops_per_sec"]["sluice_over_best_peer_by_round"] = json!(by_round);
        }
        if cli.json {
            println!("{cmp}");
        } else {
            if cli.rounds > 1 {
                println!("(medians of {} rounds)", cli.rounds);
            }
            print_table(workload.name(), &rows, &cmp);
            if cli.rounds > 1 && by_round.iter().any(Option::is_some) {
                let each: Vec<String> = by_round
                    .iter()
                    .map(|r| r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}")))
                    .collect();
                println!(
                    "  ops/s sluice/best peer, round by round: {}",
                    each.join(" ")
                );
                println!();
            }
        }
    }
    Ok(())
}

/// Sluice's ops/s over the best peer's in each round alone, for workload `i`: a ratio of
/// runs made minutes apart, where the medians' ratio mixes rounds (the machine's speed
/// drifts between them). `None` for a round without both figures.
fn ops_ratio_by_round(
    workload: Workload,
    runs: &[(EngineKind, Vec<Vec<Value>>)],
    i: usize,
) -> Vec<Option<f64>> {
    let rounds = runs.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    (0..rounds)
        .map(|round| {
            let rows: Vec<(EngineKind, &Value)> = runs
                .iter()
                .filter_map(|(e, r)| r.get(round)?.get(i).map(|l| (*e, l)))
                .collect();
            comparison(workload, &rows)["comparison"]["ops_per_sec"]["sluice_over_best_peer"]
                .as_f64()
        })
        .collect()
}

/// Per workload, the first round's report with every compared figure replaced by its
/// median over the rounds (`null` where a round lacks it).
fn median_lines(rounds: &[Vec<Value>]) -> Vec<Value> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let mut out = line.clone();
            for f in FIGURES {
                let mut vs: Vec<f64> = Vec::new();
                for r in rounds {
                    match r.get(i).and_then(|l| l.get(f.key)).and_then(Value::as_f64) {
                        Some(v) => vs.push(v),
                        None => {
                            vs.clear();
                            break;
                        }
                    }
                }
                if let Some(obj) = out.as_object_mut() {
                    obj.insert(f.key.into(), json!(median(&mut vs)));
                }
            }
            out
        })
        .collect()
}

/// The median of `vs` (the mean of the middle two for an even count), `None` if empty.
fn median(vs: &mut [f64]) -> Option<f64> {
    vs.sort_by(f64::total_cmp);
    let n = vs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(vs[n / 2]),
        _ => Some((vs[n / 2 - 1] + vs[n / 2]) / 2.0),
    }
}

/// Runs the workloads on `e` in a child process; its report lines (printed too with
/// `--json`).
fn run_child(cli: &Cli, e: EngineKind) -> BenchResult<Vec<Value>> {
    let this = std::env::current_exe()?;
    let exe = cli
        .engine_exe
        .iter()
        .rev()
        .find(|(k, _)| *k == e)
        .map_or(&this, |(_, p)| p);
    eprintln!(
        "sluice-stress: --engines: running {} in a child process of {}",
        e.name(),
        exe.display()
    );
    let out = Command::new(exe)
        .args(child_args(&cli.dir, e))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("the {} run failed ({})", e.name(), out.status).into());
    }
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            format!(
                "the {} run printed a line that is not JSON: {err}",
                e.name()
            )
        })?;
    if cli.json {
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(lines)
}

/// `{"workload", "comparison": {figure: {engine: value, "best_peer", "sluice_over_best_peer"}}}`.
fn comparison(workload: Workload, rows: &[(EngineKind, &Value)]) -> Value {
    let mut figs = serde_json::Map::new();
    for f in FIGURES {
        let mut m = serde_json::Map::new();
        let mut sluice = None;
        let mut best: Option<(EngineKind, f64)> = None;
        for (e, r) in rows {
            let v = r.get(f.key).and_then(Value::as_f64).map(|v| v * f.scale);
            m.insert(e.name().into(), json!(v));
            let Some(v) = v else { continue };
            if *e == EngineKind::Redb && (f.key.ends_with("write_amp") || workload.is_write()) {
                // redb commits with Durability::None write nothing until a durable commit
                // (at close): its write figures, and every figure of a write workload, are
                // not comparable with engines that hand each write to the OS. Shown, never
                // the best peer.
                continue;
            }
            if *e == EngineKind::Sluice {
                sluice = Some(v);
            } else if best.is_none_or(|(_, b)| if f.higher_is_better { v > b } else { v < b }) {
                best = Some((*e, v));
            }
        }
        m.insert("best_peer".into(), json!(best.map(|b| b.0.name())));
        m.insert(
            "sluice_over_best_peer".into(),
            json!(match (sluice, best) {
                (Some(s), Some((_, b))) if b > 0.0 => Some(s / b),
                _ => None,
            }),
        );
        m.insert("higher_is_better".into(), json!(f.higher_is_better));
        figs.insert(f.key.into(), serde_json::Value::Object(m));
    }
    json!({"workload": workload.name(), "comparison": figs})
}

fn print_table(workload: &str, rows: &[(EngineKind, &Value)], cmp: &Value) {
    let mut header = format!("{workload:<22}");
    for (e, _) in rows {
        header.push_str(&format!(" {:>12}", e.name()));
    }
    header.push_str(&format!(" {:>16}", "sluice/best peer"));
    println!("{header}");
    for f in FIGURES {
        let mut line = format!("  {:<20}", f.label);
        for (e, _) in rows {
            let v = cmp["comparison"][f.key][e.name()].as_f64();
            line.push_str(&format!(
                " {:>12}",
                v.map_or_else(
                    || "-".to_string(),
                    |v| if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    }
                )
            ));
        }
        let r = cmp["comparison"][f.key]["sluice_over_best_peer"].as_f64();
        let best = cmp["comparison"][f.key]["best_peer"]
            .as_str()
            .unwrap_or("-");
        line.push_str(&format!(
            " {:>16}",
            r.map_or_else(|| "-".to_string(), |r| format!("{r:.2} ({best})"))
        ));
        println!("{line}");
    }
    if rows.iter().any(|(e, _)| *e == EngineKind::Redb) {
        println!("  (redb writes reach the disk at its durable commit on close: its WA is not a best peer)");
    }
    println!();
}

#[cfg(test)]
mod child_args_tests {
    use super::*;

    fn args(v: &[&str], engine: EngineKind) -> Vec<String> {
        child_args_from(v.iter().map(OsString::from), Path::new("/d"), engine)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    /// In a comparison Sluice hands every commit group to the OS, as the peers hand every
    /// write (it kept up to 64 KiB in the process while they did not); a run that sets the
    /// buffer keeps its setting, and peers get no Sluice flag added.
    #[test]
    fn sluice_children_get_the_peers_durability_unless_told_otherwise() {
        let run = [
            "fillrandom",
            "--num",
            "10",
            "--engines",
            "sluice,fjall",
            "--dir",
            "/x",
        ];
        let s = args(&run, EngineKind::Sluice);
        assert!(s.windows(2).any(|w| w == ["--wal-buffer-kb", "0"]), "{s:?}");
        assert!(!s.iter().any(|a| a.starts_with("--engines")), "{s:?}");
        // The parent's choice of executables is not the child's business.
        let mut exes = run.to_vec();
        exes.extend(["--engine-exe", "sluice=/a", "--engine-exe=fjall=/b"]);
        let s = args(&exes, EngineKind::Sluice);
        assert!(
            !s.iter()
                .any(|a| a.starts_with("--engine-exe") || a.contains('=')),
            "{s:?}"
        );
        let f = args(&run, EngineKind::Fjall);
        assert!(!f.iter().any(|a| a.starts_with("--wal-buffer-kb")), "{f:?}");
        let mut own = run.to_vec();
        own.extend(["--wal-buffer-kb", "64"]);
        let s = args(&own, EngineKind::Sluice);
        assert_eq!(
            s.iter()
                .filter(|a| a.starts_with("--wal-buffer-kb"))
                .count(),
            1,
            "{s:?}"
        );
        assert!(
            s.windows(2).any(|w| w == ["--wal-buffer-kb", "64"]),
            "{s:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each compared figure is the median over the rounds (the mean of the middle two for
    /// an even count); one a round lacks is null; the rest of the line is the first
    /// round's.
    #[test]
    fn rounds_compare_medians() {
        let line = |ops: f64, stall: Option<f64>| json!({"workload": "fillrandom", "ops_per_sec": ops, "stall_ms": stall, "note": ops});
        let rounds = vec![
            vec![line(10.0, Some(1.0))],
            vec![line(30.0, None)],
            vec![line(20.0, Some(3.0))],
        ];
        let m = median_lines(&rounds);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["ops_per_sec"], 20.0);
        assert!(m[0]["stall_ms"].is_null(), "{}", m[0]);
        assert_eq!(m[0]["note"], 10.0);
        let m = median_lines(&rounds[..2]);
        assert_eq!(m[0]["ops_per_sec"], 20.0);
        assert!(median_lines(&[]).is_empty());
    }

    /// Each round's ratio sets that round's figures against each other, and follows the
    /// best-peer rule (redb is no write peer).
    #[test]
    fn ops_ratios_round_by_round() {
        let line = |ops: f64| vec![json!({"workload": "fillrandom", "ops_per_sec": ops})];
        let runs = vec![
            (
                EngineKind::Sluice,
                vec![line(110.0), line(90.0), line(120.0)],
            ),
            (
                EngineKind::Fjall,
                vec![line(100.0), line(100.0), line(80.0)],
            ),
            (EngineKind::Redb, vec![line(200.0), line(50.0), line(300.0)]),
        ];
        let r = ops_ratio_by_round(Workload::FillRandom, &runs, 0);
        assert_eq!(r, vec![Some(1.1), Some(0.9), Some(1.5)]);
        let r = ops_ratio_by_round(Workload::ReadRandom, &runs, 0);
        assert_eq!(r, vec![Some(110.0 / 200.0), Some(0.9), Some(0.4)]);
        // A round one engine lacks has no ratio; a workload past the lines, none at all.
        let short = vec![runs[0].clone(), (EngineKind::Fjall, vec![line(100.0)])];
        assert_eq!(
            ops_ratio_by_round(Workload::FillRandom, &short, 0),
            vec![Some(1.1), None, None]
        );
        assert_eq!(
            ops_ratio_by_round(Workload::FillRandom, &runs, 1),
            vec![None, None, None]
        );
    }

    #[test]
    fn best_peer_depends_on_direction() {
        let s = json!({"ops_per_sec": 100.0, "p99_us": 10.0, "disk_bytes": 1048576});
        let a = json!({"ops_per_sec": 50.0, "p99_us": 5.0, "disk_bytes": 2097152});
        let b = json!({"ops_per_sec": 80.0, "p99_us": 20.0, "disk_bytes": null});
        let c = comparison(
            Workload::ReadRandom,
            &[
                (EngineKind::Sluice, &s),
                (EngineKind::Fjall, &a),
                (EngineKind::Redb, &b),
            ],
        );
        let f = &c["comparison"];
        assert_eq!(f["ops_per_sec"]["best_peer"], "redb");
        assert_eq!(f["ops_per_sec"]["sluice_over_best_peer"], 1.25);
        assert_eq!(f["p99_us"]["best_peer"], "fjall");
        assert_eq!(f["p99_us"]["sluice_over_best_peer"], 2.0);
        assert_eq!(f["disk_bytes"]["sluice"], 1.0);
        assert_eq!(f["disk_bytes"]["best_peer"], "fjall");
        assert!(f["os_write_amp"]["sluice_over_best_peer"].is_null());
    }

    /// redb commits without durability: shown, but never the best peer of a write
    /// workload (it was, for ops/s, against engines that hand every write to the OS).
    #[test]
    fn redb_is_never_the_best_peer_of_a_write_workload() {
        let s = json!({"ops_per_sec": 100.0});
        let a = json!({"ops_per_sec": 50.0});
        let b = json!({"ops_per_sec": 900.0});
        let rows = [
            (EngineKind::Sluice, &s),
            (EngineKind::Fjall, &a),
            (EngineKind::Redb, &b),
        ];
        let f = &comparison(Workload::FillRandom, &rows)["comparison"]["ops_per_sec"];
        assert_eq!(f["best_peer"], "fjall");
        assert_eq!(f["redb"], 900.0);
        let f = &comparison(Workload::ReadRandom, &rows)["comparison"]["ops_per_sec"];
        assert_eq!(f["best_peer"], "redb");
    }
}
