//! Refusals with real sockets and real TLS on loopback: wrong, missing and malformed tokens;
//! a server certificate with another fingerprint, from an unknown CA, or expired. Each is
//! refused with a clear message in the logs, leaves no session on the server and no
//! connection in the agent, and no token ever appears in the logs (captured at TRACE level,
//! dependencies included).

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use culvert_agent::{Agent, AgentConfig, AgentHandle};
use culvert_proto::{Control, Token};
use culvert_server::tokens::generate_token;
use culvert_transport::tls::{ServerTls, Verify};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use support::*;
use tracing_subscriber::filter::LevelFilter;

/// The tests whose agents are refused for their token take turns, so each can count the
/// refusal messages its own agents log.
static TOKEN_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a refused agent gets to (wrongly) come up.
const REFUSED_WAIT: Duration = Duration::from_secs(4);

// ---- log capture ------------------------------------------------------------------------

#[derive(Clone)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, from every thread, at every level.
fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf(Arc::default());
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(LevelFilter::TRACE)
            .try_init()
            .expect("install the log subscriber");
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Waits (bounded) until the logs contain `needle`; fails with the logs otherwise.
async fn expect_log(needle: &str) {
    let what = format!("a log line containing {needle:?}");
    eventually_async(WAIT, &what, || async {
        let logs = log_text();
        if logs.contains(needle) {
            Ok(())
        } else {
            Err(culvert_testkit::Text(tail(&logs).to_owned()))
        }
    })
    .await
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(8000);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    &s[start..]
}

fn assert_secret_absent(secret: &str) {
    assert!(!secret.is_empty());
    let logs = log_text();
    let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
    assert!(
        leaks.is_empty(),
        "a token appears in {} log lines, first:\n{}",
        leaks.len(),
        leaks[0]
    );
}

// ---- helpers ----------------------------------------------------------------------------

/// Spawns an agent that must be refused, and checks it is: never ready, no connection up,
/// no session on the server.
async fn assert_refused(server: &TestServer, config: AgentConfig) -> AgentHandle {
    let agent = Agent::spawn(config).expect("spawn the agent");
    assert!(
        !agent.wait_ready(REFUSED_WAIT).await,
        "a refused agent came up"
    );
    assert_eq!(
        agent.connections_up(),
        0,
        "a refused agent has no connection"
    );
    assert!(
        server.handle.sessions().is_empty(),
        "the server holds no session for a refused agent: {:?}",
        server.handle.sessions()
    );
    agent
}

/// One pooled connection and a short first backoff: a few quick attempts.
fn refused_config(server: &TestServer, backend: std::net::SocketAddr) -> AgentConfig {
    let mut c = server.agent_config(&[("svc", backend)]);
    c.pool = 1;
    c.backoff_min = Duration::from_millis(500);
    c
}

/// A server whose Auth-failure rate limit does not get in the way of counting refusals.
async fn lenient_server() -> TestServer {
    start_server(|c| c.max_auth_failures = 1000).await
}

// ---- tokens -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_missing_and_malformed_tokens_are_refused() {
    logs();
    let _turn = TOKEN_TESTS.lock().await;
    let server = lenient_server().await;
    let backend = spawn_exchange_backend().await;
    let wrong = generate_token();
    let malformed = "cvt_not hex at all, with spaces and ünïcödé".to_owned();
    let long = format!("cvt_{}", "a".repeat(4000));
    for (what, token) in [
        ("wrong", wrong.as_str()),
        ("missing (empty)", ""),
        ("malformed", malformed.as_str()),
        ("oversized", long.as_str()),
    ] {
        let before = log_text()
            .matches("server refused the token: authentication failed")
            .count();
        let mut config = refused_config(&server, backend);
        config.token = token.to_owned();
        let agent = assert_refused(&server, config).await;
        agent.shutdown();
        let after = log_text()
            .matches("server refused the token: authentication failed")
            .count();
        assert!(
            after > before,
            "{what} token: the agent logged no clear refusal; logs:\n{}",
            tail(&log_text())
        );
    }
    // The server is fine: the right token gets in, and the pool comes up.
    let agent = server.agent(&[("svc", backend)]).await;
    assert_eq!(server.handle.sessions().len(), 1);
    exchange(public_port(&agent, "svc"), 64 << 10, 1)
        .await
        .unwrap();
    agent.shutdown();
    for secret in [&server.token, &wrong, &malformed, &long] {
        assert_secret_absent(secret);
    }
}

/// What the server answers to one raw first WebSocket message (a hand-written client, so
/// no client library logs the token), then checks that the server closes.
async fn raw_auth_answer(server: &TestServer, first: Vec<u8>) -> Vec<u8> {
    let mut s = within(WAIT, "TLS handshake", tls_connect(server))
        .await
        .expect("TLS handshake");
    within(
        WAIT,
        "WebSocket upgrade",
        rawws::upgrade(&mut s, &server.handle.addr.to_string()),
    )
    .await
    .expect("WebSocket upgrade");
    rawws::send_binary(&mut s, &first).await.unwrap();
    let answer = loop {
        let (opcode, payload) = within(WAIT, "the server's answer", rawws::read_frame(&mut s))
            .await
            .expect("a frame from the server");
        match opcode {
            0x2 => break payload,
            0x9 | 0xA => continue, // ping, pong
            other => panic!("expected a binary AuthFail, got opcode {other:#x}: {payload:?}"),
        }
    };
    // Then the server closes: a Close frame, EOF or an error, whatever comes first.
    within(WAIT, "the server closing after AuthFail", async {
        for _ in 0..16 {
            match rawws::read_frame(&mut s).await {
                Ok((0x8, _)) | Err(_) => return,
                Ok(_) => continue,
            }
        }
        panic!("the server kept the connection open after AuthFail");
    })
    .await;
    answer
}

fn auth_frame(token: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    Control::Auth {
        token: Token(token.to_owned()),
        client_id: uuid::Uuid::new_v4(),
        ext: None,
    }
    .encode(&mut b)
    .unwrap();
    b.to_vec()
}

/// Missing, malformed and wrong tokens get the very same answer, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answer_for_missing_malformed_and_wrong_auth() {
    logs();
    let server = lenient_server().await;
    let wrong = generate_token();
    let mut expected = BytesMut::new();
    Control::AuthFail {
        reason: "authentication failed".into(),
    }
    .encode(&mut expected)
    .unwrap();

    let mut truncated = auth_frame(&wrong);
    truncated.truncate(20); // header claims more than follows
    let mut lying = vec![0x01, 0, 0, 0, 3, 0xff, 0xff, 0]; // token_len 65535 in a 3-byte payload
    lying.extend_from_slice(&[0; 16]);
    let not_auth = {
        let mut b = BytesMut::new();
        Control::Heartbeat { timestamp: 1 }.encode(&mut b).unwrap();
        b.to_vec()
    };
    for (what, first) in [
        ("wrong token", auth_frame(&wrong)),
        ("missing token", auth_frame("")),
        ("truncated Auth", truncated),
        ("Auth with a lying length", lying),
        ("no Auth (a Heartbeat first)", not_auth),
        (
            "random bytes",
            (0..200).map(|_| rand::random::<u8>()).collect(),
        ),
    ] {
        let answer = raw_auth_answer(&server, first).await;
        assert_eq!(answer, expected.to_vec(), "{what}: the one AuthFail answer");
    }
    assert!(server.handle.sessions().is_empty());
    assert_secret_absent(&wrong);
    assert_secret_absent(&server.token);
}

// ---- certificates -----------------------------------------------------------------------

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_path: PathBuf,
}

fn make_ca(dir: &TempDir, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pem_path = dir.path().join(format!("{name}.pem"));
    std::fs::write(&pem_path, issuer.pem()).unwrap();
    Ca { issuer, pem_path }
}

/// A server identity for 127.0.0.1 issued by `ca`; valid now, or only during 2020 if `expired`.
fn leaf(dir: &TempDir, ca: &Ca, tag: &str, expired: bool) -> ServerTls {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "culvert test server");
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let cert_path = dir.path().join(format!("{tag}.crt"));
    let key_path = dir.path().join(format!("{tag}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    ServerTls::from_pem(&cert_path, &key_path).expect("load the server identity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_with_another_fingerprint_is_refused() {
    logs();
    let server = start_server(|_| {}).await;
    let backend = spawn_exchange_backend().await;
    let other = ServerTls::self_signed(&["127.0.0.1".into()]).unwrap();
    assert_ne!(other.fingerprint, server.fingerprint);
    let mut config = refused_config(&server, backend);
    config.verify = Verify::Fingerprint(other.fingerprint.clone());
    let agent = assert_refused(&server, config).await;
    expect_log(&format!(
        "server certificate fingerprint {} does not match the pinned {}",
        server.fingerprint, other.fingerprint
    ))
    .await;
    agent.shutdown();
    assert_secret_absent(&server.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_an_unknown_ca_is_refused() {
    logs();
    let dir = TempDir::new("unknown-ca");
    let ca = make_ca(&dir, "culvert-test-ca");
    let stranger = make_ca(&dir, "some-other-ca");
    let server = start_server_with_tls(leaf(&dir, &ca, "server", false), |_| {}).await;
    let backend = spawn_exchange_backend().await;

    let mut config = refused_config(&server, backend);
    config.verify = Verify::CaFile(stranger.pem_path.clone());
    let agent = assert_refused(&server, config).await;
    expect_log("invalid peer certificate: UnknownIssuer").await;
    agent.shutdown();

    // The certificate itself is fine: with its own CA the agent gets in.
    let mut config = server.agent_config(&[("svc", backend)]);
    config.verify = Verify::CaFile(ca.pem_path.clone());
    let agent = Agent::spawn(config).unwrap();
    assert!(
        agent.wait_ready(WAIT).await,
        "the agent trusting the right CA came up"
    );
    agent.shutdown();
    assert_secret_absent(&server.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    logs();
    let dir = TempDir::new("expired");
    let ca = make_ca(&dir, "culvert-test-ca");
    let server = start_server_with_tls(leaf(&dir, &ca, "expired", true), |_| {}).await;
    let backend = spawn_exchange_backend().await;

    let mut config = refused_config(&server, backend);
    config.verify = Verify::CaFile(ca.pem_path.clone());
    let agent = assert_refused(&server, config).await;
    expect_log("invalid peer certificate: certificate expired").await;
    agent.shutdown();
    assert_secret_absent(&server.token);
}

/// A refused agent does not disturb the server for others: it keeps serving on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_agents_leave_a_working_agent_alone() {
    logs();
    let _turn = TOKEN_TESTS.lock().await;
    let server = lenient_server().await;
    let backend = spawn_exchange_backend().await;
    let good = server.agent(&[("good", backend)]).await;
    let port = public_port(&good, "good");
    let mut config = refused_config(&server, backend);
    config.token = generate_token();
    let bad_token = config.token.clone();
    let bad = Agent::spawn(config).unwrap();
    // While the bad agent keeps retrying, traffic flows through the good one.
    for seed in 0..3 {
        exchange(port, 256 << 10, seed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(bad.connections_up(), 0);
    assert_eq!(server.handle.sessions().len(), 1);
    assert_eq!(good.connections_up(), 4);
    // The bad agent did dial and was refused: it says so, and the server counted it (this
    // test used to pass even if the bad agent never reached the server).
    let refusal = eventually_async(WAIT, "the bad agent's refusal", || async {
        bad.last_error()
            .filter(|e| e.contains("server refused the token"))
            .ok_or(bad.last_error())
    })
    .await;
    eprintln!("the bad agent was refused: {refusal}");
    let refused = metric(&server.handle.metrics(), "culvert_auth_failures_total");
    assert!(
        refused >= Some(1),
        "the server counted no Auth failure (culvert_auth_failures_total {refused:?})"
    );
    bad.shutdown();
    assert_secret_absent(&bad_token);
    assert_secret_absent(&server.token);
}
