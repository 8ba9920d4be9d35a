//! Quick end-to-end check of the `sluice-stress` binary, small enough for every CI run: all
//! workloads on a tiny database, `--json` output parsed back, and bad flags rejected cleanly.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-stress");

const ALL: &str =
    "fillseq,fillrandom,overwrite,readrandom,readmissing,seekrandom,readwhilewriting,batchtransfer,txntransfer";

fn stress(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn sluice-stress")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_workload_reports_one_json_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let out = stress(&[
        ALL,
        "--num",
        "2000",
        "--dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    // The configuration line belongs on stderr so stdout is pure JSON.
    assert!(
        text(&out.stderr).contains("workloads="),
        "{}",
        text(&out.stderr)
    );

    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let expected: Vec<&str> = ALL.split(',').collect();
    assert_eq!(lines.len(), expected.len(), "stdout:\n{stdout}");
    for (line, workload) in lines.iter().zip(&expected) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in [
            "workload",
            "num",
            "threads",
            "ops",
            "seconds",
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "write_amp",
            "disk_bytes",
            "peak_rss_mb",
            "stall_ms",
            "slow_ms",
            "cpu_secs",
            "settled_cpu_secs",
            "cpu_us_per_op",
            "key_size",
            "value_size",
            "partition",
            "sync",
        ] {
            assert!(
                v.get(field).is_some(),
                "{workload}: no field {field:?} in {line}"
            );
        }
        assert_eq!(v["workload"], *workload, "{line}");
        assert_eq!(v["num"], 2000, "{line}");
        assert!(v["ops"].as_u64().unwrap() > 0, "{line}");
        assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{line}");
        assert!(
            v["p50_us"].as_f64().unwrap() <= v["p999_us"].as_f64().unwrap(),
            "{line}"
        );
        assert!(v["disk_bytes"].as_u64().unwrap() > 0, "{line}");
        // Time in operations of 1 ms or more: at most the threads' whole time.
        let slow = v["slow_ms"].as_f64().unwrap();
        let threads = v["threads"].as_f64().unwrap();
        assert!(
            (0.0..=v["seconds"].as_f64().unwrap() * 1000.0 * threads.max(2.0) + 1.0)
                .contains(&slow),
            "{line}"
        );
        // CPU: the process used some, and the settle only adds to the workload's.
        let cpu = v["cpu_secs"].as_f64().unwrap();
        let settled = v["settled_cpu_secs"].as_f64().unwrap();
        assert!(cpu >= 0.0 && settled >= cpu, "{line}");
        // Over every operation, readwhilewriting's background writes included.
        let per_op = v["cpu_us_per_op"].as_f64().unwrap();
        let ops = v["ops"].as_f64().unwrap() + v["background_writes"].as_f64().unwrap_or(0.0);
        assert!(
            (per_op - settled * 1e6 / ops).abs() < 1e-6 * per_op.max(1.0),
            "{line}"
        );
        assert_eq!(v["key_size"], 16, "{line}");
        assert_eq!(v["value_size"], 100, "{line}");
        assert_eq!(v["partition"], "range", "{line}");
        assert_eq!(v["sync"], false, "{line}");
    }
    // Every key written by the fills is found, and none of the missing ones are.
    let found =
        |i: usize| serde_json::from_str::<serde_json::Value>(lines[i]).unwrap()["found"].clone();
    assert_eq!(found(3), 2000, "readrandom");
    assert_eq!(found(4), 0, "readmissing");
    assert_eq!(
        found(8),
        2000,
        "txntransfer: both accounts existed every time"
    );
}

/// Synced writers on a modelled slow device (`--fsync-delay-us`) with a settable block
/// size: the settings line names both, and the report counts the WAL syncs the writes
/// shared (at least one, and no more than one per write).
#[test]
fn synced_writes_report_their_wal_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let out = stress(&[
        "fillrandom",
        "--sync",
        "--num",
        "400",
        "--threads",
        "4",
        "--fsync-delay-us",
        "500",
        "--block-size",
        "1024",
        "--dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fsync_delay_us=500"), "{stderr}");
    assert!(stderr.contains("block_size=1024"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let syncs = v["wal_syncs"].as_u64().expect("wal_syncs");
    assert!((1..=400).contains(&syncs), "{v}");
    assert_eq!(v["sync"], true);
}

#[test]
fn bad_flags_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let dir = dir.to_str().unwrap();
    for args in [
        vec!["nosuchworkload", "--dir", dir],
        vec!["fillseq", "--dir", dir, "--num", "abc"],
        vec!["fillseq", "--dir", dir, "--num", "0"],
        vec!["fillseq", "--dir", dir, "--partition", "hash:x"],
        vec!["fillseq", "--dir", dir, "--compression", "zstd:99"],
        vec![
            "fillseq",
            "--dir",
            dir,
            "--key-size",
            "3",
            "--num",
            "100000",
        ],
        vec!["fillseq", "--dir", dir, "--use-existing-db"],
        vec!["fillseq"],
        vec!["fillseq", "--dir", dir, "--block-size", "10"],
        vec!["fillseq", "--dir", dir, "--fsync-delay-us", "0"],
    ] {
        let out = stress(&args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert!(
            stderr.contains("error"),
            "{args:?} gave no error:\n{stderr}"
        );
    }
}

#[test]
fn refuses_to_delete_a_directory_that_is_not_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    let precious = tmp.path().join("notes.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let out = stress(&[
        "fillseq",
        "--num",
        "10",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(precious.exists());
}
