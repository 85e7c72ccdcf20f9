//! The sender's budgets under any interleaving of writes, sends, credit and resets: the
//! connection's running totals always equal the sums over its streams, never pass their
//! bounds, a write takes exactly what [`Connection::send_room`] offered, no writer sleeps
//! while it may write and nothing could wake it, and every writer left blocked is woken
//! once the peer reads everything.
//!
//! The totals are kept incrementally (write, credit, send and free each adjust them), so
//! a path that forgets one would drift: a total too high starves writers for ever, one too
//! low lets stuck streams take the room the others need.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::{Connection, Event};
use crate::{Config, Frame, Side, StreamId};

const STREAMS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// The application writes up to this many bytes on stream `.0`.
    Write(usize, usize),
    /// The peer grants stream `.0` this much credit.
    Credit(usize, u64),
    /// The peer grants the connection this much credit.
    ConnCredit(u64),
    /// The driver takes a batch of about this many bytes for the wire.
    Transmit(usize),
    /// The peer resets stream `.0`.
    PeerReset(usize),
    /// The application resets stream `.0`.
    LocalReset(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..STREAMS, 1usize..1_500_000).prop_map(|(s, n)| Op::Write(s, n)),
        3 => (0..STREAMS, 1u64..1_500_000).prop_map(|(s, n)| Op::Credit(s, n)),
        1 => (1u64..2_000_000).prop_map(Op::ConnCredit),
        3 => (1usize..600_000).prop_map(Op::Transmit),
        1 => (0..STREAMS).prop_map(Op::PeerReset),
        1 => (0..STREAMS).prop_map(Op::LocalReset),
    ]
}

/// Feeds one frame from the peer.
fn from_peer(c: &mut Connection, frame: Frame) {
    let mut b = BytesMut::new();
    frame.encode(&mut b).unwrap();
    c.handle_bytes(Instant::now(), b.freeze())
        .expect("a valid frame from the peer");
}

/// The totals against the sums over the streams, and their bounds.
fn check_totals(c: &Connection) -> Result<(), TestCaseError> {
    let buffered: usize = c.streams.values().map(|s| s.send_buffered).sum();
    let uncredited: usize = c.streams.values().map(|s| s.uncredited()).sum();
    prop_assert_eq!(c.send_buffered_total, buffered, "queued total drifted");
    prop_assert_eq!(
        c.send_uncredited_total,
        uncredited,
        "uncredited total drifted"
    );
    prop_assert!(buffered <= c.config.connection_send_buffer);
    prop_assert!(uncredited <= c.uncredited_budget());
    for s in c.streams.values() {
        prop_assert!(s.send_buffered <= c.config.stream_send_buffer);
    }
    Ok(())
}

/// No writer sleeps while it may write and nothing is left that could wake it: when no
/// stream can send a byte (the only later wake-up is a send freeing room), a call to
/// `wake_writers` must find nobody to wake.
fn check_no_stalled_writer(c: &mut Connection) -> Result<(), TestCaseError> {
    let could_send = c
        .streams
        .values()
        .any(|s| s.send_buffered > 0 && s.send_credit.available() > 0);
    if could_send {
        return Ok(());
    }
    c.wake_writers();
    while let Some(e) = c.poll_event() {
        if let Event::Writable(id) = e {
            prop_assert!(false, "{:?} could write but was left asleep", id);
        }
    }
    Ok(())
}

/// Takes every pending event, noting which streams were told they may write again.
fn drain_events(c: &mut Connection, writable: &mut Vec<StreamId>) {
    while let Some(e) = c.poll_event() {
        if let Event::Writable(id) = e {
            writable.push(id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn send_totals_stay_exact_and_blocked_writers_wake(ops in proptest::collection::vec(op(), 1..120)) {
        let mut c = Connection::new(Side::Client, Config::default(), Instant::now()).unwrap();
        let ids: Vec<StreamId> = (0..STREAMS).map(|_| c.open_stream("t").unwrap()).collect();
        let mut live = [true; STREAMS];
        // Credit granted per stream (and to the connection), kept below the protocol's
        // window limit so every grant is valid.
        let mut granted = [0u64; STREAMS];
        let mut conn_granted = 0u64;
        const GRANT_CAP: u64 = 1 << 29;
        let mut out = BytesMut::new();
        for op in ops {
            match op {
                Op::Write(s, n) if live[s] => {
                    let room = c.send_room(ids[s]).unwrap();
                    let took = c.write(ids[s], Bytes::from(vec![0u8; n])).unwrap();
                    prop_assert_eq!(took, n.min(room), "write took other than send_room offered");
                }
                Op::Credit(s, n) if live[s] && granted[s] + n < GRANT_CAP => {
                    granted[s] += n;
                    from_peer(&mut c, Frame::StreamCredit { id: ids[s], increment: n });
                }
                Op::ConnCredit(n) if conn_granted + n < GRANT_CAP => {
                    conn_granted += n;
                    from_peer(&mut c, Frame::ConnCredit { increment: n });
                }
                Op::Transmit(max) => {
                    out.clear();
                    c.poll_transmit(&mut out, max);
                }
                Op::PeerReset(s) if live[s] => {
                    live[s] = false;
                    from_peer(&mut c, Frame::StreamReset { id: ids[s], code: 1 });
                }
                Op::LocalReset(s) if live[s] => {
                    live[s] = false;
                    c.reset(ids[s], 1).unwrap();
                }
                _ => {}
            }
            check_totals(&c)?;
            // Wake-ups during the ops need no answer: the application writes when it likes.
            drain_events(&mut c, &mut Vec::new());
            check_no_stalled_writer(&mut c)?;
        }
        // The peer now reads everything: ample credit for every live stream and the
        // connection, and the driver sends until nothing is left.
        let blocked: Vec<StreamId> = c.blocked_writers.clone();
        for (s, id) in ids.iter().enumerate() {
            if live[s] && c.streams.contains_key(id) {
                from_peer(&mut c, Frame::StreamCredit { id: *id, increment: GRANT_CAP });
            }
        }
        from_peer(&mut c, Frame::ConnCredit { increment: GRANT_CAP });
        let mut writable = Vec::new();
        for _ in 0..64 {
            out.clear();
            if c.poll_transmit(&mut out, 1 << 20) == 0 {
                break;
            }
            drain_events(&mut c, &mut writable);
        }
        drain_events(&mut c, &mut writable);
        check_totals(&c)?;
        prop_assert_eq!(c.send_buffered_total, 0, "bytes left unsent with ample credit");
        for id in blocked {
            if c.streams.contains_key(&id) {
                prop_assert!(writable.contains(&id), "{:?} was blocked and never woken", id);
            }
        }
    }
}
