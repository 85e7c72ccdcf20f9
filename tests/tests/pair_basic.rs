//! Basic behaviour of two connections driven in memory.

use bytes::Bytes;
use culvert_proto::{Config, Event, ReadOutcome, StreamId};
use culvert_testkit::Pair;

fn read_all(c: &mut culvert_proto::Connection, id: StreamId) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match c.read(id, usize::MAX).unwrap() {
            ReadOutcome::Data(b) => out.extend_from_slice(&b),
            ReadOutcome::WouldBlock => return (out, false),
            ReadOutcome::Eof => return (out, true),
        }
    }
}

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
                assert_eq!(target, "svc:echo");
                server_id = Some(id);
            }
        }
        if let Some(sid) = server_id {
            let (b, e) = read_all(&mut p.server, sid);
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
    let (b, e) = read_all(&mut p.client, id);
    assert_eq!(&b[..], b"answer");
    assert!(e);
    assert_eq!(p.client.open_streams(), 0);
    assert_eq!(p.server.open_streams(), 0);
}
