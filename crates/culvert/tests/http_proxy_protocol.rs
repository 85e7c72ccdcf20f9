//! The HTTP ingress behind an L4 balancer: with `--http-proxy-protocol` the caller's address
//! comes from the balancer's PROXY header (v1 or v2), not from the socket, so the backend's
//! `X-Forwarded-For` and the per-address limits name the caller, not the balancer. A real
//! haproxy on loopback writes the headers; callers come from their own loopback addresses.

mod support;

use support::http::*;
use support::*;

/// haproxy in TCP mode in front of the ingress at 127.0.0.1:`ingress`: one front for each
/// header version. Returns it and the two fronts' ports (v1, v2).
fn balancer(dir: &TempDir, ingress: u16) -> (Proc, u16, u16) {
    let (v1, v2) = (free_port(), free_port());
    let cfg = format!(
        "global\n  maxconn 200\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
         frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend ingress_v1\n\
         frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend ingress_v2\n\
         backend ingress_v1\n  server s 127.0.0.1:{ingress} send-proxy\n\
         backend ingress_v2\n  server s 127.0.0.1:{ingress} send-proxy-v2\n"
    );
    let p = start_haproxy(dir.path(), &cfg, v2);
    (p, v1, v2)
}

/// The status of a GET of `url` from the local address `source`.
fn get_from(source: &str, bearer: &str, url: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--interface", source, "-H", bearer, url])
        .output()
        .expect("curl (scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// What a test of the ingress behind a balancer runs against.
struct Setup {
    dir: TempDir,
    server: Proc,
    agent: Proc,
    /// The ingress's port on 127.0.0.1.
    ingress: u16,
    /// The requests the backend of `acme/erp` received.
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    /// The caller's `Authorization` header line.
    bearer: String,
}

/// A server with a plain ingress and the PROXY protocol on (`extra`: more server flags), an
/// agent serving `acme/erp` from a recording backend, and a caller's token.
fn setup(name: &str, extra: &[&str]) -> Setup {
    let dir = TempDir::new(name);
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let ingress = free_port();
    let listen = format!("127.0.0.1:{ingress}");
    let mut args = vec![
        "--insecure-plain",
        "--http-listen",
        &listen,
        "--http-proxy-protocol",
    ];
    args.extend_from_slice(extra);
    let (mut server, port) = start_server(&tokens, &args);
    server
        .try_wait_line("http ingress ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (backend_port, seen) = backend();
    let config = dir.join("agent.toml");
    write_config(
        &config,
        port,
        &agent_token,
        &[("erp", format!("http://127.0.0.1:{backend_port}"), None)],
    );
    let agent = start_agent_via(&config);
    Setup {
        dir,
        server,
        agent,
        ingress,
        seen,
        bearer: format!("Authorization: Bearer {caller}"),
    }
}

#[test]
fn behind_a_balancer_the_callers_address_comes_from_its_proxy_header() {
    let admin = free_port();
    let admin_at = format!("127.0.0.1:{admin}");
    let Setup {
        dir,
        mut server,
        mut agent,
        ingress,
        seen,
        bearer,
    } = setup(
        "http-proxy-protocol",
        &[
            "--http-max-connections-per-address",
            "1",
            "--admin",
            &admin_at,
        ],
    );
    let (_lb, v1, v2) = balancer(&dir, ingress);

    // Through each front, from a caller address of its own: the backend is told that
    // address, not the balancer's (127.0.0.1).
    for (front, caller_ip) in [(v1, "127.0.0.7"), (v2, "127.0.0.8")] {
        let url = format!("http://127.0.0.1:{front}/t/acme/erp/who");
        assert!(
            poll_until(WAIT, || get_from(caller_ip, &bearer, &url) == 200),
            "no answer through the balancer's front {front}\n--- agent:\n{}\n--- server:\n{}",
            agent.log(),
            server.log()
        );
        let got = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            got.header("x-forwarded-for"),
            Some(caller_ip),
            "through front {front}: {got:?}"
        );
    }

    // The per-address limit (1 here) counts callers, not the balancer: a caller holding a
    // connection is refused a second, while another caller through the same balancer is
    // served.
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], v2));
    let caller_at = |ip: [u8; 4]| {
        let s = connect_from(ip.into(), front).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s
    };
    // (The curl connections of 127.0.0.7 above may take a moment to be let go of.)
    let mut held = None;
    assert!(
        poll_until(WAIT, || {
            let mut s = caller_at([127, 0, 0, 7]);
            let ok = ingress_answers(&mut s);
            held = ok.then_some(s);
            ok
        }),
        "127.0.0.7 never got a connection through"
    );
    assert!(
        !ingress_answers(&mut caller_at([127, 0, 0, 7])),
        "a second connection of 127.0.0.7 is past its address's limit"
    );
    let mut other = caller_at([127, 0, 0, 8]);
    assert!(
        ingress_answers(&mut other),
        "127.0.0.8 has its own share behind the same balancer"
    );
    drop((held, other));

    // Straight to the ingress, without a header: closed, counted, never answered.
    let direct = format!("http://127.0.0.1:{ingress}/t/acme/erp/who");
    assert_eq!(get_from("127.0.0.9", &bearer, &direct), 0);
    let (_, metrics) = admin_get(admin, "/metrics").unwrap();
    assert!(
        metric(
            &metrics,
            r#"culvert_http_connections_refused_total{limit="proxy_header"}"#
        )
        .is_some_and(|n| n >= 1)
            && metric(
                &metrics,
                r#"culvert_http_connections_refused_total{limit="per_address"}"#
            )
            .is_some_and(|n| n >= 1),
        "{metrics}"
    );
    agent.kill();
    server.kill();
}

/// The status of one request written on a connection from `source` straight to the
/// ingress at `to`, after `preface` (a PROXY header, or nothing); 0 when the connection
/// is closed without an answer.
fn raw_status(source: [u8; 4], to: u16, preface: &str, bearer: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = connect_from(
        source.into(),
        std::net::SocketAddr::from(([127, 0, 0, 1], to)),
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let req = format!(
        "{preface}GET /t/acme/erp/who HTTP/1.1\r\nHost: x\r\n{bearer}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn only_the_named_balancers_may_name_a_caller() {
    let Setup {
        dir: _dir,
        mut server,
        mut agent,
        ingress,
        seen,
        bearer,
    } = setup(
        "http-proxy-protocol-from",
        &["--http-proxy-protocol-from", "127.0.0.5,127.0.1.0/24"],
    );
    let forwarded_for = || {
        seen.lock()
            .unwrap()
            .last()
            .and_then(|s| s.header("x-forwarded-for").map(str::to_owned))
    };

    // A balancer names its caller.
    let header = format!("PROXY TCP4 198.51.100.7 127.0.0.1 40000 {ingress}\r\n");
    assert!(
        poll_until(WAIT, || raw_status(
            [127, 0, 0, 5],
            ingress,
            &header,
            &bearer
        ) == 200),
        "the balancer at 127.0.0.5 got no answer\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );
    assert_eq!(forwarded_for().as_deref(), Some("198.51.100.7"));
    let header = format!("PROXY TCP4 198.51.100.8 127.0.0.1 40000 {ingress}\r\n");
    assert_eq!(raw_status([127, 0, 1, 9], ingress, &header, &bearer), 200);
    assert_eq!(forwarded_for().as_deref(), Some("198.51.100.8"));

    // A direct caller is served as itself, with no header...
    assert_eq!(raw_status([127, 0, 0, 9], ingress, "", &bearer), 200);
    assert_eq!(forwarded_for().as_deref(), Some("127.0.0.9"));
    // ...and a header it writes is not believed: it is not HTTP, so it is refused and
    // never reaches the backend.
    let spoof = format!("PROXY TCP4 198.51.100.9 127.0.0.1 40000 {ingress}\r\n");
    let n = seen.lock().unwrap().len();
    assert_eq!(raw_status([127, 0, 0, 9], ingress, &spoof, &bearer), 400);
    assert_eq!(
        seen.lock().unwrap().len(),
        n,
        "the spoofed request got through"
    );
    // A balancer's connection without its header is still closed.
    assert_eq!(raw_status([127, 0, 0, 5], ingress, "", &bearer), 0);
    agent.kill();
    server.kill();
}
