//! The connector: dials the server (TCP, TLS, upgrade), authenticates and registers
//! every service, all under the connect deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use culvert_proto::control::{AuthExt, RegisterExt, CULVERT_VERSION, MIN_CULVERT_VERSION};
use culvert_proto::{Connection, Control, Side, Token};
use culvert_transport::ws::dial_addr_via;
use culvert_transport::{Mux, MuxEvent};
use uuid::Uuid;

use super::register_retry::PendingRegistrations;
use super::{lock, Shared};
use crate::{Failure, FailureKind, ServiceSpec};

/// A connection up and authenticated, with the services it registered.
pub(super) struct Connected {
    pub(super) mux: Mux,
    pub(super) events: tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    /// Registered services by the id the server gave them.
    pub(super) ids: HashMap<Uuid, ServiceSpec>,
    /// Streams and Connects that arrived while registering.
    pub(super) early: Vec<MuxEvent>,
    /// Services refused for now, asked again on this connection.
    pub(super) pending: PendingRegistrations,
}

/// Dials server `server` (an index into the agent's servers), authenticates and registers,
/// all under the connect deadline.
pub(super) async fn connect(shared: &Arc<Shared>, server: usize) -> Result<Connected, Failure> {
    let cfg = &shared.config;
    let endpoint = &shared.servers[server];
    let url = &endpoint.url;
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let ws = tokio::time::timeout_at(
        deadline,
        dial_addr_via(
            url,
            endpoint.addr,
            shared.tls.clone(),
            cfg.proto.idle_timeout,
            cfg.ws_mask,
            cfg.proxy.as_ref(),
        ),
    )
    .await
    .map_err(|_| Failure::transient("timed out connecting to the server"))?
    .map_err(|e| Failure::dial(url, &e))?;
    let mut conn = Connection::new(Side::Client, cfg.proto.clone(), Instant::now())
        .map_err(|e| Failure::transient(e.to_string()))?;
    conn.send_control_first(Control::Auth {
        token: Token(cfg.token.clone()),
        client_id: shared.client_id,
        ext: Some(AuthExt {
            version: CULVERT_VERSION,
            capabilities: 0,
        }),
    })
    .map_err(|e| Failure::transient(e.to_string()))?;
    let (mux, mut events) = Mux::spawn_with(ws, conn);
    // The server may route public clients to this connection while it is still
    // registering: their streams and Connects wait here and are served right after.
    let mut early = Vec::new();
    let handshake = async {
        // Auth reply.
        match next_control(&mux, &mut events, &mut early)
            .await
            .map_err(Failure::transient)?
        {
            // An older server would open streams in the protocol-1 form: refused before any.
            Control::AuthOk { ext, .. } => {
                let version = ext.map(|e| e.version);
                if version.is_none_or(|v| v < MIN_CULVERT_VERSION) {
                    return Err(Failure::version(version));
                }
            }
            Control::AuthFail { reason } => return Err(Failure::auth(&reason)),
            other => {
                return Err(Failure::transient(format!(
                    "unexpected {:?} before AuthOk",
                    other.frame_type()
                )))
            }
        }
        // Register every service, one at a time (replies come in order). A service with no
        // configured port asks for the port it had before, so a restarted server (which
        // remembers nothing) gives clients the same port back; if that port is taken now,
        // it asks again for any port.
        let mut ids = HashMap::new();
        let mut pending = PendingRegistrations::none();
        'services: for svc in &cfg.services {
            let mut ask = match svc.remote_port {
                0 if !svc.private => lock(&shared.server_ports)
                    .get(&(server, svc.name.clone()))
                    .copied()
                    .unwrap_or(0),
                configured => configured,
            };
            let (service_id, ext) = loop {
                mux.send_control(Control::Register {
                    name: svc.name.clone(),
                    protocol: svc.protocol,
                    local_port: svc.local_port(),
                    remote_port: ask,
                    // Only a private service needs the extension (plain v1 servers ignore it).
                    ext: svc.private.then_some(RegisterExt { flags: 1 }),
                })
                .map_err(|e| Failure::transient(e.to_string()))?;
                match next_control(&mux, &mut events, &mut early)
                    .await
                    .map_err(Failure::transient)?
                {
                    Control::RegisterOk { service_id, ext } => break (service_id, ext),
                    Control::RegisterFail { reason } if ask != svc.remote_port => {
                        tracing::info!(service = %svc.name, port = ask, reason = ?reason, "previous public port not available; asking for any");
                        ask = svc.remote_port;
                    }
                    Control::RegisterFail { reason } => {
                        let f = Failure::register(&svc.name, &reason);
                        if f.kind == FailureKind::Permanent {
                            return Err(f);
                        }
                        // Refused for now (a port taken, a cluster's database away): the
                        // connection serves the others and asks again for this one.
                        tracing::warn!(service = %svc.name, reason = ?reason, "server refused the service for now; asking again on this connection");
                        pending.add(svc.clone(), Instant::now());
                        continue 'services;
                    }
                    other => {
                        return Err(Failure::transient(format!(
                            "unexpected {:?} before RegisterOk",
                            other.frame_type()
                        )))
                    }
                }
            };
            ids.insert(service_id, svc.clone());
            record_port(
                shared,
                server,
                svc,
                ext.map(|e| e.assigned_port).unwrap_or(0),
            );
        }
        Ok::<_, Failure>((ids, pending))
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok((ids, pending))) => Ok(Connected {
            mux,
            events,
            ids,
            early,
            pending,
        }),
        Ok(Err(e)) => {
            mux.abort(&e.message);
            Err(e)
        }
        Err(_) => {
            mux.abort("timeout");
            Err(Failure::transient(
                "timed out authenticating and registering",
            ))
        }
    }
}

/// The next reply to Auth or Register; public connections arriving meanwhile (their
/// streams and Connects) are set aside in `early`, bounded by the stream and flow limits.
async fn next_control(
    mux: &Mux,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<MuxEvent>,
    early: &mut Vec<MuxEvent>,
) -> Result<Control, String> {
    loop {
        match events.recv().await {
            Some(MuxEvent::Control(c @ Control::Connect { .. })) => {
                early.push(MuxEvent::Control(c))
            }
            Some(MuxEvent::Control(c)) => {
                mux.control_handled();
                return Ok(c);
            }
            Some(MuxEvent::Closed(r)) | Some(MuxEvent::GoingAway(r)) => return Err(r),
            Some(ev @ MuxEvent::Incoming(..)) => early.push(ev),
            None => return Err("connection closed".into()),
        }
    }
}

/// Notes the public port server `server` gave `svc` (logged when it is new or changed).
pub(super) fn record_port(shared: &Shared, server: usize, svc: &ServiceSpec, port: u16) {
    lock(&shared.ports).insert(svc.name.clone(), port);
    let previous = lock(&shared.server_ports).insert((server, svc.name.clone()), port);
    if previous == Some(port) {
        return;
    }
    let url = shared.servers[server].text();
    if svc.private {
        tracing::info!(service = %svc.name, target = %svc.target, server = %url, "service exposed privately (no public port: reached through culvert access and node tunnels)");
    } else {
        tracing::info!(service = %svc.name, target = %svc.target, public_port = port, server = %url, "service exposed");
    }
}
