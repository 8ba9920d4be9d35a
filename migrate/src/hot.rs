//! Hot partitions: which partitions take far more than their share of traffic.

use sluice::{Error, LoadStats, Result};

/// Partitions whose share of operations is at least `factor` times the mean share,
/// hottest first. `factor` must be a number of at least 1: below the mean share, a
/// partition with no traffic at all would be "hot".
pub fn hot_partitions(load: &LoadStats, factor: f64) -> Result<Vec<u32>> {
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(Error::InvalidOption {
            name: "factor",
            reason: format!(
                "a hot partition's factor over the mean share must be ≥ 1, not {factor}"
            ),
        });
    }
    let shares = load.shares();
    if shares.is_empty() || shares.iter().sum::<f64>() == 0.0 {
        return Ok(Vec::new());
    }
    let mean = 1.0 / shares.len() as f64;
    let mut hot: Vec<(u32, f64)> = shares
        .iter()
        .enumerate()
        .filter(|(_, &s)| s >= factor * mean)
        .map(|(i, &s)| (i as u32, s))
        .collect();
    hot.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(hot.into_iter().map(|(i, _)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::PartitionSpec;

    #[test]
    fn finds_the_hot_one() {
        let load = LoadStats {
            version: None,
            spec: PartitionSpec::default(),
            reads: vec![10, 10, 500, 10],
            writes: vec![10, 10, 100, 10],
            write_bytes: vec![0; 4],
            elapsed: Default::default(),
        };
        assert_eq!(hot_partitions(&load, 2.0).unwrap(), vec![2]);
        assert!(hot_partitions(&load, 4.0).unwrap().is_empty());
        // Below the mean share every partition is "hot", the one with no traffic too.
        for factor in [0.0, 0.5, -1.0, f64::NAN, f64::INFINITY] {
            assert!(hot_partitions(&load, factor).is_err(), "{factor}");
        }
    }
}
