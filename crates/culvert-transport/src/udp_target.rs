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

/// Flows whose first datagrams may wait for their socket. The server sends a flow's
/// Connect before its first datagram, but the socket is set up by another task, after the
/// reader has delivered the rest of what it read with the Connect: parking bridges that
/// race without losing a DNS query or the first burst of a bulk client.
const MAX_PENDING_FLOWS: usize = 256;
/// Bytes parked across all flows of one connection, each datagram counted with
/// `PARKED_OVERHEAD`. The race parking bridges lasts milliseconds (a read or two):
/// 256 KiB is one full read of the tunnel, where count caps alone allowed
/// 256 × 16 × 64 KiB = 268 MB.
pub const MAX_PARKED_BYTES: usize = 256 * 1024;
/// Bytes one flow may park: half the budget, about 100 full-size (1,200-byte) datagrams,
/// so a client's first burst waits whole and another new flow still finds room. (Sixteen
/// datagrams a flow lost 34 of an iperf-like client's first 50.)
const MAX_PARKED_PER_FLOW: usize = MAX_PARKED_BYTES / 2;
/// What one parked datagram costs beyond its payload (its handle and allocation header).
const PARKED_OVERHEAD: usize = 64;
/// Parked datagrams older than this are dropped: a flow not set up by then never will be.
pub const PARK_TTL: Duration = Duration::from_secs(2);
/// Expired parked datagrams are looked for at most this often (the sweep visits every
/// parked flow, up to [`MAX_PENDING_FLOWS`]).
const SWEEP_EVERY_MS: u64 = 100;
/// Datagrams read from a flow's socket and queued together at most (one lock, one wake-up).
const MAX_BATCH: usize = 64;

#[derive(Debug, Default)]
struct Table {
    open: HashMap<u64, Arc<Flow>>,
    pending: HashMap<u64, Parked>,
    /// Bytes in `pending`, overhead included (at most [`MAX_PARKED_BYTES`]).
    parked_bytes: usize,
    /// When expired entries were last swept (ms since the epoch).
    last_sweep_ms: u64,
}

/// Datagrams of one flow waiting for its socket.
#[derive(Debug, Default)]
struct Parked {
    /// When the first was parked (ms since the epoch).
    since_ms: u64,
    datagrams: Vec<Bytes>,
    /// Their bytes, each counted with [`PARKED_OVERHEAD`].
    cost: usize,
}

impl Table {
    /// Takes (or drops) what was parked for `flow`, returning its bytes to the budget.
    fn unpark(&mut self, flow: u64) -> Vec<Bytes> {
        match self.pending.remove(&flow) {
            Some(p) => {
                self.parked_bytes -= p.cost;
                p.datagrams
            }
            None => Vec::new(),
        }
    }
}

/// Which datagrams for a flow that is not set up may be parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParkPolicy {
    /// Any: the flow is announced by a Connect the application may not have read yet (an
    /// agent's flows, announced by its server).
    Any,
    /// Only those of a flow whose announcing stream is open (the peer opens flows with
    /// `udp://HOST:PORT` streams), and none at all when this side dials nothing.
    AnnouncedStream { dials: bool },
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

/// Datagrams from the tunnel that never reached their UDP target, by why. One process
/// shares one among its connections' [`TargetFlows`], so its metrics count what every
/// connection dropped, including those that have ended.
#[derive(Debug, Default)]
pub struct TargetDrops {
    /// For a flow that was not open: no flow the peer may open, over the connection's or
    /// the flow's parking budget, or parked past [`PARK_TTL`].
    pub not_open: AtomicU64,
    /// The flow's socket refused it: its send buffer was full (the target's link is
    /// slower than the tunnel), as a router with a full queue drops.
    pub socket_full: AtomicU64,
}

/// Target-side flows of one tunnel connection, by flow id.
#[derive(Debug)]
pub struct TargetFlows {
    table: Mutex<Table>,
    epoch: Instant,
    policy: ParkPolicy,
    drops: Arc<TargetDrops>,
}

impl Default for TargetFlows {
    /// Flows announced by Connect (the agent's): anything may be parked, within the bounds.
    fn default() -> TargetFlows {
        TargetFlows::with_policy(ParkPolicy::Any)
    }
}

impl TargetFlows {
    fn with_policy(policy: ParkPolicy) -> TargetFlows {
        TargetFlows {
            table: Mutex::default(),
            epoch: Instant::now(),
            policy,
            drops: Arc::default(),
        }
    }

    /// These flows count their drops into `drops` (the process's, for its metrics).
    pub fn counting_into(mut self, drops: Arc<TargetDrops>) -> TargetFlows {
        self.drops = drops;
        self
    }

    /// Flows the peer opens with `udp://HOST:PORT` streams (a server's or node's dials):
    /// datagrams are parked only for a flow whose stream is open, and only when this side
    /// dials at all (`dials`: its allow-list is not empty).
    pub fn for_streams(dials: bool) -> TargetFlows {
        TargetFlows::with_policy(ParkPolicy::AnnouncedStream { dials })
    }

    /// Drops what was parked for `flow` (it was refused and will never open).
    pub fn forget(&self, flow: u64) {
        self.lock().unpark(flow);
    }

    /// Bytes parked now, overhead included (at most [`MAX_PARKED_BYTES`]).
    pub fn parked_bytes(&self) -> usize {
        self.lock().parked_bytes
    }

    /// Datagrams dropped for a flow that was not open (not parked, or parked too long).
    pub fn dropped(&self) -> u64 {
        self.drops.not_open.load(Ordering::Relaxed)
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
            flows.lock().unpark(flow);
            tracing::debug!(flow, "udp flow cap reached; flow refused");
            return;
        }
    }
    let target_addr = match tokio::net::lookup_host(&target).await.map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => {
            flows.lock().unpark(flow);
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
            flows.lock().unpark(flow);
            tracing::warn!(error = %e, "cannot open a udp socket");
            return;
        }
    };
    if let Err(e) = socket.connect(target_addr).await {
        flows.lock().unpark(flow);
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
        t.unpark(flow)
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
        } else {
            flows.drops.socket_full.fetch_add(1, Ordering::Relaxed);
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

/// Sends `data` on a connected non-blocking socket at once, straight to the kernel: `false`
/// when the kernel refused it (its buffer full: dropped, as the network would). Not tokio's
/// `try_send`, which answers WouldBlock without trying for a socket the reactor has not yet
/// reported writable (a new flow's socket until its first event, or one that was full a
/// moment ago), and so dropped the first datagrams of new flows.
fn send_now(socket: &UdpSocket, data: &[u8]) -> bool {
    socket2::SockRef::from(socket).send(data).is_ok()
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
        self.deliver_at(d, self.now_ms());
    }

    /// [`TargetFlows::deliver`] at `now` (ms since the epoch), so tests can move time.
    fn deliver_at(&self, d: culvert_proto::Datagram, now: u64) {
        let open = {
            let mut t = self.lock();
            match t.open.get(&d.flow) {
                Some(f) => {
                    // Client traffic keeps a flow alive as much as replies do.
                    f.last_active.store(now, Ordering::Relaxed);
                    Some(f.clone())
                }
                None => {
                    // Not set up yet: park it (bounded in flows and bytes, expired), or
                    // drop it.
                    if !self.park(&mut t, &d, now) {
                        self.drops.not_open.fetch_add(1, Ordering::Relaxed);
                        tracing::trace!(flow = d.flow, "datagram for an unknown udp flow dropped");
                    }
                    None
                }
            }
        };
        if let Some(f) = open {
            if send_now(&f.socket, &d.data) {
                if let Some(c) = &f.counters {
                    c.down.fetch_add(d.data.len() as u64, Ordering::Relaxed);
                }
            } else {
                self.drops.socket_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Parks `d` for a flow being set up; `false` when it may not be parked.
    fn park(&self, t: &mut Table, d: &culvert_proto::Datagram, now: u64) -> bool {
        if let ParkPolicy::AnnouncedStream { dials } = self.policy {
            if !dials || !d.stream_open {
                return false;
            }
        }
        if now.saturating_sub(t.last_sweep_ms) >= SWEEP_EVERY_MS {
            t.last_sweep_ms = now;
            let ttl = PARK_TTL.as_millis() as u64;
            let mut freed = (0usize, 0u64);
            t.pending.retain(|_, p| {
                let keep = now.saturating_sub(p.since_ms) < ttl;
                if !keep {
                    freed.0 += p.cost;
                    freed.1 += p.datagrams.len() as u64;
                }
                keep
            });
            t.parked_bytes -= freed.0;
            self.drops.not_open.fetch_add(freed.1, Ordering::Relaxed);
        }
        let cost = d.data.len() + PARKED_OVERHEAD;
        if t.parked_bytes + cost > MAX_PARKED_BYTES
            || (t.pending.len() >= MAX_PENDING_FLOWS && !t.pending.contains_key(&d.flow))
        {
            return false;
        }
        if t.pending.get(&d.flow).map_or(0, |q| q.cost) + cost > MAX_PARKED_PER_FLOW {
            return false;
        }
        let q = t.pending.entry(d.flow).or_insert_with(|| Parked {
            since_ms: now,
            ..Parked::default()
        });
        // A copy: a slice would keep the whole read buffer it came from alive.
        q.datagrams.push(Bytes::copy_from_slice(&d.data));
        q.cost += cost;
        t.parked_bytes += cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(flow: u64, len: usize, stream_open: bool) -> culvert_proto::Datagram {
        culvert_proto::Datagram {
            flow,
            data: Bytes::from(vec![7u8; len]),
            stream_open,
        }
    }

    #[test]
    fn parked_bytes_stay_under_the_budget() {
        // The old caps: 256 flows x 16 datagrams of 64 KiB, about 268 MB.
        let flows = TargetFlows::default();
        let mut sent = 0;
        for flow in 0..300u64 {
            for _ in 0..20 {
                flows.deliver_at(dgram(flow * 2 + 1, 65_000, false), 0);
                sent += 1;
                assert!(flows.parked_bytes() <= MAX_PARKED_BYTES);
            }
        }
        let parked = sent - flows.dropped();
        assert!(parked >= 3, "something is parked: {parked}");
        assert!(parked as usize * 65_000 <= MAX_PARKED_BYTES);
        // Forgetting returns the budget.
        for flow in 0..300u64 {
            flows.forget(flow * 2 + 1);
        }
        assert_eq!(flows.parked_bytes(), 0);
    }

    /// A bulk client's first burst arrives in the read that carries its flow's Connect,
    /// before the flow's socket can be set up: it waits whole, and a second client's
    /// burst at the same moment too. (Sixteen a flow dropped 34 of the first 50.)
    #[test]
    fn a_first_burst_waits_whole_and_leaves_room_for_another() {
        let flows = TargetFlows::default();
        for flow in [1, 3] {
            for _ in 0..100 {
                flows.deliver_at(dgram(flow, 1_200, false), 0);
            }
        }
        assert_eq!(flows.dropped(), 0);
        assert_eq!(flows.parked_bytes(), 200 * (1_200 + PARKED_OVERHEAD));
        // One flow cannot take the whole budget: a third finds what the first two left.
        for _ in 0..200 {
            flows.deliver_at(dgram(1, 1_200, false), 0);
        }
        assert!(flows.lock().pending[&1].cost <= MAX_PARKED_PER_FLOW);
        flows.deliver_at(dgram(5, 1_200, false), 0);
        assert_eq!(flows.lock().pending[&5].datagrams.len(), 1);
        assert!(flows.parked_bytes() <= MAX_PARKED_BYTES);
    }

    #[test]
    fn parked_datagrams_expire() {
        let flows = TargetFlows::default();
        flows.deliver_at(dgram(1, 1000, false), 0);
        flows.deliver_at(dgram(3, 1000, false), 10);
        assert_eq!(flows.parked_bytes(), 2 * (1000 + PARKED_OVERHEAD));
        let ttl = PARK_TTL.as_millis() as u64;
        // Before the TTL nothing goes; after it, the next parking sweeps both.
        flows.deliver_at(dgram(5, 1000, false), ttl - 1);
        assert_eq!(flows.parked_bytes(), 3 * (1000 + PARKED_OVERHEAD));
        flows.deliver_at(dgram(5, 1000, false), ttl + 10 + SWEEP_EVERY_MS);
        assert_eq!(flows.parked_bytes(), 2 * (1000 + PARKED_OVERHEAD));
        assert_eq!(flows.dropped(), 2);
    }

    #[test]
    fn flows_the_peer_may_not_open_are_not_parked() {
        // No announcing stream: dropped.
        let flows = TargetFlows::for_streams(true);
        flows.deliver_at(dgram(2, 100, false), 0);
        assert_eq!((flows.parked_bytes(), flows.dropped()), (0, 1));
        flows.deliver_at(dgram(2, 100, true), 0);
        assert_eq!(flows.parked_bytes(), 100 + PARKED_OVERHEAD);
        // This side dials nothing (empty allow-list): nothing is ever parked.
        let flows = TargetFlows::for_streams(false);
        flows.deliver_at(dgram(2, 100, true), 0);
        assert_eq!((flows.parked_bytes(), flows.dropped()), (0, 1));
    }

    /// A datagram for a flow whose socket was set up a moment ago reaches the target. A
    /// new tokio socket answers `try_send` with WouldBlock, without trying, until the
    /// reactor has reported it writable, and the reader can deliver a new flow's first
    /// datagram in that window (CI lost one of 31 new flows' datagrams so in
    /// `udp_flows::flow_cap_holds_under_a_flood_and_an_existing_client_keeps_working`).
    #[tokio::test]
    async fn a_datagram_for_a_flow_just_set_up_reaches_its_target() {
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        target
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let flows = TargetFlows::default();
        // The flow as `open_flow` leaves it, with no turn of the reactor since: a fresh
        // socket, connected, in the table.
        let socket = flow_socket(([127, 0, 0, 1], 0).into()).unwrap();
        socket.connect(target.local_addr().unwrap()).await.unwrap();
        flows.lock().open.insert(
            1,
            Arc::new(Flow {
                socket,
                counters: None,
                last_active: AtomicU64::new(0),
            }),
        );
        flows.deliver_at(dgram(1, 100, false), 0);
        let mut buf = [0u8; 200];
        let n = target
            .recv(&mut buf)
            .expect("the datagram never reached the target");
        assert_eq!(n, 100);
    }

    #[test]
    fn parked_datagrams_do_not_pin_the_read_buffer() {
        let flows = TargetFlows::default();
        let read_buf = Bytes::from(vec![1u8; 256 * 1024]);
        flows.deliver_at(
            culvert_proto::Datagram {
                flow: 1,
                data: read_buf.slice(10..11),
                stream_open: false,
            },
            0,
        );
        // Only this test's handle is left on the read buffer: the parked byte is a copy.
        assert!(read_buf.is_unique());
    }
}
