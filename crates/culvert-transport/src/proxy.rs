//! Reaching the server through an explicit HTTP proxy with `CONNECT`.
//!
//! Networks that allow outbound 443 often allow it only through a proxy. The agent (and
//! `culvert access`, `culvert node`) then asks the proxy for a TCP tunnel to the server
//! (`CONNECT host:port`, with Basic credentials when the proxy URL carries them) and runs
//! TLS and the WebSocket upgrade through it as usual. The credentials never appear in logs,
//! errors or `Debug` output: [`Proxy`] prints itself with the password replaced.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TransportError;

/// Longest proxy answer head read: a CONNECT reply is a status line and a few headers.
const MAX_REPLY: usize = 8 * 1024;

/// An HTTP proxy to dial the server through, and the hosts that bypass it.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `user:password`, percent-decoded, for `Proxy-Authorization: Basic`.
    credentials: Option<String>,
    user: Option<String>,
    /// `NO_PROXY` entries, lower-cased, without a leading `*.`/`.`.
    bypass: Vec<String>,
}

impl Proxy {
    /// Parses `http://[user[:password]@]host[:port][/]` (port 80 by default; `https://`
    /// proxies, spoken to over TLS, are not supported and say so).
    pub fn parse(url: &str) -> Result<Proxy, TransportError> {
        // Errors name the proxy without its credentials.
        let shown = redact(url);
        let bad = |m: &str| TransportError::Proxy(format!("{shown}: {m}"));
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(bad(
                "proxies reached over TLS are not supported; use http:// (the tunnel inside stays TLS)",
            ));
        } else if url.contains("://") {
            return Err(bad("the proxy URL must start with http://"));
        } else {
            url // `host:port` alone, as many HTTPS_PROXY values are written
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| bad("bad port"))?),
                None if after.is_empty() => (h, 80),
                None => return Err(bad("bad port")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport, 80),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let (user, credentials) = match userinfo {
            Some(u) => {
                let (name, pass) = u.split_once(':').unwrap_or((u, ""));
                let name = percent_decode(name).ok_or_else(|| bad("bad %-escape in user"))?;
                let pass = percent_decode(pass).ok_or_else(|| bad("bad %-escape in password"))?;
                (Some(name.clone()), Some(format!("{name}:{pass}")))
            }
            None => (None, None),
        };
        Ok(Proxy {
            host: host.to_owned(),
            port,
            credentials,
            user,
            bypass: Vec::new(),
        })
    }

    /// The proxy the environment names for HTTPS (`HTTPS_PROXY`, then `https_proxy`), with
    /// the bypass list of `NO_PROXY` (or `no_proxy`); `None` when no proxy is set.
    pub fn from_env() -> Result<Option<Proxy>, TransportError> {
        let var = |a: &str, b: &str| {
            std::env::var(a)
                .ok()
                .or_else(|| std::env::var(b).ok())
                .filter(|v| !v.trim().is_empty())
        };
        let Some(url) = var("HTTPS_PROXY", "https_proxy") else {
            return Ok(None);
        };
        let proxy = Proxy::parse(url.trim())?;
        Ok(Some(match var("NO_PROXY", "no_proxy") {
            Some(list) => proxy.bypassing(&list),
            None => proxy,
        }))
    }

    /// The proxy a dialing command uses: `setting` (its `--proxy` flag or config key) when
    /// given, `none` for no proxy at all, else the environment ([`Proxy::from_env`]).
    /// `NO_PROXY` from the environment applies either way.
    pub fn from_setting(setting: Option<&str>) -> Result<Option<Proxy>, TransportError> {
        match setting.map(str::trim) {
            Some("none") => Ok(None),
            Some(url) => {
                let p = Proxy::parse(url)?;
                let bypass = std::env::var("NO_PROXY")
                    .or_else(|_| std::env::var("no_proxy"))
                    .unwrap_or_default();
                Ok(Some(p.bypassing(&bypass)))
            }
            None => Proxy::from_env(),
        }
    }

    /// Adds a `NO_PROXY`-style list: comma-separated host names (each also covers its
    /// subdomains; a leading `.` or `*.` is allowed), IP literals, or `*` for every host.
    pub fn bypassing(mut self, list: &str) -> Proxy {
        self.bypass.extend(
            list.split(',')
                .map(|e| {
                    let e = e.trim().to_ascii_lowercase();
                    let e = e.trim_start_matches("*.").trim_start_matches('.');
                    // `host:port` entries bypass that host on any port.
                    let e = match e.strip_prefix('[') {
                        Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
                        None if e.matches(':').count() == 1 => {
                            e.split(':').next().unwrap_or_default().to_owned()
                        }
                        None => e.to_owned(),
                    };
                    e
                })
                .filter(|e| !e.is_empty()),
        );
        self
    }

    /// Whether connections to `host` go through this proxy (not bypassed by `NO_PROXY`).
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        !self.bypass.iter().any(|b| {
            b == "*"
                || host == *b
                || (host.len() > b.len()
                    && host.ends_with(b.as_str())
                    && host.as_bytes()[host.len() - b.len() - 1] == b'.')
        })
    }

    /// Opens a TCP tunnel to `host:port` through the proxy: connects to it, sends
    /// `CONNECT`, and returns the socket once the proxy answers 2xx. Bounded by `deadline`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        deadline: Duration,
    ) -> Result<TcpStream, TransportError> {
        tokio::time::timeout(deadline, self.connect_inner(host, port))
            .await
            .map_err(|_| {
                TransportError::Proxy(format!("{self}: no answer to CONNECT within {deadline:?}"))
            })?
    }

    async fn connect_inner(&self, host: &str, port: u16) -> Result<TcpStream, TransportError> {
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| TransportError::Proxy(format!("{self}: {e}")))?;
        crate::tune_tcp(&tcp);
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(c) = &self.credentials {
            let b64 = base64::engine::general_purpose::STANDARD.encode(c);
            req.push_str(&format!("Proxy-Authorization: Basic {b64}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| TransportError::Proxy(format!("{self}: {e}")))?;
        // Byte by byte, so nothing behind the head (the server's first bytes) is consumed.
        let mut head = Vec::with_capacity(256);
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_REPLY {
                return Err(TransportError::Proxy(format!(
                    "{self}: CONNECT answer longer than {MAX_REPLY} bytes"
                )));
            }
            match tcp.read(&mut b).await {
                Ok(0) => {
                    return Err(TransportError::Proxy(format!(
                        "{self}: closed the connection before answering CONNECT"
                    )))
                }
                Ok(_) => head.push(b[0]),
                Err(e) => return Err(TransportError::Proxy(format!("{self}: {e}"))),
            }
        }
        let status_line = head
            .split(|&c| c == b'\r')
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        let code = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(200..=299) => Ok(tcp),
            // 407 is the standard answer; some proxies (tinyproxy) answer CONNECT with 401.
            Some(401 | 407) => Err(TransportError::Proxy(format!(
                "{self}: proxy authentication required or refused ({}); give the right user:password in the proxy URL",
                status_line.escape_debug()
            ))),
            _ => Err(TransportError::Proxy(format!(
                "{self}: CONNECT {target} refused: {}",
                status_line.escape_debug()
            ))),
        }
    }
}

/// Shows the proxy with its password hidden: `http://user:***@host:port`.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.user {
            Some(u) => write!(f, "http://{u}:***@{host}:{}", self.port),
            None => write!(f, "http://{host}:{}", self.port),
        }
    }
}

/// Like `Display`: never shows the password.
impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.to_string())
            .field("bypass", &self.bypass)
            .finish()
    }
}

/// `url` with anything between `://` (or the start) and the last `@` of its authority
/// replaced, for error messages about a URL that did not parse.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Decodes `%XX` escapes (user names and passwords in URLs); `None` on a bad escape or
/// bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_the_password() {
        let p = Proxy::parse("http://al%40ice:s3cr%3At@proxy.corp:3128/").unwrap();
        assert_eq!(p.host, "proxy.corp");
        assert_eq!(p.port, 3128);
        assert_eq!(p.credentials.as_deref(), Some("al@ice:s3cr:t"));
        let shown = format!("{p} {p:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("http://al@ice:***@proxy.corp:3128"),
            "{shown}"
        );
    }

    #[test]
    fn forms_without_scheme_port_or_user() {
        let p = Proxy::parse("10.0.0.1:8080").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.is_none()),
            ("10.0.0.1", 8080, true)
        );
        let p = Proxy::parse("http://[::1]").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 80));
        assert_eq!(p.to_string(), "http://[::1]:80");
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for (url, why) in [
            ("https://u:pw@p:1", "not supported"),
            ("socks5://u:pw@p:1", "must start with http://"),
            ("http://u:pw@p:x", "bad port"),
            ("http://u:pw@:1", "missing host"),
            ("http://u:p%zz@p:1", "bad %-escape"),
        ] {
            let e = Proxy::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("pw") && !e.contains("p%zz"), "{url}: {e}");
        }
    }

    #[test]
    fn no_proxy_matching() {
        let p = Proxy::parse("http://p:1")
            .unwrap()
            .bypassing(" .internal, example.com:443,10.1.2.3, [::1] ,");
        assert!(!p.applies_to("a.internal"));
        assert!(!p.applies_to("internal"));
        assert!(!p.applies_to("example.com"));
        assert!(!p.applies_to("www.EXAMPLE.com"));
        assert!(p.applies_to("notexample.com"));
        assert!(!p.applies_to("10.1.2.3"));
        assert!(!p.applies_to("::1"));
        assert!(p.applies_to("server.example.org"));
        let all = Proxy::parse("http://p:1").unwrap().bypassing("*");
        assert!(!all.applies_to("anything"));
    }
}
