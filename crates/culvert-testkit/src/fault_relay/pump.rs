//! One direction of a relayed connection: reads into a fixed buffer, queues what it read
//! (bounded), and writes it on as the faults in force allow.
//!
//! All state lives in [`Pump`], outside the future of [`Pump::run`], and every await in
//! the loop is cancel-safe (a read or write either completed and was accounted for, or did
//! not happen), so the connection can drop the future at any point (for a cut) and still
//! flush what was read.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Direction, Faults, Rechunk, Shared, QUEUE_CAP, READ_BUF};

/// Bytes read at one time, and when.
struct Chunk {
    data: Vec<u8>,
    read_at: Instant,
}

/// One direction's state.
pub(super) struct Pump {
    dir: Direction,
    index: u64,
    shared: Arc<Shared>,
    global: watch::Receiver<Faults>,
    own: watch::Receiver<Faults>,
    buf: Box<[u8]>,
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_off: usize,
    /// Bytes in `queue` not yet written.
    queued: usize,
    /// The sender finished (read returned 0).
    eof: bool,
    /// The receiver was sent our FIN.
    shut: bool,
    chunker: Option<Chunker>,
    bucket: Option<TokenBucket>,
}

impl Pump {
    pub fn new(
        dir: Direction,
        index: u64,
        shared: Arc<Shared>,
        own: &watch::Sender<Faults>,
    ) -> Pump {
        Pump {
            dir,
            index,
            global: shared.faults.subscribe(),
            own: own.subscribe(),
            shared,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            queue: VecDeque::new(),
            front_off: 0,
            queued: 0,
            eof: false,
            shut: false,
            chunker: None,
            bucket: None,
        }
    }

    /// Moves bytes from `r` to `w` until `r` ends and everything read was written and
    /// followed by a FIN (`Ok`), or an IO error.
    pub async fn run<R, W>(&mut self, r: &mut R, w: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let f = self.faults();
            self.configure(&f);
            let stopped = f.stopped(self.dir);
            if !stopped && self.eof && self.queue.is_empty() {
                if !self.shut {
                    w.shutdown().await?;
                    self.shut = true;
                }
                return Ok(());
            }
            let cap = if f.latency.is_zero() {
                READ_BUF
            } else {
                QUEUE_CAP
            };
            let can_read = !stopped && !self.eof && self.queued < cap;
            let now = Instant::now();
            let mut write_len = 0;
            let mut wake_at = None;
            if let (false, Some(front)) = (stopped, self.queue.front()) {
                let due = front.read_at + f.latency;
                if due > now {
                    wake_at = Some(due);
                } else {
                    let mut n = front.data.len() - self.front_off;
                    if let Some(c) = &mut self.chunker {
                        n = n.min(c.piece());
                    }
                    match self.bucket.as_mut().map(|b| b.grant(n, now)) {
                        None => write_len = n,
                        Some(Ok(granted)) => write_len = granted,
                        Some(Err(at)) => wake_at = Some(at),
                    }
                }
            }
            let out: &[u8] = match self.queue.front() {
                Some(front) if write_len > 0 => {
                    &front.data[self.front_off..self.front_off + write_len]
                }
                _ => &[],
            };
            tokio::select! {
                biased;
                changed = self.global.changed() => changed.map_err(closed)?,
                changed = self.own.changed() => changed.map_err(closed)?,
                written = w.write(out), if write_len > 0 => {
                    let n = written?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    self.advance(n);
                }
                read = r.read(&mut self.buf), if can_read => {
                    let n = read?;
                    if n == 0 {
                        self.eof = true;
                    } else {
                        self.queue.push_back(Chunk {
                            data: self.buf[..n].to_vec(),
                            read_at: Instant::now(),
                        });
                        self.queued += n;
                        self.shared.count_received(self.dir, n);
                    }
                }
                () = tokio::time::sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => {}
            }
        }
    }

    /// Writes everything read and not yet written, whatever the faults, then the FIN.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        while let Some(front) = self.queue.front() {
            let n = front.data.len() - self.front_off;
            w.write_all(&front.data[self.front_off..]).await?;
            self.advance(n);
        }
        if !self.shut {
            w.shutdown().await?;
            self.shut = true;
        }
        Ok(())
    }

    /// The faults in force for this connection, marked as seen.
    fn faults(&mut self) -> Faults {
        let global = self.global.borrow_and_update().clone();
        let own = self.own.borrow_and_update();
        Faults::merge(&global, &own)
    }

    /// Follows changes of the rechunk and throttle settings.
    fn configure(&mut self, f: &Faults) {
        if self.chunker.as_ref().map(|c| c.cfg) != f.rechunk {
            self.chunker = f.rechunk.map(|cfg| Chunker::new(cfg, self.index, self.dir));
        }
        if self.bucket.as_ref().map_or(0, |b| b.rate) != f.throttle {
            self.bucket = (f.throttle > 0).then(|| TokenBucket::new(f.throttle, Instant::now()));
        }
    }

    /// Accounts for `n` bytes of the front chunk written.
    fn advance(&mut self, n: usize) {
        self.front_off += n;
        self.queued -= n;
        if self
            .queue
            .front()
            .is_some_and(|c| self.front_off >= c.data.len())
        {
            self.queue.pop_front();
            self.front_off = 0;
        }
        if let Some(c) = &mut self.chunker {
            c.consume(n);
        }
        if let Some(b) = &mut self.bucket {
            b.consume(n);
        }
        self.shared.count_forwarded(self.dir, n);
    }
}

fn closed(_: watch::error::RecvError) -> io::Error {
    io::Error::other("fault relay shutting down")
}

/// The sizes of rechunked writes.
struct Chunker {
    cfg: Rechunk,
    rng: XorShift,
    /// Bytes left of the current piece; 0: draw a new one.
    left: usize,
}

impl Chunker {
    fn new(cfg: Rechunk, index: u64, dir: Direction) -> Chunker {
        let salt = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ dir.index() as u64;
        Chunker {
            cfg,
            rng: XorShift::new(cfg.seed ^ salt),
            left: 0,
        }
    }

    /// Bytes the next write may carry at most.
    fn piece(&mut self) -> usize {
        if self.left == 0 {
            self.left = 1 + (self.rng.next() % self.cfg.max as u64) as usize;
        }
        self.left
    }

    fn consume(&mut self, n: usize) {
        self.left = self.left.saturating_sub(n);
    }
}

/// xorshift64* seeded through splitmix64: small, fast and reproducible; not for secrets.
pub(super) struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // xorshift must not start from 0.
        XorShift(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Rate limit of one direction: tokens are bytes, refilled at `rate` per second up to a
/// burst of 1/20 s worth (at least 1 byte, at most one read buffer). Counted in
/// byte-nanoseconds, so that grants and waits are exact.
struct TokenBucket {
    rate: u64,
    /// Bytes × 10⁹.
    burst: u128,
    /// Bytes × 10⁹.
    tokens: u128,
    last: Instant,
}

const NANOS: u128 = 1_000_000_000;

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> TokenBucket {
        let burst = u128::from(rate / 20).clamp(1, READ_BUF as u128) * NANOS;
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// How many of `want` (≥ 1) bytes may be written now, or when to ask again. Waits for
    /// `min(want, burst)` tokens, so a slow rate does not wake for every byte.
    fn grant(&mut self, want: usize, now: Instant) -> Result<usize, Instant> {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.tokens = (self.tokens + elapsed * u128::from(self.rate)).min(self.burst);
        self.last = now;
        let need = (want as u128 * NANOS).min(self.burst);
        if self.tokens >= need {
            Ok(((self.tokens / NANOS) as usize).clamp(1, want))
        } else {
            let wait = (need - self.tokens).div_ceil(u128::from(self.rate));
            let wait = u64::try_from(wait).unwrap_or(u64::MAX);
            Err(now + Duration::from_nanos(wait).max(Duration::from_millis(1)))
        }
    }

    fn consume(&mut self, n: usize) {
        self.tokens = self.tokens.saturating_sub(n as u128 * NANOS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_reproducible_and_in_range() {
        let cfg = Rechunk { seed: 7, max: 5 };
        let sizes = |index, dir| {
            let mut c = Chunker::new(cfg, index, dir);
            (0..1000)
                .map(|_| {
                    let n = c.piece();
                    c.consume(n);
                    n
                })
                .collect::<Vec<_>>()
        };
        let a = sizes(0, Direction::Up);
        assert_eq!(a, sizes(0, Direction::Up));
        assert_ne!(a, sizes(0, Direction::Down));
        assert_ne!(a, sizes(1, Direction::Up));
        assert!(a.iter().all(|&n| (1..=5).contains(&n)));
        for n in 1..=5 {
            assert!(a.contains(&n), "size {n} never drawn");
        }
    }

    #[test]
    fn partial_writes_finish_the_current_piece() {
        let mut c = Chunker::new(Rechunk { seed: 1, max: 100 }, 0, Direction::Up);
        let first = c.piece();
        c.consume(1);
        assert_eq!(c.piece(), first - 1);
    }

    #[test]
    fn token_bucket_grants_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        // Burst of 50 bytes, then 1000 bytes per second.
        assert_eq!(b.grant(500, t0), Ok(50));
        b.consume(50);
        let at = b.grant(500, t0).unwrap_err();
        assert_eq!(at, t0 + Duration::from_millis(50));
        assert_eq!(b.grant(500, at), Ok(50));
        b.consume(50);
        // A second later the bucket is full again, never more.
        assert_eq!(b.grant(500, at + Duration::from_secs(1)), Ok(50));
        // Small writes need only their own size.
        let mut b = TokenBucket::new(1000, t0);
        b.consume(50);
        assert_eq!(b.grant(3, t0 + Duration::from_millis(3)), Ok(3));
    }
}
