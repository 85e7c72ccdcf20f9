//! `culvert access`: local listeners to private services for a while, and `access list`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use culvert_node::{parse_duration, Access, AccessConfig, AccessSpec, Fallback};
use culvert_transport::tls::Verify;

use crate::cli::{AccessArgs, AccessCommand};
use crate::file_config::{self, AccessSessionFile};

/// `ADDR:PORT`, or `ADDR` alone for a free port.
fn parse_listen(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("--listen {s:?}: expected ADDR:PORT or ADDR"))?;
    Ok(SocketAddr::new(ip, 0))
}

fn parse_fallback(
    kind: Option<&str>,
    direct: Option<String>,
    service: &str,
) -> anyhow::Result<Fallback> {
    match (kind.unwrap_or("fail"), direct) {
        ("fail", None) => Ok(Fallback::Fail),
        ("fail", Some(_)) => bail!("{service}: a direct address needs fallback = \"direct\""),
        ("direct", Some(d)) => Ok(Fallback::Direct(d)),
        ("direct", None) => {
            bail!("{service}: fallback direct needs the service's address (--direct HOST:PORT)")
        }
        (other, _) => bail!("{service}: fallback must be fail or direct, not {other:?}"),
    }
}

pub(crate) fn config(args: AccessArgs) -> anyhow::Result<(AccessConfig, Option<SocketAddr>)> {
    let file = file_config::load(args.config.as_deref())?.access;
    let server = crate::run::server_url(args.server.or(file.server))?;
    let token = crate::run::read_token(args.token_file.or(file.token_file))?;
    let verify = Verify::from_options(
        args.verify.ca.or(file.ca),
        args.verify
            .fingerprint
            .first()
            .cloned()
            .or(file.fingerprint)
            .as_deref(),
        args.verify.insecure_skip_verify || file.insecure_skip_verify,
    )?;
    let ttl = args.ttl.or(file.ttl);
    let fallback = args.fallback.or(file.fallback);
    // Sessions from the command line, by position; else from the file.
    let mut sessions_in: Vec<AccessSessionFile> = args
        .services
        .iter()
        .enumerate()
        .map(|(i, service)| AccessSessionFile {
            service: service.clone(),
            listen: args.listen.get(i).cloned(),
            ttl: None,
            fallback: None,
            direct: args.direct.get(i).cloned(),
        })
        .collect();
    if args.listen.len() > args.services.len() || args.direct.len() > args.services.len() {
        bail!("more --listen or --direct values than services");
    }
    if sessions_in.is_empty() {
        sessions_in = file.session;
    }
    if sessions_in.is_empty() {
        bail!("name at least one service: culvert access SERVICE --server … (or [[access.session]] in --config)");
    }
    let mut sessions = Vec::new();
    for s in sessions_in {
        if culvert_server::names::ServiceRef::parse(&s.service).is_none() {
            bail!(
                "service {:?}: expected NAME or TENANT/NAME (names of 1 to 64 A-Z a-z 0-9 . _ -)",
                s.service
            );
        }
        let ttl = s
            .ttl
            .as_deref()
            .or(ttl.as_deref())
            .map(parse_duration)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        sessions.push(AccessSpec {
            listen: parse_listen(s.listen.as_deref().unwrap_or("127.0.0.1"))?,
            ttl,
            fallback: parse_fallback(
                s.fallback.as_deref().or(fallback.as_deref()),
                s.direct,
                &s.service,
            )?,
            service: s.service,
        });
    }
    Ok((
        AccessConfig {
            server,
            token,
            verify,
            sessions,
            pool: 2,
            connect_timeout: Duration::from_secs(10),
            proxy: culvert_transport::Proxy::from_setting(args.proxy.or(file.proxy).as_deref())?,
        },
        args.admin.or(file.admin),
    ))
}

pub async fn run(
    args: AccessArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(AccessCommand::List(status)) = args.command {
        return crate::status::run(status.into()).await;
    }
    let (config, admin) = config(args)?;
    let access = Arc::new(Access::start(config).await?);
    for (service, addr, protocol) in access.local_addrs() {
        // Addresses on stdout (one per line, for scripts; UDP ones marked); the rest on stderr.
        match protocol {
            "udp" => println!("{service} {addr} udp"),
            _ => println!("{service} {addr}"),
        }
    }
    if let Some(addr) = admin {
        crate::admin::serve(addr, Arc::new(crate::admin::AccessAdmin(access.clone()))).await?;
    }
    tokio::select! {
        _ = access.wait() => {
            if let Some(reason) = access.refused() {
                access.shutdown();
                bail!("access ended: {reason}");
            }
            tracing::info!("every access session reached its time-to-live")
        }
        _ = stop => tracing::info!("stopping access sessions"),
    }
    access.shutdown();
    Ok(())
}
