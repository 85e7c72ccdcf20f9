//! UDP through a real tunnel on loopback: 10,000 datagrams of mixed sizes from 10
//! clients; each client hears only its own replies (client id and sequence number inside
//! every datagram); loss is printed and bounded.
//!
//! The harness (server and agent in process on plain `ws://` 127.0.0.1, recording UDP
//! backends) is in `support/udp.rs`. `RUST_LOG=culvert_server=debug,culvert_agent=debug`
//! shows the tunnel's logs. Every wait has a timeout and every loop a bound; nothing
//! asserts on timing.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::udp::*;

// ---------------------------------------------------------------------------------------
// 10,000 datagrams of mixed sizes
// ---------------------------------------------------------------------------------------

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Length of datagram `seq` of `client`: 8 to 1,400 bytes, and one in 40 from 1,401 to
/// 8,192 bytes (8 bytes at least: it carries the client id and the sequence number).
fn mixed_len(client: u32, seq: u32) -> usize {
    let h = splitmix(u64::from(client) << 32 | u64::from(seq)) as usize;
    if seq % 40 == 17 {
        1401 + h % (8192 - 1400)
    } else {
        8 + h % (1400 - 8 + 1)
    }
}

/// Datagram `seq` of `client`: client id, sequence number, then bytes derived from both.
fn mixed_datagram(client: u32, seq: u32) -> Vec<u8> {
    let len = mixed_len(client, seq);
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&client.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    let mut x = splitmix(u64::from(seq) << 32 | u64::from(client) ^ 0xabcd);
    while d.len() < len {
        x = splitmix(x);
        let rest = (len - d.len()).min(8);
        d.extend_from_slice(&x.to_le_bytes()[..rest]);
    }
    d
}

#[derive(Debug, Default)]
struct Tally {
    unique: u64,
    duplicates: u64,
    foreign: u64,
    corrupt: u64,
    wrong_source: u64,
}

/// 10 clients send 1,000 datagrams each (8 B to 8 KiB, in bursts of 5 with 10 ms pauses,
/// at most 5,000 datagrams/s in all, about 4 MB/s) to an echo backend through the tunnel. Each client
/// receives only its own replies, intact and never twice; loss is printed and at most 1%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_datagrams_each_client_gets_only_its_own_replies() {
    const CLIENTS: u32 = 10;
    const PER_CLIENT: u32 = 1000;
    let backend = Backend::spawn(true).await;
    let tunnel = start_server(|_| {}).await;
    let agent = tunnel
        .agent(tunnel.agent_config(&[("echo", backend.addr)]))
        .await;
    let public = public_addr(&agent, "echo");

    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(async move {
                let sock = Arc::new(client_socket().await);
                let sent_all = Arc::new(AtomicBool::new(false));
                let receiver = tokio::spawn({
                    let sock = sock.clone();
                    let sent_all = sent_all.clone();
                    async move {
                        let mut tally = Tally::default();
                        let mut seen = vec![false; PER_CLIENT as usize];
                        let mut buf = vec![0u8; 65_536];
                        let deadline = Instant::now() + WAIT * 2;
                        // Bounded by the deadline; ends early when everything came back, or
                        // after QUIET without a datagram once the sender is done.
                        while tally.unique < u64::from(PER_CLIENT) && Instant::now() < deadline {
                            let Ok(r) = tokio::time::timeout(QUIET, sock.recv_from(&mut buf)).await
                            else {
                                if sent_all.load(Ordering::SeqCst) {
                                    break;
                                }
                                continue;
                            };
                            let (n, from) = r.expect("recv");
                            if from != public {
                                tally.wrong_source += 1;
                                continue;
                            }
                            if n < 8 {
                                tally.corrupt += 1;
                                continue;
                            }
                            let c = u32::from_be_bytes(buf[..4].try_into().unwrap());
                            let seq = u32::from_be_bytes(buf[4..8].try_into().unwrap());
                            if c != client {
                                tally.foreign += 1;
                                continue;
                            }
                            if seq >= PER_CLIENT || buf[..n] != mixed_datagram(client, seq)[..] {
                                tally.corrupt += 1;
                                continue;
                            }
                            if std::mem::replace(&mut seen[seq as usize], true) {
                                tally.duplicates += 1;
                            } else {
                                tally.unique += 1;
                            }
                        }
                        tally
                    }
                });
                for seq in 0..PER_CLIENT {
                    let d = mixed_datagram(client, seq);
                    sock.send_to(&d, public).await.expect("send");
                    if seq % 5 == 4 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                sent_all.store(true, Ordering::SeqCst);
                let tally = receiver.await.expect("receiver task");
                let drops = kernel_drops(sock.local_addr().expect("client address").port());
                (tally, drops)
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut client_drops = 0;
    for t in tasks {
        let (tally, drops) = within(WAIT * 3, "mixed-size clients", t)
            .await
            .expect("client task");
        client_drops += drops;
        total.unique += tally.unique;
        total.duplicates += tally.duplicates;
        total.foreign += tally.foreign;
        total.corrupt += tally.corrupt;
        total.wrong_source += tally.wrong_source;
    }
    let sent = u64::from(CLIENTS * PER_CLIENT);
    let lost = sent - total.unique;
    let counters = tunnel.counters("echo");
    // Where datagrams were lost: the kernel's drop counters of each socket on the path.
    let agent_drops: u64 = backend
        .sources()
        .iter()
        .map(|a| kernel_drops(a.port()))
        .sum();
    println!(
        "udp mixed: sent {sent}, received {} ({lost} lost, {:.3}% loss) in {:.2?}; \
         backend received {}; kernel drops: public socket {}, backend {}, agent flow \
         sockets {agent_drops}, clients {client_drops}; {:?}; {}",
        total.unique,
        lost as f64 * 100.0 / sent as f64,
        started.elapsed(),
        backend.received(),
        kernel_drops(public.port()),
        kernel_drops(backend.addr.port()),
        total,
        show(&counters)
    );
    assert_eq!(total.foreign, 0, "replies delivered to the wrong client");
    assert_eq!(
        total.wrong_source, 0,
        "datagrams from other than the public port"
    );
    assert_eq!(total.corrupt, 0, "corrupted or truncated replies");
    assert_eq!(total.duplicates, 0, "duplicated replies");
    assert!(
        lost * 100 <= sent,
        "loss above 1%: {lost} of {sent} lost; {}",
        show(&counters)
    );
    // One flow per client, each with its own socket at the agent.
    assert_eq!(tunnel.flows("echo"), CLIENTS as usize);
    assert_eq!(
        counters.flows_created.load(Ordering::Relaxed),
        u64::from(CLIENTS)
    );
    assert_eq!(backend.sources().len(), CLIENTS as usize);
}
