//! The layer in a plain `tower::ServiceBuilder` stack (the HTTP answers of ARCHITECTURE.md, *The
//! layer's answers*): served by hyper on loopback for the answers clients see, and driven
//! in-process for the readiness discipline of `tower_service::Service`.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::support::http::{Answer, client, get_with};
use crate::support::keys::unknown;
use crate::support::{account, pepper};
use bytes::Bytes;
use futures_util::future::join_all;
use http::header::CONTENT_TYPE;
use http::{HeaderName, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::buffer::Buffer;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_api_key::resolver::KeyIdentity;
use tower_api_key::{ApiKeyLayer, Authenticated, KeyManager, MemoryStore};

type BoxError = Box<dyn StdError + Send + Sync>;

// ===== fixtures =====

fn manager() -> KeyManager {
    KeyManager::new(Arc::new(MemoryStore::new()), pepper())
}

async fn create_key(manager: &KeyManager, owner: &str) -> String {
    let created = manager.create(&account(owner)).await.expect("create");
    created.key.expose_secret().to_owned()
}

/// Answers with the account the layer authenticated, or "anonymous".
async fn whoami<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = match request.extensions().get::<Authenticated<KeyIdentity>>() {
        Some(who) => who.account_id().to_string(),
        None => "anonymous".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(who))))
}

/// Serves `service` with hyper on a loopback port, one clone per connection.
async fn serve<S, B>(service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A GET of `/` with the given headers, on a connection of its own.
async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> Answer {
    get_with(&client(), addr, "/", headers).await
}

async fn serve_whoami(layer: ApiKeyLayer<tower_api_key::StoreResolver>) -> SocketAddr {
    serve(ServiceBuilder::new().layer(layer).service_fn(whoami)).await
}

// ===== the answers =====

#[tokio::test]
async fn missing_key_is_401_with_json_error() {
    let manager = manager();
    let addr = serve_whoami(ApiKeyLayer::for_manager(&manager).build()).await;

    let answer = get(addr, &[]).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.content_type(), Some("application/json"));
    assert_eq!(answer.body, r#"{"error":"missing API key"}"#);
}

#[tokio::test]
async fn malformed_key_is_401_invalid() {
    let manager = manager();
    let addr = serve_whoami(ApiKeyLayer::for_manager(&manager).build()).await;

    let answer = get(addr, &[("x-api-key", "hunter2")]).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.content_type(), Some("application/json"));
    assert_eq!(answer.body, r#"{"error":"invalid API key"}"#);
}

#[tokio::test]
async fn unknown_key_gets_the_same_answer_as_a_malformed_one() {
    let manager = manager();
    let addr = serve_whoami(ApiKeyLayer::for_manager(&manager).build()).await;
    let stranger = unknown();

    let answer = get(addr, &[("x-api-key", &stranger)]).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body, r#"{"error":"invalid API key"}"#);
}

#[tokio::test]
async fn valid_key_reaches_the_handler_with_its_identity() {
    let manager = manager();
    let key = create_key(&manager, "acme").await;
    let addr = serve_whoami(ApiKeyLayer::for_manager(&manager).build()).await;

    let answer = get(addr, &[("x-api-key", &key)]).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "acme");
}

#[tokio::test]
async fn repeated_key_header_is_401_invalid_even_when_each_value_is_valid() {
    let manager = manager();
    let key = create_key(&manager, "acme").await;
    let addr = serve_whoami(ApiKeyLayer::for_manager(&manager).build()).await;

    let answer = get(addr, &[("x-api-key", &key), ("x-api-key", &key)]).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body, r#"{"error":"invalid API key"}"#);
}

#[tokio::test]
async fn custom_header_name_is_read_instead_of_x_api_key() {
    let manager = manager();
    let key = create_key(&manager, "acme").await;
    let layer = ApiKeyLayer::for_manager(&manager)
        .header_name(HeaderName::from_static("x-service-token"))
        .build();
    let addr = serve_whoami(layer).await;

    let by_custom = get(addr, &[("x-service-token", &key)]).await;
    let by_default = get(addr, &[("x-api-key", &key)]).await;

    assert_eq!(by_custom.status, StatusCode::OK);
    assert_eq!(by_custom.body, "acme");
    assert_eq!(by_default.status, StatusCode::UNAUTHORIZED);
    assert_eq!(by_default.body, r#"{"error":"missing API key"}"#);
}

#[tokio::test]
async fn rejection_hook_answer_replaces_the_default() {
    let manager = manager();
    let layer = ApiKeyLayer::for_manager(&manager)
        .on_rejection(|refused| {
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header(CONTENT_TYPE, "text/plain")
                .body(Bytes::from(format!(
                    "{} {}: {}",
                    refused.method, refused.uri, refused.rejection
                )))
                .expect("valid response")
        })
        .build();
    let addr = serve_whoami(layer).await;

    let missing = get(addr, &[]).await;
    let invalid = get(addr, &[("x-api-key", "hunter2")]).await;

    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(missing.content_type(), Some("text/plain"));
    assert_eq!(missing.body, "GET /: missing API key");
    assert_eq!(invalid.status, StatusCode::FORBIDDEN);
    assert_eq!(invalid.body, "GET /: invalid API key");
}

#[tokio::test]
async fn optional_mode_lets_keyless_requests_through_but_refuses_bad_keys() {
    let manager = manager();
    let key = create_key(&manager, "acme").await;
    let addr = serve_whoami(ApiKeyLayer::for_manager(&manager).optional().build()).await;

    let anonymous = get(addr, &[]).await;
    let bad = get(addr, &[("x-api-key", "hunter2")]).await;
    let known = get(addr, &[("x-api-key", &key)]).await;

    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(anonymous.body, "anonymous");
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(known.body, "acme");
}

// ===== composition =====

#[tokio::test]
async fn concurrency_limit_inside_the_layer_serves_concurrent_requests_one_at_a_time() {
    const WORK: Duration = Duration::from_millis(150);
    let manager = manager();
    let key = create_key(&manager, "acme").await;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (in_flight, most_in_flight) = (in_flight.clone(), most_in_flight.clone());
        service_fn(move |request: Request<Incoming>| {
            let (in_flight, most_in_flight) = (in_flight.clone(), most_in_flight.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(WORK).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                whoami(request).await
            }
        })
    };
    let stack = ServiceBuilder::new()
        .layer(ApiKeyLayer::for_manager(&manager).build())
        .concurrency_limit(1)
        .service(handler);
    let addr = serve(stack).await;

    let started = Instant::now();
    let headers = [("x-api-key", key.as_str())];
    let (first, second) = tokio::join!(get(addr, &headers), get(addr, &headers));
    let elapsed = started.elapsed();

    assert_eq!(
        (first.status, second.status),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(
        (first.body.as_str(), second.body.as_str()),
        ("acme", "acme")
    );
    assert_eq!(
        most_in_flight.load(Ordering::SeqCst),
        1,
        "the limit was bypassed"
    );
    assert!(
        elapsed >= 2 * WORK,
        "both requests were sent at once, so one waited: {elapsed:?}"
    );
}

// ===== the readiness discipline =====

/// An inner service that checks the contract of `Service`: each clone must be polled ready
/// before it is called, and one `poll_ready` allows one `call`. A clone starts not ready,
/// as a clone of a `ConcurrencyLimit` or a `Buffer` handle does.
#[derive(Debug)]
struct ReadinessChecked {
    ready: bool,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    polled_ready: AtomicUsize,
    called: AtomicUsize,
    called_unready: AtomicUsize,
    authenticated: AtomicUsize,
}

impl Clone for ReadinessChecked {
    fn clone(&self) -> Self {
        Self {
            ready: false,
            counts: Arc::clone(&self.counts),
        }
    }
}

/// The inner service was called without having been polled ready.
#[derive(Debug)]
struct CalledUnready;

impl fmt::Display for CalledUnready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inner service called without poll_ready")
    }
}

impl StdError for CalledUnready {}

impl Service<Request<()>> for ReadinessChecked {
    type Response = Response<Full<Bytes>>;
    type Error = CalledUnready;
    type Future = std::future::Ready<Result<Self::Response, CalledUnready>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CalledUnready>> {
        self.counts.polled_ready.fetch_add(1, Ordering::SeqCst);
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        self.counts.called.fetch_add(1, Ordering::SeqCst);
        if !std::mem::replace(&mut self.ready, false) {
            self.counts.called_unready.fetch_add(1, Ordering::SeqCst);
            return std::future::ready(Err(CalledUnready));
        }
        if request
            .extensions()
            .get::<Authenticated<KeyIdentity>>()
            .is_some()
        {
            self.counts.authenticated.fetch_add(1, Ordering::SeqCst);
        }
        std::future::ready(Ok(Response::new(Full::default())))
    }
}

fn readiness_checked() -> (ReadinessChecked, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let service = ReadinessChecked {
        ready: false,
        counts: Arc::clone(&counts),
    };
    (service, counts)
}

fn keyed(key: &str) -> Request<()> {
    Request::get("/")
        .header("x-api-key", key)
        .body(())
        .expect("request")
}

#[tokio::test]
async fn layer_calls_only_the_inner_clone_that_was_polled_ready_on_cache_miss_and_hit() {
    let manager = manager();
    let key = create_key(&manager, "acme").await;
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let (inner, counts) = readiness_checked();
    let mut service = ServiceBuilder::new().layer(layer.clone()).service(inner);

    // One service, polled then called twice: first a cache miss, then a cache hit.
    for _ in 0..2 {
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(keyed(&key))
            .await
            .expect("the inner service was ready when called");
        assert_eq!(response.status(), StatusCode::OK);
    }
    // Fresh clones through `oneshot`, as hyper and axum drive services.
    for _ in 0..2 {
        let response = service
            .clone()
            .oneshot(keyed(&key))
            .await
            .expect("ready when called");
        assert_eq!(response.status(), StatusCode::OK);
    }

    let metrics = layer.metrics();
    assert_eq!((metrics.cache_misses, metrics.cache_hits), (1, 3));
    assert_eq!(counts.called_unready.load(Ordering::SeqCst), 0);
    assert_eq!(counts.called.load(Ordering::SeqCst), 4);
    assert_eq!(counts.authenticated.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn concurrent_lookups_behind_a_buffer_each_call_a_ready_inner_clone() {
    const REQUESTS: usize = 8;
    let manager = manager();
    let key = create_key(&manager, "acme").await;
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let (inner, counts) = readiness_checked();
    // The buffer's worker polls one `ApiKeyService` and calls it again while earlier
    // requests still wait for the (coalesced) lookup of the uncached key.
    let service = Buffer::new(
        ServiceBuilder::new().layer(layer.clone()).service(inner),
        REQUESTS,
    );

    let misses = (0..REQUESTS).map(|_| service.clone().oneshot(keyed(&key)));
    for outcome in join_all(misses).await {
        assert_eq!(outcome.expect("ready when called").status(), StatusCode::OK);
    }
    let hits = (0..REQUESTS).map(|_| service.clone().oneshot(keyed(&key)));
    for outcome in join_all(hits).await {
        assert_eq!(outcome.expect("ready when called").status(), StatusCode::OK);
    }

    let metrics = layer.metrics();
    assert_eq!(metrics.resolver_calls, 1, "one lookup for the uncached key");
    assert!(metrics.cache_hits >= REQUESTS as u64);
    assert_eq!(counts.called_unready.load(Ordering::SeqCst), 0);
    assert_eq!(counts.called.load(Ordering::SeqCst), 2 * REQUESTS);
    assert_eq!(counts.authenticated.load(Ordering::SeqCst), 2 * REQUESTS);
}

#[tokio::test]
async fn rejected_request_leaves_the_inner_service_uncalled() {
    let manager = manager();
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let (inner, counts) = readiness_checked();
    let mut service = ServiceBuilder::new().layer(layer).service(inner);

    let missing = Request::get("/").body(()).expect("request");
    let response = service.ready().await.expect("ready").call(missing).await;
    let stranger = unknown();
    let unknown = service
        .ready()
        .await
        .expect("ready")
        .call(keyed(&stranger))
        .await;

    assert_eq!(
        response.expect("answered").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        unknown.expect("answered").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(counts.called.load(Ordering::SeqCst), 0);
}
