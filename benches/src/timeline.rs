//! Per-second timelines of the scenario workloads, written as CSV and JSON (`--timeline`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::BenchResult;

/// One second of a scenario. Field names are the CSV header and the JSON keys; add fields,
/// never rename them. Migration fields are empty (CSV) or `null` (JSON) when no migration is
/// part of the scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// 1, 2, ...: the window this row covers ends `second` seconds after the load started.
    pub second: u64,
    /// Exact end of the window, in seconds since the load started.
    pub elapsed_s: f64,
    pub phase: String,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub read_p50_us: f64,
    pub read_p99_us: f64,
    pub write_p50_us: f64,
    pub write_p99_us: f64,
    /// Time writers spent stopped or slowed during the window, in ms, summed over the
    /// writers (so it can exceed 1,000 with several stopped at once). The engine books a
    /// stop as it passes, so a 3 s stop shows as ~1,000 in each second it covers; a
    /// slowdown (a sleep of at most 100 ms) is booked when it ends.
    pub stall_ms: f64,
    /// Write stops that began during the window.
    pub stalls: u64,
    pub slowdowns: u64,
    /// Compaction debt at the end of the window.
    pub pending_compaction_bytes: u64,
    /// Most L0 files in any one partition, at the end of the window.
    pub l0_files_max: usize,
    /// Per point read during the window (engine counters): filters probed, and tables
    /// searched (filter passed) — what a read cost before and after its filters.
    pub filter_checks_per_read: f64,
    pub tables_per_read: f64,
    pub immutable_memtables: usize,
    /// Bytes flushed + compacted during the window.
    pub flush_bytes: u64,
    pub compaction_bytes: u64,
    /// Layout versions live at the end of the window.
    pub live_versions: usize,
    /// Bytes in draining layouts (`MigrationProgress::bytes_left`).
    pub migration_bytes_left: Option<u64>,
    /// Share of the live SSTable bytes that are in the migration's final layout.
    pub fraction_migrated: Option<f64>,
    /// The pacer's budget after adaptation (`effective_rate_bytes_per_sec`).
    pub pacer_rate_bytes_per_sec: Option<u64>,
    /// Bytes migrated per second over the last minute, as the pacer measures it.
    pub pacer_pace_bytes_per_sec: Option<f64>,
    /// Foreground p99 (µs) in the pacer's last window: what it adapts to.
    pub pacer_fg_p99_us: Option<u64>,
    /// Why the pacer is not migrating, if it is not.
    pub pacer_blocked: Option<String>,
    /// Migration compaction input bytes during the window.
    pub migrated_bytes: Option<u64>,
    /// Operations that returned an error during the window.
    pub failed_ops: u64,
}

const HEADER: &str = "second,elapsed_s,phase,reads_per_sec,writes_per_sec,read_p50_us,read_p99_us,\
write_p50_us,write_p99_us,stall_ms,stalls,slowdowns,pending_compaction_bytes,l0_files_max,\
filter_checks_per_read,tables_per_read,immutable_memtables,flush_bytes,compaction_bytes,live_versions,migration_bytes_left,\
fraction_migrated,pacer_rate_bytes_per_sec,pacer_pace_bytes_per_sec,pacer_fg_p99_us,\
pacer_blocked,migrated_bytes,failed_ops";

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(String::new, |v| v.to_string())
}

/// RFC 4180 quoting for the free-text fields.
fn quoted(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Row {
    fn csv(&self) -> String {
        format!(
            "{},{:.3},{},{:.1},{:.1},{:.2},{:.2},{:.2},{:.2},{:.1},{},{},{},{},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.second,
            self.elapsed_s,
            quoted(&self.phase),
            self.reads_per_sec,
            self.writes_per_sec,
            self.read_p50_us,
            self.read_p99_us,
            self.write_p50_us,
            self.write_p99_us,
            self.stall_ms,
            self.stalls,
            self.slowdowns,
            self.pending_compaction_bytes,
            self.l0_files_max,
            self.filter_checks_per_read,
            self.tables_per_read,
            self.immutable_memtables,
            self.flush_bytes,
            self.compaction_bytes,
            self.live_versions,
            opt(&self.migration_bytes_left),
            self.fraction_migrated
                .map_or_else(String::new, |f| format!("{f:.4}")),
            opt(&self.pacer_rate_bytes_per_sec),
            self.pacer_pace_bytes_per_sec
                .map_or_else(String::new, |f| format!("{f:.0}")),
            opt(&self.pacer_fg_p99_us),
            self.pacer_blocked
                .as_deref()
                .map_or_else(String::new, quoted),
            opt(&self.migrated_bytes),
            self.failed_ops,
        )
    }
}

/// Where `--timeline SPEC` puts one timeline. `SPEC` ending in `.csv` or `.json` names that
/// one file; anything else is a prefix that gets both `PREFIX.csv` and `PREFIX.json`. A
/// `tag` (the workload, when a run has several timelines; `control` for a control run) goes
/// before the extension: `t.csv` → `t-control.csv`.
pub fn paths(spec: &Path, tag: Option<&str>) -> Vec<PathBuf> {
    let s = spec.to_string_lossy();
    let with_tag = |stem: &str, ext: &str| match tag {
        Some(t) => PathBuf::from(format!("{stem}-{t}.{ext}")),
        None => PathBuf::from(format!("{stem}.{ext}")),
    };
    for ext in ["csv", "json"] {
        if let Some(stem) = s.strip_suffix(&format!(".{ext}")) {
            return vec![with_tag(stem, ext)];
        }
    }
    vec![with_tag(&s, "csv"), with_tag(&s, "json")]
}

/// Writes `rows` to every path of `paths(spec, tag)` (see [`crate::write_output`]; `db_dir`
/// is the benchmark's database directory); returns the paths written.
pub fn write(
    spec: &Path,
    tag: Option<&str>,
    rows: &[Row],
    db_dir: &Path,
) -> BenchResult<Vec<PathBuf>> {
    let out = paths(spec, tag);
    for p in &out {
        let mut f = Vec::new();
        if p.extension().is_some_and(|e| e == "json") {
            serde_json::to_writer_pretty(&mut f, rows)?;
            writeln!(f)?;
        } else {
            writeln!(f, "{HEADER}")?;
            for r in rows {
                writeln!(f, "{}", r.csv())?;
            }
        }
        crate::write_output("--timeline", p, &f, db_dir)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_the_fields() {
        let v = serde_json::to_value(Row::default()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let header: Vec<&str> = HEADER.split(',').collect();
        let mut sorted = header.clone();
        sorted.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(sorted, keys_sorted);
        assert_eq!(Row::default().csv().split(',').count(), header.len());
    }

    #[test]
    fn csv_quotes_free_text() {
        let r = Row {
            pacer_blocked: Some("disk headroom: 1, 2".into()),
            ..Row::default()
        };
        assert!(r.csv().contains("\"disk headroom: 1, 2\""));
    }

    #[test]
    fn paths_follow_the_spec() {
        let p = |s: &str, t| paths(Path::new(s), t);
        assert_eq!(p("t.csv", None), vec![PathBuf::from("t.csv")]);
        assert_eq!(
            p("t.json", Some("control")),
            vec![PathBuf::from("t-control.json")]
        );
        assert_eq!(
            p("out/mig", None),
            vec![PathBuf::from("out/mig.csv"), PathBuf::from("out/mig.json")]
        );
    }
}
