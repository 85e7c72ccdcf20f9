//! A cheap hasher for tables keyed by stream id (the connection's stream table, and the
//! drivers' per-stream maps beside it). SipHash's flood resistance is not needed here: a
//! peer cannot choose stream ids freely (they must be opened in sequence), so the keys are
//! dense small integers and a multiplicative hash spreads them well. SipHash cost about a
//! tenth of a driver's user-space instructions per small message (three lookups each).

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u64` (a stream id) by Fibonacci multiplication.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// `BuildHasher` for maps keyed by [`crate::StreamId`] (only ids a connection accepted).
pub type IdHash = BuildHasherDefault<IdHasher>;
