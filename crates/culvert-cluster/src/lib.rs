//! Culvert's cluster registry: what the servers of an active-active cluster share, kept in
//! one PostgreSQL database (`culvert server --cluster postgres://…`).
//!
//! Several servers behind one name serve the same agents and callers; any of them must
//! accept any token, hand out public ports no other server hands out, and know which server
//! holds the agent of a service so it can relay a caller there. That shared state lives in
//! the database, in tables prefixed `culvert_`:
//!
//! - `culvert_tokens` and `culvert_tenants`: the token entries (hashes only, as JSON the
//!   server defines) and tenant limits that a token file holds for a single server
//!   ([`ClusterDb::tokens`], [`ClusterDb::tenants`]). `culvert token new --cluster` writes
//!   them.
//! - `culvert_leases`: public ports, unique per protocol across the cluster and sticky per
//!   tenant/service, so a service keeps its port when its agent reconnects to another
//!   server ([`ClusterDb::lease`]).
//! - `culvert_servers`: each server's id, advertised address, certificate fingerprint and
//!   heartbeat, by the database's clock so servers' clocks need not agree
//!   ([`ClusterDb::heartbeat`], [`ClusterDb::live_servers`]).
//! - `culvert_presence`: which server holds an agent for which service right now
//!   ([`ClusterDb::set_presence`], [`ClusterDb::live_presence`]); rows of servers whose
//!   heartbeat stopped are ignored, and deleted with their server.
//! - `culvert_secrets`: the credential servers authenticate to each other with, made once
//!   by whichever server comes first ([`ClusterDb::cluster_secret`]).
//!
//! Changes to tokens, tenants, presence and the server list are pushed through
//! `LISTEN`/`NOTIFY` ([`listen`]), so servers re-read them at once instead of polling.
//!
//! The schema is created and upgraded by versioned migrations when a server connects
//! (safe when several start together). Every operation has a deadline, and a lost
//! connection is dialed again by the next operation: a server outlives a database restart.

mod conn;
mod error;
mod leases;
mod listen;
mod presence;
mod schema;
mod secret;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

pub use error::ClusterError;
pub use listen::{listen, ListenHandle, Notice};
pub use schema::SCHEMA_VERSION;

use error::Failure;

/// A transport protocol of public ports: leases and presence are per protocol, as a TCP and
/// a UDP service may share a port number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP (stored as `tcp`).
    Tcp,
    /// UDP (stored as `udp`).
    Udp,
}

impl Proto {
    /// How the database stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The protocol a stored value names; `None` for anything else.
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// That a server holds an agent serving a tenant's service on a public port: what other
/// servers need to relay a caller to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// Tenant of the service.
    pub tenant: String,
    /// Service name within the tenant.
    pub service: String,
    /// Protocol of its public port.
    pub proto: Proto,
    /// Its public port (0 when it has none).
    pub port: u16,
    /// Name of the token the agent authenticated with.
    pub token: String,
}

/// One server of the cluster, as other servers reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRow {
    /// Its unique id.
    pub id: String,
    /// The address other servers dial to reach it.
    pub advertise: String,
    /// SHA-256 fingerprint of its certificate, when other servers should pin it.
    pub fingerprint: Option<String>,
}

/// Handle to the cluster registry. Cheap to clone (the connection is shared). Every method
/// is bounded by the timeout given to [`ClusterDb::connect`], and re-dials the database by
/// itself when the connection was lost.
#[derive(Clone)]
pub struct ClusterDb {
    inner: Arc<conn::Inner>,
}

impl std::fmt::Debug for ClusterDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the configuration: it may hold a password.
        f.debug_struct("ClusterDb")
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl ClusterDb {
    /// Connects and brings the schema up to date (versioned migrations, safe when several
    /// servers start at once: one transaction holding `pg_advisory_xact_lock`, versions
    /// recorded in `culvert_schema_migrations`). Later calls re-dial by themselves when the
    /// connection was lost (no restart needed when PostgreSQL comes back). `timeout` bounds
    /// this call and every later one.
    pub async fn connect(url: &str, timeout: Duration) -> Result<ClusterDb, ClusterError> {
        let config = conn::config(url, timeout)?;
        let what = "connecting and updating the schema";
        let setup = async {
            let mut client = conn::dial(&config).await?;
            let applied = schema::migrate(&mut client).await?;
            Ok::<_, Failure>((client, applied))
        };
        let (client, applied) = match tokio::time::timeout(timeout, setup).await {
            Ok(Ok(v)) => v,
            Ok(Err(Failure::Pg(source))) => {
                return Err(ClusterError::Unavailable {
                    what: what.to_owned(),
                    source,
                })
            }
            Ok(Err(Failure::Cluster(e))) => return Err(e),
            Err(_) => {
                return Err(ClusterError::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                })
            }
        };
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "cluster registry: schema migrated");
        }
        Ok(ClusterDb {
            inner: Arc::new(conn::Inner::new(config, timeout, client)),
        })
    }

    /// The deadline of every operation.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

/// A port as stored (integer) back to `u16`; anything else means the table was edited by
/// hand beyond its constraints.
pub(crate) fn port_of(v: i32) -> Result<u16, Failure> {
    u16::try_from(v)
        .map_err(|_| ClusterError::Schema(format!("port {v} in the database is not a port")).into())
}

/// A protocol as stored back to [`Proto`].
pub(crate) fn proto_of(s: &str) -> Result<Proto, Failure> {
    Proto::parse(s).ok_or_else(|| {
        ClusterError::Schema(format!(
            "protocol {s:?} in the database is neither tcp nor udp"
        ))
        .into()
    })
}
