//! An HTTP service's `response_timeout`: how long the agent waits for the backend to begin
//! its answer before the caller gets `504`. Real processes on loopback; the backend is
//! written by hand so that it can stay silent.

mod support;

use std::time::Duration;

use support::http::*;
use support::*;

/// A plain HTTP backend that answers `200 ok` at once, except on `/silent`, whose request
/// it reads and then never answers (it holds the connection for at most a minute).
fn silent_backend() -> u16 {
    use tokio::io::AsyncWriteExt;
    serve_loopback(|mut tcp| async move {
        let mut buf = Vec::new();
        let Some(end) = read_head(&mut tcp, &mut buf).await else {
            return;
        };
        if String::from_utf8_lossy(&buf[..end]).starts_with("GET /silent ") {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    })
}

/// An agent config with the service `erp` and one line of its own (or none): (its path,
/// the agent's admin port).
fn config(
    dir: &TempDir,
    port: u16,
    token: &std::path::Path,
    backend: u16,
    extra: &str,
) -> (std::path::PathBuf, u16) {
    let path = dir.join("agent.toml");
    let admin = free_port();
    std::fs::write(
        &path,
        format!(
            "[agent]\nserver = \"ws://127.0.0.1:{port}\"\ntoken_file = {:?}\npool = 1\n\
             admin = \"127.0.0.1:{admin}\"\n\n\
             [[agent.service]]\nname = \"erp\"\nurl = \"http://127.0.0.1:{backend}\"\n{extra}\n",
            token.display().to_string()
        ),
    )
    .unwrap();
    (path, admin)
}

/// A backend that does not begin its answer within the service's `response_timeout` gets
/// its caller a `504` from the agent (counted as the agent's own, not the backend's), well
/// before the default minute; answers that come in time pass as before.
#[test]
fn a_backend_silent_past_the_response_timeout_gets_its_caller_a_504() {
    let dir = TempDir::new("http-response-timeout");
    let (mut server, port, http, agent_token, caller) = ingress(&dir);
    let backend = silent_backend();
    let (path, admin) = config(&dir, port, &agent_token, backend, "response_timeout = 1");
    let mut agent = start_agent_via(&path);
    let bearer = format!("Authorization: Bearer {caller}");
    let base = format!("http://{http}/t/acme/erp");
    let out = dir.join("body");
    assert!(
        poll_until(WAIT, || curl_to_file(
            &["-H", &bearer, &format!("{base}/ok")],
            &out
        )
        .0 == 200),
        "the service never answered\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );

    // curl gives up after 30 s; the default (60 s) would leave it nothing to see.
    let (status, _) = curl_to_file(&["-H", &bearer, &format!("{base}/silent")], &out);
    let body = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        (status, body.contains("no answer within 1s")),
        (504, true),
        "{body}\n--- agent:\n{}",
        agent.log()
    );
    let metrics = admin_get(admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert_eq!(
        metric(
            &metrics,
            r#"culvert_agent_http_requests_total{service="erp",result="gateway_timeout"}"#
        ),
        Some(1),
        "{metrics}"
    );
    agent.kill();
    server.kill();
}

/// `response_timeout` is checked when the agent starts: zero, or set on a TCP service,
/// stops it with the reason.
#[test]
fn a_response_timeout_out_of_range_or_on_a_tcp_service_stops_the_agent() {
    let dir = TempDir::new("http-response-timeout-bad");
    let token = dir.join("agent.token");
    std::fs::write(&token, "unused").unwrap();
    for (url, extra, says) in [
        (
            "http://127.0.0.1:9",
            "response_timeout = 0",
            "response_timeout must be 1 to 86400 seconds",
        ),
        (
            "tcp://127.0.0.1:9",
            "response_timeout = 5",
            "are for http:// and https:// services",
        ),
    ] {
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "[agent]\nserver = \"ws://127.0.0.1:9\"\ntoken_file = {:?}\n\n\
                 [[agent.service]]\nname = \"erp\"\nurl = \"{url}\"\n{extra}\n",
                token.display().to_string()
            ),
        )
        .unwrap();
        let out = run(&mut agent_via(&path), WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{extra} on {url}: {err}"
        );
    }
}
