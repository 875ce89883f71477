//! The key stores: what every store does, and what each promises beyond that.

mod conformance;

pub(crate) use conformance::new_record;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::time::SystemTime;

use tower_api_key::audit::{Actor, AuditAction, AuditChanges, AuditEntry, AuditNote};

/// The entry a store writes for `note`'s change of `record` (as it is after the change).
pub(crate) fn entry_of(note: &AuditNote, record: &tower_api_key::KeyRecord) -> AuditEntry {
    record.audit_entry(note)
}

/// An audit note for a store call a test makes itself (the stores' audit tests make their
/// own, with [`note_of`]).
pub(crate) fn note() -> AuditNote {
    AuditNote::now(Actor::system(), AuditAction::Update)
}

/// A note of `action` by `actor` at `at`, setting `changes`.
pub(crate) fn note_of(
    at: SystemTime,
    actor: &str,
    action: AuditAction,
    changes: AuditChanges,
) -> AuditNote {
    AuditNote::new(at, Actor::new(actor).expect("actor"), action, changes)
}

/// What the SQL stores' own tests share: the records they write and the checks they make.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use crate::support::{account, pepper};
    use tower_api_key::audit::{Actor, AuditAction, AuditChanges, AuditEntry, AuditQuery};
    use tower_api_key::policy::{AllowedIps, Metadata, Quota, QuotaPeriod, RateLimit};
    use tower_api_key::{
        ApiKey, KeyId, KeyName, KeyRecord, KeyStatus, KeyStore, PolicyUpdate, PreviousKey, Scopes,
        StoreError,
    };

    /// The migrations a store ships in `migrations/{dialect}` up to version `last`, in order:
    /// `(version, file name, text, checksum)`, as `migrate` would record them.
    pub(crate) fn shipped_migrations(
        dialect: &str,
        last: i64,
    ) -> Vec<(i64, String, String, Vec<u8>)> {
        let dir = format!("{}/migrations/{dialect}", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("migrations folder")
            .map(|entry| entry.expect("entry").path())
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_string_lossy().into_owned();
                let version: i64 = name[..4].parse().expect("numbered");
                (version <= last).then(|| {
                    let sql = std::fs::read_to_string(&path).expect("migration");
                    let checksum = blake3::hash(sql.as_bytes()).as_bytes().to_vec();
                    (version, name, sql, checksum)
                })
            })
            .collect()
    }

    /// A key as an earlier schema wrote it: inactive, created at 1,700,000,000.000001 s, no
    /// policy columns. Its account is `acme`.
    pub(crate) fn old_style_record() -> KeyRecord {
        let key = ApiKey::generate().expect("randomness");
        KeyRecord {
            status: KeyStatus::Inactive,
            ..KeyRecord::new(
                KeyId::random(),
                account("acme"),
                key.prefix(),
                pepper().digest(&key),
                UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001),
            )
        }
    }

    /// After an upgrade: `old` reads back unchanged (no name, unrestricted, never expiring,
    /// no rate limit, no quota, no allowlist, no metadata, no previous key), and its row
    /// takes the new fields.
    pub(crate) async fn assert_upgraded(store: &dyn KeyStore, old: &KeyRecord) {
        let read = store
            .find_by_prefix(&old.prefix)
            .await
            .expect("find")
            .expect("kept");
        assert_eq!(read, *old);
        assert_eq!(
            (read.name, read.scopes, read.expires_at, read.rate_limit),
            (None, None, None, None)
        );
        assert_eq!(
            (read.quota, read.allowed_ips, read.metadata),
            (None, None, None)
        );
        assert!(read.previous.is_none());
        let update = PolicyUpdate::new()
            .scopes(Some(Scopes::default()))
            .rate_limit(Some(RateLimit::new(5, 2).expect("rate limit")));
        let updated = with_new_policy(store, old, update).await;
        let (quota, allowed, metadata) = new_policy();
        assert_eq!(updated.scopes, Some(Scopes::default()));
        assert_eq!(
            updated.rate_limit,
            Some(RateLimit::new(5, 2).expect("limit"))
        );
        assert_eq!(
            (updated.quota, updated.allowed_ips, updated.metadata),
            (Some(quota), Some(allowed), Some(metadata))
        );
    }

    /// A quota, an allowlist and metadata, as the key policy of migration sqlite 5 and
    /// postgres 6 adds them.
    pub(crate) fn new_policy() -> (Quota, AllowedIps, Metadata) {
        (
            Quota::new(10_000, QuotaPeriod::Month).expect("quota"),
            AllowedIps::new(["203.0.113.0/24", "2001:db8::/32"]).expect("allowlist"),
            Metadata::from_json(r#"{"plan":"pro","seats":[1,2]}"#).expect("metadata"),
        )
    }

    /// `update` and [`new_policy`] applied to `old` through `update_policy`: the record as
    /// updated.
    async fn with_new_policy(
        store: &dyn KeyStore,
        old: &KeyRecord,
        update: PolicyUpdate,
    ) -> KeyRecord {
        let (quota, allowed, metadata) = new_policy();
        let update = update
            .quota(Some(quota))
            .allowed_ips(Some(allowed))
            .metadata(Some(metadata));
        store
            .update_policy(&old.account_id, old.id, &update, &crate::store::note())
            .await
            .expect("update")
            .expect("found")
    }

    /// After an upgrade in place: `old`, written by an earlier schema, reads back as it was (by
    /// prefix and in its account's list), then takes [`new_policy`] and reads back with it.
    /// Returns the record as updated.
    pub(crate) async fn upgraded_key_takes_the_new_policy(
        store: &dyn KeyStore,
        old: KeyRecord,
    ) -> KeyRecord {
        assert_eq!(
            store.find_by_prefix(&old.prefix).await.expect("find"),
            Some(old.clone())
        );
        assert_eq!(
            store.list(&account("acme")).await.expect("list"),
            std::slice::from_ref(&old)
        );
        let updated = with_new_policy(store, &old, PolicyUpdate::new()).await;
        let (quota, allowed, metadata) = new_policy();
        let expected = KeyRecord {
            quota: Some(quota),
            allowed_ips: Some(allowed),
            metadata: Some(metadata),
            ..old
        };
        assert_eq!(updated, expected);
        assert_eq!(
            store.get(&account("acme"), expected.id).await.expect("get"),
            Some(expected.clone())
        );
        expected
    }

    /// A key of `account_name` with every column set, a previous key among them.
    pub(crate) fn full_record(account_name: &str) -> KeyRecord {
        let (key, old) = (
            ApiKey::generate().expect("randomness"),
            ApiKey::generate().expect("randomness"),
        );
        KeyRecord {
            name: Some(KeyName::new("CI").expect("name")),
            scopes: Some(Scopes::new(["read", "write"]).expect("scopes")),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            rate_limit: Some(RateLimit::new(5, 2).expect("rate limit")),
            quota: Some(new_policy().0),
            allowed_ips: Some(new_policy().1),
            metadata: Some(new_policy().2),
            previous: Some(PreviousKey {
                prefix: old.prefix(),
                digest: pepper().digest(&old),
                expires_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            }),
            ..KeyRecord::new(
                KeyId::random(),
                account(account_name),
                key.prefix(),
                pepper().digest(&key),
                UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )
        }
    }

    /// Reading `record` back, by prefix and by id, fails with a store failure naming
    /// `column` (`edit` says what was done to the row).
    pub(crate) async fn assert_unreadable(
        store: &dyn KeyStore,
        record: &KeyRecord,
        edit: &str,
        column: &str,
    ) {
        for read in [
            store.find_by_prefix(&record.prefix).await,
            store.get(&record.account_id, record.id).await,
        ] {
            assert_unavailable_naming(&read.expect_err("an unreadable row"), edit, column);
        }
    }

    /// `err` is the store failing on a row changed by `edit`, naming `column`.
    fn assert_unavailable_naming(err: &StoreError, edit: &str, column: &str) {
        assert!(
            matches!(err, StoreError::Unavailable(_)) && err.to_string().contains(column),
            "{edit}: {err}"
        );
    }

    /// The actor a test's trigger or constraint makes the trail refuse.
    pub(crate) const REFUSED_ACTOR: &str = "mallory";

    /// With the trail refusing every entry of [`REFUSED_ACTOR`] (the caller set that up),
    /// each change asked for by that actor fails as a whole: the key is not created,
    /// updated, rotated, revoked or deleted, and the trail holds what it held. A change and
    /// its entry are one atomic step.
    pub(crate) async fn assert_no_change_without_its_entry(store: &dyn KeyStore) {
        let acme = account("acme");
        let record = full_record("acme");
        store
            .insert_within_limit(record.clone(), 3, &crate::store::note())
            .await
            .expect("insert");
        let trail = || async {
            store
                .audit_trail(&acme, &AuditQuery::latest(100))
                .await
                .expect("trail")
        };
        let before = trail().await;
        assert_eq!(before.len(), 1);
        let refused = |action| {
            crate::store::note_of(
                SystemTime::now(),
                REFUSED_ACTOR,
                action,
                AuditChanges::none(),
            )
        };
        let failed = |result: Result<(), StoreError>, what: &str| {
            let err = result.expect_err(what);
            assert!(matches!(err, StoreError::Unavailable(_)), "{what}: {err:?}");
        };
        let new = full_record("acme");
        failed(
            store
                .insert_within_limit(new.clone(), 3, &refused(AuditAction::Create))
                .await,
            "create",
        );
        let update = PolicyUpdate::new().scopes(None);
        failed(
            store
                .update_policy(&acme, record.id, &update, &refused(AuditAction::Update))
                .await
                .map(drop),
            "update",
        );
        failed(
            store
                .replace_key(
                    &acme,
                    record.id,
                    new.prefix,
                    new.digest,
                    None,
                    &refused(AuditAction::Rotate),
                )
                .await
                .map(drop),
            "rotate",
        );
        failed(
            store
                .set_status(
                    &acme,
                    record.id,
                    KeyStatus::Inactive,
                    &refused(AuditAction::Revoke),
                )
                .await
                .map(drop),
            "revoke",
        );
        failed(
            store
                .delete(&acme, record.id, &refused(AuditAction::Delete))
                .await
                .map(drop),
            "delete",
        );
        assert_eq!(store.list(&acme).await.expect("list"), [record]);
        assert_eq!(trail().await, before);
    }

    /// Reading `account_name`'s trail fails with a store failure naming `column` (`edit`
    /// says what was done to a row of it).
    pub(crate) async fn assert_trail_unreadable(
        store: &dyn KeyStore,
        account_name: &str,
        edit: &str,
        column: &str,
    ) {
        let err = store
            .audit_trail(&account(account_name), &AuditQuery::latest(10))
            .await
            .expect_err("an unreadable entry");
        assert_unavailable_naming(&err, edit, column);
    }

    /// Edits of an entry's row that the schema lets through and the store refuses to read,
    /// with the column the failure names.
    pub(crate) const UNREADABLE_ENTRIES: [(&str, &str); 4] = [
        ("actor = ''", "actor"),
        ("prefix = 'not a prefix'", "prefix"),
        ("changes = '[1]'", "changes"),
        ("changes = '{'", "changes"),
    ];

    /// An entry of `account_name` with a key, appended: the row the edits of
    /// [`UNREADABLE_ENTRIES`] are made to.
    pub(crate) async fn append_entry(store: &dyn KeyStore, account_name: &str) {
        let record = full_record(account_name);
        let entry = AuditEntry::refused(
            SystemTime::now(),
            account(account_name),
            Some((record.id, record.prefix)),
            AuditAction::Update,
            Actor::system(),
            AuditChanges::none(),
        );
        store.append_audit(&entry).await.expect("append");
    }

    /// After an upgrade that added the trail: `acme`'s trail is empty (the key `id` of the
    /// earlier release has no entries), and a change to the key writes its entry.
    pub(crate) async fn assert_upgraded_store_audits(store: &dyn KeyStore, id: KeyId) {
        let acme = account("acme");
        let trail = || async {
            store
                .audit_trail(&acme, &AuditQuery::latest(100))
                .await
                .expect("trail")
        };
        assert!(trail().await.is_empty());
        let note = crate::store::note_of(
            UNIX_EPOCH + Duration::from_micros(1_800_000_000_000_001),
            "operator",
            AuditAction::Revoke,
            AuditChanges::none(),
        );
        let revoked = store
            .set_status(&acme, id, KeyStatus::Inactive, &note)
            .await
            .expect("revoke")
            .expect("found");
        let entries: Vec<_> = trail().await.into_iter().map(|event| event.entry).collect();
        assert_eq!(entries, [super::entry_of(&note, &revoked)]);
    }
}
