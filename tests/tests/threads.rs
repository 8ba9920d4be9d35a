//! The background threads a database runs, as the OS sees them (Linux: /proc). Its own
//! test binary, so that no other test's database adds threads while it looks.

#![cfg(target_os = "linux")]

use sluice::{Db, Options};

/// (name, nice) of every thread of this process whose name starts with `sluice-`.
fn sluice_threads() -> Vec<(String, i64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = e.unwrap().path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue; // exited meanwhile
        };
        let name = name.trim_end().to_string();
        if !name.starts_with("sluice-") {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).unwrap();
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i64 = rest.split(' ').nth(19 - 3).unwrap().parse().unwrap();
        v.push((name, nice));
    }
    v.sort();
    v
}

fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19 - 3).unwrap().parse().unwrap()
}

/// Migration compactions run on a thread of their own at `migration_nice` above the
/// process's priority (capped at 19); flushes (which also have a thread of their own)
/// and compactions keep it.
#[test]
fn the_migration_thread_runs_at_a_lower_priority_and_the_workers_do_not() {
    let base = own_nice();
    for nice in [10, 0, 19] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            Options {
                migration_nice: nice,
                ..Options::default()
            },
        )
        .unwrap();
        // A thread names itself and lowers its own priority once it runs: wait for that.
        let want = (base + nice as i64).min(19);
        let expect: Vec<(String, i64)> = vec![
            ("sluice-bg-0".into(), base),
            ("sluice-bg-1".into(), base),
            ("sluice-flush".into(), base),
            ("sluice-migrate".into(), want),
            ("sluice-wal".into(), base),
        ];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let threads = loop {
            let t = sluice_threads();
            if t == expect || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(threads, expect, "migration_nice {nice}");
        db.close().unwrap();
        assert_eq!(sluice_threads(), vec![], "threads left after close");
    }
    assert!(Db::open(
        tempfile::tempdir().unwrap().path(),
        Options {
            migration_nice: 20,
            ..Options::default()
        }
    )
    .is_err());
}
