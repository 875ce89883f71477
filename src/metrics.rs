//! Counters of what the layer decided, readable at any time and renderable for Prometheus.
//!
//! Every [`ApiKeyLayer`](crate::ApiKeyLayer) counts its outcomes, cache hits and misses,
//! resolver calls and the key uses its [`LastUsedRecorder`](crate::last_used::LastUsedRecorder)
//! dropped in relaxed atomics; [`ApiKeyLayer::metrics`](crate::ApiKeyLayer::metrics)
//! returns a snapshot. With the `metrics` feature the same counters also go to the
//! [`metrics`](https://docs.rs/metrics) facade (install the recorder before building the
//! layer). No counter carries a label derived from a key.
//!
//! ```
//! use tower_api_key::metrics::MetricsSnapshot;
//!
//! let text = MetricsSnapshot::default().to_prometheus();
//! assert!(text.contains("api_key_requests_total{outcome=\"accepted\"} 0"));
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What the layer counts. A cache hit bumps exactly one counter.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
enum Counter {
    AcceptedCached,
    AcceptedResolved,
    Anonymous,
    Missing,
    Malformed,
    RefusedCached,
    RefusedResolved,
    Unavailable,
    CacheMisses,
    ResolverCalls,
    ResolverFailures,
    CoalescedLookups,
    LookupsShed,
    Invalidations,
    LastUsedDropped,
}

const COUNTERS: usize = Counter::LastUsedDropped as usize + 1;
/// Threads spread over this many copies of the counters, so that worker threads don't
/// contend for one cache line on every request.
const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

/// The live counters of one layer.
#[derive(Debug, Default)]
pub struct Metrics {
    stripes: Box<[Stripe; STRIPES]>,
    #[cfg(feature = "metrics")]
    facade: facade::Handles,
}

fn stripe_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.try_with(|stripe| *stripe).unwrap_or(0)
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
    /// Key uses the last-used recorder dropped because its queue was full.
    pub last_used_dropped: u64,
}

macro_rules! counters {
    ($($method:ident => $counter:ident),* $(,)?) => {
        impl Metrics {
            $(
                pub(crate) fn $method(&self) {
                    self.bump(Counter::$counter);
                }
            )*
        }
    };
}

counters!(
    accepted_cached => AcceptedCached,
    accepted_resolved => AcceptedResolved,
    anonymous => Anonymous,
    missing => Missing,
    malformed => Malformed,
    refused_cached => RefusedCached,
    refused_resolved => RefusedResolved,
    unavailable => Unavailable,
    cache_misses => CacheMisses,
    resolver_called => ResolverCalls,
    resolver_failed => ResolverFailures,
    coalesced => CoalescedLookups,
    lookups_shed => LookupsShed,
    invalidated => Invalidations,
    last_used_dropped => LastUsedDropped,
);

impl Metrics {
    fn bump(&self, counter: Counter) {
        self.stripes[stripe_of_this_thread()].0[counter as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.facade.bump(counter);
    }

    fn sum(&self, counter: Counter) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0[counter as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        use Counter::*;
        let read = |counter| self.sum(counter);
        MetricsSnapshot {
            accepted: read(AcceptedCached) + read(AcceptedResolved),
            anonymous: read(Anonymous),
            missing: read(Missing),
            invalid: read(Malformed) + read(RefusedCached) + read(RefusedResolved),
            unavailable: read(Unavailable),
            cache_hits: read(AcceptedCached) + read(RefusedCached),
            cache_misses: read(CacheMisses),
            resolver_calls: read(ResolverCalls),
            resolver_failures: read(ResolverFailures),
            coalesced_lookups: read(CoalescedLookups),
            lookups_shed: read(LookupsShed),
            invalidations: read(Invalidations),
            last_used_dropped: read(LastUsedDropped),
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
        counter(
            "api_key_last_used_dropped_total",
            "Key uses not recorded because the last-used queue was full.",
            &[("", self.last_used_dropped)],
        );
        out
    }
}

/// The same counters through the `metrics` facade, with the names and labels of
/// [`MetricsSnapshot::to_prometheus`]. Handles are registered when the layer is built, so
/// install the recorder before building it.
#[cfg(feature = "metrics")]
mod facade {
    use metrics::{Counter as Handle, counter};

    use super::Counter;

    #[derive(Debug)]
    pub(super) struct Handles {
        requests: [Handle; 5],
        cache: [Handle; 2],
        resolver_calls: Handle,
        resolver_failures: Handle,
        coalesced: Handle,
        shed: Handle,
        invalidations: Handle,
        last_used_dropped: Handle,
    }

    const ACCEPTED: usize = 0;
    const ANONYMOUS: usize = 1;
    const MISSING: usize = 2;
    const INVALID: usize = 3;
    const UNAVAILABLE: usize = 4;
    const HIT: usize = 0;
    const MISS: usize = 1;

    impl Default for Handles {
        fn default() -> Self {
            let requests =
                |outcome: &'static str| counter!("api_key_requests_total", "outcome" => outcome);
            let cache =
                |result: &'static str| counter!("api_key_cache_lookups_total", "result" => result);
            Self {
                requests: [
                    requests("accepted"),
                    requests("anonymous"),
                    requests("missing"),
                    requests("invalid"),
                    requests("unavailable"),
                ],
                cache: [cache("hit"), cache("miss")],
                resolver_calls: counter!("api_key_resolver_calls_total"),
                resolver_failures: counter!("api_key_resolver_failures_total"),
                coalesced: counter!("api_key_coalesced_lookups_total"),
                shed: counter!("api_key_lookups_shed_total"),
                invalidations: counter!("api_key_invalidations_total"),
                last_used_dropped: counter!("api_key_last_used_dropped_total"),
            }
        }
    }

    impl Handles {
        pub(super) fn bump(&self, counter: Counter) {
            match counter {
                Counter::AcceptedCached => {
                    self.requests[ACCEPTED].increment(1);
                    self.cache[HIT].increment(1);
                }
                Counter::AcceptedResolved => self.requests[ACCEPTED].increment(1),
                Counter::Anonymous => self.requests[ANONYMOUS].increment(1),
                Counter::Missing => self.requests[MISSING].increment(1),
                Counter::Malformed | Counter::RefusedResolved => {
                    self.requests[INVALID].increment(1);
                }
                Counter::RefusedCached => {
                    self.requests[INVALID].increment(1);
                    self.cache[HIT].increment(1);
                }
                Counter::Unavailable => self.requests[UNAVAILABLE].increment(1),
                Counter::CacheMisses => self.cache[MISS].increment(1),
                Counter::ResolverCalls => self.resolver_calls.increment(1),
                Counter::ResolverFailures => self.resolver_failures.increment(1),
                Counter::CoalescedLookups => self.coalesced.increment(1),
                Counter::LookupsShed => self.shed.increment(1),
                Counter::Invalidations => self.invalidations.increment(1),
                Counter::LastUsedDropped => self.last_used_dropped.increment(1),
            }
        }
    }
}
