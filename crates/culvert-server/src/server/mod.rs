//! The tunnel endpoint: the accept loop and the state the server's parts share. Its parts
//! have their files: the handshake (TLS, upgrade, Auth), the connection's event loop, the
//! control messages (Register and friends) and the public handle.

mod connection;
mod control;
mod handle;
mod handshake;
mod register;
mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use culvert_transport::tls::ServerTls;
use culvert_transport::{tune_listener, AcceptErrors};
use tokio::net::TcpListener;
use tracing::Instrument;
use uuid::Uuid;

use crate::limits::Admission;
use crate::registry::Registry;
use crate::session::{Service, Session};
use crate::tokens::TokenStore;
use crate::ServerConfig;

pub use handle::{ServerHandle, SessionInfo};

/// Server-wide counters for metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) auth_failures: std::sync::atomic::AtomicU64,
    pub(crate) handshakes_shed: std::sync::atomic::AtomicU64,
    pub(crate) handshakes_failed: std::sync::atomic::AtomicU64,
    /// Public TCP connections refused: their address is not in the owner token's
    /// `public_clients`.
    pub(crate) public_refused_client_address: std::sync::atomic::AtomicU64,
    /// Public TCP connections from a balancer closed without a valid PROXY header.
    pub(crate) public_refused_proxy_header: std::sync::atomic::AtomicU64,
    /// Datagrams dropped on their way to the UDP targets this server dials, over all its
    /// connections.
    pub(crate) udp_target_drops: Arc<culvert_transport::udp_target::TargetDrops>,
    /// Agent connections, open and ended, for the counters summed over them.
    pub(crate) connections: culvert_transport::metrics::MuxLedger,
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
    /// Cluster: public connections and access streams handed to another server.
    pub(crate) cluster_forwarded_out: std::sync::atomic::AtomicU64,
    /// Cluster: public connections and access streams another server handed here.
    pub(crate) cluster_forwarded_in: std::sync::atomic::AtomicU64,
    /// Cluster: connections and streams that could not be handed to another server.
    pub(crate) cluster_forward_failures: std::sync::atomic::AtomicU64,
    /// Cluster: database operations of the heartbeat loop and token follower that failed.
    pub(crate) cluster_db_errors: std::sync::atomic::AtomicU64,
    /// Cluster: re-reads of the tokens from the database, by what asked for them.
    pub(crate) cluster_token_rereads: crate::cluster::TokenRereadCounts,
}

pub(crate) struct Inner {
    pub(crate) counters: Counters,
    pub(crate) open_latency: crate::metrics::Histogram,
    config: ServerConfig,
    pub(crate) tokens: RwLock<TokenStore>,
    registry: Arc<Registry>,
    pub(crate) admission: Arc<Admission>,
    /// Services, ports, UDP flows and connections per token, tenant and session.
    quotas: Arc<crate::quota::Quotas>,
    sessions: Mutex<HashMap<Uuid, Arc<Session>>>,
    pub(crate) tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Per-service metrics of the HTTP ingress.
    pub(crate) http_metrics: crate::http_metrics::IngressMetrics,
    /// The HTTP ingress's caller connections and their limits.
    pub(crate) http_callers: Arc<crate::http_callers::CallerLimits>,
    /// This server's part of its cluster (`--cluster`); `None` for a lone server.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// A bound server, ready to run.
pub struct Server {
    inner: Arc<Inner>,
    listener: TcpListener,
    /// The HTTP ingress listener, when configured.
    http: Option<TcpListener>,
}

impl Server {
    /// Binds the tunnel endpoint. `tls: None` serves plain `ws://`, which is refused unless
    /// the listen address is loopback. In a cluster (`config.cluster`), the tokens come
    /// from the cluster's database and `tokens` is not used.
    pub async fn bind(
        config: ServerConfig,
        tokens: TokenStore,
        tls: Option<ServerTls>,
    ) -> std::io::Result<Server> {
        let (cluster, tokens) = match &config.cluster {
            Some(c) => {
                let fingerprint = tls.as_ref().map(|t| t.fingerprint.clone());
                let (cluster, store) =
                    crate::cluster::Cluster::join(c.clone(), fingerprint, config.proto.clone())
                        .await
                        .map_err(std::io::Error::other)?;
                (Some(Arc::new(cluster)), store)
            }
            None => (None, tokens),
        };
        if tokens.is_empty() && cluster.is_none() {
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
        let http = match &config.http {
            Some(h) => Some(crate::http_ingress::bind(h, tls.is_some()).await?),
            None => None,
        };
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
            tls: tls.map(|t| t.config),
            http_metrics: Default::default(),
            http_callers: Arc::new(match &config.http {
                Some(h) => crate::http_callers::CallerLimits::new(
                    h.max_connections,
                    h.max_connections_per_address,
                ),
                None => crate::http_callers::CallerLimits::new(0, 0),
            }),
            cluster,
            config,
        });
        Ok(Server {
            inner,
            listener,
            http,
        })
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
        let _cluster = self.inner.cluster.clone().map(|c| {
            AbortOnDrop(tokio::spawn(crate::cluster::Cluster::run(
                self.inner.clone(),
                c,
            )))
        });
        let _http = match (self.http, &self.inner.config.http) {
            (Some(l), Some(c)) => Some(AbortOnDrop(tokio::spawn(crate::http_ingress::serve(
                self.inner.clone(),
                l,
                c.clone(),
            )))),
            _ => None,
        };
        let mut errors = AcceptErrors::default();
        tracing::info!(listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = self.inner.tls.is_some(), "tunnel endpoint ready");
        loop {
            let (mut tcp, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    errors.on_error(&self.listener, "tunnel endpoint", &e).await;
                    continue;
                }
            };
            let inner = self.inner.clone();
            let behind_balancer =
                crate::networks::contains(&inner.config().tunnel_proxy_protocol_from, peer.ip());
            if !behind_balancer {
                // Never refused here: when the caps are full an older stalled handshake is
                // shed instead (see `Admission::admit`).
                let permit = admit(&inner, peer);
                tokio::spawn(agent_connection(inner, tcp, peer, permit));
                continue;
            }
            // Behind a balancer the agent's address comes with the PROXY header, read in
            // the task (bounded by the handshake timeout), before the caps are applied.
            tokio::spawn(async move {
                let limit = inner.config().handshake_timeout;
                let agent = match crate::proxy_header::client_within(&mut tcp, peer, limit).await {
                    Ok(agent) => agent,
                    Err(why) => return refuse_balanced(&inner, peer, &why),
                };
                let permit = admit(&inner, agent);
                agent_connection(inner, tcp, agent, permit).await;
            });
        }
    }
}

/// A handshake slot for an agent connection from `peer`, counting a shed one.
fn admit(inner: &Arc<Inner>, peer: SocketAddr) -> crate::limits::Permit {
    let permit = inner.admission.admit(peer.ip(), Instant::now());
    if permit.shed_other {
        inner
            .counters
            .handshakes_shed
            .fetch_add(1, Ordering::Relaxed);
    }
    permit
}

/// A balancer's connection to the tunnel endpoint without a valid PROXY header: counted
/// as a failed handshake, logged, closed.
fn refuse_balanced(inner: &Inner, balancer: SocketAddr, why: &str) {
    inner
        .counters
        .handshakes_failed
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%balancer, reason = why, "tunnel connection without a valid PROXY header closed");
}

/// One agent connection from `peer`: the handshake within its permit, then the connection.
async fn agent_connection(
    inner: Arc<Inner>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut permit: crate::limits::Permit,
) {
    let span = tracing::info_span!("agent", %peer, session = tracing::field::Empty);
    async move {
        let r = tokio::select! {
            r = handshake::handshake(&inner, tcp, peer, permit.timeout) => r,
            _ = &mut permit.shed => Err("shed: the handshake caps were full and this was the oldest stalled handshake".to_owned()),
        };
        drop(permit);
        match r {
            Ok(Some((ws, conn, session, charge))) => {
                connection::serve_connection(inner, ws, conn, session, charge).await
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
    .instrument(span)
    .await
}

impl Inner {
    /// The entry of `token` among the tokens in force. In a cluster, a token this server
    /// does not know is looked up once more after a re-read of the registry (see
    /// `cluster::reread_for_unknown`), waiting at most until `deadline` and the cluster's
    /// database deadline: a token is accepted by every server once it is in the registry,
    /// not once each server has heard of it.
    pub(crate) async fn check_token(
        &self,
        token: &str,
        deadline: tokio::time::Instant,
    ) -> Option<crate::tokens::TokenEntry> {
        let lookup = || {
            self.tokens
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .check(token)
                .cloned()
        };
        if let Some(entry) = lookup() {
            return Some(entry);
        }
        let cluster = self.cluster.as_ref()?;
        let missed_at = tokio::time::Instant::now();
        let until = deadline.min(missed_at + cluster.config.db_timeout);
        let reread = crate::cluster::reread_for_unknown(self, cluster, missed_at);
        if tokio::time::timeout_at(until, reread).await.is_err() {
            tracing::debug!("unknown token: the registry was not re-read in time");
            return None;
        }
        lookup()
    }

    /// Replaces the accepted tokens, and live sessions follow (see
    /// [`ServerHandle::reload_tokens`]).
    pub(crate) fn apply_tokens(&self, tokens: TokenStore) -> crate::ReloadReport {
        let store = {
            let mut t = self.tokens.write().unwrap_or_else(|p| p.into_inner());
            *t = tokens;
            t.clone()
        };
        let mut report = crate::ReloadReport::default();
        for s in self.sessions_snapshot() {
            match crate::reload::follow(&s, &store, &self.counters) {
                crate::reload::Follow::Unchanged => {}
                crate::reload::Follow::Updated { withdrawn } => {
                    report.sessions_updated += 1;
                    report.services_withdrawn += withdrawn;
                }
                crate::reload::Follow::End(reason) => {
                    self.end_session(&s, reason);
                    self.counters
                        .reload_sessions_closed
                        .fetch_add(1, Ordering::Relaxed);
                    report.sessions_closed += 1;
                }
            }
        }
        if let Some(c) = &self.cluster {
            c.changed.notify_one();
        }
        report
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
    /// held by one session of a tenant at most (see `register::register`), so the answer is unique.
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
        if let Some(c) = &self.cluster {
            // The other servers stop forwarding here for its services at once.
            c.changed.notify_one();
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
