//! TLS for the tunnel: server certificates (files or self-signed) and the agent's ways of
//! verifying the server (system roots, a CA file, a pinned SHA-256 fingerprint, or — loudly — nothing).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::tls_provider::provider;
use crate::TransportError;

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// SHA-256 of a certificate's DER bytes, lowercase hex: what `--fingerprint` pins.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Normalises a user-supplied fingerprint (`AB:CD:…`, any case) to lowercase hex.
pub fn normalize_fingerprint(s: &str) -> Result<String, TransportError> {
    let h: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let h = h
        .strip_prefix("sha256")
        .unwrap_or(&h)
        .trim_start_matches('/')
        .to_owned();
    if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TransportError::Tls(
            "fingerprint must be 64 hex digits (SHA-256), colons allowed".into(),
        ));
    }
    Ok(h)
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = std::fs::read(path).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = std::fs::read(path).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?
        .ok_or_else(|| tls_err(format!("{}: no private key found", path.display())))
}

/// Names a generated certificate is valid for: `localhost` and, unless it is the
/// unspecified address, the listen IP.
fn names_for(listen: std::net::SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names
}

/// A server TLS configuration and the fingerprint of its leaf certificate. Cloning shares
/// the configuration (a server restarted in-process keeps its identity).
#[derive(Clone)]
pub struct ServerTls {
    /// rustls configuration for the acceptor.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate (what agents may pin).
    pub fingerprint: String,
}

impl ServerTls {
    /// From a certificate chain and key in PEM files.
    pub fn from_pem(cert: &Path, key: &Path) -> Result<ServerTls, TransportError> {
        ServerTls::from_parts(load_certs(cert)?, load_key(key)?)
    }

    /// A fresh self-signed certificate for `names` (host names or IP addresses).
    pub fn self_signed(names: &[String]) -> Result<ServerTls, TransportError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(tls_err)?;
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        ServerTls::from_parts(vec![ck.cert.der().clone()], key)
    }

    /// A fresh self-signed certificate for a server listening on `listen`: valid for
    /// `localhost` and, unless it is the unspecified address, the listen IP.
    pub fn self_signed_for(listen: std::net::SocketAddr) -> Result<ServerTls, TransportError> {
        ServerTls::self_signed(&names_for(listen))
    }

    /// A self-signed certificate kept in `cert` and `key`: generated and written (as
    /// [`ServerTls::write_self_signed`] does) when neither file exists, read back when
    /// both do, so the fingerprint peers pin survives restarts. One file without the
    /// other is an error, never silently replaced. The flag says whether it was generated.
    pub fn self_signed_kept(
        listen: std::net::SocketAddr,
        cert: &Path,
        key: &Path,
    ) -> Result<(ServerTls, bool), TransportError> {
        let created = match (cert.exists(), key.exists()) {
            (true, true) => false,
            (false, false) => {
                ServerTls::write_self_signed(&names_for(listen), cert, key)?;
                true
            }
            (has_cert, _) => {
                let (present, missing) = if has_cert { (cert, key) } else { (key, cert) };
                return Err(tls_err(format!(
                    "{} exists but {} does not: restore it, or remove both to generate a new certificate",
                    present.display(),
                    missing.display()
                )));
            }
        };
        Ok((ServerTls::from_pem(cert, key)?, created))
    }

    /// Generates a self-signed certificate for `names` and writes it and its key as PEM
    /// files (the key readable by its owner only), so a server or node keeps one identity
    /// across restarts: peers pin its fingerprint (returned) or trust the file as a CA.
    pub fn write_self_signed(
        names: &[String],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<String, TransportError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(tls_err)?;
        let write = |path: &Path, text: String, private: bool| {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            if private {
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            }
            #[cfg(not(unix))]
            let _ = private;
            std::io::Write::write_all(
                &mut opts
                    .open(path)
                    .map_err(|e| tls_err(format!("{}: {e}", path.display())))?,
                text.as_bytes(),
            )
            .map_err(|e| tls_err(format!("{}: {e}", path.display())))
        };
        write(key_path, ck.signing_key.serialize_pem(), true)?;
        write(cert_path, ck.cert.pem(), false)?;
        Ok(fingerprint(ck.cert.der()))
    }

    fn from_parts(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerTls, TransportError> {
        let fingerprint = fingerprint(&certs[0]);
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(tls_err)?;
        // The record layer takes the traffic secrets over after the handshake; allowed here,
        // once, so no connection has to copy the configuration to allow it.
        config.enable_secret_extraction = true;
        Ok(ServerTls {
            config: Arc::new(config),
            fingerprint,
        })
    }
}

/// How the agent decides to trust the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// The operating system's root certificates.
    SystemRoots,
    /// Only certificates issued by the CA(s) in this PEM file.
    CaFile(std::path::PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (lowercase hex).
    Fingerprint(String),
    /// Any of these certificates, by SHA-256 fingerprint (lowercase hex): an agent of a
    /// cluster whose servers each keep their own self-signed certificate pins them all.
    Fingerprints(Vec<String>),
    /// Nothing is verified. Only for tests; warned about loudly.
    InsecureSkipVerify,
}

impl Verify {
    /// The choice the usual options make: a CA file, else a pinned fingerprint, else
    /// skipping verification when asked, else the system roots.
    pub fn from_options(
        ca: Option<std::path::PathBuf>,
        fingerprint: Option<&str>,
        insecure_skip_verify: bool,
    ) -> Result<Verify, TransportError> {
        Ok(if let Some(ca) = ca {
            Verify::CaFile(ca)
        } else if let Some(fp) = fingerprint {
            Verify::Fingerprint(normalize_fingerprint(fp)?)
        } else if insecure_skip_verify {
            Verify::InsecureSkipVerify
        } else {
            Verify::SystemRoots
        })
    }

    /// [`Verify::from_options`] with any number of pinned fingerprints (`--fingerprint`
    /// repeated): one pins that certificate, several accept a server presenting any of them.
    pub fn from_options_pinned(
        ca: Option<std::path::PathBuf>,
        fingerprints: &[String],
        insecure_skip_verify: bool,
    ) -> Result<Verify, TransportError> {
        if ca.is_some() || fingerprints.len() < 2 {
            return Verify::from_options(
                ca,
                fingerprints.first().map(String::as_str),
                insecure_skip_verify,
            );
        }
        let fps = fingerprints
            .iter()
            .map(|f| normalize_fingerprint(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verify::Fingerprints(fps))
    }
}

/// Builds the agent's TLS configuration.
pub fn client_config(verify: &Verify) -> Result<Arc<ClientConfig>, TransportError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let config = match verify {
        Verify::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "could not load a system root certificate");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TransportError::NoSystemRoots);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(path)? {
                roots.add(c).map_err(tls_err)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprints: Some(vec![fp.clone()]),
                provider: provider(),
            }))
            .with_no_client_auth(),
        Verify::Fingerprints(fps) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprints: Some(fps.clone()),
                provider: provider(),
            }))
            .with_no_client_auth(),
        Verify::InsecureSkipVerify => {
            tracing::warn!("TLS VERIFICATION DISABLED (--insecure-skip-verify): anyone on the path can read and alter this tunnel");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned::any(provider())))
                .with_no_client_auth()
        }
    };
    // As for the server's: the record layer takes the secrets over after the handshake.
    let mut config = config;
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Accepts exactly the certificates of these fingerprints (or any, when `None`), still
/// checking that the server holds its key (handshake signatures).
#[derive(Debug)]
pub(crate) struct Pinned {
    fingerprints: Option<Vec<String>>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    /// Accepts any certificate whose holder signs the handshake with `provider`'s algorithms
    /// (`--insecure-skip-verify`, and tests).
    pub(crate) fn any(provider: Arc<CryptoProvider>) -> Pinned {
        Pinned {
            fingerprints: None,
            provider,
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(fps) = &self.fingerprints else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = fingerprint(end_entity);
        if fps.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {got} does not match the pinned {}",
                fps.join(" or ")
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
