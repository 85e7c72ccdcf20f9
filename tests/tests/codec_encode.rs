//! The frame encoder: fields too long for their prefix, payloads over the cap and
//! out-of-range varints are refused leaving the buffer untouched; the largest frames that
//! fit round-trip; data payloads are not copied; Control::decode refuses data-plane types.

mod common;

use bytes::{Bytes, BytesMut};
use culvert_proto::control::RegisterOkExt;
use culvert_proto::frame::MAX_TARGET_LEN;
use culvert_proto::{
    varint, Control, DecodeError, EncodeError, Frame, FrameDecoder, ServiceProtocol, StreamId,
    Target, Token, MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
};
use uuid::Uuid;

use common::codec::*;
use common::encode;

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
