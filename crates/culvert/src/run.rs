//! What each subcommand does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use culvert_agent::{Agent, AgentConfig, ServiceSpec};
use culvert_server::{PortRange, Server, ServerConfig, TokenStore};
use culvert_transport::tls::{ServerTls, Verify};
use culvert_transport::ws::ServerUrl;
use culvert_transport::Proxy;

use crate::cli::{AgentArgs, CertCommand, Cli, Command, ServerArgs};
use crate::file_config;

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token(cmd) => crate::tokens_cli::run(cmd),
        Command::Cert(CertCommand::New { cert, key, names }) => {
            let fp = ServerTls::write_self_signed(&names, &cert, &key)?;
            println!("{fp}");
            eprintln!(
                "wrote {} and {} for {}; peers pin the fingerprint above or trust {} as a CA",
                cert.display(),
                key.display(),
                names.join(", "),
                cert.display()
            );
            Ok(())
        }
        Command::Server(args) => server(args).await,
        Command::Agent(args) => agent(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Status(args) => crate::status::run(args).await,
        Command::Node(args) => crate::node::run(args, shutdown_signal()).await,
        Command::Access(args) => crate::access::run(args, shutdown_signal()).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "culvert", &mut std::io::stdout());
            Ok(())
        }
        Command::Check(args) => crate::check::run(&args.config),
    }
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Where the server's certificate comes from, as the flags and the config file chose it.
pub(crate) enum TlsChoice {
    /// `--tls-cert` and `--tls-key`: files that must exist.
    Pem(PathBuf, PathBuf),
    /// `--self-signed` alone: a new certificate at each start.
    SelfSigned,
    /// `--self-signed` with `--tls-cert`/`--tls-key`: written there the first time, kept.
    SelfSignedKept(PathBuf, PathBuf),
    /// `--insecure-plain`: plain ws:// on loopback.
    Plain,
}

/// The server's settings from its flags and config file, checked but not yet acted on
/// (nothing bound, no certificate generated): what `culvert check` validates too.
pub(crate) struct ServerPlan {
    pub config: ServerConfig,
    pub tokens: TokenStore,
    pub tokens_path: PathBuf,
    pub tls: TlsChoice,
    pub admin: Option<SocketAddr>,
    pub grace: Duration,
}

/// A timer setting of `secs` (`what` names its file key; its flag is the same with
/// dashes), refused outside `min` to a day ([`culvert_proto::config::MAX_TIMER`]): the
/// flags are checked as they are parsed, a config file's values here.
fn timer_setting(what: &str, secs: u64, min: u64) -> anyhow::Result<Duration> {
    let max = culvert_proto::config::MAX_TIMER.as_secs();
    if !(min..=max).contains(&secs) {
        bail!(
            "{what} = {secs} (--{}): must lie in {min}..={max} seconds",
            what.replace('_', "-")
        );
    }
    Ok(Duration::from_secs(secs))
}

/// `--grace` (or the file's `grace`), 30 s when neither is given.
fn grace_setting(secs: Option<u64>) -> anyhow::Result<Duration> {
    timer_setting("grace", secs.unwrap_or(crate::cli::DEFAULT_GRACE_SECS), 0)
}

/// The multiplexer timers the server and the agent both take: `--heartbeat-interval` and
/// `--linger` (or their file keys), each checked by [`timer_setting`].
fn set_proto_timers(
    proto: &mut culvert_proto::Config,
    heartbeat_interval: Option<u64>,
    linger: Option<u64>,
) -> anyhow::Result<()> {
    if let Some(h) = heartbeat_interval {
        proto.set_heartbeat_interval(timer_setting("heartbeat_interval", h, 1)?);
    }
    if let Some(l) = linger {
        proto.linger = timer_setting("linger", l, 1)?;
    }
    Ok(())
}

/// Reads the server's flags and config file into a [`ServerPlan`].
pub(crate) fn server_plan(args: ServerArgs) -> anyhow::Result<ServerPlan> {
    let file = file_config::load(args.config.as_deref())?.server;
    let admin = args.admin.or(file.admin);
    let grace = grace_setting(args.grace.or(file.grace))?;
    let listen: SocketAddr = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:8443".parse().expect("valid default"));
    let tokens_path = args
        .tokens
        .or(file.tokens)
        .unwrap_or_else(|| PathBuf::from("tokens.toml"));
    let cluster_url = args.cluster.or(file.cluster);
    // In a cluster the tokens live in the database.
    let tokens = match &cluster_url {
        Some(_) => TokenStore::default(),
        None => TokenStore::load(&tokens_path)?,
    };
    let range: PortRange = args
        .port_range
        .or(file.port_range)
        .unwrap_or_else(|| "30000-31000".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    let mut config = ServerConfig::new(listen, range);
    if let Some(u) = args.udp_port_range.or(file.udp_port_range) {
        config.udp_ports = u.parse().map_err(anyhow::Error::msg)?;
    }
    let balancers = |flag: &[String], key: &Option<Vec<String>>| match flag.is_empty() {
        true => key.clone().unwrap_or_default(),
        false => flag.to_vec(),
    };
    config.public_proxy_protocol_from = networks(
        "--public-proxy-protocol-from",
        &balancers(
            &args.public_proxy_protocol_from,
            &file.public_proxy_protocol_from,
        ),
    )?;
    config.tunnel_proxy_protocol_from = networks(
        "--tunnel-proxy-protocol-from",
        &balancers(
            &args.tunnel_proxy_protocol_from,
            &file.tunnel_proxy_protocol_from,
        ),
    )?;
    if let Some(b) = args.public_bind.or(file.public_bind) {
        config.public_bind = b;
    }
    set_proto_timers(
        &mut config.proto,
        args.heartbeat_interval.or(file.heartbeat_interval),
        args.linger.or(file.linger),
    )?;
    if let Some(n) = args
        .max_connections_per_session
        .or(file.max_connections_per_session)
    {
        config.max_connections_per_session = n.max(1);
    }
    if let Some(listen) = args.http_listen.or(file.http_listen) {
        let token_header = match args.http_token_header.or(file.http_token_header) {
            Some(h) => Some(
                h.parse::<hyper::header::HeaderName>()
                    .map_err(|_| anyhow::anyhow!("--http-token-header {h:?}: not a header name"))?,
            ),
            None => None,
        };
        let limit = |flag: &str, n: Option<usize>, default: usize| match n {
            Some(0) => bail!("--{flag} 0 would refuse every caller"),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let proxy_protocol = args.http_proxy_protocol || file.http_proxy_protocol;
        let from = balancers(
            &args.http_proxy_protocol_from,
            &file.http_proxy_protocol_from,
        );
        if !from.is_empty() && !proxy_protocol {
            bail!("http_proxy_protocol_from names balancers, but http_proxy_protocol is off");
        }
        let proxy_protocol_from = networks("--http-proxy-protocol-from", &from)?;
        config.http = Some(culvert_server::HttpIngressConfig {
            listen,
            domain: args.http_domain.or(file.http_domain),
            token_header,
            max_connections: limit(
                "http-max-connections",
                args.http_max_connections.or(file.http_max_connections),
                culvert_server::DEFAULT_HTTP_MAX_CONNECTIONS,
            )?,
            max_connections_per_address: limit(
                "http-max-connections-per-address",
                args.http_max_connections_per_address
                    .or(file.http_max_connections_per_address),
                culvert_server::DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
            )?,
            proxy_protocol,
            proxy_protocol_from,
        });
    }
    if let Some(url) = cluster_url {
        let id = match args.cluster_id.or(file.cluster_id) {
            Some(id) => id,
            None => hostname()?,
        };
        if !culvert_server::names::valid_name(&id) {
            bail!("--cluster-id {id:?}: use 1-64 of A-Z a-z 0-9 . _ -");
        }
        let tls_on = !(args.insecure_plain || file.insecure_plain);
        let advertise = match args.cluster_advertise.or(file.cluster_advertise) {
            Some(a) => a,
            None => {
                if listen.ip().is_unspecified() {
                    bail!("--cluster-advertise is needed: --listen {listen} does not say which address the other servers reach this one at");
                }
                format!("{}://{listen}", if tls_on { "wss" } else { "ws" })
            }
        };
        let mut c = culvert_server::ClusterConfig::new(&url, &id, &advertise);
        if let Some(h) = args.cluster_heartbeat.or(file.cluster_heartbeat) {
            c.heartbeat = culvert_node::parse_duration(&h)
                .map_err(|e| anyhow::anyhow!("--cluster-heartbeat {e}"))?
                .max(Duration::from_millis(100));
        }
        config.cluster = Some(c);
    }
    let cert = args.tls_cert.or(file.tls_cert);
    let key = args.tls_key.or(file.tls_key);
    let self_signed = args.self_signed || file.self_signed;
    let plain = args.insecure_plain || file.insecure_plain;
    let tls = match (cert, key, self_signed, plain) {
        (Some(c), Some(k), false, false) => TlsChoice::Pem(c, k),
        (None, None, true, false) => TlsChoice::SelfSigned,
        (Some(c), Some(k), true, false) => TlsChoice::SelfSignedKept(c, k),
        (None, None, false, true) => {
            if !listen.ip().is_loopback() {
                bail!(
                    "--insecure-plain is only allowed on a loopback listen address (got {listen})"
                );
            }
            TlsChoice::Plain
        }
        (None, None, false, false) => {
            bail!("configure TLS with --tls-cert and --tls-key (`culvert cert new --cert cert.pem --key key.pem` makes a pair), or --self-signed (or --insecure-plain on loopback)")
        }
        _ => bail!("choose one of: --tls-cert/--tls-key, --self-signed (with --tls-cert/--tls-key: kept in those files), --insecure-plain"),
    };
    Ok(ServerPlan {
        config,
        tokens,
        tokens_path,
        tls,
        admin,
        grace,
    })
}

/// This machine's host name: a cluster server's default id.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if name.is_empty() {
        bail!("--cluster-id is needed: the host name could not be read");
    }
    Ok(name)
}

/// Loads `--tls-cert`/`--tls-key`; a missing file says how to make one.
pub(crate) fn load_pem(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<ServerTls> {
    require_cert_files(cert, key, "--self-signed")?;
    Ok(ServerTls::from_pem(cert, key)?)
}

/// Fails, saying how to make them, when the certificate or key file is missing;
/// `self_signed` names the setting that generates one instead (a flag or a TOML key).
pub(crate) fn require_cert_files(
    cert: &std::path::Path,
    key: &std::path::Path,
    self_signed: &str,
) -> anyhow::Result<()> {
    if let Some(missing) = [cert, key].into_iter().find(|p| !p.exists()) {
        bail!(
            "{}: no such file. Make a certificate and key with `culvert cert new --cert {} --key {}` \
             (prints the fingerprint peers pin), or use {self_signed} (with the certificate and \
             key files named too, it writes them the first time and keeps them)",
            missing.display(),
            cert.display(),
            key.display()
        );
    }
    Ok(())
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let ServerPlan {
        config,
        tokens,
        tokens_path,
        tls,
        admin: admin_addr,
        grace,
    } = server_plan(args)?;
    let (listen, range) = (config.listen, config.tcp_ports);
    let tls = match tls {
        TlsChoice::Pem(c, k) => Some(load_pem(&c, &k)?),
        TlsChoice::SelfSigned => {
            let t = ServerTls::self_signed_for(listen)?;
            tracing::info!(fingerprint = %t.fingerprint, "self-signed certificate generated for this run only (a new one at each start); agents pin it with --fingerprint");
            Some(t)
        }
        TlsChoice::SelfSignedKept(c, k) => {
            let (t, created) = ServerTls::self_signed_kept(listen, &c, &k)?;
            tracing::info!(fingerprint = %t.fingerprint, created, cert = %c.display(),
                "self-signed certificate kept across restarts; agents pin it with --fingerprint");
            Some(t)
        }
        TlsChoice::Plain => {
            tracing::warn!("serving plain ws:// without TLS (--insecure-plain)");
            None
        }
    };
    let clustered = config.cluster.is_some();
    if !clustered {
        tracing::info!(tokens = tokens.len(), file = %tokens_path.display(), ports = %range, "loaded tokens");
    }
    let server = Server::bind(config, tokens, tls)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let handle = std::sync::Arc::new(server.spawn()?);
    if let Some(admin) = admin_addr {
        crate::admin::serve(
            admin,
            std::sync::Arc::new(crate::admin::ServerAdmin(handle.clone())),
        )
        .await?;
    }
    if !clustered {
        // In a cluster, tokens follow the database instead (see culvert_server's cluster).
        tokio::spawn(reload_tokens_on_change(tokens_path, handle.clone()));
    }
    shutdown_signal().await;
    tracing::info!(
        ?grace,
        "shutting down: no new connections; streams in flight may finish"
    );
    handle.drain(grace).await;
    Ok(())
}

/// Reloads the token file on SIGHUP and whenever it changes (checked every 2 s). A file that
/// does not load keeps the old tokens in force, with a warning.
pub(crate) async fn reload_tokens_on_change(
    path: PathBuf,
    handle: std::sync::Arc<culvert_server::ServerHandle>,
) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = mtime(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let signalled = tokio::select! {
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending().await,
                }
            } => true,
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
        };
        let now = mtime(&path);
        if !signalled && now == last {
            continue;
        }
        last = now;
        match TokenStore::load(&path) {
            Ok(store) => {
                let n = store.len();
                let r = handle.reload_tokens(store);
                tracing::info!(tokens = n, sessions_closed = r.sessions_closed,
                    sessions_updated = r.sessions_updated, services_withdrawn = r.services_withdrawn,
                    file = %path.display(), "tokens reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "token reload failed; the previous tokens stay in force")
            }
        }
    }
}

/// The server to dial, from the flag or the config file; required.
pub(crate) fn server_url(url: Option<String>) -> anyhow::Result<ServerUrl> {
    let url = url.ok_or_else(|| anyhow::anyhow!("--server wss://HOST:PORT is required"))?;
    Ok(ServerUrl::parse(&url)?)
}

pub(crate) fn read_token(path: Option<PathBuf>) -> anyhow::Result<String> {
    let token = match path {
        Some(p) => std::fs::read_to_string(&p)
            .with_context(|| format!("reading token file {}", p.display()))?,
        None => std::env::var("CULVERT_TOKEN").map_err(|_| {
            anyhow::anyhow!("no token: pass --token-file FILE or set CULVERT_TOKEN")
        })?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(token)
}

/// The agent's servers: the `--server` flags, else `server` and `servers` of the file.
fn agent_servers(
    flags: Vec<String>,
    file: &file_config::AgentFile,
) -> anyhow::Result<Vec<ServerUrl>> {
    let urls: Vec<String> = if flags.is_empty() {
        file.server.iter().chain(&file.servers).cloned().collect()
    } else {
        flags
    };
    if urls.is_empty() {
        bail!("--server wss://HOST:PORT is required (repeat it for the servers of a cluster)");
    }
    let mut servers = Vec::new();
    for u in &urls {
        let url = ServerUrl::parse(u)?;
        if servers.contains(&url) {
            bail!("server {u} is given twice");
        }
        servers.push(url);
    }
    Ok(servers)
}

pub fn agent_config(args: AgentArgs) -> anyhow::Result<AgentConfig> {
    let file = file_config::load(args.config.as_deref())?.agent;
    let mut servers = agent_servers(args.server, &file)?.into_iter();
    let server = servers.next().context("no server")?;
    let token = read_token(args.token_file.or(file.token_file))?;
    let expose: Vec<String> = if args.expose.is_empty() {
        file.expose
    } else {
        args.expose
    };
    if expose.is_empty()
        && file.service.is_empty()
        && args.bench_service.is_none()
        && file.bench_service.is_none()
    {
        bail!("nothing to expose: add --expose NAME=tcp://HOST:PORT (or --bench-service NAME)");
    }
    let private = args.private || file.private;
    let services = expose
        .iter()
        .map(|e| {
            e.parse::<ServiceSpec>()
                .map(|mut s| {
                    s.private |= private;
                    s
                })
                .map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut services = services;
    for t in &file.service {
        services.push(service_table(t)?);
    }
    // The server keys services by name: a second one of the same name would be dropped.
    let mut names = std::collections::HashSet::new();
    if let Some(dup) = services.iter().find(|s| !names.insert(s.name.as_str())) {
        bail!(
            "service {:?} is exposed twice (--expose, `expose` or [[agent.service]] in the config): each service needs its own name",
            dup.name
        );
    }
    for s in services
        .iter()
        .filter_map(|s| s.http.as_ref().map(|h| (s, h)))
    {
        s.1.reload()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("service {:?}: injected headers", s.0.name))?;
        if s.1.tls {
            s.1.client_tls()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("service {:?}: TLS to {}", s.0.name, s.1.url()))?;
        }
    }
    let mut config = AgentConfig::new(server, token, services);
    config.extra_servers = servers.collect();
    let fingerprints: Vec<String> = if args.verify.fingerprint.is_empty() {
        file.fingerprint
            .into_iter()
            .chain(file.fingerprints)
            .collect()
    } else {
        args.verify.fingerprint
    };
    config.verify = Verify::from_options_pinned(
        args.verify.ca.or(file.ca),
        &fingerprints,
        args.verify.insecure_skip_verify || file.insecure_skip_verify,
    )?;
    if let Some(p) = args.pool.or(file.pool) {
        config.pool = p.clamp(1, 64);
    }
    if let Some(secs) = args.home_probe_interval.or(file.home_probe_interval) {
        let every = timer_setting("home_probe_interval", secs, 0)?;
        config.home_probe_interval = (secs > 0).then_some(every);
    }
    config.ws_mask = args.ws_mask || file.ws_mask;
    config.proxy = Proxy::from_setting(args.proxy.or(file.proxy).as_deref())?;
    set_proto_timers(
        &mut config.proto,
        args.heartbeat_interval.or(file.heartbeat_interval),
        args.linger.or(file.linger),
    )?;
    config.exit_on_auth_failure = args.exit_on_auth_failure || file.exit_on_auth_failure;
    Ok(config)
}

/// The longest `response_timeout` a service may set: a day (a caller waiting longer for the
/// first byte of an answer is better served by a job and a poll).
const MAX_RESPONSE_TIMEOUT_SECS: u64 = 86_400;

/// A `[[agent.service]]` table as a service.
fn service_table(t: &file_config::AgentServiceFile) -> anyhow::Result<ServiceSpec> {
    let what = || format!("[[agent.service]] {:?}", t.name);
    let mut spec: ServiceSpec = format!("{}={}", t.name, t.url)
        .parse()
        .map_err(anyhow::Error::msg)
        .with_context(what)?;
    match spec.http.take() {
        Some(b) => {
            let mut b = std::sync::Arc::try_unwrap(b).expect("just parsed");
            b.keep_host = t.keep_host;
            b.ca = t.ca.clone();
            if let Some(secs) = t.response_timeout {
                if !(1..=MAX_RESPONSE_TIMEOUT_SECS).contains(&secs) {
                    bail!(
                        "{}: response_timeout must be 1 to {MAX_RESPONSE_TIMEOUT_SECS} seconds",
                        what()
                    );
                }
                b.response_timeout = Duration::from_secs(secs);
            }
            let b = b
                .with_inject(
                    t.inject_headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .map_err(anyhow::Error::msg)
                .with_context(what)?;
            spec.http = Some(std::sync::Arc::new(b));
        }
        None if !t.inject_headers.is_empty()
            || t.keep_host
            || t.ca.is_some()
            || t.response_timeout.is_some() =>
        {
            bail!(
                "{}: inject_headers, keep_host, ca and response_timeout are for http:// and https:// services",
                what()
            );
        }
        None => {}
    }
    Ok(spec)
}

/// Re-reads the injected header values of the HTTP services on every SIGHUP (a failed
/// read keeps the previous values and is logged without them).
fn reload_secrets_on_sighup(services: Vec<ServiceSpec>) {
    let http: Vec<_> = services
        .into_iter()
        .filter_map(|s| s.http.map(|h| (s.name, h)))
        .collect();
    if http.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            for (name, b) in &http {
                match b.reload() {
                    Ok(()) => {
                        tracing::info!(service = %name, headers = b.inject.len(), "injected headers re-read")
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "injected headers not re-read; the previous values stay")
                    }
                }
            }
        }
    });
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let file = file_config::load(args.config.as_deref())?.agent;
    let admin_addr = args.admin.or(file.admin);
    let grace = grace_setting(args.grace.or(file.grace))?;
    let bench_name = args.bench_service.clone().or(file.bench_service);
    let private = args.private || file.private;
    let mut config = agent_config(args)?;
    // The bench service runs as long as the agent; its specs join the exposed services.
    let _bench = match bench_name {
        Some(name) => {
            let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let svc = crate::bench::service::BenchService::start(local, Some(local))
                .await
                .context("starting the bench service")?;
            let specs = svc.specs(&name, private)?;
            if let Some(dup) = specs
                .iter()
                .find(|b| config.services.iter().any(|s| s.name == b.name))
            {
                bail!(
                    "--bench-service {name:?}: service {:?} is also in --expose",
                    dup.name
                );
            }
            config.services.extend(specs);
            tracing::info!(service = %name, udp_service = %crate::bench::service::udp_service_name(&name), tcp = %svc.tcp, udp = %svc.udp, "bench service started (measure it with culvert bench --target)");
            Some(svc)
        }
        None => None,
    };
    let servers: Vec<String> = config
        .servers()
        .iter()
        .map(|s| format!("{}:{}", s.host, s.port))
        .collect();
    tracing::info!(server = %servers.join(","), tls = config.server.tls, pool = config.pool.max(servers.len()), "agent starting");
    reload_secrets_on_sighup(config.services.clone());
    let handle = std::sync::Arc::new(Agent::spawn(config)?);
    if let Some(admin) = admin_addr {
        crate::admin::serve(
            admin,
            std::sync::Arc::new(crate::admin::AgentAdmin(handle.clone())),
        )
        .await?;
    }
    tokio::select! {
        _ = shutdown_signal() => {}
        error = handle.permanent_failure() => {
            handle.shutdown();
            bail!("{error} (exiting: --exit-on-auth-failure)");
        }
    }
    tracing::info!(
        ?grace,
        "shutting down: no new streams; streams in flight may finish"
    );
    handle.drain(grace).await;
    Ok(())
}

/// An option's list of addresses and networks, parsed; the error names the option.
fn networks(option: &str, entries: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    entries
        .iter()
        .map(|s| culvert_server::parse_network(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{option}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `server` and `servers` of the agent's TOML make one list (`server` first); `--server`
    /// flags replace it; repeated fingerprints pin each; a server given twice is refused;
    /// `--linger` overrides the file's `linger`.
    #[test]
    fn agent_servers_from_the_file_and_the_flags() {
        let dir =
            std::env::temp_dir().join(format!("culvert-agent-servers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("agent.token");
        std::fs::write(&token, "secret").unwrap();
        let conf = dir.join("agent.toml");
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        std::fs::write(
            &conf,
            format!(
                "[agent]\nserver = \"wss://s1:8443\"\nservers = [\"wss://s2:8443\", \"wss://s3:8443\"]\n\
                 token_file = {token:?}\nexpose = [\"pg=tcp://127.0.0.1:5432\"]\nhome_probe_interval = 5\n\
                 fingerprints = [\"{a}\", \"{b}\"]\nlinger = 7\n"
            ),
        )
        .unwrap();
        let args = || AgentArgs {
            config: Some(conf.clone()),
            ..AgentArgs::default()
        };
        let c = agent_config(args()).unwrap();
        let hosts: Vec<String> = c.servers().iter().map(|s| s.host.clone()).collect();
        assert_eq!(hosts, ["s1", "s2", "s3"]);
        assert_eq!(c.home_probe_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.verify, Verify::Fingerprints(vec![a.clone(), b]));
        assert_eq!(c.proto.linger, Duration::from_secs(7));

        let mut flags = args();
        flags.server = vec!["wss://s9:8443".into()];
        flags.verify.fingerprint = vec![a.clone()];
        flags.home_probe_interval = Some(0);
        flags.linger = Some(9);
        let c = agent_config(flags).unwrap();
        assert_eq!(c.proto.linger, Duration::from_secs(9));
        assert_eq!(c.servers().len(), 1);
        assert_eq!(c.server.host, "s9");
        assert_eq!(c.verify, Verify::Fingerprint(a));
        assert_eq!(c.home_probe_interval, None);

        let mut twice = args();
        twice.server = vec!["wss://s9:8443".into(), "wss://s9:8443/".into()];
        let e = agent_config(twice).unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
