//! Streams that stop moving, one (or three) each way, on the agent's only tunnel connection (pool 1):
//! a backend that accepts and never reads (a public client writes to it until everything
//! on the way is full), and a public client that never reads (a backend writes to it until
//! everything on the way is full). Flow control must stop each of them at its windows, so
//! neither end buffers more than those, and the other streams of the connection must not
//! wait behind them.
//!
//! Figures asserted:
//! - `stuck_streams_hold_no_more_than_their_windows`: the resident memory (VmRSS) of the
//!   server and of the agent, sampled while the two streams are stuck and the public
//!   client keeps pushing, stays within its baseline (measured after a warm-up transfer,
//!   before the stuck streams) plus [`rss_allowance`]: per pooled connection its receive
//!   window (4 MiB) and its send buffer (3 MiB), the most flow control lets one process
//!   hold for the streams of a connection whatever they are (per stream: a 256 KiB window,
//!   auto-tuned up to a quarter of the connection window, and a 2 MiB send buffer), plus 8 MiB for the allocator and
//!   the stuck streams' tasks. The stream into the sink takes no byte more once stuck, and
//!   the stream from the source is stuck, not broken: once read, it flows again,
//!   byte-exact.
//! - `stuck_streams_do_not_slow_the_others` (failed before a stream's window was capped at a
//!   quarter of the connection window, see its documentation): an echo transfer on the
//!   same connection keeps at least [`MIN_SHARE`] of the throughput it had alone (median
//!   bytes over fixed windows), and is byte-exact to its end of file.
//!
//! The figures (memory before and with the stuck streams, throughputs) are printed.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::faults::*;
use support::*;

/// Share of its lone throughput the busy transfer keeps beside the stuck streams. Before the
/// window cap it kept 0 %; with the cap it keeps about 100 % on a quiet machine (123 % in the
/// run that landed the cap). The floor leaves room for a loaded CI machine, where one sample
/// window can lose a third to other processes (65 % seen while other tests ran beside it;
/// `.config/nextest.toml` now runs this binary alone), and still fails a starved transfer.
const MIN_SHARE: f64 = 0.5;
/// One sample: bytes echoed, or the resident memory, over this window.
const WINDOW: Duration = Duration::from_secs(1);
/// Samples per measurement.
const SAMPLES: usize = 5;
const SEED_ECHO: u64 = 0x57_0c4e_0001;
const SEED_SOURCE: u64 = 0x57_0c4e_0002;
const SEED_SINK: u64 = 0x57_0c4e_0003;

/// The most the stuck streams may add to one process's resident memory, in KiB: per
/// pooled connection its receive window and its send buffer, plus 8 MiB of slack.
fn rss_allowance(pool: u64) -> u64 {
    const CONNECTION_WINDOW_KIB: u64 = 4 << 10;
    const CONNECTION_SEND_BUFFER_KIB: u64 = 3 << 10;
    const SLACK_KIB: u64 = 8 << 10;
    pool * (CONNECTION_WINDOW_KIB + CONNECTION_SEND_BUFFER_KIB) + SLACK_KIB
}

/// A backend that accepts connections and never reads from them (it keeps them open for
/// the rest of the test process).
fn sink_service() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind sink");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(64) {
            held.extend(s.ok());
        }
    });
    port
}

/// A backend that writes stream [`SEED_SOURCE`] to each connection as fast as the
/// connection takes it (bounded: 4 GiB or ten minutes per connection); `written` counts
/// the bytes its writes took, over all connections.
fn source_service(written: Arc<AtomicU64>) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind source");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(mut s) = s else { continue };
            let written = written.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                let mut buf = vec![0u8; 64 << 10];
                let mut pos = 0u64;
                while pos < 4 << 30 && Instant::now() < deadline {
                    pattern(SEED_SOURCE, pos, &mut buf);
                    if s.write_all(&buf).is_err() {
                        return;
                    }
                    pos += buf.len() as u64;
                    written.fetch_add(buf.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    port
}

/// Waits until `count` stops growing for a second (the stream is stuck); bounded by WAIT.
fn wait_stuck(what: &str, count: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = count();
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "{what} never got stuck");
        last = now;
    }
}

/// A tunnel (pool 1) exposing `echo`, `sink` and `source`.
fn tunnel(tag: &str, source_written: Arc<AtomicU64>) -> Tunnel {
    // A heartbeat of 5 s: liveness is not what is tested here.
    TunnelSpec::new(5, 1)
        .service("echo", echo_service())
        .service("sink", sink_service())
        .service("source", source_service(source_written))
        .start(tag)
}

/// The stuck streams, `count` each way: public clients pushing into `sink` (and still
/// trying), and public clients of `source` that do not read.
struct Stuck {
    to_sink: Vec<TcpStream>,
    /// Bytes the sink's clients have written, all together.
    pushed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pushers: Vec<JoinHandle<()>>,
    from_source: Vec<TcpStream>,
    /// Bytes the sink's clients had written, and the source had written, once stuck.
    stuck_at: (u64, u64),
}

impl Stuck {
    /// Opens `count` streams each way and waits until all are stuck.
    fn start(t: &Tunnel, source_written: &AtomicU64, count: usize) -> Stuck {
        let pushed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (mut to_sink, mut pushers, mut from_source) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..count {
            let s = TcpStream::connect(("127.0.0.1", t.public("sink"))).unwrap();
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            pushers.push(push_into(s.try_clone().unwrap(), &pushed, &stop));
            to_sink.push(s);
            from_source.push(TcpStream::connect(("127.0.0.1", t.public("source"))).unwrap());
        }
        let up = wait_stuck("the streams into the sink", || {
            pushed.load(Ordering::Relaxed)
        });
        let down = wait_stuck("the streams from the source", || {
            source_written.load(Ordering::Relaxed)
        });
        Stuck {
            to_sink,
            pushed,
            stop,
            pushers,
            from_source,
            stuck_at: (up, down),
        }
    }

    fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }
}

/// Writes stream [`SEED_SINK`] into `s` until the write fails or `stop` is set (bounded:
/// 4 GiB or ten minutes), adding what its writes took to `pushed`.
fn push_into(mut s: TcpStream, pushed: &Arc<AtomicU64>, stop: &Arc<AtomicBool>) -> JoinHandle<()> {
    let (pushed, stop) = (pushed.clone(), stop.clone());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut buf = vec![0u8; 64 << 10];
        let mut pos = 0u64;
        while pos < 4 << 30 && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            pattern(SEED_SINK, pos, &mut buf);
            match s.write(&buf) {
                Ok(n) => {
                    pos += n as u64;
                    pushed.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => return,
            }
        }
    })
}

impl Drop for Stuck {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in &self.to_sink {
            let _ = s.shutdown(Shutdown::Both);
        }
        for p in self.pushers.drain(..) {
            let _ = p.join();
        }
    }
}

#[test]
fn stuck_streams_hold_no_more_than_their_windows() {
    let source_written = Arc::new(AtomicU64::new(0));
    let t = tunnel("stuck-memory", source_written.clone());
    let (server_pid, agent_pid) = (t.server.pid(), t.agent.pid());
    let rss = |pid| rss_kib(pid).expect("VmRSS");
    // Warm up: buffers and tasks of a busy stream have been allocated once.
    let warm = echo_exact(
        t.public("echo"),
        SEED_ECHO,
        32 << 20,
        256 << 10,
        Duration::from_secs(30),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("warm-up transfer: {e}\n{}", t.logs()));
    assert!(warm.exact(), "warm-up transfer not byte-exact");
    let base = (rss(server_pid), rss(agent_pid));

    let stuck = Stuck::start(&t, &source_written, 1);
    let mut peak = (rss(server_pid), rss(agent_pid));
    for _ in 0..SAMPLES {
        std::thread::sleep(WINDOW);
        peak = (peak.0.max(rss(server_pid)), peak.1.max(rss(agent_pid)));
    }
    assert_eq!(
        stuck.pushed(),
        stuck.stuck_at.0,
        "the stream into the sink took more once stuck"
    );

    // The stream from the source is stuck, not broken: it flows again once read.
    let mut from_source = stuck.from_source[0].try_clone().unwrap();
    from_source
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = vec![0u8; 8 << 20];
    from_source
        .read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading the stuck stream: {e}\n{}", t.logs()));
    let mut want = vec![0u8; got.len()];
    pattern(SEED_SOURCE, 0, &mut want);
    assert!(got == want, "the stuck stream resumed with other bytes");
    assert!(
        poll_until(Duration::from_secs(10), || source_written
            .load(Ordering::Relaxed)
            > stuck.stuck_at.1),
        "the source's writes did not resume"
    );

    let allowance = rss_allowance(t.pool as u64);
    eprintln!(
        "stuck once {} KiB went into the sink, {} KiB out of the source\n\
         RSS KiB: server {} -> peak {} (+{}), agent {} -> peak {} (+{}); allowance +{allowance}",
        stuck.stuck_at.0 >> 10,
        stuck.stuck_at.1 >> 10,
        base.0,
        peak.0,
        peak.0.saturating_sub(base.0),
        base.1,
        peak.1,
        peak.1.saturating_sub(base.1),
    );
    assert!(
        peak.0 <= base.0 + allowance,
        "server RSS grew by {} KiB",
        peak.0 - base.0
    );
    assert!(
        peak.1 <= base.1 + allowance,
        "agent RSS grew by {} KiB",
        peak.1 - base.1
    );
}

/// Failed before stream windows were capped at a quarter of the connection window (on
/// this build and on 154d64e): the transfer beside the stuck streams stopped dead (0 bytes
/// per second). A stream's window auto-tuned up to `max_stream_window` (4 MiB) while its
/// reader kept up, which equalled `connection_window` (4 MiB); once that reader stopped,
/// the 4 MiB sat unread and the peer got no connection credit for any other stream.
#[test]
fn stuck_streams_do_not_slow_the_others() {
    transfer_beside_stuck_streams("stuck-throughput", 1);
}

/// Three stuck streams each way, as many as the receive side tolerates (each may hold a
/// quarter of the connection window). Failed on 765bd5d, where a stream could queue its
/// whole 2 MiB send buffer with no credit: two of the streams into the sink filled the
/// server's 3 MiB connection send buffer, and the transfer beside them stopped.
#[test]
fn three_stuck_streams_each_way_do_not_slow_the_others() {
    transfer_beside_stuck_streams("stuck-three", 3);
}

/// An echo transfer on the tunnel connection keeps [`MIN_SHARE`] of its lone throughput once
/// `count` streams each way are stuck beside it, and stays byte-exact.
fn transfer_beside_stuck_streams(tag: &str, count: usize) {
    let source_written = Arc::new(AtomicU64::new(0));
    let t = tunnel(tag, source_written.clone());
    let pump = EchoPump::start(t.public("echo"), SEED_ECHO);
    assert!(
        poll_until(WAIT, || pump.read() >= 8 << 20),
        "the transfer did not get going"
    );
    let median = |pump: &EchoPump| {
        let mut v: Vec<u64> = (0..SAMPLES).map(|_| pump.rate_over(WINDOW)).collect();
        v.sort();
        v[SAMPLES / 2]
    };
    let alone = median(&pump);
    let stuck = Stuck::start(&t, &source_written, count);
    let with = median(&pump);
    let share = with as f64 / alone.max(1) as f64;
    let mib_s = |b: u64| b as f64 / WINDOW.as_secs_f64() / 1048576.0;
    eprintln!(
        "{count} stuck each way once {} KiB went into the sink, {} KiB out of the source; \
         transfer MiB/s: alone {:.1}, beside the stuck streams {:.1} ({:.0} %)",
        stuck.stuck_at.0 >> 10,
        stuck.stuck_at.1 >> 10,
        mib_s(alone),
        mib_s(with),
        share * 100.0
    );
    assert!(
        share >= MIN_SHARE,
        "beside {count} stuck streams each way the transfer kept {:.0} % of its throughput\n{}",
        share * 100.0,
        t.logs()
    );
    drop(stuck);
    let total = pump
        .finish(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the transfer: {e}\n{}", t.logs()));
    eprintln!("transfer byte-exact: {} MiB each way", total >> 20);
}
