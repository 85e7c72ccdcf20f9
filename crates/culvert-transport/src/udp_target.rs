//! The target side of UDP flows (the agent's UDP services, a node's dials for forward UDP
//! tunnels): one connected socket per flow towards the configured target, so datagrams go
//! nowhere else; idle flows closed; a cap on flows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Mux;
use bytes::Bytes;
use tokio::net::UdpSocket;

/// Flows whose first datagrams may wait for their socket, and how many each may park.
/// The server sends a flow's Connect before its first datagram, but the socket is set up
/// by another task: parking bridges that race without losing a DNS query.
const MAX_PENDING_FLOWS: usize = 256;
const MAX_PENDING_PER_FLOW: usize = 16;
/// Datagrams read from a flow's socket and queued together at most (one lock, one wake-up).
const MAX_BATCH: usize = 64;

#[derive(Debug, Default)]
struct Table {
    open: HashMap<u64, Arc<Flow>>,
    pending: HashMap<u64, Vec<Bytes>>,
}

/// One flow: its socket towards the target and when it last carried a datagram either way.
#[derive(Debug)]
struct Flow {
    socket: UdpSocket,
    /// Bytes each way: `up` from the target, `down` towards it.
    counters: Option<Arc<crate::RelayCounters>>,
    /// Milliseconds since [`Flows::epoch`].
    last_active: AtomicU64,
}

/// Target-side flows of one tunnel connection, by flow id.
#[derive(Debug)]
pub struct TargetFlows {
    table: Mutex<Table>,
    epoch: Instant,
}

impl Default for TargetFlows {
    fn default() -> TargetFlows {
        TargetFlows {
            table: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl TargetFlows {
    /// Drops what was parked for `flow` (it was refused and will never open).
    pub fn forget(&self, flow: u64) {
        self.lock().pending.remove(&flow);
    }

    /// Flows open now.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Sets up `flow` towards `target` and relays the target's replies on it until the flow
/// idles out or `until` completes (the flow's announcing stream ended). Refused beyond
/// `max_flows`. Bytes are added to `counters` when given.
#[allow(clippy::too_many_arguments)]
pub async fn open_flow(
    mux: Mux,
    flows: Arc<TargetFlows>,
    flow: u64,
    target: String,
    idle: Duration,
    max_flows: usize,
    counters: Option<Arc<crate::RelayCounters>>,
    until: impl std::future::Future<Output = ()>,
) {
    let mut until = std::pin::pin!(until);
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
        counters,
        last_active: AtomicU64::new(flows.now_ms()),
    });
    let parked = {
        let mut t = flows.lock();
        t.open.insert(flow, entry.clone());
        t.pending.remove(&flow).unwrap_or_default()
    };
    for d in parked {
        // Bounded: a socket that stays unwritable drops the datagram (UDP's own semantics)
        // instead of stalling the flow. (Not `try_send`: a new socket reports WouldBlock
        // until its first readiness event, which would drop every parked datagram.)
        if matches!(
            tokio::time::timeout(crate::socket::UDP_SEND_DEADLINE, entry.socket.send(&d)).await,
            Ok(Ok(_))
        ) {
            if let Some(c) = &entry.counters {
                c.down.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
    }
    tracing::debug!(flow, %target, "udp flow opened");
    // Replies from the target go back on this flow until it idles out.
    let mut buf = vec![0u8; 65_536];
    let mut batch = Vec::new();
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
        let received = tokio::select! {
            r = tokio::time::timeout(wait, entry.socket.recv(&mut buf)) => r,
            _ = &mut until => break,
        };
        match received {
            Ok(Ok(n)) => {
                entry.last_active.store(flows.now_ms(), Ordering::Relaxed);
                // Whatever else already waits in the socket goes with it, in one batch.
                let mut bytes = n;
                batch.push(Bytes::copy_from_slice(&buf[..n]));
                while batch.len() < MAX_BATCH {
                    match entry.socket.try_recv(&mut buf) {
                        Ok(m) => {
                            bytes += m;
                            batch.push(Bytes::copy_from_slice(&buf[..m]));
                        }
                        Err(_) => break,
                    }
                }
                if let Some(c) = &entry.counters {
                    c.up.fetch_add(bytes as u64, Ordering::Relaxed);
                }
                if mux.send_datagrams(flow, &mut batch).is_err() && mux.is_closed() {
                    break;
                }
            }
            // ICMP errors (target not listening) surface here; the flow stays.
            Ok(Err(e)) => tracing::trace!(flow, error = %e, "udp recv error"),
            Err(_) => {}
        }
    }
    flows.lock().open.remove(&flow);
    tracing::debug!(flow, "udp flow closed");
}

/// A UDP socket for one flow. Its 1 MiB receive buffer (a cap, capped again by
/// net.core.rmem_max) absorbs a burst of replies while the tunnel writer is busy.
fn flow_socket(bind: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    crate::bind_udp(bind, 1 << 20, None)
}

impl TargetFlows {
    /// Sends a datagram from the tunnel to its flow's target without waiting (a full
    /// socket buffer drops it, as the network would), or parks it (bounded) when the flow
    /// is still being set up. Called from the connection's reader (a datagram sink).
    pub fn deliver(&self, d: culvert_proto::Datagram) {
        let open = {
            let mut t = self.lock();
            match t.open.get(&d.flow) {
                Some(f) => {
                    // Client traffic keeps a flow alive as much as replies do.
                    f.last_active.store(self.now_ms(), Ordering::Relaxed);
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
            if f.socket.try_send(&d.data).is_ok() {
                if let Some(c) = &f.counters {
                    c.down.fetch_add(d.data.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}
