//! An HTTP backend for the HTTP-service tests (plain or behind TLS) that records what
//! reaches it, `curl` against the ingress, and the tokens and agent those tests share.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;

use super::{culvert, free_port, new_token_with, start_server, Proc, TempDir, WAIT};

/// The credential the agent injects (from its environment) into every request.
pub const SECRET: &str = "Bearer backend-secret-42";

/// What the backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A hyper HTTP/1.1 backend on loopback: records each request and answers
/// `len=N sha=HEX` of the body it read (streamed, never held whole). A path ending in
/// `/slow` is read slowly (a millisecond's pause after each piece of the body), so that an
/// upload backs up through the tunnel into the ingress's socket.
pub fn backend() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    backend_with(None)
}

/// [`backend`] behind TLS (tokio-rustls with `tls`): it speaks nothing in clear, and
/// records a request only once a handshake has succeeded.
pub fn tls_backend(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    backend_with(Some(tokio_rustls::TlsAcceptor::from(tls)))
}

fn backend_with(tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let rec = seen.clone();
    let port = serve_loopback(move |tcp| {
        let (rec, tls) = (rec.clone(), tls.clone());
        async move {
            match tls {
                None => serve_recording(tcp, rec).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    if let Ok(Ok(s)) = tokio::time::timeout(WAIT, handshake).await {
                        serve_recording(s, rec).await;
                    }
                }
            }
        }
    });
    (port, seen)
}

/// Accepts connections on a loopback port, in a thread with a runtime of its own (so a
/// test's blocking calls do not stall it), each served by `serve` in a task of its own;
/// returns the port.
pub fn serve_loopback<F, Fut>(serve: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(serve(tcp));
            }
        });
    });
    port
}

/// Most a hand-written test backend reads of one request head.
const HEAD_MAX: usize = 64 * 1024;

/// Reads from `io` into `buf` until it holds a whole request head (bytes past it stay in
/// `buf`): the head's length, or `None` when the peer closed, fell silent for [`WAIT`] or
/// sent more than 64 KiB without ending the head. For the hand-written backends.
pub async fn read_head<R>(io: &mut R, buf: &mut Vec<u8>) -> Option<usize>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if buf.len() > HEAD_MAX || !read_more(io, buf).await {
            return None;
        }
    }
}

/// Reads from `io` into `buf` until it holds `len` bytes; `false` when the peer closed or
/// fell silent for [`WAIT`] first.
pub async fn read_to_len<R>(io: &mut R, buf: &mut Vec<u8>, len: usize) -> bool
where
    R: tokio::io::AsyncRead + Unpin,
{
    while buf.len() < len {
        if !read_more(io, buf).await {
            return false;
        }
    }
    true
}

/// One read of up to 4 KiB appended to `buf`, within [`WAIT`].
async fn read_more<R>(io: &mut R, buf: &mut Vec<u8>) -> bool
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(WAIT, io.read(&mut chunk)).await {
        Ok(Ok(k)) if k > 0 => {
            buf.extend_from_slice(&chunk[..k]);
            true
        }
        _ => false,
    }
}

/// Serves [`backend`]'s routes on one connection.
async fn serve_recording<T>(io: T, rec: Arc<Mutex<Vec<Seen>>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let rec = rec.clone();
        async move {
            use http_body_util::BodyExt;
            if let Some(r) = special(req.uri(), req.headers()) {
                return Ok(r(req));
            }
            let (parts, mut body) = req.into_parts();
            let slow = parts.uri.path().ends_with("/slow");
            let mut h = sha2::Sha256::new();
            let mut len = 0;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f?.into_data() {
                    len += d.len();
                    h.update(&d);
                }
                if slow {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            rec.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
                body_len: len,
            });
            let text = format!("len={len} sha={}", hex::encode(h.finalize()));
            Ok::<_, hyper::Error>(hyper::Response::new(
                http_body_util::Full::new(bytes::Bytes::from(text))
                    .map_err(|n| match n {})
                    .boxed(),
            ))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

pub type TestBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;
pub type Special =
    Box<dyn FnOnce(hyper::Request<hyper::body::Incoming>) -> hyper::Response<TestBody> + Send>;

/// The backend's other routes: `/download?n=N` streams N zero bytes; a WebSocket upgrade
/// gets an echo server.
pub fn special(uri: &hyper::Uri, h: &hyper::HeaderMap) -> Option<Special> {
    use http_body_util::BodyExt;
    if uri.path().ends_with("/download") {
        let n: u64 = uri.query()?.strip_prefix("n=")?.parse().ok()?;
        return Some(Box::new(move |_| hyper::Response::new(Zeros(n).boxed())));
    }
    let key = h.get("sec-websocket-key")?.as_bytes().to_vec();
    Some(Box::new(move |mut req| {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures::{SinkExt, StreamExt};
            let Ok(up) = on.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(up),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() || ws.send(m).await.is_err() {
                    break;
                }
            }
        });
        let mut r =
            hyper::Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
        *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        let h = r.headers_mut();
        h.insert(
            "upgrade",
            hyper::header::HeaderValue::from_static("websocket"),
        );
        h.insert(
            "connection",
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        h.insert("sec-websocket-accept", accept.parse().unwrap());
        r
    }))
}

/// A body of `n` zero bytes, in 64 KiB frames, made as it is read.
pub struct Zeros(u64);

impl hyper::body::Body for Zeros {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        static CHUNK: [u8; 65536] = [0; 65536];
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.0.min(CHUNK.len() as u64);
        self.0 -= n;
        let data = bytes::Bytes::from_static(&CHUNK[..n as usize]);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0)
    }
}

/// `curl` against the ingress: (status, headers, body).
pub fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, head, body) = split_answer(&text);
    (status, head.to_owned(), body.to_owned())
}

/// A caller of role http in tenant `acme`, the agent's tenant.
pub const ACME_CALLER: &[&str] = &["--tenant", "acme", "--role", "http"];

/// Tokens for the tests: the agent's of tenant `acme` (written to a file) and a caller's
/// made with `caller_args`. Returns (tokens file, agent token file, caller token).
pub fn acme_tokens(
    dir: &Path,
    caller_args: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let tokens = dir.join("tokens.toml");
    let agent_token = dir.join("agent.token");
    std::fs::write(
        &agent_token,
        new_token_with(&tokens, "erp-agent", &["--tenant", "acme"]),
    )
    .unwrap();
    let caller = new_token_with(&tokens, "caller", caller_args);
    (tokens, agent_token, caller)
}

/// `culvert agent --config CONFIG` with the injected credential in its environment.
pub fn agent_via(config: &Path) -> Command {
    let mut c = culvert();
    c.args(["agent", "--config"])
        .arg(config)
        .env("ERP_TOKEN", SECRET);
    c
}

/// [`agent_via`], started.
pub fn start_agent_via(config: &Path) -> Proc {
    Proc::spawn("culvert agent", &mut agent_via(config))
}

/// Twenty messages (`message(i)`) through `ws://{http}/t/acme/erp/ws`, each echoed back
/// by [`backend`]; the caller's token goes in `header` (name, value).
pub fn websocket_echo(
    http: &str,
    header: (&str, &str),
    message: impl Fn(usize) -> tokio_tungstenite::tungstenite::Message,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{http}/t/acme/erp/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(header.0.as_bytes()).unwrap(),
            header.1.parse().unwrap(),
        );
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        let upgrade = tokio_tungstenite::client_async(req, tcp);
        let (mut ws, resp) = tokio::time::timeout(WAIT, upgrade)
            .await
            .expect("upgrade in time")
            .expect("upgrade through the ingress");
        assert_eq!(resp.status(), 101);
        for i in 0..20 {
            let m = message(i);
            ws.send(m.clone()).await.unwrap();
            let back = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(back, m);
        }
    });
}

/// Status code and the rest of a raw HTTP answer: (status, head, body).
pub fn split_answer(text: &str) -> (u16, &str, &str) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

/// An agent config (plain ws to the server) with one HTTP service per `(name, url, ca)`,
/// each adding the credential from the environment.
pub fn write_config(
    path: &Path,
    port: u16,
    token: &Path,
    services: &[(&str, String, Option<&Path>)],
) {
    write_config_with_admin(path, port, token, services, None)
}

/// [`write_config`], the agent also serving `/metrics` and its API on 127.0.0.1:`admin`.
pub fn write_config_with_admin(
    path: &Path,
    port: u16,
    token: &Path,
    services: &[(&str, String, Option<&Path>)],
    admin: Option<u16>,
) {
    let mut text = format!(
        "[agent]\nserver = \"ws://127.0.0.1:{port}\"\ntoken_file = {:?}\npool = 1\n",
        token.display().to_string()
    );
    if let Some(admin) = admin {
        text += &format!("admin = \"127.0.0.1:{admin}\"\n");
    }
    for (name, url, ca) in services {
        text += &format!(
            "\n[[agent.service]]\nname = \"{name}\"\nurl = \"{url}\"\n\
             inject_headers = {{ Authorization = \"env:ERP_TOKEN\" }}\n"
        );
        if let Some(ca) = ca {
            text += &format!("ca = {:?}\n", ca.display().to_string());
        }
    }
    std::fs::write(path, text).unwrap();
}

/// `curl` writing the body to `out`: (status, bytes received).
pub fn curl_to_file(args: &[&str], out: &Path) -> (u16, u64) {
    let (status, n, _) = curl_to_file_checked(args, out);
    (status, n)
}

/// [`curl_to_file`], and whether curl saw the transfer complete (exit status 0).
pub fn curl_to_file_checked(args: &[&str], out: &Path) -> (u16, u64, bool) {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(out)
        .args(["-w", "%{http_code} %{size_download}"])
        .args(args)
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0) as u16,
        it.next().unwrap_or(0),
        o.status.success(),
    )
}

/// A server with an HTTP ingress for tenant `acme`: (server, tunnel port, ingress address,
/// the agent's token file, the caller's token).
pub fn ingress(dir: &TempDir) -> (Proc, u16, String, PathBuf, String) {
    let (tokens, agent_token, caller) = acme_tokens(dir.path(), ACME_CALLER);
    let http = format!("127.0.0.1:{}", free_port());
    let (mut server, port) = start_server(&tokens, &["--insecure-plain", "--http-listen", &http]);
    server
        .try_wait_line("http ingress ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    (server, port, http, agent_token, caller)
}

/// Whether the ingress answers a request on `s` (a `404`: no route; the connection stays
/// open for the next). A connection closed at a limit gives end of file or a reset instead.
pub fn ingress_answers(s: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    if s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    // Read the short JSON body too, so the next request starts clean.
    let text = String::from_utf8_lossy(&got).into_owned();
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    let length: usize = text[..head_end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + length {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    text.starts_with("HTTP/1.1 404")
}
