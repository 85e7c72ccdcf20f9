//! Reloads reaching live sessions: a session follows its token's reloaded entry. What the
//! new entry no longer allows is withdrawn (services unregistered, their listeners closed
//! and streams reset; access and node streams reset), and a token removed or expired ends
//! the session.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::server::Counters;
use crate::session::{Service, Session};
use crate::tokens::{unix_now, TokenEntry, TokenStore};
use crate::{PortRange, Role};

/// What a token reload did to the live sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Sessions ended: their token was removed from the file (or its new entry has expired).
    pub sessions_closed: usize,
    /// Sessions whose token entry changed: they follow the new one from now on.
    pub sessions_updated: usize,
    /// Services those sessions lost because their token no longer allows them.
    pub services_withdrawn: usize,
}

/// How a live session stands after it was compared with the current token store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Its entry is unchanged.
    Unchanged,
    /// It follows the changed entry; this many services were withdrawn.
    Updated { withdrawn: usize },
    /// The session must end, for this reason: the token is gone or has expired.
    End(&'static str),
}

/// Puts the store's current entry for `session`'s token in force and withdraws the services
/// it no longer allows, logging each (warn) and counting it. Ending the session (on
/// [`Follow::End`]) is the caller's.
pub(crate) fn follow(session: &Session, store: &TokenStore, counters: &Counters) -> Follow {
    let before = session.token();
    let Some(now) = store.current(&before) else {
        return Follow::End("token revoked");
    };
    if now.expired(unix_now()) {
        return Follow::End("token expired");
    }
    let Some(old) = session.set_token(now) else {
        return Follow::Unchanged;
    };
    let services: Vec<Arc<Service>> = session.services().values().cloned().collect();
    let mut withdrawn = 0;
    for svc in services {
        let Some(reason) = service_refusal(now, old.tenant(), &svc) else {
            continue;
        };
        if session.withdraw_service(&svc) {
            withdrawn += 1;
            counters
                .reload_services_withdrawn
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = %session.id, token = %now.name, tenant = %old.tenant(),
                service = %svc.name, port = svc.port, %reason,
                "reload withdrew a service: its public listener is closed and its streams are reset");
        }
    }
    tracing::info!(session = %session.id, token = %now.name, changed = %changed_fields(&old, now),
        services_withdrawn = withdrawn, expires = ?now.expires,
        "live session follows the reloaded token entry; streams it no longer allows are reset");
    Follow::Updated { withdrawn }
}

/// The settings that differ between two entries of one token, for the log.
fn changed_fields(a: &TokenEntry, b: &TokenEntry) -> String {
    let fields = [
        ("tenant", a.tenant() != b.tenant()),
        ("roles", a.roles != b.roles),
        ("services", a.services != b.services),
        ("ports", a.ports != b.ports),
        ("max_services", a.max_services != b.max_services),
        ("access", a.access != b.access),
        ("expires", a.expires != b.expires),
    ];
    let changed: Vec<&str> = fields.iter().filter(|f| f.1).map(|f| f.0).collect();
    if changed.is_empty() {
        "nothing".to_owned()
    } else {
        changed.join(",")
    }
}

/// Why `entry` no longer allows `svc`, which was registered in `tenant`; `None` when it
/// still does. The same rules as a registration, applied to a live service.
pub(crate) fn service_refusal(entry: &TokenEntry, tenant: &str, svc: &Service) -> Option<String> {
    if !entry.has_role(Role::Agent) {
        return Some(format!(
            "the token no longer has the agent role (its roles: {})",
            entry.role_names()
        ));
    }
    if entry.tenant() != tenant {
        return Some(format!(
            "the token moved from tenant {tenant:?} to {:?}",
            entry.tenant()
        ));
    }
    if let Some(allowed) = &entry.services {
        if !allowed.contains(&svc.name) {
            return Some(format!(
                "service {:?} is no longer in the token's services",
                svc.name
            ));
        }
    }
    if !svc.private && !port_allowed(entry, svc.port) {
        return Some(format!("port {} is outside the token's ports", svc.port));
    }
    None
}

/// Whether `entry` allows the public port `port` (as a registration reads `ports`: no
/// ranges, any port of the server's range).
fn port_allowed(entry: &TokenEntry, port: u16) -> bool {
    let ranges: Vec<PortRange> = entry
        .ports
        .iter()
        .flatten()
        .filter_map(|r| r.parse().ok())
        .collect();
    ranges.is_empty() || ranges.iter().any(|r| r.contains(port))
}

/// Whether `entry` may open access streams to the service `name` of `tenant`, else why not.
pub(crate) fn may_reach(entry: &TokenEntry, tenant: &str, name: &str) -> Result<(), String> {
    if !entry.has_role(Role::Access) {
        return Err(format!(
            "the token no longer has the access role (its roles: {})",
            entry.role_names()
        ));
    }
    if !entry.may_access(tenant, name) {
        return Err(format!("the token may no longer reach {tenant}/{name}"));
    }
    Ok(())
}

/// Whether `entry` may have this server dial addresses for it, else why not.
pub(crate) fn may_dial(entry: &TokenEntry) -> Result<(), String> {
    if entry.has_role(Role::Node) {
        Ok(())
    } else {
        Err(format!(
            "the token no longer has the node role (its roles: {})",
            entry.role_names()
        ))
    }
}

/// Resolves, with the reason, once `session`'s token entry fails `allowed`: checked now,
/// and again after each reload that changes the entry.
pub(crate) async fn rights_lost(
    session: &Session,
    allowed: impl Fn(&TokenEntry) -> Result<(), String>,
) -> String {
    // Subscribed before the first check, so a change between the two is not missed.
    let mut changes = session.rights();
    loop {
        if let Err(reason) = allowed(&session.token()) {
            return reason;
        }
        if changes.changed().await.is_err() {
            // The session is gone, and its connections with it.
            return std::future::pending().await;
        }
    }
}

/// Resolves, with the reason, once an access stream of `session` to the service `svc` of
/// `tenant` is no longer allowed: the token lost the right to reach it, or a reload
/// withdrew the service from its own agent.
pub(crate) async fn access_withdrawn(session: &Session, tenant: &str, svc: &Service) -> String {
    tokio::select! {
        reason = rights_lost(session, |e| may_reach(e, tenant, &svc.name)) => reason,
        () = svc.withdrawn() => format!("service {tenant}/{} was withdrawn by a reload", svc.name),
    }
}

/// Counts and logs a live stream reset because a reload withdrew its right to exist.
pub(crate) fn stream_reset(counters: &Counters, token: &str, target: &str, reason: &str) {
    counters
        .reload_streams_reset
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(token = %token, target = ?target, %reason, "stream reset: no longer allowed after a reload");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Protocol;

    fn entry() -> TokenEntry {
        TokenEntry {
            name: "acme".into(),
            tenant: None,
            roles: None,
            sha256: "0".repeat(64),
            services: None,
            ports: None,
            public_clients: None,
            max_services: 64,
            max_ports: None,
            max_udp_flows: None,
            max_connections: None,
            access: None,
            expires: None,
        }
    }

    #[test]
    fn a_narrowed_entry_refuses_what_it_no_longer_allows() {
        let web = Service::new("web", Protocol::Tcp, 30_001, None);
        let mut public = Service::new("db", Protocol::Tcp, 30_002, None);
        public.private = false;
        let e = entry();
        assert_eq!(service_refusal(&e, "acme", &web), None);
        assert_eq!(service_refusal(&e, "acme", &public), None);
        let mut narrowed = e.clone();
        narrowed.services = Some(vec!["web".into()]);
        assert_eq!(service_refusal(&narrowed, "acme", &web), None);
        assert!(service_refusal(&narrowed, "acme", &public)
            .unwrap()
            .contains("no longer in the token's services"));
        let mut ports = e.clone();
        ports.ports = Some(vec!["30000-30001".into()]);
        assert!(service_refusal(&ports, "acme", &public)
            .unwrap()
            .contains("port 30002"));
        assert_eq!(
            service_refusal(&ports, "acme", &web),
            None,
            "a private service has no port to check"
        );
        assert!(service_refusal(&e, "globex", &web)
            .unwrap()
            .contains("moved from tenant"));
        let mut access_only = e.clone();
        access_only.roles = Some(vec![Role::Access]);
        assert!(service_refusal(&access_only, "acme", &web)
            .unwrap()
            .contains("agent role"));
        assert!(may_dial(&access_only).is_err());
        let mut grants = access_only.clone();
        grants.access = Some(vec!["globex/pg".into()]);
        assert!(may_reach(&grants, "globex", "pg").is_ok());
        grants.access = Some(vec!["globex/web".into()]);
        assert!(may_reach(&grants, "globex", "pg").is_err());
        assert!(may_reach(&grants, "acme", "pg").is_ok(), "its own tenant");
        assert!(changed_fields(&e, &grants).contains("access"));
        assert_eq!(changed_fields(&e, &e), "nothing");
    }
}
