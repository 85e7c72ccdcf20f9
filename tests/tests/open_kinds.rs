//! Protocol 2's typed stream opens against real peers on loopback (PROTOCOL.md §6.2, §7.1,
//! §8): a hand-driven server (the real transport, frames chosen here) opens an inbound
//! stream carrying the public client's address and sends no Connect, and a real agent must
//! serve it at once (PROXY header from the open's address, ConnectAck with its connection
//! id); a real agent refuses a server that does not say it speaks protocol 2; a real
//! server refuses a Culvert agent of protocol 1 with a reason that says so.

mod support;

use std::net::Ipv4Addr;
use std::time::Instant;

use bytes::Bytes;
use culvert_agent::{Agent, AgentConfig, ServiceSpec};
use culvert_proto::control::{AuthExt, AuthOkExt, RegisterOkExt, CULVERT_VERSION};
use culvert_proto::{Config, Connection, Control, Side, Target, Token};
use culvert_server::tokens::generate_token;
use culvert_server::{Server, ServerConfig, TokenStore};
use culvert_transport::ws::{self, ServerUrl};
use culvert_transport::{Mux, MuxEvent};
use support::{within, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// Accepts one agent connection on `listener` as a server speaking protocol `version`
/// (`None`: an AuthOk without Culvert's extension, as a protocol-1 server sends).
async fn accept_agent(
    listener: &TcpListener,
    version: Option<u8>,
) -> (Mux, tokio::sync::mpsc::UnboundedReceiver<MuxEvent>) {
    let (tcp, _) = listener.accept().await.expect("agent connects");
    let ws = ws::accept(tcp).await.expect("websocket upgrade");
    let (mux, mut events) = Mux::spawn(ws, Side::Server, Config::default()).expect("mux");
    match events.recv().await {
        Some(MuxEvent::Control(Control::Auth { ext, .. })) => {
            mux.control_handled();
            assert_eq!(ext.map(|e| e.version), Some(CULVERT_VERSION));
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    mux.send_control(Control::AuthOk {
        tunnel_id: Uuid::new_v4(),
        ext: version.map(|version| AuthOkExt { version }),
    })
    .expect("AuthOk");
    (mux, events)
}

/// The agent's next control message, skipping nothing else (no streams are expected).
async fn next_control(events: &mut tokio::sync::mpsc::UnboundedReceiver<MuxEvent>) -> Control {
    loop {
        match events.recv().await {
            Some(MuxEvent::Control(c)) => return c,
            Some(MuxEvent::GoingAway(_)) => {}
            other => panic!("expected a control message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_an_inbound_open_without_a_connect() {
    let backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let url = ServerUrl::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
    let spec: ServiceSpec = format!("web=tcp://{backend_addr}?proxy=v1")
        .parse()
        .unwrap();
    let mut config = AgentConfig::new(url, "token".into(), vec![spec]);
    config.pool = 1;
    let agent = Agent::spawn(config).expect("spawn the agent");

    let (mux, mut events) =
        within(WAIT, "the agent's Auth", accept_agent(&listener, Some(2))).await;
    let name = match within(WAIT, "Register", next_control(&mut events)).await {
        Control::Register { name, .. } => name,
        other => panic!("expected Register, got {other:?}"),
    };
    mux.control_handled();
    assert_eq!(name, "web");
    mux.send_control(Control::RegisterOk {
        service_id: Uuid::new_v4(),
        ext: Some(RegisterOkExt {
            assigned_port: 0,
            name,
        }),
    })
    .unwrap();

    // The open alone: no Connect follows.
    let connection_id = Uuid::new_v4();
    let stream = mux
        .open_to(Target::Inbound {
            service: "web".into(),
            connection_id,
            client_addr: "203.0.113.7:4242".into(),
        })
        .await
        .expect("open");
    stream
        .send(Bytes::from_static(b"hello"))
        .await
        .expect("send");
    stream.finish().expect("finish");

    let (mut sock, _) = within(WAIT, "the agent dialing the backend", backend.accept())
        .await
        .unwrap();
    let mut got = Vec::new();
    within(WAIT, "the backend's bytes", sock.read_to_end(&mut got))
        .await
        .unwrap();
    let text = String::from_utf8(got).unwrap();
    let (header, rest) = text.split_once("\r\n").expect("a PROXY v1 header");
    assert!(
        header.starts_with("PROXY TCP4 203.0.113.7 ") && header.contains(" 4242 "),
        "header {header:?} names the client the open carried"
    );
    assert_eq!(rest, "hello");
    match within(WAIT, "ConnectAck", next_control(&mut events)).await {
        Control::ConnectAck { connection_id: id } => assert_eq!(id, connection_id),
        other => panic!("expected ConnectAck, got {other:?}"),
    }
    agent.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_server_of_protocol_1() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let url = ServerUrl::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
    let spec: ServiceSpec = "web=tcp://127.0.0.1:9".parse().unwrap();
    let mut config = AgentConfig::new(url, "token".into(), vec![spec]);
    config.pool = 1;
    config.exit_on_auth_failure = true;
    let agent = Agent::spawn(config).expect("spawn the agent");
    let _peer = within(WAIT, "the agent's Auth", accept_agent(&listener, None)).await;
    let why = within(WAIT, "the agent giving up", agent.permanent_failure()).await;
    assert!(
        why.contains("protocol version 1") && why.contains("upgrade the server"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_a_culvert_agent_of_protocol_1_saying_why() {
    let token = generate_token();
    let mut config = ServerConfig::new((Ipv4Addr::LOCALHOST, 0).into(), support::port_range());
    config.public_bind = "127.0.0.1".parse().unwrap();
    let server = Server::bind(config, TokenStore::from_tokens(&[("n", &token)]), None)
        .await
        .expect("bind")
        .spawn()
        .expect("spawn");
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let url = format!("ws://{}{}", server.addr, ws::TUNNEL_PATH);
    let ws = ws::connect(tcp, &url, false).await.expect("upgrade");
    let mut conn = Connection::new(Side::Client, Config::default(), Instant::now()).unwrap();
    conn.send_control_first(Control::Auth {
        token: Token(token),
        client_id: Uuid::new_v4(),
        ext: Some(AuthExt {
            version: 1,
            capabilities: 0,
        }),
    })
    .unwrap();
    let (_mux, mut events) = Mux::spawn_with(ws, conn);
    match within(WAIT, "the server's answer", next_control(&mut events)).await {
        Control::AuthFail { reason } => assert!(
            reason.contains("unsupported Culvert protocol version 1"),
            "{reason}"
        ),
        other => panic!("expected AuthFail, got {other:?}"),
    }
}
