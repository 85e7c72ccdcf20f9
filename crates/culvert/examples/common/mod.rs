//! What every example takes to reach a Culvert server: its URL, a token and how its
//! certificate is checked (the same options as `culvert agent` and `culvert access`).

use std::path::PathBuf;

use anyhow::Context;
use culvert::Verify;

/// The server and how to trust it.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Server URL: wss://HOST:PORT (ws:// for a loopback test server).
    #[arg(long)]
    pub server: String,
    /// File holding the token (or set CULVERT_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Trust only certificates issued by the CA(s) in this PEM file.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (the server logs it).
    #[arg(long)]
    pub fingerprint: Option<String>,
}

impl ServerArgs {
    /// The token, from the file or CULVERT_TOKEN.
    pub fn token(&self) -> anyhow::Result<String> {
        let token = match &self.token_file {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading the token file {}", p.display()))?,
            None => {
                std::env::var("CULVERT_TOKEN").context("give --token-file or set CULVERT_TOKEN")?
            }
        };
        Ok(token.trim().to_owned())
    }

    /// How the server's certificate is checked.
    pub fn verify(&self) -> anyhow::Result<Verify> {
        Ok(Verify::from_options(
            self.ca.clone(),
            self.fingerprint.as_deref(),
            false,
        )?)
    }

    /// A client of the server, connected (waits until a tunnel connection is up).
    #[allow(dead_code)] // embed_agent runs an agent, not a client
    pub async fn client(&self) -> anyhow::Result<culvert::Client> {
        let client = culvert::Client::builder(&self.server, self.token()?)
            .verify(self.verify()?)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.server))?;
        Ok(client)
    }
}
