//! Half-open tunnel connections: one direction of the agent's only connection stops
//! through the FaultRelay while the other keeps flowing, idle or in the middle of a
//! transfer. `Direction::Up` (agent → server stalled): the server hears nothing, while the
//! agent still gets the server's heartbeats; `Direction::Down` (server → agent stalled):
//! the mirror image. Each end must notice from what it sees (silence, or a write that
//! makes no progress), and the agent must come back on a fresh connection.
//!
//! Figures asserted, all derived from the heartbeat interval `HB` (2 s here), pool 1:
//! - the server drops the stale connection ("agent connection closed") within `2 HB + 1 s`
//!   of the stall, and the agent ("tunnel connection lost") within the same bound;
//! - a transfer caught on it is closed (end of file or reset, not hung) within that bound,
//!   and what it echoed until then was byte-exact;
//! - the agent reconnects through a new connection: within 10 s of the stall (the bound,
//!   plus a first backoff of at most 1 s, plus one handshake, with margin) the server has
//!   exactly one session of the agent, holding one connection and no suspect one, its
//!   service on the same public port, the agent is ready, and the public port echoes.

mod support;

use std::time::{Duration, Instant};

use culvert_testkit::fault_relay::Direction;
use support::faults::*;
use support::*;

const HB: u64 = 2;

/// Stalls `dir` on the agent's only connection, with a transfer in flight or not, and
/// checks the figures of the module documentation.
fn stall_one_direction(dir: Direction, mid_transfer: bool) {
    let echo = echo_service();
    let mut t = TunnelSpec::new(HB, 1)
        .service("echo", echo)
        .start("half-open");
    let public = t.public("echo");
    assert!(
        probe(public, Duration::from_secs(5)),
        "echo before the stall"
    );
    assert_eq!(t.relay().accepted(), 1, "the agent's one connection");
    let pump = mid_transfer.then(|| {
        let p = EchoPump::start(public, 0x4a1f_0e11);
        assert!(
            poll_until(WAIT, || p.read() >= 1 << 20),
            "the transfer did not get going"
        );
        p
    });

    let (server_from, agent_from) = (t.server.line_count(), t.agent.line_count());
    let t0 = Instant::now();
    assert!(t.relay().stall_conn(0, dir), "relay connection 0 is open");
    let bound = Duration::from_secs(2 * HB + 1);

    // Both figures first, then the checks: a build that misses one still shows the other.
    // Waited for well past the bound, to measure such a build (a 10 s heartbeat: 20 s).
    let wait = Duration::from_secs(25);
    let server_took = noticed_within(&mut t.server, SERVER_DROPPED, server_from, t0, wait);
    let agent_took = noticed_within(&mut t.agent, AGENT_LOST, agent_from, t0, wait);
    let why = |p: &Proc, needles: &[&str], from: usize| {
        p.log()
            .lines()
            .skip(from)
            .find(|l| needles.iter().any(|n| l.contains(n)))
            .unwrap_or("(nothing)")
            .to_owned()
    };
    eprintln!(
        "{dir:?} stalled{}: server dropped it after {server_took:?}, agent after {agent_took:?} (bound {bound:?})\n  server: {}\n  agent: {}",
        if mid_transfer { " mid-transfer" } else { " idle" },
        why(&t.server, SERVER_DROPPED, server_from),
        why(&t.agent, AGENT_LOST, agent_from),
    );
    assert!(
        server_took.is_some_and(|d| d <= bound),
        "server dropped the stale connection after {server_took:?}\n{}",
        t.logs()
    );
    assert!(
        agent_took.is_some_and(|d| d <= bound),
        "agent dropped the stale connection after {agent_took:?}\n{}",
        t.logs()
    );

    if let Some(p) = &pump {
        assert!(
            poll_until(bound, || p.ended().is_some()),
            "the transfer on the stale connection is hung"
        );
        let ended = p.ended().unwrap();
        let took = ended.at.duration_since(t0);
        eprintln!(
            "transfer closed after {took:?} ({}), {} bytes echoed exactly",
            ended.how,
            p.read()
        );
        assert!(took <= bound, "transfer closed after {took:?}");
        assert_eq!(p.mismatch(), None, "the echo before the close");
    }

    // Back on a fresh connection, with no trace of the stale one.
    let limit = Duration::from_secs(10);
    t.wait_healthy(limit.saturating_sub(t0.elapsed()));
    assert!(
        poll_until(limit.saturating_sub(t0.elapsed()), || probe(
            public,
            Duration::from_secs(2)
        )),
        "the public port does not echo after the reconnect\n{}",
        t.logs()
    );
    let back = t0.elapsed();
    eprintln!("healthy and serving {back:?} after the stall");
    assert!(
        t.relay().accepted() >= 2,
        "the agent reconnected through a new connection"
    );
    assert!(back <= limit, "serving again after {back:?}");
}

#[test]
fn agent_to_server_stalled_while_idle() {
    stall_one_direction(Direction::Up, false);
}

#[test]
fn server_to_agent_stalled_while_idle() {
    stall_one_direction(Direction::Down, false);
}

#[test]
fn agent_to_server_stalled_mid_transfer() {
    stall_one_direction(Direction::Up, true);
}

#[test]
fn server_to_agent_stalled_mid_transfer() {
    stall_one_direction(Direction::Down, true);
}
