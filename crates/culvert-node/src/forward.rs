//! A local listener whose connections become streams to a target across the tunnel: the
//! forward half of node tunnels and every access session. It enforces a time-to-live and
//! chooses what happens to connections while the tunnel is down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use culvert_agent::AgentHandle;
use culvert_proto::reset_code;
use culvert_transport::{
    relay_tcp_counted, reset_code_of, tune_accepted, tune_listener, tune_tcp, AcceptErrors,
    RelayCounters,
};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::NodeError;

/// What a local connection gets while no tunnel connection is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Refuse it at once (a reset), so clients fail fast instead of hanging. The default.
    Fail,
    /// Dial this address directly, bypassing the tunnel (for development; warns when the
    /// address is not loopback, since then traffic leaves the machine unprotected).
    Direct(String),
}

/// One forward: where to listen and what to reach.
#[derive(Debug, Clone)]
pub struct ForwardSpec {
    /// Name shown in logs and status.
    pub name: String,
    /// Local address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Stream target: a service name (access) or `HOST:PORT` the peer dials (node).
    pub target: String,
    /// When set, the listener and every connection close this long after start.
    pub ttl: Option<Duration>,
    /// Behaviour while the tunnel is down.
    pub fallback: Fallback,
}

/// A snapshot of a forward, for `culvert access list` and node status.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardStatus {
    /// Name of the forward.
    pub name: String,
    /// Target across the tunnel.
    pub target: String,
    /// Bound local address.
    pub local_addr: String,
    /// Seconds until the TTL expires (None: no TTL).
    pub remaining_secs: Option<u64>,
    /// Whether the TTL has expired (or the forward was closed).
    pub expired: bool,
    /// Connections being relayed now.
    pub open_connections: usize,
    /// Connections accepted since start.
    pub connections: u64,
    /// Connections refused or failed (tunnel down, peer refused, target unreachable).
    pub failed: u64,
    /// Bytes from local clients into the tunnel.
    pub bytes_up: u64,
    /// Bytes from the tunnel to local clients.
    pub bytes_down: u64,
    /// The last refusal or failure, in words.
    pub last_error: Option<String>,
}

struct Shared {
    spec: ForwardSpec,
    local_addr: SocketAddr,
    expires: Option<Instant>,
    link: Arc<AgentHandle>,
    bytes: Arc<RelayCounters>,
    open: AtomicUsize,
    connections: AtomicU64,
    failed: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    stop: CancellationToken,
}

/// A running forward. Dropping it closes the listener and its connections.
pub struct Forward {
    shared: Arc<Shared>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl Forward {
    /// Binds the listener and starts accepting; streams go over `link`.
    pub async fn bind(spec: ForwardSpec, link: Arc<AgentHandle>) -> Result<Forward, NodeError> {
        if let Fallback::Direct(addr) = &spec.fallback {
            if !is_loopback_target(addr) {
                tracing::warn!(forward = %spec.name, direct = %addr,
                    "fallback = direct names a non-loopback address: while the tunnel is down, traffic goes there unprotected");
            }
        }
        let listener = TcpListener::bind(spec.listen)
            .await
            .map_err(|source| NodeError::Bind {
                addr: spec.listen.to_string(),
                source,
            })?;
        tune_listener(&listener);
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: spec.listen.to_string(),
            source,
        })?;
        let shared = Arc::new(Shared {
            expires: spec.ttl.map(|t| Instant::now() + t),
            spec,
            local_addr,
            link,
            bytes: Arc::default(),
            open: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
        });
        let span = tracing::info_span!("forward", name = %shared.spec.name, listen = %local_addr);
        tokio::spawn(accept_loop(shared.clone(), listener).instrument(span));
        if let Some(ttl) = shared.spec.ttl {
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(ttl) => {
                        tracing::info!(forward = %s.spec.name, "time-to-live expired: listener and connections closed");
                        s.stop.cancel();
                    }
                    _ = s.stop.cancelled() => {}
                }
            });
        }
        Ok(Forward { shared })
    }

    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Closes the listener and every connection now.
    pub fn close(&self) {
        self.shared.stop.cancel();
    }

    /// Resolves when the forward has closed (TTL expiry or [`Forward::close`]).
    pub async fn closed(&self) {
        self.shared.stop.cancelled().await
    }

    /// Whether the forward has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// Current figures.
    pub fn status(&self) -> ForwardStatus {
        let s = &self.shared;
        let now = Instant::now();
        ForwardStatus {
            name: s.spec.name.clone(),
            target: s.spec.target.clone(),
            local_addr: s.local_addr.to_string(),
            remaining_secs: s
                .expires
                .map(|t| t.saturating_duration_since(now).as_secs()),
            expired: s.stop.is_cancelled(),
            open_connections: s.open.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            bytes_up: s.bytes.up.load(Ordering::Relaxed),
            bytes_down: s.bytes.down.load(Ordering::Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Whether `addr` (`HOST:PORT`) is on this machine: a loopback IP or `localhost`.
fn is_loopback_target(addr: &str) -> bool {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return a.ip().is_loopback();
    }
    addr.rsplit_once(':')
        .is_some_and(|(h, _)| h.eq_ignore_ascii_case("localhost"))
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut errors = AcceptErrors::default();
    let name = format!("forward listener {}", shared.spec.name);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.stop.cancelled() => break,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                errors.on_error(&listener, &name, &e).await;
                continue;
            }
        };
        tune_accepted(&sock);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let span = tracing::debug_span!("conn", client = %peer);
        tokio::spawn(
            async move {
                let stop = s.stop.clone();
                tokio::select! {
                    _ = handle(&s, sock) => {}
                    // TTL expiry or close: dropping the relay closes the socket and resets the stream.
                    _ = stop.cancelled() => tracing::debug!("closed by the forward's end"),
                }
            }
            .instrument(span),
        );
    }
    // The listener drops here: the port refuses new connections from now on.
}

fn note_failure(shared: &Shared, reason: String, warn: bool) {
    shared.failed.fetch_add(1, Ordering::Relaxed);
    if warn {
        tracing::warn!(%reason, "connection failed");
    } else {
        tracing::debug!(%reason, "connection failed");
    }
    *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
}

/// Counts a connection as open while it lives.
struct OpenGuard<'a>(&'a AtomicUsize);

impl<'a> OpenGuard<'a> {
    fn new(n: &'a AtomicUsize) -> OpenGuard<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        OpenGuard(n)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(shared: &Shared, sock: TcpStream) {
    let _open = OpenGuard::new(&shared.open);
    let stream = if shared.link.connections_up() > 0 {
        shared
            .link
            .open(&shared.spec.target)
            .await
            .map_err(|e| e.to_string())
    } else {
        Err(format!("tunnel is {}", shared.link.link_state()))
    };
    let stream = match stream {
        Ok(s) => s,
        Err(reason) => return fall_back(shared, sock, reason).await,
    };
    // The tunnel carries connections again: an earlier failure is no longer the state.
    *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    match relay_tcp_counted(sock, &stream, Some(shared.bytes.clone())).await {
        Ok(t) => tracing::debug!(up = t.up, down = t.down, "connection done"),
        Err(e) => match reset_code_of(&e) {
            Some(code @ (reset_code::NOT_ALLOWED | reset_code::UNKNOWN_TARGET)) => note_failure(
                shared,
                format!(
                    "the peer refused {:?}: {}",
                    shared.spec.target,
                    reset_code::describe(code)
                ),
                true,
            ),
            Some(code) if code != reset_code::CANCEL => note_failure(
                shared,
                format!("{:?}: {}", shared.spec.target, reset_code::describe(code)),
                false,
            ),
            _ => tracing::debug!(error = %e, "connection aborted"),
        },
    }
}

/// The tunnel is down: refuse at once, or dial directly.
async fn fall_back(shared: &Shared, sock: TcpStream, reason: String) {
    match &shared.spec.fallback {
        Fallback::Fail => {
            // A reset rather than a quiet close: the client fails now, not after a timeout.
            let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
            note_failure(shared, format!("refused: {reason}"), false);
        }
        Fallback::Direct(addr) => {
            if is_loopback_target(addr) {
                tracing::info!(direct = %addr, %reason, "tunnel down; dialing the service directly");
            } else {
                tracing::warn!(direct = %addr, %reason, "tunnel down; dialing a non-loopback address directly, bypassing the tunnel");
            }
            let dialed =
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await;
            let mut direct = match dialed {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return note_failure(shared, format!("direct {addr}: {e}"), true),
                Err(_) => return note_failure(shared, format!("direct {addr}: timed out"), true),
            };
            tune_tcp(&direct);
            let mut sock = sock;
            if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut sock, &mut direct).await {
                shared.bytes.up.fetch_add(up, Ordering::Relaxed);
                shared.bytes.down.fetch_add(down, Ordering::Relaxed);
            }
        }
    }
}
