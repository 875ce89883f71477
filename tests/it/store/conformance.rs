//! One set of behaviours every `KeyStore` must have, run against each store, so the stores
//! can't drift apart: the memory store always, SQLite with feature `sqlite` (a fresh file per
//! test), PostgreSQL with feature `postgres` and `DATABASE_URL` (a fresh schema per test;
//! without the variable each PostgreSQL test says it was skipped and passes).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::note_of;
use crate::support::account;
use tower_api_key::audit::{
    Actor, AuditAction, AuditChanges, AuditEntry, AuditEvent, AuditNote, AuditOutcome, AuditQuery,
};
use tower_api_key::policy::{AllowedIps, Metadata, Quota, QuotaPeriod, RateLimit};
use tower_api_key::store::KeyUse;
use tower_api_key::usage::{Hour, UsageBatch, UsageCounts, UsageDelta, UsageRow};
use tower_api_key::{
    ApiKey, KeyId, KeyName, KeyOptions, KeyRecord, KeyStatus, KeyStore, MemoryStore, Pepper,
    PolicyUpdate, PreviousKey, RotateOptions, Scopes, StoreError,
};

/// A whole-microsecond time, as every store keeps.
fn at(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + micros)
}

/// A new key of `account_name` and its record, not yet stored.
pub(crate) fn new_record(account_name: &str) -> (KeyRecord, ApiKey) {
    let key = ApiKey::generate().expect("randomness");
    let record = KeyRecord::new(
        KeyId::random(),
        account(account_name),
        key.prefix(),
        Pepper::from_bytes([1; 32]).digest(&key),
        at(0),
    );
    (record, key)
}

/// A new record of `account_name`, inserted.
async fn stored(store: &Arc<dyn KeyStore>, account_name: &str) -> KeyRecord {
    let (record, _) = new_record(account_name);
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    record
}

async fn insert_then_find_by_prefix_and_get(store: Arc<dyn KeyStore>) {
    let record = stored(&store, "acme").await;
    assert_eq!(
        store.find_by_prefix(&record.prefix).await.expect("find"),
        Some(record.clone())
    );
    assert_eq!(
        store.get(&account("acme"), record.id).await.expect("get"),
        Some(record.clone())
    );
    assert_eq!(
        store.get(&account("other"), record.id).await.expect("get"),
        None
    );
    let (unknown, _) = new_record("acme");
    assert_eq!(
        store.find_by_prefix(&unknown.prefix).await.expect("find"),
        None
    );
}

async fn insert_refuses_past_the_limit(store: Arc<dyn KeyStore>) {
    for _ in 0..3 {
        store
            .insert_within_limit(new_record("acme").0, 3, &crate::store::note())
            .await
            .expect("insert");
    }
    let err = store
        .insert_within_limit(new_record("acme").0, 3, &crate::store::note())
        .await
        .expect_err("limit");
    assert!(
        matches!(err, StoreError::LimitReached { limit: 3 }),
        "{err:?}"
    );
    store
        .insert_within_limit(new_record("other").0, 3, &crate::store::note())
        .await
        .expect("other account");
}

async fn insert_refuses_a_taken_prefix(store: Arc<dyn KeyStore>) {
    let first = stored(&store, "acme").await;
    let (mut second, _) = new_record("other");
    second.prefix = first.prefix;
    let err = store
        .insert_within_limit(second, 3, &crate::store::note())
        .await
        .expect_err("taken");
    assert!(matches!(err, StoreError::PrefixTaken), "{err:?}");
    assert!(
        store
            .list(&account("other"))
            .await
            .expect("list")
            .is_empty()
    );
}

async fn list_is_per_account_and_oldest_first(store: Arc<dyn KeyStore>) {
    let mut inserted = Vec::new();
    for i in 0..3 {
        let (mut record, _) = new_record("acme");
        record.created_at = at(i);
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        inserted.push(record);
    }
    store
        .insert_within_limit(new_record("other").0, 3, &crate::store::note())
        .await
        .expect("insert");
    assert_eq!(store.list(&account("acme")).await.expect("list"), inserted);
    assert!(
        store
            .list(&account("nobody"))
            .await
            .expect("list")
            .is_empty()
    );
}

async fn set_status_changes_only_the_status(store: Arc<dyn KeyStore>) {
    let record = stored(&store, "acme").await;
    let updated = store
        .set_status(
            &account("acme"),
            record.id,
            KeyStatus::Inactive,
            &crate::store::note(),
        )
        .await
        .expect("set")
        .expect("found");
    assert_eq!(
        updated,
        KeyRecord {
            status: KeyStatus::Inactive,
            ..record.clone()
        }
    );
    assert_eq!(
        store.find_by_prefix(&record.prefix).await.expect("find"),
        Some(updated)
    );
    assert_eq!(
        store
            .set_status(
                &account("other"),
                record.id,
                KeyStatus::Active,
                &crate::store::note()
            )
            .await
            .expect("set"),
        None
    );
}

async fn replace_key_swaps_prefix_and_digest_and_clears_last_used(store: Arc<dyn KeyStore>) {
    let (mut record, _) = new_record("acme");
    record.last_used_at = Some(at(5));
    record.status = KeyStatus::Inactive;
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    let (fresh, _) = new_record("acme");
    let rotated = store
        .replace_key(
            &account("acme"),
            record.id,
            fresh.prefix,
            fresh.digest,
            None,
            &crate::store::note(),
        )
        .await
        .expect("replace")
        .expect("found");
    assert_eq!(rotated.before, record);
    assert_eq!(
        rotated.after,
        KeyRecord {
            prefix: fresh.prefix,
            digest: fresh.digest,
            last_used_at: None,
            ..record.clone()
        }
    );
    assert_eq!(
        store.find_by_prefix(&record.prefix).await.expect("find"),
        None
    );
    assert_eq!(
        store.find_by_prefix(&fresh.prefix).await.expect("find"),
        Some(rotated.after)
    );
    assert_eq!(
        store
            .replace_key(
                &account("other"),
                record.id,
                record.prefix,
                record.digest,
                None,
                &crate::store::note()
            )
            .await
            .expect("replace"),
        None
    );
}

async fn replace_key_refuses_a_taken_prefix(store: Arc<dyn KeyStore>) {
    let (a, _) = new_record("acme");
    let (b, _) = new_record("acme");
    store
        .insert_within_limit(a.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    store
        .insert_within_limit(b.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    let err = store
        .replace_key(
            &account("acme"),
            a.id,
            b.prefix,
            b.digest,
            None,
            &crate::store::note(),
        )
        .await
        .expect_err("taken");
    assert!(matches!(err, StoreError::PrefixTaken), "{err:?}");
    assert_eq!(
        store.get(&account("acme"), a.id).await.expect("get"),
        Some(a)
    );
}

async fn delete_removes_the_record_and_frees_the_slot(store: Arc<dyn KeyStore>) {
    let mut records = Vec::new();
    for _ in 0..3 {
        let (record, _) = new_record("acme");
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        records.push(record);
    }
    assert_eq!(
        store
            .delete(&account("other"), records[0].id, &crate::store::note())
            .await
            .expect("delete"),
        None
    );
    assert_eq!(
        store
            .delete(&account("acme"), records[0].id, &crate::store::note())
            .await
            .expect("delete"),
        Some(records[0].clone())
    );
    assert_eq!(
        store
            .find_by_prefix(&records[0].prefix)
            .await
            .expect("find"),
        None
    );
    assert_eq!(
        store
            .delete(&account("acme"), records[0].id, &crate::store::note())
            .await
            .expect("delete"),
        None
    );
    store
        .insert_within_limit(new_record("acme").0, 3, &crate::store::note())
        .await
        .expect("slot freed");
}

async fn last_used_only_moves_forward(store: Arc<dyn KeyStore>) {
    let record = stored(&store, "acme").await;
    let use_at = |micros| KeyUse {
        id: record.id,
        prefix: record.prefix,
        at: at(micros),
    };
    store
        .record_usage(&UsageBatch::last_used([use_at(10)]))
        .await
        .expect("use");
    store
        .record_usage(&UsageBatch::last_used([use_at(5)]))
        .await
        .expect("older use");
    let last = |store: Arc<dyn KeyStore>| async move {
        store
            .get(&account("acme"), record.id)
            .await
            .expect("get")
            .expect("found")
            .last_used_at
    };
    assert_eq!(last(store.clone()).await, Some(at(10)));
    store
        .record_usage(&UsageBatch::last_used([use_at(20), use_at(15)]))
        .await
        .expect("batch");
    assert_eq!(last(store.clone()).await, Some(at(20)));
}

async fn last_used_ignores_uses_of_a_rotated_away_prefix_or_deleted_key(store: Arc<dyn KeyStore>) {
    let record = stored(&store, "acme").await;
    let (fresh, _) = new_record("acme");
    store
        .replace_key(
            &account("acme"),
            record.id,
            fresh.prefix,
            fresh.digest,
            None,
            &crate::store::note(),
        )
        .await
        .expect("replace");
    let stale = KeyUse {
        id: record.id,
        prefix: record.prefix,
        at: at(10),
    };
    let deleted = KeyUse {
        id: KeyId::random(),
        prefix: record.prefix,
        at: at(10),
    };
    store
        .record_usage(&UsageBatch::last_used([stale, deleted]))
        .await
        .expect("use");
    let now = store.get(&account("acme"), record.id).await.expect("get");
    assert_eq!(now.expect("found").last_used_at, None);
}

/// A record with every optional field set, as the policy features write them.
fn full_record(account_name: &str) -> KeyRecord {
    let (mut record, _) = new_record(account_name);
    record.name = Some(KeyName::new("production ✓ «east»").expect("name"));
    record.scopes = Some(Scopes::new(["write", "read", "deploy:staging"]).expect("scopes"));
    record.expires_at = Some(at(1_000_000));
    record.rate_limit = Some(RateLimit::new(5, 2).expect("rate limit"));
    record.quota = quota(250_000, QuotaPeriod::Month);
    // Given unsorted, with host bits set and one block twice: kept normalized.
    record.allowed_ips = allowed(&[
        "2001:db8:1::/48",
        "203.0.113.7/24",
        "198.51.100.7",
        "::ffff:192.0.2.1",
        "203.0.113.0/24",
    ]);
    record.metadata = metadata(
        r#"{ "plan": "pro", "région": "eu-west ✓ «東京»", "emoji": "🔑",
             "limits": { "seats": [1, 2, { "extra": null }], "ratio": 0.25, "trial": false } }"#,
    );
    record.last_used_at = Some(at(7));
    record
}

fn quota(requests: u32, period: QuotaPeriod) -> Option<Quota> {
    Some(Quota::new(requests, period).expect("quota"))
}

fn allowed(blocks: &[&str]) -> Option<AllowedIps> {
    Some(AllowedIps::new(blocks).expect("allowlist"))
}

fn metadata(json: &str) -> Option<Metadata> {
    Some(Metadata::from_json(json).expect("metadata"))
}

async fn policy_fields_round_trip(store: Arc<dyn KeyStore>) {
    let record = full_record("acme");
    let mut empty_scopes = new_record("acme").0;
    empty_scopes.scopes = Some(Scopes::new(Vec::<&str>::new()).expect("empty"));
    for record in [&record, &empty_scopes] {
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        assert_eq!(
            store.get(&account("acme"), record.id).await.expect("get"),
            Some(record.clone())
        );
        assert_eq!(
            store.find_by_prefix(&record.prefix).await.expect("find"),
            Some(record.clone())
        );
    }
    assert_eq!(
        store.list(&account("acme")).await.expect("list"),
        [record, empty_scopes]
    );
}

async fn update_policy_sets_and_clears_each_field_alone(store: Arc<dyn KeyStore>) {
    let record = full_record("acme");
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    let update = |u: PolicyUpdate| {
        let store = store.clone();
        let id = record.id;
        async move {
            store
                .update_policy(&account("acme"), id, &u, &crate::store::note())
                .await
                .expect("update")
                .expect("found")
        }
    };
    let mut expected = record.clone();
    assert_eq!(update(PolicyUpdate::new()).await, expected);

    expected.name = None;
    assert_eq!(update(PolicyUpdate::new().name(None)).await, expected);
    expected.scopes = None;
    assert_eq!(update(PolicyUpdate::new().scopes(None)).await, expected);
    expected.expires_at = None;
    assert_eq!(update(PolicyUpdate::new().expires_at(None)).await, expected);
    expected.rate_limit = None;
    assert_eq!(update(PolicyUpdate::new().rate_limit(None)).await, expected);
    expected.quota = None;
    assert_eq!(update(PolicyUpdate::new().quota(None)).await, expected);
    expected.allowed_ips = None;
    assert_eq!(
        update(PolicyUpdate::new().allowed_ips(None)).await,
        expected
    );
    expected.metadata = None;
    assert_eq!(update(PolicyUpdate::new().metadata(None)).await, expected);

    expected.name = Some(KeyName::new("CI").expect("name"));
    expected.scopes = Some(Scopes::new(["read"]).expect("scopes"));
    expected.expires_at = Some(at(5));
    expected.rate_limit = Some(RateLimit::new(1_000_000, 86_400).expect("rate limit"));
    expected.quota = quota(1, QuotaPeriod::Day);
    expected.allowed_ips = allowed(&["0.0.0.0/0", "::/0"]);
    expected.metadata = metadata("{}");
    let all = PolicyUpdate::new()
        .name(expected.name.clone())
        .scopes(expected.scopes.clone())
        .expires_at(expected.expires_at)
        .rate_limit(expected.rate_limit)
        .quota(expected.quota)
        .allowed_ips(expected.allowed_ips.clone())
        .metadata(expected.metadata.clone());
    assert_eq!(update(all).await, expected);
    assert_eq!(
        store.get(&account("acme"), record.id).await.expect("get"),
        Some(expected)
    );
    for (owner, id) in [("other", record.id), ("acme", KeyId::random())] {
        let missing = store
            .update_policy(
                &account(owner),
                id,
                &PolicyUpdate::new().name(None),
                &crate::store::note(),
            )
            .await
            .expect("update");
        assert_eq!(missing, None, "{owner} {id}");
    }
}

async fn rate_limit_is_kept_set_changed_cleared_and_kept_by_rotation(store: Arc<dyn KeyStore>) {
    let limit = |requests, per_seconds| Some(RateLimit::new(requests, per_seconds).expect("limit"));
    let (mut record, _) = new_record("acme");
    record.rate_limit = limit(5, 2);
    let (unlimited, _) = new_record("acme");
    for record in [&record, &unlimited] {
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        assert_eq!(
            store.find_by_prefix(&record.prefix).await.expect("find"),
            Some(record.clone())
        );
    }
    let listed = store.list(&account("acme")).await.expect("list");
    assert_eq!(
        listed.iter().map(|r| r.rate_limit).collect::<Vec<_>>(),
        [limit(5, 2), None]
    );

    let update = |id: KeyId, u: PolicyUpdate| {
        let store = store.clone();
        async move {
            store
                .update_policy(&account("acme"), id, &u, &crate::store::note())
                .await
                .expect("update")
                .expect("found")
                .rate_limit
        }
    };
    // Set on a key without one, changed, kept by an update of another field, cleared.
    assert_eq!(
        update(unlimited.id, PolicyUpdate::new().rate_limit(limit(1, 1))).await,
        limit(1, 1)
    );
    assert_eq!(
        update(record.id, PolicyUpdate::new().rate_limit(limit(100, 60))).await,
        limit(100, 60)
    );
    assert_eq!(
        update(record.id, PolicyUpdate::new().name(None)).await,
        limit(100, 60)
    );
    assert_eq!(
        update(unlimited.id, PolicyUpdate::new().rate_limit(None)).await,
        None
    );

    // Rotation, with a grace period and without, keeps the limit.
    for grace in [Some(at(60)), None] {
        let (fresh, _) = new_record("acme");
        let rotated = store
            .replace_key(
                &account("acme"),
                record.id,
                fresh.prefix,
                fresh.digest,
                grace,
                &crate::store::note(),
            )
            .await
            .expect("replace")
            .expect("found");
        assert_eq!(rotated.after.rate_limit, limit(100, 60), "{grace:?}");
        let found = store.find_by_prefix(&fresh.prefix).await.expect("find");
        assert_eq!(
            found.and_then(|r| r.rate_limit),
            limit(100, 60),
            "{grace:?}"
        );
    }
    let unchanged = store
        .get(&account("acme"), unlimited.id)
        .await
        .expect("get");
    assert_eq!(unchanged.map(|r| r.rate_limit), Some(None));
}

/// Applies `update` to `expected`'s key and checks that the store answers `expected`, and
/// reads it back by id and by prefix (`step` says which step of a test this is).
async fn updated_to(
    store: &Arc<dyn KeyStore>,
    expected: &KeyRecord,
    update: PolicyUpdate,
    step: &str,
) {
    let updated = store
        .update_policy(
            &expected.account_id,
            expected.id,
            &update,
            &crate::store::note(),
        )
        .await
        .expect("update")
        .expect("found");
    assert_eq!(updated, *expected, "{step}: answered");
    let got = store.get(&expected.account_id, expected.id).await;
    assert_eq!(got.expect("get"), Some(expected.clone()), "{step}: get");
    let found = store.find_by_prefix(&expected.prefix).await;
    assert_eq!(found.expect("find"), Some(expected.clone()), "{step}: find");
}

/// The quota, allowlist and metadata of a record, to compare them alone (a record's `Debug`
/// shows only the size of its metadata).
fn new_fields(record: &KeyRecord) -> (Option<Quota>, Option<AllowedIps>, Option<String>) {
    (
        record.quota,
        record.allowed_ips.clone(),
        record.metadata.as_ref().map(|m| m.as_json().to_owned()),
    )
}

async fn quota_allowlist_and_metadata_are_set_replaced_and_cleared_each_alone(
    store: Arc<dyn KeyStore>,
) {
    let full = full_record("acme");
    let (mut bare, _) = new_record("acme");
    bare.created_at = at(1);
    for record in [&full, &bare] {
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
    }
    // A key created without them reads back without them, by every read.
    let by_id = store.get(&account("acme"), bare.id).await.expect("get");
    let by_prefix = store.find_by_prefix(&bare.prefix).await.expect("find");
    for read in [by_id, by_prefix] {
        assert_eq!(read.as_ref().map(new_fields), Some((None, None, None)));
    }
    let listed = store.list(&account("acme")).await.expect("list");
    assert_eq!(
        listed.iter().map(new_fields).collect::<Vec<_>>(),
        [new_fields(&full), (None, None, None)]
    );
    assert_eq!(listed, [full.clone(), bare.clone()]);

    // Each one set on the bare key and cleared again: the other two stay unset.
    let mut expected = bare.clone();
    expected.quota = quota(1_000_000_000, QuotaPeriod::Month);
    updated_to(
        &store,
        &expected,
        PolicyUpdate::new().quota(expected.quota),
        "set quota",
    )
    .await;
    expected.quota = None;
    updated_to(
        &store,
        &expected,
        PolicyUpdate::new().quota(None),
        "clear quota",
    )
    .await;
    expected.allowed_ips = allowed(&["10.0.0.0/8", "fd00::/8"]);
    let set = PolicyUpdate::new().allowed_ips(expected.allowed_ips.clone());
    updated_to(&store, &expected, set, "set allowlist").await;
    expected.allowed_ips = None;
    let clear = PolicyUpdate::new().allowed_ips(None);
    updated_to(&store, &expected, clear, "clear allowlist").await;
    expected.metadata = metadata(r#"{"tier":{"name":"gold","since":2024}}"#);
    let set = PolicyUpdate::new().metadata(expected.metadata.clone());
    updated_to(&store, &expected, set, "set metadata").await;
    expected.metadata = None;
    let clear = PolicyUpdate::new().metadata(None);
    updated_to(&store, &expected, clear, "clear metadata").await;
    assert_eq!(expected, bare);

    // Each one cleared on the full key and set to another value: the other two, and the
    // name, scopes, expiry and rate limit, stay as they were.
    let mut expected = full.clone();
    expected.quota = None;
    updated_to(
        &store,
        &expected,
        PolicyUpdate::new().quota(None),
        "clear quota",
    )
    .await;
    expected.quota = quota(30, QuotaPeriod::Day);
    let set = PolicyUpdate::new().quota(expected.quota);
    updated_to(&store, &expected, set, "replace quota").await;
    expected.allowed_ips = None;
    let clear = PolicyUpdate::new().allowed_ips(None);
    updated_to(&store, &expected, clear, "clear allowlist").await;
    expected.allowed_ips = allowed(&["192.0.2.0/25", "2001:db8:ffff::1", "100.64.0.0/10"]);
    let set = PolicyUpdate::new().allowed_ips(expected.allowed_ips.clone());
    updated_to(&store, &expected, set, "replace allowlist").await;
    expected.metadata = None;
    let clear = PolicyUpdate::new().metadata(None);
    updated_to(&store, &expected, clear, "clear metadata").await;
    expected.metadata = metadata(r#"{"plan":"enterprise","notes":["a","b"]}"#);
    let set = PolicyUpdate::new().metadata(expected.metadata.clone());
    updated_to(&store, &expected, set, "replace metadata").await;
    // Set to what they already are, and an update of the other fields: nothing moves.
    let same = PolicyUpdate::new()
        .quota(expected.quota)
        .allowed_ips(expected.allowed_ips.clone())
        .metadata(expected.metadata.clone());
    updated_to(&store, &expected, same, "set to the same").await;
    expected.name = None;
    expected.scopes = Some(Scopes::new(["read"]).expect("scopes"));
    expected.expires_at = None;
    expected.rate_limit = None;
    let others = PolicyUpdate::new()
        .name(None)
        .scopes(expected.scopes.clone())
        .expires_at(None)
        .rate_limit(None);
    updated_to(&store, &expected, others, "the other fields").await;

    // Rotation, with a grace period and without, keeps all three.
    for grace in [Some(at(60)), None] {
        let (fresh, _) = new_record("acme");
        let rotated = store
            .replace_key(
                &account("acme"),
                expected.id,
                fresh.prefix,
                fresh.digest,
                grace,
                &crate::store::note(),
            )
            .await
            .expect("replace")
            .expect("found");
        assert_eq!(
            new_fields(&rotated.after),
            new_fields(&expected),
            "{grace:?}"
        );
        let found = store.find_by_prefix(&fresh.prefix).await.expect("find");
        let found = found.expect("found by the new prefix");
        assert_eq!(new_fields(&found), new_fields(&expected), "{grace:?}");
        assert_eq!(found, rotated.after, "{grace:?}");
    }
    let untouched = store.get(&account("acme"), bare.id).await.expect("get");
    assert_eq!(untouched, Some(bare));
}

async fn policy_values_at_their_edges_round_trip_exactly(store: Arc<dyn KeyStore>) {
    let exactly_max = format!(r#"{{"k":"{}"}}"#, "é".repeat((Metadata::MAX_BYTES - 8) / 2));
    // 101 levels deep, within what a JSON parser takes.
    let nested = format!("{}{{}}{}", r#"{"a":["#.repeat(50), "]}".repeat(50));
    let thirty_two: Vec<String> = (0..16)
        .flat_map(|i| [format!("10.{i}.0.0/16"), format!("2001:db8:{i:x}::/48")])
        .collect();
    let thirty_two: Vec<&str> = thirty_two.iter().map(String::as_str).collect();
    let cases: [(Option<Quota>, Option<AllowedIps>, Option<Metadata>); 6] = [
        (
            quota(1, QuotaPeriod::Day),
            allowed(&thirty_two),
            metadata(&exactly_max),
        ),
        (
            quota(Quota::MAX_REQUESTS, QuotaPeriod::Month),
            allowed(&["0.0.0.0/0", "::/0"]),
            metadata("{}"),
        ),
        (
            None,
            allowed(&["::ffff:203.0.113.9", "::1", "127.0.0.1"]),
            // Escapes, control characters, a NUL, quotes, separators, astral characters.
            metadata(
                r#"{"q":"\"\\\/\b\f\n\r\t\u0000\u001f","u":"\u2028\u2029 é 中文 🔑 \ud83d\udd11"}"#,
            ),
        ),
        (
            quota(7, QuotaPeriod::Month),
            None,
            // Integers at the edges of 64 bits, a negative zero, floats with short forms.
            metadata(
                r#"{"max":18446744073709551615,"min":-9223372036854775808,"z":-0.0,
                    "f":[0.1,1.5,-2.25,1e-7,6.02e23,1.0],"b":[true,false,null],"":""}"#,
            ),
        ),
        (None, allowed(&["2001:db8:0:0:1::/80"]), metadata(&nested)),
        (
            None,
            None,
            // Members in any order: kept as the metadata writes them.
            metadata(r#"{"zeta":1,"alpha":{"b":2,"a":1},"Mid":[{"y":0,"x":0}]}"#),
        ),
    ];
    let mut inserted = Vec::new();
    for (i, (quota, allowed_ips, metadata)) in cases.into_iter().enumerate() {
        let (mut record, _) = new_record(&format!("edge{i}"));
        record.quota = quota;
        record.allowed_ips = allowed_ips;
        record.metadata = metadata;
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        inserted.push(record);
    }
    for (i, record) in inserted.iter().enumerate() {
        let account_id = account(&format!("edge{i}"));
        let reads = [
            store.get(&account_id, record.id).await.expect("get"),
            store.find_by_prefix(&record.prefix).await.expect("find"),
            store.list(&account_id).await.expect("list").pop(),
        ];
        for read in reads {
            let read = read.expect("found");
            assert_eq!(new_fields(&read), new_fields(record), "case {i}");
            assert_eq!(read, *record, "case {i}");
        }
    }
}

async fn replace_key_with_grace_keeps_the_old_key_as_previous(store: Arc<dyn KeyStore>) {
    let record = full_record("acme");
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    let (second, _) = new_record("acme");
    let rotated = store
        .replace_key(
            &account("acme"),
            record.id,
            second.prefix,
            second.digest,
            Some(at(60)),
            &crate::store::note(),
        )
        .await
        .expect("replace")
        .expect("found");
    let expected = KeyRecord {
        prefix: second.prefix,
        digest: second.digest,
        last_used_at: None,
        previous: Some(PreviousKey {
            prefix: record.prefix,
            digest: record.digest,
            expires_at: at(60),
        }),
        ..record.clone()
    };
    assert_eq!(rotated.after, expected);
    for prefix in [record.prefix, second.prefix] {
        assert_eq!(
            store.find_by_prefix(&prefix).await.expect("find"),
            Some(expected.clone()),
            "{prefix}"
        );
    }

    // Rotating again with grace: the second key becomes the previous one, the first is gone.
    let (third, _) = new_record("acme");
    let again = store
        .replace_key(
            &account("acme"),
            record.id,
            third.prefix,
            third.digest,
            Some(at(90)),
            &crate::store::note(),
        )
        .await
        .expect("replace")
        .expect("found");
    assert_eq!(again.before, expected);
    assert_eq!(
        again.after.previous,
        Some(PreviousKey {
            prefix: second.prefix,
            digest: second.digest,
            expires_at: at(90),
        })
    );
    assert_eq!(
        store.find_by_prefix(&record.prefix).await.expect("find"),
        None
    );

    // Without grace, the previous key is dropped too.
    let (fourth, _) = new_record("acme");
    let plain = store
        .replace_key(
            &account("acme"),
            record.id,
            fourth.prefix,
            fourth.digest,
            None,
            &crate::store::note(),
        )
        .await
        .expect("replace")
        .expect("found");
    assert_eq!(plain.after.previous, None);
    for gone in [second.prefix, third.prefix] {
        assert_eq!(
            store.find_by_prefix(&gone).await.expect("find"),
            None,
            "{gone}"
        );
    }
    assert_eq!(
        store.get(&account("acme"), record.id).await.expect("get"),
        Some(plain.after)
    );
}

/// Rotates `record` to a fresh key, keeping its old key as the previous one until `at(60)`.
async fn rotate_with_grace(store: &Arc<dyn KeyStore>, record: &KeyRecord) {
    let (fresh, _) = new_record(record.account_id.as_str());
    store
        .replace_key(
            &record.account_id,
            record.id,
            fresh.prefix,
            fresh.digest,
            Some(at(60)),
            &crate::store::note(),
        )
        .await
        .expect("replace")
        .expect("found");
}

/// Asserts that `taken`'s prefix is refused to a new key of account `other` and to a rotation
/// of `rotated` (a key of `acme`), both asked for with `audit`.
async fn assert_prefix_taken(
    store: &Arc<dyn KeyStore>,
    taken: &KeyRecord,
    rotated: &KeyRecord,
    audit: &AuditNote,
) {
    let mut clash = new_record("other").0;
    clash.prefix = taken.prefix;
    let err = store
        .insert_within_limit(clash, 3, audit)
        .await
        .expect_err("taken");
    assert!(matches!(err, StoreError::PrefixTaken), "{err:?}");
    let err = store
        .replace_key(
            &account("acme"),
            rotated.id,
            taken.prefix,
            taken.digest,
            None,
            audit,
        )
        .await
        .expect_err("taken");
    assert!(matches!(err, StoreError::PrefixTaken), "{err:?}");
}

async fn prefixes_are_unique_across_current_and_previous(store: Arc<dyn KeyStore>) {
    let (a, _) = new_record("acme");
    let (b, _) = new_record("acme");
    store
        .insert_within_limit(a.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    store
        .insert_within_limit(b.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    rotate_with_grace(&store, &a).await;
    // a's old prefix is now its previous prefix: still taken, for inserts and rotations.
    assert_prefix_taken(&store, &a, &b, &crate::store::note()).await;
    assert_eq!(
        store.get(&account("acme"), b.id).await.expect("get"),
        Some(b)
    );
}

async fn delete_frees_the_previous_prefix(store: Arc<dyn KeyStore>) {
    let a = stored(&store, "acme").await;
    rotate_with_grace(&store, &a).await;
    let removed = store
        .delete(&account("acme"), a.id, &crate::store::note())
        .await
        .expect("delete");
    assert_eq!(
        removed.and_then(|r| r.previous).map(|p| p.prefix),
        Some(a.prefix)
    );
    assert_eq!(store.find_by_prefix(&a.prefix).await.expect("find"), None);
    let mut reuse = new_record("other").0;
    reuse.prefix = a.prefix;
    store
        .insert_within_limit(reuse, 3, &crate::store::note())
        .await
        .expect("prefix is free again");
}

async fn status_and_last_used_changes_keep_the_policy(store: Arc<dyn KeyStore>) {
    let record = full_record("acme");
    store
        .insert_within_limit(record.clone(), 3, &crate::store::note())
        .await
        .expect("insert");
    store
        .set_status(
            &account("acme"),
            record.id,
            KeyStatus::Inactive,
            &crate::store::note(),
        )
        .await
        .expect("set")
        .expect("found");
    store
        .record_usage(&UsageBatch::last_used([KeyUse {
            id: record.id,
            prefix: record.prefix,
            at: at(99),
        }]))
        .await
        .expect("use");
    let now = store
        .get(&account("acme"), record.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        now,
        KeyRecord {
            status: KeyStatus::Inactive,
            last_used_at: Some(at(99)),
            ..record
        }
    );
}

async fn concurrent_inserts_respect_the_limit(store: Arc<dyn KeyStore>) {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_within_limit(new_record("acme").0, 3, &crate::store::note())
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => ok += 1,
            Err(StoreError::LimitReached { limit: 3 }) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(store.list(&account("acme")).await.expect("list").len(), 3);
}

// ===== usage counts =====

/// An hour in 2024, far from the ends of the range.
const HOUR: u32 = 475_000;

fn hour(offset: i64) -> Hour {
    Hour::from_index(u32::try_from(i64::from(HOUR) + offset).expect("in range"))
}

/// What a flush adds to `key`'s hour `HOUR + offset` in `account_name`.
fn delta(account_name: &str, key: KeyId, offset: i64, counts: [i64; 3]) -> UsageDelta {
    UsageDelta {
        account_id: account(account_name),
        key_id: key,
        hour: hour(offset),
        accepted: counts[0],
        rate_limited: counts[1],
        refused: counts[2],
    }
}

fn counts_only(counts: Vec<UsageDelta>) -> UsageBatch {
    UsageBatch {
        last_used: Vec::new(),
        counts,
    }
}

fn row(key: KeyId, offset: i64, counts: [u64; 3]) -> UsageRow {
    UsageRow {
        key_id: key,
        hour: hour(offset),
        counts: UsageCounts {
            accepted: counts[0],
            rate_limited: counts[1],
            refused: counts[2],
        },
    }
}

/// Every row of `account_name` (or of its `key`) for the hours in `[HOUR + from, HOUR + to)`.
async fn usage_of(
    store: &Arc<dyn KeyStore>,
    account_name: &str,
    key: Option<KeyId>,
    from: i64,
    to: i64,
) -> Vec<UsageRow> {
    store
        .usage(&account(account_name), key, hour(from), hour(to))
        .await
        .expect("usage")
}

/// Two key ids, in the order the stores list them within an hour.
fn two_sorted_ids() -> (KeyId, KeyId) {
    let (a, b) = (KeyId::random(), KeyId::random());
    if a < b { (a, b) } else { (b, a) }
}

async fn usage_counts_add_up_across_batches_in_hour_then_key_order(store: Arc<dyn KeyStore>) {
    let (first, second) = two_sorted_ids();
    store
        .record_usage(&counts_only(vec![
            delta("acme", second, 0, [1, 2, 3]),
            delta("acme", first, 1, [4, 0, 0]),
        ]))
        .await
        .expect("flush");
    store
        .record_usage(&counts_only(vec![
            delta("acme", first, 1, [1, 1, 1]),
            delta("acme", second, 0, [10, 20, 30]),
            delta("acme", first, 0, [0, 0, 7]),
        ]))
        .await
        .expect("flush");
    assert_eq!(
        usage_of(&store, "acme", None, -5, 5).await,
        [
            row(first, 0, [0, 0, 7]),
            row(second, 0, [11, 22, 33]),
            row(first, 1, [5, 1, 1]),
        ]
    );
    // An empty batch writes nothing and succeeds.
    store
        .record_usage(&UsageBatch::default())
        .await
        .expect("empty flush");
    assert_eq!(usage_of(&store, "acme", None, -5, 5).await.len(), 3);
}

async fn negative_deltas_add_as_numbers_and_a_negative_sum_reads_as_zero(store: Arc<dyn KeyStore>) {
    let key = KeyId::random();
    let flush = |counts: [i64; 3]| {
        let store = store.clone();
        async move {
            store
                .record_usage(&counts_only(vec![delta("acme", key, 0, counts)]))
                .await
                .expect("flush");
        }
    };
    flush([5, 0, 0]).await;
    // A scope refusal moves a request from accepted to refused.
    flush([-1, 0, 1]).await;
    assert_eq!(
        usage_of(&store, "acme", None, 0, 1).await,
        [row(key, 0, [4, 0, 1])]
    );
    // A sum below zero reads as zero, but is kept as it is: adding brings it back up.
    flush([-7, -1, 0]).await;
    assert_eq!(
        usage_of(&store, "acme", None, 0, 1).await,
        [row(key, 0, [0, 0, 1])]
    );
    flush([5, 3, 0]).await;
    assert_eq!(
        usage_of(&store, "acme", None, 0, 1).await,
        [row(key, 0, [2, 2, 1])]
    );
}

async fn deleted_keys_keep_their_counts(store: Arc<dyn KeyStore>) {
    let record = stored(&store, "acme").await;
    store
        .record_usage(&counts_only(vec![delta("acme", record.id, 0, [3, 0, 0])]))
        .await
        .expect("flush");
    store
        .delete(&account("acme"), record.id, &crate::store::note())
        .await
        .expect("delete")
        .expect("found");
    // Counts of a key deleted (or never stored) are still added: a flush can follow the delete.
    let never_stored = KeyId::random();
    store
        .record_usage(&counts_only(vec![
            delta("acme", record.id, 0, [1, 1, 0]),
            delta("acme", never_stored, 1, [2, 0, 0]),
        ]))
        .await
        .expect("flush after delete");
    assert_eq!(
        usage_of(&store, "acme", None, 0, 2).await,
        [
            row(record.id, 0, [4, 1, 0]),
            row(never_stored, 1, [2, 0, 0])
        ]
    );
    assert_eq!(
        usage_of(&store, "acme", Some(record.id), 0, 2).await,
        [row(record.id, 0, [4, 1, 0])]
    );
}

async fn usage_filters_by_key(store: Arc<dyn KeyStore>) {
    let (first, second) = two_sorted_ids();
    store
        .record_usage(&counts_only(vec![
            delta("acme", first, 0, [1, 0, 0]),
            delta("acme", second, 0, [2, 0, 0]),
            delta("acme", first, 2, [3, 0, 0]),
            delta("acme", second, 3, [4, 0, 0]),
        ]))
        .await
        .expect("flush");
    assert_eq!(
        usage_of(&store, "acme", Some(first), 0, 5).await,
        [row(first, 0, [1, 0, 0]), row(first, 2, [3, 0, 0])]
    );
    assert_eq!(
        usage_of(&store, "acme", Some(second), 0, 5).await,
        [row(second, 0, [2, 0, 0]), row(second, 3, [4, 0, 0])]
    );
    assert!(
        usage_of(&store, "acme", Some(KeyId::random()), 0, 5)
            .await
            .is_empty()
    );
}

async fn usage_range_includes_from_and_excludes_to(store: Arc<dyn KeyStore>) {
    let key = KeyId::random();
    store
        .record_usage(&counts_only(
            (-1..=2).map(|h| delta("acme", key, h, [1, 0, 0])).collect(),
        ))
        .await
        .expect("flush");
    let hours = |rows: Vec<UsageRow>| rows.iter().map(|r| r.hour).collect::<Vec<_>>();
    assert_eq!(
        hours(usage_of(&store, "acme", None, 0, 2).await),
        [hour(0), hour(1)]
    );
    assert_eq!(
        hours(usage_of(&store, "acme", Some(key), 0, 2).await),
        [hour(0), hour(1)]
    );
    assert_eq!(hours(usage_of(&store, "acme", None, 2, 3).await), [hour(2)]);
    assert!(usage_of(&store, "acme", None, 1, 1).await.is_empty());
    assert!(usage_of(&store, "acme", None, 2, 0).await.is_empty());
    assert_eq!(usage_of(&store, "acme", None, -9, 9).await.len(), 4);
}

async fn usage_never_returns_other_accounts_rows(store: Arc<dyn KeyStore>) {
    let (mine, theirs) = (KeyId::random(), KeyId::random());
    store
        .record_usage(&counts_only(vec![
            delta("acme", mine, 0, [1, 0, 0]),
            delta("other", theirs, 0, [9, 9, 9]),
        ]))
        .await
        .expect("flush");
    assert_eq!(
        usage_of(&store, "acme", None, 0, 1).await,
        [row(mine, 0, [1, 0, 0])]
    );
    assert!(
        usage_of(&store, "acme", Some(theirs), 0, 1)
            .await
            .is_empty()
    );
    assert!(usage_of(&store, "other", Some(mine), 0, 1).await.is_empty());
    assert!(usage_of(&store, "nobody", None, 0, 1).await.is_empty());
}

async fn prune_deletes_exactly_the_hours_before_and_counts_them(store: Arc<dyn KeyStore>) {
    let (first, second) = two_sorted_ids();
    store
        .record_usage(&counts_only(vec![
            delta("acme", first, -2, [1, 0, 0]),
            delta("acme", first, -1, [1, 0, 0]),
            delta("other", second, -1, [1, 0, 0]),
            delta("acme", first, 0, [2, 0, 0]),
            delta("acme", second, 0, [3, 0, 0]),
            delta("other", second, 1, [4, 0, 0]),
        ]))
        .await
        .expect("flush");
    assert_eq!(store.prune_usage(hour(0)).await.expect("prune"), 3);
    assert_eq!(
        usage_of(&store, "acme", None, -9, 9).await,
        [row(first, 0, [2, 0, 0]), row(second, 0, [3, 0, 0])]
    );
    assert_eq!(
        usage_of(&store, "other", None, -9, 9).await,
        [row(second, 1, [4, 0, 0])]
    );
    assert_eq!(store.prune_usage(hour(0)).await.expect("prune again"), 0);
    assert_eq!(store.prune_usage(hour(2)).await.expect("prune the rest"), 3);
    assert!(usage_of(&store, "acme", None, -9, 9).await.is_empty());
}

async fn a_batch_of_uses_and_counts_applies_both(store: Arc<dyn KeyStore>) {
    let record = stored(&store, "acme").await;
    let rotated_away = stored(&store, "acme").await;
    let (fresh, _) = new_record("acme");
    store
        .replace_key(
            &account("acme"),
            rotated_away.id,
            fresh.prefix,
            fresh.digest,
            None,
            &crate::store::note(),
        )
        .await
        .expect("replace");
    let use_of = |record: &KeyRecord| KeyUse {
        id: record.id,
        prefix: record.prefix,
        at: at(10),
    };
    store
        .record_usage(&UsageBatch {
            last_used: vec![use_of(&record), use_of(&rotated_away)],
            counts: vec![
                delta("acme", record.id, 0, [2, 0, 0]),
                delta("acme", rotated_away.id, 0, [1, 0, 0]),
            ],
        })
        .await
        .expect("flush");
    let last_used = |id: KeyId| {
        let store = store.clone();
        async move {
            store
                .get(&account("acme"), id)
                .await
                .expect("get")
                .expect("found")
                .last_used_at
        }
    };
    assert_eq!(last_used(record.id).await, Some(at(10)));
    // The stale prefix's use is dropped; its counts are not.
    assert_eq!(last_used(rotated_away.id).await, None);
    assert_eq!(
        usage_of(&store, "acme", Some(record.id), 0, 1).await,
        [row(record.id, 0, [2, 0, 0])]
    );
    assert_eq!(
        usage_of(&store, "acme", Some(rotated_away.id), 0, 1).await,
        [row(rotated_away.id, 0, [1, 0, 0])]
    );
}

async fn a_large_batch_adds_every_row(store: Arc<dyn KeyStore>) {
    // More rows than a SQL store may put in one statement.
    let keys: Vec<KeyId> = (0..1_234).map(|_| KeyId::random()).collect();
    let batch = counts_only(
        keys.iter()
            .map(|key| delta("acme", *key, 0, [1, 0, 2]))
            .collect(),
    );
    for _ in 0..2 {
        store.record_usage(&batch).await.expect("flush");
    }
    let rows = usage_of(&store, "acme", None, 0, 1).await;
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        rows.iter().map(|row| row.key_id).collect::<Vec<_>>(),
        sorted
    );
    assert!(rows.iter().all(|row| row.counts
        == UsageCounts {
            accepted: 2,
            rate_limited: 0,
            refused: 4
        }));
}

async fn concurrent_flushes_of_the_same_hours_add_up(store: Arc<dyn KeyStore>) {
    let keys: Vec<KeyId> = (0..5).map(|_| KeyId::random()).collect();
    let flushes: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let mut counts: Vec<UsageDelta> = keys
                .iter()
                .flat_map(|key| (0..2).map(move |h| delta("acme", *key, h, [1, 2, 0])))
                .collect();
            if i % 2 == 1 {
                counts.reverse();
            }
            tokio::spawn(async move { store.record_usage(&counts_only(counts)).await })
        })
        .collect();
    for flush in flushes {
        flush.await.expect("task").expect("flush");
    }
    let rows = usage_of(&store, "acme", None, 0, 2).await;
    assert_eq!(rows.len(), 10);
    for row in rows {
        assert_eq!(
            row.counts,
            UsageCounts {
                accepted: 20,
                rate_limited: 40,
                refused: 0
            }
        );
    }
}

/// Generates one `#[tokio::test]` per behaviour for a store built by `$make`.
/// A stored sum can't wrap or fail the flush: a row edited to the edge of the integer range
/// (nothing else gets there) stays at the edge, and the rest of the batch is written.
async fn sums_at_the_edge_of_the_range_saturate_instead_of_failing_the_flush(
    store: Arc<dyn KeyStore>,
) {
    let record = stored(&store, "acme").await;
    let key = record.id;
    store
        .record_usage(&counts_only(vec![delta(
            "acme",
            key,
            0,
            [i64::MAX, 0, i64::MIN],
        )]))
        .await
        .expect("write");
    let batch = UsageBatch {
        last_used: vec![KeyUse {
            id: key,
            prefix: record.prefix,
            at: at(5),
        }],
        counts: vec![delta("acme", key, 0, [5, 1, -5])],
    };
    store
        .record_usage(&batch)
        .await
        .expect("the flush is written");
    assert_eq!(
        usage_of(&store, "acme", Some(key), 0, 1).await,
        [row(key, 0, [i64::MAX as u64, 1, 0])]
    );
    let record = store
        .get(&account("acme"), key)
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(record.last_used_at, Some(at(5)));
}

// ===== audit trail =====

/// The account's whole trail, newest first.
async fn trail(store: &Arc<dyn KeyStore>, account_name: &str) -> Vec<AuditEvent> {
    store
        .audit_trail(&account(account_name), &AuditQuery::latest(1000))
        .await
        .expect("trail")
}

/// The entries of the account's trail, newest first, without their numbers.
async fn entries(store: &Arc<dyn KeyStore>, account_name: &str) -> Vec<AuditEntry> {
    trail(store, account_name)
        .await
        .into_iter()
        .map(|event| event.entry)
        .collect()
}

/// Asserts that the account's trail grew by exactly `expected`, as its newest entry.
async fn assert_logged(
    store: &Arc<dyn KeyStore>,
    account_name: &str,
    held: &mut usize,
    expected: AuditEntry,
) {
    let entries = entries(store, account_name).await;
    assert_eq!(entries.len(), *held + 1, "one entry more: {entries:#?}");
    assert_eq!(entries[0], expected);
    *held += 1;
}

async fn every_change_writes_one_entry_of_the_record_after_it(store: Arc<dyn KeyStore>) {
    let mut held = 0;
    let (record, _) = new_record("acme");
    let create = note_of(
        at(1),
        "alice@example.com",
        AuditAction::Create,
        AuditChanges::of_options(&KeyOptions::new().name("ci".parse().expect("name"))),
    );
    store
        .insert_within_limit(record.clone(), 3, &create)
        .await
        .expect("insert");
    assert_logged(
        &store,
        "acme",
        &mut held,
        crate::store::entry_of(&create, &record),
    )
    .await;

    let update = PolicyUpdate::new()
        .name(Some(KeyName::new("CI").expect("name")))
        .scopes(None)
        .metadata(metadata(r#"{"plan":"pro"}"#));
    let note = note_of(
        at(2),
        "tenant:acme",
        AuditAction::Update,
        AuditChanges::of_update(&update),
    );
    let updated = store
        .update_policy(&account("acme"), record.id, &update, &note)
        .await
        .expect("update")
        .expect("found");
    assert_logged(
        &store,
        "acme",
        &mut held,
        crate::store::entry_of(&note, &updated),
    )
    .await;

    let (_, new_key) = new_record("acme");
    let note = note_of(
        at(3),
        "operator",
        AuditAction::Rotate,
        AuditChanges::of_rotation(
            &RotateOptions::new()
                .grace(Duration::from_secs(60))
                .expect("grace"),
        ),
    );
    let rotated = store
        .replace_key(
            &account("acme"),
            record.id,
            new_key.prefix(),
            Pepper::from_bytes([1; 32]).digest(&new_key),
            Some(at(60_000_003)),
            &note,
        )
        .await
        .expect("rotate")
        .expect("found");
    assert_eq!(rotated.after.prefix, new_key.prefix());
    assert_logged(
        &store,
        "acme",
        &mut held,
        crate::store::entry_of(&note, &rotated.after),
    )
    .await;
    let newest = &entries(&store, "acme").await[0];
    assert_eq!(newest.prefix, Some(new_key.prefix()), "the new prefix");

    for (micros, status, action) in [
        (4, KeyStatus::Inactive, AuditAction::Revoke),
        (5, KeyStatus::Active, AuditAction::Reactivate),
    ] {
        let note = note_of(at(micros), "operator", action, AuditChanges::none());
        let changed = store
            .set_status(&account("acme"), record.id, status, &note)
            .await
            .expect("set")
            .expect("found");
        assert_logged(
            &store,
            "acme",
            &mut held,
            crate::store::entry_of(&note, &changed),
        )
        .await;
    }

    let note = note_of(at(6), "system", AuditAction::Delete, AuditChanges::none());
    let deleted = store
        .delete(&account("acme"), record.id, &note)
        .await
        .expect("delete")
        .expect("found");
    assert_logged(
        &store,
        "acme",
        &mut held,
        crate::store::entry_of(&note, &deleted),
    )
    .await;
    let newest = &entries(&store, "acme").await[0];
    assert_eq!(
        (newest.key_id, newest.prefix, newest.outcome),
        (Some(record.id), Some(new_key.prefix()), AuditOutcome::Done),
        "a deleted key's last prefix"
    );
    let actions: Vec<_> = entries(&store, "acme")
        .await
        .iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(
        actions,
        [
            AuditAction::Delete,
            AuditAction::Reactivate,
            AuditAction::Revoke,
            AuditAction::Rotate,
            AuditAction::Update,
            AuditAction::Create,
        ]
    );
    assert!(entries(&store, "other").await.is_empty());
}

async fn changes_refused_or_of_no_key_write_nothing(store: Arc<dyn KeyStore>) {
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(stored(&store, "acme").await);
    }
    let other = stored(&store, "other").await;
    let logged = |name: &'static str| {
        let store = store.clone();
        async move { trail(&store, name).await }
    };
    let (acme_before, other_before) = (logged("acme").await, logged("other").await);
    assert_eq!((acme_before.len(), other_before.len()), (3, 1));

    let refused = note_of(at(9), "mallory", AuditAction::Create, AuditChanges::none());
    let err = store
        .insert_within_limit(new_record("acme").0, 3, &refused)
        .await
        .expect_err("limit");
    assert!(
        matches!(err, StoreError::LimitReached { limit: 3 }),
        "{err:?}"
    );
    assert_prefix_taken(&store, &kept[0], &kept[1], &refused).await;

    // Another account's key, and no key at all: "not found", and nothing written.
    for (owner, id) in [
        ("acme", other.id),
        ("other", kept[0].id),
        ("acme", KeyId::random()),
    ] {
        let owner = account(owner);
        assert_eq!(
            store
                .set_status(&owner, id, KeyStatus::Inactive, &refused)
                .await
                .expect("set"),
            None
        );
        assert_eq!(
            store
                .update_policy(&owner, id, &PolicyUpdate::new().scopes(None), &refused)
                .await
                .expect("update"),
            None
        );
        let (_, key) = new_record("acme");
        let rotated = store
            .replace_key(&owner, id, key.prefix(), kept[0].digest, None, &refused)
            .await
            .expect("rotate");
        assert!(rotated.is_none());
        assert_eq!(
            store.delete(&owner, id, &refused).await.expect("delete"),
            None
        );
    }
    assert_eq!(logged("acme").await, acme_before);
    assert_eq!(logged("other").await, other_before);
}

async fn append_audit_writes_a_refused_entry_as_given(store: Arc<dyn KeyStore>) {
    let record = stored(&store, "acme").await;
    let options = KeyOptions::new()
        .expires_in(Duration::from_secs(60))
        .expect("expiry");
    let without_key = AuditEntry::refused(
        at(10),
        account("acme"),
        None,
        AuditAction::Create,
        Actor::new("tenant:acme").expect("actor"),
        AuditChanges::of_options(&options),
    );
    store.append_audit(&without_key).await.expect("append");
    let with_key = AuditEntry::refused(
        at(11),
        account("acme"),
        Some((record.id, record.prefix)),
        AuditAction::Update,
        Actor::new("tenant:acme").expect("actor"),
        AuditChanges::of_update(&PolicyUpdate::new().scopes(None)),
    );
    store.append_audit(&with_key).await.expect("append");
    let entries = entries(&store, "acme").await;
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert_eq!(entries[..2], [with_key, without_key.clone()]);
    assert_eq!(
        (without_key.key_id, without_key.prefix, without_key.outcome),
        (None, None, AuditOutcome::Refused)
    );
}

/// Appends `count` refused entries to `account_name`'s trail, recorded at `at(first)`,
/// `at(first + 1)` and so on.
async fn append_entries(store: &Arc<dyn KeyStore>, account_name: &str, first: u64, count: u64) {
    for micros in first..first + count {
        let entry = AuditEntry::refused(
            at(micros),
            account(account_name),
            None,
            AuditAction::Create,
            Actor::system(),
            AuditChanges::none(),
        );
        store.append_audit(&entry).await.expect("append");
    }
}

async fn audit_trail_is_newest_first_and_pages_by_limit_before_and_since(store: Arc<dyn KeyStore>) {
    // Interleaved with another account's entries, which never show.
    for round in 0..7 {
        append_entries(&store, "acme", round, 1).await;
        append_entries(&store, "other", 100 + round, 1).await;
    }
    let all = trail(&store, "acme").await;
    assert_eq!(all.len(), 7);
    assert!(
        all.iter()
            .all(|event| event.entry.account == account("acme"))
    );
    assert!(
        all.windows(2).all(|pair| pair[0].id > pair[1].id),
        "{all:#?}"
    );
    let times: Vec<_> = all.iter().map(|event| event.entry.at).collect();
    assert_eq!(times, (0..7).rev().map(at).collect::<Vec<_>>());

    let acme = account("acme");
    let newest = store
        .audit_trail(&acme, &AuditQuery::latest(3))
        .await
        .expect("page");
    assert_eq!(newest, all[..3]);
    assert!(
        store
            .audit_trail(&acme, &AuditQuery::latest(0))
            .await
            .expect("page")
            .is_empty()
    );

    // Two at a time: every entry once, in order.
    let mut paged = Vec::new();
    let mut query = AuditQuery::latest(2);
    loop {
        let page = store.audit_trail(&acme, &query).await.expect("page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        query = AuditQuery::before(2, last.id);
        paged.extend(page);
    }
    assert_eq!(paged, all);

    // Since an instant: from it on, that instant included; with `before` too.
    let since = store
        .audit_trail(&acme, &AuditQuery::latest(10).since(at(4)))
        .await
        .expect("page");
    assert_eq!(since, all[..3]);
    let both = store
        .audit_trail(&acme, &AuditQuery::before(10, all[1].id).since(at(4)))
        .await
        .expect("page");
    assert_eq!(both, all[2..3]);
    assert!(
        store
            .audit_trail(&account("nobody"), &AuditQuery::latest(10))
            .await
            .expect("page")
            .is_empty()
    );
}

async fn prune_audit_deletes_exactly_the_older_entries_and_numbers_are_not_reused(
    store: Arc<dyn KeyStore>,
) {
    append_entries(&store, "acme", 0, 5).await;
    append_entries(&store, "other", 2, 2).await;
    let all = trail(&store, "acme").await;
    let highest = all[0].id;
    assert_eq!(store.prune_audit(at(3)).await.expect("prune"), 4);
    assert_eq!(trail(&store, "acme").await, all[..2]);
    assert_eq!(entries(&store, "other").await.len(), 1);
    assert_eq!(store.prune_audit(at(3)).await.expect("again"), 0);

    // Everything, the highest number included: a new entry still gets a higher one.
    assert_eq!(store.prune_audit(at(1_000)).await.expect("prune"), 3);
    assert!(trail(&store, "acme").await.is_empty());
    append_entries(&store, "acme", 2_000, 1).await;
    let after = trail(&store, "acme").await;
    assert_eq!(after.len(), 1);
    assert!(after[0].id > highest, "{:?} after {highest:?}", after[0].id);
}

macro_rules! conformance {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            conformance!(@tests $make;
                insert_then_find_by_prefix_and_get,
                insert_refuses_past_the_limit,
                insert_refuses_a_taken_prefix,
                list_is_per_account_and_oldest_first,
                set_status_changes_only_the_status,
                replace_key_swaps_prefix_and_digest_and_clears_last_used,
                replace_key_refuses_a_taken_prefix,
                delete_removes_the_record_and_frees_the_slot,
                last_used_only_moves_forward,
                last_used_ignores_uses_of_a_rotated_away_prefix_or_deleted_key,
                concurrent_inserts_respect_the_limit,
                policy_fields_round_trip,
                update_policy_sets_and_clears_each_field_alone,
                rate_limit_is_kept_set_changed_cleared_and_kept_by_rotation,
                quota_allowlist_and_metadata_are_set_replaced_and_cleared_each_alone,
                policy_values_at_their_edges_round_trip_exactly,
                replace_key_with_grace_keeps_the_old_key_as_previous,
                prefixes_are_unique_across_current_and_previous,
                delete_frees_the_previous_prefix,
                status_and_last_used_changes_keep_the_policy,
                usage_counts_add_up_across_batches_in_hour_then_key_order,
                negative_deltas_add_as_numbers_and_a_negative_sum_reads_as_zero,
                deleted_keys_keep_their_counts,
                usage_filters_by_key,
                usage_range_includes_from_and_excludes_to,
                usage_never_returns_other_accounts_rows,
                prune_deletes_exactly_the_hours_before_and_counts_them,
                a_batch_of_uses_and_counts_applies_both,
                concurrent_flushes_of_the_same_hours_add_up,
                a_large_batch_adds_every_row,
                sums_at_the_edge_of_the_range_saturate_instead_of_failing_the_flush,
                every_change_writes_one_entry_of_the_record_after_it,
                changes_refused_or_of_no_key_write_nothing,
                append_audit_writes_a_refused_entry_as_given,
                audit_trail_is_newest_first_and_pages_by_limit_before_and_since,
                prune_audit_deletes_exactly_the_older_entries_and_numbers_are_not_reused,
            );
        }
    };
    (@tests $make:expr; $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                let Some(store) = $make.await else { return };
                super::$behaviour(store).await;
            }
        )*
    };
}

async fn memory_store() -> Option<Arc<dyn KeyStore>> {
    Some(Arc::new(MemoryStore::new()))
}

conformance!(memory, memory_store());

#[cfg(feature = "sqlite")]
async fn sqlite_store() -> Option<Arc<dyn KeyStore>> {
    Some(Arc::new(crate::support::db::sqlite::store().await))
}

#[cfg(feature = "sqlite")]
conformance!(sqlite, sqlite_store());

#[cfg(feature = "postgres")]
async fn postgres_store() -> Option<Arc<dyn KeyStore>> {
    let store = crate::support::db::postgres::store().await?;
    Some(Arc::new(store))
}

#[cfg(feature = "postgres")]
conformance!(postgres, postgres_store());
