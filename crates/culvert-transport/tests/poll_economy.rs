//! What one small message costs in polls: a connection's reader tries its socket once more
//! per message than the message needs (to learn it is empty, which also registers for the
//! next one), no more. Each extra poll was a visible share of a round trip's user-space
//! work (`scripts/rr-instructions.sh`, BENCHMARKS.md).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use culvert_proto::{Config, Connection, Side};
use culvert_transport::wsframe::{Role, WsConn};
use culvert_transport::Mux;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

mod support;

use support::{incoming, socket_pair, LIMIT};

/// Round trips per test: enough that a per-message extra poll stands far above the polls of
/// setting up.
const MESSAGES: usize = 60;

/// A socket that counts the reads polled on it.
struct CountReads {
    inner: TcpStream,
    reads: Arc<AtomicUsize>,
}

impl AsyncRead for CountReads {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountReads {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn the_reader_polls_its_socket_at_most_twice_per_message() {
    let (a, b) = socket_pair().await;
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = CountReads {
        inner: b,
        reads: reads.clone(),
    };
    let now = std::time::Instant::now();
    let c = Connection::new(Side::Client, Config::default(), now).unwrap();
    let s = Connection::new(Side::Server, Config::default(), now).unwrap();
    let (client, _client_events) = Mux::spawn_with(WsConn::new(a, Role::Client), c);
    let (server, mut server_events) = Mux::spawn_with(WsConn::new(counted, Role::Server), s);
    let sent = client.open("svc").await.unwrap();
    let got = incoming(&mut server_events).await;
    // One message at a time, each received before the next is sent, so each arrives alone
    // (a reply from the server side makes the client wait for it).
    tokio::time::timeout(LIMIT, async {
        sent.send(Bytes::from_static(b"warm-up")).await.unwrap();
        got.recv().await.unwrap().unwrap();
        let before = reads.load(Ordering::Relaxed);
        for i in 0..MESSAGES {
            sent.send(Bytes::from(format!("message {i}")))
                .await
                .unwrap();
            let m = got.recv().await.unwrap().unwrap();
            assert_eq!(m, format!("message {i}").as_bytes());
            got.send(Bytes::from_static(b"ok")).await.unwrap();
            sent.recv().await.unwrap().unwrap();
        }
        let per = (reads.load(Ordering::Relaxed) - before) as f64 / MESSAGES as f64;
        // One read that finds the message, one that finds the socket empty (and leaves the
        // reader registered for the next): 2.0. It was 3.0 when the reader, having found the
        // socket empty, polled it again before waiting.
        assert!(
            per <= 2.2,
            "{per:.2} socket reads per message (at most 2 expected)"
        );
    })
    .await
    .expect("within the limit");
    server.abort("test over");
    client.abort("test over");
}
