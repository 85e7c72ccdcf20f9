//! The handle an embedder holds: ports, status, metrics, streams it opens, and stop.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use culvert_transport::{Mux, TunnelStream};
use tokio::sync::watch;

use super::lock;
use super::servers::Endpoint;
use super::shared::Shared;
use super::status::{ConnectionStatus, LinkState, ServiceCounters, ServiceView, SlotState};

/// Handle to a running agent.
pub struct AgentHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(super) state_rx: watch::Receiver<usize>,
}

impl AgentHandle {
    /// Public ports by service name, as assigned by the server.
    pub fn ports(&self) -> HashMap<String, u16> {
        self.shared.ports()
    }

    /// Pooled connections currently up and registered.
    pub fn connections_up(&self) -> usize {
        self.shared.connections_up()
    }

    /// Whether the link is connected, connecting or backing off.
    pub fn link_state(&self) -> LinkState {
        if self.connections_up() > 0 {
            return LinkState::Connected;
        }
        let now = Instant::now();
        let slots = lock(&self.shared.slots);
        let mut earliest = None::<Instant>;
        for s in slots.iter() {
            match &s.state {
                SlotState::Up | SlotState::Connecting => return LinkState::Connecting,
                SlotState::BackingOff(t) => earliest = Some(earliest.map_or(*t, |e| e.min(*t))),
            }
        }
        match earliest {
            Some(t) => LinkState::BackingOff {
                retry_in: t.saturating_duration_since(now),
            },
            None => LinkState::Connecting,
        }
    }

    /// Resolves with the error when the agent stopped at a permanent error (only with
    /// `exit_on_auth_failure`; otherwise never).
    pub async fn permanent_failure(&self) -> String {
        let mut rx = self.shared.permanent_tx.subscribe();
        let got = rx
            .wait_for(|e| e.is_some())
            .await
            .map(|e| e.clone().unwrap_or_default());
        match got {
            Ok(e) => e,
            Err(_) => std::future::pending().await,
        }
    }

    /// Each pooled connection: its server, home server and state.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        self.shared.connections()
    }

    /// The servers the agent spreads its pool over, as `ws[s]://HOST:PORT`.
    pub fn servers(&self) -> Vec<String> {
        self.shared.servers.iter().map(Endpoint::text).collect()
    }

    /// Why the last connection attempt failed or the last connection was lost.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// The smallest latest heartbeat round trip over the live connections.
    pub fn rtt(&self) -> Option<Duration> {
        lock(&self.shared.live)
            .iter()
            .filter_map(|m| m.stats().rtt)
            .min()
    }

    /// Every configured service, in configuration order, with its kind and counters.
    pub fn services(&self) -> Vec<ServiceView> {
        self.shared.services()
    }

    /// Traffic counters of the service `name`, if the agent exposes it.
    pub fn service_counters(&self, name: &str) -> Option<Arc<ServiceCounters>> {
        self.shared.counters.get(name).cloned()
    }

    /// Opens a stream towards `target` (a service name on the server side, or `HOST:PORT`
    /// for a node to dial) over the next live pooled connection. Errors when none is up.
    pub async fn open(&self, target: &str) -> Result<TunnelStream, crate::OpenError> {
        self.open_on(target).await.map(|(_, s)| s)
    }

    /// Opens a UDP flow to `HOST:PORT` dialed by the peer (a node's forward UDP tunnel):
    /// a stream with target `udp://HOST:PORT` announces it, and the stream's id is its flow id.
    pub async fn open_flow(&self, target: &str) -> Result<crate::LocalFlow, crate::OpenError> {
        let (mux, stream) = self.open_on(&format!("udp://{target}")).await?;
        Ok(crate::LocalFlow::register(
            &self.shared.local_flows,
            mux,
            stream,
        ))
    }

    async fn open_on(&self, target: &str) -> Result<(Mux, TunnelStream), crate::OpenError> {
        let mux = {
            let live = lock(&self.shared.live);
            // A suspect connection (silent past a heartbeat) gets no new stream.
            let usable: Vec<&Mux> = live.iter().filter(|m| m.takes_new_streams()).collect();
            if usable.is_empty() {
                return Err(crate::OpenError::NotConnected);
            }
            let k = self.shared.next_open.fetch_add(1, Ordering::Relaxed);
            usable[k % usable.len()].clone()
        };
        let stream = tokio::time::timeout(self.shared.config.connect_timeout, mux.open(target))
            .await
            .map_err(|_| crate::OpenError::Timeout)??;
        Ok((mux, stream))
    }

    /// Graceful stop: tells the server on every connection that no new streams are taken,
    /// gives the streams in flight up to `grace` to finish, then stops.
    pub async fn drain(&self, grace: Duration) {
        let mut live = lock(&self.shared.live).clone();
        live.extend(lock(&self.shared.retiring).iter().cloned());
        culvert_transport::drain(&live, "agent shutting down", grace).await;
        self.shutdown();
    }

    /// Pooled connections up but suspect: silent past a heartbeat interval with a
    /// heartbeat unanswered, so they get no new streams.
    pub fn connections_suspect(&self) -> usize {
        self.shared.connections_suspect()
    }

    /// Ready when every pooled connection is up, has registered every service and is not
    /// suspect (a connection on a silent path does not count).
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Prometheus text exposition of the agent's state and counters (this agent's metrics
    /// alone; a process registers them once with [`AgentHandle::register_metrics`]).
    pub fn metrics(&self) -> String {
        culvert_transport::metrics::text_of(|r| self.register_metrics(r))
    }

    /// Adds the agent's metrics to the process's registry: they are read from the
    /// agent's counters at each scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(crate::metrics::AgentCollector(
            self.shared.clone(),
        )));
    }

    /// The number of pooled connections up and registered, as a watch: embedders (the
    /// `culvert` library's readiness watch) wake on each change instead of polling.
    pub fn watch_connections(&self) -> watch::Receiver<usize> {
        self.state_rx.clone()
    }

    /// Waits until every pooled connection is up (or the timeout passes); returns whether it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let want = self.shared.config.pool;
        let mut rx = self.state_rx.clone();
        let ready = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= want)).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Stops the agent: its connections close and nothing reconnects.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        for m in lock(&self.shared.retiring).drain(..) {
            m.abort("agent stopping");
        }
    }

    /// Waits until the agent's tasks end (they only end by [`AgentHandle::shutdown`]).
    pub async fn join(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
