//! Control messages of an agent connection: Register (and the public socket it binds),
//! Unregister, Connect replies, Disconnect.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use culvert_proto::control::{RegisterOkExt, ServiceProtocol};
use culvert_proto::Control;
use culvert_transport::{tune_listener, Mux};
use tokio::net::TcpListener;

use super::Inner;
use crate::registry::{PortLease, Protocol};
use crate::session::{Service, Session};
use crate::PortRange;

/// Answers one control message of an agent connection.
pub(super) async fn handle_control(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    mux: &Mux,
    c: Control,
) {
    match c {
        Control::Register {
            name,
            protocol,
            remote_port,
            ext,
            ..
        } => {
            let private = session.culvert && ext.is_some_and(|e| e.flags & 1 != 0);
            let reply = match register(inner, session, &name, protocol, remote_port, private).await
            {
                Ok(svc) => Control::RegisterOk {
                    service_id: svc.id,
                    ext: session.culvert.then(|| RegisterOkExt {
                        assigned_port: svc.port,
                        name: svc.name.clone(),
                    }),
                },
                Err(reason) => {
                    // The name comes from the peer: escaped, like every peer-supplied text.
                    tracing::warn!(service = ?name, %reason, "registration refused");
                    Control::RegisterFail { reason }
                }
            };
            let _ = mux.send_control(reply);
        }
        Control::Unregister { service_id } => {
            let removed = {
                let mut svcs = session.services();
                let name = svcs
                    .values()
                    .find(|s| s.id == service_id)
                    .map(|s| s.name.clone());
                name.and_then(|n| svcs.remove(&n))
            };
            if let Some(svc) = removed {
                svc.release_quota();
                if let Some(t) = &svc.task {
                    t.abort();
                }
                session.forget_flows_of(&svc);
                tracing::info!(service = %svc.name, port = svc.port, "service unregistered");
            }
        }
        Control::ConnectAck { connection_id } => {
            if let Some(t) = session.take_pending_connect(&connection_id) {
                inner.open_latency.observe(t.elapsed());
            }
        }
        Control::ConnectFail {
            connection_id,
            reason,
        } => {
            session.take_pending_connect(&connection_id);
            tracing::info!(%connection_id, reason = ?reason, "agent could not reach its target")
        }
        Control::Disconnect { reason } => {
            tracing::info!(reason = ?reason, "agent disconnected");
            mux.abort("agent disconnected");
        }
        Control::Auth { .. } => mux.abort("second Auth on one connection"),
        other => {
            tracing::debug!(message = ?other.frame_type(), "ignoring unexpected control message")
        }
    }
}

/// Registers (or re-confirms) a service, replacing a stale session of the same token that holds it.
async fn register(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    name: &str,
    protocol: ServiceProtocol,
    requested: u16,
    private: bool,
) -> Result<Arc<Service>, String> {
    // Only A-Z a-z 0-9 . _ - : a name is safe in logs and terminals, and never reads as an
    // address (`:`), a check (`?`) or a tenant (`/`) in a stream target.
    if !crate::names::valid_name(name) {
        return Err(crate::names::name_problem("service name", name));
    }
    // The entry in force when the registration starts; a reload that changes it meanwhile
    // is caught when the service is recorded (see `record`).
    let token = session.token();
    if !token.has_role(crate::Role::Agent) {
        return Err(format!(
            "token {:?} may not register services: it has no agent role (its roles: {})",
            token.name,
            token.role_names()
        ));
    }
    // Pooled connections register the same services concurrently: one at a time, so the
    // second finds the first's service instead of binding a second port.
    let _registering = session.register_lock.lock().await;
    if let Some(allowed) = &token.services {
        if !allowed.iter().any(|s| s == name) {
            return Err(format!("token may not register service {name:?}"));
        }
    }
    if let Some(existing) = session.services().get(name) {
        // Another pooled connection of the same agent registers again: same answer.
        return Ok(existing.clone());
    }
    let proto = match protocol {
        ServiceProtocol::Tcp => Protocol::Tcp,
        ServiceProtocol::Udp => Protocol::Udp,
    };
    let tenant = token.tenant();
    // A new session of the same agent (same token) replaces a stale one holding the name.
    let stale: Vec<Arc<Session>> = inner
        .lock_sessions()
        .values()
        .filter(|s| !Arc::ptr_eq(s, session) && s.token().name == token.name)
        .filter(|s| s.services().contains_key(name))
        .cloned()
        .collect();
    for s in stale {
        inner.end_session(&s, "replaced by a new session of the same agent");
    }
    // Streams find a service by tenant and name: within a tenant a name is held by one
    // token only, or a stream could reach the wrong agent. Other tenants may use it too.
    let holder = inner
        .lock_sessions()
        .values()
        .find(|s| {
            s.token().name != token.name
                && s.token().tenant() == tenant
                && !s.ended.load(Ordering::SeqCst)
                && s.services().contains_key(name)
        })
        .map(|s| s.token().name.clone());
    if let Some(holder) = holder {
        return Err(format!(
            "service name {name:?} is held in tenant {tenant:?} by token {holder:?}"
        ));
    }
    // Counted for the token and its tenant over all their sessions (a new client id gains
    // nothing); given back when the service leaves its session, or here if it fails.
    let tenant_limits = inner.tenant_limits(tenant);
    let charge = |r| {
        inner
            .quotas
            .charge_token(r, &session.token(), &tenant_limits, &inner.config)
            .map_err(|e| e.to_string())
    };
    let mut charges = vec![charge(crate::quota::Resource::Services)?];
    if !private {
        charges.push(charge(crate::quota::Resource::Ports)?);
    }
    if private {
        let svc = Service::new(name, proto, 0, None);
        *svc.quota.lock().unwrap_or_else(|p| p.into_inner()) = charges;
        let svc = Arc::new(svc);
        if session.ended.load(Ordering::SeqCst) {
            return Err("session ended".into());
        }
        let svc = record(session, tenant, svc)?;
        tracing::info!(session = %session.id, service = %name, "private service registered (no public port)");
        return Ok(svc);
    }
    let allowed: Vec<PortRange> = token
        .ports
        .iter()
        .flatten()
        .filter_map(|r| r.parse().ok())
        .collect();
    if requested == 0 {
        // A returning agent's previous port may still be held by its ending session for a
        // moment (its tasks are being torn down): wait briefly for it.
        for _ in 0..50 {
            if !inner.registry.remembered_in_use(proto, &token.name, name) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut skip = HashSet::new();
    let mut busy_retries = 0;
    for _ in 0..64 {
        let port = inner
            .registry
            .assign(proto, &token.name, name, requested, &allowed, &skip)
            .map_err(|e| e.to_string())?;
        match bind_public(inner, proto, port).await {
            Ok(socket) => {
                let lease = PortLease::new(inner.registry.clone(), proto, port);
                let mut svc = Service::new(name, proto, port, Some(lease));
                *svc.quota.get_mut().unwrap_or_else(|p| p.into_inner()) =
                    std::mem::take(&mut charges);
                let listener = match socket {
                    PublicSocket::Tcp(l) => Some(l),
                    PublicSocket::Udp(u) => {
                        svc.udp = Some(crate::udp::UdpService::new(u));
                        None
                    }
                };
                let svc = if session.culvert {
                    // The serving task needs the service; create it, then record its handle.
                    let (tx, rx) = tokio::sync::oneshot::channel::<Arc<Service>>();
                    let sess = session.clone();
                    let server = inner.clone();
                    let task = tokio::spawn(async move {
                        let Ok(svc) = rx.await else { return };
                        match listener {
                            Some(l) => crate::public::serve_tcp(server, l, sess, svc).await,
                            None => crate::udp::serve_udp(server, sess, svc).await,
                        }
                    });
                    svc.task = Some(task.abort_handle());
                    let svc = Arc::new(svc);
                    let _ = tx.send(svc.clone());
                    svc
                } else {
                    // A zlayer-tunnel v1 agent has no data plane: the port is reserved, not served.
                    drop(listener);
                    svc.udp = None;
                    Arc::new(svc)
                };
                if session.ended.load(Ordering::SeqCst) {
                    svc.release_quota();
                    if let Some(t) = &svc.task {
                        t.abort();
                    }
                    return Err("session ended".into());
                }
                let svc = record(session, tenant, svc)?;
                tracing::info!(session = %session.id, service = %name, ?proto, port, "service registered");
                return Ok(svc);
            }
            Err(e) => {
                inner.registry.release(proto, port);
                // The socket of a just-ended service may still be closing: retry briefly.
                if e.kind() == std::io::ErrorKind::AddrInUse && busy_retries < 25 {
                    busy_retries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                if requested != 0 {
                    return Err(format!("port {port} cannot be bound: {e}"));
                }
                skip.insert(port);
            }
        }
    }
    Err("no bindable port found".into())
}

/// Records a new service of `tenant` in its session, unless a reload narrowed the token
/// meanwhile: that reload's pass over the session's services may have come before this.
fn record(session: &Session, tenant: &str, svc: Arc<Service>) -> Result<Arc<Service>, String> {
    session.services().insert(svc.name.clone(), svc.clone());
    // Read after the insert: a reload that put a new entry in force before it is seen here.
    if let Some(reason) = crate::reload::service_refusal(&session.token(), tenant, &svc) {
        session.withdraw_service(&svc);
        return Err(format!("the token was reloaded meanwhile: {reason}"));
    }
    Ok(svc)
}

enum PublicSocket {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

async fn bind_public(inner: &Inner, proto: Protocol, port: u16) -> std::io::Result<PublicSocket> {
    let addr = SocketAddr::new(inner.config.public_bind, port);
    Ok(match proto {
        Protocol::Tcp => {
            let l = TcpListener::bind(addr).await?;
            tune_listener(&l);
            PublicSocket::Tcp(l)
        }
        Protocol::Udp => {
            // Bursts from many clients arrive while the relay task is busy: a 4 MiB receive
            // buffer (the kernel caps it at net.core.rmem_max) keeps them from being dropped.
            PublicSocket::Udp(culvert_transport::bind_udp(addr, 4 << 20, Some(4 << 20))?)
        }
    })
}
