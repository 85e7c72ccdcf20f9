//! Quotas that hold across sessions: the services, public ports, UDP flows and tunnel
//! connections of a token and of a tenant, counted over all their sessions and pooled
//! connections, and the connections of one session. Each thing held is a [`Charge`], given
//! back when it is dropped or released, so a count never outlives what it counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tokens::TokenEntry;
use crate::ServerConfig;

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Resource {
    /// Registered services (public and private).
    Services,
    /// Public ports (one per public service).
    Ports,
    /// UDP flows (public clients and access clients of UDP services).
    UdpFlows,
    /// Tunnel (WebSocket) connections.
    Connections,
}

impl Resource {
    const ALL: [Resource; 4] = [
        Resource::Services,
        Resource::Ports,
        Resource::UdpFlows,
        Resource::Connections,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// As a refusal says it: `token "x" holds 4 services`.
    fn noun(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::Ports => "public ports",
            Resource::UdpFlows => "UDP flows",
            Resource::Connections => "connections",
        }
    }

    /// The token-file setting that bounds it (in a `[[token]]` and in `[tenants.NAME]`).
    fn setting(self) -> &'static str {
        match self {
            Resource::Services => "max_services",
            Resource::Ports => "max_ports",
            Resource::UdpFlows => "max_udp_flows",
            Resource::Connections => "max_connections",
        }
    }

    /// Its metric label.
    fn label(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::Ports => "ports",
            Resource::UdpFlows => "udp_flows",
            Resource::Connections => "connections",
        }
    }
}

/// Limits shared by all the tokens of one tenant: `[tenants.NAME]` in the token file. An
/// absent limit leaves only each token's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Services the tenant's tokens may hold at once, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_services: Option<usize>,
    /// Public ports the tenant's tokens may hold at once, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ports: Option<usize>,
    /// UDP flows the services of the tenant's tokens may hold at once, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_udp_flows: Option<usize>,
    /// Tunnel connections the tenant's tokens may hold at once, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

impl TenantLimits {
    fn get(&self, r: Resource) -> Option<usize> {
        match r {
            Resource::Services => self.max_services,
            Resource::Ports => self.max_ports,
            Resource::UdpFlows => self.max_udp_flows,
            Resource::Connections => self.max_connections,
        }
    }
}

/// Who a count belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Token(String),
    Tenant(String),
    Session(Uuid),
}

impl Holder {
    fn scope(&self) -> Scope {
        match self {
            Holder::Token(_) => Scope::Token,
            Holder::Tenant(_) => Scope::Tenant,
            Holder::Session(_) => Scope::Session,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Token(n) => write!(f, "token {}", crate::names::escape(n)),
            Holder::Tenant(n) => write!(f, "tenant {}", crate::names::escape(n)),
            Holder::Session(id) => write!(f, "session {id}"),
        }
    }
}

/// Whose limit was hit, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Token,
    Tenant,
    Session,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Token, Scope::Tenant, Scope::Session];

    fn label(self) -> &'static str {
        match self {
            Scope::Token => "token",
            Scope::Tenant => "tenant",
            Scope::Session => "session",
        }
    }
}

/// One holder charged, with its limit (`None`: counted, not limited) and where that limit
/// is set, for the refusal.
#[derive(Debug)]
struct Bound {
    holder: Holder,
    max: Option<usize>,
    setting: String,
}

/// Why something was refused: which holder is at which limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{holder} holds {held} {noun}, its {setting}")]
pub(crate) struct Refusal {
    holder: String,
    held: usize,
    noun: &'static str,
    setting: String,
}

/// The counts of the server: per token, per tenant and per session, of each [`Resource`].
#[derive(Debug, Default)]
pub(crate) struct Quotas {
    /// Only holders with something held are present, so this is bounded by what is held.
    counts: Mutex<HashMap<Holder, [usize; 4]>>,
    /// Refusals by scope and resource.
    refusals: [[AtomicU64; 4]; 3],
    /// Unix second of the last refusal logged where refusals can come in floods.
    last_logged: AtomicU64,
}

impl Quotas {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Holder, [usize; 4]>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges one `resource` to every holder of `bounds`, all or none: refused (and
    /// counted) when one of them is at its limit.
    fn charge(self: &Arc<Self>, resource: Resource, bounds: Vec<Bound>) -> Result<Charge, Refusal> {
        let i = resource.index();
        let mut counts = self.lock();
        for b in &bounds {
            let held = counts.get(&b.holder).map_or(0, |c| c[i]);
            if b.max.is_some_and(|max| held >= max) {
                drop(counts);
                self.refusals[b.holder.scope() as usize][i].fetch_add(1, Ordering::Relaxed);
                return Err(Refusal {
                    holder: b.holder.to_string(),
                    held,
                    noun: resource.noun(),
                    setting: b.setting.clone(),
                });
            }
        }
        for b in &bounds {
            counts.entry(b.holder.clone()).or_default()[i] += 1;
        }
        Ok(Charge {
            quotas: self.clone(),
            resource,
            holders: bounds.into_iter().map(|b| b.holder).collect(),
        })
    }

    fn give_back(&self, resource: Resource, holders: &[Holder]) {
        let i = resource.index();
        let mut counts = self.lock();
        for h in holders {
            if let Some(c) = counts.get_mut(h) {
                c[i] = c[i].saturating_sub(1);
                if c.iter().all(|n| *n == 0) {
                    counts.remove(h);
                }
            }
        }
    }

    /// Charges `resource` to `token` and its tenant (limits: the token's, else the server's
    /// default for a token; the tenant's `[tenants.NAME]`).
    pub(crate) fn charge_token(
        self: &Arc<Self>,
        resource: Resource,
        token: &TokenEntry,
        tenant: &TenantLimits,
        config: &ServerConfig,
    ) -> Result<Charge, Refusal> {
        self.charge(resource, token_bounds(resource, token, tenant, config))
    }

    /// Admits one tunnel connection of `session` (a client id) of `token`: counted for the
    /// session (at most `max_connections_per_session`), the token and its tenant.
    pub(crate) fn admit_connection(
        self: &Arc<Self>,
        session: Uuid,
        token: &TokenEntry,
        tenant: &TenantLimits,
        config: &ServerConfig,
    ) -> Result<Charge, Refusal> {
        let mut bounds = vec![Bound {
            holder: Holder::Session(session),
            max: Some(config.max_connections_per_session),
            setting: "max_connections_per_session (server setting --max-connections-per-session)"
                .to_owned(),
        }];
        bounds.extend(token_bounds(Resource::Connections, token, tenant, config));
        self.charge(Resource::Connections, bounds)
    }

    /// Whether a refusal that can come in floods (a UDP flow per spoofed source) is
    /// logged now: at most once a second; all are counted.
    pub(crate) fn log_now(&self) -> bool {
        let now = crate::tokens::unix_now();
        self.last_logged.swap(now, Ordering::Relaxed) != now
    }

    /// Refusals so far: (scope, resource, count), for metrics.
    pub(crate) fn refusals(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for s in Scope::ALL {
            for r in Resource::ALL {
                let n = self.refusals[s as usize][r.index()].load(Ordering::Relaxed);
                out.push((s.label(), r.label(), n));
            }
        }
        out
    }

    /// What each token and tenant holds now: (scope, name, resource, count), for metrics.
    pub(crate) fn held(&self) -> Vec<(&'static str, String, &'static str, usize)> {
        let counts = self.lock();
        let mut out = Vec::new();
        for (h, c) in counts.iter() {
            let (scope, name) = match h {
                Holder::Token(n) => ("token", n.clone()),
                Holder::Tenant(n) => ("tenant", n.clone()),
                Holder::Session(_) => continue,
            };
            for r in Resource::ALL {
                out.push((scope, name.clone(), r.label(), c[r.index()]));
            }
        }
        out.sort();
        out
    }
}

/// The token and tenant bounds of `resource`.
fn token_bounds(
    resource: Resource,
    token: &TokenEntry,
    tenant: &TenantLimits,
    config: &ServerConfig,
) -> Vec<Bound> {
    let setting = resource.setting();
    let (max, setting_of_token) = match resource {
        Resource::Services => (Some(token.max_services), setting.to_owned()),
        Resource::Ports => (token.max_ports, setting.to_owned()),
        Resource::UdpFlows => match token.max_udp_flows {
            Some(m) => (Some(m), setting.to_owned()),
            None => (
                Some(config.udp_max_flows_per_token),
                format!("{setting} (the server's default for a token)"),
            ),
        },
        Resource::Connections => match token.max_connections {
            Some(m) => (Some(m), setting.to_owned()),
            None => (
                Some(config.max_connections_per_token),
                format!("{setting} (the server's default for a token)"),
            ),
        },
    };
    let tenant_name = token.tenant();
    vec![
        Bound {
            holder: Holder::Token(token.name.clone()),
            max,
            setting: setting_of_token,
        },
        Bound {
            holder: Holder::Tenant(tenant_name.to_owned()),
            max: tenant.get(resource),
            setting: format!("{setting} ([tenants.{tenant_name}] in the token file)"),
        },
    ]
}

/// One thing held, counted for its holders until dropped or released.
#[derive(Debug)]
pub(crate) struct Charge {
    quotas: Arc<Quotas>,
    resource: Resource,
    holders: Vec<Holder>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.quotas.give_back(self.resource, &self.holders);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, tenant: &str, max_services: usize) -> TokenEntry {
        let mut t = crate::TokenStore::from_tokens(&[(name, "t")])
            .check("t")
            .unwrap()
            .clone();
        t.tenant = Some(tenant.to_owned());
        t.max_services = max_services;
        t
    }

    fn config() -> ServerConfig {
        ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            crate::PortRange {
                start: 30000,
                end: 30010,
            },
        )
    }

    #[test]
    fn counts_per_token_and_tenant_and_gives_back_on_drop() {
        let q = Arc::new(Quotas::default());
        let cfg = config();
        let a = token("a", "acme", 2);
        let b = token("b", "acme", 5);
        let acme = TenantLimits {
            max_services: Some(3),
            ..Default::default()
        };
        let s1 = q.charge_token(Resource::Services, &a, &acme, &cfg).unwrap();
        let _s2 = q.charge_token(Resource::Services, &a, &acme, &cfg).unwrap();
        let e = q
            .charge_token(Resource::Services, &a, &acme, &cfg)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token \"a\" holds 2 services, its max_services"
        );
        let _s3 = q.charge_token(Resource::Services, &b, &acme, &cfg).unwrap();
        let e = q
            .charge_token(Resource::Services, &b, &acme, &cfg)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "tenant \"acme\" holds 3 services, its max_services ([tenants.acme] in the token file)"
        );
        drop(s1);
        let _s4 = q.charge_token(Resource::Services, &b, &acme, &cfg).unwrap();
        let refused: u64 = q.refusals().iter().map(|r| r.2).sum();
        assert_eq!(refused, 2);
        let held = q.held();
        assert!(held.contains(&("tenant", "acme".into(), "services", 3)));
        assert!(held.contains(&("token", "a".into(), "services", 1)));
    }

    #[test]
    fn connections_are_capped_per_session_and_per_token() {
        let q = Arc::new(Quotas::default());
        let mut cfg = config();
        cfg.max_connections_per_session = 2;
        cfg.max_connections_per_token = 3;
        let t = token("a", "acme", 2);
        let none = TenantLimits::default();
        let (s1, s2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let _c1 = q.admit_connection(s1, &t, &none, &cfg).unwrap();
        let c2 = q.admit_connection(s1, &t, &none, &cfg).unwrap();
        let e = q.admit_connection(s1, &t, &none, &cfg).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("session {s1} holds 2 connections")),
            "{e}"
        );
        let _c3 = q.admit_connection(s2, &t, &none, &cfg).unwrap();
        let e = q.admit_connection(s2, &t, &none, &cfg).unwrap_err();
        assert!(
            e.to_string().starts_with("token \"a\" holds 3 connections"),
            "{e}"
        );
        drop(c2);
        let _c4 = q.admit_connection(s2, &t, &none, &cfg).unwrap();
        // Nothing held, nothing remembered.
        drop((_c1, _c3, _c4));
        assert!(q.lock().is_empty());
    }
}
