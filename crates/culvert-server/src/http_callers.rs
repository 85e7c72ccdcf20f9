//! How many caller connections the HTTP ingress holds: at most a total, and at most a number
//! per address (IPv6 by its /64, as for handshakes). Idle keep-alive connections and stalled
//! TLS handshakes cost a descriptor each; without a bound, callers could take every
//! descriptor of the process and with them the agents' tunnels.
//!
//! A connection past a limit is closed as soon as it is accepted (nothing read, nothing
//! answered) and counted; the connections already held are never shed for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::limits::addr_key;
use culvert_transport::metrics::{family, single};

/// At most one warning per limit in this interval; the refusals in between go to debug.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Which limit turned a caller away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The ingress holds its total.
    Total,
    /// The caller's address holds its share.
    PerAddress,
    /// With `--http-proxy-protocol`: no valid PROXY header in time.
    ProxyHeader,
}

impl Refused {
    const ALL: [Refused; 3] = [Refused::Total, Refused::PerAddress, Refused::ProxyHeader];

    fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerAddress => "per_address",
            Refused::ProxyHeader => "proxy_header",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The ingress's caller connections, counted against its limits.
#[derive(Debug)]
pub(crate) struct CallerLimits {
    max_total: usize,
    max_per_address: usize,
    state: Mutex<State>,
    /// Refusals by [`Refused::index`].
    refused: [AtomicU64; 3],
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    last_warning: [Option<Instant>; 3],
}

/// One admitted caller connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct CallerSlot {
    limits: Arc<CallerLimits>,
    /// The address it counts against (none yet while its PROXY header is read).
    key: Option<IpAddr>,
}

impl CallerLimits {
    /// Limits of `max_total` connections, `max_per_address` from one address (each at
    /// least 1).
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> CallerLimits {
        CallerLimits {
            max_total: max_total.max(1),
            max_per_address: max_per_address.max(1),
            state: Mutex::default(),
            refused: Default::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`, or the limit that refuses it (counted, and
    /// logged at most once per limit every 10 s).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<CallerSlot, Refused> {
        let mut slot = self.admit_total()?;
        slot.assign(ip)?;
        Ok(slot)
    }

    /// A place under the total only, for a connection whose caller's address comes later
    /// (its PROXY header): [`CallerSlot::assign`] then counts it against that address.
    pub(crate) fn admit_total(self: &Arc<Self>) -> Result<CallerSlot, Refused> {
        let mut s = self.state();
        if s.total >= self.max_total {
            drop(s);
            return Err(self.refuse(Refused::Total, None));
        }
        s.total += 1;
        Ok(CallerSlot {
            limits: self.clone(),
            key: None,
        })
    }

    /// Counts a refusal and logs it: at warn at most once per limit every 10 s, else at
    /// debug. Returns `why`.
    pub(crate) fn refuse(&self, why: Refused, ip: Option<IpAddr>) -> Refused {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        let max = match why {
            Refused::Total => Some(self.max_total),
            Refused::PerAddress => Some(self.max_per_address),
            Refused::ProxyHeader => None,
        };
        let now = Instant::now();
        let mut s = self.state();
        let last = &mut s.last_warning[why.index()];
        let address = ip.map(|ip| ip.to_string()).unwrap_or_default();
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            drop(s);
            tracing::warn!(%address, limit = why.label(), ?max, "http ingress: caller connection refused (counted in culvert_http_connections_refused_total; further refusals within 10 s are logged at debug)");
        } else {
            drop(s);
            tracing::debug!(%address, limit = why.label(), "http ingress: caller connection refused");
        }
        why
    }

    /// Caller connections held now.
    pub(crate) fn open(&self) -> usize {
        self.state().total
    }

    /// Writes the ingress's connection families (at a scrape).
    pub(crate) fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        single(
            enc,
            "culvert_http_connections",
            "Caller connections the HTTP ingress holds (TLS handshakes included).",
            ConstGauge::new(self.open() as u64),
        )?;
        family(
            enc,
            "culvert_http_connections_refused",
            "Caller connections the HTTP ingress closed at once, by the limit they met.",
            Refused::ALL.map(|r| {
                (
                    [("limit", r.label())],
                    ConstCounter::new(self.refused[r.index()].load(Ordering::Relaxed)),
                )
            }),
        )
    }
}

impl CallerSlot {
    /// Counts this connection against `ip`'s share, or refuses it (counted and logged).
    pub(crate) fn assign(&mut self, ip: IpAddr) -> Result<(), Refused> {
        let key = addr_key(ip);
        let mut s = self.limits.state();
        let n = s.per_address.entry(key).or_insert(0);
        if *n >= self.limits.max_per_address {
            drop(s);
            return Err(self.limits.refuse(Refused::PerAddress, Some(key)));
        }
        *n += 1;
        self.key = Some(key);
        Ok(())
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut s = self.limits.state();
        s.total = s.total.saturating_sub(1);
        if let Some(key) = self.key {
            if let Some(n) = s.per_address.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    s.per_address.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_address_gets_its_share_and_all_of_them_the_total() {
        let l = Arc::new(CallerLimits::new(3, 2));
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let _a2 = l.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(l.admit(ip("10.0.0.1")).unwrap_err(), Refused::PerAddress);
        let _b1 = l.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(l.admit(ip("10.0.0.3")).unwrap_err(), Refused::Total);
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(l.refused[Refused::Total.index()].load(Ordering::Relaxed), 1);
        assert_eq!(
            l.refused[Refused::PerAddress.index()].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn an_ipv6_network_counts_as_one_address() {
        let l = Arc::new(CallerLimits::new(10, 1));
        let _a = l.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            l.admit(ip("2001:db8:1:2::99")).unwrap_err(),
            Refused::PerAddress
        );
        let _b = l.admit(ip("2001:db8:1:3::1")).unwrap();
    }

    #[test]
    fn freed_places_leave_no_entry_behind() {
        let l = Arc::new(CallerLimits::new(10, 10));
        let slots: Vec<_> = (0..5)
            .map(|i| l.admit(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        drop(slots);
        assert_eq!(l.open(), 0);
        assert!(l.state().per_address.is_empty());
    }
}
