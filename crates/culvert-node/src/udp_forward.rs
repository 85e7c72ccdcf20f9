//! A local UDP port whose client addresses become flows to a target the peer dials: the
//! forward half of a node's UDP tunnels. Each client address is one flow (its own stream
//! announcing `udp://TARGET`, its datagrams tagged with that stream's id); replies go back
//! only to the address that owns the flow; idle flows end; the number of flows is capped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use culvert_agent::{AgentHandle, LocalFlow};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::forward::ForwardStatus;
use crate::NodeError;

/// Flows one UDP forward holds; datagrams from further new addresses are dropped (counted),
/// so a flood of spoofed sources cannot grow memory while existing flows keep working.
pub const MAX_FLOWS: usize = 4096;

/// A flow with no datagram either way for this long ends (60 s outlives DNS, game and VPN
/// keepalive gaps, as on the server's public UDP ports).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Client datagrams queued per flow while its stream is being opened; more are dropped.
const SETUP_QUEUE: usize = 64;

struct Shared {
    name: String,
    expires: Option<Instant>,
    target: String,
    socket: Arc<UdpSocket>,
    link: Arc<AgentHandle>,
    flows: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    open: AtomicUsize,
    created: AtomicU64,
    dropped: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: CancellationToken,
}

/// A running UDP forward. Dropping it closes the port and its flows.
pub struct UdpForward {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Drop for UdpForward {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl UdpForward {
    /// Binds `listen` and relays its clients' datagrams to `target` over `link` (a
    /// `HOST:PORT` the peer dials, or the name of a UDP service); with a `ttl`, the port
    /// and every flow close that long after start.
    pub async fn bind(
        name: &str,
        listen: SocketAddr,
        target: &str,
        ttl: Option<Duration>,
        link: Arc<AgentHandle>,
    ) -> Result<UdpForward, NodeError> {
        // Like a server's public UDP port: room for the bursts of many local clients.
        let socket =
            culvert_transport::bind_udp(listen, 4 << 20, Some(4 << 20)).map_err(|source| {
                NodeError::Bind {
                    addr: format!("udp {listen}"),
                    source,
                }
            })?;
        let local_addr = socket.local_addr().map_err(|source| NodeError::Bind {
            addr: format!("udp {listen}"),
            source,
        })?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            expires: ttl.map(|t| Instant::now() + t),
            target: target.to_owned(),
            socket: Arc::new(socket),
            link,
            flows: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            created: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: CancellationToken::new(),
        });
        let span = tracing::info_span!("udp_forward", name = %name, listen = %local_addr);
        tokio::spawn(receive_loop(shared.clone()).instrument(span));
        if let Some(ttl) = ttl {
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(ttl) => {
                        tracing::info!(forward = %s.name, "time-to-live expired: UDP port and flows closed");
                        s.stop.cancel();
                    }
                    _ = s.stop.cancelled() => {}
                }
            });
        }
        Ok(UdpForward { shared, local_addr })
    }

    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the port and every flow.
    pub fn close(&self) {
        self.shared.stop.cancel();
    }

    /// Resolves when the forward has closed (TTL expiry or [`UdpForward::close`]).
    pub async fn closed(&self) {
        self.shared.stop.cancelled().await
    }

    /// Current figures (connections are flows).
    pub fn status(&self) -> ForwardStatus {
        let s = &self.shared;
        ForwardStatus {
            name: s.name.clone(),
            target: s.target.clone(),
            local_addr: self.local_addr.to_string(),
            remaining_secs: s
                .expires
                .map(|t| t.saturating_duration_since(Instant::now()).as_secs()),
            expired: s.stop.is_cancelled(),
            open_connections: s.open.load(Ordering::Relaxed),
            connections: s.created.load(Ordering::Relaxed),
            failed: s.dropped.load(Ordering::Relaxed),
            bytes_up: s.bytes_up.load(Ordering::Relaxed),
            bytes_down: s.bytes_down.load(Ordering::Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl Shared {
    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Bytes>>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drop_one(&self, why: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
    }
}

async fn receive_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let r = tokio::select! {
            r = shared.socket.recv_from(&mut buf) => r,
            _ = shared.stop.cancelled() => break,
        };
        let (n, from) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "udp recv failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        let tx = shared.flows().get(&from).cloned();
        let tx = match tx {
            Some(tx) => tx,
            None => {
                if shared.flows().len() >= MAX_FLOWS {
                    shared.drop_one("flow cap reached");
                    continue;
                }
                if shared.link.connections_up() == 0 {
                    shared.drop_one(&format!("tunnel is {}", shared.link.link_state()));
                    continue;
                }
                let (tx, rx) = mpsc::channel(SETUP_QUEUE);
                shared.flows().insert(from, tx.clone());
                shared.created.fetch_add(1, Ordering::Relaxed);
                let s = shared.clone();
                let span = tracing::debug_span!("flow", client = %from);
                tokio::spawn(run_flow(s, from, rx).instrument(span));
                tx
            }
        };
        if tx.try_send(data).is_err() {
            shared.drop_one("flow queue full");
        }
    }
}

/// One client's flow: opens it across the tunnel, relays both ways until idle, closed or
/// refused, then forgets the client.
async fn run_flow(shared: Arc<Shared>, client: SocketAddr, mut rx: mpsc::Receiver<Bytes>) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    let opened = shared.link.open_flow(&shared.target).await;
    match opened {
        Ok(flow) => {
            // The tunnel carries flows again: an earlier failure is no longer the state.
            *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            relay(&shared, client, flow, &mut rx).await
        }
        Err(e) => shared.drop_one(&format!("cannot open flow: {e}")),
    }
    shared.flows().remove(&client);
    shared.open.fetch_sub(1, Ordering::Relaxed);
}

async fn relay(
    shared: &Shared,
    client: SocketAddr,
    mut flow: LocalFlow,
    rx: &mut mpsc::Receiver<Bytes>,
) {
    let mut last = Instant::now();
    loop {
        let idle_left = IDLE_TIMEOUT.saturating_sub(last.elapsed());
        tokio::select! {
            d = rx.recv() => {
                let Some(d) = d else { break };
                last = Instant::now();
                let n = d.len() as u64;
                if flow.send(d).is_ok() {
                    shared.bytes_up.fetch_add(n, Ordering::Relaxed);
                } else {
                    shared.drop_one("tunnel refused the datagram");
                }
            }
            r = flow.recv() => {
                let Some(d) = r else {
                    // The peer refused or ended the flow (allow-list, idle, restart).
                    *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("the peer ended the flow to {:?} (refused, idle or lost)", shared.target));
                    break;
                };
                last = Instant::now();
                shared.bytes_down.fetch_add(d.len() as u64, Ordering::Relaxed);
                // Bounded: a socket buffer that stays full drops the datagram rather than
                // stalling this flow's loop (and its idle timer) on the send.
                let sent = tokio::time::timeout(
                    culvert_transport::UDP_SEND_DEADLINE,
                    shared.socket.send_to(&d, client),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    shared.drop_one("local socket buffer full");
                }
            }
            _ = tokio::time::sleep(idle_left) => break,
            _ = shared.stop.cancelled() => break,
        }
    }
}
