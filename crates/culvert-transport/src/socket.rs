//! Socket options every Culvert TCP socket gets.

use std::time::Duration;

use tokio::net::TcpStream;

/// `TCP_NODELAY` (Culvert coalesces explicitly, so Nagle only adds latency) and TCP keepalive
/// (so a silently vanished peer is eventually noticed even between heartbeats).
pub fn tune_tcp(s: &TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let sock = socket2::SockRef::from(s);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "set_tcp_keepalive failed");
    }
}
