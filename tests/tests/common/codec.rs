//! Helpers of the codec tests: raw frames built byte by byte, single-frame decoding that
//! checks whole and byte-by-byte feeding agree, and the expected typed errors.

use bytes::BytesMut;
use culvert_proto::{DecodeError, EncodeError, Frame, FrameType};

use super::{decode_chunks, decode_whole};

pub const ALL_TYPES: [FrameType; 22] = [
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
pub fn raw(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Decodes a single raw frame through the stream decoder, fed whole and byte by byte; both must agree.
pub fn decode_one(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let whole = decode_whole(bytes);
    let bytewise = decode_chunks(bytes.chunks(1));
    assert_eq!(whole, bytewise, "whole and byte-by-byte feeding disagree");
    match (whole.error, whole.frames.as_slice()) {
        (Some(e), []) => Err(e),
        (None, [f]) => Ok(f.clone()),
        other => panic!("expected exactly one frame or one error, got {other:?}"),
    }
}

pub fn err(ty: FrameType, payload: &[u8]) -> DecodeError {
    decode_one(&raw(ty as u8, payload)).expect_err("must not decode")
}

pub fn truncated(frame: &'static str, field: &'static str) -> DecodeError {
    DecodeError::Truncated { frame, field }
}

pub fn trailing(frame: &'static str, extra: usize) -> DecodeError {
    DecodeError::TrailingBytes { frame, extra }
}

/// Encodes `f` into a buffer that already holds other bytes; asserts the error and that the buffer is unchanged.
pub fn assert_encode_err(f: &Frame, expected: EncodeError) {
    let prior: &[u8] = b"\x41\x00\x00\x00\x02\x00\x00earlier frames";
    let mut buf = BytesMut::from(prior);
    assert_eq!(f.encode(&mut buf), Err(expected));
    assert_eq!(&buf[..], prior, "buffer changed by a failed encode");
}
