//! The public TCP listeners of a cluster server. Every server binds the leased port of
//! every service present in the cluster, so a balancer (or DNS) may send a client to any
//! of them: a client of a service whose agent this server holds is served here, any other
//! is forwarded to a server that holds it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use culvert_transport::{relay_tcp, tune_accepted, tune_listener, AcceptErrors};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::server::Inner;

/// Passes of the presence loop a listener survives while nothing wants it: a service
/// registered here between a pass's reading of the sessions and its reconciling must not
/// lose its listener to that pass.
const GRACE_PASSES: u8 = 2;

struct Bound {
    tenant: String,
    service: String,
    task: tokio::task::AbortHandle,
    /// Passes in a row that did not want it.
    unwanted: u8,
}

/// The listeners, by port.
#[derive(Default)]
pub(crate) struct Listeners {
    bound: Mutex<HashMap<u16, Bound>>,
}

impl Listeners {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Bound>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure `port` is bound for `service` of `tenant` (a registration here, or a
    /// service another server's agent holds).
    pub(crate) async fn ensure(
        &self,
        inner: &Arc<Inner>,
        port: u16,
        tenant: &str,
        service: &str,
    ) -> std::io::Result<()> {
        {
            let mut bound = self.lock();
            if let Some(b) = bound.get_mut(&port) {
                if b.tenant == tenant && b.service == service {
                    b.unwanted = 0;
                    return Ok(());
                }
                // The lease moved to another service (the database is the authority).
                b.task.abort();
                bound.remove(&port);
            }
        }
        let addr = SocketAddr::new(inner.config().public_bind, port);
        let listener = TcpListener::bind(addr).await?;
        tune_listener(&listener);
        let task = tokio::spawn(serve(
            inner.clone(),
            listener,
            tenant.to_owned(),
            service.to_owned(),
        ));
        let mut bound = self.lock();
        if let Some(old) = bound.insert(
            port,
            Bound {
                tenant: tenant.to_owned(),
                service: service.to_owned(),
                task: task.abort_handle(),
                unwanted: 0,
            },
        ) {
            old.task.abort();
        }
        tracing::info!(port, %tenant, %service, "cluster public port bound");
        Ok(())
    }

    /// Binds what `wanted` lists (port, tenant, service) and closes what has not been
    /// wanted for [`GRACE_PASSES`] passes.
    pub(crate) async fn reconcile(&self, inner: &Arc<Inner>, wanted: &[(u16, String, String)]) {
        for (port, tenant, service) in wanted {
            if let Err(e) = self.ensure(inner, *port, tenant, service).await {
                tracing::warn!(port, %tenant, %service, error = %e, "cluster public port not bound; retried on the next heartbeat");
            }
        }
        let mut bound = self.lock();
        bound.retain(|port, b| {
            if wanted.iter().any(|(p, _, _)| p == port) {
                return true;
            }
            b.unwanted += 1;
            if b.unwanted < GRACE_PASSES {
                return true;
            }
            b.task.abort();
            tracing::info!(port, tenant = %b.tenant, service = %b.service, "cluster public port closed: no server holds its service");
            false
        });
    }

    /// Closes every listener (the server stops).
    pub(crate) fn close_all(&self) {
        for (_, b) in self.lock().drain() {
            b.task.abort();
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.close_all();
    }
}

async fn serve(inner: Arc<Inner>, listener: TcpListener, tenant: String, service: String) {
    let mut errors = AcceptErrors::default();
    let name = format!("public port of {tenant}/{service}");
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                errors.on_error(&listener, &name, &e).await;
                continue;
            }
        };
        let span = tracing::debug_span!("public", %tenant, %service, client = %peer);
        tokio::spawn(
            client(inner.clone(), sock, peer, tenant.clone(), service.clone()).instrument(span),
        );
    }
}

/// One public client: served by this server's agent when it holds the service, else
/// forwarded to a server that does; refused with a reset when none does.
async fn client(
    inner: Arc<Inner>,
    sock: TcpStream,
    peer: SocketAddr,
    tenant: String,
    service: String,
) {
    tune_accepted(&sock);
    if let Some((session, svc)) = inner.find_service(&tenant, &service) {
        if !svc.private && svc.protocol == crate::Protocol::Tcp && session.pick().is_some() {
            svc.connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::public::handle(inner, sock, peer, session, svc).await;
            return;
        }
    }
    let Some(cluster) = inner.cluster.clone() else {
        culvert_transport::reset_on_close(&sock);
        return;
    };
    let Some(server) = cluster.remote_holder(&tenant, &service) else {
        inner
            .counters
            .cluster_forward_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!("refusing client: no server of the cluster holds the service");
        culvert_transport::reset_on_close(&sock);
        return;
    };
    let stream = match cluster
        .peers
        .open(&server, &tenant, &service, peer.to_string())
        .await
    {
        Ok(s) => s,
        Err(reason) => {
            inner
                .counters
                .cluster_forward_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%reason, "refusing client: forwarding failed");
            culvert_transport::reset_on_close(&sock);
            return;
        }
    };
    inner
        .counters
        .cluster_forwarded_out
        .fetch_add(1, Ordering::Relaxed);
    match relay_tcp(sock, &stream).await {
        Ok(t) => {
            tracing::debug!(up = t.up, down = t.down, server = %server.id, "forwarded public connection done")
        }
        Err(e) => {
            tracing::debug!(error = %e, server = %server.id, "forwarded public connection aborted")
        }
    }
}
