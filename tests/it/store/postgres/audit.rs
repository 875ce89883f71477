//! The audit trail in PostgreSQL beyond the conformance suite: an entry and its change are
//! one atomic step, seen together from any connection; two processes write one trail,
//! numbered in one order; entries notify nothing; unreadable entries name their column; a
//! database of the previous release gains the trail. Without `DATABASE_URL` each test says
//! it was skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::note_of;
use crate::support::account;
use crate::support::db::postgres::{Database, Schema};
use sqlx::postgres::PgListener;
use tower_api_key::audit::{AuditAction, AuditChanges, AuditEntry, AuditQuery};
use tower_api_key::store::PostgresStore;
use tower_api_key::{ApiKey, KeyStatus, KeyStore};

fn note(actor: &str, action: AuditAction) -> tower_api_key::audit::AuditNote {
    note_of(SystemTime::now(), actor, action, AuditChanges::none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_connection_sees_a_change_exactly_when_it_sees_its_entry() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    let record = crate::store::new_record("acme").0;
    let id = record.id;
    store
        .insert_within_limit(record, 3, &note("operator", AuditAction::Create))
        .await
        .expect("insert");
    let done = Arc::new(AtomicBool::new(false));
    let changes = tokio::spawn({
        let (store, done) = (store.clone(), done.clone());
        async move {
            let acme = account("acme");
            for _ in 0..40 {
                for (status, action) in [
                    (KeyStatus::Inactive, AuditAction::Revoke),
                    (KeyStatus::Active, AuditAction::Reactivate),
                ] {
                    store
                        .set_status(&acme, id, status, &note("operator", action))
                        .await
                        .expect("set")
                        .expect("found");
                }
                let key = ApiKey::generate().expect("randomness");
                store
                    .replace_key(
                        &acme,
                        id,
                        key.prefix(),
                        crate::support::pepper().digest(&key),
                        None,
                        &note("operator", AuditAction::Rotate),
                    )
                    .await
                    .expect("rotate")
                    .expect("found");
            }
            done.store(true, Ordering::SeqCst);
        }
    });
    // One statement is one snapshot: the key's status and prefix against the entries.
    let reader = schema.pool();
    let mut reads = 0;
    while !done.load(Ordering::SeqCst) {
        let (status, prefix, status_changes, last_prefix): (String, String, i64, String) =
            sqlx::query_as(
                "SELECT k.status, k.prefix,
                        (SELECT count(*) FROM tower_api_keys_audit a WHERE a.key_id = k.id
                           AND a.action IN ('revoke', 'reactivate')),
                        (SELECT a.prefix FROM tower_api_keys_audit a WHERE a.key_id = k.id
                           ORDER BY a.id DESC LIMIT 1)
                 FROM tower_api_keys k WHERE k.id = $1",
            )
            .bind(id.as_uuid())
            .fetch_one(&reader)
            .await
            .expect("read");
        assert_eq!(
            status == "inactive",
            status_changes % 2 == 1,
            "{status}, {status_changes}"
        );
        assert_eq!(
            prefix, last_prefix,
            "the newest entry names the current prefix"
        );
        reads += 1;
    }
    changes.await.expect("changes");
    assert!(reads > 1, "{reads} reads");
    let trail = store
        .audit_trail(&account("acme"), &AuditQuery::latest(500))
        .await
        .expect("trail");
    assert_eq!(trail.len(), 1 + 40 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_write_one_trail_in_one_order() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    // Two pools: as far as PostgreSQL can tell, two processes.
    let stores = [schema.store().await, schema.store().await];
    let records: Vec<_> = (0..10)
        .map(|_| crate::store::new_record("acme").0)
        .collect();
    let writes: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            // Created through one, revoked through the other.
            let (creator, revoker) = (stores[i % 2].clone(), stores[(i + 1) % 2].clone());
            let record = record.clone();
            tokio::spawn(async move {
                creator
                    .insert_within_limit(
                        record.clone(),
                        100,
                        &note(&format!("p{}", i % 2), AuditAction::Create),
                    )
                    .await
                    .expect("insert");
                revoker
                    .set_status(
                        &record.account_id,
                        record.id,
                        KeyStatus::Inactive,
                        &note(&format!("p{}", (i + 1) % 2), AuditAction::Revoke),
                    )
                    .await
                    .expect("revoke")
                    .expect("found");
            })
        })
        .collect();
    for write in writes {
        write.await.expect("task");
    }
    let read = |store: PostgresStore| async move {
        store
            .audit_trail(&account("acme"), &AuditQuery::latest(100))
            .await
            .expect("trail")
    };
    let trail = read(stores[0].clone()).await;
    assert_eq!(
        trail,
        read(stores[1].clone()).await,
        "one trail, read from either"
    );
    assert_eq!(trail.len(), 20);
    assert!(trail.windows(2).all(|pair| pair[0].id > pair[1].id));
    for (i, record) in records.iter().enumerate() {
        let of_key: Vec<_> = trail
            .iter()
            .filter(|event| event.entry.key_id == Some(record.id))
            .collect();
        // Newest first: the revoke, numbered after the create.
        let actions: Vec<_> = of_key.iter().map(|event| event.entry.action).collect();
        assert_eq!(actions, [AuditAction::Revoke, AuditAction::Create]);
        let actors: Vec<_> = of_key
            .iter()
            .map(|event| event.entry.actor.as_str())
            .collect();
        assert_eq!(actors, [format!("p{}", (i + 1) % 2), format!("p{}", i % 2)]);
    }
}

#[tokio::test]
async fn audit_entries_and_pruning_notify_nothing_and_the_change_still_does_once() {
    let Some(database) = Database::create().await else {
        return;
    };
    let pool = database.pool();
    let store = PostgresStore::from_pool(pool.clone());
    store.migrate().await.expect("migrate");
    let mut listener = PgListener::connect_with(&pool).await.expect("listen");
    listener.listen("tower_api_keys").await.expect("LISTEN");
    let record = crate::store::new_record("acme").0;
    store
        .insert_within_limit(record.clone(), 3, &note("operator", AuditAction::Create))
        .await
        .expect("insert");
    super::store::heard_until_marker(&mut listener, &store).await;

    let entry = AuditEntry::refused(
        SystemTime::now(),
        account("acme"),
        Some((record.id, record.prefix)),
        AuditAction::Update,
        tower_api_key::audit::Actor::system(),
        AuditChanges::none(),
    );
    store.append_audit(&entry).await.expect("append");
    store
        .prune_audit(UNIX_EPOCH + Duration::from_secs(1))
        .await
        .expect("prune");
    let heard = super::store::heard_until_marker(&mut listener, &store).await;
    assert!(heard.is_empty(), "{heard:?}");

    store
        .set_status(
            &account("acme"),
            record.id,
            KeyStatus::Inactive,
            &note("operator", AuditAction::Revoke),
        )
        .await
        .expect("revoke")
        .expect("found");
    let heard = super::store::heard_until_marker(&mut listener, &store).await;
    let digest: String = record
        .digest
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert!(heard[0].contains(&digest), "{heard:?}");
    drop(listener);
    drop(store);
    database.drop(pool).await;
}

#[tokio::test]
async fn a_change_and_its_audit_entry_commit_together_or_not_at_all() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    sqlx::raw_sql(&format!(
        "ALTER TABLE tower_api_keys_audit ADD CONSTRAINT refuse_entries CHECK (actor <> '{}')",
        super::super::sql::REFUSED_ACTOR
    ))
    .execute(store.pool())
    .await
    .expect("constraint");
    super::super::sql::assert_no_change_without_its_entry(&store).await;
}

#[tokio::test]
async fn an_audit_entry_edited_by_hand_is_a_store_failure_naming_the_column() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.store().await;
    for (i, (edit, column)) in super::super::sql::UNREADABLE_ENTRIES
        .into_iter()
        .chain([
            ("at = 'infinity'", "at"),
            ("at = '10000-01-01 00:00:00+00'", "at"),
        ])
        .enumerate()
    {
        let name = format!("edited{i}");
        super::super::sql::append_entry(&store, &name).await;
        sqlx::query(&format!(
            "UPDATE tower_api_keys_audit SET {edit} WHERE account_id = $1"
        ))
        .bind(&name)
        .execute(store.pool())
        .await
        .expect("edit by hand");
        super::super::sql::assert_trail_unreadable(&store, &name, edit, column).await;
    }
}

#[tokio::test]
async fn a_database_of_the_previous_schema_gains_the_audit_trail_and_its_keys_are_audited() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let pool = schema.pool();
    // The database as the previous release left it, with a key of that release.
    super::apply_shipped_up_to(&pool, 7).await;
    let old = super::super::sql::old_style_record();
    super::insert_by_hand(&pool, &old).await;

    let store = PostgresStore::from_pool(pool);
    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("again");
    super::super::sql::assert_upgraded_store_audits(&store, old.id).await;
}
