//! Latency samples and percentiles.

use std::time::Duration;

/// Latencies of one measurement, in microseconds.
#[derive(Default, Debug, Clone)]
pub struct Samples {
    us: Vec<f64>,
    sorted: bool,
}

impl Samples {
    /// Record one latency.
    pub fn add(&mut self, d: Duration) {
        self.us.push(d.as_secs_f64() * 1e6);
        self.sorted = false;
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.us.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.us.is_empty()
    }

    /// The `p`-quantile (0..=1), nearest rank; 0 without samples.
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.us.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.us.sort_by(f64::total_cmp);
            self.sorted = true;
        }
        let n = self.us.len();
        // Nearest rank, found by counting instead of casting a float.
        let target = p.clamp(0.0, 1.0) * (n - 1) as f64;
        let i = (0..n).find(|&i| i as f64 + 0.5 > target).unwrap_or(n - 1);
        self.us[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Samples::default();
        for i in 1..=100u64 {
            s.add(Duration::from_micros(i));
        }
        assert!((s.pct(0.5) - 51.0).abs() < 1.01);
        assert!((s.pct(0.99) - 99.0).abs() < 1.01);
        assert!((s.pct(1.0) - 100.0).abs() < 0.01);
        assert_eq!(Samples::default().pct(0.5), 0.0);
    }
}
