//! Memory of a bulk transfer through a server and an agent with eight runtime workers each
//! (the default on an eight-CPU machine): eight public connections at once echo a seeded
//! stream of [`MIB`] MiB each way through the tunnel.
//!
//! Figures asserted: every echo is byte-exact, and the peak of each process's anonymous
//! memory (its peak resident set, `VmHWM`, less the file-backed and shared pages it holds at
//! the end: the binary's code and the C library's) stays within [`HEAP_BUDGET_MIB`]. With the
//! C library's allocator serving the data path's 256 KiB buffers, each worker thread's arena
//! kept its own few MiB of freed buffers, and this test's peaks were 39-45 MiB (optimized
//! build); one cache for the whole process keeps them at 11-12 MiB (17 MiB in a debug build),
//! whatever the worker count. The peaks are printed.

mod support;

use std::time::Duration;

use support::faults::echo_exact;
use support::*;

/// Workers per process.
const WORKERS: &str = "8";
/// Parallel public connections.
const STREAMS: u64 = 8;
/// MiB each connection sends (and gets back).
const MIB: u64 = 192;
/// Bound of each process's anonymous memory at its peak, MiB: the windows in flight of eight
/// streams (each direction 256 KiB per stream and hop at first, growing with the round-trip
/// time), up to 8 MiB of freed buffers kept for reuse, and the runtime's eight stacks.
const HEAP_BUDGET_MIB: u64 = 24;

/// `key` of /proc/`pid`/status, KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    support::faults::status_kib(pid, key)
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Peak anonymous memory so far, MiB: the peak resident set less the file-backed and shared
/// pages resident now (which only grow while the code runs).
fn peak_heap_mib(pid: u32) -> f64 {
    let kib = status_kib(pid, "VmHWM")
        .saturating_sub(status_kib(pid, "RssFile") + status_kib(pid, "RssShmem"));
    kib as f64 / 1024.0
}

#[test]
fn bulk_through_eight_workers_stays_within_one_heap_budget() {
    let dir = TempDir::new("memory-workers");
    let tokens = dir.path().join("tokens.toml");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, new_token(&tokens, "mem")).unwrap();
    let echo = echo_service();
    let port = free_port();
    let mut server = Proc::spawn(
        "culvert server",
        server_args(
            culvert().env("CULVERT_WORKER_THREADS", WORKERS),
            &tokens,
            port,
        )
        .arg("--insecure-plain"),
    );
    server
        .try_wait_line("tunnel endpoint ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .env("CULVERT_WORKER_THREADS", WORKERS)
            .arg("agent")
            .args(agent_args(
                port,
                &token_file,
                &format!("echo=tcp://127.0.0.1:{echo}"),
            )),
    );
    let public = public_port_of(&mut agent, "echo", 0);

    std::thread::scope(|s| {
        let echoes: Vec<_> = (0..STREAMS)
            .map(|i| {
                s.spawn(move || {
                    echo_exact(
                        public,
                        0x6d65_6d00 + i,
                        MIB << 20,
                        256 << 10,
                        Duration::from_secs(30),
                        Duration::from_secs(300),
                    )
                })
            })
            .collect();
        for (i, e) in echoes.into_iter().enumerate() {
            let e = e
                .join()
                .expect("echo thread")
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            assert!(e.exact(), "stream {i}: the echo differs: {e:?}");
        }
    });

    let (srv, agt) = (peak_heap_mib(server.pid()), peak_heap_mib(agent.pid()));
    eprintln!(
        "{STREAMS} streams × {MIB} MiB each way, {WORKERS} workers per process: peak heap server {srv:.1} MiB, agent {agt:.1} MiB"
    );
    for (who, mib) in [("server", srv), ("agent", agt)] {
        assert!(
            mib <= HEAP_BUDGET_MIB as f64,
            "the {who}'s anonymous memory peaked at {mib:.1} MiB, over {HEAP_BUDGET_MIB} MiB"
        );
    }
}
