//! A peer that never reads and floods opens the application refuses: the control queue
//! stays under its cap, the resets this side generates are capped, and the connection
//! ends with a GoAway that says why (issue 13, item 10).

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{goaway_code, reset_code, Connection, Event};
use crate::{Config, ConnectionError, Frame, FrameDecoder, Side, StreamId};

/// Feeds one StreamOpen from the hostile client and refuses it as the server would (a
/// name no service holds). `Err` once the connection failed.
fn open_and_refuse(c: &mut Connection, now: Instant, seq: u64) -> Result<(), ConnectionError> {
    let mut b = BytesMut::new();
    Frame::StreamOpen {
        id: StreamId::new(Side::Client, seq),
        target: crate::Target::Service(String::new()),
    }
    .encode(&mut b)
    .unwrap();
    c.handle_bytes(now, b.freeze())?;
    while let Some(ev) = c.poll_event() {
        if let Event::StreamOpened { id, .. } = ev {
            c.reset(id, reset_code::UNKNOWN_TARGET).unwrap();
        }
    }
    Ok(())
}

/// The GoAway the failed connection leaves to be written before the close.
fn final_goaway(c: &mut Connection) -> (u64, String) {
    let f = c.take_final_frame().expect("a GoAway explains the failure");
    let mut d = FrameDecoder::new();
    d.push(f);
    match d.next_frame() {
        Ok(Some(Frame::GoAway { code, reason })) => (code, reason),
        other => panic!("expected a GoAway, got {other:?}"),
    }
}

/// Floods refused opens, `step` apart, until the connection fails (bounded); checks the
/// control queue after each. Returns the error and the opens it took.
fn flood(c: &mut Connection, step: Duration, max_opens: u64) -> (ConnectionError, u64) {
    let mut now = Instant::now();
    let cap = c.config().max_control_queue;
    for seq in 0..max_opens {
        now += step;
        let r = open_and_refuse(c, now, seq);
        assert!(
            c.control_queued() <= cap,
            "control queue at {} bytes, cap {cap}",
            c.control_queued()
        );
        if let Err(e) = r {
            return (e, seq);
        }
    }
    panic!("{max_opens} refused opens and the connection is still up");
}

#[test]
fn refused_open_flood_hits_the_control_cap_and_goes_away() {
    // 1 ms apart: 1,000 resets a second, well under the reset limit, so only the queue
    // (the peer never reads) can end it.
    let mut c = Connection::new(Side::Server, Config::default(), Instant::now()).unwrap();
    let (e, opens) = flood(&mut c, Duration::from_millis(1), 200_000);
    assert!(
        matches!(e, ConnectionError::ControlQueueFull(_)),
        "{e} after {opens} opens"
    );
    assert_eq!(c.stats().control_queue_cap_hits, 1);
    assert_eq!(c.stats().reset_cap_hits, 0);
    assert_eq!(c.control_queued(), 0, "the queue is dropped on failure");
    let (code, reason) = final_goaway(&mut c);
    assert_eq!(code, goaway_code::ENHANCE_YOUR_CALM);
    assert!(reason.contains("not reading"), "{reason}");
    assert!(c.take_final_frame().is_none(), "the GoAway is written once");
    // Failed for good: nothing more is queued or sent.
    assert!(c
        .handle_bytes(Instant::now(), bytes::Bytes::from_static(b"x"))
        .is_err());
    let mut out = BytesMut::new();
    assert_eq!(c.poll_transmit(&mut out, 1 << 20), 0);
}

#[test]
fn reset_burst_hits_the_reset_cap_and_goes_away() {
    // All at one instant: past the burst allowance the resets this side generates end it.
    let config = Config::default();
    let burst = config.reset_burst;
    let mut c = Connection::new(Side::Server, config, Instant::now()).unwrap();
    let (e, opens) = flood(&mut c, Duration::ZERO, 100_000);
    assert!(
        matches!(e, ConnectionError::LocalResetFlood(_)),
        "{e} after {opens} opens"
    );
    assert_eq!(c.stats().resets_sent, burst);
    assert_eq!(c.stats().reset_cap_hits, 1);
    let (code, reason) = final_goaway(&mut c);
    assert_eq!(code, goaway_code::ENHANCE_YOUR_CALM);
    assert!(reason.contains("resets"), "{reason}");
}

#[test]
fn refusals_while_going_away_share_both_caps() {
    // A v1-style session refuses every open itself (going away): the same caps apply.
    let mut c = Connection::new(Side::Server, Config::default(), Instant::now()).unwrap();
    c.go_away(0, "bye");
    let mut now = Instant::now();
    let cap = c.config().max_control_queue;
    let mut failed = None;
    for seq in 0..200_000u64 {
        now += Duration::from_millis(1);
        let mut b = BytesMut::new();
        Frame::StreamOpen {
            id: StreamId::new(Side::Client, seq),
            target: "x".into(),
        }
        .encode(&mut b)
        .unwrap();
        let r = c.handle_bytes(now, b.freeze());
        assert!(c.control_queued() <= cap);
        if let Err(e) = r {
            failed = Some(e);
            break;
        }
    }
    assert!(matches!(failed, Some(ConnectionError::ControlQueueFull(_))));
    assert_eq!(final_goaway(&mut c).0, goaway_code::ENHANCE_YOUR_CALM);
}

#[test]
fn a_reading_peer_is_never_capped() {
    // The same rate of refused opens, but the peer reads: the queue drains every step.
    let mut c = Connection::new(Side::Server, Config::default(), Instant::now()).unwrap();
    let mut now = Instant::now();
    let mut out = BytesMut::new();
    for seq in 0..50_000u64 {
        now += Duration::from_millis(1);
        open_and_refuse(&mut c, now, seq).unwrap();
        out.clear();
        c.poll_transmit(&mut out, 1 << 20);
        assert_eq!(c.control_queued(), 0);
    }
    assert_eq!(c.stats().resets_sent, 50_000);
    assert!(c.take_final_frame().is_none());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
    /// Whatever the pace of the flood and however often the peer reads a little, the
    /// queue never passes its cap, and a peer that stops reading is always ended with a
    /// GoAway (by the queue or by the reset cap, whichever comes first).
    #[test]
    fn any_pace_stays_under_the_cap(
        steps_us in proptest::collection::vec(0u64..3_000, 1..16),
        read_every in proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..500],
        stop_reading_at in 0u64..5_000,
    ) {
        let mut c = Connection::new(Side::Server, Config::default(), Instant::now()).unwrap();
        let mut now = Instant::now();
        let cap = c.config().max_control_queue;
        let mut out = BytesMut::new();
        let mut ended = None;
        for seq in 0..300_000u64 {
            now += Duration::from_micros(steps_us[seq as usize % steps_us.len()]);
            let r = open_and_refuse(&mut c, now, seq);
            proptest::prop_assert!(c.control_queued() <= cap);
            if let Err(e) = r {
                ended = Some(e);
                break;
            }
            if read_every > 0 && seq < stop_reading_at && seq % read_every == 0 {
                out.clear();
                c.poll_transmit(&mut out, 64 * 1024);
            }
        }
        let e = ended.expect("a peer that stopped reading was ended");
        proptest::prop_assert!(matches!(
            e,
            ConnectionError::ControlQueueFull(_) | ConnectionError::LocalResetFlood(_)
        ));
        proptest::prop_assert_eq!(final_goaway(&mut c).0, goaway_code::ENHANCE_YOUR_CALM);
    }
}
