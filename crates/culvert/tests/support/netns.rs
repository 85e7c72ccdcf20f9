//! A network namespace with one veth link to the host, for the tests that need a link
//! other than loopback: one that goes down (`faults_netns`), or one slower than the tunnel
//! (`udp_netns`). Needs `ip netns` and `tc` (root, or CAP_NET_ADMIN).
//!
//! Where namespaces cannot be made, [`Netns::create_or_skip`] says so on stderr and the
//! test returns without checking anything, except under `CI`, where it fails: the CI
//! machine runs as root, so a namespace that cannot be made there is a broken set-up, not
//! a reason to pass.

use std::process::Command;

/// Runs `ip ARGS`; the error names the command and what it printed.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace with one veth link to the host; removed (with the link) on drop.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    /// The host's end of the link (a link-local address that exists only on it).
    pub host_ip: String,
    /// The namespace's end.
    pub ns_ip: String,
}

impl Netns {
    /// A namespace linked to the host over 169.254.`subnet`.0/30; each test file takes its
    /// own `subnet` and `tag`, so tests running at once do not collide.
    pub fn create(tag: &str, subnet: u8) -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("culvert-{tag}{id}"),
            host_if: format!("cv{tag}h{id}"),
            host_ip: format!("169.254.{subnet}.1"),
            ns_ip: format!("169.254.{subnet}.2"),
        };
        let ns_if = format!("cv{tag}n{id}");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns_if,
        ])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", &ns_if, "up"])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`Netns::create`], or `None` (said on stderr) where namespaces cannot be made;
    /// under `CI` that fails the test instead.
    pub fn create_or_skip(tag: &str, subnet: u8) -> Option<Netns> {
        match Netns::create(tag, subnet) {
            Ok(ns) => Some(ns),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("network namespaces are unavailable under CI ({e}): run the tests as root")
            }
            Err(e) => {
                eprintln!(
                    "NOT RUN: network namespaces are unavailable here ({e}); this test needs `ip netns` as root"
                );
                None
            }
        }
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Takes the host's end of the link down or up.
    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).unwrap();
    }

    /// Shapes what the host sends into the namespace to `rate` (tc's notation, `20mbit`),
    /// queueing up to 64 MB rather than dropping: the senders' socket buffers fill
    /// instead, as behind a slow uplink.
    pub fn shape_towards(&self, rate: &str) -> Result<(), String> {
        run(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                &self.host_if,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kb",
                "limit",
                "64mb",
            ],
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
