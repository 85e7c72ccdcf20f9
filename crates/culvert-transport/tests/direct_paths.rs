//! The two direct paths of the connection driver. Write-through: a stream's bytes reach the
//! WebSocket from the sending task when the connection's writer task is idle (no wake-up of
//! the writer per message). Direct delivery: bytes for a relay waiting on its stream are
//! written into its TCP socket by the connection's reader (no wake-up of the relay). And
//! nothing is lost, reordered or torn when a socket cannot take everything at once.

use std::future::Future;
use std::io::Read;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::Side;
use culvert_transport::wsframe::{Role, WsConn};
use culvert_transport::{relay_tcp, Mux, MuxEvent, TunnelStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

mod support;

use support::{connection, incoming, send_now, LIMIT};

/// Runs `sends` on a current-thread runtime with the first of `streams` streams of an idle
/// server-role connection (whose unmasked frames are what may be written through), then
/// checks without awaiting that `expect`'s parts reached the raw peer socket in order: only
/// a write from the sending task can have put them there. Before `sends`, the same stream
/// sends `earlier` (each in a turn of its own, followed by a pause); those parts go first
/// in `expect`.
fn written_before_the_sender_yields(
    streams: usize,
    earlier: &[&[u8]],
    sends: impl FnOnce(&TunnelStream),
    expect: &[&[u8]],
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dialed = TcpStream::connect(addr).await.unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let (mux, _events) =
            Mux::spawn_with(WsConn::new(dialed, Role::Server), connection(Side::Server));
        let mut open = Vec::new();
        for _ in 0..streams {
            open.push(mux.open("svc").await.unwrap());
        }
        // Let the writer task send the opens and go idle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for part in earlier {
            send_now(&open[0], Bytes::copy_from_slice(part));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sends(&open[0]);
        // A blocking read: the runtime's thread is this one.
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while found_in_order(&seen, expect) < expect.len() {
            match peer.read(&mut buf) {
                Ok(0) => panic!("peer socket closed"),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "not on the socket before the sender yielded: {e} ({} bytes seen, {} of {} parts)",
                    seen.len(),
                    found_in_order(&seen, expect),
                    expect.len()
                ),
            }
        }
        drop(open);
        mux.abort("test over");
    });
}

/// How many of `parts` occur in `seen`, in order.
fn found_in_order(seen: &[u8], parts: &[&[u8]]) -> usize {
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        match seen[at..].windows(part.len()).position(|w| w == *part) {
            Some(p) => at += p + part.len(),
            None => return i,
        }
    }
    parts.len()
}

#[test]
fn a_send_on_an_idle_connection_is_written_before_the_sender_yields() {
    // At least 16 KiB queued: with another stream open, a smaller send is left to the end
    // of the scheduler's turn (tests/small_sends.rs).
    let payload = pattern(1, 16 * 1024);
    written_before_the_sender_yields(
        2,
        &[],
        |s| send_now(s, Bytes::copy_from_slice(&payload)),
        &[&payload],
    );
}

#[test]
fn a_small_send_of_the_only_stream_is_written_before_the_sender_yields() {
    // No other stream could share its write: no hop through the flush task.
    let payload = b"written-through-without-a-task-hop";
    written_before_the_sender_yields(
        1,
        &[],
        |s| send_now(s, Bytes::from_static(payload)),
        &[payload],
    );
}

#[test]
fn a_small_send_of_a_stream_sending_alone_is_written_before_the_sender_yields() {
    // Four streams open, three of them idle: once the busy one has made the last four
    // sends, no other stream has anything to share its write with, and it writes through
    // (no hop through the flush task per message).
    let earlier: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("earlier-{i}").into_bytes())
        .collect();
    let earlier: Vec<&[u8]> = earlier.iter().map(|p| &p[..]).collect();
    let payload: &[u8] = b"written-through-while-the-others-idle";
    let mut expect = earlier.clone();
    expect.push(payload);
    written_before_the_sender_yields(
        4,
        &earlier,
        |s| send_now(s, Bytes::from_static(payload)),
        &expect,
    );
}

#[test]
fn a_burst_reaching_the_small_send_limit_is_written_before_the_sender_yields() {
    // Four 4 KiB sends: the fourth brings what is queued to 16 KiB, so it writes everything
    // queued itself, the three before it included (each its own frame).
    let parts: Vec<Vec<u8>> = (0..4).map(|i| pattern(i, 4 * 1024)).collect();
    let expect: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
    written_before_the_sender_yields(
        2,
        &[],
        |s| {
            for p in &parts {
                send_now(s, Bytes::copy_from_slice(p));
            }
        },
        &expect,
    );
}

/// A deterministic pattern, different per stream.
fn pattern(stream: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 8) as u8 ^ stream as u8)
        .collect()
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

/// Two connections joined by a loopback socket; the client's events are dropped.
async fn mux_pair() -> (Mux, Mux, UnboundedReceiver<MuxEvent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, _) = Mux::spawn_with(
        WsConn::new(dialed.unwrap(), Role::Client),
        connection(Side::Client),
    );
    let (server, events) = Mux::spawn_with(
        WsConn::new(accepted.unwrap().0, Role::Server),
        connection(Side::Server),
    );
    (client, server, events)
}

/// A loopback TCP pair: (the relay's end, the service's end); with `bufsize`, the relay
/// end's send buffer and the service end's receive buffer are that small.
async fn tcp_pair(bufsize: Option<u32>) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    if let Some(n) = bufsize {
        sock.set_recv_buffer_size(n).unwrap();
    }
    let (service, relay_end) = tokio::join!(sock.connect(addr), listener.accept());
    let relay_end = relay_end.unwrap().0;
    if let Some(n) = bufsize {
        socket2::SockRef::from(&relay_end)
            .set_send_buffer_size(n as usize)
            .unwrap();
    }
    (relay_end, service.unwrap())
}

struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn bytes_for_a_waiting_relay_reach_its_socket_without_waking_it() {
    let (client, _server, mut events) = mux_pair().await;
    let a = client.open("svc").await.unwrap();
    let b = incoming(&mut events).await;
    let (relay_end, mut service) = tcp_pair(None).await;
    let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut relay = pin!(relay_tcp(relay_end, &a));
    // Polled by hand, once: it now waits on both sockets and on the stream.
    assert!(relay
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let payload = b"delivered-by-the-reader";
    b.send(bytes::Bytes::from_static(payload)).await.unwrap();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), service.read_exact(&mut got))
        .await
        .expect("the bytes reached the service without the relay being polled")
        .unwrap();
    assert_eq!(&got, payload);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "the relay was woken");
    // The relay carries on normally when polled: a FIN from the far side ends its socket.
    b.finish().unwrap();
    service.shutdown().await.unwrap();
    let totals = tokio::time::timeout(LIMIT, relay)
        .await
        .expect("relay ends")
        .unwrap();
    assert_eq!(
        totals.down,
        payload.len() as u64,
        "direct bytes are in the totals"
    );
    let mut rest = Vec::new();
    service.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// A service that starts late and reads slowly through small socket buffers: direct
/// deliveries find the socket full, leave bytes to the relay, and the FIN still comes last.
#[tokio::test(flavor = "current_thread")]
async fn partial_deliveries_lose_and_reorder_nothing() {
    const LEN: usize = 3 * 512 * 1024 + 777;
    let (client, _server, mut events) = mux_pair().await;
    let a = client.open("svc").await.unwrap();
    let b = incoming(&mut events).await;
    let (relay_end, mut service) = tcp_pair(Some(8 * 1024)).await;
    let relay = tokio::spawn(async move { relay_tcp(relay_end, &a).await });
    let data = pattern(5, LEN);
    let sent = data.clone();
    let sender = tokio::spawn(async move {
        let mut at = 0;
        let mut step = 1;
        while at < sent.len() {
            let end = (at + step).min(sent.len());
            b.send(bytes::Bytes::copy_from_slice(&sent[at..end]))
                .await
                .unwrap();
            at = end;
            step = (step * 5 + 11) % 90_000 + 1;
        }
        b.finish().unwrap();
        b
    });
    let reader = async {
        // Not reading at first: the relay's socket fills while it waits on the stream.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 3000];
        loop {
            let n = service.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::task::yield_now().await;
        }
        got
    };
    let got = tokio::time::timeout(LIMIT, reader)
        .await
        .expect("transfer within the limit");
    assert_eq!(got.len(), LEN);
    assert!(got == data, "bytes differ");
    service.shutdown().await.unwrap();
    let b = sender.await.unwrap();
    let totals = tokio::time::timeout(LIMIT, relay)
        .await
        .expect("relay ends")
        .unwrap()
        .unwrap();
    assert_eq!(totals.down, LEN as u64);
    drop(b);
}

/// Both ways at once through a relay, on two runtime threads: the relay's task is polled
/// for the service's bytes while bytes for the service arrive, so a relay that took bytes
/// itself must not find later ones written behind its back (a direct delivery may write
/// only while the relay waits on its stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_busy_both_ways_gets_every_byte_in_order() {
    const LEN: usize = 4 * 1024 * 1024 + 4321;
    for round in 0..3 {
        let (client, _server, mut events) = mux_pair().await;
        let a = client.open("svc").await.unwrap();
        let b = incoming(&mut events).await;
        let (relay_end, service) = tcp_pair(Some(64 * 1024)).await;
        let relay = tokio::spawn(async move { relay_tcp(relay_end, &a).await });
        let to_service = pattern(round, LEN);
        let to_far = pattern(round + 100, LEN);
        let (mut srd, mut swr) = service.into_split();
        let far = async {
            let ((), got) = tokio::join!(
                async {
                    let mut at = 0;
                    let mut step = 7;
                    while at < LEN {
                        let end = (at + step).min(LEN);
                        b.send(bytes::Bytes::copy_from_slice(&to_service[at..end]))
                            .await
                            .unwrap();
                        at = end;
                        step = (step * 3 + 101) % 70_000 + 1;
                    }
                    b.finish().unwrap();
                },
                async {
                    let mut got = Vec::new();
                    while let Some(c) = b.recv().await.unwrap() {
                        got.extend_from_slice(&c);
                    }
                    got
                }
            );
            got
        };
        let svc = async {
            let (_, got) = tokio::join!(
                async {
                    for c in to_far.chunks(3_333) {
                        swr.write_all(c).await.unwrap();
                    }
                    swr.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::new();
                    srd.read_to_end(&mut got).await.unwrap();
                    got
                }
            );
            got
        };
        let (far_got, svc_got) = tokio::time::timeout(LIMIT, async { tokio::join!(far, svc) })
            .await
            .expect("both ways within the limit");
        assert!(
            svc_got == to_service,
            "round {round}: the service's bytes differ"
        );
        assert!(
            far_got == to_far,
            "round {round}: the far side's bytes differ"
        );
        tokio::time::timeout(LIMIT, relay)
            .await
            .expect("relay ends")
            .unwrap()
            .unwrap();
    }
}

/// The receiving connection's socket, watched: after the read that brings `marker`, the
/// next read records whether `service` already holds the marker (delivered before the
/// reader went back to its socket) or not.
struct Watched {
    io: TcpStream,
    marker: &'static [u8],
    service: std::net::TcpStream,
    armed: bool,
    /// 0: no read after the marker yet; 1: delivered before it; 2: not delivered.
    seen: Arc<std::sync::atomic::AtomicU8>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if std::mem::take(&mut this.armed) {
            let mut peeked = vec![0u8; this.marker.len()];
            let delivered = this.service.peek(&mut peeked).ok() == Some(this.marker.len())
                && peeked == this.marker;
            let _ = this.seen.compare_exchange(
                0,
                if delivered { 1 } else { 2 },
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if got.windows(this.marker.len()).any(|w| w == this.marker) {
            this.armed = true;
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A small message (a request, a reply) is in the waiting relay's socket before the
/// connection's reader reads its own socket again: that read only finds it empty, and
/// delivering after it added a system call's time to every hop of a round trip.
#[tokio::test(flavor = "current_thread")]
async fn a_small_message_is_delivered_before_the_reader_reads_again() {
    const MARKER: &[u8] = b"one-small-request-for-the-service";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (relay_end, service) = tcp_pair(None).await;
    let service = service.into_std().unwrap();
    let watcher = service.try_clone().unwrap();
    let mut service = TcpStream::from_std(service).unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicU8::new(0));
    // Unmasked, as Culvert's upgrade agrees by default, so the marker is visible on the wire.
    let (client, _) = Mux::spawn_with(
        WsConn::new(dialed.unwrap(), Role::Client).unmasked(),
        connection(Side::Client),
    );
    let watched = Watched {
        io: accepted.unwrap().0,
        marker: MARKER,
        service: watcher,
        armed: false,
        seen: seen.clone(),
    };
    let (_server, mut events) = Mux::spawn_with(
        WsConn::new(watched, Role::Server).unmasked(),
        connection(Side::Server),
    );
    let a = client.open("svc").await.unwrap();
    let b = incoming(&mut events).await;
    let relay = tokio::spawn(async move { relay_tcp(relay_end, &b).await });
    // Let the relay start waiting on its stream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.send(Bytes::from_static(MARKER)).await.unwrap();
    let mut got = vec![0u8; MARKER.len()];
    tokio::time::timeout(LIMIT, service.read_exact(&mut got))
        .await
        .expect("the message reaches the service")
        .unwrap();
    assert_eq!(got, MARKER);
    // The reader reads its socket again right after handling the message (and finds it
    // empty), so the record is there by now; wait for it, bounded.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while seen.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the reader read its socket again before delivering (2) or never did (0)"
    );
    a.finish().unwrap();
    service.shutdown().await.unwrap();
    tokio::time::timeout(LIMIT, relay)
        .await
        .expect("relay ends")
        .unwrap()
        .unwrap();
}
