//! How many streams each side may open: the peer's limit on ours (raised by its
//! MaxStreams), ours on the peer's (raised as its streams close), and the sequence numbers
//! that tell a stream in flight from one never opened.

use crate::config::MAX_STREAM_COUNT;
use crate::{ConnectionError, Side, StreamId};

/// Stream-count bookkeeping of one connection; limits are cumulative sequence numbers, as
/// in QUIC's MAX_STREAMS.
#[derive(Debug)]
pub(crate) struct StreamLimits {
    side: Side,
    /// Our concurrency cap ([`crate::Config::max_concurrent_streams`]).
    cap: u64,
    /// Sequence number of the next stream we open.
    next_local_seq: u64,
    /// We may open streams with sequence numbers below this (the peer's grant).
    peer_max_streams: u64,
    /// An open failed on `peer_max_streams`: announce the next raise.
    blocked: bool,
    /// Sequence number the peer's next stream must carry.
    next_peer_seq: u64,
    /// The peer may open streams with sequence numbers below this (our grant).
    local_max_streams: u64,
    /// The peer's streams that have closed (or were refused), which our grant follows.
    peer_streams_closed: u64,
}

impl StreamLimits {
    /// Limits for `side`, starting from the protocol's initial limit `initial` on our opens
    /// and `cap` on the peer's.
    pub(crate) fn new(side: Side, initial: u64, cap: u64) -> StreamLimits {
        StreamLimits {
            side,
            cap,
            next_local_seq: 0,
            peer_max_streams: initial,
            blocked: false,
            next_peer_seq: 0,
            local_max_streams: cap,
            peer_streams_closed: 0,
        }
    }

    /// Our grant to the peer (what the start-up MaxStreams announces).
    pub(crate) fn local_max(&self) -> u64 {
        self.local_max_streams
    }

    /// Whether the peer's limit lets us open a stream now; when not, the next raise is
    /// announced.
    pub(crate) fn can_open_local(&mut self) -> bool {
        if self.next_local_seq >= self.peer_max_streams {
            self.blocked = true;
            return false;
        }
        true
    }

    /// The id of the next stream we open, or `None` (and blocked) at the peer's limit.
    pub(crate) fn open_local(&mut self) -> Option<StreamId> {
        if self.next_local_seq >= self.peer_max_streams {
            self.blocked = true;
            return None;
        }
        let id = StreamId::new(self.side, self.next_local_seq);
        self.next_local_seq += 1;
        Some(id)
    }

    /// Takes the peer's MaxStreams; `Ok(true)` when it unblocks an open that failed.
    pub(crate) fn on_max_streams(&mut self, count: u64) -> Result<bool, ConnectionError> {
        if count < self.peer_max_streams {
            return Err(ConnectionError::StreamLimitDecreased);
        }
        if count > MAX_STREAM_COUNT {
            return Err(ConnectionError::CreditOverflow);
        }
        let unblocked = count > self.peer_max_streams && self.blocked;
        if unblocked {
            self.blocked = false;
        }
        self.peer_max_streams = count;
        Ok(unblocked)
    }

    /// Checks a stream the peer opens: its side, that it is the next in sequence, and
    /// within our grant. Nothing changes until [`Self::accept_peer_open`].
    pub(crate) fn check_peer_open(&self, id: StreamId) -> Result<(), ConnectionError> {
        if id.initiator() == self.side {
            return Err(ConnectionError::WrongSideStream(id));
        }
        let seq = id.sequence();
        if seq < self.next_peer_seq {
            return Err(ConnectionError::ReusedStreamId(id));
        }
        if seq > self.next_peer_seq {
            return Err(ConnectionError::StreamIdGap {
                expected: StreamId::new(self.side.peer(), self.next_peer_seq),
                got: id,
            });
        }
        if seq >= self.local_max_streams {
            return Err(ConnectionError::StreamLimit(self.local_max_streams));
        }
        Ok(())
    }

    /// Takes the stream [`Self::check_peer_open`] accepted.
    pub(crate) fn accept_peer_open(&mut self) {
        self.next_peer_seq += 1;
    }

    /// Whether `id` was ever opened (a frame for a stream without state is then one in
    /// flight, not a violation).
    pub(crate) fn was_opened(&self, id: StreamId) -> bool {
        let next = if id.initiator() == self.side {
            self.next_local_seq
        } else {
            self.next_peer_seq
        };
        id.sequence() < next
    }

    /// A stream of the peer's closed: the new grant to announce once it has risen by 1/8
    /// of the cap, so MaxStreams is not sent for every stream.
    pub(crate) fn peer_stream_closed(&mut self) -> Option<u64> {
        self.peer_streams_closed += 1;
        let target = (self.peer_streams_closed + self.cap).min(MAX_STREAM_COUNT);
        if target - self.local_max_streams >= (self.cap / 8).max(1) {
            self.local_max_streams = target;
            return Some(target);
        }
        None
    }
}
