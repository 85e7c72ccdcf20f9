//! UDP through a real tunnel on loopback, with a real DNS server: dnsmasq, started by the
//! test with a config file of its own, answers `dig` through the tunnel, then 50 `dig`
//! processes and 50 hand-built DNS clients at once.
//!
//! `dnsmasq` and `dig` come from Debian's `dnsmasq-base` and `dnsutils` packages, which
//! `scripts/test.sh` installs. When either is missing the DNS test fails; it never skips.
//!
//! The harness (server and agent in process on plain `ws://` 127.0.0.1, recording UDP
//! backends) is in `support/udp.rs`. `RUST_LOG=culvert_server=debug,culvert_agent=debug`
//! shows the tunnel's logs. Every wait has a timeout and every loop a bound; nothing
//! asserts on timing.

mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::udp::*;
use support::TempDir;

// ---------------------------------------------------------------------------------------
// A real DNS server
// ---------------------------------------------------------------------------------------

/// A program the tests run for real: found on PATH or in the sbin directories, or the test
/// fails saying which Debian package provides it.
fn program(name: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (looked on PATH, /usr/sbin and /sbin): this test \
                 needs Debian's {package} package; scripts/test.sh installs it \
                 (apt-get install {package})"
            )
        })
}

/// Whether this process runs as root (from /proc; false when unknown).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A dnsmasq child process; killed (by its PID) and reaped on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Dnsmasq {
    fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts dnsmasq on a free loopback port with its own config: no upstream, no hosts file,
/// `culvert.test` (and its subdomains) answering 10.1.2.3, plus `records`. These are DNS
/// answers only: nothing is ever sent to those addresses.
async fn start_dnsmasq(records: &[(String, Ipv4Addr)]) -> Dnsmasq {
    let bin = program("dnsmasq", "dnsmasq-base");
    let mut last_log = String::new();
    // A port found free may be taken before dnsmasq binds it (UDP or TCP): try a few.
    for _ in 0..5 {
        let port = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.local_addr())
            .expect("find a free UDP port")
            .port();
        let dir = TempDir::new("dnsmasq");
        let mut conf = format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             no-poll\npid-file=\naddress=/culvert.test/10.1.2.3\n"
        );
        for (name, ip) in records {
            conf.push_str(&format!("address=/{name}/{ip}\n"));
        }
        if running_as_root() {
            // Keep root rather than drop to a user that may not exist on this machine.
            conf.push_str("user=root\n");
        }
        let conf_path = dir.path().join("dnsmasq.conf");
        std::fs::write(&conf_path, conf).expect("write dnsmasq.conf");
        let log = std::fs::File::create(dir.path().join("dnsmasq.log")).expect("create log");
        let child = Command::new(&bin)
            .arg("--no-daemon")
            .arg(format!("--conf-file={}", conf_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut dns = Dnsmasq { child, port, dir };
        // Ready when it answers a query directly.
        let probe = client_socket().await;
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 512];
        let mut id = 1u16;
        let ready = loop {
            if let Ok(Some(status)) = dns.child.try_wait() {
                last_log = format!("dnsmasq exited ({status}):\n{}", dns.log());
                break false;
            }
            if Instant::now() > deadline {
                panic!("dnsmasq did not answer within {WAIT:?}:\n{}", dns.log());
            }
            id += 1;
            let _ = probe
                .send_to(&dns_query(id, "culvert.test"), dns.addr())
                .await;
            match tokio::time::timeout(Duration::from_millis(200), probe.recv(&mut buf)).await {
                Ok(Ok(n)) if dns_a_records(&buf[..n], id).is_ok() => break true,
                _ => continue,
            }
        };
        if ready {
            return dns;
        }
    }
    panic!("dnsmasq would not start on any of 5 ports; last attempt: {last_log}");
}

/// A DNS query (recursion desired) for the A records of `name`, built by hand.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&1u16.to_be_bytes()); // QTYPE A
    q.extend_from_slice(&1u16.to_be_bytes()); // QCLASS IN
    q
}

/// Offset just past the (possibly compressed) name at `i`.
fn skip_name(m: &[u8], mut i: usize) -> Result<usize, String> {
    for _ in 0..128 {
        let len = *m.get(i).ok_or("truncated name")? as usize;
        if len & 0xc0 == 0xc0 {
            return Ok(i + 2);
        }
        i += 1 + len;
        if len == 0 {
            return Ok(i);
        }
    }
    Err("name with over 128 labels".into())
}

/// The A records of a successful response to query `id` (every read bounds-checked).
fn dns_a_records(m: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, String> {
    let at = |i: usize, n: usize| m.get(i..i + n).ok_or(format!("truncated at byte {i}"));
    let u16_at = |i: usize| at(i, 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    if u16_at(0)? != id {
        return Err(format!("answer to query {}, not {id}", u16_at(0)?));
    }
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err("not a response".into());
    }
    if flags & 0x000f != 0 {
        return Err(format!("rcode {}", flags & 0x000f));
    }
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(m, i)?;
        let (ty, len) = (u16_at(i)?, u16_at(i + 8)? as usize);
        i += 10;
        let data = at(i, len)?;
        if ty == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += len;
    }
    Ok(out)
}

/// Starts `dig` asking `@127.0.0.1 -p PORT` for the A records of `name` (`+short`: one
/// address a line; 2 s per try, 3 tries).
fn spawn_dig(dig: &Path, port: u16, name: &str) -> Child {
    Command::new(dig)
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            name,
            "A",
            "+short",
            "+time=2",
            "+tries=3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", dig.display()))
}

/// Waits for a child (bounded by `limit`, then killed by its PID); returns its stdout, or
/// an error with its status and stderr.
async fn finish(mut child: Child, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {limit:?}; killed"));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    // The outputs are small and the child has exited: these reads end at once.
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{status}: {out}{err}"))
    }
}

/// dnsmasq behind the tunnel answers `dig`, then 50 `dig` processes at once, then 50
/// hand-built clients sending 4 queries each, all at once, each from its own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsmasq_answers_dig_and_parallel_queries_through_the_tunnel() {
    const PARALLEL: usize = 50;
    let dig = program("dig", "dnsutils");
    let records: Vec<(String, Ipv4Addr)> = (0..PARALLEL)
        .map(|i| {
            (
                format!("h{i}.culvert.test"),
                Ipv4Addr::new(10, 9, i as u8, 1),
            )
        })
        .collect();
    let dns = start_dnsmasq(&records).await;
    let tunnel = start_server(|_| {}).await;
    let agent = tunnel
        .agent(tunnel.agent_config(&[("dns", dns.addr())]))
        .await;
    let public = public_addr(&agent, "dns");

    // One query with dig.
    let out = finish(spawn_dig(&dig, public.port(), "culvert.test"), WAIT)
        .await
        .unwrap_or_else(|e| panic!("dig through the tunnel failed: {e}"));
    assert_eq!(out.trim(), "10.1.2.3", "dig answered {out:?}");

    // 50 dig processes at once, each asking for its own name.
    let children: Vec<Child> = (0..PARALLEL)
        .map(|i| spawn_dig(&dig, public.port(), &format!("h{i}.culvert.test")))
        .collect();
    let mut failures = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let want = Ipv4Addr::new(10, 9, i as u8, 1).to_string();
        match finish(child, WAIT).await {
            Ok(out) if out.trim() == want => {}
            Ok(out) => failures.push(format!("dig h{i}: {out:?}, want {want}")),
            Err(e) => failures.push(format!("dig h{i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "parallel dig failures: {failures:#?}\n{}",
        show(&tunnel.counters("dns"))
    );

    // 50 clients at once, each from its own port, 4 queries each (names rotate so that
    // every answer differs from its neighbours'; ids are unique per client).
    let tasks: Vec<_> = (0..PARALLEL)
        .map(|c| {
            tokio::spawn(async move {
                let sock = client_socket().await;
                let mut retries = 0u32;
                let mut buf = vec![0u8; 4096];
                for k in 0..4usize {
                    let n = (c + k * 7) % PARALLEL;
                    let id = (c * 4 + k) as u16 + 1000;
                    let query = dns_query(id, &format!("h{n}.culvert.test"));
                    let mut answer = None;
                    for _try in 0..3 {
                        sock.send_to(&query, public)
                            .await
                            .map_err(|e| e.to_string())?;
                        let deadline = tokio::time::Instant::now() + REPLY;
                        // Bounded: one datagram per pass; late answers to retries are skipped.
                        for _ in 0..16 {
                            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
                            {
                                Err(_) => break,
                                Ok(Err(e)) => return Err(format!("recv: {e}")),
                                Ok(Ok((len, from))) => {
                                    if from != public {
                                        return Err(format!("datagram from {from}"));
                                    }
                                    let prev = id.wrapping_sub(1);
                                    match dns_a_records(&buf[..len], id) {
                                        Ok(a) => {
                                            answer = Some(a);
                                            break;
                                        }
                                        // A late duplicate answer to this client's previous query.
                                        Err(_)
                                            if k > 0
                                                && dns_a_records(&buf[..len], prev).is_ok() => {}
                                        Err(e) => return Err(format!("client {c} query {k}: {e}")),
                                    }
                                }
                            }
                        }
                        if answer.is_some() {
                            break;
                        }
                        retries += 1;
                    }
                    let want = vec![Ipv4Addr::new(10, 9, n as u8, 1)];
                    match answer {
                        Some(a) if a == want => {}
                        Some(a) => return Err(format!("client {c} h{n}: {a:?}, want {want:?}")),
                        None => return Err(format!("client {c} h{n}: no answer after 3 tries")),
                    }
                }
                Ok::<u32, String>(retries)
            })
        })
        .collect();
    let mut retries = 0;
    for t in tasks {
        retries += within(WAIT * 2, "parallel DNS clients", t)
            .await
            .expect("client task")
            .unwrap_or_else(|e| panic!("{e}\n{}", show(&tunnel.counters("dns"))));
    }
    let counters = tunnel.counters("dns");
    println!(
        "dns: 1 + {PARALLEL} dig processes and {PARALLEL}x4 raw queries answered; \
         raw-client retries: {retries}; {}",
        show(&counters)
    );
    // One flow per client port: the 50 raw clients at least (a dig process may reuse the
    // port of one that finished, and so its flow).
    assert!(
        counters.flows_created.load(Ordering::Relaxed) >= PARALLEL as u64,
        "{}",
        show(&counters)
    );
    drop(agent);
    drop(dns);
}
