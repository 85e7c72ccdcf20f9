//! The library facade in one process: a `Server`, an `Agent` exposing a private echo
//! service and a `Client` reaching it, all on loopback with plain `ws://`. Checks what an
//! embedding program relies on: a stream that echoes byte for byte with half-close, typed
//! refusals, readiness changes and the `Direct` fallback while the tunnel is down.

use std::time::Duration;

use culvert::{Agent, Client, Error, Fallback, ResetReason, Server, TokenStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(30);

/// A TCP echo service on loopback; its address.
async fn echo_service() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Writes `msg`, half-closes, and reads the whole answer.
async fn round_trip(
    mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn client_reaches_a_private_service_and_falls_back_when_the_tunnel_is_down() {
    let echo = echo_service().await;
    // One token of tenant `acme` (an entry without a tenant is its own name's), holding
    // every role: the agent registers with it, the client reaches acme's services with it.
    let tokens = TokenStore::from_tokens(&[("acme", "acme-secret")]);
    // Only private services: the public range is never used.
    let server = Server::builder("127.0.0.1:0".parse().unwrap(), 40000..=40000)
        .tokens(tokens)
        .public_bind([127, 0, 0, 1].into())
        .spawn()
        .await
        .unwrap();
    let url = server.url();
    let agent = Agent::builder(&url, "acme-secret")
        .service(&format!("echo=tcp://{echo}?private"))
        .unwrap()
        .pool(1)
        .spawn()
        .unwrap();
    assert!(agent.wait_ready(LIMIT).await, "the agent did not come up");
    let echo_status = || agent.status().services["echo"].clone();
    assert_eq!(echo_status().public_port, None);
    assert_eq!(echo_status().target_reachable, None, "no dial yet");

    let client = tokio::time::timeout(
        LIMIT,
        Client::builder(&url, "acme-secret")
            .pool(1)
            .fallback("echo", Fallback::Direct(echo.to_string()))
            .connect(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(client.is_ready());

    // Through the tunnel, byte for byte, with half-close.
    let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let s = client.open("echo").await.unwrap();
    assert!(!s.is_direct());
    let got = tokio::time::timeout(LIMIT, round_trip(s, &msg))
        .await
        .unwrap()
        .unwrap();
    assert!(got == msg, "echo through the tunnel differs");
    assert_eq!(
        (echo_status().target_reachable, echo_status().dial_failures),
        (Some(true), 0),
        "the agent's dial reached the echo"
    );
    // The service named with its tenant.
    let s = client.open("acme/echo").await.unwrap();
    let got = tokio::time::timeout(LIMIT, round_trip(s, b"tenant"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"tenant");

    // Refusals are typed: a bad name at once, an unknown service as the stream's reset.
    assert!(matches!(
        client.open("not:a-name").await,
        Err(Error::InvalidService(_))
    ));
    let s = client.open("nosuch").await.unwrap();
    let e = tokio::time::timeout(LIMIT, round_trip(s, b"x"))
        .await
        .unwrap()
        .expect_err("an unknown service must be refused");
    // The server answers a name it will not confirm exists as "not allowed".
    let e = Error::from(e);
    assert!(
        matches!(e, Error::Reset(ResetReason::NotAllowed)),
        "not the not-allowed reset: {e:?}"
    );

    // The tunnel goes down: the watch says so, `echo` falls back to its direct address,
    // a service without a fallback fails at once.
    let mut watch = client.watch();
    server.shutdown(Duration::from_secs(1)).await;
    let ready = tokio::time::timeout(LIMIT, watch.changed())
        .await
        .expect("the readiness change arrives")
        .unwrap();
    assert!(!ready);
    assert!(!client.is_ready());
    let s = client.open("echo").await.unwrap();
    assert!(s.is_direct());
    let got = tokio::time::timeout(LIMIT, round_trip(s, b"direct"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"direct");
    assert!(matches!(
        client.open("other").await,
        Err(Error::NotConnected)
    ));
    drop(agent);
}

/// An agent of two servers through the builder (`.server(url)`): with a pool of 1 it keeps
/// one connection on each, and its status names the server of each connection.
#[tokio::test]
async fn agent_spreads_over_the_servers_it_is_given() {
    let echo = echo_service().await;
    let mut servers = Vec::new();
    for _ in 0..2 {
        let tokens = TokenStore::from_tokens(&[("acme", "acme-secret")]);
        let server = Server::builder("127.0.0.1:0".parse().unwrap(), 40000..=40000)
            .tokens(tokens)
            .public_bind([127, 0, 0, 1].into())
            .spawn()
            .await
            .unwrap();
        servers.push(server);
    }
    let agent = Agent::builder(servers[0].url(), "acme-secret")
        .server(servers[1].url())
        .service(&format!("echo=tcp://{echo}?private"))
        .unwrap()
        .pool(1)
        .home_probe_interval(Some(Duration::from_secs(1)))
        .spawn()
        .unwrap();
    assert!(agent.wait_ready(LIMIT).await, "the agent did not come up");
    let status = agent.status();
    assert_eq!(status.connections_up, 2);
    let mut on: Vec<String> = status
        .connections
        .iter()
        .filter(|c| c.state == culvert::LinkState::Connected)
        .map(|c| c.server.clone())
        .collect();
    on.sort();
    let mut want: Vec<String> = servers.iter().map(|s| s.url()).collect();
    want.sort();
    assert_eq!(on, want, "{status:?}");
    for s in &servers {
        let client = tokio::time::timeout(
            LIMIT,
            Client::builder(s.url(), "acme-secret").pool(1).connect(),
        )
        .await
        .unwrap()
        .unwrap();
        let stream = client.open("echo").await.unwrap();
        let got = tokio::time::timeout(LIMIT, round_trip(stream, b"each server"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"each server");
    }
    agent.shutdown(Duration::from_secs(1)).await;
}
