//! The TLS record layer (`culvert_transport::record_layer`): rustls's handshake through its
//! unbuffered API, then records sealed and opened by Culvert.
//!
//! Handshake: arbitrary bytes from a hostile peer, read in scripted pieces, never panic
//! either role and never complete a handshake (nothing can, without the keys).
//!
//! Records: after a real handshake between Culvert's two ends (over an in-memory pipe), one
//! end sends arbitrary data in arbitrary writes (plain or vectored, so both the direct and
//! the gathering seal paths run) and closes; the bytes the other end reads are edited on
//! the way (bits flipped, the stream cut, bytes inserted) and come in short reads. The
//! reader never panics and never returns a byte that was not sent: what it returns is
//! always a prefix of the data, a clean end comes only with all of it, and with no edit
//! the data arrives whole and ends cleanly.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use arbitrary::Arbitrary;
use culvert_fuzz::io::{runtime, AtEnd, Script, ScriptedIo};
use culvert_transport::record_layer::{accept, connect};
use culvert_transport::tls::{client_config, ServerTls, Verify};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// Most bytes of data one input sends (its chunks, repeated).
const MAX_DATA: usize = 1 << 20;
/// The outgoing-record limit handed to the record layer (what the tunnel endpoint uses).
const WLIMIT: usize = 512 * 1024;

#[derive(Arbitrary, Debug)]
enum Edit {
    /// XOR a byte (a zero mask is made 1, so every flip changes something).
    Flip { at: u32, mask: u8 },
    /// The peer's connection ends here, without close_notify.
    Cut { at: u32 },
    /// These bytes appear here.
    Insert { at: u32, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The hostile bytes go to a server (else to a client).
    hostile_to_server: bool,
    hostile: Vec<u8>,
    hostile_reads: Vec<u8>,
    /// The client sends the data (else the server does).
    client_sends: bool,
    vectored: bool,
    chunks: Vec<Vec<u8>>,
    /// How many times the chunks are sent over.
    repeat: u8,
    edits: Vec<Edit>,
    /// Sizes of the receiving end's first socket reads.
    reads: Vec<u8>,
}

/// One server identity and a client that pins it, made once per process.
fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static C: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    C.get_or_init(|| {
        let tls = ServerTls::self_signed(&["localhost".to_owned()]).expect("a certificate");
        let client =
            client_config(&Verify::Fingerprint(tls.fingerprint.clone())).expect("a client config");
        (tls.config, client)
    })
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a name")
}

async fn hostile(input: &Input) {
    let (sc, cc) = configs();
    let io = ScriptedIo::new(
        input.hostile.clone(),
        Script::new(input.hostile_reads.clone()),
        Script::new(Vec::new()),
        AtEnd::Eof,
        false,
    );
    let done = if input.hostile_to_server {
        accept(sc.clone(), io, WLIMIT).await.is_ok()
    } else {
        connect(cc.clone(), localhost(), io, WLIMIT).await.is_ok()
    };
    assert!(!done, "a handshake completed against bytes without keys");
}

/// The edits of one direction, applied by absolute position in what the peer sent after
/// the handshake (positions wrap at twice the data's length, so they land inside it).
#[derive(Default)]
struct Tap {
    armed: bool,
    /// Bytes of the peer's stream handed on so far since arming.
    pos: u64,
    flips: Vec<(u64, u8)>,
    cut: Option<u64>,
    /// Each is handed on once, before the byte at its position.
    inserts: Vec<(u64, Vec<u8>)>,
    /// Sizes of the first reads (each byte's low bits pick from [`READ_SIZES`]).
    reads: Vec<u8>,
    read_at: usize,
}

/// Read sizes the script picks from.
const READ_SIZES: [usize; 8] = [1, 2, 5, 16, 300, 4096, 17_000, 65_536];

/// The receiving end's socket: the pipe, read through the tap.
struct Tapped {
    inner: DuplexStream,
    tap: Arc<Mutex<Tap>>,
    /// Where a read lands before its flips are applied.
    scratch: Vec<u8>,
}

impl AsyncRead for Tapped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut tap = this.tap.lock().expect("the tap");
        if !tap.armed {
            drop(tap);
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut most = buf.remaining();
        if let Some(&r) = tap.reads.get(tap.read_at) {
            // The first reads take the scripted sizes; the rest take what there is.
            tap.read_at += 1;
            most = most.min(READ_SIZES[usize::from(r & 7)]);
        }
        if most == 0 {
            return Poll::Ready(Ok(()));
        }
        let pos = tap.pos;
        if let Some(i) = tap.inserts.iter().position(|(at, _)| *at == pos) {
            let (_, bytes) = tap.inserts.remove(i);
            // Whatever of it does not fit is lost: still an edit.
            buf.put_slice(&bytes[..bytes.len().min(most)]);
            return Poll::Ready(Ok(()));
        }
        if tap.cut.is_some_and(|c| c <= pos) {
            return Poll::Ready(Ok(()));
        }
        if let Some(c) = tap.cut {
            most = most.min(usize::try_from(c - pos).unwrap_or(usize::MAX));
        }
        if let Some(next) = tap
            .inserts
            .iter()
            .map(|(at, _)| *at)
            .filter(|at| *at > pos)
            .min()
        {
            most = most.min(usize::try_from(next - pos).unwrap_or(usize::MAX));
        }
        let scratch = &mut this.scratch;
        scratch.resize(most, 0);
        let mut rb = ReadBuf::new(scratch);
        let p = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
        if let Poll::Ready(Ok(())) = p {
            let got = rb.filled().len();
            for (at, mask) in &tap.flips {
                if *at >= pos && *at < pos + got as u64 {
                    scratch[(at - pos) as usize] ^= mask;
                }
            }
            tap.pos += got as u64;
            buf.put_slice(&scratch[..got]);
        }
        p
    }
}

impl AsyncWrite for Tapped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &[Vec<u8>],
    repeat: usize,
    vectored: bool,
) -> io::Result<()> {
    for _ in 0..repeat {
        for c in chunks {
            if vectored && c.len() > 1 {
                // The first slice small, so the gathering path and the direct one both run.
                let (a, b) = c.split_at(c.len().min(7));
                let mut done = 0;
                while done < c.len() {
                    let bufs = if done < a.len() {
                        [io::IoSlice::new(&a[done..]), io::IoSlice::new(b)]
                    } else {
                        [
                            io::IoSlice::new(&b[done - a.len()..]),
                            io::IoSlice::new(&[]),
                        ]
                    };
                    let n = w.write_vectored(&bufs).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    done += n;
                }
            } else {
                w.write_all(c).await?;
            }
        }
    }
    w.shutdown().await
}

async fn records(input: &Input) {
    let (sc, cc) = configs();
    let per_round: usize = input.chunks.iter().map(Vec::len).sum();
    let repeat = MAX_DATA
        .checked_div(per_round)
        .map_or(1, |most| usize::from(input.repeat).clamp(1, most.max(1)));
    let mut sent = Vec::with_capacity(per_round * repeat);
    for _ in 0..repeat {
        input.chunks.iter().for_each(|c| sent.extend_from_slice(c));
    }

    let span = 2 * sent.len() as u64 + 64;
    let mut tap = Tap {
        reads: input.reads.clone(),
        ..Tap::default()
    };
    for e in &input.edits {
        match e {
            Edit::Flip { at, mask } => tap.flips.push((u64::from(*at) % span, (*mask).max(1))),
            Edit::Cut { at } => {
                let at = u64::from(*at) % span;
                tap.cut = Some(tap.cut.map_or(at, |c| c.min(at)));
            }
            Edit::Insert { at, bytes } if !bytes.is_empty() => {
                let at = u64::from(*at) % span;
                if !tap.inserts.iter().any(|(a, _)| *a == at) {
                    tap.inserts.push((at, bytes.clone()));
                }
            }
            Edit::Insert { .. } => {}
        }
    }
    let edited = !tap.flips.is_empty() || tap.cut.is_some() || !tap.inserts.is_empty();
    let tap = Arc::new(Mutex::new(tap));

    let sent_len = sent.len();
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (c, s) = if input.client_sends {
        (
            Tapped {
                inner: c,
                tap: Arc::new(Mutex::new(Tap::default())),
                scratch: Vec::new(),
            },
            Tapped {
                inner: s,
                tap: tap.clone(),
                scratch: Vec::new(),
            },
        )
    } else {
        (
            Tapped {
                inner: c,
                tap: tap.clone(),
                scratch: Vec::new(),
            },
            Tapped {
                inner: s,
                tap: Arc::new(Mutex::new(Tap::default())),
                scratch: Vec::new(),
            },
        )
    };
    let (client, server) = tokio::join!(
        connect(cc.clone(), localhost(), c, WLIMIT),
        accept(sc.clone(), s, WLIMIT)
    );
    let (client, server) = (
        client.expect("our client's handshake"),
        server.expect("our server's handshake"),
    );
    // Everything from here on is records: the edits apply to them.
    tap.lock().expect("the tap").armed = true;

    let (mut sender, receiver): (Box<dyn AsyncWriteUnpin>, Box<dyn AsyncReadUnpin>) =
        if input.client_sends {
            (Box::new(client), Box::new(server))
        } else {
            (Box::new(server), Box::new(client))
        };
    let (_, got) = tokio::join!(
        async {
            // Fails once the receiver has given up and dropped its end: that is fine.
            let _ = send(&mut sender, &input.chunks, repeat, input.vectored).await;
        },
        async {
            let mut receiver = receiver;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 40_000];
            let end = loop {
                match receiver.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e),
                }
                assert!(got.len() <= sent_len, "more bytes read than were sent");
            };
            drop(receiver);
            (got, end)
        }
    );
    let (got, end) = got;
    assert!(sent.starts_with(&got), "a byte that was not sent came out");
    match end {
        Ok(()) => assert_eq!(got.len(), sent.len(), "a clean end before all the data"),
        Err(e) => assert!(edited, "an unedited stream failed: {e}"),
    }
}

trait AsyncWriteUnpin: AsyncWrite + Unpin {}
impl<T: AsyncWrite + Unpin> AsyncWriteUnpin for T {}
trait AsyncReadUnpin: AsyncRead + Unpin {}
impl<T: AsyncRead + Unpin> AsyncReadUnpin for T {}

fuzz_target!(|input: Input| {
    runtime().block_on(async {
        hostile(&input).await;
        records(&input).await;
    });
});
