//! tokio's `AsyncRead` + `AsyncWrite` for [`TunnelStream`], so a tunnel stream can be handed
//! to anything that takes a byte stream (`tokio::io::copy`, a hyper client connection,
//! `tokio_postgres::Config::connect_raw`).
//!
//! Reads copy out of the received chunks; a chunk longer than the caller's buffer is split
//! by the connection, which keeps the rest for the next read. Writes copy the caller's
//! bytes into a per-stream block shared by successive writes (no allocation per write, no
//! boxed future), queue only what the send buffers take, and return `Pending` (the waker
//! registered under the same lock the driver wakes it with) while they take nothing.
//! Vectored writes take every slice in one copy: a writer that has them (hyper queues a
//! request's head and body chunks as they are) would otherwise copy them together first.
//! Shutdown is [`TunnelStream::finish`]: a half-close, reading goes on.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use culvert_proto::StreamError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::TunnelStream;

/// Size of the block writes are copied into: large enough that small writes share one
/// allocation for a while, small enough that a stream idle after one write holds little.
const WRITE_BLOCK: usize = 64 * 1024;

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match self.poll_recv_max(cx, buf.remaining()) {
            Poll::Ready(Ok(Some(chunk))) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            // The end: a read that fills nothing.
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are queued in the connection and its writer task is already woken:
        // there is no buffer of ours left to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting down twice is not an error (tokio's copy may do it).
        if self.finished.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(self.finish())
    }
}

impl TunnelStream {
    /// Queues what the stream takes now of `bufs`, in order, as one chunk; `Pending` (the
    /// waker kept) while it takes nothing.
    fn write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut st = self.shared.lock();
        if st.closed.is_some() {
            return Poll::Ready(Err(self.gone(&mut st)));
        }
        // Copy no more than the stream can queue now. With no room at all, one byte is
        // offered so the connection notes the stream as blocked and wakes it when room
        // frees up.
        let room = st.conn.send_room(self.id).unwrap_or(0);
        let chunk = copy_in(&mut self.wbuf, bufs, total.min(room.max(1)));
        match st.conn.write(self.id, chunk) {
            Ok(0) => {
                if let Some(w) = st.wakers.get_mut(&self.id) {
                    w.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                drop(st);
                self.shared.writer_wake.notify_one();
                Poll::Ready(Ok(n))
            }
            // Writing ended by the peer's reset (it had finished: its bytes stay readable).
            Err(StreamError::ClosedForWriting(_)) if st.resets.contains_key(&self.id) => {
                Poll::Ready(Err(self.gone(&mut st)))
            }
            Err(StreamError::ClosedForWriting(_)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream already finished",
            ))),
            Err(_) => Poll::Ready(Err(self.gone(&mut st))),
        }
    }
}

/// The first `take` bytes of `bufs` as one `Bytes`, copied into the stream's write block
/// `wbuf` (allocating a new block only when the current one is used up and still referenced
/// by queued chunks).
fn copy_in(wbuf: &mut BytesMut, bufs: &[IoSlice<'_>], take: usize) -> Bytes {
    if wbuf.capacity() < take {
        wbuf.reserve(take.max(WRITE_BLOCK));
    }
    let mut left = take;
    for b in bufs {
        if left == 0 {
            break;
        }
        let n = b.len().min(left);
        wbuf.extend_from_slice(&b[..n]);
        left -= n;
    }
    wbuf.split().freeze()
}
