//! UDP flows through a real tunnel on loopback: idle flows are evicted and rebuilt; a flow
//! whose target never answers is kept while its client keeps sending; the per-service flow
//! cap holds under a flood of 500 new source ports while a client that already had a flow
//! keeps working (clients only ever hear from the public port); oversize datagrams are
//! dropped and counted.
//!
//! The harness (server and agent in process on plain `ws://` 127.0.0.1, recording UDP
//! backends) is in `support/udp.rs`. `RUST_LOG=culvert_server=debug,culvert_agent=debug`
//! shows the tunnel's logs. Every wait has a timeout and every loop a bound; nothing
//! asserts on timing.

mod support;

use std::collections::HashSet;

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::udp::*;

// ---------------------------------------------------------------------------------------
// Idle eviction
// ---------------------------------------------------------------------------------------

/// With a 2 s idle timeout on server and agent, a flow that goes quiet is evicted (and
/// counted); the next datagram from the same client builds a new flow that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flow_is_evicted_and_rebuilt_by_the_next_datagram() {
    const IDLE: Duration = Duration::from_secs(2);
    let backend = Backend::spawn(true).await;
    let tunnel = start_server(|c| c.udp_idle_timeout = IDLE).await;
    let mut config = tunnel.agent_config(&[("svc", backend.addr)]);
    config.udp_idle_timeout = IDLE;
    let agent = tunnel.agent(config).await;
    let public = public_addr(&agent, "svc");
    let counters = tunnel.counters("svc");

    let client = client_socket().await;
    roundtrip(&client, public, b"idle:", b"idle:1", 3)
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", show(&counters)));
    assert_eq!(tunnel.server.udp_flows("udp-e2e/svc"), Some(1));
    assert_eq!(counters.flows_created.load(Ordering::Relaxed), 1);
    assert_eq!(counters.flows_evicted.load(Ordering::Relaxed), 0);

    wait_until(WAIT, "the idle flow to be evicted", || {
        tunnel.server.udp_flows("udp-e2e/svc") == Some(0)
    })
    .await;
    assert_eq!(
        counters.flows_evicted.load(Ordering::Relaxed),
        1,
        "{}",
        show(&counters)
    );

    roundtrip(&client, public, b"idle:", b"idle:2", 3)
        .await
        .unwrap_or_else(|e| panic!("after eviction: {e}; {}", show(&counters)));
    assert_eq!(tunnel.server.udp_flows("udp-e2e/svc"), Some(1));
    assert_eq!(
        counters.flows_created.load(Ordering::Relaxed),
        2,
        "{}",
        show(&counters)
    );
    println!("udp idle: {}", show(&counters));
}

/// A flow whose target never answers (syslog-like, one way) stays open while its client
/// keeps sending: 30 datagrams, one every 200 ms (three idle timeouts), all reach the
/// target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_flow_stays_open_while_its_client_keeps_sending() {
    const IDLE: Duration = Duration::from_secs(2);
    const COUNT: usize = 30;
    let sink = Backend::spawn(false).await;
    let tunnel = start_server(|c| c.udp_idle_timeout = IDLE).await;
    let mut config = tunnel.agent_config(&[("log", sink.addr)]);
    config.udp_idle_timeout = IDLE;
    let agent = tunnel.agent(config).await;
    let public = public_addr(&agent, "log");
    let counters = tunnel.counters("log");

    let client = client_socket().await;
    for i in 0..COUNT {
        client
            .send_to(format!("<14>one-way {i}").as_bytes(), public)
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The server's flow stayed active (the client sent every 200 ms).
    let evicted = counters.flows_evicted.load(Ordering::Relaxed);
    // Wait for the last ones to arrive (bounded), then compare.
    let deadline = Instant::now() + QUIET;
    while sink.received() < COUNT && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<String> = sink
        .log()
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    println!(
        "udp one-way: target received {} of {COUNT} from {} agent socket(s); {}",
        got.len(),
        sink.sources().len(),
        show(&counters)
    );
    assert_eq!(
        got.len(),
        COUNT,
        "datagrams of an active one-way flow were lost (received: {got:?}); {}",
        show(&counters)
    );
    assert_eq!(evicted, 0, "the server evicted an active flow");
}

// ---------------------------------------------------------------------------------------
// Flow cap under a flood of new source ports
// ---------------------------------------------------------------------------------------

/// With 32 flows per service, 500 new client sockets flood the public port. The server
/// never holds more than 32 flows, counts the drops, and a client that already had a flow
/// keeps getting replies during and after the flood. Every client hears only from the
/// public port and only its own datagram; the target hears only from the agent's flows
/// (at most 32 sockets, one per flow) and only datagrams clients sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_cap_holds_under_a_flood_and_an_existing_client_keeps_working() {
    const CAP: usize = 32;
    const FLOOD: usize = 500;
    let backend = Backend::spawn(true).await;
    let tunnel = Arc::new(start_server(|c| c.udp_max_flows_per_service = CAP).await);
    let agent = tunnel
        .agent(tunnel.agent_config(&[("svc", backend.addr)]))
        .await;
    let public = public_addr(&agent, "svc");
    let counters = tunnel.counters("svc");

    let legit = Arc::new(client_socket().await);
    roundtrip(&legit, public, b"legit:", b"legit:0", 3)
        .await
        .unwrap_or_else(|e| panic!("before the flood: {e}"));

    // Watch the flow count all along.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn({
        let tunnel = tunnel.clone();
        let stop = stop.clone();
        async move {
            let mut max = 0;
            let deadline = Instant::now() + WAIT * 4;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                max = max.max(tunnel.server.udp_flows("udp-e2e/svc").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        }
    });
    // The legitimate client pings all through the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let pinger = tokio::spawn({
        let legit = legit.clone();
        let flooding = flooding.clone();
        async move {
            let (mut pings, mut resends) = (0u32, 0u32);
            let deadline = Instant::now() + WAIT * 4;
            while flooding.load(Ordering::SeqCst) && Instant::now() < deadline {
                pings += 1;
                let p = format!("legit:{pings}");
                resends += roundtrip(&legit, public, b"legit:", p.as_bytes(), 3).await? - 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, String>((pings, resends))
        }
    });

    // The flood: 500 sockets, each sending one datagram, 50 at a time.
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        flood.push(Arc::new(client_socket().await));
        if i % 50 == 49 {
            for (j, s) in flood.iter().enumerate().skip(i - 49) {
                s.send_to(format!("flood:{j}").as_bytes(), public)
                    .await
                    .expect("flood send");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A few more pings after the last flood datagram, then stop the pinger.
    tokio::time::sleep(Duration::from_millis(200)).await;
    flooding.store(false, Ordering::SeqCst);
    let (pings, resends) = within(WAIT * 5, "the pinger", pinger)
        .await
        .expect("pinger task")
        .unwrap_or_else(|e| {
            panic!(
                "legitimate client during the flood: {e}; {}",
                show(&counters)
            )
        });

    // Flood sockets that got a flow get their one reply; the others get nothing.
    let flood_flows = counters.flows_created.load(Ordering::Relaxed) as usize - 1;
    let mut answered = Vec::new();
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + WAIT;
    // Bounded: at most 20 passes over the 500 sockets, then by the deadline.
    for _pass in 0..20 {
        for (j, s) in flood.iter().enumerate() {
            // Bounded: a socket holding more than 4 datagrams already failed the check.
            for _ in 0..4 {
                match s.try_recv_from(&mut buf) {
                    Ok((n, from)) => {
                        assert_eq!(from, public, "flood socket {j} heard from {from}");
                        assert_eq!(
                            &buf[..n],
                            format!("flood:{j}").as_bytes(),
                            "flood socket {j} got someone else's datagram"
                        );
                        answered.push(j);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("flood socket {j}: {e}"),
                }
            }
        }
        if answered.len() >= flood_flows || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let max_flows = within(WAIT, "the monitor", monitor)
        .await
        .expect("monitor task");

    // After the flood: the legitimate client still works.
    for k in 0..20 {
        let p = format!("legit:after:{k}");
        roundtrip(&legit, public, b"legit:", p.as_bytes(), 3)
            .await
            .unwrap_or_else(|e| panic!("legitimate client after the flood: {e}"));
    }

    let dropped = counters.dropped_flow_cap.load(Ordering::Relaxed) as usize;
    let log = backend.log();
    let sources = backend.sources();
    let legit_sources: HashSet<SocketAddr> = log
        .iter()
        .filter(|(_, d)| d.starts_with(b"legit:"))
        .map(|(a, _)| *a)
        .collect();
    println!(
        "udp flood: {FLOOD} new ports, cap {CAP}: max flows seen {max_flows}, flood flows \
         {flood_flows}, flood sockets answered {}, dropped_flow_cap {dropped}; legit pings \
         during the flood {pings} (resends {resends}); target saw {} sources; {}",
        answered.len(),
        sources.len(),
        show(&counters)
    );
    assert!(max_flows <= CAP, "{max_flows} flows open, cap {CAP}");
    assert_eq!(tunnel.flows("svc"), CAP, "the cap should be full");
    assert!(dropped > 0, "no datagram dropped for the flow cap");
    assert_eq!(
        dropped,
        FLOOD - flood_flows,
        "each capped flood socket sent one datagram"
    );
    assert!(
        pings > 0,
        "the legitimate client never pinged during the flood"
    );
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(
        answered.len(),
        flood_flows,
        "one reply per flood socket that got a flow"
    );
    // The target heard only from the agent's flows: one socket per server flow, on
    // loopback, carrying only datagrams that clients sent.
    assert!(sources.len() <= CAP, "target saw {} sources", sources.len());
    assert_eq!(
        sources.len() as u64,
        counters.flows_created.load(Ordering::Relaxed)
    );
    assert!(sources.iter().all(|a| a.ip() == Ipv4Addr::LOCALHOST));
    for (from, d) in &log {
        let ok = d.starts_with(b"legit:")
            || std::str::from_utf8(d)
                .ok()
                .and_then(|s| s.strip_prefix("flood:"))
                .and_then(|j| j.parse::<usize>().ok())
                .is_some_and(|j| answered.binary_search(&j).is_ok());
        assert!(
            ok,
            "target got {d:?} from {from}, which no flowed client sent"
        );
    }
    assert_eq!(
        legit_sources.len(),
        1,
        "the legitimate client's flow was rebuilt: {legit_sources:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Oversize datagrams
// ---------------------------------------------------------------------------------------

/// With `udp_max_datagram = 1200`: 1,500 and 1,201 bytes are dropped and counted, 1,000 and
/// 1,200 bytes come back, in order, and nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_datagrams_are_dropped_and_counted() {
    let backend = Backend::spawn(true).await;
    let tunnel = start_server(|c| c.udp_max_datagram = 1200).await;
    let agent = tunnel
        .agent(tunnel.agent_config(&[("svc", backend.addr)]))
        .await;
    let public = public_addr(&agent, "svc");
    let counters = tunnel.counters("svc");

    let client = client_socket().await;
    let sized = |len: usize, tag: u8| vec![tag; len];
    // The flow exists first, so nothing below depends on its setup.
    roundtrip(&client, public, b"", &sized(10, b'w'), 3)
        .await
        .unwrap_or_else(|e| panic!("warm-up: {e}"));
    for (len, tag) in [(1500, b'a'), (1201, b'b'), (1000, b'c'), (1200, b'd')] {
        client
            .send_to(&sized(len, tag), public)
            .await
            .expect("send");
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    // Bounded: the two expected replies, then a quiet second to catch anything extra.
    for _ in 0..8 {
        let limit = if got.len() < 2 {
            WAIT
        } else {
            Duration::from_secs(1)
        };
        match tokio::time::timeout(limit, client.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                assert_eq!(from, public);
                got.push((n, buf[0]));
            }
            Ok(Err(e)) => panic!("recv: {e}"),
            Err(_) => break,
        }
    }
    println!("udp oversize: replies {got:?}; {}", show(&counters));
    assert_eq!(got, vec![(1000, b'c'), (1200, b'd')], "{}", show(&counters));
    assert_eq!(counters.dropped_oversize.load(Ordering::Relaxed), 2);
    assert!(
        backend
            .log()
            .iter()
            .all(|(_, d)| d[0] != b'a' && d[0] != b'b'),
        "an oversize datagram reached the target"
    );
}
