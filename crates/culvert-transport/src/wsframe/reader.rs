//! The receiving half: frames read into one buffer, payloads handed on without copying.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::codec::{apply_mask, bad, close_code, parse_close, protocol, PeerClose};
use super::{Role, WsIn};
use crate::ws::BATCH_CAP;

/// Socket reads are this large, so a full batch usually arrives in one read.
const READ_SIZE: usize = 256 * 1024;
/// A socket read smaller than this was a small burst (a request, a reply, a few of them)
/// and, being far below [`READ_SIZE`], emptied the socket: see [`WsReader::small_burst_done`].
const SMALL_BURST: usize = 16 * 1024;

/// A data frame whose payload is still arriving: delivered piece by piece as it comes, so
/// the read buffer never holds (and never has to move) more than a frame header.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    /// Payload bytes not received yet.
    remaining: usize,
    /// The client's masking key, and where in it the next byte falls.
    key: Option<[u8; 4]>,
    offset: usize,
}

/// Reads frames from one half of the socket.
pub struct WsReader<R> {
    io: R,
    pub(super) buf: BytesMut,
    role: Role,
    frame: Option<InFrame>,
    /// The client's frames may come unmasked (agreed during the upgrade).
    unmasked: bool,
    /// FIN of the latest data frame whose header was read.
    fin: bool,
    /// A fragmented message is under way (its last frame had FIN clear).
    in_message: bool,
    /// What the peer's close frame said, once it came.
    peer_close: Option<PeerClose>,
    /// Bytes the latest socket read returned.
    last_read: usize,
}

impl<R> WsReader<R> {
    /// The peer's close code and reason, after [`WsIn::Close`].
    pub fn peer_close(&self) -> Option<&PeerClose> {
        self.peer_close.as_ref()
    }
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// A reader for `role`.
    pub fn new(io: R, role: Role) -> WsReader<R> {
        WsReader {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            role,
            frame: None,
            unmasked: false,
            fin: false,
            in_message: false,
            peer_close: None,
            last_read: 0,
        }
    }

    /// Accepts unmasked frames from the client, as agreed during the upgrade (a server
    /// that did not agree still refuses them, as RFC 6455 requires).
    pub fn accept_unmasked(&mut self, on: bool) {
        self.unmasked = on;
    }

    /// Whether the data delivered so far ends a WebSocket message (the last data frame had
    /// FIN and its payload is all delivered): a handshake reading one message in pieces
    /// knows when no more of it is coming.
    pub fn at_message_end(&self) -> bool {
        self.frame.is_none() && self.fin
    }

    /// Whether everything the latest socket read brought has been handed on, and that read
    /// was small (so it emptied the socket): the peer's burst has most likely all arrived,
    /// and what waits for the end of a burst (deliveries to relays) should go now, not after
    /// one more read that only finds the socket empty. A bulk transfer's reads are large,
    /// so its deliveries still wait for that read (one write per relay per burst).
    pub fn small_burst_done(&self) -> bool {
        self.last_read > 0 && self.last_read < SMALL_BURST && self.buf.is_empty()
    }

    /// The next data, ping or close; errors on protocol violations and EOF.
    pub async fn next(&mut self) -> io::Result<WsIn> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(m);
            }
            // What is left is at most a header or a short control frame, so growing
            // (which copies it when earlier payloads still share the buffer) is cheap.
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 8 {
                self.buf.reserve(READ_SIZE);
            }
            self.last_read = self.io.read_buf(&mut self.buf).await?;
            if self.last_read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "websocket closed without a close frame",
                ));
            }
        }
    }

    fn parse(&mut self) -> io::Result<Option<WsIn>> {
        loop {
            if let Some(f) = &mut self.frame {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let take = f.remaining.min(self.buf.len());
                let mut payload = self.buf.split_to(take);
                if let Some(k) = f.key {
                    apply_mask(&mut payload, k, f.offset);
                }
                f.offset += take;
                f.remaining -= take;
                if f.remaining == 0 {
                    self.frame = None;
                }
                return Ok(Some(WsIn::Data(payload.freeze())));
            }
            let b = &self.buf[..];
            if b.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (b[0], b[1]);
            if b0 & 0x70 != 0 {
                return Err(bad("websocket extension bits set"));
            }
            let opcode = b0 & 0x0f;
            let fin = b0 & 0x80 != 0;
            let masked = b1 & 0x80 != 0;
            match (self.role, masked) {
                (Role::Server, false) if !self.unmasked => {
                    return Err(bad("unmasked frame from a websocket client"))
                }
                (Role::Client, true) => return Err(bad("masked frame from a websocket server")),
                _ => {}
            }
            let (len, mut hlen) = match b1 & 0x7f {
                126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                    10,
                ),
                126 | 127 => return Ok(None),
                n => (u64::from(n), 2),
            };
            let control = opcode & 0x08 != 0;
            if control && (len > 125 || !fin) {
                return Err(bad("invalid websocket control frame"));
            }
            match opcode {
                0x0 | 0x2 | 0x8 | 0x9 | 0xa => {}
                0x1 => {
                    return Err(protocol(
                        close_code::UNSUPPORTED_DATA,
                        "text frame on the tunnel",
                    ))
                }
                _ => return Err(bad("unknown websocket opcode")),
            }
            // Fragmentation (§5.4): a continuation needs a message under way, and a new
            // message may not start inside one; control frames may come in between.
            match opcode {
                0x0 if !self.in_message => {
                    return Err(bad("continuation frame with no message started"))
                }
                0x2 if self.in_message => {
                    return Err(bad("data frame inside a fragmented message"))
                }
                _ => {}
            }
            if len > BATCH_CAP as u64 {
                return Err(protocol(
                    close_code::MESSAGE_TOO_BIG,
                    "websocket frame larger than the batch cap",
                ));
            }
            let len = len as usize;
            let key = if masked {
                if b.len() < hlen + 4 {
                    return Ok(None);
                }
                let k = [b[hlen], b[hlen + 1], b[hlen + 2], b[hlen + 3]];
                hlen += 4;
                Some(k)
            } else {
                None
            };
            if !control {
                // Data: its payload is handed on in whatever pieces it arrives.
                self.in_message = !fin;
                self.buf.advance(hlen);
                self.fin = fin;
                if len > 0 {
                    self.frame = Some(InFrame {
                        remaining: len,
                        key,
                        offset: 0,
                    });
                }
                continue;
            }
            if b.len() < hlen + len {
                return Ok(None);
            }
            self.buf.advance(hlen);
            let mut payload = self.buf.split_to(len);
            if let Some(k) = key {
                apply_mask(&mut payload, k, 0);
            }
            match opcode {
                0x8 => {
                    self.peer_close = Some(parse_close(&payload)?);
                    return Ok(Some(WsIn::Close));
                }
                0x9 => return Ok(Some(WsIn::Ping(payload.freeze()))),
                _ => {} // pong
            }
        }
    }
}
