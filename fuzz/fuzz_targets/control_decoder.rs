//! Payload decoders over arbitrary payloads: `type byte | payload`.
//!
//! For every type byte that names a frame type (others are skipped: the header
//! check refuses them before any payload is read), `Frame::decode` and
//! `Control::decode` must not panic, must agree with each other, and whatever they
//! decode must re-encode and decode to an equal value. Control messages that carry
//! no varint must re-encode to a prefix of the payload they came from (the decoder
//! ignores trailing bytes, as zlayer-tunnel v1 does, and nothing else is lossy).
//!
//! Seeds: `fuzz/corpus/control_decoder/` (a type byte followed by a payload).
#![no_main]

use bytes::Bytes;
use culvert_fuzz::check_roundtrip;
use culvert_proto::{Control, DecodeError, Frame, FrameType, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ty_byte, payload)) = data.split_first() else {
        return;
    };
    let Some(ty) = FrameType::from_u8(ty_byte) else {
        return;
    };
    assert_eq!(
        ty as u8, ty_byte,
        "FrameType::from_u8 is not the inverse of `as u8`"
    );
    // Only payloads a valid header could announce reach the payload decoders.
    if payload.len() > ty.max_payload() {
        return;
    }
    let payload = Bytes::copy_from_slice(payload);

    let frame = Frame::decode(ty, payload.clone());
    let control = Control::decode(ty, payload.clone());

    let is_control = matches!(
        ty,
        FrameType::Auth
            | FrameType::AuthOk
            | FrameType::AuthFail
            | FrameType::Register
            | FrameType::RegisterOk
            | FrameType::RegisterFail
            | FrameType::Connect
            | FrameType::ConnectAck
            | FrameType::ConnectFail
            | FrameType::Heartbeat
            | FrameType::HeartbeatAck
            | FrameType::Unregister
            | FrameType::Disconnect
    );
    if is_control {
        assert_eq!(
            frame,
            control.clone().map(Frame::Control),
            "Frame::decode and Control::decode disagree on a control type"
        );
    } else {
        assert!(
            matches!(control, Err(DecodeError::Malformed { field: "type", .. })),
            "Control::decode accepted data-plane type {ty:?}: {control:?}"
        );
        assert!(
            !matches!(frame, Ok(Frame::Control(_))),
            "a data-plane type decoded as a control message"
        );
    }

    let Ok(frame) = frame else {
        return;
    };
    if let Frame::Control(c) = &frame {
        assert_eq!(c.frame_type(), ty, "decoded control has another frame type");
    }
    let wire = check_roundtrip(&frame).expect("a decoded frame must be encodable");
    assert_eq!(wire[0], ty_byte, "re-encoded with another type byte");
    let len = u32::from_be_bytes(wire[1..HEADER_LEN].try_into().unwrap()) as usize;
    assert_eq!(len, wire.len() - HEADER_LEN, "length field is wrong");
    assert!(
        len <= payload.len(),
        "re-encoding grew the payload from {} to {len} bytes",
        payload.len()
    );
    let exact = match &frame {
        // Varints may arrive in a longer than shortest form; everything else is exact.
        Frame::Control(Control::Connect { ext: Some(_), .. }) => false,
        Frame::Control(_) => true,
        _ => false,
    };
    if exact {
        assert_eq!(
            &wire[HEADER_LEN..],
            &payload[..len],
            "re-encoded control payload is not a prefix of the original"
        );
    }
});
