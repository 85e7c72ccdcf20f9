//! Loopback ports for tests running in parallel, taken below the kernel's ephemeral range
//! (32768 and up): a port the OS picked (bind to port 0) could meanwhile become the local
//! port of one of the many outgoing connections parallel tests make, and the process meant
//! to listen on it would fail with "address already in use".
//!
//! 20000–29999 is cut into blocks of [`BLOCK`] public ports for servers
//! ([`port_block`]); 30000–32767 holds single listening ports ([`free_port`]).

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicU32, Ordering};

/// Public ports one test server gets.
pub const BLOCK: u16 = 200;

/// Where [`port_block`]'s blocks lie.
const BLOCKS_START: u16 = 20_000;
/// How many blocks there are (20000–29999).
const BLOCKS: u32 = 50;

/// Ports [`free_port`] picks from: between the blocks and the ephemeral range.
const FREE_PORTS: Range<u32> = 30_000..32_768;

/// A number that differs between calls, processes and moments.
fn mix() -> u32 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    nanos
        ^ std::process::id().wrapping_mul(2_654_435_761)
        ^ CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7_919)
}

/// A loopback port free for TCP and UDP a moment ago, below the ephemeral range.
pub fn free_port() -> u16 {
    let span = FREE_PORTS.end - FREE_PORTS.start;
    for _ in 0..span {
        let port = (FREE_PORTS.start + mix() % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {FREE_PORTS:?}");
}

/// [`BLOCK`] public ports for one server, below the ephemeral range and chosen at random,
/// so tests running in parallel rarely share ports (the servers skip ports they cannot bind).
pub fn port_block() -> RangeInclusive<u16> {
    let start = BLOCKS_START + (mix() % BLOCKS) as u16 * BLOCK;
    start..=start + BLOCK - 1
}

/// [`port_block`] as the command line takes it: `START-END`.
pub fn port_block_arg() -> String {
    let r = port_block();
    format!("{}-{}", r.start(), r.end())
}
