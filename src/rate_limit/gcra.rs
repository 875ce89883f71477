//! The generic cell rate algorithm, as plain arithmetic on one [`Tat`] per budget: its
//! *theoretical arrival time*, the instant at which the budget would be full again.
//!
//! With `n` requests per window `w`, each request moves the TAT one interval `w / n` later
//! (from now, if the TAT is in the past). A request fits while the TAT it leaves is at most
//! `w` ahead of now: `n` requests fit at once, then one per interval. Times are nanoseconds on
//! any clock that only moves forward.
//!
//! The TAT keeps the interval it was counted in, so that when a key's limit changes, the
//! requests it already spent count against the new limit one for one: a key that spent 1 of
//! 1 per hour and is raised to 100 per hour has 99 left, not none.

use std::time::Duration;

use super::{Budget, RateLimit};

/// A budget's stored state: its TAT and the interval it was counted in. The default (all
/// zeros) is a budget never used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tat {
    pub(crate) at: u64,
    pub(crate) interval: u64,
}

/// The outcome of spending `cost` requests at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spent {
    /// It fits: store `tat`.
    Allowed { tat: Tat, budget: Budget },
    /// It doesn't: keep what is stored. Only allowed requests move a budget, so two limits
    /// counted against one budget (two keys sharing it, two layers with different defaults)
    /// can't talk each other's spending down.
    Limited(Budget),
}

/// One request's interval under `limit`, in nanoseconds (at least 1).
pub(crate) fn interval(limit: RateLimit) -> u64 {
    (window(limit) / u64::from(limit.requests())).max(1)
}

fn window(limit: RateLimit) -> u64 {
    u64::from(limit.per_seconds()) * 1_000_000_000
}

/// The TAT `stored` stands for under an interval of `interval`: the requests it has spent, as
/// of `now`, counted again one interval each.
fn rescaled(stored: Tat, now: u64, interval: u64) -> u64 {
    if stored.interval == interval || stored.interval == 0 || stored.at <= now {
        return stored.at;
    }
    let spent = (stored.at - now).div_ceil(stored.interval);
    now.saturating_add(spent.saturating_mul(interval))
}

/// Spends `cost` (at least 1) requests of the budget whose state is `stored`, at `now`.
#[inline]
pub(crate) fn spend(stored: Tat, now: u64, limit: RateLimit, cost: u32) -> Spent {
    let interval = interval(limit);
    let capacity = interval * u64::from(limit.requests());
    // No more than the whole budget can have been spent, whatever the limit was.
    let start = rescaled(stored, now, interval)
        .max(now)
        .min(now.saturating_add(capacity));
    let next = start.saturating_add(interval * u64::from(cost.max(1)));
    let ahead = next - now;
    if ahead <= capacity {
        let remaining = (capacity - ahead) / interval;
        Spent::Allowed {
            tat: Tat { at: next, interval },
            budget: Budget::new(
                limit,
                u32::try_from(remaining).unwrap_or(u32::MAX),
                Duration::from_nanos(ahead),
                Duration::ZERO,
            ),
        }
    } else {
        Spent::Limited(Budget::new(
            limit,
            u32::try_from(capacity.saturating_sub(start - now) / interval).unwrap_or(0),
            Duration::from_nanos(start - now),
            Duration::from_nanos(ahead - capacity),
        ))
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
    fn burst(mut tat: Tat, now: u64, limit: RateLimit, count: u32) -> (u32, Tat) {
        let mut allowed = 0;
        for _ in 0..count {
            match spend(tat, now, limit, 1) {
                Spent::Allowed { tat: next, .. } => {
                    tat = next;
                    allowed += 1;
                }
                Spent::Limited(_) => {}
            }
        }
        (allowed, tat)
    }

    #[test]
    fn a_full_budget_is_spent_at_once_and_not_beyond() {
        let limit = limit(5, 2);
        let (allowed, _) = burst(Tat::default(), 10 * SECOND, limit, 12);
        assert_eq!(allowed, 5);
    }

    #[test]
    fn the_budget_refills_one_interval_at_a_time_and_fully_after_the_window() {
        let limit = limit(5, 2);
        let now = 10 * SECOND;
        let (_, tat) = burst(Tat::default(), now, limit, 5);
        // 0.4 s per request: nothing at 0.39 s, one at 0.4 s, all five after 2 s.
        assert_eq!(burst(tat, now + 390_000_000, limit, 5).0, 0);
        assert_eq!(burst(tat, now + 400_000_000, limit, 5).0, 1);
        assert_eq!(burst(tat, now + 2 * SECOND, limit, 6).0, 5);
    }

    #[test]
    fn remaining_counts_down_and_reset_grows() {
        let limit = limit(3, 3);
        let now = 5 * SECOND;
        let mut tat = Tat::default();
        for expected in [2, 1, 0] {
            let Spent::Allowed { tat: next, budget } = spend(tat, now, limit, 1) else {
                panic!("refused within the budget");
            };
            assert_eq!(budget.remaining(), expected);
            assert_eq!(budget.reset(), Duration::from_secs(u64::from(3 - expected)));
            tat = next;
        }
        let Spent::Limited(budget) = spend(tat, now, limit, 1) else {
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
        let Spent::Allowed { tat, budget } = spend(Tat::default(), now, limit, 8) else {
            panic!("8 of 10 refused");
        };
        assert_eq!(budget.remaining(), 2);
        assert!(matches!(spend(tat, now, limit, 3), Spent::Limited(_)));
        assert!(matches!(spend(tat, now, limit, 2), Spent::Allowed { .. }));
    }

    #[test]
    fn a_changed_limit_counts_what_was_spent_one_for_one() {
        let now = 10 * SECOND;
        // One request spent of 1 per day; then the key gets 10 per second: 9 left at once.
        let (_, tat) = burst(Tat::default(), now, limit(1, 86_400), 1);
        assert_eq!(burst(tat, now, limit(10, 1), 20).0, 9);
        // Four of 10 per second spent; then the key gets 2 per hour: what the old limit still
        // remembers of the four (all of them at once, two after 0.25 s, none after 0.4 s)
        // counts against the new one.
        let (_, tat) = burst(Tat::default(), now, limit(10, 1), 4);
        assert_eq!(burst(tat, now, limit(2, 3600), 1).0, 0);
        assert_eq!(burst(tat, now + 250_000_000, limit(2, 3600), 1).0, 0);
        assert_eq!(burst(tat, now + 400_000_000, limit(2, 3600), 3).0, 2);
    }

    #[test]
    fn two_limits_on_one_budget_cannot_talk_each_other_down() {
        // Keys A (1 per hour) and B (100 per hour) share a budget; A's refusals must not
        // shrink what B spent.
        let (a, b) = (limit(1, 3600), limit(100, 3600));
        let now = SECOND;
        let (spent, mut tat) = burst(Tat::default(), now, b, 100);
        assert_eq!(spent, 100);
        let mut more = 0;
        for _ in 0..10 {
            let (_, next) = burst(tat, now, a, 1);
            tat = next;
            let (allowed, next) = burst(tat, now, b, 1);
            tat = next;
            more += allowed;
        }
        assert_eq!(
            more, 0,
            "B spent its budget; A's refusals gave none of it back"
        );
    }

    #[test]
    fn extreme_limits_do_not_overflow() {
        for limit in [
            limit(1_000_000, 1),
            limit(1, 86_400),
            limit(1_000_000, 86_400),
        ] {
            let (allowed, _) = burst(Tat::default(), u64::MAX / 2, limit, 3);
            assert_eq!(allowed, 3.min(limit.requests()));
        }
        assert!(interval(limit(1_000_000, 1)) >= 1);
    }
}
