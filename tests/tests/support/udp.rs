//! The harness of the UDP end-to-end tests (`udp_*.rs`): a server and agent in process
//! (plain `ws://` on 127.0.0.1), UDP backends that record what they receive, and a client
//! round trip that checks each client hears only its own replies.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use culvert_agent::{Agent, AgentConfig, AgentHandle, ServiceSpec};
use culvert_server::tokens::generate_token;
use culvert_server::udp::UdpCounters;
use culvert_server::{Server, ServerConfig, ServerHandle, TokenStore};
use culvert_transport::ws::ServerUrl;
use tokio::net::UdpSocket;

pub use super::{port_range, within, WAIT};

/// How long a client waits for one reply before it retries (or counts the datagram lost).
pub const REPLY: Duration = Duration::from_secs(2);

/// A receiver that has heard nothing for this long after its sender finished stops.
pub const QUIET: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// Tunnel on loopback
// ---------------------------------------------------------------------------------------

/// Logs to the test's output when `RUST_LOG` is set (for diagnosing a failure).
pub fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `cond` every 50 ms until it holds; fails the test after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    super::eventually_async(limit, what, || std::future::ready(cond())).await
}

/// A server on 127.0.0.1 (plain `ws://`) with one token.
pub struct Tunnel {
    pub server: ServerHandle,
    pub token: String,
    pub url: ServerUrl,
}

/// Starts a server whose TCP and UDP ports come from one random range; `tweak` adjusts it.
pub async fn start_server(tweak: impl FnOnce(&mut ServerConfig)) -> Tunnel {
    trace();
    let token = generate_token();
    let tokens = TokenStore::from_tokens(&[("udp-e2e", token.as_str())]);
    let range = port_range();
    let mut config = ServerConfig::new((Ipv4Addr::LOCALHOST, 0).into(), range);
    config.udp_ports = range;
    config.public_bind = Ipv4Addr::LOCALHOST.into();
    tweak(&mut config);
    let server = Server::bind(config, tokens, None)
        .await
        .expect("bind the server")
        .spawn()
        .expect("spawn the server");
    let url = ServerUrl::parse(&format!("ws://{}", server.addr)).expect("server url");
    Tunnel { server, token, url }
}

impl Tunnel {
    /// An agent config exposing each `(name, target)` as `name=udp://target`.
    pub fn agent_config(&self, services: &[(&str, SocketAddr)]) -> AgentConfig {
        let specs = services
            .iter()
            .map(|(name, addr)| {
                format!("{name}=udp://{addr}")
                    .parse::<ServiceSpec>()
                    .expect("service spec")
            })
            .collect();
        AgentConfig::new(self.url.clone(), self.token.clone(), specs)
    }

    /// Public UDP ports the registry holds beyond those of the services sessions list: the
    /// ports of services registered twice (see [`Tunnel::agent`]).
    pub fn orphan_udp_ports(&self) -> usize {
        let listed: usize = self
            .server
            .sessions()
            .iter()
            .map(|s| s.services.len())
            .sum();
        self.server.port_usage().2.saturating_sub(listed)
    }

    /// Starts an agent and waits until its whole pool is up; each service must have been
    /// registered once, however many pooled connections registered it.
    pub async fn agent(&self, config: AgentConfig) -> AgentHandle {
        let orphans = self.orphan_udp_ports();
        let agent = Agent::spawn(config.clone()).expect("spawn the agent");
        wait_ready(&agent, config.pool).await;
        assert_eq!(
            self.orphan_udp_ports(),
            orphans,
            "a service was registered twice (registry {:?}, sessions {:?})",
            self.server.port_usage(),
            self.server.sessions()
        );
        agent
    }

    pub fn counters(&self, service: &str) -> Arc<UdpCounters> {
        self.server
            .udp_counters(&format!("udp-e2e/{service}"))
            .unwrap_or_else(|| panic!("no UDP service {service:?} on the server"))
    }

    pub fn flows(&self, service: &str) -> usize {
        self.server
            .udp_flows(&format!("udp-e2e/{service}"))
            .unwrap_or_else(|| panic!("no UDP service {service:?} on the server"))
    }
}

/// Waits until all `pool` connections of `agent` are up and registered.
///
/// Not `AgentHandle::wait_ready`: once, under the load of these tests, it waited out its
/// whole timeout while all connections were up. A likely cause: each slot bumps an atomic,
/// then publishes a separate `load` of it on the watch channel, so two slots finishing
/// together can publish 3 after 4.
pub async fn wait_ready(agent: &AgentHandle, pool: usize) {
    wait_until(WAIT, "the agent's pool to come up", || {
        agent.connections_up() >= pool
    })
    .await;
}

/// The public address of `service`, as the agent reports its port.
pub fn public_addr(agent: &AgentHandle, service: &str) -> SocketAddr {
    let port = agent.ports().get(service).copied().unwrap_or(0);
    assert_ne!(
        port,
        0,
        "no public port for {service:?}: {:?}",
        agent.ports()
    );
    (Ipv4Addr::LOCALHOST, port).into()
}

/// The counters as one line, for messages.
pub fn show(c: &UdpCounters) -> String {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "in={} out={} dropped_oversize={} dropped_flow_cap={} dropped_no_agent={} \
         flows_created={} flows_evicted={}",
        g(&c.datagrams_in),
        g(&c.datagrams_out),
        g(&c.dropped_oversize),
        g(&c.dropped_flow_cap),
        g(&c.dropped_no_agent),
        g(&c.flows_created),
        g(&c.flows_evicted)
    )
}

/// Datagrams the kernel dropped at the open IPv4 UDP sockets bound to `port` (any address),
/// from the `drops` column of /proc/net/udp (for loss reports; 0 when unreadable).
pub fn kernel_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            (u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

pub async fn client_socket() -> UdpSocket {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a client socket")
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// One datagram a backend received: its source and first 32 bytes.
pub type Seen = (SocketAddr, Vec<u8>);

/// A UDP backend on 127.0.0.1 that records every datagram (source and first bytes) and,
/// when it echoes, sends each one back to its source.
pub struct Backend {
    pub addr: SocketAddr,
    /// (source, first 32 bytes) of every datagram received, in order.
    pub log: Arc<Mutex<Vec<Seen>>>,
    pub received: Arc<AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn spawn(echo: bool) -> Backend {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the backend");
        // A deep receive buffer (the most the kernel allows, up to 4 MiB), so that this
        // one-task test backend is not where datagrams are lost.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
        let addr = sock.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let log = log.clone();
            let received = received.clone();
            async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                        continue;
                    };
                    log.lock().unwrap().push((from, buf[..n.min(32)].to_vec()));
                    received.fetch_add(1, Ordering::SeqCst);
                    if echo {
                        let _ = sock.send_to(&buf[..n], from).await;
                    }
                }
            }
        });
        Backend {
            addr,
            log,
            received,
            task,
        }
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    pub fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Distinct source addresses seen.
    pub fn sources(&self) -> HashSet<SocketAddr> {
        self.log.lock().unwrap().iter().map(|(a, _)| *a).collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `payload` to `to` and waits for the same bytes back, up to `tries` sends of
/// `REPLY` each. Returns the number of sends it took. A datagram from any other address,
/// or one not carrying `owner` at its start, is an error (a client hears only its own
/// replies); late replies to this client's earlier datagrams are skipped.
pub async fn roundtrip(
    sock: &UdpSocket,
    to: SocketAddr,
    owner: &[u8],
    payload: &[u8],
    tries: u32,
) -> Result<u32, String> {
    let mut buf = vec![0u8; 65_536];
    for attempt in 1..=tries {
        sock.send_to(payload, to)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let deadline = tokio::time::Instant::now() + REPLY;
        // Bounded: each pass consumes one datagram, and at most 10,000 stale ones are skipped.
        for _ in 0..10_000 {
            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(format!("recv: {e}")),
                Ok(Ok((n, from))) => {
                    if from != to {
                        return Err(format!("a datagram from {from}, not from {to}"));
                    }
                    if &buf[..n] == payload {
                        return Ok(attempt);
                    }
                    if !buf[..n].starts_with(owner) {
                        return Err(format!(
                            "someone else's reply: {:?}",
                            String::from_utf8_lossy(&buf[..n.min(40)])
                        ));
                    }
                }
            }
        }
    }
    Err(format!(
        "no reply to {:?} after {tries} tries of {REPLY:?}",
        String::from_utf8_lossy(&payload[..payload.len().min(40)])
    ))
}
