//! Why a dial was refused or an allow-list entry could not be parsed.

use std::net::SocketAddr;

/// Why a dial was refused or an entry could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    /// An allow-list entry is malformed (a configuration error).
    #[error("invalid allow-list entry {entry:?}: {reason}")]
    BadRule {
        /// The entry as written (trimmed).
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A requested target is not `HOST:PORT`, `[IPv6]:PORT` or `IP:PORT`; the text names the
    /// target and the problem.
    #[error("bad target {0}")]
    BadTarget(String),
    /// The target's name could not be resolved in time.
    #[error("could not resolve target {target}: {reason}")]
    Resolve {
        /// The target as requested (trimmed).
        target: String,
        /// The resolver's error, or the timeout.
        reason: String,
    },
    /// The target resolved, but to no address this node's allow-list permits.
    #[error(
        "target {target}{} is not in this node's allow-list",
        resolved_suffix(.resolved)
    )]
    NotAllowed {
        /// The target as requested (trimmed).
        target: String,
        /// Every address it resolved to (empty when the allow-list is empty and nothing was
        /// resolved).
        resolved: Vec<SocketAddr>,
    },
}

/// " (resolved to a, b)" for a non-empty list of addresses, "" otherwise.
fn resolved_suffix(resolved: &[SocketAddr]) -> String {
    if resolved.is_empty() {
        return String::new();
    }
    let list: Vec<String> = resolved.iter().map(SocketAddr::to_string).collect();
    format!(" (resolved to {})", list.join(", "))
}
