//! Writes the seed corpus of every fuzz target: `cargo run --example seed_corpus -- <dir>`
//! from `fuzz/` (the committed seeds are in `fuzz/corpus`).
//!
//! - `frame_decoder/`: a mode byte (see that target) and whole frames of every type.
//! - `control_decoder/`: a type byte and the payload of a frame of every type.
//! - `connection/`: operation sequences in the byte layout `arbitrary` decodes `Input`
//!   from. The encoder below mirrors arbitrary 1.x (integers little-endian, `bool` as a
//!   byte, enum variants from a `u32`, collection elements each behind a `true` byte,
//!   string lengths taken from the end of the input) and every seed is checked by
//!   decoding it back, so a layout change in `arbitrary` fails here, not silently.

use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use culvert_fuzz::ops::{FuzzConfig, Input, Op};
use culvert_fuzz::{ArbControl, ArbFrame, ArbStreamId, ArbU64};
use culvert_proto::control::{AuthExt, ConnectExt, RegisterExt, RegisterOkExt};
use culvert_proto::{Control, Frame, ServiceProtocol, Side, StreamId, Token, HEADER_LEN};
use uuid::Uuid;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    frame_seeds(&dir.join("frame_decoder"));
    control_seeds(&dir.join("control_decoder"));
    connection_seeds(&dir.join("connection"));
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), data).unwrap();
}

fn uuid(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

/// One frame of every type (control messages with and without Culvert's extensions).
fn sample_frames() -> Vec<(&'static str, Frame)> {
    let id = StreamId::new(Side::Client, 0);
    let c = |c: Control| Frame::Control(c);
    vec![
        (
            "auth",
            c(Control::Auth {
                token: Token("tok".into()),
                client_id: uuid(1),
                ext: None,
            }),
        ),
        (
            "auth-ext",
            c(Control::Auth {
                token: Token("secret-token".into()),
                client_id: uuid(1),
                ext: Some(AuthExt {
                    version: 1,
                    capabilities: 0,
                }),
            }),
        ),
        (
            "auth-ok",
            c(Control::AuthOk {
                tunnel_id: uuid(2),
                ext: None,
            }),
        ),
        (
            "auth-fail",
            c(Control::AuthFail {
                reason: "bad token".into(),
            }),
        ),
        (
            "register",
            c(Control::Register {
                name: "web".into(),
                protocol: ServiceProtocol::Tcp,
                local_port: 8080,
                remote_port: 0,
                ext: None,
            }),
        ),
        (
            "register-ext",
            c(Control::Register {
                name: "dns".into(),
                protocol: ServiceProtocol::Udp,
                local_port: 53,
                remote_port: 5353,
                ext: Some(RegisterExt { flags: 1 }),
            }),
        ),
        (
            "register-ok",
            c(Control::RegisterOk {
                service_id: uuid(3),
                ext: None,
            }),
        ),
        (
            "register-ok-ext",
            c(Control::RegisterOk {
                service_id: uuid(3),
                ext: Some(RegisterOkExt {
                    assigned_port: 40000,
                    name: "web".into(),
                }),
            }),
        ),
        (
            "register-fail",
            c(Control::RegisterFail {
                reason: "port taken".into(),
            }),
        ),
        (
            "connect",
            c(Control::Connect {
                service_id: uuid(3),
                connection_id: uuid(4),
                client_addr: "192.0.2.1:5000".into(),
                ext: None,
            }),
        ),
        (
            "connect-ext",
            c(Control::Connect {
                service_id: uuid(3),
                connection_id: uuid(4),
                client_addr: "[2001:db8::1]:443".into(),
                ext: Some(ConnectExt {
                    stream_id: StreamId(300),
                }),
            }),
        ),
        (
            "connect-ack",
            c(Control::ConnectAck {
                connection_id: uuid(4),
            }),
        ),
        (
            "connect-fail",
            c(Control::ConnectFail {
                connection_id: uuid(4),
                reason: "refused".into(),
            }),
        ),
        ("heartbeat", c(Control::Heartbeat { timestamp: 123_456 })),
        (
            "heartbeat-ack",
            c(Control::HeartbeatAck { timestamp: 123_456 }),
        ),
        (
            "unregister",
            c(Control::Unregister {
                service_id: uuid(3),
            }),
        ),
        (
            "disconnect",
            c(Control::Disconnect {
                reason: "bye".into(),
            }),
        ),
        (
            "stream-open",
            Frame::StreamOpen {
                id,
                target: "web".into(),
            },
        ),
        (
            "stream-data",
            Frame::StreamData {
                id: StreamId(70),
                data: Bytes::from_static(b"hello, tunnel"),
            },
        ),
        ("stream-fin", Frame::StreamFin { id }),
        (
            "stream-reset",
            Frame::StreamReset {
                id: StreamId(20_000),
                code: 2,
            },
        ),
        (
            "stream-credit",
            Frame::StreamCredit {
                id,
                increment: 1 << 20,
            },
        ),
        ("conn-credit", Frame::ConnCredit { increment: 7 << 20 }),
        ("max-streams", Frame::MaxStreams { count: 4096 }),
        (
            "datagram",
            Frame::Datagram {
                flow: 1 << 31,
                data: Bytes::from_static(b"\x00\x01udp"),
            },
        ),
        (
            "go-away",
            Frame::GoAway {
                code: 0,
                reason: "restart".into(),
            },
        ),
    ]
}

fn encode(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b).unwrap();
    b.to_vec()
}

fn frame_seeds(dir: &Path) {
    let frames = sample_frames();
    for (name, f) in &frames {
        let mut v = vec![0x00];
        v.extend(encode(f));
        write(dir, name, &v);
    }
    let all: Vec<u8> = frames.iter().flat_map(|(_, f)| encode(f)).collect();
    let n = u16::try_from(all.len()).unwrap();
    // Every frame back to back, cut at three places (a header, a payload, near the end).
    let mut v = vec![0x03];
    for cut in [3u16, 40, n - 2] {
        v.extend(cut.to_le_bytes());
    }
    v.extend(&all);
    write(dir, "all-split3", &v);
    // The same, lazily drained: pushed again before the decoder was drained.
    v[0] = 0x43;
    write(dir, "all-split3-lazy", &v);
    // A few frames one byte at a time.
    let mut v = vec![0x80];
    for (_, f) in &frames[17..21] {
        v.extend(encode(f));
    }
    write(dir, "bytewise", &v);
    write(dir, "unknown-type", &[0x00, 0x99, 0, 0, 0, 0]);
    write(dir, "oversize", &[0x00, 0x52, 0, 0, 0, 9]);
    let mut v = vec![0x00];
    v.extend(&encode(&frames[0].1)[..HEADER_LEN + 3]);
    write(dir, "truncated", &v);
}

fn control_seeds(dir: &Path) {
    for (name, f) in sample_frames() {
        // The type byte, then the payload (the length field dropped).
        let e = encode(&f);
        let mut v = vec![e[0]];
        v.extend(&e[HEADER_LEN..]);
        write(dir, name, &v);
    }
}

/// Writes values in the byte layout `Arbitrary` reads them from.
#[derive(Default)]
struct Enc {
    /// Read from the front.
    front: Vec<u8>,
    /// Collection and string lengths, read from the end (first read = last byte).
    back: Vec<u8>,
}

impl Enc {
    fn u8(&mut self, v: u8) {
        self.front.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.front.extend(v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.front.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.front.extend(v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// Variant `i` of an enum with `n` variants: arbitrary picks `(x * n) >> 32` for a `u32` x.
    fn variant(&mut self, i: u32, n: u32) {
        assert!(i < n);
        self.u32((u64::from(i) << 32).div_ceil(u64::from(n)) as u32);
    }
    /// A string: its length from the end (one byte while the input is at most 257
    /// bytes, which `finish` checks), its bytes from the front.
    fn string(&mut self, s: &str) {
        self.back.push(u8::try_from(s.len()).unwrap());
        self.front.extend(s.as_bytes());
    }
    fn byte_vec(&mut self, b: &[u8]) {
        for x in b {
            self.bool(true);
            self.u8(*x);
        }
        self.bool(false);
    }
    fn side(&mut self, s: Side) {
        self.variant(
            match s {
                Side::Client => 0,
                Side::Server => 1,
            },
            2,
        );
    }
    fn arb_u64(&mut self, v: &ArbU64) {
        match *v {
            ArbU64::Small(n) => {
                self.variant(0, 3);
                self.u8(n);
            }
            ArbU64::Medium(n) => {
                self.variant(1, 3);
                self.u16(n);
            }
            ArbU64::Any(n) => {
                self.variant(2, 3);
                self.u64(n);
            }
        }
    }
    fn stream_id(&mut self, v: &ArbStreamId) {
        match *v {
            ArbStreamId::Small(n) => {
                self.variant(0, 2);
                self.u8(n);
            }
            ArbStreamId::Any(id) => {
                self.variant(1, 2);
                self.u64(id.0);
            }
        }
    }
    fn control(&mut self, c: &ArbControl) {
        match c {
            ArbControl::AuthOk { tunnel_id } => {
                self.variant(1, 13);
                self.front.extend(tunnel_id);
            }
            ArbControl::Disconnect { reason } => {
                self.variant(12, 13);
                self.string(reason);
            }
            other => unimplemented!("seed encoder for {other:?}"),
        }
    }
    fn frame(&mut self, f: &ArbFrame) {
        match f {
            ArbFrame::Control(c) => {
                self.variant(0, 10);
                self.control(c);
            }
            ArbFrame::StreamData { id, data } => {
                self.variant(2, 10);
                self.stream_id(id);
                self.byte_vec(data);
            }
            ArbFrame::ConnCredit { increment } => {
                self.variant(6, 10);
                self.arb_u64(increment);
            }
            ArbFrame::MaxStreams { count } => {
                self.variant(7, 10);
                self.arb_u64(count);
            }
            other => unimplemented!("seed encoder for {other:?}"),
        }
    }
    fn config(&mut self, c: &Option<FuzzConfig>) {
        self.bool(c.is_some());
        if let Some(c) = c {
            self.u8(c.stream_window);
            self.u8(c.max_stream_window);
            self.u8(c.connection_window);
            self.u8(c.max_concurrent_streams);
            self.u8(c.credit_divisor);
            self.u16(c.quantum);
            self.u32(c.stream_send_buffer);
            self.u32(c.connection_send_buffer);
            self.u8(c.datagram_queue_len);
            self.u32(c.datagram_queue_bytes);
        }
    }
    fn op(&mut self, op: &Op) {
        const N: u32 = 17;
        match op {
            Op::Open { side, target } => {
                self.variant(0, N);
                self.side(*side);
                self.string(target);
            }
            Op::Write {
                side,
                stream,
                len,
                seed,
            } => {
                self.variant(1, N);
                self.side(*side);
                self.u8(*stream);
                self.u16(*len);
                self.u8(*seed);
            }
            Op::Finish { side, stream } => {
                self.variant(2, N);
                self.side(*side);
                self.u8(*stream);
            }
            Op::Reset { side, stream, code } => {
                self.variant(3, N);
                self.side(*side);
                self.u8(*stream);
                self.arb_u64(code);
            }
            Op::Read { side, stream, max } => {
                self.variant(4, N);
                self.side(*side);
                self.u8(*stream);
                self.u16(*max);
            }
            Op::ReadAll { side } => {
                self.variant(5, N);
                self.side(*side);
            }
            Op::SendDatagram {
                side,
                flow,
                len,
                seed,
            } => {
                self.variant(6, N);
                self.side(*side);
                self.arb_u64(flow);
                self.u16(*len);
                self.u8(*seed);
            }
            Op::RecvDatagram { side } => {
                self.variant(7, N);
                self.side(*side);
            }
            Op::GoAway { side, code, reason } => {
                self.variant(8, N);
                self.side(*side);
                self.arb_u64(code);
                self.string(reason);
            }
            Op::SendControl { side, msg } => {
                self.variant(9, N);
                self.side(*side);
                self.control(msg);
            }
            Op::Advance { millis } => {
                self.variant(10, N);
                self.u16(*millis);
            }
            Op::Step {
                fragment,
                small_batch,
            } => {
                self.variant(11, N);
                self.u16(*fragment);
                self.bool(*small_batch);
            }
            Op::Transfer { from, fragment } => {
                self.variant(12, N);
                self.side(*from);
                self.u16(*fragment);
            }
            Op::Drive { steps } => {
                self.variant(13, N);
                self.u8(*steps);
            }
            Op::SingleFrameBatches { side, on } => {
                self.variant(14, N);
                self.side(*side);
                self.bool(*on);
            }
            Op::InjectRaw { side, bytes } => {
                self.variant(15, N);
                self.side(*side);
                self.byte_vec(bytes);
            }
            Op::InjectFrame { side, frame } => {
                self.variant(16, N);
                self.side(*side);
                self.frame(frame);
            }
        }
    }
    fn input(mut self, input: &Input) -> Vec<u8> {
        self.config(&input.client);
        self.config(&input.server);
        for op in &input.ops {
            self.bool(true);
            self.op(op);
        }
        let mut v = self.front;
        v.extend(self.back.iter().rev());
        assert!(v.len() <= 257, "seed too long for one-byte lengths");
        v
    }
}

fn connection_seeds(dir: &Path) {
    use Side::{Client as C, Server as S};
    let open = |side, t: &str| Op::Open {
        side,
        target: t.into(),
    };
    let wr = |side, stream, len, seed| Op::Write {
        side,
        stream,
        len,
        seed,
    };
    let fin = |side, stream| Op::Finish { side, stream };
    let drive = || Op::Drive { steps: 64 };
    let read_all = |side| Op::ReadAll { side };
    let small = Some(FuzzConfig {
        stream_window: 0,
        max_stream_window: 0,
        connection_window: 0,
        max_concurrent_streams: 0,
        credit_divisor: 0,
        quantum: 0,
        stream_send_buffer: 1_000_000,
        connection_send_buffer: 3_000_000,
        datagram_queue_len: 3,
        datagram_queue_bytes: 100_000,
    });
    let seeds: Vec<(&str, Input)> = vec![
        (
            "echo",
            Input {
                client: None,
                server: None,
                ops: vec![
                    open(C, "web"),
                    wr(C, 0, 1000, 1),
                    fin(C, 0),
                    drive(),
                    read_all(S),
                    wr(S, 0, 1000, 2),
                    fin(S, 0),
                    drive(),
                    read_all(C),
                    drive(),
                ],
            },
        ),
        (
            "flow-control",
            Input {
                client: small,
                server: small,
                ops: vec![
                    open(C, "bulk"),
                    wr(C, 0, 65535, 3),
                    wr(C, 0, 65535, 4),
                    wr(C, 0, 65535, 5),
                    wr(C, 0, 65535, 6),
                    wr(C, 0, 65535, 7),
                    drive(),
                    Op::Read {
                        side: S,
                        stream: 0,
                        max: 1000,
                    },
                    drive(),
                    read_all(S),
                    drive(),
                    read_all(S),
                    drive(),
                ],
            },
        ),
        (
            "streams-both-sides",
            Input {
                client: None,
                server: None,
                ops: vec![
                    open(C, "a"),
                    open(S, "b"),
                    open(C, "c"),
                    wr(C, 0, 300, 1),
                    wr(S, 1, 300, 2),
                    wr(C, 2, 300, 3),
                    Op::Step {
                        fragment: 7,
                        small_batch: false,
                    },
                    Op::Reset {
                        side: C,
                        stream: 2,
                        code: ArbU64::Small(0),
                    },
                    fin(S, 1),
                    drive(),
                    read_all(C),
                    read_all(S),
                    drive(),
                ],
            },
        ),
        (
            "datagrams",
            Input {
                client: small,
                server: None,
                ops: vec![
                    Op::SendDatagram {
                        side: C,
                        flow: ArbU64::Small(1),
                        len: 1200,
                        seed: 1,
                    },
                    Op::SendDatagram {
                        side: S,
                        flow: ArbU64::Medium(9000),
                        len: 60000,
                        seed: 2,
                    },
                    Op::SendDatagram {
                        side: S,
                        flow: ArbU64::Small(2),
                        len: 0,
                        seed: 3,
                    },
                    drive(),
                    Op::RecvDatagram { side: S },
                    Op::RecvDatagram { side: C },
                    Op::RecvDatagram { side: C },
                ],
            },
        ),
        (
            "go-away",
            Input {
                client: None,
                server: None,
                ops: vec![
                    open(C, "x"),
                    wr(C, 0, 10, 1),
                    Op::GoAway {
                        side: S,
                        code: ArbU64::Small(0),
                        reason: "restart".into(),
                    },
                    open(C, "y"),
                    drive(),
                    open(C, "z"),
                    read_all(S),
                    drive(),
                ],
            },
        ),
        (
            "heartbeat-idle",
            Input {
                client: None,
                server: None,
                ops: vec![
                    Op::Advance { millis: 10_000 },
                    drive(),
                    Op::Advance { millis: 10_000 },
                    drive(),
                    Op::Advance { millis: 15_000 },
                    Op::Advance { millis: 15_000 },
                ],
            },
        ),
        (
            "single-frame-batches",
            Input {
                client: None,
                server: None,
                ops: vec![
                    Op::SingleFrameBatches { side: C, on: true },
                    Op::SendControl {
                        side: C,
                        msg: ArbControl::AuthOk { tunnel_id: [7; 16] },
                    },
                    open(C, "s"),
                    wr(C, 0, 5000, 9),
                    Op::Transfer {
                        from: C,
                        fragment: 0,
                    },
                    Op::Transfer {
                        from: C,
                        fragment: 3,
                    },
                    Op::Step {
                        fragment: 0,
                        small_batch: true,
                    },
                    drive(),
                    read_all(S),
                ],
            },
        ),
        (
            "inject-raw",
            Input {
                client: None,
                server: None,
                ops: vec![
                    open(C, "w"),
                    drive(),
                    Op::InjectRaw {
                        side: S,
                        bytes: vec![0x51, 0, 0, 0, 3, 0, b'h', b'i'],
                    },
                    Op::InjectRaw {
                        side: C,
                        bytes: vec![0x52, 0, 0],
                    },
                    drive(),
                ],
            },
        ),
        (
            "inject-frames",
            Input {
                client: None,
                server: None,
                ops: vec![
                    open(C, "w"),
                    drive(),
                    Op::InjectFrame {
                        side: S,
                        frame: ArbFrame::StreamData {
                            id: ArbStreamId::Small(0),
                            data: b"xyz".to_vec(),
                        },
                    },
                    Op::InjectFrame {
                        side: C,
                        frame: ArbFrame::ConnCredit {
                            increment: ArbU64::Medium(1),
                        },
                    },
                    Op::InjectFrame {
                        side: C,
                        frame: ArbFrame::Control(ArbControl::Disconnect { reason: "x".into() }),
                    },
                    Op::InjectFrame {
                        side: S,
                        frame: ArbFrame::MaxStreams {
                            count: ArbU64::Small(5),
                        },
                    },
                    drive(),
                    read_all(S),
                ],
            },
        ),
    ];
    for (name, input) in seeds {
        let bytes = Enc::default().input(&input);
        let back = Input::arbitrary_take_rest(Unstructured::new(&bytes)).unwrap();
        assert_eq!(
            format!("{back:?}"),
            format!("{input:?}"),
            "seed {name} does not decode to itself"
        );
        write(dir, name, &bytes);
    }
}
