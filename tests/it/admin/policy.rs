//! A key's allowlist, quota and metadata over HTTP: taken at create, shown in every record,
//! set, replaced and cleared by `PATCH`, every bad value a 400 that changes nothing, the
//! records' `quota_used` counted from the store's hours of the quota's current period, and
//! what an authorizer sees of them.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::json;
use tower_api_key::admin::{
    AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied, AdminOperation,
};
use tower_api_key::policy::QuotaPeriod;
use tower_api_key::usage::{Hour, UsageBatch, UsageDelta};

use super::{Harness, text};
use crate::support::{account, wait};

const FULL: &str = r#"{
    "name": "CI",
    "allowed_ips": ["203.0.113.9/24", "198.51.100.7", "2001:db8::1"],
    "metadata": {"plan": "pro", "limits": {"seats": 5}},
    "quota": {"requests": 1000, "period": "day"}
}"#;

/// `{"k": "xxx…"}` of exactly `bytes` bytes once compact.
fn metadata_of(bytes: usize) -> String {
    format!(r#"{{"k":"{}"}}"#, "x".repeat(bytes - 8))
}

#[tokio::test]
async fn create_takes_all_three_and_every_record_shows_them() {
    let admin = Harness::start().await;
    let created = admin.create("acme", Some(FULL)).await;
    let expected_ips = json!(["198.51.100.7/32", "203.0.113.0/24", "2001:db8::1/128"]);
    assert_eq!(
        created["allowed_ips"], expected_ips,
        "normalized and sorted"
    );
    assert_eq!(
        created["metadata"],
        json!({"plan": "pro", "limits": {"seats": 5}})
    );
    assert_eq!(created["quota"], json!({"requests": 1000, "period": "day"}));
    assert_eq!(created["quota_used"], 0, "a new key has used none");
    let id = text(&created, "id");

    let got = admin.on_key(Method::GET, "acme", id, "", None).await;
    assert_eq!(got.status, StatusCode::OK);
    let listed = admin.list("acme").await;
    for record in [got.json(), listed[0].clone()] {
        assert_eq!(record["allowed_ips"], expected_ips, "{record}");
        assert_eq!(record["metadata"], created["metadata"], "{record}");
        assert_eq!(record["quota"], created["quota"], "{record}");
        assert_eq!(record["quota_used"], 0, "{record}");
    }
    // The manager holds what the records show.
    let info = admin
        .manager
        .get(&account("acme"), id.parse().expect("id"))
        .await
        .expect("get");
    assert_eq!(
        info.metadata.as_ref().map(|m| m.as_json().to_owned()),
        Some(r#"{"limits":{"seats":5},"plan":"pro"}"#.to_owned())
    );
    assert_eq!(info.allowed_ips.map(|ips| ips.iter().count()), Some(3));
    assert_eq!(info.quota.map(|quota| quota.requests()), Some(1000));

    // Without them (absent or null), each is null, `quota_used` too.
    for body in [
        None,
        Some(r#"{"allowed_ips": null, "metadata": null, "quota": null}"#),
    ] {
        let plain = admin.create("acme", body).await;
        for field in ["allowed_ips", "metadata", "quota", "quota_used"] {
            assert!(plain[field].is_null(), "{field}: {plain}");
        }
    }
    for record in &admin.list("acme").await[1..] {
        for field in ["allowed_ips", "metadata", "quota", "quota_used"] {
            assert!(record[field].is_null(), "{field}: {record}");
        }
    }
}

#[tokio::test]
async fn patch_sets_replaces_and_clears_each_and_keeps_what_is_absent() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let id = text(&created, "id");

    // Set.
    let record = admin.patch("acme", id, FULL).await;
    assert_eq!(
        record["allowed_ips"],
        json!(["198.51.100.7/32", "203.0.113.0/24", "2001:db8::1/128"])
    );
    assert_eq!(record["quota"], json!({"requests": 1000, "period": "day"}));
    assert_eq!(record["quota_used"], 0);
    assert_eq!(record["metadata"]["plan"], "pro");

    // Replace: metadata as a whole (the old members go).
    let body = r#"{"allowed_ips": ["10.0.0.0/8"], "metadata": {"region": "eu"},
                   "quota": {"requests": 50, "period": "month"}}"#;
    let record = admin.patch("acme", id, body).await;
    assert_eq!(record["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(record["metadata"], json!({"region": "eu"}));
    assert_eq!(record["quota"], json!({"requests": 50, "period": "month"}));
    assert_eq!(record["name"], "CI", "the rest is kept");

    // Absent: kept.
    let record = admin.patch("acme", id, r#"{"name": "renamed"}"#).await;
    assert_eq!(record["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(record["metadata"], json!({"region": "eu"}));
    assert_eq!(record["quota"], json!({"requests": 50, "period": "month"}));
    assert_eq!(admin.list("acme").await, [record]);

    // Null: cleared, one at a time.
    let record = admin.patch("acme", id, r#"{"allowed_ips": null}"#).await;
    assert!(record["allowed_ips"].is_null(), "{record}");
    assert!(record["quota"].is_object() && record["metadata"].is_object());
    let record = admin.patch("acme", id, r#"{"quota": null}"#).await;
    assert!(
        record["quota"].is_null() && record["quota_used"].is_null(),
        "{record}"
    );
    assert!(record["metadata"].is_object());
    let record = admin.patch("acme", id, r#"{"metadata": null}"#).await;
    assert!(record["metadata"].is_null(), "{record}");
    assert_eq!(record["name"], "renamed");
    let info = admin
        .manager
        .get(&account("acme"), id.parse().expect("id"))
        .await
        .expect("get");
    assert_eq!(
        (info.allowed_ips, info.quota, info.metadata),
        (None, None, None)
    );
    // An empty object is metadata too.
    let record = admin.patch("acme", id, r#"{"metadata": {}}"#).await;
    assert_eq!(record["metadata"], json!({}));
}

#[tokio::test]
async fn the_bounds_themselves_are_accepted() {
    let admin = Harness::start().await;
    let blocks: Vec<String> = (0..32).map(|i| format!("10.0.{i}.0/24")).collect();
    let metadata = metadata_of(4096);
    let body = format!(
        r#"{{"allowed_ips": {}, "metadata": {metadata}, "quota": {{"requests": 1000000000, "period": "month"}}}}"#,
        json!(blocks)
    );
    let created = admin.create("acme", Some(&body)).await;
    assert_eq!(created["allowed_ips"].as_array().map(Vec::len), Some(32));
    assert_eq!(created["quota"]["requests"], 1_000_000_000);
    assert_eq!(
        serde_json::to_string(&created["metadata"])
            .expect("json")
            .len(),
        4096
    );
    let id = text(&created, "id");
    let record = admin
        .patch(
            "acme",
            id,
            r#"{"quota": {"requests": 1, "period": "day"}, "allowed_ips": ["::/0"]}"#,
        )
        .await;
    assert_eq!(record["quota"], json!({"requests": 1, "period": "day"}));
    assert_eq!(record["allowed_ips"], json!(["::/0"]));
}

/// Bodies refused at create and at update alike, each with a part of its message.
fn refused_bodies() -> Vec<(String, &'static str)> {
    let blocks: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
    let mut cases: Vec<(String, &'static str)> = [
        // Allowlists.
        (r#"{"allowed_ips": "10.0.0.1"}"#, "invalid JSON body"),
        (r#"{"allowed_ips": [1]}"#, "invalid JSON body"),
        (r#"{"allowed_ips": [null]}"#, "invalid JSON body"),
        (
            r#"{"allowed_ips": {"ip": "10.0.0.1"}}"#,
            "invalid JSON body",
        ),
        (r#"{"allowed_ips": []}"#, "at least one"),
        (r#"{"allowed_ips": ["10.0.0.256"]}"#, "allowed address"),
        (r#"{"allowed_ips": ["10.0.0.0/33"]}"#, "allowed address"),
        (r#"{"allowed_ips": ["::1/129"]}"#, "allowed address"),
        (r#"{"allowed_ips": ["10.0.0.0/+8"]}"#, "allowed address"),
        (r#"{"allowed_ips": ["example.com"]}"#, "allowed address"),
        (r#"{"allowed_ips": ["10.0.0.1", ""]}"#, "allowed address"),
        (
            r#"{"allowed_ips": ["10.0.0.1"], "allowed_ips": null}"#,
            "duplicate",
        ),
        // Metadata.
        (r#"{"metadata": []}"#, "metadata must be a JSON object"),
        (
            r#"{"metadata": [{"a": 1}]}"#,
            "metadata must be a JSON object",
        ),
        (r#"{"metadata": "{}"}"#, "metadata must be a JSON object"),
        (r#"{"metadata": 1}"#, "metadata must be a JSON object"),
        (r#"{"metadata": true}"#, "metadata must be a JSON object"),
        (r#"{"metadata": {"a": 1, "a": 2}}"#, "duplicate member"),
        (
            r#"{"metadata": {"a": {"b": 1, "b": 1}}}"#,
            "duplicate member",
        ),
        (r#"{"metadata": {}, "metadata": null}"#, "duplicate"),
        // Quotas.
        (
            r#"{"quota": {"requests": 0, "period": "day"}}"#,
            "quota must be",
        ),
        (
            r#"{"quota": {"requests": 1000000001, "period": "day"}}"#,
            "quota must be",
        ),
        (
            r#"{"quota": {"requests": -1, "period": "day"}}"#,
            "quota must be",
        ),
        (
            r#"{"quota": {"requests": 99999999999999999999, "period": "day"}}"#,
            "invalid JSON body",
        ),
        (
            r#"{"quota": {"requests": 1.5, "period": "day"}}"#,
            "invalid JSON body",
        ),
        (
            r#"{"quota": {"requests": "5", "period": "day"}}"#,
            "invalid JSON body",
        ),
        (
            r#"{"quota": {"requests": 5, "period": "week"}}"#,
            "quota must be",
        ),
        (
            r#"{"quota": {"requests": 5, "period": "Day"}}"#,
            "quota must be",
        ),
        (
            r#"{"quota": {"requests": 5, "period": 1}}"#,
            "invalid JSON body",
        ),
        (r#"{"quota": {"requests": 5}}"#, "period"),
        (r#"{"quota": {"period": "day"}}"#, "requests"),
        (
            r#"{"quota": {"requests": 5, "period": "day", "burst": 1}}"#,
            "burst",
        ),
        (
            r#"{"quota": {"requests": 5, "period": "day", "period": "month"}}"#,
            "duplicate",
        ),
        (r#"{"quota": [5, "day"]}"#, "invalid JSON body"),
        (r#"{"quota": "5/day"}"#, "invalid JSON body"),
        // A valid field beside a refused one changes nothing either.
        (
            r#"{"name": "new", "quota": {"requests": 0, "period": "day"}}"#,
            "quota must be",
        ),
    ]
    .into_iter()
    .map(|(body, says)| (body.to_owned(), says))
    .collect();
    cases.push((
        format!(r#"{{"allowed_ips": {}}}"#, json!(blocks)),
        "at most 32 allowed addresses",
    ));
    cases.push((
        format!(r#"{{"metadata": {}}}"#, metadata_of(4097)),
        "metadata must be at most 4096 bytes",
    ));
    // Nested deeper than JSON is read (and within the body's 16 KiB): a 400, not a crash.
    cases.push((
        format!(
            r#"{{"metadata": {{"deep": {}1{}}}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        ),
        "recursion limit",
    ));
    cases
}

#[tokio::test]
async fn every_bad_allowlist_quota_or_metadata_is_a_400_that_changes_nothing() {
    let admin = Harness::start().await;
    for (body, says) in refused_bodies() {
        let reply = admin
            .admin(Method::POST, "/admin/accounts/acme/keys", Some(&body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, &body);
        let error = reply.json()["error"].as_str().expect("text").to_owned();
        assert!(error.contains(says), "create {body}: {error}");
    }
    assert!(admin.list("acme").await.is_empty(), "nothing created");

    let created = admin.create("acme", Some(FULL)).await;
    let id = text(&created, "id");
    let before = admin.list("acme").await;
    for (body, says) in refused_bodies() {
        let reply = admin
            .on_key(Method::PATCH, "acme", id, "", Some(&body))
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, &body);
        let error = reply.json()["error"].as_str().expect("text").to_owned();
        assert!(error.contains(says), "update {body}: {error}");
        assert_eq!(admin.list("acme").await, before, "{body} changed the key");
    }
    assert_eq!(admin.events().len(), 1, "only the create");
}

#[tokio::test]
async fn quota_used_counts_the_accepted_requests_made_with_the_key() {
    crate::support::clock::in_one_quota_period().await;
    let admin = Harness::start().await;
    // A rate limit of 3 a day: the fourth request is refused, and not counted.
    let daily = admin
        .create(
            "acme",
            Some(
                r#"{"quota": {"requests": 1000, "period": "day"},
                    "rate_limit": {"requests": 3, "per_seconds": 86400}}"#,
            ),
        )
        .await;
    let monthly = admin
        .create(
            "acme",
            Some(r#"{"quota": {"requests": 1000, "period": "month"}}"#),
        )
        .await;
    let plain = admin.create("acme", None).await;
    for _ in 0..3 {
        assert_eq!(admin.ping(text(&daily, "key")).await, StatusCode::OK);
    }
    assert_eq!(
        admin.ping(text(&daily, "key")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..2 {
        assert_eq!(admin.ping(text(&monthly, "key")).await, StatusCode::OK);
    }
    assert_eq!(admin.ping(text(&plain, "key")).await, StatusCode::OK);

    wait::until("quota_used to count 3 and 2", || async {
        let listed = admin.list("acme").await;
        listed[0]["quota_used"] == 3
            && listed[1]["quota_used"] == 2
            && listed[2]["requests_24h"] == 1
    })
    .await;
    let listed = admin.list("acme").await;
    assert!(listed[2]["quota_used"].is_null(), "no quota: {}", listed[2]);

    // Every answer with a record carries it.
    let id = text(&daily, "id");
    let got = admin.on_key(Method::GET, "acme", id, "", None).await;
    assert_eq!(got.json()["quota_used"], 3, "{}", got.text());
    let patched = admin.patch("acme", id, r#"{"name": "daily"}"#).await;
    assert_eq!(patched["quota_used"], 3);
    for action in ["/revoke", "/reactivate", "/rotate"] {
        let reply = admin.on_key(Method::POST, "acme", id, action, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{action}: {}", reply.text());
        assert_eq!(reply.json()["quota_used"], 3, "{action}");
    }
    // A month holds today: the same requests count for a monthly quota.
    let monthly_now = admin
        .patch(
            "acme",
            id,
            r#"{"quota": {"requests": 10, "period": "month"}}"#,
        )
        .await;
    assert_eq!(monthly_now["quota_used"], 3);
    // Without a quota, no count; with one again, the count is back.
    let cleared = admin.patch("acme", id, r#"{"quota": null}"#).await;
    assert!(cleared["quota_used"].is_null(), "{cleared}");
    let again = admin
        .patch("acme", id, r#"{"quota": {"requests": 5, "period": "day"}}"#)
        .await;
    assert_eq!(again["quota_used"], 3);
}

/// Accepted requests of the hours in `[from, to)` among `deltas`, each hour's sum read as zero
/// below it: what `quota_used` should say.
fn accepted_within(deltas: &[(Hour, i64)], from: Hour, to: Hour) -> u64 {
    let mut hours = std::collections::BTreeMap::<Hour, i64>::new();
    for &(hour, accepted) in deltas {
        *hours.entry(hour).or_default() += accepted;
    }
    hours
        .into_iter()
        .filter(|(hour, _)| (from..to).contains(hour))
        .map(|(_, sum)| sum.max(0).unsigned_abs())
        .sum()
}

#[tokio::test]
async fn quota_used_sums_the_hours_of_the_current_utc_day_or_month_only() {
    let admin = Harness::start().await;
    let daily = admin
        .create(
            "acme",
            Some(r#"{"quota": {"requests": 1000, "period": "day"}}"#),
        )
        .await;
    let monthly = admin
        .create(
            "acme",
            Some(r#"{"quota": {"requests": 1000, "period": "month"}}"#),
        )
        .await;
    let now = SystemTime::now();
    let today = Hour::containing(QuotaPeriod::Day.containing(now).start());
    let current = Hour::containing(now);
    // The first hour of today, the hour before it (yesterday: this month's unless today is the
    // 1st), 40 days ago (in neither), the current hour with a negative sum (a request moved
    // to refused after its flush: reads as zero, taking nothing off the others).
    let deltas = [
        (today, 7),
        (today.earlier(1), 11),
        (current.earlier(40 * 24), 13),
        (current, -5),
    ];
    let counts = [&daily, &monthly]
        .into_iter()
        .flat_map(|key| {
            deltas.iter().map(|&(hour, accepted)| UsageDelta {
                account_id: account("acme"),
                key_id: text(key, "id").parse().expect("a key id"),
                hour,
                accepted,
                rate_limited: 0,
                refused: 0,
            })
        })
        .collect();
    admin
        .manager
        .store()
        .record_usage(&UsageBatch {
            last_used: Vec::new(),
            counts,
        })
        .await
        .expect("record usage");

    // Computed at each look, so that a day or month turning meanwhile is followed.
    wait::until("quota_used to sum the period's hours", || async {
        let now = SystemTime::now();
        let expect = |period: QuotaPeriod| {
            let period = period.containing(now);
            accepted_within(
                &deltas,
                Hour::containing(period.start()),
                Hour::containing(period.end()),
            )
        };
        let listed = admin.list("acme").await;
        listed[0]["quota_used"] == expect(QuotaPeriod::Day)
            && listed[1]["quota_used"] == expect(QuotaPeriod::Month)
    })
    .await;
    // The manager answers the same, for the keys it is given.
    let keys = admin.manager.list(&account("acme")).await.expect("list");
    let used = admin.manager.quota_used(&keys).await.expect("read");
    let ids: std::collections::HashSet<String> = used.keys().map(ToString::to_string).collect();
    let expected = [
        text(&daily, "id").to_owned(),
        text(&monthly, "id").to_owned(),
    ];
    assert_eq!(ids, expected.into_iter().collect());
    let none = admin.manager.quota_used(&[]).await.expect("read");
    assert!(none.is_empty());
}

#[tokio::test]
async fn quota_used_is_null_when_usage_cant_be_read_and_the_key_still_answers() {
    let store = Arc::new(super::usage::NoUsageTable(tower_api_key::MemoryStore::new()));
    let admin = Harness::on_store(store, |manager| {
        tower_api_key::admin::AdminRouter::new(
            manager,
            tower_api_key::admin::AdminToken::new(super::TOKEN).expect("token"),
        )
    })
    .await;
    let created = admin
        .create(
            "acme",
            Some(r#"{"quota": {"requests": 10, "period": "day"}}"#),
        )
        .await;
    assert_eq!(created["quota_used"], 0, "a new key has used none");
    let id = text(&created, "id");
    assert!(admin.list("acme").await[0]["quota_used"].is_null());
    let got = admin.on_key(Method::GET, "acme", id, "", None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.json()["quota_used"].is_null());
    let patched = admin
        .patch("acme", id, r#"{"quota": {"requests": 5, "period": "day"}}"#)
        .await;
    assert!(patched["quota_used"].is_null());
    assert_eq!(patched["quota"]["requests"], 5);
}

/// Notes the allowlist, quota and metadata of each create and update it is asked about, and
/// refuses a new key without an allowlist.
#[derive(Default, Clone)]
struct SeesPolicy {
    seen: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl AdminAuthorizer for SeesPolicy {
    async fn authenticate(&self, _request: &Parts) -> Result<AdminCaller, AdminDenied> {
        Ok(AdminCaller::Operator)
    }

    async fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        let seen = match &attempt.operation {
            AdminOperation::Create(options) => {
                if options.allowed_ips.is_none() {
                    return Err(AdminDenied::NotAllowed);
                }
                format!(
                    "create ips={:?} quota={:?} metadata={:?}",
                    options.allowed_ips.as_ref().map(|ips| ips.iter().count()),
                    options.quota.map(|q| (q.requests(), q.period().as_str())),
                    options.metadata.as_ref().map(|m| m.as_json().to_owned()),
                )
            }
            AdminOperation::Update { key, update } => format!(
                "update held={:?} ips={:?} quota={:?} metadata={:?}",
                key.quota.map(|q| q.requests()),
                update
                    .allowed_ips
                    .as_ref()
                    .map(|ips| ips.as_ref().map(|ips| ips.iter().count())),
                update
                    .quota
                    .map(|quota| quota.map(|q| (q.requests(), q.period().as_str()))),
                update
                    .metadata
                    .as_ref()
                    .map(|m| m.as_ref().map(|m| m.as_json().to_owned())),
            ),
            _ => return Ok(()),
        };
        self.seen.lock().expect("lock").push(seen);
        Ok(())
    }
}

#[tokio::test]
async fn the_authorizer_sees_the_allowlist_quota_and_metadata_asked_for() {
    let authorizer = SeesPolicy::default();
    let admin = Harness::with_authorizer(authorizer.clone()).await;
    let refused = admin
        .admin(
            Method::POST,
            "/admin/accounts/acme/keys",
            Some(r#"{"quota": {"requests": 5, "period": "day"}}"#),
        )
        .await;
    refused.assert_error(StatusCode::FORBIDDEN, "no allowlist");
    let created = admin.create("acme", Some(FULL)).await;
    let id = text(&created, "id");
    admin
        .patch(
            "acme",
            id,
            r#"{"allowed_ips": null, "quota": {"requests": 5, "period": "month"}, "metadata": {"a": 1}}"#,
        )
        .await;
    admin
        .patch("acme", id, r#"{"quota": null, "metadata": null}"#)
        .await;
    assert_eq!(
        *authorizer.seen.lock().expect("lock"),
        vec![
            r#"create ips=Some(3) quota=Some((1000, "day")) metadata=Some("{\"limits\":{\"seats\":5},\"plan\":\"pro\"}")"#
                .to_owned(),
            r#"update held=Some(1000) ips=Some(None) quota=Some(Some((5, "month"))) metadata=Some(Some("{\"a\":1}"))"#
                .to_owned(),
            "update held=Some(5) ips=None quota=Some(None) metadata=Some(None)".to_owned(),
        ]
    );
}
