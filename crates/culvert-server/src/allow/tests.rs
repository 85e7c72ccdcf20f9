//! Unit tests of the allow list: rule parsing and printing, matching, resolution.

use super::rule::Ports;
use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn net(addr: IpAddr, prefix: u8) -> ipnet::IpNet {
    ipnet::IpNet::new(addr, prefix).unwrap()
}

fn rule(s: &str) -> AllowRule {
    match s.parse() {
        Ok(rule) => rule,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn list(entries: &[&str]) -> AllowList {
    match AllowList::parse(entries) {
        Ok(list) => list,
        Err(e) => panic!("{entries:?} should parse: {e}"),
    }
}

fn bad(s: &str) -> String {
    match s.parse::<AllowRule>() {
        Ok(rule) => panic!("{s:?} should be rejected, parsed as {rule}"),
        Err(e @ AllowError::BadRule { .. }) => e.to_string(),
        Err(e) => panic!("{s:?}: wrong error kind {e:?}"),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

const WAIT: Duration = Duration::from_secs(5);

// ---- parsing: good forms ----

#[test]
fn parses_single_ipv4() {
    let r = rule("127.0.0.1:5432");
    assert_eq!(
        r,
        AllowRule {
            host: RuleHost::Net(net(IpAddr::V4(Ipv4Addr::LOCALHOST), 32)),
            ports: Ports { lo: 5432, hi: 5432 },
        }
    );
    assert_eq!(r.to_string(), "127.0.0.1:5432");
}

#[test]
fn parses_ipv4_cidr() {
    let r = rule("10.0.0.0/8:5432");
    assert_eq!(
        r.host,
        RuleHost::Net(net(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8))
    );
    assert_eq!(r.to_string(), "10.0.0.0/8:5432");
}

#[test]
fn parses_ipv6_forms() {
    assert_eq!(rule("[::1]:5432").to_string(), "[::1]:5432");
    assert_eq!(rule("[fd00::/8]:80").to_string(), "[fd00::/8]:80");
    assert_eq!(
        rule("[FD00:0:0::/16]:80").to_string(),
        "[fd00::/16]:80",
        "IPv6 is shown in RFC 5952 form"
    );
    assert_eq!(
        rule("[::1]:5432").host,
        RuleHost::Net(net(IpAddr::V6(Ipv6Addr::LOCALHOST), 128))
    );
}

#[test]
fn parses_host_names_lowercased() {
    let r = rule("db.internal:5432");
    assert_eq!(r.host, RuleHost::Name("db.internal".to_string()));
    assert_eq!(r.to_string(), "db.internal:5432");
    assert_eq!(rule("DB.Internal:5432"), r);
    assert_eq!(rule("localhost:*").to_string(), "localhost:*");
    assert_eq!(
        rule("my_svc-1.example.:80").to_string(),
        "my_svc-1.example.:80"
    );
}

#[test]
fn parses_port_ranges_and_any() {
    assert_eq!(
        rule("127.0.0.1:5000-5100").ports,
        Ports { lo: 5000, hi: 5100 }
    );
    assert_eq!(
        rule("127.0.0.1:5000-5100").to_string(),
        "127.0.0.1:5000-5100"
    );
    assert_eq!(rule("127.0.0.1:*").ports, Ports::ANY);
    assert_eq!(rule("127.0.0.1:*").to_string(), "127.0.0.1:*");
    assert_eq!(rule("10.0.0.0/8:1-1024").to_string(), "10.0.0.0/8:1-1024");
    assert_eq!(
        rule("[fd00::/8]:5000-5100").to_string(),
        "[fd00::/8]:5000-5100"
    );
    assert_eq!(
        rule("db.internal:5000-5100").to_string(),
        "db.internal:5000-5100"
    );
    assert_eq!(rule("[::1]:*").to_string(), "[::1]:*");
}

#[test]
fn canonicalises_equivalent_forms() {
    assert_eq!(rule("127.0.0.1:1-65535").to_string(), "127.0.0.1:*");
    assert_eq!(rule("127.0.0.1:80-80").to_string(), "127.0.0.1:80");
    assert_eq!(rule("127.0.0.1/32:22").to_string(), "127.0.0.1:22");
    assert_eq!(rule("[::1/128]:22").to_string(), "[::1]:22");
    assert_eq!(rule("127.0.0.1:0080").to_string(), "127.0.0.1:80");
    assert_eq!(rule("  127.0.0.1:22 \t\n").to_string(), "127.0.0.1:22");
    assert_eq!(rule("0.0.0.0/0:*").to_string(), "0.0.0.0/0:*");
    assert_eq!(rule("[::/0]:*").to_string(), "[::/0]:*");
}

#[test]
fn ipv4_mapped_rules_become_ipv4() {
    assert_eq!(rule("[::ffff:127.0.0.1]:80").to_string(), "127.0.0.1:80");
    assert_eq!(rule("[::ffff:127.0.0.1]:80"), rule("127.0.0.1:80"));
    assert_eq!(
        rule("[::ffff:10.0.0.0/104]:80").to_string(),
        "10.0.0.0/8:80"
    );
    assert_eq!(rule("[::ffff:0:0/96]:*").to_string(), "0.0.0.0/0:*");
}

#[test]
fn display_round_trips() {
    for s in [
        "127.0.0.1:5432",
        "10.0.0.0/8:5432",
        "[::1]:5432",
        "[fd00::/8]:80",
        "db.internal:5432",
        "127.0.0.1:5000-5100",
        "127.0.0.1:*",
        "0.0.0.0/0:1-1024",
        "[::/0]:*",
        "[2001:db8::1]:443",
        "[2001:db8::/32]:5000-5100",
        "localhost:65535",
        "DB.Internal:1",
        " [::ffff:192.168.0.0/112]:22 ",
        "1.2.3.4/32:80-80",
    ] {
        let first = rule(s);
        let text = first.to_string();
        let second = rule(&text);
        assert_eq!(first, second, "{s:?} -> {text:?}");
        assert_eq!(second.to_string(), text, "{s:?}: display is stable");
    }
}

// ---- parsing: bad entries ----

#[test]
fn rejects_empty_entries() {
    assert!(bad("").contains("empty"));
    assert!(bad("   ").contains("empty"));
}

#[test]
fn rejects_missing_ports() {
    let e = bad("127.0.0.1");
    assert!(e.contains("\"127.0.0.1\""), "{e}");
    assert!(e.contains("missing port"), "{e}");
    assert!(bad("127.0.0.1:").contains("missing port"));
    assert!(bad("db.internal").contains("missing port"));
    assert!(bad("[::1]").contains("missing port"));
    assert!(bad("[::1]:").contains("missing port"));
}

#[test]
fn rejects_bad_ports() {
    let e = bad("127.0.0.1:0");
    assert!(e.contains("port 0 is not allowed"), "{e}");
    assert!(bad("127.0.0.1:0-10").contains("port 0 is not allowed"));
    assert!(bad("127.0.0.1:65536").contains("out of range"));
    assert!(bad("127.0.0.1:99999999999999999999").contains("out of range"));
    assert!(bad("127.0.0.1:abc").contains("invalid port \"abc\""));
    assert!(bad("127.0.0.1:+80").contains("invalid port"));
    assert!(bad("127.0.0.1:-80").contains("incomplete port range"));
    assert!(bad("127.0.0.1:80-").contains("incomplete port range"));
    assert!(bad("127.0.0.1:-").contains("incomplete port range"));
    assert!(bad("127.0.0.1:1-2-3").contains("invalid port"));
    assert!(bad("127.0.0.1:**").contains("invalid port"));
    assert!(bad("127.0.0.1: 80").contains("invalid port"));
    let e = bad("127.0.0.1:5100-5000");
    assert!(e.contains("backwards"), "{e}");
    assert!(e.contains("5100-5000"), "{e}");
}

#[test]
fn rejects_bad_prefixes() {
    let e = bad("10.0.0.0/33:80");
    assert_eq!(
        e,
        "invalid allow-list entry \"10.0.0.0/33:80\": IPv4 prefix length /33 is out of range (must be /0 to /32)"
    );
    let e = bad("[fd00::/129]:80");
    assert!(e.contains("IPv6 prefix length /129"), "{e}");
    assert!(e.contains("/0 to /128"), "{e}");
    assert!(bad("10.0.0.0/256:80").contains("out of range"));
    assert!(bad("10.0.0.0/1000:80").contains("invalid prefix length"));
    assert!(bad("10.0.0.0/:80").contains("missing prefix length"));
    assert!(bad("10.0.0.0/x:80").contains("invalid prefix length \"x\""));
    assert!(bad("10.0.0.0/-1:80").contains("invalid prefix length"));
    assert!(bad("10.0.0.0/8/8:80").contains("invalid prefix length"));
}

#[test]
fn rejects_host_bits_in_cidr() {
    let e = bad("10.1.2.3/8:80");
    assert!(e.contains("host bits set"), "{e}");
    assert!(e.contains("10.0.0.0/8"), "{e}");
    assert!(bad("[fd00::1/8]:80").contains("fd00::/8"));
}

#[test]
fn rejects_bad_ipv6_syntax() {
    let e = bad("::1:80");
    assert!(e.contains("must be in brackets"), "{e}");
    assert!(bad("fd00::/8:80").contains("must be in brackets"));
    assert!(bad("[::1:80").contains("missing ']'"));
    assert!(bad("[::1]80").contains("expected ':' after ']'"));
    assert!(bad("[]:80").contains("missing address"));
    assert!(bad("[127.0.0.1]:80").contains("invalid IPv6 address"));
    assert!(bad("[db.internal]:80").contains("brackets are only for IPv6"));
    assert!(bad("[fe80::1%eth0]:80").contains("invalid IPv6 address"));
    assert!(bad("[10.0.0.0/8]:80").contains("invalid IPv6 network address"));
}

#[test]
fn rejects_bad_host_names() {
    let e = bad("256.1.1.1:80");
    assert!(
        e.contains("neither a valid IPv4 address nor a host name"),
        "{e}"
    );
    assert!(bad("1.2.3:80").contains("neither a valid IPv4"));
    assert!(bad("010.0.0.1:80").contains("neither a valid IPv4"));
    assert!(bad("db internal:80").contains("invalid character ' '"));
    assert!(bad("db/8:80").contains("invalid IPv4 network address \"db\""));
    assert!(bad("-db:80").contains("starting or ending with '-'"));
    assert!(bad("a..b:80").contains("empty label"));
    assert!(bad(".:80").contains("empty host name"));
    assert!(bad(":80").contains("missing host"));
    assert!(bad("dé.internal:80").contains("invalid character"));
    let long_label = format!("{}.example:80", "a".repeat(64));
    assert!(bad(&long_label).contains("longer than 63"));
    let long_name = format!("{}:80", ["abcdefghi"; 30].join("."));
    assert!(bad(&long_name).contains("longer than 253"));
}

#[test]
fn never_panics_on_odd_input() {
    let long = "x".repeat(10_000);
    let odd = [
        "[",
        "]",
        ":",
        "/",
        "[]",
        "[]:",
        "[:]:1",
        "[::1]:*-*",
        "*:*",
        "/:",
        "[/]:1",
        "::",
        ":::",
        "é",
        "é:é",
        "[é]:1",
        "1.2.3.4/é:1",
        "\u{0}:1",
        "a:\u{0}",
        "💥:80",
        "[::1]:💥",
        "0.0.0.0/0:0",
        "[::/0]:65535-1",
        &long,
    ];
    for s in odd {
        let _ = s.parse::<AllowRule>();
        let _ = parse_target(s.trim());
    }
    // A long bad entry is echoed in full in BadRule (config text) but a long bad target is
    // shortened.
    let e = bad(&format!("{long}:0"));
    assert!(e.contains("port 0"));
    assert!(quoted(&long).chars().count() < 300);
}

#[test]
fn list_parse_names_first_bad_entry() {
    let err = AllowList::parse(&["127.0.0.1:22", "10.0.0.0/33:80", "nope"])
        .expect_err("second entry is bad");
    match &err {
        AllowError::BadRule { entry, reason } => {
            assert_eq!(entry, "10.0.0.0/33:80");
            assert!(reason.contains("/0 to /32"), "{reason}");
        }
        other => panic!("wrong error {other:?}"),
    }
    assert!(err.to_string().contains("\"10.0.0.0/33:80\""));
}

#[test]
fn list_parse_and_accessors() {
    let entries = vec![String::from("127.0.0.1:22"), String::from("[::1]:*")];
    let l = AllowList::parse(&entries).expect("valid");
    assert!(!l.is_empty());
    assert_eq!(l.rules().len(), 2);
    assert_eq!(l.rules()[1].to_string(), "[::1]:*");
    let empty: [&str; 0] = [];
    assert!(AllowList::parse(&empty).expect("empty is fine").is_empty());
    assert!(AllowList::default().is_empty());
    let built = AllowList::new(vec![rule("127.0.0.1:22")]);
    assert_eq!(built.rules(), &[rule("127.0.0.1:22")]);
}

// ---- allows_addr ----

#[test]
fn empty_list_allows_nothing() {
    let l = AllowList::default();
    assert!(!l.allows_addr(sa("127.0.0.1:80")));
    assert!(!l.allows_addr(sa("[::1]:80")));
}

#[test]
fn allows_exact_ipv4() {
    let l = list(&["127.0.0.1:5432"]);
    assert!(l.allows_addr(sa("127.0.0.1:5432")));
    assert!(!l.allows_addr(sa("127.0.0.1:5433")));
    assert!(!l.allows_addr(sa("127.0.0.2:5432")));
    assert!(!l.allows_addr(sa("[::1]:5432")));
}

#[test]
fn allows_ipv4_cidr() {
    let l = list(&["10.0.0.0/8:5432"]);
    assert!(l.allows_addr(sa("10.0.0.0:5432")));
    assert!(l.allows_addr(sa("10.1.2.3:5432")));
    assert!(l.allows_addr(sa("10.255.255.255:5432")));
    assert!(!l.allows_addr(sa("11.0.0.0:5432")));
    assert!(!l.allows_addr(sa("9.255.255.255:5432")));
    assert!(!l.allows_addr(sa("10.1.2.3:80")));
    let any = list(&["0.0.0.0/0:*"]);
    assert!(any.allows_addr(sa("1.2.3.4:1")));
    assert!(any.allows_addr(sa("255.255.255.255:65535")));
    assert!(!any.allows_addr(sa("[2001:db8::1]:80")));
    let one = list(&["192.168.1.7/32:22"]);
    assert!(one.allows_addr(sa("192.168.1.7:22")));
    assert!(!one.allows_addr(sa("192.168.1.6:22")));
    let odd = list(&["192.168.1.0/31:22"]);
    assert!(odd.allows_addr(sa("192.168.1.1:22")));
    assert!(!odd.allows_addr(sa("192.168.1.2:22")));
}

#[test]
fn allows_ipv6_and_cidr() {
    let l = list(&["[::1]:5432", "[fd00::/8]:80"]);
    assert!(l.allows_addr(sa("[::1]:5432")));
    assert!(!l.allows_addr(sa("[::2]:5432")));
    assert!(!l.allows_addr(sa("127.0.0.1:5432")));
    assert!(l.allows_addr(sa("[fd12:3456::1]:80")));
    assert!(l.allows_addr(sa("[fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80")));
    assert!(!l.allows_addr(sa("[fe00::1]:80")));
    assert!(!l.allows_addr(sa("[fd00::1]:81")));
    let all6 = list(&["[::/0]:*"]);
    assert!(all6.allows_addr(sa("[2001:db8::1]:1")));
    assert!(!all6.allows_addr(sa("127.0.0.1:1")));
}

#[test]
fn allows_port_ranges_inclusive() {
    let l = list(&["127.0.0.1:5000-5100"]);
    assert!(l.allows_addr(sa("127.0.0.1:5000")));
    assert!(l.allows_addr(sa("127.0.0.1:5050")));
    assert!(l.allows_addr(sa("127.0.0.1:5100")));
    assert!(!l.allows_addr(sa("127.0.0.1:4999")));
    assert!(!l.allows_addr(sa("127.0.0.1:5101")));
    let v6 = list(&["[fd00::/8]:1-10"]);
    assert!(v6.allows_addr(sa("[fd00::5]:10")));
    assert!(!v6.allows_addr(sa("[fd00::5]:11")));
}

#[test]
fn allows_any_port_but_never_port_zero() {
    let l = list(&["127.0.0.1:*"]);
    assert!(l.allows_addr(sa("127.0.0.1:1")));
    assert!(l.allows_addr(sa("127.0.0.1:65535")));
    assert!(!l.allows_addr(sa("127.0.0.1:0")));
    assert!(!l.allows_addr(sa("127.0.0.2:80")));
}

#[test]
fn ipv4_mapped_addresses_match_as_ipv4() {
    let l = list(&["127.0.0.1:80"]);
    assert!(l.allows_addr(sa("[::ffff:127.0.0.1]:80")));
    assert!(!l.allows_addr(sa("[::ffff:127.0.0.2]:80")));
    let net = list(&["10.0.0.0/8:*"]);
    assert!(net.allows_addr(sa("[::ffff:10.9.8.7]:443")));
    assert!(!net.allows_addr(sa("[::ffff:11.0.0.1]:443")));
    // An IPv6 rule does not let a mapped IPv4 address through.
    let all6 = list(&["[::/0]:*"]);
    assert!(!all6.allows_addr(sa("[::ffff:127.0.0.1]:80")));
    let range6 = list(&["[::/1]:*"]);
    assert!(!range6.allows_addr(sa("[::ffff:10.0.0.1]:80")));
    // A mapped rule is an IPv4 rule.
    let mapped = list(&["[::ffff:192.168.0.0/112]:22"]);
    assert!(mapped.allows_addr(sa("192.168.3.4:22")));
    assert!(mapped.allows_addr(sa("[::ffff:192.168.3.4]:22")));
    assert!(!mapped.allows_addr(sa("192.169.0.1:22")));
    // IPv4-compatible (not mapped) addresses stay IPv6.
    assert!(!l.allows_addr(sa("[::127.0.0.1]:80")));
}

#[test]
fn allows_addr_ignores_host_name_rules() {
    let l = list(&["localhost:80"]);
    assert!(!l.allows_addr(sa("127.0.0.1:80")));
}

#[test]
fn any_matching_rule_allows() {
    let l = list(&["10.0.0.0/8:22", "127.0.0.1:80", "[::1]:443"]);
    assert!(l.allows_addr(sa("10.0.0.1:22")));
    assert!(l.allows_addr(sa("127.0.0.1:80")));
    assert!(l.allows_addr(sa("[::1]:443")));
    assert!(!l.allows_addr(sa("127.0.0.1:22")));
}

// ---- targets ----

#[test]
fn parses_targets() {
    assert!(matches!(
        parse_target("127.0.0.1:5432"),
        Ok(Target::Addr(a)) if a == sa("127.0.0.1:5432")
    ));
    assert!(matches!(
        parse_target("[::1]:5432"),
        Ok(Target::Addr(a)) if a == sa("[::1]:5432")
    ));
    assert!(matches!(
        parse_target("DB.internal:5432"),
        Ok(Target::Name(ref h, 5432)) if h == "db.internal"
    ));
    for (target, reason) in [
        ("", "empty"),
        ("localhost", "missing port"),
        ("localhost:", "missing port"),
        ("localhost:0", "port 0"),
        ("localhost:65536", "out of range"),
        ("localhost:*", "invalid port"),
        ("localhost:80-90", "invalid port"),
        ("::1:80", "brackets"),
        ("[::1", "missing ']'"),
        ("[::1]", "missing port"),
        ("[localhost]:80", "invalid IPv6 address"),
        ("[fd00::/8]:80", "invalid IPv6 address"),
        ("10.0.0.0/8:80", "invalid character '/'"),
        ("bad host:80", "invalid character ' '"),
        ("999.1.1.1:80", "neither a valid IPv4"),
    ] {
        match parse_target(target) {
            Ok(_) => panic!("{target:?} should be rejected"),
            Err(e) => assert!(e.contains(reason), "{target:?}: {e:?} lacks {reason:?}"),
        }
    }
}

#[tokio::test]
async fn bad_targets_are_bad_target_errors() {
    let l = list(&["127.0.0.1:*"]);
    for target in ["localhost", "localhost:0", "[::1", "::1:80", "", "a b:1"] {
        match l.resolve(target, WAIT).await {
            Err(e @ AllowError::BadTarget(_)) => {
                assert!(e.to_string().starts_with("bad target "), "{e}");
            }
            other => panic!("{target:?}: expected BadTarget, got {other:?}"),
        }
    }
    let e = l.resolve("localhost", WAIT).await.expect_err("no port");
    assert_eq!(
        e.to_string(),
        "bad target \"localhost\": missing port (expected HOST:PORT, e.g. 127.0.0.1:5432)"
    );
    // Even an empty list reports a malformed target as such.
    let e = AllowList::default()
        .resolve("nope", WAIT)
        .await
        .expect_err("no port");
    assert!(matches!(e, AllowError::BadTarget(_)), "{e:?}");
    // A very long target is shortened in the message.
    let long = format!("{}:80", "a".repeat(5000));
    let e = l.resolve(&long, WAIT).await.expect_err("too long");
    assert!(e.to_string().len() < 600, "{e}");
}

#[tokio::test]
async fn localhost_allowed_by_loopback_rules() {
    let l = list(&["127.0.0.1:5432", "[::1]:5432"]);
    let addrs = l.resolve("localhost:5432", WAIT).await.expect("allowed");
    assert!(!addrs.is_empty());
    for addr in &addrs {
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 5432);
    }
}

#[tokio::test]
async fn localhost_allowed_by_ipv4_rule_returns_only_allowed() {
    let l = list(&["127.0.0.1:5432"]);
    let addrs = l.resolve("  localhost:5432 ", WAIT).await.expect("allowed");
    assert_eq!(addrs, vec![sa("127.0.0.1:5432")]);
}

#[tokio::test]
async fn localhost_refused_by_other_network() {
    let l = list(&["10.0.0.0/8:5432"]);
    match l.resolve("localhost:5432", WAIT).await {
        Err(e @ AllowError::NotAllowed { .. }) => {
            let text = e.to_string();
            let AllowError::NotAllowed { target, resolved } = e else {
                unreachable!()
            };
            assert_eq!(target, "localhost:5432");
            assert!(!resolved.is_empty());
            assert!(resolved.iter().all(|a| a.ip().is_loopback()));
            assert!(
                text.starts_with("target localhost:5432 (resolved to "),
                "{text}"
            );
            assert!(
                text.ends_with(") is not in this node's allow-list"),
                "{text}"
            );
            for addr in &resolved {
                assert!(text.contains(&addr.to_string()), "{text}");
            }
        }
        other => panic!("expected NotAllowed, got {other:?}"),
    }
}

#[tokio::test]
async fn localhost_refused_on_wrong_port() {
    let l = list(&["127.0.0.1:5432", "[::1]:5432"]);
    let e = l.resolve("localhost:5433", WAIT).await.expect_err("port");
    assert!(matches!(e, AllowError::NotAllowed { .. }), "{e:?}");
}

#[tokio::test]
async fn ip_targets_skip_resolution() {
    let l = list(&["127.0.0.1:5432", "[::1]:5432"]);
    assert_eq!(
        l.resolve("127.0.0.1:5432", WAIT).await.expect("allowed"),
        vec![sa("127.0.0.1:5432")]
    );
    assert_eq!(
        l.resolve("[::1]:5432", WAIT).await.expect("allowed"),
        vec![sa("[::1]:5432")]
    );
    let e = l
        .resolve("127.0.0.2:5432", WAIT)
        .await
        .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "target 127.0.0.2:5432 (resolved to 127.0.0.2:5432) is not in this node's allow-list"
    );
}

#[tokio::test]
async fn mapped_target_is_checked_and_returned_as_ipv4() {
    let l = list(&["127.0.0.1:5432"]);
    assert_eq!(
        l.resolve("[::ffff:127.0.0.1]:5432", WAIT)
            .await
            .expect("allowed"),
        vec![sa("127.0.0.1:5432")]
    );
    let l6 = list(&["[::/0]:*"]);
    let e = l6
        .resolve("[::ffff:127.0.0.1]:5432", WAIT)
        .await
        .expect_err("mapped is IPv4");
    assert!(matches!(e, AllowError::NotAllowed { .. }), "{e:?}");
}

#[tokio::test]
async fn host_name_rule_allows_matching_ip_target() {
    let l = list(&["localhost:5432"]);
    assert_eq!(
        l.resolve("127.0.0.1:5432", WAIT).await.expect("allowed"),
        vec![sa("127.0.0.1:5432")]
    );
    let e = l.resolve("127.0.0.1:5433", WAIT).await.expect_err("port");
    assert!(matches!(e, AllowError::NotAllowed { .. }), "{e:?}");
    let e = l.resolve("10.1.2.3:5432", WAIT).await.expect_err("ip");
    assert_eq!(
        e.to_string(),
        "target 10.1.2.3:5432 (resolved to 10.1.2.3:5432) is not in this node's allow-list"
    );
}

#[tokio::test]
async fn host_name_rule_with_port_range() {
    let l = list(&["LOCALHOST:5000-5100"]);
    assert!(l.resolve("127.0.0.1:5000", WAIT).await.is_ok());
    assert!(l.resolve("127.0.0.1:5100", WAIT).await.is_ok());
    assert!(l.resolve("127.0.0.1:5101", WAIT).await.is_err());
    let any = list(&["localhost:*"]);
    assert!(any.resolve("localhost:1", WAIT).await.is_ok());
}

#[tokio::test]
async fn host_name_rule_allows_same_name_target() {
    let l = list(&["localhost:5432"]);
    let addrs = l.resolve("localhost:5432", WAIT).await.expect("allowed");
    assert!(!addrs.is_empty());
    assert!(addrs
        .iter()
        .all(|a| a.ip().is_loopback() && a.port() == 5432));
}

#[tokio::test]
async fn mixed_rules_return_in_resolution_order() {
    let l = list(&["10.0.0.0/8:*", "localhost:5432"]);
    assert_eq!(
        l.resolve("127.0.0.1:5432", WAIT).await.expect("by name"),
        vec![sa("127.0.0.1:5432")]
    );
    assert_eq!(
        l.resolve("10.0.0.1:5432", WAIT).await.expect("by net"),
        vec![sa("10.0.0.1:5432")]
    );
}

#[tokio::test]
async fn empty_list_refuses_without_resolving() {
    let e = AllowList::default()
        .resolve("localhost:5432", WAIT)
        .await
        .expect_err("empty list");
    match &e {
        AllowError::NotAllowed { target, resolved } => {
            assert_eq!(target, "localhost:5432");
            assert!(resolved.is_empty());
        }
        other => panic!("expected NotAllowed, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "target localhost:5432 is not in this node's allow-list"
    );
}

#[test]
fn not_allowed_message_lists_addresses() {
    let e = AllowError::NotAllowed {
        target: "db:5432".to_string(),
        resolved: vec![sa("10.1.2.3:5432")],
    };
    assert_eq!(
        e.to_string(),
        "target db:5432 (resolved to 10.1.2.3:5432) is not in this node's allow-list"
    );
    let e = AllowError::NotAllowed {
        target: "db:5432".to_string(),
        resolved: vec![sa("10.1.2.3:5432"), sa("[fd00::1]:5432")],
    };
    assert_eq!(
        e.to_string(),
        "target db:5432 (resolved to 10.1.2.3:5432, [fd00::1]:5432) is not in this node's allow-list"
    );
    let e = AllowError::Resolve {
        target: "db:5432".to_string(),
        reason: "timed out after 2s".to_string(),
    };
    assert_eq!(
        e.to_string(),
        "could not resolve target db:5432: timed out after 2s"
    );
}

#[tokio::test]
async fn timed_reports_timeout_and_errors() {
    let slow = std::future::pending::<std::io::Result<()>>();
    let e = timed(Duration::from_millis(10), slow)
        .await
        .expect_err("never finishes");
    assert_eq!(e, "timed out after 10ms");
    let failing = async { Err::<(), _>(std::io::Error::other("no such host")) };
    assert_eq!(
        timed(WAIT, failing).await.expect_err("fails"),
        "no such host"
    );
    let fine = async { Ok::<u8, std::io::Error>(7) };
    assert_eq!(timed(WAIT, fine).await.expect("ok"), 7);
}

#[test]
fn resolve_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let l = AllowList::default();
    let fut = l.resolve("localhost:1", WAIT);
    assert_send(&fut);
}
