//! The agent and its private service in a network namespace of their own, as in a private
//! network: the namespace accepts no inbound connection from outside (its service listens
//! on the namespace's loopback only), the agent dials out to the server over a veth link,
//! and the test partitions it by taking that link down, then up again.
//!
//! Figures asserted, from the heartbeat interval `HB` (2 s): both ends drop the connection
//! within `2 HB + 1 s` of the link going down, and after the link comes back the agent
//! serves again within its backoff (1 s doubling) plus a handshake (asserted: 30 s).
//!
//! Needs `ip netns` (root, or CAP_NET_ADMIN): see `support::netns` for where it cannot.

mod support;

use std::time::{Duration, Instant};

use support::netns::Netns;
use support::*;

const HB: Duration = Duration::from_secs(2);

/// An echo service inside the namespace, on its loopback only (python3, one thread per
/// connection; bounded: it exits after 10 minutes).
const ECHO_PY: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(64)
print("port", s.getsockname()[1], flush=True)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
s.settimeout(600)
while True:
    try: c, _ = s.accept()
    except Exception: sys.exit(0)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The culvert binary under test (as [`culvert`] runs it), for a command run in the namespace.
fn support_bin() -> String {
    culvert().get_program().to_string_lossy().into_owned()
}

#[test]
fn agent_in_a_namespace_survives_its_link_going_down() {
    let Some(ns) = Netns::create_or_skip("t", 213) else {
        return;
    };
    let (host_ip, ns_ip) = (ns.host_ip.clone(), ns.ns_ip.clone());
    let dir = TempDir::new("netns");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "agent")).unwrap();
    let port = free_port();
    let hb = HB.as_secs().to_string();
    let mut server = Proc::spawn(
        "culvert server",
        culvert()
            .args(["server", "--listen", &format!("{host_ip}:{port}")])
            .arg("--tokens")
            .arg(&tokens)
            .args(["--port-range", &port_range(), "--public-bind", "127.0.0.1"])
            .args(["--self-signed", "--heartbeat-interval", &hb]),
    );
    let line = server
        .try_wait_match(&|l| l.contains("fingerprint="), "fingerprint", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let fingerprint = field(&line, "fingerprint").unwrap();
    server
        .try_wait_line("tunnel endpoint ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    let mut echo = Proc::spawn(
        "echo in namespace",
        ns.command("python3").args(["-c", ECHO_PY]),
    );
    let echo_line = echo
        .try_wait_line("port ", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let echo_port: u16 = echo_line
        .trim()
        .trim_start_matches("port ")
        .parse()
        .unwrap();
    // Nothing outside reaches into the namespace: its service is on its loopback only.
    assert!(
        std::net::TcpStream::connect_timeout(
            &format!("{ns_ip}:{echo_port}").parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_err(),
        "the namespace accepted an inbound connection"
    );

    // The agent dials the host over the link.
    let mut args = agent_args(
        port,
        &token_file,
        &format!("echo=tcp://127.0.0.1:{echo_port}"),
    );
    args[1] = format!("wss://{host_ip}:{port}");
    let mut agent = Proc::spawn(
        "culvert agent (namespace)",
        ns.command(&support_bin())
            .env("RUST_LOG", "info")
            .arg("agent")
            .args(&args)
            .args([
                "--fingerprint",
                &fingerprint,
                "--pool",
                "2",
                "--heartbeat-interval",
                &hb,
            ]),
    );
    let public = public_port_of(&mut agent, "echo", 0);
    assert_eq!(
        echo_round_trip(public, b"through the link").unwrap(),
        b"through the link"
    );

    // Partition: the link goes down.
    let (server_from, agent_from) = (server.line_count(), agent.line_count());
    let t0 = Instant::now();
    ns.link(false);
    let bound = 2 * HB + Duration::from_secs(1);
    agent
        .try_wait_line("tunnel connection lost", agent_from, 3 * bound)
        .unwrap_or_else(|e| panic!("{e}"));
    let agent_took = t0.elapsed();
    server
        .try_wait_line("agent connection closed", server_from, 3 * bound)
        .unwrap_or_else(|e| panic!("{e}"));
    let server_took = t0.elapsed();
    eprintln!("link down noticed: agent {agent_took:?}, server {server_took:?} (bound {bound:?})");
    assert!(agent_took <= bound && server_took <= bound);

    // Heal: the link comes back; the agent reconnects and serves.
    std::thread::sleep(Duration::from_secs(3));
    ns.link(true);
    let healed = Instant::now();
    assert!(
        poll_until(Duration::from_secs(30), || echo_round_trip(
            public, b"again"
        )
        .is_ok_and(|b| b == b"again")),
        "not serving 30 s after the link came back\n--- agent:\n{}",
        agent.log()
    );
    eprintln!(
        "serving again {:?} after the link came back",
        healed.elapsed()
    );
    agent.kill();
    echo.kill();
    server.kill();
}
