//! Two real `Connection`s (a testkit `Pair`) driven by an arbitrary sequence of
//! operations: opens from either side, writes, finishes, resets, partial reads,
//! datagrams, control messages, going-away, time, batch and fragment sizes, and
//! injection of raw bytes or arbitrary well-formed frames into one side.
//!
//! Checked after every operation:
//! - nothing panics (debug assertions are on in fuzz builds);
//! - `recv_buffered() <= connection_window`, `datagrams_buffered() <= datagram_queue_bytes`
//!   (or one max-size datagram, see `Harness::invariants`; exactly the configured bound
//!   under `CULVERT_FUZZ_STRICT=1`), `send_buffered() <= connection_send_buffer` on both
//!   sides, always;
//! - until something was injected: no `ConnectionError` except an `IdleTimeout` that is
//!   due (and an `IdleTimeout` whenever one is due), bytes read on every stream are a
//!   prefix of the bytes written on it, in order, EOF comes exactly after all of them,
//!   every event matches what the peer did (opens, FIN, resets, going-away, control
//!   messages), and received datagrams are a subsequence of the sent ones, in order;
//! - at the end, if nothing was injected and both sides are alive, the pair is driven to
//!   quiescence while reading everything: every byte accepted by `write` on a stream that
//!   was not reset must arrive, and a finished stream must reach EOF (no flow-control
//!   deadlock, no lost FIN).
//!
//! A side whose connection failed is not driven any more (its transport is closed).
//!
//! Seeds: `fuzz/corpus/connection/`, `Input`s in `arbitrary`'s byte layout written by
//! `examples/seed_corpus.rs`.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use culvert_fuzz::check_roundtrip;
use culvert_fuzz::ops::{FuzzConfig, Input, Op};
use culvert_proto::frame::MAX_TARGET_LEN;
use culvert_proto::varint;
use culvert_proto::{
    reset_code, Config, Connection, ConnectionError, Control, Event, ReadOutcome, Side, StreamId,
    Target,
};
use culvert_testkit::{transfer, Pair, BATCH};
use libfuzzer_sys::fuzz_target;

/// Operations per input beyond this are ignored.
const MAX_OPS: usize = 256;
/// Stream and datagram payload bytes one input may generate in all (keeps executions fast).
const MAX_TOTAL_BYTES: usize = 8 << 20;
/// Steps one `Drive` may take.
const MAX_DRIVE_STEPS: usize = 64;
/// Rounds the final settling phase may take before it counts as a livelock.
const MAX_SETTLE_ROUNDS: usize = 4096;

fn idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// Generated payload: cheap, and different at every offset so reordering shows.
fn pattern(len: usize, seed: u8, offset: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    for i in offset..offset + len {
        v.push((i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ (i >> 16) as u8 ^ seed);
    }
    Bytes::from(v)
}

impl Model {
    /// Whether what side `w` wrote on `id` (and its FIN) must reach the other side: not
    /// when the reader let go of it, and not after a reset, unless `w` is owed delivery.
    fn promised(&self, id: StreamId, w: usize) -> bool {
        if self.abandoned.contains(&(id, 1 - w)) {
            return false;
        }
        if self.abandoned.contains(&(id, w)) {
            return self.owed(id, w);
        }
        !self.reset_any.contains(&id)
    }

    /// Whether side `w` let go of `id` after finishing, and so is owed delivery of what it
    /// wrote: unless a side reset it by its own call, or the peer aborted it before `w`'s
    /// stream was gone, or may have refused it (`w` opened it, the peer is going away: the
    /// refusal can arrive after `w` freed the stream, and go unseen).
    fn owed(&self, id: StreamId, w: usize) -> bool {
        let may_be_refused =
            usize::from(id.initiator() == Side::Server) == w && self.go_away[1 - w].is_some();
        self.abandoned.contains(&(id, w))
            && !self.reset_local.contains(&id)
            && !self.reset_seen.contains(&(id, w))
            && !may_be_refused
    }
}

/// What the harness knows the application did, to judge what the connections report.
#[derive(Default)]
struct Model {
    /// Every stream id seen, in order, for picking streams by index.
    streams: Vec<StreamId>,
    known: HashSet<StreamId>,
    /// Target each stream was opened with.
    targets: HashMap<StreamId, Target>,
    /// Streams whose StreamOpened event was seen.
    announced: HashSet<StreamId>,
    /// Bytes accepted by `write` on (stream, writing side).
    written: HashMap<(StreamId, usize), Vec<u8>>,
    /// Bytes read on (stream, reading side).
    read: HashMap<(StreamId, usize), usize>,
    /// `finish` succeeded on (stream, side).
    finished: HashSet<(StreamId, usize)>,
    /// EOF was read on (stream, side).
    eof: HashSet<(StreamId, usize)>,
    /// Code of a successful local `reset` on (stream, side).
    resets: HashMap<(StreamId, usize), u64>,
    /// Streams reset by either side, locally or by a StreamReset event.
    reset_any: HashSet<StreamId>,
    /// Streams reset by a local `reset` call (an `abandon` of an unfinished stream too).
    reset_local: HashSet<StreamId>,
    /// (stream, side) let go of by `abandon` after that side finished: what it wrote is owed.
    abandoned: HashSet<(StreamId, usize)>,
    /// (stream, side) that side was told of a reset (the peer aborted or refused it).
    reset_seen: HashSet<(StreamId, usize)>,
    /// Datagrams queued by each side and not yet matched at the peer.
    datagrams: [VecDeque<(u64, Bytes)>; 2],
    /// Control messages sent by each side and not yet delivered.
    controls: [VecDeque<Control>; 2],
    /// The first `go_away` of each side.
    go_away: [Option<(u64, String)>; 2],
    /// Something was injected: the peers no longer agree, only the safety bounds hold.
    injected: bool,
    /// The side's connection failed; it is no longer driven.
    dead: [bool; 2],
    total_bytes: usize,
}

struct Harness {
    pair: Pair,
    buf: BytesMut,
    m: Model,
    /// When each side last received bytes.
    last_rx: [Instant; 2],
}

impl Harness {
    fn conn(&mut self, side: Side) -> &mut Connection {
        match side {
            Side::Client => &mut self.pair.client,
            Side::Server => &mut self.pair.server,
        }
    }

    fn alive(&self, side: Side) -> bool {
        !self.m.dead[idx(side)]
    }

    fn pick(&self, n: u8) -> Option<StreamId> {
        if self.m.streams.is_empty() {
            None
        } else {
            Some(self.m.streams[usize::from(n) % self.m.streams.len()])
        }
    }

    fn learn(&mut self, id: StreamId) {
        if self.m.known.insert(id) {
            self.m.streams.push(id);
        }
    }

    /// A connection reported an error: legal only after an injection, or as a due idle timeout.
    fn failed(&mut self, side: Side, e: ConnectionError) {
        let now = self.pair.now;
        let idle = self.conn(side).config().idle_timeout;
        let silent = now.saturating_duration_since(self.last_rx[idx(side)]);
        assert!(
            self.m.injected || (e == ConnectionError::IdleTimeout && silent >= idle),
            "{side:?} failed without injection: {e} (silent for {silent:?})"
        );
        assert_eq!(
            self.conn(side).error(),
            Some(&e),
            "error() does not report the failure"
        );
        self.m.dead[idx(side)] = true;
    }

    /// Feeds bytes to `side` as if received from the wire.
    fn inject(&mut self, side: Side, bytes: Bytes) {
        self.m.injected = true;
        if !self.alive(side) {
            return;
        }
        let now = self.pair.now;
        if !bytes.is_empty() {
            self.last_rx[idx(side)] = now;
        }
        if let Err(e) = self.conn(side).handle_bytes(now, bytes) {
            self.failed(side, e);
        }
    }

    /// One batch from `from` to its peer; returns the bytes moved.
    fn transfer(&mut self, from: Side, batch: usize, fragment: usize) -> usize {
        let to = from.peer();
        if !self.alive(from) || !self.alive(to) {
            return 0;
        }
        let now = self.pair.now;
        let (src, dst) = match from {
            Side::Client => (&mut self.pair.client, &mut self.pair.server),
            Side::Server => (&mut self.pair.server, &mut self.pair.client),
        };
        match transfer(src, dst, &mut self.buf, batch, fragment, now) {
            Ok(n) => {
                if n > 0 {
                    self.last_rx[idx(to)] = now;
                }
                n
            }
            Err(e) => {
                self.last_rx[idx(to)] = now;
                self.failed(to, e);
                1
            }
        }
    }

    fn step(&mut self, batch: usize, fragment: usize) -> bool {
        let a = self.transfer(Side::Client, batch, fragment);
        self.events();
        let b = self.transfer(Side::Server, batch, fragment);
        self.events();
        a + b > 0
    }

    /// Drains both sides' events, checking each against what the peer did.
    fn events(&mut self) {
        for side in [Side::Client, Side::Server] {
            while let Some(e) = self.conn(side).poll_event() {
                self.event(side, e);
            }
        }
    }

    fn event(&mut self, side: Side, e: Event) {
        let peer = idx(side.peer());
        let check = !self.m.injected;
        match e {
            Event::StreamOpened { id, target } => {
                if check {
                    assert_eq!(
                        id.initiator(),
                        side.peer(),
                        "{side:?} told of its own stream"
                    );
                    assert_eq!(
                        self.m.targets.get(&id),
                        Some(&target),
                        "StreamOpened({id:?}) with a target the peer did not open"
                    );
                    assert!(self.m.announced.insert(id), "StreamOpened({id:?}) twice");
                }
                self.learn(id);
            }
            Event::Readable(id) | Event::Writable(id) => {
                if check {
                    assert!(self.m.known.contains(&id), "event for unknown {id:?}");
                }
            }
            Event::Finished(id) => {
                if check {
                    assert!(
                        self.m.finished.contains(&(id, peer)),
                        "Finished({id:?}) but the peer never finished it"
                    );
                }
            }
            Event::StreamReset { id, code } => {
                if check {
                    // Codes beyond the varint range are clamped (or, in older versions, the
                    // reset is not sent at all).
                    let by_peer = self
                        .m
                        .resets
                        .get(&(id, peer))
                        .is_some_and(|c| (*c).min(varint::MAX) == code);
                    let refused = code == reset_code::REFUSED
                        && id.initiator() == side
                        && self.m.go_away[peer].is_some();
                    assert!(
                        by_peer || refused,
                        "StreamReset({id:?}, {code}) on {side:?} that the peer did not send"
                    );
                }
                self.m.reset_any.insert(id);
                self.m.reset_seen.insert((id, idx(side)));
            }
            Event::GoingAway { code, reason } => {
                if check {
                    // The code may be clamped to the varint range, the reason truncated.
                    let sent = self.m.go_away[peer].as_ref();
                    assert!(
                        sent.is_some_and(|(c, r)| (*c).min(varint::MAX) == code
                            && r.starts_with(&reason)
                            && (reason.len() == r.len() || reason.len() <= MAX_TARGET_LEN)),
                        "GoingAway({code}, {reason:?}) but the peer sent {sent:?}"
                    );
                }
            }
            Event::Control(c) => {
                if check {
                    assert_eq!(
                        self.m.controls[peer].pop_front().as_ref(),
                        Some(&c),
                        "control message out of order or never sent"
                    );
                }
            }
            Event::StreamsAvailable | Event::DatagramReadable | Event::HeartbeatRtt(_) => {}
        }
    }

    /// One `read`; returns the bytes read (None when nothing more will come now).
    fn read(&mut self, side: Side, id: StreamId, max: usize) -> Option<usize> {
        let me = idx(side);
        let peer = idx(side.peer());
        let check = !self.m.injected;
        match self.conn(side).read(id, max) {
            Ok(ReadOutcome::Data(chunk)) => {
                assert!(!chunk.is_empty(), "read returned an empty chunk");
                assert!(chunk.len() <= max.max(1), "read returned more than asked");
                let off = self.m.read.entry((id, me)).or_default();
                let start = *off;
                *off += chunk.len();
                if check {
                    let w = self
                        .m
                        .written
                        .get(&(id, peer))
                        .map(Vec::as_slice)
                        .unwrap_or(&[]);
                    assert!(
                        start + chunk.len() <= w.len(),
                        "{side:?} read {} bytes of {id:?} beyond the {} written",
                        start + chunk.len(),
                        w.len()
                    );
                    assert!(
                        w[start..start + chunk.len()] == chunk[..],
                        "{side:?} read wrong bytes at offset {start} of {id:?}"
                    );
                }
                Some(chunk.len())
            }
            Ok(ReadOutcome::Eof) => {
                if check {
                    assert!(
                        self.m.finished.contains(&(id, peer)),
                        "EOF on {id:?} that the peer never finished"
                    );
                    let w = self.m.written.get(&(id, peer)).map_or(0, Vec::len);
                    let r = self.m.read.get(&(id, me)).copied().unwrap_or(0);
                    assert_eq!(r, w, "EOF on {id:?} after {r} of {w} bytes");
                }
                self.m.eof.insert((id, me));
                None
            }
            Ok(ReadOutcome::WouldBlock) | Err(_) => None,
        }
    }

    /// Reads everything readable on every stream; returns the bytes read.
    fn read_all(&mut self, side: Side) -> usize {
        let mut total = 0;
        for i in 0..self.m.streams.len() {
            let id = self.m.streams[i];
            while let Some(n) = self.read(side, id, 64 << 10) {
                total += n;
            }
        }
        total
    }

    fn recv_datagram(&mut self, side: Side) -> bool {
        let Some(d) = self.conn(side).recv_datagram() else {
            return false;
        };
        if !self.m.injected {
            let sent = &mut self.m.datagrams[idx(side.peer())];
            loop {
                match sent.pop_front() {
                    Some((flow, data)) if flow == d.flow && data == d.data => break,
                    Some(_) => {} // dropped on the way (drop-oldest queues)
                    None => panic!("{side:?} received a datagram never sent, or out of order"),
                }
            }
        }
        true
    }

    fn invariants(&mut self) {
        for side in [Side::Client, Side::Server] {
            let c = self.conn(side);
            let cfg = c.config();
            assert!(
                c.recv_buffered() <= cfg.connection_window,
                "{side:?} buffers {} received bytes, over its connection window {}",
                c.recv_buffered(),
                cfg.connection_window
            );
            assert!(
                c.datagrams_buffered() <= cfg.datagram_queue_bytes,
                "{side:?} buffers {} datagram bytes, over datagram_queue_bytes {}",
                c.datagrams_buffered(),
                cfg.datagram_queue_bytes
            );
            assert!(
                c.send_buffered() <= cfg.connection_send_buffer,
                "{side:?} queues {} bytes to send, over connection_send_buffer {}",
                c.send_buffered(),
                cfg.connection_send_buffer
            );
        }
    }

    fn op(&mut self, op: Op) {
        match op {
            Op::Open { side, target } => {
                if !self.alive(side) {
                    return;
                }
                if let Ok(id) = self.conn(side).open_stream(&target) {
                    assert_eq!(id.initiator(), side, "opened a stream of the other side");
                    assert!(
                        self.m.injected || !self.m.known.contains(&id),
                        "stream id {id:?} reused"
                    );
                    self.m.targets.insert(id, Target::parse(&target));
                    self.learn(id);
                }
            }
            Op::Write {
                side,
                stream,
                len,
                seed,
            } => {
                let Some(id) = self.pick(stream) else { return };
                let len = usize::from(len);
                if !self.alive(side) || self.m.total_bytes + len > MAX_TOTAL_BYTES {
                    return;
                }
                self.m.total_bytes += len;
                let w = self.m.written.entry((id, idx(side))).or_default();
                let data = pattern(len, seed, w.len());
                let finished = self.m.finished.contains(&(id, idx(side)));
                if let Ok(n) = self.conn(side).write(id, data.clone()) {
                    assert!(n <= len, "write accepted more than given");
                    assert!(
                        self.m.injected || !finished,
                        "write accepted after finish on {id:?}"
                    );
                    let w = self.m.written.entry((id, idx(side))).or_default();
                    w.extend_from_slice(&data[..n]);
                }
            }
            Op::Finish { side, stream } => {
                let Some(id) = self.pick(stream) else { return };
                if self.alive(side) && self.conn(side).finish(id).is_ok() {
                    self.m.finished.insert((id, idx(side)));
                }
            }
            Op::Reset { side, stream, code } => {
                let Some(id) = self.pick(stream) else { return };
                let code = code.get();
                if self.alive(side) && self.conn(side).reset(id, code).is_ok() {
                    self.m.resets.insert((id, idx(side)), code);
                    self.m.reset_any.insert(id);
                    self.m.reset_local.insert(id);
                }
            }
            Op::Abandon { side, stream, code } => {
                let Some(id) = self.pick(stream) else { return };
                let code = code.get();
                let finished = self.m.finished.contains(&(id, idx(side)));
                let now = self.pair.now;
                if self.alive(side) && self.conn(side).abandon(now, id, code).is_ok() {
                    // The peer may be told this code (at once, or after the FIN).
                    self.m.resets.insert((id, idx(side)), code);
                    if finished {
                        self.m.abandoned.insert((id, idx(side)));
                    } else {
                        self.m.reset_any.insert(id);
                        self.m.reset_local.insert(id);
                    }
                }
            }
            Op::Read { side, stream, max } => {
                let Some(id) = self.pick(stream) else { return };
                if self.alive(side) {
                    self.read(side, id, usize::from(max));
                }
            }
            Op::ReadAll { side } => {
                if self.alive(side) {
                    self.read_all(side);
                }
            }
            Op::SendDatagram {
                side,
                flow,
                len,
                seed,
            } => {
                let len = usize::from(len);
                if !self.alive(side) || self.m.total_bytes + len > MAX_TOTAL_BYTES {
                    return;
                }
                self.m.total_bytes += len;
                let flow = flow.get();
                let data = pattern(len, seed, 0);
                if self.conn(side).send_datagram(flow, data.clone()).is_ok() {
                    self.m.datagrams[idx(side)].push_back((flow, data));
                }
            }
            Op::RecvDatagram { side } => {
                if self.alive(side) {
                    self.recv_datagram(side);
                }
            }
            Op::GoAway { side, code, reason } => {
                if !self.alive(side) {
                    return;
                }
                let code = code.get();
                self.conn(side).go_away(code, &reason);
                if self.m.go_away[idx(side)].is_none() {
                    self.m.go_away[idx(side)] = Some((code, reason));
                }
            }
            Op::SendControl { side, msg } => {
                let msg = msg.get();
                if !self.alive(side)
                    || matches!(
                        msg,
                        Control::Heartbeat { .. } | Control::HeartbeatAck { .. }
                    )
                {
                    return;
                }
                if self.conn(side).send_control(msg.clone()).is_ok() {
                    self.m.controls[idx(side)].push_back(msg);
                }
            }
            Op::Advance { millis } => {
                self.pair.now += Duration::from_millis(u64::from(millis));
                let now = self.pair.now;
                for side in [Side::Client, Side::Server] {
                    if !self.alive(side) {
                        continue;
                    }
                    let idle = self.conn(side).config().idle_timeout;
                    let silent = now.saturating_duration_since(self.last_rx[idx(side)]);
                    match self.conn(side).handle_timeout(now) {
                        Ok(()) => assert!(
                            silent < idle,
                            "{side:?} silent for {silent:?} without an idle timeout"
                        ),
                        Err(e) => self.failed(side, e),
                    }
                }
            }
            Op::Step {
                fragment,
                small_batch,
            } => {
                let batch = if small_batch { 0 } else { BATCH };
                self.step(batch, usize::from(fragment));
            }
            Op::Transfer { from, fragment } => {
                self.transfer(from, BATCH, usize::from(fragment));
            }
            Op::Drive { steps } => {
                for _ in 0..usize::from(steps).min(MAX_DRIVE_STEPS) {
                    if !self.step(BATCH, 0) {
                        break;
                    }
                }
            }
            Op::SingleFrameBatches { side, on } => {
                self.conn(side).set_single_frame_batches(on);
            }
            Op::InjectRaw { side, bytes } => self.inject(side, Bytes::from(bytes)),
            Op::InjectFrame { side, frame } => {
                let frame = frame.get();
                if let Some(wire) = check_roundtrip(&frame) {
                    self.inject(side, wire);
                }
            }
        }
    }

    /// Drives the pair to quiescence while reading everything, then checks that every
    /// accepted byte arrived and every FIN was seen.
    fn settle(&mut self) {
        if self.m.injected || self.m.dead.iter().any(|d| *d) {
            return;
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(
                rounds <= MAX_SETTLE_ROUNDS,
                "no quiescence after {MAX_SETTLE_ROUNDS} rounds"
            );
            let mut progress = self.step(BATCH, 0);
            for side in [Side::Client, Side::Server] {
                progress |= self.read_all(side) > 0;
                while self.recv_datagram(side) {
                    progress = true;
                }
            }
            self.events();
            self.invariants();
            assert!(
                self.m.dead.iter().all(|d| !d),
                "a connection failed while settling"
            );
            if !progress {
                break;
            }
        }
        for (&(id, w), data) in &self.m.written {
            // A side that finished and let go is owed its bytes whatever reset followed,
            // unless a side reset the stream by its own call.
            if !self.m.promised(id, w) {
                continue;
            }
            let r = 1 - w;
            let got = self.m.read.get(&(id, r)).copied().unwrap_or(0);
            assert_eq!(
                got,
                data.len(),
                "stream {id:?}: {} of {} written bytes arrived after settling",
                got,
                data.len()
            );
        }
        for &(id, w) in &self.m.finished {
            if self.m.promised(id, w) {
                assert!(
                    self.m.eof.contains(&(id, 1 - w)),
                    "stream {id:?}: FIN never reached the reader after settling"
                );
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let client = input
        .client
        .as_ref()
        .map_or_else(Config::default, FuzzConfig::config);
    let server = input
        .server
        .as_ref()
        .map_or_else(Config::default, FuzzConfig::config);
    if client.validate().is_err() || server.validate().is_err() {
        return;
    }
    let pair = Pair::with_configs(client, server);
    let now = pair.now;
    let mut h = Harness {
        pair,
        buf: BytesMut::new(),
        m: Model::default(),
        last_rx: [now, now],
    };
    for op in input.ops.into_iter().take(MAX_OPS) {
        h.op(op);
        h.events();
        h.invariants();
    }
    h.settle();
});
