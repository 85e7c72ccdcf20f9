//! What [`Client::open`](crate::Client::open) returns: a tunnel stream, or, under a
//! `Direct` fallback while the tunnel is down, a plain TCP connection. Both read and write
//! the same way, so the caller's code does not change with the path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use culvert_transport::TunnelStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A byte stream to a service: tokio's `AsyncRead` + `AsyncWrite`, so it can be handed to
/// `tokio::io::copy`, a hyper client connection or `tokio_postgres::Config::connect_raw`.
/// A stream reset by the peer reads as an `io::Error` that converts into
/// [`Error::Reset`](crate::Error::Reset). Over the tunnel, dropped after `shutdown` it
/// still delivers everything written; dropped before, it is reset.
#[derive(Debug)]
pub struct ClientStream {
    path: Path,
}

#[derive(Debug)]
enum Path {
    Tunnel(TunnelStream),
    Direct(TcpStream),
}

impl ClientStream {
    pub(crate) fn tunnel(s: TunnelStream) -> ClientStream {
        ClientStream {
            path: Path::Tunnel(s),
        }
    }

    pub(crate) fn direct(s: TcpStream) -> ClientStream {
        ClientStream {
            path: Path::Direct(s),
        }
    }

    /// Whether this stream bypasses the tunnel (a `Direct` fallback was used).
    pub fn is_direct(&self) -> bool {
        matches!(self.path, Path::Direct(_))
    }

    /// The tunnel stream, for its zero-copy `send`/`recv`; `None` for a direct connection.
    pub fn into_tunnel(self) -> Option<TunnelStream> {
        match self.path {
            Path::Tunnel(s) => Some(s),
            Path::Direct(_) => None,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().path {
            Path::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
            Path::Direct(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().path {
            Path::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
            Path::Direct(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().path {
            Path::Tunnel(s) => Pin::new(s).poll_flush(cx),
            Path::Direct(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().path {
            Path::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
            Path::Direct(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
