//! An agent process killed (SIGKILL) in the middle of a transfer: the public connection is
//! closed rather than left hanging, the backend's connection ends too, and the restarted
//! agent (same token, same service name) gets the same public port back and serves again.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// Bytes the public client reads before the agent is killed: the transfer is well under way.
const BEFORE_KILL: usize = 512 << 10;

/// How long the public connection may stay open after the agent died.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// A backend that streams data to each connection, 16 KiB every 2 ms, until the peer goes
/// away; counts connections that ended.
fn endless_backend() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let ended = Arc::new(AtomicUsize::new(0));
    let counter = ended.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; 16 << 10];
                // Bounded: at most about an hour of streaming, far beyond any test.
                for _ in 0..2_000_000u32 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                counter.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (port, ended)
}

/// Reads from `s` until `want` bytes arrived (bounded by `WAIT`).
fn read_at_least(s: &mut TcpStream, want: usize) -> Result<(), String> {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    let mut buf = vec![0u8; 64 << 10];
    while got < want {
        if Instant::now() >= deadline {
            return Err(format!("only {got} of {want} bytes within {WAIT:?}"));
        }
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("EOF after {got} bytes")),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read failed after {got} bytes: {e}")),
        }
    }
    Ok(())
}

/// Fails the test with `what`, `e` and both logs.
fn fail(what: &str, e: &str, server: &Proc, agent: &Proc) -> ! {
    panic!(
        "{what}: {e}\n--- server log:\n{}\n--- agent log:\n{}",
        server.log(),
        agent.log()
    )
}

/// Reads until EOF or an error; fails the test if the connection is still open after `limit`.
fn expect_closed(s: &mut TcpStream, limit: Duration) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 64 << 10];
    let mut drained = 0usize;
    loop {
        assert!(
            Instant::now() < deadline,
            "the public connection is still open {limit:?} after the agent died ({drained} bytes drained)"
        );
        match s.read(&mut buf) {
            Ok(0) => return format!("EOF after draining {drained} bytes"),
            Ok(n) => drained += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return format!("{e} after draining {drained} bytes"),
        }
    }
}

#[test]
fn killed_agent_closes_public_connections_and_gets_its_port_back() {
    let dir = TempDir::new("agent-killed");
    let tokens = dir.join("tokens.toml");
    let token = new_token(&tokens, "edge");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (backend_port, backend_ended) = endless_backend();

    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let agent_args: Vec<String> = vec![
        "--server".into(),
        format!("ws://127.0.0.1:{port}"),
        "--token-file".into(),
        token_file.display().to_string(),
        "--expose".into(),
        format!("stream=tcp://127.0.0.1:{backend_port}"),
    ];
    let (mut agent, public) = start_agent(&agent_args, "stream");

    // Two public clients, both mid-transfer.
    let mut clients: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, public)).expect("connect"))
        .collect();
    for c in &mut clients {
        if let Err(e) = read_at_least(c, BEFORE_KILL) {
            fail("public client before the kill", &e, &server, &agent);
        }
    }

    agent.kill();
    for (i, c) in clients.iter_mut().enumerate() {
        let how = expect_closed(c, CLOSE_LIMIT);
        eprintln!("public client {i} closed after the agent was killed: {how}");
        // A reset, not an end of file: the client must be able to tell a transfer cut
        // short from a complete one.
        assert!(
            how.contains("reset"),
            "public client {i} saw a clean close, not a reset: {how}\n--- server:\n{}",
            server.log()
        );
    }
    // The agent's connections to the backend died with it.
    eventually(CLOSE_LIMIT, "both backend connections closed", || {
        let ended = backend_ended.load(Ordering::SeqCst);
        if ended >= 2 {
            Ok(())
        } else {
            Err(ended)
        }
    });
    assert!(
        server.exited().is_none(),
        "the server survived the agent's death"
    );

    // The restarted agent gets the same port back, and it serves again.
    let (mut agent, again) = start_agent(&agent_args, "stream");
    assert_eq!(
        again,
        public,
        "the restarted agent got another public port; server log:\n{}",
        server.log()
    );
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, again)).expect("connect again");
    if let Err(e) = read_at_least(&mut c, BEFORE_KILL) {
        fail("public client after the restart", &e, &server, &agent);
    }
    drop(c);
    agent.stop_with("-TERM", WAIT);
    server.stop_with("-TERM", WAIT);
}
