//! On-demand access to private services: an agent exposes PostgreSQL with `--private` (no
//! public port), and `culvert access` opens a local listener to it with a time-to-live.
//! Real processes, real PostgreSQL, real sockets on loopback.

mod support;

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use support::pg::*;
use support::*;

/// A server (plain ws:// on loopback) with an agent token and a token allowed `allowed`.
struct Setup {
    dir: TempDir,
    server: Proc,
    port: u16,
}

impl Setup {
    fn new(tag: &str, allowed: &[&str]) -> Setup {
        let dir = TempDir::new(tag);
        let tokens = dir.join("tokens.toml");
        std::fs::write(dir.join("agent.token"), new_token(&tokens, "db-node")).unwrap();
        let mut extra = Vec::new();
        for a in allowed {
            extra.extend(["--access", a]);
        }
        std::fs::write(
            dir.join("access.token"),
            new_token_with(&tokens, "alice", &extra),
        )
        .unwrap();
        std::fs::write(
            dir.join("nobody.token"),
            new_token_with(&tokens, "nobody", &["--role", "access"]),
        )
        .unwrap();
        let (server, port) = start_server(&tokens, &["--insecure-plain"]);
        Setup { dir, server, port }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// An agent exposing `name` → 127.0.0.1:`target` privately; waits for its registration.
    fn private_agent(&self, name: &str, target: u16) -> Proc {
        let mut agent = Proc::spawn(
            "culvert agent",
            culvert()
                .args(["agent", "--server", &self.url(), "--token-file"])
                .arg(self.dir.join("agent.token"))
                .args(["--expose", &format!("{name}=tcp://127.0.0.1:{target}")])
                .arg("--private"),
        );
        let line = agent.wait_line("service exposed", 0, WAIT);
        // Logged as private, not as a public port 0.
        assert!(
            line.contains("exposed privately") && field(&line, "public_port").is_none(),
            "a private service must be logged as private, with no public port: {line}"
        );
        agent
    }

    /// `culvert access` with `token` (a file name in the scratch dir) and `extra` flags.
    fn access(&self, token: &str, extra: &[&str]) -> Proc {
        Proc::spawn(
            "culvert access",
            culvert()
                .arg("access")
                .args(extra)
                .args(["--server", &self.url(), "--token-file"])
                .arg(self.dir.join(token)),
        )
    }
}

#[test]
fn access_session_to_private_postgres_ends_at_its_ttl() {
    let bindir = pg_bindir();
    let psql = client_program(&bindir, "psql");
    let pg = Postgres::start(&bindir);
    let s = Setup::new("access-pg", &["pg"]);
    let _agent = s.private_agent("pg", pg.port);
    assert!(
        !s.server.log().contains("public_port="),
        "the server bound a public port for a private service:\n{}",
        s.server.log()
    );

    let admin = free_port();
    let mut access = s.access(
        "access.token",
        &[
            "pg",
            "--listen",
            "127.0.0.1",
            "--ttl",
            "12s",
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ],
    );
    let local = access_port(&mut access, "pg");
    access.wait_line("admin endpoints ready", 0, WAIT);

    let (ok, out, err) = pg_client(&psql, local, &["-X", "-tA", "-c", "select 42"], WAIT);
    assert!(
        ok,
        "psql through the access session failed: {err}\n--- access log:\n{}",
        access.log()
    );
    assert_eq!(out.trim(), "42");

    // A long query holds a live connection across the expiry.
    let mut long = Proc::spawn(
        "psql (long query)",
        std::process::Command::new(&psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &local.to_string(),
                "-U",
                "postgres",
                "-X",
            ])
            .args(["-c", "select pg_sleep(120)"])
            .env("PGCONNECT_TIMEOUT", "20")
            .env("PGSSLMODE", "disable"),
    );
    // The session list shows the service, its address, the TTL left and the open
    // connection (polled: psql connects in its own time).
    let list_cmd = || {
        let list = run(
            culvert().args(["access", "list", "--admin", &format!("127.0.0.1:{admin}")]),
            WAIT,
        );
        assert!(
            list.status.success(),
            "access list failed: {}",
            String::from_utf8_lossy(&list.stderr)
        );
        String::from_utf8_lossy(&list.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + WAIT;
    let row = loop {
        let table = list_cmd();
        let row = table
            .lines()
            .find(|l| l.starts_with("pg "))
            .unwrap_or_else(|| panic!("no pg row in:\n{table}"))
            .to_owned();
        let cols: Vec<&str> = row.split_whitespace().collect();
        // service, address, ttl left, open, bytes up, bytes down
        if cols.len() == 6 && cols[3] == "1" {
            eprintln!("{table}");
            break cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the long psql never showed as an open connection:\n{table}\n{}",
            long.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row[1], format!("127.0.0.1:{local}"));
    let left: u64 = row[2]
        .trim_end_matches('s')
        .parse()
        .expect("ttl left in seconds");
    assert!(left <= 12, "TTL left {left}s exceeds the TTL");
    assert!(row[4].parse::<u64>().unwrap() > 0 && row[5].parse::<u64>().unwrap() > 0);

    // At expiry: the live connection is closed (psql fails), the port refuses new ones,
    // and the access process ends by itself.
    access.wait_line("time-to-live expired", 0, Duration::from_secs(40));
    let status = wait_child_proc(&mut long, Duration::from_secs(30));
    assert!(
        !status.success(),
        "the long psql should have lost its connection at expiry:\n{}",
        long.log()
    );
    assert!(
        long.log().contains("closed the connection") || long.log().contains("terminat"),
        "psql should report the closed connection:\n{}",
        long.log()
    );
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, local));
    assert!(
        refused.is_err(),
        "the access port still accepts connections after expiry"
    );
    let exit = wait_child_proc(&mut access, WAIT);
    assert!(
        exit.success(),
        "culvert access should exit 0 after its TTL:\n{}",
        access.log()
    );
}

#[test]
fn access_is_refused_clearly_for_a_token_not_allowed_the_service() {
    let echo = echo_service();
    let s = Setup::new("access-refused", &["other"]);
    let _agent = s.private_agent("secret", echo);

    // A token with no access at all, and one allowed only another service.
    for token in ["nobody.token", "access.token"] {
        let mut a = s.access(token, &["secret"]);
        let exit = wait_child_proc(&mut a, WAIT);
        assert!(!exit.success(), "access with {token} should fail");
        assert!(
            a.log()
                .contains("refused access to service \"secret\": not allowed"),
            "{token}: unclear refusal:\n{}",
            a.log()
        );
    }
    // A service nobody registered.
    let mut a = s.access("access.token", &["other"]);
    let exit = wait_child_proc(&mut a, WAIT);
    assert!(!exit.success());
    assert!(a.log().contains("no such service"), "{}", a.log());
    // The server said why too, naming the token, never the token itself.
    let log = s.server.log();
    assert!(
        log.contains("token \"nobody\" is not allowed service \"secret\""),
        "{log}"
    );
    assert!(!log.contains("cvt_"), "a token leaked into the server log");
}

#[test]
fn fallback_fail_refuses_at_once_and_direct_dials_the_service() {
    let echo = echo_service();
    let mut s = Setup::new("access-fallback", &["echo"]);
    let agent = s.private_agent("echo", echo);

    let mut fail = s.access("access.token", &["echo", "--listen", "127.0.0.1"]);
    let fail_port = access_port(&mut fail, "echo");
    let mut direct = s.access(
        "access.token",
        &[
            "echo",
            "--fallback",
            "direct",
            "--direct",
            &format!("127.0.0.1:{echo}"),
        ],
    );
    let direct_port = access_port(&mut direct, "echo");
    // While the tunnel is up both go through it.
    for p in [fail_port, direct_port] {
        assert_eq!(
            echo_round_trip(p, b"through the tunnel").unwrap(),
            b"through the tunnel"
        );
    }
    assert!(!direct.log().contains("dialing the service directly"));
    // A non-loopback direct address is warned about at start. It is never dialed here:
    // this session is stopped while the tunnel is still up.
    let mut remote = s.access(
        "access.token",
        &["echo", "--fallback", "direct", "--direct", "10.1.2.3:7"],
    );
    remote.wait_line("non-loopback", 0, WAIT);
    remote.kill();

    // The tunnel goes down (the server stops): fail refuses at once, direct dials.
    s.server.kill();
    drop(agent);
    fail.wait_line("tunnel connection lost", 0, WAIT);
    direct.wait_line("tunnel connection lost", 0, WAIT);
    match echo_round_trip(fail_port, b"x") {
        Ok(v) => assert!(v.is_empty(), "fallback fail must not carry data, got {v:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "fallback fail should reset the connection, got {e}"
        ),
    }
    assert_eq!(echo_round_trip(direct_port, b"direct").unwrap(), b"direct");
    direct.wait_line("dialing the service directly", 0, WAIT);
    // No TTL: both keep running until stopped.
    assert!(fail.exited().is_none() && direct.exited().is_none());
}

/// Waits for `p` to exit within `limit`; panics with its log otherwise.
fn wait_child_proc(p: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    p.expect_exit(limit)
}

#[test]
fn a_token_ttl_is_enforced_by_the_server() {
    use std::io::{Read, Write};
    let echo = echo_service();
    let s = Setup::new("access-token-ttl", &[]);
    let _agent = s.private_agent("echo", echo);
    // A token that may reach `echo` for 8 seconds; the client sets no TTL of its own.
    let short = new_token_with(
        &s.dir.join("tokens.toml"),
        "temp",
        &["--access", "echo", "--ttl", "8s"],
    );
    std::fs::write(s.dir.join("temp.token"), short).unwrap();
    // The server reloads its token file when it changes (checked every 2 s).
    let mut server = s.server;
    server.wait_line("tokens reloaded", 0, WAIT);
    let mut access = Proc::spawn(
        "culvert access",
        culvert()
            .args([
                "access",
                "echo",
                "--server",
                &format!("ws://127.0.0.1:{}", s.port),
                "--token-file",
            ])
            .arg(s.dir.join("temp.token")),
    );
    let local = access_port(&mut access, "echo");
    let mut live = TcpStream::connect((Ipv4Addr::LOCALHOST, local)).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    live.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    live.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    // At expiry the server ends the session: the live connection is closed, and the client
    // ends every session with a clear error instead of retrying forever.
    server.wait_line("token expired", 0, Duration::from_secs(30));
    let mut rest = Vec::new();
    let r = live.read_to_end(&mut rest);
    assert!(r.is_err() || rest.is_empty(), "data after expiry: {rest:?}");
    let exit = wait_child_proc(&mut access, WAIT);
    assert!(!exit.success(), "access should fail once its token expired");
    assert!(
        access.log().contains("expired or revoked"),
        "{}",
        access.log()
    );
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, local)).is_err());
}

/// One datagram to 127.0.0.1:`port` from `sock` and its echo, retried up to 3 times.
fn udp_round_trip(sock: &std::net::UdpSocket, port: u16, msg: &[u8]) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        sock.send_to(msg, ("127.0.0.1", port)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

#[test]
fn access_session_to_a_private_udp_service() {
    let echo = udp_echo();
    let s = Setup::new("access-udp", &["dns"]);
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .args(["agent", "--server", &s.url(), "--token-file"])
            .arg(s.dir.join("agent.token"))
            .args([
                "--expose",
                &format!("dns=udp://127.0.0.1:{echo}"),
                "--private",
            ]),
    );
    agent.wait_line("service exposed", 0, WAIT);
    let mut access = s.access(
        "access.token",
        &["dns", "--listen", "127.0.0.1", "--ttl", "6s"],
    );
    let line = access
        .try_wait_match(
            &|l| l.starts_with("dns 127.0.0.1:") && l.ends_with(" udp"),
            "dns … udp",
            0,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let port: u16 = line["dns 127.0.0.1:".len()..line.len() - " udp".len()]
        .parse()
        .unwrap();

    // Two clients, each getting only its own replies.
    let (a, b) = (
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    for i in 0..50 {
        for (sock, tag) in [(&a, "a"), (&b, "b")] {
            let msg = format!("{tag}-{i}");
            assert_eq!(
                udp_round_trip(sock, port, msg.as_bytes()).as_deref(),
                Some(msg.as_bytes()),
                "round trip {i} of client {tag}\n--- access:\n{}\n--- server:\n{}",
                access.log(),
                s.server.log()
            );
        }
    }
    // At expiry the port stops answering and the process ends.
    access.wait_line("time-to-live expired", 0, Duration::from_secs(30));
    assert_eq!(udp_round_trip(&a, port, b"late"), None);
    let exit = wait_child_proc(&mut access, WAIT);
    assert!(exit.success(), "{}", access.log());
}
