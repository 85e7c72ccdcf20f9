//! A token bucket driven by caller-supplied time, for flood limits.

use std::time::Instant;

/// Allows `rate` events per second with bursts of `burst`.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    rate: u64,
    burst_micro: u64,
    tokens_micro: u64,
    last: Option<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(rate: u64, burst: u64) -> RateLimiter {
        let burst_micro = burst.max(1).saturating_mul(1_000_000);
        RateLimiter {
            rate,
            burst_micro,
            tokens_micro: burst_micro,
            last: None,
        }
    }

    /// Takes one token at `now`; `false` when the bucket is empty.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let micros = now.saturating_duration_since(last).as_micros();
            let refill = micros.saturating_mul(u128::from(self.rate));
            let refill = u64::try_from(refill).unwrap_or(u64::MAX);
            self.tokens_micro = self
                .tokens_micro
                .saturating_add(refill)
                .min(self.burst_micro);
        }
        self.last = Some(now);
        if self.tokens_micro >= 1_000_000 {
            self.tokens_micro -= 1_000_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(2, 3);
        assert!((0..3).all(|_| r.allow(t0)));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(500)));
        assert!(!r.allow(t0 + Duration::from_millis(500)));
    }
}
