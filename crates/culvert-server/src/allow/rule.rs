//! One allow-list rule: a network (by `ipnet`) or a host name, and a port range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

use super::parse::{check_host_name, parse_ports, parse_prefix, quoted, split_host_port};
use super::{canonical_ip, AllowError};

/// One allow-list entry: which addresses (or host name) and ports a peer may have dialled.
///
/// Parsed from strings such as:
///
/// ```text
/// 127.0.0.1:5432               one address, one port
/// 10.0.0.0/8:5432              an IPv4 CIDR block, one port
/// [::1]:5432, [fd00::/8]:80    IPv6 (brackets required), optionally CIDR
/// db.internal:5432             a host name: resolved at check time; allowed if the requested
///                              target resolves to an address the name also resolves to
/// 127.0.0.1:5000-5100          a port range (inclusive), on any of the forms above
/// 127.0.0.1:*                  any port
/// ```
///
/// Port 0 is never allowed, CIDR blocks must have their host bits clear, and IPv4-mapped
/// IPv6 rules (`[::ffff:10.0.0.0/104]`) are stored as IPv4. `Display` gives the canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub(super) host: RuleHost,
    pub(super) ports: Ports,
}

/// What a rule matches on the address side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RuleHost {
    /// A network with its host bits zero; one address has a full-length prefix. Never an
    /// IPv4-mapped IPv6 network of prefix /96 or longer (those are stored as IPv4).
    Net(IpNet),
    /// A lowercase host name, resolved when a target is checked.
    Name(String),
}

/// An inclusive port range; never includes port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ports {
    pub(super) lo: u16,
    pub(super) hi: u16,
}

impl Ports {
    pub(super) const ANY: Ports = Ports {
        lo: 1,
        hi: u16::MAX,
    };

    pub(super) fn contains(self, port: u16) -> bool {
        port != 0 && self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Ports::ANY {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl AllowRule {
    /// Whether this rule allows `addr` (already canonical) without any name resolution.
    pub(super) fn allows_ip(&self, addr: SocketAddr) -> bool {
        match self.host {
            // Compared in canonical form; a network of the other family holds nothing.
            RuleHost::Net(net) => {
                self.ports.contains(addr.port()) && net.contains(&canonical_ip(addr.ip()))
            }
            RuleHost::Name(_) => false,
        }
    }
}

impl FromStr for AllowRule {
    type Err = AllowError;

    fn from_str(s: &str) -> Result<AllowRule, AllowError> {
        let entry = s.trim();
        parse_rule(entry).map_err(|reason| AllowError::BadRule {
            entry: entry.to_string(),
            reason,
        })
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            // One address is shown without its full-length prefix.
            RuleHost::Net(IpNet::V4(n)) if n.prefix_len() == 32 => write!(f, "{}", n.addr())?,
            RuleHost::Net(IpNet::V4(n)) => write!(f, "{n}")?,
            RuleHost::Net(IpNet::V6(n)) if n.prefix_len() == 128 => write!(f, "[{}]", n.addr())?,
            RuleHost::Net(IpNet::V6(n)) => write!(f, "[{n}]")?,
            RuleHost::Name(name) => f.write_str(name)?,
        }
        write!(f, ":{}", self.ports)
    }
}

/// Builds a network rule host, checking the prefix and host bits and storing IPv4-mapped
/// IPv6 networks as IPv4.
fn make_net(addr: IpAddr, prefix: u8) -> Result<RuleHost, String> {
    let net =
        IpNet::new(addr, prefix).map_err(|_| format!("prefix length /{prefix} is out of range"))?;
    let masked = net.network();
    if masked != addr {
        return Err(format!(
            "{addr}/{prefix} has host bits set; the network is {masked}/{prefix}"
        ));
    }
    if let IpAddr::V6(a) = addr {
        if let Some(v4) = a.to_ipv4_mapped().filter(|_| prefix >= 96) {
            let v4 = Ipv4Net::new(v4, prefix - 96)
                .map_err(|_| format!("prefix length /{prefix} is out of range"))?;
            return Ok(RuleHost::Net(IpNet::V4(v4)));
        }
    }
    Ok(RuleHost::Net(net))
}

/// Parses a trimmed rule entry, returning the reason it is bad on failure.
pub(super) fn parse_rule(entry: &str) -> Result<AllowRule, String> {
    let (host, port, bracketed) = split_host_port(entry)?;
    let ports = parse_ports(port)?;
    let host = if let Some((addr, prefix)) = host.split_once('/') {
        if bracketed {
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("invalid IPv6 network address {}", quoted(addr)))?;
            make_net(IpAddr::V6(addr), parse_prefix(prefix, 128, "IPv6")?)?
        } else {
            let addr: Ipv4Addr = addr.parse().map_err(|_| {
                format!(
                    "invalid IPv4 network address {} (CIDR blocks need an IP address)",
                    quoted(addr)
                )
            })?;
            make_net(IpAddr::V4(addr), parse_prefix(prefix, 32, "IPv4")?)?
        }
    } else if bracketed {
        let addr: Ipv6Addr = host.parse().map_err(|_| {
            format!(
                "invalid IPv6 address {} (brackets are only for IPv6)",
                quoted(host)
            )
        })?;
        make_net(IpAddr::V6(addr), 128)?
    } else if let Ok(addr) = host.parse::<Ipv4Addr>() {
        make_net(IpAddr::V4(addr), 32)?
    } else {
        check_host_name(host)?;
        RuleHost::Name(host.to_ascii_lowercase())
    };
    Ok(AllowRule { host, ports })
}
