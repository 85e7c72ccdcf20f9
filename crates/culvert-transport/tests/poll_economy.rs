//! What one small message costs in polls: a connection's reader tries its socket once more
//! per message than the message needs (to learn it is empty, which also registers for the
//! next one), no more; and a relay woken by its socket polls neither its tunnel direction
//! nor its stop signal. Each extra poll was a visible share of a round trip's user-space
//! work (`scripts/rr-instructions.sh`, BENCHMARKS.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use culvert_transport::relay_tcp_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::{counted_pair, incoming, socket_pair, LIMIT};

/// Round trips per test: enough that a per-message extra poll stands far above the polls of
/// setting up.
const MESSAGES: usize = 60;

#[tokio::test]
async fn the_reader_polls_its_socket_at_most_twice_per_message() {
    let (client, server, _client_events, mut server_events, counts) = counted_pair().await;
    let sent = client.open("svc").await.unwrap();
    let got = incoming(&mut server_events).await;
    // One message at a time, each received before the next is sent, so each arrives alone
    // (a reply from the server side makes the client wait for it).
    tokio::time::timeout(LIMIT, async {
        sent.send(Bytes::from_static(b"warm-up")).await.unwrap();
        got.recv().await.unwrap().unwrap();
        let before = counts.reads();
        for i in 0..MESSAGES {
            sent.send(Bytes::from(format!("message {i}")))
                .await
                .unwrap();
            let m = got.recv().await.unwrap().unwrap();
            assert_eq!(m, format!("message {i}").as_bytes());
            got.send(Bytes::from_static(b"ok")).await.unwrap();
            sent.recv().await.unwrap().unwrap();
        }
        let per = (counts.reads() - before) as f64 / MESSAGES as f64;
        // One read that finds the message, one that finds the socket empty (and leaves the
        // reader registered for the next): 2.0. It was 3.0 when the reader, having found the
        // socket empty, polled it again before waiting.
        assert!(
            per <= 2.2,
            "{per:.2} socket reads per message (at most 2 expected)"
        );
    })
    .await
    .expect("within the limit");
    server.abort("test over");
    client.abort("test over");
}

/// Never ready; counts its polls.
struct CountPolls(Arc<AtomicUsize>);

impl Future for CountPolls {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Poll::Pending
    }
}

#[tokio::test]
async fn a_relay_woken_by_its_socket_does_not_poll_its_stop_signal() {
    let (client, server, _client_events, mut server_events) = support::connected_pair().await;
    let (relay_side, mut app) = socket_pair().await;
    let stream = client.open("svc").await.unwrap();
    let far = incoming(&mut server_events).await;
    let stop_polls = Arc::new(AtomicUsize::new(0));
    let relay = tokio::spawn({
        let stop = CountPolls(stop_polls.clone());
        async move { relay_tcp_until(relay_side, &stream, None, stop).await }
    });
    tokio::time::timeout(LIMIT, async {
        let mut buf = [0u8; 64];
        for i in 0..MESSAGES {
            // Socket → relay → tunnel, and back: the relay is woken by its socket each time.
            let m = format!("round trip {i}");
            app.write_all(m.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            while got.len() < m.len() {
                got.extend_from_slice(&far.recv().await.unwrap().unwrap());
            }
            assert_eq!(got, m.as_bytes());
            far.send(Bytes::from(got)).await.unwrap();
            app.read_exact(&mut buf[..m.len()]).await.unwrap();
            assert_eq!(&buf[..m.len()], m.as_bytes());
        }
    })
    .await
    .expect("within the limit");
    // Polled when the relay started, and not once per message since (it was before: every
    // wake-up of the relay polled both directions and the stop).
    let polls = stop_polls.load(Ordering::Relaxed);
    assert!(
        polls <= 3,
        "the stop signal was polled {polls} times over {MESSAGES} round trips"
    );
    drop(app);
    far.finish().unwrap();
    let totals = tokio::time::timeout(LIMIT, relay)
        .await
        .expect("the relay ends")
        .unwrap()
        .unwrap();
    assert_eq!(totals.up, totals.down);
    server.abort("test over");
    client.abort("test over");
}
