//! Registering a service: checks (name, role, token, tenant), quotas, a public port from
//! the registry and its socket, and the serving task.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use culvert_proto::control::ServiceProtocol;
use culvert_transport::tune_listener;
use tokio::net::TcpListener;

use super::Inner;
use crate::registry::{PortLease, Protocol};
use crate::session::{Service, Session};
use crate::PortRange;

/// How long a returning agent's registration waits for its previous port, still held by
/// its ending session, before it takes another.
const REMEMBERED_PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Registers (or re-confirms) a service, replacing a stale session of the same token that holds it.
pub(super) async fn register(
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
        if let Some(c) = &inner.cluster {
            c.changed.notify_one();
        }
        tracing::info!(session = %session.id, service = %name, "private service registered (no public port)");
        return Ok(svc);
    }
    let allowed: Vec<PortRange> = token
        .ports
        .iter()
        .flatten()
        .filter_map(|r| r.parse().ok())
        .collect();
    // In a cluster the port is leased in the shared database (unique across the cluster,
    // sticky per tenant and service), and every server binds it (see `cluster::listeners`).
    let requested = match inner.cluster.clone() {
        None => requested,
        Some(cluster) => {
            let range = match proto {
                Protocol::Tcp => inner.config.tcp_ports,
                Protocol::Udp => inner.config.udp_ports,
            };
            let port = cluster
                .lease(proto, tenant, name, requested, range, &allowed)
                .await?;
            if proto == Protocol::Udp || !session.culvert {
                // Served by this server alone, on the leased port (UDP is not forwarded
                // between servers).
                port
            } else {
                cluster
                    .listeners
                    .ensure(inner, port, tenant, name)
                    .await
                    .map_err(|e| format!("port {port} cannot be bound: {e}"))?;
                let mut svc = Service::new(name, proto, port, None);
                svc.private = false;
                *svc.quota.get_mut().unwrap_or_else(|p| p.into_inner()) =
                    std::mem::take(&mut charges);
                let svc = Arc::new(svc);
                if session.ended.load(Ordering::SeqCst) {
                    svc.release_quota();
                    return Err("session ended".into());
                }
                let svc = record(session, tenant, svc)?;
                cluster.changed.notify_one();
                tracing::info!(session = %session.id, service = %name, ?proto, port, "service registered (cluster lease)");
                return Ok(svc);
            }
        }
    };
    if requested == 0 {
        // A returning agent's previous port may still be held by its ending session for a
        // moment (its tasks are being torn down): wait for its release, up to a bound.
        let deadline = tokio::time::Instant::now() + REMEMBERED_PORT_WAIT;
        inner
            .registry
            .remembered_released(proto, &token.name, name, deadline)
            .await;
    }
    let mut skip = HashSet::new();
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
                        // Declared before the serving future, so dropped after it: the
                        // socket closes before the service (and with it the port's lease)
                        // can go, and a port back in the registry is always bindable.
                        let _lease_after_socket = svc.clone();
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
                if let Some(c) = &inner.cluster {
                    c.changed.notify_one();
                }
                tracing::info!(session = %session.id, service = %name, ?proto, port, "service registered");
                return Ok(svc);
            }
            Err(e) => {
                // Not one of this server's sockets (those close before their port returns
                // to the registry): something else holds it. Another port, if any may do.
                inner.registry.release(proto, port);
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
    // Read after the insert: a session ending meanwhile either drains the service with the
    // rest, or has set `ended` before this reads it and the service leaves here.
    if session.ended.load(Ordering::SeqCst) {
        session.withdraw_service(&svc);
        return Err("session ended".into());
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use culvert_proto::control::AuthExt;
    use culvert_proto::{Connection, Control, Side, Token};
    use culvert_transport::ws::{dial, ServerUrl};
    use culvert_transport::{Mux, MuxEvent};

    use super::*;
    use crate::tokens::TokenStore;
    use crate::{Server, ServerConfig};

    const TOKEN: &str = "register-test-token";

    /// A server whose public ports are a block of the test port blocks (below the ephemeral
    /// range, held by this test process alone). They were fixed ports (31510 and 31540 on)
    /// inside the range other tests' single ports come from, so a test running at the same
    /// time could pick one of them.
    fn config() -> ServerConfig {
        let block = culvert_testkit::ports::port_block();
        ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            PortRange {
                start: *block.start(),
                end: *block.start() + 19,
            },
        )
    }

    fn session_of(tokens: &TokenStore) -> Arc<Session> {
        let entry = tokens.check(TOKEN).unwrap().clone();
        let peer = "127.0.0.1:1".parse().unwrap();
        Arc::new(Session::new(crate::ids::new_uuid(), entry, true, peer))
    }

    /// A returning agent's registration waits for the port its previous session still
    /// holds and gets it the moment that session lets it go: woken by the release, with no
    /// timer (the paused clock does not move). Before, it slept and polled every 20 ms.
    #[tokio::test(start_paused = true)]
    async fn a_registration_gets_a_released_port_without_polling() {
        let tokens = TokenStore::from_tokens(&[("a", TOKEN)]);
        let server = Server::bind(config(), tokens.clone(), None).await.unwrap();
        let inner = server.inner.clone();
        let leaving = session_of(&tokens);
        let held = register(&inner, &leaving, "web", ServiceProtocol::Tcp, 0, false)
            .await
            .unwrap();
        let port = held.port;
        // The old session ends, but something still holds its service (and so the port).
        inner.end_session(&leaving, "test: leaving");
        let returning = session_of(&tokens);
        let start = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let (inner, returning) = (inner.clone(), returning.clone());
            async move { register(&inner, &returning, "web", ServiceProtocol::Tcp, 0, false).await }
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "the port is still held");
        drop(held);
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.port, port, "the returning agent gets its port back");
        assert_eq!(
            tokio::time::Instant::now(),
            start,
            "woken by the release, not by a timer"
        );
    }

    /// A connection of an agent authenticated with `TOKEN`, as the agent makes one.
    async fn agent_connection(
        server: &crate::ServerHandle,
    ) -> (Mux, tokio::sync::mpsc::UnboundedReceiver<MuxEvent>) {
        let url = ServerUrl::parse(&format!("ws://{}", server.addr)).unwrap();
        let ws = dial(&url, None, Duration::from_secs(30), false)
            .await
            .unwrap();
        let mut conn = Connection::new(
            Side::Client,
            culvert_proto::Config::default(),
            std::time::Instant::now(),
        )
        .unwrap();
        conn.send_control_first(Control::Auth {
            token: Token(TOKEN.into()),
            client_id: crate::ids::new_uuid(),
            ext: Some(AuthExt {
                version: culvert_proto::control::CULVERT_VERSION,
                capabilities: 0,
            }),
        })
        .unwrap();
        let (mux, mut events) = Mux::spawn_with(ws, conn);
        match next_control(&mux, &mut events).await {
            Control::AuthOk { .. } => {}
            other => panic!("expected AuthOk, got {other:?}"),
        }
        (mux, events)
    }

    async fn next_control(
        mux: &Mux,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    ) -> Control {
        let wait = async {
            loop {
                match events.recv().await.expect("connection open") {
                    MuxEvent::Control(c) => {
                        mux.control_handled();
                        return c;
                    }
                    MuxEvent::Closed(r) => panic!("connection closed: {r}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("a control message within 10 s")
    }

    /// While a registration waits (for the agent's previous port), the connection's loop
    /// goes on serving the streams the agent opens. Before, the loop awaited the
    /// registration: the stream was served only after it gave up waiting and took another
    /// port, so the agent did not get its port back.
    #[tokio::test]
    async fn a_waiting_registration_does_not_stop_the_connection() {
        let tokens = TokenStore::from_tokens(&[("a", TOKEN)]);
        let server = Server::bind(config(), tokens, None)
            .await
            .unwrap()
            .spawn()
            .unwrap();
        // The agent's previous port, still held by its previous (ending) session.
        let registry = server.inner.registry.clone();
        let port = registry
            .assign(Protocol::Tcp, "a", "web", 0, &[], &HashSet::new())
            .unwrap();
        let lease = PortLease::new(registry, Protocol::Tcp, port);

        let (mux, mut events) = agent_connection(&server).await;
        mux.send_control(Control::Register {
            name: "web".into(),
            protocol: ServiceProtocol::Tcp,
            local_port: 80,
            remote_port: 0,
            ext: None,
        })
        .unwrap();
        // A stream the agent opens meanwhile (an access check) is answered, whatever the
        // answer: data, end or reset.
        let stream = mux.open("?web").await.unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(10), stream.recv()).await;
        assert!(
            answered.is_ok(),
            "the stream is served while the registration waits"
        );
        drop(lease);
        match next_control(&mux, &mut events).await {
            Control::RegisterOk { ext, .. } => {
                assert_eq!(
                    ext.map(|e| e.assigned_port),
                    Some(port),
                    "its previous port"
                )
            }
            other => panic!("expected RegisterOk, got {other:?}"),
        }
    }
}
