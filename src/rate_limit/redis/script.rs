//! The exact path of the Redis limiter: one GCRA script, run atomically in Redis on Redis's
//! clock, spends a key's requests and stores its new TAT. Exact mode calls it for every
//! request; local-first mode calls it to lease a few requests at a time.

use std::time::Duration;

use super::Inner;
use crate::rate_limit::{Budget, BudgetKey, RateLimit, Verdict};

/// The GCRA of `gcra.rs` in microseconds on Redis's clock. Spends `cost` requests, or as many
/// as fit if fewer do (at least one, else none).
///
/// KEYS[1]: the budget, a string `"<TAT µs> <interval µs>"` (the interval the TAT was counted
/// in, so a changed limit counts the requests already spent one for one).
/// ARGV: window (µs), requests per window, cost.
/// Answers {granted, remaining, reset (µs), retry after (µs)}; granted 0 means refused. A
/// refusal writes nothing: what is stored only ever moves by requests allowed.
/// Lua numbers are doubles: every value stays far below 2^53 (now is ~2^51 µs). The interval
/// is the exact quotient, not rounded to a microsecond (a million a second would otherwise
/// refill at a whole microsecond each); `EPSILON` absorbs the quotient's last-bit error when a
/// count is taken from it.
pub(super) const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local EPSILON = 1e-6
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local capacity = tonumber(ARGV[1])
local interval = capacity / tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local tat, counted = 0, 0
if stored then
  local at, per = string.match(stored, '^(%S+) (%S+)$')
  tat, counted = tonumber(at) or 0, tonumber(per) or 0
end
local start = tat
if counted ~= interval and counted > 0 and tat > now then
  -- Counted under another limit: the requests spent, one interval each under this one.
  start = now + math.ceil((tat - now) / counted - EPSILON) * interval
end
-- No more than the whole budget can have been spent, whatever the limit was.
start = math.min(math.max(start, now), now + capacity)
local fits = math.floor((capacity - (start - now)) / interval + EPSILON)
if fits >= 1 then
  local granted = math.min(cost, fits)
  local ahead = start + interval * granted - now
  redis.call('SET', KEYS[1], string.format('%.17g %.17g', now + ahead, interval),
    'PX', math.max(1, math.ceil(ahead / 1000)))
  return {granted, fits - granted, math.ceil(ahead), 0}
end
return {0, 0, math.ceil(start - now), math.ceil(math.max(1, start + interval - now - capacity))}
";

/// The script's answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spent {
    /// Requests spent: 0 if refused.
    pub(super) granted: u32,
    pub(super) remaining: u32,
    pub(super) reset: Duration,
    pub(super) retry_after: Duration,
}

impl Spent {
    pub(super) fn verdict(self, limit: RateLimit) -> Verdict {
        let budget = Budget::new(limit, self.remaining, self.reset, self.retry_after);
        if self.granted > 0 {
            Verdict::Allowed(budget)
        } else {
            Verdict::Limited(budget)
        }
    }
}

impl Inner {
    /// Spends up to `cost` requests of `key`'s budget in Redis; `None` (logged) if Redis
    /// didn't answer in time.
    pub(super) async fn spend(&self, key: BudgetKey, limit: RateLimit, cost: u32) -> Option<Spent> {
        let window_us = u64::from(limit.per_seconds()) * 1_000_000;
        let mut invocation = self.script.key(self.redis_key(key));
        invocation
            .arg(window_us)
            .arg(limit.requests())
            .arg(cost.max(1));
        let (granted, remaining, reset, retry_after) = self
            .redis
            .invoke::<(i64, i64, i64, i64)>(&invocation)
            .await?;
        let count = |value: i64| u32::try_from(value.max(0)).unwrap_or(u32::MAX);
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        Some(Spent {
            granted: count(granted),
            remaining: count(remaining),
            reset: micros(reset),
            retry_after: micros(retry_after),
        })
    }

    /// The Redis key holding `key`'s budget.
    pub(super) fn redis_key(&self, key: BudgetKey) -> String {
        format!("{}:{:032x}", self.namespace, key.get())
    }
}
