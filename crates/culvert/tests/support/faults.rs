//! Helpers of the fault tests (`faults_*.rs`): a tunnel of one server and one agent, both
//! with admin listeners and a short heartbeat, optionally through a [`FaultRelay`]; its
//! health as the two admin APIs report it; seeded pseudo-random byte streams pushed through
//! public ports and checked byte for byte; and the resident memory of a process.
//!
//! Every wait is bounded, every load loop is bounded in count and in time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use culvert_testkit::fault_relay::FaultRelay;
use sha2::{Digest, Sha256};

use super::{
    admin_get, culvert, free_port, new_token, port_range, public_port_of, run, server_args_in,
    Proc, TempDir, WAIT,
};

/// Name of the token (and so of the session) of the agent a [`Tunnel`] starts.
pub const AGENT_TOKEN: &str = "agent";

/// Longest any one transfer helper runs, whatever it is asked: a backstop for the bounds
/// the tests set themselves.
const TRANSFER_MAX: Duration = Duration::from_secs(600);

/// What a [`Tunnel`] is made of.
pub struct TunnelSpec {
    heartbeat: u64,
    pool: usize,
    via_relay: bool,
    services: Vec<(String, u16)>,
}

impl TunnelSpec {
    /// Server and agent with a heartbeat of `heartbeat_secs` (the idle timeout is two of
    /// them), the agent keeping `pool` connections, through a [`FaultRelay`].
    pub fn new(heartbeat_secs: u64, pool: usize) -> TunnelSpec {
        TunnelSpec {
            heartbeat: heartbeat_secs,
            pool,
            via_relay: true,
            services: Vec::new(),
        }
    }

    /// Exposes `name` as a TCP service to 127.0.0.1:`target`.
    pub fn service(mut self, name: &str, target: u16) -> TunnelSpec {
        self.services.push((name.to_owned(), target));
        self
    }

    /// The agent dials the server itself, without a relay.
    pub fn direct(mut self) -> TunnelSpec {
        self.via_relay = false;
        self
    }

    /// Starts server, relay and agent, and waits until the tunnel is healthy
    /// ([`Tunnel::healthy`]).
    pub fn start(self, tag: &str) -> Tunnel {
        assert!(!self.services.is_empty(), "a tunnel needs a service");
        let dir = TempDir::new(tag);
        let tokens = dir.join("tokens.toml");
        let token_file = dir.join("agent.token");
        std::fs::write(&token_file, new_token(&tokens, AGENT_TOKEN)).unwrap();
        let range = port_range();
        let (server, server_port, server_admin, server_extra) =
            start_server_in(&tokens, &range, self.heartbeat);
        let relay = self
            .via_relay
            .then(|| FaultRelay::start(SocketAddr::from(([127, 0, 0, 1], server_port))));
        let dial = relay.as_ref().map_or(server_port, |r| r.addr().port());
        let agent_admin = free_port();
        let mut args = vec![
            "agent".to_owned(),
            "--server".into(),
            format!("ws://127.0.0.1:{dial}"),
            "--token-file".into(),
            token_file.display().to_string(),
            "--pool".into(),
            self.pool.to_string(),
            "--heartbeat-interval".into(),
            self.heartbeat.to_string(),
            "--admin".into(),
            format!("127.0.0.1:{agent_admin}"),
        ];
        for (name, target) in &self.services {
            args.push("--expose".into());
            args.push(format!("{name}=tcp://127.0.0.1:{target}"));
        }
        let mut agent = Proc::spawn("culvert agent", culvert().args(&args));
        let ports = self
            .services
            .iter()
            .map(|(name, _)| (name.clone(), public_port_of(&mut agent, name, 0)))
            .collect();
        let t = Tunnel {
            agent,
            relay,
            server,
            heartbeat: Duration::from_secs(self.heartbeat),
            pool: self.pool,
            server_port,
            server_admin,
            agent_admin,
            range,
            server_extra,
            tokens,
            ports,
            _dir: dir,
        };
        t.wait_healthy(WAIT);
        t
    }
}

/// Arguments setting a test server's heartbeat to `secs`, if this build's server has the
/// flag (builds before it did not: their server keeps its default of 10 s, which a test
/// run against such a build with `CULVERT_TEST_BIN` then measures instead).
pub fn server_heartbeat_args(secs: u64) -> Vec<String> {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    let supported = *SUPPORTED.get_or_init(|| {
        let out = run(culvert().args(["server", "--help"]), WAIT);
        let ok = String::from_utf8_lossy(&out.stdout).contains("--heartbeat-interval");
        if !ok {
            eprintln!(
                "note: this culvert server has no --heartbeat-interval; it keeps its default"
            );
        }
        ok
    });
    if supported {
        vec!["--heartbeat-interval".into(), secs.to_string()]
    } else {
        Vec::new()
    }
}

/// A plain-WebSocket server with an admin listener and heartbeat `hb` (seconds), public
/// ports in `range`: (server, port, admin port, its flags beyond [`server_args_in`]).
/// Retries with other ports if one was taken meanwhile.
fn start_server_in(
    tokens: &std::path::Path,
    range: &str,
    hb: u64,
) -> (Proc, u16, u16, Vec<String>) {
    let mut last = String::new();
    for _ in 0..3 {
        let (port, admin) = (free_port(), free_port());
        let mut extra = vec![
            "--insecure-plain".to_owned(),
            "--admin".into(),
            format!("127.0.0.1:{admin}"),
        ];
        extra.extend(server_heartbeat_args(hb));
        let mut p = Proc::spawn(
            "culvert server",
            server_args_in(&mut culvert(), tokens, port, range).args(&extra),
        );
        match p.try_wait_line("tunnel endpoint ready", 0, WAIT) {
            Ok(_) => return (p, port, admin, extra),
            Err(e) => last = e,
        }
    }
    panic!("the server did not start: {last}");
}

/// One server and one agent (token [`AGENT_TOKEN`]) with the services of its
/// [`TunnelSpec`]. Dropping it kills both and stops the relay.
pub struct Tunnel {
    pub agent: Proc,
    relay: Option<FaultRelay>,
    pub server: Proc,
    /// Heartbeat interval of both ends.
    pub heartbeat: Duration,
    /// Connections the agent keeps.
    pub pool: usize,
    pub server_port: u16,
    pub server_admin: u16,
    pub agent_admin: u16,
    range: String,
    server_extra: Vec<String>,
    tokens: PathBuf,
    ports: HashMap<String, u16>,
    _dir: TempDir,
}

impl Tunnel {
    /// The relay between agent and server.
    pub fn relay(&self) -> &FaultRelay {
        self.relay.as_ref().expect("this tunnel has no relay")
    }

    /// The public port the server gave `service` at the start.
    pub fn public(&self, service: &str) -> u16 {
        self.ports[service]
    }

    /// The server's sessions of the agent (token [`AGENT_TOKEN`]), from its admin API.
    pub fn sessions(&self) -> Option<Vec<serde_json::Value>> {
        let v = admin_json(self.server_admin, "/api/sessions")?;
        Some(
            v["sessions"]
                .as_array()?
                .iter()
                .filter(|s| s["token"] == AGENT_TOKEN)
                .cloned()
                .collect(),
        )
    }

    /// The agent's view of itself, from its admin API.
    pub fn agent_view(&self) -> Option<serde_json::Value> {
        admin_json(self.agent_admin, "/api/sessions")
    }

    /// `Ok` when the tunnel is as it should be at rest: exactly one session of the agent on
    /// the server, holding the whole pool and no suspect connection, its services on the
    /// public ports they had at the start; the agent ready with its whole pool up and none
    /// suspect. `Err` says what differs. (Builds without suspect counts count as none.)
    pub fn healthy(&self) -> Result<(), String> {
        let sessions = self
            .sessions()
            .ok_or("the server's admin API did not answer")?;
        let [s] = &sessions[..] else {
            return Err(format!(
                "{} sessions of the agent: {sessions:?}",
                sessions.len()
            ));
        };
        if s["connections"].as_u64() != Some(self.pool as u64) {
            return Err(format!("session connections not {}: {s}", self.pool));
        }
        if s["suspect_connections"].as_u64().unwrap_or(0) != 0 {
            return Err(format!("suspect connections in the session: {s}"));
        }
        for (name, port) in &self.ports {
            let listed = s["services"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|v| v["name"] == name.as_str() && v["public_port"] == *port)
            });
            if !listed {
                return Err(format!("service {name} not on public port {port}: {s}"));
            }
        }
        let a = self
            .agent_view()
            .ok_or("the agent's admin API did not answer")?;
        if a["connections_up"].as_u64() != Some(self.pool as u64)
            || a["connections_suspect"].as_u64().unwrap_or(0) != 0
            || a["ready"] != true
        {
            return Err(format!("agent not ready with its whole pool: {a}"));
        }
        Ok(())
    }

    /// Waits at most `limit` for [`Tunnel::healthy`]; returns how long it took, or fails
    /// the test with what differs and both logs.
    pub fn wait_healthy(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            match self.healthy() {
                Ok(()) => return t0.elapsed(),
                Err(e) if t0.elapsed() >= limit => {
                    panic!("not healthy within {limit:?}: {e}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- agent log:\n{}\n--- server log:\n{}",
            self.agent.log(),
            self.server.log()
        )
    }

    /// Starts the server again, on the same port and admin port, with the same token file
    /// and port range, after it was killed; waits until it takes agents.
    pub fn restart_server(&mut self) {
        assert!(
            self.server.exited().is_some(),
            "the server is still running"
        );
        self.server = Proc::spawn(
            "culvert server (restarted)",
            server_args_in(&mut culvert(), &self.tokens, self.server_port, &self.range)
                .args(&self.server_extra),
        );
        self.server
            .try_wait_line("tunnel endpoint ready", 0, WAIT)
            .unwrap_or_else(|e| panic!("the server did not restart: {e}"));
    }
}

/// The JSON an admin listener on 127.0.0.1:`port` answers at `path` (status 200).
pub fn admin_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let (code, body) = admin_get(port, path)?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Time from `since` until `p` logs a line containing one of `needles` (from line `from`
/// on); fails the test with the log if that takes longer than `limit`.
pub fn noticed(
    p: &mut Proc,
    needles: &[&str],
    from: usize,
    since: Instant,
    limit: Duration,
) -> Duration {
    noticed_within(p, needles, from, since, limit).unwrap_or_else(|| {
        panic!(
            "{needles:?} not logged within {limit:?}\n--- log:\n{}",
            p.log()
        )
    })
}

/// [`noticed`], `None` if not within `limit`. The time is that of the line, however long
/// after it this is called.
pub fn noticed_within(
    p: &mut Proc,
    needles: &[&str],
    from: usize,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let what = needles.join(" or ");
    p.try_wait_match_at(
        &|l| needles.iter().any(|n| l.contains(n)),
        &what,
        from,
        limit,
    )
    .ok()
    .map(|(_, at)| at.saturating_duration_since(since))
}

/// What the server logs when it drops an agent's connection: each connection
/// ("agent connection closed"), or, in builds before that line, the end of the session
/// its last connection took along ("agent session ended").
pub const SERVER_DROPPED: &[&str] = &["agent connection closed", "agent session ended"];

/// What the agent logs when it loses a tunnel connection.
pub const AGENT_LOST: &[&str] = &["tunnel connection lost"];

/// Whether a public connection to 127.0.0.1:`port` echoes a short message back within
/// `timeout`.
pub fn probe(port: u16, timeout: Duration) -> bool {
    let msg = b"are you there?";
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut back = [0u8; 14];
    s.write_all(msg).is_ok() && s.read_exact(&mut back).is_ok() && &back == msg
}

/// The resident set size of process `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// A figure in KiB from /proc/`pid`/status, by its name (`VmRSS`, `VmHWM`, `RssFile`, …).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// SplitMix64's output function.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with bytes `pos..pos + buf.len()` of the pseudo-random stream `seed`. The
/// stream depends only on the seed, so a reader regenerates what the writer sent from any
/// position, however the bytes were split on the way.
pub fn pattern(seed: u64, pos: u64, buf: &mut [u8]) {
    let word = |w: u64| splitmix64(seed ^ w.wrapping_mul(0xd605_bbb5_8c8a_bf43)).to_le_bytes();
    let mut p = pos;
    let mut rest = buf;
    while !rest.is_empty() && p % 8 != 0 {
        rest[0] = word(p / 8)[(p % 8) as usize];
        rest = &mut rest[1..];
        p += 1;
    }
    let mut chunks = rest.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(p / 8));
        p += 8;
    }
    for b in chunks.into_remainder() {
        *b = word(p / 8)[(p % 8) as usize];
        p += 1;
    }
}

/// A small seeded generator (SplitMix64) for lengths and seeds.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// Uniform in `0..n` (`n` > 0; the bias is negligible for the small `n` of tests).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What [`echo_exact`] sent and got back.
#[derive(Debug)]
pub struct Echoed {
    pub sent: u64,
    pub received: u64,
    pub sent_sha: [u8; 32],
    pub received_sha: [u8; 32],
    /// From connect to the end of file.
    pub took: Duration,
}

impl Echoed {
    /// Whether the echo is byte-exact: same length, same SHA-256.
    pub fn exact(&self) -> bool {
        self.sent == self.received && self.sent_sha == self.received_sha
    }
}

/// Opens a public connection to 127.0.0.1:`port` (an echo service), sends `len` bytes of
/// stream `seed` in writes of `chunk` bytes, half-closes (shutdown Write), reads to end of
/// file, and hashes both directions with SHA-256. `Err` if a read or write makes no
/// progress for `stall`, or everything takes longer than `limit`.
pub fn echo_exact(
    port: u16,
    seed: u64,
    len: u64,
    chunk: usize,
    stall: Duration,
    limit: Duration,
) -> Result<Echoed, String> {
    let t0 = Instant::now();
    let deadline = t0 + limit.min(TRANSFER_MAX);
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(stall)).unwrap();
    s.set_write_timeout(Some(stall)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = s;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<[u8; 32], String> {
            let mut sha = Sha256::new();
            let mut buf = vec![0u8; chunk.max(1)];
            let mut pos = 0u64;
            while pos < len {
                if Instant::now() > deadline {
                    let _ = w.shutdown(Shutdown::Both);
                    return Err(format!(
                        "sending took over {limit:?} ({pos} of {len} bytes sent)"
                    ));
                }
                let n = (len - pos).min(buf.len() as u64) as usize;
                pattern(seed, pos, &mut buf[..n]);
                sha.update(&buf[..n]);
                if let Err(e) = w.write_all(&buf[..n]) {
                    let _ = w.shutdown(Shutdown::Both);
                    return Err(format!("write at byte {pos} of {len}: {e}"));
                }
                pos += n as u64;
            }
            w.shutdown(Shutdown::Write)
                .map_err(|e| format!("half-close: {e}"))?;
            Ok(sha.finalize().into())
        });
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut received = 0u64;
        let read_result = loop {
            if Instant::now() > deadline {
                break Err(format!(
                    "echo took over {limit:?} ({received} of {len} bytes back)"
                ));
            }
            match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    sha.update(&buf[..n]);
                    received += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("read after {received} of {len} bytes: {e}")),
            }
        };
        if read_result.is_err() {
            // Unblocks the writer.
            let _ = r.shutdown(Shutdown::Both);
        }
        let sent_sha = writer.join().expect("writer thread")?;
        read_result?;
        Ok(Echoed {
            sent: len,
            received,
            sent_sha,
            received_sha: sha.finalize().into(),
            took: t0.elapsed(),
        })
    })
}

/// How an [`EchoPump`]'s reader ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub at: Instant,
    /// "end of file" or the read error.
    pub how: String,
}

/// A public client streaming the seeded stream to an echo service as fast as it can, in
/// both directions, checking every byte that comes back against what was sent. It runs
/// until [`EchoPump::finish`], an error, or at most ten minutes.
pub struct EchoPump {
    stream: TcpStream,
    sent: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
    mismatch: Arc<Mutex<Option<String>>>,
    ended: Arc<Mutex<Option<Ended>>>,
    stop_writer: Arc<AtomicBool>,
    stop_reader: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl EchoPump {
    /// Connects to 127.0.0.1:`port` and starts streaming stream `seed`.
    pub fn start(port: u16, seed: u64) -> EchoPump {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect the pump");
        // Short timeouts: the threads look at their stop flags between attempts.
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (sent, read) = (Arc::<AtomicU64>::default(), Arc::<AtomicU64>::default());
        let mismatch = Arc::<Mutex<Option<String>>>::default();
        let ended = Arc::<Mutex<Option<Ended>>>::default();
        let (stop_writer, stop_reader) =
            (Arc::<AtomicBool>::default(), Arc::<AtomicBool>::default());
        let deadline = Instant::now() + TRANSFER_MAX;
        let (mut w, mut r) = (stream.try_clone().unwrap(), stream.try_clone().unwrap());
        let stop = stop_writer.clone();
        let sent_w = sent.clone();
        let writer = std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            let (mut pos, mut off) = (0u64, buf.len());
            // Bounded: ~40 GiB or ten minutes at most.
            for _ in 0..10_000_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return;
                }
                if off == buf.len() {
                    pattern(seed, pos, &mut buf);
                    off = 0;
                }
                match w.write(&buf[off..]) {
                    Ok(n) => {
                        off += n;
                        pos += n as u64;
                        sent_w.store(pos, Ordering::Relaxed);
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => return,
                }
            }
        });
        let (read_r, mismatch_r, ended_r, stop) = (
            read.clone(),
            mismatch.clone(),
            ended.clone(),
            stop_reader.clone(),
        );
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut want = vec![0u8; 64 << 10];
            let mut pos = 0u64;
            let how = loop {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return;
                }
                match r.read(&mut buf) {
                    Ok(0) => break "end of file".to_owned(),
                    Ok(n) => {
                        pattern(seed, pos, &mut want[..n]);
                        if buf[..n] != want[..n] {
                            let mut m = mismatch_r.lock().unwrap();
                            if m.is_none() {
                                let i = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b);
                                *m = Some(format!("byte {} differs", pos + i.unwrap_or(0) as u64));
                            }
                        }
                        pos += n as u64;
                        read_r.store(pos, Ordering::Relaxed);
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => break e.to_string(),
                }
            };
            *ended_r.lock().unwrap() = Some(Ended {
                at: Instant::now(),
                how,
            });
        });
        EchoPump {
            stream,
            sent,
            read,
            mismatch,
            ended,
            stop_writer,
            stop_reader,
            writer: Some(writer),
            reader: Some(reader),
        }
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes echoed back so far (all checked).
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// How the connection ended (end of file or an error), if it did.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.lock().unwrap().clone()
    }

    /// The first byte that came back different from what was sent, if any.
    pub fn mismatch(&self) -> Option<String> {
        self.mismatch.lock().unwrap().clone()
    }

    /// Bytes echoed back during the next `window`.
    pub fn rate_over(&self, window: Duration) -> u64 {
        let before = self.read();
        std::thread::sleep(window);
        self.read() - before
    }

    /// Stops sending, half-closes, and waits at most `limit` for the rest of the echo and
    /// its end of file: `Ok(bytes)` if everything sent came back, byte for byte.
    pub fn finish(mut self, limit: Duration) -> Result<u64, String> {
        self.stop_writer.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let sent = self.sent();
        self.stream
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("half-close: {e}"))?;
        let t0 = Instant::now();
        while self.ended().is_none() && t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ended = self.ended();
        let read = self.read();
        if let Some(m) = self.mismatch() {
            return Err(format!("the echo differs: {m}"));
        }
        match ended {
            Some(e) if e.how == "end of file" && read == sent => Ok(sent),
            Some(e) => Err(format!(
                "ended with {} after {read} of {sent} bytes back",
                e.how
            )),
            None => Err(format!(
                "no end of file within {limit:?} ({read} of {sent} bytes back)"
            )),
        }
    }
}

impl Drop for EchoPump {
    fn drop(&mut self) {
        self.stop_writer.store(true, Ordering::Relaxed);
        self.stop_reader.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(Shutdown::Both);
        for t in [self.writer.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

/// A read or write timeout (what std returns when `SO_RCVTIMEO`/`SO_SNDTIMEO` expire).
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
