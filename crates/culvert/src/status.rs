//! `culvert status`: reads `/api/sessions` from an admin listener and prints a table.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::cli::StatusArgs;

/// How long the whole exchange with the admin listener may take: connect, request, answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read; the admin listener's JSON is far smaller.
const MAX_BODY: usize = 16 << 20;

/// `HOST:PORT` of an admin listener given as `HOST:PORT` or `http://HOST:PORT[/]`.
fn admin_hostport(admin: &str) -> anyhow::Result<&str> {
    let hostport = admin
        .strip_prefix("http://")
        .unwrap_or(admin)
        .trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') || hostport.contains("://") {
        bail!("--admin {admin:?}: expected HOST:PORT or http://HOST:PORT (the admin listener speaks plain HTTP)");
    }
    Ok(hostport)
}

/// GETs `path` from the admin listener with hyper's HTTP/1 client; the whole exchange is
/// bounded by [`TIMEOUT`] and the body by [`MAX_BODY`].
async fn get(admin: &str, path: &str) -> anyhow::Result<String> {
    let hostport = admin_hostport(admin)?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(hostport)
            .await
            .with_context(|| format!("connecting to the admin listener {hostport}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP handshake with the admin listener")?;
        let request = async {
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, hostport)
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow!("reading the answer: {e}"))?
                .to_bytes();
            if !status.is_success() {
                bail!("{hostport}{path} answered {status}");
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        tokio::pin!(conn);
        tokio::select! {
            r = request => r,
            r = &mut conn => match r {
                Ok(()) => bail!("the admin listener {hostport} closed the connection without an answer"),
                Err(e) => bail!("talking to the admin listener {hostport}: {e}"),
            },
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("the admin listener {hostport} did not answer within {TIMEOUT:?}"))?
}

/// A string field of the status JSON, made printable (`?` when absent).
fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| "?".to_owned(), printable)
}

/// `s` with control characters escaped (`\n`, `\u{1b}`): names, reasons and targets come
/// from peers, and must neither forge lines nor drive the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let Some(admin) = args.admin else {
        bail!("--admin ADDR is required: the admin listener of the server, agent, node or access process, as given to its own --admin (or `admin` in its TOML); nothing listens unless one was set, so there is no default");
    };
    let body = get(&admin, "/api/sessions").await?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("parsing /api/sessions")?;
    match v["role"].as_str() {
        Some("server") => {
            println!(
                "{:<38} {:<14} {:<14} {:<22} {:>5} {:>9}  services",
                "session", "tenant", "token", "peer", "conns", "uptime"
            );
            for s in v["sessions"].as_array().into_iter().flatten() {
                let services: Vec<String> = s["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        format!(
                            "{}={}/{}",
                            text(&x["name"]),
                            text(&x["protocol"]),
                            x["public_port"]
                        )
                    })
                    .collect();
                println!(
                    "{:<38} {:<14} {:<14} {:<22} {:>5} {:>8}s  {}",
                    text(&s["id"]),
                    text(&s["tenant"]),
                    text(&s["token"]),
                    text(&s["peer"]),
                    match s["suspect_connections"].as_u64() {
                        Some(n) if n > 0 => format!("{} ({n} suspect)", s["connections"]),
                        _ => s["connections"].to_string(),
                    },
                    s["uptime_secs"].to_string(),
                    services.join(" ")
                );
            }
        }
        Some("agent") => {
            println!(
                "connections up: {}  suspect: {}  ready: {}",
                v["connections_up"], v["connections_suspect"], v["ready"]
            );
            println!(
                "{:<24} {:<5} {:>11} {:<6} {:>5} {:>11} {:>12} {:>12}",
                "service",
                "kind",
                "public port",
                "target",
                "open",
                "connections",
                "bytes up",
                "bytes down"
            );
            for s in v["services"].as_array().into_iter().flatten() {
                let port = match s["public_port"].as_u64() {
                    Some(p) => p.to_string(),
                    None if s["private"].as_bool() == Some(true) && s["kind"] != "http" => {
                        "private".into()
                    }
                    None => "-".into(),
                };
                let target = match s["target_reachable"].as_bool() {
                    Some(true) => "up",
                    Some(false) => "DOWN",
                    None => "-",
                };
                println!(
                    "{:<24} {:<5} {:>11} {:<6} {:>5} {:>11} {:>12} {:>12}",
                    text(&s["name"]),
                    text(&s["kind"]),
                    port,
                    target,
                    s["open_connections"],
                    s["connections"],
                    s["bytes_up"],
                    s["bytes_down"],
                );
                let h = &s["http_requests"];
                if h.is_object() {
                    println!(
                        "{:<24} requests: {} answered by the backend, {} bad gateway, {} gateway timeout, {} bad request; {} sent again; {} backend connections",
                        "", h["answered"], h["bad_gateway"], h["gateway_timeout"], h["bad_request"], h["retried"], h["backend_connections"]
                    );
                }
            }
            let conns = v["connections"].as_array().into_iter().flatten();
            println!("{:>4} {:<34} {:<34} state", "slot", "server", "home");
            for c in conns {
                let missing: Vec<String> = c["unregistered"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                println!(
                    "{:>4} {:<34} {:<34} {}{}",
                    c["slot"],
                    text(&c["server"]),
                    text(&c["home"]),
                    text(&c["state"]),
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!(" (not registered yet: {})", missing.join(", "))
                    }
                );
            }
        }
        Some("node") => {
            println!(
                "{:<16} {:<8} {:<34} {:>8} {:>5} {:>12} {:>12}  listen -> target",
                "tunnel", "dir", "state", "rtt_ms", "open", "to_target", "from_target"
            );
            for t in v["tunnels"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<8} {:<34} {:>8} {:>5} {:>12} {:>12}  {} -> {}",
                    text(&t["name"]),
                    text(&t["direction"]),
                    text(&t["state"]),
                    t["rtt_ms"]
                        .as_f64()
                        .map_or("-".into(), |r| format!("{r:.2}")),
                    t["open_connections"].to_string(),
                    t["bytes_to_target"].to_string(),
                    t["bytes_from_target"].to_string(),
                    text(&t["listen"]),
                    text(&t["target"]),
                );
                if let Some(e) = t["last_error"].as_str() {
                    println!("{:<16} last error: {}", "", printable(e));
                }
            }
            let peers = v["peers"].as_array().map_or(0, |p| p.len());
            println!("peers connected to this node: {peers}");
        }
        Some("access") => {
            println!("link: {}", text(&v["link"]));
            println!(
                "{:<16} {:<22} {:>10} {:>5} {:>12} {:>12}",
                "service", "local address", "ttl left", "open", "bytes up", "bytes down"
            );
            for s in v["sessions"].as_array().into_iter().flatten() {
                let ttl = if s["expired"].as_bool() == Some(true) {
                    "expired".to_owned()
                } else {
                    s["remaining_secs"]
                        .as_u64()
                        .map_or("none".into(), |r| format!("{r}s"))
                };
                println!(
                    "{:<16} {:<22} {:>10} {:>5} {:>12} {:>12}",
                    text(&s["name"]),
                    text(&s["local_addr"]),
                    ttl,
                    s["open_connections"].to_string(),
                    s["bytes_up"].to_string(),
                    s["bytes_down"].to_string(),
                );
            }
        }
        _ => bail!("unexpected /api/sessions answer"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_text_is_printed_escaped() {
        assert_eq!(
            super::printable("pg\u{1b}[2J\nforged é"),
            "pg\\u{1b}[2J\\nforged é"
        );
        assert_eq!(super::text(&serde_json::json!(null)), "?");
    }

    #[test]
    fn admin_addresses_with_and_without_scheme() {
        assert_eq!(
            super::admin_hostport("http://127.0.0.1:9100/").unwrap(),
            "127.0.0.1:9100"
        );
        assert_eq!(super::admin_hostport("[::1]:9100").unwrap(), "[::1]:9100");
        assert!(super::admin_hostport("https://127.0.0.1:9100").is_err());
        assert!(super::admin_hostport("http://127.0.0.1:9100/api").is_err());
    }
}
