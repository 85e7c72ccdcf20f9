//! The sending half: a batch of the multiplexer's buffers as one vectored write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rand::RngCore;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::codec::{apply_mask, close_code, copy_masked};
use super::Role;

/// Most segments handed to one `writev`.
const MAX_IOVECS: usize = 256;
/// Most frames [`WsWriter::try_send_many_now`] attempts in its one write.
pub(crate) const MAX_NOW_FRAMES: usize = 4;

/// Messages (headers included) up to this size are copied into one buffer and written
/// with one `send` rather than gathered by `writev`: copying a few hundred bytes costs less
/// than the longer system call.
const SMALL_COPY: usize = 2048;

/// Slices of a `writev` small enough for an array of this many: the usual message (a header
/// and a segment or two) needs no 4 KiB array set up for it.
const SMALL_IOVECS: usize = 8;

/// One non-blocking vectored write of the headers and segments of `msgs` (up to `N` slices,
/// the frames whose header is in `heads`); the bytes written, 0 when it would block or
/// failed (the writer task writes the frames, and meets the error, which a socket repeats).
fn try_gather<W: AsyncWrite + Unpin, const N: usize>(
    io: &mut W,
    cx: &mut Context<'_>,
    msgs: &[(&[Bytes], usize)],
    heads: &[([u8; 14], usize)],
) -> usize {
    let mut iov = [IoSlice::new(&[]); N];
    let mut count = 0;
    'fill: for ((segments, _), (h, n)) in msgs.iter().zip(heads) {
        for part in std::iter::once(&h[..*n]).chain(segments.iter().map(|s| &s[..])) {
            if count == N {
                break 'fill;
            }
            iov[count] = IoSlice::new(part);
            count += 1;
        }
    }
    match Pin::new(io).poll_write_vectored(cx, &iov[..count]) {
        Poll::Ready(Ok(n)) => n,
        _ => 0,
    }
}

/// Writes frames to the other half of the socket.
pub struct WsWriter<W> {
    pub(super) io: crate::progress::Counted<W>,
    role: Role,
    /// Whether frames are masked: a client's are, unless the server agreed otherwise.
    mask: bool,
    /// For the client: masked copy of a batch. For non-vectored transports: the coalesced batch.
    scratch: Vec<u8>,
    /// A small message's frames copied together for one `send` (see [`SMALL_COPY`]).
    small: Vec<u8>,
    /// What a [`WsWriter::try_send_many_now`] could not write at once: the rest of its frame,
    /// which goes out before anything else ([`WsWriter::finish_pending`]).
    pending: Vec<Bytes>,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// A writer for `role`.
    pub fn new(io: W, role: Role) -> WsWriter<W> {
        WsWriter {
            io: crate::progress::Counted::new(io),
            role,
            mask: role == Role::Client,
            scratch: Vec::new(),
            small: Vec::new(),
            pending: Vec::new(),
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

    /// Whether [`WsWriter::try_send_many_now`] may be used: frames go unmasked through a
    /// vectored transport (no copy to make), and nothing of an earlier frame is left over.
    pub(crate) fn can_send_now(&self) -> bool {
        !self.mask && self.io.is_write_vectored() && self.pending.is_empty()
    }

    /// Whether part of a frame is still to be written (a frame cut there would leave the
    /// peer's WebSocket stream mid-frame).
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes each `(segments, len)` as one binary frame, all of them with a single
    /// non-blocking write from the caller's task (vectored, or for a small message one
    /// `send` of a copy), then flushes without blocking.
    /// `true` when every frame left in full and nothing is buffered; otherwise what was not
    /// written is kept for [`WsWriter::finish_pending`] (or a flush is owed), which the
    /// writer task must run next. Errors are not reported here: the writer meets them when
    /// it retries. Only when [`WsWriter::can_send_now`].
    ///
    /// One call for several batches: a 256 KiB relay read is a little more than one batch
    /// once framed, and a call per batch made two system calls of it.
    pub(crate) fn try_send_many_now(&mut self, msgs: &[(&[Bytes], usize)]) -> bool {
        debug_assert!(self.can_send_now());
        // Frames past the first MAX_NOW_FRAMES (or past MAX_IOVECS slices) are not
        // attempted: they go to the pending tail whole, in order.
        let mut heads = [([0u8; 14], 0usize); MAX_NOW_FRAMES];
        for (slot, &(_, len)) in heads.iter_mut().zip(msgs) {
            let (h, n, _) = self.header(0x2, len);
            *slot = (h, n);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let parts: usize = msgs.iter().map(|(segments, _)| 1 + segments.len()).sum();
        let heads = &heads[..msgs.len().min(MAX_NOW_FRAMES)];
        let bytes: usize = msgs.iter().map(|(_, len)| len + 14).sum();
        let written = if bytes <= SMALL_COPY && msgs.len() <= MAX_NOW_FRAMES {
            // A small message: its header and payload copied together go out with `send`,
            // whose path through the kernel is shorter than `writev`'s.
            self.small.clear();
            for ((segments, _), (h, n)) in msgs.iter().zip(heads) {
                self.small.extend_from_slice(&h[..*n]);
                segments
                    .iter()
                    .for_each(|s| self.small.extend_from_slice(s));
            }
            match Pin::new(&mut self.io).poll_write(&mut cx, &self.small) {
                Poll::Ready(Ok(n)) => n,
                _ => 0,
            }
        } else if parts <= SMALL_IOVECS {
            try_gather::<_, SMALL_IOVECS>(&mut self.io, &mut cx, msgs, heads)
        } else {
            try_gather::<_, MAX_IOVECS>(&mut self.io, &mut cx, msgs, heads)
        };
        // Keep what did not go, in order: a header's tail, a part-written segment's tail,
        // everything after.
        let mut n = written;
        for (i, &(segments, len)) in msgs.iter().enumerate() {
            let (h, hlen) = match heads.get(i) {
                Some(&(h, hlen)) => (h, hlen),
                None => {
                    let (h, hlen, _) = self.header(0x2, len);
                    (h, hlen)
                }
            };
            if n >= hlen {
                n -= hlen;
            } else {
                self.pending.push(Bytes::copy_from_slice(&h[n..hlen]));
                n = 0;
            }
            for s in segments {
                if n >= s.len() {
                    n -= s.len();
                } else {
                    self.pending.push(s.slice(n..));
                    n = 0;
                }
            }
        }
        if !self.pending.is_empty() {
            return false;
        }
        matches!(
            Pin::new(&mut self.io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        )
    }

    /// Writes what [`WsWriter::try_send_many_now`] left over, before any new frame.
    pub(crate) async fn finish_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let parts: Vec<&[u8]> = pending.iter().map(|b| &b[..]).collect();
        // A cut write leaves the rest unknown: the writer treats the stream as torn then.
        self.write_parts(&parts).await
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
