//! UDP replies to clients behind a link slower than the tunnel: the server's public socket
//! fills and the kernel refuses replies. UDP drops them (a router with a full queue
//! would), but the operator must see it: every reply the server got is either sent to its
//! client or counted in `culvert_udp_dropped_total{reason="socket_full"}`, and every reply
//! the server sent reaches the client (the shaped link queues, it does not drop).
//!
//! The client runs in a network namespace whose link from the host is shaped to 10 Mbit/s
//! (`tc tbf`); the server's public UDP port is on the host's end of that link; the agent
//! and a counting echo service are on the host's loopback.

mod support;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::netns::Netns;
use support::*;

/// Datagrams the client sends, and their size: about 18 MB in about 1.5 s, over the
/// 8 MiB (at most) of socket buffer the server's public socket has, at ten times the
/// shaped link's rate (so a client several times slower than here still fills it).
const DATAGRAMS: u64 = 15_000;
const SIZE: usize = 1_200;

/// The client, inside the namespace: sends `n` datagrams of `size` bytes to HOST:PORT in
/// paced batches (50 every 5 ms), reads the replies until none came for 3 s (at most 120 s
/// in all), and prints how many it sent and got, and how many its kernel dropped for a
/// full receive buffer.
const CLIENT_PY: &str = r#"
import socket, sys, threading, time
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.connect((host, port))
got = 0
def read():
    global got
    s.settimeout(3)
    start = time.time()
    while time.time() - start < 120:
        try:
            s.recv(65536)
            got += 1
        except socket.timeout:
            if done.is_set(): return
        except OSError:
            pass
done = threading.Event()
t = threading.Thread(target=read); t.start()
sent = 0
payload = b"r" * size
for i in range(n):
    try:
        s.send(payload); sent += 1
    except OSError:
        pass
    if i % 50 == 49: time.sleep(0.005)
done.set(); t.join()
# This namespace's receive-buffer drops (only this client's socket is here).
udp = [l.split() for l in open("/proc/net/snmp") if l.startswith("Udp:")]
drops = int(udp[1][udp[0].index("RcvbufErrors")])
print("sent", sent, "got", got, "dropped", drops, flush=True)
"#;

/// Drops counted by the kernel for full UDP receive buffers (host-wide, this namespace).
fn rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// The value in a scrape (server's or agent's) of `family`'s sample whose label (a
/// `reason` or a `direction`) is `what`; the test's one service makes it unique.
fn udp_sample(body: &str, family: &str, what: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(family) && l.contains(&format!("=\"{what}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {family} sample for {what} in:\n{body}")) as u64
}

#[test]
fn replies_a_slow_client_link_cannot_take_are_counted_and_the_rest_arrive() {
    let Some(ns) = Netns::create_or_skip("u", 214) else {
        return;
    };
    ns.shape_towards("10mbit").unwrap();

    // The service: echoes every datagram, counting what it got and what it sent back.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    let (requests, echoed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (requests, echoed) = (requests.clone(), echoed.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                requests.fetch_add(1, Ordering::Relaxed);
                if echo.send_to(&buf[..n], from).is_ok() {
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let dir = TempDir::new("udp-netns");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "agent")).unwrap();
    let (port, admin, agent_admin) = (free_port(), free_port(), free_port());
    let range = port_range();
    // Public ports on the host's end of the shaped link (not loopback, as in the others).
    let mut server = Proc::spawn(
        "culvert server",
        server_args_on(&mut culvert(), &tokens, port, &range, &ns.host_ip)
            .args(["--udp-port-range", &range, "--insecure-plain"])
            .args(["--admin", &format!("127.0.0.1:{admin}")]),
    );
    server
        .try_wait_line("tunnel endpoint ready", 0, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut args = agent_args(
        port,
        &token_file,
        &format!("echo=udp://127.0.0.1:{echo_port}"),
    );
    args.extend(["--admin".into(), format!("127.0.0.1:{agent_admin}")]);
    let (_agent, public) = start_agent(&args, "echo");

    let kernel_drops_before = rcvbuf_errors();
    let client = run(
        ns.command("python3").args([
            "-c",
            CLIENT_PY,
            &ns.host_ip,
            &public.to_string(),
            &DATAGRAMS.to_string(),
            &SIZE.to_string(),
        ]),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&client.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| {
            panic!(
                "client: {stdout}{}",
                String::from_utf8_lossy(&client.stderr)
            )
        });
    let figures: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (sent, got, client_drops) = (figures[0], figures[1], figures[2]);
    let kernel_drops = rcvbuf_errors() - kernel_drops_before;

    let body = admin_get(admin, "/metrics").expect("metrics").1;
    let received = udp_sample(&body, "culvert_udp_datagrams_total", "in");
    let delivered = udp_sample(&body, "culvert_udp_datagrams_total", "out");
    let full = udp_sample(&body, "culvert_udp_dropped_total", "socket_full");
    let agent_body = admin_get(agent_admin, "/metrics").expect("agent metrics").1;
    // Replies the agent's or the server's datagram queue dropped (the tunnel fell behind).
    let mux_drops = udp_sample(&body, "culvert_datagrams_dropped_total", "recv")
        + udp_sample(&agent_body, "culvert_datagrams_dropped_total", "send");
    // Requests the agent dropped on their way to the service: the flow's first ones past
    // what may wait while its socket is set up (128 KiB), the service's socket full,
    // either datagram queue.
    let not_open = udp_sample(
        &agent_body,
        "culvert_udp_delivery_dropped_total",
        "not_open",
    );
    let agent_full = udp_sample(
        &agent_body,
        "culvert_udp_delivery_dropped_total",
        "socket_full",
    );
    let mux_drops_in = udp_sample(&body, "culvert_datagrams_dropped_total", "send")
        + udp_sample(&agent_body, "culvert_datagrams_dropped_total", "recv");
    let (requests, echoed) = (
        requests.load(Ordering::Relaxed),
        echoed.load(Ordering::Relaxed),
    );
    eprintln!(
        "client sent {sent}, server received {received}; agent dropped {not_open} (flow not open), {agent_full} (socket full), {mux_drops_in} (datagram queues); service got {requests}, echoed {echoed}; server delivered {delivered} and dropped {full} (socket full), {mux_drops} (datagram queues); client got {got} (its kernel dropped {client_drops}); kernel receive-buffer drops meanwhile: {kernel_drops}"
    );

    assert_eq!(sent, DATAGRAMS, "the client sent everything");
    // Every request the server took is at the service or counted (kernel drops aside).
    let accounted_in = requests + not_open + agent_full + mux_drops_in;
    assert!(
        accounted_in <= received && received - accounted_in <= kernel_drops,
        "{} requests unaccounted for (received {received}, at the service {requests}, not open {not_open}, socket full {agent_full}, datagram queues {mux_drops_in}, kernel drops {kernel_drops})",
        received.saturating_sub(accounted_in)
    );
    assert!(
        full > 0,
        "a link slower than the offered rate fills the public socket"
    );
    // Everything the server handed to the kernel arrived: the shaped link only queues (and
    // the client's kernel counts what its receive buffer had no room for).
    assert!(
        got <= delivered && delivered - got <= client_drops,
        "replies sent are replies received: delivered {delivered}, got {got}, dropped by the client's kernel {client_drops}"
    );
    // Every reply the service sent is delivered or counted: by the server (socket full),
    // by either datagram queue, or by the kernel on loopback (the agent's flow socket's
    // receive buffer; counted host-wide, so other tests may add to that slack).
    let accounted = delivered + full + mux_drops;
    assert!(
        accounted <= echoed && echoed - accounted <= kernel_drops,
        "{} replies unaccounted for (echoed {echoed}, delivered {delivered}, socket full {full}, mux queue {mux_drops}, kernel drops {kernel_drops})",
        echoed.saturating_sub(accounted)
    );
}
