//! TLS record protection, what wss pays per byte at each end beyond ws: sealing and opening
//! 16 KiB records of TLS 1.3's AES-256-GCM (the suite Culvert's ends negotiate) through
//! rustls's record layer, with aws-lc's AES-GCM and with ring's. Which one is faster depends
//! on the CPU (culvert-transport `tls_provider.rs`): run this on a new kind of machine
//! before trusting the choice there.
//!
//! `cargo bench -p culvert-benches --bench tls_records` (with `CULVERT_BENCH_CLOCK=cpu`, the
//! thread's CPU time instead of wall time, as for the other benches).

use common::BenchClock;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culvert_transport::tls_provider::{provider_with, AesGcmSource};
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, OutboundChunks, OutboundPlainMessage,
};
use rustls::{CipherSuite, ContentType, ProtocolVersion, SupportedCipherSuite};

mod common;

/// A full TLS record's plaintext.
const RECORD: usize = 16 * 1024;

fn aes256(source: AesGcmSource) -> &'static rustls::Tls13CipherSuite {
    provider_with(source)
        .cipher_suites
        .into_iter()
        .find_map(|s| match s {
            SupportedCipherSuite::Tls13(t)
                if t.common.suite == CipherSuite::TLS13_AES_256_GCM_SHA384 =>
            {
                Some(t)
            }
            _ => None,
        })
        .expect("TLS 1.3 AES-256-GCM in the provider")
}

fn records(c: &mut Criterion<BenchClock>) {
    let mut g = c.benchmark_group("tls_record");
    g.throughput(Throughput::Bytes(RECORD as u64));
    let plain = vec![0x5au8; RECORD];
    for (name, source) in [
        ("aws-lc", AesGcmSource::AwsLc),
        ("ring", AesGcmSource::Ring),
    ] {
        let suite = aes256(source);
        let key = || AeadKey::from([7u8; 32]);
        let iv = || Iv::new([3u8; 12]);
        let mut enc = suite.aead_alg.encrypter(key(), iv());
        let mut dec = suite.aead_alg.decrypter(key(), iv());
        let message = || OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(&plain),
        };
        // Sequence numbers as a connection uses them: aws-lc's TLS 1.3 key refuses one that
        // does not follow the last.
        let mut seq = 0u64;
        g.bench_function(BenchmarkId::new("seal", name), |b| {
            b.iter(|| {
                let m = enc.encrypt(message(), seq).expect("seal");
                seq += 1;
                m
            })
        });
        // One sealed record, opened again and again (opening is in place, so each round
        // starts from a copy: the same memcpy for both libraries).
        let sealed = suite
            .aead_alg
            .encrypter(key(), iv())
            .encrypt(message(), 0)
            .expect("seal")
            .encode();
        let body = sealed[5..].to_vec();
        let mut buf = body.clone();
        g.bench_function(BenchmarkId::new("open", name), |b| {
            b.iter(|| {
                buf.copy_from_slice(&body);
                let m = InboundOpaqueMessage::new(
                    ContentType::ApplicationData,
                    ProtocolVersion::TLSv1_2,
                    &mut buf,
                );
                dec.decrypt(m, 0).expect("open").payload.len()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = records
}
criterion_main!(benches);
