//! The tests that measure the process they run in, in a binary of their own whose tests run
//! one at a time (each holds [`alone`] throughout):
//!
//! - `floods` asserts bounds on this process's resident memory (`/proc/self/status`) and on
//!   how long shed requests wait;
//! - `churn` asserts a minimum of requests checked in its time, and keeps both cores busy;
//! - `timing` compares the medians of two kinds of refusal, a few microseconds each.
//!
//! Any other test running beside them, in this process or on the same cores, would move those
//! figures; and churn running beside latency-bounded tests would move theirs. `cargo test`
//! runs test binaries one after another, so here each of these tests has the process, and the
//! machine's share this suite gets, to itself. Every other integration test is in `tests/it/`.

/// The parts of `tests/it/support` these tests use.
#[path = "../it/support"]
mod support {
    pub(crate) mod hooks;
    pub(crate) mod keys;
    pub(crate) mod rng;
    pub(crate) mod service;
}

mod churn;
mod floods;
mod timing;

/// Held by every test of this binary for its whole run: no two of them overlap.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other test of this binary runs, and keeps it so while the guard lives.
async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    ALONE.lock().await
}
