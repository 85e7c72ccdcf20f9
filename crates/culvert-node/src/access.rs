//! `culvert access`: on-demand local listeners reaching private services through the
//! server, each with a time-to-live. The link to the server is an agent with no services
//! of its own; each local connection is a stream the server joins to the serving agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use culvert_agent::{Agent, AgentConfig, AgentHandle};
use culvert_proto::reset_code;
use culvert_transport::reset_code_of;
use culvert_transport::tls::Verify;
use culvert_transport::ws::ServerUrl;
use prometheus_client::metrics::MetricType;

use crate::entry::Entry;
use crate::forward::{Fallback, Forward, ForwardSpec, ForwardStatus};
use crate::metrics::{Family, StatusCollector, Value};
use crate::{NodeError, UdpForward};

/// One access session: a service reached through a local address for a while.
#[derive(Debug, Clone)]
pub struct AccessSpec {
    /// Service name on the server (usually a private one).
    pub service: String,
    /// Local listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Closes the listener and its connections this long after start.
    pub ttl: Option<Duration>,
    /// Behaviour while the tunnel is down.
    pub fallback: Fallback,
}

/// Everything `culvert access` needs.
#[derive(Clone)]
pub struct AccessConfig {
    /// Server to reach.
    pub server: ServerUrl,
    /// Token the server allows these services (never logged).
    pub token: String,
    /// How the server's certificate is verified.
    pub verify: Verify,
    /// Sessions to open.
    pub sessions: Vec<AccessSpec>,
    /// Pooled tunnel connections (2: a lost one leaves the other carrying new streams).
    pub pool: usize,
    /// How long start-up waits for the server before giving up (or, with a `direct`
    /// fallback, carrying on without it).
    pub connect_timeout: Duration,
    /// HTTP proxy the server is reached through (see `culvert_transport::Proxy`).
    pub proxy: Option<culvert_transport::Proxy>,
}

impl std::fmt::Debug for AccessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("sessions", &self.sessions)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

/// What `culvert access`'s metrics say of each session (counter names without `_total`,
/// which the encoder appends).
static SESSION_FAMILIES: &[Family<ForwardStatus>] = &[
    (
        "culvert_access_open_connections",
        MetricType::Gauge,
        "Connections (UDP: flows) being relayed.",
        |s| Some(Value::Int(s.open_connections as u64)),
    ),
    (
        "culvert_access_bytes_up",
        MetricType::Counter,
        "Bytes from local clients into the tunnel.",
        |s| Some(Value::Int(s.bytes_up)),
    ),
    (
        "culvert_access_bytes_down",
        MetricType::Counter,
        "Bytes from the tunnel to local clients.",
        |s| Some(Value::Int(s.bytes_down)),
    ),
    (
        "culvert_access_remaining_seconds",
        MetricType::Gauge,
        "Time-to-live left (sessions with a TTL).",
        |s| s.remaining_secs.map(Value::Int),
    ),
];

/// Running access sessions.
pub struct Access {
    link: Arc<AgentHandle>,
    forwards: Arc<Vec<Entry>>,
    /// Set when the server stopped accepting the token (expired or revoked).
    refused: Arc<std::sync::Mutex<Option<String>>>,
    watchdog: tokio::task::JoinHandle<()>,
}

impl Drop for Access {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

/// How often the watchdog looks at the link.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Ends every session once the server refuses the token (its TTL ran out or it was
/// revoked): retrying cannot help, and local clients should not wait for it.
async fn watch_token(
    link: Arc<AgentHandle>,
    forwards: Arc<Vec<Entry>>,
    refused: Arc<std::sync::Mutex<Option<String>>>,
) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if link.connections_up() > 0 {
            continue;
        }
        if let Some(e) = link
            .last_error()
            .filter(|e| e.contains("refused the token"))
        {
            tracing::error!(reason = %e, "the server no longer accepts this token (expired or revoked); closing every access session");
            *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            for f in forwards.iter() {
                f.close();
            }
            link.shutdown();
            return;
        }
    }
}

impl Access {
    /// Connects to the server, checks that the token may reach every service, and binds
    /// the local listeners. A refused token or service is an error here, not later.
    pub async fn start(config: AccessConfig) -> Result<Access, NodeError> {
        if config.sessions.is_empty() {
            return Err(NodeError::Config("no service to access".into()));
        }
        let mut agent = AgentConfig::new(config.server.clone(), config.token.clone(), Vec::new());
        agent.verify = config.verify.clone();
        agent.pool = config.pool.max(1);
        agent.connect_timeout = config.connect_timeout;
        agent.proxy = config.proxy.clone();
        let link = Arc::new(Agent::spawn(agent)?);
        let all_direct = config
            .sessions
            .iter()
            .all(|s| matches!(s.fallback, Fallback::Direct(_)));
        // One connection is enough to start; the rest of the pool follows.
        let up = wait_up(&link, config.connect_timeout).await;
        // Each service's protocol, as the server reports it (TCP when it cannot be asked).
        let mut udp = vec![false; config.sessions.len()];
        if up {
            for (i, s) in config.sessions.iter().enumerate() {
                udp[i] = check_access(&link, &s.service).await? == "udp";
            }
        } else {
            let why = link.last_error().unwrap_or_else(|| "no answer".to_owned());
            if why.contains("refused the token") {
                return Err(NodeError::Refused(why));
            }
            if !all_direct {
                return Err(NodeError::Unreachable(format!(
                    "could not reach the server at {}:{}: {why}",
                    config.server.host, config.server.port
                )));
            }
            tracing::warn!(reason = %why, "server unreachable; connections use the direct fallback until it is back");
        }
        let mut forwards = Vec::new();
        for (s, udp) in config.sessions.iter().zip(udp) {
            if udp {
                if s.fallback != Fallback::Fail {
                    return Err(NodeError::Config(format!(
                        "{}: fallback direct is for TCP services; {} is UDP",
                        s.service, s.service
                    )));
                }
                let f =
                    UdpForward::bind(&s.service, s.listen, &s.service, s.ttl, link.clone()).await?;
                forwards.push(Entry::Udp(f));
                continue;
            }
            let spec = ForwardSpec {
                name: s.service.clone(),
                listen: s.listen,
                target: s.service.clone(),
                ttl: s.ttl,
                fallback: s.fallback.clone(),
            };
            forwards.push(Entry::Tcp(Forward::bind(spec, link.clone()).await?));
        }
        let forwards = Arc::new(forwards);
        let refused = Arc::new(std::sync::Mutex::new(None));
        let watchdog = tokio::spawn(watch_token(link.clone(), forwards.clone(), refused.clone()));
        Ok(Access {
            link,
            forwards,
            refused,
            watchdog,
        })
    }

    /// Why the sessions ended early, if the server stopped accepting the token.
    pub fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The bound local address of each session (and `udp` for a UDP one), in the order given.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr, &'static str)> {
        self.forwards
            .iter()
            .map(|f| {
                let proto = match f {
                    Entry::Tcp(_) => "tcp",
                    Entry::Udp(_) => "udp",
                };
                (f.status().name, f.local_addr(), proto)
            })
            .collect()
    }

    /// Prometheus text: per session, open connections, bytes each way and the TTL left
    /// (these sessions' alone; a process registers them once with
    /// [`Access::register_metrics`]).
    pub fn metrics(&self) -> String {
        culvert_transport::metrics::text_of(|r| self.register_metrics(r))
    }

    /// Adds the sessions' metrics to the process's registry: they are read from the
    /// sessions' counters at each scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let forwards = self.forwards.clone();
        registry.register_collector(Box::new(StatusCollector {
            status: Box::new(move || forwards.iter().map(Entry::status).collect()),
            labels: |s: &ForwardStatus| vec![("service", s.name.clone())],
            families: SESSION_FAMILIES,
        }));
    }

    /// Figures of every session.
    pub fn status(&self) -> Vec<ForwardStatus> {
        self.forwards.iter().map(Entry::status).collect()
    }

    /// The link to the server.
    pub fn link(&self) -> &Arc<AgentHandle> {
        &self.link
    }

    /// Waits until every session's TTL has expired (or each was closed).
    pub async fn wait(&self) {
        for f in self.forwards.iter() {
            f.closed().await;
        }
    }

    /// Closes every session and the link.
    pub fn shutdown(&self) {
        self.watchdog.abort();
        for f in self.forwards.iter() {
            f.close();
        }
        self.link.shutdown();
    }
}

async fn wait_up(link: &AgentHandle, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if link.connections_up() > 0 {
            return true;
        }
        // A refused token will not get better by waiting.
        if link
            .last_error()
            .is_some_and(|e| e.contains("refused the token"))
        {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link.connections_up() > 0
}

/// Asks the server whether this token may reach `service` (a `?NAME` stream: the
/// service's protocol and a FIN mean yes, a reset says why not). Returns `tcp` or `udp`.
async fn check_access(link: &AgentHandle, service: &str) -> Result<String, NodeError> {
    let probe = link
        .open(&format!("?{service}"))
        .await
        .map_err(|e| NodeError::Unreachable(e.to_string()))?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut protocol = Vec::new();
        while let Some(chunk) = probe.recv().await? {
            protocol.extend_from_slice(&chunk);
            if protocol.len() > 16 {
                break;
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&protocol).into_owned())
    })
    .await;
    let _ = probe.finish();
    match answer {
        Ok(Ok(p)) if p == "udp" => Ok(p),
        Ok(Ok(_)) => Ok("tcp".into()),
        Ok(Err(e)) => match reset_code_of(&e) {
            Some(reset_code::UNAVAILABLE) => {
                tracing::warn!(%service, "the service's agent is offline right now; connections fail until it is back");
                Ok("tcp".into())
            }
            Some(code) => Err(NodeError::Refused(format!(
                "server refused access to service {service:?}: {}",
                reset_code::describe(code)
            ))),
            None => Err(NodeError::Unreachable(format!(
                "checking access to {service:?}: {e}"
            ))),
        },
        Err(_) => Err(NodeError::Unreachable(format!(
            "the server did not answer the access check for {service:?}"
        ))),
    }
}
