//! The control queue: frames this side generates (credit, opens, resets, control messages)
//! go out ahead of stream data, bounded in bytes so a peer that does not read cannot grow
//! it; passing the bound fails the connection with a GoAway.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{goaway_code, Connection, CONTROL_ENTRY_COST};
use crate::frame::Frame;
use crate::header::FrameType;
use crate::{varint, ConnectionError, Control};

impl Connection {
    pub(super) fn queue(&mut self, frame: Frame) {
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
    pub(super) fn push_control(&mut self, f: Bytes, front: bool) {
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
    pub(super) fn pop_control(&mut self) -> Option<Bytes> {
        let f = self.control.pop_front()?;
        self.control_bytes -= f.len() + CONTROL_ENTRY_COST;
        Some(f)
    }

    /// Bytes of control frames queued and not yet on the wire, each counted with its
    /// bookkeeping: what [`Config::max_control_queue`](crate::Config::max_control_queue) caps.
    pub fn control_queued(&self) -> usize {
        self.control_bytes
    }

    /// Fails the connection for a limit the peer made this side exceed: everything queued
    /// is dropped, and a GoAway (`ENHANCE_YOUR_CALM`, with the reason) is kept for
    /// [`Connection::take_final_frame`], as h2 does.
    pub(super) fn fail_calm(&mut self, e: ConnectionError) {
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
    pub(super) fn allow_local_reset(&mut self) -> bool {
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
}
