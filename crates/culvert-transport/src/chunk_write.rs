//! One non-blocking write of a list of chunks to a TCP socket, and the bookkeeping of what
//! it took: what the connection's reader does when it delivers a relay's bytes
//! (`driver/deliver.rs`), and what the relay does with whatever that left (`relay.rs`).
//!
//! A lone chunk (the usual small message) goes with `send`, whose path through the kernel
//! is shorter than `writev`'s (no file-position lock, no iovec import); a few chunks use a
//! small slice array, more a larger one (64 slices, 1 KiB of stack, set up only when needed).

use std::io::{IoSlice, Result};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;

/// Chunks one write takes at most (the rest waits for the next).
const MAX_IOVECS: usize = 64;
/// Writes of at most this many chunks use an array of this size.
const SMALL_IOVECS: usize = 4;

/// Writes what of `chunks` the socket takes now, without waiting; the bytes written
/// (`WouldBlock` when it is full).
pub(crate) fn try_write_chunks(tcp: &TcpStream, chunks: &[Bytes]) -> Result<usize> {
    match chunks.len() {
        0 => Ok(0),
        1 => tcp.try_write(&chunks[0]),
        2..=SMALL_IOVECS => try_write_slices::<SMALL_IOVECS>(tcp, chunks),
        _ => try_write_slices::<MAX_IOVECS>(tcp, chunks),
    }
}

/// [`try_write_chunks`] of the first `N` chunks at most, with one `writev`.
fn try_write_slices<const N: usize>(tcp: &TcpStream, chunks: &[Bytes]) -> Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    let count = chunks.len().min(N);
    for (slot, c) in slices.iter_mut().zip(chunks) {
        *slot = IoSlice::new(c);
    }
    tcp.try_write_vectored(&slices[..count])
}

/// Drops the first `written` bytes of `chunks` after a write took them: the chunks written
/// whole are counted, the one written in part is advanced in place. Returns how many
/// chunks were written whole (the rest, from that index, is what remains to write).
pub(crate) fn consume_written(chunks: &mut [Bytes], mut written: usize) -> usize {
    let mut whole = 0;
    for c in chunks {
        if written < c.len() {
            c.advance(written);
            break;
        }
        written -= c.len();
        whole += 1;
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_written_skips_whole_chunks_and_advances_a_partial_one() {
        let mut c = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"fgh"),
        ];
        assert_eq!(consume_written(&mut c, 0), 0);
        assert_eq!(consume_written(&mut c, 4), 1);
        assert_eq!(&c[1][..], b"e");
        assert_eq!(consume_written(&mut c[1..], 1), 1);
        assert_eq!(consume_written(&mut c[2..], 3), 1);
    }
}
