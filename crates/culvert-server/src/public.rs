//! Public TCP listeners: each accepted client becomes a stream to the agent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use culvert_proto::reset_code;
use culvert_transport::{relay_tcp_until, tune_accepted, AcceptErrors};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::server::Inner;
use crate::session::{Service, Session};

/// Accepts public clients until aborted. Accept errors are logged once per burst and
/// retried after a pause, never fatal; out of file descriptors, the clients already
/// waiting are refused with a reset rather than left hanging.
pub(crate) async fn serve_tcp(
    inner: Arc<Inner>,
    listener: TcpListener,
    session: Arc<Session>,
    service: Arc<Service>,
) {
    let mut errors = AcceptErrors::default();
    let name = format!("public port of {}", service.name);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                errors.on_error(&listener, &name, &e).await;
                continue;
            }
        };
        service.connections.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!(
            "public",
            service = %service.name,
            client = %peer,
            stream = tracing::field::Empty
        );
        tokio::spawn(
            handle(inner.clone(), sock, peer, session.clone(), service.clone()).instrument(span),
        );
    }
}

/// Serves one public client of `service`, whose agent this server holds.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    mut sock: TcpStream,
    peer: std::net::SocketAddr,
    session: Arc<Session>,
    service: Arc<Service>,
) {
    tune_accepted(&sock);
    let Some(peer) = client_behind(&inner, &mut sock, peer).await else {
        culvert_transport::reset_on_close(&sock);
        return;
    };
    if !client_admitted(&inner.counters, &session.token(), peer) {
        culvert_transport::reset_on_close(&sock);
        return;
    }
    let stream = match session.open_connection(&service, peer.to_string()).await {
        Ok(s) => s,
        Err(reason) => {
            // Refused at once with a reset, so the client fails fast instead of hanging.
            tracing::debug!(%reason, "refusing client");
            culvert_transport::reset_on_close(&sock);
            return;
        }
    };
    tracing::Span::current().record("stream", stream.id().0);
    // A reload that withdraws the service cuts its connections: the client's socket and the
    // stream to the agent are both reset.
    let totals = relay_tcp_until(sock, &stream, None, service.withdrawn()).await;
    service.count(&totals);
    if totals.is_err() && service.is_withdrawn() {
        stream.reset(reset_code::NOT_ALLOWED);
        crate::reload::stream_reset(
            &inner.counters,
            &session.token().name,
            &service.name,
            "its service was withdrawn",
        );
        return;
    }
    match totals {
        Ok(t) => tracing::debug!(up = t.up, down = t.down, "public connection done"),
        Err(e) => tracing::debug!(error = %e, "public connection aborted"),
    }
}

/// The client of a public connection: the one a balancer's PROXY header names when `peer`
/// is one of `--public-proxy-protocol-from` (the balancer itself for a header that names
/// none, such as its health check), else `peer`. `None`, counted and logged, when a
/// balancer's connection brings no valid header within the handshake timeout.
async fn client_behind(
    inner: &Inner,
    sock: &mut TcpStream,
    peer: std::net::SocketAddr,
) -> Option<std::net::SocketAddr> {
    let config = inner.config();
    if !crate::networks::contains(&config.public_proxy_protocol_from, peer.ip()) {
        return Some(peer);
    }
    let limit = config.handshake_timeout;
    let why = match crate::proxy_header::client_within(sock, peer, limit).await {
        Ok(client) => {
            tracing::debug!(balancer = %peer, %client, "public client behind a balancer");
            return Some(client);
        }
        Err(why) => why,
    };
    inner
        .counters
        .public_refused_proxy_header
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(balancer = %peer, reason = %why, "public connection without a valid PROXY header closed");
    None
}

/// Whether the owner `token`'s `public_clients` admit a public client at `client`, here or
/// forwarded from another server of the cluster; a refusal is counted and logged (the
/// caller then resets the connection, so nothing reaches the agent).
pub(crate) fn client_admitted(
    counters: &crate::server::Counters,
    token: &crate::TokenEntry,
    client: std::net::SocketAddr,
) -> bool {
    if token.admits_public_client(client.ip()) {
        return true;
    }
    counters
        .public_refused_client_address
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%client, "public client refused: its address is not in the token's public_clients");
    false
}
