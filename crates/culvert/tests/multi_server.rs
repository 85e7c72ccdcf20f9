//! An agent spread over several servers (a cluster's servers, here three independent
//! plain servers on loopback sharing one token file): its pool spreads evenly, a killed
//! server's connections move to the live ones at once and come back when it returns; a
//! registration the server refuses for now is asked again on the same connection; a token
//! one server refuses is tried on the others at once.

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// One test server with an admin listener.
struct TestServer {
    proc: Proc,
    port: u16,
    admin: u16,
}

impl TestServer {
    fn start(tokens: &std::path::Path) -> TestServer {
        let admin = free_port();
        let (proc, port) = start_server(
            tokens,
            &["--insecure-plain", "--admin", &format!("127.0.0.1:{admin}")],
        );
        TestServer { proc, port, admin }
    }

    /// A new server on the port of a killed one.
    fn restart(&mut self, tokens: &std::path::Path) {
        self.admin = free_port();
        let admin = format!("127.0.0.1:{}", self.admin);
        for _ in 0..20 {
            let mut p = spawn_server(tokens, self.port, &["--insecure-plain", "--admin", &admin]);
            if p.try_wait_line("tunnel endpoint ready", 0, WAIT).is_ok() {
                self.proc = p;
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the server did not start again on port {}", self.port);
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn sessions(&self) -> Option<Value> {
        let (code, body) = admin_get(self.admin, "/api/sessions")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The agent connections this server holds (over all its sessions).
    fn connections(&self) -> Option<u64> {
        let v = self.sessions()?;
        Some(
            v["sessions"]
                .as_array()?
                .iter()
                .filter_map(|s| s["connections"].as_u64())
                .sum(),
        )
    }

    /// The public port this server gave `echo`.
    fn echo_port(&self) -> Option<u16> {
        let v = self.sessions()?;
        v["sessions"].as_array()?.iter().find_map(|s| {
            s["services"].as_array()?.iter().find_map(|x| {
                let name = x["name"].as_str()?;
                (name == "echo" || name.ends_with("/echo"))
                    .then(|| x["public_port"].as_u64())
                    .flatten()
                    .map(|p| p as u16)
            })
        })
    }
}

fn agent_sessions(admin: u16) -> Option<Value> {
    let (code, body) = admin_get(admin, "/api/sessions")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// (server URL, connected) of each of the agent's pooled connections.
fn agent_connections(admin: u16) -> Option<Vec<(String, bool)>> {
    let v = agent_sessions(admin)?;
    v["connections"]
        .as_array()?
        .iter()
        .map(|c| Some((c["server"].as_str()?.to_owned(), c["connected"].as_bool()?)))
        .collect()
}

fn setup(name: &str) -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let tokens = dir.join("tokens.toml");
    let token = new_token(&tokens, "agent");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, &token).unwrap();
    (dir, tokens, token_file)
}

fn spawn_agent(
    servers: &[&TestServer],
    token_file: &std::path::Path,
    echo: u16,
    extra: &[&str],
) -> (Proc, u16) {
    let admin = free_port();
    let mut cmd = culvert();
    cmd.arg("agent");
    for s in servers {
        cmd.args(["--server", &s.url()]);
    }
    cmd.arg("--token-file")
        .arg(token_file)
        .args(["--expose", &format!("echo=tcp://127.0.0.1:{echo}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(extra);
    (Proc::spawn("culvert agent", &mut cmd), admin)
}

fn echoes(port: u16, msg: &[u8]) -> bool {
    echo_round_trip(port, msg).is_ok_and(|got| got == msg)
}

#[test]
fn pool_spreads_fails_over_and_comes_back() {
    let echo = echo_service();
    let (_dir, tokens, token_file) = setup("multi-server");
    let mut servers: Vec<TestServer> = (0..3).map(|_| TestServer::start(&tokens)).collect();
    let (mut agent, admin) = spawn_agent(
        &servers.iter().collect::<Vec<_>>(),
        &token_file,
        echo,
        &["--pool", "6", "--home-probe-interval", "1"],
    );

    eventually(WAIT, "two connections on each server", || {
        let n: Vec<Option<u64>> = servers.iter().map(|s| s.connections()).collect();
        n.iter()
            .all(|c| *c == Some(2))
            .then_some(())
            .ok_or(format!("{n:?}"))
    });
    eventually(WAIT, "agent ready", || {
        admin_get(admin, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let conns = agent_connections(admin).expect("agent status");
    for s in &servers {
        let on = conns.iter().filter(|(u, up)| *u == s.url() && *up).count();
        assert_eq!(on, 2, "agent status: {conns:?}");
    }
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for s in &servers {
        let port = eventually(WAIT, "echo's public port", || s.echo_port());
        assert!(echoes(port, &msg), "echo through {}", s.url());
    }
    let metrics = admin_get(admin, "/metrics").expect("metrics").1;
    for s in &servers {
        let line = format!(
            "culvert_agent_server_connections{{server=\"{}\"}} 2",
            s.url()
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // One server dies: its connections move to the live ones.
    let dead = servers[1].url();
    servers[1].proc.kill();
    eventually(WAIT, "all six connections on the live servers", || {
        let conns = agent_connections(admin)?;
        let ok = conns.len() == 6 && conns.iter().all(|(u, up)| *up && *u != dead);
        ok.then_some(conns)
    });
    eventually(WAIT, "the live servers hold the six", || {
        let a = servers[0].connections()?;
        let b = servers[2].connections()?;
        (a + b == 6).then_some(())
    });
    for i in [0, 2] {
        let port = servers[i].echo_port().expect("echo port");
        assert!(
            echoes(port, &msg),
            "echo through {} after the kill",
            servers[i].url()
        );
    }

    // It comes back on its port: its slots return to it.
    servers[1].restart(&tokens);
    eventually(WAIT, "two connections on each server again", || {
        let n: Vec<Option<u64>> = servers.iter().map(|s| s.connections()).collect();
        n.iter()
            .all(|c| *c == Some(2))
            .then_some(())
            .ok_or(format!("{n:?}"))
    });
    let port = eventually(WAIT, "echo's port on the restarted server", || {
        servers[1].echo_port()
    });
    assert!(eventually(
        WAIT,
        "echo through the restarted server",
        || echoes(port, &msg).then_some(true)
    ));
    assert!(agent.log().contains("moves back"), "{}", agent.log());
    assert!(agent.exited().is_none());
}

#[test]
fn pool_of_one_still_gives_each_server_a_connection() {
    let echo = echo_service();
    let (_dir, tokens, token_file) = setup("multi-server-pool1");
    let servers: Vec<TestServer> = (0..3).map(|_| TestServer::start(&tokens)).collect();
    let (_agent, admin) = spawn_agent(
        &servers.iter().collect::<Vec<_>>(),
        &token_file,
        echo,
        &["--pool", "1"],
    );
    eventually(WAIT, "one connection on each server", || {
        let n: Vec<Option<u64>> = servers.iter().map(|s| s.connections()).collect();
        n.iter()
            .all(|c| *c == Some(1))
            .then_some(())
            .ok_or(format!("{n:?}"))
    });
    eventually(WAIT, "agent ready with three connections", || {
        let v = agent_sessions(admin)?;
        (v["connections_up"] == 3 && v["ready"] == true).then_some(())
    });
    for s in &servers {
        let port = eventually(WAIT, "echo's public port", || s.echo_port());
        assert!(echoes(port, b"one per server"), "echo through {}", s.url());
    }
}

#[test]
fn refused_registration_is_retried_on_the_connection() {
    let echo = echo_service();
    let (_dir, tokens, token_file) = setup("register-retry");
    let range = port_range();
    let low: u16 = range.split('-').next().unwrap().parse().unwrap();
    let wanted = low + 7;
    // Another process holds the port the service asks for: the server cannot bind it.
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, wanted)).expect("hold the port");
    let admin = free_port();
    let server_port = free_port();
    let mut cmd = culvert();
    server_args_in(&mut cmd, &tokens, server_port, &range).args([
        "--insecure-plain",
        "--admin",
        &format!("127.0.0.1:{admin}"),
    ]);
    let mut server = Proc::spawn("culvert server", &mut cmd);
    server.wait_line("tunnel endpoint ready", 0, WAIT);
    let server = TestServer {
        proc: server,
        port: server_port,
        admin,
    };
    let agent_admin = free_port();
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .arg("agent")
            .args(["--server", &server.url(), "--token-file"])
            .arg(&token_file)
            .args(["--expose", &format!("echo=tcp://127.0.0.1:{echo}@{wanted}")])
            .args([
                "--pool",
                "2",
                "--admin",
                &format!("127.0.0.1:{agent_admin}"),
            ]),
    );
    agent.wait_line("server refused the service for now", 0, WAIT);
    // Connected, not ready, the service listed as not registered yet.
    let status = eventually(WAIT, "both connections up", || {
        let v = agent_sessions(agent_admin)?;
        (v["connections_up"] == 2).then_some(v)
    });
    assert_eq!(status["ready"], false, "{status}");
    assert!(
        status["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["unregistered"][0] == "echo"),
        "{status}"
    );
    assert_eq!(admin_get(agent_admin, "/readyz").map(|(c, _)| c), Some(503));
    let from = agent.line_count();
    agent.wait_line("server refused the service again", from, WAIT);

    // The port is free again: the same connections register it, nothing reconnects.
    drop(squatter);
    agent.wait_line("service registered after being refused", 0, WAIT);
    eventually(WAIT, "agent ready", || {
        admin_get(agent_admin, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert!(echoes(wanted, b"registered late"));
    assert_eq!(server.connections(), Some(2));
    let log = agent.log();
    assert!(!log.contains("tunnel connection lost"), "{log}");
    assert!(
        log.contains("port ") && log.contains("cannot be bound"),
        "the server's reason is logged:\n{log}"
    );
}

#[test]
fn each_server_is_trusted_by_its_own_pinned_fingerprint() {
    let echo = echo_service();
    let (_dir, tokens, token_file) = setup("multi-server-tls");
    let mut servers = Vec::new();
    let mut fingerprints = Vec::new();
    for _ in 0..2 {
        let admin = free_port();
        let (mut proc, port) = start_server(
            &tokens,
            &["--self-signed", "--admin", &format!("127.0.0.1:{admin}")],
        );
        let line = proc.wait_line("self-signed certificate generated", 0, WAIT);
        fingerprints.push(field(&line, "fingerprint").expect("fingerprint"));
        servers.push(TestServer { proc, port, admin });
    }
    assert_ne!(fingerprints[0], fingerprints[1]);
    let mut cmd = culvert();
    cmd.arg("agent");
    for s in &servers {
        cmd.args(["--server", &format!("wss://127.0.0.1:{}", s.port)]);
    }
    for f in &fingerprints {
        cmd.args(["--fingerprint", f]);
    }
    cmd.arg("--token-file")
        .arg(&token_file)
        .args(["--expose", &format!("echo=tcp://127.0.0.1:{echo}")])
        .args(["--pool", "1"]);
    let _agent = Proc::spawn("culvert agent (two pinned servers)", &mut cmd);
    eventually(WAIT, "one connection on each TLS server", || {
        let n: Vec<Option<u64>> = servers.iter().map(|s| s.connections()).collect();
        n.iter()
            .all(|c| *c == Some(1))
            .then_some(())
            .ok_or(format!("{n:?}"))
    });
    for s in &servers {
        let port = eventually(WAIT, "echo's public port", || s.echo_port());
        assert!(echoes(port, b"pinned"), "echo through server {}", s.port);
    }
}

/// A server that refuses the agent's token (here: one with a token file of its own; in a
/// cluster, one that cannot find it in the registry) does not keep the slots homed on it
/// away for the longest backoff (60 s): they try the next server at once, and only a slot
/// that every server refused backs off.
#[test]
fn a_token_one_server_refuses_is_tried_on_the_others_at_once() {
    let (dir, tokens, token_file) = setup("multi-refused");
    let other_tokens = dir.join("other-tokens.toml");
    new_token(&other_tokens, "someone-else");
    let refusing = TestServer::start(&other_tokens);
    let good = TestServer::start(&tokens);
    let echo = echo_service();
    // Slot 0's home is the refusing server, slot 1's the good one.
    let (agent, admin) = spawn_agent(&[&refusing, &good], &token_file, echo, &["--pool", "2"]);
    // Well before the longest backoff: both slots on the good server.
    let both = poll_until(Duration::from_secs(20), || good.connections() == Some(2));
    assert!(
        both,
        "the slot refused by the first server did not move to the second at once: {:?} connections there, agent: {:?}\n{}",
        good.connections(),
        agent_connections(admin),
        agent.log()
    );
    let port = good
        .echo_port()
        .expect("echo registered on the good server");
    assert!(echoes(port, b"through the server that knows the token"));
    assert_eq!(refusing.connections(), Some(0));
}
