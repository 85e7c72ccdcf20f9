//! A bulk transfer through a relay that splits the tunnel's byte stream anywhere: one
//! public connection to an echo service carries a seeded pseudo-random stream of
//! `CULVERT_TEST_BULK_MIB` MiB (default 256) up while the echo comes back down, and the
//! FaultRelay between agent and server re-chunks both directions into writes of 1 to
//! [`MAX_CHUNK`] bytes. Flow control, frame reassembly and the end of file must hold up
//! over hundreds of MiB of arbitrarily split frames.
//!
//! Figures asserted: the echo is byte-exact (same length, same SHA-256 as what was sent),
//! its end of file arrives, and the whole transfer takes at most [`LIMIT`] (no progress
//! for 30 s also fails it). The time and rate are printed.

mod support;

use std::time::Duration;

use support::faults::*;
use support::*;

/// Largest write of the re-chunking relay: pieces of 1 to 4,099 bytes (a prime, so they
/// drift across every boundary) still split WebSocket and tunnel frame headers at every
/// place, while the debug-built relay keeps up ~8-12 MiB/s each way on a busy 2-CPU
/// machine. With at most 97 bytes, as in `faults_half_close`, it managed 1.8 MiB/s: 256
/// MiB would take minutes, spent in the relay rather than in the code under test.
const MAX_CHUNK: usize = 4099;
/// Bound of the whole transfer.
const LIMIT: Duration = Duration::from_secs(240);
const SEED: u64 = 0xb01c_256d;

#[test]
fn bulk_echo_through_a_rechunking_relay_is_byte_exact() {
    let mib: u64 = std::env::var("CULVERT_TEST_BULK_MIB")
        .ok()
        .map(|v| v.parse().expect("CULVERT_TEST_BULK_MIB: a number of MiB"))
        .unwrap_or(256);
    let echo = echo_service();
    // A heartbeat well above the rest of the fault tests': the transfer is what is tested.
    let t = TunnelSpec::new(5, 1).service("echo", echo).start("bulk");
    t.relay().rechunk(SEED, MAX_CHUNK);
    let e = echo_exact(
        t.public("echo"),
        SEED,
        mib << 20,
        256 << 10,
        Duration::from_secs(30),
        LIMIT,
    )
    .unwrap_or_else(|e| panic!("{mib} MiB echo: {e}\n{}", t.logs()));
    eprintln!(
        "{mib} MiB each way through the re-chunking relay in {:?} ({:.1} MiB/s each way); SHA-256 sent {}, received {}",
        e.took,
        mib as f64 / e.took.as_secs_f64(),
        hex::encode(e.sent_sha),
        hex::encode(e.received_sha)
    );
    assert!(
        e.exact(),
        "sent {} bytes, got {} back; SHA-256 differ: {}",
        e.sent,
        e.received,
        e.sent_sha != e.received_sha
    );
    t.wait_healthy(Duration::from_secs(10));
}
