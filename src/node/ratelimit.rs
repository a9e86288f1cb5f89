//! The node's connect-rate cap (`limits.max_connect_rate`): a token bucket
//! holding one second's worth of connects, so that a reconnect storm after
//! another node's restart is spread out instead of landing on Redis at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct ConnectLimiter {
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Default for ConnectLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectLimiter {
    pub(crate) fn new() -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: f64::MAX,
                last: Instant::now(),
            }),
        }
    }

    /// Takes one connect at `rate` per second (0: no cap); when refused,
    /// says how long until one is available.
    pub(crate) fn try_acquire(&self, rate: u64) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let rate = rate as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * rate;
        // The cap can change on reload: never hold more than one second.
        b.tokens = (b.tokens.min(rate) + refill).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// How far to spread the reconnects of `n` streams closed at once: at
/// least `retry_ms`, long enough for `n` connects at `rate` per second, and
/// at most a minute.
pub(crate) fn reconnect_spread_ms(n: usize, retry_ms: u64, rate: u64) -> u64 {
    let rate = if rate == 0 { 1000 } else { rate };
    let needed = (n as u64).saturating_mul(1000) / rate;
    needed.max(retry_ms).min(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_second_then_refuses() {
        let l = ConnectLimiter::new();
        for _ in 0..100 {
            assert!(l.try_acquire(100).is_ok());
        }
        let wait = l.try_acquire(100).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        assert!(l.try_acquire(0).is_ok(), "0 disables the cap");
    }

    #[test]
    fn spread_grows_with_the_crowd() {
        assert_eq!(reconnect_spread_ms(10, 3000, 5000), 3000);
        assert_eq!(reconnect_spread_ms(100_000, 3000, 5000), 20_000);
        assert_eq!(reconnect_spread_ms(10_000_000, 3000, 5000), 60_000);
    }
}
