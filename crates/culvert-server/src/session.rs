//! An agent session: the pooled connections of one agent (same client id and token) and
//! the services it registered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use culvert_proto::Target;
use culvert_transport::{Mux, RelayTotals, TunnelStream};
use uuid::Uuid;

use crate::registry::Protocol;
use crate::tokens::TokenEntry;

/// Time to get a stream opened towards an agent (waits only when the agent's stream limit
/// is reached).
pub(crate) const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A registered service and its public port.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    pub(crate) protocol: Protocol,
    /// Public port (0 for a private service).
    pub(crate) port: u16,
    /// Reached only through access sessions and node tunnels, never on a public port.
    pub(crate) private: bool,
    /// The public listener's task.
    pub(crate) task: Option<tokio::task::AbortHandle>,
    /// Public connections accepted.
    pub(crate) connections: AtomicU64,
    /// Bytes from public clients to the agent (counted when each connection ends).
    pub(crate) bytes_in: AtomicU64,
    /// Bytes from the agent to public clients (counted when each connection ends).
    pub(crate) bytes_out: AtomicU64,
    /// UDP state of a UDP service.
    pub(crate) udp: Option<crate::udp::UdpService>,
    /// Set once a reload withdrew the service (its token no longer allows it): the public
    /// connections and access streams it carries are then reset.
    withdrawn: tokio::sync::watch::Sender<bool>,
    /// What the service is charged to its token and tenant (a service, and a public port);
    /// given back when it is removed from its session, not when the last reference goes.
    pub(crate) quota: Mutex<Vec<crate::quota::Charge>>,
    /// Holds the port until the service is dropped. Declared last: dropped after the socket.
    pub(crate) _lease: Option<crate::registry::PortLease>,
}

impl Service {
    /// A new service named `name`; `lease` holds its public port (none: a private service,
    /// which has no port).
    pub(crate) fn new(
        name: &str,
        protocol: Protocol,
        port: u16,
        lease: Option<crate::registry::PortLease>,
    ) -> Service {
        Service {
            name: name.to_owned(),
            id: crate::ids::new_uuid(),
            protocol,
            port,
            private: lease.is_none(),
            task: None,
            connections: Default::default(),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
            udp: None,
            withdrawn: tokio::sync::watch::Sender::new(false),
            quota: Mutex::new(Vec::new()),
            _lease: lease,
        }
    }

    /// Marks the service withdrawn and stops its public listener: whatever waits in
    /// [`Service::withdrawn`] (its live connections and streams) is woken to reset itself.
    pub(crate) fn withdraw(&self) {
        if let Some(t) = &self.task {
            t.abort();
        }
        self.withdrawn.send_replace(true);
    }

    /// Whether a reload withdrew the service.
    pub(crate) fn is_withdrawn(&self) -> bool {
        *self.withdrawn.borrow()
    }

    /// Resolves once the service is withdrawn (at once if it already is).
    pub(crate) async fn withdrawn(&self) {
        let mut rx = self.withdrawn.subscribe();
        let seen = rx.wait_for(|w| *w).await.is_ok();
        if !seen {
            // The sender lives as long as the service, which the caller holds.
            std::future::pending::<()>().await;
        }
    }

    /// Gives back the service's quota charges: called when it leaves its session, so a
    /// token's freed capacity is free at once (tasks still tearing down hold the service).
    pub(crate) fn release_quota(&self) {
        self.quota.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Adds a finished connection's bytes to the service's totals (what was moved before an
    /// error counts too).
    pub(crate) fn count(&self, totals: &std::io::Result<RelayTotals>) {
        let t = totals.as_ref().copied().unwrap_or_default();
        self.bytes_in.fetch_add(t.up, Ordering::Relaxed);
        self.bytes_out.fetch_add(t.down, Ordering::Relaxed);
    }
}

/// One agent's session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: Uuid,
    /// The token entry in force: replaced when a reload changes it, so every check (and the
    /// expiry sweeper) reads the current one. Read it with [`Session::token`].
    token: RwLock<Arc<TokenEntry>>,
    /// Bumped each time a reload replaces the entry: live streams re-check their rights.
    rights: tokio::sync::watch::Sender<u64>,
    /// Whether the agent speaks Culvert (false: a plain zlayer-tunnel v1 agent, control only).
    pub(crate) culvert: bool,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) started: Instant,
    conns: Mutex<Vec<Mux>>,
    next: AtomicUsize,
    pub(crate) services: Mutex<HashMap<String, Arc<Service>>>,
    pub(crate) ended: AtomicBool,
    /// UDP flows of all services, by flow id (replies are routed with it).
    pub(crate) flows: Mutex<HashMap<u64, crate::udp::FlowRoute>>,
    pub(crate) next_flow: AtomicU64,
    /// Serialises registrations: pooled connections register the same services at once.
    pub(crate) register_lock: tokio::sync::Mutex<()>,
    /// Public connections announced with Connect and not yet acknowledged, for the
    /// stream-open latency histogram. Bounded: cleared if it ever exceeds the cap.
    pending_connects: Mutex<HashMap<uuid::Uuid, Instant>>,
}

/// Unacknowledged Connects remembered at most (a silent agent cannot grow this).
const MAX_PENDING_CONNECTS: usize = 65_536;

impl Session {
    pub(crate) fn new(
        id: Uuid,
        token: TokenEntry,
        culvert: bool,
        peer: std::net::SocketAddr,
    ) -> Session {
        Session {
            id,
            token: RwLock::new(Arc::new(token)),
            rights: tokio::sync::watch::Sender::new(0),
            culvert,
            peer,
            started: Instant::now(),
            conns: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            services: Mutex::new(HashMap::new()),
            ended: AtomicBool::new(false),
            flows: Mutex::new(HashMap::new()),
            next_flow: AtomicU64::new(1),
            register_lock: tokio::sync::Mutex::new(()),
            pending_connects: Mutex::new(HashMap::new()),
        }
    }

    /// The token entry in force now (a reload may replace it at any time).
    pub(crate) fn token(&self) -> Arc<TokenEntry> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `entry` in force and wakes the streams waiting in [`Session::rights`]; returns
    /// the entry it replaced, or `None` when nothing changed.
    pub(crate) fn set_token(&self, entry: &TokenEntry) -> Option<Arc<TokenEntry>> {
        let old = {
            let mut t = self.token.write().unwrap_or_else(|p| p.into_inner());
            if **t == *entry {
                return None;
            }
            std::mem::replace(&mut *t, Arc::new(entry.clone()))
        };
        self.rights.send_modify(|g| *g = g.wrapping_add(1));
        Some(old)
    }

    /// A receiver that sees each later change of the token entry.
    pub(crate) fn rights(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rights.subscribe()
    }

    /// Removes `svc` from the session's services (if it is still there) and withdraws it:
    /// its listener stops, its UDP flows are forgotten and its live streams reset
    /// themselves. Returns whether it was there.
    pub(crate) fn withdraw_service(&self, svc: &Arc<Service>) -> bool {
        let removed = {
            let mut map = self.services();
            if map.get(&svc.name).is_some_and(|x| Arc::ptr_eq(x, svc)) {
                map.remove(&svc.name)
            } else {
                None
            }
        };
        svc.withdraw();
        // It left the session: its share of the token's and tenant's quotas is free again.
        svc.release_quota();
        self.forget_flows_of(svc);
        removed.is_some()
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Vec<Mux>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn services(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Service>>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn attach(&self, mux: Mux) {
        let mut c = self.conns();
        c.retain(|m| !m.is_closed());
        c.push(mux);
    }

    /// Removes a closed connection; returns how many remain.
    pub(crate) fn detach(&self, mux: &Mux) -> usize {
        let mut c = self.conns();
        c.retain(|m| !m.is_closed() && !m.same(mux));
        c.len()
    }

    pub(crate) fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<u64, crate::udp::FlowRoute>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers when the Connect of `id` was sent.
    pub(crate) fn connect_sent(&self, id: uuid::Uuid) {
        let mut p = self
            .pending_connects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PENDING_CONNECTS {
            p.clear();
        }
        p.insert(id, Instant::now());
    }

    /// When the Connect of `id` was sent, forgetting it.
    pub(crate) fn take_pending_connect(&self, id: &uuid::Uuid) -> Option<Instant> {
        self.pending_connects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Opens a stream to this session's agent for `service`, carrying `client_addr` and a
    /// connection id in the open itself (`Target::Inbound`, PROTOCOL.md §8 step 5): how a
    /// public client and an access stream both begin. Waits at most [`OPEN_TIMEOUT`] for
    /// the agent's stream limit; `Err` says why it failed.
    pub(crate) async fn open_connection(
        &self,
        service: &Service,
        client_addr: String,
    ) -> Result<TunnelStream, String> {
        let mux = self
            .pick()
            .ok_or("no live agent connection (all are gone or suspect)")?;
        let connection_id = crate::ids::new_uuid();
        // Recorded first: the agent may acknowledge as soon as the open reaches it.
        self.connect_sent(connection_id);
        let target = Target::Inbound {
            service: service.name.clone(),
            connection_id,
            client_addr,
        };
        match tokio::time::timeout(OPEN_TIMEOUT, mux.open_to(target)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.take_pending_connect(&connection_id);
                Err(format!("could not open a stream to the agent: {e}"))
            }
            Err(_) => {
                self.take_pending_connect(&connection_id);
                // The agent's stream limit held for the whole timeout: worth an operator's eye.
                tracing::warn!(service = %service.name, "timed out opening a stream to the agent");
                Err("timed out opening a stream to the agent".into())
            }
        }
    }

    /// Drops the UDP flows of `service` (it is going away).
    pub(crate) fn forget_flows_of(&self, service: &Arc<Service>) {
        self.flows().retain(|_, r| !r.is_of(service));
    }

    /// The live connection for a UDP flow: chosen by flow hash, so one flow keeps one
    /// connection (and so its order) while the pool is stable; when that connection is
    /// suspect (silent past a heartbeat), the flow moves to a healthy one.
    pub(crate) fn pick_for_flow(&self, flow: u64) -> Option<Mux> {
        let h = (flow.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize;
        let first = self.choose(|m| !m.is_closed(), h)?;
        if !first.is_suspect() {
            return Some(first);
        }
        self.choose(|m| !m.is_suspect(), h)
    }

    /// The next live connection, round-robin, so streams spread over the agent's pool;
    /// connections whose agent is going away, and suspect ones (silent past a heartbeat
    /// with a heartbeat unanswered), get no new streams. `None` when none is usable: the
    /// caller refuses the client at once rather than leave it hanging.
    pub(crate) fn pick(&self) -> Option<Mux> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.choose(Mux::takes_new_streams, key)
    }

    /// The `key`-th (modulo their number) connection that is `usable`.
    fn choose(&self, usable: impl Fn(&Mux) -> bool, key: usize) -> Option<Mux> {
        let c = self.conns();
        let usable: Vec<&Mux> = c.iter().filter(|m| usable(m)).collect();
        if usable.is_empty() {
            return None;
        }
        Some(usable[key % usable.len()].clone())
    }

    /// Live connections that are suspect, for status views and metrics.
    pub(crate) fn suspect_count(&self) -> usize {
        self.conns().iter().filter(|m| m.is_suspect()).count()
    }

    /// Live connections, for metrics.
    pub(crate) fn live_muxes(&self) -> Vec<Mux> {
        self.conns()
            .iter()
            .filter(|m| !m.is_closed())
            .cloned()
            .collect()
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.conns().iter().filter(|m| !m.is_closed()).count()
    }

    /// Stops the public listeners (connections already accepted carry on).
    pub(crate) fn stop_listeners(&self) {
        for svc in self.services().values() {
            if let Some(t) = &svc.task {
                t.abort();
            }
        }
    }

    /// Closes every connection of the session.
    pub(crate) fn abort_all(&self, reason: &str) {
        for m in self.conns().drain(..) {
            m.abort(reason);
        }
    }
}
