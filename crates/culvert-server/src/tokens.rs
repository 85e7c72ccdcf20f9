//! Agent tokens: random, shown once, stored only as SHA-256 hashes, compared in constant time.

use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix that makes Culvert tokens recognisable (for secret scanners too).
pub const TOKEN_PREFIX: &str = "cvt_";

/// One token as stored in the token file: its name, hash and permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Human name (shown in logs and metrics instead of the token).
    pub name: String,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
    /// Service names this token may register (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Public ports this token may request, as ranges like "30000-30010" (any in the server range when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
    /// Most services this token may hold at once.
    #[serde(default = "default_max_services")]
    pub max_services: usize,
    /// Services this token may reach through access sessions and node tunnels (by name;
    /// `"*"` for all). None when absent: reaching a private service is never implied.
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

    /// Whether this token may open streams to the service `name`.
    pub fn may_access(&self, name: &str) -> bool {
        self.access.iter().flatten().any(|s| s == "*" || s == name)
    }
}

fn default_max_services() -> usize {
    64
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
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
}

/// The tokens a server accepts.
#[derive(Debug, Clone, Default)]
pub struct TokenStore {
    entries: Vec<(TokenEntry, [u8; 32])>,
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
            // A malformed port range must not silently widen the token to the whole range.
            for r in t.ports.iter().flatten() {
                r.parse::<crate::PortRange>()
                    .map_err(|e| TokenError::Parse {
                        path: path.display().to_string(),
                        message: format!("token {:?}: ports: {e}", t.name),
                    })?;
            }
            entries.push((t, h));
        }
        if entries.is_empty() {
            return Err(TokenError::Empty(path.display().to_string()));
        }
        Ok(TokenStore { entries })
    }

    /// A store from entries (tests, embedded use).
    pub fn from_tokens(tokens: &[(&str, &str)]) -> TokenStore {
        let entries = tokens
            .iter()
            .map(|(name, tok)| {
                let h = hash_token(tok);
                let e = TokenEntry {
                    name: (*name).to_owned(),
                    sha256: hex::encode(h),
                    services: None,
                    ports: None,
                    max_services: default_max_services(),
                    access: None,
                    expires: None,
                };
                (e, h)
            })
            .collect();
        TokenStore { entries }
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
        TokenStore { entries }
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
        self.entries
            .iter()
            .any(|(e, _)| e.name == entry.name && e.sha256.eq_ignore_ascii_case(&entry.sha256))
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

/// Creates a token named `name`, records its hash in `path` (created if missing) and returns
/// the token itself, which is never stored. `access` lists the services it may reach
/// through access sessions and node tunnels (none when empty); `ttl`, when given, makes
/// the server refuse it (and close its sessions) that long from now.
pub fn add_token(
    path: &Path,
    name: &str,
    access: &[String],
    ttl: Option<std::time::Duration>,
) -> Result<String, TokenError> {
    let mut file = read_file(path)?;
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(TokenError::Duplicate(name.to_owned()));
    }
    let token = generate_token();
    file.tokens.push(TokenEntry {
        name: name.to_owned(),
        sha256: hex::encode(hash_token(&token)),
        services: None,
        ports: None,
        max_services: default_max_services(),
        access: (!access.is_empty()).then(|| access.to_vec()),
        expires: ttl.map(|t| unix_now().saturating_add(t.as_secs().max(1))),
    });
    let text = toml::to_string_pretty(&file).expect("token file serialises");
    let p = path.display().to_string();
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(
        &tmp,
        format!("# Culvert tokens: only SHA-256 hashes are stored here.\n{text}"),
    )
    .and_then(|()| std::fs::rename(&tmp, path))
    .map_err(|source| TokenError::Io { path: p, source })?;
    Ok(token)
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
        let t1 = add_token(&path, "a", &[], None).unwrap();
        let t2 = add_token(&path, "b", &["pg".to_owned()], None).unwrap();
        assert!(matches!(
            add_token(&path, "a", &[], None),
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
}
