//! Errors of the transport layer.

/// Why a tunnel connection could not be set up or went down.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket-level failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration or handshake failure.
    #[error("tls: {0}")]
    Tls(String),
    /// [`crate::tls::Verify::SystemRoots`] with no root certificates on the system (its store
    /// is empty, or `SSL_CERT_FILE` / `SSL_CERT_DIR` name none). Its own kind, because what
    /// to use instead depends on what is being verified: the caller says it.
    #[error("tls: no system root certificates found")]
    NoSystemRoots,
    /// WebSocket handshake or framing failure.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The HTTP proxy could not be used (its URL, or its answer to CONNECT); the message
    /// never holds the proxy's password.
    #[error("proxy: {0}")]
    Proxy(String),
    /// The server URL is not usable.
    #[error("bad server url: {0}")]
    Url(String),
    /// The multiplexed connection is gone.
    #[error("tunnel connection closed: {0}")]
    Closed(String),
    /// A stream could not be opened.
    #[error("stream: {0}")]
    Stream(#[from] culvert_proto::StreamError),
}
