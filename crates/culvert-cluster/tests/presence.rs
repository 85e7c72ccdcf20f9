//! Servers and presence: heartbeats by the database's clock, presence of live servers
//! only, and a removed server taking its presence with it.

mod common;

use std::time::Duration;

use common::*;
use culvert_cluster::{listen, Notice, Presence, Proto, ServerRow};

fn server(id: &str) -> ServerRow {
    ServerRow {
        id: id.to_owned(),
        advertise: format!("{id}.example:8443"),
        fingerprint: (id == "s1").then(|| "ab:cd".to_owned()),
    }
}

fn presence(service: &str, port: u16) -> Presence {
    Presence {
        tenant: "acme".to_owned(),
        service: service.to_owned(),
        proto: Proto::Tcp,
        port,
        token: "alice".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_set_cleared_and_goes_with_its_server() {
    let pg = postgres();
    let db = connect(&pg).await;
    let (_l, mut rx) = listen(&pg.url());
    expect_notice(&mut rx, Notice::Reconnected, WAIT).await;
    let (s1, s2) = (server("s1"), server("s2"));
    db.heartbeat(&s1).await.unwrap();
    db.heartbeat(&s2).await.unwrap();
    expect_notice(&mut rx, Notice::Presence, WAIT).await;
    db.set_presence("s1", &presence("web", 40_000))
        .await
        .unwrap();
    db.set_presence("s1", &presence("db", 40_001))
        .await
        .unwrap();
    db.set_presence("s2", &presence("api", 40_002))
        .await
        .unwrap();
    // Upsert: the same service again replaces its row.
    db.set_presence("s1", &presence("web", 40_003))
        .await
        .unwrap();
    expect_notice(&mut rx, Notice::Presence, WAIT).await;

    let live = db.live_presence(Duration::from_secs(600)).await.unwrap();
    let seen: Vec<(&str, &str, u16)> = live
        .iter()
        .map(|(s, p)| (s.id.as_str(), p.service.as_str(), p.port))
        .collect();
    assert_eq!(
        seen,
        [
            ("s1", "db", 40_001),
            ("s1", "web", 40_003),
            ("s2", "api", 40_002)
        ]
    );
    assert_eq!(live[0].0, s1);
    assert_eq!(live[0].1, presence("db", 40_001));

    db.clear_presence("s1", "acme", "db", Proto::Tcp)
        .await
        .unwrap();
    // Another protocol's row of the same name is another row: nothing to clear.
    db.clear_presence("s1", "acme", "web", Proto::Udp)
        .await
        .unwrap();
    let live = db.live_presence(Duration::from_secs(600)).await.unwrap();
    assert_eq!(live.len(), 2);

    drain(&mut rx);
    db.remove_server("s2").await.unwrap();
    expect_notice(&mut rx, Notice::Presence, WAIT).await;
    let live = db.live_presence(Duration::from_secs(600)).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].1.service, "web");
    let n: i64 = sql(&pg)
        .await
        .query_one(
            "SELECT count(*) FROM culvert_presence WHERE server_id = 's2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the removed server's presence went with it");

    db.clear_server_presence("s1").await.unwrap();
    assert!(db
        .live_presence(Duration::from_secs(600))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        db.live_servers(Duration::from_secs(600)).await.unwrap(),
        vec![s1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_whose_heartbeat_stopped_are_not_live() {
    let pg = postgres();
    let db = connect(&pg).await;
    let max_age = Duration::from_secs(1);
    let (s1, s2) = (server("s1"), server("s2"));
    db.heartbeat(&s1).await.unwrap();
    db.heartbeat(&s2).await.unwrap();
    db.set_presence("s1", &presence("web", 40_000))
        .await
        .unwrap();
    db.set_presence("s2", &presence("api", 40_001))
        .await
        .unwrap();
    // s2 stops beating; s1 goes on. Past max_age, only s1 is live. (s1 is beaten again
    // before each look: on a busy machine one look may come late, so a few are allowed.)
    tokio::time::sleep(max_age + Duration::from_millis(500)).await;
    let mut last = Vec::new();
    for _ in 0..20 {
        db.heartbeat(&s1).await.unwrap();
        let servers = db.live_servers(max_age).await.unwrap();
        let live = db.live_presence(max_age).await.unwrap();
        assert!(!servers.contains(&s2), "s2 is still live: {servers:?}");
        assert!(live.iter().all(|(s, _)| s.id == "s1"), "{live:?}");
        if servers == [s1.clone()] && live.len() == 1 {
            assert_eq!(live[0].1.service, "web");
            return;
        }
        last = servers;
    }
    panic!("s1 never showed as live right after its heartbeat: {last:?}");
}
