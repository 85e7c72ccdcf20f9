//! Hostile peers against the multiplexer: each abuse of design.md §4 is refused with a
//! typed `ConnectionError`, never a panic, and never an allocation sized by the attacker.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use culvert_proto::config::{
    INITIAL_CONN_WINDOW, INITIAL_MAX_STREAMS, INITIAL_STREAM_WINDOW, MAX_WINDOW,
};
use culvert_proto::{
    Config, Connection, ConnectionError, Control, DecodeError, Frame, Side, StreamId,
};
use culvert_testkit::frames::{encode, feed, open};

fn server() -> (Connection, Instant) {
    let now = Instant::now();
    (
        Connection::new(Side::Server, Config::default(), now).unwrap(),
        now,
    )
}

// A length above the frame cap is refused from the 5 header bytes alone.
#[test]
fn oversize_length_refused_from_header() {
    let (mut c, now) = server();
    let r = c.handle_bytes(now, Bytes::from_static(&[0x51, 0xff, 0xff, 0xff, 0xff]));
    assert!(matches!(
        r,
        Err(ConnectionError::Decode(DecodeError::Oversize {
            len: u32::MAX,
            ..
        }))
    ));
    // The connection stays failed.
    assert!(c.handle_bytes(now, encode(&[open(0)])).is_err());
}

// Zero-length data frames are a flood vector and are refused; a zero-length header of a
// frame that needs fields is reported as truncated.
#[test]
fn zero_length_abuse_refused() {
    let (mut c, now) = server();
    feed(&mut c, now, &[open(0)]).unwrap();
    let id = StreamId::new(Side::Client, 0);
    let r = feed(
        &mut c,
        now,
        &[Frame::StreamData {
            id,
            data: Bytes::new(),
        }],
    );
    assert_eq!(r, Err(ConnectionError::EmptyData(id)));

    let (mut c, now) = server();
    let r = c.handle_bytes(now, Bytes::from_static(&[0x52, 0, 0, 0, 0]));
    assert!(matches!(
        r,
        Err(ConnectionError::Decode(DecodeError::Truncated {
            frame: "StreamFin",
            ..
        }))
    ));
    let (mut c, now) = server();
    let r = feed(&mut c, now, &[Frame::ConnCredit { increment: 0 }]);
    assert_eq!(r, Err(ConnectionError::ZeroCredit));
}

// An unknown type byte is refused.
#[test]
fn unknown_type_refused() {
    let (mut c, now) = server();
    let r = c.handle_bytes(now, Bytes::from_static(&[0x7f, 0, 0, 0, 1, 0]));
    assert_eq!(
        r,
        Err(ConnectionError::Decode(DecodeError::UnknownType(0x7f)))
    );
}

// A truncated frame waits for the rest; a field cut short inside a complete frame is an error.
#[test]
fn truncated_frames() {
    let (mut c, now) = server();
    let whole = encode(&[open(0)]);
    c.handle_bytes(now, whole.slice(..whole.len() - 1)).unwrap();
    assert!(c.poll_event().is_none(), "incomplete frame yields nothing");
    c.handle_bytes(now, whole.slice(whole.len() - 1..)).unwrap();
    assert!(c.poll_event().is_some());

    let (mut c, now) = server();
    // Heartbeat with 4 of its 8 timestamp bytes.
    let r = c.handle_bytes(now, Bytes::from_static(&[0x30, 0, 0, 0, 4, 1, 2, 3, 4]));
    assert!(matches!(
        r,
        Err(ConnectionError::Decode(DecodeError::Truncated {
            frame: "Heartbeat",
            field: "timestamp"
        }))
    ));
}

// Malformed fields: bad UTF-8, a protocol byte that is neither TCP nor UDP, trailing bytes.
#[test]
fn malformed_fields() {
    let (mut c, now) = server();
    let mut b = BytesMut::new();
    b.put_u8(0x10);
    b.put_u32(1 + 2 + 1 + 2 + 2);
    b.put_u8(2);
    b.put_slice(&[0xff, 0xfe]);
    b.put_u8(0);
    b.put_u16(1);
    b.put_u16(2);
    let r = c.handle_bytes(now, b.freeze());
    assert!(matches!(
        r,
        Err(ConnectionError::Decode(DecodeError::Malformed {
            field: "name",
            ..
        }))
    ));

    let (mut c, now) = server();
    let r = c.handle_bytes(
        now,
        Bytes::from_static(&[0x10, 0, 0, 0, 6, 0, 2, 0, 1, 0, 2]),
    );
    assert!(matches!(
        r,
        Err(ConnectionError::Decode(DecodeError::Malformed {
            field: "protocol",
            ..
        }))
    ));

    let (mut c, now) = server();
    let r = c.handle_bytes(now, Bytes::from_static(&[0x52, 0, 0, 0, 2, 0, 9]));
    assert!(matches!(
        r,
        Err(ConnectionError::Decode(DecodeError::TrailingBytes {
            extra: 1,
            ..
        }))
    ));
}

// Frames naming a stream that was never opened are refused, whichever side's id it is.
#[test]
fn frames_for_unopened_streams() {
    let peer_id = StreamId::new(Side::Client, 5);
    let own_id = StreamId::new(Side::Server, 0);
    for f in [
        Frame::StreamData {
            id: peer_id,
            data: Bytes::from_static(b"x"),
        },
        Frame::StreamFin { id: peer_id },
        Frame::StreamCredit {
            id: own_id,
            increment: 1,
        },
        Frame::StreamReset {
            id: own_id,
            code: 0,
        },
    ] {
        let (mut c, now) = server();
        let r = feed(&mut c, now, std::slice::from_ref(&f));
        assert!(
            matches!(r, Err(ConnectionError::UnopenedStream(_))),
            "{f:?} gave {r:?}"
        );
    }
}

// The peer may not open a stream whose id carries our initiator bit.
#[test]
fn wrong_side_open_refused() {
    let (mut c, now) = server();
    let id = StreamId::new(Side::Server, 0);
    let r = feed(
        &mut c,
        now,
        &[Frame::StreamOpen {
            id,
            target: "x".into(),
        }],
    );
    assert_eq!(r, Err(ConnectionError::WrongSideStream(id)));
}

// Ids are never reused, and may not skip ahead.
#[test]
fn reused_and_skipped_ids_refused() {
    let (mut c, now) = server();
    feed(&mut c, now, &[open(0)]).unwrap();
    let r = feed(&mut c, now, &[open(0)]);
    assert_eq!(
        r,
        Err(ConnectionError::ReusedStreamId(StreamId::new(
            Side::Client,
            0
        )))
    );

    let (mut c, now) = server();
    let r = feed(&mut c, now, &[open(3)]);
    assert!(matches!(r, Err(ConnectionError::StreamIdGap { .. })));
}

// Data beyond the stream window, and beyond the connection window, is refused.
#[test]
fn data_beyond_window_refused() {
    let (mut c, now) = server();
    let id = StreamId::new(Side::Client, 0);
    feed(&mut c, now, &[open(0)]).unwrap();
    let chunk = Bytes::from(vec![0u8; 60_000]);
    let mut sent = 0u64;
    let r = loop {
        let r = feed(
            &mut c,
            now,
            &[Frame::StreamData {
                id,
                data: chunk.clone(),
            }],
        );
        if r.is_err() {
            break r;
        }
        sent += chunk.len() as u64;
        assert!(sent <= INITIAL_STREAM_WINDOW, "accepted past the window");
    };
    assert_eq!(r, Err(ConnectionError::StreamWindowExceeded(id)));

    // Many streams each within their window, together past the connection's initial window.
    let cfg = Config {
        connection_window: INITIAL_CONN_WINDOW,
        ..Config::default()
    };
    let mut c = Connection::new(Side::Server, cfg, now).unwrap();
    let mut total = 0u64;
    let mut refused = None;
    'outer: for seq in 0..INITIAL_MAX_STREAMS {
        feed(&mut c, now, &[open(seq)]).unwrap();
        let id = StreamId::new(Side::Client, seq);
        for _ in 0..4 {
            let data = chunk.clone();
            if let Err(e) = feed(&mut c, now, &[Frame::StreamData { id, data }]) {
                refused = Some(e);
                break 'outer;
            }
            total += chunk.len() as u64;
            assert!(total <= INITIAL_CONN_WINDOW);
        }
    }
    let r = refused.map_or(Ok(()), Err);
    assert_eq!(r, Err(ConnectionError::ConnectionWindowExceeded));
}

// Credit that would push a window past 2^31-1 is refused (checked addition).
#[test]
fn credit_overflow_refused() {
    let now = Instant::now();
    let mut c = Connection::new(Side::Client, Config::default(), now).unwrap();
    let id = c.open_stream("svc").unwrap();
    let r = c.handle_bytes(
        now,
        encode(&[Frame::StreamCredit {
            id,
            increment: MAX_WINDOW,
        }]),
    );
    assert_eq!(r, Err(ConnectionError::CreditOverflow));
    let mut c = Connection::new(Side::Client, Config::default(), now).unwrap();
    let r = c.handle_bytes(
        now,
        encode(&[Frame::ConnCredit {
            increment: (1 << 62) - 1,
        }]),
    );
    assert_eq!(r, Err(ConnectionError::CreditOverflow));
}

// Opening more streams than granted is refused at the first one past the cap.
#[test]
fn open_flood_past_stream_cap_refused() {
    let (mut c, now) = server();
    // Before our MaxStreams grant reaches the peer, only the protocol's initial 100 are allowed,
    // but our own grant raised it locally to the configured 4096.
    let cap = Config::default().max_concurrent_streams;
    let frames: Vec<Frame> = (0..cap).map(open).collect();
    feed(&mut c, now, &frames).unwrap();
    assert_eq!(c.open_streams() as u64, cap);
    let r = feed(&mut c, now, &[open(cap)]);
    assert_eq!(r, Err(ConnectionError::StreamLimit(cap)));
}

// A peer looping open → reset at wire speed is cut off by the reset rate limit; its
// streams never accumulate.
#[test]
fn open_reset_loop_refused() {
    let (mut c, now) = server();
    let mut err = None;
    for seq in 0..100_000u64 {
        let id = StreamId::new(Side::Client, seq);
        let r = feed(
            &mut c,
            now,
            &[open(seq), Frame::StreamReset { id, code: 0 }],
        );
        while c.poll_event().is_some() {}
        // Keep the peer's stream grant flowing, as a real sender would observe it.
        let mut out = BytesMut::new();
        c.poll_transmit(&mut out, 1 << 20);
        if let Err(e) = r {
            err = Some(e);
            break;
        }
        assert!(c.open_streams() <= 1);
    }
    assert_eq!(err, Some(ConnectionError::ResetFlood));
}

// Heartbeats faster than the configured rate are a flood; acks are coalesced meanwhile.
#[test]
fn heartbeat_flood_refused() {
    let (mut c, now) = server();
    let hb = |t| Frame::Control(Control::Heartbeat { timestamp: t });
    let burst = Config::default().heartbeat_burst;
    let frames: Vec<Frame> = (0..burst).map(hb).collect();
    feed(&mut c, now, &frames).unwrap();
    let mut out = BytesMut::new();
    c.poll_transmit(&mut out, 1 << 20);
    // One ack for the whole burst (coalesced), after the start-up credit frames.
    let mut d = culvert_proto::FrameDecoder::new();
    d.push(out.freeze());
    let mut n_acks = 0;
    while let Some(f) = d.next_frame().unwrap() {
        if matches!(f, Frame::Control(Control::HeartbeatAck { timestamp }) if timestamp == burst - 1)
        {
            n_acks += 1;
        }
    }
    assert_eq!(n_acks, 1);
    let r = feed(&mut c, now, &[hb(99)]);
    assert_eq!(r, Err(ConnectionError::HeartbeatFlood));
    // At the sustained rate it is fine.
    let (mut c, now) = server();
    for i in 0..200u64 {
        let t = now + Duration::from_millis(250 * i);
        c.handle_bytes(t, encode(&[hb(i)])).unwrap();
    }
}

// A silent peer is declared dead after the idle timeout (two heartbeat intervals).
#[test]
fn silent_peer_times_out() {
    let (mut c, now) = server();
    let cfg = Config::default();
    let mut t = now;
    loop {
        let deadline = c.poll_timeout().unwrap();
        assert!(deadline > t);
        t = deadline;
        if let Err(e) = c.handle_timeout(t) {
            assert_eq!(e, ConnectionError::IdleTimeout);
            break;
        }
    }
    assert_eq!(t - now, cfg.idle_timeout);
}

// An open after the peer's own going-away is a violation; opens after ours are refused politely.
#[test]
fn going_away_rules() {
    let (mut c, now) = server();
    let ga = Frame::GoAway {
        code: 0,
        reason: "bye".into(),
    };
    feed(&mut c, now, &[ga]).unwrap();
    assert_eq!(
        feed(&mut c, now, &[open(0)]),
        Err(ConnectionError::OpenAfterGoAway)
    );

    let (mut c, now) = server();
    c.go_away(0, "draining");
    feed(&mut c, now, &[open(0)]).unwrap();
    assert_eq!(c.open_streams(), 0);
    let mut out = BytesMut::new();
    c.poll_transmit(&mut out, 1 << 20);
    let mut d = culvert_proto::FrameDecoder::new();
    d.push(out.freeze());
    let mut refused = false;
    while let Some(f) = d.next_frame().unwrap() {
        refused |= matches!(f, Frame::StreamReset { code: 1, .. });
    }
    assert!(refused);
}
