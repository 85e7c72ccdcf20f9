//! Sends an HTTP request to a service through a Culvert tunnel stream with hyper's
//! client: the stream from `Client::open` is the connection hyper speaks HTTP/1.1 over.
//!
//! ```text
//! cargo run -p culvert --example http_over_tunnel -- \
//!     --server wss://tunnel.example.net:7000 --fingerprint FP --token-file access.token \
//!     --service web --path /healthz
//! ```

mod common;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// An HTTP GET through a Culvert tunnel.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    server: common::ServerArgs,
    /// The HTTP service's name on the server (NAME or TENANT/NAME).
    #[arg(long, default_value = "web")]
    service: String,
    /// Path to request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Host header to send.
    #[arg(long, default_value = "localhost")]
    host: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = args.server.client().await?;

    let stream = client.open(&args.service).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(connection);

    let request = hyper::Request::get(&args.path)
        .header(hyper::header::HOST, &args.host)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    println!("{}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));

    drop(sender);
    driver.await?.context("HTTP connection")?;
    Ok(())
}
