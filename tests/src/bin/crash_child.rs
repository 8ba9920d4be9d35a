//! Child process for the crash and lock tests (`tests/tests/crash.rs`,
//! `tests/tests/corruption.rs`). Not a user tool.
//!
//! ```text
//! crash_child write <db-dir> <ack-log> <seed> <first-counter>
//!     Opens the database and writes operations <first-counter>, +1, … of the crash
//!     workload (`sluice_tests::crash_workload`) until killed, switching the target layout
//!     as the workload says. After each call returns it appends a line to <ack-log>.
//! crash_child lock <db-dir>
//!     Tries to open the database once and prints LOCKED, OPENED or ERROR <message>.
//! ```
//!
//! Why the acknowledgement log needs no fsync: the parent kills this process (SIGKILL), it
//! does not cut the machine's power. A line handed to the kernel with one `write(2)` is in
//! the page cache the moment the call returns and the parent reads it after the child is
//! dead, so every acknowledgement line written is seen. Each line is written only after the
//! engine call it reports has returned, so a line never claims more than was acknowledged;
//! a kill between the return and the line merely loses an acknowledgement (the parent then
//! allows that one in-flight operation either way). A line cut short by the kill has no
//! newline and is ignored.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;

use sluice::{Db, Error};
use sluice_tests::crash_workload::{self as w, Ack};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("write") if args.len() == 6 => {
            let seed = args[4].parse().expect("seed");
            let start = args[5].parse().expect("first counter");
            write(&args[2], &args[3], seed, start)
        }
        Some("lock") if args.len() == 3 => lock(&args[2]),
        _ => {
            eprintln!("usage: crash_child write <db-dir> <ack-log> <seed> <first-counter> | lock <db-dir>");
            ExitCode::from(64)
        }
    }
}

fn ack(log: &mut File, a: Ack) {
    // One write(2) per line (the File is unbuffered).
    log.write_all(a.line().as_bytes())
        .expect("writing the ack log");
}

fn write(dir: &str, ack_path: &str, seed: u64, start: u64) -> ExitCode {
    let fail = |what: &str, c: u64, e: Error| -> ExitCode {
        eprintln!("crash_child: {what} failed at op {c}: {e}");
        ExitCode::from(2)
    };
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(ack_path)
        .expect("opening the ack log");
    // About every other cycle writes its tables with key-delta blocks, so a database holds both
    // kinds when it is killed.
    let opts = sluice::Options {
        key_delta_blocks: (seed ^ start) % 2 == 1,
        ..w::options()
    };
    let db = match Db::open(dir, opts) {
        Ok(db) => db,
        Err(e) => return fail("open", start, e),
    };
    ack(&mut log, Ack::Ready(start));
    let mut retries = 0;
    let mut c = start;
    loop {
        let t = w::target_for(c);
        let before = retries;
        let r = w::ensure_target(&db, t, &mut retries);
        if retries > before {
            eprintln!(
                "crash_child: RETIRE-RACE: the {} version was retired between layout() and set_target ({} times so far)",
                t.name(),
                retries
            );
        }
        match r {
            Ok(true) => ack(&mut log, Ack::Target(t, c)),
            Ok(false) => {}
            Err(e) => return fail("set_target", c, e),
        }
        let op = w::op(seed, c);
        if let Err(e) = op.write(&db) {
            return fail("write", c, e);
        }
        ack(&mut log, Ack::Write { c, sync: op.sync });
        // Point reads at the latest snapshot: lazy moves out of draining layouts happen
        // while the process may be killed.
        if let Err(e) = db.get(w::key((c.wrapping_mul(2_654_435_761) % 400) as u32)) {
            return fail("get", c, e);
        }
        if c.is_multiple_of(61) {
            if let Err(e) = db.sync_wal() {
                return fail("sync_wal", c, e);
            }
            ack(&mut log, Ack::SyncWal(c));
        }
        c += 1;
    }
}

fn lock(dir: &str) -> ExitCode {
    let opts = sluice::Options {
        create_if_missing: false,
        ..sluice::Options::default()
    };
    match Db::open(dir, opts) {
        Err(Error::Locked { path }) => {
            println!("LOCKED {}", path.display());
            ExitCode::SUCCESS
        }
        Ok(db) => {
            let r = db.close();
            println!("OPENED {r:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("ERROR {e}");
            ExitCode::from(1)
        }
    }
}
