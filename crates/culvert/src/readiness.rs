//! A watch of a tunnel link's readiness, so an embedding program can wait for the tunnel,
//! or react when it drops, without polling.

use tokio::sync::watch;

use crate::Error;

/// Readiness changes of a [`Client`](crate::Client) (or an [`AgentHandle`](crate::AgentHandle)):
/// ready while at least one tunnel connection is up.
#[derive(Debug, Clone)]
pub struct ReadyWatch {
    rx: watch::Receiver<usize>,
}

impl ReadyWatch {
    pub(crate) fn new(rx: watch::Receiver<usize>) -> ReadyWatch {
        ReadyWatch { rx }
    }

    /// Whether a tunnel connection is up now.
    pub fn is_ready(&self) -> bool {
        *self.rx.borrow() > 0
    }

    /// Tunnel connections up now.
    pub fn connections_up(&self) -> usize {
        *self.rx.borrow()
    }

    /// Waits for the next change of readiness and returns the new value; [`Error::Closed`]
    /// once the link is gone.
    pub async fn changed(&mut self) -> Result<bool, Error> {
        let was = *self.rx.borrow_and_update() > 0;
        let now = self
            .rx
            .wait_for(|n| (*n > 0) != was)
            .await
            .map_err(|_| Error::Closed)?;
        Ok(*now > 0)
    }

    /// Waits until a tunnel connection is up (at once when one is).
    pub async fn wait_ready(&mut self) -> Result<(), Error> {
        self.rx
            .wait_for(|n| *n > 0)
            .await
            .map(|_| ())
            .map_err(|_| Error::Closed)
    }
}
