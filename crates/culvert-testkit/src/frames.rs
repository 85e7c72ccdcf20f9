//! Frame builders for tests that speak the wire protocol by hand (hostile peers, codec
//! checks), in the style of h2's test support: one short call per frame, client-initiated
//! streams named by their sequence number, and one place that encodes and feeds them.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use culvert_proto::{Connection, ConnectionError, Control, Frame, Side, StreamId};

/// The target [`open`] names.
pub const SERVICE: &str = "svc";

/// The id of the client's `seq`-th stream.
pub fn client_stream(seq: u64) -> StreamId {
    StreamId::new(Side::Client, seq)
}

/// StreamOpen of the client's `seq`-th stream to [`SERVICE`].
pub fn open(seq: u64) -> Frame {
    open_to(seq, SERVICE)
}

/// StreamOpen of the client's `seq`-th stream to `target`.
pub fn open_to(seq: u64, target: &str) -> Frame {
    Frame::StreamOpen {
        id: client_stream(seq),
        target: target.into(),
    }
}

/// StreamData on the client's `seq`-th stream.
pub fn data(seq: u64, data: impl Into<Bytes>) -> Frame {
    Frame::StreamData {
        id: client_stream(seq),
        data: data.into(),
    }
}

/// StreamFin of the client's `seq`-th stream.
pub fn fin(seq: u64) -> Frame {
    Frame::StreamFin {
        id: client_stream(seq),
    }
}

/// StreamReset of the client's `seq`-th stream with `code`.
pub fn reset(seq: u64, code: u64) -> Frame {
    Frame::StreamReset {
        id: client_stream(seq),
        code,
    }
}

/// StreamCredit of `increment` bytes for the client's `seq`-th stream.
pub fn credit(seq: u64, increment: u64) -> Frame {
    Frame::StreamCredit {
        id: client_stream(seq),
        increment,
    }
}

/// ConnCredit of `increment` bytes.
pub fn conn_credit(increment: u64) -> Frame {
    Frame::ConnCredit { increment }
}

/// A heartbeat carrying `timestamp`.
pub fn heartbeat(timestamp: u64) -> Frame {
    Frame::Control(Control::Heartbeat { timestamp })
}

/// Encodes `frames` back to back, as one WebSocket message carries them.
pub fn encode(frames: &[Frame]) -> Bytes {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b).expect("encodable frame");
    }
    b.freeze()
}

/// Hands `frames`, encoded as one message, to `c` at `now`.
pub fn feed(c: &mut Connection, now: Instant, frames: &[Frame]) -> Result<(), ConnectionError> {
    c.handle_bytes(now, encode(frames))
}
