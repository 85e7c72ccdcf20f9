//! Stream identifiers: QUIC-style, the initiating side in the low bit, never reused.

use std::fmt;

/// Which end of the WebSocket a [`crate::Connection`] is: the dialer (agent) or the acceptor (server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Side {
    /// Dialed the connection; its stream ids are even.
    Client,
    /// Accepted the connection; its stream ids are odd.
    Server,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    fn bit(self) -> u64 {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

/// A stream's id: `sequence << 1 | initiator`, carried as a varint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StreamId(pub u64);

impl StreamId {
    /// The id of the `seq`-th stream opened by `side`.
    pub fn new(side: Side, seq: u64) -> StreamId {
        StreamId(seq << 1 | side.bit())
    }

    /// The side that opened this stream.
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }

    /// How many streams its initiator opened before this one.
    pub fn sequence(self) -> u64 {
        self.0 >> 1
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_bit_is_initiator() {
        let c = StreamId::new(Side::Client, 7);
        let s = StreamId::new(Side::Server, 7);
        assert_eq!((c.0, s.0), (14, 15));
        assert_eq!(c.initiator(), Side::Client);
        assert_eq!(s.initiator(), Side::Server);
        assert_eq!(s.sequence(), 7);
    }
}
