//! Tokens of a cluster: read from the database, followed through its notifications, and
//! applied to live sessions the way a token-file reload is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use culvert_cluster::{ClusterDb, ClusterError, Notice};
use tokio::time::Instant;

use super::Cluster;
use crate::server::Inner;
use crate::tokens::{TokenEntry, TokenStore};
use crate::TenantLimits;

/// The name the other servers of the cluster authenticate as. Not a valid token name
/// (`@`), so no token of the database can take it.
pub(crate) const CLUSTER_TOKEN_NAME: &str = "@cluster";

/// How often tokens are re-read even without a notification: a backstop for a
/// notification lost while the listening connection was being re-dialed.
const REREAD: Duration = Duration::from_secs(30);

/// Least time between two re-reads made for Auths with unknown tokens: a stream of wrong
/// tokens costs the database at most five reads a second, and a right one waits at most this
/// long (plus the read) for its re-read.
const UNKNOWN_REREAD_EVERY: Duration = Duration::from_millis(200);

/// Why the tokens were read from the database again, counted for the metrics: a wrong-token
/// flood shows as `unknown_token` reads, which the spacing bounds at five a second.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadCause {
    /// A notification that the tokens changed.
    Notice,
    /// The listening connection was re-dialed (notifications may have been missed).
    Reconnect,
    /// The periodic backstop ([`REREAD`]).
    Timer,
    /// An Auth showed a token this server did not know ([`reread_for_unknown`]).
    UnknownToken,
}

/// Re-reads of the tokens per [`ReadCause`] (each attempt; a failed one is also a
/// `culvert_cluster_db_errors`), for `culvert_cluster_token_rereads`.
#[derive(Debug, Default)]
pub(crate) struct TokenRereadCounts {
    /// By notification.
    pub(crate) notice: AtomicU64,
    /// After the listener re-dialed.
    pub(crate) reconnect: AtomicU64,
    /// By the periodic backstop.
    pub(crate) timer: AtomicU64,
    /// For an Auth with a token this server did not know.
    pub(crate) unknown_token: AtomicU64,
}

impl TokenRereadCounts {
    fn count(&self, cause: ReadCause) {
        let c = match cause {
            ReadCause::Notice => &self.notice,
            ReadCause::Reconnect => &self.reconnect,
            ReadCause::Timer => &self.timer,
            ReadCause::UnknownToken => &self.unknown_token,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Orders the re-reads of the tokens: one at a time, so that they are applied in the order
/// they were read and an older read never replaces a newer one.
#[derive(Debug, Default)]
pub(crate) struct TokenReads {
    /// Held across each re-read.
    reads: tokio::sync::Mutex<Reads>,
}

/// When re-reads happened, as far as Auths with unknown tokens care.
#[derive(Debug, Default)]
struct Reads {
    /// When the last re-read made for an unknown token started (they are spaced by it).
    unknown_started: Option<Instant>,
    /// When the newest re-read that was put in force started, whoever asked for it: an
    /// Auth that missed before that needs no re-read of its own.
    applied_started: Option<Instant>,
}

/// The tokens and tenant limits in the database, plus the entry the other servers use.
/// A row that does not parse is left out (and logged); the others still count.
pub(crate) async fn load(db: &ClusterDb, secret: &str) -> Result<TokenStore, ClusterError> {
    let rows = db.tokens().await?;
    let mut entries = Vec::with_capacity(rows.len() + 1);
    for (name, json) in rows {
        match serde_json::from_value::<TokenEntry>(json) {
            Ok(e) if e.name == name => entries.push(e),
            Ok(e) => {
                tracing::warn!(token = %name, entry = %e.name, "token in the cluster registry left out: its entry names another token")
            }
            Err(e) => {
                tracing::warn!(token = %name, error = %e, "token in the cluster registry left out: unreadable entry")
            }
        }
    }
    let mut tenants = BTreeMap::new();
    for (name, json) in db.tenants().await? {
        match serde_json::from_value::<TenantLimits>(json) {
            Ok(l) => {
                tenants.insert(name, l);
            }
            Err(e) => {
                tracing::warn!(tenant = %name, error = %e, "tenant limits in the cluster registry left out")
            }
        }
    }
    let mut store = TokenStore::from_stored(entries).with_tenants(tenants);
    store.push(peer_entry(), secret);
    Ok(store)
}

/// The entry of the other servers: no role, so they can neither register, reach services
/// as access clients nor dial; they only hand over public connections and access streams
/// for this server's agents (see `peer_streams`).
fn peer_entry() -> TokenEntry {
    TokenEntry {
        name: CLUSTER_TOKEN_NAME.to_owned(),
        tenant: Some(CLUSTER_TOKEN_NAME.to_owned()),
        roles: Some(Vec::new()),
        sha256: String::new(),
        services: Some(Vec::new()),
        ports: None,
        public_clients: None,
        max_services: 0,
        max_ports: None,
        max_udp_flows: None,
        max_connections: None,
        access: None,
        expires: None,
    }
}

/// Follows token changes: each notification (and every [`REREAD`]) re-reads the tokens
/// and applies them to live sessions. A failed read keeps the tokens in force.
pub(super) async fn follow(inner: Arc<Inner>, cluster: Arc<Cluster>) {
    let (_listening, mut notices) = culvert_cluster::listen(&cluster.config.url);
    let mut tick = tokio::time::interval(REREAD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let cause = tokio::select! {
            n = notices.recv() => match n {
                Some(Notice::Tokens) => Some(ReadCause::Notice),
                Some(Notice::Presence) => {
                    cluster.changed.notify_one();
                    None
                }
                Some(Notice::Reconnected) => {
                    cluster.changed.notify_one();
                    Some(ReadCause::Reconnect)
                }
                // The listener is gone (it never ends while its handle lives): re-read on
                // the timer only.
                None => {
                    tick.tick().await;
                    Some(ReadCause::Timer)
                }
            },
            _ = tick.tick() => Some(ReadCause::Timer),
        };
        let Some(cause) = cause else {
            continue;
        };
        let mut reads = cluster.token_reads.reads.lock().await;
        let started = Instant::now();
        if reread_and_apply(&inner, &cluster, cause).await {
            reads.applied_started = Some(started);
        }
    }
}

/// Re-reads the tokens because an Auth that arrived at `missed_at` carried one this server
/// does not know. It may be in the registry already with its notification still on the way:
/// a token made a moment before its agent dials (`culvert token new --cluster`, then the
/// agent) would otherwise be refused by whichever servers had not heard yet, and the agent
/// would wait out its longest backoff. Returns once a re-read that started after `missed_at`
/// is in force (this one, or another Auth's). Coalesced and spaced by
/// [`UNKNOWN_REREAD_EVERY`]; a failed read keeps the tokens in force.
pub(crate) async fn reread_for_unknown(inner: &Inner, cluster: &Cluster, missed_at: Instant) {
    let mut reads = cluster.token_reads.reads.lock().await;
    if reads.applied_started.is_some_and(|t| t >= missed_at) {
        return;
    }
    if let Some(t) = reads.unknown_started {
        tokio::time::sleep_until(t + UNKNOWN_REREAD_EVERY).await;
    }
    // Recorded before the read, so that the spacing holds even for a read cut short by its
    // Auth's deadline; counted as applied only once it is.
    let started = Instant::now();
    reads.unknown_started = Some(started);
    if reread_and_apply(inner, cluster, ReadCause::UnknownToken).await {
        reads.applied_started = Some(started);
    }
}

/// Reads the tokens and puts them in force, live sessions included; on a failed read the
/// tokens in force stay (`false`). The caller holds [`TokenReads`]' lock.
async fn reread_and_apply(inner: &Inner, cluster: &Cluster, cause: ReadCause) -> bool {
    inner.counters.cluster_token_rereads.count(cause);
    match load(&cluster.db, cluster.peers.secret()).await {
        Ok(store) => {
            let report = inner.apply_tokens(store);
            if report.sessions_closed + report.sessions_updated > 0 {
                tracing::info!(
                    closed = report.sessions_closed,
                    updated = report.sessions_updated,
                    withdrawn = report.services_withdrawn,
                    "cluster tokens changed; live sessions follow"
                );
            }
            true
        }
        Err(e) => {
            inner
                .counters
                .cluster_db_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "cluster tokens not re-read; the ones in force stay");
            false
        }
    }
}
