//! Where the scheduler writes a batch: one contiguous buffer, or [`Transmit`]'s segments
//! for a vectored write that copies no payload.

use bytes::{Bytes, BytesMut};

/// Where [`Connection`] puts the frames of one batch.
pub(super) trait TxOut {
    /// Bytes produced so far in this batch.
    fn written(&self) -> usize;
    /// Where the next frame header (or small whole frame) is encoded.
    fn header(&mut self) -> &mut BytesMut;
    /// Ends the header being encoded.
    fn end_header(&mut self);
    /// A payload slice that follows the last header.
    fn payload(&mut self, b: Bytes);
    /// A whole pre-encoded frame.
    fn frame(&mut self, b: Bytes);
}

/// One contiguous buffer (payloads copied).
pub(super) struct Contiguous<'a> {
    pub(super) buf: &'a mut BytesMut,
    pub(super) start: usize,
}

impl TxOut for Contiguous<'_> {
    fn written(&self) -> usize {
        self.buf.len() - self.start
    }
    fn header(&mut self) -> &mut BytesMut {
        self.buf
    }
    fn end_header(&mut self) {}
    fn payload(&mut self, b: Bytes) {
        self.buf.extend_from_slice(&b);
    }
    fn frame(&mut self, b: Bytes) {
        self.buf.extend_from_slice(&b);
    }
}

/// A batch as segments for a vectored write: headers are encoded into a shared scratch
/// buffer and split off; payloads are the application's own `Bytes`, never copied.
#[derive(Debug, Default)]
pub struct Transmit {
    /// The batch, in order.
    pub segments: Vec<Bytes>,
    /// Total bytes in `segments`.
    pub len: usize,
    scratch: BytesMut,
}

impl Transmit {
    /// An empty batch.
    pub fn new() -> Transmit {
        Transmit::default()
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.segments.clear();
        self.len = 0;
    }
}

impl TxOut for Transmit {
    fn written(&self) -> usize {
        self.len + self.scratch.len()
    }
    fn header(&mut self) -> &mut BytesMut {
        if self.scratch.is_empty() && self.scratch.capacity() < 64 {
            self.scratch.reserve(4096);
        }
        &mut self.scratch
    }
    fn end_header(&mut self) {
        if !self.scratch.is_empty() {
            self.len += self.scratch.len();
            self.segments.push(self.scratch.split().freeze());
        }
    }
    fn payload(&mut self, b: Bytes) {
        self.end_header();
        self.len += b.len();
        self.segments.push(b);
    }
    fn frame(&mut self, b: Bytes) {
        self.end_header();
        self.len += b.len();
        self.segments.push(b);
    }
}
