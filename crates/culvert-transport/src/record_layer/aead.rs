//! One direction's AEAD key, from whichever library protects this process's AES-GCM records
//! ([`crate::tls_provider::aes_gcm_source`]): aws-lc-rs seals straight from the caller's
//! bytes into the outgoing buffer (encryption and copy in one pass); ring, which has no
//! out-of-place seal, copies first and seals in place.

use aws_lc_rs::aead as awslc;
use ring::aead as ringa;
use rustls::ConnectionTrafficSecrets;

use crate::tls_provider::AesGcmSource;

/// Bytes of every supported suite's authentication tag.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes of every supported suite's nonce.
pub(crate) const NONCE_LEN: usize = 12;

/// An AEAD key of one library or the other.
pub(crate) enum Aead {
    /// aws-lc-rs's.
    AwsLc(awslc::LessSafeKey),
    /// Boxed: ring's key schedule is kept inline (about half a KiB).
    Ring(Box<ringa::LessSafeKey>),
}

/// The key failed to open a record (wrong key, tampered bytes) or the lengths were wrong.
#[derive(Debug)]
pub(crate) struct AeadFailed;

/// Whether `secrets` is a ChaCha20-Poly1305 key (TLS 1.2 records differ by suite).
pub(crate) fn is_chacha(secrets: &ConnectionTrafficSecrets) -> bool {
    matches!(secrets, ConnectionTrafficSecrets::Chacha20Poly1305 { .. })
}

impl Aead {
    /// The key and IV of `secrets`, with ring's AES-GCM where `source` says it is faster.
    pub(crate) fn new(
        secrets: &ConnectionTrafficSecrets,
        source: AesGcmSource,
    ) -> Result<(Aead, [u8; NONCE_LEN]), AeadFailed> {
        let (key, iv, aws, rng) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (key, iv, &awslc::AES_128_GCM, &ringa::AES_128_GCM)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (key, iv, &awslc::AES_256_GCM, &ringa::AES_256_GCM)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (
                key,
                iv,
                &awslc::CHACHA20_POLY1305,
                &ringa::CHACHA20_POLY1305,
            ),
            _ => return Err(AeadFailed),
        };
        let iv: [u8; NONCE_LEN] = iv.as_ref().try_into().map_err(|_| AeadFailed)?;
        let aead = if source == AesGcmSource::Ring && !is_chacha(secrets) {
            let k = ringa::UnboundKey::new(rng, key.as_ref()).map_err(|_| AeadFailed)?;
            Aead::Ring(Box::new(ringa::LessSafeKey::new(k)))
        } else {
            let k = awslc::UnboundKey::new(aws, key.as_ref()).map_err(|_| AeadFailed)?;
            Aead::AwsLc(awslc::LessSafeKey::new(k))
        };
        Ok((aead, iv))
    }

    /// Opens `in_out` (ciphertext then tag) in place; returns the plaintext's length.
    pub(crate) fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, AeadFailed> {
        let n = match self {
            Aead::AwsLc(k) => k
                .open_in_place(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::from(aad),
                    in_out,
                )
                .map_err(|_| AeadFailed)?
                .len(),
            Aead::Ring(k) => k
                .open_in_place(
                    ringa::Nonce::assume_unique_for_key(nonce),
                    ringa::Aad::from(aad),
                    in_out,
                )
                .map_err(|_| AeadFailed)?
                .len(),
        };
        Ok(n)
    }

    /// Seals `plaintext` followed by `extra` (TLS 1.3's inner content type) into `out`, which
    /// is exactly `plaintext.len() + extra.len() + TAG_LEN` bytes: ciphertext, then tag.
    pub(crate) fn seal(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        extra: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadFailed> {
        if out.len() != plaintext.len() + extra.len() + TAG_LEN {
            return Err(AeadFailed);
        }
        match self {
            Aead::AwsLc(k) => {
                let (body, extra_and_tag) = out.split_at_mut(plaintext.len());
                k.seal_out_of_place_scatter(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::from(aad),
                    plaintext,
                    body,
                    extra,
                    extra_and_tag,
                )
                .map_err(|_| AeadFailed)
            }
            Aead::Ring(k) => {
                let inner = plaintext.len() + extra.len();
                out[..plaintext.len()].copy_from_slice(plaintext);
                out[plaintext.len()..inner].copy_from_slice(extra);
                let tag = k
                    .seal_in_place_separate_tag(
                        ringa::Nonce::assume_unique_for_key(nonce),
                        ringa::Aad::from(aad),
                        &mut out[..inner],
                    )
                    .map_err(|_| AeadFailed)?;
                out[inner..].copy_from_slice(tag.as_ref());
                Ok(())
            }
        }
    }
}
