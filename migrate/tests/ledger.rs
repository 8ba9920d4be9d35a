//! The ledger scenario (`sluice demo`): the figures its summary reports are measured
//! where they claim to be.

use sluice_migrate::ledger::{run, LedgerConfig};

fn small(dir: &std::path::Path) -> LedgerConfig {
    LedgerConfig {
        accounts: 3000,
        payload_bytes: 32,
        transfers_per_sec: 500,
        lookups_per_sec: 200,
        stable_secs: 0.3,
        rollback_secs: 0.5,
        migration_bytes_per_sec: 64 << 20,
        ..LedgerConfig::new(dir)
    }
}

/// The share under the corrected function is read from the layout the migration finished
/// in. While rolled back the retarget's layout drains back into v1 and retires, and going
/// forward again plans a new version: the share used to be read from the retired one, and
/// reported as 0% (no partition holding anything).
#[test]
fn corrected_share_is_read_from_the_layout_the_migration_finished_in() {
    let t = tempfile::tempdir().unwrap();
    let s = run(&small(t.path()), &mut |_| {}).unwrap();
    assert_eq!(s.lost_writes + s.duplicated_writes, 0);
    assert_eq!(s.final_versions.len(), 1, "{:?}", s.final_versions);
    assert!(
        s.corrected_max_share > 0.0 && s.corrected_max_share < 0.5,
        "largest partition share under the corrected function: {} (final layouts {:?}, events {:#?})",
        s.corrected_max_share,
        s.final_versions,
        s.events
    );
}

/// The "stable" latency is the baseline with nothing but transfers running: transfers
/// completed while the controller plans, shadows live traffic (a second of it) and
/// validates are not in it. With no stable seconds at all there is (next to) nothing to
/// measure; they used to bring it a second or more of transfers.
#[test]
fn stable_latency_counts_only_the_stable_seconds() {
    let t = tempfile::tempdir().unwrap();
    let cfg = LedgerConfig {
        stable_secs: 0.0,
        ..small(t.path())
    };
    let s = run(&cfg, &mut |_| {}).unwrap();
    // 500 transfers/s: 50 is 0.1 s of them.
    assert!(
        s.stable.transfers <= 50,
        "{} transfers counted as stable with --stable-secs 0 ({} in all)",
        s.stable.transfers,
        s.transfers_committed
    );
}
