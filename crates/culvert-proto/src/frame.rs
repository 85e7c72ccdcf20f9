//! Every frame on the wire as one enum, with its encoder and payload decoder.

use bytes::{BufMut, Bytes, BytesMut};

use crate::control::Control;
pub use crate::header::MAX_TARGET_LEN;
use crate::header::{FrameType, Header, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::reader::Reader;
use crate::{varint, writer, DecodeError, EncodeError, StreamId, Target};

/// A decoded frame: a control message or a data-plane frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A zlayer-compatible control message.
    Control(Control),
    /// Opens stream `id`; `target` tells the peer what to connect it to, and how.
    StreamOpen {
        /// New stream.
        id: StreamId,
        /// Opaque to the multiplexer; names of at most [`MAX_TARGET_LEN`] bytes of UTF-8.
        target: Target,
    },
    /// Bytes of a stream, never empty.
    StreamData {
        /// Stream.
        id: StreamId,
        /// Payload, split from the received buffer without copying.
        data: Bytes,
    },
    /// The sender will send no more bytes on this stream.
    StreamFin {
        /// Stream.
        id: StreamId,
    },
    /// Aborts both directions of the stream.
    StreamReset {
        /// Stream.
        id: StreamId,
        /// Application error code (see PROTOCOL.md).
        code: u64,
    },
    /// The sender may send `increment` more bytes on this stream.
    StreamCredit {
        /// Stream.
        id: StreamId,
        /// Added window, non-zero.
        increment: u64,
    },
    /// The sender may send `increment` more bytes on the connection.
    ConnCredit {
        /// Added window, non-zero.
        increment: u64,
    },
    /// The sender may open streams with sequence numbers below `count`.
    MaxStreams {
        /// Cumulative stream count.
        count: u64,
    },
    /// One UDP datagram.
    Datagram {
        /// Flow the datagram belongs to.
        flow: u64,
        /// Payload, possibly empty.
        data: Bytes,
    },
    /// The sender will accept no new streams.
    GoAway {
        /// Reason code (see PROTOCOL.md).
        code: u64,
        /// Human-readable reason.
        reason: String,
    },
}

impl Frame {
    /// Appends the whole frame (header included) to `buf`; on error `buf` is unchanged.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Frame::Control(c) => c.encode(buf),
            Frame::StreamOpen { id, target } => writer::frame(buf, FrameType::StreamOpen, |b| {
                writer::varint(b, id.0)?;
                target.encode(b)
            }),
            Frame::StreamData { id, data } => encode_data(buf, *id, data),
            Frame::StreamFin { id } => {
                writer::frame(buf, FrameType::StreamFin, |b| writer::varint(b, id.0))
            }
            Frame::StreamReset { id, code } => writer::frame(buf, FrameType::StreamReset, |b| {
                writer::varint(b, id.0)?;
                writer::varint(b, *code)
            }),
            Frame::StreamCredit { id, increment } => {
                writer::frame(buf, FrameType::StreamCredit, |b| {
                    writer::varint(b, id.0)?;
                    writer::varint(b, *increment)
                })
            }
            Frame::ConnCredit { increment } => writer::frame(buf, FrameType::ConnCredit, |b| {
                writer::varint(b, *increment)
            }),
            Frame::MaxStreams { count } => {
                writer::frame(buf, FrameType::MaxStreams, |b| writer::varint(b, *count))
            }
            Frame::Datagram { flow, data } => writer::frame(buf, FrameType::Datagram, |b| {
                writer::varint(b, *flow)?;
                b.put_slice(data);
                Ok(())
            }),
            Frame::GoAway { code, reason } => writer::frame(buf, FrameType::GoAway, |b| {
                writer::varint(b, *code)?;
                writer::string16(b, "reason", reason)
            }),
        }
    }

    /// Decodes a frame's payload, given its validated header type.
    pub fn decode(ty: FrameType, payload: Bytes) -> Result<Frame, DecodeError> {
        let name = ty.name();
        let mut r = Reader::new(payload, name);
        let frame = match ty {
            FrameType::StreamOpen => {
                let id = StreamId(r.varint("stream_id")?);
                let target = Target::decode(&mut r)?;
                r.finish()?;
                Frame::StreamOpen { id, target }
            }
            FrameType::StreamData => {
                let id = StreamId(r.varint("stream_id")?);
                Frame::StreamData { id, data: r.rest() }
            }
            FrameType::StreamFin => {
                let id = StreamId(r.varint("stream_id")?);
                r.finish()?;
                Frame::StreamFin { id }
            }
            FrameType::StreamReset => {
                let id = StreamId(r.varint("stream_id")?);
                let code = r.varint("code")?;
                r.finish()?;
                Frame::StreamReset { id, code }
            }
            FrameType::StreamCredit => {
                let id = StreamId(r.varint("stream_id")?);
                let increment = r.varint("increment")?;
                r.finish()?;
                Frame::StreamCredit { id, increment }
            }
            FrameType::ConnCredit => {
                let increment = r.varint("increment")?;
                r.finish()?;
                Frame::ConnCredit { increment }
            }
            FrameType::MaxStreams => {
                let count = r.varint("count")?;
                r.finish()?;
                Frame::MaxStreams { count }
            }
            FrameType::Datagram => {
                let flow = r.varint("flow_id")?;
                Frame::Datagram {
                    flow,
                    data: r.rest(),
                }
            }
            FrameType::GoAway => {
                let code = r.varint("code")?;
                let reason = r.string16("reason")?;
                r.finish()?;
                Frame::GoAway { code, reason }
            }
            _ => Frame::Control(Control::decode(ty, r.rest())?),
        };
        Ok(frame)
    }
}

/// Bytes a data frame for `id` adds before its payload (header plus stream id).
pub fn data_overhead(id: StreamId) -> usize {
    HEADER_LEN + varint::encoded_len(id.0).unwrap_or(8)
}

/// Appends a stream data frame; the hot path of the sender, so it writes the header directly.
pub(crate) fn encode_data(
    buf: &mut BytesMut,
    id: StreamId,
    data: &[u8],
) -> Result<(), EncodeError> {
    let id_len = varint::encoded_len(id.0).ok_or(EncodeError::VarintRange(id.0))?;
    let len = id_len + data.len();
    if len > MAX_PAYLOAD_LEN {
        return Err(EncodeError::PayloadTooLarge {
            len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    buf.reserve(HEADER_LEN + len);
    Header::put(buf, FrameType::StreamData, len);
    varint::put(buf, id.0);
    buf.put_slice(data);
    Ok(())
}
