//! A panic in an admin handler, an authorizer or an event hook is a 500
//! `{"error":"internal error"}` on a connection that stays usable. (That it is logged with its
//! route and never the body is `tests/serial/logs.rs`: reading the log takes a subscriber,
//! and tracing's callsite interest is process-wide.)

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;
use tower_api_key::admin::{AdminRouter, AdminToken};
use tower_api_key::{KeyManager, MemoryStore};

use super::{Harness, TOKEN};
use crate::support::panicking::PanicsOnBoom;
use crate::support::pepper;

/// Sends `requests` one after another on one HTTP/1.1 connection and returns each answer's
/// status line and body.
async fn on_one_connection(addr: std::net::SocketAddr, requests: &[&str]) -> Vec<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut answers = Vec::new();
    for request in requests {
        stream.write_all(request.as_bytes()).await.expect("write");
        // Read one answer: the head, then content-length bytes.
        let mut buffer = Vec::new();
        let (head_end, length) = loop {
            let mut chunk = [0_u8; 4096];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut chunk))
                    .await
                    .expect("an answer within 30 s")
                    .expect("read");
            assert!(
                read > 0,
                "the connection was closed; answers so far: {answers:?}"
            );
            buffer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&buffer).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().expect("length"))
                    })
                    .expect("content-length");
                if buffer.len() >= end + 4 + length {
                    break (end, length);
                }
            }
        };
        let text = String::from_utf8_lossy(&buffer).into_owned();
        let status = text.lines().next().expect("status line").to_owned();
        answers.push((status, text[head_end + 4..head_end + 4 + length].to_owned()));
    }
    answers
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n")
}

#[tokio::test]
async fn an_authorizer_that_panics_is_500_and_the_connection_serves_the_next_request() {
    let admin = Harness::with_authorizer(PanicsOnBoom).await;
    let answers = on_one_connection(
        admin.addr(),
        &[
            &get("/admin/accounts/boom/keys"),
            &get("/admin/accounts/acme/keys"),
            &get("/admin/accounts/boom/keys"),
        ],
    )
    .await;
    assert!(answers[0].0.contains(" 500 "), "{answers:?}");
    assert_eq!(answers[0].1, r#"{"error":"internal error"}"#);
    assert!(answers[1].0.contains(" 200 "), "{answers:?}");
    assert!(answers[2].0.contains(" 500 "), "{answers:?}");
}

#[tokio::test]
async fn a_hook_that_panics_is_500_json_with_no_store() {
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), pepper());
    let app = AdminRouter::new(manager.clone(), AdminToken::new(TOKEN).expect("token"))
        .on_event(|_| panic!("the audit trail fell over"))
        .into_router::<()>();
    let request = Request::post("/admin/accounts/acme/keys")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], br#"{"error":"internal error"}"#);
    // The change itself was made before the hook ran.
    let listed = manager
        .list(&crate::support::account("acme"))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
}
