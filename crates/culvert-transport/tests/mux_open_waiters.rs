//! `Mux::open` waits while the peer's stream limit is reached; an open that gives up (a
//! timeout around it, or its task dropped) must leave nothing behind. On the driver before
//! this test, each abandoned open left its waker in a list that only a raised stream limit
//! (or the connection's end) emptied, so a peer that never raised it grew that list by one
//! waker per timed-out open, without bound.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use culvert_proto::config::INITIAL_MAX_STREAMS;
use culvert_proto::{Config, Connection, Side};
use culvert_transport::wsframe::{Role, WsConn};
use culvert_transport::Mux;
use tokio::io::AsyncReadExt;

/// A waker that does nothing; its reference count tells how many copies are held.
struct Counted;

impl Wake for Counted {
    fn wake(self: Arc<Self>) {}
}

#[tokio::test]
async fn an_abandoned_open_leaves_no_waker_behind() {
    let (near, mut far) = tokio::io::duplex(1 << 20);
    // The far end reads and discards everything, and never raises the stream limit.
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(far.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let conn = Connection::new(Side::Client, Config::default(), std::time::Instant::now()).unwrap();
    let (mux, _events) = Mux::spawn_with(WsConn::new(near, Role::Client), conn);
    // Use up the peer's initial stream limit.
    let mut held = Vec::new();
    for _ in 0..INITIAL_MAX_STREAMS {
        let s = tokio::time::timeout(Duration::from_secs(5), mux.open("svc"))
            .await
            .expect("open within the limit does not wait")
            .expect("open");
        held.push(s);
    }

    let counted = Arc::new(Counted);
    let waker = Waker::from(counted.clone());
    let base = Arc::strong_count(&counted);
    for _ in 0..100 {
        let mut open = Box::pin(mux.open("svc"));
        let mut cx = Context::from_waker(&waker);
        assert!(
            matches!(open.as_mut().poll(&mut cx), Poll::Pending),
            "the stream limit is exhausted: the open waits"
        );
        drop(open);
    }
    assert_eq!(
        Arc::strong_count(&counted),
        base,
        "100 abandoned opens left {} wakers behind",
        Arc::strong_count(&counted) - base
    );

    // The same through a timeout, as callers write it.
    let r = tokio::time::timeout(Duration::from_millis(50), mux.open("svc")).await;
    assert!(r.is_err(), "the open waits while the limit is reached");

    // A waiting open still completes once the connection ends (it is woken).
    let waiting = tokio::spawn({
        let mux = mux.clone();
        async move { mux.open("svc").await.is_err() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    mux.abort("test over");
    let failed = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a waiting open is woken when the connection ends")
        .unwrap();
    assert!(failed);
    drop(held);
    drain.abort();
}
