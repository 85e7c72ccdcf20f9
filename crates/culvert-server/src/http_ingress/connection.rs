//! One caller connection of the ingress: TLS by the record layer, then HTTP/1.1 or
//! HTTP/2 (ALPN, or the connection preface in plain), served until the caller leaves or the
//! connection idles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::Version;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::activity::{Activity, Tracked};
use super::request::handle;
use super::upstream::{Upstreams, MAX_KEPT};
use super::HttpIngressConfig;
use crate::server::Inner;
use culvert_transport::record_layer;
use culvert_transport::ws::TLS_BUFFER_LIMIT;

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

/// The server's TLS configuration for the ingress: the tunnel endpoint's certificate,
/// offering HTTP/2 as well (the endpoint itself offers nothing: agents speak WebSocket over
/// HTTP/1.1).
pub(super) fn tls_config(
    endpoint: Option<&Arc<tokio_rustls::rustls::ServerConfig>>,
) -> Option<Arc<tokio_rustls::rustls::ServerConfig>> {
    endpoint.map(|c| {
        let mut c = (**c).clone();
        c.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    })
}

/// One caller connection: TLS (when configured), then HTTP/1.1 with keep-alive or HTTP/2
/// (agreed in TLS by ALPN; on plain loopback, by the caller's connection preface).
pub(super) async fn connection(
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
            // A caller that never lets the shutdown finish (it reads nothing, or starts
            // nothing more) is let go of after another idle period.
            tokio::select! {
                ended = conn.as_mut() => ended,
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!("http connection dropped: its graceful shutdown did not finish");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "http connection ended");
    }
}
