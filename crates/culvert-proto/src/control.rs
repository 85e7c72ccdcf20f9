//! Control messages, byte-compatible with zlayer-tunnel v1's `protocol` module.
//!
//! Culvert's additions are appended after the fields that crate knows (its
//! decoder ignores trailing bytes), so each extension is an `Option` that is
//! `None` when a plain v1 peer sent the message.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::header::FrameType;
use crate::reader::Reader;
use crate::{writer, DecodeError, EncodeError, StreamId};

/// Culvert's protocol version, sent in [`AuthExt`] and [`AuthOkExt`]. Version 2 made the
/// kind of a stream's target explicit in StreamOpen ([`crate::Target`]); a version-1 peer
/// encodes StreamOpen differently, so both ends refuse it at Auth (PROTOCOL.md §6.2).
pub const CULVERT_VERSION: u8 = 2;

/// The oldest Culvert protocol version this build speaks.
pub const MIN_CULVERT_VERSION: u8 = 2;

/// Transport protocol of a registered service (wire byte 0 = TCP, 1 = UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ServiceProtocol {
    /// Stream service.
    Tcp,
    /// Datagram service.
    Udp,
}

/// A bearer token that never prints: its `Debug` is redacted so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes redacted>)", self.0.len())
    }
}

/// Culvert's extension of Auth: lets the server tell a Culvert agent from a plain v1 agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AuthExt {
    /// Culvert protocol version of the agent.
    pub version: u8,
    /// Capability bits (none defined yet; unknown bits are ignored).
    pub capabilities: u32,
}

/// Culvert's extension of AuthOk: the server's protocol version, so an agent can refuse a
/// server whose streams it could not decode before any stream is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AuthOkExt {
    /// Culvert protocol version of the server.
    pub version: u8,
}

/// Culvert's extension of Register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RegisterExt {
    /// Bit 0: private service (no public port). Other bits reserved, ignored.
    pub flags: u8,
}

/// Culvert's extension of RegisterOk: tells the agent what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RegisterOkExt {
    /// Public port assigned (0 for a private service).
    pub assigned_port: u16,
    /// The service name, echoed so replies can be matched to requests.
    pub name: String,
}

/// Culvert's extension of Connect: the multiplexed stream that carries the connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ConnectExt {
    /// Stream id the server opened for this connection.
    pub stream_id: StreamId,
}

/// One control message; field layouts are those of zlayer-tunnel v1 (see PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // fields are documented in PROTOCOL.md, one table per message
pub enum Control {
    Auth {
        token: Token,
        client_id: Uuid,
        ext: Option<AuthExt>,
    },
    AuthOk {
        tunnel_id: Uuid,
        ext: Option<AuthOkExt>,
    },
    AuthFail {
        reason: String,
    },
    Register {
        name: String,
        protocol: ServiceProtocol,
        local_port: u16,
        remote_port: u16,
        ext: Option<RegisterExt>,
    },
    RegisterOk {
        service_id: Uuid,
        ext: Option<RegisterOkExt>,
    },
    RegisterFail {
        reason: String,
    },
    Connect {
        service_id: Uuid,
        connection_id: Uuid,
        client_addr: String,
        ext: Option<ConnectExt>,
    },
    ConnectAck {
        connection_id: Uuid,
    },
    ConnectFail {
        connection_id: Uuid,
        reason: String,
    },
    Heartbeat {
        timestamp: u64,
    },
    HeartbeatAck {
        timestamp: u64,
    },
    Unregister {
        service_id: Uuid,
    },
    Disconnect {
        reason: String,
    },
}

impl Control {
    /// The frame type this message travels as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Control::Auth { .. } => FrameType::Auth,
            Control::AuthOk { .. } => FrameType::AuthOk,
            Control::AuthFail { .. } => FrameType::AuthFail,
            Control::Register { .. } => FrameType::Register,
            Control::RegisterOk { .. } => FrameType::RegisterOk,
            Control::RegisterFail { .. } => FrameType::RegisterFail,
            Control::Connect { .. } => FrameType::Connect,
            Control::ConnectAck { .. } => FrameType::ConnectAck,
            Control::ConnectFail { .. } => FrameType::ConnectFail,
            Control::Heartbeat { .. } => FrameType::Heartbeat,
            Control::HeartbeatAck { .. } => FrameType::HeartbeatAck,
            Control::Unregister { .. } => FrameType::Unregister,
            Control::Disconnect { .. } => FrameType::Disconnect,
        }
    }

    /// Appends the whole frame (header included) to `buf`; on error `buf` is unchanged.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        writer::frame(buf, self.frame_type(), |b| self.encode_payload(b))
    }

    fn encode_payload(&self, b: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Control::Auth {
                token,
                client_id,
                ext,
            } => {
                writer::string16(b, "token", &token.0)?;
                b.put_slice(client_id.as_bytes());
                if let Some(e) = ext {
                    b.put_u8(e.version);
                    b.put_u32(e.capabilities);
                }
            }
            Control::AuthOk { tunnel_id, ext } => {
                b.put_slice(tunnel_id.as_bytes());
                if let Some(e) = ext {
                    b.put_u8(e.version);
                }
            }
            Control::AuthFail { reason }
            | Control::RegisterFail { reason }
            | Control::Disconnect { reason } => writer::string16(b, "reason", reason)?,
            Control::Register {
                name,
                protocol,
                local_port,
                remote_port,
                ext,
            } => {
                writer::string8(b, "name", name)?;
                b.put_u8(match protocol {
                    ServiceProtocol::Tcp => 0,
                    ServiceProtocol::Udp => 1,
                });
                b.put_u16(*local_port);
                b.put_u16(*remote_port);
                if let Some(e) = ext {
                    b.put_u8(e.flags);
                }
            }
            Control::RegisterOk { service_id, ext } => {
                b.put_slice(service_id.as_bytes());
                if let Some(e) = ext {
                    b.put_u16(e.assigned_port);
                    writer::string8(b, "name", &e.name)?;
                }
            }
            Control::Connect {
                service_id,
                connection_id,
                client_addr,
                ext,
            } => {
                b.put_slice(service_id.as_bytes());
                b.put_slice(connection_id.as_bytes());
                writer::string16(b, "client_addr", client_addr)?;
                if let Some(e) = ext {
                    writer::varint(b, e.stream_id.0)?;
                }
            }
            Control::ConnectAck { connection_id } => b.put_slice(connection_id.as_bytes()),
            Control::ConnectFail {
                connection_id,
                reason,
            } => {
                b.put_slice(connection_id.as_bytes());
                writer::string16(b, "reason", reason)?;
            }
            Control::Heartbeat { timestamp } | Control::HeartbeatAck { timestamp } => {
                b.put_u64(*timestamp)
            }
            Control::Unregister { service_id } => b.put_slice(service_id.as_bytes()),
        }
        Ok(())
    }

    /// Decodes the payload of a control frame of type `ty`.
    ///
    /// Bytes after the known fields and Culvert's extension are ignored, as
    /// zlayer-tunnel v1 does, so later versions can append more.
    pub fn decode(ty: FrameType, payload: Bytes) -> Result<Control, DecodeError> {
        let name = ty.name();
        let mut r = Reader::new(payload, name);
        let msg = match ty {
            FrameType::Auth => {
                let token = Token(r.string16("token")?);
                let client_id = r.uuid("client_id")?;
                let ext = if r.is_empty() {
                    None
                } else {
                    Some(AuthExt {
                        version: r.u8("version")?,
                        capabilities: r.u32("capabilities")?,
                    })
                };
                Control::Auth {
                    token,
                    client_id,
                    ext,
                }
            }
            FrameType::AuthOk => Control::AuthOk {
                tunnel_id: r.uuid("tunnel_id")?,
                ext: if r.is_empty() {
                    None
                } else {
                    Some(AuthOkExt {
                        version: r.u8("version")?,
                    })
                },
            },
            FrameType::AuthFail => Control::AuthFail {
                reason: r.string16("reason")?,
            },
            FrameType::Register => {
                let n = r.u8("name")? as usize;
                let name = r.string(n, "name")?;
                let protocol = match r.u8("protocol")? {
                    0 => ServiceProtocol::Tcp,
                    1 => ServiceProtocol::Udp,
                    _ => {
                        return Err(DecodeError::Malformed {
                            frame: "Register",
                            field: "protocol",
                            reason: "neither 0 (TCP) nor 1 (UDP)",
                        })
                    }
                };
                let local_port = r.u16("local_port")?;
                let remote_port = r.u16("remote_port")?;
                let ext = if r.is_empty() {
                    None
                } else {
                    Some(RegisterExt {
                        flags: r.u8("flags")?,
                    })
                };
                Control::Register {
                    name,
                    protocol,
                    local_port,
                    remote_port,
                    ext,
                }
            }
            FrameType::RegisterOk => {
                let service_id = r.uuid("service_id")?;
                let ext = if r.is_empty() {
                    None
                } else {
                    let assigned_port = r.u16("assigned_port")?;
                    let n = r.u8("name")? as usize;
                    Some(RegisterOkExt {
                        assigned_port,
                        name: r.string(n, "name")?,
                    })
                };
                Control::RegisterOk { service_id, ext }
            }
            FrameType::RegisterFail => Control::RegisterFail {
                reason: r.string16("reason")?,
            },
            FrameType::Connect => {
                let service_id = r.uuid("service_id")?;
                let connection_id = r.uuid("connection_id")?;
                let client_addr = r.string16("client_addr")?;
                let ext = if r.is_empty() {
                    None
                } else {
                    Some(ConnectExt {
                        stream_id: StreamId(r.varint("stream_id")?),
                    })
                };
                Control::Connect {
                    service_id,
                    connection_id,
                    client_addr,
                    ext,
                }
            }
            FrameType::ConnectAck => Control::ConnectAck {
                connection_id: r.uuid("connection_id")?,
            },
            FrameType::ConnectFail => Control::ConnectFail {
                connection_id: r.uuid("connection_id")?,
                reason: r.string16("reason")?,
            },
            FrameType::Heartbeat => Control::Heartbeat {
                timestamp: r.u64("timestamp")?,
            },
            FrameType::HeartbeatAck => Control::HeartbeatAck {
                timestamp: r.u64("timestamp")?,
            },
            FrameType::Unregister => Control::Unregister {
                service_id: r.uuid("service_id")?,
            },
            FrameType::Disconnect => Control::Disconnect {
                reason: r.string16("reason")?,
            },
            _ => {
                return Err(DecodeError::Malformed {
                    frame: name,
                    field: "type",
                    reason: "not a control message",
                })
            }
        };
        Ok(msg)
    }
}
