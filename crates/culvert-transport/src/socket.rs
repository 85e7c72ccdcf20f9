//! Socket options every Culvert TCP socket gets.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Longest a UDP send may wait for room in its socket buffer before the datagram is
/// dropped: UDP sends on loopback and LANs complete at once, and a flow must not stall.
pub const UDP_SEND_DEADLINE: Duration = Duration::from_millis(100);

/// Idle time before the first keepalive probe, and the interval between probes.
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

fn apply(sock: socket2::SockRef<'_>) {
    if let Err(e) = sock.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "set_tcp_keepalive failed");
    }
}

/// `TCP_NODELAY` (Culvert coalesces explicitly, so Nagle only adds latency) and TCP keepalive
/// (so a silently vanished peer is eventually noticed even between heartbeats).
pub fn tune_tcp(s: &TcpStream) {
    apply(socket2::SockRef::from(s));
}

/// Options of a tunnel connection's socket (both ends): `TCP_USER_TIMEOUT` set to the
/// connection's idle timeout, so the kernel gives up on unacknowledged data as soon as the
/// connection's own timers would (its default retransmission limit is about 15 minutes),
/// and a write blocked on a dead path fails instead of waiting that long. Linux only.
pub fn tune_tunnel(s: &TcpStream, user_timeout: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(e) = socket2::SockRef::from(s).set_tcp_user_timeout(Some(user_timeout)) {
        tracing::debug!(error = %e, "set_tcp_user_timeout failed");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = (s, user_timeout);
}

/// Makes dropping `s` send a reset instead of a FIN (`SO_LINGER` 0; no blocking on drop):
/// how a client that cannot be served is refused at once rather than left to wait.
pub fn reset_on_close(s: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "set_linger failed");
    }
}

/// Gives a listener the options of [`tune_tcp`]. On Linux the sockets it accepts inherit
/// them, which saves four system calls per accepted connection (see [`tune_accepted`]).
/// It also takes the process's reserve descriptor (`fd_reserve`).
pub fn tune_listener(l: &TcpListener) {
    apply(socket2::SockRef::from(l));
    crate::fd_reserve::take_reserve();
}

/// [`tune_tcp`] for a socket accepted from a listener given [`tune_listener`]: nothing to do
/// where accepted sockets inherit the listener's options (Linux), the full set elsewhere.
pub fn tune_accepted(s: &TcpStream) {
    if !cfg!(target_os = "linux") {
        tune_tcp(s);
    }
}

/// Sends `data` to `to` on a non-blocking socket at once, straight to the kernel: `false`
/// when the kernel refused it (its send buffer full: the caller drops and counts it, as a
/// router with a full queue would). Not tokio's `try_send_to`, which after one refusal
/// answers WouldBlock without trying until the reactor next reports the socket writable,
/// and so would drop datagrams the kernel had room for again.
pub fn send_to_now(socket: &UdpSocket, data: &[u8], to: std::net::SocketAddr) -> bool {
    socket2::SockRef::from(socket)
        .send_to(data, &to.into())
        .is_ok()
}

/// A non-blocking UDP socket bound to `bind`, asking for `recv` (and `send`, if given)
/// bytes of kernel buffer, capped by the kernel at `net.core.[rw]mem_max`, so bursts that
/// arrive while a relay task is busy are not dropped.
pub fn bind_udp(
    bind: std::net::SocketAddr,
    recv: usize,
    send: Option<usize>,
) -> std::io::Result<UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(recv);
    if let Some(n) = send {
        let _ = sock.set_send_buffer_size(n);
    }
    sock.set_nonblocking(true)?;
    sock.bind(&bind.into())?;
    UdpSocket::from_std(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The saving in [`tune_accepted`] rests on inheritance: check it on this kernel.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tune_listener(&l);
        let addr = l.local_addr().unwrap();
        let (_c, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (s, _) = accepted.unwrap();
        tune_accepted(&s);
        let r = socket2::SockRef::from(&s);
        assert!(r.nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            assert_eq!(r.keepalive_time().unwrap(), KEEPALIVE_TIME);
            assert_eq!(r.keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn tunnel_sockets_get_the_user_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        tune_tunnel(&c, Duration::from_millis(4500));
        let r = socket2::SockRef::from(&c);
        assert_eq!(
            r.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(4500))
        );
    }
}
