//! An active-active cluster of servers sharing one registry in PostgreSQL.
//!
//! What lives in the database ([`culvert_cluster`]): tokens and tenant limits, port leases
//! (unique per protocol and port across the cluster, sticky per tenant and service), and
//! presence (which server holds an agent serving which service, alive while that server's
//! heartbeat is fresh). What each server does with it:
//! - tokens come from the database and follow its changes within a second (LISTEN/NOTIFY,
//!   with a periodic re-read as a backstop), through the same path as a token-file reload;
//!   an Auth with a token the server does not know re-reads them before it is refused, so a
//!   token just made is not refused by a server its notification has not reached yet;
//! - a public TCP service's port is leased in the database, and **every** server binds it
//!   (see [`listeners`]): a client reaching a server that does not hold the service's agent
//!   is forwarded to one that does, over a server-to-server tunnel connection made with the
//!   same transport and multiplexer (see [`peers`]), authenticated with the cluster's shared
//!   credential;
//! - access streams for a service held elsewhere are forwarded the same way.
//!
//! When the database is unreachable, established tunnels and forwarding keep working from
//! each server's cache; registrations fail with a clear error after the database deadline
//! and succeed once it is back.

mod config;
mod listeners;
mod peers;
mod presence;
mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use culvert_cluster::{ClusterDb, ClusterError, Presence, Proto, ServerRow};
use tokio::sync::Notify;

pub use config::ClusterConfig;
pub(crate) use listeners::Listeners;
pub(crate) use peers::Peers;
pub(crate) use tokens::{reread_for_unknown, TokenRereadCounts, CLUSTER_TOKEN_NAME};

use crate::registry::Protocol;
use crate::server::Inner;
use crate::tokens::TokenStore;

/// Services held by the other servers' agents: (tenant, service) → who holds it, and how.
type RemoteServices = HashMap<(String, String), Vec<(ServerRow, Presence)>>;

/// A server's part of the cluster: the database, the other servers' presence as last
/// read, the links to them, and the public listeners every server keeps.
pub(crate) struct Cluster {
    pub(crate) db: ClusterDb,
    pub(crate) config: ClusterConfig,
    /// This server as the others see it.
    pub(crate) me: ServerRow,
    /// Services held by agents of the other live servers: (tenant, service) → the servers
    /// holding it and its port. Kept when the database cannot be read.
    remote: RwLock<RemoteServices>,
    /// Tunnel connections to the other servers.
    pub(crate) peers: Peers,
    /// Public TCP listeners of the cluster's services, local and remote.
    pub(crate) listeners: Listeners,
    /// Wakes the presence loop (a service registered or released here, or a change
    /// announced by another server).
    pub(crate) changed: Notify,
    /// Round-robin over the servers holding a remote service.
    next: std::sync::atomic::AtomicUsize,
    /// Re-reads of the tokens, one at a time.
    token_reads: tokens::TokenReads,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

/// Why a server could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The database refused or could not be reached.
    #[error("cluster registry: {0}")]
    Db(#[from] ClusterError),
    /// The advertised URL is not a tunnel endpoint URL.
    #[error("--cluster-advertise {0:?}: {1}")]
    Advertise(String, String),
}

impl Cluster {
    /// Connects to the database (bringing its schema up to date), reads the shared
    /// credential and the tokens. `fingerprint` is this server's certificate, which the
    /// others pin when they dial it; `proto` the multiplexer settings of the links it
    /// dials to them (the server's own).
    pub(crate) async fn join(
        config: ClusterConfig,
        fingerprint: Option<String>,
        proto: culvert_proto::Config,
    ) -> Result<(Cluster, TokenStore), JoinError> {
        culvert_transport::ws::ServerUrl::parse(&config.advertise)
            .map_err(|e| JoinError::Advertise(config.advertise.clone(), e.to_string()))?;
        let db = ClusterDb::connect(&config.url, config.db_timeout).await?;
        let secret = db.cluster_secret().await?;
        let store = tokens::load(&db, &secret).await?;
        let me = ServerRow {
            id: config.id.clone(),
            advertise: config.advertise.clone(),
            fingerprint,
        };
        // Rows of this server's earlier run (killed, say) describe agents it holds no more.
        db.clear_server_presence(&me.id).await?;
        db.heartbeat(&me).await?;
        tracing::info!(id = %me.id, advertise = %me.advertise, tokens = store.len().saturating_sub(1), "joined the cluster");
        let cluster = Cluster {
            peers: Peers::new(secret, proto),
            db,
            config,
            me,
            remote: RwLock::new(HashMap::new()),
            listeners: Listeners::default(),
            changed: Notify::new(),
            next: Default::default(),
            token_reads: Default::default(),
        };
        Ok((cluster, store))
    }

    /// Runs the cluster's background work for as long as the server runs: the heartbeat
    /// and presence loop, and the token and presence notifications.
    pub(crate) async fn run(inner: Arc<Inner>, cluster: Arc<Cluster>) {
        tokio::join!(
            presence::run(inner.clone(), cluster.clone()),
            tokens::follow(inner, cluster),
        );
    }

    /// Leases the public port of `service` of `tenant` in the database.
    pub(crate) async fn lease(
        &self,
        proto: Protocol,
        tenant: &str,
        service: &str,
        requested: u16,
        range: crate::PortRange,
        allowed: &[crate::PortRange],
    ) -> Result<u16, String> {
        let allowed: Vec<(u16, u16)> = allowed.iter().map(|r| (r.start, r.end)).collect();
        self.db
            .lease(
                proto_of(proto),
                tenant,
                service,
                requested,
                (range.start, range.end),
                &allowed,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// A live server other than this one holding `service` of `tenant`, taken in turn.
    pub(crate) fn remote_holder(&self, tenant: &str, service: &str) -> Option<ServerRow> {
        let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
        let holders = remote.get(&(tenant.to_owned(), service.to_owned()))?;
        if holders.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % holders.len();
        Some(holders[i].0.clone())
    }

    /// Replaces the view of the other servers' services.
    fn set_remote(&self, rows: Vec<(ServerRow, Presence)>) {
        let mut map = RemoteServices::new();
        for (server, p) in rows {
            if server.id == self.me.id {
                continue;
            }
            map.entry((p.tenant.clone(), p.service.clone()))
                .or_default()
                .push((server, p));
        }
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The public TCP ports the other servers' services use: (port, tenant, service).
    fn remote_tcp_ports(&self) -> Vec<(u16, String, String)> {
        let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
        remote
            .values()
            .flatten()
            .filter(|(_, p)| p.proto == Proto::Tcp && p.port != 0)
            .map(|(_, p)| (p.port, p.tenant.clone(), p.service.clone()))
            .collect()
    }

    /// Whether a session authenticated with `token` is another server of the cluster.
    pub(crate) fn is_peer_token(token: &str) -> bool {
        token == CLUSTER_TOKEN_NAME
    }
}

fn proto_of(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}
