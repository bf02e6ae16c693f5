//! Latency summaries: median and nearest-rank percentiles, as docs/benchmarks.md defines them.

use std::time::Duration;

/// Summary of a sample of durations, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    /// The middle value (mean of the two middle values for an even `n`).
    pub median: f64,
    /// Nearest rank: the smallest value with at least 99 % of the sample at or below it.
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(sample: &[Duration]) -> Option<Self> {
        let mut ms: Vec<f64> = sample.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Some(Self {
            n,
            min: ms[0],
            median,
            p99: nearest_rank(&ms, 0.99),
            max: ms[n - 1],
            mean: ms.iter().sum::<f64>() / n as f64,
        })
    }
}

/// Nearest-rank percentile `p` (0 < p ≤ 1) of an ascending, non-empty slice.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // Integer arithmetic on per-mille so that 0.99 × 100 is exactly rank 99.
    let per_mille = (p * 1000.0).round() as usize;
    let rank = (n * per_mille).div_ceil(1000).clamp(1, n);
    sorted[rank - 1]
}

/// Median of plain numbers (Gbit/s samples); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Summary::of(&ms(&(1..=100).collect::<Vec<_>>())).unwrap();
        assert_eq!(s.median, 50.5);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        let s = Summary::of(&ms(&(1..=50).collect::<Vec<_>>())).unwrap();
        assert_eq!(s.p99, 50.0, "with n = 50 the p99 is the maximum");
        let s = Summary::of(&ms(&(1..=1000).collect::<Vec<_>>())).unwrap();
        assert_eq!(s.p99, 990.0);
        let s = Summary::of(&ms(&[3, 1, 2])).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert!(Summary::of(&[]).is_none());
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
    }
}
