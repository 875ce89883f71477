//! What a guesser learns from a refusal (ARCHITECTURE.md, *Hardening*): not whether the prefix
//! exists. An unknown prefix, and a known prefix with a wrong body (the checksum recomputed, so
//! the key is well-formed), get the same answer after the same work: one store lookup each,
//! then a cached refusal. A malformed key is refused before any lookup.
//!
//! That both take the same time is measured by `benches/auth.rs` (group `refusal`), where a
//! loaded machine can't fail anything.

use std::sync::Arc;
use std::time::Duration;

use crate::support::keys::{forge, unknown};
use crate::support::service::{Stack, stack};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use tower_api_key::cache::CacheConfig;
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};

const KNOWN_KEYS: usize = 16;
const GUESSES: usize = 200;

/// Everything a client sees of an answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn answer(service: &Stack, key: &str) -> Answer {
    let request = Request::get("/")
        .header("x-api-key", key)
        .body(())
        .expect("request");
    let response = service.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

#[tokio::test]
async fn an_unknown_prefix_and_a_known_prefix_with_a_wrong_body_get_the_same_answer_after_one_lookup_each()
 {
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([6; 32]));
    let mut prefixes = Vec::new();
    for n in 0..KNOWN_KEYS {
        let owner = format!("account-{n}").parse().expect("account id");
        let created = manager.create(&owner).await.expect("create");
        prefixes.push(created.key.prefix().to_string());
    }
    // Refusals cached for an hour: a request repeated after a stall still finds its entry.
    let hour = Duration::from_secs(3600);
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(CacheConfig::default().negative_ttl(hour))
        .build();
    let service = stack(&layer);

    let refused = answer(&service, &unknown()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    for guess in 0..GUESSES {
        let known_prefix = forge(&prefixes[guess % KNOWN_KEYS], &unknown());
        for key in [unknown(), known_prefix] {
            let before = layer.metrics();
            assert_eq!(answer(&service, &key).await, refused, "{key}");
            let after = layer.metrics();
            assert_eq!(
                after.resolver_calls - before.resolver_calls,
                1,
                "one lookup"
            );
            // Asked again, both are refused from the cache.
            assert_eq!(answer(&service, &key).await, refused, "{key}");
            assert_eq!(layer.metrics().resolver_calls, after.resolver_calls);
        }
    }
    let metrics = layer.metrics();
    assert_eq!(metrics.cache_misses, 1 + 2 * GUESSES as u64);
    assert_eq!(metrics.cache_hits, 2 * GUESSES as u64);

    // A malformed key is refused alike, without a lookup.
    let mut malformed = unknown();
    malformed.replace_range(20..21, "-");
    let before = layer.metrics().resolver_calls;
    assert_eq!(answer(&service, &malformed).await, refused);
    assert_eq!(layer.metrics().resolver_calls, before);
}
