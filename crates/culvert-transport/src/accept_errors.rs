//! What an accept loop does when `accept` fails: refuse the clients that wait, pause, and
//! tell the operator once per burst rather than once per client.
//!
//! Every Culvert listener (the server's control and public ports, a node's forward
//! listeners) shares this, so they behave and log the same way at the descriptor limit.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::fd_reserve::{out_of_descriptors, refuse_waiting};

/// How long an accept loop pauses after a failure, so a persistent error does not spin.
const PAUSE: Duration = Duration::from_millis(100);
/// At most one warning per listener in this interval; the rest go to debug.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Per-listener record of accept failures since the last warning.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last_warning: Option<Instant>,
    failures: usize,
    refused: usize,
}

impl AcceptErrors {
    /// Handles one failed `accept` on `listener` (named `name` in the log): out of
    /// descriptors, refuses the waiting clients with a reset; warns at most once per
    /// 10 s with the counts since the last warning; then pauses.
    ///
    /// Out of descriptors with no client waiting has harmed nobody yet, so it waits for
    /// a refusal before warning: the warning then says how many were turned away.
    pub async fn on_error(&mut self, listener: &TcpListener, name: &str, error: &std::io::Error) {
        let fd_limit = out_of_descriptors(error);
        let refusal = if fd_limit {
            refuse_waiting(listener)
        } else {
            None
        };
        self.failures += 1;
        self.refused += refusal.unwrap_or(0);
        let harmless = fd_limit && refusal.is_some() && self.refused == 0;
        let due = self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due && !harmless {
            tracing::warn!(listener = name, %error, failures = self.failures, refused = self.refused,
                no_reserve = fd_limit && refusal.is_none(),
                "accept failed; waiting clients refused, backing off (counts since the last warning; repeats within 10 s are logged at debug)");
            self.last_warning = Some(Instant::now());
            self.failures = 0;
            self.refused = 0;
        } else {
            tracing::debug!(listener = name, %error, refused = refusal.unwrap_or(0), "accept failed; backing off");
        }
        tokio::time::sleep(PAUSE).await;
    }
}
