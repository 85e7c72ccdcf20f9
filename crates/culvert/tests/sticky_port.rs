//! A restarted server remembers nothing, yet an agent's clients find its service on the
//! same public port afterwards: the agent asks for the port it had. Here the port is not
//! the first of the range (another agent held that one and is gone), so a server handing
//! out the first free port would move the service; before the agent asked, it did.

mod support;

use std::time::Duration;

use support::*;

/// The agent's view of its public port for `service` (from its `/api/sessions`).
fn agent_port(admin: u16, service: &str) -> Option<u64> {
    let (_, body) = admin_get(admin, "/api/sessions")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?["public_port"]
        .as_u64()
}

#[test]
fn service_keeps_its_port_across_a_server_restart() {
    let dir = TempDir::new("sticky-port");
    let tokens = dir.join("tokens.toml");
    let (file_a, file_b) = (dir.join("a.token"), dir.join("b.token"));
    std::fs::write(&file_a, new_token(&tokens, "a")).unwrap();
    std::fs::write(&file_b, new_token(&tokens, "b")).unwrap();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let echo = echo_service();
    let expose = format!("echo=tcp://127.0.0.1:{echo}");

    // B takes the first port of the range, A the next.
    let (mut b, port_b) = start_agent(&agent_args(port, &file_b, &expose), "echo");
    let admin = free_port();
    let mut args = agent_args(port, &file_a, &expose);
    args.extend(["--pool", "1", "--admin", &format!("127.0.0.1:{admin}")].map(String::from));
    let (mut a, port_a) = start_agent(&args, "echo");
    assert_ne!(port_a, port_b);
    b.kill();

    server.kill();
    // The same range as before (it starts at B's port): `spawn_server` would draw a new
    // one at random, without port A in it most of the time.
    let mut server = Proc::spawn(
        "culvert server",
        server_args_in(
            &mut culvert(),
            &tokens,
            port,
            &format!("{port_b}-{}", port_b + 199),
        )
        .arg("--insecure-plain"),
    );
    server
        .try_wait_line("tunnel endpoint ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // A reconnects by itself (backoff) and registers again.
    assert!(
        poll_until(Duration::from_secs(30), || {
            admin_get(admin, "/readyz").is_some_and(|(c, _)| c == 200)
        }),
        "agent back after the restart:\n{}",
        a.log()
    );
    assert_eq!(
        agent_port(admin, "echo"),
        Some(u64::from(port_a)),
        "same public port after the restart\n--- agent:\n{}",
        a.log()
    );
    assert_eq!(echo_round_trip(port_a, b"same port").unwrap(), b"same port");
    a.kill();
    server.kill();
}
