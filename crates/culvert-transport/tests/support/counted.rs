//! A socket that counts what the driver does with it, for the tests of what a message costs.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP socket that counts the reads polled on it and the writes that moved bytes.
pub struct Counted {
    inner: TcpStream,
    /// Reads polled, whatever they returned.
    reads: Arc<AtomicUsize>,
    /// Writes (plain or vectored) that wrote at least one byte.
    writes: Arc<AtomicUsize>,
}

/// What a [`Counted`] socket counted so far, readable while the driver owns the socket.
#[derive(Clone)]
pub struct Counts {
    reads: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

impl Counts {
    /// Reads polled, whatever they returned.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    /// Writes (plain or vectored) that wrote at least one byte.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }
}

impl Counted {
    /// Counts on `inner` from now on.
    pub fn new(inner: TcpStream) -> Counted {
        Counted {
            inner,
            reads: Arc::default(),
            writes: Arc::default(),
        }
    }

    /// A handle on the counts, for after the socket is handed to a driver.
    pub fn counts(&self) -> Counts {
        Counts {
            reads: self.reads.clone(),
            writes: self.writes.clone(),
        }
    }

    fn count_write(&self, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_write(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_write(r)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
