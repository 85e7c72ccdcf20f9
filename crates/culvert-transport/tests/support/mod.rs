//! Helpers shared by the transport's integration tests.

use std::time::Duration;

use culvert_transport::{MuxEvent, TunnelStream};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long a test waits for anything at most.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The next stream the peer opened.
pub async fn incoming(events: &mut UnboundedReceiver<MuxEvent>) -> TunnelStream {
    loop {
        match tokio::time::timeout(LIMIT, events.recv()).await {
            Ok(Some(MuxEvent::Incoming(s, _))) => return s,
            Ok(Some(_)) => continue,
            other => panic!("no incoming stream: {other:?}"),
        }
    }
}
