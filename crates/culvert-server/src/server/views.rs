//! The narrow views other parts of the server get instead of the whole shared state: what
//! the metrics text reads, and what peer-opened streams look up.

use std::sync::Arc;

use super::{Counters, Inner};
use crate::limits::Admission;
use crate::metrics::Histogram;
use crate::peer_streams::Directory;
use crate::quota::Quotas;
use crate::registry::Registry;
use crate::session::{Service, Session};
use crate::ServerConfig;

/// What the metrics text is rendered from: the live sessions and the server-wide state.
pub(crate) struct MetricsView<'a> {
    /// The live agent sessions, at the time of the view.
    pub(crate) sessions: Vec<Arc<Session>>,
    /// Server-wide counters.
    pub(crate) counters: &'a Counters,
    /// Handshake admission and lockouts.
    pub(crate) admission: &'a Admission,
    /// What tokens and tenants hold, and what their limits refused.
    pub(crate) quotas: &'a Quotas,
    /// Public ports in use.
    pub(crate) registry: &'a Registry,
    /// Stream-open latency.
    pub(crate) open_latency: &'a Histogram,
    /// Whether the server belongs to a cluster (its metrics are then shown).
    pub(crate) clustered: bool,
}

impl Inner {
    /// The view the metrics text is rendered from.
    pub(crate) fn metrics_view(&self) -> MetricsView<'_> {
        MetricsView {
            sessions: self.sessions_snapshot(),
            counters: &self.counters,
            clustered: self.cluster.is_some(),
            admission: &self.admission,
            quotas: &self.quotas,
            registry: &self.registry,
            open_latency: &self.open_latency,
        }
    }
}

impl Directory for Inner {
    fn config(&self) -> &ServerConfig {
        &self.config
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn find_service(&self, tenant: &str, name: &str) -> Option<(Arc<Session>, Arc<Service>)> {
        Inner::find_service(self, tenant, name)
    }

    fn tenants_holding(&self, name: &str, except: &str) -> Vec<String> {
        Inner::tenants_holding(self, name, except)
    }

    fn charge_flow(&self, owner: &Session) -> Result<crate::quota::Charge, crate::quota::Refusal> {
        crate::udp::charge_flow(self, owner)
    }

    fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_deref()
    }
}
