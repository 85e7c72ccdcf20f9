use proptest::prelude::*;
use rustls::crypto::cipher::{AeadKey, Iv};

use super::*;

/// Kind 0 AES-256-GCM, 1 ChaCha20-Poly1305, under key bytes `k` (AES-128-GCM keys cannot be
/// made outside rustls: the stream tests cover that suite against rustls itself).
fn keyed(kind: u8, k: u8) -> ConnectionTrafficSecrets {
    let key = AeadKey::from([k; 32]);
    let iv = Iv::new([9u8; 12]);
    match kind {
        0 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
        _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
    }
}

fn secrets(kind: u8) -> ConnectionTrafficSecrets {
    keyed(kind, 7)
}

const VERSIONS: [Version; 2] = [
    Version::Tls13,
    Version::Tls12 {
        explicit_nonce: true,
    },
];

fn pair(kind: u8, v: Version, seal: AesGcmSource, open: AesGcmSource) -> (Sealer, Opener) {
    (
        Sealer::new(&secrets(kind), 5, v, seal).unwrap(),
        Opener::new(&secrets(kind), 5, v, open).unwrap(),
    )
}

fn seal_one(s: &mut Sealer, typ: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; s.wire_len(data.len())];
    s.seal(typ, data, &mut out).unwrap();
    out
}

#[test]
fn records_sealed_by_one_library_open_with_the_other_in_order() {
    use AesGcmSource::{AwsLc, Ring};
    for kind in 0..2 {
        for v in VERSIONS {
            for (a, b) in [(AwsLc, Ring), (Ring, AwsLc), (AwsLc, AwsLc)] {
                let (mut s, mut o) = pair(kind, v, a, b);
                for len in [0usize, 1, 100, MAX_PLAINTEXT] {
                    let data: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
                    let mut rec = seal_one(&mut s, content::APPLICATION_DATA, &data);
                    assert_eq!(o.record_len(&rec), Ok(Some(rec.len())));
                    assert_eq!(o.record_len(&rec[..rec.len() - 1]), Ok(None));
                    let got = o.open(&mut rec).unwrap();
                    assert_eq!(got.typ, content::APPLICATION_DATA);
                    assert_eq!(&rec[got.plaintext], &data[..], "{kind} {v:?} {a:?}→{b:?}");
                }
            }
        }
    }
}

#[test]
fn a_flipped_bit_a_replayed_record_or_another_key_fails_authentication() {
    for v in VERSIONS {
        let (mut s, mut o) = pair(0, v, AesGcmSource::AwsLc, AesGcmSource::AwsLc);
        let rec = seal_one(&mut s, content::APPLICATION_DATA, b"hello, tunnel");
        for i in HEADER_LEN..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 1;
            let (_, mut fresh) = pair(0, v, AesGcmSource::AwsLc, AesGcmSource::AwsLc);
            assert_eq!(fresh.open(&mut bad), Err(RecordError::BadMac), "byte {i}");
        }
        let mut ok = rec.clone();
        o.open(&mut ok).unwrap();
        // The same record again: the sequence number moved on.
        let mut replay = rec.clone();
        assert_eq!(o.open(&mut replay), Err(RecordError::BadMac));
        let mut other = Opener::new(&keyed(0, 8), 5, v, AesGcmSource::AwsLc).unwrap();
        let mut again = rec.clone();
        assert_eq!(other.open(&mut again), Err(RecordError::BadMac));
    }
}

#[test]
fn headers_are_checked_before_their_length_is_trusted() {
    let o13 = Opener::new(&secrets(0), 0, Version::Tls13, AesGcmSource::AwsLc).unwrap();
    let o12 = Opener::new(
        &secrets(0),
        0,
        Version::Tls12 {
            explicit_nonce: true,
        },
        AesGcmSource::AwsLc,
    )
    .unwrap();
    assert_eq!(
        o13.record_len(&[23, 3, 3, 0xff, 0xff]),
        Err(RecordError::TooLarge)
    );
    assert_eq!(
        o13.record_len(&[23, 3, 3, 0x41, 0x01]),
        Err(RecordError::TooLarge)
    );
    assert_eq!(o13.record_len(&[23, 3, 3, 0x41, 0x00]), Ok(None));
    assert_eq!(
        o13.record_len(&[22, 3, 3, 0, 20]),
        Err(RecordError::BadHeader)
    );
    assert_eq!(
        o13.record_len(&[23, 4, 3, 0, 20]),
        Err(RecordError::BadHeader)
    );
    assert_eq!(o12.record_len(&[22, 3, 3, 0, 20]), Ok(None));
    assert_eq!(
        o12.record_len(&[20, 3, 3, 0, 20]),
        Err(RecordError::BadHeader)
    );
    assert_eq!(
        o12.record_len(&[23, 3, 3, 0x48, 0x01]),
        Err(RecordError::TooLarge)
    );
}

#[test]
fn tls13_padding_is_stripped_and_a_record_of_zeros_refused() {
    // A record of plaintext "ab", content type 23 and three bytes of padding, sealed by
    // hand as TLS 1.3 frames it.
    let (s, mut o) = pair(0, Version::Tls13, AesGcmSource::AwsLc, AesGcmSource::AwsLc);
    let inner = [b'a', b'b', 23, 0, 0, 0];
    let mut rec = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
    let body = (inner.len() + TAG_LEN) as u16;
    rec[..HEADER_LEN].copy_from_slice(&[23, 3, 3, (body >> 8) as u8, body as u8]);
    let (h, b) = rec.split_at_mut(HEADER_LEN);
    s.keys.aead.seal(s.keys.nonce(), h, &inner, &[], b).unwrap();
    let got = o.open(&mut rec).unwrap();
    assert_eq!((got.typ, &rec[got.plaintext]), (23, &b"ab"[..]));

    let (s, mut o) = pair(0, Version::Tls13, AesGcmSource::AwsLc, AesGcmSource::AwsLc);
    let mut rec = vec![0u8; HEADER_LEN + 4 + TAG_LEN];
    rec[..HEADER_LEN].copy_from_slice(&[23, 3, 3, 0, (4 + TAG_LEN) as u8]);
    let (h, b) = rec.split_at_mut(HEADER_LEN);
    s.keys
        .aead
        .seal(s.keys.nonce(), h, &[0; 4], &[], b)
        .unwrap();
    assert_eq!(o.open(&mut rec), Err(RecordError::NoContentType));
}

#[test]
fn handshake_messages_are_framed_by_their_declared_length() {
    assert_eq!(handshake_message(&[24, 0, 0], 100), Ok(None));
    assert_eq!(handshake_message(&[24, 0, 0, 1], 100), Ok(None));
    assert_eq!(
        handshake_message(&[24, 0, 0, 1, 1, 9], 100),
        Ok(Some((24, 4..5)))
    );
    assert_eq!(
        handshake_message(&[4, 0, 1, 0], 100),
        Err(RecordError::HandshakeTooLarge)
    );
}

proptest! {
    /// Any bytes: a message that lies within them, an error, or a wait; never a panic.
    #[test]
    fn handshake_framing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(Some((_, body))) = handshake_message(&bytes, 1 << 16) {
            prop_assert!(body.end <= bytes.len() && body.start == 4);
        }
    }


    /// Whatever bytes arrive, measuring and opening them returns a record or an error,
    /// never a panic, and never claims more bytes than it was given.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), v13 in any::<bool>()) {
        let v = if v13 { Version::Tls13 } else { Version::Tls12 { explicit_nonce: true } };
        let mut o = Opener::new(&secrets(0), 0, v, AesGcmSource::AwsLc).unwrap();
        let mut b = bytes;
        if let Ok(Some(len)) = o.record_len(&b) {
            prop_assert!(len <= b.len());
            prop_assert!(o.open(&mut b[..len]).is_err());
        }
    }
}
