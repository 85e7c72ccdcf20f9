//! Whether a caller connection of the HTTP ingress is doing anything: requests in flight,
//! answers still streaming. HTTP/1.1 has hyper's header read timeout for an idle
//! keep-alive connection; HTTP/2 has nothing like it, so without this an idle HTTP/2
//! connection (or one that never sends a request) would hold its caller slot for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// The requests of one caller connection that are in flight, from the service's first
/// poll to the end of the answer's body, and when that count last changed. Nothing is
/// woken per request: the watcher looks when its period is up.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Nanoseconds from `origin` to the last begin or end of a request.
    last_change: AtomicU64,
    origin: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_change: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl Activity {
    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Active(self.clone())
    }

    fn touch(&self) {
        let since = self.origin.elapsed().as_nanos();
        self.last_change
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Returns once nothing has been in flight for `period`, counted from this call at the
    /// earliest: the connection is idle.
    pub(crate) async fn idle_for(&self, period: Duration) {
        let start = Instant::now();
        let mut deadline = start + period;
        loop {
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::Acquire) > 0 {
                deadline = Instant::now() + period;
                continue;
            }
            let last = self.origin + Duration::from_nanos(self.last_change.load(Ordering::Relaxed));
            let last = last.max(start);
            if last + period <= Instant::now() {
                return;
            }
            deadline = last + period;
        }
    }
}

/// One request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub(crate) struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        // The time first, published by the count's release: a watcher that sees the
        // count fall sees the time of the fall.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// An answer's body that keeps its request counted in flight until it ends or is dropped.
pub(crate) struct Tracked<B> {
    body: B,
    _active: Active,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, active: Active) -> Self {
        Tracked {
            body,
            _active: active,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_request_ends() {
        let a = Arc::new(Activity::default());
        let period = Duration::from_secs(10);
        let start = tokio::time::Instant::now();
        a.idle_for(period).await;
        assert_eq!(start.elapsed(), period, "nothing ever in flight");

        let guard = a.begin();
        let watcher = {
            let a = a.clone();
            tokio::spawn(async move { a.idle_for(period).await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !watcher.is_finished(),
            "a request in flight is not idleness"
        );
        let ended = tokio::time::Instant::now();
        drop(guard);
        watcher.await.unwrap();
        let waited = ended.elapsed();
        assert!(
            waited >= period && waited <= period * 2,
            "idle counts from the last request's end: {waited:?}"
        );
    }

    /// The wait after a graceful shutdown is a whole period of its own, not over at once
    /// because the connection was already idle.
    #[tokio::test(start_paused = true)]
    async fn a_second_wait_counts_from_its_own_start() {
        let a = Arc::new(Activity::default());
        let period = Duration::from_secs(10);
        a.idle_for(period).await;
        let second = tokio::time::Instant::now();
        a.idle_for(period).await;
        assert_eq!(second.elapsed(), period);
    }
}
