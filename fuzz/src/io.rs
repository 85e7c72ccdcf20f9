//! An in-memory socket whose reads and writes follow a script from the fuzz input: short
//! reads, short writes and `Pending`, as a real socket (or TLS) may give them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sizes a script byte picks from (its low three bits).
const SIZES: [usize; 8] = [1, 2, 3, 7, 64, 1000, 4096, 65_536];

/// One direction's script: each operation takes the next byte; bit 7 makes it `Pending`
/// (waking at once, so the task is polled again), the low bits pick its size. Once the
/// script is used up every operation is ready and large, so each run ends.
#[derive(Debug, Default, Clone)]
pub struct Script {
    steps: Vec<u8>,
    at: usize,
}

impl Script {
    /// A script from fuzz bytes.
    pub fn new(steps: Vec<u8>) -> Script {
        Script { steps, at: 0 }
    }

    /// `None`: be `Pending` this time; else how many bytes to move at most.
    fn next(&mut self) -> Option<usize> {
        let Some(&b) = self.steps.get(self.at) else {
            return Some(SIZES[7]);
        };
        self.at += 1;
        if b & 0x80 != 0 {
            None
        } else {
            Some(SIZES[usize::from(b & 7)])
        }
    }
}

/// What the scripted socket does once its input is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// Reads return end-of-file.
    Eof,
    /// Reads stay `Pending` forever (a peer that stops sending but keeps the socket).
    Hang,
}

/// A socket reading `input` and recording what is written, both by script.
#[derive(Debug)]
pub struct ScriptedIo {
    input: Vec<u8>,
    pos: usize,
    reads: Script,
    writes: Script,
    at_end: AtEnd,
    vectored: bool,
    /// Everything written so far.
    pub output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl ScriptedIo {
    /// A socket that yields `input` per `reads` and takes writes per `writes`.
    pub fn new(
        input: Vec<u8>,
        reads: Script,
        writes: Script,
        at_end: AtEnd,
        vectored: bool,
    ) -> ScriptedIo {
        ScriptedIo {
            input,
            pos: 0,
            reads,
            writes,
            at_end,
            vectored,
            output: Default::default(),
        }
    }
}

impl AsyncRead for ScriptedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos == self.input.len() {
            return match self.at_end {
                AtEnd::Eof => Poll::Ready(Ok(())),
                AtEnd::Hang => Poll::Pending,
            };
        }
        let Some(max) = self.reads.next() else {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let n = max.min(buf.remaining()).min(self.input.len() - self.pos);
        let at = self.pos;
        buf.put_slice(&self.input[at..at + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(max) = self.writes.next() else {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let n = max.min(data.len());
        self.output.lock().unwrap().extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(max) = self.writes.next() else {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let mut left = max;
        let mut out = self.output.lock().unwrap();
        let mut n = 0;
        for b in bufs {
            let take = left.min(b.len());
            out.extend_from_slice(&b[..take]);
            n += take;
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A paused-clock current-thread runtime, shared by the iterations of one process: timers
/// (heartbeats, the idle timeout) advance as soon as every task waits.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
    })
}
