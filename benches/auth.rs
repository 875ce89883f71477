//! What the layer adds to a request, in-process, against a no-auth baseline and against the
//! floor of its essential work, all in one run.
//!
//! Every case sends the same request (with the same `x-api-key` header) through
//! `oneshot` on a service wrapping the same axum router, so the differences are the
//! authentication alone. Besides the layer, two peers a user might write instead: an
//! `axum::middleware::from_fn` middleware over a `moka::future` cache, and tower-http's
//! `AsyncRequireAuthorizationLayer` over the same cache and resolver.
//!
//! Run: `cargo bench --all-features --bench auth`, then `python3 scripts/bench_table.py` for
//! added nanoseconds over `baseline` and ratios to `floor`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, StatusCode};
use tower::{Layer, ServiceExt};
use tower_api_key::resolver::Resolver;
use tower_api_key::{
    ApiKey, ApiKeyLayer, KeyDigest, KeyIdentity, KeyManager, MemoryStore, Pepper, StoreResolver,
};

fn router() -> Router {
    Router::new().route("/v1/ping", get(|| async { "pong" }))
}

fn request(key: &HeaderValue) -> Request<axum::body::Body> {
    let mut request = Request::get("/v1/ping")
        .body(axum::body::Body::empty())
        .expect("request");
    request.headers_mut().insert("x-api-key", key.clone());
    request
}

/// The essential work of a cache hit, written out by hand: header read, parse, digest,
/// plain map hit, extensions insert.
#[derive(Clone)]
struct Floor {
    pepper: Pepper,
    accounts: Arc<HashMap<KeyDigest, Arc<String>>>,
    inner: Router,
}

impl tower::Service<Request<axum::body::Body>> for Floor {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <Router as tower::Service<Request<axum::body::Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        tower::Service::<Request<axum::body::Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: Request<axum::body::Body>) -> Self::Future {
        let value = request.headers().get("x-api-key").expect("header");
        let key = ApiKey::parse(value.as_bytes()).expect("valid");
        let account = self
            .accounts
            .get(&self.pepper.digest(&key))
            .expect("known")
            .clone();
        request.extensions_mut().insert(account);
        self.inner.call(request)
    }
}

/// What a user would write with `axum::middleware::from_fn`: parse, digest, a
/// `moka::future` cache in front of the store resolver, then the extension.
#[derive(Clone)]
struct PeerState {
    pepper: Pepper,
    cache: moka::future::Cache<KeyDigest, Option<Arc<KeyIdentity>>>,
    resolver: Arc<StoreResolver>,
}

impl PeerState {
    async fn authenticate(&self, headers: &http::HeaderMap) -> Option<Arc<KeyIdentity>> {
        let value = headers.get("x-api-key")?;
        let key = ApiKey::parse(value.as_bytes()).ok()?;
        let digest = self.pepper.digest(&key);
        let resolver = Arc::clone(&self.resolver);
        self.cache
            .get_with(digest, async move {
                resolver
                    .resolve(&key, &digest)
                    .await
                    .ok()
                    .flatten()
                    .map(Arc::new)
            })
            .await
    }
}

async fn from_fn_peer(
    axum::extract::State(state): axum::extract::State<PeerState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.authenticate(request.headers()).await {
        Some(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        None => (StatusCode::UNAUTHORIZED, r#"{"error":"invalid API key"}"#).into_response(),
    }
}

/// The same check as tower-http's `AsyncAuthorizeRequest`.
#[derive(Clone)]
struct TowerHttpPeer(PeerState);

impl tower_http::auth::AsyncAuthorizeRequest<axum::body::Body> for TowerHttpPeer {
    type RequestBody = axum::body::Body;
    type ResponseBody = axum::body::Body;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Request<axum::body::Body>, http::Response<axum::body::Body>>,
                > + Send,
        >,
    >;

    fn authorize(&mut self, mut request: Request<axum::body::Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            match state.authenticate(request.headers()).await {
                Some(identity) => {
                    request.extensions_mut().insert(identity);
                    Ok(request)
                }
                None => {
                    let mut response = http::Response::new(axum::body::Body::from(
                        r#"{"error":"invalid API key"}"#,
                    ));
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                    Err(response)
                }
            }
        })
    }
}

fn layer_on_a_cache_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pepper = Pepper::from_bytes([5; 32]);
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), pepper.clone());
    let created = runtime
        .block_on(manager.create(&"bench".parse().expect("account")))
        .expect("create");
    let valid = HeaderValue::from_str(created.key.expose_secret()).expect("header");
    let unknown_key = ApiKey::generate().expect("randomness");
    let unknown = HeaderValue::from_str(unknown_key.expose_secret()).expect("header");
    let malformed = HeaderValue::from_static("not-a-key");

    let layer = ApiKeyLayer::for_manager(&manager).build();
    let protected = layer.layer(router());
    let floor = Floor {
        pepper: pepper.clone(),
        accounts: Arc::new(HashMap::from([(
            pepper.digest(&created.key),
            Arc::new("bench".to_owned()),
        )])),
        inner: router(),
    };
    let baseline = router();
    let peer_state = PeerState {
        pepper: pepper.clone(),
        cache: moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(std::time::Duration::from_secs(30))
            .build(),
        resolver: Arc::new(StoreResolver::new(Arc::clone(manager.store()))),
    };
    let from_fn =
        axum::middleware::from_fn_with_state(peer_state.clone(), from_fn_peer).layer(router());
    let tower_http =
        tower_http::auth::AsyncRequireAuthorizationLayer::new(TowerHttpPeer(peer_state.clone()))
            .layer(router());

    // Warm the cache with the valid and the unknown key.
    runtime.block_on(async {
        for key in [&valid, &unknown] {
            protected
                .clone()
                .oneshot(request(key))
                .await
                .expect("infallible");
        }
    });

    let mut group = c.benchmark_group("auth");
    group.bench_function("baseline", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = baseline.clone().oneshot(request(&valid)).await.expect("ok");
            assert_eq!(response.status(), StatusCode::OK);
            black_box(response)
        })
    });
    group.bench_function("floor", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = floor.clone().oneshot(request(&valid)).await.expect("ok");
            assert_eq!(response.status(), StatusCode::OK);
            black_box(response)
        })
    });
    for (name, key, expected) in [
        ("layer/hit", &valid, StatusCode::OK),
        (
            "layer/reject_malformed",
            &malformed,
            StatusCode::UNAUTHORIZED,
        ),
        ("layer/reject_unknown", &unknown, StatusCode::UNAUTHORIZED),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let response = protected.clone().oneshot(request(key)).await.expect("ok");
                assert_eq!(response.status(), expected);
                black_box(response)
            })
        });
    }
    group.bench_function("peer/from_fn_moka_future/hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = from_fn.clone().oneshot(request(&valid)).await.expect("ok");
            assert_eq!(response.status(), StatusCode::OK);
            black_box(response)
        })
    });
    group.bench_function("peer/tower_http_async_authorize/hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = tower_http
                .clone()
                .oneshot(request(&valid))
                .await
                .expect("ok");
            assert_eq!(response.status(), StatusCode::OK);
            black_box(response)
        })
    });
    group.bench_function("layer/miss", |b| {
        // A cold lookup each time: a fresh layer (empty cache) over the memory store.
        b.to_async(&runtime).iter_batched(
            || ApiKeyLayer::for_manager(&manager).build().layer(router()),
            |cold| async {
                let response = cold.oneshot(request(&valid)).await.expect("ok");
                assert_eq!(response.status(), StatusCode::OK);
                black_box(response)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("layer/reject_missing", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::get("/v1/ping")
                .body(axum::body::Body::empty())
                .expect("request");
            let response = protected.clone().oneshot(request).await.expect("ok");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            black_box(response)
        })
    });
    group.finish();
}

criterion_group!(benches, layer_on_a_cache_hit);
criterion_main!(benches);
