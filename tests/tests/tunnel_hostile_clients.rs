//! Garbage-speaking clients on the control port (random bytes at every stage, oversize
//! upgrade requests, handshakes that stall at every stage) do not disturb a working agent:
//! during and after them, transfers through it succeed byte-exact, and the server still
//! takes new agents. Every stalled handshake is closed by the server (2 s deadline here).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's handshake deadline in these tests.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a hostile connection may stay open: the deadline and a generous margin.
const CLOSE_LIMIT: Duration = Duration::from_secs(15);

/// Latest a stalled handshake may be closed, counted from its connect, for the deadline to
/// count as what closed it: twice the deadline and 4 s for a loaded two-core machine.
const DEADLINE_BOUND: Duration = Duration::from_secs(HANDSHAKE_TIMEOUT.as_secs() * 2 + 4);

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// Writes `data`, ignoring errors (the server may close first), then checks that the
/// server closes the connection.
async fn send_and_expect_close<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    data: &[u8],
    what: &str,
) {
    let _ = tokio::time::timeout(CLOSE_LIMIT, async {
        let _ = s.write_all(data).await;
        let _ = s.flush().await;
    })
    .await;
    let _ = wait_closed(&mut s, CLOSE_LIMIT, what).await;
}

async fn tcp(server: &TestServer) -> TcpStream {
    within(WAIT, "connect", TcpStream::connect(server.handle.addr))
        .await
        .expect("connect to the control port")
}

async fn tls(server: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    within(WAIT, "TLS handshake", tls_connect(server))
        .await
        .expect("TLS handshake")
}

async fn upgraded(server: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = tls(server).await;
    within(
        WAIT,
        "upgrade",
        rawws::upgrade(&mut s, &server.handle.addr.to_string()),
    )
    .await
    .expect("upgrade");
    s
}

/// Handshakes that stop half-way at each stage; the server must close every one. Returns,
/// for each, what it was and how long after its TCP connect the server closed it.
async fn stalled_handshakes(server: &TestServer) -> Vec<(&'static str, Duration)> {
    let host = server.handle.addr.to_string();
    let request = rawws::upgrade_request(&host, "");
    let half_request = request.as_bytes()[..request.len() / 2].to_vec();
    // An Auth frame header claiming 100 bytes, with 10 of them.
    let mut half_auth = vec![0x01, 0, 0, 0, 100];
    half_auth.extend_from_slice(&[0u8; 10]);

    let nothing = async {
        let what = "TCP connection that sends nothing";
        let opened = Instant::now();
        let s = tcp(server).await;
        send_and_expect_close(s, b"", what).await;
        (what, opened.elapsed())
    };
    let half_hello = async {
        let what = "half a ClientHello";
        let opened = Instant::now();
        let s = tcp(server).await;
        // A TLS handshake record header announcing 512 bytes, then silence.
        send_and_expect_close(s, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], what).await;
        (what, opened.elapsed())
    };
    let half_upgrade = async {
        let what = "half an upgrade request";
        let opened = Instant::now();
        let s = tls(server).await;
        send_and_expect_close(s, &half_request, what).await;
        (what, opened.elapsed())
    };
    let no_auth = async {
        let what = "WebSocket that never sends Auth";
        let opened = Instant::now();
        let s = upgraded(server).await;
        send_and_expect_close(s, b"", what).await;
        (what, opened.elapsed())
    };
    let partial_auth = async {
        let what = "half an Auth frame";
        let opened = Instant::now();
        let mut s = upgraded(server).await;
        // The first 15 bytes of an Auth frame of 105, in a WebSocket message that never
        // ends. (Sent as a whole message, it is judged at once: a malformed Auth, refused
        // without waiting for the deadline.)
        let _ = rawws::send_unfinished_binary(&mut s, &half_auth).await;
        send_and_expect_close(s, b"", what).await;
        (what, opened.elapsed())
    };
    let (a, b, c, d, e) = tokio::join!(nothing, half_hello, half_upgrade, no_auth, partial_auth);
    vec![a, b, c, d, e]
}

/// Random bytes at every stage, and oversize upgrade requests.
async fn garbage(server: &TestServer) {
    let host = server.handle.addr.to_string();
    for _ in 0..5 {
        let s = tcp(server).await;
        send_and_expect_close(s, &random_bytes(64 << 10), "random bytes instead of TLS").await;
    }
    for _ in 0..3 {
        let s = tls(server).await;
        send_and_expect_close(s, &random_bytes(16 << 10), "random bytes instead of HTTP").await;
    }
    for _ in 0..3 {
        let s = upgraded(server).await;
        send_and_expect_close(s, &random_bytes(16 << 10), "random bytes instead of frames").await;
    }
    // Over 64 KiB of headers in a complete request: refused, never upgraded.
    let pad: String = (0..80)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "a".repeat(1000)))
        .collect();
    let big = rawws::upgrade_request(&host, &pad);
    assert!(big.len() > 64 << 10);
    let mut s = tls(server).await;
    let _ = tokio::time::timeout(CLOSE_LIMIT, s.write_all(big.as_bytes())).await;
    let mut answer = Vec::new();
    let _ = within(CLOSE_LIMIT, "answer to an oversize upgrade", async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while answer.len() < 64 << 10 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    eprintln!(
        "oversize upgrade request ({} bytes) answered with {:?}",
        big.len(),
        answer.lines().next().unwrap_or("nothing (closed)")
    );
    assert!(
        !answer.starts_with("HTTP/1.1 101"),
        "an oversize upgrade request was accepted: {answer}"
    );
    // One endless header line: refused as soon as it passes the limit.
    let mut endless = b"GET /tunnel/v1 HTTP/1.1\r\nX-Endless: ".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 256 << 10));
    let s = tls(server).await;
    send_and_expect_close(s, &endless, "an endless header line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_control_port_does_not_disturb_a_working_agent() {
    let server = start_server(|c| c.handshake_timeout = HANDSHAKE_TIMEOUT).await;
    let backend = spawn_exchange_backend().await;
    let agent = server.agent(&[("work", backend)]).await;
    let port = public_port(&agent, "work");

    let hostile_done = Arc::new(AtomicBool::new(false));
    let traffic = {
        let done = hostile_done.clone();
        async move {
            // Transfers for as long as the hostile clients go on (bounded), at least two.
            let mut n = 0u64;
            while n < 2 || (!done.load(Ordering::SeqCst) && n < 200) {
                exchange(port, MIB, 100 + n)
                    .await
                    .unwrap_or_else(|e| panic!("transfer {n} during the garbage failed: {e}"));
                n += 1;
            }
            n
        }
    };
    let hostile = {
        let done = hostile_done.clone();
        let server = &server;
        async move {
            tokio::join!(stalled_handshakes(server), garbage(server));
            done.store(true, Ordering::SeqCst);
        }
    };
    let (transfers, ()) = within(BULK_LIMIT, "garbage alongside transfers", async {
        tokio::join!(traffic, hostile)
    })
    .await;
    eprintln!("{transfers} transfers of 1 MiB each way succeeded during the garbage");

    // Afterwards: the agent is intact, a bigger transfer works, and a new agent gets in.
    assert_eq!(
        agent.connections_up(),
        4,
        "the working agent lost no connection"
    );
    assert_eq!(server.handle.sessions().len(), 1, "no session from garbage");
    let len = (e2e_bytes() / 16).max(MIB);
    within(
        BULK_LIMIT,
        "transfer after the garbage",
        exchange(port, len, 7),
    )
    .await
    .unwrap_or_else(|e| panic!("transfer after the garbage failed: {e}"));
    let second = server.agent(&[("second", backend)]).await;
    within(
        WAIT,
        "transfer through a new agent",
        exchange(public_port(&second, "second"), MIB, 8),
    )
    .await
    .unwrap_or_else(|e| panic!("transfer through a new agent failed: {e}"));
}

/// The stalled handshakes alone, each checked to be closed by the server's deadline: by
/// the server (it counts each as a failed handshake), not before the deadline (the server
/// starts the clock at accept, after the client's connect began, so this cannot flake),
/// and well before anything else would close them ([`DEADLINE_BOUND`]: twice the deadline
/// and a margin for a loaded machine; the next closer, the connection's idle timeout, is
/// tens of seconds away). It used to accept 15 s for the 2 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_by_the_deadline() {
    let server = start_server(|c| c.handshake_timeout = HANDSHAKE_TIMEOUT).await;
    let failed = || metric(&server.handle.metrics(), "culvert_handshakes_failed_total");
    let failed_before = failed().expect("a handshakes_failed counter");
    let closed = within(
        Duration::from_secs(60),
        "stalled handshakes",
        stalled_handshakes(&server),
    )
    .await;
    for (what, after) in &closed {
        eprintln!("{what}: closed by the server {after:.1?} after connecting");
        assert!(
            *after >= HANDSHAKE_TIMEOUT,
            "{what}: closed {after:?} after connecting, before the {HANDSHAKE_TIMEOUT:?} \
             handshake deadline: something other than the deadline closed it"
        );
        assert!(
            *after <= DEADLINE_BOUND,
            "{what}: still open {after:?} after connecting, far past the \
             {HANDSHAKE_TIMEOUT:?} handshake deadline"
        );
    }
    eventually_async(WAIT, "the server to count 5 failed handshakes", || async {
        let n = failed().unwrap_or(0).saturating_sub(failed_before);
        if n >= 5 {
            Ok(n)
        } else {
            Err(n)
        }
    })
    .await;
    // The endpoint still works.
    let backend = spawn_exchange_backend().await;
    let agent = server.agent(&[("after", backend)]).await;
    exchange(public_port(&agent, "after"), MIB, 1)
        .await
        .unwrap();
}
