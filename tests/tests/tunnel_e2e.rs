//! End-to-end behaviour of a real tunnel on loopback (server and agent in process, `wss://`
//! with a pinned self-signed certificate): half-close in both directions, and a backend that
//! refuses connections while another service of the same agent keeps working.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long a refused or finished connection may stay open before it counts as hung.
const PROMPT: Duration = Duration::from_secs(5);

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(seed).fill(&mut v);
    v
}

/// The client sends a request and shuts its write side; the backend reads to EOF, only then
/// answers (after a pause), and closes. The whole answer arrives, then EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_client_first_then_backend_answers() {
    const REQUEST: usize = 1 << 20;
    const ANSWER: usize = 3 << 20;
    let backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                if s.read_to_end(&mut request).await.is_err() {
                    return;
                }
                // The answer depends on the whole request, so it can only follow its EOF.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let digest = Sha256::digest(&request);
                let mut answer = digest.to_vec();
                answer.extend_from_slice(&(request.len() as u64).to_be_bytes());
                answer.extend_from_slice(&pattern(ANSWER, 99));
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let server = start_server(|_| {}).await;
    let agent = server.agent(&[("half", backend_addr)]).await;
    let port = public_port(&agent, "half");

    for round in 0..3u64 {
        let request = pattern(REQUEST, round);
        let mut c = within(
            WAIT,
            "connect",
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        )
        .await
        .unwrap();
        within(WAIT, "send the request", c.write_all(&request))
            .await
            .unwrap();
        c.shutdown().await.unwrap();
        let mut answer = Vec::new();
        within(
            WAIT,
            "read the whole answer to EOF",
            c.read_to_end(&mut answer),
        )
        .await
        .unwrap();
        assert_eq!(
            answer.len(),
            32 + 8 + ANSWER,
            "round {round}: whole answer, then EOF"
        );
        assert_eq!(
            &answer[..32],
            Sha256::digest(&request).as_slice(),
            "the backend saw the whole request"
        );
        assert_eq!(&answer[32..40], &(REQUEST as u64).to_be_bytes());
        assert!(answer[40..] == pattern(ANSWER, 99), "answer byte-exact");
    }
}

/// The other direction: the backend sends a greeting and shuts its write side first; the
/// client sees EOF, then keeps sending; the backend receives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_backend_first_then_client_keeps_sending() {
    const GREETING: usize = 256 << 10;
    const UPLOAD: usize = 2 << 20;
    let backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (report_tx, report_rx) = oneshot::channel::<std::io::Result<Vec<u8>>>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = backend.accept().await else {
            return;
        };
        let r = async {
            s.write_all(&pattern(GREETING, 5)).await?;
            s.shutdown().await?;
            let mut upload = Vec::new();
            s.read_to_end(&mut upload).await?;
            Ok(upload)
        }
        .await;
        let _ = report_tx.send(r);
    });
    let server = start_server(|_| {}).await;
    let agent = server.agent(&[("upload", backend_addr)]).await;
    let port = public_port(&agent, "upload");

    let mut c = within(
        WAIT,
        "connect",
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await
    .unwrap();
    let mut greeting = Vec::new();
    within(
        WAIT,
        "read the greeting to EOF",
        c.read_to_end(&mut greeting),
    )
    .await
    .unwrap();
    assert!(greeting == pattern(GREETING, 5), "greeting byte-exact");
    // Our read side is at EOF; our write side is still open and must still carry data.
    let upload = pattern(UPLOAD, 6);
    within(WAIT, "upload after EOF", c.write_all(&upload))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let received = within(WAIT, "backend report", report_rx)
        .await
        .expect("backend task ended without a report")
        .expect("backend read the upload");
    assert_eq!(received.len(), UPLOAD, "the backend got the whole upload");
    assert!(received == upload, "upload byte-exact");
    // Both directions are finished: the public connection closes cleanly.
    assert_eq!(
        wait_closed(&mut c, PROMPT, "finished connection")
            .await
            .unwrap(),
        0
    );
}

/// A service whose target refuses connections: each public client is closed promptly,
/// without data, while a transfer through another service of the same agent runs
/// concurrently and completes byte-exact; the agent's pool stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_closes_client_and_spares_other_streams() {
    let bulk_len = (e2e_bytes() / 16).max(MIB);
    let bulk = spawn_exchange_backend().await;
    let dead = dead_addr().await;
    let server = start_server(|_| {}).await;
    let agent = server.agent(&[("bulk", bulk), ("dead", dead)]).await;
    let bulk_port = public_port(&agent, "bulk");
    let dead_port = public_port(&agent, "dead");

    let done = Arc::new(AtomicBool::new(false));
    let transfer = {
        let done = done.clone();
        async move {
            let r = exchange(bulk_port, bulk_len, 42).await;
            done.store(true, Ordering::SeqCst);
            r
        }
    };
    let refusals = {
        let done = done.clone();
        async move {
            // At least 10 refused clients, and more for as long as the transfer runs (bounded).
            let mut n = 0u32;
            while n < 10 || (!done.load(Ordering::SeqCst) && n < 500) {
                let connected = within(
                    WAIT,
                    "connect to the refusing service",
                    TcpStream::connect((Ipv4Addr::LOCALHOST, dead_port)),
                )
                .await;
                // The refusal (a reset) may arrive before the connect returns.
                let mut c = match connected {
                    Ok(c) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => panic!("the public port accepts: {e}"),
                };
                // Data sent before the refusal must not keep the connection alive either.
                let _ = c.write_all(b"hello?").await;
                // A clean EOF or a reset: closed either way, and without data.
                if let Ok(bytes) = wait_closed(&mut c, PROMPT, "client of a refusing backend").await
                {
                    assert_eq!(bytes, 0, "no data from a refused backend");
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        }
    };
    let (r, refused) = within(BULK_LIMIT, "transfer alongside refusals", async {
        tokio::join!(transfer, refusals)
    })
    .await;
    r.unwrap_or_else(|e| panic!("transfer beside the refused backend failed: {e}"));
    eprintln!(
        "{refused} refused clients closed while {} MiB went each way",
        bulk_len / MIB
    );
    assert_eq!(
        agent.connections_up(),
        4,
        "refusals do not cost connections"
    );
    within(
        BULK_LIMIT,
        "transfer afterwards",
        exchange(bulk_port, MIB, 43),
    )
    .await
    .unwrap_or_else(|e| panic!("transfer after the refusals failed: {e}"));
}

/// Public clients that arrive while the agent is still registering are served: the server
/// must not route a stream to a pooled connection whose agent has not finished registering
/// on it. (Today the agent takes such a Connect as a protocol error, drops that connection
/// and the client is closed without data.) Many services widen the window: each pooled
/// connection registers them one by one, and clients of the first one arrive meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_arriving_while_the_pool_comes_up_are_served() {
    const ROUNDS: usize = 5;
    const CLIENTS: u64 = 16;
    const SERVICES: usize = 32;
    let backend = spawn_exchange_backend().await;
    let names: Vec<String> = (0..SERVICES).map(|i| format!("s{i}")).collect();
    let services: Vec<(&str, std::net::SocketAddr)> =
        names.iter().map(|n| (n.as_str(), backend)).collect();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let server = start_server(|_| {}).await;
        let mut config = server.agent_config(&services);
        config.pool = 4;
        let agent = culvert_agent::Agent::spawn(config).expect("spawn the agent");
        // The first moment the first service has a public port (bounded wait).
        let port = within(WAIT, "a public port", async {
            loop {
                if let Some(p) = agent.ports().get("s0").copied().filter(|p| *p != 0) {
                    break p;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(exchange(port, 64 << 10, i)))
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            match within(WAIT, "early client", c).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("round {round}, client {i}: {e}")),
                Err(e) => failures.push(format!("round {round}, client {i}: task {e}")),
            }
        }
        agent.shutdown();
    }
    assert!(
        failures.is_empty(),
        "{} of {} early clients failed:\n{}",
        failures.len(),
        ROUNDS as u64 * CLIENTS,
        failures.join("\n")
    );
}
