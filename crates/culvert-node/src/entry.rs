//! What a tunnel or access session listens with locally, TCP or UDP, behind one face.

use crate::{Forward, UdpForward};

/// A local entry point of a tunnel or access session: a TCP listener or a UDP port.
pub(crate) enum Entry {
    Tcp(Forward),
    Udp(UdpForward),
}

impl Entry {
    pub(crate) fn status(&self) -> crate::ForwardStatus {
        match self {
            Entry::Tcp(f) => f.status(),
            Entry::Udp(f) => f.status(),
        }
    }

    pub(crate) fn local_addr(&self) -> std::net::SocketAddr {
        match self {
            Entry::Tcp(f) => f.local_addr(),
            Entry::Udp(f) => f.local_addr(),
        }
    }

    pub(crate) fn close(&self) {
        match self {
            Entry::Tcp(f) => f.close(),
            Entry::Udp(f) => f.close(),
        }
    }

    pub(crate) async fn closed(&self) {
        match self {
            Entry::Tcp(f) => f.closed().await,
            Entry::Udp(f) => f.closed().await,
        }
    }
}
