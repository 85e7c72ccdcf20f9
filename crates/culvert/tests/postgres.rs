//! A real PostgreSQL behind a real tunnel: `culvert server --self-signed` and `culvert agent
//! --fingerprint` as child processes, a throwaway PostgreSQL cluster as the private
//! service, and `psql` and `pgbench` run against the public port.
//!
//! PostgreSQL is required: when it is missing this test fails and says how to install it
//! (`scripts/test.sh` installs it). PostgreSQL refuses to run as root, so under root
//! `initdb` and `postgres` run as the `postgres` system user (through `setpriv`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Bound of one `pgbench` run through the tunnel (debug builds are slow).
const PGBENCH_LIMIT: Duration = Duration::from_secs(600);

/// Where PostgreSQL's programs are, from `pg_config --bindir`.
fn pg_bindir() -> PathBuf {
    let out = Command::new("pg_config").arg("--bindir").output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!(
            "PostgreSQL is required by this test, but `pg_config --bindir` failed ({}): {}\n\
             Install it (Debian: apt-get install postgresql), or run scripts/test.sh, which does.",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "PostgreSQL is required by this test, but `pg_config` cannot be run: {e}\n\
             Install it (Debian: apt-get install postgresql), or run scripts/test.sh, which does."
        ),
    };
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for prog in ["initdb", "postgres"] {
        assert!(
            dir.join(prog).is_file(),
            "PostgreSQL is required by this test, but {} is missing (pg_config --bindir says {}); \
             install the server (Debian: apt-get install postgresql)",
            dir.join(prog).display(),
            dir.display()
        );
    }
    dir
}

/// A client program: from the bindir, else from PATH.
fn client_program(bindir: &Path, name: &str) -> PathBuf {
    let p = bindir.join(name);
    if p.is_file() {
        return p;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} is required by this test but is neither in {} nor on PATH; \
             install the PostgreSQL client (Debian: apt-get install postgresql-client)",
            bindir.display()
        )
    })
}

fn is_root() -> bool {
    let out = run(Command::new("id").arg("-u"), WAIT);
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `program`, run as the postgres user when we are root (PostgreSQL refuses root).
fn as_postgres(root: bool, program: &Path) -> Command {
    if root {
        // setpriv (util-linux, in /usr/bin) executes the program in place, unlike runuser,
        // which forks and waits: the child's PID is PostgreSQL's own, so stopping the
        // child by its PID stops PostgreSQL.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A throwaway cluster, stopped (fast shutdown, by PID) when dropped.
struct Postgres {
    proc: Proc,
    port: u16,
    _dir: TempDir,
}

impl Postgres {
    fn start(bindir: &Path) -> Postgres {
        let root = is_root();
        let dir = TempDir::new("pg");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        if root {
            let out = run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                WAIT,
            );
            assert!(
                out.status.success(),
                "chown to the postgres user failed (is there a `postgres` system user?): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = run(
            as_postgres(root, &bindir.join("initdb"))
                .current_dir(dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
            Duration::from_secs(180),
        );
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut proc = Proc::spawn(
                "postgres",
                as_postgres(root, &bindir.join("postgres"))
                    .current_dir(dir.path())
                    .arg("-D")
                    .arg(&data)
                    .args(["-p", &port.to_string(), "-k"])
                    .arg(&data)
                    .args([
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "max_connections=50",
                    ]),
            );
            match proc.try_wait_line("ready to accept connections", 0, Duration::from_secs(120)) {
                Ok(_) => {
                    return Postgres {
                        proc,
                        port,
                        _dir: dir,
                    }
                }
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (clients disconnected, clean stop); killed if it lingers.
        self.proc.stop_with("-INT", Duration::from_secs(30));
    }
}

/// Runs a PostgreSQL client against 127.0.0.1:`port` as user postgres.
fn pg_client(program: &Path, port: u16, args: &[&str], limit: Duration) -> (bool, String, String) {
    let out = run(
        Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "20")
            .env("PGSSLMODE", "disable")
            .env_remove("PGPASSWORD")
            .env_remove("PGDATABASE"),
        limit,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn print_summary(pgbench_output: &str) {
    for l in pgbench_output
        .lines()
        .filter(|l| l.starts_with("tps") || l.starts_with("latency") || l.contains("failed"))
    {
        eprintln!("    {l}");
    }
}

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
