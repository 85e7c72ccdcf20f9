//! The server's Prometheus metrics: sessions, connections, streams, bytes per service,
//! heartbeat round trips, auth failures, refusals, port use, UDP. A [`ServerCollector`]
//! reads them from the server's counters when a scrape asks; nothing here runs per packet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use culvert_transport::metrics::{family, single};

use crate::registry::Protocol;
use crate::server::Inner;

/// Upper bounds (seconds) of the stream-open latency histogram buckets; the last catches
/// everything slower.
const OPEN_BUCKETS: [f64; 13] = [
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    f64::INFINITY,
];

/// A fixed-bucket latency histogram of atomic counters: one observation is two relaxed
/// additions and no lock (prometheus-client's own histogram takes a mutex). The
/// prometheus-client encoder writes it.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the count is their sum, so a scrape
    /// racing an observation still sees `_count` equal to the `+Inf` bucket.
    buckets: [AtomicU64; OPEN_BUCKETS.len()],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one latency.
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = OPEN_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(OPEN_BUCKETS.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = OPEN_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(le, n)| (*le, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Reads the server's state into its metric families at each scrape.
pub(crate) struct ServerCollector(pub(crate) Arc<Inner>);

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCollector")
    }
}

/// The labels of one service: its name and its token's name.
type ServiceLabels = Vec<(&'static str, String)>;

fn with(labels: &ServiceLabels, key: &'static str, value: &str) -> ServiceLabels {
    let mut l = labels.clone();
    l.push((key, value.to_owned()));
    l
}

impl Collector for ServerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let inner = &self.0;
        // What the metrics read, through the server's narrow view.
        let view = inner.metrics_view();
        let enc = &mut enc;
        let sessions = view.sessions.clone();
        single(
            enc,
            "culvert_agent_sessions",
            "Agent sessions connected.",
            ConstGauge::new(sessions.len() as u64),
        )?;
        let (mut conns, mut suspect) = (0u64, 0u64);
        let totals = view.counters.connections.totals();
        let mut rtts = Vec::new();
        let mut svc_bytes = Vec::new();
        let mut svc_conns = Vec::new();
        let mut udp_flows = Vec::new();
        let mut udp_dgrams = Vec::new();
        let mut udp_dropped = Vec::new();
        let mut udp_evicted = Vec::new();
        for s in &sessions {
            for m in s.live_muxes() {
                conns += 1;
                suspect += u64::from(m.is_suspect());
                if let Some(r) = m.stats().rtt {
                    rtts.push((
                        [("session", s.id.to_string())],
                        ConstGauge::new(r.as_secs_f64()),
                    ));
                }
            }
            for svc in s.services().values() {
                let l: ServiceLabels = vec![
                    ("service", svc.name.clone()),
                    ("token", s.token().name.clone()),
                ];
                for (dir, n) in [("in", &svc.bytes_in), ("out", &svc.bytes_out)] {
                    svc_bytes.push((
                        with(&l, "direction", dir),
                        ConstCounter::new(n.load(Ordering::Relaxed)),
                    ));
                }
                svc_conns.push((
                    l.clone(),
                    ConstCounter::new(svc.connections.load(Ordering::Relaxed)),
                ));
                if let Some(u) = &svc.udp {
                    let c = &u.counters;
                    udp_flows.push((l.clone(), ConstGauge::new(u.flow_count() as u64)));
                    for (dir, n) in [("in", &c.datagrams_in), ("out", &c.datagrams_out)] {
                        udp_dgrams.push((
                            with(&l, "direction", dir),
                            ConstCounter::new(n.load(Ordering::Relaxed)),
                        ));
                    }
                    for (reason, n) in [
                        ("oversize", &c.dropped_oversize),
                        ("flow_cap", &c.dropped_flow_cap),
                        ("no_agent", &c.dropped_no_agent),
                        ("client_address", &c.dropped_client_address),
                        ("socket_full", &c.dropped_socket_full),
                    ] {
                        udp_dropped.push((
                            with(&l, "reason", reason),
                            ConstCounter::new(n.load(Ordering::Relaxed)),
                        ));
                    }
                    udp_evicted.push((
                        l,
                        ConstCounter::new(c.flows_evicted.load(Ordering::Relaxed)),
                    ));
                }
            }
        }
        single(
            enc,
            "culvert_agent_connections",
            "Pooled agent WebSocket connections up.",
            ConstGauge::new(conns),
        )?;
        single(
            enc,
            "culvert_agent_connections_suspect",
            "Agent connections silent past a heartbeat with a heartbeat unanswered (given no new streams).",
            ConstGauge::new(suspect),
        )?;
        totals.encode(
            enc,
            "Stream payload bytes over agent connections (ended ones included), by direction.",
        )?;
        // Counter names go without `_total`: the encoder appends it.
        family(
            enc,
            "culvert_service_bytes",
            "Bytes relayed per service (in: from public clients; counted when each connection ends).",
            svc_bytes,
        )?;
        family(
            enc,
            "culvert_service_connections",
            "Public connections accepted per service.",
            svc_conns,
        )?;
        family(
            enc,
            "culvert_heartbeat_rtt_seconds",
            "Latest heartbeat round trip per session connection.",
            rtts,
        )?;
        let c = view.counters;
        let load = |n: &AtomicU64| ConstCounter::new(n.load(Ordering::Relaxed));
        single(
            enc,
            "culvert_auth_failures",
            "Failed agent authentications.",
            load(&c.auth_failures),
        )?;
        family(
            enc,
            "culvert_auth_lockouts",
            "Lockouts started after failed authentications, by what was locked out (an address or /64, or a client id).",
            [
                ([("kind", "address")], load(&c.lockouts_address)),
                ([("kind", "client")], load(&c.lockouts_client)),
            ],
        )?;
        family(
            enc,
            "culvert_reload_withdrawals",
            "What token reloads took from live sessions: sessions ended (token removed or expired), services withdrawn, streams reset.",
            [
                ([("what", "session")], load(&c.reload_sessions_closed)),
                ([("what", "service")], load(&c.reload_services_withdrawn)),
                ([("what", "stream")], load(&c.reload_streams_reset)),
            ],
        )?;
        if view.clustered {
            family(
                enc,
                "culvert_cluster_forwarded",
                "Public connections and access streams handed between the servers of the cluster: out (to the server holding the agent), in (from another server).",
                [
                    ([("direction", "out")], load(&c.cluster_forwarded_out)),
                    ([("direction", "in")], load(&c.cluster_forwarded_in)),
                ],
            )?;
            single(
                enc,
                "culvert_cluster_forward_failures",
                "Public connections and access streams that could not be handed to the server holding their agent (refused).",
                load(&c.cluster_forward_failures),
            )?;
            single(
                enc,
                "culvert_cluster_db_errors",
                "Cluster database operations (heartbeat, presence, token reads) that failed; tunnels keep running from the cache meanwhile.",
                load(&c.cluster_db_errors),
            )?;
            let r = &c.cluster_token_rereads;
            family(
                enc,
                "culvert_cluster_token_rereads",
                "Re-reads of the tokens from the cluster's database (after the first read at start; each attempt, a failed one also counted in culvert_cluster_db_errors), by cause: notice (a token changed), reconnect (the listening connection was re-dialed), timer (the 30 s backstop), unknown_token (an Auth showed a token this server did not know; spaced, at most five a second).",
                [
                    ([("cause", "notice")], load(&r.notice)),
                    ([("cause", "reconnect")], load(&r.reconnect)),
                    ([("cause", "timer")], load(&r.timer)),
                    ([("cause", "unknown_token")], load(&r.unknown_token)),
                ],
            )?;
        }
        single(
            enc,
            "culvert_auth_locked_refusals",
            "Auths answered 'too many failed attempts' during a lockout (the token not checked).",
            load(&c.auth_locked),
        )?;
        single(
            enc,
            "culvert_auth_locked_out",
            "Addresses and client ids locked out now.",
            ConstGauge::new(view.admission.locked_now(std::time::Instant::now()) as u64),
        )?;
        single(
            enc,
            "culvert_handshakes_in_progress",
            "Handshakes (TLS, upgrade, Auth) in progress.",
            ConstGauge::new(view.admission.in_progress() as u64),
        )?;
        single(
            enc,
            "culvert_handshakes_shed",
            "Stalled handshakes closed to make room for a newer one when the global or per-address cap was full.",
            load(&c.handshakes_shed),
        )?;
        single(
            enc,
            "culvert_handshakes_failed",
            "Handshakes that failed (TLS, upgrade, deadline, or a balancer's missing PROXY header).",
            load(&c.handshakes_failed),
        )?;
        family(
            enc,
            "culvert_public_connections_refused",
            "Public TCP connections refused before reaching the agent, by reason: client_address, an address the owner token's public_clients leaves out; proxy_header, a connection from a balancer of --public-proxy-protocol-from without a valid PROXY header in time.",
            [
                (
                    [("reason", "client_address")],
                    load(&c.public_refused_client_address),
                ),
                (
                    [("reason", "proxy_header")],
                    load(&c.public_refused_proxy_header),
                ),
            ],
        )?;
        family(
            enc,
            "culvert_connections_limited",
            "Agent connections ended with GoAway (ENHANCE_YOUR_CALM) for a limit the peer made the server exceed: its control queue while not reading, or the resets it made the server generate.",
            [
                ([("limit", "control_queue")], load(&c.control_queue_cap_hits)),
                ([("limit", "resets")], load(&c.reset_cap_hits)),
            ],
        )?;
        family(
            enc,
            "culvert_quota_refusals",
            "Registrations, connections and UDP flows refused because a token, its tenant or a session held its limit, by whose limit (scope) and what it counts.",
            view.quotas
                .refusals()
                .into_iter()
                .map(|(scope, res, n)| ([("scope", scope), ("limit", res)], ConstCounter::new(n))),
        )?;
        family(
            enc,
            "culvert_quota_held",
            "What each token and tenant holds now across all its sessions (services, public ports, UDP flows, connections).",
            view.quotas
                .held()
                .into_iter()
                .map(|(scope, name, res, n)| {
                    (
                        [("scope", scope.to_owned()), ("name", name), ("resource", res.to_owned())],
                        ConstGauge::new(n as u64),
                    )
                }),
        )?;
        let (tu, ts, uu, us) = view.registry.usage();
        family(
            enc,
            "culvert_ports_in_use",
            "Public ports assigned, by protocol.",
            [
                (
                    [("protocol", proto_name(Protocol::Tcp))],
                    ConstGauge::new(tu as u64),
                ),
                (
                    [("protocol", proto_name(Protocol::Udp))],
                    ConstGauge::new(uu as u64),
                ),
            ],
        )?;
        family(
            enc,
            "culvert_ports_total",
            "Size of the public port range, by protocol.",
            [
                ([("protocol", "tcp")], ConstGauge::new(ts as u64)),
                ([("protocol", "udp")], ConstGauge::new(us as u64)),
            ],
        )?;
        family(
            enc,
            "culvert_udp_flows",
            "Open UDP flows per service.",
            udp_flows,
        )?;
        family(
            enc,
            "culvert_udp_datagrams",
            "UDP datagrams relayed per service and direction.",
            udp_dgrams,
        )?;
        family(
            enc,
            "culvert_udp_dropped",
            "UDP datagrams dropped per service and reason.",
            udp_dropped,
        )?;
        family(
            enc,
            "culvert_udp_flows_evicted",
            "Idle UDP flows evicted per service.",
            udp_evicted,
        )?;
        culvert_transport::metrics::encode_udp_delivery_drops(
            enc,
            &view.counters.udp_target_drops,
            &[],
        )?;
        view.open_latency.encode(enc.encode_descriptor(
            "culvert_stream_open_seconds",
            "Time from accepting a public TCP connection to the agent's ConnectAck (target dialed).",
            None,
            MetricType::Histogram,
        )?)?;
        if inner.config().http.is_some() {
            inner.http_callers.encode(enc)?;
        }
        inner.http_metrics.encode(enc)
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}
