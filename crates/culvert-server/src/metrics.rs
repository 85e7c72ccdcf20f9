//! Prometheus text exposition of the server's state: sessions, connections, streams,
//! bytes per service, heartbeat round trips, auth failures, refusals, port use, UDP.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::registry::Protocol;
use crate::server::MetricsView;

use culvert_transport::prom::datagrams_dropped;
pub(crate) use culvert_transport::prom::{family, label};

/// Upper bounds (seconds) of the stream-open latency histogram buckets.
pub(crate) const OPEN_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket latency histogram with atomic counters.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [std::sync::atomic::AtomicU64; OPEN_BUCKETS.len()],
    count: std::sync::atomic::AtomicU64,
    sum_micros: std::sync::atomic::AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in OPEN_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, le) in OPEN_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub(crate) fn render(view: MetricsView<'_>) -> String {
    let sessions = view.sessions;
    let mut out = String::new();
    let one = |v: f64| vec![(String::new(), v)];
    family(
        &mut out,
        "culvert_agent_sessions",
        "gauge",
        "Agent sessions connected.",
        &one(sessions.len() as f64),
    );
    let mut conns = 0usize;
    let mut suspect = 0usize;
    let (mut open, mut opened, mut sent, mut recv) = (0usize, 0u64, 0u64, 0u64);
    let (mut dg_drop_send, mut dg_drop_recv) = (0u64, 0u64);
    let mut rtts = Vec::new();
    let mut svc_bytes = Vec::new();
    let mut svc_conns = Vec::new();
    let mut udp = Vec::new();
    for s in &sessions {
        for m in s.live_muxes() {
            conns += 1;
            suspect += usize::from(m.is_suspect());
            let st = m.stats();
            open += st.open_streams;
            opened += st.proto.streams_opened;
            sent += st.proto.stream_bytes_sent;
            recv += st.proto.stream_bytes_received;
            dg_drop_send += st.proto.datagrams_dropped_send;
            dg_drop_recv += st.proto.datagrams_dropped_recv;
            if let Some(r) = st.rtt {
                rtts.push((format!("session=\"{}\"", s.id), r.as_secs_f64()));
            }
        }
        for svc in s.services().values() {
            let l = format!(
                "service=\"{}\",token=\"{}\"",
                label(&svc.name),
                label(&s.token().name)
            );
            svc_bytes.push((
                format!("{l},direction=\"in\""),
                svc.bytes_in.load(Ordering::Relaxed) as f64,
            ));
            svc_bytes.push((
                format!("{l},direction=\"out\""),
                svc.bytes_out.load(Ordering::Relaxed) as f64,
            ));
            svc_conns.push((l.clone(), svc.connections.load(Ordering::Relaxed) as f64));
            if let Some(u) = &svc.udp {
                let c = &u.counters;
                udp.push(("flows", l.clone(), u.flow_count() as f64));
                udp.push((
                    "in",
                    l.clone(),
                    c.datagrams_in.load(Ordering::Relaxed) as f64,
                ));
                udp.push((
                    "out",
                    l.clone(),
                    c.datagrams_out.load(Ordering::Relaxed) as f64,
                ));
                udp.push((
                    "oversize",
                    l.clone(),
                    c.dropped_oversize.load(Ordering::Relaxed) as f64,
                ));
                udp.push((
                    "flow_cap",
                    l.clone(),
                    c.dropped_flow_cap.load(Ordering::Relaxed) as f64,
                ));
                udp.push((
                    "no_agent",
                    l.clone(),
                    c.dropped_no_agent.load(Ordering::Relaxed) as f64,
                ));
                udp.push(("evicted", l, c.flows_evicted.load(Ordering::Relaxed) as f64));
            }
        }
    }
    family(
        &mut out,
        "culvert_agent_connections",
        "gauge",
        "Pooled agent WebSocket connections up.",
        &one(conns as f64),
    );
    family(
        &mut out,
        "culvert_agent_connections_suspect",
        "gauge",
        "Agent connections silent past a heartbeat with a heartbeat unanswered (given no new streams).",
        &one(suspect as f64),
    );
    family(
        &mut out,
        "culvert_streams_open",
        "gauge",
        "Multiplexed streams holding state.",
        &one(open as f64),
    );
    family(
        &mut out,
        "culvert_streams_opened_total",
        "counter",
        "Streams opened on live connections.",
        &one(opened as f64),
    );
    family(
        &mut out,
        "culvert_tunnel_stream_bytes_total",
        "counter",
        "Stream payload bytes on live agent connections, by direction.",
        &[
            ("direction=\"sent\"".into(), sent as f64),
            ("direction=\"received\"".into(), recv as f64),
        ],
    );
    family(
        &mut out,
        "culvert_service_bytes_total",
        "counter",
        "Bytes relayed per service (in: from public clients; counted when each connection ends).",
        &svc_bytes,
    );
    family(
        &mut out,
        "culvert_service_connections_total",
        "counter",
        "Public connections accepted per service.",
        &svc_conns,
    );
    family(
        &mut out,
        "culvert_heartbeat_rtt_seconds",
        "gauge",
        "Latest heartbeat round trip per session connection.",
        &rtts,
    );
    let c = view.counters;
    family(
        &mut out,
        "culvert_auth_failures_total",
        "counter",
        "Failed agent authentications.",
        &one(c.auth_failures.load(Ordering::Relaxed) as f64),
    );
    family(
        &mut out,
        "culvert_auth_lockouts_total",
        "counter",
        "Lockouts started after failed authentications, by what was locked out (an address or /64, or a client id).",
        &[
            (
                "kind=\"address\"".to_owned(),
                c.lockouts_address.load(Ordering::Relaxed) as f64,
            ),
            (
                "kind=\"client\"".to_owned(),
                c.lockouts_client.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    family(
        &mut out,
        "culvert_reload_withdrawals_total",
        "counter",
        "What token reloads took from live sessions: sessions ended (token removed or expired), services withdrawn, streams reset.",
        &[
            (
                "what=\"session\"".to_owned(),
                c.reload_sessions_closed.load(Ordering::Relaxed) as f64,
            ),
            (
                "what=\"service\"".to_owned(),
                c.reload_services_withdrawn.load(Ordering::Relaxed) as f64,
            ),
            (
                "what=\"stream\"".to_owned(),
                c.reload_streams_reset.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    family(
        &mut out,
        "culvert_auth_locked_refusals_total",
        "counter",
        "Auths answered 'too many failed attempts' during a lockout (the token not checked).",
        &one(c.auth_locked.load(Ordering::Relaxed) as f64),
    );
    family(
        &mut out,
        "culvert_auth_locked_out",
        "gauge",
        "Addresses and client ids locked out now.",
        &one(view.admission.locked_now(std::time::Instant::now()) as f64),
    );
    family(
        &mut out,
        "culvert_handshakes_in_progress",
        "gauge",
        "Handshakes (TLS, upgrade, Auth) in progress.",
        &one(view.admission.in_progress() as f64),
    );
    family(
        &mut out,
        "culvert_handshakes_shed_total",
        "counter",
        "Stalled handshakes closed to make room for a newer one when the global or per-address cap was full.",
        &one(c.handshakes_shed.load(Ordering::Relaxed) as f64),
    );
    family(
        &mut out,
        "culvert_handshakes_failed_total",
        "counter",
        "Handshakes that failed (TLS, upgrade, deadline).",
        &one(c.handshakes_failed.load(Ordering::Relaxed) as f64),
    );
    family(
        &mut out,
        "culvert_connections_limited_total",
        "counter",
        "Agent connections ended with GoAway (ENHANCE_YOUR_CALM) for a limit the peer made the server exceed: its control queue while not reading, or the resets it made the server generate.",
        &[
            (
                "limit=\"control_queue\"".into(),
                c.control_queue_cap_hits.load(Ordering::Relaxed) as f64,
            ),
            (
                "limit=\"resets\"".into(),
                c.reset_cap_hits.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    let quota_refusals: Vec<(String, f64)> = view
        .quotas
        .refusals()
        .into_iter()
        .map(|(scope, res, n)| (format!("scope=\"{scope}\",limit=\"{res}\""), n as f64))
        .collect();
    family(
        &mut out,
        "culvert_quota_refusals_total",
        "counter",
        "Registrations, connections and UDP flows refused because a token, its tenant or a session held its limit, by whose limit (scope) and what it counts.",
        &quota_refusals,
    );
    let held: Vec<(String, f64)> = view
        .quotas
        .held()
        .into_iter()
        .map(|(scope, name, res, n)| {
            (
                format!(
                    "scope=\"{scope}\",name=\"{}\",resource=\"{res}\"",
                    label(&name)
                ),
                n as f64,
            )
        })
        .collect();
    family(
        &mut out,
        "culvert_quota_held",
        "gauge",
        "What each token and tenant holds now across all its sessions (services, public ports, UDP flows, connections).",
        &held,
    );
    let (tu, ts, uu, us) = view.registry.usage();
    family(
        &mut out,
        "culvert_ports_in_use",
        "gauge",
        "Public ports assigned, by protocol.",
        &[
            (
                format!("protocol=\"{}\"", proto_name(Protocol::Tcp)),
                tu as f64,
            ),
            (
                format!("protocol=\"{}\"", proto_name(Protocol::Udp)),
                uu as f64,
            ),
        ],
    );
    family(
        &mut out,
        "culvert_ports_total",
        "gauge",
        "Size of the public port range, by protocol.",
        &[
            ("protocol=\"tcp\"".into(), ts as f64),
            ("protocol=\"udp\"".into(), us as f64),
        ],
    );
    let pick = |k: &str| -> Vec<(String, f64)> {
        udp.iter()
            .filter(|(n, _, _)| *n == k)
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    };
    family(
        &mut out,
        "culvert_udp_flows",
        "gauge",
        "Open UDP flows per service.",
        &pick("flows"),
    );
    let mut dgrams = Vec::new();
    for (k, dir) in [("in", "in"), ("out", "out")] {
        dgrams.extend(
            pick(k)
                .into_iter()
                .map(|(l, v)| (format!("{l},direction=\"{dir}\""), v)),
        );
    }
    family(
        &mut out,
        "culvert_udp_datagrams_total",
        "counter",
        "UDP datagrams relayed per service and direction.",
        &dgrams,
    );
    let mut dropped = Vec::new();
    for reason in ["oversize", "flow_cap", "no_agent"] {
        dropped.extend(
            pick(reason)
                .into_iter()
                .map(|(l, v)| (format!("{l},reason=\"{reason}\""), v)),
        );
    }
    family(
        &mut out,
        "culvert_udp_dropped_total",
        "counter",
        "UDP datagrams dropped per service and reason.",
        &dropped,
    );
    family(
        &mut out,
        "culvert_udp_flows_evicted_total",
        "counter",
        "Idle UDP flows evicted per service.",
        &pick("evicted"),
    );
    datagrams_dropped(&mut out, dg_drop_send, dg_drop_recv);
    view.open_latency.render(
        &mut out,
        "culvert_stream_open_seconds",
        "Time from accepting a public TCP connection to the agent's ConnectAck (target dialed).",
    );
    out
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}
