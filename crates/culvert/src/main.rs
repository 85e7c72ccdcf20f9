//! The `culvert` binary: `server`, `agent`, `token`, `demo`, `bench` and the other subcommands.

mod access;
mod admin;
mod allocator;
mod bench;
mod check;
mod cli;
mod demo;
mod file_config;
mod logging;
mod node;
mod run;
mod status;
mod tokens_cli;

use clap::Parser;

/// Large buffers from one cache for all threads (see `allocator`), the rest from the C library.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: allocator::BigBlocks = allocator::BigBlocks::new();

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // `bench` prints its own results; the in-process server and agent of `--loopback`
    // should not bury them in info lines.
    let default_level = match cli.command {
        cli::Command::Bench(_) => "warn",
        _ => "info",
    };
    let runtime = cli.command.runtime();
    logging::init(runtime.log_format, default_level);
    allocator::tune();
    // One worker: a current-thread runtime, so tasks never wake each other across threads.
    let mut builder = match runtime
        .worker_threads
        .unwrap_or_else(default_worker_threads)
        .max(1)
    {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run::dispatch(cli));
    // Tasks still parked on sockets (closed connections' leftovers) must not hold up exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Worker threads when `--worker-threads` is not given: one per CPU, except on machines with
/// two CPUs or fewer, where the tunnel shares the CPUs with the programs it connects and a
/// second worker mostly adds cross-thread wake-ups. Measured on a 2-CPU machine (iperf3
/// through `ws://`, 12 interleaved pairs): one worker moved more in 11 pairs, at lower CPU
/// seconds per GB in nearly all.
fn default_worker_threads() -> usize {
    match std::thread::available_parallelism().map(usize::from) {
        Ok(n) if n > 2 => n,
        _ => 1,
    }
}
