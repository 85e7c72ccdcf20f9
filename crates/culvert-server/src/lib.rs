//! Culvert's server: accepts agents on `/tunnel/v1`, checks their tokens, assigns public
//! ports from a range, and relays public TCP connections to agents over multiplexed streams.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allow;
mod cluster;
mod config;
mod http_callers;
mod http_ingress;
mod http_metrics;
mod ids;
mod limits;
mod metrics;
pub mod names;
mod networks;
mod peer_streams;
mod proxy_header;
mod public;
mod quota;
mod registry;
mod reload;
pub mod roles;
mod server;
mod session;
pub mod tokens;
pub mod udp;

pub use allow::{AllowError, AllowList, AllowRule};
pub use cluster::{ClusterConfig, JoinError};
pub use config::{PortRange, ServerConfig};
pub use http_ingress::{
    HttpIngressConfig, DEFAULT_HTTP_MAX_CONNECTIONS, DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
};
pub use networks::parse_network;
pub use quota::TenantLimits;
pub use registry::Protocol;
pub use reload::ReloadReport;
pub use roles::Role;
pub use server::{Server, ServerHandle, SessionInfo};
pub use tokens::{TokenEntry, TokenStore};
