//! How the agent's pooled connections stand, for status views and readiness.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use culvert_transport::RelayCounters;

/// What one pool slot is doing.
#[derive(Debug, Clone, Copy)]
pub(super) enum SlotState {
    Connecting,
    Up,
    BackingOff(Instant),
}

/// One pool slot: its state, the server it is on (or dialing) and its home server.
#[derive(Debug, Clone)]
pub(super) struct SlotInfo {
    pub(super) state: SlotState,
    pub(super) server: usize,
    pub(super) home: usize,
    /// Services this slot's connection has not registered yet (refused for now).
    pub(super) unregistered: Vec<String>,
}

/// One pooled connection as status views show it: which server it is on, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStatus {
    /// The pool slot.
    pub slot: usize,
    /// The server it is connected to (or dialing, or waiting for), as `ws[s]://HOST:PORT`.
    pub server: String,
    /// The slot's home server (where it returns after a failover).
    pub home: String,
    /// Connected, connecting or backing off.
    pub state: LinkState,
    /// Services the server refused for now on this connection (asked again with backoff);
    /// while any is listed the agent is not ready.
    pub unregistered: Vec<String>,
}

/// Where the agent's link to its server stands, for status views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// At least one pooled connection is up and registered.
    Connected,
    /// None is up; at least one is dialing or authenticating.
    Connecting,
    /// None is up and every slot waits before its next attempt.
    BackingOff {
        /// Time until the earliest next attempt.
        retry_in: Duration,
    },
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Connected => f.write_str("connected"),
            LinkState::Connecting => f.write_str("connecting"),
            LinkState::BackingOff { retry_in } => {
                write!(f, "backing off (retry in {:.1}s)", retry_in.as_secs_f64())
            }
        }
    }
}

/// Traffic of one exposed service on this agent, so status views show per-tunnel figures.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Connections being relayed now.
    pub open: AtomicUsize,
    /// Connections relayed since start.
    pub connections: std::sync::atomic::AtomicU64,
    /// Bytes each way: `up` from the local target towards the tunnel, `down` the other way.
    pub bytes: Arc<RelayCounters>,
    /// An HTTP service's requests (zero for TCP and UDP services).
    pub http: Arc<crate::HttpCounters>,
    /// Dials of the target (a TCP service's per connection, an HTTP service's backend
    /// connections) that failed: refused, timed out, or the PROXY header not written.
    pub dial_failures: std::sync::atomic::AtomicU64,
    /// How the last dial of the target went (see [`ServiceCounters::target_reachable`]).
    last_dial: std::sync::atomic::AtomicU8,
}

/// `last_dial` before the first dial, after one that reached the target, after one that
/// failed.
const DIAL_NONE: u8 = 0;
const DIAL_OK: u8 = 1;
const DIAL_FAILED: u8 = 2;

impl ServiceCounters {
    /// Whether the last dial of the target reached it (`None` before the first): a
    /// failing target shows at once, not at the next scrape of a rate.
    pub fn target_reachable(&self) -> Option<bool> {
        match self.last_dial.load(std::sync::atomic::Ordering::Relaxed) {
            DIAL_NONE => None,
            d => Some(d == DIAL_OK),
        }
    }

    /// Records a dial of the target that reached it.
    pub(crate) fn dialed(&self) {
        self.last_dial
            .store(DIAL_OK, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a dial of the target that failed.
    pub(crate) fn dial_failed(&self) {
        self.dial_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last_dial
            .store(DIAL_FAILED, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One configured service as status views list it: what kind it is and its counters, so a
/// service without a public port (HTTP, private) shows too.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceView {
    /// The service's name.
    pub name: String,
    /// `tcp`, `udp` or `http`.
    pub kind: &'static str,
    /// Reached only through access sessions and node tunnels: no public port.
    pub private: bool,
    /// Its traffic (and, for an HTTP service, its requests).
    pub counters: Arc<ServiceCounters>,
}
