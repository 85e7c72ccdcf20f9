//! A UDP flow to a service, opened by [`Client::open_udp`](crate::Client::open_udp): the
//! datagram counterpart of a stream.

use bytes::Bytes;

use crate::Error;

/// Datagrams to one UDP service and its replies. Dropping it ends the flow.
#[derive(Debug)]
pub struct UdpFlow {
    flow: culvert_agent::LocalFlow,
}

impl UdpFlow {
    pub(crate) fn new(flow: culvert_agent::LocalFlow) -> UdpFlow {
        UdpFlow { flow }
    }

    /// Sends one datagram towards the service. Like UDP, delivery is not guaranteed: a
    /// datagram larger than a frame carries, or one meeting a full queue, is dropped.
    pub fn send(&self, datagram: impl Into<Bytes>) -> Result<(), Error> {
        Ok(self.flow.send(datagram.into())?)
    }

    /// The next reply; `None` once the flow ended (refused, idle, or the tunnel lost).
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.flow.recv().await
    }
}
