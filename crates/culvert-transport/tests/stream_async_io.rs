//! `TunnelStream` as tokio's `AsyncRead` + `AsyncWrite`: what `tokio::io::copy`, hyper and
//! database drivers rely on. Two multiplexed connections over a real loopback TCP socket.

use culvert_transport::{reset_code_of, Mux, MuxEvent};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

mod support;

use support::{answer_and_drop, connected_pair, incoming, LIMIT};

/// A client and a server connection joined by a loopback TCP socket.
async fn pair() -> (Mux, Mux, UnboundedReceiver<MuxEvent>) {
    let (client, server, _client_events, server_events) = connected_pair().await;
    (client, server, server_events)
}

/// A deterministic, non-repeating-looking byte pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

#[tokio::test]
async fn tokio_io_copy_through_a_stream_and_back() {
    let (client, _server, mut events) = pair().await;
    let mut a = client.open("echo").await.unwrap();
    let mut b = incoming(&mut events).await;
    // The far side echoes with tokio::io::copy over its split halves.
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(&mut b);
        let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        n
    });
    let data = pattern(300_000);
    let (mut r, mut w) = tokio::io::split(&mut a);
    let sent = data.clone();
    let writer = async move {
        let mut src = &sent[..];
        let n = tokio::io::copy(&mut src, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        n
    };
    let reader = async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let (n, got) = tokio::time::timeout(LIMIT, async { tokio::join!(writer, reader) })
        .await
        .expect("echo within the limit");
    assert_eq!(n, data.len() as u64);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
    assert_eq!(echo.await.unwrap(), data.len() as u64);
}

#[tokio::test]
async fn shutdown_is_a_half_close() {
    let (client, _server, mut events) = pair().await;
    let mut a = client.open("svc").await.unwrap();
    let mut b = incoming(&mut events).await;
    a.write_all(b"request").await.unwrap();
    a.shutdown().await.unwrap();
    // A second shutdown is harmless; a write after it is an error.
    a.shutdown().await.unwrap();
    assert!(a.write_all(b"more").await.is_err());
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, b.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"request");
    // Our reading direction is still open: the answer arrives after our FIN.
    b.write_all(b"answer").await.unwrap();
    b.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, a.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"answer");
}

#[tokio::test]
async fn a_reset_surfaces_as_an_io_error_with_its_code() {
    let (client, _server, mut events) = pair().await;
    let mut a = client.open("svc").await.unwrap();
    a.write_all(b"x").await.unwrap();
    let b = incoming(&mut events).await;
    b.reset(culvert_proto::reset_code::NOT_ALLOWED);
    let mut buf = [0u8; 16];
    let e = tokio::time::timeout(LIMIT, async {
        loop {
            match a.read(&mut buf).await {
                Ok(0) => panic!("a reset stream ended as if finished"),
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the reset arrives");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        reset_code_of(&e),
        Some(culvert_proto::reset_code::NOT_ALLOWED)
    );
    // Writing after the reset fails too.
    assert!(a.write_all(b"y").await.is_err());
}

#[tokio::test]
async fn a_large_transfer_arrives_byte_exact_through_small_reads_and_writes() {
    let (client, _server, mut events) = pair().await;
    let mut a = client.open("bulk").await.unwrap();
    let mut b = incoming(&mut events).await;
    // 24 MiB: several times every send buffer and window, so writes meet backpressure.
    let data = pattern(24 << 20);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        // Odd-sized writes, so chunks straddle frames and blocks.
        for piece in sent.chunks(7_919) {
            a.write_all(piece).await.unwrap();
        }
        a.shutdown().await.unwrap();
        a
    });
    let mut got = Vec::with_capacity(data.len());
    // Small odd-sized reads, so received chunks are split and their rest kept.
    let mut buf = vec![0u8; 1_021];
    tokio::time::timeout(LIMIT, async {
        loop {
            let n = b.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the transfer ends within the limit");
    assert_eq!(got.len(), data.len());
    let first_diff = got.iter().zip(&data).position(|(x, y)| x != y);
    assert_eq!(first_diff, None, "bytes differ");
    drop(writer.await.unwrap());
}

/// The far side answers, shuts down and drops its end at once (an HTTP/1.0 server, a
/// one-shot responder), and the asker reads only later: the whole answer arrives, then the
/// end; writing after is an error carrying the far side's reason. (Failed before: the drop
/// reset the stream and took the unread answer with it, so the read was a reset error. An
/// HTTP/1.0 caller through the HTTP ingress got a 502 now and then for it.)
#[tokio::test]
async fn an_answer_shut_down_and_dropped_at_once_arrives_whole() {
    let (client, _server, mut events) = pair().await;
    let mut a = client.open("svc").await.unwrap();
    a.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut b = incoming(&mut events).await;
    let mut req = [0u8; 18];
    b.read_exact(&mut req).await.unwrap();
    let body = pattern(1_000_000);
    answer_and_drop(b, body.clone()).await;
    // Let the far side's drop reach us before anything is read.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, a.read_to_end(&mut got))
        .await
        .expect("read within the limit")
        .expect("the answer, then the end");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "answer bytes differ");
    let e = a
        .write_all(b"more")
        .await
        .expect_err("nobody reads any more");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    assert_eq!(reset_code_of(&e), Some(culvert_proto::reset_code::CANCEL));
}

/// A vectored write takes every slice at once, in order (a writer holding a message's head
/// and body apart, as hyper does, need not copy them together first), and a write larger
/// than the stream's room takes what fits, the rest arriving once written again.
#[tokio::test]
async fn vectored_writes_take_every_slice_in_order() {
    let (client, _server, mut events) = pair().await;
    let mut a = client.open("svc").await.unwrap();
    let mut b = incoming(&mut events).await;
    assert!(a.is_write_vectored());
    let head = b"POST /upload HTTP/1.1\r\ncontent-length: 70000\r\n\r\n".to_vec();
    let body = pattern(70_000);
    let parts = [
        std::io::IoSlice::new(&head),
        std::io::IoSlice::new(&[]),
        std::io::IoSlice::new(&body[..30_000]),
        std::io::IoSlice::new(&body[30_000..]),
    ];
    let n = a.write_vectored(&parts).await.unwrap();
    assert_eq!(n, head.len() + body.len(), "one call took every slice");
    // More than the stream's send room (2 MiB) in one call: it takes what fits.
    let big = pattern(3 << 20);
    let halves = [
        std::io::IoSlice::new(&big[..1 << 20]),
        std::io::IoSlice::new(&big[1 << 20..]),
    ];
    let mut expected = [head, body].concat();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        got
    });
    let taken = a.write_vectored(&halves).await.unwrap();
    assert!(taken > 0 && taken < big.len(), "{taken} bytes taken");
    a.write_all(&big[taken..]).await.unwrap();
    a.shutdown().await.unwrap();
    expected.extend_from_slice(&big);
    let got = tokio::time::timeout(LIMIT, reader)
        .await
        .expect("read within the limit")
        .unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ");
}
