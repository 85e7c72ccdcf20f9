//! Shared helpers of the end-to-end tunnel tests: a real server and agent on loopback with
//! real TLS (self-signed certificate, pinned by the agent), test backends, and a byte-exact
//! two-way transfer checked with SHA-256.
//!
//! Each test file includes this module with `mod support;` and uses only part of it, hence
//! the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

pub mod udp;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use culvert_agent::{Agent, AgentConfig, AgentHandle, ServiceSpec};
use culvert_server::tokens::generate_token;
use culvert_server::{PortRange, Server, ServerConfig, ServerHandle, TokenStore};
use culvert_transport::tls::{ServerTls, Verify};
use culvert_transport::ws::ServerUrl;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use culvert_testkit::{eventually, eventually_async, metric, poll_until_async, TempDir};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// Bound of a single wait that should be quick (an agent coming up, a socket closing).
/// Generous: debug builds on a busy two-core machine are slow.
pub const WAIT: Duration = Duration::from_secs(30);

/// Longest a bulk transfer may go without moving a byte before it counts as hung.
pub const STALL: Duration = Duration::from_secs(60);

/// Upper bound of a whole bulk test, whatever its size.
pub const BULK_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Size of the bulk transfers, each way: `CULVERT_E2E_MIB` MiB, 256 by default.
pub fn e2e_bytes() -> u64 {
    match std::env::var("CULVERT_E2E_MIB") {
        Ok(v) => {
            let mib: u64 = v
                .trim()
                .parse()
                .expect("CULVERT_E2E_MIB must be a whole number of MiB");
            assert!(mib > 0, "CULVERT_E2E_MIB must be at least 1");
            mib * MIB
        }
        Err(_) => 256 * MIB,
    }
}

/// Awaits `f`, failing the test with `what` when it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// 200 public ports for one server, below the ephemeral range and chosen at random, so tests
/// running in parallel rarely share ports (and the server skips ports it cannot bind).
pub fn port_range() -> PortRange {
    let block = culvert_testkit::port_block();
    PortRange {
        start: *block.start(),
        end: *block.end(),
    }
}

/// A loopback address that nothing listens on (bound by the OS, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A server on loopback with a fresh self-signed certificate and one token.
pub struct TestServer {
    /// The running server.
    pub handle: ServerHandle,
    /// The one token it accepts (named `e2e`).
    pub token: String,
    /// SHA-256 of its certificate, for `Verify::Fingerprint`.
    pub fingerprint: String,
    /// `wss://127.0.0.1:PORT`.
    pub url: ServerUrl,
}

/// Starts a `wss://` server on 127.0.0.1 (OS-chosen port); `tweak` adjusts its config.
pub async fn start_server(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let tls = ServerTls::self_signed(&["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    start_server_with_tls(tls, tweak).await
}

/// Like [`start_server`] with the given TLS identity.
pub async fn start_server_with_tls(
    tls: ServerTls,
    tweak: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    let token = generate_token();
    let tokens = TokenStore::from_tokens(&[("e2e", token.as_str())]);
    let mut config = ServerConfig::new((Ipv4Addr::LOCALHOST, 0).into(), port_range());
    config.public_bind = Ipv4Addr::LOCALHOST.into();
    tweak(&mut config);
    let fingerprint = tls.fingerprint.clone();
    let handle = Server::bind(config, tokens, Some(tls))
        .await
        .expect("bind the server")
        .spawn()
        .expect("spawn the server");
    let url = ServerUrl::parse(&format!("wss://{}", handle.addr)).expect("server url");
    TestServer {
        handle,
        token,
        fingerprint,
        url,
    }
}

impl TestServer {
    /// An agent config for this server (its token, the certificate pinned) exposing `services`.
    pub fn agent_config(&self, services: &[(&str, SocketAddr)]) -> AgentConfig {
        let specs = services
            .iter()
            .map(|(name, addr)| {
                format!("{name}=tcp://{addr}")
                    .parse::<ServiceSpec>()
                    .expect("service spec")
            })
            .collect();
        let mut c = AgentConfig::new(self.url.clone(), self.token.clone(), specs);
        c.verify = Verify::Fingerprint(self.fingerprint.clone());
        c
    }

    /// Starts an agent exposing `services` and waits until its whole pool is up.
    pub async fn agent(&self, services: &[(&str, SocketAddr)]) -> AgentHandle {
        let agent = Agent::spawn(self.agent_config(services)).expect("spawn the agent");
        assert!(
            agent.wait_ready(WAIT).await,
            "agent not ready within {WAIT:?} ({} connections up)",
            agent.connections_up()
        );
        agent
    }
}

/// The public port the server gave `service`, as the agent reports it.
pub fn public_port(agent: &AgentHandle, service: &str) -> u16 {
    let port = agent.ports().get(service).copied().unwrap_or(0);
    assert_ne!(
        port,
        0,
        "no public port for {service:?}: {:?}",
        agent.ports()
    );
    port
}

/// A deterministic pseudo-random byte stream (splitmix64), distinct per seed.
pub struct Pattern(u64);

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed ^ 0x6a09_e667_f3bc_c908)
    }

    fn next_word(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next bytes (a partial last word is dropped).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_word().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

/// Chunk size of the bulk writers.
const CHUNK: usize = 64 * 1024;

/// The seed of the backend's answer to a client stream of `seed`.
fn reply_seed(seed: u64) -> u64 {
    seed.rotate_left(17) ^ 0x5bd1_e995
}

async fn io_step<T>(what: &str, f: impl Future<Output = std::io::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(STALL, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no progress for {STALL:?}")),
    }
}

/// Writes `len` bytes of `Pattern::new(seed)`; returns their SHA-256.
async fn write_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    len: u64,
    seed: u64,
) -> Result<[u8; 32], String> {
    let mut pattern = Pattern::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        io_step("write", w.write_all(&buf[..n])).await?;
        left -= n as u64;
    }
    Ok(hash.finalize().into())
}

/// Reads to EOF: returns the SHA-256 of the first `len` bytes and whatever followed them
/// (at most `max_tail` bytes; more is an error, as is a stream shorter than `len`).
async fn read_hashed<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    max_tail: usize,
) -> Result<([u8; 32], Vec<u8>), String> {
    let mut hash = Sha256::new();
    let mut tail = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = io_step("read", r.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        let body = (len - got).min(n as u64) as usize;
        hash.update(&buf[..body]);
        got += body as u64;
        tail.extend_from_slice(&buf[body..n]);
        if tail.len() > max_tail {
            return Err(format!("{} unexpected bytes after {len}", tail.len()));
        }
    }
    if got < len {
        return Err(format!("EOF after {got} of {len} bytes"));
    }
    Ok((hash.finalize().into(), tail))
}

/// A backend for [`exchange`]: each connection starts with a header `len u64, seed u64`
/// (big-endian); the backend then, concurrently, reads `len` bytes and writes `len` bytes of
/// its own pattern; when both are done it appends SHA-256(sent) ‖ SHA-256(received) and
/// closes its write side. So both directions carry `len` bytes at the same time.
pub async fn spawn_exchange_backend() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Err(e) = serve_exchange(sock).await {
                    eprintln!("exchange backend: {e}");
                }
            });
        }
    });
    addr
}

async fn serve_exchange(sock: TcpStream) -> Result<(), String> {
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let mut header = [0u8; 16];
    io_step("read header", rd.read_exact(&mut header)).await?;
    let len = u64::from_be_bytes(header[..8].try_into().unwrap());
    let seed = u64::from_be_bytes(header[8..].try_into().unwrap());
    let (sent, received) = tokio::join!(
        write_pattern(&mut wr, len, reply_seed(seed)),
        read_hashed(&mut rd, len, 0)
    );
    let sent = sent?;
    let (received, _) = received?;
    let mut trailer = sent.to_vec();
    trailer.extend_from_slice(&received);
    io_step("write trailer", wr.write_all(&trailer)).await?;
    io_step("shutdown", wr.shutdown()).await?;
    Ok(())
}

/// Through `127.0.0.1:port`, sends `len` bytes of `Pattern::new(seed)` while receiving the
/// backend's `len` bytes, and checks both directions byte for byte (SHA-256).
pub async fn exchange(port: u16, len: u64, seed: u64) -> Result<(), String> {
    let sock = io_step("connect", TcpStream::connect((Ipv4Addr::LOCALHOST, port))).await?;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let send = async {
        let mut header = len.to_be_bytes().to_vec();
        header.extend_from_slice(&seed.to_be_bytes());
        io_step("write header", wr.write_all(&header)).await?;
        let h = write_pattern(&mut wr, len, seed).await?;
        io_step("shutdown", wr.shutdown()).await?;
        Ok::<_, String>(h)
    };
    let recv = read_hashed(&mut rd, len, 64);
    let (sent, received) = tokio::join!(send, recv);
    let sent = sent?;
    let (received, trailer) = received?;
    if trailer.len() != 64 {
        return Err(format!(
            "expected a 64-byte trailer after {len} bytes, got {}",
            trailer.len()
        ));
    }
    if trailer[32..] != sent {
        return Err(format!(
            "client→backend: the backend's SHA-256 of {len} bytes differs from what was sent"
        ));
    }
    if trailer[..32] != received {
        return Err(format!(
            "backend→client: SHA-256 of the {len} bytes received differs from what the backend sent"
        ));
    }
    Ok(())
}

/// MiB/s of `bytes` moved in `elapsed`.
pub fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Reads until EOF or an error; `Ok(n)` is the number of bytes read before a clean EOF,
/// `Err` a reset or other error. Fails the test if neither happens within `limit`.
pub async fn wait_closed<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
    what: &str,
) -> Result<u64, std::io::Error> {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.read(&mut buf)).await {
            Ok(Ok(0)) => return Ok(total),
            Ok(Ok(n)) => total += n as u64,
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!("{what}: still open after {limit:?} ({total} bytes read)"),
        }
    }
}

/// A TLS connection to the server's control port, verifying its pinned certificate.
pub async fn tls_connect(
    server: &TestServer,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config =
        culvert_transport::tls::client_config(&Verify::Fingerprint(server.fingerprint.clone()))
            .map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(server.handle.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A minimal hand-written WebSocket client (RFC 6455) for hostile and raw tests: it logs
/// nothing and does exactly what it is told.
pub mod rawws {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// The upgrade request for the tunnel endpoint, with `extra` header lines (each ending in CRLF).
    pub fn upgrade_request(host: &str, extra: &str) -> String {
        format!(
            "GET /tunnel/v1 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    /// Sends the upgrade request and reads the response head (at most 16 KiB, byte by byte
    /// so no frame bytes are consumed). Returns the response head.
    pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        host: &str,
    ) -> Result<String, String> {
        s.write_all(upgrade_request(host, "").as_bytes())
            .await
            .map_err(|e| format!("write upgrade: {e}"))?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err("response head over 16 KiB".into());
            }
            match s.read(&mut b).await {
                Ok(0) => return Err("EOF in the response head".into()),
                Ok(_) => head.push(b[0]),
                Err(e) => return Err(format!("read response: {e}")),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!("upgrade refused: {head}"));
        }
        Ok(head)
    }

    /// Sends one masked binary frame holding `payload`.
    pub async fn send_binary<S: AsyncWrite + Unpin>(
        s: &mut S,
        payload: &[u8],
    ) -> std::io::Result<()> {
        send_frame(s, 0x82, payload).await
    }

    /// Sends the first frame of a binary message that never ends (FIN clear): a peer
    /// waiting for the whole message waits.
    pub async fn send_unfinished_binary<S: AsyncWrite + Unpin>(
        s: &mut S,
        payload: &[u8],
    ) -> std::io::Result<()> {
        send_frame(s, 0x02, payload).await
    }

    /// Sends one masked frame with first byte `b0` (FIN bit and opcode) holding `payload`.
    async fn send_frame<S: AsyncWrite + Unpin>(
        s: &mut S,
        b0: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut f = vec![b0];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let key: [u8; 4] = rand::random();
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        s.write_all(&f).await?;
        s.flush().await
    }

    /// Reads one (unmasked, server-sent) frame: (opcode, payload). Payloads over 1 MiB are an error.
    pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await?;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await?;
            len = u64::from_be_bytes(b);
        }
        if len > 1 << 20 {
            return Err(std::io::Error::other(format!("frame of {len} bytes")));
        }
        let mut key = [0u8; 4];
        if masked {
            s.read_exact(&mut key).await?;
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Ok((opcode, payload))
    }
}
