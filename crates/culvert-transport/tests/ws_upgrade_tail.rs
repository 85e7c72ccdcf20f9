//! Bytes a server sends right behind its 101 (in the same read as the HTTP head) reach the
//! client's framer: tungstenite reads the upgrade in chunks, and what it read past the head
//! used to be dropped with its buffer. A client that sends before the 101 (RFC 6455 §4.1:
//! it must wait) is refused with an error, not half-read.

use culvert_transport::ws;
use culvert_transport::wsframe::WsIn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Duration};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const DEADLINE: Duration = Duration::from_secs(10);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Reads an HTTP head byte by byte (so nothing after it is consumed).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 8192, "head too long");
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn the_server_refuses_a_frame_sent_before_the_upgrade_response() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        ws::accept(tcp).await.map(|_| ())
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut bytes = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
        ws::TUNNEL_PATH
    )
    .into_bytes();
    // A masked binary frame "hi" (mask 0), written with the request in one write.
    bytes.extend_from_slice(&[0x82, 0x82, 0, 0, 0, 0, b'h', b'i']);
    tcp.write_all(&bytes).await.unwrap();
    let r = timeout(DEADLINE, server).await.unwrap().unwrap();
    let e = r.expect_err("data before the 101 is refused");
    assert!(e.to_string().to_lowercase().contains("junk"), "{e}");
}

#[tokio::test]
async fn the_client_keeps_a_frame_sent_with_the_upgrade_response() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = l.accept().await.unwrap();
        let req = read_head(&mut tcp).await;
        let key = req
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .expect("a websocket key");
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        // An unmasked binary frame "yo", in the same write as the 101.
        resp.extend_from_slice(&[0x82, 0x02, b'y', b'o']);
        tcp.write_all(&resp).await.unwrap();
        tcp
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}{}", ws::TUNNEL_PATH);
    let mut c = timeout(DEADLINE, ws::connect(tcp, &url, false))
        .await
        .unwrap()
        .unwrap();
    match timeout(DEADLINE, c.reader.next()).await {
        Ok(Ok(WsIn::Data(b))) => assert_eq!(&b[..], b"yo"),
        other => panic!("the frame sent with the response was lost: {other:?}"),
    }
    drop(server);
}
