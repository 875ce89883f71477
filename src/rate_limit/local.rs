//! [`LocalLimiter`]: budgets kept in this process, in 64 locked shards of one number each.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
#[cfg(feature = "test-util")]
use std::time::Duration;
use std::time::Instant;

use super::gcra::{self, Spent, Tat};
use super::{Acquire, BudgetKey, RateLimit, RateLimiter, Verdict};
use crate::hashing::DigestHasher;
use crate::sync::lock;

const SHARDS: usize = 64;
/// A shard is swept of idle budgets when it grows past this many (and then past twice what
/// the sweep left).
const FIRST_SWEEP: usize = 1024;

/// Budgets kept in this process's memory: the default [`RateLimiter`].
///
/// A check is one short lock on one of 64 shards and one hash-map look-up; no allocation
/// once a key has a budget. Memory is bounded by the keys in use: a budget that has fully
/// refilled is the same as none, so idle keys are swept out as the map grows. Clones share the
/// budgets; separate `LocalLimiter`s (or processes) count separately, see
/// `rate_limit::redis::RedisLimiter` (feature `redis`) for a budget shared by a fleet.
///
/// ```
/// use tower_api_key::policy::RateLimit;
/// use tower_api_key::rate_limit::{Acquire, BudgetKey, LocalLimiter, RateLimiter, Verdict};
///
/// let limiter = LocalLimiter::new();
/// let limit = RateLimit::new(2, 60)?;
/// let key = BudgetKey::new(7);
/// let allowed = |acquire| matches!(acquire, Acquire::Ready(Verdict::Allowed(_)));
/// assert!(allowed(limiter.acquire(key, limit)));
/// assert!(allowed(limiter.acquire(key, limit)));
/// assert!(!allowed(limiter.acquire(key, limit)));
/// # Ok::<(), tower_api_key::policy::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct LocalLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Clock,
    shards: Box<[Mutex<Shard>]>,
}

/// Where the limiter reads the time: nanoseconds since its origin.
enum Clock {
    /// The monotonic clock, counted from this instant.
    Monotonic(Instant),
    /// The time since any fixed origin, as a test sets it ([`LocalLimiter::with_clock`]).
    #[cfg(feature = "test-util")]
    Given(Box<dyn Fn() -> Duration + Send + Sync>),
}

impl Clock {
    fn now(&self) -> u64 {
        let since = match self {
            Self::Monotonic(origin) => origin.elapsed(),
            #[cfg(feature = "test-util")]
            Self::Given(now) => now(),
        };
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[derive(Default)]
struct Shard {
    /// Each budget's theoretical arrival time (see the `gcra` module).
    tats: HashMap<BudgetKey, Tat, DigestHasher>,
    /// The size at which the next sweep runs.
    sweep_at: usize,
}

impl LocalLimiter {
    /// No budget spent yet.
    pub fn new() -> Self {
        Self::reading(Clock::Monotonic(Instant::now()))
    }

    /// No budget spent yet, on a clock the caller moves: `now` gives the time since any fixed
    /// origin, and must never go backwards. A test moves it past a window instead of sleeping
    /// through it.
    ///
    /// For tests (feature `test-util`): not part of the stable API.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::Duration;
    /// use tower_api_key::policy::RateLimit;
    /// use tower_api_key::rate_limit::{Acquire, BudgetKey, LocalLimiter, RateLimiter, Verdict};
    ///
    /// let seconds = Arc::new(AtomicU64::new(0));
    /// let read = Arc::clone(&seconds);
    /// let limiter = LocalLimiter::with_clock(move || Duration::from_secs(read.load(Ordering::SeqCst)));
    /// let (key, limit) = (BudgetKey::new(7), RateLimit::new(1, 60)?);
    /// let allowed = |acquire| matches!(acquire, Acquire::Ready(Verdict::Allowed(_)));
    /// assert!(allowed(limiter.acquire(key, limit)));
    /// assert!(!allowed(limiter.acquire(key, limit)));
    /// seconds.store(60, Ordering::SeqCst); // a minute later, at once
    /// assert!(allowed(limiter.acquire(key, limit)));
    /// # Ok::<(), tower_api_key::policy::PolicyError>(())
    /// ```
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn with_clock(now: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        Self::reading(Clock::Given(Box::new(now)))
    }

    fn reading(clock: Clock) -> Self {
        Self {
            shared: Arc::new(Shared {
                clock,
                shards: (0..SHARDS)
                    .map(|_| {
                        Mutex::new(Shard {
                            tats: HashMap::with_hasher(DigestHasher::default()),
                            sweep_at: FIRST_SWEEP,
                        })
                    })
                    .collect(),
            }),
        }
    }

    /// Budgets held now, idle ones not yet swept included.
    pub fn budgets(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| lock(shard).tats.len())
            .sum()
    }

    /// Spends one request of `key`'s budget at `now` (nanoseconds since the clock's origin).
    fn spend(&self, key: BudgetKey, limit: RateLimit, now: u64) -> Verdict {
        let mut shard = lock(&self.shared.shards[key.shard(SHARDS)]);
        let stored = shard.tats.get_mut(&key);
        match gcra::spend(
            stored.as_deref().copied().unwrap_or_default(),
            now,
            limit,
            1,
        ) {
            Spent::Allowed { tat, budget } => {
                match stored {
                    Some(stored) => *stored = tat,
                    None => shard.insert(key, tat, now),
                }
                Verdict::Allowed(budget)
            }
            Spent::Limited(budget) => Verdict::Limited(budget),
        }
    }

    fn now(&self) -> u64 {
        self.shared.clock.now()
    }
}

impl Shard {
    /// Adds a budget, sweeping out the full (idle) ones first if the shard has grown.
    fn insert(&mut self, key: BudgetKey, tat: Tat, now: u64) {
        if self.tats.len() >= self.sweep_at {
            self.tats.retain(|_, tat| tat.at > now);
            self.sweep_at = (self.tats.len() * 2).max(FIRST_SWEEP);
        }
        self.tats.insert(key, tat);
    }
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter for LocalLimiter {
    fn acquire(&self, key: BudgetKey, limit: RateLimit) -> Acquire {
        Acquire::Ready(self.spend(key, limit, self.now()))
    }
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("budgets", &self.budgets())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn allowed(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Allowed(_))
    }

    #[test]
    fn keys_have_budgets_of_their_own() {
        let limiter = LocalLimiter::new();
        let limit = RateLimit::new(5, 2).unwrap();
        let (a, b) = (BudgetKey::new(1), BudgetKey::new(2));
        let spent_a = (0..12)
            .filter(|_| allowed(limiter.spend(a, limit, SECOND)))
            .count();
        assert_eq!(spent_a, 5);
        assert!(allowed(limiter.spend(b, limit, SECOND)));
        // After the window, `a` has its whole budget again.
        let later = (0..12)
            .filter(|_| allowed(limiter.spend(a, limit, 3 * SECOND)))
            .count();
        assert_eq!(later, 5);
    }

    #[test]
    fn idle_budgets_are_swept_as_the_map_grows() {
        let limiter = LocalLimiter::new();
        let limit = RateLimit::new(10, 1).unwrap();
        // Generations of distinct keys, each used once, 10 s apart: by the time a generation
        // comes, the earlier ones have refilled and are swept out as the shards grow, so the
        // map holds about two generations, never all of them.
        let generation = SHARDS * FIRST_SWEEP * 2;
        for round in 0..6 {
            let now = (1 + 10 * round as u64) * SECOND;
            for id in round * generation..(round + 1) * generation {
                limiter.spend(BudgetKey::new(id as u128), limit, now);
            }
        }
        assert!(
            limiter.budgets() <= 3 * generation,
            "{} budgets held after 6 generations of {generation}",
            limiter.budgets()
        );
    }
}
