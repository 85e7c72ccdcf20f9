//! Errors of node and access set-up, each naming what is wrong and where.

/// Why a node or an access session could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config file or a flag is wrong.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The server refused (bad token, service not allowed, unknown service…).
    #[error("{0}")]
    Refused(String),
    /// The server could not be reached in time.
    #[error("{0}")]
    Unreachable(String),
    /// Transport set-up (TLS configuration) failed.
    #[error("{0}")]
    Transport(#[from] culvert_transport::TransportError),
    /// The server role failed to start.
    #[error("server: {0}")]
    Server(String),
}
