//! The workloads of `culvert bench`, each run against one address of a bench service
//! (see [`super::service`] for the protocol): through the tunnel, then directly.
//!
//! Each runs for [`Settings::duration`] (and at most a fixed count where one applies); every
//! single network wait is bounded by [`Settings::timeout`]. A connection that fails or
//! times out is counted in the result's `failed`, with the first error kept; it never
//! panics or stops the run.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::report::{Connections, Latency, Throughput, Udp};
use super::service::{ECHO, SINK, SOURCE};

/// Bytes of each latency request (and of its echo).
pub const LATENCY_MESSAGE: usize = 64;
/// Most round trips one latency run makes.
pub const MAX_ROUND_TRIPS: u64 = 1_000_000;
/// Most connections one connection-rate run opens (all workers together).
pub const MAX_CONNECTIONS: u64 = 100_000;
/// Bytes of each UDP datagram.
pub const UDP_PAYLOAD: usize = 512;
/// UDP datagrams in flight at once.
const UDP_WINDOW: u64 = 64;
/// With the UDP window full and no reply for this long, the datagrams in flight are taken
/// as lost and sending resumes.
const UDP_RETRY: Duration = Duration::from_millis(100);
/// After the UDP run, replies still in flight are awaited until none came for this long.
const UDP_DRAIN: Duration = Duration::from_millis(500);
/// Size of the throughput writes and reads.
const CHUNK: usize = 64 << 10;
/// Largest latency the histogram holds, in nanoseconds (longer ones are clamped to it).
const HIST_MAX_NS: u64 = 60_000_000_000;

/// How long and how wide each workload runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Time each workload runs.
    pub duration: Duration,
    /// Parallel streams of the multi-stream throughput runs.
    pub streams: usize,
    /// Concurrent workers of the connection-rate run.
    pub clients: usize,
    /// Bound of every single network wait.
    pub timeout: Duration,
}

/// `fut`, failing with `TimedOut` after `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out after {limit:?}"),
        )
    })?
}

/// A TCP connection to `addr` with Nagle off, its first byte `mode` sent.
async fn connect(addr: SocketAddr, mode: u8, timeout: Duration) -> io::Result<TcpStream> {
    let mut s = bounded(timeout, "connect", TcpStream::connect(addr)).await?;
    s.set_nodelay(true)?;
    bounded(timeout, "write", s.write_all(&[mode])).await?;
    Ok(s)
}

/// Failures of one run: how many, and the first one's message.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, what: &str, e: impl std::fmt::Display) {
        tracing::debug!(%what, error = %e, "bench connection failed");
        self.count += 1;
        self.first.get_or_insert_with(|| e.to_string());
    }
}

/// One connection that serves as both probe and error message: connect, echo one byte,
/// close. `Ok` means a bench service answered at `addr`.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut s = connect(addr, ECHO, timeout).await?;
    bounded(timeout, "write", s.write_all(b"x")).await?;
    let mut back = [0u8; 1];
    bounded(timeout, "echo", s.read_exact(&mut back)).await?;
    if back != *b"x" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echoed byte differs",
        ));
    }
    Ok(())
}

/// Upload throughput: `streams` sink connections written to for the duration; bytes are
/// those the service counted, time runs until the last count came back.
pub async fn upload(addr: SocketAddr, streams: usize, s: &Settings) -> Throughput {
    let start = Instant::now();
    let deadline = start + s.duration;
    let timeout = s.timeout;
    let mut set = JoinSet::new();
    for _ in 0..streams {
        set.spawn(async move {
            let mut c = connect(addr, SINK, timeout).await?;
            let buf = vec![0xa5_u8; CHUNK];
            while Instant::now() < deadline {
                bounded(timeout, "write", c.write_all(&buf)).await?;
            }
            bounded(timeout, "shutdown", c.shutdown()).await?;
            let mut count = [0u8; 8];
            bounded(timeout, "sink count", c.read_exact(&mut count)).await?;
            io::Result::Ok(u64::from_be_bytes(count))
        });
    }
    collect_throughput(set, streams, start).await
}

/// Download throughput: `streams` source connections read from for the duration, then
/// half-closed (the service stops) and read to the end; time runs until the last ends.
pub async fn download(addr: SocketAddr, streams: usize, s: &Settings) -> Throughput {
    let start = Instant::now();
    let deadline = start + s.duration;
    let timeout = s.timeout;
    let mut set = JoinSet::new();
    for _ in 0..streams {
        set.spawn(async move {
            let mut c = connect(addr, SOURCE, timeout).await?;
            bounded(timeout, "write", c.write_all(&u64::MAX.to_be_bytes())).await?;
            let mut buf = vec![0u8; CHUNK];
            let mut got: u64 = 0;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match tokio::time::timeout(left.min(timeout), c.read(&mut buf)).await {
                    Ok(Ok(0)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the source closed early",
                        ))
                    }
                    Ok(Ok(n)) => got += n as u64,
                    Ok(Err(e)) => return Err(e),
                    Err(_) if left <= timeout => break,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("read timed out after {timeout:?}"),
                        ))
                    }
                }
            }
            // Stop the source, then take what is still in flight (within one timeout).
            bounded(timeout, "shutdown", c.shutdown()).await?;
            let drain = async {
                loop {
                    match c.read(&mut buf).await? {
                        0 => return io::Result::Ok(()),
                        n => got += n as u64,
                    }
                }
            };
            bounded(timeout, "the source's end after the half-close", drain).await?;
            io::Result::Ok(got)
        });
    }
    collect_throughput(set, streams, start).await
}

async fn collect_throughput(
    mut set: JoinSet<io::Result<u64>>,
    streams: usize,
    start: Instant,
) -> Throughput {
    let mut bytes = 0;
    let mut failures = Failures::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(n)) => bytes += n,
            Ok(Err(e)) => failures.add("stream", e),
            Err(e) => failures.add("stream task", e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Throughput {
        streams,
        bytes,
        secs,
        mib_per_s: bytes as f64 / (1 << 20) as f64 / secs.max(1e-9),
        failed: failures.count,
        first_error: failures.first,
    }
}

/// Round-trip latency: [`LATENCY_MESSAGE`]-byte requests echoed one at a time on one
/// connection (a new one after a failure), for the duration or [`MAX_ROUND_TRIPS`].
pub async fn latency(addr: SocketAddr, s: &Settings) -> Latency {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds");
    let mut failures = Failures::default();
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut conn: Option<TcpStream> = None;
    let mut msg = [0u8; LATENCY_MESSAGE];
    let mut back = [0u8; LATENCY_MESSAGE];
    while Instant::now() < deadline && hist.len() < MAX_ROUND_TRIPS {
        if conn.is_none() {
            match connect(addr, ECHO, s.timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    failures.add("connect", e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        msg[..8].copy_from_slice(&hist.len().to_be_bytes());
        let t0 = Instant::now();
        let trip = async {
            bounded(s.timeout, "write", c.write_all(&msg)).await?;
            bounded(s.timeout, "echo", c.read_exact(&mut back)).await?;
            io::Result::Ok(())
        }
        .await;
        let ns = t0.elapsed().as_nanos().min(u128::from(HIST_MAX_NS)) as u64;
        match trip {
            Ok(()) if back == msg => hist.saturating_record(ns.max(1)),
            Ok(()) => {
                failures.add("echo", "the echo differs from the request");
                conn = None;
            }
            Err(e) => {
                failures.add("round trip", e);
                conn = None;
            }
        }
    }
    Latency::from_histogram(
        &hist,
        start.elapsed().as_secs_f64(),
        failures.count,
        failures.first,
    )
}

/// Connection rate: `clients` workers each connecting, echoing one byte and closing, over
/// and over, for the duration or [`MAX_CONNECTIONS`] in all.
pub async fn connections(addr: SocketAddr, s: &Settings) -> Connections {
    let start = Instant::now();
    let deadline = start + s.duration;
    let timeout = s.timeout;
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Failures::default()));
    let mut set = JoinSet::new();
    for _ in 0..s.clients {
        let (done, failures) = (done.clone(), failures.clone());
        set.spawn(async move {
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_CONNECTIONS {
                match probe(addr, timeout).await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .add("connection", e);
                        // A refusing target would otherwise be hammered in a tight loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add("worker", e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed);
    let f = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
    Connections {
        clients: s.clients,
        count,
        secs,
        per_s: count as f64 / secs.max(1e-9),
        failed: f.count,
        first_error: f.first,
    }
}

/// UDP echo rate and loss: [`UDP_PAYLOAD`]-byte datagrams, at most [`UDP_WINDOW`] in
/// flight, for the duration; the rate counts the replies.
pub async fn udp(addr: SocketAddr, s: &Settings) -> Udp {
    let mut failures = Failures::default();
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid address")
    } else {
        "[::]:0".parse().expect("valid address")
    };
    let sock = match UdpSocket::bind(local).await {
        Ok(u) => u,
        Err(e) => {
            failures.add("udp bind", e);
            return Udp::failed(failures.count, failures.first);
        }
    };
    if let Err(e) = sock.connect(addr).await {
        failures.add("udp connect", e);
        return Udp::failed(failures.count, failures.first);
    }
    let mut out = vec![0u8; UDP_PAYLOAD];
    let mut inbuf = vec![0u8; UDP_PAYLOAD + 64];
    // Warm-up: a tunnel sets up a flow on its first datagram, and the datagrams meanwhile
    // may be dropped; the run counts steady-state loss. Its sequence number (u64::MAX) is
    // never counted as a reply.
    if let Err(e) = udp_warm_up(&sock, &mut out, &mut inbuf, s.timeout).await {
        failures.add("udp warm-up", e);
        return Udp::failed(failures.count, failures.first);
    }
    let (mut sent, mut received, mut outstanding) = (0u64, 0u64, 0u64);
    // A reply is one of ours if it has the size and a sequence number already sent.
    let ours = |n: usize, buf: &[u8], sent: u64| {
        n == UDP_PAYLOAD && u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")) < sent
    };
    let start = Instant::now();
    let deadline = start + s.duration;
    while Instant::now() < deadline {
        if outstanding < UDP_WINDOW {
            out[..8].copy_from_slice(&sent.to_be_bytes());
            match bounded(s.timeout, "udp send", sock.send(&out)).await {
                Ok(_) => {
                    sent += 1;
                    outstanding += 1;
                }
                Err(e) => {
                    failures.add("udp send", e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // Take the replies already there without waiting.
            while let Ok(n) = sock.try_recv(&mut inbuf) {
                if ours(n, &inbuf, sent) {
                    received += 1;
                    outstanding = outstanding.saturating_sub(1);
                }
            }
            continue;
        }
        tokio::select! {
            r = sock.recv(&mut inbuf) => match r {
                Ok(n) if ours(n, &inbuf, sent) => {
                    received += 1;
                    outstanding = outstanding.saturating_sub(1);
                }
                Ok(_) => {}
                Err(e) => {
                    failures.add("udp receive", e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Nothing came back for a while: give up on the datagrams in flight.
            _ = tokio::time::sleep(UDP_RETRY) => outstanding = 0,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Replies still on their way count; stop once none came for UDP_DRAIN.
    while received < sent {
        match tokio::time::timeout(UDP_DRAIN.min(s.timeout), sock.recv(&mut inbuf)).await {
            Ok(Ok(n)) if ours(n, &inbuf, sent) => received += 1,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let received = received.min(sent);
    let lost = sent - received;
    Udp {
        payload_bytes: UDP_PAYLOAD,
        sent,
        received,
        lost,
        loss_pct: if sent == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / sent as f64
        },
        secs,
        per_s: received as f64 / secs.max(1e-9),
        failed: failures.count,
        first_error: failures.first,
    }
}

/// Sends a datagram with sequence number `u64::MAX` every [`UDP_RETRY`] until one comes
/// back, for at most `timeout`.
async fn udp_warm_up(
    sock: &UdpSocket,
    out: &mut [u8],
    inbuf: &mut [u8],
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    out[..8].copy_from_slice(&u64::MAX.to_be_bytes());
    let mut last_error = None;
    while Instant::now() < deadline {
        if let Err(e) = sock.send(out).await {
            last_error = Some(e);
        }
        let wait = Instant::now() + UDP_RETRY;
        while let Ok(r) = tokio::time::timeout_at(wait, sock.recv(inbuf)).await {
            match r {
                Ok(n) if n == out.len() && inbuf[..8] == out[..8] => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    // Refused (nothing listening yet): wait out the retry interval.
                    last_error = Some(e);
                    tokio::time::sleep_until(wait).await;
                }
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        match last_error {
            Some(e) => format!("no UDP echo within {timeout:?} (last error: {e})"),
            None => format!("no UDP echo within {timeout:?}"),
        },
    ))
}
