//! What a newcomer meets first, run on the real binary: help texts with their defaults,
//! flags only where they apply, clear refusals of mistaken flags and files, `culvert check`
//! and `culvert completions`.

mod support;

use support::*;

/// Runs `culvert ARGS` (bounded) and returns (success, stdout, stderr).
fn culvert_out(args: &[&str]) -> (bool, String, String) {
    let out = run(culvert().args(args), WAIT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn help(args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.push("--help");
    let (ok, out, err) = culvert_out(&a);
    assert!(ok, "{a:?}: {err}");
    // Help is wrapped to a width: compare with single spaces.
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn help_shows_the_defaults_and_only_the_flags_that_apply() {
    let server = help(&["server"]);
    for want in [
        "[default: 0.0.0.0:8443]",
        "[default: tokens.toml]",
        "[default: 30000-31000]",
        "[default: 30]",
        "[default: 10]",
        "--log-format",
        "--worker-threads",
    ] {
        assert!(
            server.contains(want),
            "server --help lacks {want}:\n{server}"
        );
    }
    let agent = help(&["agent"]);
    for want in ["[default: 4]", "[default: 10]", "[default: 30]"] {
        assert!(agent.contains(want), "agent --help lacks {want}:\n{agent}");
    }
    // The node's grace is the server's and the agent's.
    let node = help(&["node"]);
    assert!(node.contains("[default: 30]"), "{node}");
    // `access list --admin` is the access process's listener, not a server's or agent's.
    let list = help(&["access", "list"]);
    assert!(
        list.contains("culvert access") && !list.contains("server or agent"),
        "{list}"
    );
    // Runtime flags are not offered where nothing runs.
    for cmd in [&["token", "new"][..], &["cert", "new"], &["status"]] {
        let h = help(cmd);
        assert!(
            !h.contains("--log-format") && !h.contains("--worker-threads"),
            "{cmd:?} --help offers runtime flags:\n{h}"
        );
    }
}

#[test]
fn status_without_admin_says_there_is_no_default() {
    let (ok, _, err) = culvert_out(&["status"]);
    assert!(!ok, "status without --admin succeeded");
    assert!(
        err.contains("--admin") && err.contains("no default"),
        "unclear message: {err}"
    );
}

#[test]
fn a_missing_certificate_says_how_to_make_one() {
    let dir = TempDir::new("cli-cert");
    let tokens = dir.join("tokens.toml");
    new_token(&tokens, "a");
    let port = free_port();
    let out = run(
        culvert()
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--tokens",
            ])
            .arg(&tokens)
            .arg("--tls-cert")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.join("key.pem")),
        WAIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a certificate");
    assert!(
        err.contains("culvert cert new") && err.contains("--self-signed"),
        "unclear message: {err}"
    );
}

#[test]
fn the_same_expose_name_twice_is_refused() {
    let dir = TempDir::new("cli-dup");
    let token = dir.join("agent.token");
    std::fs::write(&token, "cvt_x").unwrap();
    let out = run(
        culvert()
            .args(["agent", "--server", "ws://127.0.0.1:1", "--token-file"])
            .arg(&token)
            .args([
                "--expose",
                "pg=tcp://127.0.0.1:5432",
                "--expose",
                "pg=tcp://127.0.0.1:5433",
            ]),
        WAIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a duplicate name was accepted: {err}"
    );
    assert!(err.contains("\"pg\" is exposed twice"), "{err}");
}

#[test]
fn check_accepts_good_files_and_names_what_is_wrong_in_bad_ones() {
    let dir = TempDir::new("cli-check");
    let token = dir.join("agent.token");
    std::fs::write(&token, "cvt_x").unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let agent = |expose: &str| {
        format!(
            "[agent]\nserver = \"ws://127.0.0.1:1\"\ntoken_file = {:?}\nexpose = [{expose}]\n",
            token.display().to_string()
        )
    };
    let good = write("good.toml", &agent("\"pg=tcp://127.0.0.1:5432\""));
    let (ok, out, err) = culvert_out(&["check", "--config", &good]);
    assert!(ok, "{err}");
    assert!(out.contains("ok") && out.contains("[agent]"), "{out}");

    let tokens = dir.join("tokens.toml");
    new_token(&tokens, "a");
    let (ok, out, err) = culvert_out(&["check", "--config", &tokens.display().to_string()]);
    assert!(ok && out.contains("token file"), "{out} {err}");

    // A node config names its certificate relative to the working directory: missing
    // there, the check says how to make it; made, the check passes.
    let node = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/node-a.toml");
    let check_node = || {
        run(
            culvert()
                .current_dir(dir.path())
                .args(["check", "--config", node]),
            WAIT,
        )
    };
    let out = check_node();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("culvert cert new"),
        "{err}"
    );
    let made = run(
        culvert()
            .current_dir(dir.path())
            .args(["cert", "new", "--cert", "a.crt", "--key", "a.key"]),
        WAIT,
    );
    assert!(made.status.success());
    let out = check_node();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("node config"),
        "{stdout} {:?}",
        out.stderr
    );

    for (name, text, want) in [
        ("typo.toml", "[agent]\nsevrer = \"x\"\n", "sevrer"),
        (
            "dup.toml",
            &agent("\"pg=tcp://127.0.0.1:1\", \"pg=tcp://127.0.0.1:2\""),
            "exposed twice",
        ),
        (
            "amp.toml",
            &agent("\"pg=tcp://127.0.0.1:1&private\""),
            "start with '?'",
        ),
        (
            "cert.toml",
            &format!(
                "[server]\ntokens = {:?}\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
                tokens.display().to_string()
            ),
            "culvert cert new",
        ),
        ("empty.toml", "# nothing\n", "nothing to check"),
        (
            "balancer.toml",
            &format!(
                "[server]\ntokens = {:?}\ninsecure_plain = true\nhttp_listen = \"127.0.0.1:1\"\n\
                 http_proxy_protocol = true\nhttp_proxy_protocol_from = [\"10.0.0.300\"]\n",
                tokens.display().to_string()
            ),
            "\"10.0.0.300\" is neither an address nor a network",
        ),
        (
            "public-balancer.toml",
            &format!(
                "[server]\ntokens = {:?}\ninsecure_plain = true\n\
                 public_proxy_protocol_from = [\"10.0.0.0/33\"]\n",
                tokens.display().to_string()
            ),
            "--public-proxy-protocol-from: \"10.0.0.0/33\" is neither",
        ),
        (
            "tunnel-balancer.toml",
            &format!(
                "[server]\ntokens = {:?}\ninsecure_plain = true\n\
                 tunnel_proxy_protocol_from = [\"fe80::/129\"]\n",
                tokens.display().to_string()
            ),
            "--tunnel-proxy-protocol-from: \"fe80::/129\" is neither",
        ),
        (
            "balancer-off.toml",
            &format!(
                "[server]\ntokens = {:?}\ninsecure_plain = true\nhttp_listen = \"127.0.0.1:1\"\n\
                 http_proxy_protocol_from = [\"10.0.0.0/8\"]\n",
                tokens.display().to_string()
            ),
            "http_proxy_protocol is off",
        ),
    ] {
        let p = write(name, text);
        let (ok, _, err) = culvert_out(&["check", "--config", &p]);
        assert!(!ok, "{name} passed the check");
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = culvert_out(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(
            out.contains("culvert") && out.contains("server") && out.contains("tokens"),
            "{shell}: {out}"
        );
    }
}

/// `culvert demo` echoes lines typed on its stdin through its tunnel, and the command it
/// suggests for another terminal works on this machine (whatever netcat it has, if any).
#[test]
fn demo_echoes_typed_lines_and_suggests_a_client_this_machine_has() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::sync::mpsc;

    let mut child = culvert()
        .arg("demo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start culvert demo");
    // Killed by its handle whatever happens below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _guard = Kill(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("culvert demo printed no {what} within {WAIT:?}"))
    };
    let mut command = None;
    loop {
        let line = next_line("client command");
        if line.starts_with("From another terminal") {
            command = Some(next_line("command").trim().to_owned());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let command = command.expect("a suggested command");
    assert!(!command.contains("nc -N") || which("nc"), "{command}");

    stdin.write_all(b"hello culvert\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(
        next_line("echo"),
        "echoed through the tunnel: hello culvert"
    );

    let out = run(
        std::process::Command::new("sh").args(["-c", &command]),
        WAIT,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello"),
        "{command:?} did not echo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `name` is an executable on PATH.
fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// A timer setting past a day (`MAX_TIMER`) is refused by name, as a flag and in a config
/// file, before anything starts. (Failed before: a huge `--heartbeat-interval` or
/// `heartbeat_interval` panicked doubling it into the idle timeout, and a huge `--grace`
/// panicked adding it to the clock at shutdown.)
#[test]
fn timer_settings_past_a_day_are_refused_by_name() {
    let dir = TempDir::new("cli-timers");
    let tokens = dir.join("tokens.toml");
    new_token(&tokens, "a");
    let tokens = tokens.display().to_string();
    let huge = u64::MAX.to_string();
    let server = |flag: &str, value: &str| {
        culvert_out(&[
            "server",
            "--insecure-plain",
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            &tokens,
            flag,
            value,
        ])
    };
    for flag in ["--heartbeat-interval", "--linger", "--grace"] {
        let (ok, _, err) = server(flag, &huge);
        assert!(!ok, "server {flag} {huge} was accepted");
        assert!(
            err.contains(flag) && err.contains("86400") && !err.contains("panicked"),
            "server {flag}: {err}"
        );
    }
    let (ok, _, err) = server("--linger", "0");
    assert!(!ok && err.contains("--linger"), "a zero linger: {err}");
    for flag in [
        "--heartbeat-interval",
        "--linger",
        "--grace",
        "--home-probe-interval",
    ] {
        let (ok, _, err) = culvert_out(&["agent", flag, &huge]);
        assert!(
            !ok && err.contains(flag) && err.contains("86400"),
            "agent {flag}: {err}"
        );
    }
    let (ok, _, err) = culvert_out(&["node", "--config", "n.toml", "--grace", &huge]);
    assert!(!ok && err.contains("--grace"), "node --grace: {err}");

    // The same in files (TOML integers stop at 2^63 - 1), as `culvert check` sees them.
    let token = dir.join("agent.token");
    std::fs::write(&token, "cvt_x").unwrap();
    for (key, value) in [
        ("heartbeat_interval", "9223372036854775807"),
        ("linger", "9223372036854775807"),
        ("linger", "0"),
        ("grace", "86401"),
    ] {
        let server_file =
            format!("[server]\ninsecure_plain = true\ntokens = {tokens:?}\n{key} = {value}\n");
        let agent_file = format!(
            "[agent]\nserver = \"ws://127.0.0.1:1\"\ntoken_file = {:?}\nexpose = [\"pg=tcp://127.0.0.1:5432\"]\n{key} = {value}\n",
            token.display().to_string()
        );
        for (role, text) in [("server", server_file), ("agent", agent_file)] {
            if role == "agent" && key == "grace" {
                continue; // read when the agent runs, not by the check
            }
            let p = dir.join(&format!("{role}-{key}-{value}.toml"));
            std::fs::write(&p, text).unwrap();
            let (ok, _, err) = culvert_out(&["check", "--config", &p.display().to_string()]);
            assert!(
                !ok && err.contains(key) && !err.contains("panicked"),
                "{role} {key} = {value}: {err}"
            );
        }
    }
}
