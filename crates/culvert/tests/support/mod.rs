//! Helpers of the process-level tests: the `culvert` binary run as child processes, their
//! logs captured line by line, every wait bounded, and every child killed (by its PID,
//! through `Child::kill`) when its guard drops, also when a test panics.
//!
//! Each test file includes this module with `mod support;` and uses only part of it, hence
//! the `dead_code` allowance.
#![allow(dead_code)]

pub mod exposition;
pub mod faults;
pub mod pg;

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bound of waits that should be quick (a process starting, a port being assigned).
pub const WAIT: Duration = Duration::from_secs(60);

/// The `culvert` binary under test.
pub fn culvert() -> Command {
    // CULVERT_TEST_BIN runs the tests against another build (e.g. an older one, to see a
    // fault test fail before its fix).
    let bin = std::env::var("CULVERT_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_culvert").to_owned());
    let mut c = Command::new(bin);
    c.env(
        "RUST_LOG",
        std::env::var("CULVERT_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    c.env_remove("CULVERT_TOKEN");
    c
}

/// Ports [`free_port`] picks from: between [`port_range`]'s blocks (20000–29999) and the
/// kernel's ephemeral range (32768 and up).
const FREE_PORTS: std::ops::Range<u32> = 30_000..32_768;

/// A loopback port free for TCP and UDP a moment ago. It is taken below the ephemeral range:
/// a port the OS picked (bind to port 0) could meanwhile become the local port of one of
/// the many outgoing connections that tests running in parallel make, and the process
/// meant to listen on it would fail with "address already in use".
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let span = FREE_PORTS.end - FREE_PORTS.start;
    for _ in 0..span {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let mix = nanos
            ^ std::process::id().wrapping_mul(2_654_435_761)
            ^ CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7_919);
        let port = (FREE_PORTS.start + mix % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {FREE_PORTS:?}");
}

/// 200 public ports below the ephemeral range, chosen at random per test.
pub fn port_range() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let start = 20_000 + ((nanos ^ std::process::id()) % 50) * 200;
    format!("{start}-{}", start + 199)
}

/// A scratch directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("culvert-{tag}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to completion with its output captured; kills it and fails the test if it
/// takes longer than `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_child(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {limit:?}");
    });
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Waits at most `limit` for `child` to exit.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    /// When each line was read from the pipe (within microseconds of its printing).
    at: Vec<Instant>,
    /// Output pipes not yet at end of file: a process can exit before its reader threads
    /// have taken its last lines.
    open: usize,
}

/// How long an exited process's output may take to reach its reader threads.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// A long-running child process whose stderr (and stdout) lines are collected. It is
/// killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    lines: Arc<(Mutex<Lines>, Condvar)>,
}

impl Proc {
    /// Starts `cmd`, naming it `name` in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let lines: Arc<(Mutex<Lines>, Condvar)> = Arc::default();
        let out = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let streams: Vec<_> = [out, err].into_iter().flatten().collect();
        lines.0.lock().unwrap_or_else(|p| p.into_inner()).open = streams.len();
        for stream in streams {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let (m, cv) = &*lines;
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                    g.lines.push(line);
                    g.at.push(Instant::now());
                    drop(g);
                    cv.notify_all();
                }
                m.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                cv.notify_all();
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        let (m, _) = &*self.lines;
        m.lock().unwrap_or_else(|p| p.into_inner()).lines.join("\n")
    }

    /// Number of lines printed so far.
    pub fn line_count(&self) -> usize {
        let (m, _) = &*self.lines;
        m.lock().unwrap_or_else(|p| p.into_inner()).lines.len()
    }

    /// Waits for the first line, from line `from` on, containing `needle`; `Err` with the
    /// log if the process exits first or `limit` passes.
    pub fn try_wait_line(
        &mut self,
        needle: &str,
        from: usize,
        limit: Duration,
    ) -> Result<String, String> {
        self.try_wait_match(&|l| l.contains(needle), needle, from, limit)
    }

    /// Waits for the first line, from line `from` on, satisfying `pred` (described by
    /// `what`); `Err` with the log if the process exits first or `limit` passes.
    pub fn try_wait_match(
        &mut self,
        pred: &dyn Fn(&str) -> bool,
        what: &str,
        from: usize,
        limit: Duration,
    ) -> Result<String, String> {
        self.try_wait_match_at(pred, what, from, limit)
            .map(|(line, _)| line)
    }

    /// [`Proc::try_wait_match`], also returning when the line was printed (read from the
    /// pipe), which may be before this call.
    pub fn try_wait_match_at(
        &mut self,
        pred: &dyn Fn(&str) -> bool,
        what: &str,
        from: usize,
        limit: Duration,
    ) -> Result<(String, Instant), String> {
        let deadline = Instant::now() + limit;
        let found = |g: &Lines| {
            g.lines
                .iter()
                .zip(&g.at)
                .skip(from)
                .find(|(l, _)| pred(l))
                .map(|(l, at)| (l.clone(), *at))
        };
        loop {
            {
                let (m, cv) = &*self.lines;
                let g = m.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(hit) = found(&g) {
                    return Ok(hit);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "{}: no line with {what:?} within {limit:?}; output:\n{}",
                        self.name,
                        g.lines.join("\n")
                    ));
                }
                let _ = cv
                    .wait_timeout(g, left.min(Duration::from_millis(100)))
                    .unwrap_or_else(|p| p.into_inner());
            }
            if let Some(status) = self.exited() {
                let (m, _) = &*self.lines;
                let g = m.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(hit) = found(&g) {
                    return Ok(hit);
                }
                return Err(format!(
                    "{} exited ({status}) before printing {what:?}; output:\n{}",
                    self.name,
                    g.lines.join("\n")
                ));
            }
        }
    }

    /// Like [`Proc::try_wait_line`], failing the test on `Err`.
    pub fn wait_line(&mut self, needle: &str, from: usize, limit: Duration) -> String {
        self.try_wait_line(needle, from, limit)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether it has exited.
    /// Once it has exited, its log is complete (its output pipes have been read to the
    /// end, or [`OUTPUT_DRAIN`] has passed).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten()?;
        let deadline = Instant::now() + OUTPUT_DRAIN;
        let (m, cv) = &*self.lines;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        while g.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(status)
    }

    /// Kills it with SIGKILL (by its PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_child(&mut self.child, WAIT);
    }

    /// Sends `signal` (such as `-INT`) to this child, by its PID, and waits at most `limit`
    /// for it to exit; kills it if it does not.
    pub fn stop_with(&mut self, signal: &str, limit: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if wait_child(&mut self.child, limit).is_none() {
            self.kill();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// The value of `key=` in a log line (up to the next space), such as `public_port=`.
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let v = rest.split_whitespace().next()?;
    Some(v.trim_matches('"').to_owned())
}

/// Creates a token with `culvert token new` and returns it (from stdout).
pub fn new_token(tokens: &Path, name: &str) -> String {
    new_token_with(tokens, name, &[])
}

/// [`new_token`] with extra flags, such as `--access pg`.
pub fn new_token_with(tokens: &Path, name: &str, extra: &[&str]) -> String {
    let out = run(
        culvert()
            .args(["token", "new", "--name", name, "--tokens"])
            .arg(tokens)
            .args(extra),
        WAIT,
    );
    assert!(
        out.status.success(),
        "culvert token new failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 token")
        .trim()
        .to_owned()
}

/// A `culvert server` child on 127.0.0.1 with public ports on loopback, ready to take
/// agents. `extra` adds flags (`--self-signed` or `--insecure-plain`). Retries with another
/// port if the chosen one was taken meanwhile.
pub fn start_server(tokens: &Path, extra: &[&str]) -> (Proc, u16) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut p = spawn_server(tokens, port, extra);
        match p.try_wait_line("tunnel endpoint ready", 0, WAIT) {
            Ok(_) => return (p, port),
            Err(e) => last = e,
        }
    }
    panic!("the server did not start: {last}");
}

/// Adds to `cmd` (the `culvert` binary, run directly or through a wrapper) the arguments
/// of a test server: `server` on 127.0.0.1:`port` with `tokens`, the test port range and
/// public ports on loopback.
pub fn server_args<'a>(cmd: &'a mut Command, tokens: &Path, port: u16) -> &'a mut Command {
    server_args_in(cmd, tokens, port, &port_range())
}

/// [`server_args`] with the public port range `range` (such as [`port_range`] gave), so a
/// restarted server hands out the ports its predecessor did.
pub fn server_args_in<'a>(
    cmd: &'a mut Command,
    tokens: &Path,
    port: u16,
    range: &str,
) -> &'a mut Command {
    cmd.args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tokens")
        .arg(tokens)
        .args(["--port-range", range, "--public-bind", "127.0.0.1"])
}

/// Spawns a test server ([`server_args`]) with `extra` flags; does not wait for it.
pub fn spawn_server(tokens: &Path, port: u16, extra: &[&str]) -> Proc {
    Proc::spawn(
        "culvert server",
        server_args(&mut culvert(), tokens, port).args(extra),
    )
}

/// Arguments of an agent dialing `ws://127.0.0.1:PORT` with a token file, exposing `expose`.
pub fn agent_args(port: u16, token_file: &std::path::Path, expose: &str) -> Vec<String> {
    vec![
        "--server".into(),
        format!("ws://127.0.0.1:{port}"),
        "--token-file".into(),
        token_file.display().to_string(),
        "--expose".into(),
        expose.into(),
    ]
}

/// Starts `culvert agent` with `args` and waits for the public port of `service`.
pub fn start_agent(args: &[String], service: &str) -> (Proc, u16) {
    let mut p = Proc::spawn("culvert agent", culvert().arg("agent").args(args));
    let port = public_port_of(&mut p, service, 0);
    (p, port)
}

/// Waits for the agent `p` to log, from line `from` on, the public port the server gave
/// `service`; returns it.
pub fn public_port_of(p: &mut Proc, service: &str, from: usize) -> u16 {
    let tag = format!("service={service} ");
    let line = p
        .try_wait_match(
            &|l| l.contains("public_port=") && l.contains(&tag),
            &format!("public_port= of {service}"),
            from,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let port: u16 = field(&line, "public_port")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no public_port in {line:?}"));
    assert_ne!(port, 0, "public port 0 in {line:?}");
    port
}

/// A plain TCP echo service on a free loopback port, served by a thread for the rest of
/// the test process (each connection echoes until EOF, then half-closes).
pub fn echo_service() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind echo");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().expect("clone");
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// Sends `msg` to 127.0.0.1:`port`, half-closes and returns everything read back (bounded).
pub fn echo_round_trip(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(msg)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// The line of `proc` that `culvert access` printed on stdout for `service`
/// (`SERVICE ADDR:PORT`), parsed to the port.
pub fn access_port(proc: &mut Proc, service: &str) -> u16 {
    let prefix = format!("{service} 127.0.0.1:");
    let line = proc
        .try_wait_match(&|l| l.starts_with(&prefix), &prefix, 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    line[prefix.len()..].trim().parse().expect("port")
}

/// A UDP echo service on a free loopback port (a thread answering every datagram).
pub fn udp_echo() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    port
}

/// A plain GET against an admin listener on 127.0.0.1:`port`: (status code, body).
pub fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns whether it became true.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The value of the first metric line starting with `prefix` in a Prometheus text body.
pub fn metric(body: &str, prefix: &str) -> Option<u64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}
