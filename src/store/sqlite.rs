//! Keys in a SQLite database file, for one process (feature `sqlite`).

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditEvent, AuditNote, AuditQuery};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::counts::{Hour, UsageBatch, UsageRow};
use super::sql::{self, MigrateError, Migration, RawRecord, RawUsage};
use super::{AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, Rotated, StoreError};
use crate::key::{KeyDigest, KeyPrefix};
use crate::policy::{KeyName, Metadata, PolicyUpdate};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "tower_api_keys table",
        sql: include_str!("../../migrations/sqlite/0001_tower_api_keys.sql"),
    },
    Migration {
        version: 2,
        description: "key policy: name, scopes, expiry, previous key",
        sql: include_str!("../../migrations/sqlite/0002_key_policy.sql"),
    },
    Migration {
        version: 3,
        description: "key rate limit",
        sql: include_str!("../../migrations/sqlite/0003_rate_limit.sql"),
    },
    Migration {
        version: 4,
        description: "usage counts per key and hour",
        sql: include_str!("../../migrations/sqlite/0004_usage.sql"),
    },
    Migration {
        version: 5,
        description: "key quota, address allowlist and metadata",
        sql: include_str!("../../migrations/sqlite/0005_allowlist_metadata_quota.sql"),
    },
    Migration {
        version: 6,
        description: "audit trail",
        sql: include_str!("../../migrations/sqlite/0006_audit.sql"),
    },
];

/// A row as stored: the id as hyphenated text, times as integer microseconds, scopes joined
/// by spaces, the rate limit as two integers.
type Row = RawRecord<uuid::fmt::Hyphenated, i64, String, i64>;

/// A whole record's columns, under the names [`RawRecord`] reads (a macro, for `concat!`).
macro_rules! columns {
    () => {
        "id, account_id, prefix, digest, status, \
         created_at_us AS created_at, last_used_at_us AS last_used_at, \
         name, scopes, expires_at_us AS expires_at, rate_limit_requests, \
         rate_limit_per_seconds, quota_requests, quota_period, allowed_ips, metadata, \
         previous_prefix, previous_digest, \
         previous_expires_at_us AS previous_expires_at"
    };
}

/// A `SELECT` of whole records with the given `WHERE` clause.
macro_rules! select_where {
    ($condition:literal) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM tower_api_keys WHERE ",
            $condition
        )
    };
}

/// The record whose current or previous prefix is `?1`. Two equality searches, each on its
/// own unique index: SQLite plans `prefix = ?1 OR previous_prefix = ?1` as a scan of the
/// whole table (about 50 ms at 10^6 keys).
const FIND_BY_PREFIX: &str = concat!(
    select_where!("prefix = ?1"),
    " UNION ALL ",
    select_where!("previous_prefix = ?1"),
    " LIMIT 1"
);

/// Whether `?1` is any key's current or previous prefix, with the same two index searches.
const PREFIX_TAKEN: &str = "SELECT EXISTS (SELECT 1 FROM tower_api_keys WHERE prefix = ?1) \
                            OR EXISTS (SELECT 1 FROM tower_api_keys WHERE previous_prefix = ?1)";

/// The counts of account `?1` for the hours in `[?2, ?3)`, of key `?4` only unless it is
/// `NULL`: a search of the primary key (account, hour, key), already in the order returned.
const USAGE: &str = "SELECT key_id, hour, accepted, rate_limited, refused FROM tower_api_keys_usage
     WHERE account_id = ?1 AND hour >= ?2 AND hour < ?3 AND (?4 IS NULL OR key_id = ?4)
     ORDER BY hour, key_id";

/// Deletes the counts of the hours before `?1`, through the index on `hour`.
const PRUNE_USAGE: &str = "DELETE FROM tower_api_keys_usage WHERE hour < ?1";

/// Writes one audit entry (binds: [`sql::bind_entry`]'s, in order).
const INSERT_AUDIT: &str = "INSERT INTO tower_api_keys_audit
     (at_us, account_id, key_id, prefix, action, actor, outcome, changes)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// A page of account `?1`'s trail: entries numbered below `?2`, recorded at `?3` or later,
/// newest first, at most `?4`; a slice of the index on (account, id).
const AUDIT_TRAIL: &str = "SELECT id, at_us AS at, account_id, key_id, prefix, action, actor,
            outcome, changes
     FROM tower_api_keys_audit
     WHERE account_id = ?1 AND id < ?2 AND at_us >= ?3
     ORDER BY id DESC LIMIT ?4";

/// Rows of `tower_api_keys_usage` per upsert statement: six bound values each, well under
/// SQLite's limit of 32,766.
const UPSERT_ROWS: usize = 500;

/// An upsert of `rows` rows of `tower_api_keys_usage` (account, hour, key, accepted,
/// rate limited, refused), each adding its counts to the row if it exists. A sum past the
/// 64-bit range (only a row edited by hand gets there) becomes a REAL in SQLite, which the
/// CAST brings back to the range's edge: the flush is written instead of failing forever.
fn upsert_usage(rows: usize) -> String {
    let mut statement = String::from(
        "INSERT INTO tower_api_keys_usage
         (account_id, hour, key_id, accepted, rate_limited, refused) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            statement.push(',');
        }
        statement.push_str("(?, ?, ?, ?, ?, ?)");
    }
    statement.push_str(
        " ON CONFLICT (account_id, hour, key_id) DO UPDATE SET
           accepted = CAST(accepted + excluded.accepted AS INTEGER),
           rate_limited = CAST(rate_limited + excluded.rate_limited AS INTEGER),
           refused = CAST(refused + excluded.refused AS INTEGER)",
    );
    statement
}

/// Keeps key records in a SQLite database file: keys survive restarts of a single process.
///
/// - **Schema**: three tables, `tower_api_keys` (the keys), `tower_api_keys_usage` (their
///   hourly counts: one row per account, UTC hour as an integer index and key; no foreign
///   key, so a deleted key keeps its counts) and `tower_api_keys_audit` (the audit trail:
///   numbered by `AUTOINCREMENT`, so no number comes back after pruning; no foreign key
///   either), created by [`migrate`](Self::migrate) (never implicitly). Every change writes
///   its audit entry in its own `BEGIN IMMEDIATE` transaction. A flush's counts are added in the same `BEGIN IMMEDIATE` transaction as its
///   `last_used_at` updates. Keys are stored as keyed digests, never in plaintext; times as
///   integer microseconds since the Unix epoch; scopes as one text column, joined by single
///   spaces (`''` is the empty set, `NULL` unrestricted). A prefix is unique across the
///   current (`prefix`) and previous (`previous_prefix`) prefixes of all keys: each column has
///   a unique index, and writes check both columns inside their `BEGIN IMMEDIATE`
///   transaction.
/// - **Limit**: [`insert_within_limit`](KeyStore::insert_within_limit) counts and inserts in
///   one `BEGIN IMMEDIATE` transaction, which holds the database's write lock from its first
///   statement, so concurrent creates can't exceed the limit.
/// - **One process**: SQLite has no way to tell other processes about a change, so a second
///   process on the same file would keep serving keys from its cache after they were revoked
///   here (until its cache entries expire). For several processes, use `PostgresStore`
///   (feature `postgres`) with its change feed.
///
/// Cloning is cheap and shares the connection pool.
///
/// ```
/// use std::sync::Arc;
/// use tower_api_key::store::SqliteStore;
/// use tower_api_key::{KeyManager, Pepper};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::connect("sqlite::memory:").await?; // or sqlite://keys.db
/// store.migrate().await?;
/// let manager = KeyManager::new(Arc::new(store), Pepper::random()?);
/// let created = manager.create(&"acme".parse()?).await?;
/// assert_eq!(manager.list(&"acme".parse()?).await?, [created.info]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url`: `sqlite://path/to/keys.db`,
    /// `sqlite:keys.db`, or `sqlite::memory:` for a database that lives as long as the store.
    /// The file is put in WAL mode; writers wait up to 5 s for each other.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the URL is invalid or the file can't be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = if in_memory {
            // An in-memory database lives as long as a connection to it: keep exactly one.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        }
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(StoreError::unavailable)?;
        Ok(Self::from_pool(pool))
    }

    /// A store over a pool you configured. Give its connections a `busy_timeout`, or
    /// concurrent writes fail instead of waiting.
    pub const fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies the migrations this version ships and the database lacks, in one
    /// `BEGIN IMMEDIATE` transaction: safe to call at every start.
    ///
    /// # Errors
    ///
    /// [`MigrateError::Modified`] if a migration was applied with other text, or a database
    /// failure (then nothing changed).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        sql::migrate::<Self>(&self.pool, MIGRATIONS).await
    }

    /// A transaction that holds the write lock from its start, so that what it reads can't
    /// change before it writes.
    async fn begin_immediate(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::unavailable)
    }
}

/// `BEGIN IMMEDIATE` takes the database's write lock at once, so a second `migrate` waits
/// (up to the busy timeout) instead of reading the bookkeeping table in between.
impl sql::Dialect for SqliteStore {
    type Database = Sqlite;

    const CREATE_BOOKKEEPING: &'static str =
        "CREATE TABLE IF NOT EXISTS tower_api_keys_migrations (
                version       INTEGER NOT NULL PRIMARY KEY,
                description   TEXT    NOT NULL,
                checksum      BLOB    NOT NULL,
                applied_at_us INTEGER NOT NULL
            ) STRICT";

    // The bundled SQLite (3.46) has `unixepoch`'s `subsec` (3.42 on): millisecond precision.
    const RECORD_APPLIED: &'static str = "INSERT INTO tower_api_keys_migrations
        (version, description, checksum, applied_at_us)
        VALUES (?1, ?2, ?3, CAST(unixepoch('subsec') * 1000000 AS INTEGER))";

    async fn begin_exclusive(
        pool: &SqlitePool,
    ) -> Result<Transaction<'static, Sqlite>, MigrateError> {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Whether `prefix` is any key's current or previous prefix, read inside the write
/// transaction `tx`, so it can't be taken before `tx` writes.
async fn prefix_taken(
    tx: &mut Transaction<'static, Sqlite>,
    prefix: &KeyPrefix,
) -> Result<bool, StoreError> {
    sqlx::query_scalar(PREFIX_TAKEN)
        .bind(prefix.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(sql::store_error)
}

/// Writes `entry` to the trail through `executor`: the pool, or a change's transaction.
async fn write_entry<'e>(
    executor: impl sqlx::Executor<'e, Database = Sqlite>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    sql::bind_entry(
        sqlx::query(INSERT_AUDIT),
        entry,
        |id| id.to_string(),
        sql::to_micros,
    )?
    .execute(executor)
    .await
    .map_err(sql::store_error)?;
    Ok(())
}

/// Commits `tx` after writing `audit`'s entry for `row`, the key a change returned; without
/// a key nothing changed, and `tx` is rolled back.
async fn commit_audited(
    mut tx: Transaction<'static, Sqlite>,
    row: Option<Row>,
    audit: &AuditNote,
) -> Result<Option<KeyRecord>, StoreError> {
    let Some(record) = row.map(Row::into_record).transpose()? else {
        return Ok(None);
    };
    write_entry(&mut *tx, &record.audit_entry(audit)).await?;
    tx.commit().await.map_err(sql::store_error)?;
    Ok(Some(record))
}

/// An optional time as SQLite keeps it.
fn micros(at: Option<SystemTime>) -> Result<Option<i64>, StoreError> {
    at.map(sql::to_micros).transpose()
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_within_limit(
        &self,
        record: KeyRecord,
        limit: usize,
        audit: &AuditNote,
    ) -> Result<(), StoreError> {
        let previous = record.previous.as_ref();
        let (requests, per_seconds) = sql::rate_limit_columns(record.rate_limit);
        let (quota_requests, quota_period) = sql::quota_columns(record.quota);
        let mut tx = self.begin_immediate().await?;
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tower_api_keys WHERE account_id = ?1")
                .bind(record.account_id.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(sql::store_error)?;
        if count >= i64::try_from(limit).unwrap_or(i64::MAX) {
            return Err(StoreError::LimitReached { limit });
        }
        for prefix in record.prefixes() {
            if prefix_taken(&mut tx, prefix).await? {
                return Err(StoreError::PrefixTaken);
            }
        }
        sqlx::query(
            "INSERT INTO tower_api_keys
             (id, account_id, prefix, digest, status, created_at_us, last_used_at_us,
              name, scopes, expires_at_us, rate_limit_requests, rate_limit_per_seconds,
              quota_requests, quota_period, allowed_ips, metadata,
              previous_prefix, previous_digest, previous_expires_at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19)",
        )
        .bind(record.id.to_string())
        .bind(record.account_id.as_str())
        .bind(record.prefix.as_str())
        .bind(&record.digest.as_bytes()[..])
        .bind(record.status.as_str())
        .bind(sql::to_micros(record.created_at)?)
        .bind(micros(record.last_used_at)?)
        .bind(record.name.as_ref().map(KeyName::as_str))
        .bind(record.scopes.as_ref().map(sql::joined_scopes))
        .bind(micros(record.expires_at)?)
        .bind(requests)
        .bind(per_seconds)
        .bind(quota_requests)
        .bind(quota_period)
        .bind(record.allowed_ips.as_ref().map(sql::joined_addresses))
        .bind(record.metadata.as_ref().map(Metadata::as_json))
        .bind(previous.map(|p| p.prefix.as_str()))
        .bind(previous.map(|p| &p.digest.as_bytes()[..]))
        .bind(micros(previous.map(|p| p.expires_at))?)
        .execute(&mut *tx)
        .await
        .map_err(sql::store_error)?;
        write_entry(&mut *tx, &record.audit_entry(audit)).await?;
        tx.commit().await.map_err(sql::store_error)
    }

    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query_as::<_, Row>(FIND_BY_PREFIX)
            .bind(prefix.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(sql::store_error)?;
        row.map(Row::into_record).transpose()
    }

    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query_as::<_, Row>(select_where!("id = ?1 AND account_id = ?2"))
            .bind(id.to_string())
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(sql::store_error)?;
        row.map(Row::into_record).transpose()
    }

    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query_as::<_, Row>(select_where!(
            "account_id = ?1 ORDER BY created_at_us, rowid"
        ))
        .bind(account.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql::store_error)?;
        rows.into_iter().map(Row::into_record).collect()
    }

    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.begin_immediate().await?;
        let row = sqlx::query_as::<_, Row>(concat!(
            "UPDATE tower_api_keys SET status = ?3 WHERE id = ?1 AND account_id = ?2 RETURNING ",
            columns!()
        ))
        .bind(id.to_string())
        .bind(account.as_str())
        .bind(status.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql::store_error)?;
        commit_audited(tx, row, audit).await
    }

    async fn replace_key(
        &self,
        account: &AccountId,
        id: KeyId,
        prefix: KeyPrefix,
        digest: KeyDigest,
        grace_until: Option<SystemTime>,
        audit: &AuditNote,
    ) -> Result<Option<Rotated>, StoreError> {
        let mut tx = self.begin_immediate().await?;
        let before = sqlx::query_as::<_, Row>(select_where!("id = ?1 AND account_id = ?2"))
            .bind(id.to_string())
            .bind(account.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql::store_error)?;
        let Some(before) = before.map(Row::into_record).transpose()? else {
            return Ok(None);
        };
        if prefix_taken(&mut tx, &prefix).await? {
            return Err(StoreError::PrefixTaken);
        }
        // The right-hand sides see the row as it was: with a grace period, the replaced key
        // becomes the previous one; without, any previous key goes.
        let after = sqlx::query_as::<_, Row>(concat!(
            "UPDATE tower_api_keys SET prefix = ?2, digest = ?3, last_used_at_us = NULL, ",
            "previous_prefix = CASE WHEN ?4 IS NULL THEN NULL ELSE prefix END, ",
            "previous_digest = CASE WHEN ?4 IS NULL THEN NULL ELSE digest END, ",
            "previous_expires_at_us = ?4 ",
            "WHERE id = ?1 RETURNING ",
            columns!()
        ))
        .bind(id.to_string())
        .bind(prefix.as_str())
        .bind(&digest.as_bytes()[..])
        .bind(micros(grace_until)?)
        .fetch_one(&mut *tx)
        .await
        .map_err(sql::store_error)?
        .into_record()?;
        write_entry(&mut *tx, &after.audit_entry(audit)).await?;
        tx.commit().await.map_err(sql::store_error)?;
        Ok(Some(Rotated { before, after }))
    }

    async fn update_policy(
        &self,
        account: &AccountId,
        id: KeyId,
        update: &PolicyUpdate,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        // For each field: whether to set it, then its new value (NULL clears it).
        let query = sqlx::query_as::<_, Row>(concat!(
            "UPDATE tower_api_keys SET ",
            "name = CASE WHEN ?3 THEN ?4 ELSE name END, ",
            "scopes = CASE WHEN ?5 THEN ?6 ELSE scopes END, ",
            "expires_at_us = CASE WHEN ?7 THEN ?8 ELSE expires_at_us END, ",
            "rate_limit_requests = CASE WHEN ?9 THEN ?10 ELSE rate_limit_requests END, ",
            "rate_limit_per_seconds = CASE WHEN ?9 THEN ?11 ELSE rate_limit_per_seconds END, ",
            "quota_requests = CASE WHEN ?12 THEN ?13 ELSE quota_requests END, ",
            "quota_period = CASE WHEN ?12 THEN ?14 ELSE quota_period END, ",
            "allowed_ips = CASE WHEN ?15 THEN ?16 ELSE allowed_ips END, ",
            "metadata = CASE WHEN ?17 THEN ?18 ELSE metadata END ",
            "WHERE id = ?1 AND account_id = ?2 RETURNING ",
            columns!()
        ))
        .bind(id.to_string())
        .bind(account.as_str());
        let query = sql::bind_policy(query, update, sql::joined_scopes, sql::to_micros)?;
        let mut tx = self.begin_immediate().await?;
        let row = query
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql::store_error)?;
        commit_audited(tx, row, audit).await
    }

    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.begin_immediate().await?;
        let row = sqlx::query_as::<_, Row>(concat!(
            "DELETE FROM tower_api_keys WHERE id = ?1 AND account_id = ?2 RETURNING ",
            columns!()
        ))
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql::store_error)?;
        commit_audited(tx, row, audit).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        write_entry(&self.pool, entry).await
    }

    async fn audit_trail(
        &self,
        account: &AccountId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let since = sql::to_micros(query.since)?;
        sql::audit_page::<_, uuid::fmt::Hyphenated, i64, _>(
            &self.pool,
            AUDIT_TRAIL,
            account,
            query,
            since,
        )
        .await
    }

    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tower_api_keys_audit WHERE at_us < ?1")
            .bind(sql::to_micros(before)?)
            .execute(&self.pool)
            .await
            .map_err(sql::store_error)?;
        Ok(done.rows_affected())
    }

    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // The latest use of each (key, prefix): one UPDATE per key, in one transaction.
        let latest = sql::latest_uses(&batch.last_used);
        let counts = sql::coalesced_counts(&batch.counts);
        let mut tx = self.begin_immediate().await?;
        for ((id, prefix), at) in latest {
            sqlx::query(
                "UPDATE tower_api_keys SET last_used_at_us = ?3
                 WHERE id = ?1 AND prefix = ?2
                   AND (last_used_at_us IS NULL OR last_used_at_us < ?3)",
            )
            .bind(id.to_string())
            .bind(prefix.as_str())
            .bind(sql::to_micros(at)?)
            .execute(&mut *tx)
            .await
            .map_err(sql::store_error)?;
        }
        // Then the counts, added to their rows (whether or not the key still exists) in
        // the same transaction, many rows per statement: one statement per row would cost
        // as much again as the uses.
        let counts: Vec<_> = counts.into_iter().collect();
        for chunk in counts.chunks(UPSERT_ROWS) {
            let statement = upsert_usage(chunk.len());
            let mut query = sqlx::query(&statement);
            for ((account, hour, key), [accepted, rate_limited, refused]) in chunk {
                query = query
                    .bind(*account)
                    .bind(i64::from(*hour))
                    .bind(key.hyphenated().to_string())
                    .bind(*accepted)
                    .bind(*rate_limited)
                    .bind(*refused);
            }
            query.execute(&mut *tx).await.map_err(sql::store_error)?;
        }
        tx.commit().await.map_err(sql::store_error)
    }

    async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        from: Hour,
        to: Hour,
    ) -> Result<Vec<UsageRow>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        // A slice of the primary key (account, hour, key), already in the order asked for.
        let rows = sqlx::query_as::<_, RawUsage<uuid::fmt::Hyphenated>>(USAGE)
            .bind(account.as_str())
            .bind(i64::from(from.index()))
            .bind(i64::from(to.index()))
            .bind(key.map(|key| key.to_string()))
            .fetch_all(&self.pool)
            .await
            .map_err(sql::store_error)?;
        rows.into_iter().map(RawUsage::into_row).collect()
    }

    async fn prune_usage(&self, before: Hour) -> Result<u64, StoreError> {
        let done = sqlx::query(PRUNE_USAGE)
            .bind(i64::from(before.index()))
            .execute(&self.pool)
            .await
            .map_err(sql::store_error)?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps of `query`'s plan, as `EXPLAIN QUERY PLAN` lists them.
    async fn plan(store: &SqliteStore, query: &str) -> Vec<String> {
        sqlx::query_as::<_, (i64, i64, i64, String)>(&format!("EXPLAIN QUERY PLAN {query}"))
            .bind("abcdefgh")
            .fetch_all(store.pool())
            .await
            .expect("plan")
            .into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect()
    }

    #[tokio::test]
    async fn usage_reads_search_the_primary_key_and_pruning_the_hour_index() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        sqlx::raw_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO tower_api_keys_usage (account_id, hour, key_id, accepted)
             SELECT 'acct' || (i % 50), 475000 + i % 100,
                    printf('00000000-0000-4000-8000-%012d', i), 1
             FROM n;
             ANALYZE;",
        )
        .execute(store.pool())
        .await
        .expect("fill");
        let plan = |query: &'static str, key: Option<&'static str>| {
            let store = store.clone();
            async move {
                let explain = format!("EXPLAIN QUERY PLAN {query}");
                let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(&explain)
                    .bind("acct1")
                    .bind(475_010_i64)
                    .bind(475_020_i64)
                    .bind(key)
                    .fetch_all(store.pool())
                    .await
                    .expect("plan");
                rows.into_iter()
                    .map(|(_, _, _, detail)| detail)
                    .collect::<Vec<_>>()
            }
        };
        for key in [None, Some("00000000-0000-4000-8000-000000000011")] {
            let steps = plan(USAGE, key).await;
            assert!(
                steps.iter().any(|step| step.starts_with("SEARCH")
                    && step.contains("PRIMARY KEY (account_id=? AND hour>? AND hour<?)")),
                "{key:?}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|step| step.contains("TEMP B-TREE")),
                "no sort: {steps:?}"
            );
        }
        let steps = plan(PRUNE_USAGE, None).await;
        assert!(
            steps
                .iter()
                .any(|step| step.contains("tower_api_keys_usage_hour_idx (hour<?)")),
            "{steps:?}"
        );
    }

    #[tokio::test]
    async fn prefix_look_ups_search_the_indexes_instead_of_scanning_the_table() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        // Many keys and few previous ones, with statistics, as in a real database: the
        // planner's choice depends on them.
        sqlx::raw_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO tower_api_keys (id, account_id, prefix, digest, status, created_at_us)
             SELECT printf('00000000-0000-4000-8000-%012d', i), 'acme', printf('%08d', i),
                    randomblob(32), 'active', 0
             FROM n;
             ANALYZE;",
        )
        .execute(store.pool())
        .await
        .expect("fill");
        for query in [FIND_BY_PREFIX, PREFIX_TAKEN] {
            let steps = plan(&store, query).await;
            assert!(
                steps
                    .iter()
                    .all(|step| !step.starts_with("SCAN tower_api_keys")),
                "{query}: {steps:?}"
            );
            let searches = steps.iter().filter(|step| step.contains("USING")).count();
            assert!(searches >= 2, "{query}: {steps:?}");
        }
    }
}
