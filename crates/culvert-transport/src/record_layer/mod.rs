//! TLS records protected by Culvert itself once rustls has done the handshake.
//!
//! rustls's buffered connection copies every received byte three times before the caller
//! has it (the read-ahead buffer into its deframer, the opened record into a plaintext
//! `Vec`, that into the caller's buffer) and every sent byte once more than the encryption
//! needs; on a wss tunnel those copies were a sixth of the receiving process's CPU
//! (BENCHMARKS.md, 2026-12-07). Here rustls drives the handshake through its unbuffered
//! API and then hands over the traffic secrets ([`rustls::kernel`], the interface it offers
//! for kernel TLS); records are opened in place in the read-ahead buffer and copied once
//! into the caller's, and sealed from the caller's bytes straight into the outgoing buffer.
//! rustls still computes the secrets of key updates and takes the server's session tickets.
//!
//! TLS 1.3 and 1.2 with AES-GCM or ChaCha20-Poly1305 (every suite Culvert's provider
//! offers); the AES-GCM code is the one [`crate::tls_provider`] picks for this CPU.

mod aead;
mod handshake;
mod protect;
mod stream;

pub use handshake::{accept, connect};
pub use protect::RecordError;
pub use stream::TlsRecordStream;

#[cfg(test)]
mod tests;
