//! A backend that refuses connections: the agent exposes a service whose target port has
//! nothing listening (127.0.0.1:1). A public client connecting to it must see its
//! connection closed (end of file or reset) at once, not left hanging until some timeout,
//! while a long transfer on another service of the same agent, on the same tunnel
//! connection (pool 1), goes on untouched.
//!
//! Figures asserted:
//! - each of [`ROUNDS`] public connections to the refused service is closed within 2 s of
//!   its connect (the agent's dial is refused in microseconds; 2 s stays far from every
//!   timeout, the agent's dial timeout of 10 s and the heartbeats, yet is robust in a debug
//!   build on a busy machine); the measured figures (median, worst) are printed;
//! - meanwhile the echo transfer on the other service keeps moving (more bytes back after
//!   every batch of [`BATCH`] refusals) and is byte-exact to its end of file.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::faults::*;
use support::*;

/// Public connections made to the refused service.
const ROUNDS: usize = 100;
/// Refusals between two checks that the transfer moved.
const BATCH: usize = 10;
/// Bound of one refusal.
const CLOSED_WITHIN: Duration = Duration::from_secs(2);
/// A port nothing listens on and no test can bind (privileged).
const REFUSED: u16 = 1;

#[test]
fn refused_backend_closes_the_client_at_once_and_spares_the_others() {
    assert!(
        TcpStream::connect(("127.0.0.1", REFUSED)).is_err(),
        "something listens on 127.0.0.1:{REFUSED}; the test needs a refused port"
    );
    let echo = echo_service();
    let t = TunnelSpec::new(2, 1)
        .service("echo", echo)
        .service("refused", REFUSED)
        .start("refused");
    let refused = t.public("refused");
    // Refusals on an idle tunnel first: the figure without anything queued ahead.
    let mut idle: Vec<Duration> = (0..BATCH)
        .map(|round| refusal(refused, round, &t))
        .collect();
    let pump = EchoPump::start(t.public("echo"), 0x5eed_0002);
    assert!(
        eventually(WAIT, || pump.read() >= 1 << 20),
        "the transfer did not get going"
    );
    let before = pump.rate_over(Duration::from_secs(1));

    let t0 = Instant::now();
    let mut took = Vec::with_capacity(ROUNDS);
    let mut moved = pump.read();
    for round in 0..ROUNDS {
        took.push(refusal(refused, round, &t));
        if round % BATCH == BATCH - 1 {
            // The transfer on the other service is not held up by the refusals.
            let limit = Duration::from_secs(5);
            assert!(
                eventually(limit, || pump.read() > moved),
                "the transfer stood still for {limit:?} during refusals {}..={round}",
                round + 1 - BATCH
            );
            moved = pump.read();
        }
    }
    let during = t0.elapsed();
    assert!(
        pump.ended().is_none(),
        "the transfer ended: {:?}",
        pump.ended()
    );
    let after = pump.rate_over(Duration::from_secs(1));

    idle.sort();
    eprintln!(
        "{BATCH} refused connections on the idle tunnel closed after: median {:?}, worst {:?}",
        idle[BATCH / 2],
        idle[BATCH - 1]
    );
    took.sort();
    eprintln!(
        "{ROUNDS} refused connections beside the transfer closed after: median {:?}, worst {:?}, best {:?}; \
         the transfer echoed {} MiB/s before, {} MiB/s after, {} MiB during the {during:?} of refusals",
        took[ROUNDS / 2],
        took[ROUNDS - 1],
        took[0],
        before >> 20,
        after >> 20,
        (pump.read() >> 20),
    );
    let total = pump
        .finish(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the transfer: {e}\n{}", t.logs()));
    eprintln!("transfer byte-exact: {} MiB each way", total >> 20);
    t.wait_healthy(Duration::from_secs(10));
}

/// Connects to the refused service's public port and waits for the close; fails the test
/// unless it comes, as an end of file or a reset, within [`CLOSED_WITHIN`]. Returns the
/// time from connect to close.
fn refusal(port: u16, round: usize, t: &Tunnel) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("public connect");
    // Far above the bound: a hung connection is measured, not waited for forever.
    s.set_read_timeout(Some(5 * CLOSED_WITHIN)).unwrap();
    let mut buf = [0u8; 64];
    let r = s.read(&mut buf);
    let d = start.elapsed();
    match r {
        Ok(0) => {}
        Ok(n) => panic!("round {round}: {n} bytes from a refused service"),
        Err(e) if is_timeout(&e) => panic!("round {round}: still open after {d:?}"),
        // A reset closes it too.
        Err(_) => {}
    }
    assert!(
        d <= CLOSED_WITHIN,
        "round {round}: closed after {d:?}\n{}",
        t.logs()
    );
    d
}
