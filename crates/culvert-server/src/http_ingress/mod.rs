//! The HTTP ingress: callers send ordinary HTTP requests to the server by service name
//! (`/t/{tenant}/{service}/{path…}`, or `https://{service}.{tenant}.{domain}/{path…}`),
//! and the server forwards each over a tunnel stream to the agent serving that service,
//! whose reverse proxy adds the backend's credentials. Callers never learn a tunnel exists;
//! the credentials never leave the private network.
//!
//! Callers authenticate with a token of role `http` (`Authorization: Bearer …`, or the header
//! the operator names); the server removes it before forwarding. A service with no agent
//! answers `503` with `Retry-After` at once: the ingress fails closed, never hangs and never
//! falls back to anything else.

mod activity;
mod connection;
mod request;
mod route;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::HeaderName;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::server::Inner;
use culvert_transport::AcceptErrors;

/// How the ingress is set up.
#[derive(Debug, Clone)]
pub struct HttpIngressConfig {
    /// Address the ingress listens on (TLS with the server's certificate, or plain on
    /// loopback only).
    pub listen: SocketAddr,
    /// With a domain, `{service}.{tenant}.{domain}` routes by host name too.
    pub domain: Option<String>,
    /// Header carrying the caller's token as is; `None`: `Authorization: Bearer TOKEN`.
    pub token_header: Option<HeaderName>,
    /// Caller connections held at most (TLS handshakes and idle keep-alive included); past
    /// it a new one is closed at once.
    pub max_connections: usize,
    /// Caller connections held at most from one address (IPv6: its /64).
    pub max_connections_per_address: usize,
    /// Every caller connection begins with a PROXY protocol header (v1 or v2) from the
    /// balancer in front, naming the caller; a connection without one is closed. On only
    /// when nothing but that balancer can reach the ingress, or with `proxy_protocol_from`.
    pub proxy_protocol: bool,
    /// The balancers' addresses: only connections from these must (and may) begin with a
    /// PROXY header; any other is a direct caller, known by its own address, whose header
    /// would be read as HTTP, so it cannot claim another caller's address. Empty: every
    /// connection is a balancer's.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

impl HttpIngressConfig {
    /// Whether a connection from `peer` begins with a balancer's PROXY header.
    fn expects_proxy_header(&self, peer: std::net::IpAddr) -> bool {
        self.proxy_protocol
            && (self.proxy_protocol_from.is_empty()
                || crate::networks::contains(&self.proxy_protocol_from, peer))
    }
}

/// [`HttpIngressConfig::max_connections`] unless the operator sets it.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 4096;
/// [`HttpIngressConfig::max_connections_per_address`] unless the operator sets it.
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// Accepts callers until the task is dropped.
pub(crate) async fn serve(inner: Arc<Inner>, listener: TcpListener, config: HttpIngressConfig) {
    let mut errors = AcceptErrors::default();
    let config = Arc::new(config);
    let tls = connection::tls_config(inner.tls.as_ref());
    tracing::info!(listen = %config.listen, tls = inner.tls.is_some(), domain = ?config.domain, "http ingress ready");
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                errors.on_error(&listener, "http ingress", &e).await;
                continue;
            }
        };
        // Past a limit the connection closes here: nothing read, nothing answered. Behind
        // a balancer the caller's address comes with the PROXY header, read in the task.
        let from_balancer = config.expects_proxy_header(peer.ip());
        let slot = if from_balancer {
            inner.http_callers.admit_total()
        } else {
            inner.http_callers.admit(peer.ip())
        };
        let Ok(mut slot) = slot else {
            continue;
        };
        culvert_transport::tune_accepted(&tcp);
        let (inner, config, tls) = (inner.clone(), config.clone(), tls.clone());
        tokio::spawn(async move {
            let peer = if from_balancer {
                let Some(caller) = caller_behind_balancer(&inner, &mut tcp, peer).await else {
                    return;
                };
                if slot.assign(caller.ip()).is_err() {
                    return;
                }
                caller
            } else {
                peer
            };
            connection::connection(inner, config, tls, tcp, peer)
                .instrument(tracing::debug_span!("http", %peer))
                .await;
            drop(slot);
        });
    }
}

/// The caller a balancer's PROXY header names (the balancer itself for a header that
/// names none, such as its health checks), read within the handshake timeout; `None`,
/// counted and logged, when the connection brings no valid header in time.
async fn caller_behind_balancer(
    inner: &Inner,
    tcp: &mut TcpStream,
    balancer: SocketAddr,
) -> Option<SocketAddr> {
    let limit = inner.config().handshake_timeout;
    let why = match crate::proxy_header::client_within(tcp, balancer, limit).await {
        Ok(caller) => return Some(caller),
        Err(why) => why,
    };
    tracing::debug!(%balancer, reason = %why, "http ingress: connection without a valid PROXY header closed");
    inner.http_callers.refuse(
        crate::http_callers::Refused::ProxyHeader,
        Some(balancer.ip()),
    );
    None
}

/// Binds the ingress listener, refusing plain HTTP off loopback.
pub(crate) async fn bind(config: &HttpIngressConfig, tls: bool) -> std::io::Result<TcpListener> {
    if !tls && !config.listen.ip().is_loopback() {
        return Err(std::io::Error::other(
            "plain HTTP ingress is only allowed on a loopback address; configure TLS",
        ));
    }
    TcpListener::bind(config.listen).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_balancers_send_proxy_headers() {
        let mut c = HttpIngressConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            domain: None,
            token_header: None,
            max_connections: 1,
            max_connections_per_address: 1,
            proxy_protocol: false,
            proxy_protocol_from: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::7/128".parse().unwrap(),
            ],
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(
            !c.expects_proxy_header(ip("10.1.2.3")),
            "off: no header from anyone"
        );
        c.proxy_protocol = true;
        assert!(c.expects_proxy_header(ip("10.1.2.3")));
        assert!(c.expects_proxy_header(ip("::ffff:10.1.2.3")), "v4-mapped");
        assert!(c.expects_proxy_header(ip("2001:db8::7")));
        assert!(!c.expects_proxy_header(ip("2001:db8::8")));
        assert!(!c.expects_proxy_header(ip("192.0.2.1")), "a direct caller");
        c.proxy_protocol_from.clear();
        assert!(
            c.expects_proxy_header(ip("192.0.2.1")),
            "no list: every peer is a balancer"
        );
    }
}
