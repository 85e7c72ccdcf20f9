//! Lifecycle of real processes: SIGTERM during a transfer that finishes within the grace
//! loses no byte and the server exits as soon as the stream is done; SIGHUP after removing
//! a token closes that agent's session for good while another agent is untouched.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A backend that, per connection, sends `total` bytes in 64 KiB chunks every 40 ms, then closes.
fn slow_source(total: usize) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(8) {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut sent = 0;
                while sent < total {
                    let n = (64 << 10).min(total - sent);
                    let chunk: Vec<u8> = (sent..sent + n).map(|i| (i % 253) as u8).collect();
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                    sent += n;
                    std::thread::sleep(Duration::from_millis(40));
                }
            });
        }
    });
    port
}

#[test]
fn sigterm_lets_a_transfer_finish_within_the_grace_then_exits() {
    const TOTAL: usize = 2 << 20;
    let dir = TempDir::new("sigterm");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "node")).unwrap();
    let backend = slow_source(TOTAL);
    let (mut server, port) = start_server(&tokens, &["--insecure-plain", "--grace", "60"]);
    let (_agent, public) = start_agent(
        &agent_args(port, &token_file, &format!("src=tcp://127.0.0.1:{backend}")),
        "src",
    );
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, public)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = vec![0u8; 64 << 10];
    c.read_exact(&mut got).unwrap();
    // Mid-transfer (the source needs about 1.3 s in all): ask the server to stop.
    let term_at = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the stream finishes after SIGTERM");
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), TOTAL, "every byte arrives");
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8),
        "bytes in order"
    );
    // The client is done too: the stream is now finished in both directions.
    drop(c);
    // The server exits once the stream is done, long before the 60 s grace.
    let status = server
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("server did not exit after draining:\n{}", server.log()));
    assert!(status.success(), "clean exit: {status:?}\n{}", server.log());
    assert!(term_at.elapsed() < Duration::from_secs(30));
    assert!(
        server.log().contains("all streams finished"),
        "{}",
        server.log()
    );
}

#[test]
fn sighup_after_removing_a_token_closes_that_session_only() {
    let dir = TempDir::new("sighup");
    let tokens = dir.join("tokens.toml");
    let keep_file = dir.join("keep.token");
    let drop_file = dir.join("drop.token");
    std::fs::write(&keep_file, new_token(&tokens, "keep")).unwrap();
    let before_drop = std::fs::read_to_string(&tokens).unwrap();
    std::fs::write(&drop_file, new_token(&tokens, "gone")).unwrap();

    let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming().take(16) {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let (_keep, keep_public) = start_agent(
        &agent_args(port, &keep_file, &format!("a=tcp://127.0.0.1:{echo_port}")),
        "a",
    );
    let (mut gone, _) = start_agent(
        &agent_args(port, &drop_file, &format!("b=tcp://127.0.0.1:{echo_port}")),
        "b",
    );
    let echo_once = |p: u16| -> bool {
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, p)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut b = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"hello"
    };
    assert!(echo_once(keep_public));

    // Remove the token "gone" (the file as it was before it was added), then SIGHUP.
    let from = server.line_count();
    std::fs::write(&tokens, before_drop).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status();
    server.wait_line("tokens reloaded", from, WAIT);
    server.wait_line("token revoked", from, WAIT);
    // The revoked agent is refused from now on; the other keeps working.
    gone.wait_line("server refused the token", 0, WAIT);
    assert!(echo_once(keep_public), "the other agent is untouched");
    server.stop_with("-INT", WAIT);
}
