//! The transport driver (`culvert_transport::Mux`: its reader and writer tasks, the
//! WebSocket framer and the connection) as a server over a scripted in-memory socket:
//! short reads, short writes and `Pending` in both directions, vectored or not.
//!
//! The peer's side is built from the input: well-formed frames (opens, data, credit,
//! resets, datagrams, control messages, going-away) and raw bytes, packed into masked
//! WebSocket messages cut where the input says, with pings, a close, or raw WebSocket
//! bytes between them; then the socket reports end-of-file. (Not silence: the driver's
//! protocol clock is the wall clock, so an idle timeout would take real seconds.) The
//! application accepts streams and, per the input, echoes what it reads, resets, or holds
//! them without reading; it opens streams of its own and sends datagrams.
//!
//! Checks: nothing panics; the connection ends (end-of-file or a violation) and every
//! task returns; everything the driver wrote is a
//! sequence of well-formed unmasked WebSocket frames whose binary payloads decode as
//! protocol frames (a write cut short by the close may truncate the last one), ending
//! with a close frame carrying a valid code when it got that far.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use culvert_fuzz::io::{runtime, AtEnd, Script, ScriptedIo};
use culvert_fuzz::ArbFrame;
use culvert_proto::{Config, FrameDecoder, Side};
use culvert_transport::wsframe::{apply_mask, Role, WsConn, WsIn, WsReader};
use culvert_transport::{Mux, MuxEvent};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Piece {
    /// A frame, appended to the current message.
    Frame(ArbFrame),
    /// Raw bytes, appended to the current message.
    Raw(Vec<u8>),
    /// Ends the current message (a binary frame, or several fragments).
    Cut { fragments: u8 },
    /// A ping between messages.
    Ping(Vec<u8>),
    /// A close frame with this body.
    Close(Vec<u8>),
    /// Raw WebSocket bytes between messages.
    WsRaw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AppOp {
    /// Echo what the stream reads until its end.
    Echo,
    /// Reset it at once.
    Reset(u8),
    /// Hold it, never reading.
    Hold,
    /// Read once, then drop it.
    ReadOnceThenDrop,
}

#[derive(Arbitrary, Debug)]
struct Input {
    reads: Vec<u8>,
    writes: Vec<u8>,
    vectored: bool,
    small_windows: bool,
    pieces: Vec<Piece>,
    app: Vec<AppOp>,
    /// Streams the application opens (targets), each sent a little data.
    opens: Vec<(String, Vec<u8>)>,
    datagrams: Vec<(u16, Vec<u8>)>,
}

/// One masked client frame.
fn ws_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8]) {
    out.push(b0);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&key);
    let mut p = payload.to_vec();
    apply_mask(&mut p, key, 0);
    out.extend_from_slice(&p);
}

/// The bytes the peer sends.
fn peer_bytes(pieces: &[Piece]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut msg = BytesMut::new();
    let flush = |wire: &mut Vec<u8>, msg: &mut BytesMut, fragments: u8| {
        if msg.is_empty() {
            return;
        }
        let parts = usize::from(fragments % 4) + 1;
        let step = msg.len().div_ceil(parts);
        let chunks: Vec<&[u8]> = msg.chunks(step.max(1)).collect();
        for (i, c) in chunks.iter().enumerate() {
            let op = if i == 0 { 0x2 } else { 0x0 };
            let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
            ws_frame(wire, fin | op, c);
        }
        msg.clear();
    };
    for p in pieces {
        match p {
            Piece::Frame(f) => {
                let _ = f.clone().get().encode(&mut msg);
            }
            Piece::Raw(b) => msg.extend_from_slice(b),
            Piece::Cut { fragments } => flush(&mut wire, &mut msg, *fragments),
            Piece::Ping(b) => ws_frame(&mut wire, 0x89, &b[..b.len().min(125)]),
            Piece::Close(b) => ws_frame(&mut wire, 0x88, &b[..b.len().min(125)]),
            Piece::WsRaw(b) => wire.extend_from_slice(b),
        }
        if msg.len() > 64 * 1024 {
            flush(&mut wire, &mut msg, 0);
        }
    }
    flush(&mut wire, &mut msg, 0);
    wire
}

/// Checks what the driver wrote: unmasked frames, binary payloads that decode as frames.
async fn check_output(out: Vec<u8>) {
    let io = ScriptedIo::new(out, Script::default(), Script::default(), AtEnd::Eof, false);
    let mut r = WsReader::new(io, Role::Client);
    let mut d = FrameDecoder::new();
    loop {
        match r.next().await {
            Ok(WsIn::Data(b)) => {
                d.push(b);
                loop {
                    match d.next_frame() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => panic!("the driver wrote an undecodable frame: {e}"),
                    }
                }
            }
            Ok(WsIn::Ping(_)) => panic!("the server side never pings"),
            Ok(WsIn::Close) => {
                let c = r.peer_close().expect("a close frame");
                assert!(c.code.is_some(), "the driver's close frame carries a code");
                return;
            }
            Err(e) => {
                // A write cut short by the close truncates the output; nothing else.
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
                return;
            }
        }
    }
}

async fn run(input: Input) {
    let io = ScriptedIo::new(
        peer_bytes(&input.pieces),
        Script::new(input.reads.clone()),
        Script::new(input.writes.clone()),
        AtEnd::Eof,
        input.vectored,
    );
    let output = io.output.clone();
    let mut config = Config::default();
    if input.small_windows {
        config.connection_window = 1024 * 1024;
        config.stream_send_buffer = 4096;
        config.connection_send_buffer = 64 * 1024;
        config.max_concurrent_streams = 100;
    }
    let (mux, mut events) =
        Mux::spawn(WsConn::new(io, Role::Server), Side::Server, config).expect("a valid config");
    let mut tasks = Vec::new();
    for (target, data) in input.opens.iter().take(8) {
        let m = mux.clone();
        let (target, data) = (target.clone(), Bytes::from(data.clone()));
        tasks.push(tokio::spawn(async move {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), m.open(&target)).await {
                let _ = s.send(data).await;
                let _ = s.finish();
            }
        }));
    }
    for (flow, data) in input.datagrams.iter().take(16) {
        let _ = mux.send_datagram(u64::from(*flow), Bytes::from(data.clone()));
    }
    let mut app = input.app.iter().copied().cycle();
    let has_app = !input.app.is_empty();
    while let Some(ev) = events.recv().await {
        match ev {
            MuxEvent::Incoming(s, _) => {
                let op = if has_app {
                    app.next().unwrap()
                } else {
                    AppOp::Echo
                };
                tasks.push(tokio::spawn(async move {
                    match op {
                        AppOp::Echo => {
                            while let Ok(Some(b)) = s.recv().await {
                                if s.send(b).await.is_err() {
                                    break;
                                }
                            }
                            let _ = s.finish();
                        }
                        AppOp::Reset(code) => s.reset(u64::from(code)),
                        AppOp::Hold => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(s);
                        }
                        AppOp::ReadOnceThenDrop => {
                            let _ = s.recv().await;
                        }
                    }
                }));
            }
            MuxEvent::Control(_) => mux.control_handled(),
            MuxEvent::GoingAway(_) => {}
            MuxEvent::Closed(_) => break,
        }
    }
    // Ended: every waiter is woken and returns (held streams sleep in paused time).
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    tokio::time::timeout(Duration::from_secs(60), mux.closed())
        .await
        .expect("a closed connection reports it");
    drop(mux);
    // Let the writer finish its close (bounded by its grace period in paused time).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let out = std::mem::take(&mut *output.lock().unwrap());
    check_output(out).await;
}

fuzz_target!(|input: Input| {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(3600), run(input))
            .await
            .expect("the connection ended");
    });
});
