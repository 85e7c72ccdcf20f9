//! The only place Culvert's sans-IO core meets IO: WebSocket (tokio-tungstenite),
//! TLS (rustls), the per-connection driver tasks, tunnel streams, and relaying them to
//! their targets: TCP (`relay`) and UDP (`udp_target`). The relaying lives here, not in a
//! role crate, because both roles use it: the agent relays to its services' targets, the
//! server (a node's server role) to the targets its allow-list lets peers dial.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod accept_errors;
mod chunk_write;
mod driver;
mod error;
mod fd_reserve;
pub mod http_hop;
pub mod metrics;
mod progress;
mod proxy;
pub mod record_layer;
mod relay;
mod socket;
mod stream;
mod stream_io;
mod upgrade_tail;
mod woken;

pub mod tls;
pub mod tls_provider;
pub mod udp_target;
pub mod ws;
pub mod wsframe;

pub use accept_errors::AcceptErrors;
pub use driver::{drain, DatagramSink, Mux, MuxEvent, MuxStats};
pub use error::TransportError;
pub use proxy::Proxy;
pub use relay::{
    relay_streams, relay_tcp, relay_tcp_counted, relay_tcp_until, RelayCounters, RelayTotals,
};
pub use socket::{
    bind_udp, reset_on_close, send_to_now, tune_accepted, tune_listener, tune_tcp, tune_tunnel,
    UDP_SEND_DEADLINE,
};
pub use stream::{reset_code_of, ResetByPeer, TunnelStream};
