//! Incremental frame decoder over received WebSocket messages.
//!
//! Frames may be split across messages at any byte. A frame that lies wholly
//! inside one pushed buffer is split out of it without copying; only a frame
//! that straddles two buffers is assembled, into a buffer sized by its
//! already-validated header. With [`FrameDecoder::data_in_parts`], a straddling
//! `StreamData` frame is not assembled either: its data comes out as consecutive
//! `StreamData` frames of the same stream, each a slice of the buffer it arrived in.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::Frame;
use crate::header::{FrameType, Header, HEADER_LEN};
use crate::{varint, DecodeError, StreamId};

/// A `StreamData` stream id cut short. Not reachable (the id's length is checked from its
/// first byte before it is read), but an error rather than a panic if it ever were.
const TRUNCATED_ID: DecodeError = DecodeError::Truncated {
    frame: "StreamData",
    field: "stream_id",
};

/// Turns a sequence of byte buffers into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Received bytes not yet looked at.
    input: Bytes,
    /// The start of a frame that straddles buffers (header, then payload).
    partial: BytesMut,
    /// Header of the frame in `partial`, once its 5 bytes are complete and valid.
    header: Option<Header>,
    /// Set after an error: the stream is no longer framed and yields nothing more.
    failed: bool,
    /// Straddling `StreamData` frames come out in parts instead of being assembled.
    in_parts: bool,
    /// The `StreamData` frame coming out in parts: its stream, the data bytes still to
    /// come, and whether a part of it has been returned.
    part: Option<(StreamId, usize, bool)>,
    /// The latest frame returned continued a `StreamData` frame already begun.
    continued: bool,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Lets a `StreamData` frame that straddles pushed buffers come out in parts (each a
    /// `StreamData` of the same stream carrying the data bytes that have arrived, never
    /// none), so its data is not copied to assemble it. To a receiver for whom a stream's
    /// data is a byte sequence (as to [`crate::Connection`]), the parts mean what the
    /// whole frame means. Every other frame still comes out whole.
    pub fn data_in_parts(&mut self, on: bool) {
        self.in_parts = on;
    }

    /// Whether the latest frame [`FrameDecoder::next_frame`] returned was a later part of a
    /// `StreamData` frame (see [`FrameDecoder::data_in_parts`]), not the start of a frame.
    pub fn last_was_continuation(&self) -> bool {
        self.continued
    }

    /// Queues received bytes. Call [`FrameDecoder::next_frame`] until it returns `Ok(None)` before pushing more.
    pub fn push(&mut self, bytes: Bytes) {
        if self.failed {
            return;
        }
        if self.input.is_empty() {
            self.input = bytes;
        } else {
            // The caller pushed again before draining: keep order by moving the rest into `partial`.
            let rest = std::mem::take(&mut self.input);
            self.partial.extend_from_slice(&rest);
            self.partial.extend_from_slice(&bytes);
            self.reparse_partial();
        }
    }

    fn reparse_partial(&mut self) {
        // Move anything beyond the current frame back into `input` so the zero-copy path resumes.
        let all = std::mem::take(&mut self.partial).freeze();
        self.header = None;
        self.input = all;
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.input.len() + self.partial.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the first error.
    ///
    /// After an error the decoder stays failed: the byte stream has lost its framing.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.failed {
            return Ok(None);
        }
        self.continued = false;
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
            self.input.clear();
            self.partial = BytesMut::new();
            self.part = None;
        }
        r
    }

    /// The next part of the `StreamData` frame coming out in parts, if any byte of it is here.
    fn next_part(&mut self) -> Option<Frame> {
        let (id, left, started) = self.part?;
        if self.input.is_empty() {
            return None;
        }
        let data = self.input.split_to(left.min(self.input.len()));
        let left = left - data.len();
        self.part = (left > 0).then_some((id, left, true));
        self.continued = started;
        Some(Frame::StreamData { id, data })
    }

    fn next_inner(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.part.is_some() {
            return Ok(self.next_part());
        }
        if self.partial.is_empty() {
            // Zero-copy path: the whole frame is inside `input`.
            if self.input.len() < HEADER_LEN {
                if !self.input.is_empty() {
                    self.partial.extend_from_slice(&self.input);
                    self.input.clear();
                }
                return Ok(None);
            }
            let header = Header::parse(self.input[..HEADER_LEN].try_into().expect("5 bytes"))?;
            if self.input.len() >= HEADER_LEN + header.len {
                self.input.advance(HEADER_LEN);
                let payload = self.input.split_to(header.len);
                return Frame::decode(header.ty, payload).map(Some);
            }
            if self.in_parts && header.ty == FrameType::StreamData && header.len > 1 {
                if let Some(id_len) = self.input.get(HEADER_LEN).map(|&b| 1usize << (b >> 6)) {
                    if id_len < header.len && self.input.len() >= HEADER_LEN + id_len {
                        // Header and stream id are here: the data comes in parts from now.
                        self.input.advance(HEADER_LEN);
                        let id = varint::get(&mut self.input).ok_or(TRUNCATED_ID)?;
                        self.part = Some((StreamId(id), header.len - id_len, false));
                        return Ok(self.next_part());
                    }
                }
                // Only the header and stream id are assembled (or, with no data, the frame).
                self.partial.extend_from_slice(&self.input);
                self.input.clear();
                self.header = Some(header);
                return Ok(None);
            }
            // Straddles: keep the validated header, buffer sized by it.
            self.partial.reserve(HEADER_LEN + header.len);
            self.partial.extend_from_slice(&self.input);
            self.input.clear();
            self.header = Some(header);
            return Ok(None);
        }
        // Assembling a frame that straddles buffers.
        let header = match self.header {
            Some(h) => h,
            None => {
                let need = HEADER_LEN - self.partial.len();
                let take = need.min(self.input.len());
                self.partial.extend_from_slice(&self.input[..take]);
                self.input.advance(take);
                if self.partial.len() < HEADER_LEN {
                    return Ok(None);
                }
                let h = Header::parse(self.partial[..HEADER_LEN].try_into().expect("5 bytes"))?;
                if !(self.in_parts && h.ty == FrameType::StreamData) {
                    self.partial.reserve(h.len);
                }
                self.header = Some(h);
                h
            }
        };
        if self.in_parts && header.ty == FrameType::StreamData && header.len > 1 {
            // Only the header and the stream id are assembled; the data comes in parts.
            if self.partial.len() == HEADER_LEN {
                let Some(&first) = self.input.first() else {
                    return Ok(None);
                };
                self.partial.extend_from_slice(&[first]);
                self.input.advance(1);
            }
            let id_len = 1usize << (self.partial[HEADER_LEN] >> 6);
            if id_len < header.len {
                let need = (HEADER_LEN + id_len).saturating_sub(self.partial.len());
                let take = need.min(self.input.len());
                self.partial.extend_from_slice(&self.input[..take]);
                self.input.advance(take);
                if self.partial.len() < HEADER_LEN + id_len {
                    return Ok(None);
                }
                let mut head = std::mem::take(&mut self.partial).freeze();
                self.header = None;
                head.advance(HEADER_LEN);
                let id = StreamId(varint::get(&mut head).ok_or(TRUNCATED_ID)?);
                let left = header.len - id_len;
                if head.is_empty() {
                    self.part = Some((id, left, false));
                    return Ok(self.next_part());
                }
                // Data assembled before parts were turned on, mid-frame: it comes out first.
                let left = left - head.len();
                self.part = (left > 0).then_some((id, left, true));
                return Ok(Some(Frame::StreamData { id, data: head }));
            }
            // An id and no data: assembled and decoded whole, as before.
        }
        let need = HEADER_LEN + header.len - self.partial.len();
        let take = need.min(self.input.len());
        self.partial.extend_from_slice(&self.input[..take]);
        self.input.advance(take);
        if self.partial.len() < HEADER_LEN + header.len {
            return Ok(None);
        }
        let mut whole = std::mem::take(&mut self.partial).freeze();
        self.header = None;
        whole.advance(HEADER_LEN);
        Frame::decode(header.ty, whole).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_frame(id: u64, data: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        Frame::StreamData {
            id: StreamId(id),
            data: Bytes::copy_from_slice(data),
        }
        .encode(&mut buf)
        .unwrap();
        buf.freeze()
    }

    /// A straddling frame's data comes out as slices of the buffers it arrived in: the
    /// parts point into the pushed buffers (no copy), and only the first is a frame start.
    #[test]
    fn straddling_data_comes_out_as_slices_of_what_was_pushed() {
        let frame = data_frame(300, &[7u8; 3000]);
        let (a, b) = (frame.slice(..1000), frame.slice(1000..));
        let mut d = FrameDecoder::new();
        d.data_in_parts(true);
        d.push(a.clone());
        let Some(Frame::StreamData { id, data: first }) = d.next_frame().unwrap() else {
            panic!("no first part");
        };
        assert_eq!(id, StreamId(300));
        assert!(!d.last_was_continuation());
        assert_eq!(first.as_ptr(), a[HEADER_LEN + 2..].as_ptr());
        assert_eq!(d.next_frame(), Ok(None));
        d.push(b.clone());
        let Some(Frame::StreamData { data: rest, .. }) = d.next_frame().unwrap() else {
            panic!("no second part");
        };
        assert!(d.last_was_continuation());
        assert_eq!(rest.as_ptr(), b.as_ptr());
        assert_eq!(first.len() + rest.len(), 3000);
        assert_eq!((d.next_frame(), d.buffered()), (Ok(None), 0));
    }

    /// Parts turned on while a straddling frame is being assembled: what was assembled
    /// comes out first, then the rest in parts.
    #[test]
    fn parts_turned_on_mid_frame_lose_nothing() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let frame = data_frame(9, &data);
        let mut d = FrameDecoder::new();
        d.push(frame.slice(..2000));
        assert_eq!(d.next_frame(), Ok(None));
        d.data_in_parts(true);
        d.push(frame.slice(2000..3000));
        let mut got = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            let Frame::StreamData { id, data } = f else {
                panic!("{f:?}");
            };
            assert_eq!(id, StreamId(9));
            got.extend_from_slice(&data);
        }
        d.push(frame.slice(3000..));
        while let Some(Frame::StreamData { data, .. }) = d.next_frame().unwrap() {
            got.extend_from_slice(&data);
        }
        assert_eq!(got, data);
        assert_eq!(d.buffered(), 0);
    }

    /// A StreamData frame without data is still decoded whole (and so refused by the
    /// connection as before), however it is split.
    #[test]
    fn a_data_frame_without_data_comes_out_whole() {
        let frame = data_frame(70, &[]);
        for cut in 0..frame.len() {
            let mut d = FrameDecoder::new();
            d.data_in_parts(true);
            d.push(frame.slice(..cut));
            assert_eq!(d.next_frame(), Ok(None));
            d.push(frame.slice(cut..));
            assert_eq!(
                d.next_frame(),
                Ok(Some(Frame::StreamData {
                    id: StreamId(70),
                    data: Bytes::new()
                }))
            );
        }
    }
}
