//! A write half that counts the bytes the transport accepted, so the connection driver can
//! tell a slow write from one that makes no progress at all (a peer that stopped reading,
//! a path that went silent) without a clock read per write.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Bytes accepted by the transport so far, shared with whoever watches for stalls.
pub(crate) type Progress = Arc<AtomicU64>;

/// `W`, counting every byte a write accepts into a shared [`Progress`].
pub(crate) struct Counted<W> {
    inner: W,
    progress: Progress,
}

impl<W> Counted<W> {
    pub(crate) fn new(inner: W) -> Counted<W> {
        Counted {
            inner,
            progress: Progress::default(),
        }
    }

    /// The wrapped writer.
    #[cfg(test)]
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The shared counter.
    pub(crate) fn progress(&self) -> Progress {
        self.progress.clone()
    }

    fn count(&self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.progress.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_ready() {
            // A completed flush is progress too (TLS records reached the socket).
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn counts_accepted_bytes_only() {
        let (a, _b) = tokio::io::duplex(8);
        let mut w = Counted::new(a);
        let p = w.progress();
        w.write_all(b"12345").await.unwrap();
        assert_eq!(p.load(Ordering::Relaxed), 5);
        // The pipe holds 8 bytes: a write of 10 makes 3 bytes of progress and then stalls.
        let stalled =
            tokio::time::timeout(std::time::Duration::from_millis(50), w.write_all(&[0; 10])).await;
        assert!(stalled.is_err());
        assert_eq!(p.load(Ordering::Relaxed), 8);
    }
}
