//! A cheap hasher for the stream table. SipHash's flood resistance is not needed here:
//! a peer cannot choose stream ids freely (they must be opened in sequence), so the keys
//! are dense small integers and a multiplicative hash spreads them well.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u64` (a stream id) by Fibonacci multiplication.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

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

/// `BuildHasher` for the stream table.
pub(crate) type IdHash = BuildHasherDefault<IdHasher>;
