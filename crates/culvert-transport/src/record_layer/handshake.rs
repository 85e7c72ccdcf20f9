//! The TLS handshake through rustls's unbuffered API, ending in a [`TlsRecordStream`]:
//! rustls does the whole handshake, then hands over the traffic secrets and keeps only
//! what it needs for key updates and session tickets ([`rustls::kernel`]).

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rustls::client::UnbufferedClientConnection;
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError, UnbufferedStatus};
use rustls::{ClientConfig, ExtractedSecrets, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::protect::Version;
use super::stream::{Kernel, TlsRecordStream};
use crate::TransportError;

/// Most handshake bytes read from the peer (certificate chains are a few KiB).
const MAX_HANDSHAKE_IN: usize = 256 * 1024;
/// Most plaintext accepted before the handshake's end is seen (the peer's first request).
const MAX_EARLY_PLAINTEXT: usize = 64 * 1024;

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// What differs between rustls's client and server connections here.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
    fn into_kernel(self)
        -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
    fn version(&self) -> Option<ProtocolVersion>;
    fn alpn(&self) -> Option<Vec<u8>>;
}

/// The same methods exist on both of rustls's unbuffered connections, outside any trait.
macro_rules! unbuffered {
    ($conn:ty, $data:ty) => {
        impl Unbuffered for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn handshaking(&self) -> bool {
                self.is_handshaking()
            }
            fn into_kernel(
                self,
            ) -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
                self.dangerous_into_kernel_connection()
            }
            fn version(&self) -> Option<ProtocolVersion> {
                self.protocol_version()
            }
            fn alpn(&self) -> Option<Vec<u8>> {
                self.alpn_protocol().map(<[u8]>::to_vec)
            }
        }
    };
}

unbuffered!(
    UnbufferedClientConnection,
    rustls::client::ClientConnectionData
);
unbuffered!(
    UnbufferedServerConnection,
    rustls::server::ServerConnectionData
);

/// What the handshake leaves behind for the record stream.
struct Done<D> {
    secrets: ExtractedSecrets,
    kernel: KernelConnection<D>,
    version: Version,
    leftover: BytesMut,
    early: BytesMut,
    alpn: Option<Vec<u8>>,
}

impl<D> Done<D> {
    /// The record stream over `io` (`kernel` says which side rustls's part is).
    fn into_stream<S>(
        self,
        io: S,
        kernel: impl FnOnce(KernelConnection<D>) -> Kernel,
        wlimit: usize,
    ) -> Result<TlsRecordStream<S>, TransportError> {
        TlsRecordStream::new(
            io,
            kernel(self.kernel),
            self.version,
            self.secrets,
            self.leftover,
            self.early,
            wlimit,
        )
        .map(|s| s.with_alpn(self.alpn))
        .map_err(tls_err)
    }
}

/// Next step after one state of the handshake.
enum Step {
    Read,
    Finished,
}

/// Drives `conn`'s handshake over `io` to its end.
async fn drive<C, S>(mut conn: C, io: &mut S) -> Result<Done<C::Data>, TransportError>
where
    C: Unbuffered,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut incoming = BytesMut::with_capacity(16 * 1024);
    let mut outgoing = vec![0u8; 16 * 1024];
    let mut out_len = 0;
    let mut early = BytesMut::new();
    loop {
        let handshaking = conn.handshaking();
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                incoming.advance(discard);
                send_alert(&mut conn, &mut incoming, io).await;
                return Err(tls_err(e));
            }
        };
        let step = match state {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(tls_err)?;
                    if early.len() + rec.payload.len() > MAX_EARLY_PLAINTEXT {
                        return Err(tls_err("too much data during the TLS handshake"));
                    }
                    early.extend_from_slice(rec.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut e) => loop {
                match e.encode(&mut outgoing[out_len..]) {
                    Ok(n) => {
                        out_len += n;
                        break None;
                    }
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        outgoing.resize(out_len + required_size, 0);
                    }
                    Err(e) => return Err(tls_err(e)),
                }
            },
            ConnectionState::TransmitTlsData(t) => {
                io.write_all(&outgoing[..out_len]).await?;
                io.flush().await?;
                out_len = 0;
                t.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Step::Read),
            // Traffic may flow once the handshake is over; a server may reach this state
            // before the client's Finished came (half-RTT data), so it reads on.
            ConnectionState::WriteTraffic(_) if handshaking => Some(Step::Read),
            ConnectionState::WriteTraffic(_) => Some(Step::Finished),
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(tls_err(
                    "peer closed the connection during the TLS handshake",
                ))
            }
            other => return Err(tls_err(format!("unexpected TLS handshake state {other:?}"))),
        };
        incoming.advance(discard);
        match step {
            None => {}
            Some(Step::Read) if conn.handshaking() => {
                if incoming.len() >= MAX_HANDSHAKE_IN {
                    return Err(tls_err("TLS handshake too large"));
                }
                incoming.reserve(16 * 1024);
                if io.read_buf(&mut incoming).await? == 0 {
                    return Err(tls_err("connection closed during the TLS handshake"));
                }
            }
            // The handshake ended while this state was handled: look again.
            Some(Step::Read) => {}
            Some(Step::Finished) => break,
        }
    }
    let version = match conn.version() {
        Some(ProtocolVersion::TLSv1_3) => Version::Tls13,
        Some(ProtocolVersion::TLSv1_2) => Version::Tls12 {
            explicit_nonce: true,
        },
        v => return Err(tls_err(format!("unsupported TLS version {v:?}"))),
    };
    let alpn = conn.alpn();
    let (secrets, kernel) = conn.into_kernel().map_err(tls_err)?;
    Ok(Done {
        secrets,
        kernel,
        version,
        leftover: incoming,
        early,
        alpn,
    })
}

/// After a failed handshake, writes the alert rustls queued for the peer (best effort; the
/// caller's deadline bounds it): a plain-HTTP client then reads a TLS record, not silence,
/// and can say it dialed ws:// where wss:// was wanted.
/// `incoming` is the handshake's buffer as the failed state left it (rustls's record
/// positions refer to it).
async fn send_alert<C, S>(conn: &mut C, incoming: &mut BytesMut, io: &mut S)
where
    C: Unbuffered,
    S: AsyncRead + AsyncWrite + Unpin,
{
    // One call only: the queued alert comes out before rustls looks at the input again
    // (which would fail once more and queue a second alert).
    let mut out = vec![0u8; 512];
    let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..]);
    let len = match state {
        Ok(ConnectionState::EncodeTlsData(mut e)) => e.encode(&mut out).unwrap_or(0),
        _ => 0,
    };
    incoming.advance(discard);
    if len > 0 {
        let _ = io.write_all(&out[..len]).await;
        let _ = io.flush().await;
    }
}

/// rustls's two configurations, which both carry the switch this layer needs.
pub(super) trait SecretExtraction: Clone {
    fn enabled(&self) -> bool;
    fn enable(&mut self);
}

impl SecretExtraction for ClientConfig {
    fn enabled(&self) -> bool {
        self.enable_secret_extraction
    }
    fn enable(&mut self) {
        self.enable_secret_extraction = true;
    }
}

impl SecretExtraction for ServerConfig {
    fn enabled(&self) -> bool {
        self.enable_secret_extraction
    }
    fn enable(&mut self) {
        self.enable_secret_extraction = true;
    }
}

/// A configuration that allows the hand-over of secrets this layer needs: `config` itself
/// when it does (every one `crate::tls` builds), else a copy that does (an embedder's).
pub(super) fn with_extraction<T: SecretExtraction>(config: Arc<T>) -> Arc<T> {
    if config.enabled() {
        config
    } else {
        let mut c = (*config).clone();
        c.enable();
        Arc::new(c)
    }
}

/// The client side of the handshake with `name` over `io`, then the record stream.
pub async fn connect<S>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    mut io: S,
    wlimit: usize,
) -> Result<TlsRecordStream<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = with_extraction(config);
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_err)?;
    let d = drive(conn, &mut io).await?;
    d.into_stream(io, Kernel::Client, wlimit)
}

/// The server side of the handshake over `io`, then the record stream.
pub async fn accept<S>(
    config: Arc<ServerConfig>,
    mut io: S,
    wlimit: usize,
) -> Result<TlsRecordStream<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = with_extraction(config);
    let conn = UnbufferedServerConnection::new(config).map_err(tls_err)?;
    let d = drive(conn, &mut io).await?;
    d.into_stream(io, Kernel::Server, wlimit)
}
