//! `PostgresStore` and `PgChangeFeed`, on the database of `DATABASE_URL` (each test on a schema
//! of its own; without the variable each test says it was skipped).

mod audit;
mod faults;
mod feed;
mod heartbeats;
mod last_used;
mod store;
mod two_processes;
mod usage;

/// The bookkeeping table, as every version of the store creates it.
const BOOKKEEPING: &str = "CREATE TABLE tower_api_keys_migrations (
    version     bigint      PRIMARY KEY,
    description text        NOT NULL,
    checksum    bytea       NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// Applies the shipped migrations up to `last` (their files, in order) and records them as
/// `migrate` does, checksums included: the database an older release left.
async fn apply_shipped_up_to(pool: &sqlx::PgPool, last: i64) {
    sqlx::raw_sql(BOOKKEEPING)
        .execute(pool)
        .await
        .expect("bookkeeping");
    for (version, name, sql, checksum) in super::sql::shipped_migrations("postgres", last) {
        sqlx::raw_sql(&sql).execute(pool).await.expect("migration");
        sqlx::query(
            "INSERT INTO tower_api_keys_migrations (version, description, checksum)
             VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(&name)
        .bind(checksum)
        .execute(pool)
        .await
        .expect("record it");
    }
}

/// Writes `record` into `tower_api_keys` with plain SQL, as the first schema had it: id,
/// account, prefix, digest, status and creation time.
async fn insert_by_hand(pool: &sqlx::PgPool, record: &tower_api_key::KeyRecord) {
    sqlx::query(
        "INSERT INTO tower_api_keys (id, account_id, prefix, digest, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(record.id.as_uuid())
    .bind(record.account_id.as_str())
    .bind(record.prefix.as_str())
    .bind(&record.digest.as_bytes()[..])
    .bind(record.status.as_str())
    .bind(sqlx::types::time::OffsetDateTime::from(record.created_at))
    .execute(pool)
    .await
    .expect("a key inserted by hand");
}
