//! One request through the ingress: the caller's token checked, the request rewritten for
//! the agent (HTTP/1.1 on the tunnel stream) and sent over a kept or new tunnel stream, the
//! answer (or the ingress's own short JSON) returned.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::route::{caller_token, route, Route};
use super::upstream::Upstreams;
use super::HttpIngressConfig;
use crate::http_metrics::Counted;
use crate::server::Inner;
use crate::Role;
use culvert_transport::http_hop::{connection_has, strip_hop_by_hop};

/// What answers the caller: the agent's response, or the ingress's own short JSON.
type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Seconds a `503` tells the caller to wait before retrying.
const RETRY_AFTER_SECS: &str = "5";

/// Longest wait of a request whose token this server does not know, for the cluster
/// registry's re-read (`Inner::check_token`); a lone server does not wait.
const UNKNOWN_TOKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An answer of the ingress itself: a small JSON body.
fn reply(status: StatusCode, error: &str, service: Option<&str>) -> Response<Body> {
    let body = match service {
        Some(s) => format!("{{\"error\":{error:?},\"service\":{s:?}}}\n"),
        None => format!("{{\"error\":{error:?}}}\n"),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        StatusCode::UNAUTHORIZED => {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    r
}

/// `503` for a service with no agent (or none reachable now), counted under its name.
fn unavailable(name: String) -> (Response<Body>, Option<String>) {
    let r = reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "service unavailable",
        Some(&name),
    );
    (r, Some(name))
}

/// Serves one request: routes it, checks the caller's token, and forwards it over a
/// tunnel stream to the agent. Returns the answer and the route it is counted under.
pub(super) async fn handle(
    inner: &Arc<Inner>,
    config: &HttpIngressConfig,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    upstreams: &Upstreams,
) -> (Response<Body>, Option<String>) {
    // HTTP/2 names the host in the request's authority, HTTP/1.1 in its Host header.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(str::to_owned);
    let Some(route) = route(req.uri(), host.as_deref(), config.domain.as_deref()) else {
        return (
            reply(
                StatusCode::NOT_FOUND,
                "no such route: use /t/TENANT/SERVICE/…",
                None,
            ),
            None,
        );
    };
    let name = format!("{}/{}", route.tenant, route.service);

    // The caller: a live token of role http that may reach this service. Unknown, missing
    // and expired tokens get one answer; failures count towards the address's lockout.
    let now = std::time::Instant::now();
    if let Some(left) = inner.admission.locked(peer.ip(), uuid::Uuid::nil(), now) {
        let mut r = reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed attempts",
            None,
        );
        if let Ok(v) = HeaderValue::from_str(&(left.as_secs() + 1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return (r, None);
    }
    let entry = match caller_token(req.headers(), config.token_header.as_ref()) {
        // In a cluster, a token made a moment ago is looked up again after a re-read.
        Some(t) => inner
            .check_token(t, tokio::time::Instant::now() + UNKNOWN_TOKEN_WAIT)
            .await
            .filter(|e| !e.expired(crate::tokens::unix_now())),
        None => None,
    };
    let Some(entry) = entry else {
        inner.admission.record_failure(peer.ip(), None, now);
        inner
            .counters
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (reply(StatusCode::UNAUTHORIZED, "unauthorized", None), None);
    };
    if !entry.has_role(Role::Http) || !entry.may_access(&route.tenant, &route.service) {
        tracing::info!(token = %entry.name, service = %name, "http caller not allowed this service");
        return (reply(StatusCode::FORBIDDEN, "forbidden", Some(&name)), None);
    }

    // Fail closed: no agent, no request.
    let Some((owner, svc)) = inner.find_service(&route.tenant, &route.service) else {
        return unavailable(name);
    };

    // An HTTP/1.1 caller's kept stream is waited for (its previous answer may be ending
    // now); an HTTP/2 caller's concurrent requests each take an idle stream or a new one.
    // Read before `prepare`, which makes every request HTTP/1.1 for the tunnel stream.
    let sequential = req.version() != Version::HTTP_2;
    // What the backend sees: the path under the service, no caller token, who asked.
    let caller_upgrade = prepare(&mut req, &route, config, host.as_deref(), peer, tls);
    let mut sender = match upstreams.take(&name, sequential).await {
        Some(s) => s,
        None => {
            let stream = match owner
                .open_connection(&svc, format!("http:{}@{peer}", entry.name))
                .await
            {
                Ok(s) => s,
                Err(reason) => {
                    tracing::debug!(%reason, service = %name, "no stream to the agent");
                    return unavailable(name);
                }
            };
            svc.connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok((sender, conn)) => {
                    tokio::spawn(async move {
                        if let Err(e) = conn.with_upgrades().await {
                            tracing::debug!(error = %e, "tunnel stream ended");
                        }
                    });
                    sender
                }
                Err(e) => {
                    tracing::debug!(error = %e, "http over the tunnel stream failed");
                    return (
                        reply(StatusCode::BAD_GATEWAY, "bad gateway", Some(&name)),
                        Some(name),
                    );
                }
            }
        }
    };
    let metrics = inner.http_metrics.service(&name);
    let mut resp = match sender
        .send_request(req.map(|b| Counted::up(b, metrics.clone())))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            // The stream is let go of with its sender.
            tracing::debug!(error = %e, service = %name, "no answer through the tunnel");
            return (
                reply(StatusCode::BAD_GATEWAY, "bad gateway", Some(&name)),
                Some(name),
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The stream now carries the upgraded protocol: it serves no further requests.
        drop(sender);
        if let Some(caller) = caller_upgrade {
            let agent_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let Ok((a, b)) = tokio::try_join!(caller, agent_side) {
                    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    } else {
        upstreams.put(name.clone(), sender);
        strip_hop_by_hop(resp.headers_mut());
    }
    (resp.map(|b| Counted::down(b, metrics).boxed()), Some(name))
}

/// Rewrites the caller's request for the agent; returns the caller's side of an upgrade.
fn prepare(
    req: &mut Request<Incoming>,
    route: &Route,
    config: &HttpIngressConfig,
    host: Option<&str>,
    peer: SocketAddr,
    tls: bool,
) -> Option<hyper::upgrade::OnUpgrade> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| connection_has(req.headers(), "upgrade"));
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));
    if let Ok(uri) = route.path_and_query.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    // The tunnel stream carries HTTP/1.1 whatever the caller spoke; an HTTP/2 request's
    // authority becomes its Host, and its cookie crumbs one Cookie header.
    let from_h2 = req.version() == Version::HTTP_2;
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    if from_h2 {
        join_cookies(h);
    }
    if let Some(v) = host.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.entry(header::HOST).or_insert(v);
    }
    match &config.token_header {
        Some(n) => {
            h.remove(n);
        }
        None => {
            h.remove(header::AUTHORIZATION);
        }
    }
    strip_hop_by_hop(h);
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
    // Set from what the server saw, not appended to what the caller claims.
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        h.insert("x-forwarded-for", v);
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host.and_then(|v| HeaderValue::from_str(v).ok()) {
        Some(v) => {
            h.insert("x-forwarded-host", v);
        }
        None => {
            h.remove("x-forwarded-host");
        }
    }
    on_upgrade
}

/// HTTP/2 lets a caller split its cookies over several `cookie` fields (browsers do, for
/// header compression); HTTP/1.1 allows one Cookie header, so they are joined with `; `
/// as RFC 9113 §8.2.3 asks of a gateway to HTTP/1.1.
fn join_cookies(h: &mut HeaderMap) {
    let crumbs: Vec<&[u8]> = h
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if crumbs.len() < 2 {
        return;
    }
    if let Ok(v) = HeaderValue::from_bytes(&crumbs.join(&b"; "[..])) {
        h.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_crumbs_become_one_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, [HeaderValue::from_static("a=1; b=2; c=3")]);
    }
}
