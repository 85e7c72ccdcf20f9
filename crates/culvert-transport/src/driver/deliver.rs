//! Direct delivery: bytes that arrive for a relayed stream are written into its TCP socket
//! by the connection's reader task, when the relay is waiting for them with nothing queued,
//! instead of waking the relay's task to take them and write them.
//!
//! The other half of write-through (`direct.rs`): every message used to cross two tasks on
//! its way in as well (the reader queued it and woke the relay, the relay took it and
//! wrote it). Now a relay registers its socket's write half with its stream; the reader
//! tries one non-blocking vectored write of what the message brought. What the socket does
//! not take at once is left for the relay (`leftover`) and the relay is woken for it, as it
//! is for a FIN, a reset or a closed connection, so all blocking, half-close and error
//! handling stays with the relay.
//!
//! Order: the reader delivers only while the relay's read waker is registered (it asked for
//! data and the connection held none for it), so the relay is not writing; and the relay
//! writes any leftover before it reads from the connection again.
//!
//! The write happens under the connection's lock (which is what lets the relay take its
//! socket back afterwards without waiting on anyone). On the current-thread runtime that
//! Culvert runs on two CPUs or fewer nothing can contend for it; on a multi-thread runtime
//! other streams of the connection wait for one non-blocking system call at most.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use culvert_proto::{ReadOutcome, StreamId};
use tokio::net::tcp::OwnedWriteHalf;

use super::State;
use crate::RelayCounters;

/// A relay's socket, registered with its stream.
pub(crate) struct Delivery {
    sock: Arc<OwnedWriteHalf>,
    counters: Option<Arc<RelayCounters>>,
    /// What a direct write left: the relay writes it before reading on.
    pub(crate) leftover: Vec<Bytes>,
    /// The end of the stream was read by a delivery (the relay shuts its socket down).
    pub(crate) eof: bool,
    /// Bytes written directly, for the relay's totals.
    pub(crate) delivered: u64,
}

impl Delivery {
    pub(crate) fn new(sock: Arc<OwnedWriteHalf>, counters: Option<Arc<RelayCounters>>) -> Delivery {
        Delivery {
            sock,
            counters,
            leftover: Vec::new(),
            eof: false,
            delivered: 0,
        }
    }

    /// Whether a delivery may go now (nothing left over for the relay to write first).
    pub(crate) fn ready(&self) -> bool {
        self.leftover.is_empty() && !self.eof
    }
}

/// Delivers what arrived for the streams marked deliverable (their relay waiting): one
/// non-blocking write each; the relay is woken only for what did not go.
pub(crate) fn deliver(st: &mut State) {
    let State {
        conn,
        wakers,
        deliver,
        deliverable,
        deliver_chunks: chunks,
        ..
    } = st;
    for id in deliverable.drain(..) {
        // Still waiting? (A FIN or reset in the same message woke it: it reads for itself.)
        let Some(w) = wakers.get_mut(&id).filter(|w| w.read.is_some()) else {
            continue;
        };
        let Some(d) = deliver.get_mut(&id).filter(|d| d.ready()) else {
            continue;
        };
        chunks.clear();
        loop {
            match conn.read(id, usize::MAX) {
                Ok(ReadOutcome::Data(b)) => chunks.push(b),
                Ok(ReadOutcome::Eof) => {
                    d.eof = true;
                    break;
                }
                // Nothing more, or an error the relay will meet itself.
                _ => break,
            }
        }
        let written = write_now(&d.sock, chunks);
        d.delivered += written as u64;
        if let Some(c) = &d.counters {
            c.down.fetch_add(written as u64, Ordering::Relaxed);
        }
        keep_unwritten(&mut d.leftover, chunks, written);
        if !d.ready() {
            if let Some(w) = w.read.take() {
                w.wake();
            }
        }
    }
}

/// One non-blocking write; the bytes written (0 when the socket is full or failed: the
/// relay retries and meets the error).
fn write_now(sock: &OwnedWriteHalf, chunks: &[Bytes]) -> usize {
    crate::chunk_write::try_write_chunks(sock.as_ref(), chunks).unwrap_or(0)
}

/// Moves to `out` what of `chunks` lies past the first `written` bytes, emptying `chunks`.
/// No empty chunk is kept: the relay's `write_all` would take a write of nothing for a
/// socket that accepts nothing (`WriteZero`).
fn keep_unwritten(out: &mut Vec<Bytes>, chunks: &mut Vec<Bytes>, written: usize) {
    let whole = crate::chunk_write::consume_written(chunks, written);
    if whole < chunks.len() {
        out.extend(chunks.drain(whole..).filter(|c| !c.is_empty()));
    }
    chunks.clear();
}

/// Registers `sock` as where `id`'s bytes may be delivered directly.
pub(crate) fn register(
    st: &mut State,
    id: StreamId,
    sock: Arc<OwnedWriteHalf>,
    counters: Option<Arc<RelayCounters>>,
) {
    st.deliver.insert(id, Delivery::new(sock, counters));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_not_written_is_kept_in_order() {
        let chunks = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defg"),
            Bytes::from_static(b"hi"),
        ];
        for written in 0..=9 {
            let mut out = Vec::new();
            keep_unwritten(&mut out, &mut chunks.clone(), written);
            let rest: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
            assert_eq!(rest, b"abcdefghi"[written..].to_vec(), "written {written}");
            assert!(out.iter().all(|b| !b.is_empty()));
        }
    }
}
