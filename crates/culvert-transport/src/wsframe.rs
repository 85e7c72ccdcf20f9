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

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::ws::BATCH_CAP;

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

/// Close codes of RFC 6455 §7.4.1 that Culvert sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error (bad framing, masking or fragmentation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint cannot accept (a text frame on the tunnel).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer broke a policy (it made this side exceed a limit).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame too big to process.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// A WebSocket protocol violation by the peer, with the close code RFC 6455 assigns it.
/// Carried inside the `io::Error` (kind `InvalidData`) the reader returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct WsProtocolError {
    /// Close code to send (§7.4.1).
    pub code: u16,
    /// What was wrong.
    pub reason: &'static str,
}

/// The close code (and reason) a reader error calls for: its protocol violation's, or
/// `None` for transport errors (EOF, a reset), where no close frame can help.
pub fn close_code(e: &io::Error) -> Option<(u16, &'static str)> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<WsProtocolError>())
        .map(|p| (p.code, p.reason))
}

/// What the peer's close frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClose {
    /// Its status code; `None` when the frame had no body (RFC 6455 reads that as 1005).
    pub code: Option<u16>,
    /// Its reason (UTF-8, at most 123 bytes).
    pub reason: String,
}

impl std::fmt::Display for PeerClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            // The reason is the peer's: escaped, so it cannot forge log lines.
            Some(c) if self.reason.is_empty() => write!(f, "code {c}"),
            Some(c) => write!(f, "code {c}, reason \"{}\"", self.reason.escape_debug()),
            None => f.write_str("no status code"),
        }
    }
}

/// Whether `code` may appear in a close frame (RFC 6455 §7.4.1 and §7.4.2: 1004, 1005,
/// 1006 and 1015 are reserved for local use, below 1000 and 1016..=2999 are undefined).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame's body (§5.5.1): empty, or a code and a UTF-8 reason.
fn parse_close(body: &[u8]) -> io::Result<PeerClose> {
    match body {
        [] => Ok(PeerClose {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(bad("close frame with a one-byte body")),
        [a, b, rest @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(bad("close frame with an invalid status code"));
            }
            let reason = std::str::from_utf8(rest).map_err(|_| {
                protocol(
                    close_code::INVALID_PAYLOAD,
                    "close reason that is not UTF-8",
                )
            })?;
            Ok(PeerClose {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

/// Socket reads are this large, so a full batch usually arrives in one read.
const READ_SIZE: usize = 256 * 1024;
/// Most segments handed to one `writev`.
const MAX_IOVECS: usize = 256;

fn protocol(code: u16, reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, WsProtocolError { code, reason })
}

/// A protocol error (close code 1002).
fn bad(reason: &'static str) -> io::Error {
    protocol(close_code::PROTOCOL_ERROR, reason)
}

fn key64(key: [u8; 4], offset: usize) -> ([u8; 8], u64) {
    let mut k = [0u8; 8];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    (k, u64::from_ne_bytes(k))
}

/// XORs `data` with the 4-byte `key`, starting at key offset `offset`; eight bytes at a time.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let (k, k64) = key64(key, offset);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// Writes `src` XORed with `key` (from key offset `offset`) into `dst` of the same length:
/// masking while copying, so the sender's one copy of each byte is also its masking pass.
pub fn copy_masked(dst: &mut [u8], src: &[u8], key: [u8; 4], offset: usize) {
    debug_assert_eq!(dst.len(), src.len());
    let (k, k64) = key64(key, offset);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let v = u64::from_ne_bytes(sc.try_into().expect("8 bytes")) ^ k64;
        dc.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = sb ^ k[i % 4];
    }
}

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
    buf: BytesMut,
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
            if self.io.read_buf(&mut self.buf).await? == 0 {
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

/// Writes frames to the other half of the socket.
pub struct WsWriter<W> {
    io: crate::progress::Counted<W>,
    role: Role,
    /// Whether frames are masked: a client's are, unless the server agreed otherwise.
    mask: bool,
    /// For the client: masked copy of a batch. For non-vectored transports: the coalesced batch.
    scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// A writer for `role`.
    pub fn new(io: W, role: Role) -> WsWriter<W> {
        WsWriter {
            io: crate::progress::Counted::new(io),
            role,
            mask: role == Role::Client,
            scratch: Vec::new(),
        }
    }

    /// Sends unmasked frames (a client whose server agreed during the upgrade).
    pub fn send_unmasked(&mut self, on: bool) {
        self.mask = self.role == Role::Client && !on;
    }

    /// Bytes the transport has accepted from this writer so far, readable while a write
    /// is in flight (the connection driver's write-progress deadline watches it).
    pub(crate) fn progress(&self) -> crate::progress::Progress {
        self.io.progress()
    }

    fn header(&self, opcode: u8, len: usize) -> ([u8; 14], usize, Option<[u8; 4]>) {
        let mut h = [0u8; 14];
        h[0] = 0x80 | opcode;
        let mut n = 2;
        if len < 126 {
            h[1] = len as u8;
        } else if len <= u16::MAX as usize {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            n = 4;
        } else {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            n = 10;
        }
        let key = self.mask.then(|| {
            let mut k = [0u8; 4];
            rand::rng().fill_bytes(&mut k);
            h[1] |= 0x80;
            h[n..n + 4].copy_from_slice(&k);
            n += 4;
            k
        });
        (h, n, key)
    }

    /// Sends `segments` (in order, `len` bytes in all) as one binary frame.
    pub async fn send(&mut self, segments: &[Bytes], len: usize) -> io::Result<()> {
        self.send_many(&[(segments, len)]).await
    }

    /// Sends each `(segments, len)` as one binary frame, all of them with as few (vectored)
    /// writes as the transport takes: several batches in one system call.
    pub async fn send_many(&mut self, msgs: &[(&[Bytes], usize)]) -> io::Result<()> {
        if self.mask || !self.io.is_write_vectored() {
            for &(segments, len) in msgs {
                self.send_copied(segments, len).await?;
            }
            return Ok(());
        }
        // Vectored: each header, then the multiplexer's buffers, no copy.
        let heads: Vec<([u8; 14], usize)> = msgs
            .iter()
            .map(|&(_, len)| {
                let (h, n, _) = self.header(0x2, len);
                (h, n)
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(msgs.iter().map(|(s, _)| s.len() + 1).sum());
        for ((segments, _), (h, n)) in msgs.iter().zip(&heads) {
            parts.push(&h[..*n]);
            parts.extend(segments.iter().map(|s| &s[..]));
        }
        self.write_parts(&parts).await
    }

    /// One frame masked (or coalesced, for a transport without vectored writes) into the
    /// scratch buffer and written from there.
    async fn send_copied(&mut self, segments: &[Bytes], len: usize) -> io::Result<()> {
        let (h, hlen, key) = self.header(0x2, len);
        // Masking rewrites every byte anyway: do it while coalescing, in one pass. The
        // scratch buffer only grows (zeroed once), so no pass clears it per batch.
        let total = hlen + len;
        if self.scratch.len() < total {
            self.scratch.resize(total, 0);
        }
        let out = &mut self.scratch[..total];
        out[..hlen].copy_from_slice(&h[..hlen]);
        let mut at = hlen;
        for s in segments {
            let dst = &mut out[at..at + s.len()];
            match key {
                Some(k) => copy_masked(dst, s, k, at - hlen),
                None => dst.copy_from_slice(s),
            }
            at += s.len();
        }
        self.io.write_all(&self.scratch[..total]).await
    }

    /// Writes every part, in order, with vectored writes of at most [`MAX_IOVECS`] slices.
    async fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut idx = 0;
        let mut first_off = 0;
        while idx < parts.len() && parts[idx].is_empty() {
            idx += 1;
        }
        while idx < parts.len() {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let count = (parts.len() - idx).min(MAX_IOVECS);
            for (j, (slot, p)) in iov.iter_mut().zip(&parts[idx..idx + count]).enumerate() {
                *slot = IoSlice::new(if j == 0 { &p[first_off..] } else { p });
            }
            let mut n = self.io.write_vectored(&iov[..count]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let rest = parts[idx].len() - first_off;
                if n >= rest {
                    n -= rest;
                    idx += 1;
                    first_off = 0;
                } else {
                    first_off += n;
                    n = 0;
                }
            }
            while idx < parts.len() && parts[idx].len() == first_off {
                idx += 1;
                first_off = 0;
            }
        }
        Ok(())
    }

    /// Sends a control frame (pong or close) with a short payload.
    pub async fn send_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let payload = &payload[..payload.len().min(125)];
        let (h, hlen, key) = self.header(opcode, payload.len());
        let mut frame = Vec::with_capacity(hlen + payload.len());
        frame.extend_from_slice(&h[..hlen]);
        frame.extend_from_slice(payload);
        if let Some(k) = key {
            apply_mask(&mut frame[hlen..], k, 0);
        }
        self.io.write_all(&frame).await
    }

    /// Flushes the transport (TLS buffers records).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }

    /// Sends a close frame (normal closure, 1000) and shuts the write side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.close_with(close_code::NORMAL, "").await
    }

    /// Sends a close frame with `code` and `reason` (cut to the 123 bytes a control frame
    /// leaves, at a character boundary) and shuts the write side.
    pub async fn close_with(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut body = Vec::with_capacity(2 + end);
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(&reason.as_bytes()[..end]);
        self.send_control(0x8, &body).await?;
        self.io.flush().await?;
        self.io.shutdown().await
    }
}

/// Both halves of an upgraded WebSocket.
pub struct WsConn<S> {
    /// Receiving half.
    pub reader: WsReader<ReadHalf<S>>,
    /// Sending half.
    pub writer: WsWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> WsConn<S> {
    /// Takes over an upgraded socket (nothing may be buffered in the handshake: Culvert's
    /// peers send nothing until the upgrade completes).
    pub fn new(io: S, role: Role) -> WsConn<S> {
        let (r, w) = tokio::io::split(io);
        WsConn {
            reader: WsReader::new(r, role),
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
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    #[test]
    fn mask_matches_bytewise_at_any_offset() {
        let key = [1, 2, 3, 4];
        for off in 0..4 {
            for len in 0..40 {
                let mut a: Vec<u8> = (0..len as u8).collect();
                let mut b = a.clone();
                apply_mask(&mut a, key, off);
                for (i, x) in b.iter_mut().enumerate() {
                    *x ^= key[(off + i) % 4];
                }
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn copy_masked_matches_copy_then_mask() {
        let key = [9, 8, 7, 6];
        for off in 0..5 {
            for len in 0..40 {
                let src: Vec<u8> = (0..len as u8).map(|x| x.wrapping_mul(31)).collect();
                let mut a = vec![0u8; len];
                copy_masked(&mut a, &src, key, off);
                let mut b = src.clone();
                apply_mask(&mut b, key, off);
                assert_eq!(a, b);
            }
        }
    }

    /// A vectored sink that takes at most `step` bytes per write, so every boundary
    /// (inside a header, between messages, inside a segment) is hit by some short write.
    struct ShortVectored {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for ShortVectored {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn several_messages_in_one_vectored_write_survive_any_short_write() {
        let a: Vec<Bytes> = vec![Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 70_000])];
        let b: Vec<Bytes> = vec![Bytes::from(vec![3u8; 5])];
        let c: Vec<Bytes> = (0..300).map(|i| Bytes::from(vec![i as u8; 7])).collect();
        let mut expect = Vec::new();
        for seg in a.iter().chain(&b).chain(&c) {
            expect.extend_from_slice(seg);
        }
        for step in [1, 3, 13, 4096, 1 << 20] {
            for (w_role, r_role, unmasked) in [
                (Role::Server, Role::Client, false),
                (Role::Client, Role::Server, true),
                (Role::Client, Role::Server, false),
            ] {
                let mut w = WsWriter::new(
                    ShortVectored {
                        out: Vec::new(),
                        step,
                    },
                    w_role,
                );
                w.send_unmasked(unmasked);
                w.send_many(&[(&a, 70_300), (&b, 5), (&c, 2_100)])
                    .await
                    .unwrap();
                let data = std::mem::take(&mut w.io.get_mut().out);
                let len = data.len();
                let mut r = WsReader::new(
                    Chunked {
                        data,
                        pos: 0,
                        sizes: vec![4093],
                        next: 0,
                    },
                    r_role,
                );
                r.accept_unmasked(unmasked);
                let mut got = Vec::new();
                while got.len() < expect.len() {
                    match r.next().await.unwrap() {
                        WsIn::Data(d) => got.extend_from_slice(&d),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                assert_eq!(got, expect, "step {step}, {w_role:?}, {len} bytes");
            }
        }
    }

    #[tokio::test]
    async fn round_trip_both_roles_and_split_reads() {
        for (w_role, r_role) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
            let (a, b) = tokio::io::duplex(64);
            let mut w = WsWriter::new(a, w_role);
            let mut r = WsReader::new(b, r_role);
            // An odd first segment: the mask of the next one starts mid-key.
            let segs = vec![Bytes::from(vec![7u8; 70_001]), Bytes::from_static(b"tail")];
            let t = tokio::spawn(async move {
                w.send(&segs, 70_005).await.unwrap();
                w.send_control(0x9, b"hi").await.unwrap();
                w.close().await.unwrap();
            });
            let mut got = Vec::new();
            loop {
                match r.next().await.unwrap() {
                    WsIn::Data(d) => got.extend_from_slice(&d),
                    WsIn::Ping(p) => assert_eq!(&p[..], b"hi"),
                    WsIn::Close => break,
                }
            }
            t.await.unwrap();
            assert_eq!(got.len(), 70_005);
            assert!(got[..70_001].iter().all(|x| *x == 7));
            assert_eq!(&got[70_001..], b"tail");
        }
    }

    /// Hands out its bytes in the given chunk sizes (cycled), as a socket might.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        next: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let want = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = want.min(out.remaining()).min(self.data.len() - self.pos);
            let pos = self.pos;
            out.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Adjacent data pieces joined into one.
    fn joined(items: Vec<WsIn>) -> Vec<WsIn> {
        let mut out: Vec<WsIn> = Vec::new();
        for item in items {
            match (out.last_mut(), item) {
                (Some(WsIn::Data(prev)), WsIn::Data(d)) => {
                    let mut v = prev.to_vec();
                    v.extend_from_slice(&d);
                    *prev = Bytes::from(v);
                }
                (_, item) => out.push(item),
            }
        }
        out
    }

    proptest::proptest! {
        /// Whatever the frame sizes and however reads split them, the reader yields the data
        /// frames' bytes in order, unmasked, and every ping once, where it was sent.
        #[test]
        fn any_frames_any_splits_round_trip(
            frames in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 0u8..8),
                1..12,
            ),
            sizes in proptest::collection::vec(1usize..5000, 1..8),
            client in proptest::prelude::any::<bool>(),
        ) {
            let (w_role, r_role) = if client {
                (Role::Client, Role::Server)
            } else {
                (Role::Server, Role::Client)
            };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut w = WsWriter::new(Vec::<u8>::new(), w_role);
                let mut want = Vec::new();
                for (payload, kind) in &frames {
                    if *kind == 0 {
                        w.send_control(0x9, &payload[..payload.len().min(125)]).await.unwrap();
                        want.push(WsIn::Ping(Bytes::copy_from_slice(&payload[..payload.len().min(125)])));
                    } else {
                        // Split into 1-3 segments, so masking offsets cross segment edges.
                        let cut = payload.len() / usize::from(*kind);
                        let segs = [
                            Bytes::copy_from_slice(&payload[..cut]),
                            Bytes::copy_from_slice(&payload[cut..]),
                        ];
                        w.send(&segs, payload.len()).await.unwrap();
                        if !payload.is_empty() {
                            want.push(WsIn::Data(Bytes::copy_from_slice(payload)));
                        }
                    }
                }
                w.send_control(0x8, &[]).await.unwrap();
                let data = std::mem::take(w.io.get_mut());
                let mut r = WsReader::new(Chunked { data, pos: 0, sizes, next: 0 }, r_role);
                let mut got = Vec::new();
                loop {
                    match r.next().await.unwrap() {
                        WsIn::Close => break,
                        other => got.push(other),
                    }
                }
                // Frame and read boundaries carry no meaning: compare the runs of data bytes
                // between pings.
                let (got, want) = (joined(got), joined(want));
                assert_eq!(format!("{got:?}"), format!("{want:?}"));
            });
        }
    }

    /// A frame as a hostile peer to a reader of role `server` might write it: mostly a
    /// plausible first byte and the right mask bit (so parsing goes deep), sometimes any
    /// first byte or the wrong mask bit; any length encoding, lengths near every boundary
    /// (the batch cap among them); then up to 300 payload bytes whatever the header claims.
    fn hostile_frame(server: bool) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let b0 = prop_oneof![
            9 => (any::<bool>(), prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]))
                .prop_map(|(fin, op)| if fin { 0x80 | op } else { op }),
            1 => any::<u8>(),
        ];
        let masked = prop_oneof![9 => Just(server), 1 => Just(!server)];
        let len = prop_oneof![
            0u64..130,
            Just(125u64),
            Just(126),
            Just(127),
            Just(65_535),
            Just(65_536),
            Just(BATCH_CAP as u64),
            Just(BATCH_CAP as u64 + 1),
            Just(u64::MAX),
            any::<u64>(),
        ];
        (
            b0,
            masked,
            len,
            0u8..3,
            any::<[u8; 4]>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(b0, masked, len, encoding, key, payload)| {
                let mut f = vec![b0];
                let m = if masked { 0x80 } else { 0 };
                match encoding {
                    0 => f.push(m | (len % 126) as u8),
                    1 => {
                        f.push(m | 126);
                        f.extend_from_slice(&(len as u16).to_be_bytes());
                    }
                    _ => {
                        f.push(m | 127);
                        f.extend_from_slice(&len.to_be_bytes());
                    }
                }
                if masked {
                    f.extend_from_slice(&key);
                }
                f.extend_from_slice(&payload);
                f
            })
    }

    proptest::proptest! {
        /// Whatever a peer sends, split however, the reader never panics: it yields at most
        /// the bytes it was given, then a close or an error (EOF included), and never
        /// claims more data than arrived.
        #[test]
        fn hostile_input_errs_or_closes_and_never_panics(
            (server, frames) in proptest::prelude::any::<bool>().prop_flat_map(|server| {
                (proptest::strategy::Just(server), proptest::collection::vec(hostile_frame(server), 1..8))
            }),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            sizes in proptest::collection::vec(
                proptest::prop_oneof![1usize..8, 1usize..700], 1..6),
        ) {
            let mut data: Vec<u8> = frames.concat();
            data.extend_from_slice(&noise);
            let total = data.len();
            let role = if server { Role::Server } else { Role::Client };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = WsReader::new(Chunked { data, pos: 0, sizes, next: 0 }, role);
                let mut out = 0usize;
                // Each item consumes input, so this ends; the bound only guards the test.
                for _ in 0..=total {
                    match r.next().await {
                        Ok(WsIn::Data(d)) => {
                            assert!(!d.is_empty(), "an empty data item");
                            out += d.len();
                        }
                        Ok(WsIn::Ping(p)) => out += p.len(),
                        Ok(WsIn::Close) => break,
                        Err(e) => {
                            assert!(matches!(
                                e.kind(),
                                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                            ), "unexpected error kind: {e}");
                            break;
                        }
                    }
                }
                assert!(out <= total, "{out} bytes out of {total} in");
            });
        }
    }

    #[tokio::test]
    async fn rejects_wrong_masking_and_oversize() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = WsWriter::new(a, Role::Server);
        let mut r = WsReader::new(b, Role::Server);
        w.send(&[Bytes::from_static(b"x")], 1).await.unwrap();
        assert_eq!(
            r.next().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = WsReader::new(b, Role::Client);
        a.write_all(&[0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0])
            .await
            .unwrap();
        assert_eq!(
            r.next().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    /// A frame as a client sends it: masked with a fixed key.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let key = [3, 1, 4, 1];
        let mut f = vec![b0];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&key);
        let mut p = payload.to_vec();
        apply_mask(&mut p, key, 0);
        f.extend_from_slice(&p);
        f
    }

    /// Reads `bytes` as a server until an error or a close; the items before it.
    async fn read_all(bytes: Vec<u8>) -> (Vec<WsIn>, io::Result<Option<PeerClose>>) {
        let mut r = WsReader::new(
            Chunked {
                data: bytes,
                pos: 0,
                sizes: vec![3, 5000],
                next: 0,
            },
            Role::Server,
        );
        let mut items = Vec::new();
        loop {
            match r.next().await {
                Ok(WsIn::Close) => return (items, Ok(r.peer_close().cloned())),
                Ok(item) => items.push(item),
                Err(e) => return (items, Err(e)),
            }
        }
    }

    fn code_of(r: &io::Result<Option<PeerClose>>) -> Option<u16> {
        r.as_ref().err().and_then(close_code).map(|(c, _)| c)
    }

    #[tokio::test]
    async fn fragmentation_follows_rfc6455() {
        // A continuation with no message started: protocol error, 1002.
        let (_, r) = read_all(client_frame(0x80, b"x")).await;
        assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
        // A new binary frame inside a fragmented message: 1002.
        let mut b = client_frame(0x02, b"a");
        b.extend(client_frame(0x82, b"b"));
        let (items, r) = read_all(b).await;
        assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
        assert_eq!(items.len(), 1);
        // A fragmented message with a ping in the middle is fine, and after it a new one.
        let mut b = client_frame(0x02, b"ab");
        b.extend(client_frame(0x89, b"p"));
        b.extend(client_frame(0x00, b"cd"));
        b.extend(client_frame(0x80, b"ef"));
        b.extend(client_frame(0x82, b"gh"));
        b.extend(client_frame(0x88, &[0x03, 0xe8]));
        let (items, r) = read_all(b).await;
        let got: Vec<u8> = items
            .iter()
            .filter_map(|i| match i {
                WsIn::Data(d) => Some(d.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(got, b"abcdefgh");
        assert_eq!(r.unwrap().unwrap().code, Some(1000));
    }

    #[tokio::test]
    async fn close_codes_for_each_violation() {
        // Oversize: 1009.
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(BATCH_CAP as u64 + 1).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        let (_, r) = read_all(f).await;
        assert_eq!(code_of(&r), Some(close_code::MESSAGE_TOO_BIG), "{r:?}");
        // Text: 1003.
        let (_, r) = read_all(client_frame(0x81, b"hi")).await;
        assert_eq!(code_of(&r), Some(close_code::UNSUPPORTED_DATA), "{r:?}");
        // Close bodies: one byte, a reserved code, a reason that is not UTF-8.
        let (_, r) = read_all(client_frame(0x88, &[3])).await;
        assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
        let (_, r) = read_all(client_frame(0x88, &1005u16.to_be_bytes())).await;
        assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
        let (_, r) = read_all(client_frame(0x88, &[0x03, 0xe8, 0xff, 0xfe])).await;
        assert_eq!(code_of(&r), Some(close_code::INVALID_PAYLOAD), "{r:?}");
        // Unmasked from a client: 1002.
        let (_, r) = read_all(vec![0x82, 1, b'x']).await;
        assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
        // EOF is no protocol error: no close code.
        let (_, r) = read_all(vec![0x82]).await;
        assert_eq!(r.as_ref().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(code_of(&r), None);
    }

    #[tokio::test]
    async fn peer_close_code_and_reason_are_read() {
        for (code, reason, want) in [
            (None, "", "no status code"),
            (Some(1000), "", "code 1000"),
            (Some(1001), "bye", "code 1001, reason \"bye\""),
            (Some(4000), "a\nb", "code 4000, reason \"a\\nb\""),
        ] {
            let mut w = WsWriter::new(Vec::<u8>::new(), Role::Client);
            match code {
                Some(c) => w.close_with(c, reason).await.unwrap(),
                None => w.send_control(0x8, &[]).await.unwrap(),
            }
            let data = std::mem::take(w.io.get_mut());
            let (_, r) = read_all(data).await;
            let close = r.unwrap().unwrap();
            assert_eq!(close.code, code);
            assert_eq!(close.reason, reason);
            assert_eq!(close.to_string(), want);
        }
        // close() is a normal closure; a long reason is cut at a character boundary.
        let mut w = WsWriter::new(Vec::<u8>::new(), Role::Client);
        w.close().await.unwrap();
        let (_, r) = read_all(std::mem::take(w.io.get_mut())).await;
        assert_eq!(r.unwrap().unwrap().code, Some(close_code::NORMAL));
        let mut w = WsWriter::new(Vec::<u8>::new(), Role::Client);
        let long = "é".repeat(100);
        w.close_with(close_code::POLICY_VIOLATION, &long)
            .await
            .unwrap();
        let (_, r) = read_all(std::mem::take(w.io.get_mut())).await;
        let close = r.unwrap().unwrap();
        assert_eq!(close.code, Some(close_code::POLICY_VIOLATION));
        assert_eq!(close.reason, "é".repeat(61));
    }
}
