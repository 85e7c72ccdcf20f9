//! Differential tests against zlayer-tunnel 0.14.3's `protocol` module, the
//! reference Culvert's control messages must stay byte-compatible with.
//!
//! zlayer's `Message::encode` produces the bytes a plain v1 peer sends; its
//! `Message::decode` is what a plain v1 peer does with ours. Its decoder ignores
//! bytes after the fields it knows, which is where Culvert's extensions go.

mod common;

use bytes::{Bytes, BytesMut};
use culvert_proto::control::{AuthExt, ConnectExt, RegisterExt, RegisterOkExt};
use culvert_proto::{
    Control, DecodeError, EncodeError, Frame, FrameDecoder, FrameType, Header, ServiceProtocol,
    StreamId, Token, HEADER_LEN, MAX_PAYLOAD_LEN,
};
use proptest::prelude::*;
use uuid::Uuid;
use zlayer_tunnel::protocol::{self as zl, Message};

use common::{
    control_extended, control_plain, decode_chunks, decode_whole, encode_control, hex,
    split_at_points,
};

// ---- mapping between the two models ----

fn zl_protocol(p: ServiceProtocol) -> zl::ServiceProtocol {
    match p {
        ServiceProtocol::Tcp => zl::ServiceProtocol::Tcp,
        ServiceProtocol::Udp => zl::ServiceProtocol::Udp,
    }
}

fn our_protocol(p: zl::ServiceProtocol) -> ServiceProtocol {
    match p {
        zl::ServiceProtocol::Tcp => ServiceProtocol::Tcp,
        zl::ServiceProtocol::Udp => ServiceProtocol::Udp,
    }
}

/// The zlayer message carrying our message's base fields (extensions dropped).
fn to_zlayer(c: &Control) -> Message {
    match c.clone() {
        Control::Auth {
            token, client_id, ..
        } => Message::Auth {
            token: token.0,
            client_id,
        },
        Control::AuthOk { tunnel_id, .. } => Message::AuthOk { tunnel_id },
        Control::AuthFail { reason } => Message::AuthFail { reason },
        Control::Register {
            name,
            protocol,
            local_port,
            remote_port,
            ..
        } => Message::Register {
            name,
            protocol: zl_protocol(protocol),
            local_port,
            remote_port,
        },
        Control::RegisterOk { service_id, .. } => Message::RegisterOk { service_id },
        Control::RegisterFail { reason } => Message::RegisterFail { reason },
        Control::Connect {
            service_id,
            connection_id,
            client_addr,
            ..
        } => Message::Connect {
            service_id,
            connection_id,
            client_addr,
        },
        Control::ConnectAck { connection_id } => Message::ConnectAck { connection_id },
        Control::ConnectFail {
            connection_id,
            reason,
        } => Message::ConnectFail {
            connection_id,
            reason,
        },
        Control::Heartbeat { timestamp } => Message::Heartbeat { timestamp },
        Control::HeartbeatAck { timestamp } => Message::HeartbeatAck { timestamp },
        Control::Unregister { service_id } => Message::Unregister { service_id },
        Control::Disconnect { reason } => Message::Disconnect { reason },
    }
}

/// Our message with the same field values as a zlayer message, every `ext` `None`.
fn from_zlayer(m: &Message) -> Control {
    match m.clone() {
        Message::Auth { token, client_id } => Control::Auth {
            token: Token(token),
            client_id,
            ext: None,
        },
        Message::AuthOk { tunnel_id } => Control::AuthOk {
            tunnel_id,
            ext: None,
        },
        Message::AuthFail { reason } => Control::AuthFail { reason },
        Message::Register {
            name,
            protocol,
            local_port,
            remote_port,
        } => Control::Register {
            name,
            protocol: our_protocol(protocol),
            local_port,
            remote_port,
            ext: None,
        },
        Message::RegisterOk { service_id } => Control::RegisterOk {
            service_id,
            ext: None,
        },
        Message::RegisterFail { reason } => Control::RegisterFail { reason },
        Message::Connect {
            service_id,
            connection_id,
            client_addr,
        } => Control::Connect {
            service_id,
            connection_id,
            client_addr,
            ext: None,
        },
        Message::ConnectAck { connection_id } => Control::ConnectAck { connection_id },
        Message::ConnectFail {
            connection_id,
            reason,
        } => Control::ConnectFail {
            connection_id,
            reason,
        },
        Message::Heartbeat { timestamp } => Control::Heartbeat { timestamp },
        Message::HeartbeatAck { timestamp } => Control::HeartbeatAck { timestamp },
        Message::Unregister { service_id } => Control::Unregister { service_id },
        Message::Disconnect { reason } => Control::Disconnect { reason },
    }
}

/// Our message with its Culvert extension removed.
fn strip_ext(c: &Control) -> Control {
    from_zlayer(&to_zlayer(c))
}

/// Decodes one whole frame with `Header::parse` + `Control::decode` (bypassing the stream decoder).
fn our_control_decode(bytes: &[u8]) -> Result<Control, DecodeError> {
    let header = Header::parse(bytes[..HEADER_LEN].try_into().unwrap())?;
    assert_eq!(header.len, bytes.len() - HEADER_LEN, "header length");
    Control::decode(header.ty, Bytes::copy_from_slice(&bytes[HEADER_LEN..]))
}

/// Decodes one whole frame with `Header::parse` + `Frame::decode`.
fn our_frame_decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let header = Header::parse(bytes[..HEADER_LEN].try_into().unwrap())?;
    Frame::decode(header.ty, Bytes::copy_from_slice(&bytes[HEADER_LEN..]))
}

/// zlayer's decoder on one whole frame, asserting it consumed exactly the frame.
fn zlayer_decode(bytes: &[u8]) -> Message {
    let (m, used) = Message::decode(bytes).expect("zlayer decodes");
    assert_eq!(used, bytes.len(), "zlayer consumed the whole frame");
    m
}

/// Field names that only Culvert's extensions have, per frame type.
fn is_extension_field(ty: FrameType, field: &str) -> bool {
    matches!(
        (ty, field),
        (FrameType::Auth, "version" | "capabilities")
            | (FrameType::Register, "flags")
            | (FrameType::RegisterOk, "assigned_port" | "name")
            | (FrameType::Connect, "stream_id")
    )
}

const CONTROL_TYPES: [FrameType; 13] = [
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
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    // zlayer's encoding of any message decodes with ours (three entry points) to the same values, ext None.
    #[test]
    fn zlayer_encoded_decodes_with_ours(c in control_plain()) {
        let m = to_zlayer(&c);
        let bytes = m.encode();
        let expected = from_zlayer(&m);
        prop_assert_eq!(&expected, &c);

        prop_assert_eq!(our_control_decode(&bytes), Ok(expected.clone()));
        prop_assert_eq!(our_frame_decode(&bytes), Ok(Frame::Control(expected.clone())));
        let whole = decode_whole(&bytes);
        prop_assert_eq!(whole.error, None);
        prop_assert_eq!(whole.frames, vec![Frame::Control(expected.clone())]);
        let bytewise = decode_chunks(bytes.chunks(1));
        prop_assert_eq!(bytewise.error, None);
        prop_assert_eq!(bytewise.frames, vec![Frame::Control(expected)]);
    }

    // Ours without extensions encodes to exactly zlayer's bytes, and zlayer decodes them to the same values.
    #[test]
    fn ours_plain_encodes_like_zlayer(c in control_plain()) {
        let ours = encode_control(&c);
        let m = to_zlayer(&c);
        prop_assert_eq!(&ours, &m.encode());
        prop_assert_eq!(zlayer_decode(&ours), m);
        // Frame::encode of the wrapped message writes the same bytes.
        let mut buf = BytesMut::new();
        Frame::Control(c).encode(&mut buf).unwrap();
        prop_assert_eq!(&buf[..], &ours[..]);
    }

    // With Culvert's extensions: zlayer still decodes the base values, the extension is appended
    // after zlayer's payload, and ours round-trips with the extension intact.
    #[test]
    fn extended_is_read_by_zlayer_as_base(c in control_extended()) {
        let ours = encode_control(&c);
        let m = to_zlayer(&c);
        prop_assert_eq!(zlayer_decode(&ours), m.clone());

        let base = m.encode();
        prop_assert_eq!(ours[0], base[0]);
        prop_assert!(ours.len() >= base.len());
        prop_assert_eq!(&ours[HEADER_LEN..base.len()], &base[HEADER_LEN..]);

        prop_assert_eq!(our_control_decode(&ours), Ok(c.clone()));
        let whole = decode_whole(&ours);
        prop_assert_eq!(whole.error, None);
        prop_assert_eq!(whole.frames, vec![Frame::Control(c.clone())]);
        prop_assert_eq!(strip_ext(&c), from_zlayer(&m));
    }

    // A batch of zlayer-encoded messages, split anywhere, decodes with ours in order.
    #[test]
    fn zlayer_batch_decodes_in_order_across_splits(
        msgs in prop::collection::vec(control_plain(), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut stream = Vec::new();
        for c in &msgs {
            stream.extend_from_slice(&to_zlayer(c).encode());
        }
        let expected: Vec<Frame> = msgs.iter().cloned().map(Frame::Control).collect();
        let split = decode_chunks(split_at_points(&stream, &cuts));
        prop_assert_eq!(split.error, None);
        prop_assert_eq!(split.frames, expected);
    }

    // A batch encoded by us (extensions or not) is walked by zlayer's decoder frame by frame to the base values.
    #[test]
    fn our_batch_is_walked_by_zlayer(
        msgs in prop::collection::vec(prop_oneof![control_plain(), control_extended()], 1..12),
    ) {
        let mut buf = BytesMut::new();
        for c in &msgs {
            c.encode(&mut buf).unwrap();
        }
        let mut rest = &buf[..];
        for c in &msgs {
            let (m, used) = Message::decode(rest).expect("zlayer decodes");
            prop_assert_eq!(m, to_zlayer(c));
            rest = &rest[used..];
        }
        prop_assert!(rest.is_empty());
    }

    // zlayer ignores any bytes after its fields. Ours agrees on the base values; it reads the first
    // trailing bytes as Culvert's extension, and fails only on a field of that extension.
    #[test]
    fn trailing_bytes_after_zlayer_fields(
        c in control_plain(),
        trailer in prop::collection::vec(any::<u8>(), 1..24),
    ) {
        let mut bytes = to_zlayer(&c).encode();
        bytes.extend_from_slice(&trailer);
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());

        let m = zlayer_decode(&bytes);
        prop_assert_eq!(&m, &to_zlayer(&c));
        let ty = c.frame_type();
        match our_control_decode(&bytes) {
            Ok(ours) => prop_assert_eq!(strip_ext(&ours), c),
            Err(DecodeError::Truncated { frame, field })
            | Err(DecodeError::Malformed { frame, field, .. }) => {
                prop_assert_eq!(frame, ty.name());
                prop_assert!(is_extension_field(ty, field), "error on base field {}", field);
            }
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
    }

    // On arbitrary control-frame bytes: whatever ours accepts zlayer accepts with the same base
    // values, and whatever zlayer rejects ours rejects.
    #[test]
    fn arbitrary_control_bytes_agree(
        ty in prop::sample::select(CONTROL_TYPES.to_vec()),
        payload in prop::collection::vec(any::<u8>(), 0..80),
        len_override in prop::option::weighted(0.2, prop_oneof![
            Just(MAX_PAYLOAD_LEN as u32 + 1),
            Just(u32::MAX),
            any::<u32>(),
        ]),
        prefix_len in prop::option::of(0u16..40),
    ) {
        let mut payload = payload;
        // Often make the leading length prefix plausible so string fields get exercised.
        if let Some(n) = prefix_len {
            let n = n.to_be_bytes();
            let (at, width) = match ty {
                FrameType::Register => (0, 1),
                FrameType::Auth | FrameType::AuthFail | FrameType::RegisterFail
                | FrameType::Disconnect => (0, 2),
                FrameType::Connect => (32, 2),
                FrameType::ConnectFail => (16, 2),
                _ => (0, 0),
            };
            if width > 0 && payload.len() >= at + width {
                payload[at..at + width].copy_from_slice(&n[2 - width..]);
            }
        }
        let declared = len_override.unwrap_or(payload.len() as u32);
        let mut bytes = vec![ty as u8];
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend_from_slice(&payload);

        let theirs = Message::decode(&bytes);
        let ours = decode_whole(&bytes);
        if declared as usize != payload.len() {
            // Oversize headers: both reject. Otherwise the frame is incomplete or has a next frame.
            if declared as usize > MAX_PAYLOAD_LEN {
                prop_assert!(theirs.is_err());
                let oversize = matches!(ours.error, Some(DecodeError::Oversize { .. }));
                prop_assert!(oversize, "ours: {:?}", ours.error);
            }
            return Ok(());
        }
        match (&ours.error, theirs) {
            (None, Ok((m, used))) => {
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(ours.frames.len(), 1);
                match &ours.frames[0] {
                    Frame::Control(c) => prop_assert_eq!(strip_ext(c), from_zlayer(&m)),
                    f => prop_assert!(false, "not a control frame: {:?}", f),
                }
            }
            (None, Err(e)) => prop_assert!(false, "ours accepted what zlayer rejects: {}", e),
            (Some(_), Err(_)) => {}
            (Some(e), Ok((m, _))) => match e {
                DecodeError::Truncated { field, .. } | DecodeError::Malformed { field, .. } => {
                    prop_assert!(
                        is_extension_field(ty, field),
                        "ours rejected {:?} on base field {}: {:?}", m, field, e
                    );
                }
                _ => prop_assert!(false, "ours rejected {:?} with {:?}", m, e),
            },
        }
    }
}

// Golden vectors: each hex string was produced once by zlayer-tunnel 0.14.3's `Message::encode`;
// the test checks zlayer still produces it, ours produces it, and ours decodes it.
#[test]
fn golden_vectors_from_zlayer() {
    let u1 = Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
    let u2 = Uuid::from_u128(0x0f1e_2d3c_4b5a_6978_8796_a5b4_c3d2_e1f0);
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::Auth {
                token: "tun_abc".into(),
                client_id: u1,
            },
            "01 00000019 0007 74756e5f616263 00112233445566778899aabbccddeeff",
        ),
        (
            Message::AuthOk { tunnel_id: u2 },
            "02 00000010 0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        ),
        (
            Message::AuthFail {
                reason: "bad token".into(),
            },
            "03 0000000b 0009 62616420746f6b656e",
        ),
        (
            Message::Register {
                name: "ssh".into(),
                protocol: zl::ServiceProtocol::Tcp,
                local_port: 22,
                remote_port: 2222,
            },
            "10 00000009 03 737368 00 0016 08ae",
        ),
        (
            Message::Register {
                name: "dns".into(),
                protocol: zl::ServiceProtocol::Udp,
                local_port: 53,
                remote_port: 0,
            },
            "10 00000009 03 646e73 01 0035 0000",
        ),
        (
            Message::RegisterOk { service_id: u1 },
            "11 00000010 00112233445566778899aabbccddeeff",
        ),
        (
            Message::RegisterFail {
                reason: "port in use".into(),
            },
            "12 0000000d 000b 706f727420696e20757365",
        ),
        (
            Message::Connect {
                service_id: u1,
                connection_id: u2,
                client_addr: "203.0.113.7:51000".into(),
            },
            "20 00000033 00112233445566778899aabbccddeeff 0f1e2d3c4b5a69788796a5b4c3d2e1f0 \
             0011 3230332e302e3131332e373a3531303030",
        ),
        (
            Message::ConnectAck { connection_id: u2 },
            "21 00000010 0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        ),
        (
            Message::ConnectFail {
                connection_id: u2,
                reason: "refused".into(),
            },
            "22 00000019 0f1e2d3c4b5a69788796a5b4c3d2e1f0 0007 72656675736564",
        ),
        (
            Message::Heartbeat {
                timestamp: 1_700_000_000_123,
            },
            "30 00000008 0000018bcfe5687b",
        ),
        (
            Message::HeartbeatAck {
                timestamp: u64::MAX,
            },
            "31 00000008 ffffffffffffffff",
        ),
        (
            Message::Unregister { service_id: u1 },
            "40 00000010 00112233445566778899aabbccddeeff",
        ),
        (
            Message::Disconnect {
                reason: "bye \u{2713}".into(),
            },
            "41 00000009 0007 62796520e29c93",
        ),
    ];
    for (m, h) in cases {
        let golden = hex(h);
        assert_eq!(m.encode(), golden, "zlayer encoding of {m:?}");
        let ours = from_zlayer(&m);
        assert_eq!(encode_control(&ours), golden, "our encoding of {ours:?}");
        assert_eq!(our_control_decode(&golden), Ok(ours), "our decoding of {h}");
        assert_eq!(zlayer_decode(&golden), m);
    }
}

// Golden vectors of Culvert's extensions (written from PROTOCOL.md's layout): ours encodes and
// decodes them, zlayer reads them as the base message.
#[test]
fn golden_vectors_of_culvert_extensions() {
    let u1 = Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
    let u2 = Uuid::from_u128(0x0f1e_2d3c_4b5a_6978_8796_a5b4_c3d2_e1f0);
    let cases: Vec<(Control, &str)> = vec![
        (
            Control::Auth {
                token: Token("tun_abc".into()),
                client_id: u1,
                ext: Some(AuthExt {
                    version: 1,
                    capabilities: 0x8000_0003,
                }),
            },
            // base Auth, then version u8, capabilities u32
            "01 0000001e 0007 74756e5f616263 00112233445566778899aabbccddeeff 01 80000003",
        ),
        (
            Control::Register {
                name: "ssh".into(),
                protocol: ServiceProtocol::Tcp,
                local_port: 22,
                remote_port: 0,
                ext: Some(RegisterExt { flags: 1 }),
            },
            // base Register, then flags u8
            "10 0000000a 03 737368 00 0016 0000 01",
        ),
        (
            Control::RegisterOk {
                service_id: u1,
                ext: Some(RegisterOkExt {
                    assigned_port: 40_000,
                    name: "ssh".into(),
                }),
            },
            // base RegisterOk, then assigned_port u16, name_len u8, name
            "11 00000016 00112233445566778899aabbccddeeff 9c40 03 737368",
        ),
        (
            Control::Connect {
                service_id: u1,
                connection_id: u2,
                client_addr: "[::1]:9".into(),
                ext: Some(ConnectExt {
                    stream_id: StreamId(16_385),
                }),
            },
            // base Connect, then stream_id as a varint (4-byte form for 16385)
            "20 0000002d 00112233445566778899aabbccddeeff 0f1e2d3c4b5a69788796a5b4c3d2e1f0 \
             0007 5b3a3a315d3a39 80004001",
        ),
    ];
    for (c, h) in cases {
        let golden = hex(h);
        assert_eq!(encode_control(&c), golden, "our encoding of {c:?}");
        assert_eq!(our_control_decode(&golden), Ok(c.clone()));
        assert_eq!(zlayer_decode(&golden), to_zlayer(&c));
    }
}

// A 255-byte name made of multi-byte characters (the u8 prefix's maximum) agrees both ways.
#[test]
fn max_length_non_ascii_name() {
    let name = format!("{}a", "\u{e9}".repeat(127));
    assert_eq!(name.len(), 255);
    let c = Control::Register {
        name,
        protocol: ServiceProtocol::Udp,
        local_port: 65_535,
        remote_port: 0,
        ext: None,
    };
    let ours = encode_control(&c);
    assert_eq!(ours, to_zlayer(&c).encode());
    assert_eq!(ours[HEADER_LEN], 255);
    assert_eq!(zlayer_decode(&ours), to_zlayer(&c));
    assert_eq!(our_control_decode(&ours), Ok(c));
}

// At the frame cap the two agree; one byte over, ours refuses to encode and zlayer refuses its own bytes.
#[test]
fn frame_cap_boundary() {
    let fits = "r".repeat(MAX_PAYLOAD_LEN - 2);
    let c = Control::Disconnect { reason: fits };
    let ours = encode_control(&c);
    assert_eq!(ours.len(), HEADER_LEN + MAX_PAYLOAD_LEN);
    assert_eq!(ours, to_zlayer(&c).encode());
    assert_eq!(zlayer_decode(&ours), to_zlayer(&c));
    assert_eq!(our_control_decode(&ours), Ok(c));

    let token = "t".repeat(MAX_PAYLOAD_LEN - 2 - 16);
    let auth = Control::Auth {
        token: Token(token),
        client_id: Uuid::max(),
        ext: None,
    };
    assert_eq!(encode_control(&auth), to_zlayer(&auth).encode());

    let over = Control::Disconnect {
        reason: "r".repeat(MAX_PAYLOAD_LEN - 1),
    };
    let mut buf = BytesMut::from(&b"prefix"[..]);
    assert_eq!(
        over.encode(&mut buf),
        Err(EncodeError::PayloadTooLarge {
            len: MAX_PAYLOAD_LEN + 1,
            max: MAX_PAYLOAD_LEN,
        })
    );
    assert_eq!(&buf[..], b"prefix");
    let theirs = to_zlayer(&over).encode();
    assert!(Message::decode(&theirs).is_err());
    assert!(matches!(
        decode_whole(&theirs).error,
        Some(DecodeError::Oversize { .. })
    ));
}

// Random v4 UUIDs from the uuid crate's generator (not just proptest bytes) agree both ways.
#[test]
fn random_v4_uuids() {
    for _ in 0..500 {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for c in [
            Control::Connect {
                service_id: a,
                connection_id: b,
                client_addr: "127.0.0.1:1".into(),
                ext: None,
            },
            Control::AuthOk {
                tunnel_id: a,
                ext: None,
            },
            Control::Unregister { service_id: b },
        ] {
            let ours = encode_control(&c);
            assert_eq!(ours, to_zlayer(&c).encode());
            assert_eq!(our_control_decode(&ours), Ok(c));
        }
    }
}

// The 13 control type codes are the same numbers in both crates.
#[test]
fn type_codes_match() {
    for ty in CONTROL_TYPES {
        let theirs = zl::MessageType::try_from(ty as u8).expect("zlayer knows the code");
        assert_eq!(theirs as u8, ty as u8);
        assert_eq!(format!("{theirs:?}"), ty.name());
    }
    for b in 0..=u8::MAX {
        if zl::MessageType::try_from(b).is_ok() {
            assert!(CONTROL_TYPES.iter().any(|t| *t as u8 == b), "0x{b:02x}");
        }
    }
    assert_eq!(zl::HEADER_SIZE, HEADER_LEN);
    assert_eq!(zl::MAX_MESSAGE_SIZE - zl::HEADER_SIZE, MAX_PAYLOAD_LEN);
}

// A decoder fed a zlayer stream with a frame straddling every possible split point still agrees.
#[test]
fn every_two_way_split_of_a_zlayer_stream() {
    let u = Uuid::from_u128(7);
    let msgs = [
        Message::Auth {
            token: "tok".into(),
            client_id: u,
        },
        Message::Register {
            name: "web".into(),
            protocol: zl::ServiceProtocol::Tcp,
            local_port: 8080,
            remote_port: 0,
        },
        Message::Heartbeat { timestamp: 42 },
    ];
    let stream: Vec<u8> = msgs.iter().flat_map(Message::encode).collect();
    let expected: Vec<Frame> = msgs
        .iter()
        .map(|m| Frame::Control(from_zlayer(m)))
        .collect();
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        let out = decode_chunks([a, b]);
        assert_eq!(out.error, None, "cut at {cut}");
        assert_eq!(out.frames, expected, "cut at {cut}");
    }
    let mut d = FrameDecoder::new();
    d.push(Bytes::from(stream));
    assert!(matches!(d.next_frame(), Ok(Some(Frame::Control(_)))));
}
