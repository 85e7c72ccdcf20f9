//! An HTTP service's backend, as the agent knows it: where its requests go
//! (`http://` or `https://` URL) and the headers the agent adds to each one.
//!
//! The point of an HTTP service is that credentials stay inside the private network: the
//! agent reads header values from its environment or from files (at start and again on
//! reload), adds them to every request it forwards, and shows them nowhere: not in logs,
//! `Debug` output, metrics, status, or anything sent to the server.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};

/// Where one injected header's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `env:NAME`: the agent's environment variable `NAME`.
    Env(String),
    /// `file:PATH`: the contents of a file, without a trailing newline.
    File(PathBuf),
}

impl std::str::FromStr for SecretSource {
    type Err = String;

    fn from_str(s: &str) -> Result<SecretSource, String> {
        if let Some(v) = s.strip_prefix("env:") {
            if v.is_empty() {
                return Err("env: needs a variable name".into());
            }
            Ok(SecretSource::Env(v.to_owned()))
        } else if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() {
                return Err("file: needs a path".into());
            }
            Ok(SecretSource::File(PathBuf::from(p)))
        } else {
            // Never echo the value: it may be a secret written inline by mistake.
            Err("header values must be env:VARIABLE or file:PATH (inline values would end up in config files and logs)".into())
        }
    }
}

impl SecretSource {
    /// Reads the value now. The error names the source, never a value.
    fn read(&self) -> Result<String, String> {
        match self {
            SecretSource::Env(v) => {
                std::env::var(v).map_err(|_| format!("environment variable {v} is not set"))
            }
            SecretSource::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
        }
    }
}

/// [`HttpBackend::response_timeout`] unless the service sets one: nginx's default too.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers to add, with the current values (replaced whole on reload).
type Resolved = Arc<Vec<(HeaderName, HeaderValue)>>;

/// The backend of an HTTP service and the headers injected into its requests.
pub struct HttpBackend {
    /// `https://` backends are spoken to over TLS.
    pub tls: bool,
    /// Host to dial (no brackets).
    pub host: String,
    /// Port to dial.
    pub port: u16,
    /// `host[:port]` as the URL writes it: the `Host` header the backend gets.
    pub authority: String,
    /// Path prefix of the URL (`""` or `/api`), put in front of every request's path.
    pub base_path: String,
    /// Keep the caller's `Host` instead of the backend's.
    pub keep_host: bool,
    /// CA file for an `https://` backend (system roots when absent).
    pub ca: Option<PathBuf>,
    /// What to inject, by header.
    pub inject: Vec<(HeaderName, SecretSource)>,
    /// How long the backend may take to begin its answer (its status and headers) before
    /// the caller gets `504`; the body then streams for as long as it lasts. Reports and
    /// exports that think before answering need more than the default.
    pub response_timeout: Duration,
    resolved: RwLock<Resolved>,
    /// The TLS client configuration of an `https://` backend, built once (its CA file or
    /// the system roots read then), not per connection.
    client_tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl HttpBackend {
    /// Parses `http://HOST[:PORT][/PATH]` or `https://…` (ports 80 and 443 by default).
    pub fn parse(url: &str) -> Result<HttpBackend, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("{url:?}: expected http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: credentials in the URL are not supported; use inject_headers"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed ["))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
                None if after.is_empty() => (h, default_port),
                None => return Err(format!("{url:?}: bad port")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: missing host"));
        }
        if path.contains(['?', '#']) {
            return Err(format!("{url:?}: no query or fragment in a service URL"));
        }
        Ok(HttpBackend {
            tls,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            base_path: path.to_owned(),
            keep_host: false,
            ca: None,
            inject: Vec::new(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            resolved: RwLock::new(Arc::default()),
            client_tls: OnceLock::new(),
        })
    }

    /// Adds headers to inject: `(header name, "env:VAR" | "file:PATH")`.
    pub fn with_inject<'a>(
        mut self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<HttpBackend, String> {
        for (name, source) in headers {
            let h = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a header name"))?;
            let src = source.parse().map_err(|e| format!("header {name}: {e}"))?;
            self.inject.push((h, src));
        }
        Ok(self)
    }

    /// Reads every injected value again (at start, and on SIGHUP). On any error the
    /// previous values stay in force and the error names the header and source.
    pub fn reload(&self) -> Result<(), String> {
        let mut values = Vec::with_capacity(self.inject.len());
        for (name, src) in &self.inject {
            let v = src.read().map_err(|e| format!("header {name}: {e}"))?;
            let v = HeaderValue::from_str(&v)
                .map_err(|_| format!("header {name}: the value is not a valid header value"))?;
            let mut v = v;
            v.set_sensitive(true);
            values.push((name.clone(), v));
        }
        *self.resolved.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(values);
        Ok(())
    }

    /// The headers to add to the next request.
    pub fn injected(&self) -> Resolved {
        self.resolved
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How an `https://` backend is verified: only certificates from the `ca` file's CAs,
    /// else the system's roots. Built on first use and kept; call it at start so that an
    /// unreadable or empty CA file is an error then, not a 502 on the first request.
    pub fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(c) = self.client_tls.get() {
            return Ok(c.clone());
        }
        let verify = match &self.ca {
            Some(ca) => culvert_transport::tls::Verify::CaFile(ca.clone()),
            None => culvert_transport::tls::Verify::SystemRoots,
        };
        let config = culvert_transport::tls::client_config(&verify).map_err(|e| match e {
            culvert_transport::TransportError::NoSystemRoots => "no system root certificates to \
                verify the backend with; name the CA that issued its certificate with \
                `ca = \"FILE\"` in the service's [[agent.service]] table"
                .to_owned(),
            e => e.to_string(),
        })?;
        Ok(self.client_tls.get_or_init(|| config).clone())
    }

    /// The URL, for logs (holds no secret: credentials in URLs are refused).
    pub fn url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.authority,
            self.base_path
        )
    }
}

/// Names the URL and the injected header names, never their values.
impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("url", &self.url())
            .field("keep_host", &self.keep_host)
            .field("response_timeout", &self.response_timeout)
            .field(
                "inject",
                &self
                    .inject
                    .iter()
                    .map(|(h, _)| h.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Two backends are the same service when URL, options and sources match (values aside).
impl PartialEq for HttpBackend {
    fn eq(&self, o: &HttpBackend) -> bool {
        self.url() == o.url()
            && self.keep_host == o.keep_host
            && self.response_timeout == o.response_timeout
            && self.ca == o.ca
            && self.inject == o.inject
    }
}

impl Eq for HttpBackend {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let b = HttpBackend::parse("http://10.0.0.5:8080").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.base_path.as_str()),
            (false, "10.0.0.5", 8080, "")
        );
        let b = HttpBackend::parse("https://erp.internal/api/").unwrap();
        assert_eq!(
            (b.tls, b.port, b.authority.as_str(), b.base_path.as_str()),
            (true, 443, "erp.internal", "/api")
        );
        let b = HttpBackend::parse("http://[::1]:81/x").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 81));
        for bad in [
            "ftp://a",
            "http://",
            "http://a:b",
            "http://u:p@a",
            "http://a/x?y",
        ] {
            assert!(HttpBackend::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn injects_from_env_and_files_and_never_shows_values() {
        let dir = std::env::temp_dir().join(format!("culvert-inject-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, "file-secret\n").unwrap();
        std::env::set_var("CULVERT_TEST_INJECT", "Bearer env-secret");
        let src = format!("file:{}", f.display());
        let b = HttpBackend::parse("http://a:1")
            .unwrap()
            .with_inject([
                ("Authorization", "env:CULVERT_TEST_INJECT"),
                ("X-Api-Key", src.as_str()),
            ])
            .unwrap();
        b.reload().unwrap();
        let got = b.injected();
        assert_eq!(got[0].1, "Bearer env-secret");
        assert_eq!(got[1].1, "file-secret");
        let shown = format!("{b:?} {got:?}");
        assert!(!shown.contains("secret"), "{shown}");
        // A failed reload keeps the previous values.
        std::fs::remove_file(&f).unwrap();
        let e = b.reload().unwrap_err();
        assert!(e.contains("x-api-key") && !e.contains("secret"), "{e}");
        assert_eq!(b.injected()[1].1, "file-secret");
        assert!(HttpBackend::parse("http://a:1")
            .unwrap()
            .with_inject([("A", "inline")])
            .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
