//! Basic behaviour of two connections driven in memory.

use bytes::Bytes;
use culvert_proto::{Config, Event};
use culvert_testkit::{read_available, Pair};

#[test]
fn open_write_finish_both_ways() {
    let mut p = Pair::new(Config::default());
    let id = p.client.open_stream("svc:echo").unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut server_id = None;
    let mut eof = false;
    for _ in 0..10_000 {
        if sent < payload.len() {
            sent += p
                .client
                .write(id, Bytes::copy_from_slice(&payload[sent..]))
                .unwrap();
            if sent == payload.len() {
                p.client.finish(id).unwrap();
            }
        }
        p.step().unwrap();
        p.collect_events();
        for e in p.server_events.drain(..) {
            if let Event::StreamOpened { id, target } = e {
                assert_eq!(target, culvert_proto::Target::Dial("svc:echo".into()));
                server_id = Some(id);
            }
        }
        if let Some(sid) = server_id {
            let (b, e) = read_available(&mut p.server, sid);
            got.extend_from_slice(&b);
            if e {
                eof = true;
                break;
            }
        }
    }
    assert!(eof, "FIN delivered");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "bytes in order");
    // Half-close: the server can still answer after reading EOF.
    let sid = server_id.unwrap();
    p.server.write(sid, Bytes::from_static(b"answer")).unwrap();
    p.server.finish(sid).unwrap();
    p.drive(100).unwrap();
    let (b, e) = read_available(&mut p.client, id);
    assert_eq!(&b[..], b"answer");
    assert!(e);
    assert_eq!(p.client.open_streams(), 0);
    assert_eq!(p.server.open_streams(), 0);
}

/// A stream whose reader stopped (a backend that never reads) holds at most its window;
/// the other streams of the connection keep flowing. Its window had grown while it was
/// read fast, and a stream window allowed to grow to the whole connection window took all
/// of it: every other stream stopped dead (failed before stream windows were capped at a
/// quarter of the connection window).
#[test]
fn a_stuck_stream_leaves_the_other_streams_room() {
    let mut p = Pair::new(Config::default());
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let stuck = p.client.open_stream("stuck").unwrap();
    let mut stuck_server = None;
    // Read fast for a while, so the stuck stream's window grows as far as it may.
    let mut read = 0usize;
    for _ in 0..2_000 {
        while p.client.write(stuck, chunk.clone()).unwrap_or(0) > 0 {}
        p.step().unwrap();
        p.collect_events();
        for e in p.server_events.drain(..) {
            if let Event::StreamOpened { id, .. } = e {
                stuck_server = Some(id);
            }
        }
        if let Some(sid) = stuck_server {
            read += read_available(&mut p.server, sid).0.len();
        }
        if read >= 32 << 20 {
            break;
        }
    }
    assert!(read >= 32 << 20, "the stream moved only {read} bytes");
    // Now its reader stops; the sender keeps pushing until it is blocked.
    for _ in 0..200 {
        while p.client.write(stuck, chunk.clone()).unwrap_or(0) > 0 {}
        p.step().unwrap();
    }
    // Another stream must still get 8 MiB through.
    let other = p.client.open_stream("other").unwrap();
    let mut other_server = None;
    let (mut sent, mut got) = (0usize, 0usize);
    for _ in 0..5_000 {
        if sent < 8 << 20 {
            sent += p.client.write(other, chunk.clone()).unwrap_or(0);
        }
        p.step().unwrap();
        p.collect_events();
        for e in p.server_events.drain(..) {
            if let Event::StreamOpened { id, .. } = e {
                other_server = Some(id);
            }
        }
        if let Some(sid) = other_server {
            got += read_available(&mut p.server, sid).0.len();
        }
        if got >= 8 << 20 {
            break;
        }
    }
    assert!(
        got >= 8 << 20,
        "another stream moved only {got} bytes beside a stuck one (buffered for it: {})",
        p.server.recv_buffered()
    );
    assert!(
        p.server.recv_buffered() <= Config::default().connection_window / 4 + (256 << 10),
        "the stuck stream holds {} bytes",
        p.server.recv_buffered()
    );
}

/// A writer blocked on the connection's send buffer hears `Writable` once room frees up,
/// even while a stuck stream (its reader never reads, so it gets no credit) keeps more than
/// half of that buffer queued. Failed on f1f1d09 (2 MiB per stream, 3 MiB per connection):
/// blocked writers were woken only once the connection's queued total fell to half its
/// buffer, which the stuck stream's 2 MiB alone exceeded, so the other stream, which waits
/// for `Writable` as the drivers do, never wrote again (the tunnel test
/// `stuck_streams_do_not_slow_the_others` saw 0 % of its throughput).
#[test]
fn a_stuck_stream_does_not_keep_the_other_writers_asleep() {
    let config = Config {
        stream_send_buffer: 2 << 20,
        connection_send_buffer: 3 << 20,
        ..Config::default()
    };
    let mut p = Pair::new(config.clone());
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let stuck = p.client.open_stream("stuck").unwrap();
    // The stuck stream fills its send buffer; nothing on the server reads it.
    for _ in 0..200 {
        while p.client.write(stuck, chunk.clone()).unwrap_or(0) > 0 {}
        p.step().unwrap();
    }
    p.collect_events();
    p.client_events.clear();
    assert!(
        p.client.send_buffered() > config.connection_send_buffer / 2,
        "the stuck stream queued only {} bytes",
        p.client.send_buffered()
    );
    let (got, sent, waiting) = writes_when_told(&mut p, 8 << 20);
    assert!(
        got >= 8 << 20,
        "the other stream moved {got} bytes of 8 MiB (sent {sent}, waiting for Writable: \
         {waiting}) beside a stuck stream holding {} bytes",
        p.client.send_buffered()
    );
}

/// Three streams whose readers stop, each after its window grew to its 1 MiB ceiling,
/// leave the connection's other streams room to flow: as many stuck streams as the peer's
/// receive window tolerates (a fourth would fill it). Failed on 765bd5d, where a stream
/// could queue its whole 2 MiB send buffer with no credit: two stuck streams filled the
/// 3 MiB connection buffer and the other stream, which writes only after `Writable` as
/// the drivers do, moved nothing.
#[test]
fn three_stuck_streams_leave_the_other_writers_room() {
    let config = Config::default();
    let mut p = Pair::new(config.clone());
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut stuck = Vec::new();
    for name in ["stuck-a", "stuck-b", "stuck-c"] {
        let id = p.client.open_stream(name).unwrap();
        // Read fast first, so its window grows as far as it may.
        let mut read = 0usize;
        for _ in 0..2_000 {
            while p.client.write(id, chunk.clone()).unwrap_or(0) > 0 {}
            p.step().unwrap();
            p.collect_events();
            p.server_events.clear();
            read += read_available(&mut p.server, id).0.len();
            if read >= 16 << 20 {
                break;
            }
        }
        assert!(read >= 16 << 20, "{name} moved only {read} bytes");
        stuck.push(id);
    }
    // Now nobody reads them; their writers push until they are blocked.
    for _ in 0..200 {
        for &id in &stuck {
            while p.client.write(id, chunk.clone()).unwrap_or(0) > 0 {}
        }
        p.step().unwrap();
    }
    p.collect_events();
    p.client_events.clear();
    p.server_events.clear();
    let (got, sent, waiting) = writes_when_told(&mut p, 8 << 20);
    assert!(
        got >= 8 << 20,
        "the other stream moved {got} bytes of 8 MiB (sent {sent}, waiting for Writable: \
         {waiting}) beside three stuck streams; queued to send: {} of {}",
        p.client.send_buffered(),
        config.connection_send_buffer
    );
}

/// Opens another stream on `p` and moves `want` bytes through it, writing only after
/// `Writable` as a driver's relay does; returns the bytes the server read, the bytes
/// written, and whether the writer was left waiting for `Writable`.
fn writes_when_told(p: &mut Pair, want: usize) -> (usize, usize, bool) {
    let chunk = Bytes::from(vec![9u8; 64 * 1024]);
    let other = p.client.open_stream("other").unwrap();
    let (mut writable, mut sent, mut got) = (true, 0usize, 0usize);
    // Both ends name a stream by the same id: the server reads `other` once it has opened.
    let mut opened = false;
    for _ in 0..20_000 {
        while writable && sent < want {
            let n = p.client.write(other, chunk.clone()).unwrap();
            sent += n;
            writable = n == chunk.len();
        }
        p.step().unwrap();
        p.collect_events();
        if p.client_events
            .drain(..)
            .any(|e| e == Event::Writable(other))
        {
            writable = true;
        }
        opened |= p
            .server_events
            .drain(..)
            .any(|e| matches!(e, Event::StreamOpened { id, .. } if id == other));
        if opened {
            got += read_available(&mut p.server, other).0.len();
        }
        if got >= want {
            break;
        }
    }
    (got, sent, !writable)
}
