//! `sluice partitions DIR`: balance of every live layout version — entries, bytes and share
//! per partition, max/mean, χ² and its p-value, the hottest partitions, and a chart.
//! From the manifest alone: no SSTable is opened.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sluice_migrate::analysis::{Distribution, Thresholds};

use crate::chart::{svg_balance, terminal_bars};
use crate::error::{CmdResult, Status};
use crate::output::{self, count, pct, pvalue, size, Ctx};
use crate::summary::Summary;

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice partitions /data/ledger
  sluice partitions /data/ledger --svg balance.svg
  sluice partitions /data/ledger --by bytes --no-chart
  sluice partitions /data/ledger --json | jq '.versions[] | {id, max_over_mean, p_value}'

Counts are the entries the manifest records per partition (keys, plus older versions and
tombstones not yet compacted away). The chi-square test compares them with an even spread;
a verdict of `biased` needs both p < 0.001 and max/mean >= 1.25. Range layouts are rarely
even by design: read their verdict as a description, not an alarm.")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// Measure balance by entries (default) or bytes
    #[arg(long, value_enum, default_value_t = By::Entries)]
    pub by: By,
    /// Also write an SVG bar chart of every version's balance
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Leave out the terminal bar chart
    #[arg(long)]
    pub no_chart: bool,
    /// How many of the fullest partitions to list
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub top: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Entries,
    Bytes,
}

#[derive(Serialize)]
struct PartJson {
    partition: u32,
    entries: u64,
    bytes: u64,
    files: usize,
    share: f64,
}

#[derive(Serialize)]
struct HotJson {
    partition: u32,
    count: u64,
    share: f64,
}

#[derive(Serialize)]
struct VersionJson {
    id: u32,
    spec: String,
    role: &'static str,
    partitions: usize,
    entries: u64,
    bytes: u64,
    /// What shares and statistics are computed on: `entries` or `bytes`.
    measure: &'static str,
    mean: f64,
    max_over_mean: f64,
    chi_square: f64,
    degrees_of_freedom: u32,
    p_value: f64,
    verdict: &'static str,
    hottest: Vec<HotJson>,
    partition_stats: Vec<PartJson>,
}

#[derive(Serialize)]
struct PartitionsJson {
    dir: String,
    versions: Vec<VersionJson>,
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let st = sluice::inspect::check_dir_safety(&args.dir)?;
    let sum = Summary::of(&st);
    let measure = match args.by {
        By::Entries => "entries",
        By::Bytes => "bytes",
    };
    let t = Thresholds::default();
    let mut versions = Vec::new();
    let mut panels = Vec::new();
    let mut human_verdicts = Vec::new();
    for v in &sum.versions {
        let counts: Vec<u64> = v
            .partitions
            .iter()
            .map(|p| if args.by == By::Bytes { p.bytes } else { p.entries })
            .collect();
        let d = Distribution::from_counts(counts.clone());
        let shares = d.shares();
        human_verdicts.push(crate::html::verdict_text(v, &d));
        let mut panel = crate::html::panel_for(v);
        if args.by == By::Bytes {
            panel.counts = counts;
            panel.subtitle = format!(
                "{} in {} partitions · max/mean {:.2} · χ² p-value {} · {}",
                size(d.total),
                d.partitions(),
                d.max_over_mean,
                pvalue(d.p_value),
                crate::html::verdict_text(v, &d)
            );
        }
        panels.push(panel);
        versions.push(VersionJson {
            id: v.id,
            spec: v.spec.clone(),
            role: v.role,
            partitions: v.partitions.len(),
            entries: v.entries,
            bytes: v.bytes,
            measure,
            mean: d.mean,
            max_over_mean: d.max_over_mean,
            chi_square: d.chi_square,
            degrees_of_freedom: d.degrees_of_freedom,
            p_value: d.p_value,
            verdict: d.verdict(&t).as_str(),
            hottest: d
                .hottest(args.top)
                .into_iter()
                .map(|(partition, count, share)| HotJson {
                    partition,
                    count,
                    share,
                })
                .collect(),
            partition_stats: v
                .partitions
                .iter()
                .zip(&shares)
                .map(|(p, s)| PartJson {
                    partition: p.partition,
                    entries: p.entries,
                    bytes: p.bytes,
                    files: p.files,
                    share: *s,
                })
                .collect(),
        });
    }
    if let Some(path) = &args.svg {
        let svg = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n", svg_balance(&panels));
        crate::output::write_report(path, svg.as_bytes(), &args.dir)?;
        ctx.note(format!("wrote {}", path.display()));
    }
    if ctx.json {
        output::json(
            out,
            &PartitionsJson {
                dir: output::path_str(&args.dir),
                versions,
            },
        )?;
        return Ok(Status::Ok);
    }
    for (i, v) in versions.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "v{} {} ({}): {} partitions", v.id, v.spec, v.role, v.partitions)?;
        writeln!(out, "  entries      {}", count(v.entries))?;
        writeln!(out, "  bytes        {}", size(v.bytes))?;
        writeln!(
            out,
            "  balance      max/mean {:.2} by {}, chi-square {:.1} (dof {}), p-value {} → {}",
            v.max_over_mean,
            v.measure,
            v.chi_square,
            v.degrees_of_freedom,
            pvalue(v.p_value),
            human_verdicts[i]
        )?;
        let hot: Vec<String> = v
            .hottest
            .iter()
            .map(|h| format!("{} ({})", h.partition, pct(h.share)))
            .collect();
        writeln!(
            out,
            "  hottest      {}",
            if hot.is_empty() { "-".to_string() } else { hot.join(", ") }
        )?;
        if !args.no_chart && v.partitions > 1 && v.partition_stats.iter().any(|p| p.entries > 0 || p.bytes > 0) {
            let counts: Vec<u64> = v
                .partition_stats
                .iter()
                .map(|p| if args.by == By::Bytes { p.bytes } else { p.entries })
                .collect();
            for line in terminal_bars(&counts, 40) {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(Status::Ok)
}
