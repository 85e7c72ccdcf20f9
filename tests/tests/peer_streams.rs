//! Streams a client opens towards the server (access sessions, node tunnels), with hostile
//! and malformed targets: each is refused with a reset whose code says why, nothing is
//! dialed outside the allow-list, and the server keeps serving. Real server, real TLS, real
//! sockets on loopback.

mod support;

use culvert_proto::reset_code;
use culvert_transport::reset_code_of;
use std::net::{Ipv4Addr, SocketAddr};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A TCP echo service on loopback that counts the connections it accepted.
async fn counting_echo() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// What the server answered a stream opened towards `target`: the reset code, or `None`
/// when it did not reset it (the stream carries data or ended cleanly).
async fn answer(link: &culvert_agent::AgentHandle, target: &str) -> Option<u64> {
    let s = link.open(target).await.expect("open a stream");
    // The reset may arrive before any of these steps; whichever sees it first reports it.
    let r = async {
        s.send(bytes::Bytes::from_static(b"hello")).await?;
        s.finish()?;
        s.recv().await
    };
    match within(WAIT, "the server's answer", r).await {
        Ok(_) => None,
        Err(e) => Some(reset_code_of(&e).unwrap_or_else(|| panic!("{target:?}: not a reset: {e}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_are_refused_with_a_reason_and_nothing_else_is_dialed() {
    let (allowed, allowed_hits) = counting_echo().await;
    let (other, other_hits) = counting_echo().await;
    let server = start_server(|c| {
        c.allow_dial = culvert_server::AllowList::parse(&[allowed.to_string()]).unwrap();
    })
    .await;
    // A client with no services of its own: it only opens streams.
    let link = server.agent(&[]).await;

    let long = "x".repeat(1000);
    let long_addr = format!("{}:{}", "a".repeat(1000), allowed.port());
    let other_name = format!("localhost:{}", other.port());
    let other_udp = format!("udp://127.0.0.1:{}", other.port());
    let cases: Vec<(&str, &[u64])> = vec![
        ("", &[reset_code::NOT_ALLOWED]),
        ("?", &[reset_code::NOT_ALLOWED]),
        ("?nosuch", &[reset_code::NOT_ALLOWED]),
        ("nosuch", &[reset_code::NOT_ALLOWED]),
        (long.as_str(), &[reset_code::NOT_ALLOWED]),
        (":", &[reset_code::NOT_ALLOWED]),
        ("::::", &[reset_code::NOT_ALLOWED]),
        ("[::1", &[reset_code::NOT_ALLOWED]),
        ("127.0.0.1:99999", &[reset_code::NOT_ALLOWED]),
        ("127.0.0.1:0", &[reset_code::NOT_ALLOWED]),
        ("\u{0}:1", &[reset_code::NOT_ALLOWED]),
        (
            long_addr.as_str(),
            &[reset_code::NOT_ALLOWED, reset_code::CONNECT_FAILED],
        ),
        (other_name.as_str(), &[reset_code::NOT_ALLOWED]),
        ("udp://", &[reset_code::NOT_ALLOWED]),
        (other_udp.as_str(), &[reset_code::NOT_ALLOWED]),
    ];
    for (target, want) in &cases {
        let got = answer(&link, target).await;
        assert!(
            got.is_some_and(|c| want.contains(&c)),
            "target {:?}: expected a reset with one of {want:?}, got {got:?}",
            &target[..target.len().min(40)]
        );
    }
    // A burst of refused opens is absorbed without harm.
    for _ in 0..300 {
        let s = link.open("127.0.0.1:1").await.expect("open");
        drop(s);
    }
    assert_eq!(
        other_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a target outside the allow-list was dialed"
    );

    // The allowed target works, by address and by a name that resolves to it.
    for target in [allowed.to_string(), format!("localhost:{}", allowed.port())] {
        let s = link.open(&target).await.unwrap();
        s.send(bytes::Bytes::from_static(b"ping")).await.unwrap();
        s.finish().unwrap();
        let mut back = Vec::new();
        while let Some(chunk) = within(WAIT, "echo", s.recv()).await.unwrap() {
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, b"ping", "through {target}");
    }
    assert!(allowed_hits.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    // The link survived all of it: every pooled connection is still up.
    assert_eq!(link.connections_up(), 4);
}
