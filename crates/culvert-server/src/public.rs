//! Public TCP listeners: each accepted client becomes a stream to the agent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use culvert_transport::{relay_tcp, tune_accepted, AcceptErrors};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::session::{Service, Session};

/// Accepts public clients until aborted. Accept errors are logged once per burst and
/// retried after a pause, never fatal; out of file descriptors, the clients already
/// waiting are refused with a reset rather than left hanging.
pub(crate) async fn serve_tcp(listener: TcpListener, session: Arc<Session>, service: Arc<Service>) {
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
        tokio::spawn(handle(sock, peer, session.clone(), service.clone()).instrument(span));
    }
}

async fn handle(
    sock: TcpStream,
    peer: std::net::SocketAddr,
    session: Arc<Session>,
    service: Arc<Service>,
) {
    tune_accepted(&sock);
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
    let totals = relay_tcp(sock, &stream).await;
    service.count(&totals);
    match totals {
        Ok(t) => tracing::debug!(up = t.up, down = t.down, "public connection done"),
        Err(e) => tracing::debug!(error = %e, "public connection aborted"),
    }
}
