//! The agent's pool of tunnel connections and what each one does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use culvert_proto::control::{AuthExt, CULVERT_VERSION};
use culvert_proto::{
    reset_code, Config, Connection, Control, ServiceProtocol, Side, StreamId, Token,
};
use culvert_transport::tls::{client_config, Verify};
use culvert_transport::ws::{dial, ServerUrl};
use culvert_transport::{relay_tcp, tune_tcp, Mux, MuxEvent, TunnelStream};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::{Backoff, ServiceSpec};

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
    state_tx: watch::Sender<usize>,
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
            state_tx,
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
        match connect(&shared).await {
            Ok((mux, events, ids, early)) => {
                // If this task is aborted (agent shutdown), the connection goes with it.
                let _guard = CloseOnDrop(mux.clone());
                backoff.reset();
                shared.up.fetch_add(1, Ordering::SeqCst);
                shared.state_tx.send_modify(|n| *n += 1);
                let reason = serve(&shared, &mux, events, ids, early).await;
                shared.up.fetch_sub(1, Ordering::SeqCst);
                shared.state_tx.send_modify(|n| *n -= 1);
                tracing::warn!(%reason, "tunnel connection lost");
            }
            Err(e) => tracing::warn!(error = %e, "could not establish tunnel connection"),
        }
        let delay = backoff.next_delay();
        tracing::info!(slot, ?delay, "reconnecting after backoff");
        tokio::time::sleep(delay).await;
    }
}

/// Closes a connection when its owning task ends, however it ends.
struct CloseOnDrop(Mux);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.abort("agent stopping");
    }
}

/// Aborts a helper task when the connection it serves ends.
struct AbortTaskOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortTaskOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Dials, authenticates and registers, all under the connect deadline.
type Connected = (
    Mux,
    tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    HashMap<Uuid, ServiceSpec>,
    Vec<MuxEvent>,
);

async fn connect(shared: &Arc<Shared>) -> Result<Connected, String> {
    let cfg = &shared.config;
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let ws = tokio::time::timeout_at(deadline, dial(&cfg.server, shared.tls.clone()))
        .await
        .map_err(|_| "timed out connecting to the server".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut conn = Connection::new(Side::Client, cfg.proto.clone(), Instant::now())
        .map_err(|e| e.to_string())?;
    conn.send_control_first(Control::Auth {
        token: Token(cfg.token.clone()),
        client_id: shared.client_id,
        ext: Some(AuthExt {
            version: CULVERT_VERSION,
            capabilities: 0,
        }),
    })
    .map_err(|e| e.to_string())?;
    let (mux, mut events) = Mux::spawn_with(ws, conn);
    // The server may route public clients to this connection while it is still
    // registering: their streams and Connects wait here and are served right after.
    let mut early = Vec::new();
    let handshake = async {
        // Auth reply.
        match next_control(&mux, &mut events, &mut early).await? {
            Control::AuthOk { .. } => {}
            Control::AuthFail { reason } => {
                return Err(format!("server refused the token: {reason}"))
            }
            other => return Err(format!("unexpected {:?} before AuthOk", other.frame_type())),
        }
        // Register every service, one at a time (replies come in order).
        let mut ids = HashMap::new();
        for svc in &cfg.services {
            mux.send_control(Control::Register {
                name: svc.name.clone(),
                protocol: svc.protocol,
                local_port: svc.local_port(),
                remote_port: svc.remote_port,
                ext: None,
            })
            .map_err(|e| e.to_string())?;
            match next_control(&mux, &mut events, &mut early).await? {
                Control::RegisterOk { service_id, ext } => {
                    ids.insert(service_id, svc.clone());
                    let port = ext.map(|e| e.assigned_port).unwrap_or(0);
                    let previous = shared
                        .ports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(svc.name.clone(), port);
                    if previous != Some(port) {
                        tracing::info!(service = %svc.name, target = %svc.target, public_port = port, "service exposed");
                    }
                }
                Control::RegisterFail { reason } => {
                    return Err(format!("server refused service {:?}: {reason}", svc.name))
                }
                other => {
                    return Err(format!(
                        "unexpected {:?} before RegisterOk",
                        other.frame_type()
                    ))
                }
            }
        }
        Ok::<_, String>(ids)
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(ids)) => Ok((mux, events, ids, early)),
        Ok(Err(e)) => {
            mux.abort(&e);
            Err(e)
        }
        Err(_) => {
            mux.abort("timeout");
            Err("timed out authenticating and registering".to_owned())
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

/// Serves one connection until it closes: matches each Connect to its stream and relays it.
async fn serve(
    shared: &Arc<Shared>,
    mux: &Mux,
    mut events: tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    ids: HashMap<Uuid, ServiceSpec>,
    early: Vec<MuxEvent>,
) -> String {
    let flows = Arc::new(crate::udp::Flows::default());
    let pump = tokio::spawn(crate::udp::pump(mux.clone(), flows.clone()));
    let _pump = AbortTaskOnDrop(pump);
    // Streams opened by the server, waiting for their Connect (which names them).
    // Bounded by the connection's stream limit.
    let mut pending: HashMap<StreamId, (TunnelStream, ServiceSpec)> = HashMap::new();
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
            MuxEvent::Incoming(stream, target) => {
                if let Some(svc) = targets.get(&target) {
                    pending.insert(stream.id(), (stream, svc.clone()));
                } else {
                    tracing::warn!(%target, "server opened a stream for an unknown service");
                    stream.reset(reset_code::REFUSED);
                }
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
                            tokio::spawn(
                                crate::udp::open_flow(
                                    mux.clone(),
                                    flows.clone(),
                                    flow,
                                    svc.target.clone(),
                                    shared.config.udp_idle_timeout,
                                    shared.config.udp_max_flows,
                                )
                                .instrument(span),
                            );
                            continue;
                        }
                        // The open named the service; the Connect names the stream and the client.
                        let Some((stream, svc)) = ext.and_then(|e| pending.remove(&e.stream_id))
                        else {
                            let _ = mux.send_control(Control::ConnectFail {
                                connection_id,
                                reason: "no stream for this connection".into(),
                            });
                            continue;
                        };
                        let mux = mux.clone();
                        let timeout = shared.config.dial_timeout;
                        let span = tracing::debug_span!("conn", service = %svc.name, client = %client_addr);
                        tokio::spawn(
                            forward(mux, stream, svc, connection_id, timeout).instrument(span),
                        );
                    }
                    Control::Disconnect { reason } => {
                        return format!("server disconnected: {reason}")
                    }
                    other => {
                        tracing::debug!(message = ?other.frame_type(), "ignoring control message")
                    }
                }
            }
            MuxEvent::GoingAway(reason) => tracing::info!(%reason, "server going away"),
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
) {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&svc.target)).await {
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
    let _ = mux.send_control(Control::ConnectAck { connection_id });
    match relay_tcp(tcp, &stream).await {
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
