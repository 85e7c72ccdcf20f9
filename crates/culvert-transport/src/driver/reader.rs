//! The reader task of a connection: feeds received WebSocket messages into the
//! [`culvert_proto::Connection`] and dispatches what they produce. It never waits on
//! anything but the socket and the connection's closing, so an abort ends it at once; the
//! writer's clock ends a connection whose peer fell silent.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf};

use super::Shared;

/// How long the reader leaves the writer to explain a limit (send GoAway and close) before
/// it closes the connection itself: the writer's close grace and a margin.
const GOODBYE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
use crate::wsframe::{WsIn, WsReader};

pub(super) async fn run<S>(shared: Arc<Shared>, mut ws: WsReader<ReadHalf<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut closed = shared.closed_tx.subscribe();
    // One wait for the closing, kept across messages: made anew each time the socket ran
    // dry, it registered with the watch's notifier and unregistered again (under its lock)
    // for every message.
    let closing = closed.wait_for(|c| *c);
    tokio::pin!(closing);
    // A limit the peer made the connection exceed (not a violation): the writer explains.
    let mut explain = false;
    // Nothing handled since the deliveries were last flushed (only this loop's dispatch
    // leaves any behind): no second lock for the same burst.
    let mut flushed = true;
    let reason = loop {
        let msg = {
            if !flushed && ws.small_burst_done() {
                // A small burst is all handled (a request, a reply): deliver it now rather
                // than after the read below finds the socket empty, one system call later
                // on every hop of a round trip.
                flush_deliveries(&shared);
                flushed = true;
            }
            let next = ws.next();
            tokio::pin!(next);
            match std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await {
                Poll::Ready(m) => m,
                Poll::Pending => {
                    // The socket has nothing more for now: deliver what this burst brought
                    // to relays waiting on it, then wait.
                    if !flushed {
                        flush_deliveries(&shared);
                    }
                    // `next` was just polled with this task's waker and returned
                    // `Pending`, so it wakes the task when it can go on (the socket has
                    // data): polling it again before that only finds the socket empty once
                    // more (one read attempt per message for nothing). A wake-up that came
                    // while the deliveries ran has already rescheduled the task, and the
                    // poll after it polls `next`.
                    let mut just_polled = true;
                    let got = std::future::poll_fn(|cx| {
                        if !std::mem::take(&mut just_polled) {
                            if let Poll::Ready(m) = next.as_mut().poll(cx) {
                                return Poll::Ready(Some(m));
                            }
                        }
                        closing.as_mut().poll(cx).map(|_| None)
                    })
                    .await;
                    match got {
                        Some(m) => m,
                        None => return,
                    }
                }
            }
        };
        flushed = false;
        let data = match msg {
            Ok(WsIn::Data(b)) => b,
            Ok(WsIn::Ping(p)) => {
                let mut st = shared.lock();
                st.conn.handle_keepalive(Instant::now());
                st.pending_pong = Some(p);
                drop(st);
                shared.writer_wake.notify_one();
                continue;
            }
            Ok(WsIn::Close) => match ws.peer_close() {
                Some(c) => break format!("peer closed the websocket ({c})"),
                None => break "peer closed the websocket".to_owned(),
            },
            Err(e) => {
                // A framing error is answered with its RFC 6455 close code.
                shared.lock().ws_close = crate::wsframe::close_code(&e);
                break format!("websocket read: {e}");
            }
        };
        let mut st = shared.lock();
        if let Err(e) = st.conn.handle_bytes(Instant::now(), data) {
            explain = st.conn.has_final_frame();
            drop(st);
            break format!("protocol violation by peer: {e}");
        }
        let r = shared.dispatch_events(&mut st);
        let wake = st.conn.wants_transmit();
        // With a sink, this message's datagrams go out from here, after the lock is released.
        let sink = st.sink.clone();
        let datagrams: Vec<_> = match &sink {
            Some(_) => std::iter::from_fn(|| st.conn.recv_datagram()).collect(),
            None => Vec::new(),
        };
        drop(st);
        if let Some(sink) = &sink {
            datagrams.into_iter().for_each(|d| sink(d));
        }
        if let Err(e) = r {
            break e;
        }
        if wake {
            shared.transmit();
        }
    };
    if explain {
        // The writer sends the GoAway that says why, then closes; closing here first would
        // drop the socket under it. Bounded.
        shared.writer_wake.notify_one();
        let _ = tokio::time::timeout(GOODBYE_WAIT, &mut closing).await;
    }
    shared.close(reason);
}

/// Writes the bytes held back for relays waiting on their streams (`deliver.rs`), and
/// sends what reading them released (window updates).
fn flush_deliveries(shared: &Arc<Shared>) {
    let mut st = shared.lock();
    if st.deliverable.is_empty() {
        return;
    }
    super::deliver::deliver(&mut st);
    if st.conn.wants_transmit() {
        shared.transmit_locked(st, None);
    }
}
