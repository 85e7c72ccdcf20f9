//! The admin HTTP listener: `/metrics` (Prometheus text, from the process's one metrics
//! registry), `/healthz`, `/readyz` and `/api/sessions` (JSON). Meant for loopback; it
//! serves only these read-only GETs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What a process exposes on its admin listener.
pub trait AdminSource: Send + Sync + 'static {
    /// Adds the process's metrics to its registry (once, at start).
    fn register_metrics(&self, registry: &mut Registry);
    /// Whether `/readyz` answers 200.
    fn ready(&self) -> bool;
    /// `/api/sessions` body.
    fn sessions_json(&self) -> serde_json::Value;
}

/// Serves the admin endpoints on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, source: Arc<dyn AdminSource>) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "admin listener is not on loopback: it exposes metrics and session lists to that network");
    }
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut registry = Registry::default();
    source.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    tracing::info!(admin = %bound, "admin endpoints ready (/metrics /healthz /readyz /api/sessions)");
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let source = source.clone();
            let registry = registry.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let source = source.clone();
                    let registry = registry.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(&*source, &registry, req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(sock), svc);
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(bound)
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(
    source: &dyn AdminSource,
    registry: &Registry,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            CONTENT_TYPE,
            culvert_transport::metrics::text(registry),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if source.ready() {
                respond(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/api/sessions" => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&source.sessions_json()).unwrap_or_default(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The server's admin view.
pub struct ServerAdmin(pub Arc<culvert_server::ServerHandle>);

impl AdminSource for ServerAdmin {
    fn register_metrics(&self, registry: &mut Registry) {
        self.0.register_metrics(registry);
    }

    fn ready(&self) -> bool {
        // The tunnel endpoint is bound before this listener starts, and stays bound.
        true
    }

    fn sessions_json(&self) -> serde_json::Value {
        let sessions: Vec<serde_json::Value> = self
            .0
            .sessions()
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id.to_string(),
                    "token": s.token,
                    "tenant": s.tenant,
                    "peer": s.peer.to_string(),
                    "uptime_secs": s.uptime.as_secs(),
                    "connections": s.connections,
                    "suspect_connections": s.suspect_connections,
                    "culvert": s.culvert,
                    "services": s.services.iter().map(|(name, proto, port)| serde_json::json!({
                        "name": name,
                        "protocol": format!("{proto:?}").to_lowercase(),
                        "public_port": port,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "role": "server", "sessions": sessions })
    }
}

/// The agent's admin view.
pub struct AgentAdmin(pub Arc<culvert_agent::AgentHandle>);

impl AdminSource for AgentAdmin {
    fn register_metrics(&self, registry: &mut Registry) {
        self.0.register_metrics(registry);
    }

    fn ready(&self) -> bool {
        self.0.is_ready()
    }

    fn sessions_json(&self) -> serde_json::Value {
        let ports = self.0.ports();
        serde_json::json!({
            "role": "agent",
            "connections_up": self.0.connections_up(),
            "connections_suspect": self.0.connections_suspect(),
            "ready": self.0.is_ready(),
            "servers": self.0.servers(),
            "connections": self.0.connections().iter().map(|c| serde_json::json!({
                "slot": c.slot,
                "server": c.server,
                "home": c.home,
                "state": c.state.to_string(),
                "connected": c.state == culvert_agent::LinkState::Connected,
                "unregistered": c.unregistered,
            })).collect::<Vec<_>>(),
            "services": self.0.services().iter().map(|s| service_json(s, ports.get(&s.name))).collect::<Vec<_>>(),
        })
    }
}

/// One of the agent's services: its public port (absent for HTTP and private services and
/// before registration), traffic, and for an HTTP service what became of its requests.
fn service_json(s: &culvert_agent::ServiceView, port: Option<&u16>) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &s.counters;
    let mut v = serde_json::json!({
        "name": s.name,
        "kind": s.kind,
        "private": s.private,
        "public_port": port.filter(|p| **p != 0),
        "open_connections": c.open.load(Relaxed),
        "connections": c.connections.load(Relaxed),
        "bytes_up": c.bytes.up.load(Relaxed),
        "bytes_down": c.bytes.down.load(Relaxed),
        "dial_failures": c.dial_failures.load(Relaxed),
        "target_reachable": c.target_reachable(),
    });
    if s.kind == "http" {
        let mut http: serde_json::Map<String, serde_json::Value> = c
            .http
            .by_result()
            .iter()
            .map(|(result, n)| ((*result).to_owned(), (*n).into()))
            .collect();
        http.insert("retried".into(), c.http.retried.load(Relaxed).into());
        http.insert(
            "backend_connections".into(),
            c.http.backend_connections.load(Relaxed).into(),
        );
        v["http_requests"] = http.into();
    }
    v
}

/// A node's admin view: its tunnels (and the sessions of peers it accepted).
pub struct NodeAdmin(pub Arc<culvert_node::Node>);

impl AdminSource for NodeAdmin {
    fn register_metrics(&self, registry: &mut Registry) {
        self.0.register_metrics(registry);
    }

    fn ready(&self) -> bool {
        self.0.is_ready()
    }

    fn sessions_json(&self) -> serde_json::Value {
        let peers = self
            .0
            .server()
            .map(|s| ServerAdmin(s.clone()).sessions_json()["sessions"].clone())
            .unwrap_or_else(|| serde_json::json!([]));
        serde_json::json!({
            "role": "node",
            "tunnels": serde_json::to_value(self.0.status()).unwrap_or_default(),
            "peers": peers,
        })
    }
}

/// `culvert access`'s admin view: its sessions, for `culvert access list`.
pub struct AccessAdmin(pub Arc<culvert_node::Access>);

impl AdminSource for AccessAdmin {
    fn register_metrics(&self, registry: &mut Registry) {
        self.0.register_metrics(registry);
    }

    fn ready(&self) -> bool {
        self.0.link().connections_up() > 0
    }

    fn sessions_json(&self) -> serde_json::Value {
        serde_json::json!({
            "role": "access",
            "link": self.0.link().link_state().to_string(),
            "sessions": serde_json::to_value(self.0.status()).unwrap_or_default(),
        })
    }
}
