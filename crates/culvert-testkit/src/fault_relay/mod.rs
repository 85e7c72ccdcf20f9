//! A TCP relay that injects network faults on command, for end-to-end tests.
//!
//! [`FaultRelay`] listens on loopback and, for each connection it accepts, dials a fixed
//! upstream address and copies bytes both ways. Put it between an agent and its server (or
//! between two nodes) and the test can, at any moment, black-hole the path, stall one
//! direction, add latency, throttle, re-split the byte stream, or cut connections with a
//! reset, a FIN or half-open; [`FaultRelay::heal`] goes back to plain forwarding.
//!
//! The relay runs on its own thread with its own single-threaded tokio runtime, and its
//! control methods are synchronous, so the same relay serves tests that run real processes
//! with `std::process` and `#[tokio::test]` tests alike: the methods never enter the
//! caller's runtime, they update shared state and wake the relay thread. Dropping the
//! relay stops that thread and closes every socket it holds.
//!
//! Buffering is bounded: each direction of each connection reads into a fixed
//! [`READ_BUF`] (64 KiB) buffer and reads again only while it holds less than one such
//! buffer of unsent bytes, or less than [`QUEUE_CAP`] while a latency is set and bytes wait
//! out their delay. A stopped direction does not read at all, so the sender's socket
//! buffers fill and its writes block, as they do behind a real partition.
//!
//! ```no_run
//! use culvert_testkit::fault_relay::{Direction, FaultRelay};
//! # let server_addr: std::net::SocketAddr = "127.0.0.1:7000".parse().unwrap();
//! let relay = FaultRelay::start(server_addr); // point the agent at relay.addr()
//! relay.black_hole(); // partition: nothing moves, sockets stay open
//! relay.heal(); // everything sent meanwhile is delivered, in order
//! relay.stall(Direction::Up); // agent → server stops, server → agent flows
//! relay.cut_rst(); // every open connection is reset on both sides
//! ```

mod conn;
mod pump;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

/// Size of the buffer each direction of a connection reads into.
pub const READ_BUF: usize = 64 * 1024;

/// Read-but-unsent bytes below which one direction of a connection goes on reading while a
/// latency is set (without latency: one [`READ_BUF`]); it holds at most this plus one read.
/// With latency `d` this caps a connection's throughput at about `QUEUE_CAP / d`, like a
/// bandwidth-delay product.
pub const QUEUE_CAP: usize = 1024 * 1024;

/// How long a cut waits for the relay thread to carry it out before giving up (with a
/// warning); it takes milliseconds unless the machine is badly overloaded.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound of the relay thread's start and stop.
const THREAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Which way bytes flow through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client that connected to the relay towards the upstream (agent → server when
    /// the agent dials the relay).
    Up,
    /// From the upstream back to the client.
    Down,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }
}

/// Faults in force, for all connections (global) or as one connection's additions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    pub black_hole: bool,
    pub stall_up: bool,
    pub stall_down: bool,
    pub latency: Duration,
    /// Bytes per second per direction; 0: unlimited.
    pub throttle: u64,
    pub rechunk: Option<Rechunk>,
}

/// Forward in writes of random sizes `1..=max`, drawn from a generator seeded with `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rechunk {
    pub seed: u64,
    pub max: usize,
}

impl Faults {
    /// What applies to a connection: the global faults plus its own.
    pub fn merge(global: &Faults, conn: &Faults) -> Faults {
        let throttle = match (global.throttle, conn.throttle) {
            (0, t) | (t, 0) => t,
            (a, b) => a.min(b),
        };
        Faults {
            black_hole: global.black_hole || conn.black_hole,
            stall_up: global.stall_up || conn.stall_up,
            stall_down: global.stall_down || conn.stall_down,
            latency: global.latency.max(conn.latency),
            throttle,
            rechunk: conn.rechunk.or(global.rechunk),
        }
    }

    /// Whether `dir` neither reads nor writes.
    pub fn stopped(&self, dir: Direction) -> bool {
        self.black_hole
            || match dir {
                Direction::Up => self.stall_up,
                Direction::Down => self.stall_down,
            }
    }

    fn stall(&mut self, dir: Direction) {
        match dir {
            Direction::Up => self.stall_up = true,
            Direction::Down => self.stall_down = true,
        }
    }
}

/// How a cut ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// RST to both peers.
    Rst,
    /// Forward what was read, then FIN to both peers.
    Fin,
    /// RST to the upstream; the client side stays open and silent.
    HalfOpen,
}

/// A cut sent to one connection's task; dropping it tells the caller it was carried out.
pub(crate) struct Command {
    pub cut: Cut,
    _done: Ack,
}

/// One outstanding acknowledgement of a [`Pending`]; released when dropped.
struct Ack(Arc<Pending>);

/// Acknowledgements a control call waits for.
#[derive(Default)]
struct Pending {
    left: Mutex<usize>,
    cv: Condvar,
}

impl Ack {
    fn new(p: &Arc<Pending>) -> Ack {
        *lock(&p.left) += 1;
        Ack(p.clone())
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        let mut left = lock(&self.0.left);
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.0.cv.notify_all();
        }
    }
}

impl Pending {
    /// Waits until every [`Ack`] is dropped or `timeout` passes; false on timeout.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut left = lock(&self.left);
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            left = self
                .cv
                .wait_timeout(left, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// What the relay thread and the control methods share.
pub(crate) struct Shared {
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    /// Faults applied to every connection, current and future.
    pub faults: watch::Sender<Faults>,
    conns: Mutex<BTreeMap<u64, ConnEntry>>,
    accepted: AtomicU64,
    /// Bytes read from the sending peer, per [`Direction::index`].
    received: [AtomicU64; 2],
    /// Bytes written to the receiving peer, per [`Direction::index`].
    forwarded: [AtomicU64; 2],
    shutdown: Notify,
}

/// The control side of one open connection.
struct ConnEntry {
    cmds: mpsc::Sender<Command>,
    faults: watch::Sender<Faults>,
}

impl Shared {
    /// Registers a newly accepted connection under the next index.
    fn register(&self) -> (u64, mpsc::Receiver<Command>, watch::Sender<Faults>) {
        let (cmds, rx) = mpsc::channel(4);
        let (faults, _) = watch::channel(Faults::default());
        let mut conns = lock(&self.conns);
        let index = self.accepted.load(Ordering::SeqCst);
        conns.insert(
            index,
            ConnEntry {
                cmds,
                faults: faults.clone(),
            },
        );
        // Counted only once registered: a test that saw `accepted()` grow can cut it.
        self.accepted.store(index + 1, Ordering::SeqCst);
        (index, rx, faults)
    }

    /// Forgets a connection: it no longer counts as open nor takes commands.
    pub fn unregister(&self, index: u64) {
        lock(&self.conns).remove(&index);
    }

    pub fn count_received(&self, dir: Direction, n: usize) {
        self.received[dir.index()].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn count_forwarded(&self, dir: Direction, n: usize) {
        self.forwarded[dir.index()].fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A loopback TCP relay to one upstream address whose faults tests switch on and off.
///
/// Faults set with the global methods apply at once to every open connection and to those
/// accepted later; the `_conn` variants address one connection by its accept index (0 for
/// the first connection accepted, as counted by [`FaultRelay::accepted`]). Cuts act on the
/// connections open when called. Bytes the relay had already read when a fault is set may
/// still be delivered, like packets already in flight.
pub struct FaultRelay {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Released when the relay thread ends (also if it panicked).
    exited: Arc<Pending>,
}

impl fmt::Debug for FaultRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults = self.shared.faults.borrow().clone();
        f.debug_struct("FaultRelay")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .field("faults", &faults)
            .field("connections", &self.connections())
            .finish()
    }
}

impl FaultRelay {
    /// Starts a relay on `127.0.0.1:0` to `upstream`; panics if it cannot (tests have no
    /// use for a relay that did not start). See [`FaultRelay::bind`] for the fallible form.
    pub fn start(upstream: SocketAddr) -> FaultRelay {
        FaultRelay::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), upstream)
            .unwrap_or_else(|e| panic!("fault relay to {upstream} did not start: {e}"))
    }

    /// Starts a relay listening on `listen` (e.g. a fixed port, to put a relay back where
    /// an earlier one was) to `upstream`. The upstream is dialed per accepted connection,
    /// so it need not be listening yet.
    pub fn bind(listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultRelay> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            addr,
            upstream,
            faults: watch::channel(Faults::default()).0,
            conns: Mutex::new(BTreeMap::new()),
            accepted: AtomicU64::new(0),
            received: Default::default(),
            forwarded: Default::default(),
            shutdown: Notify::new(),
        });
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let exited = Arc::new(Pending::default());
        let running = Ack::new(&exited);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-relay-{}", addr.port()))
            .spawn(move || {
                let _running = running;
                run(runtime, listener, thread_shared, ready_tx);
            })?;
        let relay = FaultRelay {
            shared,
            thread: Some(thread),
            exited,
        };
        match ready_rx.recv_timeout(THREAD_TIMEOUT) {
            Ok(Ok(())) => {
                tracing::debug!(relay = %addr, %upstream, "fault relay started");
                Ok(relay)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("fault relay thread did not start")),
        }
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The address each accepted connection is relayed to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Connections open now: accepted and not yet closed by either side or a cut (held and
    /// half-open ones included).
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Connections accepted since the start; the next one gets this number as its index.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes read so far from the peers sending in `dir`, over all connections: lets a test
    /// wait until the relay has taken some bytes in (e.g. before a cut) without sleeping.
    pub fn received(&self, dir: Direction) -> u64 {
        self.shared.received[dir.index()].load(Ordering::Relaxed)
    }

    /// Bytes written so far to the peers receiving in `dir`, over all connections. A write
    /// is counted just after it returns, so the count may trail what a peer already read.
    pub fn forwarded(&self, dir: Direction) -> u64 {
        self.shared.forwarded[dir.index()].load(Ordering::Relaxed)
    }

    /// Partition: nothing is read or forwarded either way, sockets stay open, senders block
    /// once the socket buffers fill. Connections accepted meanwhile are held, not dialed,
    /// until [`FaultRelay::heal`], then relayed with what their clients sent meanwhile.
    pub fn black_hole(&self) {
        tracing::info!(relay = %self.addr(), "fault: black hole");
        self.shared.faults.send_modify(|f| f.black_hole = true);
    }

    /// Stops one direction (reads and writes); the other keeps flowing.
    pub fn stall(&self, dir: Direction) {
        tracing::info!(relay = %self.addr(), ?dir, "fault: stall");
        self.shared.faults.send_modify(|f| f.stall(dir));
    }

    /// Delivers each chunk `d` after it was read, in order, in both directions; chunks are
    /// delayed concurrently (a chunk read at `t` is written at `t + d`), not one after the
    /// other. `Duration::ZERO` removes the delay.
    pub fn latency(&self, d: Duration) {
        tracing::info!(relay = %self.addr(), ?d, "fault: latency");
        self.shared.faults.send_modify(|f| f.latency = d);
    }

    /// Limits each direction of each connection to `bytes_per_sec` (token bucket with a
    /// burst of 1/20 s worth of bytes); 0 removes the limit.
    pub fn throttle(&self, bytes_per_sec: u64) {
        tracing::info!(relay = %self.addr(), bytes_per_sec, "fault: throttle");
        self.shared
            .faults
            .send_modify(|f| f.throttle = bytes_per_sec);
    }

    /// Removes the rate limit of [`FaultRelay::throttle`].
    pub fn unthrottle(&self) {
        self.throttle(0);
    }

    /// Forwards in separate writes of random sizes `1..=max_chunk` (0 counts as 1), so the
    /// receiver sees the stream split anywhere. The sizes are reproducible: they depend only
    /// on `seed`, the connection's accept index and the direction.
    pub fn rechunk(&self, seed: u64, max_chunk: usize) {
        tracing::info!(relay = %self.addr(), seed, max_chunk, "fault: rechunk");
        let r = Rechunk {
            seed,
            max: max_chunk.max(1),
        };
        self.shared.faults.send_modify(|f| f.rechunk = Some(r));
    }

    /// Back to plain forwarding for every connection: clears black hole, stalls, latency,
    /// throttle and rechunk, also those set for single connections. Connections already cut
    /// or half-open stay so.
    pub fn heal(&self) {
        tracing::info!(relay = %self.addr(), "heal");
        self.shared.faults.send_modify(|f| *f = Faults::default());
        for entry in lock(&self.shared.conns).values() {
            entry.faults.send_modify(|f| *f = Faults::default());
        }
    }

    /// Closes every open connection with an RST to both peers. Returns how many it cut,
    /// once they are cut.
    pub fn cut_rst(&self) -> usize {
        tracing::info!(relay = %self.addr(), "fault: cut with RST");
        self.cut(None, Cut::Rst)
    }

    /// Ends every open connection cleanly: what the relay already read is forwarded, then
    /// the write side towards both peers is shut down (FIN) and the sockets closed. Returns
    /// how many it cut, once they stopped relaying; the flush and FIN follow at once.
    pub fn cut_fin(&self) -> usize {
        tracing::info!(relay = %self.addr(), "fault: cut with FIN");
        self.cut(None, Cut::Fin)
    }

    /// Makes every open connection half-open: RST to the upstream, while the client side
    /// stays open and silent (nothing read, nothing written), so the client believes the
    /// connection is alive. Returns how many, once the upstream sides are reset.
    pub fn half_open(&self) -> usize {
        tracing::info!(relay = %self.addr(), "fault: half-open");
        self.cut(None, Cut::HalfOpen)
    }

    /// [`FaultRelay::black_hole`] for one connection (by accept index) only; false if it is
    /// not open. It does not hold new connections.
    pub fn black_hole_conn(&self, index: u64) -> bool {
        tracing::info!(relay = %self.addr(), index, "fault: black hole one connection");
        self.modify_conn(index, |f| f.black_hole = true)
    }

    /// [`FaultRelay::stall`] for one connection only; false if it is not open.
    pub fn stall_conn(&self, index: u64, dir: Direction) -> bool {
        tracing::info!(relay = %self.addr(), index, ?dir, "fault: stall one connection");
        self.modify_conn(index, |f| f.stall(dir))
    }

    /// Clears the faults set for one connection with the `_conn` methods (the global ones
    /// still apply); false if it is not open.
    pub fn heal_conn(&self, index: u64) -> bool {
        tracing::info!(relay = %self.addr(), index, "heal one connection");
        self.modify_conn(index, |f| *f = Faults::default())
    }

    /// [`FaultRelay::cut_rst`] for one connection only; false if it was not open.
    pub fn cut_rst_conn(&self, index: u64) -> bool {
        tracing::info!(relay = %self.addr(), index, "fault: cut one connection with RST");
        self.cut(Some(index), Cut::Rst) == 1
    }

    /// [`FaultRelay::cut_fin`] for one connection only; false if it was not open.
    pub fn cut_fin_conn(&self, index: u64) -> bool {
        tracing::info!(relay = %self.addr(), index, "fault: cut one connection with FIN");
        self.cut(Some(index), Cut::Fin) == 1
    }

    /// [`FaultRelay::half_open`] for one connection only; false if it was not open.
    pub fn half_open_conn(&self, index: u64) -> bool {
        tracing::info!(relay = %self.addr(), index, "fault: half-open one connection");
        self.cut(Some(index), Cut::HalfOpen) == 1
    }

    fn modify_conn(&self, index: u64, f: impl FnOnce(&mut Faults)) -> bool {
        match lock(&self.shared.conns).get(&index) {
            Some(entry) => {
                entry.faults.send_modify(f);
                true
            }
            None => false,
        }
    }

    /// Sends `cut` to the target connections and waits (bounded) until they carried it out.
    fn cut(&self, target: Option<u64>, cut: Cut) -> usize {
        let pending = Arc::new(Pending::default());
        let mut sent = 0;
        {
            let conns = lock(&self.shared.conns);
            for (&index, entry) in conns.iter() {
                if target.is_some_and(|t| t != index) {
                    continue;
                }
                let cmd = Command {
                    cut,
                    _done: Ack::new(&pending),
                };
                // A full queue means cuts are already on the way; a closed one, that the
                // connection is ending. Either way the command (and its Ack) is dropped.
                if entry.cmds.try_send(cmd).is_ok() {
                    sent += 1;
                }
            }
        }
        if !pending.wait(ACK_TIMEOUT) {
            tracing::warn!(relay = %self.addr(), ?cut, "fault relay: cut not carried out in time");
        }
        sent
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.shared.shutdown.notify_one();
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.exited.wait(THREAD_TIMEOUT) {
            if thread.join().is_err() {
                tracing::error!(relay = %self.shared.addr, "fault relay thread panicked");
            }
        } else {
            tracing::error!(relay = %self.shared.addr, "fault relay thread did not stop; left running");
        }
    }
}

/// The relay thread: accepts until told to stop, then drops the runtime, which drops every
/// connection task and closes its sockets.
fn run(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    ready: std_mpsc::Sender<io::Result<()>>,
) {
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tokio::select! {
            () = shared.shutdown.notified() => {}
            () = accept_loop(listener, &shared) => {}
        }
    });
    drop(runtime);
    tracing::debug!(relay = %shared.addr, "fault relay stopped");
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: &Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let (index, cmds, faults) = shared.register();
                tracing::debug!(relay = %shared.addr, index, %peer, "accepted");
                tokio::spawn(conn::serve(shared.clone(), index, client, cmds, faults));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(relay = %shared.addr, error = %e, "fault relay accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_connection_faults_to_global_ones() {
        let global = Faults {
            stall_up: true,
            latency: Duration::from_millis(5),
            throttle: 1000,
            ..Faults::default()
        };
        let conn = Faults {
            black_hole: true,
            latency: Duration::from_millis(2),
            throttle: 500,
            ..Faults::default()
        };
        let f = Faults::merge(&global, &conn);
        assert!(f.black_hole && f.stall_up && !f.stall_down);
        assert_eq!(f.latency, Duration::from_millis(5));
        assert_eq!(f.throttle, 500);
        assert_eq!(Faults::merge(&global, &Faults::default()).throttle, 1000);
        assert!(f.stopped(Direction::Down));
    }

    #[test]
    fn relay_can_be_shared_between_threads_and_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<FaultRelay>();
    }

    #[test]
    fn pending_waits_for_every_ack() {
        let p = Arc::new(Pending::default());
        assert!(p.wait(Duration::ZERO));
        let a = Ack::new(&p);
        let b = Ack::new(&p);
        assert!(!p.wait(Duration::from_millis(1)));
        drop(a);
        let t = std::thread::spawn(move || drop(b));
        assert!(p.wait(Duration::from_secs(10)));
        t.join().unwrap();
    }
}
