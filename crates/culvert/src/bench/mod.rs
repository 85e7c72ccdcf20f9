//! `culvert bench`: throughput, latency, connection rate and UDP through a tunnel, each
//! next to a baseline measured the same way without the tunnel.
//!
//! - `--loopback` runs a server, an agent and the [bench service](service) in this
//!   process; the baseline is the bench service itself.
//! - `--target HOST:PORT` measures a live tunnel: the public port of the service an agent
//!   exposes with `--bench-service NAME` (and `--udp-target` for `NAME-udp`). The baseline
//!   (`--direct`) is a bench service reached directly, such as `culvert bench --serve`.
//!
//! The workloads are in [`measure`], the table and JSON in [`report`].

pub mod args;
pub mod measure;
pub mod report;
pub mod service;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use culvert_agent::{Agent, AgentConfig, AgentHandle};
use culvert_server::{Server, ServerConfig, ServerHandle, TokenStore};
use culvert_transport::ws::ServerUrl;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::BenchArgs;
use measure::Settings;
use report::{Endpoints, Report, Results};
use service::BenchService;

/// Name of the bench service in `--loopback` runs.
const LOOPBACK_SERVICE: &str = "bench";

/// One side of the comparison: where its TCP and UDP workloads go.
struct Side {
    name: &'static str,
    tcp: SocketAddr,
    udp: Option<SocketAddr>,
}

/// The measurements, in the order they run (each through the tunnel, then direct).
#[derive(Debug, Clone, Copy)]
enum Workload {
    Upload1,
    UploadN,
    Download1,
    DownloadN,
    Latency,
    Connections,
    Udp,
}

impl Workload {
    const ALL: [Workload; 7] = [
        Workload::Upload1,
        Workload::UploadN,
        Workload::Download1,
        Workload::DownloadN,
        Workload::Latency,
        Workload::Connections,
        Workload::Udp,
    ];

    fn label(self, s: &Settings) -> String {
        match self {
            Workload::Upload1 => "upload, 1 stream".into(),
            Workload::UploadN => format!("upload, {} streams", s.streams),
            Workload::Download1 => "download, 1 stream".into(),
            Workload::DownloadN => format!("download, {} streams", s.streams),
            Workload::Latency => "round-trip latency".into(),
            Workload::Connections => format!("new connections, {} clients", s.clients),
            Workload::Udp => "UDP echo".into(),
        }
    }

    /// Runs this workload against `side`, storing its figures in `r`.
    async fn run(self, side: &Side, s: &Settings, r: &mut Results) {
        match self {
            Workload::Upload1 => r.upload_1 = measure::upload(side.tcp, 1, s).await,
            Workload::UploadN => r.upload_n = measure::upload(side.tcp, s.streams, s).await,
            Workload::Download1 => r.download_1 = measure::download(side.tcp, 1, s).await,
            Workload::DownloadN => r.download_n = measure::download(side.tcp, s.streams, s).await,
            Workload::Latency => r.latency = measure::latency(side.tcp, s).await,
            Workload::Connections => r.connections = measure::connections(side.tcp, s).await,
            Workload::Udp => {
                if let Some(u) = side.udp {
                    r.udp = Some(measure::udp(u, s).await);
                }
            }
        }
    }
}

/// A progress bar on stdout, or nothing (stdout not a terminal, or `--json`).
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(show: bool, phases: u64) -> Progress {
        if !show {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(Some(phases), ProgressDrawTarget::stdout());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    fn start(&self, msg: String) {
        if let Some(b) = &self.0 {
            b.set_message(msg);
        }
    }

    fn done(&self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// The in-process tunnel of `--loopback`; dropping it stops the agent and the server.
struct Loopback {
    service: BenchService,
    _server: ServerHandle,
    _agent: AgentHandle,
    tcp: SocketAddr,
    udp: SocketAddr,
}

/// Starts a server on loopback, the bench service and an agent exposing it; returns once
/// the service's public TCP and UDP ports are known (or fails after `timeout`).
async fn loopback(timeout: Duration) -> anyhow::Result<Loopback> {
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    let service = BenchService::start(local, Some(local))
        .await
        .context("starting the bench service")?;
    let token = culvert_server::tokens::generate_token();
    let tokens = TokenStore::from_tokens(&[("bench", token.as_str())]);
    // Above the tests' port blocks; a port that cannot be bound is skipped.
    let mut config = ServerConfig::new(local, "40000-40999".parse().map_err(anyhow::Error::msg)?);
    config.public_bind = "127.0.0.1".parse()?;
    let server = Server::bind(config, tokens, None)
        .await
        .context("starting the loopback server")?
        .spawn()?;
    let url = ServerUrl::parse(&format!("ws://{}", server.addr))?;
    let agent = Agent::spawn(AgentConfig::new(
        url,
        token,
        service.specs(LOOPBACK_SERVICE, false)?,
    ))?;
    let udp_name = service::udp_service_name(LOOPBACK_SERVICE);
    let deadline = tokio::time::Instant::now() + timeout;
    let (tcp, udp) = loop {
        let ports = agent.ports();
        if agent.is_ready() {
            if let (Some(t), Some(u)) = (ports.get(LOOPBACK_SERVICE), ports.get(&udp_name)) {
                break (*t, *u);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the loopback agent did not register the bench service within {timeout:?}{}",
                agent
                    .last_error()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Loopback {
        service,
        _server: server,
        _agent: agent,
        tcp: SocketAddr::from(([127, 0, 0, 1], tcp)),
        udp: SocketAddr::from(([127, 0, 0, 1], udp)),
    })
}

/// `host:port` resolved to its first address, within `timeout`.
async fn resolve(flag: &str, host_port: &str, timeout: Duration) -> anyhow::Result<SocketAddr> {
    let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host(host_port))
        .await
        .map_err(|_| anyhow::anyhow!("{flag} {host_port}: name lookup timed out"))?
        .with_context(|| format!("{flag} {host_port}: want HOST:PORT"))?;
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{flag} {host_port}: no address found"))
}

/// Checks that a bench service answers at `addr`, with a message saying what to check.
async fn check_service(what: &str, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    measure::probe(addr, timeout).await.with_context(|| {
        format!(
            "no bench service answered at {what} {addr} (want the public port of an agent's \
             --bench-service NAME, or for --direct a `culvert bench --serve`)"
        )
    })
}

/// `culvert bench --serve ADDR`: the bench service alone, until Ctrl-C or SIGTERM.
async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let svc = BenchService::start(addr, None)
        .await
        .with_context(|| format!("starting the bench service on {addr}"))?;
    println!(
        "bench service on tcp {} and udp {}; use it as `culvert bench --direct {}`. Ctrl-C to stop.",
        svc.tcp, svc.udp, svc.tcp
    );
    crate::run::shutdown_signal().await;
    Ok(())
}

/// Runs `culvert bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.serve {
        return serve(addr).await;
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let settings = Settings {
        duration: Duration::from_secs_f64(args.duration),
        streams: usize::from(args.streams),
        clients: usize::from(args.clients),
        timeout,
    };
    let mut direct = match &args.direct {
        Some(d) => {
            let a = resolve("--direct", d, timeout).await?;
            // `culvert bench --serve` serves UDP on the same port.
            Some((a, Some(a)))
        }
        None => None,
    };
    let (_loopback, mode, tunnel) = if args.loopback {
        let lb = loopback(timeout).await?;
        if direct.is_none() && !args.no_direct {
            direct = Some((lb.service.tcp, Some(lb.service.udp)));
        }
        let tunnel = Side {
            name: "tunnel",
            tcp: lb.tcp,
            udp: Some(lb.udp),
        };
        (Some(lb), "loopback", tunnel)
    } else {
        let target = args
            .target
            .as_deref()
            .context("one of --loopback, --target or --serve is required")?;
        let tcp = resolve("--target", target, timeout).await?;
        let udp = match &args.udp_target {
            Some(u) => Some(resolve("--udp-target", u, timeout).await?),
            None => None,
        };
        (
            None,
            "target",
            Side {
                name: "tunnel",
                tcp,
                udp,
            },
        )
    };
    check_service(
        if args.loopback {
            "the loopback tunnel"
        } else {
            "--target"
        },
        tunnel.tcp,
        timeout,
    )
    .await?;
    let tunnel_udp = tunnel.udp.is_some();
    let mut sides = vec![tunnel];
    if let Some((tcp, udp)) = direct {
        check_service("--direct", tcp, timeout).await?;
        sides.push(Side {
            name: "direct",
            tcp,
            // UDP only where the tunnel side has it too.
            udp: udp.filter(|_| tunnel_udp),
        });
    }
    let udp_skipped = sides[0].udp.is_none().then(|| {
        "no UDP address of the tunnel: pass --udp-target HOST:PORT, the public port of NAME-udp"
            .to_owned()
    });

    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| !matches!(w, Workload::Udp) || udp_skipped.is_none())
        .collect();
    let show = !args.json && std::io::stdout().is_terminal();
    let progress = Progress::new(show, (workloads.len() * sides.len()) as u64);
    tracing::info!(tunnel = %sides[0].tcp, direct = ?sides.get(1).map(|s| s.tcp), ?settings, "bench starting");
    let mut results = vec![Results::default(); sides.len()];
    for w in &workloads {
        for (side, r) in sides.iter().zip(results.iter_mut()) {
            progress.start(format!("{} ({})", w.label(&settings), side.name));
            w.run(side, &settings, r).await;
            progress.done();
        }
    }
    progress.finish();

    let mut results = results.into_iter();
    let tunnel = results.next().unwrap_or_default();
    let direct = results.next();
    let report = Report {
        mode,
        endpoints: Endpoints {
            tunnel_tcp: sides[0].tcp.to_string(),
            tunnel_udp: sides[0].udp.map(|u| u.to_string()),
            direct_tcp: sides.get(1).map(|s| s.tcp.to_string()),
            direct_udp: sides.get(1).and_then(|s| s.udp).map(|u| u.to_string()),
        },
        duration_secs: args.duration,
        streams: settings.streams,
        clients: settings.clients,
        timeout_secs: args.timeout,
        udp_skipped,
        rows: report::rows(&tunnel, direct.as_ref()),
        tunnel,
        direct,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        println!(
            "culvert bench ({mode}): tunnel {}{}, {} s per measurement",
            report.endpoints.tunnel_tcp,
            report
                .endpoints
                .direct_tcp
                .as_deref()
                .map(|d| format!(" vs direct {d}"))
                .unwrap_or_default(),
            args.duration
        );
        print!("{}", report.table());
    }
    let mut empty: Vec<String> = Vec::new();
    for (side, r) in [
        ("tunnel", Some(&report.tunnel)),
        ("direct", report.direct.as_ref()),
    ] {
        empty.extend(
            r.map(Results::empty)
                .unwrap_or_default()
                .into_iter()
                .map(|w| format!("{w} ({side})")),
        );
    }
    if !empty.is_empty() {
        bail!("no result for: {}", empty.join(", "));
    }
    Ok(())
}
