//! Authentication that is fair and says why (issue 13, items 7 and 8), with real processes:
//!
//! - an agent with a wrong token next to a healthy agent on the same address: the healthy
//!   one stays connected, a corrected agent gets in at once, the wrong agent's log names
//!   the refusal and the fix, and the server warns of the lockout;
//! - permanent errors (a refused token, a pinned fingerprint that does not match, a
//!   certificate from an unknown issuer) are said once with the fix and retried only at
//!   the longest backoff; with `--exit-on-auth-failure` the agent exits non-zero.
//!
//! On the build before this change: the corrected agent stayed locked out (the server
//! refused every handshake from 127.0.0.1 for 60 s, silently), the wrong agent retried at
//! full pace (10 refusals in the first seconds), and the flag did not exist.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Pooled connections of every agent here (each tries its token on all of them).
const POOL: usize = 4;

fn agent_cmd(server: &str, token_file: &std::path::Path, echo: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--server".to_owned(),
        server.to_owned(),
        "--token-file".to_owned(),
        token_file.display().to_string(),
        "--expose".to_owned(),
        format!("echo=tcp://127.0.0.1:{echo}"),
        "--pool".to_owned(),
        POOL.to_string(),
    ];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_wrong_token_does_not_lock_out_the_others_behind_its_address() {
    let dir = TempDir::new("lockout");
    let tokens = dir.join("tokens.toml");
    let good = dir.join("good.token");
    let wrong = dir.join("wrong.token");
    std::fs::write(&good, new_token(&tokens, "good")).unwrap();
    std::fs::write(&wrong, "this-is-not-the-token").unwrap();
    let echo = echo_service();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let url = format!("ws://127.0.0.1:{port}");

    let (healthy, public) = start_agent(&agent_cmd(&url, &good, echo, &[]), "echo");
    assert_eq!(echo_round_trip(public, b"before").unwrap(), b"before");

    // The wrong agent tries its token on every pooled connection, then keeps at it.
    let mut wrong_agent = Proc::spawn(
        "culvert agent (wrong token)",
        culvert()
            .arg("agent")
            .args(agent_cmd(&url, &wrong, echo, &[])),
    );
    wrong_agent.wait_line("server refused the token", 0, WAIT);
    // Long enough for the old agent's retries (every 0.5–4 s on four connections) to
    // reach the old server's ten failures.
    std::thread::sleep(Duration::from_secs(4));

    // The healthy agent stayed connected.
    assert_eq!(echo_round_trip(public, b"during").unwrap(), b"during");
    assert_eq!(
        count(&healthy.log(), "tunnel connection lost"),
        0,
        "the healthy agent lost a connection:\n{}",
        healthy.log()
    );

    // The corrected agent (the same address, the right token) gets in at once.
    let started = Instant::now();
    let mut corrected = Proc::spawn(
        "culvert agent (corrected)",
        culvert()
            .arg("agent")
            .args(agent_cmd(&url, &good, echo, &[])),
    );
    corrected
        .try_wait_line("service exposed", 0, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the corrected agent did not get in: {e}"));
    eprintln!("corrected agent in after {:?}", started.elapsed());
    assert_eq!(
        count(&corrected.log(), "could not establish tunnel connection"),
        0,
        "the corrected agent was refused:\n{}",
        corrected.log()
    );

    // The reason is in both logs.
    let wlog = wrong_agent.log();
    assert!(
        wlog.contains("check --token-file"),
        "the wrong agent's log names the refusal and the fix:\n{wlog}"
    );
    server.wait_line("authentication lockout", 0, WAIT);
    let slog = server.log();
    let lockout = slog
        .lines()
        .find(|l| l.contains("authentication lockout"))
        .unwrap();
    assert!(
        lockout.contains("WARN"),
        "a lockout is a warning: {lockout}"
    );
    assert!(
        lockout.contains("lockout_s=") && lockout.contains("ends_unix="),
        "the warning says when it ends: {lockout}"
    );
}

#[test]
fn a_refused_token_is_said_once_and_not_retried_at_full_pace() {
    let dir = TempDir::new("permanent-token");
    let tokens = dir.join("tokens.toml");
    new_token(&tokens, "someone");
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "this-is-not-the-token").unwrap();
    let echo = echo_service();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let url = format!("ws://127.0.0.1:{port}");

    let mut agent = Proc::spawn(
        "culvert agent (wrong token)",
        culvert()
            .arg("agent")
            .args(agent_cmd(&url, &wrong, echo, &[])),
    );
    server.wait_line("authentication failed", 0, WAIT);
    // A bounded window: the old agent retried every 0.5–4 s on each of its connections.
    std::thread::sleep(Duration::from_secs(5));
    let attempts = count(&server.log(), "authentication failed")
        + count(&server.log(), "authentication refused");
    assert!(
        attempts <= POOL,
        "{attempts} Auth attempts in 5 s (at most one per pooled connection before the \
         longest backoff):\n{}",
        server.log()
    );
    let log = agent.log();
    assert_eq!(
        count(&log, "permanent error"),
        1,
        "one clear error, not one per connection and attempt:\n{log}"
    );
    assert!(log.contains("check --token-file"), "{log}");
    assert!(
        agent.exited().is_none(),
        "without the flag the agent keeps running"
    );

    // With --exit-on-auth-failure it exits non-zero, saying why.
    let mut strict = Proc::spawn(
        "culvert agent (wrong token, exit on auth failure)",
        culvert()
            .arg("agent")
            .args(agent_cmd(&url, &wrong, echo, &["--exit-on-auth-failure"])),
    );
    let status = wait_exit(&mut strict);
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        strict.log().contains("server refused the token"),
        "{}",
        strict.log()
    );
}

/// Waits (bounded) for `p` to exit and returns its status.
fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    p.expect_exit(WAIT)
}

#[test]
fn an_untrusted_certificate_is_said_once_with_the_fix() {
    let dir = TempDir::new("permanent-tls");
    let tokens = dir.join("tokens.toml");
    let good = dir.join("good.token");
    std::fs::write(&good, new_token(&tokens, "good")).unwrap();
    let echo = echo_service();
    let admin = free_port();
    let (_server, port) = start_server(
        &tokens,
        &["--self-signed", "--admin", &format!("127.0.0.1:{admin}")],
    );
    let url = format!("wss://127.0.0.1:{port}");
    let failed = || {
        admin_get(admin, "/metrics")
            .and_then(|(_, b)| metric(&b, "culvert_handshakes_failed_total"))
            .unwrap_or(0)
    };

    // A pinned fingerprint that does not match.
    let zeros = "00".repeat(32);
    let mut pinned = Proc::spawn(
        "culvert agent (wrong fingerprint)",
        culvert()
            .arg("agent")
            .args(agent_cmd(&url, &good, echo, &["--fingerprint", &zeros])),
    );
    pinned.wait_line("permanent error", 0, WAIT);
    assert!(poll_until(WAIT, || failed() >= 1));
    let before = failed();
    std::thread::sleep(Duration::from_secs(5));
    let more = failed() - before;
    assert!(
        more <= POOL as u64,
        "{more} more failed handshakes in 5 s: the agent retries a mismatch at full pace"
    );
    let log = pinned.log();
    assert_eq!(count(&log, "permanent error"), 1, "{log}");
    assert!(log.contains("--fingerprint"), "names the fix:\n{log}");

    // No --fingerprint, no --ca: UnknownIssuer; with the flag, the agent exits non-zero.
    let mut unknown = Proc::spawn(
        "culvert agent (unknown issuer, exit on auth failure)",
        culvert()
            .arg("agent")
            .args(agent_cmd(&url, &good, echo, &["--exit-on-auth-failure"])),
    );
    let status = wait_exit(&mut unknown);
    assert!(!status.success(), "exit status {status:?}");
    let log = unknown.log();
    assert!(log.contains("use --fingerprint or --ca"), "{log}");

    // ws:// against this TLS server is named as such.
    let mut plain = Proc::spawn(
        "culvert agent (ws:// against TLS)",
        culvert().arg("agent").args(agent_cmd(
            &format!("ws://127.0.0.1:{port}"),
            &good,
            echo,
            &["--exit-on-auth-failure"],
        )),
    );
    let status = wait_exit(&mut plain);
    assert!(!status.success());
    assert!(
        plain.log().contains("ws:// used against a TLS server"),
        "{}",
        plain.log()
    );
}

#[test]
fn a_port_outside_the_range_is_permanent() {
    let dir = TempDir::new("permanent-port");
    let tokens = dir.join("tokens.toml");
    let good = dir.join("good.token");
    std::fs::write(&good, new_token(&tokens, "good")).unwrap();
    let echo = echo_service();
    let (_server, port) = start_server(&tokens, &["--insecure-plain"]);
    // Port 1 lies outside every test port range.
    let mut agent = Proc::spawn(
        "culvert agent (port outside the range)",
        culvert().arg("agent").args([
            "--server",
            &format!("ws://127.0.0.1:{port}"),
            "--token-file",
            good.to_str().unwrap(),
            "--expose",
            &format!("echo=tcp://127.0.0.1:{echo}@1"),
            "--exit-on-auth-failure",
        ]),
    );
    let status = wait_exit(&mut agent);
    assert!(!status.success(), "exit status {status:?}");
    let log = agent.log();
    assert!(log.contains("outside the server's range"), "{log}");
    assert!(log.contains("without @PORT"), "names the fix:\n{log}");
}
