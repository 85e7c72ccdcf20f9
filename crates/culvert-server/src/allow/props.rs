//! Property tests of the allow list's parsing and matching.

use super::*;
use proptest::prelude::*;

proptest! {
    /// Rules and targets come from config files and from peers: any string parses to a
    /// rule or an error, never a panic, and a parsed rule prints back to itself.
    #[test]
    fn any_rule_text_parses_or_errs_and_round_trips(s in ".{0,80}", t in "[0-9a-f:./\\[\\]*-]{0,40}") {
        for text in [s.as_str(), t.as_str()] {
            if let Ok(rule) = text.parse::<AllowRule>() {
                let again: AllowRule = rule.to_string().parse().unwrap();
                prop_assert_eq!(again, rule);
            }
        }
    }

    /// Whatever the rules, an address is allowed only if some rule's network and ports
    /// hold it, and an empty list allows nothing.
    #[test]
    fn allows_addr_never_panics(a in any::<[u8; 4]>(), port in any::<u16>(), prefix in 0u8..=32, lo in 1u16.., span in 0u16..100) {
        let net = std::net::Ipv4Addr::from(a);
        let hi = lo.saturating_add(span);
        let rule = format!("{}/{prefix}:{lo}-{hi}", mask(net, prefix));
        let list = AllowList::parse(&[rule]).unwrap();
        let addr = SocketAddr::from((net, port));
        prop_assert_eq!(list.allows_addr(addr), (lo..=hi).contains(&port));
        prop_assert!(!AllowList::default().allows_addr(addr));
    }
}

fn mask(ip: std::net::Ipv4Addr, prefix: u8) -> std::net::Ipv4Addr {
    let bits = u32::from(ip);
    let m = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    std::net::Ipv4Addr::from(bits & m)
}
