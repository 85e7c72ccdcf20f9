//! The agent's pool of tunnel connections and what each one does. Each pool slot
//! connects (see `connect`: dial, TLS, Auth, Register) and then forwards the streams the
//! server opens (see `forward`); `slot` runs a slot's life of reconnects and failovers.

mod config;
mod connect;
mod forward;
mod handle;
mod register_retry;
mod servers;
mod shared;
mod slot;
mod status;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use culvert_transport::tls::client_config;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

pub use config::AgentConfig;
pub use handle::AgentHandle;
pub(crate) use shared::Shared;
pub use status::{ConnectionStatus, LinkState, ServiceCounters, ServiceView};

use servers::{effective_pool, Route};
use status::{SlotInfo, SlotState};

/// The running agent.
pub struct Agent;

impl Agent {
    /// Starts the pool. Each slot connects, authenticates, registers every service and
    /// serves streams, reconnecting by itself with backoff when it drops.
    pub fn spawn(
        mut config: AgentConfig,
    ) -> Result<AgentHandle, culvert_transport::TransportError> {
        let servers = servers::endpoints(&config.servers(), |u| {
            servers::resolve_now(u, config.proxy.as_ref())
        });
        let tls = if servers.iter().any(|s| s.url.tls) {
            Some(client_config(&config.verify).map_err(|e| match e {
                culvert_transport::TransportError::NoSystemRoots => {
                    culvert_transport::TransportError::Tls(
                        "no system root certificates to verify the server with; use --ca or --fingerprint"
                            .into(),
                    )
                }
                e => e,
            })?)
        } else {
            None
        };
        config.pool = effective_pool(config.pool, servers.len());
        let (state_tx, state_rx) = watch::channel(0);
        let slots = (0..config.pool)
            .map(|slot| {
                let home = Route::new(slot, servers.len()).home();
                SlotInfo {
                    state: SlotState::Connecting,
                    server: home,
                    home,
                    unregistered: Vec::new(),
                }
            })
            .collect();
        let shared = Arc::new(Shared {
            servers,
            server_ports: Mutex::new(HashMap::new()),
            tls,
            client_id: Uuid::new_v4(),
            ports: Mutex::new(HashMap::new()),
            up: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
            retiring: Mutex::new(Vec::new()),
            failures: Default::default(),
            state_tx,
            slots: Mutex::new(slots),
            last_error: Mutex::new(None),
            counters: config
                .services
                .iter()
                .map(|s| (s.name.clone(), Arc::default()))
                .collect(),
            next_open: AtomicUsize::new(0),
            local_flows: Arc::default(),
            udp_target_drops: Arc::default(),
            connections: Default::default(),
            permanent_logged: Mutex::new(None),
            permanent_tx: watch::channel(None).0,
            config,
        });
        let tasks = (0..shared.config.pool)
            .map(|slot| {
                let span = tracing::info_span!("tunnel", slot);
                tokio::spawn(slot::run_slot(shared.clone(), slot).instrument(span))
            })
            .collect();
        Ok(AgentHandle {
            shared,
            tasks,
            state_rx,
        })
    }
}

/// Locks `m`, going on with its data when a thread panicked while holding it: a status
/// table is still worth reading, and one panic must not stop every slot.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
