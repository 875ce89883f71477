//! What `SqliteStore` promises beyond the conformance suite: keys survive reopening the file,
//! migrations are idempotent and upgrade a database in place, the limit holds across
//! connections, only digests are kept, usage counts survive reopening too, and a row (a key's
//! or a usage row) edited by hand into something the store never writes is a store failure
//! naming the column.

use std::sync::Arc;

use crate::support::{account, pepper};
use sqlx::Connection as _;
use tower_api_key::store::SqliteStore;
use tower_api_key::usage::{Hour, UsageBatch, UsageDelta, UsageRow};
use tower_api_key::{KeyManager, KeyRecord, KeyStatus, KeyStore, ManagerError, StoreError};

#[tokio::test]
async fn keys_survive_reopening_the_file() {
    let url = crate::support::db::sqlite::fresh_url();
    let (created, revoked) = {
        let store = crate::support::db::sqlite::store_at(&url).await;
        let manager = KeyManager::new(Arc::new(store.clone()), pepper());
        let created = manager.create(&account("acme")).await.expect("create");
        let revoked = manager.create(&account("acme")).await.expect("create");
        manager
            .revoke(&account("acme"), revoked.info.id)
            .await
            .expect("revoke");
        store.pool().close().await;
        (created, revoked)
    };
    let store = crate::support::db::sqlite::store_at(&url).await;
    let found = store
        .find_by_prefix(&created.key.prefix())
        .await
        .expect("find")
        .expect("still there");
    assert_eq!(found.digest, pepper().digest(&created.key));
    assert_eq!(found.created_at, created.info.created_at);
    let listed = store.list(&account("acme")).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].id, revoked.info.id);
    assert_eq!(listed[1].status, KeyStatus::Inactive);
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let store = crate::support::db::sqlite::store().await;
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for run in runs {
        run.await.expect("task").expect("migrate again");
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM tower_api_keys_migrations")
        .fetch_one(store.pool())
        .await
        .expect("count");
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .expect("migrations folder")
        .count();
    assert_eq!(applied, i64::try_from(shipped).expect("count"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_two_stores_on_one_file() {
    let url = crate::support::db::sqlite::fresh_url();
    let a = KeyManager::new(
        Arc::new(crate::support::db::sqlite::store_at(&url).await),
        pepper(),
    );
    let b = KeyManager::new(
        Arc::new(SqliteStore::connect(&url).await.expect("open")),
        pepper(),
    );
    let creates: Vec<_> = (0..16)
        .map(|i| {
            let manager = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { manager.create(&account("acme")).await })
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
    assert_eq!(created, 3);
    assert_eq!(b.list(&account("acme")).await.expect("list").len(), 3);
}

#[tokio::test]
async fn only_digests_are_stored_never_the_key() {
    let url = crate::support::db::sqlite::fresh_url();
    let store = crate::support::db::sqlite::store_at(&url).await;
    let manager = KeyManager::new(Arc::new(store.clone()), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    store.pool().close().await;
    let path = url.trim_start_matches("sqlite://");
    let mut bytes = std::fs::read(path).expect("read the database file");
    if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
        bytes.extend(wal);
    }
    let secret = &created.key.expose_secret()[9..];
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is in the database file"
    );
    let digest = pepper().digest(&created.key);
    assert!(
        bytes.windows(32).any(|w| w == digest.as_bytes()),
        "the digest is in the database file"
    );
}

#[tokio::test]
async fn an_in_memory_database_lives_as_long_as_the_store() {
    let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
    store.migrate().await.expect("migrate");
    let manager = KeyManager::new(Arc::new(store), pepper());
    for _ in 0..3 {
        manager.create(&account("acme")).await.expect("create");
    }
    assert!(matches!(
        manager.create(&account("acme")).await,
        Err(ManagerError::LimitReached { limit: 3 })
    ));
}

#[tokio::test]
async fn a_database_of_the_first_schema_upgrades_in_place_and_its_keys_are_unrestricted() {
    // The database as the first release left it: its table, its bookkeeping, one key.
    let store = store_of_shipped_up_to(1).await;
    let old = super::sql::old_style_record();
    sqlx::query(
        "INSERT INTO tower_api_keys
         (id, account_id, prefix, digest, status, created_at_us, last_used_at_us)
         VALUES (?1, 'acme', ?2, ?3, 'inactive', 1700000000000001, NULL)",
    )
    .bind(old.id.to_string())
    .bind(old.prefix.as_str())
    .bind(&old.digest.as_bytes()[..])
    .execute(store.pool())
    .await
    .expect("an old-style key");

    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("again");
    super::sql::assert_upgraded(&store, &old).await;
}

/// A store (not migrated) on a new file where the shipped migrations up to `last` (their
/// files, in order) were applied and recorded as `migrate` does, checksums included: the
/// database an older release left.
async fn store_of_shipped_up_to(last: i64) -> SqliteStore {
    let store = SqliteStore::connect(&crate::support::db::sqlite::fresh_url())
        .await
        .expect("open");
    sqlx::raw_sql(
        "CREATE TABLE tower_api_keys_migrations (
             version       INTEGER NOT NULL PRIMARY KEY,
             description   TEXT    NOT NULL,
             checksum      BLOB    NOT NULL,
             applied_at_us INTEGER NOT NULL
         ) STRICT",
    )
    .execute(store.pool())
    .await
    .expect("bookkeeping");
    for (version, name, sql, checksum) in super::sql::shipped_migrations("sqlite", last) {
        sqlx::raw_sql(&sql)
            .execute(store.pool())
            .await
            .expect("migration");
        sqlx::query("INSERT INTO tower_api_keys_migrations VALUES (?1, ?2, ?3, 0)")
            .bind(version)
            .bind(&name)
            .bind(checksum)
            .execute(store.pool())
            .await
            .expect("record it");
    }
    store
}

/// A key with every column set, in a store of its own, and a connection to its file that
/// ignores CHECK constraints, to edit rows into what the store never writes.
async fn store_with_full_key() -> (SqliteStore, sqlx::SqliteConnection, KeyRecord) {
    let url = crate::support::db::sqlite::fresh_url();
    let store = crate::support::db::sqlite::store_at(&url).await;
    let record = super::sql::full_record("acme");
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    let mut editor = sqlx::SqliteConnection::connect(&url).await.expect("open");
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut editor)
        .await
        .expect("pragma");
    (store, editor, record)
}

#[tokio::test]
async fn a_policy_column_edited_by_hand_is_a_store_failure_naming_the_column() {
    let blocks: Vec<String> = (0..33).map(|i| format!("10.{i}.0.0/16")).collect();
    let too_many_blocks = format!("allowed_ips = '{}'", blocks.join(" "));
    let cases = [
        ("name = ''", "name"),
        ("name = 'tab\there'", "name"),
        ("name = char(10)", "name"),
        ("scopes = 'Read'", "scopes"),
        ("scopes = 'read  write'", "scopes"),
        ("scopes = ' '", "scopes"),
        ("previous_prefix = 'NOT-OURS'", "previous_prefix"),
        ("previous_digest = x'00'", "previous_digest"),
        ("previous_prefix = NULL", "previous_prefix, previous_digest"),
        (
            "previous_digest = NULL, previous_expires_at_us = NULL",
            "previous_prefix, previous_digest",
        ),
        (
            "rate_limit_per_seconds = NULL",
            "rate_limit_requests and rate_limit_per_seconds",
        ),
        (
            "rate_limit_requests = NULL",
            "rate_limit_requests and rate_limit_per_seconds",
        ),
        ("rate_limit_requests = 0", "rate_limit_requests"),
        ("rate_limit_requests = 1000001", "rate_limit_requests"),
        ("rate_limit_requests = 4294967301", "rate_limit_requests"),
        ("rate_limit_per_seconds = -1", "rate_limit_per_seconds"),
        ("rate_limit_per_seconds = 86401", "rate_limit_per_seconds"),
        ("quota_period = NULL", "quota_requests and quota_period"),
        ("quota_requests = NULL", "quota_requests and quota_period"),
        ("quota_requests = 0", "quota_requests"),
        ("quota_requests = -1", "quota_requests"),
        ("quota_requests = 1000000001", "quota_requests"),
        ("quota_requests = 4294967297", "quota_requests"),
        ("quota_period = 'week'", "quota_period"),
        ("quota_period = 'Day'", "quota_period"),
        ("quota_period = ''", "quota_period"),
        ("allowed_ips = 'not-an-ip'", "allowed_ips"),
        ("allowed_ips = ''", "allowed_ips"),
        ("allowed_ips = ' '", "allowed_ips"),
        ("allowed_ips = '10.0.0.0/8  2001:db8::/32'", "allowed_ips"),
        ("allowed_ips = '10.0.0.0/8,2001:db8::/32'", "allowed_ips"),
        ("allowed_ips = '10.0.0.0/33'", "allowed_ips"),
        ("allowed_ips = '10.0.0.0/+8'", "allowed_ips"),
        (too_many_blocks.as_str(), "allowed_ips"),
        ("metadata = '[1]'", "metadata"),
        ("metadata = '{'", "metadata"),
        ("metadata = ''", "metadata"),
        ("metadata = 'null'", "metadata"),
        ("metadata = '{\"a\":1} {}'", "metadata"),
        (
            "metadata = '{\"k\":\"' || replace(hex(zeroblob(2500)), '0', 'x') || '\"}'",
            "metadata",
        ),
    ];
    for (edit, column) in cases {
        let (store, mut editor, record) = store_with_full_key().await;
        sqlx::raw_sql(&format!("UPDATE tower_api_keys SET {edit}"))
            .execute(&mut editor)
            .await
            .expect("edit by hand");
        super::sql::assert_unreadable(&store, &record, edit, column).await;
    }
}

#[tokio::test]
async fn the_schema_refuses_half_a_quota_and_the_store_refuses_what_the_schema_lets_through() {
    let (store, _, record) = store_with_full_key().await;
    for edit in [
        "quota_period = NULL",
        "quota_requests = NULL",
        "quota_requests = 0",
        "quota_requests = 1000000001",
        "quota_period = 'week'",
        "metadata = '{\"k\":\"' || replace(hex(zeroblob(2500)), '0', 'x') || '\"}'",
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
    for (edit, column) in [
        ("allowed_ips = 'not-an-ip'", "allowed_ips"),
        ("metadata = '[1]'", "metadata"),
        ("metadata = '{'", "metadata"),
    ] {
        let (store, _, record) = store_with_full_key().await;
        sqlx::raw_sql(&format!("UPDATE tower_api_keys SET {edit}"))
            .execute(store.pool())
            .await
            .expect("the schema lets it through");
        super::sql::assert_unreadable(&store, &record, edit, column).await;
    }
}

#[tokio::test]
async fn a_database_of_the_previous_schema_upgrades_in_place_and_its_keys_keep_their_policy() {
    // The database as the previous release left it: its tables, its bookkeeping, one key
    // with every column of that release set.
    let store = store_of_shipped_up_to(4).await;
    let old = KeyRecord {
        quota: None,
        allowed_ips: None,
        metadata: None,
        ..super::sql::full_record("acme")
    };
    let previous = old.previous.as_ref().expect("a previous key");
    sqlx::query(
        "INSERT INTO tower_api_keys
         (id, account_id, prefix, digest, status, created_at_us, last_used_at_us, name, scopes,
          expires_at_us, rate_limit_requests, rate_limit_per_seconds, previous_prefix,
          previous_digest, previous_expires_at_us)
         VALUES (?1, 'acme', ?2, ?3, 'active', 1700000000000000, NULL, 'CI', 'read write',
                 2000000000000000, 5, 2, ?4, ?5, 1800000000000000)",
    )
    .bind(old.id.to_string())
    .bind(old.prefix.as_str())
    .bind(&old.digest.as_bytes()[..])
    .bind(previous.prefix.as_str())
    .bind(&previous.digest.as_bytes()[..])
    .execute(store.pool())
    .await
    .expect("a key of the previous release");

    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("again");
    super::sql::upgraded_key_takes_the_new_policy(&store, old).await;
}

/// One flush of counts for `key` in `acme`'s hour 475,000.
fn counts(key: tower_api_key::KeyId, accepted: i64) -> UsageBatch {
    UsageBatch {
        last_used: Vec::new(),
        counts: vec![UsageDelta {
            account_id: account("acme"),
            key_id: key,
            hour: Hour::from_index(475_000),
            accepted,
            rate_limited: 1,
            refused: 0,
        }],
    }
}

async fn acme_usage(store: &SqliteStore) -> Result<Vec<UsageRow>, StoreError> {
    store
        .usage(
            &account("acme"),
            None,
            Hour::from_index(0),
            Hour::from_index(u32::MAX),
        )
        .await
}

#[tokio::test]
async fn usage_counts_survive_reopening_the_file() {
    let url = crate::support::db::sqlite::fresh_url();
    let key = tower_api_key::KeyId::random();
    {
        let store = crate::support::db::sqlite::store_at(&url).await;
        store.record_usage(&counts(key, 2)).await.expect("flush");
        store.pool().close().await;
    }
    let store = crate::support::db::sqlite::store_at(&url).await;
    store.record_usage(&counts(key, 3)).await.expect("flush");
    let rows = acme_usage(&store).await.expect("usage");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].key_id, rows[0].hour.index()), (key, 475_000));
    assert_eq!(
        (rows[0].counts.accepted, rows[0].counts.rate_limited),
        (5, 2)
    );
}

#[tokio::test]
async fn a_usage_row_edited_by_hand_is_a_store_failure_naming_the_column() {
    // (An hour out of range can't be edited in: no query's range reaches it.)
    for (edit, column) in [
        ("key_id = 'not-a-uuid'", "key_id"),
        ("key_id = ''", "key_id"),
    ] {
        let (store, mut editor, _) = store_with_full_key().await;
        store
            .record_usage(&counts(tower_api_key::KeyId::random(), 1))
            .await
            .expect("flush");
        sqlx::raw_sql(&format!("UPDATE tower_api_keys_usage SET {edit}"))
            .execute(&mut editor)
            .await
            .expect("edit by hand");
        let err = acme_usage(&store).await.expect_err("an unreadable row");
        assert!(
            matches!(&err, StoreError::Unavailable(_)) && err.to_string().contains(column),
            "{edit}: {err}"
        );
    }
}

#[tokio::test]
async fn a_database_of_the_previous_schema_gains_the_audit_trail_and_its_keys_are_audited() {
    // The database as the previous release left it, with a key of that release.
    let store = store_of_shipped_up_to(5).await;
    let old = super::sql::full_record("acme");
    sqlx::query(
        "INSERT INTO tower_api_keys (id, account_id, prefix, digest, status, created_at_us)
         VALUES (?1, 'acme', ?2, ?3, 'active', 1700000000000000)",
    )
    .bind(old.id.to_string())
    .bind(old.prefix.as_str())
    .bind(&old.digest.as_bytes()[..])
    .execute(store.pool())
    .await
    .expect("a key of the previous release");

    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("again");
    super::sql::assert_upgraded_store_audits(&store, old.id).await;
}

#[tokio::test]
async fn a_change_and_its_audit_entry_commit_together_or_not_at_all() {
    let store = crate::support::db::sqlite::store().await;
    sqlx::raw_sql(&format!(
        "CREATE TRIGGER refuse_entries BEFORE INSERT ON tower_api_keys_audit
         WHEN NEW.actor = '{}' BEGIN SELECT RAISE(ABORT, 'entry refused'); END",
        super::sql::REFUSED_ACTOR
    ))
    .execute(store.pool())
    .await
    .expect("trigger");
    super::sql::assert_no_change_without_its_entry(&store).await;
}

#[tokio::test]
async fn an_audit_entry_edited_by_hand_is_a_store_failure_naming_the_column() {
    for (edit, column) in super::sql::UNREADABLE_ENTRIES.into_iter().chain([
        ("key_id = NULL", "key_id and prefix"),
        ("action = 'explode'", "action"),
        ("outcome = 'maybe'", "outcome"),
    ]) {
        let (store, mut editor, _) = store_with_full_key().await;
        super::sql::append_entry(&store, "edited").await;
        sqlx::raw_sql(&format!(
            "UPDATE tower_api_keys_audit SET {edit} WHERE account_id = 'edited'"
        ))
        .execute(&mut editor)
        .await
        .expect("edit by hand");
        super::sql::assert_trail_unreadable(&store, "edited", edit, column).await;
    }
}
