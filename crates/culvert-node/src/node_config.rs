//! `node.toml`: the node's own listener (its server role, optional) and its `[[tunnel]]`
//! entries (its agent role). Unknown keys are errors, reported with line and key.
//!
//! ```toml
//! [node]
//! listen = "127.0.0.1:7000"          # accept peers here (omit: dial only)
//! insecure_plain = true              # or tls_cert/tls_key, or self_signed
//! tokens = "tokens.toml"             # peers' token hashes
//! port_range = "25000-25100"         # ports peers' reverse tunnels may take
//! allow = ["127.0.0.1:5432"]         # targets peers' forward tunnels may reach
//!
//! [[tunnel]]
//! name = "pg"
//! peer = "ws://127.0.0.1:7001/"      # the peer's listener
//! token_file = "to-b.token"
//! direction = "forward"              # local listen -> target dialed by the peer
//! listen = "127.0.0.1:15432"
//! target = "127.0.0.1:5432"
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::NodeError;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// The node's own settings.
    #[serde(default)]
    pub node: NodeSection,
    /// Tunnels to peers.
    #[serde(default, rename = "tunnel")]
    pub tunnels: Vec<TunnelFile>,
}

/// `[node]`: the accepting side and the admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Name in logs and status.
    pub name: Option<String>,
    /// Address peers dial; absent: this node only dials.
    pub listen: Option<SocketAddr>,
    /// Token file of the peers allowed in.
    pub tokens: Option<PathBuf>,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Generate a certificate at start (peers pin its fingerprint, printed in the log); with
    /// `tls_cert`/`tls_key` it is written there the first time and read back afterwards.
    #[serde(default)]
    pub self_signed: bool,
    /// Plain `ws://`, loopback listen addresses only.
    #[serde(default)]
    pub insecure_plain: bool,
    /// Ports peers' reverse tunnels may bind, e.g. "25000-25100".
    pub port_range: Option<String>,
    /// Ports for reverse UDP tunnels (defaults to `port_range`).
    pub udp_port_range: Option<String>,
    /// Address reverse-tunnel ports bind on (default 0.0.0.0).
    pub public_bind: Option<IpAddr>,
    /// Targets peers may ask this node to dial (`HOST:PORT`, `CIDR:PORT`, port ranges);
    /// checked after name resolution. Empty: this node dials nothing for its peers.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Admin listener (`/metrics`, `/readyz`, `/api/sessions` with tunnel status).
    pub admin: Option<SocketAddr>,
    /// Seconds between heartbeats on every tunnel connection, both the ones this node
    /// accepts and the ones it dials (default 10): a peer silent for two is dropped, one
    /// silent past one and a half gets no new streams.
    pub heartbeat_interval: Option<u64>,
    /// Seconds a stream whose end closed may keep unsent bytes while the far side reads
    /// none of them, before it is reset and they are freed (default 60; counted from the
    /// last bytes that went out, so a slow reader is never cut off).
    pub linger: Option<u64>,
    /// HTTP proxy the tunnels this node dials go through (`CONNECT`), `none` for none;
    /// absent: `HTTPS_PROXY` from the environment (minus `NO_PROXY`).
    pub proxy: Option<String>,
}

impl NodeSection {
    /// The multiplexer settings of this node's connections.
    pub fn proto_config(&self) -> culvert_proto::Config {
        let mut c = culvert_proto::Config::default();
        if let Some(secs) = self.heartbeat_interval {
            c.set_heartbeat_interval(std::time::Duration::from_secs(secs));
        }
        if let Some(secs) = self.linger {
            c.linger = std::time::Duration::from_secs(secs).clamp(
                std::time::Duration::from_secs(1),
                culvert_proto::config::MAX_TIMER,
            );
        }
        c
    }
}

/// Which way a tunnel's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Connections to this node's `listen` reach `target` as dialed by the peer.
    Forward,
    /// Connections to the peer's port (`listen`) reach `target` dialed by this node.
    Reverse,
}

/// `[[tunnel]]`: one tunnel to a peer. Tunnels with the same peer and token share one
/// session (one pool of connections) carrying streams from both sides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// Name in logs and status (unique in the file; a reverse tunnel registers under it).
    pub name: String,
    /// The peer's URL, `wss://host:port/` (or `ws://` to a loopback peer).
    pub peer: String,
    /// File holding the token the peer accepts.
    pub token_file: Option<PathBuf>,
    /// The token itself (prefer `token_file`, which keeps it out of the config).
    pub token: Option<String>,
    /// `forward` or `reverse`.
    pub direction: Direction,
    /// `tcp` (default) or `udp`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Forward: local address to listen on. Reverse: the port on the peer (`PORT` or
    /// `ADDR:PORT`; the peer binds it on its own `public_bind`).
    pub listen: String,
    /// `HOST:PORT` to reach: dialed by the peer (forward) or by this node (reverse). A
    /// forward TCP tunnel may instead name a service registered on the peer (such as a
    /// private one), which the peer reaches if this tunnel's token is allowed it.
    pub target: String,
    /// CA file the peer's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// SHA-256 fingerprint the peer's certificate must have.
    pub fingerprint: Option<String>,
    /// Skip verifying the peer's certificate (loudly warned).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Pooled connections to the peer (default 2).
    pub pool: Option<usize>,
}

fn default_protocol() -> String {
    "tcp".into()
}

impl NodeFile {
    /// Reads and checks a node config file.
    pub fn load(path: &Path) -> Result<NodeFile, NodeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NodeError::Config(format!("reading {}: {e}", path.display())))?;
        let file: NodeFile = toml::from_str(&text)
            .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
        file.check()
            .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
        Ok(file)
    }

    /// Consistency checks the types cannot express.
    pub fn check(&self) -> Result<(), String> {
        if self.node.listen.is_none() && self.tunnels.is_empty() {
            return Err("nothing to do: set [node] listen or add a [[tunnel]]".into());
        }
        let max = culvert_proto::config::MAX_TIMER.as_secs();
        for (key, secs) in [
            ("heartbeat_interval", self.node.heartbeat_interval),
            ("linger", self.node.linger),
        ] {
            if secs.is_some_and(|s| !(1..=max).contains(&s)) {
                return Err(format!("[node] {key} must lie in 1..={max} seconds"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tunnels {
            let at = format!("tunnel {:?}", t.name);
            if !culvert_agent::valid_service_name(&t.name) {
                return Err(format!("{at}: name must be 1 to 64 of A-Z a-z 0-9 . _ -"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("{at}: name used twice"));
            }
            if t.token.is_none() == t.token_file.is_none() {
                return Err(format!("{at}: set exactly one of token_file and token"));
            }
            if !matches!(t.protocol.as_str(), "tcp" | "udp") {
                return Err(format!(
                    "{at}: protocol {:?} is neither tcp nor udp",
                    t.protocol
                ));
            }
            let is_addr = t
                .target
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            // A forward TCP tunnel may also name a service registered on the peer (a
            // private one, say; NAME in the token's tenant or TENANT/NAME), reached if this
            // tunnel's token is allowed it.
            let is_service = t.direction == Direction::Forward
                && t.protocol == "tcp"
                && culvert_server::names::ServiceRef::parse(&t.target).is_some();
            if !is_addr && !is_service {
                return Err(format!(
                    "{at}: target must be HOST:PORT (or, for a forward TCP tunnel, a service on the peer: NAME or TENANT/NAME)"
                ));
            }
            match t.direction {
                Direction::Forward => {
                    t.listen.parse::<SocketAddr>().map_err(|_| {
                        format!("{at}: listen must be ADDR:PORT for a forward tunnel")
                    })?;
                }
                Direction::Reverse => {
                    reverse_port(&t.listen).ok_or_else(|| {
                        format!("{at}: listen must be PORT or ADDR:PORT (a port on the peer)")
                    })?;
                }
            }
        }
        if self.node.listen.is_some() && self.node.tokens.is_none() {
            return Err("[node] listen needs tokens = \"FILE\" (the peers' token hashes)".into());
        }
        // Settings of the accepting side are checked even when they would go unused, and
        // flagged when they do: a typo must not pass silently.
        culvert_server::AllowList::parse(&self.node.allow)
            .map_err(|e| format!("[node] allow: {e}"))?;
        for (key, range) in [
            ("port_range", &self.node.port_range),
            ("udp_port_range", &self.node.udp_port_range),
        ] {
            if let Some(r) = range {
                r.parse::<culvert_server::PortRange>()
                    .map_err(|e| format!("[node] {key}: {e}"))?;
            }
        }
        if self.node.listen.is_none()
            && (!self.node.allow.is_empty()
                || self.node.tokens.is_some()
                || self.node.port_range.is_some())
        {
            return Err(
                "[node] allow, tokens and port_range only apply to a node that accepts peers: set listen too".into(),
            );
        }
        Ok(())
    }
}

/// The port of a reverse tunnel's `listen` (`PORT` or `ADDR:PORT`).
pub(crate) fn reverse_port(listen: &str) -> Option<u16> {
    let p = listen.rsplit_once(':').map_or(listen, |(_, p)| p);
    p.trim().parse().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(s: &str) -> Result<NodeFile, String> {
        let f: NodeFile = toml::from_str(s).map_err(|e| e.to_string())?;
        f.check()?;
        Ok(f)
    }

    const OK: &str = r#"
        [node]
        listen = "127.0.0.1:7000"
        insecure_plain = true
        tokens = "t.toml"
        allow = ["127.0.0.1:5432"]
        [[tunnel]]
        name = "pg"
        peer = "ws://127.0.0.1:7001/"
        token = "x"
        direction = "forward"
        listen = "127.0.0.1:15432"
        target = "127.0.0.1:5432"
        [[tunnel]]
        name = "pg-back"
        peer = "ws://127.0.0.1:7001/"
        token = "x"
        direction = "reverse"
        listen = "25432"
        target = "127.0.0.1:5432"
    "#;

    #[test]
    fn the_examples_parse() {
        for text in [
            include_str!("../../../examples/node-a.toml"),
            include_str!("../../../examples/node-b.toml"),
        ] {
            parse(text).unwrap();
        }
    }

    #[test]
    fn parses_a_full_config() {
        let f = parse(OK).unwrap();
        assert_eq!(f.tunnels.len(), 2);
        assert_eq!(f.tunnels[1].direction, Direction::Reverse);
        assert_eq!(reverse_port(&f.tunnels[1].listen), Some(25432));
        assert_eq!(reverse_port("0.0.0.0:25433"), Some(25433));
        assert_eq!(f.node.proto_config().linger, Duration::from_secs(60));
    }

    /// `linger` and `heartbeat_interval` in `[node]` reach every connection's settings.
    #[test]
    fn the_node_table_sets_the_multiplexer() {
        let text = OK.replace(
            "insecure_plain = true",
            "insecure_plain = true\nlinger = 5\nheartbeat_interval = 3",
        );
        let c = parse(&text).unwrap().node.proto_config();
        assert_eq!(c.linger, Duration::from_secs(5));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
        c.validate().unwrap();
    }

    #[test]
    fn refuses_bad_configs_with_the_reason() {
        let cases = [
            (
                OK.replace(
                    "insecure_plain = true",
                    "insecure_plain = true\nheartbeat_interval = 9223372036854775807",
                ),
                "heartbeat_interval must lie in",
            ),
            (
                OK.replace("insecure_plain = true", "insecure_plain = true\nlinger = 0"),
                "linger must lie in",
            ),
            (
                OK.replace("direction = \"forward\"", "direction = \"sideways\""),
                "sideways",
            ),
            (
                OK.replace("name = \"pg-back\"", "name = \"pg\""),
                "used twice",
            ),
            (
                OK.replace(
                    "target = \"127.0.0.1:5432\"\n        [[tunnel]]",
                    "target = \"no where\"\n        [[tunnel]]",
                ),
                "HOST:PORT",
            ),
            (
                OK.replace("listen = \"127.0.0.1:15432\"", "listen = \"15432\""),
                "ADDR:PORT",
            ),
            (OK.replace("allow = ", "alow = "), "alow"),
            (OK.replace("tokens = \"t.toml\"", ""), "tokens"),
            (
                OK.replacen(
                    "token = \"x\"",
                    "token_file = \"f\"\n        token = \"x\"",
                    1,
                ),
                "exactly one",
            ),
            (
                OK.replacen(
                    "direction = \"forward\"",
                    "direction = \"forward\"\n        protocol = \"sctp\"",
                    1,
                ),
                "neither tcp nor udp",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        assert!(parse("").unwrap_err().contains("nothing to do"));
    }
}
