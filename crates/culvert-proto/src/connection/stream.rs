//! Per-stream state: the send half, the receive half, and their flow-control windows.

use std::collections::VecDeque;

use bytes::Bytes;

/// Where the sending direction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    /// Writes accepted.
    Open,
    /// `finish` called; FIN goes out once the buffer drains.
    FinQueued,
    /// FIN is on the wire: this direction is done.
    FinSent,
}

/// Where the receiving direction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvState {
    /// Bytes may still arrive.
    Open,
    /// FIN received; buffered bytes remain to be read.
    FinReceived,
    /// FIN received and everything read: this direction is done.
    FinRead,
}

/// One stream of a connection.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) send_buf: VecDeque<Bytes>,
    pub(crate) send_buffered: usize,
    /// Bytes the peer still lets us send on this stream.
    pub(crate) send_window: u64,
    pub(crate) send_state: SendState,
    /// In the scheduler's round-robin queue.
    pub(crate) scheduled: bool,
    /// A write was cut short: announce `Writable` when room frees.
    pub(crate) write_blocked: bool,

    pub(crate) recv_buf: VecDeque<Bytes>,
    pub(crate) recv_buffered: usize,
    /// Current receive window size (auto-tuned).
    pub(crate) recv_window: u64,
    /// Bytes the peer may still send before exceeding what we granted.
    pub(crate) recv_remaining: u64,
    /// Bytes read by the application and not yet granted back.
    pub(crate) recv_pending_credit: u64,
    pub(crate) recv_state: RecvState,
    /// When we last sent credit (micros since the connection's epoch), for auto-tuning.
    pub(crate) last_credit_us: Option<u64>,
}

impl Stream {
    pub(crate) fn new(send_window: u64, recv_granted: u64, recv_window: u64) -> Stream {
        Stream {
            send_buf: VecDeque::new(),
            send_buffered: 0,
            send_window,
            send_state: SendState::Open,
            scheduled: false,
            write_blocked: false,
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            recv_window,
            recv_remaining: recv_granted,
            recv_pending_credit: 0,
            recv_state: RecvState::Open,
            last_credit_us: None,
        }
    }

    /// Has bytes or a FIN to put on the wire, and window for the bytes.
    pub(crate) fn wants_send(&self) -> bool {
        (self.send_buffered > 0 && self.send_window > 0)
            || (self.send_buffered == 0 && self.send_state == SendState::FinQueued)
    }

    /// Both directions are done: the state can be freed.
    pub(crate) fn is_closed(&self) -> bool {
        self.send_state == SendState::FinSent && self.recv_state == RecvState::FinRead
    }
}
