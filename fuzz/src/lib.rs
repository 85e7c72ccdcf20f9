//! Helpers shared by the fuzz targets: a structured generator of well-formed frames
//! and the encode/decode round-trip check.

pub mod io;
pub mod ops;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use culvert_proto::control::{AuthExt, ConnectExt, RegisterExt, RegisterOkExt};
use culvert_proto::{Control, Frame, FrameDecoder, ServiceProtocol, StreamId, Target, Token};
use uuid::Uuid;

/// A stream id biased towards the small ids a connection actually uses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ArbStreamId {
    /// `StreamId(n)`: low sequence numbers of either side.
    Small(u8),
    /// Any 64-bit value (may exceed the varint range: the encoder must refuse it).
    Any(StreamId),
}

impl ArbStreamId {
    /// The id.
    pub fn get(self) -> StreamId {
        match self {
            ArbStreamId::Small(n) => StreamId(u64::from(n)),
            ArbStreamId::Any(id) => id,
        }
    }
}

/// An integer biased towards small values, with the full range still reachable.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ArbU64 {
    /// 0..=255.
    Small(u8),
    /// 0..=65535.
    Medium(u16),
    /// Anything.
    Any(u64),
}

impl ArbU64 {
    /// The value.
    pub fn get(self) -> u64 {
        match self {
            ArbU64::Small(n) => u64::from(n),
            ArbU64::Medium(n) => u64::from(n),
            ArbU64::Any(n) => n,
        }
    }
}

/// Every control message, with `Uuid`s as raw bytes (uuid has no `Arbitrary` here).
#[derive(Arbitrary, Debug, Clone)]
#[allow(missing_docs)]
pub enum ArbControl {
    Auth {
        token: Token,
        client_id: [u8; 16],
        ext: Option<AuthExt>,
    },
    AuthOk {
        tunnel_id: [u8; 16],
    },
    AuthFail {
        reason: String,
    },
    Register {
        name: String,
        protocol: ServiceProtocol,
        local_port: u16,
        remote_port: u16,
        ext: Option<RegisterExt>,
    },
    RegisterOk {
        service_id: [u8; 16],
        ext: Option<RegisterOkExt>,
    },
    RegisterFail {
        reason: String,
    },
    Connect {
        service_id: [u8; 16],
        connection_id: [u8; 16],
        client_addr: String,
        ext: Option<ConnectExt>,
    },
    ConnectAck {
        connection_id: [u8; 16],
    },
    ConnectFail {
        connection_id: [u8; 16],
        reason: String,
    },
    Heartbeat {
        timestamp: u64,
    },
    HeartbeatAck {
        timestamp: u64,
    },
    Unregister {
        service_id: [u8; 16],
    },
    Disconnect {
        reason: String,
    },
}

impl ArbControl {
    /// The control message.
    pub fn get(self) -> Control {
        let u = Uuid::from_bytes;
        match self {
            ArbControl::Auth {
                token,
                client_id,
                ext,
            } => Control::Auth {
                token,
                client_id: u(client_id),
                ext,
            },
            ArbControl::AuthOk { tunnel_id } => Control::AuthOk {
                tunnel_id: u(tunnel_id),
                ext: None,
            },
            ArbControl::AuthFail { reason } => Control::AuthFail { reason },
            ArbControl::Register {
                name,
                protocol,
                local_port,
                remote_port,
                ext,
            } => Control::Register {
                name,
                protocol,
                local_port,
                remote_port,
                ext,
            },
            ArbControl::RegisterOk { service_id, ext } => Control::RegisterOk {
                service_id: u(service_id),
                ext,
            },
            ArbControl::RegisterFail { reason } => Control::RegisterFail { reason },
            ArbControl::Connect {
                service_id,
                connection_id,
                client_addr,
                ext,
            } => Control::Connect {
                service_id: u(service_id),
                connection_id: u(connection_id),
                client_addr,
                ext,
            },
            ArbControl::ConnectAck { connection_id } => Control::ConnectAck {
                connection_id: u(connection_id),
            },
            ArbControl::ConnectFail {
                connection_id,
                reason,
            } => Control::ConnectFail {
                connection_id: u(connection_id),
                reason,
            },
            ArbControl::Heartbeat { timestamp } => Control::Heartbeat { timestamp },
            ArbControl::HeartbeatAck { timestamp } => Control::HeartbeatAck { timestamp },
            ArbControl::Unregister { service_id } => Control::Unregister {
                service_id: u(service_id),
            },
            ArbControl::Disconnect { reason } => Control::Disconnect { reason },
        }
    }
}

/// Every frame, built from arbitrary fields (the encoder may still refuse some: too long, out of range).
#[derive(Arbitrary, Debug, Clone)]
#[allow(missing_docs)]
pub enum ArbFrame {
    Control(ArbControl),
    StreamOpen { id: ArbStreamId, target: String },
    StreamData { id: ArbStreamId, data: Vec<u8> },
    StreamFin { id: ArbStreamId },
    StreamReset { id: ArbStreamId, code: ArbU64 },
    StreamCredit { id: ArbStreamId, increment: ArbU64 },
    ConnCredit { increment: ArbU64 },
    MaxStreams { count: ArbU64 },
    Datagram { flow: ArbU64, data: Vec<u8> },
    GoAway { code: ArbU64, reason: String },
}

impl ArbFrame {
    /// The frame.
    pub fn get(self) -> Frame {
        match self {
            ArbFrame::Control(c) => Frame::Control(c.get()),
            // The string grammar picks the kind, so every kind but an inbound open occurs.
            ArbFrame::StreamOpen { id, target } => Frame::StreamOpen {
                id: id.get(),
                target: Target::parse(&target),
            },
            ArbFrame::StreamData { id, data } => Frame::StreamData {
                id: id.get(),
                data: Bytes::from(data),
            },
            ArbFrame::StreamFin { id } => Frame::StreamFin { id: id.get() },
            ArbFrame::StreamReset { id, code } => Frame::StreamReset {
                id: id.get(),
                code: code.get(),
            },
            ArbFrame::StreamCredit { id, increment } => Frame::StreamCredit {
                id: id.get(),
                increment: increment.get(),
            },
            ArbFrame::ConnCredit { increment } => Frame::ConnCredit {
                increment: increment.get(),
            },
            ArbFrame::MaxStreams { count } => Frame::MaxStreams { count: count.get() },
            ArbFrame::Datagram { flow, data } => Frame::Datagram {
                flow: flow.get(),
                data: Bytes::from(data),
            },
            ArbFrame::GoAway { code, reason } => Frame::GoAway {
                code: code.get(),
                reason,
            },
        }
    }
}

/// Decodes exactly one whole frame from `wire`, asserting nothing else is there.
pub fn decode_one(wire: Bytes) -> Frame {
    let len = wire.len();
    let mut d = FrameDecoder::new();
    d.push(wire);
    let f = match d.next_frame() {
        Ok(Some(f)) => f,
        other => panic!("re-decoding {len} encoded bytes gave {other:?}"),
    };
    assert_eq!(d.next_frame(), Ok(None), "more than one frame encoded");
    assert_eq!(d.buffered(), 0, "encoded frame has trailing bytes");
    f
}

/// Encodes a frame that the encoder accepted, decodes it again and asserts it is the
/// same value, and that encoding is stable (the encoding of the decoded value is
/// byte-identical). Returns the encoding, or `None` when the encoder refused the frame
/// (in which case it must have left the buffer untouched).
pub fn check_roundtrip(frame: &Frame) -> Option<Bytes> {
    let mut buf = BytesMut::from(&b"prefix"[..]);
    match frame.encode(&mut buf) {
        Ok(()) => {}
        Err(_) => {
            assert_eq!(&buf[..], b"prefix", "a failed encode changed the buffer");
            return None;
        }
    }
    assert_eq!(&buf[..6], b"prefix", "encode overwrote earlier bytes");
    let wire = buf.split_off(6).freeze();
    assert!(
        wire.len() <= culvert_proto::MAX_FRAME_LEN,
        "encoded frame of {} bytes exceeds the frame cap",
        wire.len()
    );
    let back = decode_one(wire.clone());
    assert_eq!(&back, frame, "decode(encode(frame)) differs");
    let mut again = BytesMut::new();
    back.encode(&mut again)
        .expect("re-encoding a decoded frame");
    assert_eq!(&again[..], &wire[..], "encoding is not stable");
    Some(wire)
}
