//! The integration tests, as one binary whose modules mirror `src/` and the transports.
//!
//! Three tests measure the process they run in (its memory, its latencies, its throughput)
//! and live in `tests/serial/` instead, a binary whose tests run one at a time.

mod support;

#[cfg(feature = "admin")]
mod admin;
mod cache;
mod demo;
mod hardening;
mod key;
mod last_used;
mod lifecycle;
#[cfg(feature = "metrics")]
mod metrics;
mod policy;
mod rate_limit;
mod store;
mod stream;
mod transport;
#[cfg(feature = "axum")]
mod usage;
