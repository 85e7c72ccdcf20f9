//! Quotas across sessions, as real processes see them: a token's `max_services` holds over
//! all its sessions (each agent process is a session of its own), a tenant's limit over
//! all its tokens, and one session's connections are capped while the agent keeps working.
//! Each refusal names the limit, in the agent's log and the server's, and is counted.

mod support;

use std::path::Path;

use support::*;

/// `culvert agent` with `token_file`, exposing each of `services` (`NAME`) to `backend`,
/// with `extra` flags; not waited for.
fn agent(server: u16, token_file: &Path, services: &[&str], backend: u16, extra: &[&str]) -> Proc {
    let mut cmd = culvert();
    cmd.args(["agent", "--server", &format!("ws://127.0.0.1:{server}")])
        .arg("--token-file")
        .arg(token_file);
    for s in services {
        cmd.args(["--expose", &format!("{s}=tcp://127.0.0.1:{backend}")]);
    }
    Proc::spawn("culvert agent", cmd.args(extra))
}

/// A token `name` created with `token new` and `extra` flags, written to `NAME.token`.
fn token_file(dir: &TempDir, tokens: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let t = new_token_with(tokens, name, extra);
    let path = dir.join(&format!("{name}.token"));
    std::fs::write(&path, t).unwrap();
    path
}

/// The server's metric `prefix` (such as `culvert_quota_refusals_total{...}`), 0 if absent.
fn server_metric(admin: u16, prefix: &str) -> u64 {
    admin_get(admin, "/metrics")
        .and_then(|(_, body)| metric(&body, prefix))
        .unwrap_or(0)
}

fn round_trip_ok(port: u16) {
    let msg = b"through the quota";
    assert_eq!(
        echo_round_trip(port, msg).expect("round trip"),
        msg,
        "echo through public port {port}"
    );
}

/// One token with `max_services = 2` used by two agents (two client ids, so two
/// sessions): the third service across them is refused with the reason, in both logs and
/// in the metrics; once the first agent stops, the second gets its service. On the old
/// code each session counted only its own services, and the third was accepted.
#[test]
fn a_tokens_max_services_holds_across_its_sessions() {
    let dir = TempDir::new("quota-token");
    let tokens = dir.join("tokens.toml");
    let shared = token_file(&dir, &tokens, "shared", &["--max-services", "2"]);
    let admin = free_port();
    let (mut server, port) = start_server(
        &tokens,
        &["--insecure-plain", "--admin", &format!("127.0.0.1:{admin}")],
    );
    let echo = echo_service();

    let mut first = agent(port, &shared, &["a1", "a2"], echo, &[]);
    let a1 = public_port_of(&mut first, "a1", 0);
    public_port_of(&mut first, "a2", 0);
    round_trip_ok(a1);

    let mut second = agent(port, &shared, &["b1"], echo, &[]);
    second.wait_line(
        "token \\\"shared\\\" holds 2 services, its max_services",
        0,
        WAIT,
    );
    server.wait_line(
        "token \"shared\" holds 2 services, its max_services",
        0,
        WAIT,
    );
    assert!(
        server_metric(
            admin,
            "culvert_quota_refusals_total{scope=\"token\",limit=\"services\"}"
        ) >= 1,
        "the refusal is counted"
    );
    assert!(
        !second.log().contains("service exposed"),
        "the third service was accepted:\n{}",
        second.log()
    );

    // Freed capacity is reused: the first agent goes, the second's retry gets in.
    first.kill();
    let b1 = public_port_of(&mut second, "b1", 0);
    round_trip_ok(b1);
    assert_eq!(
        server_metric(
            admin,
            "culvert_quota_held{scope=\"token\",name=\"shared\",resource=\"services\"}"
        ),
        1
    );
}

/// A session's connections are capped (`--max-connections-per-session 2`): an agent with
/// `--pool 4` has two connections refused, each told why and when to retry, while its
/// service keeps working over the two admitted. On the old code there was no such cap
/// (and no such flag: the server did not start).
#[test]
fn a_sessions_connections_are_capped_and_the_agent_keeps_working() {
    let dir = TempDir::new("quota-conns");
    let tokens = dir.join("tokens.toml");
    let t = token_file(&dir, &tokens, "pooled", &[]);
    let admin = free_port();
    let (mut server, port) = start_server(
        &tokens,
        &[
            "--insecure-plain",
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--max-connections-per-session",
            "2",
        ],
    );
    let echo = echo_service();
    let mut a = agent(port, &t, &["web"], echo, &["--pool", "4"]);
    let web = public_port_of(&mut a, "web", 0);
    a.wait_line(
        "holds 2 connections, its max_connections_per_session",
        0,
        WAIT,
    );
    a.wait_line("retry in 30 s", 0, WAIT);
    server.wait_line("connection refused: quota reached", 0, WAIT);
    assert!(
        poll_until(WAIT, || server_metric(
            admin,
            "culvert_quota_refusals_total{scope=\"session\",limit=\"connections\"}"
        ) >= 2),
        "both extra connections refused and counted"
    );
    for _ in 0..10 {
        round_trip_ok(web);
    }
    assert!(a.exited().is_none(), "the agent stopped:\n{}", a.log());
    assert_eq!(server_metric(admin, "culvert_agent_connections "), 2);
    assert_eq!(server_metric(admin, "culvert_agent_sessions "), 1);
}

/// `[tenants.acme] max_services = 2` bounds two tokens of tenant `acme` together: the
/// second token's service is refused naming the tenant's limit until the first token's
/// agent stops. On the old code the table was ignored and the service accepted.
#[test]
fn a_tenant_limit_holds_across_its_tokens() {
    let dir = TempDir::new("quota-tenant");
    let tokens = dir.join("tokens.toml");
    let one = token_file(&dir, &tokens, "one", &["--tenant", "acme"]);
    let two = token_file(&dir, &tokens, "two", &["--tenant", "acme"]);
    let mut text = std::fs::read_to_string(&tokens).unwrap();
    text.push_str("\n[tenants.acme]\nmax_services = 2\n");
    std::fs::write(&tokens, text).unwrap();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let echo = echo_service();

    let mut first = agent(port, &one, &["s1", "s2"], echo, &[]);
    public_port_of(&mut first, "s1", 0);
    public_port_of(&mut first, "s2", 0);
    let mut second = agent(port, &two, &["s3"], echo, &[]);
    second.wait_line(
        "tenant \\\"acme\\\" holds 2 services, its max_services ([tenants.acme] in the token file)",
        0,
        WAIT,
    );
    server.wait_line("tenant \"acme\" holds 2 services", 0, WAIT);
    assert!(
        !second.log().contains("service exposed"),
        "{}",
        second.log()
    );
    first.kill();
    let s3 = public_port_of(&mut second, "s3", 0);
    round_trip_ok(s3);
}
