//! The application's calls on streams and datagrams: open, write, finish, reset, read,
//! and the datagram queue.

use bytes::Bytes;
use std::time::Instant;

use super::stream::{LetGo, RecvState, SendState, Stream};
use super::{Connection, Datagram};
use crate::frame::Frame;
use crate::header::MAX_PAYLOAD_LEN;
use crate::{varint, EncodeError, StreamError, StreamId, Target};

/// Result of [`Connection::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The next bytes, in order: a slice of the received frame, not copied, or of the
    /// compact buffer small payloads were copied into.
    Data(Bytes),
    /// Nothing buffered yet; wait for [`super::Event::Readable`] or [`super::Event::Finished`].
    WouldBlock,
    /// The peer finished and every byte was read.
    Eof,
}

impl Connection {
    /// Opens a stream towards `target`, written in the string grammar of PROTOCOL.md §8.1
    /// (`?NAME`, `udp://…`, `HOST:PORT`, else a service); see [`Connection::open_stream_to`].
    pub fn open_stream(&mut self, target: &str) -> Result<StreamId, StreamError> {
        self.open_stream_to(Target::parse(target))
    }

    /// Opens a stream towards `target`. Data may be written at once: it follows the open
    /// within the initial window, with no round trip.
    pub fn open_stream_to(&mut self, target: Target) -> Result<StreamId, StreamError> {
        self.can_open_stream()?;
        if let Err(EncodeError::FieldTooLong { len, .. }) = target.check() {
            return Err(StreamError::TargetTooLong(len));
        }
        let Some(id) = self.limits.open_local() else {
            return Err(StreamError::StreamsExhausted);
        };
        self.queue(Frame::StreamOpen { id, target });
        self.insert_stream(id);
        Ok(id)
    }

    /// Whether [`Connection::open_stream_to`] would take a stream now: `Closing` when
    /// either side is going away, `StreamsExhausted` (and [`super::Event::StreamsAvailable`]
    /// follows the peer's next raise) at its stream limit. Lets a caller that waits for the
    /// limit keep its target rather than clone it for every attempt.
    pub fn can_open_stream(&mut self) -> Result<(), StreamError> {
        if self.error.is_some() || self.peer_going_away || self.local_going_away {
            return Err(StreamError::Closing);
        }
        if !self.limits.can_open_local() {
            return Err(StreamError::StreamsExhausted);
        }
        Ok(())
    }

    /// Queues bytes on a stream; returns how many were accepted (the rest when
    /// [`Event::Writable`](crate::Event::Writable) arrives). Never copies: `data` is sliced.
    pub fn write(&mut self, id: StreamId, mut data: Bytes) -> Result<usize, StreamError> {
        self.write_from(id, &mut data)
    }

    /// [`Connection::write`] that leaves what was not accepted in `data` (empty when all
    /// was), for a caller that keeps the rest for later. What fits whole is queued as the
    /// buffer itself: a slice or clone of a vector-backed `Bytes` (a copied small read)
    /// allocates a shared header. On an error nothing is taken.
    pub fn write_from(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, StreamError> {
        let room = self.send_room(id)?;
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        if s.send_state != SendState::Open {
            return Err(StreamError::ClosedForWriting(id));
        }
        let n = data.len().min(room);
        if n < data.len() && !s.write_blocked {
            s.write_blocked = true;
            self.blocked_writers.push(id);
        }
        if n == 0 {
            return Ok(0);
        }
        let uncredited = s.uncredited();
        s.send_buf.push_back(if n == data.len() {
            std::mem::take(data)
        } else {
            data.split_to(n)
        });
        s.send_buffered += n;
        self.send_buffered_total += n;
        self.send_uncredited_total += s.uncredited() - uncredited;
        if s.wants_send() && !s.scheduled {
            s.scheduled = true;
            self.schedule.push_back(id);
        }
        Ok(n)
    }

    /// Bytes [`Connection::write`] would accept on `id` now, the least of: the stream's
    /// send buffer, the connection's, and what the stream's credit covers plus what is left
    /// of the connection's budget for bytes beyond credit (two thirds of
    /// [`crate::Config::connection_send_buffer`]). Lets a driver copy no more than will be
    /// queued.
    pub fn send_room(&self, id: StreamId) -> Result<usize, StreamError> {
        let s = self
            .streams
            .get(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        Ok(self.room_of(s))
    }

    pub(super) fn room_of(&self, s: &Stream) -> usize {
        let conn_room = self
            .config
            .connection_send_buffer
            .saturating_sub(self.send_buffered_total);
        let credit_room = s.credited_room().saturating_add(
            self.uncredited_budget()
                .saturating_sub(self.send_uncredited_total),
        );
        self.config
            .stream_send_buffer
            .saturating_sub(s.send_buffered)
            .min(conn_room)
            .min(credit_room)
    }

    /// Bytes beyond their streams' credit that the connection holds at most: two thirds of
    /// [`crate::Config::connection_send_buffer`]. Streams whose readers stopped (a backend
    /// that never reads) keep such bytes for ever; the last third stays for bytes that can
    /// leave, so the other streams always go on, and a writer blocked on the connection's
    /// buffer always sees the quarter of it free that wakes it. One bulk stream (2 MiB
    /// queued, up to 1 MiB of it within credit) never meets this bound.
    pub(super) fn uncredited_budget(&self) -> usize {
        self.config.connection_send_buffer / 3 * 2
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
    /// (A peer that had finished keeps what it sent readable: PROTOCOL.md §9.4.)
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

    /// The application lets go of a stream: it will read and write no more. What it wrote
    /// before finishing still goes out, its FIN last, so a peer that reads gets every byte
    /// (a server that answers, shuts down and drops its end loses nothing); only then, if
    /// the peer may still send, is it told `code`, since nobody reads what it sends. Bytes
    /// that arrive meanwhile are dropped (their connection credit returned). A stream whose
    /// writing is not finished aborts both ways at once, as with [`Connection::reset`].
    /// To the application the stream is gone at once: reading it is `UnknownStream`.
    /// `now` starts the linger ([`crate::Config::linger`]): the connection's own clock may
    /// not have moved since bytes last arrived, which can be long before the let-go.
    pub fn abandon(&mut self, now: Instant, id: StreamId, code: u64) -> Result<(), StreamError> {
        self.advance(now);
        let s = self
            .streams
            .get_mut(&id)
            .filter(|s| s.let_go.is_none())
            .ok_or(StreamError::UnknownStream(id))?;
        if s.send_state == SendState::Open {
            return self.reset(id, code);
        }
        let code = code.min(varint::MAX);
        s.let_go = Some(LetGo {
            code,
            last_progress: self.now,
        });
        let (bytes, shared) = s.discard_recv();
        let peer_sends = s.recv_state == RecvState::Open;
        if !peer_sends {
            // The peer finished: nothing more comes, nothing to tell it.
            s.recv_state = RecvState::FinRead;
        }
        let fin_out = s.send_state == SendState::FinSent;
        if !fin_out {
            // It waits for credit to send the rest: bounded by `Config::linger`.
            self.linger_sweep
                .get_or_insert(self.now + self.config.linger);
        }
        self.recv_shared_chunks -= shared;
        if bytes > 0 {
            self.release_conn_credit(bytes as u64);
        }
        if fin_out {
            // Our FIN is on the wire already: the stream is done here.
            self.free_stream(id);
            if peer_sends && self.error.is_none() && self.allow_local_reset() {
                self.queue(Frame::StreamReset { id, code });
            }
        }
        // Otherwise the scheduler frees it (telling the peer) once the FIN goes out.
        Ok(())
    }

    /// Reads up to `max` bytes from a stream, releasing flow-control credit as it goes.
    /// After [`ReadOutcome::Eof`] with our direction finished too, the stream is gone.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<ReadOutcome, StreamError> {
        let s = self
            .streams
            .get_mut(&id)
            .filter(|s| s.let_go.is_none())
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
            s.recv_flow.release(n);
            self.maybe_stream_credit(id);
        }
        self.release_conn_credit(n);
        Ok(ReadOutcome::Data(chunk))
    }

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
}
