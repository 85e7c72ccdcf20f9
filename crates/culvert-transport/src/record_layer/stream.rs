//! The TLS connection after the handshake: records read ahead into one buffer and opened
//! where they lie, their plaintext copied once into the caller's buffer; what the caller
//! writes sealed straight into the outgoing buffer (by aws-lc-rs in one pass, the copy and
//! the encryption together). Post-handshake messages (session tickets, key updates) and
//! alerts are handled here, with rustls's [`KernelConnection`] computing the new secrets.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::ConnectionTrafficSecrets;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::protect::{
    content, handshake_message, Opener, RecordError, Sealer, Version, MAX_PLAINTEXT,
};

/// Most bytes one socket read takes while data comes in bulk: the plain ws reader's read
/// size, so a wss connection makes as few system calls per byte as a ws one (rustls alone
/// read about a record at a time: 67,000 `recvfrom` per GB against 5,000).
const READ_AHEAD: usize = 256 * 1024;
/// A read smaller than this emptied the socket: the burst is over.
const BULK_BELOW: usize = 16 * 1024;
/// Read buffer between bursts: the largest record fits (an idle connection holds this
/// much, mostly untouched).
const SMALL_READ: usize = 18 * 1024;
/// Largest post-handshake message gathered across records (tickets are a few hundred bytes).
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
/// A piece of the caller's data at least this large is sealed straight from where it lies
/// into records of its own; smaller pieces are gathered into one record with their
/// neighbours (a frame header and a small payload travel in one record).
const SEAL_DIRECT: usize = 2 * 1024;
/// Records sealed under one TLS 1.3 key before we replace it (KeyUpdate): well under every
/// supported suite's confidentiality limit (2^23 records for AES-GCM in rustls's accounting;
/// RFC 8446 §5.5 allows 2^24.5). A TLS 1.2 connection, which cannot rekey, ends at its
/// suite's limit, as rustls ends it.
const REKEY_AFTER: u64 = 1 << 22;

/// rustls's side of the connection once the handshake is done: new secrets on key
/// updates, session tickets for the client.
pub(crate) enum Kernel {
    /// The agent's (client) side.
    Client(KernelConnection<ClientConnectionData>),
    /// The server's side.
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_rx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_rx_secret().map(|(_, s)| s),
            Kernel::Server(k) => k.update_rx_secret().map(|(_, s)| s),
        }
    }

    fn update_tx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_tx_secret().map(|(_, s)| s),
            Kernel::Server(k) => k.update_tx_secret().map(|(_, s)| s),
        }
    }

    /// Records the negotiated suite may seal under one key (rustls's figure).
    fn confidentiality_limit(&self) -> u64 {
        let suite = match self {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        };
        match suite {
            rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        }
    }

    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error> {
        match self {
            Kernel::Client(k) => k.handle_new_session_ticket(body),
            Kernel::Server(_) => Err(rustls::Error::General(
                "session ticket sent to a server".into(),
            )),
        }
    }
}

/// A TLS connection whose records this crate protects; see the module documentation.
pub struct TlsRecordStream<S> {
    io: S,
    kernel: Kernel,
    opener: Opener,
    sealer: Sealer,
    /// Records read, not opened yet; an opened record's plaintext while it is handed out.
    rbuf: BytesMut,
    /// Plaintext of the front record of `rbuf` not handed out yet (it starts at `rbuf[0]`).
    plain_left: usize,
    /// Bytes of that record after its plaintext (content type, padding, tag).
    plain_tail: usize,
    /// Plaintext that came with the end of the handshake.
    early: BytesMut,
    /// A post-handshake message split across records.
    hs: Vec<u8>,
    /// The last socket read filled its buffer: read ahead in large pieces.
    bulk: bool,
    /// The peer sent close_notify: reads end.
    read_closed: bool,
    /// A fatal error of the receiving side, returned to every later read.
    read_failed: Option<(io::ErrorKind, String)>,
    /// Sealed records not written yet.
    out: Outgoing,
    /// Most sealed bytes held unwritten before writes wait for the socket.
    wlimit: usize,
    /// Small pieces of the caller's data gathered into one record.
    gather: Vec<u8>,
    /// The peer asked for our KeyUpdate: sent before the next record.
    key_update_asked: bool,
    /// close_notify sealed.
    close_sent: bool,
    /// Records sealed under one key before it is replaced (TLS 1.3) or writes fail (1.2).
    rekey_at: u64,
    /// The application protocol the handshake agreed on (ALPN), if any.
    alpn: Option<Vec<u8>>,
}

fn fatal(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<S> TlsRecordStream<S> {
    /// The connection `io` after its handshake: rustls's `kernel` and the traffic secrets
    /// with their sequence numbers; `leftover` is what was read past the handshake, `early`
    /// plaintext already opened with it. `wlimit` bounds sealed bytes held unwritten.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        io: S,
        kernel: Kernel,
        version: Version,
        secrets: rustls::ExtractedSecrets,
        leftover: BytesMut,
        early: BytesMut,
        wlimit: usize,
    ) -> Result<TlsRecordStream<S>, RecordError> {
        let source = crate::tls_provider::aes_gcm_source();
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let limit = kernel.confidentiality_limit();
        let rekey_at = match version {
            Version::Tls13 => limit.min(REKEY_AFTER),
            Version::Tls12 { .. } => limit,
        };
        let mut rbuf = BytesMut::with_capacity(SMALL_READ.max(leftover.len()));
        rbuf.extend_from_slice(&leftover);
        Ok(TlsRecordStream {
            io,
            kernel,
            opener: Opener::new(&rx, rx_seq, version, source)?,
            sealer: Sealer::new(&tx, tx_seq, version, source)?,
            rbuf,
            plain_left: 0,
            plain_tail: 0,
            early,
            hs: Vec::new(),
            bulk: false,
            read_closed: false,
            read_failed: None,
            out: Outgoing::default(),
            wlimit,
            gather: Vec::new(),
            key_update_asked: false,
            close_sent: false,
            rekey_at,
            alpn: None,
        })
    }

    /// Records the protocol the handshake agreed on (see [`Self::alpn_protocol`]).
    pub(crate) fn with_alpn(mut self, alpn: Option<Vec<u8>>) -> Self {
        self.alpn = alpn;
        self
    }

    /// The application protocol agreed in the handshake (ALPN), such as `h2`: a server
    /// offering several speaks the one chosen.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// Bytes of buffer this connection holds now (read-ahead, sealed-record buffers).
    pub fn held(&self) -> usize {
        self.rbuf.capacity()
            + self.out.chunks.iter().map(|c| c.buf.len()).sum::<usize>()
            + self.out.spare.iter().map(Vec::len).sum::<usize>()
    }

    /// Replaces our key after every `records` records (tests reach the limit this way).
    #[cfg(test)]
    pub(crate) fn rekey_every(&mut self, records: u64) {
        self.rekey_at = records;
    }

    /// The transport underneath (for socket options and addresses).
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Acts on one opened non-data record's plaintext.
    fn control_record(&mut self, typ: u8, body: &[u8]) -> io::Result<()> {
        match typ {
            content::ALERT => {
                let [level, desc] = body else {
                    return Err(fatal("malformed TLS alert"));
                };
                match (desc, level) {
                    (0, _) => self.read_closed = true, // close_notify
                    // user_canceled, and TLS 1.2's other warnings, are not fatal.
                    (90, _) => {}
                    (_, 1) if self.opener.version() != Version::Tls13 => {}
                    _ => return Err(fatal(format!("peer sent TLS alert {desc}"))),
                }
                Ok(())
            }
            content::HANDSHAKE => {
                // Bounded: `handshake_message` refuses a declared length over the maximum as
                // soon as its header is here, so `hs` never holds more than one message's
                // header and body plus a record.
                self.hs.extend_from_slice(body);
                self.handshake_messages()
            }
            content::CHANGE_CIPHER_SPEC => Err(fatal("change_cipher_spec after the handshake")),
            _ => Err(fatal(format!("unexpected TLS record type {typ}"))),
        }
    }

    /// Handles the whole post-handshake messages gathered in `hs`.
    fn handshake_messages(&mut self) -> io::Result<()> {
        let mut at = 0;
        while let Some((typ, body)) =
            handshake_message(&self.hs[at..], MAX_HANDSHAKE_MESSAGE).map_err(fatal)?
        {
            let body = self.hs[at + body.start..at + body.end].to_vec();
            at += 4 + body.len();
            match (self.opener.version(), typ) {
                (Version::Tls13, 4) => self.kernel.new_session_ticket(&body).map_err(fatal)?,
                (Version::Tls13, 24) => {
                    // KeyUpdate ends its record (RFC 8446 §5.1): nothing may follow it.
                    if at != self.hs.len() {
                        return Err(fatal("data after a KeyUpdate in its record"));
                    }
                    let asked = match body[..] {
                        [0] => false,
                        [1] => true,
                        _ => return Err(fatal("malformed KeyUpdate")),
                    };
                    let secrets = self.kernel.update_rx().map_err(fatal)?;
                    self.opener.rekey(&secrets).map_err(fatal)?;
                    self.key_update_asked |= asked;
                }
                // TLS 1.2 HelloRequest: renegotiation is not offered; ignoring it refuses.
                (Version::Tls12 { .. }, 0) if body.is_empty() => {}
                _ => return Err(fatal(format!("unexpected post-handshake message {typ}"))),
            }
        }
        self.hs.drain(..at);
        Ok(())
    }

    /// Seals one record of `typ` carrying `plaintext` onto the end of the write buffer.
    fn seal_record(&mut self, typ: u8, plaintext: &[u8]) -> io::Result<()> {
        let n = self.sealer.wire_len(plaintext.len());
        let out = self.out.space(n);
        self.sealer.seal(typ, plaintext, out).map_err(fatal)?;
        self.out.commit(n);
        Ok(())
    }

    /// Before sealing data: answers the peer's KeyUpdate request, and replaces our own key
    /// before it has sealed [`REKEY_AFTER`] records.
    fn before_data(&mut self) -> io::Result<()> {
        let due = self.sealer.seq() >= self.rekey_at;
        if !(self.key_update_asked || due) {
            return Ok(());
        }
        if self.opener.version() != Version::Tls13 {
            return Err(fatal("TLS 1.2 connection reached its record limit"));
        }
        // KeyUpdate, update_not_requested (RFC 8446 §4.6.3), under the old key.
        self.seal_record(content::HANDSHAKE, &[24, 0, 0, 1, 0])?;
        let secrets = self.kernel.update_tx().map_err(fatal)?;
        self.sealer.rekey(&secrets).map_err(fatal)?;
        self.key_update_asked = false;
        Ok(())
    }

    /// Seals `bufs` into records, up to `room` bytes of them; returns how many it took.
    fn seal_data(&mut self, bufs: &[io::IoSlice<'_>], room: usize) -> io::Result<usize> {
        let mut taken = 0;
        let mut gather = std::mem::take(&mut self.gather);
        gather.clear();
        let mut result = Ok(());
        'outer: for b in bufs {
            let mut s = &b[..];
            while !s.is_empty() && taken < room {
                if s.len() >= SEAL_DIRECT {
                    if !gather.is_empty() {
                        result = self.seal_gathered(&mut gather);
                        if result.is_err() {
                            break 'outer;
                        }
                    }
                    let n = s.len().min(MAX_PLAINTEXT).min(room - taken);
                    result = self
                        .before_data()
                        .and_then(|()| self.seal_record(content::APPLICATION_DATA, &s[..n]));
                    if result.is_err() {
                        break 'outer;
                    }
                    s = &s[n..];
                    taken += n;
                } else {
                    let n = s.len().min(MAX_PLAINTEXT - gather.len()).min(room - taken);
                    gather.extend_from_slice(&s[..n]);
                    s = &s[n..];
                    taken += n;
                    if gather.len() == MAX_PLAINTEXT {
                        result = self.seal_gathered(&mut gather);
                        if result.is_err() {
                            break 'outer;
                        }
                    }
                }
            }
            if taken >= room {
                break;
            }
        }
        if result.is_ok() && !gather.is_empty() {
            result = self.seal_gathered(&mut gather);
        }
        self.gather = gather;
        result.map(|()| taken)
    }

    fn seal_gathered(&mut self, gather: &mut Vec<u8>) -> io::Result<()> {
        self.before_data()?;
        let r = self.seal_record(content::APPLICATION_DATA, gather);
        gather.clear();
        r
    }
}

impl<S: AsyncRead + Unpin> TlsRecordStream<S> {
    /// Reads more records from the socket into `rbuf`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.is_empty() && !self.bulk && self.rbuf.capacity() > 2 * SMALL_READ {
            // A burst is over: give its large buffer back.
            self.rbuf = BytesMut::with_capacity(SMALL_READ);
        }
        let want = if self.bulk { READ_AHEAD } else { SMALL_READ };
        if self.rbuf.capacity() - self.rbuf.len() < want / 2 {
            self.rbuf.reserve(want);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        self.bulk = n == room || n >= BULK_BELOW;
        Poll::Ready(Ok(n))
    }

    /// Opens the next whole record in `rbuf`, if there is one; `true` when it opened one.
    fn open_next(&mut self) -> io::Result<bool> {
        let Some(len) = self.opener.record_len(&self.rbuf).map_err(fatal)? else {
            return Ok(false);
        };
        let opened = self.opener.open(&mut self.rbuf[..len]).map_err(fatal)?;
        let (start, end) = (opened.plaintext.start, opened.plaintext.end);
        if opened.typ == content::APPLICATION_DATA {
            if self.read_closed {
                return Err(fatal("data after close_notify"));
            }
            self.rbuf.advance(start);
            self.plain_left = end - start;
            self.plain_tail = len - end;
            if self.plain_left == 0 {
                self.rbuf.advance(self.plain_tail);
            }
        } else {
            let body = self.rbuf[start..end].to_vec();
            self.rbuf.advance(len);
            self.control_record(opened.typ, &body)?;
        }
        Ok(true)
    }

    fn read_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early.split_to(n));
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.plain_left > 0 {
                let n = self.plain_left.min(buf.remaining());
                buf.put_slice(&self.rbuf[..n]);
                self.rbuf.advance(n);
                self.plain_left -= n;
                if self.plain_left == 0 {
                    self.rbuf.advance(self.plain_tail);
                }
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if self.read_closed {
                return Poll::Ready(Ok(()));
            }
            if self.open_next()? {
                continue;
            }
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection without sending TLS close_notify",
                )));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> TlsRecordStream<S> {
    /// Writes sealed records until none are left or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out.pending() > 0 {
            let mut slices = [io::IoSlice::new(&[]); OUT_SLICES];
            let k = self.out.slices(&mut slices);
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.consume(n);
        }
        Poll::Ready(Ok(()))
    }

    fn write_inner(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after TLS close_notify",
            )));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        // Room for at least one record's data whenever the unwritten bytes are under the
        // limit; otherwise wait for the socket.
        if self.out.pending() >= self.wlimit {
            let _ = self.poll_drain(cx)?;
            if self.out.pending() >= self.wlimit {
                return Poll::Pending;
            }
        }
        let room = (self.wlimit - self.out.pending()).max(MAX_PLAINTEXT);
        let taken = self.seal_data(bufs, room)?;
        // Start the write now; what the socket does not take waits for the next write or
        // flush, which registers for it.
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TlsRecordStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((kind, msg)) = &this.read_failed {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        let r = this.read_inner(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            this.read_failed = Some((e.kind(), e.to_string()));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TlsRecordStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_inner(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_inner(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            // close_notify (RFC 8446 §6.1): the peer reads everything before it, then EOF.
            this.seal_record(content::ALERT, &[1, 0])?;
            this.close_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Bytes of one buffer of sealed records during bulk transfers (buffers are zeroed once,
/// when first made, and reused: sealing never zeroes memory).
const OUT_CHUNK: usize = 128 * 1024;
/// Most bytes of a buffer between bulk transfers (the largest record fits): a connection
/// exchanging small messages keeps one buffer of at most this, not a bulk one.
const OUT_SMALL: usize = MAX_PLAINTEXT + 1024;
/// Least bytes of a buffer: small messages' records share one page.
const OUT_MIN: usize = 4 * 1024;
/// Buffers handed to one vectored write.
const OUT_SLICES: usize = 8;
/// Emptied buffers kept for reuse.
const OUT_SPARE: usize = 2;

/// One buffer of sealed records: `buf[pos..end]` not written yet.
struct Chunk {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

/// Sealed records waiting for the socket, in buffers written in order and reused once
/// written, so nothing unwritten is ever moved. Bulk buffers are kept only while bursts
/// are large: after a burst that fit in a small buffer, the large spares are let go.
#[derive(Default)]
struct Outgoing {
    chunks: std::collections::VecDeque<Chunk>,
    spare: Vec<Vec<u8>>,
    pending: usize,
    /// Bytes sealed since nothing was pending.
    burst: usize,
}

impl Outgoing {
    fn pending(&self) -> usize {
        self.pending
    }

    /// `n` bytes of writable space at the end (a record at most; [`Outgoing::commit`]
    /// takes them).
    fn space(&mut self, n: usize) -> &mut [u8] {
        let fits = self.chunks.back().is_some_and(|c| c.buf.len() - c.end >= n);
        if !fits {
            let size = if self.burst + n > OUT_SMALL {
                OUT_CHUNK
            } else {
                n.max(OUT_MIN)
            };
            let buf = match self.spare.iter().position(|b| b.len() >= size) {
                Some(i) => self.spare.swap_remove(i),
                None => vec![0; size],
            };
            self.chunks.push_back(Chunk {
                buf,
                pos: 0,
                end: 0,
            });
        }
        let c = self.chunks.back_mut().expect("a chunk with room");
        &mut c.buf[c.end..c.end + n]
    }

    fn commit(&mut self, n: usize) {
        if let Some(c) = self.chunks.back_mut() {
            c.end += n;
            self.pending += n;
            self.burst += n;
        }
    }

    /// The unwritten bytes, in order, as up to `out.len()` slices; returns how many.
    fn slices<'a>(&'a self, out: &mut [io::IoSlice<'a>]) -> usize {
        let mut k = 0;
        for (c, slot) in self
            .chunks
            .iter()
            .filter(|c| c.end > c.pos)
            .zip(out.iter_mut())
        {
            *slot = io::IoSlice::new(&c.buf[c.pos..c.end]);
            k += 1;
        }
        k
    }

    /// `n` bytes were written.
    fn consume(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(c) = self.chunks.front_mut() else {
                break;
            };
            let take = n.min(c.end - c.pos);
            c.pos += take;
            n -= take;
            if c.pos == c.end {
                let c = self.chunks.pop_front().expect("front chunk");
                if self.spare.len() < OUT_SPARE {
                    self.spare.push(c.buf);
                }
            }
        }
        if self.pending == 0 {
            if self.burst <= OUT_SMALL {
                // Between bursts: one small buffer is kept, the one most likely to serve.
                self.spare.retain(|b| b.len() <= OUT_SMALL);
                self.spare
                    .sort_unstable_by_key(|b| std::cmp::Reverse(b.len()));
                self.spare.truncate(1);
            }
            self.burst = 0;
        }
    }
}
