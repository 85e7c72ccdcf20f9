//! The tunnel endpoint: accept loop, handshakes under one deadline, Auth, sessions and
//! control messages (Register, Unregister, Connect replies).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use culvert_proto::control::{
    AuthOkExt, RegisterOkExt, ServiceProtocol, CULVERT_VERSION, MIN_CULVERT_VERSION,
};
use culvert_proto::{reset_code, Connection, Control, FrameType, Header, Side, HEADER_LEN};
use culvert_transport::tls::ServerTls;
use culvert_transport::ws::{self, ServerIo};
use culvert_transport::wsframe::{WsConn, WsIn};
use culvert_transport::{tune_accepted, tune_listener, AcceptErrors, Mux, MuxEvent};

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use uuid::Uuid;

use crate::limits::{Admission, Locked, Lockout};
use crate::registry::{PortLease, Protocol, Registry};
use crate::reload::{Follow, ReloadReport};
use crate::session::{Service, Session};
use crate::tokens::TokenStore;
use crate::{PortRange, ServerConfig};

/// The one answer to every failed Auth, whatever went wrong (missing, malformed or wrong token).
const AUTH_FAILED: &str = "authentication failed";

/// Server-wide counters for metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) auth_failures: std::sync::atomic::AtomicU64,
    pub(crate) handshakes_shed: std::sync::atomic::AtomicU64,
    pub(crate) handshakes_failed: std::sync::atomic::AtomicU64,
    /// Lockouts started, of addresses and of client ids.
    pub(crate) lockouts_address: std::sync::atomic::AtomicU64,
    pub(crate) lockouts_client: std::sync::atomic::AtomicU64,
    /// Auths answered "too many failed attempts" (token not checked).
    pub(crate) auth_locked: std::sync::atomic::AtomicU64,
    /// Connections ended by the control-queue cap (GoAway ENHANCE_YOUR_CALM).
    pub(crate) control_queue_cap_hits: std::sync::atomic::AtomicU64,
    /// Connections ended by the cap on the resets they made this side generate.
    pub(crate) reset_cap_hits: std::sync::atomic::AtomicU64,
    /// Sessions a token reload ended (token removed or expired).
    pub(crate) reload_sessions_closed: std::sync::atomic::AtomicU64,
    /// Services a token reload withdrew from live sessions.
    pub(crate) reload_services_withdrawn: std::sync::atomic::AtomicU64,
    /// Live streams reset because a token reload withdrew their right to exist.
    pub(crate) reload_streams_reset: std::sync::atomic::AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) counters: Counters,
    pub(crate) open_latency: crate::metrics::Histogram,
    config: ServerConfig,
    tokens: RwLock<TokenStore>,
    registry: Arc<Registry>,
    admission: Arc<Admission>,
    /// Services, ports, UDP flows and connections per token, tenant and session.
    quotas: Arc<crate::quota::Quotas>,
    sessions: Mutex<HashMap<Uuid, Arc<Session>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A bound server, ready to run.
pub struct Server {
    inner: Arc<Inner>,
    listener: TcpListener,
}

/// A running server (for tests and embedding): its address and a way to stop it.
pub struct ServerHandle {
    /// Address of the tunnel endpoint.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    inner: Arc<Inner>,
}

impl ServerHandle {
    /// Stops accepting and closes every session.
    pub fn shutdown(&self) {
        self.task.abort();
        let sessions: Vec<_> = self.inner.lock_sessions().drain().map(|(_, s)| s).collect();
        for s in sessions {
            self.inner.end_session(&s, "server shutting down");
        }
    }

    /// Graceful stop: no new agents or public clients, agents told the server is going
    /// away, and the streams in flight given up to `grace` to finish. Returns as soon as they
    /// have (or the grace ran out), with everything closed.
    pub async fn drain(&self, grace: std::time::Duration) {
        self.task.abort();
        let sessions = self.inner.sessions_snapshot();
        for s in &sessions {
            s.stop_listeners();
        }
        let muxes: Vec<Mux> = sessions.iter().flat_map(|s| s.live_muxes()).collect();
        culvert_transport::drain(&muxes, "server shutting down", grace).await;
        self.shutdown();
    }

    /// Replaces the accepted tokens, and live sessions follow: a session whose token is gone
    /// (or whose new entry has expired) is closed at once; one whose entry changed takes the
    /// new entry, losing the services it no longer allows (unregistered, listeners closed,
    /// streams reset) and the access and node streams it no longer allows (reset).
    pub fn reload_tokens(&self, tokens: TokenStore) -> ReloadReport {
        let store = {
            let mut t = self.inner.tokens.write().unwrap_or_else(|p| p.into_inner());
            *t = tokens;
            t.clone()
        };
        let mut report = ReloadReport::default();
        for s in self.inner.sessions_snapshot() {
            match crate::reload::follow(&s, &store, &self.inner.counters) {
                Follow::Unchanged => {}
                Follow::Updated { withdrawn } => {
                    report.sessions_updated += 1;
                    report.services_withdrawn += withdrawn;
                }
                Follow::End(reason) => {
                    self.inner.end_session(&s, reason);
                    self.inner
                        .counters
                        .reload_sessions_closed
                        .fetch_add(1, Ordering::Relaxed);
                    report.sessions_closed += 1;
                }
            }
        }
        report
    }

    /// Public ports currently assigned, by service name (two tenants using one name: either).
    pub fn ports(&self) -> HashMap<String, u16> {
        self.inner
            .lock_sessions()
            .values()
            .flat_map(|s| {
                s.services()
                    .values()
                    .filter(|v| !v.private)
                    .map(|v| (v.name.clone(), v.port))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A snapshot of the live agent sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.inner
            .lock_sessions()
            .values()
            .map(|s| SessionInfo {
                id: s.id,
                token: s.token().name.clone(),
                tenant: s.token().tenant().to_owned(),
                peer: s.peer,
                uptime: s.started.elapsed(),
                connections: s.connection_count(),
                suspect_connections: s.suspect_count(),
                culvert: s.culvert,
                services: s
                    .services()
                    .values()
                    .map(|v| (v.name.clone(), v.protocol, v.port))
                    .collect(),
            })
            .collect()
    }

    /// Prometheus text exposition of the server's state and counters.
    pub fn metrics(&self) -> String {
        crate::metrics::render(&self.inner)
    }

    /// Counters of the UDP service `name`, if one is registered.
    pub fn udp_counters(&self, name: &str) -> Option<Arc<crate::udp::UdpCounters>> {
        self.inner.lock_sessions().values().find_map(|s| {
            s.services()
                .get(name)
                .and_then(|v| v.udp.as_ref().map(|u| u.counters.clone()))
        })
    }

    /// Open UDP flows of the service `name`.
    pub fn udp_flows(&self, name: &str) -> Option<usize> {
        self.inner.lock_sessions().values().find_map(|s| {
            s.services()
                .get(name)
                .and_then(|v| v.udp.as_ref().map(|u| u.flow_count()))
        })
    }

    /// Public ports in use and pool sizes: (TCP used, TCP size, UDP used, UDP size).
    pub fn port_usage(&self) -> (usize, usize, usize, usize) {
        self.inner.registry.usage()
    }
}

/// What the server knows of one agent session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The agent's client id (also the tunnel id).
    pub id: Uuid,
    /// Name of the token it authenticated with (never the token).
    pub token: String,
    /// Tenant of that token (its services are `TENANT/NAME`).
    pub tenant: String,
    /// Address of its first connection.
    pub peer: SocketAddr,
    /// Time since it started.
    pub uptime: std::time::Duration,
    /// Live pooled connections.
    pub connections: usize,
    /// Of those, connections silent past a heartbeat (placed no new streams).
    pub suspect_connections: usize,
    /// Whether it speaks Culvert (false: a zlayer-tunnel v1 agent).
    pub culvert: bool,
    /// Registered services: name, protocol and public port.
    pub services: Vec<(String, Protocol, u16)>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Server {
    /// Binds the tunnel endpoint. `tls: None` serves plain `ws://`, which is refused unless
    /// the listen address is loopback.
    pub async fn bind(
        config: ServerConfig,
        tokens: TokenStore,
        tls: Option<ServerTls>,
    ) -> std::io::Result<Server> {
        if tokens.is_empty() {
            return Err(std::io::Error::other(
                "no tokens: the server would accept nobody",
            ));
        }
        if tls.is_none() && !config.listen.ip().is_loopback() {
            return Err(std::io::Error::other(
                "plain ws:// is only allowed on a loopback listen address; configure TLS",
            ));
        }
        let listener = TcpListener::bind(config.listen).await?;
        tune_listener(&listener);
        let inner = Arc::new(Inner {
            registry: Arc::new(Registry::new(config.tcp_ports, config.udp_ports)),
            admission: Arc::new(Admission::new(
                config.max_handshakes,
                config.max_handshakes_per_ip,
                config.max_auth_failures,
                config.auth_failure_window,
                config.handshake_timeout,
            )),
            quotas: Arc::default(),
            counters: Counters::default(),
            open_latency: Default::default(),
            tokens: RwLock::new(tokens),
            sessions: Mutex::new(HashMap::new()),
            tls: tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config)),
            config,
        });
        Ok(Server { inner, listener })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the accept loop in a task.
    pub fn spawn(self) -> std::io::Result<ServerHandle> {
        let addr = self.local_addr()?;
        let inner = self.inner.clone();
        let task = tokio::spawn(self.run());
        Ok(ServerHandle { addr, task, inner })
    }

    /// Accepts agents until the task is dropped. Handshakes run off the accept loop.
    pub async fn run(self) {
        // Sessions of expired tokens end within a second, for as long as the server runs.
        let sweeper = tokio::spawn(end_expired_sessions(self.inner.clone()));
        let _sweeper = AbortOnDrop(sweeper);
        let mut errors = AcceptErrors::default();
        tracing::info!(listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = self.inner.tls.is_some(), "tunnel endpoint ready");
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    errors.on_error(&self.listener, "tunnel endpoint", &e).await;
                    continue;
                }
            };
            // Never refused here: when the caps are full an older stalled handshake is
            // shed instead (see `Admission::admit`).
            let mut permit = self.inner.admission.admit(peer.ip(), Instant::now());
            if permit.shed_other {
                self.inner
                    .counters
                    .handshakes_shed
                    .fetch_add(1, Ordering::Relaxed);
            }
            let inner = self.inner.clone();
            let span = tracing::info_span!("agent", %peer, session = tracing::field::Empty);
            tokio::spawn(
                async move {
                    let r = tokio::select! {
                        r = handshake(&inner, tcp, peer, permit.timeout) => r,
                        _ = &mut permit.shed => Err("shed: the handshake caps were full and this was the oldest stalled handshake".to_owned()),
                    };
                    drop(permit);
                    match r {
                        Ok(Some((ws, conn, session, charge))) => {
                            serve_connection(inner, ws, conn, session, charge).await
                        }
                        Ok(None) => {}
                        Err(e) => {
                            inner
                                .counters
                                .handshakes_failed
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "handshake failed")
                        }
                    }
                }
                .instrument(span),
            );
        }
    }
}

impl Inner {
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn quotas(&self) -> &Arc<crate::quota::Quotas> {
        &self.quotas
    }

    /// The limits shared by the tokens of `tenant`, from the current token file.
    pub(crate) fn tenant_limits(&self, tenant: &str) -> crate::TenantLimits {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tenant_limits(tenant)
    }

    pub(crate) fn sessions_snapshot(&self) -> Vec<Arc<Session>> {
        self.lock_sessions().values().cloned().collect()
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The live session serving the service `name` of `tenant`, and the service. A name is
    /// held by one session of a tenant at most (see [`register`]), so the answer is unique.
    pub(crate) fn find_service(
        &self,
        tenant: &str,
        name: &str,
    ) -> Option<(Arc<Session>, Arc<Service>)> {
        self.lock_sessions().values().find_map(|s| {
            if s.ended.load(Ordering::SeqCst) || s.token().tenant() != tenant {
                return None;
            }
            s.services().get(name).map(|v| (s.clone(), v.clone()))
        })
    }

    /// The tenants (other than `except`) holding a live service named `name`, for a bare
    /// name reached through a grant.
    pub(crate) fn tenants_holding(&self, name: &str, except: &str) -> Vec<String> {
        let mut t: Vec<String> = self
            .lock_sessions()
            .values()
            .filter(|s| !s.ended.load(Ordering::SeqCst) && s.token().tenant() != except)
            .filter(|s| s.services().contains_key(name))
            .map(|s| s.token().tenant().to_owned())
            .collect();
        t.sort();
        t.dedup();
        t
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a session: closes its connections and listeners and returns its ports.
    fn end_session(&self, s: &Arc<Session>, reason: &str) {
        if s.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut map = self.lock_sessions();
            if map.get(&s.id).is_some_and(|x| Arc::ptr_eq(x, s)) {
                map.remove(&s.id);
            }
        }
        s.abort_all(reason);
        s.flows().clear();
        for (_, svc) in s.services().drain() {
            svc.release_quota();
            if let Some(t) = &svc.task {
                t.abort();
            }
            // The port returns to the pool when the last reference (the aborted task) is gone.
            tracing::info!(session = %s.id, service = %svc.name, port = svc.port, "service released");
        }
        tracing::info!(session = %s.id, token = %s.token().name, %reason, "agent session ended");
    }
}

/// Aborts a task when dropped (a helper that must not outlive its owner).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every second, closes the sessions whose token has expired (by the entry in force: a
/// reload that adds or shortens `expires` moves the end).
async fn end_expired_sessions(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::tokens::unix_now();
        for s in inner.sessions_snapshot() {
            if s.token().expired(now) {
                inner.end_session(&s, "token expired");
            }
        }
    }
}

/// A connection past Auth: its socket, protocol state, session, and its place in the
/// connection quotas (held while it lives).
type Handshaken = (
    WsConn<ServerIo>,
    Connection,
    Arc<Session>,
    crate::quota::Charge,
);

/// Seconds an agent refused for a connection quota is asked to wait (AuthFail "retry in").
const QUOTA_RETRY_S: u64 = 30;

/// Largest Auth message accepted (a token of a few hundred bytes fits many times over);
/// the bytes of an Auth split across reads are gathered up to this bound.
const MAX_AUTH_LEN: usize = 8 * 1024;

/// TLS, upgrade and Auth under one deadline (`timeout`, shorter when many handshakes are in
/// progress). `Ok(None)`: refused and answered.
async fn handshake(
    inner: &Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: std::time::Duration,
) -> Result<Option<Handshaken>, String> {
    tune_accepted(&tcp);
    culvert_transport::tune_tunnel(&tcp, inner.config.proto.idle_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let step = async {
        let io: ServerIo = match &inner.tls {
            Some(acceptor) => {
                let mut s = acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                s.get_mut().1.set_buffer_limit(Some(ws::TLS_BUFFER_LIMIT));
                ServerIo::Right(s)
            }
            None => ServerIo::Left(tcp),
        };
        let mut ws = ws::accept(io).await.map_err(|e| e.to_string())?;
        // The Auth may arrive in pieces (split across reads or WebSocket frames): gather
        // it whole, or to the end of its WebSocket message, before judging it.
        let mut first = BytesMut::new();
        while auth_needs_more(&first) && (first.is_empty() || !ws.reader.at_message_end()) {
            match ws.reader.next().await {
                Ok(WsIn::Data(b)) => first.extend_from_slice(&b),
                Ok(WsIn::Ping(_)) => continue,
                Ok(WsIn::Close) => return Err("closed before Auth".to_owned()),
                Err(e) => return Err(format!("websocket: {e}")),
            }
        }
        Ok::<_, String>((ws, first.freeze()))
    };
    let (mut ws, first) = tokio::time::timeout_at(deadline, step)
        .await
        .map_err(|_| "handshake deadline passed".to_owned())??;

    let parsed = parse_auth(first);
    let (token, client_id, version, rest) = match parsed {
        Some(x) => x,
        None => {
            // Malformed or missing Auth gets the same answer as a wrong token.
            let lockouts = inner
                .admission
                .record_failure(peer.ip(), None, Instant::now());
            inner.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            let reason = refusal_reason(inner, peer, &lockouts);
            reject(&mut ws, deadline, reason).await;
            tracing::info!("authentication failed (malformed Auth)");
            return Ok(None);
        }
    };
    // A Culvert peer of an older protocol would misread this server's streams: refused
    // with a reason that says so (PROTOCOL.md §6.2). No extension: a zlayer-tunnel v1 agent.
    if let Some(v) = version.filter(|v| *v < MIN_CULVERT_VERSION) {
        let reason = format!(
            "unsupported Culvert protocol version {v} (this server speaks {CULVERT_VERSION}): upgrade the agent"
        );
        tracing::info!(client = %client_id, version = v, "connection refused: old protocol version");
        reject(&mut ws, deadline, reason).await;
        return Ok(None);
    }
    let culvert = version.is_some();
    // An address or client id locked out after failed attempts is told so, and for how
    // long, without its token being checked.
    if let Some(left) = inner.admission.locked(peer.ip(), client_id, Instant::now()) {
        inner.counters.auth_locked.fetch_add(1, Ordering::Relaxed);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        reject(
            &mut ws,
            deadline,
            format!("too many failed attempts, retry in {secs} s"),
        )
        .await;
        tracing::info!(client = %client_id, retry_in_s = secs, "authentication refused: locked out after failed attempts");
        return Ok(None);
    }
    let entry = inner
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .check(&token)
        .cloned();
    let Some(entry) = entry else {
        let lockouts = inner
            .admission
            .record_failure(peer.ip(), Some(client_id), Instant::now());
        inner.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        let reason = refusal_reason(inner, peer, &lockouts);
        reject(&mut ws, deadline, reason).await;
        tracing::info!(client = %client_id, "authentication failed");
        return Ok(None);
    };
    inner.admission.record_success(client_id);

    // Attach to the agent's session (its pool shares one client id) or start one, if the
    // connection quotas of the session, the token and its tenant allow one more.
    let tenant_limits = inner.tenant_limits(entry.tenant());
    let admit = || {
        inner
            .quotas
            .admit_connection(client_id, &entry, &tenant_limits, &inner.config)
    };
    let session = {
        let mut map = inner.lock_sessions();
        match map.get(&client_id) {
            Some(s) if s.token().name == entry.name && !s.ended.load(Ordering::SeqCst) => {
                Some(admit().map(|c| (s.clone(), c)))
            }
            Some(_) => None,
            None => Some(admit().map(|c| {
                let s = Arc::new(Session::new(client_id, entry.clone(), culvert, peer));
                map.insert(client_id, s.clone());
                tracing::info!(session = %client_id, token = %entry.name, culvert, "agent session started");
                (s, c)
            })),
        }
    };
    tracing::Span::current().record("session", tracing::field::display(client_id));
    let (session, charge) = match session {
        Some(Ok(x)) => x,
        Some(Err(refusal)) => {
            tracing::warn!(client = %client_id, token = ?entry.name, %refusal, "connection refused: quota reached");
            let reason = format!("connection refused: {refusal}; retry in {QUOTA_RETRY_S} s");
            reject(&mut ws, deadline, reason).await;
            return Ok(None);
        }
        None => {
            reject(&mut ws, deadline, AUTH_FAILED.to_owned()).await;
            tracing::info!("authentication failed (client id held by another token)");
            return Ok(None);
        }
    };
    // A reload between the token check above and this session's entry in the map would
    // have passed the session by: it follows the tokens in force now.
    let tokens_now = crate::reload::follow(
        &session,
        &inner.tokens.read().unwrap_or_else(|p| p.into_inner()),
        &inner.counters,
    );
    if let Follow::End(reason) = tokens_now {
        inner.end_session(&session, reason);
        reject(&mut ws, deadline, AUTH_FAILED.to_owned()).await;
        tracing::info!(%reason, "authentication failed (the token was reloaded meanwhile)");
        return Ok(None);
    }

    let mut conn = Connection::new(Side::Server, inner.config.proto.clone(), Instant::now())
        .map_err(|e| e.to_string())?;
    if !culvert {
        conn.enable_zlayer_v1_compat();
    }
    conn.send_control_first(Control::AuthOk {
        tunnel_id: client_id,
        ext: culvert.then_some(AuthOkExt {
            version: CULVERT_VERSION,
        }),
    })
    .map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        conn.handle_bytes(Instant::now(), rest)
            .map_err(|e| e.to_string())?;
    }
    Ok(Some((ws, conn, session, charge)))
}

/// Whether `buf` is still short of a whole Auth frame. A header that cannot start an Auth
/// (wrong type, too long) needs nothing more: the parse then refuses it.
fn auth_needs_more(buf: &[u8]) -> bool {
    if buf.len() < HEADER_LEN {
        return true;
    }
    let Ok(bytes) = buf[..HEADER_LEN].try_into() else {
        return false;
    };
    match Header::parse(bytes) {
        Ok(h) if h.ty == FrameType::Auth && h.len <= MAX_AUTH_LEN => buf.len() < HEADER_LEN + h.len,
        _ => false,
    }
}

/// The AuthFail reason after a failed Auth: the lockouts it started are logged at warn,
/// counted, and named in the answer with the time left.
fn refusal_reason(inner: &Inner, peer: SocketAddr, lockouts: &[Lockout]) -> String {
    let mut longest = std::time::Duration::ZERO;
    for l in lockouts {
        let secs = l.duration.as_secs().max(1);
        let ends = crate::tokens::unix_now() + secs;
        match &l.what {
            Locked::Address(a) => {
                inner
                    .counters
                    .lockouts_address
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(address = %a, %peer, failures = l.failures, lockout_s = secs, ends_unix = ends,
                    "authentication lockout: too many failed attempts from this address; its Auths are refused until the lockout ends");
            }
            Locked::Client(c) => {
                inner
                    .counters
                    .lockouts_client
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = %c, %peer, failures = l.failures, lockout_s = secs, ends_unix = ends,
                    "authentication lockout: too many failed attempts by this client id; its Auths are refused until the lockout ends");
            }
        }
        longest = longest.max(l.duration);
    }
    if longest.is_zero() {
        AUTH_FAILED.to_owned()
    } else {
        format!(
            "{AUTH_FAILED}; too many failed attempts, retry in {} s",
            longest.as_secs().max(1)
        )
    }
}

/// Sends the AuthFail answer (the same for every wrong, missing or malformed token; a
/// lockout says how long it lasts) and closes.
async fn reject(ws: &mut WsConn<ServerIo>, deadline: tokio::time::Instant, reason: String) {
    let mut b = BytesMut::new();
    let _ = Control::AuthFail { reason }.encode(&mut b);
    let frame = b.freeze();
    let len = frame.len();
    let _ = tokio::time::timeout_at(deadline, async {
        let _ = ws.writer.send(&[frame], len).await;
        let _ = ws.writer.close().await;
    })
    .await;
}

/// The Auth at the start of the first message: (token, client id, Culvert protocol version
/// (`None`: a zlayer-tunnel v1 agent), remaining bytes).
fn parse_auth(mut first: Bytes) -> Option<(String, Uuid, Option<u8>, Bytes)> {
    if first.len() < HEADER_LEN {
        return None;
    }
    let header = Header::parse(first[..HEADER_LEN].try_into().ok()?).ok()?;
    if header.ty != FrameType::Auth || first.len() < HEADER_LEN + header.len {
        return None;
    }
    first.advance(HEADER_LEN);
    let payload = first.split_to(header.len);
    match Control::decode(FrameType::Auth, payload).ok()? {
        Control::Auth {
            token,
            client_id,
            ext,
        } => Some((token.0, client_id, ext.map(|e| e.version), first)),
        _ => None,
    }
}

/// Serves one agent connection until it closes; `_quota` (its place in the connection
/// quotas) is given back when it does.
async fn serve_connection(
    inner: Arc<Inner>,
    ws: WsConn<ServerIo>,
    conn: Connection,
    session: Arc<Session>,
    _quota: crate::quota::Charge,
) {
    let (mux, mut events) = Mux::spawn_with(ws, conn);
    session.attach(mux.clone());
    // Target-side UDP flows this connection's peer asked this server to dial.
    let dials = Arc::new(culvert_transport::udp_target::TargetFlows::for_streams(
        !inner.config().allow_dial.is_empty(),
    ));
    // Flows this connection's peer opened to UDP services of other agents.
    let spliced = Arc::new(crate::udp::Spliced::default());
    if session.culvert {
        mux.set_datagram_sink(crate::udp::reply_sink(
            session.clone(),
            dials.clone(),
            spliced.clone(),
        ));
    }
    if session.ended.load(Ordering::SeqCst) {
        mux.abort("session ended");
        return;
    }
    while let Some(ev) = events.recv().await {
        match ev {
            MuxEvent::Control(c) => {
                mux.control_handled();
                handle_control(&inner, &session, &mux, c).await;
            }
            MuxEvent::Incoming(stream, target) => {
                if session.culvert {
                    let ctx = crate::peer_streams::Ctx {
                        inner: inner.clone(),
                        session: session.clone(),
                        mux: mux.clone(),
                        dials: dials.clone(),
                        spliced: spliced.clone(),
                    };
                    crate::peer_streams::spawn(ctx, stream, target);
                } else {
                    stream.reset(reset_code::REFUSED);
                }
            }
            MuxEvent::GoingAway(reason) => tracing::info!(reason = ?reason, "agent going away"),
            MuxEvent::Closed(reason) => {
                tracing::info!(session = %session.id, reason = ?reason, "agent connection closed");
                break;
            }
        }
    }
    mux.abort("connection ended");
    let st = mux.stats().proto;
    let c = &inner.counters;
    c.control_queue_cap_hits
        .fetch_add(st.control_queue_cap_hits, Ordering::Relaxed);
    c.reset_cap_hits
        .fetch_add(st.reset_cap_hits, Ordering::Relaxed);
    if session.detach(&mux) == 0 {
        inner.end_session(&session, "all connections closed");
    }
}

async fn handle_control(inner: &Arc<Inner>, session: &Arc<Session>, mux: &Mux, c: Control) {
    match c {
        Control::Register {
            name,
            protocol,
            remote_port,
            ext,
            ..
        } => {
            let private = session.culvert && ext.is_some_and(|e| e.flags & 1 != 0);
            let reply = match register(inner, session, &name, protocol, remote_port, private).await
            {
                Ok(svc) => Control::RegisterOk {
                    service_id: svc.id,
                    ext: session.culvert.then(|| RegisterOkExt {
                        assigned_port: svc.port,
                        name: svc.name.clone(),
                    }),
                },
                Err(reason) => {
                    // The name comes from the peer: escaped, like every peer-supplied text.
                    tracing::warn!(service = ?name, %reason, "registration refused");
                    Control::RegisterFail { reason }
                }
            };
            let _ = mux.send_control(reply);
        }
        Control::Unregister { service_id } => {
            let removed = {
                let mut svcs = session.services();
                let name = svcs
                    .values()
                    .find(|s| s.id == service_id)
                    .map(|s| s.name.clone());
                name.and_then(|n| svcs.remove(&n))
            };
            if let Some(svc) = removed {
                svc.release_quota();
                if let Some(t) = &svc.task {
                    t.abort();
                }
                session.forget_flows_of(&svc);
                tracing::info!(service = %svc.name, port = svc.port, "service unregistered");
            }
        }
        Control::ConnectAck { connection_id } => {
            if let Some(t) = session.take_pending_connect(&connection_id) {
                inner.open_latency.observe(t.elapsed());
            }
        }
        Control::ConnectFail {
            connection_id,
            reason,
        } => {
            session.take_pending_connect(&connection_id);
            tracing::info!(%connection_id, reason = ?reason, "agent could not reach its target")
        }
        Control::Disconnect { reason } => {
            tracing::info!(reason = ?reason, "agent disconnected");
            mux.abort("agent disconnected");
        }
        Control::Auth { .. } => mux.abort("second Auth on one connection"),
        other => {
            tracing::debug!(message = ?other.frame_type(), "ignoring unexpected control message")
        }
    }
}

/// Registers (or re-confirms) a service, replacing a stale session of the same token that holds it.
async fn register(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    name: &str,
    protocol: ServiceProtocol,
    requested: u16,
    private: bool,
) -> Result<Arc<Service>, String> {
    // Only A-Z a-z 0-9 . _ - : a name is safe in logs and terminals, and never reads as an
    // address (`:`), a check (`?`) or a tenant (`/`) in a stream target.
    if !crate::names::valid_name(name) {
        return Err(crate::names::name_problem("service name", name));
    }
    // The entry in force when the registration starts; a reload that changes it meanwhile
    // is caught when the service is recorded (see `record`).
    let token = session.token();
    if !token.has_role(crate::Role::Agent) {
        return Err(format!(
            "token {:?} may not register services: it has no agent role (its roles: {})",
            token.name,
            token.role_names()
        ));
    }
    // Pooled connections register the same services concurrently: one at a time, so the
    // second finds the first's service instead of binding a second port.
    let _registering = session.register_lock.lock().await;
    if let Some(allowed) = &token.services {
        if !allowed.iter().any(|s| s == name) {
            return Err(format!("token may not register service {name:?}"));
        }
    }
    if let Some(existing) = session.services().get(name) {
        // Another pooled connection of the same agent registers again: same answer.
        return Ok(existing.clone());
    }
    let proto = match protocol {
        ServiceProtocol::Tcp => Protocol::Tcp,
        ServiceProtocol::Udp => Protocol::Udp,
    };
    let tenant = token.tenant();
    // A new session of the same agent (same token) replaces a stale one holding the name.
    let stale: Vec<Arc<Session>> = inner
        .lock_sessions()
        .values()
        .filter(|s| !Arc::ptr_eq(s, session) && s.token().name == token.name)
        .filter(|s| s.services().contains_key(name))
        .cloned()
        .collect();
    for s in stale {
        inner.end_session(&s, "replaced by a new session of the same agent");
    }
    // Streams find a service by tenant and name: within a tenant a name is held by one
    // token only, or a stream could reach the wrong agent. Other tenants may use it too.
    let holder = inner
        .lock_sessions()
        .values()
        .find(|s| {
            s.token().name != token.name
                && s.token().tenant() == tenant
                && !s.ended.load(Ordering::SeqCst)
                && s.services().contains_key(name)
        })
        .map(|s| s.token().name.clone());
    if let Some(holder) = holder {
        return Err(format!(
            "service name {name:?} is held in tenant {tenant:?} by token {holder:?}"
        ));
    }
    // Counted for the token and its tenant over all their sessions (a new client id gains
    // nothing); given back when the service leaves its session, or here if it fails.
    let tenant_limits = inner.tenant_limits(tenant);
    let charge = |r| {
        inner
            .quotas
            .charge_token(r, &session.token(), &tenant_limits, &inner.config)
            .map_err(|e| e.to_string())
    };
    let mut charges = vec![charge(crate::quota::Resource::Services)?];
    if !private {
        charges.push(charge(crate::quota::Resource::Ports)?);
    }
    if private {
        let svc = Service::new(name, proto, 0, None);
        *svc.quota.lock().unwrap_or_else(|p| p.into_inner()) = charges;
        let svc = Arc::new(svc);
        if session.ended.load(Ordering::SeqCst) {
            return Err("session ended".into());
        }
        let svc = record(session, tenant, svc)?;
        tracing::info!(session = %session.id, service = %name, "private service registered (no public port)");
        return Ok(svc);
    }
    let allowed: Vec<PortRange> = token
        .ports
        .iter()
        .flatten()
        .filter_map(|r| r.parse().ok())
        .collect();
    if requested == 0 {
        // A returning agent's previous port may still be held by its ending session for a
        // moment (its tasks are being torn down): wait briefly for it.
        for _ in 0..50 {
            if !inner.registry.remembered_in_use(proto, &token.name, name) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut skip = HashSet::new();
    let mut busy_retries = 0;
    for _ in 0..64 {
        let port = inner
            .registry
            .assign(proto, &token.name, name, requested, &allowed, &skip)
            .map_err(|e| e.to_string())?;
        match bind_public(inner, proto, port).await {
            Ok(socket) => {
                let lease = PortLease::new(inner.registry.clone(), proto, port);
                let mut svc = Service::new(name, proto, port, Some(lease));
                *svc.quota.get_mut().unwrap_or_else(|p| p.into_inner()) =
                    std::mem::take(&mut charges);
                let listener = match socket {
                    PublicSocket::Tcp(l) => Some(l),
                    PublicSocket::Udp(u) => {
                        svc.udp = Some(crate::udp::UdpService::new(u));
                        None
                    }
                };
                let svc = if session.culvert {
                    // The serving task needs the service; create it, then record its handle.
                    let (tx, rx) = tokio::sync::oneshot::channel::<Arc<Service>>();
                    let sess = session.clone();
                    let server = inner.clone();
                    let task = tokio::spawn(async move {
                        let Ok(svc) = rx.await else { return };
                        match listener {
                            Some(l) => crate::public::serve_tcp(server, l, sess, svc).await,
                            None => crate::udp::serve_udp(server, sess, svc).await,
                        }
                    });
                    svc.task = Some(task.abort_handle());
                    let svc = Arc::new(svc);
                    let _ = tx.send(svc.clone());
                    svc
                } else {
                    // A zlayer-tunnel v1 agent has no data plane: the port is reserved, not served.
                    drop(listener);
                    svc.udp = None;
                    Arc::new(svc)
                };
                if session.ended.load(Ordering::SeqCst) {
                    svc.release_quota();
                    if let Some(t) = &svc.task {
                        t.abort();
                    }
                    return Err("session ended".into());
                }
                let svc = record(session, tenant, svc)?;
                tracing::info!(session = %session.id, service = %name, ?proto, port, "service registered");
                return Ok(svc);
            }
            Err(e) => {
                inner.registry.release(proto, port);
                // The socket of a just-ended service may still be closing: retry briefly.
                if e.kind() == std::io::ErrorKind::AddrInUse && busy_retries < 25 {
                    busy_retries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                if requested != 0 {
                    return Err(format!("port {port} cannot be bound: {e}"));
                }
                skip.insert(port);
            }
        }
    }
    Err("no bindable port found".into())
}

/// Records a new service of `tenant` in its session, unless a reload narrowed the token
/// meanwhile: that reload's pass over the session's services may have come before this.
fn record(session: &Session, tenant: &str, svc: Arc<Service>) -> Result<Arc<Service>, String> {
    session.services().insert(svc.name.clone(), svc.clone());
    // Read after the insert: a reload that put a new entry in force before it is seen here.
    if let Some(reason) = crate::reload::service_refusal(&session.token(), tenant, &svc) {
        session.withdraw_service(&svc);
        return Err(format!("the token was reloaded meanwhile: {reason}"));
    }
    Ok(svc)
}

enum PublicSocket {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

async fn bind_public(inner: &Inner, proto: Protocol, port: u16) -> std::io::Result<PublicSocket> {
    let addr = SocketAddr::new(inner.config.public_bind, port);
    Ok(match proto {
        Protocol::Tcp => {
            let l = TcpListener::bind(addr).await?;
            tune_listener(&l);
            PublicSocket::Tcp(l)
        }
        Protocol::Udp => {
            // Bursts from many clients arrive while the relay task is busy: a 4 MiB receive
            // buffer (the kernel caps it at net.core.rmem_max) keeps them from being dropped.
            PublicSocket::Udp(culvert_transport::bind_udp(addr, 4 << 20, Some(4 << 20))?)
        }
    })
}
