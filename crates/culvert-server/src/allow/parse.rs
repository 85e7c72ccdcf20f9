//! The text forms of rules and targets: `HOST:PORT`, `[IPv6]:PORT`, ports and port
//! ranges, CIDR prefix lengths and host names, with a reason for what is wrong.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::rule::Ports;

/// Most characters of a peer- or config-supplied fragment echoed back in an error message.
pub(super) const MAX_ECHO: usize = 256;

/// `s` quoted and escaped for an error message, shortened if very long.
pub(super) fn quoted(s: &str) -> String {
    if s.chars().count() > MAX_ECHO {
        let head: String = s.chars().take(MAX_ECHO).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

/// Splits `HOST:PORT` or `[HOST]:PORT` into host, port text and whether brackets were used.
pub(super) fn split_host_port(s: &str) -> Result<(&str, &str, bool), String> {
    if s.is_empty() {
        return Err("empty (expected HOST:PORT)".to_string());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after the IPv6 address".to_string())?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => {
                return Err("missing port (expected [IPv6]:PORT, e.g. [::1]:5432)".to_string())
            }
            None => return Err(format!("expected ':' after ']', found {}", quoted(after))),
        };
        if inside.is_empty() {
            return Err("missing address inside '[]'".to_string());
        }
        return Ok((inside, port, true));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "missing port (expected HOST:PORT, e.g. 127.0.0.1:5432)".to_string())?;
    if host.contains(':') {
        return Err("IPv6 addresses must be in brackets, e.g. [::1]:5432".to_string());
    }
    if host.is_empty() {
        return Err("missing host before ':'".to_string());
    }
    Ok((host, port, false))
}

/// Parses one port, 1 to 65535.
pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("missing port".to_string());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {}", quoted(s)));
    }
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed (ports are 1 to 65535)".to_string()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!(
            "port {} is out of range (ports are 1 to 65535)",
            quoted(s)
        )),
    }
}

/// Parses a rule's port part: `*`, `N` or `LO-HI`.
pub(super) fn parse_ports(s: &str) -> Result<Ports, String> {
    if s == "*" {
        return Ok(Ports::ANY);
    }
    if let Some((lo, hi)) = s.split_once('-') {
        if lo.is_empty() || hi.is_empty() {
            return Err(format!(
                "incomplete port range {} (expected LO-HI, e.g. 5000-5100)",
                quoted(s)
            ));
        }
        let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
        if lo > hi {
            return Err(format!(
                "port range {lo}-{hi} is backwards (start exceeds end)"
            ));
        }
        return Ok(Ports { lo, hi });
    }
    let port = parse_port(s)?;
    Ok(Ports { lo: port, hi: port })
}

/// Parses a CIDR prefix length, at most `max`.
pub(super) fn parse_prefix(s: &str, max: u8, family: &str) -> Result<u8, String> {
    if s.is_empty() {
        return Err("missing prefix length after '/'".to_string());
    }
    if s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid prefix length {}", quoted(s)));
    }
    match s.parse::<u8>() {
        Ok(prefix) if prefix <= max => Ok(prefix),
        _ => Err(format!(
            "{family} prefix length /{s} is out of range (must be /0 to /{max})"
        )),
    }
}

/// Checks that `name` is a plausible DNS host name (letters, digits, '-', '_', dots).
pub(super) fn check_host_name(name: &str) -> Result<(), String> {
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.is_empty() {
        return Err("empty host name".to_string());
    }
    if body.len() > 253 {
        return Err("host name is longer than 253 characters".to_string());
    }
    let mut last = "";
    for label in body.split('.') {
        if label.is_empty() {
            return Err(format!("host name {} has an empty label", quoted(name)));
        }
        if label.len() > 63 {
            return Err(format!(
                "host name {} has a label longer than 63 characters",
                quoted(name)
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "host name {} contains invalid character {c:?}",
                quoted(name)
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "host name {} has a label starting or ending with '-'",
                quoted(name)
            ));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{} is neither a valid IPv4 address nor a host name",
            quoted(name)
        ));
    }
    Ok(())
}

/// A syntactically valid dial target.
pub(super) enum Target {
    /// An IP literal: no resolution needed.
    Addr(SocketAddr),
    /// A host name (lowercase) and port, to be resolved.
    Name(String, u16),
}

/// Parses a trimmed target, returning the reason it is bad on failure.
pub(super) fn parse_target(target: &str) -> Result<Target, String> {
    let (host, port, bracketed) = split_host_port(target)?;
    let port = parse_port(port)?;
    if bracketed {
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("invalid IPv6 address {}", quoted(host)))?;
        return Ok(Target::Addr(SocketAddr::new(IpAddr::V6(ip), port)));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Target::Addr(SocketAddr::new(IpAddr::V4(ip), port)));
    }
    check_host_name(host)?;
    Ok(Target::Name(host.to_ascii_lowercase(), port))
}
