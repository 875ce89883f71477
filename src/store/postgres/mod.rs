//! Keys in PostgreSQL, shared by any number of processes (feature `postgres`).

mod listener;

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditEvent, AuditNote, AuditQuery};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::types::time::OffsetDateTime;
use sqlx::{Connection as _, Postgres, Transaction};

use super::sql::{self, MigrateError, Migration, PgTimestamp, RawRecord, RawUsage};
use super::{AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, Rotated, StoreError};
use crate::key::{KeyDigest, KeyPrefix};
use crate::policy::{KeyName, Metadata, PolicyUpdate, Scopes};
use crate::store::counts::{Hour, UsageBatch, UsageRow};

pub use listener::PgChangeFeed;

/// The channel the table's trigger notifies on every change (see the migration).
pub(crate) const CHANNEL: &str = "tower_api_keys";

/// Advisory-lock class ids of this crate (`"tak"` and a counter), so that its locks don't
/// collide with an application's own single-key advisory locks.
const LOCK_CLASS_ACCOUNT: i32 = 0x7461_6b01;
const LOCK_CLASS_MIGRATE: i32 = 0x7461_6b02;
/// Held, keyed by `hashtext(prefix)`, by every write that gives a key a prefix, from before
/// it checks that the prefix is free (as a current or previous prefix) until it commits.
const LOCK_CLASS_PREFIX: i32 = 0x7461_6b03;
/// Held by every usage flush and pruning, from its start until it commits (`lock_flushes`).
const LOCK_CLASS_FLUSH: i32 = 0x7461_6b04;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "tower_api_keys table and its change notifications",
        sql: include_str!("../../../migrations/postgres/0001_tower_api_keys.sql"),
    },
    Migration {
        version: 2,
        description: "inserts no longer notify",
        sql: include_str!("../../../migrations/postgres/0002_no_notify_on_insert.sql"),
    },
    Migration {
        version: 3,
        description: "key policy: name, scopes, expiry, previous key; notify their changes",
        sql: include_str!("../../../migrations/postgres/0003_key_policy.sql"),
    },
    Migration {
        version: 4,
        description: "key rate limit; notify its changes",
        sql: include_str!("../../../migrations/postgres/0004_rate_limit.sql"),
    },
    Migration {
        version: 5,
        description: "usage counts per key and hour",
        sql: include_str!("../../../migrations/postgres/0005_usage.sql"),
    },
    Migration {
        version: 6,
        description: "key quota, address allowlist and metadata; notify their changes",
        sql: include_str!("../../../migrations/postgres/0006_allowlist_metadata_quota.sql"),
    },
    Migration {
        version: 7,
        description: "last_used_at in a table of its own; room for HOT updates of usage rows",
        sql: include_str!("../../../migrations/postgres/0007_last_used_table.sql"),
    },
    Migration {
        version: 8,
        description: "audit trail",
        sql: include_str!("../../../migrations/postgres/0008_audit.sql"),
    },
];

/// A flush's counts (`$1` to `$6`: account, hour, key and the three sums, one row per
/// account, hour and key) as rows `d` (a macro, for `concat!`).
macro_rules! count_rows {
    () => {
        "(SELECT unnest($1::text[]) AS account_id, unnest($2::bigint[]) AS hour, \
                 unnest($3::uuid[]) AS key_id, unnest($4::bigint[]) AS accepted, \
                 unnest($5::bigint[]) AS rate_limited, unnest($6::bigint[]) AS refused) AS d"
    };
}

/// Adds a flush's counts to the rows that exist; sums are held to `bigint`'s range
/// (`tower_api_keys_usage_add`, migration 7).
const ADD_COUNTS: &str = concat!(
    "UPDATE tower_api_keys_usage t SET \
       accepted = tower_api_keys_usage_add(t.accepted, d.accepted), \
       rate_limited = tower_api_keys_usage_add(t.rate_limited, d.rate_limited), \
       refused = tower_api_keys_usage_add(t.refused, d.refused) \
     FROM ",
    count_rows!(),
    " WHERE t.account_id = d.account_id AND t.hour = d.hour AND t.key_id = d.key_id"
);

/// Inserts all of a flush's counts, as new rows.
const INSERT_COUNTS: &str = concat!(
    "INSERT INTO tower_api_keys_usage \
       (account_id, hour, key_id, accepted, rate_limited, refused) SELECT * FROM ",
    count_rows!()
);

/// Inserts those of a flush's counts that have no row yet.
const INSERT_MISSING_COUNTS: &str = concat!(
    "INSERT INTO tower_api_keys_usage \
       (account_id, hour, key_id, accepted, rate_limited, refused) SELECT * FROM ",
    count_rows!(),
    " WHERE NOT EXISTS (SELECT 1 FROM tower_api_keys_usage t \
       WHERE t.account_id = d.account_id AND t.hour = d.hour AND t.key_id = d.key_id)"
);

/// Writes one audit entry (binds: [`sql::bind_entry`]'s, in order).
const INSERT_AUDIT: &str = "INSERT INTO tower_api_keys_audit
     (at, account_id, key_id, prefix, action, actor, outcome, changes)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// A page of account `$1`'s trail: entries numbered below `$2`, recorded at `$3` or later,
/// newest first, at most `$4`; a slice of the index on (account, id).
const AUDIT_TRAIL: &str = "SELECT id, at, account_id, key_id, prefix, action, actor, outcome,
            changes
     FROM tower_api_keys_audit
     WHERE account_id = $1 AND id < $2 AND at >= $3
     ORDER BY id DESC LIMIT $4";

/// `$change`, a statement that changes one key and returns its [`columns!`], made to write
/// the change's audit entry too, in the same statement: a data-modifying `WITH` runs once
/// and commits (or fails) with the statement, and writes nothing if the change met no key.
/// The entry names the key as the change left it (account, id, prefix: a deleted key's
/// last), outcome `done`; the other four placeholders, bound by [`bind_note`] after the
/// change's own binds, are the note's time, action, actor and changes.
macro_rules! audited {
    ($change:expr, $at:literal, $action:literal, $actor:literal, $changes:literal) => {
        concat!(
            "WITH changed AS (",
            $change,
            "), logged AS (INSERT INTO tower_api_keys_audit \
               (at, account_id, key_id, prefix, action, actor, outcome, changes) \
             SELECT ",
            $at,
            "::timestamptz, account_id, id, prefix, ",
            $action,
            "::text, ",
            $actor,
            "::text, 'done', ",
            $changes,
            "::text FROM changed) SELECT * FROM changed"
        )
    };
}

/// The oldest PostgreSQL this crate supports (as documented on [`PostgresStore`]).
const MIN_SERVER_VERSION: i32 = 140_000;

/// A row as stored: times as `timestamptz`, read and written through sqlx's `time` support;
/// the rate limit as two `integer`s.
type Row = RawRecord<uuid::Uuid, PgTimestamp, Vec<String>, i32>;

/// A whole record's columns, under the names [`RawRecord`] reads, for `tower_api_keys` named
/// `k` (a macro, for `concat!`). `last_used_at` comes from the key's row in
/// `tower_api_keys_last_used`, and only while that row holds the key's current prefix; as a
/// subquery it works in `RETURNING` too, and costs a lookup one primary-key probe more, in
/// the same round trip.
macro_rules! columns {
    () => {
        "k.id, k.account_id, k.prefix, k.digest, k.status, k.created_at, \
         (SELECT u.last_used_at FROM tower_api_keys_last_used u \
          WHERE u.key_id = k.id AND u.prefix = k.prefix) AS last_used_at, \
         k.name, k.scopes, k.expires_at, k.rate_limit_requests, k.rate_limit_per_seconds, \
         k.quota_requests, k.quota_period, k.allowed_ips, k.metadata, k.previous_prefix, \
         k.previous_digest, k.previous_expires_at"
    };
}

/// Keeps key records in PostgreSQL (14 or newer): any number of processes can share one
/// database.
///
/// - **Schema**: four tables, `tower_api_keys` (the keys), `tower_api_keys_last_used` (each
///   key's `last_used_at`), `tower_api_keys_usage` (their hourly counts) and
///   `tower_api_keys_audit` (the audit trail, numbered from one identity sequence all
///   processes share, no foreign key), created by [`migrate`](Self::migrate) (never
///   implicitly). A change writes its audit entry in its own transaction or, for a status,
///   policy or deletion, in its own statement (a data-modifying `WITH`); entries notify
///   nothing. Keys are
///   stored as keyed digests, never in plaintext. A prefix is unique
///   across the current (`prefix`) and previous (`previous_prefix`) prefixes of all keys:
///   each column has a `UNIQUE` constraint, and every write that gives out a prefix holds a
///   transaction advisory lock on it while it checks both columns and writes.
/// - **Limit**: [`insert_within_limit`](KeyStore::insert_within_limit) takes a transaction
///   advisory lock on the account (`pg_advisory_xact_lock`) before counting, so concurrent
///   creates from any number of processes can't exceed the limit, and creates for different
///   accounts don't wait for each other.
/// - **Changes reach other processes**: a trigger on the table `NOTIFY`s channel
///   `tower_api_keys` with the digests of the keys concerned (current and previous, before
///   and after the change; name and `last_used_at` changes don't notify), inside the changing
///   transaction, so the notification goes out exactly when the change commits; run a
///   [`PgChangeFeed`] in every process to act on it.
/// - **`last_used_at`**: table `tower_api_keys_last_used`, one narrow row per key (id, current
///   prefix, time), kept in step with `tower_api_keys` by its triggers: an inserted key gets a
///   row, a rotated one a fresh row (no time), a deleted one none. Reads take the time from
///   it in the same statement. A flush moves times forward with one `UPDATE` for the whole
///   batch, where the row's prefix is the use's; the table's pages are half filled, so those
///   updates are HOT (they write no index entry), and they touch neither `tower_api_keys`
///   nor its indexes.
/// - **Usage counts**: table `tower_api_keys_usage`, one row per account, UTC hour (as an
///   integer: hours since the Unix epoch) and key, with no foreign key (a deleted key keeps its
///   counts). A flush adds its counts for the whole batch with an `UPDATE` of the rows that
///   exist and, if it met fewer than all, an `INSERT` of the others, in the same transaction
///   as the `last_used_at` update. Pages are filled to half (migration 7) so that adding to an
///   hour's rows is HOT; the price is about twice the disk of full pages. Counts notify
///   nothing.
/// - **Flushes take turns**: each holds a transaction advisory lock from its start to its
///   commit, so flushes from any number of processes add up and never deadlock, and no row
///   is locked in a pass of its own. One flush of 10^5 keys took 0.24–0.32 s for the uses
///   alone and ~0.65 s with counts added to an hour's rows (0.84–1.2 s for an hour's first
///   flush), against 3.1–4.7 s before migration 7, on a 2-core machine (BENCHMARKS.md).
/// - **TLS**: built in (rustls with the Mozilla root certificates; no OpenSSL, no system
///   certificate store), set with the URL's `sslmode`. The default, `prefer`, encrypts when
///   the server offers it; `sslmode=require` refuses an unencrypted connection but accepts
///   any certificate; `sslmode=verify-full` also checks the certificate chain and that it
///   names the host. A server whose certificate comes from a private CA (as managed services
///   hand out) needs that CA: `sslrootcert=/path/to/ca.pem`. [`PgChangeFeed`] connects with
///   the same options.
///
/// ```text
/// postgres://app:secret@db.example.com:5432/app?sslmode=verify-full&sslrootcert=/etc/app/db-ca.pem
/// ```
///
/// Cloning is cheap and shares the connection pool.
///
/// ```no_run
/// use std::sync::Arc;
/// use tower_api_key::feed::{self, FeedConfig};
/// use tower_api_key::store::{PgChangeFeed, PostgresStore};
/// use tower_api_key::{ApiKeyLayer, KeyManager, Pepper};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect(&std::env::var("DATABASE_URL")?).await?;
/// store.migrate().await?;
/// let manager = KeyManager::new(Arc::new(store.clone()), Pepper::from_hex(&std::env::var("API_KEY_PEPPER")?)?);
/// // Other processes' changes arrive on the manager's bus, which the layer listens to.
/// let feed = feed::spawn(PgChangeFeed::new(&store), manager.invalidation_bus(), FeedConfig::default());
/// let layer = ApiKeyLayer::for_manager(&manager).build();
/// // ... serve with `layer`; on shutdown:
/// feed.shutdown().await;
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects a pool of up to 10 connections to `url` (`postgres://user:pass@host/db`;
    /// sqlx's URL options apply, `sslmode` and `sslrootcert` among them: see TLS in the
    /// type's docs), failing if the database can't be reached now. Waiting for
    /// a free connection is bounded at 3 s, below the layer's default lookup timeout, so an
    /// unreachable database surfaces as a store failure (503), not a hang.
    ///
    /// The pool doesn't ping a connection before handing it out (sqlx's
    /// `test_before_acquire` is off): a cache miss costs one round trip to the database, not
    /// two (p50 139 µs instead of 185 µs on loopback at 10^6 keys, BENCHMARKS.md). The price:
    /// after the database ended the pool's connections (a restart, a failover), each dead
    /// connection the pool still holds can fail one request, answered 503 (never a wrong
    /// answer); sqlx then drops it and the pool opens fresh ones by itself. For the ping,
    /// build your own pool and use [`from_pool`](Self::from_pool).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the URL is invalid or the database unreachable.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(StoreError::unavailable)?;
        // One connection first: its error says why (refused, bad password …), where the
        // pool's would only say that it timed out.
        PgConnection::connect_with(&options)
            .await
            .map_err(StoreError::unavailable)?
            .close()
            .await
            .map_err(StoreError::unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(3))
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool))
    }

    /// A store over a pool you configured (size, timeouts, TLS, `search_path` for another
    /// schema …).
    pub const fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations this version ships and the database lacks, in one transaction
    /// under an advisory lock: safe to call from every process at start, concurrently. The
    /// table lands in the first schema of the connection's `search_path`.
    ///
    /// # Errors
    ///
    /// [`MigrateError::Modified`] if a migration was applied with other text,
    /// [`MigrateError::UnsupportedServer`] before PostgreSQL 14, or a database failure (then
    /// nothing changed).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        sql::migrate::<Self>(&self.pool, MIGRATIONS).await
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(StoreError::unavailable)
    }
}

/// A plain transaction under a transaction advisory lock, which waits for any other
/// `migrate` on the database to end.
impl sql::Dialect for PostgresStore {
    type Database = Postgres;

    const CREATE_BOOKKEEPING: &'static str =
        "CREATE TABLE IF NOT EXISTS tower_api_keys_migrations (
                version     bigint      PRIMARY KEY,
                description text        NOT NULL,
                checksum    bytea       NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )";

    const RECORD_APPLIED: &'static str =
        "INSERT INTO tower_api_keys_migrations (version, description, checksum)
         VALUES ($1, $2, $3)";

    async fn begin_exclusive(
        pool: &PgPool,
    ) -> Result<Transaction<'static, Postgres>, MigrateError> {
        let mut tx = pool.begin().await?;
        let version: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
            .fetch_one(&mut *tx)
            .await?;
        if version.trim().parse::<i32>().unwrap_or(0) < MIN_SERVER_VERSION {
            return Err(MigrateError::UnsupportedServer(format!(
                "PostgreSQL 14 or newer is needed, this is version number {version}"
            )));
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(LOCK_CLASS_MIGRATE)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// `scopes` as a `text[]`.
fn scope_list(scopes: &Scopes) -> Vec<String> {
    scopes.iter().map(str::to_owned).collect()
}

/// An optional time as PostgreSQL keeps it.
fn timestamp(at: Option<SystemTime>) -> Result<Option<OffsetDateTime>, StoreError> {
    at.map(sql::to_timestamp).transpose()
}

/// Binds `audit`'s time, action, actor and changes, in that order, after a change's own
/// binds: the placeholders [`audited!`] leaves.
fn bind_note<'q, O>(
    query: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
    audit: &'q AuditNote,
) -> Result<sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>, StoreError> {
    Ok(query
        .bind(sql::to_timestamp(audit.at)?)
        .bind(audit.action.as_str())
        .bind(audit.actor.as_str())
        .bind(audit.changes.to_json()))
}

/// Writes `entry` to the trail through `executor`: the pool, or a change's transaction.
async fn write_entry<'e>(
    executor: impl sqlx::Executor<'e, Database = Postgres>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    sql::bind_entry(
        sqlx::query(INSERT_AUDIT),
        entry,
        |id| *id.as_uuid(),
        sql::to_timestamp,
    )?
    .execute(executor)
    .await
    .map_err(sql::store_error)?;
    Ok(())
}

/// Makes the flushes of all processes (and `prune_usage`) take turns: waits until no other
/// holds the database's flush lock, then holds it for the rest of `tx`. In a statement of its
/// own: in READ COMMITTED the statements that follow see every write of the lock's previous
/// holders.
///
/// This is why a flush can't deadlock. No two flushes hold row locks at once. The other
/// writers of the rows a flush writes lock one key each: a rotation or a deletion locks the
/// key's row in `tower_api_keys` and then, through a trigger, its row in
/// `tower_api_keys_last_used`, and waits for nothing after that; so a flush waiting for one
/// of them waits for a transaction that is about to end, and they never wait for each other
/// in a cycle. Nothing but flushes and pruning writes `tower_api_keys_usage`. A statement
/// that changes many keys at once (by hand: the store changes one at a time) can still
/// deadlock with a flush, as it could when flushes locked the keys in id order first;
/// PostgreSQL then aborts one of the two, and a failed flush keeps its entries for the next.
async fn lock_flushes(tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LOCK_CLASS_FLUSH)
        .execute(&mut **tx)
        .await
        .map_err(sql::store_error)?;
    Ok(())
}

/// Locks `prefixes` for the rest of `tx` (in sorted order, so two writers can't deadlock),
/// then tells whether any of them is a key's current or previous prefix. The locks are taken
/// in statements of their own: in READ COMMITTED the check that follows sees every write of
/// the locks' previous holders.
async fn lock_and_check_prefixes(
    tx: &mut Transaction<'static, Postgres>,
    prefixes: &[&KeyPrefix],
) -> Result<bool, StoreError> {
    let mut prefixes: Vec<String> = prefixes.iter().map(|p| p.as_str().to_owned()).collect();
    prefixes.sort();
    prefixes.dedup();
    for prefix in &prefixes {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS_PREFIX)
            .bind(prefix)
            .execute(&mut **tx)
            .await
            .map_err(sql::store_error)?;
    }
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tower_api_keys
                        WHERE prefix = ANY($1) OR previous_prefix = ANY($1))",
    )
    .bind(&prefixes)
    .fetch_one(&mut **tx)
    .await
    .map_err(sql::store_error)
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_within_limit(
        &self,
        record: KeyRecord,
        limit: usize,
        audit: &AuditNote,
    ) -> Result<(), StoreError> {
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self.begin().await?;
        // The lock is taken in a statement of its own, before the count: in READ COMMITTED
        // every statement sees what committed before it started, so the count that follows
        // includes every insert of the lock's previous holders.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS_ACCOUNT)
            .bind(record.account_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(sql::store_error)?;
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tower_api_keys WHERE account_id = $1")
                .bind(record.account_id.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(sql::store_error)?;
        if count >= limit_sql {
            return Err(StoreError::LimitReached { limit });
        }
        let previous = record.previous.as_ref();
        let (requests, per_seconds) = sql::rate_limit_columns(record.rate_limit);
        let (quota_requests, quota_period) = sql::quota_columns(record.quota);
        let prefixes: Vec<&KeyPrefix> = record.prefixes().collect();
        if lock_and_check_prefixes(&mut tx, &prefixes).await? {
            return Err(StoreError::PrefixTaken);
        }
        sqlx::query(
            "INSERT INTO tower_api_keys
             (id, account_id, prefix, digest, status, created_at, name, scopes,
              expires_at, rate_limit_requests, rate_limit_per_seconds, quota_requests,
              quota_period, allowed_ips, metadata, previous_prefix, previous_digest,
              previous_expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     $17, $18)",
        )
        .bind(record.id.as_uuid())
        .bind(record.account_id.as_str())
        .bind(record.prefix.as_str())
        .bind(&record.digest.as_bytes()[..])
        .bind(record.status.as_str())
        .bind(sql::to_timestamp(record.created_at)?)
        .bind(record.name.as_ref().map(KeyName::as_str))
        .bind(record.scopes.as_ref().map(scope_list))
        .bind(timestamp(record.expires_at)?)
        .bind(requests)
        .bind(per_seconds)
        .bind(quota_requests)
        .bind(quota_period)
        .bind(record.allowed_ips.as_ref().map(sql::joined_addresses))
        .bind(record.metadata.as_ref().map(Metadata::as_json))
        .bind(previous.map(|p| p.prefix.as_str()))
        .bind(previous.map(|p| &p.digest.as_bytes()[..]))
        .bind(timestamp(previous.map(|p| p.expires_at))?)
        .execute(&mut *tx)
        .await
        .map_err(sql::store_error)?;
        if let Some(at) = record.last_used_at {
            // The insert's trigger gave the key its row in `tower_api_keys_last_used`.
            sqlx::query("UPDATE tower_api_keys_last_used SET last_used_at = $2 WHERE key_id = $1")
                .bind(record.id.as_uuid())
                .bind(sql::to_timestamp(at)?)
                .execute(&mut *tx)
                .await
                .map_err(sql::store_error)?;
        }
        write_entry(&mut *tx, &record.audit_entry(audit)).await?;
        tx.commit().await.map_err(sql::store_error)
    }

    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query_as::<_, Row>(concat!(
            "SELECT ",
            columns!(),
            " FROM tower_api_keys k WHERE prefix = $1 OR previous_prefix = $1"
        ))
        .bind(prefix.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(sql::store_error)?;
        row.map(Row::into_record).transpose()
    }

    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query_as::<_, Row>(concat!(
            "SELECT ",
            columns!(),
            " FROM tower_api_keys k WHERE id = $1 AND account_id = $2"
        ))
        .bind(id.as_uuid())
        .bind(account.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(sql::store_error)?;
        row.map(Row::into_record).transpose()
    }

    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query_as::<_, Row>(concat!(
            "SELECT ",
            columns!(),
            " FROM tower_api_keys k WHERE account_id = $1 ORDER BY created_at, seq"
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
        // One statement: the trigger's notification and the audit entry commit with it.
        let query = sqlx::query_as::<_, Row>(audited!(
            concat!(
                "UPDATE tower_api_keys k SET status = $3 WHERE id = $1 AND account_id = $2 ",
                "RETURNING ",
                columns!()
            ),
            "$4",
            "$5",
            "$6",
            "$7"
        ))
        .bind(id.as_uuid())
        .bind(account.as_str())
        .bind(status.as_str());
        let row = bind_note(query, audit)?
            .fetch_optional(&self.pool)
            .await
            .map_err(sql::store_error)?;
        row.map(Row::into_record).transpose()
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
        let mut tx = self.begin().await?;
        let before = sqlx::query_as::<_, Row>(concat!(
            "SELECT ",
            columns!(),
            " FROM tower_api_keys k WHERE id = $1 AND account_id = $2 FOR UPDATE"
        ))
        .bind(id.as_uuid())
        .bind(account.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql::store_error)?;
        let Some(before) = before.map(Row::into_record).transpose()? else {
            return Ok(None);
        };
        if lock_and_check_prefixes(&mut tx, &[&prefix]).await? {
            return Err(StoreError::PrefixTaken);
        }
        // The right-hand sides see the row as it was: with a grace period, the replaced key
        // becomes the previous one; without, any previous key goes.
        let after = sqlx::query_as::<_, Row>(concat!(
            "UPDATE tower_api_keys k SET prefix = $2, digest = $3, ",
            "previous_prefix = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE prefix END, ",
            "previous_digest = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE digest END, ",
            "previous_expires_at = $4 ",
            "WHERE id = $1 RETURNING ",
            columns!()
        ))
        .bind(id.as_uuid())
        .bind(prefix.as_str())
        .bind(&digest.as_bytes()[..])
        .bind(timestamp(grace_until)?)
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
        // For each field: whether to set it, then its new value (NULL clears it). One
        // statement: the trigger's notification and the audit entry commit with it.
        let query = sqlx::query_as::<_, Row>(audited!(
            concat!(
                "UPDATE tower_api_keys k SET ",
                "name = CASE WHEN $3 THEN $4 ELSE name END, ",
                "scopes = CASE WHEN $5 THEN $6 ELSE scopes END, ",
                "expires_at = CASE WHEN $7 THEN $8 ELSE expires_at END, ",
                "rate_limit_requests = CASE WHEN $9 THEN $10 ELSE rate_limit_requests END, ",
                "rate_limit_per_seconds = CASE WHEN $9 THEN $11 ELSE rate_limit_per_seconds END, ",
                "quota_requests = CASE WHEN $12 THEN $13 ELSE quota_requests END, ",
                "quota_period = CASE WHEN $12 THEN $14 ELSE quota_period END, ",
                "allowed_ips = CASE WHEN $15 THEN $16 ELSE allowed_ips END, ",
                "metadata = CASE WHEN $17 THEN $18 ELSE metadata END ",
                "WHERE id = $1 AND account_id = $2 RETURNING ",
                columns!()
            ),
            "$19",
            "$20",
            "$21",
            "$22"
        ))
        .bind(id.as_uuid())
        .bind(account.as_str());
        let query = sql::bind_policy(query, update, scope_list, sql::to_timestamp)?;
        let row = bind_note(query, audit)?
            .fetch_optional(&self.pool)
            .await
            .map_err(sql::store_error)?;
        row.map(Row::into_record).transpose()
    }

    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        // One statement: the trigger's notification and the audit entry commit with it.
        let query = sqlx::query_as::<_, Row>(audited!(
            concat!(
                "DELETE FROM tower_api_keys k WHERE id = $1 AND account_id = $2 RETURNING ",
                columns!()
            ),
            "$3",
            "$4",
            "$5",
            "$6"
        ))
        .bind(id.as_uuid())
        .bind(account.as_str());
        let row = bind_note(query, audit)?
            .fetch_optional(&self.pool)
            .await
            .map_err(sql::store_error)?;
        row.map(Row::into_record).transpose()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        write_entry(&self.pool, entry).await
    }

    async fn audit_trail(
        &self,
        account: &AccountId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let since = sql::to_timestamp(query.since)?;
        sql::audit_page::<_, uuid::Uuid, PgTimestamp, _>(
            &self.pool,
            AUDIT_TRAIL,
            account,
            query,
            since,
        )
        .await
    }

    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        // No lock: entries are only ever inserted and deleted, so pruning waits for no
        // writer, and no writer for it.
        let done = sqlx::query("DELETE FROM tower_api_keys_audit WHERE at < $1")
            .bind(sql::to_timestamp(before)?)
            .execute(&self.pool)
            .await
            .map_err(sql::store_error)?;
        Ok(done.rows_affected())
    }

    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One use per key and prefix, the latest, in key order: the update below must not
        // meet a key twice (it would keep either use, not the later).
        let uses = sql::latest_uses(&batch.last_used);
        let mut ids = Vec::with_capacity(uses.len());
        let mut prefixes = Vec::with_capacity(uses.len());
        let mut ats = Vec::with_capacity(uses.len());
        for ((id, prefix), at) in &uses {
            ids.push(*id.as_uuid());
            prefixes.push(prefix.as_str());
            ats.push(sql::to_timestamp(*at)?);
        }
        let counts = sql::coalesced_counts(&batch.counts);
        let mut columns = (
            Vec::with_capacity(counts.len()),
            Vec::with_capacity(counts.len()),
            Vec::with_capacity(counts.len()),
            Vec::with_capacity(counts.len()),
            Vec::with_capacity(counts.len()),
            Vec::with_capacity(counts.len()),
        );
        for ((account, hour, key), [accepted, rate_limited, refused]) in counts {
            columns.0.push(account);
            columns.1.push(i64::from(hour));
            columns.2.push(key);
            columns.3.push(accepted);
            columns.4.push(rate_limited);
            columns.5.push(refused);
        }
        let mut tx = self.begin().await?;
        lock_flushes(&mut tx).await?;
        if !ids.is_empty() {
            // One statement for the uses, on `tower_api_keys_last_used` alone: a use moves
            // its key's time forward only, and only while the key's row holds the use's
            // prefix. The triggers of `tower_api_keys` change or delete that row in the
            // transaction that rotates or deletes the key, so a use that meets such a change
            // waits for it and is then checked against the row as it committed: a use of a
            // replaced prefix, or of a deleted key, is dropped.
            sqlx::query(
                "UPDATE tower_api_keys_last_used t SET last_used_at = u.at
                 FROM (SELECT unnest($1::uuid[]) AS id, unnest($2::text[]) AS prefix,
                              unnest($3::timestamptz[]) AS at) AS u
                 WHERE t.key_id = u.id AND t.prefix = u.prefix
                   AND (t.last_used_at IS NULL OR t.last_used_at < u.at)",
            )
            .bind(&ids)
            .bind(&prefixes)
            .bind(&ats)
            .execute(&mut *tx)
            .await
            .map_err(sql::store_error)?;
        }
        if !columns.0.is_empty() {
            // The counts: add to the rows that exist, then insert the others (whether or not
            // the key still exists). Plain statements are enough: only flushes create rows,
            // and this one started after every earlier flush committed (see `lock_flushes`),
            // so the update met every existing row and the insert meets none.
            let query = |statement| {
                sqlx::query(statement)
                    .bind(&columns.0)
                    .bind(&columns.1)
                    .bind(&columns.2)
                    .bind(&columns.3)
                    .bind(&columns.4)
                    .bind(&columns.5)
            };
            let added = query(ADD_COUNTS)
                .execute(&mut *tx)
                .await
                .map_err(sql::store_error)?
                .rows_affected();
            // One row per account, hour and key (coalesced): all were there, or none (the
            // first flush of an hour: no need to look for them again), or some.
            let insert = match usize::try_from(added) {
                Ok(added) if added == columns.0.len() => None,
                Ok(0) => Some(INSERT_COUNTS),
                _ => Some(INSERT_MISSING_COUNTS),
            };
            if let Some(insert) = insert {
                query(insert)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql::store_error)?;
            }
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
        let rows = sqlx::query_as::<_, RawUsage<uuid::Uuid>>(
            "SELECT key_id, hour, accepted, rate_limited, refused FROM tower_api_keys_usage
             WHERE account_id = $1 AND hour >= $2 AND hour < $3
               AND ($4::uuid IS NULL OR key_id = $4)
             ORDER BY hour, key_id",
        )
        .bind(account.as_str())
        .bind(i64::from(from.index()))
        .bind(i64::from(to.index()))
        .bind(key.map(|key| *key.as_uuid()))
        .fetch_all(&self.pool)
        .await
        .map_err(sql::store_error)?;
        rows.into_iter().map(RawUsage::into_row).collect()
    }

    async fn prune_usage(&self, before: Hour) -> Result<u64, StoreError> {
        // Between flushes, so that it never holds a row a flush waits for, or the reverse.
        let mut tx = self.begin().await?;
        lock_flushes(&mut tx).await?;
        let done = sqlx::query("DELETE FROM tower_api_keys_usage WHERE hour < $1")
            .bind(i64::from(before.index()))
            .execute(&mut *tx)
            .await
            .map_err(sql::store_error)?;
        tx.commit().await.map_err(sql::store_error)?;
        Ok(done.rows_affected())
    }
}
