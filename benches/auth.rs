//! What the layer adds to a request, in-process, against a no-auth baseline and against the
//! floor of its essential work, all in one run.
//!
//! Every case sends the same request (with the same `x-api-key` header) through
//! `oneshot` on a service wrapping the same axum router, so the differences are the
//! authentication alone. Run: `cargo bench --bench auth --all-features`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, StatusCode};
use tower::{Layer, ServiceExt};
use tower_api_key::{ApiKey, ApiKeyLayer, KeyDigest, KeyManager, MemoryStore, Pepper};

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
