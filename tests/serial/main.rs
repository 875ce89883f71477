//! The tests that measure the process they run in, in a binary of their own whose tests run
//! one at a time (each holds `support::exclusive::exclusive()` throughout):
//!
//! - `floods` asserts bounds on this process's resident memory (`/proc/self/status`) and on
//!   how long shed requests wait;
//! - `churn` asserts a minimum of requests checked in its time, and keeps both cores busy;
//! - `timing` compares the medians of two kinds of refusal, a few microseconds each.
//!
//! Any other test running beside them, in this process or on the same cores, would move those
//! figures; and churn running beside latency-bounded tests would move theirs. `cargo test`
//! runs test binaries one after another, so here each of these tests has the process, and the
//! machine's share this suite gets, to itself. (The same lock in `tests/it` would not do: there,
//! the tests that don't take it still run beside those that do.) Every other integration test is
//! in `tests/it/`.

/// The parts of `tests/it/support` these tests use.
#[path = "../it/support"]
mod support {
    pub(crate) mod exclusive;
    pub(crate) mod hooks;
    pub(crate) mod keys;
    pub(crate) mod rng;
    pub(crate) mod service;
}

mod churn;
mod floods;
mod timing;
