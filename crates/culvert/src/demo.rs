//! `culvert demo`: a whole tunnel on loopback in one process — server, agent and an echo service.

use std::time::Duration;

use anyhow::{bail, Context};
use culvert_agent::{Agent, AgentConfig, ServiceSpec};
use culvert_server::{Server, ServerConfig, TokenStore};
use culvert_transport::ws::ServerUrl;
use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    println!("Public port of service \"echo\": 127.0.0.1:{port}.");
    println!(
        "Type a line and press Enter: it goes through the tunnel to the echo service and back."
    );
    println!("From another terminal:");
    println!("    {}", try_command(port, &on_path));
    println!("Press Ctrl-C to stop.");
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        r = echo_lines(port) => r?,
    }
    agent.shutdown();
    server.shutdown();
    Ok(())
}

/// Sends each line typed on stdin through the tunnel (one connection to the public
/// `port`) and prints what comes back. At the end of stdin (none attached, say) it waits
/// for Ctrl-C instead.
async fn echo_lines(port: u16) -> anyhow::Result<()> {
    if !stdin_is_ours() {
        // `culvert demo &` from a shell: reading the terminal would stop the process.
        return std::future::pending().await;
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while let Some(line) = stdin.next_line().await? {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(BufReader::new(
                tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
                    .await
                    .context("connecting to the public port timed out")??,
            )),
        };
        c.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut back = String::new();
        let n = tokio::time::timeout(TIMEOUT, c.read_line(&mut back))
            .await
            .context("no echo within 10 s")??;
        if n == 0 {
            bail!("the tunnel closed the connection");
        }
        println!("echoed through the tunnel: {}", back.trim_end());
    }
    std::future::pending().await
}

/// Whether this process may read stdin: a pipe or file, or a terminal whose foreground
/// process group is ours (a background job reading it would be stopped by SIGTTIN).
fn stdin_is_ours() -> bool {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return true;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: both calls only read the process's and the terminal's process group ids.
        unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

/// Wait for any single step of the typed-line client.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether an executable named `name` is on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A one-line echo through `port` with a client this machine has: the netcat variants
/// disagree on how to send EOF (`-N` exists only in OpenBSD netcat), and some systems have
/// none, so socat or ncat first, then an nc that documents `-N`, else bash's `/dev/tcp`.
fn try_command(port: u16, has: &dyn Fn(&str) -> bool) -> String {
    if has("socat") {
        format!("printf 'hello\\n' | socat - TCP:127.0.0.1:{port}")
    } else if has("ncat") {
        format!("printf 'hello\\n' | ncat 127.0.0.1 {port}")
    } else if has("nc") && nc_has_eof_flag() {
        format!("printf 'hello\\n' | nc -N 127.0.0.1 {port}")
    } else {
        format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; printf \"hello\\n\" >&3; head -n 1 <&3'"
        )
    }
}

/// Whether `nc -h` lists `-N` (OpenBSD netcat: shut the socket down at the end of input).
fn nc_has_eof_flag() -> bool {
    std::process::Command::new("nc")
        .arg("-h")
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .any(|l| l.trim_start().starts_with("-N"))
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_suggested_client_is_one_the_machine_has() {
        let only = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        assert!(super::try_command(4, &only(&["socat", "nc"])).contains("socat - TCP:127.0.0.1:4"));
        assert!(super::try_command(4, &only(&["ncat"])).contains("ncat 127.0.0.1 4"));
        let none = super::try_command(4, &only(&[]));
        assert!(
            none.starts_with("bash -c") && none.contains("/dev/tcp/127.0.0.1/4"),
            "{none}"
        );
    }
}
