//! How long a feed takes to deliver: each heartbeat's round trip, from just before it is sent
//! until the channel hands it back, in a histogram with fixed buckets.
//!
//! A change committed when a heartbeat is sent reaches this process no later than that
//! heartbeat does (the channel delivers in order), so the round trip bounds how long a change
//! made elsewhere takes to be in force here: what "immediately" means on a given fleet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::FeedStatus;

/// Upper bounds, in seconds, of the buckets of [`DeliveryHistogram`] (each bucket counts the
/// round trips at most its bound; Prometheus adds `+Inf`).
pub const DELIVERY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The name of the histogram, in the Prometheus text and through the `metrics` facade.
const DELIVERY: &str = "api_key_feed_delivery_seconds";
const SUBSCRIBED: &str = "api_key_feed_subscribed";
const OUTAGES: &str = "api_key_feed_outages_total";
const FOREIGN: &str = "api_key_feed_foreign_heartbeats_total";

/// The live histogram of one feed's runner, shared with its [`FeedTask`](super::FeedTask).
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// Round trips per bucket, not cumulative; the last one counts those above every bound.
    buckets: [AtomicU64; DELIVERY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    #[cfg(feature = "metrics")]
    facade: facade::Handles,
}

impl Delivery {
    /// Counts one heartbeat's round trip.
    pub(super) fn record(&self, round_trip: Duration) {
        let seconds = round_trip.as_secs_f64();
        let bucket = DELIVERY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DELIVERY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(round_trip.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.facade.delivery.record(seconds);
    }

    /// A copy of the histogram, its buckets cumulative as Prometheus counts them.
    pub(super) fn snapshot(&self) -> DeliveryHistogram {
        let mut below = 0;
        let mut buckets = [0; DELIVERY_BUCKETS.len()];
        for (cumulative, bucket) in buckets.iter_mut().zip(&self.buckets) {
            below += bucket.load(Ordering::Relaxed);
            *cumulative = below;
        }
        let above = self.buckets[DELIVERY_BUCKETS.len()].load(Ordering::Relaxed);
        DeliveryHistogram {
            buckets,
            count: below + above,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Reports a change of `status` to the `metrics` facade (nothing without the feature).
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]
    pub(super) fn status_changed(&self, _before: &FeedStatus, _after: &FeedStatus) {
        #[cfg(feature = "metrics")]
        self.facade.status_changed(_before, _after);
    }
}

/// A copy of a feed's delivery-delay histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeliveryHistogram {
    /// For each bound of [`DELIVERY_BUCKETS`], how many round trips took at most that long.
    pub buckets: [u64; DELIVERY_BUCKETS.len()],
    /// How many heartbeats came back (a heartbeat that never does is an outage instead).
    pub count: u64,
    /// The sum of their round trips.
    pub sum: Duration,
}

/// What a feed reports for monitoring, from [`FeedTask::metrics`](super::FeedTask::metrics):
/// its status and how long its heartbeats take to come back.
///
/// ```
/// use tower_api_key::feed::FeedMetrics;
///
/// let text = FeedMetrics::default().to_prometheus();
/// assert!(text.contains("api_key_feed_delivery_seconds_bucket{le=\"0.005\"} 0"));
/// assert!(text.contains("api_key_feed_delivery_seconds_count 0"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FeedMetrics {
    /// What the feed is doing, as [`FeedTask::status`](super::FeedTask::status) says.
    pub status: FeedStatus,
    /// Each heartbeat's round trip, from just before it was sent until it came back through
    /// the channel.
    pub delivery: DeliveryHistogram,
}

impl FeedMetrics {
    /// The histogram `api_key_feed_delivery_seconds` and the gauge and counters
    /// `api_key_feed_subscribed`, `api_key_feed_outages_total` and
    /// `api_key_feed_foreign_heartbeats_total`, in the Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let delivery = &self.delivery;
        let _ = writeln!(
            out,
            "# HELP {DELIVERY} Round trip of the change feed's heartbeats through its channel, \
             which bounds how long another process's change takes to arrive."
        );
        let _ = writeln!(out, "# TYPE {DELIVERY} histogram");
        for (bound, count) in DELIVERY_BUCKETS.iter().zip(delivery.buckets) {
            let _ = writeln!(out, "{DELIVERY}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{DELIVERY}_bucket{{le=\"+Inf\"}} {}", delivery.count);
        let _ = writeln!(out, "{DELIVERY}_sum {}", delivery.sum.as_secs_f64());
        let _ = writeln!(out, "{DELIVERY}_count {}", delivery.count);
        let status = &self.status;
        let series = [
            (
                SUBSCRIBED,
                "gauge",
                "Whether the change feed is subscribed (1): if not, caches trust nothing.",
                u64::from(status.subscribed),
            ),
            (
                OUTAGES,
                "counter",
                "Times the change feed lost its subscription.",
                status.outages,
            ),
            (
                FOREIGN,
                "counter",
                "Heartbeats the change feed received that another process sent.",
                status.foreign_heartbeats,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

/// The same series through the `metrics` facade, registered when the feed is spawned (install
/// the recorder before spawning it).
#[cfg(feature = "metrics")]
mod facade {
    use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

    use super::{DELIVERY, FOREIGN, FeedStatus, OUTAGES, SUBSCRIBED};

    #[derive(Debug)]
    pub(super) struct Handles {
        pub(super) delivery: Histogram,
        subscribed: Gauge,
        outages: Counter,
        foreign: Counter,
    }

    impl Default for Handles {
        fn default() -> Self {
            Self {
                delivery: histogram!(DELIVERY),
                subscribed: gauge!(SUBSCRIBED),
                outages: counter!(OUTAGES),
                foreign: counter!(FOREIGN),
            }
        }
    }

    impl Handles {
        pub(super) fn status_changed(&self, before: &FeedStatus, after: &FeedStatus) {
            self.subscribed.set(f64::from(u8::from(after.subscribed)));
            self.outages
                .increment(after.outages.saturating_sub(before.outages));
            self.foreign.increment(
                after
                    .foreign_heartbeats
                    .saturating_sub(before.foreign_heartbeats),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_fall_in_the_first_bucket_that_holds_them_and_render_cumulatively() {
        let delivery = Delivery::default();
        for micros in [100, 500, 700, 4_000, 7_000_000] {
            delivery.record(Duration::from_micros(micros));
        }
        let snapshot = delivery.snapshot();
        assert_eq!(snapshot.count, 5);
        assert_eq!(snapshot.sum, Duration::from_micros(7_005_300));
        // le 0.0005 holds 100 µs and exactly 500 µs; le 0.001 adds 700 µs; le 0.005 adds 4 ms.
        assert_eq!(&snapshot.buckets[..4], [2, 3, 3, 4]);
        assert_eq!(
            snapshot.buckets[DELIVERY_BUCKETS.len() - 1],
            4,
            "7 s is above 5 s"
        );

        let text = FeedMetrics {
            status: FeedStatus::default(),
            delivery: snapshot,
        }
        .to_prometheus();
        assert!(text.contains("api_key_feed_delivery_seconds_bucket{le=\"0.0005\"} 2\n"));
        assert!(text.contains("api_key_feed_delivery_seconds_bucket{le=\"5\"} 4\n"));
        assert!(text.contains("api_key_feed_delivery_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("api_key_feed_delivery_seconds_sum 7.0053\n"));
        assert!(text.contains("api_key_feed_delivery_seconds_count 5\n"));
        assert!(text.contains("api_key_feed_subscribed 0\n"));
        let buckets = text.matches("_bucket{").count();
        assert_eq!(buckets, DELIVERY_BUCKETS.len() + 1);
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn the_facade_sees_each_round_trip_and_the_status() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // Handles are registered when the feed is spawned: make them under the recorder.
        let delivery = metrics::with_local_recorder(&recorder, Delivery::default);
        delivery.record(Duration::from_millis(2));
        let before = FeedStatus::default();
        let after = FeedStatus {
            subscribed: true,
            outages: 1,
            foreign_heartbeats: 3,
            ..before
        };
        delivery.status_changed(&before, &after);

        let mut seen: Vec<(String, String)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let value = match value {
                    DebugValue::Counter(n) => n.to_string(),
                    DebugValue::Gauge(x) => x.to_string(),
                    DebugValue::Histogram(xs) => format!("{xs:?}"),
                };
                (key.key().name().to_owned(), value)
            })
            .collect();
        seen.sort();
        let expected = [
            (DELIVERY, "[0.002]"),
            (FOREIGN, "3"),
            (OUTAGES, "1"),
            (SUBSCRIBED, "1"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        assert_eq!(seen, expected);
    }
}
