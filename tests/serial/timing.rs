//! Timing (ARCHITECTURE.md, *Hardening*): a guesser must not learn whether a prefix exists
//! from how long a refusal takes.
//!
//! The measurement: the layer over a trivial service, resolving through `StoreResolver` over
//! a `MemoryStore` holding 16 keys, on a current-thread runtime. Two kinds of refused request,
//! every one with a key never sent before (so each misses the cache and reaches the store,
//! as a guesser's would):
//!
//! - (a) an unknown prefix: a freshly generated key;
//! - (b) a known prefix with a wrong body: one of the 16 prefixes, a fresh random body, and
//!   the checksum recomputed so the key is well-formed.
//!
//! Samples alternate a-b, b-a, … so drift (frequency scaling, other load) hits both alike,
//! after a warm-up. The test compares medians and 10%-trimmed means and requires each
//! difference to be under 25% of the faster kind or 2 µs, whichever is larger. For scale it
//! also prints (c) a malformed key, refused before any lookup: a path that *is* different.
//!
//! `TIMING_SAMPLES` sets the samples per kind (default 5,000); for the figures worth quoting:
//!
//! ```text
//! TIMING_SAMPLES=100000 cargo test --release --all-features --test serial timing -- --nocapture
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::exclusive::exclusive;
use crate::support::keys::{forge, unknown};
use crate::support::service::{Stack, stack};
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_api_key::cache::CacheConfig;
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};

const DEFAULT_SAMPLES: usize = 5_000;
const WARM_UP: usize = 1_000;
const KNOWN_KEYS: usize = 16;

/// `prefix` with a fresh random body (from the CSPRNG, via a throw-away key) and a valid
/// checksum.
fn known_prefix_wrong_body(prefix: &str) -> String {
    forge(prefix, &unknown())
}

fn malformed() -> String {
    let mut key = unknown();
    key.replace_range(20..21, "-");
    key
}

async fn timed(service: &Stack, key: &str) -> Duration {
    let request = Request::get("/")
        .header("x-api-key", key)
        .body(())
        .expect("request");
    let started = Instant::now();
    let status = service
        .clone()
        .oneshot(request)
        .await
        .expect("infallible")
        .status();
    let took = started.elapsed();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    took
}

/// Median and 10%-trimmed mean, in nanoseconds.
struct Summary {
    median: f64,
    trimmed_mean: f64,
    p10: f64,
    p90: f64,
}

fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let ns = |d: Duration| d.as_nanos() as f64;
    let n = samples.len();
    let cut = n / 10;
    let kept = &samples[cut..n - cut];
    Summary {
        median: ns(samples[n / 2]),
        trimmed_mean: kept.iter().map(|d| ns(*d)).sum::<f64>() / kept.len() as f64,
        p10: ns(samples[n / 10]),
        p90: ns(samples[n * 9 / 10]),
    }
}

fn within_noise(a: f64, b: f64) -> bool {
    let allowed = (a.min(b) * 0.25).max(2_000.0);
    (a - b).abs() < allowed
}

#[test]
fn an_unknown_prefix_and_a_known_prefix_with_a_wrong_body_take_the_same_time() {
    let samples = std::env::var("TIMING_SAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_SAMPLES);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let _exclusive = exclusive().await;
        let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([6; 32]));
        let mut prefixes = Vec::new();
        for n in 0..KNOWN_KEYS {
            let owner = format!("account-{n}").parse().expect("account id");
            let created = manager.create(&owner).await.expect("create");
            prefixes.push(created.key.prefix().to_string());
        }
        // Room for every refused key, so eviction work doesn't differ between the kinds.
        let layer = ApiKeyLayer::for_manager(&manager)
            .cache_config(
                CacheConfig::default().negative_capacity((3 * (samples + WARM_UP)) as u64),
            )
            .build();
        let service: Stack = stack(&layer);

        // Every key made before timing starts; none is sent twice.
        let total = samples + WARM_UP;
        let unknown: Vec<String> = (0..total).map(|_| unknown()).collect();
        let known: Vec<String> = (0..total)
            .map(|i| known_prefix_wrong_body(&prefixes[i % KNOWN_KEYS]))
            .collect();
        let bad: Vec<String> = (0..total).map(|_| malformed()).collect();

        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..total {
            let (first, second) = if i % 2 == 0 {
                (&unknown[i], &known[i])
            } else {
                (&known[i], &unknown[i])
            };
            let first_took = timed(&service, first).await;
            let second_took = timed(&service, second).await;
            let bad_took = timed(&service, &bad[i]).await;
            if i < WARM_UP {
                continue;
            }
            let (a_took, b_took) = if i % 2 == 0 {
                (first_took, second_took)
            } else {
                (second_took, first_took)
            };
            a.push(a_took);
            b.push(b_took);
            c.push(bad_took);
        }

        let metrics = layer.metrics();
        assert_eq!(
            metrics.resolver_calls as usize,
            2 * total,
            "every (a) and (b) request reached the store, no (c) did"
        );
        let (a, b, c) = (summarize(&mut a), summarize(&mut b), summarize(&mut c));
        let us = |ns: f64| ns / 1_000.0;
        println!(
            "timing over {samples} samples per kind ({} build):\n\
             (a) unknown prefix:            median {:.2} µs, trimmed mean {:.2} µs, p10 {:.2}, p90 {:.2}\n\
             (b) known prefix, wrong body:  median {:.2} µs, trimmed mean {:.2} µs, p10 {:.2}, p90 {:.2}\n\
             difference (b - a):            median {:+.3} µs ({:+.1}%), trimmed mean {:+.3} µs ({:+.1}%)\n\
             (c) malformed, for scale:      median {:.2} µs, trimmed mean {:.2} µs",
            if cfg!(debug_assertions) { "debug" } else { "release" },
            us(a.median),
            us(a.trimmed_mean),
            us(a.p10),
            us(a.p90),
            us(b.median),
            us(b.trimmed_mean),
            us(b.p10),
            us(b.p90),
            us(b.median - a.median),
            100.0 * (b.median - a.median) / a.median,
            us(b.trimmed_mean - a.trimmed_mean),
            100.0 * (b.trimmed_mean - a.trimmed_mean) / a.trimmed_mean,
            us(c.median),
            us(c.trimmed_mean),
        );
        assert!(
            within_noise(a.median, b.median),
            "medians differ: {:.0} ns vs {:.0} ns",
            a.median,
            b.median
        );
        assert!(
            within_noise(a.trimmed_mean, b.trimmed_mean),
            "trimmed means differ: {:.0} ns vs {:.0} ns",
            a.trimmed_mean,
            b.trimmed_mean
        );
    });
}
