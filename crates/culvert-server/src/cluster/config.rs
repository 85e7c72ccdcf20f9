//! How a server joins a cluster: the database that holds the shared registry, its own id
//! and the address the other servers reach it at.

use std::time::Duration;

/// Settings of a server that shares its registry with others through PostgreSQL
/// (`--cluster`). Without them the server keeps its registry in memory, as before.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `postgres://…` URL of the shared database (never logged: it may hold a password).
    pub url: String,
    /// This server's id in the cluster, unique among its servers (`--cluster-id`).
    pub id: String,
    /// `ws://` or `wss://` URL the other servers dial to reach this one's agents
    /// (`--cluster-advertise`): its tunnel endpoint as seen from the other servers.
    pub advertise: String,
    /// Interval of this server's heartbeat in the database. A server silent for two
    /// intervals is taken for dead: its agents' services are no longer forwarded to it.
    pub heartbeat: Duration,
    /// Deadline of every database operation; a registration or token change that cannot
    /// reach the database fails after it with a clear error instead of hanging.
    pub db_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults for a server `id` reachable at `advertise`, sharing the database at `url`.
    pub fn new(url: &str, id: &str, advertise: &str) -> ClusterConfig {
        ClusterConfig {
            url: url.to_owned(),
            id: id.to_owned(),
            advertise: advertise.to_owned(),
            heartbeat: Duration::from_secs(2),
            db_timeout: Duration::from_secs(5),
        }
    }

    /// How old a heartbeat may be before its server is taken for dead.
    pub(crate) fn presence_max_age(&self) -> Duration {
        self.heartbeat * 2
    }
}
