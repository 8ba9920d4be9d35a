//! The CPU an open database uses while nothing is asked of it.
//!
//! Opens a database of `PARTITIONS` hash partitions, writes `KEYS` keys, flushes, compacts,
//! lets background work settle for 5 s, then measures the process's CPU time (user +
//! system, from `/proc/self/stat`) over `SECS` idle seconds.
//!
//! `cargo run --release -p sluice --example idle_cpu [PARTITIONS] [KEYS] [SECS]`
//! (defaults 4096, 200000, 20).

use std::time::{Duration, Instant};

use sluice::{Db, Options, PartitionSpec};

/// User + system CPU time of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command (which may hold spaces) start past the last ')'.
    let rest = &stat[stat.rfind(')').expect("a command field") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (partitions, keys, secs) = (arg(1, 4096), arg(2, 200_000), arg(3, 20));
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        partition: PartitionSpec::hashed(partitions as u32, 1),
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..keys {
        db.put(format!("key{i:012}"), "v".repeat(100)).unwrap();
    }
    db.flush().unwrap();
    db.compact().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_secs(secs));
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_ticks() - c0);
    // Clock ticks are 1/100 s on Linux (sysconf(_SC_CLK_TCK)).
    let cpu_secs = cpu as f64 / 100.0;
    println!(
        "{partitions} partitions, {keys} keys: {cpu_secs:.2} s of CPU in {wall:.1} s idle \
         ({:.2}% of a core)",
        100.0 * cpu_secs / wall
    );
    db.close().unwrap();
}
