//! `relay_streams`, the server joining two tunnel streams (an access client's to an
//! agent's): an answer whose sender finished, then reset (it dropped its end while the
//! asker was still sending), arrives whole at the asker.

use culvert_transport::relay_streams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::{answer_and_drop, connected_pair, incoming, LIMIT};

/// `f`, or a panic once [`LIMIT`] has passed.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("within the limit")
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

/// The asker (far end of `a`) sends a request and does not read yet; the answerer (far end
/// of `b`) answers 2 MiB (more than the asker's window: most of it waits in the relay's
/// queue for `a`), shuts down and drops its end, which resets `b` after its FIN. Then the
/// asker sends more, which the relay cannot forward. (Failed before: the failed forward
/// reset `a`, dropping the answer still queued for the asker, whose read ended in a reset
/// error after about the first window's worth.)
#[tokio::test(flavor = "current_thread")]
async fn an_answer_finished_then_reset_reaches_an_asker_still_sending() {
    // asker ⇄ relay side A, relay side B ⇄ answerer
    let (asker, _relay_a, _, mut relay_a_events) = connected_pair().await;
    let (relay_b, _answerer_side, _, mut answerer_events) = connected_pair().await;
    let mut ask = within(asker.open("svc")).await.unwrap();
    let a = incoming(&mut relay_a_events).await;
    let b = within(relay_b.open("svc")).await.unwrap();
    let relay = tokio::spawn(async move {
        let r = relay_streams(&a, &b).await;
        (r.map(|t| (t.up, t.down)), a, b)
    });
    within(ask.write_all(b"GET")).await.unwrap();
    let mut answerer = incoming(&mut answerer_events).await;
    let mut req = [0u8; 3];
    within(answerer.read_exact(&mut req)).await.unwrap();
    let body = pattern(2 << 20);
    answer_and_drop(answerer, body.clone()).await;
    // Let the answerer's FIN and reset reach the relay.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    within(ask.write_all(b"more")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, ask.read_to_end(&mut got))
        .await
        .expect("read within the limit")
        .unwrap_or_else(|e| panic!("the answer ended in {e} after {} bytes", got.len()));
    assert_eq!(got.len(), body.len());
    assert!(got == body, "answer bytes differ");
    let (result, _a, _b) = tokio::time::timeout(LIMIT, relay)
        .await
        .expect("the relay ends")
        .unwrap();
    assert!(
        result.is_err(),
        "the forward that failed is reported: {result:?}"
    );
}
