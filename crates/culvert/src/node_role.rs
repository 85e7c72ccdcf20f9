//! [`Node`]: a program runs `culvert node` in-process: a server role and tunnels to peers
//! from one `node.toml`.

use std::path::Path;
use std::time::Duration;

use culvert_node::{NodeFile, TunnelStatus};

use crate::Error;

/// Builds a node; see [`Node::builder`].
pub struct Node;

/// Settings of a node; [`NodeBuilder::spawn`] starts it.
#[derive(Debug)]
pub struct NodeBuilder {
    file: NodeFile,
}

impl Node {
    /// A builder from a node configuration (the `node.toml` of `culvert node`, read with
    /// [`NodeBuilder::from_file`] or built field by field).
    pub fn builder(config: NodeFile) -> NodeBuilder {
        NodeBuilder { file: config }
    }
}

impl NodeBuilder {
    /// A builder from a `node.toml` file.
    pub fn from_file(path: &Path) -> Result<NodeBuilder, Error> {
        Ok(NodeBuilder {
            file: NodeFile::load(path)?,
        })
    }

    /// Starts the server role (when `[node] listen` is set), the links to peers and every
    /// forward listener (inside a tokio runtime).
    pub async fn spawn(self) -> Result<NodeHandle, Error> {
        Ok(NodeHandle {
            inner: culvert_node::Node::start(self.file).await?,
        })
    }
}

/// A running node. Dropping it stops it at once; [`NodeHandle::shutdown`] stops it gracefully.
pub struct NodeHandle {
    inner: culvert_node::Node,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// Whether every link to a peer has a live connection.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// Live status of every tunnel.
    pub fn status(&self) -> Vec<TunnelStatus> {
        self.inner.status()
    }

    /// The node's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics()
    }

    /// Graceful stop: links drain their streams within `grace`, then the server role does.
    pub async fn shutdown(self, grace: Duration) {
        self.inner.drain(grace).await;
    }

    /// The wrapped node, for what this facade does not cover.
    pub fn inner(&self) -> &culvert_node::Node {
        &self.inner
    }
}
