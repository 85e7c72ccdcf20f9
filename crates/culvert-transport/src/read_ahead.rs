//! A read buffer under TLS. rustls reads its socket at most 4 KiB beyond what it already
//! holds (its deframer grows by `READ_SIZE`, 4,096 bytes, and shrinks back once empty), so
//! a wss connection receiving bulk data made a system call for every 4-16 KiB (67,000
//! `recvfrom` per GB against 5,000 on the plain ws reader, which takes up to 256 KiB per
//! call). [`ReadAhead`] reads the socket in pieces of up to [`READ_AHEAD`] while data
//! comes in bulk and serves TLS's small reads from memory; writes pass straight through
//! (vectored, as the socket takes them). The tunnel endpoint's wss connections have since moved
//! to [`crate::record_layer`], which reads records ahead itself; the HTTPS ingress, whose
//! connections hyper drives through tokio-rustls, reads through this.
//!
//! Small messages are read straight into the caller's buffer, as without it: a
//! request/response exchange allocates nothing. Bulk is a read that fills the caller's
//! whole buffer (more is waiting); it ends with a piece smaller than [`BULK_BELOW`]. The
//! piece is allocated per burst (never zeroed) and freed when the socket is drained, so
//! an idle connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes one socket read takes: the plain ws reader's read size, so a wss
/// connection makes as few system calls per byte as a ws one.
pub const READ_AHEAD: usize = 256 * 1024;
/// A piece smaller than this means the socket held no more: the burst is over, and reads
/// go straight to the caller again.
pub const BULK_BELOW: usize = 16 * 1024;

/// A transport whose reads go through a read-ahead buffer; see the module documentation.
#[derive(Debug)]
pub struct ReadAhead<T> {
    io: T,
    buf: BytesMut,
    /// Reading ahead: the last read filled its buffer (or the last piece was large).
    bulk: bool,
}

impl<T> ReadAhead<T> {
    /// Wraps `io`; nothing is allocated until the first read.
    pub fn new(io: T) -> ReadAhead<T> {
        ReadAhead {
            io,
            buf: BytesMut::new(),
            bulk: false,
        }
    }

    /// The transport underneath (for socket options and addresses).
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Bytes of buffer held now, read or not (0 when idle).
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if !this.bulk || out.remaining() >= READ_AHEAD {
                // Straight into the caller's buffer: a small message, or a caller with
                // room for a whole piece. No piece is kept meanwhile.
                if this.buf.capacity() > 0 {
                    this.buf = BytesMut::new();
                }
                let before = out.filled().len();
                let r = Pin::new(&mut this.io).poll_read(cx, out);
                if let Poll::Ready(Ok(())) = r {
                    this.bulk = out.filled().len() > before && out.remaining() == 0;
                }
                return r;
            }
            this.buf.reserve(READ_AHEAD);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Ready(Ok(n)) => this.bulk = n >= BULK_BELOW,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // The socket is drained: hold no memory while waiting.
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Every byte arrives once and in order, whatever the sizes of the reads above it
    /// (small ones served from the buffer, whole-piece ones straight from the socket).
    #[tokio::test]
    async fn reads_of_any_size_get_every_byte_in_order() {
        let data = pattern(3 * READ_AHEAD + 12_345);
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(10_007) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut r = ReadAhead::new(rx);
        let mut got = Vec::new();
        let sizes = [1usize, 4096, 16_709, READ_AHEAD, 3, READ_AHEAD + 5, 500];
        let mut i = 0;
        loop {
            let mut buf = vec![0u8; sizes[i % sizes.len()]];
            i += 1;
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
    }

    /// A transport that counts the reads made on it.
    struct Counted<T> {
        io: T,
        reads: usize,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            Pin::new(&mut this.io).poll_read(cx, out)
        }
    }

    /// Bulk data waiting on the socket is taken in pieces of up to [`READ_AHEAD`], however
    /// small the reads above: 1 MiB read 4 KiB at a time (as rustls reads) costs a handful
    /// of socket reads, not 256.
    #[tokio::test]
    async fn bulk_is_read_in_large_pieces() {
        let data = pattern(1 << 20);
        let (mut tx, rx) = tokio::io::duplex(2 << 20);
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut r = ReadAhead::new(Counted { io: rx, reads: 0 });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == data, "bytes differ");
        let reads = r.get_ref().reads;
        assert!(reads <= 8, "{reads} socket reads for 1 MiB");
    }

    /// Small messages go straight to the caller: no piece is allocated for them, and a
    /// connection waiting for data holds none.
    #[tokio::test]
    async fn small_messages_and_idle_waits_hold_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = ReadAhead::new(rx);
        let mut buf = [0u8; 4096];
        for round in 0..3u8 {
            tx.write_all(&[round; 100]).await.unwrap();
            let n = r.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &[round; 100][..]);
            assert_eq!(r.held(), 0, "a piece allocated for a small message");
        }
        // A burst: pieces while it lasts.
        tx.write_all(&pattern(48 * 1024)).await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        assert!(r.held() > 0, "no piece during a burst");
        let mut rest = vec![0u8; 40 * 1024];
        r.read_exact(&mut rest).await.unwrap();
        // Nothing more to read: the read waits, and the piece is gone meanwhile.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut buf)).await;
        assert!(waiting.is_err(), "no bytes were sent");
        assert_eq!(r.held(), 0, "an idle reader keeps its piece");
    }

    /// Writes reach the transport unchanged, vectored ones included.
    #[tokio::test]
    async fn writes_pass_through() {
        let (tx, mut rx) = tokio::io::duplex(64 * 1024);
        let mut w = ReadAhead::new(tx);
        let parts = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")];
        let n = w.write_vectored(&parts).await.unwrap();
        w.write_all(&b"abcd"[n..]).await.unwrap();
        w.write_all(b"ef").await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abcdef");
    }
}
