//! Admission limits for handshakes: a global cap, a per-IP cap, and per-IP Auth-failure
//! rate limiting. All state is bounded by the number of addresses currently handshaking or
//! recently failing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tracks handshakes in progress and recent Auth failures.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    max_failures: u32,
    window: Duration,
    state: Mutex<AdmissionState>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    failures: HashMap<IpAddr, (u32, Instant)>,
}

/// Why a handshake was refused before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Handshakes,
    PerIp,
    AuthFailures,
}

/// A handshake slot; released on drop.
pub(crate) struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        max_failures: u32,
        window: Duration,
    ) -> Admission {
        Admission {
            max_total,
            max_per_ip,
            max_failures,
            window,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a handshake slot for `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        let mut st = self.lock();
        if let Some((n, since)) = st.failures.get(&ip).copied() {
            if now.duration_since(since) >= self.window {
                st.failures.remove(&ip);
            } else if n >= self.max_failures {
                return Err(Refusal::AuthFailures);
            }
        }
        if st.total >= self.max_total {
            return Err(Refusal::Handshakes);
        }
        let n = st.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        st.total += 1;
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }

    /// Records a failed Auth from `ip`.
    pub(crate) fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut st = self.lock();
        // Bound the table: forget expired entries when it grows.
        if st.failures.len() > 65_536 {
            let window = self.window;
            st.failures
                .retain(|_, (_, since)| now.duration_since(*since) < window);
        }
        let e = st.failures.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 += 1;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.total -= 1;
        if let Some(n) = st.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_failures() {
        let a = Arc::new(Admission::new(3, 2, 2, Duration::from_secs(60)));
        let ip1: IpAddr = [127, 0, 0, 1].into();
        let ip2: IpAddr = [127, 0, 0, 2].into();
        let now = Instant::now();
        let p1 = a.admit(ip1, now).unwrap();
        let _p2 = a.admit(ip1, now).unwrap();
        assert_eq!(a.admit(ip1, now).err(), Some(Refusal::PerIp));
        let _p3 = a.admit(ip2, now).unwrap();
        assert_eq!(a.admit(ip2, now).err(), Some(Refusal::Handshakes));
        drop(p1);
        assert!(a.admit(ip2, now).is_ok());
        a.record_failure(ip1, now);
        a.record_failure(ip1, now);
        assert_eq!(a.admit(ip1, now).err(), Some(Refusal::AuthFailures));
        assert!(a.admit(ip1, now + Duration::from_secs(61)).is_ok());
    }
}
