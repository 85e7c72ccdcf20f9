//! UDP services across agent reconnects, on a real tunnel on loopback: a reconnecting or
//! restarted agent gets its UDP port back; the pooled connections of an agent register
//! each UDP service once (a bug found while writing these tests); UDP flows are counted per
//! token across its sessions.
//!
//! The harness (server and agent in process on plain `ws://` 127.0.0.1, recording UDP
//! backends) is in `support/udp.rs`. `RUST_LOG=culvert_server=debug,culvert_agent=debug`
//! shows the tunnel's logs. Every wait has a timeout and every loop a bound; nothing
//! asserts on timing.

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::atomic::Ordering;

use culvert_agent::Agent;

use support::udp::*;

use tokio::net::UdpSocket;

// ---------------------------------------------------------------------------------------
// Reconnect, and the registration of pooled connections
// ---------------------------------------------------------------------------------------

/// Whether a UDP socket can be bound on 127.0.0.1:`port` (it is bound, then released).
fn udp_port_free(port: u16) -> bool {
    std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Sends one datagram from `client` and waits for its echo (up to 5 tries); panics with
/// the service's counters when none comes.
async fn expect_echo(tunnel: &Tunnel, client: &UdpSocket, public: SocketAddr, what: &str) -> u32 {
    let p = format!("echo:{what}");
    roundtrip(client, public, b"echo:", p.as_bytes(), 5)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{what}: {e}; {}",
                tunnel
                    .server
                    .udp_counters("udp-e2e/echo")
                    .map(|c| show(&c))
                    .unwrap_or_default()
            )
        })
}

/// An agent is shut down; once the server has ended its session and its public UDP socket
/// is closed, a new agent (same token, same service name) starts: the service gets its
/// public port back and the same client socket, on the same public port, gets replies
/// again (its flow is rebuilt by its next datagram). Three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_agent_gets_its_udp_port_back() {
    let backend = Backend::spawn(true).await;
    let tunnel = start_server(|_| {}).await;
    let mut config = tunnel.agent_config(&[("echo", backend.addr)]);
    // One connection: with a pool, the registration race that
    // `pooled_connections_register_each_udp_service_once` shows can leave the remembered
    // port held by a leaked duplicate, and this test is about reconnecting.
    config.pool = 1;
    let mut agent = tunnel.agent(config.clone()).await;
    let public = public_addr(&agent, "echo");
    let client = client_socket().await;
    expect_echo(&tunnel, &client, public, "first agent").await;

    for round in 1..=3 {
        agent.shutdown();
        drop(agent);
        wait_until(WAIT, "the server to end the old session", || {
            tunnel.server.sessions().is_empty()
        })
        .await;
        wait_until(WAIT, "the old session's public UDP socket to close", || {
            udp_port_free(public.port())
        })
        .await;
        agent = tunnel.agent(config.clone()).await;
        assert_eq!(
            public_addr(&agent, "echo"),
            public,
            "round {round}: the service got another port"
        );
        assert_eq!(
            tunnel.server.ports().get("udp-e2e/echo"),
            Some(&public.port()),
            "round {round}: the server's view"
        );
        let tries = expect_echo(&tunnel, &client, public, &format!("round {round}")).await;
        println!("udp reconnect: round {round} answered after {tries} send(s)");
    }
}

/// As above, but the new agent starts the moment the old one is told to stop, as a real
/// agent restarting does: the server either notices the old connections closing first or
/// replaces the stale session on Register. Either way the service must get its port back
/// and the client must get replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarted_at_once_gets_its_udp_port_back() {
    let backend = Backend::spawn(true).await;
    let tunnel = start_server(|_| {}).await;
    let config = tunnel.agent_config(&[("echo", backend.addr)]);
    let spawn = || async {
        let agent = Agent::spawn(config.clone()).expect("spawn the agent");
        wait_ready(&agent, config.pool).await;
        agent
    };
    let mut agent = spawn().await;
    let public = public_addr(&agent, "echo");
    let client = client_socket().await;
    expect_echo(&tunnel, &client, public, "first agent").await;

    for round in 1..=3 {
        agent.shutdown();
        drop(agent);
        agent = spawn().await;
        assert_eq!(
            public_addr(&agent, "echo"),
            public,
            "round {round}: the service got another port (registry {:?}, sessions {:?})",
            tunnel.server.port_usage(),
            tunnel.server.sessions()
        );
        wait_until(WAIT, "the server to list the new session's port", || {
            tunnel.server.ports().get("udp-e2e/echo") == Some(&public.port())
        })
        .await;
        let tries = expect_echo(&tunnel, &client, public, &format!("round {round}")).await;
        println!("udp restart at once: round {round} answered after {tries} send(s)");
    }
}

/// Every pooled connection of an agent registers the same UDP service, at the same time:
/// the server must hold one service (one port, one service id), so that a flow works
/// whichever connection its hash picks. Thirty fresh agents with a pool of 8, 16 clients each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_register_each_udp_service_once() {
    const ROUNDS: usize = 30;
    const CLIENTS: usize = 16;
    let backend = Backend::spawn(true).await;
    for round in 0..ROUNDS {
        let tunnel = start_server(|_| {}).await;
        let mut config = tunnel.agent_config(&[("echo", backend.addr)]);
        config.pool = 8;
        let agent = Agent::spawn(config).expect("spawn the agent");
        wait_ready(&agent, 8).await;
        let public = public_addr(&agent, "echo");
        let registry = tunnel.server.port_usage();
        let sessions = tunnel.server.sessions();
        let mut dead = Vec::new();
        for c in 0..CLIENTS {
            let client = client_socket().await;
            let p = format!("echo:{round}:{c}");
            if let Err(e) = roundtrip(&client, public, b"echo:", p.as_bytes(), 2).await {
                dead.push(format!("client {c}: {e}"));
            }
        }
        assert!(
            registry.2 == 1 && dead.is_empty(),
            "round {round}: {} public UDP ports in use for one service (sessions {sessions:?}); \
             flows without replies: {dead:#?}; {}",
            registry.2,
            show(&tunnel.counters("echo"))
        );
    }
}

/// UDP flows are counted per token over all its sessions (`udp_max_flows_per_token`): two
/// agents of one token (two sessions) share 3 flows; a fourth client's datagrams are
/// dropped and counted as a token quota refusal, while the first three keep their replies.
/// On the old code each session had only its own cap, and the fourth flow got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_are_counted_per_token_across_its_sessions() {
    let backend = Backend::spawn(true).await;
    let tunnel = start_server(|c| c.udp_max_flows_per_token = 3).await;
    let a = tunnel
        .agent(tunnel.agent_config(&[("u1", backend.addr)]))
        .await;
    let b = tunnel
        .agent(tunnel.agent_config(&[("u2", backend.addr)]))
        .await;
    let (p1, p2) = (public_addr(&a, "u1"), public_addr(&b, "u2"));
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client_socket().await);
    }
    for (i, to) in [p1, p1, p2].into_iter().enumerate() {
        let owner = format!("c{i}:");
        roundtrip(
            &clients[i],
            to,
            owner.as_bytes(),
            format!("{owner}x").as_bytes(),
            3,
        )
        .await
        .unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
    let fourth = roundtrip(&clients[3], p2, b"c3:", b"c3:x", 2).await;
    assert!(fourth.is_err(), "a fourth flow of the token got through");
    assert!(
        tunnel
            .counters("u2")
            .dropped_flow_cap
            .load(Ordering::Relaxed)
            >= 1,
        "{}",
        show(&tunnel.counters("u2"))
    );
    roundtrip(&clients[0], p1, b"c0:", b"c0:y", 3)
        .await
        .unwrap_or_else(|e| panic!("an existing flow after the refusal: {e}"));
    let metrics = tunnel.server.metrics();
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("culvert_quota_refusals_total{scope=\"token\",limit=\"udp_flows\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "the refusals are counted:\n{metrics}");
}
