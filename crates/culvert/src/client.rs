//! [`Client`]: a program dials a service through the server itself, with no sidecar and no
//! local listener: `open("pg")` returns a byte stream to the private service `pg`.
//!
//! Underneath is what `culvert access` uses (an agent link with no services of its own, each
//! stream a request the server joins to the serving agent), so the server's checks (the
//! token's `access` list, tenants) apply unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use culvert_agent::{AgentConfig, AgentHandle, LinkState};
use culvert_transport::tls::Verify;
use culvert_transport::ws::ServerUrl;
use tokio::net::TcpStream;

use crate::client_stream::ClientStream;
use crate::readiness::ReadyWatch;
use crate::udp_flow::UdpFlow;
use crate::{Error, Fallback};

/// Settings of a [`Client`]; [`ClientBuilder::connect`] starts it.
#[derive(Clone)]
pub struct ClientBuilder {
    server: String,
    token: String,
    verify: Verify,
    pool: usize,
    connect_timeout: Duration,
    fallbacks: HashMap<String, Fallback>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("verify", &self.verify)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// How the server's certificate is checked (for `wss://`): the system roots (the
    /// default), a CA file, a pinned SHA-256 fingerprint, or nothing (tests only).
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    /// Tunnel connections kept open (default 2: a lost one leaves the other for new streams).
    pub fn pool(mut self, n: usize) -> Self {
        self.pool = n.clamp(1, 64);
        self
    }

    /// How long [`ClientBuilder::connect`] waits for the server (default 10 s); also the
    /// deadline of each connection attempt.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// What [`Client::open`] of `service` does while no tunnel connection is up:
    /// [`Fallback::Fail`] (the default) or [`Fallback::Direct`] to dial an address instead.
    pub fn fallback(mut self, service: impl Into<String>, fallback: Fallback) -> Self {
        self.fallbacks.insert(service.into(), fallback);
        self
    }

    /// Starts the client without waiting: it connects (and reconnects) in the background;
    /// [`Client::is_ready`] and [`Client::watch`] say when it is up.
    pub fn spawn(self) -> Result<Client, Error> {
        let url = ServerUrl::parse(&self.server)?;
        let mut config = AgentConfig::new(url, self.token, Vec::new());
        config.verify = self.verify;
        config.pool = self.pool;
        config.connect_timeout = self.connect_timeout;
        // A refused token or an untrusted certificate stops the client, so that
        // `connect` and `Client::failed` can report it instead of retrying forever.
        config.exit_on_auth_failure = true;
        let link = Arc::new(culvert_agent::Agent::spawn(config)?);
        Ok(Client {
            link,
            fallbacks: Arc::new(self.fallbacks),
            connect_timeout: self.connect_timeout,
        })
    }

    /// Starts the client and waits until a tunnel connection is up. Fails with
    /// [`Error::TokenRefused`] or [`Error::Certificate`] when retrying cannot help, and with
    /// [`Error::Unreachable`] when the server did not answer within the connect timeout.
    pub async fn connect(self) -> Result<Client, Error> {
        let timeout = self.connect_timeout;
        let client = self.spawn()?;
        client.wait_ready(timeout).await?;
        Ok(client)
    }
}

/// A connection to a Culvert server through which this program opens streams (and UDP
/// flows) to services by name. Cloning shares it; the last clone dropped closes it.
#[derive(Clone)]
pub struct Client {
    link: Arc<AgentHandle>,
    fallbacks: Arc<HashMap<String, Fallback>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the server at `server` (`wss://HOST:PORT`, or `ws://`
    /// on loopback) with `token` (a token the server's token file allows the services).
    pub fn builder(server: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            server: server.into(),
            token: token.into(),
            verify: Verify::SystemRoots,
            pool: 2,
            connect_timeout: Duration::from_secs(10),
            fallbacks: HashMap::new(),
        }
    }

    /// Opens a byte stream to `service` (`NAME` in the token's tenant, or `TENANT/NAME`).
    ///
    /// The open itself takes no round trip: a refusal by the server (token not allowed,
    /// no such service, its agent offline) arrives as the stream's first read or write
    /// failing, as an `io::Error` that converts into [`Error::Reset`]. While no tunnel
    /// connection is up, the service's [`Fallback`] decides.
    pub async fn open(&self, service: &str) -> Result<ClientStream, Error> {
        if culvert_server::names::ServiceRef::parse(service).is_none() {
            return Err(Error::InvalidService(service.to_owned()));
        }
        if self.is_ready() {
            match self.link.open(service).await {
                Ok(s) => return Ok(ClientStream::tunnel(s)),
                // The last connection went away meanwhile: the fallback decides.
                Err(culvert_agent::OpenError::NotConnected) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match self.fallbacks.get(service) {
            Some(Fallback::Direct(addr)) => {
                tracing::info!(%service, direct = %addr, state = %self.state(), "tunnel down; dialing the service directly");
                let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| Error::Timeout)??;
                Ok(ClientStream::direct(tcp))
            }
            _ => Err(Error::NotConnected),
        }
    }

    /// Opens a UDP flow to the UDP service `service`: datagrams sent on it reach the
    /// service, its replies come back. UDP has no fallback: with no tunnel up, this fails.
    pub async fn open_udp(&self, service: &str) -> Result<UdpFlow, Error> {
        if culvert_server::names::ServiceRef::parse(service).is_none() {
            return Err(Error::InvalidService(service.to_owned()));
        }
        let flow = self.link.open_flow(service).await?;
        Ok(UdpFlow::new(flow))
    }

    /// Whether a tunnel connection is up, so [`Client::open`] goes through the tunnel.
    pub fn is_ready(&self) -> bool {
        self.link.connections_up() > 0
    }

    /// Connected, connecting, or backing off before the next attempt.
    pub fn state(&self) -> LinkState {
        self.link.link_state()
    }

    /// A watch of readiness changes (the tunnel coming up or going down).
    pub fn watch(&self) -> ReadyWatch {
        ReadyWatch::new(self.link.watch_connections())
    }

    /// Waits until a tunnel connection is up, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut watch = self.watch();
        tokio::select! {
            r = tokio::time::timeout(timeout, watch.wait_ready()) => match r {
                Ok(r) => r,
                Err(_) => Err(Error::Unreachable(
                    self.link.last_error().unwrap_or_else(|| "no answer".to_owned()),
                )),
            },
            why = self.link.permanent_failure() => Err(Error::permanent(why)),
        }
    }

    /// Why the last connection attempt failed or the last connection was lost, in words.
    pub fn last_error(&self) -> Option<String> {
        self.link.last_error()
    }

    /// Graceful close: streams in flight get up to `grace` to finish, then every tunnel
    /// connection closes.
    pub async fn close(&self, grace: Duration) {
        self.link.drain(grace).await;
    }
}
