//! What the SQL stores share: time and row conversions, error mapping, and the embedded
//! migrations' bookkeeping.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AccountId, KeyRecord, KeyStatus, StoreError};
use crate::key::{KeyDigest, KeyPrefix};

// ===== migrations =====

/// One schema change shipped with the crate, applied once per database by the store's
/// `migrate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

impl Migration {
    /// Identifies the migration's text, to notice a shipped migration that was edited after
    /// it was applied.
    pub(crate) fn checksum(&self) -> Vec<u8> {
        blake3::hash(self.sql.as_bytes()).as_bytes().to_vec()
    }
}

/// Why a store's `migrate` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum MigrateError {
    /// The database could not be reached or refused a statement.
    Database(Box<dyn std::error::Error + Send + Sync>),
    /// A migration this crate ships was applied with different text: the schema is not what
    /// this version of the crate expects.
    Modified {
        /// The migration's version.
        version: i64,
    },
    /// The database server is too old for the schema.
    UnsupportedServer(String),
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Database(source) => write!(f, "migration failed: {source}"),
            Self::Modified { version } => write!(
                f,
                "migration {version} was applied with different text than this version ships"
            ),
            Self::UnsupportedServer(why) => write!(f, "unsupported database server: {why}"),
        }
    }
}

impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Database(source) => Some(&**source),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for MigrateError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(Box::new(err))
    }
}

/// Checks the migrations already applied (`(version, checksum)`) against `shipped`, and
/// returns the ones still to apply, oldest first. Versions applied that this build doesn't
/// know come from a newer build sharing the database: they are left alone.
pub(crate) fn pending<'a>(
    shipped: &'a [Migration],
    applied: &[(i64, Vec<u8>)],
) -> Result<Vec<&'a Migration>, MigrateError> {
    let mut pending = Vec::new();
    for migration in shipped {
        match applied
            .iter()
            .find(|(version, _)| *version == migration.version)
        {
            Some((_, checksum)) if *checksum == migration.checksum() => {}
            Some(_) => {
                return Err(MigrateError::Modified {
                    version: migration.version,
                });
            }
            None => pending.push(migration),
        }
    }
    Ok(pending)
}

// ===== conversions =====

/// Microseconds since the Unix epoch, the precision every store keeps.
pub(crate) fn to_micros(time: SystemTime) -> Result<i64, StoreError> {
    let micros = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).ok(),
        Err(before) => i64::try_from(before.duration().as_micros())
            .ok()
            .map(|micros| -micros),
    };
    micros.ok_or_else(|| StoreError::unavailable("timestamp out of range"))
}

pub(crate) fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// A record's columns as the database keeps them, checked on the way back in.
pub(crate) struct RawRecord {
    pub(crate) id: uuid::Uuid,
    pub(crate) account_id: String,
    pub(crate) prefix: String,
    pub(crate) digest: Vec<u8>,
    pub(crate) status: String,
    pub(crate) created_at_us: i64,
    pub(crate) last_used_at_us: Option<i64>,
}

impl RawRecord {
    /// The record, or an error naming the column that isn't what the store writes (a row
    /// edited by hand): a fault, never a silently wrong answer.
    pub(crate) fn into_record(self) -> Result<KeyRecord, StoreError> {
        let corrupt = |column: &str| {
            StoreError::unavailable(format!("stored key {} has an invalid {column}", self.id))
        };
        let account_id = AccountId::new(&self.account_id).map_err(|_| corrupt("account_id"))?;
        let prefix: KeyPrefix = self.prefix.parse().map_err(|_| corrupt("prefix"))?;
        let digest: [u8; 32] = self
            .digest
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("digest"))?;
        let status = match self.status.as_str() {
            "active" => KeyStatus::Active,
            "inactive" => KeyStatus::Inactive,
            _ => return Err(corrupt("status")),
        };
        Ok(KeyRecord {
            id: super::KeyId::from_uuid(self.id),
            account_id,
            prefix,
            digest: KeyDigest::from_bytes(digest),
            status,
            created_at: from_micros(self.created_at_us),
            last_used_at: self.last_used_at_us.map(from_micros),
        })
    }
}

/// A unique violation on the prefix becomes [`StoreError::PrefixTaken`]; every other failure
/// is [`StoreError::Unavailable`].
pub(crate) fn store_error(err: sqlx::Error, prefix_constraint: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        let on_prefix = db.constraint() == Some(prefix_constraint)
            || (db.constraint().is_none() && db.message().contains(".prefix"));
        if db.is_unique_violation() && on_prefix {
            return StoreError::PrefixTaken;
        }
    }
    StoreError::unavailable(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_on_both_sides_of_the_epoch() {
        for micros in [0, 1, -1, 1_700_000_000_123_456, -62_135_596_800_000_000] {
            assert_eq!(to_micros(from_micros(micros)).expect("in range"), micros);
        }
    }

    #[test]
    fn edited_migrations_are_refused_and_unknown_newer_ones_left_alone() {
        const SHIPPED: [Migration; 2] = [
            Migration {
                version: 1,
                description: "one",
                sql: "SELECT 1",
            },
            Migration {
                version: 2,
                description: "two",
                sql: "SELECT 2",
            },
        ];
        let one = (1, SHIPPED[0].checksum());
        assert_eq!(pending(&SHIPPED, &[]).expect("fresh").len(), 2);
        let todo = pending(&SHIPPED, &[one.clone(), (99, vec![])]).expect("newer build");
        assert_eq!(todo.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
        assert!(matches!(
            pending(&SHIPPED, &[(1, vec![0; 32])]),
            Err(MigrateError::Modified { version: 1 })
        ));
    }
}
