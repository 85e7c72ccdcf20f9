//! The admin listener of real server and agent processes: after a known transfer the byte
//! counters in `/metrics` equal the bytes sent, exactly; the agent's `/readyz` fails within
//! two heartbeat intervals of the server being killed and recovers when it returns;
//! `culvert status` prints the session.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use support::*;

#[test]
fn metrics_count_exact_bytes_and_readyz_follows_the_server() {
    let dir = TempDir::new("admin");
    let tokens = dir.join("tokens.toml");
    let token = new_token(&tokens, "node");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, &token).unwrap();

    // An echo backend.
    let backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in backend.incoming().take(16) {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });

    let server_admin = free_port();
    let (mut server, port) = start_server(
        &tokens,
        &[
            "--insecure-plain",
            "--admin",
            &format!("127.0.0.1:{server_admin}"),
        ],
    );
    let agent_admin = free_port();
    let agent_args: Vec<String> = vec![
        "--server".into(),
        format!("ws://127.0.0.1:{port}"),
        "--token-file".into(),
        token_file.display().to_string(),
        "--expose".into(),
        format!("echo=tcp://127.0.0.1:{backend_port}"),
        "--heartbeat-interval".into(),
        "1".into(),
        "--admin".into(),
        format!("127.0.0.1:{agent_admin}"),
    ];
    let (_agent, public) = start_agent(&agent_args, "echo");
    assert!(
        poll_until(WAIT, || admin_get(agent_admin, "/readyz")
            .is_some_and(|(c, _)| c == 200)),
        "agent never ready"
    );
    assert_eq!(
        admin_get(server_admin, "/healthz").map(|(c, _)| c),
        Some(200)
    );

    // A known transfer: 3,000,001 bytes each way.
    const N: usize = 3_000_001;
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, public)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = c.try_clone().unwrap();
        std::thread::spawn(move || {
            w.write_all(&payload).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), N);

    let counted = |dir: &str| {
        admin_get(server_admin, "/metrics").and_then(|(_, b)| {
            metric(&b, &format!("culvert_service_bytes_total{{service=\"echo\",token=\"node\",direction=\"{dir}\"}}"))
        })
    };
    assert!(
        poll_until(WAIT, || counted("in") == Some(N as u64)
            && counted("out") == Some(N as u64)),
        "byte counters: in {:?}, out {:?}, expected {N}",
        counted("in"),
        counted("out")
    );
    let (_, metrics) = admin_get(server_admin, "/metrics").unwrap();
    assert!(
        metric(&metrics, "culvert_stream_open_seconds_count").is_some_and(|n| n >= 1),
        "stream-open latency observed:\n{metrics}"
    );
    // Both ends say which datagram queue dropped (none here: no UDP service).
    let (_, agent_metrics) = admin_get(agent_admin, "/metrics").unwrap();
    for (who, body) in [("server", &metrics), ("agent", &agent_metrics)] {
        for dir in ["send", "recv"] {
            let name = format!("culvert_datagrams_dropped_total{{direction=\"{dir}\"}}");
            assert_eq!(metric(body, &name), Some(0), "{who}: {name} in:\n{body}");
        }
    }
    let (_, sessions) = admin_get(server_admin, "/api/sessions").unwrap();
    assert!(sessions.contains("\"token\": \"node\""), "{sessions}");
    assert!(!sessions.contains(&token), "the token never appears");
    let status = run(
        culvert().args([
            "status",
            "--admin",
            &format!("http://127.0.0.1:{server_admin}"),
        ]),
        WAIT,
    );
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && table.contains("echo=tcp/"),
        "{table}"
    );

    // Kill the server: the agent's readiness drops within two heartbeat intervals (2 s here;
    // the check allows scheduling slack but no more than a few intervals).
    server.kill();
    assert!(
        poll_until(Duration::from_secs(4), || admin_get(agent_admin, "/readyz")
            .is_some_and(|(c, _)| c == 503)),
        "agent still ready after the server died"
    );
    // Bring a server back on the same port: the agent reconnects by itself and is ready again.
    let mut back_server = spawn_server(&tokens, port, &["--insecure-plain"]);
    back_server
        .try_wait_line("tunnel endpoint ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        poll_until(Duration::from_secs(30), || admin_get(
            agent_admin,
            "/readyz"
        )
        .is_some_and(|(c, _)| c == 200)),
        "agent did not recover"
    );
}
