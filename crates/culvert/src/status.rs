//! `culvert status`: reads `/api/sessions` from an admin listener and prints a table.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::StatusArgs;

/// A plain HTTP/1.0 GET: the admin listener is local and answers small bodies.
async fn get(admin: &str, path: &str) -> anyhow::Result<String> {
    let hostport = admin
        .strip_prefix("http://")
        .unwrap_or(admin)
        .trim_end_matches('/');
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    .context("admin listener did not answer in 5 s")?
    .with_context(|| format!("connecting to {hostport}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        s.take(16 << 20).read_to_end(&mut buf),
    )
    .await
    .context("admin listener timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{}", head.lines().next().unwrap_or("bad response"));
    }
    Ok(body.to_owned())
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
    let body = get(&args.admin, "/api/sessions").await?;
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
            println!("{:<24} public port", "service");
            for s in v["services"].as_array().into_iter().flatten() {
                println!("{:<24} {}", text(&s["name"]), s["public_port"]);
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
}
