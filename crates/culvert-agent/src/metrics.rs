//! The agent's Prometheus metrics: its pool, readiness, failures, public ports, each
//! service's connections, bytes and (HTTP services) requests, and the streams, bytes and
//! round trips of its live connections. An [`AgentCollector`] reads
//! them from the agent's counters when a scrape asks; nothing here runs per packet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use culvert_transport::metrics::{family, single};

use crate::agent::Shared;
use crate::{ServiceCounters, ServiceView};

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

/// Per service: connections open and made, bytes each way, the target's dials; for HTTP
/// services also requests by result, retries and backend connections. The label values are
/// the configured service names, so the families grow with the configuration only.
fn encode_services(enc: &mut DescriptorEncoder, shared: &Shared) -> std::fmt::Result {
    let services = shared.services();
    let all = || services.iter();
    let dialing = || services.iter().filter(|s| s.kind != "udp");
    let http = || services.iter().filter(|s| s.kind == "http");
    family(
        enc,
        "culvert_agent_service_connections_open",
        "Connections being relayed now, per service (UDP: flows; HTTP: tunnel streams).",
        all().map(|s| {
            let open = s.counters.open.load(Ordering::Relaxed) as u64;
            ([("service", s.name.as_str())], ConstGauge::new(open))
        }),
    )?;
    family(
        enc,
        "culvert_agent_service_connections",
        "Connections relayed since start, per service (UDP: flows; HTTP: tunnel streams).",
        per_service(all(), |c| &c.connections),
    )?;
    family(
        enc,
        "culvert_agent_service_bytes",
        "Payload bytes of TCP and UDP services, per service: up from the local target towards the tunnel, down the other way.",
        all().flat_map(|s| {
            let b = &s.counters.bytes;
            [("up", &b.up), ("down", &b.down)].map(|(d, n)| {
                (
                    [("service", s.name.as_str()), ("direction", d)],
                    ConstCounter::new(n.load(Ordering::Relaxed)),
                )
            })
        }),
    )?;
    family(
        enc,
        "culvert_agent_service_dial_failures",
        "Dials of a service's target that failed (refused, timed out, PROXY header not written; HTTP: backend connections), per TCP and HTTP service.",
        per_service(dialing(), |c| &c.dial_failures),
    )?;
    family(
        enc,
        "culvert_agent_service_target_up",
        "1 when the last dial of a TCP or HTTP service's target reached it, 0 when it failed (absent before the first dial).",
        dialing().filter_map(|s| {
            let up = s.counters.target_reachable()?;
            Some(([("service", s.name.as_str())], ConstGauge::new(u64::from(up))))
        }),
    )?;
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
        per_service(http(), |c| &c.http.retried),
    )?;
    family(
        enc,
        "culvert_agent_http_backend_connections",
        "Connections made to HTTP services' backends.",
        per_service(http(), |c| &c.http.backend_connections),
    )
}

/// One counter sample per service of `services`, labelled by its name, read from the
/// counter `of` picks.
fn per_service<'a>(
    services: impl Iterator<Item = &'a ServiceView> + 'a,
    of: impl Fn(&ServiceCounters) -> &AtomicU64 + 'a,
) -> impl Iterator<Item = ([(&'static str, &'a str); 1], ConstCounter)> + 'a {
    services.map(move |s| {
        let n = of(&s.counters).load(Ordering::Relaxed);
        ([("service", s.name.as_str())], ConstCounter::new(n))
    })
}
