//! The server's views of its services (`ports`, `udp_counters`, `udp_flows`) name each
//! service as it is addressed, `TENANT/NAME`: two tenants may hold services of the same
//! name, and both are seen, each with its own port and counters. Before, the views were
//! keyed by the bare name and showed one of the two.

mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;

use culvert_agent::{Agent, AgentConfig, ServiceSpec};
use culvert_server::{Server, ServerConfig, TokenStore};
use culvert_transport::ws::ServerUrl;
use support::{port_range, WAIT};

#[tokio::test]
async fn two_tenants_with_one_service_name_are_both_seen() {
    // Each token is its own tenant (no `tenant` field): `acme` and `globex`.
    let tokens =
        TokenStore::from_tokens(&[("acme", "token-of-acme"), ("globex", "token-of-globex")]);
    let mut config = ServerConfig::new((Ipv4Addr::LOCALHOST, 0).into(), port_range());
    config.public_bind = Ipv4Addr::LOCALHOST.into();
    let server = Server::bind(config, tokens, None)
        .await
        .unwrap()
        .spawn()
        .unwrap();
    let url = ServerUrl::parse(&format!("ws://{}", server.addr)).unwrap();
    let mut agents = Vec::new();
    for token in ["token-of-acme", "token-of-globex"] {
        // Each exposes a TCP and a UDP service named alike in both tenants.
        let specs: Vec<ServiceSpec> = ["web=tcp://127.0.0.1:9", "dns=udp://127.0.0.1:9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let agent = Agent::spawn(AgentConfig::new(url.clone(), token.into(), specs)).unwrap();
        assert!(agent.wait_ready(WAIT).await, "agent of {token} not ready");
        agents.push(agent);
    }

    let ports = server.ports();
    assert_eq!(
        ports.len(),
        4,
        "two services in each of two tenants: {ports:?}"
    );
    for service in ["web", "dns"] {
        let a = ports.get(&format!("acme/{service}"));
        let g = ports.get(&format!("globex/{service}"));
        assert!(
            a.is_some() && g.is_some(),
            "{service} of both tenants: {ports:?}"
        );
        assert_ne!(a, g, "each tenant's {service} has its own port");
    }
    let acme = server
        .udp_counters("acme/dns")
        .expect("acme's dns counters");
    let globex = server
        .udp_counters("globex/dns")
        .expect("globex's dns counters");
    assert!(
        !Arc::ptr_eq(&acme, &globex),
        "each tenant's dns has its own counters"
    );
    assert_eq!(server.udp_flows("acme/dns"), Some(0));
    assert_eq!(server.udp_flows("globex/dns"), Some(0));
    assert_eq!(
        server.udp_counters("dns").map(|_| ()),
        None,
        "a bare name names no tenant"
    );
}
