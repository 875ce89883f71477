//! Counters of what the layer decided, readable at any time and renderable for Prometheus.
//!
//! Every [`ApiKeyLayer`](crate::ApiKeyLayer) counts its outcomes, cache hits and misses and
//! resolver calls in relaxed atomics; [`ApiKeyLayer::metrics`](crate::ApiKeyLayer::metrics)
//! returns a snapshot. No counter carries a label derived from a key.
//!
//! ```
//! use tower_api_key::metrics::MetricsSnapshot;
//!
//! let text = MetricsSnapshot::default().to_prometheus();
//! assert!(text.contains("api_key_requests_total{outcome=\"accepted\"} 0"));
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters of one layer.
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    anonymous: AtomicU64,
    missing: AtomicU64,
    invalid: AtomicU64,
    unavailable: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    resolver_calls: AtomicU64,
    resolver_failures: AtomicU64,
    coalesced_lookups: AtomicU64,
    lookups_shed: AtomicU64,
    invalidations: AtomicU64,
}

/// A point-in-time copy of a layer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Requests let through with a valid key.
    pub accepted: u64,
    /// Requests let through without a key (optional mode).
    pub anonymous: u64,
    /// Requests refused for having no key.
    pub missing: u64,
    /// Requests refused for a malformed, unknown, inactive or rotated-away key.
    pub invalid: u64,
    /// Requests answered 503: the resolver failed, timed out or panicked, or was too busy.
    pub unavailable: u64,
    /// Well-formed keys answered from the cache (accepted or refused).
    pub cache_hits: u64,
    /// Well-formed keys not in the cache.
    pub cache_misses: u64,
    /// Resolver calls started.
    pub resolver_calls: u64,
    /// Resolver calls that failed, timed out or panicked.
    pub resolver_failures: u64,
    /// Cache misses that joined a resolver call already running for the same key.
    pub coalesced_lookups: u64,
    /// Cache misses answered 503 because too many resolver calls were running.
    pub lookups_shed: u64,
    /// Invalidations received.
    pub invalidations: u64,
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        impl Metrics {
            $(
                pub(crate) fn $name(&self) {
                    self.$name.fetch_add(1, Ordering::Relaxed);
                }
            )*
        }
    };
}

counters!(
    accepted,
    anonymous,
    missing,
    invalid,
    unavailable,
    cache_hits,
    cache_misses,
    lookups_shed,
);

impl Metrics {
    pub(crate) fn resolver_called(&self) {
        self.resolver_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn resolver_failed(&self) {
        self.resolver_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn coalesced(&self) {
        self.coalesced_lookups.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn invalidated(&self) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MetricsSnapshot {
            accepted: read(&self.accepted),
            anonymous: read(&self.anonymous),
            missing: read(&self.missing),
            invalid: read(&self.invalid),
            unavailable: read(&self.unavailable),
            cache_hits: read(&self.cache_hits),
            cache_misses: read(&self.cache_misses),
            resolver_calls: read(&self.resolver_calls),
            resolver_failures: read(&self.resolver_failures),
            coalesced_lookups: read(&self.coalesced_lookups),
            lookups_shed: read(&self.lookups_shed),
            invalidations: read(&self.invalidations),
        }
    }
}

impl MetricsSnapshot {
    /// The counters in the Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "api_key_requests_total",
            "Requests seen by the API-key layer, by outcome.",
            &[
                ("{outcome=\"accepted\"}", self.accepted),
                ("{outcome=\"anonymous\"}", self.anonymous),
                ("{outcome=\"missing\"}", self.missing),
                ("{outcome=\"invalid\"}", self.invalid),
                ("{outcome=\"unavailable\"}", self.unavailable),
            ],
        );
        counter(
            "api_key_cache_lookups_total",
            "Cache lookups for well-formed keys, by result.",
            &[
                ("{result=\"hit\"}", self.cache_hits),
                ("{result=\"miss\"}", self.cache_misses),
            ],
        );
        counter(
            "api_key_resolver_calls_total",
            "Resolver calls started.",
            &[("", self.resolver_calls)],
        );
        counter(
            "api_key_resolver_failures_total",
            "Resolver calls that failed, timed out or panicked.",
            &[("", self.resolver_failures)],
        );
        counter(
            "api_key_coalesced_lookups_total",
            "Cache misses that joined a resolver call already in progress.",
            &[("", self.coalesced_lookups)],
        );
        counter(
            "api_key_lookups_shed_total",
            "Cache misses answered 503 because too many resolver calls were running.",
            &[("", self.lookups_shed)],
        );
        counter(
            "api_key_invalidations_total",
            "Cache invalidations received.",
            &[("", self.invalidations)],
        );
        out
    }
}
