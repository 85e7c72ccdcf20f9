//! Services a connection could not register yet. A refusal that may pass (a port taken
//! for now, a server whose database is down) leaves the connection up with the services
//! that did register; the others are asked again on that connection with capped, jittered
//! backoff (1 s doubling to 30 s), one at a time, until the server takes them. A refusal
//! that cannot pass (see [`Failure::register`]) ends the attempt as before.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Backoff, Failure, FailureKind, ServiceSpec};

/// First delay before asking again.
pub(crate) const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(30);

/// What to do after the server refused the service in flight.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Asked again after this delay.
    Retry(Duration),
    /// Retrying cannot help: the connection ends with this failure.
    Permanent(Failure),
}

/// The registration retry state of one connection.
#[derive(Debug)]
pub(crate) struct PendingRegistrations {
    waiting: VecDeque<ServiceSpec>,
    in_flight: Option<ServiceSpec>,
    backoff: Backoff,
    next_at: Option<Instant>,
}

impl PendingRegistrations {
    /// Nothing to register.
    pub(crate) fn none() -> PendingRegistrations {
        PendingRegistrations {
            waiting: VecDeque::new(),
            in_flight: None,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            next_at: None,
        }
    }

    /// `svc` was refused transiently while connecting: it is asked again after a backoff.
    pub(crate) fn add(&mut self, svc: ServiceSpec, now: Instant) {
        self.waiting.push_back(svc);
        if self.next_at.is_none() && self.in_flight.is_none() {
            self.next_at = Some(now + self.backoff.next_delay());
        }
    }

    /// Whether every service is registered.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_none()
    }

    /// Names of the services not registered yet, for status views.
    pub(crate) fn names(&self) -> Vec<String> {
        self.in_flight
            .iter()
            .chain(self.waiting.iter())
            .map(|s| s.name.clone())
            .collect()
    }

    /// When the next Register is due (none while one is in flight or nothing waits).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        self.next_at
    }

    /// The service to send a Register for now, if one is due; it is then in flight.
    pub(crate) fn due(&mut self, now: Instant) -> Option<ServiceSpec> {
        if self.in_flight.is_some() || self.next_at.is_none_or(|t| t > now) {
            return None;
        }
        let svc = self.waiting.pop_front()?;
        self.next_at = None;
        self.in_flight = Some(svc.clone());
        Some(svc)
    }

    /// Whether a Register is waiting for its answer (RegisterOk/RegisterFail belong to it).
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The server took the service in flight; the next waiting one is asked at once.
    pub(crate) fn on_ok(&mut self, now: Instant) -> Option<ServiceSpec> {
        let svc = self.in_flight.take()?;
        self.backoff.reset();
        self.next_at = (!self.waiting.is_empty()).then_some(now);
        Some(svc)
    }

    /// The server refused the service in flight with `reason`.
    pub(crate) fn on_fail(&mut self, reason: &str, now: Instant) -> Option<(ServiceSpec, Refused)> {
        let svc = self.in_flight.take()?;
        let f = Failure::register(&svc.name, reason);
        if f.kind == FailureKind::Permanent {
            return Some((svc, Refused::Permanent(f)));
        }
        let delay = self.backoff.next_delay();
        self.next_at = Some(now + delay);
        self.waiting.push_back(svc.clone());
        Some((svc, Refused::Retry(delay)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceSpec {
        format!("{name}=tcp://127.0.0.1:1@30001").parse().unwrap()
    }

    #[test]
    fn transient_refusals_are_retried_with_capped_backoff_until_taken() {
        let t0 = Instant::now();
        let mut p = PendingRegistrations::none();
        assert!(p.is_empty());
        p.add(svc("a"), t0);
        p.add(svc("b"), t0);
        assert_eq!(p.names(), ["a", "b"]);
        let first = p.deadline().unwrap();
        assert!(first > t0 && first <= t0 + RETRY_MIN);
        assert!(p.due(t0).is_none(), "not before the first delay");
        let mut now = first;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let s = p.due(now).expect("due");
            assert_eq!(s.name, "a");
            assert!(p.in_flight() && p.deadline().is_none() && p.due(now).is_none());
            match p.on_fail("port 30001 is already in use", now) {
                Some((s, Refused::Retry(d))) => {
                    assert_eq!(s.name, "a");
                    delays.push(d);
                }
                other => panic!("{other:?}"),
            }
            // "b" waits behind "a"; put "a" first again as the next due.
            let b = p.waiting.pop_front().unwrap();
            p.waiting.push_back(b);
            now = p.deadline().unwrap();
        }
        assert!(
            delays[0] >= RETRY_MIN && delays[0] <= 2 * RETRY_MIN,
            "{delays:?}"
        );
        assert!(
            delays[1] >= 2 * RETRY_MIN && delays[1] <= 4 * RETRY_MIN,
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= RETRY_MAX));
        assert!(delays[7] >= RETRY_MAX / 2, "{delays:?}");
        assert_eq!(p.due(now).unwrap().name, "a");
        assert_eq!(p.on_ok(now).unwrap().name, "a");
        // The next one goes at once, with the backoff reset.
        assert_eq!(p.deadline(), Some(now));
        assert_eq!(p.due(now).unwrap().name, "b");
        assert_eq!(p.on_ok(now).unwrap().name, "b");
        assert!(p.is_empty() && p.deadline().is_none());
    }

    #[test]
    fn permanent_refusals_end_the_retry() {
        let t0 = Instant::now();
        let mut p = PendingRegistrations::none();
        p.add(svc("a"), t0);
        let now = p.deadline().unwrap();
        p.due(now).unwrap();
        match p.on_fail("port 80 is outside the server's range 30000-31000", now) {
            Some((_, Refused::Permanent(f))) => assert!(f.message.contains("without @PORT")),
            other => panic!("{other:?}"),
        }
        assert!(p.on_fail("again", now).is_none(), "nothing in flight");
    }
}
