//! [`Agent`]: a program exposes its own services (or ones beside it) through a server, as
//! `culvert agent` does, without running the binary.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use culvert_agent::{AgentConfig, ConnectionStatus, LinkState, ServiceSpec};
use culvert_transport::tls::Verify;
use culvert_transport::ws::ServerUrl;

use crate::readiness::ReadyWatch;
use crate::Error;

/// Builds an agent; see [`Agent::builder`].
pub struct Agent;

/// Settings of an agent; [`AgentBuilder::spawn`] starts it.
#[derive(Clone)]
pub struct AgentBuilder {
    server: String,
    extra_servers: Vec<String>,
    home_probe_interval: Option<Duration>,
    token: String,
    services: Vec<ServiceSpec>,
    pool: usize,
    verify: Verify,
    connect_timeout: Duration,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("server", &self.server)
            .field("extra_servers", &self.extra_servers)
            .field("token", &"<redacted>")
            .field("services", &self.services)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A builder for an agent of the server at `server` (`wss://HOST:PORT`, or `ws://` on
    /// loopback) with `token`.
    pub fn builder(server: impl Into<String>, token: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            server: server.into(),
            extra_servers: Vec::new(),
            home_probe_interval: Some(Duration::from_secs(30)),
            token: token.into(),
            services: Vec::new(),
            pool: 4,
            verify: Verify::SystemRoots,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl AgentBuilder {
    /// Exposes a service, written as on the command line:
    /// `NAME=tcp://HOST:PORT[@PUBLIC_PORT][?proxy=v1|v2][&private]` (or `?private` alone; `udp://` too).
    pub fn service(mut self, spec: &str) -> Result<Self, Error> {
        let spec: ServiceSpec = spec.parse().map_err(Error::Config)?;
        self.services.push(spec);
        Ok(self)
    }

    /// Exposes a service given field by field.
    pub fn service_spec(mut self, spec: ServiceSpec) -> Self {
        self.services.push(spec);
        self
    }

    /// Adds another server of the same cluster (`wss://HOST:PORT`): the pool spreads over
    /// every server (connection `i` on server `i % n`, at least one per server), and a
    /// connection whose server fails moves to the next one at once.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.extra_servers.push(url.into());
        self
    }

    /// How often a connection that failed over to another server checks whether its own
    /// server answers again, to move back (default 30 s; `None` never).
    pub fn home_probe_interval(mut self, every: Option<Duration>) -> Self {
        self.home_probe_interval = every;
        self
    }

    /// Tunnel connections kept open; streams spread across them (default 4; with several
    /// servers at least one per server).
    pub fn pool(mut self, n: usize) -> Self {
        self.pool = n.clamp(1, 64);
        self
    }

    /// How the server's certificate is checked (for `wss://`; default: the system roots).
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    /// Deadline of each connection attempt (TCP, TLS, upgrade, Auth, registration).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Starts the agent (inside a tokio runtime): it connects, registers its services and
    /// reconnects by itself with backoff. Fails only on bad settings (URL, TLS files).
    pub fn spawn(self) -> Result<AgentHandle, Error> {
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = self.services.iter().find(|s| !names.insert(&s.name)) {
            return Err(Error::Config(format!(
                "service {:?} is given twice",
                dup.name
            )));
        }
        let url = ServerUrl::parse(&self.server)?;
        let extra_servers = self
            .extra_servers
            .iter()
            .map(|s| ServerUrl::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let names = self.services.iter().map(|s| s.name.clone()).collect();
        let mut config = AgentConfig::new(url, self.token, self.services);
        config.extra_servers = extra_servers;
        config.home_probe_interval = self.home_probe_interval;
        config.pool = self.pool;
        config.verify = self.verify;
        config.connect_timeout = self.connect_timeout;
        let inner = culvert_agent::Agent::spawn(config)?;
        Ok(AgentHandle { inner, names })
    }
}

/// A running agent. Dropping it stops the agent at once; [`AgentHandle::shutdown`] stops it
/// gracefully.
pub struct AgentHandle {
    inner: culvert_agent::AgentHandle,
    /// The exposed services' names, for status.
    names: Vec<String>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("state", &self.inner.link_state())
            .finish_non_exhaustive()
    }
}

/// A snapshot of an agent: its link and the traffic of each service.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentStatus {
    /// Connected, connecting or backing off.
    pub state: LinkState,
    /// Pooled connections up and registered.
    pub connections_up: usize,
    /// Latest heartbeat round trip (the smallest over the live connections).
    pub rtt: Option<Duration>,
    /// Why the last attempt failed or the last connection was lost.
    pub last_error: Option<String>,
    /// Each service's public port and traffic, by name.
    pub services: HashMap<String, ServiceStatus>,
    /// Each pooled connection: the server it is on, its home server and its state.
    pub connections: Vec<ConnectionStatus>,
}

/// Figures of one exposed service.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// Public port the server assigned (absent for a private service or before registration).
    pub public_port: Option<u16>,
    /// Connections being relayed now.
    pub open: usize,
    /// Connections relayed since start.
    pub connections: u64,
    /// Bytes from the service towards the tunnel.
    pub bytes_up: u64,
    /// Bytes from the tunnel to the service.
    pub bytes_down: u64,
    /// Dials of the service's target that failed (TCP and HTTP services).
    pub dial_failures: u64,
    /// Whether the last dial of the target reached it (`None` before the first, and for
    /// UDP services).
    pub target_reachable: Option<bool>,
}

impl AgentHandle {
    /// Whether every pooled connection is up, registered and not suspect.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// A watch of readiness changes (at least one connection up or none).
    pub fn watch(&self) -> ReadyWatch {
        ReadyWatch::new(self.inner.watch_connections())
    }

    /// Waits until every pooled connection is up, at most `timeout`; returns whether it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.inner.wait_ready(timeout).await
    }

    /// A snapshot of the link and of every service's traffic.
    pub fn status(&self) -> AgentStatus {
        let ports = self.inner.ports();
        let services = self
            .names
            .iter()
            .filter_map(|name| {
                let c = self.inner.service_counters(name)?;
                Some((
                    name.clone(),
                    ServiceStatus {
                        public_port: ports.get(name).copied().filter(|p| *p != 0),
                        open: c.open.load(Ordering::Relaxed),
                        connections: c.connections.load(Ordering::Relaxed),
                        bytes_up: c.bytes.up.load(Ordering::Relaxed),
                        bytes_down: c.bytes.down.load(Ordering::Relaxed),
                        dial_failures: c.dial_failures.load(Ordering::Relaxed),
                        target_reachable: c.target_reachable(),
                    },
                ))
            })
            .collect();
        AgentStatus {
            state: self.inner.link_state(),
            connections_up: self.inner.connections_up(),
            rtt: self.inner.rtt(),
            last_error: self.inner.last_error(),
            services,
            connections: self.inner.connections(),
        }
    }

    /// Public ports the server assigned, by service name.
    pub fn ports(&self) -> HashMap<String, u16> {
        self.inner.ports()
    }

    /// The agent's metrics in Prometheus text format (what `culvert agent --admin` serves).
    pub fn metrics_text(&self) -> String {
        self.inner.metrics()
    }

    /// Graceful stop: the server is told no new streams come, streams in flight get up to
    /// `grace` to finish, then every connection closes.
    pub async fn shutdown(self, grace: Duration) {
        self.inner.drain(grace).await;
    }

    /// The wrapped agent handle, for what this facade does not cover.
    pub fn inner(&self) -> &culvert_agent::AgentHandle {
        &self.inner
    }
}
