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
