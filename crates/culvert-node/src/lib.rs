//! Culvert's node-to-node tunnels and on-demand access sessions. Both are local listeners
//! whose connections become streams over the same multiplexed transport the agent uses;
//! there is no second data path.
//!
//! * [`Forward`]: a local TCP listener; each connection is a stream to a target the peer
//!   resolves (a service name for access, `HOST:PORT` for a node's forward tunnel), with
//!   an optional time-to-live and a fallback for when the tunnel is down.
//! * [`Access`]: `culvert access`, one or more forwards to private services, with a TTL.
//! * [`Node`]: `culvert node`, a server role and agent roles from one config file.
//!
//! Dependencies: this crate depends on `culvert-server` and `culvert-agent` as well as on
//! `culvert-transport`, and that is intended. A node is both roles at once: it serves
//! tunnels to its peers with the server's own code (tokens, sessions, the dial allow-list)
//! and dials its peers with the agent's own code (pool, reconnects, registration), so that
//! there is one implementation of each role, not a node-specific copy of either. Only the
//! access and forward listeners above are the node's own; they open streams over the
//! transport's `Mux` like everything else.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod duration;
mod entry;
mod error;
mod forward;
mod metrics;
mod node;
mod node_config;
mod udp_forward;

pub use access::{Access, AccessConfig, AccessSpec};
pub use duration::parse_duration;
pub use error::NodeError;
pub use forward::{Fallback, Forward, ForwardSpec, ForwardStatus};
pub use node::{Node, TunnelStatus};
pub use node_config::{Direction, NodeFile, NodeSection, TunnelFile};
pub use udp_forward::UdpForward;
