use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Whether two suites are the same implementation (not just the same identifier).
fn same_impl(a: &SupportedCipherSuite, b: &SupportedCipherSuite) -> bool {
    match (a, b) {
        (SupportedCipherSuite::Tls13(x), SupportedCipherSuite::Tls13(y)) => std::ptr::eq(*x, *y),
        (SupportedCipherSuite::Tls12(x), SupportedCipherSuite::Tls12(y)) => std::ptr::eq(*x, *y),
        _ => false,
    }
}

fn from_ring(s: &SupportedCipherSuite) -> bool {
    ring::ALL_CIPHER_SUITES.iter().any(|r| same_impl(r, s))
}

#[test]
fn ring_only_where_it_has_vaes_code_and_aws_lc_has_none() {
    let cpu = |vaes_avx2, avx512_gcm| AesCpu {
        vaes_avx2,
        avx512_gcm,
    };
    assert_eq!(choose(cpu(true, false)), AesGcmSource::Ring);
    assert_eq!(choose(cpu(true, true)), AesGcmSource::AwsLc);
    assert_eq!(choose(cpu(false, false)), AesGcmSource::AwsLc);
}

#[test]
fn ring_provider_swaps_only_the_aes_gcm_suites_and_keeps_their_order() {
    let base = aws_lc_rs::default_provider();
    let mixed = provider_with(AesGcmSource::Ring);
    let ids = |p: &CryptoProvider| {
        p.cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&mixed), ids(&base));
    let mut swapped = 0;
    for (m, b) in mixed.cipher_suites.iter().zip(&base.cipher_suites) {
        if AES_GCM_SUITES.contains(&m.suite()) {
            assert!(from_ring(m), "{:?} is not ring's", m.suite());
            swapped += 1;
        } else {
            assert!(same_impl(m, b), "{:?} is not aws-lc's", m.suite());
        }
    }
    // Both AES-GCM suites of TLS 1.3 and the four of TLS 1.2.
    assert_eq!(swapped, 6);
    // Key exchange stays aws-lc's (its default offers the post-quantum hybrid first).
    assert_eq!(mixed.kx_groups.len(), base.kx_groups.len());
    let aws = provider_with(AesGcmSource::AwsLc);
    assert!(aws
        .cipher_suites
        .iter()
        .zip(&base.cipher_suites)
        .all(|(a, b)| same_impl(a, b)));
}

#[test]
fn the_process_provider_follows_the_cpu() {
    let want_ring = choose(AesCpu::detect()) == AesGcmSource::Ring;
    assert_eq!(aes_gcm_source() == AesGcmSource::Ring, want_ring);
    for s in &provider().cipher_suites {
        if AES_GCM_SUITES.contains(&s.suite()) {
            assert_eq!(from_ring(s), want_ring, "{:?}", s.suite());
        }
    }
}

/// A TLS server on loopback with `server`'s AES-GCM and a client with `client`'s, over
/// `version`: the client sends 1 MiB and half-closes, the server echoes it all back. Returns
/// the negotiated suite; any mismatch in record protection fails the handshake or the data.
/// Waits without deadlines of its own: the caller bounds it.
async fn echo_across(
    server: AesGcmSource,
    client: AesGcmSource,
    version: &'static SupportedProtocolVersion,
) -> CipherSuite {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let sc = ServerConfig::builder_with_provider(Arc::new(provider_with(server)))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let client_provider = Arc::new(provider_with(client));
    let cc = ClientConfig::builder_with_provider(client_provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::tls::Pinned::any(client_provider)))
        .with_no_client_auth();

    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let srv = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        tls.write_all(&got).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let sent: Vec<u8> = (0..(1 << 20) + 7)
        .map(|i: u32| (i * 31 + i / 251) as u8)
        .collect();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = async {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    };
    let reader = async {
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.unwrap();
        back
    };
    let (wr, back) = tokio::join!(writer, reader);
    assert!(back == sent, "echoed bytes differ");
    srv.await.unwrap();
    tls = rd.unsplit(wr);
    tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

#[tokio::test]
async fn ring_and_aws_lc_ends_talk_to_each_other_over_tls13_and_tls12() {
    use AesGcmSource::{AwsLc, Ring};
    for (server, client) in [(Ring, AwsLc), (AwsLc, Ring), (Ring, Ring)] {
        for version in [&TLS13, &TLS12] {
            // Bounded as a whole: handshake, echo and the server task.
            let suite = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                echo_across(server, client, version),
            )
            .await
            .expect("handshake and echo within 20 s");
            assert!(
                AES_GCM_SUITES.contains(&suite),
                "{server:?} server, {client:?} client, {version:?}: negotiated {suite:?}"
            );
        }
    }
}
