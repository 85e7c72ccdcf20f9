//! [`Server`]: a program hosts the relay itself, as `culvert server` does: agents dial in,
//! public clients reach their services, access clients open streams to private ones.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use culvert_server::{PortRange, ServerConfig, SessionInfo, TokenStore};
use culvert_transport::tls::ServerTls;

use crate::Error;

/// Builds a server; see [`Server::builder`].
pub struct Server;

/// Settings of a server; [`ServerBuilder::spawn`] starts it.
#[derive(Clone)]
pub struct ServerBuilder {
    config: ServerConfig,
    tokens: Option<TokenStore>,
    tls: Option<ServerTls>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("listen", &self.config.listen)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder for a server whose tunnel endpoint listens on `listen` and whose public
    /// ports come from `ports` (first to last, inclusive).
    pub fn builder(listen: SocketAddr, ports: std::ops::RangeInclusive<u16>) -> ServerBuilder {
        let range = PortRange {
            start: *ports.start(),
            end: *ports.end(),
        };
        ServerBuilder {
            config: ServerConfig::new(listen, range),
            tokens: None,
            tls: None,
        }
    }
}

impl ServerBuilder {
    /// The accepted tokens (hashes and permissions; [`TokenStore::load`] reads a token file).
    pub fn tokens(mut self, tokens: TokenStore) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The accepted tokens, from a token file as `culvert token new` writes it.
    pub fn tokens_file(self, path: &Path) -> Result<Self, Error> {
        let store = TokenStore::load(path).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.tokens(store))
    }

    /// TLS for the tunnel endpoint (`wss://`). Without it the server speaks plain `ws://`,
    /// which is refused unless the listen address is loopback.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// TLS from a PEM certificate chain and key.
    pub fn tls_pem(self, cert: &Path, key: &Path) -> Result<Self, Error> {
        Ok(self.tls(ServerTls::from_pem(cert, key)?))
    }

    /// TLS with a fresh self-signed certificate; agents pin
    /// [`ServerHandle::fingerprint`] (`Verify::Fingerprint`).
    pub fn self_signed(self) -> Result<Self, Error> {
        let tls = ServerTls::self_signed_for(self.config.listen)?;
        Ok(self.tls(tls))
    }

    /// Address public listeners bind on (default `0.0.0.0`).
    pub fn public_bind(mut self, ip: IpAddr) -> Self {
        self.config.public_bind = ip;
        self
    }

    /// Ports handed to UDP services (default: the TCP range).
    pub fn udp_ports(mut self, ports: std::ops::RangeInclusive<u16>) -> Self {
        self.config.udp_ports = PortRange {
            start: *ports.start(),
            end: *ports.end(),
        };
        self
    }

    /// The full server configuration, for settings this builder does not name.
    pub fn config_mut(&mut self) -> &mut ServerConfig {
        &mut self.config
    }

    /// Binds the tunnel endpoint and starts serving (inside a tokio runtime).
    pub async fn spawn(self) -> Result<ServerHandle, Error> {
        let tokens = self
            .tokens
            .ok_or_else(|| Error::Config("no tokens: the server would accept nobody".into()))?;
        let fingerprint = self.tls.as_ref().map(|t| t.fingerprint.clone());
        let server = culvert_server::Server::bind(self.config, tokens, self.tls)
            .await
            .map_err(Error::Io)?;
        let inner = server.spawn().map_err(Error::Io)?;
        Ok(ServerHandle { inner, fingerprint })
    }
}

/// A running server. Dropping it stops the server at once; [`ServerHandle::shutdown`]
/// stops it gracefully.
pub struct ServerHandle {
    inner: culvert_server::ServerHandle,
    fingerprint: Option<String>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The tunnel endpoint's address (with the port chosen when the builder said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The URL agents and clients dial (`ws://` or `wss://` with the local address).
    pub fn url(&self) -> String {
        let scheme = if self.fingerprint.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}", self.inner.addr)
    }

    /// SHA-256 fingerprint of the TLS certificate (what agents pin), when TLS is on.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Public ports assigned, by service name.
    pub fn ports(&self) -> HashMap<String, u16> {
        self.inner.ports()
    }

    /// A snapshot of the connected agent sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.inner.sessions()
    }

    /// The server's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics()
    }

    /// Replaces the accepted tokens; sessions of tokens gone are closed, sessions whose
    /// token changed follow it.
    pub fn reload_tokens(&self, tokens: TokenStore) -> culvert_server::ReloadReport {
        self.inner.reload_tokens(tokens)
    }

    /// Graceful stop: no new agents or clients, streams in flight get up to `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.inner.drain(grace).await;
    }

    /// The wrapped server handle, for what this facade does not cover.
    pub fn inner(&self) -> &culvert_server::ServerHandle {
        &self.inner
    }
}
