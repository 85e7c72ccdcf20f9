//! Port leases: sticky, requested ports, refusals, exhaustion, and two servers leasing
//! at once never handing out a port twice.

mod common;

use std::collections::HashSet;

use common::*;
use culvert_cluster::{ClusterError, Proto};

const RANGE: (u16, u16) = (40_000, 40_009);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_sticky_and_take_the_lowest_free_port() {
    let pg = postgres();
    let db = connect(&pg).await;
    let a = db
        .lease(Proto::Tcp, "acme", "web", 0, RANGE, &[])
        .await
        .unwrap();
    assert_eq!(a, 40_000);
    let b = db
        .lease(Proto::Tcp, "acme", "db", 0, RANGE, &[])
        .await
        .unwrap();
    assert_eq!(b, 40_001);
    // Sticky: the same service gets its port again, from any handle.
    assert_eq!(
        db.lease(Proto::Tcp, "acme", "web", 0, RANGE, &[])
            .await
            .unwrap(),
        a
    );
    let other = connect(&pg).await;
    assert_eq!(
        other
            .lease(Proto::Tcp, "acme", "web", 0, RANGE, &[])
            .await
            .unwrap(),
        a
    );
    // Asking for the port it holds is the same.
    assert_eq!(
        db.lease(Proto::Tcp, "acme", "web", a, RANGE, &[])
            .await
            .unwrap(),
        a
    );
    // Another tenant's service of the same name is another lease.
    assert_eq!(
        db.lease(Proto::Tcp, "zeta", "web", 0, RANGE, &[])
            .await
            .unwrap(),
        40_002
    );
    // UDP ports are leased apart from TCP ports.
    assert_eq!(
        db.lease(Proto::Udp, "acme", "dns", 0, RANGE, &[])
            .await
            .unwrap(),
        40_000
    );
    // Released, its port is free again and the service gets a new lease next time.
    assert!(db.release_lease(Proto::Tcp, "acme", "web").await.unwrap());
    assert!(!db.release_lease(Proto::Tcp, "acme", "web").await.unwrap());
    assert_eq!(
        db.lease(Proto::Tcp, "acme", "new", 0, RANGE, &[])
            .await
            .unwrap(),
        40_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_ports_are_taken_refused_or_moved_to() {
    let pg = postgres();
    let db = connect(&pg).await;
    assert_eq!(
        db.lease(Proto::Tcp, "acme", "web", 40_005, RANGE, &[])
            .await
            .unwrap(),
        40_005
    );
    // Held by another service.
    match db
        .lease(Proto::Tcp, "zeta", "api", 40_005, RANGE, &[])
        .await
    {
        Err(ClusterError::PortTaken {
            proto,
            port,
            holder,
        }) => {
            assert_eq!(
                (proto, port, holder.as_str()),
                (Proto::Tcp, 40_005, "acme/web")
            );
        }
        other => panic!("expected PortTaken, got {other:?}"),
    }
    // Outside the range, or outside the token's allowed ports.
    match db.lease(Proto::Tcp, "acme", "x", 50_000, RANGE, &[]).await {
        Err(ClusterError::PortNotAllowed { port: 50_000, .. }) => {}
        other => panic!("expected PortNotAllowed, got {other:?}"),
    }
    match db
        .lease(Proto::Tcp, "acme", "x", 40_001, RANGE, &[(40_004, 40_006)])
        .await
    {
        Err(ClusterError::PortNotAllowed { port: 40_001, .. }) => {}
        other => panic!("expected PortNotAllowed, got {other:?}"),
    }
    // A service asking for another port moves there; its old port is free again.
    assert_eq!(
        db.lease(Proto::Tcp, "acme", "web", 40_007, RANGE, &[])
            .await
            .unwrap(),
        40_007
    );
    assert_eq!(
        db.lease(Proto::Tcp, "zeta", "api", 40_005, RANGE, &[])
            .await
            .unwrap(),
        40_005
    );
    // Allowed ranges: the lowest free port within them.
    assert_eq!(
        db.lease(Proto::Tcp, "acme", "b", 0, RANGE, &[(40_005, 40_009)])
            .await
            .unwrap(),
        40_006
    );
    // A lease that no longer fits the token's ports moves into them.
    assert_eq!(
        db.lease(Proto::Tcp, "zeta", "api", 0, RANGE, &[(40_000, 40_002)])
            .await
            .unwrap(),
        40_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_range_is_an_error() {
    let pg = postgres();
    let db = connect(&pg).await;
    let small = (40_000, 40_002);
    for (i, s) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            db.lease(Proto::Udp, "acme", s, 0, small, &[])
                .await
                .unwrap(),
            40_000 + i as u16
        );
    }
    match db.lease(Proto::Udp, "acme", "d", 0, small, &[]).await {
        Err(
            e @ ClusterError::Exhausted {
                proto: Proto::Udp,
                start: 40_000,
                end: 40_002,
            },
        ) => {
            assert!(e.to_string().contains("no free udp port"), "{e}");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    // Allowed ranges outside the server's range leave nothing.
    match db
        .lease(Proto::Tcp, "acme", "e", 0, small, &[(50_000, 50_010)])
        .await
    {
        Err(ClusterError::Exhausted { .. }) => {}
        other => panic!("expected Exhausted, got {other:?}"),
    }
    // Those holding leases keep them.
    assert_eq!(
        db.lease(Proto::Udp, "acme", "b", 0, small, &[])
            .await
            .unwrap(),
        40_001
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_leasing_at_once_never_share_a_port() {
    const SERVICES: usize = 100;
    let range = (41_000, 41_149);
    let pg = postgres();
    let (a, b) = (connect(&pg).await, connect(&pg).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SERVICES {
        // Interleaved: even services through one server, odd through the other.
        let db = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let service = format!("svc{i}");
            let port = db.lease(Proto::Tcp, "acme", &service, 0, range, &[]).await;
            (service, port)
        });
    }
    let mut returned = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (service, port) = joined.expect("lease task");
        let port = port.unwrap_or_else(|e| panic!("{service}: {e}"));
        assert!((range.0..=range.1).contains(&port), "{service}: {port}");
        assert!(returned.insert(port), "port {port} returned twice");
    }
    assert_eq!(returned.len(), SERVICES);
    // The table agrees: one lease per service, no port twice, all within the range.
    let row = sql(&pg)
        .await
        .query_one(
            "SELECT count(*), count(DISTINCT port), count(DISTINCT (tenant, service)),
                    min(port), max(port)
             FROM culvert_leases WHERE proto = 'tcp'",
            &[],
        )
        .await
        .unwrap();
    let (n, ports, services): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (n, ports, services),
        (SERVICES as i64, SERVICES as i64, SERVICES as i64)
    );
    let (lo, hi): (i32, i32) = (row.get(3), row.get(4));
    assert!(
        lo >= i32::from(range.0) && hi <= i32::from(range.1),
        "{lo}-{hi}"
    );
    // Every service leasing again (sticky) gets the port it has, from either server.
    for i in 0..SERVICES {
        let db = if i % 2 == 0 { &b } else { &a };
        let service = format!("svc{i}");
        let p = db
            .lease(Proto::Tcp, "acme", &service, 0, range, &[])
            .await
            .unwrap();
        assert!(returned.contains(&p));
    }
    let n: i64 = sql(&pg)
        .await
        .query_one("SELECT count(*) FROM culvert_leases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, SERVICES as i64);
}
