//! Property test: a deterministic in-memory pair driven by random operation sequences
//! delivers every stream byte-exact and in order, honours half-close, and keeps the
//! receive buffers within the configured windows. A side that finishes and then lets go
//! of a stream (`abandon`) still delivers everything it wrote; bytes read after a reset
//! are still in order, and an EOF still means every byte.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::{Config, Connection, Event, ReadOutcome, StreamId};
use culvert_testkit::Pair;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Open {
        client: bool,
    },
    Write {
        client: bool,
        stream: usize,
        len: usize,
    },
    Finish {
        client: bool,
        stream: usize,
    },
    Reset {
        client: bool,
        stream: usize,
    },
    Abandon {
        client: bool,
        stream: usize,
    },
    Read {
        client: bool,
        stream: usize,
        max: usize,
    },
    Datagram {
        client: bool,
        len: usize,
    },
    Advance {
        millis: u64,
    },
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(|client| Op::Open { client }),
        6 => (any::<bool>(), 0..8usize, 1..200_000usize).prop_map(|(client, stream, len)| Op::Write { client, stream, len }),
        2 => (any::<bool>(), 0..8usize).prop_map(|(client, stream)| Op::Finish { client, stream }),
        1 => (any::<bool>(), 0..8usize).prop_map(|(client, stream)| Op::Reset { client, stream }),
        1 => (any::<bool>(), 0..8usize).prop_map(|(client, stream)| Op::Abandon { client, stream }),
        6 => (any::<bool>(), 0..8usize, 1..100_000usize).prop_map(|(client, stream, max)| Op::Read { client, stream, max }),
        2 => (any::<bool>(), 0..2_000usize).prop_map(|(client, len)| Op::Datagram { client, len }),
        1 => (0..5_000u64).prop_map(|millis| Op::Advance { millis }),
        6 => Just(Op::Step),
    ]
}

/// What one direction of one stream has carried so far.
#[derive(Default)]
struct Dir {
    written: Vec<u8>,
    read: Vec<u8>,
    finished: bool,
    eof: bool,
}

#[derive(Default)]
struct Model {
    /// Streams by id; each has (client→server, server→client).
    streams: HashMap<StreamId, (Dir, Dir)>,
    /// Ids in opening order, as each side knows them.
    known: [Vec<StreamId>; 2],
    /// Aborted by a `reset` call: no delivery promised.
    reset: Vec<StreamId>,
    /// A side was told of a reset: it writes and finishes no more.
    reset_seen: [Vec<StreamId>; 2],
    /// Let go of by one side (`true`: the client) after it finished writing.
    abandoned: HashMap<StreamId, bool>,
    counter: u8,
}

fn conn(p: &mut Pair, client: bool) -> &mut Connection {
    if client {
        &mut p.client
    } else {
        &mut p.server
    }
}

fn dir(m: &mut Model, id: StreamId, from_client: bool) -> &mut Dir {
    let e = m.streams.get_mut(&id).expect("stream in model");
    if from_client {
        &mut e.0
    } else {
        &mut e.1
    }
}

fn absorb_events(p: &mut Pair, m: &mut Model) {
    p.collect_events();
    for (side, events) in [
        (0usize, std::mem::take(&mut p.client_events)),
        (1, std::mem::take(&mut p.server_events)),
    ] {
        for e in events {
            match e {
                Event::StreamOpened { id, .. } => m.known[side].push(id),
                // What the peer had sent before finishing stays readable: reads go on.
                Event::StreamReset { id, .. } => m.reset_seen[side].push(id),
                _ => {}
            }
        }
    }
}

/// Whether `client`'s side may no longer write or finish `id`.
fn write_over(m: &Model, id: StreamId, client: bool) -> bool {
    m.reset.contains(&id)
        || m.reset_seen[usize::from(!client)].contains(&id)
        || m.abandoned.contains_key(&id)
}

fn do_read(p: &mut Pair, m: &mut Model, client: bool, id: StreamId, max: usize) {
    if m.abandoned.get(&id) == Some(&client) {
        return;
    }
    match conn(p, client).read(id, max) {
        Ok(ReadOutcome::Data(b)) => {
            assert!(b.len() <= max.max(1));
            let d = dir(m, id, !client);
            d.read.extend_from_slice(&b);
            assert!(d.read.len() <= d.written.len(), "read more than written");
            assert!(
                d.written.starts_with(&d.read),
                "bytes out of order or corrupted"
            );
        }
        Ok(ReadOutcome::Eof) => {
            let d = dir(m, id, !client);
            assert!(d.finished, "EOF without FIN");
            assert_eq!(d.read, d.written, "EOF before every byte arrived");
            d.eof = true;
        }
        Ok(ReadOutcome::WouldBlock) | Err(_) => {}
    }
}

fn check_memory(p: &Pair, cfg: &Config) {
    for c in [&p.client, &p.server] {
        assert!(
            c.recv_buffered() <= cfg.connection_window,
            "receive buffering past the window"
        );
        assert!(c.datagrams_buffered() <= cfg.datagram_queue_bytes);
        assert!(c.send_buffered() <= cfg.connection_send_buffer);
    }
}

fn run(ops: Vec<Op>, fragment: usize) {
    let cfg = Config {
        connection_window: 2 * 1024 * 1024,
        stream_send_buffer: 300_000,
        connection_send_buffer: 1_000_000,
        ..Config::default()
    };
    let mut p = Pair::new(cfg.clone());
    p.fragment = fragment;
    p.batch = 100_000;
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Open { client } => {
                if let Ok(id) = conn(&mut p, client).open_stream("t") {
                    m.streams.insert(id, Default::default());
                    m.known[usize::from(!client)].push(id);
                }
            }
            Op::Write {
                client,
                stream,
                len,
            } => {
                let side = usize::from(!client);
                let Some(&id) = m.known[side].get(stream) else {
                    continue;
                };
                if write_over(&m, id, client) || dir(&mut m, id, client).finished {
                    continue;
                }
                m.counter = m.counter.wrapping_add(1);
                let start = m.counter;
                let data: Vec<u8> = (0..len)
                    .map(|i| start.wrapping_add((i % 253) as u8))
                    .collect();
                let n = conn(&mut p, client)
                    .write(id, Bytes::from(data.clone()))
                    .unwrap();
                dir(&mut m, id, client)
                    .written
                    .extend_from_slice(&data[..n]);
            }
            Op::Finish { client, stream } => {
                let side = usize::from(!client);
                let Some(&id) = m.known[side].get(stream) else {
                    continue;
                };
                if write_over(&m, id, client) || dir(&mut m, id, client).finished {
                    continue;
                }
                conn(&mut p, client).finish(id).unwrap();
                dir(&mut m, id, client).finished = true;
            }
            Op::Reset { client, stream } => {
                let side = usize::from(!client);
                let Some(&id) = m.known[side].get(stream) else {
                    continue;
                };
                if m.reset.contains(&id) || m.abandoned.contains_key(&id) {
                    continue;
                }
                if conn(&mut p, client).reset(id, 0).is_ok() {
                    m.reset.push(id);
                }
            }
            Op::Abandon { client, stream } => {
                let side = usize::from(!client);
                let Some(&id) = m.known[side].get(stream) else {
                    continue;
                };
                if m.reset.contains(&id)
                    || m.abandoned.contains_key(&id)
                    || !dir(&mut m, id, client).finished
                {
                    continue;
                }
                // It may be gone already (both directions done); that is no error here.
                let now = p.now;
                if conn(&mut p, client).abandon(now, id, 0).is_ok() {
                    m.abandoned.insert(id, client);
                }
            }
            Op::Read {
                client,
                stream,
                max,
            } => {
                let side = usize::from(!client);
                let Some(&id) = m.known[side].get(stream) else {
                    continue;
                };
                do_read(&mut p, &mut m, client, id, max);
            }
            Op::Datagram { client, len } => {
                conn(&mut p, client)
                    .send_datagram(7, Bytes::from(vec![1u8; len]))
                    .unwrap();
            }
            Op::Advance { millis } => {
                // Advance in steps shorter than the heartbeat interval, exchanging heartbeats,
                // so a live pair never idles out.
                p.advance(Duration::from_millis(millis)).unwrap();
                p.step().unwrap();
            }
            Op::Step => {
                p.step().unwrap();
            }
        }
        absorb_events(&mut p, &mut m);
        check_memory(&p, &cfg);
    }
    // Finish every direction still open, then drain everything.
    let ids: Vec<StreamId> = m.streams.keys().copied().collect();
    for &id in &ids {
        for client in [true, false] {
            let knows = m.known[usize::from(!client)].contains(&id);
            if knows && !write_over(&m, id, client) && !dir(&mut m, id, client).finished {
                conn(&mut p, client).finish(id).unwrap();
                dir(&mut m, id, client).finished = true;
            }
        }
    }
    for _ in 0..10_000 {
        let moved = p.step().unwrap();
        absorb_events(&mut p, &mut m);
        let mut progress = moved;
        for client in [true, false] {
            let known = m.known[usize::from(!client)].clone();
            for id in known {
                let before = m.streams.get(&id).map(|e| {
                    if client {
                        e.1.read.len()
                    } else {
                        e.0.read.len()
                    }
                });
                do_read(&mut p, &mut m, client, id, usize::MAX);
                let after = m.streams.get(&id).map(|e| {
                    if client {
                        e.1.read.len()
                    } else {
                        e.0.read.len()
                    }
                });
                progress |= before != after;
            }
        }
        // Late finishes for streams the peer learned of after the first pass.
        for &id in &ids {
            for client in [true, false] {
                let knows = m.known[usize::from(!client)].contains(&id);
                if knows && !write_over(&m, id, client) && !dir(&mut m, id, client).finished {
                    conn(&mut p, client).finish(id).unwrap();
                    dir(&mut m, id, client).finished = true;
                    progress = true;
                }
            }
        }
        check_memory(&p, &cfg);
        if !progress {
            break;
        }
    }
    for (id, (a, b)) in &m.streams {
        if m.reset.contains(id) {
            continue;
        }
        // An abandoned stream owes only what its abandoning side wrote.
        let owed: Vec<&Dir> = match m.abandoned.get(id) {
            Some(true) => vec![a],
            Some(false) => vec![b],
            None => vec![a, b],
        };
        for d in owed {
            assert!(d.eof, "stream {id} never reached EOF");
            assert_eq!(d.read.len(), d.written.len());
        }
    }
    assert_eq!(p.client.open_streams(), 0, "client leaked stream state");
    assert_eq!(p.server.open_streams(), 0, "server leaked stream state");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_deliver_every_byte(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, 0);
    }

    #[test]
    fn random_operations_with_fragmented_messages(ops in proptest::collection::vec(op(), 1..80), frag in 1..5_000usize) {
        run(ops, frag);
    }
}
