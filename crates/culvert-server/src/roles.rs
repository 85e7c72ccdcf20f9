//! What a token may do: publish services (`agent`), reach services through access streams
//! (`access`), and have the server dial its allow-list (`node`). An enum, so a further role
//! (say `http`) is one more variant.

use serde::{Deserialize, Serialize};

/// One right a token can hold; a token holds one or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Registers services (public ports or private ones): `culvert agent`, a node's reverse tunnels.
    Agent,
    /// Opens streams to services by name: `culvert access`, a node's forward tunnel to a service.
    Access,
    /// Has the server dial `HOST:PORT` on its allow-list: a node's forward tunnels to addresses.
    Node,
    /// Calls HTTP services through the server's HTTP ingress (never implied: a token file
    /// entry without `roles` does not hold it).
    Http,
}

impl Role {
    /// What a token file entry without `roles` holds (the rights of files from before roles).
    pub const ALL: [Role; 3] = [Role::Agent, Role::Access, Role::Node];

    /// Every role there is.
    pub const KNOWN: [Role; 4] = [Role::Agent, Role::Access, Role::Node, Role::Http];

    /// The role's name in token files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Access => "access",
            Role::Node => "node",
            Role::Http => "http",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::KNOWN
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected agent, access, node or http"))
    }
}
