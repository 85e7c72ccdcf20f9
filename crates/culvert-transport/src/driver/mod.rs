//! The driver of one multiplexed WebSocket: a reader task feeding received messages into
//! the [`Connection`], a writer task sending its batches, and a shared state that stream
//! handles touch directly (quinn's model: no channel hop per write).
//!
//! In the common case a message crosses no task of the driver: while the writer task is
//! parked, the task that queued bytes writes their frames itself (`direct.rs`), and while a
//! relay waits on its stream, the reader writes what arrives for it straight into the
//! relay's socket (`deliver.rs`). A small send leaves its write to the end of the
//! scheduler's turn (`flush.rs`), so that streams made ready together share one write.
//! The tasks take over only what could not be written at once, and keep the timers, the
//! blocking waits and the close handshake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culvert_proto::{Config, Connection, Control, Event, IdHash, Side, StreamId, Target};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};

use crate::stream::TunnelStream;
use crate::wsframe::WsConn;
use crate::TransportError;

pub(crate) mod deliver;
mod direct;
mod flush;
mod reader;
mod writer;

/// Control messages the application may leave unread before the peer counts as flooding.
const MAX_PENDING_CONTROL: usize = 1024;

/// What the driver hands the application.
#[derive(Debug)]
pub enum MuxEvent {
    /// The peer opened a stream towards `target`.
    Incoming(TunnelStream, Target),
    /// A control message (Auth, Register, Connect, …).
    Control(Control),
    /// The peer takes no new streams.
    GoingAway(String),
    /// The connection is gone; the reason.
    Closed(String),
}

/// Counters of one connection, for metrics and status.
#[derive(Debug, Clone, Copy, Default)]
pub struct MuxStats {
    /// Protocol counters.
    pub proto: culvert_proto::Stats,
    /// Streams holding state.
    pub open_streams: usize,
    /// Latest heartbeat round trip.
    pub rtt: Option<Duration>,
}

#[derive(Default)]
pub(crate) struct Wakers {
    pub(crate) read: Option<Waker>,
    pub(crate) write: Option<Waker>,
}

pub(crate) struct State {
    pub(crate) conn: Connection,
    pub(crate) wakers: HashMap<StreamId, Wakers, IdHash>,
    /// Peer resets not yet seen by their handle.
    pub(crate) resets: HashMap<StreamId, u64, IdHash>,
    pub(crate) closed: Option<String>,
    /// Set by [`Mux::close`]: the writer flushes what is queued, then closes.
    pub(crate) closing: Option<String>,
    /// Set by [`Mux::abort`]: the socket is dropped at once, with no close handshake.
    pub(crate) aborted: bool,
    /// A WebSocket ping to answer.
    pub(crate) pending_pong: Option<Bytes>,
    /// The close code (and reason) the reader's framing error calls for.
    pub(crate) ws_close: Option<(u16, &'static str)>,
    pending_control: usize,
    /// Where received datagrams go (see [`Mux::set_datagram_sink`]).
    pub(crate) sink: Option<DatagramSink>,
    /// Relays' sockets, for delivering their bytes from the reader (`deliver.rs`).
    pub(crate) deliver: HashMap<StreamId, deliver::Delivery, IdHash>,
    /// Streams with bytes to deliver directly (see [`Shared::dispatch_events`]).
    pub(crate) deliverable: Vec<StreamId>,
    /// The chunks of one direct delivery, kept between deliveries (empty in between) so
    /// that a delivery allocates nothing.
    pub(crate) deliver_chunks: Vec<Bytes>,
    /// Requests to the flush task (`flush.rs`).
    pub(crate) flush: flush::FlushSlot,
}

/// Receives each datagram as soon as the reader decodes it (see [`Mux::set_datagram_sink`]).
pub type DatagramSink = Arc<dyn Fn(culvert_proto::Datagram) + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) writer_wake: Notify,
    /// Wakes opens waiting for the peer's stream limit; a waiter that gives up (timed out,
    /// dropped) leaves nothing behind.
    streams_available: Notify,
    events: mpsc::UnboundedSender<MuxEvent>,
    pub(crate) closed_tx: watch::Sender<bool>,
    /// The writer's socket while the writer task is parked (write-through, `direct.rs`).
    direct: Arc<dyn direct::WriteThrough>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends what the connection has queued: while less than [`flush::DEFER_BELOW`] is
    /// queued and other streams than the sender's are open and sending, by the flush task
    /// at the end of this turn of the scheduler; otherwise written through from the
    /// caller's task while the writer task is parked, else by the writer task, woken for
    /// it. Never called with the state locked.
    pub(crate) fn transmit(self: &Arc<Self>) {
        self.transmit_locked(self.lock(), None);
    }

    /// [`Shared::transmit`] for a caller that holds the state's lock (released here, before
    /// anything is written or woken): the choice between the flush task and a write now
    /// takes no second lock. `sender` is the stream whose send (or read, releasing
    /// credit) this is; `None` for the connection's own frames.
    pub(crate) fn transmit_locked(
        self: &Arc<Self>,
        mut st: MutexGuard<'_, State>,
        sender: Option<StreamId>,
    ) {
        // With one stream, or one that has been sending alone, there is no other
        // stream's frame to share a write with. (Only the small sends that could defer
        // enter a run: larger ones and those of a lone stream write through anyway.)
        if st.conn.send_buffered() < flush::DEFER_BELOW
            && st.conn.open_streams() > 1
            && st.flush.others_sending(sender)
        {
            let waker = st.flush.request();
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
            return;
        }
        drop(st);
        self.write_now();
    }

    /// Sends what the connection has queued now: written through while the writer task is
    /// parked, else by the writer task, woken for it. Never called with the state locked.
    fn write_now(self: &Arc<Self>) {
        if !self.direct.try_transmit(self) {
            self.writer_wake.notify_one();
        }
    }

    /// Marks the connection dead and wakes everybody waiting on it.
    pub(crate) fn close(self: &Arc<Self>, reason: String) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        tracing::debug!(%reason, "tunnel connection closed");
        st.closed = Some(reason.clone());
        for (_, w) in st.wakers.drain() {
            w.read.into_iter().chain(w.write).for_each(Waker::wake);
        }
        let flusher = st.flush.take_waker();
        drop(st);
        flusher.into_iter().for_each(Waker::wake);
        self.streams_available.notify_waiters();
        let _ = self.events.send(MuxEvent::Closed(reason));
        let _ = self.closed_tx.send(true);
        self.writer_wake.notify_one();
    }

    /// Routes the connection's events: wake stream handles, hand new streams and
    /// control messages to the application, deliver to waiting relays.
    pub(crate) fn dispatch(self: &Arc<Self>, st: &mut State) -> Result<(), String> {
        let r = self.dispatch_events(st);
        if !st.deliverable.is_empty() {
            deliver::deliver(st);
        }
        r
    }

    /// [`Shared::dispatch`] that leaves the deliveries to waiting relays for later: the
    /// reader makes them once it has handled everything the socket had, or all of a small
    /// read (one write per relay per burst, not one per message).
    pub(crate) fn dispatch_events(self: &Arc<Self>, st: &mut State) -> Result<(), String> {
        while let Some(ev) = st.conn.poll_event() {
            match ev {
                Event::Readable(id) => {
                    let direct = st.deliver.get(&id).is_some_and(|d| d.ready());
                    if let Some(w) = st.wakers.get_mut(&id) {
                        if direct && w.read.is_some() {
                            // Its relay waits with nothing queued: delivered directly.
                            if !st.deliverable.contains(&id) {
                                st.deliverable.push(id);
                            }
                        } else if let Some(w) = w.read.take() {
                            w.wake();
                        }
                    }
                }
                Event::Finished(id) => {
                    if let Some(w) = st.wakers.get_mut(&id).and_then(|w| w.read.take()) {
                        w.wake();
                    }
                }
                Event::Writable(id) => {
                    if let Some(w) = st.wakers.get_mut(&id).and_then(|w| w.write.take()) {
                        w.wake();
                    }
                }
                Event::StreamReset { id, code } => {
                    if let Some(w) = st.wakers.get_mut(&id) {
                        st.resets.insert(id, code);
                        w.read
                            .take()
                            .into_iter()
                            .chain(w.write.take())
                            .for_each(Waker::wake);
                    }
                }
                Event::StreamOpened { id, target } => {
                    st.wakers.insert(id, Wakers::default());
                    let s = TunnelStream::new(self.clone(), id);
                    let _ = self.events.send(MuxEvent::Incoming(s, target));
                }
                Event::StreamsAvailable => self.streams_available.notify_waiters(),
                Event::Control(c) => {
                    st.pending_control += 1;
                    if st.pending_control > MAX_PENDING_CONTROL {
                        return Err("control message flood".into());
                    }
                    let _ = self.events.send(MuxEvent::Control(c));
                }
                Event::GoingAway { reason, .. } => {
                    let _ = self.events.send(MuxEvent::GoingAway(reason));
                }
                Event::HeartbeatRtt(rtt) => tracing::trace!(?rtt, "heartbeat"),
                // Datagrams stay in the connection's bounded drop-oldest queue until read.
                // The reader hands them to the sink after releasing the lock (until a sink
                // is set they wait in the connection's bounded drop-oldest queue).
                Event::DatagramReadable => {}
            }
        }
        Ok(())
    }
}

/// A handle to one multiplexed tunnel connection. Cloning shares it.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
    closed_rx: watch::Receiver<bool>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").finish_non_exhaustive()
    }
}

impl Mux {
    /// Starts the reader and writer tasks for `ws`; events arrive on the returned receiver.
    pub fn spawn<S>(
        ws: WsConn<S>,
        side: Side,
        config: Config,
    ) -> Result<(Mux, mpsc::UnboundedReceiver<MuxEvent>), TransportError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Connection::new(side, config, Instant::now())
            .map_err(|e| TransportError::Closed(e.to_string()))?;
        Ok(Mux::spawn_with(ws, conn))
    }

    /// Like [`Mux::spawn`], for a connection the caller prepared (queued Auth or AuthOk
    /// first, fed bytes read during the handshake, enabled v1 compatibility).
    pub fn spawn_with<S>(
        ws: WsConn<S>,
        conn: Connection,
    ) -> (Mux, mpsc::UnboundedReceiver<MuxEvent>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (events, rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = watch::channel(false);
        let parking = Arc::new(direct::Parking::new());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                conn,
                wakers: HashMap::default(),
                resets: HashMap::default(),
                closed: None,
                closing: None,
                aborted: false,
                pending_pong: None,
                ws_close: None,
                pending_control: 0,
                sink: None,
                deliver: HashMap::default(),
                deliverable: Vec::new(),
                deliver_chunks: Vec::new(),
                flush: flush::FlushSlot::default(),
            }),
            writer_wake: Notify::new(),
            streams_available: Notify::new(),
            events,
            closed_tx,
            direct: parking.clone(),
        });
        tokio::spawn(reader::run(shared.clone(), ws.reader));
        tokio::spawn(writer::run(shared.clone(), ws.writer, parking));
        tokio::spawn(flush::run(shared.clone()));
        // Events the connection produced before the tasks existed (e.g. from bytes fed during the handshake).
        {
            let mut st = shared.lock();
            if let Err(e) = shared.dispatch(&mut st) {
                drop(st);
                shared.close(e);
            }
        }
        (Mux { shared, closed_rx }, rx)
    }

    /// Opens a stream towards `target`, waiting while the peer's stream limit is reached.
    /// Data may be sent at once; it follows the open without a round trip.
    pub async fn open(&self, target: &str) -> Result<TunnelStream, TransportError> {
        self.open_to(Target::parse(target)).await
    }

    /// Opens a stream towards `target` (its kind explicit), waiting while the peer's stream
    /// limit is reached.
    pub async fn open_to(&self, target: Target) -> Result<TunnelStream, TransportError> {
        let id = loop {
            // Created before the check, so a release between the check and the wait wakes it.
            let available = self.shared.streams_available.notified();
            {
                let mut st = self.shared.lock();
                if let Some(r) = &st.closed {
                    return Err(TransportError::Closed(r.clone()));
                }
                match st.conn.can_open_stream() {
                    Ok(()) => {
                        let id = st.conn.open_stream_to(target)?;
                        st.wakers.insert(id, Wakers::default());
                        break id;
                    }
                    Err(culvert_proto::StreamError::StreamsExhausted) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            available.await;
        };
        self.shared.writer_wake.notify_one();
        Ok(TunnelStream::new(self.shared.clone(), id))
    }

    /// Sends a heartbeat now rather than at the next interval, so the round-trip time is
    /// known (for status views) as soon as a connection is up.
    pub fn measure_rtt(&self) {
        self.shared.lock().conn.heartbeat_now(Instant::now());
        self.shared.writer_wake.notify_one();
    }

    /// A key naming this connection (equal for clones, distinct between live connections),
    /// for tables keyed by connection and stream id.
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// Queues a control message.
    pub fn send_control(&self, msg: Control) -> Result<(), TransportError> {
        let mut st = self.shared.lock();
        if let Some(r) = &st.closed {
            return Err(TransportError::Closed(r.clone()));
        }
        st.conn
            .send_control(msg)
            .map_err(|e| TransportError::Closed(format!("unencodable control message: {e}")))?;
        drop(st);
        self.shared.writer_wake.notify_one();
        Ok(())
    }

    /// Queues a datagram of `flow`; refused (and counted) when larger than a frame can carry,
    /// and the oldest queued datagram is dropped (and counted) when the queue is full.
    pub fn send_datagram(&self, flow: u64, data: bytes::Bytes) -> Result<(), TransportError> {
        let mut st = self.shared.lock();
        if let Some(r) = &st.closed {
            return Err(TransportError::Closed(r.clone()));
        }
        st.conn.send_datagram(flow, data)?;
        drop(st);
        self.shared.writer_wake.notify_one();
        Ok(())
    }

    /// [`Mux::send_datagram`] for several datagrams of one flow, under one lock and with
    /// one wake-up of the writer (a burst read from a socket). Oversize ones are counted
    /// and skipped; `batch` is emptied.
    pub fn send_datagrams(
        &self,
        flow: u64,
        batch: &mut Vec<bytes::Bytes>,
    ) -> Result<(), TransportError> {
        let mut st = self.shared.lock();
        if let Some(r) = &st.closed {
            batch.clear();
            return Err(TransportError::Closed(r.clone()));
        }
        for data in batch.drain(..) {
            // Oversize is counted by the connection; the rest of the burst still goes.
            let _ = st.conn.send_datagram(flow, data);
        }
        drop(st);
        self.shared.writer_wake.notify_one();
        Ok(())
    }

    /// Delivers every datagram received from now on (and those already queued) to `sink`,
    /// called from the connection's reader task right after decoding, outside the
    /// connection's lock: no queue, no task hop. The sink must not block (use non-blocking
    /// sends, dropping on a full socket buffer as UDP would). Until a sink is set,
    /// datagrams wait in the connection's bounded drop-oldest queue.
    pub fn set_datagram_sink(&self, sink: DatagramSink) {
        let queued: Vec<_> = {
            let mut st = self.shared.lock();
            st.sink = Some(sink.clone());
            std::iter::from_fn(|| st.conn.recv_datagram()).collect()
        };
        queued.into_iter().for_each(|d| sink(d));
    }

    /// Acknowledges that the application handled one [`MuxEvent::Control`] (the flood bound).
    pub fn control_handled(&self) {
        let mut st = self.shared.lock();
        st.pending_control = st.pending_control.saturating_sub(1);
    }

    /// One frame per WebSocket message, for zlayer-tunnel v1 peers.
    pub fn set_single_frame_batches(&self, on: bool) {
        self.shared.lock().conn.set_single_frame_batches(on);
    }

    /// Announces that no new streams are accepted; existing ones carry on.
    pub fn go_away(&self, code: u64, reason: &str) {
        self.shared.lock().conn.go_away(code, reason);
        self.shared.writer_wake.notify_one();
    }

    /// Sends `Disconnect` with `reason`, flushes what is queued, and closes the connection
    /// (waiting at most one second for the flush).
    pub async fn close(&self, reason: &str) {
        let _ = self.send_control(Control::Disconnect {
            reason: reason.to_owned(),
        });
        self.shared.lock().closing = Some(format!("closed locally: {reason}"));
        self.shared.writer_wake.notify_one();
        if tokio::time::timeout(Duration::from_secs(1), self.closed())
            .await
            .is_err()
        {
            self.shared.close(format!("closed locally: {reason}"));
        }
    }

    /// Closes the connection at once, resetting its streams; the socket is closed at once
    /// too, even while a write to it is blocked.
    pub fn abort(&self, reason: &str) {
        self.shared.lock().aborted = true;
        self.shared.close(reason.to_owned());
    }

    /// Whether the peer has shown no sign of life for longer than a heartbeat interval
    /// plus a margin while a heartbeat is unanswered (or the connection is gone): new
    /// streams and flows belong on another connection.
    pub fn is_suspect(&self) -> bool {
        let st = self.shared.lock();
        st.closed.is_some() || st.conn.is_suspect(Instant::now())
    }

    /// Whether a new stream or flow may be placed here: open, the peer not going away,
    /// and not suspect. One lock, for the pickers of server and agent.
    pub fn takes_new_streams(&self) -> bool {
        let st = self.shared.lock();
        st.closed.is_none() && !st.conn.peer_going_away() && !st.conn.is_suspect(Instant::now())
    }

    /// Whether the peer announced it takes no new streams.
    pub fn peer_going_away(&self) -> bool {
        self.shared.lock().conn.peer_going_away()
    }

    /// Streams holding state (for draining).
    pub fn open_streams(&self) -> usize {
        self.shared.lock().conn.open_streams()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        *self.closed_rx.borrow()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        let mut rx = self.closed_rx.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Counters for metrics.
    pub fn stats(&self) -> MuxStats {
        let st = self.shared.lock();
        MuxStats {
            proto: st.conn.stats(),
            open_streams: st.conn.open_streams(),
            rtt: st.conn.rtt(),
        }
    }
}

impl Mux {
    /// Whether two handles refer to the same connection.
    pub fn same(&self, other: &Mux) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// Graceful drain shared by server and agent: tells the peer on each connection that no new
/// streams are taken, then waits until their streams have finished or `grace` has passed.
pub async fn drain(muxes: &[Mux], reason: &str, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    for m in muxes {
        m.go_away(0, reason);
    }
    loop {
        let open: usize = muxes
            .iter()
            .filter(|m| !m.is_closed())
            .map(|m| m.open_streams())
            .sum();
        if open == 0 {
            tracing::info!("all streams finished");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(open, "grace period over; closing streams still open");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
