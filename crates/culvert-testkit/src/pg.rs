//! A throwaway PostgreSQL for end-to-end tests: `initdb` and `postgres` from
//! `pg_config --bindir`, run as the `postgres` system user under root (through `setpriv`),
//! and its clients (`psql`, `pgbench`). A missing PostgreSQL fails the test with how to
//! install it; it is never skipped.
//!
//! [`Postgres`] can also be stopped and started again on the same data directory and port
//! ([`Postgres::stop`], [`Postgres::start_again`]), for tests of what happens while the
//! database is unavailable, and gives the `postgres://` URL clients connect with
//! ([`Postgres::url`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{run, Proc};
use crate::{free_port, TempDir};

/// Bound of quick helper commands (`id`, `chown`).
const WAIT: Duration = Duration::from_secs(60);

/// How long PostgreSQL may take to be ready (initdb'd clusters on a busy machine).
const READY: Duration = Duration::from_secs(120);

/// How long a fast shutdown may take before PostgreSQL is killed.
const STOP: Duration = Duration::from_secs(30);

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

/// Whether the tests run as root (then PostgreSQL runs as the `postgres` user).
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
    /// The running postmaster; `None` while stopped ([`Postgres::stop`]).
    proc: Option<Proc>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    bindir: PathBuf,
    root: bool,
    dir: TempDir,
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
        let mut pg = Postgres {
            proc: None,
            port: 0,
            bindir: bindir.to_owned(),
            root,
            dir,
        };
        let mut last = String::new();
        for _ in 0..3 {
            pg.port = free_port();
            match pg.spawn() {
                Ok(proc) => {
                    pg.proc = Some(proc);
                    return pg;
                }
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// [`Postgres::start`] with the programs of [`pg_bindir`].
    pub fn start_default() -> Postgres {
        Postgres::start(&pg_bindir())
    }

    /// The URL clients connect with: user and database `postgres` on 127.0.0.1 (trust
    /// authentication, no TLS).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Whether it is running (not [`Postgres::stop`]ped).
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// Stops it (fast shutdown: clients are disconnected), keeping its data directory and
    /// port for [`Postgres::start_again`]. Returns once the postmaster has exited.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop_with("-INT", STOP);
        }
    }

    /// Starts it again after [`Postgres::stop`], on the same data directory and port; fails
    /// the test if it does not come up (for instance when something else took the port).
    pub fn start_again(&mut self) {
        if self.proc.is_some() {
            return;
        }
        match self.spawn() {
            Ok(proc) => self.proc = Some(proc),
            Err(e) => panic!("PostgreSQL did not start again on port {}: {e}", self.port),
        }
    }

    /// postgres on `self.port`, waited for until it accepts connections.
    fn spawn(&self) -> Result<Proc, String> {
        let data = self.data_dir();
        let mut proc = Proc::spawn(
            "postgres",
            as_postgres(self.root, &self.bindir.join("postgres"))
                .current_dir(self.dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-p", &self.port.to_string(), "-k"])
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
        proc.try_wait_line("ready to accept connections", 0, READY)?;
        Ok(proc)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (clients disconnected, clean stop); killed if it lingers.
        self.stop();
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

/// Prints the summary lines of a `pgbench` run (throughput, latency, failures) to stderr.
pub fn print_summary(pgbench_output: &str) {
    for l in pgbench_output
        .lines()
        .filter(|l| l.starts_with("tps") || l.starts_with("latency") || l.contains("failed"))
    {
        eprintln!("    {l}");
    }
}
