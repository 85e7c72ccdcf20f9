//! Where an ingress request goes (its service, by host name or path) and whose it is (the
//! caller's token, from the header the operator names).

use hyper::header::{self, HeaderMap, HeaderName};
use hyper::Uri;

use crate::names::ServiceRef;

/// Where a request goes: the service and the path the backend sees.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Route {
    pub(super) tenant: String,
    pub(super) service: String,
    pub(super) path_and_query: String,
}

/// Routes by host name under the domain, else by `/t/{tenant}/{service}/…`.
pub(super) fn route(uri: &Uri, host: Option<&str>, domain: Option<&str>) -> Option<Route> {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    if let (Some(host), Some(domain)) = (host, domain) {
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
            .map_or(host, |(h, _)| h);
        let host = host.to_ascii_lowercase();
        let suffix = format!(".{}", domain.trim_start_matches('.').to_ascii_lowercase());
        if let Some(prefix) = host.strip_suffix(&suffix) {
            let (service, tenant) = prefix.rsplit_once('.')?;
            return valid(tenant, service).then(|| Route {
                tenant: tenant.to_owned(),
                service: service.to_owned(),
                path_and_query: format!("{}{query}", uri.path()),
            });
        }
    }
    let rest = uri.path().strip_prefix("/t/")?;
    let mut parts = rest.splitn(3, '/');
    let (tenant, service) = (parts.next()?, parts.next()?);
    let path = format!("/{}", parts.next().unwrap_or(""));
    valid(tenant, service).then(|| Route {
        tenant: tenant.to_owned(),
        service: service.to_owned(),
        path_and_query: format!("{path}{query}"),
    })
}

fn valid(tenant: &str, service: &str) -> bool {
    ServiceRef::parse(&format!("{tenant}/{service}")).is_some()
}

/// The caller's token from the configured header.
pub(super) fn caller_token<'a>(h: &'a HeaderMap, name: Option<&HeaderName>) -> Option<&'a str> {
    match name {
        Some(n) => h.get(n)?.to_str().ok().map(str::trim),
        None => {
            let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn r(uri: &str, host: Option<&str>, domain: Option<&str>) -> Option<Route> {
        route(&uri.parse().unwrap(), host, domain)
    }

    #[test]
    fn routes_by_path_and_by_host() {
        let x = r("/t/acme/erp/api/orders?x=1", None, None).unwrap();
        assert_eq!(
            (
                x.tenant.as_str(),
                x.service.as_str(),
                x.path_and_query.as_str()
            ),
            ("acme", "erp", "/api/orders?x=1")
        );
        assert_eq!(r("/t/acme/erp", None, None).unwrap().path_and_query, "/");
        assert!(r("/x/acme/erp", None, None).is_none());
        assert!(r("/t/acme", None, None).is_none());
        assert!(r("/t/ac%20me/erp/", None, None).is_none());
        let x = r(
            "/api?y",
            Some("erp.acme.example.com:8443"),
            Some("example.com"),
        )
        .unwrap();
        assert_eq!(
            (
                x.tenant.as_str(),
                x.service.as_str(),
                x.path_and_query.as_str()
            ),
            ("acme", "erp", "/api?y")
        );
        // Another host falls back to the path route.
        assert!(r("/api", Some("other.org"), Some("example.com")).is_none());
    }

    #[test]
    fn tokens_from_bearer_or_a_named_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(caller_token(&h, None), Some("abc"));
        let n = HeaderName::from_static("x-culvert-token");
        assert_eq!(caller_token(&h, Some(&n)), None);
        h.insert(n.clone(), HeaderValue::from_static("def"));
        assert_eq!(caller_token(&h, Some(&n)), Some("def"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(caller_token(&h, None), None);
    }
}
