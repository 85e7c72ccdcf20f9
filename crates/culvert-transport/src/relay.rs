//! Copies bytes both ways between a TCP socket and a tunnel stream (or between two tunnel
//! streams), honouring half-close.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use culvert_proto::reset_code;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::woken::Branches;
use crate::TunnelStream;

/// Read size once a connection carries bulk data (see [`SMALL_READ`]).
const READ_FIRST: usize = 16 * 1024;
/// Reads of a quiet connection go into this much stack and are copied out, so an idle
/// connection holds no read buffer while it waits: a heap buffer per idle connection (and
/// the heap fragmentation of allocating and freeing one per read) was most of the memory
/// of a thousand idle tunneled connections. A read that fills it switches to heap buffers.
const SMALL_READ: usize = 4 * 1024;
/// Largest read size: a read that fills its buffer doubles the next one up to this, so a
/// bulk transfer moves 256 KiB (four full frames) per syscall.
const READ_MAX: usize = 256 * 1024;
/// Bytes written to the socket per vectored write at most.
const WRITE_MAX: usize = 512 * 1024;

/// Bytes moved by one relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayTotals {
    /// Socket → tunnel.
    pub up: u64,
    /// Tunnel → socket.
    pub down: u64,
}

/// Live byte counters a relay adds to as bytes move, so status views show long-lived
/// connections' traffic before they end. Shared by every connection of a tunnel.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Socket → tunnel.
    pub up: AtomicU64,
    /// Tunnel → socket.
    pub down: AtomicU64,
}

/// Relays until both directions finished. A socket EOF becomes a FIN; a FIN becomes a
/// socket shutdown of the write side. An error on either side aborts both (the stream is
/// reset when dropped, the socket closed).
pub async fn relay_tcp(tcp: TcpStream, stream: &TunnelStream) -> std::io::Result<RelayTotals> {
    relay_tcp_counted(tcp, stream, None).await
}

/// [`relay_tcp`], also adding every chunk to `counters` as it moves.
pub async fn relay_tcp_counted(
    tcp: TcpStream,
    stream: &TunnelStream,
    counters: Option<Arc<RelayCounters>>,
) -> std::io::Result<RelayTotals> {
    relay_tcp_until(tcp, stream, counters, std::future::pending()).await
}

/// [`relay_tcp_counted`] that is also cut short when `stop` resolves (a stream whose right
/// to exist was withdrawn while it ran): the socket is then closed with a reset, as on any
/// cut transfer, and the error is `ConnectionAborted`; the caller resets the stream.
///
/// While the relay waits for the tunnel, the connection's reader writes arriving bytes into
/// the socket itself (`driver/deliver.rs`); the relay writes what that could not.
pub async fn relay_tcp_until(
    tcp: TcpStream,
    stream: &TunnelStream,
    counters: Option<Arc<RelayCounters>>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<RelayTotals> {
    let (mut rd, wr) = tcp.into_split();
    let wr = Arc::new(wr);
    stream.deliver_to(wr.clone(), counters.clone());
    let counters = counters.as_deref();
    // In a block, so both directions (which borrow the halves) end before the halves are
    // closed below.
    let relayed = {
        let up = async {
            let mut size = READ_FIRST;
            let mut buf = BytesMut::new();
            let mut total = 0u64;
            loop {
                // Through `poll_read`, which clears tokio's readiness after a short read: a
                // small message costs one `recvfrom`, not a second one that says `WouldBlock`.
                let got = std::future::poll_fn(|cx| {
                    if buf.capacity() == 0 {
                        poll_read_small(&mut rd, cx)
                    } else {
                        poll_read_into(&mut rd, cx, &mut buf, &mut size)
                    }
                })
                .await;
                let chunk = got?;
                let n = chunk.len();
                if n == 0 {
                    stream.finish()?;
                    return Ok::<u64, std::io::Error>(total);
                }
                if n < SMALL_READ {
                    // Quiet: wait for the next read with no buffer.
                    buf = BytesMut::new();
                    size = READ_FIRST;
                } else if buf.capacity() == 0 {
                    buf.reserve(size);
                }
                total += n as u64;
                if let Some(c) = counters {
                    c.up.fetch_add(n as u64, Ordering::Relaxed);
                }
                stream.send(chunk).await?;
            }
        };
        let down = async {
            let mut total = 0u64;
            let mut chunks: Vec<Bytes> = Vec::new();
            while stream.recv_many(&mut chunks, WRITE_MAX).await? {
                let n: usize = chunks.iter().map(Bytes::len).sum();
                total += n as u64;
                if let Some(c) = counters {
                    c.down.fetch_add(n as u64, Ordering::Relaxed);
                }
                write_all(&wr, &mut chunks).await?;
            }
            socket2::SockRef::from(wr.as_ref().as_ref()).shutdown(std::net::Shutdown::Write)?;
            Ok::<u64, std::io::Error>(total)
        };
        // Pinned here, so the future below holds references: moving the two directions
        // into an `async` block stored each twice in this future (2.9 KiB instead of 1.5),
        // paid per open connection for as long as it lives (tests/relay_footprint.rs).
        tokio::pin!(up, down, stop);
        // Each direction and the stop are polled only when woken (`woken.rs`): a small
        // message read from the socket does not also poll the idle tunnel direction.
        let branches = Branches::<3>::new();
        let (mut up_total, mut down_total) = (None, None);
        std::future::poll_fn(|cx| {
            let woken = branches.enter(cx);
            if up_total.is_none() {
                if let Poll::Ready(r) = branches.poll(woken, 0, up.as_mut()) {
                    up_total = Some(r?);
                }
            }
            if down_total.is_none() {
                if let Poll::Ready(r) = branches.poll(woken, 1, down.as_mut()) {
                    down_total = Some(r?);
                }
            }
            if let (Some(u), Some(d)) = (up_total, down_total) {
                return Poll::Ready(Ok((u, d)));
            }
            if branches.poll(woken, 2, stop.as_mut()).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "relay stopped: no longer allowed",
                )));
            }
            Poll::Pending
        })
        .await
    };
    let delivered = stream.stop_delivery();
    match relayed {
        Ok((up, down)) => {
            // The write side is shut down already (above); a write half shuts it down again
            // when dropped, a second system call that fails (`ENOTCONN`) once the peer has
            // closed too. Forgotten, it leaves the closing to the read half's drop.
            if let Ok(wr) = Arc::try_unwrap(wr) {
                wr.forget();
            }
            Ok(RelayTotals {
                up,
                down: down + delivered,
            })
        }
        Err(e) => {
            // Cut short (the stream was reset, the tunnel lost): the socket is closed with a
            // reset, not a FIN, so its peer can tell a cut transfer from a complete one.
            // (A write half sends a FIN when dropped: forget it, and the socket closes when
            // the read half drops. The reader held it only under the connection's lock, and
            // no longer has it: `stop_delivery`.)
            crate::reset_on_close(wr.as_ref().as_ref());
            if let Ok(wr) = Arc::try_unwrap(wr) {
                wr.forget();
            }
            drop(rd);
            Err(e)
        }
    }
}

/// One read of at most [`SMALL_READ`] bytes into the stack, copied out (empty at the end of
/// the stream). The stack buffer lives for one poll only, never in a task's state, so an
/// idle connection waiting here holds no read buffer. It is not zeroed first (the read
/// writes what it returns, and only that is copied out): 4 KiB of `memset` per small
/// message was a visible share of a round trip's user-space time.
fn poll_read_small(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<Bytes>> {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); SMALL_READ];
    let mut rb = ReadBuf::uninit(&mut b);
    ready!(Pin::new(rd).poll_read(cx, &mut rb))?;
    Poll::Ready(Ok(Bytes::copy_from_slice(rb.filled())))
}

/// One read into `buf`, whose reads double up to [`READ_MAX`] while they fill it.
fn poll_read_into(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    size: &mut usize,
) -> Poll<std::io::Result<Bytes>> {
    if buf.capacity() - buf.len() < *size / 4 {
        buf.reserve(*size);
    }
    let room = buf.capacity() - buf.len();
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(rd), cx, buf))?;
    if n == room && *size < READ_MAX {
        *size *= 2;
    }
    Poll::Ready(Ok(buf.split().freeze()))
}

/// Writes every chunk with as few system calls as the socket allows, emptying `chunks`.
/// The write half is shared with the connection's reader (direct delivery), so it is
/// written through `&TcpStream`'s readiness and non-blocking writes, which take `&self`.
async fn write_all(wr: &OwnedWriteHalf, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    let tcp: &TcpStream = wr.as_ref();
    let mut first = 0;
    while first < chunks.len() {
        let n = std::future::poll_fn(|cx| loop {
            ready!(tcp.poll_write_ready(cx))?;
            match crate::chunk_write::try_write_chunks(tcp, &chunks[first..]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        first += crate::chunk_write::consume_written(&mut chunks[first..], n);
    }
    chunks.clear();
    Ok(())
}

/// Splices two tunnel streams (a server joining an access client's stream to the agent's):
/// bytes pass without copying, a FIN on one becomes a FIN on the other, and a reset on
/// either side resets the other with the same code, so the far end learns why. A reset
/// that follows its sender's FIN loses nothing that sender wrote: the other direction
/// still delivers it all, FIN last. `up` is `a` → `b`.
pub async fn relay_streams(a: &TunnelStream, b: &TunnelStream) -> std::io::Result<RelayTotals> {
    async fn pump(from: &TunnelStream, to: &TunnelStream) -> std::io::Result<u64> {
        let mut total = 0u64;
        loop {
            match from.recv().await {
                Ok(Some(chunk)) => {
                    total += chunk.len() as u64;
                    // A failure means writing `to` is over: its far end reset it. This
                    // direction ends, but `from` is not reset here, which would drop what it
                    // still has queued of the other direction: if that far end had finished,
                    // the other pump delivers all it sent and finishes `from` (whose drop
                    // then tells its peer nobody reads); if not, the other pump's read fails
                    // and resets `from` with the far end's code.
                    to.send(chunk).await?;
                }
                Ok(None) => {
                    to.finish()?;
                    return Ok(total);
                }
                Err(e) => {
                    to.reset(crate::reset_code_of(&e).unwrap_or(reset_code::INTERNAL));
                    return Err(e);
                }
            }
        }
    }
    // Both directions run to their end: one failing must not cut the other short.
    let (up, down) = tokio::join!(pump(a, b), pump(b, a));
    Ok(RelayTotals {
        up: up?,
        down: down?,
    })
}
