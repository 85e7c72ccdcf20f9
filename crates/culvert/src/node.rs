//! `culvert node`: starts a node from its config and serves its status until stopped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use culvert_node::{Node, NodeFile};

use crate::cli::NodeArgs;

/// A node given `tls_cert`/`tls_key` without `self_signed` needs both files; a missing one
/// says how to make it.
pub(crate) fn require_node_cert(file: &NodeFile) -> anyhow::Result<()> {
    match (
        &file.node.tls_cert,
        &file.node.tls_key,
        file.node.self_signed,
    ) {
        (Some(cert), Some(key), false) => {
            crate::run::require_cert_files(cert, key, "`self_signed = true` in [node]")
        }
        _ => Ok(()),
    }
}

pub async fn run(
    args: NodeArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let file = NodeFile::load(&args.config)?;
    require_node_cert(&file)?;
    let admin = args.admin.or(file.node.admin);
    let tokens = file.node.tokens.clone();
    let name = file.node.name.clone().unwrap_or_else(|| "node".into());
    let node = Arc::new(
        Node::start(file)
            .await
            .with_context(|| format!("starting node {name:?}"))?,
    );
    // Like the server: the peers' token file is reloaded on SIGHUP and when it changes.
    if let (Some(server), Some(path)) = (node.server(), tokens) {
        tokio::spawn(crate::run::reload_tokens_on_change(path, server.clone()));
    }
    if let Some(addr) = admin {
        crate::admin::serve(addr, Arc::new(crate::admin::NodeAdmin(node.clone()))).await?;
    }
    tracing::info!(node = %name, tunnels = node.status().len(), "node running");
    stop.await;
    let grace = Duration::from_secs(args.grace);
    tracing::info!(
        ?grace,
        "shutting down: no new connections; streams in flight may finish"
    );
    node.drain(grace).await;
    Ok(())
}
