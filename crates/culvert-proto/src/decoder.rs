//! Incremental frame decoder over received WebSocket messages.
//!
//! Frames may be split across messages at any byte. A frame that lies wholly
//! inside one pushed buffer is split out of it without copying; only a frame
//! that straddles two buffers is assembled, into a buffer sized by its
//! already-validated header.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::Frame;
use crate::header::{Header, HEADER_LEN};
use crate::DecodeError;

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
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
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
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
            self.input.clear();
            self.partial = BytesMut::new();
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Frame>, DecodeError> {
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
                self.partial.reserve(h.len);
                self.header = Some(h);
                h
            }
        };
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
