//! Hop-by-hop HTTP headers, which describe one connection and must not be forwarded by a
//! proxy (RFC 9110 §7.6.1), and which requests a proxy may send again: shared by the
//! server's HTTP ingress and the agent's reverse proxy, the two hops of an HTTP service.

use http::header::{self, HeaderMap};
use http::{Method, Request};

/// Headers that describe one hop, never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the `Connection` header lists `token` (case-insensitive).
pub fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Drops the hop-by-hop headers and those the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
        })
        .filter(|t| !t.is_empty())
        .collect();
    for n in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        h.remove(n);
    }
}

/// The head of a request that may be sent once more, on a new connection, when the reused
/// connection it went out on closes before any answer: a keep-alive connection the backend
/// timed out at the moment the request was written looks exactly like that, and a proxy
/// that answered 502 there would fail requests at random. Only a request without a body
/// (`body_empty`) whose method RFC 9110 §9.2.2 calls idempotent qualifies: the backend
/// may have acted on it once already, and a body streamed from the caller is gone.
pub fn replayable_head<B>(req: &Request<B>, body_empty: bool) -> Option<Request<()>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !body_empty {
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_bodyless_idempotent_requests_are_replayable() {
        let req = |m: Method| {
            let mut r = Request::new(());
            *r.method_mut() = m;
            *r.uri_mut() = "/a?b=c".parse().unwrap();
            r.headers_mut()
                .insert("x-kept", HeaderValue::from_static("1"));
            r
        };
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            let head = replayable_head(&req(m.clone()), true).expect("replayable");
            assert_eq!(head.method(), m);
            assert_eq!(head.uri(), "/a?b=c");
            assert_eq!(head.headers()["x-kept"], "1");
            assert!(replayable_head(&req(m), false).is_none());
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(replayable_head(&req(m), true).is_none());
        }
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(connection_has(&h, "x-secret-hop"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }
}
