//! PROXY protocol towards the backend, end to end on loopback (server and agent in process,
//! plain `ws://`): a service exposed with `?proxy=v2` (or `?proxy=v1`) has its backend read a
//! header carrying the public client's real address and port (the client socket's local
//! address) and the backend's own address, then the client's bytes unchanged. A service
//! without the suffix gets the client's bytes with no header. The headers are parsed here by
//! a strict, hand-written reader of HAProxy's specification, independent of the agent's code.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use culvert_agent::{Agent, AgentConfig, AgentHandle, ServiceSpec};
use culvert_server::tokens::generate_token;
use culvert_server::{PortRange, Server, ServerConfig, ServerHandle, TokenStore};
use culvert_transport::ws::ServerUrl;
use support::{public_port, within, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Which header a backend expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    V1,
    V2,
    None,
}

/// What a backend saw on one connection.
#[derive(Debug)]
struct Seen {
    /// Source and destination from the header (`None` without one).
    addrs: Option<(SocketAddr, SocketAddr)>,
    /// Every byte after the header, up to the client's EOF.
    payload: Vec<u8>,
}

/// A plain `ws://` server on 127.0.0.1 with public listeners on 127.0.0.1, its token and its
/// public port range.
async fn start_server() -> (ServerHandle, String, PortRange) {
    let token = generate_token();
    let range = support::port_range();
    let mut config = ServerConfig::new((Ipv4Addr::LOCALHOST, 0).into(), range);
    config.public_bind = "127.0.0.1".parse().unwrap();
    let server = Server::bind(config, TokenStore::from_tokens(&[("n", &token)]), None)
        .await
        .expect("bind the server")
        .spawn()
        .expect("spawn the server");
    (server, token, range)
}

/// An agent of `server` exposing each `NAME=SPEC`, ready (whole pool up) within `WAIT`.
async fn start_agent(server: &ServerHandle, token: &str, specs: &[String]) -> AgentHandle {
    let url = ServerUrl::parse(&format!("ws://{}", server.addr)).expect("server url");
    let services = specs
        .iter()
        .map(|s| s.parse::<ServiceSpec>().expect("service spec"))
        .collect();
    let mut config = AgentConfig::new(url, token.to_owned(), services);
    config.pool = 2;
    let agent = Agent::spawn(config).expect("spawn the agent");
    assert!(
        agent.wait_ready(WAIT).await,
        "agent not ready within {WAIT:?} ({} connections up)",
        agent.connections_up()
    );
    agent
}

/// Reads a version 2 header (HAProxy `proxy-protocol.txt` 2.2): the 12-byte signature,
/// version 2 with command PROXY, TCP over IPv4 or IPv6, the address block. Strict: anything
/// else is an error.
async fn read_v2<R: AsyncRead + Unpin>(r: &mut R) -> Result<(SocketAddr, SocketAddr), String> {
    const SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed)
        .await
        .map_err(|e| format!("v2 fixed header: {e}"))?;
    if fixed[..12] != SIG {
        return Err(format!("bad v2 signature {:02x?}", &fixed[..12]));
    }
    if fixed[12] != 0x21 {
        return Err(format!(
            "version/command {:#04x}, expected 0x21 (v2, PROXY)",
            fixed[12]
        ));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut block = vec![0u8; len];
    r.read_exact(&mut block)
        .await
        .map_err(|e| format!("v2 address block: {e}"))?;
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match (fixed[13], len) {
        (0x11, 12) => {
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&block[0..4]).unwrap());
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&block[4..8]).unwrap());
            Ok((
                SocketAddr::new(src.into(), port(&block[8..10])),
                SocketAddr::new(dst.into(), port(&block[10..12])),
            ))
        }
        (0x21, 36) => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&block[0..16]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&block[16..32]).unwrap());
            Ok((
                SocketAddr::new(src.into(), port(&block[32..34])),
                SocketAddr::new(dst.into(), port(&block[34..36])),
            ))
        }
        (fam, len) => Err(format!(
            "family/transport {fam:#04x} with {len} address bytes: not TCP4/12 or TCP6/36"
        )),
    }
}

/// Reads a version 1 line (HAProxy `proxy-protocol.txt` 2.1): `PROXY TCP4|TCP6 SRC DST SPORT
/// DPORT\r\n`, at most 107 bytes, read byte by byte so nothing after it is consumed.
async fn read_v1<R: AsyncRead + Unpin>(r: &mut R) -> Result<(SocketAddr, SocketAddr), String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() >= 107 {
            return Err(format!(
                "no CRLF in the first 107 bytes: {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
        line.push(r.read_u8().await.map_err(|e| format!("v1 line: {e}"))?);
    }
    let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|e| e.to_string())?;
    let parts: Vec<&str> = text.split(' ').collect();
    let [proxy, family, src, dst, sport, dport] = parts[..] else {
        return Err(format!("v1 line {text:?}: expected 6 fields"));
    };
    if proxy != "PROXY" {
        return Err(format!("v1 line {text:?}: does not start with PROXY"));
    }
    let ip = |s: &str| s.parse::<IpAddr>().map_err(|e| format!("{s:?}: {e}"));
    let port = |s: &str| s.parse::<u16>().map_err(|e| format!("{s:?}: {e}"));
    let (src, dst) = (ip(src)?, ip(dst)?);
    let want_v4 = match family {
        "TCP4" => true,
        "TCP6" => false,
        other => return Err(format!("v1 line {text:?}: family {other:?}")),
    };
    if src.is_ipv4() != want_v4 || dst.is_ipv4() != want_v4 {
        return Err(format!(
            "v1 line {text:?}: addresses not of family {family}"
        ));
    }
    Ok((
        SocketAddr::new(src, port(sport)?),
        SocketAddr::new(dst, port(dport)?),
    ))
}

/// A backend expecting `expect`: per connection it reads the header, then everything to the
/// client's EOF, reports both on the channel, answers `ok` and closes.
async fn spawn_backend(
    expect: Expect,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Seen, String>>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let seen = async {
                    let addrs = match expect {
                        Expect::V1 => Some(read_v1(&mut sock).await?),
                        Expect::V2 => Some(read_v2(&mut sock).await?),
                        Expect::None => None,
                    };
                    let mut payload = Vec::new();
                    sock.read_to_end(&mut payload)
                        .await
                        .map_err(|e| format!("payload: {e}"))?;
                    Ok::<_, String>(Seen { addrs, payload })
                };
                let seen = within(WAIT, "backend reading a connection", seen).await;
                let ok = seen.is_ok();
                let _ = tx.send(seen);
                if ok {
                    let _ = sock.write_all(b"ok").await;
                    let _ = sock.shutdown().await;
                }
            });
        }
    });
    (addr, rx)
}

/// Connects to the public port, sends `payload` and EOF, expects `ok` then EOF; returns the
/// client socket's local address (what the backend must see as the source).
async fn client(port: u16, payload: &[u8]) -> SocketAddr {
    let mut sock = within(
        WAIT,
        "connect to the public port",
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await
    .expect("connect to the public port");
    let local = sock.local_addr().unwrap();
    within(WAIT, "send the payload", async {
        sock.write_all(payload).await?;
        sock.shutdown().await
    })
    .await
    .expect("send the payload");
    let mut answer = Vec::new();
    within(WAIT, "read the answer", sock.read_to_end(&mut answer))
        .await
        .expect("read the answer");
    assert_eq!(answer, b"ok", "backend answer through the tunnel");
    local
}

/// Several clients through the service `name` of a backend expecting `expect`: each
/// connection's header names that client's own address and port and the backend's address.
async fn check_service(expect: Expect, suffix: &str) {
    let (backend, mut seen) = spawn_backend(expect).await;
    let (server, token, _) = start_server().await;
    let agent = start_agent(&server, &token, &[format!("svc=tcp://{backend}{suffix}")]).await;
    let port = public_port(&agent, "svc");

    for i in 0..3u8 {
        let payload = format!("hello {i} through culvert ({expect:?})\n").into_bytes();
        let client_addr = client(port, &payload).await;
        let got = within(WAIT, "the backend's report", seen.recv())
            .await
            .expect("backend channel open")
            .unwrap_or_else(|e| panic!("{expect:?} connection {i}: backend error: {e}"));
        match expect {
            Expect::None => assert_eq!(got.addrs, None),
            _ => {
                let (src, dst) = got.addrs.expect("addresses");
                assert_eq!(src, client_addr, "{expect:?}: source is the public client");
                assert_eq!(
                    dst, backend,
                    "{expect:?}: destination is the backend target"
                );
            }
        }
        assert_eq!(
            got.payload, payload,
            "{expect:?}: payload after the header, unchanged"
        );
    }
    agent.shutdown();
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_parses_proxy_v2_and_sees_client_address() {
    check_service(Expect::V2, "?proxy=v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_parses_proxy_v1_and_sees_client_address() {
    check_service(Expect::V1, "?proxy=v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_suffix_gets_no_header() {
    check_service(Expect::None, "").await;
}

/// One agent, three services, each with its own backend, the PROXY one with its public port
/// requested explicitly alongside the suffix (`@PORT?proxy=v2`): each backend gets its own
/// format, and the requested port is the one assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_services_with_requested_port() {
    let (b2, mut s2) = spawn_backend(Expect::V2).await;
    let (b1, mut s1) = spawn_backend(Expect::V1).await;
    let (b0, mut s0) = spawn_backend(Expect::None).await;
    let (server, token, range) = start_server().await;
    // A free port of the server's range (bound and released), for `v2` to request.
    let mut requested = None;
    for port in range.start..=range.end {
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await.is_ok() {
            requested = Some(port);
            break;
        }
    }
    let requested = requested.expect("a free port in the server's range");
    let agent = start_agent(
        &server,
        &token,
        &[
            format!("v2=tcp://{b2}@{requested}?proxy=v2"),
            format!("v1=tcp://{b1}?proxy=v1"),
            format!("plain=tcp://{b0}"),
        ],
    )
    .await;
    assert_eq!(
        public_port(&agent, "v2"),
        requested,
        "the requested public port"
    );

    for (name, seen, backend) in [
        ("v2", &mut s2, b2),
        ("v1", &mut s1, b1),
        ("plain", &mut s0, b0),
    ] {
        let payload = format!("to {name}").into_bytes();
        let client_addr = client(public_port(&agent, name), &payload).await;
        let got = within(WAIT, "the backend's report", seen.recv())
            .await
            .expect("backend channel open")
            .unwrap_or_else(|e| panic!("{name}: backend error: {e}"));
        if name == "plain" {
            assert_eq!(got.addrs, None, "{name}: no header");
        } else {
            assert_eq!(got.addrs, Some((client_addr, backend)), "{name}");
        }
        assert_eq!(got.payload, payload, "{name}");
    }
    agent.shutdown();
    server.shutdown();
}

/// A TCP connection to `port` on 127.0.0.1 from the loopback address `source`.
async fn connect_from(source: Ipv4Addr, port: u16) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((source, 0).into()).unwrap();
    within(
        WAIT,
        "connect to the public port",
        s.connect((Ipv4Addr::LOCALHOST, port).into()),
    )
    .await
    .expect("connect to the public port")
}

/// Writes `preface` and `payload` then EOF on `sock`; the answer it gets (`ok` when the
/// backend saw the connection, nothing when the server refused it).
async fn exchange(mut sock: TcpStream, preface: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut answer = Vec::new();
    let _ = within(WAIT, "an exchange through the public port", async {
        sock.write_all(preface).await?;
        sock.write_all(payload).await?;
        sock.shutdown().await?;
        sock.read_to_end(&mut answer).await
    })
    .await;
    answer
}

/// Behind an L4 balancer (`public_proxy_protocol_from`), the public client is the one the
/// balancer's PROXY header names: the token's `public_clients` are checked against it and
/// the backend's own PROXY header (from the agent) carries it. A client from elsewhere is
/// itself, and the header it writes is only payload; a balancer's connection without a
/// header is refused before it reaches the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_the_public_client_is_the_one_its_header_names() {
    let (backend, mut seen) = spawn_backend(Expect::V1).await;
    let token = generate_token();
    let mut entry = TokenStore::from_tokens(&[("n", &token)])
        .check(&token)
        .expect("the token")
        .clone();
    entry.public_clients = Some(vec!["198.51.100.0/24".into(), "127.0.0.9".into()]);
    let mut config = ServerConfig::new((Ipv4Addr::LOCALHOST, 0).into(), support::port_range());
    config.public_bind = "127.0.0.1".parse().unwrap();
    config.public_proxy_protocol_from = vec!["127.0.0.5/32".parse().unwrap()];
    let server = Server::bind(
        config,
        TokenStore::from_entries(vec![(entry, &token)]),
        None,
    )
    .await
    .expect("bind the server")
    .spawn()
    .expect("spawn the server");
    let agent = start_agent(&server, &token, &[format!("svc=tcp://{backend}?proxy=v1")]).await;
    let port = public_port(&agent, "svc");
    let balancer = Ipv4Addr::new(127, 0, 0, 5);

    // The balancer names a client public_clients admits: the backend is told that client.
    for (header, client) in [
        (
            format!("PROXY TCP4 198.51.100.7 127.0.0.1 40123 {port}\r\n").into_bytes(),
            "198.51.100.7:40123",
        ),
        (
            {
                let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
                h.extend_from_slice(&[198, 51, 100, 8, 127, 0, 0, 1, 0x9c, 0x41, 0x01, 0xbb]);
                h
            },
            "198.51.100.8:40001",
        ),
    ] {
        let answer = exchange(connect_from(balancer, port).await, &header, b"payload\n").await;
        assert_eq!(answer, b"ok");
        let got = within(WAIT, "the backend's report", seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.addrs.unwrap().0, client.parse::<SocketAddr>().unwrap());
        assert_eq!(
            got.payload, b"payload\n",
            "the balancer's header is not payload"
        );
    }

    // A client it names that public_clients leaves out is refused: nothing reaches the
    // backend.
    let header = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40123 {port}\r\n");
    let answer = exchange(connect_from(balancer, port).await, header.as_bytes(), b"x").await;
    assert_eq!(answer, b"");

    // A client of its own (admitted by address): its header is payload, not believed.
    let spoof = format!("PROXY TCP4 198.51.100.9 127.0.0.1 40123 {port}\r\n");
    let direct = Ipv4Addr::new(127, 0, 0, 9);
    let answer = exchange(connect_from(direct, port).await, spoof.as_bytes(), b"y").await;
    assert_eq!(answer, b"ok");
    let got = within(WAIT, "the backend's report", seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.addrs.unwrap().0.ip(), IpAddr::V4(direct));
    assert_eq!(got.payload, [spoof.as_bytes(), b"y"].concat());

    // The balancer's connection without a header: refused, counted.
    let answer = exchange(
        connect_from(balancer, port).await,
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(answer, b"");
    assert!(
        seen.try_recv().is_err(),
        "a refused connection reached the backend"
    );
    agent.shutdown();
    server.shutdown();
}

/// An L4 balancer in front of the tunnel endpoint at `to`: each connection to the returned
/// port is relayed from 127.0.0.5, after a PROXY v1 header naming `198.51.100.N:4000N`
/// (N = 1, 2, … per connection).
async fn tunnel_balancer(to: SocketAddr) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut n = 0u8;
        while let Ok((mut agent, _)) = listener.accept().await {
            n += 1;
            let header = format!(
                "PROXY TCP4 198.51.100.{n} {} 4000{n} {}\r\n",
                to.ip(),
                to.port()
            );
            tokio::spawn(async move {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind((Ipv4Addr::new(127, 0, 0, 5), 0).into()).unwrap();
                let Ok(mut server) = s.connect(to).await else {
                    return;
                };
                if server.write_all(header.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut agent, &mut server).await;
                }
            });
        }
    });
    port
}

/// Behind a balancer (`tunnel_proxy_protocol_from`), each agent's session is known by the
/// address the balancer's PROXY header names, not the balancer's (the address the
/// handshake caps and lockouts count by too); an agent dialing directly is known by its
/// own; a balancer's connection without a header fails its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_each_agent_is_known_by_the_address_its_header_names() {
    let token = generate_token();
    let mut config = ServerConfig::new((Ipv4Addr::LOCALHOST, 0).into(), support::port_range());
    config.public_bind = "127.0.0.1".parse().unwrap();
    config.tunnel_proxy_protocol_from = vec!["127.0.0.5/32".parse().unwrap()];
    let server = Server::bind(config, TokenStore::from_tokens(&[("n", &token)]), None)
        .await
        .expect("bind the server")
        .spawn()
        .expect("spawn the server");
    let (backend, _seen) = spawn_backend(Expect::None).await;
    let balancer = tunnel_balancer(server.addr).await;

    // Two agents through the balancer, one straight to the server.
    let via = |port: u16, name: &str| {
        let url = ServerUrl::parse(&format!("ws://127.0.0.1:{port}")).unwrap();
        let mut c = AgentConfig::new(
            url,
            token.clone(),
            vec![format!("{name}=tcp://{backend}")
                .parse::<ServiceSpec>()
                .unwrap()],
        );
        c.pool = 1;
        c
    };
    let a = Agent::spawn(via(balancer, "a")).expect("spawn an agent");
    let b = Agent::spawn(via(balancer, "b")).expect("spawn an agent");
    let direct = Agent::spawn(via(server.addr.port(), "direct")).expect("spawn an agent");
    let peers = within(WAIT, "three sessions", async {
        loop {
            let mut peers: Vec<IpAddr> = server.sessions().iter().map(|s| s.peer.ip()).collect();
            if peers.len() == 3 {
                peers.sort();
                return peers;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        peers,
        [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "198.51.100.1".parse::<IpAddr>().unwrap(),
            "198.51.100.2".parse().unwrap()
        ]
    );

    // The balancer's connection without a header: refused before any handshake.
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((Ipv4Addr::new(127, 0, 0, 5), 0).into()).unwrap();
    let mut raw = s.connect(server.addr).await.unwrap();
    raw.write_all(b"GET /tunnel/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = within(WAIT, "the refusal", raw.read_to_end(&mut got)).await;
    assert!(matches!(read, Ok(0) | Err(_)) && got.is_empty(), "{got:?}");
    for h in [a, b, direct] {
        h.shutdown();
    }
    server.shutdown();
}
