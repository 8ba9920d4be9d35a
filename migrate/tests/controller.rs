//! The controller: gates, the state machine, crash-and-resume in every state, fencing,
//! automatic rollback triggers, retarget keeping progress.

use std::path::Path;

use sluice::{Db, Error, Options, PartitionSpec, VersionId};
use sluice_migrate::{
    CheckMode, Controller, ControllerConfig, Observation, PlanOptions, State, Triggers,
};

const ACCOUNTS: u32 = 3000;

fn opts() -> Options {
    Options {
        partition: PartitionSpec::Range {
            boundaries: vec![b"acct:1".to_vec(), b"acct:2".to_vec()],
        },
        migration_bytes_per_sec: 0,
        ..Options::tiny()
    }
}

fn cfg() -> ControllerConfig {
    ControllerConfig {
        migration_bytes_per_sec: 0, // tests drive migration explicitly
        check: CheckMode::Full,
        ..ControllerConfig::default()
    }
}

fn key(i: u32) -> String {
    format!("acct:{i:05}")
}

fn setup(dir: &Path) -> Db {
    let db = Db::open(dir, opts()).unwrap();
    for i in 0..ACCOUNTS {
        db.put(key(i), "100").unwrap();
    }
    db.flush().unwrap();
    db
}

fn sum(snap: &sluice::Snapshot) -> sluice::Result<String> {
    let mut s = 0i64;
    for r in snap.range("acct:".."acct;") {
        let (_, v) = r?;
        s += std::str::from_utf8(&v).unwrap().parse::<i64>().unwrap();
    }
    Ok(s.to_string())
}

fn good() -> PartitionSpec {
    PartitionSpec::Hash {
        partitions: 8,
        seed: 5,
        hashed_prefix: None,
    }
}

fn biased() -> PartitionSpec {
    // Every key starts with "acct:0", "acct:1" or "acct:2": a 6-byte prefix hash puts all
    // of them on at most three partitions.
    PartitionSpec::Hash {
        partitions: 8,
        seed: 5,
        hashed_prefix: Some(6),
    }
}

fn attach(db: &Db) -> Controller {
    let mut c = Controller::attach(db.clone(), cfg()).unwrap();
    c.set_reconciliation(Box::new(sum));
    c
}

/// A controller attached to `db` with a migration to `good()` started.
fn migrating(db: &Db) -> Controller {
    let mut c = attach(db);
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    c
}

fn check_data(db: &Db) {
    assert_eq!(
        sum(&db.snapshot()).unwrap(),
        (ACCOUNTS as i64 * 100).to_string()
    );
    for i in (0..ACCOUNTS).step_by(97) {
        assert_eq!(db.get(key(i)).unwrap().as_deref(), Some(&b"100"[..]));
    }
}

#[test]
fn biased_candidate_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = attach(&db);
    let e = c.plan(biased(), PlanOptions::default()).unwrap_err();
    assert!(e.to_string().contains("biased"), "{e}");
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().versions.len(), 1, "nothing registered");
    let r = c
        .plan(
            biased(),
            PlanOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(r.biased && r.forced);
    assert!(
        r.analysis.distribution.max_over_mean > 2.0,
        "{:?}",
        r.analysis
    );
    assert_eq!(c.state(), State::Planned);
    assert!(c.events().last().unwrap().reason.contains("FORCED"));
}

/// A plan rolled back before its switch leaves no layout behind: each abandoned plan used
/// to leave one more live candidate for ever (18 after a CLI crash soak).
#[test]
fn a_plan_rolled_back_before_its_switch_retires_its_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = attach(&db);
    for round in 0..3 {
        c.plan(good(), PlanOptions::default()).unwrap();
        assert_eq!(db.layout().versions.len(), 2, "round {round}");
        c.rollback("changed my mind").unwrap();
        assert_eq!(c.state(), State::Stable);
        let live: Vec<_> = db.layout().versions.iter().map(|v| v.id.0).collect();
        assert_eq!(live, vec![1], "round {round}");
    }
    check_data(&db);
}

/// A candidate with the current target's own function passed every gate, and finishing
/// it rewrote every byte into the same layout.
#[test]
fn the_current_targets_own_function_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = attach(&db);
    let e = c
        .plan(opts().partition, PlanOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("current target v1"), "{e}");
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().versions.len(), 1, "nothing registered");
    // The same function with another seed or boundary is a real candidate.
    c.plan(good(), PlanOptions::default()).unwrap();
    assert_eq!(c.state(), State::Planned);
}

#[test]
fn full_lifecycle_with_retarget_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = attach(&db);
    let v2 = c
        .plan(
            biased(),
            PlanOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap()
        .version;
    c.shadow().unwrap();
    for i in 0..500 {
        db.get(key(i)).unwrap();
    }
    c.start().unwrap();
    assert_eq!(c.state(), State::Migrating);
    assert_eq!(db.layout().target, v2);
    assert!(c.record().plan.as_ref().unwrap().canary_done);
    db.migrate_now(Some(30_000)).unwrap();
    check_data(&db);
    // The bias is noticed: retarget to the corrected function, keeping progress.
    let v3 = c.retarget(good(), false).unwrap().version;
    assert_eq!(db.layout().target, v3);
    assert_eq!(db.layout().versions.len(), 3);
    check_data(&db);
    // A flush while v3 is the target gives it data, so it stays live after the rollback
    // (nothing migrates here: the pacer's budget is 0).
    db.put(key(2), "100").unwrap();
    db.flush().unwrap();
    // Roll back all the way, then go forward again.
    c.rollback("operator drill").unwrap();
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
    check_data(&db);
    db.put(key(1), "100").unwrap();
    c.plan(good(), PlanOptions::default()).unwrap();
    // The abandoned, still live v3 is reused for the same function.
    let plan = c.record().plan.clone().unwrap();
    assert_eq!(plan.spec, good().to_string());
    assert_eq!(plan.to, v3.0, "reuses the live v3: {plan:?}");
    c.start().unwrap();
    c.finish().unwrap();
    assert_eq!(c.state(), State::Complete);
    let layout = db.layout();
    assert_eq!(layout.versions.len(), 1);
    assert_eq!(layout.target, v3);
    check_data(&db);
    let report = sluice_migrate::check(&db, CheckMode::Full).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

/// A retarget releases the superseded candidate and a rollback the abandoned one: once
/// drained they retire. The rollback target stays pinned throughout. A retarget that
/// crashed before releasing its old candidate is completed when a controller attaches.
#[test]
fn retarget_and_rollback_release_their_pins() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = attach(&db);
    let force = PlanOptions {
        force: true,
        ..Default::default()
    };
    let v2 = c.plan(biased(), force).unwrap().version;
    c.start().unwrap();
    db.migrate_now(Some(30_000)).unwrap();
    let v3 = c.retarget(good(), false).unwrap().version;
    // As if the process died between recording the retarget and releasing v2.
    db.pin_version(v2, true).unwrap();
    drop(c);
    let mut c = attach(&db);
    db.migrate_now(None).unwrap();
    db.retire_drained().unwrap();
    let layout = db.layout();
    assert!(
        layout.retired.contains(&v2),
        "superseded v2 not released: {layout:?}"
    );
    assert!(
        layout.versions.iter().any(|v| v.id == VersionId(1)),
        "the rollback target retired: {layout:?}"
    );
    check_data(&db);
    // Roll back: v3 drains back into v1 and retires.
    db.put(key(3), "100").unwrap();
    db.flush().unwrap();
    c.rollback("drill").unwrap();
    db.migrate_now(None).unwrap();
    db.retire_drained().unwrap();
    let layout = db.layout();
    assert!(
        layout.retired.contains(&v3),
        "abandoned v3 not released: {layout:?}"
    );
    assert_eq!(layout.target, VersionId(1));
    check_data(&db);
}

/// Crashes (drops controller and database without any cleanup) in every state, reopens,
/// attaches a new controller, and checks it resumes consistently and can finish.
#[test]
fn crash_in_every_state_resumes() {
    let states = [
        State::Planned,
        State::Shadowing,
        State::Validating,
        State::Migrating,
        State::Paused,
        State::Finalizing,
        State::RollingBack,
        State::Complete,
    ];
    for stop in states {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = setup(dir.path());
            let mut c = attach(&db);
            c.plan(good(), PlanOptions::default()).unwrap();
            let reach = |_c: &mut Controller, s: State| -> bool {
                if stop == s {
                    return true;
                }
                false
            };
            if !reach(&mut c, State::Planned) {
                c.shadow().unwrap();
                if !reach(&mut c, State::Shadowing) {
                    c.validate().unwrap();
                    if !reach(&mut c, State::Validating) {
                        c.start().unwrap();
                        db.migrate_now(Some(20_000)).unwrap();
                        if !reach(&mut c, State::Migrating) {
                            c.pause().unwrap();
                            if stop == State::RollingBack {
                                // Crash in the middle of a rollback: state recorded, target
                                // not yet switched back.
                                let rec = c.record().clone();
                                let mut r = rec.clone();
                                r.state = State::RollingBack;
                                db.store_controller_state(c.epoch(), &r.encode()).unwrap();
                            } else if !reach(&mut c, State::Paused) {
                                if stop == State::Finalizing {
                                    let mut r = c.record().clone();
                                    r.state = State::Finalizing;
                                    db.store_controller_state(c.epoch(), &r.encode()).unwrap();
                                } else {
                                    c.resume_migration().unwrap();
                                    c.finish().unwrap();
                                }
                            }
                        }
                    }
                }
            }
            // Crash: no close, no cleanup.
            drop(c);
            drop(db);
        }
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut c = attach(&db);
        let state = c.state();
        match stop {
            State::Complete => assert_eq!(state, State::Complete, "{stop}"),
            State::RollingBack => {
                assert_eq!(state, State::Stable, "{stop}");
                assert_eq!(db.layout().target, VersionId(1));
            }
            other => assert_eq!(state, other, "{stop}"),
        }
        check_data(&db);
        // Drive whatever is left to completion.
        match c.state() {
            State::Planned | State::Shadowing | State::Validating => {
                c.start().unwrap();
                c.finish().unwrap();
            }
            State::Migrating | State::Finalizing => c.finish().unwrap(),
            State::Paused => {
                c.resume_migration().unwrap();
                c.finish().unwrap();
            }
            _ => {}
        }
        check_data(&db);
        if stop != State::RollingBack {
            assert_eq!(c.state(), State::Complete, "{stop}");
            assert_eq!(db.layout().versions.len(), 1, "{stop}");
        }
    }
}

/// What a plan changes in the engine before it records `Planned` (the candidate
/// registered and pinned, the current target pinned) is undone when the plan is cut
/// short: by the plan itself when a step fails, and by the next controller to attach when
/// the process died mid-plan (here: the reconciliation hook panics, so that no error path
/// runs, and the database is reopened). Each used to leave the candidate pinned and live
/// for ever, and the old target pinned.
#[test]
fn a_plan_cut_short_is_undone_in_process_and_after_a_crash() {
    let pins = |db: &Db| -> Vec<(u32, bool)> {
        db.layout()
            .versions
            .iter()
            .map(|v| (v.id.0, v.pinned))
            .collect()
    };
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = setup(dir.path());
            let mut c = Controller::attach(db.clone(), cfg()).unwrap();
            c.set_reconciliation(Box::new(move |_| {
                if crash {
                    panic!("the process dies mid-plan");
                }
                Err(Error::LayoutRefused("the ledger is unreachable".into()))
            }));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.plan(good(), PlanOptions::default())
            }));
            match (crash, r) {
                (false, Ok(Err(Error::LayoutRefused(m)))) => {
                    assert!(m.contains("unreachable"), "{m}");
                    assert_eq!(c.state(), State::Stable);
                    assert_eq!(
                        pins(&db),
                        vec![(1, false)],
                        "the failed plan's changes stay"
                    );
                    let last = &c.events().last().unwrap().reason;
                    assert!(last.contains("undid a plan cut short"), "{last}");
                }
                (true, Err(_)) => {
                    // Mid-plan: the candidate registered, both pinned, `Planned` not recorded.
                    assert_eq!(pins(&db), vec![(1, true), (2, true)]);
                    drop(c); // the controller has no drop code: as if the process died
                }
                (crash, r) => panic!("crash {crash}: {:?}", r.map(|r| r.map(|p| p.version))),
            }
        }
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut c = attach(&db);
        assert_eq!(c.state(), State::Stable, "crash {crash}");
        assert_eq!(pins(&db), vec![(1, false)], "crash {crash}: left behind");
        // A plan goes through afterwards, its candidate a new version, and completes.
        let v = c.plan(good(), PlanOptions::default()).unwrap().version;
        assert!(v.0 >= 2, "{v:?}");
        c.start().unwrap();
        c.finish().unwrap();
        assert_eq!(c.state(), State::Complete);
        assert_eq!(pins(&db), vec![(v.0, false)], "crash {crash}");
        check_data(&db);
    }
}

#[test]
fn crash_between_target_switch_and_record_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = setup(dir.path());
        let mut c = attach(&db);
        let v2 = c.plan(good(), PlanOptions::default()).unwrap().version;
        c.validate().unwrap();
        // The engine switched, the controller never recorded it.
        db.set_target(v2).unwrap();
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut c = attach(&db);
    assert_eq!(c.state(), State::Migrating);
    assert!(c
        .events()
        .last()
        .unwrap()
        .reason
        .contains("already switched"));
    // The canary never ran (start() would have run it after recording Migrating, and
    // refuses now): the next tick runs it, gate included. It used to be skipped for good.
    assert!(!c.events().iter().any(|e| e.reason.contains("canary")));
    c.tick(None).unwrap();
    assert!(
        c.events().iter().any(|e| e.reason.contains("canary")),
        "{:?}",
        c.events().iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    let canaries = c
        .events()
        .iter()
        .filter(|e| e.reason.contains("canary"))
        .count();
    c.tick(None).unwrap();
    let again = c
        .events()
        .iter()
        .filter(|e| e.reason.contains("canary"))
        .count();
    assert_eq!(again, canaries, "the canary ran twice");
}

#[test]
fn a_second_controller_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut first = attach(&db);
    let mut second = attach(&db);
    let e = first.plan(good(), PlanOptions::default()).unwrap_err();
    assert!(matches!(e, Error::StaleEpoch { .. }), "{e}");
    second.plan(good(), PlanOptions::default()).unwrap();
    assert_eq!(second.state(), State::Planned);
}

#[test]
fn triggers_roll_back_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let config = ControllerConfig {
        triggers: Triggers {
            p99_budget_us: Some(1000),
            p99_windows: 2,
            max_error_rate: Some(0.05),
            ..Triggers::default()
        },
        ..cfg()
    };
    let mut c = Controller::attach(db.clone(), config.clone()).unwrap();
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    let slow = Observation {
        ops: 100,
        errors: 0,
        p99_us: Some(5000),
    };
    let t = c.tick(Some(slow)).unwrap();
    assert!(t.rolled_back.is_none(), "one window is not enough");
    let t = c.tick(Some(slow)).unwrap();
    let reason = t.rolled_back.expect("second window over budget rolls back");
    assert!(reason.contains("p99"), "{reason}");
    assert_eq!(c.state(), State::Stable);
    assert!(c.events().iter().any(|e| e.reason.contains("p99")));
    // Error-rate trigger.
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    let t = c
        .tick(Some(Observation {
            ops: 100,
            errors: 10,
            p99_us: Some(10),
        }))
        .unwrap();
    assert!(t.rolled_back.unwrap().contains("error rate"));
    check_data(&db);
}

/// A window in which every operation failed (errors counted, no operation succeeded: the
/// application reports `ops: 0`) is the worst error rate there is. It used to be skipped
/// (the rate was only judged when `ops > 0`), while one success among the failures rolled
/// back.
#[test]
fn a_window_of_nothing_but_errors_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let config = ControllerConfig {
        triggers: Triggers {
            max_error_rate: Some(0.05),
            ..Triggers::default()
        },
        ..cfg()
    };
    let mut c = Controller::attach(db.clone(), config).unwrap();
    c.set_reconciliation(Box::new(sum));
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    let quiet = Observation {
        ops: 0,
        errors: 0,
        p99_us: None,
    };
    assert!(c.watch(Some(quiet)).unwrap().rolled_back.is_none());
    let outage = Observation {
        ops: 0,
        errors: 50,
        p99_us: None,
    };
    let t = c.watch(Some(outage)).unwrap();
    let reason = t
        .rolled_back
        .expect("50 errors and no operation through: no rollback");
    assert!(reason.contains("error rate"), "{reason}");
    assert_eq!(c.state(), State::Stable);
    check_data(&db);
}

#[test]
fn reconciliation_mismatch_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = attach(&db);
    c.plan(good(), PlanOptions::default()).unwrap();
    db.put(key(0), "999").unwrap(); // money from nowhere
    let e = c.start().unwrap_err();
    assert!(e.to_string().contains("reconciliation"), "{e}");
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
}

/// The reconciliation hook runs at every state change, not only at the checkpoint gates:
/// a sum that changed is caught when the migration is paused, when it is resumed, and
/// when shadowing starts, and each rolls back with its reason. A refused transition does
/// nothing in the engine first (a pause from Planned used to set the migration rate to 0,
/// a shadow from Validating to start shadow counting).
#[test]
fn reconciliation_is_checked_at_every_state_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = migrating(&db);
    db.put(key(0), "999").unwrap(); // money from nowhere
    let e = c.pause().unwrap_err();
    assert!(
        e.to_string().contains("reconciliation changed at pause"),
        "{e}"
    );
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
    db.put(key(0), "100").unwrap();

    let mut c = migrating(&db);
    c.resume_migration().unwrap(); // already running: left running
    assert_eq!(c.state(), State::Migrating);
    c.pause().unwrap();
    db.put(key(1), "0").unwrap(); // money gone
    let e = c.resume_migration().unwrap_err();
    assert!(
        e.to_string().contains("reconciliation changed at resume"),
        "{e}"
    );
    assert_eq!(c.state(), State::Stable);
    db.put(key(1), "100").unwrap();

    c.plan(good(), PlanOptions::default()).unwrap();
    db.put(key(2), "7").unwrap();
    let e = c.shadow().unwrap_err();
    assert!(
        e.to_string()
            .contains("reconciliation changed at shadowing"),
        "{e}"
    );
    assert_eq!(c.state(), State::Stable);
    db.put(key(2), "100").unwrap();

    c.plan(good(), PlanOptions::default()).unwrap();
    c.validate().unwrap();
    assert!(db.shadow_load().is_none());
    let e = c.shadow().unwrap_err();
    assert!(e.to_string().contains("cannot go from validating"), "{e}");
    assert!(
        db.shadow_load().is_none(),
        "a refused shadow started counting"
    );
    let e = c.pause().unwrap_err();
    assert!(e.to_string().contains("cannot go from validating"), "{e}");
    assert_eq!(c.state(), State::Validating);
    c.rollback("test").unwrap();

    // A retarget checks the sum before it switches to the new candidate.
    let mut c = migrating(&db);
    db.put(key(3), "1").unwrap();
    let corrected = PartitionSpec::Hash {
        partitions: 8,
        seed: 6,
        hashed_prefix: None,
    };
    let e = c.retarget(corrected, false).unwrap_err();
    assert!(
        e.to_string().contains("reconciliation changed at retarget"),
        "{e}"
    );
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
    db.put(key(3), "100").unwrap();
    check_data(&db);
}

/// A reconciliation figure of a few MiB (a digest listing per-branch totals, say) is well
/// inside the 16 MiB a controller's state may take, but every event reason that quotes it
/// (a mismatch's "expected X, got Y", the rollback that repeats it) used to copy it into
/// the record's event log: the rollback a mismatch triggers could not be recorded
/// (`TooLarge`), left the migration in RollingBack, and every later attach failed the
/// same way while completing it.
#[test]
fn a_large_reconciliation_figure_does_not_keep_a_rollback_from_being_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let big = |snap: &sluice::Snapshot| -> sluice::Result<String> {
        Ok(format!("{}|{}", sum(snap)?, ".".repeat(3 << 20)))
    };
    let mut c = Controller::attach(db.clone(), cfg()).unwrap();
    c.set_reconciliation(Box::new(big));
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    db.put(key(0), "999").unwrap(); // money from nowhere
    let e = c.pause().unwrap_err();
    assert!(
        e.to_string().contains("reconciliation changed at pause"),
        "the rollback failed: {:.300}",
        e.to_string()
    );
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
    drop(c);
    // Not wedged: a new controller attaches and can plan again.
    db.put(key(0), "100").unwrap();
    let mut c = Controller::attach(db.clone(), cfg()).unwrap();
    c.set_reconciliation(Box::new(big));
    assert_eq!(c.state(), State::Stable);
    c.plan(good(), PlanOptions::default()).unwrap();
    c.rollback("done").unwrap();
    check_data(&db);
}

/// A check that cannot run is recorded (`Record::check_failing`, which holds data
/// movement across restarts) with the error it failed with. Kept whole, a long one (a
/// reconciliation hook's error quoting what it could not reach) took the record past the
/// 16 MiB a controller's state may take: the hold could not be recorded, and nothing after
/// it could either, not even the operator's rollback, for as long as the controller lived.
#[test]
fn a_check_failing_with_a_long_error_does_not_keep_a_rollback_from_being_recorded() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    let hook = move |snap: &sluice::Snapshot| -> sluice::Result<String> {
        if f.load(Ordering::SeqCst) {
            return Err(Error::Background(format!(
                "the ledger's branch totals could not be fetched: {}",
                ".".repeat(17 << 20)
            )));
        }
        sum(snap)
    };
    let cfg = ControllerConfig {
        triggers: Triggers {
            periodic_check: Some(std::time::Duration::ZERO),
            check_retry: std::time::Duration::ZERO,
            ..Triggers::default()
        },
        ..cfg()
    };
    let mut c = Controller::attach(db.clone(), cfg).unwrap();
    c.set_reconciliation(Box::new(hook));
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    fail.store(true, Ordering::SeqCst);
    assert!(c.tick(None).is_err(), "the check could not run");
    fail.store(false, Ordering::SeqCst);
    c.rollback("operator")
        .unwrap_or_else(|e| panic!("rollback: {:.300}", e.to_string()));
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
    check_data(&db);
}

/// Validation reports the hot partitions of the candidate's shadow counters only. A shadow
/// the caller set on another function (to weigh it before planning) was read as the
/// candidate's: validating `good()` named partition 0 of a two-way range as a hot
/// partition of the eight-way hash.
#[test]
fn validation_reads_only_the_candidates_own_shadow_counters() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let other = PartitionSpec::Range {
        boundaries: vec![b"zzz".to_vec()],
    };
    db.set_shadow(Some(other)).unwrap();
    for i in 0..300 {
        db.get(key(i)).unwrap();
    }
    let mut c = attach(&db);
    c.plan(good(), PlanOptions::default()).unwrap();
    c.validate().unwrap();
    assert!(
        !c.events()
            .iter()
            .any(|e| e.reason.contains("predicts hot candidate partitions")),
        "{:#?}",
        c.events()
    );

    // The candidate's own shadow still predicts its hot partitions.
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = attach(&db);
    c.plan(good(), PlanOptions::default()).unwrap();
    c.shadow().unwrap();
    let f = sluice::PartitionFn::new(good()).unwrap();
    let hot = f.partition_of(key(7).as_bytes());
    for _ in 0..300 {
        db.get(key(7)).unwrap();
    }
    c.validate().unwrap();
    let want = format!("predicts hot candidate partitions [{hot}]");
    assert!(
        c.events().iter().any(|e| e.reason.contains(&want)),
        "{:#?}",
        c.events()
    );
}

#[test]
fn hot_partition_split_and_write_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    // All traffic on range partition 0.
    for _ in 0..3 {
        for i in 0..300 {
            db.get(key(i)).unwrap();
        }
    }
    let hot = sluice_migrate::hot::hot_partitions(&db.partition_load(), 2.0).unwrap();
    assert_eq!(hot, vec![0]);
    db.set_partition_write_limit(0, Some(1 << 20)).unwrap();
    let mut c = attach(&db);
    assert_eq!(db.partition_write_limits(), vec![(0, 1 << 20)]);
    let r = c.split_hot_partition(0, 4, Some(9)).unwrap();
    assert_eq!(c.state(), State::Migrating);
    // The switch lifted the limit (it named a partition of the old layout), and says so.
    assert!(db.partition_write_limits().is_empty());
    assert!(
        c.events().iter().any(|e| e
            .reason
            .contains("lifted the write limits on partition 0 at 1048576 B/s")),
        "{:?}",
        c.events()
    );
    c.finish().unwrap();
    let layout = db.layout();
    assert_eq!(layout.target, r.version);
    assert_eq!(layout.versions[0].partitions.len(), 6);
    check_data(&db);
}

/// A split of a hash partition spreads its keys over every sub-partition. With the base
/// hash's own seed it put every key in one (the keys of a hash partition share the top of
/// their hash under that seed): that seed is refused, and no seed picks another.
#[test]
fn a_hash_partition_split_spreads_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = migrating(&db);
    c.finish().unwrap();
    let e = c.split_hot_partition(1, 4, Some(5)).unwrap_err();
    assert!(matches!(e, Error::InvalidPartitionSpec(_)), "{e}");
    assert_eq!(c.state(), State::Complete);
    let r = c.split_hot_partition(1, 4, None).unwrap();
    c.finish().unwrap();
    let layout = db.layout();
    assert_eq!(layout.target, r.version);
    let entries: Vec<u64> = layout.versions[0]
        .partitions
        .iter()
        .map(|p| p.entries)
        .collect();
    assert_eq!(entries.len(), 11);
    assert!(entries[1..5].iter().all(|&n| n > 0), "{entries:?}");
    check_data(&db);
}

/// The checkpoint before migrating: a relative directory is made absolute at plan time
/// (so a `start` from another working directory writes it where planned), a non-empty one
/// is refused at plan time, one that gained files since the plan is refused at start
/// (it used to be skipped silently, the migration going ahead with no checkpoint), and a
/// complete checkpoint already there (a start interrupted after taking it) is kept.
#[test]
fn the_checkpoint_before_migrating_is_taken_where_planned_or_the_start_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(&dir.path().join("db"));
    let mut c = attach(&db);
    let plan = |c: &mut Controller, cp: &Path| {
        c.plan(
            good(),
            PlanOptions {
                checkpoint_dir: Some(cp.to_str().unwrap().to_string()),
                ..Default::default()
            },
        )
    };
    // Refused at plan time: a directory that holds anything.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), "y").unwrap();
    let e = plan(&mut c, &full).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidOption {
                name: "checkpoint_dir",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c.state(), State::Stable);
    // Planned into a new directory, which then gains a file: start refuses and stays put.
    let cp = dir.path().join("cp");
    plan(&mut c, &cp).unwrap();
    let stored = c.record().plan.as_ref().unwrap().checkpoint_dir.clone();
    assert_eq!(stored.as_deref(), Some(cp.to_str().unwrap()));
    std::fs::create_dir(&cp).unwrap();
    std::fs::write(cp.join("stray"), "").unwrap();
    let e = c.start().unwrap_err();
    assert!(e.to_string().contains("no complete checkpoint"), "{e}");
    assert_eq!(db.layout().target, VersionId(1));
    // Validated but not started: resuming is refused (it used to record Migrating without
    // the switch or the checkpoint, and then finish by retiring the empty candidate).
    let before = c.state();
    let e = c.resume_migration().unwrap_err();
    assert!(e.to_string().contains("only a paused migration"), "{e}");
    assert_eq!((c.state(), db.layout().target), (before, VersionId(1)));
    // Emptied, it is taken; the checkpoint opens at the pre-migration state.
    std::fs::remove_file(cp.join("stray")).unwrap();
    c.start().unwrap();
    assert_eq!(c.state(), State::Migrating);
    let copy = Db::open_read_only(&cp, opts()).unwrap();
    assert_eq!(copy.layout().target, VersionId(1));
    assert_eq!(
        sum(&copy.snapshot()).unwrap(),
        (ACCOUNTS as i64 * 100).to_string()
    );
    drop(copy);
    c.rollback("test").unwrap();
    // A relative path is stored absolute, resolved against the working directory of the plan.
    let rel = std::path::Path::new("relative-checkpoint-dir");
    let e = plan(&mut c, rel);
    let abs = std::path::absolute(rel).unwrap();
    match e {
        Ok(_) => {
            let stored = c.record().plan.as_ref().unwrap().checkpoint_dir.clone();
            assert_eq!(stored.as_deref(), Some(abs.to_str().unwrap()));
        }
        Err(e) => panic!("{e}"),
    }
    check_data(&db);
}

/// A superseded controller changes nothing in the engine. Each of these used to act on the
/// engine first and fail only when storing its state: `start` switched the target, `pause`
/// set the migration rate to 0, `retarget` registered and pinned a layout, `finish`
/// retired the layout the live controller may roll back to.
#[test]
fn a_superseded_controller_changes_nothing_in_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let config = ControllerConfig {
        migration_bytes_per_sec: 1 << 20,
        ..cfg()
    };
    let mut stale = Controller::attach(db.clone(), config.clone()).unwrap();
    stale.plan(good(), PlanOptions::default()).unwrap();
    stale.validate().unwrap();
    let mut live = Controller::attach(db.clone(), config).unwrap();
    let layout = db.layout();
    let e = stale.start().unwrap_err();
    assert!(matches!(e, Error::StaleEpoch { .. }), "{e}");
    assert_eq!(db.layout(), layout, "a stale start changed the layout");
    // The live controller runs the migration; the stale one tries everything else.
    live.start().unwrap();
    let layout = db.layout();
    let rate = db.migration_progress().rate_limit_bytes_per_sec;
    assert!(rate > 0);
    assert!(stale.pause().is_err());
    assert_eq!(db.migration_progress().rate_limit_bytes_per_sec, rate);
    assert!(stale.retarget(good(), false).is_err());
    assert!(stale.finish().is_err());
    assert!(stale.rollback("stale").is_err());
    assert_eq!(db.layout(), layout, "a stale controller changed the layout");
    // The live controller can still roll back to v1.
    live.rollback("test").unwrap();
    assert_eq!(db.layout().target, VersionId(1));
    check_data(&db);
}

/// A crash inside `finish` after it released the pins and the old layout retired (but
/// before Complete was recorded) resumes; finishing then completes. It used to fail for
/// good on the retired version, and a rollback from there, accepted and recorded, could
/// never complete, so no controller could attach again. Now the rollback is refused.
#[test]
fn a_crash_inside_finish_resumes_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = setup(dir.path());
        let mut c = migrating(&db);
        // What finish() does before it records Complete (the record still says Migrating
        // here; finish() runs the same steps from Finalizing): migrate the rest, release
        // the pins, retire the drained layout. Then the crash.
        db.migrate_now(None).unwrap();
        let to = db.layout().target;
        db.pin_version(VersionId(1), false).unwrap();
        db.pin_version(to, false).unwrap();
        db.retire_drained().unwrap();
        assert!(db.layout().versions.iter().all(|v| v.id != VersionId(1)));
        let e = c.rollback("too late").unwrap_err();
        assert!(e.to_string().contains("retired"), "{e}");
        drop(c);
        db.close().unwrap();
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut c = attach(&db);
    c.finish().unwrap();
    assert_eq!(c.state(), State::Complete);
    check_data(&db);
    drop(c);
    assert_eq!(attach(&db).state(), State::Complete);
}

/// The p99 trigger counts windows within one migration: after a rollback, a new start
/// needs the full number of slow windows again.
#[test]
fn the_p99_trigger_starts_counting_afresh_each_migration() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let config = ControllerConfig {
        triggers: Triggers {
            p99_budget_us: Some(1000),
            p99_windows: 3,
            ..Triggers::default()
        },
        ..cfg()
    };
    let mut c = Controller::attach(db.clone(), config).unwrap();
    c.set_reconciliation(Box::new(sum));
    let slow = Observation {
        ops: 100,
        errors: 0,
        p99_us: Some(5000),
    };
    for round in 0..2 {
        c.plan(good(), PlanOptions::default()).unwrap();
        c.start().unwrap();
        for w in 1..3 {
            let t = c.tick(Some(slow)).unwrap();
            assert!(
                t.rolled_back.is_none(),
                "round {round}: rolled back after {w} windows"
            );
        }
        let t = c.tick(Some(slow)).unwrap();
        assert!(
            t.rolled_back.is_some(),
            "round {round}: three windows did not roll back"
        );
    }
    check_data(&db);
}

/// A plan made without a reconciliation hook (as `sluice migrate plan` makes it) used to
/// skip every reconciliation check of that migration. The first gate with a hook now takes
/// the baseline, and a later change is caught.
#[test]
fn a_plan_made_without_the_hook_is_still_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = Controller::attach(db.clone(), cfg()).unwrap();
    c.plan(good(), PlanOptions::default()).unwrap();
    c.set_reconciliation(Box::new(sum));
    c.start().unwrap();
    assert!(c
        .events()
        .iter()
        .any(|e| e.reason.contains("baseline taken")));
    db.put(key(0), "999").unwrap(); // money from nowhere
    let e = c.finish().unwrap_err();
    assert!(e.to_string().contains("reconciliation"), "{e}");
    assert_eq!(c.state(), State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
}

/// With its automatic rollback turned off, a reconciliation change found at a state change
/// is still put on record, at each state change that finds it, and the migration goes on
/// as configured. It passed without a word: the events said "validation passed",
/// and a finish retired the old layout with nothing recorded of the changed sum.
#[test]
fn a_reconciliation_change_is_recorded_with_its_rollback_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut cfg = cfg();
    cfg.triggers.on_reconciliation_mismatch = false;
    let mut c = Controller::attach(db.clone(), cfg).unwrap();
    c.set_reconciliation(Box::new(sum));
    c.plan(good(), PlanOptions::default()).unwrap();
    db.put(key(0), "999").unwrap(); // money from nowhere
    c.start().unwrap();
    c.finish().unwrap();
    assert_eq!(c.state(), State::Complete);
    let changed: Vec<&str> = c
        .events()
        .iter()
        .map(|e| e.reason.as_str())
        .filter(|r| r.contains("reconciliation changed"))
        .collect();
    for at in ["validation", "canary", "finish"] {
        assert!(
            changed.iter().any(|r| r.contains(&format!("at {at}:"))
                && r.contains("got 300899")
                && r.contains("automatic rollback off")),
            "{at}: {changed:?}"
        );
    }
}

/// A rollback is a state change like any other: the reconciliation is checked there too,
/// and a discrepancy that arose during the migration is recorded with it (it used to pass
/// unreported, and the next plan took the wrong sum as its baseline).
#[test]
fn a_rollback_records_a_reconciliation_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = migrating(&db);
    db.put(key(0), "999").unwrap();
    c.rollback("operator").unwrap();
    let last = &c.events().last().unwrap().reason;
    assert!(last.contains("RECONCILIATION CHANGED"), "{last}");
    assert!(last.contains("300000") && last.contains("300899"), "{last}");
}

/// `tick` completes a migration once nothing is left to drain; `watch` checks the triggers
/// but never completes: the migration stays `Migrating` (so a retarget decided on its
/// progress is still possible) until a `tick` completes it.
#[test]
fn tick_completes_a_migration_when_nothing_is_left_and_watch_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = migrating(&db);
    db.migrate_now(None).unwrap();
    assert!(db.migration_progress().is_complete());
    let w = c.watch(None).unwrap();
    assert!(!w.completed);
    assert_eq!(c.state(), State::Migrating);
    // Still running: a retarget is accepted.
    c.retarget(
        PartitionSpec::Hash {
            partitions: 4,
            seed: 9,
            hashed_prefix: None,
        },
        false,
    )
    .unwrap();
    db.migrate_now(None).unwrap();
    let t = c.tick(None).unwrap();
    assert!(t.completed);
    assert_eq!(c.state(), State::Complete);
    check_data(&db);
}

/// With `Triggers::periodic_check` a tick runs the consistency check and the
/// reconciliation while migrating, so a sum that changed between state changes rolls back
/// with its reason; without it (the default) they wait for the next state change.
#[test]
fn a_periodic_check_in_tick_catches_a_reconciliation_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());

    let mut c = migrating(&db);
    db.put(key(0), "999").unwrap(); // money from nowhere
    let t = c.tick(None).unwrap();
    assert_eq!(t.rolled_back, None, "no periodic check configured");
    assert_eq!(c.state(), State::Migrating);
    db.put(key(0), "100").unwrap();
    c.rollback("test").unwrap();
    drop(c);

    let cfg = ControllerConfig {
        triggers: Triggers {
            periodic_check: Some(std::time::Duration::ZERO),
            ..Triggers::default()
        },
        ..cfg()
    };
    let mut c = Controller::attach(db.clone(), cfg).unwrap();
    c.set_reconciliation(Box::new(sum));
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    let t = c.tick(None).unwrap();
    assert_eq!(t.rolled_back, None, "nothing changed");
    db.put(key(0), "999").unwrap();
    let t = c.tick(None).unwrap();
    let reason = t.rolled_back.expect("the periodic check rolled back");
    assert!(
        reason.contains("reconciliation changed at a periodic check"),
        "{reason}"
    );
    assert_eq!(t.state, State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
    assert!(c.events().iter().any(|e| e.reason.contains(&reason)));
}

/// A tick that finishes the migration reports a rollback its `finish` gate made as it
/// reports the other triggers' (`rolled_back`), not as an error: `sluice migrate run`
/// exited 2 (a refused command) for it, 3 for the others.
#[test]
fn a_rollback_at_the_finishing_tick_is_reported_as_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = migrating(&db);
    db.migrate_now(None).unwrap();
    assert!(db.migration_progress().is_complete(), "test setup");
    db.put(key(0), "999").unwrap(); // money from nowhere
    let t = c.tick(None).unwrap();
    let reason = t.rolled_back.expect("the finish gate rolled back");
    assert!(
        reason.contains("reconciliation changed at finish"),
        "{reason}"
    );
    assert!(!t.completed);
    assert_eq!(t.state, State::Stable);
    assert_eq!(db.layout().target, VersionId(1));
}

/// Retargeting to the candidate itself, or to the function the migration started from,
/// is refused and changes nothing: the first would record a superseded candidate that is
/// the target, the second is a rollback that would leave no way back pinned.
#[test]
fn retarget_to_the_candidate_or_the_origin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let mut c = migrating(&db);
    let before = (db.layout(), c.events().len());
    let e = c.retarget(good(), false).unwrap_err();
    assert!(e.to_string().contains("candidate already"), "{e}");
    let e = c.retarget(opts().partition, true).unwrap_err();
    assert!(e.to_string().contains("roll back"), "{e}");
    assert_eq!(c.state(), State::Migrating);
    let layout = db.layout();
    assert_eq!(layout.target, before.0.target);
    assert_eq!(layout.versions.len(), before.0.versions.len());
    assert_eq!(c.events().len(), before.1);
    // A real correction still goes through.
    let v = c
        .retarget(
            PartitionSpec::Hash {
                partitions: 8,
                seed: 6,
                hashed_prefix: None,
            },
            false,
        )
        .unwrap()
        .version;
    assert_eq!(db.layout().target, v);
    c.finish().unwrap();
    check_data(&db);
}

/// A ledger of `ACCOUNTS` accounts on a file system whose syncs can be slowed, and a
/// controller with reconciliation whose p99 trigger rolls back after `windows` pacing
/// windows over 20 ms.
fn p99_watched(dir: &Path, windows: u32) -> (sluice::fs::FaultFs, Db, Controller) {
    let fs = sluice::fs::FaultFs::new();
    let db = Db::open(
        dir,
        Options {
            fs: std::sync::Arc::new(fs.clone()),
            ..opts()
        },
    )
    .unwrap();
    for i in 0..ACCOUNTS {
        db.put(key(i), "100").unwrap();
    }
    db.flush().unwrap();
    let config = ControllerConfig {
        triggers: Triggers {
            p99_budget_us: Some(20_000),
            p99_windows: windows,
            ..Triggers::default()
        },
        ..cfg()
    };
    let mut c = Controller::attach(db.clone(), config).unwrap();
    c.set_reconciliation(Box::new(sum));
    (fs, db, c)
}

/// Synced writes that take 40 ms each, from a thread of their own, until stopped.
struct SlowWriter {
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl SlowWriter {
    fn start(fs: &sluice::fs::FaultFs, db: &Db) -> SlowWriter {
        use std::sync::atomic::{AtomicBool, Ordering};
        fs.set_sync_delay(Some(std::time::Duration::from_millis(40)));
        let slow = std::sync::Arc::new(AtomicBool::new(true));
        let (db, s) = (db.clone(), slow.clone());
        let thread = std::thread::spawn(move || {
            let synced = sluice::WriteOptions { sync: true };
            while s.load(Ordering::Relaxed) {
                let mut b = sluice::WriteBatch::new();
                b.put("zz-other", "1");
                db.write_opt(b, &synced).unwrap();
            }
        });
        SlowWriter { slow, thread }
    }

    fn stop(self, fs: &sluice::fs::FaultFs) {
        self.slow.store(false, std::sync::atomic::Ordering::Relaxed);
        fs.set_sync_delay(None);
        self.thread.join().unwrap();
    }
}

/// The p99 trigger counts the engine's pacing windows, not ticks: ticks that read the same
/// window again do not count it again. Counted per tick, one slow second read by three
/// ticks was three slow windows and rolled back. Slow windows that do follow one another
/// still roll back.
#[test]
fn the_p99_trigger_counts_each_pacing_window_once() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (fs, db, mut c) = p99_watched(dir.path(), 3);
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    // Synced writes that take 40 ms each, until stopped.
    let writer = SlowWriter::start(&fs, &db);
    let over = |db: &Db| db.migration_progress().foreground_p99_us > 20_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !over(&db) {
        assert!(Instant::now() < deadline, "no slow window");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One slow window, read by three ticks (which take milliseconds; a window lasts a
    // second). Unless all three read it, the old count could not have rolled back either,
    // and the test would prove nothing: so they must.
    let window = db.migration_progress().foreground_p99_window;
    for i in 0..3 {
        let t = c.tick(None).unwrap();
        assert!(t.rolled_back.is_none(), "tick {i}: {:?}", t.rolled_back);
        assert_eq!(
            t.progress.foreground_p99_window, window,
            "tick {i} read another window: the three ticks were not one window's"
        );
    }
    // Slow windows one after another: the third rolls back.
    let mut rolled_back = None;
    while rolled_back.is_none() {
        assert!(Instant::now() < deadline, "slow windows never rolled back");
        std::thread::sleep(Duration::from_millis(200));
        rolled_back = c.tick(None).unwrap().rolled_back;
    }
    writer.stop(&fs);
    assert!(rolled_back.unwrap().contains("for 3 windows"));
    assert_eq!(c.state(), State::Stable);
    check_data(&db);
}

/// The p99 trigger judges every pacing window, not only those a tick happens to read:
/// slow windows with fast ones between them are not in a row. Counted per tick, three
/// bursts of slow writes, each read by a tick as it ended, with fast windows between them
/// that no tick read, rolled back a migration whose trigger asks for three slow windows
/// in a row. (A burst can make two windows slow, its last write ending in the next one:
/// hence three, which no burst reaches alone.)
#[test]
fn the_p99_trigger_does_not_count_slow_windows_apart_as_in_a_row() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (fs, db, mut c) = p99_watched(dir.path(), 3);
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The next window to end after `after`, as (its number, whether it was slow).
    let next_window = |after: u64| loop {
        assert!(Instant::now() < deadline, "no window ended");
        let p = db.migration_progress();
        if p.foreground_p99_window > after {
            assert_eq!(
                p.foreground_p99_window,
                after + 1,
                "windows ended unseen: the test cannot tell which were slow"
            );
            break (p.foreground_p99_window, p.foreground_p99_us > 20_000);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut w = db.migration_progress().foreground_p99_window;
    for burst in 0..3 {
        // Slow writes until a slow window ends; a tick reads it at once.
        let writer = SlowWriter::start(&fs, &db);
        loop {
            let (n, slow) = next_window(w);
            w = n;
            if slow {
                break;
            }
        }
        let t = c.tick(None).unwrap();
        writer.stop(&fs);
        assert_eq!(
            t.progress.foreground_p99_window, w,
            "burst {burst}: a window ended before the tick read the slow one"
        );
        assert!(
            t.rolled_back.is_none(),
            "burst {burst}: slow windows apart counted as in a row: {:?}",
            t.rolled_back
        );
        // Then two fast windows in a row (no foreground operations at all), which no
        // tick reads.
        let mut fast = 0;
        while fast < 2 {
            let (n, slow) = next_window(w);
            w = n;
            fast = if slow { 0 } else { fast + 1 };
        }
    }
    assert_eq!(c.state(), State::Migrating);
    c.rollback("done").unwrap();
    check_data(&db);
}

/// The engine's windows that ticks with the caller's own p99 covered are not judged again
/// by a tick without one (an application that measured nothing in its window, say): that
/// tick judges the engine's windows since the last tick. It judged every one since the
/// last tick without the caller's p99 (here since the start), slow ones the caller's fast
/// observations had stood for included, and rolled back on windows already judged.
#[test]
fn engine_windows_the_callers_observations_covered_are_not_judged_again() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (fs, db, mut c) = p99_watched(dir.path(), 3);
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    let start = db.migration_progress().foreground_p99_window;
    let fast = Observation {
        ops: 100,
        errors: 0,
        p99_us: Some(1_000),
    };
    let writer = SlowWriter::start(&fs, &db);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ticks with the caller's own (fast) p99 while three slow engine windows end.
    loop {
        let t = c.tick(Some(fast)).unwrap();
        assert!(t.rolled_back.is_none(), "{:?}", t.rolled_back);
        let p = &t.progress;
        let ended = p.foreground_p99_window - start;
        let recent = &p.foreground_p99_recent_us;
        if ended >= 3 && recent.iter().rev().take(3).all(|&us| us > 20_000) {
            break;
        }
        assert!(Instant::now() < deadline, "no three slow windows");
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.stop(&fs);
    // A window in which the caller measured nothing: the engine's windows since the last
    // tick stand for it (at most one ended meanwhile).
    let none = Observation {
        ops: 0,
        errors: 0,
        p99_us: None,
    };
    let t = c.tick(Some(none)).unwrap();
    assert!(
        t.rolled_back.is_none(),
        "windows the caller's observations covered judged again: {:?}",
        t.rolled_back
    );
    assert_eq!(c.state(), State::Migrating);
    c.rollback("done").unwrap();
    check_data(&db);
}

/// The p99 trigger judges windows of the migration it watches: a slow pacing window that
/// ended before the start (here while a rolled-back candidate drained back, when the
/// controller does not count) is not this migration's. The first tick after a start used
/// to count the engine's latest window whatever its age, and with `p99_windows: 1` rolled
/// the new migration back at once.
#[test]
fn the_p99_trigger_does_not_count_a_window_from_before_the_start() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (fs, db, mut c) = p99_watched(dir.path(), 1);
    // A first migration, rolled back: its canary's data drains back (so the pacer keeps
    // ending windows), and the controller, Stable, counts none of them.
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    c.rollback("drill").unwrap();
    assert!(
        !db.migration_progress().is_complete(),
        "nothing drains back"
    );
    // Slow synced writes until a slow window ends; then the foreground is healthy again.
    let writer = SlowWriter::start(&fs, &db);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = db.migration_progress().foreground_p99_window;
    let window = loop {
        assert!(Instant::now() < deadline, "no slow window");
        let p = db.migration_progress();
        if p.foreground_p99_window != last {
            if p.foreground_p99_us > 20_000 {
                break p.foreground_p99_window;
            }
            last = p.foreground_p99_window;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    writer.stop(&fs);
    // The next migration starts well within the next window (a second or more).
    c.plan(good(), PlanOptions::default()).unwrap();
    c.start().unwrap();
    let t = c.tick(None).unwrap();
    assert_eq!(
        t.progress.foreground_p99_window, window,
        "a window ended since the slow one: the test proves nothing"
    );
    assert!(
        t.rolled_back.is_none(),
        "rolled back on a window that ended before the start: {:?}",
        t.rolled_back
    );
    assert_eq!(c.state(), State::Migrating);
    c.rollback("done").unwrap();
    check_data(&db);
}

/// The analysis gate sees keys still in the memtables: a plan flushes them first. Sampled
/// from table indexes alone, a database written and not yet flushed gave an empty sample,
/// an inconclusive verdict, and a biased candidate planned without force.
#[test]
fn the_analysis_gate_sees_unflushed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            idle_memtable_flush_after: None,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..ACCOUNTS {
        db.put(key(i), "100").unwrap();
    }
    assert_eq!(db.stats().levels.iter().map(|l| l.files).sum::<usize>(), 0);
    let mut c = attach(&db);
    let e = c.plan(biased(), PlanOptions::default()).unwrap_err();
    assert!(matches!(e, Error::LayoutRefused(_)), "{e}");
    assert_eq!(c.state(), State::Stable);
    c.plan(good(), PlanOptions::default()).unwrap();
    check_data(&db);
}
