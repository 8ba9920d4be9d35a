//! Migration controller for Sluice: the policy on top of the engine's mechanism — plans and
//! gates, the persisted state machine, pacing, analysis, consistency checks.

pub mod analysis;
