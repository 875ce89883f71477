//! `ApiKeyLayer` in a plain `tower::ServiceBuilder` stack, served by hyper 1 without any web
//! framework: the handler reads `Authenticated<KeyIdentity>` from the request extensions.
//!
//! ```text
//! cargo run --example tower_stack
//! ```
//!
//! It creates a key at startup and prints a `curl` line to try. Listens on `127.0.0.1:3003`,
//! or on `ADDR`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;
use tower::timeout::error::Elapsed;
use tower::{BoxError, ServiceBuilder};
use tower_api_key::resolver::KeyIdentity;
use tower_api_key::{ApiKeyLayer, Authenticated, KeyManager, MemoryStore, Pepper};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();

    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    let created = manager.create(&"demo".parse()?).await?;

    // Outermost first. The limit bounds every request, refused ones included; the timeout
    // bounds only the handler, and an elapsed one is answered 504.
    let service = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(64))
        .layer(ApiKeyLayer::for_manager(&manager).build())
        .map_result(timeout_to_504)
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .service_fn(whoami);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3003".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!(
        "curl -H 'x-api-key: {}' http://{addr}/",
        created.key.expose_secret()
    );

    loop {
        let (stream, _) = listener.accept().await?;
        // hyper calls a clone per request, polled ready first: the tower contract holds.
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new());
            if let Err(err) = connection
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {err}");
            }
        });
    }
}

/// Only reached with a valid key: the layer answers every other request itself.
async fn whoami(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = request
        .extensions()
        .get::<Authenticated<KeyIdentity>>()
        .map_or_else(
            || "anonymous".to_owned(),
            |who| who.account_id().to_string(),
        );
    Ok(Response::new(Full::from(format!("hello, {who}\n"))))
}

/// Answers a handler that ran out of time with a 504 instead of an error, which hyper would
/// answer by closing the connection.
fn timeout_to_504(
    result: Result<Response<Full<Bytes>>, BoxError>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    match result {
        Err(err) if err.is::<Elapsed>() => {
            let mut response = Response::new(Full::from("handler timed out\n"));
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            Ok(response)
        }
        other => other,
    }
}
