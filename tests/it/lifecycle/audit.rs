//! The audit trail kept by the manager: who acted, refusals at the limit, retention, and
//! changes that didn't happen leaving nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_api_key::audit::{
    Actor, AuditAction, AuditChanges, AuditEntry, AuditOutcome, AuditQuery,
};
use tower_api_key::{AccountId, KeyId, KeyManager, KeyStore, ManagerError, MemoryStore};

use crate::support::{account, pepper};

/// A refused create of `account`'s, recorded two hours ago.
fn two_hours_ago(account: &AccountId) -> AuditEntry {
    AuditEntry::refused(
        SystemTime::now() - Duration::from_secs(7200),
        account.clone(),
        None,
        AuditAction::Create,
        Actor::operator(),
        AuditChanges::none(),
    )
}

fn manager() -> KeyManager {
    KeyManager::new(Arc::new(MemoryStore::new()), pepper())
}

#[tokio::test]
async fn changes_are_recorded_as_made_by_the_managers_actor() {
    let manager = manager();
    let acme = account("acme");
    assert_eq!(manager.actor().as_str(), "system");
    let first = manager.create(&acme).await.expect("create");
    let bot = manager.acting_as(Actor::new("deploy-bot").expect("actor"));
    bot.revoke(&acme, first.info.id).await.expect("revoke");
    // The original is unchanged by `acting_as`.
    manager
        .reactivate(&acme, first.info.id)
        .await
        .expect("reactivate");

    let trail = manager
        .audit_trail(&acme, AuditQuery::latest(10))
        .await
        .expect("trail");
    let seen: Vec<_> = trail
        .iter()
        .map(|event| (event.entry.action, event.entry.actor.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (AuditAction::Reactivate, "system"),
            (AuditAction::Revoke, "deploy-bot"),
            (AuditAction::Create, "system"),
        ]
    );
    assert!(
        trail
            .iter()
            .all(|event| event.entry.outcome == AuditOutcome::Done)
    );
}

#[tokio::test]
async fn changes_that_did_not_happen_leave_no_entry_and_the_limit_leaves_a_refusal() {
    let manager = manager();
    let (acme, globex) = (account("acme"), account("globex"));
    let created = manager.create(&acme).await.expect("create");
    let missing = KeyId::random();
    assert!(matches!(
        manager.revoke(&acme, missing).await,
        Err(ManagerError::NotFound)
    ));
    // Another account's key is no key of globex's.
    assert!(matches!(
        manager.delete(&globex, created.info.id).await,
        Err(ManagerError::NotFound)
    ));
    manager.create(&acme).await.expect("second");
    manager.create(&acme).await.expect("third");
    let over = manager.acting_as(Actor::new("alice").expect("actor"));
    assert!(matches!(
        over.create(&acme).await,
        Err(ManagerError::LimitReached { limit: 3 })
    ));

    let trail = manager
        .audit_trail(&acme, AuditQuery::latest(10))
        .await
        .expect("trail");
    assert_eq!(trail.len(), 4, "{trail:?}");
    let refused = &trail[0].entry;
    assert_eq!(
        (refused.action, refused.outcome, refused.actor.as_str()),
        (AuditAction::Create, AuditOutcome::Refused, "alice")
    );
    assert_eq!((refused.key_id, refused.prefix), (None, None));
    assert!(
        manager
            .audit_trail(&globex, AuditQuery::latest(10))
            .await
            .expect("trail")
            .is_empty()
    );
}

#[tokio::test]
async fn entries_past_the_retention_are_never_read_and_are_pruned() {
    let store = Arc::new(MemoryStore::new());
    let manager =
        KeyManager::new(store.clone(), pepper()).with_audit_retention(Duration::from_secs(3600));
    let acme = account("acme");
    store
        .append_audit(&two_hours_ago(&acme))
        .await
        .expect("append");
    // Created through a manager of its own, which keeps 400 days: `manager` makes no change,
    // so it prunes nothing by itself.
    KeyManager::new(store.clone(), pepper())
        .create(&acme)
        .await
        .expect("create");

    // The store holds both; the manager shows the recent one only.
    let everything = store
        .audit_trail(&acme, &AuditQuery::latest(10))
        .await
        .expect("trail");
    assert_eq!(everything.len(), 2);
    let shown = manager
        .audit_trail(&acme, AuditQuery::latest(10))
        .await
        .expect("trail");
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].entry.action, AuditAction::Create);

    assert_eq!(manager.prune_audit().await.expect("prune"), 1);
    let kept = store
        .audit_trail(&acme, &AuditQuery::latest(10))
        .await
        .expect("trail");
    assert_eq!(kept, shown);
    assert_eq!(manager.prune_audit().await.expect("prune"), 0);
}

#[tokio::test]
async fn a_page_is_capped_at_the_maximum() {
    let manager = manager();
    let acme = account("acme");
    let key = manager.create(&acme).await.expect("create");
    for _ in 0..260 {
        manager.revoke(&acme, key.info.id).await.expect("revoke");
        manager
            .reactivate(&acme, key.info.id)
            .await
            .expect("reactivate");
    }
    let page = manager
        .audit_trail(&acme, AuditQuery::latest(10_000))
        .await
        .expect("trail");
    assert_eq!(page.len(), tower_api_key::audit::MAX_PAGE);
}

#[tokio::test]
async fn a_change_prunes_entries_past_the_retention_by_itself() {
    let store = Arc::new(MemoryStore::new());
    let manager =
        KeyManager::new(store.clone(), pepper()).with_audit_retention(Duration::from_secs(3600));
    let acme = account("acme");
    store
        .append_audit(&two_hours_ago(&acme))
        .await
        .expect("append");
    manager.create(&acme).await.expect("create");
    crate::support::wait::until("the old entry is pruned", || async {
        let trail = store
            .audit_trail(&acme, &AuditQuery::latest(10))
            .await
            .expect("trail");
        trail.len() == 1
    })
    .await;
}
