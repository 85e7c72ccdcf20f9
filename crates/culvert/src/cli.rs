//! Command-line interface.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::bench::args::BenchArgs;
use crate::logging::LogFormat;

/// Seconds streams in flight get after SIGTERM/SIGINT, for every role (`--grace`).
pub const DEFAULT_GRACE_SECS: u64 = 30;

/// Seconds of a timer flag, from `min` to a day ([`culvert_proto::config::MAX_TIMER`]): a
/// larger value would overflow the clock arithmetic built on it, so it is refused by name.
fn timer_secs(min: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(min..=culvert_proto::config::MAX_TIMER.as_secs())
}

/// Culvert: reach services in private networks through connections that only they open.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Logging and runtime settings of the subcommands that run a tunnel (server, agent, node,
/// access, demo, bench); the one-shot ones (`token`, `cert`, `status`, …) do not take them.
#[derive(Debug, Args, Default, Clone, Copy)]
pub struct RuntimeArgs {
    /// Log format on stderr (levels are set by RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Runtime worker threads (default: one per CPU, or 1 on machines with two CPUs or
    /// fewer). 1 runs everything on one thread, which avoids cross-thread wake-ups.
    #[arg(long, env = "CULVERT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl Command {
    /// The logging and runtime settings of this subcommand (defaults for those without them).
    pub fn runtime(&self) -> RuntimeArgs {
        match self {
            Command::Server(a) => a.runtime,
            Command::Agent(a) => a.runtime,
            Command::Node(a) => a.runtime,
            Command::Access(a) => a.runtime,
            Command::Demo(a) => a.runtime,
            Command::Bench(a) => a.runtime,
            Command::Token(_)
            | Command::Cert(_)
            | Command::Status(_)
            | Command::Completions(_)
            | Command::Check(_) => RuntimeArgs::default(),
        }
    }
}

// The server's arguments make its variant the largest by far; the command is parsed once
// per process, so its size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: accept agents and serve their public ports.
    Server(ServerArgs),
    /// Run an agent: dial the server (or the servers of a cluster, --server repeated) and
    /// expose local services through it.
    Agent(AgentArgs),
    /// Manage tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run a server, an agent and an echo service on loopback, and print how to try it.
    Demo(DemoArgs),
    /// Show the sessions, services or tunnels of a running server, agent, node or access
    /// process (from its admin listener).
    Status(StatusArgs),
    /// Run a node: accept peers and dial peers, with forward and reverse tunnels from one config.
    Node(NodeArgs),
    /// Reach private services through local listeners for a while (`culvert access list`
    /// shows running sessions).
    Access(AccessArgs),
    /// Measure a tunnel: throughput, latency, connection rate and UDP, against a baseline.
    Bench(BenchArgs),
    /// Print a shell completion script on stdout (for example
    /// `culvert completions bash > /etc/bash_completion.d/culvert`).
    Completions(CompletionsArgs),
    /// Parse and validate a config file (server, agent, access or node TOML, or a token
    /// file) without starting anything; exits 0 when it would load, 1 with the reason.
    Check(CheckArgs),
}

/// `culvert completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `culvert check --config FILE`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The file to check: a `[server]`/`[agent]`/`[access]` config, a node config
    /// (`[node]`, `[[tunnel]]`) or a token file (`[[token]]`).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's TOML config: `[node]` (its listener, tokens, allow-list) and `[[tunnel]]` entries.
    #[arg(long)]
    pub config: PathBuf,
    /// Admin listener (/metrics, /healthz, /readyz, /api/sessions with tunnel status);
    /// overrides `[node] admin`.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Seconds streams in flight get to finish after SIGTERM/SIGINT (as for the server
    /// and the agent).
    #[arg(long, default_value_t = DEFAULT_GRACE_SECS, value_parser = timer_secs(0))]
    pub grace: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args, Default)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AccessArgs {
    #[command(subcommand)]
    pub command: Option<AccessCommand>,
    /// Services to reach (each gets a local listener).
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    /// TOML config file; its `[access]` table holds the same settings as these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Server URL, wss://HOST:PORT (or ws:// for a loopback test server).
    #[arg(long)]
    pub server: Option<String>,
    /// File holding a token the server allows these services (or set CULVERT_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Local address per service, in the order of the services: ADDR:PORT, or ADDR alone
    /// to pick a free port (printed). Default 127.0.0.1 with a free port.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Time to live, like 90s, 15m, 1h or 2d: then the listeners and their connections close.
    #[arg(long)]
    pub ttl: Option<String>,
    /// While the tunnel is down: `fail` refuses local connections at once; `direct` dials
    /// the address given by --direct (development only).
    #[arg(long, value_parser = ["fail", "direct"])]
    pub fallback: Option<String>,
    /// With --fallback direct: the service's own address, per service in order.
    #[arg(long)]
    pub direct: Vec<String>,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// HTTP proxy to reach the server through (CONNECT): http://[USER:PASSWORD@]HOST:PORT,
    /// or `none`. Default: HTTPS_PROXY from the environment, minus the hosts in NO_PROXY.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Admin listener serving the sessions to `culvert access list`.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// List the sessions of a running `culvert access` (service, address, TTL left, connections, bytes).
    List(AccessListArgs),
}

/// `culvert access list`.
#[derive(Debug, Args)]
pub struct AccessListArgs {
    /// Admin listener of the running `culvert access` (the address its --admin was given).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Admin listener of the server, agent or node: the ADDR given to its --admin (or
    /// `admin` in its TOML), as 127.0.0.1:PORT or http://127.0.0.1:PORT. Nothing listens
    /// unless that process was started with one, so there is no default.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl From<AccessListArgs> for StatusArgs {
    fn from(a: AccessListArgs) -> StatusArgs {
        StatusArgs {
            admin: a.admin,
            json: a.json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write a self-signed certificate and key (PEM) and print its SHA-256 fingerprint on
    /// stdout: a server's or node's identity that survives restarts. Peers pin the
    /// fingerprint (`--fingerprint`) or trust the certificate file (`--ca`).
    New {
        /// Certificate file to create (refuses to overwrite).
        #[arg(long)]
        cert: PathBuf,
        /// Key file to create, readable by its owner only (refuses to overwrite).
        #[arg(long)]
        key: PathBuf,
        /// Host names or IP addresses the certificate is for (repeatable).
        #[arg(long = "name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token: prints it once on stdout and stores only its SHA-256 hash.
    New {
        /// Name of the token (shown in logs and status instead of the token).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: TokenStoreArgs,
        /// Tenant the token belongs to (default: its own name). Its services are
        /// TENANT/NAME; it reaches its own tenant's services by bare name.
        #[arg(long)]
        tenant: Option<String>,
        /// What the token may do: agent (register services), access (reach services),
        /// node (have the server dial its allow-list). Repeatable or comma-separated.
        /// Default: the narrowest that fits the other flags (--access alone: access;
        /// otherwise agent, plus access with --access).
        #[arg(long = "role", value_name = "ROLE", value_delimiter = ',')]
        roles: Vec<culvert_server::Role>,
        /// A service this token may register (repeatable or comma-separated; all when absent).
        #[arg(long = "services", value_name = "NAME", value_delimiter = ',')]
        services: Vec<String>,
        /// Public ports this token may request, as PORT or FIRST-LAST (repeatable or
        /// comma-separated; the server's whole range when absent).
        #[arg(long = "ports", value_name = "RANGE", value_delimiter = ',')]
        ports: Vec<String>,
        /// An address or network (203.0.113.0/24, 2001:db8::/32) that may connect to this
        /// token's public ports, TCP and UDP (repeatable or comma-separated; anyone when
        /// absent).
        #[arg(long = "public-client", value_name = "CIDR", value_delimiter = ',')]
        public_clients: Vec<String>,
        /// Most services this token may hold at once (default 64).
        #[arg(long)]
        max_services: Option<usize>,
        /// A service of another tenant this token may reach through `culvert access` or a
        /// node tunnel: TENANT/NAME, TENANT/*, * (every service), or a bare NAME (that name
        /// in whichever tenant holds it). Repeatable. Its own tenant needs none.
        #[arg(long = "access", value_name = "SERVICE")]
        access: Vec<String>,
        /// Time to live (90s, 15m, 1h, 2d): then the server refuses the token and closes
        /// its sessions within a second, whatever the client does.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List the tokens of a file or cluster registry: name, tenant, roles and limits (never
    /// hashes).
    List {
        #[command(flatten)]
        store: TokenStoreArgs,
        /// One JSON object per token.
        #[arg(long)]
        json: bool,
    },
    /// Remove a token from the file (rewritten atomically) or the cluster registry; servers
    /// close the token's sessions on their next reload (a file: SIGHUP, or within 2 s of the
    /// change; a cluster: as soon as they are told of it).
    Revoke {
        /// Name of the token.
        name: String,
        #[command(flatten)]
        store: TokenStoreArgs,
    },
}

/// Where the `token` commands find the tokens: a token file, or a cluster's registry.
#[derive(Debug, Args, Default)]
pub struct TokenStoreArgs {
    /// Token file (created if missing by `token new`) [default: tokens.toml, unless
    /// --cluster is given].
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// A cluster's registry in PostgreSQL (postgres://USER@HOST/DB, as the servers'
    /// --cluster) instead of a token file.
    #[arg(
        long,
        env = "CULVERT_CLUSTER",
        value_name = "URL",
        hide_env_values = true
    )]
    pub cluster: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct ServerArgs {
    /// TOML config file; its `[server]` table holds the same settings as these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the tunnel endpoint (agents dial it) [default: 0.0.0.0:8443].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate and print its SHA-256 fingerprint (for agents'
    /// --fingerprint). A new one at each start, unless --tls-cert/--tls-key name where to
    /// keep it: written there the first time, read back afterwards.
    #[arg(long)]
    pub self_signed: bool,
    /// Serve plain ws:// without TLS (only allowed on a loopback listen address).
    #[arg(long)]
    pub insecure_plain: bool,
    /// Token file (hashes only), as written by `culvert token new` [default: tokens.toml].
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Public TCP ports to hand out, LOW-HIGH [default: 30000-31000].
    #[arg(long)]
    pub port_range: Option<String>,
    /// Public UDP ports to hand out, LOW-HIGH (defaults to the TCP range).
    #[arg(long)]
    pub udp_port_range: Option<String>,
    /// Address public listeners bind on [default: 0.0.0.0].
    #[arg(long)]
    pub public_bind: Option<IpAddr>,
    /// The L4 balancers in front of the public TCP ports (addresses or networks, repeatable
    /// or comma-separated): their connections begin with a PROXY header (v1 or v2) naming
    /// the client, for public_clients, logs and the agent's PROXY header to the backend;
    /// anyone else is a client by its own address.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub public_proxy_protocol_from: Vec<String>,
    /// The L4 balancers in front of the tunnel endpoint (as --public-proxy-protocol-from):
    /// the agent their PROXY header names is the address for the handshake caps, lockouts,
    /// logs and session lists.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub tunnel_proxy_protocol_from: Vec<String>,
    /// Seconds between heartbeats on agent connections; an agent silent for two is
    /// dropped, and one silent past one and a half gets no new streams [default: 10].
    #[arg(long, value_name = "SECS", value_parser = timer_secs(1))]
    pub heartbeat_interval: Option<u64>,
    /// Seconds a stream whose public end closed may keep unsent bytes while the agent's
    /// side reads none of them, before it is reset and they are freed (counted from the
    /// last bytes that went out, so a slow reader is never cut off) [default: 60].
    #[arg(long, value_name = "SECS", value_parser = timer_secs(1))]
    pub linger: Option<u64>,
    /// Admin listener (/metrics, /healthz, /readyz, /api/sessions); keep it on loopback.
    /// None by default.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Seconds streams in flight get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(long, value_name = "SECS", value_parser = timer_secs(0))]
    pub grace: Option<u64>,
    /// Tunnel connections one agent session (one client id) may hold; more are refused
    /// with "retry in 30 s" [default: 64, the largest agent pool].
    #[arg(long)]
    pub max_connections_per_session: Option<usize>,
    /// HTTP ingress address: callers reach HTTP services at /t/TENANT/SERVICE/… with a
    /// token of role http (TLS with the server's certificate; plain on loopback only).
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Also route https://SERVICE.TENANT.DOMAIN/… by host name.
    #[arg(long, value_name = "DOMAIN", requires = "http_listen")]
    pub http_domain: Option<String>,
    /// Header carrying the caller's token as is (default: Authorization: Bearer TOKEN), so
    /// callers can keep Authorization for the backend.
    #[arg(long, value_name = "HEADER", requires = "http_listen")]
    pub http_token_header: Option<String>,
    /// Caller connections the HTTP ingress holds at most, idle keep-alive and TLS
    /// handshakes included; past it a new one is closed at once [default: 4096].
    #[arg(long, value_name = "N", requires = "http_listen")]
    pub http_max_connections: Option<usize>,
    /// Caller connections the HTTP ingress holds at most from one address (IPv6: its /64)
    /// [default: 256].
    #[arg(long, value_name = "N", requires = "http_listen")]
    pub http_max_connections_per_address: Option<usize>,
    /// Every HTTP ingress connection begins with a PROXY protocol header (v1 or v2) from the
    /// L4 balancer in front, naming the caller for limits, lockouts, X-Forwarded-For and
    /// logs; a connection without one is closed. Only when nothing else reaches the
    /// ingress, or with --http-proxy-protocol-from.
    #[arg(long, requires = "http_listen")]
    pub http_proxy_protocol: bool,
    /// The balancers (addresses or networks, repeatable or comma-separated): only their
    /// connections carry a PROXY header; anyone else is a direct caller known by its own
    /// address, who cannot claim another's [default: every peer is a balancer].
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        requires = "http_proxy_protocol"
    )]
    pub http_proxy_protocol_from: Vec<String>,
    /// Join a cluster of servers sharing one registry in this PostgreSQL database
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DB): tokens, port leases and which server
    /// holds which agent live there, and --tokens is not read.
    #[arg(
        long,
        value_name = "URL",
        env = "CULVERT_CLUSTER",
        hide_env_values = true
    )]
    pub cluster: Option<String>,
    /// This server's id in the cluster, unique among its servers [default: the host name].
    #[arg(long, value_name = "ID", requires = "cluster")]
    pub cluster_id: Option<String>,
    /// Tunnel endpoint URL the other servers of the cluster dial to reach this one's agents
    /// (wss://HOST:PORT; ws:// only on loopback) [default: from --listen].
    #[arg(long, value_name = "URL", requires = "cluster")]
    pub cluster_advertise: Option<String>,
    /// Heartbeat of this server in the cluster's database (2s, 500ms); a server silent for
    /// two is taken for dead and its agents' services are served by the others [default: 2s].
    #[arg(long, value_name = "DURATION", requires = "cluster")]
    pub cluster_heartbeat: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args, Default)]
pub struct AgentArgs {
    /// TOML config file; its `[agent]` table holds the same settings as these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Server URL, wss://HOST:PORT (or ws:// for a loopback test server). Repeat it for
    /// the servers of a cluster: the pool spreads over them (connection i on server
    /// i mod n, at least one per server), a connection whose server fails moves to the
    /// next one at once (backing off only when all failed in a row), and returns to its
    /// own server when that answers again (checked every --home-probe-interval).
    #[arg(long = "server", value_name = "URL")]
    pub server: Vec<String>,
    /// File holding the token (or set CULVERT_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A service to expose: NAME=tcp://HOST:PORT[@PUBLIC_PORT][?proxy=v1|v2][&private]. Repeatable.
    #[arg(long = "expose")]
    pub expose: Vec<String>,
    /// Expose every service privately: no public port; reachable only through
    /// `culvert access` and node tunnels whose token the server allows it.
    #[arg(long)]
    pub private: bool,
    /// Also expose a built-in bench service for `culvert bench --target`: NAME (TCP) and
    /// NAME-udp (UDP), served by this process on 127.0.0.1. Off by default.
    #[arg(long, value_name = "NAME")]
    pub bench_service: Option<String>,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// WebSocket connections to keep open, 1 to 64 (streams spread across them)
    /// [default: 4]. With several --server, at least one per server.
    #[arg(long)]
    pub pool: Option<usize>,
    /// Seconds between checks, by a connection that failed over to another server,
    /// whether its own server answers again (then it moves back); 0 never [default: 30].
    #[arg(long, value_name = "SECS", value_parser = timer_secs(0))]
    pub home_probe_interval: Option<u64>,
    /// HTTP proxy to reach the server through (CONNECT): http://[USER:PASSWORD@]HOST:PORT,
    /// or `none`. Default: HTTPS_PROXY from the environment, minus the hosts in NO_PROXY.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Mask every WebSocket frame (RFC 6455's client masking). By default the agent asks
    /// the server for unmasked frames, which saves a copy of every byte; use this when a
    /// proxy on the way inspects WebSocket frames and insists on masking.
    #[arg(long)]
    pub ws_mask: bool,
    /// Seconds between heartbeats; a dead server is noticed within two [default: 10].
    #[arg(long, value_name = "SECS", value_parser = timer_secs(1))]
    pub heartbeat_interval: Option<u64>,
    /// Seconds a stream whose service closed its end may keep unsent bytes while the
    /// server's side reads none of them, before it is reset and they are freed (counted
    /// from the last bytes that went out, so a slow reader is never cut off) [default: 60].
    #[arg(long, value_name = "SECS", value_parser = timer_secs(1))]
    pub linger: Option<u64>,
    /// Admin listener (/metrics, /healthz, /readyz, /api/sessions); keep it on loopback.
    /// None by default.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Seconds streams in flight get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(long, value_name = "SECS", value_parser = timer_secs(0))]
    pub grace: Option<u64>,
    /// Exit non-zero at the first permanent error (refused token, untrusted or mismatched
    /// server certificate, ws:// against TLS, refused port) instead of retrying it every
    /// longest backoff (60 s): for supervisors (systemd, Kubernetes) that should see it.
    #[arg(long)]
    pub exit_on_auth_failure: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Do one echo round trip through the tunnel, print the result and exit.
    #[arg(long)]
    pub self_test: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// How a dialing command trusts the server's certificate.
#[derive(Debug, Args, Default)]
pub struct VerifyArgs {
    /// Trust only server certificates issued by the CA(s) in this PEM file.
    #[arg(long, conflicts_with_all = ["fingerprint", "insecure_skip_verify"])]
    pub ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint. Repeatable:
    /// a server presenting any of them is trusted (a cluster of self-signed servers).
    #[arg(long, value_name = "SHA256", conflicts_with = "insecure_skip_verify")]
    pub fingerprint: Vec<String>,
    /// Do not verify the server at all (tests only; logs a loud warning).
    #[arg(long)]
    pub insecure_skip_verify: bool,
}
