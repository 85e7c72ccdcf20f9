//! HTTP services by name (issue 15), with real processes on loopback: callers use curl
//! against the server's HTTP ingress; the agent's reverse proxy adds the backend's
//! credential from its environment; a real HTTP backend (hyper) records what it receives.
//! The agent reaches the server through a recording relay, so the test can show that the
//! injected secret and the caller's token never cross the tunnel.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;
use support::http::*;
use support::*;

/// A TCP relay from a local port to `to`, keeping a copy of every byte either way.
fn recording_relay(to: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let wire: Arc<Mutex<Vec<u8>>> = Arc::default();
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let w = wire.clone();
    std::thread::spawn(move || {
        for a in l.incoming() {
            let Ok(a) = a else { continue };
            let Ok(b) = TcpStream::connect((Ipv4Addr::LOCALHOST, to)) else {
                continue;
            };
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                let w = w.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let mut w = w.lock().unwrap();
                        if w.len() < 64 << 20 {
                            w.extend_from_slice(&buf[..n]);
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, wire)
}

fn write_agent_config(path: &Path, relay: u16, token: &Path, backend: u16) {
    std::fs::write(
        path,
        format!(
            "[agent]\nserver = \"ws://127.0.0.1:{relay}\"\ntoken_file = {:?}\npool = 1\n\n\
             [[agent.service]]\nname = \"erp\"\nurl = \"http://127.0.0.1:{backend}/base\"\n\
             inject_headers = {{ Authorization = \"env:ERP_TOKEN\" }}\n",
            token.display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn http_requests_reach_the_backend_with_the_injected_credential_and_nothing_else() {
    let dir = TempDir::new("http-services");
    let (tokens, agent_token, caller) = acme_tokens(
        dir.path(),
        &["--tenant", "web", "--role", "http", "--access", "acme/erp"],
    );
    let outsider = new_token_with(&tokens, "outsider", &["--role", "http"]);
    let http_port = free_port();
    let http = format!("127.0.0.1:{http_port}");
    let (mut server, port) = start_server(&tokens, &["--insecure-plain", "--http-listen", &http]);
    server
        .try_wait_line("http ingress ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (backend_port, seen) = backend();
    let (relay, wire) = recording_relay(port);
    let config = dir.join("agent.toml");
    write_agent_config(&config, relay, &agent_token, backend_port);
    let mut agent = start_agent_via(&config);

    let url = format!("http://{http}/t/acme/erp/api/orders?x=1");
    let bearer = format!("Authorization: Bearer {caller}");
    // Registered: the service answers (503 until the agent is in).
    assert!(
        poll_until(Duration::from_secs(30), || curl(&["-H", &bearer, &url]).0
            == 200),
        "service never answered\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );
    let (status, _, body) = curl(&["-H", &bearer, "-H", "X-Forwarded-For: 6.6.6.6", &url]);
    assert_eq!(status, 200);
    assert!(body.starts_with("len=0 "), "{body}");
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.method, "GET");
    assert_eq!(got.path, "/base/api/orders?x=1");
    assert_eq!(got.header("authorization"), Some(SECRET), "{got:?}");
    assert_eq!(
        got.header("host"),
        Some(format!("127.0.0.1:{backend_port}").as_str())
    );
    assert_eq!(
        got.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "set by the server, not the caller"
    );
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(got.header("x-forwarded-host"), Some(http.as_str()));
    assert!(
        !got.headers.iter().any(|(_, v)| v.contains(&caller)),
        "the caller's token reached the backend: {got:?}"
    );

    // A 4 MiB upload streams through and arrives intact.
    let upload = dir.join("upload.bin");
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&upload, &data).unwrap();
    let (status, _, body) = curl(&[
        "-H",
        &bearer,
        "-H",
        "Expect:",
        "--data-binary",
        &format!("@{}", upload.display()),
        &format!("http://{http}/t/acme/erp/upload"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(
            "len={} sha={}",
            data.len(),
            hex::encode(sha2::Sha256::digest(&data))
        )
    );
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!((got.method.as_str(), got.body_len), ("POST", data.len()));

    // Callers without the right: one answer for every unknown token.
    let (s1, _, b1) = curl(&[&url]);
    let (s2, _, b2) = curl(&["-H", "Authorization: Bearer nope", &url]);
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(b1, b2);
    let (s3, _, _) = curl(&["-H", &format!("Authorization: Bearer {outsider}"), &url]);
    assert_eq!(s3, 403, "a token of another tenant without a grant");
    let agent_bearer = format!(
        "Authorization: Bearer {}",
        std::fs::read_to_string(&agent_token).unwrap().trim()
    );
    let (s4, _, _) = curl(&["-H", &agent_bearer, &url]);
    assert_eq!(s4, 403, "an agent token has no http role");

    // Neither the injected secret nor the caller's token crossed the tunnel.
    {
        let wire = wire.lock().unwrap();
        let has = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
        assert!(
            has(b"/base/api/orders") || has(b"/api/orders"),
            "the relay saw the tunnel's bytes"
        );
        assert!(
            !has(b"backend-secret-42"),
            "the injected secret crossed the tunnel"
        );
        assert!(
            !has(caller.as_bytes()),
            "the caller's token crossed the tunnel"
        );
    }

    // Agent gone: 503 with Retry-After and the service named; back: answers again.
    agent.kill();
    assert!(
        poll_until(Duration::from_secs(30), || curl(&["-H", &bearer, &url]).0
            == 503),
        "no 503 once the agent is gone"
    );
    let (status, head, body) = curl(&["-H", &bearer, &url]);
    assert_eq!(status, 503);
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert!(body.contains("\"service\":\"acme/erp\""), "{body}");
    let mut agent = start_agent_via(&config);
    assert!(
        poll_until(Duration::from_secs(30), || curl(&["-H", &bearer, &url]).0
            == 200),
        "service not back with the agent\n--- agent:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        !log.contains("backend-secret"),
        "the secret is in the agent's log"
    );

    agent.kill();
    server.kill();
}

/// Peak RSS (KiB) of `pids` while `f` runs, sampled every 50 ms.
fn peak_rss_during<T>(pids: [u32; 2], f: impl FnOnce() -> T) -> (T, [u64; 2]) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = Arc::new(Mutex::new([0u64; 2]));
    let (s, p) = (stop.clone(), peak.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            for (i, pid) in pids.iter().enumerate() {
                let r = support::faults::rss_kib(*pid).unwrap_or(0);
                let mut p = p.lock().unwrap();
                p[i] = p[i].max(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let out = f();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = *peak.lock().unwrap();
    (out, peak)
}

#[test]
fn bulk_both_ways_with_bounded_memory_websocket_host_route_and_token_header() {
    const GIB: u64 = 1 << 30;
    let dir = TempDir::new("http-bulk");
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let http_port = free_port();
    let http = format!("127.0.0.1:{http_port}");
    let (mut server, port) = start_server(
        &tokens,
        &[
            "--insecure-plain",
            "--http-listen",
            &http,
            "--http-domain",
            "tunnel.test",
            "--http-token-header",
            "X-Culvert-Token",
        ],
    );
    let (backend_port, seen) = backend();
    let config = dir.join("agent.toml");
    write_agent_config(&config, port, &agent_token, backend_port);
    let mut agent = start_agent_via(&config);
    let token_header = format!("X-Culvert-Token: {caller}");
    let base = format!("http://{http}/t/acme/erp");
    assert!(
        poll_until(Duration::from_secs(30), || {
            curl(&["-H", &token_header, &format!("{base}/x")]).0 == 200
        }),
        "service never answered\n--- agent:\n{}",
        agent.log()
    );
    // The operator's header carries the token and is removed; the caller keeps
    // Authorization for itself, and the agent's injected one replaces it.
    let (status, _, _) = curl(&[
        "-H",
        &token_header,
        "-H",
        "Authorization: Basic Y2FsbGVyOm93bg==",
        &format!("{base}/x"),
    ]);
    assert_eq!(status, 200);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.header("authorization"), Some(SECRET));
    assert_eq!(got.header("x-culvert-token"), None);
    let bearer = format!("Authorization: Bearer {caller}");
    assert_eq!(curl(&["-H", &bearer, &format!("{base}/x")]).0, 401);

    // By host name: SERVICE.TENANT.DOMAIN.
    let (status, _, body) = curl(&[
        "-H",
        &token_header,
        "-H",
        "Host: erp.acme.tunnel.test",
        &format!("http://{http}/by-host?q=1"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        seen.lock().unwrap().last().unwrap().path,
        "/base/by-host?q=1"
    );

    // 1 GiB each way, streamed: neither process holds it.
    let pids = [server.pid(), agent.pid()];
    let ((up, down), peak) = peak_rss_during(pids, || {
        let up = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "head -c {GIB} /dev/zero | curl -sS --max-time 600 -H 'Expect:' -H '{token_header}' -T - {base}/upload"
            ))
            .output()
            .unwrap();
        let down = Command::new("curl")
            .args(["-sS", "--max-time", "600", "-o", "/dev/null"])
            .args(["-w", "%{size_download}", "-H", &token_header])
            .arg(format!("{base}/download?n={GIB}"))
            .output()
            .unwrap();
        (up, down)
    });
    let up = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(up.starts_with(&format!("len={GIB} ")), "upload: {up}");
    assert_eq!(
        String::from_utf8_lossy(&down.stdout),
        GIB.to_string(),
        "download"
    );
    assert!(
        peak.iter().all(|kib| *kib < 160 * 1024),
        "peak RSS server / agent {peak:?} KiB during 1 GiB each way"
    );
    eprintln!("peak RSS server / agent during 1 GiB each way: {peak:?} KiB");

    // A WebSocket through the ingress, echoed by the backend.
    websocket_echo(&http, ("x-culvert-token", &caller), |i| {
        tokio_tungstenite::tungstenite::Message::text(format!("hello {i}"))
    });
    agent.kill();
    server.kill();
}

#[test]
fn expired_callers_get_the_unknown_answer_and_failures_lock_the_address_out() {
    let dir = TempDir::new("http-lockout");
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let brief = new_token_with(
        &tokens,
        "brief",
        &["--tenant", "acme", "--role", "http", "--ttl", "1s"],
    );
    let http_port = free_port();
    let http = format!("127.0.0.1:{http_port}");
    let (mut server, port) = start_server(&tokens, &["--insecure-plain", "--http-listen", &http]);
    let (backend_port, _seen) = backend();
    let config = dir.join("agent.toml");
    write_agent_config(&config, port, &agent_token, backend_port);
    let mut agent = start_agent_via(&config);
    let url = format!("http://{http}/t/acme/erp/x");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    assert!(
        poll_until(Duration::from_secs(30), || curl(&[
            "-H",
            &bearer(&caller),
            &url
        ])
        .0 == 200),
        "service never answered\n--- agent:\n{}",
        agent.log()
    );
    // Expired (its one second has passed): the same answer as a token nobody issued.
    std::thread::sleep(Duration::from_millis(2100));
    let (s_expired, _, b_expired) = curl(&["-H", &bearer(&brief), &url]);
    let (s_unknown, _, b_unknown) = curl(&["-H", &bearer("made-up"), &url]);
    assert_eq!((s_expired, s_unknown), (401, 401));
    assert_eq!(b_expired, b_unknown);

    // Failures count towards the address's lockout, as agent logins do: 429 with
    // Retry-After, then even a good token from that address waits.
    let mut locked = None;
    for _ in 0..50 {
        let (s, head, _) = curl(&["-H", &bearer("made-up"), &url]);
        if s == 429 {
            locked = Some(head);
            break;
        }
        assert_eq!(s, 401);
    }
    let head = locked.expect("no lockout after 50 failed callers");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert_eq!(curl(&["-H", &bearer(&caller), &url]).0, 429);
    agent.kill();
    server.kill();
}

/// An agent config for a server with TLS (its self-signed certificate not verified): the
/// service `erp` on `backend`, the credential injected from the environment.
fn write_tls_agent_config(path: &Path, port: u16, token: &Path, backend: u16) {
    std::fs::write(
        path,
        format!(
            "[agent]\nserver = \"wss://127.0.0.1:{port}\"\ntoken_file = {:?}\npool = 1\ninsecure_skip_verify = true\n\n\
             [[agent.service]]\nname = \"erp\"\nurl = \"http://127.0.0.1:{backend}\"\n\
             inject_headers = {{ Authorization = \"env:ERP_TOKEN\" }}\n",
            token.display().to_string()
        ),
    )
    .unwrap();
}

/// A server whose HTTP ingress speaks TLS (with its self-signed certificate), an agent
/// serving `erp` from the recording [`backend`], and a caller's `Authorization` header.
struct TlsIngress {
    dir: TempDir,
    server: Proc,
    agent: Proc,
    http: String,
    /// The `https://` URL the ingress answered when it was ready.
    url: String,
    bearer: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Starts a [`TlsIngress`] and waits (bounded) until `https://INGRESS{path}` answers 200.
fn tls_ingress(name: &str, path: &str) -> TlsIngress {
    let dir = TempDir::new(name);
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let http = format!("127.0.0.1:{}", free_port());
    let (server, port) = start_server(&tokens, &["--self-signed", "--http-listen", &http]);
    let (backend_port, seen) = backend();
    let config = dir.join("agent.toml");
    write_tls_agent_config(&config, port, &agent_token, backend_port);
    let agent = start_agent_via(&config);
    let bearer = format!("Authorization: Bearer {caller}");
    let url = format!("https://{http}{path}");
    // The server's self-signed certificate: curl is told not to verify it (-k).
    assert!(
        poll_until(Duration::from_secs(30), || curl(&[
            "-k", "-H", &bearer, &url
        ])
        .0 == 200),
        "no answer over TLS\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );
    TlsIngress {
        dir,
        server,
        agent,
        http,
        url,
        bearer,
        seen,
    }
}

/// The point is that the ingress answers TLS and nothing in clear.
#[test]
fn the_ingress_speaks_tls_with_the_servers_certificate() {
    let TlsIngress {
        mut server,
        mut agent,
        http,
        bearer,
        seen,
        ..
    } = tls_ingress("http-tls", "/t/acme/erp/secure");
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
    assert_eq!(got.header("authorization"), Some(SECRET));
    let (plain, _, _) = curl(&["-H", &bearer, &format!("http://{http}/t/acme/erp/secure")]);
    assert_ne!(plain, 200, "plain HTTP on a TLS ingress");
    agent.kill();
    server.kill();
}

/// Socket reads (`read`, `recvfrom` and their vectored kinds, the ones that found nothing
/// included) that process `pid` makes, all its threads, while `f` runs: strace attached to
/// it, its summary written under `dir`.
fn socket_reads_during<T>(pid: u32, dir: &Path, f: impl FnOnce() -> T) -> (T, u64) {
    Command::new("strace")
        .arg("-V")
        .output()
        .expect("strace (scripts/test.sh installs it)");
    let summary = dir.join("strace-summary.txt");
    let mut strace = Proc::spawn(
        "strace",
        Command::new("strace")
            .args(["-f", "-c", "-e", "trace=read,readv,recvfrom,recvmsg", "-o"])
            .arg(&summary)
            .args(["-p", &pid.to_string()]),
    );
    strace
        .try_wait_line("attached", 0, WAIT)
        .unwrap_or_else(|e| panic!("strace did not attach: {e}"));
    let out = f();
    strace.stop_with("-INT", Duration::from_secs(30));
    let text = std::fs::read_to_string(&summary).expect("strace's summary");
    // Rows: % time, seconds, usecs/call, calls, [errors,] syscall.
    let reads = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.last()?;
            ["read", "readv", "recvfrom", "recvmsg"]
                .contains(&name)
                .then(|| f.get(3)?.parse::<u64>().ok())?
        })
        .sum();
    (out, reads)
}

/// A caller's upload over TLS is read from its socket in large pieces, as the tunnel
/// endpoint reads a wss agent: rustls on its own reads the socket a TLS record (16 KiB) at a
/// time or less, which made 67,000 system calls per GB on the wss tunnel before it read
/// ahead (BENCHMARKS.md, 2026-12-04), and so did the ingress. The backend reads slowly, so
/// the upload backs up into the ingress's socket and every read finds it full.
#[test]
fn tls_uploads_are_read_from_the_callers_socket_in_large_pieces() {
    const UPLOAD: usize = 32 << 20;
    let TlsIngress {
        dir,
        mut server,
        mut agent,
        url,
        bearer,
        ..
    } = tls_ingress("http-tls-reads", "/t/acme/erp/slow");
    let data: Vec<u8> = (0..UPLOAD).map(|i| (i * 7 + i / 4093) as u8).collect();
    let file = dir.join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    let ((status, _, body), reads) = socket_reads_during(server.pid(), dir.path(), || {
        // No `Expect: 100-continue`: its interim answer would be the head `curl` parses.
        curl(&[
            "-k",
            "-H",
            &bearer,
            "-H",
            "Expect:",
            "--data-binary",
            &upload,
            &url,
        ])
    });
    assert_eq!(status, 200, "{body}");
    let sha = hex::encode(sha2::Sha256::digest(&data));
    assert_eq!(body, format!("len={UPLOAD} sha={sha}"));
    // 256 KiB pieces: about 128 reads for the upload, plus the tunnel connection's few.
    assert!(
        reads <= 1024,
        "{reads} socket reads by the server for a {} MiB upload",
        UPLOAD >> 20
    );
    agent.kill();
    server.kill();
}

/// One HTTP/1.0 request on its own connection, read to the end: (status, body).
fn http10_get(addr: &str, path: &str, bearer: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n{bearer}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (status, _, body) = split_answer(&text);
    (status, body.to_owned())
}

/// HTTP/1.0 callers (no keep-alive: the agent's proxy answers, shuts its end of the stream
/// and drops it at once) get every answer. Failed before: the drop reset the stream and the
/// server could lose the answer it had not read yet, a 502 for a few per cent of requests
/// (2 and 5 of 200 and 300 in a loop of curl -0 on an idle machine, 72-87 of 300 beside a
/// compile); this test failed on that code.
#[test]
fn http_1_0_callers_get_every_answer() {
    let dir = TempDir::new("http-10");
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let http_port = free_port();
    let http = format!("127.0.0.1:{http_port}");
    let (mut server, port) = start_server(&tokens, &["--insecure-plain", "--http-listen", &http]);
    server
        .try_wait_line("http ingress ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (backend_port, _seen) = backend();
    let config = dir.join("agent.toml");
    write_agent_config(&config, port, &agent_token, backend_port);
    let mut agent = start_agent_via(&config);
    let bearer = format!("Authorization: Bearer {caller}");
    assert!(
        poll_until(Duration::from_secs(30), || http10_get(
            &http,
            "/t/acme/erp/x",
            &bearer
        )
        .0 == 200),
        "service never answered\n--- agent:\n{}",
        agent.log()
    );
    let mut failed = Vec::new();
    for i in 0..300 {
        let (status, body) = http10_get(&http, &format!("/t/acme/erp/r{i}"), &bearer);
        if status != 200 || !body.starts_with("len=0 ") {
            failed.push(format!("request {i}: {status} {body:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 300 HTTP/1.0 requests failed: {:?}\n--- server:\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        server.log()
    );
    agent.kill();
    server.kill();
}
