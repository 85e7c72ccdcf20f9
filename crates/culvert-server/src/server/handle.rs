//! The public handle of a running server: shutdown, drain, token reload and snapshots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use culvert_transport::Mux;
use uuid::Uuid;

use super::Inner;
use crate::registry::Protocol;
use crate::reload::ReloadReport;
use crate::tokens::TokenStore;

/// A running server (for tests and embedding): its address and a way to stop it.
pub struct ServerHandle {
    /// Address of the tunnel endpoint.
    pub addr: SocketAddr,
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) inner: Arc<Inner>,
}

impl ServerHandle {
    /// Stops accepting and closes every session.
    pub fn shutdown(&self) {
        self.task.abort();
        if let Some(c) = &self.inner.cluster {
            c.listeners.close_all();
        }
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
        if let Some(c) = &self.inner.cluster {
            // The other servers stop forwarding here at once, not after two heartbeats.
            c.listeners.close_all();
            match tokio::time::timeout(c.config.db_timeout, c.db.remove_server(&c.me.id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leaving the cluster registry failed; the others notice when the heartbeat stops"),
                Err(_) => tracing::warn!("leaving the cluster registry timed out; the others notice when the heartbeat stops"),
            }
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
        self.inner.apply_tokens(tokens)
    }

    /// Public ports currently assigned, by service as it is addressed: `TENANT/NAME` (two
    /// tenants may each have a service of one name).
    pub fn ports(&self) -> HashMap<String, u16> {
        self.inner
            .lock_sessions()
            .values()
            .flat_map(|s| {
                let tenant = s.token().tenant().to_owned();
                s.services()
                    .values()
                    .filter(|v| !v.private)
                    .map(|v| (format!("{tenant}/{}", v.name), v.port))
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

    /// Prometheus text exposition of the server's state and counters (this server's
    /// metrics alone; a process registers them once with [`ServerHandle::register_metrics`]).
    pub fn metrics(&self) -> String {
        culvert_transport::metrics::text_of(|r| self.register_metrics(r))
    }

    /// Adds the server's metrics to the process's registry: they are read from the
    /// server's counters at each scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(crate::metrics::ServerCollector(
            self.inner.clone(),
        )));
    }

    /// Counters of the UDP service `service` (`TENANT/NAME`), if one is registered.
    pub fn udp_counters(&self, service: &str) -> Option<Arc<crate::udp::UdpCounters>> {
        let svc = self.service(service)?;
        svc.udp.as_ref().map(|u| u.counters.clone())
    }

    /// Open UDP flows of the service `service` (`TENANT/NAME`).
    pub fn udp_flows(&self, service: &str) -> Option<usize> {
        let svc = self.service(service)?;
        svc.udp.as_ref().map(|u| u.flow_count())
    }

    /// The live service addressed `TENANT/NAME`.
    fn service(&self, service: &str) -> Option<Arc<crate::session::Service>> {
        let r = crate::names::ServiceRef::parse(service)?;
        let (_, svc) = self.inner.find_service(r.tenant?, r.name)?;
        Some(svc)
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
