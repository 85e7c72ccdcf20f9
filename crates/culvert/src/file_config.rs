//! The TOML config file: `[server]` and `[agent]` tables with the same settings as the flags.
//! Flags override the file. Unknown keys are errors, reported with file, line and key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub agent: AgentFile,
    #[serde(default)]
    pub access: AccessFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    pub ttl: Option<String>,
    pub fallback: Option<String>,
    pub admin: Option<SocketAddr>,
    /// `--proxy URL`: the HTTP proxy to reach the server through (`none`: no proxy).
    pub proxy: Option<String>,
    #[serde(default)]
    pub session: Vec<AccessSessionFile>,
}

/// `[[access.session]]`: one service with its own listener, TTL and fallback.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSessionFile {
    pub service: String,
    pub listen: Option<String>,
    pub ttl: Option<String>,
    pub fallback: Option<String>,
    pub direct: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub self_signed: bool,
    #[serde(default)]
    pub insecure_plain: bool,
    pub tokens: Option<PathBuf>,
    pub port_range: Option<String>,
    pub udp_port_range: Option<String>,
    pub public_bind: Option<IpAddr>,
    /// `--public-proxy-protocol-from`, `--tunnel-proxy-protocol-from`.
    pub public_proxy_protocol_from: Option<Vec<String>>,
    pub tunnel_proxy_protocol_from: Option<Vec<String>>,
    pub heartbeat_interval: Option<u64>,
    /// `--linger SECS`.
    pub linger: Option<u64>,
    pub admin: Option<SocketAddr>,
    pub grace: Option<u64>,
    pub max_connections_per_session: Option<usize>,
    /// `--http-listen`, `--http-domain`, `--http-token-header`, `--http-max-connections`,
    /// `--http-max-connections-per-address`.
    pub http_listen: Option<SocketAddr>,
    pub http_domain: Option<String>,
    pub http_token_header: Option<String>,
    pub http_max_connections: Option<usize>,
    pub http_max_connections_per_address: Option<usize>,
    /// `--http-proxy-protocol`, `--http-proxy-protocol-from`.
    #[serde(default)]
    pub http_proxy_protocol: bool,
    pub http_proxy_protocol_from: Option<Vec<String>>,
    /// `--cluster`, `--cluster-id`, `--cluster-advertise`, `--cluster-heartbeat`.
    pub cluster: Option<String>,
    pub cluster_id: Option<String>,
    pub cluster_advertise: Option<String>,
    pub cluster_heartbeat: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub server: Option<String>,
    /// The servers of a cluster (with `server`, if also given, first).
    #[serde(default)]
    pub servers: Vec<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub expose: Vec<String>,
    #[serde(default)]
    pub private: bool,
    /// `--bench-service NAME`: expose the built-in bench service as NAME and NAME-udp.
    pub bench_service: Option<String>,
    pub ca: Option<PathBuf>,
    pub fingerprint: Option<String>,
    /// Several pinned fingerprints (a server presenting any of them is trusted).
    #[serde(default)]
    pub fingerprints: Vec<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    pub pool: Option<usize>,
    /// `--home-probe-interval SECS`.
    pub home_probe_interval: Option<u64>,
    /// `--ws-mask`: mask every WebSocket frame.
    #[serde(default)]
    pub ws_mask: bool,
    /// `--proxy URL`: the HTTP proxy to reach the server through (`none`: no proxy).
    pub proxy: Option<String>,
    /// `[[agent.service]]`: services written as tables (HTTP services with injected headers).
    #[serde(default)]
    pub service: Vec<AgentServiceFile>,
    pub heartbeat_interval: Option<u64>,
    /// `--linger SECS`.
    pub linger: Option<u64>,
    pub admin: Option<SocketAddr>,
    pub grace: Option<u64>,
    /// `--exit-on-auth-failure`: exit non-zero at the first permanent error.
    #[serde(default)]
    pub exit_on_auth_failure: bool,
}

/// `[[agent.service]]`: one service as a table. `url` is what `--expose NAME=URL` takes;
/// HTTP services may add `inject_headers` (values `env:VAR` or `file:PATH`, read at start and
/// on SIGHUP, never logged), `keep_host`, `ca` (for an `https://` backend) and
/// `response_timeout`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentServiceFile {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub inject_headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub keep_host: bool,
    pub ca: Option<PathBuf>,
    /// Seconds the backend may take to begin its answer (60 when absent).
    pub response_timeout: Option<u64>,
}

/// Reads a config file (an absent `--config` gives the defaults).
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commented examples in `examples/` parse with the real parser (unknown keys are
    /// errors, so a renamed setting breaks this test, not a user's start-up).
    #[test]
    fn examples_parse() {
        for (name, text) in [
            ("server.toml", include_str!("../../../examples/server.toml")),
            ("agent.toml", include_str!("../../../examples/agent.toml")),
            ("access.toml", include_str!("../../../examples/access.toml")),
        ] {
            toml::from_str::<FileConfig>(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let tokens = std::env::temp_dir().join(format!("culvert-ex-tokens-{}", std::process::id()));
        std::fs::write(&tokens, include_str!("../../../examples/tokens.toml")).unwrap();
        let store = culvert_server::TokenStore::load(&tokens);
        let _ = std::fs::remove_file(&tokens);
        assert!(store.is_ok(), "tokens.toml: {:?}", store.err());
    }
}
