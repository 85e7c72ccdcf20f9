//! WebSocket framing (RFC 6455 §5) for the data path, after tungstenite did the HTTP upgrade.
//!
//! Owning the framing lets the receive side read straight into one buffer and hand frame
//! payloads on without copying (unmasking in place on the server), and the send side
//! write a batch as one vectored write of the multiplexer's own buffers (the agent, which
//! must mask, makes the one copy masking needs). Message boundaries carry no meaning for
//! Culvert (frames may split anywhere), so fragments are delivered as they come, but the
//! message structure is still checked as RFC 6455 §5.4 requires: a continuation with no
//! message started, or a new data frame inside a fragmented message, is a protocol error.
//! Each error carries the close code §7.4.1 assigns it ([`close_code()`]), which the driver
//! sends in its close frame; the peer's own close code and reason are kept
//! ([`WsReader::peer_close`]) for the log.
//!
//! Masking protects intermediaries that parse plaintext WebSocket traffic from a browser
//! script's crafted bytes (RFC 6455 §10.3); a tunnel agent is no browser script, and the
//! mask costs the agent a copy of every byte it sends and the server a pass over every byte
//! it receives. So the agent may ask for unmasked frames during the upgrade (see
//! [`crate::ws::UNMASKED_HEADER`]); both sides switch only when the server agreed.

mod codec;
mod reader;
mod writer;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

pub use codec::{apply_mask, close_code, copy_masked, PeerClose, WsProtocolError};
pub use reader::WsReader;
pub use writer::WsWriter;
pub(crate) use writer::MAX_NOW_FRAMES;

/// Which end of the WebSocket: servers receive masked frames and send unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted the connection.
    Server,
    /// Dialed the connection (must mask what it sends).
    Client,
}

/// What the reader yields.
#[derive(Debug)]
pub enum WsIn {
    /// Payload of a binary (or continuation) frame.
    Data(Bytes),
    /// A ping to answer with this payload.
    Ping(Bytes),
    /// The peer closed the WebSocket ([`WsReader::peer_close`] tells its code and reason).
    Close,
}

/// Both halves of an upgraded WebSocket.
pub struct WsConn<S> {
    /// Receiving half.
    pub reader: WsReader<ReadHalf<S>>,
    /// Sending half.
    pub writer: WsWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> WsConn<S> {
    /// Takes over an upgraded socket with nothing read past the upgrade.
    pub fn new(io: S, role: Role) -> WsConn<S> {
        WsConn::with_prefix(io, role, &[])
    }

    /// Takes over an upgraded socket whose handshake already read `prefix`, the first bytes
    /// of the peer's WebSocket stream (sent right behind its request or response).
    pub fn with_prefix(io: S, role: Role, prefix: &[u8]) -> WsConn<S> {
        let (r, w) = tokio::io::split(io);
        let mut reader = WsReader::new(r, role);
        reader.buf.extend_from_slice(prefix);
        WsConn {
            reader,
            writer: WsWriter::new(w, role),
        }
    }

    /// Client frames go unmasked both ways of this connection (the upgrade agreed on it).
    pub fn unmasked(mut self) -> WsConn<S> {
        self.reader.accept_unmasked(true);
        self.writer.send_unmasked(true);
        self
    }
}

#[cfg(test)]
mod tests;
