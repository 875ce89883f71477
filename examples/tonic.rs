//! A tonic gRPC server (the standard `grpc.health.v1.Health` service) behind `ApiKeyLayer`,
//! and a tonic client that sends its key as `x-api-key` metadata.
//!
//! ```text
//! cargo run --example tonic
//! ```
//!
//! It creates a key at startup, calls itself once without and once with the key, prints
//! both outcomes and keeps serving on `127.0.0.1:50051` (or `ADDR`). Refused calls end with
//! `UNAUTHENTICATED` (16); a failing key store gives `UNAVAILABLE` (14).
//!
//! From a shell, with grpcurl and the health service's proto file
//! (`grpc/health/v1/health.proto` from the grpc-proto repository):
//!
//! ```text
//! grpcurl -plaintext -proto health.proto -H 'x-api-key: <key>' \
//!     127.0.0.1:50051 grpc.health.v1.Health/Check
//! ```

use std::sync::Arc;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();

    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    let created = manager.create(&"demo".parse()?).await?;
    let key = created.key.expose_secret().to_owned();

    // The layer answers refused calls with a gRPC status (HTTP 200, `grpc-status: 16`), so
    // tonic clients see `Code::Unauthenticated` rather than a transport error.
    let api_keys = ApiKeyLayer::for_manager(&manager).build();
    let (_reporter, health) = tonic_health::server::health_reporter();

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::builder()
            .layer(api_keys)
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = tokio::signal::ctrl_c().await;
            }),
    );
    println!("serving grpc.health.v1.Health on {addr} with key {key}");

    // A client that sends the key with every call: an interceptor adds the metadata.
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let without_key = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await;
    println!(
        "without a key: {:?}",
        without_key.map_err(|status| status.code())
    );

    let metadata: AsciiMetadataValue = key.parse()?;
    let mut with_key =
        HealthClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("x-api-key", metadata.clone());
            Ok(request)
        });
    let status = with_key.check(HealthCheckRequest::default()).await?;
    println!("with the key:  {:?}", status.into_inner().status());

    server.await??;
    Ok(())
}
