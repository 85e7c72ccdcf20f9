//! Write-through: a task that queued bytes on a stream writes them to the WebSocket itself
//! when the connection's writer task is parked, instead of waking that task to do it.
//!
//! Every message used to cross two tasks on its way out (the relay queued it, the writer
//! task woke up, took it and wrote it), a wake-up and a poll of the writer per message
//! that a one-task proxy such as wstunnel does not pay. The writer task now parks its
//! socket here whenever it has nothing to do; a sender that finds it parked takes what
//! the connection has to send and tries one non-blocking write. Whatever does not go at
//! once (the socket is full, a TLS flush is owed, the write failed) stays in the writer's
//! pending tail and the writer task is woken to finish it, so the blocking waits, the
//! timers and the write-progress deadline all stay with the writer task. (A small send
//! while other streams are sending leaves the write-through to the flush task at the end
//! of the scheduler's turn, `flush.rs`, so that several streams' frames share it.)
//!
//! Order: frames are taken from the connection and written only by whoever holds the
//! parked writer (this slot's lock) or by the writer task while it has taken it back, so
//! frames reach the socket in the order the connection produced them.

use std::sync::{Arc, Mutex, TryLockError};

use culvert_proto::Transmit;
use tokio::io::AsyncWrite;

use super::Shared;
use crate::ws::BATCH_CAP;
use crate::wsframe::WsWriter;

/// Batches one write-through takes from the connection at most, written with one system
/// call; the rest is left to the writer task (a sender should not spend long writing for
/// other streams).
const MAX_BATCHES: usize = crate::wsframe::MAX_NOW_FRAMES;

/// A connection's writer as the stream handles see it (the socket type erased).
pub(crate) trait WriteThrough: Send + Sync {
    /// Writes what the connection has to send from the caller's task if the writer task is
    /// parked. `true` when everything went out and the writer task needs no wake-up.
    fn try_transmit(&self, shared: &Arc<Shared>) -> bool;
}

/// Where the writer task parks its socket while idle.
pub(crate) struct Parking<W> {
    inner: Mutex<Parked<W>>,
}

struct Parked<W> {
    ws: Option<WsWriter<W>>,
    txs: [Transmit; MAX_BATCHES],
}

impl<W> Parking<W> {
    /// An empty slot: the writer task holds its socket.
    pub(crate) fn new() -> Parking<W> {
        Parking {
            inner: Mutex::new(Parked {
                ws: None,
                txs: std::array::from_fn(|_| Transmit::new()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parked<W>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer task goes idle: senders may write through `ws` until it is taken back.
    pub(crate) fn park(&self, ws: WsWriter<W>) {
        self.lock().ws = Some(ws);
    }

    /// The writer task resumes (waits for a write-through in progress to end).
    pub(crate) fn take(&self) -> Option<WsWriter<W>> {
        self.lock().ws.take()
    }
}

impl<W: AsyncWrite + Unpin + Send> WriteThrough for Parking<W> {
    fn try_transmit(&self, shared: &Arc<Shared>) -> bool {
        // Busy (another sender is writing, or the writer task is taking it back): that
        // party sends these bytes too, or the wake-up below makes the writer task do it.
        let mut guard = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        let Parked { ws, txs } = &mut *guard;
        let Some(ws) = ws.as_mut() else {
            return false;
        };
        if !ws.can_send_now() {
            return false;
        }
        let (k, more, flood) = {
            let mut st = shared.lock();
            if st.closed.is_some()
                || st.closing.is_some()
                || st.pending_pong.is_some()
                || st.conn.error().is_some()
            {
                return false;
            }
            let mut k = 0;
            while k < txs.len() && st.conn.poll_transmit_segments(&mut txs[k], BATCH_CAP) > 0 {
                k += 1;
            }
            let flood = shared.dispatch(&mut st).err();
            (k, st.conn.wants_transmit(), flood)
        };
        if let Some(reason) = flood {
            txs[..k].iter_mut().for_each(Transmit::clear);
            drop(guard);
            shared.close(reason);
            return true;
        }
        if k == 0 {
            return !more;
        }
        let mut msgs: [(&[bytes::Bytes], usize); MAX_BATCHES] = [(&[], 0); MAX_BATCHES];
        for (m, t) in msgs.iter_mut().zip(&txs[..k]) {
            *m = (&t.segments[..], t.len);
        }
        let sent = ws.try_send_many_now(&msgs[..k]);
        txs[..k].iter_mut().for_each(Transmit::clear);
        // What is left (more than MAX_BATCHES batches were queued) is the writer task's.
        sent && !more
    }
}
