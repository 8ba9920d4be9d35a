//! The ledger test: concurrent transfers (transactions across partitions) through a full
//! migration — biased hash forced past the gate, corrected mid-flight, one rollback, then
//! forward to completion — with the sum of balances checked after every step and the
//! ledger audited for lost and duplicated writes.

use sluice_migrate::ledger::{run, LedgerConfig, LedgerEvent};

#[test]
fn ledger_survives_migration_retarget_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LedgerConfig {
        accounts: 8_000,
        payload_bytes: 64,
        transfer_threads: 2,
        stable_secs: 0.5,
        migration_bytes_per_sec: 2 << 20,
        rollback_secs: 0.5,
        ..LedgerConfig::new(dir.path().join("ledger"))
    };
    let mut phases = Vec::new();
    let s = run(&cfg, &mut |e| {
        if let LedgerEvent::Phase(p) = e {
            phases.push(p);
        }
    })
    .unwrap();
    assert_eq!(s.sum_before, 8_000 * 1_000);
    assert_eq!(s.sum_after, s.sum_before);
    for (step, sum) in &s.sums_at_steps {
        assert_eq!(*sum, s.sum_before, "at {step}");
    }
    assert!(s.sums_at_steps.len() >= 8, "{:?}", s.sums_at_steps);
    assert_eq!(s.lost_writes, 0);
    assert_eq!(s.duplicated_writes, 0);
    assert!(s.transfers_committed > 100, "{s:?}");
    assert!(s.corrected_max_share < 1.6 / 16.0, "{s:?}");
    assert!(
        s.biased_max_share > 1.3 * s.corrected_max_share,
        "the forced hash really was biased: {s:?}"
    );
    assert_eq!(s.final_versions.len(), 1, "v1 and v2 retired");
    assert!(
        phases.iter().any(|p| p.contains("rolled back")),
        "{phases:?}"
    );
    assert!(
        s.events.iter().any(|e| e.contains("FORCED")),
        "{:?}",
        s.events
    );
}
