//! Keeps the bytes a peer sent right behind its upgrade request or response.
//!
//! tungstenite does the HTTP upgrade, then Culvert's own framer ([`crate::wsframe`]) takes
//! the socket over. tungstenite reads the upgrade in chunks, so one read may also take the
//! first WebSocket frames when the peer sent them without waiting (a pipelining client, a
//! server that writes its first message with the 101); those bytes sit in tungstenite's
//! buffer, which is dropped with it. [`Recorder`] sees every byte tungstenite reads, so what
//! follows the blank line that ends the HTTP head can be handed to the framer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of the upgrade a recorder keeps at most: tungstenite itself gives up on an HTTP
/// head past 64 KiB; the margin covers its last read chunk, so its error (not this one) is
/// what an oversized request gets.
pub const MAX_RECORDED: usize = 64 * 1024 + 8 * 1024;

/// A socket wrapper that records what is read through it, up to [`MAX_RECORDED`] bytes.
#[derive(Debug)]
pub struct Recorder<S> {
    io: S,
    seen: Vec<u8>,
}

impl<S> Recorder<S> {
    /// Starts recording reads from `io`.
    pub fn new(io: S) -> Recorder<S> {
        Recorder {
            io,
            seen: Vec::new(),
        }
    }

    /// The socket, and what was read past the end of the HTTP head (empty when nothing
    /// was, or when no complete head was read).
    pub fn finish(self) -> (S, Bytes) {
        let tail = match self.seen.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => Bytes::copy_from_slice(&self.seen[end + 4..]),
            None => Bytes::new(),
        };
        (self.io, tail)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        if this.seen.len() + got.len() > MAX_RECORDED {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("websocket upgrade longer than {MAX_RECORDED} bytes"),
            )));
        }
        this.seen.extend_from_slice(got);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn keeps_what_follows_the_head() {
        let (mut a, b) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\nA: b\r\n\r\n\x82\x01x")
            .await
            .unwrap();
        let mut r = Recorder::new(b);
        let mut buf = [0u8; 64];
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(n, 27);
        let (_, tail) = r.finish();
        assert_eq!(&tail[..], b"\x82\x01x");
    }

    #[tokio::test]
    async fn no_head_no_tail() {
        let (mut a, b) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut r = Recorder::new(b);
        let mut buf = [0u8; 16];
        r.read_exact(&mut buf).await.unwrap();
        assert!(r.finish().1.is_empty());
    }

    #[tokio::test]
    async fn refuses_an_endless_head() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        tokio::io::AsyncWriteExt::write_all(&mut a, &vec![b'a'; MAX_RECORDED + 1])
            .await
            .unwrap();
        let mut r = Recorder::new(b);
        let mut buf = vec![0u8; 8192];
        let err = loop {
            if let Err(e) = r.read(&mut buf).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
