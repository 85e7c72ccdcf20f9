//! Limits and tunables of a [`crate::Connection`], each with the reason for its default.

use std::time::Duration;

/// Every stream starts with this much send window in each direction (protocol constant; receivers grant more with credit).
pub const INITIAL_STREAM_WINDOW: u64 = 256 * 1024;
/// The connection starts with this much send window in each direction (protocol constant).
pub const INITIAL_CONN_WINDOW: u64 = 1024 * 1024;
/// Each side may open this many streams before the peer grants more with MaxStreams (protocol constant).
pub const INITIAL_MAX_STREAMS: u64 = 100;
/// No window may exceed this (as in HTTP/2); a credit that would push one past it is a protocol error.
pub const MAX_WINDOW: u64 = (1 << 31) - 1;
/// Largest cumulative stream count: stream ids are varints, so sequences stop at 2^61.
pub const MAX_STREAM_COUNT: u64 = 1 << 61;
/// The longest a timer setting may be (the heartbeat interval, the linger): a day is far
/// past any use, and keeps what is derived from it (two heartbeats, a deadline `now +` it,
/// its milliseconds in `TCP_USER_TIMEOUT`) far from overflowing.
pub const MAX_TIMER: Duration = Duration::from_secs(86_400);

/// Local policy of one connection. The defaults suit a tunnel carrying thousands of streams over one WebSocket.
#[derive(Debug, Clone)]
pub struct Config {
    /// Receive window each new stream gets (>= [`INITIAL_STREAM_WINDOW`]).
    /// 256 KiB keeps a single stream near line rate on loopback while 1,000 idle streams cost nothing until they carry data.
    pub stream_window: u64,
    /// Ceiling for per-stream window auto-tuning: 4 MiB, but a stream never grows past a
    /// quarter of [`Config::connection_window`] either (1 MiB with the defaults), so one
    /// whose reader stopped cannot hold the whole connection window and stall the others.
    /// Raise both together for one stream on a long fat path.
    pub max_stream_window: u64,
    /// Connection receive window: the hard bound on bytes buffered for the application across all streams (the memory budget).
    /// 4 MiB per pooled WebSocket keeps an agent with four connections under 16 MiB of receive
    /// buffering, while four connections together still cover a 100 ms, 1 Gbit/s path.
    pub connection_window: u64,
    /// Streams the peer may have open at once. 4,096 per WebSocket × 4 pooled connections serves thousands of tunneled connections.
    pub max_concurrent_streams: u64,
    /// Send credit once the application has read this fraction (1/n) of a window. 4 halves the frame count of n=8 (quinn) while keeping the pipe full.
    pub credit_divisor: u64,
    /// Largest slice one stream sends before the scheduler turns to the next (fairness). 32 KiB: big enough to amortise framing, small enough that eight streams interleave within one 256 KiB batch.
    pub quantum: usize,
    /// Bytes the application may queue on one stream that are not on the wire yet. Sent
    /// bytes are not kept (the transport is reliable), so this only has to cover the
    /// writer's burst, and the relay's next reads while the writer sends: 2 MiB is eight
    /// socket reads of 256 KiB. Against 1 MiB, one bulk stream spent 22-27 % less
    /// CPU per GB on its sending side (fewer stops of the relay on a full buffer, each a
    /// park and a wake-up); 256 KiB measured 10-30 % more than 1 MiB (see BENCHMARKS.md).
    /// The connection's send buffer still bounds all streams together.
    pub stream_send_buffer: usize,
    /// Bytes the application may queue across all streams: the sender's memory when the
    /// peer stops granting credit. 3 MiB still lets one stream fill its 2 MiB, and took
    /// about 3 MB off the peak RSS of eight bulk streams over four pooled connections
    /// against 4 MiB (33 → 29 MB over wss), at the same throughput and CPU per GB.
    /// At most two thirds of it may hold bytes beyond their stream's credit
    /// ([`crate::Connection::send_room`]), so streams whose readers stopped can never take
    /// the room the others need to go on.
    pub connection_send_buffer: usize,
    /// Datagrams queued for sending before the oldest are dropped. UDP prefers fresh data to
    /// late data, but the queue must outlast the writer being descheduled: 4,096 (about 40 ms
    /// of 1 Gbit/s in 1,200-byte datagrams) ended the server's queue drops that 1,024 had at
    /// 1 Gbit/s on a busy 2-CPU machine (`scripts/udp-loss.sh 1G`, interleaved runs).
    pub datagram_queue_len: usize,
    /// Bytes of datagrams queued for sending (and, separately, for the application) before
    /// the oldest are dropped: 4 MiB, the same 40 ms at 1 Gbit/s. It fills only while the
    /// tunnel is saturated.
    pub datagram_queue_bytes: usize,
    /// How long a stream its application let go of (finished, then dropped) may wait with
    /// bytes still queued and none of them going out (its peer grants no credit) before it
    /// is reset and its bytes freed: what `SO_LINGER` is to a socket, counted from the last
    /// bytes that went out, so a slow reader that keeps reading is never cut off (credit
    /// comes each time it has read a quarter of its window: 64 KiB with the defaults, up to
    /// 256 KiB once the window has grown).
    /// 60 s: far past any live reader's pause, and it bounds how long a stuck peer holds
    /// the sender's buffers (`--linger` on the command line). It counts from the `now`
    /// given to [`crate::Connection::abandon`], then from each send.
    pub linger: Duration,
    /// Interval between our heartbeats. 10 s: cheap, and a dead peer is noticed within [`Config::idle_timeout`].
    pub heartbeat_interval: Duration,
    /// Silence after which the peer is declared dead. Two heartbeat intervals, as the tunnel promises.
    pub idle_timeout: Duration,
    /// Heartbeats per second a peer may send (token-bucket rate) before it is a flood.
    pub max_heartbeats_per_sec: u64,
    /// Heartbeat burst allowance.
    pub heartbeat_burst: u64,
    /// Stream resets per second a peer may send before it counts as an open/reset loop; the
    /// same rate (and burst) caps the resets this side generates itself (refused opens, the
    /// application's resets), past which it sends GoAway and fails, as h2 does.
    pub max_resets_per_sec: u64,
    /// Reset burst allowance: a backend dying may reset every stream at once.
    pub reset_burst: u64,
    /// Undelivered events the application may leave pending; past it the connection fails rather than grow without bound.
    pub max_pending_events: usize,
    /// Bytes of control frames (credit, resets, opens, control messages) queued and not yet
    /// on the wire, each counted with its bookkeeping (see
    /// [`crate::Connection::control_queued`]). Control frames go out ahead of everything
    /// else, so they pile up only while the peer does not read; past this the connection
    /// sends GoAway (`ENHANCE_YOUR_CALM`) and fails. 1 MiB holds the opens, Connects and
    /// credit of a few thousand new streams queued behind one stalled write.
    pub max_control_queue: usize,
    /// The largest buffer one received slice can keep alive (the driver's read buffer, 256
    /// KiB plus a partial frame): used only to account received memory as an upper bound
    /// ([`crate::Connection::recv_memory`]).
    pub recv_pin: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            stream_window: INITIAL_STREAM_WINDOW,
            max_stream_window: 4 * 1024 * 1024,
            connection_window: 4 * 1024 * 1024,
            max_concurrent_streams: 4096,
            credit_divisor: 4,
            quantum: 32 * 1024,
            stream_send_buffer: 2 * 1024 * 1024,
            connection_send_buffer: 3 * 1024 * 1024,
            datagram_queue_len: 4096,
            datagram_queue_bytes: 4 * 1024 * 1024,
            linger: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            max_heartbeats_per_sec: 5,
            heartbeat_burst: 20,
            max_resets_per_sec: 4096,
            reset_burst: 8192,
            max_pending_events: 65_536,
            max_control_queue: 1024 * 1024,
            recv_pin: 320 * 1024,
        }
    }
}

/// A configuration value out of its valid range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub &'static str);

impl Config {
    /// Heartbeats every `interval` (at least one second, at most [`MAX_TIMER`]), with the
    /// idle timeout at two intervals, as the tunnel promises: what `--heartbeat-interval`
    /// and `heartbeat_interval` in a config file set.
    pub fn set_heartbeat_interval(&mut self, interval: Duration) {
        let h = interval.clamp(Duration::from_secs(1), MAX_TIMER);
        self.heartbeat_interval = h;
        self.idle_timeout = 2 * h;
    }

    /// Checks the relations between values that the state machine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stream_window < INITIAL_STREAM_WINDOW {
            return Err(ConfigError(
                "stream_window below the protocol's initial window",
            ));
        }
        if self.max_stream_window < self.stream_window || self.max_stream_window > MAX_WINDOW {
            return Err(ConfigError(
                "max_stream_window must lie in [stream_window, 2^31-1]",
            ));
        }
        if self.connection_window < INITIAL_CONN_WINDOW || self.connection_window > MAX_WINDOW {
            return Err(ConfigError("connection_window must lie in [1 MiB, 2^31-1]"));
        }
        if self.max_concurrent_streams == 0 || self.max_concurrent_streams > MAX_STREAM_COUNT {
            return Err(ConfigError("max_concurrent_streams must be positive"));
        }
        if self.credit_divisor < 2 {
            return Err(ConfigError("credit_divisor must be at least 2"));
        }
        if self.quantum < 1024 {
            return Err(ConfigError("quantum must be at least 1 KiB"));
        }
        if self.stream_send_buffer == 0 || self.connection_send_buffer == 0 {
            return Err(ConfigError("send buffers must be positive"));
        }
        if self.datagram_queue_len == 0 || self.datagram_queue_bytes == 0 {
            return Err(ConfigError("datagram queues must be positive"));
        }
        if self.heartbeat_interval.is_zero() || self.idle_timeout < self.heartbeat_interval {
            return Err(ConfigError(
                "idle_timeout must be at least one heartbeat interval",
            ));
        }
        if self.heartbeat_interval > MAX_TIMER || self.idle_timeout > 2 * MAX_TIMER {
            return Err(ConfigError(
                "heartbeat_interval may be at most a day (MAX_TIMER), idle_timeout two",
            ));
        }
        if self.linger.is_zero() || self.linger > MAX_TIMER {
            return Err(ConfigError(
                "linger must lie in (0, a day] (to drop bytes at once, reset the stream)",
            ));
        }
        if self.max_control_queue < 64 * 1024 {
            return Err(ConfigError("max_control_queue must be at least 64 KiB"));
        }
        if self.max_pending_events < 16 {
            return Err(ConfigError("max_pending_events must be at least 16"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults pass; a value the state machine cannot work with is refused by name.
    #[test]
    fn validate_refuses_what_the_state_machine_cannot_use() {
        Config::default().validate().unwrap();
        let refused = |c: Config| c.validate().unwrap_err().0;
        let d = Config::default();
        assert!(refused(Config {
            linger: Duration::ZERO,
            ..d.clone()
        })
        .contains("linger"));
        assert!(refused(Config {
            linger: MAX_TIMER + Duration::from_secs(1),
            ..d.clone()
        })
        .contains("linger"));
        assert!(refused(Config {
            idle_timeout: d.heartbeat_interval / 2,
            ..d.clone()
        })
        .contains("idle_timeout"));
        assert!(refused(Config {
            heartbeat_interval: MAX_TIMER * 2,
            idle_timeout: MAX_TIMER * 4,
            ..d.clone()
        })
        .contains("heartbeat_interval"));
        // The setter keeps within bounds whatever it is given.
        let mut c = d;
        c.set_heartbeat_interval(Duration::from_millis(10));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        c.validate().unwrap();
        c.set_heartbeat_interval(Duration::MAX);
        assert_eq!(c.heartbeat_interval, MAX_TIMER);
        assert_eq!(c.idle_timeout, 2 * MAX_TIMER);
        c.validate().unwrap();
    }
}
