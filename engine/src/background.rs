//! Background workers: a flush worker that runs every flush; general workers that run
//! manual compactions, then migration compactions the pacer allows, then the most urgent
//! automatic compaction; a ticker that hands buffered WAL bytes to the OS; a syncer that
//! fsyncs the WAL as it grows; and a deleter of obsolete tables.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::compaction::CompactionJob;
use crate::db::{Core, Inner};
use crate::error::{Error, Result};
use crate::stats::Counters;

enum Job {
    Flush,
    Compaction {
        job: CompactionJob,
        /// The manual compaction request the job is for.
        manual: Option<u64>,
    },
}

/// Starts the background threads. A thread the OS refuses is an error (the caller shuts
/// down the ones already started).
pub(crate) fn start(inner: &Arc<Inner>) -> Result<()> {
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(f)
            .map_err(|e| Error::Background(format!("starting thread {name}: {e}")))
    };
    for i in 0..inner.opts.background_threads {
        let w = inner.clone();
        let t = spawn(format!("sluice-bg-{i}"), Box::new(move || worker(w, pick)))?;
        inner.threads.lock().push(t);
    }
    // Flushes have a thread of their own (as RocksDB's high-priority pool): a full memtable
    // waits only for the flushes before it, never for a general worker to finish a
    // compaction (a manual compaction of a large partition holds one for many seconds).
    let w = inner.clone();
    let t = spawn(
        "sluice-flush".into(),
        Box::new(move || worker(w, pick_flush)),
    )?;
    inner.threads.lock().push(t);
    let w = inner.clone();
    let t = spawn(
        "sluice-wal".into(),
        Box::new(move || {
            while !w.closing.load(Ordering::Acquire) {
                pause(&w, w.opts.wal_flush_interval);
                if let Err(why) = crate::util::catch_panic(|| w.tick_wal()) {
                    w.wal_failed(format!("handing the WAL buffer to the OS panicked: {why}"));
                    return;
                }
            }
        }),
    )?;
    inner.threads.lock().push(t);
    // WALs rotated away from (synced here while writes go on into the next), and the live
    // WAL as it grows (`wal_bytes_per_sync`).
    let w = inner.clone();
    let t = spawn(
        "sluice-wal-sync".into(),
        Box::new(move || {
            while let Some(log) = w.wal_syncer.next() {
                let synced = crate::util::catch_panic(|| log.sync())
                    .unwrap_or_else(|why| Err(Error::Background(format!("panicked: {why}"))));
                match synced {
                    Ok(()) => Counters::add(&w.counters.wal_background_syncs, 1),
                    // The kernel may have dropped pages it could not write: nothing
                    // written to this WAL, or after it, can be promised durable any more.
                    Err(e) => w.wal_failed(format!(
                        "background sync of {} failed: {e}",
                        log.path().display()
                    )),
                }
            }
        }),
    )?;
    inner.threads.lock().push(t);
    // Obsolete tables, deleted off the thread that let go of them last (see `obsolete.rs`).
    // Started before the thread, whose loop ends at once if it finds the deleter stopped.
    let w = inner.clone();
    inner.home.deleter.start();
    let t = spawn(
        "sluice-files".into(),
        Box::new(move || w.home.deleter.run()),
    )
    .inspect_err(|_| {
        inner.home.deleter.stop();
        inner.home.deleter.run();
    })?;
    inner.threads.lock().push(t);
    inner.sync_wal_in_background(&mut inner.wal.lock().log);
    Ok(())
}

/// Waits `d`, or less if the database is closing: parked rather than asleep, so that
/// shutdown (which unparks every background thread) need not wait it out.
fn pause(inner: &Inner, d: Duration) {
    let due = std::time::Instant::now() + d;
    loop {
        let now = std::time::Instant::now();
        if now >= due || inner.closing.load(Ordering::Acquire) {
            return;
        }
        std::thread::park_timeout(due - now);
    }
}

fn worker(inner: Arc<Inner>, pick: fn(&Inner, &mut Core) -> Option<Job>) {
    loop {
        let mut core = inner.core.lock();
        let job = loop {
            if inner.closing.load(Ordering::Acquire) {
                return;
            }
            if !inner.failed.load(Ordering::Acquire) {
                if let Some(j) = pick(&inner, &mut core) {
                    break j;
                }
            }
            inner.bg_cv.wait_for(&mut core, Duration::from_millis(100));
        };
        core.running += 1;
        drop(core);
        let result = crate::util::catch_panic(|| match &job {
            Job::Flush => inner.flush_oldest(),
            Job::Compaction { job, .. } => inner.run_compaction(job),
        })
        .unwrap_or_else(|why| {
            // What the job left half done is unknown: stop writes (which wakes every
            // waiter with the reason) and book the job as failed, so that nothing waits
            // for it to finish.
            inner.fail(format!("a background job panicked: {why}"));
            Err(Error::Background(format!("panicked: {why}")))
        });
        let mut core = inner.core.lock();
        core.running -= 1;
        let backoff = finish(&inner, &mut core, job, result);
        if !inner.failed.load(Ordering::Acquire) {
            match crate::util::catch_panic(|| inner.retire_drained(&mut core)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => inner.fail(format!("retiring drained layouts failed: {e}")),
                Err(why) => inner.fail(format!("retiring drained layouts panicked: {why}")),
            }
        }
        inner.stall_cv.notify_all();
        inner.bg_cv.notify_all();
        drop(core);
        if let Some(d) = backoff {
            pause(&inner, d);
        }
    }
}

/// The flush thread's job: the oldest frozen memtable, when no flush is running.
fn pick_flush(inner: &Inner, core: &mut Core) -> Option<Job> {
    if !core.flushing && !inner.view.load().imm.is_empty() {
        core.flushing = true;
        return Some(Job::Flush);
    }
    None
}

/// A general worker's job: a manual compaction, a migration compaction the pacer allows,
/// or the most urgent compaction. (Flushes run one at a time, on the flush thread: a general
/// worker taking one would only move it onto a thread that compactions may hold.)
fn pick(inner: &Inner, core: &mut Core) -> Option<Job> {
    let view = inner.view.load_full();
    let mut i = 0;
    while i < core.manual.len() {
        let (v, p, req) = core.manual[i];
        if core.busy.contains(&(v, p)) {
            i += 1;
            continue;
        }
        core.manual.remove(i);
        if let Some(job) = inner.full_partition_job(core, &view, v, p) {
            core.busy.insert((v, p));
            core.manual_running += 1;
            return Some(Job::Compaction {
                job,
                manual: Some(req),
            });
        }
        // Nothing left to compact there: done.
        crate::compaction::ManualRequest::done(core, req, None);
    }
    // Under a steady write load some compaction is almost always due; if migration only
    // ran when none was, it would starve. So one migration job may run beside compactions
    // whenever the pacer's budget allows and L0 is not near its slowdown point (the pacer
    // itself backs off on compaction debt and foreground latency).
    let l0_ok = inner.l0_max.load(std::sync::atomic::Ordering::Relaxed)
        < inner.opts.level0_slowdown_trigger;
    if !l0_ok {
        inner.note_l0_holds_migration(core, &view);
    }
    if core.migrations_running == 0 && l0_ok {
        if let Some(job) = inner.pick_migration(core, &view) {
            if job.migrate_to.is_some() {
                core.migrations_running += 1;
            }
            return Some(Job::Compaction { job, manual: None });
        }
    }
    if let Some(job) = inner.pick_compaction(core, &view) {
        return Some(Job::Compaction { job, manual: None });
    }
    // Nothing to compact: the workers left may migrate, unless L0 is near its slowdown
    // point (migration outputs can land in L0 too, and a compaction of it that keeps
    // failing must not be hidden behind migration jobs that succeed).
    if !l0_ok {
        return None;
    }
    let job = inner.pick_migration(core, &view)?;
    if job.migrate_to.is_some() {
        core.migrations_running += 1;
    }
    Some(Job::Compaction { job, manual: None })
}

/// Books a finished job; returns how long the worker should pause before the next one.
fn finish(inner: &Inner, core: &mut Core, job: Job, result: Result<()>) -> Option<Duration> {
    match job {
        Job::Flush => {
            core.flushing = false;
            // (Cleared by the flush itself, unless it panicked.)
            core.flush_sources.clear();
            match result {
                Ok(()) => {
                    core.flush_failures = 0;
                    None
                }
                Err(Error::Closed) => None,
                // A failure that left durability in doubt stopped writes where it happened.
                Err(_) if inner.failed.load(Ordering::Acquire) => None,
                // Writing the new tables failed and they are gone again; the memtable and
                // its WAL are untouched, so the same flush can be tried again. Only once
                // the retries run out does the memtable stay unflushable, its WAL never
                // released: stop writes.
                Err(e) => {
                    core.flush_failures += 1;
                    if core.flush_failures > inner.opts.flush_retries {
                        inner.fail(format!(
                            "flush failed {} times, the last time: {e}",
                            core.flush_failures
                        ));
                        return None;
                    }
                    inner.note_background_error(&e);
                    Counters::add(&inner.counters.flush_retries, 1);
                    Some(inner.opts.flush_retry_interval)
                }
            }
        }
        Job::Compaction { job, manual } => {
            if job.migrate_to.is_some() {
                core.migrations_running -= 1;
            }
            inner.release_job(core, &job);
            if manual.is_some() {
                core.manual_running -= 1;
            }
            match result {
                Ok(()) => {
                    if let Some(req) = manual {
                        crate::compaction::ManualRequest::done(core, req, None);
                    }
                    for &p in &job.sources {
                        core.compaction_failures.remove(&(job.version, p));
                    }
                    None
                }
                Err(Error::Closed) => {
                    if let Some(req) = manual {
                        let e = Error::Closed.to_string();
                        crate::compaction::ManualRequest::done(core, req, Some(e));
                    }
                    None
                }
                // A damaged table fails every retry the same way, and the L0 it leaves
                // behind would hold writes at the stop trigger with no error: stop writes
                // now, naming the damage (reads of everything else go on).
                Err(e) if e.is_corruption() => {
                    if let Some(req) = manual {
                        crate::compaction::ManualRequest::done(core, req, Some(e.to_string()));
                    }
                    inner.fail(format!("compaction found damage: {e}"));
                    None
                }
                Err(e) => {
                    // Compaction failures (a full disk, say) do not endanger acknowledged
                    // data; retry with backoff while writes keep going until the L0 stop
                    // trigger holds them (and, after a few in a row, refuses them with the
                    // reason). A manual compaction's failure is its caller's to see, and
                    // does not count: it is not retried, so its failures come at once.
                    inner.note_background_error(&e);
                    if let Some(req) = manual {
                        // A manual compaction reports its first error to its caller, who
                        // waits for every partition it queued to be tried: no backoff, or
                        // under a lasting fault (a disk returning EIO) it would wait up to
                        // 6.4 s per partition.
                        crate::compaction::ManualRequest::done(core, req, Some(e.to_string()));
                        return None;
                    }
                    // Every partition the job read from: which one's file failed is not
                    // known, and each is then retried alone.
                    let mut n = 0;
                    for &p in &job.sources {
                        let c = core
                            .compaction_failures
                            .entry((job.version, p))
                            .or_default();
                        *c += 1;
                        n = n.max(*c);
                    }
                    Some(Duration::from_millis(100 << n.min(6)))
                }
            }
        }
    }
}
