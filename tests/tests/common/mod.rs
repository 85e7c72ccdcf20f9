//! Proptest strategies and helpers shared by the codec test files.
//!
//! Each test file includes this module with `mod common;` and uses only part
//! of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod codec;

use bytes::{Bytes, BytesMut};
use culvert_proto::control::{AuthExt, AuthOkExt, ConnectExt, RegisterExt, RegisterOkExt};
use culvert_proto::frame::MAX_TARGET_LEN;
use culvert_proto::{
    varint, Control, DecodeError, Frame, FrameDecoder, ServiceProtocol, StreamId, Target, Token,
};
use proptest::prelude::*;
use uuid::Uuid;

/// Decodes a lowercase or uppercase hex literal (whitespace ignored).
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).expect("ascii");
            u8::from_str_radix(s, 16).expect("hex digit")
        })
        .collect()
}

/// Encodes one frame with our encoder into a fresh buffer.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).expect("encodable frame");
    buf.to_vec()
}

/// Encodes one control message with our encoder into a fresh buffer.
pub fn encode_control(c: &Control) -> Vec<u8> {
    let mut buf = BytesMut::new();
    c.encode(&mut buf).expect("encodable control message");
    buf.to_vec()
}

/// The outcome of feeding a byte stream to a decoder: the frames, then the first error if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub frames: Vec<Frame>,
    pub error: Option<DecodeError>,
}

fn drain(d: &mut FrameDecoder, out: &mut Outcome) {
    if out.error.is_some() {
        // A failed decoder must stay silent.
        assert_eq!(d.next_frame(), Ok(None), "decoder yielded after an error");
        return;
    }
    loop {
        match d.next_frame() {
            Ok(Some(f)) => out.frames.push(f),
            Ok(None) => return,
            Err(e) => {
                out.error = Some(e);
                assert_eq!(d.next_frame(), Ok(None), "decoder yielded after an error");
                return;
            }
        }
    }
}

/// Feeds `chunks` one by one, draining the decoder after each push (the documented contract).
pub fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut d = FrameDecoder::new();
    let mut out = Outcome {
        frames: Vec::new(),
        error: None,
    };
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        drain(&mut d, &mut out);
    }
    drain(&mut d, &mut out);
    out
}

/// Feeds all of `chunks` before draining once (pushing again before draining).
pub fn decode_chunks_undrained<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut d = FrameDecoder::new();
    let mut out = Outcome {
        frames: Vec::new(),
        error: None,
    };
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
    }
    drain(&mut d, &mut out);
    out
}

/// Feeds `chunks` to a decoder that lets straddling `StreamData` frames out in parts
/// (`FrameDecoder::data_in_parts`), draining after each push unless `undrained`, and puts
/// the parts back together by `last_was_continuation`. Checks on the way that no part is
/// empty and that each continuation follows a `StreamData` part of the same stream.
pub fn decode_chunks_in_parts<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    undrained: bool,
) -> Outcome {
    let mut d = FrameDecoder::new();
    d.data_in_parts(true);
    let mut out = Outcome {
        frames: Vec::new(),
        error: None,
    };
    let drain_parts = |d: &mut FrameDecoder, out: &mut Outcome| loop {
        if out.error.is_some() {
            assert_eq!(d.next_frame(), Ok(None), "decoder yielded after an error");
            return;
        }
        match d.next_frame() {
            Ok(Some(f)) if d.last_was_continuation() => {
                let Frame::StreamData { id, data } = f else {
                    panic!("a continuation that is no StreamData: {f:?}");
                };
                assert!(!data.is_empty(), "an empty continuation of {id:?}");
                match out.frames.last_mut() {
                    Some(Frame::StreamData {
                        id: first,
                        data: so_far,
                    }) if *first == id => {
                        let mut joined = so_far.to_vec();
                        joined.extend_from_slice(&data);
                        *so_far = Bytes::from(joined);
                    }
                    other => panic!("a continuation of {id:?} after {other:?}"),
                }
            }
            Ok(Some(f)) => out.frames.push(f),
            Ok(None) => return,
            Err(e) => out.error = Some(e),
        }
    };
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        if !undrained {
            drain_parts(&mut d, &mut out);
        }
    }
    drain_parts(&mut d, &mut out);
    out
}

/// Feeds `bytes` in one push.
pub fn decode_whole(bytes: &[u8]) -> Outcome {
    decode_chunks([bytes])
}

/// Splits `bytes` at the given cut points (taken modulo the length, sorted, deduplicated).
pub fn split_at_points<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
        .collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

// ---- strings ----

/// Truncates `s` to at most `max` bytes at a char boundary.
pub fn truncate_to(mut s: String, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// Any UTF-8 text (ASCII, non-ASCII, control chars, astral planes) of up to `max_chars` chars.
pub fn text(max_chars: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter),
        prop::collection::vec(prop::char::range('\u{20}', '\u{7e}'), 0..=max_chars)
            .prop_map(String::from_iter),
        prop::collection::vec(
            prop::sample::select(vec!['é', 'ß', '✓', '€', '中', '𝄞', '🦀', '\0', '\u{feff}']),
            0..=max_chars
        )
        .prop_map(String::from_iter),
    ]
}

/// A string of at most `max` bytes, with the lengths near and at `max` well represented.
pub fn text_up_to(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text(40).prop_map(move |s| truncate_to(s, max)),
        1 => Just(String::new()),
        1 => text(max).prop_map(move |s| pad_to(truncate_to(s, max), max)),
    ]
}

/// Pads `s` with ASCII to exactly `len` bytes (`s` must not be longer).
pub fn pad_to(mut s: String, len: usize) -> String {
    while s.len() < len {
        s.push('x');
    }
    s
}

/// A service name: u8 length prefix, so at most 255 bytes; exactly 255 is common.
pub fn name() -> impl Strategy<Value = String> {
    text_up_to(255)
}

/// A reason or token: u16 length prefix; kept well under the frame cap.
pub fn reason() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => text(60),
        1 => text(600),
        1 => Just(String::new()),
    ]
}

// ---- numbers and ids ----

pub fn uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        8 => any::<[u8; 16]>().prop_map(Uuid::from_bytes),
        1 => Just(Uuid::nil()),
        1 => Just(Uuid::max()),
    ]
}

pub fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(65_535u16), Just(1u16), any::<u16>()]
}

pub fn timestamp() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()]
}

pub fn protocol() -> impl Strategy<Value = ServiceProtocol> {
    prop_oneof![Just(ServiceProtocol::Tcp), Just(ServiceProtocol::Udp)]
}

/// A varint-range integer, biased to the encoding-length boundaries.
pub fn varint_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..=varint::MAX,
        1 => 0u64..64,
        2 => prop::sample::select(vec![
            0,
            63,
            64,
            16_383,
            16_384,
            1_073_741_823,
            1_073_741_824,
            varint::MAX,
        ]),
    ]
}

pub fn stream_id() -> impl Strategy<Value = StreamId> {
    varint_value().prop_map(StreamId)
}

// ---- control messages ----

pub fn auth_ext() -> impl Strategy<Value = AuthExt> {
    (any::<u8>(), any::<u32>()).prop_map(|(version, capabilities)| AuthExt {
        version,
        capabilities,
    })
}

pub fn auth_ok_ext() -> impl Strategy<Value = AuthOkExt> {
    any::<u8>().prop_map(|version| AuthOkExt { version })
}

pub fn register_ext() -> impl Strategy<Value = RegisterExt> {
    any::<u8>().prop_map(|flags| RegisterExt { flags })
}

pub fn register_ok_ext() -> impl Strategy<Value = RegisterOkExt> {
    (port(), name()).prop_map(|(assigned_port, name)| RegisterOkExt {
        assigned_port,
        name,
    })
}

pub fn connect_ext() -> impl Strategy<Value = ConnectExt> {
    stream_id().prop_map(|stream_id| ConnectExt { stream_id })
}

/// Every control message, each with `ext` produced by the given strategies.
fn control_with(
    auth: BoxedStrategy<Option<AuthExt>>,
    register: BoxedStrategy<Option<RegisterExt>>,
    register_ok: BoxedStrategy<Option<RegisterOkExt>>,
    connect: BoxedStrategy<Option<ConnectExt>>,
    auth_ok: BoxedStrategy<Option<AuthOkExt>>,
) -> impl Strategy<Value = Control> {
    prop_oneof![
        (reason(), uuid(), auth).prop_map(|(t, client_id, ext)| Control::Auth {
            token: Token(t),
            client_id,
            ext
        }),
        (uuid(), auth_ok).prop_map(|(tunnel_id, ext)| Control::AuthOk { tunnel_id, ext }),
        reason().prop_map(|reason| Control::AuthFail { reason }),
        (name(), protocol(), port(), port(), register).prop_map(
            |(name, protocol, local_port, remote_port, ext)| Control::Register {
                name,
                protocol,
                local_port,
                remote_port,
                ext
            }
        ),
        (uuid(), register_ok).prop_map(|(service_id, ext)| Control::RegisterOk { service_id, ext }),
        reason().prop_map(|reason| Control::RegisterFail { reason }),
        (uuid(), uuid(), reason(), connect).prop_map(
            |(service_id, connection_id, client_addr, ext)| Control::Connect {
                service_id,
                connection_id,
                client_addr,
                ext
            }
        ),
        uuid().prop_map(|connection_id| Control::ConnectAck { connection_id }),
        (uuid(), reason()).prop_map(|(connection_id, reason)| Control::ConnectFail {
            connection_id,
            reason
        }),
        timestamp().prop_map(|timestamp| Control::Heartbeat { timestamp }),
        timestamp().prop_map(|timestamp| Control::HeartbeatAck { timestamp }),
        uuid().prop_map(|service_id| Control::Unregister { service_id }),
        reason().prop_map(|reason| Control::Disconnect { reason }),
    ]
}

/// Every control message with no Culvert extension (what a zlayer-tunnel v1 peer sends).
pub fn control_plain() -> impl Strategy<Value = Control> {
    control_with(
        Just(None).boxed(),
        Just(None).boxed(),
        Just(None).boxed(),
        Just(None).boxed(),
        Just(None).boxed(),
    )
}

/// Every control message, with each extendable one always carrying its Culvert extension.
pub fn control_extended() -> impl Strategy<Value = Control> {
    control_with(
        auth_ext().prop_map(Some).boxed(),
        register_ext().prop_map(Some).boxed(),
        register_ok_ext().prop_map(Some).boxed(),
        connect_ext().prop_map(Some).boxed(),
        auth_ok_ext().prop_map(Some).boxed(),
    )
}

/// Every control message, extensions present or not.
pub fn control_any() -> impl Strategy<Value = Control> {
    control_with(
        prop::option::of(auth_ext()).boxed(),
        prop::option::of(register_ext()).boxed(),
        prop::option::of(register_ok_ext()).boxed(),
        prop::option::of(connect_ext()).boxed(),
        prop::option::of(auth_ok_ext()).boxed(),
    )
}

// ---- data-plane frames ----

pub fn data_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..200),
        1 => prop::collection::vec(any::<u8>(), 0..5_000),
    ]
    .prop_map(Bytes::from)
}

/// A stream target of any kind, names and addresses up to their cap.
pub fn target() -> BoxedStrategy<Target> {
    let name = || text_up_to(MAX_TARGET_LEN);
    prop_oneof![
        name().prop_map(Target::Service),
        name().prop_map(Target::Probe),
        name().prop_map(Target::Dial),
        name().prop_map(Target::UdpService),
        name().prop_map(Target::UdpDial),
        (name(), uuid(), name()).prop_map(|(service, connection_id, client_addr)| {
            Target::Inbound {
                service,
                connection_id,
                client_addr,
            }
        }),
    ]
    // Boxed: unboxed, the nested strategy's value trees overflow a test thread's stack in
    // debug builds (seen in codec_props' incomplete_tail_stays_buffered).
    .boxed()
}

/// Every data-plane frame with arbitrary in-range fields.
pub fn data_plane_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (stream_id(), target()).prop_map(|(id, target)| Frame::StreamOpen { id, target }),
        (stream_id(), data_bytes()).prop_map(|(id, data)| Frame::StreamData { id, data }),
        stream_id().prop_map(|id| Frame::StreamFin { id }),
        (stream_id(), varint_value()).prop_map(|(id, code)| Frame::StreamReset { id, code }),
        (stream_id(), varint_value())
            .prop_map(|(id, increment)| Frame::StreamCredit { id, increment }),
        varint_value().prop_map(|increment| Frame::ConnCredit { increment }),
        varint_value().prop_map(|count| Frame::MaxStreams { count }),
        (varint_value(), data_bytes()).prop_map(|(flow, data)| Frame::Datagram { flow, data }),
        (varint_value(), reason()).prop_map(|(code, reason)| Frame::GoAway { code, reason }),
    ]
}

/// Every frame: control messages (with or without extensions) and the data plane.
pub fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![control_any().prop_map(Frame::Control), data_plane_frame(),]
}
