//! Server settings.

use std::net::SocketAddr;
use std::time::Duration;

/// An inclusive range of ports, as in `30000-31000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Whether `p` lies in the range.
    pub fn contains(&self, p: u16) -> bool {
        (self.start..=self.end).contains(&p)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let start: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("bad port range {s:?}"))?;
        let end: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("bad port range {s:?}"))?;
        if start == 0 || end < start {
            return Err(format!(
                "bad port range {s:?}: want LOW-HIGH with 0 < LOW <= HIGH"
            ));
        }
        Ok(PortRange { start, end })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Control (tunnel) listen address.
    pub listen: SocketAddr,
    /// Address public listeners bind on (the port comes from the range).
    pub public_bind: std::net::IpAddr,
    /// The L4 balancers in front of the public TCP ports: a connection from one of these
    /// begins with a PROXY protocol header (v1 or v2) naming the client, who is then the
    /// client for `public_clients`, logs and the agent's own PROXY header to the backend.
    /// Anyone else is a client by its own address. Empty (the default): no header read.
    pub public_proxy_protocol_from: Vec<ipnet::IpNet>,
    /// The same for the tunnel endpoint: an agent connection from one of these balancers
    /// begins with a PROXY header, and the agent it names is the address the handshake
    /// caps, lockouts, logs and session lists use. Empty (the default): no header read.
    pub tunnel_proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Ports handed to TCP services.
    pub tcp_ports: PortRange,
    /// Ports handed to UDP services.
    pub udp_ports: PortRange,
    /// One deadline for TCP accept, TLS, WebSocket upgrade and Auth. 10 s: generous for a
    /// slow link, short enough that stalled handshakes cannot pile up. With more than half
    /// of `max_handshakes` in progress, new handshakes get a quarter of it (at least 1 s).
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once, from everyone. When full, a new one sheds the oldest
    /// handshake of the address holding the most (never refused itself).
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one address (IPv6: one /64). When full, a new
    /// one from that address sheds its oldest.
    pub max_handshakes_per_ip: usize,
    /// Failed Auths one address (IPv6: one /64) may make within the window before it is
    /// locked out: 1 s at first, doubling with each later failure, at most the window. A
    /// client id is locked out after 4 failures the same way, so one agent with a wrong
    /// token does not lock out the others behind its address.
    pub max_auth_failures: u32,
    /// The window of `max_auth_failures`, and the longest lockout.
    pub auth_failure_window: Duration,
    /// Multiplexer settings of every agent connection.
    pub proto: culvert_proto::Config,
    /// A UDP flow (one client address on one public port) with no traffic for this long is
    /// forgotten. 60 s outlives typical DNS, game and VPN keepalive gaps.
    pub udp_idle_timeout: Duration,
    /// UDP flows one service may hold; new client addresses beyond it are dropped (counted),
    /// so a flood of spoofed sources cannot grow memory, while existing flows keep working.
    pub udp_max_flows_per_service: usize,
    /// UDP flows one agent session may hold across its services.
    pub udp_max_flows_per_session: usize,
    /// UDP flows the services of one token may hold across all its sessions, unless its
    /// entry sets `max_udp_flows`: many sessions of one token cannot multiply the above.
    pub udp_max_flows_per_token: usize,
    /// Tunnel connections one agent session (one client id) may hold; more are refused
    /// with AuthFail "... retry in 30 s". 64: the largest pool an agent opens.
    pub max_connections_per_session: usize,
    /// Tunnel connections one token may hold across all its sessions, unless its entry
    /// sets `max_connections`: a new client id per connection gains nothing.
    pub max_connections_per_token: usize,
    /// Largest datagram relayed; larger ones are dropped and counted, never split. The
    /// default is what one frame carries for any flow id.
    pub udp_max_datagram: usize,
    /// `HOST:PORT` targets peers may ask this server (as a node) to dial, checked after
    /// name resolution. Empty, the default: dial nothing, so a server is never an open proxy.
    pub allow_dial: crate::allow::AllowList,
    /// Deadline for resolving and connecting such a target.
    pub dial_timeout: Duration,
    /// The HTTP ingress (`--http-listen`): HTTP services called by name. Off when `None`.
    pub http: Option<crate::HttpIngressConfig>,
    /// The cluster this server belongs to (`--cluster`): tokens, port leases and presence
    /// in PostgreSQL, shared with the other servers. `None`: a registry in memory.
    pub cluster: Option<crate::ClusterConfig>,
}

impl ServerConfig {
    /// Defaults for a server on `listen` with TCP ports from `tcp_ports`.
    pub fn new(listen: SocketAddr, tcp_ports: PortRange) -> ServerConfig {
        ServerConfig {
            listen,
            public_bind: std::net::IpAddr::from([0, 0, 0, 0]),
            public_proxy_protocol_from: Vec::new(),
            tunnel_proxy_protocol_from: Vec::new(),
            tcp_ports,
            udp_ports: tcp_ports,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            max_handshakes_per_ip: 16,
            max_auth_failures: 10,
            auth_failure_window: Duration::from_secs(60),
            proto: culvert_proto::Config::default(),
            udp_idle_timeout: Duration::from_secs(60),
            udp_max_flows_per_service: 4096,
            udp_max_flows_per_session: 16_384,
            udp_max_flows_per_token: 16_384,
            max_connections_per_session: 64,
            max_connections_per_token: 256,
            udp_max_datagram: culvert_proto::MAX_PAYLOAD_LEN - 8,
            allow_dial: Default::default(),
            dial_timeout: Duration::from_secs(10),
            http: None,
            cluster: None,
        }
    }
}
