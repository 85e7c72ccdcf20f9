//! The agent's side of UDP services: one connected socket per flow towards the configured
//! target (so the agent never sends anywhere else), idle flows closed, a cap on flows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use culvert_transport::Mux;
use tokio::net::UdpSocket;

/// Flows whose first datagrams may wait for their socket, and how many each may park.
/// The server sends a flow's Connect before its first datagram, but the socket is set up
/// by another task: parking bridges that race without losing a DNS query.
const MAX_PENDING_FLOWS: usize = 256;
const MAX_PENDING_PER_FLOW: usize = 16;

#[derive(Debug, Default)]
struct Table {
    open: HashMap<u64, Arc<Flow>>,
    pending: HashMap<u64, Vec<Bytes>>,
}

/// One flow: its socket towards the target and when it last carried a datagram either way.
#[derive(Debug)]
struct Flow {
    socket: UdpSocket,
    /// Milliseconds since [`Flows::epoch`].
    last_active: AtomicU64,
}

/// Flows of one tunnel connection, by flow id.
#[derive(Debug)]
pub(crate) struct Flows {
    table: Mutex<Table>,
    epoch: Instant,
}

impl Default for Flows {
    fn default() -> Flows {
        Flows {
            table: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl Flows {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Sets up `flow` towards `target` (from the server's Connect). Refused beyond `max_flows`.
pub(crate) async fn open_flow(
    mux: Mux,
    flows: Arc<Flows>,
    flow: u64,
    target: String,
    idle: Duration,
    max_flows: usize,
) {
    {
        let t = flows.lock();
        if t.open.contains_key(&flow) {
            return;
        }
        if t.open.len() >= max_flows {
            drop(t);
            flows.lock().pending.remove(&flow);
            tracing::debug!(flow, "udp flow cap reached; flow refused");
            return;
        }
    }
    let target_addr = match tokio::net::lookup_host(&target).await.map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => {
            flows.lock().pending.remove(&flow);
            tracing::warn!(%target, "cannot resolve udp target");
            return;
        }
    };
    let bind: std::net::SocketAddr = if target_addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match flow_socket(bind) {
        Ok(s) => s,
        Err(e) => {
            flows.lock().pending.remove(&flow);
            tracing::warn!(error = %e, "cannot open a udp socket");
            return;
        }
    };
    if let Err(e) = socket.connect(target_addr).await {
        tracing::warn!(%target, error = %e, "cannot connect udp socket");
        return;
    }
    let entry = Arc::new(Flow {
        socket,
        last_active: AtomicU64::new(flows.now_ms()),
    });
    let parked = {
        let mut t = flows.lock();
        t.open.insert(flow, entry.clone());
        t.pending.remove(&flow).unwrap_or_default()
    };
    for d in parked {
        let _ = entry.socket.send(&d).await;
    }
    tracing::debug!(flow, %target, "udp flow opened");
    // Replies from the target go back on this flow until it idles out.
    let mut buf = vec![0u8; 65_536];
    // The flow is idle when nothing passed in either direction for `idle`.
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since = flows
            .now_ms()
            .saturating_sub(entry.last_active.load(Ordering::Relaxed));
        if since >= idle_ms {
            break;
        }
        let wait = Duration::from_millis(idle_ms - since);
        match tokio::time::timeout(wait, entry.socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                entry.last_active.store(flows.now_ms(), Ordering::Relaxed);
                let sent = mux.send_datagram(flow, Bytes::copy_from_slice(&buf[..n]));
                if sent.is_err() && mux.is_closed() {
                    break;
                }
            }
            // ICMP errors (target not listening) surface here; the flow stays.
            Ok(Err(e)) => tracing::trace!(flow, error = %e, "udp recv error"),
            Err(_) => {}
        }
    }
    flows.lock().open.remove(&flow);
    tracing::debug!(flow, "udp flow closed (idle)");
}

/// A UDP socket for one flow. Its 1 MiB receive buffer (a cap, capped again by
/// net.core.rmem_max) absorbs a burst of replies while the tunnel writer is busy.
fn flow_socket(bind: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(1 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&bind.into())?;
    UdpSocket::from_std(sock.into())
}

/// Delivers datagrams from the server to their flows' sockets until the connection closes.
pub(crate) async fn pump(mux: Mux, flows: Arc<Flows>) {
    while let Some(d) = mux.recv_datagram().await {
        let open = {
            let mut t = flows.lock();
            match t.open.get(&d.flow) {
                Some(f) => {
                    // Client traffic keeps a flow alive as much as replies do.
                    f.last_active.store(flows.now_ms(), Ordering::Relaxed);
                    Some(f.clone())
                }
                None => {
                    // Not set up yet: park it (bounded), or drop it. Parked datagrams of
                    // flows that never opened are forgotten wholesale when the table fills.
                    if t.pending.len() >= MAX_PENDING_FLOWS && !t.pending.contains_key(&d.flow) {
                        t.pending.clear();
                    }
                    let q = t.pending.entry(d.flow).or_default();
                    if q.len() < MAX_PENDING_PER_FLOW {
                        q.push(d.data.clone());
                    } else {
                        tracing::trace!(flow = d.flow, "datagram for an unknown udp flow dropped");
                    }
                    None
                }
            }
        };
        if let Some(f) = open {
            let _ = f.socket.send(&d.data).await;
        }
    }
}
