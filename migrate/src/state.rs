//! The controller's persisted state machine.
//!
//! ```text
//! Stable → Planned → Shadowing → Validating → Migrating ⇄ Paused → Finalizing → Complete
//!                 RollingBack ← (any state before Complete) → Stable
//! ```
//! The record lives in the engine's manifest (fenced by the controller epoch), so a
//! controller that crashes resumes where it was, and a stale controller cannot overwrite
//! the state of the one that replaced it.
//!
//! A field this version does not know is refused, not skipped: the record is stored back
//! whole at every step, and a field skipped here (written by a newer sluice) would be lost
//! with whatever it recorded. Fields added since the first format read as their default
//! when absent, so older records still decode.

use serde::{Deserialize, Serialize};

/// Where a migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// No migration in progress.
    Stable,
    /// A candidate function is registered and passed (or was forced past) the analysis gate.
    Planned,
    /// Live traffic is counted per candidate partition.
    Shadowing,
    /// Shadow statistics, consistency check and reconciliation are being checked.
    Validating,
    /// The candidate is the target; draining data moves to it.
    Migrating,
    /// The candidate is the target, background migration is stopped.
    Paused,
    /// Everything left is being migrated before completion.
    Finalizing,
    /// The old layouts are retired.
    Complete,
    /// The target is being set back to the layout the migration started from.
    RollingBack,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Stable => "stable",
            State::Planned => "planned",
            State::Shadowing => "shadowing",
            State::Validating => "validating",
            State::Migrating => "migrating",
            State::Paused => "paused",
            State::Finalizing => "finalizing",
            State::Complete => "complete",
            State::RollingBack => "rolling-back",
        }
    }

    /// Whether `self -> next` is a transition the state machine allows.
    pub fn allows(self, next: State) -> bool {
        use State::*;
        match (self, next) {
            (Stable | Complete, Planned) => true,
            (Planned, Shadowing | Validating) => true,
            (Shadowing, Validating) => true,
            (Validating, Migrating) => true,
            (Migrating, Paused | Finalizing) => true,
            (Paused, Migrating | Finalizing) => true,
            (Finalizing, Complete) => true,
            (s, RollingBack) => s != Complete && s != Stable,
            (RollingBack, Stable) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One logged transition (or trigger), with its reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub unix_ms: u64,
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// The plan of the migration in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRecord {
    /// The layout version that was the target when the migration was planned: rollback
    /// returns here.
    pub from: u32,
    /// The candidate layout version.
    pub to: u32,
    /// The candidate function, in `PartitionSpec::parse` form.
    pub spec: String,
    /// Planned despite failing the analysis gate.
    pub forced: bool,
    pub predicted_max_over_mean: f64,
    pub predicted_p_value: f64,
    /// Input bytes to migrate in the canary step before the full migration.
    pub canary_bytes: u64,
    pub canary_done: bool,
    pub checkpoint_dir: Option<String>,
    /// Layout versions this migration replaced mid-flight (a biased candidate, corrected).
    pub superseded: Vec<u32>,
    /// The validation gate (consistency check and reconciliation before the switch) passed.
    /// `Validating` alone means only that validation began: a check that could not run, or
    /// a crash in the middle of it, leaves that state behind, and the next start validates
    /// again.
    #[serde(default)]
    pub validated: bool,
}

/// What a plan is about to change in the engine before it records `Planned`: recorded
/// first, so that a plan cut short (a crash, a failing hook) can be undone instead of
/// leaving a candidate pinned and live for ever.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanningRecord {
    /// Fingerprint of the candidate function: a version registered for it (id above
    /// `last_id`) is the plan's own.
    pub fingerprint: u64,
    /// The highest layout version id, live or retired, when the plan began.
    pub last_id: u32,
    /// Versions the plan pins that were not pinned before it.
    pub pins: Vec<u32>,
}

/// Everything the controller persists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub state: State,
    pub plan: Option<PlanRecord>,
    /// A plan under way (between its first engine change and `Planned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planning: Option<PlanningRecord>,
    /// Reconciliation value recorded when the migration was planned.
    pub reconciliation: Option<String>,
    /// Why the last canary or periodic check could not run (a failing reconciliation hook,
    /// an unreadable table): data movement is held until one passes, across restarts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_failing: Option<String>,
    /// Most recent events, oldest first (bounded).
    pub events: Vec<Event>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            state: State::Stable,
            plan: None,
            planning: None,
            reconciliation: None,
            check_failing: None,
            events: Vec::new(),
        }
    }
}

/// Events kept in the persisted record.
pub const MAX_EVENTS: usize = 64;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("controller record serializes")
    }

    pub fn decode(b: &[u8]) -> Result<Record, String> {
        if b.is_empty() {
            return Ok(Record::default());
        }
        let r: Record =
            serde_json::from_slice(b).map_err(|e| format!("controller state is not valid: {e}"))?;
        // A migration in progress is its plan: without one nothing says where it goes or
        // where a rollback returns, and no step (a rollback included) could be taken.
        if r.plan.is_none() && !matches!(r.state, State::Stable | State::Complete) {
            return Err(format!(
                "controller state is not valid: a migration {} has no plan",
                r.state
            ));
        }
        // Nor is a plan whose candidate function does not parse: shadowing and validation
        // need it, and a resume that failed on it failed every attach, a rollback's too.
        if let Some(p) = &r.plan {
            sluice::PartitionSpec::parse(&p.spec).map_err(|e| {
                format!(
                    "controller state is not valid: the plan's function {:?}: {e}",
                    p.spec
                )
            })?;
        }
        Ok(r)
    }

    /// The controller state `db` holds (its epoch and record), if a controller ever
    /// claimed it. A record that does not decode is corruption naming the manifest and the
    /// edit that stored it.
    pub fn stored(db: &sluice::Db) -> sluice::Result<Option<(u64, Record)>> {
        let Some((epoch, bytes)) = db.controller_state() else {
            return Ok(None);
        };
        Record::decode(&bytes)
            .map(|r| Some((epoch, r)))
            .map_err(|reason| {
                let (file, offset) = controller_edit(db.path());
                sluice::Error::Corruption {
                    file,
                    offset,
                    reason,
                }
            })
    }
}

/// Where the latest controller record of the manifest in `dir` is: the manifest and the
/// offset of the edit holding it (the directory, offset 0, if the manifest cannot be read).
fn controller_edit(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    use sluice::manifest::EditRecord;
    let Ok((m, _)) = sluice::inspect::read_manifest_safely(dir) else {
        return (dir.to_path_buf(), 0);
    };
    let at = m.edits.iter().rev().find_map(|(offset, e)| {
        e.records
            .iter()
            .any(|r| matches!(r, EditRecord::Controller { .. }))
            .then_some(*offset)
    });
    (m.path, at.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let r = Record {
            state: State::Migrating,
            plan: Some(PlanRecord {
                from: 1,
                to: 2,
                spec: "hash:8:1".into(),
                forced: true,
                predicted_max_over_mean: 1.5,
                predicted_p_value: 0.001,
                canary_bytes: 1 << 20,
                canary_done: false,
                checkpoint_dir: None,
                superseded: vec![],
                validated: true,
            }),
            planning: Some(PlanningRecord {
                fingerprint: 7,
                last_id: 2,
                pins: vec![1],
            }),
            reconciliation: Some("100000".into()),
            check_failing: Some("ledger unreachable".into()),
            events: vec![Event {
                unix_ms: 1,
                from: State::Validating,
                to: State::Migrating,
                reason: "start".into(),
            }],
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert_eq!(Record::decode(b"").unwrap(), Record::default());
        assert!(Record::decode(b"{not json").is_err());
        // A migration in progress without its plan is damage, not a state to resume.
        let mut planless = r.clone();
        planless.plan = None;
        let e = Record::decode(&planless.encode()).unwrap_err();
        assert!(e.contains("migrating has no plan"), "{e}");
        // A record written before `planning` existed still reads, with no plan under way.
        let old = br#"{"state":"Stable","plan":null,"reconciliation":null,"events":[]}"#;
        assert_eq!(Record::decode(old).unwrap(), Record::default());
        let mut plain = r.clone();
        plain.planning = None;
        plain.check_failing = None;
        let text = String::from_utf8(plain.encode()).unwrap();
        assert!(!text.contains("planning") && !text.contains("check_failing"));
        // A plan written before `validated` existed reads as not validated.
        let mut old = serde_json::to_value(&r).unwrap();
        old["plan"].as_object_mut().unwrap().remove("validated");
        let old = Record::decode(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(!old.plan.unwrap().validated);
    }

    /// A record carrying a field this version does not know (one written by a newer
    /// sluice) is refused: it used to be decoded with the field dropped, and the next
    /// store wrote it back without it, so an older binary attaching lost what the newer
    /// one had recorded (a plan under way, a check's hold, and whatever comes next).
    #[test]
    fn a_record_with_a_field_this_version_does_not_know_is_refused() {
        let plan = r#"{"from":1,"to":2,"spec":"hash:8:1","forced":false,"predicted_max_over_mean":1.0,"predicted_p_value":0.5,"canary_bytes":0,"canary_done":false,"checkpoint_dir":null,"superseded":[]"#;
        let event = r#"{"unix_ms":1,"from":"Stable","to":"Planned","reason":"plan""#;
        let planning = r#"{"fingerprint":7,"last_id":1,"pins":[]"#;
        let record = |plan: &str, planning: &str, event: &str, extra: &str| {
            format!(
                r#"{{"state":"Planned","plan":{plan}}},"planning":{planning}}},"reconciliation":null,"events":[{event}}}]{extra}}}"#
            )
        };
        let known = record(plan, planning, event, "");
        Record::decode(known.as_bytes()).unwrap();
        let newer = r#","hold_reason":"x""#;
        for (at, text) in [
            ("the record", record(plan, planning, event, newer)),
            (
                "the plan",
                record(&format!("{plan}{newer}"), planning, event, ""),
            ),
            (
                "the plan under way",
                record(plan, &format!("{planning}{newer}"), event, ""),
            ),
            (
                "an event",
                record(plan, planning, &format!("{event}{newer}"), ""),
            ),
        ] {
            let e = Record::decode(text.as_bytes()).expect_err(at);
            assert!(e.contains("hold_reason"), "{at}: {e}");
        }
    }

    #[test]
    fn transitions() {
        use State::*;
        assert!(Stable.allows(Planned));
        assert!(Planned.allows(Shadowing));
        assert!(Migrating.allows(Paused));
        assert!(Paused.allows(Migrating));
        assert!(Finalizing.allows(Complete));
        for s in [
            Planned, Shadowing, Validating, Migrating, Paused, Finalizing,
        ] {
            assert!(s.allows(RollingBack), "{s}");
        }
        assert!(!Complete.allows(RollingBack));
        assert!(!Stable.allows(Migrating));
        assert!(!Planned.allows(Complete));
    }
}
