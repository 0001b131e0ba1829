//! Latency summaries (median, p95 and mean of repeated measurements), shared by the
//! server's telemetry and the benchmarks. Pure arithmetic: no clocks, no I/O.

use serde::{Deserialize, Serialize};

/// Latency summary of repeated measurements, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LatencyStats {
    pub count: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
}

impl LatencyStats {
    pub fn of(samples: &[f64]) -> LatencyStats {
        if samples.is_empty() {
            return LatencyStats::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        LatencyStats {
            count: sorted.len(),
            median_ms: percentile(&sorted, 50.0),
            p95_ms: percentile(&sorted, 95.0),
            mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// Linear-interpolated percentile of sorted samples (numpy's default).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_interpolated_percentiles() {
        let s = LatencyStats::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(s.count, 5);
        assert_eq!(s.median_ms, 3.0);
        assert!((s.p95_ms - 4.8).abs() < 1e-12);
        assert_eq!(s.mean_ms, 3.0);
        assert_eq!(LatencyStats::of(&[]).count, 0);
    }
}
