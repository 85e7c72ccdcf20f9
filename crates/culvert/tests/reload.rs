//! Token reloads reach live sessions, as real processes see them: a running server whose
//! token file is rewritten (and SIGHUP sent) takes back from a live session what the new
//! entry no longer allows: a service dropped from `services` or with its port outside
//! `ports` is unregistered (its port refuses, its connections are reset) while the other
//! keeps working; an `expires` added ends the session at that time; a narrowed `access`
//! resets the access streams and refuses new ones.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use support::*;

/// The token of `name` in these tests (derived from the name, so a rewritten file keeps it).
fn token_of(name: &str) -> String {
    format!("cvt_{}", hex::encode(Sha256::digest(name.as_bytes())))
}

/// Writes the token file: one entry per `(name, settings)`, the settings as TOML lines.
/// Written to a temporary file renamed over the old one, so a reload reads all of it.
fn write_tokens(path: &Path, entries: &[(&str, &str)]) {
    let mut text = String::new();
    for (name, settings) in entries {
        let hash = hex::encode(Sha256::digest(token_of(name).as_bytes()));
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\n{settings}\n\n"
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A file holding the token of `name`, for `--token-file`.
fn token_file(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let f = dir.join(&format!("{name}.token"));
    std::fs::write(&f, token_of(name)).unwrap();
    f
}

/// Rewrites the token file, sends SIGHUP (by PID) and waits for the server to log the
/// reload; returns the server's line count from before, for later waits.
fn reload(server: &mut Proc, path: &Path, entries: &[(&str, &str)]) -> usize {
    let from = server.line_count();
    write_tokens(path, entries);
    let _ = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status();
    server.wait_line("tokens reloaded", from, WAIT);
    from
}

/// A server with an admin listener; returns it, its tunnel port and its admin port.
fn server_with_admin(tokens: &Path) -> (Proc, u16, u16) {
    let admin = free_port();
    let (server, port) = start_server(
        tokens,
        &["--insecure-plain", "--admin", &format!("127.0.0.1:{admin}")],
    );
    (server, port, admin)
}

/// An agent of `token` exposing `web` and `db` (both to `echo`); returns it and their ports.
fn agent_with_two_services(server: u16, token: &Path, echo: u16) -> (Proc, u16, u16) {
    let mut args = agent_args(server, token, &format!("web=tcp://127.0.0.1:{echo}"));
    args.extend(["--expose".into(), format!("db=tcp://127.0.0.1:{echo}")]);
    let mut agent = Proc::spawn("culvert agent", culvert().arg("agent").args(&args));
    let web = public_port_of(&mut agent, "web", 0);
    let db = public_port_of(&mut agent, "db", 0);
    (agent, web, db)
}

/// A connection to the echo behind 127.0.0.1:`port`, checked with one byte and held open.
fn held_connection(port: u16) -> TcpStream {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .expect("echo through the held connection");
    s
}

/// Fails unless the held connection `s` was cut (reset or closed) rather than left open.
fn assert_cut(mut s: TcpStream, what: &str) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{what}: the connection was left open after the reload: {other:?}"),
    }
}

/// Fails unless 127.0.0.1:`port` stops accepting connections within [`WAIT`].
fn assert_refuses(port: u16, what: &str) {
    assert!(
        poll_until(WAIT, || TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .is_err()),
        "{what}: port {port} still accepts connections after the reload"
    );
}

/// The services the server's admin lists, as `name:port`.
fn registered(admin: u16) -> Vec<String> {
    let (code, body) = admin_get(admin, "/api/sessions").expect("admin answers");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut out = Vec::new();
    for s in v["sessions"].as_array().into_iter().flatten() {
        for svc in s["services"].as_array().into_iter().flatten() {
            out.push(format!(
                "{}:{}",
                svc["name"].as_str().unwrap_or("?"),
                svc["public_port"]
            ));
        }
    }
    out.sort();
    out
}

/// `culvert_reload_withdrawals_total{what=WHAT}` of the server.
fn withdrawals(admin: u16, what: &str) -> Option<u64> {
    let (_, body) = admin_get(admin, "/metrics")?;
    metric(
        &body,
        &format!("culvert_reload_withdrawals_total{{what=\"{what}\"}}"),
    )
}

/// Checks that `db` was withdrawn and `web` kept: the held connection to db cut, db's port
/// refusing, the registration gone (web's listed), the withdrawal logged and counted, and
/// web still echoing.
fn assert_db_withdrawn(
    server: &mut Proc,
    from: usize,
    held: TcpStream,
    ports: (u16, u16),
    admin: u16,
) {
    let (web, db) = ports;
    assert_cut(held, "a connection to the withdrawn service db");
    assert_refuses(db, "the withdrawn service db");
    assert_eq!(registered(admin), vec![format!("web:{web}")]);
    let line = server.wait_line("reload withdrew a service", from, WAIT);
    assert!(
        line.contains("token=acme") && line.contains("service=db"),
        "{line}"
    );
    assert_eq!(withdrawals(admin, "service"), Some(1));
    assert_eq!(
        echo_round_trip(web, b"web").unwrap(),
        b"web",
        "the service still allowed keeps working"
    );
}

/// (a) A service dropped from `services` while its agent is connected.
#[test]
fn a_service_dropped_from_services_is_unregistered_and_the_other_keeps_working() {
    let dir = TempDir::new("reload-services");
    let tokens = dir.join("tokens.toml");
    let acme = token_file(&dir, "acme");
    write_tokens(
        &tokens,
        &[("acme", "roles = [\"agent\"]\nservices = [\"web\", \"db\"]")],
    );
    let (mut server, port, admin) = server_with_admin(&tokens);
    let echo = echo_service();
    let (_agent, web, db) = agent_with_two_services(port, &acme, echo);
    assert_eq!(echo_round_trip(db, b"db").unwrap(), b"db");
    let held = held_connection(db);

    let from = reload(
        &mut server,
        &tokens,
        &[("acme", "roles = [\"agent\"]\nservices = [\"web\"]")],
    );
    assert_db_withdrawn(&mut server, from, held, (web, db), admin);
}

/// (b) `ports` narrowed so that a registered public port is outside it.
#[test]
fn a_port_outside_the_narrowed_ports_is_unregistered_and_the_other_keeps_working() {
    let dir = TempDir::new("reload-ports");
    let tokens = dir.join("tokens.toml");
    let acme = token_file(&dir, "acme");
    write_tokens(&tokens, &[("acme", "roles = [\"agent\"]")]);
    let (mut server, port, admin) = server_with_admin(&tokens);
    let echo = echo_service();
    let (_agent, web, db) = agent_with_two_services(port, &acme, echo);
    assert_eq!(echo_round_trip(db, b"db").unwrap(), b"db");
    let held = held_connection(db);

    let from = reload(
        &mut server,
        &tokens,
        &[("acme", &format!("roles = [\"agent\"]\nports = [\"{web}\"]"))],
    );
    assert_db_withdrawn(&mut server, from, held, (web, db), admin);
}

/// (c) An `expires` added a few seconds ahead ends the live session at that time.
#[test]
fn an_expiry_added_by_a_reload_ends_the_live_session_at_that_time() {
    let dir = TempDir::new("reload-expires");
    let tokens = dir.join("tokens.toml");
    let acme = token_file(&dir, "acme");
    write_tokens(&tokens, &[("acme", "roles = [\"agent\"]")]);
    let (mut server, port, _admin) = server_with_admin(&tokens);
    let echo = echo_service();
    let (_agent, web) = start_agent(
        &agent_args(port, &acme, &format!("web=tcp://127.0.0.1:{echo}")),
        "web",
    );
    assert_eq!(echo_round_trip(web, b"web").unwrap(), b"web");

    let unix = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let expires = unix() + 3;
    let from = reload(
        &mut server,
        &tokens,
        &[("acme", &format!("roles = [\"agent\"]\nexpires = {expires}"))],
    );
    let line = server
        .try_wait_line("agent session ended", from, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the session outlived the expiry the reload added: {e}"));
    assert!(
        line.contains("token=acme") && line.contains("token expired"),
        "{line}"
    );
    assert!(
        unix() >= expires,
        "the session ended before its new expiry ({expires}): {line}"
    );
    assert_refuses(web, "the expired session's service");
}

/// (d) An access token's `access` narrowed while an access session is live: its open
/// stream is reset and new ones are refused.
#[test]
fn a_narrowed_access_grant_resets_live_streams_and_refuses_new_ones() {
    let dir = TempDir::new("reload-access");
    let tokens = dir.join("tokens.toml");
    let acme = token_file(&dir, "acme");
    let auditor = token_file(&dir, "auditor");
    let agent_entry = ("acme", "tenant = \"acme\"\nroles = [\"agent\"]");
    write_tokens(
        &tokens,
        &[
            agent_entry,
            (
                "auditor",
                "tenant = \"globex\"\nroles = [\"access\"]\naccess = [\"acme/db\"]",
            ),
        ],
    );
    let (mut server, port, admin) = server_with_admin(&tokens);
    let echo = echo_service();
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .arg("agent")
            .args(agent_args(
                port,
                &acme,
                &format!("db=tcp://127.0.0.1:{echo}"),
            ))
            .arg("--private"),
    );
    agent.wait_line("service exposed", 0, WAIT);
    let mut access = Proc::spawn(
        "culvert access",
        culvert()
            .args(["access", "acme/db", "--listen", "127.0.0.1"])
            .args(["--server", &format!("ws://127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(&auditor),
    );
    let local = access_port(&mut access, "acme/db");
    assert_eq!(echo_round_trip(local, b"db").unwrap(), b"db");
    let held = held_connection(local);

    let from = reload(
        &mut server,
        &tokens,
        &[
            agent_entry,
            (
                "auditor",
                "tenant = \"globex\"\nroles = [\"access\"]\naccess = [\"acme/web\"]",
            ),
        ],
    );
    assert_cut(held, "an access stream the narrowed grant no longer allows");
    let line = server.wait_line("stream reset: no longer allowed after a reload", from, WAIT);
    assert!(
        line.contains("token=auditor") && line.contains("acme/db"),
        "{line}"
    );
    let got = echo_round_trip(local, b"again");
    assert!(
        got.as_ref().map_or(true, |v| v.is_empty()),
        "a new access stream was served after the grant was withdrawn: {got:?}"
    );
    server.wait_line(
        "token \"auditor\" is not allowed service \"acme/db\"",
        from,
        WAIT,
    );
    assert_eq!(withdrawals(admin, "stream"), Some(1));
}

/// One echo of `msg` through 127.0.0.1:`port` over a connection from `source`; `None` when
/// the connection is refused, reset or closed before the echo.
fn echo_from(source: Ipv4Addr, port: u16, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = connect_from(source, (Ipv4Addr::LOCALHOST, port).into()).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(msg).ok()?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).ok()?;
    Some(got)
}

/// Whether a datagram from `source` to 127.0.0.1:`port` comes back (a few tries: bounded).
fn udp_echoed_from(source: Ipv4Addr, port: u16) -> bool {
    let s = std::net::UdpSocket::bind((source, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    (0..10).any(|_| {
        s.send_to(b"ping", (Ipv4Addr::LOCALHOST, port)).is_ok()
            && s.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"ping")
    })
}

/// The sum of the server's samples of `family` whose line carries `label`.
fn samples_with(admin: u16, family: &str, label: &str) -> u64 {
    let body = admin_get(admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A token's `public_clients`: its public ports, TCP and UDP, serve only those addresses
/// (others are reset or dropped before anything reaches the agent, and counted); a reload
/// that widens the list lets the others in from their next connection.
#[test]
fn public_ports_serve_only_the_tokens_public_clients_and_a_reload_widens_them() {
    let dir = TempDir::new("public-clients");
    let tokens = dir.join("tokens.toml");
    let only_2 = "public_clients = [\"127.0.0.2\", \"10.0.0.0/8\"]";
    write_tokens(&tokens, &[("acme", only_2)]);
    let (mut server, port, admin) = server_with_admin(&tokens);
    let (echo, dns) = (echo_service(), udp_echo());
    let mut args = agent_args(
        port,
        &token_file(&dir, "acme"),
        &format!("web=tcp://127.0.0.1:{echo}"),
    );
    args.extend(["--expose".into(), format!("dns=udp://127.0.0.1:{dns}")]);
    let mut agent = Proc::spawn("culvert agent", culvert().arg("agent").args(&args));
    let web = public_port_of(&mut agent, "web", 0);
    let dns_public = public_port_of(&mut agent, "dns", 0);
    let (listed, other) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 1));

    assert_eq!(
        echo_from(listed, web, b"in the list").as_deref(),
        Some(&b"in the list"[..]),
        "--- server:\n{}",
        server.log()
    );
    assert_eq!(
        echo_from(other, web, b"not listed"),
        None,
        "a client not listed is refused"
    );
    assert!(
        udp_echoed_from(listed, dns_public),
        "a listed UDP client is served"
    );
    assert!(
        !udp_echoed_from(other, dns_public),
        "a UDP client not listed is dropped"
    );
    assert_eq!(
        samples_with(
            admin,
            "culvert_public_connections_refused_total",
            "client_address"
        ),
        1
    );
    assert!(
        samples_with(admin, "culvert_udp_dropped_total", "\"client_address\"") >= 1,
        "{}",
        admin_get(admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    );

    reload(
        &mut server,
        &tokens,
        &[("acme", "public_clients = [\"127.0.0.0/8\"]")],
    );
    assert_eq!(
        echo_from(other, web, b"now listed").as_deref(),
        Some(&b"now listed"[..]),
        "a widened list admits the client's next connection"
    );
    assert!(udp_echoed_from(other, dns_public), "and its datagrams");
    agent.kill();
    server.kill();
}
