//! The agent's pool of tunnel connections and what each one does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use culvert_proto::control::{AuthExt, RegisterExt, CULVERT_VERSION, MIN_CULVERT_VERSION};
use culvert_proto::{
    reset_code, Config, Connection, Control, ServiceProtocol, Side, Target, Token,
};
use culvert_transport::tls::{client_config, Verify};
use culvert_transport::ws::{dial, ServerUrl};
use culvert_transport::{relay_tcp_counted, tune_tcp, Mux, MuxEvent, RelayCounters, TunnelStream};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::{Backoff, Failure, FailureKind, ServiceSpec};

/// Everything the agent needs.
#[derive(Clone)]
pub struct AgentConfig {
    /// Server to dial.
    pub server: ServerUrl,
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
    /// Stop (see [`AgentHandle::permanent_failure`]) at the first permanent error (refused
    /// token, untrusted certificate, refused port) instead of retrying at the longest
    /// backoff: for supervisors that should see the failure.
    pub exit_on_auth_failure: bool,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("services", &self.services)
            .field("pool", &self.pool)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// Defaults for an agent of `server` with `token`.
    pub fn new(server: ServerUrl, token: String, services: Vec<ServiceSpec>) -> AgentConfig {
        AgentConfig {
            server,
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
            exit_on_auth_failure: false,
        }
    }
}

struct Shared {
    config: AgentConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: Uuid,
    /// Public port per service, as the server last reported it.
    ports: Mutex<HashMap<String, u16>>,
    /// Pool connections currently authenticated and registered.
    up: AtomicUsize,
    /// Those connections, for metrics.
    live: Mutex<Vec<Mux>>,
    /// Connection attempts that failed, and connections lost.
    failures: std::sync::atomic::AtomicU64,
    state_tx: watch::Sender<usize>,
    /// What each pool slot is doing, for status views.
    slots: Mutex<Vec<SlotState>>,
    /// The last reason a connection failed or was lost.
    last_error: Mutex<Option<String>>,
    /// Traffic per service, by name.
    counters: HashMap<String, Arc<ServiceCounters>>,
    /// Round-robin cursor for streams this side opens.
    next_open: AtomicUsize,
    /// UDP flows this side opened, for the datagram pumps.
    local_flows: Arc<crate::local_flows::LocalFlows>,
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
        self.shared
            .ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pooled connections currently up and registered.
    pub fn connections_up(&self) -> usize {
        self.shared.up.load(Ordering::SeqCst)
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
            match s {
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
    pub async fn open(&self, target: &str) -> Result<TunnelStream, String> {
        self.open_on(target).await.map(|(_, s)| s)
    }

    /// Opens a UDP flow to `HOST:PORT` dialed by the peer (a node's forward UDP tunnel):
    /// a stream with target `udp://HOST:PORT` announces it, and the stream's id is its flow id.
    pub async fn open_flow(&self, target: &str) -> Result<crate::LocalFlow, String> {
        let (mux, stream) = self.open_on(&format!("udp://{target}")).await?;
        Ok(crate::LocalFlow::register(
            &self.shared.local_flows,
            mux,
            stream,
        ))
    }

    async fn open_on(&self, target: &str) -> Result<(Mux, TunnelStream), String> {
        let mux = {
            let live = lock(&self.shared.live);
            // A suspect connection (silent past a heartbeat) gets no new stream.
            let usable: Vec<&Mux> = live.iter().filter(|m| m.takes_new_streams()).collect();
            if usable.is_empty() {
                return Err("no live tunnel connection (all are down or suspect)".into());
            }
            let k = self.shared.next_open.fetch_add(1, Ordering::Relaxed);
            usable[k % usable.len()].clone()
        };
        let stream = tokio::time::timeout(self.shared.config.connect_timeout, mux.open(target))
            .await
            .map_err(|_| "timed out opening a stream (peer's stream limit reached)".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok((mux, stream))
    }

    /// Graceful stop: tells the server on every connection that no new streams are taken,
    /// gives the streams in flight up to `grace` to finish, then stops.
    pub async fn drain(&self, grace: Duration) {
        let live = lock(&self.shared.live).clone();
        culvert_transport::drain(&live, "agent shutting down", grace).await;
        self.shutdown();
    }

    /// Pooled connections up but suspect: silent past a heartbeat interval with a
    /// heartbeat unanswered, so they get no new streams.
    pub fn connections_suspect(&self) -> usize {
        lock(&self.shared.live)
            .iter()
            .filter(|m| m.is_suspect())
            .count()
    }

    /// Ready when every pooled connection is up, has registered every service and is not
    /// suspect (a connection on a silent path does not count).
    pub fn is_ready(&self) -> bool {
        let pool = self.shared.config.pool.max(1);
        self.connections_up()
            .saturating_sub(self.connections_suspect())
            >= pool
    }

    /// Prometheus text exposition of the agent's state and counters.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            culvert_transport::prom::family(&mut out, name, kind, help, &samples)
        };
        let live = lock(&self.shared.live).clone();
        let (mut open, mut opened, mut sent, mut recv) = (0usize, 0u64, 0u64, 0u64);
        let (mut dg_drop_send, mut dg_drop_recv) = (0u64, 0u64);
        let mut rtts = Vec::new();
        for (i, m) in live.iter().enumerate() {
            let st = m.stats();
            dg_drop_send += st.proto.datagrams_dropped_send;
            dg_drop_recv += st.proto.datagrams_dropped_recv;
            open += st.open_streams;
            opened += st.proto.streams_opened;
            sent += st.proto.stream_bytes_sent;
            recv += st.proto.stream_bytes_received;
            if let Some(r) = st.rtt {
                rtts.push((format!("connection=\"{i}\""), r.as_secs_f64()));
            }
        }
        let one = |v: f64| vec![(String::new(), v)];
        gauge(
            "culvert_agent_connections_up",
            "gauge",
            "Pooled connections authenticated and registered.",
            one(self.connections_up() as f64),
        );
        gauge(
            "culvert_agent_connections_suspect",
            "gauge",
            "Pooled connections silent past a heartbeat with a heartbeat unanswered (given no new streams).",
            one(self.connections_suspect() as f64),
        );
        gauge(
            "culvert_agent_pool_size",
            "gauge",
            "Pooled connections configured.",
            one(self.shared.config.pool as f64),
        );
        gauge(
            "culvert_agent_ready",
            "gauge",
            "1 when every pooled connection is up, registered and not suspect.",
            one(f64::from(u8::from(self.is_ready()))),
        );
        gauge(
            "culvert_agent_connection_failures_total",
            "counter",
            "Failed connection attempts and lost connections.",
            one(self.shared.failures.load(Ordering::Relaxed) as f64),
        );
        let ports = self.ports();
        gauge(
            "culvert_agent_service_public_port",
            "gauge",
            "Public port the server assigned to each service.",
            ports
                .iter()
                .map(|(n, p)| {
                    (
                        format!("service=\"{}\"", culvert_transport::prom::label(n)),
                        f64::from(*p),
                    )
                })
                .collect(),
        );
        gauge(
            "culvert_streams_open",
            "gauge",
            "Multiplexed streams holding state.",
            one(open as f64),
        );
        gauge(
            "culvert_streams_opened_total",
            "counter",
            "Streams opened on live connections.",
            one(opened as f64),
        );
        gauge(
            "culvert_tunnel_stream_bytes_total",
            "counter",
            "Stream payload bytes on live connections, by direction.",
            vec![
                ("direction=\"sent\"".into(), sent as f64),
                ("direction=\"received\"".into(), recv as f64),
            ],
        );
        gauge(
            "culvert_heartbeat_rtt_seconds",
            "gauge",
            "Latest heartbeat round trip per pooled connection.",
            rtts,
        );
        culvert_transport::prom::datagrams_dropped(&mut out, dg_drop_send, dg_drop_recv);
        out
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
    }

    /// Waits until the agent's tasks end (they only end by [`AgentHandle::shutdown`]).
    pub async fn join(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
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
    pub fn spawn(config: AgentConfig) -> Result<AgentHandle, culvert_transport::TransportError> {
        let tls = if config.server.tls {
            Some(client_config(&config.verify)?)
        } else {
            None
        };
        let (state_tx, state_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            tls,
            client_id: Uuid::new_v4(),
            ports: Mutex::new(HashMap::new()),
            up: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
            failures: Default::default(),
            state_tx,
            slots: Mutex::new(vec![SlotState::Connecting; config.pool.max(1)]),
            last_error: Mutex::new(None),
            counters: config
                .services
                .iter()
                .map(|s| (s.name.clone(), Arc::default()))
                .collect(),
            next_open: AtomicUsize::new(0),
            local_flows: Arc::default(),
            permanent_logged: Mutex::new(None),
            permanent_tx: watch::channel(None).0,
            config,
        });
        let tasks = (0..shared.config.pool.max(1))
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

async fn run_slot(shared: Arc<Shared>, slot: usize) {
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    loop {
        lock(&shared.slots)[slot] = SlotState::Connecting;
        match connect(&shared).await {
            Ok((mux, events, ids, early)) => {
                lock(&shared.slots)[slot] = SlotState::Up;
                mux.measure_rtt();
                // If this task is aborted (agent shutdown), the connection goes with it.
                let _guard = CloseOnDrop(mux.clone());
                lock(&shared.live).push(mux.clone());
                backoff.reset();
                *lock(&shared.permanent_logged) = None;
                shared.up.fetch_add(1, Ordering::SeqCst);
                shared.state_tx.send_modify(|n| *n += 1);
                let reason = serve(&shared, &mux, events, ids, early).await;
                shared.up.fetch_sub(1, Ordering::SeqCst);
                shared.state_tx.send_modify(|n| *n -= 1);
                lock(&shared.live).retain(|m| !m.same(&mux));
                shared.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = ?reason, "tunnel connection lost");
                *lock(&shared.last_error) = Some(format!("connection lost: {reason}"));
            }
            Err(f) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.last_error) = Some(f.message.clone());
                match f.kind {
                    FailureKind::Transient => {
                        tracing::warn!(error = ?f.message, "could not establish tunnel connection")
                    }
                    FailureKind::RetryIn(wait) => {
                        tracing::warn!(error = ?f.message, ?wait, "could not establish tunnel connection; the server asked to wait");
                        let delay = wait.max(backoff.next_delay());
                        lock(&shared.slots)[slot] = SlotState::BackingOff(Instant::now() + delay);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    FailureKind::Permanent => {
                        let first = lock(&shared.permanent_logged).replace(f.message.clone())
                            != Some(f.message.clone());
                        if first {
                            tracing::error!(error = ?f.message, retry_every = ?shared.config.backoff_max,
                                exit = shared.config.exit_on_auth_failure,
                                "permanent error: retrying cannot help until the configuration is fixed");
                        } else {
                            tracing::debug!(error = ?f.message, "permanent error again");
                        }
                        if shared.config.exit_on_auth_failure {
                            shared.permanent_tx.send_replace(Some(f.message));
                            lock(&shared.slots)[slot] =
                                SlotState::BackingOff(Instant::now() + shared.config.backoff_max);
                            return;
                        }
                        backoff.exhaust();
                    }
                }
            }
        }
        let delay = backoff.next_delay();
        lock(&shared.slots)[slot] = SlotState::BackingOff(Instant::now() + delay);
        tracing::info!(slot, ?delay, "reconnecting after backoff");
        tokio::time::sleep(delay).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes a connection when its owning task ends, however it ends.
struct CloseOnDrop(Mux);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.abort("agent stopping");
    }
}

/// Dials, authenticates and registers, all under the connect deadline.
type Connected = (
    Mux,
    tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    HashMap<Uuid, ServiceSpec>,
    Vec<MuxEvent>,
);

async fn connect(shared: &Arc<Shared>) -> Result<Connected, Failure> {
    let cfg = &shared.config;
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let ws = tokio::time::timeout_at(
        deadline,
        dial(
            &cfg.server,
            shared.tls.clone(),
            cfg.proto.idle_timeout,
            cfg.ws_mask,
        ),
    )
    .await
    .map_err(|_| Failure::transient("timed out connecting to the server"))?
    .map_err(|e| Failure::dial(&cfg.server, &e))?;
    let mut conn = Connection::new(Side::Client, cfg.proto.clone(), Instant::now())
        .map_err(|e| Failure::transient(e.to_string()))?;
    conn.send_control_first(Control::Auth {
        token: Token(cfg.token.clone()),
        client_id: shared.client_id,
        ext: Some(AuthExt {
            version: CULVERT_VERSION,
            capabilities: 0,
        }),
    })
    .map_err(|e| Failure::transient(e.to_string()))?;
    let (mux, mut events) = Mux::spawn_with(ws, conn);
    // The server may route public clients to this connection while it is still
    // registering: their streams and Connects wait here and are served right after.
    let mut early = Vec::new();
    let handshake = async {
        // Auth reply.
        match next_control(&mux, &mut events, &mut early)
            .await
            .map_err(Failure::transient)?
        {
            // An older server would open streams in the protocol-1 form: refused before any.
            Control::AuthOk { ext, .. } => {
                let version = ext.map(|e| e.version);
                if version.is_none_or(|v| v < MIN_CULVERT_VERSION) {
                    return Err(Failure::version(version));
                }
            }
            Control::AuthFail { reason } => return Err(Failure::auth(&reason)),
            other => {
                return Err(Failure::transient(format!(
                    "unexpected {:?} before AuthOk",
                    other.frame_type()
                )))
            }
        }
        // Register every service, one at a time (replies come in order). A service with no
        // configured port asks for the port it had before, so a restarted server (which
        // remembers nothing) gives clients the same port back; if that port is taken now,
        // it asks again for any port.
        let mut ids = HashMap::new();
        for svc in &cfg.services {
            let mut ask = match svc.remote_port {
                0 if !svc.private => lock(&shared.ports).get(&svc.name).copied().unwrap_or(0),
                configured => configured,
            };
            let (service_id, ext) = loop {
                mux.send_control(Control::Register {
                    name: svc.name.clone(),
                    protocol: svc.protocol,
                    local_port: svc.local_port(),
                    remote_port: ask,
                    // Only a private service needs the extension (plain v1 servers ignore it).
                    ext: svc.private.then_some(RegisterExt { flags: 1 }),
                })
                .map_err(|e| Failure::transient(e.to_string()))?;
                match next_control(&mux, &mut events, &mut early)
                    .await
                    .map_err(Failure::transient)?
                {
                    Control::RegisterOk { service_id, ext } => break (service_id, ext),
                    Control::RegisterFail { reason } if ask != svc.remote_port => {
                        tracing::info!(service = %svc.name, port = ask, reason = ?reason, "previous public port not available; asking for any");
                        ask = svc.remote_port;
                    }
                    Control::RegisterFail { reason } => {
                        return Err(Failure::register(&svc.name, &reason))
                    }
                    other => {
                        return Err(Failure::transient(format!(
                            "unexpected {:?} before RegisterOk",
                            other.frame_type()
                        )))
                    }
                }
            };
            ids.insert(service_id, svc.clone());
            let port = ext.map(|e| e.assigned_port).unwrap_or(0);
            let previous = lock(&shared.ports).insert(svc.name.clone(), port);
            if previous != Some(port) {
                tracing::info!(service = %svc.name, target = %svc.target, public_port = port, "service exposed");
            }
        }
        Ok::<_, Failure>(ids)
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(ids)) => Ok((mux, events, ids, early)),
        Ok(Err(e)) => {
            mux.abort(&e.message);
            Err(e)
        }
        Err(_) => {
            mux.abort("timeout");
            Err(Failure::transient(
                "timed out authenticating and registering",
            ))
        }
    }
}

/// The next reply to Auth or Register; public connections arriving meanwhile (their
/// streams and Connects) are set aside in `early`, bounded by the stream and flow limits.
async fn next_control(
    mux: &Mux,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    early: &mut Vec<MuxEvent>,
) -> Result<Control, String> {
    loop {
        match events.recv().await {
            Some(MuxEvent::Control(c @ Control::Connect { .. })) => {
                early.push(MuxEvent::Control(c))
            }
            Some(MuxEvent::Control(c)) => {
                mux.control_handled();
                return Ok(c);
            }
            Some(MuxEvent::Closed(r)) | Some(MuxEvent::GoingAway(r)) => return Err(r),
            Some(ev @ MuxEvent::Incoming(..)) => early.push(ev),
            None => return Err("connection closed".into()),
        }
    }
}

/// Serves one connection until it closes: relays each inbound stream to its service, and
/// each UDP Connect to a flow.
async fn serve(
    shared: &Arc<Shared>,
    mux: &Mux,
    mut events: tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    ids: HashMap<Uuid, ServiceSpec>,
    early: Vec<MuxEvent>,
) -> String {
    let flows = Arc::new(culvert_transport::udp_target::TargetFlows::default());
    mux.set_datagram_sink(crate::local_flows::sink(
        mux,
        flows.clone(),
        shared.local_flows.clone(),
    ));
    let targets: HashMap<String, ServiceSpec> = shared
        .config
        .services
        .iter()
        .map(|s| (s.name.clone(), s.clone()))
        .collect();
    let mut early = early.into_iter();
    loop {
        let ev = match early.next() {
            Some(ev) => ev,
            None => match events.recv().await {
                Some(ev) => ev,
                None => break,
            },
        };
        match ev {
            // The open carries the service and the public client: served at once, with no
            // Connect to wait for (PROTOCOL.md §8 step 5).
            MuxEvent::Incoming(
                stream,
                Target::Inbound {
                    service,
                    connection_id,
                    client_addr,
                },
            ) => {
                let Some(svc) = targets.get(&service) else {
                    tracing::warn!(service = ?service, "server opened a stream for an unknown service");
                    stream.reset(reset_code::REFUSED);
                    let _ = mux.send_control(Control::ConnectFail {
                        connection_id,
                        reason: "no such service".into(),
                    });
                    continue;
                };
                let counters = shared.counters.get(&svc.name).cloned().unwrap_or_default();
                let span = tracing::debug_span!("conn", service = %svc.name, client = %client_addr);
                tokio::spawn(
                    forward(
                        mux.clone(),
                        stream,
                        svc.clone(),
                        connection_id,
                        shared.config.dial_timeout,
                        client_addr,
                        counters,
                    )
                    .instrument(span),
                );
            }
            MuxEvent::Incoming(stream, target) => {
                tracing::warn!(%target, "server opened a stream of a kind an agent does not serve");
                stream.reset(reset_code::REFUSED);
            }
            MuxEvent::Control(c) => {
                mux.control_handled();
                match c {
                    Control::Connect {
                        service_id,
                        connection_id,
                        client_addr,
                        ext,
                    } => {
                        // UDP: the Connect announces a flow (its id in the stream id field).
                        if let Some(svc) = ids
                            .get(&service_id)
                            .filter(|s| s.protocol == ServiceProtocol::Udp)
                        {
                            let Some(flow) = ext.map(|e| e.stream_id.0) else {
                                continue;
                            };
                            let span = tracing::debug_span!("flow", service = %svc.name, client = %client_addr);
                            let counters =
                                shared.counters.get(&svc.name).cloned().unwrap_or_default();
                            let flow = culvert_transport::udp_target::open_flow(
                                mux.clone(),
                                flows.clone(),
                                flow,
                                svc.target.clone(),
                                shared.config.udp_idle_timeout,
                                shared.config.udp_max_flows,
                                Some(counters.bytes.clone()),
                                std::future::pending(),
                            );
                            tokio::spawn(
                                async move {
                                    counters.connections.fetch_add(1, Ordering::Relaxed);
                                    counters.open.fetch_add(1, Ordering::Relaxed);
                                    flow.await;
                                    counters.open.fetch_sub(1, Ordering::Relaxed);
                                }
                                .instrument(span),
                            );
                            continue;
                        }
                        // A TCP connection's open carries its client itself; a Connect
                        // naming a stream is not part of protocol 2.
                        let _ = mux.send_control(Control::ConnectFail {
                            connection_id,
                            reason: "no stream for this connection".into(),
                        });
                    }
                    Control::Disconnect { reason } => {
                        return format!("server disconnected: {reason}")
                    }
                    other => {
                        tracing::debug!(message = ?other.frame_type(), "ignoring control message")
                    }
                }
            }
            MuxEvent::GoingAway(reason) => tracing::info!(reason = ?reason, "server going away"),
            MuxEvent::Closed(reason) => return reason,
        }
    }
    "event channel closed".into()
}

/// Dials the local target and relays; a refused or slow target resets the stream at once.
async fn forward(
    mux: Mux,
    stream: TunnelStream,
    svc: ServiceSpec,
    connection_id: Uuid,
    timeout: Duration,
    client_addr: String,
    counters: Arc<ServiceCounters>,
) {
    let mut tcp = match tokio::time::timeout(timeout, TcpStream::connect(&svc.target)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return fail(&mux, stream, connection_id, format!("{}: {e}", svc.target)),
        Err(_) => {
            return fail(
                &mux,
                stream,
                connection_id,
                format!("{}: connect timed out", svc.target),
            )
        }
    };
    tune_tcp(&tcp);
    if let Some(version) = svc.proxy {
        // The backend sees the public client (see `proxy_protocol` for the destination).
        let header = crate::proxy_protocol::header(version, &client_addr, tcp.peer_addr().ok());
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut tcp, &header).await {
            return fail(
                &mux,
                stream,
                connection_id,
                format!("{}: PROXY header: {e}", svc.target),
            );
        }
    }
    let _ = mux.send_control(Control::ConnectAck { connection_id });
    counters.connections.fetch_add(1, Ordering::Relaxed);
    counters.open.fetch_add(1, Ordering::Relaxed);
    let result = relay_tcp_counted(tcp, &stream, Some(&counters.bytes)).await;
    counters.open.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(t) => tracing::debug!(up = t.up, down = t.down, "connection done"),
        Err(e) => tracing::debug!(error = %e, "connection aborted"),
    }
}

fn fail(mux: &Mux, stream: TunnelStream, connection_id: Uuid, reason: String) {
    // A dead backend or an exhausted file-descriptor table fails every connection: warn at
    // most once per ten seconds, the rest at debug, so the log is not flooded.
    static LAST_WARN_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 10;
    let last = LAST_WARN_SECS.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_WARN_SECS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(%reason, "could not reach target (further failures within 10 s are logged at debug)");
    } else {
        tracing::debug!(%reason, "could not reach target");
    }
    stream.reset(reset_code::CONNECT_FAILED);
    let _ = mux.send_control(Control::ConnectFail {
        connection_id,
        reason,
    });
}
