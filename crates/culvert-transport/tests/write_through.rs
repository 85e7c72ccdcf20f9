//! Write-through: a stream's bytes reach the socket from the sending task when the
//! connection's writer task is idle (no wake-up of the writer per message), and nothing is
//! lost, reordered or torn when the socket cannot take a frame at once.

use std::future::Future;
use std::io::Read;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::{Config, Connection, Side};
use culvert_transport::wsframe::{Role, WsConn};
use culvert_transport::{Mux, MuxEvent, TunnelStream};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

const LIMIT: Duration = Duration::from_secs(60);

fn connection(side: Side) -> Connection {
    Connection::new(side, Config::default(), std::time::Instant::now()).unwrap()
}

#[test]
fn a_send_on_an_idle_connection_is_written_before_the_sender_yields() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dialed = TcpStream::connect(addr).await.unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        // The server role sends unmasked frames, which are what is written through.
        let (mux, _events) =
            Mux::spawn_with(WsConn::new(dialed, Role::Server), connection(Side::Server));
        let stream = mux.open("svc").await.unwrap();
        // Let the writer task send the open and go idle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let payload = b"written-through-without-a-task-hop";
        let polled = {
            let mut send = pin!(stream.send(Bytes::from_static(payload)));
            send.as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        };
        assert!(matches!(polled, Poll::Ready(Ok(()))), "{polled:?}");
        // No await since the send: only a write from the sending task can have put the
        // bytes on the socket. (A blocking read: the runtime's thread is this one.)
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(payload.len()).any(|w| w == payload) {
            match peer.read(&mut buf) {
                Ok(0) => panic!("peer socket closed"),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "the payload did not reach the socket before the sender yielded: {e} ({} bytes seen)",
                    seen.len()
                ),
            }
        }
        drop(stream);
        mux.abort("test over");
    });
}

/// A deterministic pattern, different per stream.
fn pattern(stream: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 8) as u8 ^ stream as u8)
        .collect()
}

async fn incoming(events: &mut UnboundedReceiver<MuxEvent>) -> TunnelStream {
    loop {
        match tokio::time::timeout(LIMIT, events.recv()).await {
            Ok(Some(MuxEvent::Incoming(s, _))) => return s,
            Ok(Some(_)) => continue,
            other => panic!("no incoming stream: {other:?}"),
        }
    }
}

/// Eight streams send at once through a socket with a small send buffer, so write-throughs
/// keep finding it full and leave part of a frame for the writer task: every byte still
/// arrives, in order, on the right stream, and each stream's FIN after its last byte.
#[tokio::test(flavor = "current_thread")]
async fn partial_write_throughs_lose_and_reorder_nothing() {
    const STREAMS: usize = 8;
    const LEN: usize = 3 * 512 * 1024 + 12_345;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_send_buffer_size(16 * 1024).unwrap();
    let (dialed, accepted) = tokio::join!(sock.connect(addr), listener.accept());
    let (sender, _sender_events) = Mux::spawn_with(
        WsConn::new(dialed.unwrap(), Role::Server),
        connection(Side::Server),
    );
    let (_receiver, mut events) = Mux::spawn_with(
        WsConn::new(accepted.unwrap().0, Role::Client),
        connection(Side::Client),
    );
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let s = sender.open(&format!("s{i}")).await.unwrap();
        let data = pattern(i, LEN);
        sends.spawn(async move {
            // Uneven chunks, so frames split at many different places.
            let mut at = 0;
            let mut step = 1 + i * 997;
            while at < data.len() {
                let end = (at + step).min(data.len());
                s.send(Bytes::copy_from_slice(&data[at..end]))
                    .await
                    .unwrap();
                at = end;
                step = (step * 7 + 13) % 200_000 + 1;
            }
            s.finish().unwrap();
            s
        });
    }
    let mut reads = Vec::new();
    for _ in 0..STREAMS {
        let r = incoming(&mut events).await;
        reads.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(chunk) = r.recv().await.unwrap() {
                got.extend_from_slice(&chunk);
            }
            got
        }));
    }
    let got = tokio::time::timeout(LIMIT, async {
        let mut senders = Vec::new();
        while let Some(s) = sends.join_next().await {
            senders.push(s.unwrap());
        }
        let mut got = Vec::new();
        for r in reads {
            got.push(r.await.unwrap());
        }
        (senders, got)
    })
    .await
    .expect("the transfer finishes within the limit")
    .1;
    // Streams arrive in open order; each carries its own pattern, whole.
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.len(), LEN, "stream {i}: length");
        assert!(*g == pattern(i, LEN), "stream {i}: bytes differ");
    }
}
