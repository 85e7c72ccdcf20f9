//! Service and tenant names, and how a stream target names a service (`NAME` in the
//! caller's own tenant, `TENANT/NAME` in another): one rule, checked wherever a name
//! enters (token file, Register from the wire, stream targets), so names are safe in logs.

/// Longest service or tenant name, in bytes.
pub const MAX_NAME: usize = 64;

/// Whether `name` is a valid service or tenant name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a name was refused, for error messages (the name itself escaped).
pub fn name_problem(what: &str, name: &str) -> String {
    format!(
        "{what} {} must be 1 to {MAX_NAME} bytes of A-Z a-z 0-9 . _ -",
        escape(name)
    )
}

/// A service as a stream target names it: its tenant (`None`: the caller's own) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef<'a> {
    /// Tenant named explicitly (`TENANT/NAME`), or none (bare `NAME`).
    pub tenant: Option<&'a str>,
    /// The service's name within its tenant.
    pub name: &'a str,
}

impl<'a> ServiceRef<'a> {
    /// Parses `NAME` or `TENANT/NAME`; `None` when either part is not a valid name.
    pub fn parse(target: &'a str) -> Option<ServiceRef<'a>> {
        let (tenant, name) = match target.split_once('/') {
            Some((t, n)) => (Some(t), n),
            None => (None, target),
        };
        (tenant.is_none_or(valid_name) && valid_name(name)).then_some(ServiceRef { tenant, name })
    }
}

/// `s` quoted with control and non-ASCII characters escaped (Rust's `{:?}` of a string):
/// what a peer sends can then neither forge log lines nor drive a terminal.
pub fn escape(s: &str) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_references() {
        assert!(valid_name("db-1.eu_west"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"x".repeat(65)));
        assert!(valid_name(&"x".repeat(64)));
        for bad in ["a b", "a/b", "a:b", "?a", "a\nb", "a\u{1b}[31m", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            ServiceRef::parse("pg"),
            Some(ServiceRef {
                tenant: None,
                name: "pg"
            })
        );
        assert_eq!(
            ServiceRef::parse("acme/pg"),
            Some(ServiceRef {
                tenant: Some("acme"),
                name: "pg"
            })
        );
        for bad in ["/pg", "acme/", "a/b/c", "acme/p\u{7}g", ""] {
            assert_eq!(ServiceRef::parse(bad), None, "{bad:?}");
        }
        assert_eq!(escape("a\u{1b}[31m\n"), "\"a\\u{1b}[31m\\n\"");
    }
}
