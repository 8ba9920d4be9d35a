//! Analysis of partition functions over a sample of the existing keys.
//!
//! Before a migration commits to a new partition function, the controller (and the
//! operator, through `sluice analyze`) should know how the keys that already exist would
//! spread over its partitions. A hash that looks fine on paper can be badly biased on real
//! keys — hashing only a 4-byte prefix of `acct00001234`-style keys sends every key to one
//! partition. This module:
//!
//! 1. samples existing keys from SSTable indexes ([`sample_dir`], [`sample_db`]): the last
//!    key of every data block, so no data block is read and the sample is weighted by bytes;
//! 2. predicts the per-partition counts of the sample under a candidate
//!    ([`predict`] → [`Distribution`]);
//! 3. measures imbalance: shares, max/mean, Pearson's χ² against a uniform spread and its
//!    p-value ([`chi_square_sf`], from the regularized upper incomplete gamma function);
//! 4. gives a verdict ([`Distribution::verdict`]) under [`Thresholds`].
//!
//! ```
//! use sluice::PartitionSpec;
//! use sluice_migrate::analysis::{predict, Thresholds, Verdict};
//!
//! let keys: Vec<String> = (0..20_000).map(|i| format!("acct{i:08}")).collect();
//! let fair = PartitionSpec::parse("hash:16:7").unwrap();
//! let biased = PartitionSpec::parse("hash:16:7:4").unwrap(); // hashes "acct" only
//! let t = Thresholds::default();
//! assert_eq!(predict(&fair, &keys).unwrap().verdict(&t), Verdict::Balanced);
//! let d = predict(&biased, &keys).unwrap();
//! assert_eq!(d.verdict(&t), Verdict::Biased);
//! assert_eq!(d.max_share(), 1.0);
//! ```
//!
//! Why both a p-value and max/mean: with a large sample, χ² flags imbalances too small to
//! matter (a 2% skew over a million keys is "significant"); with a small one, a large ratio
//! can be noise. A candidate is called biased only when the imbalance is both statistically
//! significant (`p < alpha`) and large enough to matter (`max/mean >= max_over_mean`).

use std::path::Path;

pub use sluice::inspect::KeySample;
use sluice::{Db, Error, PartitionFn, PartitionSpec, Result};

/// Keys sampled by default: enough for a tight estimate on 4096 partitions (~24 per
/// partition expected), small enough to take well under a second.
pub const DEFAULT_SAMPLE: usize = 100_000;

/// When a distribution counts as biased.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Significance level: the χ² p-value must be below this for a verdict of bias.
    pub alpha: f64,
    /// The largest partition must hold at least this many times the mean.
    pub max_over_mean: f64,
    /// Below this many expected keys per partition the χ² approximation is poor and the
    /// sample too thin: the verdict is [`Verdict::Inconclusive`] (unless every key lands
    /// in one partition of several, which no sample size excuses).
    pub min_expected: f64,
}

impl Thresholds {
    /// Refuses thresholds under which no candidate could be judged biased (a NaN compares
    /// false, so `alpha: NaN` made every verdict balanced): `alpha` in (0, 1),
    /// `max_over_mean` finite and at least 1, `min_expected` finite and not negative.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, reason: String| Err(Error::InvalidOption { name, reason });
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return bad(
                "thresholds.alpha",
                format!("must be in (0, 1), not {}", self.alpha),
            );
        }
        if !(self.max_over_mean.is_finite() && self.max_over_mean >= 1.0) {
            return bad(
                "thresholds.max_over_mean",
                format!("must be a finite number ≥ 1, not {}", self.max_over_mean),
            );
        }
        if !(self.min_expected.is_finite() && self.min_expected >= 0.0) {
            return bad(
                "thresholds.min_expected",
                format!("must be a finite number ≥ 0, not {}", self.min_expected),
            );
        }
        Ok(())
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            alpha: 0.001,
            max_over_mean: 1.25,
            min_expected: 5.0,
        }
    }
}

/// The outcome of an analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No meaningful imbalance.
    Balanced,
    /// Significant and large imbalance: do not migrate to this function unless forced.
    Biased,
    /// Too few keys for a judgement.
    Inconclusive,
}

impl Verdict {
    /// Stable lowercase name (`balanced`, `biased`, `inconclusive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Balanced => "balanced",
            Verdict::Biased => "biased",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts per partition and their imbalance statistics against a uniform spread.
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    /// Count per partition, indexed by partition.
    pub counts: Vec<u64>,
    pub total: u64,
    /// `total / partitions`.
    pub mean: f64,
    pub max: u64,
    /// `max / mean` (1.0 is perfect balance; 0 when there is no data).
    pub max_over_mean: f64,
    /// Pearson's χ² statistic against equal expected counts.
    pub chi_square: f64,
    /// `partitions - 1`.
    pub degrees_of_freedom: u32,
    /// Probability of a χ² at least this large if keys were spread uniformly at random.
    pub p_value: f64,
    /// Distinct keys observed (before any rescaling of `counts`).
    pub keys: u64,
    /// Partitions at least one observed key landed in.
    pub occupied: usize,
}

impl Distribution {
    /// Statistics of the given per-partition counts.
    pub fn from_counts(counts: Vec<u64>) -> Distribution {
        let n = counts.len();
        let total = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
        let max = counts.iter().copied().max().unwrap_or(0);
        let mean = if n == 0 { 0.0 } else { total as f64 / n as f64 };
        let max_over_mean = if mean > 0.0 { max as f64 / mean } else { 0.0 };
        let chi_square = if mean > 0.0 {
            counts
                .iter()
                .map(|&c| (c as f64 - mean).powi(2) / mean)
                .sum()
        } else {
            0.0
        };
        let dof = n.saturating_sub(1) as u32;
        let counts_occupied = counts.iter().filter(|&&c| c > 0).count();
        let p_value = if dof == 0 || mean == 0.0 {
            1.0
        } else {
            chi_square_sf(chi_square, dof as f64)
        };
        Distribution {
            counts,
            total,
            mean,
            max,
            max_over_mean,
            chi_square,
            degrees_of_freedom: dof,
            p_value,
            keys: total,
            occupied: counts_occupied,
        }
    }

    pub fn partitions(&self) -> usize {
        self.counts.len()
    }

    /// Fraction of the total in each partition.
    pub fn shares(&self) -> Vec<f64> {
        self.counts.iter().map(|&c| self.share_of(c)).collect()
    }

    fn share_of(&self, c: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            c as f64 / self.total as f64
        }
    }

    /// The largest partition's share.
    pub fn max_share(&self) -> f64 {
        self.share_of(self.max)
    }

    /// The `n` fullest partitions as (partition, count, share), fullest first (ties by
    /// partition index).
    pub fn hottest(&self, n: usize) -> Vec<(u32, u64, f64)> {
        let mut v: Vec<(u32, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, &c)| (i as u32, c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .take(n)
            .filter(|(_, c)| *c > 0)
            .map(|(i, c)| (i, c, self.share_of(c)))
            .collect()
    }

    /// Partitions that received nothing.
    pub fn empty_partitions(&self) -> usize {
        self.counts.iter().filter(|&&c| c == 0).count()
    }

    /// Every one of at least 8 observed keys landed in one partition (of several): bias at
    /// any sample size, even when the counts were scaled down to an effective sample size.
    pub fn all_in_one(&self) -> bool {
        self.partitions() > 1 && self.keys >= 8 && self.occupied == 1
    }

    /// The observed keys hit far fewer partitions than a fair function would. With `n`
    /// distinct keys spread uniformly over `P` partitions the expected number hit is
    /// `μ = P (1 − (1 − 1/P)^n)`; the hit indicators are negatively associated, so a
    /// Chernoff bound gives `Pr[hit ≤ μ − δ] ≤ exp(−δ² / 2μ)`, below `alpha` for
    /// `δ = sqrt(2μ ln(1/alpha))`. Also required: the hit partitions would hold at least
    /// `max_over_mean` times their share on average (a large effect, not just a
    /// significant one).
    fn too_few_partitions_hit(&self, t: &Thresholds) -> bool {
        let p = self.partitions() as f64;
        let n = self.keys as f64;
        if n < 8.0 || p < 2.0 {
            return false;
        }
        let mu = p * (1.0 - (1.0 - 1.0 / p).powf(n));
        let o = self.occupied as f64;
        let delta = (2.0 * mu * (1.0 / t.alpha).ln()).sqrt();
        o < mu - delta && o * t.max_over_mean <= mu
    }

    /// Biased, balanced or inconclusive under `t` (see the module docs for the rule).
    pub fn verdict(&self, t: &Thresholds) -> Verdict {
        if self.partitions() <= 1 {
            return Verdict::Balanced;
        }
        // Everything in one partition out of several is bias at any sample size above a
        // handful of keys.
        if self.all_in_one() {
            return Verdict::Biased;
        }
        if self.mean < t.min_expected {
            // Too few keys per partition for χ², but not too few to see that they crowd
            // into far fewer partitions than a fair function would fill.
            return if self.too_few_partitions_hit(t) {
                Verdict::Biased
            } else {
                Verdict::Inconclusive
            };
        }
        if self.p_value < t.alpha && self.max_over_mean >= t.max_over_mean {
            Verdict::Biased
        } else {
            Verdict::Balanced
        }
    }
}

/// Counts how `keys` spread over the partitions of `spec`.
pub fn predict<K: AsRef<[u8]>>(
    spec: &PartitionSpec,
    keys: impl IntoIterator<Item = K>,
) -> Result<Distribution> {
    let f = PartitionFn::new(spec.clone())?;
    let mut counts = vec![0u64; f.partitions() as usize];
    for k in keys {
        counts[f.partition_of(k.as_ref()) as usize] += 1;
    }
    Ok(Distribution::from_counts(counts))
}

/// Where a sample of keys came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleInfo {
    /// Keys in the sample.
    pub keys: u64,
    /// What the sample is worth to the χ² test: the keys, discounted for unequal weights
    /// (see [`predict_weighted`]). Equals `keys` for a plain, unweighted sample.
    pub effective_keys: f64,
    /// Distinct index keys seen before sampling down.
    pub population: u64,
    /// Tables whose indexes were read.
    pub tables: u64,
}

/// A candidate function judged on a sample of the existing keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub spec: PartitionSpec,
    pub sample: SampleInfo,
    pub distribution: Distribution,
    pub thresholds: Thresholds,
    pub verdict: Verdict,
}

/// Judges `spec` on the given keys.
pub fn analyze_keys<K: AsRef<[u8]>>(
    spec: &PartitionSpec,
    keys: impl IntoIterator<Item = K>,
    sample: SampleInfo,
    thresholds: Thresholds,
) -> Result<Analysis> {
    let distribution = predict(spec, keys)?;
    let verdict = distribution.verdict(&thresholds);
    Ok(Analysis {
        spec: spec.clone(),
        sample,
        distribution,
        thresholds,
        verdict,
    })
}

/// Counts how `keys` spread over the partitions of `spec`, each key standing for `weight`
/// entries, and the sample's effective size.
///
/// An index key stands for its whole block: the block's `weight` entries land, in the
/// prediction, wherever that one key lands. Unequal weights therefore carry less
/// information than as many equal ones, and the counts handed to the χ² test are rescaled
/// to Kish's effective sample size `(Σw)² / Σw²`, not to the number of keys. (Scaled to the
/// number of keys, a sample mixing big compacted tables with the small tables a rollback
/// leaves behind made a fair hash look biased: p ≈ 1e-4 on 427 keys.)
pub fn predict_weighted<K: AsRef<[u8]>>(
    spec: &PartitionSpec,
    keys: &[K],
    weights: &[f64],
) -> Result<(Distribution, f64)> {
    if keys.len() != weights.len() {
        return Err(sluice::Error::InvalidOption {
            name: "weights",
            reason: format!("{} weights for {} keys", weights.len(), keys.len()),
        });
    }
    let f = PartitionFn::new(spec.clone())?;
    let mut w = vec![0f64; f.partitions() as usize];
    let mut sum_sq = 0f64;
    let mut occupied = vec![false; f.partitions() as usize];
    // A weight that is not a finite, positive number counts for nothing; the rest are
    // divided by the largest (the effective size does not depend on scale, and huge weights
    // would overflow their squares).
    let clean = |wt: f64| if wt.is_finite() { wt.max(0.0) } else { 0.0 };
    let top = weights.iter().map(|&wt| clean(wt)).fold(0.0, f64::max);
    for (k, &wt) in keys.iter().zip(weights) {
        let p = f.partition_of(k.as_ref());
        occupied[p as usize] = true;
        let wt = if top > 0.0 { clean(wt) / top } else { 0.0 };
        w[p as usize] += wt;
        sum_sq += wt * wt;
    }
    let total: f64 = w.iter().sum();
    let n_eff = if sum_sq > 0.0 {
        total * total / sum_sq
    } else {
        0.0
    };
    let counts = w
        .iter()
        .map(|x| {
            if total > 0.0 {
                (x / total * n_eff).round() as u64
            } else {
                0
            }
        })
        .collect();
    let mut d = Distribution::from_counts(counts);
    // Judged on the keys seen, not on the rescaled counts.
    d.keys = keys.len() as u64;
    d.occupied = occupied.iter().filter(|&&o| o).count();
    Ok((d, n_eff))
}

/// Judges `spec` on a weighted key sample (see [`KeySample::weights`]); the χ² test sees the
/// sample's effective size (see [`predict_weighted`]).
pub fn analyze_sample(
    spec: &PartitionSpec,
    s: &KeySample,
    thresholds: Thresholds,
) -> Result<Analysis> {
    thresholds.validate()?;
    let mut sample = SampleInfo::of(s);
    let distribution = if s.weights.len() == s.keys.len() {
        let (d, n_eff) = predict_weighted(spec, &s.keys, &s.weights)?;
        sample.effective_keys = n_eff;
        d
    } else {
        predict(spec, &s.keys)?
    };
    let verdict = distribution.verdict(&thresholds);
    Ok(Analysis {
        spec: spec.clone(),
        sample,
        distribution,
        thresholds,
        verdict,
    })
}

/// Up to `max` existing keys of a directory, from its SSTable indexes (read-only; no data
/// block is read). Refuses directories that fail the inspection safety checks.
pub fn sample_dir(dir: &Path, max: usize) -> Result<KeySample> {
    sluice::inspect::sample_index_keys_in_dir(dir, max)
}

/// Up to `max` existing keys of an open database, from its live SSTables' indexes.
pub fn sample_db(db: &Db, max: usize) -> KeySample {
    sluice::inspect::sample_index_keys(db, max)
}

impl SampleInfo {
    /// Describes a [`KeySample`].
    pub fn of(s: &KeySample) -> SampleInfo {
        SampleInfo {
            keys: s.keys.len() as u64,
            effective_keys: s.keys.len() as f64,
            population: s.index_keys_seen,
            tables: s.tables,
        }
    }
}

/// Samples a directory's keys and judges `spec` on them.
pub fn analyze_dir(
    dir: &Path,
    spec: &PartitionSpec,
    max_sample: usize,
    thresholds: Thresholds,
) -> Result<Analysis> {
    let s = sample_dir(dir, max_sample)?;
    analyze_sample(spec, &s, thresholds)
}

/// Samples an open database's keys and judges `spec` on them.
pub fn analyze_db(
    db: &Db,
    spec: &PartitionSpec,
    max_sample: usize,
    thresholds: Thresholds,
) -> Result<Analysis> {
    let s = sample_db(db, max_sample);
    analyze_sample(spec, &s, thresholds)
}

// ---------------------------------------------------------------------------------------
// χ² survival function

/// `P(X >= x)` for `X ~ χ²(dof)`: the p-value of a χ² statistic. Equals
/// `Q(dof/2, x/2)`, the regularized upper incomplete gamma function.
pub fn chi_square_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() || dof.is_nan() || dof <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    regularized_gamma_q(dof / 2.0, x / 2.0)
}

/// `ln Γ(x)` for `x > 0` (Lanczos approximation, g = 7, n = 9; relative error ~1e-15).
#[allow(
    clippy::excessive_precision,
    reason = "the published Lanczos coefficients, kept verbatim"
)]
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_93,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_13,
        -176.615_029_162_140_59,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_571_6e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularized lower incomplete gamma function `P(a, x) = γ(a, x) / Γ(a)`.
pub fn regularized_gamma_p(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x < a + 1.0 {
        gamma_series(a, x)
    } else {
        1.0 - gamma_continued_fraction(a, x)
    }
}

/// Regularized upper incomplete gamma function `Q(a, x) = 1 - P(a, x)`, computed directly
/// in the tail so that tiny p-values keep their precision.
pub fn regularized_gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x < a + 1.0 {
        1.0 - gamma_series(a, x)
    } else {
        gamma_continued_fraction(a, x)
    }
}

const EPS: f64 = 1e-15;
const MAX_ITER: usize = 10_000;

/// `P(a, x)` by its power series (converges fast for `x < a + 1`).
fn gamma_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut sum = 1.0 / a;
    let mut del = sum;
    for _ in 0..MAX_ITER {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if del.abs() < sum.abs() * EPS {
            break;
        }
    }
    (sum.ln() - x + a * x.ln() - ln_gamma(a))
        .exp()
        .clamp(0.0, 1.0)
}

/// `Q(a, x)` by its continued fraction (modified Lentz; converges fast for `x >= a + 1`).
fn gamma_continued_fraction(a: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    ((-x + a * x.ln() - ln_gamma(a)).exp() * h).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative closeness (absolute only where the expected value is exactly zero, as
    /// ln Γ(1) and ln Γ(2) are), so tiny tail probabilities are checked digit for digit.
    fn close(a: f64, b: f64, tol: f64) -> bool {
        if b == 0.0 {
            a.abs() <= tol
        } else {
            (a - b).abs() <= tol * b.abs()
        }
    }

    #[test]
    fn ln_gamma_matches_factorials_and_half_integers() {
        let mut f = 1.0f64;
        for n in 1..30u32 {
            assert!(close(ln_gamma(n as f64), f.ln(), 1e-12), "n={n}");
            f *= n as f64;
        }
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-12
        ));
        assert!(close(ln_gamma(0.1), 2.252_712_651_734_206, 1e-12));
    }

    #[test]
    fn chi_square_survival_matches_tables() {
        // dof = 2 has the closed form exp(-x/2).
        for x in [0.1, 1.0, 5.0, 20.0, 100.0] {
            assert!(
                close(chi_square_sf(x, 2.0), (-x / 2.0f64).exp(), 1e-12),
                "x={x}"
            );
        }
        // Even dof have a closed form: exp(-x/2) * sum_{i<k} (x/2)^i / i!, k = dof/2.
        for dof in [4u32, 10, 30, 100] {
            for x in [1.0, 10.0, 50.0, 120.0] {
                let h: f64 = x / 2.0;
                let (mut term, mut sum) = (1.0f64, 0.0f64);
                for i in 0..dof / 2 {
                    if i > 0 {
                        term *= h / i as f64;
                    }
                    sum += term;
                }
                let exact = (-h).exp() * sum;
                let got = chi_square_sf(x, dof as f64);
                assert!(
                    (got - exact).abs() <= 1e-12 * exact.max(1e-300) + 1e-300,
                    "dof={dof} x={x}: {got} vs {exact}"
                );
            }
        }
        // Critical values at the 5% and 0.1% levels (inverse survival function, 16 digits).
        for (x, dof, p) in [
            (3.841_458_820_694_124, 1.0, 0.05),
            (18.307_038_053_275_146, 10.0, 0.05),
            (124.342_113_404_817_6, 100.0, 0.05),
            (10.827_566_170_662_733, 1.0, 0.001),
            (37.697_298_218_353_82, 15.0, 0.001),
        ] {
            let got = chi_square_sf(x, dof);
            assert!(close(got, p, 1e-8), "x={x} dof={dof}: {got}");
        }
        assert_eq!(chi_square_sf(0.0, 5.0), 1.0);
        assert!(chi_square_sf(1e6, 15.0) < 1e-300);
        assert!(chi_square_sf(1.0, 0.0).is_nan());
        // P + Q = 1 on both sides of the series/fraction switch.
        for (a, x) in [(3.0, 1.0), (3.0, 8.0), (50.0, 49.0), (50.0, 52.0)] {
            assert!(close(
                regularized_gamma_p(a, x) + regularized_gamma_q(a, x),
                1.0,
                1e-12
            ));
        }
    }

    #[test]
    fn distribution_statistics() {
        let d = Distribution::from_counts(vec![10, 10, 10, 10]);
        assert_eq!(d.total, 40);
        assert_eq!(d.max_over_mean, 1.0);
        assert_eq!(d.chi_square, 0.0);
        assert_eq!(d.p_value, 1.0);
        assert_eq!(d.verdict(&Thresholds::default()), Verdict::Balanced);

        let d = Distribution::from_counts(vec![70, 10, 10, 10]);
        assert_eq!(d.max_over_mean, 2.8);
        assert!((d.chi_square - 108.0).abs() < 1e-9);
        assert_eq!(d.degrees_of_freedom, 3);
        assert!(d.p_value < 1e-20);
        assert_eq!(d.hottest(2), vec![(0, 70, 0.7), (1, 10, 0.1)]);
        assert_eq!(d.verdict(&Thresholds::default()), Verdict::Biased);

        let empty = Distribution::from_counts(vec![0; 8]);
        assert_eq!(empty.p_value, 1.0);
        assert_eq!(empty.verdict(&Thresholds::default()), Verdict::Inconclusive);
        assert!(empty.hottest(3).is_empty());
        assert_eq!(
            Distribution::from_counts(vec![5]).verdict(&Thresholds::default()),
            Verdict::Balanced
        );
    }

    #[test]
    fn small_skews_need_both_significance_and_size() {
        // 2% over the mean on a million keys: significant, but not worth refusing.
        let mut c = vec![62_500u64; 16];
        c[0] = 63_750;
        c[1] = 61_250;
        let d = Distribution::from_counts(c);
        assert!(d.p_value < 0.001);
        assert_eq!(d.verdict(&Thresholds::default()), Verdict::Balanced);
        // A large ratio on a handful of keys is noise, not evidence.
        let d = Distribution::from_counts(vec![3, 1, 0, 1, 0, 2, 1, 0]);
        assert_eq!(d.verdict(&Thresholds::default()), Verdict::Inconclusive);
        // But everything in one partition is bias.
        let d = Distribution::from_counts(vec![0, 9, 0, 0]);
        assert_eq!(d.verdict(&Thresholds::default()), Verdict::Biased);
    }

    #[test]
    fn fair_hash_is_balanced_and_prefix_hash_is_biased() {
        let keys: Vec<Vec<u8>> = (0..50_000u32)
            .map(|i| format!("acct{i:08}").into_bytes())
            .collect();
        let t = Thresholds::default();
        for seed in 0..5 {
            let spec = PartitionSpec::Hash {
                partitions: 16,
                seed,
                hashed_prefix: None,
            };
            let d = predict(&spec, &keys).unwrap();
            assert_eq!(d.verdict(&t), Verdict::Balanced, "seed {seed}: {d:?}");
            assert!(d.p_value > 1e-4);
        }
        // The ledger's bug: a prefix that covers more than the constant part is still
        // skewed when the varying part has few values.
        let keys2: Vec<Vec<u8>> = (0..50_000u32)
            .map(|i| format!("{}-{i:08}", ["eu", "us", "ap"][(i % 3) as usize]).into_bytes())
            .collect();
        let d = predict(&PartitionSpec::parse("hash:16:7:4").unwrap(), &keys2).unwrap();
        assert_eq!(d.verdict(&t), Verdict::Biased);
        assert!(d.empty_partitions() >= 10);
    }

    #[test]
    fn analyze_a_directory_from_index_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        let db = Db::open(
            &dir,
            sluice::Options {
                block_size: 256,
                ..sluice::Options::default()
            },
        )
        .unwrap();
        for i in 0..20_000u32 {
            db.put(format!("acct{i:08}"), "balance").unwrap();
        }
        db.flush().unwrap();
        let good = PartitionSpec::parse("hash:8:1").unwrap();
        let bad = PartitionSpec::parse("hash:8:1:4").unwrap();
        let a = analyze_db(&db, &good, DEFAULT_SAMPLE, Thresholds::default()).unwrap();
        assert_eq!(a.verdict, Verdict::Balanced, "{a:?}");
        assert!(a.sample.keys > 100);
        db.close().unwrap();
        let a = analyze_dir(&dir, &bad, DEFAULT_SAMPLE, Thresholds::default()).unwrap();
        assert_eq!(a.verdict, Verdict::Biased);
        assert_eq!(a.distribution.max_share(), 1.0);
        let small = analyze_dir(&dir, &good, 10, Thresholds::default()).unwrap();
        assert_eq!(small.sample.keys, 10);
        assert_eq!(small.verdict, Verdict::Inconclusive);
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    /// 20,000 keys spread by the base `hash:8:7` (~2,500 in each partition), plus `extra`
    /// more that it sends to partition 1.
    fn keys(extra: usize) -> Vec<Vec<u8>> {
        let base = PartitionFn::new(PartitionSpec::hashed(8, 7)).unwrap();
        let mut keys: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| format!("acct:{i:06}").into_bytes())
            .collect();
        keys.extend(
            (0u32..)
                .map(|i| format!("hot:{i:06}").into_bytes())
                .filter(|k| base.partition_of(k) == 1)
                .take(extra),
        );
        keys
    }

    fn verdict(spec: &PartitionSpec, keys: &[Vec<u8>]) -> (Verdict, f64) {
        let a = analyze_keys(spec, keys, SampleInfo::default(), Thresholds::default()).unwrap();
        (a.verdict, a.distribution.max_over_mean)
    }

    /// A split is judged as any function is, against an even spread over all its
    /// partitions: splitting the partition that holds too much evens the layout out and
    /// passes the gate; splitting one that holds its fair share leaves the others at
    /// `into` times the new sub-partitions, which is uneven, and is reported as such
    /// (`Controller::split_hot_partition` plans past the gate either way).
    #[test]
    fn a_split_is_judged_against_an_even_spread_over_all_its_partitions() {
        let base = PartitionSpec::hashed(8, 7);
        let hot_split = PartitionSpec::split(base.clone(), 1, 4);
        // Partition 1 holds ~4 times its share: ~36% of the keys.
        let hot = keys(7_500);
        let (v, m) = verdict(&base, &hot);
        assert_eq!(v, Verdict::Biased, "the hot base: max/mean {m:.2}");
        let (v, m) = verdict(&hot_split, &hot);
        assert_eq!(
            v,
            Verdict::Balanced,
            "the hot partition split: max/mean {m:.2}"
        );
        // Even keys: the base is balanced, and a split of any one partition is not.
        let even = keys(0);
        let (v, m) = verdict(&base, &even);
        assert_eq!(v, Verdict::Balanced, "the even base: max/mean {m:.2}");
        let (v, m) = verdict(&hot_split, &even);
        assert_eq!(
            v,
            Verdict::Biased,
            "a fair partition split: max/mean {m:.2}"
        );
    }
}

#[cfg(test)]
mod weighting_tests {
    use super::*;
    use sluice::Options;

    fn fair() -> PartitionSpec {
        PartitionSpec::Hash {
            partitions: 16,
            seed: 43,
            hashed_prefix: None,
        }
    }

    /// With equal weights the effective size is the number of keys and the prediction is
    /// the plain one.
    #[test]
    fn equal_weights_are_a_plain_sample() {
        let keys: Vec<String> = (0..5_000).map(|i| format!("acct{i:08}")).collect();
        let (d, n_eff) = predict_weighted(&fair(), &keys, &vec![37.0; keys.len()]).unwrap();
        assert!((n_eff - 5_000.0).abs() < 1e-6, "{n_eff}");
        assert_eq!(d, predict(&fair(), &keys).unwrap());
    }

    /// Heavy keys (big blocks) among many light ones: the χ² test must see the sample at
    /// its effective size. A fair hash stays balanced there (scaled to the number of keys,
    /// the old rule, it was called biased), and a prefix hash is still caught.
    #[test]
    fn a_few_heavy_keys_are_worth_a_few_keys() {
        let n = 4_400u32;
        let keys: Vec<String> = (0..n)
            .map(|i| format!("acct:{:02}-{i:07}", i % 40))
            .collect();
        // 400 keys standing for 50 entries each, 4,000 for one each: (Σw)²/Σw² ≈ 573.7.
        let weights: Vec<f64> = (0..n)
            .map(|i| if i % 11 == 0 { 50.0 } else { 1.0 })
            .collect();
        let (d, n_eff) = predict_weighted(&fair(), &keys, &weights).unwrap();
        assert!((n_eff - 573.7).abs() < 0.5, "{n_eff}");
        assert!(d.mean >= Thresholds::default().min_expected, "{d:?}");
        assert_eq!(
            d.verdict(&Thresholds::default()),
            Verdict::Balanced,
            "{d:?}"
        );
        let scaled: Vec<u64> = d
            .counts
            .iter()
            .map(|&c| (c as f64 * f64::from(n) / d.total as f64).round() as u64)
            .collect();
        let old = Distribution::from_counts(scaled);
        assert_eq!(
            old.verdict(&Thresholds::default()),
            Verdict::Biased,
            "{old:?}"
        );
        // Hashing only "acct:BB" (40 branches onto 16 partitions) is caught at that size.
        let prefix = PartitionSpec::Hash {
            partitions: 16,
            seed: 43,
            hashed_prefix: Some(7),
        };
        let (d, _) = predict_weighted(&prefix, &keys, &weights).unwrap();
        assert_eq!(d.verdict(&Thresholds::default()), Verdict::Biased, "{d:?}");
    }

    /// Too few keys per partition for χ² can still show bias: a prefix hash onto 4096
    /// partitions fills at most 40 of them (one per branch) where a fair one fills ~1,600.
    #[test]
    fn a_prefix_hash_into_many_partitions_is_biased_on_a_small_sample() {
        let keys: Vec<String> = (0..2_000u32)
            .map(|i| format!("acct:{:02}-{i:07}", i % 40))
            .collect();
        let t = Thresholds::default();
        let spec = |prefix| PartitionSpec::Hash {
            partitions: 4096,
            seed: 42,
            hashed_prefix: prefix,
        };
        let biased = predict(&spec(Some(7)), &keys).unwrap();
        assert!(biased.mean < t.min_expected, "{}", biased.mean);
        assert!(biased.occupied <= 40, "{}", biased.occupied);
        assert_eq!(biased.verdict(&t), Verdict::Biased);
        let fair = predict(&spec(None), &keys).unwrap();
        assert_eq!(fair.verdict(&t), Verdict::Inconclusive, "{}", fair.occupied);
    }

    /// The occupancy rule does not call fair functions biased: many seeds, partition counts
    /// and small sample sizes.
    #[test]
    fn occupancy_rule_spares_fair_functions() {
        let t = Thresholds::default();
        for partitions in [16u32, 256, 4096] {
            for n in [8u32, 20, 50, 200, 1_000] {
                let keys: Vec<String> = (0..n).map(|i| format!("key{i:08}")).collect();
                for seed in 0..100u64 {
                    let spec = PartitionSpec::Hash {
                        partitions,
                        seed,
                        hashed_prefix: None,
                    };
                    let d = predict(&spec, &keys).unwrap();
                    assert_ne!(
                        d.verdict(&t),
                        Verdict::Biased,
                        "P={partitions} n={n} seed={seed}: {} hit",
                        d.occupied
                    );
                }
            }
        }
    }

    /// Every key in one partition is bias however few keys the weights leave effective.
    #[test]
    fn one_partition_is_biased_whatever_the_weights() {
        let prefix = PartitionSpec::Hash {
            partitions: 16,
            seed: 43,
            hashed_prefix: Some(4),
        };
        let keys: Vec<String> = (0..10).map(|i| format!("acct{i:08}")).collect();
        let weights = [1000.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let (d, n_eff) = predict_weighted(&prefix, &keys, &weights).unwrap();
        assert!(n_eff < 2.0, "{n_eff}");
        assert_eq!(d.verdict(&Thresholds::default()), Verdict::Biased, "{d:?}");
        // Scale does not matter, and absurd weights are no panic and no NaN.
        let huge: Vec<f64> = weights.iter().map(|w| w * 1e300).collect();
        assert!((predict_weighted(&prefix, &keys, &huge).unwrap().1 - n_eff).abs() < 1e-9);
        let bad = [
            f64::NAN,
            f64::INFINITY,
            -1.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            1.0,
        ];
        let (_, n) = predict_weighted(&prefix, &keys, &bad).unwrap();
        assert_eq!(n, 1.0);
        assert!(predict_weighted(&prefix, &keys, &weights[..9]).is_err());
        let (d, _) = predict_weighted(&prefix, &keys[..7], &weights[..7]).unwrap();
        assert_ne!(d.verdict(&Thresholds::default()), Verdict::Biased, "{d:?}");
    }

    /// Partitions split into many small files contribute more index keys per entry than
    /// compacted ones; the weights must cancel that, or an even function looks biased.
    #[test]
    fn fragmented_partitions_do_not_look_bigger() {
        let dir = tempfile::tempdir().unwrap();
        let spec = PartitionSpec::Hash {
            partitions: 8,
            seed: 5,
            hashed_prefix: None,
        };
        let opts = Options {
            partition: spec.clone(),
            block_size: 512,
            level0_compaction_trigger: 1000,
            level0_slowdown_trigger: 1000,
            level0_stop_trigger: 1000,
            migration_bytes_per_sec: 0,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).unwrap();
        let f = PartitionFn::new(spec.clone()).unwrap();
        for i in 0..20_000u32 {
            db.put(format!("key{i:06}"), [b'v'; 40]).unwrap();
        }
        db.compact().unwrap();
        // Overwrite a few keys of partitions 4..8 at a time, flushing after each: many
        // tiny files there, one partial block each.
        let hot: Vec<String> = (0..20_000u32)
            .map(|i| format!("key{i:06}"))
            .filter(|k| f.partition_of(k.as_bytes()) >= 4)
            .collect();
        for chunk in hot.chunks(2).take(700) {
            for k in chunk {
                db.put(k, [b'w'; 40]).unwrap();
            }
            db.flush().unwrap();
        }
        let s = sample_db(&db, 100_000);
        let unweighted = predict(&spec, &s.keys).unwrap();
        let weighted = analyze_sample(&spec, &s, Thresholds::default()).unwrap();
        assert_eq!(
            unweighted.verdict(&Thresholds::default()),
            Verdict::Biased,
            "the setup must fool an unweighted sample: {unweighted:?}"
        );
        assert_eq!(
            weighted.verdict,
            Verdict::Balanced,
            "{:?}",
            weighted.distribution
        );
    }
}
