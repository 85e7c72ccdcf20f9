//! Change notices: a connection of its own `LISTEN`ing on `culvert_tokens` and
//! `culvert_presence`, which the tables' triggers `NOTIFY`, so servers re-read tokens and
//! presence as soon as they change instead of polling.
//!
//! Notices carry no data: the receiver re-reads whole tables. So notices of one kind that
//! the receiver has not taken yet are folded into one, and the queue cannot grow. A lost
//! connection is re-dialed with capped backoff; notifications sent meanwhile are lost,
//! hence [`Notice::Reconnected`]: re-read everything.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{self, Receiver, Sender};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use crate::error::describe;

/// A change in the registry, for the receiver to re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Tokens or tenant limits changed: re-read [`crate::ClusterDb::tokens`] and
    /// [`crate::ClusterDb::tenants`].
    Tokens,
    /// Presence or the server list changed: re-read [`crate::ClusterDb::live_presence`]
    /// (heartbeats alone send none).
    Presence,
    /// The listening connection was (re)established: changes may have been missed, so
    /// re-read everything. Also sent once the first connection listens, so a receiver
    /// that read the tables before that misses nothing either.
    Reconnected,
}

/// Channel names the triggers notify.
const TOKENS_CHANNEL: &str = "culvert_tokens";
const PRESENCE_CHANNEL: &str = "culvert_presence";

/// Bound of the notice queue; at most three kinds are ever pending anyway.
const QUEUE: usize = 4;

/// First and longest pause between dials after a loss.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Bound of one dial plus `LISTEN`.
const DIAL_LIMIT: Duration = Duration::from_secs(10);

/// How often an idle listening connection is checked with a query, and how long that
/// query may take: a connection can die without a word (a partition), and a listener
/// that only waits would never notice.
const PING_EVERY: Duration = Duration::from_secs(15);
const PING_LIMIT: Duration = Duration::from_secs(10);

/// Keeps the listening task alive; dropping it stops the task (and closes its connection).
#[derive(Debug)]
pub struct ListenHandle {
    task: JoinHandle<()>,
}

impl Drop for ListenHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts listening for changes on a connection of its own (must be called within a Tokio
/// runtime). The task re-dials after a loss with backoff from 100 ms to 5 s and sends
/// [`Notice::Reconnected`] after each successful dial, the first included. Notices the
/// receiver has not taken yet are folded per kind, so the bounded queue never drops a kind.
/// An unparsable URL is logged and the receiver sees the channel closed.
pub fn listen(url: &str) -> (ListenHandle, Receiver<Notice>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let config = crate::conn::config(url, DIAL_LIMIT);
    let task = tokio::spawn(async move {
        match config {
            Ok(config) => run(config, tx).await,
            Err(e) => tracing::error!("{e}; not listening for changes"),
        }
    });
    (ListenHandle { task }, rx)
}

/// Notices not yet handed to the receiver, folded per kind.
#[derive(Default)]
struct Pending {
    tokens: bool,
    presence: bool,
    reconnected: bool,
}

/// What the connection's driver and the delivering loop share.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Woken when a notice becomes pending or the connection ends.
    wake: Notify,
}

impl Shared {
    fn mark(&self, notice: Notice) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match notice {
                Notice::Tokens => p.tokens = true,
                Notice::Presence => p.presence = true,
                Notice::Reconnected => p.reconnected = true,
            }
        }
        self.wake.notify_one();
    }

    fn any(&self) -> bool {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.tokens || p.presence || p.reconnected
    }

    /// The next notice to hand over: `Reconnected` first, which covers the others.
    fn take(&self) -> Option<Notice> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.reconnected {
            *p = Pending::default();
            Some(Notice::Reconnected)
        } else if p.tokens {
            p.tokens = false;
            Some(Notice::Tokens)
        } else if p.presence {
            p.presence = false;
            Some(Notice::Presence)
        } else {
            None
        }
    }
}

/// Aborts a task when dropped (the connection driver, when its listener goes).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Dial, listen, serve, and again after a loss, until the receiver is dropped.
async fn run(config: Config, tx: Sender<Notice>) {
    let shared = Arc::new(Shared::default());
    let mut backoff = BACKOFF_MIN;
    let mut failures: u32 = 0;
    loop {
        let dialed = deliver_while(
            &tx,
            &shared,
            tokio::time::timeout(DIAL_LIMIT, connect(&config, shared.clone())),
        )
        .await;
        let (client, driver) = match dialed {
            None => return,
            Some(Ok(Ok(v))) => v,
            Some(Ok(Err(e))) => {
                note_failure(&mut failures, &describe(&e), backoff);
                if deliver_while(&tx, &shared, tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Some(Err(_)) => {
                let why = format!("no answer within {} s", DIAL_LIMIT.as_secs());
                note_failure(&mut failures, &why, backoff);
                if deliver_while(&tx, &shared, tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if failures > 0 {
            tracing::info!("cluster registry: listening for changes again");
        } else {
            tracing::debug!("cluster registry: listening for changes");
        }
        failures = 0;
        backoff = BACKOFF_MIN;
        shared.mark(Notice::Reconnected);
        if deliver_while(&tx, &shared, watch(&client, driver))
            .await
            .is_none()
        {
            return;
        }
        tracing::warn!(
            "cluster registry: lost the connection listening for changes; dialing again"
        );
    }
}

/// Logs a failed dial: a warning the first time in a row, then quietly.
fn note_failure(failures: &mut u32, why: &str, backoff: Duration) {
    if *failures == 0 {
        tracing::warn!(
            error = %why,
            "cluster registry: cannot listen for changes; retrying every {} s at most",
            BACKOFF_MAX.as_secs()
        );
    } else {
        tracing::debug!(error = %why, retry_in = ?backoff, "cluster registry: still cannot listen for changes");
    }
    *failures = failures.saturating_add(1);
}

/// Dials, starts the connection's driver (which marks notices as they arrive), and
/// `LISTEN`s on both channels.
async fn connect(
    config: &Config,
    shared: Arc<Shared>,
) -> Result<(Client, AbortOnDrop), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                    TOKENS_CHANNEL => shared.mark(Notice::Tokens),
                    PRESENCE_CHANNEL => shared.mark(Notice::Presence),
                    _ => {}
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %describe(&e), "cluster registry: listening connection failed");
                    break;
                }
                None => break,
            }
        }
        shared.wake.notify_one();
    });
    let driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!(
            "LISTEN {TOKENS_CHANNEL}; LISTEN {PRESENCE_CHANNEL}"
        ))
        .await?;
    Ok((client, driver))
}

/// Returns when the listening connection is lost: its driver ended, or a periodic query
/// failed or went unanswered.
async fn watch(client: &Client, mut driver: AbortOnDrop) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            _ = &mut driver.0 => return,
            _ = ping.tick() => {
                match tokio::time::timeout(PING_LIMIT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %describe(&e), "cluster registry: listening connection check failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("cluster registry: listening connection check went unanswered");
                        return;
                    }
                }
            }
        }
    }
}

/// Runs `fut` while handing pending notices to the receiver; `None` when the receiver is
/// gone (the listener should stop).
async fn deliver_while<F: Future>(
    tx: &Sender<Notice>,
    shared: &Shared,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let any = shared.any();
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = shared.wake.notified() => {}
            permit = tx.reserve(), if any => match permit {
                Ok(permit) => {
                    if let Some(n) = shared.take() {
                        permit.send(n);
                    }
                }
                Err(_) => return None,
            },
            _ = tx.closed(), if !any => return None,
        }
    }
}
