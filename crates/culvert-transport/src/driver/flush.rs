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
//! On a runtime with more than one thread (the default on machines with more than two
//! CPUs) the task woken by the first sender would run before the others had queued
//! anything (from the waking thread's LIFO slot, or on another thread at once), so there it
//! first yields, which tokio defers to the end of its thread's turn: eight streams sending
//! in twenty rounds took 19-31 writes instead of 160 (`tests/small_sends.rs`). Through a
//! tunnel with two threads per process, eight connections' round trips made 1.75 `send`s
//! each per process instead of 2.0, and one more non-blocking `epoll_wait` (the yield
//! polls the driver); CPU per round trip fell 11 % in the clearest sitting (BENCHMARKS.md).
//!
//! A burst is bounded without a timer: once [`DEFER_BELOW`] bytes are queued, the next
//! send writes through everything queued. A connection with one stream open writes
//! through at once as before: no other stream's frame can share its write, and the hop
//! through this task cost one round trip over one connection 442 user-space instructions
//! in each tunnel process (`scripts/rr-instructions.sh`, 15,257 before; with one stream the
//! choice now costs 13, taken under the caller's lock). Nor does a stream that has made
//! the last [`ALONE_AFTER`] sends defer: the other streams are open but idle (a pool's
//! spare connections), so there is nothing to batch either (+412 instructions per round
//! trip per process with four idle streams beside the busy one, before this rule).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use culvert_proto::StreamId;

use super::Shared;

/// Application bytes queued and not on the wire (across the connection's streams) below
/// which a send leaves the write to the flush task. 16 KiB: far above an interactive
/// message (a database query, a keystroke), far below a bulk stream's relay read.
pub(crate) const DEFER_BELOW: usize = 16 * 1024;

/// Sends in a row by one stream after which its small sends write through: the other
/// streams have been idle that long. Four: a batch lost costs a system call, a hop
/// taken for nothing a few hundred instructions, so the rule waits for a clear run.
pub(crate) const ALONE_AFTER: u32 = 4;

/// The flush task's half of the connection state.
#[derive(Default)]
pub(crate) struct FlushSlot {
    /// A flush was asked for and the task has not yet taken it.
    requested: bool,
    /// The flush task waiting for a request.
    waker: Option<Waker>,
    /// The stream whose send came last.
    last_sender: Option<StreamId>,
    /// Sends in a row by `last_sender`, up to `ALONE_AFTER + 1`.
    run: u32,
}

impl FlushSlot {
    /// Records a send by `sender` (`None`: the connection's own, e.g. window updates the
    /// reader releases) and says whether another stream sent recently, i.e. whether a
    /// deferred write may carry more than this sender's frames.
    pub(crate) fn others_sending(&mut self, sender: Option<StreamId>) -> bool {
        if let Some(id) = sender {
            if self.last_sender == Some(id) {
                self.run = (self.run + 1).min(ALONE_AFTER + 1);
            } else {
                self.last_sender = Some(id);
                self.run = 1;
            }
        }
        self.run <= ALONE_AFTER
    }

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
/// queued (or, when the writer task is busy, by waking it); on a runtime with more than
/// one thread, after letting the rest of this thread's turn run (see the module's doc).
pub(super) async fn run(shared: Arc<Shared>) {
    let yield_first = tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::CurrentThread;
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
        if yield_first {
            tokio::task::yield_now().await;
        }
        shared.write_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Option<StreamId> {
        Some(StreamId(n))
    }

    #[test]
    fn streams_taking_turns_keep_deferring() {
        let mut slot = FlushSlot::default();
        for round in 0..20 {
            assert!(slot.others_sending(id(round % 3)), "round {round}");
        }
    }

    #[test]
    fn a_stream_sending_alone_stops_deferring_after_its_run() {
        let mut slot = FlushSlot::default();
        for n in 1..=ALONE_AFTER {
            assert!(slot.others_sending(id(4)), "send {n} of the run");
        }
        for _ in 0..100 {
            assert!(!slot.others_sending(id(4)));
        }
        // The connection's own frames (window updates) follow the run, without ending it.
        assert!(!slot.others_sending(None));
        // Another stream's send ends the run.
        assert!(slot.others_sending(id(6)));
        assert!(slot.others_sending(id(4)));
    }
}
