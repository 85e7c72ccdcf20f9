//! Test support for Culvert, shared by the test trees, the benchmarks and the fuzz targets.
//!
//! - [`Pair`]: two real [`culvert_proto::Connection`]s driven in memory with a manual
//!   clock and an optional one-way latency, as in quinn-proto's `tests/util.rs`.
//! - [`frames`]: frame builders for tests that speak the wire protocol by hand.
//! - [`wait`]: bounded waits ([`eventually`]) instead of hand-written deadline loops.
//! - [`TempDir`] and loopback [`ports`] for tests running in parallel; [`metric`] reads a
//!   counter out of Prometheus text.
//! - With the `process` feature, `process`: child processes with their output collected
//!   and every wait bounded.
//! - With the `pg` feature, `pg`: a throwaway PostgreSQL (initdb in a scratch directory),
//!   which tests can stop and start again, and its clients.
//! - With the `net` feature, `fault_relay`, a loopback TCP relay that injects network
//!   faults (partitions, stalls, latency, throttling, resets) into real connections, and
//!   the async waits.
//!
//! Without features it needs neither an async runtime nor child processes, so the sans-IO
//! core's tests and fuzz targets can use it.

#[cfg(feature = "net")]
pub mod fault_relay;
pub mod frames;
mod metrics;
mod pair;
#[cfg(feature = "pg")]
pub mod pg;
pub mod ports;
#[cfg(feature = "process")]
pub mod process;
mod tempdir;
pub mod wait;

pub use metrics::metric;
pub use pair::{read_available, transfer, Pair, BATCH};
pub use ports::{free_port, port_block};
pub use tempdir::TempDir;
pub use wait::{eventually, poll_until, Check, Text};
#[cfg(feature = "net")]
pub use wait::{eventually_async, poll_until_async};
