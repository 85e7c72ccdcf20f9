//! The library's `dial_service` example, run for real: a server with a self-signed
//! certificate and an agent exposing a throwaway PostgreSQL as a private service (both the
//! `culvert` binary), then the example, which opens a stream to the service with
//! `Client::open` and runs a query over it with tokio-postgres. The example must print the
//! answer; with a token the server does not let reach the service it must fail.
//!
//! PostgreSQL is required (the test fails, never skips, without it; `scripts/test.sh`
//! installs it). The example is built with cargo here, so the test runs the current code
//! even when the test runner built only test targets.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::pg::*;
use support::*;

/// Builds the example (a no-op when it is up to date) and returns its executable.
fn build_example(name: &str) -> PathBuf {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--locked", "-p", "culvert", "--example", name])
        .args(["--message-format", "json-render-diagnostics"]);
    // What cargo set for this test's run describes this test, not the build: build scripts
    // that watch such variables would rebuild, and the next test build again.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_target = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|p| key.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&key.as_ref())
            || key == "OUT_DIR"
            || key == "CARGO_RUSTC_CURRENT_DIR";
        if per_target {
            cargo.env_remove(key.as_ref());
        }
    }
    let out = run(&mut cargo, std::time::Duration::from_secs(900));
    assert!(
        out.status.success(),
        "building example {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo named no executable for example {name}:\n{stdout}"))
}

#[test]
fn dial_service_example_queries_a_private_postgres_through_the_tunnel() {
    let example = build_example("dial_service");
    let bindir = pg_bindir();
    let pg = Postgres::start(&bindir);

    let dir = TempDir::new("example-dial");
    let tokens = dir.join("tokens.toml");
    std::fs::write(dir.join("agent.token"), new_token(&tokens, "db-node")).unwrap();
    std::fs::write(
        dir.join("access.token"),
        new_token_with(&tokens, "app", &["--access", "pg"]),
    )
    .unwrap();
    std::fs::write(
        dir.join("other.token"),
        new_token_with(&tokens, "other", &["--access", "web"]),
    )
    .unwrap();
    let (mut server, port) = start_server(&tokens, &["--self-signed"]);
    let line = server.wait_line("fingerprint=", 0, WAIT);
    let fingerprint =
        field(&line, "fingerprint").unwrap_or_else(|| panic!("no fingerprint in {line:?}"));
    let url = format!("wss://127.0.0.1:{port}");
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert()
            .args(["agent", "--server", &url, "--fingerprint", &fingerprint])
            .arg("--token-file")
            .arg(dir.join("agent.token"))
            .args(["--expose", &format!("pg=tcp://127.0.0.1:{}", pg.port)])
            .arg("--private"),
    );
    agent.wait_line("service exposed", 0, WAIT);

    let dial = |token: &str| {
        run(
            Command::new(&example)
                .args(["--server", &url, "--fingerprint", &fingerprint])
                .arg("--token-file")
                .arg(dir.join(token))
                .args(["--service", "pg", "--user", "postgres"])
                .env("RUST_LOG", "info")
                .env_remove("CULVERT_TOKEN"),
            WAIT,
        )
    };

    let out = dial("access.token");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dial_service failed ({}):\n{stdout}\n{stderr}\n--- agent log:\n{}",
        out.status,
        agent.log()
    );
    assert!(
        stdout.lines().any(|l| l == "answer: 42"),
        "dial_service printed no answer:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("server_version: "),
        "no server version:\n{stdout}"
    );
    eprintln!("{}", stdout.trim());

    // A token the server does not let reach `pg`: the query must fail, and say why.
    let out = dial("other.token");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "dial_service succeeded with a token not allowed the service:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("not allowed"),
        "the refusal does not say why:\n{stderr}"
    );
}
