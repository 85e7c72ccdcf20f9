//! Soak: a server and two agents under churn for `CULVERT_SOAK_SECONDS` (default 60), then
//! checks that nothing leaked. Run it with `scripts/soak.sh MINUTES`; it is ignored by the
//! ordinary test run.
//!
//! Setup: `culvert server --insecure-plain --heartbeat-interval 1 --admin`, and two agents
//! with `--pool 2 --heartbeat-interval 1 --admin`, each exposing one public and one private
//! echo service. Agent `a` dials through a [`FaultRelay`], agent `b` directly.
//!
//! Churn, until the deadline, every action bounded in time:
//! - echo workers: short public connections with random payloads (1 B – 128 KiB) checked
//!   byte for byte, and connections dropped mid-transfer with a reset (SO_LINGER 0);
//! - an access worker: `culvert access` sessions with `--ttl 3s` to either private service,
//!   each carrying a checked transfer until the TTL closes it;
//! - an agent restart every 20 s: agent a with SIGTERM, agent b with SIGKILL then SIGTERM,
//!   then agent a alone, alternating SIGKILL and SIGTERM (agent b's last process then lives
//!   through most of a long run, so its slopes mean something);
//! - a 3 s black hole through the relay every 25 s, then a heal.
//!
//! Every 2 s the RSS (`VmRSS`) and descriptor count (`/proc/PID/fd`) of the server and of
//! each agent's current process are sampled. At the end the churn stops, the soak waits
//! (bounded) for quiet and prints a summary: per process, RSS and descriptor slopes (least
//! squares over the samples after the first 20 % of the run; for an agent, over its
//! longest-lived process), action counts and failures, and the checks.
//!
//! Hard checks (any failure fails the test): streams open on the server and on every agent
//! is 0 after quiet (both ends' stream tables agree); `culvert_ports_in_use` equals the
//! public services registered (ports back in the pool); the server has exactly one session
//! per agent with its full pool; server and agent descriptors back within
//! [`FD_MARGIN`] of their value after setup; no byte-exact mismatch; no connection hung past
//! [`IO_TIMEOUT`]; a final echo through each public service; no panic in any log; no
//! worker left running. Soft (reported only): RSS slopes, and failures of actions outside
//! the fault windows (a fault window runs from a restart or black hole until the agent is
//! ready again, plus [`WINDOW_SLACK`]), and echo clients that saw a clean EOF (a FIN, not a
//! reset) before their bytes came back. `CULVERT_SOAK_SEED=HEX` replays the random choices;
//! `CULVERT_SOAK_VERBOSE=1` prints examples of the failures in each fault window.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use culvert_testkit::fault_relay::FaultRelay;
use support::*;

/// Heartbeat interval of the server and the agents, in seconds.
const HB: &str = "1";
/// Time between resource samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Time between agent restarts, and the first one.
const RESTART_EVERY: Duration = Duration::from_secs(20);
const FIRST_RESTART: Duration = Duration::from_secs(10);
/// Time between black holes, the first one, and how long each lasts.
const BLACK_HOLE_EVERY: Duration = Duration::from_secs(25);
const FIRST_BLACK_HOLE: Duration = Duration::from_secs(20);
const BLACK_HOLE_FOR: Duration = Duration::from_secs(3);
/// No fault starts this close to the deadline.
const NO_FAULT_BEFORE_END: Duration = Duration::from_secs(5);
/// TTL of each access session.
const ACCESS_TTL: Duration = Duration::from_secs(3);
/// Read and write timeout of every client socket: a connection silent this long is hung.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound of an agent becoming ready again (after a start, restart or heal).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Bound of the quiet wait after the churn.
const QUIET_WITHIN: Duration = Duration::from_secs(20);
/// Descriptors a process may hold above its count after setup, at the end.
const FD_MARGIN: i64 = 8;
/// A failure this long after a fault window ends still counts as caused by it.
const WINDOW_SLACK: Duration = Duration::from_secs(2);
/// Parallel echo workers.
const ECHO_WORKERS: usize = 3;
/// Largest echo payload.
const MAX_PAYLOAD: usize = 128 << 10;
/// Bound of the number of actions of each worker (the deadline ends them much sooner).
const MAX_ACTIONS: u64 = 10_000_000;

/// xorshift64*: payloads and choices, reproducible from the printed seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// How one client connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    Ok,
    /// Connect failed.
    Refused,
    /// Read or write error (reset) before the whole payload came back.
    Reset,
    /// Clean EOF before the whole payload came back.
    Cut,
    /// Nothing moved for [`IO_TIMEOUT`].
    Hung,
    /// Bytes back that were not sent (hard failure).
    Mismatch,
    /// Access: `culvert access` did not print its port, or ended badly.
    AccessStart,
    /// Access: the connection ended well before the TTL.
    AccessEarly,
    /// Access: the process did not exit 0 after its TTL.
    AccessExit,
}

/// One action's record: kind, outcome, when it started and ended (seconds into the churn).
#[derive(Clone, Debug)]
struct Record {
    kind: &'static str,
    outcome: Outcome,
    start: f64,
    end: f64,
    detail: String,
}

/// A fault window: from a restart or black hole until the agent is ready again.
#[derive(Clone, Debug)]
struct Window {
    /// What happened, such as `a-KILL` or `a-black-hole`.
    label: String,
    /// Seconds into the churn.
    start: f64,
    /// None while in progress.
    end: Option<f64>,
}

/// What the threads share.
struct Shared {
    t0: Instant,
    stop: AtomicBool,
    /// Current public port of each agent's public service.
    ports: [AtomicU32; 2],
    /// Current PID of each agent.
    pids: [AtomicU32; 2],
    records: Mutex<Vec<Record>>,
    /// Faults, in the order they started.
    windows: Mutex<Vec<Window>>,
    bytes_verified: AtomicU64,
    seed: u64,
}

impl Shared {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn record(&self, kind: &'static str, outcome: Outcome, start: f64, detail: String) {
        let end = self.now();
        self.records.lock().unwrap().push(Record {
            kind,
            outcome,
            start,
            end,
            detail,
        });
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The first fault window `[start, end]` overlaps (widened by [`WINDOW_SLACK`]).
    fn fault_of(&self, start: f64, end: f64) -> Option<usize> {
        let now = self.now();
        self.windows.lock().unwrap().iter().position(|w| {
            let we = w.end.unwrap_or(now) + WINDOW_SLACK.as_secs_f64();
            start <= we && end >= w.start - 0.5
        })
    }

    /// Opens a fault window.
    fn fault_begins(&self, label: String) {
        let start = self.now();
        self.windows.lock().unwrap().push(Window {
            label,
            start,
            end: None,
        });
    }

    /// Closes the fault window opened last.
    fn fault_ends(&self) {
        let now = self.now();
        if let Some(w) = self.windows.lock().unwrap().last_mut() {
            w.end = Some(now);
        }
    }
}

/// A resource sample of one process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// 0 server, 1 agent a, 2 agent b.
    who: usize,
    pid: u32,
    t: f64,
    rss_kib: u64,
    fds: u64,
}

/// VmRSS (KiB) and descriptor count of `pid`, if it is alive.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// Least-squares slope of `(t seconds, value)` points, per minute.
fn slope_per_min(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    (den > 0.0).then(|| num / den * 60.0)
}

/// The first offset where `got` differs from `sent`, or where it runs past it.
fn first_difference(sent: &[u8], got: &[u8]) -> Option<usize> {
    if got.len() > sent.len() {
        return Some(sent.len());
    }
    got.iter().zip(sent).position(|(a, b)| a != b)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One echo through `port`: `payload` written by a second thread while this one reads it
/// back to EOF; checked byte for byte.
fn echo_once(port: u16, payload: &[u8]) -> (Outcome, String) {
    let s = match connect(port) {
        Ok(s) => s,
        Err(e) => return (Outcome::Refused, e.to_string()),
    };
    let Ok(mut w) = s.try_clone() else {
        return (Outcome::Refused, "clone".into());
    };
    let mut r = &s;
    let mut got = Vec::with_capacity(payload.len());
    let read_end = std::thread::scope(|sc| {
        sc.spawn(move || {
            let res = w.write_all(payload);
            let _ = w.shutdown(Shutdown::Write);
            res
        });
        let mut buf = vec![0u8; 32 << 10];
        let end = loop {
            match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() > payload.len() {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if got.len() != payload.len() || end.is_err() {
            // Unblocks the writer.
            let _ = s.shutdown(Shutdown::Both);
        }
        end
    });
    if let Some(at) = first_difference(payload, &got) {
        return (
            Outcome::Mismatch,
            format!(
                "port {port}: {} bytes sent, {} back, first difference at {at}",
                payload.len(),
                got.len()
            ),
        );
    }
    match read_end {
        Err(e) if is_timeout(&e) => (
            Outcome::Hung,
            format!("port {port}: {} of {} bytes back", got.len(), payload.len()),
        ),
        Err(e) => (
            Outcome::Reset,
            format!("port {port}: {e} after {} of {}", got.len(), payload.len()),
        ),
        Ok(()) if got.len() < payload.len() => (
            Outcome::Cut,
            format!("port {port}: EOF after {} of {}", got.len(), payload.len()),
        ),
        Ok(()) => (Outcome::Ok, String::new()),
    }
}

/// A connection through `port` that writes part of `payload`, maybe reads some of it back
/// (checked), and is then dropped with a reset.
fn reset_once(port: u16, payload: &[u8], read_first: bool) -> (Outcome, String) {
    let s = match connect(port) {
        Ok(s) => s,
        Err(e) => return (Outcome::Refused, e.to_string()),
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut w = &s;
    // About half the payload goes out before the reset.
    let half = payload.len().div_ceil(2);
    let mut sent = 0;
    for chunk in payload[..half].chunks(16 << 10) {
        match w.write(chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let mut outcome = (Outcome::Ok, String::new());
    if read_first {
        let mut buf = vec![0u8; 16 << 10];
        let mut r = &s;
        match r.read(&mut buf) {
            Ok(n) => {
                if let Some(at) = first_difference(&payload[..sent], &buf[..n]) {
                    outcome = (
                        Outcome::Mismatch,
                        format!("port {port}: reset connection read {n} bytes, first difference at {at}"),
                    );
                }
            }
            Err(e) if is_timeout(&e) => {
                outcome = (Outcome::Hung, format!("port {port}: nothing echoed"))
            }
            Err(e) => outcome = (Outcome::Reset, format!("port {port}: {e}")),
        }
    }
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
    outcome
}

/// An echo worker: echoes and resets through either public service until the stop flag.
fn echo_worker(shared: Arc<Shared>, id: u64) {
    let mut rng = Rng::new(shared.seed ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for _ in 0..MAX_ACTIONS {
        if shared.stopping() {
            return;
        }
        let port = shared.ports[rng.below(2) as usize].load(Ordering::Relaxed) as u16;
        // Mostly small payloads, some large.
        let len = if rng.below(4) == 0 {
            rng.below(MAX_PAYLOAD as u64) as usize + 1
        } else {
            rng.below(4096) as usize + 1
        };
        let payload = rng.bytes(len);
        let start = shared.now();
        if rng.below(4) == 0 {
            let (o, d) = reset_once(port, &payload, rng.below(2) == 0);
            shared.record("reset", o, start, d);
        } else {
            let (o, d) = echo_once(port, &payload);
            if o == Outcome::Ok {
                shared
                    .bytes_verified
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            shared.record("echo", o, start, d);
        }
        std::thread::sleep(Duration::from_millis(rng.below(10)));
    }
}

/// Where `culvert access` sessions go.
struct AccessTarget {
    server_port: u16,
    token_file: std::path::PathBuf,
}

/// The access worker: back-to-back `culvert access` sessions with a short TTL, alternating
/// between the private services, each carrying a checked transfer until it expires.
fn access_worker(shared: Arc<Shared>, target: AccessTarget) {
    let mut rng = Rng::new(shared.seed ^ 0xACCE55);
    for i in 0..MAX_ACTIONS {
        if shared.stopping() {
            return;
        }
        let service = if i % 2 == 0 { "priv-a" } else { "priv-b" };
        let start = shared.now();
        let (o, d) = access_once(&shared, &target, service, rng.next());
        shared.record("access", o, start, d);
        if o != Outcome::Ok {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn access_once(
    shared: &Shared,
    target: &AccessTarget,
    service: &str,
    seed: u64,
) -> (Outcome, String) {
    let ttl = format!("{}s", ACCESS_TTL.as_secs());
    let mut p = Proc::spawn(
        "culvert access",
        culvert()
            .args([
                "access",
                service,
                "--server",
                &format!("ws://127.0.0.1:{}", target.server_port),
                "--listen",
                "127.0.0.1",
                "--ttl",
                &ttl,
                "--token-file",
            ])
            .arg(&target.token_file),
    );
    let prefix = format!("{service} 127.0.0.1:");
    let line = match p.try_wait_match(
        &|l| l.starts_with(&prefix),
        &prefix,
        0,
        Duration::from_secs(15),
    ) {
        Ok(l) => l,
        Err(e) => {
            p.kill();
            let e: String = e.lines().take(12).collect::<Vec<_>>().join(" | ");
            return (Outcome::AccessStart, format!("{service}: {e}"));
        }
    };
    let opened = Instant::now();
    let Ok(port) = line[prefix.len()..].trim().parse::<u16>() else {
        p.kill();
        return (Outcome::AccessStart, format!("bad line {line:?}"));
    };
    let (outcome, detail, moved) = access_transfer(port, seed);
    shared
        .bytes_verified
        .fetch_add(moved as u64, Ordering::Relaxed);
    let lasted = opened.elapsed();
    let exit = wait_child_status(&mut p, Duration::from_secs(10));
    let log_ok = p.log().contains("time-to-live expired");
    if outcome == Outcome::Mismatch || outcome == Outcome::Hung {
        return (outcome, format!("{service}: {detail}"));
    }
    if lasted < ACCESS_TTL / 2 || moved == 0 {
        return (
            Outcome::AccessEarly,
            format!("{service}: ended after {lasted:?} with {moved} bytes checked: {detail}"),
        );
    }
    if !(exit.is_some_and(|s| s.success()) && log_ok) {
        p.kill();
        return (
            Outcome::AccessExit,
            format!("{service}: exit {exit:?}, ttl logged {log_ok}"),
        );
    }
    (Outcome::Ok, String::new())
}

/// Waits at most `limit` for `p` to exit.
fn wait_child_status(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    p.wait_exit(limit)
}

/// Streams 4 KiB blocks through the access port until it closes; returns how it ended and
/// the bytes checked.
fn access_transfer(port: u16, seed: u64) -> (Outcome, String, usize) {
    let s = match connect(port) {
        Ok(s) => s,
        Err(e) => return (Outcome::Refused, e.to_string(), 0),
    };
    let Ok(mut w) = s.try_clone() else {
        return (Outcome::Refused, "clone".into(), 0);
    };
    const BLOCK: usize = 4096;
    // Bounded: the TTL ends the connection long before.
    let max_blocks = 100_000;
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut rng = Rng::new(seed);
            for _ in 0..max_blocks {
                if w.write_all(&rng.bytes(BLOCK)).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = w.shutdown(Shutdown::Write);
        });
        let mut rng = Rng::new(seed);
        let mut expected = Vec::new();
        let mut buf = vec![0u8; 32 << 10];
        let mut checked = 0usize;
        let mut r = &s;
        let end = loop {
            match r.read(&mut buf) {
                Ok(0) => break (Outcome::Ok, "EOF".to_owned()),
                Ok(n) => {
                    while expected.len() < n {
                        expected.extend_from_slice(&rng.bytes(BLOCK));
                    }
                    if let Some(at) = first_difference(&expected[..n], &buf[..n]) {
                        break (
                            Outcome::Mismatch,
                            format!("access byte {} differs", checked + at),
                        );
                    }
                    expected.drain(..n);
                    checked += n;
                }
                Err(e) if is_timeout(&e) => {
                    break (Outcome::Hung, format!("nothing for {IO_TIMEOUT:?}"))
                }
                Err(e) => break (Outcome::Ok, e.to_string()),
            }
        };
        let _ = s.shutdown(Shutdown::Both);
        (end.0, end.1, checked)
    })
}

/// One agent: its arguments, its current process and when that started.
struct Agent {
    name: &'static str,
    args: Vec<String>,
    admin: u16,
    proc: Proc,
    /// Logs of its previous processes that showed a panic.
    panics: Vec<String>,
    /// Tunnel connections its previous processes lost (a fault noticed).
    lost: usize,
}

impl Agent {
    /// Starts a process and waits until both services are exposed and it is ready; returns
    /// the public port.
    fn spawn(name: &str, args: &[String], admin: u16) -> Result<(Proc, u16), String> {
        let mut p = Proc::spawn(
            &format!("culvert agent {name}"),
            culvert().arg("agent").args(args),
        );
        let public = format!("service=pub-{name} ");
        let private = format!("service=priv-{name} ");
        let line = p.try_wait_match(
            &|l| l.contains("service exposed") && l.contains(&public),
            "pub exposed",
            0,
            READY_WITHIN,
        )?;
        p.try_wait_match(
            &|l| l.contains("service exposed") && l.contains(&private),
            "priv exposed",
            0,
            READY_WITHIN,
        )?;
        let port = field(&line, "public_port")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no public port in {line:?}"))?;
        if !poll_until(READY_WITHIN, || ready(admin)) {
            return Err(format!("agent {name} not ready:\n{}", p.log()));
        }
        Ok((p, port))
    }
}

fn ready(admin: u16) -> bool {
    admin_get(admin, "/readyz").is_some_and(|(c, _)| c == 200)
}

fn metrics(admin: u16) -> String {
    admin_get(admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The server's sessions: connections of each.
fn sessions(admin: u16) -> Vec<u64> {
    admin_get(admin, "/api/sessions")
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["sessions"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|s| s["connections"].as_u64().unwrap_or(0))
        .collect()
}

fn soak_seconds() -> u64 {
    std::env::var("CULVERT_SOAK_SECONDS")
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("CULVERT_SOAK_SECONDS={v:?} is not a number"))
        })
        .unwrap_or(60)
}

#[test]
#[ignore = "long-running: scripts/soak.sh MINUTES runs it"]
fn soak() {
    let duration = Duration::from_secs(soak_seconds());
    assert!(duration >= Duration::from_secs(10), "soak at least 10 s");
    let seed = std::env::var("CULVERT_SOAK_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });

    // ---- setup
    let setup_started = Instant::now();
    let dir = TempDir::new("soak");
    let tokens = dir.join("tokens.toml");
    for name in ["a", "b"] {
        std::fs::write(
            dir.join(&format!("agent-{name}.token")),
            new_token(&tokens, &format!("agent-{name}")),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("access.token"),
        new_token_with(
            &tokens,
            "soak-access",
            &["--access", "priv-a", "--access", "priv-b"],
        ),
    )
    .unwrap();
    let server_admin = free_port();
    let (mut server, server_port) = start_server(
        &tokens,
        &[
            "--insecure-plain",
            "--heartbeat-interval",
            HB,
            "--admin",
            &format!("127.0.0.1:{server_admin}"),
        ],
    );
    assert!(
        poll_until(WAIT, || admin_get(server_admin, "/metrics").is_some()),
        "server admin never answered"
    );
    let relay = FaultRelay::start(([127, 0, 0, 1], server_port).into());
    let mut agents = Vec::new();
    let mut first_ports = [0u16; 2];
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let echo = echo_service();
        let admin = free_port();
        let dial = if i == 0 {
            relay.addr().port()
        } else {
            server_port
        };
        let mut args = agent_args(
            dial,
            &dir.join(&format!("agent-{name}.token")),
            &format!("pub-{name}=tcp://127.0.0.1:{echo}"),
        );
        args.extend(
            [
                "--expose",
                &format!("priv-{name}=tcp://127.0.0.1:{echo}?private"),
                "--pool",
                "2",
                "--heartbeat-interval",
                HB,
                "--grace",
                "5",
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ]
            .map(String::from),
        );
        let (proc, port) = Agent::spawn(name, &args, admin).unwrap_or_else(|e| panic!("{e}"));
        first_ports[i] = port;
        agents.push(Agent {
            name: if i == 0 { "a" } else { "b" },
            args,
            admin,
            proc,
            panics: Vec::new(),
            lost: 0,
        });
    }
    assert_eq!(
        relay.connections(),
        2,
        "agent a's pool goes through the relay"
    );
    assert!(
        poll_until(WAIT, || sessions(server_admin) == [2, 2]),
        "two sessions of two connections after setup: {:?}",
        sessions(server_admin)
    );
    for (i, port) in first_ports.iter().enumerate() {
        let msg = format!("setup echo {i}");
        assert_eq!(
            echo_round_trip(*port, msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let pids = [server.pid(), agents[0].proc.pid(), agents[1].proc.pid()];
    let baseline: Vec<(u64, u64)> = pids
        .iter()
        .map(|&p| usage(p).expect("usage after setup"))
        .collect();
    let setup_took = setup_started.elapsed();
    println!(
        "soak: {} s of churn, seed {seed:#x}; setup {:.1} s; server pid {}, agent a pid {} (through the relay), agent b pid {}; public ports {first_ports:?}",
        duration.as_secs(),
        setup_took.as_secs_f64(),
        pids[0],
        pids[1],
        pids[2]
    );

    // ---- churn
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        ports: [
            AtomicU32::new(first_ports[0].into()),
            AtomicU32::new(first_ports[1].into()),
        ],
        pids: [AtomicU32::new(pids[1]), AtomicU32::new(pids[2])],
        records: Mutex::new(Vec::new()),
        windows: Mutex::new(Vec::new()),
        bytes_verified: AtomicU64::new(0),
        seed,
    });
    let deadline = shared.t0 + duration;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut workers = Vec::new();
    for id in 0..ECHO_WORKERS as u64 {
        let sh = shared.clone();
        workers.push(("echo", std::thread::spawn(move || echo_worker(sh, id))));
    }
    {
        let sh = shared.clone();
        let target = AccessTarget {
            server_port,
            token_file: dir.join("access.token"),
        };
        workers.push((
            "access",
            std::thread::spawn(move || access_worker(sh, target)),
        ));
    }
    let sampler = {
        let sh = shared.clone();
        let samples = samples.clone();
        let server_pid = pids[0];
        std::thread::spawn(move || {
            let mut next_progress = 30.0;
            for k in 0..MAX_ACTIONS {
                if sh.stopping() {
                    return;
                }
                let t = sh.now();
                let who = [
                    server_pid,
                    sh.pids[0].load(Ordering::Relaxed),
                    sh.pids[1].load(Ordering::Relaxed),
                ];
                let mut line = format!("  t={t:>5.0}s");
                for (w, &pid) in who.iter().enumerate() {
                    if let Some((rss_kib, fds)) = usage(pid) {
                        samples.lock().unwrap().push(Sample {
                            who: w,
                            pid,
                            t,
                            rss_kib,
                            fds,
                        });
                        let name = ["server", "agent-a", "agent-b"][w];
                        line += &format!("  {name} {rss_kib} KiB {fds} fds");
                    }
                }
                if t >= next_progress {
                    next_progress += 30.0;
                    let recs = sh.records.lock().unwrap();
                    let ok = recs.iter().filter(|r| r.outcome == Outcome::Ok).count();
                    println!("{line}  actions {} ({ok} ok)", recs.len());
                }
                let next = sh.t0 + SAMPLE_EVERY * (k as u32 + 1);
                while Instant::now() < next && !sh.stopping() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };

    // The controller: restarts and black holes on schedule.
    let mut next_restart = shared.t0 + FIRST_RESTART;
    let mut next_black_hole = shared.t0 + FIRST_BLACK_HOLE;
    let mut restarts = Vec::new(); // (agent, signal, seconds to ready)
    let mut black_holes = Vec::new(); // seconds from heal to ready
    let mut hard_events: Vec<String> = Vec::new();
    let last_fault = deadline - NO_FAULT_BEFORE_END;
    for _ in 0..MAX_ACTIONS {
        let now = Instant::now();
        if now >= deadline || !hard_events.is_empty() {
            break;
        }
        if now >= next_restart && now < last_fault {
            // a-TERM, b-KILL, b-TERM, then agent a alone (KILL, TERM, …): agent b's last
            // process lives through most of a long run, for a meaningful slope.
            let n = restarts.len();
            let which = usize::from(n == 1 || n == 2);
            let signal = if n % 2 == 1 { "-KILL" } else { "-TERM" };
            let start = shared.now();
            let agent = &mut agents[which];
            shared.fault_begins(format!("{}{signal}", agent.name));
            if signal == "-KILL" {
                agent.proc.kill();
            } else {
                agent.proc.stop_with(signal, Duration::from_secs(15));
            }
            let log = agent.proc.log();
            agent.lost += log.matches("tunnel connection lost").count();
            if log.contains("panicked") {
                agent.panics.push(log);
            }
            match Agent::spawn(agent.name, &agent.args, agent.admin) {
                Ok((p, port)) => {
                    shared.pids[which].store(p.pid(), Ordering::Relaxed);
                    shared.ports[which].store(port.into(), Ordering::Relaxed);
                    agent.proc = p;
                }
                Err(e) => hard_events.push(format!(
                    "agent {} did not come back after {signal}: {e}",
                    agent.name
                )),
            }
            let took = shared.now() - start;
            shared.fault_ends();
            restarts.push((agent.name, signal, took));
            next_restart = (next_restart + RESTART_EVERY).max(Instant::now() + SAMPLE_EVERY);
            continue;
        }
        if now >= next_black_hole && now < last_fault {
            shared.fault_begins("a-black-hole".into());
            relay.black_hole();
            std::thread::sleep(BLACK_HOLE_FOR);
            relay.heal();
            let healed = Instant::now();
            if !poll_until(READY_WITHIN, || ready(agents[0].admin)) {
                hard_events.push(format!(
                    "agent a not ready {READY_WITHIN:?} after a black hole healed"
                ));
            }
            black_holes.push(healed.elapsed().as_secs_f64());
            shared.fault_ends();
            next_black_hole =
                (next_black_hole + BLACK_HOLE_EVERY).max(Instant::now() + SAMPLE_EVERY);
            continue;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let churn_took = shared.now();
    shared.stop.store(true, Ordering::Relaxed);
    let stop_at = Instant::now();
    let mut hung_workers = Vec::new();
    for (name, w) in workers {
        while !w.is_finished() && stop_at.elapsed() < IO_TIMEOUT + Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if w.is_finished() {
            let _ = w.join();
        } else {
            hung_workers.push(name);
        }
    }
    let _ = sampler.join();
    let workers_took = stop_at.elapsed();

    // ---- quiet
    let quiet_started = Instant::now();
    let public_services = 2u64;
    let read_state = || {
        let sm = metrics(server_admin);
        let server_streams = metric(&sm, "culvert_streams_open");
        let ports_tcp = metric(&sm, "culvert_ports_in_use{protocol=\"tcp\"}");
        let agent_streams: Vec<Option<u64>> = agents
            .iter()
            .map(|a| metric(&metrics(a.admin), "culvert_streams_open"))
            .collect();
        let agents_ready: Vec<bool> = agents.iter().map(|a| ready(a.admin)).collect();
        let server_fds = usage(server.pid()).map(|u| u.1);
        (
            server_streams,
            ports_tcp,
            agent_streams,
            agents_ready,
            server_fds,
            sessions(server_admin),
        )
    };
    let quiet = poll_until(QUIET_WITHIN, || {
        let (ss, pt, ast, ar, sf, sess) = read_state();
        ss == Some(0)
            && pt == Some(public_services)
            && ast.iter().all(|s| *s == Some(0))
            && ar.iter().all(|r| *r)
            && sf.is_some_and(|f| f as i64 <= baseline[0].1 as i64 + FD_MARGIN)
            && sess == [2, 2]
    });
    let quiet_took = quiet_started.elapsed();
    let (server_streams, ports_tcp, agent_streams, agents_ready, _, final_sessions) = read_state();
    let end_usage: Vec<Option<(u64, u64)>> =
        [server.pid(), agents[0].proc.pid(), agents[1].proc.pid()]
            .iter()
            .map(|&p| usage(p))
            .collect();
    let final_ports = [
        shared.ports[0].load(Ordering::Relaxed) as u16,
        shared.ports[1].load(Ordering::Relaxed) as u16,
    ];
    let final_echo: Vec<bool> = final_ports
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let payload = Rng::new(seed ^ i as u64).bytes(64 << 10);
            echo_once(p, &payload).0 == Outcome::Ok
        })
        .collect();

    // ---- report
    let records = shared.records.lock().unwrap().clone();
    let samples = samples.lock().unwrap().clone();
    let warmup = churn_took * 0.2;
    let names = ["server", "agent-a", "agent-b"];
    println!();
    println!(
        "soak summary: {:.0} s churn (+ setup {:.1} s, workers stopped in {:.1} s, quiet after {:.1} s), seed {seed:#x}",
        churn_took,
        setup_took.as_secs_f64(),
        workers_took.as_secs_f64(),
        quiet_took.as_secs_f64()
    );
    println!(
        "{:<8} {:>7} {:>8} {:>18} {:>13} {:>11} {:>13} {:>8}",
        "process",
        "pid",
        "samples",
        "RSS KiB setup→end",
        "RSS KiB/min",
        "fds set→end",
        "fds/min",
        "lived s"
    );
    let mut rss_slopes = Vec::new();
    let mut fd_slopes = Vec::new();
    for who in 0..3 {
        // The process of `who` with the most samples after the warm-up.
        let mut by_pid: Vec<(u32, Vec<Sample>)> = Vec::new();
        for s in samples.iter().filter(|s| s.who == who && s.t >= warmup) {
            match by_pid.iter_mut().find(|(p, _)| *p == s.pid) {
                Some((_, v)) => v.push(*s),
                None => by_pid.push((s.pid, vec![*s])),
            }
        }
        by_pid.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        let (pid, chosen) = by_pid.first().cloned().unwrap_or((0, Vec::new()));
        let rss = slope_per_min(
            &chosen
                .iter()
                .map(|s| (s.t, s.rss_kib as f64))
                .collect::<Vec<_>>(),
        );
        let fds = slope_per_min(
            &chosen
                .iter()
                .map(|s| (s.t, s.fds as f64))
                .collect::<Vec<_>>(),
        );
        let lived = match (chosen.first(), chosen.last()) {
            (Some(a), Some(b)) => b.t - a.t,
            _ => 0.0,
        };
        rss_slopes.push(rss);
        fd_slopes.push(fds);
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:+.1}"));
        let end = end_usage[who];
        println!(
            "{:<8} {:>7} {:>8} {:>18} {:>13} {:>11} {:>13} {:>8.0}",
            names[who],
            pid,
            chosen.len(),
            format!(
                "{}→{}",
                baseline[who].0,
                end.map_or("-".into(), |u| u.0.to_string())
            ),
            fmt(rss),
            format!(
                "{}→{}",
                baseline[who].1,
                end.map_or("-".into(), |u| u.1.to_string())
            ),
            fmt(fds),
            lived
        );
    }

    // Actions.
    let mut kinds: Vec<&str> = records.iter().map(|r| r.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut outside_faults = Vec::new();
    println!(
        "{:<8} {:>7} {:>7} {:>8} {:>7} {:>6} {:>6} {:>9} {:>7}   failures outside fault windows",
        "action", "done", "ok", "refused", "reset", "cut", "hung", "mismatch", "other"
    );
    for kind in &kinds {
        let rs: Vec<&Record> = records.iter().filter(|r| r.kind == *kind).collect();
        let count = |o: Outcome| rs.iter().filter(|r| r.outcome == o).count();
        let other =
            count(Outcome::AccessStart) + count(Outcome::AccessEarly) + count(Outcome::AccessExit);
        let outside: Vec<&&Record> = rs
            .iter()
            .filter(|r| r.outcome != Outcome::Ok && shared.fault_of(r.start, r.end).is_none())
            .collect();
        println!(
            "{:<8} {:>7} {:>7} {:>8} {:>7} {:>6} {:>6} {:>9} {:>7}   {}",
            kind,
            rs.len(),
            count(Outcome::Ok),
            count(Outcome::Refused),
            count(Outcome::Reset),
            count(Outcome::Cut),
            count(Outcome::Hung),
            count(Outcome::Mismatch),
            other,
            outside.len()
        );
        outside_faults.extend(outside.into_iter().map(|r| (*r).clone()));
    }
    println!(
        "bytes checked byte for byte: {} KiB; restarts: {}; black holes: {} (agent a ready again {} s after each heal)",
        shared.bytes_verified.load(Ordering::Relaxed) >> 10,
        restarts
            .iter()
            .map(|(a, s, t)| format!("{a}{s} {t:.1}s"))
            .collect::<Vec<_>>()
            .join(", "),
        black_holes.len(),
        black_holes
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join("/")
    );
    for r in outside_faults.iter().take(10) {
        println!(
            "  outside a fault window: {} {:?} at {:.1}-{:.1}s: {}",
            r.kind, r.outcome, r.start, r.end, r.detail
        );
    }
    let server_log = server.log();
    println!(
        "faults noticed: server closed {} agent connections and ended {} sessions; tunnel connections lost: agent-a {}, agent-b {}",
        server_log.matches("agent connection closed").count(),
        server_log.matches("agent session ended").count(),
        agents[0].lost + agents[0].proc.log().matches("tunnel connection lost").count(),
        agents[1].lost + agents[1].proc.log().matches("tunnel connection lost").count(),
    );
    // Failures by the fault window they overlap.
    let windows = shared.windows.lock().unwrap().clone();
    let mut caused = vec![std::collections::BTreeMap::<Outcome, usize>::new(); windows.len()];
    let mut examples = vec![Vec::<&Record>::new(); windows.len()];
    for r in records.iter().filter(|r| r.outcome != Outcome::Ok) {
        if let Some(w) = shared.fault_of(r.start, r.end) {
            let n = caused[w].entry(r.outcome).or_default();
            *n += 1;
            if *n <= 3 && r.outcome != Outcome::Refused {
                examples[w].push(r);
            }
        }
    }
    let verbose = std::env::var_os("CULVERT_SOAK_VERBOSE").is_some();
    println!(
        "fault windows (s, until the agent is ready again) and the failures overlapping them:"
    );
    for ((w, c), ex) in windows.iter().zip(&caused).zip(&examples) {
        println!(
            "  {:<13} {:>6.1}-{:<6.1} {}",
            w.label,
            w.start,
            w.end.unwrap_or(f64::NAN),
            c.iter()
                .map(|(o, n)| format!("{o:?} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for r in ex.iter().filter(|_| verbose) {
            println!(
                "      {} {:?} {:.2}-{:.2}s: {}",
                r.kind, r.outcome, r.start, r.end, r.detail
            );
        }
    }

    // Checks.
    let mismatches: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Mismatch)
        .collect();
    let hung: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Hung)
        .collect();
    let cuts = records.iter().filter(|r| r.outcome == Outcome::Cut).count();
    let mut panics: Vec<String> = agents.iter().flat_map(|a| a.panics.clone()).collect();
    for (name, log) in [
        ("server", server_log),
        ("agent a", agents[0].proc.log()),
        ("agent b", agents[1].proc.log()),
    ] {
        if log.contains("panicked") {
            panics.push(format!("{name}:\n{log}"));
        }
    }
    let fd_ok = |who: usize| {
        end_usage[who].is_some_and(|u| u.1 as i64 <= baseline[who].1 as i64 + FD_MARGIN)
    };
    let show = |v: &Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    let checks: Vec<(bool, bool, String)> = vec![
        (
            true,
            server_streams == Some(0) && agent_streams.iter().all(|s| *s == Some(0)),
            format!(
                "streams open after quiet: server {}, agent-a {}, agent-b {} (both ends' tables empty)",
                show(&server_streams),
                show(&agent_streams[0]),
                show(&agent_streams[1])
            ),
        ),
        (
            true,
            ports_tcp == Some(public_services),
            format!(
                "ports back in the pool: culvert_ports_in_use tcp {} = public services {public_services}",
                show(&ports_tcp)
            ),
        ),
        (
            true,
            final_sessions == [2, 2] && agents_ready.iter().all(|r| *r),
            format!(
                "sessions: {final_sessions:?} connections each (want [2, 2]), agents ready {agents_ready:?}"
            ),
        ),
        (
            true,
            fd_ok(0) && fd_ok(1) && fd_ok(2),
            format!(
                "descriptors back within {FD_MARGIN} of setup: server {}→{}, agent-a {}→{}, agent-b {}→{}",
                baseline[0].1,
                end_usage[0].map_or("?".into(), |u| u.1.to_string()),
                baseline[1].1,
                end_usage[1].map_or("?".into(), |u| u.1.to_string()),
                baseline[2].1,
                end_usage[2].map_or("?".into(), |u| u.1.to_string()),
            ),
        ),
        (
            true,
            mismatches.is_empty(),
            format!(
                "byte-exact: {} mismatches{}",
                mismatches.len(),
                mismatches
                    .first()
                    .map_or(String::new(), |r| format!(" (first: {})", r.detail))
            ),
        ),
        (
            true,
            hung.is_empty() && hung_workers.is_empty(),
            format!(
                "no hang: {} connections silent for {IO_TIMEOUT:?}{}, workers not stopped {hung_workers:?}",
                hung.len(),
                hung.first()
                    .map_or(String::new(), |r| format!(" (first: {} at {:.1}s: {})", r.kind, r.start, r.detail))
            ),
        ),
        (
            true,
            final_echo.iter().all(|o| *o),
            format!("final 64 KiB echo through each public service: {final_echo:?}"),
        ),
        (
            true,
            hard_events.is_empty(),
            format!("restarts and heals recovered: {hard_events:?}"),
        ),
        (true, panics.is_empty(), format!("no panic in any log: {} found", panics.len())),
        (
            true,
            quiet,
            format!("quiet within {QUIET_WITHIN:?}: took {:.1} s", quiet_took.as_secs_f64()),
        ),
        (
            false,
            true,
            format!(
                "RSS slope KiB/min: server {}, agent-a {}, agent-b {}",
                rss_slopes[0].map_or("-".into(), |v| format!("{v:+.0}")),
                rss_slopes[1].map_or("-".into(), |v| format!("{v:+.0}")),
                rss_slopes[2].map_or("-".into(), |v| format!("{v:+.0}"))
            ),
        ),
        (
            false,
            outside_faults.is_empty(),
            format!(
                "failures outside fault windows: {} of {} actions",
                outside_faults.len(),
                records.len()
            ),
        ),
        (
            false,
            cuts == 0,
            format!(
                "echo clients of aborted streams see a reset, not a clean EOF before their bytes came back: {cuts} clean EOFs"
            ),
        ),
    ];
    println!("checks (hard ones fail the soak; soft ones are reported only):");
    for (hard, ok, what) in &checks {
        let tag = match (hard, ok) {
            (_, true) => "PASS",
            (true, false) => "FAIL",
            (false, false) => "WARN",
        };
        println!(
            "  [{tag}] {:<4} {what}",
            if *hard { "hard" } else { "soft" }
        );
    }
    for p in panics.iter().take(2) {
        println!("--- log with a panic:\n{p}");
    }
    let failed: Vec<&String> = checks
        .iter()
        .filter(|(hard, ok, _)| *hard && !ok)
        .map(|(_, _, w)| w)
        .collect();
    if failed.is_empty() {
        println!("SOAK PASSED");
    } else {
        println!("SOAK FAILED");
    }
    drop(relay);
    for a in &mut agents {
        a.proc.kill();
    }
    server.kill();
    assert!(failed.is_empty(), "soak failed: {failed:#?}");
}
