//! Percentiles and medians of measurements.

use serde::Serialize;

/// The value at percentile `p` (0 < p <= 100) of ascending `sorted` values,
/// by the nearest-rank method: the smallest value such that at least `p`
/// percent of the values are at or below it. `None` for no values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied()
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The latency figures of a run, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl LatencySummary {
    /// Summarises latencies in microseconds (in any order); `None` for none.
    pub fn of(mut latencies_us: Vec<u64>) -> Option<Self> {
        latencies_us.sort_unstable();
        let at = |p| percentile(&latencies_us, p);
        let sum: u128 = latencies_us.iter().map(|&v| u128::from(v)).sum();
        Some(LatencySummary {
            count: latencies_us.len(),
            p50_us: at(50.0)?,
            p90_us: at(90.0)?,
            p99_us: at(99.0)?,
            p999_us: at(99.9)?,
            max_us: *latencies_us.last()?,
            mean_us: sum as f64 / latencies_us.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 90.0), Some(90));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 99.9), Some(100));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        // Ten values: p99 is the largest, p50 the fifth.
        let ten = [10, 20, 30, 40, 50, 60, 70, 80, 90, 1000];
        assert_eq!(percentile(&ten, 50.0), Some(50));
        assert_eq!(percentile(&ten, 99.0), Some(1000));
    }

    #[test]
    fn summary_sorts_its_input() {
        let s = LatencySummary::of(vec![5, 1, 4, 2, 3]).unwrap();
        assert_eq!((s.count, s.p50_us, s.p90_us, s.max_us), (5, 3, 5, 5));
        assert_eq!(s.mean_us, 3.0);
        assert_eq!(LatencySummary::of(Vec::new()), None);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
