//! The tunnel streams one caller connection of the HTTP ingress sends its requests over,
//! kept between requests. Each stream carries HTTP/1.1 to the agent, one exchange at a
//! time: an HTTP/1.1 caller's requests come one after another and reuse one stream; an
//! HTTP/2 caller's concurrent requests each take a stream of their own, so none waits
//! behind another's answer.

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::sync::Mutex;

use crate::http_metrics::Counted;

/// The sending half of an HTTP/1.1 connection over one tunnel stream.
pub(crate) type Sender = SendRequest<Counted<Incoming>>;

/// Streams kept per caller connection at most; past it the longest-kept idle one is let
/// go. As many as an HTTP/2 caller may have requests in flight, so its streams are reused.
pub(crate) const MAX_KEPT: usize = 100;

/// The kept streams, each with the `TENANT/SERVICE` it reaches; see the module docs.
#[derive(Default)]
pub(crate) struct Upstreams {
    kept: Mutex<Vec<(String, Sender)>>,
}

impl Upstreams {
    /// A kept stream to `name` that can take a request now, taken out until [`put`]
    /// returns it. `wait`: an HTTP/1.1 caller, whose previous exchange on its stream may be
    /// ending at this moment; that stream is waited for instead of opening another.
    ///
    /// [`put`]: Upstreams::put
    pub(crate) async fn take(&self, name: &str, wait: bool) -> Option<Sender> {
        let mut busy = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.retain(|(_, s)| !s.is_closed());
            if let Some(i) = kept.iter().position(|(k, s)| k == name && s.is_ready()) {
                return Some(kept.swap_remove(i).1);
            }
            match kept.iter().position(|(k, _)| k == name) {
                Some(i) if wait => kept.swap_remove(i).1,
                _ => return None,
            }
        };
        busy.ready().await.ok().map(|()| busy)
    }

    /// Keeps `sender` for the next requests to `name` (once its exchange has an answer
    /// that did not take the stream over).
    pub(crate) fn put(&self, name: String, sender: Sender) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.retain(|(_, s)| !s.is_closed());
        }
        if kept.len() >= MAX_KEPT {
            // The oldest idle stream goes; with none idle, the oldest (its exchange ends
            // undisturbed: a sender let go of only closes its stream afterwards).
            let i = kept.iter().position(|(_, s)| s.is_ready()).unwrap_or(0);
            kept.remove(i);
        }
        kept.push((name, sender));
    }
}
