//! Counters summed over a process's tunnel connections (streams opened, stream payload
//! bytes, datagram queue drops, streams lingered out) never fall when a connection ends:
//! Prometheus reads a fall as a restart and counts what remains as new, so a dashboard's
//! `rate()` jumps. The server and the agent summed their live connections only, so each
//! lost connection took its figures with it.

mod support;

use support::faults::*;
use support::*;

/// Samples that count over all of a process's connections.
const COUNTERS: [&str; 3] = [
    "culvert_streams_opened_total",
    "culvert_tunnel_stream_bytes_total{direction=\"sent\"}",
    "culvert_tunnel_stream_bytes_total{direction=\"received\"}",
];

fn counters(who: &str, admin: u16) -> Vec<u64> {
    let body = admin_get(admin, "/metrics")
        .unwrap_or_else(|| panic!("{who}: no metrics"))
        .1;
    COUNTERS
        .iter()
        .map(|c| metric(&body, c).unwrap_or_else(|| panic!("{who}: no {c} in:\n{body}")))
        .collect()
}

/// `n` echo round trips of 1,000 bytes each through `port`, each on a new connection.
fn traffic(port: u16, n: u8) {
    for i in 0..n {
        assert_eq!(echo_round_trip(port, &[i; 1000]).unwrap(), vec![i; 1000]);
    }
}

#[test]
fn counters_over_connections_do_not_fall_when_connections_end() {
    let echo = echo_service();
    let t = TunnelSpec::new(2, 2)
        .service("echo", echo)
        .start("metrics-counters");
    traffic(t.public("echo"), 10);
    let who = [("server", t.server_admin), ("agent", t.agent_admin)];
    let before: Vec<Vec<u64>> = who.iter().map(|(w, a)| counters(w, *a)).collect();
    for ((w, _), b) in who.iter().zip(&before) {
        assert!(b[0] >= 10 && b[1] >= 10_000 && b[2] >= 10_000, "{w}: {b:?}");
    }

    // Both pooled connections end (the relay resets them); the agent dials new ones.
    assert_eq!(t.relay().cut_rst(), 2);
    t.wait_healthy(WAIT);
    let after: Vec<Vec<u64>> = who.iter().map(|(w, a)| counters(w, *a)).collect();
    for (((w, _), b), a) in who.iter().zip(&before).zip(&after) {
        for ((name, b), a) in COUNTERS.iter().zip(b).zip(a) {
            assert!(
                a >= b,
                "{w}: {name} fell from {b} to {a} when its connections ended"
            );
        }
    }

    // And they go on counting on the new connections.
    traffic(t.public("echo"), 5);
    for ((w, admin), a) in who.iter().zip(&after) {
        let now = counters(w, *admin);
        assert!(now[0] >= a[0] + 5, "{w}: streams {a:?} then {now:?}");
    }
}
