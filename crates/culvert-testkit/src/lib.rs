//! An in-memory pair of [`Connection`]s with a manual clock, as in quinn-proto's
//! `tests/util.rs`: tests, fuzzing and benchmarks drive the real state machines
//! deterministically, with no sockets and no wall-clock time.
//!
//! With the `net` feature, the `fault_relay` module adds a loopback TCP relay that injects network
//! faults (partitions, stalls, latency, throttling, resets) into real connections, for
//! end-to-end tests.

#[cfg(feature = "net")]
pub mod fault_relay;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use culvert_proto::{Config, Connection, ConnectionError, Event, Side};

/// Bytes per simulated WebSocket message (the batch cap).
pub const BATCH: usize = 256 * 1024;

/// Two connected endpoints and the time they share.
pub struct Pair {
    /// The dialing side (agent).
    pub client: Connection,
    /// The accepting side (server).
    pub server: Connection,
    /// Current simulated time.
    pub now: Instant,
    /// Largest message handed across in one step; smaller values exercise frame splitting.
    pub batch: usize,
    /// Split each message into pieces of at most this many bytes before delivery (0: no split).
    pub fragment: usize,
    buf: BytesMut,
    /// Events taken from the client by [`Pair::drive`].
    pub client_events: Vec<Event>,
    /// Events taken from the server by [`Pair::drive`].
    pub server_events: Vec<Event>,
    /// Bytes moved client → server and server → client.
    pub wire_bytes: (u64, u64),
}

impl Pair {
    /// A pair with the same config on both ends.
    pub fn new(config: Config) -> Pair {
        Pair::with_configs(config.clone(), config)
    }

    /// A pair with distinct configs.
    pub fn with_configs(client: Config, server: Config) -> Pair {
        let now = Instant::now();
        Pair {
            client: Connection::new(Side::Client, client, now).expect("valid client config"),
            server: Connection::new(Side::Server, server, now).expect("valid server config"),
            now,
            batch: BATCH,
            fragment: 0,
            buf: BytesMut::with_capacity(BATCH),
            client_events: Vec::new(),
            server_events: Vec::new(),
            wire_bytes: (0, 0),
        }
    }

    /// Moves one batch each way; returns whether anything moved.
    pub fn step(&mut self) -> Result<bool, ConnectionError> {
        let a = transfer(
            &mut self.client,
            &mut self.server,
            &mut self.buf,
            self.batch,
            self.fragment,
            self.now,
        )?;
        let b = transfer(
            &mut self.server,
            &mut self.client,
            &mut self.buf,
            self.batch,
            self.fragment,
            self.now,
        )?;
        self.wire_bytes.0 += a as u64;
        self.wire_bytes.1 += b as u64;
        Ok(a + b > 0)
    }

    /// Steps until nothing moves (at most `max_steps`), collecting events.
    pub fn drive(&mut self, max_steps: usize) -> Result<(), ConnectionError> {
        for _ in 0..max_steps {
            let moved = self.step()?;
            self.collect_events();
            if !moved {
                break;
            }
        }
        Ok(())
    }

    /// Moves pending events into `client_events` / `server_events`.
    pub fn collect_events(&mut self) {
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
    }

    /// Advances the shared clock and runs both timers.
    pub fn advance(&mut self, d: Duration) -> Result<(), ConnectionError> {
        self.now += d;
        self.client.handle_timeout(self.now)?;
        self.server.handle_timeout(self.now)
    }
}

/// Moves one batch from `from` to `to`, optionally split into fragments.
pub fn transfer(
    from: &mut Connection,
    to: &mut Connection,
    buf: &mut BytesMut,
    batch: usize,
    fragment: usize,
    now: Instant,
) -> Result<usize, ConnectionError> {
    // Alternate between the contiguous and the vectored output so both are exercised;
    // they must produce the same bytes.
    let vectored = from.stats().frames_received % 2 == 1;
    let n = if vectored {
        let mut t = culvert_proto::Transmit::new();
        let n = from.poll_transmit_segments(&mut t, batch);
        for s in &t.segments {
            buf.extend_from_slice(s);
        }
        n
    } else {
        from.poll_transmit(buf, batch)
    };
    if n == 0 {
        return Ok(0);
    }
    let msg: Bytes = buf.split().freeze();
    if fragment == 0 {
        to.handle_bytes(now, msg)?;
    } else {
        let mut off = 0;
        while off < msg.len() {
            let end = (off + fragment).min(msg.len());
            to.handle_bytes(now, msg.slice(off..end))?;
            off = end;
        }
    }
    Ok(n)
}
