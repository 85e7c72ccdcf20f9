//! A handle to one multiplexed stream, usable from two tasks at once (one reading, one writing).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use culvert_proto::{reset_code, ReadOutcome, StreamError, StreamId};

use crate::driver::Shared;

/// The error inside an `io::Error` of kind `ConnectionReset` when the peer reset the
/// stream: callers read the code with [`reset_code_of`] to say why (or pass it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetByPeer(pub u64);

impl std::fmt::Display for ResetByPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream reset by peer: {} (code {})",
            reset_code::describe(self.0),
            self.0
        )
    }
}

impl std::error::Error for ResetByPeer {}

/// The peer's reset code, if `e` is a stream reset by the peer.
pub fn reset_code_of(e: &io::Error) -> Option<u64> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ResetByPeer>())
        .map(|r| r.0)
}

/// One tunneled byte stream. Dropping it after [`TunnelStream::finish`] (tokio's
/// `shutdown`) still delivers everything written, FIN last, and only then tells the peer
/// nobody reads; dropping it before finishing resets both directions at once.
///
/// Two ways to use it: the zero-copy methods ([`TunnelStream::send`],
/// [`TunnelStream::recv`], [`TunnelStream::recv_many`]) take `&self`, so one task may read
/// while another writes; and tokio's [`AsyncRead`](tokio::io::AsyncRead) +
/// [`AsyncWrite`](tokio::io::AsyncWrite), so it can be handed to `tokio::io::copy`, a hyper
/// connection or a database driver (those copy, as their traits require).
pub struct TunnelStream {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: StreamId,
    pub(crate) finished: AtomicBool,
    pub(crate) eof: AtomicBool,
    /// Where `poll_write` copies callers' bytes: successive writes share one block, so a
    /// write allocates only when the block is used up (see `stream_io`).
    pub(crate) wbuf: BytesMut,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("id", &self.id)
            .finish()
    }
}

impl TunnelStream {
    pub(crate) fn new(shared: Arc<Shared>, id: StreamId) -> TunnelStream {
        TunnelStream {
            shared,
            id,
            finished: AtomicBool::new(false),
            eof: AtomicBool::new(false),
            wbuf: BytesMut::new(),
        }
    }

    /// The stream's protocol id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    pub(crate) fn gone(&self, st: &mut crate::driver::State) -> io::Error {
        // Kept until the handle drops, so every later call reports the same reset.
        if let Some(&code) = st.resets.get(&self.id) {
            return io::Error::new(io::ErrorKind::ConnectionReset, ResetByPeer(code));
        }
        if let Some(r) = &st.closed {
            return io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("tunnel closed: {r}"),
            );
        }
        io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")
    }

    /// Next chunk of bytes in order; `None` at the end (the peer finished).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_recv_max(cx, usize::MAX)
    }

    /// Next chunk of at most `max` bytes; the rest of a longer chunk stays queued in the
    /// connection for the next call (so a partial read loses nothing).
    pub(crate) fn poll_recv_max(
        &self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if self.eof.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(None));
        }
        let mut st = self.shared.lock();
        if st.closed.is_some() {
            return Poll::Ready(Err(self.gone(&mut st)));
        }
        // Not waiting any more: a read waker stays registered only while this stream's
        // reader waits with nothing queued, which is when a direct delivery may write for
        // it (`driver/deliver.rs`). A stale one would let a delivery write later bytes
        // while the relay still writes the ones it takes here.
        if let Some(w) = st.wakers.get_mut(&self.id) {
            w.read = None;
        }
        if let Some(left) = self.take_leftover(&mut st, max) {
            return Poll::Ready(Ok(left));
        }
        match st.conn.read(self.id, max) {
            Ok(ReadOutcome::Data(b)) => {
                // Reading may have released credit that must go out.
                if st.conn.wants_transmit() {
                    self.shared.transmit_locked(st, Some(self.id));
                }
                Poll::Ready(Ok(Some(b)))
            }
            Ok(ReadOutcome::WouldBlock) => {
                if let Some(w) = st.wakers.get_mut(&self.id) {
                    w.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(ReadOutcome::Eof) => {
                self.eof.store(true, Ordering::Relaxed);
                Poll::Ready(Ok(None))
            }
            Err(_) => Poll::Ready(Err(self.gone(&mut st))),
        }
    }

    /// Awaits the next chunk; `None` at the end.
    pub async fn recv(&self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Awaits at least one chunk, then takes every chunk already buffered (up to about
    /// `max` bytes) under one lock, appending them to `out`, so the caller can write them
    /// with one vectored write. `false` at the end (the peer finished; `out` untouched).
    pub async fn recv_many(&self, out: &mut Vec<Bytes>, max: usize) -> io::Result<bool> {
        let Some(first) = self.recv().await? else {
            return Ok(false);
        };
        let mut total = first.len();
        out.push(first);
        if total >= max {
            return Ok(true);
        }
        let mut st = self.shared.lock();
        if st.closed.is_some() {
            return Ok(true);
        }
        while total < max {
            if let Some(left) = self.take_leftover(&mut st, usize::MAX) {
                match left {
                    Some(b) => {
                        total += b.len();
                        out.push(b);
                        continue;
                    }
                    None => break,
                }
            }
            match st.conn.read(self.id, usize::MAX) {
                Ok(ReadOutcome::Data(b)) => {
                    total += b.len();
                    out.push(b);
                }
                // Reading the end consumes it: remember it for the next call.
                Ok(ReadOutcome::Eof) => {
                    self.eof.store(true, Ordering::Relaxed);
                    break;
                }
                // Errors show up on the next call, after these bytes are written.
                _ => break,
            }
        }
        if st.conn.wants_transmit() {
            self.shared.transmit_locked(st, Some(self.id));
        }
        Ok(true)
    }

    /// The next chunk (at most `max` bytes) of what a direct delivery left for the relay,
    /// which comes before anything still queued in the connection; `Some(None)` at the end
    /// the delivery read; `None` when nothing is left.
    fn take_leftover(&self, st: &mut crate::driver::State, max: usize) -> Option<Option<Bytes>> {
        let d = st.deliver.get_mut(&self.id)?;
        if let Some(first) = d.leftover.first_mut() {
            if first.len() > max {
                return Some(Some(first.split_to(max)));
            }
            return Some(Some(d.leftover.remove(0)));
        }
        if d.eof {
            self.eof.store(true, Ordering::Relaxed);
            return Some(None);
        }
        None
    }

    /// Lets the connection's reader write this stream's bytes into `sock` itself while
    /// [`TunnelStream::recv_many`] waits (see `driver/deliver.rs`), counting them into
    /// `counters`. For a relay that writes everything it receives to `sock`.
    pub(crate) fn deliver_to(
        &self,
        sock: Arc<tokio::net::tcp::OwnedWriteHalf>,
        counters: Option<Arc<crate::RelayCounters>>,
    ) {
        let mut st = self.shared.lock();
        crate::driver::deliver::register(&mut st, self.id, sock, counters);
    }

    /// Ends [`TunnelStream::deliver_to`]; the bytes delivered directly.
    pub(crate) fn stop_delivery(&self) -> u64 {
        self.shared
            .lock()
            .deliver
            .remove(&self.id)
            .map_or(0, |d| d.delivered)
    }

    /// Queues as much of `data` as the send buffers take, advancing it; ready when all is queued.
    pub fn poll_send(&self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        if st.closed.is_some() {
            return Poll::Ready(Err(self.gone(&mut st)));
        }
        match st.conn.write_from(self.id, data) {
            Ok(n) => {
                if data.is_empty() {
                    self.shared.transmit_locked(st, Some(self.id));
                    return Poll::Ready(Ok(()));
                }
                if let Some(w) = st.wakers.get_mut(&self.id) {
                    w.write = Some(cx.waker().clone());
                }
                if n > 0 {
                    self.shared.transmit_locked(st, Some(self.id));
                }
                Poll::Pending
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

    /// Sends all of `data` (without copying it), waiting for buffer room.
    pub async fn send(&self, mut data: Bytes) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_send(cx, &mut data)).await
    }

    /// Whether [`TunnelStream::finish`] was called (our direction is closed).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Half-closes: a FIN follows the bytes already sent. Receiving goes on.
    pub fn finish(&self) -> io::Result<()> {
        let mut st = self.shared.lock();
        match st.conn.finish(self.id) {
            Ok(()) => {
                self.finished.store(true, Ordering::Relaxed);
                self.shared.transmit_locked(st, Some(self.id));
                Ok(())
            }
            Err(_) => Err(self.gone(&mut st)),
        }
    }

    /// Aborts both directions with `code`.
    pub fn reset(&self, code: u64) {
        let mut st = self.shared.lock();
        if st.conn.reset(self.id, code).is_ok() {
            drop(st);
            self.shared.writer_wake.notify_one();
        }
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.wakers.remove(&self.id);
        st.resets.remove(&self.id);
        st.deliver.remove(&self.id);
        let done = *self.finished.get_mut() && *self.eof.get_mut();
        // Both directions done: the connection frees the stream once its FIN is out.
        // Otherwise nobody will read or write it again: let it go so no state lingers.
        // What was written before a finish still reaches the peer, FIN last (an answer
        // written, shut down and dropped at once is not lost); the rest aborts.
        if !done
            && st.closed.is_none()
            && st
                .conn
                .abandon(Instant::now(), self.id, reset_code::CANCEL)
                .is_ok()
        {
            drop(st);
            self.shared.writer_wake.notify_one();
        }
    }
}
