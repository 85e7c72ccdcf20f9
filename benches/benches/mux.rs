//! Measures bulk transfer through two multiplexers in memory: Culvert's sans-IO `Pair` against yamux 0.13 on the same workload.
//!
//! Workload per iteration: the client opens N streams (1, 16, 256), writes
//! `TOTAL` bytes split evenly across them in chunks of at most 64 KiB, and
//! finishes each; the server reads every stream to its end and the byte count is
//! checked. Connection set-up is inside the measurement for both (it is
//! negligible next to 8 MiB).
//!
//! Culvert: the two connections of a `culvert_testkit::Pair`, stepped by this file
//! (one batch of at most `BATCH` bytes each way per step) so that each variant
//! measures one send path: `poll_transmit` into a reused buffer, the same with the
//! buffer presized, and `poll_transmit_segments` gathered into one message.
//!
//! yamux runs on a current-thread tokio runtime over `tokio::io::duplex` (with
//! `tokio_util::compat`), so neither side gets a second core; three configs.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culvert_proto::{Config, Connection, Event, ReadOutcome, StreamId, Transmit};
use culvert_testkit::{Pair, BATCH};
use futures::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::TokioAsyncReadCompatExt;

mod common;
use common::BenchClock;

/// Bytes moved per iteration, across all streams.
const TOTAL: usize = 8 * 1024 * 1024;
/// Largest `Bytes` handed to one write.
const CHUNK: usize = 64 * 1024;
/// Stream counts compared.
const STREAMS: [usize; 3] = [1, 16, 256];
/// Capacity of the in-memory pipe under yamux, each direction.
const DUPLEX_BUF: usize = 1024 * 1024;
/// Upper bound on pair steps, so a stalled state machine fails instead of hanging.
const MAX_STEPS: usize = 1_000_000;

fn chunk() -> Bytes {
    Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

// ----- Culvert ---------------------------------------------------------------------------

/// Writes what the stream accepts of its remaining share; finishes it once all is queued.
fn pump(c: &mut Connection, id: StreamId, remaining: &mut usize, chunk: &Bytes) {
    while *remaining > 0 {
        let n = (*remaining).min(chunk.len());
        let w = c.write(id, chunk.slice(..n)).expect("stream open");
        *remaining -= w;
        if w < n {
            return; // Event::Writable resumes it.
        }
    }
    c.finish(id).expect("stream open");
}

/// Reads a stream until it would block; returns the bytes and whether it reached its end.
fn drain(c: &mut Connection, id: StreamId) -> (usize, bool) {
    let mut n = 0;
    loop {
        match c.read(id, usize::MAX).expect("known stream") {
            ReadOutcome::Data(b) => n += b.len(),
            ReadOutcome::WouldBlock => return (n, false),
            ReadOutcome::Eof => return (n, true),
        }
    }
}

/// How one batch leaves the sender and reaches the receiver as one message.
#[derive(Clone, Copy)]
enum Stepper {
    /// `poll_transmit` into one reused `BytesMut` (the testkit's original transfer): the
    /// buffer grows as frames are appended, copying the partial batch when it reallocates.
    Contiguous,
    /// The same, with the buffer reserved from `send_buffered()` before `poll_transmit`,
    /// so it does not reallocate mid-batch: what `poll_transmit` would do if it reserved once.
    Presized,
    /// `poll_transmit_segments` (headers plus the application's own payload `Bytes`), then
    /// gathered into one buffer of the batch's exact size: the one copy that a vectored
    /// socket write makes in the kernel.
    Segments,
}

/// State reused across the batches of one iteration.
#[derive(Default)]
struct Wire {
    buf: BytesMut,
    segments: Transmit,
}

/// Moves one batch from `from` to `to`; returns its size.
fn transfer(
    stepper: Stepper,
    from: &mut Connection,
    to: &mut Connection,
    wire: &mut Wire,
    now: Instant,
) -> usize {
    let n = match stepper {
        Stepper::Contiguous => from.poll_transmit(&mut wire.buf, BATCH),
        Stepper::Presized => {
            // Control frames are small; 4 KiB covers them next to the queued stream bytes.
            wire.buf.reserve((from.send_buffered() + 4096).min(BATCH));
            from.poll_transmit(&mut wire.buf, BATCH)
        }
        Stepper::Segments => {
            wire.segments.clear();
            let n = from.poll_transmit_segments(&mut wire.segments, BATCH);
            wire.buf.reserve(n);
            for s in &wire.segments.segments {
                wire.buf.extend_from_slice(s);
            }
            n
        }
    };
    if n > 0 {
        to.handle_bytes(now, wire.buf.split().freeze())
            .expect("no protocol error");
    }
    n
}

/// One batch each way, client first (as `Pair::step`).
fn step(p: &mut Pair, stepper: Stepper, wire: &mut Wire) {
    transfer(stepper, &mut p.client, &mut p.server, wire, p.now);
    transfer(stepper, &mut p.server, &mut p.client, wire, p.now);
}

/// One iteration of the workload over a Culvert pair; returns the bytes the server read.
fn culvert_transfer(config: &Config, stepper: Stepper, streams: usize, chunk: &Bytes) -> usize {
    let mut p = Pair::new(config.clone());
    let mut wire = Wire::default();
    // Deliver the initial credit and stream limit (100 streams before MaxStreams arrives).
    step(&mut p, stepper, &mut wire);
    let per = TOTAL / streams;
    let ids: Vec<StreamId> = (0..streams)
        .map(|_| p.client.open_stream("bench").expect("stream limit"))
        .collect();
    let mut remaining = vec![per; streams];
    for (i, id) in ids.iter().enumerate() {
        pump(&mut p.client, *id, &mut remaining[i], chunk);
    }
    let mut done = vec![false; streams];
    let mut finished = 0;
    let mut received = 0;
    for _ in 0..MAX_STEPS {
        step(&mut p, stepper, &mut wire);
        while let Some(e) = p.client.poll_event() {
            if let Event::Writable(id) = e {
                let i = id.sequence() as usize;
                pump(&mut p.client, id, &mut remaining[i], chunk);
            }
        }
        while let Some(e) = p.server.poll_event() {
            if let Event::Readable(id) | Event::Finished(id) = e {
                let i = id.sequence() as usize;
                if done[i] {
                    continue;
                }
                let (n, eof) = drain(&mut p.server, id);
                received += n;
                if eof {
                    done[i] = true;
                    finished += 1;
                }
            }
        }
        if finished == streams {
            assert_eq!(received, per * streams, "every byte arrives");
            return received;
        }
    }
    panic!("transfer stalled: {received} of {} bytes", per * streams);
}

// ----- yamux -----------------------------------------------------------------------------

type YamuxConfigFn = fn() -> yamux::Config;
type YamuxConn = yamux::Connection<tokio_util::compat::Compat<tokio::io::DuplexStream>>;

/// Drives a connection that expects no inbound streams until it closes or fails.
async fn drive(mut conn: YamuxConn) {
    match poll_fn(|cx| conn.poll_next_inbound(cx)).await {
        None => {}
        Some(Ok(_)) => panic!("unexpected inbound stream"),
        Some(Err(e)) => panic!("yamux connection error: {e}"),
    }
}

/// Opens an outbound stream while driving the connection (acks of earlier opens need reads).
async fn open(conn: &mut YamuxConn) -> yamux::Stream {
    poll_fn(|cx| {
        if let Poll::Ready(r) = conn.poll_new_outbound(cx) {
            return Poll::Ready(r.expect("open outbound"));
        }
        match conn.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(_))) => panic!("unexpected inbound stream"),
            Poll::Ready(other) => panic!("connection ended while opening: {other:?}"),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

async fn read_to_end(mut s: yamux::Stream) -> usize {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await.expect("read") {
            0 => return n,
            k => n += k,
        }
    }
}

async fn write_all(mut s: yamux::Stream, mut remaining: usize, chunk: Bytes) {
    while remaining > 0 {
        let n = remaining.min(chunk.len());
        s.write_all(&chunk[..n]).await.expect("write");
        remaining -= n;
    }
    s.close().await.expect("close");
}

/// One iteration of the workload over two yamux connections; returns the bytes the server read.
async fn yamux_transfer(config: yamux::Config, streams: usize, chunk: Bytes) -> usize {
    let (a, b) = tokio::io::duplex(DUPLEX_BUF);
    let mut client = yamux::Connection::new(a.compat(), config.clone(), yamux::Mode::Client);
    let mut server = yamux::Connection::new(b.compat(), config, yamux::Mode::Server);
    let per = TOTAL / streams;

    let server_task = tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..streams {
            let s = poll_fn(|cx| server.poll_next_inbound(cx))
                .await
                .expect("connection open")
                .expect("inbound stream");
            readers.spawn(read_to_end(s));
        }
        let collect = async {
            let mut total = 0;
            while let Some(r) = readers.join_next().await {
                total += r.expect("reader task");
            }
            total
        };
        tokio::select! {
            total = collect => total,
            () = drive(server) => panic!("server connection ended early"),
        }
    });

    let mut writers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let s = open(&mut client).await;
        writers.push(tokio::spawn(write_all(s, per, chunk.clone())));
    }
    let client_task = tokio::spawn(drive(client));
    let received = server_task.await.expect("server task");
    for w in writers {
        w.await.expect("writer task");
    }
    client_task.abort();
    assert_eq!(received, per * streams, "every byte arrives");
    received
}

/// yamux with a larger window budget: no connection receive-window cap (streams may
/// auto-tune past 256 KiB) and 64 KiB data frames instead of 16 KiB.
fn yamux_large() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_connection_receive_window(None);
    c.set_split_send_size(64 * 1024);
    c
}

/// yamux with only the connection receive-window cap lifted (frames stay 16 KiB).
fn yamux_unbounded_window() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_connection_receive_window(None);
    c
}

fn mux(c: &mut Criterion<BenchClock>) {
    let chunk = chunk();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("mux");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);

    let config = Config::default();
    for (name, stepper) in [
        ("culvert", Stepper::Contiguous),
        ("culvert_presized", Stepper::Presized),
        ("culvert_segments", Stepper::Segments),
    ] {
        for n in STREAMS {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter(|| culvert_transfer(&config, stepper, n, &chunk))
            });
        }
    }
    let yamux_configs: [(&str, YamuxConfigFn); 3] = [
        ("yamux_default", yamux::Config::default),
        ("yamux_unbounded_window", yamux_unbounded_window),
        ("yamux_large", yamux_large),
    ];
    for (name, make) in yamux_configs {
        for n in STREAMS {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter(|| rt.block_on(yamux_transfer(make(), n, chunk.clone())))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = mux
}
criterion_main!(benches);
