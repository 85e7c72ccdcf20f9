//! Frame dispatch: received bytes become frames, and each frame updates the connection's
//! state or becomes an [`Event`] for the application. Every rule a peer can break is
//! checked here and ends the connection with a typed [`ConnectionError`].

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::stream::{self, RecvState, SendState};
use super::{reset_code, Connection, Event, MAX_SHARED_CHUNKS};
use crate::frame::Frame;
use crate::{ConnectionError, Control, StreamId, Target};

impl Connection {
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
                    if !self.decoder.last_was_continuation() {
                        self.stats.frames_received += 1;
                    }
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
                    if s.let_go.is_some() {
                        // Nobody reads it: done, and the peer need not be told to stop.
                        s.recv_state = RecvState::FinRead;
                        if s.is_closed() {
                            self.free_stream(id);
                        }
                        return Ok(());
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
                    self.on_peer_reset(id);
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
                        let uncredited = s.uncredited();
                        s.send_credit.grant(increment)?;
                        self.send_uncredited_total -= uncredited - s.uncredited();
                        if s.wants_send() && !s.scheduled {
                            s.scheduled = true;
                            self.schedule.push_back(id);
                        }
                        // Credit raises what a stream may queue (`Connection::send_room`),
                        // even before any of it is sent.
                        if s.write_blocked {
                            self.wake_writers();
                        }
                    }
                    None => self.check_was_opened(id)?,
                }
            }
            Frame::ConnCredit { increment } => {
                if increment == 0 {
                    return Err(ConnectionError::ZeroCredit);
                }
                self.conn_send.grant(increment)?;
            }
            Frame::MaxStreams { count } => {
                if self.limits.on_max_streams(count)? {
                    self.push_event(Event::StreamsAvailable)?;
                }
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
        if self.limits.was_opened(id) {
            Ok(())
        } else {
            Err(ConnectionError::UnopenedStream(id))
        }
    }

    fn on_open(&mut self, id: StreamId, target: Target) -> Result<(), ConnectionError> {
        self.limits.check_peer_open(id)?;
        if self.peer_going_away {
            return Err(ConnectionError::OpenAfterGoAway);
        }
        self.limits.accept_peer_open();
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
            self.peer_stream_closed();
            return Ok(());
        }
        self.insert_stream(id);
        self.push_event(Event::StreamOpened { id, target })
    }

    /// The peer aborted a stream. Our direction ends at once (queued bytes dropped). Its
    /// direction too, unless it had finished: then every byte it sent is here, and stays
    /// readable up to the end, the way a reset that follows a FIN is sent by a peer that
    /// answered, shut down and let go (see [`Connection::abandon`]).
    fn on_peer_reset(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.recv_state == RecvState::Open || s.let_go.is_some() {
            self.free_stream(id);
            return;
        }
        let (bytes, uncredited) = s.discard_send();
        s.send_state = SendState::FinSent;
        let closed = s.is_closed();
        self.send_buffered_total -= bytes;
        self.send_uncredited_total -= uncredited;
        if closed {
            self.free_stream(id);
        } else if bytes > 0 {
            self.wake_writers();
        }
    }

    fn on_data(&mut self, id: StreamId, data: Bytes) -> Result<(), ConnectionError> {
        let len = data.len() as u64;
        if len == 0 {
            return Err(ConnectionError::EmptyData(id));
        }
        if !self.conn_recv.consume(len) {
            return Err(ConnectionError::ConnectionWindowExceeded);
        }
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
        if !s.recv_flow.consume(len) {
            return Err(ConnectionError::StreamWindowExceeded(id));
        }
        if s.let_go.is_some() {
            // Nobody reads it (the peer hears so once our FIN is out): dropped.
            self.release_conn_credit(len);
            return Ok(());
        }
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
}
