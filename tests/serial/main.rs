//! The tests that load the process they run in, in a binary of their own whose tests run one
//! at a time (each holds `support::exclusive::exclusive()` throughout):
//!
//! - `floods` asserts bounds on this process's resident memory (`/proc/self/status`), which
//!   any other test allocating beside it would move;
//! - `churn` keeps both cores busy for seconds;
//! - `logs` reads what the admin router logs, through a subscriber: tracing caches per
//!   process whether anyone listens to a log line, which a test installing its subscriber
//!   beside others can lose.
//!
//! None of them asserts a duration: each counts, and waits for conditions (what they once
//! timed is measured by the benches, see BENCHMARKS.md). `cargo test` runs test binaries one
//! after another, so here each of these tests has the process, and the machine's share this
//! suite gets, to itself. (The same lock in `tests/it` would not do: there, the tests that
//! don't take it still run beside those that do.) Every other integration test is in
//! `tests/it/`.

/// The parts of `tests/it/support` these tests use.
#[path = "../it/support"]
mod support {
    pub(crate) mod exclusive;
    pub(crate) mod hooks;
    // `forge` is for `tests/it` and the benches.
    #[allow(dead_code)]
    pub(crate) mod keys;
    #[cfg(feature = "admin")]
    pub(crate) mod panicking;
    pub(crate) mod rng;
    pub(crate) mod service;
    pub(crate) mod wait;
}

mod churn;
mod floods;
mod logs;
