//! Typed errors of the codec and the multiplexer.
//!
//! Every decode path returns one of these instead of panicking, so a hostile
//! peer can at worst get its own session closed with a precise reason.

use crate::StreamId;

/// Why a byte sequence is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type byte names no frame this implementation knows.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The length field exceeds what the frame type may carry (checked before any allocation).
    #[error("frame type 0x{ty:02x} declares {len} payload bytes, at most {max} allowed")]
    Oversize {
        /// Frame type byte.
        ty: u8,
        /// Declared payload length.
        len: u32,
        /// Largest payload this type may carry.
        max: usize,
    },
    /// The payload ended before a field it must contain.
    #[error("{frame}: truncated while reading {field}")]
    Truncated {
        /// Frame name.
        frame: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// A field holds a value outside its domain.
    #[error("{frame}: malformed {field}: {reason}")]
    Malformed {
        /// Frame name.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Bytes follow the last field of a fixed-layout data-plane frame.
    #[error("{frame}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Frame name.
        frame: &'static str,
        /// Number of bytes left over.
        extra: usize,
    },
}

/// Why a value cannot be encoded (a field is too long for its length prefix or the frame cap).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A length-prefixed field exceeds its prefix's range.
    #[error("{field} is {len} bytes, its length prefix allows {max}")]
    FieldTooLong {
        /// Field name.
        field: &'static str,
        /// Actual length.
        len: usize,
        /// Largest encodable length.
        max: usize,
    },
    /// The encoded payload exceeds the frame cap.
    #[error("payload of {len} bytes exceeds the {max}-byte frame payload cap")]
    PayloadTooLarge {
        /// Encoded payload length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// An integer does not fit the variable-length integer range (2^62 - 1).
    #[error("{0} exceeds the varint range")]
    VarintRange(u64),
}

/// A protocol violation by the peer: the connection must be closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The byte stream did not decode.
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
    /// A frame referenced a stream the peer never opened.
    #[error("frame for unopened stream {0}")]
    UnopenedStream(StreamId),
    /// The peer opened a stream with an id that belongs to our side.
    #[error("peer opened stream {0}, whose id belongs to the local side")]
    WrongSideStream(StreamId),
    /// The peer opened a stream id that was already used (ids are never reused).
    #[error("stream id {0} reused")]
    ReusedStreamId(StreamId),
    /// The peer skipped stream ids (they must be opened in order).
    #[error("stream id {got} opened out of order, expected {expected}")]
    StreamIdGap {
        /// Next id expected.
        expected: StreamId,
        /// Id received.
        got: StreamId,
    },
    /// The peer opened more streams than we granted.
    #[error("peer exceeded the stream limit of {0}")]
    StreamLimit(u64),
    /// Data beyond the stream's flow-control window.
    #[error("stream {0} sent beyond its flow-control window")]
    StreamWindowExceeded(StreamId),
    /// Data beyond the connection's flow-control window.
    #[error("connection flow-control window exceeded")]
    ConnectionWindowExceeded,
    /// A credit increment pushed a send window past the maximum.
    #[error("flow-control credit overflow")]
    CreditOverflow,
    /// Data or FIN after the peer already finished the stream.
    #[error("stream {0} received data after FIN")]
    DataAfterFin(StreamId),
    /// A data frame carrying no bytes (never sent by a correct peer; a flood vector).
    #[error("empty data frame on stream {0}")]
    EmptyData(StreamId),
    /// A credit frame granting zero (never sent by a correct peer; a flood vector).
    #[error("zero credit increment")]
    ZeroCredit,
    /// The peer sent a stream limit lower than one it already granted.
    #[error("stream limit decreased")]
    StreamLimitDecreased,
    /// Heartbeats arrive faster than the configured rate.
    #[error("heartbeat flood")]
    HeartbeatFlood,
    /// Streams are reset faster than the configured rate.
    #[error("stream reset flood")]
    ResetFlood,
    /// The peer opened a stream after announcing going-away.
    #[error("stream opened after going-away")]
    OpenAfterGoAway,
    /// The application left more events unread than the configured bound.
    #[error("more than {0} events pending: the application is not draining them")]
    EventBacklog(usize),
    /// This side generated stream resets faster than the reset limit (a peer making us
    /// refuse or abort streams in a loop).
    #[error("too many stream resets generated (over {0} per second): the peer keeps opening streams that are refused")]
    LocalResetFlood(u64),
    /// Control frames queued for the peer exceeded their byte cap: the peer does not read
    /// while it keeps making us queue frames.
    #[error("control queue over {0} bytes: the peer is not reading")]
    ControlQueueFull(usize),
    /// Nothing was received within the idle timeout.
    #[error("peer silent for longer than the idle timeout")]
    IdleTimeout,
}

/// Misuse of the local API (not the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream does not exist (never opened, or already closed).
    #[error("unknown stream {0}")]
    UnknownStream(StreamId),
    /// Writing after `finish` or after a reset.
    #[error("stream {0} is closed for writing")]
    ClosedForWriting(StreamId),
    /// The peer's stream limit is reached; wait for `Event::StreamsAvailable`.
    #[error("peer stream limit reached")]
    StreamsExhausted,
    /// The peer is going away or the connection is closed: no new streams.
    #[error("connection is closing")]
    Closing,
    /// The open target is longer than the protocol allows.
    #[error("target of {0} bytes exceeds the limit")]
    TargetTooLong(usize),
    /// A datagram larger than one frame can carry; it is dropped and counted, never split.
    #[error("datagram of {0} bytes exceeds the frame cap")]
    DatagramTooLarge(usize),
}
