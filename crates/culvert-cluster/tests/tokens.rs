//! Tokens and tenants in the registry, and the notices their changes send.

mod common;

use common::*;
use culvert_cluster::{listen, ClusterError, Notice};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_added_listed_and_removed() {
    let pg = postgres();
    let db = connect(&pg).await;
    assert!(db.tokens().await.unwrap().is_empty());
    let alice = json!({"name": "alice", "sha256": "ab", "max_services": 64});
    db.insert_token("alice", &alice).await.unwrap();
    db.insert_token("bob", &json!({"name": "bob"}))
        .await
        .unwrap();
    let tokens = db.tokens().await.unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0], ("alice".to_owned(), alice.clone()));
    match db.insert_token("alice", &json!({"name": "other"})).await {
        Err(ClusterError::Duplicate(n)) => assert_eq!(n, "alice"),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    // The first entry is kept.
    assert_eq!(db.tokens().await.unwrap()[0].1, alice);
    assert!(db.delete_token("alice").await.unwrap());
    assert!(!db.delete_token("alice").await.unwrap());
    let names: Vec<String> = db
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(names, ["bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_upserted_and_removed() {
    let pg = postgres();
    let db = connect(&pg).await;
    db.put_tenant("acme", &json!({"max_services": 3}))
        .await
        .unwrap();
    db.put_tenant("acme", &json!({"max_services": 5}))
        .await
        .unwrap();
    assert_eq!(
        db.tenants().await.unwrap(),
        vec![("acme".to_owned(), json!({"max_services": 5}))]
    );
    assert!(db.delete_tenant("acme").await.unwrap());
    assert!(!db.delete_tenant("acme").await.unwrap());
    assert!(db.tenants().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_of_changes_made_elsewhere() {
    let pg = postgres();
    let writer = connect(&pg).await;
    let (_handle, mut rx) = listen(&pg.url());
    // Once the listener listens, it says so: from then on nothing is missed.
    expect_notice(&mut rx, Notice::Reconnected, WAIT).await;

    writer
        .insert_token("carol", &json!({"name": "carol"}))
        .await
        .unwrap();
    expect_notice(&mut rx, Notice::Tokens, WAIT).await;
    writer.delete_token("carol").await.unwrap();
    expect_notice(&mut rx, Notice::Tokens, WAIT).await;
    writer.put_tenant("acme", &json!({})).await.unwrap();
    expect_notice(&mut rx, Notice::Tokens, WAIT).await;

    // A change made with plain SQL (an operator's hand edit) is heard too.
    sql(&pg)
        .await
        .execute(
            "UPDATE culvert_tenants SET limits = '{\"max_services\": 1}'",
            &[],
        )
        .await
        .unwrap();
    expect_notice(&mut rx, Notice::Tokens, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_listener() {
    let pg = postgres();
    let (handle, mut rx) = listen(&pg.url());
    expect_notice(&mut rx, Notice::Reconnected, WAIT).await;
    drop(handle);
    // The task ends, and with it the channel.
    let end = tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} }).await;
    assert!(
        end.is_ok(),
        "the listener kept running after its handle was dropped"
    );
}
