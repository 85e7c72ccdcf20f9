//! The agent's configuration: which servers, which services, and how it connects.

use std::time::Duration;

use culvert_proto::Config;
use culvert_transport::tls::Verify;
use culvert_transport::ws::ServerUrl;

use crate::ServiceSpec;

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
    /// Stop (see [`AgentHandle::permanent_failure`](super::AgentHandle::permanent_failure)) at the first permanent error (refused
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
