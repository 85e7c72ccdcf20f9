//! One pool slot's life: connect, serve, fail over to another server and back home, and
//! back off between attempts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use culvert_transport::Mux;

use super::connect::{connect, Connected};
use super::forward::serve;
use super::lock;
use super::servers::Route;
use super::shared::Shared;
use super::status::SlotState;
use crate::{Backoff, FailureKind};

/// How long a connection left for the home server keeps its streams in flight.
const MOVE_GRACE: Duration = Duration::from_secs(300);

/// A connection up this long before it was lost counts as a working one (its loss starts
/// a new round over the servers); one lost sooner counts as its server failing.
const STABLE: Duration = Duration::from_secs(10);

/// How a served connection ended.
enum Ended {
    /// Lost (closed, dropped, refused a registration for good), with the reason.
    Lost(String),
    /// The home server answered again: this connection to it replaces the current one.
    Home(Box<Connected>),
}

pub(super) async fn run_slot(shared: Arc<Shared>, slot: usize) {
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    let mut route = Route::new(slot, shared.servers.len());
    // A connection to home made by the home check, served next.
    let mut next: Option<Connected> = None;
    loop {
        let server = route.current();
        let attempt = match next.take() {
            Some(c) => Ok(c),
            None => {
                shared.set_slot(slot, SlotState::Connecting, server);
                connect(&shared, server).await
            }
        };
        match attempt {
            Ok(c) => {
                let since = Instant::now();
                match serve_connection(&shared, slot, &route, c, &mut backoff).await {
                    Ended::Home(c) => {
                        route.go_home();
                        next = Some(*c);
                        continue;
                    }
                    Ended::Lost(_) => {
                        // A connection that lasted counts as a success; one dropped at
                        // once counts as its server failing, so servers that take the
                        // handshake and then drop cannot make a hot loop.
                        if since.elapsed() >= STABLE {
                            route.connected();
                        }
                        // Another server is tried at once; after every one failed in a
                        // row (or with one server), the backoff applies.
                        if !route.failed() {
                            continue;
                        }
                    }
                }
            }
            Err(f) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.last_error) = Some(f.message.clone());
                let url = shared.servers[server].text();
                match f.kind {
                    FailureKind::Transient => {
                        tracing::warn!(error = ?f.message, server = %url, "could not establish tunnel connection");
                        if !route.failed() {
                            continue;
                        }
                    }
                    FailureKind::RetryIn(wait) => {
                        tracing::warn!(error = ?f.message, server = %url, ?wait, "could not establish tunnel connection; the server asked to wait");
                        route.failed();
                        let delay = wait.max(backoff.next_delay());
                        shared.set_slot(
                            slot,
                            SlotState::BackingOff(Instant::now() + delay),
                            route.current(),
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    FailureKind::Permanent => {
                        let first = lock(&shared.permanent_logged).replace(f.message.clone())
                            != Some(f.message.clone());
                        if first {
                            tracing::error!(error = ?f.message, server = %url, retry_every = ?shared.config.backoff_max,
                                exit = shared.config.exit_on_auth_failure,
                                "permanent error: retrying cannot help until the configuration is fixed");
                        } else {
                            tracing::debug!(error = ?f.message, "permanent error again");
                        }
                        if shared.config.exit_on_auth_failure {
                            shared.permanent_tx.send_replace(Some(f.message));
                            shared.set_slot(
                                slot,
                                SlotState::BackingOff(Instant::now() + shared.config.backoff_max),
                                server,
                            );
                            return;
                        }
                        backoff.exhaust();
                        // Another server of the list may know the token (a cluster server
                        // that has not heard of a new one, a server with its own token
                        // file): it is tried at once. Only when every server refused does
                        // the slot wait out the longest backoff.
                        if !route.failed() {
                            continue;
                        }
                    }
                }
            }
        }
        let delay = backoff.next_delay();
        shared.set_slot(
            slot,
            SlotState::BackingOff(Instant::now() + delay),
            route.current(),
        );
        tracing::info!(slot, ?delay, "reconnecting after backoff");
        tokio::time::sleep(delay).await;
    }
}

/// Serves one connection of `slot` until it is lost, or until the slot's home server
/// answers again while the slot is away from it.
async fn serve_connection(
    shared: &Arc<Shared>,
    slot: usize,
    route: &Route,
    c: Connected,
    backoff: &mut Backoff,
) -> Ended {
    let server = route.current();
    let mux = c.mux.clone();
    if route.away() {
        tracing::info!(server = %shared.servers[server].text(), home = %shared.servers[route.home()].text(),
            "connected to another server than this slot's own (failover)");
    }
    shared.set_slot(slot, SlotState::Up, server);
    shared.set_unregistered(slot, c.pending.names());
    mux.measure_rtt();
    shared.connections.open(&mux);
    // If this task is aborted (agent shutdown), the connection goes with it.
    let guard = CloseOnDrop(mux.clone(), shared.clone());
    lock(&shared.live).push(mux.clone());
    backoff.reset();
    *lock(&shared.permanent_logged) = None;
    shared.up.fetch_add(1, Ordering::SeqCst);
    shared.state_tx.send_modify(|n| *n += 1);
    let serving = serve(shared, slot, server, c);
    let ended = match shared.config.home_probe_interval {
        Some(every) if route.away() => {
            tokio::select! {
                reason = serving => Ended::Lost(reason),
                home = home_answers(shared, route.home(), every) => Ended::Home(Box::new(home)),
            }
        }
        _ => Ended::Lost(serving.await),
    };
    shared.up.fetch_sub(1, Ordering::SeqCst);
    shared.state_tx.send_modify(|n| *n -= 1);
    lock(&shared.live).retain(|m| !m.same(&mux));
    match &ended {
        Ended::Lost(reason) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            let url = shared.servers[server].text();
            tracing::warn!(reason = ?reason, server = %url, "tunnel connection lost");
            *lock(&shared.last_error) = Some(format!("connection lost: {reason}"));
        }
        Ended::Home(_) => {
            let home = shared.servers[route.home()].text();
            tracing::info!(%home, "home server answers again; this slot moves back to it");
            // The old connection takes no new streams; those in flight may finish.
            lock(&shared.retiring).push(mux.clone());
            let shared = shared.clone();
            tokio::spawn(async move {
                culvert_transport::drain(
                    std::slice::from_ref(&mux),
                    "moving to another server",
                    MOVE_GRACE,
                )
                .await;
                lock(&shared.retiring).retain(|m| !m.same(&mux));
                drop(guard);
            });
        }
    }
    ended
}

/// Resolves with a new connection to the home server `home` once it answers: every
/// `every`, a plain TCP connect (a dead home costs one SYN), and when that works the full
/// handshake. Runs beside the connection it may replace, never in its path.
async fn home_answers(shared: &Arc<Shared>, home: usize, every: Duration) -> Connected {
    let endpoint = &shared.servers[home];
    let url = &endpoint.url;
    let direct = shared
        .config
        .proxy
        .as_ref()
        .is_none_or(|p| !p.applies_to(&url.host));
    loop {
        tokio::time::sleep(every).await;
        if direct {
            let dial = async {
                match endpoint.addr {
                    Some(a) => tokio::net::TcpStream::connect(a).await,
                    None => tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await,
                }
            };
            let tcp = tokio::time::timeout(shared.config.connect_timeout, dial).await;
            if !matches!(tcp, Ok(Ok(_))) {
                tracing::debug!(home = %endpoint.text(), "home server still not answering");
                continue;
            }
        }
        match connect(shared, home).await {
            Ok(c) => return c,
            Err(f) => {
                tracing::debug!(home = %endpoint.text(), error = ?f.message, "home server not back yet")
            }
        }
    }
}

/// Closes a connection when its owning task ends, however it ends, and moves its figures
/// to the ended connections' in the agent's ledger.
struct CloseOnDrop(Mux, Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.abort("agent stopping");
        self.1.connections.close(&self.0);
    }
}
