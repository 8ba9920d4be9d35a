//! Test-only points where a test runs its own code in the middle of an engine operation,
//! on the thread running it, to make a race happen deterministically.

use std::cell::RefCell;

/// Where a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    /// A read at the latest state, after it took its view and before it reads the seqno.
    BetweenViewAndSeqno,
    /// A checkpoint, after it fixed its cut (files, WALs and their lengths) under the locks
    /// and released them, before it copies anything.
    CheckpointAfterCut,
    /// A checkpoint, after each step of its linking and copying: a table linked, or a
    /// chunk of a copy (a table's, where links fail, or a WAL's) written.
    CheckpointStepDone,
    /// `set_target`, after it cleared the write limits and before it installs the view
    /// naming the new target (the core lock held).
    RetargetBeforeSwap,
    /// `migrate_now`, after its check that the database is open and writable, before it
    /// takes the core lock to pick a job.
    MigrateNowBeforePick,
    /// `migrate_now`, after it picked a job (counted as running) and before it runs it.
    MigrateNowPicked,
    /// `migrate_now`, when it finds no draining file it may take now (every partition left
    /// busy, or held by a flush), before it waits.
    MigrateNowWaits,
    /// `apply_moves`, once its copies are in the memtable and the core lock is released
    /// (where it used to book them in the lazy-move figures).
    MovesBeforeBooking,
    /// A compaction, after it wrote its outputs and before it takes the core lock to
    /// install them.
    CompactionBeforeInstall,
    /// [`crate::inspect::sample_index_keys_in_dir`], after it read the directory's state
    /// and before it opens the tables that state names.
    SampleAfterDirState,
    /// A commit of a large transaction, after it checked its read set up to its mark and
    /// before it joins the write queue (see `recent.rs`).
    TransactionAfterMark,
    /// A commit group's leader, once it has taken its group from the queue and before it
    /// writes it (it then waits for the WAL lock).
    GroupFormed,
    /// `migration_progress`, before it takes the core lock (and loads the view).
    ProgressBeforeCore,
    /// An event's load tally (a commit's writes, a transaction's or a scan's reads) being
    /// recorded, after its event figures for a partition and before its keys there (see
    /// `PartitionLoad::record_batch`, `record_reads`).
    LoadRecordMidway,
    /// A close, each time it finds jobs on callers' threads still running (a checkpoint,
    /// `migrate_now`) and before it waits for them (the core lock held).
    CloseWaitsForJobs,
}

type Hook = (Point, Box<dyn FnOnce()>);

thread_local! {
    static HOOKS: RefCell<Vec<Hook>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` once, the next time this thread reaches `point`.
pub(crate) fn set(point: Point, f: impl FnOnce() + 'static) {
    HOOKS.with(|h| h.borrow_mut().push((point, Box::new(f))));
}

/// Called by the engine at `point`: runs (and forgets) this thread's hook for it, if any.
pub(crate) fn reach(point: Point) {
    let hook = HOOKS.with(|h| {
        let mut h = h.borrow_mut();
        let i = h.iter().position(|(p, _)| *p == point)?;
        Some(h.remove(i).1)
    });
    if let Some(f) = hook {
        f();
    }
}
