//! `culvert token new | list | revoke`: the token file as an operator edits it, or with
//! `--cluster URL` the token table of a cluster's registry in PostgreSQL (the same entries:
//! hashes and permissions, never tokens).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use culvert_cluster::{ClusterDb, ClusterError};
use culvert_server::tokens::{self, NewToken, TokenEntry};

use crate::cli::{TokenCommand, TokenStoreArgs};

/// Deadline of the registry operations of one command (connecting and migrating the schema
/// included): a database that is down or unreachable is reported, not waited for.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The token file when no `--cluster` is given.
const DEFAULT_FILE: &str = "tokens.toml";

/// Where a command's tokens are.
enum Store {
    /// A token file.
    File(PathBuf),
    /// A cluster registry, by its URL (never printed: it may hold a password).
    Cluster(String),
}

impl Store {
    /// `--tokens` or `--cluster`, not both; the default file when neither is given.
    fn pick(args: TokenStoreArgs) -> anyhow::Result<Store> {
        match (args.tokens, args.cluster) {
            (Some(_), Some(_)) => anyhow::bail!(
                "give either --tokens FILE or --cluster URL (or CULVERT_CLUSTER), not both: \
                 tokens live in a token file or in a cluster's registry"
            ),
            (None, Some(url)) if url.trim().is_empty() => {
                anyhow::bail!("--cluster (or CULVERT_CLUSTER) is empty: give a postgres:// URL")
            }
            (None, Some(url)) => Ok(Store::Cluster(url)),
            (Some(path), None) => Ok(Store::File(path)),
            (None, None) => Ok(Store::File(PathBuf::from(DEFAULT_FILE))),
        }
    }
}

/// Runs `f` against the cluster registry at `url` on a runtime of its own (on a thread of
/// its own: the caller may already be inside a runtime), every step bounded by
/// [`CLUSTER_TIMEOUT`].
fn with_cluster<T, F, Fut>(url: &str, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce(ClusterDb) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime for the cluster registry")?;
            rt.block_on(async {
                let db = ClusterDb::connect(url, CLUSTER_TIMEOUT).await?;
                f(db).await
            })
            // The message already names the database problem; its causes would repeat it.
            .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the cluster registry thread panicked")))
    })
}

/// Runs one `culvert token` subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New {
            name,
            store,
            tenant,
            roles,
            services,
            ports,
            public_clients,
            max_services,
            access,
            ttl,
        } => {
            let store = Store::pick(store)?;
            let ttl = ttl
                .as_deref()
                .map(culvert_node::parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let new = NewToken {
                name: name.clone(),
                tenant,
                roles,
                services,
                ports,
                public_clients,
                max_services,
                access,
                ttl,
            };
            let roles = new.roles();
            let (token, place) = match &store {
                Store::File(path) => (tokens::add_token(path, &new)?, path.display().to_string()),
                Store::Cluster(url) => {
                    let (entry, token) = tokens::new_entry(&new)?;
                    let json =
                        serde_json::to_value(&entry).context("serialising the token entry")?;
                    with_cluster(url, |db| async move { db.insert_token(&name, &json).await })?;
                    (token, "the cluster registry".to_owned())
                }
            };
            // The token alone on stdout, so scripts can capture it; the rest on stderr.
            println!("{token}");
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            eprintln!(
                "token {:?} created (tenant {:?}, roles {}); its SHA-256 hash was added to {place}. It is shown only this once.",
                new.name,
                new.tenant.as_deref().unwrap_or(&new.name),
                roles.join(","),
            );
            Ok(())
        }
        TokenCommand::List { store, json } => {
            let (entries, place) = match Store::pick(store)? {
                Store::File(path) => (tokens::list_tokens(&path)?, path.display().to_string()),
                Store::Cluster(url) => {
                    let rows = with_cluster(&url, |db| async move { db.tokens().await })?;
                    let entries = rows
                        .into_iter()
                        .map(|(name, v)| {
                            serde_json::from_value::<TokenEntry>(v).with_context(|| {
                                format!("the cluster registry's entry of token {name:?} is not a token entry this build understands")
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    (entries, "the cluster registry".to_owned())
                }
            };
            for e in &entries {
                if json {
                    println!("{}", serde_json::to_string(&listing_json(e))?);
                } else {
                    println!("{}", listing_line(e));
                }
            }
            if entries.is_empty() {
                eprintln!("{place}: no tokens");
            }
            Ok(())
        }
        TokenCommand::Revoke { name, store } => {
            match Store::pick(store)? {
                Store::File(path) => {
                    tokens::revoke_token(&path, &name)
                        .with_context(|| format!("revoking token {name:?}"))?;
                    eprintln!(
                    "token {name:?} removed from {}; a server using this file closes its sessions on its next reload (SIGHUP, or within 2 s)",
                    path.display()
                );
                    Ok(())
                }
                Store::Cluster(url) => {
                    let n = name.clone();
                    let removed = with_cluster(&url, |db| async move { db.delete_token(&n).await })
                        .with_context(|| format!("revoking token {name:?}"))?;
                    if !removed {
                        anyhow::bail!("revoking token {name:?}: the cluster registry has no token of that name");
                    }
                    eprintln!(
                    "token {name:?} removed from the cluster registry; the cluster's servers close its sessions as soon as they hear of it"
                );
                    Ok(())
                }
            }
        }
    }
}

/// `name tenant=… roles=… …` for one token; absent limits are left out.
fn listing_line(e: &TokenEntry) -> String {
    let mut line = format!("{} tenant={} roles={}", e.name, e.tenant(), e.role_names());
    let list = |key: &str, v: &Option<Vec<String>>, line: &mut String| {
        if let Some(v) = v {
            line.push_str(&format!(" {key}={}", v.join(",")));
        }
    };
    list("services", &e.services, &mut line);
    list("ports", &e.ports, &mut line);
    list("public_clients", &e.public_clients, &mut line);
    line.push_str(&format!(" max_services={}", e.max_services));
    for (key, v) in [
        ("max_ports", e.max_ports),
        ("max_udp_flows", e.max_udp_flows),
        ("max_connections", e.max_connections),
    ] {
        if let Some(v) = v {
            line.push_str(&format!(" {key}={v}"));
        }
    }
    list("access", &e.access, &mut line);
    if let Some(t) = e.expires {
        let left = t.saturating_sub(tokens::unix_now());
        line.push_str(&format!(" expires={t} (in {left}s)"));
    }
    line
}

/// The JSON of one token in `token list --json` (its hash left out).
fn listing_json(e: &TokenEntry) -> serde_json::Value {
    serde_json::json!({
        "name": e.name,
        "tenant": e.tenant(),
        "roles": e.role_names().split(',').collect::<Vec<_>>(),
        "services": e.services,
        "ports": e.ports,
        "public_clients": e.public_clients,
        "max_services": e.max_services,
        "max_ports": e.max_ports,
        "max_udp_flows": e.max_udp_flows,
        "max_connections": e.max_connections,
        "access": e.access,
        "expires": e.expires,
    })
}
