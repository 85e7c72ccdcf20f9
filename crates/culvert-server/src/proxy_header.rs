//! The PROXY protocol header (v1 text or v2 binary) that an L4 balancer in front of the
//! HTTP ingress writes before a caller's first byte, so the ingress learns the caller's
//! address instead of the balancer's: for the connection limits, lockouts,
//! `X-Forwarded-For` and the access log.
//!
//! Exactly the header is consumed, nothing past it (the caller's TLS or HTTP bytes stay in
//! the socket): a v1 line is peeked whole and then read, a v2 header read by its length.
//! Parsing is the `ppp` crate's; every read is bounded in size here and in time by the
//! caller.

use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header taken: a v1 line is at most 107 bytes; a v2 header is 16 bytes and
/// its addresses (36 for IPv6) plus TLVs, which balancers keep small.
pub(crate) const MAX_HEADER: usize = 1024;
/// The v2 signature (PROXY protocol §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// The connection did not begin with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that does not parse, or is longer than [`MAX_HEADER`].
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// The socket failed or closed first.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `tcp` and returns the caller's address it names:
/// `None` for a header that names none (v1 `UNKNOWN`, v2 `LOCAL` such as a balancer's
/// health check, or a non-IP family), in which case the socket's peer stands.
pub(crate) async fn read(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // Both versions begin with at least five fixed bytes, which tell them apart; a
    // connection that begins otherwise is refused, so consuming them costs nothing.
    let mut first = [0u8; 5];
    tcp.read_exact(&mut first).await?;
    let header = if &first == b"PROXY" {
        read_v1(tcp).await?
    } else if first == V2_SIGNATURE[..5] {
        read_v2(tcp, first).await?
    } else {
        return Err(ProxyHeaderError::Missing);
    };
    parse(&header)
}

/// The client a balancer's connection names in its PROXY header, read within `limit`:
/// `balancer` itself for a header that names none (a health check). `Err` holds the
/// reason, for the caller's count and log, when no valid header comes in time.
pub(crate) async fn client_within(
    tcp: &mut TcpStream,
    balancer: SocketAddr,
    limit: std::time::Duration,
) -> Result<SocketAddr, String> {
    match tokio::time::timeout(limit, read(tcp)).await {
        Ok(Ok(client)) => Ok(client.unwrap_or(balancer)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no PROXY protocol header within {limit:?}")),
    }
}

/// The rest of a v1 line after its `PROXY`, through its `\r\n`: peeked whole (balancers
/// write it in one segment), then read; a line that arrives in pieces is read a byte at a
/// time.
async fn read_v1(tcp: &mut TcpStream) -> Result<Vec<u8>, ProxyHeaderError> {
    const MAX_V1: usize = 107;
    let mut line = b"PROXY".to_vec();
    let mut buf = [0u8; MAX_V1 - 5];
    let n = tcp.peek(&mut buf).await?;
    if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
        let mut rest = vec![0u8; end + 2];
        tcp.read_exact(&mut rest).await?;
        line.extend_from_slice(&rest);
        return Ok(line);
    }
    while !line.ends_with(b"\r\n") {
        if line.len() >= MAX_V1 {
            return Err(ProxyHeaderError::Malformed(format!(
                "a v1 line longer than {MAX_V1} bytes"
            )));
        }
        line.push(tcp.read_u8().await?);
    }
    Ok(line)
}

/// A v2 header: 16 bytes, then the length its last two give.
async fn read_v2(tcp: &mut TcpStream, first: [u8; 5]) -> Result<Vec<u8>, ProxyHeaderError> {
    let mut header = vec![0u8; 16];
    header[..5].copy_from_slice(&first);
    tcp.read_exact(&mut header[5..]).await?;
    if &header[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if 16 + len > MAX_HEADER {
        return Err(ProxyHeaderError::Malformed(format!(
            "a v2 header of {} bytes, more than {MAX_HEADER}",
            16 + len
        )));
    }
    header.resize(16 + len, 0);
    tcp.read_exact(&mut header[16..]).await?;
    Ok(header)
}

/// The caller's address a whole header names (see [`read`]).
pub(crate) fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ppp::{v1, v2, HeaderResult};
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            (v2::Command::Proxy, _) => None,
        }),
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn both_versions_name_the_caller() {
        assert_eq!(
            parse(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n").unwrap(),
            Some("203.0.113.7:51000".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n").unwrap(),
            Some("[2001:db8::7]:51000".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), None);
        let ipv4 = [203, 0, 113, 7, 192, 0, 2, 1, 0xc7, 0x38, 0x01, 0xbb];
        assert_eq!(
            parse(&v2(1, 0x11, &ipv4)).unwrap(),
            Some("203.0.113.7:51000".parse().unwrap())
        );
        // LOCAL: a balancer's own health check; the socket's peer stands.
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap(), None);
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 192.0.2.1 51000\r\n"[..],
            b"PROXY TCP4 999.0.113.7 192.0.2.1 51000 443\r\n",
            b"PROXY TCP9 a b 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A v2 header whose length claims more addresses than it carries.
        let mut short = v2(1, 0x11, &[1, 2, 3, 4]);
        short[15] = 12;
        assert!(parse(&short).is_err());
    }

    proptest::proptest! {
        /// Whatever a peer writes after either version's opening, parsing answers with an
        /// address or an error, never a panic (the header parser is a dependency's).
        #[test]
        fn any_header_parses_or_is_refused(
            v1 in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..110),
            v2_body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            command in 0u8..=255,
            family in 0u8..=255,
            claimed in 0u16..=120,
        ) {
            let mut line = b"PROXY ".to_vec();
            line.extend_from_slice(&v1);
            line.extend_from_slice(b"\r\n");
            let _ = parse(&line);
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[command, family]);
            h.extend_from_slice(&claimed.to_be_bytes());
            h.extend_from_slice(&v2_body);
            let _ = parse(&h);
        }
    }

    /// Over a real socket: exactly the header is consumed, and what follows it is left.
    #[tokio::test]
    async fn exactly_the_header_is_consumed() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let ipv6 = {
            let mut a = Vec::new();
            a.extend_from_slice(
                &"2001:db8::7"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            a.extend_from_slice(
                &"2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            a.extend_from_slice(&[0xc7, 0x38, 0x01, 0xbb]);
            a
        };
        let cases: Vec<(Vec<u8>, Option<SocketAddr>)> = vec![
            (
                b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n".to_vec(),
                Some("203.0.113.7:51000".parse().unwrap()),
            ),
            (
                v2(1, 0x21, &ipv6),
                Some("[2001:db8::7]:51000".parse().unwrap()),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
        ];
        for (header, want) in cases {
            let mut c = TcpStream::connect(at).await.unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            // The header in two pieces, then the caller's first bytes.
            let (a, b) = header.split_at(3);
            c.write_all(a).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            c.write_all(b).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            assert_eq!(read(&mut s).await.unwrap(), want);
            let mut rest = [0u8; 16];
            s.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
        }
        // No header: refused, not waited on.
        let mut c = TcpStream::connect(at).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(matches!(read(&mut s).await, Err(ProxyHeaderError::Missing)));
    }
}
