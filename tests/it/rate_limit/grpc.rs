//! A gRPC call over its key's rate limit is `RESOURCE_EXHAUSTED` (8) with the message, over a
//! loopback tonic server; the other keys go on.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_api_key::{ApiKeyLayer, KeyManager, KeyOptions, RateLimit};

use crate::support::stores::TestStore;
use crate::support::{account, pepper};

async fn start(manager: &KeyManager) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        Server::builder()
            .layer(ApiKeyLayer::for_manager(manager).build())
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

async fn check(client: &mut HealthClient<Channel>, key: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().expect("ascii"));
    client.check(request).await.map(drop)
}

#[tokio::test]
async fn a_call_over_the_limit_is_resource_exhausted() {
    let manager = KeyManager::new(TestStore::new(), pepper());
    let addr = start(&manager).await;
    let acme = account("acme");
    let limited = KeyOptions::new().rate_limit(RateLimit::new(2, 3600).expect("limit"));
    let key = manager.create_with(&acme, limited).await.expect("create");
    let other = manager.create(&acme).await.expect("create");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);

    for _ in 0..2 {
        check(&mut client, key.key.expose_secret())
            .await
            .expect("within the budget");
    }
    let status = check(&mut client, key.key.expose_secret())
        .await
        .expect_err("over the budget");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded");
    assert!(
        status.metadata().get("retry-after").is_some(),
        "the budget travels in the trailers-only answer's headers"
    );
    check(&mut client, other.key.expose_secret())
        .await
        .expect("other keys go on");
}
