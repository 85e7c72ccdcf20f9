//! A black hole between agent and server in the middle of eight busy transfers: one pooled
//! connection's path goes silent both ways (sockets open, nothing forwarded), as behind a
//! partition or a NAT that dropped its mapping. With the driver whose timers waited behind
//! a blocked write, nobody noticed until the kernel gave up, about 15 minutes later.
//!
//! Figures asserted, all derived from the heartbeat interval `HB` (2 s here):
//! - both ends drop the dead connection within `2 HB + 1 s`;
//! - transfers caught on it are closed (not hung) within the same bound; the others carry on;
//! - new public connections made while the path is silent succeed on the other connection;
//! - after the heal there is exactly one session for the agent, with its pool complete.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use culvert_testkit::fault_relay::FaultRelay;
use support::faults::noticed;
use support::*;

const HB: Duration = Duration::from_secs(2);

/// One public client echoing through the tunnel as fast as it can, in both directions.
struct Busy {
    /// Bytes read back so far.
    read: Arc<AtomicU64>,
    /// When the connection ended (EOF or error), if it did.
    ended: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start(port: u16) -> Busy {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let read = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = s.try_clone().unwrap();
        let mut r = s;
        let (stop_w, stop_r) = (stop.clone(), stop.clone());
        let (read_c, ended_c) = (read.clone(), ended.clone());
        let writer = std::thread::spawn(move || {
            let chunk = vec![0x42u8; 16 << 10];
            // Bounded: stops at the flag, at an error, or after ~16 GiB.
            for _ in 0..1_000_000 {
                if stop_w.load(Ordering::Relaxed) {
                    return;
                }
                match w.write(&chunk) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while !stop_r.load(Ordering::Relaxed) {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        read_c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            if !stop_r.load(Ordering::Relaxed) {
                *ended_c.lock().unwrap() = Some(Instant::now());
            }
        });
        Busy {
            read,
            ended,
            stop,
            threads: vec![writer, reader],
        }
    }

    fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    fn ended(&self) -> Option<Instant> {
        *self.ended.lock().unwrap()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn black_hole_mid_transfer_is_noticed_and_survived() {
    let dir = TempDir::new("black-hole");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "agent")).unwrap();
    let hb = HB.as_secs().to_string();
    let server_admin = free_port();
    let (mut server, server_port) = start_server(
        &tokens,
        &[
            "--insecure-plain",
            "--heartbeat-interval",
            &hb,
            "--admin",
            &format!("127.0.0.1:{server_admin}"),
        ],
    );
    let relay = FaultRelay::start(([127, 0, 0, 1], server_port).into());
    let echo = echo_service();
    let agent_admin = free_port();
    let mut args = agent_args(
        relay.addr().port(),
        &token_file,
        &format!("echo=tcp://127.0.0.1:{echo}"),
    );
    args.extend(
        [
            "--pool",
            "2",
            "--heartbeat-interval",
            &hb,
            "--admin",
            &format!("127.0.0.1:{agent_admin}"),
        ]
        .map(String::from),
    );
    let (mut agent, public) = start_agent(&args, "echo");
    assert!(
        poll_until(WAIT, || admin_get(agent_admin, "/readyz")
            .is_some_and(|(c, _)| c == 200)),
        "agent never ready"
    );
    assert_eq!(
        relay.connections(),
        2,
        "both pooled connections go through the relay"
    );

    // Eight transfers, spread round-robin over the two connections.
    let busy: Vec<Busy> = (0..8).map(|_| Busy::start(public)).collect();
    assert!(
        poll_until(WAIT, || busy.iter().all(|b| b.read() >= 256 << 10)),
        "transfers did not get going"
    );

    let (server_from, agent_from) = (server.line_count(), agent.line_count());
    let t0 = Instant::now();
    assert!(relay.black_hole_conn(0), "relay connection 0 exists");
    let bound = 2 * HB + Duration::from_secs(1);

    // Both ends notice within the bound.
    let agent_took = noticed(
        &mut agent,
        &["tunnel connection lost"],
        agent_from,
        t0,
        3 * bound,
    );
    let server_took = noticed(
        &mut server,
        &["agent connection closed"],
        server_from,
        t0,
        3 * bound,
    );
    eprintln!("noticed: agent {agent_took:?}, server {server_took:?} (bound {bound:?})");
    assert!(agent_took <= bound, "agent noticed after {agent_took:?}");
    assert!(server_took <= bound, "server noticed after {server_took:?}");

    // New public connections made while the path is still silent work (the dead
    // connection is suspect, then gone; the other one, or a fresh one, takes them).
    for i in 0..5 {
        let msg = format!("during the black hole {i}");
        assert_eq!(
            echo_round_trip(public, msg.as_bytes()).unwrap(),
            msg.as_bytes(),
            "new connection {i} during the black hole"
        );
    }

    // Transfers caught on the dead connection were closed within the bound; the others
    // are still moving.
    let snapshot: Vec<u64> = busy.iter().map(Busy::read).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut closed = 0;
    for (i, b) in busy.iter().enumerate() {
        match b.ended() {
            Some(at) => {
                closed += 1;
                let took = at.duration_since(t0);
                assert!(took <= bound, "transfer {i} closed after {took:?}");
            }
            None => assert!(
                b.read() > snapshot[i],
                "transfer {i} neither closed nor moving: hung"
            ),
        }
    }
    eprintln!("transfers closed: {closed} of 8");
    assert!(
        closed >= 1,
        "some transfers ran on the black-holed connection"
    );
    assert!(closed < 8, "transfers on the healthy connection carried on");

    relay.heal();
    let sessions = || {
        admin_get(server_admin, "/api/sessions")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["sessions"].as_array().cloned())
            .unwrap_or_default()
    };
    assert!(
        poll_until(Duration::from_secs(10), || {
            let s = sessions();
            s.len() == 1 && s[0]["connections"] == 2
        }),
        "one session with both connections after the heal: {:?}",
        sessions()
    );
    assert!(
        poll_until(Duration::from_secs(10), || admin_get(
            agent_admin,
            "/readyz"
        )
        .is_some_and(|(c, _)| c == 200)),
        "agent ready after the heal"
    );
    drop(busy);
    drop(relay);
    agent.kill();
    server.kill();
}
