//! How long a transaction with a large read set holds other writers up at its commit.
//!
//! Loads `KEYS` keys, then runs one writer putting random keys of its own (none a
//! transaction reads, so the transactions commit) throughout, first alone and then while
//! the main thread commits `ROUNDS` transactions that each read `READS` random loaded keys
//! and write one. Prints each commit's duration and the writer's latency in both
//! phases (median, p99.9, max, and puts slower than 10 ms).
//!
//! `cargo run --release -p sluice --example large_txn [READS] [KEYS] [ROUNDS] [DIR]`
//! (defaults 200000, 1000000, 5, a temporary directory).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::{Db, Options};

fn key(i: u64) -> String {
    format!(
        "key{:013}",
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1_000_000_000_000
    )
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn summary(mut lat: Vec<u64>) -> String {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    format!(
        "{} puts, p50 {:.1} µs, p99.9 {:.1} µs, max {:.1} ms, {} over 10 ms",
        lat.len(),
        at(0.5) as f64 / 1e3,
        at(0.999) as f64 / 1e3,
        lat[lat.len() - 1] as f64 / 1e6,
        lat.iter().filter(|&&n| n > 10_000_000).count()
    )
}

/// Puts random keys of its own until `stop`; returns each put's latency in nanoseconds.
fn writer(db: Db, keys: u64, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let k = format!("w{}", key(rng.below(keys)));
        let t = Instant::now();
        db.put(k, "w".repeat(100)).unwrap();
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat
}

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (reads, keys, rounds) = (arg(1, 200_000), arg(2, 1_000_000), arg(3, 5));
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::args()
        .nth(4)
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let db = Db::open(&dir, Options::default()).unwrap();
    for i in 0..keys {
        db.put(key(i), "v".repeat(100)).unwrap();
    }
    db.flush().unwrap();
    println!("{keys} keys loaded; transactions read {reads} keys each");

    let alone = Arc::new(AtomicBool::new(false));
    let w = {
        let (db, stop) = (db.clone(), alone.clone());
        std::thread::spawn(move || writer(db, keys, stop))
    };
    std::thread::sleep(Duration::from_secs(3));
    alone.store(true, Ordering::Relaxed);
    println!("writer alone:            {}", summary(w.join().unwrap()));

    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || writer(db, keys, stop))
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut committed, mut conflicts) = (0, 0);
    for round in 0..rounds {
        let mut t = db.transaction();
        for _ in 0..reads {
            t.get(key(rng.below(keys))).unwrap();
        }
        t.put(format!("txn{round}"), "done");
        let start = Instant::now();
        let r = t.commit();
        let took = start.elapsed();
        let what = match r {
            Ok(()) => {
                committed += 1;
                "committed"
            }
            Err(sluice::Error::Conflict { .. }) => {
                conflicts += 1;
                "conflict"
            }
            Err(e) => panic!("{e}"),
        };
        println!("commit {round}: {:.1} ms, {what}", took.as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    println!("writer with transactions: {}", summary(w.join().unwrap()));
    println!("{committed} committed, {conflicts} conflicts");
    db.close().unwrap();
}
