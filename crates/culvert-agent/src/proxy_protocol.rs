//! PROXY protocol headers (HAProxy's `proxy-protocol.txt`, versions 1 and 2) that the agent
//! writes to a backend before the first byte of a tunneled connection, so the private service
//! learns the public client's address.
//!
//! Pure functions over addresses: no I/O. Only what a TCP relay needs is built (v1 `TCP4`,
//! `TCP6` and `UNKNOWN`; v2 `PROXY` over `TCP4`/`TCP6` and `LOCAL`), with no TLVs.
//!
//! **Addresses carried.** The *source* is the public client, as the server reports it in
//! `Connect` (`client_addr`). The *destination* is the backend target address the agent
//! dialed (the peer address of the agent's socket towards the service), not the server's
//! public listener: the agent does not know which local address and port the client reached
//! on the server (it knows the public port only, and not the server's address as the client
//! saw it). So a backend reading the header sees "client → this service", which is what it
//! would have seen had the client connected directly.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Which PROXY protocol version a service's backend expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The human-readable text line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyVersion, String> {
        match s {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            _ => Err(format!("unknown PROXY protocol version {s:?} (v1 or v2)")),
        }
    }
}

impl fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        })
    }
}

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Version 2, command `LOCAL` (no relayed addresses).
const V2_LOCAL: u8 = 0x20;
/// Version 2, command `PROXY`.
const V2_PROXY: u8 = 0x21;
/// `AF_UNSPEC`, unspecified transport.
const V2_UNSPEC: u8 = 0x00;
/// `AF_INET`, `STREAM`.
const V2_TCP4: u8 = 0x11;
/// `AF_INET6`, `STREAM`.
const V2_TCP6: u8 = 0x21;

/// Both ends in one address family, as both header versions require. IPv4-mapped IPv6
/// addresses count as IPv4; when one end is IPv4 and the other IPv6, the IPv4 one is written
/// as an IPv4-mapped IPv6 address. `None` when either end is unknown.
fn same_family(
    src: Option<SocketAddr>,
    dst: Option<SocketAddr>,
) -> Option<(SocketAddr, SocketAddr)> {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src?), canon(dst?));
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    Some(if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    })
}

/// The version 1 line for a TCP connection from `src` to `dst`: `PROXY TCP4 SRC DST SPORT
/// DPORT\r\n` (or `TCP6`), or `PROXY UNKNOWN\r\n` when either address is unknown.
pub fn v1_header(src: Option<SocketAddr>, dst: Option<SocketAddr>) -> Vec<u8> {
    match same_family(src, dst) {
        Some((s, d)) => {
            let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes()
        }
        None => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

/// The version 2 header for a TCP connection from `src` to `dst`: command `PROXY` over
/// `TCP4` (12 address bytes) or `TCP6` (36), or, when either address is unknown, command
/// `LOCAL` with family `UNSPEC` and no address block (the backend then uses the real
/// endpoints of its connection).
pub fn v2_header(src: Option<SocketAddr>, dst: Option<SocketAddr>) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    let Some((s, d)) = same_family(src, dst) else {
        h.extend_from_slice(&[V2_LOCAL, V2_UNSPEC, 0, 0]);
        return h;
    };
    h.push(V2_PROXY);
    match (s.ip(), d.ip()) {
        (IpAddr::V4(si), IpAddr::V4(di)) => {
            h.push(V2_TCP4);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&si.octets());
            h.extend_from_slice(&di.octets());
        }
        (IpAddr::V6(si), IpAddr::V6(di)) => {
            h.push(V2_TCP6);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&si.octets());
            h.extend_from_slice(&di.octets());
        }
        _ => unreachable!("same_family returns one family"),
    }
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// The header of `version` for a client at `client_addr` (as the server wrote it in
/// `Connect`, e.g. `1.2.3.4:5678` or `[::1]:5678`; unparsable means unknown) reaching the
/// backend at `backend` (the target address the agent dialed; see the module docs).
pub fn header(version: ProxyVersion, client_addr: &str, backend: Option<SocketAddr>) -> Vec<u8> {
    let src = client_addr.parse::<SocketAddr>().ok();
    match version {
        ProxyVersion::V1 => v1_header(src, backend),
        ProxyVersion::V2 => v2_header(src, backend),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    // ---- version 1 (spec section 2.1) ----

    #[test]
    fn v1_spec_example_tcp4() {
        assert_eq!(
            v1_header(a("192.168.0.1:56324"), a("192.168.0.11:443")),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
    }

    #[test]
    fn v1_spec_worst_cases() {
        let h = v1_header(a("255.255.255.255:65535"), a("255.255.255.255:65535"));
        assert_eq!(
            h,
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(h.len(), 56);
        let all = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let h = v1_header(a(all), a(all));
        assert_eq!(
            h,
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
              ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert_eq!(h.len(), 104);
        // The longest line the spec allows, CRLF included.
        assert!(h.len() <= 107);
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        assert_eq!(
            v1_header(a("[::1]:56324"), a("[::1]:443")),
            b"PROXY TCP6 ::1 ::1 56324 443\r\n"
        );
        assert_eq!(v1_header(None, a("127.0.0.1:80")), b"PROXY UNKNOWN\r\n");
        assert_eq!(v1_header(a("127.0.0.1:80"), None), b"PROXY UNKNOWN\r\n");
        assert_eq!(
            header(ProxyVersion::V1, "not an address", a("127.0.0.1:80")),
            b"PROXY UNKNOWN\r\n"
        );
        assert_eq!(header(ProxyVersion::V1, "", None), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v1_mixed_families() {
        // An IPv4-mapped client is written as IPv4.
        assert_eq!(
            v1_header(a("[::ffff:1.2.3.4]:5678"), a("10.0.0.5:80")),
            b"PROXY TCP4 1.2.3.4 10.0.0.5 5678 80\r\n"
        );
        // IPv4 client, IPv6 backend: both as IPv6.
        assert_eq!(
            v1_header(a("1.2.3.4:5678"), a("[::1]:22")),
            b"PROXY TCP6 ::ffff:1.2.3.4 ::1 5678 22\r\n"
        );
    }

    #[test]
    fn server_client_addr_formats() {
        // What the server writes: `SocketAddr::to_string()`.
        for s in ["1.2.3.4:5678", "[::1]:5678", "[2001:db8::1]:1"] {
            let addr: SocketAddr = s.parse().unwrap();
            assert_eq!(addr.to_string(), s);
            assert!(header(ProxyVersion::V1, s, a("127.0.0.1:1")).starts_with(b"PROXY TCP"));
        }
    }

    // ---- version 2 (spec section 2.2) ----

    #[test]
    fn v2_tcp4() {
        let h = v2_header(a("192.168.0.1:56324"), a("192.168.0.11:443"));
        let expected: [u8; 28] = [
            // signature
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            // version 2, command PROXY; AF_INET, STREAM; 12 address bytes
            0x21, 0x11, 0x00, 0x0C, //
            // src 192.168.0.1, dst 192.168.0.11
            192, 168, 0, 1, 192, 168, 0, 11, //
            // src port 56324 (0xDC04), dst port 443 (0x01BB)
            0xDC, 0x04, 0x01, 0xBB,
        ];
        assert_eq!(h, expected);
        assert_eq!(
            header(ProxyVersion::V2, "192.168.0.1:56324", a("192.168.0.11:443")),
            expected
        );
    }

    #[test]
    fn v2_tcp6() {
        let h = v2_header(a("[2001:db8::1]:56324"), a("[::1]:443"));
        let mut expected = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, //
            // version 2, command PROXY; AF_INET6, STREAM; 36 address bytes
            0x21, 0x21, 0x00, 0x24,
        ];
        expected.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // 2001:db8::1
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // ::1
            0xDC, 0x04, 0x01, 0xBB,
        ]);
        assert_eq!(h, expected);
        assert_eq!(h.len(), 16 + 36);
    }

    #[test]
    fn v2_unknown_is_local_unspec() {
        let expected: [u8; 16] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, //
            0x20, 0x00, 0x00, 0x00,
        ];
        assert_eq!(v2_header(None, a("127.0.0.1:80")), expected);
        assert_eq!(
            header(ProxyVersion::V2, "garbage", a("127.0.0.1:80")),
            expected
        );
        assert_eq!(header(ProxyVersion::V2, "1.2.3.4:5", None), expected);
    }

    #[test]
    fn v2_mixed_families() {
        // IPv4 client, IPv6 backend: both written as IPv6, the client IPv4-mapped.
        let h = v2_header(a("1.2.3.4:5678"), a("[::1]:22"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(
            &h[16..32],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]
        );
        // An IPv4-mapped client with an IPv4 backend: plain IPv4.
        let h = v2_header(a("[::ffff:1.2.3.4]:5678"), a("10.0.0.5:80"));
        assert_eq!(
            &h[12..],
            &[0x21, 0x11, 0, 12, 1, 2, 3, 4, 10, 0, 0, 5, 0x16, 0x2E, 0, 80]
        );
    }

    #[test]
    fn version_parsing() {
        assert_eq!("v1".parse::<ProxyVersion>(), Ok(ProxyVersion::V1));
        assert_eq!("v2".parse::<ProxyVersion>(), Ok(ProxyVersion::V2));
        assert!("v3".parse::<ProxyVersion>().is_err());
        assert_eq!(ProxyVersion::V2.to_string(), "v2");
    }
}
