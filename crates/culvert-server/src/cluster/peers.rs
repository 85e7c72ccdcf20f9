//! Tunnel connections from this server to the other servers of the cluster: the same
//! WebSocket transport and multiplexer agents use, authenticated with the cluster's
//! shared credential, dialed on first need and re-dialed after a loss. Public connections
//! and access streams for a service whose agent another server holds go over them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use culvert_cluster::ServerRow;
use culvert_proto::control::{AuthExt, CULVERT_VERSION};
use culvert_proto::{Connection, Control, Side, Target, Token};
use culvert_transport::tls::{client_config, Verify};
use culvert_transport::ws::{dial, ServerUrl};
use culvert_transport::{Mux, MuxEvent, TunnelStream};
use uuid::Uuid;

/// Deadline for dialing, TLS, upgrade and Auth to another server.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for opening a stream on a link (waits only at the peer's stream limit).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The links to the other servers, by server id.
pub(crate) struct Peers {
    secret: String,
    /// One client id for all links of this server (the others see one session of it).
    client_id: Uuid,
    links: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Mux>>>>,
    /// The server's own multiplexer settings (`--heartbeat-interval`, `--linger`): the
    /// links it dials run as the links it accepts do.
    proto: culvert_proto::Config,
}

impl Peers {
    pub(crate) fn new(secret: String, proto: culvert_proto::Config) -> Peers {
        Peers {
            secret,
            client_id: crate::ids::new_uuid(),
            links: Mutex::new(HashMap::new()),
            proto,
        }
    }

    /// The cluster credential.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::OnceCell<Mux>>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a stream on the link to `server` for a public connection (or access stream)
    /// from `client_addr` to `service` of `tenant`; the other server joins it to its agent.
    pub(crate) async fn open(
        &self,
        server: &ServerRow,
        tenant: &str,
        service: &str,
        client_addr: String,
    ) -> Result<TunnelStream, String> {
        let mux = self.link(server).await?;
        let target = Target::Inbound {
            service: format!("{tenant}/{service}"),
            connection_id: crate::ids::new_uuid(),
            client_addr,
        };
        match tokio::time::timeout(OPEN_TIMEOUT, mux.open_to(target)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.forget(&server.id, &mux);
                Err(format!("server {}: {e}", server.id))
            }
            Err(_) => Err(format!(
                "server {}: timed out opening a stream to it",
                server.id
            )),
        }
    }

    /// The live link to `server`, dialed now if there is none. A link found closed is
    /// dropped and dialed again, once: a server that closes every link at once fails here
    /// instead of being dialed in a loop.
    async fn link(&self, server: &ServerRow) -> Result<Mux, String> {
        for _ in 0..2 {
            let cell = self.lock().entry(server.id.clone()).or_default().clone();
            let mux = cell
                .get_or_try_init(|| self.dial(server))
                .await
                .map_err(|e| {
                    // A failed dial leaves the cell empty: the next caller dials again.
                    format!("server {} ({}): {e}", server.id, server.advertise)
                })?
                .clone();
            if !mux.is_closed() {
                return Ok(mux);
            }
            self.forget(&server.id, &mux);
        }
        Err(format!(
            "server {}: its link closed as soon as it was made",
            server.id
        ))
    }

    /// Drops the link to `id` if it is still `mux`.
    fn forget(&self, id: &str, mux: &Mux) {
        let mut links = self.lock();
        let same = links
            .get(id)
            .and_then(|c| c.get())
            .is_some_and(|m| m.same(mux));
        if same {
            links.remove(id);
        }
    }

    async fn dial(&self, server: &ServerRow) -> Result<Mux, String> {
        let url = ServerUrl::parse(&server.advertise).map_err(|e| e.to_string())?;
        let tls = if url.tls {
            // Pinned to the certificate the server itself recorded in the registry.
            let verify = match &server.fingerprint {
                Some(fp) => Verify::Fingerprint(fp.clone()),
                None => Verify::SystemRoots,
            };
            Some(client_config(&verify).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let proto = &self.proto;
        let attempt = async {
            let ws = dial(&url, tls, proto.idle_timeout, false)
                .await
                .map_err(|e| e.to_string())?;
            let mut conn = Connection::new(Side::Client, proto.clone(), Instant::now())
                .map_err(|e| e.to_string())?;
            conn.send_control_first(Control::Auth {
                token: Token(self.secret.clone()),
                client_id: self.client_id,
                ext: Some(AuthExt {
                    version: CULVERT_VERSION,
                    capabilities: 0,
                }),
            })
            .map_err(|e| e.to_string())?;
            let (mux, mut events) = Mux::spawn_with(ws, conn);
            loop {
                match events.recv().await {
                    Some(MuxEvent::Control(Control::AuthOk { .. })) => {
                        mux.control_handled();
                        break;
                    }
                    Some(MuxEvent::Control(Control::AuthFail { reason })) => {
                        return Err(format!("refused the cluster credential: {reason}"));
                    }
                    Some(MuxEvent::Control(_)) => mux.control_handled(),
                    Some(MuxEvent::Incoming(s, _)) => {
                        s.reset(culvert_proto::reset_code::NOT_ALLOWED)
                    }
                    Some(MuxEvent::GoingAway(r)) | Some(MuxEvent::Closed(r)) => {
                        return Err(format!("closed before Auth was answered: {r}"))
                    }
                    None => return Err("closed before Auth was answered".to_owned()),
                }
            }
            // The link's later events: nothing is expected of it but answers.
            let m = mux.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    match ev {
                        MuxEvent::Control(_) => m.control_handled(),
                        MuxEvent::Incoming(s, _) => s.reset(culvert_proto::reset_code::NOT_ALLOWED),
                        MuxEvent::GoingAway(_) => {}
                        MuxEvent::Closed(_) => break,
                    }
                }
            });
            Ok::<Mux, String>(mux)
        };
        let mux = tokio::time::timeout(DIAL_TIMEOUT, attempt)
            .await
            .map_err(|_| format!("no answer within {DIAL_TIMEOUT:?}"))??;
        tracing::info!(server = %server.id, advertise = %server.advertise, "cluster link up");
        Ok(mux)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_proto::control::AuthOkExt;

    /// A link this server dials to another runs with the server's own settings, as the
    /// links it accepts do: here heartbeats every second. (Failed before: dialed links
    /// took the defaults, whose first heartbeat comes after 10 s, whatever
    /// `--heartbeat-interval` said.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_dialed_link_runs_with_the_servers_settings() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The other server, as far as the link goes: it answers Auth and counts frames.
        let other = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = culvert_transport::ws::accept(tcp).await.unwrap();
            let mut conn = Connection::new(
                Side::Server,
                culvert_proto::Config::default(),
                Instant::now(),
            )
            .unwrap();
            conn.send_control_first(Control::AuthOk {
                tunnel_id: Uuid::nil(),
                ext: Some(AuthOkExt {
                    version: CULVERT_VERSION,
                }),
            })
            .unwrap();
            let (mux, mut events) = Mux::spawn_with(ws, conn);
            loop {
                match events.recv().await {
                    Some(MuxEvent::Control(Control::Auth { .. })) => break,
                    Some(MuxEvent::Control(_)) => mux.control_handled(),
                    other => panic!("before Auth: {other:?}"),
                }
            }
            mux.control_handled();
            // Frames received up to and with the Auth; what comes next is heartbeats.
            let after_auth = mux.stats().proto.frames_received;
            (mux, events, after_auth)
        });

        let mut proto = culvert_proto::Config::default();
        proto.set_heartbeat_interval(Duration::from_secs(1));
        let peers = Peers::new("secret".into(), proto);
        let row = ServerRow {
            id: "other".into(),
            advertise: format!("ws://{addr}"),
            fingerprint: None,
        };
        let link = peers.dial(&row).await.unwrap();
        let (other_mux, _events, after_auth) = tokio::time::timeout(Duration::from_secs(10), other)
            .await
            .expect("the link came up")
            .unwrap();
        // Two heartbeats at one a second arrive within five; the defaults' first takes ten.
        let two = tokio::time::timeout(Duration::from_secs(5), async {
            while other_mux.stats().proto.frames_received < after_auth + 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            two.is_ok(),
            "{} frames after Auth within 5 s",
            other_mux.stats().proto.frames_received - after_auth
        );
        drop(link);
    }
}
