//! A resource oracle (issue 13, items 10-12): a hostile peer holding a valid token speaks
//! the protocol over a real WebSocket to a real `culvert server` process on loopback, never
//! reading what the server sends, and drives one abuse per server: 1-byte stream frames,
//! datagrams for flows it never opened, and a flood of opens the server refuses (then the
//! same flood from a peer that reads, to see the GoAway that ends it). The
//! server's real memory (VmRSS of its process, sampled while the abuse runs and after) may
//! grow by at most the bound README.md's limits table documents for each case.
//!
//! The bounds are ceilings with room for allocator slack, not measurements: what they
//! catch is growth of another order (the old code took hundreds of MB in each case).

mod support;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use culvert_proto::control::{AuthExt, RegisterExt, CULVERT_VERSION};
use culvert_proto::{Control, Frame, ServiceProtocol, Side, StreamId, Token};
use culvert_transport::wsframe::{WsReader, WsWriter};
use support::*;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;
/// README limits table: 1-byte frames filling the connection window (4 MiB of payload in
/// 4 M frames) and the relay behind it.
const BOUND_TINY_FRAMES: u64 = 64 * MIB;
/// README limits table: datagrams for flows never opened (125 MB sent).
const BOUND_PARKED: u64 = 32 * MIB;
/// README limits table: refused opens while never reading.
const BOUND_REFUSED_OPENS: u64 = 32 * MIB;

/// The last lines the server logged.
fn tail(p: &Proc) -> String {
    let log = p.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("access refused"))
        .collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The server's VmRSS in KiB; it must be running.
fn rss_kib(pid: u32) -> u64 {
    support::faults::rss_kib(pid).expect("the server's VmRSS")
}

/// The hostile peer: a WebSocket that writes protocol frames and reads only when told.
struct Peer {
    w: WsWriter<WriteHalf<TcpStream>>,
    r: WsReader<ReadHalf<TcpStream>>,
}

impl Peer {
    async fn connect(port: u16, token: &str) -> Peer {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let ws = culvert_transport::ws::connect(
            tcp,
            &format!(
                "ws://127.0.0.1:{port}{}",
                culvert_transport::ws::TUNNEL_PATH
            ),
            false,
        )
        .await
        .expect("upgrade");
        let mut p = Peer {
            w: ws.writer,
            r: ws.reader,
        };
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&std::process::id().to_be_bytes());
        id[4..12].copy_from_slice(&(Instant::now().elapsed().as_nanos() as u64).to_be_bytes());
        id[12..].copy_from_slice(&port.to_be_bytes().repeat(2));
        p.send(&[Frame::Control(Control::Auth {
            token: Token(token.to_owned()),
            client_id: uuid::Uuid::from_bytes(id),
            ext: Some(AuthExt {
                version: CULVERT_VERSION,
                capabilities: 0,
            }),
        })])
        .await;
        p.expect(|c| matches!(c, Control::AuthOk { .. }), "AuthOk")
            .await;
        p
    }

    async fn send(&mut self, frames: &[Frame]) {
        let mut b = BytesMut::new();
        for f in frames {
            f.encode(&mut b).expect("encodable");
        }
        self.send_bytes(b.freeze()).await;
    }

    async fn send_bytes(&mut self, b: Bytes) {
        let len = b.len();
        tokio::time::timeout(WAIT, self.w.send(&[b], len))
            .await
            .expect("the write completes")
            .expect("the server reads");
    }

    /// Reads (only during set-up) until a control message `want` matches.
    async fn expect(&mut self, want: impl Fn(&Control) -> bool, what: &str) {
        let mut d = culvert_proto::FrameDecoder::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.r.next())
                .await
                .unwrap_or_else(|_| panic!("no {what}"))
                .expect("the connection stays up");
            if let culvert_transport::wsframe::WsIn::Data(b) = m {
                d.push(b);
                while let Some(f) = d.next_frame().expect("valid frames") {
                    if let Frame::Control(c) = f {
                        if want(&c) {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A server (with its admin endpoint on `admin`) and a token (allowed the service
/// `sink`, its own).
fn server_with_admin(tag: &str, admin: u16) -> (TempDir, Proc, u16, String) {
    let dir = TempDir::new(tag);
    let tokens = dir.join("tokens.toml");
    let token = new_token_with(
        &tokens,
        "hostile",
        &["--access", "sink", "--role", "agent,access"],
    );
    let admin = format!("127.0.0.1:{admin}");
    let (server, port) = start_server(&tokens, &["--insecure-plain", "--admin", &admin]);
    (dir, server, port, token)
}

fn server(tag: &str) -> (TempDir, Proc, u16, String) {
    server_with_admin(tag, free_port())
}

/// Samples the server's VmRSS while `f` runs and for `settle` after; the largest growth
/// over `base`, in bytes.
async fn peak_growth<F: std::future::Future<Output = ()>>(pid: u32, settle: Duration, f: F) -> u64 {
    let base = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let r = rss_kib(pid);
                peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    f.await;
    tokio::time::sleep(settle).await;
    sampler.abort();
    let peak = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(rss_kib(pid));
    (peak - base) * 1024
}

/// Reports the server's growth under an abuse and checks it: still up, under `bound`.
fn check_bound(server: &mut Proc, what: &str, growth: u64, bound: u64) {
    eprintln!(
        "{what}: server RSS grew {} KiB (bound {} KiB)",
        growth / 1024,
        bound / 1024
    );
    eprintln!("server log (tail):\n{}", tail(server));
    assert!(server.exited().is_none(), "the server is still up");
    assert!(growth <= bound, "RSS grew {growth} bytes, bound {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_frames_stay_under_the_bound() {
    let (_dir, mut server, port, token) = server("oracle-tiny");
    let mut p = Peer::connect(port, &token).await;
    // A private service of its own, so access streams to it are relayed back to this
    // connection, which never reads: the relay stalls and the bytes stay in the server.
    p.send(&[Frame::Control(Control::Register {
        name: "sink".into(),
        protocol: ServiceProtocol::Tcp,
        local_port: 0,
        remote_port: 0,
        ext: Some(RegisterExt { flags: 1 }),
    })])
    .await;
    p.expect(|c| matches!(c, Control::RegisterOk { .. }), "RegisterOk")
        .await;
    // 16 streams x 256 KiB (the initial stream window) = the 4 MiB connection window the
    // server grants at start, all in 1-byte frames.
    const STREAMS: u64 = 16;
    const PER_STREAM: usize = 256 * 1024;
    let ids: Vec<StreamId> = (0..STREAMS)
        .map(|s| StreamId::new(Side::Client, s))
        .collect();
    let opens: Vec<Frame> = ids
        .iter()
        .map(|id| Frame::StreamOpen {
            id: *id,
            target: "sink".into(),
        })
        .collect();
    let growth = peak_growth(server.pid(), Duration::from_secs(2), async {
        p.send(&opens).await;
        let one = Bytes::from_static(b"x");
        let mut msg = BytesMut::with_capacity(256 * 1024);
        for _ in 0..PER_STREAM {
            for id in &ids {
                Frame::StreamData {
                    id: *id,
                    data: one.clone(),
                }
                .encode(&mut msg)
                .unwrap();
            }
            if msg.len() >= 200 * 1024 {
                let m = msg.split().freeze();
                p.send_bytes(m).await;
            }
        }
        if !msg.is_empty() {
            let m = msg.split().freeze();
            p.send_bytes(m).await;
        }
    })
    .await;
    check_bound(&mut server, "1-byte frames", growth, BOUND_TINY_FRAMES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_for_flows_never_opened_stay_under_the_bound() {
    let (_dir, mut server, port, token) = server("oracle-parked");
    let mut p = Peer::connect(port, &token).await;
    // 128 flows x 18 datagrams of 60,000 bytes: the old parking kept 16 of each, 123 MB.
    let payload = Bytes::from(vec![0xa5; 60_000]);
    let growth = peak_growth(server.pid(), Duration::from_secs(2), async {
        for flow in 0..128u64 {
            // Three to a WebSocket message, under the 256 KiB message cap.
            for _ in 0..16 / 3 + 1 {
                let frames: Vec<Frame> = (0..3)
                    .map(|_| Frame::Datagram {
                        flow: flow * 2,
                        data: payload.clone(),
                    })
                    .collect();
                p.send(&frames).await;
            }
        }
    })
    .await;
    check_bound(&mut server, "parked datagrams", growth, BOUND_PARKED);
}

/// Floods `w` with opens of a name no service holds, 250 to a message at `per_sec`, until a
/// write fails or stalls (the server ended the connection, or stopped reading it); how many
/// were sent.
async fn flood_refused_opens(w: &mut WsWriter<WriteHalf<TcpStream>>, per_sec: u64) -> u64 {
    let mut next = 0u64;
    let pause = Duration::from_micros(250 * 1_000_000 / per_sec);
    for _ in 0..2_000 {
        let mut b = BytesMut::new();
        for _ in 0..250 {
            Frame::StreamOpen {
                id: StreamId::new(Side::Client, next),
                target: "nothing-here".into(),
            }
            .encode(&mut b)
            .unwrap();
            next += 1;
        }
        let len = b.len();
        match tokio::time::timeout(Duration::from_secs(10), w.send(&[b.freeze()], len)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        tokio::time::sleep(pause).await;
    }
    next
}

/// What a peer read from the server until the connection ended.
struct Ending {
    frames: u64,
    bytes: usize,
    goaway: Option<(u64, String)>,
    /// How the read ended ("no end" when the server never ended the connection).
    end: String,
    close: Option<culvert_transport::wsframe::PeerClose>,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} frames, {} bytes, GoAway {:?}, then {}; close: {:?}",
            self.frames, self.bytes, self.goaway, self.end, self.close
        )
    }
}

/// Reads everything the server sends until the connection ends (or [`WAIT`] passes).
async fn read_to_end(r: &mut WsReader<ReadHalf<TcpStream>>) -> Ending {
    let mut d = culvert_proto::FrameDecoder::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut frames, mut bytes, mut goaway) = (0u64, 0usize, None);
    let end = loop {
        match tokio::time::timeout_at(deadline, r.next()).await {
            Ok(Ok(culvert_transport::wsframe::WsIn::Data(b))) => {
                bytes += b.len();
                d.push(b);
                loop {
                    match d.next_frame() {
                        Ok(Some(Frame::GoAway { code, reason })) => goaway = Some((code, reason)),
                        Ok(Some(_)) => frames += 1,
                        Ok(None) => break,
                        Err(e) => panic!("the server sent an undecodable frame: {e}"),
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break e.to_string(),
            Err(_) => break "no end".into(),
        }
    };
    Ending {
        frames,
        bytes,
        goaway,
        end,
        close: r.peer_close().cloned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_opens_while_never_reading_stay_under_the_bound_and_end_with_goaway() {
    let admin = free_port();
    let (_dir, mut server, port, token) = server_with_admin("oracle-refused", admin);
    // 1. Opens of a name no service holds, faster than the reset limit (4,096 a second,
    // bursts of 8,192), from a peer that never reads: the server's refusals back up into
    // its socket and its control queue. Its memory stays under the bound, and it ends the
    // connection (for the resets, for its control queue, or, when it lags by more than the
    // stream limit's worth, as a protocol violation). Whether the GoAway saying why reaches
    // this peer depends on room in its socket buffer, which it never empties: about 13,500
    // refusals fill the default 128 KiB, and the limit trips after more than that whenever
    // the flood runs slower than about 9,000 opens a second (a loaded machine), so the
    // GoAway is checked with a peer that reads (2).
    let mut p = Peer::connect(port, &token).await;
    let mut sent = 0;
    let growth = peak_growth(server.pid(), Duration::from_secs(2), async {
        sent = flood_refused_opens(&mut p.w, 12_500).await;
    })
    .await;
    check_bound(
        &mut server,
        &format!("never reading: {sent} refused opens sent"),
        growth,
        BOUND_REFUSED_OPENS,
    );
    let ending = read_to_end(&mut p.r).await;
    eprintln!("never reading: then read {ending}");
    assert_ne!(ending.end, "no end", "the server ended the connection");

    // 2. The same flood from a peer that reads all the while (and acts on none of it): the
    // reset limit ends the connection with a GoAway that says why, and a close frame. A
    // loaded machine can still make the server lag past the stream limit (a protocol
    // violation, no GoAway); then it tries again, slower (each attempt a new connection).
    let mut goaway = None;
    for (attempt, per_sec) in [12_500u64, 8_000, 6_000, 5_000].into_iter().enumerate() {
        let Peer { mut w, mut r } = Peer::connect(port, &token).await;
        let reader = tokio::spawn(async move { read_to_end(&mut r).await });
        let sent = flood_refused_opens(&mut w, per_sec).await;
        let ending = reader.await.expect("the reader task");
        eprintln!("reading, attempt {attempt}: {sent} sent at {per_sec}/s, read {ending}");
        if let Some(g) = ending.goaway {
            assert_eq!(
                ending.close.as_ref().and_then(|c| c.code),
                Some(1008),
                "a close frame (policy violation) follows the GoAway"
            );
            goaway = Some(g);
            break;
        }
    }
    eprintln!("server log (tail):\n{}", tail(&server));
    let (code, reason) = goaway.expect("the server sent GoAway before closing");
    eprintln!("GoAway {code}: {reason}");
    assert_eq!(code, culvert_proto::goaway_code::ENHANCE_YOUR_CALM);
    assert!(
        reason.contains("resets") || reason.contains("not reading"),
        "{reason}"
    );
    assert!(server.exited().is_none(), "the server is still up");
    // And the metrics count it.
    let limited = |l: &str| {
        admin_get(admin, "/metrics")
            .and_then(|(_, body)| {
                metric(
                    &body,
                    &format!("culvert_connections_limited_total{{limit=\"{l}\"}}"),
                )
            })
            .unwrap_or(0)
    };
    assert!(
        poll_until(WAIT, || limited("resets") + limited("control_queue") >= 1),
        "culvert_connections_limited_total counts the connection"
    );
}
