//! Per-branch wake-ups for one future that drives several others (a relay's two directions
//! and its stop signal): only the branches woken since they were last polled are polled
//! again, as `FuturesUnordered` does for its tasks.
//!
//! `tokio::try_join!` and `select!` poll every branch on every wake-up, so each small
//! message a relay read from its socket also polled its idle tunnel direction (a lock of
//! the connection, a look at the stream's queue, a waker comparison) and its stop signal:
//! a tenth of the relay's user-space work per round trip.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// What the branches' wakers share: which branches were woken, and whom to wake for them.
#[derive(Debug)]
struct Flags {
    /// Bit `i`: branch `i` was woken (or never polled) since it was last polled.
    woken: AtomicU32,
    /// The task that polls the branches.
    parent: Mutex<Option<Waker>>,
}

impl Flags {
    fn parent(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        // Nothing panics while holding it; a poisoned lock holds a valid waker all the same.
        self.parent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The waker handed to one branch.
struct BranchWaker {
    flags: Arc<Flags>,
    bit: u32,
}

impl Wake for BranchWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flags.woken.fetch_or(self.bit, Ordering::AcqRel);
        // Woken outside the lock: an executor that polls the parent from its waker would
        // otherwise find the lock held in `enter`.
        let parent = self.flags.parent().clone();
        if let Some(w) = parent {
            w.wake();
        }
    }
}

/// `N` branches (at most 32), each polled with its own waker, and polled only when that
/// waker was used (or on the first poll).
pub(crate) struct Branches<const N: usize> {
    flags: Arc<Flags>,
    wakers: [Waker; N],
}

impl<const N: usize> Branches<N> {
    /// Every branch starts woken, so the first poll polls each of them.
    pub(crate) fn new() -> Self {
        const { assert!(N > 0 && N <= 32) };
        let all = if N == 32 { u32::MAX } else { (1u32 << N) - 1 };
        let flags = Arc::new(Flags {
            woken: AtomicU32::new(all),
            parent: Mutex::new(None),
        });
        let wakers = std::array::from_fn(|i| {
            Waker::from(Arc::new(BranchWaker {
                flags: flags.clone(),
                bit: 1 << i,
            }))
        });
        Branches { flags, wakers }
    }

    /// Starts a poll of the parent: records its waker (for the branches' wakers to wake)
    /// and returns the set of branches to poll, clearing it. A branch woken after this
    /// (during its own poll, say) stays marked and wakes the parent again.
    pub(crate) fn enter(&self, cx: &Context<'_>) -> Woken {
        {
            let mut parent = self.flags.parent();
            match parent.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *parent = Some(cx.waker().clone()),
            }
        }
        Woken(self.flags.woken.swap(0, Ordering::AcqRel))
    }

    /// Polls branch `i` with its own waker if `woken` (from [`Branches::enter`]) holds it;
    /// `Pending` without polling it otherwise.
    pub(crate) fn poll<F: Future + ?Sized>(
        &self,
        woken: Woken,
        i: usize,
        fut: Pin<&mut F>,
    ) -> Poll<F::Output> {
        if woken.0 & (1 << i) == 0 {
            return Poll::Pending;
        }
        fut.poll(&mut Context::from_waker(&self.wakers[i]))
    }
}

impl<const N: usize> Drop for Branches<N> {
    /// A branch's waker may outlive the branches (left registered with a socket or a
    /// stream until that is dropped): it then holds no reference to the parent task.
    fn drop(&mut self) {
        *self.flags.parent() = None;
    }
}

/// The branches to poll in one poll of the parent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Woken(u32);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, registering its waker until then.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<std::sync::atomic::AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A probe and its handles: its poll count, its readiness, its latest waker.
    type ProbeHandles = (
        Probe,
        Arc<AtomicUsize>,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<Mutex<Option<Waker>>>,
    );

    fn probe() -> ProbeHandles {
        let p = Probe {
            polls: Arc::default(),
            ready: Arc::default(),
            waker: Arc::default(),
        };
        let (a, b, c) = (p.polls.clone(), p.ready.clone(), p.waker.clone());
        (p, a, b, c)
    }

    /// A parent waker that counts its wake-ups.
    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn only_the_woken_branch_is_polled_again_and_the_parent_is_woken_for_it() {
        let (mut a, a_polls, a_ready, a_waker) = probe();
        let (mut b, b_polls, _, _) = probe();
        let parent = Arc::new(CountWake(AtomicUsize::new(0)));
        let pw = Waker::from(parent.clone());
        let cx = Context::from_waker(&pw);
        let br = Branches::<2>::new();
        // One poll of the parent: what each branch returned, and each one's polls so far.
        let mut round = || {
            let w = br.enter(&cx);
            let ready = (
                br.poll(w, 0, Pin::new(&mut a)).is_ready(),
                br.poll(w, 1, Pin::new(&mut b)).is_ready(),
            );
            let polls = (
                a_polls.load(Ordering::SeqCst),
                b_polls.load(Ordering::SeqCst),
            );
            (ready, polls)
        };

        // First poll: both polled. A poll with no wake-up polls neither.
        assert_eq!(round(), ((false, false), (1, 1)));
        assert_eq!(round(), ((false, false), (1, 1)));

        // Waking `a` wakes the parent, and the next poll polls `a` alone.
        a_ready.store(true, Ordering::SeqCst);
        a_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(parent.0.load(Ordering::SeqCst), 1);
        assert_eq!(round(), ((true, false), (2, 1)));
    }

    #[test]
    fn a_wake_during_a_branchs_poll_is_kept_for_the_next_poll() {
        /// Wakes itself while being polled (as tokio's budget does when it runs out).
        struct SelfWake(usize);
        impl Future for SelfWake {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0 += 1;
                if self.0 == 3 {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let parent = Arc::new(CountWake(AtomicUsize::new(0)));
        let pw = Waker::from(parent.clone());
        let cx = Context::from_waker(&pw);
        let br = Branches::<1>::new();
        let mut f = SelfWake(0);
        let w = br.enter(&cx);
        assert!(br.poll(w, 0, Pin::new(&mut f)).is_pending());
        assert_eq!(parent.0.load(Ordering::SeqCst), 1);
        let w = br.enter(&cx);
        assert!(br.poll(w, 0, Pin::new(&mut f)).is_pending());
        let w = br.enter(&cx);
        assert!(br.poll(w, 0, Pin::new(&mut f)).is_ready());
    }

    #[test]
    fn a_parent_that_polls_from_its_waker_does_not_deadlock() {
        /// A parent waker that starts the parent's next poll at once, as an executor that
        /// polls inline would.
        struct Inline(Mutex<Option<Arc<Branches<1>>>>);
        impl Wake for Inline {
            fn wake(self: Arc<Self>) {
                let br = self.0.lock().unwrap().clone();
                if let Some(br) = br {
                    let _ = br.enter(&Context::from_waker(Waker::noop()));
                }
            }
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let parent = Arc::new(Inline(Mutex::new(None)));
            let pw = Waker::from(parent.clone());
            let br = Arc::new(Branches::<1>::new());
            *parent.0.lock().unwrap() = Some(br.clone());
            let (mut a, _, _, a_waker) = probe();
            let w = br.enter(&Context::from_waker(&pw));
            assert!(br.poll(w, 0, Pin::new(&mut a)).is_pending());
            a_waker.lock().unwrap().take().unwrap().wake();
            *parent.0.lock().unwrap() = None;
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the wake-up returned (a lock held across it deadlocked)");
    }

    #[test]
    fn a_branch_waker_that_outlives_the_branches_wakes_nobody() {
        let parent = Arc::new(CountWake(AtomicUsize::new(0)));
        let pw = Waker::from(parent.clone());
        let cx = Context::from_waker(&pw);
        let (mut a, _, _, a_waker) = probe();
        let br = Branches::<1>::new();
        let w = br.enter(&cx);
        assert!(br.poll(w, 0, Pin::new(&mut a)).is_pending());
        drop(br);
        a_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(parent.0.load(Ordering::SeqCst), 0);
        // The parent's waker was released with the branches.
        assert_eq!(Arc::strong_count(&parent), 2);
    }
}
