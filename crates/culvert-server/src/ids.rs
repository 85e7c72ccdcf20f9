//! Random ids for sessions, services and tunneled connections.

use uuid::Uuid;

/// A random (version 4) UUID drawn from the thread-local CSPRNG: `Uuid::new_v4` makes a
/// `getrandom` system call each time, once per public connection.
pub(crate) fn new_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_4_and_distinct() {
        let a = new_uuid();
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, new_uuid());
    }
}
