//! HTTP/2 callers at the HTTP ingress: agreed by ALPN over TLS (curl `--http2`, as a
//! browser would) and by the connection preface on a plain loopback ingress; concurrent
//! requests on one connection do not wait behind each other's answers; an idle HTTP/2
//! connection is closed like an idle HTTP/1.1 one. The tunnel stream still carries
//! HTTP/1.1 to the agent, whose backend is the recording HTTP/1.1 one.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Digest;
use support::http::*;
use support::*;

/// `curl` with `version_flag` (`--http2`, `--http2-prior-knowledge`, `--http1.1`): the
/// HTTP version it used, the status, and the body.
fn curl_version(version_flag: &str, bearer: &str, url: &str) -> (String, u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-k", "--max-time", "30", version_flag])
        .args(["-H", bearer, "-w", "\n%{http_version} %{http_code}", url])
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut it = tail.split_whitespace();
    let version = it.next().unwrap_or("").to_owned();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (version, status, body.to_owned())
}

/// A server (`server_args`: TLS or plain, and the ingress) and an agent serving `acme/erp`
/// from `backend_port`, waited for until `url` answers 200 to curl with `version_flag`.
struct Ingress {
    dir: TempDir,
    server: Proc,
    agent: Proc,
    bearer: String,
}

fn start(
    name: &str,
    server_args: &[&str],
    tls: bool,
    backend_port: u16,
    version_flag: &str,
    url: &str,
) -> Ingress {
    let dir = TempDir::new(name);
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let (mut server, port) = start_server(&tokens, server_args);
    server
        .try_wait_line("http ingress ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.join("agent.toml");
    let scheme = if tls { "wss" } else { "ws" };
    std::fs::write(
        &config,
        format!(
            "[agent]\nserver = \"{scheme}://127.0.0.1:{port}\"\ntoken_file = {:?}\npool = 1\n\
             insecure_skip_verify = {tls}\n\n\
             [[agent.service]]\nname = \"erp\"\nurl = \"http://127.0.0.1:{backend_port}\"\n\
             inject_headers = {{ Authorization = \"env:ERP_TOKEN\" }}\n",
            agent_token.display().to_string()
        ),
    )
    .unwrap();
    let agent = start_agent_via(&config);
    let bearer = format!("Authorization: Bearer {caller}");
    assert!(
        poll_until(WAIT, || curl_version(version_flag, &bearer, url).1 == 200),
        "no answer at {url}\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );
    Ingress {
        dir,
        server,
        agent,
        bearer,
    }
}

#[test]
fn tls_callers_that_offer_http2_get_it_and_the_backend_gets_http_1_1() {
    let http = format!("127.0.0.1:{}", free_port());
    let (backend_port, seen) = backend();
    let url = format!("https://{http}/t/acme/erp/h2?q=1");
    let mut t = start(
        "http2-tls",
        &["--self-signed", "--http-listen", &http],
        true,
        backend_port,
        "--http2",
        &url,
    );
    let (version, status, body) = curl_version("--http2", &t.bearer, &url);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(body.starts_with("len=0 sha="), "{body}");
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.path, "/h2?q=1");
    assert_eq!(got.header("authorization"), Some(SECRET));
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
    assert_eq!(got.header("x-forwarded-host"), Some(http.as_str()));
    // Bodies both ways over HTTP/2 flow control, every byte: an 8 MiB upload (which the
    // tunnel stream carries chunked) and a 32 MiB download.
    let upload = t.dir.join("upload.bin");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
    std::fs::write(&upload, &data).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--max-time",
            "60",
            "--http2",
            "-w",
            "\n%{http_version}",
        ])
        .args(["-H", &t.bearer, "--data-binary"])
        .arg(format!("@{}", upload.display()))
        .arg(format!("https://{http}/t/acme/erp/up"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "len={} sha={}\n2",
        data.len(),
        hex::encode(sha2::Sha256::digest(&data))
    );
    assert_eq!(text, want);
    let down = t.dir.join("down.bin");
    let n = 32u64 << 20;
    let (status, got, complete) = curl_to_file_checked(
        &[
            "-k",
            "--http2",
            "-H",
            &t.bearer,
            &format!("https://{http}/t/acme/erp/download?n={n}"),
        ],
        &down,
    );
    assert_eq!((status, got, complete), (200, n, true));
    // A caller that offers only HTTP/1.1 keeps it.
    let (version, status, _) = curl_version("--http1.1", &t.bearer, &url);
    assert_eq!((version.as_str(), status), ("1.1", 200));
    // The access log says which each request spoke.
    let log = t.server.log();
    let access = |v: &str| {
        log.lines().any(|l| {
            l.contains("http request")
                && l.contains("route=\"acme/erp\"")
                && l.contains("path=\"/t/acme/erp/h2\"")
                && l.contains("status=200")
                && l.contains(&format!("version={v}"))
        })
    };
    assert!(access("HTTP/2.0") && access("HTTP/1.1"), "{log}");
    t.agent.kill();
    t.server.kill();
}

/// A backend whose `/hold` answers only once the test releases it (one release per
/// request); `/hold-body` sends its head and `first` at once and `last` only once released;
/// `/cookies` answers the Cookie headers it got, joined by `|`; any other path answers its
/// path at once.
fn holding_backend() -> (u16, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let port = serve_loopback(move |tcp| {
        let gate = g.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let gate = gate.clone();
                async move {
                    type Chunk = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;
                    let chunk = |s: &'static str| -> Chunk {
                        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                            s.as_bytes(),
                        )))
                    };
                    if req.uri().path().ends_with("/hold-body") {
                        use futures::StreamExt;
                        let rest = futures::stream::once(async move {
                            gate.acquire().await.unwrap().forget();
                            chunk("last")
                        });
                        let body = futures::stream::once(async move { chunk("first") }).chain(rest);
                        return Ok::<_, hyper::Error>(hyper::Response::new(BodyExt::boxed(
                            http_body_util::StreamBody::new(body),
                        )));
                    }
                    if req.uri().path().ends_with("/hold") {
                        gate.acquire().await.unwrap().forget();
                    }
                    let answer = if req.uri().path().ends_with("/cookies") {
                        let all: Vec<_> = req
                            .headers()
                            .get_all("cookie")
                            .iter()
                            .map(|v| v.to_str().unwrap_or("?").to_owned())
                            .collect();
                        all.join("|")
                    } else {
                        req.uri().path().to_owned()
                    };
                    Ok::<_, hyper::Error>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(answer)).boxed(),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    });
    (port, gate)
}

#[test]
fn concurrent_requests_on_one_connection_do_not_wait_behind_each_other() {
    let http = format!("127.0.0.1:{}", free_port());
    let (backend_port, gate) = holding_backend();
    let base = format!("http://{http}/t/acme/erp");
    let mut t = start(
        "http2-concurrent",
        &["--insecure-plain", "--http-listen", &http],
        false,
        backend_port,
        "--http2-prior-knowledge",
        &format!("{base}/ready"),
    );
    let token = t.bearer.trim_start_matches("Authorization: ").to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&http).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let mut conn = tokio::spawn(conn);
        let get_with = |path: &str, cookies: &[&str]| {
            let mut sender = sender.clone();
            let mut req = hyper::Request::get(format!("{base}/{path}"))
                .header("authorization", &token)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            for c in cookies {
                req.headers_mut()
                    .append("cookie", hyper::header::HeaderValue::from_str(c).unwrap());
            }
            async move {
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.version(), hyper::Version::HTTP_2);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8_lossy(&body).into_owned()
            }
        };
        let get = |path: &str| get_with(path, &[]);
        // Cookie crumbs, as browsers send them over HTTP/2, reach the HTTP/1.1 backend as
        // one Cookie header.
        assert_eq!(get_with("cookies", &["a=1", "b=2"]).await, "a=1; b=2");
        // Three held requests in flight on the one connection...
        let held: Vec<_> = (0..3).map(|_| tokio::spawn(get("hold"))).collect();
        // ...and others still answered meanwhile, each over a stream of its own.
        for i in 0..5 {
            let answer = tokio::time::timeout(WAIT, get(&format!("free{i}")))
                .await
                .expect("a request behind held ones on the same connection was not answered");
            assert_eq!(answer, format!("/free{i}"));
        }
        assert!(held.iter().all(|h| !h.is_finished()));
        gate.add_permits(3);
        for h in held {
            let answer = tokio::time::timeout(WAIT, h).await.unwrap().unwrap();
            assert_eq!(answer, "/hold");
        }

        // An answer whose head has come but whose body is still held keeps its stream
        // busy: a request to the same service meanwhile takes another stream instead of
        // waiting for that body to end. On a connection of its own, whose only kept stream
        // is that busy one.
        let tcp = tokio::net::TcpStream::connect(&http).await.unwrap();
        let (mut second, conn2) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn2);
        let request = |path: &str| {
            hyper::Request::get(format!("{base}/{path}"))
                .header("authorization", &token)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let streaming = second.send_request(request("hold-body")).await.unwrap();
        assert_eq!(streaming.status(), 200);
        let after = tokio::time::timeout(WAIT, second.send_request(request("after-head")))
            .await
            .expect("a request waited for another answer's body to end")
            .unwrap();
        let answer = after.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&answer[..], b"/after-head");
        drop(second);
        gate.add_permits(1);
        let body = tokio::time::timeout(WAIT, streaming.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"firstlast");

        // Idle, the connection is closed by the ingress (after its 10 s idle timeout, as
        // for HTTP/1.1), not held for ever.
        // So is a connection that never sends a byte (its protocol still unknown).
        let idle_since = Instant::now();
        let mut silent = tokio::net::TcpStream::connect(&http).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(40), &mut conn).await;
        assert!(closed.is_ok(), "an idle HTTP/2 connection was kept open");
        eprintln!(
            "idle HTTP/2 connection closed after {:?}",
            idle_since.elapsed()
        );
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(40), async {
            use tokio::io::AsyncReadExt;
            silent.read(&mut buf).await
        })
        .await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was kept open: {read:?}"
        );
        drop(sender);
    });
    t.agent.kill();
    t.server.kill();
}
