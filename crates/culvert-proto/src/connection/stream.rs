//! Per-stream state: the send half, the receive half, and their flow-control windows.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::flow::{RecvWindow, SendWindow};

/// Received payloads shorter than this are copied into the stream's compact buffer rather
/// than kept as slices of the received message. A slice costs a 32-byte handle and keeps
/// its whole read buffer (256 KiB) alive, so 1-byte frames cost 32 times their size and can
/// pin buffers thousands of times larger; copying 1 KiB takes about as long as the
/// reference counting a slice needs (tens of nanoseconds), while payloads of bulk transfers
/// (frames of up to the 32 KiB quantum) stay zero-copy.
pub(crate) const COPY_BELOW: usize = 1024;
/// Capacity of a new compact buffer: four small payloads' worth of room at the least.
pub(crate) const COMPACT_CAPACITY: usize = 4096;
/// Chunks one stream holds at most; past it, payloads are copied onto its last chunk, so a
/// stream's bookkeeping stays bounded whatever the frame sizes.
pub(crate) const MAX_RECV_CHUNKS: usize = 64;
/// What one chunk costs beyond the memory it refers to: its 40-byte slot in the queue,
/// doubled for the queue's growth slack.
pub(crate) const CHUNK_OVERHEAD: usize = 80;

/// Received bytes waiting for the application.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// A slice of a received message, not copied (keeps that message's buffer alive).
    Shared(Bytes),
    /// A copied payload (a small one, or any once the connection's share of slices is used
    /// up) that arrived with nothing else queued, in an allocation of exactly its size: the
    /// common small message (a query, an answer) is read whole before the next arrives, and
    /// handing it out costs no second allocation (a compact buffer, frozen with room to
    /// spare, needs one for its shared header) and no page of room.
    Owned(Bytes),
    /// Small payloads copied together into a buffer of their own.
    Compact(BytesMut),
}

impl Chunk {
    /// Memory this chunk may keep alive: a slice counts as the whole buffer it may pin
    /// (`pin`), a compact buffer as its capacity.
    pub(crate) fn memory(&self, pin: usize) -> usize {
        CHUNK_OVERHEAD
            + match self {
                Chunk::Shared(b) => b.len().max(pin),
                Chunk::Owned(b) => b.len(),
                Chunk::Compact(m) => m.capacity(),
            }
    }
}

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
    pub(crate) send_credit: SendWindow,
    pub(crate) send_state: SendState,
    /// In the scheduler's round-robin queue.
    pub(crate) scheduled: bool,
    /// A write was cut short: announce `Writable` when room frees.
    pub(crate) write_blocked: bool,

    pub(crate) recv_buf: VecDeque<Chunk>,
    pub(crate) recv_buffered: usize,
    /// Chunks in `recv_buf` that are slices of received messages.
    pub(crate) shared_chunks: usize,
    /// What we granted the peer on this stream (auto-tuned).
    pub(crate) recv_flow: RecvWindow,
    pub(crate) recv_state: RecvState,
    /// Let go of by the application after it finished writing (`Connection::abandon`), with
    /// this code: no longer readable, what arrives is dropped, and once our FIN is out a
    /// peer that may still send (receive half open) is told the code.
    pub(crate) let_go: Option<LetGo>,
}

/// How a stream was let go of (`Connection::abandon`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LetGo {
    /// The code the peer is told once our FIN is out (or at the linger's end).
    pub(crate) code: u64,
    /// When it last sent bytes (or was let go): past [`crate::Config::linger`] without
    /// progress it is reset (`Connection::sweep_lingering`).
    pub(crate) last_progress: Instant,
}

impl Stream {
    /// A stream whose peer lets us send `send_window` bytes, granted `recv_window`.
    pub(crate) fn new(send_window: u64, recv_window: u64) -> Stream {
        Stream {
            send_buf: VecDeque::new(),
            send_buffered: 0,
            send_credit: SendWindow::new(send_window),
            send_state: SendState::Open,
            scheduled: false,
            write_blocked: false,
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            shared_chunks: 0,
            recv_flow: RecvWindow::new(recv_window),
            recv_state: RecvState::Open,
            let_go: None,
        }
    }

    /// Queued bytes beyond the credit the peer has granted: what this stream holds that
    /// cannot leave until its reader reads. Sending takes queue and credit down together,
    /// so only writes, credit and freeing the stream change it.
    pub(crate) fn uncredited(&self) -> usize {
        let credit = usize::try_from(self.send_credit.available()).unwrap_or(usize::MAX);
        self.send_buffered.saturating_sub(credit)
    }

    /// Bytes this stream may still queue within its credit.
    pub(crate) fn credited_room(&self) -> usize {
        let credit = usize::try_from(self.send_credit.available()).unwrap_or(usize::MAX);
        credit.saturating_sub(self.send_buffered)
    }

    /// Has bytes or a FIN to put on the wire, and window for the bytes.
    pub(crate) fn wants_send(&self) -> bool {
        (self.send_buffered > 0 && self.send_credit.available() > 0)
            || (self.send_buffered == 0 && self.send_state == SendState::FinQueued)
    }

    /// Buffers received bytes for the application: as a slice when `share` allows it and
    /// the payload is not small, else copied: into an exact-size chunk of its own when
    /// nothing else is queued, else onto the last compact buffer (or a new one).
    /// At [`MAX_RECV_CHUNKS`] everything is copied onto the last chunk.
    pub(crate) fn push_recv(&mut self, data: Bytes, share: bool) {
        let n = data.len();
        self.recv_buffered += n;
        let at_cap = self.recv_buf.len() >= MAX_RECV_CHUNKS;
        if share && n >= COPY_BELOW && !at_cap {
            self.shared_chunks += 1;
            self.recv_buf.push_back(Chunk::Shared(data));
            return;
        }
        match self.recv_buf.back_mut() {
            None => self
                .recv_buf
                .push_back(Chunk::Owned(Bytes::copy_from_slice(&data))),
            Some(Chunk::Compact(m)) if at_cap || m.capacity() - m.len() >= n => {
                if m.capacity() - m.len() < n {
                    // Grows by doubling, so appends stay amortized O(1).
                    m.reserve(n.max(m.len()));
                }
                m.extend_from_slice(&data);
            }
            Some(back @ Chunk::Owned(_)) => {
                // A second small payload before the first was read: both go into a compact
                // buffer, where the ones after them are appended.
                let Chunk::Owned(b) = std::mem::replace(back, Chunk::Compact(BytesMut::new()))
                else {
                    unreachable!("matched an owned chunk");
                };
                let mut m = BytesMut::with_capacity(COMPACT_CAPACITY.max(2 * (b.len() + n)));
                m.extend_from_slice(&b);
                m.extend_from_slice(&data);
                *back = Chunk::Compact(m);
            }
            Some(back @ Chunk::Shared(_)) if at_cap => {
                let Chunk::Shared(b) = std::mem::replace(back, Chunk::Compact(BytesMut::new()))
                else {
                    unreachable!("matched a shared chunk");
                };
                let mut m = BytesMut::with_capacity(2 * (b.len() + n));
                m.extend_from_slice(&b);
                m.extend_from_slice(&data);
                *back = Chunk::Compact(m);
                self.shared_chunks -= 1;
            }
            _ => {
                let mut m = BytesMut::with_capacity(COMPACT_CAPACITY.max(n));
                m.extend_from_slice(&data);
                self.recv_buf.push_back(Chunk::Compact(m));
            }
        }
    }

    /// Takes up to `max` (at least 1) buffered bytes from the front.
    pub(crate) fn pop_recv(&mut self, max: usize) -> Option<Bytes> {
        let max = max.max(1);
        let front = self.recv_buf.front_mut()?;
        let out = match front {
            Chunk::Shared(b) | Chunk::Owned(b) if b.len() > max => b.split_to(max),
            Chunk::Compact(m) if m.len() > max => m.split_to(max).freeze(),
            _ => match self.recv_buf.pop_front().expect("front exists") {
                Chunk::Shared(b) => {
                    self.shared_chunks -= 1;
                    b
                }
                Chunk::Owned(b) => b,
                Chunk::Compact(m) => m.freeze(),
            },
        };
        self.recv_buffered -= out.len();
        Some(out)
    }

    /// Drops every received byte not yet read; returns how many bytes, and how many of
    /// the dropped chunks were slices of received messages.
    pub(crate) fn discard_recv(&mut self) -> (usize, usize) {
        let dropped = (self.recv_buffered, self.shared_chunks);
        self.recv_buf.clear();
        self.recv_buffered = 0;
        self.shared_chunks = 0;
        dropped
    }

    /// Drops every queued byte not yet sent (the peer will not read them); returns how many
    /// bytes, and how many of them were beyond credit.
    pub(crate) fn discard_send(&mut self) -> (usize, usize) {
        let dropped = (self.send_buffered, self.uncredited());
        self.send_buf.clear();
        self.send_buffered = 0;
        dropped
    }

    /// Memory the received bytes may keep alive (see [`Chunk::memory`]).
    pub(crate) fn recv_memory(&self, pin: usize) -> usize {
        self.recv_buf.iter().map(|c| c.memory(pin)).sum()
    }

    /// Both directions are done: the state can be freed.
    pub(crate) fn is_closed(&self) -> bool {
        self.send_state == SendState::FinSent && self.recv_state == RecvState::FinRead
    }
}
