//! A cluster of three real `culvert server` processes sharing one registry in a real
//! PostgreSQL, with a real haproxy in front of their public ports, all on loopback and
//! started here: PostgreSQL by `support::pg` (initdb and postgres as the postgres user),
//! haproxy from Debian's package (`scripts/test.sh` installs it).
//!
//! The servers share the public port range, so every server binds the same port for a
//! service; each binds its public ports on its own loopback address (127.0.0.2, .3, .4),
//! as three machines would, and haproxy listens on 127.0.0.1. Some tests start fewer
//! servers, or give each its HTTP ingress on a port of its own.
//!
//! Figures printed: how long a revocation took to close the sessions on every server, the
//! failover time after a SIGKILL, and how many connections failed meanwhile.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::pg::*;
use support::*;

/// Heartbeat of the test servers in the database: a dead one is noticed within two.
const HEARTBEAT: &str = "500ms";

/// The public address of server `i` (0-based).
fn public_ip(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

/// One server of the test cluster.
struct Node {
    proc: Proc,
    listen: u16,
    admin: u16,
    id: String,
    /// The HTTP ingress's port, when the cluster was started with one per server.
    http: Option<u16>,
}

/// PostgreSQL and the servers (the agents are each test's own).
struct Cluster {
    _pg: Postgres,
    url: String,
    range: String,
    nodes: Vec<Node>,
    dir: TempDir,
    /// `RUST_LOG` of the servers, when not the tests' default.
    rust_log: Option<String>,
    /// Each server also runs the HTTP ingress (`--http-listen`, plain, on 127.0.0.1).
    http: bool,
}

impl Cluster {
    fn start(name: &str, servers: usize) -> Cluster {
        Cluster::start_logging(name, servers, None)
    }

    /// [`Cluster::start`] with the servers logging by `rust_log`.
    fn start_logging(name: &str, servers: usize, rust_log: Option<&str>) -> Cluster {
        Cluster::start_with(name, servers, rust_log, false)
    }

    /// [`Cluster::start_logging`], each server also running the HTTP ingress if `http`.
    fn start_with(name: &str, servers: usize, rust_log: Option<&str>, http: bool) -> Cluster {
        let pg = Postgres::start(&pg_bindir());
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
        let range = port_range();
        let dir = TempDir::new(name);
        let mut c = Cluster {
            _pg: pg,
            url,
            range,
            nodes: Vec::new(),
            dir,
            rust_log: rust_log.map(str::to_owned),
            http,
        };
        for i in 0..servers {
            let node = c.spawn_node(i, free_port(), free_port());
            c.nodes.push(node);
        }
        c
    }

    /// Starts server `i` on `listen` with its admin listener on `admin`; waits until ready.
    fn spawn_node(&self, i: usize, listen: u16, admin: u16) -> Node {
        let id = format!("s{}", i + 1);
        let mut cmd = culvert();
        if let Some(filter) = &self.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd.args(["server", "--listen", &format!("127.0.0.1:{listen}")])
            .args(["--insecure-plain", "--port-range", &self.range])
            .args(["--public-bind", &public_ip(i)])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--cluster", &self.url, "--cluster-id", &id])
            .args(["--cluster-heartbeat", HEARTBEAT]);
        let http = self.http.then(free_port);
        if let Some(p) = http {
            cmd.args(["--http-listen", &format!("127.0.0.1:{p}")]);
        }
        let mut proc = Proc::spawn(&format!("culvert server {id}"), &mut cmd);
        proc.try_wait_line("tunnel endpoint ready", 0, WAIT)
            .unwrap_or_else(|e| panic!("{id} did not start: {e}"));
        if http.is_some() {
            proc.try_wait_line("http ingress ready", 0, WAIT)
                .unwrap_or_else(|e| panic!("{id}'s HTTP ingress did not start: {e}"));
        }
        Node {
            proc,
            listen,
            admin,
            id,
            http,
        }
    }

    /// A token made with `culvert token new --cluster`, written to a file for an agent.
    fn token(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = run(
            culvert()
                .args(["token", "new", "--name", name, "--cluster", &self.url])
                .args(extra),
            WAIT,
        );
        assert!(
            out.status.success(),
            "token new --cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let path = self.dir.join(&format!("{name}.token"));
        std::fs::write(&path, token).unwrap();
        path
    }

    fn revoke(&self, name: &str) {
        let out = run(
            culvert().args(["token", "revoke", name, "--cluster", &self.url]),
            WAIT,
        );
        assert!(
            out.status.success(),
            "token revoke --cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `sql` on the registry's database, as the servers' user.
    fn sql(&self, sql: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .expect("a plain connection to the registry's database");
            tokio::spawn(conn);
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    }

    fn url_of(&self, i: usize) -> String {
        format!("ws://127.0.0.1:{}", self.nodes[i].listen)
    }

    /// Agent sessions (tunnel connections) server `i` holds for token `name`.
    fn connections_of(&self, i: usize, name: &str) -> usize {
        let Some((200, body)) = admin_get(self.nodes[i].admin, "/api/sessions") else {
            return 0;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["token"] == name)
            .map(|s| s["connections"].as_u64().unwrap_or(0) as usize)
            .sum()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} log:\n{}", n.id, n.proc.log()))
            .collect()
    }
}

/// An agent exposing an echo service as `echo` through the servers `urls`.
fn agent(token: &Path, urls: &[String], extra: &[&str]) -> (Proc, u16) {
    let echo = echo_service();
    let mut args: Vec<String> = Vec::new();
    for u in urls {
        args.push("--server".into());
        args.push(u.clone());
    }
    args.extend([
        "--token-file".into(),
        token.display().to_string(),
        "--expose".into(),
        format!("echo=tcp://127.0.0.1:{echo}"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    start_agent(&args, "echo")
}

/// An echo round trip of `msg` through `addr`: everything read back after a half-close.
fn echo_at(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(msg)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// A message of `len` bytes that shows misordering and loss.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Waits until an echo through `a` works byte-exact (the servers learn of a service
/// within a heartbeat or a notification).
fn reachable(a: SocketAddr, c: &Cluster) {
    let msg = pattern(64 << 10, 7);
    let ok = poll_until(WAIT, || echo_at(a, &msg).is_ok_and(|got| got == msg));
    assert!(ok, "no byte-exact echo through {a}\n{}", c.logs());
}

/// haproxy in TCP mode on 127.0.0.1:`front`, round robin over `backends`, with health
/// checks every 200 ms (a server down is skipped after two failed checks, and a
/// connection refused is retried on another server).
struct Haproxy {
    proc: Proc,
    front: u16,
}

impl Haproxy {
    fn start(dir: &Path, backends: &[SocketAddr]) -> Haproxy {
        let front = free_port();
        let mut cfg = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\
             frontend culvert\n  bind 127.0.0.1:{front}\n  default_backend servers\n\
             backend servers\n  balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!(
                "  server s{} {b} check inter 200ms fall 2 rise 1\n",
                i + 1
            ));
        }
        let proc = start_haproxy(dir, &cfg, front);
        Haproxy { proc, front }
    }

    fn addr(&self) -> SocketAddr {
        addr("127.0.0.1", self.front)
    }

    fn log(&self) -> String {
        format!("--- haproxy log:\n{}", self.proc.log())
    }
}

/// An agent connected to one server only: its service is served on the same public port
/// by all three servers (the other two forward to the first), byte-exact, and through
/// haproxy in front of them. A reconnecting agent keeps its port cluster-wide.
#[test]
fn an_agent_on_one_server_is_reached_through_every_server() {
    let c = Cluster::start("cluster-forward", 3);
    let token = c.token("agent", &[]);
    let (mut a, port) = agent(&token, &[c.url_of(0)], &[]);
    for i in 0..3 {
        reachable(addr(&public_ip(i), port), &c);
    }
    let backends: Vec<SocketAddr> = (0..3).map(|i| addr(&public_ip(i), port)).collect();
    let lb = Haproxy::start(c.dir.path(), &backends);
    for k in 0..30u8 {
        let msg = pattern(16 << 10, k);
        let got = echo_at(lb.addr(), &msg)
            .unwrap_or_else(|e| panic!("connection {k} through haproxy: {e}\n{}", c.logs()));
        assert!(got == msg, "connection {k} through haproxy: not byte-exact");
    }
    // Bulk through a forwarding server, both ways, byte-exact.
    let big = pattern(8 << 20, 3);
    let got = echo_at(addr(&public_ip(2), port), &big).expect("bulk through s3");
    assert!(
        got == big,
        "8 MiB through s3 (forwarded to s1): not byte-exact"
    );

    // The agent comes back (a new process, same token): the same port on every server.
    a.kill();
    let (_a2, port2) = agent(&token, &[c.url_of(1)], &[]);
    assert_eq!(
        port2, port,
        "a returning agent keeps its port across the cluster"
    );
    for i in 0..3 {
        reachable(addr(&public_ip(i), port), &c);
    }
    drop(lb);
}

/// A token is accepted by every server as soon as it is in the registry, not once each
/// server has heard of it: here the registry's notifications for tokens are switched off
/// after the servers listen for them, so only a server that re-reads the registry before
/// refusing an unknown token lets the agents in. (Before that re-read, an agent dialing right
/// after `culvert token new --cluster` was refused by any server whose notification was
/// still on the way, and stayed away from it for its longest backoff, 60 s: CI's failure of
/// `a_killed_server_fails_over_to_the_others` on 2026-12-04.)
#[test]
fn a_token_is_accepted_by_every_server_once_it_is_in_the_registry() {
    let mut c = Cluster::start_logging(
        "cluster-fresh-token",
        3,
        Some("info,culvert_cluster::listen=debug"),
    );
    // Each server listens for changes, and has re-read the tokens as it began to (the read
    // that covers what changed before): from here on, only a notification or a re-read of
    // its own tells it of a new token.
    for n in &mut c.nodes {
        n.proc
            .try_wait_line("listening for changes", 0, WAIT)
            .unwrap_or_else(|e| panic!("{} does not listen for changes: {e}", n.id));
    }
    c.sql("ALTER TABLE culvert_tokens DISABLE TRIGGER culvert_tokens_notify");
    let token = c.token("fresh", &[]);
    let mut agents = Vec::new();
    for i in 0..3 {
        // An agent that exits at a refused token, so a refusal fails the test at once.
        agents.push(agent(&token, &[c.url_of(i)], &["--exit-on-auth-failure"]));
        let ok = poll_until(WAIT, || c.connections_of(i, "fresh") > 0);
        assert!(
            ok,
            "server {i} holds no session of the fresh token\n{}",
            c.logs()
        );
    }
    // A wrong token is still refused (after its re-read).
    let mut p = wrong_token_agent(&c, 1, "wrong");
    assert_refused(&mut p);
}

/// The HTTP ingress checks callers' tokens as the handshake does: a caller token made a
/// moment ago (its notification not delivered: the trigger is disabled) is found by a
/// re-read of the registry, not refused; a wrong one is still refused.
#[test]
fn the_http_ingress_accepts_a_caller_token_made_a_moment_ago() {
    let mut c = Cluster::start_with(
        "cluster-http-caller",
        2,
        Some("info,culvert_cluster::listen=debug"),
        true,
    );
    for n in &mut c.nodes {
        n.proc
            .try_wait_line("listening for changes", 0, WAIT)
            .unwrap_or_else(|e| panic!("{} does not listen for changes: {e}", n.id));
    }
    let agent_token = c.token("erp-agent", &["--tenant", "acme"]);
    let caller_args = ["--tenant", "web", "--role", "http", "--access", "acme/erp"];
    let known = std::fs::read_to_string(c.token("caller-known", &caller_args)).unwrap();
    let backend = http_backend();
    let config = c.dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nserver = \"{}\"\ntoken_file = {:?}\npool = 1\n\n\
             [[agent.service]]\nname = \"erp\"\nurl = \"http://127.0.0.1:{backend}/\"\n",
            c.url_of(1),
            agent_token.display().to_string()
        ),
    )
    .unwrap();
    let agent = Proc::spawn(
        "culvert agent (http service)",
        culvert().args(["agent", "--config"]).arg(&config),
    );
    let http = c.nodes[1].http.unwrap();
    let ok = poll_until(WAIT, || {
        ingress_status(http, "/t/acme/erp/x", &known) == 200
    });
    assert!(
        ok,
        "the service never answered a known caller\n{}",
        c.logs()
    );
    c.sql("ALTER TABLE culvert_tokens DISABLE TRIGGER culvert_tokens_notify");
    let fresh = std::fs::read_to_string(c.token("caller-fresh", &caller_args)).unwrap();
    assert_eq!(
        ingress_status(http, "/t/acme/erp/x", &fresh),
        200,
        "a caller token made a moment ago was refused\n{}--- agent log:\n{}",
        c.logs(),
        agent.log()
    );
    assert_eq!(
        ingress_status(http, "/t/acme/erp/x", "cvt_not_a_token_of_this_registry"),
        401,
        "a wrong caller token was not refused"
    );
}

/// A backend that answers every HTTP request with 200 `ok` and closes.
fn http_backend() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

/// The status of `GET path` on the ingress at `port` with `token` as the caller's bearer
/// token (0 if there was no answer). HTTP/1.1 with `Connection: close`, not `admin_get`'s
/// HTTP/1.0: through the ingress, HTTP/1.0 requests drew a 502 now and then (left open,
/// see the closing note of 2026-12-05).
fn ingress_status(port: u16, path: &str, token: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: ingress\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// An agent with one connection to server `i` and a token no server knows (file `NAME.token`),
/// exiting at the refusal.
fn wrong_token_agent(c: &Cluster, i: usize, name: &str) -> Proc {
    let wrong = c.dir.join(&format!("{name}.token"));
    std::fs::write(&wrong, format!("cvt_not_a_token_of_this_registry_{name}")).unwrap();
    Proc::spawn(
        &format!("culvert agent ({name})"),
        culvert()
            .arg("agent")
            .args(["--server", &c.url_of(i), "--token-file"])
            .arg(&wrong)
            .args(["--expose", "x=tcp://127.0.0.1:9", "--exit-on-auth-failure"])
            .args(["--pool", "1"]),
    )
}

/// `p` (a [`wrong_token_agent`]) was refused: it exited, and not with success.
fn assert_refused(p: &mut Proc) {
    let refused = poll_until(WAIT, || p.exited().is_some());
    assert!(refused, "an agent with a wrong token was not refused");
    assert!(
        !p.exited().unwrap().success(),
        "an agent with a wrong token exited with success:\n{}",
        p.log()
    );
}

/// A burst of Auths with tokens no server knows costs the registry at most five reads a
/// second (`culvert_cluster_token_rereads{cause="unknown_token"}`), however many Auths there
/// are: each waits for a re-read that began after it missed, and those re-reads are spaced
/// 200 ms apart, so the Auths of one spacing share one read. Nine agents with wrong tokens
/// and one connection each, from one address: below its lockout threshold (ten failures a
/// minute), so each Auth reaches the token check.
#[test]
fn a_burst_of_unknown_tokens_costs_the_registry_few_reads() {
    let c = Cluster::start("cluster-unknown-burst", 1);
    let admin = c.nodes[0].admin;
    let reads = || {
        admin_get(admin, "/metrics").and_then(|(_, body)| {
            metric(
                &body,
                "culvert_cluster_token_rereads_total{cause=\"unknown_token\"}",
            )
        })
    };
    assert_eq!(reads(), Some(0), "unknown-token reads before any Auth");
    const WRONG: usize = 9;
    let start = Instant::now();
    let mut agents: Vec<Proc> = (0..WRONG)
        .map(|i| wrong_token_agent(&c, 0, &format!("wrong{i}")))
        .collect();
    for p in &mut agents {
        assert_refused(p);
    }
    let span = start.elapsed();
    let n = reads().expect("no unknown-token read count in /metrics");
    // The clustered server's families, this one with its four causes, are valid text.
    let (_, body) = admin_get(admin, "/metrics").expect("no /metrics");
    let families = exposition::assert_exposition("clustered server", &body);
    let rereads = families
        .get("culvert_cluster_token_rereads_total")
        .expect("no culvert_cluster_token_rereads_total family in /metrics");
    assert_eq!(rereads.kind, "counter");
    assert_eq!(rereads.samples.len(), 4, "one sample per cause");
    // One read per 200 ms of the burst, plus the first one and one that may start as the
    // last Auth misses.
    let bound = (span.as_millis() / 200) as u64 + 2;
    eprintln!("{WRONG} wrong tokens in {span:?}: {n} registry reads (bound {bound})");
    assert!(n >= 1, "no registry read for an unknown token");
    assert!(
        n <= bound,
        "{WRONG} wrong tokens in {span:?} made {n} registry reads (at most {bound})\n{}",
        c.logs()
    );
}

/// Revoking a token through the database (`culvert token revoke --cluster`) closes its
/// sessions on every server; prints how long that took.
#[test]
fn revoking_a_token_closes_its_sessions_on_every_server() {
    let c = Cluster::start("cluster-revoke", 3);
    let token = c.token("agent", &[]);
    let other = c.token("other", &[]);
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(agent(&token, &[c.url_of(i)], &[]));
    }
    let (_o, other_port) = agent(&other, &[c.url_of(0)], &[]);
    for i in 0..3 {
        let ok = poll_until(WAIT, || c.connections_of(i, "agent") > 0);
        assert!(ok, "server {i} has no session of the agent\n{}", c.logs());
    }
    let start = Instant::now();
    c.revoke("agent");
    let closed = poll_until(WAIT, || (0..3).all(|i| c.connections_of(i, "agent") == 0));
    let took = start.elapsed();
    assert!(closed, "sessions of the revoked token remain\n{}", c.logs());
    eprintln!("revocation closed the token's sessions on all 3 servers in {took:?}");
    // The other token's service is untouched, through every server.
    for i in 0..3 {
        reachable(addr(&public_ip(i), other_port), &c);
    }
}

/// An agent with the three servers and `--pool 6` spreads its connections over all three;
/// SIGKILL one server while clients make new connections through haproxy: the agent's
/// connections move to the other two, and the connections after the failover all succeed.
/// Prints the failover time (from the kill to the last failed connection) and the count of
/// failed connections.
#[test]
fn a_killed_server_fails_over_to_the_others() {
    let mut c = Cluster::start("cluster-failover", 3);
    let token = c.token("agent", &[]);
    let urls: Vec<String> = (0..3).map(|i| c.url_of(i)).collect();
    let (_a, port) = agent(&token, &urls, &["--pool", "6"]);
    // Spread: all six connected, and every server holds some (two each once every slot is
    // home; a slot whose first dial failed sits on another server until its home probe).
    let spread = poll_until(WAIT, || {
        let n: Vec<usize> = (0..3).map(|i| c.connections_of(i, "agent")).collect();
        n.iter().sum::<usize>() == 6 && n.iter().all(|k| *k >= 1)
    });
    let shares: Vec<usize> = (0..3).map(|i| c.connections_of(i, "agent")).collect();
    assert!(
        spread,
        "the agent's 6 connections are not spread over the three servers: {shares:?}\n{}",
        c.logs()
    );
    eprintln!("the agent's connections per server: {shares:?}");
    for i in 0..3 {
        reachable(addr(&public_ip(i), port), &c);
    }
    let backends: Vec<SocketAddr> = (0..3).map(|i| addr(&public_ip(i), port)).collect();
    let lb = Haproxy::start(c.dir.path(), &backends);
    let front = lb.addr();

    // New connections through haproxy, one after another, for a bounded count and time.
    let client = std::thread::spawn(move || {
        let mut results: Vec<(Instant, bool)> = Vec::new();
        let end = Instant::now() + Duration::from_secs(20);
        for k in 0..4000u32 {
            if Instant::now() >= end {
                break;
            }
            let msg = pattern(256, k as u8);
            let at = Instant::now();
            let ok = echo_at(front, &msg).is_ok_and(|got| got == msg);
            results.push((at, ok));
            std::thread::sleep(Duration::from_millis(5));
        }
        results
    });
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = Instant::now();
    c.nodes[0].proc.kill();
    // The agent's six connections end up on the two live servers (while the client runs).
    let moved = poll_until(WAIT, || {
        c.connections_of(1, "agent") + c.connections_of(2, "agent") == 6
    });
    let moved_after = killed_at.elapsed();
    let results = client.join().expect("client thread");

    let after: Vec<&(Instant, bool)> = results.iter().filter(|(t, _)| *t >= killed_at).collect();
    let failed = after.iter().filter(|(_, ok)| !ok).count();
    let last_failure = after.iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).max();
    let failover = last_failure.map_or(Duration::ZERO, |t| t - killed_at);
    let tail_ok = after.iter().rev().take_while(|(_, ok)| *ok).count();
    eprintln!(
        "SIGKILL of s1: {} connections before, {} after; {failed} failed; failover time {failover:?} (kill to last failure)",
        results.len() - after.len(),
        after.len()
    );
    // Connections before the kill are reported, not asserted: on a loaded 2-core machine
    // (three servers, PostgreSQL, haproxy, the agent and this client on two cores) one can
    // miss a deadline; what the failover must guarantee is the tail below.
    let failed_before = results[..results.len() - after.len()]
        .iter()
        .filter(|(_, ok)| !ok)
        .count();
    eprintln!("connections failed before the kill: {failed_before}");
    assert!(
        tail_ok >= 100 && tail_ok + failed <= after.len(),
        "after the failover only the last {tail_ok} connections succeeded ({failed} failed of {})\n{}{}",
        after.len(),
        c.logs(),
        lb.log()
    );
    assert!(
        moved,
        "the agent's connections did not move to s2 and s3\n{}",
        c.logs()
    );
    eprintln!("the agent's six connections were on s2 and s3 {moved_after:?} after the kill");
    drop(lb);
}

/// PostgreSQL stopped under load: established tunnels keep passing data and new clients
/// are still served and forwarded from each server's cache; a registration during the
/// outage fails with a clear error, and succeeds once PostgreSQL is back, with no restart
/// of any Culvert process.
#[test]
fn postgres_down_keeps_tunnels_and_registrations_resume_when_it_is_back() {
    let mut c = Cluster::start("cluster-pgdown", 2);
    let token = c.token("agent", &[]);
    let late = c.token("late", &[]);
    let (_a, port) = agent(&token, &[c.url_of(0)], &[]);
    for i in 0..2 {
        reachable(addr(&public_ip(i), port), &c);
    }
    // A long-lived connection through s2 (forwarded to s1's agent).
    let mut live = TcpStream::connect(addr(&public_ip(1), port)).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut echo_live = |k: u8| {
        let msg = pattern(32 << 10, k);
        live.write_all(&msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        live.read_exact(&mut got).unwrap();
        assert!(got == msg, "the live connection: not byte-exact");
    };
    echo_live(1);

    c._pg.stop();
    echo_live(2);
    for i in 0..2 {
        let msg = pattern(4096, 9);
        let got = echo_at(addr(&public_ip(i), port), &msg).unwrap_or_else(|e| {
            panic!(
                "new client through server {i} with PostgreSQL down: {e}\n{}",
                c.logs()
            )
        });
        assert!(got == msg);
    }
    // A registration now fails, saying why.
    let echo2 = echo_service();
    let mut late_agent = Proc::spawn(
        "culvert agent (late)",
        culvert().arg("agent").args([
            "--server",
            &c.url_of(1),
            "--token-file",
            &late.display().to_string(),
            "--expose",
            &format!("echo2=tcp://127.0.0.1:{echo2}"),
        ]),
    );
    let refused = late_agent
        .try_wait_match(
            &|l| l.contains("echo2") && l.contains("cluster registry"),
            "a registration refused by the cluster registry",
            0,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!("registration during the outage: {refused}");
    echo_live(3);

    c._pg.start_again();
    let port2 = public_port_of(&mut late_agent, "echo2", 0);
    for i in 0..2 {
        reachable(addr(&public_ip(i), port2), &c);
    }
    echo_live(4);
}

/// A token's `public_clients` hold on every server: a client not listed is refused on the
/// agent's own server and on one that forwards to it (checked where the token's session
/// is), and a listed one is served through both.
#[test]
fn public_clients_hold_on_the_agents_server_and_on_a_forwarding_one() {
    let c = Cluster::start("cluster-public-clients", 2);
    let token = c.token("agent", &["--public-client", "127.0.0.9"]);
    let (_a, port) = agent(&token, &[c.url_of(0)], &[]);
    let (listed, other) = (Ipv4Addr::new(127, 0, 0, 9), Ipv4Addr::LOCALHOST);
    let msg = pattern(4 << 10, 5);
    let echo_from = |source: Ipv4Addr, at: SocketAddr| -> Option<Vec<u8>> {
        let mut s = connect_from(source, at).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(&msg).ok()?;
        s.shutdown(std::net::Shutdown::Write).ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        Some(out)
    };
    for i in 0..2 {
        let at = addr(&public_ip(i), port);
        assert!(
            poll_until(WAIT, || echo_from(listed, at).as_ref() == Some(&msg)),
            "a listed client is served through server {i}\n{}",
            c.logs()
        );
        assert_ne!(
            echo_from(other, at).as_ref(),
            Some(&msg),
            "a client not listed is refused through server {i}"
        );
    }
}
