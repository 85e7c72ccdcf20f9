//! Culvert as a library: open streams to private services from your own program, or embed
//! an agent, a server or a node, with the same code the `culvert` binary runs.
//!
//! # Why a facade
//!
//! Culvert is built from layers that each keep one concern: `culvert-proto` (the sans-IO
//! multiplexer, no runtime), `culvert-transport` (WebSocket, TLS and the tokio driver),
//! `culvert-server`, `culvert-agent` and `culvert-node` (the roles). Their APIs serve each
//! other and change with them. This crate is the one a program depends on: a small,
//! documented surface (builders, handles, one [`Error`] enum) over those crates, so an
//! embedding program needs one dependency, one error type and no knowledge of which
//! crate holds what. The `culvert` binary is built from the same crate. What the facade
//! does not cover stays reachable through each handle's `inner()` and [`crates`].
//!
//! # Roles
//!
//! * [`Client`]: dial a service through the server from inside your program (no sidecar,
//!   no local port): [`Client::open`] returns a byte stream, [`Client::open_udp`] a
//!   datagram flow, with readiness ([`Client::is_ready`], [`Client::watch`]) and a
//!   [`Fallback`] for when the tunnel is down.
//! * [`Agent`]: expose services through a server (what `culvert agent` does).
//! * [`Server`]: host the relay (what `culvert server` does).
//! * [`Node`]: a server role and tunnels to peers from one config (`culvert node`).
//!
//! Streams are tokio [`AsyncRead`](tokio::io::AsyncRead) +
//! [`AsyncWrite`](tokio::io::AsyncWrite): hand them to `tokio::io::copy`, a hyper client
//! connection or `tokio_postgres::Config::connect_raw`. The examples in
//! `crates/culvert/examples/` do each (`cargo run -p culvert --example dial_service`).
//!
//! # Quick start: a client
//!
//! ```no_run
//! use culvert::{Client, Verify};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn run() -> Result<(), culvert::Error> {
//! let client = Client::builder("wss://tunnel.example.net:7000", "TOKEN")
//!     .verify(Verify::Fingerprint("ab12…".into()))
//!     .connect()
//!     .await?;
//! let mut stream = client.open("echo").await?;
//! stream.write_all(b"ping").await?;
//! stream.shutdown().await?; // half-close: the answer still arrives
//! let mut answer = Vec::new();
//! stream.read_to_end(&mut answer).await?;
//! # Ok(()) }
//! ```
//!
//! # Quick start: an agent
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), culvert::Error> {
//! let agent = culvert::Agent::builder("wss://tunnel.example.net:7000", "TOKEN")
//!     .service("pg=tcp://127.0.0.1:5432?private")?
//!     .pool(2)
//!     .spawn()?;
//! agent.wait_ready(Duration::from_secs(10)).await;
//! println!("{:?}", agent.status());
//! agent.shutdown(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! # Quick start: a server
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), culvert::Error> {
//! let server = culvert::Server::builder("0.0.0.0:7000".parse().unwrap(), 30000..=31000)
//!     .tokens_file("tokens.toml".as_ref())?
//!     .self_signed()?
//!     .spawn()
//!     .await?;
//! println!("agents pin {:?}", server.fingerprint());
//! # server.shutdown(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! # Quick start: a node
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), culvert::Error> {
//! let node = culvert::NodeBuilder::from_file("node.toml".as_ref())?
//!     .spawn()
//!     .await?;
//! for t in node.status() {
//!     println!("{} {} {}", t.name, t.direction, t.state);
//! }
//! node.shutdown(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod agent_role;
mod client;
mod client_stream;
mod error;
mod node_role;
mod readiness;
mod server_role;
mod udp_flow;

pub use agent_role::{Agent, AgentBuilder, AgentHandle, AgentStatus, ServiceStatus};
pub use client::{Client, ClientBuilder};
pub use client_stream::ClientStream;
pub use error::{Error, ResetReason};
pub use node_role::{Node, NodeBuilder, NodeHandle};
pub use readiness::ReadyWatch;
pub use server_role::{Server, ServerBuilder, ServerHandle};
pub use udp_flow::UdpFlow;

pub use culvert_agent::{ConnectionStatus, LinkState, ServiceSpec};
pub use culvert_node::{Fallback, NodeFile, TunnelStatus};
pub use culvert_server::{ReloadReport, SessionInfo, TokenStore};
pub use culvert_transport::tls::{ServerTls, Verify};
pub use culvert_transport::TunnelStream;

/// The crates under the facade, for what it does not cover (their APIs follow Culvert's
/// internals and change with them).
pub mod crates {
    pub use culvert_agent as agent;
    pub use culvert_node as node;
    pub use culvert_proto as proto;
    pub use culvert_server as server;
    pub use culvert_transport as transport;
}
