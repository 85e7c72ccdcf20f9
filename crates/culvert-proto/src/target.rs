//! What a stream is opened towards, with its kind explicit (PROTOCOL.md §7.1, §8.1).
//!
//! Protocol 1 carried the kind in the target string's prefix (`?NAME`, `udp://…`, a colon
//! for `HOST:PORT`); protocol 2 carries a kind byte, so a receiver never guesses from a
//! string's shape, and the opens a server makes to an agent for a public connection carry
//! the client's address themselves (no separate Connect).

use std::fmt;

use bytes::{BufMut, BytesMut};
use uuid::Uuid;

use crate::header::MAX_TARGET_LEN;
use crate::reader::Reader;
use crate::{writer, DecodeError, EncodeError};

/// The target of a stream: its kind, and the name or address it names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// A TCP connection to a service, `NAME` or `TENANT/NAME` (kind 0).
    Service(String),
    /// Whether this session may reach a service, without connecting (kind 1; `?NAME`).
    Probe(String),
    /// A TCP connection to `HOST:PORT`, dialed by the receiver if it allows it (kind 2).
    Dial(String),
    /// A UDP flow to a UDP service (kind 3; `udp://NAME`).
    UdpService(String),
    /// A UDP flow to `HOST:PORT` (kind 4; `udp://HOST:PORT`).
    UdpDial(String),
    /// A server's open to the agent serving `service`, for one public connection (kind 5):
    /// it carries what a protocol-1 Connect did, so the agent serves it at once.
    Inbound {
        /// The agent's service, by the name it registered.
        service: String,
        /// Names the connection in ConnectAck / ConnectFail.
        connection_id: Uuid,
        /// The public client, `ip:port` (or a description such as `access:TOKEN@ip:port`).
        client_addr: String,
    },
}

const SERVICE: u8 = 0;
const PROBE: u8 = 1;
const DIAL: u8 = 2;
const UDP_SERVICE: u8 = 3;
const UDP_DIAL: u8 = 4;
const INBOUND: u8 = 5;

impl Target {
    /// Reads the protocol-1 string grammar (PROTOCOL.md §8.1), checked in this order:
    /// `?NAME`, `udp://HOST:PORT`, `udp://NAME`, `HOST:PORT` (a colon), else a service.
    /// Command lines and configuration keep using it.
    pub fn parse(s: &str) -> Target {
        if let Some(name) = s.strip_prefix('?') {
            Target::Probe(name.to_owned())
        } else if let Some(addr) = s.strip_prefix("udp://") {
            if addr.contains(':') {
                Target::UdpDial(addr.to_owned())
            } else {
                Target::UdpService(addr.to_owned())
            }
        } else if s.contains(':') {
            Target::Dial(s.to_owned())
        } else {
            Target::Service(s.to_owned())
        }
    }

    /// The name or address the target names, without its kind.
    pub fn name(&self) -> &str {
        match self {
            Target::Service(s)
            | Target::Probe(s)
            | Target::Dial(s)
            | Target::UdpService(s)
            | Target::UdpDial(s) => s,
            Target::Inbound { service, .. } => service,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Target::Service(_) => SERVICE,
            Target::Probe(_) => PROBE,
            Target::Dial(_) => DIAL,
            Target::UdpService(_) => UDP_SERVICE,
            Target::UdpDial(_) => UDP_DIAL,
            Target::Inbound { .. } => INBOUND,
        }
    }

    /// Checks the lengths `Target::encode` needs, so an open can be refused before it
    /// takes a stream id.
    pub fn check(&self) -> Result<(), EncodeError> {
        let long = |field, len: usize| {
            if len > MAX_TARGET_LEN {
                Err(EncodeError::FieldTooLong {
                    field,
                    len,
                    max: MAX_TARGET_LEN,
                })
            } else {
                Ok(())
            }
        };
        long("target", self.name().len())?;
        if let Target::Inbound { client_addr, .. } = self {
            long("client_addr", client_addr.len())?;
        }
        Ok(())
    }

    /// Appends kind, target and (for [`Target::Inbound`]) connection id and client address.
    pub(crate) fn encode(&self, b: &mut BytesMut) -> Result<(), EncodeError> {
        self.check()?;
        b.put_u8(self.kind());
        writer::string16(b, "target", self.name())?;
        if let Target::Inbound {
            connection_id,
            client_addr,
            ..
        } = self
        {
            b.put_slice(connection_id.as_bytes());
            writer::string16(b, "client_addr", client_addr)?;
        }
        Ok(())
    }

    /// Reads what [`Target::encode`] wrote; an unknown kind is `Malformed` (field `kind`).
    pub(crate) fn decode(r: &mut Reader) -> Result<Target, DecodeError> {
        let kind = r.u8("kind")?;
        let name = bounded(r, "target")?;
        Ok(match kind {
            SERVICE => Target::Service(name),
            PROBE => Target::Probe(name),
            DIAL => Target::Dial(name),
            UDP_SERVICE => Target::UdpService(name),
            UDP_DIAL => Target::UdpDial(name),
            INBOUND => Target::Inbound {
                service: name,
                connection_id: r.uuid("connection_id")?,
                client_addr: bounded(r, "client_addr")?,
            },
            _ => {
                return Err(DecodeError::Malformed {
                    frame: "StreamOpen",
                    field: "kind",
                    reason: "unknown target kind",
                })
            }
        })
    }
}

/// A u16-prefixed string of at most [`MAX_TARGET_LEN`] bytes, the bound checked before
/// the bytes are read.
fn bounded(r: &mut Reader, field: &'static str) -> Result<String, DecodeError> {
    let n = r.u16(field)? as usize;
    if n > MAX_TARGET_LEN {
        return Err(DecodeError::Malformed {
            frame: "StreamOpen",
            field,
            reason: "longer than MAX_TARGET_LEN",
        });
    }
    r.string(n, field)
}

/// The protocol-1 string form, for logs (an inbound open shows its service).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service(s) | Target::Dial(s) => f.write_str(s),
            Target::Probe(s) => write!(f, "?{s}"),
            Target::UdpService(s) | Target::UdpDial(s) => write!(f, "udp://{s}"),
            Target::Inbound {
                service,
                client_addr,
                ..
            } => write!(f, "{service} (from {client_addr})"),
        }
    }
}

impl From<&str> for Target {
    fn from(s: &str) -> Target {
        Target::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{Frame, FrameType, StreamId, HEADER_LEN};

    fn round_trip(t: Target) -> Result<Frame, DecodeError> {
        let mut b = BytesMut::new();
        Frame::StreamOpen {
            id: StreamId(3),
            target: t,
        }
        .encode(&mut b)
        .unwrap();
        let payload = b.split_off(HEADER_LEN).freeze();
        Frame::decode(FrameType::StreamOpen, payload)
    }

    #[test]
    fn every_kind_round_trips_and_an_inbound_open_carries_the_client() {
        let inbound = Target::Inbound {
            service: "pg".into(),
            connection_id: Uuid::from_bytes([7; 16]),
            client_addr: "[::1]:5678".into(),
        };
        for t in [
            Target::Service("acme/pg".into()),
            Target::Probe("pg".into()),
            Target::Dial("db:5432".into()),
            Target::UdpService("dns".into()),
            Target::UdpDial("1.2.3.4:53".into()),
            inbound,
        ] {
            let f = round_trip(t.clone()).unwrap();
            assert_eq!(
                f,
                Frame::StreamOpen {
                    id: StreamId(3),
                    target: t
                }
            );
        }
    }

    #[test]
    fn a_protocol_1_open_and_an_unknown_kind_are_refused_with_a_typed_error() {
        // Protocol 1: stream id 0, target_len 8, "svc:echo" (PROTOCOL.md §7.1 before v2).
        let v1 = Bytes::from_static(b"\x00\x00\x08svc:echo");
        assert!(Frame::decode(FrameType::StreamOpen, v1).is_err());
        let unknown = Bytes::from_static(b"\x00\x09\x00\x00");
        assert_eq!(
            Frame::decode(FrameType::StreamOpen, unknown),
            Err(DecodeError::Malformed {
                frame: "StreamOpen",
                field: "kind",
                reason: "unknown target kind",
            })
        );
    }

    #[test]
    fn an_overlong_client_address_is_refused_before_encoding() {
        let t = Target::Inbound {
            service: "pg".into(),
            connection_id: Uuid::nil(),
            client_addr: "x".repeat(MAX_TARGET_LEN + 1),
        };
        assert!(matches!(
            t.check(),
            Err(EncodeError::FieldTooLong {
                field: "client_addr",
                ..
            })
        ));
    }

    #[test]
    fn the_string_grammar_maps_to_kinds_and_back() {
        for (s, t) in [
            ("?pg", Target::Probe("pg".into())),
            ("udp://1.2.3.4:53", Target::UdpDial("1.2.3.4:53".into())),
            ("udp://dns", Target::UdpService("dns".into())),
            ("db:5432", Target::Dial("db:5432".into())),
            ("acme/pg", Target::Service("acme/pg".into())),
        ] {
            assert_eq!(Target::parse(s), t);
            assert_eq!(t.to_string(), s);
        }
    }
}
