//! `tower_api_keys_last_used` (migration 7). On a database of the schema before it,
//! `last_used_at` moves there from `tower_api_keys` and the usage rows stay: the old rows are
//! written with plain SQL, as that schema had them; afterwards every value reads back through
//! the store, and flushes, rotations and deletions work on the new table. A use that meets a
//! rotation in progress waits for it and is checked against what it committed; keys inserted
//! or truncated by hand keep the table in step. Without `DATABASE_URL`, each test says it was
//! skipped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use sqlx::types::time::OffsetDateTime;

use super::apply_shipped_up_to;
use crate::support::db::postgres::Schema;
use crate::support::wait::until;
use crate::support::{account, pepper};
use tower_api_key::store::{KeyUse, PostgresStore};
use tower_api_key::usage::{Hour, UsageBatch, UsageDelta, UsageRow};
use tower_api_key::{ApiKey, KeyId, KeyPrefix, KeyRecord, KeyStore};

/// Writes `record` into `tower_api_keys` of schema 6, `last_used_at` among its columns (the
/// policy columns as `full_record` has them).
async fn insert_as_schema_6(pool: &PgPool, record: &KeyRecord) {
    let time = |at: SystemTime| OffsetDateTime::from(at);
    let previous = record.previous.as_ref().expect("a previous key");
    sqlx::query(
        "INSERT INTO tower_api_keys
         (id, account_id, prefix, digest, status, created_at, last_used_at, name, scopes,
          expires_at, rate_limit_requests, rate_limit_per_seconds, quota_requests, quota_period,
          allowed_ips, metadata, previous_prefix, previous_digest, previous_expires_at)
         VALUES ($1, $2, $3, $4, 'active', $5, $6, 'CI', '{read,write}', $7, 5, 2, 10000,
                 'month', '203.0.113.0/24 2001:db8::/32', '{\"plan\":\"pro\",\"seats\":[1,2]}',
                 $8, $9, $10)",
    )
    .bind(record.id.as_uuid())
    .bind(record.account_id.as_str())
    .bind(record.prefix.as_str())
    .bind(&record.digest.as_bytes()[..])
    .bind(time(record.created_at))
    .bind(record.last_used_at.map(time))
    .bind(record.expires_at.map(time))
    .bind(previous.prefix.as_str())
    .bind(&previous.digest.as_bytes()[..])
    .bind(time(previous.expires_at))
    .execute(pool)
    .await
    .expect("a key of schema 6");
}

/// `full_record(account)`, last used at `last_used_at`.
fn key(account: &str, last_used_at: Option<SystemTime>) -> KeyRecord {
    KeyRecord {
        last_used_at,
        ..super::super::sql::full_record(account)
    }
}

fn use_of(record: &KeyRecord, prefix: KeyPrefix, at: SystemTime) -> KeyUse {
    KeyUse {
        id: record.id,
        prefix,
        at,
    }
}

fn delta(account_name: &str, key_id: KeyId, hour: Hour, sums: [i64; 3]) -> UsageDelta {
    UsageDelta {
        account_id: account(account_name),
        key_id,
        hour,
        accepted: sums[0],
        rate_limited: sums[1],
        refused: sums[2],
    }
}

async fn last_used(store: &PostgresStore, record: &KeyRecord) -> Option<SystemTime> {
    store
        .get(&record.account_id, record.id)
        .await
        .expect("get")
        .expect("found")
        .last_used_at
}

#[tokio::test]
async fn a_database_of_schema_6_upgrades_in_place_keeping_last_used_at_and_counts() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let pool = schema.pool();
    apply_shipped_up_to(&pool, 6).await;
    let at = UNIX_EPOCH + Duration::from_micros(1_750_000_000_123_457);
    let used = key("acme", Some(at));
    let unused = key("acme", None);
    let elsewhere = key("globex", Some(at + Duration::from_micros(1)));
    for record in [&used, &unused, &elsewhere] {
        insert_as_schema_6(&pool, record).await;
    }
    // Counts of a key and of a key deleted since (a negative sum reads as 0).
    let gone = KeyId::random();
    let hour = Hour::from_index(486_111);
    sqlx::query(
        "INSERT INTO tower_api_keys_usage (account_id, hour, key_id, accepted, rate_limited, refused)
         VALUES ('acme', $1, $2, 5, 2, 1), ('acme', $1, $3, 7, 0, -3)",
    )
    .bind(i64::from(hour.index()))
    .bind(used.id.as_uuid())
    .bind(gone.as_uuid())
    .execute(&pool)
    .await
    .expect("usage rows of schema 6");

    let store = PostgresStore::from_pool(pool.clone());
    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("again");
    let moved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'tower_api_keys'
           AND column_name = 'last_used_at'",
    )
    .fetch_one(&pool)
    .await
    .expect("columns");
    assert_eq!(moved, 0, "the column moved to tower_api_keys_last_used");

    // Every value reads back, by either prefix, by id and by account.
    for record in [&used, &unused, &elsewhere] {
        let previous = record.previous.as_ref().expect("a previous key");
        for prefix in [record.prefix, previous.prefix] {
            let found = store.find_by_prefix(&prefix).await.expect("find");
            assert_eq!(found.as_ref(), Some(record));
        }
        assert_eq!(last_used(&store, record).await, record.last_used_at);
    }
    assert_eq!(
        store.list(&account("acme")).await.expect("list"),
        [used.clone(), unused.clone()]
    );
    let mut expected = vec![
        UsageRow::from_sums(used.id, hour, 5, 2, 1),
        UsageRow::from_sums(gone, hour, 7, 0, -3),
    ];
    expected.sort_by_key(|row| row.key_id);
    let read = |store: PostgresStore| async move {
        store
            .usage(
                &account("acme"),
                None,
                hour,
                Hour::from_index(hour.index() + 2),
            )
            .await
            .expect("usage")
    };
    assert_eq!(read(store.clone()).await, expected);

    // A flush after the upgrade: times move forward only (a use of the previous key's prefix
    // is not a use of the key), counts add to the old rows and start new ones.
    let later = at + Duration::from_secs(1);
    let grace_prefix = unused.previous.as_ref().expect("previous").prefix;
    store
        .record_usage(&UsageBatch {
            last_used: vec![
                use_of(&used, used.prefix, later),
                use_of(&unused, grace_prefix, later),
                use_of(&elsewhere, elsewhere.prefix, at),
            ],
            counts: vec![
                delta("acme", used.id, hour, [1, 0, 0]),
                delta("acme", gone, hour, [1, 0, 4]),
                delta("acme", unused.id, hour.next(), [4, 0, 0]),
            ],
        })
        .await
        .expect("flush");
    assert_eq!(last_used(&store, &used).await, Some(later));
    assert_eq!(last_used(&store, &unused).await, None);
    assert_eq!(last_used(&store, &elsewhere).await, elsewhere.last_used_at);
    let mut expected = vec![
        UsageRow::from_sums(used.id, hour, 6, 2, 1),
        UsageRow::from_sums(gone, hour, 8, 0, 1),
        UsageRow::from_sums(unused.id, hour.next(), 4, 0, 0),
    ];
    expected.sort_by_key(|row| (row.hour, row.key_id));
    assert_eq!(read(store.clone()).await, expected);

    // Rotating clears the time and drops later uses of the replaced prefix; deleting a key
    // deletes its row of `tower_api_keys_last_used`.
    let new_key = ApiKey::generate().expect("randomness");
    let rotated = store
        .replace_key(
            &account("acme"),
            used.id,
            new_key.prefix(),
            pepper().digest(&new_key),
            None,
            &crate::store::note(),
        )
        .await
        .expect("rotate")
        .expect("found");
    assert_eq!(rotated.after.last_used_at, None);
    let batch =
        |prefix| UsageBatch::last_used(vec![use_of(&used, prefix, later + Duration::from_secs(1))]);
    store
        .record_usage(&batch(used.prefix))
        .await
        .expect("flush");
    assert_eq!(last_used(&store, &used).await, None);
    store
        .record_usage(&batch(new_key.prefix()))
        .await
        .expect("flush");
    assert_eq!(
        last_used(&store, &used).await,
        Some(later + Duration::from_secs(1))
    );
    store
        .delete(&account("acme"), unused.id, &crate::store::note())
        .await
        .expect("delete")
        .expect("found");
    let rows: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT key_id FROM tower_api_keys_last_used ORDER BY key_id")
            .fetch_all(&pool)
            .await
            .expect("rows");
    let mut ids = vec![*used.id.as_uuid(), *elsewhere.id.as_uuid()];
    ids.sort();
    assert_eq!(rows, ids);
}

#[tokio::test]
async fn a_use_that_meets_an_uncommitted_rotation_waits_for_it_and_is_then_dropped() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    // The flushing store's connections carry a name of their own, to find them waiting.
    let name = schema.name.clone();
    let store = PostgresStore::from_pool(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(schema.options().application_name(&name)),
    );
    store.migrate().await.expect("migrate");
    let record = key("acme", None);
    store
        .insert_within_limit(record.clone(), 10, &crate::store::note())
        .await
        .expect("insert");
    // A rotation by hand, still open: its trigger holds the key's row of
    // `tower_api_keys_last_used`.
    let pool = schema.pool();
    let mut rotation = pool.begin().await.expect("begin");
    let new_key = ApiKey::generate().expect("randomness");
    sqlx::query("UPDATE tower_api_keys SET prefix = $2, digest = $3 WHERE id = $1")
        .bind(record.id.as_uuid())
        .bind(new_key.prefix().as_str())
        .bind(&pepper().digest(&new_key).as_bytes()[..])
        .execute(&mut *rotation)
        .await
        .expect("rotate by hand");
    let flush = tokio::spawn({
        let store = store.clone();
        let batch = UsageBatch::last_used(vec![use_of(&record, record.prefix, SystemTime::now())]);
        async move { store.record_usage(&batch).await }
    });
    until("the flush to wait for the rotation's lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&name)
        .fetch_one(&pool)
        .await
        .expect("activity");
        waiting == 1
    })
    .await;
    rotation.commit().await.expect("commit the rotation");
    flush.await.expect("task").expect("flush");
    // Checked against the row as the rotation left it, the use of the old prefix was dropped.
    assert_eq!(last_used(&store, &record).await, None);
}

#[tokio::test]
async fn keys_written_by_hand_get_and_lose_their_last_used_rows() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let record = super::super::sql::old_style_record();
    super::insert_by_hand(store.pool(), &record).await;
    let at = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    store
        .record_usage(&UsageBatch::last_used(vec![use_of(
            &record,
            record.prefix,
            at,
        )]))
        .await
        .expect("flush");
    assert_eq!(last_used(&store, &record).await, Some(at));
    sqlx::query("TRUNCATE tower_api_keys")
        .execute(store.pool())
        .await
        .expect("truncate");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tower_api_keys_last_used")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(rows, 0);
}
