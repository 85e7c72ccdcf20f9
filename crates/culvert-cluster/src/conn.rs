//! The connection behind a [`ClusterDb`]: one client that pipelines every caller's queries,
//! dialed on first use after a loss, and the deadline around every operation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use crate::error::Failure;
use crate::{ClusterDb, ClusterError};

/// TCP keepalive idle time of registry connections: a silently vanished database (a
/// partition, a dead host) is noticed by the kernel instead of only by our deadlines.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The client library's settings from the URL, with our connect timeout and keepalives.
pub(crate) fn config(url: &str, timeout: Duration) -> Result<Config, ClusterError> {
    let mut config: Config = url
        .parse()
        .map_err(|source| ClusterError::InvalidUrl { source })?;
    config
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE);
    if config.get_application_name().is_none() {
        config.application_name("culvert");
    }
    Ok(config)
}

/// Dials the database and drives the connection on a task of its own, which ends when the
/// connection does (the client then reports `is_closed`).
pub(crate) async fn dial(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(
                error = %crate::error::describe(&e),
                "cluster registry: connection to the database ended"
            );
        }
    });
    Ok(client)
}

/// The shared state of a [`ClusterDb`] handle and its clones.
pub(crate) struct Inner {
    /// Where and how to dial.
    pub(crate) config: Config,
    /// Deadline of every operation.
    pub(crate) timeout: Duration,
    /// The current client; `None` after a loss, until the next operation dials again. The
    /// lock is held while dialing, so concurrent callers wait for one dial, not many.
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Serialises this process's leases: its callers would otherwise all race for the same
    /// lowest free port (other servers still may; the database settles those).
    pub(crate) lease_lock: tokio::sync::Mutex<()>,
}

impl Inner {
    /// State around an already connected client (the one that ran the migrations).
    pub(crate) fn new(config: Config, timeout: Duration, client: Client) -> Inner {
        Inner {
            config,
            timeout,
            client: tokio::sync::Mutex::new(Some(Arc::new(client))),
            lease_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The current client, dialed again if the last one was lost.
    async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let c = Arc::new(dial(&self.config).await?);
        tracing::debug!("cluster registry: connected to the database");
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Drops `used` if it is still the current client, so the next operation dials anew.
    async fn forget(&self, used: &Arc<Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, used)) {
            *slot = None;
        }
    }

    /// Drops the current client unless someone is dialing right now (after a deadline was
    /// missed: the connection may hang, a fresh one is cheap).
    fn forget_current(&self) {
        if let Ok(mut slot) = self.client.try_lock() {
            *slot = None;
        }
    }
}

impl ClusterDb {
    /// Runs `f` with the current client within the deadline, naming the operation `what`
    /// in errors. A lost connection is forgotten so the next call dials again.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let inner = &self.inner;
        let attempt = async {
            let client = inner.client().await?;
            let r = f(client.clone()).await;
            if matches!(r, Err(Failure::Pg(_))) && client.is_closed() {
                inner.forget(&client).await;
            }
            r
        };
        match tokio::time::timeout(inner.timeout, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Failure::Pg(source))) => Err(ClusterError::Unavailable {
                what: what.to_owned(),
                source,
            }),
            Ok(Err(Failure::Cluster(e))) => Err(e),
            Err(_) => {
                inner.forget_current();
                Err(ClusterError::Timeout {
                    what: what.to_owned(),
                    after: inner.timeout,
                })
            }
        }
    }
}
