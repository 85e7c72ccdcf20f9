//! Public UDP ports: each distinct client address is a flow, relayed as datagram frames to
//! the agent, which keeps one connected socket per flow towards the target. Replies go back
//! only to the address that owns the flow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use culvert_proto::control::ConnectExt;
use culvert_proto::{Control, StreamId};
use culvert_transport::Mux;
use tokio::net::UdpSocket;

use crate::server::Inner;
use crate::session::{Service, Session};

/// Counters of one UDP service (exact, for metrics and tests).
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Datagrams received from public clients and sent towards the agent.
    pub datagrams_in: AtomicU64,
    /// Datagrams from the agent delivered to public clients.
    pub datagrams_out: AtomicU64,
    /// Datagrams dropped for exceeding the size limit.
    pub dropped_oversize: AtomicU64,
    /// Datagrams dropped because a new flow would exceed a flow cap.
    pub dropped_flow_cap: AtomicU64,
    /// Datagrams dropped for lack of a live agent connection.
    pub dropped_no_agent: AtomicU64,
    /// Datagrams dropped because their sender is not in the token's `public_clients`.
    pub dropped_client_address: AtomicU64,
    /// Replies dropped because the public socket's send buffer was full (the clients'
    /// links are slower than the tunnel).
    pub dropped_socket_full: AtomicU64,
    /// Flows created.
    pub flows_created: AtomicU64,
    /// Flows evicted after the idle timeout.
    pub flows_evicted: AtomicU64,
}

/// UDP state of one service.
#[derive(Debug)]
pub(crate) struct UdpService {
    pub(crate) socket: Arc<UdpSocket>,
    /// Flow id of each client address.
    by_addr: Mutex<HashMap<SocketAddr, u64>>,
    pub(crate) counters: Arc<UdpCounters>,
}

impl UdpService {
    pub(crate) fn new(socket: UdpSocket) -> UdpService {
        UdpService {
            socket: Arc::new(socket),
            by_addr: Mutex::new(HashMap::new()),
            counters: Arc::default(),
        }
    }

    fn by_addr(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, u64>> {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flows currently open.
    pub(crate) fn flow_count(&self) -> usize {
        self.by_addr().len()
    }
}

/// Where replies of a flow go.
#[derive(Debug)]
pub(crate) struct FlowRoute {
    addr: SocketAddr,
    service: Arc<Service>,
    mux: Mux,
    last_active: Instant,
    /// Set for a flow an access client opened: replies go to its connection, tagged
    /// with its stream's id, instead of to a public address.
    to_stream: Option<(Mux, u64)>,
    /// The flow counted for the service's token and tenant while it lives.
    _quota: crate::quota::Charge,
}

impl FlowRoute {
    /// A flow of `service` (on the agent's connection `mux`) whose replies go to the
    /// access client's connection `client` as flow `client_flow`.
    pub(crate) fn to_access_client(
        service: Arc<Service>,
        mux: Mux,
        client: Mux,
        client_flow: u64,
        quota: crate::quota::Charge,
    ) -> FlowRoute {
        FlowRoute {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            service,
            mux,
            last_active: Instant::now(),
            to_stream: Some((client, client_flow)),
            _quota: quota,
        }
    }

    pub(crate) fn is_of(&self, service: &Arc<Service>) -> bool {
        Arc::ptr_eq(&self.service, service)
    }
}

/// Relays client datagrams of one UDP service until aborted.
pub(crate) async fn serve_udp(server: Arc<Inner>, session: Arc<Session>, service: Arc<Service>) {
    let config = server.config();
    let Some(udp) = &service.udp else { return };
    let socket = udp.socket.clone();
    let counters = udp.counters.clone();
    let mut buf = vec![0u8; 65_536];
    let mut batch = Vec::new();
    let mut next_sweep = Instant::now() + config.udp_idle_timeout / 4;
    loop {
        let sweep = tokio::time::sleep_until(next_sweep.into());
        let first = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "udp recv failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = sweep => {
                evict_idle(&session, &service, config.udp_idle_timeout);
                next_sweep = Instant::now() + config.udp_idle_timeout / 4;
                continue;
            }
        };
        // Whatever else already waits in the socket is relayed in the same pass, and
        // consecutive datagrams of one flow are queued together (one lock, one wake-up).
        let mut next = Some(first);
        let mut burst = 0;
        let mut pending: Option<(u64, Mux)> = None;
        while let Some((n, from)) = next.take() {
            burst += 1;
            if n > config.udp_max_datagram {
                counters.dropped_oversize.fetch_add(1, Ordering::Relaxed);
            } else if let Some((flow, mux)) = flow_for(&server, &session, &service, from) {
                if pending.as_ref().is_some_and(|(f, _)| *f != flow) {
                    flush(&mut pending, &mut batch, &counters);
                }
                batch.push(Bytes::copy_from_slice(&buf[..n]));
                pending = Some((flow, mux));
            }
            if burst < MAX_BURST {
                next = socket.try_recv_from(&mut buf).ok();
            }
        }
        flush(&mut pending, &mut batch, &counters);
    }
}

/// Flows an access client opened on one connection towards a UDP service, by the client's
/// flow id (its stream's id): where their datagrams go (the agent's connection and flow).
#[derive(Debug, Default)]
pub(crate) struct Spliced(Mutex<HashMap<u64, (Mux, u64)>>);

impl Spliced {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Mux, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, client_flow: u64, to: (Mux, u64)) {
        self.lock().insert(client_flow, to);
    }

    pub(crate) fn remove(&self, client_flow: u64) {
        self.lock().remove(&client_flow);
    }

    fn get(&self, client_flow: u64) -> Option<(Mux, u64)> {
        self.lock().get(&client_flow).cloned()
    }
}

/// Datagrams read from a public UDP socket per pass at most, before yielding.
const MAX_BURST: usize = 64;

/// Queues the batched datagrams of the pending flow on its connection.
fn flush(pending: &mut Option<(u64, Mux)>, batch: &mut Vec<Bytes>, counters: &UdpCounters) {
    let Some((flow, mux)) = pending.take() else {
        return;
    };
    let n = batch.len() as u64;
    if mux.send_datagrams(flow, batch).is_ok() {
        counters.datagrams_in.fetch_add(n, Ordering::Relaxed);
    } else {
        counters.dropped_no_agent.fetch_add(n, Ordering::Relaxed);
    }
    batch.clear();
}

/// The flow of `from`, created (and announced with Connect) when new and under the caps.
fn flow_for(
    server: &Inner,
    session: &Arc<Session>,
    service: &Arc<Service>,
    from: SocketAddr,
) -> Option<(u64, Mux)> {
    let config = server.config();
    let udp = service.udp.as_ref()?;
    let existing = udp.by_addr().get(&from).copied();
    if let Some(flow) = existing {
        let mut flows = session.flows();
        if let Some(r) = flows.get_mut(&flow) {
            r.last_active = Instant::now();
            if !r.mux.is_closed() {
                return Some((flow, r.mux.clone()));
            }
        }
        // Its connection died: forget the flow; it is rebuilt below on a live connection.
        flows.remove(&flow);
        udp.by_addr().remove(&from);
    }
    if !session.token().admits_public_client(from.ip()) {
        udp.counters
            .dropped_client_address
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(service = %service.name, client = %from, "udp datagram dropped: sender not in the token's public_clients");
        return None;
    }
    if udp.flow_count() >= config.udp_max_flows_per_service
        || session.flows().len() >= config.udp_max_flows_per_session
    {
        udp.counters
            .dropped_flow_cap
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let quota = match charge_flow(server, session) {
        Ok(c) => c,
        Err(refusal) => {
            udp.counters
                .dropped_flow_cap
                .fetch_add(1, Ordering::Relaxed);
            if server.quotas().log_now() {
                tracing::warn!(service = %service.name, client = %from, %refusal,
                    "udp flow refused: quota reached (logged at most once a second)");
            }
            return None;
        }
    };
    // Odd ids: even ones are the stream ids of flows the agent side opens (PROTOCOL.md §6.8).
    let flow = session.next_flow.fetch_add(2, Ordering::Relaxed);
    let Some(mux) = session.pick_for_flow(flow) else {
        udp.counters
            .dropped_no_agent
            .fetch_add(1, Ordering::Relaxed);
        return None;
    };
    // The agent sets the flow up from this Connect (its stream id field carries the flow id).
    let connect = Control::Connect {
        service_id: service.id,
        connection_id: crate::ids::new_uuid(),
        client_addr: from.to_string(),
        ext: Some(ConnectExt {
            stream_id: StreamId(flow),
        }),
    };
    if mux.send_control(connect).is_err() {
        udp.counters
            .dropped_no_agent
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    udp.by_addr().insert(from, flow);
    session.flows().insert(
        flow,
        FlowRoute {
            addr: from,
            service: service.clone(),
            mux: mux.clone(),
            last_active: Instant::now(),
            to_stream: None,
            _quota: quota,
        },
    );
    udp.counters.flows_created.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(service = %service.name, client = %from, flow, "udp flow opened");
    Some((flow, mux))
}

/// Charges a new UDP flow of a service of `session` to its token and tenant.
pub(crate) fn charge_flow(
    server: &Inner,
    session: &Session,
) -> Result<crate::quota::Charge, crate::quota::Refusal> {
    let token = session.token();
    server.quotas().charge_token(
        crate::quota::Resource::UdpFlows,
        &token,
        &server.tenant_limits(token.tenant()),
        server.config(),
    )
}

fn evict_idle(session: &Session, service: &Arc<Service>, idle: Duration) {
    let Some(udp) = &service.udp else { return };
    let now = Instant::now();
    let mut evicted = Vec::new();
    session.flows().retain(|flow, r| {
        let keep = !Arc::ptr_eq(&r.service, service) || now.duration_since(r.last_active) < idle;
        if !keep {
            evicted.push((*flow, r.addr));
        }
        keep
    });
    if evicted.is_empty() {
        return;
    }
    let mut by_addr = udp.by_addr();
    for (flow, addr) in &evicted {
        if by_addr.get(addr) == Some(flow) {
            by_addr.remove(addr);
        }
    }
    udp.counters
        .flows_evicted
        .fetch_add(evicted.len() as u64, Ordering::Relaxed);
    tracing::debug!(service = %service.name, count = evicted.len(), "idle udp flows evicted");
}

/// Where the datagrams arriving on `mux` go: replies of public flows (odd ids) to the
/// client that owns the flow, those of flows the agent side opened (even ids) to their
/// dialed targets. Runs in the connection's reader; sends never wait (a full socket buffer
/// drops the datagram, as the network would).
pub(crate) fn reply_sink(
    session: Arc<Session>,
    dials: Arc<culvert_transport::udp_target::TargetFlows>,
    spliced: Arc<Spliced>,
) -> culvert_transport::DatagramSink {
    Arc::new(move |d: culvert_proto::Datagram| {
        if d.flow % 2 == 0 {
            // An access client's flow to a service: on to the serving agent.
            let route = spliced.get(d.flow);
            match route {
                Some((mux, flow)) => {
                    let _ = mux.send_datagram(flow, d.data);
                }
                None => dials.deliver(d),
            }
            return;
        }
        let mut to_client = None;
        let target = {
            let mut flows = session.flows();
            flows.get_mut(&d.flow).and_then(|r| {
                r.last_active = Instant::now();
                if let Some(c) = &r.to_stream {
                    to_client = Some(c.clone());
                    return None;
                }
                r.service
                    .udp
                    .as_ref()
                    .map(|u| (u.socket.clone(), r.addr, u.counters.clone()))
            })
        };
        if let Some((mux, flow)) = to_client {
            let _ = mux.send_datagram(flow, d.data);
            return;
        }
        // A reply for an unknown (evicted) flow goes nowhere: only owners get replies.
        if let Some((socket, addr, counters)) = target {
            if culvert_transport::send_to_now(&socket, &d.data, addr) {
                counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.dropped_socket_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}
