//! End-to-end tests of the `sluice` binary on fixture databases built through the engine
//! API: golden human output, `--json` shapes, exit codes, corruption reports, refusal of
//! unsafe directories, and read-only behaviour.
//!
//! Golden files live in `tests/golden/`; regenerate them after an intended output change
//! with `UPDATE_GOLDEN=1 cargo test -p sluice-tools --test cli`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// `Command::spawn` forks, and until the child execs it shares this process's open file
/// descriptions, including the `flock` on a database's LOCK file. Spawning takes this
/// shared; building a database in this process (open, write, close) takes it exclusively,
/// so that no child forked meanwhile still holds that database's lock when the test's own
/// `sluice` child opens the directory.
static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn sluice(args: &[&str]) -> Output {
    let _g = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut full: Vec<String> = Vec::new();
    for a in args {
        full.push(a.replace("{DIR}", &dir.display().to_string()));
    }
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    let o = sluice(&refs);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let _g = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
    common::build_fixture(dir.path());
    dir
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Replaces what changes from run to run: the directory path and file creation times.
fn normalise(s: &str, dir: &Path) -> String {
    s.replace(&dir.display().to_string(), "<DIR>")
        .lines()
        .map(|l| {
            if l.starts_with("created ") {
                "created          <TIME>".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(10)
            .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
            .collect();
        panic!(
            "{name}: output differs from {} ({} vs {} lines)\n{}\n--- actual ---\n{actual}",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn golden_human_output() {
    let dir = fixture();
    let d = dir.path();
    let cases: &[(&str, &[&str], i32)] = &[
        ("info", &["info", "{DIR}"], 0),
        ("partitions", &["partitions", "{DIR}"], 0),
        ("manifest", &["manifest", "{DIR}"], 0),
        ("wal", &["wal", "{DIR}"], 0),
        ("verify", &["verify", "{DIR}"], 0),
        (
            "verify_deep",
            &["verify", "--deep", "--sample", "0", "{DIR}"],
            0,
        ),
        ("sst_props", &["sst", "props", "{DIR}/000008.sst"], 0),
        (
            "sst_dump",
            &["sst", "dump", "{DIR}/000011.sst", "--limit", "8"],
            0,
        ),
        ("sst_dump_pointers", &["sst", "dump", "{DIR}/000021.sst"], 0),
        ("sst_check", &["sst", "check", "{DIR}/000008.sst"], 0),
        ("scan", &["scan", "{DIR}", "--from", "acct00001255"], 0),
        (
            "scan_reverse_hex",
            &["scan", "{DIR}", "--reverse", "--limit", "3", "--hex"],
            0,
        ),
        ("get", &["get", "{DIR}", "acct00000003"], 0),
        (
            "analyze_biased",
            &["analyze", "{DIR}", "--spec", "hash:16:7:4"],
            3,
        ),
        (
            "analyze_fair",
            &["analyze", "{DIR}", "--spec", "hash:8:7"],
            0,
        ),
    ];
    for (name, args, code) in cases {
        let (c, out, err) = run(d, args);
        assert_eq!(c, *code, "{name}: exit {c}\nstdout:\n{out}\nstderr:\n{err}");
        check_golden(name, &normalise(&out, d));
    }
}

fn json(d: &Path, args: &[&str]) -> (i32, Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let (c, out, err) = run(d, &a);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}\nstderr:\n{err}"));
    (c, v)
}

fn has(v: &Value, fields: &[&str], what: &str) {
    for f in fields {
        assert!(v.get(f).is_some(), "{what}: no field {f:?} in {v:#}");
    }
}

#[test]
fn every_subcommand_emits_documented_json() {
    let dir = fixture();
    let d = dir.path();

    let (c, v) = json(d, &["info", "{DIR}"]);
    assert_eq!(c, 0);
    has(
        &v,
        &[
            "dir",
            "manifest",
            "last_seqno",
            "next_file",
            "log_number",
            "wal",
            "controller",
            "target",
            "versions",
            "retired",
            "levels",
            "files",
            "bytes",
            "migration",
        ],
        "info",
    );
    has(
        &v["migration"],
        &[
            "state",
            "target",
            "draining",
            "candidates",
            "bytes_left",
            "total_bytes",
            "progress",
        ],
        "info.migration",
    );
    assert_eq!(v["migration"]["state"], "migrating");
    let v1 = &v["versions"][0];
    has(
        v1,
        &[
            "id",
            "spec",
            "fingerprint",
            "role",
            "files",
            "bytes",
            "entries",
            "pointer_files",
            "pointers",
            "levels",
            "partitions",
        ],
        "info.versions[]",
    );
    has(
        &v1["partitions"][0],
        &[
            "partition",
            "files",
            "bytes",
            "entries",
            "pointer_files",
            "pointers",
            "levels",
        ],
        "info partition",
    );
    assert_eq!(v1["role"], "draining");
    assert_eq!(v["target"], 2);

    let (c, v) = json(d, &["partitions", "{DIR}"]);
    assert_eq!(c, 0);
    let p = &v["versions"][1];
    has(
        p,
        &[
            "id",
            "spec",
            "role",
            "partitions",
            "entries",
            "bytes",
            "measure",
            "mean",
            "max_over_mean",
            "chi_square",
            "degrees_of_freedom",
            "p_value",
            "verdict",
            "hottest",
            "partition_stats",
        ],
        "partitions",
    );
    has(
        &p["partition_stats"][0],
        &["partition", "entries", "bytes", "files", "share"],
        "partition_stats[]",
    );
    has(
        &p["hottest"][0],
        &["partition", "count", "share"],
        "hottest[]",
    );

    let (c, v) = json(d, &["manifest", "{DIR}"]);
    assert_eq!(c, 0);
    has(
        &v,
        &["file", "bytes", "edits", "torn_tail", "replay_error"],
        "manifest",
    );
    assert!(v["replay_error"].is_null());
    has(&v["edits"][0], &["offset", "records"], "manifest edit");
    let types: Vec<&str> = v["edits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["type"].as_str().unwrap())
        })
        .collect();
    for t in [
        "next_file",
        "last_seqno",
        "log_number",
        "register_layout",
        "set_target",
        "add_file",
        "delete_file",
    ] {
        assert!(types.contains(&t), "no {t} record in {types:?}");
    }

    let (c, v) = json(d, &["wal", "{DIR}"]);
    assert_eq!(c, 0);
    has(&v, &["dir", "files", "problems"], "wal");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    let f = &v["files"][0];
    has(
        f,
        &["file", "bytes", "live", "records", "torn_tail"],
        "wal file",
    );
    has(&f["records"][0], &["offset", "seqno", "ops"], "wal record");
    has(
        &f["records"][0]["ops"][0],
        &["seqno", "kind", "key", "value", "value_len"],
        "wal op",
    );
    assert_eq!(f["records"][0]["ops"][1]["kind"], "delete");

    let (c, v) = json(d, &["verify", "--deep", "{DIR}"]);
    assert_eq!(c, 0);
    has(
        &v,
        &[
            "dir",
            "ok",
            "errors",
            "warnings",
            "tables",
            "table_bytes",
            "blocks",
            "entries",
            "wal_files",
            "wal_records",
            "manifest_edits",
            "deep",
            "problems",
        ],
        "verify",
    );
    has(
        &v["deep"],
        &[
            "keys",
            "visible",
            "deleted",
            "memtable_only",
            "in_several_layouts",
            "moved",
            "reads_checked",
        ],
        "verify.deep",
    );
    assert_eq!(v["ok"], true);

    let sst = d.join("000008.sst").display().to_string();
    let (c, v) = json(d, &["sst", "props", &sst]);
    assert_eq!(c, 0);
    has(
        &v,
        &[
            "file",
            "size",
            "format_version",
            "kind",
            "layout_version",
            "fingerprint",
            "partition",
            "smallest",
            "largest",
            "min_seqno",
            "max_seqno",
            "entries",
            "tombstones",
            "pointers",
            "raw_bytes",
            "data_blocks",
            "compression",
            "created_unix",
            "filter_block",
            "index_block",
            "props_block",
        ],
        "sst props",
    );
    let (c, v) = json(d, &["sst", "dump", &sst, "--limit", "3"]);
    assert_eq!(c, 0);
    has(
        &v,
        &[
            "file",
            "kind",
            "layout_version",
            "partition",
            "entries",
            "count",
        ],
        "sst dump",
    );
    assert_eq!(v["count"], 3);
    has(
        &v["entries"][0],
        &["key", "seqno", "kind", "value", "value_len", "moved_to"],
        "sst dump entry",
    );
    let (c, v) = json(d, &["sst", "check", &sst]);
    assert_eq!(c, 0);
    has(
        &v,
        &[
            "file",
            "ok",
            "size",
            "blocks",
            "entries",
            "misplaced",
            "function",
            "problems",
        ],
        "sst check",
    );
    assert_eq!(
        (
            &v["ok"],
            &v["blocks"],
            &v["entries"],
            &v["misplaced"],
            &v["function"]
        ),
        (
            &Value::from(true),
            &Value::from(67),
            &Value::from(400),
            &Value::from(0),
            &Value::from("range:acct00000400,acct00000800")
        )
    );

    let (c, v) = json(d, &["get", "{DIR}", "acct00000003"]);
    assert_eq!(c, 0);
    assert_eq!(v["found"], true);
    assert_eq!(v["value"], "balance=updated-in-v2");
    let (c, v) = json(d, &["get", "{DIR}", "acct00000001"]);
    assert_eq!(c, 1, "a key deleted in the WAL is not found");
    assert_eq!(v["found"], false);
    assert!(v["value"].is_null());

    let (c, v) = json(d, &["scan", "{DIR}", "--from", "acct00001258"]);
    assert_eq!(c, 0);
    assert_eq!(v["count"], 4);
    has(&v["entries"][0], &["key", "value"], "scan entry");
    assert_eq!(v["entries"][2]["key"], "acct99999999");
    assert_eq!(v["entries"][3]["key"], "zz\\x00binary\\xffkey");

    let (c, v) = json(d, &["analyze", "{DIR}", "--spec", "hash:16:7:4"]);
    assert_eq!(c, 3);
    has(
        &v,
        &[
            "dir",
            "spec",
            "partitions",
            "sample",
            "counts",
            "shares",
            "max_over_mean",
            "max_share",
            "chi_square",
            "degrees_of_freedom",
            "p_value",
            "empty_partitions",
            "verdict",
            "thresholds",
            "hottest",
        ],
        "analyze",
    );
    assert_eq!(v["verdict"], "biased");
    has(
        &v["sample"],
        &["source", "keys", "population", "tables"],
        "analyze.sample",
    );
}

#[test]
fn keys_print_escaped_by_default_and_hex_on_request() {
    let dir = fixture();
    let d = dir.path();
    let (c, out, _) = run(d, &["get", "{DIR}", "zz\\x00binary\\xffkey"]);
    assert_eq!((c, out.as_str()), (0, "\\x00\\x01\\x02\\xff\n"));
    let (c, out, _) = run(d, &["get", "{DIR}", "7a7a0062696e617279ff6b6579", "--hex"]);
    assert_eq!((c, out.as_str()), (0, "000102ff\n"));
    let (c, out, err) = run(d, &["get", "{DIR}", ""]);
    assert_eq!((c, out.as_str()), (1, ""));
    assert_eq!(err.trim_end(), "the empty key: not found");
}

#[test]
fn usage_errors_exit_2() {
    let dir = fixture();
    let d = dir.path();
    let missing = d.join("nope").display().to_string();
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["info"],
        &["info", "{DIR}", "--bogus-flag"],
        &["sst"],
        &["analyze", "{DIR}"],
        &["analyze", "{DIR}", "--spec", "bogus:3"],
        &["analyze", "{DIR}", "--spec", "hash:0"],
        &[
            "analyze",
            "{DIR}",
            "--spec",
            "hash:4",
            "--max-over-mean",
            "nan",
        ],
        &[
            "analyze",
            "{DIR}",
            "--spec",
            "hash:4",
            "--max-over-mean",
            "0.5",
        ],
        &["analyze", "{DIR}", "--spec", "range:"],
        &["get", "{DIR}", "+a", "--hex"],
        &["get", "{DIR}", "bad\\qescape"],
        &["get", "{DIR}", "zz", "--hex"],
        &["get", "{DIR}", "abc", "--hex"],
        &["scan", "{DIR}", "--from", "b", "--to", "a"],
        &["scan", "{DIR}", "--limit", "many"],
        &["info", &missing],
        &["verify", &missing],
        // Without --deep there are no point reads to sample (it was ignored).
        &["verify", "{DIR}", "--sample", "5"],
        &["migrate", "status", "{DIR}", "--interval", "NaN"],
        &["migrate", "status", "{DIR}", "--interval", "inf"],
        &["migrate", "status", "{DIR}", "--interval", "0"],
        &["migrate", "status", "{DIR}", "--interval", "-1"],
        // NaN meant no limit, -1 one tick, and a budget of 0 silently became 1 MiB/s.
        &["migrate", "run", "{DIR}", "--secs", "NaN"],
        &["migrate", "run", "{DIR}", "--secs=-1"],
        &["migrate", "run", "{DIR}", "--secs", "0"],
        &["migrate", "run", "{DIR}", "--mb-per-sec", "0"],
        &["migrate", "run", "{DIR}", "--check-every", "0"],
        // The audit keeps a balance per account in memory: four billion was 32 GB.
        &["demo", "--dir", "{DIR}/demo", "--accounts", "4000000000"],
        &["demo", "--dir", "{DIR}/demo", "--accounts", "15"],
    ];
    for args in cases {
        let (c, out, err) = run(d, args);
        assert_eq!(c, 2, "{args:?}: exit {c}\n{out}\n{err}");
        assert!(!err.is_empty(), "{args:?}: no message");
    }
    let (_, _, err) = run(d, &["info", &missing]);
    assert!(err.contains("no such directory"), "{err}");
    // A file where the directory should be is not a database either (it exited 1, as an
    // I/O error on FILE/CURRENT).
    let file = d.join("CURRENT").display().to_string();
    for cmd in ["info", "verify", "wal", "manifest"] {
        let (c, out, err) = run(d, &[cmd, &file]);
        assert_eq!(c, 2, "{cmd} on a file: exit {c}\n{out}\n{err}");
        assert!(err.contains("not a directory"), "{cmd}: {err}");
    }
    // A checkpoint path that is not UTF-8 was stored changed (U+FFFD for the bad byte),
    // and the checkpoint written there.
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = d.join(std::ffi::OsStr::from_bytes(b"cp\xff"));
        let before = snapshot(d);
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["migrate", "plan"])
            .arg(d)
            .args(["--spec", "hash:4:9", "--force", "--checkpoint"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("UTF-8"),
            "{o:?}"
        );
        assert_eq!(snapshot(d), before, "nothing planned");
    }
    // With --json, our own usage errors also come as a JSON document.
    let (c, v) = json(d, &["analyze", "{DIR}", "--spec", "bogus:3"]);
    assert_eq!(c, 2);
    assert_eq!(v["error"]["kind"], "usage");
    assert_eq!(v["error"]["exit_code"], 2);
}

#[test]
fn every_subcommand_has_help_with_examples() {
    for sub in [
        "info",
        "sst",
        "manifest",
        "wal",
        "verify",
        "partitions",
        "get",
        "scan",
        "analyze",
        "demo",
        "migrate",
        "recover",
    ] {
        let o = sluice(&[sub, "--help"]);
        let s = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{sub}");
        assert!(
            s.contains("Examples:"),
            "{sub} --help has no examples:\n{s}"
        );
        assert!(s.contains("--json"), "{sub} --help does not show --json");
    }
}

/// Every file's name and bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn read_only_subcommands_never_modify_the_directory() {
    let dir = fixture();
    let d = dir.path();
    let out = tempfile::tempdir().unwrap();
    let html = out.path().join("p.html").display().to_string();
    let svg = out.path().join("p.svg").display().to_string();
    let before = snapshot(d);
    let cmds: &[&[&str]] = &[
        &["info", "{DIR}", "--html", &html],
        &["partitions", "{DIR}", "--svg", &svg],
        &["manifest", "{DIR}"],
        &["wal", "{DIR}"],
        &["verify", "--deep", "--sample", "0", "{DIR}"],
        &["sst", "check", "{DIR}/000008.sst"],
        &["sst", "dump", "{DIR}/000009.sst"],
        &["sst", "props", "{DIR}/000009.sst"],
        &["get", "{DIR}", "acct00000017"],
        &["get", "{DIR}", "acct00000450"],
        &["scan", "{DIR}"],
        &["scan", "{DIR}", "--reverse"],
        &["analyze", "{DIR}", "--spec", "hash:8:1", "--scan"],
    ];
    for args in cmds {
        let (c, o, e) = run(d, args);
        assert_eq!(c, 0, "{args:?}\n{o}\n{e}");
    }
    assert_eq!(
        snapshot(d),
        before,
        "a read-only subcommand changed the directory"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>")
            && page.contains("<svg")
            && page.trim_end().ends_with("</html>")
    );
    assert!(!page.contains("<script"), "the page runs a script");
    assert!(
        !page
            .replace("http://www.w3.org/2000/svg", "")
            .contains("://"),
        "the page loads an external resource"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
}

/// A report file is written under a new name and renamed into place: a name that is a
/// hard link to a live table (a checkpoint's, say) gets the report, and the table keeps
/// its bytes (writing through the name truncated it). A report inside the database
/// directory is refused, the directory untouched.
#[test]
fn report_files_replace_names_and_stay_out_of_the_database_directory() {
    let dir = fixture();
    let d = dir.path();
    let out = tempfile::tempdir().unwrap();
    let table = d.join("000009.sst");
    let table_bytes = std::fs::read(&table).unwrap();
    for (i, args) in [
        ["info", "{DIR}", "--html"],
        ["partitions", "{DIR}", "--svg"],
    ]
    .iter()
    .enumerate()
    {
        let link = out.path().join(format!("linked-{i}"));
        std::fs::hard_link(&table, &link).unwrap();
        let link_arg = link.display().to_string();
        let (c, o, e) = run(d, &[args[0], args[1], args[2], &link_arg]);
        assert_eq!(c, 0, "{args:?}\n{o}\n{e}");
        assert!(
            std::fs::read(&table).unwrap() == table_bytes,
            "{args:?}: the live table changed"
        );
        assert!(
            std::fs::read_to_string(&link).unwrap().contains("<svg"),
            "{args:?}"
        );
        let before = snapshot(d);
        let inside = d.join("report").display().to_string();
        let (c, o, e) = run(d, &[args[0], args[1], args[2], &inside]);
        assert_eq!(c, 2, "{args:?}\n{o}\n{e}");
        assert!(e.contains("inside the database directory"), "{e}");
        assert_eq!(snapshot(d), before, "{args:?}");
    }
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn reading_works_while_a_live_process_holds_the_directory() {
    let dir = fixture();
    let d = dir.path();
    let db = sluice::Db::open(d, common::fixture_options()).unwrap();
    db.put("live", "yes").unwrap();
    db.flush().unwrap();
    let (c, out, err) = run(d, &["get", "{DIR}", "live"]);
    assert_eq!((c, out.as_str()), (0, "yes\n"), "{err}");
    let (c, out, err) = run(d, &["verify", "{DIR}"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, _, err) = run(d, &["info", "{DIR}"]);
    assert_eq!(c, 0, "{err}");
    db.close().unwrap();
}

/// `sluice wal` on a healthy directory whose live writer flushes all the time (deleting
/// each WAL it no longer needs, moving the manifest's log number past it): it reported
/// "missing: WAL ... the writes it held would be lost" (exit 3) when the writer flushed
/// between its reading the manifest and listing the WALs, and an I/O error (exit 1) when
/// a listed WAL went before it was read. Like `verify`, it looks again when the manifest
/// changed meanwhile (exit 4, busy, only if it keeps changing).
#[test]
fn wal_keeps_working_while_a_live_writer_flushes() {
    let dir = fixture();
    let d = dir.path();
    let db = {
        let _g = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
        sluice::Db::open(d, common::fixture_options()).unwrap()
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.put(format!("live{:06}", i % 500), format!("v{i}"))
                    .unwrap();
                // A flush every 10 ms or so: busy, not a manifest edit every instant.
                if i.is_multiple_of(5) {
                    db.flush().unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                i += 1;
            }
        })
    };
    let mut failures = Vec::new();
    for round in 0..100 {
        for args in [&["wal", "{DIR}"][..], &["wal", "{DIR}", "--json"]] {
            let (c, out, err) = run(d, args);
            if c != 0 && c != 4 {
                let problem = out.lines().find(|l| l.starts_with("error")).unwrap_or("");
                failures.push(format!("round {round} {args:?}: exit {c}: {err}{problem}"));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    db.close().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// Corruption

fn flip(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[offset] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

/// Exit 3, naming `file` and an offset, on stdout or stderr.
fn assert_reported(d: &Path, args: &[&str], file: &str) -> String {
    let (c, out, err) = run(d, args);
    let all = format!("{out}{err}");
    assert_eq!(c, 3, "{args:?}: exit {c}\n{all}");
    assert!(all.contains(file), "{args:?}: {file} not named:\n{all}");
    assert!(all.contains("offset"), "{args:?}: no offset:\n{all}");
    all
}

#[test]
fn flipped_byte_in_an_sstable_is_found_with_file_and_offset() {
    let dir = fixture();
    let d = dir.path();
    flip(&d.join("000008.sst"), 300);
    let all = assert_reported(d, &["verify", "{DIR}"], "000008.sst");
    assert!(all.contains("[checksum]"), "{all}");
    assert_reported(d, &["sst", "check", "{DIR}/000008.sst"], "000008.sst");
    let (c, v) = json(d, &["verify", "{DIR}"]);
    assert_eq!(c, 3);
    let p = &v["problems"][0];
    assert_eq!(p["check"], "checksum");
    assert!(p["file"].as_str().unwrap().ends_with("000008.sst"));
    assert_eq!(p["offset"], 254, "the block holding byte 300");
    // A read that needs the damaged block fails with exit 3 too.
    assert_reported(d, &["scan", "{DIR}"], "000008.sst");
}

/// `sluice verify DIR | head` (or any reader that stops early, `| grep -q`, a closed
/// pipe): a failed check keeps its exit code when stdout goes away. The closed pipe was
/// taken for success and the run exited 0, so that under `set -o pipefail` a damaged
/// database passed its check. Here the reader is gone before the command writes, with a
/// short report (the broken pipe shows at the final flush) and a long one (in the middle
/// of the report).
#[test]
fn a_failed_check_keeps_its_exit_code_when_the_reader_goes_away() {
    let dir = fixture();
    let d = dir.path();
    flip(&d.join("000008.sst"), 300);
    let closed = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let _g = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(
                args.iter()
                    .map(|a| a.replace("{DIR}", &d.display().to_string())),
            )
            .stdout(writer)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let cases: [(&[&str], i32); 5] = [
        (&["verify", "{DIR}"], 3),
        (&["verify", "{DIR}", "--json"], 3),
        (&["sst", "check", "{DIR}/000008.sst"], 3),
        (&["analyze", "{DIR}", "--spec", "hash:16:7:4"], 3),
        (&["get", "{DIR}", "no-such-key", "--json"], 1),
    ];
    for (args, want) in cases {
        let (code, err) = closed(args);
        assert_eq!(code, Some(want), "{args:?}: {err}");
    }
    // A report longer than the output buffer: the reader is found gone mid-report.
    for i in 0..300 {
        std::fs::write(d.join(format!("{:06}.sst", 900_000 + i)), b"not a table").unwrap();
    }
    let (code, err) = closed(&["verify", "{DIR}"]);
    assert_eq!(code, Some(3), "{err}");
}

/// A database that lost its CURRENT (its manifest and tables still there) is a damaged
/// database, not a path that is no database: `verify` said "not a Sluice database" and
/// exited 2 (usage: the wrong path) without looking at a table. It reports the missing
/// CURRENT as damage (exit 3), and still checks every table on its own.
#[test]
fn a_database_that_lost_its_current_is_damaged_not_a_stranger() {
    let dir = fixture();
    let d = dir.path();
    std::fs::remove_file(d.join("CURRENT")).unwrap();
    let (c, v) = json(d, &["verify", "{DIR}"]);
    assert_eq!(c, 3, "{v:#}");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("CURRENT"),
        "{v:#}"
    );
    let tables = std::fs::read_dir(d)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sst")
        })
        .count();
    assert_eq!(v["tables"], tables, "{v:#}");
    for args in [
        &["info", "{DIR}"][..],
        &["scan", "{DIR}"],
        &["get", "{DIR}", "acct00000001"],
    ] {
        let (c, out, err) = run(d, args);
        assert_eq!(c, 3, "{args:?}: exit {c}\n{out}\n{err}");
        assert!(err.contains("CURRENT"), "{args:?}: {err}");
    }
    // What a first open cut short before CURRENT leaves (its empty manifest and nothing
    // else) is still no database.
    let first = tempfile::tempdir().unwrap();
    std::fs::write(first.path().join("MANIFEST-000001"), b"").unwrap();
    let (c, _, err) = run(first.path(), &["verify", "{DIR}"]);
    assert_eq!(c, 2, "{err}");
}

#[test]
fn truncated_sstable_is_found_with_file_and_offset() {
    let dir = fixture();
    let d = dir.path();
    let p = d.join("000009.sst");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    assert_reported(d, &["verify", "{DIR}"], "000009.sst");
    assert_reported(d, &["sst", "props", "{DIR}/000009.sst"], "000009.sst");
    assert_reported(d, &["get", "{DIR}", "acct00000900"], "000009.sst");
}

#[test]
fn missing_sstable_is_found() {
    let dir = fixture();
    let d = dir.path();
    std::fs::remove_file(d.join("000009.sst")).unwrap();
    let all = assert_reported(d, &["verify", "{DIR}"], "000009.sst");
    assert!(all.contains("missing"), "{all}");
    assert!(all.contains("MANIFEST-000001"), "{all}");
    assert_reported(d, &["get", "{DIR}", "acct00000003"], "000009.sst");
}

#[test]
fn flipped_byte_in_the_wal_is_found_with_file_and_offset() {
    let dir = fixture();
    let d = dir.path();
    // The first of two records: damage followed by a valid record is corruption.
    let (record, payload) = first_wal_record(d);
    flip(&d.join("000019.log"), payload as usize + 1);
    let all = assert_reported(d, &["verify", "{DIR}"], "000019.log");
    assert!(all.contains(&format!("offset {record}")), "{all}");
    assert_reported(d, &["wal", "{DIR}"], "000019.log");
    assert_reported(d, &["get", "{DIR}", "acct00000003"], "000019.log");
}

/// The offsets of the first record in the fixture's live WAL: its header's and its payload's.
fn first_wal_record(d: &Path) -> (u64, u64) {
    let wal = d.join("000019.log");
    let data = std::fs::read(&wal).unwrap();
    let log = sluice::log::read_log(data.into(), &wal, sluice::log::LogKind::Wal).unwrap();
    let at = log.records[0].0;
    (at, log.payload_offset(at))
}

/// A copy of the live WAL under the next number repeats its seqnos: each file alone is
/// intact, the sequence is not, and recovery refuses it. `sluice wal` says so (exit 3,
/// naming the copy and the record's offset), as `verify` does.
#[test]
fn a_duplicated_wal_is_found_by_wal_and_verify() {
    let dir = fixture();
    let d = dir.path();
    std::fs::copy(d.join("000019.log"), d.join("000020.log")).unwrap();
    let all = assert_reported(d, &["wal", "{DIR}"], "000020.log");
    assert!(all.contains("follows"), "{all}");
    assert_reported(d, &["verify", "{DIR}"], "000020.log");
}

/// The live WAL deleted: its acknowledged writes would be lost, so `verify` reports it and
/// `recover` refuses naming it and the way out; `--point-in-time` recovers what the tables
/// hold and says which WAL was missing.
#[test]
fn a_missing_wal_is_found_by_verify_and_recover() {
    let dir = fixture();
    let d = dir.path();
    std::fs::remove_file(d.join("000019.log")).unwrap();
    let (c, out, err) = run(d, &["verify", "{DIR}"]);
    assert_eq!(c, 3, "{out}{err}");
    assert!(
        out.contains("000019.log") && out.contains("MANIFEST"),
        "{out}{err}"
    );
    let all = assert_reported(d, &["recover", "{DIR}"], "000019.log");
    assert!(
        all.contains("missing") && all.contains("--point-in-time"),
        "{all}"
    );
    let (c, v) = json(d, &["recover", "{DIR}", "--point-in-time"]);
    assert_eq!(c, 0, "{v}");
    assert!(
        v["wal_missing"]
            .as_str()
            .is_some_and(|m| m.contains("000019.log")),
        "{v}"
    );
    let (c, _, _) = run(d, &["get", "{DIR}", "acct99999999"]);
    assert_eq!(c, 1, "the missing WAL's put is gone");
    let (c, out, err) = run(d, &["verify", "{DIR}"]);
    assert_eq!(c, 0, "after recovery: {out}{err}");
}

/// A directory that would not open is no success for the tools that show its parts:
/// `manifest` prints the edits that decode and fails with the reason they do not replay,
/// `wal` lists every WAL and fails naming the manifest or the missing first WAL, and
/// `sst check` warns that placement went unchecked (it used to say nothing, and the first
/// two exited 0).
#[test]
fn manifest_and_wal_fail_on_a_directory_that_would_not_open() {
    let dir = fixture();
    let d = dir.path();
    // The live WAL gone.
    std::fs::remove_file(d.join("000019.log")).unwrap();
    let (c, v) = json(d, &["wal", "{DIR}"]);
    assert_eq!(c, 3, "{v}");
    let p = &v["problems"][0];
    assert_eq!(p["check"], "missing-file", "{v}");
    assert!(p["message"].as_str().unwrap().contains("000019.log"), "{v}");
    let (c, out, _) = run(d, &["wal", "{DIR}"]);
    assert_eq!(c, 3, "{out}");
    assert!(out.contains("000019.log"), "{out}");

    // An emptied manifest.
    let dir = fixture();
    let d = dir.path();
    std::fs::write(d.join("MANIFEST-000001"), b"").unwrap();
    let (c, v) = json(d, &["manifest", "{DIR}"]);
    assert_eq!(c, 3, "{v}");
    assert!(v["replay_error"].is_string(), "{v}");
    assert_eq!(v["edits"].as_array().unwrap().len(), 0);
    let (c, out, _) = run(d, &["manifest", "{DIR}"]);
    assert_eq!(c, 3, "{out}");
    assert!(out.contains("does not replay"), "{out}");
    let (c, v) = json(d, &["wal", "{DIR}"]);
    assert_eq!(c, 3, "{v}");
    assert_eq!(v["problems"][0]["check"], "manifest", "{v}");
    assert!(
        !v["files"].as_array().unwrap().is_empty(),
        "still listed: {v}"
    );
    let (c, v) = json(d, &["sst", "check", "{DIR}/000008.sst"]);
    assert_eq!(c, 0, "the table itself is sound: {v}");
    let p = &v["problems"][0];
    assert_eq!(
        (&p["severity"], &p["check"]),
        (&"warning".into(), &"manifest".into()),
        "{v}"
    );
    assert!(v["function"].is_null(), "{v}");
}

/// Pin records (a rollback target kept live) are shown as pins; they printed as
/// controller records with epoch 0.
#[test]
fn manifest_shows_pin_records_as_pins() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = sluice::Db::open(d, sluice::Options::default()).unwrap();
    db.pin_version(sluice::VersionId(1), true).unwrap();
    db.pin_version(sluice::VersionId(1), false).unwrap();
    db.close().unwrap();
    let (c, v) = json(d, &["manifest", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    let recs: Vec<&Value> = v["edits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["records"].as_array().unwrap())
        .collect();
    let pins: Vec<(u64, bool)> = recs
        .iter()
        .filter(|r| r["type"] == "pin")
        .map(|r| {
            (
                r["version"].as_u64().unwrap(),
                r["pinned"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(pins, vec![(1, true), (1, false)], "{v}");
    assert!(recs.iter().all(|r| r["type"] != "controller"), "{v}");
    let (_, out, _) = run(d, &["manifest", "{DIR}"]);
    assert!(out.contains("pin v1") && out.contains("unpin v1"), "{out}");
}

/// A live WAL emptied: recovery opens without its writes (a crash right after the WAL was
/// made looks the same), so `verify` cannot call it an error, but it must not pass it over.
#[test]
fn an_emptied_live_wal_is_a_verify_warning() {
    let dir = fixture();
    let d = dir.path();
    let (c, v) = json(d, &["verify", "{DIR}"]);
    assert_eq!((c, &v["warnings"]), (0, &0.into()), "{v}");
    std::fs::write(d.join("000019.log"), b"").unwrap();
    let (c, v) = json(d, &["verify", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    let p = &v["problems"][0];
    assert_eq!(
        (&p["severity"], &p["check"]),
        (&"warning".into(), &"wal".into()),
        "{v}"
    );
    assert!(p["file"].as_str().unwrap().ends_with("000019.log"), "{v}");
    assert!(p["message"].as_str().unwrap().contains("empty"), "{v}");
}

#[test]
fn recover_refuses_wal_damage_then_recovers_as_of_the_record_before_it() {
    // An intact database: replays both WAL records and closes cleanly.
    let dir = fixture();
    let d = dir.path();
    let (c, v) = json(d, &["recover", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    has(
        &v,
        &[
            "dir",
            "mode",
            "wal_files",
            "wal_batches",
            "wal_entries",
            "torn_tail",
            "wal_dropped_after_damage",
            "wal_missing",
            "wal_cut_short",
            "wal_unended",
            "manifest_torn_tail",
            "orphans_removed",
            "last_seqno",
        ],
        "recover",
    );
    assert_eq!(
        (v["mode"].as_str(), v["wal_batches"].as_u64()),
        (Some("strict"), Some(2))
    );
    assert!(v["torn_tail"].is_null(), "{v}");
    let (c, out, _) = run(d, &["get", "{DIR}", "acct99999999"]);
    assert_eq!((c, out.trim()), (0, "in the WAL only"));

    // The first of the two records damaged: the default refuses and names the way out.
    let dir = fixture();
    let d = dir.path();
    let (record, payload) = first_wal_record(d);
    flip(&d.join("000019.log"), payload as usize + 1);
    let all = assert_reported(d, &["recover", "{DIR}"], "000019.log");
    assert!(all.contains("--point-in-time"), "{all}");
    // Damage point-in-time recovery does not resolve (a table's damaged footer) gets no such
    // hint.
    let other = fixture();
    let sst = other.path().join("000008.sst");
    flip(&sst, std::fs::metadata(&sst).unwrap().len() as usize - 1);
    let all = assert_reported(other.path(), &["recover", "{DIR}"], "000008.sst");
    assert!(!all.contains("--point-in-time"), "{all}");
    let (c, v) = json(d, &["recover", "{DIR}", "--point-in-time"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["mode"], "point-in-time");
    assert_eq!(v["wal_batches"], 0, "{v}");
    assert_eq!(v["torn_tail"]["file"], "000019.log", "{v}");
    assert_eq!(v["torn_tail"]["offset"], record, "{v}");
    assert!(v["wal_dropped_after_damage"].as_u64().unwrap() > 0, "{v}");
    // Later opens, strict ones included, see that state: nothing after the damage (the
    // batch that wrote acct99999999 and deleted acct00000001 is gone), everything before.
    let (c, out, err) = run(d, &["verify", "{DIR}"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, v) = json(d, &["recover", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    assert!(
        v["torn_tail"].is_null() && v["wal_dropped_after_damage"] == 0,
        "{v}"
    );
    let (c, _, _) = run(d, &["get", "{DIR}", "acct99999999"]);
    assert_eq!(c, 1, "the dropped batch's put is gone");
    let (c, _, _) = run(d, &["get", "{DIR}", "acct00000001"]);
    assert_eq!(c, 0, "the dropped batch's delete is gone");
}

/// The live WAL cut at a record boundary (its last batch gone), with a later WAL that
/// holds only the record saying the earlier WALs were durable: no crash leaves that, so
/// `verify` reports it, `recover` refuses naming the WAL and the way out, and
/// `--point-in-time` recovers what comes before the cut, naming the WAL in `wal_unended`.
#[test]
fn an_older_wal_cut_at_a_record_boundary_is_found_and_recovered_point_in_time() {
    use sluice::log::{read_log, LogKind};
    let dir = fixture();
    let d = dir.path();
    let wal = d.join("000019.log");
    let data = std::fs::read(&wal).unwrap();
    let batches = sluice::inspect::read_wal_file(&wal).unwrap().records;
    assert_eq!(batches.len(), 2, "test setup: two batches in the WAL");
    // The cut: everything from the last batch on gone.
    let cut = data[..batches[1].offset as usize].to_vec();
    std::fs::write(&wal, &cut).unwrap();
    // A later WAL holding only its header and the record that the earlier WALs were
    // durable.
    let log = read_log(data.into(), &wal, LogKind::Wal).unwrap();
    let header_end = log.records[0].0;
    let mut later = cut[..header_end as usize].to_vec();
    log.format().encode_record(&[0u8; 12], &mut later);
    std::fs::write(d.join("000090.log"), &later).unwrap();

    let (c, out, err) = run(d, &["verify", "{DIR}"]);
    assert_eq!(c, 3, "{out}{err}");
    assert!(
        out.contains("000019.log") && out.contains("cut short"),
        "{out}{err}"
    );
    let all = assert_reported(d, &["recover", "{DIR}"], "000019.log");
    assert!(all.contains("--point-in-time"), "{all}");
    let (c, out, err) = run(d, &["recover", "{DIR}", "--point-in-time"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("000019.log") && out.contains("does not end in the record naming"),
        "{out}"
    );
    // The text run recovered already; the JSON shape is checked on a fresh copy.
    let dir = fixture();
    let d2 = dir.path();
    std::fs::write(d2.join("000019.log"), &cut).unwrap();
    std::fs::write(d2.join("000090.log"), &later).unwrap();
    let (c, v) = json(d2, &["recover", "{DIR}", "--point-in-time"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["wal_unended"]["file"], "000019.log", "{v}");
    assert_eq!(v["wal_unended"]["offset"], cut.len() as u64, "{v}");
    assert_eq!(v["wal_batches"], 1, "{v}");
    let (c, _, _) = run(d2, &["get", "{DIR}", "acct99999999"]);
    assert_eq!(c, 0, "the batch before the cut is kept");
    let (c, out, err) = run(d2, &["verify", "{DIR}"]);
    assert_eq!(c, 0, "after recovery: {out}{err}");
}

#[test]
fn flipped_byte_in_the_manifest_is_found_with_file_and_offset() {
    let dir = fixture();
    let d = dir.path();
    let manifest = d.join("MANIFEST-000001");
    let data = std::fs::read(&manifest).unwrap();
    let log = sluice::log::read_log(data.into(), &manifest, sluice::log::LogKind::Manifest);
    let holding = log
        .unwrap()
        .records
        .iter()
        .map(|r| r.0)
        .rfind(|&off| off <= 100);
    let holding = holding.expect("test setup: a record starts before byte 100");
    flip(&manifest, 100);
    for args in [
        &["verify", "{DIR}"][..],
        &["info", "{DIR}"],
        &["manifest", "{DIR}"],
        &["partitions", "{DIR}"],
        &["scan", "{DIR}"],
    ] {
        assert_reported(d, args, "MANIFEST-000001");
    }
    let (c, v) = json(d, &["info", "{DIR}"]);
    assert_eq!(c, 3);
    assert_eq!(v["error"]["kind"], "corruption");
    assert!(v["error"]["file"]
        .as_str()
        .unwrap()
        .ends_with("MANIFEST-000001"));
    assert_eq!(v["error"]["offset"], holding, "the record holding byte 100");
}

// ---------------------------------------------------------------------------------------
// Refusals

#[test]
fn symlinked_sstable_pointing_outside_is_refused() {
    let dir = fixture();
    let d = dir.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("stolen.sst");
    std::fs::rename(d.join("000009.sst"), &target).unwrap();
    std::os::unix::fs::symlink(&target, d.join("000009.sst")).unwrap();
    for args in [
        &["info", "{DIR}"][..],
        &["partitions", "{DIR}"],
        &["get", "{DIR}", "acct00000900"],
        &["scan", "{DIR}"],
        &["analyze", "{DIR}", "--spec", "hash:4"],
    ] {
        let (c, out, err) = run(d, args);
        assert_eq!(c, 3, "{args:?}: {out}{err}");
        assert!(
            err.contains("symlink") && err.contains("000009.sst"),
            "{args:?}: {err}"
        );
    }
    let (c, out, _) = run(d, &["verify", "{DIR}"]);
    assert_eq!(c, 3);
    assert!(
        out.contains("[symlink]") && out.contains("refusing to follow"),
        "{out}"
    );
}

#[test]
fn current_naming_a_file_outside_the_directory_is_refused() {
    let dir = fixture();
    let d = dir.path();
    for bad in [
        "../MANIFEST-000001\n",
        "MANIFEST-000001/../../x\n",
        "/etc/passwd\n",
        // A name with a stray byte was looked up as a file (an I/O error, exit 1) and the
        // carriage return went to the terminal raw.
        "MANIFEST-000001\r\n",
        "MANIFEST-000001\0\n",
        // Well formed, naming a manifest that is not there (a flipped digit): an I/O error
        // on the manifest (exit 1) until it was reported as damage to CURRENT.
        "MANIFEST-999999\n",
    ] {
        std::fs::write(d.join("CURRENT"), bad).unwrap();
        for args in [
            &["info", "{DIR}"][..],
            &["verify", "{DIR}"],
            &["get", "{DIR}", "k"],
        ] {
            let (c, out, err) = run(d, args);
            assert_eq!(c, 3, "{bad:?} {args:?}: {out}{err}");
            assert!(format!("{out}{err}").contains("CURRENT"), "{out}{err}");
        }
    }
    // CURRENT itself as a symlink out of the directory.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("CURRENT"), "MANIFEST-000001\n").unwrap();
    std::fs::remove_file(d.join("CURRENT")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("CURRENT"), d.join("CURRENT")).unwrap();
    let (c, _, err) = run(d, &["info", "{DIR}"]);
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("symlink"), "{err}");
    // CURRENT as a link to an endless device, a FIFO, or far too long: refused before it is
    // read (a check that read it first hung, or filled memory, for every command).
    let huge = vec![b'M'; 1 << 20];
    type Make<'a> = &'a dyn Fn(&Path);
    let kinds: [(&str, Make); 3] = [
        ("/dev/zero", &|p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
        ("fifo", &|p| {
            let _g = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
            assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
        }),
        ("1 MiB", &|p| std::fs::write(p, &huge).unwrap()),
    ];
    for (what, make) in kinds {
        let _ = std::fs::remove_file(d.join("CURRENT"));
        make(&d.join("CURRENT"));
        for args in [
            &["info", "{DIR}"][..],
            &["verify", "{DIR}"],
            &["get", "{DIR}", "k"],
        ] {
            let (c, out, err) = run(d, args);
            assert_eq!(c, 3, "{what} {args:?}: {out}{err}");
            assert!(
                format!("{out}{err}").contains("CURRENT"),
                "{what}: {out}{err}"
            );
        }
    }
}

/// Appends one edit to the live manifest, as the engine would.
fn append_edit(dir: &Path, edit: &sluice::manifest::VersionEdit) {
    let path = dir.join("MANIFEST-000001");
    let mut b = std::fs::read(&path).unwrap();
    let log = sluice::log::read_log(b.clone().into(), &path, sluice::log::LogKind::Manifest);
    let format = log.expect("test setup: a readable manifest").format();
    format.encode_record(&edit.encode(), &mut b);
    std::fs::write(&path, b).unwrap();
}

#[test]
fn manifest_claiming_absurd_sizes_is_refused() {
    let dir = fixture();
    let d = dir.path();
    let mut e = sluice::manifest::VersionEdit::default();
    e.push(sluice::manifest::EditRecord::AddFile(
        sluice::manifest::FileRecord {
            number: 900,
            size: 1 << 50,
            layout_version: 2,
            partition: 0,
            level: 0,
            kind: sluice::sst::TableKind::Data,
            smallest: "a".into(),
            largest: "b".into(),
            min_seqno: 1,
            max_seqno: 2,
            entries: 3_000_000_000,
        },
    ));
    append_edit(d, &e);
    for args in [
        &["info", "{DIR}"][..],
        &["verify", "{DIR}"],
        &["get", "{DIR}", "a"],
        &["partitions", "{DIR}"],
    ] {
        let all = assert_reported(d, args, "MANIFEST-000001");
        assert!(all.contains("file 900"), "{all}");
    }
}

#[test]
fn footer_claiming_a_huge_block_is_refused() {
    let dir = fixture();
    let d = dir.path();
    let p = d.join("000008.sst");
    let mut b = std::fs::read(&p).unwrap();
    // An index handle of 2^60 bytes under a valid footer CRC: the handle itself must be refused.
    use sluice::sst::format::{Footer, FOOTER_LEN};
    let mut footer = Footer::decode(&b, &p).unwrap();
    footer.index.size = 1 << 60;
    let f = b.len() - FOOTER_LEN;
    b[f..].copy_from_slice(&footer.encode());
    std::fs::write(&p, &b).unwrap();
    let all = assert_reported(d, &["verify", "{DIR}"], "000008.sst");
    assert!(all.contains("outside the file"), "{all}");
    assert_reported(d, &["sst", "dump", "{DIR}/000008.sst"], "000008.sst");
}

// ---------------------------------------------------------------------------------------
// A key in the wrong partition

#[test]
fn verify_finds_a_key_placed_in_the_wrong_partition() {
    use sluice::sst::{TableKind, TableOptions, TableOwner, TableWriter};

    let dir = fixture();
    let d = dir.path();
    let st = sluice::inspect::read_dir_state(d).unwrap();
    let v2 = st.version(2).unwrap();
    // acct00000003 maps to one partition of v2 (hash:4:7); write it into another one.
    let right = v2.func.partition_of(b"acct00000003");
    let wrong = (right + 1) % 4;
    let number = st.next_file + 100;
    let path = st.table_path(number);
    let mut w = TableWriter::new(
        std::sync::Arc::new(sluice::fs::StdFs),
        &path,
        TableOptions {
            block_size: 4096,
            compression: sluice::Compression::None,
            key_delta: false,
            bloom_bits_per_key: 10,
        },
        TableOwner {
            kind: TableKind::Data,
            layout_version: 2,
            fingerprint: v2.func.fingerprint(),
            partition: wrong,
        },
    )
    .unwrap();
    let seqno = 5000;
    w.add(&sluice::Entry {
        key: "acct00000003".into(),
        seqno,
        kind: sluice::Kind::Value,
        value: "misplaced".into(),
    })
    .unwrap();
    let (props, size) = w.finish().unwrap();
    let mut e = sluice::manifest::VersionEdit::default();
    e.push(sluice::manifest::EditRecord::AddFile(
        sluice::manifest::FileRecord {
            number,
            size,
            layout_version: 2,
            partition: wrong,
            level: 0,
            kind: TableKind::Data,
            smallest: props.smallest.clone().into(),
            largest: props.largest.clone().into(),
            min_seqno: props.min_seqno,
            max_seqno: props.max_seqno,
            entries: props.entries,
        },
    ))
    .push(sluice::manifest::EditRecord::LastSeqno(seqno));
    append_edit(d, &e);

    let name = format!("{number:06}.sst");
    let (c, out, err) = run(d, &["verify", "{DIR}"]);
    assert_eq!(c, 3, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("[partition]"))
        .unwrap_or_else(|| panic!("no partition problem:\n{out}"));
    assert!(
        line.contains(&name) && line.contains("acct00000003"),
        "{line}"
    );
    assert!(
        line.contains(&format!("belongs to partition {right} of v2")),
        "{line}"
    );
    assert!(line.contains("offset 0"), "{line}");
    // Only the placement is wrong: nothing else is reported.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{out}"
    );
    let (_, v) = json(d, &["verify", "{DIR}"]);
    assert_eq!(v["problems"][0]["check"], "partition");
    assert_eq!(v["errors"], 1);
    // sst check on the lone file sees it too (the function comes from the manifest beside it).
    let (c, out, _) = run(d, &["sst", "check", &path.display().to_string()]);
    assert_eq!(c, 3, "{out}");
    assert!(out.contains("[partition]"), "{out}");
}

/// `sluice demo` at a small scale: the whole scenario runs, the audit passes, the JSON
/// summary has its fields, and the directory is reset on a second run but a foreign
/// non-empty directory is refused.
#[test]
fn demo_runs_the_ledger_scenario_small() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("demo");
    let d = dir.display().to_string();
    let args = [
        "demo",
        "--dir",
        &d,
        "--accounts",
        "3000",
        "--payload-bytes",
        "32",
        "--stable-secs",
        "0.3",
        "--rollback-secs",
        "0.3",
        "--migration-mb-per-sec",
        "64",
        "--tps",
        "2000",
        "--lookups",
        "500",
        "--json",
    ];
    let o = sluice(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    has(
        &v,
        &[
            "transfers_committed",
            "conflicts_retried",
            "sum_before",
            "sum_after",
            "lost_writes",
            "duplicated_writes",
            "stable_p99_us",
            "migrating_p99_us",
            "migration_write_ratio",
            "events",
            "ok",
        ],
        "demo",
    );
    assert_eq!(v["ok"], true);
    assert_eq!(v["lost_writes"], 0);
    assert_eq!(v["duplicated_writes"], 0);
    assert_eq!(v["sum_before"], v["sum_after"]);
    assert_eq!(v["final_versions"].as_array().unwrap().len(), 1);
    // The corrected layout's balance is measured on the version the run finished on: any
    // layout of 16 partitions holding data has one with at least a sixteenth. (After the
    // rollback drill the corrected layout can be registered again under a new id, and the
    // summary measured the retired one: 0%.)
    let share = v["corrected_max_partition_share"].as_f64().unwrap();
    assert!(
        (1.0 / 16.0 - 1e-9..=1.0).contains(&share),
        "corrected share {share} of 16 partitions (final versions {})",
        v["final_versions"]
    );
    // A second run resets the earlier demo database.
    assert_eq!(sluice(&args).status.code(), Some(0));
    // Not while a process has it open: its files stay, and the process with them (deleting
    // them under a live demo crashed it with SIGBUS).
    {
        let live = sluice::Db::open(&dir, sluice::Options::default()).unwrap();
        let before = snapshot(&dir);
        let o = sluice(&args);
        assert_eq!(
            o.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(snapshot(&dir), before);
        live.put("still", "here").unwrap();
        live.close().unwrap();
    }
    // Anything else is refused as a usage error.
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let o = sluice(&["demo", "--dir", &other.display().to_string(), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(other.join("notes.txt").exists());
    // So is a Sluice database that no demo made.
    let db = fixture();
    let before = snapshot(db.path());
    let o = sluice(&["demo", "--dir", &db.path().display().to_string(), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(snapshot(db.path()), before);
    // Thread counts the scenario cannot spawn (20000 used to abort the process), and
    // partition counts no hash layout has (or, at 1, that cannot show the bias; 0 and 5000
    // used to reset the directory and run the stable phase before failing).
    for (flag, value) in [
        ("--threads", "0"),
        ("--threads", "20000"),
        ("--partitions", "0"),
        ("--partitions", "1"),
        ("--partitions", "5000"),
    ] {
        let fresh = t.path().join(format!("{flag}-{value}"));
        let o = sluice(&[
            "demo",
            "--dir",
            &fresh.display().to_string(),
            "--quiet",
            flag,
            value,
        ]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(flag),
            "{flag} {value}"
        );
        assert!(!fresh.exists(), "{flag} {value}");
    }
    // A payload the scenario cannot allocate or batch (usize::MAX panicked), refused
    // before the directory is made.
    let fresh = t.path().join("payload");
    let o = sluice(&[
        "demo",
        "--dir",
        &fresh.display().to_string(),
        "--quiet",
        "--payload-bytes",
        "18446744073709551615",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("payload_bytes"));
    assert!(!fresh.exists());
}

/// A slow transfer rate spread over many threads (`--tps 1 --threads 64`: one transfer a
/// minute per thread) does not keep the demo waiting once its scenario is done: each
/// transfer thread slept out its whole pace before looking at the stop flag, so the run
/// hung for a minute (17 at `--threads 1024`) after its last step.
#[test]
fn demo_with_a_slow_rate_over_many_threads_stops_when_done() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("demo").display().to_string();
    let started = std::time::Instant::now();
    let mut child = {
        let _g = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "demo",
                "--dir",
                &d,
                "--quiet",
                "--accounts",
                "16",
                "--stable-secs",
                "0",
                "--rollback-secs",
                "0",
                "--tps",
                "1",
                "--threads",
                "64",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let limit = std::time::Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = status.unwrap_or_else(|| panic!("the demo still ran after {limit:?}"));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn streamed_json_stays_one_document_after_a_corrupt_block() {
    let dir = fixture();
    let d = dir.path();
    flip(&d.join("000008.sst"), 300);
    for args in [&["sst", "dump", "{DIR}/000008.sst"][..], &["scan", "{DIR}"]] {
        let (c, v) = json(d, args);
        assert_eq!(c, 3, "{args:?}");
        assert_eq!(v["error"]["offset"], 254, "{args:?}: {v}");
        assert!(v["entries"].is_array(), "{args:?}");
    }
}

#[test]
fn manifest_that_is_a_fifo_is_refused_not_read() {
    let dir = fixture();
    let d = dir.path();
    let m = d.join("MANIFEST-000001");
    std::fs::remove_file(&m).unwrap();
    let made = {
        let _g = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
        Command::new("mkfifo").arg(&m).status().unwrap().success()
    };
    assert!(made);
    let all = assert_reported(d, &["manifest", "{DIR}"], "MANIFEST-000001");
    assert!(all.contains("not a regular file"), "{all}");
}

/// The migrate subcommands drive the controller through a whole migration on a fixture:
/// plan (a biased candidate refused, then a good one), start, run to completion, status;
/// and a rollback in the wrong state is a usage error.
#[test]
fn migrate_subcommands_drive_a_migration() {
    let d = fixture();
    let (c, _, e) = run(
        d.path(),
        &["migrate", "plan", "{DIR}", "--spec", "hash:8:3:1"],
    );
    assert_eq!(
        c, 2,
        "a one-byte prefix hash puts every key on one partition: {e}"
    );
    assert!(e.contains("biased"), "{e}");
    let (c, v) = json(
        d.path(),
        &["migrate", "plan", "{DIR}", "--spec", "hash:8:3"],
    );
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["state"], "planned");
    // Before the switch, run names the step that works (it said "use plan and start" in
    // every state, finish's included).
    let (c, _, e) = run(d.path(), &["migrate", "run", "{DIR}", "--secs", "1"]);
    assert_eq!(c, 2, "{e}");
    assert!(
        e.contains("use start") && !e.contains("plan and start"),
        "{e}"
    );
    let (c, v) = json(d.path(), &["migrate", "start", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["state"], "migrating");
    let to = v["plan"]["to"].as_u64().unwrap();
    assert_eq!(v["target"].as_u64().unwrap(), to);
    assert_eq!(v["held"], false, "held past the canary: {v}");
    // A pause outlives the command that made it: every later command sees the hold.
    let (c, v) = json(d.path(), &["migrate", "pause", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    let (c, v) = json(d.path(), &["migrate", "status", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(
        (&v["state"], &v["held"]),
        (&serde_json::json!("paused"), &serde_json::json!(true)),
        "{v}"
    );
    assert!(
        v["blocked"].as_str().is_some_and(|b| b.starts_with("held")),
        "{v}"
    );
    let (c, v) = json(d.path(), &["migrate", "resume", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(
        (&v["state"], &v["held"]),
        (&serde_json::json!("migrating"), &serde_json::json!(false)),
        "{v}"
    );
    // With a consistency check every 0.1 s on the way (a healthy database passes them).
    let (c, v) = json(
        d.path(),
        &[
            "migrate",
            "run",
            "{DIR}",
            "--mb-per-sec",
            "64",
            "--check-every",
            "0.1",
        ],
    );
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["state"], "complete");
    assert_eq!(v["bytes_left"], 0);
    let (c, v) = json(d.path(), &["migrate", "status", "{DIR}"]);
    assert_eq!(c, 0);
    assert_eq!(v["state"], "complete");
    let (c, _, _) = run(d.path(), &["migrate", "rollback", "{DIR}"]);
    assert_eq!(c, 2);
    let (c, _, out) = run(d.path(), &["verify", "{DIR}"]);
    assert_eq!(c, 0, "{out}");
}

/// Output that cannot be written (a full disk, here `/dev/full`) is an error exit, or no
/// change to the exit code when it is only stderr, never a panic (exit 101): the error
/// report and the notes were written with `println!`/`eprintln!`, which panic.
#[test]
fn unwritable_output_never_panics() {
    let dir = fixture();
    let d = dir.path().to_str().unwrap();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let status = |args: &[&str], stdout_full: bool| {
        let _g = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(args);
        if stdout_full {
            c.stdout(full()).stderr(std::process::Stdio::null());
        } else {
            c.stdout(std::process::Stdio::null()).stderr(full());
        }
        c.status().unwrap().code()
    };
    // stdout full: the command fails, with exit 1 (an I/O error), even when the failure
    // report itself (its JSON on stdout) cannot be written either.
    assert_eq!(status(&["scan", d, "--json"], true), Some(1));
    assert_eq!(
        status(&["info", "/nonexistent-sluice-dir", "--json"], true),
        Some(2)
    );
    // stderr full: the exit code is the command's own.
    assert_eq!(status(&["scan", d], false), Some(0));
    assert_eq!(status(&["get", d, "no-such-key"], false), Some(1));
    assert_eq!(status(&["info", "/nonexistent-sluice-dir"], false), Some(2));
}

// ---------------------------------------------------------------------------------------
// Totals past u64 in a manifest that passes its per-file limits

/// A directory whose manifest is well formed and whose every file record is within the
/// per-file limits (a table of 2^40 bytes and 2^53 entries), but whose totals pass u64:
/// v1 (range) and v2 (hash:2) drain into v3 (hash:2), each draining version with 1,024
/// forwarding-pointer tables and v3's partition 0 with 2,048 data tables. The tables
/// themselves are empty files.
fn directory_of_huge_totals() -> tempfile::TempDir {
    use sluice::manifest::{EditRecord, FileRecord, ManifestWriter, VersionEdit};
    use sluice::sst::TableKind;
    use sluice::PartitionSpec;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hash = PartitionSpec::Hash {
        partitions: 2,
        seed: 0,
        hashed_prefix: None,
    };
    let range = PartitionSpec::Range { boundaries: vec![] };
    let mut e = VersionEdit::default();
    e.push(EditRecord::LogNumber(1));
    e.push(EditRecord::LastSeqno(1));
    for (id, spec) in [(1, &range), (2, &hash), (3, &hash)] {
        e.push(EditRecord::RegisterLayout {
            id,
            spec: spec.to_bytes(),
        });
        e.push(EditRecord::SetTarget(id));
    }
    let mut number = 10;
    let mut add = |e: &mut VersionEdit, layout_version, kind, n| {
        for _ in 0..n {
            std::fs::write(d.join(format!("{number:06}.sst")), b"").unwrap();
            e.push(EditRecord::AddFile(FileRecord {
                number,
                size: 1 << 40,
                layout_version,
                partition: 0,
                level: 6,
                kind,
                smallest: format!("k{number:08}").into(),
                largest: format!("k{number:08}").into(),
                min_seqno: 1,
                max_seqno: 1,
                entries: 1 << 53,
            }));
            number += 1;
        }
    };
    add(&mut e, 1, TableKind::Pointers, 1024);
    add(&mut e, 2, TableKind::Pointers, 1024);
    add(&mut e, 3, TableKind::Data, 2048);
    e.push(EditRecord::NextFile(number + 1));
    ManifestWriter::create(&sluice::fs::StdFs, d, 1, &e).unwrap();
    dir
}

/// `info` and `partitions` add such totals up without overflowing (a debug build of the
/// tool panicked on them, a release build wrapped and printed a wrong count).
#[test]
fn totals_past_u64_are_summed_without_overflow() {
    let dir = directory_of_huge_totals();
    let d = dir.path();
    for args in [&["info", "{DIR}"][..], &["partitions", "{DIR}"]] {
        let (c, out, err) = run(d, args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(c, 0, "{args:?}:\n{out}\n{err}");
    }
}

/// An output that cannot be written (a full disk under `> file`) is named as the output in
/// the error, not left to look like a problem of the database being read.
#[test]
fn an_output_write_failure_says_it_is_the_output() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let dir = fixture();
    for args in [&["wal", "--json"][..], &["info"], &["manifest"]] {
        let o = {
            let _g = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(args)
                .arg(dir.path())
                .stdout(std::fs::File::create("/dev/full").unwrap())
                .output()
                .unwrap()
        };
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("writing output"), "{args:?}: {err}");
    }
}

/// Rewrites the controller's persisted record as a crash in the middle of a step leaves
/// it: `edit` changes the record the last command stored.
fn crash_leaving(d: &Path, edit: impl FnOnce(&sluice::Db, &mut sluice_migrate::Record)) {
    let _g = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
    let db = sluice::Db::open(d, common::fixture_options()).unwrap();
    let (epoch, mut rec) = sluice_migrate::Record::stored(&db).unwrap().unwrap();
    edit(&db, &mut rec);
    db.store_controller_state(epoch, &rec.encode()).unwrap();
    db.close().unwrap();
}

/// `sluice migrate plan --spec hash:8:3` then `start` on `dir`, each exiting 0; the
/// start's JSON.
fn plan_and_start(dir: &Path) -> Value {
    let (c, v) = json(dir, &["migrate", "plan", "{DIR}", "--spec", "hash:8:3"]);
    assert_eq!(c, 0, "{v}");
    let (c, v) = json(dir, &["migrate", "start", "{DIR}"]);
    assert_eq!(c, 0, "{v}");
    v
}

/// "Each command continues where the previous one — or a crash — left off": a rollback
/// cut short by a crash after it was recorded (`RollingBack`) is completed by the next
/// `migrate rollback`, which must then report the rollback done (exit 0), not refuse it
/// as "nothing to roll back" (exit 2, a usage error, to a script or an operator who asked
/// for exactly the state the command left).
#[test]
fn a_rollback_rerun_after_a_crash_mid_rollback_succeeds() {
    let d = fixture();
    let v = plan_and_start(d.path());
    let from = v["plan"]["from"].as_u64().unwrap();
    // The rollback recorded RollingBack, then the process died before the switch back.
    crash_leaving(d.path(), |_, r| {
        r.state = sluice_migrate::State::RollingBack
    });
    let (c, v) = json(d.path(), &["migrate", "rollback", "{DIR}"]);
    assert_eq!(v["state"], "stable", "{v}");
    assert_eq!(v["target"].as_u64().unwrap(), from, "{v}");
    assert_eq!(c, 0, "the rollback asked for is done: {v}");
}

/// A start cut short by a crash after it switched the target (before it recorded
/// `Migrating`, or before its canary ran) is taken up again by the next `migrate start`:
/// it must finish the start (the canary) and exit 0, not refuse with "cannot start from
/// migrating" and leave the migration held.
#[test]
fn a_start_rerun_after_a_crash_after_the_switch_succeeds() {
    for state in [
        sluice_migrate::State::Validating,
        sluice_migrate::State::Migrating,
    ] {
        a_start_rerun_after_a_crash_in(state);
    }
}

fn a_start_rerun_after_a_crash_in(state: sluice_migrate::State) {
    let d = fixture();
    let v = plan_and_start(d.path());
    let to = v["plan"]["to"].as_u64().unwrap();
    // The target was switched, then the process died before recording Migrating.
    crash_leaving(d.path(), |db, r| {
        // The start holds movement before its switch; the canary's pass releases it.
        db.hold_migration(true).unwrap();
        r.state = state;
        r.plan.as_mut().unwrap().canary_done = false;
    });
    let (_, v) = json(d.path(), &["migrate", "status", "{DIR}"]);
    assert_eq!(v["held"], true, "the crash left it held: {v}");
    let (c, v) = json(d.path(), &["migrate", "start", "{DIR}"]);
    assert_eq!(v["state"], "migrating", "{v}");
    assert_eq!(v["target"].as_u64().unwrap(), to, "{v}");
    assert_eq!(v["held"], false, "held past the canary: {v}");
    assert_eq!(c, 0, "the start asked for is done ({state:?}): {v}");
}

/// A controller record that decodes but cannot be (a migration in progress with no plan:
/// nothing tells where it goes or where a rollback returns) is damage in the manifest:
/// every command that attaches reports it as such (exit 3, naming the manifest), rather
/// than as a refused step of the operator's (exit 2, "no migration is planned") that
/// nothing the operator can run gets past.
#[test]
fn a_record_in_progress_without_a_plan_is_reported_as_damage() {
    let d = fixture();
    plan_and_start(d.path());
    crash_leaving(d.path(), |_, r| r.plan = None);
    for cmd in ["rollback", "pause", "finish"] {
        let (c, v) = json(d.path(), &["migrate", cmd, "{DIR}"]);
        assert_eq!(c, 3, "{cmd}: {v}");
        assert_eq!(v["error"]["kind"], "corruption", "{cmd}: {v}");
        assert!(
            v["error"]["file"]
                .as_str()
                .is_some_and(|f| f.contains("MANIFEST")),
            "{cmd}: {v}"
        );
    }
}

/// Two controllers at once: a `migrate` command while another process holds the database
/// with a controller attached is fenced with exit 4 and changes nothing; the holder's
/// controller goes on.
#[test]
fn a_second_migrate_process_is_fenced_with_exit_4() {
    let d = fixture();
    plan_and_start(d.path());
    let (db, mut first) = {
        let _g = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
        let db = sluice::Db::open(d.path(), common::fixture_options()).unwrap();
        let c = sluice_migrate::Controller::attach(db.clone(), Default::default()).unwrap();
        (db, c)
    };
    let before = db.controller_state();
    for cmd in ["pause", "resume", "rollback", "finish", "start", "run"] {
        let (c, v) = json(d.path(), &["migrate", cmd, "{DIR}"]);
        assert_eq!(c, 4, "{cmd}: {v}");
        assert_eq!(v["error"]["kind"], "busy", "{cmd}: {v}");
    }
    let (c, v) = json(
        d.path(),
        &["migrate", "plan", "{DIR}", "--spec", "hash:4:9"],
    );
    assert_eq!(c, 4, "{v}");
    let (c, v) = json(d.path(), &["migrate", "status", "{DIR}"]);
    assert_eq!(
        (c, &v["state"]),
        (0, &serde_json::json!("migrating")),
        "{v}"
    );
    assert!(
        db.controller_state() == before,
        "a fenced command claimed nothing"
    );
    first.pause().unwrap();
    first.resume_migration().unwrap();
    first.finish().unwrap();
    drop(first);
    let _g = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
    db.close().unwrap();
    drop(_g);
    let (c, v) = json(d.path(), &["migrate", "status", "{DIR}"]);
    assert_eq!((c, &v["state"]), (0, &serde_json::json!("complete")), "{v}");
}
