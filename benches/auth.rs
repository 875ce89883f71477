//! What the layer adds to a request, in-process, against a no-auth baseline and against the
//! floor of its essential work, all in one run.
//!
//! Every case sends the same request (with the same `x-api-key` header) through
//! `oneshot` on a service wrapping the same axum router, so the differences are the
//! authentication alone. Besides the layer, two peers a user might write instead: an
//! `axum::middleware::from_fn` middleware over a `moka::future` cache, and tower-http's
//! `AsyncRequireAuthorizationLayer` over the same cache and resolver.
//!
//! Each case is timed interleaved with the baseline (16 requests of one, then 16 of the
//! other), so drift of this noisy machine cancels out of "added time"; the pairs are written
//! to `target/criterion/auth/paired.json`.
//!
//! Run: `cargo bench --all-features --bench auth`, then `python3 scripts/bench_table.py` for
//! added nanoseconds over the paired baseline and ratios to `floor`.
//!
//! Among the cases, `layer/reject_shed`: a miss answered 503 because every lookup the layer may
//! start is taken (by one that never ends). And a group of its own, `refusal`: what a guesser
//! could time, a fresh well-formed key each request (so each misses the cache and reaches the
//! store), either an unknown prefix or a known prefix with a wrong body. Each case sends both
//! kinds alternately and times each request alone; criterion reports the case's own kind, and
//! `target/criterion/refusal/paired.json` (also printed) the medians of both kinds over every
//! request of both cases, side by side, which should match.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, StatusCode};
use tower::{Layer, ServiceExt};
use tower_api_key::cache::CacheConfig;
use tower_api_key::resolver::{ResolveError, Resolver};
use tower_api_key::{
    ApiKey, ApiKeyLayer, KeyDigest, KeyIdentity, KeyManager, KeyOptions, MemoryStore, Pepper,
    RateLimit, StoreResolver,
};

/// Fresh unknown keys, and well-formed keys forged from a known prefix and another key's body.
#[path = "../tests/it/support/keys.rs"]
mod keys;

fn router() -> Router {
    Router::new().route("/v1/ping", get(|| async { "pong" }))
}

fn request(key: Option<&HeaderValue>) -> Request<axum::body::Body> {
    let mut request = Request::get("/v1/ping")
        .body(axum::body::Body::empty())
        .expect("request");
    if let Some(key) = key {
        request.headers_mut().insert("x-api-key", key.clone());
    }
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

/// A resolver whose calls never end: the lookups it is given keep their permits.
struct Stalled;

/// The account `Stalled` never finds.
struct Nobody;

impl tower_api_key::Account for Nobody {}

#[async_trait::async_trait]
impl Resolver for Stalled {
    type Account = Nobody;

    async fn resolve(&self, _: &ApiKey, _: &KeyDigest) -> Result<Option<Nobody>, ResolveError> {
        std::future::pending().await
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
    // A key with a rate limit it never reaches here (the bench sends fewer than 10^6 a second
    // to it), and one that has spent its budget for the day.
    let create_limited = |limit| {
        let options = KeyOptions::new().rate_limit(limit);
        let created = runtime
            .block_on(manager.create_with(&"bench".parse().expect("account"), options))
            .expect("create");
        HeaderValue::from_str(created.key.expose_secret()).expect("header")
    };
    let limited = create_limited(RateLimit::new(1_000_000, 1).expect("limit"));
    let spent = create_limited(RateLimit::new(1, 86_400).expect("limit"));
    let unknown_key = ApiKey::generate().expect("randomness");
    let unknown = HeaderValue::from_str(unknown_key.expose_secret()).expect("header");
    let malformed = HeaderValue::from_static("not-a-key");

    let layer = ApiKeyLayer::for_manager(&manager).build();
    let protected = layer.layer(router());
    let protected_axum = layer.clone().for_axum().layer(router());
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
    // One lookup at a time, taken for good by a call that never ends: every miss is shed.
    let shedding = ApiKeyLayer::builder(Stalled, pepper.clone())
        .cache_config(
            CacheConfig::default()
                .max_concurrent_lookups(Some(1))
                .lookup_timeout(None),
        )
        .build()
        .layer(router());
    runtime.block_on(async {
        let held = HeaderValue::from_str(&keys::unknown()).expect("header");
        // The request goes; its lookup runs on as a task of its own, keeping the permit.
        let request = shedding.clone().oneshot(request(Some(&held)));
        let gone = tokio::time::timeout(Duration::from_millis(100), request).await;
        assert!(gone.is_err(), "a stalled lookup never answers");
    });

    // Warm the cache with the valid and the unknown key.
    runtime.block_on(async {
        for key in [&valid, &unknown, &limited, &spent] {
            protected
                .clone()
                .oneshot(request(Some(key)))
                .await
                .expect("infallible");
        }
    });

    let cases: Vec<(&str, Call, StatusCode)> = vec![
        ("floor", call!(floor, Some(&valid)), StatusCode::OK),
        ("layer/hit", call!(protected, Some(&valid)), StatusCode::OK),
        (
            "layer/hit_for_axum",
            call!(protected_axum, Some(&valid)),
            StatusCode::OK,
        ),
        (
            "layer/hit_rate_limited",
            call!(protected, Some(&limited)),
            StatusCode::OK,
        ),
        (
            "layer/reject_over_rate_limit",
            call!(protected, Some(&spent)),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            "layer/reject_malformed",
            call!(protected, Some(&malformed)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "layer/reject_unknown",
            call!(protected, Some(&unknown)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "layer/reject_missing",
            call!(protected, None),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "layer/reject_shed",
            call!(shedding, Some(&unknown)),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "peer/from_fn_moka_future/hit",
            call!(from_fn, Some(&valid)),
            StatusCode::OK,
        ),
        (
            "peer/tower_http_async_authorize/hit",
            call!(tower_http, Some(&valid)),
            StatusCode::OK,
        ),
    ];
    let baseline_call = call!(baseline, Some(&valid));

    let mut group = c.benchmark_group("auth");
    group.bench_function("baseline", |b| {
        b.to_async(&runtime).iter(|| async {
            let status = baseline_call().await;
            assert_eq!(status, StatusCode::OK);
        })
    });
    for (name, case, expected) in &cases {
        runtime.block_on(async { assert_eq!(case().await, *expected, "{name}") });
        group.bench_function(*name, |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| paired(name, iters, case, &baseline_call))
        });
    }
    group.bench_function("layer/miss", |b| {
        // A cold lookup each time: a fresh layer (empty cache) over the memory store.
        b.to_async(&runtime).iter_batched(
            || ApiKeyLayer::for_manager(&manager).build().layer(router()),
            |cold| async {
                let response = cold.oneshot(request(Some(&valid))).await.expect("ok");
                assert_eq!(response.status(), StatusCode::OK);
                black_box(response)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
    write_paired_results();
}

// ===== paired measurement =====

/// One request through one service, boxed so that every case has the same shape (the box
/// costs the case and its baseline alike).
type Call = Box<dyn Fn() -> Pin<Box<dyn Future<Output = StatusCode>>>>;

/// A [`Call`] sending the bench request (with `key`, if any) through a clone of `service`.
macro_rules! call {
    ($service:expr, $key:expr) => {{
        let service = $service.clone();
        let key: Option<&HeaderValue> = $key;
        let key: Option<HeaderValue> = key.cloned();
        Box::new(move || {
            let service = service.clone();
            let request = request(key.as_ref());
            Box::pin(async move { service.oneshot(request).await.expect("ok").status() })
                as Pin<Box<dyn Future<Output = StatusCode>>>
        }) as Call
    }};
}
use call;

/// Per case: total time of the case, total time of the baseline measured alongside it, and
/// iterations of each.
static PAIRED: Mutex<Vec<(String, Duration, Duration, u64)>> = Mutex::new(Vec::new());

/// Times `iters` runs of `case`, interleaved in small batches with as many runs of
/// `baseline`. The machine's drift (noisy neighbours, frequency changes) hits both alike, so
/// their difference is the case's added time even when absolute times wander by 30 %.
async fn paired(name: &str, iters: u64, case: &Call, baseline: &Call) -> Duration {
    const BATCH: u64 = 16;
    let (mut case_time, mut baseline_time) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < iters {
        let n = BATCH.min(iters - done);
        let started = Instant::now();
        for _ in 0..n {
            black_box(baseline().await);
        }
        baseline_time += started.elapsed();
        let started = Instant::now();
        for _ in 0..n {
            black_box(case().await);
        }
        case_time += started.elapsed();
        done += n;
    }
    PAIRED
        .lock()
        .expect("lock")
        .push((name.to_owned(), case_time, baseline_time, iters));
    case_time
}

/// Writes `target/criterion/auth/paired.json`: per case, ns per request of the case and of
/// the baseline measured alongside it.
fn write_paired_results() {
    let mut totals: HashMap<String, (f64, f64, f64)> = HashMap::new();
    for (name, case, baseline, iters) in PAIRED.lock().expect("lock").iter() {
        let entry = totals.entry(name.clone()).or_default();
        entry.0 += case.as_nanos() as f64;
        entry.1 += baseline.as_nanos() as f64;
        entry.2 += *iters as f64;
    }
    let rows: Vec<String> = totals
        .iter()
        .map(|(name, (case, baseline, iters))| {
            format!(
                "  \"{name}\": {{\"case_ns\": {:.1}, \"baseline_ns\": {:.1}}}",
                case / iters,
                baseline / iters
            )
        })
        .collect();
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()),
    )
    .join("criterion/auth");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("paired.json"),
            format!("{{\n{}\n}}\n", rows.join(",\n")),
        );
    }
}

// ===== refusals a guesser could time =====

/// Which refusal a `refusal` case times (and its place in [`GUESSES`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guess {
    UnknownPrefix = 0,
    KnownPrefixWrongBody = 1,
}

/// Every request's time in nanoseconds, by kind, over every run of either case: each run times
/// both kinds alike, so these compare them within the same minutes of the machine's drift.
static GUESSES: Mutex<[Vec<u32>; 2]> = Mutex::new([Vec::new(), Vec::new()]);

/// Sends `iters` fresh keys of each kind, alternately (which kind goes first alternates too),
/// timing each request alone; returns the time of `timed`'s requests. Every key is made before
/// the timing starts, and each reaches the store.
async fn guesses(
    service: &tower_api_key::ApiKeyService<Router, StoreResolver>,
    layer: &ApiKeyLayer<StoreResolver>,
    prefixes: &[String],
    iters: u64,
    timed: Guess,
) -> Duration {
    let header = |key: String| HeaderValue::from_str(&key).expect("header");
    let pairs: Vec<_> = (0..iters as usize)
        .map(|i| {
            let known = keys::forge(&prefixes[i % prefixes.len()], &keys::unknown());
            (header(keys::unknown()), header(known))
        })
        .collect();
    let calls = layer.metrics().resolver_calls;
    let mut took = [Duration::ZERO; 2];
    let mut samples: [Vec<u32>; 2] = [
        Vec::with_capacity(pairs.len()),
        Vec::with_capacity(pairs.len()),
    ];
    for (i, (unknown, known)) in pairs.iter().enumerate() {
        let (first, second) = if i % 2 == 0 {
            (
                (Guess::UnknownPrefix, unknown),
                (Guess::KnownPrefixWrongBody, known),
            )
        } else {
            (
                (Guess::KnownPrefixWrongBody, known),
                (Guess::UnknownPrefix, unknown),
            )
        };
        for (kind, key) in [first, second] {
            let request = request(Some(key));
            let started = Instant::now();
            let response = service.clone().oneshot(request).await.expect("ok");
            let elapsed = started.elapsed();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            took[kind as usize] += elapsed;
            samples[kind as usize].push(u32::try_from(elapsed.as_nanos()).unwrap_or(u32::MAX));
        }
    }
    assert_eq!(
        layer.metrics().resolver_calls - calls,
        2 * iters,
        "every guess reached the store"
    );
    let mut all = GUESSES.lock().expect("lock");
    for (all, samples) in all.iter_mut().zip(samples) {
        all.extend(samples);
    }
    took[timed as usize]
}

fn refusals_a_guesser_could_time(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([6; 32]));
    let prefixes: Vec<String> = (0..16)
        .map(|n| {
            let owner = format!("account-{n}").parse().expect("account");
            let created = runtime.block_on(manager.create(&owner)).expect("create");
            created.key.prefix().to_string()
        })
        .collect();
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let service = layer.layer(router());

    let mut group = c.benchmark_group("refusal");
    for (name, timed) in [
        ("unknown_prefix", Guess::UnknownPrefix),
        ("known_prefix_wrong_body", Guess::KnownPrefixWrongBody),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| guesses(&service, &layer, &prefixes, iters, timed))
        });
    }
    group.finish();

    // Both kinds as measured side by side, in every run of either case: medians.
    let mut all = std::mem::take(&mut *GUESSES.lock().expect("lock"));
    let [unknown, known] = [0, 1].map(|kind| {
        let samples = &mut all[kind];
        samples.sort_unstable();
        samples.get(samples.len() / 2).copied().unwrap_or(0)
    });
    let summary = format!(
        "{{\"requests_each\": {}, \"unknown_prefix_median_ns\": {unknown}, \
         \"known_prefix_wrong_body_median_ns\": {known}, \"difference_percent\": {:.2}}}\n",
        all[0].len(),
        100.0 * (f64::from(known) - f64::from(unknown)) / f64::from(unknown.max(1))
    );
    print!("refusal, both kinds side by side: {summary}");
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()),
    )
    .join("criterion/refusal");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("paired.json"), summary);
    }
}

criterion_group!(benches, layer_on_a_cache_hit, refusals_a_guesser_could_time);
criterion_main!(benches);
