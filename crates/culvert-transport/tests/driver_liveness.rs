//! Liveness of one multiplexed connection whatever its socket does: the timers fire while
//! a write is blocked, a write that moves nothing ends the connection, an abort closes the
//! socket even mid-write, and a silent connection turns suspect before it is declared dead.
//!
//! Each test drives a real [`Mux`] over an in-memory pipe whose far end the test controls
//! byte by byte (a peer that never reads, or one that only sends heartbeats). On the
//! driver before these checks existed, the first three hung: its timers ran only while the
//! writer was idle.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use culvert_proto::{Config, Connection, Control, Frame, Side};
use culvert_transport::wsframe::{Role, WsConn, WsWriter};
use culvert_transport::{Mux, MuxEvent};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc::UnboundedReceiver;

/// Short timers, so each test takes a few seconds; every bound below derives from them.
fn config() -> Config {
    Config {
        heartbeat_interval: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(800),
        ..Config::default()
    }
}

/// A client-side Mux over a pipe of `pipe` bytes; the test holds the far end.
fn mux_over_pipe(pipe: usize) -> (Mux, UnboundedReceiver<MuxEvent>, DuplexStream) {
    let (near, far) = tokio::io::duplex(pipe);
    let conn = Connection::new(Side::Client, config(), std::time::Instant::now()).unwrap();
    let (mux, events) = Mux::spawn_with(WsConn::new(near, Role::Client), conn);
    (mux, events, far)
}

/// Queues up to `n` bytes on a new stream (more than the pipe holds, so the writer
/// blocks); stops early when the stream's send buffer is full.
async fn fill(mux: &Mux, n: usize) {
    let s = mux.open("svc").await.unwrap();
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    for _ in 0..n / chunk.len() {
        match tokio::time::timeout(Duration::from_millis(50), s.send(chunk.clone())).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    // Keep the stream open (dropping it would reset it and discard what is queued).
    std::mem::forget(s);
}

async fn closed_reason(events: &mut UnboundedReceiver<MuxEvent>) -> String {
    while let Some(ev) = events.recv().await {
        if let MuxEvent::Closed(r) = ev {
            return r;
        }
    }
    "event channel ended".into()
}

/// Generous bound for "within the idle timeout": the timeout plus scheduling slack.
const NOTICE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn silent_peer_is_declared_dead_while_a_write_is_blocked() {
    // The far end neither reads nor writes: the pipe fills and the writer blocks.
    let (mux, mut events, _far) = mux_over_pipe(4096);
    fill(&mux, 256 * 1024).await;
    let reason = tokio::time::timeout(NOTICE, closed_reason(&mut events))
        .await
        .expect("a silent peer must be noticed while the writer is blocked");
    assert!(
        reason.contains("idle") || reason.contains("progress"),
        "reason: {reason}"
    );
    assert!(mux.is_closed());
}

#[tokio::test]
async fn a_write_without_progress_ends_the_connection_even_if_the_peer_talks() {
    // The far end sends heartbeats every 100 ms (so the peer never looks silent) but never
    // reads: only the write-progress deadline can end this connection.
    let (mux, mut events, far) = mux_over_pipe(4096);
    let (_far_r, far_w) = tokio::io::split(far);
    let talker = tokio::spawn(async move {
        let mut w = WsWriter::new(far_w, Role::Server);
        let mut buf = BytesMut::new();
        for ts in 1..200u64 {
            Frame::Control(Control::Heartbeat { timestamp: ts })
                .encode(&mut buf)
                .unwrap();
            let b = buf.split().freeze();
            if w.send(std::slice::from_ref(&b), b.len()).await.is_err() {
                return;
            }
            let _ = w.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    fill(&mux, 256 * 1024).await;
    let reason = tokio::time::timeout(NOTICE, closed_reason(&mut events))
        .await
        .expect("a write that makes no progress must end the connection");
    assert!(reason.contains("no progress"), "reason: {reason}");
    talker.abort();
}

#[tokio::test]
async fn abort_closes_the_socket_mid_write() {
    let (mux, _events, mut far) = mux_over_pipe(4096);
    fill(&mux, 256 * 1024).await;
    // Let the writer take the batch and block on the full pipe.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        mux.stats().proto.stream_bytes_sent > 0,
        "the writer is mid-write"
    );
    mux.abort("test abort");
    // The far end never reads (reading would unblock the write): it writes, and a write
    // fails once the near end of the pipe is gone, i.e. once the socket is closed.
    let gone = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match tokio::time::timeout(Duration::from_millis(100), far.write(b"x")).await {
                Ok(Err(_)) => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "abort must close the socket even while a write is blocked"
    );
}

#[tokio::test]
async fn a_silent_connection_turns_suspect_before_it_is_dead() {
    let (mux, mut events, _far) = mux_over_pipe(1 << 20);
    assert!(!mux.is_suspect(), "a fresh connection is not suspect");
    // Nothing comes back: after one interval a heartbeat is outstanding, after one and a
    // half the connection is suspect, after two (the idle timeout) it is closed.
    let started = std::time::Instant::now();
    let suspect_at = loop {
        if mux.is_suspect() {
            break started.elapsed();
        }
        assert!(started.elapsed() < NOTICE, "never turned suspect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // No earlier than one interval plus the margin (a lower bound: never flaky).
    assert!(
        suspect_at >= Duration::from_millis(600),
        "suspect after {suspect_at:?}"
    );
    let reason = tokio::time::timeout(NOTICE, closed_reason(&mut events))
        .await
        .expect("closed at the idle timeout");
    assert!(reason.contains("idle"), "reason: {reason}");
}
