//! `culvert token new` and the server's refusal to start without tokens, as a user runs them.

mod support;

use sha2::{Digest, Sha256};
use support::*;

fn is_token(s: &str) -> bool {
    s.strip_prefix("cvt_")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn token_new_prints_only_the_token_and_stores_only_its_hash() {
    let dir = TempDir::new("token-new");
    let file = dir.join("tokens.toml");

    let out = run(
        culvert()
            .args(["token", "new", "--name", "db-node", "--tokens"])
            .arg(&file),
        WAIT,
    );
    assert!(out.status.success(), "exit status {}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // Stdout is the token alone, on one line: `TOKEN=$(culvert token new ...)` just works.
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{stdout:?}"
    );
    let token = stdout.trim_end_matches('\n');
    assert!(is_token(token), "stdout is not a lone token: {stdout:?}");
    // The explanation goes to stderr, without repeating the token.
    assert!(stderr.contains("db-node"), "stderr: {stderr}");
    assert!(
        !stderr.contains(token),
        "stderr repeats the token: {stderr}"
    );

    // Readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode {mode:o}");

    // The file holds the SHA-256 of the token, never the token.
    let text = std::fs::read_to_string(&file).unwrap();
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    assert!(text.contains(&hash), "the hash is recorded:\n{text}");
    assert!(!text.contains(token), "the token is stored:\n{text}");
    assert!(
        !text.contains(&token[4..]),
        "the token's secret part is stored:\n{text}"
    );

    // A second token is different and is added beside the first.
    let second = new_token(&file, "web-node");
    assert!(is_token(&second));
    assert_ne!(second, token);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&hash));
    assert!(text.contains(&hex::encode(Sha256::digest(second.as_bytes()))));
    assert!(!text.contains(&second));

    // A duplicate name is refused, prints no token, and leaves the file alone.
    let out = run(
        culvert()
            .args(["token", "new", "--name", "db-node", "--tokens"])
            .arg(&file),
        WAIT,
    );
    assert!(!out.status.success(), "a duplicate name was accepted");
    assert!(
        out.stdout.is_empty(),
        "a token was printed for a refused name"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "stderr: {stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

#[test]
fn server_refuses_to_start_without_tokens() {
    let dir = TempDir::new("no-tokens");
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let comments = dir.join("comments.toml");
    std::fs::write(&comments, "# no tokens here yet\n").unwrap();
    let missing = dir.join("missing.toml");

    for file in [&empty, &comments, &missing] {
        let port = free_port();
        let out = run(
            culvert()
                .args([
                    "server",
                    "--insecure-plain",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--tokens",
                ])
                .arg(file),
            WAIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the server started with {}: {stderr}",
            file.display()
        );
        assert!(
            stderr.contains("no tokens") && stderr.contains("culvert token new"),
            "{}: unclear message: {stderr}",
            file.display()
        );
    }
}

/// `token new` with every restriction writes them to the file; `token list` shows them
/// (never a hash); bad names are refused before anything is written.
#[test]
fn token_new_writes_restrictions_and_token_list_shows_them() {
    let dir = TempDir::new("token-list");
    let file = dir.join("tokens.toml");
    new_token_with(
        &file,
        "db-node",
        &[
            "--tenant",
            "acme",
            "--services",
            "pg,web",
            "--ports",
            "30000-30010",
            "--ports",
            "30080",
            "--public-client",
            "203.0.113.0/24,2001:db8::/32",
            "--max-services",
            "2",
        ],
    );
    new_token_with(
        &file,
        "alice",
        &["--tenant", "acme", "--access", "globex/pg"],
    );
    new_token_with(&file, "gw", &["--role", "agent", "--role", "node"]);
    let text = std::fs::read_to_string(&file).unwrap();
    for want in [
        r#"tenant = "acme""#,
        r#"roles = ["agent"]"#,
        r#"services = ["#,
        r#""30000-30010""#,
        "max_services = 2",
        r#"roles = ["access"]"#,
        r#""globex/pg""#,
        r#""node""#,
        "public_clients = [\n    \"203.0.113.0/24\",\n    \"2001:db8::/32\",\n]",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let out = run(
        culvert().args(["token", "list", "--tokens"]).arg(&file),
        WAIT,
    );
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[0].starts_with("db-node tenant=acme roles=agent services=pg,web ports=30000-30010,30080 public_clients=203.0.113.0/24,2001:db8::/32 max_services=2"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("alice tenant=acme roles=access"),
        "{list}"
    );
    assert!(lines[1].contains("access=globex/pg"), "{list}");
    assert!(
        lines[2].starts_with("gw tenant=gw roles=agent,node"),
        "{list}"
    );
    assert!(!list.contains("sha256"), "{list}");

    // Names outside A-Z a-z 0-9 . _ - are refused, escaped, and nothing is written.
    for (flag, value) in [
        ("--tenant", "ac me"),
        ("--services", "p\u{1b}[2Jg"),
        ("--access", "acme/p\ng"),
    ] {
        let out = run(
            culvert()
                .args(["token", "new", "--name", "x", flag, value, "--tokens"])
                .arg(&file),
            WAIT,
        );
        assert!(!out.status.success(), "{flag} {value:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("A-Z a-z 0-9 . _ -"), "{err}");
        assert!(!err.contains('\u{1b}') && !err.contains("p\ng"), "{err}");
        assert!(out.stdout.is_empty());
    }
    // So is a public client that is neither an address nor a network, naming it.
    let out = run(
        culvert()
            .args([
                "token",
                "new",
                "--name",
                "x",
                "--public-client",
                "office",
                "--tokens",
            ])
            .arg(&file),
        WAIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("public_clients: \"office\" is neither an address nor a network"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

/// `token revoke NAME` rewrites the file without the token; a running server picks the
/// change up (as on any reload) and closes that token's session only.
#[test]
fn token_revoke_closes_the_session_of_a_running_server() {
    let dir = TempDir::new("token-revoke");
    let tokens = dir.join("tokens.toml");
    let (gone, kept) = (dir.join("gone.token"), dir.join("kept.token"));
    std::fs::write(&gone, new_token(&tokens, "gone")).unwrap();
    std::fs::write(&kept, new_token(&tokens, "kept")).unwrap();
    let (mut server, port) = start_server(&tokens, &["--insecure-plain"]);
    let echo = echo_service();
    let (_a, a_port) = start_agent(
        &agent_args(port, &gone, &format!("a=tcp://127.0.0.1:{echo}")),
        "a",
    );
    let (_b, b_port) = start_agent(
        &agent_args(port, &kept, &format!("b=tcp://127.0.0.1:{echo}")),
        "b",
    );
    assert_eq!(echo_round_trip(a_port, b"a").unwrap(), b"a");

    let out = run(
        culvert()
            .args(["token", "revoke", "gone", "--tokens"])
            .arg(&tokens),
        WAIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        !text.contains("\"gone\"") && text.contains("\"kept\""),
        "{text}"
    );
    let line = server.wait_line("agent session ended", 0, WAIT);
    assert!(
        line.contains("token=gone") && line.contains("token revoked"),
        "{line}"
    );
    assert_eq!(
        echo_round_trip(b_port, b"b").unwrap(),
        b"b",
        "the other token is untouched"
    );

    let out = run(
        culvert()
            .args(["token", "revoke", "gone", "--tokens"])
            .arg(&tokens),
        WAIT,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token named \"gone\""));
}

/// `--expose` with a control character in the name is refused at start, escaped.
#[test]
fn expose_refuses_a_name_with_control_characters() {
    let dir = TempDir::new("expose-ctl");
    let token = dir.join("agent.token");
    std::fs::write(&token, "cvt_unused").unwrap();
    let out = run(
        culvert()
            .args(["agent", "--server", "ws://127.0.0.1:1", "--token-file"])
            .arg(&token)
            .args(["--expose", "p\u{1b}[2Jg=tcp://127.0.0.1:5432"]),
        WAIT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("A-Z a-z 0-9 . _ -"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}

/// A TTL past a hundred years is refused with the reason and nothing is written. (Failed
/// before: `--ttl 18446744073709551615` panicked serialising the token file.)
#[test]
fn token_new_refuses_a_ttl_past_a_hundred_years() {
    let dir = TempDir::new("token-ttl");
    let file = dir.join("tokens.toml");
    let out = run(
        culvert()
            .args(["token", "new", "--name", "forever", "--ttl"])
            .arg(u64::MAX.to_string())
            .arg("--tokens")
            .arg(&file),
        WAIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("--ttl") && stderr.contains("100 years") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!file.exists(), "a token file was written");
}
