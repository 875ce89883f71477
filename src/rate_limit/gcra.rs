//! The generic cell rate algorithm, as plain arithmetic on one number per budget: its
//! *theoretical arrival time* (TAT), the instant at which the budget would be full again.
//!
//! With `n` requests per window `w`, each request moves the TAT one interval `w / n` later
//! (from now, if the TAT is in the past). A request fits while the TAT it leaves is at most
//! `w` ahead of now: `n` requests fit at once, then one per interval. Times are nanoseconds on
//! any clock that only moves forward.

use std::time::Duration;

use super::{Budget, RateLimit};

/// The outcome of spending `cost` requests at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spent {
    /// It fits: store `tat`.
    Allowed { tat: u64, budget: Budget },
    /// It doesn't: store `tat` (the stored one, or less if it was left by a stricter limit).
    Limited { tat: u64, budget: Budget },
}

/// One request's interval under `limit`, in nanoseconds (at least 1).
pub(crate) fn interval(limit: RateLimit) -> u64 {
    (window(limit) / u64::from(limit.requests())).max(1)
}

fn window(limit: RateLimit) -> u64 {
    u64::from(limit.per_seconds()) * 1_000_000_000
}

/// Spends `cost` (at least 1) requests of the budget whose stored TAT is `tat` (0 for a budget
/// never used), at `now`.
pub(crate) fn spend(tat: u64, now: u64, limit: RateLimit, cost: u32) -> Spent {
    let interval = interval(limit);
    let capacity = interval * u64::from(limit.requests());
    // A TAT left by an earlier, stricter limit counts as a budget spent under this one.
    let start = tat.max(now).min(now.saturating_add(capacity));
    let next = start.saturating_add(interval * u64::from(cost.max(1)));
    let ahead = next - now;
    if ahead <= capacity {
        let remaining = (capacity - ahead) / interval;
        Spent::Allowed {
            tat: next,
            budget: Budget::new(
                limit,
                u32::try_from(remaining).unwrap_or(u32::MAX),
                Duration::from_nanos(ahead),
                Duration::ZERO,
            ),
        }
    } else {
        Spent::Limited {
            tat: start,
            budget: Budget::new(
                limit,
                u32::try_from(capacity.saturating_sub(start - now) / interval).unwrap_or(0),
                Duration::from_nanos(start - now),
                Duration::from_nanos(ahead - capacity),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limit(requests: u32, per_seconds: u32) -> RateLimit {
        RateLimit::new(requests, per_seconds).unwrap()
    }

    /// Sends `count` requests at `now`, returning how many were allowed and the TAT left.
    fn burst(mut tat: u64, now: u64, limit: RateLimit, count: u32) -> (u32, u64) {
        let mut allowed = 0;
        for _ in 0..count {
            match spend(tat, now, limit, 1) {
                Spent::Allowed { tat: next, .. } => {
                    tat = next;
                    allowed += 1;
                }
                Spent::Limited { tat: next, .. } => tat = next,
            }
        }
        (allowed, tat)
    }

    #[test]
    fn a_full_budget_is_spent_at_once_and_not_beyond() {
        let limit = limit(5, 2);
        let (allowed, _) = burst(0, 10 * SECOND, limit, 12);
        assert_eq!(allowed, 5);
    }

    #[test]
    fn the_budget_refills_one_interval_at_a_time_and_fully_after_the_window() {
        let limit = limit(5, 2);
        let now = 10 * SECOND;
        let (_, tat) = burst(0, now, limit, 5);
        // 0.4 s per request: nothing at 0.39 s, one at 0.4 s, all five after 2 s.
        assert_eq!(burst(tat, now + 390_000_000, limit, 5).0, 0);
        assert_eq!(burst(tat, now + 400_000_000, limit, 5).0, 1);
        assert_eq!(burst(tat, now + 2 * SECOND, limit, 6).0, 5);
    }

    #[test]
    fn remaining_counts_down_and_reset_grows() {
        let limit = limit(3, 3);
        let now = 5 * SECOND;
        let mut tat = 0;
        for expected in [2, 1, 0] {
            let Spent::Allowed { tat: next, budget } = spend(tat, now, limit, 1) else {
                panic!("refused within the budget");
            };
            assert_eq!(budget.remaining(), expected);
            assert_eq!(budget.reset(), Duration::from_secs(u64::from(3 - expected)));
            tat = next;
        }
        let Spent::Limited { budget, .. } = spend(tat, now, limit, 1) else {
            panic!("allowed over the budget");
        };
        assert_eq!(budget.remaining(), 0);
        assert_eq!(budget.retry_after(), Duration::from_secs(1));
        assert_eq!(budget.reset(), Duration::from_secs(3));
    }

    #[test]
    fn a_cost_larger_than_one_spends_that_many_or_nothing() {
        let limit = limit(10, 1);
        let now = SECOND;
        let Spent::Allowed { tat, budget } = spend(0, now, limit, 8) else {
            panic!("8 of 10 refused");
        };
        assert_eq!(budget.remaining(), 2);
        assert!(matches!(spend(tat, now, limit, 3), Spent::Limited { .. }));
        assert!(matches!(spend(tat, now, limit, 2), Spent::Allowed { .. }));
    }

    #[test]
    fn a_looser_limit_takes_effect_at_once() {
        let now = 10 * SECOND;
        // A day's single request spent; then the key gets 10 per second.
        let (_, tat) = burst(0, now, limit(1, 86_400), 1);
        let looser = limit(10, 1);
        let (allowed, tat) = burst(tat, now, looser, 1);
        assert_eq!(allowed, 0, "what was spent stays spent");
        // ... but only as a full budget under the new limit: one window of it, not a day.
        assert_eq!(burst(tat, now + SECOND, looser, 20).0, 10);
    }

    #[test]
    fn extreme_limits_do_not_overflow() {
        for limit in [limit(1_000_000, 1), limit(1, 86_400), limit(1_000_000, 86_400)] {
            let (allowed, _) = burst(0, u64::MAX / 2, limit, 3);
            assert_eq!(allowed, 3.min(limit.requests()));
        }
        assert!(interval(limit(1_000_000, 1)) >= 1);
    }
}
