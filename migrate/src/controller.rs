//! The migration controller: drives one migration through the persisted state machine,
//! with gates (analysis, validation, canary), automatic rollback triggers, reconciliation
//! and pacing, and resumes after a crash in any state.
//!
//! Every step is idempotent against the engine's own state (the target layout, the live
//! versions), so a controller that crashed between an engine change and recording it
//! recognises what already happened when it resumes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice::{Db, Error, MigrationProgress, PartitionSpec, Result, Snapshot, VersionId};

use crate::analysis::{self, Analysis, Thresholds, Verdict};
use crate::consistency::{self, CheckMode, ConsistencyReport};
use crate::state::{Event, PlanRecord, PlanningRecord, Record, State, MAX_EVENTS};

/// Bytes `finish` migrates per fenced slice: a new claim waits at most for one slice (a
/// fraction of a second at full speed). Small under test, so that tests see several.
const FINISH_SLICE: u64 = if cfg!(test) { 4 << 10 } else { 32 << 20 };

/// A user aggregate checked at every state change; it must not change while the layout
/// does (the ledger's sum of balances). Computed on one snapshot.
pub type Reconciliation = Box<dyn Fn(&Snapshot) -> Result<String> + Send>;

/// Automatic rollback triggers.
#[derive(Clone, Debug)]
pub struct Triggers {
    /// Roll back when a consistency check finds a problem.
    pub on_consistency_failure: bool,
    /// Roll back when the reconciliation value changes. Off, a change is recorded in the
    /// events (at each state change that finds it) and the migration goes on.
    pub on_reconciliation_mismatch: bool,
    /// Roll back when the observed error rate (errors / ops) exceeds this.
    pub max_error_rate: Option<f64>,
    /// Roll back when foreground p99 exceeds this many µs for `p99_windows` windows in a
    /// row: the engine's pacing windows (of a second or more; each counts once, ticks or
    /// no ticks, up to [`sluice::FOREGROUND_P99_HISTORY`] of them between two ticks), or
    /// the caller's own, one per tick, where it passes [`Observation::p99_us`].
    pub p99_budget_us: Option<u64>,
    pub p99_windows: u32,
    /// Also run the consistency check and the reconciliation from [`Controller::tick`] (and
    /// [`Controller::watch`]) while migrating, at most this often. They run at every state
    /// change regardless; `None` leaves them there. The check walks every SSTable entry, so
    /// on a large database this is minutes, not seconds.
    pub periodic_check: Option<Duration>,
    /// A canary or periodic check that could not run holds data movement and is tried
    /// again by a later tick, at most this often, and never sooner after an attempt ends
    /// than that attempt took (a full check of a large database that keeps failing takes
    /// at most half the controller's time). A finish that failed (in `Finalizing`) is
    /// tried again by ticks as seldom.
    pub check_retry: Duration,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            on_consistency_failure: true,
            on_reconciliation_mismatch: true,
            max_error_rate: Some(0.01),
            p99_budget_us: None,
            p99_windows: 3,
            periodic_check: None,
            check_retry: Duration::from_secs(10),
        }
    }
}

/// How the controller runs migrations.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Background migration budget while migrating (bytes/s).
    pub migration_bytes_per_sec: u64,
    /// Foreground p99 (µs) above which the engine's pacer backs off (0 = ignore).
    pub pacer_p99_target_us: u64,
    /// Fraction of the draining bytes migrated (and validated) as a canary first.
    pub canary_fraction: f64,
    pub triggers: Triggers,
    /// Consistency check at state changes.
    pub check: CheckMode,
    /// Analysis gate: a candidate is biased when its predicted max/mean share is large
    /// *and* the chi-square test says the imbalance is not sampling noise.
    pub thresholds: Thresholds,
    /// Keys sampled from SSTable indexes for the analysis gate.
    pub sample_keys: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            migration_bytes_per_sec: 32 << 20,
            pacer_p99_target_us: 0,
            canary_fraction: 0.02,
            triggers: Triggers::default(),
            check: CheckMode::default(),
            thresholds: Thresholds::default(),
            sample_keys: analysis::DEFAULT_SAMPLE,
        }
    }
}

/// Options for planning a migration.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Plan even if the analysis gate finds the candidate biased.
    pub force: bool,
    /// Take a checkpoint (hard-linked, openable copy) here before migrating.
    pub checkpoint_dir: Option<String>,
}

/// What planning found.
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// The candidate's layout version (registered now, or an existing one reused).
    pub version: VersionId,
    /// The analysis gate's judgement of the candidate over a sample of existing keys.
    pub analysis: Analysis,
    /// The gate found the candidate biased.
    pub biased: bool,
    /// The plan went ahead past a biased verdict because [`PlanOptions::force`] was set
    /// (and is recorded as forced). Without `force` a biased candidate is refused with an
    /// error, so a returned report has `forced == biased`; both are kept so that callers
    /// can say which they mean.
    pub forced: bool,
}

/// Observed foreground health for a tick (from the application, if it measures its own).
#[derive(Clone, Copy, Debug, Default)]
pub struct Observation {
    /// Operations in the window (all of them, or only those that went through: the error
    /// rate is `errors / max(ops, errors)`, so a window of nothing but errors is a rate of 1
    /// either way).
    pub ops: u64,
    pub errors: u64,
    pub p99_us: Option<u64>,
}

/// What a tick did.
#[derive(Clone, Debug)]
pub struct TickReport {
    pub state: State,
    pub progress: MigrationProgress,
    /// Set when a trigger rolled the migration back.
    pub rolled_back: Option<String>,
    /// Set when the migration reached Complete in this tick.
    pub completed: bool,
}

/// Drives migrations of one database.
pub struct Controller {
    db: Db,
    epoch: u64,
    rec: Record,
    cfg: ControllerConfig,
    reconcile: Option<Reconciliation>,
    over_budget: u32,
    /// The engine's last pacing window the p99 trigger counted.
    p99_window: Option<u64>,
    /// When the consistency check and reconciliation last ran (for
    /// [`Triggers::periodic_check`]).
    last_check: Instant,
    /// When the last check that could not run ended, and how long it took.
    failed_attempt: Option<(Instant, Duration)>,
    /// The canary's data was migrated in this process and only its validation is left: a
    /// retry validates again without migrating another canary's worth.
    canary_moved: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a plan or a retarget about to claim a candidate for the function `fp` records
/// first: versions registered for `fp` from here on are its own, and `existing` (the live
/// version it would reuse) is a pin to release if it was not pinned already.
fn planning_intent(
    layout: &sluice::LayoutInfo,
    fp: u64,
    existing: Option<VersionId>,
) -> PlanningRecord {
    let unpinned = |id: u32| layout.versions.iter().any(|v| v.id.0 == id && !v.pinned);
    PlanningRecord {
        fingerprint: fp,
        last_id: layout
            .versions
            .iter()
            .map(|v| v.id)
            .chain(layout.retired.iter().copied())
            .map(|v| v.0)
            .max()
            .unwrap_or(0),
        pins: existing
            .map(|v| v.0)
            .filter(|&v| unpinned(v))
            .into_iter()
            .collect(),
    }
}

impl ControllerConfig {
    /// Refuses fractions that are not fractions (a NaN or negative canary fraction used
    /// to become a one-byte canary silently, and an error rate limit over 1 can never
    /// fire), an empty sample and thresholds that would turn the analysis gate off.
    pub fn validate(&self) -> Result<()> {
        let fraction = |name: &'static str, v: f64| match v.is_finite() && (0.0..=1.0).contains(&v)
        {
            true => Ok(()),
            false => Err(Error::InvalidOption {
                name,
                reason: format!("must be a fraction between 0 and 1, not {v}"),
            }),
        };
        fraction("canary_fraction", self.canary_fraction)?;
        if let Some(rate) = self.triggers.max_error_rate {
            fraction("max_error_rate", rate)?;
        }
        if self.sample_keys == 0 {
            // An empty sample is inconclusive, which does not block a plan: the analysis
            // gate would be off without a word.
            return Err(Error::InvalidOption {
                name: "sample_keys",
                reason: "the analysis needs at least one key to sample".into(),
            });
        }
        self.thresholds.validate()
    }
}

impl Controller {
    /// Claims the controller role for `db` (fencing any earlier controller) and resumes
    /// whatever migration the persisted state describes.
    pub fn attach(db: Db, cfg: ControllerConfig) -> Result<Controller> {
        // Claimed before the state is read: once claimed, no earlier controller can store
        // anything more, so the state read is the one to resume from. (Read first, a
        // rollback the earlier controller finished in between was undone by this one's
        // resume, which switched the target forward again.)
        // A record that does not decode is refused before the claim, which would write an
        // edit to a manifest that needs looking at first.
        Record::stored(&db)?;
        cfg.validate()?;
        #[cfg(test)]
        tests::reach("attach: before the claim");
        let epoch = db.claim_controller()?;
        let rec = Record::stored(&db)?.map(|(_, r)| r).unwrap_or_default();
        // Windows that ended before this controller attached are not its to judge.
        let p99_window = Some(db.migration_progress().foreground_p99_window);
        let mut c = Controller {
            db,
            epoch,
            rec,
            cfg,
            reconcile: None,
            over_budget: 0,
            p99_window,
            last_check: Instant::now(),
            failed_attempt: None,
            canary_moved: None,
        };
        c.resume()?;
        Ok(c)
    }

    pub fn state(&self) -> State {
        self.rec.state
    }

    pub fn record(&self) -> &Record {
        &self.rec
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn events(&self) -> &[Event] {
        &self.rec.events
    }

    pub fn progress(&self) -> MigrationProgress {
        self.db.migration_progress()
    }

    /// Sets the aggregate checked at every state change.
    pub fn set_reconciliation(&mut self, f: Reconciliation) {
        self.reconcile = Some(f);
    }

    fn reconcile_now(&self) -> Result<Option<String>> {
        match &self.reconcile {
            Some(f) => f(&self.db.snapshot()).map(Some),
            None => Ok(None),
        }
    }

    /// Records a transition (persisted, fenced by epoch).
    fn go(&mut self, to: State, reason: impl Into<String>) -> Result<()> {
        let reason = bounded_reason(reason.into());
        let from = self.rec.state;
        if from != to && !from.allows(to) {
            return Err(Error::LayoutRefused(format!(
                "controller cannot go from {from} to {to}"
            )));
        }
        let mut next = self.rec.clone();
        next.state = to;
        if matches!(to, State::Stable | State::Complete) {
            // No migration left for a check that could not run to hold.
            next.check_failing = None;
        }
        next.events.push(Event {
            unix_ms: now_ms(),
            from,
            to,
            reason,
        });
        if next.events.len() > MAX_EVENTS {
            let cut = next.events.len() - MAX_EVENTS;
            next.events.drain(..cut);
        }
        self.db.store_controller_state(self.epoch, &next.encode())?;
        self.rec = next;
        if from != to {
            // Windows over the p99 budget count within one state: a rollback, then a new
            // start, used to inherit the count and roll back after one slow window.
            self.over_budget = 0;
            // Nor does a window that ended before this state count in it: the first tick
            // after a start used to judge the engine's latest window whatever its age (one
            // that ended while a rolled-back candidate drained back, say).
            self.p99_window = Some(self.db.migration_progress().foreground_p99_window);
        }
        Ok(())
    }

    /// Refuses to act for a controller that another has superseded (claimed a newer epoch
    /// since this one attached): checked when an operation begins, before work such as
    /// analysis, as well as by each change to the engine (see [`Controller::fenced`]).
    fn fence(&self) -> Result<()> {
        self.fenced(|_| Ok(()))
    }

    /// Logs an event without a state change.
    fn note(&mut self, reason: impl Into<String>) -> Result<()> {
        let s = self.rec.state;
        self.go(s, reason)
    }

    /// Makes `v` the target. Partition write limits belong to the old target's partitions
    /// and the switch lifts them: the events say which were lifted, for the caller to set
    /// again on the new layout's partitions if they are still needed.
    fn switch_target(&mut self, v: VersionId) -> Result<()> {
        let limits = self.db.partition_write_limits();
        self.fenced(|db| db.set_target(v))?;
        if !limits.is_empty() {
            let list: Vec<String> = limits
                .iter()
                .map(|(p, r)| format!("partition {p} at {r} B/s"))
                .collect();
            self.note(format!(
                "switching the target to v{} lifted the write limits on {}",
                v.0,
                list.join(", ")
            ))?;
        }
        Ok(())
    }

    fn save(&mut self) -> Result<()> {
        self.db
            .store_controller_state(self.epoch, &self.rec.encode())
    }

    fn plan_ref(&self) -> Result<&PlanRecord> {
        self.rec
            .plan
            .as_ref()
            .ok_or_else(|| Error::LayoutRefused("no migration is planned".into()))
    }

    /// Brings the engine in line with the persisted state after a restart.
    fn resume(&mut self) -> Result<()> {
        let target = self.db.layout().target.0;
        match self.rec.state {
            State::Stable | State::Complete => match self.rec.planning.clone() {
                Some(p) => self.undo_planning(&p, "resumed after a restart mid-plan"),
                None => Ok(()),
            },
            State::Planned | State::Validating => {
                let to = self.plan_ref()?.to;
                if target == to {
                    // Crashed after switching the target and before recording it (from
                    // Planned, only a caller's own `Db::set_target` gets here; the state
                    // machine goes there through Validating).
                    if self.rec.state == State::Planned {
                        self.go(State::Validating, "resumed: target was already switched")?;
                    }
                    self.reconcile_gate("resume")?;
                    self.go(State::Migrating, "resumed: target was already switched")?;
                    // Held until the canary (run by the next tick) passes.
                    self.pace()?;
                }
                Ok(())
            }
            State::Shadowing => {
                let spec = PartitionSpec::parse(&self.plan_ref()?.spec)?;
                self.fenced(|db| db.set_shadow(Some(spec)))
            }
            State::Migrating | State::Paused => {
                if let Some(p) = self.rec.planning.clone() {
                    self.undo_planning(&p, "resumed after a restart mid-retarget")?;
                }
                let plan = self.plan_ref()?.clone();
                if target != plan.to {
                    // Also completes a retarget recorded just before a crash.
                    self.switch_target(VersionId(plan.to))?;
                }
                // Superseded candidates a retarget had not released yet drain and retire.
                for &v in &plan.superseded {
                    if v != plan.from && v != plan.to {
                        self.fenced(|db| unpin_if_live(db, v))?;
                    }
                }
                self.pace()?;
                self.note("resumed after restart")
            }
            State::Finalizing => {
                // Finishing needs the reconciliation hook, which the caller sets after
                // attaching: migrate at full budget and let finish() or tick() complete.
                self.pace()?;
                self.note("resumed after restart; call finish() or tick() to complete")
            }
            State::RollingBack => self.complete_rollback("resumed after restart"),
        }
    }

    /// Whether data may move in the background in the persisted state: while migrating
    /// once the canary has passed and while no check is failing, while finalizing, and while
    /// rolling back. Everywhere else the controller owns (paused; migrating before the
    /// canary or while a check cannot run) it is held.
    fn movement_allowed(&self) -> bool {
        match self.rec.state {
            State::Migrating => {
                self.rec.check_failing.is_none()
                    && self.rec.plan.as_ref().is_some_and(|p| p.canary_done)
            }
            State::Finalizing | State::RollingBack => true,
            _ => false,
        }
    }

    /// Applies the pacing the state calls for (see [`Controller::movement_allowed`]).
    fn pace(&self) -> Result<()> {
        self.apply_pacing(self.movement_allowed())
    }

    /// Runs or holds background migration and lazy moves. The hold is persisted in the
    /// engine ([`Db::hold_migration`]): a paused migration stays paused when the process
    /// exits, whatever rate the next open's options give, until a controller releases it.
    fn apply_pacing(&self, running: bool) -> Result<()> {
        self.fenced(|db| {
            db.set_migration_latency_target(self.cfg.pacer_p99_target_us);
            if running {
                db.hold_migration(false)?;
                db.set_migration_rate(self.cfg.migration_bytes_per_sec);
            } else {
                // Stopped in this process at once, then persisted.
                db.set_migration_rate(0);
                db.hold_migration(true)?;
            }
            Ok(())
        })
    }

    /// Makes a change to the engine as this controller: refused with `StaleEpoch` if
    /// another controller has claimed the role, and no claim lands while it runs (see
    /// [`Db::fenced`]). Checking the epoch first and acting after would let a controller
    /// superseded in between act.
    fn fenced<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        self.db.fenced(self.epoch, || f(&self.db))
    }

    /// Predicts how the existing keys would spread under `spec`.
    /// Data still in the memtables is flushed first: the sample comes from table
    /// indexes, and a database whose keys were all unflushed gave an empty sample, an
    /// inconclusive verdict, and a biased candidate planned unforced.
    pub fn analyze(&self, spec: &PartitionSpec) -> Result<Analysis> {
        // (A flush with nothing in the memtables returns at once.)
        match self.db.flush() {
            // A read-only open cannot flush (nor plan): its analysis samples the tables.
            Ok(()) | Err(Error::ReadOnly(_)) => {}
            Err(e) => return Err(e),
        }
        analysis::analyze_db(&self.db, spec, self.cfg.sample_keys, self.cfg.thresholds)
    }

    /// The analysis gate's verdict (an inconclusive sample does not block a plan).
    pub fn is_biased(&self, a: &Analysis) -> bool {
        a.verdict == Verdict::Biased
    }

    /// Registers `spec` as the candidate (or reuses a live version with the same function)
    /// after the analysis gate: a biased candidate is refused unless `opts.force`.
    pub fn plan(&mut self, spec: PartitionSpec, opts: PlanOptions) -> Result<PlanReport> {
        self.fence()?;
        if !matches!(self.rec.state, State::Stable | State::Complete) {
            return Err(Error::LayoutRefused(format!(
                "a migration is already {}",
                self.rec.state
            )));
        }
        let checkpoint_dir = opts
            .checkpoint_dir
            .as_deref()
            .map(checkpoint_target)
            .transpose()?;
        let layout = self.db.layout();
        let from = layout.target.0;
        let fp = spec.fingerprint();
        if layout
            .versions
            .iter()
            .any(|v| v.id.0 == from && v.fingerprint == fp)
        {
            // It would pass every gate and then rewrite every byte into the same layout.
            return Err(Error::LayoutRefused(format!(
                "candidate {spec} is the function of the current target v{from}: there is nothing to migrate to"
            )));
        }
        let a = self.analyze(&spec)?;
        let biased = self.is_biased(&a);
        if biased && !opts.force {
            return Err(Error::LayoutRefused(format!(
                "candidate {spec} is biased: predicted max/mean {:.2} (limit {:.2}), chi-square p-value {:.3e} on {} sampled keys; pass force to plan it anyway",
                a.distribution.max_over_mean,
                self.cfg.thresholds.max_over_mean,
                a.distribution.p_value,
                a.sample.keys
            )));
        }
        let existing = layout
            .versions
            .iter()
            .find(|v| v.fingerprint == fp && v.id.0 != from)
            .map(|v| v.id);
        // Recorded before the first engine change, so that a plan cut short between here
        // and `Planned` (a crash, a failing hook) is undone, by this call or by the next
        // controller to attach, rather than leaving its candidate pinned and live for ever.
        let mut intent = planning_intent(&layout, fp, existing);
        if layout.versions.iter().any(|v| v.id.0 == from && !v.pinned) {
            intent.pins.insert(0, from);
        }
        self.rec.planning = Some(intent.clone());
        if let Err(e) = self.save() {
            self.rec.planning = None;
            return Err(e);
        }
        let draining: u64 = layout.versions.iter().map(|v| v.bytes()).sum();
        let planned = (|| {
            let to = self.claim_candidate(&spec, existing)?;
            self.fenced(|db| db.pin_version(VersionId(from), true))?;
            self.canary_moved = None;
            // A check that could not run in an earlier migration holds nothing now.
            self.rec.check_failing = None;
            self.rec.plan = Some(PlanRecord {
                from,
                to: to.0,
                spec: spec.to_string(),
                forced: biased,
                predicted_max_over_mean: a.distribution.max_over_mean,
                predicted_p_value: a.distribution.p_value,
                canary_bytes: ((draining as f64) * self.cfg.canary_fraction) as u64,
                canary_done: false,
                checkpoint_dir,
                superseded: Vec::new(),
                validated: false,
            });
            self.rec.reconciliation = self.reconcile_now()?;
            let forced = if biased {
                " FORCED past the analysis gate"
            } else {
                ""
            };
            let reason = format!(
                "planned {to} = {spec}{forced} (max/mean {:.2})",
                a.distribution.max_over_mean
            );
            self.rec.planning = None;
            self.go(State::Planned, reason)?;
            Ok(to)
        })();
        match planned {
            Ok(to) => Ok(PlanReport {
                version: to,
                analysis: a,
                biased,
                forced: biased,
            }),
            Err(e) => {
                // The plan's error is the one to report; an undo that fails too leaves the
                // intent recorded for the next controller to attach.
                let _ = self.undo_planning(&intent, &format!("plan of {spec} failed: {e}"));
                Err(e)
            }
        }
    }

    /// Undoes what a plan cut short changed in the engine: the pins it added, and the
    /// candidate it registered (retired, as it holds no data: nothing was ever written
    /// into a layout that never became the target).
    fn undo_planning(&mut self, p: &PlanningRecord, why: &str) -> Result<()> {
        for &v in &p.pins {
            self.fenced(|db| unpin_if_live(db, v))?;
        }
        let layout = self.db.layout();
        let own = layout
            .versions
            .iter()
            .filter(|v| v.fingerprint == p.fingerprint && v.id.0 > p.last_id && !v.is_target);
        for v in own {
            self.fenced(|db| unpin_if_live(db, v.id.0))?;
            match self.fenced(|db| db.retire_version(v.id)) {
                Ok(()) | Err(Error::LayoutRefused(_) | Error::VersionRetired(_)) => {}
                Err(Error::UnknownVersion(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.rec.planning = None;
        // A plan cut short leaves no plan; a retarget cut short leaves its migration's.
        if matches!(self.rec.state, State::Stable | State::Complete) {
            self.rec.plan = None;
        }
        self.note(format!("undid a plan cut short: {why}"))
    }

    /// Starts counting live traffic per candidate partition.
    pub fn shadow(&mut self) -> Result<()> {
        self.fence()?;
        self.check_transition(State::Shadowing)?;
        self.reconcile_gate("shadowing")?;
        let spec = PartitionSpec::parse(&self.plan_ref()?.spec)?;
        self.fenced(|db| db.set_shadow(Some(spec)))?;
        self.go(State::Shadowing, "shadowing live traffic")
    }

    /// Checks shadow statistics, consistency and reconciliation. A failed check rolls the
    /// migration back (with its reason) and returns the error.
    pub fn validate(&mut self) -> Result<ConsistencyReport> {
        self.go(State::Validating, "validating")?;
        // Counters of the candidate only: the caller may be shadowing another function
        // (whose partitions these are not), or none was started for this plan.
        let candidate = PartitionSpec::parse(&self.plan_ref()?.spec).ok();
        if let Some(load) = self
            .db
            .shadow_load()
            .filter(|l| candidate.as_ref() == Some(&l.spec))
        {
            let hot = crate::hot::hot_partitions(&load, 2.0)?;
            if !hot.is_empty() {
                self.note(format!(
                    "shadow traffic predicts hot candidate partitions {hot:?} (shares {:?})",
                    hot.iter()
                        .map(|&p| format!("{:.1}%", load.shares()[p as usize] * 100.0))
                        .collect::<Vec<_>>()
                ))?;
            }
        }
        self.fenced(|db| db.set_shadow(None))?;
        let report = self.checkpoint_gate("validation")?;
        if let Some(p) = self.rec.plan.as_mut() {
            p.validated = true;
        }
        self.note("validation passed")?;
        Ok(report)
    }

    /// An automatic rollback; if it fails, the error says what triggered it as well.
    fn roll_back_because(&mut self, reason: &str) -> Result<()> {
        self.rollback(reason)
            .map_err(|e| Error::Background(format!("{reason}; the automatic rollback failed: {e}")))
    }

    /// Runs the consistency check and reconciliation; on failure rolls back.
    fn checkpoint_gate(&mut self, when: &str) -> Result<ConsistencyReport> {
        let (report, rolled_back) = self.run_checks(when)?;
        match rolled_back {
            Some(reason) => Err(Error::LayoutRefused(reason)),
            None => Ok(report),
        }
    }

    /// The consistency check, then the reconciliation. A failure whose trigger is on rolls
    /// the migration back, and its reason is returned.
    fn run_checks(&mut self, when: &str) -> Result<(ConsistencyReport, Option<String>)> {
        let report = consistency::check(&self.db, self.cfg.check)?;
        // Timed from the end: a check that takes longer than the interval must not start
        // the next one at once, walking every table without pause.
        self.last_check = Instant::now();
        if !report.ok() && self.cfg.triggers.on_consistency_failure {
            let reason = format!(
                "consistency check failed at {when}: {} ({} problem(s) in all)",
                report.problems.first().cloned().unwrap_or_default(),
                report.problems.len()
            );
            self.roll_back_because(&reason)?;
            return Ok((report, Some(reason)));
        }
        let rolled_back = self.reconcile(when)?;
        Ok((report, rolled_back))
    }

    /// [`Controller::reconcile`], its rollback returned as an error. Run at every state
    /// change the controller makes on its way forward (the checkpoint gates run it too).
    fn reconcile_gate(&mut self, when: &str) -> Result<()> {
        match self.reconcile(when)? {
            Some(reason) => Err(Error::LayoutRefused(reason)),
            None => Ok(()),
        }
    }

    /// Checks the reconciliation hook's figure against the plan's: a change rolls the
    /// migration back, and its reason is returned.
    fn reconcile(&mut self, when: &str) -> Result<Option<String>> {
        match (self.rec.reconciliation.clone(), self.reconcile_now()?) {
            (Some(expected), Some(now)) if now != expected => {
                let reason =
                    format!("reconciliation changed at {when}: expected {expected}, got {now}");
                if self.cfg.triggers.on_reconciliation_mismatch {
                    self.roll_back_because(&reason)?;
                    return Ok(Some(reason));
                }
                // Not rolled back, as configured, but on record: a migration that completes
                // past a changed figure must say so. Once per run of periodic checks that
                // keep finding it, not once per check.
                let reason = bounded_reason(format!("{reason} (automatic rollback off)"));
                if self.rec.events.last().map(|e| &e.reason) != Some(&reason) {
                    self.note(reason)?;
                }
            }
            // No hook when the plan was made (`sluice migrate plan` sets none): the first
            // gate with one takes the baseline, rather than every gate skipping the check.
            (None, Some(now)) => {
                self.rec.reconciliation = Some(now.clone());
                self.note(format!(
                    "reconciliation baseline taken at {when} (none at plan time): {now}"
                ))?;
            }
            _ => {}
        }
        Ok(None)
    }

    /// Refuses a state change the state machine does not allow before anything is done
    /// in the engine for it.
    fn check_transition(&self, to: State) -> Result<()> {
        let from = self.rec.state;
        if from == to || from.allows(to) {
            Ok(())
        } else {
            Err(Error::LayoutRefused(format!(
                "controller cannot go from {from} to {to}"
            )))
        }
    }

    /// Makes the candidate the target: optional checkpoint, then the switch (one manifest
    /// edit), then the canary (a small part migrated and checked), then paced migration.
    pub fn start(&mut self) -> Result<()> {
        self.fence()?;
        // Validating alone says only that a validation began (one that could not run, or
        // cut short by a crash, leaves it): the switch waits for one that passed.
        let validated = self.rec.plan.as_ref().is_some_and(|p| p.validated);
        if matches!(self.rec.state, State::Planned | State::Shadowing)
            || (self.rec.state == State::Validating && !validated)
        {
            self.validate()?;
        }
        if self.rec.state != State::Validating {
            return Err(Error::LayoutRefused(format!(
                "cannot start from {}",
                self.rec.state
            )));
        }
        let plan = self.plan_ref()?.clone();
        if let Some(dir) = &plan.checkpoint_dir {
            let path = std::path::Path::new(dir);
            // A checkpoint is complete once its CURRENT file exists (written last, after
            // every file it names is durable): one there was taken by this start before a
            // crash, and is kept, if it opens. Anything else in the directory is not a
            // checkpoint this plan can rely on.
            if path.join("CURRENT").is_file() {
                let opts = sluice::Options {
                    create_if_missing: false,
                    ..sluice::Options::default()
                };
                if let Err(e) = Db::open_read_only(path, opts) {
                    return Err(Error::InvalidOption {
                        name: "checkpoint_dir",
                        reason: format!(
                            "{dir} holds a checkpoint that does not open ({e}); empty it to \
                             take the checkpoint again, or plan again with another directory"
                        ),
                    });
                }
            } else {
                if dir_has_entries(path)? {
                    return Err(Error::InvalidOption {
                        name: "checkpoint_dir",
                        reason: format!(
                            "{dir} holds files but no complete checkpoint (a checkpoint \
                             interrupted by a crash, or files put there since the plan); \
                             empty it to take the checkpoint, or plan again with another \
                             directory"
                        ),
                    });
                }
                self.db.checkpoint(path)?;
                self.note(format!("checkpoint written to {dir}"))?;
            }
        }
        // Held before the switch: a crash after it resumes held until the canary passes.
        self.apply_pacing(false)?;
        self.switch_target(VersionId(plan.to))?;
        self.go(
            State::Migrating,
            format!("target switched v{} -> v{}", plan.from, plan.to),
        )?;
        self.canary()
    }

    /// Migrates the candidate's canary share and checks it, once per candidate (a retarget
    /// runs one for its new candidate), then lets background migration run. Until it
    /// passes, background migration is held: a crash between the target switch and the
    /// canary's record resumes held, and the next `tick` runs it (the gate it ends in needs
    /// the reconciliation hook, set after attach).
    fn canary(&mut self) -> Result<()> {
        let plan = self.plan_ref()?.clone();
        if plan.canary_done {
            return Ok(());
        }
        #[cfg(test)]
        tests::reach("canary: before migrating");
        // Fenced: a controller claimed since (between this one's last check of its epoch
        // and here) gets a paused or rolled-back migration it can trust, not a canary's
        // worth moved by the controller it replaced. The canary is small; a claim waits
        // for it.
        let moved = match self.canary_moved {
            Some(moved) => moved,
            None => self.fenced(|db| db.migrate_now(Some(plan.canary_bytes.max(1))))?,
        };
        self.canary_moved = Some(moved);
        self.checkpoint_gate("canary")?;
        if let Some(p) = self.rec.plan.as_mut() {
            p.canary_done = true;
        }
        self.save()?;
        self.note(format!("canary: {moved} bytes migrated and validated"))?;
        self.pace()
    }

    /// Replaces the candidate mid-migration with a corrected function, keeping the progress:
    /// the old candidate starts draining into the new one; rollback still returns to the
    /// layout the migration started from.
    pub fn retarget(&mut self, spec: PartitionSpec, force: bool) -> Result<PlanReport> {
        self.fence()?;
        if !matches!(self.rec.state, State::Migrating | State::Paused) {
            return Err(Error::LayoutRefused(format!(
                "retarget needs a running migration, not {}",
                self.rec.state
            )));
        }
        // The candidate itself changes nothing; the function the migration started from is
        // a rollback, which keeps that layout pinned as the way back.
        let (to, from) = {
            let p = self.plan_ref()?;
            (p.to, p.from)
        };
        let fp = spec.fingerprint();
        let of = |id: u32| {
            let l = self.db.layout();
            l.versions
                .iter()
                .any(|v| v.id.0 == id && v.fingerprint == fp)
        };
        if of(to) {
            return Err(Error::LayoutRefused(format!(
                "{spec} is the candidate already (v{to}): there is nothing to retarget to"
            )));
        }
        if of(from) {
            return Err(Error::LayoutRefused(format!(
                "{spec} is the function the migration started from (v{from}): roll back to return to it"
            )));
        }
        self.reconcile_gate("retarget")?;
        let a = self.analyze(&spec)?;
        let biased = self.is_biased(&a);
        if biased && !force {
            return Err(Error::LayoutRefused(format!(
                "corrected candidate {spec} is still biased (max/mean {:.2})",
                a.distribution.max_over_mean
            )));
        }
        let layout = self.db.layout();
        let existing = layout
            .versions
            .iter()
            .find(|v| v.fingerprint == fp)
            .map(|v| v.id);
        // As in `plan`: what claiming the candidate changes in the engine is recorded first,
        // so that a retarget cut short (a crash, or a claim by another controller before
        // the new candidate is recorded) is undone rather than leaving it pinned for ever.
        let intent = planning_intent(&layout, fp, existing);
        self.rec.planning = Some(intent.clone());
        if let Err(e) = self.save() {
            self.rec.planning = None;
            return Err(e);
        }
        let to = match self.claim_candidate(&spec, existing) {
            Ok(to) => to,
            Err(e) => {
                let _ = self.undo_planning(&intent, &format!("retarget to {spec} failed: {e}"));
                return Err(e);
            }
        };
        #[cfg(test)]
        tests::reach("retarget: after the claim");
        let (old, from) = {
            let p = self.plan_ref()?;
            (p.to, p.from)
        };
        // Recorded before the engine switches: a crash after this point resumes into the new
        // candidate and releases the old one (see `resume`); a crash before it leaves the
        // migration as it was.
        // The new candidate gets a canary of its own; movement is held until it passes.
        let draining: u64 = layout.versions.iter().map(|v| v.bytes()).sum();
        let before = self.rec.clone();
        self.rec.planning = None;
        if let Some(p) = self.rec.plan.as_mut() {
            p.superseded.push(old);
            p.to = to.0;
            p.spec = spec.to_string();
            p.forced |= biased;
            p.predicted_max_over_mean = a.distribution.max_over_mean;
            p.predicted_p_value = a.distribution.p_value;
            p.canary_bytes = ((draining as f64) * self.cfg.canary_fraction) as u64;
            p.canary_done = false;
            self.canary_moved = None;
        }
        // A paused migration stays paused: the retarget only changes where it goes.
        let state = self.rec.state;
        let held = self.apply_pacing(false);
        if let Err(e) = held.and_then(|()| {
            self.go(
                state,
                format!(
                    "retargeted v{old} -> {to} = {spec}, keeping progress (v{old} drains into it)"
                ),
            )
        }) {
            self.rec = before;
            let _ = self.pace();
            // Undone here if this controller still may; if not (another claimed it), the
            // intent stays recorded for the next controller to undo on attach.
            let _ = self.undo_planning(&intent, &format!("retarget to {spec} failed: {e}"));
            return Err(e);
        }
        self.switch_target(to)?;
        // The superseded candidate drains into the new one and may retire once empty — unless
        // it is the layout the migration started from (the rollback target stays pinned).
        if old != from && old != to.0 {
            self.fenced(|db| unpin_if_live(db, old))?;
        }
        if state == State::Migrating {
            self.canary()?;
        }
        Ok(PlanReport {
            version: to,
            analysis: a,
            biased,
            forced: biased,
        })
    }

    /// Pauses the migration: background migration and lazy moves are held (persisted, so
    /// they stay held across restarts until [`Controller::resume_migration`]). Then the
    /// reconciliation gate runs; a mismatch rolls back as at every state change, but a hook
    /// that fails is logged and does not keep the pause from taking effect.
    pub fn pause(&mut self) -> Result<()> {
        self.fence()?;
        self.check_transition(State::Paused)?;
        self.apply_pacing(false)?;
        self.go(State::Paused, "paused")?;
        match self.reconcile("pause") {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => Err(Error::LayoutRefused(reason)),
            Err(e) => self.note(format!("reconciliation at pause could not run: {e}")),
        }
    }

    /// Resumes a paused migration (a running one is left running, its pacing re-applied).
    /// Nothing else: from `Validating` (a `start` that failed after validation) this would
    /// record `Migrating` without the switch of target and the checkpoint `start` makes, and
    /// then finish by retiring the empty candidate.
    pub fn resume_migration(&mut self) -> Result<()> {
        self.fence()?;
        if self.rec.state == State::Migrating {
            self.canary()?;
            return self.pace();
        }
        if self.rec.state != State::Paused {
            return Err(Error::LayoutRefused(format!(
                "only a paused migration can be resumed; the migration is {} (use start \
                 to begin one that was validated)",
                self.rec.state
            )));
        }
        self.reconcile_gate("resume")?;
        self.go(State::Migrating, "resumed")?;
        // A candidate retargeted to while paused runs its canary now.
        self.canary()?;
        self.pace()
    }

    /// Rolls back: sets the target back to the layout the migration started from (one
    /// manifest edit; nothing is copied and nothing written before, during or after the
    /// switch is lost). Data already in the candidate drains back at the paced rate.
    pub fn rollback(&mut self, reason: &str) -> Result<()> {
        self.fence()?;
        if matches!(self.rec.state, State::Stable | State::Complete) {
            return Err(Error::LayoutRefused(format!(
                "nothing to roll back in state {}",
                self.rec.state
            )));
        }
        // Finishing retires the layout the migration started from; once it is gone there
        // is nothing to roll back to (and a rollback recorded now could never complete).
        let from = self.plan_ref()?.from;
        let retired = || {
            Error::LayoutRefused(format!(
                "v{from} has retired: the migration can only be finished"
            ))
        };
        if !self.db.layout().versions.iter().any(|v| v.id.0 == from) {
            return Err(retired());
        }
        // Pinned before the rollback is recorded: unpinned (a `finish` cut short after its
        // unpins) and drained, it could retire between the check above and the switch back,
        // leaving a RollingBack that no controller could ever complete.
        match self.fenced(|db| db.pin_version(VersionId(from), true)) {
            Ok(()) => {}
            Err(Error::VersionRetired(_) | Error::UnknownVersion(_)) => return Err(retired()),
            Err(e) => return Err(e),
        }
        #[cfg(test)]
        tests::reach("rollback: before recording it");
        self.go(State::RollingBack, format!("rollback: {reason}"))?;
        self.complete_rollback(reason)
    }

    fn complete_rollback(&mut self, reason: &str) -> Result<()> {
        let plan = self.plan_ref()?.clone();
        let from = plan.from;
        self.fenced(|db| db.set_shadow(None))?;
        if self.db.layout().target.0 != from {
            self.switch_target(VersionId(from))?;
        }
        self.pace()?;
        // Pins are released before `Stable` is recorded: a crash in between resumes in
        // `RollingBack` and releases them again (idempotent), instead of leaving the
        // abandoned candidate pinned for ever.
        self.fenced(|db| unpin_if_live(db, from))?;
        if plan.to != from {
            // The abandoned candidate drains back and retires once empty; one that never
            // took data (rolled back before the switch, or drained already) retires now.
            // It used to stay live for ever, one more layout per abandoned plan.
            self.fenced(|db| unpin_if_live(db, plan.to))?;
            match self.fenced(|db| db.retire_version(VersionId(plan.to))) {
                Ok(()) | Err(Error::LayoutRefused(_) | Error::VersionRetired(_)) => {}
                Err(Error::UnknownVersion(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Checked at this state change too: a discrepancy that arose during the migration
        // is recorded with the rollback (the next plan takes a new baseline).
        // (A hook that fails must not keep the rollback from completing.)
        let mismatch = match (self.rec.reconciliation.clone(), self.reconcile_now()) {
            (Some(expected), Ok(Some(now))) if now != expected => {
                format!("; RECONCILIATION CHANGED: expected {expected}, got {now}")
            }
            (_, Err(e)) => format!("; reconciliation could not be computed: {e}"),
            _ => String::new(),
        };
        let saved = self.rec.plan.take();
        if let Err(e) = self.go(
            State::Stable,
            format!("rolled back to v{from}: {reason}{mismatch}"),
        ) {
            self.rec.plan = saved;
            return Err(e);
        }
        Ok(())
    }

    /// Pins the candidate layout (reusing a live one with the same function if possible) so
    /// it cannot retire between planning and switching to it.
    fn claim_candidate(
        &self,
        spec: &PartitionSpec,
        existing: Option<VersionId>,
    ) -> Result<VersionId> {
        if let Some(v) = existing {
            match self.fenced(|db| db.pin_version(v, true)) {
                Ok(()) => return Ok(v),
                // Drained and retired since we looked: register the function anew.
                Err(Error::VersionRetired(_)) | Err(Error::UnknownVersion(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let v = self.fenced(|db| {
            let v = db.register_partition_fn(spec.clone())?;
            db.pin_version(v, true)?;
            Ok(v)
        })?;
        Ok(v)
    }

    /// Migrates everything left, checks, and completes: the old layouts retire.
    pub fn finish(&mut self) -> Result<()> {
        self.fence()?;
        if self.rec.state != State::Finalizing {
            self.go(State::Finalizing, "finishing")?;
        }
        // Releases a hold (a migration finished from Paused).
        self.pace()?;
        // Fenced a slice at a time: a controller claimed meanwhile stops this one within
        // a slice (a claim waits for the slice in progress, not for the whole migration).
        loop {
            #[cfg(test)]
            tests::reach("finish: before a slice");
            let moved = self.fenced(|db| db.migrate_now(Some(FINISH_SLICE)))?;
            // `migrate_now` stops short of its budget only once nothing is left to move.
            if moved < FINISH_SLICE {
                break;
            }
        }
        self.checkpoint_gate("finish")?;
        let plan = self.plan_ref()?.clone();
        // Either may be retired already: a crash after the unpins (or after the retire)
        // resumes here, and must complete rather than fail on the retired version.
        self.fenced(|db| unpin_if_live(db, plan.from))?;
        self.fenced(|db| unpin_if_live(db, plan.to))?;
        self.fenced(|db| db.retire_drained())?;
        self.go(State::Complete, "all draining layouts retired")?;
        self.rec.plan = None;
        self.save()
    }

    /// Watches a running migration: automatic rollback triggers, and completion once no
    /// draining data is left. Call it periodically (e.g. once a second).
    pub fn tick(&mut self, obs: Option<Observation>) -> Result<TickReport> {
        self.tick_then(obs, true)
    }

    /// [`Controller::tick`] without the completion: the triggers are watched, but a
    /// migration with nothing left to drain stays `Migrating` (or `Paused`), so that a
    /// caller that means to retarget or roll back at some point of its progress is not
    /// overtaken by a tick that finished it meanwhile.
    pub fn watch(&mut self, obs: Option<Observation>) -> Result<TickReport> {
        self.tick_then(obs, false)
    }

    fn tick_then(&mut self, obs: Option<Observation>, complete: bool) -> Result<TickReport> {
        let progress = self.db.migration_progress();
        let mut rolled_back = None;
        let mut completed = false;
        let finishing = complete && progress.is_complete();
        if matches!(self.rec.state, State::Migrating | State::Paused) {
            self.fence()?;
            // The observed health first: a check that cannot run must not keep these from
            // being watched.
            let t = self.cfg.triggers.clone();
            // The caller's observation is a window of its own. The engine's windows count
            // once each, however often ticks read them (counted per tick, one slow second
            // read by three ticks was three slow windows and rolled back), and every one
            // counts, however seldom ticks come (counted per tick, two slow windows with
            // fast ones between them, read by two ticks, were two in a row).
            let p99s: Vec<u64> = match obs.and_then(|o| o.p99_us) {
                Some(p99) => {
                    // It stands for the engine's windows that ended meanwhile: a later tick
                    // without the caller's p99 does not judge them again.
                    self.p99_window = Some(progress.foreground_p99_window);
                    vec![p99]
                }
                None => {
                    let seen = self.p99_window.unwrap_or(0);
                    let now = progress.foreground_p99_window;
                    self.p99_window = Some(now);
                    let recent = &progress.foreground_p99_recent_us;
                    let new = usize::try_from(now.saturating_sub(seen)).unwrap_or(usize::MAX);
                    if new > recent.len() {
                        // Windows ended that the engine no longer keeps: whatever they
                        // were, the ones before them are not in a row with the ones after.
                        self.over_budget = 0;
                    }
                    recent[recent.len() - new.min(recent.len())..].to_vec()
                }
            };
            if let (None, Some(budget)) = (&rolled_back, t.p99_budget_us) {
                for p99 in p99s {
                    if p99 > budget {
                        self.over_budget += 1;
                    } else {
                        self.over_budget = 0;
                    }
                    if self.over_budget >= t.p99_windows.max(1) {
                        let reason = format!(
                            "p99 {p99} µs over budget {budget} µs for {} windows",
                            self.over_budget
                        );
                        self.roll_back_because(&reason)?;
                        rolled_back = Some(reason);
                        break;
                    }
                }
            }
            if let (None, Some(limit), Some(o)) = (&rolled_back, t.max_error_rate, obs) {
                // Errors over the operations, or over the errors where there are more of
                // them (`ops` counting only the operations that went through): a window of
                // nothing but errors is a rate of 1, not one to skip.
                let rate = match o.errors {
                    0 => 0.0,
                    e => e as f64 / o.ops.max(e) as f64,
                };
                if rate > limit {
                    let reason = format!(
                        "error rate {:.3}% over limit {:.3}%",
                        100.0 * rate,
                        100.0 * limit
                    );
                    self.roll_back_because(&reason)?;
                    rolled_back = Some(reason);
                }
            }
            if rolled_back.is_none() && self.rec.state == State::Migrating {
                rolled_back = self.tick_checks(finishing)?;
            }
            if finishing && rolled_back.is_none() {
                let (from, r) = (self.rec.state, self.finish());
                rolled_back = self.rolled_back_by(from, r)?;
                completed = rolled_back.is_none();
            }
        } else if complete && self.rec.state == State::Finalizing {
            // Spaced as a canary's or a periodic check's retries are: each attempt runs
            // the finish's check over every table.
            if let Some(left) = self.retry_wait() {
                return Err(Error::Background(format!(
                    "the last attempt to finish failed; next attempt in {} ms",
                    left.as_millis().max(1)
                )));
            }
            let started = Instant::now();
            let r = self.finish();
            self.failed_attempt = match (&r, self.rec.state) {
                (Err(_), State::Finalizing) => Some((Instant::now(), started.elapsed())),
                _ => None,
            };
            rolled_back = self.rolled_back_by(State::Finalizing, r)?;
            completed = rolled_back.is_none();
        }
        Ok(TickReport {
            state: self.rec.state,
            progress: self.db.migration_progress(),
            rolled_back,
            completed,
        })
    }

    /// A tick's canary (until it passes) and periodic check; the reason if one rolled the
    /// migration back. A check that cannot run (the reconciliation hook fails, a table
    /// cannot be read) holds data movement and is returned as the error; the hold lasts
    /// until a check runs and passes (tried on every tick meanwhile).
    fn tick_checks(&mut self, finishing: bool) -> Result<Option<String>> {
        if let (Some(was), Some(left)) = (&self.rec.check_failing, self.retry_wait()) {
            return Err(Error::Background(format!(
                "a check could not run: {was}; migration held, next attempt in {} ms",
                left.as_millis().max(1)
            )));
        }
        let started = Instant::now();
        let canary_pending = !self.plan_ref()?.canary_done;
        let r = self.canary();
        let mut outcome = self.rolled_back_by(State::Migrating, r);
        let mut ran = canary_pending;
        // Not when this tick finishes: `finish` runs the same checks.
        let due = |every: Duration| self.last_check.elapsed() >= every;
        if matches!(outcome, Ok(None))
            && !finishing
            && (self.rec.check_failing.is_some()
                || self.cfg.triggers.periodic_check.is_some_and(due))
        {
            ran = true;
            outcome = self.run_checks("a periodic check").map(|(_, r)| r);
        }
        match outcome {
            Ok(None) if ran && self.rec.check_failing.is_some() => {
                let was = self.rec.check_failing.take().unwrap_or_default();
                self.failed_attempt = None;
                self.note(format!(
                    "checks pass again (they could not run: {was}); migration resumes"
                ))?;
                self.pace()?;
                Ok(None)
            }
            Ok(r) => Ok(r),
            Err(e) => {
                self.failed_attempt = Some((Instant::now(), started.elapsed()));
                if self.rec.check_failing.is_none() {
                    // Recorded (with the note) before the hold: a restart in between
                    // resumes held, and tries the check again at its first tick.
                    // Cut as event reasons are: the whole of a long error (a hook's,
                    // quoting what it could not reach) took the record past its limit,
                    // and no state change could be recorded after it.
                    self.rec.check_failing = Some(bounded_reason(e.to_string()));
                    self.note(format!(
                        "a check could not run: {e}; migration held until one passes"
                    ))?;
                    self.pace()?;
                }
                Err(e)
            }
        }
    }

    /// How long ticks still wait before trying again the check that could not run at the
    /// last attempt (see [`Triggers::check_retry`]); `None` once they may.
    fn retry_wait(&self) -> Option<Duration> {
        let (ended, took) = self.failed_attempt?;
        let wait = self.cfg.triggers.check_retry.max(took);
        wait.checked_sub(ended.elapsed()).filter(|l| !l.is_zero())
    }

    /// A gate's failure as a tick reports it: the reason, when the step (begun in state
    /// `from`) failed because its gate rolled the migration back; any other error as is.
    fn rolled_back_by(&self, from: State, r: Result<()>) -> Result<Option<String>> {
        match r {
            Ok(()) => Ok(None),
            Err(Error::LayoutRefused(reason))
                if self.rec.state != from
                    && matches!(self.rec.state, State::Stable | State::RollingBack) =>
            {
                Ok(Some(reason))
            }
            Err(e) => Err(e),
        }
    }

    /// Splits a hot partition of the target layout into `into` virtual sub-partitions by
    /// planning (and starting) a migration to a `Split` version of the current function.
    /// `seed: None` picks one that no hash of the current function uses; a seed that one
    /// does use is refused (it would put every key of the partition in one sub-partition).
    pub fn split_hot_partition(
        &mut self,
        partition: u32,
        into: u32,
        seed: Option<u64>,
    ) -> Result<PlanReport> {
        let layout = self.db.layout();
        let target = layout
            .versions
            .iter()
            .find(|v| v.is_target)
            .ok_or(Error::UnknownVersion(layout.target.0))?;
        let spec = match seed {
            Some(seed) => PartitionSpec::Split {
                base: Box::new(target.spec.clone()),
                partition,
                into,
                seed,
            },
            None => PartitionSpec::split(target.spec.clone(), partition, into),
        };
        spec.validate()?;
        spec.refuse_inert_split()?;
        // A split is uneven by design relative to the base, so the gate is advisory here.
        let report = self.plan(
            spec,
            PlanOptions {
                force: true,
                checkpoint_dir: None,
            },
        )?;
        self.start()?;
        Ok(report)
    }
}

/// The directory a plan's checkpoint goes to: absolute (a later `start` may run from another
/// working directory), UTF-8 (it is stored in the plan record), and new or empty.
fn checkpoint_target(dir: &str) -> Result<String> {
    let bad = |reason: String| Error::InvalidOption {
        name: "checkpoint_dir",
        reason,
    };
    let abs = std::path::absolute(dir).map_err(|e| bad(format!("{dir}: {e}")))?;
    if dir_has_entries(&abs)? {
        return Err(bad(format!("{} exists and is not empty", abs.display())));
    }
    abs.to_str()
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("{} is not valid UTF-8", abs.display())))
}

/// Whether `dir` exists and holds anything but a lock file (a checkpoint holds the
/// directory's `LOCK` while it writes and leaves it there, also when it fails and clears
/// the rest; `Db::checkpoint` fails if another holds it).
fn dir_has_entries(dir: &std::path::Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.any(|e| e.map_or(true, |e| e.file_name() != "LOCK"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// The most of an event's reason the persisted record keeps. Reasons quote what the
/// caller hands in (a reconciliation figure, twice in a mismatch and again in the rollback
/// it triggers; a key named by a consistency problem), and the record keeps
/// [`MAX_EVENTS`] of them: unbounded, a figure of a few MiB took the record past the
/// 16 MiB a controller's state may take, and the rollback it triggered could not be
/// recorded.
const MAX_REASON_BYTES: usize = 4096;

/// `reason`, cut to [`MAX_REASON_BYTES`] (at a character boundary) with a note of how much
/// was left out.
fn bounded_reason(mut reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let total = reason.len();
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.push_str(&format!("… ({} more bytes left out)", total - end));
    reason
}

/// Unpins a version that may have retired meanwhile.
fn unpin_if_live(db: &Db, v: u32) -> Result<()> {
    match db.pin_version(VersionId(v), false) {
        Err(Error::VersionRetired(_)) | Err(Error::UnknownVersion(_)) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    type Hook = (&'static str, Box<dyn FnOnce()>);

    thread_local! {
        static HOOKS: RefCell<Vec<Hook>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes `f` run (once) the next time this thread reaches `point`.
    fn set(point: &'static str, f: impl FnOnce() + 'static) {
        HOOKS.with(|h| h.borrow_mut().push((point, Box::new(f))));
    }

    /// Called at `point`: runs what a test set to happen there, if anything.
    pub(super) fn reach(point: &'static str) {
        let f = HOOKS.with(|h| {
            let mut h = h.borrow_mut();
            let i = h.iter().position(|(p, _)| *p == point)?;
            Some(h.remove(i).1)
        });
        if let Some(f) = f {
            f();
        }
    }

    /// A database of 2,000 accounts of 100 each, flushed, migrating only when told to.
    fn ledger(dir: &std::path::Path) -> Db {
        let opts = sluice::Options {
            migration_bytes_per_sec: 0,
            ..sluice::Options::tiny()
        };
        let db = Db::open(dir, opts).unwrap();
        for i in 0..2000u32 {
            db.put(format!("acct:{i:05}"), "100").unwrap();
        }
        db.flush().unwrap();
        db
    }

    fn cfg() -> ControllerConfig {
        ControllerConfig {
            migration_bytes_per_sec: 0,
            ..ControllerConfig::default()
        }
    }

    fn hash(seed: u64) -> PartitionSpec {
        PartitionSpec::Hash {
            partitions: 8,
            seed,
            hashed_prefix: None,
        }
    }

    /// A controller config that migrates in the background (the tests' default does not).
    fn running_cfg() -> ControllerConfig {
        ControllerConfig {
            migration_bytes_per_sec: 1 << 20,
            ..ControllerConfig::default()
        }
    }

    /// Whether data movement is held, and the engine's rate.
    fn pacing(db: &Db) -> (bool, u64) {
        let p = db.migration_progress();
        (p.held, p.rate_limit_bytes_per_sec)
    }

    /// A restart between the target switch and the canary resumes held: background
    /// migration waits for the canary (which the next tick runs). It used to resume at
    /// the full budget with the canary undone.
    #[test]
    fn a_restart_before_the_canary_resumes_held_until_it_passes() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut c = Controller::attach(db.clone(), running_cfg()).unwrap();
        let v = c.plan(hash(5), PlanOptions::default()).unwrap().version;
        c.validate().unwrap();
        // The switch `start` makes, and then the process dies.
        db.set_target(v).unwrap();
        drop(c);
        let mut c = Controller::attach(db.clone(), running_cfg()).unwrap();
        assert_eq!(c.state(), State::Migrating);
        assert!(!c.record().plan.as_ref().unwrap().canary_done);
        assert_eq!(pacing(&db), (true, 0), "migrating before the canary");
        c.watch(None).unwrap();
        assert!(c.record().plan.as_ref().unwrap().canary_done);
        assert_eq!(pacing(&db), (false, 1 << 20));
    }

    /// A retarget keeps a paused migration paused, and its new candidate gets a canary of
    /// its own, run when the migration resumes. A retarget used to record Migrating and
    /// migrate at the full budget, with the old candidate's canary standing for the new one.
    #[test]
    fn a_retarget_leaves_a_paused_migration_paused_with_a_canary_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut c = Controller::attach(db.clone(), running_cfg()).unwrap();
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.start().unwrap();
        assert_eq!(pacing(&db), (false, 1 << 20));
        c.pause().unwrap();
        assert_eq!(pacing(&db), (true, 0));
        let v3 = c.retarget(hash(6), false).unwrap().version;
        assert_eq!(db.layout().target, v3);
        assert_eq!(c.state(), State::Paused);
        assert_eq!(pacing(&db), (true, 0), "a retarget un-paused the migration");
        assert!(!c.record().plan.as_ref().unwrap().canary_done);
        c.resume_migration().unwrap();
        assert_eq!(c.state(), State::Migrating);
        assert!(c.record().plan.as_ref().unwrap().canary_done);
        assert_eq!(pacing(&db), (false, 1 << 20));
        // A retarget while migrating runs the new candidate's canary at once.
        c.retarget(hash(7), false).unwrap();
        assert_eq!(c.state(), State::Migrating);
        assert!(c.record().plan.as_ref().unwrap().canary_done);
        assert_eq!(pacing(&db), (false, 1 << 20));
    }

    /// A reconciliation hook that fails keeps neither the observed-health triggers from
    /// being watched nor a pause from taking effect, and holds data movement until a check
    /// passes again. A failing hook used to end every tick before the triggers, with
    /// migration running at full budget, and made `pause` fail.
    #[test]
    fn a_check_that_cannot_run_holds_migration_and_blocks_nothing_else() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut cfg = running_cfg();
        cfg.triggers.periodic_check = Some(Duration::ZERO);
        cfg.triggers.check_retry = Duration::ZERO;
        cfg.triggers.max_error_rate = Some(0.1);
        let broken = std::sync::Arc::new(AtomicBool::new(false));
        let mut c = attach_with_flaky_hook(&db, cfg, &broken);
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.start().unwrap();
        // `watch`, not `tick`: the background migration can drain this small ledger
        // between two calls, and a tick would then finish the migration.
        broken.store(true, Relaxed);
        let healthy = Observation {
            ops: 100,
            errors: 0,
            p99_us: Some(10),
        };
        assert!(c.watch(Some(healthy)).is_err(), "the hook failed");
        assert_eq!(c.state(), State::Migrating);
        assert_eq!(pacing(&db), (true, 0), "migrating while no check could run");
        // Still failing: held, and the triggers still watch.
        let failing = Observation {
            ops: 100,
            errors: 50,
            ..healthy
        };
        let t = c.watch(Some(failing)).unwrap();
        assert!(t.rolled_back.is_some_and(|r| r.contains("error rate")));
        assert_eq!(c.state(), State::Stable);
        assert!(!pacing(&db).0, "a rollback drains back");
        assert_eq!(c.record().check_failing, None, "no migration left to hold");

        // A pause takes effect with the hook failing.
        broken.store(false, Relaxed);
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.start().unwrap();
        broken.store(true, Relaxed);
        c.pause().unwrap();
        assert_eq!(c.state(), State::Paused);
        assert_eq!(pacing(&db), (true, 0));
        c.resume_migration().unwrap_err();
        assert_eq!(c.state(), State::Paused, "resumed past a failing gate");
        // Fixed: resumed, then a tick's check passes and movement runs.
        broken.store(false, Relaxed);
        c.resume_migration().unwrap();
        c.watch(Some(healthy)).unwrap();
        assert_eq!(pacing(&db), (false, 1 << 20));
        // A failing check, then one that passes again, releases the hold.
        broken.store(true, Relaxed);
        assert!(c.watch(Some(healthy)).is_err());
        assert_eq!(pacing(&db), (true, 0));
        broken.store(false, Relaxed);
        until_retry(&c);
        c.watch(Some(healthy)).unwrap();
        assert_eq!(pacing(&db), (false, 1 << 20));
    }

    /// A configuration whose fractions are not fractions is refused at attach, before
    /// the claim.
    #[test]
    fn fractions_that_are_not_fractions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        for (canary, errors) in [
            (f64::NAN, None),
            (-0.1, None),
            (1.5, None),
            (0.02, Some(f64::NAN)),
            (0.02, Some(2.0)),
        ] {
            let mut cfg = running_cfg();
            cfg.canary_fraction = canary;
            cfg.triggers.max_error_rate = errors;
            let e = Controller::attach(db.clone(), cfg).err().expect("refused");
            assert!(matches!(e, Error::InvalidOption { .. }), "{e}");
        }
        let gate_off: [fn(&mut ControllerConfig); 5] = [
            |c| c.sample_keys = 0,
            |c| c.thresholds.alpha = f64::NAN,
            |c| c.thresholds.alpha = 0.0,
            |c| c.thresholds.max_over_mean = f64::NAN,
            |c| c.thresholds.min_expected = f64::INFINITY,
        ];
        for (i, f) in gate_off.iter().enumerate() {
            let mut cfg = running_cfg();
            f(&mut cfg);
            let e = Controller::attach(db.clone(), cfg).err().expect("refused");
            assert!(matches!(e, Error::InvalidOption { .. }), "{i}: {e}");
        }
        assert_eq!(
            db.controller_epoch(),
            None,
            "claimed for a refused configuration"
        );
        let mut cfg = running_cfg();
        cfg.canary_fraction = 1.0;
        Controller::attach(db.clone(), cfg).unwrap();
    }

    /// Sleeps until a check that could not run may be tried again.
    fn until_retry(c: &Controller) {
        if let Some(left) = c.retry_wait() {
            std::thread::sleep(left);
        }
    }

    /// Gives `c` a reconciliation hook that fails while the flag returned is set (the
    /// ledger unreachable) and answers a constant figure otherwise, and counts its calls.
    fn counted_flaky_hook(
        c: &mut Controller,
    ) -> (
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, n) = (broken.clone(), calls.clone());
        c.set_reconciliation(Box::new(move |_| {
            n.fetch_add(1, Relaxed);
            match b.load(Relaxed) {
                true => Err(Error::Background("ledger unreachable".into())),
                false => Ok("sum 400000".into()),
            }
        }));
        (broken, calls)
    }

    /// A check that cannot run is tried again at most every `check_retry`, and a canary
    /// whose validation could not run is validated again without migrating a second
    /// canary's worth. Both used to happen on every tick: a full check per tick on a large
    /// database, and another canary moved (while movement was held) per tick.
    #[test]
    fn a_failing_check_is_retried_at_its_interval_without_moving_more() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            sluice::Options {
                migration_bytes_per_sec: 0,
                ..sluice::Options::tiny()
            },
        )
        .unwrap();
        for i in 0..4000u32 {
            db.put(format!("acct:{i:05}"), "100").unwrap();
            if i % 500 == 499 {
                db.flush().unwrap();
            }
        }
        let mut cfg = running_cfg();
        cfg.triggers.check_retry = Duration::from_secs(3600);
        let mut c = Controller::attach(db.clone(), cfg).unwrap();
        let (broken, calls) = counted_flaky_hook(&mut c);
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.validate().unwrap();
        let moved = |db: &Db| -> (u64, u64) {
            let p = db.migration_progress();
            (
                p.draining.iter().map(|d| d.bytes_migrated).sum(),
                p.bytes_left(),
            )
        };
        broken.store(true, Relaxed);
        c.start().unwrap_err();
        let (canary, left) = moved(&db);
        assert!(
            canary > 0 && left > 0,
            "a canary's share moved: {canary}, {left} left"
        );
        // The first tick tries again; the canary's data is not migrated a second time.
        let n0 = calls.load(Relaxed);
        c.tick(None).unwrap_err();
        assert_eq!(calls.load(Relaxed), n0 + 1);
        assert_eq!(moved(&db), (canary, left), "a second canary moved");
        assert_eq!(pacing(&db), (true, 0));
        // Within the interval the check is not tried, and movement stays held.
        for _ in 0..3 {
            let e = c.tick(None).unwrap_err().to_string();
            assert!(e.contains("next attempt in"), "{e}");
        }
        assert_eq!(calls.load(Relaxed), n0 + 1, "retried within the interval");
        assert_eq!(pacing(&db), (true, 0));
        assert!(!c.record().plan.as_ref().unwrap().canary_done);
        // Once it is due, a check that passes validates the canary and releases movement.
        broken.store(false, Relaxed);
        c.cfg.triggers.check_retry = Duration::ZERO;
        until_retry(&c);
        c.tick(None).unwrap();
        assert!(c.record().plan.as_ref().unwrap().canary_done);
        assert_eq!(pacing(&db), (false, 1 << 20));
    }

    /// A finish whose check cannot run (the hook fails) is tried again by ticks at most
    /// every `check_retry`, and never sooner than the attempt took, as a canary's or a
    /// periodic check's is. Every tick in `Finalizing` used to run the whole finish again,
    /// its consistency check over every table included, however often ticks came.
    #[test]
    fn a_finish_whose_check_cannot_run_is_retried_at_its_interval() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut cfg = cfg();
        cfg.triggers.check_retry = Duration::from_secs(3600);
        let mut c = Controller::attach(db.clone(), cfg).unwrap();
        let (broken, calls) = counted_flaky_hook(&mut c);
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.start().unwrap();
        broken.store(true, Relaxed);
        c.finish().unwrap_err();
        assert_eq!(c.state(), State::Finalizing);
        // The first tick tries again; those within the interval do not.
        let n0 = calls.load(Relaxed);
        c.tick(None).unwrap_err();
        assert_eq!(calls.load(Relaxed), n0 + 1);
        for _ in 0..3 {
            let e = c.tick(None).unwrap_err().to_string();
            assert!(e.contains("next attempt in"), "{e}");
        }
        assert_eq!(calls.load(Relaxed), n0 + 1, "retried within the interval");
        // Once it is due, a finish whose check passes completes.
        broken.store(false, Relaxed);
        c.cfg.triggers.check_retry = Duration::ZERO;
        until_retry(&c);
        assert!(c.tick(None).unwrap().completed);
        assert_eq!(c.state(), State::Complete);
    }

    /// A paused migration stays paused when the process exits: a database opened again with
    /// options that migrate at full speed stays held, and resuming releases it.
    #[test]
    fn a_pause_outlives_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut c = Controller::attach(db.clone(), running_cfg()).unwrap();
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.start().unwrap();
        c.pause().unwrap();
        let left = db.migration_progress().bytes_left();
        assert!(left > 0);
        drop(c);
        db.close().unwrap();
        let opts = sluice::Options {
            migration_bytes_per_sec: 1 << 30,
            ..sluice::Options::tiny()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let p = db.migration_progress();
        assert!(p.held, "paused, yet not held after a reopen: {p:?}");
        let mut c = Controller::attach(db.clone(), running_cfg()).unwrap();
        assert_eq!(c.state(), State::Paused);
        assert!(pacing(&db).0);
        c.resume_migration().unwrap();
        assert!(!pacing(&db).0);
        c.finish().unwrap();
        assert_eq!(c.state(), State::Complete);
        assert!(!pacing(&db).0, "held after completing");
    }

    /// A controller state that does not decode is refused before any claim (which would
    /// write to the manifest), as corruption naming the manifest and the edit holding it. It
    /// used to be blamed on CURRENT at offset 0, after a claim.
    #[test]
    fn an_undecodable_state_is_refused_naming_its_manifest_edit_before_a_claim() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let epoch = db.claim_controller().unwrap();
        db.store_controller_state(epoch, b"not json{").unwrap();
        let (offset, _) = refused_before_a_claim(&db, epoch);
        assert!(offset > 0);
    }

    /// Attaches to `db`, whose controller state (stored under `epoch`) is damaged: the
    /// attach must fail as corruption naming the manifest, without a claim. The offset of
    /// the edit named and the reason.
    fn refused_before_a_claim(db: &Db, epoch: u64) -> (u64, String) {
        let Err(e) = Controller::attach(db.clone(), cfg()) else {
            panic!("attached over a damaged state");
        };
        let Error::Corruption {
            file,
            offset,
            reason,
        } = e
        else {
            panic!("{e}");
        };
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(name.starts_with("MANIFEST-"), "{}", file.display());
        assert_eq!(db.controller_epoch(), Some(epoch), "claimed over it");
        (offset, reason)
    }

    /// A stored plan whose candidate function does not parse is damage, refused at attach
    /// before the claim like a record that does not decode. It used to be accepted: the
    /// claim was written, and then the resume of a shadowing migration failed on the
    /// function, so that every later attach (a rollback's included) failed the same way.
    #[test]
    fn a_plan_whose_function_does_not_parse_is_refused_before_a_claim() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut c = Controller::attach(db.clone(), cfg()).unwrap();
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.shadow().unwrap();
        let epoch = c.epoch();
        let mut rec = c.record().clone();
        drop(c);
        rec.plan.as_mut().unwrap().spec = "hash:eight".into();
        db.store_controller_state(epoch, &rec.encode()).unwrap();
        let (_, reason) = refused_before_a_claim(&db, epoch);
        assert!(reason.contains("hash:eight"), "{reason}");
    }

    /// A start finding a CURRENT in its checkpoint directory relies on it only if the copy
    /// opens: one whose tables are gone is refused, and the migration does not begin. It
    /// used to count as the complete checkpoint a crashed start had taken.
    #[test]
    fn a_checkpoint_that_does_not_open_is_not_relied_on() {
        let root = tempfile::tempdir().unwrap();
        let db = ledger(&root.path().join("db"));
        let cp = root.path().join("cp");
        let mut c = Controller::attach(db.clone(), cfg()).unwrap();
        let opts = PlanOptions {
            checkpoint_dir: Some(cp.display().to_string()),
            ..PlanOptions::default()
        };
        c.plan(hash(5), opts).unwrap();
        c.validate().unwrap();
        db.checkpoint(&cp).unwrap();
        for e in std::fs::read_dir(&cp).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "sst") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let e = c.start().unwrap_err();
        assert!(
            matches!(
                &e,
                Error::InvalidOption {
                    name: "checkpoint_dir",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(c.state(), State::Validating);
        assert_ne!(
            db.layout().target,
            c.record().plan.as_ref().map(|p| VersionId(p.to)).unwrap()
        );
    }

    /// A checkpoint directory holding only the lock file a failed checkpoint leaves is
    /// empty to the plan and the start; anything else is not.
    #[test]
    fn a_lone_lock_file_leaves_a_checkpoint_directory_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("cp");
        assert!(!dir_has_entries(&cp).unwrap(), "absent");
        std::fs::create_dir(&cp).unwrap();
        assert!(!dir_has_entries(&cp).unwrap(), "empty");
        std::fs::write(cp.join("LOCK"), "").unwrap();
        assert!(!dir_has_entries(&cp).unwrap(), "lock file alone");
        std::fs::write(cp.join("000005.sst"), "").unwrap();
        assert!(dir_has_entries(&cp).unwrap(), "a table besides");
        std::fs::remove_file(cp.join("LOCK")).unwrap();
        assert!(dir_has_entries(&cp).unwrap(), "a table alone");
    }

    /// A controller that attaches while the one it replaces finishes a rollback resumes
    /// from where that rollback left the database: stable, on the original layout. (It
    /// read the state before claiming, so it saw the migration, and its resume switched
    /// the target forward again over the finished rollback.)
    #[test]
    fn attaching_during_a_rollback_resumes_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut first = Controller::attach(db.clone(), cfg()).unwrap();
        first.plan(hash(5), PlanOptions::default()).unwrap();
        first.start().unwrap();
        assert_eq!(first.state(), State::Migrating);
        let from = first.record().plan.as_ref().unwrap().from;
        assert_ne!(db.layout().target, VersionId(from));
        set("attach: before the claim", move || {
            first
                .rollback("rolled back by the first controller")
                .unwrap();
            assert_eq!(first.state(), State::Stable);
        });
        let second = Controller::attach(db.clone(), cfg()).unwrap();
        assert_eq!(second.state(), State::Stable);
        assert_eq!(db.layout().target, VersionId(from));
    }

    /// A rollback holds the layout it returns to: one left unpinned (by hand, say) while it
    /// still held data can drain and retire between the rollback's check and its switch
    /// back (it did, and the recorded RollingBack could then never complete). (One that has
    /// drained retires as it is unpinned: a `finish` cut short after its unpins leaves
    /// nothing to roll back to.)
    #[test]
    fn a_rollback_holds_the_layout_it_returns_to() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut c = Controller::attach(db.clone(), cfg()).unwrap();
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.start().unwrap();
        let from = VersionId(c.record().plan.as_ref().unwrap().from);
        db.pin_version(from, false).unwrap();
        assert!(
            db.layout()
                .versions
                .iter()
                .any(|v| v.id == from && v.files() > 0),
            "test setup: data left in the origin"
        );
        let background = db.clone();
        set("rollback: before recording it", move || {
            // What background migration would do now: the origin drains, and retires once
            // empty unless pinned.
            background.migrate_now(None).unwrap();
        });
        c.rollback("as the origin drained").unwrap();
        assert_eq!(c.state(), State::Stable);
        assert_eq!(db.layout().target, from);
        assert_eq!(db.get("acct:00007").unwrap().as_deref(), Some(&b"100"[..]));
    }

    /// A retarget cut short after it registered and pinned its new candidate (here another
    /// controller claims the database at that moment, so recording the retarget fails) is
    /// undone by the next controller to attach: the migration goes on to its candidate,
    /// and the half-claimed layout is released and retired instead of staying pinned, live
    /// and empty for ever (every read consults it, and it holds one of the live slots).
    #[test]
    fn a_retarget_cut_short_is_undone_on_attach() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut first = Controller::attach(db.clone(), cfg()).unwrap();
        first.plan(hash(5), PlanOptions::default()).unwrap();
        first.start().unwrap();
        let candidate = db.layout().target;
        let fp = hash(6).fingerprint();
        let thief = db.clone();
        set("retarget: after the claim", move || {
            thief.claim_controller().unwrap();
        });
        let e = first.retarget(hash(6), false).unwrap_err();
        assert!(matches!(e, Error::StaleEpoch { .. }), "{e}");
        let half = db.layout();
        let claimed = half.versions.iter().find(|v| v.fingerprint == fp).unwrap();
        assert!(claimed.pinned, "claimed before the retarget was recorded");
        let second = Controller::attach(db.clone(), cfg()).unwrap();
        assert_eq!(second.state(), State::Migrating);
        let after = db.layout();
        assert_eq!(after.target, candidate);
        assert!(
            after.versions.iter().all(|v| v.fingerprint != fp),
            "the half-claimed layout retired"
        );
        assert_eq!(second.record().planning, None);
    }

    /// A controller whose reconciliation hook fails while `broken` is set (the ledger
    /// unreachable), and answers the ledger's sum otherwise.
    fn attach_with_flaky_hook(
        db: &Db,
        cfg: ControllerConfig,
        broken: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Controller {
        let mut c = Controller::attach(db.clone(), cfg).unwrap();
        let b = broken.clone();
        c.set_reconciliation(Box::new(move |_| {
            match b.load(std::sync::atomic::Ordering::Relaxed) {
                true => Err(Error::Background("ledger unreachable".into())),
                false => Ok("sum 200000".into()),
            }
        }));
        c
    }

    /// A check that could not run holds data movement until one passes, across a restart:
    /// the reason was kept only in the controller's memory, so a controller attaching
    /// after a restart (`sluice migrate run` again) released the hold at once, with the
    /// check still unable to run and the next one a whole `periodic_check` away. Now the
    /// hold outlives the process, and the first tick after it runs the check at once.
    #[test]
    fn a_check_that_cannot_run_still_holds_after_a_restart() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut cfg = running_cfg();
        cfg.triggers.periodic_check = Some(Duration::from_secs(600));
        cfg.triggers.check_retry = Duration::ZERO;
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut c = attach_with_flaky_hook(&db, cfg.clone(), &broken);
        c.plan(hash(5), PlanOptions::default()).unwrap();
        c.start().unwrap();
        assert_eq!(pacing(&db), (false, 1 << 20));
        c.last_check = Instant::now() - Duration::from_secs(3600);
        // `watch`, not `tick`: the background migration can drain this small ledger
        // between two calls, and a tick would then finish the migration.
        broken.store(true, Relaxed);
        assert!(c.watch(None).is_err(), "the hook failed");
        assert_eq!(pacing(&db), (true, 0), "held while no check could run");
        drop(c);
        let mut c = attach_with_flaky_hook(&db, cfg.clone(), &broken);
        assert_eq!(c.state(), State::Migrating);
        assert_eq!(pacing(&db), (true, 0), "held after the restart");
        assert!(c.watch(None).is_err(), "the check still cannot run");
        assert_eq!(pacing(&db), (true, 0));
        // The ledger answers again: the next tick checks at once, not 600 s on.
        broken.store(false, Relaxed);
        drop(c);
        let mut c = attach_with_flaky_hook(&db, cfg, &broken);
        assert_eq!(pacing(&db), (true, 0));
        c.watch(None).unwrap();
        assert_eq!(
            pacing(&db),
            (false, 1 << 20),
            "released once a check passed"
        );
        assert_eq!(c.record().check_failing, None);
    }

    /// `Validating` means a validation began, not that it passed: a start whose validation
    /// could not run (or was cut short by a crash) used to switch the target on the next
    /// start without validating again. Now the switch waits for a validation that passed.
    #[test]
    fn a_start_after_a_validation_that_could_not_run_validates_again() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut c = attach_with_flaky_hook(&db, cfg(), &broken);
        let plan = c.plan(hash(5), PlanOptions::default()).unwrap();
        let from = db.layout().target;
        broken.store(true, Relaxed);
        assert!(c.start().is_err(), "validation could not run");
        assert_eq!(c.state(), State::Validating);
        assert_eq!(db.layout().target, from);
        assert!(c.start().is_err(), "still cannot validate");
        assert_eq!(
            db.layout().target,
            from,
            "switched without a validation that passed"
        );
        // After a restart too.
        drop(c);
        let mut c = attach_with_flaky_hook(&db, cfg(), &broken);
        assert!(c.start().is_err());
        assert_eq!(db.layout().target, from);
        broken.store(false, Relaxed);
        c.start().unwrap();
        assert_eq!(db.layout().target, plan.version);
        assert_eq!(c.state(), State::Migrating);
    }

    /// A controller claimed just before the old one's canary migrates (after the old one's
    /// last epoch check) gets nothing moved by it: the canary's migration is fenced. It
    /// used to run unfenced, moving a canary's worth after the new claim.
    #[test]
    fn a_canary_after_a_new_claim_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut first = Controller::attach(db.clone(), cfg()).unwrap();
        first.plan(hash(5), PlanOptions::default()).unwrap();
        let d = db.clone();
        let left = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let l = left.clone();
        set("canary: before migrating", move || {
            l.store(
                d.migration_progress().bytes_left(),
                std::sync::atomic::Ordering::Relaxed,
            );
            let second = Controller::attach(d, cfg()).unwrap();
            assert_eq!(second.state(), State::Migrating);
        });
        let e = first.start().unwrap_err();
        assert!(matches!(e, Error::StaleEpoch { .. }), "{e:?}");
        let left = left.load(std::sync::atomic::Ordering::Relaxed);
        assert!(left > 0, "data to migrate at the canary");
        assert_eq!(
            db.migration_progress().bytes_left(),
            left,
            "the canary moved data"
        );
    }

    /// A controller claimed while the old one finishes stops it within a slice: `finish`
    /// migrates fenced, a slice at a time. It used to run `migrate_now` unfenced to the
    /// end, moving everything left after the new claim.
    #[test]
    fn a_finish_after_a_new_claim_stops_within_a_slice() {
        let dir = tempfile::tempdir().unwrap();
        let db = ledger(dir.path());
        let mut first = Controller::attach(db.clone(), cfg()).unwrap();
        first.plan(hash(5), PlanOptions::default()).unwrap();
        first.start().unwrap();
        let before = db.migration_progress().bytes_left();
        // The first slice runs; the new claim lands before the second.
        set("finish: before a slice", || {});
        let d = db.clone();
        let left = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let l = left.clone();
        set("finish: before a slice", move || {
            l.store(
                d.migration_progress().bytes_left(),
                std::sync::atomic::Ordering::Relaxed,
            );
            Controller::attach(d, cfg()).unwrap();
        });
        let e = first.finish().unwrap_err();
        assert!(matches!(e, Error::StaleEpoch { .. }), "{e:?}");
        let left = left.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            0 < left && left < before,
            "one slice moved, data left at the claim: {before} then {left}"
        );
        assert_eq!(
            db.migration_progress().bytes_left(),
            left,
            "the stale controller moved data after the claim"
        );
    }
}
