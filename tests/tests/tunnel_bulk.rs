//! Bulk transfers through a real tunnel on loopback: server and agent in process, `wss://`
//! with a self-signed certificate pinned by the agent, a TCP backend. Both directions carry
//! the full size at the same time, and both are checked byte for byte with SHA-256.
//!
//! The size is `CULVERT_E2E_MIB` MiB each way (256 by default); the time taken is printed.

mod support;

use std::time::Instant;

use support::*;
use tokio::task::JoinSet;

/// The two bulk tests take turns, so neither's time includes the other's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_each_way_on_one_stream() {
    let _turn = SERIAL.lock().await;
    let total = e2e_bytes();
    let server = start_server(|_| {}).await;
    let backend = spawn_exchange_backend().await;
    let agent = server.agent(&[("bulk", backend)]).await;
    let port = public_port(&agent, "bulk");

    let start = Instant::now();
    let r = within(
        BULK_LIMIT,
        "bulk transfer on one stream",
        exchange(port, total, 1),
    )
    .await;
    let elapsed = start.elapsed();
    if let Err(e) = r {
        panic!("bulk transfer on one stream failed: {e}");
    }
    eprintln!(
        "1 stream: {} MiB each way, byte-exact, in {elapsed:.1?} ({:.1} MiB/s each way)",
        total / MIB,
        rate(total, elapsed)
    );
    assert_eq!(agent.connections_up(), 4, "the pool is intact afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_each_way_on_64_concurrent_streams() {
    const STREAMS: u64 = 64;
    let _turn = SERIAL.lock().await;
    let total = e2e_bytes();
    let per_stream = total / STREAMS;
    let server = start_server(|_| {}).await;
    let backend = spawn_exchange_backend().await;
    let agent = server.agent(&[("bulk", backend)]).await;
    let port = public_port(&agent, "bulk");

    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..STREAMS {
        // A distinct seed per stream: distinct content each way on every stream.
        let seed = 0x1000 + i * 0x9e37_79b9;
        set.spawn(async move { (i, exchange(port, per_stream, seed).await) });
    }
    let mut failures = Vec::new();
    within(BULK_LIMIT, "64 concurrent bulk transfers", async {
        while let Some(r) = set.join_next().await {
            match r {
                Ok((_, Ok(()))) => {}
                Ok((i, Err(e))) => failures.push(format!("stream {i}: {e}")),
                Err(e) => failures.push(format!("task: {e}")),
            }
        }
    })
    .await;
    let elapsed = start.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {STREAMS} streams failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{STREAMS} streams: {} MiB each way in total ({} KiB per stream), byte-exact, in {elapsed:.1?} ({:.1} MiB/s each way)",
        total / MIB,
        per_stream / 1024,
        rate(total, elapsed)
    );
    assert_eq!(agent.connections_up(), 4, "the pool is intact afterwards");
}
