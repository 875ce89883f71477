//! What `SqliteStore` promises beyond the conformance suite: keys survive reopening the file,
//! migrations are idempotent, the limit holds across connections, and only digests are kept.

use std::sync::Arc;

use crate::support::{account, pepper};
use tower_api_key::store::SqliteStore;
use tower_api_key::{KeyManager, KeyStatus, KeyStore, ManagerError};

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
