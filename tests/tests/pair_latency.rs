//! Two connections in memory with a one-way latency: the heartbeat measures the round trip,
//! and a stream's receive window grows by the round-trip-driven auto-tuning until one
//! stream fills the path as far as its ceiling allows. Without latency every credit is
//! "within two round trips" and the tuning is never put to the test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use culvert_proto::{Config, Event, ReadOutcome, StreamId};
use culvert_testkit::Pair;

/// One-way delay: a 400 ms round trip, four times the 100 ms the tuning assumes before it
/// has measured one.
const LATENCY: Duration = Duration::from_millis(200);

/// Bytes `c` holds for stream `id`, read to the end of what has arrived.
fn drain(c: &mut culvert_proto::Connection, id: StreamId) -> usize {
    let mut n = 0;
    loop {
        match c.read(id, usize::MAX).unwrap() {
            ReadOutcome::Data(b) => n += b.len(),
            ReadOutcome::WouldBlock | ReadOutcome::Eof => return n,
        }
    }
}

/// `rtt` is twice [`LATENCY`] (a heartbeat at the connection's first instant carries 1 µs,
/// as 0 means none).
fn assert_round_trip(rtt: Option<Duration>) {
    let rtt = rtt.expect("a round trip measured");
    let want = 2 * LATENCY;
    assert!(
        rtt <= want && want - rtt <= Duration::from_millis(1),
        "measured {rtt:?}, the path's round trip is {want:?}"
    );
}

#[test]
fn heartbeats_measure_the_round_trip() {
    let mut p = Pair::new(Config::default()).with_latency(LATENCY);
    p.client.heartbeat_now(p.now);
    p.server.heartbeat_now(p.now);
    p.advance(Duration::ZERO).unwrap();
    p.drive(100).unwrap();
    assert_eq!(p.in_flight(), 0, "the heartbeats and their answers arrived");
    assert_round_trip(p.client.rtt());
    assert_round_trip(p.server.rtt());
}

/// One stream, a sender that always has data and a reader that reads everything as it
/// arrives: what arrives per round trip is what the window lets be in flight. The first
/// round trip carries at most the initial stream window (no credit can have come back);
/// later ones must carry well above it (the window grew), but never much above the
/// stream's ceiling (a quarter of the connection window), which bounds what a stuck stream
/// can hold.
#[test]
fn the_stream_window_grows_to_fill_a_long_path() {
    let config = Config::default();
    let ceiling = config
        .max_stream_window
        .min(config.connection_window / 4)
        .max(config.stream_window) as usize;
    let initial = config.stream_window as usize;
    let mut p = Pair::new(config).with_latency(LATENCY);
    p.client.heartbeat_now(p.now);
    p.server.heartbeat_now(p.now);
    p.advance(Duration::ZERO).unwrap();
    p.drive(100).unwrap();
    assert_round_trip(p.server.rtt());

    let rtt = 2 * LATENCY;
    let rounds = 30u32;
    let start = p.now;
    let end = start + rtt * rounds;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let id = p.client.open_stream("svc").unwrap();
    let mut sid = None;
    let mut total = 0usize;
    // (time, bytes read so far) after every read.
    let mut samples: Vec<(Instant, usize)> = vec![(start, 0)];
    for _ in 0..1_000_000 {
        if p.now >= end {
            break;
        }
        while p.client.write(id, chunk.clone()).unwrap_or(0) > 0 {}
        let moved = p.step().unwrap();
        p.collect_events();
        for e in p.server_events.drain(..) {
            if let Event::StreamOpened { id, .. } = e {
                sid = Some(id);
            }
        }
        if let Some(s) = sid {
            let n = drain(&mut p.server, s);
            if n > 0 {
                total += n;
                samples.push((p.now, total));
            }
        }
        if !moved {
            let next = p
                .next_arrival()
                .expect("a stream that always has data keeps the wire busy");
            p.advance(next.saturating_duration_since(p.now)).unwrap();
        }
    }
    assert!(p.now >= end, "the simulation ran {rounds} round trips");
    // Bytes read in round trip `i` (counted from the stream's first bytes' arrival).
    let read_by = |t: Instant| {
        samples
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |s| s.1)
    };
    let per_round: Vec<usize> = (0..rounds)
        .map(|i| read_by(start + rtt * (i + 1)) - read_by(start + rtt * i))
        .collect();
    eprintln!(
        "KiB read per round trip: {:?}",
        per_round.iter().map(|b| b >> 10).collect::<Vec<_>>()
    );
    let late = per_round[rounds as usize - 5..].iter().sum::<usize>() / 5;
    assert!(
        per_round[0] <= initial,
        "the first round trip carried {} B, more than the initial window of {initial} B \
         (no credit can have come back yet)",
        per_round[0]
    );
    assert!(
        late >= 2 * initial,
        "the window did not grow: {late} B per round trip at the end, initial window {initial} B"
    );
    assert!(
        per_round.iter().all(|&b| b <= ceiling + ceiling / 4),
        "a round trip carried more than the stream's ceiling of {ceiling} B: {per_round:?}"
    );
}
