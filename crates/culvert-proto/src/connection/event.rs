//! What a [`super::Connection`] tells its driver.

use std::time::Duration;

use bytes::Bytes;

use crate::{Control, StreamId, Target};

/// Something the application should act on, from [`super::Connection::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream towards `target`.
    StreamOpened {
        /// New stream.
        id: StreamId,
        /// What the peer wants it connected to.
        target: Target,
    },
    /// Bytes arrived on a stream whose receive buffer was empty.
    Readable(StreamId),
    /// The peer finished its direction: reads reach the end after the buffered bytes.
    Finished(StreamId),
    /// A short write can now be retried.
    Writable(StreamId),
    /// The peer aborted the stream: writing is over, and its state is gone, unless the
    /// peer had finished first: then what it sent stays readable up to the end.
    StreamReset {
        /// Stream.
        id: StreamId,
        /// Peer's reason code.
        code: u64,
    },
    /// The peer raised its stream limit after [`crate::StreamError::StreamsExhausted`].
    StreamsAvailable,
    /// Datagrams wait in [`super::Connection::recv_datagram`] (sent when the queue becomes non-empty).
    DatagramReadable,
    /// A heartbeat round trip completed.
    HeartbeatRtt(Duration),
    /// The peer will accept no new streams.
    GoingAway {
        /// Peer's reason code.
        code: u64,
        /// Peer's reason.
        reason: String,
    },
    /// A control message for the application (everything but heartbeats).
    Control(Control),
}

/// An owned datagram handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Flow id.
    pub flow: u64,
    /// Payload.
    pub data: Bytes,
    /// Whether a stream with the flow's id was open on this connection when the datagram
    /// was read. Flows a peer opens are announced by their stream (`udp://…`), which goes
    /// out ahead of their datagrams, so a datagram that fails this names no flow the peer
    /// opened and the receiver may drop it rather than park it.
    pub stream_open: bool,
}
