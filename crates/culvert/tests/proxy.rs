//! An agent that reaches the server only through an HTTP proxy (a real tinyproxy, started
//! here on loopback with Basic credentials): it connects through `CONNECT`, its password
//! never shows in its log, and when the proxy stops it backs off and comes back once the
//! proxy is up again, with no restart. A wrong password is reported as such.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const USER: &str = "culvert";
const PASSWORD: &str = "s3cret-proxy-pw";

/// tinyproxy's path; scripts/test.sh installs Debian's tinyproxy-bin when it is missing.
fn tinyproxy() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v tinyproxy"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "tinyproxy not found: install Debian's tinyproxy-bin (scripts/test.sh does)"
    );
    PathBuf::from(path)
}

/// Starts tinyproxy in the foreground on `port`, allowing CONNECT to `server_port` only,
/// with Basic credentials; its log is its stderr (in the returned Proc).
fn start_proxy(dir: &Path, port: u16, server_port: u16) -> Proc {
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\n\
             ConnectPort {server_port}\nBasicAuth {USER} {PASSWORD}\nLogLevel Connect\n"
        ),
    )
    .unwrap();
    let p = Proc::spawn(
        "tinyproxy",
        Command::new(tinyproxy()).arg("-d").arg("-c").arg(&conf),
    );
    assert!(
        poll_until(Duration::from_secs(20), || listening(port)),
        "tinyproxy did not listen on {port}:\n{}",
        p.log()
    );
    p
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn agent_via(proxy_url: &str, server_port: u16, token: &Path, expose: &str) -> Vec<String> {
    let mut args = agent_args(server_port, token, expose);
    args.extend([
        "--proxy".into(),
        proxy_url.into(),
        "--pool".into(),
        "1".into(),
    ]);
    args
}

#[test]
fn an_agent_behind_a_proxy_connects_and_comes_back_when_the_proxy_does() {
    let dir = TempDir::new("proxy");
    let tokens = dir.join("tokens.toml");
    let token = dir.join("a.token");
    std::fs::write(&token, new_token(&tokens, "a")).unwrap();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let echo = echo_service();
    let expose = format!("echo=tcp://127.0.0.1:{echo}");
    let proxy_port = free_port();
    let mut proxy = start_proxy(dir.path(), proxy_port, port);

    let url = format!("http://{USER}:{PASSWORD}@127.0.0.1:{proxy_port}");
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .arg("agent")
            .args(agent_via(&url, port, &token, &expose))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("CULVERT_TEST_RUST_LOG", "debug"),
    );
    let public = public_port_of(&mut agent, "echo", 0);
    assert_eq!(echo_round_trip(public, b"via proxy").unwrap(), b"via proxy");
    // The proxy carried it: it logged the CONNECT to the server's port.
    let target = format!("127.0.0.1:{port}");
    assert!(
        poll_until(Duration::from_secs(10), || proxy.log().contains(&target)),
        "tinyproxy logged no CONNECT to {target}:\n{}",
        proxy.log()
    );

    // The proxy goes away: the tunnel drops and the agent retries, with backoff.
    proxy.kill();
    let from = agent.line_count();
    agent
        .try_wait_match(&|l| l.contains("proxy:"), "a failed dial", from, WAIT)
        .unwrap_or_else(|e| panic!("no failed dial through the stopped proxy logged: {e}"));
    // Back on the same port: the agent reconnects by itself and the service works again.
    let proxy = start_proxy(dir.path(), proxy_port, port);
    assert!(
        poll_until(Duration::from_secs(90), || {
            echo_round_trip(public, b"back").is_ok_and(|b| b == b"back")
        }),
        "service not back through the restarted proxy\n--- agent:\n{}\n--- proxy:\n{}",
        agent.log(),
        proxy.log()
    );
    let log = agent.log();
    assert!(
        !log.contains(PASSWORD),
        "the proxy password is in the agent's log:\n{log}"
    );
    agent.kill();
    server.kill();
}

#[test]
fn a_wrong_proxy_password_is_named() {
    let dir = TempDir::new("proxy-auth");
    let tokens = dir.join("tokens.toml");
    let token = dir.join("a.token");
    std::fs::write(&token, new_token(&tokens, "a")).unwrap();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let proxy_port = free_port();
    let mut proxy = start_proxy(dir.path(), proxy_port, port);
    let url = format!("http://{USER}:not-the-password@127.0.0.1:{proxy_port}");
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .arg("agent")
            .args(agent_via(&url, port, &token, "echo=tcp://127.0.0.1:9"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy"),
    );
    let line = agent
        .try_wait_match(
            &|l| l.contains("proxy authentication"),
            "the proxy's refusal",
            0,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no proxy authentication error: {e}"));
    assert!(line.contains("401") || line.contains("407"), "{line}");
    assert!(
        line.contains("permanent") || agent.log().contains("permanent"),
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains("not-the-password"), "{}", agent.log());
    agent.kill();
    proxy.kill();
    server.kill();
}
