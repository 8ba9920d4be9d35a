//! Migration controller for Sluice: the policy on top of the engine's mechanism — plans and
//! gates, the persisted state machine, pacing, automatic rollback, consistency checks,
//! reconciliation and hot-partition handling.

pub mod analysis;
pub mod consistency;
pub mod controller;
pub mod hot;
pub mod ledger;
pub mod state;

pub use analysis::{Analysis, Distribution, Thresholds, Verdict};
pub use consistency::{check, CheckMode, ConsistencyReport};
pub use controller::{
    Controller, ControllerConfig, Observation, PlanOptions, PlanReport, Reconciliation, TickReport,
    Triggers,
};
pub use state::{Event, PlanRecord, PlanningRecord, Record, State};

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
