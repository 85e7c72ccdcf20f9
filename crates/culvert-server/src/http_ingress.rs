//! The HTTP ingress: callers send ordinary HTTP requests to the server by service name
//! (`/t/{tenant}/{service}/{path…}`, or `https://{service}.{tenant}.{domain}/{path…}`),
//! and the server forwards each over a tunnel stream to the agent serving that service,
//! whose reverse proxy adds the backend's credentials. Callers never learn a tunnel exists;
//! the credentials never leave the private network.
//!
//! Callers authenticate with a token of role `http` (`Authorization: Bearer …`, or the header
//! the operator names); the server removes it before forwarding. A service with no agent
//! answers `503` with `Retry-After` at once: the ingress fails closed, never hangs and never
//! falls back to anything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::http_activity::{Activity, Tracked};
use crate::http_metrics::Counted;
use crate::http_upstream::{Upstreams, MAX_KEPT};
use crate::names::ServiceRef;
use crate::server::Inner;
use crate::Role;
use culvert_transport::http_hop::{connection_has, strip_hop_by_hop};
use culvert_transport::record_layer;
use culvert_transport::ws::TLS_BUFFER_LIMIT;
use culvert_transport::AcceptErrors;

/// What answers the caller: the agent's response, or the ingress's own short JSON.
type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Requests one HTTP/2 caller connection may have in flight at once (nginx allows 128):
/// each takes a tunnel stream of its own, kept for the next ([`MAX_KEPT`]).
const MAX_CONCURRENT_STREAMS: u32 = MAX_KEPT as u32;

/// How much of an HTTP/2 caller's request bodies the ingress takes ahead of the tunnel, for
/// the connection and for each stream: its bound on what one connection's uploads hold in
/// memory. hyper's 1 MiB held uploads to 1 Gbit/s here (`UPLOAD_HTTP=2
/// scripts/http-upload.sh`: 1 MiB 1.0, 2 MiB 2.4, 4 MiB 4.0 Gbit/s; HTTP/1.1 3.1).
const H2_RECEIVE_WINDOW: u32 = 4 << 20;

/// An answer's bytes queued per HTTP/2 stream before the ingress reads more from the
/// tunnel (hyper's default is 400 KiB): with [`MAX_CONCURRENT_STREAMS`], at most 6.4 MiB
/// per connection. Downloads measured level against the default.
const H2_SEND_BUFFER: usize = 64 << 10;

/// The protocols the ingress offers in TLS (ALPN), HTTP/2 first as browsers expect.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Seconds a `503` tells the caller to wait before retrying.
const RETRY_AFTER_SECS: &str = "5";

/// Longest wait of a request whose token this server does not know, for the cluster
/// registry's re-read (`Inner::check_token`); a lone server does not wait.
const UNKNOWN_TOKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How the ingress is set up.
#[derive(Debug, Clone)]
pub struct HttpIngressConfig {
    /// Address the ingress listens on (TLS with the server's certificate, or plain on
    /// loopback only).
    pub listen: SocketAddr,
    /// With a domain, `{service}.{tenant}.{domain}` routes by host name too.
    pub domain: Option<String>,
    /// Header carrying the caller's token as is; `None`: `Authorization: Bearer TOKEN`.
    pub token_header: Option<HeaderName>,
    /// Caller connections held at most (TLS handshakes and idle keep-alive included); past
    /// it a new one is closed at once.
    pub max_connections: usize,
    /// Caller connections held at most from one address (IPv6: its /64).
    pub max_connections_per_address: usize,
    /// Every caller connection begins with a PROXY protocol header (v1 or v2) from the
    /// balancer in front, naming the caller; a connection without one is closed. On only
    /// when nothing but that balancer can reach the ingress, or with `proxy_protocol_from`.
    pub proxy_protocol: bool,
    /// The balancers' addresses: only connections from these must (and may) begin with a
    /// PROXY header; any other is a direct caller, known by its own address, whose header
    /// would be read as HTTP, so it cannot claim another caller's address. Empty: every
    /// connection is a balancer's.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

impl HttpIngressConfig {
    /// Whether a connection from `peer` begins with a balancer's PROXY header.
    fn expects_proxy_header(&self, peer: std::net::IpAddr) -> bool {
        self.proxy_protocol
            && (self.proxy_protocol_from.is_empty()
                || crate::networks::contains(&self.proxy_protocol_from, peer))
    }
}

/// [`HttpIngressConfig::max_connections`] unless the operator sets it.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 4096;
/// [`HttpIngressConfig::max_connections_per_address`] unless the operator sets it.
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// Accepts callers until the task is dropped.
pub(crate) async fn serve(inner: Arc<Inner>, listener: TcpListener, config: HttpIngressConfig) {
    let mut errors = AcceptErrors::default();
    let config = Arc::new(config);
    // The tunnel endpoint's certificate, offering HTTP/2 as well (the endpoint itself
    // offers nothing: agents speak WebSocket over HTTP/1.1).
    let tls = inner.tls.as_ref().map(|c| {
        let mut c = (**c).clone();
        c.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    });
    tracing::info!(listen = %config.listen, tls = inner.tls.is_some(), domain = ?config.domain, "http ingress ready");
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                errors.on_error(&listener, "http ingress", &e).await;
                continue;
            }
        };
        // Past a limit the connection closes here: nothing read, nothing answered. Behind
        // a balancer the caller's address comes with the PROXY header, read in the task.
        let from_balancer = config.expects_proxy_header(peer.ip());
        let slot = if from_balancer {
            inner.http_callers.admit_total()
        } else {
            inner.http_callers.admit(peer.ip())
        };
        let Ok(mut slot) = slot else {
            continue;
        };
        culvert_transport::tune_accepted(&tcp);
        let (inner, config, tls) = (inner.clone(), config.clone(), tls.clone());
        tokio::spawn(async move {
            let peer = if from_balancer {
                let Some(caller) = caller_behind_balancer(&inner, &mut tcp, peer).await else {
                    return;
                };
                if slot.assign(caller.ip()).is_err() {
                    return;
                }
                caller
            } else {
                peer
            };
            connection(inner, config, tls, tcp, peer)
                .instrument(tracing::debug_span!("http", %peer))
                .await;
            drop(slot);
        });
    }
}

/// The caller a balancer's PROXY header names (the balancer itself for a header that
/// names none, such as its health checks), read within the handshake timeout; `None`,
/// counted and logged, when the connection brings no valid header in time.
async fn caller_behind_balancer(
    inner: &Inner,
    tcp: &mut TcpStream,
    balancer: SocketAddr,
) -> Option<SocketAddr> {
    let limit = inner.config().handshake_timeout;
    let why = match tokio::time::timeout(limit, crate::proxy_header::read(tcp)).await {
        Ok(Ok(caller)) => return Some(caller.unwrap_or(balancer)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no PROXY protocol header within {limit:?}"),
    };
    tracing::debug!(%balancer, reason = %why, "http ingress: connection without a valid PROXY header closed");
    inner.http_callers.refuse(
        crate::http_callers::Refused::ProxyHeader,
        Some(balancer.ip()),
    );
    None
}

/// One caller connection: TLS (when configured), then HTTP/1.1 with keep-alive or HTTP/2
/// (agreed in TLS by ALPN; on plain loopback, by the caller's connection preface).
async fn connection(
    inner: Arc<Inner>,
    config: Arc<HttpIngressConfig>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let timeout = inner.config().handshake_timeout;
    match tls {
        // rustls does the handshake; the records are Culvert's record layer's, as on the
        // tunnel endpoint: read ahead in large pieces while an upload streams in, opened in
        // place and copied once, responses sealed straight from hyper's buffers.
        Some(tls) => {
            let accept = record_layer::accept(tls, tcp, TLS_BUFFER_LIMIT);
            match tokio::time::timeout(timeout, accept).await {
                Ok(Ok(tls)) => {
                    let version = match tls.alpn_protocol() {
                        Some(b"h2") => Some(Version::HTTP_2),
                        _ => Some(Version::HTTP_11),
                    };
                    http(inner, config, TokioIo::new(tls), peer, true, version).await
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!("tls handshake timed out"),
            }
        }
        None => http(inner, config, TokioIo::new(tcp), peer, false, None).await,
    }
}

/// Serves a caller's requests on `io` in `version` (`None`: the one its first bytes show)
/// until the caller leaves or the connection has been idle for the handshake timeout.
async fn http<T>(
    inner: Arc<Inner>,
    config: Arc<HttpIngressConfig>,
    io: T,
    peer: SocketAddr,
    tls: bool,
    version: Option<Version>,
) where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // The tunnel streams of the services this connection used, reused while they last.
    let upstreams: Arc<Upstreams> = Arc::default();
    let activity: Arc<Activity> = Arc::default();
    let idle_timeout = inner.config().handshake_timeout;
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let (inner, config, upstreams) = (inner.clone(), config.clone(), upstreams.clone());
            let active = activity.begin();
            async move {
                let started = Instant::now();
                let method = req.method().clone();
                let version = req.version();
                let path = req.uri().path().to_owned();
                let (resp, route) = handle(&inner, &config, req, peer, tls, &upstreams).await;
                let status = resp.status();
                let elapsed = started.elapsed();
                if let Some(route) = &route {
                    inner.http_metrics.observe(route, status, elapsed);
                }
                tracing::info!(target: "culvert::http_access", %peer, %method, ?version,
                    route = route.as_deref().unwrap_or("-"), path = %crate::names::escape(&path),
                    status = status.as_u16(), duration_ms = elapsed.as_secs_f64() * 1e3, "http request");
                Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, active)))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(H2_RECEIVE_WINDOW)
        .initial_connection_window_size(H2_RECEIVE_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER);
    let builder = match version {
        Some(Version::HTTP_2) => builder.http2_only(),
        Some(_) => builder.http1_only(),
        None => builder,
    };
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        // Idle (HTTP/2 has no header read timeout; a caller that never sends a request):
        // requests in flight finish, no new one is taken, then the connection closes.
        () = activity.idle_for(idle_timeout) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "http connection ended");
    }
}

/// An answer of the ingress itself: a small JSON body.
fn reply(status: StatusCode, error: &str, service: Option<&str>) -> Response<Body> {
    let body = match service {
        Some(s) => format!("{{\"error\":{error:?},\"service\":{s:?}}}\n"),
        None => format!("{{\"error\":{error:?}}}\n"),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        StatusCode::UNAUTHORIZED => {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    r
}

/// `503` for a service with no agent (or none reachable now), counted under its name.
fn unavailable(name: String) -> (Response<Body>, Option<String>) {
    let r = reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "service unavailable",
        Some(&name),
    );
    (r, Some(name))
}

/// Where a request goes: the service and the path the backend sees.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    tenant: String,
    service: String,
    path_and_query: String,
}

/// Routes by host name under the domain, else by `/t/{tenant}/{service}/…`.
fn route(uri: &Uri, host: Option<&str>, domain: Option<&str>) -> Option<Route> {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    if let (Some(host), Some(domain)) = (host, domain) {
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
            .map_or(host, |(h, _)| h);
        let host = host.to_ascii_lowercase();
        let suffix = format!(".{}", domain.trim_start_matches('.').to_ascii_lowercase());
        if let Some(prefix) = host.strip_suffix(&suffix) {
            let (service, tenant) = prefix.rsplit_once('.')?;
            return valid(tenant, service).then(|| Route {
                tenant: tenant.to_owned(),
                service: service.to_owned(),
                path_and_query: format!("{}{query}", uri.path()),
            });
        }
    }
    let rest = uri.path().strip_prefix("/t/")?;
    let mut parts = rest.splitn(3, '/');
    let (tenant, service) = (parts.next()?, parts.next()?);
    let path = format!("/{}", parts.next().unwrap_or(""));
    valid(tenant, service).then(|| Route {
        tenant: tenant.to_owned(),
        service: service.to_owned(),
        path_and_query: format!("{path}{query}"),
    })
}

fn valid(tenant: &str, service: &str) -> bool {
    ServiceRef::parse(&format!("{tenant}/{service}")).is_some()
}

/// The caller's token from the configured header.
fn caller_token<'a>(h: &'a HeaderMap, name: Option<&HeaderName>) -> Option<&'a str> {
    match name {
        Some(n) => h.get(n)?.to_str().ok().map(str::trim),
        None => {
            let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }
    }
}

async fn handle(
    inner: &Arc<Inner>,
    config: &HttpIngressConfig,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    upstreams: &Upstreams,
) -> (Response<Body>, Option<String>) {
    // HTTP/2 names the host in the request's authority, HTTP/1.1 in its Host header.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(str::to_owned);
    let Some(route) = route(req.uri(), host.as_deref(), config.domain.as_deref()) else {
        return (
            reply(
                StatusCode::NOT_FOUND,
                "no such route: use /t/TENANT/SERVICE/…",
                None,
            ),
            None,
        );
    };
    let name = format!("{}/{}", route.tenant, route.service);

    // The caller: a live token of role http that may reach this service. Unknown, missing
    // and expired tokens get one answer; failures count towards the address's lockout.
    let now = std::time::Instant::now();
    if let Some(left) = inner.admission.locked(peer.ip(), uuid::Uuid::nil(), now) {
        let mut r = reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed attempts",
            None,
        );
        if let Ok(v) = HeaderValue::from_str(&(left.as_secs() + 1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return (r, None);
    }
    let entry = match caller_token(req.headers(), config.token_header.as_ref()) {
        // In a cluster, a token made a moment ago is looked up again after a re-read.
        Some(t) => inner
            .check_token(t, tokio::time::Instant::now() + UNKNOWN_TOKEN_WAIT)
            .await
            .filter(|e| !e.expired(crate::tokens::unix_now())),
        None => None,
    };
    let Some(entry) = entry else {
        inner.admission.record_failure(peer.ip(), None, now);
        inner
            .counters
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (reply(StatusCode::UNAUTHORIZED, "unauthorized", None), None);
    };
    if !entry.has_role(Role::Http) || !entry.may_access(&route.tenant, &route.service) {
        tracing::info!(token = %entry.name, service = %name, "http caller not allowed this service");
        return (reply(StatusCode::FORBIDDEN, "forbidden", Some(&name)), None);
    }

    // Fail closed: no agent, no request.
    let Some((owner, svc)) = inner.find_service(&route.tenant, &route.service) else {
        return unavailable(name);
    };

    // What the backend sees: the path under the service, no caller token, who asked.
    let caller_upgrade = prepare(&mut req, &route, config, host.as_deref(), peer, tls);
    // An HTTP/1.1 caller's kept stream is waited for (its previous answer may be ending
    // now); an HTTP/2 caller's concurrent requests each take an idle stream or a new one.
    let sequential = req.version() != Version::HTTP_2;
    let mut sender = match upstreams.take(&name, sequential).await {
        Some(s) => s,
        None => {
            let stream = match owner
                .open_connection(&svc, format!("http:{}@{peer}", entry.name))
                .await
            {
                Ok(s) => s,
                Err(reason) => {
                    tracing::debug!(%reason, service = %name, "no stream to the agent");
                    return unavailable(name);
                }
            };
            svc.connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok((sender, conn)) => {
                    tokio::spawn(async move {
                        if let Err(e) = conn.with_upgrades().await {
                            tracing::debug!(error = %e, "tunnel stream ended");
                        }
                    });
                    sender
                }
                Err(e) => {
                    tracing::debug!(error = %e, "http over the tunnel stream failed");
                    return (
                        reply(StatusCode::BAD_GATEWAY, "bad gateway", Some(&name)),
                        Some(name),
                    );
                }
            }
        }
    };
    let metrics = inner.http_metrics.service(&name);
    let mut resp = match sender
        .send_request(req.map(|b| Counted::up(b, metrics)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            // The stream is let go of with its sender.
            tracing::debug!(error = %e, service = %name, "no answer through the tunnel");
            return (
                reply(StatusCode::BAD_GATEWAY, "bad gateway", Some(&name)),
                Some(name),
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The stream now carries the upgraded protocol: it serves no further requests.
        drop(sender);
        if let Some(caller) = caller_upgrade {
            let agent_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let Ok((a, b)) = tokio::try_join!(caller, agent_side) {
                    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    } else {
        upstreams.put(name.clone(), sender);
        strip_hop_by_hop(resp.headers_mut());
    }
    let metrics = inner.http_metrics.service(&name);
    (resp.map(|b| Counted::down(b, metrics).boxed()), Some(name))
}

/// Rewrites the caller's request for the agent; returns the caller's side of an upgrade.
fn prepare(
    req: &mut Request<Incoming>,
    route: &Route,
    config: &HttpIngressConfig,
    host: Option<&str>,
    peer: SocketAddr,
    tls: bool,
) -> Option<hyper::upgrade::OnUpgrade> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| connection_has(req.headers(), "upgrade"));
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));
    if let Ok(uri) = route.path_and_query.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    // The tunnel stream carries HTTP/1.1 whatever the caller spoke; an HTTP/2 request's
    // authority becomes its Host, and its cookie crumbs one Cookie header.
    let from_h2 = req.version() == Version::HTTP_2;
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    if from_h2 {
        join_cookies(h);
    }
    if let Some(v) = host.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.entry(header::HOST).or_insert(v);
    }
    match &config.token_header {
        Some(n) => {
            h.remove(n);
        }
        None => {
            h.remove(header::AUTHORIZATION);
        }
    }
    strip_hop_by_hop(h);
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
    // Set from what the server saw, not appended to what the caller claims.
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        h.insert("x-forwarded-for", v);
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host.and_then(|v| HeaderValue::from_str(v).ok()) {
        Some(v) => {
            h.insert("x-forwarded-host", v);
        }
        None => {
            h.remove("x-forwarded-host");
        }
    }
    on_upgrade
}

/// HTTP/2 lets a caller split its cookies over several `cookie` fields (browsers do, for
/// header compression); HTTP/1.1 allows one Cookie header, so they are joined with `; `
/// as RFC 9113 §8.2.3 asks of a gateway to HTTP/1.1.
fn join_cookies(h: &mut HeaderMap) {
    let crumbs: Vec<&[u8]> = h
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if crumbs.len() < 2 {
        return;
    }
    if let Ok(v) = HeaderValue::from_bytes(&crumbs.join(&b"; "[..])) {
        h.insert(header::COOKIE, v);
    }
}

/// Binds the ingress listener, refusing plain HTTP off loopback.
pub(crate) async fn bind(config: &HttpIngressConfig, tls: bool) -> std::io::Result<TcpListener> {
    if !tls && !config.listen.ip().is_loopback() {
        return Err(std::io::Error::other(
            "plain HTTP ingress is only allowed on a loopback address; configure TLS",
        ));
    }
    TcpListener::bind(config.listen).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(uri: &str, host: Option<&str>, domain: Option<&str>) -> Option<Route> {
        route(&uri.parse().unwrap(), host, domain)
    }

    #[test]
    fn routes_by_path_and_by_host() {
        let x = r("/t/acme/erp/api/orders?x=1", None, None).unwrap();
        assert_eq!(
            (
                x.tenant.as_str(),
                x.service.as_str(),
                x.path_and_query.as_str()
            ),
            ("acme", "erp", "/api/orders?x=1")
        );
        assert_eq!(r("/t/acme/erp", None, None).unwrap().path_and_query, "/");
        assert!(r("/x/acme/erp", None, None).is_none());
        assert!(r("/t/acme", None, None).is_none());
        assert!(r("/t/ac%20me/erp/", None, None).is_none());
        let x = r(
            "/api?y",
            Some("erp.acme.example.com:8443"),
            Some("example.com"),
        )
        .unwrap();
        assert_eq!(
            (
                x.tenant.as_str(),
                x.service.as_str(),
                x.path_and_query.as_str()
            ),
            ("acme", "erp", "/api?y")
        );
        // Another host falls back to the path route.
        assert!(r("/api", Some("other.org"), Some("example.com")).is_none());
    }

    #[test]
    fn only_the_named_balancers_send_proxy_headers() {
        let mut c = HttpIngressConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            domain: None,
            token_header: None,
            max_connections: 1,
            max_connections_per_address: 1,
            proxy_protocol: false,
            proxy_protocol_from: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::7/128".parse().unwrap(),
            ],
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(
            !c.expects_proxy_header(ip("10.1.2.3")),
            "off: no header from anyone"
        );
        c.proxy_protocol = true;
        assert!(c.expects_proxy_header(ip("10.1.2.3")));
        assert!(c.expects_proxy_header(ip("::ffff:10.1.2.3")), "v4-mapped");
        assert!(c.expects_proxy_header(ip("2001:db8::7")));
        assert!(!c.expects_proxy_header(ip("2001:db8::8")));
        assert!(!c.expects_proxy_header(ip("192.0.2.1")), "a direct caller");
        c.proxy_protocol_from.clear();
        assert!(
            c.expects_proxy_header(ip("192.0.2.1")),
            "no list: every peer is a balancer"
        );
    }

    #[test]
    fn cookie_crumbs_become_one_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, [HeaderValue::from_static("a=1; b=2; c=3")]);
    }

    #[test]
    fn tokens_from_bearer_or_a_named_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(caller_token(&h, None), Some("abc"));
        let n = HeaderName::from_static("x-culvert-token");
        assert_eq!(caller_token(&h, Some(&n)), None);
        h.insert(n.clone(), HeaderValue::from_static("def"));
        assert_eq!(caller_token(&h, Some(&n)), Some("def"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(caller_token(&h, None), None);
    }
}
