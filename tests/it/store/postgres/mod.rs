//! `PostgresStore` and `PgChangeFeed`, on the database of `DATABASE_URL` (each test on a schema
//! of its own; without the variable each test says it was skipped).

mod faults;
mod feed;
mod heartbeats;
mod last_used;
mod store;
mod two_processes;
mod usage;

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
