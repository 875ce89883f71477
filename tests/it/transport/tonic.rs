//! The layer in front of a real tonic server (the gRPC answers of ARCHITECTURE.md, *The layer's
//! answers*: `grpc-status` 16 or 14 in an HTTP 200): tonic-health behind `ApiKeyLayer` on
//! loopback, called by tonic's generated client with `x-api-key` metadata.

use crate::support::grpc::Harness;
use crate::support::keys::unknown;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;

fn code(outcome: Result<WireStatus, Status>) -> Code {
    match outcome {
        Ok(status) => panic!("expected an error status, got {status:?}"),
        Err(status) => status.code(),
    }
}

// ===== through tonic's client =====

#[tokio::test]
async fn missing_key_is_unauthenticated_with_its_message() {
    let server = Harness::start().await;

    let status = server.check(None).await.expect_err("refused");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "missing API key");
}

#[tokio::test]
async fn malformed_key_is_unauthenticated() {
    let server = Harness::start().await;

    let status = server
        .check(Some("not-an-api-key"))
        .await
        .expect_err("refused");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "invalid API key");
}

#[tokio::test]
async fn well_formed_unknown_key_is_unauthenticated() {
    let server = Harness::start().await;
    let stranger = unknown();

    let outcome = server.check(Some(&stranger)).await;

    assert_eq!(code(outcome), Code::Unauthenticated);
}

#[tokio::test]
async fn valid_key_reaches_the_health_service() {
    let server = Harness::start().await;
    let (_, key) = server.create_key().await;

    let status = server.check(Some(&key)).await.expect("served");

    assert_eq!(status, WireStatus::Serving);
}

#[tokio::test]
async fn revoked_key_is_unauthenticated_immediately_and_reactivated_key_serves_again() {
    let server = Harness::start().await;
    let (id, key) = server.create_key().await;
    // Accepted once, so the layer's cache holds the key when it is revoked.
    assert_eq!(
        server.check(Some(&key)).await.expect("served"),
        WireStatus::Serving
    );

    server
        .manager
        .revoke(&server.account, id)
        .await
        .expect("revoke");
    assert_eq!(code(server.check(Some(&key)).await), Code::Unauthenticated);

    server
        .manager
        .reactivate(&server.account, id)
        .await
        .expect("reactivate");
    assert_eq!(
        server.check(Some(&key)).await.expect("served"),
        WireStatus::Serving
    );
}

#[tokio::test]
async fn rotated_key_is_unauthenticated_and_its_replacement_serves() {
    let server = Harness::start().await;
    let (id, old) = server.create_key().await;
    assert_eq!(
        server.check(Some(&old)).await.expect("served"),
        WireStatus::Serving
    );

    let rotated = server
        .manager
        .rotate(&server.account, id)
        .await
        .expect("rotate");
    let new = rotated.key.expose_secret();

    assert_eq!(code(server.check(Some(&old)).await), Code::Unauthenticated);
    assert_eq!(
        server.check(Some(new)).await.expect("served"),
        WireStatus::Serving
    );
}

#[tokio::test]
async fn store_failure_is_unavailable_and_is_not_cached() {
    let server = Harness::start().await;
    let (_, key) = server.create_key().await;

    server.store.set_down(true);
    let status = server.check(Some(&key)).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable);

    server.store.set_down(false);
    assert_eq!(
        server.check(Some(&key)).await.expect("served"),
        WireStatus::Serving
    );
}

// ===== the raw HTTP/2 answer =====

#[tokio::test]
async fn grpc_request_without_key_gets_a_trailers_only_answer() {
    let server = Harness::start().await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);

    let request = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Empty::<Bytes>::new())
    .expect("request");
    let response = sender.send_request(request).await.expect("response");

    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "16");
    assert_eq!(response.headers()["grpc-message"], "missing API key");
    assert_eq!(response.headers()["content-type"], "application/grpc");
}
