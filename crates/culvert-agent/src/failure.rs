//! Why a connection attempt failed, and whether trying again can help: a refused token, a
//! certificate the agent does not trust or a port outside the server's range stays wrong
//! until someone changes the configuration, so it is said once, with the fix, and retried
//! only at the longest backoff.

use std::time::Duration;

use culvert_transport::ws::ServerUrl;
use culvert_transport::TransportError;

/// What retrying a failed attempt can achieve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A network or server hiccup: retry with the usual backoff.
    Transient,
    /// The server asked to wait this long (a lockout after failed attempts).
    RetryIn(Duration),
    /// Wrong until the configuration changes.
    Permanent,
}

/// A failed connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened, and for a permanent failure what to change.
    pub message: String,
    /// Whether retrying can help.
    pub kind: FailureKind,
}

impl Failure {
    /// A failure that retrying may cure.
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: FailureKind::Transient,
        }
    }

    fn permanent(message: String) -> Failure {
        Failure {
            message,
            kind: FailureKind::Permanent,
        }
    }

    /// Classifies an error of dialing `url` (TCP, TLS, WebSocket upgrade).
    pub fn dial(url: &ServerUrl, e: &TransportError) -> Failure {
        let text = e.to_string();
        match e {
            TransportError::Tls(s) if s.contains("does not match the pinned") => {
                Failure::permanent(format!(
                    "{text}: the server presents another certificate than --fingerprint names; \
                     pin the fingerprint the server logs at start (or use --ca)"
                ))
            }
            TransportError::Tls(s) if s.contains("invalid peer certificate") => {
                Failure::permanent(format!(
                    "{text}: the server's certificate is not trusted; use --fingerprint or --ca \
                     (a self-signed server logs its fingerprint at start)"
                ))
            }
            TransportError::Tls(s)
                if s.contains("InvalidContentType") || s.contains("corrupt message") =>
            {
                Failure::permanent(format!(
                    "{text}: wss:// used against a server without TLS; use ws:// (loopback \
                     test servers only) or give the server a certificate"
                ))
            }
            // Retrying with the same credentials cannot help.
            TransportError::Proxy(s) if s.contains("proxy authentication") => {
                Failure::permanent(text)
            }
            TransportError::WebSocket(_) if !url.tls && looks_like_tls_answer(&text) => {
                Failure::permanent(format!(
                    "{text}: ws:// used against a TLS server; use wss:// with --fingerprint or --ca"
                ))
            }
            _ => Failure::transient(text),
        }
    }

    /// Classifies the server's AuthFail reason.
    pub fn auth(reason: &str) -> Failure {
        if reason.starts_with("unsupported Culvert protocol version") {
            return Failure::permanent(format!("server refused this agent: {reason}"));
        }
        if let Some(secs) = retry_in(reason) {
            if !reason.starts_with("authentication failed") {
                return Failure {
                    message: format!("server refused the token: {reason}"),
                    kind: FailureKind::RetryIn(Duration::from_secs(secs)),
                };
            }
        }
        // The lockout a refusal may add ("retry in N s") is left out: the agent waits the
        // longest backoff anyway, and one refused token reads the same each time.
        let reason = reason.split(';').next().unwrap_or(reason);
        Failure::permanent(format!(
            "server refused the token: {reason}; the token is wrong, revoked or expired: \
             check --token-file (or CULVERT_TOKEN) against the server's token file"
        ))
    }

    /// The server speaks a Culvert protocol version this agent cannot (an older server,
    /// whose stream opens it would misread): upgrading one side cures it, retrying does not.
    pub fn version(server: Option<u8>) -> Failure {
        let v = server.map_or("1".to_owned(), |v| v.to_string());
        Failure::permanent(format!(
            "the server speaks Culvert protocol version {v}, this agent needs {}: upgrade the server",
            culvert_proto::control::MIN_CULVERT_VERSION
        ))
    }

    /// Classifies the server's RegisterFail reason for `service`.
    pub fn register(service: &str, reason: &str) -> Failure {
        let text = format!("server refused service {service:?}: {reason}");
        // A cluster's registry says "outside the server's port range or the token's
        // allowed ports".
        if reason.contains("outside the server's range")
            || reason.contains("outside the server's port range")
        {
            Failure::permanent(format!(
                "{text}; expose it without @PORT (any port) or with a port in that range"
            ))
        } else if reason.contains("not allowed for this token")
            || reason.contains("may not register")
        {
            Failure::permanent(format!(
                "{text}; the token's `services`/`ports` in the server's token file must allow it"
            ))
        } else {
            Failure::transient(text)
        }
    }
}

/// `N` of "retry in N s".
fn retry_in(reason: &str) -> Option<u64> {
    let rest = &reason[reason.find("retry in ")? + "retry in ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Whether an upgrade error reads as a TLS server's answer to plain HTTP (an alert record,
/// not an HTTP status line).
fn looks_like_tls_answer(text: &str) -> bool {
    text.contains("httparse") || text.contains("HTTP version") || text.contains("Invalid HTTP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_refusals() {
        assert_eq!(
            Failure::auth("authentication failed").kind,
            FailureKind::Permanent
        );
        assert_eq!(
            Failure::auth("authentication failed; too many failed attempts, retry in 4 s").kind,
            FailureKind::Permanent
        );
        assert_eq!(
            Failure::auth("too many failed attempts, retry in 7 s").kind,
            FailureKind::RetryIn(Duration::from_secs(7))
        );
        let r = Failure::register("web", "port 80 is outside the server's range 30000-31000");
        assert_eq!(r.kind, FailureKind::Permanent);
        assert!(r.message.contains("without @PORT"));
        assert_eq!(
            Failure::register("web", "port 30001 is already in use").kind,
            FailureKind::Transient
        );
        // A cluster's registry: a port it will never lease is permanent; the database
        // being away passes.
        assert_eq!(
            Failure::register(
                "web",
                "cluster registry: tcp port 80 is outside the server's port range or the token's allowed ports"
            )
            .kind,
            FailureKind::Permanent
        );
        assert_eq!(
            Failure::register("web", "cluster registry: lease failed: connection refused").kind,
            FailureKind::Transient
        );
        assert_eq!(
            Failure::register(
                "web",
                "cluster registry: tcp port 30001 is leased to acme/pg"
            )
            .kind,
            FailureKind::Transient
        );
        let url = ServerUrl::parse("wss://127.0.0.1:1").unwrap();
        let e = TransportError::Tls("invalid peer certificate: UnknownIssuer".into());
        let f = Failure::dial(&url, &e);
        assert_eq!(f.kind, FailureKind::Permanent);
        assert!(
            f.message.contains("use --fingerprint or --ca"),
            "{}",
            f.message
        );
        let e = TransportError::Tls("tls handshake eof".into());
        assert_eq!(Failure::dial(&url, &e).kind, FailureKind::Transient);
    }
}
