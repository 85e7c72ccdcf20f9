//! A real PostgreSQL behind a real tunnel: `culvert server --self-signed` and `culvert agent
//! --fingerprint` as child processes, a throwaway PostgreSQL cluster as the private
//! service, and `psql` and `pgbench` run against the public port.
//!
//! PostgreSQL is required: when it is missing this test fails and says how to install it
//! (`scripts/test.sh` installs it). PostgreSQL refuses to run as root, so under root
//! `initdb` and `postgres` run as the `postgres` system user (through `setpriv`).

mod support;

use std::time::Instant;

use support::pg::*;
use support::*;

#[test]
fn postgres_through_the_tunnel_psql_and_pgbench() {
    let bindir = pg_bindir();
    let psql = client_program(&bindir, "psql");
    let pgbench = client_program(&bindir, "pgbench");
    let pg = Postgres::start(&bindir);
    let (ok, version, err) = pg_client(
        &psql,
        pg.port,
        &["-X", "-tA", "-c", "show server_version"],
        WAIT,
    );
    assert!(ok, "psql directly against PostgreSQL failed: {err}");
    eprintln!("PostgreSQL {} on 127.0.0.1:{}", version.trim(), pg.port);

    // The tunnel: server with a self-signed certificate, agent pinning its fingerprint.
    let dir = TempDir::new("pg-tunnel");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "db-node")).unwrap();
    let (mut server, port) = start_server(&tokens, &["--self-signed"]);
    let line = server.wait_line("fingerprint=", 0, WAIT);
    let fingerprint =
        field(&line, "fingerprint").unwrap_or_else(|| panic!("no fingerprint in {line:?}"));
    let (agent, public) = start_agent(
        &[
            "--server".into(),
            format!("wss://127.0.0.1:{port}"),
            "--token-file".into(),
            token_file.display().to_string(),
            "--fingerprint".into(),
            fingerprint,
            "--expose".into(),
            format!("pg=tcp://127.0.0.1:{}", pg.port),
        ],
        "pg",
    );
    eprintln!("PostgreSQL exposed through the tunnel on 127.0.0.1:{public}");

    let (ok, out, err) = pg_client(&psql, public, &["-X", "-tA", "-c", "select 42"], WAIT);
    assert!(
        ok,
        "psql through the tunnel failed: {err}\n--- agent log:\n{}",
        agent.log()
    );
    assert_eq!(out.trim(), "42", "psql through the tunnel printed {out:?}");

    let start = Instant::now();
    let (ok, out, err) = pg_client(
        &pgbench,
        public,
        &["-i", "-s", "1", "postgres"],
        PGBENCH_LIMIT,
    );
    assert!(ok, "pgbench -i through the tunnel failed:\n{out}\n{err}");
    eprintln!(
        "pgbench -i -s 1 through the tunnel: {:.1?}",
        start.elapsed()
    );
    let (ok, count, err) = pg_client(
        &psql,
        public,
        &["-X", "-tA", "-c", "select count(*) from pgbench_accounts"],
        WAIT,
    );
    assert!(ok, "psql count failed: {err}");
    assert_eq!(count.trim(), "100000");

    let start = Instant::now();
    let (ok, out, err) = pg_client(
        &pgbench,
        public,
        &["-c", "4", "-t", "200", "postgres"],
        PGBENCH_LIMIT,
    );
    assert!(
        ok,
        "pgbench -c 4 -t 200 through the tunnel failed:\n{out}\n{err}"
    );
    assert!(
        out.contains("number of transactions actually processed: 800/800"),
        "pgbench did not complete its 800 transactions:\n{out}"
    );
    eprintln!(
        "pgbench -c 4 -t 200 through the tunnel in {:.1?}:",
        start.elapsed()
    );
    print_summary(&out);
    // The same run without the tunnel, for comparison (printed, not asserted).
    let (ok, out, err) = pg_client(
        &pgbench,
        pg.port,
        &["-c", "4", "-t", "200", "postgres"],
        PGBENCH_LIMIT,
    );
    assert!(
        ok,
        "pgbench directly against PostgreSQL failed:\n{out}\n{err}"
    );
    eprintln!("pgbench -c 4 -t 200 directly, without the tunnel:");
    print_summary(&out);
    drop(agent);
    server.stop_with("-TERM", WAIT);
}
