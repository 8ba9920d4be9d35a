//! The inspection commands run with arguments at random: every read-only subcommand
//! (`info`, `sst dump|props|check`, `manifest`, `wal`, `verify`, `partitions`, `get`,
//! `scan`, `analyze`) with flags and values drawn from what a user might type, right or
//! wrong — numbers past their types, negative ones, bad escapes and hex, invalid specs,
//! paths that do not exist, are files, or lie inside the database directory.
//!
//! The rule: the command never panics or dies of a signal, exits with one of its documented
//! codes (0 ok, 1 not found or other error, 2 usage, 3 corruption or failed check, 4 locked
//! or busy), says why when it fails (an error on stderr, a failed check's report on
//! stdout), and leaves the database directory exactly as it was (the inspection
//! subcommands are read-only).
//!
//! `SLUICE_SEEDS=n` runs n commands (CI: 150), `SLUICE_SEED=n` one.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Each subcommand's arguments and the flags it takes (besides `--json`, `--hex`, `-q`).
const SUBCOMMANDS: &[(&[&str], &[&str])] = &[
    (&["info", "{DIR}"], &["--html", "--all-partitions"]),
    (&["sst", "dump", "{SST}"], &["--limit", "--max-value"]),
    (&["sst", "props", "{SST}"], &[]),
    (&["sst", "check", "{SST}"], &[]),
    (&["manifest", "{DIR}"], &[]),
    (&["wal", "{DIR}"], &["--max-value"]),
    (&["verify", "{DIR}"], &["--deep", "--sample"]),
    (
        &["partitions", "{DIR}"],
        &["--by", "--svg", "--no-chart", "--top"],
    ),
    (&["get", "{DIR}", "acct00000042"], &[]),
    (
        &["scan", "{DIR}"],
        &[
            "--from",
            "--to",
            "--limit",
            "--reverse",
            "--max-value",
            "--keys-only",
        ],
    ),
    (
        &["analyze", "{DIR}", "--spec", "hash:8:3"],
        &[
            "--spec",
            "--sample",
            "--scan",
            "--alpha",
            "--max-over-mean",
            "--top",
        ],
    ),
];

/// Flags, each with the values it may be given (none: a switch).
const FLAGS: &[(&str, &[&str])] = &[
    ("--json", &[]),
    ("--hex", &[]),
    ("-q", &[]),
    ("--deep", &[]),
    ("--reverse", &[]),
    ("--keys-only", &[]),
    ("--scan", &[]),
    ("--no-chart", &[]),
    ("--all-partitions", &[]),
    ("--limit", &["0", "1", "-1", "18446744073709551616", "x"]),
    ("--sample", &["0", "1", "-5", "99999999999999999999", "1e3"]),
    ("--max-value", &["0", "3", "-1", "huge"]),
    ("--top", &["0", "2", "4294967296", "-2"]),
    (
        "--from",
        &[
            "acct00000100",
            "",
            "\\x",
            "\\xzz",
            "zz",
            "\\xff\\x00",
            "ffff",
        ],
    ),
    ("--to", &["acct00000200", "a", "\\q", "0"]),
    (
        "--spec",
        &[
            "hash:0",
            "range:b,a",
            "hash:4",
            "split:9:2/hash:4",
            "nonsense",
            "hash:16:7:3",
            "",
        ],
    ),
    ("--alpha", &["0", "1", "0.5", "-1", "NaN", "inf"]),
    ("--max-over-mean", &["0", "1.5", "-3", "NaN"]),
    ("--by", &["entries", "bytes", "keys"]),
    (
        "--svg",
        &[
            "{OUT}/chart.svg",
            "{DIR}/chart.svg",
            "/nonexistent/dir/chart.svg",
        ],
    ),
    ("--html", &["{OUT}/page.html", "{DIR}/page.html", "{DIR}"]),
];

/// What a positional argument may be replaced with.
const PLACES: &[&str] = &[
    "{DIR}",
    "{SST}",
    "{DIR}/CURRENT",
    "/nonexistent",
    "{OUT}",
    "",
];

fn command(r: &mut StdRng) -> Vec<String> {
    let (base, own) = SUBCOMMANDS[r.random_range(0..SUBCOMMANDS.len())];
    let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    // Sometimes a positional argument is the wrong kind of path.
    if r.random_bool(0.2) {
        let i = r.random_range(0..args.len());
        if args[i].starts_with('{') {
            args[i] = PLACES[r.random_range(0..PLACES.len())].into();
        }
    }
    for _ in 0..r.random_range(0..5) {
        // Mostly a flag the subcommand takes (so the values reach it); now and then any.
        let common = ["--json", "--hex", "-q"];
        let name = match r.random_range(0..10) {
            0 => FLAGS[r.random_range(0..FLAGS.len())].0,
            1..=3 => common[r.random_range(0..common.len())],
            _ if !own.is_empty() => own[r.random_range(0..own.len())],
            _ => common[r.random_range(0..common.len())],
        };
        let (flag, values) = *FLAGS
            .iter()
            .find(|(f, _)| *f == name)
            .expect("a known flag");
        args.push(flag.into());
        // A value, usually, when the flag takes one; now and then none, or one too many.
        if !values.is_empty() && r.random_bool(0.9) {
            args.push(values[r.random_range(0..values.len())].into());
        } else if r.random_bool(0.05) {
            args.push("{OUT}/stray".into());
        }
    }
    args
}

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Runs `sluice` with `args` and gives up after `limit`: (exit code, stdout, stderr). A
/// signal gives no code.
fn run(args: &[String], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    // Drained as the child writes, so that a full pipe cannot stall it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), out.join().unwrap(), err.join().unwrap());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("sluice {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn inspection_commands_with_arguments_at_random() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("db");
    let out = root.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    common::build_fixture(&dir);
    let sst = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .expect("a table in the fixture");
    let before = snapshot(&dir);
    let seeds: Vec<u64> = match std::env::var("SLUICE_SEED") {
        Ok(s) => vec![s.parse().expect("SLUICE_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("SLUICE_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(150);
            // `SLUICE_SEED_FROM`: where the run starts (default 1), to try unexplored seeds.
            let from: u64 = std::env::var("SLUICE_SEED_FROM")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            (from..from.saturating_add(n)).collect()
        }
    };
    let mut codes = BTreeMap::new();
    for seed in seeds {
        let mut r = StdRng::seed_from_u64(seed);
        let args: Vec<String> = command(&mut r)
            .into_iter()
            .map(|a| {
                a.replace("{DIR}", &dir.display().to_string())
                    .replace("{SST}", &sst.display().to_string())
                    .replace("{OUT}", &out.display().to_string())
            })
            .collect();
        let what = format!("seed {seed} (SLUICE_SEED={seed} to replay): sluice {args:?}");
        let (code, out, err) = run(&args, Duration::from_secs(60));
        let Some(code) = code else {
            panic!("{what}: killed by a signal; stderr: {err}")
        };
        assert!(!err.contains("panicked"), "{what}: panicked: {err}");
        assert!(
            (0..=4).contains(&code),
            "{what}: exit code {code}; stderr: {err}"
        );
        if code != 0 {
            // An error on stderr; a failed check's report on stdout.
            assert!(
                !(err.trim().is_empty() && out.trim().is_empty()),
                "{what}: exit {code} with nothing said"
            );
        }
        assert!(
            snapshot(&dir) == before,
            "{what}: the database directory changed"
        );
        *codes.entry(code).or_insert(0) += 1;
    }
    eprintln!("exit codes: {codes:?}");
}
