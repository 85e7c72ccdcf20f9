//! Exact typed errors of the frame decoder: rejections from the header alone (oversize,
//! per-type caps, unknown types), truncated and malformed payload fields, trailing bytes,
//! and a decoder that stops at the first bad frame.

mod common;

use bytes::Bytes;

use culvert_proto::frame::MAX_TARGET_LEN;
use culvert_proto::{
    Control, DecodeError, Frame, FrameDecoder, FrameType, Header, StreamId, Target, HEADER_LEN,
    MAX_PAYLOAD_LEN,
};

use common::codec::*;
use common::{decode_chunks, decode_whole, encode};

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
