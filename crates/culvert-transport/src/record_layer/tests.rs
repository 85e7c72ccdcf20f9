//! The record layer against stock rustls (tokio-rustls) on real loopback sockets, as each
//! end, over every suite Culvert offers: data both ways byte-exact, half-close by
//! close_notify, key updates asked by the peer, truncation and tampering refused.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{CipherSuite, ClientConfig, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{accept, connect};
use crate::tls_provider::provider;

/// A provider offering only `suite` (so the handshake must pick it).
fn only(suite: CipherSuite) -> Arc<CryptoProvider> {
    let mut p = (*provider()).clone();
    p.cipher_suites.retain(|s| s.suite() == suite);
    assert_eq!(p.cipher_suites.len(), 1, "{suite:?} offered");
    Arc::new(p)
}

fn configs(
    suite: CipherSuite,
    version: &'static SupportedProtocolVersion,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let p = only(suite);
    let sc = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let cc = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::tls::Pinned::any(p)))
        .with_no_client_auth();
    (Arc::new(sc), Arc::new(cc))
}

const SUITES: [(CipherSuite, &SupportedProtocolVersion); 5] = [
    (CipherSuite::TLS13_AES_128_GCM_SHA256, &TLS13),
    (CipherSuite::TLS13_AES_256_GCM_SHA384, &TLS13),
    (CipherSuite::TLS13_CHACHA20_POLY1305_SHA256, &TLS13),
    (CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, &TLS12),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        &TLS12,
    ),
];

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) ^ (i >> 9)) as u8)
        .collect()
}

/// Writes `data` in a mix of vectored writes (small pieces gathered, large ones sealed
/// where they lie) and plain ones, then half-closes.
async fn send_mixed<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) {
    let mut at = 0;
    let mut step = 0usize;
    while at < data.len() {
        let sizes = [3usize, 9, 70_000, 1, 5_000, 16_384, 2_047, 200_000];
        let a = sizes[step % sizes.len()].min(data.len() - at);
        let b = sizes[(step + 3) % sizes.len()].min(data.len() - at - a);
        let bufs = [
            std::io::IoSlice::new(&data[at..at + a]),
            std::io::IoSlice::new(&data[at + a..at + a + b]),
        ];
        let n = if step % 3 == 0 {
            w.write(&data[at..at + a]).await.unwrap()
        } else {
            w.write_vectored(&bufs).await.unwrap()
        };
        assert!(n > 0);
        at += n;
        step += 1;
    }
    w.shutdown().await.unwrap();
}

/// Both ends send `len` bytes at once and half-close; each reads the other's to EOF.
async fn exchange<A, B>(a: A, b: B, len: usize)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (ad, bd) = (pattern(len, 1), pattern(len + 13, 2));
    let (_, _, got_b, got_a) = tokio::join!(
        send_mixed(&mut aw, &ad),
        send_mixed(&mut bw, &bd),
        async {
            let mut v = Vec::new();
            ar.read_to_end(&mut v).await.unwrap();
            v
        },
        async {
            let mut v = Vec::new();
            br.read_to_end(&mut v).await.unwrap();
            v
        },
    );
    assert!(got_b == bd, "bytes from the second end differ");
    assert!(got_a == ad, "bytes from the first end differ");
}

/// Ours as the client of a tokio-rustls server, over TLS 1.3 with `suite`.
async fn ours_and_rustls(
    suite: CipherSuite,
) -> (
    super::TlsRecordStream<TcpStream>,
    tokio_rustls::server::TlsStream<TcpStream>,
) {
    let (sc, cc) = configs(suite, &TLS13);
    let (c, s) = pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(sc);
    let (ours, theirs) = tokio::join!(connect(cc, localhost(), c, 512 * 1024), acceptor.accept(s));
    (ours.unwrap(), theirs.unwrap())
}

/// Bounds a test's whole run.
async fn within_30s(run: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("within 30 s");
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

#[tokio::test]
async fn records_interoperate_with_rustls_as_client_and_as_server_on_every_suite() {
    for (suite, version) in SUITES {
        let (sc, cc) = configs(suite, version);
        let run = async {
            // Ours as the client, rustls the server (its session tickets arrive after the
            // handshake, in records this layer opens).
            let (c, s) = pair().await;
            let acceptor = tokio_rustls::TlsAcceptor::from(sc.clone());
            let (ours, theirs) = tokio::join!(
                connect(cc.clone(), localhost(), c, 512 * 1024),
                acceptor.accept(s)
            );
            exchange(ours.unwrap(), theirs.unwrap(), 3 << 20).await;
            // rustls the client, ours the server.
            let (c, s) = pair().await;
            let connector = tokio_rustls::TlsConnector::from(cc.clone());
            let (theirs, ours) = tokio::join!(
                connector.connect(localhost(), c),
                accept(sc.clone(), s, 512 * 1024)
            );
            exchange(theirs.unwrap(), ours.unwrap(), 3 << 20).await;
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("{suite:?} within 60 s"));
    }
}

#[tokio::test]
async fn key_updates_asked_by_the_peer_rotate_both_directions() {
    let run = async {
        let (mut ours, mut theirs) = ours_and_rustls(CipherSuite::TLS13_AES_128_GCM_SHA256).await;
        for round in 0..3u32 {
            // rustls sends KeyUpdate(update_requested) before its next record: ours must
            // open what follows under the new key and answer with its own, under which
            // rustls must open ours.
            theirs.get_mut().1.refresh_traffic_keys().unwrap();
            let msg = pattern(100_000, round);
            theirs.write_all(&msg).await.unwrap();
            theirs.flush().await.unwrap();
            let mut got = vec![0; msg.len()];
            ours.read_exact(&mut got).await.unwrap();
            assert!(got == msg, "round {round}: to ours");
            let back = pattern(70_000, round + 7);
            ours.write_all(&back).await.unwrap();
            ours.flush().await.unwrap();
            let mut got = vec![0; back.len()];
            theirs.read_exact(&mut got).await.unwrap();
            assert!(got == back, "round {round}: to rustls");
        }
        ours.shutdown().await.unwrap();
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    };
    within_30s(run).await;
}

#[tokio::test]
async fn our_key_is_replaced_before_its_record_limit_and_rustls_follows() {
    let run = async {
        let (mut ours, theirs) = ours_and_rustls(CipherSuite::TLS13_AES_256_GCM_SHA384).await;
        // Every third record under a new key: 2 MiB is 128 records, about 40 updates.
        ours.rekey_every(3);
        exchange(ours, theirs, 2 << 20).await;
    };
    within_30s(run).await;
}

#[tokio::test]
async fn bulk_buffers_are_let_go_once_small_messages_follow() {
    let run = async {
        let (mut ours, mut theirs) = ours_and_rustls(CipherSuite::TLS13_AES_128_GCM_SHA256).await;
        let bulk = pattern(8 << 20, 3);
        let (back, got) = tokio::join!(
            async {
                theirs.write_all(&bulk).await.unwrap();
                theirs.flush().await.unwrap();
                let mut back = vec![0; bulk.len()];
                theirs.read_exact(&mut back).await.unwrap();
                back
            },
            async {
                let mut to = vec![0; bulk.len()];
                ours.read_exact(&mut to).await.unwrap();
                ours.write_all(&to).await.unwrap();
                ours.flush().await.unwrap();
                to
            }
        );
        assert!(got == bulk && back == bulk);
        assert!(ours.held() >= 128 * 1024, "bulk buffers: {}", ours.held());
        // A few small request/response exchanges end the burst both ways.
        for i in 0..4u8 {
            ours.write_all(&[i; 100]).await.unwrap();
            ours.flush().await.unwrap();
            let mut req = [0u8; 100];
            theirs.read_exact(&mut req).await.unwrap();
            theirs.write_all(&req).await.unwrap();
            theirs.flush().await.unwrap();
            ours.read_exact(&mut req).await.unwrap();
            assert_eq!(req, [i; 100]);
        }
        assert!(
            ours.held() <= 48 * 1024,
            "held between bursts: {}",
            ours.held()
        );
    };
    within_30s(run).await;
}

#[tokio::test]
async fn a_connection_cut_without_close_notify_is_an_error_not_an_end() {
    let run = async {
        let (mut ours, mut theirs) = ours_and_rustls(CipherSuite::TLS13_AES_128_GCM_SHA256).await;
        theirs.write_all(b"partial").await.unwrap();
        theirs.flush().await.unwrap();
        // The TCP connection ends, TLS does not: a truncation, not a clean end.
        theirs.get_mut().0.shutdown().await.unwrap();
        let mut got = Vec::new();
        let e = ours.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"partial");
    };
    within_30s(run).await;
}

#[tokio::test]
async fn a_tampered_record_fails_the_read_and_every_read_after_it() {
    let (sc, cc) = configs(CipherSuite::TLS13_AES_128_GCM_SHA256, &TLS13);
    let run = async {
        // rustls's server behind a relay that flips one bit of the first application
        // record it forwards after the handshake.
        let (c, relay_in) = pair().await;
        let (relay_out, s) = pair().await;
        let acceptor = tokio_rustls::TlsAcceptor::from(sc);
        let server = tokio::spawn(async move {
            let mut t = acceptor.accept(s).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            t.write_all(&pattern(40_000, 5)).await.unwrap();
            t.flush().await.unwrap();
            t
        });
        let relay = tokio::spawn(async move {
            let (mut ri, mut wi) = relay_in.into_split();
            let (mut ro, mut wo) = relay_out.into_split();
            let up = tokio::spawn(async move { tokio::io::copy(&mut ri, &mut wo).await });
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = 0usize;
            let mut flipped = false;
            loop {
                let n = ro.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                seen += n;
                // Past the handshake flight and the tickets: inside the data.
                if !flipped && seen > 20_000 {
                    buf[n / 2] ^= 0x40;
                    flipped = true;
                }
                if wi.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            up.abort();
        });
        let mut ours = connect(cc, localhost(), c, 512 * 1024).await.unwrap();
        let mut got = vec![0; 40_000];
        let e = ours.read_exact(&mut got).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let again = ours.read(&mut got).await.unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::InvalidData);
        drop(ours);
        let _ = server.await;
        relay.abort();
    };
    within_30s(run).await;
}

#[tokio::test]
async fn a_failed_handshake_answers_with_an_alert_and_returns_an_error() {
    let (sc, cc) = configs(CipherSuite::TLS13_AES_128_GCM_SHA256, &TLS13);
    let run = async {
        // Plain HTTP to the server (an agent given ws:// for a wss:// server): a TLS alert
        // record comes back, which the agent reads as "this server speaks TLS".
        let (mut c, s) = pair().await;
        let server = tokio::spawn(accept(sc.clone(), s, 512 * 1024));
        c.write_all(b"GET /tunnel/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer.first(), Some(&21), "an alert record: {answer:?}");
        assert!(server.await.unwrap().is_err());

        // A client that refuses the server's certificate tells the server so.
        let strict = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let (c, s) = pair().await;
        let (ours, theirs) = tokio::join!(
            connect(Arc::new(strict), localhost(), c, 512 * 1024),
            tokio_rustls::TlsAcceptor::from(sc.clone()).accept(s)
        );
        let e = ours.err().expect("the certificate is refused").to_string();
        assert!(e.contains("certificate"), "{e}");
        let theirs = theirs
            .expect_err("the server hears the refusal")
            .to_string();
        assert!(theirs.to_lowercase().contains("alert"), "{theirs}");

        // Hostile or cut-short handshakes from either side end in an error, not a panic.
        let hostile: [&[u8]; 5] = [
            b"",
            &[22, 3, 1, 0xff, 0xff],
            &[22, 3, 1, 0, 4, 1, 0, 0, 200],
            &[21, 3, 3, 0, 2, 2, 40],
            &[0x16; 300],
        ];
        for bytes in hostile {
            let (mut c, s) = pair().await;
            let server = tokio::spawn(accept(sc.clone(), s, 512 * 1024));
            c.write_all(bytes).await.unwrap();
            c.shutdown().await.unwrap();
            assert!(server.await.unwrap().is_err(), "{bytes:?}");
            let (c, mut s) = pair().await;
            let client = tokio::spawn(connect(cc.clone(), localhost(), c, 512 * 1024));
            let mut hello = [0u8; 512];
            let _ = s.read(&mut hello).await.unwrap();
            s.write_all(bytes).await.unwrap();
            s.shutdown().await.unwrap();
            assert!(client.await.unwrap().is_err(), "{bytes:?}");
        }
    };
    within_30s(run).await;
}

#[test]
fn the_configurations_culvert_builds_are_used_as_they_are() {
    // Every handshake needs secret extraction allowed. The server's and the agent's
    // configurations allow it from the start, so no connection copies its configuration;
    // an embedder's that does not is copied with it allowed, and left as it was.
    use super::handshake::with_extraction;
    use crate::tls::{client_config, ServerTls, Verify};
    let server = ServerTls::self_signed(&["localhost".to_owned()]).unwrap();
    assert!(Arc::ptr_eq(
        &with_extraction(server.config.clone()),
        &server.config
    ));
    let client = client_config(&Verify::Fingerprint(server.fingerprint.clone())).unwrap();
    assert!(Arc::ptr_eq(&with_extraction(client.clone()), &client));

    let (theirs, _) = configs(CipherSuite::TLS13_AES_128_GCM_SHA256, &TLS13);
    let allowed = with_extraction(theirs.clone());
    assert!(!Arc::ptr_eq(&allowed, &theirs));
    assert!(allowed.enable_secret_extraction && !theirs.enable_secret_extraction);
}

#[tokio::test]
async fn the_protocol_agreed_in_the_handshake_is_known_on_both_sides() {
    within_30s(async {
        let (sc, cc) = configs(CipherSuite::TLS13_AES_128_GCM_SHA256, &TLS13);
        let mut sc = (*sc).clone();
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let sc = Arc::new(sc);
        for (offered, agreed) in [
            (vec![b"http/1.1".to_vec(), b"h2".to_vec()], Some(&b"h2"[..])),
            (vec![b"http/1.1".to_vec()], Some(&b"http/1.1"[..])),
            (vec![], None),
        ] {
            let mut c = (*cc).clone();
            c.alpn_protocols = offered;
            let (a, b) = pair().await;
            let (client, server) = tokio::join!(
                connect(Arc::new(c), localhost(), a, 512 * 1024),
                accept(sc.clone(), b, 512 * 1024)
            );
            assert_eq!(client.unwrap().alpn_protocol(), agreed);
            assert_eq!(server.unwrap().alpn_protocol(), agreed);
        }
    })
    .await;
}
