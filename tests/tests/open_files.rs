//! A database of many more tables than the process may open files: it opens, reads,
//! writes, compacts and reopens under a low `RLIMIT_NOFILE`, keeping at most
//! `max_open_files` table files open, and so does a read-only handle. And a flush into many more partitions than that
//! limit: its table writers hold a descriptor only once they have 256 KiB to write.
//!
//! One test in a binary of its own: the limit is the process's, and the open descriptors
//! are counted in `/proc/self/fd`.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use sluice::{Db, Options};
use sluice_tests::{dump, hash, table_fds};

fn key(i: u32) -> String {
    format!("key{i:07}")
}

fn value(i: u32, round: u32) -> String {
    format!("{round}:{i}:{}", "v".repeat(90))
}

fn table_count(db: &Db) -> usize {
    db.stats().levels.iter().map(|l| l.files).sum()
}

fn options() -> Options {
    Options {
        partition: hash(4, 7),
        target_file_bytes: 1024,
        level_base_bytes: 16 << 10,
        ..Options::tiny()
    }
}

#[test]
fn many_tables_under_a_low_file_limit() {
    const KEYS: u32 = 8000;
    const LIMIT: u64 = 128;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    for i in 0..KEYS {
        db.put(key(i), value(i, 0)).unwrap();
    }
    db.flush().unwrap();
    db.compact().unwrap();
    let tables = table_count(&db);
    eprintln!("{tables} tables, a limit of {LIMIT} descriptors");
    assert!(
        tables as u64 > 4 * LIMIT,
        "the test needs many more tables than the limit: {tables}"
    );
    db.close().unwrap();

    let saved = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(LIMIT),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    let outcome = std::panic::catch_unwind(|| {
        // The default cap: half the soft limit.
        let db = Db::open(dir.path(), options()).unwrap();
        let cap = (LIMIT / 2) as usize;
        let check = |db: &Db, round: &dyn Fn(u32) -> u32| {
            for i in (0..KEYS).step_by(7) {
                let got = db.get(key(i)).unwrap();
                assert_eq!(got.as_deref(), Some(value(i, round(i)).as_bytes()), "{i}");
            }
            let all = dump(db).unwrap();
            assert_eq!(all.len(), KEYS as usize);
            for (k, v) in all {
                let i: u32 = std::str::from_utf8(&k[3..]).unwrap().parse().unwrap();
                assert_eq!(v, value(i, round(i)).as_bytes(), "{i}");
            }
            let s = db.stats();
            assert!(s.open_table_files <= cap, "{} open", s.open_table_files);
            // The cached files, plus a few a background job may hold for the moment (an
            // input evicted mid-read, an output being written).
            let fds = table_fds(db.path());
            assert!(fds <= cap + 8, "{fds} table files open, cap {cap}");
        };
        check(&db, &|_| 0);
        assert!(
            db.stats().table_file_opens > tables as u64,
            "files were closed and opened again"
        );
        // Overwrite a third of the keys: flushes and compactions under the same limit.
        for i in (0..KEYS).step_by(3) {
            db.put(key(i), value(i, 1)).unwrap();
        }
        db.flush().unwrap();
        db.compact().unwrap();
        let round = |i: u32| u32::from(i.is_multiple_of(3));
        check(&db, &round);
        db.close().unwrap();
        let db = Db::open(dir.path(), options()).unwrap();
        check(&db, &round);
        db.close().unwrap();
        // A read-only handle (what `sluice get` and `sluice scan` open) under the same
        // limit: it pins what it can and shares the rest of its cap.
        let ro = Db::open_read_only(dir.path(), options()).unwrap();
        check(&ro, &round);
        drop(ro);

        // One flush writes a table into each of 512 partitions, four times the limit.
        let wide = tempfile::tempdir().unwrap();
        let opts = || Options {
            partition: hash(512, 3),
            ..Options::default()
        };
        let db = Db::open(wide.path(), opts()).unwrap();
        for i in 0..KEYS {
            db.put(key(i), value(i, 2)).unwrap();
        }
        db.flush().unwrap();
        let l0 = db.stats().levels[0].files;
        assert!(l0 as u64 > 3 * LIMIT, "{l0} tables flushed");
        check(&db, &|_| 2);
        db.close().unwrap();
        let db = Db::open(wide.path(), opts()).unwrap();
        check(&db, &|_| 2);
        db.close().unwrap();
    });
    setrlimit(Resource::Nofile, saved).unwrap();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}
