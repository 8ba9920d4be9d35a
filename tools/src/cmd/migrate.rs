//! `sluice migrate plan|start|status|pause|resume|rollback|finish|run DIR`: drive a
//! migration of a database directory with the controller of `sluice-migrate`.
//!
//! Every subcommand except `status` opens the directory for writing (exit 4 if a live
//! process holds it) and claims the controller epoch, so it fences any earlier controller.
//! The controller's state lives in the database's manifest: each command resumes where
//! the last one (or a crash) left off. Background migration only runs while a process has
//! the database open: `migrate run` keeps it open, pacing the migration, until it completes;
//! `migrate finish` migrates what is left at once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice::{Db, MigrationProgress, PartitionSpec};
use sluice_migrate::{Controller, ControllerConfig, PlanOptions, State};

use crate::error::{CliError, CmdResult, Status};
use crate::output::{self, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice migrate plan /data/ledger --spec hash:16:7
  sluice migrate plan /data/ledger --spec hash:16:7:4 --force     # past a biased verdict
  sluice migrate start /data/ledger
  sluice migrate run /data/ledger --mb-per-sec 64                  # paced, until complete
  sluice migrate status /data/ledger --watch
  sluice migrate pause /data/ledger
  sluice migrate rollback /data/ledger --reason 'p99 too high'
  sluice migrate finish /data/ledger --json

The state machine: stable -> planned -> shadowing -> validating -> migrating <-> paused ->
finalizing -> complete; rolling-back from any state before complete. Each step is recorded
in the database's manifest; a crashed or interrupted step resumes on the next command.")]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Register a candidate partition function after the analysis gate
    Plan {
        dir: PathBuf,
        /// Candidate function: range:b1,b2 | hash:N[:seed[:prefix]] | split:P:INTO[:seed]/BASE
        #[arg(long)]
        spec: String,
        /// Plan even if the analysis finds the candidate biased
        #[arg(long)]
        force: bool,
        /// Write a checkpoint (hard-linked, openable copy) here before migrating
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Validate, switch the target to the candidate, migrate and check a canary
    Start { dir: PathBuf },
    /// Show the controller state, the plan, progress and recent events (read-only)
    Status {
        dir: PathBuf,
        /// Refresh until interrupted
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch
        #[arg(long, default_value_t = 1.0, value_parser = refresh_seconds)]
        interval: f64,
    },
    /// Stop background migration (the candidate stays the target)
    Pause { dir: PathBuf },
    /// Restart background migration
    Resume { dir: PathBuf },
    /// Set the target back to the layout the migration started from (instant)
    Rollback {
        dir: PathBuf,
        #[arg(long, default_value = "operator request")]
        reason: String,
    },
    /// Migrate everything left now, check, and complete (old layouts retire)
    Finish { dir: PathBuf },
    /// Keep the database open and let the pacer migrate until complete (or --secs)
    Run {
        dir: PathBuf,
        /// Migration budget (at least 1; `migrate pause` stops migration)
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        mb_per_sec: u64,
        /// Stop after this many seconds (the migration stays in progress)
        #[arg(long, value_parser = run_seconds)]
        secs: Option<f64>,
        /// Also run the consistency check and the reconciliation every this many seconds
        /// while migrating (they run at every state change regardless); a failure rolls back
        #[arg(long, value_parser = run_seconds)]
        check_every: Option<f64>,
    },
}

#[derive(Serialize)]
struct StatusJson {
    state: String,
    epoch: u64,
    plan: Option<sluice_migrate::PlanRecord>,
    target: u32,
    live_versions: Vec<u32>,
    draining: Vec<DrainingJson>,
    bytes_left: u64,
    pace_bytes_per_sec: f64,
    blocked: Option<String>,
    /// Data movement held (a paused migration, or one before its canary): persisted, so
    /// known to every command.
    held: bool,
    events: Vec<sluice_migrate::Event>,
}

#[derive(Serialize)]
struct DrainingJson {
    version: u32,
    files_left: usize,
    bytes_left: u64,
    bytes_migrated: u64,
    lazy_moves: u64,
    forwarding_pointers: u64,
    eta_secs: Option<f64>,
}

fn open(dir: &Path) -> Result<Db, CliError> {
    sluice::inspect::check_dir_safety(dir)?;
    let opts = sluice::Options {
        create_if_missing: false,
        // The controller sets the budget; nothing migrates before it does.
        migration_bytes_per_sec: 0,
        ..sluice::Options::default()
    };
    Ok(Db::open(dir, opts)?)
}

/// The controller state the manifest holds, before a controller attaches (attaching
/// resumes a step a crash cut short, which may be the very step the command asks for).
fn stored_state(db: &Db) -> Result<State, CliError> {
    Ok(sluice_migrate::Record::stored(db)?.map_or(State::Stable, |(_, r)| r.state))
}

fn attach(db: &Db, mb_per_sec: u64) -> Result<Controller, CliError> {
    attach_checking(db, mb_per_sec, None)
}

/// [`attach`], with the consistency check and reconciliation also run from ticks at most
/// every `periodic_check`.
fn attach_checking(
    db: &Db,
    mb_per_sec: u64,
    periodic_check: Option<Duration>,
) -> Result<Controller, CliError> {
    let cfg = ControllerConfig {
        migration_bytes_per_sec: mb_per_sec
            .checked_mul(1 << 20)
            .ok_or_else(|| CliError::usage("--mb-per-sec is too large"))?,
        triggers: sluice_migrate::Triggers {
            periodic_check,
            ..Default::default()
        },
        ..ControllerConfig::default()
    };
    Ok(Controller::attach(db.clone(), cfg)?)
}

/// The status document. `pacer_here`: this process ran the pacer (`migrate run`), so what
/// holds it back is known; any other command opened the directory afresh.
fn status_json(db: &Db, pacer_here: bool) -> Result<StatusJson, CliError> {
    let (epoch, rec) = sluice_migrate::Record::stored(db)?.unwrap_or_default();
    let p: MigrationProgress = db.migration_progress();
    let layout = db.layout();
    Ok(StatusJson {
        state: rec.state.name().to_string(),
        epoch,
        plan: rec.plan,
        target: layout.target.0,
        live_versions: layout.versions.iter().map(|v| v.id.0).collect(),
        bytes_left: p.bytes_left(),
        draining: p
            .draining
            .iter()
            .map(|d| DrainingJson {
                version: d.version.0,
                files_left: d.files_left,
                bytes_left: d.bytes_left,
                bytes_migrated: d.bytes_migrated,
                lazy_moves: d.lazy_moves,
                forwarding_pointers: d.forwarding_pointers,
                eta_secs: d.eta_secs,
            })
            .collect(),
        pace_bytes_per_sec: p.pace_bytes_per_sec,
        blocked: if pacer_here || p.held {
            p.blocked.clone()
        } else {
            None
        },
        held: p.held,
        events: rec.events.iter().rev().take(10).rev().cloned().collect(),
    })
}

fn print_status(out: &mut dyn Write, s: &StatusJson) -> std::io::Result<()> {
    writeln!(out, "state         {} (controller epoch {})", s.state, s.epoch)?;
    if let Some(p) = &s.plan {
        writeln!(
            out,
            "plan          v{} -> v{} = {}{}  (predicted max/mean {:.2}, p-value {:.2e})",
            p.from,
            p.to,
            p.spec,
            if p.forced { " FORCED" } else { "" },
            p.predicted_max_over_mean,
            p.predicted_p_value
        )?;
    }
    writeln!(
        out,
        "target        v{}   live versions {:?}",
        s.target, s.live_versions
    )?;
    for d in &s.draining {
        writeln!(
            out,
            "draining v{:<4} {} files, {} left; {} migrated, {} lazy moves, {} forwarding pointers{}",
            d.version,
            d.files_left,
            output::size(d.bytes_left),
            output::size(d.bytes_migrated),
            d.lazy_moves,
            d.forwarding_pointers,
            d.eta_secs
                .map(|e| format!(", ETA {e:.0}s"))
                .unwrap_or_default()
        )?;
    }
    if let Some(b) = &s.blocked {
        writeln!(out, "not migrating: {b}")?;
    }
    if !s.events.is_empty() {
        writeln!(out, "recent events:")?;
        for e in &s.events {
            writeln!(out, "  {} -> {}: {}", e.from, e.to, e.reason)?;
        }
    }
    Ok(())
}

fn done(out: &mut dyn Write, ctx: &Ctx, c: &Controller) -> CmdResult {
    done_as(out, ctx, c, false)
}

/// [`done`], saying whether this process ran the pacer (see [`status_json`]).
fn done_as(out: &mut dyn Write, ctx: &Ctx, c: &Controller, pacer_here: bool) -> CmdResult {
    let s = status_json(c.db(), pacer_here)?;
    if ctx.json {
        output::json(out, &s)?;
    } else {
        print_status(out, &s)?;
    }
    Ok(Status::Ok)
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    match args.action {
        Action::Plan {
            dir,
            spec,
            force,
            checkpoint,
        } => {
            let spec = PartitionSpec::parse(&spec).map_err(|e| CliError::usage(e.to_string()))?;
            let checkpoint_dir = checkpoint.as_deref().map(checkpoint_dir).transpose()?;
            let db = open(&dir)?;
            let mut c = attach(&db, 0)?;
            let r = c.plan(
                spec,
                PlanOptions {
                    force,
                    checkpoint_dir,
                },
            )?;
            ctx.note(format!(
                "analysis: {} (max/mean {:.2}, p-value {:.2e}, {} sampled keys)",
                r.analysis.verdict,
                r.analysis.distribution.max_over_mean,
                r.analysis.distribution.p_value,
                r.analysis.sample.keys
            ));
            done(out, ctx, &c)
        }
        Action::Start { dir } => {
            let db = open(&dir)?;
            let before = stored_state(&db)?;
            let mut c = attach(&db, 0)?;
            let canary_pending = c.record().plan.as_ref().is_some_and(|p| !p.canary_done);
            if c.state() == State::Migrating && (before != State::Migrating || canary_pending) {
                // A start cut short by a crash after its switch of target (attaching
                // recorded the switch if the start had not): what is left of it is the
                // canary, which releases the hold the start put on movement.
                c.resume_migration()?;
            } else {
                c.start()?;
            }
            ctx.note("migrating: run `sluice migrate run` (or open the database) to let the pacer work, or `sluice migrate finish`");
            done(out, ctx, &c)
        }
        Action::Status {
            dir,
            watch,
            interval,
        } => {
            let pause = Duration::from_secs_f64(interval);
            loop {
            let db = crate::cmd::scan::open_read_only(&dir)?;
            let s = status_json(&db, false)?;
            drop(db);
            if ctx.json {
                output::json(out, &s)?;
            } else {
                if watch && !ctx.quiet {
                    write!(out, "\x1b[2J\x1b[H")?;
                }
                print_status(out, &s)?;
            }
            out.flush()?;
            if !watch {
                return Ok(Status::Ok);
            }
            std::thread::sleep(pause);
            }
        }
        Action::Pause { dir } => {
            let db = open(&dir)?;
            let mut c = attach(&db, 0)?;
            c.pause()?;
            done(out, ctx, &c)
        }
        Action::Resume { dir } => {
            let db = open(&dir)?;
            let mut c = attach(&db, 0)?;
            c.resume_migration()?;
            done(out, ctx, &c)
        }
        Action::Rollback { dir, reason } => {
            let db = open(&dir)?;
            let before = stored_state(&db)?;
            let mut c = attach(&db, 0)?;
            if before == State::RollingBack && c.state() == State::Stable {
                // A rollback cut short by a crash: attaching completed it.
            } else {
                c.rollback(&reason)?;
            }
            done(out, ctx, &c)
        }
        Action::Finish { dir } => {
            let db = open(&dir)?;
            let mut c = attach(&db, 0)?;
            c.finish()?;
            done(out, ctx, &c)
        }
        Action::Run {
            dir,
            mb_per_sec,
            secs,
            check_every,
        } => {
            let db = open(&dir)?;
            let every = check_every.map(Duration::from_secs_f64);
            let mut c = attach_checking(&db, mb_per_sec.max(1), every)?;
            if c.state() != State::Migrating {
                let next = match c.state() {
                    State::Finalizing => "use finish",
                    State::Paused => "use resume",
                    State::RollingBack => "use rollback to complete it",
                    State::Planned | State::Shadowing | State::Validating => "use start",
                    _ => "use plan and start",
                };
                return Err(CliError::usage(format!(
                    "migrate run needs a migration in progress (state is {}); {next}",
                    c.state()
                )));
            }
            let started = Instant::now();
            let total = db.migration_progress().bytes_left().max(1);
            let bar = crate::progress::Progress::new(ctx);
            bar.start("migrating", Some(total), "bytes");
            loop {
                let t = c.tick(None)?;
                bar.set(total.saturating_sub(t.progress.bytes_left()));
                if t.completed || c.state() == State::Complete {
                    break;
                }
                if let Some(r) = t.rolled_back {
                    bar.finish();
                    ctx.note(format!("automatic rollback: {r}"));
                    crate::error::verdict(Status::Failed);
                    return done_as(out, ctx, &c, true).map(|_| Status::Failed);
                }
                if secs.is_some_and(|s| started.elapsed().as_secs_f64() >= s) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            bar.finish();
            done_as(out, ctx, &c, true)
        }
    }
}

/// `--interval`: a number of seconds from 0.1 to a day (NaN, infinities and anything
/// below a tenth of a second are refused, not rounded to something else).
/// A `--checkpoint` path as the controller's state stores it (UTF-8): one that is not would
/// be stored changed, and the checkpoint written somewhere else.
fn checkpoint_dir(p: &std::path::Path) -> Result<String, CliError> {
    p.to_str().map(str::to_owned).ok_or_else(|| {
        CliError::usage(format!(
            "--checkpoint {}: the path must be UTF-8 (the controller's state stores it as text)",
            p.display()
        ))
    })
}

/// `--secs` and `--check-every` of `migrate run`: a finite, positive number of seconds.
fn run_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 1e9 {
        Ok(v)
    } else {
        Err(format!("{s}: not a number of seconds above 0"))
    }
}

fn refresh_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.1..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s}: not between 0.1 and 86400 seconds"))
    }
}
