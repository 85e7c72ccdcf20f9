//! `culvert check --config FILE`: parses and validates a config file without starting
//! anything (as `frpc verify` does), so a typo fails a deploy step instead of a restart.

use std::path::Path;

use anyhow::{bail, Context};

use crate::cli::{AccessArgs, AgentArgs, ServerArgs};
use crate::run::TlsChoice;

/// Checks the file at `path` as the process that reads it would at start: a
/// `[server]`/`[agent]`/`[access]` config, a node config or a token file. Relative paths
/// inside it (tokens, certificates, token files) are resolved from the working directory,
/// as at start, and the files they name are read. Prints what was checked on success.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let has = |key: &str| table.contains_key(key);
    let what = if has("node") || has("tunnel") {
        let file = culvert_node::NodeFile::load(path)?;
        crate::node::require_node_cert(&file)?;
        format!("node config, {} tunnel(s)", file.tunnels.len())
    } else if has("token") || has("tenants") {
        let store = culvert_server::TokenStore::load(path)?;
        format!("token file, {} token(s)", store.len())
    } else {
        let mut parts = Vec::new();
        let config = Some(path.to_path_buf());
        if has("server") {
            let plan = crate::run::server_plan(ServerArgs {
                config: config.clone(),
                ..ServerArgs::default()
            })
            .context("[server]")?;
            // A certificate named without --self-signed must already load.
            if let TlsChoice::Pem(c, k) = &plan.tls {
                crate::run::load_pem(c, k).context("[server]")?;
            }
            parts.push("[server]");
        }
        if has("agent") {
            crate::run::agent_config(AgentArgs {
                config: config.clone(),
                ..AgentArgs::default()
            })
            .context("[agent]")?;
            parts.push("[agent]");
        }
        if has("access") {
            crate::access::config(AccessArgs {
                config,
                ..AccessArgs::default()
            })
            .context("[access]")?;
            parts.push("[access]");
        }
        if parts.is_empty() {
            bail!(
                "{}: nothing to check: no [server], [agent], [access], [node] or [[token]] table",
                path.display()
            );
        }
        parts.join(", ")
    };
    println!("{}: ok ({what})", path.display());
    Ok(())
}
