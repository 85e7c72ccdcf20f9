//! Address lists in the configuration (a token's `public_clients`, the ingress's
//! balancers): each entry an address or a network, read one way everywhere.

/// Whether `ip` is in one of `nets` (an IPv4-mapped IPv6 address as its IPv4 address).
pub(crate) fn contains(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// Parses `203.0.113.0/24`, `2001:db8::/48` or a bare address (a network of one); host
/// bits past the prefix are dropped. The error names the entry, for the operator.
pub fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            format!(
                "{} is neither an address nor a network like 203.0.113.0/24",
                crate::names::escape(s)
            )
        })
}
