//! What `PostgresStore` promises beyond the conformance suite: migrations (upgrading a
//! database in place), the limit across
//! processes, database constraints, unreadable rows edited by hand, digests only, change notifications that go out with the
//! change's commit, and connections over TLS. Each test has a schema of its own; without `DATABASE_URL` each one
//! says it was skipped.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::db::postgres::Schema;
use crate::support::wait::PATIENCE;
use crate::support::{account, pepper};
use sqlx::Row as _;
use sqlx::postgres::PgListener;
use tower_api_key::invalidation::InvalidationBus;
use tower_api_key::policy::{AllowedIps, Metadata, Quota, QuotaPeriod, RateLimit};
use tower_api_key::resolver::{Resolver as _, StoreResolver};
use tower_api_key::store::{KeyUse, MigrateError, PgChangeFeed, PostgresStore, StoreError};
use tower_api_key::usage::{Hour, UsageBatch, UsageDelta};
use tower_api_key::{
    ApiKey, KeyId, KeyManager, KeyRecord, KeyStore, ManagerError, PolicyUpdate, PreviousKey,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_from_many_processes_at_once() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let stores: Vec<_> = (0..4)
        .map(|_| tower_api_key::PostgresStore::from_pool(schema.pool()))
        .collect();
    let runs: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for run in runs {
        run.await.expect("task").expect("migrate");
    }
    stores[0].migrate().await.expect("again");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM tower_api_keys_migrations")
        .fetch_one(stores[0].pool())
        .await
        .expect("count");
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("migrations folder")
        .count();
    assert_eq!(applied, i64::try_from(shipped).expect("count"));
}

#[tokio::test]
async fn a_shipped_migration_applied_with_other_text_is_refused() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    sqlx::query("UPDATE tower_api_keys_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(store.pool())
        .await
        .expect("tamper");
    let err = store.migrate().await.expect_err("modified");
    assert!(
        matches!(err, MigrateError::Modified { version: 1 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_limit_holds_when_creates_alternate_between_two_processes() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    // Two pools: as far as PostgreSQL can tell, two processes.
    let a = KeyManager::new(Arc::new(schema.store().await), pepper());
    let b = KeyManager::new(Arc::new(schema.store().await), pepper());
    for round in 0..3 {
        let acme = account(&format!("acme{round}"));
        let creates: Vec<_> = (0..12)
            .map(|i| {
                let manager = if i % 2 == 0 { a.clone() } else { b.clone() };
                let acme = acme.clone();
                tokio::spawn(async move { manager.create(&acme).await })
            })
            .collect();
        let mut created = 0;
        for create in creates {
            match create.await.expect("task") {
                Ok(_) => created += 1,
                Err(ManagerError::LimitReached { limit: 3 }) => {}
                Err(other) => panic!("unexpected: {other}"),
            }
        }
        assert_eq!(created, 3, "round {round}");
        assert_eq!(a.list(&acme).await.expect("list").len(), 3);
    }
}

#[tokio::test]
async fn prefix_uniqueness_is_a_database_constraint() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let manager = KeyManager::new(Arc::new(store.clone()), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    // Behind the store's back: the database itself refuses the duplicate prefix.
    let err = sqlx::query(
        "INSERT INTO tower_api_keys (id, account_id, prefix, digest, status, created_at)
         VALUES (gen_random_uuid(), 'other', $1, $2, 'active', now())",
    )
    .bind(created.info.prefix.as_str())
    .bind(vec![0u8; 32])
    .execute(store.pool())
    .await
    .expect_err("duplicate prefix");
    let db = err.as_database_error().expect("a database error");
    assert!(db.is_unique_violation(), "{db}");
    assert_eq!(db.constraint(), Some("tower_api_keys_prefix_key"));
}

#[tokio::test]
async fn only_digests_are_stored_never_the_key() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let manager = KeyManager::new(Arc::new(store.clone()), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let rotated = manager
        .rotate(&account("acme"), created.info.id)
        .await
        .expect("rotate");
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(k)::text FROM tower_api_keys k")
        .fetch_all(store.pool())
        .await
        .expect("dump");
    assert_eq!(rows.len(), 1);
    for key in [&created.key, &rotated.key] {
        let secret = &key.expose_secret()[9..];
        assert!(!rows[0].contains(secret), "a secret is stored: {}", rows[0]);
    }
    let digest: Vec<u8> = sqlx::query_scalar("SELECT digest FROM tower_api_keys")
        .fetch_one(store.pool())
        .await
        .expect("digest");
    assert_eq!(digest, pepper().digest(&rotated.key).as_bytes());
}

#[tokio::test]
async fn times_round_trip_exactly_to_the_microsecond() {
    let Some(store) = crate::support::db::postgres::store().await else {
        return;
    };
    let micros = [
        0,
        1,
        1_700_000_000_123_457,
        4_102_444_799_999_999, // 2099-12-31T23:59:59.999999Z
        -1,
        -86_400_000_001,
    ];
    for (i, created) in micros.into_iter().enumerate() {
        let key = ApiKey::generate().expect("randomness");
        let at = |micros: i64| {
            if micros >= 0 {
                UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs())
            } else {
                UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
            }
        };
        let old = ApiKey::generate().expect("randomness");
        let record = KeyRecord {
            last_used_at: Some(at(created + 1)),
            expires_at: Some(at(created + 2)),
            previous: Some(PreviousKey {
                prefix: old.prefix(),
                digest: pepper().digest(&old),
                expires_at: at(created + 3),
            }),
            ..KeyRecord::new(
                KeyId::random(),
                account(&format!("t{i}")),
                key.prefix(),
                pepper().digest(&key),
                at(created),
            )
        };
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        let read = store.find_by_prefix(&record.prefix).await.expect("find");
        assert_eq!(read, Some(record), "{created} µs");
    }
}

#[tokio::test]
async fn a_time_out_of_range_edited_by_hand_is_a_store_failure_naming_the_column() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let manager = KeyManager::new(Arc::new(store.clone()), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    for value in ["infinity", "-infinity", "10000-01-01 00:00:00+00"] {
        sqlx::query("UPDATE tower_api_keys_last_used SET last_used_at = $1::timestamptz")
            .bind(value)
            .execute(&schema.pool())
            .await
            .expect("edit by hand");
        let err = store
            .find_by_prefix(&created.key.prefix())
            .await
            .expect_err("an unreadable row");
        assert!(
            matches!(&err, StoreError::Unavailable(_)) && err.to_string().contains("last_used_at"),
            "{value}: {err}"
        );
    }
}

#[tokio::test]
async fn a_database_of_the_earlier_schema_upgrades_in_place_and_its_keys_are_unrestricted() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let pool = schema.pool();
    // The database as the previous release left it: its table, its bookkeeping, one key.
    super::apply_shipped_up_to(&pool, 2).await;
    let old = super::super::sql::old_style_record();
    super::insert_by_hand(&pool, &old).await;

    let store = PostgresStore::from_pool(pool);
    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("again");
    super::super::sql::assert_upgraded(&store, &old).await;
}

#[tokio::test]
async fn the_schema_refuses_half_a_quota_and_the_store_refuses_what_the_schema_lets_through() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let record = super::super::sql::full_record("acme");
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    for edit in [
        "quota_period = NULL",
        "quota_requests = NULL",
        "quota_requests = 0",
        "quota_requests = 1000000001",
        "quota_period = 'week'",
        "metadata = '{\"k\":\"' || repeat('x', 5000) || '\"}'",
    ] {
        let err = sqlx::raw_sql(&format!("UPDATE tower_api_keys SET {edit}"))
            .execute(store.pool())
            .await
            .expect_err("refused by a CHECK");
        let db = err.as_database_error().expect("a database error");
        assert!(db.is_check_violation(), "{edit}: {db}");
    }
    assert_eq!(
        store.find_by_prefix(&record.prefix).await.expect("find"),
        Some(record.clone())
    );
    // What the schema can't tell apart from a valid value, the store refuses to read.
    for (i, (edit, column)) in [
        ("allowed_ips = 'not-an-ip'", "allowed_ips"),
        ("metadata = '[1]'", "metadata"),
        ("metadata = '{'", "metadata"),
    ]
    .into_iter()
    .enumerate()
    {
        let record = super::super::sql::full_record(&format!("edited{i}"));
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        sqlx::query(&format!("UPDATE tower_api_keys SET {edit} WHERE id = $1"))
            .bind(record.id.as_uuid())
            .execute(store.pool())
            .await
            .expect("the schema lets it through");
        super::super::sql::assert_unreadable(&store, &record, edit, column).await;
    }
}

#[tokio::test]
async fn a_database_of_the_previous_schema_upgrades_in_place_and_its_keys_keep_their_policy() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let pool = schema.pool();
    // The database as the previous release left it: its tables, its bookkeeping, one key
    // with every column of that release set.
    super::apply_shipped_up_to(&pool, 5).await;
    let old = KeyRecord {
        quota: None,
        allowed_ips: None,
        metadata: None,
        ..super::super::sql::full_record("acme")
    };
    let previous = old.previous.as_ref().expect("a previous key");
    sqlx::query(
        "INSERT INTO tower_api_keys
         (id, account_id, prefix, digest, status, created_at, last_used_at, name, scopes,
          expires_at, rate_limit_requests, rate_limit_per_seconds, previous_prefix,
          previous_digest, previous_expires_at)
         VALUES ($1, 'acme', $2, $3, 'active', to_timestamp(1700000000), NULL, 'CI',
                 '{read,write}', to_timestamp(2000000000), 5, 2, $4, $5,
                 to_timestamp(1800000000))",
    )
    .bind(old.id.as_uuid())
    .bind(old.prefix.as_str())
    .bind(&old.digest.as_bytes()[..])
    .bind(previous.prefix.as_str())
    .bind(&previous.digest.as_bytes()[..])
    .execute(&pool)
    .await
    .expect("a key of the previous release");

    let store = PostgresStore::from_pool(pool);
    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("again");
    // The upgraded table takes the new fields, and their changes notify.
    let mut listener = listen(&schema).await;
    let expected = super::super::sql::upgraded_key_takes_the_new_policy(&store, old).await;
    let digest = hex(expected.digest.as_bytes());
    let heard = next_about(&mut listener, &digest).await;
    assert!(heard.starts_with(&digest), "{heard}");
}

#[tokio::test]
async fn a_policy_column_edited_by_hand_is_a_store_failure_naming_the_column() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    // This schema is the test's own: drop the checks that would refuse some of the edits.
    sqlx::raw_sql(
        "ALTER TABLE tower_api_keys
             DROP CONSTRAINT tower_api_keys_previous_check,
             DROP CONSTRAINT tower_api_keys_previous_prefix_check,
             DROP CONSTRAINT tower_api_keys_previous_digest_check,
             DROP CONSTRAINT tower_api_keys_rate_limit_check,
             DROP CONSTRAINT tower_api_keys_rate_limit_requests_check,
             DROP CONSTRAINT tower_api_keys_rate_limit_per_seconds_check,
             DROP CONSTRAINT tower_api_keys_quota_check,
             DROP CONSTRAINT tower_api_keys_quota_requests_check,
             DROP CONSTRAINT tower_api_keys_quota_period_check,
             DROP CONSTRAINT tower_api_keys_metadata_check",
    )
    .execute(&schema.pool())
    .await
    .expect("drop checks");
    let blocks: Vec<String> = (0..33).map(|i| format!("10.{i}.0.0/16")).collect();
    let too_many_blocks = format!("allowed_ips = '{}'", blocks.join(" "));
    let cases = [
        ("name = 'tab' || chr(9) || 'here'", "name"),
        ("scopes = '{Read}'", "scopes"),
        ("scopes = '{read,NULL}'", "scopes"),
        ("scopes = '{\"read write\"}'", "scopes"),
        (
            "scopes = (SELECT array_agg('s' || i) FROM generate_series(1, 17) AS i)",
            "scopes",
        ),
        ("expires_at = 'infinity'", "expires_at"),
        ("previous_expires_at = '-infinity'", "previous_expires_at"),
        ("previous_prefix = 'NOT-OURS'", "previous_prefix"),
        ("previous_digest = '\\x00'", "previous_digest"),
        ("previous_prefix = NULL", "previous_prefix, previous_digest"),
        (
            "previous_digest = NULL, previous_expires_at = NULL",
            "previous_prefix, previous_digest",
        ),
        (
            "rate_limit_per_seconds = NULL",
            "rate_limit_requests and rate_limit_per_seconds",
        ),
        ("rate_limit_requests = 0", "rate_limit_requests"),
        ("rate_limit_per_seconds = 86401", "rate_limit_per_seconds"),
        ("quota_period = NULL", "quota_requests and quota_period"),
        ("quota_requests = NULL", "quota_requests and quota_period"),
        ("quota_requests = 0", "quota_requests"),
        ("quota_requests = -1", "quota_requests"),
        ("quota_requests = 1000000001", "quota_requests"),
        ("quota_period = 'week'", "quota_period"),
        ("quota_period = 'Day'", "quota_period"),
        ("allowed_ips = 'not-an-ip'", "allowed_ips"),
        ("allowed_ips = ''", "allowed_ips"),
        ("allowed_ips = '10.0.0.0/8  2001:db8::/32'", "allowed_ips"),
        ("allowed_ips = '10.0.0.0/8,2001:db8::/32'", "allowed_ips"),
        ("allowed_ips = '10.0.0.0/33'", "allowed_ips"),
        (too_many_blocks.as_str(), "allowed_ips"),
        ("metadata = '[1]'", "metadata"),
        ("metadata = '{'", "metadata"),
        ("metadata = ''", "metadata"),
        ("metadata = 'null'", "metadata"),
        (
            "metadata = '{\"k\":\"' || repeat('x', 5000) || '\"}'",
            "metadata",
        ),
    ];
    for (i, (edit, column)) in cases.into_iter().enumerate() {
        let record = super::super::sql::full_record(&format!("acme{i}"));
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        sqlx::query(&format!("UPDATE tower_api_keys SET {edit} WHERE id = $1"))
            .bind(record.id.as_uuid())
            .execute(store.pool())
            .await
            .expect("edit by hand");
        super::super::sql::assert_unreadable(&store, &record, edit, column).await;
    }
}

#[tokio::test]
async fn last_used_from_two_processes_only_moves_forward() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (a, b) = (schema.store().await, schema.store().await);
    let manager = KeyManager::new(Arc::new(a.clone()), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let base = SystemTime::now();
    let use_at = |ms: u64| KeyUse {
        id: created.info.id,
        prefix: created.info.prefix,
        at: base + Duration::from_millis(ms),
    };
    // Overlapping batches, flushed concurrently by both "processes", in both orders.
    let flushes: Vec<_> = (0..20u64)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let uses = vec![use_at(i), use_at(40 - i)];
            tokio::spawn(async move {
                store
                    .record_usage(&UsageBatch::last_used(uses.clone()))
                    .await
            })
        })
        .collect();
    for flush in flushes {
        flush.await.expect("task").expect("flush");
    }
    let last = manager
        .get(&account("acme"), created.info.id)
        .await
        .expect("get")
        .last_used_at;
    let expected = UNIX_EPOCH
        + Duration::from_micros(
            (base + Duration::from_millis(40))
                .duration_since(UNIX_EPOCH)
                .expect("after epoch")
                .as_micros()
                .try_into()
                .expect("fits"),
        );
    assert_eq!(last, Some(expected));
}

/// Listens on the store's channel from a connection of its own.
pub(super) async fn listen(schema: &Schema) -> PgListener {
    let pool = schema.pool();
    let mut listener = PgListener::connect_with(&pool).await.expect("listen");
    listener.listen("tower_api_keys").await.expect("LISTEN");
    listener
}

/// The next notification whose payload mentions `digest` (other tests share the channel).
async fn next_about(listener: &mut PgListener, digest: &str) -> String {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let notification = listener.recv().await.expect("notification");
            if notification.payload().contains(digest) {
                return notification.payload().to_owned();
            }
        }
    })
    .await
    .expect("a notification")
}

#[tokio::test]
async fn every_change_notifies_the_digests_it_concerns() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let mut listener = listen(&schema).await;
    let manager = KeyManager::new(Arc::new(store.clone()), pepper());
    let acme = account("acme");
    let created = manager.create(&acme).await.expect("create");
    let old = hex(pepper().digest(&created.key).as_bytes());
    // A new key can't be cached anywhere: its creation is not announced. Notifications
    // arrive in commit order, so anything the create sent comes before this marker.
    sqlx::query("SELECT pg_notify('tower_api_keys', 'marker-after-create')")
        .execute(store.pool())
        .await
        .expect("marker");
    let before_marker = tokio::time::timeout(PATIENCE, async {
        let mut heard = Vec::new();
        loop {
            let payload = listener
                .recv()
                .await
                .expect("notification")
                .payload()
                .to_owned();
            if payload == "marker-after-create" {
                return heard;
            }
            heard.push(payload);
        }
    })
    .await
    .expect("the marker");
    assert!(
        !before_marker.iter().any(|payload| payload.contains(&old)),
        "create is silent"
    );

    manager
        .revoke(&acme, created.info.id)
        .await
        .expect("revoke");
    assert_eq!(next_about(&mut listener, &old).await, old, "revoke");
    manager
        .reactivate(&acme, created.info.id)
        .await
        .expect("reactivate");
    assert_eq!(next_about(&mut listener, &old).await, old, "reactivate");
    // The rate limit travels with a cached key: setting and clearing it notify.
    for limit in [Some(RateLimit::new(5, 2).expect("limit")), None] {
        manager
            .update(
                &acme,
                created.info.id,
                PolicyUpdate::new().rate_limit(limit),
            )
            .await
            .expect("update");
        assert_eq!(next_about(&mut listener, &old).await, old, "{limit:?}");
    }

    let rotated = manager
        .rotate(&acme, created.info.id)
        .await
        .expect("rotate");
    let new = hex(pepper().digest(&rotated.key).as_bytes());
    assert_eq!(
        next_about(&mut listener, &old).await,
        format!("{old} {new}"),
        "rotate"
    );

    manager
        .delete(&acme, created.info.id)
        .await
        .expect("delete");
    assert_eq!(next_about(&mut listener, &new).await, new, "delete");

    sqlx::query("TRUNCATE tower_api_keys")
        .execute(store.pool())
        .await
        .expect("truncate");
    assert_eq!(next_about(&mut listener, "*").await, "*", "truncate");
}

/// Every payload heard until a marker sent after everything before it committed:
/// notifications arrive in commit order, so nothing sent earlier can arrive later.
pub(super) async fn heard_until_marker(
    listener: &mut PgListener,
    store: &PostgresStore,
) -> Vec<String> {
    let marker = format!("marker {}", KeyId::random());
    sqlx::query("SELECT pg_notify('tower_api_keys', $1)")
        .bind(&marker)
        .execute(store.pool())
        .await
        .expect("marker");
    tokio::time::timeout(PATIENCE, async {
        let mut heard = Vec::new();
        loop {
            let payload = listener.recv().await.expect("notification");
            if payload.payload() == marker {
                return heard;
            }
            heard.push(payload.payload().to_owned());
        }
    })
    .await
    .expect("the marker")
}

#[tokio::test]
async fn quota_allowlist_and_metadata_changes_notify_and_updates_that_keep_them_do_not() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let mut listener = listen(&schema).await;
    let key = ApiKey::generate().expect("randomness");
    let record = KeyRecord::new(
        KeyId::random(),
        account("acme"),
        key.prefix(),
        pepper().digest(&key),
        SystemTime::now(),
    );
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    let digest = hex(record.digest.as_bytes());
    let heard_about = |heard: Vec<String>| -> Vec<String> {
        heard.into_iter().filter(|p| p.contains(&digest)).collect()
    };
    assert_eq!(
        heard_about(heard_until_marker(&mut listener, &store).await),
        Vec::<String>::new(),
        "insert"
    );

    let (quota, allowed, metadata) = super::super::sql::new_policy();
    let changes = [
        ("set quota", PolicyUpdate::new().quota(Some(quota))),
        (
            "replace quota",
            PolicyUpdate::new().quota(Some(Quota::new(10_000, QuotaPeriod::Day).expect("quota"))),
        ),
        ("clear quota", PolicyUpdate::new().quota(None)),
        (
            "set allowlist",
            PolicyUpdate::new().allowed_ips(Some(allowed.clone())),
        ),
        (
            "replace allowlist",
            PolicyUpdate::new().allowed_ips(Some(
                AllowedIps::new(["203.0.113.0/25"]).expect("allowlist"),
            )),
        ),
        ("clear allowlist", PolicyUpdate::new().allowed_ips(None)),
        (
            "set metadata",
            PolicyUpdate::new().metadata(Some(metadata.clone())),
        ),
        (
            "replace metadata",
            PolicyUpdate::new().metadata(Some(
                Metadata::from_json(r#"{"plan":"free"}"#).expect("metadata"),
            )),
        ),
        ("clear metadata", PolicyUpdate::new().metadata(None)),
    ];
    for (change, update) in changes {
        store
            .update_policy(
                &record.account_id,
                record.id,
                &update,
                &crate::store::note(),
            )
            .await
            .expect("update")
            .expect("found");
        assert_eq!(
            heard_about(heard_until_marker(&mut listener, &store).await),
            [digest.as_str()],
            "{change}"
        );
    }

    // Set all three again, then updates that leave them as they are: silence.
    let all = PolicyUpdate::new()
        .quota(Some(quota))
        .allowed_ips(Some(allowed.clone()))
        .metadata(Some(metadata.clone()));
    store
        .update_policy(&record.account_id, record.id, &all, &crate::store::note())
        .await
        .expect("update")
        .expect("found");
    assert_eq!(
        heard_about(heard_until_marker(&mut listener, &store).await),
        [digest.as_str()],
        "all three"
    );
    let unchanged = [
        ("the same values", all),
        ("nothing", PolicyUpdate::new()),
        (
            "the name",
            PolicyUpdate::new().name(Some(tower_api_key::KeyName::new("CI").expect("name"))),
        ),
    ];
    for (change, update) in unchanged {
        let updated = store
            .update_policy(
                &record.account_id,
                record.id,
                &update,
                &crate::store::note(),
            )
            .await
            .expect("update")
            .expect("found");
        assert_eq!(
            (updated.quota, updated.allowed_ips, updated.metadata),
            (Some(quota), Some(allowed.clone()), Some(metadata.clone())),
            "{change}"
        );
        assert_eq!(
            heard_about(heard_until_marker(&mut listener, &store).await),
            Vec::<String>::new(),
            "{change}"
        );
    }
}

#[tokio::test]
async fn a_change_notifies_only_when_it_commits_and_last_used_never_does() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let manager = KeyManager::new(Arc::new(store.clone()), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let digest = hex(pepper().digest(&created.key).as_bytes());
    let mut listener = listen(&schema).await;

    // A revoke that rolls back, and usage writes (last used and counts): nothing to hear.
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("UPDATE tower_api_keys SET status = 'inactive'")
        .execute(&mut *tx)
        .await
        .expect("update");
    tx.rollback().await.expect("rollback");
    store
        .record_usage(&UsageBatch {
            last_used: vec![KeyUse {
                id: created.info.id,
                prefix: created.info.prefix,
                at: SystemTime::now(),
            }],
            counts: vec![UsageDelta {
                account_id: account("acme"),
                key_id: created.info.id,
                hour: Hour::containing(SystemTime::now()),
                accepted: 1,
                rate_limited: 0,
                refused: 0,
            }],
        })
        .await
        .expect("last used and counts");

    // A revoke held open: nothing to hear until it commits, then its digest.
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("UPDATE tower_api_keys SET status = 'inactive'")
        .execute(&mut *tx)
        .await
        .expect("update");
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let n = listener.recv().await.expect("notification");
            if n.payload().contains(&digest) {
                return n.payload().to_owned();
            }
        }
    })
    .await;
    assert!(early.is_err(), "heard before commit: {early:?}");
    tx.commit().await.expect("commit");
    assert_eq!(next_about(&mut listener, &digest).await, digest);
    let status: String = sqlx::query("SELECT status FROM tower_api_keys")
        .fetch_one(store.pool())
        .await
        .expect("status")
        .get(0);
    assert_eq!(status, "inactive");
}

/// Whether a connection is encrypted, by `pg_stat_ssl`: one of `pool`, or the connection
/// named `application_name`.
async fn encrypted(pool: &sqlx::PgPool, application_name: Option<&str>) -> bool {
    let query = match application_name {
        None => sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
        Some(name) => sqlx::query_scalar(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
        )
        .bind(name.to_owned()),
    };
    query.fetch_one(pool).await.expect("pg_stat_ssl")
}

#[tokio::test]
async fn connects_over_tls_with_sslmode_require() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let plain = schema.pool();
    let server_ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&plain)
        .await
        .expect("show ssl");
    if server_ssl != "on" {
        // CI turns SSL on: there, a server without it is a failure, not a skip.
        assert!(
            std::env::var_os("REQUIRE_DATABASE_URL").is_none(),
            "the server has SSL off but REQUIRE_DATABASE_URL is set"
        );
        eprintln!("skipped: the server at DATABASE_URL has SSL off");
        return;
    }
    let url = format!("{}&sslmode=require", schema.url_with_search_path());
    let store = PostgresStore::connect(&url)
        .await
        .expect("connect over TLS");
    store.migrate().await.expect("migrate");
    assert!(
        encrypted(store.pool(), None).await,
        "the store's connection"
    );

    let manager = KeyManager::new(Arc::new(store.clone()), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    let digest = pepper().digest(&created.key);
    let identity = StoreResolver::new(Arc::new(store.clone()))
        .resolve(&created.key, &digest)
        .await
        .expect("resolve")
        .expect("found");
    assert_eq!(identity.key_id(), created.info.id);

    let name = format!("{} tls feed", schema.name);
    let feed = tower_api_key::feed::spawn(
        PgChangeFeed::new(&store).application_name(&name),
        &InvalidationBus::new(),
        tower_api_key::feed::FeedConfig::default(),
    );
    assert!(feed.wait_subscribed(Duration::from_secs(10)).await);
    assert!(
        encrypted(store.pool(), Some(&name)).await,
        "the feed's connection"
    );
    feed.shutdown().await;
}
