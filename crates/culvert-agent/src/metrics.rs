//! The agent's Prometheus metrics: its pool, readiness, failures, public ports, each
//! service's connections, bytes and (HTTP services) requests, and the streams, bytes and
//! round trips of its live connections. An [`AgentCollector`] reads
//! them from the agent's counters when a scrape asks; nothing here runs per packet.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use culvert_transport::metrics::{family, single};

use crate::agent::Shared;

/// Reads the agent's state into its metric families at each scrape.
pub(crate) struct AgentCollector(pub(crate) Arc<Shared>);

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCollector")
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.0;
        let enc = &mut enc;
        let totals = shared.connection_totals();
        let mut rtts = Vec::new();
        for (i, m) in shared.live().iter().enumerate() {
            if let Some(r) = m.stats().rtt {
                rtts.push(([("connection", i)], ConstGauge::new(r.as_secs_f64())));
            }
        }
        single(
            enc,
            "culvert_agent_connections_up",
            "Pooled connections authenticated and registered.",
            ConstGauge::new(shared.connections_up() as u64),
        )?;
        single(
            enc,
            "culvert_agent_connections_suspect",
            "Pooled connections silent past a heartbeat with a heartbeat unanswered (given no new streams).",
            ConstGauge::new(shared.connections_suspect() as u64),
        )?;
        family(
            enc,
            "culvert_agent_server_connections",
            "Pooled connections up and registered, per server the pool spreads over.",
            shared
                .connections_per_server()
                .into_iter()
                .map(|(server, n)| ([("server", server)], ConstGauge::new(n as u64))),
        )?;
        single(
            enc,
            "culvert_agent_pool_size",
            "Pooled connections configured.",
            ConstGauge::new(shared.pool() as u64),
        )?;
        single(
            enc,
            "culvert_agent_ready",
            "1 when every pooled connection is up, registered and not suspect.",
            ConstGauge::new(u64::from(shared.is_ready())),
        )?;
        // Counter names go without `_total`: the encoder appends it.
        single(
            enc,
            "culvert_agent_connection_failures",
            "Failed connection attempts and lost connections.",
            ConstCounter::new(shared.failures()),
        )?;
        family(
            enc,
            "culvert_agent_service_public_port",
            "Public port the server assigned to each service.",
            shared
                .ports()
                .into_iter()
                .map(|(name, port)| ([("service", name)], ConstGauge::new(u64::from(port)))),
        )?;
        encode_services(enc, shared)?;
        totals.encode(
            enc,
            "Stream payload bytes over the pooled connections (ended ones included), by direction.",
        )?;
        culvert_transport::metrics::encode_udp_delivery_drops(
            enc,
            shared.udp_target_drops(),
            &[("local_queue_full", shared.local_flows_dropped())],
        )?;
        family(
            enc,
            "culvert_heartbeat_rtt_seconds",
            "Latest heartbeat round trip per pooled connection.",
            rtts,
        )
    }
}

/// Per service: connections open and made, bytes each way; for HTTP services also requests
/// by result, retries and backend connections. The label values are the configured service
/// names, so the families grow with the configuration only.
fn encode_services(enc: &mut DescriptorEncoder, shared: &Shared) -> std::fmt::Result {
    let services = shared.services();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    family(
        enc,
        "culvert_agent_service_connections_open",
        "Connections being relayed now, per service (UDP: flows; HTTP: tunnel streams).",
        services.iter().map(|s| {
            (
                [("service", s.name.as_str())],
                ConstGauge::new(s.counters.open.load(Ordering::Relaxed) as u64),
            )
        }),
    )?;
    family(
        enc,
        "culvert_agent_service_connections",
        "Connections relayed since start, per service (UDP: flows; HTTP: tunnel streams).",
        services.iter().map(|s| {
            (
                [("service", s.name.as_str())],
                ConstCounter::new(get(&s.counters.connections)),
            )
        }),
    )?;
    family(
        enc,
        "culvert_agent_service_bytes",
        "Payload bytes of TCP and UDP services, per service: up from the local target towards the tunnel, down the other way.",
        services.iter().flat_map(|s| {
            let b = &s.counters.bytes;
            [("up", get(&b.up)), ("down", get(&b.down))].map(|(d, n)| {
                (
                    [("service", s.name.as_str()), ("direction", d)],
                    ConstCounter::new(n),
                )
            })
        }),
    )?;
    let http = || services.iter().filter(|s| s.kind == "http");
    family(
        enc,
        "culvert_agent_http_requests",
        "HTTP services' requests by result: answered by the backend, or answered by the agent (bad_request, bad_gateway, gateway_timeout).",
        http().flat_map(|s| {
            s.counters.http.by_result().map(|(result, n)| {
                (
                    [("service", s.name.as_str()), ("result", result)],
                    ConstCounter::new(n),
                )
            })
        }),
    )?;
    family(
        enc,
        "culvert_agent_http_retries",
        "HTTP requests sent once more on a new backend connection after the kept-alive one they went out on closed before any answer.",
        http().map(|s| {
            (
                [("service", s.name.as_str())],
                ConstCounter::new(get(&s.counters.http.retried)),
            )
        }),
    )?;
    family(
        enc,
        "culvert_agent_http_backend_connections",
        "Connections made to HTTP services' backends.",
        http().map(|s| {
            (
                [("service", s.name.as_str())],
                ConstCounter::new(get(&s.counters.http.backend_connections)),
            )
        }),
    )
}
