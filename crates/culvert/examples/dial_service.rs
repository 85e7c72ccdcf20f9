//! Dials a private PostgreSQL through a Culvert server and runs a query over the tunnel
//! stream with tokio-postgres: no local port, no sidecar. The server must let the token
//! reach the service (`culvert token new --access pg`); an agent exposes it, for example
//! with `culvert agent --expose pg=tcp://127.0.0.1:5432 --private`.
//!
//! ```text
//! cargo run -p culvert --example dial_service -- \
//!     --server wss://tunnel.example.net:7000 --fingerprint FP --token-file access.token \
//!     --service pg --user postgres
//! ```
//!
//! Prints the server's version and the answer to `select $1::int4 + 1` with 41.

mod common;

use anyhow::Context;
use clap::Parser;
use tokio_postgres::NoTls;

/// Runs a query against a PostgreSQL reached through a Culvert tunnel.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    server: common::ServerArgs,
    /// The PostgreSQL service's name on the server (NAME or TENANT/NAME).
    #[arg(long, default_value = "pg")]
    service: String,
    /// Database user.
    #[arg(long, default_value = "postgres")]
    user: String,
    /// Database name.
    #[arg(long, default_value = "postgres")]
    dbname: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = args.server.client().await?;

    // A byte stream to the service, handed to tokio-postgres instead of a TCP socket.
    let stream = client.open(&args.service).await?;
    let (db, connection) = tokio_postgres::Config::new()
        .user(&args.user)
        .dbname(&args.dbname)
        .connect_raw(stream, NoTls)
        .await
        .with_context(|| format!("PostgreSQL handshake through service {:?}", args.service))?;
    let driver = tokio::spawn(connection);

    let version: String = db.query_one("show server_version", &[]).await?.get(0);
    let answer: i32 = db.query_one("select $1::int4 + 1", &[&41i32]).await?.get(0);
    println!("server_version: {version}");
    println!("answer: {answer}");

    drop(db);
    driver.await?.context("PostgreSQL connection")?;
    client.close(std::time::Duration::from_secs(5)).await;
    Ok(())
}
