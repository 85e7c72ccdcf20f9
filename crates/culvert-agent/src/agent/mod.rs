//! The agent's pool of tunnel connections and what each one does. Each pool slot
//! connects (see `connect`: dial, TLS, Auth, Register) and then forwards the streams the
//! server opens (see `forward`).

mod connect;
mod forward;
mod register_retry;
mod servers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use culvert_proto::Config;
use culvert_transport::tls::{client_config, Verify};
use culvert_transport::ws::ServerUrl;
use culvert_transport::{Mux, RelayCounters, TunnelStream};
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use connect::{connect, Connected};
use forward::serve;
use servers::{effective_pool, Endpoint, Route};

use crate::{Backoff, FailureKind, ServiceSpec};

/// Everything the agent needs.
#[derive(Clone)]
pub struct AgentConfig {
    /// Server to dial (the first of a cluster's servers).
    pub server: ServerUrl,
    /// Further servers of the same cluster, after `server`: the pool spreads over all of
    /// them (slot `i` on server `i % n`, at least one connection each), and a slot whose
    /// server fails tries the others in order. Empty: `server` alone, as before.
    pub extra_servers: Vec<ServerUrl>,
    /// How often a slot away from its home server (after a failover) checks whether home
    /// answers again (a TCP connect, then the full handshake), to move back; `None` never.
    pub home_probe_interval: Option<Duration>,
    /// Bearer token (never logged: see the `Debug` impl).
    pub token: String,
    /// Services to expose.
    pub services: Vec<ServiceSpec>,
    /// WebSocket connections kept open; streams spread across them. 4: a lost segment
    /// or one bulk stream stalls only a quarter of the streams, and both cores get work.
    pub pool: usize,
    /// How the server's certificate is verified (for `wss://`).
    pub verify: Verify,
    /// Multiplexer settings (heartbeat interval and dead-peer timeout among them).
    pub proto: Config,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Deadline for TCP connect, TLS, upgrade, Auth and registration.
    pub connect_timeout: Duration,
    /// Deadline for dialing a local target.
    pub dial_timeout: Duration,
    /// A UDP flow idle this long is closed (its socket towards the target released).
    pub udp_idle_timeout: Duration,
    /// UDP flows one tunnel connection may hold.
    pub udp_max_flows: usize,
    /// Mask every WebSocket frame even when the server would take them unmasked, for a
    /// path through a proxy that inspects WebSocket frames (see `ws::UNMASKED_HEADER`).
    pub ws_mask: bool,
    /// HTTP proxy the server is reached through (`CONNECT`), unless the server's host is
    /// in its bypass list; `None` dials directly. Never logged with its password.
    pub proxy: Option<culvert_transport::Proxy>,
    /// Stop (see [`AgentHandle::permanent_failure`]) at the first permanent error (refused
    /// token, untrusted certificate, refused port) instead of retrying at the longest
    /// backoff: for supervisors that should see the failure.
    pub exit_on_auth_failure: bool,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("extra_servers", &self.extra_servers)
            .field("token", &"<redacted>")
            .field("services", &self.services)
            .field("pool", &self.pool)
            .field("verify", &self.verify)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// Defaults for an agent of `server` with `token`.
    pub fn new(server: ServerUrl, token: String, services: Vec<ServiceSpec>) -> AgentConfig {
        AgentConfig {
            server,
            extra_servers: Vec::new(),
            home_probe_interval: Some(Duration::from_secs(30)),
            token,
            services,
            pool: 4,
            verify: Verify::SystemRoots,
            proto: Config::default(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(60),
            udp_max_flows: 16_384,
            ws_mask: false,
            proxy: None,
            exit_on_auth_failure: false,
        }
    }

    /// Every server to dial: `server`, then `extra_servers`, each once.
    pub fn servers(&self) -> Vec<ServerUrl> {
        let mut all = vec![self.server.clone()];
        for s in &self.extra_servers {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        all
    }
}

/// What the pool slots and the handle share.
pub(crate) struct Shared {
    /// The configuration, with `pool` made the effective pool (at least one per server).
    config: AgentConfig,
    /// The servers slots dial, by index (see [`AgentConfig::servers`]; a name resolving
    /// to several addresses at start is one server per address).
    servers: Vec<Endpoint>,
    /// Public port per (server, service): what a reconnecting slot asks that server for.
    server_ports: Mutex<HashMap<(usize, String), u16>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: Uuid,
    /// Public port per service, as the server last reported it.
    ports: Mutex<HashMap<String, u16>>,
    /// Pool connections currently authenticated and registered.
    up: AtomicUsize,
    /// Those connections, for metrics.
    live: Mutex<Vec<Mux>>,
    /// Connections left for the home server, finishing their streams (closed at shutdown).
    retiring: Mutex<Vec<Mux>>,
    /// Connection attempts that failed, and connections lost.
    failures: std::sync::atomic::AtomicU64,
    state_tx: watch::Sender<usize>,
    /// What each pool slot is doing and on which server, for status views.
    slots: Mutex<Vec<SlotInfo>>,
    /// The last reason a connection failed or was lost.
    last_error: Mutex<Option<String>>,
    /// Traffic per service, by name.
    counters: HashMap<String, Arc<ServiceCounters>>,
    /// Round-robin cursor for streams this side opens.
    next_open: AtomicUsize,
    /// UDP flows this side opened, for the datagram pumps.
    local_flows: Arc<crate::local_flows::LocalFlows>,
    /// Datagrams dropped on their way to this agent's UDP services, over all connections.
    udp_target_drops: Arc<culvert_transport::udp_target::TargetDrops>,
    /// Pooled connections, open and ended, for the counters summed over them.
    connections: culvert_transport::metrics::MuxLedger,
    /// The last permanent error logged (logged once, not once per slot and attempt).
    permanent_logged: Mutex<Option<String>>,
    /// Set at a permanent error when `exit_on_auth_failure` is on.
    permanent_tx: watch::Sender<Option<String>>,
}

#[derive(Debug, Clone, Copy)]
enum SlotState {
    Connecting,
    Up,
    BackingOff(Instant),
}

/// One pool slot: its state, the server it is on (or dialing) and its home server.
#[derive(Debug, Clone)]
struct SlotInfo {
    state: SlotState,
    server: usize,
    home: usize,
    /// Services this slot's connection has not registered yet (refused for now).
    unregistered: Vec<String>,
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
}

/// The running agent.
pub struct Agent;

/// Handle to a running agent.
pub struct AgentHandle {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    state_rx: watch::Receiver<usize>,
}

impl AgentHandle {
    /// Public ports by service name, as assigned by the server.
    pub fn ports(&self) -> HashMap<String, u16> {
        self.shared.ports()
    }

    /// Pooled connections currently up and registered.
    pub fn connections_up(&self) -> usize {
        self.shared.connections_up()
    }

    /// Whether the link is connected, connecting or backing off.
    pub fn link_state(&self) -> LinkState {
        if self.connections_up() > 0 {
            return LinkState::Connected;
        }
        let now = Instant::now();
        let slots = lock(&self.shared.slots);
        let mut earliest = None::<Instant>;
        for s in slots.iter() {
            match &s.state {
                SlotState::Up | SlotState::Connecting => return LinkState::Connecting,
                SlotState::BackingOff(t) => earliest = Some(earliest.map_or(*t, |e| e.min(*t))),
            }
        }
        match earliest {
            Some(t) => LinkState::BackingOff {
                retry_in: t.saturating_duration_since(now),
            },
            None => LinkState::Connecting,
        }
    }

    /// Resolves with the error when the agent stopped at a permanent error (only with
    /// `exit_on_auth_failure`; otherwise never).
    pub async fn permanent_failure(&self) -> String {
        let mut rx = self.shared.permanent_tx.subscribe();
        let got = rx
            .wait_for(|e| e.is_some())
            .await
            .map(|e| e.clone().unwrap_or_default());
        match got {
            Ok(e) => e,
            Err(_) => std::future::pending().await,
        }
    }

    /// Each pooled connection: its server, home server and state.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        self.shared.connections()
    }

    /// The servers the agent spreads its pool over, as `ws[s]://HOST:PORT`.
    pub fn servers(&self) -> Vec<String> {
        self.shared.servers.iter().map(Endpoint::text).collect()
    }

    /// Why the last connection attempt failed or the last connection was lost.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// The smallest latest heartbeat round trip over the live connections.
    pub fn rtt(&self) -> Option<Duration> {
        lock(&self.shared.live)
            .iter()
            .filter_map(|m| m.stats().rtt)
            .min()
    }

    /// Traffic counters of the service `name`, if the agent exposes it.
    pub fn service_counters(&self, name: &str) -> Option<Arc<ServiceCounters>> {
        self.shared.counters.get(name).cloned()
    }

    /// Opens a stream towards `target` (a service name on the server side, or `HOST:PORT`
    /// for a node to dial) over the next live pooled connection. Errors when none is up.
    pub async fn open(&self, target: &str) -> Result<TunnelStream, crate::OpenError> {
        self.open_on(target).await.map(|(_, s)| s)
    }

    /// Opens a UDP flow to `HOST:PORT` dialed by the peer (a node's forward UDP tunnel):
    /// a stream with target `udp://HOST:PORT` announces it, and the stream's id is its flow id.
    pub async fn open_flow(&self, target: &str) -> Result<crate::LocalFlow, crate::OpenError> {
        let (mux, stream) = self.open_on(&format!("udp://{target}")).await?;
        Ok(crate::LocalFlow::register(
            &self.shared.local_flows,
            mux,
            stream,
        ))
    }

    async fn open_on(&self, target: &str) -> Result<(Mux, TunnelStream), crate::OpenError> {
        let mux = {
            let live = lock(&self.shared.live);
            // A suspect connection (silent past a heartbeat) gets no new stream.
            let usable: Vec<&Mux> = live.iter().filter(|m| m.takes_new_streams()).collect();
            if usable.is_empty() {
                return Err(crate::OpenError::NotConnected);
            }
            let k = self.shared.next_open.fetch_add(1, Ordering::Relaxed);
            usable[k % usable.len()].clone()
        };
        let stream = tokio::time::timeout(self.shared.config.connect_timeout, mux.open(target))
            .await
            .map_err(|_| crate::OpenError::Timeout)??;
        Ok((mux, stream))
    }

    /// Graceful stop: tells the server on every connection that no new streams are taken,
    /// gives the streams in flight up to `grace` to finish, then stops.
    pub async fn drain(&self, grace: Duration) {
        let mut live = lock(&self.shared.live).clone();
        live.extend(lock(&self.shared.retiring).iter().cloned());
        culvert_transport::drain(&live, "agent shutting down", grace).await;
        self.shutdown();
    }

    /// Pooled connections up but suspect: silent past a heartbeat interval with a
    /// heartbeat unanswered, so they get no new streams.
    pub fn connections_suspect(&self) -> usize {
        self.shared.connections_suspect()
    }

    /// Ready when every pooled connection is up, has registered every service and is not
    /// suspect (a connection on a silent path does not count).
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Prometheus text exposition of the agent's state and counters (this agent's metrics
    /// alone; a process registers them once with [`AgentHandle::register_metrics`]).
    pub fn metrics(&self) -> String {
        culvert_transport::metrics::text_of(|r| self.register_metrics(r))
    }

    /// Adds the agent's metrics to the process's registry: they are read from the
    /// agent's counters at each scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(crate::metrics::AgentCollector(
            self.shared.clone(),
        )));
    }

    /// The number of pooled connections up and registered, as a watch: embedders (the
    /// `culvert` library's readiness watch) wake on each change instead of polling.
    pub fn watch_connections(&self) -> watch::Receiver<usize> {
        self.state_rx.clone()
    }

    /// Waits until every pooled connection is up (or the timeout passes); returns whether it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let want = self.shared.config.pool;
        let mut rx = self.state_rx.clone();
        let ready = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= want)).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Stops the agent: its connections close and nothing reconnects.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        for m in lock(&self.shared.retiring).drain(..) {
            m.abort("agent stopping");
        }
    }

    /// Waits until the agent's tasks end (they only end by [`AgentHandle::shutdown`]).
    pub async fn join(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Shared {
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
    fn set_slot(&self, slot: usize, state: SlotState, server: usize) {
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

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Agent {
    /// Starts the pool. Each slot connects, authenticates, registers every service and
    /// serves streams, reconnecting by itself with backoff when it drops.
    pub fn spawn(
        mut config: AgentConfig,
    ) -> Result<AgentHandle, culvert_transport::TransportError> {
        let servers = servers::endpoints(&config.servers(), |u| {
            servers::resolve_now(u, config.proxy.as_ref())
        });
        let tls = if servers.iter().any(|s| s.url.tls) {
            Some(client_config(&config.verify).map_err(|e| match e {
                culvert_transport::TransportError::NoSystemRoots => {
                    culvert_transport::TransportError::Tls(
                        "no system root certificates to verify the server with; use --ca or --fingerprint"
                            .into(),
                    )
                }
                e => e,
            })?)
        } else {
            None
        };
        config.pool = effective_pool(config.pool, servers.len());
        let (state_tx, state_rx) = watch::channel(0);
        let slots = (0..config.pool)
            .map(|slot| {
                let home = Route::new(slot, servers.len()).home();
                SlotInfo {
                    state: SlotState::Connecting,
                    server: home,
                    home,
                    unregistered: Vec::new(),
                }
            })
            .collect();
        let shared = Arc::new(Shared {
            servers,
            server_ports: Mutex::new(HashMap::new()),
            tls,
            client_id: Uuid::new_v4(),
            ports: Mutex::new(HashMap::new()),
            up: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
            retiring: Mutex::new(Vec::new()),
            failures: Default::default(),
            state_tx,
            slots: Mutex::new(slots),
            last_error: Mutex::new(None),
            counters: config
                .services
                .iter()
                .map(|s| (s.name.clone(), Arc::default()))
                .collect(),
            next_open: AtomicUsize::new(0),
            local_flows: Arc::default(),
            udp_target_drops: Arc::default(),
            connections: Default::default(),
            permanent_logged: Mutex::new(None),
            permanent_tx: watch::channel(None).0,
            config,
        });
        let tasks = (0..shared.config.pool)
            .map(|slot| {
                let span = tracing::info_span!("tunnel", slot);
                tokio::spawn(run_slot(shared.clone(), slot).instrument(span))
            })
            .collect();
        Ok(AgentHandle {
            shared,
            tasks,
            state_rx,
        })
    }
}

/// How long a connection left for the home server keeps its streams in flight.
const MOVE_GRACE: Duration = Duration::from_secs(300);

/// A connection up this long before it was lost counts as a working one (its loss starts
/// a new round over the servers); one lost sooner counts as its server failing.
const STABLE: Duration = Duration::from_secs(10);

/// How a served connection ended.
enum Ended {
    /// Lost (closed, dropped, refused a registration for good), with the reason.
    Lost(String),
    /// The home server answered again: this connection to it replaces the current one.
    Home(Box<Connected>),
}

async fn run_slot(shared: Arc<Shared>, slot: usize) {
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    let mut route = Route::new(slot, shared.servers.len());
    // A connection to home made by the home check, served next.
    let mut next: Option<Connected> = None;
    loop {
        let server = route.current();
        let attempt = match next.take() {
            Some(c) => Ok(c),
            None => {
                shared.set_slot(slot, SlotState::Connecting, server);
                connect(&shared, server).await
            }
        };
        match attempt {
            Ok(c) => {
                let since = Instant::now();
                match serve_connection(&shared, slot, &route, c, &mut backoff).await {
                    Ended::Home(c) => {
                        route.go_home();
                        next = Some(*c);
                        continue;
                    }
                    Ended::Lost(_) => {
                        // A connection that lasted counts as a success; one dropped at
                        // once counts as its server failing, so servers that take the
                        // handshake and then drop cannot make a hot loop.
                        if since.elapsed() >= STABLE {
                            route.connected();
                        }
                        // Another server is tried at once; after every one failed in a
                        // row (or with one server), the backoff applies.
                        if !route.failed() {
                            continue;
                        }
                    }
                }
            }
            Err(f) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.last_error) = Some(f.message.clone());
                let url = shared.servers[server].text();
                match f.kind {
                    FailureKind::Transient => {
                        tracing::warn!(error = ?f.message, server = %url, "could not establish tunnel connection");
                        if !route.failed() {
                            continue;
                        }
                    }
                    FailureKind::RetryIn(wait) => {
                        tracing::warn!(error = ?f.message, server = %url, ?wait, "could not establish tunnel connection; the server asked to wait");
                        route.failed();
                        let delay = wait.max(backoff.next_delay());
                        shared.set_slot(
                            slot,
                            SlotState::BackingOff(Instant::now() + delay),
                            route.current(),
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    FailureKind::Permanent => {
                        let first = lock(&shared.permanent_logged).replace(f.message.clone())
                            != Some(f.message.clone());
                        if first {
                            tracing::error!(error = ?f.message, server = %url, retry_every = ?shared.config.backoff_max,
                                exit = shared.config.exit_on_auth_failure,
                                "permanent error: retrying cannot help until the configuration is fixed");
                        } else {
                            tracing::debug!(error = ?f.message, "permanent error again");
                        }
                        if shared.config.exit_on_auth_failure {
                            shared.permanent_tx.send_replace(Some(f.message));
                            shared.set_slot(
                                slot,
                                SlotState::BackingOff(Instant::now() + shared.config.backoff_max),
                                server,
                            );
                            return;
                        }
                        backoff.exhaust();
                        // Another server of the list may know the token (a cluster server
                        // that has not heard of a new one, a server with its own token
                        // file): it is tried at once. Only when every server refused does
                        // the slot wait out the longest backoff.
                        if !route.failed() {
                            continue;
                        }
                    }
                }
            }
        }
        let delay = backoff.next_delay();
        shared.set_slot(
            slot,
            SlotState::BackingOff(Instant::now() + delay),
            route.current(),
        );
        tracing::info!(slot, ?delay, "reconnecting after backoff");
        tokio::time::sleep(delay).await;
    }
}

/// Serves one connection of `slot` until it is lost, or until the slot's home server
/// answers again while the slot is away from it.
async fn serve_connection(
    shared: &Arc<Shared>,
    slot: usize,
    route: &Route,
    c: Connected,
    backoff: &mut Backoff,
) -> Ended {
    let server = route.current();
    let mux = c.mux.clone();
    if route.away() {
        tracing::info!(server = %shared.servers[server].text(), home = %shared.servers[route.home()].text(),
            "connected to another server than this slot's own (failover)");
    }
    shared.set_slot(slot, SlotState::Up, server);
    shared.set_unregistered(slot, c.pending.names());
    mux.measure_rtt();
    shared.connections.open(&mux);
    // If this task is aborted (agent shutdown), the connection goes with it.
    let guard = CloseOnDrop(mux.clone(), shared.clone());
    lock(&shared.live).push(mux.clone());
    backoff.reset();
    *lock(&shared.permanent_logged) = None;
    shared.up.fetch_add(1, Ordering::SeqCst);
    shared.state_tx.send_modify(|n| *n += 1);
    let serving = serve(shared, slot, server, c);
    let ended = match shared.config.home_probe_interval {
        Some(every) if route.away() => {
            tokio::select! {
                reason = serving => Ended::Lost(reason),
                home = home_answers(shared, route.home(), every) => Ended::Home(Box::new(home)),
            }
        }
        _ => Ended::Lost(serving.await),
    };
    shared.up.fetch_sub(1, Ordering::SeqCst);
    shared.state_tx.send_modify(|n| *n -= 1);
    lock(&shared.live).retain(|m| !m.same(&mux));
    match &ended {
        Ended::Lost(reason) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            let url = shared.servers[server].text();
            tracing::warn!(reason = ?reason, server = %url, "tunnel connection lost");
            *lock(&shared.last_error) = Some(format!("connection lost: {reason}"));
        }
        Ended::Home(_) => {
            let home = shared.servers[route.home()].text();
            tracing::info!(%home, "home server answers again; this slot moves back to it");
            // The old connection takes no new streams; those in flight may finish.
            lock(&shared.retiring).push(mux.clone());
            let shared = shared.clone();
            tokio::spawn(async move {
                culvert_transport::drain(
                    std::slice::from_ref(&mux),
                    "moving to another server",
                    MOVE_GRACE,
                )
                .await;
                lock(&shared.retiring).retain(|m| !m.same(&mux));
                drop(guard);
            });
        }
    }
    ended
}

/// Resolves with a new connection to the home server `home` once it answers: every
/// `every`, a plain TCP connect (a dead home costs one SYN), and when that works the full
/// handshake. Runs beside the connection it may replace, never in its path.
async fn home_answers(shared: &Arc<Shared>, home: usize, every: Duration) -> Connected {
    let endpoint = &shared.servers[home];
    let url = &endpoint.url;
    let direct = shared
        .config
        .proxy
        .as_ref()
        .is_none_or(|p| !p.applies_to(&url.host));
    loop {
        tokio::time::sleep(every).await;
        if direct {
            let dial = async {
                match endpoint.addr {
                    Some(a) => tokio::net::TcpStream::connect(a).await,
                    None => tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await,
                }
            };
            let tcp = tokio::time::timeout(shared.config.connect_timeout, dial).await;
            if !matches!(tcp, Ok(Ok(_))) {
                tracing::debug!(home = %endpoint.text(), "home server still not answering");
                continue;
            }
        }
        match connect(shared, home).await {
            Ok(c) => return c,
            Err(f) => {
                tracing::debug!(home = %endpoint.text(), error = ?f.message, "home server not back yet")
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes a connection when its owning task ends, however it ends, and moves its figures
/// to the ended connections' in the agent's ledger.
struct CloseOnDrop(Mux, Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.abort("agent stopping");
        self.1.connections.close(&self.0);
    }
}
