//! Open streams at the demo server end when their key stops letting them through:
//! `GET /v1/events` (server-sent events, `data: tick N` every second) ends its body, and
//! gRPC `grpc.health.v1.Health/Watch` ends with `UNAUTHENTICATED`, whether the key is
//! revoked, rotated away, deleted or expires, here or through another server on the same
//! PostgreSQL. Waits are for the end itself, bounded by 30 s: nothing here times the lag.

use hyper::Method;
use serde_json::Value;
use tonic::Code;
use tonic::Streaming;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use std::time::Duration;

use super::{SERVING, str_field};
use crate::support::demo::{DemoServer, Launch, OpenStream, with_key};

/// The bound on every wait for a message or the end of a stream.
const TIMEOUT: Duration = Duration::from_secs(30);

async fn key_for(server: &DemoServer, account: &str, body: &str) -> (String, String) {
    let created: Value = server.create_key_with(account, body).await;
    (
        str_field(&created, "key").to_owned(),
        str_field(&created, "id").to_owned(),
    )
}

/// An event stream with `key`, its first tick read.
async fn events(server: &DemoServer, key: &str) -> OpenStream {
    let mut stream = server.open_stream("/v1/events", key).await;
    stream.read_until("data: tick 1\n").await;
    stream
}

/// Asserts `stream` ends (within the bound) and that it ends with the last tick whole.
async fn assert_ends(stream: &mut OpenStream, why: &str) {
    assert!(stream.ends().await, "the stream stayed open after {why}");
    assert!(stream.text.ends_with("\n\n"), "{:?}", stream.text);
}

/// `grpc.health.v1.Health/Watch` with `key`, its first status (serving) read.
async fn watch(server: &DemoServer, key: &str) -> Streaming<HealthCheckResponse> {
    let mut watch = server
        .health_client()
        .await
        .watch(with_key(HealthCheckRequest::default(), Some(key)))
        .await
        .expect("watch is let through with a valid key")
        .into_inner();
    let first = tokio::time::timeout(TIMEOUT, watch.message()).await;
    assert_eq!(first.unwrap().unwrap().unwrap().status, SERVING);
    watch
}

/// Asserts the watch ends (within the bound) with `UNAUTHENTICATED` / `invalid API key`.
async fn assert_ends_unauthenticated(watch: &mut Streaming<HealthCheckResponse>) {
    let end = tokio::time::timeout(TIMEOUT, watch.message())
        .await
        .expect("the watch ended within 30 s");
    let status = end.expect_err("the watch ends with a status, not a message");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "invalid API key");
}

/// Reads one more tick than has been read: the stream is still open.
async fn assert_goes_on(stream: &mut OpenStream) {
    let ticks = stream.text.matches("data: tick").count();
    stream
        .read_until(&format!("data: tick {}\n", ticks + 1))
        .await;
}

#[tokio::test]
async fn an_event_stream_ends_when_its_key_is_revoked_and_another_keys_goes_on() {
    let server = Launch::new().start().await;
    let (key, id) = key_for(&server, "acme", "{}").await;
    let (other, _) = key_for(&server, "acme", "{}").await;
    let mut revoked = events(&server, &key).await;
    let mut kept = events(&server, &other).await;

    let reply = server.key_action("acme", &id, "revoke").await;
    assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
    assert_ends(&mut revoked, "the revoke").await;
    // The other key's stream is untouched, and the revoked key is refused as usual.
    assert_goes_on(&mut kept).await;
    let reply = server.get_with_key("/v1/events", &key).await;
    assert_eq!(reply.status, hyper::StatusCode::UNAUTHORIZED);

    let metrics = server.get("/metrics").await.text().to_owned();
    assert!(
        metrics.contains("api_key_streams_ended_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_event_stream_ends_when_its_key_is_rotated_deleted_or_expires() {
    let server = Launch::new().start().await;

    let (key, id) = key_for(&server, "acme", "{}").await;
    let mut stream = events(&server, &key).await;
    let reply = server.key_action("acme", &id, "rotate").await;
    assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
    assert_ends(&mut stream, "the rotation").await;

    let (key, id) = key_for(&server, "acme", "{}").await;
    let mut stream = events(&server, &key).await;
    let reply = server
        .admin(Method::DELETE, &format!("/admin/accounts/acme/keys/{id}"))
        .await;
    assert_eq!(
        reply.status,
        hyper::StatusCode::NO_CONTENT,
        "{}",
        reply.text()
    );
    assert_ends(&mut stream, "the deletion").await;

    // Nothing changes in the store: the key's expiry alone ends the stream.
    let (key, _) = key_for(&server, "bolt", r#"{"expires_in_seconds": 2}"#).await;
    let mut stream = events(&server, &key).await;
    assert_ends(&mut stream, "the expiry").await;
    let reply = server.get_with_key("/v1/ping", &key).await;
    assert_eq!(reply.status, hyper::StatusCode::UNAUTHORIZED);
    assert_eq!(reply.text(), r#"{"error":"expired API key"}"#);
}

#[tokio::test]
async fn the_old_keys_stream_goes_on_through_a_grace_period_and_ends_with_it() {
    let server = Launch::new().start().await;
    let rotate = |id: String, grace: u32| {
        let server = &server;
        async move {
            let reply = server
                .admin_json(
                    Method::POST,
                    &format!("/admin/accounts/acme/keys/{id}/rotate"),
                    &format!(r#"{{"grace_seconds": {grace}}}"#),
                )
                .await;
            assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
        }
    };

    // Within the grace period the old key works, and so does its stream; revoking the key
    // ends the old key's grace at once, and the stream with it.
    let (key, id) = key_for(&server, "acme", "{}").await;
    let mut stream = events(&server, &key).await;
    rotate(id.clone(), 3600).await;
    assert_goes_on(&mut stream).await;
    let reply = server.key_action("acme", &id, "revoke").await;
    assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
    assert_ends(&mut stream, "the revoke during the grace period").await;

    // When the grace period runs out, nothing changes in the store: the stream's timer
    // alone ends it.
    let (key, id) = key_for(&server, "acme", "{}").await;
    let mut stream = events(&server, &key).await;
    rotate(id, 2).await;
    assert_ends(&mut stream, "the end of the grace period").await;
}

#[tokio::test]
async fn policy_changes_end_a_stream_only_when_they_would_refuse_it() {
    let server = Launch::new().start().await;
    let (key, id) = key_for(&server, "acme", r#"{"allowed_ips": ["127.0.0.1"]}"#).await;
    let mut stream = events(&server, &key).await;
    let patch = |body: &'static str| {
        let path = format!("/admin/accounts/acme/keys/{id}");
        let server = &server;
        async move {
            let reply = server.admin_json(Method::PATCH, &path, body).await;
            assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
        }
    };

    // A new name, scopes the route doesn't need, an allowlist that still holds the client:
    // the stream goes on.
    patch(r#"{"name": "renamed"}"#).await;
    assert_goes_on(&mut stream).await;
    patch(r#"{"scopes": ["read"]}"#).await;
    assert_goes_on(&mut stream).await;
    patch(r#"{"allowed_ips": ["127.0.0.0/8", "10.0.0.0/8"]}"#).await;
    assert_goes_on(&mut stream).await;

    // An allowlist without the client: refused now, so the stream ends.
    patch(r#"{"allowed_ips": ["10.0.0.0/8"]}"#).await;
    assert_ends(&mut stream, "the allowlist left the client out").await;
}

#[tokio::test]
async fn health_watch_ends_unauthenticated_when_its_key_is_revoked() {
    let server = Launch::new().start().await;
    let (key, id) = key_for(&server, "acme", "{}").await;
    let mut watch = watch(&server, &key).await;

    let reply = server.key_action("acme", &id, "revoke").await;
    assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
    // Idle (the server's status doesn't change): only the revoke can end it.
    assert_ends_unauthenticated(&mut watch).await;
}

/// Two servers on one PostgreSQL schema: a stream on one ends when the key is revoked
/// through the other, the change reaching it through its change feed.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_revoke_through_one_server_ends_streams_on_another() {
    use crate::support::demo::two_servers;

    let Some((_schema, a, b)) = two_servers("streams", &[]).await else {
        return;
    };
    let (key, id) = key_for(&a, "acme", "{}").await;
    let (grpc_key, grpc_id) = key_for(&a, "acme", "{}").await;

    let mut stream = events(&b, &key).await;
    let mut watch = watch(&b, &grpc_key).await;

    let reply = a.key_action("acme", &id, "revoke").await;
    assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
    assert_ends(&mut stream, "the revoke through the other server").await;

    let reply = a.key_action("acme", &grpc_id, "revoke").await;
    assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.text());
    assert_ends_unauthenticated(&mut watch).await;
}
