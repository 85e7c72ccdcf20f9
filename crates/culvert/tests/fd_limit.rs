//! The server, the agent and a node's forward listener at their file-descriptor limits
//! (set with `prlimit` on the real binaries): what they cannot take is refused at once,
//! nothing hangs, no process exits, the log gets a line per burst rather than one per
//! client, and service resumes as soon as descriptors are free again.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::Duration;

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
    let mut refused = 0;
    for _ in 0..CLIENTS {
        let mut c = match TcpStream::connect((Ipv4Addr::LOCALHOST, public)) {
            Ok(c) => c,
            // The handshake completed in the kernel and the refusal (a reset on accept)
            // came before this thread returned from `connect`: a loaded machine.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("connect: {e}"),
        };
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A refused client may already be reset.
        let _ = c.write_all(b"x");
        clients.push(c);
    }
    let mut served = Vec::new();
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
    eventually(
        WAIT,
        "a new client served again",
        || match echo_round_trip(public, b"again") {
            Ok(v) if v == b"again" => Ok(()),
            r => Err(r),
        },
    );
}

fn lines_containing(p: &Proc, needle: &str) -> usize {
    p.log().lines().filter(|l| l.contains(needle)).count()
}

/// Floods `listener_port`, whose listener belongs to the limited process `p`: some clients
/// are served, the rest refused, `p` warns once with the count refused, and once the
/// flood's clients close a new one is served again.
fn flood_is_refused_with_one_warning(p: &mut Proc, listener_port: u16) {
    let before = p.line_count();
    let (served, refused) = flood(listener_port);
    assert!(!served.is_empty(), "some clients fit");
    assert!(refused > 0, "the rest are refused, not left waiting");
    assert_eq!(served.len() + refused, CLIENTS);
    let line = p
        .try_wait_line("accept failed", before, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        field(&line, "refused").is_some_and(|n| n != "0"),
        "the warning counts refused clients: {line}"
    );
    // One line per burst, not one per refused client.
    assert!(
        lines_containing(p, "accept failed") <= 2,
        "the log is flooded:\n{}",
        p.log()
    );
    drop(served);
    served_again(listener_port);
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
        server_args(&mut limited(40), &tokens, port).arg("--insecure-plain"),
    );
    server
        .try_wait_line("tunnel endpoint ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut agent, public) = start_agent(
        &agent_args(port, &token_file, &format!("echo=tcp://127.0.0.1:{echo}")),
        "echo",
    );

    flood_is_refused_with_one_warning(&mut server, public);
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
    let public = public_port_of(&mut agent, "echo", 0);

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

#[test]
fn node_forward_listener_at_its_descriptor_limit_refuses_waiting_clients_and_keeps_serving() {
    let dir = TempDir::new("fd-node");
    let echo = echo_service();
    let b_tokens = dir.join("b-tokens.toml");
    let token_file = dir.join("a-to-b.token");
    std::fs::write(
        &token_file,
        new_token_with(&b_tokens, "node-a", &["--role", "node"]),
    )
    .unwrap();
    let (b_listen, forward) = (free_port(), free_port());
    // Node B accepts A and may dial the echo service; it has no limit.
    let b_cfg = dir.join("b.toml");
    std::fs::write(
        &b_cfg,
        format!(
            "[node]\nname = \"b\"\nlisten = \"127.0.0.1:{b_listen}\"\ninsecure_plain = true\n\
             tokens = \"{}\"\nallow = [\"127.0.0.1:{echo}\"]\n",
            b_tokens.display()
        ),
    )
    .unwrap();
    let mut b = Proc::spawn(
        "culvert node b",
        culvert().args(["node", "--config"]).arg(&b_cfg),
    );
    b.wait_line("node running", 0, WAIT);
    // Node A, limited, listens for a forward tunnel to the echo service through B.
    let a_cfg = dir.join("a.toml");
    std::fs::write(
        &a_cfg,
        format!(
            "[node]\nname = \"a\"\n\n[[tunnel]]\nname = \"echo\"\n\
             peer = \"ws://127.0.0.1:{b_listen}/\"\ntoken_file = \"{}\"\n\
             direction = \"forward\"\nlisten = \"127.0.0.1:{forward}\"\n\
             target = \"127.0.0.1:{echo}\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let mut a = Proc::spawn(
        "culvert node a (40 descriptors)",
        limited(40).args(["node", "--config"]).arg(&a_cfg),
    );
    a.wait_line("node running", 0, WAIT);
    served_again(forward);

    flood_is_refused_with_one_warning(&mut a, forward);
    assert!(a.exited().is_none(), "node a is still running");
    assert!(b.exited().is_none(), "node b is still running");
}
