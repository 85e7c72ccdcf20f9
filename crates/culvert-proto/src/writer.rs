//! Helpers that append frames to an outgoing batch.

use bytes::{BufMut, BytesMut};

use crate::header::{FrameType, Header, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::{varint, EncodeError};

/// Appends one frame: header, then whatever `body` writes; the length is patched in afterwards.
/// On error `buf` is left as it was.
pub(crate) fn frame(
    buf: &mut BytesMut,
    ty: FrameType,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    Header::put(buf, ty, 0);
    if let Err(e) = body(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let len = buf.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD_LEN {
        buf.truncate(start);
        return Err(EncodeError::PayloadTooLarge {
            len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    buf[start..start + HEADER_LEN].copy_from_slice(&Header { ty, len }.to_bytes());
    Ok(())
}

/// Appends a varint after checking its range.
pub(crate) fn varint(buf: &mut BytesMut, v: u64) -> Result<(), EncodeError> {
    if v > varint::MAX {
        return Err(EncodeError::VarintRange(v));
    }
    varint::put(buf, v);
    Ok(())
}

/// Appends a string with a u16 length prefix.
pub(crate) fn string16(
    buf: &mut BytesMut,
    field: &'static str,
    s: &str,
) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: s.len(),
        max: u16::MAX as usize,
    })?;
    buf.put_u16(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

/// Appends a string with a u8 length prefix.
pub(crate) fn string8(buf: &mut BytesMut, field: &'static str, s: &str) -> Result<(), EncodeError> {
    let len = u8::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: s.len(),
        max: u8::MAX as usize,
    })?;
    buf.put_u8(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}
