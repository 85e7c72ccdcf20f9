//! One token as the token file stores it: name, tenant, roles, hash and limits.

use serde::{Deserialize, Serialize};

use crate::names::{name_problem, valid_name};
use crate::roles::Role;

/// One token as stored in the token file: its name, hash and permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Human name (shown in logs and metrics instead of the token).
    pub name: String,
    /// Tenant the token belongs to: its services are `TENANT/NAME`, and it reaches its own
    /// tenant's services by bare name. The token's own name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What the token may do. Every role when absent (the rights token files had before
    /// roles existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
    /// Service names this token may register (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Public ports this token may request, as ranges like "30000-30010" (any in the server range when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
    /// Addresses that may connect to this token's public ports, TCP and UDP, as networks
    /// (`"203.0.113.0/24"`, `"2001:db8::/32"`) or single addresses (anyone when absent).
    /// Exposing a database on a public port then does not expose it to the internet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_clients: Option<Vec<String>>,
    /// Most services this token may hold at once, across all its sessions.
    #[serde(default = "default_max_services")]
    pub max_services: usize,
    /// Most public ports this token may hold at once, across all its sessions (only
    /// `max_services` bounds them when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ports: Option<usize>,
    /// Most UDP flows its services may hold at once, across all its sessions (the server's
    /// `udp_max_flows_per_token` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_udp_flows: Option<usize>,
    /// Most tunnel connections it may hold at once, across all its sessions (the server's
    /// `max_connections_per_token` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Services of other tenants this token may reach through access sessions and node
    /// tunnels: `"TENANT/NAME"`, `"TENANT/*"`, `"*"` for all, or a bare `"NAME"` (that name in
    /// whichever tenant holds it; refused when several do). Its own tenant needs no grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Vec<String>>,
    /// Unix time (seconds) after which the token is refused and its sessions are closed
    /// (within a second): a time-to-live the server enforces, whatever the client does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenEntry {
    /// Whether the token's time-to-live has run out at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|t| now >= t)
    }

    /// The tenant the token belongs to (its own name unless the file sets one).
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.name)
    }

    /// Whether the token holds `role` (an entry without `roles` holds every role).
    pub fn has_role(&self, role: Role) -> bool {
        match &self.roles {
            Some(r) => r.contains(&role),
            None => Role::ALL.contains(&role),
        }
    }

    /// The roles the token holds, for messages and listings.
    pub fn role_names(&self) -> String {
        let roles: Vec<&str> = match &self.roles {
            Some(r) => r.iter().map(|r| r.as_str()).collect(),
            None => Role::ALL.iter().map(|r| r.as_str()).collect(),
        };
        roles.join(",")
    }

    /// Whether a client at `ip` may connect to this token's public ports (`public_clients`;
    /// an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn admits_public_client(&self, ip: std::net::IpAddr) -> bool {
        let Some(allowed) = &self.public_clients else {
            return true;
        };
        let ip = ip.to_canonical();
        allowed
            .iter()
            .filter_map(|a| crate::networks::parse_network(a).ok())
            .any(|net| net.contains(&ip))
    }

    /// Whether this token may open streams to the service `name` of `tenant`: its own
    /// tenant's always, another's when `access` grants it.
    pub fn may_access(&self, tenant: &str, name: &str) -> bool {
        tenant == self.tenant() || self.grants(tenant, name)
    }

    /// Whether `access` grants the service `name` of `tenant`.
    pub fn grants(&self, tenant: &str, name: &str) -> bool {
        self.access
            .iter()
            .flatten()
            .any(|g| match g.split_once('/') {
                None => g == "*" || g == name,
                Some((t, n)) => t == tenant && (n == "*" || n == name),
            })
    }

    /// Checks what the types cannot: names, grants, port ranges and roles.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let who = format!("token {}", crate::names::escape(&self.name));
        match &self.tenant {
            Some(t) if !valid_name(t) => return Err(format!("{who}: {}", name_problem("tenant", t))),
            Some(_) => {}
            None if !valid_name(&self.name) => {
                return Err(format!(
                    "{who}: without `tenant` the token's name is its tenant, and {}; set tenant = \"...\"",
                    name_problem("tenant", &self.name)
                ))
            }
            None => {}
        }
        for s in self.services.iter().flatten() {
            if !valid_name(s) {
                return Err(format!("{who}: services: {}", name_problem("service", s)));
            }
        }
        for g in self.access.iter().flatten() {
            let ok = g == "*"
                || match g.split_once('/') {
                    None => valid_name(g),
                    Some((t, n)) => valid_name(t) && (n == "*" || valid_name(n)),
                };
            if !ok {
                return Err(format!(
                    "{who}: access entry {} must be TENANT/NAME, TENANT/*, NAME or * (names of A-Z a-z 0-9 . _ -, 1 to 64 bytes)",
                    crate::names::escape(g)
                ));
            }
        }
        // A malformed port range must not silently widen the token to the whole range.
        for r in self.ports.iter().flatten() {
            r.parse::<crate::PortRange>()
                .map_err(|e| format!("{who}: ports: {e}"))?;
        }
        // A malformed entry must not silently leave an address out (or let one in).
        for a in self.public_clients.iter().flatten() {
            crate::networks::parse_network(a).map_err(|e| format!("{who}: public_clients: {e}"))?;
        }
        if self.roles.as_ref().is_some_and(|r| r.is_empty()) {
            return Err(format!(
                "{who}: roles is empty (give at least one of agent, access, node)"
            ));
        }
        Ok(())
    }
}

pub(super) fn default_max_services() -> usize {
    64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(public_clients: Option<&[&str]>) -> TokenEntry {
        let mut e = crate::TokenStore::from_tokens(&[("t", "t")])
            .check("t")
            .unwrap()
            .clone();
        e.public_clients = public_clients.map(|v| v.iter().map(|s| (*s).to_owned()).collect());
        e
    }

    #[test]
    fn public_clients_admit_their_networks_and_addresses_only() {
        let e = entry(Some(&["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"]));
        assert!(e.validate().is_ok());
        for ok in [
            "203.0.113.1",
            "203.0.113.255",
            "198.51.100.7",
            "2001:db8:1::5",
            "::ffff:203.0.113.9",
        ] {
            assert!(e.admits_public_client(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "203.0.114.1",
            "198.51.100.8",
            "2001:db9::1",
            "::ffff:198.51.100.8",
        ] {
            assert!(!e.admits_public_client(no.parse().unwrap()), "{no}");
        }
        assert!(entry(None).admits_public_client("192.0.2.1".parse().unwrap()));
        assert!(!entry(Some(&[])).admits_public_client("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn a_malformed_public_client_is_refused_at_load() {
        for bad in ["office", "10.0.0.0/33", "10.0.0.1/", ""] {
            let err = entry(Some(&[bad])).validate().unwrap_err();
            assert!(err.contains("public_clients"), "{bad}: {err}");
        }
    }
}
