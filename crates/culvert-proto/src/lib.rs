//! Culvert's protocol core: the wire codec and a sans-IO stream multiplexer.
//!
//! No IO, no clock, no tokio: callers feed bytes and time in and take bytes,
//! events and deadlines out. PROTOCOL.md at the repository root is the
//! specification this crate implements.
// No unsafe code; the unit tests alone use one, for a counting allocator.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]
#![warn(missing_docs)]

pub mod config;
mod connection;
pub mod control;
mod decoder;
mod error;
pub mod frame;
pub mod header;
mod reader;
mod stream_id;
mod target;
pub mod varint;
mod writer;

pub use config::Config;
pub use connection::{
    goaway_code, reset_code, Connection, Datagram, Event, IdHash, IdHasher, ReadOutcome, Stats,
    Transmit,
};
pub use control::{Control, ServiceProtocol, Token};
pub use decoder::FrameDecoder;
pub use error::{ConnectionError, DecodeError, EncodeError, StreamError};
pub use frame::Frame;
pub use header::{FrameType, Header, HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, MAX_TARGET_LEN};
pub use stream_id::{Side, StreamId};
pub use target::Target;
