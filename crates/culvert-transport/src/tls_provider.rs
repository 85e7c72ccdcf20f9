//! The crypto behind every TLS connection: aws-lc-rs, with the AES-GCM record protection
//! taken from ring on the CPUs where ring's is the faster one.
//!
//! Over wss, AES-GCM is a third of each tunnel process's CPU (BENCHMARKS.md). The two
//! libraries pick their AES-GCM code by CPU, and neither is ahead everywhere:
//! - aws-lc has AVX-512 code (VAES and VPCLMULQDQ on 512-bit registers) but nothing between
//!   that and AES-NI with 128-bit AVX (`_aesni_ctr32_ghash_6x`);
//! - ring (0.17.14, already in the tree through rcgen) has VAES and VPCLMULQDQ on 256-bit
//!   AVX2 registers, and no AVX-512 code.
//!
//! So on a CPU with VAES and AVX2 but no AVX-512 (AMD Zen 3, Intel Alder Lake and later
//! client parts, many cloud VMs that hide AVX-512) ring seals and opens 16 KiB records through
//! rustls in less than half the time (3.2 against 7.0 µs sealing on the benchmark machine,
//! `benches/benches/tls_records.rs`, BENCHMARKS.md 2026-12-04 evening); with AVX-512 aws-lc
//! was the cheaper one (BENCHMARKS.md, 2026-12-02).
//! Key exchange, signatures, randomness and every other suite stay with aws-lc-rs. Both are
//! standard AES-GCM: a peer cannot tell which library the other end uses.

use std::sync::{Arc, OnceLock};

use rustls::crypto::{aws_lc_rs, ring, CryptoProvider};
use rustls::{CipherSuite, SupportedCipherSuite};

/// Whose AES-GCM code protects the records of TLS connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AesGcmSource {
    /// aws-lc's (with its AVX-512 code where the CPU has it).
    AwsLc,
    /// ring's (VAES and VPCLMULQDQ with AVX2).
    Ring,
}

/// The CPU features that decide [`AesGcmSource`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AesCpu {
    /// VAES, VPCLMULQDQ and AVX2: ring's fast path.
    pub(crate) vaes_avx2: bool,
    /// What aws-lc's AVX-512 AES-GCM needs: VAES, VPCLMULQDQ and AVX-512 F, BW, DQ and VL.
    pub(crate) avx512_gcm: bool,
}

impl AesCpu {
    /// This machine's.
    pub(crate) fn detect() -> AesCpu {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let vaes = has!("vaes") && has!("vpclmulqdq");
            AesCpu {
                vaes_avx2: vaes && has!("avx2"),
                avx512_gcm: vaes
                    && has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512dq")
                    && has!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        AesCpu::default()
    }
}

/// The faster AES-GCM for `cpu`: ring's only where it has VAES code and aws-lc does not (no
/// AVX-512); elsewhere both run the same kind of code, or aws-lc's is the faster.
pub(crate) fn choose(cpu: AesCpu) -> AesGcmSource {
    if cpu.vaes_avx2 && !cpu.avx512_gcm {
        AesGcmSource::Ring
    } else {
        AesGcmSource::AwsLc
    }
}

/// The AES-GCM this process's TLS connections use.
pub fn aes_gcm_source() -> AesGcmSource {
    static SOURCE: OnceLock<AesGcmSource> = OnceLock::new();
    *SOURCE.get_or_init(|| {
        let cpu = AesCpu::detect();
        let source = choose(cpu);
        tracing::debug!(?source, ?cpu, "TLS AES-GCM implementation chosen");
        source
    })
}

/// aws-lc-rs's default provider with its AES-GCM suites replaced by ring's when `source`
/// says so; the suites and their order (the preference offered in handshakes) are the same.
/// Public so that `benches/benches/tls_records.rs` can measure both on a machine.
pub fn provider_with(source: AesGcmSource) -> CryptoProvider {
    let mut p = aws_lc_rs::default_provider();
    if source == AesGcmSource::Ring {
        for s in &mut p.cipher_suites {
            if let Some(r) = ring_aes_gcm(s.suite()) {
                *s = r;
            }
        }
    }
    p
}

/// The AES-GCM suites (TLS 1.3 and 1.2) that [`provider_with`] may take from ring.
const AES_GCM_SUITES: [CipherSuite; 6] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
];

/// ring's suite with this identifier, if it is an AES-GCM one.
fn ring_aes_gcm(id: CipherSuite) -> Option<SupportedCipherSuite> {
    if !AES_GCM_SUITES.contains(&id) {
        return None;
    }
    ring::ALL_CIPHER_SUITES
        .iter()
        .find(|r| r.suite() == id)
        .copied()
}

/// The provider every TLS configuration of Culvert is built with (built once).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(provider_with(aes_gcm_source())))
        .clone()
}

#[cfg(test)]
mod tests;
