//! Background workers: flushes first, then manual compactions, then the most urgent
//! automatic compaction; one migration worker, at a lower scheduling priority, for the
//! pacer's migration jobs; plus a ticker that hands buffered WAL bytes to the OS.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::compaction::CompactionJob;
use crate::db::{Core, Inner};
use crate::error::{Error, Result};

enum Job {
    Flush,
    Compaction { job: CompactionJob, manual: bool },
}

/// What a worker thread takes on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Flushes and compactions.
    General,
    /// The pacer's migration jobs (and pointer merges): migration is the one kind of
    /// background work that can wait, so it runs in a thread of its own whose lower
    /// scheduling priority lets foreground threads, flushes and compactions preempt it.
    Migration,
}

pub(crate) fn start(inner: &Arc<Inner>) {
    let mut threads = inner.threads.lock();
    for i in 0..inner.opts.background_threads {
        let w = inner.clone();
        let t = std::thread::Builder::new()
            .name(format!("sluice-bg-{i}"))
            .spawn(move || worker(w, Role::General))
            .expect("spawning a background thread");
        threads.push(t);
    }
    let w = inner.clone();
    let t = std::thread::Builder::new()
        .name("sluice-migrate".into())
        .spawn(move || {
            lower_priority(w.opts.migration_thread_nice);
            worker(w, Role::Migration)
        })
        .expect("spawning the migration thread");
    threads.push(t);
    let w = inner.clone();
    let t = std::thread::Builder::new()
        .name("sluice-wal".into())
        .spawn(move || {
            while !w.closing.load(Ordering::Acquire) {
                // Parked rather than asleep, so that shutdown (which unparks every
                // background thread) need not wait out a long interval.
                let due = std::time::Instant::now() + w.opts.wal_flush_interval;
                loop {
                    let now = std::time::Instant::now();
                    if now >= due || w.closing.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::park_timeout(due - now);
                }
                w.tick_wal();
            }
        })
        .expect("spawning the WAL ticker");
    threads.push(t);
}

/// Raises this thread's nice value by `nice` (Linux keeps one per thread; an unprivileged
/// thread can raise it but never lower it again, hence a thread of its own). Best effort:
/// where it fails or does not apply, the thread runs at normal priority.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

fn worker(inner: Arc<Inner>, role: Role) {
    loop {
        let mut core = inner.core.lock();
        let job = loop {
            if inner.closing.load(Ordering::Acquire) {
                return;
            }
            if !inner.failed.load(Ordering::Acquire) {
                let picked = match role {
                    Role::General => pick(&inner, &mut core),
                    Role::Migration => pick_migration(&inner, &mut core),
                };
                if let Some(j) = picked {
                    break j;
                }
            }
            inner.bg_cv.wait_for(&mut core, Duration::from_millis(100));
        };
        core.running += 1;
        drop(core);
        let result = match &job {
            Job::Flush => inner.flush_oldest(),
            Job::Compaction { job, .. } => inner.run_compaction(job),
        };
        let mut core = inner.core.lock();
        core.running -= 1;
        let backoff = finish(&inner, &mut core, job, result);
        if !inner.failed.load(Ordering::Acquire) {
            if let Err(e) = inner.retire_drained(&mut core) {
                inner.fail(format!("retiring drained layouts failed: {e}"));
            }
        }
        inner.stall_cv.notify_all();
        inner.bg_cv.notify_all();
        drop(core);
        if let Some(d) = backoff {
            std::thread::sleep(d);
        }
    }
}

fn pick(inner: &Inner, core: &mut Core) -> Option<Job> {
    let view = inner.view.load_full();
    if !core.flushing && !view.imm.is_empty() {
        core.flushing = true;
        return Some(Job::Flush);
    }
    let mut i = 0;
    while i < core.manual.len() {
        let (v, p) = core.manual[i];
        if core.busy.contains(&(v, p)) {
            i += 1;
            continue;
        }
        core.manual.remove(i);
        if let Some(job) = inner.full_partition_job(core, &view, v, p) {
            core.busy.insert((v, p));
            core.manual_running += 1;
            return Some(Job::Compaction { job, manual: true });
        }
    }
    let job = inner.pick_compaction(core, &view)?;
    Some(Job::Compaction { job, manual: false })
}

/// The migration worker's pick. It runs beside compactions (under a steady write load some
/// compaction is almost always due, and migration would starve if it waited for none),
/// whenever the pacer's budget allows and L0 is not near its slowdown point (the pacer
/// itself backs off on compaction debt and foreground latency).
fn pick_migration(inner: &Inner, core: &mut Core) -> Option<Job> {
    let l0_ok = inner.l0_max.load(Ordering::Relaxed) < inner.opts.level0_slowdown_trigger;
    if !l0_ok {
        return None;
    }
    let view = inner.view.load_full();
    let job = inner.pick_migration(core, &view)?;
    if job.migrate_to.is_some() {
        core.migrations_running += 1;
    }
    Some(Job::Compaction { job, manual: false })
}

/// Books a finished job; returns how long the worker should pause before the next one.
fn finish(inner: &Inner, core: &mut Core, job: Job, result: Result<()>) -> Option<Duration> {
    match job {
        Job::Flush => {
            core.flushing = false;
            if let Err(e) = result {
                // The memtable cannot reach an SSTable, so its WAL can never be released
                // and later writes could not be made durable in order: stop writes.
                inner.fail(format!("flush failed: {e}"));
            }
            None
        }
        Job::Compaction { job, manual } => {
            if job.migrate_to.is_some() {
                core.migrations_running -= 1;
            }
            inner.release_job(core, &job);
            if manual {
                core.manual_running -= 1;
            }
            match result {
                Ok(()) => {
                    core.compaction_failures = 0;
                    None
                }
                Err(Error::Closed) => None,
                Err(e) => {
                    // Compaction failures (a full disk, say) do not endanger acknowledged
                    // data; retry with backoff while writes keep going until the L0 stop
                    // trigger holds them.
                    core.compaction_failures += 1;
                    if manual {
                        core.manual_error = Some(e.to_string());
                    }
                    inner.note_background_error(&e);
                    let n = core.compaction_failures.min(6);
                    Some(Duration::from_millis(100 << n))
                }
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use crate::{Db, Options};

    /// The nice value of this process's thread named `name`, from /proc.
    fn nice_of(name: &str) -> Option<i32> {
        for t in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() == name {
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                // Fields after the parenthesised name: state is field 3, nice field 19.
                let rest = &stat[stat.rfind(')')? + 2..];
                return rest.split(' ').nth(16)?.parse().ok();
            }
        }
        None
    }

    #[test]
    fn migration_runs_in_its_own_thread_at_the_configured_nice_value() {
        let base = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let base: i32 = base[base.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        if base != 0 {
            eprintln!("the tests run at nice {base}: the nice values cannot be compared");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            Options {
                migration_thread_nice: 7,
                ..Options::default()
            },
        )
        .unwrap();
        // The thread lowers its own priority as it starts.
        let mut nice = None;
        for _ in 0..200 {
            nice = nice_of("sluice-migrate");
            if nice == Some(7) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(nice, Some(7));
        // Flushes and compactions keep their normal priority.
        assert_eq!(nice_of("sluice-bg-0"), Some(0));
        db.close().unwrap();
    }
}
