//! A stream's life in the connection: its state created on open, the credit its reads
//! return to the peer (through the flow controllers in `flow`), and its state freed, with
//! its buffered bytes handed back to the connection's budgets.

use super::stream::Stream;
use super::{Connection, Event};
use crate::config::INITIAL_STREAM_WINDOW;
use crate::frame::Frame;
use crate::StreamId;

/// Room a blocked writer must have before it is woken (less with small buffers): 64 KiB is
/// a relay's worthwhile write, and a stream whose peer reads everything always gets that
/// much credit back, since a peer holds back less than a quarter of its 256 KiB (or
/// larger) window and grants the rest; a larger figure could leave a writer asleep while
/// stuck streams hold the connection's budget for bytes beyond credit.
const WAKE_ROOM: usize = 64 * 1024;

impl Connection {
    /// Creates stream state; both directions start at the protocol's initial window and
    /// our side immediately grants the rest of its configured window.
    pub(super) fn insert_stream(&mut self, id: StreamId) {
        self.streams.insert(
            id,
            Stream::new(INITIAL_STREAM_WINDOW, self.config.stream_window),
        );
        self.stats.streams_opened += 1;
        if self.config.stream_window > INITIAL_STREAM_WINDOW {
            let increment = self.config.stream_window - INITIAL_STREAM_WINDOW;
            self.queue(Frame::StreamCredit { id, increment });
        }
    }

    /// Grants stream credit once enough was read, doubling the window (up to its ceiling)
    /// when the last window was used within two round trips.
    pub(super) fn maybe_stream_credit(&mut self, id: StreamId) {
        let divisor = self.config.credit_divisor;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // Most reads grant nothing: no clock arithmetic for them.
        if !s.recv_flow.credit_due(divisor) {
            return;
        }
        let now_us = Connection::micros_between(self.epoch, self.now);
        let rtt_us = self
            .rtt
            .map_or(100_000, |r| r.as_micros() as u64)
            .max(1_000);
        // A stream may grow to a quarter of the connection window at most: one whose reader
        // stops (a backend that never reads) then leaves three quarters to the others.
        let max_window = self
            .config
            .max_stream_window
            .min(self.config.connection_window / 4)
            .max(self.config.stream_window);
        if let Some(increment) = s
            .recv_flow
            .take_credit_tuned(divisor, now_us, rtt_us, max_window)
        {
            self.queue(Frame::StreamCredit { id, increment });
        }
    }

    pub(super) fn release_conn_credit(&mut self, n: u64) {
        self.conn_recv.release(n);
        if let Some(increment) = self.conn_recv.take_credit(self.config.credit_divisor) {
            self.queue(Frame::ConnCredit { increment });
        }
    }

    /// Drops a stream's state, returning its buffered bytes to the budgets.
    pub(super) fn free_stream(&mut self, id: StreamId) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        self.send_buffered_total -= s.send_buffered;
        self.send_uncredited_total -= s.uncredited();
        self.recv_shared_chunks -= s.shared_chunks;
        if s.recv_buffered > 0 {
            self.release_conn_credit(s.recv_buffered as u64);
        }
        if id.initiator() != self.side {
            self.peer_stream_closed();
        }
        if s.send_buffered > 0 {
            self.wake_writers();
        }
    }

    /// Raises the peer's stream limit as its streams close, in steps of 1/8 of the cap.
    pub(super) fn peer_stream_closed(&mut self) {
        if let Some(count) = self.limits.peer_stream_closed() {
            self.queue(Frame::MaxStreams { count });
        }
    }

    /// Tells blocked writers they may write again: each once its own queue is down to half
    /// of [`crate::Config::stream_send_buffer`] and it may queue [`WAKE_ROOM`]
    /// ([`Connection::send_room`], which counts its credit), and only while the connection
    /// has a quarter of its send buffer free, so a writer is not woken for a sliver of room.
    /// The room is what counts, not the queued total: a stuck stream (no credit from its
    /// reader) keeps its whole queue, and with a 2 MiB stream queue in a 3 MiB connection
    /// buffer a "total at most half" rule never woke anyone again.
    pub(super) fn wake_writers(&mut self) {
        let room = self
            .config
            .connection_send_buffer
            .saturating_sub(self.send_buffered_total);
        if self.blocked_writers.is_empty() || room < self.config.connection_send_buffer / 4 {
            return;
        }
        let half = self.config.stream_send_buffer / 2;
        let least = WAKE_ROOM
            .min(self.config.stream_send_buffer / 8)
            .min(self.config.connection_send_buffer / 4)
            .max(1);
        let mut i = 0;
        while i < self.blocked_writers.len() {
            let id = self.blocked_writers[i];
            let room = self.streams.get(&id).map(|s| self.room_of(s));
            match self.streams.get_mut(&id) {
                Some(s) if s.send_buffered > half || room < Some(least) => i += 1,
                Some(s) => {
                    s.write_blocked = false;
                    self.blocked_writers.swap_remove(i);
                    self.events.push_back(Event::Writable(id));
                }
                None => {
                    self.blocked_writers.swap_remove(i);
                }
            }
        }
    }
}
