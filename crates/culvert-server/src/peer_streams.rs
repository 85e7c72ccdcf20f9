//! Streams a peer opens towards the server: access sessions reaching a service by name
//! (joined to a stream the server opens to that service's agent) and node tunnels asking
//! this server to dial `HOST:PORT` (checked against its allow-list after resolution).
//!
//! The stream's target kind says which (PROTOCOL.md §8.1): a service, a probe (`?NAME`)
//! that checks access without connecting, a UDP flow (`udp://…`, its datagrams carry the
//! stream id) to a service or an address, or a TCP address.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use culvert_proto::control::ConnectExt;
use culvert_proto::{reset_code, Control, Target};
use culvert_transport::udp_target::TargetFlows;
use culvert_transport::{relay_streams, relay_tcp_until, tune_tcp, Mux, TunnelStream};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::names::{escape, ServiceRef};
use crate::registry::Protocol;
use crate::server::Counters;
use crate::session::{Service, Session};
use crate::{Role, ServerConfig};

/// How long an answered access check waits for the peer to finish its side.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What peer-opened streams need of the server, and nothing more: its configuration and
/// counters, the live services by tenant and name, and the UDP flow quota.
pub(crate) trait Directory: Send + Sync {
    /// The server's configuration (allow-list, timeouts, UDP caps).
    fn config(&self) -> &ServerConfig;
    /// Server-wide counters (streams a reload reset).
    fn counters(&self) -> &Counters;
    /// The live session serving the service `name` of `tenant`, and the service.
    fn find_service(&self, tenant: &str, name: &str) -> Option<(Arc<Session>, Arc<Service>)>;
    /// The tenants (other than `except`) holding a live service named `name`.
    fn tenants_holding(&self, name: &str, except: &str) -> Vec<String>;
    /// Charges a new UDP flow of a service of `owner` to its token and tenant.
    fn charge_flow(&self, owner: &Session) -> Result<crate::quota::Charge, crate::quota::Refusal>;
    /// The cluster this server belongs to, if any: services held by another server's
    /// agents are reached through it.
    fn cluster(&self) -> Option<&crate::cluster::Cluster>;
}

/// What a peer-opened stream is served with: the server, the peer's session, the
/// connection it arrived on and that connection's dialed UDP flows.
pub(crate) struct Ctx {
    pub(crate) server: Arc<dyn Directory>,
    pub(crate) session: Arc<Session>,
    pub(crate) mux: Mux,
    pub(crate) dials: Arc<TargetFlows>,
    pub(crate) spliced: Arc<crate::udp::Spliced>,
}

/// Serves one peer-opened stream in its own task.
pub(crate) fn spawn(ctx: Ctx, stream: TunnelStream, target: Target) {
    let span = tracing::debug_span!("peer_stream", token = %ctx.session.token().name, target = %target, stream = stream.id().0);
    tokio::spawn(
        async move {
            let (server, session) = (&ctx.server, &ctx.session);
            match &target {
                Target::Probe(name) => check(&**server, session, stream, name).await,
                Target::UdpDial(addr) => dial_udp(&ctx, stream, addr).await,
                Target::UdpService(name) => access_udp(&ctx, stream, name).await,
                Target::Dial(addr) => dial(&**server, session, stream, addr).await,
                Target::Service(name) => access(&**server, session, stream, name).await,
                // Another server of the cluster hands over a public connection or an access
                // stream for a service whose agent this server holds.
                Target::Inbound {
                    service,
                    client_addr,
                    ..
                } if crate::cluster::Cluster::is_peer_token(&session.token().name) => {
                    forwarded(&**server, stream, service, client_addr.clone()).await
                }
                // Only a server opens these; from a peer it is refused, like an unknown name.
                _ => stream.reset(reset_code::NOT_ALLOWED),
            }
        }
        .instrument(span),
    );
}

/// Why a stream was refused: the reset code and the reason logged.
type Refusal = (u64, String);

/// The service that `target` (`NAME` or `TENANT/NAME`) names for `session`, reachable over
/// `protocol` (`None`: either), with its serving session; else why not. A bare name is the
/// caller's own tenant's service; failing that, the one granted tenant holding it.
fn resolve(
    server: &dyn Directory,
    session: &Session,
    target: &str,
    protocol: Option<Protocol>,
) -> Result<(Arc<Session>, Arc<Service>), Refusal> {
    let current = session.token();
    let token = &*current;
    if !token.has_role(Role::Access) {
        return Err((
            reset_code::NOT_ALLOWED,
            format!(
                "token {:?} may not reach services: it has no access role (its roles: {})",
                token.name,
                token.role_names()
            ),
        ));
    }
    // A target no service can have is refused like one the token may not reach.
    let Some(r) = ServiceRef::parse(target) else {
        return Err((
            reset_code::NOT_ALLOWED,
            format!(
                "stream target {} is not a service (NAME or TENANT/NAME, names of A-Z a-z 0-9 . _ -)",
                escape(target)
            ),
        ));
    };
    let own = token.tenant();
    let found = match r.tenant {
        Some(tenant) => {
            if !token.may_access(tenant, r.name) {
                return Err((
                    reset_code::NOT_ALLOWED,
                    format!("token {:?} is not allowed service {target:?}", token.name),
                ));
            }
            server.find_service(tenant, r.name)
        }
        None => match server.find_service(own, r.name) {
            Some(found) => Some(found),
            None => {
                if !granted_anywhere(token, r.name) {
                    return Err((
                        reset_code::NOT_ALLOWED,
                        format!(
                            "token {:?} is not allowed service {target:?} (its tenant {own:?} has none, and no grant names it)",
                            token.name
                        ),
                    ));
                }
                let tenants: Vec<String> = server
                    .tenants_holding(r.name, own)
                    .into_iter()
                    .filter(|t| token.grants(t, r.name))
                    .collect();
                match tenants.as_slice() {
                    [] => None,
                    [t] => server.find_service(t, r.name),
                    several => {
                        return Err((
                            reset_code::UNKNOWN_TARGET,
                            format!(
                            "service {target:?} is held by several tenants ({}): name it TENANT/{}",
                            several.join(", "),
                            r.name
                        ),
                        ))
                    }
                }
            }
        },
    };
    match found {
        None => Err((
            reset_code::UNKNOWN_TARGET,
            format!("no service {target:?} is registered"),
        )),
        Some((_, svc)) if protocol.is_some_and(|p| p != svc.protocol) => Err((
            reset_code::UNKNOWN_TARGET,
            format!(
                "service {target:?} is {}, and this stream asked for {}",
                proto_name(svc.protocol),
                protocol.map_or("either", proto_name)
            ),
        )),
        Some((owner, _)) if owner.pick().is_none() => Err((
            reset_code::UNAVAILABLE,
            format!("service {target:?} has no live agent connection"),
        )),
        Some(found) => Ok(found),
    }
}

/// Serves an access stream for `target` through the cluster when no agent of this server
/// holds it and another server's does; false when none does (the caller refuses it). The
/// token's right to reach the service was checked by `resolve` before it looked the
/// service up (a bare name is the token's own tenant's).
async fn access_elsewhere(
    server: &dyn Directory,
    session: &Session,
    stream: &TunnelStream,
    target: &str,
) -> bool {
    let Some(cluster) = server.cluster() else {
        return false;
    };
    let Some(r) = ServiceRef::parse(target) else {
        return false;
    };
    let token = session.token();
    let tenant = r.tenant.unwrap_or(token.tenant());
    if server.find_service(tenant, r.name).is_some() {
        return false;
    }
    let Some(holder) = cluster.remote_holder(tenant, r.name) else {
        return false;
    };
    let client_addr = format!("access:{}@{}", token.name, session.peer);
    let counters = server.counters();
    match cluster
        .peers
        .open(&holder, tenant, r.name, client_addr)
        .await
    {
        Ok(towards) => {
            counters
                .cluster_forwarded_out
                .fetch_add(1, Ordering::Relaxed);
            match relay_streams(stream, &towards).await {
                Ok(t) => {
                    tracing::debug!(up = t.up, down = t.down, server = %holder.id, "forwarded access stream done")
                }
                Err(e) => {
                    tracing::debug!(error = %e, server = %holder.id, "forwarded access stream aborted")
                }
            }
            true
        }
        Err(reason) => {
            counters
                .cluster_forward_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%reason, "access stream not forwarded");
            stream.reset(reset_code::UNAVAILABLE);
            true
        }
    }
}

/// A public connection or access stream another server of the cluster hands over for
/// `TENANT/NAME`: joined to this server's agent serving it (never forwarded again, so a
/// stale view cannot make two servers bounce a stream between them).
async fn forwarded(
    server: &dyn Directory,
    stream: TunnelStream,
    target: &str,
    client_addr: String,
) {
    let found = ServiceRef::parse(target)
        .and_then(|r| Some((r.tenant?, r.name)))
        .and_then(|(tenant, name)| server.find_service(tenant, name));
    let Some((owner, svc)) = found.filter(|(_, svc)| svc.protocol == Protocol::Tcp) else {
        tracing::info!(target = %escape(target), "forwarded stream refused: no agent here serves it");
        stream.reset(reset_code::UNKNOWN_TARGET);
        return;
    };
    // A public connection (its client an address; an access stream's is `access:NAME@…`)
    // answers to the owner token's `public_clients` here, where that token is known.
    if let Ok(client) = client_addr.parse::<std::net::SocketAddr>() {
        if !crate::public::client_admitted(server.counters(), &owner.token(), client) {
            stream.reset(reset_code::NOT_ALLOWED);
            return;
        }
    }
    let towards = match owner.open_connection(&svc, client_addr).await {
        Ok(s) => s,
        Err(reason) => {
            tracing::debug!(%reason, "forwarded stream not served");
            stream.reset(reset_code::UNAVAILABLE);
            return;
        }
    };
    svc.connections.fetch_add(1, Ordering::Relaxed);
    server
        .counters()
        .cluster_forwarded_in
        .fetch_add(1, Ordering::Relaxed);
    let totals = tokio::select! {
        t = relay_streams(&stream, &towards) => t,
        () = svc.withdrawn() => {
            stream.reset(reset_code::NOT_ALLOWED);
            towards.reset(reset_code::CANCEL);
            return;
        }
    };
    svc.count(&totals);
}

/// Whether any grant of `token` could name a service `name` of another tenant.
fn granted_anywhere(token: &crate::TokenEntry, name: &str) -> bool {
    token
        .access
        .iter()
        .flatten()
        .any(|g| match g.split_once('/') {
            None => g == "*" || g == name,
            Some((_, n)) => n == "*" || n == name,
        })
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// `?NAME`: when the service can be reached, answers its protocol (`tcp` or `udp`) and a
/// FIN; else a reset saying why.
async fn check(server: &dyn Directory, session: &Session, stream: TunnelStream, name: &str) {
    match resolve(server, session, name, None) {
        Ok((_, svc)) => {
            let protocol = match svc.protocol {
                Protocol::Udp => "udp",
                Protocol::Tcp => "tcp",
            };
            let _ = stream
                .send(bytes::Bytes::from_static(protocol.as_bytes()))
                .await;
            let _ = stream.finish();
            // Freed once the peer's FIN arrives; a peer that never sends one loses the
            // stream after the check timeout (dropping it resets it).
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CHECK_TIMEOUT, async {
                    while let Ok(Some(_)) = stream.recv().await {}
                })
                .await;
            });
        }
        Err((code, reason)) => {
            tracing::info!(%reason, "access check refused");
            stream.reset(code);
        }
    }
}

/// `NAME`: opens a stream to the agent serving `NAME` and splices the two. In a cluster,
/// a service held by another server's agent is reached through that server.
async fn access(server: &dyn Directory, session: &Session, stream: TunnelStream, name: &str) {
    let (owner, svc) = match resolve(server, session, name, Some(Protocol::Tcp)) {
        Ok(found) => found,
        Err((code, reason)) => {
            if code == reset_code::UNKNOWN_TARGET
                && access_elsewhere(server, session, &stream, name).await
            {
                return;
            }
            tracing::info!(%reason, "access refused");
            stream.reset(code);
            return;
        }
    };
    let tenant = owner.token().tenant().to_owned();
    let token = session.token().name.clone();
    let client_addr = format!("access:{token}@{}", session.peer);
    let towards = match owner.open_connection(&svc, client_addr).await {
        Ok(s) => s,
        Err(reason) => {
            tracing::debug!(%reason, "access stream not served");
            stream.reset(reset_code::UNAVAILABLE);
            return;
        }
    };
    svc.connections.fetch_add(1, Ordering::Relaxed);
    // The stream lasts while the reloaded token still lets it reach the service, and the
    // service is still registered.
    let totals = tokio::select! {
        t = relay_streams(&stream, &towards) => t,
        reason = crate::reload::access_withdrawn(session, &tenant, &svc) => {
            stream.reset(reset_code::NOT_ALLOWED);
            towards.reset(reset_code::CANCEL);
            crate::reload::stream_reset(server.counters(), &token, name, &reason);
            return;
        }
    };
    svc.count(&totals);
    match totals {
        Ok(t) => tracing::debug!(up = t.up, down = t.down, "access stream done"),
        Err(e) => tracing::debug!(error = %e, "access stream aborted"),
    }
}

/// The allowed addresses of `target`, or `None` with the stream reset saying why.
async fn allowed(
    server: &dyn Directory,
    session: &Session,
    stream: &TunnelStream,
    target: &str,
) -> Option<Vec<SocketAddr>> {
    let config = server.config();
    let token = session.token();
    if !token.has_role(Role::Node) {
        tracing::info!(token = %token.name, roles = %token.role_names(),
            "dial refused: the token has no node role");
        stream.reset(reset_code::NOT_ALLOWED);
        return None;
    }
    if config.allow_dial.is_empty() {
        tracing::info!(token = %token.name, "dial refused: this server dials nothing (no allow-list)");
        stream.reset(reset_code::NOT_ALLOWED);
        return None;
    }
    match config.allow_dial.resolve(target, config.dial_timeout).await {
        Ok(a) => Some(a),
        Err(e) => {
            let code = match e {
                crate::AllowError::NotAllowed { .. } | crate::AllowError::BadTarget(_) => {
                    reset_code::NOT_ALLOWED
                }
                _ => reset_code::CONNECT_FAILED,
            };
            tracing::warn!(token = %token.name, error = ?e.to_string(), "dial refused");
            stream.reset(code);
            None
        }
    }
}

/// `udp://HOST:PORT`: a UDP flow to an allowed target, whose datagrams carry the stream id;
/// it ends when the stream does or when idle for the UDP idle timeout.
async fn dial_udp(ctx: &Ctx, stream: TunnelStream, target: &str) {
    let flow = stream.id().0;
    let Some(addrs) = allowed(&*ctx.server, &ctx.session, &stream, target).await else {
        ctx.dials.forget(flow);
        return;
    };
    let config = ctx.server.config();
    // The flow ends with its stream, or when a reload takes the node role away.
    let ended = async {
        tokio::select! {
            () = async { while let Ok(Some(_)) = stream.recv().await {} } => {}
            _ = crate::reload::rights_lost(&ctx.session, crate::reload::may_dial) => {}
        }
    };
    culvert_transport::udp_target::open_flow(
        ctx.mux.clone(),
        ctx.dials.clone(),
        flow,
        addrs[0].to_string(),
        config.udp_idle_timeout,
        config.udp_max_flows_per_session,
        None,
        ended,
    )
    .await;
    if let Err(reason) = crate::reload::may_dial(&ctx.session.token()) {
        stream.reset(reset_code::NOT_ALLOWED);
        let token = ctx.session.token().name.clone();
        crate::reload::stream_reset(ctx.server.counters(), &token, target, &reason);
        return;
    }
    // Idle or ended: the stream goes too (a reset if the peer has not finished it).
    stream.reset(reset_code::CANCEL);
}

/// `udp://NAME`: a UDP flow from an access client to the UDP service `NAME`. The server
/// announces a flow to the serving agent (a Connect, as for a public client) and joins the
/// two: the client's datagrams (its stream's id) go to the agent's flow, the replies back.
/// It lasts as long as the client's stream.
async fn access_udp(ctx: &Ctx, stream: TunnelStream, name: &str) {
    let (server, session) = (&ctx.server, &ctx.session);
    let (owner, svc) = match resolve(&**server, session, name, Some(Protocol::Udp)) {
        Ok(found) => found,
        Err((code, reason)) => {
            tracing::info!(%reason, "udp access refused");
            stream.reset(code);
            return;
        }
    };
    let config = server.config();
    if owner.flows().len() >= config.udp_max_flows_per_session {
        tracing::info!(service = ?name, "udp access refused: the agent's flow cap is reached");
        stream.reset(reset_code::REFUSED);
        return;
    }
    // Counted for the serving agent's token and tenant, as its public flows are.
    let quota = match server.charge_flow(&owner) {
        Ok(c) => c,
        Err(refusal) => {
            tracing::warn!(service = ?name, %refusal, "udp access refused: quota reached");
            stream.reset(reset_code::REFUSED);
            return;
        }
    };
    // Odd, from the owner's counter, like the flows of its public ports.
    let flow = owner.next_flow.fetch_add(2, Ordering::Relaxed);
    let Some(agent_mux) = owner.pick_for_flow(flow) else {
        stream.reset(reset_code::UNAVAILABLE);
        return;
    };
    let client_flow = stream.id().0;
    owner.flows().insert(
        flow,
        crate::udp::FlowRoute::to_access_client(
            svc.clone(),
            agent_mux.clone(),
            ctx.mux.clone(),
            client_flow,
            quota,
        ),
    );
    ctx.spliced.insert(client_flow, (agent_mux.clone(), flow));
    let connect = Control::Connect {
        service_id: svc.id,
        connection_id: crate::ids::new_uuid(),
        client_addr: format!("access:{}@{}", session.token().name, session.peer),
        ext: Some(ConnectExt {
            stream_id: culvert_proto::StreamId(flow),
        }),
    };
    if agent_mux.send_control(connect).is_ok() {
        svc.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(service = ?name, flow, client_flow, "udp access flow opened");
        // The client ends the flow by ending its stream (idle, TTL or gone); the agent's
        // connection closing ends it too.
        let tenant = owner.token().tenant().to_owned();
        tokio::select! {
            _ = async { while let Ok(Some(_)) = stream.recv().await {} } => {}
            _ = agent_mux.closed() => stream.reset(reset_code::UNAVAILABLE),
            reason = crate::reload::access_withdrawn(session, &tenant, &svc) => {
                stream.reset(reset_code::NOT_ALLOWED);
                let token = session.token().name.clone();
                crate::reload::stream_reset(server.counters(), &token, name, &reason);
            }
        }
    } else {
        stream.reset(reset_code::UNAVAILABLE);
    }
    ctx.spliced.remove(client_flow);
    owner.flows().remove(&flow);
}

/// `HOST:PORT`: dials the target if this server's allow-list permits it, then relays.
async fn dial(server: &dyn Directory, session: &Session, stream: TunnelStream, target: &str) {
    let config = server.config();
    let Some(addrs) = allowed(server, session, &stream, target).await else {
        return;
    };
    let connect = async {
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect(a).await {
                Ok(t) => return Ok(t),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
    };
    let tcp = match tokio::time::timeout(config.dial_timeout, connect).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "dial failed");
            stream.reset(reset_code::CONNECT_FAILED);
            return;
        }
        Err(_) => {
            tracing::info!("dial timed out");
            stream.reset(reset_code::CONNECT_FAILED);
            return;
        }
    };
    tune_tcp(&tcp);
    // The connection lasts while the reloaded token keeps the node role.
    let lost = async {
        crate::reload::rights_lost(session, crate::reload::may_dial).await;
    };
    match relay_tcp_until(tcp, &stream, None, lost).await {
        Ok(t) => tracing::debug!(up = t.up, down = t.down, "dialed connection done"),
        Err(e) => match crate::reload::may_dial(&session.token()) {
            Err(reason) => {
                stream.reset(reset_code::NOT_ALLOWED);
                let token = session.token().name.clone();
                crate::reload::stream_reset(server.counters(), &token, target, &reason);
            }
            Ok(()) => tracing::debug!(error = %e, "dialed connection aborted"),
        },
    }
}
