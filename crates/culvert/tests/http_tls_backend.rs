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

/// An agent config (plain ws to the server) with one HTTP service per `(name, url, ca)`,
/// each adding the credential from the environment.
fn write_config(path: &Path, port: u16, token: &Path, services: &[(&str, String, Option<&Path>)]) {
    let mut text = format!(
        "[agent]\nserver = \"ws://127.0.0.1:{port}\"\ntoken_file = {:?}\npool = 1\n",
        token.display().to_string()
    );
    for (name, url, ca) in services {
        text += &format!(
            "\n[[agent.service]]\nname = \"{name}\"\nurl = \"{url}\"\n\
             inject_headers = {{ Authorization = \"env:ERP_TOKEN\" }}\n"
        );
        if let Some(ca) = ca {
            text += &format!("ca = {:?}\n", ca.display().to_string());
        }
    }
    std::fs::write(path, text).unwrap();
}

/// `curl` writing the body to `out`: (status, bytes received).
fn curl_to_file(args: &[&str], out: &Path) -> (u16, u64) {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(out)
        .args(["-w", "%{http_code} %{size_download}"])
        .args(args)
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0));
    (it.next().unwrap_or(0) as u16, it.next().unwrap_or(0))
}

#[test]
fn https_backends_are_verified_with_the_services_ca_and_carry_bodies_both_ways() {
    let dir = TempDir::new("http-tls-backend");
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let http = format!("127.0.0.1:{}", free_port());
    let (mut server, port) = start_server(&tokens, &["--insecure-plain", "--http-listen", &http]);
    server
        .try_wait_line("http ingress ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

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
