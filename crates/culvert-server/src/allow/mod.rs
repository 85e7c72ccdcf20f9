//! Forward-tunnel allow-list: which `HOST:PORT` targets this node may dial for its peers.
//!
//! A peer may ask a node to dial a TCP/UDP target. The node checks the request against its
//! own allow-list *after* name resolution, so a name that resolves to a forbidden address is
//! refused and no node becomes an open proxy. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
//! are always compared in their IPv4 form, in rules and in resolved targets alike; an IPv6
//! rule therefore never matches an IPv4 address (`[::/0]:*` allows all of IPv6, no IPv4).
//!
//! It lives in the server crate because the server enforces it: a peer's dial request
//! arrives on a server session (`peer_streams`). A node builds it from its config file
//! into the server configuration of its server role; the agent never dials for peers.

mod error;
mod parse;
mod rule;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use error::AllowError;
use parse::{parse_target, quoted, Target};
pub use rule::AllowRule;
use rule::RuleHost;

/// The targets a node may dial for its peers. Empty = dial nothing.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    rules: Vec<AllowRule>,
}

impl AllowList {
    /// Builds a list from already-parsed rules (for callers that construct rules themselves).
    pub fn new(rules: Vec<AllowRule>) -> AllowList {
        AllowList { rules }
    }

    /// Parses every entry, failing on the first bad one (error names it).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, AllowError> {
        let rules = entries
            .iter()
            .map(|entry| entry.as_ref().parse())
            .collect::<Result<Vec<AllowRule>, AllowError>>()?;
        Ok(AllowList { rules })
    }

    /// Whether the list has no rules, i.e. this node dials nothing for its peers.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules in configuration order, for display and logging.
    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    /// Whether an already-resolved address is allowed (IP/CIDR rules only; host-name rules
    /// need resolution — see `resolve`).
    pub fn allows_addr(&self, addr: SocketAddr) -> bool {
        let addr = canonical_addr(addr);
        self.rules.iter().any(|rule| rule.allows_ip(addr))
    }

    /// Resolves `target` (`host:port`, `[v6]:port` or `ip:port`) with `tokio::net::lookup_host`
    /// under `timeout`, and returns the resolved addresses that are allowed, in resolution order.
    ///
    /// Host-name rules are resolved here too (concurrently, each with the same timeout) and
    /// match when they resolve to the same IP and the port matches; a rule whose name fails to
    /// resolve matches nothing. Returned addresses are deduplicated, and IPv4-mapped IPv6
    /// addresses are returned in their IPv4 form. An empty list refuses every well-formed
    /// target without resolving it.
    ///
    /// Errors: malformed target -> [`AllowError::BadTarget`]; resolution failure or timeout ->
    /// [`AllowError::Resolve`]; nothing allowed -> [`AllowError::NotAllowed`].
    pub async fn resolve(
        &self,
        target: &str,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, AllowError> {
        let target = target.trim();
        let parsed = parse_target(target)
            .map_err(|reason| AllowError::BadTarget(format!("{}: {reason}", quoted(target))))?;
        if self.rules.is_empty() {
            return Err(AllowError::NotAllowed {
                target: target.to_string(),
                resolved: Vec::new(),
            });
        }
        let resolve_error = |reason: String| AllowError::Resolve {
            target: target.to_string(),
            reason,
        };
        let (resolved, target_name) = match parsed {
            Target::Addr(addr) => (vec![canonical_addr(addr)], None),
            Target::Name(host, port) => {
                let found = timed(timeout, tokio::net::lookup_host((host.as_str(), port)))
                    .await
                    .map_err(resolve_error)?;
                let mut resolved: Vec<SocketAddr> = Vec::new();
                for addr in found.map(canonical_addr) {
                    if !resolved.contains(&addr) {
                        resolved.push(addr);
                    }
                }
                if resolved.is_empty() {
                    return Err(resolve_error("the name has no addresses".to_string()));
                }
                (resolved, Some(host))
            }
        };
        let names = self
            .resolve_rule_names(&resolved, target_name, timeout)
            .await;
        let allowed: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|&addr| self.allows_addr(addr) || self.name_rule_allows(addr, &names))
            .collect();
        if allowed.is_empty() {
            Err(AllowError::NotAllowed {
                target: target.to_string(),
                resolved,
            })
        } else {
            Ok(allowed)
        }
    }

    /// Resolves the names of the host-name rules that could still allow one of `resolved`
    /// (those not already allowed by an IP rule), mapping each name to its canonical IPs.
    /// The target's own name, if any, reuses the target's resolution.
    async fn resolve_rule_names(
        &self,
        resolved: &[SocketAddr],
        target_name: Option<String>,
        timeout: Duration,
    ) -> HashMap<String, Vec<IpAddr>> {
        let mut map = HashMap::new();
        let pending: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|&addr| !self.allows_addr(addr))
            .collect();
        let mut names: Vec<&String> = Vec::new();
        for rule in &self.rules {
            if let RuleHost::Name(name) = &rule.host {
                let useful = pending.iter().any(|addr| rule.ports.contains(addr.port()));
                if useful && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if names.is_empty() {
            return map;
        }
        if let Some(host) = target_name {
            if names.contains(&&host) {
                map.insert(host, resolved.iter().map(SocketAddr::ip).collect());
            }
        }
        let mut lookups = tokio::task::JoinSet::new();
        for name in names {
            if map.contains_key(name) {
                continue;
            }
            let name = name.clone();
            lookups.spawn(async move {
                let ips = match timed(timeout, tokio::net::lookup_host((name.as_str(), 0))).await {
                    Ok(addrs) => addrs.map(|addr| canonical_ip(addr.ip())).collect(),
                    Err(_) => Vec::new(),
                };
                (name, ips)
            });
        }
        while let Some(joined) = lookups.join_next().await {
            if let Ok((name, ips)) = joined {
                map.insert(name, ips);
            }
        }
        map
    }

    /// Whether a host-name rule allows `addr` (canonical), given the rule names' resolutions.
    fn name_rule_allows(&self, addr: SocketAddr, names: &HashMap<String, Vec<IpAddr>>) -> bool {
        self.rules.iter().any(|rule| match &rule.host {
            RuleHost::Name(name) => {
                rule.ports.contains(addr.port())
                    && names.get(name).is_some_and(|ips| ips.contains(&addr.ip()))
            }
            RuleHost::Net(_) => false,
        })
    }
}

/// An IPv4-mapped IPv6 address in its IPv4 form; any other address unchanged.
pub(super) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `addr` with its IP made canonical by [`canonical_ip`].
fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// Runs a resolver future under `timeout`, turning failure or timeout into a reason.
async fn timed<T, F>(timeout: Duration, lookup: F) -> Result<T, String>
where
    F: Future<Output = std::io::Result<T>>,
{
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
