//! Tenants and roles, as real processes see them: two tenants holding the same service
//! name each reach their own backend (through `culvert access` and node tunnels), another
//! tenant's service only through a grant, and a token only what its roles allow.

mod support;

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;

/// Connections a banner service answers at most (its accept loop is bounded).
const BANNER_CONNECTIONS: usize = 200;

/// A TCP service that writes `tag` to each connection and closes it: which backend a
/// connection reached is then what it reads.
fn banner_service(tag: &'static str) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind banner");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().take(BANNER_CONNECTIONS).flatten() {
            use std::io::Write;
            let _ = c.write_all(tag.as_bytes());
        }
    });
    port
}

/// What a connection to 127.0.0.1:`port` reads until EOF (empty when refused or reset).
fn banner(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// The banner through `port` once the path there is up (a node tunnel connects a moment
/// after its process starts): retried while empty, within [`WAIT`].
fn banner_when_up(port: u16) -> String {
    let mut b = String::new();
    poll_until(WAIT, || {
        b = banner(port);
        !b.is_empty()
    });
    b
}

/// A token file written as before tenants and roles existed (each entry its own tenant,
/// with every right): `(name, access grants)`; returns the tokens, in order.
fn legacy_token_file(path: &Path, entries: &[(&str, &[&str])]) -> Vec<String> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    for (i, (name, access)) in entries.iter().enumerate() {
        let token = format!("cvt_{:064x}", 0x5eed_0000_u64 + i as u64);
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let access: Vec<String> = access.iter().map(|a| format!("{a:?}")).collect();
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\naccess = [{}]\n\n",
            access.join(", ")
        ));
        tokens.push(token);
    }
    std::fs::write(path, text).unwrap();
    tokens
}

fn agent(server: u16, token_file: &Path, expose: &str, extra: &[&str]) -> Proc {
    let mut a = Proc::spawn(
        "culvert agent",
        culvert()
            .args(["agent", "--server", &format!("ws://127.0.0.1:{server}")])
            .arg("--token-file")
            .arg(token_file)
            .args(["--expose", expose])
            .args(extra),
    );
    a.wait_line("service exposed", 0, WAIT);
    a
}

/// `culvert access` to `services` with a token file; returns it and the local port of each.
fn access(server: u16, token_file: &Path, services: &[&str]) -> (Proc, Vec<u16>) {
    let mut cmd = culvert();
    cmd.arg("access").args(services);
    for _ in services {
        cmd.args(["--listen", "127.0.0.1"]);
    }
    cmd.args(["--server", &format!("ws://127.0.0.1:{server}")])
        .arg("--token-file")
        .arg(token_file);
    let mut p = Proc::spawn("culvert access", &mut cmd);
    let ports = services.iter().map(|s| access_port(&mut p, s)).collect();
    (p, ports)
}

/// A `culvert node` with `[[tunnel]]` forward tunnels to the server: (name, token file,
/// local port, target).
fn node_with_tunnels(dir: &Path, server: u16, tunnels: &[(&str, &Path, u16, &str)]) -> Proc {
    let mut cfg = format!("[node]\nadmin = \"127.0.0.1:{}\"\n", free_port());
    for (name, token, listen, target) in tunnels {
        cfg.push_str(&format!(
            "\n[[tunnel]]\nname = \"{name}\"\npeer = \"ws://127.0.0.1:{server}/\"\ntoken_file = \"{}\"\ndirection = \"forward\"\nlisten = \"127.0.0.1:{listen}\"\ntarget = \"{target}\"\n",
            token.display()
        ));
    }
    let path = dir.join("node.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut p = Proc::spawn(
        "culvert node",
        culvert().args(["node", "--config"]).arg(&path),
    );
    p.wait_line("node running", 0, WAIT);
    p
}

/// Waits for `p` to exit within `limit`; panics with its log otherwise.
fn exit_of(p: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    p.expect_exit(limit)
}

/// The "second token steals streams" finding: with a token file of the old format, two
/// tokens (two tenants) register the same public name `web`; the access and node streams
/// of each must reach its own backend, never the other's. Runs against an old build too
/// (CULVERT_TEST_BIN), where it fails: every stream went to whichever session came first.
#[test]
fn the_same_service_name_in_two_tenants_keeps_their_streams_apart() {
    let dir = TempDir::new("tenants-same-name");
    let tokens = dir.join("tokens.toml");
    let t = legacy_token_file(&tokens, &[("acme", &["web"]), ("globex", &["web"])]);
    for (name, token) in ["acme", "globex"].iter().zip(&t) {
        std::fs::write(dir.join(&format!("{name}.token")), token).unwrap();
    }
    let (_server, port) = start_server(&tokens, &["--insecure-plain"]);
    let backends = [
        banner_service("acme-backend"),
        banner_service("globex-backend"),
    ];
    let _agents: Vec<Proc> = ["acme", "globex"]
        .iter()
        .zip(backends)
        .map(|(n, b)| {
            agent(
                port,
                &dir.join(&format!("{n}.token")),
                &format!("web=tcp://127.0.0.1:{b}"),
                &[],
            )
        })
        .collect();

    let mut procs = Vec::new();
    let (node_ports, mut tunnels) = ([free_port(), free_port()], Vec::new());
    let token_files = [dir.join("acme.token"), dir.join("globex.token")];
    for (i, n) in ["acme", "globex"].iter().enumerate() {
        let (p, ports) = access(port, &token_files[i], &["web"]);
        for _ in 0..6 {
            assert_eq!(
                banner(ports[0]),
                format!("{n}-backend"),
                "an access stream of {n} reached another tenant's backend"
            );
        }
        procs.push(p);
        tunnels.push((*n, token_files[i].as_path(), node_ports[i], "web"));
    }
    let _node = node_with_tunnels(dir.path(), port, &tunnels);
    for (i, n) in ["acme", "globex"].iter().enumerate() {
        assert_eq!(
            banner_when_up(node_ports[i]),
            format!("{n}-backend"),
            "a node stream of {n} reached another tenant's backend"
        );
        for _ in 0..5 {
            assert_eq!(banner(node_ports[i]), format!("{n}-backend"));
        }
    }
}

/// Tenants set with `--tenant`: two register a private `pg`; each tenant's access tokens
/// reach their own by bare name; a token of one tenant reaches the other's only with a
/// grant (`--access acme/pg`), by `TENANT/NAME`, through `culvert access` and node tunnels.
#[test]
fn another_tenants_service_is_reached_only_through_a_grant() {
    let dir = TempDir::new("tenants-grant");
    let tokens = dir.join("tokens.toml");
    let mk = |name: &str, extra: &[&str]| {
        let f = dir.join(&format!("{name}.token"));
        std::fs::write(&f, new_token_with(&tokens, name, extra)).unwrap();
        f
    };
    let agent_acme = mk("agent-acme", &["--tenant", "acme"]);
    let agent_globex = mk("agent-globex", &["--tenant", "globex"]);
    let alice = mk("alice", &["--tenant", "acme", "--role", "access"]);
    let bob = mk("bob", &["--tenant", "globex", "--role", "access"]);
    let carol = mk("carol", &["--tenant", "globex", "--role", "access"]);
    let dave = mk("dave", &["--tenant", "globex", "--access", "acme/pg"]);
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let (a, b) = (banner_service("acme-pg"), banner_service("globex-pg"));
    let _agents = [
        agent(
            port,
            &agent_acme,
            &format!("pg=tcp://127.0.0.1:{a}"),
            &["--private"],
        ),
        agent(
            port,
            &agent_globex,
            &format!("pg=tcp://127.0.0.1:{b}"),
            &["--private"],
        ),
    ];

    let (_alice, p) = access(port, &alice, &["pg"]);
    assert_eq!(banner(p[0]), "acme-pg");
    let (_bob, p) = access(port, &bob, &["pg"]);
    assert_eq!(banner(p[0]), "globex-pg");
    let (_dave, p) = access(port, &dave, &["acme/pg", "pg"]);
    assert_eq!(
        banner(p[0]),
        "acme-pg",
        "a grant reaches the other tenant's service"
    );
    assert_eq!(
        banner(p[1]),
        "globex-pg",
        "a bare name stays in the token's tenant"
    );

    // Without a grant: refused at start, and the server says why.
    let mut c = Proc::spawn(
        "culvert access",
        culvert()
            .args([
                "access",
                "acme/pg",
                "--server",
                &format!("ws://127.0.0.1:{port}"),
            ])
            .arg("--token-file")
            .arg(&carol),
    );
    assert!(!exit_of(&mut c, WAIT).success(), "carol reached acme/pg");
    assert!(c.log().contains("not allowed"), "{}", c.log());
    server.wait_line(
        "token \"carol\" is not allowed service \"acme/pg\"",
        0,
        WAIT,
    );

    // Node tunnels name services the same way.
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let _node = node_with_tunnels(
        dir.path(),
        port,
        &[
            ("alice-pg", &alice, ports[0], "pg"),
            ("bob-pg", &bob, ports[1], "pg"),
            ("dave-acme-pg", &dave, ports[2], "acme/pg"),
            ("carol-acme-pg", &carol, ports[3], "acme/pg"),
        ],
    );
    assert_eq!(banner_when_up(ports[0]), "acme-pg");
    assert_eq!(banner_when_up(ports[1]), "globex-pg");
    assert_eq!(banner_when_up(ports[2]), "acme-pg");
    // Carol's tunnel connects (her token is valid) but carries nothing.
    for _ in 0..5 {
        assert_eq!(banner(ports[3]), "", "carol's node tunnel reached acme/pg");
    }
}

/// An access-only token (`--access echo` alone) may reach services but neither register
/// one nor have a node dial its allow-list; both refusals say why.
#[test]
fn an_access_only_token_may_not_register_or_dial() {
    let echo = echo_service();
    let dir = TempDir::new("roles-access-only");
    let tokens = dir.join("b-tokens.toml");
    let viewer = dir.join("viewer.token");
    std::fs::write(
        &viewer,
        new_token_with(&tokens, "viewer", &["--access", "echo"]),
    )
    .unwrap();
    // Node B: a server with an allow-list that includes the echo service.
    let b_listen = free_port();
    let cfg = dir.join("b.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"b\"\nlisten = \"127.0.0.1:{b_listen}\"\ninsecure_plain = true\n\
             tokens = \"{}\"\nport_range = \"{}\"\npublic_bind = \"127.0.0.1\"\nallow = [\"127.0.0.1:{echo}\"]\n",
            tokens.display(),
            port_range()
        ),
    )
    .unwrap();
    let mut b = Proc::spawn(
        "culvert node b",
        culvert().args(["node", "--config"]).arg(&cfg),
    );
    b.wait_line("node running", 0, WAIT);

    let mut reg = Proc::spawn(
        "culvert agent",
        culvert()
            .args(["agent", "--server", &format!("ws://127.0.0.1:{b_listen}")])
            .arg("--token-file")
            .arg(&viewer)
            .args(["--expose", &format!("web=tcp://127.0.0.1:{echo}")]),
    );
    reg.wait_line("has no agent role", 0, WAIT);
    b.wait_line("has no agent role", 0, WAIT);
    reg.kill();

    let fwd = free_port();
    let mut a = node_with_tunnels(
        dir.path(),
        b_listen,
        &[("dial", &viewer, fwd, &format!("127.0.0.1:{echo}"))],
    );
    eventually(WAIT, "the node to log the refusal", || {
        if b.log().contains("the token has no node role") {
            return Ok(());
        }
        let got = echo_round_trip(fwd, b"dial");
        assert!(
            got.as_ref().map_or(true, |v| v.is_empty()),
            "an access-only token had the node dial: {got:?}"
        );
        Err(Text(b.log()))
    });
    a.wait_line("not allowed", 0, WAIT);
}
