//! One agent connection after its handshake: the event loop that dispatches control
//! messages and the streams the peer opens.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use culvert_proto::{reset_code, Connection};
use culvert_transport::ws::ServerIo;
use culvert_transport::wsframe::WsConn;
use culvert_transport::{Mux, MuxEvent};

use super::control::{handle_control, Registrar};
use super::Inner;
use crate::session::Session;

/// Serves one agent connection until it closes; `_quota` (its place in the connection
/// quotas) is given back when it does.
pub(super) async fn serve_connection(
    inner: Arc<Inner>,
    ws: WsConn<ServerIo>,
    conn: Connection,
    session: Arc<Session>,
    _quota: crate::quota::Charge,
) {
    let (mux, mut events) = Mux::spawn_with(ws, conn);
    session.attach(mux.clone());
    // Target-side UDP flows this connection's peer asked this server to dial.
    let dials = Arc::new(
        culvert_transport::udp_target::TargetFlows::for_streams(
            !inner.config().allow_dial.is_empty(),
        )
        .counting_into(inner.counters.udp_target_drops.clone()),
    );
    // Flows this connection's peer opened to UDP services of other agents.
    let spliced = Arc::new(crate::udp::Spliced::default());
    if session.culvert {
        mux.set_datagram_sink(crate::udp::reply_sink(
            session.clone(),
            dials.clone(),
            spliced.clone(),
        ));
    }
    if session.ended.load(Ordering::SeqCst) {
        mux.abort("session ended");
        return;
    }
    inner.counters.connections.open(&mux);
    let counted = Counted(&inner.counters.connections, &mux);
    let registrar = Registrar::spawn(inner.clone(), session.clone(), mux.clone());
    while let Some(ev) = events.recv().await {
        match ev {
            MuxEvent::Control(c) => {
                mux.control_handled();
                handle_control(&inner, &session, &mux, &registrar, c);
            }
            MuxEvent::Incoming(stream, target) => {
                if session.culvert {
                    let ctx = crate::peer_streams::Ctx {
                        server: inner.clone(),
                        session: session.clone(),
                        mux: mux.clone(),
                        dials: dials.clone(),
                        spliced: spliced.clone(),
                    };
                    crate::peer_streams::spawn(ctx, stream, target);
                } else {
                    stream.reset(reset_code::REFUSED);
                }
            }
            MuxEvent::GoingAway(reason) => tracing::info!(reason = ?reason, "agent going away"),
            MuxEvent::Closed(reason) => {
                tracing::info!(session = %session.id, reason = ?reason, "agent connection closed");
                break;
            }
        }
    }
    mux.abort("connection ended");
    let st = mux.stats().proto;
    let c = &inner.counters;
    drop(counted);
    c.control_queue_cap_hits
        .fetch_add(st.control_queue_cap_hits, Ordering::Relaxed);
    c.reset_cap_hits
        .fetch_add(st.reset_cap_hits, Ordering::Relaxed);
    if session.detach(&mux) == 0 {
        inner.end_session(&session, "all connections closed");
    }
}

/// Takes a connection out of the server's ledger however its serving ends (its figures
/// then count among the ended connections').
struct Counted<'a>(&'a culvert_transport::metrics::MuxLedger, &'a Mux);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.close(self.1);
    }
}
