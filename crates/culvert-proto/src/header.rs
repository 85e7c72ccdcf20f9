//! The 5-byte frame header, `Type u8 | Len u32 big-endian`, and its validation.
//!
//! The header is checked (known type, length within that type's cap) before a
//! single payload byte is buffered, so a hostile length never sizes an allocation.

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 5;
/// Largest whole frame, header included.
pub const MAX_FRAME_LEN: usize = 65_536;
/// Largest payload: the frame cap less the header.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;
/// Longest stream-open target, in bytes (a host name plus port fits many times over).
/// Here rather than in `frame` because it sizes StreamOpen's payload cap below.
pub const MAX_TARGET_LEN: usize = 1024;
/// Largest StreamOpen payload: stream id, target kind, a target, and for an inbound open
/// (`Target::Inbound`) a connection id and a client address as long as a target.
pub const MAX_OPEN_PAYLOAD: usize = 8 + 1 + 2 + MAX_TARGET_LEN + 16 + 2 + MAX_TARGET_LEN;

use bytes::BufMut;

use crate::DecodeError;

macro_rules! frame_types {
    ($($(#[$doc:meta])* $name:ident = $code:literal, max $max:expr;)*) => {
        /// Every frame type code on the wire: control messages (zlayer-tunnel v1 codes) and Culvert's data plane.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameType {
            $($(#[$doc])* $name = $code,)*
        }

        impl FrameType {
            /// Looks up a type byte.
            pub fn from_u8(b: u8) -> Option<FrameType> {
                match b {
                    $($code => Some(FrameType::$name),)*
                    _ => None,
                }
            }

            /// The type's name, for errors and logs.
            pub fn name(self) -> &'static str {
                match self {
                    $(FrameType::$name => stringify!($name),)*
                }
            }

            /// Whether this is a zlayer-tunnel v1 control message (codes below 0x50), the
            /// only frames a plain v1 peer can decode.
            pub fn is_control(self) -> bool {
                (self as u8) < (FrameType::StreamOpen as u8)
            }

            /// Largest payload this type may declare; checked against the header's length.
            pub fn max_payload(self) -> usize {
                match self {
                    $(FrameType::$name => $max,)*
                }
            }
        }
    };
}

frame_types! {
    /// Agent authenticates with a token.
    Auth = 0x01, max MAX_PAYLOAD_LEN;
    /// Server accepted the token.
    AuthOk = 0x02, max MAX_PAYLOAD_LEN;
    /// Server refused the token.
    AuthFail = 0x03, max MAX_PAYLOAD_LEN;
    /// Agent registers a service.
    Register = 0x10, max MAX_PAYLOAD_LEN;
    /// Server accepted a registration.
    RegisterOk = 0x11, max MAX_PAYLOAD_LEN;
    /// Server refused a registration.
    RegisterFail = 0x12, max MAX_PAYLOAD_LEN;
    /// Server announces a public connection.
    Connect = 0x20, max MAX_PAYLOAD_LEN;
    /// Agent reached the target of a Connect.
    ConnectAck = 0x21, max MAX_PAYLOAD_LEN;
    /// Agent could not reach the target of a Connect.
    ConnectFail = 0x22, max MAX_PAYLOAD_LEN;
    /// Liveness probe carrying a timestamp.
    Heartbeat = 0x30, max MAX_PAYLOAD_LEN;
    /// Echo of a heartbeat's timestamp.
    HeartbeatAck = 0x31, max MAX_PAYLOAD_LEN;
    /// Agent withdraws a service.
    Unregister = 0x40, max MAX_PAYLOAD_LEN;
    /// Either side closes the session with a reason.
    Disconnect = 0x41, max MAX_PAYLOAD_LEN;
    /// Opens a stream towards a target.
    StreamOpen = 0x50, max MAX_OPEN_PAYLOAD;
    /// Bytes of a stream.
    StreamData = 0x51, max MAX_PAYLOAD_LEN;
    /// The sender finished its direction of a stream (half-close).
    StreamFin = 0x52, max 8;
    /// Aborts a stream in both directions.
    StreamReset = 0x53, max 16;
    /// Grants more receive window on one stream.
    StreamCredit = 0x54, max 16;
    /// Grants more receive window on the connection.
    ConnCredit = 0x55, max 8;
    /// Raises the cumulative number of streams the peer may open.
    MaxStreams = 0x56, max 8;
    /// One UDP datagram of a flow.
    Datagram = 0x57, max MAX_PAYLOAD_LEN;
    /// The sender accepts no new streams; existing ones may finish.
    GoAway = 0x58, max MAX_PAYLOAD_LEN;
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: FrameType,
    /// Payload length, already checked against the type's cap.
    pub len: usize,
}

impl Header {
    /// Parses and validates a header from exactly its 5 bytes.
    pub fn parse(b: [u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let ty = FrameType::from_u8(b[0]).ok_or(DecodeError::UnknownType(b[0]))?;
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        let max = ty.max_payload();
        if len as usize > max {
            return Err(DecodeError::Oversize { ty: b[0], len, max });
        }
        Ok(Header {
            ty,
            len: len as usize,
        })
    }

    /// The header's 5 bytes on the wire: the one place a frame header is encoded.
    #[inline]
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        debug_assert!(
            self.len <= self.ty.max_payload(),
            "{} payload of {} bytes",
            self.ty.name(),
            self.len
        );
        let [a, b, c, d] = (self.len as u32).to_be_bytes();
        [self.ty as u8, a, b, c, d]
    }

    /// Appends the header of a `ty` frame with a `len`-byte payload to `buf`.
    #[inline]
    pub fn put(buf: &mut impl BufMut, ty: FrameType, len: usize) {
        buf.put_slice(&Header { ty, len }.to_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_type_and_oversize_before_payload() {
        assert_eq!(
            Header::parse([0x99, 0, 0, 0, 0]),
            Err(DecodeError::UnknownType(0x99))
        );
        assert!(matches!(
            Header::parse([0x51, 0, 1, 0, 0]),
            Err(DecodeError::Oversize { len: 65_536, .. })
        ));
        assert!(matches!(
            Header::parse([0x52, 0, 0, 0, 9]),
            Err(DecodeError::Oversize { max: 8, .. })
        ));
        assert_eq!(
            Header::parse([0x51, 0, 0, 0xff, 0xfb]).unwrap().len,
            MAX_PAYLOAD_LEN
        );
    }

    #[test]
    fn encodes_what_it_parses() {
        let h = Header::parse([0x51, 0, 0, 0x12, 0x34]).unwrap();
        assert_eq!(h.to_bytes(), [0x51, 0, 0, 0x12, 0x34]);
    }
}
