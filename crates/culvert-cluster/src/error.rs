//! What can go wrong talking to the cluster registry, in words an operator can act on.

use std::time::Duration;

use crate::Proto;

/// Errors of the cluster registry.
///
/// [`ClusterError::Unavailable`] and [`ClusterError::Timeout`] are the database's problems
/// (down, unreachable, too slow): a caller retries later, and the same [`crate::ClusterDb`]
/// re-dials by itself. The others are answers about the data (a name taken, no port left).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The database could not be reached or a query failed for a reason outside our
    /// control. The message already includes the database's own explanation.
    #[error("cluster registry: {what} failed: {}", describe(source))]
    Unavailable {
        /// What was being done ("listing tokens").
        what: String,
        /// The client library's error.
        source: tokio_postgres::Error,
    },
    /// An operation did not finish within its deadline (the timeout given to
    /// [`crate::ClusterDb::connect`]).
    #[error("cluster registry: {what} took longer than {} s", after.as_secs_f64())]
    Timeout {
        /// What was being done.
        what: String,
        /// The deadline it missed.
        after: Duration,
    },
    /// A token (or tenant) of that name exists already.
    #[error("cluster registry: a token named {0:?} exists already")]
    Duplicate(String),
    /// No free port left in the range (and allowed ranges).
    #[error("cluster registry: no free {proto} port left in {start}-{end} (and the token's allowed ports)")]
    Exhausted {
        /// Protocol of the lease.
        proto: Proto,
        /// First port of the server's range.
        start: u16,
        /// Last port of the server's range.
        end: u16,
    },
    /// The requested port is leased to another tenant/service.
    #[error("cluster registry: {proto} port {port} is leased to {holder}")]
    PortTaken {
        /// Protocol of the lease.
        proto: Proto,
        /// The port asked for.
        port: u16,
        /// Who holds it: "tenant/service".
        holder: String,
    },
    /// The requested port is outside the server's range or the token's allowed ranges.
    #[error("cluster registry: {proto} port {port} is outside the server's port range or the token's allowed ports")]
    PortNotAllowed {
        /// Protocol of the lease.
        proto: Proto,
        /// The port asked for.
        port: u16,
    },
    /// The schema in the database is newer than this build understands, or a migration
    /// failed.
    #[error("cluster registry: schema: {0}")]
    Schema(String),
    /// The database URL cannot be parsed (the URL itself is not repeated: it may hold a
    /// password).
    #[error("cluster registry: invalid database URL: {}", describe(source))]
    InvalidUrl {
        /// The parser's error.
        source: tokio_postgres::Error,
    },
    /// A lease kept losing races with other servers for the same ports and gave up (a
    /// bounded number of attempts); trying again later normally succeeds.
    #[error("cluster registry: {what}: gave up after {attempts} attempts conflicting with other servers")]
    Contended {
        /// What was being done.
        what: String,
        /// How many attempts were made.
        attempts: u32,
    },
}

/// The whole story of a client error: its text, the database's message, detail and hint
/// for server-side errors, and the causes below it (such as "Connection refused").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(d) = db.detail() {
            s.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// What a step inside one registry operation can fail with: the database (turned into
/// [`ClusterError::Unavailable`] with the operation's name) or an answer about the data.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client library failed.
    Pg(tokio_postgres::Error),
    /// An answer (duplicate, port taken, …), passed on as it is.
    Cluster(ClusterError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Pg(e)
    }
}

impl From<ClusterError> for Failure {
    fn from(e: ClusterError) -> Failure {
        Failure::Cluster(e)
    }
}
