//! UDP flows this side opens (a node's forward UDP tunnels): each is announced by a stream
//! whose target is `udp://HOST:PORT`, and its datagrams carry the stream's id as flow id.
//! Flow ids the server assigns are odd and ids of client-opened streams are even, so one
//! connection's datagrams split cleanly between target-side and local flows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use culvert_transport::udp_target::TargetFlows;
use culvert_transport::{DatagramSink, Mux, TransportError, TunnelStream};
use tokio::sync::mpsc;

/// Replies queued per local flow before the newest are dropped (and counted): a reader
/// that stalls cannot grow memory.
const FLOW_QUEUE: usize = 256;

/// Local flows of every pooled connection, by (connection key, flow id).
#[derive(Debug, Default)]
pub(crate) struct LocalFlows {
    map: Mutex<HashMap<(usize, u64), mpsc::Sender<Bytes>>>,
    /// Replies dropped because a flow's queue was full.
    pub(crate) dropped: AtomicU64,
}

impl LocalFlows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, u64), mpsc::Sender<Bytes>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A UDP flow this side opened: send datagrams to the far target, receive its replies.
/// Dropping it ends the flow (its stream is reset, so the far side closes its socket).
#[derive(Debug)]
pub struct LocalFlow {
    stream: TunnelStream,
    mux: Mux,
    rx: mpsc::Receiver<Bytes>,
    local: Arc<LocalFlows>,
}

impl LocalFlow {
    pub(crate) fn register(local: &Arc<LocalFlows>, mux: Mux, stream: TunnelStream) -> LocalFlow {
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        local.lock().insert((mux.key(), stream.id().0), tx);
        LocalFlow {
            stream,
            mux,
            rx,
            local: local.clone(),
        }
    }

    /// Sends one datagram towards the target (dropped and counted by the connection when
    /// larger than a frame carries or when its queue is full).
    pub fn send(&self, data: Bytes) -> Result<(), TransportError> {
        self.mux.send_datagram(self.stream.id().0, data)
    }

    /// The next reply; `None` when the connection or the far side ended the flow.
    pub async fn recv(&mut self) -> Option<Bytes> {
        tokio::select! {
            d = self.rx.recv() => d,
            // The far side refused or closed the flow (its stream ended).
            _ = async { while let Ok(Some(_)) = self.stream.recv().await {} } => None,
        }
    }
}

impl Drop for LocalFlow {
    fn drop(&mut self) {
        self.local
            .lock()
            .remove(&(self.mux.key(), self.stream.id().0));
    }
}

/// Where a connection's datagrams go: even flow ids to this side's local flows, odd ones
/// to the target-side flows the server announced. Runs in the connection's reader.
pub(crate) fn sink(mux: &Mux, targets: Arc<TargetFlows>, local: Arc<LocalFlows>) -> DatagramSink {
    let key = mux.key();
    Arc::new(move |d: culvert_proto::Datagram| {
        if d.flow % 2 == 0 {
            let tx = local.lock().get(&(key, d.flow)).cloned();
            if let Some(tx) = tx {
                if tx.try_send(d.data).is_err() {
                    local.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            targets.deliver(d);
        }
    })
}
