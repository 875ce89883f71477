//! Counters of what the layer decided, readable at any time and renderable for Prometheus.
//!
//! Every [`ApiKeyLayer`](crate::ApiKeyLayer) counts its outcomes, cache hits and misses,
//! resolver calls and the key uses its [`UsageRecorder`](crate::usage::UsageRecorder)
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

/// Declares everything the layer counts from one table: the internal counters (each bumped by
/// one method), and the exported series, each the sum of some counters, which become the
/// snapshot's fields, the Prometheus text and the `metrics` facade's handles.
macro_rules! metrics_table {
    (
        counters: [$($counter:ident => $method:ident),* $(,)?],
        series: [$(
            $name:literal ($help:literal) {$(
                $(#[doc = $doc:literal])*
                $field:ident $({$key:literal = $value:literal})? = $($sum:ident)|+;
            )*}
        )*],
    ) => {
        /// What the layer counts. A cache hit bumps exactly one outcome counter (and, if the
        /// rate limiter failed on it, `LimiterFailures` too).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        enum Counter {
            $($counter),*
        }

        const COUNTERS: usize = [$(Counter::$counter),*].len();

        impl Metrics {
            $(
                pub(crate) fn $method(&self) {
                    self.bump(Counter::$counter);
                }
            )*

            /// Reads every counter.
            pub(crate) fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($($field: 0 $(+ self.sum(Counter::$sum))+,)*)*
                }
            }
        }

        /// A point-in-time copy of a layer's counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct MetricsSnapshot {
            $($($(#[doc = $doc])* pub $field: u64,)*)*
        }

        /// Every exported series, in the order of the Prometheus text.
        const SERIES: &[Series] = &[$($(
            Series {
                name: $name,
                label: metrics_table!(@label $({$key = $value})?),
                help: $help,
                sums: &[$(Counter::$sum),+],
            },
        )*)*];

        impl MetricsSnapshot {
            /// The value of each of [`SERIES`], in order.
            fn values(&self) -> [u64; SERIES.len()] {
                [$($(self.$field),*),*]
            }
        }
    };
    (@label) => { None };
    (@label {$key:literal = $value:literal}) => { Some(($key, $value)) };
}

/// One exported series: a metric name, at most one label, and the counters it adds up.
struct Series {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
    help: &'static str,
    /// Read by the `metrics` facade (and the tests); the snapshot sums through its own fields.
    #[cfg_attr(not(any(feature = "metrics", test)), allow(dead_code))]
    sums: &'static [Counter],
}

metrics_table! {
    counters: [
        AcceptedCached => accepted_cached,
        AcceptedResolved => accepted_resolved,
        Anonymous => anonymous,
        Missing => missing,
        Malformed => malformed,
        RefusedCached => refused_cached,
        RefusedResolved => refused_resolved,
        ExpiredCached => expired_cached,
        ExpiredResolved => expired_resolved,
        Unavailable => unavailable,
        RateLimitedCached => rate_limited_cached,
        RateLimitedResolved => rate_limited_resolved,
        LimiterFailures => limiter_failed,
        AddressRefusedCached => address_refused_cached,
        AddressRefusedResolved => address_refused_resolved,
        QuotaExceededCached => quota_exceeded_cached,
        QuotaExceededResolved => quota_exceeded_resolved,
        CacheMisses => cache_misses,
        ResolverCalls => resolver_called,
        ResolverFailures => resolver_failed,
        CoalescedLookups => coalesced,
        LookupsShed => lookups_shed,
        Invalidations => invalidated,
        UsageDropped => usage_dropped,
        StreamsEnded => stream_ended,
    ],
    series: [
        "api_key_requests_total" ("Requests seen by the API-key layer, by outcome.") {
            /// Requests let through with a valid key.
            accepted {"outcome" = "accepted"} = AcceptedCached | AcceptedResolved;
            /// Requests let through without a key (optional mode).
            anonymous {"outcome" = "anonymous"} = Anonymous;
            /// Requests refused for having no key.
            missing {"outcome" = "missing"} = Missing;
            /// Requests refused for a malformed, unknown, inactive or rotated-away key.
            invalid {"outcome" = "invalid"} = Malformed | RefusedCached | RefusedResolved;
            /// Requests refused for an expired key (or the old key of a rotation after its
            /// grace period).
            expired {"outcome" = "expired"} = ExpiredCached | ExpiredResolved;
            /// Requests answered 503: the resolver failed, timed out or panicked, or was too
            /// busy, or the rate limiter failed under `LimiterFailure::Refuse`.
            unavailable {"outcome" = "unavailable"} = Unavailable;
            /// Requests refused with a valid key over its rate limit.
            rate_limited {"outcome" = "rate_limited"} = RateLimitedCached | RateLimitedResolved;
            /// Requests refused with a valid key used from an address its allowlist excludes
            /// (or from an address the layer could not tell).
            address_not_allowed {"outcome" = "address_not_allowed"} = AddressRefusedCached | AddressRefusedResolved;
            /// Requests refused with a valid key over its quota for the period.
            quota_exceeded {"outcome" = "quota_exceeded"} = QuotaExceededCached | QuotaExceededResolved;
        }
        "api_key_cache_lookups_total" ("Cache lookups for well-formed keys, by result.") {
            /// Well-formed keys answered from the cache (accepted or refused).
            cache_hits {"result" = "hit"} = AcceptedCached | RefusedCached | ExpiredCached | RateLimitedCached | AddressRefusedCached | QuotaExceededCached;
            /// Well-formed keys not in the cache.
            cache_misses {"result" = "miss"} = CacheMisses;
        }
        "api_key_resolver_calls_total" ("Resolver calls started.") {
            /// Resolver calls started.
            resolver_calls = ResolverCalls;
        }
        "api_key_resolver_failures_total" ("Resolver calls that failed, timed out or panicked.") {
            /// Resolver calls that failed, timed out or panicked.
            resolver_failures = ResolverFailures;
        }
        "api_key_coalesced_lookups_total" ("Cache misses that joined a resolver call already in progress.") {
            /// Cache misses that joined a resolver call already running for the same key.
            coalesced_lookups = CoalescedLookups;
        }
        "api_key_lookups_shed_total" ("Cache misses answered 503 because too many resolver calls were running.") {
            /// Cache misses answered 503 because too many resolver calls were running.
            lookups_shed = LookupsShed;
        }
        "api_key_invalidations_total" ("Cache invalidations received.") {
            /// Invalidations received.
            invalidations = Invalidations;
        }
        "api_key_rate_limiter_failures_total" ("Rate-limit checks the limiter could not answer (its backend unreachable or too slow).") {
            /// Rate-limit checks the limiter could not answer; the layer let the request through
            /// or answered 503, as its `LimiterFailure` policy says.
            rate_limiter_failures = LimiterFailures;
        }
        "api_key_usage_dropped_total" ("Key uses and hourly counts not recorded because the usage queue was full.") {
            /// Entries the usage recorder dropped because its queue was full: a key's use not
            /// queued, or a key's counts of one hour that failed flushes gave back.
            usage_dropped = UsageDropped;
        }
        "api_key_streams_ended_total" ("Open responses the layer ended because their key no longer let them through.") {
            /// Open responses (streams, long downloads) ended because their key was revoked,
            /// rotated away, deleted or expired, or a policy change would now refuse them.
            streams_ended = StreamsEnded;
        }
    ],
}

/// Threads spread over this many copies of the counters, so that worker threads don't
/// contend for one cache line on every request.
const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

/// The live counters of one layer.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
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
}

impl MetricsSnapshot {
    /// The counters in the Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut previous = "";
        for (series, value) in SERIES.iter().zip(self.values()) {
            if series.name != previous {
                let _ = writeln!(out, "# HELP {} {}", series.name, series.help);
                let _ = writeln!(out, "# TYPE {} counter", series.name);
                previous = series.name;
            }
            match series.label {
                Some((key, label)) => {
                    let _ = writeln!(out, "{}{{{key}=\"{label}\"}} {value}", series.name);
                }
                None => {
                    let _ = writeln!(out, "{} {value}", series.name);
                }
            }
        }
        out
    }
}

/// The same counters through the `metrics` facade, with the names and labels of
/// [`MetricsSnapshot::to_prometheus`]. Handles are registered when the layer is built, so
/// install the recorder before building it.
#[cfg(feature = "metrics")]
mod facade {
    use metrics::{Counter as Handle, counter};

    use super::{COUNTERS, Counter, SERIES};

    /// For each internal counter, the handles of the series it adds to.
    #[derive(Debug)]
    pub(super) struct Handles([Vec<Handle>; COUNTERS]);

    impl Default for Handles {
        fn default() -> Self {
            let mut handles: [Vec<Handle>; COUNTERS] = std::array::from_fn(|_| Vec::new());
            for series in SERIES {
                let handle = match series.label {
                    Some((key, value)) => counter!(series.name, key => value),
                    None => counter!(series.name),
                };
                for counter in series.sums {
                    handles[*counter as usize].push(handle.clone());
                }
            }
            Self(handles)
        }
    }

    impl Handles {
        pub(super) fn bump(&self, counter: Counter) {
            for handle in &self.0[counter as usize] {
                handle.increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_feeds_a_series_and_the_text_lists_every_series_once() {
        for counter in 0..COUNTERS {
            assert!(
                SERIES
                    .iter()
                    .any(|series| series.sums.iter().any(|c| *c as usize == counter)),
                "counter {counter} is exported nowhere"
            );
        }
        let text = MetricsSnapshot::default().to_prometheus();
        for series in SERIES {
            assert_eq!(
                text.matches(&format!("# HELP {} ", series.name)).count(),
                1,
                "{}",
                series.name
            );
        }
        let samples = text.lines().filter(|line| !line.starts_with('#')).count();
        assert_eq!(samples, SERIES.len());
    }

    #[test]
    fn a_cache_hit_bumps_one_counter_and_shows_as_accepted_and_hit() {
        let metrics = Metrics::default();
        metrics.accepted_cached();
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.accepted, snapshot.cache_hits), (1, 1));
        let text = snapshot.to_prometheus();
        assert!(text.contains("api_key_requests_total{outcome=\"accepted\"} 1"));
        assert!(text.contains("api_key_cache_lookups_total{result=\"hit\"} 1"));
    }
}
