//! Why the agent could not open a stream or a UDP flow towards its server, as a type a
//! caller can match on (the access forwards fall back on one, the library reports it).

use culvert_transport::TransportError;

/// Why [`AgentHandle::open`](crate::AgentHandle::open) (or `open_flow`) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No pooled connection is up and usable (all down, connecting or suspect).
    #[error("no live tunnel connection (all are down or suspect)")]
    NotConnected,
    /// The peer's stream limit stayed reached past the connect timeout.
    #[error("timed out opening a stream (peer's stream limit reached)")]
    Timeout,
    /// The connection failed while opening (it closed, or the target was refused locally).
    #[error(transparent)]
    Transport(#[from] TransportError),
}
