//! The server and the agent at their file-descriptor limits (set with `prlimit` on the real
//! binaries): what they cannot take is refused at once, nothing hangs, neither process
//! exits, the log gets a line per burst rather than one per client, and service resumes
//! as soon as descriptors are free again.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Clients opened at once: several times what the limited process has room for.
const CLIENTS: usize = 80;

/// `culvert` run through `prlimit` with at most `n` open files (prlimit execs it, so the
/// process keeps its PID and is stopped by it like any other).
fn limited(n: u32) -> Command {
    let mut c = Command::new("prlimit");
    c.arg(format!("--nofile={n}:{n}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_culvert"));
    c.env("RUST_LOG", "info").env_remove("CULVERT_TOKEN");
    c
}

/// Opens [`CLIENTS`] connections to `public`, each sending one byte, then reads each
/// answer: (echoed, refused). A client that gets neither within the read timeout fails
/// the test: nothing may hang.
fn flood(public: u16) -> (Vec<TcpStream>, usize) {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, public)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A refused client may already be reset.
        let _ = c.write_all(b"x");
        clients.push(c);
    }
    let mut served = Vec::new();
    let mut refused = 0;
    for mut c in clients {
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(1) => {
                assert_eq!(&b, b"x");
                served.push(c);
            }
            Ok(_) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e) => panic!("a client neither served nor refused: {e}"),
        }
    }
    eprintln!("{} clients served, {refused} refused", served.len());
    (served, refused)
}

/// Once the flood's connections are closed, a new client is served again.
fn served_again(public: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        match echo_round_trip(public, b"again") {
            Ok(v) if v == b"again" => return,
            r if Instant::now() > deadline => panic!("not served again: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn lines_containing(p: &Proc, needle: &str) -> usize {
    p.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn server_at_its_descriptor_limit_refuses_waiting_clients_and_keeps_serving() {
    let dir = TempDir::new("fd-server");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "fd")).unwrap();
    let echo = echo_service();
    let port = free_port();
    // About 17 descriptors are in use once an agent's pool is connected.
    let mut server = Proc::spawn(
        "culvert server (40 descriptors)",
        limited(40)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--tokens")
            .arg(&tokens)
            .args(["--port-range", &port_range(), "--public-bind", "127.0.0.1"])
            .arg("--insecure-plain"),
    );
    server
        .try_wait_line("tunnel endpoint ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut agent, public) = start_agent(
        &agent_args(port, &token_file, &format!("echo=tcp://127.0.0.1:{echo}")),
        "echo",
    );

    let before = server.line_count();
    let (served, refused) = flood(public);
    assert!(!served.is_empty(), "some clients fit");
    assert!(refused > 0, "the rest are refused, not left waiting");
    assert_eq!(served.len() + refused, CLIENTS);
    let line = server
        .try_wait_line("accept failed", before, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        field(&line, "refused").is_some_and(|n| n != "0"),
        "the warning counts refused clients: {line}"
    );
    // One line per burst, not one per refused client.
    assert!(
        lines_containing(&server, "accept failed") <= 2,
        "the log is flooded:\n{}",
        server.log()
    );
    drop(served);
    served_again(public);
    assert!(server.exited().is_none(), "the server is still running");
    assert!(agent.exited().is_none(), "the agent is still running");
}

#[test]
fn agent_at_its_descriptor_limit_fails_connections_and_keeps_serving() {
    let dir = TempDir::new("fd-agent");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "fd")).unwrap();
    let echo = echo_service();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    // About 15 descriptors are in use once its pool is connected.
    let mut agent = Proc::spawn(
        "culvert agent (32 descriptors)",
        limited(32).arg("agent").args(agent_args(
            port,
            &token_file,
            &format!("echo=tcp://127.0.0.1:{echo}"),
        )),
    );
    let line = agent
        .try_wait_match(
            &|l| l.contains("public_port=") && l.contains("service=echo "),
            "public_port= of echo",
            0,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let public: u16 = field(&line, "public_port").unwrap().parse().unwrap();

    let (served, refused) = flood(public);
    assert!(!served.is_empty(), "some clients fit");
    assert!(refused > 0, "the rest are closed, not left waiting");
    assert_eq!(served.len() + refused, CLIENTS);
    assert!(
        agent.log().contains("could not reach target"),
        "the failure is logged:\n{}",
        agent.log()
    );
    assert!(
        lines_containing(&agent, "could not reach target") <= 2,
        "the log is flooded:\n{}",
        agent.log()
    );
    drop(served);
    served_again(public);
    assert!(agent.exited().is_none(), "the agent is still running");
    assert!(server.exited().is_none(), "the server is still running");
}
