//! The writer task of a connection, and the clock that runs the connection's timers.
//!
//! Every wait of the writer, whether for work or on the socket, goes through [`Clock`], so
//! heartbeats, the idle timeout and the write-progress deadline fire whatever the socket
//! does: a path that goes silent with data in flight fills the socket's send buffer and
//! blocks the write, and the connection must still notice within its idle timeout (it used
//! to wait for the kernel's retransmission timeout, about 15 minutes). A close or abort
//! ends any wait at once, dropping the write in flight, so the socket closes even mid-write.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use culvert_proto::Transmit;
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::sync::watch;

use super::direct::Parking;
use super::Shared;
use crate::progress::Progress;
use crate::ws::BATCH_CAP;
use crate::wsframe::{close_code, WsWriter};
use culvert_proto::ConnectionError;

/// WebSocket messages (batches of at most [`BATCH_CAP`]) sent with one vectored write when
/// that much is queued: four, about 1 MiB per system call, as a stream's send buffer holds.
/// One message per write cost the sending side 10-30 % more CPU per GB (BENCHMARKS.md).
const BATCHES_PER_WRITE: usize = 4;

/// How long a graceful close may take to send its close frame before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the writer stopped.
enum Stop {
    /// Closed elsewhere (abort, the reader saw the end, a timer of this task).
    Closed,
    /// Closed by this task, for this reason; the socket is of no further use.
    Failed(String),
    /// [`super::Mux::close`]: everything queued is written; close the WebSocket politely.
    Closing(String),
    /// The connection failed on a limit or violation it noticed outside the reader (say a
    /// reset over the reset cap): explain, close the WebSocket, then end.
    Failing(String),
}

/// Runs the connection's timers while the writer waits.
struct Clock {
    shared: Arc<Shared>,
    closed: watch::Receiver<bool>,
    progress: Progress,
    /// A write that moves no byte for this long ends the connection: the peer's idle
    /// timeout, the same figure that declares a silent peer dead.
    stall_limit: Duration,
}

impl Clock {
    /// Fires the protocol timers due now (heartbeats, idle timeout, lingering streams) and
    /// hands out what they caused (a lingering stream's reset frees room that blocked
    /// writers wait for).
    fn fire(&self) -> Result<(), Stop> {
        let mut st = self.shared.lock();
        if let Err(e) = st.conn.handle_timeout(Instant::now()) {
            return Err(Stop::Failed(e.to_string()));
        }
        self.shared.dispatch(&mut st).map_err(Stop::Failed)?;
        let wake = st.conn.wants_transmit();
        drop(st);
        if wake {
            self.shared.writer_wake.notify_one();
        }
        Ok(())
    }

    fn next_timer(&self) -> Option<Instant> {
        self.shared.lock().conn.poll_timeout()
    }

    /// Awaits one socket operation while running the timers; fails the connection when
    /// the operation moves no byte for [`Clock::stall_limit`].
    async fn io<F>(&mut self, what: &str, fut: F) -> Result<(), Stop>
    where
        F: Future<Output = std::io::Result<()>>,
    {
        tokio::pin!(fut);
        // The common case completes at once: no timer is armed and no lock taken for it.
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(r) = first {
            return r.map_err(|e| Stop::Failed(format!("websocket {what}: {e}")));
        }
        let mut seen = self.progress.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            let stall_at = since + self.stall_limit;
            let deadline = self.next_timer().map_or(stall_at, |t| t.min(stall_at));
            tokio::select! {
                biased;
                r = &mut fut => {
                    return r.map_err(|e| Stop::Failed(format!("websocket {what}: {e}")));
                }
                _ = self.closed.wait_for(|c| *c) => return Err(Stop::Closed),
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            let p = self.progress.load(Ordering::Relaxed);
            if p != seen {
                seen = p;
                since = now;
            } else if now >= stall_at {
                return Err(Stop::Failed(format!(
                    "websocket {what} made no progress for {:?} (the peer stopped reading or the path is down)",
                    self.stall_limit
                )));
            }
            self.fire()?;
        }
    }

    /// Waits for work (a wake-up) or the next timer.
    async fn idle(&mut self, deadline: Option<Instant>) -> Result<(), Stop> {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.closed.wait_for(|c| *c) => return Err(Stop::Closed),
            _ = self.shared.writer_wake.notified() => return Ok(()),
            _ = sleep => {}
        }
        self.fire()
    }
}

pub(super) async fn run<S>(
    shared: Arc<Shared>,
    mut ws: WsWriter<WriteHalf<S>>,
    parking: Arc<Parking<WriteHalf<S>>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut clock = Clock {
        closed: shared.closed_tx.subscribe(),
        progress: ws.progress(),
        stall_limit: shared.lock().conn.config().idle_timeout,
        shared: shared.clone(),
    };
    let mut txs: Vec<Transmit> = (0..BATCHES_PER_WRITE).map(|_| Transmit::new()).collect();
    // Set when a write ended before all of it was written (cut by a close, a timer or an
    // error): the peer's WebSocket stream then stops mid-frame, and anything written after
    // it (a GoAway, a close frame) would be read as the rest of that frame.
    let mut torn = false;
    let stop = loop {
        let (k, n, pong, deadline) = {
            let mut st = shared.lock();
            if st.closed.is_some() {
                break Stop::Closed;
            }
            if let Some(e) = st.conn.error() {
                break Stop::Failing(format!("protocol: {e}"));
            }
            let mut k = 0;
            let mut n = 0;
            while k < txs.len() {
                let got = st.conn.poll_transmit_segments(&mut txs[k], BATCH_CAP);
                if got == 0 {
                    break;
                }
                n += got;
                k += 1;
            }
            if let Err(e) = shared.dispatch(&mut st) {
                break Stop::Failed(e);
            }
            (k, n, st.pending_pong.take(), st.conn.poll_timeout())
        };
        if let Some(p) = pong {
            if let Err(s) = clock.io("write", ws.send_control(0xa, &p)).await {
                torn = true;
                break s;
            }
        }
        if n > 0 {
            let msgs: Vec<(&[bytes::Bytes], usize)> =
                txs[..k].iter().map(|t| (&t.segments[..], t.len)).collect();
            let r = clock.io("write", ws.send_many(&msgs)).await;
            drop(msgs);
            txs[..k].iter_mut().for_each(Transmit::clear);
            if let Err(s) = r {
                torn = true;
                break s;
            }
            continue;
        }
        if let Err(s) = clock.io("flush", ws.flush()).await {
            break s;
        }
        if let Some(r) = shared.lock().closing.clone() {
            break Stop::Closing(r);
        }
        // Idle: senders (or, for small sends, the flush task: flush.rs) write through the
        // parked socket themselves (direct.rs) and wake this task only for what they could
        // not finish.
        parking.park(ws);
        let idle = clock.idle(deadline).await;
        ws = parking
            .take()
            .expect("only the writer task takes back the writer it parked");
        if let Err(s) = idle {
            torn = ws.has_pending();
            break s;
        }
        if let Err(s) = clock.io("write", ws.finish_pending()).await {
            torn = true;
            break s;
        }
    };
    match stop {
        Stop::Failed(reason) => shared.close(reason),
        Stop::Closing(reason) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, ws.close()).await;
            shared.close(reason);
        }
        Stop::Failing(reason) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, goodbye(&shared, &mut ws)).await;
            shared.close(reason);
        }
        // The peer ended it (say so politely, briefly); an abort drops the socket at once,
        // and so does a write cut mid-frame (nothing more can be framed after it).
        Stop::Closed if !torn && !shared.lock().aborted => {
            let _ = tokio::time::timeout(CLOSE_GRACE, goodbye(&shared, &mut ws)).await;
        }
        Stop::Closed => {}
    }
}

/// Closes the WebSocket saying why: the GoAway of a limit the peer made the connection
/// exceed, then a close frame with the code of what ended it (the reader's framing error,
/// a protocol violation, a policy limit, or a normal closure).
async fn goodbye<W: AsyncWrite + Unpin>(
    shared: &Shared,
    ws: &mut WsWriter<W>,
) -> std::io::Result<()> {
    let (final_frame, code, reason) = {
        let mut st = shared.lock();
        let (code, reason) = match (st.ws_close.take(), st.conn.error()) {
            (Some((code, reason)), _) => (code, reason.to_owned()),
            (None, Some(e)) => (close_code_of(e), e.to_string()),
            (None, None) => (close_code::NORMAL, String::new()),
        };
        (st.conn.take_final_frame(), code, reason)
    };
    if let Some(f) = final_frame {
        let len = f.len();
        ws.send(&[f], len).await?;
    }
    ws.close_with(code, &reason).await
}

/// The WebSocket close code for a connection failure: a limit the peer made us exceed is a
/// policy violation, anything else a protocol error.
fn close_code_of(e: &ConnectionError) -> u16 {
    match e {
        ConnectionError::ControlQueueFull(_) | ConnectionError::LocalResetFlood(_) => {
            close_code::POLICY_VIOLATION
        }
        ConnectionError::IdleTimeout => close_code::GOING_AWAY,
        _ => close_code::PROTOCOL_ERROR,
    }
}
