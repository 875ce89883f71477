//! What the SQL stores share: time and row conversions, error mapping, and the embedded
//! migrations' bookkeeping.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "postgres")]
use sqlx::types::time::OffsetDateTime;

use super::counts::{Hour, UsageDelta, UsageRow};
use super::{AccountId, KeyId, KeyRecord, KeyStatus, KeyUse, PreviousKey, StoreError};
use crate::audit::{Actor, AuditChanges, AuditEntry, AuditEvent, AuditId, AuditQuery};
use crate::key::{KeyDigest, KeyPrefix};
use crate::policy::{
    AllowedIps, KeyName, Metadata, PolicyUpdate, Quota, QuotaPeriod, RateLimit, Scopes,
};

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

/// What running the migrations needs to know about one database.
pub(crate) trait Dialect {
    /// The database.
    type Database: sqlx::Database;

    /// Creates the bookkeeping table, `tower_api_keys_migrations`, if it's missing. Its
    /// definition never changes: databases migrated by earlier versions keep working.
    const CREATE_BOOKKEEPING: &'static str;

    /// Records an applied migration: binds its version, description and checksum; the
    /// statement stamps the time itself.
    const RECORD_APPLIED: &'static str;

    /// Starts the transaction the migrations run in, holding from its start a lock that
    /// keeps every other `migrate` on the database waiting until it ends; refuses a server
    /// the schema doesn't support.
    async fn begin_exclusive(
        pool: &sqlx::Pool<Self::Database>,
    ) -> Result<sqlx::Transaction<'static, Self::Database>, MigrateError>;
}

/// Applies the migrations of `shipped` that the database lacks, oldest first, in one
/// exclusive transaction opened by `D`: safe to run at every start, from any number of
/// processes at once, and all or nothing.
pub(crate) async fn migrate<D: Dialect>(
    pool: &sqlx::Pool<D::Database>,
    shipped: &[Migration],
) -> Result<(), MigrateError>
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
    for<'q> <D::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Database>,
    for<'q> i64: sqlx::Encode<'q, D::Database> + sqlx::Type<D::Database>,
    for<'q> &'q str: sqlx::Encode<'q, D::Database> + sqlx::Type<D::Database>,
    for<'q> Vec<u8>: sqlx::Encode<'q, D::Database> + sqlx::Type<D::Database>,
    for<'r> (i64, Vec<u8>): sqlx::FromRow<'r, <D::Database as sqlx::Database>::Row>,
{
    let mut tx = D::begin_exclusive(pool).await?;
    // Through `Executor::execute`: `RawSql::execute`'s future isn't `Send` here.
    sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(D::CREATE_BOOKKEEPING)).await?;
    let applied: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM tower_api_keys_migrations")
            .fetch_all(&mut *tx)
            .await?;
    for migration in pending(shipped, &applied)? {
        sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(migration.sql)).await?;
        sqlx::query(D::RECORD_APPLIED)
            .bind(migration.version)
            .bind(migration.description)
            .bind(migration.checksum())
            .execute(&mut *tx)
            .await?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "applied migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

// ===== conversions =====

/// The names of the unique constraints (PostgreSQL) and index (SQLite) on the current and
/// the previous prefix; a violation of either means "prefix taken".
const PREFIX_CONSTRAINTS: [&str; 2] = [
    "tower_api_keys_prefix_key",
    "tower_api_keys_previous_prefix_key",
];

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

/// A PostgreSQL `timestamptz` as a time, exactly: both hold whole microseconds.
#[cfg(feature = "postgres")]
pub(crate) fn to_timestamp(time: SystemTime) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(to_micros(time)?) * 1000)
        .map_err(|_| StoreError::unavailable("timestamp out of range"))
}

#[cfg(feature = "postgres")]
pub(crate) fn from_timestamp(timestamp: OffsetDateTime) -> Result<SystemTime, StoreError> {
    i64::try_from(timestamp.unix_timestamp_nanos() / 1000)
        .map(from_micros)
        .map_err(|_| StoreError::unavailable("timestamp out of range"))
}

/// A `timestamptz` column read through sqlx's `time` support, which panics on a value
/// outside the `time` crate's years -9999 to 9999 (`infinity`, say, in a row edited by hand):
/// such a value is a decoding error here, like any other unreadable column.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgTimestamp(pub(crate) OffsetDateTime);

#[cfg(feature = "postgres")]
impl sqlx::Type<sqlx::Postgres> for PgTimestamp {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <OffsetDateTime as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <OffsetDateTime as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

#[cfg(feature = "postgres")]
impl<'r> sqlx::Decode<'r, sqlx::Postgres> for PgTimestamp {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        /// PostgreSQL's epoch, 2000-01-01, in microseconds since the Unix epoch.
        const PG_EPOCH_US: i128 = 946_684_800_000_000;
        if value.format() == sqlx::postgres::PgValueFormat::Binary {
            // Microseconds since PostgreSQL's epoch; sqlx would add them unchecked.
            let micros: i64 = sqlx::Decode::<sqlx::Postgres>::decode(value.clone())?;
            OffsetDateTime::from_unix_timestamp_nanos((PG_EPOCH_US + i128::from(micros)) * 1000)?;
        }
        <OffsetDateTime as sqlx::Decode<sqlx::Postgres>>::decode(value).map(Self)
    }
}

/// A time column as a store keeps it.
pub(crate) trait StoredTime {
    /// The time it stands for, or `None` if no `SystemTime` can hold it.
    fn into_time(self) -> Option<SystemTime>;
}

/// SQLite: integer microseconds since the Unix epoch.
impl StoredTime for i64 {
    fn into_time(self) -> Option<SystemTime> {
        Some(from_micros(self))
    }
}

#[cfg(feature = "postgres")]
impl StoredTime for PgTimestamp {
    fn into_time(self) -> Option<SystemTime> {
        from_timestamp(self.0).ok()
    }
}

/// A scope list as a store keeps it.
pub(crate) trait StoredScopes {
    /// The scopes it stands for, or `None` if it isn't a valid scope list.
    fn into_scopes(self) -> Option<Scopes>;
}

/// SQLite: the scopes joined by single spaces; `""` is the empty set.
impl StoredScopes for String {
    fn into_scopes(self) -> Option<Scopes> {
        if self.is_empty() {
            return Scopes::new(Vec::<&str>::new()).ok();
        }
        Scopes::new(self.split(' ')).ok()
    }
}

/// PostgreSQL: a `text[]`.
impl StoredScopes for Vec<String> {
    fn into_scopes(self) -> Option<Scopes> {
        Scopes::new(self).ok()
    }
}

/// `scopes` as SQLite keeps them: joined by single spaces (a scope holds none).
#[cfg(feature = "sqlite")]
pub(crate) fn joined_scopes(scopes: &Scopes) -> String {
    scopes.iter().collect::<Vec<_>>().join(" ")
}

/// A rate limit as the two columns `rate_limit_requests` and `rate_limit_per_seconds` keep
/// it: both set, or both `NULL`. Bound as `i32`, which every database here can read back.
pub(crate) fn rate_limit_columns(limit: Option<RateLimit>) -> (Option<i32>, Option<i32>) {
    // Within `RateLimit`'s ranges, both fit an `i32`; the columns' checks refuse anything else.
    let column = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    (
        limit.map(|limit| column(limit.requests())),
        limit.map(|limit| column(limit.per_seconds())),
    )
}

/// A quota as the two columns `quota_requests` and `quota_period` keep it: both set, or both
/// `NULL`.
pub(crate) fn quota_columns(quota: Option<Quota>) -> (Option<i32>, Option<&'static str>) {
    // Within `Quota`'s range, the requests fit an `i32`; the column's check refuses more.
    let requests = quota.map(|quota| i32::try_from(quota.requests()).unwrap_or(i32::MAX));
    (requests, quota.map(|quota| quota.period().as_str()))
}

/// An allowlist as the column `allowed_ips` keeps it: its blocks joined by single spaces.
pub(crate) fn joined_addresses(allowed: &AllowedIps) -> String {
    let blocks: Vec<String> = allowed.iter().map(ToString::to_string).collect();
    blocks.join(" ")
}

/// A record's columns as the database keeps them (the id as `Id`, times as `Time`, the scope
/// list as `ScopeList`, the rate limit's and quota's integers as `Count`), checked on the
/// way back in. Read with `query_as` from the columns `id`, `account_id`, `prefix`,
/// `digest`, `status`, `created_at`, `last_used_at`, `name`, `scopes`, `expires_at`,
/// `rate_limit_requests`, `rate_limit_per_seconds`, `quota_requests`, `quota_period`,
/// `allowed_ips`, `metadata`, `previous_prefix`, `previous_digest` and
/// `previous_expires_at`.
pub(crate) struct RawRecord<Id, Time, ScopeList, Count> {
    id: Id,
    account_id: String,
    prefix: String,
    digest: Vec<u8>,
    status: String,
    created_at: Time,
    last_used_at: Option<Time>,
    name: Option<String>,
    scopes: Option<ScopeList>,
    expires_at: Option<Time>,
    rate_limit_requests: Option<Count>,
    rate_limit_per_seconds: Option<Count>,
    quota_requests: Option<Count>,
    quota_period: Option<String>,
    allowed_ips: Option<String>,
    metadata: Option<String>,
    previous_prefix: Option<String>,
    previous_digest: Option<Vec<u8>>,
    previous_expires_at: Option<Time>,
}

/// Written once for every database whose driver decodes the column types: the per-database
/// part is only which `Id`, `Time`, `ScopeList` and `Count` a store names.
impl<'r, R, Id, Time, ScopeList, Count> sqlx::FromRow<'r, R>
    for RawRecord<Id, Time, ScopeList, Count>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    Id: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Time: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    ScopeList: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Count: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            prefix: row.try_get("prefix")?,
            digest: row.try_get("digest")?,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
            last_used_at: row.try_get("last_used_at")?,
            name: row.try_get("name")?,
            scopes: row.try_get("scopes")?,
            expires_at: row.try_get("expires_at")?,
            rate_limit_requests: row.try_get("rate_limit_requests")?,
            rate_limit_per_seconds: row.try_get("rate_limit_per_seconds")?,
            quota_requests: row.try_get("quota_requests")?,
            quota_period: row.try_get("quota_period")?,
            allowed_ips: row.try_get("allowed_ips")?,
            metadata: row.try_get("metadata")?,
            previous_prefix: row.try_get("previous_prefix")?,
            previous_digest: row.try_get("previous_digest")?,
            previous_expires_at: row.try_get("previous_expires_at")?,
        })
    }
}

impl<Id: Into<uuid::Uuid>, Time: StoredTime, ScopeList: StoredScopes, Count: Into<i64>>
    RawRecord<Id, Time, ScopeList, Count>
{
    /// The record, or an error naming the column that isn't what the store writes (a row
    /// edited by hand): a fault, never a silently wrong answer.
    pub(crate) fn into_record(self) -> Result<KeyRecord, StoreError> {
        let id: uuid::Uuid = self.id.into();
        let corrupt = |column: &str| {
            StoreError::unavailable(format!("stored key {id} has an invalid {column}"))
        };
        let time = |at: Option<Time>, column: &str| match at {
            Some(at) => at.into_time().map(Some).ok_or_else(|| corrupt(column)),
            None => Ok(None),
        };
        let digest = |bytes: &[u8], column: &str| {
            <[u8; 32]>::try_from(bytes)
                .map(KeyDigest::from_bytes)
                .map_err(|_| corrupt(column))
        };
        let account_id = AccountId::new(&self.account_id).map_err(|_| corrupt("account_id"))?;
        let prefix: KeyPrefix = self.prefix.parse().map_err(|_| corrupt("prefix"))?;
        let status = match self.status.as_str() {
            "active" => KeyStatus::Active,
            "inactive" => KeyStatus::Inactive,
            _ => return Err(corrupt("status")),
        };
        let created_at = self
            .created_at
            .into_time()
            .ok_or_else(|| corrupt("created_at"))?;
        let name = match self.name {
            Some(name) => Some(KeyName::new(&name).map_err(|_| corrupt("name"))?),
            None => None,
        };
        let scopes = match self.scopes {
            Some(scopes) => Some(scopes.into_scopes().ok_or_else(|| corrupt("scopes"))?),
            None => None,
        };
        // A `u32`, or an error naming the column; the ranges are `RateLimit::new`'s.
        let count =
            |value: Count, column: &str| u32::try_from(value.into()).map_err(|_| corrupt(column));
        let rate_limit = match (self.rate_limit_requests, self.rate_limit_per_seconds) {
            (None, None) => None,
            (Some(requests), Some(per_seconds)) => {
                let requests = count(requests, "rate_limit_requests")?;
                let per_seconds = count(per_seconds, "rate_limit_per_seconds")?;
                let limit = RateLimit::new(requests, per_seconds).map_err(|_| {
                    // The requests, unless they would pass with any valid window.
                    corrupt(if RateLimit::new(requests, 1).is_ok() {
                        "rate_limit_per_seconds"
                    } else {
                        "rate_limit_requests"
                    })
                })?;
                Some(limit)
            }
            _ => {
                return Err(corrupt(
                    "rate limit (rate_limit_requests and rate_limit_per_seconds must be both \
                     set or both NULL)",
                ));
            }
        };
        let quota = match (self.quota_requests, self.quota_period) {
            (None, None) => None,
            (Some(requests), Some(period)) => {
                let requests = count(requests, "quota_requests")?;
                let period: QuotaPeriod = period.parse().map_err(|_| corrupt("quota_period"))?;
                Some(Quota::new(requests, period).map_err(|_| corrupt("quota_requests"))?)
            }
            _ => {
                return Err(corrupt(
                    "quota (quota_requests and quota_period must be both set or both NULL)",
                ));
            }
        };
        let allowed_ips = match self.allowed_ips {
            Some(joined) => {
                Some(AllowedIps::new(joined.split(' ')).map_err(|_| corrupt("allowed_ips"))?)
            }
            None => None,
        };
        let metadata = match self.metadata {
            Some(json) => Some(Metadata::from_json(&json).map_err(|_| corrupt("metadata"))?),
            None => None,
        };
        let previous = match (
            self.previous_prefix,
            self.previous_digest,
            self.previous_expires_at,
        ) {
            (None, None, None) => None,
            (Some(prefix), Some(bytes), Some(expires_at)) => Some(PreviousKey {
                prefix: prefix.parse().map_err(|_| corrupt("previous_prefix"))?,
                digest: digest(&bytes, "previous_digest")?,
                expires_at: expires_at
                    .into_time()
                    .ok_or_else(|| corrupt("previous_expires_at"))?,
            }),
            _ => {
                return Err(corrupt(
                    "previous key (previous_prefix, previous_digest and previous_expires_at \
                     must be all set or all NULL)",
                ));
            }
        };
        Ok(KeyRecord {
            id: super::KeyId::from_uuid(id),
            account_id,
            prefix,
            digest: digest(&self.digest, "digest")?,
            status,
            created_at,
            last_used_at: time(self.last_used_at, "last_used_at")?,
            name,
            scopes,
            expires_at: time(self.expires_at, "expires_at")?,
            rate_limit,
            quota,
            allowed_ips,
            metadata,
            previous,
        })
    }
}

/// The binds of a policy update's `UPDATE`, after the statement's own `$1`/`$2`: for name,
/// scopes and expiry in turn, whether to set the field, then its new value (`NULL` clears
/// it); then whether to set the rate limit, and its requests and window (both `NULL` clear
/// it); then whether to set the quota, and its requests and period (both `NULL` clear it);
/// then, for the allowlist and the metadata in turn, whether to set it and its text. `scopes`
/// and `time` say how this database keeps a scope list and a time.
pub(crate) fn bind_policy<'q, DB, O, S, T>(
    query: sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>,
    update: &'q PolicyUpdate,
    scopes: impl Fn(&Scopes) -> S,
    time: impl Fn(SystemTime) -> Result<T, StoreError>,
) -> Result<sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>, StoreError>
where
    DB: sqlx::Database,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<S>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<T>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i32>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    S: 'q,
    T: 'q,
{
    let name = update.name.as_ref().and_then(|name| name.as_ref());
    let new_scopes = update.scopes.as_ref().and_then(|s| s.as_ref().map(scopes));
    let (requests, per_seconds) = rate_limit_columns(update.rate_limit.flatten());
    let (quota_requests, quota_period) = quota_columns(update.quota.flatten());
    let allowed = update
        .allowed_ips
        .as_ref()
        .and_then(|a| a.as_ref().map(joined_addresses));
    let metadata = update
        .metadata
        .as_ref()
        .and_then(|m| m.as_ref().map(Metadata::as_json));
    Ok(query
        .bind(update.name.is_some())
        .bind(name.map(KeyName::as_str))
        .bind(update.scopes.is_some())
        .bind(new_scopes)
        .bind(update.expires_at.is_some())
        .bind(update.expires_at.flatten().map(time).transpose()?)
        .bind(update.rate_limit.is_some())
        .bind(requests)
        .bind(per_seconds)
        .bind(update.quota.is_some())
        .bind(quota_requests)
        .bind(quota_period)
        .bind(update.allowed_ips.is_some())
        .bind(allowed)
        .bind(update.metadata.is_some())
        .bind(metadata))
}

// ===== usage =====

/// The columns of `tower_api_keys_usage`'s key, in the key's order: account, hour, key.
pub(crate) type UsageKey<'a> = (&'a str, u32, uuid::Uuid);

/// The latest of `uses` for each key and prefix, in key order: a flush moves each key's
/// `last_used_at` once, and every process meets the rows in this one order.
pub(crate) fn latest_uses(uses: &[KeyUse]) -> BTreeMap<(KeyId, KeyPrefix), SystemTime> {
    let mut latest: BTreeMap<(KeyId, KeyPrefix), SystemTime> = BTreeMap::new();
    for key_use in uses {
        latest
            .entry((key_use.id, key_use.prefix))
            .and_modify(|kept| *kept = (*kept).max(key_use.at))
            .or_insert(key_use.at);
    }
    latest
}

/// What one flush adds to each row of `tower_api_keys_usage` (accepted, rate limited,
/// refused): `counts` summed per account, hour and key (saturating), in the order of the
/// table's key, compared bytewise. Every process writes rows in this one order, whatever the
/// database's collation, so two flushes of overlapping rows wait for each other instead of
/// deadlocking.
pub(crate) fn coalesced_counts(counts: &[UsageDelta]) -> BTreeMap<UsageKey<'_>, [i64; 3]> {
    let mut rows: BTreeMap<UsageKey<'_>, [i64; 3]> = BTreeMap::new();
    for delta in counts {
        let key = (
            delta.account_id.as_str(),
            delta.hour.index(),
            *delta.key_id.as_uuid(),
        );
        let sums = rows.entry(key).or_default();
        for (sum, add) in sums
            .iter_mut()
            .zip([delta.accepted, delta.rate_limited, delta.refused])
        {
            *sum = sum.saturating_add(add);
        }
    }
    rows
}

/// A row of `tower_api_keys_usage` as the database keeps it (the key's id as `Id`), checked
/// on the way back in. Read with `query_as` from the columns `key_id`, `hour`, `accepted`,
/// `rate_limited` and `refused`.
pub(crate) struct RawUsage<Id> {
    key_id: Id,
    hour: i64,
    accepted: i64,
    rate_limited: i64,
    refused: i64,
}

impl<'r, R, Id> sqlx::FromRow<'r, R> for RawUsage<Id>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    Id: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            key_id: row.try_get("key_id")?,
            hour: row.try_get("hour")?,
            accepted: row.try_get("accepted")?,
            rate_limited: row.try_get("rate_limited")?,
            refused: row.try_get("refused")?,
        })
    }
}

impl<Id: Into<uuid::Uuid>> RawUsage<Id> {
    /// The row, or an error naming the column that isn't what the store writes (a row edited
    /// by hand). Any sum is a valid count: one below zero reads as zero.
    pub(crate) fn into_row(self) -> Result<UsageRow, StoreError> {
        let key_id = super::KeyId::from_uuid(self.key_id.into());
        let hour = u32::try_from(self.hour).map_err(|_| {
            StoreError::unavailable(format!("stored usage of key {key_id} has an invalid hour"))
        })?;
        Ok(UsageRow::from_sums(
            key_id,
            Hour::from_index(hour),
            self.accepted,
            self.rate_limited,
            self.refused,
        ))
    }
}

// ===== audit =====

/// The binds of an insert of one entry into `tower_api_keys_audit`, in the order of the
/// columns `at`, `account_id`, `key_id`, `prefix`, `action`, `actor`, `outcome` and
/// `changes`. `key_id` and `time` say how this database keeps a key id and a time.
pub(crate) fn bind_entry<'q, DB, K, T>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    entry: &'q AuditEntry,
    key_id: impl Fn(KeyId) -> K,
    time: impl Fn(SystemTime) -> Result<T, StoreError>,
) -> Result<sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>, StoreError>
where
    DB: sqlx::Database,
    T: sqlx::Encode<'q, DB> + sqlx::Type<DB> + 'q,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<K>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    K: 'q,
{
    Ok(query
        .bind(time(entry.at)?)
        .bind(entry.account.as_str())
        .bind(entry.key_id.map(key_id))
        .bind(entry.prefix.as_ref().map(KeyPrefix::as_str))
        .bind(entry.action.as_str())
        .bind(entry.actor.as_str())
        .bind(entry.outcome.as_str())
        .bind(entry.changes.to_json()))
}

/// A page of `account`'s trail, read with `statement`: its binds are the account, the
/// number the entries are below (`i64::MAX` without `before`: every number a database hands
/// out is below it), `since` as this database keeps a time, and the most entries to read.
pub(crate) async fn audit_page<DB, Id, Time, T>(
    pool: &sqlx::Pool<DB>,
    statement: &'static str,
    account: &AccountId,
    query: &AuditQuery,
    since: T,
) -> Result<Vec<AuditEvent>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> T: sqlx::Encode<'q, DB> + sqlx::Type<DB> + Send + 'q,
    for<'r> RawAudit<Id, Time>: sqlx::FromRow<'r, DB::Row>,
    RawAudit<Id, Time>: Send + Unpin,
    Id: Into<uuid::Uuid>,
    Time: StoredTime,
{
    let before = query
        .before
        .map_or(i64::MAX, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
    let rows: Vec<RawAudit<Id, Time>> = sqlx::query_as(statement)
        .bind(account.as_str())
        .bind(before)
        .bind(since)
        .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(store_error)?;
    rows.into_iter().map(RawAudit::into_event).collect()
}

/// A row of `tower_api_keys_audit` as the database keeps it (the key id as `Id`, the time
/// as `Time`), checked on the way back in. Read with `query_as` from the columns `id`, `at`,
/// `account_id`, `key_id`, `prefix`, `action`, `actor`, `outcome` and `changes`.
pub(crate) struct RawAudit<Id, Time> {
    id: i64,
    at: Time,
    account_id: String,
    key_id: Option<Id>,
    prefix: Option<String>,
    action: String,
    actor: String,
    outcome: String,
    changes: String,
}

impl<'r, R, Id, Time> sqlx::FromRow<'r, R> for RawAudit<Id, Time>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    Id: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Time: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            at: row.try_get("at")?,
            account_id: row.try_get("account_id")?,
            key_id: row.try_get("key_id")?,
            prefix: row.try_get("prefix")?,
            action: row.try_get("action")?,
            actor: row.try_get("actor")?,
            outcome: row.try_get("outcome")?,
            changes: row.try_get("changes")?,
        })
    }
}

impl<Id: Into<uuid::Uuid>, Time: StoredTime> RawAudit<Id, Time> {
    /// The entry, or an error naming the column that isn't what the store writes (a row
    /// edited by hand).
    pub(crate) fn into_event(self) -> Result<AuditEvent, StoreError> {
        let id = self.id;
        let corrupt = |column: &str| {
            StoreError::unavailable(format!("stored audit entry {id} has an invalid {column}"))
        };
        let number = u64::try_from(id)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| corrupt("id"))?;
        let key = match (self.key_id, self.prefix) {
            (None, None) => None,
            (Some(key_id), Some(prefix)) => Some((
                KeyId::from_uuid(key_id.into()),
                prefix.parse::<KeyPrefix>().map_err(|_| corrupt("prefix"))?,
            )),
            _ => {
                return Err(corrupt(
                    "key (key_id and prefix must be both set or both NULL)",
                ));
            }
        };
        let entry = AuditEntry {
            at: self.at.into_time().ok_or_else(|| corrupt("at"))?,
            account: AccountId::new(&self.account_id).map_err(|_| corrupt("account_id"))?,
            key_id: key.map(|(id, _)| id),
            prefix: key.map(|(_, prefix)| prefix),
            action: self.action.parse().map_err(|_| corrupt("action"))?,
            actor: Actor::new(&self.actor).map_err(|_| corrupt("actor"))?,
            outcome: self.outcome.parse().map_err(|_| corrupt("outcome"))?,
            changes: AuditChanges::from_json(&self.changes).map_err(|_| corrupt("changes"))?,
        };
        Ok(AuditEvent::new(AuditId::new(number), entry))
    }
}

/// A unique violation on the current or the previous prefix becomes
/// [`StoreError::PrefixTaken`]; every other failure is [`StoreError::Unavailable`]. The
/// constraints are found by name where the database reports it (PostgreSQL), by the column
/// in the message otherwise (SQLite).
pub(crate) fn store_error(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        let on_prefix = match db.constraint() {
            Some(constraint) => PREFIX_CONSTRAINTS.contains(&constraint),
            None => [".prefix", ".previous_prefix"]
                .iter()
                .any(|column| db.message().contains(column)),
        };
        if db.is_unique_violation() && on_prefix {
            return StoreError::PrefixTaken;
        }
    }
    StoreError::unavailable(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICROS: [i64; 5] = [0, 1, -1, 1_700_000_000_123_456, -62_135_596_800_000_000];

    #[test]
    fn micros_round_trip_on_both_sides_of_the_epoch() {
        for micros in MICROS {
            assert_eq!(to_micros(from_micros(micros)).expect("in range"), micros);
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn timestamps_round_trip_on_both_sides_of_the_epoch() {
        for micros in MICROS {
            let time = from_micros(micros);
            let timestamp = to_timestamp(time).expect("in range");
            assert_eq!(timestamp.unix_timestamp_nanos(), i128::from(micros) * 1000);
            assert_eq!(from_timestamp(timestamp).expect("in range"), time);
        }
        // Below a microsecond is cut off, toward the epoch, as `to_micros` does.
        let late = UNIX_EPOCH + Duration::from_nanos(1_999);
        assert_eq!(
            from_timestamp(to_timestamp(late).expect("in range")).expect("back"),
            from_micros(1)
        );
        let early = UNIX_EPOCH - Duration::from_nanos(1_999);
        assert_eq!(
            from_timestamp(to_timestamp(early).expect("in range")).expect("back"),
            from_micros(-1)
        );
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
