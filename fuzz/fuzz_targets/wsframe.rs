//! The WebSocket framer (`culvert_transport::wsframe`), both halves, over a scripted socket
//! (short reads and writes, `Pending`).
//!
//! Reader: arbitrary bytes from a peer of either role never panic; the reader yields at
//! most the bytes it was given, never an empty data item, and ends with a close, an EOF or
//! an `InvalidData` error that carries one of the close codes RFC 6455 assigns (1002, 1003,
//! 1007, 1009).
//!
//! Writer: arbitrary messages (data in segments, pings, a close with a code and reason)
//! written through short writes, vectored or not, are read back by a reader of the other
//! role exactly: the data bytes in order, each ping, and the close code and reason (cut to
//! 123 bytes at a character boundary).
#![no_main]

use std::io;

use arbitrary::Arbitrary;
use bytes::Bytes;
use culvert_fuzz::io::{runtime, AtEnd, Script, ScriptedIo};
use culvert_transport::wsframe::{close_code, Role, WsIn, WsReader, WsWriter};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Msg {
    Data(Vec<Vec<u8>>),
    Ping(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The reader's role (the writer takes the other).
    server: bool,
    vectored: bool,
    reads: Vec<u8>,
    writes: Vec<u8>,
    /// Bytes from a hostile peer.
    raw: Vec<u8>,
    messages: Vec<Msg>,
    close: Option<(u8, String)>,
}

/// Close codes a writer may send.
const CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 3000, 4999];

fn role(server: bool) -> Role {
    if server {
        Role::Server
    } else {
        Role::Client
    }
}

async fn hostile(input: &Input) {
    let io = ScriptedIo::new(
        input.raw.clone(),
        Script::new(input.reads.clone()),
        Script::new(Vec::new()),
        AtEnd::Eof,
        false,
    );
    let mut r = WsReader::new(io, role(input.server));
    let mut out = 0usize;
    for _ in 0..=input.raw.len() {
        match r.next().await {
            Ok(WsIn::Data(d)) => {
                assert!(!d.is_empty(), "an empty data item");
                out += d.len();
            }
            Ok(WsIn::Ping(p)) => out += p.len(),
            Ok(WsIn::Close) => {
                assert!(r.peer_close().is_some());
                break;
            }
            Err(e) => {
                match e.kind() {
                    io::ErrorKind::UnexpectedEof => assert!(close_code(&e).is_none()),
                    io::ErrorKind::InvalidData => {
                        let (code, _) = close_code(&e).expect("a protocol error has a close code");
                        assert!(
                            matches!(code, 1002 | 1003 | 1007 | 1009),
                            "close code {code}"
                        );
                    }
                    k => panic!("unexpected error kind {k:?}: {e}"),
                }
                break;
            }
        }
    }
    assert!(
        out <= input.raw.len(),
        "{out} bytes out of {} in",
        input.raw.len()
    );
}

async fn round_trip(input: &Input) {
    let sink = ScriptedIo::new(
        Vec::new(),
        Script::new(Vec::new()),
        Script::new(input.writes.clone()),
        AtEnd::Eof,
        input.vectored,
    );
    let output = sink.output.clone();
    let mut w = WsWriter::new(sink, role(!input.server));
    let mut want_data = Vec::new();
    let mut want_pings = Vec::new();
    for m in &input.messages {
        match m {
            Msg::Data(segs) => {
                let segs: Vec<Bytes> = segs.iter().map(|s| Bytes::copy_from_slice(s)).collect();
                let len = segs.iter().map(Bytes::len).sum();
                if len > culvert_transport::ws::BATCH_CAP {
                    continue;
                }
                w.send(&segs, len).await.expect("a scripted write");
                segs.iter().for_each(|s| want_data.extend_from_slice(s));
            }
            Msg::Ping(p) => {
                w.send_control(0x9, p).await.expect("a scripted write");
                want_pings.push(p[..p.len().min(125)].to_vec());
            }
        }
    }
    let close = input
        .close
        .as_ref()
        .map(|(c, reason)| (CODES[usize::from(*c) % CODES.len()], reason));
    match close {
        Some((code, reason)) => w.close_with(code, reason).await.expect("a scripted write"),
        None => w.close().await.expect("a scripted write"),
    }
    let wire = std::mem::take(&mut *output.lock().unwrap());
    let io = ScriptedIo::new(
        wire,
        Script::new(input.reads.clone()),
        Script::new(Vec::new()),
        AtEnd::Eof,
        false,
    );
    let mut r = WsReader::new(io, role(input.server));
    let (mut data, mut pings) = (Vec::new(), Vec::new());
    loop {
        match r.next().await.expect("our own frames read back") {
            WsIn::Data(d) => data.extend_from_slice(&d),
            WsIn::Ping(p) => pings.push(p.to_vec()),
            WsIn::Close => break,
        }
    }
    assert_eq!(data, want_data);
    assert_eq!(pings, want_pings);
    let got = r.peer_close().expect("a close frame");
    match close {
        Some((code, reason)) => {
            assert_eq!(got.code, Some(code));
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            assert_eq!(got.reason, reason[..end]);
        }
        None => assert_eq!(got.code, Some(close_code::NORMAL)),
    }
}

fuzz_target!(|input: Input| {
    runtime().block_on(async {
        hostile(&input).await;
        round_trip(&input).await;
    });
});
