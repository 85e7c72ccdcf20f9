//! `culvert server --self-signed --tls-cert C --tls-key K`: the certificate is generated
//! and written the first time, read back at every later start, so an agent that pins its
//! fingerprint reconnects by itself after a server restart. One file without the other is
//! refused at start, naming both.

mod support;

use std::time::Duration;

use support::*;

/// `culvert server` on `port` keeping its self-signed certificate in `cert` / `key`.
fn kept_cert_server(tokens: &std::path::Path, port: u16, cert: &str, key: &str) -> Proc {
    let mut p = spawn_server(
        tokens,
        port,
        &["--self-signed", "--tls-cert", cert, "--tls-key", key],
    );
    p.wait_line("tunnel endpoint ready", 0, WAIT);
    p
}

/// The fingerprint the server logged and whether it generated the certificate.
fn logged_certificate(p: &mut Proc) -> (String, String) {
    let line = p.wait_line("self-signed certificate kept", 0, WAIT);
    (
        field(&line, "fingerprint").unwrap_or_else(|| panic!("no fingerprint in {line:?}")),
        field(&line, "created").unwrap_or_else(|| panic!("no created= in {line:?}")),
    )
}

#[test]
fn a_kept_self_signed_certificate_survives_a_server_restart() {
    let dir = TempDir::new("kept-cert");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "kept")).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let echo = echo_service();
    let port = free_port();

    let mut server = kept_cert_server(&tokens, port, cert_s, key_s);
    let (fingerprint, created) = logged_certificate(&mut server);
    assert_eq!(created, "true", "the first start generates the certificate");
    assert!(cert.exists() && key.exists(), "both files are written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key is readable by its owner only");
    }

    let mut agent = Proc::spawn(
        "culvert agent (pinned fingerprint)",
        culvert().arg("agent").args([
            "--server",
            &format!("wss://127.0.0.1:{port}"),
            "--token-file",
            token_file.to_str().unwrap(),
            "--fingerprint",
            &fingerprint,
            "--expose",
            &format!("echo=tcp://127.0.0.1:{echo}"),
        ]),
    );
    let public = public_port_of(&mut agent, "echo", 0);
    assert_eq!(echo_round_trip(public, b"before").unwrap(), b"before");

    // Restart: the same certificate is read back, and the pinning agent comes back by itself.
    server.kill();
    let before = agent.line_count();
    let mut server = kept_cert_server(&tokens, port, cert_s, key_s);
    assert_eq!(
        logged_certificate(&mut server),
        (fingerprint.clone(), "false".to_owned()),
        "the restarted server must present the same certificate"
    );
    let public = public_port_of(&mut agent, "echo", before);
    assert_eq!(echo_round_trip(public, b"after").unwrap(), b"after");
    assert!(
        !agent.log().contains("does not match the pinned"),
        "{}",
        agent.log()
    );

    // One file without the other: refused at start, naming both, and nothing overwritten.
    server.kill();
    std::fs::remove_file(&key).unwrap();
    let cert_before = std::fs::read(&cert).unwrap();
    let out = run(
        server_args(&mut culvert(), &tokens, port).args([
            "--self-signed",
            "--tls-cert",
            cert_s,
            "--tls-key",
            key_s,
        ]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with half a key pair: {err}");
    assert!(
        err.contains("cert.pem") && err.contains("key.pem") && err.contains("does not"),
        "the error names both files: {err}"
    );
    assert_eq!(std::fs::read(&cert).unwrap(), cert_before);
    assert!(!key.exists(), "no new key was written");
}
