//! Policy answers to gRPC calls: an expired key is UNAUTHENTICATED (16) with its message, a
//! key without the service's scope is PERMISSION_DENIED (7), over a loopback tonic server.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_api_key::{ApiKeyLayer, KeyIdentity, KeyManager, KeyOptions, RequireScopeLayer, Scopes};

use crate::support::demo::with_key;
use crate::support::stores::TestStore;
use crate::support::{account, pepper};

/// tonic-health behind the layer and a `health:read` scope requirement.
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
            .layer(RequireScopeLayer::<KeyIdentity>::new("health:read"))
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

async fn check(addr: SocketAddr, key: &str) -> Result<WireStatus, Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect");
    let request = with_key(HealthCheckRequest::default(), Some(key));
    let response = HealthClient::new(channel).check(request).await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn scopes_and_expiry_answer_with_grpc_statuses() {
    let manager = KeyManager::new(TestStore::new(), pepper());
    let addr = start(&manager).await;
    let acme = account("acme");
    let scoped = |list: &[&str]| KeyOptions::new().scopes(Scopes::new(list).expect("scopes"));

    let unrestricted = manager.create(&acme).await.expect("create");
    let reader = manager
        .create_with(&acme, scoped(&["health:read"]))
        .await
        .expect("create");
    let other = manager
        .create_with(&acme, scoped(&["write"]))
        .await
        .expect("create");

    for allowed in [&unrestricted, &reader] {
        let status = check(addr, allowed.key.expose_secret())
            .await
            .expect("served");
        assert_eq!(status, WireStatus::Serving);
    }
    let denied = check(addr, other.key.expose_secret())
        .await
        .expect_err("refused");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "insufficient scope");

    let past = SystemTime::now() - Duration::from_secs(1);
    manager
        .update(
            &acme,
            reader.info.id,
            tower_api_key::PolicyUpdate::new().expires_at(Some(past)),
        )
        .await
        .expect("update");
    let expired = check(addr, reader.key.expose_secret())
        .await
        .expect_err("refused");
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert_eq!(expired.message(), "expired API key");
}

/// tonic's `Server` hands the connection's address to the layer (`TcpConnectInfo`, feature
/// `tonic`): a key used from outside its allowlist is PERMISSION_DENIED (7), a key over its
/// quota RESOURCE_EXHAUSTED (8).
#[cfg(feature = "tonic")]
#[tokio::test]
async fn addresses_and_quotas_answer_with_grpc_statuses() {
    crate::support::clock::in_one_quota_period().await;
    use tower_api_key::policy::{AllowedIps, Quota, QuotaPeriod};

    let manager = KeyManager::new(TestStore::new(), pepper());
    let addr = start(&manager).await;
    let acme = account("acme");
    let health = || Scopes::new(["health:read"]).expect("scopes");
    let from = |blocks: &[&str]| {
        KeyOptions::new()
            .scopes(health())
            .allowed_ips(AllowedIps::new(blocks).expect("blocks"))
    };

    let loopback = manager
        .create_with(&acme, from(&["127.0.0.1"]))
        .await
        .expect("create");
    let elsewhere = manager
        .create_with(&acme, from(&["203.0.113.0/24", "2001:db8::/32"]))
        .await
        .expect("create");
    let status = check(addr, loopback.key.expose_secret())
        .await
        .expect("served");
    assert_eq!(status, WireStatus::Serving);
    let refused = check(addr, elsewhere.key.expose_secret())
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "address not allowed");

    let quota = Quota::new(2, QuotaPeriod::Month).expect("quota");
    let capped = manager
        .create_with(&acme, KeyOptions::new().scopes(health()).quota(quota))
        .await
        .expect("create");
    for _ in 0..2 {
        check(addr, capped.key.expose_secret())
            .await
            .expect("served");
    }
    let exhausted = check(addr, capped.key.expose_secret())
        .await
        .expect_err("refused");
    assert_eq!(exhausted.code(), Code::ResourceExhausted);
    assert_eq!(exhausted.message(), "quota exceeded");
}
