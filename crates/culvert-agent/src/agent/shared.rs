//! The state the pool slots and the agent's handle share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use culvert_transport::Mux;
use tokio::sync::watch;
use uuid::Uuid;

use super::servers::Endpoint;
use super::status::{
    ConnectionStatus, LinkState, ServiceCounters, ServiceView, SlotInfo, SlotState,
};
use super::{lock, AgentConfig};

/// What the pool slots and the handle share.
pub(crate) struct Shared {
    /// The configuration, with `pool` made the effective pool (at least one per server).
    pub(super) config: AgentConfig,
    /// The servers slots dial, by index (see [`AgentConfig::servers`]; a name resolving
    /// to several addresses at start is one server per address).
    pub(super) servers: Vec<Endpoint>,
    /// Public port per (server, service): what a reconnecting slot asks that server for.
    pub(super) server_ports: Mutex<HashMap<(usize, String), u16>>,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) client_id: Uuid,
    /// Public port per service, as the server last reported it.
    pub(super) ports: Mutex<HashMap<String, u16>>,
    /// Pool connections currently authenticated and registered.
    pub(super) up: AtomicUsize,
    /// Those connections, for metrics.
    pub(super) live: Mutex<Vec<Mux>>,
    /// Connections left for the home server, finishing their streams (closed at shutdown).
    pub(super) retiring: Mutex<Vec<Mux>>,
    /// Connection attempts that failed, and connections lost.
    pub(super) failures: std::sync::atomic::AtomicU64,
    pub(super) state_tx: watch::Sender<usize>,
    /// What each pool slot is doing and on which server, for status views.
    pub(super) slots: Mutex<Vec<SlotInfo>>,
    /// The last reason a connection failed or was lost.
    pub(super) last_error: Mutex<Option<String>>,
    /// Traffic per service, by name.
    pub(super) counters: HashMap<String, Arc<ServiceCounters>>,
    /// Round-robin cursor for streams this side opens.
    pub(super) next_open: AtomicUsize,
    /// UDP flows this side opened, for the datagram pumps.
    pub(super) local_flows: Arc<crate::local_flows::LocalFlows>,
    /// Datagrams dropped on their way to this agent's UDP services, over all connections.
    pub(super) udp_target_drops: Arc<culvert_transport::udp_target::TargetDrops>,
    /// Pooled connections, open and ended, for the counters summed over them.
    pub(super) connections: culvert_transport::metrics::MuxLedger,
    /// The last permanent error logged (logged once, not once per slot and attempt).
    pub(super) permanent_logged: Mutex<Option<String>>,
    /// Set at a permanent error when `exit_on_auth_failure` is on.
    pub(super) permanent_tx: watch::Sender<Option<String>>,
}

impl Shared {
    /// Each configured service with its counters, in configuration order.
    pub(crate) fn services(&self) -> Vec<ServiceView> {
        self.config
            .services
            .iter()
            .filter_map(|s| {
                Some(ServiceView {
                    name: s.name.clone(),
                    kind: match (&s.http, s.protocol) {
                        (Some(_), _) => "http",
                        (None, culvert_proto::ServiceProtocol::Udp) => "udp",
                        (None, culvert_proto::ServiceProtocol::Tcp) => "tcp",
                    },
                    private: s.private,
                    counters: self.counters.get(&s.name)?.clone(),
                })
            })
            .collect()
    }

    pub(crate) fn ports(&self) -> HashMap<String, u16> {
        lock(&self.ports).clone()
    }

    pub(crate) fn connections_up(&self) -> usize {
        self.up.load(Ordering::SeqCst)
    }

    pub(crate) fn connections_suspect(&self) -> usize {
        lock(&self.live).iter().filter(|m| m.is_suspect()).count()
    }

    pub(crate) fn is_ready(&self) -> bool {
        let pool = self.config.pool.max(1);
        let incomplete = lock(&self.slots)
            .iter()
            .any(|s| matches!(s.state, SlotState::Up) && !s.unregistered.is_empty());
        !incomplete
            && self
                .connections_up()
                .saturating_sub(self.connections_suspect())
                >= pool
    }

    /// Each slot's connection, for status views.
    pub(crate) fn connections(&self) -> Vec<ConnectionStatus> {
        let now = Instant::now();
        lock(&self.slots)
            .iter()
            .enumerate()
            .map(|(slot, s)| ConnectionStatus {
                slot,
                server: self.servers[s.server].text(),
                home: self.servers[s.home].text(),
                state: match s.state {
                    SlotState::Up => LinkState::Connected,
                    SlotState::Connecting => LinkState::Connecting,
                    SlotState::BackingOff(t) => LinkState::BackingOff {
                        retry_in: t.saturating_duration_since(now),
                    },
                },
                unregistered: s.unregistered.clone(),
            })
            .collect()
    }

    /// Connections up per server (every server listed, with 0 when none), for metrics.
    pub(crate) fn connections_per_server(&self) -> Vec<(String, usize)> {
        let slots = lock(&self.slots);
        self.servers
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let up = slots
                    .iter()
                    .filter(|s| s.server == i && matches!(s.state, SlotState::Up))
                    .count();
                (endpoint.text(), up)
            })
            .collect()
    }

    /// Slot `slot` is now `state` on server `server`.
    pub(super) fn set_slot(&self, slot: usize, state: SlotState, server: usize) {
        let mut slots = lock(&self.slots);
        slots[slot].state = state;
        slots[slot].server = server;
        if !matches!(state, SlotState::Up) {
            slots[slot].unregistered.clear();
        }
    }

    /// The services slot `slot`'s connection has not registered yet.
    pub(crate) fn set_unregistered(&self, slot: usize, names: Vec<String>) {
        lock(&self.slots)[slot].unregistered = names;
    }

    /// The live connections, for metrics.
    pub(crate) fn live(&self) -> Vec<Mux> {
        lock(&self.live).clone()
    }

    /// Connection attempts that failed, and connections lost.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Stream and datagram counters over the pooled connections, ended ones included.
    pub(crate) fn connection_totals(&self) -> culvert_transport::metrics::MuxTotals {
        self.connections.totals()
    }

    /// Datagrams dropped on their way to this agent's UDP services.
    pub(crate) fn udp_target_drops(&self) -> &culvert_transport::udp_target::TargetDrops {
        &self.udp_target_drops
    }

    /// Replies to this side's local flows dropped because a flow's queue was full.
    pub(crate) fn local_flows_dropped(&self) -> u64 {
        self.local_flows.dropped.load(Ordering::Relaxed)
    }

    /// Pooled connections configured.
    pub(crate) fn pool(&self) -> usize {
        self.config.pool
    }
}
