//! WebSocket settings and handshakes for the tunnel endpoint.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::record_layer::TlsRecordStream;
use crate::upgrade_tail::Recorder;
use crate::wsframe::{Role, WsConn};

use crate::TransportError;

/// The HTTP path of the tunnel endpoint.
pub const TUNNEL_PATH: &str = "/tunnel/v1";

/// Largest WebSocket message (one batch of frames) either side sends or accepts.
/// 256 KiB amortises WebSocket framing over several 64 KiB frames while keeping per-connection buffers small.
pub const BATCH_CAP: usize = 256 * 1024;

/// Request header by which a client asks to send and receive unmasked frames, and response
/// header by which the server agrees (value `1` both ways). Masking guards plaintext
/// intermediaries against browser scripts (RFC 6455 §10.3); for a tunnel agent it only
/// costs a copy of every byte sent and a pass over every byte received. A server that does
/// not answer with the header (an older Culvert, a proxy that drops it) keeps masking on.
pub const UNMASKED_HEADER: &str = "culvert-unmasked-frames";

/// Server side of the upgrade: only `GET /tunnel/v1` is accepted. A client that asks for
/// unmasked frames ([`UNMASKED_HEADER`]) gets them.
#[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
pub async fn accept<S>(io: S) -> Result<WsConn<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut unmasked = false;
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != TUNNEL_PATH {
            let mut r = ErrorResponse::new(Some("not found".into()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return Err(r);
        }
        if req.headers().get(UNMASKED_HEADER).is_some_and(|v| v == "1") {
            unmasked = true;
            resp.headers_mut()
                .insert(UNMASKED_HEADER, HeaderValue::from_static("1"));
        }
        Ok(resp)
    };
    // tungstenite only does the upgrade; the framer takes the socket over, with whatever
    // the client sent behind its request.
    let ws = tokio_tungstenite::accept_hdr_async(Recorder::new(io), check).await?;
    let (io, tail) = ws.into_inner().finish();
    let conn = WsConn::with_prefix(io, Role::Server, &tail);
    Ok(if unmasked { conn.unmasked() } else { conn })
}

/// Client side of the upgrade to `url` (ws:// or wss://, the TLS already done by the caller).
/// With `ask_unmasked`, the client offers [`UNMASKED_HEADER`] and sends unmasked frames if
/// the server agrees; otherwise (or when it does not) every frame is masked.
pub async fn connect<S>(io: S, url: &str, ask_unmasked: bool) -> Result<WsConn<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = url.into_client_request()?;
    if ask_unmasked {
        req.headers_mut()
            .insert(UNMASKED_HEADER, HeaderValue::from_static("1"));
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, Recorder::new(io)).await?;
    let agreed = ask_unmasked
        && resp
            .headers()
            .get(UNMASKED_HEADER)
            .is_some_and(|v| v == "1");
    let (io, tail) = ws.into_inner().finish();
    let conn = WsConn::with_prefix(io, Role::Client, &tail);
    Ok(if agreed { conn.unmasked() } else { conn })
}

/// Encrypted bytes a TLS connection may hold unsent. A small limit (rustls's default is
/// 64 KiB) splits each batch into several `writev` calls; room for two batches sends one in
/// one.
pub const TLS_BUFFER_LIMIT: usize = 2 * BATCH_CAP;

/// The agent's transport: plain TCP or TLS over TCP (records: [`TlsRecordStream`]).
pub type ClientIo =
    tokio_util::either::Either<tokio::net::TcpStream, TlsRecordStream<tokio::net::TcpStream>>;

/// The server's transport: plain TCP or TLS over TCP (records: [`TlsRecordStream`]).
pub type ServerIo =
    tokio_util::either::Either<tokio::net::TcpStream, TlsRecordStream<tokio::net::TcpStream>>;

/// A parsed `ws://` or `wss://` server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// TLS in use.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerUrl {
    /// Parses `ws[s]://host[:port][/path]`; the path is ignored (always [`TUNNEL_PATH`]).
    pub fn parse(url: &str) -> Result<ServerUrl, TransportError> {
        let bad = |m: &str| TransportError::Url(format!("{url}: {m}"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad("must start with ws:// or wss://"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None => default_port,
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(ServerUrl { tls, host, port })
    }

    fn request_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{TUNNEL_PATH}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}{TUNNEL_PATH}", self.host, self.port)
        }
    }
}

/// Dials the server: TCP, then TLS when the URL is `wss://` (verified by `tls`), then the
/// upgrade. `user_timeout` is the connection's idle timeout, given to the kernel as
/// `TCP_USER_TIMEOUT` (see [`crate::tune_tunnel`]). `mask` keeps every frame masked even
/// when the server would take them unmasked (for paths through an inspecting proxy).
pub async fn dial(
    url: &ServerUrl,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    user_timeout: std::time::Duration,
    mask: bool,
) -> Result<WsConn<ClientIo>, TransportError> {
    dial_via(url, tls, user_timeout, mask, None).await
}

/// [`dial`] through an HTTP proxy (`CONNECT`) when `proxy` is given and the server's host
/// is not in its bypass list. The caller's deadline bounds the whole dial; the proxy's
/// answer has its own, the idle timeout.
pub async fn dial_via(
    url: &ServerUrl,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    user_timeout: std::time::Duration,
    mask: bool,
    proxy: Option<&crate::Proxy>,
) -> Result<WsConn<ClientIo>, TransportError> {
    dial_addr_via(url, None, tls, user_timeout, mask, proxy).await
}

/// [`dial_via`] to one address `addr` of the server's name (when given and no proxy
/// applies) instead of whichever the name resolves to first: the name still goes in SNI,
/// the Host header and the certificate check. For a name that stands for several servers.
pub async fn dial_addr_via(
    url: &ServerUrl,
    addr: Option<std::net::SocketAddr>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    user_timeout: std::time::Duration,
    mask: bool,
    proxy: Option<&crate::Proxy>,
) -> Result<WsConn<ClientIo>, TransportError> {
    let tcp = match (proxy.filter(|p| p.applies_to(&url.host)), addr) {
        (Some(p), _) => {
            tracing::debug!(proxy = %p, server = %url.host, "dialing through the proxy");
            p.connect(&url.host, url.port, user_timeout).await?
        }
        (None, Some(addr)) => tokio::net::TcpStream::connect(addr).await?,
        (None, None) => tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await?,
    };
    crate::tune_tcp(&tcp);
    crate::tune_tunnel(&tcp, user_timeout);
    let io = if url.tls {
        let config =
            tls.ok_or_else(|| TransportError::Tls("wss:// needs a TLS configuration".into()))?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| TransportError::Tls(format!("server name {}: {e}", url.host)))?;
        let s = crate::record_layer::connect(config, name, tcp, TLS_BUFFER_LIMIT).await?;
        tokio_util::either::Either::Right(s)
    } else {
        tokio_util::either::Either::Left(tcp)
    };
    connect(io, &url.request_url(), !mask).await
}
