//! The linger of a stream its application let go of with bytes still queued, on the real
//! clock through the driver (the protocol's own tests, `pair_abandon`, move a synthetic
//! clock that every call shares).

use std::time::{Duration, Instant};

use culvert_proto::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::{connected_pair_with, incoming, LIMIT};

/// A linger short enough to wait for, with heartbeats so far apart that none moves either
/// connection's clock during the test.
fn config() -> Config {
    let mut c = Config {
        linger: Duration::from_secs(2),
        ..Config::default()
    };
    c.set_heartbeat_interval(Duration::from_secs(60));
    c
}

/// A server reads a request, works on it with nothing on the wire, answers more than the
/// client's window, finishes and drops its end; the client never reads. The answer gets the
/// whole linger from the moment it was let go of before the client is cut off. (Failed
/// before: the let-go took the connection's clock, last moved when the request arrived, so
/// the reset came the work's length early, half a second after the let-go here.)
#[tokio::test(flavor = "current_thread")]
async fn the_linger_counts_from_the_let_go_not_from_the_last_bytes_received() {
    let cfg = config();
    let (client, server, _, mut server_events) = connected_pair_with(cfg.clone()).await;
    let mut ask = tokio::time::timeout(LIMIT, client.open("svc"))
        .await
        .expect("opened within the limit")
        .unwrap();
    ask.write_all(b"GET").await.unwrap();
    let mut answer = incoming(&mut server_events).await;
    let mut req = [0u8; 3];
    tokio::time::timeout(LIMIT, answer.read_exact(&mut req))
        .await
        .expect("request within the limit")
        .unwrap();

    // The work: three quarters of a linger with no byte moving either way.
    tokio::time::sleep(cfg.linger * 3 / 4).await;
    // Four times the client's window: most of it stays queued here.
    let body = vec![7u8; 4 * cfg.stream_window as usize];
    tokio::time::timeout(LIMIT, async {
        answer.write_all(&body).await.unwrap();
        answer.shutdown().await.unwrap();
    })
    .await
    .expect("answer queued within the limit");
    let let_go = Instant::now();
    drop(answer);

    let cut_off = tokio::time::timeout(LIMIT, async {
        loop {
            if server.stats().proto.lingered_out > 0 {
                return let_go.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("reset within the limit");
    assert!(
        cut_off >= cfg.linger,
        "reset {cut_off:?} after the let-go, before the {:?} linger",
        cfg.linger
    );
    assert_eq!(
        server.open_streams(),
        0,
        "the server holds nothing after it"
    );

    // The client is told: what reached it, then the reset, not a clean end.
    let mut got = Vec::new();
    let end = tokio::time::timeout(LIMIT, ask.read_to_end(&mut got))
        .await
        .expect("read within the limit");
    assert!(
        end.is_err(),
        "a reset, not a clean end, after {} bytes",
        got.len()
    );
    assert!(got.len() < body.len(), "only part of the answer arrived");
}
