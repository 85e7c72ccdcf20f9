//! Properties of the frame codec under random input: round trips, split invariance of
//! the stream decoder, and hostile byte streams that never panic. The exact decode errors
//! are in `codec_decode_errors.rs`, the encoder's in `codec_encode.rs`.

mod common;

use bytes::{Bytes, BytesMut};

use culvert_proto::frame::MAX_TARGET_LEN;
use culvert_proto::{
    varint, Control, Frame, FrameDecoder, Header, ServiceProtocol, StreamId, Target, HEADER_LEN,
    MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
};
use proptest::prelude::*;

use common::codec::*;
use common::{
    any_frame, decode_chunks, decode_chunks_in_parts, decode_chunks_undrained, decode_whole,
    encode, split_at_points, Outcome,
};

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

    // Several frames concatenated decode in order, whole, split anywhere, byte by byte, and
    // pushed undrained; with data in parts, the parts put back together are the frames sent.
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
        prop_assert_eq!(&decode_chunks_in_parts(split_at_points(&buf, &cuts), false), &expected);
        prop_assert_eq!(&decode_chunks_in_parts(buf.chunks(1), false), &expected);
        prop_assert_eq!(&decode_chunks_in_parts(split_at_points(&buf, &cuts), true), &expected);
    }

    // With data in parts, any byte stream yields what whole frames yield, the same first
    // error included; the one difference allowed is a last StreamData frame that has not
    // all arrived, whose data so far comes out already.
    #[test]
    fn data_in_parts_yields_what_whole_frames_do_on_any_bytes(
        bytes in hostile_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = decode_whole(&bytes);
        for parts in [
            decode_chunks_in_parts(split_at_points(&bytes, &cuts), false),
            decode_chunks_in_parts(bytes.chunks(1), false),
            decode_chunks_in_parts(split_at_points(&bytes, &cuts), true),
        ] {
            prop_assert_eq!(&parts.error, &whole.error);
            let n = whole.frames.len();
            prop_assert_eq!(&parts.frames[..n.min(parts.frames.len())], &whole.frames[..]);
            match &parts.frames[n..] {
                [] => {}
                [Frame::StreamData { data, .. }] => {
                    prop_assert!(whole.error.is_none() && !data.is_empty());
                }
                extra => prop_assert!(false, "extra frames {:?}", extra),
            }
        }
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
