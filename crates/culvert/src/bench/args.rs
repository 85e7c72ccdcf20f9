//! `culvert bench`'s command line: where to measure, for how long, and how it is shown.

use clap::Args;

use crate::cli::RuntimeArgs;

/// `culvert bench`: where to measure, and how long.
#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("mode").required(true).args(["loopback", "target", "serve"])),
    after_help = "Examples:\n  \
    culvert bench --loopback                       # server, agent and bench service in this process\n  \
    culvert agent ... --bench-service bench        # on the agent's host: logs the public ports of\n                                                 \
    # `bench` (TCP) and `bench-udp` (UDP)\n  \
    culvert bench --target tunnel.example.com:30001 --udp-target tunnel.example.com:30002\n  \
    culvert bench --serve 0.0.0.0:9000             # a bench service reachable directly, for --direct\n\n\
    Rows: upload and download throughput on 1 and on --streams streams, round-trip latency\n\
    of 64-byte messages on one connection (p50, p99, p99.9), new connections per second\n\
    (connect, 1-byte echo, close) from --clients workers, and UDP echo datagrams per second\n\
    with loss (only when a UDP target is known: always with --loopback, with --udp-target\n\
    otherwise). Ratio = tunnel / direct."
)]
pub struct BenchArgs {
    /// Run a server, an agent and the bench service in this process, on loopback; the
    /// baseline is the bench service itself.
    #[arg(long)]
    pub loopback: bool,
    /// Public TCP port (HOST:PORT) of a live tunnel's service that an agent runs with
    /// `--bench-service NAME`.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// With --target: public UDP port of the service NAME-udp (no UDP row without it).
    #[arg(long, value_name = "HOST:PORT", requires = "target")]
    pub udp_target: Option<String>,
    /// Baseline measured the same way without the tunnel: a bench service reached
    /// directly, such as `culvert bench --serve` (TCP and UDP on HOST:PORT). With
    /// --loopback the default is the in-process bench service.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "serve")]
    pub direct: Option<String>,
    /// Skip the baseline (the direct column stays empty).
    #[arg(long, conflicts_with = "direct")]
    pub no_direct: bool,
    /// Serve the bench protocol (TCP and UDP on this address) until Ctrl-C, as a baseline
    /// for --direct.
    #[arg(long, value_name = "ADDR:PORT")]
    pub serve: Option<std::net::SocketAddr>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    pub duration: f64,
    /// Parallel streams of the multi-stream throughput rows.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub streams: u16,
    /// Concurrent workers of the connection-rate row.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub clients: u16,
    /// Seconds any single network wait (connect, read, write, final count) may take before
    /// it counts as a failure.
    #[arg(long, default_value_t = 10.0, value_parser = positive_secs)]
    pub timeout: f64,
    /// Print one JSON object with every figure instead of the table (no progress bar).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// A number of seconds above zero (fractions allowed), at most a day.
fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: want seconds above 0, at most 86400"))
    }
}
