//! Connecting: migrations run once even when several servers start together, and a newer
//! schema than this build knows is refused.

mod common;

use common::*;
use culvert_cluster::{ClusterDb, ClusterError, SCHEMA_VERSION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_connecting_at_once_migrate_once() {
    let pg = postgres();
    let url = pg.url();
    let (a, b) = tokio::join!(
        ClusterDb::connect(&url, TIMEOUT),
        ClusterDb::connect(&url, TIMEOUT)
    );
    let (a, b) = (a.expect("first connect"), b.expect("second connect"));
    let c = sql(&pg).await;
    let rows = c
        .query(
            "SELECT version FROM culvert_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    // Both handles work on the same tables.
    a.insert_token("t1", &serde_json::json!({"name": "t1"}))
        .await
        .unwrap();
    assert_eq!(b.tokens().await.unwrap().len(), 1);
    // A third server later finds nothing to do.
    let _c = connect(&pg).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM culvert_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, i64::from(SCHEMA_VERSION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let pg = postgres();
    let _db = connect(&pg).await;
    sql(&pg)
        .await
        .execute(
            "INSERT INTO culvert_schema_migrations (version) VALUES ($1)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    match ClusterDb::connect(&pg.url(), TIMEOUT).await {
        Err(e @ ClusterError::Schema(_)) => {
            assert!(e.to_string().contains("newer"), "{e}");
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_is_the_same_for_every_server() {
    let pg = postgres();
    let (a, b) = (connect(&pg).await, connect(&pg).await);
    let (sa, sb) = tokio::join!(a.cluster_secret(), b.cluster_secret());
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa, sb);
    assert!(sa.starts_with("cvc_") && sa.len() == 4 + 64, "{sa}");
    assert_eq!(a.cluster_secret().await.unwrap(), sa);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_is_an_error_not_a_panic() {
    match ClusterDb::connect("postgres://127.0.0.1:notaport/postgres", TIMEOUT).await {
        Err(ClusterError::InvalidUrl { .. }) => {}
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
}
