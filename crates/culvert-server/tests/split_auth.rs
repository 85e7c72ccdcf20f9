//! An Auth that reaches the server in pieces (a slow link, a proxy that re-segments, a
//! client that writes its WebSocket frame in two calls) is gathered and accepted, not
//! counted as a failed login. On the server before this test, the first piece alone was
//! judged: the agent got AuthFail and its address a failure towards the lockout.

use std::time::Duration;

use bytes::BytesMut;
use culvert_proto::control::AuthExt;
use culvert_proto::{Control, FrameType, Header, Token, HEADER_LEN};
use culvert_server::{PortRange, Server, ServerConfig, TokenStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "split-auth-test-token";

/// The upgrade request of a WebSocket client, read up to the end of the 101 answer.
async fn upgrade(tcp: &mut TcpStream) {
    tcp.write_all(
        b"GET /tunnel/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert!(got.len() < 4096, "no end of the upgrade answer");
        assert_eq!(
            tcp.read(&mut b).await.unwrap(),
            1,
            "server closed during upgrade"
        );
        got.push(b[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// The Auth frame in one masked (all-zero key) binary WebSocket frame.
fn auth_ws_frame() -> Vec<u8> {
    let mut b = BytesMut::new();
    Control::Auth {
        token: Token(TOKEN.into()),
        client_id: uuid::Uuid::new_v4(),
        ext: Some(AuthExt {
            version: culvert_proto::control::CULVERT_VERSION,
            capabilities: 0,
        }),
    }
    .encode(&mut b)
    .unwrap();
    assert!(b.len() < 126);
    let mut f = vec![0x82, 0x80 | b.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(&b);
    f
}

/// The type of the first Culvert frame the server sends (in an unmasked WebSocket frame).
async fn first_reply(tcp: &mut TcpStream) -> FrameType {
    let mut h = [0u8; 2];
    tcp.read_exact(&mut h).await.unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            tcp.read_exact(&mut l).await.unwrap();
            usize::from(u16::from_be_bytes(l))
        }
        n => usize::from(n),
    };
    assert!(len >= HEADER_LEN);
    let mut p = vec![0u8; len];
    tcp.read_exact(&mut p).await.unwrap();
    Header::parse(p[..HEADER_LEN].try_into().unwrap())
        .unwrap()
        .ty
}

#[tokio::test]
async fn an_auth_split_across_reads_is_accepted_and_not_a_failure() {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        PortRange {
            start: 40_000,
            end: 40_010,
        },
    );
    let server = Server::bind(config, TokenStore::from_tokens(&[("a", TOKEN)]), None)
        .await
        .unwrap()
        .spawn()
        .unwrap();
    let frame = auth_ws_frame();
    // Three pieces: inside the WebSocket header, inside the Culvert header, the rest.
    for cuts in [[3usize, 9], [6 + 2, 6 + HEADER_LEN + 4]] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        upgrade(&mut tcp).await;
        let mut at = 0;
        for cut in cuts.into_iter().chain([frame.len()]) {
            tcp.write_all(&frame[at..cut]).await.unwrap();
            tcp.flush().await.unwrap();
            at = cut;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reply = tokio::time::timeout(Duration::from_secs(5), first_reply(&mut tcp))
            .await
            .expect("a reply to the Auth");
        assert_eq!(reply, FrameType::AuthOk, "pieces cut at {cuts:?}");
    }
    // Two WebSocket frames of one message: a binary frame without FIN, then its continuation.
    let payload = &frame[6..];
    let cut = HEADER_LEN + 3;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    upgrade(&mut tcp).await;
    let mut two = vec![0x02, 0x80 | cut as u8, 0, 0, 0, 0];
    two.extend_from_slice(&payload[..cut]);
    two.extend_from_slice(&[0x80, 0x80 | (payload.len() - cut) as u8, 0, 0, 0, 0]);
    two.extend_from_slice(&payload[cut..]);
    tcp.write_all(&two).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), first_reply(&mut tcp))
        .await
        .expect("a reply to the Auth");
    assert_eq!(reply, FrameType::AuthOk, "Auth in two WebSocket frames");

    let metrics = server.metrics();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("culvert_auth_failures_total"))
        .unwrap();
    assert_eq!(failures, "culvert_auth_failures_total 0");
}
