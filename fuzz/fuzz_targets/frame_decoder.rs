//! `FrameDecoder` over arbitrary bytes: any split of the byte stream decodes exactly as
//! the whole does (and as a reference parse built from `Header::parse` and
//! `Frame::decode`), and every decoded frame re-encodes and decodes to an equal value.
//!
//! Input layout: `mode | splits | stream`.
//! - `mode & 0x80`: feed the stream one byte at a time.
//! - otherwise `mode & 0x07` split offsets follow, each a little-endian u16 taken modulo
//!   the stream length + 1 (sorted; repeats give empty pushes).
//! - `mode & 0x40`: lazy draining, at most one `next_frame` per push, so the decoder is
//!   pushed to again before it was drained.
//! - `mode & 0x20`: the split decoder lets straddling `StreamData` frames out in parts
//!   (`FrameDecoder::data_in_parts`, as the connection does); its parts, put back together
//!   by `last_was_continuation`, must equal the whole decode, apart from the data so far of
//!   a last `StreamData` frame that has not all arrived.
//!
//! Seeds: `fuzz/corpus/frame_decoder/` (mode byte 0x00 followed by whole frames).
#![no_main]

use bytes::Bytes;
use culvert_fuzz::check_roundtrip;
use culvert_proto::{DecodeError, Frame, FrameDecoder, Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

type Outcome = Result<Frame, DecodeError>;

/// Drains `d`: collects frames until it needs more bytes (or, when `lazy`, after one call).
/// A continuation part (see `FrameDecoder::data_in_parts`) is joined to the frame it
/// continues, which must be a `StreamData` of the same stream; no part may be empty.
fn drain(d: &mut FrameDecoder, out: &mut Vec<Outcome>, lazy: bool) {
    loop {
        match d.next_frame() {
            Ok(None) => return,
            Ok(Some(Frame::StreamData { id, data })) if d.last_was_continuation() => {
                assert!(!data.is_empty(), "an empty continuation");
                match out.last_mut() {
                    Some(Ok(Frame::StreamData {
                        id: first,
                        data: so_far,
                    })) if *first == id => {
                        let mut joined = so_far.to_vec();
                        joined.extend_from_slice(&data);
                        *so_far = Bytes::from(joined);
                    }
                    other => panic!("a continuation of {id:?} after {other:?}"),
                }
            }
            Ok(Some(f)) => {
                assert!(
                    !d.last_was_continuation(),
                    "a continuation that is no StreamData"
                );
                out.push(Ok(f))
            }
            Err(e) => {
                out.push(Err(e));
                // A failed decoder stays failed and holds nothing.
                assert_eq!(d.next_frame(), Ok(None), "decoder yielded after an error");
                assert_eq!(d.buffered(), 0, "failed decoder still buffers bytes");
                return;
            }
        }
        if lazy {
            return;
        }
    }
}

/// The specification, written directly: header, length check, payload decode, repeat.
fn reference(stream: &Bytes) -> (Vec<Outcome>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN {
        let h: [u8; HEADER_LEN] = stream[at..at + HEADER_LEN].try_into().unwrap();
        let header = match Header::parse(h) {
            Ok(h) => h,
            Err(e) => {
                out.push(Err(e));
                return (out, 0);
            }
        };
        if stream.len() - at - HEADER_LEN < header.len {
            break;
        }
        let payload = stream.slice(at + HEADER_LEN..at + HEADER_LEN + header.len);
        at += HEADER_LEN + header.len;
        match Frame::decode(header.ty, payload) {
            Ok(f) => out.push(Ok(f)),
            Err(e) => {
                out.push(Err(e));
                return (out, 0);
            }
        }
    }
    (out, stream.len() - at)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let byte_at_a_time = mode & 0x80 != 0;
    let lazy = mode & 0x40 != 0;
    let in_parts = mode & 0x20 != 0;
    let nsplits = if byte_at_a_time {
        0
    } else {
        usize::from(mode & 0x07)
    };
    if rest.len() < 2 * nsplits {
        return;
    }
    let (split_bytes, stream) = rest.split_at(2 * nsplits);
    let stream = Bytes::copy_from_slice(stream);

    // Whole: one push, drained.
    let mut whole = FrameDecoder::new();
    let mut whole_out = Vec::new();
    whole.push(stream.clone());
    drain(&mut whole, &mut whole_out, false);

    let (ref_out, ref_left) = reference(&stream);
    assert_eq!(
        whole_out, ref_out,
        "whole decode differs from the reference parse"
    );
    assert_eq!(
        whole.buffered(),
        ref_left,
        "whole decode buffers the wrong count"
    );

    // Split.
    let mut cuts: Vec<usize> = if byte_at_a_time {
        (1..stream.len()).collect()
    } else {
        split_bytes
            .chunks_exact(2)
            .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
            .collect()
    };
    cuts.sort_unstable();
    cuts.push(stream.len());
    let mut split = FrameDecoder::new();
    split.data_in_parts(in_parts);
    let mut split_out = Vec::new();
    let mut at = 0;
    for cut in cuts {
        split.push(stream.slice(at..cut));
        at = cut;
        drain(&mut split, &mut split_out, lazy);
    }
    drain(&mut split, &mut split_out, false);
    if in_parts && split_out.len() == whole_out.len() + 1 {
        // The data so far of a last StreamData frame still arriving.
        let last = split_out.pop();
        assert!(
            matches!(&last, Some(Ok(Frame::StreamData { data, .. })) if !data.is_empty()),
            "parts gave an extra {last:?}"
        );
        assert!(
            whole.buffered() > 0,
            "an extra frame from a stream that ended whole"
        );
    } else if !in_parts || whole.buffered() == 0 {
        // A failed decoder must drop what is pushed to it afterwards, as the whole one did
        // (fuzz/regressions/frame_decoder/failed-decoder-keeps-buffering). A decoder
        // handing out a last frame's data in parts holds less than one assembling it.
        assert_eq!(
            split.buffered(),
            whole.buffered(),
            "split decode buffers a different count"
        );
    }
    assert_eq!(
        split_out, whole_out,
        "split decode differs from whole decode"
    );

    // Every decoded frame survives a round trip.
    for f in whole_out.iter().flatten() {
        check_roundtrip(f).expect("a decoded frame must be encodable");
    }
});
