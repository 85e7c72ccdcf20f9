//! The fault relay against plain loopback sockets: each mode, from synchronous tests (as the
//! process-level tests use it) and from tokio tests. Every wait is bounded; no test asserts
//! that something happened *quickly*, only that it happened, or did not happen for a while.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use culvert_testkit::fault_relay::{Direction, FaultRelay};

/// Bound of every wait for something that should happen.
const WAIT: Duration = Duration::from_secs(30);

/// How long a test watches for something that should not happen.
const QUIET: Duration = Duration::from_millis(300);

/// The server side the relay dials: a listener the test accepts from itself.
struct Upstream(TcpListener);

impl Upstream {
    fn new() -> Upstream {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        Upstream(l)
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    /// The next connection the relay made, if one arrives within `within`.
    fn try_accept(&self, within: Duration) -> Option<TcpStream> {
        let deadline = Instant::now() + within;
        loop {
            match self.0.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    return Some(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    fn accept(&self) -> TcpStream {
        self.try_accept(WAIT).expect("the relay dialed upstream")
    }
}

fn connect(relay: &FaultRelay) -> TcpStream {
    let s = TcpStream::connect(relay.addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// A client connected through the relay and the upstream side of the same connection.
fn pair(relay: &FaultRelay, up: &Upstream) -> (TcpStream, TcpStream) {
    let client = connect(relay);
    let server = up.accept();
    (client, server)
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("bytes arrive");
    buf
}

/// Sends `b"ping"` each way, proving the connection relays (and is dialed).
fn ping(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"ping").unwrap();
    assert_eq!(read_n(server, 4), b"ping");
    server.write_all(b"pong").unwrap();
    assert_eq!(read_n(client, 4), b"pong");
}

/// Asserts that nothing arrives on `s` for [`QUIET`].
fn nothing_arrives(s: &mut TcpStream) {
    s.set_read_timeout(Some(QUIET)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected nothing to arrive, got {other:?}"),
    }
    s.set_read_timeout(Some(WAIT)).unwrap();
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn assert_reset(r: io::Result<usize>) {
    match r {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a connection reset, got {other:?}"),
    }
}

/// Writes `data` on a clone of `s` from a thread while reading `expect.len()` bytes.
fn exchange(s: &mut TcpStream, data: Vec<u8>, expect: usize) -> (thread::JoinHandle<()>, Vec<u8>) {
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&data).unwrap());
    (writer, read_n(s, expect))
}

#[test]
fn rechunked_pass_through_is_byte_exact_4mib_each_way() {
    const LEN: usize = 4 << 20;
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    relay.rechunk(42, 1500);
    let (mut client, mut server) = pair(&relay, &up);
    let (a, b) = (pattern(1, LEN), pattern(2, LEN));
    let (a2, b2) = (a.clone(), b.clone());
    let server_side = thread::spawn(move || {
        let (w, got) = exchange(&mut server, b2, LEN);
        w.join().unwrap();
        got
    });
    let (w, got_b) = exchange(&mut client, a2, LEN);
    w.join().unwrap();
    let got_a = server_side.join().unwrap();
    assert!(got_a == a, "client → server bytes differ");
    assert!(got_b == b, "server → client bytes differ");
    // The relay counts a write just after it returns, so possibly after the peer read it.
    wait_until("the relay counted every byte", || {
        relay.forwarded(Direction::Up) == LEN as u64
            && relay.forwarded(Direction::Down) == LEN as u64
    });
}

#[test]
fn tiny_rechunks_keep_every_byte_in_order() {
    const LEN: usize = 96 * 1024;
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    relay.rechunk(7, 3);
    let (mut client, mut server) = pair(&relay, &up);
    let data = pattern(3, LEN);
    let mut w = client.try_clone().unwrap();
    let d2 = data.clone();
    let writer = thread::spawn(move || w.write_all(&d2).unwrap());
    assert!(read_n(&mut server, LEN) == data);
    writer.join().unwrap();
    // Heal mid-connection: plain forwarding continues on the same connection.
    relay.heal();
    ping(&mut client, &mut server);
}

#[test]
fn black_hole_stops_both_ways_and_heal_delivers_everything_in_order() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    let received_up = relay.received(Direction::Up);

    relay.black_hole();
    server.write_all(b"down while partitioned").unwrap();
    // The client writes until its socket buffers are full: the relay reads nothing.
    let data = pattern(4, 64 << 20);
    client.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < data.len() {
        match client.write(&data[sent..(sent + 65536).min(data.len())]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    client.set_nonblocking(false).unwrap();
    assert!(
        sent < data.len(),
        "the client never blocked: the relay kept reading"
    );
    assert!(sent > 0);
    nothing_arrives(&mut server);
    nothing_arrives(&mut client);
    assert_eq!(relay.received(Direction::Up), received_up);
    assert_eq!(relay.connections(), 1);

    relay.heal();
    assert!(
        read_n(&mut server, sent) == data[..sent],
        "bytes after heal differ"
    );
    assert_eq!(read_n(&mut client, 22), b"down while partitioned");
    ping(&mut client, &mut server);
}

#[test]
fn connection_accepted_during_black_hole_is_relayed_after_heal_with_its_early_bytes() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    relay.black_hole();
    let mut client = connect(&relay);
    client.write_all(b"sent before heal").unwrap();
    let mut doomed = connect(&relay);
    wait_until("both connections are accepted", || relay.accepted() == 2);
    assert!(
        up.try_accept(QUIET).is_none(),
        "dialed during the black hole"
    );
    nothing_arrives(&mut client);
    // A held connection can be cut too.
    assert!(relay.cut_rst_conn(1));
    assert_reset(doomed.read(&mut [0u8; 1]));

    relay.heal();
    let mut server = up.accept();
    assert_eq!(read_n(&mut server, 16), b"sent before heal");
    ping(&mut client, &mut server);
    assert_eq!(relay.connections(), 1);
    assert!(
        up.try_accept(QUIET).is_none(),
        "the cut connection was dialed"
    );
}

#[test]
fn stall_stops_one_direction_only() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);

    relay.stall(Direction::Up);
    client.write_all(b"up").unwrap();
    server.write_all(b"down").unwrap();
    assert_eq!(read_n(&mut client, 4), b"down");
    nothing_arrives(&mut server);
    relay.heal();
    assert_eq!(read_n(&mut server, 2), b"up");

    relay.stall(Direction::Down);
    client.write_all(b"up").unwrap();
    server.write_all(b"down").unwrap();
    assert_eq!(read_n(&mut server, 2), b"up");
    nothing_arrives(&mut client);
    relay.heal();
    assert_eq!(read_n(&mut client, 4), b"down");
}

#[test]
fn throttle_bounds_the_bytes_moved_in_a_window() {
    const RATE: u64 = 64 * 1024;
    const LEN: usize = 512 * 1024;
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    relay.throttle(RATE);
    let data = pattern(5, LEN);
    let mut w = client.try_clone().unwrap();
    let d2 = data.clone();
    let writer = thread::spawn(move || w.write_all(&d2).unwrap());

    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    server
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while start.elapsed() < Duration::from_secs(1) {
        match server.read(&mut buf) {
            Ok(0) => panic!("early EOF"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The rate over the window actually observed, plus a burst and a generous margin
    // (tokens accrued before the window): an upper bound on bytes, not on time.
    let bound = (RATE as f64 * elapsed) as usize + 128 * 1024;
    assert!(
        got.len() <= bound,
        "{} bytes in {elapsed:.2}s at {RATE} B/s",
        got.len()
    );
    assert!(got.len() < LEN, "everything passed the throttle");

    relay.unthrottle();
    server.set_read_timeout(Some(WAIT)).unwrap();
    got.extend(read_n(&mut server, LEN - got.len()));
    assert!(got == data);
    writer.join().unwrap();
}

#[test]
fn latency_delays_each_direction_by_at_least_d() {
    const D: Duration = Duration::from_millis(200);
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    relay.latency(D);

    let t = Instant::now();
    client.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut server, 4), b"ping");
    assert!(t.elapsed() >= D, "up after {:?}", t.elapsed());
    let t = Instant::now();
    server.write_all(b"pong").unwrap();
    assert_eq!(read_n(&mut client, 4), b"pong");
    assert!(t.elapsed() >= D, "down after {:?}", t.elapsed());

    // Many small writes keep their order under latency.
    let t = Instant::now();
    let mut expected = Vec::new();
    for i in 0..50u8 {
        client.write_all(&[i; 7]).unwrap();
        expected.extend_from_slice(&[i; 7]);
    }
    assert_eq!(read_n(&mut server, expected.len()), expected);
    assert!(t.elapsed() >= D);

    // Delays overlap rather than add up: while the first chunk waits out its (long) delay,
    // the relay goes on reading the next ones.
    relay.latency(Duration::from_secs(3600));
    let read = relay.received(Direction::Up);
    for (i, word) in [&b"first"[..], b"second", b"third"].iter().enumerate() {
        client.write_all(word).unwrap();
        let want = read + [5, 11, 16][i];
        wait_until("the relay read the chunk", || {
            relay.received(Direction::Up) == want
        });
    }
    nothing_arrives(&mut server);
    relay.heal();
    assert_eq!(read_n(&mut server, 16), b"firstsecondthird");
}

#[test]
fn cut_rst_resets_both_sides() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    assert_eq!(relay.cut_rst(), 1);
    assert_eq!(relay.connections(), 0);
    assert_reset(client.read(&mut [0u8; 16]));
    assert_reset(server.read(&mut [0u8; 16]));
    // The relay still accepts and relays new connections.
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
}

#[test]
fn cut_fin_forwards_what_was_read_then_gives_eof() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    // Hold what the relay reads in its queue, then cut while it is there.
    relay.latency(Duration::from_secs(3600));
    let before = relay.received(Direction::Up);
    client.write_all(b"last words").unwrap();
    wait_until("the relay read the last words", || {
        relay.received(Direction::Up) == before + 10
    });
    assert_eq!(relay.cut_fin(), 1);
    assert_eq!(relay.connections(), 0);
    assert_eq!(read_n(&mut server, 10), b"last words");
    assert_eq!(server.read(&mut [0u8; 16]).unwrap(), 0, "EOF upstream");
    assert_eq!(client.read(&mut [0u8; 16]).unwrap(), 0, "EOF at the client");
}

#[test]
fn half_open_leaves_the_client_connected_and_resets_upstream() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    assert_eq!(relay.half_open(), 1);
    assert_reset(server.read(&mut [0u8; 16]));
    // The client can still write, and hears nothing.
    client.write_all(b"anyone there?").unwrap();
    nothing_arrives(&mut client);
    assert_eq!(relay.connections(), 1);
    // Heal does not revive it; a later cut ends it.
    relay.heal();
    nothing_arrives(&mut client);
    assert_eq!(relay.cut_rst(), 1);
    assert_reset(client.read(&mut [0u8; 16]));
}

#[test]
fn single_connection_faults_leave_the_others_alone() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let (mut c0, mut s0) = pair(&relay, &up);
    let (mut c1, mut s1) = pair(&relay, &up);
    ping(&mut c0, &mut s0);
    ping(&mut c1, &mut s1);

    assert!(relay.black_hole_conn(0));
    c0.write_all(b"zero").unwrap();
    ping(&mut c1, &mut s1);
    nothing_arrives(&mut s0);
    assert!(relay.heal_conn(0));
    assert_eq!(read_n(&mut s0, 4), b"zero");

    assert!(relay.stall_conn(1, Direction::Down));
    s1.write_all(b"one").unwrap();
    ping(&mut c0, &mut s0);
    nothing_arrives(&mut c1);
    relay.heal();
    assert_eq!(read_n(&mut c1, 3), b"one");

    assert!(relay.cut_rst_conn(1));
    assert_reset(c1.read(&mut [0u8; 1]));
    ping(&mut c0, &mut s0);
    assert!(relay.cut_fin_conn(0));
    assert_eq!(c0.read(&mut [0u8; 1]).unwrap(), 0);
    assert_eq!(relay.connections(), 0);
    assert!(!relay.cut_rst_conn(0), "already closed");
    assert!(!relay.black_hole_conn(7), "never accepted");
}

#[test]
fn peers_closing_propagates_fin_and_reset() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    // A FIN from the client reaches the server; the other direction keeps working.
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0);
    server.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut client, 10), b"still here");
    drop(server);
    assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
    wait_until("the connection is gone", || relay.connections() == 0);

    // A reset from the server reaches the client as a reset.
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    client.write_all(b"unread").unwrap();
    // Two pings and these 6 bytes went up.
    wait_until("the relay wrote to the server", || {
        relay.forwarded(Direction::Up) == 14
    });
    // Closing with unread bytes in the receive buffer makes the kernel send an RST.
    drop(server);
    assert_reset(client.read(&mut [0u8; 1]));
    wait_until("the connection is gone", || relay.connections() == 0);
}

#[test]
fn unreachable_upstream_closes_the_client_and_the_relay_keeps_going() {
    let gone = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let relay = FaultRelay::start(addr);
    let mut client = connect(&relay);
    match client.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the client closed, got {other:?}"),
    }
    wait_until("the connection is gone", || relay.connections() == 0);
    assert_eq!(relay.accepted(), 1);
}

#[test]
fn drop_closes_every_socket_and_the_listener() {
    let up = Upstream::new();
    let relay = FaultRelay::start(up.addr());
    let addr = relay.addr();
    let (mut client, mut server) = pair(&relay, &up);
    ping(&mut client, &mut server);
    relay.black_hole();
    drop(relay);
    assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
    assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0);
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
}

mod in_tokio {
    //! The same relay from async tests: its methods are synchronous but never block on the
    //! caller's runtime, so they work on a current-thread runtime too.

    use super::{pattern, Direction, FaultRelay, WAIT};
    use std::io;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    async fn pair(relay: &FaultRelay, up: &TcpListener) -> (TcpStream, TcpStream) {
        let client = timeout(WAIT, TcpStream::connect(relay.addr()))
            .await
            .unwrap()
            .unwrap();
        let (server, _) = timeout(WAIT, up.accept()).await.unwrap().unwrap();
        (client, server)
    }

    async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        timeout(WAIT, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf
    }

    #[tokio::test(flavor = "current_thread")]
    async fn relays_faults_and_cuts_on_a_current_thread_runtime() {
        const LEN: usize = 1 << 20;
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = FaultRelay::start(up.local_addr().unwrap());
        relay.rechunk(9, 4096);
        let (mut client, mut server) = pair(&relay, &up).await;
        let (a, b) = (pattern(6, LEN), pattern(7, LEN));
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let mut got_a = vec![0u8; LEN];
        let mut got_b = vec![0u8; LEN];
        let all = async {
            tokio::try_join!(
                cw.write_all(&a),
                sw.write_all(&b),
                sr.read_exact(&mut got_a),
                cr.read_exact(&mut got_b),
            )
        };
        timeout(WAIT, all).await.unwrap().unwrap();
        assert!(got_a == a && got_b == b);

        relay.black_hole();
        client.write_all(b"held").await.unwrap();
        let mut one = [0u8; 1];
        assert!(timeout(Duration::from_millis(300), server.read(&mut one))
            .await
            .is_err());
        relay.heal();
        assert_eq!(read_n(&mut server, 4).await, b"held");

        assert_eq!(relay.cut_rst(), 1);
        let r = timeout(WAIT, client.read(&mut one)).await.unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stall_and_fin_on_a_multi_thread_runtime() {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = FaultRelay::start(up.local_addr().unwrap());
        let (mut client, mut server) = pair(&relay, &up).await;
        relay.stall(Direction::Down);
        server.write_all(b"later").await.unwrap();
        client.write_all(b"now").await.unwrap();
        assert_eq!(read_n(&mut server, 3).await, b"now");
        let mut one = [0u8; 1];
        assert!(timeout(Duration::from_millis(300), client.read(&mut one))
            .await
            .is_err());
        relay.heal();
        assert_eq!(read_n(&mut client, 5).await, b"later");
        assert_eq!(relay.cut_fin(), 1);
        assert_eq!(
            timeout(WAIT, client.read(&mut one)).await.unwrap().unwrap(),
            0
        );
        assert_eq!(
            timeout(WAIT, server.read(&mut one)).await.unwrap().unwrap(),
            0
        );
    }
}
