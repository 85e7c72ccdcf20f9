//! A plain zlayer-tunnel v1 agent (the published crate's `TunnelAgent`, which sends Auth
//! without Culvert's extension and reads only the first frame of each WebSocket message)
//! authenticates, registers its services and answers heartbeats against a Culvert server.

use std::time::Duration;

use culvert_server::{Server, ServerConfig, TokenStore};
use zlayer_tunnel::client::{ControlEvent, TunnelAgent};
use zlayer_tunnel::config::{ServiceConfig, TunnelClientConfig};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlayer_v1_agent_authenticates_registers_and_answers_heartbeats() {
    let token = "cvt_v1-compat-test-token";
    // A block of ports held by this process alone, as every test server takes one.
    let range = support::port_range();
    let requested = range.start + 50;
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), range);
    config.public_bind = "127.0.0.1".parse().unwrap();
    // Fast heartbeats: a peer that did not answer would be dropped after 600 ms.
    config.proto.heartbeat_interval = Duration::from_millis(300);
    config.proto.idle_timeout = Duration::from_millis(600);
    let server = Server::bind(config, TokenStore::from_tokens(&[("v1", token)]), None)
        .await
        .unwrap()
        .spawn()
        .unwrap();

    let mut client = TunnelClientConfig::new(format!("ws://{}/tunnel/v1", server.addr), token);
    client.services.push(ServiceConfig::tcp("ssh", 22));
    client
        .services
        .push(ServiceConfig::tcp("web", 80).with_remote_port(requested));
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let agent = TunnelAgent::new(client).with_event_channel(tx);
    let run = tokio::spawn(async move { agent.run_once().await });

    let mut authenticated = false;
    let mut registered = Vec::new();
    let mut heartbeats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while heartbeats < 5 {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("v1 agent events within 20 s")
            .expect("event channel open");
        match ev {
            ControlEvent::Authenticated { .. } => authenticated = true,
            ControlEvent::ServiceRegistered { name, .. } => registered.push(name),
            ControlEvent::ServiceFailed { name, reason } => panic!("{name} refused: {reason}"),
            ControlEvent::Heartbeat { .. } => heartbeats += 1,
            ControlEvent::Disconnected { reason } => panic!("disconnected: {reason}"),
            _ => {}
        }
    }
    assert!(authenticated);
    registered.sort();
    assert_eq!(registered, ["ssh", "web"]);
    // Five heartbeats at 300 ms spans more than the 600 ms idle timeout several times over:
    // the session is alive only because the v1 agent's acks decode on our side.
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 1, "one live session");
    assert!(
        !sessions[0].culvert,
        "recognised as a zlayer-tunnel v1 agent"
    );
    let ports = server.ports();
    assert_eq!(
        ports.get("v1/web"),
        Some(&requested),
        "requested port honoured"
    );
    assert!(ports.get("v1/ssh").is_some_and(|p| range.contains(*p)));
    assert!(!run.is_finished(), "agent still connected");
    run.abort();

    // A v1 agent with a wrong token gets the same AuthFail answer.
    let bad = TunnelAgent::new(TunnelClientConfig::new(
        format!("ws://{}/tunnel/v1", server.addr),
        "cvt_wrong",
    ));
    let err = tokio::time::timeout(Duration::from_secs(10), bad.run_once())
        .await
        .expect("answered within 10 s")
        .expect_err("wrong token refused");
    assert!(err.to_string().contains("authentication failed"), "{err}");
}
