//! The library's one error type: every failure an embedding program can meet, with the
//! server's refusals and the peer's stream resets as variants it can match on.

use std::io;

use culvert_proto::reset_code;

/// Why a Culvert operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is malformed (a service spec, a listen address, a server URL).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `open` was given something that is not a service name (`NAME` or `TENANT/NAME`).
    #[error("{0:?} is not a service name (NAME or TENANT/NAME, 1 to 64 of A-Z a-z 0-9 . _ -)")]
    InvalidService(String),
    /// The server refused the token (wrong, revoked or expired); retrying cannot help.
    #[error("{0}")]
    TokenRefused(String),
    /// The server refused to register a service (not allowed for the token, port outside
    /// its range).
    #[error("{0}")]
    ServiceRefused(String),
    /// The server's certificate is not trusted, or `ws://`/`wss://` does not match it.
    #[error("{0}")]
    Certificate(String),
    /// The server could not be reached within the timeout; the last failure, in words.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// No tunnel connection is up right now, and the fallback is [`Fallback::Fail`](crate::Fallback::Fail).
    #[error("no live tunnel connection")]
    NotConnected,
    /// The server's stream limit stayed reached past the timeout.
    #[error("timed out opening a stream")]
    Timeout,
    /// The peer reset the stream: a refusal (not allowed, no such service, its agent
    /// offline) or a failure on the far side.
    #[error("stream reset by peer: {0}")]
    Reset(ResetReason),
    /// The tunnel, or the handle, has been shut down.
    #[error("closed")]
    Closed,
    /// A socket error.
    #[error("io: {0}")]
    Io(io::Error),
    /// TLS set-up, WebSocket or multiplexer failure.
    #[error(transparent)]
    Transport(#[from] culvert_transport::TransportError),
    /// A node could not start (its config, its listeners, its server role).
    #[error(transparent)]
    Node(#[from] culvert_node::NodeError),
}

/// Why the peer reset a stream: the reset codes of the protocol (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetReason {
    /// The far side abandoned the stream.
    Cancelled,
    /// The receiver would not take the stream (going away, or over a limit).
    Refused,
    /// The service's target could not be reached by its agent.
    ConnectFailed,
    /// The stream's transport failed on the far side.
    Internal,
    /// This token may not reach the service.
    NotAllowed,
    /// No service of that name is registered.
    UnknownService,
    /// The service exists but its agent is offline.
    Unavailable,
    /// A code this version does not know.
    Other(u64),
}

impl ResetReason {
    /// The reason carried by reset `code`.
    pub fn from_code(code: u64) -> ResetReason {
        match code {
            reset_code::CANCEL => ResetReason::Cancelled,
            reset_code::REFUSED => ResetReason::Refused,
            reset_code::CONNECT_FAILED => ResetReason::ConnectFailed,
            reset_code::INTERNAL => ResetReason::Internal,
            reset_code::NOT_ALLOWED => ResetReason::NotAllowed,
            reset_code::UNKNOWN_TARGET => ResetReason::UnknownService,
            reset_code::UNAVAILABLE => ResetReason::Unavailable,
            other => ResetReason::Other(other),
        }
    }

    /// The wire code of this reason.
    pub fn code(self) -> u64 {
        match self {
            ResetReason::Cancelled => reset_code::CANCEL,
            ResetReason::Refused => reset_code::REFUSED,
            ResetReason::ConnectFailed => reset_code::CONNECT_FAILED,
            ResetReason::Internal => reset_code::INTERNAL,
            ResetReason::NotAllowed => reset_code::NOT_ALLOWED,
            ResetReason::UnknownService => reset_code::UNKNOWN_TARGET,
            ResetReason::Unavailable => reset_code::UNAVAILABLE,
            ResetReason::Other(c) => c,
        }
    }
}

impl std::fmt::Display for ResetReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code();
        write!(f, "{} (code {code})", reset_code::describe(code))
    }
}

impl From<io::Error> for Error {
    /// A stream's `io::Error` becomes [`Error::Reset`] when the peer reset the stream.
    fn from(e: io::Error) -> Error {
        match culvert_transport::reset_code_of(&e) {
            Some(code) => Error::Reset(ResetReason::from_code(code)),
            None => Error::Io(e),
        }
    }
}

impl From<culvert_agent::OpenError> for Error {
    fn from(e: culvert_agent::OpenError) -> Error {
        match e {
            culvert_agent::OpenError::NotConnected => Error::NotConnected,
            culvert_agent::OpenError::Timeout => Error::Timeout,
            culvert_agent::OpenError::Transport(t) => Error::Transport(t),
            // OpenError is non-exhaustive: a future kind keeps its words.
            other => Error::Unreachable(other.to_string()),
        }
    }
}

impl Error {
    /// Classifies the message of an agent's permanent failure (see
    /// `culvert_agent::Failure`): a refused token, a refused service, else the certificate.
    pub(crate) fn permanent(message: String) -> Error {
        if message.starts_with("server refused the token") {
            Error::TokenRefused(message)
        } else if message.starts_with("server refused service") {
            Error::ServiceRefused(message)
        } else {
            Error::Certificate(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_codes_round_trip() {
        for code in 0..10 {
            assert_eq!(ResetReason::from_code(code).code(), code);
        }
        let e = io::Error::new(
            io::ErrorKind::ConnectionReset,
            culvert_transport::ResetByPeer(reset_code::NOT_ALLOWED),
        );
        assert!(matches!(
            Error::from(e),
            Error::Reset(ResetReason::NotAllowed)
        ));
    }
}
