//! Node-to-node tunnels: two `culvert node` processes on loopback, each accepting the
//! other as a peer. A real PostgreSQL sits behind node B; `pgbench` runs through a forward
//! tunnel configured on A (A listens, B dials PostgreSQL) and through a reverse tunnel
//! configured on B (A's port, B dials PostgreSQL). Also: allow-list refusals and a peer
//! restart with the backoff visible in the status.

mod support;

use std::path::Path;
use std::time::Duration;

use support::pg::*;
use support::*;

/// A node process and what the test needs to know about it.
struct NodeProc {
    proc: Proc,
    listen: u16,
    admin: u16,
}

/// Writes `config` (TOML) under `dir` and starts `culvert node` on it; waits until it accepts peers.
fn start_node(dir: &Path, name: &str, config: &str) -> NodeProc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut proc = Proc::spawn(
        &format!("culvert node {name}"),
        culvert().args(["node", "--config"]).arg(&path),
    );
    proc.wait_line("node running", 0, WAIT);
    let listen = config_port(config, "listen = \"127.0.0.1:");
    let admin = config_port(config, "admin = \"127.0.0.1:");
    NodeProc {
        proc,
        listen,
        admin,
    }
}

/// The port after `prefix` in a config text.
fn config_port(config: &str, prefix: &str) -> u16 {
    let i = config.find(prefix).expect(prefix) + prefix.len();
    config[i..].split('"').next().unwrap().parse().unwrap()
}

/// A scratch dir where nodes a and b each accept the other (each one's token file lists
/// the peer; the peer's token is in `a-to-b.token` / `b-to-a.token`), and four free ports
/// (a's listener and admin, b's listener and admin).
fn two_nodes(tag: &str) -> (TempDir, [u16; 4]) {
    let dir = TempDir::new(tag);
    for (from, to) in [("a", "b"), ("b", "a")] {
        let token = new_token_with(
            &dir.join(&format!("{to}-tokens.toml")),
            &format!("node-{from}"),
            &["--role", "agent,node"],
        );
        std::fs::write(dir.join(&format!("{from}-to-{to}.token")), token).unwrap();
    }
    (dir, [free_port(), free_port(), free_port(), free_port()])
}

/// The first port of the `port_range` in a config text.
fn range_start(config: &str) -> u16 {
    let prefix = "port_range = \"";
    let i = config.find(prefix).expect("port_range") + prefix.len();
    config[i..].split('-').next().unwrap().parse().unwrap()
}

/// `[node]` of a node on `listen` with its tokens, port range, allow-list and admin listener.
fn node_section(dir: &Path, name: &str, listen: u16, admin: u16, allow: &[String]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"[node]
name = "{name}"
listen = "127.0.0.1:{listen}"
insecure_plain = true
tokens = "{tokens}"
port_range = "{range}"
public_bind = "127.0.0.1"
allow = [{allow}]
admin = "127.0.0.1:{admin}"
"#,
        tokens = dir.join(format!("{name}-tokens.toml")).display(),
        range = port_range(),
        allow = allow.join(", "),
    )
}

fn tunnel(
    name: &str,
    peer: u16,
    token_file: &Path,
    direction: &str,
    listen: &str,
    target: &str,
) -> String {
    format!(
        r#"
[[tunnel]]
name = "{name}"
peer = "ws://127.0.0.1:{peer}/"
token_file = "{token}"
direction = "{direction}"
listen = "{listen}"
target = "{target}"
"#,
        token = token_file.display(),
    )
}

/// `culvert status --json` of a node: its tunnels.
fn tunnels(admin: u16) -> Vec<serde_json::Value> {
    let out = run(
        culvert().args(["status", "--json", "--admin", &format!("127.0.0.1:{admin}")]),
        WAIT,
    );
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(v["role"], "node");
    v["tunnels"].as_array().cloned().unwrap_or_default()
}

/// Polls the status of `tunnel` on the node at `admin` until `pred` holds (bounded).
fn wait_tunnel(
    admin: u16,
    tunnel: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(WAIT, &format!("tunnel {tunnel} to become {what}"), || {
        let all = tunnels(admin);
        match all.iter().find(|t| t["name"] == tunnel) {
            Some(t) if pred(t) => Ok(t.clone()),
            _ => Err(all),
        }
    })
}

fn pgbench_through(pgbench: &Path, port: u16, label: &str) -> String {
    let (ok, out, err) = pg_client(
        pgbench,
        port,
        &["-c", "4", "-t", "200", "postgres"],
        PGBENCH_LIMIT,
    );
    assert!(ok, "pgbench through the {label} failed:\n{out}\n{err}");
    assert!(
        out.contains("number of transactions actually processed: 800/800"),
        "pgbench through the {label} did not complete:\n{out}"
    );
    eprintln!("pgbench -c 4 -t 200 through the {label}:");
    print_summary(&out);
    out
}

#[test]
fn pgbench_through_forward_and_reverse_node_tunnels() {
    let bindir = pg_bindir();
    let psql = client_program(&bindir, "psql");
    let pgbench = client_program(&bindir, "pgbench");
    let pg = Postgres::start(&bindir);
    let (dir, [a_listen, a_admin, b_listen, b_admin]) = two_nodes("node-pg");
    let pg_target = format!("127.0.0.1:{}", pg.port);

    // B: PostgreSQL's node. It dials PostgreSQL for A (allow-list), and exposes it on A
    // with a reverse tunnel.
    let a_range_cfg = node_section(dir.path(), "a", a_listen, a_admin, &[]);
    let reverse_port = range_start(&a_range_cfg) + 7;
    let b_cfg = node_section(
        dir.path(),
        "b",
        b_listen,
        b_admin,
        std::slice::from_ref(&pg_target),
    ) + &tunnel(
        "pg-reverse",
        a_listen,
        &dir.join("b-to-a.token"),
        "reverse",
        &reverse_port.to_string(),
        &pg_target,
    );
    let a_local = free_port();
    let a_cfg = a_range_cfg
        + &tunnel(
            "pg-forward",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            &format!("127.0.0.1:{a_local}"),
            &pg_target,
        );
    let a = start_node(dir.path(), "a", &a_cfg);
    let b = start_node(dir.path(), "b", &b_cfg);

    wait_tunnel(a.admin, "pg-forward", "connected", |t| {
        t["state"] == "connected"
    });
    let rev = wait_tunnel(b.admin, "pg-reverse", "registered", |t| {
        t["state"] == "connected" && t["listen"] == format!("peer port {reverse_port}")
    });
    eprintln!("reverse tunnel: {rev}");

    // Forward: A's local port → stream to B → B dials PostgreSQL.
    let (ok, out, err) = pg_client(&psql, a_local, &["-X", "-tA", "-c", "select 42"], WAIT);
    assert!(
        ok,
        "psql through the forward tunnel failed: {err}\n--- A:\n{}\n--- B:\n{}",
        a.proc.log(),
        b.proc.log()
    );
    assert_eq!(out.trim(), "42");
    let (ok, _, err) = pg_client(
        &pgbench,
        a_local,
        &["-i", "-s", "1", "postgres"],
        PGBENCH_LIMIT,
    );
    assert!(ok, "pgbench -i through the forward tunnel failed: {err}");
    pgbench_through(&pgbench, a_local, "forward tunnel");
    // Reverse: A's port (bound by A for B's registration) → stream to B → PostgreSQL.
    pgbench_through(&pgbench, reverse_port, "reverse tunnel");
    let (ok, out, err) = pg_client(
        &pgbench,
        pg.port,
        &["-c", "4", "-t", "200", "postgres"],
        PGBENCH_LIMIT,
    );
    assert!(ok, "direct pgbench failed: {out}{err}");
    eprintln!("pgbench -c 4 -t 200 directly, without a tunnel:");
    print_summary(&out);

    // The status carries real figures: round trip, bytes both ways, connections.
    let fwd = wait_tunnel(a.admin, "pg-forward", "counted", |t| {
        t["connections"].as_u64() >= Some(6)
    });
    assert!(fwd["rtt_ms"].as_f64().is_some(), "no round trip in {fwd}");
    assert!(
        fwd["bytes_to_target"].as_u64() > Some(10_000)
            && fwd["bytes_from_target"].as_u64() > Some(10_000),
        "{fwd}"
    );
    let rev = wait_tunnel(b.admin, "pg-reverse", "counted", |t| {
        t["connections"].as_u64() >= Some(4)
    });
    assert!(
        rev["bytes_to_target"].as_u64() > Some(10_000)
            && rev["bytes_from_target"].as_u64() > Some(10_000),
        "{rev}"
    );
    let table = run(
        culvert().args(["status", "--admin", &format!("127.0.0.1:{}", a.admin)]),
        WAIT,
    );
    eprintln!("{}", String::from_utf8_lossy(&table.stdout));
}

#[test]
fn targets_outside_the_allow_list_are_refused_and_peer_restart_recovers() {
    let echo = echo_service();
    let other = echo_service();
    let dir = TempDir::new("node-allow");
    std::fs::write(
        dir.join("a-to-b.token"),
        new_token_with(&dir.join("b-tokens.toml"), "node-a", &["--role", "node"]),
    )
    .unwrap();
    std::fs::write(dir.join("a-tokens.toml"), "").unwrap();
    let (b_listen, a_admin, b_admin) = (free_port(), free_port(), free_port());
    let (ok_port, bad_port) = (free_port(), free_port());
    // B allows only the first echo service; A has a tunnel to each.
    let b_cfg = node_section(
        dir.path(),
        "b",
        b_listen,
        b_admin,
        &[format!("127.0.0.1:{echo}")],
    );
    let a_cfg = format!("[node]\nname = \"a\"\nadmin = \"127.0.0.1:{a_admin}\"\n")
        + &tunnel(
            "allowed",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            &format!("127.0.0.1:{ok_port}"),
            &format!("127.0.0.1:{echo}"),
        )
        + &tunnel(
            "forbidden",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            &format!("127.0.0.1:{bad_port}"),
            &format!("localhost:{other}"),
        );
    let mut b = start_node(dir.path(), "b", &b_cfg);
    let mut a = start_node(dir.path(), "a", &a_cfg);
    wait_tunnel(a_admin, "allowed", "connected", |t| {
        t["state"] == "connected"
    });

    assert_eq!(echo_round_trip(ok_port, b"allowed").unwrap(), b"allowed");
    // The forbidden target (a name resolving to loopback, on a port B does not allow) is
    // refused by B after resolution; A's client sees its connection closed, both sides say why.
    let got = echo_round_trip(bad_port, b"forbidden");
    assert!(
        got.as_ref().map_or(true, |v| v.is_empty()),
        "forbidden target carried data: {got:?}"
    );
    b.proc
        .wait_line("is not in this node's allow-list", 0, WAIT);
    a.proc.wait_line("the peer refused", 0, WAIT);
    let t = wait_tunnel(a_admin, "forbidden", "refused", |t| {
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not allowed"))
    });
    eprintln!("forbidden tunnel status: {t}");

    // Peer restart: B goes away, A's tunnels back off (visible in status), and come back
    // by themselves when B returns on the same address.
    b.proc.kill();
    let t = wait_tunnel(a_admin, "allowed", "backing off", |t| {
        t["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("backing off"))
    });
    eprintln!("while B is down: {t}");
    let refused = echo_round_trip(ok_port, b"down");
    assert!(
        refused.as_ref().map_or(true, |v| v.is_empty()),
        "no tunnel, yet data came back: {refused:?}"
    );
    let b2 = start_node(dir.path(), "b", &b_cfg);
    assert_eq!(b2.listen, b.listen);
    wait_tunnel(a_admin, "allowed", "connected again", |t| {
        t["state"] == "connected"
    });
    assert_eq!(echo_round_trip(ok_port, b"back").unwrap(), b"back");
    // The refusal while B was down is history now: the status no longer shows it.
    let t = tunnels(a_admin)
        .into_iter()
        .find(|t| t["name"] == "allowed")
        .expect("tunnel allowed in the status");
    assert!(
        t["last_error"].is_null(),
        "a stale last error after recovery: {t}"
    );
    drop(b);
    a.proc.kill();
}

/// Sends `count` numbered datagrams from a fresh client socket to 127.0.0.1:`port`, one at a
/// time (each retried up to 3 times), and returns how many came back, each checked to be
/// the client's own.
fn udp_round_trips(port: u16, tag: &str, count: usize) -> usize {
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut ok = 0;
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let msg = format!("{tag}-{i}-{}", "x".repeat(i % 900));
        for _ in 0..3 {
            c.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
            match c.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(
                        &buf[..n],
                        msg.as_bytes(),
                        "a reply for someone else arrived"
                    );
                    ok += 1;
                    break;
                }
                Err(_) => continue,
            }
        }
    }
    ok
}

#[test]
fn udp_through_forward_and_reverse_node_tunnels() {
    let echo = udp_echo();
    let (dir, [a_listen, a_admin, b_listen, b_admin]) = two_nodes("node-udp");
    let target = format!("127.0.0.1:{echo}");
    let a_section = node_section(dir.path(), "a", a_listen, a_admin, &[]);
    let reverse_port = range_start(&a_section) + 11;
    let a_udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a_cfg = a_section
        + &tunnel(
            "dns-forward",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            &format!("127.0.0.1:{a_udp}"),
            &target,
        )
        + "protocol = \"udp\"\n"
        + &tunnel(
            "dns-forbidden",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            "127.0.0.1:0",
            "127.0.0.1:9",
        )
        + "protocol = \"udp\"\n";
    let b_cfg = node_section(
        dir.path(),
        "b",
        b_listen,
        b_admin,
        std::slice::from_ref(&target),
    ) + &tunnel(
        "dns-reverse",
        a_listen,
        &dir.join("b-to-a.token"),
        "reverse",
        &reverse_port.to_string(),
        &target,
    ) + "protocol = \"udp\"\n";
    let a = start_node(dir.path(), "a", &a_cfg);
    let mut b = start_node(dir.path(), "b", &b_cfg);
    wait_tunnel(a.admin, "dns-forward", "connected", |t| {
        t["state"] == "connected"
    });
    wait_tunnel(b.admin, "dns-reverse", "registered", |t| {
        t["listen"] == format!("peer port {reverse_port}")
    });

    // Several clients on each path; each gets only its own replies, and (on loopback at
    // this pace) essentially all of them.
    for (port, label) in [(a_udp, "forward"), (reverse_port, "reverse")] {
        for client in 0..3 {
            let got = udp_round_trips(port, &format!("{label}{client}"), 100);
            assert!(
                got >= 99,
                "{label} UDP tunnel: only {got}/100 round trips\n--- A:\n{}\n--- B:\n{}",
                a.proc.log(),
                b.proc.log()
            );
        }
    }
    let fwd = wait_tunnel(a.admin, "dns-forward", "counted", |t| {
        t["connections"].as_u64() >= Some(3)
    });
    assert!(fwd["bytes_to_target"].as_u64() > Some(10_000), "{fwd}");
    let rev = wait_tunnel(b.admin, "dns-reverse", "counted", |t| {
        t["bytes_to_target"].as_u64() > Some(10_000)
    });
    eprintln!("forward: {fwd}\nreverse: {rev}");

    // A UDP target outside B's allow-list: the flow is refused, nothing comes back.
    let forbidden = tunnels(a.admin)
        .into_iter()
        .find(|t| t["name"] == "dns-forbidden")
        .unwrap();
    let port: u16 = forbidden["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(udp_round_trips(port, "forbidden", 3), 0);
    b.proc
        .wait_line("is not in this node's allow-list", 0, WAIT);
    wait_tunnel(a.admin, "dns-forbidden", "refused", |t| {
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("ended the flow"))
    });
}

#[test]
fn a_forward_tunnel_reaches_a_private_service_its_token_is_allowed() {
    let echo = echo_service();
    let dir = TempDir::new("node-private");
    let tokens = dir.join("b-tokens.toml");
    std::fs::write(dir.join("agent.token"), new_token(&tokens, "agent")).unwrap();
    std::fs::write(
        dir.join("a-to-b.token"),
        new_token_with(&tokens, "node-a", &["--access", "echo"]),
    )
    .unwrap();
    let (b_listen, b_admin, a_admin) = (free_port(), free_port(), free_port());
    let mut b = start_node(
        dir.path(),
        "b",
        &node_section(dir.path(), "b", b_listen, b_admin, &[]),
    );
    // An agent registers `echo` and `secret` on node B, privately.
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .args([
                "agent",
                "--server",
                &format!("ws://127.0.0.1:{b_listen}"),
                "--token-file",
            ])
            .arg(dir.join("agent.token"))
            .args(["--expose", &format!("echo=tcp://127.0.0.1:{echo}")])
            .args(["--expose", &format!("secret=tcp://127.0.0.1:{echo}")])
            .arg("--private"),
    );
    agent.wait_line("service=secret", 0, WAIT);
    let (ok_port, bad_port) = (free_port(), free_port());
    let a_cfg = format!("[node]\nadmin = \"127.0.0.1:{a_admin}\"\n")
        + &tunnel(
            "echo",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            &format!("127.0.0.1:{ok_port}"),
            "echo",
        )
        + &tunnel(
            "secret",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            &format!("127.0.0.1:{bad_port}"),
            "secret",
        );
    let mut a = start_node(dir.path(), "a", &a_cfg);
    wait_tunnel(a_admin, "echo", "connected", |t| t["state"] == "connected");
    assert_eq!(echo_round_trip(ok_port, b"private").unwrap(), b"private");
    // The node's metrics carry the tunnel's state and traffic.
    let metrics = admin_get(a_admin, "/metrics").expect("node a's /metrics").1;
    let families = exposition::assert_exposition("node a", &metrics);
    assert_eq!(families["culvert_node_tunnel_up"].kind, "gauge");
    // A node with the server role adds the server's families.
    let b_families = exposition::assert_exposition(
        "node b",
        &admin_get(b_admin, "/metrics").expect("node b's /metrics").1,
    );
    assert!(b_families.contains_key("culvert_agent_sessions"));
    assert!(b_families.contains_key("culvert_node_tunnel_up"));
    assert!(
        metrics.contains("culvert_node_tunnel_up{tunnel=\"echo\",direction=\"forward\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "culvert_node_tunnel_bytes_to_target_total{tunnel=\"echo\",direction=\"forward\"} 7"
        ),
        "{metrics}"
    );
    let got = echo_round_trip(bad_port, b"secret");
    assert!(
        got.as_ref().map_or(true, |v| v.is_empty()),
        "a service the token may not reach carried data: {got:?}"
    );
    a.proc
        .wait_line("the peer refused \"secret\": not allowed", 0, WAIT);
    b.proc.wait_line(
        "token \"node-a\" is not allowed service \"secret\"",
        0,
        WAIT,
    );
}

#[test]
fn a_bad_node_config_fails_at_start_naming_the_problem() {
    let dir = TempDir::new("node-bad");
    let cases = [
        ("[node]\nlisten = \"127.0.0.1:1\"\ninsecure_plain = true\ntokenz = \"t.toml\"\n", "tokenz"),
        ("[[tunnel]]\nname = \"x\"\npeer = \"ws://127.0.0.1:1/\"\ntoken = \"t\"\ndirection = \"forward\"\nlisten = \"127.0.0.1:0\"\ntarget = \"no where\"\n", "target must be HOST:PORT"),
        ("[[tunnel]]\nname = \"x\"\npeer = \"ws://127.0.0.1:1/\"\ntoken = \"t\"\ndirection = \"forward\"\nlisten = \"127.0.0.1:0\"\ntarget = \"127.0.0.1:5432\"\n[node]\nallow = [\"10.0.0.1/8:5432\"]\n", "allow"),
        ("", "nothing to do"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.join(&format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = run(culvert().args(["node", "--config"]).arg(&path), WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started:\n{err}");
        assert!(
            err.contains(want),
            "case {i}: {err:?} should mention {want:?}"
        );
    }
}

#[test]
fn revoking_a_peers_token_closes_its_session_without_a_restart() {
    let echo = echo_service();
    let (dir, [_, a_admin, b_listen, b_admin]) = two_nodes("node-revoke");
    let fwd = free_port();
    let b_cfg = node_section(
        dir.path(),
        "b",
        b_listen,
        b_admin,
        &[format!("127.0.0.1:{echo}")],
    );
    let a_cfg = format!("[node]\nadmin = \"127.0.0.1:{a_admin}\"\n")
        + &tunnel(
            "echo",
            b_listen,
            &dir.join("a-to-b.token"),
            "forward",
            &format!("127.0.0.1:{fwd}"),
            &format!("127.0.0.1:{echo}"),
        );
    let mut b = start_node(dir.path(), "b", &b_cfg);
    let _a = start_node(dir.path(), "a", &a_cfg);
    wait_tunnel(a_admin, "echo", "connected", |t| t["state"] == "connected");
    assert_eq!(echo_round_trip(fwd, b"before").unwrap(), b"before");

    // B's operator removes A's token from the file: B reloads it and closes A's session;
    // A keeps retrying and says why.
    std::fs::write(dir.join("b-tokens.toml"), "").unwrap();
    let from = b.proc.line_count();
    new_token(&dir.join("b-tokens.toml"), "someone-else");
    b.proc.wait_line("token revoked", from, WAIT);
    let t = wait_tunnel(a_admin, "echo", "refused", |t| {
        t["state"] != "connected"
            && t["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused the token"))
    });
    eprintln!("after revocation: {t}");
    let got = echo_round_trip(fwd, b"after");
    assert!(
        got.as_ref().map_or(true, |v| v.is_empty()),
        "revoked tunnel carried data: {got:?}"
    );
}
