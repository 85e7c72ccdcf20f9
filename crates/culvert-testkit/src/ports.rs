//! Loopback ports for tests running in parallel, taken below the kernel's ephemeral range
//! (32768 and up): a port the OS picked (bind to port 0) could meanwhile become the local
//! port of one of the many outgoing connections parallel tests make, and the process meant
//! to listen on it would fail with "address already in use".
//!
//! 20000–29999 is cut into blocks of [`BLOCK`] public ports for servers ([`port_block`],
//! each held by one process at a time); 30000–32767 holds single listening ports
//! ([`free_port`]).

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

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

/// A loopback port free for TCP and UDP a moment ago, below the ephemeral range, and handed
/// to no other caller of this function (in any process) while this process lives.
///
/// The claim is a file lock, as for [`port_block`]: checking that a port binds is not
/// enough, because nothing holds it between the check and the caller's bind. A test whose
/// node had checked its admin port failed with "address already in use" (CI, 2026-12-04)
/// when another test running at once had picked the same port; within one process two
/// calls could also return the same port (300 calls nearly always did).
pub fn free_port() -> u16 {
    let span = FREE_PORTS.end - FREE_PORTS.start;
    let first = mix() % span;
    for i in 0..span {
        let port = (FREE_PORTS.start + (first + i) % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && claim(&format!("port-{port}"))
        {
            return port;
        }
    }
    panic!("no free port in {FREE_PORTS:?}");
}

/// [`BLOCK`] public ports for one server, below the ephemeral range, held by this process
/// alone until it exits.
///
/// Blocks are claimed with a file lock (one lock file per block in the temporary
/// directory), tried from a random block on. A block picked at random alone was shared now
/// and then by two tests running at once; when one of them filled its range (the storm test
/// registers 200 services), the other's registrations were refused with "no bindable port
/// found". The kernel drops a process's locks when it exits, however it exits. Only when
/// every block is held does this fall back to a random block, as before.
pub fn port_block() -> RangeInclusive<u16> {
    let first = mix() % BLOCKS;
    let index = (0..BLOCKS)
        .map(|i| (first + i) % BLOCKS)
        .find(|&b| claim(&format!("block-{b}")))
        .unwrap_or(first);
    let start = BLOCKS_START + index as u16 * BLOCK;
    start..=start + BLOCK - 1
}

/// Lock files of the blocks and ports this process holds: kept open (and so locked) until
/// it exits.
static CLAIMED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Takes `what` (a block or a port) for this process if no process (this one included)
/// holds it.
fn claim(what: &str) -> bool {
    let dir = std::env::temp_dir().join("culvert-test-port-blocks");
    if std::fs::create_dir_all(&dir).is_err() {
        return false;
    }
    let path = dir.join(format!("{what}.lock"));
    let Ok(file) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    else {
        return false;
    };
    // A lock is per open file: a second open in this process does not get it either.
    if file.try_lock().is_err() {
        return false;
    }
    CLAIMED.lock().unwrap_or_else(|p| p.into_inner()).push(file);
    true
}

/// [`port_block`] as the command line takes it: `START-END`.
pub fn port_block_arg() -> String {
    let r = port_block();
    format!("{}-{}", r.start(), r.end())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Servers of one process, or of tests running at once, never share a block while
    /// blocks are free. Picked at random alone, twenty blocks out of fifty collide in 98 %
    /// of runs (the birthday bound), and two servers on one block fill the same ports.
    #[test]
    fn blocks_claimed_at_once_are_all_different() {
        let mut starts: Vec<u16> = (0..20).map(|_| *port_block().start()).collect();
        starts.sort_unstable();
        starts.dedup();
        assert_eq!(starts.len(), 20, "blocks shared: {starts:?}");
    }

    /// Ports handed out while earlier ones are held are all different, though nothing binds
    /// them in between (as when a test picks ports for processes it starts later). Without
    /// the claim, 300 random picks of 2,768 ports share one in nearly every run.
    #[test]
    fn ports_handed_out_at_once_are_all_different() {
        let mut ports: Vec<u16> = (0..300).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| FREE_PORTS.contains(&u32::from(*p))));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 300, "a port was handed out twice");
    }

    /// A claimed block lies in 20000–29999, on a block boundary, below the free ports.
    #[test]
    fn a_block_is_whole_and_below_the_free_ports() {
        let b = port_block();
        assert_eq!(b.end() - b.start() + 1, BLOCK);
        assert_eq!((b.start() - BLOCKS_START) % BLOCK, 0);
        assert!(u32::from(*b.end()) < FREE_PORTS.start);
    }
}
