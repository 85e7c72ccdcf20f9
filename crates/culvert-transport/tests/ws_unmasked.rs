//! The upgrade's agreement on unmasked client frames: a Culvert server agrees and takes them,
//! a server that does not answer the header (an older Culvert, a proxy that drops it) gets
//! masked frames, and a client that does not ask keeps masking.

use bytes::Bytes;
use culvert_transport::ws::{self, UNMASKED_HEADER};
use culvert_transport::wsframe::WsIn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Duration};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const DEADLINE: Duration = Duration::from_secs(10);
/// Larger than a 16-bit frame length, so the 64-bit length form is used.
const LEN: usize = 70_000;

fn url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}{}", ws::TUNNEL_PATH)
}

/// A Culvert server and client: with `ask`, both directions carry data either way.
async fn round_trip(ask: bool) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut ws = ws::accept(tcp).await.unwrap();
        // Frames arrive in whatever pieces the socket gives: echo each piece.
        let mut echoed = 0;
        while echoed < LEN {
            let got = match ws.reader.next().await.unwrap() {
                WsIn::Data(b) => b,
                other => panic!("expected data, got {other:?}"),
            };
            let len = got.len();
            echoed += len;
            ws.writer.send(&[got], len).await.unwrap();
            ws.writer.flush().await.unwrap();
        }
        ws
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = ws::connect(tcp, &url(addr), ask).await.unwrap();
    let payload = Bytes::from(vec![0x5a; LEN]);
    c.writer
        .send(std::slice::from_ref(&payload), payload.len())
        .await
        .unwrap();
    c.writer.flush().await.unwrap();
    let mut back = Vec::new();
    while back.len() < payload.len() {
        match timeout(DEADLINE, c.reader.next()).await.unwrap().unwrap() {
            WsIn::Data(b) => back.extend_from_slice(&b),
            other => panic!("expected data, got {other:?}"),
        }
    }
    assert_eq!(back, payload);
    timeout(DEADLINE, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn culvert_server_and_client_agree_on_unmasked_frames() {
    round_trip(true).await;
}

#[tokio::test]
async fn a_client_that_does_not_ask_keeps_masking() {
    round_trip(false).await;
}

/// A hand-written server: answers the upgrade (agreeing to unmasked frames or not) and
/// returns whether the request asked for them and the second byte of the client's first
/// frame (its top bit is the mask bit).
async fn raw_server(agree: bool, ask: bool) -> (bool, u8) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            assert!(req.len() < 8192, "request too long");
            tcp.read_exact(&mut b).await.unwrap();
            req.push(b[0]);
        }
        let text = String::from_utf8(req).unwrap();
        let header = |name: &str| {
            text.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let key = header("sec-websocket-key").expect("a websocket key");
        let asked = header(UNMASKED_HEADER).as_deref() == Some("1");
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            derive_accept_key(key.as_bytes())
        );
        if agree {
            resp.push_str(&format!("{UNMASKED_HEADER}: 1\r\n"));
        }
        resp.push_str("\r\n");
        tcp.write_all(resp.as_bytes()).await.unwrap();
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.unwrap();
        (asked, head[1])
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = timeout(DEADLINE, ws::connect(tcp, &url(addr), ask))
        .await
        .unwrap()
        .unwrap();
    let p = Bytes::from_static(b"hello");
    c.writer
        .send(std::slice::from_ref(&p), p.len())
        .await
        .unwrap();
    c.writer.flush().await.unwrap();
    timeout(DEADLINE, server).await.unwrap().unwrap()
}

#[tokio::test]
async fn frames_go_unmasked_only_when_the_server_agreed() {
    let (asked, second) = raw_server(true, true).await;
    assert!(asked);
    assert_eq!(second & 0x80, 0, "agreed: the frame is unmasked");
    assert_eq!(second & 0x7f, 5);

    // An older server (or a proxy that dropped the header) does not answer it.
    let (asked, second) = raw_server(false, true).await;
    assert!(asked);
    assert_eq!(second & 0x80, 0x80, "not agreed: the frame is masked");

    // A client told to mask (`--ws-mask`) does not ask, and masks even if answered.
    let (asked, second) = raw_server(true, false).await;
    assert!(!asked);
    assert_eq!(second & 0x80, 0x80);
}
