//! What both halves share: close codes and the errors that carry them, the peer's close,
//! and masking.

use std::io;

/// Close codes of RFC 6455 §7.4.1 that Culvert sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error (bad framing, masking or fragmentation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint cannot accept (a text frame on the tunnel).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer broke a policy (it made this side exceed a limit).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame too big to process.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// A WebSocket protocol violation by the peer, with the close code RFC 6455 assigns it.
/// Carried inside the `io::Error` (kind `InvalidData`) the reader returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct WsProtocolError {
    /// Close code to send (§7.4.1).
    pub code: u16,
    /// What was wrong.
    pub reason: &'static str,
}

/// The close code (and reason) a reader error calls for: its protocol violation's, or
/// `None` for transport errors (EOF, a reset), where no close frame can help.
pub fn close_code(e: &io::Error) -> Option<(u16, &'static str)> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<WsProtocolError>())
        .map(|p| (p.code, p.reason))
}

/// What the peer's close frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClose {
    /// Its status code; `None` when the frame had no body (RFC 6455 reads that as 1005).
    pub code: Option<u16>,
    /// Its reason (UTF-8, at most 123 bytes).
    pub reason: String,
}

impl std::fmt::Display for PeerClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            // The reason is the peer's: escaped, so it cannot forge log lines.
            Some(c) if self.reason.is_empty() => write!(f, "code {c}"),
            Some(c) => write!(f, "code {c}, reason \"{}\"", self.reason.escape_debug()),
            None => f.write_str("no status code"),
        }
    }
}

/// Whether `code` may appear in a close frame (RFC 6455 §7.4.1 and §7.4.2: 1004, 1005,
/// 1006 and 1015 are reserved for local use, below 1000 and 1016..=2999 are undefined).
pub(super) fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame's body (§5.5.1): empty, or a code and a UTF-8 reason.
pub(super) fn parse_close(body: &[u8]) -> io::Result<PeerClose> {
    match body {
        [] => Ok(PeerClose {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(bad("close frame with a one-byte body")),
        [a, b, rest @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(bad("close frame with an invalid status code"));
            }
            let reason = std::str::from_utf8(rest).map_err(|_| {
                protocol(
                    close_code::INVALID_PAYLOAD,
                    "close reason that is not UTF-8",
                )
            })?;
            Ok(PeerClose {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

pub(super) fn protocol(code: u16, reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, WsProtocolError { code, reason })
}

/// A protocol error (close code 1002).
pub(super) fn bad(reason: &'static str) -> io::Error {
    protocol(close_code::PROTOCOL_ERROR, reason)
}

fn key64(key: [u8; 4], offset: usize) -> ([u8; 8], u64) {
    let mut k = [0u8; 8];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    (k, u64::from_ne_bytes(k))
}

/// XORs `data` with the 4-byte `key`, starting at key offset `offset`; eight bytes at a time.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let (k, k64) = key64(key, offset);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// Writes `src` XORed with `key` (from key offset `offset`) into `dst` of the same length:
/// masking while copying, so the sender's one copy of each byte is also its masking pass.
pub fn copy_masked(dst: &mut [u8], src: &[u8], key: [u8; 4], offset: usize) {
    debug_assert_eq!(dst.len(), src.len());
    let (k, k64) = key64(key, offset);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let v = u64::from_ne_bytes(sc.try_into().expect("8 bytes")) ^ k64;
        dc.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = sb ^ k[i % 4];
    }
}
