//! `culvert node`: one process that accepts peers (the server role, optional) and dials
//! peers (the agent role) from one config. Tunnels to the same peer with the same token
//! share one session: forward tunnels open streams towards the peer on it, reverse
//! tunnels register with the peer and receive its streams on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use culvert_agent::{Agent, AgentConfig, AgentHandle, ServiceSpec};
use culvert_proto::ServiceProtocol;
use culvert_server::{AllowList, PortRange, Server, ServerConfig, ServerHandle, TokenStore};
use culvert_transport::tls::{ServerTls, Verify};
use culvert_transport::ws::ServerUrl;
use prometheus_client::metrics::MetricType;
use serde::Serialize;

use crate::entry::Entry;
use crate::forward::{Fallback, Forward, ForwardSpec};
use crate::metrics::{Family, StatusCollector, Value};
use crate::node_config::{reverse_port, Direction, NodeFile, TunnelFile};
use crate::{NodeError, UdpForward};

/// Status of one tunnel, with live values.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelStatus {
    /// Tunnel name.
    pub name: String,
    /// `forward` or `reverse`.
    pub direction: &'static str,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The peer's URL.
    pub peer: String,
    /// `connected`, `connecting` or `backing off (retry in …)`.
    pub state: String,
    /// Latest heartbeat round trip to the peer, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Where connections enter: a local address (forward) or the port on the peer (reverse).
    pub listen: String,
    /// Where they go.
    pub target: String,
    /// Connections being relayed now.
    pub open_connections: usize,
    /// Connections since start.
    pub connections: u64,
    /// Bytes from the entry side towards the target.
    pub bytes_to_target: u64,
    /// Bytes from the target back.
    pub bytes_from_target: u64,
    /// The last failure, in words.
    pub last_error: Option<String>,
}

/// What the node's metrics say of each tunnel (counter names without `_total`, which the
/// encoder appends).
static TUNNEL_FAMILIES: &[Family<TunnelStatus>] = &[
    (
        "culvert_node_tunnel_up",
        MetricType::Gauge,
        "1 when the tunnel's peer link is connected.",
        |t| Some(Value::Int(u64::from(t.state == "connected"))),
    ),
    (
        "culvert_node_tunnel_rtt_seconds",
        MetricType::Gauge,
        "Latest heartbeat round trip to the tunnel's peer.",
        |t| t.rtt_ms.map(|m| Value::Float(m / 1000.0)),
    ),
    (
        "culvert_node_tunnel_open_connections",
        MetricType::Gauge,
        "Connections being relayed.",
        |t| Some(Value::Int(t.open_connections as u64)),
    ),
    (
        "culvert_node_tunnel_connections",
        MetricType::Counter,
        "Connections since start.",
        |t| Some(Value::Int(t.connections)),
    ),
    (
        "culvert_node_tunnel_bytes_to_target",
        MetricType::Counter,
        "Bytes towards the tunnel's target.",
        |t| Some(Value::Int(t.bytes_to_target)),
    ),
    (
        "culvert_node_tunnel_bytes_from_target",
        MetricType::Counter,
        "Bytes from the tunnel's target.",
        |t| Some(Value::Int(t.bytes_from_target)),
    ),
];

struct Tunnel {
    file: TunnelFile,
    link: Arc<AgentHandle>,
    forward: Option<Entry>,
}

/// A running node.
pub struct Node {
    server: Option<Arc<ServerHandle>>,
    /// Shared with the metrics collector, which reads their status at each scrape.
    tunnels: Arc<Vec<Tunnel>>,
    links: Vec<Arc<AgentHandle>>,
}

fn read_token(t: &TunnelFile) -> Result<String, NodeError> {
    let token = match (&t.token, &t.token_file) {
        (Some(tok), _) => tok.clone(),
        (None, Some(p)) => std::fs::read_to_string(p).map_err(|e| {
            NodeError::Config(format!("tunnel {:?}: reading {}: {e}", t.name, p.display()))
        })?,
        (None, None) => return Err(NodeError::Config(format!("tunnel {:?}: no token", t.name))),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(NodeError::Config(format!(
            "tunnel {:?}: the token is empty",
            t.name
        )));
    }
    Ok(token)
}

fn verify_of(t: &TunnelFile) -> Result<Verify, NodeError> {
    Ok(Verify::from_options(
        t.ca.clone(),
        t.fingerprint.as_deref(),
        t.insecure_skip_verify,
    )?)
}

impl Node {
    /// Starts the server role (when `[node] listen` is set), one link per peer and token,
    /// and every forward listener.
    pub async fn start(file: NodeFile) -> Result<Node, NodeError> {
        file.check().map_err(NodeError::Config)?;
        let server = match file.node.listen {
            Some(_) => Some(Arc::new(start_server(&file).await?)),
            None => None,
        };
        // One link per (peer, token): its reverse tunnels are its services.
        let mut groups: BTreeMap<(String, String), Vec<TunnelFile>> = BTreeMap::new();
        for t in &file.tunnels {
            let token = read_token(t)?;
            groups
                .entry((t.peer.clone(), token))
                .or_default()
                .push(t.clone());
        }
        let mut tunnels = Vec::new();
        let mut links = Vec::new();
        for ((peer, token), members) in groups {
            let url = ServerUrl::parse(&peer)
                .map_err(|e| NodeError::Config(format!("peer {peer:?}: {e}")))?;
            let mut services = Vec::new();
            for t in members.iter().filter(|t| t.direction == Direction::Reverse) {
                services.push(ServiceSpec {
                    name: t.name.clone(),
                    protocol: if t.protocol == "udp" {
                        ServiceProtocol::Udp
                    } else {
                        ServiceProtocol::Tcp
                    },
                    target: t.target.clone(),
                    remote_port: reverse_port(&t.listen).unwrap_or(0),
                    proxy: None,
                    private: false,
                    http: None,
                });
            }
            let mut config = AgentConfig::new(url, token, services);
            config.proto = file.node.proto_config();
            config.verify = verify_of(&members[0])?;
            config.proxy = culvert_transport::Proxy::from_setting(file.node.proxy.as_deref())?;
            config.pool = members
                .iter()
                .find_map(|t| t.pool)
                .unwrap_or(2)
                .clamp(1, 64);
            let link = Arc::new(Agent::spawn(config)?);
            tracing::info!(%peer, tunnels = members.len(), "dialing peer");
            for t in members {
                let forward = if t.direction == Direction::Forward {
                    let listen = t.listen.parse().map_err(|_| {
                        NodeError::Config(format!("tunnel {:?}: bad listen", t.name))
                    })?;
                    let entry = if t.protocol == "udp" {
                        Entry::Udp(
                            UdpForward::bind(&t.name, listen, &t.target, None, link.clone())
                                .await?,
                        )
                    } else {
                        let spec = ForwardSpec {
                            name: t.name.clone(),
                            listen,
                            target: t.target.clone(),
                            ttl: None,
                            fallback: Fallback::Fail,
                        };
                        Entry::Tcp(Forward::bind(spec, link.clone()).await?)
                    };
                    tracing::info!(tunnel = %t.name, protocol = %t.protocol, listen = %entry.local_addr(), target = %t.target, "forward tunnel listening");
                    Some(entry)
                } else {
                    None
                };
                tunnels.push(Tunnel {
                    file: t,
                    link: link.clone(),
                    forward,
                });
            }
            links.push(link);
        }
        Ok(Node {
            server,
            tunnels: Arc::new(tunnels),
            links,
        })
    }

    /// The server role, when the node accepts peers.
    pub fn server(&self) -> Option<&Arc<ServerHandle>> {
        self.server.as_ref()
    }

    /// Live status of every tunnel, in config order of peers.
    pub fn status(&self) -> Vec<TunnelStatus> {
        self.tunnels.iter().map(tunnel_status).collect()
    }

    /// Prometheus text: per-tunnel state, round trip, connections and bytes, then the
    /// server role's own metrics (this node's alone; a process registers them once with
    /// [`Node::register_metrics`]).
    pub fn metrics(&self) -> String {
        culvert_transport::metrics::text_of(|r| self.register_metrics(r))
    }

    /// Adds the node's metrics (and its server role's) to the process's registry: they
    /// are read from the tunnels' counters at each scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let tunnels = self.tunnels.clone();
        registry.register_collector(Box::new(StatusCollector {
            status: Box::new(move || tunnels.iter().map(tunnel_status).collect()),
            labels: |t: &TunnelStatus| {
                vec![
                    ("tunnel", t.name.clone()),
                    ("direction", t.direction.to_owned()),
                ]
            },
            families: TUNNEL_FAMILIES,
        }));
        if let Some(s) = &self.server {
            s.register_metrics(registry);
        }
    }

    /// Ready when the server role (if any) is up and every link has a live connection.
    pub fn is_ready(&self) -> bool {
        self.links.iter().all(|l| l.connections_up() > 0)
    }

    /// Graceful stop: links drain their streams within `grace`, then the server role does.
    pub async fn drain(&self, grace: Duration) {
        for t in self.tunnels.iter() {
            if let Some(f) = &t.forward {
                f.close();
            }
        }
        for l in &self.links {
            l.drain(grace).await;
        }
        if let Some(s) = &self.server {
            s.drain(grace).await;
        }
    }
}

fn tunnel_status(t: &Tunnel) -> TunnelStatus {
    let link = &t.link;
    let (open, connections, up, down, err) = match &t.forward {
        Some(f) => {
            let s = f.status();
            (
                s.open_connections,
                s.connections,
                s.bytes_up,
                s.bytes_down,
                s.last_error,
            )
        }
        None => match link.service_counters(&t.file.name) {
            // On the reverse side the agent relays: `down` flows towards the target.
            Some(c) => (
                c.open.load(std::sync::atomic::Ordering::Relaxed),
                c.connections.load(std::sync::atomic::Ordering::Relaxed),
                c.bytes.down.load(std::sync::atomic::Ordering::Relaxed),
                c.bytes.up.load(std::sync::atomic::Ordering::Relaxed),
                None,
            ),
            None => (0, 0, 0, 0, None),
        },
    };
    let listen = match t.file.direction {
        Direction::Forward => t
            .forward
            .as_ref()
            .map_or(t.file.listen.clone(), |f| f.local_addr().to_string()),
        Direction::Reverse => match link.ports().get(&t.file.name) {
            Some(p) => format!("peer port {p}"),
            None => format!("peer port {} (not registered)", t.file.listen),
        },
    };
    TunnelStatus {
        name: t.file.name.clone(),
        direction: match t.file.direction {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        },
        protocol: t.file.protocol.clone(),
        peer: t.file.peer.clone(),
        state: link.link_state().to_string(),
        rtt_ms: link.rtt().map(|r| r.as_secs_f64() * 1000.0),
        listen,
        target: t.file.target.clone(),
        open_connections: open,
        connections,
        bytes_to_target: up,
        bytes_from_target: down,
        // The link's last failure matters only while it is not connected.
        last_error: err.or_else(|| {
            (link.connections_up() == 0)
                .then(|| link.last_error())
                .flatten()
        }),
    }
}

async fn start_server(file: &NodeFile) -> Result<ServerHandle, NodeError> {
    let n = &file.node;
    let listen = n
        .listen
        .ok_or_else(|| NodeError::Config("no listen".into()))?;
    let tokens_path = n
        .tokens
        .clone()
        .ok_or_else(|| NodeError::Config("[node] listen needs tokens".into()))?;
    let tokens = TokenStore::load(&tokens_path).map_err(|e| NodeError::Config(e.to_string()))?;
    let range: PortRange = n
        .port_range
        .as_deref()
        .unwrap_or("25000-25999")
        .parse()
        .map_err(|e: String| NodeError::Config(format!("[node] port_range: {e}")))?;
    let mut config = ServerConfig::new(listen, range);
    config.proto = n.proto_config();
    if let Some(u) = &n.udp_port_range {
        config.udp_ports = u
            .parse()
            .map_err(|e: String| NodeError::Config(format!("[node] udp_port_range: {e}")))?;
    }
    if let Some(b) = n.public_bind {
        config.public_bind = b;
    }
    config.allow_dial =
        AllowList::parse(&n.allow).map_err(|e| NodeError::Config(format!("[node] allow: {e}")))?;
    let tls = match (&n.tls_cert, &n.tls_key, n.self_signed, n.insecure_plain) {
        (Some(c), Some(k), false, false) => Some(ServerTls::from_pem(c, k)?),
        (None, None, true, false) => {
            let t = ServerTls::self_signed_for(listen)?;
            tracing::info!(fingerprint = %t.fingerprint, "self-signed certificate generated for this run only (a new one at each start); peers pin it with fingerprint = \"…\"");
            Some(t)
        }
        (Some(c), Some(k), true, false) => {
            let (t, created) = ServerTls::self_signed_kept(listen, c, k)?;
            tracing::info!(fingerprint = %t.fingerprint, created, cert = %c.display(),
                "self-signed certificate kept across restarts; peers pin it with fingerprint = \"…\"");
            Some(t)
        }
        (None, None, false, true) => None,
        _ => {
            return Err(NodeError::Config(
                "[node]: choose one of tls_cert + tls_key, self_signed (with tls_cert + tls_key: kept in those files), insecure_plain".into(),
            ))
        }
    };
    let server = Server::bind(config, tokens, tls)
        .await
        .map_err(|e| NodeError::Server(format!("binding {listen}: {e}")))?;
    let handle = server
        .spawn()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    tracing::info!(%listen, allow = n.allow.len(), "node accepting peers");
    Ok(handle)
}
