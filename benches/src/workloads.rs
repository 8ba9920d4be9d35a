//! The workloads and the harness that runs them on N threads with per-operation timing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use sluice::{Db, WriteOptions};

use crate::engine::Kv;
use crate::keys::{mix64, write_key, write_missing_key, KeyChooser, Permutation, ValueGen};
use crate::report::Latency;
use crate::BenchResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Write --num keys in key order.
    #[value(name = "fillseq")]
    FillSeq,
    /// Write each of --num keys once, in random order.
    #[value(name = "fillrandom")]
    FillRandom,
    /// Write --num random keys of the existing key space.
    #[value(name = "overwrite")]
    Overwrite,
    /// Point-read random existing keys.
    #[value(name = "readrandom")]
    ReadRandom,
    /// Point-read keys that do not exist.
    #[value(name = "readmissing")]
    ReadMissing,
    /// Seek to a random key and read the next 100 entries.
    #[value(name = "seekrandom")]
    SeekRandom,
    /// --threads measured readers while one writer writes continuously.
    #[value(name = "readwhilewriting")]
    ReadWhileWriting,
    /// Write two random accounts in one atomic batch (no reads).
    #[value(name = "batchtransfer")]
    BatchTransfer,
    /// Read two random accounts and write both back as an optimistic transaction (retried on conflict).
    #[value(name = "txntransfer")]
    TxnTransfer,
    /// Overwrite-heavy writes over a small key space with a small memtable: stalls, write
    /// amplification and a per-second timeline of compaction debt.
    #[value(name = "compactionstress")]
    CompactionStress,
    /// Zipfian reads and writes on a hash layout: per-partition load shares, and optionally
    /// the effect of a write limit on the hottest partition.
    #[value(name = "hotpartition")]
    HotPartition,
    /// Load, then migrate to --to (hash:16) under a mixed foreground load: timeline, chart,
    /// latency and throughput while migrating vs stable, migration write amplification.
    #[value(name = "migration")]
    Migration,
    /// Point-read cost with three layout versions live vs one (a static, controlled state).
    #[value(name = "migration3")]
    Migration3,
    /// range -> biased hash -> (at ~60%) corrected hash, under load.
    #[value(name = "biasfix")]
    BiasFix,
    /// Migration under load, rolled back at ~50% and then forward again.
    #[value(name = "rollback")]
    Rollback,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::FillSeq => "fillseq",
            Workload::FillRandom => "fillrandom",
            Workload::Overwrite => "overwrite",
            Workload::ReadRandom => "readrandom",
            Workload::ReadMissing => "readmissing",
            Workload::SeekRandom => "seekrandom",
            Workload::ReadWhileWriting => "readwhilewriting",
            Workload::BatchTransfer => "batchtransfer",
            Workload::TxnTransfer => "txntransfer",
            Workload::CompactionStress => "compactionstress",
            Workload::HotPartition => "hotpartition",
            Workload::Migration => "migration",
            Workload::Migration3 => "migration3",
            Workload::BiasFix => "biasfix",
            Workload::Rollback => "rollback",
        }
    }

    /// Scenarios drive the engine themselves (their own phases, layouts and timelines), and
    /// run on Sluice only.
    pub fn is_scenario(self) -> bool {
        matches!(
            self,
            Workload::CompactionStress
                | Workload::HotPartition
                | Workload::Migration
                | Workload::Migration3
                | Workload::BiasFix
                | Workload::Rollback
        )
    }

    /// Workloads that can run against a peer engine.
    pub fn runs_on_peers(self) -> bool {
        !self.is_scenario() && self != Workload::TxnTransfer
    }

    /// Workloads that measure writes (whose figures redb, committing without durability,
    /// does not make as the other engines do).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Workload::FillSeq
                | Workload::FillRandom
                | Workload::Overwrite
                | Workload::BatchTransfer
                | Workload::TxnTransfer
        )
    }

    /// Read workloads run `--reads` operations; the others `--num`.
    fn is_read(self) -> bool {
        matches!(
            self,
            Workload::ReadRandom
                | Workload::ReadMissing
                | Workload::SeekRandom
                | Workload::ReadWhileWriting
        )
    }

    /// Whether the report's `found` figure means anything for this workload.
    fn counts_hits(self) -> bool {
        self.is_read() || self == Workload::TxnTransfer
    }
}

/// What every workload needs to know, fixed for the whole run.
pub struct Settings {
    /// Size of the key space: keys are `0..num`.
    pub num: u64,
    pub reads: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub threads: usize,
    pub write_options: WriteOptions,
    pub duration: Option<Duration>,
    pub seed: u64,
    /// How random workloads pick existing keys (`--distribution`).
    pub chooser: KeyChooser,
}

/// Entries a `seekrandom` operation reads after its seek, as in db_bench's `seek_nexts`.
const SCAN_LENGTH: usize = 100;

/// What the harness measured.
pub struct Measured {
    pub ops: u64,
    pub seconds: f64,
    pub latency: Latency,
    pub found: Option<u64>,
    pub background_writes: Option<u64>,
}

/// Per-thread state every operation closure starts from.
pub(crate) struct ThreadKit {
    pub rng: fastrand::Rng,
    pub key: Vec<u8>,
    pub values: ValueGen,
    pub chooser: KeyChooser,
}

impl ThreadKit {
    pub fn new(s: &Settings, workload_index: usize, thread: usize) -> ThreadKit {
        // Distinct, reproducible streams per (workload, thread) from one --seed.
        let seed = mix64(s.seed ^ mix64(((workload_index as u64) << 32) | thread as u64));
        let mut rng = fastrand::Rng::with_seed(seed);
        let values = ValueGen::new(&mut rng, s.value_size);
        ThreadKit {
            rng,
            key: vec![0; s.key_size],
            values,
            chooser: s.chooser.clone(),
        }
    }

    /// The next existing key index, from `--distribution`.
    #[inline]
    pub fn pick(&mut self) -> u64 {
        self.chooser.next(&mut self.rng)
    }
}

pub fn run<K: Kv>(
    db: &K,
    s: &Settings,
    workload: Workload,
    workload_index: usize,
) -> BenchResult<Measured> {
    let total = if workload.is_read() { s.reads } else { s.num };
    let n = s.num;
    let wo = s.write_options;
    let kit = |t: usize| ThreadKit::new(s, workload_index, t);
    let mut m = match workload {
        Workload::FillSeq => {
            let split = split_ops(total, s.threads);
            harness(s, total, |t| {
                let mut k = kit(t);
                let first = split[..t].iter().sum::<u64>();
                move |i, sw: &mut Stopwatch| {
                    write_key(&mut k.key, first + i);
                    let v = k.values.next(s.value_size);
                    sw.start();
                    put(db, &k.key, v)
                }
            })?
        }
        Workload::FillRandom => {
            let perm = Permutation::new(n, mix64(s.seed ^ workload_index as u64));
            let split = split_ops(total, s.threads);
            let perm = &perm;
            harness(s, total, |t| {
                let mut k = kit(t);
                let first = split[..t].iter().sum::<u64>();
                move |i, sw: &mut Stopwatch| {
                    write_key(&mut k.key, perm.get(first + i));
                    let v = k.values.next(s.value_size);
                    sw.start();
                    put(db, &k.key, v)
                }
            })?
        }
        Workload::Overwrite => harness(s, total, |t| {
            let mut k = kit(t);
            move |_, sw: &mut Stopwatch| {
                let i = k.pick();
                write_key(&mut k.key, i);
                let v = k.values.next(s.value_size);
                sw.start();
                put(db, &k.key, v)
            }
        })?,
        Workload::ReadRandom => harness(s, total, |t| {
            let mut k = kit(t);
            move |_, sw: &mut Stopwatch| {
                let i = k.pick();
                write_key(&mut k.key, i);
                sw.start();
                Ok(db.get(&k.key)? as u64)
            }
        })?,
        Workload::ReadMissing => harness(s, total, |t| {
            let mut k = kit(t);
            move |_, sw: &mut Stopwatch| {
                let i = k.pick();
                write_missing_key(&mut k.key, i);
                sw.start();
                Ok(db.get(&k.key)? as u64)
            }
        })?,
        Workload::SeekRandom => harness(s, total, |t| {
            let mut k = kit(t);
            move |_, sw: &mut Stopwatch| {
                let i = k.pick();
                write_key(&mut k.key, i);
                sw.start();
                db.scan(&k.key, SCAN_LENGTH)
            }
        })?,
        Workload::ReadWhileWriting => read_while_writing(db, s, workload_index)?,
        Workload::CompactionStress
        | Workload::HotPartition
        | Workload::Migration
        | Workload::Migration3
        | Workload::BiasFix
        | Workload::Rollback => {
            return Err(format!("{} is a scenario, not a plain workload", workload.name()).into())
        }
        Workload::BatchTransfer | Workload::TxnTransfer => {
            if n < 2 {
                return Err(
                    "batchtransfer and txntransfer need --num of at least 2 (two distinct accounts)".into(),
                );
            }
            let sluice = match (workload, db.sluice()) {
                (Workload::TxnTransfer, None) => {
                    return Err("txntransfer runs on Sluice only (its transactions)".into())
                }
                (_, sluice) => sluice,
            };
            harness(s, total, |t| {
                let mut k = kit(t);
                let mut other = vec![0; s.key_size];
                move |_, sw: &mut Stopwatch| {
                    let a = k.pick();
                    // A second, distinct account from the same distribution.
                    let mut b = k.pick();
                    while b == a {
                        b = if matches!(k.chooser, KeyChooser::Uniform { .. }) {
                            (a + 1 + k.rng.u64(0..n - 1)) % n
                        } else {
                            k.pick()
                        };
                    }
                    write_key(&mut k.key, a);
                    write_key(&mut other, b);
                    match (workload, sluice) {
                        // The values' buffers and the amount are made first; inside the
                        // timed part only the balance arithmetic, which needs what the
                        // transaction reads, is the harness's.
                        (Workload::TxnTransfer, Some(sdb)) => {
                            let amount = k.rng.u64(1..=100);
                            let (v1, v2) = k.values.next_pair(s.value_size);
                            let (mut from_new, mut to_new) = (v1.to_vec(), v2.to_vec());
                            sw.start();
                            txn_transfer(
                                sdb,
                                (&k.key, &mut from_new),
                                (&other, &mut to_new),
                                amount,
                                &wo,
                            )
                        }
                        _ => {
                            let (v1, v2) = k.values.next_pair(s.value_size);
                            sw.start();
                            transfer(db, &k.key, v1, &other, v2)
                        }
                    }
                }
            })?
        }
    };
    if !workload.counts_hits() {
        m.found = None;
    }
    Ok(m)
}

fn put<K: Kv>(db: &K, key: &[u8], value: &[u8]) -> BenchResult<u64> {
    db.put(key, value)?;
    Ok(0)
}

/// An atomic 2-key batch, as a transfer writes it: both accounts' new values in one
/// `WriteBatch` (one seqno range, one WAL record), no reads. The read-modify-write shape,
/// with conflict checks, is `txntransfer`.
fn transfer<K: Kv>(db: &K, from: &[u8], v1: &[u8], to: &[u8], v2: &[u8]) -> BenchResult<u64> {
    db.put2(from, v1, to, v2)?;
    Ok(1)
}

/// The ledger's transfer as an optimistic transaction: read both balances at a snapshot,
/// write both back, commit (retrying on conflict). Counts the retries as misses.
/// `from` and `to` are each an account's key and the buffer its new value is written into.
fn txn_transfer(
    db: &Db,
    (from, from_new): (&[u8], &mut Vec<u8>),
    (to, to_new): (&[u8], &mut Vec<u8>),
    amount: u64,
    wo: &WriteOptions,
) -> BenchResult<u64> {
    let balance = |v: Option<&[u8]>| -> u64 {
        let mut raw = [0u8; 8];
        if let Some(v) = v {
            let n = v.len().min(8);
            raw[..n].copy_from_slice(&v[..n]);
        }
        u64::from_le_bytes(raw)
    };
    let set = |buf: &mut Vec<u8>, bal: u64| {
        let n = buf.len().min(8);
        buf[..n].copy_from_slice(&bal.to_le_bytes()[..n]);
    };
    loop {
        let mut t = db.transaction();
        let from_old = t.get(from)?;
        let to_old = t.get(to)?;
        set(from_new, balance(from_old.as_deref()).wrapping_sub(amount));
        set(to_new, balance(to_old.as_deref()).wrapping_add(amount));
        t.put(from, &from_new[..]);
        t.put(to, &to_new[..]);
        match t.commit_opt(wo) {
            Ok(()) => return Ok((from_old.is_some() && to_old.is_some()) as u64),
            Err(sluice::Error::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `--threads` measured readers, plus one writer that overwrites random keys until the
/// readers are done. Only the readers are timed: this measures read latency under write and
/// compaction load, the writer's own rate is reported as `background_writes`.
fn read_while_writing<K: Kv>(db: &K, s: &Settings, workload_index: usize) -> BenchResult<Measured> {
    let stop = AtomicBool::new(false);
    let writer_failed = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let (stop, writer_failed, written) = (&stop, &writer_failed, &written);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> BenchResult<()> {
            let mut k = ThreadKit::new(s, workload_index, usize::MAX);
            while !stop.load(Ordering::Relaxed) {
                let i = k.pick();
                write_key(&mut k.key, i);
                if let Err(e) = put(db, &k.key, k.values.next(s.value_size)) {
                    writer_failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let readers = harness(s, s.reads, |t| {
            let mut k = ThreadKit::new(s, workload_index, t);
            move |_, sw: &mut Stopwatch| {
                // Stop reading at once rather than report reads measured without writes.
                if writer_failed.load(Ordering::Relaxed) {
                    return Err("background writer failed".into());
                }
                let i = k.pick();
                write_key(&mut k.key, i);
                sw.start();
                Ok(db.get(&k.key)? as u64)
            }
        });
        stop.store(true, Ordering::Relaxed);
        let writer_result = writer
            .join()
            .map_err(|_| "background writer panicked".to_string())?;
        // The writer's error explains a reader's "background writer failed"; report it first.
        writer_result?;
        let mut m = readers?;
        m.background_writes = Some(written.load(Ordering::Relaxed));
        Ok(m)
    })
}

/// Key and value bytes a workload wrote, for engines that do not count them.
pub fn user_bytes_estimate(w: Workload, m: &Measured, s: &Settings) -> u64 {
    let per = (s.key_size + s.value_size) as u64;
    match w {
        Workload::FillSeq | Workload::FillRandom | Workload::Overwrite => m.ops * per,
        Workload::BatchTransfer | Workload::TxnTransfer => 2 * m.ops * per,
        Workload::ReadWhileWriting => m.background_writes.unwrap_or(0) * per,
        _ => 0,
    }
}

/// Splits `total` operations over `threads` so the shares add up exactly.
pub(crate) fn split_ops(total: u64, threads: usize) -> Vec<u64> {
    let t = threads as u64;
    (0..t)
        .map(|i| total / t + u64::from(i < total % t))
        .collect()
}

/// Runs `threads` threads that start together: each builds its state with `setup(thread)`
/// (untimed), all wait on one barrier, then each runs `work(state, thread)`. Returns the
/// wall-clock seconds from the barrier's release to the last thread's end, and the threads'
/// results in thread order (the first error, or `"a {who} thread panicked"`).
pub(crate) fn start_together<S, T, Setup, Work>(
    threads: usize,
    who: &str,
    setup: Setup,
    work: Work,
) -> BenchResult<(f64, Vec<T>)>
where
    Setup: Fn(usize) -> S + Sync,
    Work: Fn(S, usize) -> BenchResult<T> + Sync,
    T: Send,
{
    let barrier = Barrier::new(threads + 1);
    let (start, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (setup, work, barrier) = (&setup, &work, &barrier);
                scope.spawn(move || {
                    let state = setup(t);
                    barrier.wait();
                    work(state, t)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (start, results)
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(threads);
    for r in results {
        out.push(r.map_err(|_| format!("a {who} thread panicked"))??);
    }
    Ok((seconds, out))
}

/// When an operation's measured latency starts: the operation calls [`Stopwatch::start`]
/// once its inputs (key, value) are made, just before it calls the engine, so that a
/// latency is the engine's alone. (Throughput is wall-clock time over every operation,
/// generation included, as db_bench counts it.) The clock is read twice per operation,
/// at the start and at the end (a third time under `--duration-secs`).
pub(crate) struct Stopwatch(Option<Instant>);

impl Stopwatch {
    #[inline]
    pub fn start(&mut self) {
        self.0 = Some(Instant::now());
    }
}

/// Runs `total` operations over `s.threads` threads. `make(thread)` builds a thread's
/// operation closure (outside the timed region); the closure gets the operation's index
/// within its thread and a [`Stopwatch`] to start before its engine call, and returns how
/// many hits it saw. Every thread starts on one barrier so the wall-clock time covers only
/// concurrent work; an error in any thread stops them all.
pub(crate) fn harness<F, Op>(s: &Settings, total: u64, make: F) -> BenchResult<Measured>
where
    F: Fn(usize) -> Op + Sync,
    Op: FnMut(u64, &mut Stopwatch) -> BenchResult<u64>,
{
    let split = split_ops(total, s.threads);
    let failed = AtomicBool::new(false);
    let setup = |t| (make(t), Latency::new());
    let (seconds, results) = start_together(s.threads, "workload", setup, |state, t| {
        let (mut op, mut latency): (Op, Latency) = state;
        let mut hits = 0;
        let deadline = s.duration.map(|d| Instant::now() + d);
        let mut done = 0;
        while done < split[t] {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let mut sw = Stopwatch(None);
            match op(done, &mut sw) {
                Ok(h) => hits += h,
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            let Some(began) = sw.0 else {
                failed.store(true, Ordering::Relaxed);
                return Err("internal: an operation did not start its stopwatch".into());
            };
            latency.record(began.elapsed().as_nanos() as u64);
            done += 1;
        }
        Ok((latency, hits, done))
    })?;
    let mut latency = Latency::new();
    let (mut hits, mut ops) = (0, 0);
    for (l, h, d) in results {
        latency.merge(&l);
        hits += h;
        ops += d;
    }
    Ok(Measured {
        ops,
        seconds,
        latency,
        found: Some(hits),
        background_writes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(threads: usize) -> Settings {
        Settings {
            num: 8,
            reads: 8,
            key_size: 16,
            value_size: 100,
            threads,
            write_options: WriteOptions::default(),
            duration: None,
            seed: 1,
            chooser: KeyChooser::new(crate::keys::Distribution::Uniform, 8, 1),
        }
    }

    /// An operation's latency runs from its stopwatch start, not from the harness's call:
    /// what an operation does before it (making its key and value) is not the engine's
    /// time. Each operation here spends 5 ms before the start and nothing after it.
    #[test]
    fn latency_counts_only_what_follows_the_stopwatch_start() {
        let before = Duration::from_millis(5);
        let m = harness(&settings(2), 8, |_| {
            move |_, sw: &mut Stopwatch| {
                std::thread::sleep(before);
                sw.start();
                Ok(1)
            }
        })
        .unwrap();
        assert_eq!((m.ops, m.found), (8, Some(8)));
        assert_eq!(m.latency.count(), 8);
        assert!(
            m.latency.max_us() < 2_500.0,
            "latency {} µs includes the time before the start",
            m.latency.max_us()
        );
        // Throughput covers the whole of every operation: 4 per thread, 5 ms each.
        assert!(m.seconds >= 0.02, "{} s", m.seconds);
    }
}
