//! A bounds-checked cursor over a frame payload.
//!
//! Every read checks `remaining()` first and names the frame and field in its
//! error, so malformed input is reported precisely and never panics.

use bytes::{Buf, Bytes};
use uuid::Uuid;

use crate::{varint, DecodeError};

/// Reads the fields of one frame's payload.
pub(crate) struct Reader {
    buf: Bytes,
    frame: &'static str,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, frame: &'static str) -> Reader {
        Reader { buf, frame }
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                frame: self.frame,
                field,
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        varint::get(&mut self.buf).ok_or(DecodeError::Truncated {
            frame: self.frame,
            field,
        })
    }

    pub(crate) fn uuid(&mut self, field: &'static str) -> Result<Uuid, DecodeError> {
        self.need(16, field)?;
        let mut b = [0u8; 16];
        self.buf.copy_to_slice(&mut b);
        Ok(Uuid::from_bytes(b))
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    /// A UTF-8 string of `n` bytes.
    pub(crate) fn string(&mut self, n: usize, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(n, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed {
            frame: self.frame,
            field,
            reason: "not UTF-8",
        })
    }

    /// A string with a u16 length prefix.
    pub(crate) fn string16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let n = self.u16(field)? as usize;
        self.string(n, field)
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.buf.has_remaining()
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails when bytes are left over (fixed-layout data-plane frames).
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            return Err(DecodeError::TrailingBytes {
                frame: self.frame,
                extra: self.buf.remaining(),
            });
        }
        Ok(())
    }
}
