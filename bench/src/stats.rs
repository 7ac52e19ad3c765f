//! Summaries of repeated measurements: median and p90 (nearest rank), never the mean,
//! because container start-up times have a long tail that would drag a mean around.

use std::time::Duration;

/// The summary of one variant's samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
}

impl Summary {
    /// Summarises samples in any unit; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            p90: s[nearest_rank(n, 0.9)],
        })
    }

    /// Summarises durations in milliseconds.
    pub fn of_ms(samples: &[Duration]) -> Option<Summary> {
        Self::of(&samples.iter().map(ms).collect::<Vec<_>>())
    }
}

/// Index of the nearest-rank percentile `q` (0..=1) in a sorted slice of `n` values.
fn nearest_rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n) - 1
}

pub fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Mebibytes per second.
pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
        assert_eq!(s.median, 5.5);
        assert_eq!(s.p90, 9.0);
        let one = Summary::of(&[42.0]).unwrap();
        assert_eq!((one.median, one.p90), (42.0, 42.0));
        assert!(Summary::of(&[]).is_none());
    }
}
