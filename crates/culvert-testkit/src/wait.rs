//! Bounded waits for a condition that becomes true asynchronously (a process logging a
//! line, a counter reaching a value), instead of a hand-written deadline loop in each test.
//! A wait that runs out fails the test naming what it awaited and the last value it saw.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a check returns: `Ok` ends the wait with a value; `Err` carries what was observed
/// instead (shown if the wait runs out). Implemented for `bool`, `Option<T>` and
/// `Result<T, E: Debug>`, so a check can be a plain condition or report its last value.
pub trait Check {
    /// The value a successful check yields.
    type Value;
    /// `Ok(value)` when the condition holds, else a description of what was observed.
    fn into_outcome(self) -> Result<Self::Value, String>;
}

impl Check for bool {
    type Value = ();
    fn into_outcome(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".into())
        }
    }
}

impl<T> Check for Option<T> {
    type Value = T;
    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Debug> Check for Result<T, E> {
    type Value = T;
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Text shown as it is (not escaped) when a wait runs out: a log, a table.
pub struct Text(pub String);

impl Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n{}", self.0)
    }
}

/// Checks `check` every [`POLL_EVERY`] until it holds and returns its value; fails the
/// test naming `what` and the last observed value if `limit` passes first. The check runs
/// once more at the deadline, so a slow machine gets the full `limit`.
#[track_caller]
pub fn eventually<C: Check>(limit: Duration, what: &str, mut check: impl FnMut() -> C) -> C::Value {
    match poll(limit, &mut check) {
        Ok(v) => v,
        Err(last) => panic!("not within {limit:?}: {what}; last observed: {last}"),
    }
}

/// Like [`eventually`] but returns whether the condition held within `limit`, for the
/// waits whose failure a test handles itself (or expects).
pub fn poll_until<C: Check>(limit: Duration, mut check: impl FnMut() -> C) -> bool {
    poll(limit, &mut check).is_ok()
}

fn poll<C: Check>(limit: Duration, check: &mut impl FnMut() -> C) -> Result<C::Value, String> {
    let deadline = Instant::now() + limit;
    loop {
        let outcome = check().into_outcome();
        if outcome.is_ok() || Instant::now() >= deadline {
            return outcome;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(POLL_EVERY));
    }
}

/// [`eventually`] for an async check, sleeping on the tokio timer between checks.
#[cfg(feature = "net")]
#[track_caller]
pub fn eventually_async<'a, C, F, Fut>(
    limit: Duration,
    what: &'a str,
    check: F,
) -> impl std::future::Future<Output = C::Value> + 'a
where
    C: Check,
    F: FnMut() -> Fut + 'a,
    Fut: std::future::Future<Output = C> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        match poll_async(limit, check).await {
            Ok(v) => v,
            Err(last) => {
                panic!("not within {limit:?}: {what}; last observed: {last} (awaited at {caller})")
            }
        }
    }
}

/// [`poll_until`] for an async check.
#[cfg(feature = "net")]
pub async fn poll_until_async<C, F, Fut>(limit: Duration, check: F) -> bool
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = C>,
{
    poll_async(limit, check).await.is_ok()
}

#[cfg(feature = "net")]
async fn poll_async<C, F, Fut>(limit: Duration, mut check: F) -> Result<C::Value, String>
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = C>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let outcome = check().await.into_outcome();
        if outcome.is_ok() || tokio::time::Instant::now() >= deadline {
            return outcome;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(left.min(POLL_EVERY)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_check_holds() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(10), "n reaches 3", || {
            n += 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err(n)
            }
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn a_wait_that_runs_out_names_what_and_the_last_value() {
        let r = std::panic::catch_unwind(|| {
            eventually(Duration::from_millis(120), "the answer", || {
                Err::<(), _>(41)
            })
        });
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("the answer"), "{msg}");
        assert!(msg.contains("last observed: 41"), "{msg}");
        assert!(!poll_until(Duration::from_millis(60), || false));
    }
}
