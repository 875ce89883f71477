//! Quotas at the demo server: a key with a quota of N requests a UTC day is served N times,
//! over HTTP and gRPC together, then refused with 429 `quota exceeded` and a `Retry-After` to
//! the end of the day (gRPC `RESOURCE_EXHAUSTED`); on SQLite the count survives a graceful
//! restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::RETRY_AFTER;
use hyper::{Method, StatusCode};
use serde_json::Value;
use tonic::Code;

use super::{SERVING, assert_accepted, str_field};
use crate::support::clock::in_one_quota_period;
use crate::support::demo::{DemoServer, Launch};
use crate::support::wait::until;

pub(super) const QUOTA_EXCEEDED: &str = r#"{"error":"quota exceeded"}"#;
const DAY: Duration = Duration::from_secs(86_400);

/// Seconds left in the current UTC day, rounded up as `Retry-After` is, from the time in
/// whole milliseconds as the server reads it (so a request made after this reading gets at
/// most this many, even within the same millisecond).
fn seconds_left_in_utc_day() -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let day_ms = DAY.as_millis();
    let left_ms = day_ms - now_ms % day_ms;
    u64::try_from(left_ms.div_ceil(1000)).expect("at most a day")
}

/// Creates a key for `acme` with a quota of `requests` a day; returns (id, key).
pub(super) async fn key_with_daily_quota(server: &DemoServer, requests: u32) -> (String, String) {
    let created = server
        .create_key_with(
            "acme",
            &format!(r#"{{"quota": {{"requests": {requests}, "period": "day"}}}}"#),
        )
        .await;
    assert_eq!(
        created["quota"],
        serde_json::json!({"requests": requests, "period": "day"}),
        "{created}"
    );
    (
        str_field(&created, "id").to_owned(),
        str_field(&created, "key").to_owned(),
    )
}

/// The key's `quota_used`, as its admin record shows it (the store's count as of the last
/// usage flush).
pub(super) async fn quota_used(server: &DemoServer, id: &str) -> Value {
    let reply = server
        .admin(Method::GET, &format!("/admin/accounts/acme/keys/{id}"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["quota_used"].clone()
}

/// Asserts the key is refused for its quota over HTTP, with a `Retry-After` between the
/// seconds left in the UTC day before and after the request.
pub(super) async fn assert_quota_exceeded(server: &DemoServer, key: &str) {
    let before = seconds_left_in_utc_day();
    let reply = server.get_with_key("/v1/ping", key).await;
    let after = seconds_left_in_utc_day();
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text()
    );
    assert_eq!(reply.text(), QUOTA_EXCEEDED);
    let retry_after: u64 = reply
        .headers
        .get(RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!(
        (after..=before).contains(&retry_after),
        "Retry-After {retry_after} s is not the {after} to {before} s left in the UTC day"
    );
}

#[tokio::test]
async fn a_daily_quota_of_3_serves_3_requests_then_429_with_retry_after_to_the_end_of_the_day() {
    in_one_quota_period().await;
    let server = Launch::new().start().await;
    let (id, key) = key_with_daily_quota(&server, 3).await;
    let other = server.create_key("acme").await;
    assert_eq!(quota_used(&server, &id).await, 0);

    // HTTP and gRPC spend one quota.
    assert_accepted(&server, &key).await;
    assert_eq!(
        server.grpc_health(Some(&key)).await.expect("SERVING"),
        SERVING
    );
    let whoami = server.get_with_key("/v1/whoami", &key).await;
    assert_eq!(whoami.status, StatusCode::OK, "{}", whoami.text());

    assert_quota_exceeded(&server, &key).await;
    let whoami = server.get_with_key("/v1/whoami", &key).await;
    assert_eq!(whoami.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(whoami.text(), QUOTA_EXCEEDED);
    let refused = server.grpc_health(Some(&key)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.code() as i32, 8);

    // The account's other key has no quota of its own and goes on.
    assert_accepted(&server, str_field(&other, "key")).await;
    // Refusals don't count: the store's count is the three accepted requests.
    until("quota_used to show the 3 accepted requests", || async {
        quota_used(&server, &id).await == 3
    })
    .await;
    assert_quota_exceeded(&server, &key).await;
    assert_eq!(quota_used(&server, &id).await, 3);
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn with_a_sqlite_database_a_quotas_count_survives_a_graceful_restart() {
    in_one_quota_period().await;
    let url = crate::support::db::sqlite::fresh_url();
    // Flushes only at shutdown: what the new process knows, SIGTERM wrote.
    let launch = || {
        Launch::new()
            .arg("--database-url")
            .arg(&url)
            .arg("--last-used-flush-ms")
            .arg("3600000")
    };
    let server = launch().start().await;
    let (id, key) = key_with_daily_quota(&server, 3).await;
    assert_accepted(&server, &key).await;
    assert_accepted(&server, &key).await;
    assert_eq!(
        quota_used(&server, &id).await,
        0,
        "not flushed before SIGTERM"
    );
    server.send_sigterm();
    let (status, log) = server.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{log}");

    let server = launch().start().await;
    assert_eq!(quota_used(&server, &id).await, 2);
    assert_accepted(&server, &key).await;
    assert_quota_exceeded(&server, &key).await;
}
