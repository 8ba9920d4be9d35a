//! The `sluice-stress` scenarios at toy sizes, small enough for every CI run: each one
//! reports one JSON line with its figures under `scenario`, writes the files it was asked
//! for, and passes its own sanity checks (migrations complete, no operation fails, shares
//! sum to one, timelines have rows).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-stress");

/// A range layout of four partitions over keys 0..8000, so the data spans several SSTables
/// and a migration moves it file by file.
const RANGE4: &str = "range:0000000000002000,0000000000004000,0000000000006000";

fn stress(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn sluice-stress")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and returns the JSON lines, failing with stderr on a non-zero exit.
fn json_lines(args: &[&str]) -> Vec<Value> {
    let out = stress(args);
    assert!(
        out.status.success(),
        "{args:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_shares(v: &Value, n: usize, what: &str) {
    let shares: Vec<f64> = v["shares"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no shares in {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(shares.len(), n, "{what}: {v}");
    let sum: f64 = shares.iter().sum();
    assert!((sum - 1.0).abs() < 1e-9, "{what}: shares sum to {sum}");
    assert!(
        v["max_over_mean"].as_f64().unwrap() >= 1.0 - 1e-9,
        "{what}: {v}"
    );
}

fn timeline_rows(path: &Path) -> Vec<Value> {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<Vec<Value>>(&s).unwrap()
}

/// A migration scenario over `RANGE4` at `mb_per_sec`: its `scenario` object, after the checks
/// every one of them must pass (completed, no failed operation, no key lost).
fn range4_scenario(kind: &str, dir: &Path, mb_per_sec: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        kind,
        "--num",
        "8000",
        "--dir",
        p(dir),
        "--partition",
        RANGE4,
        "--stable-secs",
        "1",
        "--post-secs",
        "1",
        "--migration-mb-per-sec",
        mb_per_sec,
        "--json",
    ];
    args.extend_from_slice(extra);
    let s = json_lines(&args).swap_remove(0)["scenario"].take();
    assert_eq!(s["completed"], true, "{s}");
    assert_eq!(s["failed_ops"], 0);
    assert_eq!(s["keys_after"], 8000);
    s
}

fn events(s: &Value) -> Vec<&str> {
    s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        "{what}: {a} != {b}"
    );
}

#[test]
fn plain_workloads_report_engine_and_distribution() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let lines = json_lines(&[
        "fillrandom,readrandom,overwrite",
        "--num",
        "3000",
        "--dir",
        p(&dir),
        "--distribution",
        "zipfian:1.1",
        "--json",
    ]);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["engine"], "sluice", "{l}");
        assert_eq!(l["distribution"], "zipfian:1.1", "{l}");
        assert!(l["scenario"].is_null(), "{l}");
        assert!(l.get("os_write_bytes").is_some() && l.get("os_write_amp").is_some());
    }
    // Skewed reads still only pick existing keys.
    assert_eq!(lines[1]["found"], 3000);
    let bad = stress(&["readrandom", "--dir", p(&dir), "--distribution", "zipf"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("error"));
}

#[test]
fn compactionstress_reports_stalls_and_a_timeline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let timeline = tmp.path().join("cs.json");
    let lines = json_lines(&[
        "compactionstress",
        "--num",
        "30000",
        "--keyspace",
        "2000",
        "--dir",
        p(&dir),
        "--timeline",
        p(&timeline),
        "--json",
    ]);
    let l = &lines[0];
    assert_eq!(l["workload"], "compactionstress");
    assert_eq!(l["ops"], 30000);
    let s = &l["scenario"];
    for f in [
        "stalls",
        "stall_ms",
        "slowdowns",
        "slowdown_ms",
        "write_amp",
        "max_pending_compaction_bytes",
        "max_l0_files",
        "flushes",
        "timeline_rows",
    ] {
        assert!(s.get(f).is_some(), "no {f} in {s}");
    }
    assert_eq!(s["keyspace"], 2000);
    assert_eq!(s["memtable_bytes"], 1 << 20, "1 MiB memtable by default");
    assert!(s["flushes"].as_u64().unwrap() >= 2, "{s}");
    assert!(s["write_amp"].as_f64().unwrap() > 1.0, "{s}");
    let rows = timeline_rows(&timeline);
    assert!(!rows.is_empty());
    assert_eq!(rows.len() as u64, s["timeline_rows"].as_u64().unwrap());
    let written: f64 = rows
        .iter()
        .map(|r| r["writes_per_sec"].as_f64().unwrap())
        .sum();
    assert!(written > 0.0);
    for f in ["pending_compaction_bytes", "l0_files_max", "stall_ms"] {
        assert!(rows[0].get(f).is_some(), "{f}");
    }
}

#[test]
fn hotpartition_shares_sum_to_one_and_the_limit_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let lines = json_lines(&[
        "fillrandom,hotpartition",
        "--num",
        "4000",
        "--dir",
        p(&dir),
        "--partition",
        "hash:8",
        "--threads",
        "2",
        "--hot-write-limit-mb",
        "0.05",
        "--json",
    ]);
    let s = &lines[1]["scenario"];
    assert_eq!(lines[1]["distribution"], "zipfian:0.99");
    assert_eq!(s["partitions"], 8);
    assert_shares(&s["unlimited"], 8, "unlimited");
    assert_shares(&s["limited"], 8, "limited");
    // A zipfian load is skewed: the hottest partition is well above the mean.
    assert!(
        s["unlimited"]["max_over_mean"].as_f64().unwrap() > 1.2,
        "{s}"
    );
    // The limit holds (1.25: the limiter lets the write that crosses it through).
    let limited = f(&s["limited"]["hot_write_mib_per_sec"]);
    assert!(
        limited <= 0.5 * 1.25,
        "limited hot partition wrote {limited} MiB/s: {s}"
    );
    // Without several partitions the scenario refuses clearly.
    let out = stress(&[
        "hotpartition",
        "--num",
        "100",
        "--dir",
        p(&tmp.path().join("r")),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--partition hash"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn migration_with_control_chart_and_fresh_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let prefix = tmp.path().join("mig");
    let chart = tmp.path().join("mig.svg");
    let lines = json_lines(&[
        "migration",
        "--num",
        "5000",
        "--dir",
        p(&dir),
        "--stable-secs",
        "1",
        "--post-secs",
        "1",
        "--control",
        "--compare-fresh",
        "--timeline",
        p(&prefix),
        "--chart",
        p(&chart),
        "--json",
    ]);
    let l = &lines[0];
    assert_eq!(l["workload"], "migration");
    assert_eq!(
        l["partition"], "hash:16:0",
        "reports the layout it ended on"
    );
    let s = &l["scenario"];
    assert_eq!(s["completed"], true, "{s}");
    assert_eq!(s["failed_ops"], 0);
    assert_eq!(s["keys"], 5000);
    assert_eq!(s["keys_after"], 5000);
    for phase in ["stable", "migrating_all", "post"] {
        let ph = &s["phases"][phase];
        assert!(ph["seconds"].as_f64().unwrap() > 0.0, "{phase}: {ph}");
        assert!(ph["reads"].as_u64().unwrap() > 0, "{phase}: {ph}");
        assert!(ph["writes"].as_u64().unwrap() > 0, "{phase}: {ph}");
    }
    // Each ratio is the migrating phase over the phase it names.
    let c = &s["control"];
    for (ratios, base) in [
        (&s["ratios_vs_stable"], &s["phases"]["stable"]),
        (&c["ratios_vs_control"], &c["phases"]["migrating_all"]),
    ] {
        let mig = &s["phases"]["migrating_all"];
        for (r, field) in [
            ("read_p99", "read_p99_us"),
            ("write_p99", "write_p99_us"),
            ("throughput", "ops_per_sec"),
        ] {
            assert_close(f(&ratios[r]), f(&mig[field]) / f(&base[field]), r);
        }
    }
    let b = s["migration"]["bytes_migrated"].as_u64().unwrap();
    assert!(b > 0);
    let wa = &c["migration_write_amp"];
    assert_eq!(wa["b"], b);
    let full = &wa["to_full_compaction"];
    assert_close(
        f(&wa["raw"]),
        (f(&full["d_migration"]) - f(&full["d_control"])) / b as f64,
        "raw",
    );
    let (u_m, u_c) = (f(&wa["u_migration"]), f(&wa["u_control"]));
    let scaled_control =
        f(&wa["as_run"]["d_control"]) * u_m / u_c + f(&full["compaction_bytes_control"]);
    assert_close(
        f(&wa["normalized"]),
        (f(&full["d_migration"]) - scaled_control) / b as f64,
        "normalized",
    );
    assert_eq!(s["control"]["failed_ops"], 0);
    let fresh = &s["compare_fresh"];
    assert_eq!(fresh["keys_copied"], 5000);
    assert_eq!(fresh["migrated"]["readrandom"]["found"], 5000);
    assert_eq!(fresh["fresh"]["readrandom"]["found"], 5000);
    // Timelines: the run's and the control run's, CSV and JSON, one row per second.
    let rows = timeline_rows(&tmp.path().join("mig.json"));
    let phases: Vec<&str> = rows.iter().map(|r| r["phase"].as_str().unwrap()).collect();
    assert_eq!(phases.first(), Some(&"stable"));
    assert!(phases.contains(&"migrating"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"post"));
    assert!(rows.iter().any(|r| r["fraction_migrated"].is_number()));
    let last = rows.last().unwrap();
    assert_eq!(last["migration_bytes_left"], 0);
    assert_eq!(last["fraction_migrated"], 1.0);
    let csv = std::fs::read_to_string(tmp.path().join("mig.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1);
    assert!(csv.starts_with("second,elapsed_s,phase,reads_per_sec"));
    let control = timeline_rows(&tmp.path().join("mig-control.json"));
    assert_eq!(control.len(), rows.len(), "same number of seconds");
    assert!(control.iter().any(|r| r["phase"] == "control"));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("migration complete"));
    // Scratch databases are cleaned up.
    assert!(!tmp.path().join("db-control").exists());
    assert!(!tmp.path().join("db-fresh").exists());
}

#[test]
fn biasfix_retargets_and_reports_both_layouts_shares() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let s = range4_scenario("biasfix", &dir, "0.25", &[]);
    let events = events(&s);
    assert!(
        events.iter().any(|e| e.starts_with("retarget v3")),
        "{events:?}"
    );
    let at = f(&s["retarget_at_fraction"]);
    assert!(
        (0.6..1.0).contains(&at),
        "v1 must still hold data at the retarget: {at}"
    );
    assert!(f(&s["phases"]["three-live"]["seconds"]) > 0.0, "{s}");
    for k in [
        "v2_data_shares",
        "v2_traffic_shares",
        "v3_data_shares",
        "v3_traffic_shares",
    ] {
        assert_shares(&s[k], 16, k);
    }
    // The biased layout puts the keys on a few partitions; the corrected one spreads them.
    assert!(
        s["v2_data_shares"]["empty_partitions"].as_u64().unwrap() >= 8,
        "{s}"
    );
    assert!(
        s["v3_data_shares"]["max_over_mean"].as_f64().unwrap()
            < s["v2_data_shares"]["max_over_mean"].as_f64().unwrap()
    );
}

#[test]
fn rollback_goes_back_and_forward_without_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    // Two seconds rolled back at 0.5 MB/s: time for the pacer (which banks at most a
    // second of its rate) to move v2's ~0.5 MB back, on a loaded machine too.
    let s = range4_scenario("rollback", &dir, "0.5", &["--rollback-secs", "2"]);
    let events = events(&s);
    assert!(
        events.iter().any(|e| e.starts_with("rollback to v1")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("forward to v")),
        "{events:?}"
    );
    assert!(
        s["around_rollback"]["seconds"].as_array().unwrap().len() >= 2,
        "{s}"
    );
    // Rolled back: v2 drained back into v1 before going forward again. (Not v2's share of
    // the data at the two moments: v1's own bytes shrink and grow with its compactions
    // under this overwrite load, and that comparison failed about one run in eight.)
    assert!(
        s["v2_retired_while_rolled_back"] == true || s["v2_drained_back_bytes"].as_u64() > Some(0),
        "{s}"
    );
    assert!(s["phases"]["rolledback"]["seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn migration3_measures_three_live_layouts_against_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let lines = json_lines(&[
        "migration3",
        "--num",
        "8000",
        "--reads",
        "2000",
        "--dir",
        p(&dir),
        "--partition",
        RANGE4,
        "--json",
    ]);
    let l = &lines[0];
    let s = &l["scenario"];
    assert_eq!(s["live_versions_during"], 3, "{s}");
    assert_eq!(s["live_versions_after"], 1, "{s}");
    assert_eq!(s["three_live"]["readrandom"]["found"], 2000);
    assert_eq!(s["single"]["readrandom"]["found"], 2000);
    assert_eq!(s["three_live"]["readmissing"]["found"], 0);
    assert_eq!(
        s["three_live"]["lazy_moves"], 0,
        "lazy moves are off for migration3"
    );
    assert!(s["three_over_single"]["readrandom"]["p50"].is_number());
    assert_eq!(l["found"], 2000);
}

/// `fillseq,readrandom` over 2,000 keys with `--engines sluice` and `extra`, in `dir`: the
/// JSON lines printed.
fn sluice_engines_json(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "fillseq,readrandom",
        "--num",
        "2000",
        "--dir",
        p(dir),
        "--engines",
        "sluice",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_lines(&args)
}

#[test]
fn engines_runs_each_engine_in_a_child_and_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmp");
    let lines = sluice_engines_json(&dir, &[]);
    // The child's two report lines, then one comparison line per workload.
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["engine"], "sluice");
    assert_eq!(lines[2]["workload"], "fillseq");
    let c = &lines[2]["comparison"];
    assert!(c["ops_per_sec"]["sluice"].as_f64().unwrap() > 0.0, "{c}");
    assert!(c["ops_per_sec"]["best_peer"].is_null(), "no peer ran");
    assert!(dir.join("sluice").join("CURRENT").is_file());
    // The RSS the child started with is reported and compared with the rest.
    let start = lines[0]["start_rss_mb"].as_f64().unwrap();
    assert!(
        start > 0.0 && start <= lines[0]["peak_rss_mb"].as_f64().unwrap(),
        "{}",
        lines[0]
    );
    assert_eq!(c["start_rss_mb"]["sluice"].as_f64(), Some(start), "{c}");
}

/// `--rounds 2` runs each engine twice and compares the medians of its figures.
#[test]
fn engines_rounds_compare_medians() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmp");
    let lines = sluice_engines_json(&dir, &["--rounds", "2"]);
    // Two rounds of the child's two report lines, then one comparison line per workload.
    assert_eq!(lines.len(), 6, "{lines:?}");
    for (i, workload) in ["fillseq", "readrandom"].iter().enumerate() {
        let ops = |l: &serde_json::Value| l["ops_per_sec"].as_f64().unwrap();
        let (a, b) = (ops(&lines[i]), ops(&lines[2 + i]));
        let c = &lines[4 + i];
        assert_eq!(c["workload"], *workload);
        let median = c["comparison"]["ops_per_sec"]["sluice"].as_f64().unwrap();
        assert!(
            (median - (a + b) / 2.0).abs() < 1e-6 * median,
            "{a} {b} {median}"
        );
    }
}

/// `--engine-exe` runs an engine's child from another executable: a copy of this one runs
/// the workloads; an executable that is not `sluice-stress` fails the run, with its name.
#[test]
fn engine_exe_runs_that_engines_child_from_the_given_executable() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("other-sluice-stress");
    std::fs::copy(BIN, &copy).unwrap();
    let run = |exe: &str, dir: &str| {
        stress(&[
            "fillseq",
            "--num",
            "500",
            "--dir",
            p(&tmp.path().join(dir)),
            "--engines",
            "sluice",
            "--engine-exe",
            &format!("sluice={exe}"),
            "--json",
        ])
    };
    let out = run(p(&copy), "a");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "running sluice in a child process of {}",
            p(&copy)
        )),
        "{err}"
    );
    assert_eq!(text(&out.stdout).lines().count(), 2, "{err}");
    let out = run("/bin/false", "b");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("the sluice run failed"), "{err}");
    let out = run(p(&tmp.path().join("missing")), "c");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no such executable"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[cfg(not(feature = "fjall"))]
#[test]
fn a_peer_that_is_not_built_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = stress(&[
        "fillseq",
        "--num",
        "10",
        "--dir",
        p(&tmp.path().join("f")),
        "--engine",
        "fjall",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--features"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn scenarios_refuse_peer_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = stress(&[
        "migration",
        "--num",
        "10",
        "--dir",
        p(&tmp.path().join("x")),
        "--engine",
        "redb",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Sluice only") || err.contains("--features"),
        "{err}"
    );
}

/// A comparison with peers refuses settings only Sluice applies: it changed Sluice alone
/// and still printed Sluice ÷ best peer.
#[test]
fn a_comparison_refuses_settings_only_sluice_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cmp");
    for flags in [
        &["--bloom-bits", "20"][..],
        &["--compression", "zstd"],
        &["--partition", "hash:4"],
        &["--block-size", "8192"],
    ] {
        let mut args = vec![
            "fillseq",
            "--num",
            "10",
            "--dir",
            p(&dir),
            "--engines",
            "sluice,rocksdb",
        ];
        args.extend_from_slice(flags);
        let out = stress(&args);
        assert!(!out.status.success(), "{flags:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(flags[0]) && err.contains("like for like"),
            "{flags:?}: {err}"
        );
        assert!(!dir.exists(), "{flags:?}: made the directory");
    }
}
