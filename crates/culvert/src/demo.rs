//! `culvert demo`: a whole tunnel on loopback in one process — server, agent and an echo service.

use std::time::Duration;

use anyhow::{bail, Context};
use culvert_agent::{Agent, AgentConfig, ServiceSpec};
use culvert_server::{Server, ServerConfig, TokenStore};
use culvert_transport::ws::ServerUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::DemoArgs;

async fn echo_service() -> anyhow::Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let token = culvert_server::tokens::generate_token();
    let tokens = TokenStore::from_tokens(&[("demo", token.as_str())]);
    let config = ServerConfig::new(
        "127.0.0.1:0".parse()?,
        "40000-40999".parse().map_err(anyhow::Error::msg)?,
    );
    let mut config = config;
    config.public_bind = "127.0.0.1".parse()?;
    let server = Server::bind(config, tokens, None)
        .await
        .context("starting the demo server")?;
    let server = server.spawn()?;
    let echo = echo_service().await?;
    let url = ServerUrl::parse(&format!("ws://{}", server.addr))?;
    let mut agent = AgentConfig::new(
        url,
        token,
        vec![format!("echo=tcp://{echo}")
            .parse::<ServiceSpec>()
            .map_err(anyhow::Error::msg)?],
    );
    agent.pool = 2;
    let agent = Agent::spawn(agent)?;
    if !agent.wait_ready(Duration::from_secs(10)).await {
        bail!("the demo agent did not come up");
    }
    let port = agent
        .ports()
        .get("echo")
        .copied()
        .context("no public port for the demo service")?;
    if args.self_test {
        let msg = b"hello through culvert\n";
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
            .await
            .context("echo timed out")??;
        if back != msg {
            bail!("echo mismatch: sent {msg:?}, got {back:?}");
        }
        println!("demo: {} bytes echoed through the tunnel on 127.0.0.1:{port} (server {}, echo service {echo})", back.len(), server.addr);
        agent.shutdown();
        server.shutdown();
        return Ok(());
    }
    println!("Culvert demo running: server on ws://{}, an agent with 2 pooled connections, an echo service on {echo}.", server.addr);
    println!("Public port of service \"echo\": 127.0.0.1:{port}. Try:");
    println!("    printf 'hello\\n' | nc -N 127.0.0.1 {port}");
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    agent.shutdown();
    server.shutdown();
    Ok(())
}
