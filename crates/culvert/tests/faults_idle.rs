//! Ten thousand idle tunneled connections held for a minute, then each used once: every
//! one still works (no idle timeout, heartbeat or descriptor limit ends a quiet stream),
//! and the server's and agent's memory per idle connection is reported.
//!
//! `CULVERT_IDLE_CONNS` (default 10,000) and `CULVERT_IDLE_HOLD_SECS` (default 60) shrink it
//! for a quick run. The test raises its descriptor limit (it runs as root in CI; it says so
//! and fails if it cannot), and the server and agent it starts inherit it.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises RLIMIT_NOFILE to `want` (soft and hard); returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < want {
            let new = libc::rlimit {
                rlim_cur: want,
                rlim_max: want.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
                let soft = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// VmRSS in KiB, 0 once the process is gone.
fn rss_kib(pid: u32) -> u64 {
    support::faults::rss_kib(pid).unwrap_or(0)
}

#[test]
fn ten_thousand_idle_connections_held_then_each_used_once() {
    let count = env_or("CULVERT_IDLE_CONNS", 10_000) as usize;
    let hold = Duration::from_secs(env_or("CULVERT_IDLE_HOLD_SECS", 60));
    // Each process holds one socket per connection (this one the clients, the backend its
    // accepted sockets, the server its public ones, the agent its dials), plus slack.
    let want = count as u64 + 1024;
    let have = raise_nofile(want);
    assert!(
        have >= want,
        "this test needs {want} file descriptors per process (it raises its soft limit to \
         the hard one); the limit is {have}"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The echo backend runs in a process of its own (this test binary, re-run for the
    // backend test below): with the clients here, the backend's sockets would not fit
    // under the descriptor limit of one process.
    let portfile =
        std::env::temp_dir().join(format!("culvert-idle-backend-{}", std::process::id()));
    let _ = std::fs::remove_file(&portfile);
    let mut backend_proc = Proc::spawn(
        "idle echo backend",
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "idle_echo_backend", "--ignored", "--nocapture"])
            .env("CULVERT_IDLE_BACKEND_PORTFILE", &portfile),
    );
    assert!(
        poll_until(WAIT, || std::fs::read_to_string(&portfile)
            .is_ok_and(|p| p.ends_with('\n'))),
        "the echo backend did not start:\n{}",
        backend_proc.log()
    );
    let backend: std::net::SocketAddr = std::fs::read_to_string(&portfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = TempDir::new("idle-10k");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "agent")).unwrap();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let (mut agent, public) = start_agent(
        &agent_args(port, &token_file, &format!("echo=tcp://{backend}")),
        "echo",
    );
    let (server_before, agent_before) = (rss_kib(server.pid()), rss_kib(agent.pid()));

    // Open them all, each proven through the tunnel with one byte, 64 at a time.
    let started = Instant::now();
    let conns: Vec<TcpStream> = rt.block_on(async {
        let mut all = Vec::with_capacity(count);
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0;
        while all.len() < count {
            while next < count && pending.len() < 64 {
                next += 1;
                pending.spawn(async move {
                    let mut s = TcpStream::connect(("127.0.0.1", public)).await?;
                    s.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut b))
                        .await
                        .map_err(|_| std::io::Error::other("no echo within 30 s"))??;
                    Ok::<_, std::io::Error>(s)
                });
            }
            match pending.join_next().await {
                Some(Ok(Ok(s))) => all.push(s),
                Some(Ok(Err(e))) => panic!("connection {} failed: {e}", all.len()),
                Some(Err(e)) => panic!("task: {e}"),
                None => break,
            }
        }
        all
    });
    let opened = started.elapsed();
    let (server_held, agent_held) = (rss_kib(server.pid()), rss_kib(agent.pid()));
    let per = |after: u64, before: u64| (after.saturating_sub(before) * 1024) as f64 / count as f64;
    eprintln!(
        "{count} idle connections opened in {opened:?}; RSS server {server_before} -> {server_held} KiB ({:.0} B per connection), agent {agent_before} -> {agent_held} KiB ({:.0} B per connection)",
        per(server_held, server_before),
        per(agent_held, agent_before)
    );

    std::thread::sleep(hold);

    // Each used once more, after the hold.
    let failures = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut failures = 0usize;
        for (i, mut s) in conns.into_iter().enumerate() {
            if set.len() >= 256 {
                if let Some(Ok(false)) = set.join_next().await {
                    failures += 1;
                }
            }
            set.spawn(async move {
                let msg = format!("{i:016}");
                let mut back = [0u8; 16];
                let ok = async {
                    s.write_all(msg.as_bytes()).await?;
                    s.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                };
                matches!(
                    tokio::time::timeout(Duration::from_secs(30), ok).await,
                    Ok(Ok(()))
                ) && back == msg.as_bytes()
            });
        }
        while let Some(r) = set.join_next().await {
            if !matches!(r, Ok(true)) {
                failures += 1;
            }
        }
        failures
    });
    assert_eq!(
        failures,
        0,
        "{failures} of {count} idle connections failed after {hold:?}\n--- agent:\n{}",
        agent.log()
    );
    agent.kill();
    server.kill();
    backend_proc.kill();
    let _ = std::fs::remove_file(&portfile);
}

/// The echo backend of the test above, run by it as a child process (and skipped in a
/// normal run, where it has nothing to serve). Serves until killed, at most 30 minutes.
#[test]
#[ignore = "the echo backend process of ten_thousand_idle_connections_held_then_each_used_once"]
fn idle_echo_backend() {
    let Some(portfile) = std::env::var_os("CULVERT_IDLE_BACKEND_PORTFILE") else {
        return;
    };
    raise_nofile(65_536);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tmp = std::path::PathBuf::from(&portfile).with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", l.local_addr().unwrap())).unwrap();
        std::fs::rename(&tmp, &portfile).unwrap();
        let serve = async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30 * 60), serve).await;
    });
}
