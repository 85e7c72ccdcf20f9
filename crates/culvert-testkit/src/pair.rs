//! An in-memory pair of [`Connection`]s with a manual clock, as in quinn-proto's
//! `tests/util.rs`: tests, fuzzing and benchmarks drive the real state machines
//! deterministically, with no sockets and no wall-clock time. A configurable one-way
//! latency holds each message in flight until the shared clock reaches its arrival, so
//! round-trip-driven behaviour (heartbeat RTT, window auto-tuning) can be exercised.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use culvert_proto::{Config, Connection, ConnectionError, Event, ReadOutcome, Side, StreamId};

/// Bytes per simulated WebSocket message (the batch cap).
pub const BATCH: usize = 256 * 1024;

/// Messages on the simulated wire in one direction: (arrival time, bytes), in send order.
type InFlight = VecDeque<(Instant, Bytes)>;

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
    /// One-way delay of every message (zero: delivered in the step that sent it).
    pub latency: Duration,
    buf: BytesMut,
    /// Client → server and server → client messages not delivered yet.
    in_flight: (InFlight, InFlight),
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
            latency: Duration::ZERO,
            buf: BytesMut::with_capacity(BATCH),
            in_flight: (VecDeque::new(), VecDeque::new()),
            client_events: Vec::new(),
            server_events: Vec::new(),
            wire_bytes: (0, 0),
        }
    }

    /// This pair with every message delayed by `latency` each way.
    pub fn with_latency(mut self, latency: Duration) -> Pair {
        self.latency = latency;
        self
    }

    /// Messages sent but not yet delivered (always 0 without latency).
    pub fn in_flight(&self) -> usize {
        self.in_flight.0.len() + self.in_flight.1.len()
    }

    /// When the next message in flight arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        let a = self.in_flight.0.front().map(|m| m.0);
        let b = self.in_flight.1.front().map(|m| m.0);
        a.into_iter().chain(b).min()
    }

    /// Sends one batch each way and delivers what has arrived by now; returns whether
    /// anything was sent or delivered. Without latency a batch arrives in the step that
    /// sent it.
    pub fn step(&mut self) -> Result<bool, ConnectionError> {
        let arrive = self.now + self.latency;
        let (batch, fragment, now) = (self.batch, self.fragment, self.now);
        let a = hop(
            &mut self.client,
            &mut self.server,
            &mut self.in_flight.0,
            &mut self.buf,
            (batch, fragment, now, arrive),
            &mut self.wire_bytes.0,
        )?;
        let b = hop(
            &mut self.server,
            &mut self.client,
            &mut self.in_flight.1,
            &mut self.buf,
            (batch, fragment, now, arrive),
            &mut self.wire_bytes.1,
        )?;
        Ok(a || b)
    }

    /// Steps until nothing moves (at most `max_steps`), collecting events. With latency,
    /// the clock jumps to the next arrival whenever nothing else can move.
    pub fn drive(&mut self, max_steps: usize) -> Result<(), ConnectionError> {
        for _ in 0..max_steps {
            let moved = self.step()?;
            self.collect_events();
            if !moved {
                match self.next_arrival() {
                    Some(at) => self.advance(at.saturating_duration_since(self.now))?,
                    None => break,
                }
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

/// One direction of a step: puts `from`'s next message on `wire` (arriving at `arrive`,
/// its length added to `sent`), then hands `to` what has arrived by `now`; returns
/// whether anything was sent or delivered.
fn hop(
    from: &mut Connection,
    to: &mut Connection,
    wire: &mut InFlight,
    buf: &mut BytesMut,
    (batch, fragment, now, arrive): (usize, usize, Instant, Instant),
    sent: &mut u64,
) -> Result<bool, ConnectionError> {
    let msg = send(from, buf, batch);
    let moved = msg.is_some();
    if let Some(m) = msg {
        *sent += m.len() as u64;
        wire.push_back((arrive, m));
    }
    Ok(deliver(wire, to, fragment, now)? || moved)
}

/// Takes the next message (at most `batch` bytes) `from` wants to send, if any.
fn send(from: &mut Connection, buf: &mut BytesMut, batch: usize) -> Option<Bytes> {
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
    (n > 0).then(|| buf.split().freeze())
}

/// Hands `to` the messages of `wire` that have arrived by `now`; returns whether any had.
fn deliver(
    wire: &mut InFlight,
    to: &mut Connection,
    fragment: usize,
    now: Instant,
) -> Result<bool, ConnectionError> {
    let mut any = false;
    while wire.front().is_some_and(|m| m.0 <= now) {
        let (_, msg) = wire.pop_front().expect("checked");
        any = true;
        hand_over(to, msg, fragment, now)?;
    }
    Ok(any)
}

/// Hands one message to `to`, split into pieces of at most `fragment` bytes (0: whole).
fn hand_over(
    to: &mut Connection,
    msg: Bytes,
    fragment: usize,
    now: Instant,
) -> Result<(), ConnectionError> {
    if fragment == 0 {
        return to.handle_bytes(now, msg);
    }
    let mut off = 0;
    while off < msg.len() {
        let end = (off + fragment).min(msg.len());
        to.handle_bytes(now, msg.slice(off..end))?;
        off = end;
    }
    Ok(())
}

/// Moves one batch from `from` to `to` at once, optionally split into fragments; returns
/// its length.
pub fn transfer(
    from: &mut Connection,
    to: &mut Connection,
    buf: &mut BytesMut,
    batch: usize,
    fragment: usize,
    now: Instant,
) -> Result<usize, ConnectionError> {
    let Some(msg) = send(from, buf, batch) else {
        return Ok(0);
    };
    let n = msg.len();
    hand_over(to, msg, fragment, now)?;
    Ok(n)
}

/// Reads everything `c` holds for stream `id` now: (the bytes, whether the end was read).
/// Panics, naming the stream and how much it read, when reading fails.
pub fn read_available(c: &mut Connection, id: StreamId) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match c.read(id, usize::MAX) {
            Ok(ReadOutcome::Data(b)) => out.extend_from_slice(&b),
            Ok(ReadOutcome::WouldBlock) => return (out, false),
            Ok(ReadOutcome::Eof) => return (out, true),
            Err(e) => panic!("reading {id}: {e} after {} bytes", out.len()),
        }
    }
}
