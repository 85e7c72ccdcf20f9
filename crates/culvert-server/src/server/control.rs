//! Control messages of an agent connection: Register (served off the connection's event
//! loop, see [`Registrar`]), Unregister, Connect replies, Disconnect.

use std::sync::Arc;

use culvert_proto::control::{RegisterOkExt, ServiceProtocol};
use culvert_proto::Control;
use culvert_transport::Mux;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::register::register;
use super::Inner;
use crate::session::Session;

/// Registrations one connection may have waiting; more are refused at once (an agent
/// registers its services one at a time, waiting for each reply).
const MAX_PENDING_REGISTRATIONS: usize = 64;

/// One Register as the agent sent it.
struct Request {
    name: String,
    protocol: ServiceProtocol,
    remote_port: u16,
    private: bool,
}

/// The registrations of one connection, served in order by a task of their own: a
/// registration may wait (for the session lock, or for the agent's previous port to be
/// released), and meanwhile the connection's event loop goes on serving its streams and
/// control messages. Replies keep the order of the Registers.
pub(super) struct Registrar {
    tx: mpsc::Sender<Request>,
}

impl Registrar {
    /// Starts the connection's registration task; it ends when the `Registrar` is dropped
    /// (the connection's loop ended) or the connection closes.
    pub(super) fn spawn(inner: Arc<Inner>, session: Arc<Session>, mux: Mux) -> Registrar {
        let (tx, mut rx) = mpsc::channel::<Request>(MAX_PENDING_REGISTRATIONS);
        let task = async move {
            while let Some(req) = rx.recv().await {
                if mux.is_closed() {
                    break;
                }
                let reply = answer(&inner, &session, req).await;
                let _ = mux.send_control(reply);
            }
        };
        tokio::spawn(task.in_current_span());
        Registrar { tx }
    }

    /// Queues a Register; refused at once when too many are waiting.
    fn submit(&self, mux: &Mux, req: Request) {
        if let Err(e) = self.tx.try_send(req) {
            let name = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r.name,
            };
            tracing::warn!(service = ?name, "registration refused: too many registrations waiting");
            let _ = mux.send_control(Control::RegisterFail {
                reason: "too many registrations waiting on this connection".into(),
            });
        }
    }
}

/// The reply to one Register: RegisterOk, or RegisterFail saying why.
async fn answer(inner: &Arc<Inner>, session: &Arc<Session>, req: Request) -> Control {
    let Request {
        name,
        protocol,
        remote_port,
        private,
    } = req;
    match register(inner, session, &name, protocol, remote_port, private).await {
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
    }
}

/// Answers one control message of an agent connection, without waiting: a Register goes
/// to the connection's [`Registrar`].
pub(super) fn handle_control(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    mux: &Mux,
    registrar: &Registrar,
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
            let req = Request {
                name,
                protocol,
                remote_port,
                private,
            };
            registrar.submit(mux, req);
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
