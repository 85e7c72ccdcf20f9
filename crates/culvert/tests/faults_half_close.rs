//! Half-close through a relay that splits the tunnel's byte stream anywhere: 1,000 public
//! connections to an echo service, each sending a random-length payload (0 to 64 KiB,
//! seeded), half-closing its sending side (shutdown Write), and reading the echo to end of
//! file. The FaultRelay between agent and server re-chunks both directions of both pooled
//! connections into writes of 1 to [`MAX_CHUNK`] bytes, so WebSocket frames, tunnel frames
//! and the FIN of each stream arrive split at every possible place.
//!
//! Figures asserted: all [`THREADS`] × [`ROUNDS`] rounds are byte-exact (same length,
//! same SHA-256 both ways), every end of file arrives (each round bounded: no progress for
//! 20 s or 60 s in all fails it), and the relay re-chunked at least every byte of them.
//! The run time is printed (no bound on it beyond the per-round ones).

mod support;

use std::time::{Duration, Instant};

use culvert_testkit::fault_relay::Direction;
use support::faults::*;
use support::*;

const THREADS: u64 = 8;
const ROUNDS: u64 = 125;
/// Largest payload of a round.
const MAX_LEN: u64 = 64 << 10;
/// Largest write of the re-chunking relay (a prime, so pieces drift across every boundary).
const MAX_CHUNK: usize = 97;
const SEED: u64 = 0x4a1f_c105;

#[test]
fn half_close_survives_any_split_of_the_tunnel_stream() {
    let echo = echo_service();
    let t = TunnelSpec::new(2, 2)
        .service("echo", echo)
        .start("half-close");
    let public = t.public("echo");
    t.relay().rechunk(SEED, MAX_CHUNK);
    let (up0, down0) = (
        t.relay().forwarded(Direction::Up),
        t.relay().forwarded(Direction::Down),
    );

    let t0 = Instant::now();
    let moved: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let t = &t;
                s.spawn(move || {
                    let mut rng = Rng::new(SEED ^ (thread + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                    let mut moved = 0;
                    for round in 0..ROUNDS {
                        // The edges first: nothing at all, a single byte, the largest.
                        let len = match round {
                            0 => 0,
                            1 => 1,
                            2 => MAX_LEN,
                            _ => rng.below(MAX_LEN + 1),
                        };
                        let seed = rng.next_u64();
                        let e = echo_exact(
                            public,
                            seed,
                            len,
                            16 << 10,
                            Duration::from_secs(20),
                            Duration::from_secs(60),
                        )
                        .unwrap_or_else(|e| {
                            panic!("thread {thread} round {round} ({len} bytes): {e}\n{}", t.logs())
                        });
                        assert!(
                            e.exact(),
                            "thread {thread} round {round}: sent {} bytes (SHA-256 {}), got {} (SHA-256 {})",
                            e.sent,
                            hex::encode(e.sent_sha),
                            e.received,
                            hex::encode(e.received_sha)
                        );
                        moved += len;
                    }
                    moved
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let took = t0.elapsed();
    let (up, down) = (
        t.relay().forwarded(Direction::Up) - up0,
        t.relay().forwarded(Direction::Down) - down0,
    );
    eprintln!(
        "{} rounds, {} MiB each way, byte-exact in {took:?}; the relay re-chunked {} MiB up, {} MiB down",
        THREADS * ROUNDS,
        moved >> 20,
        up >> 20,
        down >> 20
    );
    assert!(
        up >= moved && down >= moved,
        "the payloads went through the relay (up {up}, down {down}, payload {moved})"
    );
    t.wait_healthy(Duration::from_secs(10));
}
