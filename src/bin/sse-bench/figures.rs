//! Figures of the report: rounding and latency percentiles.

use serde_json::{json, Value};

/// Rounds to three decimals: the JSON line carries no false precision.
pub(crate) fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of a sorted slice.
pub(crate) fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary of microsecond samples, in ms.
pub(crate) fn lat_json(samples: &mut [u64]) -> Value {
    samples.sort_unstable();
    let ms = |us: u64| r3(us as f64 / 1000.0);
    json!({
        "count": samples.len(),
        "p50_ms": ms(pct(samples, 50.0)),
        "p90_ms": ms(pct(samples, 90.0)),
        "p99_ms": ms(pct(samples, 99.0)),
        "max_ms": ms(samples.last().copied().unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 50.0), 50);
        assert_eq!(pct(&v, 99.0), 99);
        assert_eq!(pct(&v, 100.0), 100);
        assert_eq!(pct(&[], 50.0), 0);
        // nearest rank: never below the smallest sample
        assert_eq!(pct(&[7], 0.0), 7);
        assert_eq!(pct(&[1, 2, 3], 50.0), 2);
    }

    #[test]
    fn latency_summary_sorts_and_converts_to_ms() {
        // 10 samples in µs, out of order
        let mut us = vec![9000, 1000, 5000, 3000, 7000, 2000, 10000, 4000, 8000, 6000];
        let v = lat_json(&mut us);
        assert_eq!(v["count"], 10);
        assert_eq!(v["p50_ms"].as_f64(), Some(5.0));
        assert_eq!(v["p90_ms"].as_f64(), Some(9.0));
        assert_eq!(v["p99_ms"].as_f64(), Some(10.0));
        assert_eq!(v["max_ms"].as_f64(), Some(10.0));
        // sub-millisecond samples keep their µs, to three decimals
        assert_eq!(lat_json(&mut [1234])["p50_ms"].as_f64(), Some(1.234));
        let empty = lat_json(&mut []);
        assert_eq!(empty["count"], 0);
        assert_eq!(empty["max_ms"].as_f64(), Some(0.0));
    }
}
