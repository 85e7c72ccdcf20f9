//! Culvert's own WebSocket framer (`culvert_transport::wsframe`) against tokio-tungstenite's
//! `WebSocketStream`, which the framer replaced after the upgrade: the same 256 KiB binary
//! messages over a real loopback TCP connection, both ends on one current-thread runtime (as
//! a Culvert process runs), read to the end and counted.
//!
//! What is measured is the process's CPU time (user + system, `getrusage`), not wall time:
//! on a busy machine CPU time per byte is what stays comparable, and it is what a tunnel
//! spends per GB. Variants: server → client (neither side masks; pure framing and IO) and
//! client → server masked (every client frame masked, as RFC 6455 requires by default);
//! Culvert also unmasked (its negotiated default, PROTOCOL.md §2.1), which tungstenite's
//! client cannot do.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culvert_transport::wsframe::{Role, WsConn, WsIn};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{Role as TRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One WebSocket message: a batch at Culvert's cap.
const MSG: usize = 256 * 1024;
/// Messages per iteration: 64 MiB.
const MSGS: usize = 256;

/// Which way the bytes go, and whether the client masks.
#[derive(Clone, Copy)]
enum Way {
    ServerToClient,
    ClientToServerMasked,
    ClientToServerUnmasked,
}

fn cpu_now() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (s, c)
}

fn payload() -> Bytes {
    Bytes::from((0..MSG).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// Moves MSGS messages with Culvert's framer; returns the bytes received.
async fn culvert(way: Way, data: &Bytes) -> usize {
    let (s, c) = pair().await;
    let server = WsConn::new(s, Role::Server);
    let client = WsConn::new(c, Role::Client);
    let (server, client) = match way {
        Way::ClientToServerUnmasked => (server.unmasked(), client.unmasked()),
        _ => (server, client),
    };
    let (mut tx, mut rx) = match way {
        Way::ServerToClient => (server.writer, client.reader),
        _ => (client.writer, server.reader),
    };
    let send = async move {
        for _ in 0..MSGS {
            tx.send(std::slice::from_ref(data), MSG).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    };
    let recv = async move {
        let mut got = 0;
        while got < MSG * MSGS {
            match rx.next().await.unwrap() {
                WsIn::Data(b) => got += b.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    };
    let (_tx, got) = tokio::join!(send, recv);
    got
}

/// Moves MSGS messages with tokio-tungstenite (messages fed, one flush at the end).
async fn tungstenite(way: Way, data: &Bytes) -> usize {
    let (s, c) = pair().await;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MSG))
        .max_frame_size(Some(MSG))
        .write_buffer_size(MSG)
        .max_write_buffer_size(4 * MSG)
        .read_buffer_size(MSG);
    let server = WebSocketStream::from_raw_socket(s, TRole::Server, Some(config)).await;
    let client = WebSocketStream::from_raw_socket(c, TRole::Client, Some(config)).await;
    let (mut tx, mut rx) = match way {
        Way::ServerToClient => (server, client),
        _ => (client, server),
    };
    let send = async move {
        for _ in 0..MSGS {
            tx.feed(Message::Binary(data.clone())).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    };
    let recv = async move {
        let mut got = 0;
        while got < MSG * MSGS {
            match rx.next().await.unwrap().unwrap() {
                Message::Binary(b) => got += b.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    };
    let (_tx, got) = tokio::join!(send, recv);
    got
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = payload();
    let mut g = c.benchmark_group("ws_framing_cpu");
    g.throughput(Throughput::Bytes((MSG * MSGS) as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(8));
    let ways = [
        ("server_to_client", Way::ServerToClient),
        ("client_to_server_masked", Way::ClientToServerMasked),
        ("client_to_server_unmasked", Way::ClientToServerUnmasked),
    ];
    for (name, way) in ways {
        g.bench_with_input(BenchmarkId::new("culvert", name), &way, |b, &way| {
            b.iter_custom(|iters| {
                let start = cpu_now();
                for _ in 0..iters {
                    assert_eq!(rt.block_on(culvert(way, &data)), MSG * MSGS);
                }
                cpu_now() - start
            })
        });
        if matches!(way, Way::ClientToServerUnmasked) {
            continue; // tungstenite's client always masks
        }
        g.bench_with_input(BenchmarkId::new("tungstenite", name), &way, |b, &way| {
            b.iter_custom(|iters| {
                let start = cpu_now();
                for _ in 0..iters {
                    assert_eq!(rt.block_on(tungstenite(way, &data)), MSG * MSGS);
                }
                cpu_now() - start
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
