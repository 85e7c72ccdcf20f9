//! Capped exponential backoff with jitter, reset after a healthy session.

use std::time::Duration;

use rand::Rng;

/// Delays between reconnect attempts: doubling from `min` to `max`, each drawn uniformly
/// from its upper half so that many agents restarting together do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(20));
        let cap = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let lo = cap / 2;
        let span = (cap - lo).as_millis() as u64;
        lo + Duration::from_millis(rand::rng().random_range(0..=span))
    }

    /// Straight to the longest delay (after a permanent error, which retrying soon cannot cure).
    pub fn exhaust(&mut self) {
        self.attempt = 32;
    }

    /// Back to the shortest delay (after a session that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(500) && d[0] <= Duration::from_secs(1));
        assert!(d[3] >= Duration::from_secs(4) && d[3] <= Duration::from_secs(8));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(60)));
        assert!(d[9] >= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        b.exhaust();
        assert!(b.next_delay() >= Duration::from_secs(30));
    }
}
