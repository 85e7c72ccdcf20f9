//! Flow control as two small controllers, one per direction of a window, kept apart from
//! the connection so their arithmetic can be reasoned about (and property-tested) alone.
//!
//! A stream has one of each, and so has the connection. The sender's [`SendWindow`] is the
//! credit the peer granted; the receiver's [`RecvWindow`] is what it granted, what arrived,
//! and what the application has consumed since the last grant. Their invariants are
//! asserted in debug builds:
//!
//! - `RecvWindow`: `remaining + pending <= window <= MAX_WINDOW` (the rest of the window
//!   is bytes received and not yet consumed);
//! - `SendWindow`: `available <= MAX_WINDOW`, and a sender never spends more than it has.

use crate::config::MAX_WINDOW;
use crate::ConnectionError;

/// Credit the peer granted: how many more bytes this side may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendWindow {
    available: u64,
}

impl SendWindow {
    /// A window of `initial` bytes (the protocol's initial window).
    pub(crate) fn new(initial: u64) -> SendWindow {
        debug_assert!(initial <= MAX_WINDOW);
        SendWindow { available: initial }
    }

    /// Bytes that may be sent now.
    #[inline]
    pub(crate) fn available(&self) -> u64 {
        self.available
    }

    /// Spends credit on `n` bytes put on the wire; `n` never exceeds [`Self::available`].
    #[inline]
    pub(crate) fn consume(&mut self, n: u64) {
        debug_assert!(n <= self.available, "sent past the peer's credit");
        self.available -= n;
    }

    /// Adds the peer's grant. A zero grant or a window past `MAX_WINDOW` is the peer's
    /// protocol violation; the window is then unchanged.
    pub(crate) fn grant(&mut self, increment: u64) -> Result<(), ConnectionError> {
        if increment == 0 {
            return Err(ConnectionError::ZeroCredit);
        }
        self.available = self
            .available
            .checked_add(increment)
            .filter(|w| *w <= MAX_WINDOW)
            .ok_or(ConnectionError::CreditOverflow)?;
        Ok(())
    }
}

/// What this side granted the peer, and when to grant more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvWindow {
    /// The window's size: the most bytes the peer may have sent and we not yet consumed
    /// (auto-tuned upwards on streams).
    window: u64,
    /// Bytes the peer may still send before exceeding what we granted.
    remaining: u64,
    /// Bytes consumed (read, or dropped) and not yet granted back.
    pending: u64,
    /// When credit was last granted (micros since the connection's epoch), for auto-tuning.
    last_credit_us: Option<u64>,
}

impl RecvWindow {
    /// A window of `window` bytes, all of it granted (the grant beyond the protocol's
    /// initial window is queued by the caller).
    pub(crate) fn new(window: u64) -> RecvWindow {
        let w = RecvWindow {
            window,
            remaining: window,
            pending: 0,
            last_credit_us: None,
        };
        w.check();
        w
    }

    /// The window's current size.
    #[cfg(test)]
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// Bytes the peer may still send.
    #[cfg(test)]
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Bytes received and not yet consumed.
    #[cfg(test)]
    pub(crate) fn unconsumed(&self) -> u64 {
        self.window - self.remaining - self.pending
    }

    #[inline]
    fn check(&self) {
        debug_assert!(self.window <= MAX_WINDOW, "window past MAX_WINDOW");
        debug_assert!(
            self.remaining + self.pending <= self.window,
            "flow-control accounting broke: remaining {} + pending {} > window {}",
            self.remaining,
            self.pending,
            self.window
        );
    }

    /// Accounts `len` received bytes; `false` (and nothing changed) when they exceed what
    /// was granted, which is the peer's protocol violation.
    #[inline]
    pub(crate) fn consume(&mut self, len: u64) -> bool {
        if len > self.remaining {
            return false;
        }
        self.remaining -= len;
        true
    }

    /// The application consumed `n` received bytes (read them, or they were dropped with
    /// their stream): they may be granted back.
    #[inline]
    pub(crate) fn release(&mut self, n: u64) {
        debug_assert!(
            n <= self.window - self.remaining - self.pending,
            "released bytes that were never received"
        );
        self.pending += n;
        self.check();
    }

    /// The grant to send once a `1/divisor` of the window was consumed, with the window at
    /// a fixed size (the connection's window).
    #[inline]
    pub(crate) fn take_credit(&mut self, divisor: u64) -> Option<u64> {
        if !self.credit_due(divisor) {
            return None;
        }
        let increment = self.pending;
        self.pending = 0;
        self.remaining += increment;
        self.check();
        Some(increment)
    }

    /// Whether enough was read for [`Self::take_credit_tuned`] to grant credit: most reads
    /// grant none, and need not look at the clock.
    pub(crate) fn credit_due(&self, divisor: u64) -> bool {
        self.pending >= self.window / divisor
    }

    /// Like [`Self::take_credit`], but the window doubles (up to `max_window`) when the
    /// last grant was used up within two round trips (`rtt_us`), so a fast stream is not
    /// held to one window per round trip. `now_us` is the time since the connection's epoch.
    pub(crate) fn take_credit_tuned(
        &mut self,
        divisor: u64,
        now_us: u64,
        rtt_us: u64,
        max_window: u64,
    ) -> Option<u64> {
        if !self.credit_due(divisor) {
            return None;
        }
        let mut increment = self.pending;
        if let Some(last) = self.last_credit_us {
            if now_us.saturating_sub(last) < 2 * rtt_us && self.window < max_window {
                let grow = self.window.min(max_window - self.window);
                self.window += grow;
                increment += grow;
            }
        }
        self.pending = 0;
        self.remaining += increment;
        self.last_credit_us = Some(now_us);
        self.check();
        Some(increment)
    }
}

#[cfg(test)]
mod tests {
    //! The two controllers against each other, through a channel that delivers in order
    //! (as one WebSocket does): whatever the interleaving of sends, reads and grants, the
    //! sender never sends what the receiver would refuse, credit is never lost, and a
    //! receiver that reads everything lets the sender go on.

    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// The sender sends up to this many bytes (as much as its credit allows).
        Send(u64),
        /// The channel delivers the next message (data or a grant).
        Deliver,
        /// The receiving application consumes up to this many bytes.
        Read(u64),
        /// Time passes.
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..200_000).prop_map(Op::Send),
            Just(Op::Deliver),
            (1u64..200_000).prop_map(Op::Read),
            (1u64..300_000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        #[test]
        fn sender_never_exceeds_what_the_receiver_granted(
            initial in 1u64..300_000,
            configured_extra in 0u64..1_000_000,
            divisor in 2u64..8,
            tuned in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let window = initial + configured_extra;
            let max_window = window * 4;
            let mut tx = SendWindow::new(initial);
            let mut rx = RecvWindow::new(window);
            // The start-up grant raising the initial window to the configured one.
            let mut to_rx: VecDeque<u64> = VecDeque::new();
            let mut to_tx: VecDeque<u64> = VecDeque::new();
            if configured_extra > 0 {
                to_tx.push_back(configured_extra);
            }
            let mut now = 0u64;
            let mut unread = 0u64;
            for op in ops {
                match op {
                    Op::Send(n) => {
                        let n = n.min(tx.available());
                        if n > 0 {
                            tx.consume(n);
                            to_rx.push_back(n);
                        }
                    }
                    Op::Deliver => {
                        if let Some(n) = to_rx.pop_front() {
                            prop_assert!(rx.consume(n), "receiver refused {} bytes", n);
                            unread += n;
                        }
                        if let Some(inc) = to_tx.pop_front() {
                            prop_assert!(tx.grant(inc).is_ok());
                        }
                    }
                    Op::Read(n) => {
                        let n = n.min(unread);
                        unread -= n;
                        rx.release(n);
                        let grant = if tuned {
                            rx.take_credit_tuned(divisor, now, 100_000, max_window)
                        } else {
                            rx.take_credit(divisor)
                        };
                        if let Some(inc) = grant {
                            prop_assert!(inc > 0);
                            to_tx.push_back(inc);
                        }
                    }
                    Op::Tick(us) => now += us,
                }
                // Conservation: what the receiver still accepts equals the sender's credit
                // plus what is in flight either way.
                let in_flight: u64 = to_rx.iter().sum();
                let credit_in_flight: u64 = to_tx.iter().sum();
                prop_assert_eq!(rx.remaining(), tx.available() + in_flight + credit_in_flight);
                prop_assert_eq!(rx.unconsumed(), unread);
                prop_assert!(rx.window() <= max_window.max(window));
            }
            // Liveness: once everything is delivered and read, the sender has credit again.
            while let Some(n) = to_rx.pop_front() {
                prop_assert!(rx.consume(n));
                unread += n;
            }
            rx.release(unread);
            let grant = if tuned {
                rx.take_credit_tuned(divisor, now, 100_000, max_window)
            } else {
                rx.take_credit(divisor)
            };
            to_tx.extend(grant);
            for inc in to_tx {
                prop_assert!(tx.grant(inc).is_ok());
            }
            prop_assert!(tx.available() >= rx.window() - rx.window() / divisor);
        }
    }

    #[test]
    fn zero_and_overflowing_grants_are_refused_and_change_nothing() {
        let mut tx = SendWindow::new(10);
        assert_eq!(tx.grant(0), Err(ConnectionError::ZeroCredit));
        assert_eq!(tx.grant(MAX_WINDOW), Err(ConnectionError::CreditOverflow));
        assert_eq!(tx.available(), 10);
        let mut rx = RecvWindow::new(10);
        assert!(!rx.consume(11));
        assert_eq!(rx.remaining(), 10);
    }
}
