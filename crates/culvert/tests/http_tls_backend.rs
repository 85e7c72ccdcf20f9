//! `https://` HTTP backends (issue 15): the agent's reverse proxy speaks TLS to the backend
//! and trusts only the CA named by the service's `ca` file. Real processes on loopback; the
//! backends are hyper behind tokio-rustls, their certificates issued by a CA made here.
//! A backend whose certificate that CA did not issue, or that is not valid for the URL's
//! host, gets no request: the caller gets 502 with the reason.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;
use support::http::*;
use support::*;
use tokio_rustls::rustls;

/// A certificate authority made for the test, and the leaves it issues.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Ca {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// Writes the CA's certificate as PEM (what a service's `ca` names).
    fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }

    /// A server configuration whose leaf this CA issued for `names`, chain included.
    fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![leaf.der().clone(), self.issuer.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }
}

#[test]
fn https_backends_are_verified_with_the_services_ca_and_carry_bodies_both_ways() {
    let dir = TempDir::new("http-tls-backend");
    let (mut server, port, http, agent_token, caller) = ingress(&dir);

    let ca = Ca::new("culvert test CA");
    let ca_pem = dir.join("ca.pem");
    ca.write_pem(&ca_pem);
    // The real backend: a leaf for `localhost` issued by the CA.
    let (good, seen) = tls_backend(ca.server_config(&["localhost"]));
    // An impostor: a leaf for `localhost` from another CA.
    let (impostor, impostor_seen) = tls_backend(Ca::new("other CA").server_config(&["localhost"]));
    let config = dir.join("agent.toml");
    write_config(
        &config,
        port,
        &agent_token,
        &[
            (
                "erp",
                format!("https://localhost:{good}/base"),
                Some(&ca_pem),
            ),
            (
                "impostor",
                format!("https://localhost:{impostor}"),
                Some(&ca_pem),
            ),
            // The real backend under a name its certificate does not carry.
            (
                "wrongname",
                format!("https://127.0.0.1:{good}"),
                Some(&ca_pem),
            ),
        ],
    );
    let mut agent = start_agent_via(&config);
    let bearer = format!("Authorization: Bearer {caller}");
    let base = format!("http://{http}/t/acme");
    assert!(
        poll_until(WAIT, || curl(&[
            "-H",
            &bearer,
            &format!("{base}/erp/ready")
        ])
        .0 == 200),
        "erp never answered\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );

    // The request reached the backend over TLS, with the credential and the backend's Host.
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.path, "/base/ready");
    assert_eq!(got.header("authorization"), Some(SECRET), "{got:?}");
    assert_eq!(
        got.header("host"),
        Some(format!("localhost:{good}").as_str())
    );
    assert!(
        !got.headers.iter().any(|(_, v)| v.contains(&caller)),
        "the caller's token reached the backend: {got:?}"
    );

    // 8 MiB up, byte for byte.
    let upload = dir.join("upload.bin");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &data).unwrap();
    let (status, _, body) = curl(&[
        "-H",
        &bearer,
        "-H",
        "Expect:",
        "--data-binary",
        &format!("@{}", upload.display()),
        &format!("{base}/erp/upload"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!(
            "len={} sha={}",
            data.len(),
            hex::encode(sha2::Sha256::digest(&data))
        )
    );
    // 32 MiB down, every byte.
    let down = 32u64 << 20;
    let out = dir.join("download.bin");
    let (status, n) = curl_to_file(
        &["-H", &bearer, &format!("{base}/erp/download?n={down}")],
        &out,
    );
    assert_eq!((status, n), (200, down));
    let got = std::fs::read(&out).unwrap();
    assert!(got.len() as u64 == down && got.iter().all(|&b| b == 0));

    // A WebSocket through the TLS backend: the upgrade is spliced over the backend's TLS.
    let token = format!("Bearer {caller}");
    websocket_echo(&http, ("authorization", &token), |i| {
        tokio_tungstenite::tungstenite::Message::binary(vec![i as u8; 40_000])
    });

    // Neither the impostor nor a name the certificate lacks gets a request; the caller is
    // told why.
    let (status, _, body) = curl(&["-H", &bearer, &format!("{base}/impostor/x")]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("UnknownIssuer"), "{body}");
    assert!(impostor_seen.lock().unwrap().is_empty());
    let before = seen.lock().unwrap().len();
    let (status, _, body) = curl(&["-H", &bearer, &format!("{base}/wrongname/x")]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("not valid for name"), "{body}");
    assert_eq!(seen.lock().unwrap().len(), before);
    agent.kill();
    server.kill();
}

/// A CA file that does not hold a certificate is refused when the agent starts, by name.
#[test]
fn a_ca_file_without_a_certificate_is_a_clear_error() {
    let dir = TempDir::new("http-tls-bad-ca");
    let (tokens, agent_token, _caller) = acme_tokens(dir.path(), ACME_CALLER);
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let bad: PathBuf = dir.join("not-a-ca.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let config = dir.join("agent.toml");
    write_config(
        &config,
        port,
        &agent_token,
        &[("erp", "https://localhost:1/".to_owned(), Some(&bad))],
    );
    let mut agent = start_agent_via(&config);
    let status = agent.wait_exit(WAIT);
    server.kill();
    let log = agent.log();
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("not-a-ca.pem"), "{log}");
}

/// A service without a CA file on a machine whose system store is empty (here: an empty
/// `SSL_CERT_DIR`) stops the agent at start, and the error says how to name the backend's
/// CA, not the server connection's `--ca` / `--fingerprint`.
#[test]
fn without_a_ca_file_an_empty_system_store_is_answered_with_the_services_ca_setting() {
    let dir = TempDir::new("http-tls-no-roots");
    let (tokens, agent_token, _caller) = acme_tokens(dir.path(), ACME_CALLER);
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let empty = dir.join("no-roots");
    std::fs::create_dir(&empty).unwrap();
    let config = dir.join("agent.toml");
    write_config(
        &config,
        port,
        &agent_token,
        &[("erp", "https://localhost:1/".to_owned(), None)],
    );
    let mut agent = Proc::spawn(
        "culvert agent",
        agent_via(&config)
            .env_remove("SSL_CERT_FILE")
            .env("SSL_CERT_DIR", &empty),
    );
    let status = agent.wait_exit(WAIT);
    server.kill();
    let log = agent.log();
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("no system root certificates"), "{log}");
    assert!(log.contains("ca = \"FILE\""), "{log}");
    assert!(!log.contains("--fingerprint"), "{log}");
}

/// The body the raw backend answers: 1 MiB of a pattern.
const RAW_BODY: usize = 1 << 20;

fn raw_body() -> Vec<u8> {
    (0..RAW_BODY).map(|i| (i % 253) as u8).collect()
}

/// A TLS backend written by hand, for the ways a real one ends a response that hyper
/// cannot be made to produce: it reads one request head, answers it, and closes. The path
/// says how:
/// - `/length-abrupt`: with `Content-Length`, then the TCP connection closes without TLS
///   `close_notify` (what many servers do at a keep-alive timeout);
/// - `/close-clean`: no length (the body ends where the connection does), then
///   `close_notify`;
/// - `/close-abrupt`: no length, then the TCP connection closes without `close_notify`: the
///   body may have been cut short by anyone on the path.
fn raw_tls_backend(tls: Arc<rustls::ServerConfig>) -> u16 {
    use tokio::io::AsyncWriteExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_loopback(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(Ok(mut s)) = tokio::time::timeout(WAIT, acceptor.accept(tcp)).await else {
                return;
            };
            let mut head = Vec::new();
            if read_head(&mut s, &mut head).await.is_none() {
                return;
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let length = path.ends_with("/length-abrupt");
            let answer = if length {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {RAW_BODY}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
            };
            let mut out = answer.into_bytes();
            out.extend_from_slice(&raw_body());
            if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                return;
            }
            if path.ends_with("/close-clean") {
                let _ = s.shutdown().await;
            } else {
                // Closes the TCP connection under TLS: no close_notify.
                let (tcp, _) = s.into_inner();
                drop(tcp);
            }
        }
    })
}

/// How a backend's TLS ends decides what the caller is told about the body. A body with a
/// length is whole when that many bytes came, so a backend that then closes without TLS
/// `close_notify` (common at keep-alive timeouts) still answers 200 with every byte, and
/// the next request gets a new backend connection. A body that ends where the connection
/// ends is whole only if the backend said so with `close_notify`: without it the bytes
/// could have been cut short by anyone on the path, so the caller's transfer is left
/// incomplete (or, when the cut comes before the agent's answer left it, answered 502)
/// instead of being passed off as the whole body.
#[test]
fn a_body_the_backend_ends_without_close_notify_is_never_passed_off_as_whole() {
    let dir = TempDir::new("http-tls-close");
    let (mut server, port, http, agent_token, caller) = ingress(&dir);
    let ca = Ca::new("culvert test CA");
    let ca_pem = dir.join("ca.pem");
    ca.write_pem(&ca_pem);
    let raw = raw_tls_backend(ca.server_config(&["localhost"]));
    let config = dir.join("agent.toml");
    write_config(
        &config,
        port,
        &agent_token,
        &[("raw", format!("https://localhost:{raw}"), Some(&ca_pem))],
    );
    let mut agent = start_agent_via(&config);
    let bearer = format!("Authorization: Bearer {caller}");
    let base = format!("http://{http}/t/acme/raw");
    let out = dir.join("body.bin");
    let want = raw_body();
    let fetch = |path: &str| curl_to_file_checked(&["-H", &bearer, &format!("{base}{path}")], &out);
    assert!(
        poll_until(WAIT, || fetch("/length-abrupt").0 == 200),
        "raw never answered\n--- agent:\n{}\n--- server:\n{}",
        agent.log(),
        server.log()
    );

    for round in 0..3 {
        let got = fetch("/length-abrupt");
        assert_eq!(
            got,
            (200, RAW_BODY as u64, true),
            "length-abrupt, round {round}"
        );
        assert!(
            std::fs::read(&out).unwrap() == want,
            "length-abrupt body, round {round}"
        );

        let got = fetch("/close-clean");
        assert_eq!(
            got,
            (200, RAW_BODY as u64, true),
            "close-clean, round {round}\n{}",
            agent.log()
        );
        assert!(
            std::fs::read(&out).unwrap() == want,
            "close-clean body, round {round}"
        );

        // The agent may read the backend's head, its bytes and the bare close in one go and
        // end the tunnel stream before its own head went out: the server then answers 502
        // (seen under load in CI). Either way the caller is not told the body is whole.
        let (status, n, complete) = fetch("/close-abrupt");
        assert!(
            status != 200 || !complete,
            "a body without close_notify reached the caller as whole ({status}, {n} bytes), round {round}\n--- agent:\n{}",
            agent.log()
        );
        if status != 200 {
            assert_eq!(status, 502, "close-abrupt, round {round}");
        }
    }
    agent.kill();
    server.kill();
}
