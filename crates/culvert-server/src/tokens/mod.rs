//! Agent tokens: random, shown once, stored only as SHA-256 hashes, compared in constant time.
//! One token's entry is in `entry`, the token file and the commands that edit it in `file`.

mod entry;
mod file;

use std::collections::BTreeMap;
use std::path::Path;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::quota::TenantLimits;

use entry::default_max_services;
pub use entry::{unix_now, TokenEntry};
pub use file::{add_token, list_tokens, new_entry, revoke_token, NewToken, TokenError};
use file::{duplicate_message, read_file};

use crate::names::{name_problem, valid_name};

/// Prefix that makes Culvert tokens recognisable (for secret scanners too).
pub const TOKEN_PREFIX: &str = "cvt_";

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
                    public_clients: None,
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

    /// A store from entries kept elsewhere than a file (the cluster's database). An entry
    /// that is invalid (bad hash, name, grant, range or role) or repeats a name is left out
    /// and logged: one bad row must not take every other token away.
    pub(crate) fn from_stored(stored: Vec<TokenEntry>) -> TokenStore {
        let mut entries = Vec::with_capacity(stored.len());
        let mut seen = std::collections::HashSet::new();
        for e in stored {
            let mut h = [0u8; 32];
            let problem = if !seen.insert(e.name.clone()) {
                Some("its name is used twice".to_owned())
            } else if hex::decode_to_slice(&e.sha256, &mut h).is_err() {
                Some("sha256 must be 64 hex digits".to_owned())
            } else {
                e.validate().err()
            };
            match problem {
                Some(problem) => tracing::warn!(token = %e.name, %problem, "token left out"),
                None => entries.push((e, h)),
            }
        }
        TokenStore {
            entries,
            tenants: BTreeMap::new(),
        }
    }

    /// Adds `entry` for `token`, unchecked (an entry the server makes itself).
    pub(crate) fn push(&mut self, mut entry: TokenEntry, token: &str) {
        let h = hash_token(token);
        entry.sha256 = hex::encode(h);
        self.entries.push((entry, h));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::Role;

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
