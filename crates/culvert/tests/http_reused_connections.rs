//! An HTTP backend that closes a kept-alive connection just as the agent writes the next
//! request on it (its keep-alive timer fired: nginx, Node.js and most servers have one).
//! Real processes on loopback; the backend is written by hand so that the close comes
//! exactly then, every time.

mod support;

use std::sync::{Arc, Mutex};

use support::http::*;
use support::*;

/// What the backend read: (its connection's number, method, path, whether the injected
/// credential came with it).
type Heads = Arc<Mutex<Vec<(usize, String, String, bool)>>>;

/// A plain HTTP backend that answers the first request on each connection (`200`, body
/// `ok`, kept alive) and closes the connection without an answer when the second one
/// arrives.
fn closing_backend() -> (u16, Heads) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let heads: Heads = Arc::default();
    let seen = heads.clone();
    let conns = Arc::new(AtomicUsize::new(0));
    let port = serve_loopback(move |mut tcp| {
        let (seen, n) = (seen.clone(), conns.fetch_add(1, Ordering::Relaxed));
        async move {
            let mut buf = Vec::new();
            for nth in 0..2 {
                // One request head (and its body, by Content-Length), bounded in size and time.
                let Some(end) = read_head(&mut tcp, &mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("").to_ascii_uppercase();
                let path = words.next().unwrap_or("").to_owned();
                let credential = head.contains(&SECRET.to_ascii_lowercase());
                seen.lock().unwrap().push((n, method, path, credential));
                if nth == 1 {
                    return; // Closed under the request: no answer.
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                // The tests send a few bytes at most.
                if length > 64 * 1024 || !read_to_len(&mut tcp, &mut buf, end + length).await {
                    return;
                }
                buf.drain(..end + length);
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if tcp.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    });
    (port, heads)
}

/// One caller connection (curl fetches its URLs over one connection), so one tunnel stream
/// and one backend connection at a time: the status of each request, in order.
fn statuses(bearer: &str, urls: &[String], extra: &[&str]) -> Vec<u16> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "30",
        "-H",
        bearer,
        "-w",
        "%{http_code}\\n",
    ])
    .args(extra);
    for u in urls {
        cmd.args(["-o", "/dev/null", u]);
    }
    let out = cmd.output().expect("curl (scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

/// A request without a body whose method may be repeated (GET) is sent once more, on a
/// new connection, when the reused connection it went out on closes before any answer:
/// the caller gets the answer, not a 502. A POST is never sent twice: its caller gets the
/// 502, and the backend saw it once.
#[test]
fn a_request_a_reused_backend_connection_drops_is_sent_again_only_when_that_is_safe() {
    let dir = TempDir::new("http-reused");
    let (mut server, port, http, agent_token, caller) = ingress(&dir);
    let (backend, heads) = closing_backend();
    let config = dir.join("agent.toml");
    let admin = free_port();
    write_config_with_admin(
        &config,
        port,
        &agent_token,
        &[("erp", format!("http://127.0.0.1:{backend}"), None)],
        Some(admin),
    );
    let mut agent = start_agent_via(&config);
    let bearer = format!("Authorization: Bearer {caller}");
    let base = format!("http://{http}/t/acme/erp");
    assert!(
        poll_until(WAIT, || statuses(&bearer, &[format!("{base}/warm")], &[])
            == [200]),
        "the service never answered\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );
    heads.lock().unwrap().clear();
    let before = Counts::scrape(admin);

    let gets: Vec<String> = (1..=4).map(|i| format!("{base}/get{i}")).collect();
    assert_eq!(
        statuses(&bearer, &gets, &[]),
        [200, 200, 200, 200],
        "GETs on one caller connection\n--- backend saw: {:?}\n--- agent:\n{}",
        heads.lock().unwrap(),
        agent.log()
    );
    let seen = std::mem::take(&mut *heads.lock().unwrap());
    // The first on a new connection; each next one is dropped there and sent again on
    // the connection after.
    let paths: Vec<&str> = seen.iter().map(|(_, _, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/get1", "/get2", "/get2", "/get3", "/get3", "/get4", "/get4"],
        "{seen:?}"
    );
    for pair in seen[1..].chunks(2) {
        assert_ne!(
            pair[0].0, pair[1].0,
            "sent again on a new connection: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .all(|(_, m, _, credential)| m == "GET" && *credential),
        "every request, sent again too, carries the injected credential: {seen:?}"
    );

    let posts: Vec<String> = (1..=2).map(|i| format!("{base}/post{i}")).collect();
    assert_eq!(
        statuses(&bearer, &posts, &["--data-binary", "order=1"]),
        [200, 502],
        "POSTs on one caller connection\n--- backend saw: {:?}",
        heads.lock().unwrap()
    );
    let seen = std::mem::take(&mut *heads.lock().unwrap());
    let posts_seen: Vec<&str> = seen
        .iter()
        .filter(|(_, m, _, _)| m == "POST")
        .map(|(_, _, p, _)| p.as_str())
        .collect();
    assert_eq!(
        posts_seen,
        ["/post1", "/post2"],
        "a POST is never sent twice: {seen:?}"
    );

    // The agent's metrics tell its own 502 from the backend's answers, and count the
    // requests it sent again and the backend connections each took.
    let after = Counts::scrape(admin);
    assert_eq!(
        after.minus(&before),
        Counts {
            answered: 5,
            bad_gateway: 1,
            retried: 3,
            // get1, each GET sent again, post1.
            backend_connections: 5,
        },
        "agent metrics:\n{}",
        admin_get(admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    );
    // Its session list shows the service (no public port) and the same counts, and so
    // does `culvert status`.
    let (_, body) = admin_get(admin, "/api/sessions").expect("agent admin answers");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let erp = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "erp"))
        .unwrap_or_else(|| panic!("erp not listed: {body}"));
    assert_eq!(
        (
            &erp["kind"],
            &erp["public_port"],
            &erp["http_requests"]["retried"],
            &erp["http_requests"]["bad_gateway"],
            &erp["http_requests"]["answered"],
        ),
        (
            &"http".into(),
            &serde_json::Value::Null,
            &after.retried.into(),
            &after.bad_gateway.into(),
            &after.answered.into()
        ),
        "{body}"
    );
    let out = run(
        culvert().args(["status", "--admin", &format!("127.0.0.1:{admin}")]),
        WAIT,
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && table
                .lines()
                .any(|l| l.starts_with("erp ") && l.contains(" http "))
            && table.contains(&format!(
                "{} answered by the backend, {} bad gateway",
                after.answered, after.bad_gateway
            ))
            && table.contains(&format!("{} sent again", after.retried)),
        "{table}"
    );
    agent.kill();
    server.kill();
}

/// The agent's counters of the `erp` service, from its `/metrics`.
#[derive(Debug, PartialEq)]
struct Counts {
    answered: u64,
    bad_gateway: u64,
    retried: u64,
    backend_connections: u64,
}

impl Counts {
    fn scrape(admin: u16) -> Counts {
        let body = admin_get(admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let get = |prefix: &str| {
            metric(&body, prefix).unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
        };
        Counts {
            answered: get(r#"culvert_agent_http_requests_total{service="erp",result="answered"}"#),
            bad_gateway: get(
                r#"culvert_agent_http_requests_total{service="erp",result="bad_gateway"}"#,
            ),
            retried: get(r#"culvert_agent_http_retries_total{service="erp"}"#),
            backend_connections: get(
                r#"culvert_agent_http_backend_connections_total{service="erp"}"#,
            ),
        }
    }

    fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            answered: self.answered - earlier.answered,
            bad_gateway: self.bad_gateway - earlier.bad_gateway,
            retried: self.retried - earlier.retried,
            backend_connections: self.backend_connections - earlier.backend_connections,
        }
    }
}
