//! A throwaway PostgreSQL for end-to-end tests: `initdb` and `postgres` from
//! `pg_config --bindir`, run as the `postgres` system user under root (through `setpriv`),
//! and its clients (`psql`, `pgbench`). A missing PostgreSQL fails the test with how to
//! install it; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;

/// Bound of one `pgbench` run through the tunnel (debug builds are slow).
pub const PGBENCH_LIMIT: Duration = Duration::from_secs(600);

/// Where PostgreSQL's programs are, from `pg_config --bindir`.
pub fn pg_bindir() -> PathBuf {
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
pub fn client_program(bindir: &Path, name: &str) -> PathBuf {
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

pub fn is_root() -> bool {
    let out = run(Command::new("id").arg("-u"), WAIT);
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `program`, run as the postgres user when we are root (PostgreSQL refuses root).
pub fn as_postgres(root: bool, program: &Path) -> Command {
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
pub struct Postgres {
    proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: TempDir,
}

impl Postgres {
    /// initdb in a scratch directory, then postgres on a free loopback port.
    pub fn start(bindir: &Path) -> Postgres {
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
pub fn pg_client(
    program: &Path,
    port: u16,
    args: &[&str],
    limit: Duration,
) -> (bool, String, String) {
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

pub fn print_summary(pgbench_output: &str) {
    for l in pgbench_output
        .lines()
        .filter(|l| l.starts_with("tps") || l.starts_with("latency") || l.contains("failed"))
    {
        eprintln!("    {l}");
    }
}
