//! How long one large `WriteBatch` takes to commit when its keys spread over many
//! partitions: the per-key work of a commit (WAL, memtable, and the per-partition load
//! tally made under the WAL lock) for a batch of `KEYS` keys over `hash:PARTITIONS`.
//! Prints the fastest of `ROUNDS` commits (the memtable is large enough that none waits
//! for a flush).
//!
//! `cargo run --release -p sluice --example large_batch [KEYS] [PARTITIONS] [ROUNDS]`
//! (defaults 100000, 64, 20).

use std::time::Instant;

use sluice::{Db, Options, PartitionSpec, WriteBatch};

fn arg(i: usize, default: u64) -> Result<u64, String> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(a) => a
            .parse()
            .map_err(|e| format!("argument {i} ({a:?}) is not a count: {e}")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = arg(1, 100_000)?.max(1);
    let partitions = u32::try_from(arg(2, 64)?)?;
    let rounds = arg(3, 20)?.max(1);
    let dir = tempfile::tempdir()?;
    let opts = Options {
        partition: PartitionSpec::hashed(partitions, 1),
        memtable_bytes: 256 << 20,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts)?;
    let mut best = f64::MAX;
    for round in 0..rounds {
        let mut b = WriteBatch::new();
        for i in 0..keys {
            b.put(format!("k{:016}", round * keys + i), [7u8; 16]);
        }
        let t = Instant::now();
        db.write(b)?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("fastest commit of a {keys}-key batch over hash:{partitions}: {best:.2} ms");
    db.close()?;
    Ok(())
}
