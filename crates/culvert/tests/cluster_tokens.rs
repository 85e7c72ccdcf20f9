//! `culvert token new | list | revoke --cluster URL` against a real PostgreSQL: the token
//! printed once, only its hash stored, listings without tokens, duplicates and unknown
//! names refused with clear messages, and a database that is down reported promptly
//! instead of waited for.

mod support;

use std::process::Output;

use sha2::{Digest, Sha256};
use support::pg::*;
use support::*;

/// Runs `culvert token ARGS` and returns (success, stdout, stderr).
fn token_cmd(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = culvert();
    cmd.arg("token").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = run(&mut cmd, WAIT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stored entry of token `name`, as text, read with plain SQL.
fn stored_entry(pg: &Postgres, name: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .expect("a plain connection to the test database");
        tokio::spawn(conn);
        client
            .query_opt(
                "SELECT entry::text FROM culvert_tokens WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
}

#[test]
fn tokens_in_a_cluster_registry_are_created_listed_and_revoked() {
    let pg = Postgres::start_default();
    let url = pg.url();

    let (ok, token, err) = token_cmd(
        &[
            "new",
            "--name",
            "alice",
            "--cluster",
            &url,
            "--tenant",
            "acme",
            "--services",
            "web,db",
            "--ttl",
            "1h",
        ],
        &[],
    );
    assert!(ok, "token new --cluster failed: {err}");
    let token = token.trim().to_owned();
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    assert!(err.contains("cluster registry"), "{err}");
    assert!(
        !err.contains(&token),
        "the token is printed once, on stdout: {err}"
    );

    // Only the hash is stored, the same entry a token file holds.
    let entry = stored_entry(&pg, "alice").expect("a row for alice");
    assert!(
        !entry.contains(&token),
        "the token itself was stored: {entry}"
    );
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(
        entry["sha256"],
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    assert_eq!(entry["tenant"], "acme");
    assert_eq!(entry["services"], serde_json::json!(["web", "db"]));
    assert!(entry["expires"].is_u64(), "{entry}");

    // Listed (through the environment variable this time), never with the token or hash.
    let (ok, out, err) = token_cmd(&["list"], &[("CULVERT_CLUSTER", &url)]);
    assert!(ok, "token list failed: {err}");
    assert!(
        out.starts_with("alice tenant=acme roles=agent services=web,db"),
        "{out}"
    );
    assert!(!out.contains(&token) && !out.contains("sha256"), "{out}");
    let (ok, out, err) = token_cmd(&["list", "--json", "--cluster", &url], &[]);
    assert!(ok, "token list --json failed: {err}");
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed["name"], "alice");
    assert!(listed.get("sha256").is_none(), "{listed}");

    // A second token of the same name is refused, and the first one is kept.
    let (ok, out, err) = token_cmd(&["new", "--name", "alice", "--cluster", &url], &[]);
    assert!(!ok, "a duplicate was accepted: {out}");
    assert!(out.trim().is_empty(), "a refused token was printed: {out}");
    assert!(
        err.contains("a token named \"alice\" exists already"),
        "unclear duplicate message: {err}"
    );
    assert!(stored_entry(&pg, "alice")
        .unwrap()
        .contains(&hex::encode(Sha256::digest(token.as_bytes()))));

    // --tokens and --cluster together are refused.
    let (ok, _, err) = token_cmd(&["list", "--cluster", &url, "--tokens", "t.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("not both"), "{err}");

    // Revoked: gone from the table and the listing; a second revoke says there is none.
    let (ok, _, err) = token_cmd(&["revoke", "alice", "--cluster", &url], &[]);
    assert!(ok, "token revoke failed: {err}");
    assert!(err.contains("removed from the cluster registry"), "{err}");
    assert_eq!(stored_entry(&pg, "alice"), None);
    let (ok, out, err) = token_cmd(&["list", "--cluster", &url], &[]);
    assert!(ok, "token list failed: {err}");
    assert!(out.trim().is_empty(), "{out}");
    assert!(err.contains("no tokens"), "{err}");
    let (ok, _, err) = token_cmd(&["revoke", "alice", "--cluster", &url], &[]);
    assert!(!ok);
    assert!(err.contains("no token of that name"), "{err}");
}

#[test]
fn a_database_that_is_down_is_reported_not_waited_for() {
    let mut pg = Postgres::start_default();
    let url = pg.url();
    pg.stop();
    // `run` fails the test if the command hangs past WAIT; the command's own deadline is
    // far shorter.
    let (ok, out, err) = token_cmd(&["new", "--name", "bob", "--cluster", &url], &[]);
    assert!(!ok, "token new succeeded without a database: {out}");
    eprintln!("token new with the database down: {}", err.trim());
    assert!(
        out.trim().is_empty(),
        "a token was printed though none was stored: {out}"
    );
    assert!(
        err.contains("cluster registry") && err.contains("Connection refused"),
        "the error does not name the database problem: {err}"
    );
    assert!(
        !err.contains("postgres://"),
        "the URL (which may hold a password) was printed: {err}"
    );
    let (ok, _, err) = token_cmd(&["list", "--cluster", &url], &[]);
    assert!(!ok);
    assert!(err.contains("cluster registry"), "{err}");
}
