//! Two demo server processes (`examples/server/`) on one PostgreSQL database, with the same
//! pepper, behave as one service: a key made through one works at the other; a key revoked,
//! rotated away or deleted through one is refused by the other within milliseconds (each
//! server's change feed hears the other's changes), reactivation likewise; the 3-key limit
//! holds when creates alternate between them; and killing one server's listening connection
//! while requests flow never lets a key revoked meanwhile in.
//!
//! Run with `--nocapture` to see the measured lags. Without `DATABASE_URL`, each test says it
//! was skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::report_lags;
use crate::support::db::postgres::Schema;
use crate::support::demo::{DemoServer, Launch};
use crate::support::exclusive::exclusive;
use hyper::{Method, StatusCode};
use serde_json::Value;

/// Two servers on one fresh schema, each with its connections named after it.
async fn two_servers(test: &str) -> Option<(Schema, DemoServer, DemoServer)> {
    let schema = Schema::create().await?;
    let start = |name: &str| {
        let url = format!(
            "{}&application_name={}_{test}_{name}",
            schema.url_with_search_path(),
            schema.name
        );
        Launch::new()
            .arg("--database-url")
            .arg(&url)
            .env("RUST_LOG", "info,sqlx=warn")
            .start()
    };
    let a = start("a").await;
    let b = start("b").await;
    Some((schema, a, b))
}

fn field<'a>(object: &'a Value, name: &str) -> &'a str {
    object[name]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` is not a string in {object}"))
}

async fn status(server: &DemoServer, key: &str) -> StatusCode {
    server.get_with_key("/v1/ping", key).await.status
}

async fn resolver_calls(server: &DemoServer) -> u64 {
    let metrics = server.get("/metrics").await;
    metrics
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("api_key_resolver_calls_total "))
        .expect("a resolver-calls counter")
        .trim()
        .parse()
        .expect("a number")
}

/// Asserts that `server` answers `key` with `expected`, and soon from its cache.
async fn assert_cached(server: &DemoServer, key: &str, expected: StatusCode) {
    for _ in 0..100 {
        assert_eq!(status(server, key).await, expected);
        let before = resolver_calls(server).await;
        assert_eq!(status(server, key).await, expected);
        if resolver_calls(server).await == before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{expected} is never served from the cache");
}

/// Polls `server` with `key` back to back until it answers `expected`; how long it took.
async fn time_until(server: &DemoServer, key: &str, expected: StatusCode) -> Duration {
    let since = Instant::now();
    loop {
        if status(server, key).await == expected {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still not {expected} after 5 s at the other server"
        );
    }
}

const TRIES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_server_is_in_force_at_the_other_within_milliseconds() {
    let _exclusive = exclusive().await;
    let Some((_schema, a, b)) = two_servers("lag").await else {
        return;
    };
    let (mut revoke, mut rotate, mut delete, mut reactivate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRIES {
        let created = a.create_key("acme").await;
        let (id, key) = (field(&created, "id"), field(&created, "key"));
        // Made through A, known to B.
        let whoami = b.get_with_key("/v1/whoami", key).await.json();
        assert_eq!(whoami["key_id"], created["id"]);

        assert_cached(&b, key, StatusCode::OK).await;
        assert_eq!(
            a.key_action("acme", id, "revoke").await.status,
            StatusCode::OK
        );
        revoke.push(time_until(&b, key, StatusCode::UNAUTHORIZED).await);

        assert_cached(&b, key, StatusCode::UNAUTHORIZED).await;
        let reply = a.key_action("acme", id, "reactivate").await;
        assert_eq!(reply.status, StatusCode::OK);
        reactivate.push(time_until(&b, key, StatusCode::OK).await);

        assert_cached(&b, key, StatusCode::OK).await;
        let rotated = a.key_action("acme", id, "rotate").await;
        assert_eq!(rotated.status, StatusCode::OK);
        rotate.push(time_until(&b, key, StatusCode::UNAUTHORIZED).await);
        let rotated = rotated.json();
        let new_key = field(&rotated, "key");
        assert_eq!(status(&b, new_key).await, StatusCode::OK);

        assert_cached(&b, new_key, StatusCode::OK).await;
        let path = format!("/admin/accounts/acme/keys/{id}");
        assert_eq!(
            a.admin(Method::DELETE, &path).await.status,
            StatusCode::NO_CONTENT
        );
        delete.push(time_until(&b, new_key, StatusCode::UNAUTHORIZED).await);
    }
    let worst = [
        report_lags("two demo servers, revoke at A → 401 at B", revoke),
        report_lags("two demo servers, rotate at A → old key 401 at B", rotate),
        report_lags("two demo servers, delete at A → 401 at B", delete),
        report_lags("two demo servers, reactivate at A → 200 at B", reactivate),
    ];
    for max in worst {
        assert!(
            max < Duration::from_secs(1),
            "a change took {max:?} to reach B"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_key_limit_holds_when_creates_alternate_between_servers() {
    let Some((_schema, a, b)) = two_servers("limit").await else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    for account in ["acme", "globex"] {
        let creates: Vec<_> = (0..10)
            .map(|i| {
                let server = Arc::clone(if i % 2 == 0 { &a } else { &b });
                let path = format!("/admin/accounts/{account}/keys");
                tokio::spawn(async move { server.admin(Method::POST, &path).await.status })
            })
            .collect();
        let mut created = 0;
        for create in creates {
            match create.await.expect("task") {
                StatusCode::CREATED => created += 1,
                StatusCode::CONFLICT => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(created, 3, "{account}");
        assert_eq!(a.list_keys(account).await.len(), 3);
        assert_eq!(b.list_keys(account).await.len(), 3);
    }
    // Deleting through one frees a slot for the other.
    let first = a.list_keys("acme").await.remove(0);
    let path = format!("/admin/accounts/acme/keys/{}", field(&first, "id"));
    assert_eq!(
        b.admin(Method::DELETE, &path).await.status,
        StatusCode::NO_CONTENT
    );
    a.create_key("acme").await;
    assert_eq!(
        b.admin(Method::POST, "/admin/accounts/acme/keys")
            .await
            .status,
        StatusCode::CONFLICT
    );
}

/// One request's outcome: when it was sent, and what came back.
struct Sample {
    sent: Instant,
    status: StatusCode,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_servers_listener_while_requests_flow_never_lets_a_revoked_key_in() {
    let _exclusive = exclusive().await;
    let Some((schema, a, b)) = two_servers("kill").await else {
        return;
    };
    let b = Arc::new(b);
    let feed_name = format!("{}_kill_b change feed", schema.name);
    let admin = schema.pool();
    for round in 0..5u64 {
        let created = a.create_key("acme").await;
        let (id, key) = (
            field(&created, "id").to_owned(),
            field(&created, "key").to_owned(),
        );
        assert_cached(&b, &key, StatusCode::OK).await;

        // Requests flow to B throughout.
        let running = Arc::new(AtomicBool::new(true));
        let flow = tokio::spawn({
            let (b, key, running) = (Arc::clone(&b), key.clone(), Arc::clone(&running));
            async move {
                let mut samples = Vec::new();
                while running.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let status = status(&b, &key).await;
                    samples.push(Sample { sent, status });
                }
                samples
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1) AS terminated",
        )
        .bind(&feed_name)
        .fetch_one(&admin)
        .await
        .expect("terminate B's listener");
        assert_eq!(killed, 1, "B's listening connection");
        tokio::time::sleep(Duration::from_millis(round * 2)).await;
        let reply = a.key_action("acme", &id, "revoke").await;
        assert_eq!(reply.status, StatusCode::OK);
        let revoked = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        running.store(false, Ordering::SeqCst);
        let samples = flow.await.expect("requests");

        // Every request that started once B first refused the key was refused too, and B
        // refused it within a moment of the revoke (its cache keeps entries for 30 s).
        let first_refusal = samples
            .iter()
            .find(|s| s.sent >= revoked && s.status == StatusCode::UNAUTHORIZED)
            .map(|s| s.sent)
            .expect("B refused the revoked key");
        assert!(
            first_refusal - revoked < Duration::from_secs(1),
            "B refused only after {:?}",
            first_refusal - revoked
        );
        for sample in samples.iter().filter(|s| s.sent >= first_refusal) {
            assert_eq!(sample.status, StatusCode::UNAUTHORIZED, "round {round}");
        }
        // Never a fault: B resolves from the database while its listener reconnects.
        assert!(
            samples
                .iter()
                .all(|s| s.status != StatusCode::SERVICE_UNAVAILABLE),
            "round {round}"
        );
        a.admin(Method::DELETE, &format!("/admin/accounts/acme/keys/{id}"))
            .await;
    }
    let log = b.log_containing("change feed: subscribed").await;
    assert!(log.contains("change feed: lost"), "{log}");
}
