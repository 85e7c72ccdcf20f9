//! What the agent exposes: `NAME=tcp://HOST:PORT[@PUBLIC_PORT][?proxy=v1|v2][&private]`,
//! or an HTTP service `NAME=http[s]://HOST[:PORT][/PATH]` (served through the server's HTTP
//! ingress, never on a public port of its own).

use culvert_proto::ServiceProtocol;

use crate::ProxyVersion;

/// One exposed service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name, unique per agent; the server remembers its public port by it.
    pub name: String,
    /// TCP or UDP.
    pub protocol: ServiceProtocol,
    /// Where the agent connects, `host:port`.
    pub target: String,
    /// Requested public port (0: let the server choose).
    pub remote_port: u16,
    /// PROXY protocol header written to the target before each connection's first byte
    /// (`?proxy=v1` or `?proxy=v2`; TCP only), so the service sees the public client's address.
    pub proxy: Option<ProxyVersion>,
    /// A private service gets no public port: it is reached only through access sessions
    /// and node tunnels whose token the server allows it (`--private` or `?private`).
    pub private: bool,
    /// An HTTP service: requests arrive through the server's HTTP ingress and the agent
    /// proxies them to this backend, adding its injected headers.
    pub http: Option<std::sync::Arc<crate::HttpBackend>>,
}

/// Whether `name` can name a service: 1 to 64 of `A-Z a-z 0-9 . _ -`. Stream targets with a
/// colon are addresses and `?` starts an access check, so names must not hold either.
pub fn valid_service_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl std::str::FromStr for ServiceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ServiceSpec, String> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=tcp://HOST:PORT[@PUBLIC_PORT]"))?;
        if !valid_service_name(name) {
            return Err(format!(
                "{s:?}: service name must be 1 to 64 of A-Z a-z 0-9 . _ -"
            ));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let backend = crate::HttpBackend::parse(url).map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(ServiceSpec::http(name, backend));
        }
        let (protocol, rest) = if let Some(r) = url.strip_prefix("tcp://") {
            (ServiceProtocol::Tcp, r)
        } else if let Some(r) = url.strip_prefix("udp://") {
            (ServiceProtocol::Udp, r)
        } else {
            return Err(format!(
                "{s:?}: target must start with tcp://, udp://, http:// or https://"
            ));
        };
        let (rest, (proxy, private)) = match rest.split_once('?') {
            Some((r, query)) => (r, parse_query(s, query)?),
            // `&private` or `&proxy=v1` without the `?` that starts the options.
            None if rest.contains('&') => {
                return Err(format!(
                    "{s:?}: options after the address start with '?' (e.g. tcp://HOST:PORT?private or ?proxy=v1&private)"
                ))
            }
            None => (rest, (None, false)),
        };
        if proxy.is_some() && protocol != ServiceProtocol::Tcp {
            return Err(format!("{s:?}: ?proxy= is only for tcp:// services"));
        }
        let (target, remote_port) = match rest.rsplit_once('@') {
            Some((t, p)) => (
                t,
                p.parse()
                    .map_err(|_| format!("{s:?}: bad public port {p:?}"))?,
            ),
            None => (rest, 0),
        };
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: target needs HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{s:?}: target needs HOST:PORT"));
        }
        Ok(ServiceSpec {
            name: name.to_owned(),
            protocol,
            target: target.to_owned(),
            remote_port,
            proxy,
            private,
            http: None,
        })
    }
}

/// The options after `?`, joined by `&`: `proxy=v1|v2` and `private[=true|false]`.
fn parse_query(s: &str, query: &str) -> Result<(Option<ProxyVersion>, bool), String> {
    let (mut proxy, mut private) = (None, false);
    for opt in query.split('&') {
        match opt.split_once('=').unwrap_or((opt, "")) {
            ("proxy", v) => proxy = Some(v.parse().map_err(|e| format!("{s:?}: {e}"))?),
            ("private", "" | "true") => private = true,
            ("private", "false") => private = false,
            _ => {
                return Err(format!(
                    "{s:?}: unknown option {opt:?} (expected proxy=v1, proxy=v2 or private)"
                ))
            }
        }
    }
    Ok((proxy, private))
}

impl ServiceSpec {
    /// An HTTP service `name` proxied to `backend`: private (callers come through the
    /// server's HTTP ingress), TCP between server and agent.
    pub fn http(name: &str, backend: crate::HttpBackend) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            protocol: ServiceProtocol::Tcp,
            target: format!("{}:{}", backend.host, backend.port),
            remote_port: 0,
            proxy: None,
            private: true,
            http: Some(std::sync::Arc::new(backend)),
        }
    }

    /// The target's port, sent as Register's `local_port` (informational for the server).
    pub fn local_port(&self) -> u16 {
        self.target
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let s: ServiceSpec = "web=tcp://10.0.0.5:80@30080".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.target.as_str(), s.remote_port),
            ("web", "10.0.0.5:80", 30080)
        );
        let s: ServiceSpec = "pg=tcp://127.0.0.1:5432".parse().unwrap();
        assert_eq!(s.remote_port, 0);
        assert_eq!(s.local_port(), 5432);
        let s: ServiceSpec = "v6=tcp://[::1]:22".parse().unwrap();
        assert_eq!(s.target, "[::1]:22");
        assert!("x".parse::<ServiceSpec>().is_err());
        assert!("x=ftp://a:1".parse::<ServiceSpec>().is_err());
        let h: ServiceSpec = "erp=http://10.0.0.5:8080/api".parse().unwrap();
        assert!(h.private && h.http.is_some() && h.target == "10.0.0.5:8080");
        assert!("x=tcp://a".parse::<ServiceSpec>().is_err());
        assert_eq!(s.proxy, None);
    }

    #[test]
    fn parses_private_and_checks_names() {
        let s: ServiceSpec = "pg=tcp://127.0.0.1:5432?private".parse().unwrap();
        assert!(s.private && s.proxy.is_none());
        let s: ServiceSpec = "pg=tcp://127.0.0.1:5432?proxy=v1&private=true"
            .parse()
            .unwrap();
        assert!(s.private && s.proxy == Some(ProxyVersion::V1));
        let s: ServiceSpec = "pg=tcp://127.0.0.1:5432".parse().unwrap();
        assert!(!s.private);
        for bad in [
            "a:b=tcp://127.0.0.1:1",
            "?a=tcp://127.0.0.1:1",
            "a b=tcp://127.0.0.1:1",
            "x=tcp://127.0.0.1:1?private=maybe",
        ] {
            assert!(bad.parse::<ServiceSpec>().is_err(), "{bad}");
        }
        // Options joined with `&` but no `?`: said so, not "target needs HOST:PORT".
        for bad in [
            "pg=tcp://127.0.0.1:5432&private",
            "pg=tcp://127.0.0.1:5432@30080&proxy=v1",
        ] {
            let e = bad.parse::<ServiceSpec>().unwrap_err();
            assert!(e.contains("start with '?'"), "{bad}: {e}");
        }
        assert!(valid_service_name("db-1.eu_west"));
        assert!(!valid_service_name(&"x".repeat(65)));
    }

    #[test]
    fn parses_proxy_suffix() {
        let s: ServiceSpec = "pg=tcp://127.0.0.1:5432@30080?proxy=v2".parse().unwrap();
        assert_eq!(
            (s.target.as_str(), s.remote_port, s.proxy, s.local_port()),
            ("127.0.0.1:5432", 30080, Some(ProxyVersion::V2), 5432)
        );
        let s: ServiceSpec = "web=tcp://10.0.0.5:80?proxy=v1".parse().unwrap();
        assert_eq!(
            (s.target.as_str(), s.remote_port, s.proxy),
            ("10.0.0.5:80", 0, Some(ProxyVersion::V1))
        );
        let s: ServiceSpec = "v6=tcp://[::1]:22@2222?proxy=v1".parse().unwrap();
        assert_eq!(
            (s.target.as_str(), s.remote_port, s.proxy),
            ("[::1]:22", 2222, Some(ProxyVersion::V1))
        );
        let s: ServiceSpec = "dns=udp://127.0.0.1:53@5353".parse().unwrap();
        assert_eq!((s.protocol, s.proxy), (ServiceProtocol::Udp, None));
    }

    #[test]
    fn rejects_bad_proxy_suffix() {
        for bad in [
            "dns=udp://127.0.0.1:53?proxy=v2",
            "dns=udp://127.0.0.1:53@5353?proxy=v1",
            "x=tcp://127.0.0.1:1?proxy=v3",
            "x=tcp://127.0.0.1:1?proxy=",
            "x=tcp://127.0.0.1:1?proxy",
            "x=tcp://127.0.0.1:1?tls=on",
            "x=tcp://127.0.0.1:1?",
            "x=tcp://127.0.0.1:1?proxy=v1?proxy=v2",
            "x=tcp://127.0.0.1:1?proxy=v1@30080",
        ] {
            assert!(
                bad.parse::<ServiceSpec>().is_err(),
                "{bad} should be refused"
            );
        }
        let e = "dns=udp://127.0.0.1:53?proxy=v2"
            .parse::<ServiceSpec>()
            .unwrap_err();
        assert!(e.contains("only for tcp"), "{e}");
    }
}
