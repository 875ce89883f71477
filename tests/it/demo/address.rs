//! Allowed addresses at the demo server: every request, HTTP/1.1 or gRPC, carries the address
//! of the connection it came on, so a key allowed from loopback is served over loopback and a
//! key allowed only from elsewhere is refused (403 `address not allowed`, gRPC
//! `PERMISSION_DENIED`), never let in for want of an address.

use hyper::{Method, StatusCode};
use tonic::Code;

use super::{SERVING, assert_accepted, str_field};
use crate::support::demo::{DemoServer, Launch};

pub(super) const ADDRESS_NOT_ALLOWED: &str = r#"{"error":"address not allowed"}"#;

/// Creates a key for `acme` allowed from `allowed_ips` (a JSON array) and returns its
/// plaintext.
pub(super) async fn key_allowed_from(server: &DemoServer, allowed_ips: &str) -> String {
    let created = server
        .create_key_with("acme", &format!(r#"{{"allowed_ips": {allowed_ips}}}"#))
        .await;
    str_field(&created, "key").to_owned()
}

/// `GET /v1/ping` with the key and, if given, an `X-Forwarded-For` header.
pub(super) async fn ping(server: &DemoServer, key: &str, forwarded_for: Option<&str>) -> String {
    let mut headers = vec![("x-api-key", key)];
    headers.extend(forwarded_for.map(|value| ("x-forwarded-for", value)));
    let reply = server.request(Method::GET, "/v1/ping", &headers).await;
    format!("{} {}", reply.status.as_u16(), reply.text())
}

#[tokio::test]
async fn a_key_allowed_from_loopback_is_served_over_http_and_grpc() {
    let server = Launch::new().start().await;
    let key = key_allowed_from(&server, r#"["127.0.0.1"]"#).await;

    assert_accepted(&server, &key).await;
    let whoami = server.get_with_key("/v1/whoami", &key).await;
    assert_eq!(whoami.status, StatusCode::OK, "{}", whoami.text());
    // gRPC requests carry the connection's address too (without one the key is refused).
    assert_eq!(
        server.grpc_health(Some(&key)).await.expect("SERVING"),
        SERVING
    );
}

#[tokio::test]
async fn a_key_allowed_only_from_elsewhere_is_403_over_http_and_permission_denied_over_grpc() {
    let server = Launch::new().start().await;
    let key = key_allowed_from(&server, r#"["203.0.113.0/24"]"#).await;

    for path in ["/v1/ping", "/v1/whoami"] {
        let reply = server.get_with_key(path, &key).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(reply.text(), ADDRESS_NOT_ALLOWED, "{path}");
        assert!(
            reply.content_type().starts_with("application/json"),
            "{path}: {}",
            reply.content_type()
        );
    }
    let refused = server.grpc_health(Some(&key)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.code() as i32, 7);

    // Another key of the account, without an allowlist, is served from anywhere.
    let other = server.create_key("acme").await;
    assert_accepted(&server, str_field(&other, "key")).await;
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let server = Launch::new().start().await;
    let elsewhere = key_allowed_from(&server, r#"["203.0.113.0/24"]"#).await;
    let loopback = key_allowed_from(&server, r#"["127.0.0.1"]"#).await;

    // Any client can write the header: it neither lets a key in nor keeps one out.
    for forwarded in ["203.0.113.9", "198.51.100.7, 203.0.113.9"] {
        assert_eq!(
            ping(&server, &elsewhere, Some(forwarded)).await,
            format!("403 {ADDRESS_NOT_ALLOWED}"),
            "{forwarded}"
        );
        assert_eq!(
            ping(&server, &loopback, Some(forwarded)).await,
            "200 pong",
            "{forwarded}"
        );
    }
}
