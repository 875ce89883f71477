//! A tonic server on loopback with tonic-health behind `ApiKeyLayer`, and a client for it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_api_key::{AccountId, ApiKeyLayer, KeyId, KeyManager};

use super::demo::with_key;
use super::pepper;
use super::stores::TestStore;

/// A tonic server with tonic-health behind the layer, and the handles a test needs.
pub(crate) struct Harness {
    pub(crate) addr: SocketAddr,
    pub(crate) manager: KeyManager,
    pub(crate) store: Arc<TestStore>,
    pub(crate) account: AccountId,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        let store = Arc::new(TestStore::default());
        let manager = KeyManager::new(store.clone(), pepper());
        let layer = ApiKeyLayer::for_manager(&manager).build();

        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(
            Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );

        Self {
            addr,
            manager,
            store,
            account: "acme".parse().expect("valid account id"),
        }
    }

    pub(crate) async fn create_key(&self) -> (KeyId, String) {
        let created = self.manager.create(&self.account).await.expect("create");
        (created.info.id, created.key.expose_secret().to_owned())
    }

    pub(crate) async fn client(&self) -> HealthClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
    }

    /// One `Health/Check` call, with `key` as `x-api-key` metadata if given.
    pub(crate) async fn check(&self, key: Option<&str>) -> Result<WireStatus, Status> {
        let request = with_key(HealthCheckRequest::default(), key);
        let response = self.client().await.check(request).await?;
        Ok(response.into_inner().status())
    }
}
