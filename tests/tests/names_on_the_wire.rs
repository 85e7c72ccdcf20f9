//! Item 5 of issue 13: a peer that registers a service name with control characters (here a
//! plain zlayer-tunnel v1 agent, which checks nothing) is refused with a clear reason, and
//! neither that reason nor the server's log carries the raw characters.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use culvert_server::{Server, ServerConfig, TokenStore};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use zlayer_tunnel::client::{ControlEvent, TunnelAgent};
use zlayer_tunnel::config::{ServiceConfig, TunnelClientConfig};

mod support;

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

/// Every log line of this test binary.
fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf(Arc::default());
        let writer = buf.clone();
        // The server's lines only: the v1 client logs the name raw itself (the peer's log).
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(Targets::new().with_target("culvert_server", LevelFilter::DEBUG));
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .expect("one subscriber");
        buf
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_with_control_characters_is_refused_and_logged_escaped() {
    let logs = logs();
    let token = "cvt_names-on-the-wire-test-token";
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), support::port_range());
    config.public_bind = "127.0.0.1".parse().unwrap();
    let server = Server::bind(config, TokenStore::from_tokens(&[("v1", token)]), None)
        .await
        .unwrap()
        .spawn()
        .unwrap();

    // ESC [2J clears a terminal; the newline would forge a second log line.
    let evil = "we\u{1b}[2Jb\nINFO forged line";
    let mut client = TunnelClientConfig::new(format!("ws://{}/tunnel/v1", server.addr), token);
    client.services.push(ServiceConfig::tcp(evil, 22));
    client.services.push(ServiceConfig::tcp("fine", 80));
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let agent = TunnelAgent::new(client).with_event_channel(tx);
    let run = tokio::spawn(async move { agent.run_once().await });

    let (mut refused, mut registered) = (None, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refused.is_none() || registered.is_empty() {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("v1 agent events within 20 s")
            .expect("event channel open");
        match ev {
            ControlEvent::ServiceRegistered { name, .. } => registered.push(name),
            ControlEvent::ServiceFailed { name, reason } => {
                // The v1 agent pairs replies with its Registers by order; say what came.
                assert_eq!(
                    name, evil,
                    "refused: {reason:?}; registered so far: {registered:?}"
                );
                refused = Some(reason);
            }
            ControlEvent::Disconnected { reason } => panic!("disconnected: {reason}"),
            _ => {}
        }
    }
    run.abort();
    let reason = refused.unwrap();
    assert_eq!(registered, ["fine"], "a valid name is still registered");
    assert!(
        reason.contains("must be 1 to 64 bytes of A-Z a-z 0-9 . _ -"),
        "unclear reason: {reason:?}"
    );
    assert!(
        !reason.chars().any(|c| c.is_control()),
        "the reason echoes raw control characters: {reason:?}"
    );
    assert!(!server.ports().contains_key(&format!("v1/{evil}")));

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("registration refused"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.lines().any(|l| l.starts_with("INFO forged")),
        "the peer's name reached the server's log raw:\n{text}"
    );
    assert!(text.contains(r"we\u{1b}[2Jb\nINFO forged line"), "{text}");
}
