//! The sans-IO multiplexer: one [`Connection`] per WebSocket, driven by its caller.
//!
//! Inputs are `handle_*` (received bytes, elapsed time); outputs are `poll_*`
//! (bytes to transmit, events, next timer deadline), as in quinn-proto. There is
//! no IO and no clock here: time is always an argument, so two connections can
//! be run against each other in memory, deterministically.
//!
//! One concept per file: [`Connection`]'s state and accessors here; frame dispatch in
//! `dispatch`, timers in `timers`, the application's stream and datagram calls in `api`,
//! a stream's creation, credit and release in `lifecycle`, the control queue in
//! `control_queue`, the output scheduler in `scheduler` (writing into a [`Transmit`],
//! `transmit`), flow control in `flow`, stream-count limits in `limits`, and one stream's
//! state in `stream`.

mod api;
mod codes;
mod control_queue;
mod datagram;
mod dispatch;
mod event;
mod flow;
mod id_hash;
mod lifecycle;
#[cfg(test)]
mod limit_tests;
mod limits;
#[cfg(test)]
#[allow(unsafe_code)]
mod memory_tests;
mod rate;
mod scheduler;
#[cfg(test)]
mod send_budget_tests;
mod stream;
mod timers;
mod transmit;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::{Config, ConfigError, INITIAL_CONN_WINDOW, INITIAL_MAX_STREAMS};
use crate::frame::Frame;
use crate::{ConnectionError, FrameDecoder, Side, StreamId};
pub use api::ReadOutcome;
pub use codes::{goaway_code, reset_code};
use datagram::DatagramQueue;
pub use event::{Datagram, Event};
use flow::{RecvWindow, SendWindow};
pub use id_hash::{IdHash, IdHasher};
use limits::StreamLimits;
use rate::RateLimiter;
use stream::Stream;
pub use transmit::Transmit;

/// Received slices (each may keep a whole read buffer alive) held at once across the
/// streams of a connection; past it, payloads are copied. 128 covers a full 4 MiB window of
/// 32 KiB frames, so bulk transfers stay zero-copy, and bounds what slices can pin to 128
/// read buffers.
pub const MAX_SHARED_CHUNKS: usize = 128;

/// What one queued control frame costs beyond its bytes: its `Bytes` handle in the queue
/// (32 bytes, doubled for the queue's growth slack).
pub(super) const CONTROL_ENTRY_COST: usize = 64;

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Stream payload bytes put on the wire.
    pub stream_bytes_sent: u64,
    /// Stream payload bytes received.
    pub stream_bytes_received: u64,
    /// Streams opened by either side.
    pub streams_opened: u64,
    /// Datagrams put on the wire.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Outgoing datagrams evicted from a full queue.
    pub datagrams_dropped_send: u64,
    /// Incoming datagrams evicted because the application did not read them in time.
    pub datagrams_dropped_recv: u64,
    /// Outgoing datagrams refused because they exceed a frame.
    pub datagrams_oversize: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Stream resets this side generated (refused opens and the application's resets).
    pub resets_sent: u64,
    /// Times the reset cap ended the connection (0 or 1): it generated resets faster than
    /// the reset limit and sent GoAway.
    pub reset_cap_hits: u64,
    /// Times the control-queue cap ended the connection (0 or 1): control frames piled up
    /// past `max_control_queue` while the peer did not read, and it sent GoAway.
    pub control_queue_cap_hits: u64,
    /// Streams let go of with bytes still queued that were reset after
    /// [`Config::linger`] without progress (their peer granted no credit).
    pub lingered_out: u64,
}

/// One multiplexed connection (one WebSocket) as a state machine.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    config: Config,
    epoch: Instant,
    now: Instant,
    decoder: FrameDecoder,
    streams: HashMap<StreamId, Stream, IdHash>,
    scratch: BytesMut,

    limits: StreamLimits,

    /// Credit the peer granted on the connection.
    conn_send: SendWindow,
    /// What we granted the peer on the connection.
    conn_recv: RecvWindow,
    send_buffered_total: usize,
    /// Of `send_buffered_total`, the bytes beyond their stream's credit
    /// ([`stream::Stream::uncredited`]), bounded by [`Connection::uncredited_budget`].
    send_uncredited_total: usize,
    /// Received chunks, across streams, that are slices of received messages.
    recv_shared_chunks: usize,
    blocked_writers: Vec<StreamId>,

    control: VecDeque<Bytes>,
    /// Bytes in `control`, each frame counted with [`CONTROL_ENTRY_COST`].
    control_bytes: usize,
    /// The GoAway that explains a failure this side detected, sent after the failure.
    final_frame: Option<Bytes>,
    pending_heartbeat_ack: Option<u64>,
    schedule: VecDeque<StreamId>,
    datagrams_out: DatagramQueue,
    datagrams_in: DatagramQueue,
    events: VecDeque<Event>,
    single_frame_batches: bool,

    last_recv: Instant,
    next_heartbeat: Instant,
    /// When to look for let-go streams that made no progress for [`Config::linger`]
    /// (`None`: none can be lingering).
    linger_sweep: Option<Instant>,
    heartbeat_outstanding: Option<u64>,
    rtt: Option<Duration>,
    heartbeat_limit: RateLimiter,
    reset_limit: RateLimiter,
    local_reset_limit: RateLimiter,

    local_going_away: bool,
    peer_going_away: bool,
    error: Option<ConnectionError>,
    stats: Stats,
}

impl Connection {
    /// A connection for `side`, created at `now`. Queues the credit that raises the
    /// protocol's initial windows to `config`'s.
    pub fn new(side: Side, config: Config, now: Instant) -> Result<Connection, ConfigError> {
        config.validate()?;
        if config.max_concurrent_streams < INITIAL_MAX_STREAMS {
            return Err(ConfigError(
                "max_concurrent_streams below the protocol's initial stream limit",
            ));
        }
        let mut c = Connection {
            side,
            epoch: now,
            now,
            decoder: {
                // A stream's data is a byte sequence here: a frame straddling two received
                // buffers is handed on in parts rather than copied to assemble it.
                let mut d = FrameDecoder::new();
                d.data_in_parts(true);
                d
            },
            streams: HashMap::default(),
            scratch: BytesMut::new(),
            limits: StreamLimits::new(side, INITIAL_MAX_STREAMS, config.max_concurrent_streams),
            conn_send: SendWindow::new(INITIAL_CONN_WINDOW),
            conn_recv: RecvWindow::new(config.connection_window),
            send_buffered_total: 0,
            send_uncredited_total: 0,
            recv_shared_chunks: 0,
            blocked_writers: Vec::new(),
            control: VecDeque::new(),
            control_bytes: 0,
            final_frame: None,
            pending_heartbeat_ack: None,
            schedule: VecDeque::new(),
            datagrams_out: DatagramQueue::new(
                config.datagram_queue_len,
                config.datagram_queue_bytes,
            ),
            datagrams_in: DatagramQueue::new(
                config.datagram_queue_len,
                config.datagram_queue_bytes,
            ),
            events: VecDeque::new(),
            single_frame_batches: false,
            last_recv: now,
            next_heartbeat: now + config.heartbeat_interval,
            linger_sweep: None,
            heartbeat_outstanding: None,
            rtt: None,
            heartbeat_limit: RateLimiter::new(
                config.max_heartbeats_per_sec,
                config.heartbeat_burst,
            ),
            reset_limit: RateLimiter::new(config.max_resets_per_sec, config.reset_burst),
            local_reset_limit: RateLimiter::new(config.max_resets_per_sec, config.reset_burst),
            local_going_away: false,
            peer_going_away: false,
            error: None,
            stats: Stats::default(),
            config,
        };
        if c.config.connection_window > INITIAL_CONN_WINDOW {
            let increment = c.config.connection_window - INITIAL_CONN_WINDOW;
            c.queue(Frame::ConnCredit { increment });
        }
        if c.limits.local_max() > INITIAL_MAX_STREAMS {
            let count = c.limits.local_max();
            c.queue(Frame::MaxStreams { count });
        }
        Ok(c)
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Emit one frame per [`Connection::poll_transmit`] call: a zlayer-tunnel v1 peer
    /// decodes only the first frame of each WebSocket message.
    pub fn set_single_frame_batches(&mut self, on: bool) {
        self.single_frame_batches = on;
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.datagrams_dropped_send = self.datagrams_out.dropped;
        s.datagrams_dropped_recv = self.datagrams_in.dropped;
        s
    }

    /// Latest heartbeat round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Streams currently holding state.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes received and waiting for the application across all streams (bounded by the connection window).
    pub fn recv_buffered(&self) -> u64 {
        self.streams.values().map(|s| s.recv_buffered as u64).sum()
    }

    /// Memory the bytes received for the application may keep alive, an upper bound of
    /// the real one: compact buffers by capacity, each slice of a received message as the
    /// whole read buffer it may pin ([`Config::recv_pin`]), each chunk with its bookkeeping.
    pub fn recv_memory(&self) -> usize {
        let pin = self.config.recv_pin;
        self.streams.values().map(|s| s.recv_memory(pin)).sum()
    }

    /// Chunks held across all streams that are slices of received messages (at most
    /// `MAX_SHARED_CHUNKS`).
    pub fn recv_shared_chunks(&self) -> usize {
        self.recv_shared_chunks
    }

    /// Bytes of received datagrams waiting for [`Connection::recv_datagram`] (bounded by the datagram queue).
    pub fn datagrams_buffered(&self) -> usize {
        self.datagrams_in.bytes()
    }

    /// Bytes the application queued and that are not on the wire yet.
    pub fn send_buffered(&self) -> usize {
        self.send_buffered_total
    }

    /// Whether [`Connection::poll_transmit`] has anything to send now, so a driver wakes its
    /// writer only when there is work (reads usually release credit without a frame).
    pub fn wants_transmit(&self) -> bool {
        self.error.is_none()
            && (!self.control.is_empty()
                || self.pending_heartbeat_ack.is_some()
                || self.datagrams_out.front_len().is_some()
                || !self.schedule.is_empty())
    }

    /// Whether the peer announced going-away.
    pub fn peer_going_away(&self) -> bool {
        self.peer_going_away
    }

    /// The protocol error that ended this connection, if any.
    pub fn error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    pub(super) fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    pub(super) fn micros_since_epoch(&self) -> u64 {
        Connection::micros_between(self.epoch, self.now)
    }

    /// [`Connection::micros_since_epoch`] from the two fields, for a caller that holds a
    /// stream of the table mutably.
    pub(super) fn micros_between(epoch: Instant, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Encodes a frame we generated into the control queue (sent ahead of stream data).
    pub(super) fn push_event(&mut self, e: Event) -> Result<(), ConnectionError> {
        if self.events.len() >= self.config.max_pending_events {
            return Err(ConnectionError::EventBacklog(
                self.config.max_pending_events,
            ));
        }
        self.events.push_back(e);
        Ok(())
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
