//! Local-first mode of the Redis limiter: a process leases a few requests of a key's budget
//! in one script call and spends them without a round trip. Concurrent requests for a key
//! share one lease request, and a key Redis refused is refused locally until a request fits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared as SharedFuture};

use super::Inner;
use crate::hashing::DigestHasher;
use crate::rate_limit::{Budget, BudgetKey, RateLimit, Verdict};
use crate::sync::lock;

/// Local-first lease shards.
const SHARDS: usize = 16;
/// A shard is swept of finished leases when it grows past this many (and then past twice
/// what the sweep left).
const FIRST_SWEEP: usize = 256;

/// A lease request in flight, shared by every request waiting for it.
pub(super) type Fetch = SharedFuture<BoxFuture<'static, Fetched>>;

/// How a lease request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetched {
    /// Redis answered; the lease (or refusal) is in place.
    Done,
    /// Redis didn't answer in time.
    Failed,
}

/// What [`Leases::take`] could do without Redis.
pub(super) enum Local {
    Decided(Verdict),
    Wait(Fetch),
}

/// Local-first mode's state: each key's lease or refusal, in shards by budget key.
pub(super) struct Leases {
    pub(super) max_lease: u32,
    shards: Box<[Mutex<Shard>]>,
}

struct Shard {
    entries: HashMap<BudgetKey, Entry, DigestHasher>,
    sweep_at: usize,
}

/// One key's local state.
struct Entry {
    /// The limit the state is for; a request under another limit starts afresh.
    limit: RateLimit,
    state: State,
    /// The lease request in flight, with its number.
    fetching: Option<(u64, Fetch)>,
    /// The number of the next lease request.
    next_fetch: u64,
    /// Requests waiting for a lease: the next lease request asks for at least as many.
    waiting: u32,
}

enum State {
    Empty,
    /// Requests leased from Redis, spendable until `expires`.
    Leased {
        tokens: u32,
        expires: Instant,
        /// When Redis answered, and what it said was left after the lease.
        at: Instant,
        remaining: u32,
        reset: Duration,
    },
    /// Redis refused: no request fits before `until`.
    Refused {
        until: Instant,
        at: Instant,
        reset: Duration,
    },
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.fetching.is_none()
            && self.waiting == 0
            && match self.state {
                State::Empty => true,
                State::Leased {
                    tokens, expires, ..
                } => tokens == 0 || expires <= now,
                State::Refused { until, .. } => until <= now,
            }
    }
}

impl Leases {
    pub(super) fn new(max_lease: u32) -> Self {
        Self {
            max_lease,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::with_hasher(DigestHasher::default()),
                        sweep_at: FIRST_SWEEP,
                    })
                })
                .collect(),
        }
    }

    fn lease_size(&self, limit: RateLimit) -> u32 {
        (limit.requests() / 10).min(self.max_lease).max(1)
    }

    /// How long a lease of `size` may be spent: the time Redis takes to refill it, at least a
    /// second, at most the window.
    fn lifetime(limit: RateLimit, size: u32) -> Duration {
        let window = limit.window();
        (window / limit.requests() * size).clamp(Duration::from_secs(1), window)
    }

    fn shard(&self, key: BudgetKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[key.shard(SHARDS)])
    }

    /// Spends one request of `key`'s lease, or refuses it as Redis last said; else returns
    /// the lease request to wait for (starting one if none is in flight), counting the caller
    /// as waiting unless it already is (`waiter`).
    pub(super) fn take(
        &self,
        inner: &Arc<Inner>,
        key: BudgetKey,
        limit: RateLimit,
        now: Instant,
        waiter: bool,
    ) -> Local {
        let mut shard = self.shard(key);
        if !shard.entries.contains_key(&key) && shard.entries.len() >= shard.sweep_at {
            shard.entries.retain(|_, entry| !entry.idle(now));
            shard.sweep_at = (shard.entries.len() * 2).max(FIRST_SWEEP);
        }
        let entry = shard.entries.entry(key).or_insert_with(|| Entry {
            limit,
            state: State::Empty,
            fetching: None,
            next_fetch: 0,
            waiting: 0,
        });
        if entry.limit != limit {
            entry.limit = limit;
            entry.state = State::Empty;
            entry.fetching = None;
        }
        match &mut entry.state {
            State::Leased {
                tokens,
                expires,
                at,
                remaining,
                reset,
            } if *tokens > 0 && now < *expires => {
                *tokens -= 1;
                let budget = Budget::new(
                    limit,
                    remaining.saturating_add(*tokens),
                    reset.saturating_sub(now - *at),
                    Duration::ZERO,
                );
                return Local::Decided(Verdict::Allowed(budget));
            }
            State::Refused { until, at, reset } if now < *until => {
                let budget = Budget::new(limit, 0, reset.saturating_sub(now - *at), *until - now);
                return Local::Decided(Verdict::Limited(budget));
            }
            _ => entry.state = State::Empty,
        }
        if !waiter {
            entry.waiting = entry.waiting.saturating_add(1);
        }
        if let Some((_, fetch)) = &entry.fetching {
            return Local::Wait(fetch.clone());
        }
        let number = entry.next_fetch;
        entry.next_fetch += 1;
        // Enough for every request waiting now (they spend it at once), and a lease.
        let cost = self
            .lease_size(limit)
            .max(entry.waiting)
            .min(limit.requests());
        let fetch = Arc::clone(inner)
            .fetch(key, limit, cost, number)
            .boxed()
            .shared();
        entry.fetching = Some((number, fetch.clone()));
        // Run it to the end even if every request waiting for it goes away.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(fetch.clone());
        }
        Local::Wait(fetch)
    }
}

impl Inner {
    /// Lease request number `number`: leases `cost` requests (or what is left) of `key`'s
    /// budget and puts the lease, or the refusal, in place.
    async fn fetch(
        self: Arc<Self>,
        key: BudgetKey,
        limit: RateLimit,
        cost: u32,
        number: u64,
    ) -> Fetched {
        let spent = self.spend(key, limit, cost).await;
        let Some(leases) = &self.leases else {
            return Fetched::Failed;
        };
        let now = Instant::now();
        let mut shard = leases.shard(key);
        let Some(entry) = shard.entries.get_mut(&key) else {
            return Fetched::Done;
        };
        if !matches!(entry.fetching, Some((current, _)) if current == number) {
            // Superseded (the key's limit changed meanwhile): its answer is for another limit.
            return Fetched::Done;
        }
        entry.fetching = None;
        let Some(spent) = spent else {
            return Fetched::Failed;
        };
        entry.state = if spent.granted > 0 {
            State::Leased {
                tokens: spent.granted,
                expires: now + Leases::lifetime(limit, leases.lease_size(limit)),
                at: now,
                remaining: spent.remaining,
                reset: spent.reset,
            }
        } else {
            State::Refused {
                until: now + spent.retry_after,
                at: now,
                reset: spent.reset,
            }
        };
        Fetched::Done
    }
}

/// A request waiting for a lease, counted in its key's entry while it waits.
pub(super) struct Waiter {
    pub(super) inner: Arc<Inner>,
    pub(super) key: BudgetKey,
}

impl Waiter {
    /// Waits for `fetch`, then spends from the lease it left (fetching again if other
    /// requests spent it first). The caller bounds it with the limiter's timeout.
    pub(super) async fn wait(self, limit: RateLimit, mut fetch: Fetch) -> Verdict {
        let Some(leases) = &self.inner.leases else {
            return Verdict::Unavailable;
        };
        loop {
            if fetch.await == Fetched::Failed {
                return Verdict::Unavailable;
            }
            match leases.take(&self.inner, self.key, limit, Instant::now(), true) {
                Local::Decided(verdict) => return verdict,
                Local::Wait(next) => fetch = next,
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(leases) = &self.inner.leases {
            if let Some(entry) = leases.shard(self.key).entries.get_mut(&self.key) {
                entry.waiting = entry.waiting.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::redis::DEFAULT_MAX_LEASE;

    fn limit(requests: u32, per_seconds: u32) -> RateLimit {
        RateLimit::new(requests, per_seconds).unwrap()
    }

    #[test]
    fn a_lease_is_a_tenth_of_the_limit_at_most_and_one_at_least() {
        let leases = Leases::new(DEFAULT_MAX_LEASE);
        assert_eq!(leases.lease_size(limit(5, 2)), 1);
        assert_eq!(leases.lease_size(limit(50, 60)), 5);
        assert_eq!(leases.lease_size(limit(100, 60)), 10);
        assert_eq!(leases.lease_size(limit(100_000, 1)), 10);
        assert_eq!(Leases::new(1).lease_size(limit(100_000, 1)), 1);
    }

    #[test]
    fn a_lease_lives_as_long_as_its_refill_within_a_second_and_the_window() {
        // 100 per minute: 0.6 s a request, 6 s for ten.
        assert_eq!(Leases::lifetime(limit(100, 60), 10), Duration::from_secs(6));
        assert_eq!(Leases::lifetime(limit(1000, 1), 10), Duration::from_secs(1));
        assert_eq!(Leases::lifetime(limit(10, 60), 10), Duration::from_secs(60));
    }
}
