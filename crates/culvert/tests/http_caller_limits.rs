//! The HTTP ingress holds at most so many caller connections, in all and per address: a
//! caller past a limit is closed at once and counted, the callers already held keep being
//! served, and a freed place is taken again. A real server on loopback; callers come from
//! several loopback addresses.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use support::http::*;
use support::*;

/// A caller connection from `source` (a loopback address) to `to`.
fn caller_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = connect_from(source, to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn refused(admin: u16, limit: &str) -> Option<u64> {
    let (_, body) = admin_get(admin, "/metrics")?;
    metric(
        &body,
        &format!("culvert_http_connections_refused_total{{limit=\"{limit}\"}}"),
    )
}

#[test]
fn callers_past_the_ingress_limits_are_closed_and_the_held_ones_keep_being_served() {
    let dir = TempDir::new("http-caller-limits");
    let (tokens, _, _) = acme_tokens(dir.path(), ACME_CALLER);
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = free_port();
    let (mut server, _) = start_server(
        &tokens,
        &[
            "--insecure-plain",
            "--http-listen",
            &http.to_string(),
            "--http-max-connections",
            "4",
            "--http-max-connections-per-address",
            "2",
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ],
    );
    server
        .try_wait_line("http ingress ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (a, b, c) = (
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
    );

    // Two from a: both served; a third from a is closed at its address's limit.
    let mut held = vec![caller_from(a, http), caller_from(a, http)];
    for s in &mut held {
        assert!(ingress_answers(s), "a caller within the limits is served");
    }
    assert!(
        !ingress_answers(&mut caller_from(a, http)),
        "a third connection from one address is closed"
    );
    // Two from b fill the total; one from c is closed at the total.
    held.push(caller_from(b, http));
    held.push(caller_from(b, http));
    for s in &mut held[2..] {
        assert!(ingress_answers(s), "another address has its own share");
    }
    assert!(
        !ingress_answers(&mut caller_from(c, http)),
        "a fifth connection is closed at the total"
    );
    assert_eq!(
        (refused(admin, "per_address"), refused(admin, "total")),
        (Some(1), Some(1)),
        "{}",
        admin_get(admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    );

    // The held callers are still served; when one leaves, c gets its place.
    for s in &mut held {
        assert!(ingress_answers(s), "a held caller keeps being served");
    }
    held.remove(0);
    assert!(
        poll_until(WAIT, || ingress_answers(&mut caller_from(c, http))),
        "a freed place is taken again"
    );
    server.kill();
}
