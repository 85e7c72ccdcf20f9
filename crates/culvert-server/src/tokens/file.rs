//! The token file: reading it, and the commands that edit it (`culvert token new`,
//! `list`, `revoke`), each rewriting it atomically.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::entry::default_max_services;
use super::{generate_token, hash_token, unix_now, TokenEntry};

use crate::quota::TenantLimits;
use crate::roles::Role;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct TokenFile {
    #[serde(default, rename = "token")]
    pub(super) tokens: Vec<TokenEntry>,
    /// Limits shared by the tokens of a tenant, by tenant name (`[tenants.acme]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) tenants: BTreeMap<String, TenantLimits>,
}

/// Errors reading or writing the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// What is wrong, with line and key.
        message: String,
    },
    /// The file holds no tokens: a server would accept nobody, so it refuses to start.
    #[error("{0}: no tokens; create one with `culvert token new --name NAME --tokens {0}`")]
    Empty(String),
    /// A token name is used twice.
    #[error("token name {0:?} already exists")]
    Duplicate(String),
    /// No token of that name (to revoke).
    #[error("{path}: no token named {name:?}")]
    NotFound {
        /// File.
        path: String,
        /// The name asked for.
        name: String,
    },
    /// A new token's settings are invalid.
    #[error("{0}")]
    Invalid(String),
}

pub(super) fn read_file(path: &Path) -> Result<TokenFile, TokenError> {
    let p = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
        Err(source) => return Err(TokenError::Io { path: p, source }),
    };
    toml::from_str(&text).map_err(|e| TokenError::Parse {
        path: p,
        message: e.to_string(),
    })
}

/// "token name X is used twice", with the line of its second `name = ` when it can be found.
pub(super) fn duplicate_message(path: &Path, name: &str) -> String {
    let quoted = toml::Value::String(name.to_owned()).to_string();
    let line = std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .enumerate()
            .filter(|(_, l)| {
                let l = l.trim_start();
                l.starts_with("name") && l.trim_end().ends_with(&quoted)
            })
            .nth(1)
            .map(|(i, _)| i + 1)
    });
    match line {
        Some(n) => format!("token name {name:?} is used twice (again at line {n})"),
        None => format!("token name {name:?} is used twice"),
    }
}

/// What `culvert token new` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Token name.
    pub name: String,
    /// Tenant (the name when none).
    pub tenant: Option<String>,
    /// Roles asked for; none: the narrowest that fits the other settings ([`NewToken::roles`]).
    pub roles: Vec<Role>,
    /// Services it may register (all when empty).
    pub services: Vec<String>,
    /// Public port ranges it may request (the server's whole range when empty).
    pub ports: Vec<String>,
    /// Addresses or networks that may connect to its public ports (anyone when empty).
    pub public_clients: Vec<String>,
    /// Most services at once (the default when none).
    pub max_services: Option<usize>,
    /// Services of other tenants it may reach.
    pub access: Vec<String>,
    /// Time to live from now.
    pub ttl: Option<std::time::Duration>,
}

impl NewToken {
    /// The roles the token gets: those asked for, else the narrowest that fits the other
    /// settings: `access` alone makes an access-only token, registration limits (services,
    /// ports, public clients, max services) an agent token, both both, nothing an agent token.
    pub fn roles(&self) -> Vec<Role> {
        if !self.roles.is_empty() {
            let mut r = self.roles.clone();
            r.sort();
            r.dedup();
            return r;
        }
        let agent = !self.services.is_empty()
            || !self.ports.is_empty()
            || !self.public_clients.is_empty()
            || self.max_services.is_some();
        match (agent, self.access.is_empty()) {
            (_, true) => vec![Role::Agent],
            (false, false) => vec![Role::Access],
            (true, false) => vec![Role::Agent, Role::Access],
        }
    }
}

/// Creates a token as `new` describes, records its hash in `path` (created if missing;
/// rewritten atomically) and returns the token itself, which is never stored.
pub fn add_token(path: &Path, new: &NewToken) -> Result<String, TokenError> {
    let mut file = read_file(path)?;
    if file.tokens.iter().any(|t| t.name == new.name) {
        return Err(TokenError::Duplicate(new.name.clone()));
    }
    let (entry, token) = new_entry(new)?;
    file.tokens.push(entry);
    write_file(path, &file)?;
    Ok(token)
}

/// Creates a token as `new` describes: its entry (hash and permissions, validated) and the
/// token itself, which is never stored. [`add_token`] records the entry in a token file;
/// `culvert token new --cluster` in the cluster registry.
pub fn new_entry(new: &NewToken) -> Result<(TokenEntry, String), TokenError> {
    let token = generate_token();
    let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let entry = TokenEntry {
        name: new.name.clone(),
        tenant: new.tenant.clone(),
        roles: Some(new.roles()),
        sha256: hex::encode(hash_token(&token)),
        services: nonempty(&new.services),
        ports: nonempty(&new.ports),
        public_clients: nonempty(&new.public_clients),
        max_services: new.max_services.unwrap_or_else(default_max_services),
        max_ports: None,
        max_udp_flows: None,
        max_connections: None,
        access: nonempty(&new.access),
        expires: new
            .ttl
            .map(|t| unix_now().saturating_add(t.as_secs().max(1))),
    };
    entry.validate().map_err(TokenError::Invalid)?;
    Ok((entry, token))
}

/// The entries of a token file (hashes included), in file order.
pub fn list_tokens(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    Ok(read_file(path)?.tokens)
}

/// Removes the token `name` from `path`, rewriting the file atomically; a server watching
/// the file closes its sessions on its next reload.
pub fn revoke_token(path: &Path, name: &str) -> Result<(), TokenError> {
    let mut file = read_file(path)?;
    let before = file.tokens.len();
    file.tokens.retain(|t| t.name != name);
    if file.tokens.len() == before {
        return Err(TokenError::NotFound {
            path: path.display().to_string(),
            name: name.to_owned(),
        });
    }
    write_file(path, &file)
}

/// Writes the token file through a temporary file renamed over it, so a server reloading
/// it meanwhile reads the old file or the new one, never half of one. The file is readable
/// by its owner only (0600): hashes are not tokens, but what tokens exist and may do is
/// nobody else's business.
fn write_file(path: &Path, file: &TokenFile) -> Result<(), TokenError> {
    let text = toml::to_string_pretty(file).expect("token file serialises");
    let p = path.display().to_string();
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        // A leftover temporary file keeps its old mode through `open`: set it again.
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(
            format!("# Culvert tokens: only SHA-256 hashes are stored here.\n{text}").as_bytes(),
        )?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        TokenError::Io { path: p, source }
    })
}
