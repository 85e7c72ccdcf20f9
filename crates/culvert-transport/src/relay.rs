//! Copies bytes both ways between a TCP socket and a tunnel stream (or between two tunnel
//! streams), honouring half-close.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use culvert_proto::reset_code;
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

/// Live byte counters a relay adds to as bytes move, so status views show long-lived
/// connections' traffic before they end. Shared by every connection of a tunnel.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Socket → tunnel.
    pub up: AtomicU64,
    /// Tunnel → socket.
    pub down: AtomicU64,
}

/// Relays until both directions finished. A socket EOF becomes a FIN; a FIN becomes a
/// socket shutdown of the write side. An error on either side aborts both (the stream is
/// reset when dropped, the socket closed).
pub async fn relay_tcp(tcp: TcpStream, stream: &TunnelStream) -> std::io::Result<RelayTotals> {
    relay_tcp_counted(tcp, stream, None).await
}

/// [`relay_tcp`], also adding every chunk to `counters` as it moves.
pub async fn relay_tcp_counted(
    tcp: TcpStream,
    stream: &TunnelStream,
    counters: Option<&RelayCounters>,
) -> std::io::Result<RelayTotals> {
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
            if let Some(c) = counters {
                c.up.fetch_add(n as u64, Ordering::Relaxed);
            }
            stream.send(buf.split().freeze()).await?;
        }
    };
    let down = async {
        let mut total = 0u64;
        while let Some(chunk) = stream.recv().await? {
            total += chunk.len() as u64;
            if let Some(c) = counters {
                c.down.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await?;
        Ok::<u64, std::io::Error>(total)
    };
    let (up, down) = tokio::try_join!(up, down)?;
    Ok(RelayTotals { up, down })
}

/// Splices two tunnel streams (a server joining an access client's stream to the agent's):
/// bytes pass without copying, a FIN on one becomes a FIN on the other, and a reset on
/// either side resets the other with the same code, so the far end learns why.
/// `up` is `a` → `b`.
pub async fn relay_streams(a: &TunnelStream, b: &TunnelStream) -> std::io::Result<RelayTotals> {
    async fn pump(from: &TunnelStream, to: &TunnelStream) -> std::io::Result<u64> {
        let mut total = 0u64;
        loop {
            match from.recv().await {
                Ok(Some(chunk)) => {
                    total += chunk.len() as u64;
                    if let Err(e) = to.send(chunk).await {
                        from.reset(crate::reset_code_of(&e).unwrap_or(reset_code::INTERNAL));
                        return Err(e);
                    }
                }
                Ok(None) => {
                    to.finish()?;
                    return Ok(total);
                }
                Err(e) => {
                    to.reset(crate::reset_code_of(&e).unwrap_or(reset_code::INTERNAL));
                    return Err(e);
                }
            }
        }
    }
    let (up, down) = tokio::try_join!(pump(a, b), pump(b, a))?;
    Ok(RelayTotals { up, down })
}
