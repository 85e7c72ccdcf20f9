//! Runs a Culvert agent inside a program: exposes services through a server, prints the
//! public ports and figures until Ctrl-C, then stops gracefully (streams in flight finish).
//!
//! ```text
//! cargo run -p culvert --example embed_agent -- \
//!     --server wss://tunnel.example.net:7000 --fingerprint FP --token-file agent.token \
//!     --expose web=tcp://127.0.0.1:8080
//! ```

mod common;

use std::time::Duration;

use clap::Parser;

/// An agent embedded in a program.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    server: common::ServerArgs,
    /// A service to expose: NAME=tcp://HOST:PORT[@PUBLIC_PORT][?private] (repeatable).
    #[arg(long, required = true)]
    expose: Vec<String>,
    /// Tunnel connections kept open.
    #[arg(long, default_value_t = 2)]
    pool: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut builder = culvert::Agent::builder(&args.server.server, args.server.token()?)
        .verify(args.server.verify()?)
        .pool(args.pool);
    for spec in &args.expose {
        builder = builder.service(spec)?;
    }
    let agent = builder.spawn()?;
    if !agent.wait_ready(Duration::from_secs(30)).await {
        eprintln!(
            "not every connection is up yet: {}",
            agent.status().last_error.unwrap_or_default()
        );
    }
    let mut ready = agent.watch();
    loop {
        let status = agent.status();
        println!("link: {} ({} up)", status.state, status.connections_up);
        for (name, s) in &status.services {
            println!(
                "  {name}: public port {:?}, {} open, {} bytes in, {} bytes out",
                s.public_port, s.open, s.bytes_down, s.bytes_up
            );
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            r = ready.changed() => { r?; }
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
    println!("stopping: streams in flight get 30 s");
    agent.shutdown(Duration::from_secs(30)).await;
    Ok(())
}
