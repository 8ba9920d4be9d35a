//! Migration controller for Sluice (policy on top of the engine's mechanism).
