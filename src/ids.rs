//! Who owns a key and which key it is: [`AccountId`] and [`KeyId`], as every store, the
//! manager, the audit trail and the admin API name them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

// ===== AccountId =====

/// The account that owns keys: 1 to 64 characters of `[A-Za-z0-9_-]`.
///
/// Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(Arc<str>);

/// An account id is empty, longer than 64 characters, or has a character outside
/// `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidAccountId;

impl fmt::Display for InvalidAccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("account id must be 1 to 64 characters of [A-Za-z0-9_-]")
    }
}

impl std::error::Error for InvalidAccountId {}

impl AccountId {
    /// Longest accepted account id, in characters.
    pub const MAX_LEN: usize = 64;

    /// Checks and wraps an account id.
    ///
    /// # Errors
    ///
    /// [`InvalidAccountId`] unless `id` is 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub fn new(id: &str) -> Result<Self, InvalidAccountId> {
        let valid = (1..=Self::MAX_LEN).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(Arc::from(id)))
        } else {
            Err(InvalidAccountId)
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountId {
    type Err = InvalidAccountId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({:?})", &*self.0)
    }
}

// ===== KeyId =====

/// A key's permanent id (a random UUID). It survives rotation, unlike the prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(uuid::Uuid);

/// A key id is not a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidKeyId;

impl fmt::Display for InvalidKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("key id must be a uuid")
    }
}

impl std::error::Error for InvalidKeyId {}

impl KeyId {
    /// A new random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Wraps a UUID read back from a store.
    pub const fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    /// The id as a UUID, for a store to write.
    pub const fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self).map_err(|_| InvalidKeyId)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.hyphenated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_accepts_the_documented_alphabet_only() {
        assert!(AccountId::new("acme_corp-1").is_ok());
        assert!(AccountId::new(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "é", "a/b", "a.b", &"a".repeat(65)] {
            assert_eq!(AccountId::new(bad), Err(InvalidAccountId), "{bad:?}");
        }
    }

    #[test]
    fn key_id_round_trips_through_text() {
        let id = KeyId::random();
        assert_eq!(id.to_string().parse::<KeyId>(), Ok(id));
        assert_eq!("nope".parse::<KeyId>(), Err(InvalidKeyId));
    }
}
