//! Helpers of the process-level tests: the `culvert` binary run as child processes (with
//! `culvert_testkit::process`: logs captured line by line, every wait bounded, and every
//! child killed by its PID when its guard drops, also when a test panics), test servers,
//! agents and backends.
//!
//! Each test file includes this module with `mod support;` and uses only part of it, hence
//! the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

pub mod exposition;
pub mod faults;
pub mod http;
pub mod netns;
pub mod pg;

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub use culvert_testkit::process::{run, wait_child, Proc};
pub use culvert_testkit::{eventually, free_port, metric, poll_until, TempDir, Text};

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
    c.env_remove("CULVERT_CLUSTER");
    c
}

/// 200 public ports below the ephemeral range, chosen at random per test, as
/// `--port-range` takes them.
pub fn port_range() -> String {
    culvert_testkit::ports::port_block_arg()
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
    server_args_on(cmd, tokens, port, range, "127.0.0.1")
}

/// [`server_args_in`] with public ports bound on `public_bind` instead of loopback.
pub fn server_args_on<'a>(
    cmd: &'a mut Command,
    tokens: &Path,
    port: u16,
    range: &str,
    public_bind: &str,
) -> &'a mut Command {
    cmd.args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tokens")
        .arg(tokens)
        .args(["--port-range", range, "--public-bind", public_bind])
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

/// `prog` from `PATH` or the sbin folders (where Debian puts haproxy and dnsmasq).
pub fn which(prog: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .chain([
                std::path::PathBuf::from("/usr/sbin"),
                std::path::PathBuf::from("/sbin"),
            ])
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

/// haproxy running the configuration `cfg` (written under `dir`), checked first, in the
/// foreground; returns once it listens on 127.0.0.1:`front`. Stopped by its PID when the
/// returned guard drops.
pub fn start_haproxy(dir: &Path, cfg: &str, front: u16) -> Proc {
    let bin = which("haproxy").unwrap_or_else(|| {
        panic!("haproxy is required by this test: install it (Debian: apt-get install haproxy), or run scripts/test.sh, which does")
    });
    let path = dir.join(format!("haproxy-{front}.cfg"));
    std::fs::write(&path, cfg).unwrap();
    let check = run(Command::new(&bin).arg("-c").arg("-f").arg(&path), WAIT);
    assert!(
        check.status.success(),
        "haproxy refused its config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // -db: foreground, logs to stderr.
    let proc = Proc::spawn(
        "haproxy",
        Command::new(&bin).arg("-db").arg("-f").arg(&path),
    );
    let up = poll_until(WAIT, || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, front)),
            Duration::from_secs(1),
        )
        .is_ok()
    });
    assert!(up, "haproxy did not listen:\n{}", proc.log());
    proc
}

/// A TCP connection to `to` from `source` (a loopback address, for tests that tell clients
/// apart by their address), the connect bounded by [`WAIT`].
pub fn connect_from(
    source: Ipv4Addr,
    to: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((source, 0)).into())?;
    s.connect_timeout(&to.into(), WAIT)?;
    Ok(s.into())
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
