//! What an HTTP service's proxy did with its requests: answered by the backend, answered by
//! the agent itself (and why), sent again after a kept-alive backend connection closed
//! under them, and the backend connections it made. The server only sees what came back
//! through the tunnel; these say whether a 502 was the backend's or the agent's.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::StatusCode;

/// Counters of one HTTP service, shared by every tunnel stream that carries its requests.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests the backend answered (its status, whatever it was, reached the caller).
    pub answered: AtomicU64,
    /// Requests the agent refused itself: a path it could not rewrite (400).
    pub bad_request: AtomicU64,
    /// Requests the agent answered 502: the backend refused the connection, failed TLS,
    /// or closed it under the request when sending it again was not safe.
    pub bad_gateway: AtomicU64,
    /// Requests the agent answered 504: no connection or no answer head in time.
    pub gateway_timeout: AtomicU64,
    /// Requests sent once more on a new backend connection after the reused one they went
    /// out on closed before any answer (counted whatever the second try gave).
    pub retried: AtomicU64,
    /// Backend connections made (TCP, and TLS for `https://` backends).
    pub backend_connections: AtomicU64,
}

impl HttpCounters {
    /// Counts a request the agent answered itself with `status`.
    pub(crate) fn refused(&self, status: StatusCode) {
        let c = match status {
            StatusCode::BAD_REQUEST => &self.bad_request,
            StatusCode::GATEWAY_TIMEOUT => &self.gateway_timeout,
            _ => &self.bad_gateway,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests by result, as the `result` label of `culvert_agent_http_requests_total`
    /// names them.
    pub fn by_result(&self) -> [(&'static str, u64); 4] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("answered", get(&self.answered)),
            ("bad_request", get(&self.bad_request)),
            ("bad_gateway", get(&self.bad_gateway)),
            ("gateway_timeout", get(&self.gateway_timeout)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_their_status() {
        let c = HttpCounters::default();
        c.refused(StatusCode::BAD_REQUEST);
        c.refused(StatusCode::BAD_GATEWAY);
        c.refused(StatusCode::BAD_GATEWAY);
        c.refused(StatusCode::GATEWAY_TIMEOUT);
        c.answered.fetch_add(5, Ordering::Relaxed);
        assert_eq!(
            c.by_result(),
            [
                ("answered", 5),
                ("bad_request", 1),
                ("bad_gateway", 2),
                ("gateway_timeout", 1)
            ]
        );
    }
}
