//! A file descriptor held in reserve for listeners at the process's descriptor limit.
//!
//! When `accept` fails with EMFILE or ENFILE, clients wait in the kernel's accept queue,
//! already connected from their side, until a descriptor frees up: they hang instead of
//! learning that the server is full. Releasing the reserve lets the listener accept one
//! of them and reset it at once, then the reserve is taken again.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Mutex, Once};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Whether an accept error means the process (or the system) ran out of descriptors.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Clients refused per call at most: a flood is refused in slices, between which the
/// caller's accept loop pauses.
const MAX_REFUSED_AT_ONCE: usize = 256;

/// The process's reserve descriptor (of `/dev/null`), shared by every listener.
static RESERVE: Mutex<Option<File>> = Mutex::new(None);
static TAKEN: Once = Once::new();

/// Takes the reserve descriptor, once per process; [`crate::tune_listener`] calls it, so
/// every Culvert listener can use [`refuse_waiting`].
pub fn take_reserve() {
    TAKEN.call_once(|| *lock() = File::open("/dev/null").ok());
}

fn lock() -> std::sync::MutexGuard<'static, Option<File>> {
    RESERVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refuses the clients waiting on `listener` with a reset, using the reserve for each;
/// returns how many, or `None` when no descriptor could be freed for it (clients then
/// keep waiting). Never waits. Call it when `accept` failed with [`out_of_descriptors`].
pub fn refuse_waiting(listener: &TcpListener) -> Option<usize> {
    let mut reserve = lock();
    let mut refused = 0;
    while refused < MAX_REFUSED_AT_ONCE {
        // Free the reserve, so that accept has a descriptor to use (retaking it first if an
        // earlier call could not).
        if reserve
            .take()
            .or_else(|| File::open("/dev/null").ok())
            .is_none()
        {
            return (refused > 0).then_some(refused);
        }
        let accepted = try_accept(listener);
        let got_one = matches!(accepted, Some(Ok(_)));
        if let Some(Ok((sock, _))) = accepted {
            // Closed with a reset: the client sees "connection reset", not a clean end.
            let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
        }
        *reserve = File::open("/dev/null").ok();
        if !got_one {
            break;
        }
        refused += 1;
    }
    Some(refused)
}

fn try_accept(l: &TcpListener) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    let mut cx = Context::from_waker(Waker::noop());
    match l.poll_accept(&mut cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}
