//! `sluice analyze DIR --spec SPEC`: how the keys that already exist would spread over a
//! candidate partition function — the check that catches a biased hash before any data
//! moves.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sluice::PartitionSpec;
use sluice_migrate::analysis::{
    analyze_keys, analyze_sample, SampleInfo, Thresholds, Verdict, DEFAULT_SAMPLE,
};

use crate::chart::terminal_bars;
use crate::error::{CliError, CmdResult, Status};
use crate::output::{self, count, pct, pvalue, Ctx};

#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  sluice analyze /data/ledger --spec hash:16:7       # 16 partitions, seed 7
  sluice analyze /data/ledger --spec hash:16:7:4     # hashing only a 4-byte prefix: biased?
  sluice analyze /data/ledger --spec range:g,p --scan
  sluice analyze /data/ledger --spec split:3:4:1/hash:16:7 --json

SPEC is the textual form of a partition function: range[:b1,b2,..] | hash:N[:seed[:prefix]]
| split:P:INTO[:seed]/BASE. Keys are sampled from SSTable indexes (the last key of every
data block; no data block is read) or, with --scan, by reading every key.
Exits 3 when the verdict is `biased` (p < alpha and max/mean >= --max-over-mean).")]
pub struct Args {
    /// Database directory
    pub dir: PathBuf,
    /// Candidate partition function, e.g. hash:16:7
    #[arg(long)]
    pub spec: String,
    /// Largest sample of keys
    #[arg(long, default_value_t = DEFAULT_SAMPLE, value_name = "N")]
    pub sample: usize,
    /// Sample every key by scanning the database (reads data blocks) instead of indexes
    #[arg(long)]
    pub scan: bool,
    /// Significance level for the chi-square test
    #[arg(long, default_value_t = Thresholds::default().alpha)]
    pub alpha: f64,
    /// Largest partition over the mean above which a significant imbalance is bias
    #[arg(long, default_value_t = Thresholds::default().max_over_mean)]
    pub max_over_mean: f64,
    /// How many of the fullest partitions to list
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub top: usize,
}

#[derive(Serialize)]
struct SampleJson {
    source: &'static str,
    keys: u64,
    /// The sample's worth to the χ² test (keys discounted for unequal weights).
    effective_keys: f64,
    population: u64,
    tables: u64,
}

#[derive(Serialize)]
struct ThresholdsJson {
    alpha: f64,
    max_over_mean: f64,
    min_expected: f64,
}

#[derive(Serialize)]
struct HotJson {
    partition: u32,
    count: u64,
    share: f64,
}

#[derive(Serialize)]
struct AnalyzeJson {
    dir: String,
    spec: String,
    partitions: usize,
    sample: SampleJson,
    counts: Vec<u64>,
    shares: Vec<f64>,
    max_over_mean: f64,
    max_share: f64,
    chi_square: f64,
    degrees_of_freedom: u32,
    p_value: f64,
    empty_partitions: usize,
    verdict: &'static str,
    thresholds: ThresholdsJson,
    hottest: Vec<HotJson>,
}

pub fn run(args: Args, ctx: &Ctx, out: &mut dyn Write) -> CmdResult {
    let spec = PartitionSpec::parse(&args.spec).map_err(|e| CliError::usage(format!("--spec: {e}")))?;
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        return Err(CliError::usage("--alpha must be between 0 and 1"));
    }
    if args.sample == 0 {
        return Err(CliError::usage("--sample must be at least 1"));
    }
    if !(args.max_over_mean.is_finite() && args.max_over_mean >= 1.0) {
        return Err(CliError::usage(
            "--max-over-mean must be a number of at least 1 (the largest partition over the mean)",
        ));
    }
    let thresholds = Thresholds {
        alpha: args.alpha,
        max_over_mean: args.max_over_mean,
        ..Thresholds::default()
    };
    let (a, source) = if args.scan {
        let db = crate::cmd::scan::open_read_only(&args.dir)?;
        let mut seen = 0u64;
        let keys = thin_by_hash(
            db.range(..).map(|r| {
                seen += 1;
                r.map(|(k, _)| k)
            }),
            args.sample,
        )?;
        let info = SampleInfo {
            keys: keys.len() as u64,
            effective_keys: keys.len() as f64,
            population: seen,
            tables: 0,
        };
        (analyze_keys(&spec, &keys, info, thresholds)?, "scan")
    } else {
        // The same weighted judgement the migration controller's gate makes.
        let s = sluice_migrate::analysis::sample_dir(&args.dir, args.sample)?;
        (analyze_sample(&spec, &s, thresholds)?, "index")
    };
    let d = &a.distribution;
    let status = crate::error::verdict(if a.verdict == Verdict::Biased { Status::Failed } else { Status::Ok });
    if ctx.json {
        output::json(
            out,
            &AnalyzeJson {
                dir: output::path_str(&args.dir),
                spec: spec.to_string(),
                partitions: d.partitions(),
                sample: SampleJson {
                    source,
                    keys: a.sample.keys,
                    effective_keys: a.sample.effective_keys,
                    population: a.sample.population,
                    tables: a.sample.tables,
                },
                counts: d.counts.clone(),
                shares: d.shares(),
                max_over_mean: d.max_over_mean,
                max_share: d.max_share(),
                chi_square: d.chi_square,
                degrees_of_freedom: d.degrees_of_freedom,
                p_value: d.p_value,
                empty_partitions: d.empty_partitions(),
                verdict: a.verdict.as_str(),
                thresholds: ThresholdsJson {
                    alpha: thresholds.alpha,
                    max_over_mean: thresholds.max_over_mean,
                    min_expected: thresholds.min_expected,
                },
                hottest: d
                    .hottest(args.top)
                    .into_iter()
                    .map(|(partition, count, share)| HotJson { partition, count, share })
                    .collect(),
            },
        )?;
    } else {
        writeln!(out, "candidate    {spec} ({} partitions)", d.partitions())?;
        writeln!(
            out,
            "sample       {} keys from {} ({} distinct candidates{})",
            count(a.sample.keys),
            if source == "index" { "SSTable indexes" } else { "a full scan" },
            count(a.sample.population),
            if source == "index" {
                format!(
                    " in {} tables; weighted, worth {:.0} independent keys",
                    a.sample.tables, a.sample.effective_keys
                )
            } else {
                String::new()
            }
        )?;
        writeln!(
            out,
            "balance      max/mean {:.2}, largest share {}, {} empty partition{}",
            d.max_over_mean,
            pct(d.max_share()),
            d.empty_partitions(),
            if d.empty_partitions() == 1 { "" } else { "s" }
        )?;
        writeln!(
            out,
            "chi-square   {:.1} (dof {}), p-value {}",
            d.chi_square,
            d.degrees_of_freedom,
            pvalue(d.p_value)
        )?;
        let hot: Vec<String> = d
            .hottest(args.top)
            .iter()
            .map(|(p, _, s)| format!("{p} ({})", pct(*s)))
            .collect();
        writeln!(out, "hottest      {}", if hot.is_empty() { "-".into() } else { hot.join(", ") })?;
        for line in terminal_bars(&d.counts, 40) {
            writeln!(out, "{line}")?;
        }
        let why = match a.verdict {
            Verdict::Biased => format!(
                "biased: p < {} and max/mean >= {}; migrating to this function would overload partition {}",
                thresholds.alpha,
                thresholds.max_over_mean,
                d.hottest(1).first().map_or(0, |h| h.0)
            ),
            Verdict::Balanced => "balanced".to_string(),
            Verdict::Inconclusive => format!(
                "inconclusive: fewer than {} sampled keys per partition (try --scan or a larger --sample)",
                thresholds.min_expected
            ),
        };
        writeln!(out, "verdict      {why}")?;
    }
    Ok(status)
}

/// The `n` keys first in a deterministic hash order (ties by key), holding at most `n`
/// keys at a time however many there are. A stride over the key order would bias range
/// analyses; a hash order does not.
fn thin_by_hash<K: AsRef<[u8]> + Ord, E>(
    keys: impl Iterator<Item = Result<K, E>>,
    n: usize,
) -> Result<Vec<K>, E> {
    let mut heap = std::collections::BinaryHeap::with_capacity(n.min(1 << 20) + 1);
    for k in keys {
        let k = k?;
        let h = sluice_hash(k.as_ref());
        if heap.len() < n {
            heap.push((h, k));
        } else if heap.peek().is_some_and(|(th, tk)| (h, &k) < (*th, tk)) {
            heap.pop();
            heap.push((h, k));
        }
    }
    Ok(heap.into_sorted_vec().into_iter().map(|(_, k)| k).collect())
}

fn sluice_hash(k: &[u8]) -> u64 {
    // FNV-1a: a fixed, dependency-free order for thinning a full scan.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in k {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn thinning_keeps_the_first_n_in_hash_order() {
        let keys: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("k{:05}", (i * 7919) % 5000).into_bytes())
            .collect();
        for n in [0, 1, 10, 4999, 5000, 6000] {
            let mut want = keys.clone();
            want.sort_by(|a, b| (sluice_hash(a), a).cmp(&(sluice_hash(b), b)));
            want.truncate(n);
            let got = thin_by_hash(keys.iter().cloned().map(Ok::<_, ()>), n).unwrap();
            assert_eq!(got, want, "n = {n}");
        }
        let failing = [Ok(b"a".to_vec()), Err("disk"), Ok(b"b".to_vec())];
        assert_eq!(thin_by_hash(failing.into_iter(), 5), Err("disk"));
    }
}
