//! Timers: heartbeats out, the idle timeout, and the liveness judgement drivers use to
//! pick a connection.

use std::time::{Duration, Instant};

use super::stream::LetGo;
use super::Connection;
use crate::frame::Frame;
use crate::{ConnectionError, Control};

impl Connection {
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
        self.sweep_lingering();
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
        let t = self
            .next_heartbeat
            .min(self.last_recv + self.config.idle_timeout);
        Some(self.linger_sweep.map_or(t, |l| l.min(t)))
    }

    /// Resets the streams let go of that sent nothing for [`crate::Config::linger`] (their
    /// peer withholds credit), freeing their queued bytes; the peer hears the code they were
    /// let go with. Sweeps at most eight times per linger period however the deadlines
    /// spread (each one looks at every stream: a few thousand at most).
    fn sweep_lingering(&mut self) {
        let Some(at) = self.linger_sweep else {
            return;
        };
        if self.now < at {
            return;
        }
        let (now, linger) = (self.now, self.config.linger);
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, s) in &self.streams {
            let Some(LetGo {
                code,
                last_progress,
            }) = s.let_go
            else {
                continue;
            };
            let due = last_progress + linger;
            if due <= now {
                expired.push((*id, code));
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        self.linger_sweep = next.map(|n| n.max(now + linger / 8));
        for (id, code) in expired {
            self.stats.lingered_out += 1;
            // Known (just listed), so this cannot fail.
            let _ = self.reset(id, code);
        }
    }
}
