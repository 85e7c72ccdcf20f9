//! The `/metrics` of each process kind (server, agent, `culvert access`; a node's in
//! node.rs) parse as Prometheus text under a strict checker (support/exposition.rs), after
//! TCP, UDP and an access session have put samples in the families the README names.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use support::exposition::{assert_exposition, parse_exposition, ParsedFamily};
use support::*;

/// The checker itself refuses what a scraper would refuse.
#[test]
fn the_checker_refuses_broken_exposition() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 2\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    assert!(
        parse_exposition(good).is_ok(),
        "{:?}",
        parse_exposition(good)
    );
    for bad in [
        "a_total 1\n",
        "# TYPE a gauge\na 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na 1\n",
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\",} 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"\\q\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na one\n",
        "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\nb 1\na 1\n",
        "# HELP a A.\n# TYPE a wobble\na 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad}");
    }
}

/// Each family in `names` is present.
fn expect(who: &str, got: &std::collections::BTreeMap<String, ParsedFamily>, names: &[&str]) {
    for n in names {
        assert!(got.contains_key(*n), "{who}: no family {n}");
    }
}

fn samples<'a>(
    got: &'a std::collections::BTreeMap<String, ParsedFamily>,
    family: &str,
) -> &'a [(String, std::collections::BTreeMap<String, String>, f64)] {
    got.get(family).map_or(&[], |f| &f.samples)
}

/// A datagram to 127.0.0.1:`port` and its echo (a few tries: bounded).
fn udp_echoed(port: u16) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    (0..20).any(|_| {
        s.send_to(b"ping", ("127.0.0.1", port)).is_ok()
            && s.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"ping")
    })
}

#[test]
fn server_agent_and_access_metrics_are_valid_prometheus_text() {
    let echo = echo_service();
    let dns = udp_echo();
    let dir = TempDir::new("metrics-text");
    let tokens = dir.join("tokens.toml");
    let agent_token = dir.join("agent.token");
    std::fs::write(&agent_token, new_token(&tokens, "agent")).unwrap();
    let access_token = dir.join("access.token");
    std::fs::write(
        &access_token,
        new_token_with(&tokens, "alice", &["--access", "echo"]),
    )
    .unwrap();

    let server_admin = free_port();
    let (server, port) = start_server(
        &tokens,
        &[
            "--insecure-plain",
            "--admin",
            &format!("127.0.0.1:{server_admin}"),
        ],
    );
    let agent_admin = free_port();
    let mut args = agent_args(port, &agent_token, &format!("echo=tcp://127.0.0.1:{echo}"));
    args.extend([
        "--expose".into(),
        format!("dns=udp://127.0.0.1:{dns}"),
        // A service whose target refuses every connection (nothing may bind port 1).
        "--expose".into(),
        "down=tcp://127.0.0.1:1".into(),
        "--heartbeat-interval".into(),
        "1".into(),
        "--admin".into(),
        format!("127.0.0.1:{agent_admin}"),
    ]);
    let (mut agent, public) = start_agent(&args, "echo");
    let dns_public = public_port_of(&mut agent, "dns", 0);
    let down_public = public_port_of(&mut agent, "down", 0);
    assert!(
        echo_round_trip(down_public, b"nobody").map_or(true, |got| got.is_empty()),
        "a refused target's client is closed"
    );
    assert_eq!(echo_round_trip(public, b"hello").unwrap(), b"hello");
    assert!(udp_echoed(dns_public), "no UDP echo through the tunnel");

    let access_admin = free_port();
    let mut access = Proc::spawn(
        "culvert access",
        culvert()
            .args(["access", "echo", "--listen", "127.0.0.1"])
            .args(["--admin", &format!("127.0.0.1:{access_admin}")])
            .args([
                "--server",
                &format!("ws://127.0.0.1:{port}"),
                "--token-file",
            ])
            .arg(&access_token),
    );
    let local = access_port(&mut access, "echo");
    assert_eq!(
        echo_round_trip(local, b"through access").unwrap(),
        b"through access",
        "--- access:\n{}\n--- server:\n{}",
        access.log(),
        server.log()
    );

    let scrape = |admin: u16| {
        admin_get(admin, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    // The server: every family the README names, the open latency observed, UDP counted.
    assert!(
        poll_until(WAIT, || {
            let body = scrape(server_admin);
            parse_exposition(&body).is_ok_and(|f| {
                samples(&f, "culvert_stream_open_seconds")
                    .iter()
                    .any(|(n, _, v)| n.ends_with("_count") && *v >= 1.0)
                    && samples(&f, "culvert_udp_datagrams_total")
                        .iter()
                        .any(|(_, l, v)| l.get("direction").is_some_and(|d| d == "in") && *v >= 1.0)
            })
        }),
        "server metrics without the open latency or UDP:\n{}",
        scrape(server_admin)
    );
    let server_families = assert_exposition("server", &scrape(server_admin));
    expect(
        "server",
        &server_families,
        &[
            "culvert_agent_sessions",
            "culvert_agent_connections",
            "culvert_agent_connections_suspect",
            "culvert_streams_open",
            "culvert_streams_opened_total",
            "culvert_tunnel_stream_bytes_total",
            "culvert_service_bytes_total",
            "culvert_service_connections_total",
            "culvert_heartbeat_rtt_seconds",
            "culvert_auth_failures_total",
            "culvert_auth_lockouts_total",
            "culvert_auth_locked_refusals_total",
            "culvert_auth_locked_out",
            "culvert_handshakes_in_progress",
            "culvert_handshakes_shed_total",
            "culvert_handshakes_failed_total",
            "culvert_connections_limited_total",
            "culvert_reload_withdrawals_total",
            "culvert_quota_refusals_total",
            "culvert_quota_held",
            "culvert_ports_in_use",
            "culvert_ports_total",
            "culvert_udp_flows",
            "culvert_udp_datagrams_total",
            "culvert_udp_dropped_total",
            "culvert_udp_flows_evicted_total",
            "culvert_udp_delivery_dropped_total",
            "culvert_datagrams_dropped_total",
            "culvert_streams_lingered_out_total",
            "culvert_stream_open_seconds",
        ],
    );
    assert_eq!(
        server_families["culvert_stream_open_seconds"].kind,
        "histogram"
    );
    let labels_of = |f: &str| -> Vec<_> {
        samples(&server_families, f)
            .iter()
            .map(|(_, l, _)| l.clone())
            .collect()
    };
    assert!(
        labels_of("culvert_service_bytes_total").iter().any(|l| {
            l.get("service").is_some_and(|s| s == "echo")
                && l.get("token").is_some_and(|t| t == "agent")
                && l.contains_key("direction")
        }),
        "service, token and direction labels: {:?}",
        labels_of("culvert_service_bytes_total")
    );

    // The agent.
    let agent_families = assert_exposition("agent", &scrape(agent_admin));
    expect(
        "agent",
        &agent_families,
        &[
            "culvert_agent_connections_up",
            "culvert_agent_connections_suspect",
            "culvert_agent_pool_size",
            "culvert_agent_server_connections",
            "culvert_agent_ready",
            "culvert_agent_connection_failures_total",
            "culvert_agent_service_public_port",
            "culvert_agent_service_connections_open",
            "culvert_agent_service_connections_total",
            "culvert_agent_service_bytes_total",
            "culvert_agent_service_dial_failures_total",
            "culvert_agent_service_target_up",
            "culvert_agent_http_requests_total",
            "culvert_agent_http_retries_total",
            "culvert_agent_http_backend_connections_total",
            "culvert_streams_open",
            "culvert_streams_opened_total",
            "culvert_tunnel_stream_bytes_total",
            "culvert_heartbeat_rtt_seconds",
            "culvert_datagrams_dropped_total",
            "culvert_udp_delivery_dropped_total",
            "culvert_streams_lingered_out_total",
        ],
    );
    let ports: Vec<(String, f64)> = samples(&agent_families, "culvert_agent_service_public_port")
        .iter()
        .map(|(_, l, v)| (l["service"].clone(), *v))
        .collect();
    assert!(
        ports.contains(&("echo".into(), f64::from(public)))
            && ports.contains(&("dns".into(), f64::from(dns_public))),
        "{ports:?}"
    );
    // Per service: the echo's connections and bytes each way, the UDP service's flow.
    let per_service = |family: &str, service: &str, direction: Option<&str>| -> f64 {
        samples(&agent_families, family)
            .iter()
            .filter(|(_, l, _)| {
                l.get("service").is_some_and(|s| s == service)
                    && direction.is_none_or(|d| l.get("direction").is_some_and(|v| v == d))
            })
            .map(|(_, _, v)| *v)
            .sum()
    };
    // A target that refuses shows as down and counts the failed dial; one that answers as up.
    let up_of = |service: &str| per_service("culvert_agent_service_target_up", service, None);
    assert_eq!(
        (up_of("echo"), up_of("down")),
        (1.0, 0.0),
        "{:?}",
        samples(&agent_families, "culvert_agent_service_target_up")
    );
    for (family, service, direction) in [
        ("culvert_agent_service_dial_failures_total", "down", None),
        ("culvert_agent_service_connections_total", "echo", None),
        ("culvert_agent_service_connections_total", "dns", None),
        ("culvert_agent_service_bytes_total", "echo", Some("up")),
        ("culvert_agent_service_bytes_total", "echo", Some("down")),
        ("culvert_agent_service_bytes_total", "dns", Some("down")),
    ] {
        assert!(
            per_service(family, service, direction) >= 1.0,
            "{family} {service} {direction:?}: {:?}",
            samples(&agent_families, family)
        );
    }

    // `culvert access`.
    assert!(
        poll_until(WAIT, || {
            parse_exposition(&scrape(access_admin)).is_ok_and(|f| {
                samples(&f, "culvert_access_bytes_up_total")
                    .iter()
                    .any(|(_, l, v)| l.get("service").is_some_and(|s| s == "echo") && *v >= 14.0)
            })
        }),
        "access metrics without the session's bytes:\n{}",
        scrape(access_admin)
    );
    let access_families = assert_exposition("access", &scrape(access_admin));
    expect(
        "access",
        &access_families,
        &[
            "culvert_access_open_connections",
            "culvert_access_bytes_up_total",
            "culvert_access_bytes_down_total",
            "culvert_access_remaining_seconds",
        ],
    );
}
