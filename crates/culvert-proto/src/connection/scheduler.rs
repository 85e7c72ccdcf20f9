//! The output scheduler: what goes into the next batch, in order: the heartbeat echo,
//! control frames, datagrams (at most half a batch while streams wait), then stream data
//! round-robin in capped quanta, within the peer's credit.

use bytes::BytesMut;

use super::stream::{LetGo, SendState};
use super::transmit::{Contiguous, TxOut};
use super::{Connection, Transmit};
use crate::frame::{data_overhead, Frame};
use crate::header::{FrameType, Header, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::{varint, Control};

impl Connection {
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
            Header::put(h, FrameType::Datagram, id_len + data.len());
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
                    && s.send_credit.available() > 0
                    && self.conn_send.available() > 0
                    && quantum > 0
                {
                    let room = max - out.written();
                    if room <= overhead {
                        break;
                    }
                    let n = (s.send_buffered as u64)
                        .min(s.send_credit.available())
                        .min(self.conn_send.available())
                        .min(quantum as u64)
                        .min((MAX_PAYLOAD_LEN + HEADER_LEN - overhead) as u64)
                        .min((room - overhead) as u64) as usize;
                    let h = out.header();
                    Header::put(h, FrameType::StreamData, overhead - HEADER_LEN + n);
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
                    if let Some(l) = &mut s.let_go {
                        l.last_progress = self.now;
                    }
                    s.send_credit.consume(n as u64);
                    self.conn_send.consume(n as u64);
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
                } else if let (Some(LetGo { code, .. }), SendState::FinSent) =
                    (s.let_go, s.send_state)
                {
                    // Its application let go: every byte and the FIN are out; the peer, which
                    // may still send (else the stream is closed, above), hears nobody reads
                    // (after the FIN, so it keeps them).
                    self.free_stream(id);
                    if self.error.is_none() && self.allow_local_reset() {
                        self.queue(Frame::StreamReset { id, code });
                    }
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
