//! `culvert token new | list | revoke`: the token file as an operator edits it.

use anyhow::Context;
use culvert_server::tokens::{self, NewToken, TokenEntry};

use crate::cli::TokenCommand;

/// Runs one `culvert token` subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New {
            name,
            tokens: path,
            tenant,
            roles,
            services,
            ports,
            max_services,
            access,
            ttl,
        } => {
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
                max_services,
                access,
                ttl,
            };
            let roles = new.roles();
            let token = tokens::add_token(&path, &new)?;
            // The token alone on stdout, so scripts can capture it; the rest on stderr.
            println!("{token}");
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            eprintln!(
                "token {name:?} created (tenant {:?}, roles {}); its SHA-256 hash was added to {}. It is shown only this once.",
                new.tenant.as_deref().unwrap_or(&name),
                roles.join(","),
                path.display()
            );
            Ok(())
        }
        TokenCommand::List { tokens: path, json } => {
            let entries = tokens::list_tokens(&path)?;
            for e in &entries {
                if json {
                    println!("{}", serde_json::to_string(&listing_json(e))?);
                } else {
                    println!("{}", listing_line(e));
                }
            }
            if entries.is_empty() {
                eprintln!("{}: no tokens", path.display());
            }
            Ok(())
        }
        TokenCommand::Revoke { name, tokens: path } => {
            tokens::revoke_token(&path, &name)
                .with_context(|| format!("revoking token {name:?}"))?;
            eprintln!(
                "token {name:?} removed from {}; a server using this file closes its sessions on its next reload (SIGHUP, or within 2 s)",
                path.display()
            );
            Ok(())
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
        "max_services": e.max_services,
        "max_ports": e.max_ports,
        "max_udp_flows": e.max_udp_flows,
        "max_connections": e.max_connections,
        "access": e.access,
        "expires": e.expires,
    })
}
