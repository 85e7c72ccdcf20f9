//! The sans-IO multiplexer: one [`Connection`] per WebSocket, driven by its caller.
//!
//! Inputs are `handle_*` (received bytes, elapsed time); outputs are `poll_*`
//! (bytes to transmit, events, next timer deadline), as in quinn-proto. There is
//! no IO and no clock here: time is always an argument, so two connections can
//! be run against each other in memory, deterministically.

mod datagram;
mod event;
mod id_hash;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
#[allow(unsafe_code)]
mod memory_tests;
mod rate;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::{
    Config, ConfigError, INITIAL_CONN_WINDOW, INITIAL_MAX_STREAMS, INITIAL_STREAM_WINDOW,
    MAX_STREAM_COUNT, MAX_WINDOW,
};
use crate::frame::{data_overhead, Frame, MAX_TARGET_LEN};
use crate::header::{FrameType, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::{varint, ConnectionError, Control, FrameDecoder, Side, StreamError, StreamId};
use datagram::DatagramQueue;
pub use event::{Datagram, Event};
use id_hash::IdHash;
use rate::RateLimiter;
use stream::{RecvState, SendState, Stream};

/// Reset codes carried by StreamReset (see PROTOCOL.md).
pub mod reset_code {
    /// The application abandoned the stream.
    pub const CANCEL: u64 = 0;
    /// The receiver would not take the stream (going away, or over a limit).
    pub const REFUSED: u64 = 1;
    /// The target of the stream could not be reached.
    pub const CONNECT_FAILED: u64 = 2;
    /// The stream's transport failed (for example its WebSocket died).
    pub const INTERNAL: u64 = 3;
    /// The opener's token may not reach the target, or the target is outside the
    /// receiver's allow-list.
    pub const NOT_ALLOWED: u64 = 4;
    /// No service of that name is registered.
    pub const UNKNOWN_TARGET: u64 = 5;
    /// The service exists but its agent has no live connection.
    pub const UNAVAILABLE: u64 = 6;

    /// A short human reason for `code`, for error messages and logs.
    pub fn describe(code: u64) -> &'static str {
        match code {
            CANCEL => "cancelled",
            REFUSED => "refused",
            CONNECT_FAILED => "target could not be reached",
            INTERNAL => "transport failed",
            NOT_ALLOWED => "not allowed",
            UNKNOWN_TARGET => "no such service",
            UNAVAILABLE => "service unavailable (its agent is offline)",
            _ => "unknown reason",
        }
    }
}

/// Codes carried by GoAway (see PROTOCOL.md §15.2).
pub mod goaway_code {
    /// An orderly shutdown.
    pub const NO_ERROR: u64 = 0;
    /// The peer made this side exceed a limit (its control queue, the resets it generates);
    /// the connection closes after this GoAway (HTTP/2's ENHANCE_YOUR_CALM).
    pub const ENHANCE_YOUR_CALM: u64 = 1;
}

/// Received slices (each may keep a whole read buffer alive) held at once across the
/// streams of a connection; past it, payloads are copied. 128 covers a full 4 MiB window of
/// 32 KiB frames, so bulk transfers stay zero-copy, and bounds what slices can pin to 128
/// read buffers.
pub const MAX_SHARED_CHUNKS: usize = 128;

/// What one queued control frame costs beyond its bytes: its `Bytes` handle in the queue
/// (32 bytes, doubled for the queue's growth slack).
const CONTROL_ENTRY_COST: usize = 64;

/// Result of [`Connection::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The next bytes, in order: a slice of the received frame, not copied, or of the
    /// compact buffer small payloads were copied into.
    Data(Bytes),
    /// Nothing buffered yet; wait for [`Event::Readable`] or [`Event::Finished`].
    WouldBlock,
    /// The peer finished and every byte was read.
    Eof,
}

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

    next_local_seq: u64,
    peer_max_streams: u64,
    streams_blocked: bool,
    next_peer_seq: u64,
    local_max_streams: u64,
    peer_streams_closed: u64,

    conn_send_window: u64,
    conn_recv_remaining: u64,
    conn_recv_pending_credit: u64,
    send_buffered_total: usize,
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
            decoder: FrameDecoder::new(),
            streams: HashMap::default(),
            scratch: BytesMut::new(),
            next_local_seq: 0,
            peer_max_streams: INITIAL_MAX_STREAMS,
            streams_blocked: false,
            next_peer_seq: 0,
            local_max_streams: config.max_concurrent_streams,
            peer_streams_closed: 0,
            conn_send_window: INITIAL_CONN_WINDOW,
            conn_recv_remaining: config.connection_window,
            conn_recv_pending_credit: 0,
            send_buffered_total: 0,
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
        if c.local_max_streams > INITIAL_MAX_STREAMS {
            let count = c.local_max_streams;
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

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn micros_since_epoch(&self) -> u64 {
        u64::try_from(self.now.saturating_duration_since(self.epoch).as_micros())
            .unwrap_or(u64::MAX)
    }

    /// Encodes a frame we generated into the control queue (sent ahead of stream data).
    fn queue(&mut self, frame: Frame) {
        match frame.encode(&mut self.scratch) {
            Ok(()) => {
                let f = self.scratch.split().freeze();
                self.push_control(f, false);
            }
            Err(e) => tracing::error!(error = %e, "dropping unencodable frame"),
        }
    }

    /// Queues an encoded control frame, failing the connection (with GoAway) when the
    /// queue passes its byte cap: a peer that does not read cannot grow it further.
    fn push_control(&mut self, f: Bytes, front: bool) {
        if self.error.is_some() {
            return;
        }
        self.control_bytes += f.len() + CONTROL_ENTRY_COST;
        if front {
            self.control.push_front(f);
        } else {
            self.control.push_back(f);
        }
        if self.control_bytes > self.config.max_control_queue {
            self.stats.control_queue_cap_hits += 1;
            self.fail_calm(ConnectionError::ControlQueueFull(
                self.config.max_control_queue,
            ));
        }
    }

    /// Takes the next control frame off the queue.
    fn pop_control(&mut self) -> Option<Bytes> {
        let f = self.control.pop_front()?;
        self.control_bytes -= f.len() + CONTROL_ENTRY_COST;
        Some(f)
    }

    /// Bytes of control frames queued and not yet on the wire, each counted with its
    /// bookkeeping: what [`Config::max_control_queue`] caps.
    pub fn control_queued(&self) -> usize {
        self.control_bytes
    }

    /// Fails the connection for a limit the peer made this side exceed: everything queued
    /// is dropped, and a GoAway (`ENHANCE_YOUR_CALM`, with the reason) is kept for
    /// [`Connection::take_final_frame`], as h2 does.
    fn fail_calm(&mut self, e: ConnectionError) {
        if self.error.is_some() {
            return;
        }
        tracing::debug!(error = %e, "limit exceeded; going away");
        if !self.single_frame_batches {
            let mut reason = e.to_string();
            reason.truncate(1024);
            let mut b = BytesMut::new();
            if (Frame::GoAway {
                code: goaway_code::ENHANCE_YOUR_CALM,
                reason,
            })
            .encode(&mut b)
            .is_ok()
            {
                self.final_frame = Some(b.freeze());
            }
        }
        self.control = VecDeque::new();
        self.control_bytes = 0;
        self.local_going_away = true;
        self.error = Some(e);
    }

    /// The GoAway explaining why this side failed the connection (a limit the peer made it
    /// exceed), to write before closing the transport; `None` afterwards or for other errors.
    pub fn take_final_frame(&mut self) -> Option<Bytes> {
        self.final_frame.take()
    }

    /// Whether a GoAway explaining a failure waits for [`Connection::take_final_frame`].
    pub fn has_final_frame(&self) -> bool {
        self.final_frame.is_some()
    }

    /// Counts a reset this side generates; `false` (and the connection failed with GoAway)
    /// when they come faster than the reset limit.
    fn allow_local_reset(&mut self) -> bool {
        if self.local_reset_limit.allow(self.now) {
            self.stats.resets_sent += 1;
            return true;
        }
        self.stats.reset_cap_hits += 1;
        self.fail_calm(ConnectionError::LocalResetFlood(
            self.config.max_resets_per_sec,
        ));
        false
    }

    fn push_event(&mut self, e: Event) -> Result<(), ConnectionError> {
        if self.events.len() >= self.config.max_pending_events {
            return Err(ConnectionError::EventBacklog(
                self.config.max_pending_events,
            ));
        }
        self.events.push_back(e);
        Ok(())
    }

    // ----- inputs -------------------------------------------------------------------------

    /// Feeds bytes received from the peer (any split of the frame stream) at time `now`.
    ///
    /// An error is a protocol violation: close the transport, optionally after sending
    /// `Disconnect` with the error text. The connection stays failed.
    pub fn handle_bytes(&mut self, now: Instant, bytes: Bytes) -> Result<(), ConnectionError> {
        self.advance(now);
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.last_recv = self.now;
        self.decoder.push(bytes);
        loop {
            let r = match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.stats.frames_received += 1;
                    // A limit of ours the frame made us exceed fails the connection too.
                    self.handle_frame(frame)
                        .and_then(|()| self.error.clone().map_or(Ok(()), Err))
                }
                Ok(None) => return Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "protocol violation by peer");
                self.error = Some(e.clone());
                return Err(e);
            }
        }
    }

    /// Advances timers: sends heartbeats when due and fails the connection when the peer fell silent.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnectionError> {
        self.advance(now);
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.now.saturating_duration_since(self.last_recv) >= self.config.idle_timeout {
            self.error = Some(ConnectionError::IdleTimeout);
            return Err(ConnectionError::IdleTimeout);
        }
        if self.now >= self.next_heartbeat {
            let timestamp = self.micros_since_epoch().max(1);
            self.heartbeat_outstanding = Some(timestamp);
            self.queue(Frame::Control(Control::Heartbeat { timestamp }));
            self.next_heartbeat = self.now + self.config.heartbeat_interval;
        }
        Ok(())
    }

    /// Records a sign of life that carries no frame (a WebSocket ping or pong), so a peer
    /// that answers only at the transport level is not counted silent.
    pub fn handle_keepalive(&mut self, now: Instant) {
        self.advance(now);
        self.last_recv = self.now;
    }

    /// How long the peer has been silent (no bytes of any kind) at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_recv)
    }

    /// Silence after which a connection with a heartbeat unanswered is suspect: one
    /// heartbeat interval (the peer's own heartbeats arrive at least that often) plus half
    /// an interval of margin for a busy peer, and never less than 250 ms of margin.
    pub fn suspect_after(&self) -> Duration {
        let i = self.config.heartbeat_interval;
        i + (i / 2).max(Duration::from_millis(250))
    }

    /// Whether the peer has shown no sign of life for [`Connection::suspect_after`] while a
    /// heartbeat of ours is unanswered: new streams should go to another connection. A
    /// failed connection is always suspect.
    pub fn is_suspect(&self, now: Instant) -> bool {
        self.error.is_some()
            || (self.heartbeat_outstanding.is_some() && self.silent_for(now) > self.suspect_after())
    }

    /// Makes the next heartbeat due at once (at the next [`Connection::handle_timeout`]), so
    /// a fresh connection learns its round-trip time without waiting a whole interval.
    pub fn heartbeat_now(&mut self, now: Instant) {
        self.next_heartbeat = self.next_heartbeat.min(now);
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        Some(
            self.next_heartbeat
                .min(self.last_recv + self.config.idle_timeout),
        )
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        match frame {
            Frame::Control(Control::Heartbeat { timestamp }) => {
                if !self.heartbeat_limit.allow(self.now) {
                    return Err(ConnectionError::HeartbeatFlood);
                }
                // Coalesced: only the latest unanswered heartbeat is echoed.
                self.pending_heartbeat_ack = Some(timestamp);
            }
            Frame::Control(Control::HeartbeatAck { timestamp }) => {
                if self.heartbeat_outstanding == Some(timestamp) {
                    self.heartbeat_outstanding = None;
                    let rtt =
                        Duration::from_micros(self.micros_since_epoch().saturating_sub(timestamp));
                    self.rtt = Some(rtt);
                    self.push_event(Event::HeartbeatRtt(rtt))?;
                }
            }
            Frame::Control(c) => self.push_event(Event::Control(c))?,
            Frame::StreamOpen { id, target } => self.on_open(id, target)?,
            Frame::StreamData { id, data } => self.on_data(id, data)?,
            Frame::StreamFin { id } => match self.streams.get_mut(&id) {
                Some(s) => {
                    if s.recv_state != RecvState::Open {
                        return Err(ConnectionError::DataAfterFin(id));
                    }
                    s.recv_state = RecvState::FinReceived;
                    self.push_event(Event::Finished(id))?;
                }
                None => self.check_was_opened(id)?,
            },
            Frame::StreamReset { id, code } => {
                if !self.reset_limit.allow(self.now) {
                    return Err(ConnectionError::ResetFlood);
                }
                if self.streams.contains_key(&id) {
                    self.free_stream(id);
                    self.push_event(Event::StreamReset { id, code })?;
                } else {
                    self.check_was_opened(id)?;
                }
            }
            Frame::StreamCredit { id, increment } => {
                if increment == 0 {
                    return Err(ConnectionError::ZeroCredit);
                }
                match self.streams.get_mut(&id) {
                    Some(s) => {
                        s.send_window = s
                            .send_window
                            .checked_add(increment)
                            .filter(|w| *w <= MAX_WINDOW)
                            .ok_or(ConnectionError::CreditOverflow)?;
                        if s.wants_send() && !s.scheduled {
                            s.scheduled = true;
                            self.schedule.push_back(id);
                        }
                    }
                    None => self.check_was_opened(id)?,
                }
            }
            Frame::ConnCredit { increment } => {
                if increment == 0 {
                    return Err(ConnectionError::ZeroCredit);
                }
                self.conn_send_window = self
                    .conn_send_window
                    .checked_add(increment)
                    .filter(|w| *w <= MAX_WINDOW)
                    .ok_or(ConnectionError::CreditOverflow)?;
            }
            Frame::MaxStreams { count } => {
                if count < self.peer_max_streams {
                    return Err(ConnectionError::StreamLimitDecreased);
                }
                if count > MAX_STREAM_COUNT {
                    return Err(ConnectionError::CreditOverflow);
                }
                if count > self.peer_max_streams && self.streams_blocked {
                    self.streams_blocked = false;
                    self.push_event(Event::StreamsAvailable)?;
                }
                self.peer_max_streams = count;
            }
            Frame::Datagram { flow, data } => {
                self.stats.datagrams_received += 1;
                // As for stream data: a small slice would pin its whole read buffer.
                let data = if data.len() < stream::COPY_BELOW {
                    Bytes::copy_from_slice(&data)
                } else {
                    data
                };
                if self.datagrams_in.push(flow, data) {
                    self.push_event(Event::DatagramReadable)?;
                }
            }
            Frame::GoAway { code, reason } => {
                if !self.peer_going_away {
                    self.peer_going_away = true;
                    self.push_event(Event::GoingAway { code, reason })?;
                }
            }
        }
        Ok(())
    }

    /// A frame named a stream we hold no state for: fine if it was opened and has closed
    /// (frames in flight), a violation if it was never opened.
    fn check_was_opened(&self, id: StreamId) -> Result<(), ConnectionError> {
        let next = if id.initiator() == self.side {
            self.next_local_seq
        } else {
            self.next_peer_seq
        };
        if id.sequence() < next {
            Ok(())
        } else {
            Err(ConnectionError::UnopenedStream(id))
        }
    }

    fn on_open(&mut self, id: StreamId, target: String) -> Result<(), ConnectionError> {
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
        if self.peer_going_away {
            return Err(ConnectionError::OpenAfterGoAway);
        }
        self.next_peer_seq += 1;
        if self.local_going_away {
            // We said we take no new streams: refuse it; its stream-limit slot returns at once.
            // Each refusal queues a frame, so refusals share the reset flood limit.
            if !self.reset_limit.allow(self.now) {
                return Err(ConnectionError::ResetFlood);
            }
            if !self.allow_local_reset() {
                return Ok(());
            }
            self.queue(Frame::StreamReset {
                id,
                code: reset_code::REFUSED,
            });
            self.peer_streams_closed += 1;
            self.maybe_grant_streams();
            return Ok(());
        }
        self.insert_stream(id);
        self.push_event(Event::StreamOpened { id, target })
    }

    /// Creates stream state; both directions start at the protocol's initial window and
    /// our side immediately grants the rest of its configured window.
    fn insert_stream(&mut self, id: StreamId) {
        self.streams.insert(
            id,
            Stream::new(
                INITIAL_STREAM_WINDOW,
                self.config.stream_window,
                self.config.stream_window,
            ),
        );
        self.stats.streams_opened += 1;
        if self.config.stream_window > INITIAL_STREAM_WINDOW {
            let increment = self.config.stream_window - INITIAL_STREAM_WINDOW;
            self.queue(Frame::StreamCredit { id, increment });
        }
    }

    fn on_data(&mut self, id: StreamId, data: Bytes) -> Result<(), ConnectionError> {
        let len = data.len() as u64;
        if len == 0 {
            return Err(ConnectionError::EmptyData(id));
        }
        if len > self.conn_recv_remaining {
            return Err(ConnectionError::ConnectionWindowExceeded);
        }
        self.conn_recv_remaining -= len;
        self.stats.stream_bytes_received += len;
        let Some(s) = self.streams.get_mut(&id) else {
            self.check_was_opened(id)?;
            // In flight to a stream that has closed: discard, but return the connection credit.
            self.release_conn_credit(len);
            return Ok(());
        };
        if s.recv_state != RecvState::Open {
            return Err(ConnectionError::DataAfterFin(id));
        }
        if len > s.recv_remaining {
            return Err(ConnectionError::StreamWindowExceeded(id));
        }
        s.recv_remaining -= len;
        let was_empty = s.recv_buffered == 0;
        // Slices pin read buffers: past the connection's share of them, payloads are copied.
        let share = self.recv_shared_chunks < MAX_SHARED_CHUNKS;
        let before = s.shared_chunks;
        s.push_recv(data, share);
        self.recv_shared_chunks = self.recv_shared_chunks + s.shared_chunks - before;
        if was_empty {
            self.push_event(Event::Readable(id))?;
        }
        Ok(())
    }

    // ----- stream API ---------------------------------------------------------------------

    /// Opens a stream towards `target`. Data may be written at once: it follows the open
    /// within the initial window, with no round trip.
    pub fn open_stream(&mut self, target: &str) -> Result<StreamId, StreamError> {
        if self.error.is_some() || self.peer_going_away || self.local_going_away {
            return Err(StreamError::Closing);
        }
        if target.len() > MAX_TARGET_LEN {
            return Err(StreamError::TargetTooLong(target.len()));
        }
        if self.next_local_seq >= self.peer_max_streams {
            self.streams_blocked = true;
            return Err(StreamError::StreamsExhausted);
        }
        let id = StreamId::new(self.side, self.next_local_seq);
        self.next_local_seq += 1;
        self.queue(Frame::StreamOpen {
            id,
            target: target.to_owned(),
        });
        self.insert_stream(id);
        Ok(id)
    }

    /// Queues bytes on a stream; returns how many were accepted (the rest when
    /// [`Event::Writable`] arrives). Never copies: `data` is sliced.
    pub fn write(&mut self, id: StreamId, data: Bytes) -> Result<usize, StreamError> {
        let stream_cap = self.config.stream_send_buffer;
        let conn_room = self
            .config
            .connection_send_buffer
            .saturating_sub(self.send_buffered_total);
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        if s.send_state != SendState::Open {
            return Err(StreamError::ClosedForWriting(id));
        }
        let room = stream_cap.saturating_sub(s.send_buffered).min(conn_room);
        let n = data.len().min(room);
        if n < data.len() && !s.write_blocked {
            s.write_blocked = true;
            self.blocked_writers.push(id);
        }
        if n == 0 {
            return Ok(0);
        }
        s.send_buf.push_back(data.slice(..n));
        s.send_buffered += n;
        self.send_buffered_total += n;
        if s.wants_send() && !s.scheduled {
            s.scheduled = true;
            self.schedule.push_back(id);
        }
        Ok(n)
    }

    /// Finishes our direction: a FIN follows the last queued byte. Reading goes on.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        if s.send_state != SendState::Open {
            return Err(StreamError::ClosedForWriting(id));
        }
        s.send_state = SendState::FinQueued;
        if s.wants_send() && !s.scheduled {
            s.scheduled = true;
            self.schedule.push_back(id);
        }
        Ok(())
    }

    /// Aborts both directions; queued bytes are discarded and the peer is told `code`.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        if !self.streams.contains_key(&id) {
            return Err(StreamError::UnknownStream(id));
        }
        self.free_stream(id);
        if self.error.is_some() || !self.allow_local_reset() {
            return Ok(());
        }
        let code = code.min(varint::MAX);
        self.queue(Frame::StreamReset { id, code });
        Ok(())
    }

    /// Reads up to `max` bytes from a stream, releasing flow-control credit as it goes.
    /// After [`ReadOutcome::Eof`] with our direction finished too, the stream is gone.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<ReadOutcome, StreamError> {
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        let before = s.shared_chunks;
        let Some(chunk) = s.pop_recv(max) else {
            return Ok(match s.recv_state {
                RecvState::Open => ReadOutcome::WouldBlock,
                RecvState::FinReceived | RecvState::FinRead => {
                    s.recv_state = RecvState::FinRead;
                    if s.is_closed() {
                        self.free_stream(id);
                    }
                    ReadOutcome::Eof
                }
            });
        };
        self.recv_shared_chunks -= before - s.shared_chunks;
        let n = chunk.len() as u64;
        if s.recv_state == RecvState::Open {
            s.recv_pending_credit += n;
            self.maybe_stream_credit(id);
        }
        self.release_conn_credit(n);
        Ok(ReadOutcome::Data(chunk))
    }

    /// Grants stream credit once enough was read, doubling the window (up to its ceiling)
    /// when the last window was used within two round trips.
    fn maybe_stream_credit(&mut self, id: StreamId) {
        let now_us = self.micros_since_epoch();
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
        let divisor = self.config.credit_divisor;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.recv_pending_credit < s.recv_window / divisor {
            return;
        }
        let mut increment = s.recv_pending_credit;
        if let Some(last) = s.last_credit_us {
            if now_us.saturating_sub(last) < 2 * rtt_us && s.recv_window < max_window {
                let grow = s.recv_window.min(max_window - s.recv_window);
                s.recv_window += grow;
                increment += grow;
            }
        }
        s.recv_pending_credit = 0;
        s.recv_remaining += increment;
        s.last_credit_us = Some(now_us);
        self.queue(Frame::StreamCredit { id, increment });
    }

    fn release_conn_credit(&mut self, n: u64) {
        self.conn_recv_pending_credit += n;
        if self.conn_recv_pending_credit
            >= self.config.connection_window / self.config.credit_divisor
        {
            let increment = self.conn_recv_pending_credit;
            self.conn_recv_pending_credit = 0;
            self.conn_recv_remaining += increment;
            self.queue(Frame::ConnCredit { increment });
        }
    }

    /// Drops a stream's state, returning its buffered bytes to the budgets.
    fn free_stream(&mut self, id: StreamId) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        self.send_buffered_total -= s.send_buffered;
        self.recv_shared_chunks -= s.shared_chunks;
        if s.recv_buffered > 0 {
            self.release_conn_credit(s.recv_buffered as u64);
        }
        if id.initiator() != self.side {
            self.peer_streams_closed += 1;
            self.maybe_grant_streams();
        }
        if s.send_buffered > 0 {
            self.wake_writers();
        }
    }

    /// Raises the peer's stream limit as its streams close, in steps of 1/8 of the cap.
    fn maybe_grant_streams(&mut self) {
        let cap = self.config.max_concurrent_streams;
        let target = (self.peer_streams_closed + cap).min(MAX_STREAM_COUNT);
        if target - self.local_max_streams >= (cap / 8).max(1) {
            self.local_max_streams = target;
            self.queue(Frame::MaxStreams { count: target });
        }
    }

    fn wake_writers(&mut self) {
        if self.blocked_writers.is_empty()
            || self.send_buffered_total > self.config.connection_send_buffer / 2
        {
            return;
        }
        let half = self.config.stream_send_buffer / 2;
        let mut i = 0;
        while i < self.blocked_writers.len() {
            let id = self.blocked_writers[i];
            match self.streams.get_mut(&id) {
                Some(s) if s.send_buffered > half => i += 1,
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

    // ----- datagrams and control ----------------------------------------------------------

    /// Queues a datagram for `flow`. Oversized ones are refused (and counted), never split;
    /// when the queue is full the oldest queued datagram is dropped (and counted).
    pub fn send_datagram(&mut self, flow: u64, data: Bytes) -> Result<(), StreamError> {
        if flow > varint::MAX || data.len() > Connection::max_datagram_len(flow) {
            self.stats.datagrams_oversize += 1;
            return Err(StreamError::DatagramTooLarge(data.len()));
        }
        self.datagrams_out.push(flow, data);
        Ok(())
    }

    /// Largest datagram payload [`Connection::send_datagram`] accepts for `flow`.
    pub fn max_datagram_len(flow: u64) -> usize {
        MAX_PAYLOAD_LEN - varint::encoded_len(flow).unwrap_or(8)
    }

    /// The oldest received datagram not yet read.
    pub fn recv_datagram(&mut self) -> Option<Datagram> {
        let (flow, data) = self.datagrams_in.pop()?;
        let stream_open = self.streams.contains_key(&StreamId(flow));
        Some(Datagram {
            flow,
            data,
            stream_open,
        })
    }

    /// Queues a control message (Auth, Register, Connect…) ahead of stream data.
    pub fn send_control(&mut self, msg: Control) -> Result<(), crate::EncodeError> {
        msg.encode(&mut self.scratch)?;
        let f = self.scratch.split().freeze();
        self.push_control(f, false);
        Ok(())
    }

    /// Queues a control message ahead of everything already queued, including the start-up
    /// credit: an agent's Auth must be the first frame the server sees.
    pub fn send_control_first(&mut self, msg: Control) -> Result<(), crate::EncodeError> {
        msg.encode(&mut self.scratch)?;
        let f = self.scratch.split().freeze();
        self.push_control(f, true);
        Ok(())
    }

    /// Speaks to a plain zlayer-tunnel v1 peer: one frame per batch, and none of the
    /// data-plane frames it cannot decode (the start-up credit is withdrawn; a v1 peer opens
    /// no streams, so no other data-plane frame is ever generated for it).
    pub fn enable_zlayer_v1_compat(&mut self) {
        self.single_frame_batches = true;
        self.control.retain(|f| {
            f.first()
                .and_then(|t| FrameType::from_u8(*t))
                .is_some_and(FrameType::is_control)
        });
        self.control_bytes = self
            .control
            .iter()
            .map(|f| f.len() + CONTROL_ENTRY_COST)
            .sum();
    }

    /// Announces that we take no new streams; existing ones carry on. Later peer opens are refused.
    pub fn go_away(&mut self, code: u64, reason: &str) {
        if !self.local_going_away {
            self.local_going_away = true;
            if self.single_frame_batches {
                // A zlayer-tunnel v1 peer cannot decode GoAway, and opens no streams anyway.
                return;
            }
            let mut end = reason.len().min(1024);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            self.queue(Frame::GoAway {
                code: code.min(varint::MAX),
                reason: reason[..end].to_owned(),
            });
        }
    }

    // ----- output -------------------------------------------------------------------------

    /// Appends frames to `buf` (one WebSocket message) until about `max` bytes: control
    /// frames first, then datagrams, then stream data round-robin in capped quanta.
    /// Frames are never split; returns the bytes appended (0 when idle). Payloads are
    /// copied into `buf`; [`Connection::poll_transmit_segments`] avoids that copy.
    pub fn poll_transmit(&mut self, buf: &mut BytesMut, max: usize) -> usize {
        let start = buf.len();
        self.transmit(&mut Contiguous { buf, start }, max)
    }

    /// Like [`Connection::poll_transmit`], but hands the batch out as segments (frame
    /// headers and payload slices shared with what the application wrote), for a vectored
    /// write: no payload byte is copied.
    pub fn poll_transmit_segments(&mut self, out: &mut Transmit, max: usize) -> usize {
        let before = out.len;
        self.transmit(out, max);
        out.end_header();
        out.len - before
    }

    fn transmit(&mut self, out: &mut impl TxOut, max: usize) -> usize {
        let max = max.max(crate::header::MAX_FRAME_LEN);
        if self.error.is_some() {
            return 0;
        }
        if let Some(timestamp) = self.pending_heartbeat_ack.take() {
            let _ = Frame::Control(Control::HeartbeatAck { timestamp }).encode(out.header());
            out.end_header();
            if self.single_frame_batches {
                return out.written();
            }
        }
        while let Some(f) = self.control.front() {
            if out.written() > 0 && out.written() + f.len() > max {
                return out.written();
            }
            let f = self.pop_control().expect("front exists");
            out.frame(f);
            if self.single_frame_batches {
                return out.written();
            }
        }
        // Datagrams take at most half a batch while streams wait, so neither starves the other.
        let dgram_max = if self.schedule.is_empty() {
            max
        } else {
            max / 2
        };
        while let Some(len) = self.datagrams_out.front_len() {
            if out.written() > 0 && out.written() + len + HEADER_LEN + 8 > dgram_max {
                break;
            }
            let (flow, data) = self.datagrams_out.pop().expect("front exists");
            let id_len = varint::encoded_len(flow).unwrap_or(8);
            let h = out.header();
            h.put_u8(FrameType::Datagram as u8);
            h.put_u32((id_len + data.len()) as u32);
            varint::put(h, flow);
            out.end_header();
            if !data.is_empty() {
                out.payload(data);
            }
            self.stats.datagrams_sent += 1;
            if self.single_frame_batches {
                return out.written();
            }
        }
        self.transmit_streams(out, max);
        out.written()
    }

    fn transmit_streams(&mut self, out: &mut impl TxOut, max: usize) {
        let mut freed = false;
        'rounds: loop {
            let rounds = self.schedule.len();
            let mut progressed = false;
            for _ in 0..rounds {
                let used = out.written();
                if used + 16 > max || (self.single_frame_batches && used > 0) {
                    break 'rounds;
                }
                let Some(id) = self.schedule.pop_front() else {
                    break 'rounds;
                };
                let Some(s) = self.streams.get_mut(&id) else {
                    continue;
                };
                s.scheduled = false;
                let overhead = data_overhead(id);
                let mut quantum = self.config.quantum;
                while s.send_buffered > 0
                    && s.send_window > 0
                    && self.conn_send_window > 0
                    && quantum > 0
                {
                    let room = max - out.written();
                    if room <= overhead {
                        break;
                    }
                    let n = (s.send_buffered as u64)
                        .min(s.send_window)
                        .min(self.conn_send_window)
                        .min(quantum as u64)
                        .min((MAX_PAYLOAD_LEN + HEADER_LEN - overhead) as u64)
                        .min((room - overhead) as u64) as usize;
                    let h = out.header();
                    h.put_u8(FrameType::StreamData as u8);
                    h.put_u32((overhead - HEADER_LEN + n) as u32);
                    varint::put(h, id.0);
                    out.end_header();
                    let mut left = n;
                    while left > 0 {
                        let front = s.send_buf.front_mut().expect("buffered bytes exist");
                        if front.len() <= left {
                            left -= front.len();
                            let whole = s.send_buf.pop_front().expect("front exists");
                            out.payload(whole);
                        } else {
                            out.payload(front.split_to(left));
                            left = 0;
                        }
                    }
                    s.send_buffered -= n;
                    s.send_window -= n as u64;
                    self.conn_send_window -= n as u64;
                    self.send_buffered_total -= n;
                    self.stats.stream_bytes_sent += n as u64;
                    quantum = quantum.saturating_sub(n);
                    progressed = true;
                    freed = true;
                    if self.single_frame_batches {
                        break;
                    }
                }
                if s.send_buffered == 0 && s.send_state == SendState::FinQueued {
                    let room = max - out.written();
                    if room >= HEADER_LEN + 8 && !(self.single_frame_batches && out.written() > 0) {
                        let _ = Frame::StreamFin { id }.encode(out.header());
                        out.end_header();
                        s.send_state = SendState::FinSent;
                        progressed = true;
                    }
                }
                if s.is_closed() {
                    self.free_stream(id);
                } else if s.wants_send() {
                    s.scheduled = true;
                    self.schedule.push_back(id);
                }
            }
            if !progressed {
                break;
            }
        }
        if freed {
            self.wake_writers();
        }
    }
}

/// Where [`Connection`] puts the frames of one batch.
trait TxOut {
    /// Bytes produced so far in this batch.
    fn written(&self) -> usize;
    /// Where the next frame header (or small whole frame) is encoded.
    fn header(&mut self) -> &mut BytesMut;
    /// Ends the header being encoded.
    fn end_header(&mut self);
    /// A payload slice that follows the last header.
    fn payload(&mut self, b: Bytes);
    /// A whole pre-encoded frame.
    fn frame(&mut self, b: Bytes);
}

/// One contiguous buffer (payloads copied).
struct Contiguous<'a> {
    buf: &'a mut BytesMut,
    start: usize,
}

impl TxOut for Contiguous<'_> {
    fn written(&self) -> usize {
        self.buf.len() - self.start
    }
    fn header(&mut self) -> &mut BytesMut {
        self.buf
    }
    fn end_header(&mut self) {}
    fn payload(&mut self, b: Bytes) {
        self.buf.extend_from_slice(&b);
    }
    fn frame(&mut self, b: Bytes) {
        self.buf.extend_from_slice(&b);
    }
}

/// A batch as segments for a vectored write: headers are encoded into a shared scratch
/// buffer and split off; payloads are the application's own `Bytes`, never copied.
#[derive(Debug, Default)]
pub struct Transmit {
    /// The batch, in order.
    pub segments: Vec<Bytes>,
    /// Total bytes in `segments`.
    pub len: usize,
    scratch: BytesMut,
}

impl Transmit {
    /// An empty batch.
    pub fn new() -> Transmit {
        Transmit::default()
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.segments.clear();
        self.len = 0;
    }
}

impl TxOut for Transmit {
    fn written(&self) -> usize {
        self.len + self.scratch.len()
    }
    fn header(&mut self) -> &mut BytesMut {
        if self.scratch.is_empty() && self.scratch.capacity() < 64 {
            self.scratch.reserve(4096);
        }
        &mut self.scratch
    }
    fn end_header(&mut self) {
        if !self.scratch.is_empty() {
            self.len += self.scratch.len();
            self.segments.push(self.scratch.split().freeze());
        }
    }
    fn payload(&mut self, b: Bytes) {
        self.end_header();
        self.len += b.len();
        self.segments.push(b);
    }
    fn frame(&mut self, b: Bytes) {
        self.end_header();
        self.len += b.len();
        self.segments.push(b);
    }
}
