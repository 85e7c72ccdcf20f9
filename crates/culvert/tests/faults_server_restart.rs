//! The server crashes and comes back: SIGKILL while the tunnel is idle (no goodbye, the
//! kernel closes its sockets), then a new server on the same port with the same token file
//! and port range. The agent (pool 2, dialing the server directly) must be back and serving
//! within its reconnect backoff plus one handshake, with nothing stale left behind.
//!
//! Figures asserted:
//! - the agent notices the crash within 2 s (the kernel's FIN or reset, not a heartbeat);
//! - the public port echoes again within 10 s of the kill: the agent's backoff starts at
//!   0.5-1 s and doubles (1-2 s, then 2-4 s) if an attempt comes before the new server
//!   listens, which it does within a second here, plus a handshake of milliseconds;
//! - the new server has exactly one session of the agent, with both pooled connections and
//!   no suspect one, its service on the same public port as before (the new server hands
//!   out the same first port of the same range); the agent is ready with its whole pool.
//!
//! The measured times are printed.

mod support;

use std::time::{Duration, Instant};

use support::faults::*;
use support::*;

#[test]
fn agent_is_back_soon_after_the_server_restarts() {
    let echo = echo_service();
    let mut t = TunnelSpec::new(2, 2)
        .service("echo", echo)
        .direct()
        .start("server-restart");
    let public = t.public("echo");
    assert!(
        probe(public, Duration::from_secs(5)),
        "echo before the crash"
    );

    let from = t.agent.line_count();
    let killed = Instant::now();
    t.server.kill();
    let lost = noticed(
        &mut t.agent,
        AGENT_LOST,
        from,
        killed,
        Duration::from_secs(10),
    );
    t.restart_server();
    let restarted = killed.elapsed();

    let limit = Duration::from_secs(10);
    let mut tries = 0;
    let serving = poll_until(Duration::from_secs(30), || {
        tries += 1;
        probe(public, Duration::from_secs(2))
    });
    let back = killed.elapsed();
    let healthy = back + t.wait_healthy(limit);
    eprintln!(
        "after the kill: agent noticed in {lost:?}, new server up in {restarted:?}, \
         serving in {back:?} ({tries} probes), healthy in {healthy:?}"
    );
    assert!(serving, "not serving 30 s after the kill\n{}", t.logs());
    assert!(
        lost <= Duration::from_secs(2),
        "noticed the crash after {lost:?}"
    );
    assert!(back <= limit, "serving again {back:?} after the kill");
}
