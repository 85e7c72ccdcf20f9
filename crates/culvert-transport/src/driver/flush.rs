//! The flush task: small sends go out at the end of the scheduler's turn, so that the
//! streams made ready by one poll of the sockets share one write.
//!
//! Write-through (`direct.rs`) sends each stream's bytes from the task that queued them, one
//! system call per message. When eight connections' requests arrive together, the server
//! wrote eight WebSocket frames with eight `send`s, and the agent was woken for each. On a
//! current-thread runtime every task woken by one poll of the sockets is already in the run
//! queue when the first of them queues its bytes; a sender of a small message now only
//! marks the connection for flushing and wakes this task, which runs after those tasks and
//! writes what they all queued at once (through the parked writer, as a write-through
//! would). Larger sends (a bulk stream's 256 KiB reads) still write through at once: their
//! bytes are still in the cache, and one such send fills a write by itself.
//!
//! A burst is bounded without a timer: once [`DEFER_BELOW`] bytes are queued, the next
//! send writes through everything queued. A connection with one stream open writes
//! through at once as before: no other stream's frame can share its write, and the hop
//! through this task cost one round trip over one connection 442 user-space instructions
//! in each tunnel process (`scripts/rr-instructions.sh`, 15,257 before; with one stream the
//! choice now costs 13, taken under the caller's lock).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use super::Shared;

/// Application bytes queued and not on the wire (across the connection's streams) below
/// which a send leaves the write to the flush task. 16 KiB: far above an interactive
/// message (a database query, a keystroke), far below a bulk stream's relay read.
pub(crate) const DEFER_BELOW: usize = 16 * 1024;

/// The flush task's half of the connection state.
#[derive(Default)]
pub(crate) struct FlushSlot {
    /// A flush was asked for and the task has not yet taken it.
    requested: bool,
    /// The flush task waiting for a request.
    waker: Option<Waker>,
}

impl FlushSlot {
    /// Asks for a flush; the waker to wake once the state's lock is released (`None` when
    /// a flush is already asked for or the task is running).
    pub(crate) fn request(&mut self) -> Option<Waker> {
        self.requested = true;
        self.waker.take()
    }

    /// The task to wake when the connection closes, so that it ends.
    pub(crate) fn take_waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }
}

/// Runs until the connection closes: each request is served by one write of everything
/// queued (or, when the writer task is busy, by waking it).
pub(super) async fn run(shared: Arc<Shared>) {
    loop {
        let go = poll_fn(|cx| {
            let mut st = shared.lock();
            if st.closed.is_some() {
                return Poll::Ready(false);
            }
            if std::mem::take(&mut st.flush.requested) {
                return Poll::Ready(true);
            }
            match &mut st.flush.waker {
                Some(w) => w.clone_from(cx.waker()),
                None => st.flush.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
        if !go {
            return;
        }
        shared.write_now();
    }
}
