//! tokio's `AsyncRead` + `AsyncWrite` for [`TunnelStream`], so a tunnel stream can be handed
//! to anything that takes a byte stream (`tokio::io::copy`, a hyper client connection,
//! `tokio_postgres::Config::connect_raw`).
//!
//! Reads copy out of the received chunks; a chunk longer than the caller's buffer is split
//! by the connection, which keeps the rest for the next read. Writes copy the caller's
//! bytes into a per-stream block shared by successive writes (no allocation per write, no
//! boxed future), queue only what the send buffers take, and return `Pending` (the waker
//! registered under the same lock the driver wakes it with) while they take nothing.
//! Shutdown is [`TunnelStream::finish`]: a half-close, reading goes on.

use std::io;
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
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if st.closed.is_some() {
            return Poll::Ready(Err(this.gone(&mut st)));
        }
        // Copy no more than the stream can queue now. With no room at all, one byte is
        // offered so the connection notes the stream as blocked and wakes it when room
        // frees up.
        let room = st.conn.send_room(this.id).unwrap_or(0);
        let take = buf.len().min(room.max(1));
        let chunk = copy_in(&mut this.wbuf, &buf[..take]);
        match st.conn.write(this.id, chunk) {
            Ok(0) => {
                if let Some(w) = st.wakers.get_mut(&this.id) {
                    w.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                drop(st);
                this.shared.writer_wake.notify_one();
                Poll::Ready(Ok(n))
            }
            // Writing ended by the peer's reset (it had finished: its bytes stay readable).
            Err(StreamError::ClosedForWriting(_)) if st.resets.contains_key(&this.id) => {
                Poll::Ready(Err(this.gone(&mut st)))
            }
            Err(StreamError::ClosedForWriting(_)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream already finished",
            ))),
            Err(_) => Poll::Ready(Err(this.gone(&mut st))),
        }
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

/// `data` as `Bytes`, copied into the stream's write block `wbuf` (allocating a new block
/// only when the current one is used up and still referenced by queued chunks).
fn copy_in(wbuf: &mut BytesMut, data: &[u8]) -> Bytes {
    if wbuf.capacity() < data.len() {
        wbuf.reserve(data.len().max(WRITE_BLOCK));
    }
    wbuf.extend_from_slice(data);
    wbuf.split().freeze()
}
