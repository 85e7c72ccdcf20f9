//! The agent's reverse proxy for HTTP services: a hyper server on each tunnel stream the
//! server opens for the service, and a hyper client to the backend.
//!
//! Per request: hop-by-hop headers are dropped, `Host` becomes the backend's (unless the
//! service keeps the caller's), the service's injected headers are set (replacing any the
//! caller sent), and bodies stream both ways without being buffered. The `X-Forwarded-*`
//! headers come from the server, which saw the caller. One backend connection serves a
//! tunnel stream's requests in turn (keep-alive), and is replaced if the backend closes
//! it; a request that a reused connection closes under before any answer is sent once
//! more on a new one when that is safe (no body, an idempotent method: `replayable_head`).
//! An `Upgrade` (WebSocket) is passed through: after the backend's 101 the two sides are
//! spliced.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::http_backend::HttpBackend;
use crate::ServiceCounters;
use culvert_transport::http_hop::{connection_has, replayable_head, strip_hop_by_hop};
use culvert_transport::TunnelStream;

/// Body of what the agent answers: the backend's, or a short error of its own.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Body of what the agent sends the backend: the caller's, or none when a bodyless request
/// is sent again on a new connection.
type Outgoing = Either<Incoming, Empty<Bytes>>;

/// How long a request head may take to arrive on a tunnel stream (and so how long one may
/// stay open between requests). A backend's answer head has the service's own bound,
/// [`HttpBackend::response_timeout`].
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves HTTP on one tunnel stream until the server closes it; what happens to each
/// request is counted in `counters`.
pub async fn serve(
    stream: TunnelStream,
    backend: Arc<HttpBackend>,
    dial_timeout: Duration,
    counters: Arc<ServiceCounters>,
) {
    let conn = Arc::new(Mutex::new(None::<SendRequest<Outgoing>>));
    let svc = hyper::service::service_fn(move |req| {
        let (backend, conn, counters) = (backend.clone(), conn.clone(), counters.clone());
        async move {
            Ok::<_, std::convert::Infallible>(
                match forward(req, &backend, &conn, dial_timeout, &counters).await {
                    Ok(r) => {
                        counters.http.answered.fetch_add(1, Ordering::Relaxed);
                        r
                    }
                    Err((status, why)) => {
                        counters.http.refused(status);
                        tracing::info!(backend = %backend.url(), %status, reason = %why, "request not forwarded");
                        error_response(status, &why)
                    }
                },
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "http stream ended");
    }
}

/// An error answered by the agent itself (the backend's answers pass unchanged).
fn error_response(status: StatusCode, why: &str) -> Response<ProxyBody> {
    let body = format!("{{\"error\":{:?}}}\n", why);
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

type Refusal = (StatusCode, String);

async fn forward(
    mut req: Request<Incoming>,
    backend: &HttpBackend,
    conn: &Mutex<Option<SendRequest<Outgoing>>>,
    dial_timeout: Duration,
    counters: &ServiceCounters,
) -> Result<Response<ProxyBody>, Refusal> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| connection_has(req.headers(), "upgrade"));
    let caller_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    rewrite_request(&mut req, backend, upgrade.as_ref())?;

    let mut slot = conn.lock().await;
    let mut reused = match slot.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    // Kept while the request goes out on a reused connection: see `replayable_head`.
    let mut replay = if reused {
        replayable_head(&req, req.body().is_end_stream())
    } else {
        None
    };
    let mut req = req.map(Either::Left);
    // One bound for the answer's head, a second try included: a request sent again does
    // not give the backend twice the time.
    let deadline = tokio::time::Instant::now() + backend.response_timeout;
    let mut resp = loop {
        if !reused {
            let sender = connect(backend, dial_timeout)
                .await
                .inspect_err(|_| counters.dial_failed())?;
            counters.dialed();
            counters
                .http
                .backend_connections
                .fetch_add(1, Ordering::Relaxed);
            *slot = Some(sender);
        }
        let sender = slot.as_mut().expect("set above");
        // A backend that never answers does not hold the caller forever: the answer's head
        // must come by the deadline (bodies then stream for as long as they last).
        let answer = tokio::time::timeout_at(deadline, sender.try_send_request(req)).await;
        match answer {
            Ok(Ok(r)) => break r,
            // The connection is in an unknown state: the next request dials afresh.
            Ok(Err(mut e)) => {
                *slot = None;
                // A reused connection that closed under the request: once more on a new
                // one, if the request never went out or may be sent twice. (A new
                // connection failing is the backend's answer: no second try.)
                let again = if reused {
                    e.take_message().or_else(|| {
                        replay
                            .take()
                            .map(|h| h.map(|()| Either::Right(Empty::new())))
                    })
                } else {
                    None
                };
                let Some(r) = again else {
                    return Err((StatusCode::BAD_GATEWAY, format!("backend: {}", e.error())));
                };
                counters.http.retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = %backend.url(), error = %e.error(), "a reused backend connection closed under a request: sending it again on a new one");
                req = r;
                reused = false;
            }
            Err(_) => {
                *slot = None;
                return Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "backend {}: no answer within {:?}",
                        backend.url(),
                        backend.response_timeout
                    ),
                ));
            }
        }
    };
    drop(slot);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(caller) = caller_upgrade {
            let backend_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(caller, backend_side) {
                    Ok((a, b)) => {
                        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                        let r = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                        tracing::debug!(result = ?r, "upgraded connection done");
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    Ok(resp.map(|b| b.boxed()))
}

/// Makes the caller's request the backend's: path under the URL's prefix, `Host`, no
/// hop-by-hop headers (but the upgrade, when there is one), injected headers set.
fn rewrite_request(
    req: &mut Request<Incoming>,
    backend: &HttpBackend,
    upgrade: Option<&HeaderValue>,
) -> Result<(), Refusal> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = format!("{}{}", backend.base_path, pq);
    *req.uri_mut() = path
        .parse::<Uri>()
        .map_err(|_| (StatusCode::BAD_REQUEST, "bad request path".to_owned()))?;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u.clone());
    }
    if !backend.keep_host || !headers.contains_key(header::HOST) {
        let host = HeaderValue::from_str(&backend.authority)
            .map_err(|_| (StatusCode::BAD_GATEWAY, "bad backend host".to_owned()))?;
        headers.insert(header::HOST, host);
    }
    for (name, value) in backend.injected().iter() {
        headers.insert(name.clone(), value.clone());
    }
    Ok(())
}

/// A new connection to the backend (TCP, TLS for `https://`), its driver spawned.
async fn connect(
    backend: &HttpBackend,
    dial_timeout: Duration,
) -> Result<SendRequest<Outgoing>, Refusal> {
    let gateway = |e: String| {
        (
            StatusCode::BAD_GATEWAY,
            format!("backend {}: {e}", backend.url()),
        )
    };
    let tcp = tokio::time::timeout(
        dial_timeout,
        TcpStream::connect((backend.host.as_str(), backend.port)),
    )
    .await
    .map_err(|_| {
        (
            StatusCode::GATEWAY_TIMEOUT,
            format!("backend {}: connect timed out", backend.url()),
        )
    })?
    .map_err(|e| gateway(e.to_string()))?;
    culvert_transport::tune_tcp(&tcp);
    if backend.tls {
        let config = backend.client_tls().map_err(gateway)?;
        let name = rustls::pki_types::ServerName::try_from(backend.host.clone())
            .map_err(|e| gateway(e.to_string()))?;
        let tls = tokio::time::timeout(
            dial_timeout,
            culvert_transport::record_layer::connect(
                config,
                name,
                tcp,
                culvert_transport::ws::TLS_BUFFER_LIMIT,
            ),
        )
        .await
        .map_err(|_| {
            (
                StatusCode::GATEWAY_TIMEOUT,
                format!("backend {}: TLS timed out", backend.url()),
            )
        })?
        .map_err(|e| gateway(e.to_string()))?;
        handshake(TokioIo::new(tls)).await.map_err(gateway)
    } else {
        handshake(TokioIo::new(tcp)).await.map_err(gateway)
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Outgoing>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}
