//! Small sends of streams made ready together share one write: a send that leaves less
//! than 16 KiB queued on a connection with more than one stream open (and not made by a
//! stream that has been sending alone: tests/direct_paths.rs) leaves its write to the
//! connection's flush task, which runs at the end of the scheduler's turn and writes what
//! every stream queued in it. Eight connections' requests used to cost the server eight
//! `send`s to the agent (and the agent eight wake-ups). (A burst past 16 KiB is still
//! written by the sender at once: tests/direct_paths.rs.)

use std::time::Duration;

use bytes::Bytes;

mod support;

use support::{counted_pair, incoming, send_now, LIMIT};

/// Streams that send at once.
const STREAMS: usize = 8;

/// Opens [`STREAMS`] streams from `sender` and lets the opens go out and the writer go
/// idle; the sending ends and the receiving ends, in order.
async fn open_all(
    sender: &culvert_transport::Mux,
    receiver_events: &mut tokio::sync::mpsc::UnboundedReceiver<culvert_transport::MuxEvent>,
) -> (
    Vec<culvert_transport::TunnelStream>,
    Vec<culvert_transport::TunnelStream>,
) {
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for _ in 0..STREAMS {
        sent.push(sender.open("svc").await.unwrap());
        got.push(incoming(receiver_events).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    (sent, got)
}

/// One request per stream in one turn of the scheduler, as relays woken by one poll of
/// their sockets make them; each must arrive whole, in order.
async fn one_round(
    sent: &[culvert_transport::TunnelStream],
    got: &[culvert_transport::TunnelStream],
    round: usize,
) {
    for (i, s) in sent.iter().enumerate() {
        send_now(s, Bytes::from(format!("request {round}.{i}")));
    }
    tokio::time::timeout(LIMIT, async {
        for (i, s) in got.iter().enumerate() {
            let m = s.recv().await.unwrap().unwrap();
            assert_eq!(m, format!("request {round}.{i}").as_bytes());
        }
    })
    .await
    .expect("every request within the limit");
}

#[tokio::test]
async fn small_sends_of_streams_made_ready_together_share_one_write() {
    // The server sends: its socket counts the writes.
    let (receiver, sender, mut receiver_events, _sender_events, counts) = counted_pair().await;
    let (sent, got) = open_all(&sender, &mut receiver_events).await;
    let before = counts.writes();
    one_round(&sent, &got, 0).await;
    let used = counts.writes() - before;
    // One write; it was eight, one per send, when every send wrote itself through.
    assert!(
        used <= 2,
        "{used} writes for {STREAMS} small sends made in one turn (one expected)"
    );
    sender.abort("test over");
    receiver.abort("test over");
}

/// The same on a runtime with two threads (the default on machines with more than two
/// CPUs). There the flush task, woken by the first send, may run on the other thread at
/// once, so it first yields until the end of its thread's turn; a burst may still be split
/// over a few writes, but rounds of eight sends no longer cost eight writes each, and every
/// stream's bytes still arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_sends_share_writes_on_a_multi_threaded_runtime_too() {
    const ROUNDS: usize = 20;
    let (receiver, sender, mut receiver_events, _sender_events, counts) = counted_pair().await;
    let (sent, got) = open_all(&sender, &mut receiver_events).await;
    let before = counts.writes();
    // Each round is read before the next is sent, as requests wait for answers.
    for round in 0..ROUNDS {
        one_round(&sent, &got, round).await;
    }
    let used = counts.writes() - before;
    eprintln!("{used} writes for {ROUNDS} rounds of {STREAMS} small sends");
    // Every send was its own write before (160).
    assert!(
        used < ROUNDS * STREAMS,
        "{used} writes for {} small sends: none shared a write",
        ROUNDS * STREAMS
    );
    sender.abort("test over");
    receiver.abort("test over");
}
