//! A gRPC call over its key's rate limit is `RESOURCE_EXHAUSTED` (8) with the message, over a
//! loopback tonic server; the other keys go on.

use tonic::Code;
use tower_api_key::{KeyOptions, RateLimit};

use crate::support::grpc::Harness;

#[tokio::test]
async fn a_call_over_the_limit_is_resource_exhausted() {
    let server = Harness::start().await;
    let limited = KeyOptions::new().rate_limit(RateLimit::new(2, 3600).expect("limit"));
    let key = server
        .manager
        .create_with(&server.account, limited)
        .await
        .expect("create");
    let key = key.key.expose_secret();
    let (_, other) = server.create_key().await;

    for _ in 0..2 {
        server.check(Some(key)).await.expect("within the budget");
    }
    let status = server.check(Some(key)).await.expect_err("over the budget");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded");
    assert!(
        status.metadata().get("retry-after").is_some(),
        "the budget travels in the trailers-only answer's headers"
    );
    server.check(Some(&other)).await.expect("other keys go on");
}
