//! The fail-fast breaker of a Redis client (the rate limiter, the quota counter): after 3
//! calls in a row fail because Redis can't be reached, calls fail at once for 250 ms (the
//! client answers without Redis), and then one call probes Redis again. It also logs every
//! failure, at `warn` at most once per 10 seconds.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::{RedisError, RedisResult};

use crate::sync::lock;

/// Failures are logged at `warn` at most this often (the others at `debug`).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// After this many failed calls in a row, verdicts are Unavailable at once (no wait)...
const FAIL_FAST_AFTER: u32 = 3;
/// ... for this long; then one call tries Redis again, and the first success ends it.
const FAIL_FAST_FOR: Duration = Duration::from_millis(250);

/// Why a script call gave no answer.
enum Failure {
    Timeout,
    Redis(RedisError),
}

impl Failure {
    /// Whether the failure says Redis can't be reached (rather than refusing one call).
    fn is_outage(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Redis(error) => error.fmt(f),
        }
    }
}

/// Counts failed calls in a row, fails fast after [`FAIL_FAST_AFTER`] of them, and rations
/// the warnings.
pub(crate) struct Breaker {
    /// Who calls Redis, for the logs ("redis rate limiter").
    what: &'static str,
    /// What happens while Redis doesn't answer, for the warning.
    meanwhile: &'static str,
    last_warning: Mutex<Option<Instant>>,
    /// Failed calls in a row.
    failures: AtomicU32,
    /// While failing fast: until when, in nanoseconds since `origin` (0: not failing fast).
    retry_at: AtomicU64,
    origin: Instant,
}

impl Breaker {
    /// Closed: calls go through. `what` names the caller in the logs, `meanwhile` says what
    /// happens while Redis doesn't answer.
    pub(crate) fn new(what: &'static str, meanwhile: &'static str) -> Self {
        Self {
            what,
            meanwhile,
            last_warning: Mutex::new(None),
            failures: AtomicU32::new(0),
            retry_at: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn nanos(&self) -> u64 {
        // + 1: zero means "not failing fast".
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether to call Redis: not while failing fast, except for one call (the probe) once
    /// the pause is over, which pushes the pause on by one `timeout` (a call's) while it runs.
    fn may_call(&self, timeout: Duration) -> bool {
        let retry_at = self.retry_at.load(Ordering::Acquire);
        if retry_at == 0 {
            return true;
        }
        let now = self.nanos();
        if now < retry_at {
            return false;
        }
        let probe_until = now.saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        self.retry_at
            .compare_exchange(retry_at, probe_until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A call to the Redis at `endpoint` answered: the failures in a row, and failing fast,
    /// end.
    fn succeeded(&self, endpoint: &str) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            if self.retry_at.swap(0, Ordering::AcqRel) != 0 {
                tracing::info!(redis = %endpoint, "{} answers again", self.what);
            }
        }
    }

    /// Counts a failed call to the Redis at `endpoint` (failing fast after
    /// [`FAIL_FAST_AFTER`] in a row) and logs it: at `warn` once per [`WARN_EVERY`], else at
    /// `debug`.
    fn failed(&self, endpoint: &str, failure: &Failure) {
        // Only an unreachable Redis counts towards failing fast: an error about one key (a
        // value of the wrong type under the namespace) must not stop the others.
        if failure.is_outage()
            && self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAIL_FAST_AFTER
        {
            let pause = u64::try_from(FAIL_FAST_FOR.as_nanos()).unwrap_or(u64::MAX);
            self.retry_at
                .store(self.nanos().saturating_add(pause), Ordering::Release);
        }
        let warn = {
            let mut last = lock(&self.last_warning);
            let due = last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if warn {
            tracing::warn!(
                redis = %endpoint,
                error = %failure,
                "{} unavailable: {}",
                self.what,
                self.meanwhile
            );
        } else {
            tracing::debug!(redis = %endpoint, error = %failure, "{} call failed", self.what);
        }
    }

    /// Runs `call` to the Redis at `endpoint` within `timeout`, unless failing fast: its
    /// answer, or `None` (counted and logged) if it failed, timed out or wasn't tried.
    pub(crate) async fn call<T>(
        &self,
        endpoint: &str,
        timeout: Duration,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        if !self.may_call(timeout) {
            return None;
        }
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(answer)) => {
                self.succeeded(endpoint);
                Some(answer)
            }
            Ok(Err(error)) => {
                self.failed(endpoint, &Failure::Redis(error));
                None
            }
            Err(_) => {
                self.failed(endpoint, &Failure::Timeout);
                None
            }
        }
    }
}
