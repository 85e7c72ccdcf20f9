//! The bench service: the backend `culvert bench` measures against, started in-process by
//! `culvert bench --loopback`, by an agent run with `--bench-service NAME`, and by
//! `culvert bench --serve ADDR` (the direct baseline of a live tunnel).
//!
//! # Protocol
//!
//! One TCP listener serves every TCP workload; the client's first byte selects the mode:
//!
//! | first byte | then the client sends | the service |
//! |---|---|---|
//! | `S` (sink) | any bytes, then half-closes | discards them; at EOF writes the number of bytes received after the `S` as 8 bytes big-endian, then closes |
//! | `G` (source) | an 8-byte big-endian length N | sends N bytes, then closes; it stops early (and closes) when the client half-closes or sends anything more |
//! | `E` (echo) | any bytes, then half-closes | writes every byte back as it arrives; at EOF closes |
//!
//! Any other first byte closes the connection. A connection that moves no byte for
//! [`IDLE_TIMEOUT`] is closed.
//!
//! The UDP socket sends every datagram back to its sender unchanged.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// First byte of a sink connection.
pub const SINK: u8 = b'S';
/// First byte of a source connection (an 8-byte big-endian length follows).
pub const SOURCE: u8 = b'G';
/// First byte of an echo connection.
pub const ECHO: u8 = b'E';

/// A connection of the service that moves no byte for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Size of the reads and writes of the service.
const CHUNK: usize = 64 << 10;

/// A running bench service; its tasks stop when it is dropped.
#[derive(Debug)]
pub struct BenchService {
    /// Address of the TCP listener.
    pub tcp: SocketAddr,
    /// Address of the UDP echo socket.
    pub udp: SocketAddr,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for BenchService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl BenchService {
    /// Starts the service with its TCP listener on `tcp` and its UDP socket on `udp`; a
    /// `udp` of `None` takes the TCP listener's address (so one HOST:PORT serves both).
    pub async fn start(tcp: SocketAddr, udp: Option<SocketAddr>) -> io::Result<BenchService> {
        let listener = TcpListener::bind(tcp).await?;
        let tcp = listener.local_addr()?;
        let udp_socket = UdpSocket::bind(udp.unwrap_or(tcp)).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("bench service UDP socket on {}: {e}", udp.unwrap_or(tcp)),
            )
        })?;
        let udp = udp_socket.local_addr()?;
        let tasks = vec![
            tokio::spawn(serve_tcp(listener)).abort_handle(),
            tokio::spawn(serve_udp(udp_socket)).abort_handle(),
        ];
        tracing::debug!(%tcp, %udp, "bench service started");
        Ok(BenchService { tcp, udp, tasks })
    }

    /// The services an agent exposes for it: `NAME` (TCP) and `NAME-udp` (UDP), both
    /// private when `private` is set.
    pub fn specs(
        &self,
        name: &str,
        private: bool,
    ) -> anyhow::Result<Vec<culvert_agent::ServiceSpec>> {
        let udp_name = udp_service_name(name);
        if !culvert_agent::valid_service_name(name) || !culvert_agent::valid_service_name(&udp_name)
        {
            anyhow::bail!(
                "--bench-service {name:?}: want 1 to 60 of A-Z a-z 0-9 . _ - (NAME-udp is exposed too)"
            );
        }
        [
            format!("{name}=tcp://{}", self.tcp),
            format!("{udp_name}=udp://{}", self.udp),
        ]
        .iter()
        .map(|s| {
            s.parse::<culvert_agent::ServiceSpec>()
                .map(|mut spec| {
                    spec.private = private;
                    spec
                })
                .map_err(anyhow::Error::msg)
        })
        .collect()
    }
}

/// The name of the UDP half of bench service `name`.
pub fn udp_service_name(name: &str) -> String {
    format!("{name}-udp")
}

async fn serve_tcp(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(s).await {
                        tracing::debug!(%peer, error = %e, "bench connection ended with an error");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "bench service cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `fut`, failing with `TimedOut` after [`IDLE_TIMEOUT`].
async fn idle<T>(fut: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IDLE_TIMEOUT, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))?
}

/// Serves one connection of the protocol in the module docs.
pub async fn serve_conn(mut s: TcpStream) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut mode = [0u8; 1];
    idle(s.read_exact(&mut mode)).await?;
    match mode[0] {
        SINK => {
            let mut buf = vec![0u8; CHUNK];
            let mut total: u64 = 0;
            loop {
                let n = idle(s.read(&mut buf)).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            idle(s.write_all(&total.to_be_bytes())).await?;
            idle(s.shutdown()).await
        }
        SOURCE => {
            let mut len = [0u8; 8];
            idle(s.read_exact(&mut len)).await?;
            let mut left = u64::from_be_bytes(len);
            let (mut r, mut w) = s.split();
            let send = async {
                let buf = vec![0x5a_u8; CHUNK];
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    idle(w.write_all(&buf[..n])).await?;
                    left -= n as u64;
                }
                io::Result::Ok(())
            };
            let mut probe = [0u8; 1];
            tokio::select! {
                sent = send => sent?,
                // EOF, a byte or an error from the client: it wants no more.
                _ = r.read(&mut probe) => {}
            }
            idle(w.shutdown()).await
        }
        ECHO => {
            let (mut r, mut w) = s.split();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = idle(r.read(&mut buf)).await?;
                if n == 0 {
                    break;
                }
                idle(w.write_all(&buf[..n])).await?;
            }
            idle(w.shutdown()).await
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown bench mode byte {other:#04x}"),
        )),
    }
}

async fn serve_udp(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                // A full socket buffer drops the datagram, as the network would.
                let _ = socket.try_send_to(&buf[..n], from);
            }
            Err(e) => {
                // ICMP port unreachable from an earlier reply shows up here on some systems.
                tracing::debug!(error = %e, "bench UDP receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn service() -> BenchService {
        BenchService::start(
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap()
    }

    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("bench service test timed out")
    }

    #[tokio::test]
    async fn sink_counts_the_bytes_received() {
        let svc = service().await;
        bounded(async {
            let mut s = TcpStream::connect(svc.tcp).await.unwrap();
            s.write_all(&[SINK]).await.unwrap();
            let data = vec![7u8; 300_001];
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, 300_001u64.to_be_bytes());
        })
        .await;
    }

    #[tokio::test]
    async fn source_sends_the_length_asked_then_closes() {
        let svc = service().await;
        bounded(async {
            for len in [0u64, 1, 200_000] {
                let mut s = TcpStream::connect(svc.tcp).await.unwrap();
                s.write_all(&[SOURCE]).await.unwrap();
                s.write_all(&len.to_be_bytes()).await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert_eq!(back.len() as u64, len);
            }
        })
        .await;
    }

    #[tokio::test]
    async fn source_stops_when_the_client_half_closes() {
        let svc = service().await;
        bounded(async {
            let mut s = TcpStream::connect(svc.tcp).await.unwrap();
            s.write_all(&[SOURCE]).await.unwrap();
            s.write_all(&u64::MAX.to_be_bytes()).await.unwrap();
            let mut first = vec![0u8; 10_000];
            s.read_exact(&mut first).await.unwrap();
            s.shutdown().await.unwrap();
            // It ends: read_to_end returns instead of reading forever.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn echo_returns_every_byte_then_closes() {
        let svc = service().await;
        bounded(async {
            let mut s = TcpStream::connect(svc.tcp).await.unwrap();
            s.write_all(&[ECHO]).await.unwrap();
            let mut one = [0u8; 64];
            for i in 0..10u8 {
                s.write_all(&[i; 64]).await.unwrap();
                s.read_exact(&mut one).await.unwrap();
                assert_eq!(one, [i; 64]);
            }
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let (mut r, mut w) = s.split();
            let write = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let (_, n) = tokio::join!(write, r.read_to_end(&mut back));
            n.unwrap();
            assert_eq!(back, data);
        })
        .await;
    }

    #[tokio::test]
    async fn unknown_mode_closes_and_udp_echoes() {
        let svc = service().await;
        bounded(async {
            let mut s = TcpStream::connect(svc.tcp).await.unwrap();
            s.write_all(b"X").await.unwrap();
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back).await;
            assert!(back.is_empty());

            let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            u.connect(svc.udp).await.unwrap();
            u.send(b"ping").await.unwrap();
            let mut buf = [0u8; 16];
            let n = u.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"ping");
        })
        .await;
    }

    #[tokio::test]
    async fn specs_name_both_halves() {
        let svc = service().await;
        let specs = svc.specs("bench", false).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "bench");
        assert_eq!(specs[0].target, svc.tcp.to_string());
        assert_eq!(specs[1].name, "bench-udp");
        assert_eq!(specs[1].protocol, culvert_proto::ServiceProtocol::Udp);
        assert!(svc.specs("bad name", false).is_err());
        assert!(svc.specs(&"x".repeat(61), false).is_err());
        assert!(svc.specs("b", true).unwrap().iter().all(|s| s.private));
    }
}
