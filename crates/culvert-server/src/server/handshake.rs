//! The handshake of an agent connection: TLS, WebSocket upgrade and Auth, under one
//! deadline, ending in a session (new or joined) or an AuthFail.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use culvert_proto::control::{AuthOkExt, CULVERT_VERSION, MIN_CULVERT_VERSION};
use culvert_proto::{Connection, Control, FrameType, Header, Side, HEADER_LEN};
use culvert_transport::tune_accepted;
use culvert_transport::ws::{self, ServerIo};
use culvert_transport::wsframe::{WsConn, WsIn};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::Inner;
use crate::limits::{Locked, Lockout};
use crate::reload::Follow;
use crate::session::Session;

/// The one answer to every failed Auth, whatever went wrong (missing, malformed or wrong token).
const AUTH_FAILED: &str = "authentication failed";

/// A connection past Auth: its socket, protocol state, session, and its place in the
/// connection quotas (held while it lives).
pub(super) type Handshaken = (
    WsConn<ServerIo>,
    Connection,
    Arc<Session>,
    crate::quota::Charge,
);

/// Seconds an agent refused for a connection quota is asked to wait (AuthFail "retry in").
const QUOTA_RETRY_S: u64 = 30;

/// Largest Auth message accepted (a token of a few hundred bytes fits many times over);
/// the bytes of an Auth split across reads are gathered up to this bound.
const MAX_AUTH_LEN: usize = 8 * 1024;

/// TLS, upgrade and Auth under one deadline (`timeout`, shorter when many handshakes are in
/// progress). `Ok(None)`: refused and answered.
pub(super) async fn handshake(
    inner: &Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: std::time::Duration,
) -> Result<Option<Handshaken>, String> {
    tune_accepted(&tcp);
    culvert_transport::tune_tunnel(&tcp, inner.config.proto.idle_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let step = async {
        let io: ServerIo = match &inner.tls {
            Some(config) => {
                let s = culvert_transport::record_layer::accept(
                    config.clone(),
                    tcp,
                    ws::TLS_BUFFER_LIMIT,
                )
                .await
                .map_err(|e| format!("tls: {e}"))?;
                ServerIo::Right(s)
            }
            None => ServerIo::Left(tcp),
        };
        let mut ws = ws::accept(io).await.map_err(|e| e.to_string())?;
        // The Auth may arrive in pieces (split across reads or WebSocket frames): gather
        // it whole, or to the end of its WebSocket message, before judging it.
        let mut first = BytesMut::new();
        while auth_needs_more(&first) && (first.is_empty() || !ws.reader.at_message_end()) {
            match ws.reader.next().await {
                Ok(WsIn::Data(b)) => first.extend_from_slice(&b),
                Ok(WsIn::Ping(_)) => continue,
                Ok(WsIn::Close) => return Err("closed before Auth".to_owned()),
                Err(e) => return Err(format!("websocket: {e}")),
            }
        }
        Ok::<_, String>((ws, first.freeze()))
    };
    let (mut ws, first) = tokio::time::timeout_at(deadline, step)
        .await
        .map_err(|_| "handshake deadline passed".to_owned())??;

    let parsed = parse_auth(first);
    let (token, client_id, version, rest) = match parsed {
        Some(x) => x,
        None => {
            // Malformed or missing Auth gets the same answer as a wrong token.
            let lockouts = inner
                .admission
                .record_failure(peer.ip(), None, Instant::now());
            inner.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            let reason = refusal_reason(inner, peer, &lockouts);
            reject(&mut ws, deadline, reason).await;
            tracing::info!("authentication failed (malformed Auth)");
            return Ok(None);
        }
    };
    // A Culvert peer of an older protocol would misread this server's streams: refused
    // with a reason that says so (PROTOCOL.md §6.2). No extension: a zlayer-tunnel v1 agent.
    if let Some(v) = version.filter(|v| *v < MIN_CULVERT_VERSION) {
        let reason = format!(
            "unsupported Culvert protocol version {v} (this server speaks {CULVERT_VERSION}): upgrade the agent"
        );
        tracing::info!(client = %client_id, version = v, "connection refused: old protocol version");
        reject(&mut ws, deadline, reason).await;
        return Ok(None);
    }
    let culvert = version.is_some();
    // An address or client id locked out after failed attempts is told so, and for how
    // long, without its token being checked.
    if let Some(left) = inner.admission.locked(peer.ip(), client_id, Instant::now()) {
        inner.counters.auth_locked.fetch_add(1, Ordering::Relaxed);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        reject(
            &mut ws,
            deadline,
            format!("too many failed attempts, retry in {secs} s"),
        )
        .await;
        tracing::info!(client = %client_id, retry_in_s = secs, "authentication refused: locked out after failed attempts");
        return Ok(None);
    }
    let Some(entry) = inner.check_token(&token, deadline).await else {
        let lockouts = inner
            .admission
            .record_failure(peer.ip(), Some(client_id), Instant::now());
        inner.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        let reason = refusal_reason(inner, peer, &lockouts);
        reject(&mut ws, deadline, reason).await;
        tracing::info!(client = %client_id, "authentication failed");
        return Ok(None);
    };
    inner.admission.record_success(client_id);

    // Attach to the agent's session (its pool shares one client id) or start one, if the
    // connection quotas of the session, the token and its tenant allow one more.
    let tenant_limits = inner.tenant_limits(entry.tenant());
    let admit = || {
        inner
            .quotas
            .admit_connection(client_id, &entry, &tenant_limits, &inner.config)
    };
    let session = {
        let mut map = inner.lock_sessions();
        match map.get(&client_id) {
            Some(s) if s.token().name == entry.name && !s.ended.load(Ordering::SeqCst) => {
                Some(admit().map(|c| (s.clone(), c)))
            }
            Some(_) => None,
            None => Some(admit().map(|c| {
                let s = Arc::new(Session::new(client_id, entry.clone(), culvert, peer));
                map.insert(client_id, s.clone());
                tracing::info!(session = %client_id, token = %entry.name, culvert, "agent session started");
                (s, c)
            })),
        }
    };
    tracing::Span::current().record("session", tracing::field::display(client_id));
    let (session, charge) = match session {
        Some(Ok(x)) => x,
        Some(Err(refusal)) => {
            tracing::warn!(client = %client_id, token = ?entry.name, %refusal, "connection refused: quota reached");
            let reason = format!("connection refused: {refusal}; retry in {QUOTA_RETRY_S} s");
            reject(&mut ws, deadline, reason).await;
            return Ok(None);
        }
        None => {
            reject(&mut ws, deadline, AUTH_FAILED.to_owned()).await;
            tracing::info!("authentication failed (client id held by another token)");
            return Ok(None);
        }
    };
    // A reload between the token check above and this session's entry in the map would
    // have passed the session by: it follows the tokens in force now.
    let tokens_now = crate::reload::follow(
        &session,
        &inner.tokens.read().unwrap_or_else(|p| p.into_inner()),
        &inner.counters,
    );
    if let Follow::End(reason) = tokens_now {
        inner.end_session(&session, reason);
        reject(&mut ws, deadline, AUTH_FAILED.to_owned()).await;
        tracing::info!(%reason, "authentication failed (the token was reloaded meanwhile)");
        return Ok(None);
    }

    let mut conn = Connection::new(Side::Server, inner.config.proto.clone(), Instant::now())
        .map_err(|e| e.to_string())?;
    if !culvert {
        conn.enable_zlayer_v1_compat();
    }
    conn.send_control_first(Control::AuthOk {
        tunnel_id: client_id,
        ext: culvert.then_some(AuthOkExt {
            version: CULVERT_VERSION,
        }),
    })
    .map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        conn.handle_bytes(Instant::now(), rest)
            .map_err(|e| e.to_string())?;
    }
    Ok(Some((ws, conn, session, charge)))
}

/// Whether `buf` is still short of a whole Auth frame. A header that cannot start an Auth
/// (wrong type, too long) needs nothing more: the parse then refuses it.
fn auth_needs_more(buf: &[u8]) -> bool {
    if buf.len() < HEADER_LEN {
        return true;
    }
    let Ok(bytes) = buf[..HEADER_LEN].try_into() else {
        return false;
    };
    match Header::parse(bytes) {
        Ok(h) if h.ty == FrameType::Auth && h.len <= MAX_AUTH_LEN => buf.len() < HEADER_LEN + h.len,
        _ => false,
    }
}

/// The AuthFail reason after a failed Auth: the lockouts it started are logged at warn,
/// counted, and named in the answer with the time left.
fn refusal_reason(inner: &Inner, peer: SocketAddr, lockouts: &[Lockout]) -> String {
    let mut longest = std::time::Duration::ZERO;
    for l in lockouts {
        let secs = l.duration.as_secs().max(1);
        let ends = crate::tokens::unix_now() + secs;
        match &l.what {
            Locked::Address(a) => {
                inner
                    .counters
                    .lockouts_address
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(address = %a, %peer, failures = l.failures, lockout_s = secs, ends_unix = ends,
                    "authentication lockout: too many failed attempts from this address; its Auths are refused until the lockout ends");
            }
            Locked::Client(c) => {
                inner
                    .counters
                    .lockouts_client
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = %c, %peer, failures = l.failures, lockout_s = secs, ends_unix = ends,
                    "authentication lockout: too many failed attempts by this client id; its Auths are refused until the lockout ends");
            }
        }
        longest = longest.max(l.duration);
    }
    if longest.is_zero() {
        AUTH_FAILED.to_owned()
    } else {
        format!(
            "{AUTH_FAILED}; too many failed attempts, retry in {} s",
            longest.as_secs().max(1)
        )
    }
}

/// Sends the AuthFail answer (the same for every wrong, missing or malformed token; a
/// lockout says how long it lasts) and closes.
async fn reject(ws: &mut WsConn<ServerIo>, deadline: tokio::time::Instant, reason: String) {
    let mut b = BytesMut::new();
    let _ = Control::AuthFail { reason }.encode(&mut b);
    let frame = b.freeze();
    let len = frame.len();
    let _ = tokio::time::timeout_at(deadline, async {
        let _ = ws.writer.send(&[frame], len).await;
        let _ = ws.writer.close().await;
    })
    .await;
}

/// The Auth at the start of the first message: (token, client id, Culvert protocol version
/// (`None`: a zlayer-tunnel v1 agent), remaining bytes).
fn parse_auth(mut first: Bytes) -> Option<(String, Uuid, Option<u8>, Bytes)> {
    if first.len() < HEADER_LEN {
        return None;
    }
    let header = Header::parse(first[..HEADER_LEN].try_into().ok()?).ok()?;
    if header.ty != FrameType::Auth || first.len() < HEADER_LEN + header.len {
        return None;
    }
    first.advance(HEADER_LEN);
    let payload = first.split_to(header.len);
    match Control::decode(FrameType::Auth, payload).ok()? {
        Control::Auth {
            token,
            client_id,
            ext,
        } => Some((token.0, client_id, ext.map(|e| e.version), first)),
        _ => None,
    }
}
