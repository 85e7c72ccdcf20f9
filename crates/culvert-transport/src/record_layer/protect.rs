//! TLS record protection after the handshake (RFC 8446 §5.2-5.3 for TLS 1.3, RFC 5246
//! §6.2.3.3 and RFC 7905 for TLS 1.2), over bytes only: a record is checked and opened where
//! it lies in the read buffer, and sealed straight into the write buffer.

use std::ops::Range;

use rustls::ConnectionTrafficSecrets;

use super::aead::{is_chacha, Aead, AeadFailed, NONCE_LEN, TAG_LEN};
use crate::tls_provider::AesGcmSource;

/// Bytes of a record header: content type, legacy version, length.
pub(crate) const HEADER_LEN: usize = 5;
/// Most plaintext one record carries (2^14).
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024;
/// Bytes of TLS 1.2 AES-GCM's explicit nonce in front of each record's ciphertext.
const EXPLICIT_NONCE_LEN: usize = 8;

/// Record content types (RFC 8446 §5.1).
pub(crate) mod content {
    /// change_cipher_spec: never valid once the handshake is over.
    pub(crate) const CHANGE_CIPHER_SPEC: u8 = 20;
    /// alert
    pub(crate) const ALERT: u8 = 21;
    /// handshake (post-handshake messages: tickets, key updates)
    pub(crate) const HANDSHAKE: u8 = 22;
    /// application_data
    pub(crate) const APPLICATION_DATA: u8 = 23;
}

/// Why a record was refused: each is fatal for the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The header is not a TLS record header, or names a type not allowed here.
    #[error("malformed TLS record header")]
    BadHeader,
    /// The record is longer than the protocol allows.
    #[error("TLS record too large")]
    TooLarge,
    /// The record failed authentication (tampered, truncated or under another key).
    #[error("TLS record failed authentication (bad_record_mac)")]
    BadMac,
    /// A TLS 1.3 record with no content type inside.
    #[error("TLS record without content type")]
    NoContentType,
    /// The sequence number ran out (2^64 records under one key).
    #[error("TLS record sequence number exhausted")]
    SequenceExhausted,
    /// A post-handshake message longer than this layer gathers.
    #[error("post-handshake message too large")]
    HandshakeTooLarge,
    /// The negotiated suite is not one this layer protects.
    #[error("unsupported TLS cipher suite for the record layer")]
    UnsupportedSuite,
}

impl From<AeadFailed> for RecordError {
    fn from(_: AeadFailed) -> RecordError {
        RecordError::BadMac
    }
}

/// Which record format: TLS 1.3's, or TLS 1.2's (with an explicit nonce for AES-GCM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// TLS 1.2; `explicit_nonce` for AES-GCM, not for ChaCha20-Poly1305.
    Tls12 { explicit_nonce: bool },
    /// TLS 1.3.
    Tls13,
}

/// TLS 1.2's record format follows the suite: an explicit nonce for AES-GCM only.
fn format_for(version: Version, secrets: &ConnectionTrafficSecrets) -> Version {
    match version {
        Version::Tls12 { .. } => Version::Tls12 {
            explicit_nonce: !is_chacha(secrets),
        },
        v => v,
    }
}

/// One direction's key, IV and sequence number.
struct Keys {
    aead: Aead,
    iv: [u8; NONCE_LEN],
    seq: u64,
    source: AesGcmSource,
}

impl Keys {
    fn new(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        source: AesGcmSource,
    ) -> Result<Keys, RecordError> {
        let (aead, iv) = Aead::new(secrets, source).map_err(|_| RecordError::UnsupportedSuite)?;
        Ok(Keys {
            aead,
            iv,
            seq,
            source,
        })
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes.
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// One direction's keys and record format.
    fn direction(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        version: Version,
        source: AesGcmSource,
    ) -> Result<(Keys, Version), RecordError> {
        Ok((
            Keys::new(secrets, seq, source)?,
            format_for(version, secrets),
        ))
    }

    /// New keys after a KeyUpdate (TLS 1.3): the sequence number starts at 0.
    fn rekey(&mut self, secrets: &ConnectionTrafficSecrets) -> Result<(), RecordError> {
        *self = Keys::new(secrets, 0, self.source)?;
        Ok(())
    }

    fn next_seq(&mut self) -> Result<(), RecordError> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(())
    }
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn aad12(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9..11].copy_from_slice(&[3, 3]);
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// The whole handshake message at the front of `buf` (type, then where its body lies), or
/// `None` while part of it has yet to arrive; a declared length over `max` is refused
/// before anything waits for it.
pub(crate) fn handshake_message(
    buf: &[u8],
    max: usize,
) -> Result<Option<(u8, Range<usize>)>, RecordError> {
    let [typ, a, b, c, ..] = *buf else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if len > max {
        return Err(RecordError::HandshakeTooLarge);
    }
    Ok((buf.len() >= 4 + len).then_some((typ, 4..4 + len)))
}

/// The receiving direction.
pub(crate) struct Opener {
    keys: Keys,
    version: Version,
}

/// An opened record: its content type and where its plaintext lies in the record's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    pub(crate) typ: u8,
    pub(crate) plaintext: Range<usize>,
}

impl Opener {
    /// The receiving keys `secrets`, continuing at sequence number `seq`.
    pub(crate) fn new(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        version: Version,
        source: AesGcmSource,
    ) -> Result<Opener, RecordError> {
        let (keys, version) = Keys::direction(secrets, seq, version, source)?;
        Ok(Opener { keys, version })
    }

    /// New keys after the peer's KeyUpdate (TLS 1.3): the sequence number starts at 0.
    pub(crate) fn rekey(&mut self, secrets: &ConnectionTrafficSecrets) -> Result<(), RecordError> {
        self.keys.rekey(secrets)
    }

    /// The record format in use.
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Length of the record at the front of `buf` (header included) once all of it is
    /// there; `None` while more is needed. A header that cannot start a valid record is
    /// refused at once, before its length is trusted.
    pub(crate) fn record_len(&self, buf: &[u8]) -> Result<Option<usize>, RecordError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let typ = buf[0];
        let ok_type = match self.version {
            Version::Tls13 => typ == content::APPLICATION_DATA,
            Version::Tls12 { .. } => matches!(
                typ,
                content::ALERT | content::HANDSHAKE | content::APPLICATION_DATA
            ),
        };
        if !ok_type || buf[1] != 3 {
            return Err(RecordError::BadHeader);
        }
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        let max = match self.version {
            Version::Tls13 => MAX_PLAINTEXT + 256,
            Version::Tls12 { .. } => MAX_PLAINTEXT + 2048,
        };
        if len > max {
            return Err(RecordError::TooLarge);
        }
        Ok((buf.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
    }

    /// Opens the whole record `rec` (header included, as [`Opener::record_len`] measured
    /// it) in place.
    pub(crate) fn open(&mut self, rec: &mut [u8]) -> Result<Opened, RecordError> {
        let (header, body) = rec.split_at_mut(HEADER_LEN);
        let opened = match self.version {
            Version::Tls13 => {
                if body.len() < TAG_LEN + 1 {
                    return Err(RecordError::BadMac);
                }
                let n = self
                    .keys
                    .aead
                    .open_in_place(self.keys.nonce(), header, body)?;
                // The content type is the last non-zero byte; zeros after it are padding.
                let end = body[..n]
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or(RecordError::NoContentType)?;
                if end > MAX_PLAINTEXT {
                    return Err(RecordError::TooLarge);
                }
                Opened {
                    typ: body[end],
                    plaintext: HEADER_LEN..HEADER_LEN + end,
                }
            }
            Version::Tls12 { explicit_nonce } => {
                let typ = header[0];
                let skip = if explicit_nonce {
                    EXPLICIT_NONCE_LEN
                } else {
                    0
                };
                let len = body
                    .len()
                    .checked_sub(skip + TAG_LEN)
                    .ok_or(RecordError::BadMac)?;
                if len > MAX_PLAINTEXT {
                    return Err(RecordError::TooLarge);
                }
                let nonce = if explicit_nonce {
                    let mut n = self.keys.iv;
                    n[4..].copy_from_slice(&body[..EXPLICIT_NONCE_LEN]);
                    n
                } else {
                    self.keys.nonce()
                };
                let aad = aad12(self.keys.seq, typ, len);
                self.keys
                    .aead
                    .open_in_place(nonce, &aad, &mut body[skip..])?;
                Opened {
                    typ,
                    plaintext: HEADER_LEN + skip..HEADER_LEN + skip + len,
                }
            }
        };
        self.keys.next_seq()?;
        Ok(opened)
    }
}

/// The sending direction.
pub(crate) struct Sealer {
    keys: Keys,
    version: Version,
}

impl Sealer {
    /// The sending keys `secrets`, continuing at sequence number `seq`.
    pub(crate) fn new(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        version: Version,
        source: AesGcmSource,
    ) -> Result<Sealer, RecordError> {
        let (keys, version) = Keys::direction(secrets, seq, version, source)?;
        Ok(Sealer { keys, version })
    }

    /// New keys after our own KeyUpdate (TLS 1.3): the sequence number starts at 0.
    pub(crate) fn rekey(&mut self, secrets: &ConnectionTrafficSecrets) -> Result<(), RecordError> {
        self.keys.rekey(secrets)
    }

    /// Records sealed under the current key.
    pub(crate) fn seq(&self) -> u64 {
        self.keys.seq
    }

    /// Bytes on the wire of a record carrying `n` bytes of plaintext (at most
    /// [`MAX_PLAINTEXT`]).
    pub(crate) fn wire_len(&self, n: usize) -> usize {
        HEADER_LEN
            + n
            + TAG_LEN
            + match self.version {
                Version::Tls13 => 1,
                Version::Tls12 {
                    explicit_nonce: true,
                } => EXPLICIT_NONCE_LEN,
                Version::Tls12 { .. } => 0,
            }
    }

    /// Seals `plaintext` (at most [`MAX_PLAINTEXT`] bytes) as one record of type `typ` into
    /// `out`, which is exactly [`Sealer::wire_len`] bytes.
    pub(crate) fn seal(
        &mut self,
        typ: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), RecordError> {
        debug_assert!(plaintext.len() <= MAX_PLAINTEXT);
        if out.len() != self.wire_len(plaintext.len()) {
            return Err(RecordError::TooLarge);
        }
        let body_len = out.len() - HEADER_LEN;
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let nonce = self.keys.nonce();
        match self.version {
            Version::Tls13 => {
                header.copy_from_slice(&[
                    content::APPLICATION_DATA,
                    3,
                    3,
                    (body_len >> 8) as u8,
                    body_len as u8,
                ]);
                self.keys
                    .aead
                    .seal(nonce, header, plaintext, &[typ], body)?;
            }
            Version::Tls12 { explicit_nonce } => {
                header.copy_from_slice(&[typ, 3, 3, (body_len >> 8) as u8, body_len as u8]);
                let aad = aad12(self.keys.seq, typ, plaintext.len());
                let body = if explicit_nonce {
                    body[..EXPLICIT_NONCE_LEN].copy_from_slice(&nonce[4..]);
                    &mut body[EXPLICIT_NONCE_LEN..]
                } else {
                    body
                };
                self.keys.aead.seal(nonce, &aad, plaintext, &[], body)?;
            }
        }
        self.keys.next_seq()
    }
}

#[cfg(test)]
mod tests;
