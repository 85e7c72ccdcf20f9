//! Admission limits for handshakes: a global cap and a per-address cap on handshakes in
//! progress (the oldest stalled one is shed when a cap is full, never the newcomer), and
//! Auth-failure penalties with growing delays for the address and the client id that failed.
//! All state is bounded: by the caps, and by [`MAX_TRACKED`] penalty entries per kind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

/// Penalty entries kept per kind (addresses, client ids); past it, expired entries are
/// forgotten, then the least recently failing one.
pub(crate) const MAX_TRACKED: usize = 4096;
/// Failed Auths a client id may make before its first lockout (an agent's pool of four
/// tries its token on every connection at once).
pub(crate) const CLIENT_MAX_FAILURES: u32 = 4;
/// First lockout; each further failure after a lockout doubles it, up to the window.
const BASE_LOCKOUT: Duration = Duration::from_secs(1);
/// Shortest handshake deadline under pressure.
const MIN_PRESSURED_DEADLINE: Duration = Duration::from_secs(1);

/// The admission key of an address: IPv4 as is, IPv6 by its /64 (one host's or one site's
/// prefix), an IPv4-mapped IPv6 address as its IPv4.
pub(crate) fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

/// Tracks handshakes in progress and recent Auth failures.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    max_failures: u32,
    window: Duration,
    handshake_timeout: Duration,
    state: Mutex<AdmissionState>,
}

#[derive(Debug)]
struct Slot {
    key: IpAddr,
    started: Instant,
    shed: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    next_id: u64,
    slots: HashMap<u64, Slot>,
    per_ip: HashMap<IpAddr, usize>,
    addrs: HashMap<IpAddr, Penalty>,
    clients: HashMap<Uuid, Penalty>,
}

/// Failures of one address or client id, and its lockout.
#[derive(Debug, Clone, Copy)]
struct Penalty {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// What failed and was locked out, for the warning and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Locked {
    /// An address (IPv6: its /64).
    Address(IpAddr),
    /// An agent's client id.
    Client(Uuid),
}

/// A lockout that just started: what, for how long, after how many failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lockout {
    pub(crate) what: Locked,
    pub(crate) duration: Duration,
    pub(crate) failures: u32,
}

/// A handshake slot; released on drop. `shed` resolves when a newer handshake took the
/// slot because the caps were full.
pub(crate) struct Permit {
    admission: Arc<Admission>,
    id: u64,
    /// Resolves when this handshake is shed.
    pub(crate) shed: oneshot::Receiver<()>,
    /// Deadline of this handshake (shorter when the table is more than half full).
    pub(crate) timeout: Duration,
    /// Whether admitting it shed an older handshake.
    pub(crate) shed_other: bool,
}

impl Admission {
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        max_failures: u32,
        window: Duration,
        handshake_timeout: Duration,
    ) -> Admission {
        Admission {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            max_failures: max_failures.max(1),
            window,
            handshake_timeout,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a handshake slot for `ip`. When the address's cap or the global cap is full,
    /// the oldest handshake of that address (or of the address holding the most) is shed,
    /// so stalled sockets cannot keep a newcomer out.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Permit {
        let key = addr_key(ip);
        let mut st = self.lock();
        let mut shed_other = false;
        let victim_key = if st.per_ip.get(&key).copied().unwrap_or(0) >= self.max_per_ip {
            Some(key)
        } else if st.slots.len() >= self.max_total {
            // The address holding the most handshakes gives one up.
            st.per_ip.iter().max_by_key(|(_, n)| **n).map(|(k, _)| *k)
        } else {
            None
        };
        if let Some(vk) = victim_key {
            let oldest = st
                .slots
                .iter()
                .filter(|(_, s)| s.key == vk)
                .min_by_key(|(id, s)| (s.started, **id))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                if let Some(slot) = st.remove_slot(id) {
                    let _ = slot.shed.send(());
                    shed_other = true;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let id = st.next_id;
        st.next_id += 1;
        st.slots.insert(
            id,
            Slot {
                key,
                started: now,
                shed: tx,
            },
        );
        *st.per_ip.entry(key).or_insert(0) += 1;
        let timeout = if st.slots.len() * 2 > self.max_total {
            (self.handshake_timeout / 4)
                .max(MIN_PRESSURED_DEADLINE)
                .min(self.handshake_timeout)
        } else {
            self.handshake_timeout
        };
        Permit {
            admission: self.clone(),
            id,
            shed: rx,
            timeout,
            shed_other,
        }
    }

    /// Handshakes in progress now.
    pub(crate) fn in_progress(&self) -> usize {
        self.lock().slots.len()
    }

    /// If `ip` or `client` is locked out now, how long until it may try again.
    pub(crate) fn locked(&self, ip: IpAddr, client: Uuid, now: Instant) -> Option<Duration> {
        let st = self.lock();
        let left = |p: Option<&Penalty>| {
            p.and_then(|p| p.locked_until)
                .and_then(|t| t.checked_duration_since(now))
                .filter(|d| !d.is_zero())
        };
        let a = left(st.addrs.get(&addr_key(ip)));
        let c = left(st.clients.get(&client));
        a.max(c)
    }

    /// Records a failed Auth from `ip` (and `client`, when the Auth named one); returns the
    /// lockouts it started.
    pub(crate) fn record_failure(
        &self,
        ip: IpAddr,
        client: Option<Uuid>,
        now: Instant,
    ) -> Vec<Lockout> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let key = addr_key(ip);
        if let Some(d) = penalize(&mut st.addrs, key, self.max_failures, self.window, now) {
            out.push(d.with(Locked::Address(key)));
        }
        if let Some(c) = client {
            let max = CLIENT_MAX_FAILURES.min(self.max_failures);
            if let Some(d) = penalize(&mut st.clients, c, max, self.window, now) {
                out.push(d.with(Locked::Client(c)));
            }
        }
        out
    }

    /// A successful Auth by `client`: its own failures are forgiven (the address's are not).
    pub(crate) fn record_success(&self, client: Uuid) {
        self.lock().clients.remove(&client);
    }

    /// Entries in the penalty tables: (addresses, client ids).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> (usize, usize) {
        let st = self.lock();
        (st.addrs.len(), st.clients.len())
    }

    /// Addresses and client ids locked out now.
    pub(crate) fn locked_now(&self, now: Instant) -> usize {
        let st = self.lock();
        let is = |p: &Penalty| p.locked_until.is_some_and(|t| t > now);
        st.addrs.values().filter(|p| is(p)).count() + st.clients.values().filter(|p| is(p)).count()
    }
}

/// A lockout's length and the failures behind it, before naming what it locks.
struct Started(Duration, u32);

impl Started {
    fn with(self, what: Locked) -> Lockout {
        Lockout {
            what,
            duration: self.0,
            failures: self.1,
        }
    }
}

/// Counts a failure of `k` and locks it out once it reached `max` within the window: for
/// one second at first, doubling with each later failure, at most the window.
fn penalize<K: std::hash::Hash + Eq + Copy>(
    map: &mut HashMap<K, Penalty>,
    k: K,
    max: u32,
    window: Duration,
    now: Instant,
) -> Option<Started> {
    let expired = |p: &Penalty| {
        now.duration_since(p.last) >= window && p.locked_until.is_none_or(|t| t <= now)
    };
    if map.len() >= MAX_TRACKED && !map.contains_key(&k) {
        map.retain(|_, p| !expired(p));
        if map.len() >= MAX_TRACKED {
            // Under attack with more keys than the table holds: forget the least recent.
            if let Some(old) = map.iter().min_by_key(|(_, p)| p.last).map(|(k, _)| *k) {
                map.remove(&old);
            }
        }
    }
    let p = map.entry(k).or_insert(Penalty {
        failures: 0,
        last: now,
        locked_until: None,
    });
    if expired(p) {
        *p = Penalty {
            failures: 0,
            last: now,
            locked_until: None,
        };
    }
    p.failures = p.failures.saturating_add(1);
    p.last = now;
    if p.failures < max {
        return None;
    }
    let doublings = (p.failures - max).min(16);
    let d = BASE_LOCKOUT
        .saturating_mul(1 << doublings)
        .min(window.max(BASE_LOCKOUT));
    p.locked_until = Some(now + d);
    Some(Started(d, p.failures))
}

impl AdmissionState {
    fn remove_slot(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&slot.key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&slot.key);
            }
        }
        Some(slot)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.lock().remove_slot(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adm(total: usize, per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission::new(
            total,
            per_ip,
            10,
            Duration::from_secs(60),
            Duration::from_secs(10),
        ))
    }

    #[test]
    fn full_caps_shed_the_oldest_not_the_newcomer() {
        let a = adm(3, 2);
        let ip1: IpAddr = [127, 0, 0, 1].into();
        let ip2: IpAddr = [127, 0, 0, 2].into();
        let now = Instant::now();
        let mut p1 = a.admit(ip1, now);
        let mut p2 = a.admit(ip1, now + Duration::from_millis(1));
        // The address's cap is full: its oldest handshake is shed.
        let mut p3 = a.admit(ip1, now + Duration::from_millis(2));
        assert!(p3.shed_other);
        assert!(p1.shed.try_recv().is_ok(), "the oldest was shed");
        assert!(p2.shed.try_recv().is_err());
        let mut q1 = a.admit(ip2, now + Duration::from_millis(3));
        assert_eq!(a.in_progress(), 3);
        // The global cap is full: the address holding the most gives up its oldest.
        let q2 = a.admit(ip2, now + Duration::from_millis(4));
        assert!(q2.shed_other);
        assert!(p2.shed.try_recv().is_ok());
        assert!(p3.shed.try_recv().is_err() && q1.shed.try_recv().is_err());
        assert_eq!(a.in_progress(), 3);
        drop(p1);
        drop(p2);
        assert_eq!(a.in_progress(), 3, "a shed permit released nothing twice");
        drop((p3, q1, q2));
        assert_eq!(a.in_progress(), 0);
    }

    #[test]
    fn the_deadline_shortens_under_pressure() {
        let a = adm(4, 4);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let now = Instant::now();
        let p1 = a.admit(ip, now);
        let p2 = a.admit(ip, now);
        let p3 = a.admit(ip, now);
        assert_eq!(p1.timeout, Duration::from_secs(10));
        assert_eq!(p2.timeout, Duration::from_secs(10));
        assert_eq!(p3.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn failures_lock_out_with_growing_delays() {
        let a = adm(8, 8);
        let ip: IpAddr = [192, 0, 2, 1].into();
        let now = Instant::now();
        let mut t = now;
        let mut lockouts = Vec::new();
        for _ in 0..9 {
            let c = Uuid::new_v4();
            lockouts.extend(a.record_failure(ip, Some(c), t));
            t += Duration::from_millis(10);
        }
        assert!(
            lockouts.is_empty(),
            "nine failures from nine clients: no lockout"
        );
        let c = Uuid::new_v4();
        let l = a.record_failure(ip, Some(c), t);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].what, Locked::Address(ip));
        assert_eq!(l[0].duration, Duration::from_secs(1));
        assert!(a.locked(ip, Uuid::new_v4(), t).is_some());
        assert!(a
            .locked(ip, Uuid::new_v4(), t + Duration::from_secs(1))
            .is_none());
        let l = a.record_failure(ip, None, t + Duration::from_secs(1));
        assert_eq!(
            l[0].duration,
            Duration::from_secs(2),
            "the next lockout doubles"
        );
        // Another address is not touched.
        assert!(a.locked([192, 0, 2, 2].into(), Uuid::new_v4(), t).is_none());
    }

    #[test]
    fn a_client_id_is_locked_before_its_address() {
        let a = adm(8, 8);
        let ip: IpAddr = [192, 0, 2, 1].into();
        let c = Uuid::new_v4();
        let now = Instant::now();
        let mut l = Vec::new();
        for _ in 0..CLIENT_MAX_FAILURES {
            l = a.record_failure(ip, Some(c), now);
        }
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].what, Locked::Client(c));
        assert!(a.locked(ip, c, now).is_some());
        assert!(
            a.locked(ip, Uuid::new_v4(), now).is_none(),
            "others behind the address get in"
        );
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
        assert_ne!(addr_key(a), addr_key(c));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(addr_key(m), IpAddr::from([10, 0, 0, 1]));
        let adm = adm(8, 2);
        let now = Instant::now();
        let mut p = adm.admit(a, now);
        let _q = adm.admit(b, now);
        let _r = adm.admit(b, now);
        assert!(
            p.shed.try_recv().is_ok(),
            "one /64 shares one per-address cap"
        );
    }

    #[test]
    fn the_failure_tables_stay_bounded_under_attack() {
        let a = adm(8, 8);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 256) {
            let ip =
                IpAddr::from((0x2001_0db8_0000_0000u128 + (u128::from(i) << 64)).to_be_bytes());
            a.record_failure(ip, Some(Uuid::new_v4()), now);
        }
        let (addrs, clients) = a.tracked();
        assert!(
            addrs <= MAX_TRACKED && clients <= MAX_TRACKED,
            "{addrs} {clients}"
        );
    }
}
