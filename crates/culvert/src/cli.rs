//! Command-line interface.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;

/// Culvert: reach services in private networks through connections that only they open.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (levels are set by RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Runtime worker threads (default: one per CPU). 1 runs everything on one thread,
    /// which avoids cross-thread wake-ups and lowers latency on small machines.
    #[arg(long, global = true, env = "CULVERT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: accept agents and serve their public ports.
    Server(ServerArgs),
    /// Run an agent: dial the server and expose local services through it.
    Agent(AgentArgs),
    /// Manage tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run a server, an agent and an echo service on loopback, and print how to try it.
    Demo(DemoArgs),
    /// Show the sessions and services of a running server or agent (from its admin listener).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Admin listener of the server or agent.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub admin: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token: prints it once on stdout and stores only its SHA-256 hash.
    New {
        /// Name of the token (shown in logs and status instead of the token).
        #[arg(long)]
        name: String,
        /// Token file to add it to (created if missing).
        #[arg(long, default_value = "tokens.toml")]
        tokens: PathBuf,
    },
}

#[derive(Debug, Args, Default)]
pub struct ServerArgs {
    /// TOML config file; its `[server]` table holds the same settings as these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the tunnel endpoint (agents dial it).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate and print its SHA-256 fingerprint (for agents' --fingerprint).
    #[arg(long)]
    pub self_signed: bool,
    /// Serve plain ws:// without TLS (only allowed on a loopback listen address).
    #[arg(long)]
    pub insecure_plain: bool,
    /// Token file (hashes only), as written by `culvert token new`.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Public TCP ports to hand out, LOW-HIGH.
    #[arg(long)]
    pub port_range: Option<String>,
    /// Public UDP ports to hand out, LOW-HIGH (defaults to the TCP range).
    #[arg(long)]
    pub udp_port_range: Option<String>,
    /// Address public listeners bind on.
    #[arg(long)]
    pub public_bind: Option<IpAddr>,
    /// Admin listener (/metrics, /healthz, /readyz, /api/sessions); keep it on loopback.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Seconds streams in flight get to finish after SIGTERM/SIGINT.
    #[arg(long)]
    pub grace: Option<u64>,
}

#[derive(Debug, Args, Default)]
pub struct AgentArgs {
    /// TOML config file; its `[agent]` table holds the same settings as these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Server URL, wss://HOST:PORT (or ws:// for a loopback test server).
    #[arg(long)]
    pub server: Option<String>,
    /// File holding the token (or set CULVERT_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A service to expose: NAME=tcp://HOST:PORT[@PUBLIC_PORT][?proxy=v1|v2]. Repeatable.
    #[arg(long = "expose")]
    pub expose: Vec<String>,
    /// Trust only server certificates issued by the CA(s) in this PEM file.
    #[arg(long, conflicts_with_all = ["fingerprint", "insecure_skip_verify"])]
    pub ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint.
    #[arg(long, conflicts_with = "insecure_skip_verify")]
    pub fingerprint: Option<String>,
    /// Do not verify the server at all (tests only; logs a loud warning).
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// WebSocket connections to keep open (streams spread across them).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Seconds between heartbeats; a dead server is noticed within two.
    #[arg(long)]
    pub heartbeat_interval: Option<u64>,
    /// Admin listener (/metrics, /healthz, /readyz, /api/sessions); keep it on loopback.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Seconds streams in flight get to finish after SIGTERM/SIGINT.
    #[arg(long)]
    pub grace: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Do one echo round trip through the tunnel, print the result and exit.
    #[arg(long)]
    pub self_test: bool,
}
