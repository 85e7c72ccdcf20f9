//! Agent tokens: random, shown once, stored only as SHA-256 hashes, compared in constant time.

use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use std::collections::BTreeMap;

use crate::names::{name_problem, valid_name};
use crate::quota::TenantLimits;
use crate::roles::Role;

/// Prefix that makes Culvert tokens recognisable (for secret scanners too).
pub const TOKEN_PREFIX: &str = "cvt_";

/// One token as stored in the token file: its name, hash and permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Human name (shown in logs and metrics instead of the token).
    pub name: String,
    /// Tenant the token belongs to: its services are `TENANT/NAME`, and it reaches its own
    /// tenant's services by bare name. The token's own name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What the token may do. Every role when absent (the rights token files had before
    /// roles existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
    /// Service names this token may register (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Public ports this token may request, as ranges like "30000-30010" (any in the server range when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
    /// Most services this token may hold at once, across all its sessions.
    #[serde(default = "default_max_services")]
    pub max_services: usize,
    /// Most public ports this token may hold at once, across all its sessions (only
    /// `max_services` bounds them when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ports: Option<usize>,
    /// Most UDP flows its services may hold at once, across all its sessions (the server's
    /// `udp_max_flows_per_token` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_udp_flows: Option<usize>,
    /// Most tunnel connections it may hold at once, across all its sessions (the server's
    /// `max_connections_per_token` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Services of other tenants this token may reach through access sessions and node
    /// tunnels: `"TENANT/NAME"`, `"TENANT/*"`, `"*"` for all, or a bare `"NAME"` (that name in
    /// whichever tenant holds it; refused when several do). Its own tenant needs no grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Vec<String>>,
    /// Unix time (seconds) after which the token is refused and its sessions are closed
    /// (within a second): a time-to-live the server enforces, whatever the client does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenEntry {
    /// Whether the token's time-to-live has run out at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|t| now >= t)
    }

    /// The tenant the token belongs to (its own name unless the file sets one).
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.name)
    }

    /// Whether the token holds `role` (an entry without `roles` holds every role).
    pub fn has_role(&self, role: Role) -> bool {
        match &self.roles {
            Some(r) => r.contains(&role),
            None => Role::ALL.contains(&role),
        }
    }

    /// The roles the token holds, for messages and listings.
    pub fn role_names(&self) -> String {
        let roles: Vec<&str> = match &self.roles {
            Some(r) => r.iter().map(|r| r.as_str()).collect(),
            None => Role::ALL.iter().map(|r| r.as_str()).collect(),
        };
        roles.join(",")
    }

    /// Whether this token may open streams to the service `name` of `tenant`: its own
    /// tenant's always, another's when `access` grants it.
    pub fn may_access(&self, tenant: &str, name: &str) -> bool {
        tenant == self.tenant() || self.grants(tenant, name)
    }

    /// Whether `access` grants the service `name` of `tenant`.
    pub fn grants(&self, tenant: &str, name: &str) -> bool {
        self.access
            .iter()
            .flatten()
            .any(|g| match g.split_once('/') {
                None => g == "*" || g == name,
                Some((t, n)) => t == tenant && (n == "*" || n == name),
            })
    }

    /// Checks what the types cannot: names, grants, port ranges and roles.
    fn validate(&self) -> Result<(), String> {
        let who = format!("token {}", crate::names::escape(&self.name));
        match &self.tenant {
            Some(t) if !valid_name(t) => return Err(format!("{who}: {}", name_problem("tenant", t))),
            Some(_) => {}
            None if !valid_name(&self.name) => {
                return Err(format!(
                    "{who}: without `tenant` the token's name is its tenant, and {}; set tenant = \"...\"",
                    name_problem("tenant", &self.name)
                ))
            }
            None => {}
        }
        for s in self.services.iter().flatten() {
            if !valid_name(s) {
                return Err(format!("{who}: services: {}", name_problem("service", s)));
            }
        }
        for g in self.access.iter().flatten() {
            let ok = g == "*"
                || match g.split_once('/') {
                    None => valid_name(g),
                    Some((t, n)) => valid_name(t) && (n == "*" || valid_name(n)),
                };
            if !ok {
                return Err(format!(
                    "{who}: access entry {} must be TENANT/NAME, TENANT/*, NAME or * (names of A-Z a-z 0-9 . _ -, 1 to 64 bytes)",
                    crate::names::escape(g)
                ));
            }
        }
        // A malformed port range must not silently widen the token to the whole range.
        for r in self.ports.iter().flatten() {
            r.parse::<crate::PortRange>()
                .map_err(|e| format!("{who}: ports: {e}"))?;
        }
        if self.roles.as_ref().is_some_and(|r| r.is_empty()) {
            return Err(format!(
                "{who}: roles is empty (give at least one of agent, access, node)"
            ));
        }
        Ok(())
    }
}

fn default_max_services() -> usize {
    64
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
    /// Limits shared by the tokens of a tenant, by tenant name (`[tenants.acme]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tenants: BTreeMap<String, TenantLimits>,
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

/// The tokens a server accepts, and the limits of their tenants.
#[derive(Debug, Clone, Default)]
pub struct TokenStore {
    entries: Vec<(TokenEntry, [u8; 32])>,
    tenants: BTreeMap<String, TenantLimits>,
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token: the prefix and 32 random bytes in hex.
pub fn generate_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{TOKEN_PREFIX}{}", hex::encode(b))
}

fn read_file(path: &Path) -> Result<TokenFile, TokenError> {
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
fn duplicate_message(path: &Path, name: &str) -> String {
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

impl TokenStore {
    /// Loads a token file; refuses one with no tokens, or with a name used twice.
    pub fn load(path: &Path) -> Result<TokenStore, TokenError> {
        let file = read_file(path)?;
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in file.tokens {
            // Two entries with one name would make sessions, quotas and revocation ambiguous.
            if !seen.insert(t.name.clone()) {
                return Err(TokenError::Parse {
                    path: path.display().to_string(),
                    message: duplicate_message(path, &t.name),
                });
            }
            let mut h = [0u8; 32];
            hex::decode_to_slice(&t.sha256, &mut h).map_err(|_| TokenError::Parse {
                path: path.display().to_string(),
                message: format!("token {:?}: sha256 must be 64 hex digits", t.name),
            })?;
            t.validate().map_err(|message| TokenError::Parse {
                path: path.display().to_string(),
                message,
            })?;
            entries.push((t, h));
        }
        if entries.is_empty() {
            return Err(TokenError::Empty(path.display().to_string()));
        }
        for t in file.tenants.keys() {
            if !valid_name(t) {
                return Err(TokenError::Parse {
                    path: path.display().to_string(),
                    message: format!("[tenants]: {}", name_problem("tenant", t)),
                });
            }
        }
        Ok(TokenStore {
            entries,
            tenants: file.tenants,
        })
    }

    /// A store from entries (tests, embedded use).
    pub fn from_tokens(tokens: &[(&str, &str)]) -> TokenStore {
        let entries = tokens
            .iter()
            .map(|(name, tok)| {
                let h = hash_token(tok);
                let e = TokenEntry {
                    name: (*name).to_owned(),
                    tenant: None,
                    roles: None,
                    sha256: hex::encode(h),
                    services: None,
                    ports: None,
                    max_services: default_max_services(),
                    max_ports: None,
                    max_udp_flows: None,
                    max_connections: None,
                    access: None,
                    expires: None,
                };
                (e, h)
            })
            .collect();
        TokenStore {
            entries,
            tenants: BTreeMap::new(),
        }
    }

    /// A store from full entries (tests and embedded use that need permissions).
    pub fn from_entries(tokens: Vec<(TokenEntry, &str)>) -> TokenStore {
        let entries = tokens
            .into_iter()
            .map(|(mut e, tok)| {
                let h = hash_token(tok);
                e.sha256 = hex::encode(h);
                (e, h)
            })
            .collect();
        TokenStore {
            entries,
            tenants: BTreeMap::new(),
        }
    }

    /// The same store with the tenant limits `tenants` (tests and embedded use).
    pub fn with_tenants(mut self, tenants: BTreeMap<String, TenantLimits>) -> TokenStore {
        self.tenants = tenants;
        self
    }

    /// The limits shared by the tokens of `tenant` (none when the file sets none).
    pub fn tenant_limits(&self, tenant: &str) -> TenantLimits {
        self.tenants.get(tenant).copied().unwrap_or_default()
    }

    /// Finds the entry whose hash matches `token`. Every entry is compared, in constant
    /// time, so timing reveals neither which entry matched nor how much of a hash did.
    pub fn check(&self, token: &str) -> Option<&TokenEntry> {
        let h = hash_token(token);
        let mut found = None;
        for (entry, stored) in &self.entries {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(entry);
            }
        }
        // An expired token gets the same answer as a wrong one.
        found.filter(|e| !e.expired(unix_now()))
    }

    /// Whether `entry` (same name and hash) is still in the store.
    pub fn contains(&self, entry: &TokenEntry) -> bool {
        self.current(entry).is_some()
    }

    /// The store's entry for the token of `entry` (same name and hash), with the rights
    /// the store gives it now: what a live session of that token follows after a reload.
    pub fn current(&self, entry: &TokenEntry) -> Option<&TokenEntry> {
        self.entries
            .iter()
            .map(|(e, _)| e)
            .find(|e| e.name == entry.name && e.sha256.eq_ignore_ascii_case(&entry.sha256))
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
    /// ports, max services) an agent token, both both, nothing an agent token.
    pub fn roles(&self) -> Vec<Role> {
        if !self.roles.is_empty() {
            let mut r = self.roles.clone();
            r.sort();
            r.dedup();
            return r;
        }
        let agent =
            !self.services.is_empty() || !self.ports.is_empty() || self.max_services.is_some();
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
    let token = generate_token();
    let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let entry = TokenEntry {
        name: new.name.clone(),
        tenant: new.tenant.clone(),
        roles: Some(new.roles()),
        sha256: hex::encode(hash_token(&token)),
        services: nonempty(&new.services),
        ports: nonempty(&new.ports),
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
    file.tokens.push(entry);
    write_file(path, &file)?;
    Ok(token)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_then_check() {
        let dir = std::env::temp_dir().join(format!("culvert-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(TokenStore::load(&path), Err(TokenError::Empty(_))));
        let new = |name: &str, access: &[&str]| NewToken {
            name: name.to_owned(),
            access: access.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let t1 = add_token(&path, &new("a", &[])).unwrap();
        let t2 = add_token(&path, &new("b", &["pg"])).unwrap();
        assert!(matches!(
            add_token(&path, &new("a", &[])),
            Err(TokenError::Duplicate(_))
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&t1) && !text.contains(&t2),
            "tokens never stored"
        );
        let store = TokenStore::load(&path).unwrap();
        assert_eq!(store.check(&t1).unwrap().name, "a");
        assert_eq!(store.check(&t2).unwrap().name, "b");
        assert!(store.check("cvt_wrong").is_none());
        assert!(store.check("").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_name_used_twice_is_refused_naming_the_second_line() {
        let dir = std::env::temp_dir().join(format!("culvert-tok-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let h = "0".repeat(64);
        std::fs::write(
            &path,
            format!(
                "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\n\n[[token]]\nname = \"b\"\nsha256 = \"{h}\"\n\n[[token]]\nname = \"a\"\nsha256 = \"{h}\"\n"
            ),
        )
        .unwrap();
        let e = TokenStore::load(&path).unwrap_err().to_string();
        assert!(e.contains("\"a\" is used twice (again at line 10)"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn load_text(tag: &str, body: &str) -> Result<TokenStore, TokenError> {
        let dir = std::env::temp_dir().join(format!("culvert-tok-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(&path, body).unwrap();
        let r = TokenStore::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn names_with_control_characters_are_refused_at_load_escaped() {
        let h = "0".repeat(64);
        // TOML escapes: the loaded strings hold ESC, a newline and BEL.
        for (field, value) in [
            ("tenant", r#""ac\u001b[31mme""#),
            ("services", r#"["p\ng"]"#),
            ("access", r#"["acme/p\u0007g"]"#),
        ] {
            let body = format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\n{field} = {value}\n");
            let e = load_text("ctl", &body).unwrap_err().to_string();
            assert!(e.contains("A-Z a-z 0-9 . _ -"), "{field}: {e}");
            assert!(
                !e.chars().any(|c| c.is_control()),
                "{field}: the error carries a raw control character: {e:?}"
            );
        }
        // A token without `tenant` is its own tenant: its name must then be a valid one.
        let body = format!("[[token]]\nname = \"alice smith\"\nsha256 = \"{h}\"\n");
        let e = load_text("ctl-name", &body).unwrap_err().to_string();
        assert!(e.contains("set tenant"), "{e}");
        let body =
            format!("[[token]]\nname = \"alice smith\"\ntenant = \"acme\"\nsha256 = \"{h}\"\nroles = [\"access\"]\n");
        let store = load_text("ctl-ok", &body).unwrap();
        assert_eq!(store.len(), 1);
        let body = format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nroles = [\"admin\"]\n");
        let e = load_text("ctl-role", &body).unwrap_err().to_string();
        assert!(e.contains("admin"), "{e}");
        let body = format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nroles = []\n");
        let e = load_text("ctl-noroles", &body).unwrap_err().to_string();
        assert!(e.contains("roles is empty"), "{e}");
    }

    #[test]
    fn tenant_limits_load_and_survive_a_rewrite() {
        let dir = std::env::temp_dir().join(format!("culvert-tok-ten-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let h = "0".repeat(64);
        std::fs::write(
            &path,
            format!("[[token]]\nname = \"a\"\ntenant = \"acme\"\nsha256 = \"{h}\"\nmax_connections = 3\n\n[tenants.acme]\nmax_services = 2\nmax_udp_flows = 9\n"),
        )
        .unwrap();
        let store = TokenStore::load(&path).unwrap();
        let acme = store.tenant_limits("acme");
        assert_eq!(acme.max_services, Some(2));
        assert_eq!(acme.max_udp_flows, Some(9));
        assert_eq!(acme.max_ports, None);
        assert_eq!(store.tenant_limits("globex"), TenantLimits::default());
        // `token new` rewrites the file: the tenants' limits stay.
        add_token(
            &path,
            &NewToken {
                name: "b".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let store = TokenStore::load(&path).unwrap();
        assert_eq!(store.tenant_limits("acme").max_services, Some(2));
        assert_eq!(list_tokens(&path).unwrap()[0].max_connections, Some(3));
        std::fs::write(
            &path,
            format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\n\n[tenants.\"a b\"]\nmax_services = 2\n"),
        )
        .unwrap();
        let e = TokenStore::load(&path).unwrap_err().to_string();
        assert!(e.contains("[tenants]"), "{e}");
        std::fs::write(
            &path,
            format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\n\n[tenants.a]\nmax_service = 2\n"),
        )
        .unwrap();
        assert!(TokenStore::load(&path).is_err(), "unknown keys are errors");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tenants_grants_and_roles() {
        let mut e = TokenStore::from_tokens(&[("alice", "t")]).entries[0]
            .0
            .clone();
        assert_eq!(e.tenant(), "alice", "an old entry is its own tenant");
        assert!(
            Role::ALL.iter().all(|r| e.has_role(*r)),
            "and keeps every right"
        );
        assert!(e.may_access("alice", "pg"));
        assert!(!e.may_access("acme", "pg"));
        e.tenant = Some("acme".into());
        e.roles = Some(vec![Role::Access]);
        e.access = Some(vec![
            "globex/pg".into(),
            "initech/*".into(),
            "legacy".into(),
        ]);
        assert!(e.may_access("acme", "anything"));
        assert!(e.may_access("globex", "pg") && !e.may_access("globex", "web"));
        assert!(e.may_access("initech", "web"));
        assert!(e.may_access("umbrella", "legacy"));
        assert!(!e.has_role(Role::Agent) && !e.has_role(Role::Node));
        assert_eq!(e.role_names(), "access");
    }

    #[test]
    fn new_tokens_get_the_narrowest_role_that_fits() {
        let t = |f: fn(&mut NewToken)| {
            let mut n = NewToken::default();
            f(&mut n);
            n.roles()
        };
        assert_eq!(t(|_| {}), vec![Role::Agent]);
        assert_eq!(t(|n| n.access = vec!["pg".into()]), vec![Role::Access]);
        assert_eq!(t(|n| n.ports = vec!["30000".into()]), vec![Role::Agent]);
        assert_eq!(
            t(|n| {
                n.access = vec!["pg".into()];
                n.services = vec!["web".into()];
            }),
            vec![Role::Agent, Role::Access]
        );
        assert_eq!(
            t(|n| n.roles = vec![Role::Node, Role::Agent, Role::Node]),
            vec![Role::Agent, Role::Node]
        );
    }

    #[test]
    fn revoke_rewrites_the_file_without_the_token() {
        let dir = std::env::temp_dir().join(format!("culvert-tok-rev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let _ = std::fs::remove_file(&path);
        let new = |name: &str| NewToken {
            name: name.to_owned(),
            tenant: Some("acme".into()),
            services: vec!["pg".into()],
            ports: vec!["30000-30010".into()],
            max_services: Some(3),
            ..Default::default()
        };
        let a = add_token(&path, &new("a")).unwrap();
        let b = add_token(&path, &new("b")).unwrap();
        let bad = NewToken {
            tenant: Some("a/b".into()),
            ..new("c")
        };
        assert!(matches!(
            add_token(&path, &bad),
            Err(TokenError::Invalid(_))
        ));
        let listed = list_tokens(&path).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].tenant(), "acme");
        assert_eq!(listed[0].max_services, 3);
        assert_eq!(listed[0].roles, Some(vec![Role::Agent]));
        revoke_token(&path, "a").unwrap();
        assert!(matches!(
            revoke_token(&path, "a"),
            Err(TokenError::NotFound { .. })
        ));
        let store = TokenStore::load(&path).unwrap();
        assert!(store.check(&a).is_none());
        assert_eq!(store.check(&b).unwrap().name, "b");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
