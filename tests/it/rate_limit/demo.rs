//! The demo server's rate-limit contract, over loopback HTTP against the real binary: a key
//! limited to 5 per 2 s that sends 12 requests at once gets exactly 5 answers and 7 refusals;
//! the other keys of its account go on; once its budget refills it works again. And two
//! servers on one PostgreSQL given `--redis-url` share each key's budget.

use std::time::Instant;

use futures_util::future::join_all;
use hyper::StatusCode;
use serde_json::Value;

use super::assert_five_of_twelve;
use crate::support::demo::{DemoServer, Launch};
use crate::support::wait::until;

/// Creates a key for `acme` with `body` (JSON) and returns its plaintext.
async fn create(server: &DemoServer, body: &str) -> String {
    match &server.create_key_with("acme", body).await["key"] {
        Value::String(key) => key.clone(),
        other => panic!("no key in the answer: {other}"),
    }
}

#[tokio::test]
async fn a_key_limited_to_5_per_2_seconds_gets_5_of_12_requests_at_once() {
    let server = Launch::new().start().await;
    let limited = create(
        &server,
        r#"{"rate_limit": {"requests": 5, "per_seconds": 2}}"#,
    )
    .await;
    let other = create(&server, "{}").await;

    let started = Instant::now();
    let replies = join_all((0..12).map(|_| server.get_with_key("/v1/ping", &limited))).await;
    let took = started.elapsed();
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let refused: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + refused.len(), 12, "only 200s and 429s");
    assert_five_of_twelve(ok, took);
    for reply in refused {
        assert_eq!(reply.text(), r#"{"error":"rate limit exceeded"}"#);
        assert_eq!(reply.content_type(), "application/json");
        assert!(
            reply.headers.contains_key("retry-after"),
            "{:?}",
            reply.headers
        );
        assert_eq!(reply.headers["ratelimit-policy"], r#""api-key";q=5;w=2"#);
    }

    // The account's other key is not affected.
    for _ in 0..12 {
        let reply = server.get_with_key("/v1/ping", &other).await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    // The server's clock can't be moved: the limited key is let in again once its budget
    // refills (one request every 0.4 s), however long that takes here.
    until("the limited key to be let in again", || async {
        let reply = server.get_with_key("/v1/ping", &limited).await;
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.text(), "pong");
                true
            }
            StatusCode::TOO_MANY_REQUESTS => false,
            other => panic!("{other}: {}", reply.text()),
        }
    })
    .await;
}

/// Two demo servers on one PostgreSQL schema, both given `--redis-url`, count one budget per
/// key: 10 requests an hour let through, whichever server answers.
#[cfg(all(feature = "postgres", feature = "redis"))]
#[tokio::test]
async fn two_servers_given_one_redis_share_each_keys_budget() {
    use crate::support::db::postgres::Schema;

    let Some(schema) = Schema::create().await else {
        return; // no PostgreSQL: `Schema::create` said why
    };
    if tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .is_err()
    {
        super::redis::skip("no Redis answers on 127.0.0.1:6379");
        return;
    }
    let start = || {
        Launch::new()
            .arg("--database-url")
            .arg(&schema.url_with_search_path())
            .arg("--redis-url")
            .arg("redis://127.0.0.1:6379")
            // A slow answer on a loaded machine must not pass a request uncounted.
            .arg("--redis-timeout-ms")
            .arg("10000")
            .env("RUST_LOG", "info,sqlx=warn")
            .start()
    };
    let a = start().await;
    let b = start().await;
    let key = create(
        &a,
        r#"{"rate_limit": {"requests": 10, "per_seconds": 3600}}"#,
    )
    .await;

    let mut allowed = Vec::new();
    for server in [&a, &b] {
        let mut count = 0;
        for _ in 0..8 {
            let reply = server.get_with_key("/v1/ping", &key).await;
            match reply.status {
                StatusCode::OK => count += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert!(reply.headers.contains_key("retry-after"));
                }
                other => panic!("{other}: {}", reply.text()),
            }
        }
        allowed.push(count);
    }
    assert_eq!(allowed, [8, 2], "one budget of 10 for both servers");
    assert!(
        a.log().contains("shared through Redis") && b.log().contains("shared through Redis"),
        "both servers say where budgets are kept"
    );
}
