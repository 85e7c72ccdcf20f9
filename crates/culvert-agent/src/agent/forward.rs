//! Forwarding on one connection: each stream the server opens is matched to its Connect
//! and relayed to the local target; UDP Connects start a flow.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use culvert_proto::control::RegisterExt;
use culvert_proto::{reset_code, Control, ServiceProtocol, Target};
use culvert_transport::{relay_tcp_counted, tune_tcp, Mux, MuxEvent, TunnelStream};
use tokio::net::TcpStream;
use tracing::Instrument;
use uuid::Uuid;

use super::connect::Connected;
use super::register_retry::Refused;
use super::{ServiceCounters, Shared};
use crate::ServiceSpec;

/// Sleeps until `t` (forever when `None`).
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// The Register asking the server again for `svc` (on its configured port, if any).
fn register_of(svc: &ServiceSpec) -> Control {
    Control::Register {
        name: svc.name.clone(),
        protocol: svc.protocol,
        local_port: svc.local_port(),
        remote_port: svc.remote_port,
        ext: svc.private.then_some(RegisterExt { flags: 1 }),
    }
}

/// Serves one connection until it closes: relays each inbound stream to its service, and
/// each UDP Connect to a flow.
/// Services refused for now are asked again meanwhile (see `register_retry`).
pub(super) async fn serve(
    shared: &Arc<Shared>,
    slot: usize,
    server: usize,
    connected: Connected,
) -> String {
    let Connected {
        mux,
        mut events,
        mut ids,
        early,
        mut pending,
    } = connected;
    let mux = &mux;
    let flows = Arc::new(
        culvert_transport::udp_target::TargetFlows::default()
            .counting_into(shared.udp_target_drops.clone()),
    );
    mux.set_datagram_sink(crate::local_flows::sink(
        mux,
        flows.clone(),
        shared.local_flows.clone(),
    ));
    let targets: HashMap<String, ServiceSpec> = shared
        .config
        .services
        .iter()
        .map(|s| (s.name.clone(), s.clone()))
        .collect();
    let mut early = early.into_iter();
    loop {
        let ev = match early.next() {
            Some(ev) => ev,
            None => {
                let due = pending.deadline();
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                    _ = sleep_until(due), if due.is_some() => {
                        if let Some(svc) = pending.due(Instant::now()) {
                            if let Err(e) = mux.send_control(register_of(&svc)) {
                                return e.to_string();
                            }
                        }
                        continue;
                    }
                }
            }
        };
        match ev {
            // The open carries the service and the public client: served at once, with no
            // Connect to wait for (PROTOCOL.md §8 step 5).
            MuxEvent::Incoming(
                stream,
                Target::Inbound {
                    service,
                    connection_id,
                    client_addr,
                },
            ) => {
                let Some(svc) = targets.get(&service) else {
                    tracing::warn!(service = ?service, "server opened a stream for an unknown service");
                    stream.reset(reset_code::REFUSED);
                    let _ = mux.send_control(Control::ConnectFail {
                        connection_id,
                        reason: "no such service".into(),
                    });
                    continue;
                };
                let counters = shared.counters.get(&svc.name).cloned().unwrap_or_default();
                let span = tracing::debug_span!("conn", service = %svc.name, client = %client_addr);
                tokio::spawn(
                    forward(
                        mux.clone(),
                        stream,
                        svc.clone(),
                        connection_id,
                        shared.config.dial_timeout,
                        client_addr,
                        counters,
                    )
                    .instrument(span),
                );
            }
            MuxEvent::Incoming(stream, target) => {
                tracing::warn!(%target, "server opened a stream of a kind an agent does not serve");
                stream.reset(reset_code::REFUSED);
            }
            MuxEvent::Control(c) => {
                mux.control_handled();
                match c {
                    Control::Connect {
                        service_id,
                        connection_id,
                        client_addr,
                        ext,
                    } => {
                        // UDP: the Connect announces a flow (its id in the stream id field).
                        if let Some(svc) = ids
                            .get(&service_id)
                            .filter(|s| s.protocol == ServiceProtocol::Udp)
                        {
                            let Some(flow) = ext.map(|e| e.stream_id.0) else {
                                continue;
                            };
                            let span = tracing::debug_span!("flow", service = %svc.name, client = %client_addr);
                            let counters =
                                shared.counters.get(&svc.name).cloned().unwrap_or_default();
                            let flow = culvert_transport::udp_target::open_flow(
                                mux.clone(),
                                flows.clone(),
                                flow,
                                svc.target.clone(),
                                shared.config.udp_idle_timeout,
                                shared.config.udp_max_flows,
                                Some(counters.bytes.clone()),
                                std::future::pending(),
                            );
                            tokio::spawn(
                                async move {
                                    counters.connections.fetch_add(1, Ordering::Relaxed);
                                    counters.open.fetch_add(1, Ordering::Relaxed);
                                    flow.await;
                                    counters.open.fetch_sub(1, Ordering::Relaxed);
                                }
                                .instrument(span),
                            );
                            continue;
                        }
                        // A TCP connection's open carries its client itself; a Connect
                        // naming a stream is not part of protocol 2.
                        let _ = mux.send_control(Control::ConnectFail {
                            connection_id,
                            reason: "no stream for this connection".into(),
                        });
                    }
                    Control::Disconnect { reason } => {
                        return format!("server disconnected: {reason}")
                    }
                    Control::RegisterOk { service_id, ext } if pending.in_flight() => {
                        if let Some(svc) = pending.on_ok(Instant::now()) {
                            tracing::info!(service = %svc.name, "service registered after being refused");
                            let port = ext.map(|e| e.assigned_port).unwrap_or(0);
                            super::connect::record_port(shared, server, &svc, port);
                            ids.insert(service_id, svc);
                            shared.set_unregistered(slot, pending.names());
                        }
                    }
                    Control::RegisterFail { reason } if pending.in_flight() => {
                        match pending.on_fail(&reason, Instant::now()) {
                            Some((svc, Refused::Retry(delay))) => {
                                tracing::warn!(service = %svc.name, reason = ?reason, retry_in = ?delay, "server refused the service again; asking again later")
                            }
                            Some((_, Refused::Permanent(f))) => return f.message,
                            None => {}
                        }
                    }
                    other => {
                        tracing::debug!(message = ?other.frame_type(), "ignoring control message")
                    }
                }
            }
            MuxEvent::GoingAway(reason) => tracing::info!(reason = ?reason, "server going away"),
            MuxEvent::Closed(reason) => return reason,
        }
    }
    "event channel closed".into()
}

/// Dials the local target and relays; a refused or slow target resets the stream at once.
async fn forward(
    mux: Mux,
    stream: TunnelStream,
    svc: ServiceSpec,
    connection_id: Uuid,
    timeout: Duration,
    client_addr: String,
    counters: Arc<ServiceCounters>,
) {
    if let Some(backend) = svc.http.clone() {
        // An HTTP service: the stream carries HTTP; the backend is dialed per request.
        let _ = mux.send_control(Control::ConnectAck { connection_id });
        counters.connections.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        // Boxed: the hyper connection's state would otherwise be part of every TCP
        // connection's task too (this function's future is as large as its largest await).
        Box::pin(crate::http_proxy::serve(
            stream,
            backend,
            timeout,
            counters.clone(),
        ))
        .await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let mut tcp = match tokio::time::timeout(timeout, TcpStream::connect(&svc.target)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let reason = format!("{}: {e}", svc.target);
            return fail(&mux, stream, connection_id, &counters, reason);
        }
        Err(_) => {
            let reason = format!("{}: connect timed out", svc.target);
            return fail(&mux, stream, connection_id, &counters, reason);
        }
    };
    tune_tcp(&tcp);
    if let Some(version) = svc.proxy {
        // The backend sees the public client (see `proxy_protocol` for the destination).
        let header = crate::proxy_protocol::header(version, &client_addr, tcp.peer_addr().ok());
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut tcp, &header).await {
            let reason = format!("{}: PROXY header: {e}", svc.target);
            return fail(&mux, stream, connection_id, &counters, reason);
        }
    }
    counters.dialed();
    let _ = mux.send_control(Control::ConnectAck { connection_id });
    counters.connections.fetch_add(1, Ordering::Relaxed);
    counters.open.fetch_add(1, Ordering::Relaxed);
    let result = relay_tcp_counted(tcp, &stream, Some(counters.bytes.clone())).await;
    counters.open.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(t) => tracing::debug!(up = t.up, down = t.down, "connection done"),
        Err(e) => tracing::debug!(error = %e, "connection aborted"),
    }
}

/// The target could not be reached: counted against the service, logged, and the stream
/// reset with the reason sent to the server.
fn fail(
    mux: &Mux,
    stream: TunnelStream,
    connection_id: Uuid,
    counters: &ServiceCounters,
    reason: String,
) {
    counters.dial_failed();
    // A dead backend or an exhausted file-descriptor table fails every connection: warn at
    // most once per ten seconds, the rest at debug, so the log is not flooded.
    static LAST_WARN_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 10;
    let last = LAST_WARN_SECS.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_WARN_SECS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(%reason, "could not reach target (further failures within 10 s are logged at debug)");
    } else {
        tracing::debug!(%reason, "could not reach target");
    }
    stream.reset(reset_code::CONNECT_FAILED);
    let _ = mux.send_control(Control::ConnectFail {
        connection_id,
        reason,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_proto::{Config, Connection, Side};
    use culvert_transport::wsframe::{Role, WsConn};
    use tokio::net::TcpListener;

    /// The task of one forwarded TCP connection lives as long as the connection: its size
    /// is paid per connection, idle or not. In a debug build: 1,080 bytes; 1,336 with the
    /// HTTP proxy's state (a hyper connection, which only HTTP services need) inline; 3,400
    /// with the relay that stored its two directions twice (tests/relay_footprint.rs in
    /// culvert-transport).
    #[tokio::test]
    async fn a_forwarded_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, _accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let conn = Connection::new(Side::Client, Config::default(), Instant::now()).unwrap();
        let (mux, _events) = Mux::spawn_with(WsConn::new(dialed.unwrap(), Role::Client), conn);
        let stream = mux.open("footprint").await.unwrap();
        let svc = ServiceSpec {
            name: "footprint".into(),
            protocol: ServiceProtocol::Tcp,
            target: "127.0.0.1:9".into(),
            remote_port: 0,
            proxy: None,
            private: false,
            http: None,
        };
        let task = forward(
            mux.clone(),
            stream,
            svc,
            Uuid::nil(),
            Duration::from_secs(1),
            String::new(),
            Arc::default(),
        );
        let size = std::mem::size_of_val(&task);
        eprintln!("forward task: {size} bytes");
        assert!(
            size <= 1280,
            "a forwarded connection's task is {size} bytes"
        );
    }
}
