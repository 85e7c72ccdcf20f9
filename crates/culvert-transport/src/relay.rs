//! Copies bytes both ways between a TCP socket and a tunnel stream, honouring half-close.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TunnelStream;

/// Read size from the socket: one 64 KiB frame's worth per read keeps syscalls and frames few.
const READ_CHUNK: usize = 64 * 1024;

/// Bytes moved by one relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayTotals {
    /// Socket → tunnel.
    pub up: u64,
    /// Tunnel → socket.
    pub down: u64,
}

/// Relays until both directions finished. A socket EOF becomes a FIN; a FIN becomes a
/// socket shutdown of the write side. An error on either side aborts both (the stream is
/// reset when dropped, the socket closed).
pub async fn relay_tcp(tcp: TcpStream, stream: &TunnelStream) -> std::io::Result<RelayTotals> {
    let (mut rd, mut wr) = tcp.into_split();
    let up = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut total = 0u64;
        loop {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let n = rd.read_buf(&mut buf).await?;
            if n == 0 {
                stream.finish()?;
                return Ok::<u64, std::io::Error>(total);
            }
            total += n as u64;
            stream.send(buf.split().freeze()).await?;
        }
    };
    let down = async {
        let mut total = 0u64;
        while let Some(chunk) = stream.recv().await? {
            total += chunk.len() as u64;
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await?;
        Ok::<u64, std::io::Error>(total)
    };
    let (up, down) = tokio::try_join!(up, down)?;
    Ok(RelayTotals { up, down })
}
