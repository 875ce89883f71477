//! What a rate limit adds to a request through the layer, in each mode. A plain `main` that
//! prints a table; see BENCHMARKS.md ("Rate limits") for the figures and how to run it.
//!
//! One key per case, sent one request at a time through the layer around a no-op service on a
//! current-thread runtime (the layer's cache warm): no limit; a limit kept in this process
//! (`LocalLimiter`); and, with the `redis` feature and a Redis on `REDIS_URL` (default
//! `redis://127.0.0.1:6379`), a limit kept in Redis exactly (a round trip per request) and
//! local-first (leases of 10 and of 100). Limits are 10^6 requests per second, more than the
//! bench sends, so every request is allowed; a 429 counted at the end would void the run.
//!
//! Cases are timed interleaved with a no-layer baseline, in rounds, so the machine's drift hits
//! them alike; "added" is a case's time per request minus the baseline's.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_api_key::rate_limit::{LocalLimiter, RateLimiter};
use tower_api_key::{ApiKeyLayer, KeyManager, KeyOptions, MemoryStore, Pepper, RateLimit};

const HEADER: HeaderName = HeaderName::from_static("x-api-key");
const ROUNDS: usize = 20;

/// Every case's service, its response dropped to `()` (the same small cost for all).
type Svc = BoxCloneSyncService<Request<()>, (), Infallible>;

struct Case {
    name: String,
    service: Svc,
    key: HeaderValue,
    /// Requests per round: fewer for cases that wait for Redis.
    chunk: usize,
    layer: ApiKeyLayer<tower_api_key::StoreResolver>,
    time: Duration,
    base: Duration,
    n: usize,
}

/// A fresh account per case: an account holds at most 3 keys.
fn next_account() -> tower_api_key::AccountId {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("bench-{}", NEXT.fetch_add(1, Ordering::Relaxed))
        .parse()
        .expect("account")
}

/// An answer with a `content-type`, as a real handler's has: its header map exists already,
/// as it would in a server.
async fn noop(_: Request<()>) -> Result<Response<String>, Infallible> {
    let mut response = Response::new(String::new());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

fn request(key: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert(HEADER, key.clone());
    request
}

async fn drive(service: &mut Svc, key: &HeaderValue, count: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..count {
        let ready = service.ready().await.expect("ready");
        ready.call(request(key)).await.expect("call");
    }
    start.elapsed()
}

/// A case: a key (limited to 10^6 a second if `limited`) behind a layer of its own, with
/// `limiter` keeping the budgets if given.
async fn case(
    name: &str,
    manager: &KeyManager,
    limited: bool,
    limiter: Option<Arc<dyn RateLimiter>>,
    chunk: usize,
) -> Case {
    let options = if limited {
        KeyOptions::new().rate_limit(RateLimit::new(1_000_000, 1).expect("limit"))
    } else {
        KeyOptions::new()
    };
    let created = manager
        .create_with(&next_account(), options)
        .await
        .expect("create");
    let key = HeaderValue::from_str(created.key.expose_secret()).expect("header");
    let mut builder = ApiKeyLayer::for_manager(manager);
    if let Some(limiter) = limiter {
        builder = builder.rate_limiter(limiter);
    }
    let layer = builder.build();
    let mut service = Svc::new(layer.layer(service_fn(noop)).map_response(drop));
    drive(&mut service, &key, 100).await; // warm the cache (and a Redis connection)
    Case {
        name: name.to_owned(),
        service,
        key,
        chunk,
        layer,
        time: Duration::ZERO,
        base: Duration::ZERO,
        n: 0,
    }
}

async fn run() {
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([9; 32]));
    let mut cases = vec![
        case("layer, key without a limit", &manager, false, None, 20_000).await,
        case(
            "layer, limit in process (LocalLimiter)",
            &manager,
            true,
            Some(Arc::new(LocalLimiter::new())),
            20_000,
        )
        .await,
    ];
    #[cfg(feature = "redis")]
    cases.extend(redis_cases(&manager).await);

    let mut baseline = Svc::new(service_fn(noop).map_response(drop));
    let base_key = cases[0].key.clone();
    for _ in 0..ROUNDS {
        for case in &mut cases {
            let base = drive(&mut baseline, &base_key, case.chunk).await;
            let time = drive(&mut case.service, &case.key, case.chunk).await;
            case.base += base;
            case.time += time;
            case.n += case.chunk;
        }
    }

    let per = |d: Duration, n: usize| d.as_nanos() as f64 / n as f64;
    let unlimited_added = per(cases[0].time, cases[0].n) - per(cases[0].base, cases[0].n);
    println!(
        "| case | ns/request (baseline) | added by the layer | limit's share of the layer's added time |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for case in &cases {
        let (time, base) = (per(case.time, case.n), per(case.base, case.n));
        let added = time - base;
        let share = if std::ptr::eq(case, &cases[0]) {
            "–".to_owned()
        } else {
            format!(
                "+{:.0} % ({:+.0} ns)",
                (added / unlimited_added - 1.0) * 100.0,
                added - unlimited_added
            )
        };
        println!(
            "| {} | {:.0} ({:.0}) | +{:.0} ns | {share} |",
            case.name, time, base, added
        );
        let metrics = case.layer.metrics();
        assert_eq!(
            metrics.rate_limited, 0,
            "{}: a request was refused",
            case.name
        );
        assert_eq!(
            metrics.rate_limiter_failures, 0,
            "{}: the limiter failed",
            case.name
        );
    }
}

#[cfg(feature = "redis")]
async fn redis_cases(manager: &KeyManager) -> Vec<Case> {
    use tower_api_key::rate_limit::redis::RedisLimiter;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let namespace = format!("bench-{}", std::process::id());
    let connect = |lease: Option<u32>| {
        let builder = RedisLimiter::builder(url.clone()).namespace(namespace.clone());
        let builder = match lease {
            Some(lease) => builder.local_first(lease),
            None => builder.exact(),
        };
        builder.connect()
    };
    let mut cases = Vec::new();
    for (name, lease, chunk) in [
        ("layer, limit in Redis, exact", None, 500),
        (
            "layer, limit in Redis, local-first (lease 10)",
            Some(10),
            5_000,
        ),
        (
            "layer, limit in Redis, local-first (lease 100)",
            Some(100),
            20_000,
        ),
    ] {
        match connect(lease).await {
            Ok(limiter) => {
                let limiter: Arc<dyn RateLimiter> = Arc::new(limiter);
                cases.push(case(name, manager, true, Some(limiter), chunk).await);
            }
            Err(err) => {
                eprintln!("skipping the Redis cases: {err}");
                break;
            }
        }
    }
    cases
}

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
