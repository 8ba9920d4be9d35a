//! The analysis gate: predicts how the existing keys spread over a candidate function's
//! partitions, from a weighted key sample, and measures the imbalance.

use sluice::{PartitionFn, PartitionSpec, Result};

/// Predicted spread of the existing keys under a candidate function.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub partitions: u32,
    /// Predicted share of the keys per partition.
    pub shares: Vec<f64>,
    /// Largest share over the mean share (1.0 = perfectly even).
    pub max_over_mean: f64,
    /// Pearson chi-square statistic of the sampled counts against an even spread.
    pub chi2: f64,
    /// Probability of a spread at least this uneven if the function were unbiased.
    pub p_value: f64,
    pub sampled_keys: usize,
}

/// Predicts the spread of `sample` (keys with the number of entries each stands for).
pub fn predict(sample: &[(bytes::Bytes, u64)], spec: &PartitionSpec) -> Result<Prediction> {
    let f = PartitionFn::new(spec.clone())?;
    let n = f.partitions() as usize;
    let mut weight = vec![0f64; n];
    let mut count = vec![0u64; n];
    for (k, w) in sample {
        let p = f.partition_of(k) as usize;
        weight[p] += *w as f64;
        count[p] += 1;
    }
    let total: f64 = weight.iter().sum();
    let shares: Vec<f64> = weight
        .iter()
        .map(|w| if total > 0.0 { w / total } else { 0.0 })
        .collect();
    let max_over_mean = if total > 0.0 {
        shares.iter().cloned().fold(0.0, f64::max) * n as f64
    } else {
        1.0
    };
    let keys: u64 = count.iter().sum();
    let expected = keys as f64 / n as f64;
    let chi2 = if expected > 0.0 {
        count
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    } else {
        0.0
    };
    let p_value = if n > 1 && keys > 0 {
        chi2_survival(chi2, (n - 1) as f64)
    } else {
        1.0
    };
    Ok(Prediction {
        partitions: n as u32,
        shares,
        max_over_mean,
        chi2,
        p_value,
        sampled_keys: sample.len(),
    })
}

/// P(X >= x) for X ~ chi-square with `df` degrees of freedom.
pub fn chi2_survival(x: f64, df: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(df / 2.0, x / 2.0)
}

/// Regularized upper incomplete gamma Q(a, x), by series for x < a + 1 and by continued
/// fraction otherwise.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x < a + 1.0 {
        1.0 - gamma_p_series(a, x)
    } else {
        gamma_q_fraction(a, x)
    }
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos approximation (g = 7, n = 9).
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut sum = 1.0 / a;
    let mut term = sum;
    let mut ap = a;
    for _ in 0..1000 {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() < sum.abs() * 1e-15 {
            break;
        }
    }
    (sum.ln() - x + a * x.ln() - ln_gamma(a))
        .exp()
        .clamp(0.0, 1.0)
}

fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..1000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    ((-x + a * x.ln() - ln_gamma(a)).exp() * h).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2_survival_matches_tables() {
        // Critical values: P(X >= 3.841 | df 1) = 0.05, P(X >= 18.307 | df 10) = 0.05,
        // P(X >= 23.209 | df 10) = 0.01.
        assert!((chi2_survival(3.841, 1.0) - 0.05).abs() < 1e-3);
        assert!((chi2_survival(18.307, 10.0) - 0.05).abs() < 1e-3);
        assert!((chi2_survival(23.209, 10.0) - 0.01).abs() < 1e-3);
        assert_eq!(chi2_survival(0.0, 5.0), 1.0);
        assert!(chi2_survival(1e4, 15.0) < 1e-100);
    }

    #[test]
    fn prefix_hash_is_flagged_and_full_hash_is_not() {
        let sample: Vec<(bytes::Bytes, u64)> = (0..20_000u32)
            .map(|i| (bytes::Bytes::from(format!("acct:{i:08}")), 10))
            .collect();
        let good = predict(
            &sample,
            &PartitionSpec::Hash {
                partitions: 16,
                seed: 1,
                hashed_prefix: None,
            },
        )
        .unwrap();
        assert!(good.max_over_mean < 1.1, "{good:?}");
        assert!(good.p_value > 0.001, "{good:?}");
        let biased = predict(
            &sample,
            &PartitionSpec::Hash {
                partitions: 16,
                seed: 1,
                hashed_prefix: Some(9),
            },
        )
        .unwrap();
        assert!(biased.max_over_mean > 1.5, "{biased:?}");
        assert!(biased.p_value < 1e-6, "{biased:?}");
        assert!((biased.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
