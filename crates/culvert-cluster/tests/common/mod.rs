//! Helpers of the cluster registry's tests: a throwaway PostgreSQL per test (from
//! culvert-testkit), a registry handle on it, a plain client for checking tables with SQL,
//! and bounded waits for notices.
#![allow(dead_code)]

use std::time::Duration;

use culvert_cluster::{ClusterDb, Notice};
pub use culvert_testkit::pg::Postgres;
use tokio::sync::mpsc::Receiver;

/// Deadline of registry operations in the tests (generous: CI machines are busy).
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Bound of waits for a notice or for the database to come back.
pub const WAIT: Duration = Duration::from_secs(60);

/// A fresh PostgreSQL (initdb in a scratch directory; stopped when dropped).
pub fn postgres() -> Postgres {
    tokio::task::block_in_place(Postgres::start_default)
}

/// A registry handle on `pg` with the tests' deadline.
pub async fn connect(pg: &Postgres) -> ClusterDb {
    ClusterDb::connect(&pg.url(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"))
}

/// A plain client, for checking the tables with SQL of the test's own.
pub async fn sql(pg: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("a plain connection to the test database");
    tokio::spawn(connection);
    client
}

/// Waits (at most `limit`) for `want` on `rx`, skipping other notices; fails the test if it
/// does not come.
pub async fn expect_notice(rx: &mut Receiver<Notice>, want: Notice, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) if n == want => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the listener stopped while waiting for {want:?}"),
            Err(_) => panic!("no {want:?} notice within {limit:?}"),
        }
    }
}

/// Takes every notice already queued (so a later wait sees only new ones).
pub fn drain(rx: &mut Receiver<Notice>) {
    while rx.try_recv().is_ok() {}
}
