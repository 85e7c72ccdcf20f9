//! A stream let go of after its last write loses nothing it wrote. A server that answers,
//! shuts down and drops its end at once (an HTTP/1.0 server, a one-shot responder) must not
//! take the answer with it, whether the peer has read it yet or not.

use std::time::Duration;

use bytes::Bytes;
use culvert_proto::{Config, Event, ReadOutcome, StreamError, StreamId};
use culvert_testkit::{read_available, Pair};

fn answer(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Opens a stream from the client with a request on it; returns (client id, server id).
fn request(p: &mut Pair) -> (StreamId, StreamId) {
    let id = p.client.open_stream("svc").unwrap();
    p.client.write(id, Bytes::from_static(b"GET /")).unwrap();
    p.drive(100).unwrap();
    p.collect_events();
    let sid = p
        .server_events
        .drain(..)
        .find_map(|e| match e {
            Event::StreamOpened { id, .. } => Some(id),
            _ => None,
        })
        .expect("the server saw the stream");
    let (req, _) = read_available(&mut p.server, sid);
    assert_eq!(&req[..], b"GET /");
    (id, sid)
}

/// The server writes a whole answer of `len` bytes on `sid` (its send buffer takes it) and
/// finishes; returns the answer.
fn answer_all(p: &mut Pair, sid: StreamId, len: usize) -> Vec<u8> {
    let body = answer(len);
    assert_eq!(
        p.server.write(sid, Bytes::from(body.clone())).unwrap(),
        body.len()
    );
    p.server.finish(sid).unwrap();
    body
}

/// Every byte of `body` was read, in order, and then the end.
fn assert_delivered(got: &[u8], eof: bool, body: &[u8]) {
    assert!(
        eof,
        "the FIN arrived ({} of {} bytes)",
        got.len(),
        body.len()
    );
    assert!(
        got == body,
        "{} of {} bytes, in order",
        got.len(),
        body.len()
    );
}

fn client_resets(p: &mut Pair) -> Vec<StreamId> {
    p.collect_events();
    p.client_events
        .drain(..)
        .filter_map(|e| match e {
            Event::StreamReset { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

/// The peer's reset arrives after its FIN, before the client read anything: the bytes are
/// all here, and stay readable to the end. (Failed before: the reset freed the stream with
/// its unread bytes, and reading it was an `UnknownStream` error.)
#[test]
fn a_reset_after_the_fin_leaves_what_was_sent_readable() {
    let mut p = Pair::new(Config::default());
    let (id, sid) = request(&mut p);
    let body = answer_all(&mut p, sid, 100_000);
    p.drive(100).unwrap();
    p.server.reset(sid, 7).unwrap();
    p.drive(100).unwrap();
    assert_eq!(
        client_resets(&mut p),
        vec![id],
        "the client is told of the reset"
    );
    // Writing is over: the peer reset it.
    assert!(matches!(
        p.client.write(id, Bytes::from_static(b"more")),
        Err(StreamError::ClosedForWriting(_))
    ));
    let (got, eof) = read_available(&mut p.client, id);
    assert!(eof, "the FIN is still there");
    assert!(got == body, "{} of {} bytes", got.len(), body.len());
    assert_eq!(p.client.open_streams(), 0);
    assert_eq!(p.server.open_streams(), 0);
}

/// Written, finished and abandoned before any of it was sent: all of it goes out, FIN
/// last, and then the reset that tells the client nobody reads what it sends.
#[test]
fn an_abandoned_stream_sends_what_it_queued_then_its_fin_then_the_reset() {
    let mut p = Pair::new(Config::default());
    let (id, sid) = request(&mut p);
    // More than the client's window: some of it can only leave as the client reads.
    let body = answer(3_000_000);
    let mut sent = 0;
    let mut got = Vec::new();
    // The server writes as room frees, then finishes and lets go at once.
    let mut abandoned = false;
    let mut eof = false;
    for _ in 0..10_000 {
        if sent < body.len() {
            sent += p
                .server
                .write(sid, Bytes::copy_from_slice(&body[sent..]))
                .unwrap();
        }
        if sent == body.len() && !abandoned {
            p.server.finish(sid).unwrap();
            p.server.abandon(p.now, sid, 9).unwrap();
            abandoned = true;
        }
        // The client keeps sending: dropped by the server, never an error.
        if !eof {
            let _ = p.client.write(id, Bytes::from_static(b"ignored"));
        }
        p.step().unwrap();
        if !eof {
            let (b, e) = read_available(&mut p.client, id);
            got.extend_from_slice(&b);
            eof = e;
        }
        if eof && p.client.open_streams() == 0 && p.server.open_streams() == 0 {
            break;
        }
    }
    assert_delivered(&got, eof, &body);
    assert_eq!(client_resets(&mut p), vec![id], "told to stop sending");
    assert_eq!(p.client.open_streams(), 0, "the client freed the stream");
    assert_eq!(p.server.open_streams(), 0, "the server freed the stream");
}

/// Abandoned with the FIN queued, and the client finishes too: nothing needs telling, the
/// stream closes as a graceful one on both sides.
#[test]
fn an_abandoned_stream_whose_peer_finishes_closes_without_a_reset() {
    let mut p = Pair::new(Config::default());
    let (id, sid) = request(&mut p);
    p.server.write(sid, Bytes::from_static(b"200 OK")).unwrap();
    p.server.finish(sid).unwrap();
    p.client.finish(id).unwrap();
    p.server.abandon(p.now, sid, 9).unwrap();
    p.drive(100).unwrap();
    let (got, eof) = read_available(&mut p.client, id);
    assert!(eof);
    assert_eq!(&got[..], b"200 OK");
    assert!(client_resets(&mut p).is_empty(), "no reset was needed");
    assert_eq!(p.client.open_streams(), 0);
    assert_eq!(p.server.open_streams(), 0);
}

/// Let go of before finishing: nothing is owed, both directions abort at once.
#[test]
fn abandoning_an_unfinished_stream_resets_it() {
    let mut p = Pair::new(Config::default());
    let (id, sid) = request(&mut p);
    p.server.write(sid, Bytes::from_static(b"partial")).unwrap();
    p.server.abandon(p.now, sid, 9).unwrap();
    assert_eq!(p.server.open_streams(), 0, "freed at once");
    p.drive(100).unwrap();
    assert_eq!(client_resets(&mut p), vec![id]);
    assert!(p.client.read(id, usize::MAX).is_err(), "the stream is gone");
    assert_eq!(p.client.open_streams(), 0);
}

/// Lets `secs` seconds pass a second at a time, the two sides exchanging what they send
/// (heartbeats keep the connection alive).
fn pass(p: &mut Pair, secs: u64) {
    for _ in 0..secs {
        p.advance(Duration::from_secs(1)).unwrap();
        p.drive(100).unwrap();
    }
}

/// Finished with more queued than the client's window and let go of, and the client never
/// reads: the bytes wait for credit, but not forever. After `Config::linger` without
/// progress the stream is reset (the client hears the code) and the server's buffers are
/// free. (Failed before: the stream and its bytes stayed until the connection ended.)
#[test]
fn a_let_go_stream_whose_peer_never_reads_is_reset_after_the_linger() {
    let mut p = Pair::new(Config::default());
    let linger = Config::default().linger.as_secs();
    let (id, sid) = request(&mut p);
    let body = answer(1_000_000);
    let queued = p.server.write(sid, Bytes::from(body)).unwrap();
    p.server.finish(sid).unwrap();
    p.server.abandon(p.now, sid, 9).unwrap();
    pass(&mut p, 5);
    let stuck = p.server.send_buffered();
    assert!(
        stuck > 0 && stuck < queued,
        "part went out, the rest waits for credit ({stuck} of {queued})"
    );
    assert!(client_resets(&mut p).is_empty());
    pass(&mut p, linger - 10);
    assert_eq!(
        p.server.open_streams(),
        1,
        "still waiting within the linger"
    );
    assert_eq!(p.server.send_buffered(), stuck);
    // The deadline plus the sweep's slack (an eighth of the linger).
    pass(&mut p, 10 + linger / 8 + 1);
    assert_eq!(p.server.open_streams(), 0, "reset after the linger");
    assert_eq!(p.server.send_buffered(), 0, "its bytes freed");
    assert_eq!(p.server.stats().lingered_out, 1);
    assert_eq!(client_resets(&mut p), vec![id], "the client is told");
    assert!(p.client.read(id, usize::MAX).is_err(), "the stream is gone");
}

/// A slow reader that keeps reading is never cut off: the linger counts from the last
/// bytes that went out, not from the moment the stream was let go of.
#[test]
fn a_let_go_stream_with_a_slow_reader_delivers_everything() {
    let mut p = Pair::new(Config::default());
    let linger = Config::default().linger.as_secs();
    let (id, sid) = request(&mut p);
    let body = answer_all(&mut p, sid, 600_000);
    p.server.abandon(p.now, sid, 9).unwrap();
    let mut got = Vec::new();
    let mut eof = false;
    let mut waited = 0;
    // 64 KiB every two thirds of a linger, each read releasing credit for a little more:
    // the whole takes several lingers.
    while !eof && waited < 40 * linger {
        pass(&mut p, linger * 2 / 3);
        waited += linger * 2 / 3;
        let want = got.len() + 64 * 1024;
        while got.len() < want {
            match p.client.read(id, want - got.len()).unwrap() {
                ReadOutcome::Data(b) => got.extend_from_slice(&b),
                ReadOutcome::Eof => {
                    eof = true;
                    break;
                }
                ReadOutcome::WouldBlock => break,
            }
        }
    }
    assert!(
        waited > 3 * linger,
        "the transfer outlasted several lingers ({waited} s)"
    );
    assert_delivered(&got, eof, &body);
    assert_eq!(p.server.stats().lingered_out, 0);
}
