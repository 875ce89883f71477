//! Usage over HTTP: `GET …/keys/{id}/usage` and `GET …/usage` (buckets, zeros, bounds, days,
//! the strict query, the missing key's 404, deleted keys in the account's total), each record's
//! `requests_24h`, and who may read them. Counts come from real requests through the layer,
//! flushed by the harness's recorder; tests wait for them, never for a time.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower_api_key::admin::{
    AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied, AdminOperation, AdminToken,
    AdminTokens,
};

use super::{Harness, Reply, TOKEN, text};
use crate::support::wait;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const NO_KEY: &str = "00000000-0000-4000-8000-000000000000";

/// Accepted, rate limited, refused: a series' sums.
type Totals = (u64, u64, u64);

fn totals(usage: &Value) -> Totals {
    buckets(usage).iter().fold((0, 0, 0), |(a, r, f), bucket| {
        (
            a + count(bucket, "accepted"),
            r + count(bucket, "rate_limited"),
            f + count(bucket, "refused"),
        )
    })
}

fn buckets(usage: &Value) -> &Vec<Value> {
    usage["buckets"].as_array().expect("buckets")
}

fn count(bucket: &Value, field: &str) -> u64 {
    bucket[field].as_u64().expect("a count")
}

fn start(bucket: &Value) -> SystemTime {
    humantime::parse_rfc3339(text(bucket, "start")).expect("an RFC 3339 start")
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl Harness {
    /// `GET {path}` with the operator token.
    async fn get(&self, path: &str) -> Reply {
        self.admin(Method::GET, path, None).await
    }

    /// `GET {path}`, 200 asserted with the admin API's headers, as JSON.
    async fn usage(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        reply.json()
    }

    /// Waits until the usage at `path` adds up to `expected`, and returns it.
    async fn usage_reaching(&self, path: &str, expected: Totals) -> Value {
        wait::until(&format!("{path} to count {expected:?}"), || async {
            totals(&self.usage(path).await) == expected
        })
        .await;
        self.usage(path).await
    }

    /// Pings with `key` and asserts the answer's status.
    async fn ping_expecting(&self, key: &str, status: StatusCode) {
        assert_eq!(self.ping(key).await, status);
    }
}

/// Asserts consecutive buckets `step` apart, each on a bucket boundary.
fn assert_consecutive(usage: &Value, step: Duration) {
    let starts: Vec<SystemTime> = buckets(usage).iter().map(start).collect();
    for pair in starts.windows(2) {
        assert_eq!(pair[1].duration_since(pair[0]).expect("oldest first"), step);
    }
    for at in starts {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        assert_eq!(since.as_secs() % step.as_secs(), 0, "{}", rfc3339(at));
    }
}

#[tokio::test]
async fn a_keys_usage_counts_each_outcome_in_hourly_buckets_zeros_included() {
    let admin = Harness::start().await;
    let created = admin
        .create(
            "acme",
            Some(r#"{"rate_limit": {"requests": 2, "per_seconds": 86400}}"#),
        )
        .await;
    let (id, key) = (text(&created, "id"), text(&created, "key"));
    let path = format!("/admin/accounts/acme/keys/{id}/usage");
    let before = admin.usage(&path).await;
    assert_eq!(totals(&before), (0, 0, 0));
    assert_eq!(buckets(&before).len(), 48);

    admin.ping_expecting(key, StatusCode::OK).await;
    admin.ping_expecting(key, StatusCode::OK).await;
    admin
        .ping_expecting(key, StatusCode::TOO_MANY_REQUESTS)
        .await;
    // Expired at once: refused for the key's own policy.
    admin
        .patch("acme", id, r#"{"expires_at": "2020-01-01T00:00:00Z"}"#)
        .await;
    admin.ping_expecting(key, StatusCode::UNAUTHORIZED).await;

    let usage = admin.usage_reaching(&path, (2, 1, 1)).await;
    assert_eq!(usage["key_id"], id);
    assert_eq!(usage["granularity"], "hour");
    let buckets = buckets(&usage);
    assert_eq!(buckets.len(), 48);
    assert_consecutive(&usage, HOUR);
    // The last bucket is the current hour's (or, if the hour turned, the one before).
    let last = start(buckets.last().expect("a bucket"));
    let now = SystemTime::now();
    assert!(last <= now && now.duration_since(last).expect("past") < 2 * HOUR);
    let used = buckets
        .iter()
        .filter(|bucket| {
            count(bucket, "accepted") + count(bucket, "rate_limited") + count(bucket, "refused") > 0
        })
        .count();
    assert!((1..=2).contains(&used), "{usage}");
    assert!(
        buckets.iter().all(|bucket| {
            bucket.as_object().expect("an object").len() == 4
                && text(bucket, "start").ends_with(":00:00Z")
        }),
        "{usage}"
    );
}

#[tokio::test]
async fn from_and_to_bound_the_buckets_and_days_are_utc_days() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let (id, key) = (text(&created, "id"), text(&created, "key"));
    for _ in 0..3 {
        admin.ping_expecting(key, StatusCode::OK).await;
    }
    let path = format!("/admin/accounts/acme/keys/{id}/usage");
    let usage = admin.usage_reaching(&path, (3, 0, 0)).await;
    // The first hour with requests (the requests may straddle an hour's turn).
    let first = buckets(&usage)
        .iter()
        .find(|bucket| count(bucket, "accepted") > 0)
        .expect("a used bucket");
    let (hour, in_first) = (start(first), count(first, "accepted"));

    // [hour, hour + 1 h): that bucket alone; a `from` within the hour is rounded down.
    for from in [hour, hour + HOUR / 2] {
        let query = format!("?from={}&to={}", rfc3339(from), rfc3339(hour + HOUR));
        let one = admin.usage(&format!("{path}{query}")).await;
        assert_eq!(buckets(&one).len(), 1, "{query}: {one}");
        assert_eq!(start(&buckets(&one)[0]), hour);
        assert_eq!(count(&buckets(&one)[0], "accepted"), in_first);
    }
    // `to` is excluded: the two hours before `hour`, both zero.
    let query = format!("?from={}&to={}", rfc3339(hour - 2 * HOUR), rfc3339(hour));
    let before = admin.usage(&format!("{path}{query}")).await;
    assert_eq!(buckets(&before).len(), 2);
    assert_eq!(start(&buckets(&before)[0]), hour - 2 * HOUR);
    assert_eq!(totals(&before), (0, 0, 0));
    // Only `from`: 48 hours from its hour. Only `to`: the 48 hours before it.
    let only_from = admin
        .usage(&format!("{path}?from={}", rfc3339(hour + HOUR / 4)))
        .await;
    assert_eq!(buckets(&only_from).len(), 48);
    assert_eq!(start(&buckets(&only_from)[0]), hour);
    assert_eq!(count(&buckets(&only_from)[0], "accepted"), in_first);
    let only_to = admin
        .usage(&format!("{path}?to={}", rfc3339(hour + HOUR)))
        .await;
    assert_eq!(buckets(&only_to).len(), 48);
    assert_eq!(start(buckets(&only_to).last().expect("a bucket")), hour);
    // An offset, percent-encoded, is the same instant.
    let plus_two = rfc3339(hour + 2 * HOUR).replace('Z', "%2B02:00");
    let shifted = admin
        .usage(&format!(
            "{path}?from={plus_two}&to={}",
            rfc3339(hour + HOUR)
        ))
        .await;
    assert_eq!(start(&buckets(&shifted)[0]), hour);

    // Days: 30 UTC days by default, today's last; the requests are in them.
    let days = admin.usage(&format!("{path}?granularity=day")).await;
    assert_eq!(days["granularity"], "day");
    assert_eq!(buckets(&days).len(), 30);
    assert_consecutive(&days, DAY);
    assert_eq!(totals(&days), (3, 0, 0));
    // A `from` at noon takes its whole day; `to` a midnight ends before that day.
    let midnight = SystemTime::UNIX_EPOCH
        + DAY
            * u32::try_from(
                hour.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs()
                    / DAY.as_secs(),
            )
            .expect("days fit");
    let query = format!(
        "?granularity=day&from={}&to={}",
        rfc3339(midnight - DAY / 2),
        rfc3339(midnight + DAY)
    );
    let two = admin.usage(&format!("{path}{query}")).await;
    assert_eq!(buckets(&two).len(), 2, "{two}");
    assert_eq!(start(&buckets(&two)[0]), midnight - DAY);
    // `hour` is the first with requests: none the day before, at least its own on its day.
    assert_eq!(count(&buckets(&two)[0], "accepted"), 0);
    assert!(count(&buckets(&two)[1], "accepted") >= in_first, "{two}");
    // The largest range is fine.
    let most = admin
        .usage(&format!(
            "{path}?granularity=day&from={}&to={}",
            rfc3339(midnight - DAY * 999),
            rfc3339(midnight + DAY)
        ))
        .await;
    assert_eq!(buckets(&most).len(), 1000);
}

#[tokio::test]
async fn bad_usage_queries_are_400_naming_the_parameter() {
    let admin = Harness::start().await;
    let id = text(&admin.create("acme", None).await, "id").to_owned();
    let cases = [
        ("granularity=week", "granularity must be hour or day"),
        ("granularity=", "granularity must be hour or day"),
        ("from=yesterday", "from must be an RFC 3339 time"),
        ("to=2026-12-05", "to must be an RFC 3339 time"),
        (
            "from=2026-12-05T00:00:00+01:00",
            "from must be an RFC 3339 time",
        ),
        ("to=10000-01-01T00:00:00Z", "to must be an RFC 3339 time"),
        ("from=1969-12-31T23:00:00Z", "from must lie between 1970"),
        (
            "from=2026-12-05T01:00:00Z&to=2026-12-05T01:00:00Z",
            "from must be before to",
        ),
        (
            "from=2026-12-05T02:00:00Z&to=2026-12-05T01:00:00Z",
            "from must be before to",
        ),
        (
            "from=2026-01-01T00:00:00Z&to=2026-02-11T17:00:00Z",
            "more than 1000 buckets",
        ),
        (
            "granularity=day&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "more than 1000 buckets",
        ),
        ("to=1970-01-01T00:00:00Z", "to must be after 1970"),
        ("limit=10", r#"unknown query parameter "limit""#),
        (
            "Granularity=day",
            r#"unknown query parameter "Granularity""#,
        ),
        (
            "from=2026-12-05T01:00:00Z&from=2026-12-05T02:00:00Z",
            "from is given more than once",
        ),
        ("to=a&to=b", "to is given more than once"),
        (
            "granularity=day&granularity=day",
            "granularity is given more than once",
        ),
        ("from=%E0%A4%A", "from is not valid percent-encoding"),
    ];
    for path in [
        format!("/admin/accounts/acme/keys/{id}/usage"),
        "/admin/accounts/acme/usage".to_owned(),
    ] {
        for (query, says) in cases {
            let reply = admin.get(&format!("{path}?{query}")).await;
            reply.assert_error(StatusCode::BAD_REQUEST, query);
            let error = reply.json()["error"].as_str().expect("text").to_owned();
            assert!(error.contains(says), "{query}: {error}");
            assert_eq!(reply.header("cache-control"), Some("no-store"));
        }
    }
    // The 1,000th bucket is still fine.
    let most = admin
        .usage("/admin/accounts/acme/usage?from=2026-01-01T00:00:00Z&to=2026-02-11T16:00:00Z")
        .await;
    assert_eq!(buckets(&most).len(), 1000);
    // Other methods are 405.
    let post = admin
        .admin(Method::POST, "/admin/accounts/acme/usage", None)
        .await;
    post.assert_error(StatusCode::METHOD_NOT_ALLOWED, "POST");
}

#[tokio::test]
async fn another_accounts_key_or_a_missing_one_is_the_missing_keys_404() {
    let admin = Harness::start().await;
    let id = text(&admin.create("acme", None).await, "id").to_owned();
    let missing = admin
        .get(&format!("/admin/accounts/acme/keys/{NO_KEY}"))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    for path in [
        format!("/admin/accounts/globex/keys/{id}/usage"),
        format!("/admin/accounts/acme/keys/{NO_KEY}/usage"),
        "/admin/accounts/acme/keys/not-a-key-id/usage".to_owned(),
        format!("/admin/accounts/globex/keys/{id}/usage?granularity=day"),
    ] {
        let reply = admin.get(&path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.body, missing.body, "{path}");
        assert_eq!(reply.header("content-type"), missing.header("content-type"));
        assert_eq!(
            reply.header("content-length"),
            missing.header("content-length")
        );
        assert_eq!(reply.header("cache-control"), Some("no-store"));
    }
    // An account with no keys has zeros, not a 404: accounts aren't records.
    let nobody = admin.usage("/admin/accounts/nobody/usage").await;
    assert_eq!((buckets(&nobody).len(), totals(&nobody)), (48, (0, 0, 0)));
    assert!(nobody.get("key_id").is_none(), "{nobody}");
}

#[tokio::test]
async fn the_accounts_usage_adds_up_its_keys_deleted_ones_included() {
    let admin = Harness::start().await;
    let first = admin.create("acme", None).await;
    let second = admin.create("acme", None).await;
    let other = admin.create("globex", None).await;
    admin
        .ping_expecting(text(&first, "key"), StatusCode::OK)
        .await;
    for _ in 0..2 {
        admin
            .ping_expecting(text(&second, "key"), StatusCode::OK)
            .await;
    }
    admin
        .ping_expecting(text(&other, "key"), StatusCode::OK)
        .await;
    let account = "/admin/accounts/acme/usage";
    admin.usage_reaching(account, (3, 0, 0)).await;
    admin
        .usage_reaching("/admin/accounts/globex/usage", (1, 0, 0))
        .await;

    let second_id = text(&second, "id");
    let deleted = admin
        .on_key(Method::DELETE, "acme", second_id, "", None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let usage = admin.usage(account).await;
    assert_eq!(totals(&usage), (3, 0, 0), "{usage}");
    assert_eq!(usage["granularity"], "hour");
    assert!(usage.get("key_id").is_none());
    let days = admin.usage(&format!("{account}?granularity=day")).await;
    assert_eq!((buckets(&days).len(), totals(&days)), (30, (3, 0, 0)));
    // The deleted key's own usage is gone with it.
    let gone = admin
        .get(&format!("/admin/accounts/acme/keys/{second_id}/usage"))
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_record_carries_its_accepted_requests_of_the_last_24_hours() {
    let admin = Harness::start().await;
    let created = admin
        .create(
            "acme",
            Some(r#"{"rate_limit": {"requests": 3, "per_seconds": 86400}}"#),
        )
        .await;
    assert_eq!(created["requests_24h"], 0);
    let (id, key) = (text(&created, "id"), text(&created, "key"));
    let idle = admin.create("acme", None).await;
    for _ in 0..3 {
        admin.ping_expecting(key, StatusCode::OK).await;
    }
    // Rate limited: not an accepted request.
    admin
        .ping_expecting(key, StatusCode::TOO_MANY_REQUESTS)
        .await;
    wait::until("the list to show 3 requests", || async {
        admin.list("acme").await[0]["requests_24h"] == 3
    })
    .await;
    assert_eq!(admin.list("acme").await[1]["requests_24h"], 0);
    assert_eq!(idle["requests_24h"], 0);

    let got = admin.on_key(Method::GET, "acme", id, "", None).await;
    assert_eq!(got.json()["requests_24h"], 3, "{}", got.text());
    let patched = admin.patch("acme", id, r#"{"name": "CI"}"#).await;
    assert_eq!(patched["requests_24h"], 3);
    let unchanged = admin.patch("acme", id, "{}").await;
    assert_eq!(unchanged["requests_24h"], 3);
    for action in ["/revoke", "/reactivate", "/rotate"] {
        let reply = admin.on_key(Method::POST, "acme", id, action, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{action}: {}", reply.text());
        assert_eq!(reply.json()["requests_24h"], 3, "{action}");
    }
    // The hour view agrees.
    let usage = admin
        .usage(&format!("/admin/accounts/acme/keys/{id}/usage"))
        .await;
    assert_eq!(totals(&usage), (3, 1, 0));
}

#[tokio::test]
async fn a_tenant_reads_its_own_accounts_usage_and_no_other() {
    const ACME: &str = "acme-tenant-token-0123456789";
    let tokens = AdminTokens::new()
        .operator(AdminToken::new(TOKEN).expect("token"))
        .tenant(
            "acme".parse().expect("account"),
            AdminToken::new(ACME).expect("token"),
        );
    let admin = Harness::with_authorizer(tokens).await;
    let ours = admin.create("acme", None).await;
    let theirs = admin.create("globex", None).await;
    admin
        .ping_expecting(text(&ours, "key"), StatusCode::OK)
        .await;
    admin
        .usage_reaching("/admin/accounts/acme/usage", (1, 0, 0))
        .await;

    let bearer = format!("Bearer {ACME}");
    let as_tenant = |path: String| {
        let bearer = bearer.clone();
        let admin = &admin;
        async move {
            admin
                .send(Method::GET, &path, &[("authorization", &bearer)], None)
                .await
        }
    };
    let own_key = as_tenant(format!(
        "/admin/accounts/acme/keys/{}/usage",
        text(&ours, "id")
    ))
    .await;
    assert_eq!(own_key.status, StatusCode::OK, "{}", own_key.text());
    assert_eq!(totals(&own_key.json()), (1, 0, 0));
    let own_account = as_tenant("/admin/accounts/acme/usage?granularity=day".to_owned()).await;
    assert_eq!(own_account.status, StatusCode::OK, "{}", own_account.text());
    assert_eq!(totals(&own_account.json()), (1, 0, 0));

    let missing = as_tenant(format!("/admin/accounts/acme/keys/{NO_KEY}")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    for path in [
        format!("/admin/accounts/globex/keys/{}/usage", text(&theirs, "id")),
        "/admin/accounts/globex/usage".to_owned(),
        // Even a bad query: the account is refused before the query is read.
        "/admin/accounts/globex/usage?granularity=week".to_owned(),
    ] {
        let reply = as_tenant(path.clone()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.body, missing.body, "{path}");
    }
    let anonymous = admin
        .send(Method::GET, "/admin/accounts/acme/usage", &[], None)
        .await;
    anonymous.assert_error(StatusCode::UNAUTHORIZED, "no token");
}

/// Refuses usage reads (`NotAllowed`) and lets everything else through, noting what it saw.
#[derive(Default, Clone)]
struct NoUsage {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait]
impl AdminAuthorizer for NoUsage {
    async fn authenticate(&self, _request: &Parts) -> Result<AdminCaller, AdminDenied> {
        Ok(AdminCaller::Operator)
    }

    async fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        if let AdminOperation::Usage(key) = attempt.operation {
            let key = key.map(|id| id.to_string());
            let seen = format!("{} {} {key:?}", attempt.operation.name(), attempt.account);
            self.seen.lock().expect("lock").push(seen);
            return Err(AdminDenied::NotAllowed);
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_authorizer_sees_usage_reads_as_their_own_operation() {
    let authorizer = NoUsage::default();
    let admin = Harness::with_authorizer(authorizer.clone()).await;
    let id = text(&admin.create("acme", None).await, "id").to_owned();
    let key_usage = admin
        .get(&format!("/admin/accounts/acme/keys/{id}/usage"))
        .await;
    key_usage.assert_error(StatusCode::FORBIDDEN, "key usage");
    let account_usage = admin.get("/admin/accounts/acme/usage").await;
    account_usage.assert_error(StatusCode::FORBIDDEN, "account usage");
    // Reading the key itself is another operation.
    let got = admin.get(&format!("/admin/accounts/acme/keys/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        *authorizer.seen.lock().expect("lock"),
        vec![
            format!("usage acme Some({id:?})"),
            "usage acme None".to_owned()
        ]
    );
}

/// A store whose usage counts can't be read (a missing table, say); keys work as usual.
pub(super) struct NoUsageTable(pub(super) tower_api_key::MemoryStore);

impl crate::support::hooks::StoreHooks for NoUsageTable {
    fn records(&self) -> &tower_api_key::MemoryStore {
        &self.0
    }

    async fn usage(
        &self,
        _account: &tower_api_key::AccountId,
        _key: Option<tower_api_key::KeyId>,
        _from: tower_api_key::usage::Hour,
        _to: tower_api_key::usage::Hour,
    ) -> Result<Vec<tower_api_key::usage::UsageRow>, tower_api_key::StoreError> {
        Err(tower_api_key::StoreError::unavailable("no usage table"))
    }
}

crate::support::hooks::hooked_key_store!(NoUsageTable);

#[tokio::test]
async fn keys_are_managed_without_their_counts_when_usage_cant_be_read() {
    let store = std::sync::Arc::new(NoUsageTable(tower_api_key::MemoryStore::new()));
    let admin = Harness::on_store(store, |manager| {
        tower_api_key::admin::AdminRouter::new(manager, AdminToken::new(TOKEN).expect("token"))
    })
    .await;
    let created = admin.create("acme", None).await;
    assert_eq!(created["requests_24h"], 0, "a new key has none");
    let (id, key) = (text(&created, "id"), text(&created, "key"));
    assert!(admin.list("acme").await[0]["requests_24h"].is_null());
    let got = admin.on_key(Method::GET, "acme", id, "", None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.json()["requests_24h"].is_null());
    // A revocation doesn't wait for the usage table.
    let revoked = admin
        .on_key(Method::POST, "acme", id, "/revoke", None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    assert_eq!(revoked.json()["status"], "inactive");
    assert!(revoked.json()["requests_24h"].is_null());
    admin.ping_expecting(key, StatusCode::UNAUTHORIZED).await;
    // The usage routes themselves say the store failed, and to retry.
    for path in [
        format!("/admin/accounts/acme/keys/{id}/usage"),
        "/admin/accounts/acme/usage".to_owned(),
    ] {
        let reply = admin.get(&path).await;
        reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, &path);
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert!(!reply.text().contains("no usage table"), "{}", reply.text());
    }
}

#[tokio::test]
async fn a_from_near_9999_answers_only_buckets_that_start_by_9999() {
    let admin = Harness::start().await;
    let id = text(&admin.create("acme", None).await, "id").to_owned();
    for path in [
        format!("/admin/accounts/acme/keys/{id}/usage"),
        "/admin/accounts/acme/usage".to_owned(),
    ] {
        for (query, expected, step) in [
            ("from=9999-12-31T00:00:00Z", 24, HOUR),
            ("from=9999-12-31T23:59:59Z", 1, HOUR),
            ("granularity=day&from=9999-12-31T12:00:00Z", 1, DAY),
            ("granularity=day&from=9999-12-20T00:00:00Z", 12, DAY),
        ] {
            let usage = admin.usage(&format!("{path}?{query}")).await;
            // Each bucket starts where it says, on its own boundary, none after 9999.
            assert_eq!(buckets(&usage).len(), expected, "{query}: {usage}");
            assert_consecutive(&usage, step);
            let last = text(buckets(&usage).last().expect("a bucket"), "start");
            assert!(last.starts_with("9999-12-31T"), "{query}: {last}");
        }
    }
}
