//! Properties and hostile-input cases of the frame codec: round trips, split
//! invariance of the stream decoder, exact typed decode errors, and encode
//! errors that leave the output buffer untouched.

mod common;

use bytes::{Bytes, BytesMut};
use culvert_proto::control::RegisterOkExt;
use culvert_proto::frame::MAX_TARGET_LEN;
use culvert_proto::{
    varint, Control, DecodeError, EncodeError, Frame, FrameDecoder, FrameType, Header,
    ServiceProtocol, StreamId, Target, Token, HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
};
use proptest::prelude::*;
use uuid::Uuid;

use common::{
    any_frame, decode_chunks, decode_chunks_undrained, decode_whole, encode, split_at_points,
    Outcome,
};

const ALL_TYPES: [FrameType; 22] = [
    FrameType::Auth,
    FrameType::AuthOk,
    FrameType::AuthFail,
    FrameType::Register,
    FrameType::RegisterOk,
    FrameType::RegisterFail,
    FrameType::Connect,
    FrameType::ConnectAck,
    FrameType::ConnectFail,
    FrameType::Heartbeat,
    FrameType::HeartbeatAck,
    FrameType::Unregister,
    FrameType::Disconnect,
    FrameType::StreamOpen,
    FrameType::StreamData,
    FrameType::StreamFin,
    FrameType::StreamReset,
    FrameType::StreamCredit,
    FrameType::ConnCredit,
    FrameType::MaxStreams,
    FrameType::Datagram,
    FrameType::GoAway,
];

/// A whole frame from a type byte and a payload (length taken from the payload).
fn raw(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Decodes a single raw frame through the stream decoder, fed whole and byte by byte; both must agree.
fn decode_one(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let whole = decode_whole(bytes);
    let bytewise = decode_chunks(bytes.chunks(1));
    assert_eq!(whole, bytewise, "whole and byte-by-byte feeding disagree");
    match (whole.error, whole.frames.as_slice()) {
        (Some(e), []) => Err(e),
        (None, [f]) => Ok(f.clone()),
        other => panic!("expected exactly one frame or one error, got {other:?}"),
    }
}

fn err(ty: FrameType, payload: &[u8]) -> DecodeError {
    decode_one(&raw(ty as u8, payload)).expect_err("must not decode")
}

fn truncated(frame: &'static str, field: &'static str) -> DecodeError {
    DecodeError::Truncated { frame, field }
}

fn trailing(frame: &'static str, extra: usize) -> DecodeError {
    DecodeError::TrailingBytes { frame, extra }
}

/// Encodes `f` into a buffer that already holds other bytes; asserts the error and that the buffer is unchanged.
fn assert_encode_err(f: &Frame, expected: EncodeError) {
    let prior: &[u8] = b"\x41\x00\x00\x00\x02\x00\x00earlier frames";
    let mut buf = BytesMut::from(prior);
    assert_eq!(f.encode(&mut buf), Err(expected));
    assert_eq!(&buf[..], prior, "buffer changed by a failed encode");
}

/// Valid frames concatenated, then corrupted: byte flips, a truncation, an insertion.
fn corrupted_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any_frame(), 1..8),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        prop::option::of(any::<usize>()),
        prop::option::of((any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))),
    )
        .prop_map(|(frames, flips, cut, insert)| {
            let mut bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
            for (pos, x) in flips {
                let n = bytes.len();
                bytes[pos % n] ^= x;
            }
            if let Some((pos, ins)) = insert {
                let at = pos % (bytes.len() + 1);
                bytes.splice(at..at, ins);
            }
            if let Some(c) = cut {
                bytes.truncate(c % (bytes.len() + 1));
            }
            bytes
        })
}

/// Random headers of known types with small lengths and random payloads: reaches every payload decoder.
fn plausible_garbage() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop::sample::select(ALL_TYPES.to_vec()),
            prop::collection::vec(any::<u8>(), 0..48),
        ),
        1..6,
    )
    .prop_map(|frames| {
        frames
            .into_iter()
            .flat_map(|(ty, p)| raw(ty as u8, &p))
            .collect()
    })
}

/// Any of the hostile byte streams.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        corrupted_stream(),
        plausible_garbage(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    // Every frame encodes to a header announcing its payload, and decodes back to the equal value
    // through Frame::decode and through the stream decoder.
    #[test]
    fn every_frame_round_trips(f in any_frame()) {
        let bytes = encode(&f);
        let header = Header::parse(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        prop_assert_eq!(header.len, bytes.len() - HEADER_LEN);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        let payload = Bytes::copy_from_slice(&bytes[HEADER_LEN..]);
        prop_assert_eq!(Frame::decode(header.ty, payload), Ok(f.clone()));
        if let Frame::Control(c) = &f {
            prop_assert_eq!(header.ty, c.frame_type());
        }
        let out = decode_whole(&bytes);
        prop_assert_eq!(out.error, None);
        prop_assert_eq!(out.frames, vec![f]);
    }

    // Several frames concatenated decode in order, whole, split anywhere, byte by byte, and pushed undrained.
    #[test]
    fn concatenated_frames_decode_in_order(
        frames in prop::collection::vec(any_frame(), 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf).unwrap();
        }
        let expected = Outcome { frames: frames.clone(), error: None };
        prop_assert_eq!(&decode_whole(&buf), &expected);
        prop_assert_eq!(&decode_chunks(split_at_points(&buf, &cuts)), &expected);
        prop_assert_eq!(&decode_chunks(buf.chunks(1)), &expected);
        prop_assert_eq!(&decode_chunks_undrained(split_at_points(&buf, &cuts)), &expected);
    }

    // A valid stream cut inside its last frame yields the complete frames and keeps exactly the rest buffered.
    #[test]
    fn incomplete_tail_stays_buffered(
        frames in prop::collection::vec(any_frame(), 0..6),
        last in any_frame(),
        keep in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream: Vec<u8> = frames.iter().flat_map(encode).collect();
        let tail = encode(&last);
        let keep = keep.index(tail.len());
        stream.extend_from_slice(&tail[..keep]);
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in split_at_points(&stream, &cuts) {
            // Empty pushes in between must change nothing.
            d.push(Bytes::new());
            d.push(Bytes::copy_from_slice(chunk));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(d.buffered(), keep);
        // Completing the tail delivers the last frame and empties the decoder.
        d.push(Bytes::copy_from_slice(&tail[keep..]));
        prop_assert_eq!(d.next_frame(), Ok(Some(last)));
        prop_assert_eq!(d.next_frame(), Ok(None));
        prop_assert_eq!(d.buffered(), 0);
    }

    // Any byte stream yields the same frames and the same first error however it is split,
    // and never panics.
    #[test]
    fn decoding_is_split_invariant(
        bytes in hostile_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = decode_whole(&bytes);
        prop_assert_eq!(&decode_chunks(split_at_points(&bytes, &cuts)), &whole);
        prop_assert_eq!(&decode_chunks(bytes.chunks(1)), &whole);
        prop_assert_eq!(&decode_chunks_undrained(split_at_points(&bytes, &cuts)), &whole);
        prop_assert_eq!(&decode_chunks_undrained(bytes.chunks(1)), &whole);
        // Each decoded frame is encodable and re-encodes to a frame that decodes to itself.
        for f in &whole.frames {
            prop_assert_eq!(&decode_whole(&encode(f)).frames, &vec![f.clone()]);
        }
    }

    // A failed encode leaves whatever was already in the buffer untouched.
    #[test]
    fn failed_encode_leaves_buffer_unchanged(
        prior in prop::collection::vec(any::<u8>(), 0..64),
        extra in 1usize..300,
        which in 0usize..6,
    ) {
        let long16 = "z".repeat(u16::MAX as usize + extra);
        let f = match which {
            0 => Frame::Control(Control::Disconnect { reason: long16 }),
            1 => Frame::Control(Control::Register {
                name: "n".repeat(255 + extra),
                protocol: ServiceProtocol::Tcp,
                local_port: 1,
                remote_port: 2,
                ext: None,
            }),
            2 => Frame::StreamData { id: StreamId(0), data: Bytes::from(vec![0; MAX_PAYLOAD_LEN + extra]) },
            3 => Frame::Datagram { flow: 1, data: Bytes::from(vec![0; MAX_PAYLOAD_LEN + extra]) },
            4 => Frame::StreamOpen { id: StreamId(2), target: Target::Service("t".repeat(MAX_TARGET_LEN + extra)) },
            _ => Frame::StreamFin { id: StreamId(varint::MAX + extra as u64) },
        };
        let mut buf = BytesMut::from(&prior[..]);
        prop_assert!(f.encode(&mut buf).is_err());
        prop_assert_eq!(&buf[..], &prior[..]);
    }
}

// ---- header-level rejections ----

// An oversize length is rejected from the 5 header bytes alone, with no payload fed at all.
#[test]
fn oversize_rejected_from_header_alone() {
    for (ty, len) in [
        (0x51u8, MAX_PAYLOAD_LEN as u32 + 1),
        (0x51, u32::MAX),
        (0x01, MAX_PAYLOAD_LEN as u32 + 1),
        (0x41, 0x8000_0000),
        (0x57, 65_536),
    ] {
        let mut header = vec![ty];
        header.extend_from_slice(&len.to_be_bytes());
        let expected = DecodeError::Oversize {
            ty,
            len,
            max: MAX_PAYLOAD_LEN,
        };
        let mut d = FrameDecoder::new();
        d.push(Bytes::from(header.clone()));
        assert_eq!(d.next_frame(), Err(expected.clone()));
        assert_eq!(d.next_frame(), Ok(None), "stays failed");
        assert_eq!(d.buffered(), 0, "nothing kept after the error");

        // Byte by byte: silent for four bytes, the error on the fifth.
        let mut d = FrameDecoder::new();
        for (i, b) in header.iter().enumerate() {
            d.push(Bytes::copy_from_slice(&[*b]));
            let r = d.next_frame();
            if i + 1 < HEADER_LEN {
                assert_eq!(r, Ok(None));
            } else {
                assert_eq!(r, Err(expected.clone()));
            }
        }
    }
}

// The largest legal payload passes the header check; one more byte does not.
#[test]
fn payload_cap_boundary_in_header() {
    let at = Header::parse([0x51, 0x00, 0x00, 0xff, 0xfb]).unwrap();
    assert_eq!((at.ty, at.len), (FrameType::StreamData, MAX_PAYLOAD_LEN));
    assert_eq!(
        Header::parse([0x51, 0x00, 0x00, 0xff, 0xfc]),
        Err(DecodeError::Oversize {
            ty: 0x51,
            len: 65_532,
            max: MAX_PAYLOAD_LEN
        })
    );
    // A maximal data frame decodes whole.
    let mut payload = vec![0x00];
    payload.extend(std::iter::repeat_n(0xab, MAX_PAYLOAD_LEN - 1));
    let f = decode_one(&raw(0x51, &payload)).unwrap();
    assert_eq!(
        f,
        Frame::StreamData {
            id: StreamId(0),
            data: Bytes::from(vec![0xab; MAX_PAYLOAD_LEN - 1])
        }
    );
}

// Fixed-layout data-plane frames have their own small caps, checked from the header.
#[test]
fn per_type_length_caps() {
    for (ty, max) in [
        (FrameType::StreamFin, 8),
        (FrameType::StreamReset, 16),
        (FrameType::StreamCredit, 16),
        (FrameType::ConnCredit, 8),
        (FrameType::MaxStreams, 8),
    ] {
        let len = max as u32 + 1;
        let mut header = vec![ty as u8];
        header.extend_from_slice(&len.to_be_bytes());
        let expected = DecodeError::Oversize {
            ty: ty as u8,
            len,
            max,
        };
        assert_eq!(ty.max_payload(), max);
        let mut d = FrameDecoder::new();
        d.push(Bytes::from(header));
        assert_eq!(d.next_frame(), Err(expected), "{}", ty.name());
    }
}

// Every byte that is not a frame type is rejected with UnknownType as soon as the header is complete.
#[test]
fn unknown_type() {
    for b in 0..=u8::MAX {
        if FrameType::from_u8(b).is_some() {
            continue;
        }
        let mut d = FrameDecoder::new();
        d.push(Bytes::from(vec![b, 0, 0, 0, 0]));
        assert_eq!(d.next_frame(), Err(DecodeError::UnknownType(b)));
        // Even a type byte followed by a huge length reports the unknown type.
        assert_eq!(
            Header::parse([b, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::UnknownType(b))
        );
    }
    assert_eq!(
        ALL_TYPES
            .iter()
            .filter(|t| FrameType::from_u8(**t as u8) == Some(**t))
            .count(),
        22
    );
}

// A header split at each position is validated only once complete, and the error is the same.
#[test]
fn header_split_anywhere_gives_same_error() {
    let bytes = [0x52u8, 0, 0, 0, 9];
    let expected = DecodeError::Oversize {
        ty: 0x52,
        len: 9,
        max: 8,
    };
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(decode_chunks([a, b]).error, Some(expected.clone()), "{cut}");
    }
}

// ---- payload rejections ----

// Every type with an empty payload is refused, naming the first field it lacks.
#[test]
fn zero_length_payloads() {
    let expected = [
        (FrameType::Auth, truncated("Auth", "token")),
        (FrameType::AuthOk, truncated("AuthOk", "tunnel_id")),
        (FrameType::AuthFail, truncated("AuthFail", "reason")),
        (FrameType::Register, truncated("Register", "name")),
        (FrameType::RegisterOk, truncated("RegisterOk", "service_id")),
        (FrameType::RegisterFail, truncated("RegisterFail", "reason")),
        (FrameType::Connect, truncated("Connect", "service_id")),
        (
            FrameType::ConnectAck,
            truncated("ConnectAck", "connection_id"),
        ),
        (
            FrameType::ConnectFail,
            truncated("ConnectFail", "connection_id"),
        ),
        (FrameType::Heartbeat, truncated("Heartbeat", "timestamp")),
        (
            FrameType::HeartbeatAck,
            truncated("HeartbeatAck", "timestamp"),
        ),
        (FrameType::Unregister, truncated("Unregister", "service_id")),
        (FrameType::Disconnect, truncated("Disconnect", "reason")),
        (FrameType::StreamOpen, truncated("StreamOpen", "stream_id")),
        (FrameType::StreamData, truncated("StreamData", "stream_id")),
        (FrameType::StreamFin, truncated("StreamFin", "stream_id")),
        (
            FrameType::StreamReset,
            truncated("StreamReset", "stream_id"),
        ),
        (
            FrameType::StreamCredit,
            truncated("StreamCredit", "stream_id"),
        ),
        (FrameType::ConnCredit, truncated("ConnCredit", "increment")),
        (FrameType::MaxStreams, truncated("MaxStreams", "count")),
        (FrameType::Datagram, truncated("Datagram", "flow_id")),
        (FrameType::GoAway, truncated("GoAway", "code")),
    ];
    assert_eq!(expected.len(), ALL_TYPES.len());
    for (ty, e) in expected {
        assert_eq!(err(ty, &[]), e, "{}", ty.name());
    }
}

// Payloads that stop inside a field report that field.
#[test]
fn truncated_payload_fields() {
    let uuid = [0x11u8; 16];
    let cases: Vec<(FrameType, Vec<u8>, DecodeError)> = vec![
        // Length prefix cut in half.
        (FrameType::Auth, vec![0x00], truncated("Auth", "token")),
        // Token announces 5 bytes, 3 follow.
        (
            FrameType::Auth,
            vec![0, 5, b'a', b'b', b'c'],
            truncated("Auth", "token"),
        ),
        // Token complete, client_id 15 of 16 bytes.
        (
            FrameType::Auth,
            [&[0, 1, b't'][..], &uuid[..15]].concat(),
            truncated("Auth", "client_id"),
        ),
        // Culvert's Auth extension started but cut (1 of 5 bytes, then 4 of 5).
        (
            FrameType::Auth,
            [&[0, 0][..], &uuid[..], &[1]].concat(),
            truncated("Auth", "capabilities"),
        ),
        (
            FrameType::AuthOk,
            uuid[..8].to_vec(),
            truncated("AuthOk", "tunnel_id"),
        ),
        (
            FrameType::AuthFail,
            vec![0, 2, b'x'],
            truncated("AuthFail", "reason"),
        ),
        (
            FrameType::Register,
            vec![3, b'a', b'b'],
            truncated("Register", "name"),
        ),
        (
            FrameType::Register,
            vec![1, b'a'],
            truncated("Register", "protocol"),
        ),
        (
            FrameType::Register,
            vec![1, b'a', 0, 0],
            truncated("Register", "local_port"),
        ),
        (
            FrameType::Register,
            vec![1, b'a', 0, 0, 1, 0],
            truncated("Register", "remote_port"),
        ),
        (
            FrameType::RegisterOk,
            [&uuid[..], &[0x9c]].concat(),
            truncated("RegisterOk", "assigned_port"),
        ),
        (
            FrameType::RegisterOk,
            [&uuid[..], &[0x9c, 0x40]].concat(),
            truncated("RegisterOk", "name"),
        ),
        (
            FrameType::RegisterOk,
            [&uuid[..], &[0x9c, 0x40, 4, b'a']].concat(),
            truncated("RegisterOk", "name"),
        ),
        (
            FrameType::RegisterFail,
            vec![0xff, 0xff],
            truncated("RegisterFail", "reason"),
        ),
        (
            FrameType::Connect,
            uuid.to_vec(),
            truncated("Connect", "connection_id"),
        ),
        (
            FrameType::Connect,
            [&uuid[..], &uuid[..], &[0]].concat(),
            truncated("Connect", "client_addr"),
        ),
        (
            FrameType::Connect,
            [&uuid[..], &uuid[..], &[0, 9], b"1.2.3.4"].concat(),
            truncated("Connect", "client_addr"),
        ),
        // Culvert's Connect extension: a 4-byte varint with 2 bytes.
        (
            FrameType::Connect,
            [&uuid[..], &uuid[..], &[0, 0, 0x80, 0x00]].concat(),
            truncated("Connect", "stream_id"),
        ),
        (
            FrameType::ConnectAck,
            vec![0; 15],
            truncated("ConnectAck", "connection_id"),
        ),
        (
            FrameType::ConnectFail,
            uuid.to_vec(),
            truncated("ConnectFail", "reason"),
        ),
        (
            FrameType::ConnectFail,
            [&uuid[..], &[0, 1]].concat(),
            truncated("ConnectFail", "reason"),
        ),
        (
            FrameType::Heartbeat,
            vec![0; 7],
            truncated("Heartbeat", "timestamp"),
        ),
        (
            FrameType::HeartbeatAck,
            vec![0; 1],
            truncated("HeartbeatAck", "timestamp"),
        ),
        (
            FrameType::Unregister,
            vec![0; 15],
            truncated("Unregister", "service_id"),
        ),
        (
            FrameType::Disconnect,
            vec![0, 1],
            truncated("Disconnect", "reason"),
        ),
        // An 8-byte varint with 7 bytes.
        (
            FrameType::StreamOpen,
            vec![0xc0, 0, 0, 0, 0, 0, 0],
            truncated("StreamOpen", "stream_id"),
        ),
        (
            FrameType::StreamOpen,
            vec![0x04],
            truncated("StreamOpen", "kind"),
        ),
        (
            FrameType::StreamOpen,
            vec![0x04, 0x00, 0x00],
            truncated("StreamOpen", "target"),
        ),
        (
            FrameType::StreamOpen,
            vec![0x04, 0x00, 0x00, 0x03, b'a'],
            truncated("StreamOpen", "target"),
        ),
        // An inbound open (kind 5) without its connection id.
        (
            FrameType::StreamOpen,
            vec![0x04, 0x05, 0x00, 0x01, b'a', 0x00],
            truncated("StreamOpen", "connection_id"),
        ),
        (
            FrameType::StreamData,
            vec![0x40],
            truncated("StreamData", "stream_id"),
        ),
        (
            FrameType::StreamFin,
            vec![0x80, 0, 0],
            truncated("StreamFin", "stream_id"),
        ),
        (
            FrameType::StreamReset,
            vec![0x01],
            truncated("StreamReset", "code"),
        ),
        (
            FrameType::StreamCredit,
            vec![0x01, 0x40],
            truncated("StreamCredit", "increment"),
        ),
        (
            FrameType::ConnCredit,
            vec![0xc0, 0, 0],
            truncated("ConnCredit", "increment"),
        ),
        (
            FrameType::MaxStreams,
            vec![0x40],
            truncated("MaxStreams", "count"),
        ),
        (
            FrameType::Datagram,
            vec![0x80, 1],
            truncated("Datagram", "flow_id"),
        ),
        (FrameType::GoAway, vec![0x00], truncated("GoAway", "reason")),
        (
            FrameType::GoAway,
            vec![0x00, 0x00, 0x05, b'x'],
            truncated("GoAway", "reason"),
        ),
    ];
    for (ty, payload, e) in cases {
        assert_eq!(err(ty, &payload), e, "{} {payload:02x?}", ty.name());
    }
}

// Field values outside their domain are Malformed, naming frame and field.
#[test]
fn malformed_fields() {
    let not_utf8 = |frame, field| DecodeError::Malformed {
        frame,
        field,
        reason: "not UTF-8",
    };
    let uuid = [0x22u8; 16];
    let bad = [0xc3u8, 0x28]; // a lead byte followed by a non-continuation byte
    let cases: Vec<(FrameType, Vec<u8>, DecodeError)> = vec![
        (
            FrameType::Auth,
            [&[0, 2][..], &bad, &uuid].concat(),
            not_utf8("Auth", "token"),
        ),
        (
            FrameType::AuthFail,
            vec![0, 1, 0xff],
            not_utf8("AuthFail", "reason"),
        ),
        (
            FrameType::Register,
            vec![1, 0x80, 0, 0, 1, 0, 2],
            not_utf8("Register", "name"),
        ),
        (
            FrameType::Register,
            vec![1, b'a', 2, 0, 1, 0, 2],
            DecodeError::Malformed {
                frame: "Register",
                field: "protocol",
                reason: "neither 0 (TCP) nor 1 (UDP)",
            },
        ),
        (
            FrameType::Register,
            vec![0, 0xff, 0, 1, 0, 2],
            DecodeError::Malformed {
                frame: "Register",
                field: "protocol",
                reason: "neither 0 (TCP) nor 1 (UDP)",
            },
        ),
        (
            FrameType::RegisterOk,
            [&uuid[..], &[0, 0, 2], &bad].concat(),
            not_utf8("RegisterOk", "name"),
        ),
        // Surrogate code point encoded in UTF-8 form (invalid).
        (
            FrameType::RegisterFail,
            vec![0, 3, 0xed, 0xa0, 0x80],
            not_utf8("RegisterFail", "reason"),
        ),
        (
            FrameType::Connect,
            [&uuid[..], &uuid, &[0, 2], &bad].concat(),
            not_utf8("Connect", "client_addr"),
        ),
        (
            FrameType::ConnectFail,
            [&uuid[..], &[0, 1, 0xfe]].concat(),
            not_utf8("ConnectFail", "reason"),
        ),
        // Overlong encoding of '/'.
        (
            FrameType::Disconnect,
            vec![0, 2, 0xc0, 0xaf],
            not_utf8("Disconnect", "reason"),
        ),
        (
            FrameType::StreamOpen,
            vec![0x00, 0x00, 0x00, 0x01, 0xff],
            not_utf8("StreamOpen", "target"),
        ),
        (
            FrameType::GoAway,
            vec![0x00, 0x00, 0x01, 0x80],
            not_utf8("GoAway", "reason"),
        ),
    ];
    for (ty, payload, e) in cases {
        assert_eq!(err(ty, &payload), e, "{} {payload:02x?}", ty.name());
    }
}

// A StreamOpen target longer than MAX_TARGET_LEN is refused from its length prefix, present bytes or not.
#[test]
fn stream_open_target_too_long() {
    let too_long = DecodeError::Malformed {
        frame: "StreamOpen",
        field: "target",
        reason: "longer than MAX_TARGET_LEN",
    };
    let n = (MAX_TARGET_LEN + 1) as u16;
    let mut payload = vec![0x00, 0x00];
    payload.extend_from_slice(&n.to_be_bytes());
    assert_eq!(err(FrameType::StreamOpen, &payload), too_long);
    payload.extend(std::iter::repeat_n(b'a', MAX_TARGET_LEN + 1));
    assert_eq!(err(FrameType::StreamOpen, &payload), too_long);
    let mut max = vec![0x00, 0x00];
    max.extend_from_slice(&(u16::MAX).to_be_bytes());
    assert_eq!(err(FrameType::StreamOpen, &max), too_long);

    // Exactly MAX_TARGET_LEN is fine.
    let target = "a".repeat(MAX_TARGET_LEN);
    let f = Frame::StreamOpen {
        id: StreamId(4),
        target: Target::Service(target),
    };
    assert_eq!(decode_one(&encode(&f)), Ok(f));
}

// Fixed-layout data-plane frames reject bytes after their last field, counting them.
#[test]
fn trailing_bytes_on_fixed_layout_frames() {
    let cases: Vec<(FrameType, Vec<u8>, DecodeError)> = vec![
        (
            FrameType::StreamFin,
            vec![0x00, 0x00],
            trailing("StreamFin", 1),
        ),
        (
            FrameType::StreamFin,
            vec![0x01, 1, 2, 3, 4, 5, 6, 7],
            trailing("StreamFin", 7),
        ),
        (
            FrameType::StreamReset,
            vec![0x01, 0x02, 0x03],
            trailing("StreamReset", 1),
        ),
        (
            FrameType::StreamCredit,
            vec![0x01, 0x02, 0x03, 0x04],
            trailing("StreamCredit", 2),
        ),
        (
            FrameType::ConnCredit,
            vec![0x05, 0x00],
            trailing("ConnCredit", 1),
        ),
        (
            FrameType::MaxStreams,
            vec![0x40, 0x10, 0xff],
            trailing("MaxStreams", 1),
        ),
        (
            FrameType::StreamOpen,
            vec![0x00, 0x00, 0x00, 0x01, b'a', b'b'],
            trailing("StreamOpen", 1),
        ),
        (
            FrameType::GoAway,
            vec![0x00, 0x00, 0x00, 0x00],
            trailing("GoAway", 1),
        ),
    ];
    for (ty, payload, e) in cases {
        assert_eq!(err(ty, &payload), e, "{} {payload:02x?}", ty.name());
    }
}

// Control messages, by contrast, ignore bytes after their known fields (zlayer compatibility);
// data and datagram frames take the rest of the payload as data.
#[test]
fn control_and_data_frames_take_trailing_bytes() {
    let mut p = vec![0u8; 8];
    p.extend_from_slice(b"later field");
    assert_eq!(
        decode_one(&raw(FrameType::Heartbeat as u8, &p)),
        Ok(Frame::Control(Control::Heartbeat { timestamp: 0 }))
    );
    assert_eq!(
        decode_one(&raw(FrameType::StreamData as u8, &[0x05, 1, 2, 3])),
        Ok(Frame::StreamData {
            id: StreamId(5),
            data: Bytes::from_static(&[1, 2, 3])
        })
    );
    assert_eq!(
        decode_one(&raw(FrameType::Datagram as u8, &[0x07])),
        Ok(Frame::Datagram {
            flow: 7,
            data: Bytes::new()
        })
    );
}

// The decoder stops at the first bad frame: earlier frames are delivered, later ones never are.
#[test]
fn error_stops_the_stream() {
    let good = encode(&Frame::MaxStreams { count: 9 });
    let bad = raw(FrameType::StreamFin as u8, &[0x00, 0x00]);
    let stream = [good.clone(), bad, good].concat();
    let out = decode_whole(&stream);
    assert_eq!(out.frames, vec![Frame::MaxStreams { count: 9 }]);
    assert_eq!(out.error, Some(trailing("StreamFin", 1)));
    let mut d = FrameDecoder::new();
    d.push(Bytes::from(stream));
    d.next_frame().unwrap();
    d.next_frame().unwrap_err();
    d.push(Bytes::from(encode(&Frame::ConnCredit { increment: 1 })));
    assert_eq!(
        d.next_frame(),
        Ok(None),
        "a failed decoder accepts nothing more"
    );
}

// ---- encode errors ----

// Fields too long for their length prefix, payloads over the cap and out-of-range varints are refused.
#[test]
fn encode_errors() {
    let u = Uuid::nil();
    let over16 = "r".repeat(65_536);
    let field = |field, len, max| EncodeError::FieldTooLong { field, len, max };
    assert_encode_err(
        &Frame::Control(Control::Register {
            name: "n".repeat(256),
            protocol: ServiceProtocol::Udp,
            local_port: 0,
            remote_port: 0,
            ext: None,
        }),
        field("name", 256, 255),
    );
    assert_encode_err(
        &Frame::Control(Control::RegisterOk {
            service_id: u,
            ext: Some(RegisterOkExt {
                assigned_port: 1,
                name: "\u{e9}".repeat(128),
            }),
        }),
        field("name", 256, 255),
    );
    for c in [
        Control::AuthFail {
            reason: over16.clone(),
        },
        Control::RegisterFail {
            reason: over16.clone(),
        },
        Control::Disconnect {
            reason: over16.clone(),
        },
        Control::ConnectFail {
            connection_id: u,
            reason: over16.clone(),
        },
    ] {
        assert_encode_err(&Frame::Control(c), field("reason", 65_536, 65_535));
    }
    assert_encode_err(
        &Frame::GoAway {
            code: 0,
            reason: over16.clone(),
        },
        field("reason", 65_536, 65_535),
    );
    assert_encode_err(
        &Frame::Control(Control::Auth {
            token: Token(over16.clone()),
            client_id: u,
            ext: None,
        }),
        field("token", 65_536, 65_535),
    );
    assert_encode_err(
        &Frame::Control(Control::Connect {
            service_id: u,
            connection_id: u,
            client_addr: over16,
            ext: None,
        }),
        field("client_addr", 65_536, 65_535),
    );
    assert_encode_err(
        &Frame::StreamOpen {
            id: StreamId(0),
            target: Target::Service("t".repeat(MAX_TARGET_LEN + 1)),
        },
        field("target", MAX_TARGET_LEN + 1, MAX_TARGET_LEN),
    );

    // Fits its u16 prefix, but not the frame: reason 65,535 bytes -> payload 65,537.
    let too_big = |len| EncodeError::PayloadTooLarge {
        len,
        max: MAX_PAYLOAD_LEN,
    };
    assert_encode_err(
        &Frame::Control(Control::Disconnect {
            reason: "r".repeat(65_535),
        }),
        too_big(65_537),
    );
    assert_encode_err(
        &Frame::Control(Control::ConnectFail {
            connection_id: u,
            reason: "r".repeat(MAX_PAYLOAD_LEN - 17),
        }),
        too_big(MAX_PAYLOAD_LEN + 1),
    );
    assert_encode_err(
        &Frame::StreamData {
            id: StreamId(0),
            data: Bytes::from(vec![0; MAX_PAYLOAD_LEN]),
        },
        too_big(MAX_PAYLOAD_LEN + 1),
    );
    // A 2-byte stream id leaves one byte less for data.
    assert_encode_err(
        &Frame::StreamData {
            id: StreamId(64),
            data: Bytes::from(vec![0; MAX_PAYLOAD_LEN - 1]),
        },
        too_big(MAX_PAYLOAD_LEN + 1),
    );
    assert_encode_err(
        &Frame::Datagram {
            flow: 0,
            data: Bytes::from(vec![0; MAX_PAYLOAD_LEN]),
        },
        too_big(MAX_PAYLOAD_LEN + 1),
    );

    let over = varint::MAX + 1;
    for f in [
        Frame::StreamFin { id: StreamId(over) },
        Frame::StreamData {
            id: StreamId(over),
            data: Bytes::new(),
        },
        Frame::StreamReset {
            id: StreamId(0),
            code: u64::MAX,
        },
        Frame::ConnCredit { increment: over },
        Frame::MaxStreams { count: over },
        Frame::Datagram {
            flow: over,
            data: Bytes::new(),
        },
        Frame::GoAway {
            code: over,
            reason: String::new(),
        },
    ] {
        let v = match &f {
            Frame::StreamReset { code, .. } => *code,
            _ => over,
        };
        assert_encode_err(&f, EncodeError::VarintRange(v));
    }
}

// The largest frames that fit encode, and decode back.
#[test]
fn largest_frames_encode() {
    for f in [
        Frame::StreamData {
            id: StreamId(0),
            data: Bytes::from(vec![7; MAX_PAYLOAD_LEN - 1]),
        },
        Frame::Datagram {
            flow: varint::MAX,
            data: Bytes::from(vec![7; MAX_PAYLOAD_LEN - 8]),
        },
        Frame::Control(Control::Disconnect {
            reason: "r".repeat(MAX_PAYLOAD_LEN - 2),
        }),
        Frame::GoAway {
            code: 0,
            reason: "r".repeat(MAX_PAYLOAD_LEN - 3),
        },
    ] {
        let bytes = encode(&f);
        assert_eq!(bytes.len(), MAX_FRAME_LEN);
        assert_eq!(decode_one(&bytes), Ok(f));
    }
}

// A data frame wholly inside one pushed buffer is handed out as a slice of that buffer, not a copy.
#[test]
fn data_payload_is_not_copied() {
    let mut buf = BytesMut::new();
    for (id, byte) in [(1u64, 0xaau8), (3, 0xbb)] {
        Frame::StreamData {
            id: StreamId(id),
            data: Bytes::from(vec![byte; 1000]),
        }
        .encode(&mut buf)
        .unwrap();
    }
    let pushed = buf.freeze();
    let range = pushed.as_ptr() as usize..pushed.as_ptr() as usize + pushed.len();
    let mut d = FrameDecoder::new();
    d.push(pushed.clone());
    for _ in 0..2 {
        match d.next_frame() {
            Ok(Some(Frame::StreamData { data, .. })) => {
                assert_eq!(data.len(), 1000);
                assert!(
                    range.contains(&(data.as_ptr() as usize)),
                    "payload was copied"
                );
            }
            other => panic!("expected a data frame, got {other:?}"),
        }
    }
    assert_eq!(d.next_frame(), Ok(None));
}

// Control::decode refuses data-plane types instead of misreading them.
#[test]
fn control_decode_refuses_data_plane_types() {
    for ty in &ALL_TYPES[13..] {
        assert_eq!(
            Control::decode(*ty, Bytes::from_static(&[0, 0, 0, 0])),
            Err(DecodeError::Malformed {
                frame: ty.name(),
                field: "type",
                reason: "not a control message",
            })
        );
    }
}
