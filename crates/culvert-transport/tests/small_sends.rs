//! Small sends of streams made ready together share one write: on a current-thread runtime
//! a send that leaves less than 16 KiB queued on a connection with more than one stream
//! open (and not made by a stream that has been sending alone: tests/direct_paths.rs)
//! leaves its write to the connection's flush task, which runs at the end of the
//! scheduler's turn and writes what every stream queued in it. Eight
//! connections' requests used to cost the server eight `send`s to the agent (and the agent
//! eight wake-ups). (A burst past 16 KiB is still written by the sender at once:
//! tests/direct_paths.rs.)

use std::time::Duration;

use bytes::Bytes;

mod support;

use support::{counted_pair, incoming, send_now, LIMIT};

/// Streams that send at once.
const STREAMS: usize = 8;

#[tokio::test]
async fn small_sends_of_streams_made_ready_together_share_one_write() {
    // The server sends: its socket counts the writes.
    let (receiver, sender, mut receiver_events, _sender_events, counts) = counted_pair().await;
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for _ in 0..STREAMS {
        sent.push(sender.open("svc").await.unwrap());
        got.push(incoming(&mut receiver_events).await);
    }
    // Let the opens go out and the writer go idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = counts.writes();
    // Eight requests in one turn of the scheduler, as eight relays woken by one poll of
    // their sockets make them.
    for (i, s) in sent.iter().enumerate() {
        send_now(s, Bytes::from(format!("request {i}")));
    }
    tokio::time::timeout(LIMIT, async {
        for (i, s) in got.iter().enumerate() {
            let m = s.recv().await.unwrap().unwrap();
            assert_eq!(m, format!("request {i}").as_bytes());
        }
    })
    .await
    .expect("every request within the limit");
    let used = counts.writes() - before;
    // One write; it was eight, one per send, when every send wrote itself through.
    assert!(
        used <= 2,
        "{used} writes for {STREAMS} small sends made in one turn (one expected)"
    );
    sender.abort("test over");
    receiver.abort("test over");
}
