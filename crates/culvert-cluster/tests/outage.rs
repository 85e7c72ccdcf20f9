//! The database going away and coming back: calls fail within their deadline instead of
//! hanging, the same handle works again afterwards, and the listener re-dials and says so.

mod common;

use std::time::Duration;

use common::*;
use culvert_cluster::{listen, ClusterDb, ClusterError, Notice};
use serde_json::json;

/// The short deadline this test gives the registry.
const SHORT: Duration = Duration::from_secs(2);

/// Fails the test unless `r` is a database-side error.
fn expect_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, ClusterError>) {
    match r {
        Err(e @ (ClusterError::Unavailable { .. } | ClusterError::Timeout { .. })) => {
            eprintln!("{what}: {e}");
            assert!(e.to_string().starts_with("cluster registry: "), "{e}");
        }
        other => panic!("{what}: expected Unavailable or Timeout, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_handle_works_again_after_the_database_comes_back() {
    let mut pg = postgres();
    let db = ClusterDb::connect(&pg.url(), SHORT).await.unwrap();
    let (_l, mut rx) = listen(&pg.url());
    expect_notice(&mut rx, Notice::Reconnected, WAIT).await;
    db.insert_token("before", &json!({})).await.unwrap();

    tokio::task::block_in_place(|| pg.stop());
    // Each call fails with the database's problem; its deadline bounds it (the outer
    // bound only catches a hang).
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, db.tokens()).await;
        expect_unavailable("tokens", r.expect("a call hung past its deadline"));
    }
    let r = tokio::time::timeout(WAIT, db.insert_token("during", &json!({}))).await;
    expect_unavailable("insert_token", r.expect("a call hung past its deadline"));
    let r = tokio::time::timeout(WAIT, ClusterDb::connect(&pg.url(), SHORT)).await;
    expect_unavailable("connect", r.expect("connect hung past its deadline"));

    drain(&mut rx);
    tokio::task::block_in_place(|| pg.start_again());
    // The same handle, without reconnecting by hand.
    let deadline = tokio::time::Instant::now() + WAIT;
    let tokens = loop {
        match db.tokens().await {
            Ok(t) => break t,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the registry did not recover: {e}"),
        }
    };
    assert_eq!(tokens.len(), 1);
    db.insert_token("after", &json!({})).await.unwrap();
    // The listener dialed again, says so, and hears changes again.
    expect_notice(&mut rx, Notice::Reconnected, WAIT).await;
    db.delete_token("after").await.unwrap();
    expect_notice(&mut rx, Notice::Tokens, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_started_while_the_database_is_down_connects_later() {
    let mut pg = postgres();
    tokio::task::block_in_place(|| pg.stop());
    let (_l, mut rx) = listen(&pg.url());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "a notice before any connection");
    tokio::task::block_in_place(|| pg.start_again());
    expect_notice(&mut rx, Notice::Reconnected, WAIT).await;
    let db = connect(&pg).await;
    db.put_tenant("acme", &json!({})).await.unwrap();
    expect_notice(&mut rx, Notice::Tokens, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_answers_times_out() {
    // A loopback listener that accepts and then says nothing, like a hung database.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
            if held.len() > 16 {
                break;
            }
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let r = tokio::time::timeout(WAIT, ClusterDb::connect(&url, SHORT)).await;
    match r.expect("connect hung past its deadline") {
        Err(e @ ClusterError::Timeout { .. }) => {
            assert_eq!(
                e.to_string(),
                "cluster registry: connecting and updating the schema took longer than 2 s"
            );
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    hold.abort();
}
