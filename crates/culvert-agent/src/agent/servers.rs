//! Which server each pool slot dials: with several servers the pool spreads over them
//! (slot `i` lives on server `i % n`), and a slot whose server fails tries the others in
//! order before it backs off, so one dead server costs no waiting while another answers.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use culvert_transport::ws::ServerUrl;

/// One server the pool dials: its URL and, for a name that resolves to several addresses
/// (each a server of the cluster), the one address this endpoint stands for. The name
/// still goes in SNI, the Host header and the certificate check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) url: ServerUrl,
    pub(crate) addr: Option<SocketAddr>,
}

impl Endpoint {
    /// How status views and metrics name it: the URL, with the address when it has one.
    pub(crate) fn text(&self) -> String {
        match self.addr {
            None => server_text(&self.url),
            Some(a) => format!("{} ({a})", server_text(&self.url)),
        }
    }
}

/// The endpoints of `urls`: one per URL, or one per address when `resolve` gives several
/// for its name (a name with one address keeps being resolved at each dial).
pub(crate) fn endpoints(
    urls: &[ServerUrl],
    resolve: impl Fn(&ServerUrl) -> Vec<SocketAddr>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for url in urls {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in resolve(url) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.len() < 2 {
            out.push(Endpoint {
                url: url.clone(),
                addr: None,
            });
        } else {
            out.extend(addrs.into_iter().map(|a| Endpoint {
                url: url.clone(),
                addr: Some(a),
            }));
        }
    }
    out
}

/// The addresses `url`'s host name resolves to now (none for an IP literal, a name that
/// does not resolve, or one reached through `proxy`, which resolves it itself).
pub(crate) fn resolve_now(
    url: &ServerUrl,
    proxy: Option<&culvert_transport::Proxy>,
) -> Vec<SocketAddr> {
    if url.host.parse::<IpAddr>().is_ok() || proxy.is_some_and(|p| p.applies_to(&url.host)) {
        return Vec::new();
    }
    match (url.host.as_str(), url.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            tracing::warn!(server = %server_text(url), error = %e, "could not resolve the server's name at start; it is resolved again at each connection attempt");
            Vec::new()
        }
    }
}

/// Pooled connections kept with `pool` asked for and `servers` servers: at least one per
/// server, so each server has this agent's services.
pub(crate) fn effective_pool(pool: usize, servers: usize) -> usize {
    pool.max(servers).max(1)
}

/// `ws[s]://HOST:PORT` of a server, as status views and metrics name it.
pub(crate) fn server_text(url: &ServerUrl) -> String {
    let scheme = if url.tls { "wss" } else { "ws" };
    if url.host.contains(':') {
        format!("{scheme}://[{}]:{}", url.host, url.port)
    } else {
        format!("{scheme}://{}:{}", url.host, url.port)
    }
}

/// The failover route of one pool slot over `n` servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    n: usize,
    home: usize,
    current: usize,
    /// Servers that failed one after the other since the last connection that worked.
    failed_in_row: usize,
}

impl Route {
    /// The route of pool slot `slot` over `n` servers: it starts at its home, `slot % n`.
    pub(crate) fn new(slot: usize, n: usize) -> Route {
        let n = n.max(1);
        let home = slot % n;
        Route {
            n,
            home,
            current: home,
            failed_in_row: 0,
        }
    }

    /// The server the slot dials next (an index into the server list).
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// The slot's home server.
    pub(crate) fn home(&self) -> usize {
        self.home
    }

    /// Whether the slot is away from its home server.
    pub(crate) fn away(&self) -> bool {
        self.current != self.home
    }

    /// A connection to the current server worked (it lasted): failures count afresh.
    pub(crate) fn connected(&mut self) {
        self.failed_in_row = 0;
    }

    /// The current server failed (dial, TLS, upgrade, Auth) or its connection dropped: the
    /// slot moves to the next server. Returns `true` when every server has failed in a row:
    /// then the caller backs off, and the route starts again at home.
    pub(crate) fn failed(&mut self) -> bool {
        self.failed_in_row += 1;
        if self.failed_in_row >= self.n {
            self.failed_in_row = 0;
            self.current = self.home;
            true
        } else {
            self.current = (self.current + 1) % self.n;
            false
        }
    }

    /// The slot moved back to its home server (its periodic check found it answering).
    pub(crate) fn go_home(&mut self) {
        self.current = self.home;
        self.failed_in_row = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_over_servers() {
        let homes: Vec<usize> = (0..6).map(|s| Route::new(s, 3).home()).collect();
        assert_eq!(homes, [0, 1, 2, 0, 1, 2]);
        assert_eq!(effective_pool(1, 3), 3);
        assert_eq!(effective_pool(6, 3), 6);
        assert_eq!(effective_pool(4, 1), 4);
        assert_eq!(effective_pool(0, 1), 1);
        assert_eq!(Route::new(5, 1).home(), 0);
    }

    #[test]
    fn failover_tries_the_others_in_order_then_backs_off_from_home() {
        let mut r = Route::new(4, 3); // home 1
        assert_eq!(r.current(), 1);
        assert!(!r.failed());
        assert_eq!(r.current(), 2);
        assert!(r.away());
        assert!(!r.failed());
        assert_eq!(r.current(), 0);
        // The third failure in a row: every server failed, back off, start at home.
        assert!(r.failed());
        assert_eq!(r.current(), 1);
        assert!(!r.away());
        // A connection that worked resets the count: a later drop moves on at once.
        assert!(!r.failed());
        assert_eq!(r.current(), 2);
        r.connected();
        assert!(!r.failed());
        assert_eq!(r.current(), 0);
        assert!(!r.failed());
        assert_eq!(r.current(), 1);
        r.failed();
        r.go_home();
        assert_eq!(r.current(), 1);
    }

    #[test]
    fn one_server_backs_off_at_every_failure_as_before() {
        let mut r = Route::new(2, 1);
        assert!(r.failed());
        assert_eq!(r.current(), 0);
        r.connected();
        assert!(r.failed());
        assert!(!r.away());
    }

    #[test]
    fn a_name_with_several_addresses_is_several_servers() {
        let urls = [
            ServerUrl::parse("wss://cluster.example:8443").unwrap(),
            ServerUrl::parse("wss://single.example:8443").unwrap(),
        ];
        let a: SocketAddr = "10.0.0.1:8443".parse().unwrap();
        let b: SocketAddr = "[fd00::2]:8443".parse().unwrap();
        let c: SocketAddr = "10.0.0.9:8443".parse().unwrap();
        let eps = endpoints(&urls, |u| {
            if u.host.starts_with("cluster") {
                vec![a, b, a]
            } else {
                vec![c]
            }
        });
        let got: Vec<(String, Option<SocketAddr>)> =
            eps.iter().map(|e| (e.url.host.clone(), e.addr)).collect();
        assert_eq!(
            got,
            [
                ("cluster.example".to_owned(), Some(a)),
                ("cluster.example".to_owned(), Some(b)),
                ("single.example".to_owned(), None),
            ]
        );
        assert_eq!(eps[1].text(), "wss://cluster.example:8443 ([fd00::2]:8443)");
        assert_eq!(eps[2].text(), "wss://single.example:8443");
        // An IP literal is never looked up.
        let ip = ServerUrl::parse("ws://127.0.0.1:1").unwrap();
        assert!(resolve_now(&ip, None).is_empty());
        assert_eq!(endpoints(&[ip], |u| resolve_now(u, None)).len(), 1);
    }

    #[test]
    fn names_servers_for_status() {
        let u = ServerUrl::parse("wss://[::1]:8443/x").unwrap();
        assert_eq!(server_text(&u), "wss://[::1]:8443");
        let u = ServerUrl::parse("ws://127.0.0.1:7000").unwrap();
        assert_eq!(server_text(&u), "ws://127.0.0.1:7000");
    }
}
