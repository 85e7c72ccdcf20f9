//! The heartbeat and presence loop: this server's heartbeat, which of its agents' services
//! the database says it holds, the other servers' services as last read, and the public
//! listeners that follows from both.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use culvert_cluster::{Presence, Proto};

use super::{proto_of, Cluster};
use crate::server::Inner;

/// Runs until the server stops: a pass every heartbeat interval, and one as soon as
/// something changed (a registration here, a notification from another server).
pub(super) async fn run(inner: Arc<Inner>, cluster: Arc<Cluster>) {
    // What the database holds for this server, as far as this loop knows.
    let mut recorded: HashSet<Key> = HashSet::new();
    let mut tick = tokio::time::interval(cluster.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cluster.changed.notified() => {}
        }
        pass(&inner, &cluster, &mut recorded).await;
    }
}

/// One pass: heartbeat, presence of the local services, the other servers' presence,
/// then the listeners. Each step that fails is logged and retried on the next pass; what
/// was read before stays in force meanwhile.
async fn pass(inner: &Arc<Inner>, cluster: &Arc<Cluster>, recorded: &mut HashSet<Key>) {
    let failed = || {
        inner
            .counters
            .cluster_db_errors
            .fetch_add(1, Ordering::Relaxed)
    };
    if let Err(e) = cluster.db.heartbeat(&cluster.me).await {
        failed();
        tracing::warn!(error = %e, "cluster heartbeat failed; tunnels keep running from the cache");
    }
    let local = local_services(inner);
    for k in local.difference(&recorded.clone()) {
        let p = presence(k);
        match cluster.db.set_presence(&cluster.me.id, &p).await {
            Ok(()) => {
                recorded.insert(k.clone());
            }
            Err(e) => {
                failed();
                tracing::warn!(error = %e, tenant = %p.tenant, service = %p.service, "presence not recorded; retried on the next heartbeat")
            }
        }
    }
    for k in recorded.clone().difference(&local) {
        let (tenant, service, proto) = (&k.0, &k.1, k.2);
        match cluster
            .db
            .clear_presence(&cluster.me.id, tenant, service, proto)
            .await
        {
            Ok(()) => {
                recorded.remove(k);
            }
            Err(e) => {
                failed();
                tracing::warn!(error = %e, %tenant, %service, "presence not cleared; retried on the next heartbeat")
            }
        }
    }
    match cluster
        .db
        .live_presence(cluster.config.presence_max_age())
        .await
    {
        Ok(rows) => cluster.set_remote(rows),
        Err(e) => {
            failed();
            tracing::warn!(error = %e, "cluster presence not read; forwarding follows the last view")
        }
    }
    let mut wanted: Vec<(u16, String, String)> = local
        .iter()
        .filter(|k| k.2 == Proto::Tcp && k.3 != 0)
        .map(|k| (k.3, k.0.clone(), k.1.clone()))
        .collect();
    wanted.extend(cluster.remote_tcp_ports());
    cluster.listeners.reconcile(inner, &wanted).await;
}

/// A presence row as a set member: tenant, service, protocol, port, token.
type Key = (String, String, Proto, u16, String);

fn presence(k: &Key) -> Presence {
    Presence {
        tenant: k.0.clone(),
        service: k.1.clone(),
        proto: k.2,
        port: k.3,
        token: k.4.clone(),
    }
}

/// The services the agents of this server hold now, as presence keys.
fn local_services(inner: &Inner) -> HashSet<Key> {
    let mut out = HashSet::new();
    for s in inner.sessions_snapshot() {
        if s.ended.load(Ordering::SeqCst) || s.live_muxes().is_empty() {
            continue;
        }
        let token = s.token();
        for svc in s.services().values() {
            if svc.is_withdrawn() {
                continue;
            }
            out.insert((
                token.tenant().to_owned(),
                svc.name.clone(),
                proto_of(svc.protocol),
                svc.port,
                token.name.clone(),
            ));
        }
    }
    out
}
